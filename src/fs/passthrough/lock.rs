//! POSIX record locks forwarded to the host as OFD locks, one open file description per guest
//! lock owner and inode, so the host arbitrates between guests and host processes. flock(2)
//! requests go to the handle's own description.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::handles::Handle;
use super::inodes::{Inode, LockOwner};
use super::{Passthrough, errno};
use crate::fs::{HandleId, Lock, LockRequest, sys};

/// The kernel's OFFSET_MAX: a lock "to end of file".
const OFFSET_MAX: u64 = i64::MAX as u64;

fn to_flock(l: Lock) -> io::Result<libc::flock> {
    let inval = || errno(libc::EINVAL);
    let start = i64::try_from(l.start).map_err(|_| inval())?;
    let len =
        if l.end >= OFFSET_MAX { 0 } else { i64::try_from(l.end - l.start.min(l.end) + 1).map_err(|_| inval())? };
    let typ = i16::try_from(l.typ).map_err(|_| inval())?;
    let typ32 = i32::from(typ);
    if ![libc::F_RDLCK, libc::F_WRLCK, libc::F_UNLCK].contains(&typ32) || l.end < l.start {
        return Err(inval());
    }
    let whence = i16::try_from(libc::SEEK_SET).unwrap_or(0);
    Ok(libc::flock { l_type: typ, l_whence: whence, l_start: start, l_len: len, l_pid: 0 })
}

fn from_flock(fl: &libc::flock) -> Lock {
    let start = u64::try_from(fl.l_start).unwrap_or(0);
    let end = match u64::try_from(fl.l_len) {
        Ok(0) | Err(_) => OFFSET_MAX,
        Ok(len) => start.saturating_add(len) - 1,
    };
    Lock { start, end, typ: u32::try_from(fl.l_type).unwrap_or(0), pid: u32::try_from(fl.l_pid).unwrap_or(0) }
}

/// A new open file description of `inode` for locks: read-write where allowed.
fn lock_file(fs: &Passthrough, inode: &Inode) -> io::Result<OwnedFd> {
    fs.reopen(inode, libc::O_RDWR).or_else(|_| fs.reopen(inode, libc::O_RDONLY))
}

/// The open file description holding `owner`'s locks on `inode`, opened on first use (it then
/// holds a share of the guest's fd quota: EMFILE past it); notes that the owner locked through
/// handle `fh`.
fn owner_fd(fs: &Passthrough, inode: &Inode, owner: u64, fh: HandleId) -> io::Result<Arc<OwnedFd>> {
    let mut owners = inode.lock_owners.lock().map_err(|_| errno(libc::EIO))?;
    if let Some(o) = owners.get_mut(&owner) {
        if !o.handles.contains(&fh) {
            o.handles.push(fh);
        }
        return Ok(Arc::clone(&o.fd));
    }
    let permit = fs.quota.acquire()?;
    let fd = Arc::new(lock_file(fs, inode)?);
    owners.insert(owner, LockOwner { fd: Arc::clone(&fd), handles: vec![fh], _permit: permit });
    Ok(fd)
}

/// The description of an owner that may hold locks: its own if it has one. An owner without
/// one holds no locks, so a fresh description, closed after the request, answers the same
/// and keeps no fd for the guest.
fn query_fd(fs: &Passthrough, inode: &Inode, owner: u64) -> io::Result<Arc<OwnedFd>> {
    let known = inode.lock_owners.lock().map_err(|_| errno(libc::EIO))?.get(&owner).map(|o| Arc::clone(&o.fd));
    match known {
        Some(fd) => Ok(fd),
        None => lock_file(fs, inode).map(Arc::new),
    }
}

/// A new open of a DAX inode would break our own lease and revoke the guest's mappings, so
/// locks on DAX files are not forwarded (ENOLCK). DAX sessions do not negotiate lock
/// forwarding at all, so only a misbehaving guest gets here.
fn check_not_dax(h: &Handle) -> io::Result<()> {
    match h.inode.dax_file.lock() {
        Ok(f) if f.is_some() => Err(errno(libc::ENOLCK)),
        _ => Ok(()),
    }
}

/// F_GETLK: the first conflicting lock, or F_UNLCK.
pub fn getlk(fs: &Passthrough, h: &Handle, req: LockRequest) -> io::Result<Lock> {
    check_not_dax(h)?;
    let mut fl = to_flock(req.lock)?;
    let fd = query_fd(fs, &h.inode, req.owner)?;
    sys::ofd_lock(fd.as_fd(), libc::F_OFD_GETLK, &mut fl)?;
    let mut out = from_flock(&fl);
    if fl.l_type == i16::try_from(libc::F_UNLCK).unwrap_or(2) {
        out = Lock { typ: out.typ, ..req.lock };
    }
    Ok(out)
}

/// F_SETLK/F_SETLKW, or flock when `req.flock`.
pub fn setlk(fs: &Passthrough, h: &Handle, req: LockRequest) -> io::Result<()> {
    check_not_dax(h)?;
    if req.flock {
        let mut op = match i32::try_from(req.lock.typ).unwrap_or(-1) {
            libc::F_RDLCK => libc::LOCK_SH,
            libc::F_WRLCK => libc::LOCK_EX,
            libc::F_UNLCK => libc::LOCK_UN,
            _ => return Err(errno(libc::EINVAL)),
        };
        if !req.sleep {
            op |= libc::LOCK_NB;
        }
        return sys::flock(h.as_fd(), op);
    }
    let mut fl = to_flock(req.lock)?;
    let fd = owner_fd(fs, &h.inode, req.owner, req.fh)?;
    let cmd = if req.sleep { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    sys::ofd_lock(fd.as_fd(), cmd, &mut fl)
}

/// Drops every lock `owner` holds on `inode` (close(2) of any of its guest fds).
pub fn drop_owner(inode: &Inode, owner: u64) {
    if let Ok(mut owners) = inode.lock_owners.lock() {
        owners.remove(&owner);
    }
}

/// The guest released handle `fh`: owners that locked through it are gone (OFD locks die with
/// their open file, POSIX locks with any close), and the guest names no owner for OFD locks.
pub fn drop_handle(inode: &Inode, fh: HandleId) {
    if let Ok(mut owners) = inode.lock_owners.lock() {
        owners.retain(|_, o| !o.handles.contains(&fh));
    }
}
