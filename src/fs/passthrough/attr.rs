//! SETATTR: chmod, chown, truncate and utimes, run as the caller so the host enforces the same
//! rules a local filesystem would.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use super::Passthrough;
use super::handles::Handle;
use super::inodes::Inode;
use crate::fs::cred::ScopedCreds;
use crate::fs::{Attr, Context, HandleId, NodeId, SetAttr, TimeSet, sys};

fn timespec(t: TimeSet) -> libc::timespec {
    match t {
        TimeSet::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        TimeSet::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        TimeSet::At(s, ns) => libc::timespec { tv_sec: s, tv_nsec: i64::from(ns) },
    }
}

/// Clears suid, and sgid when group-executable, as a write by an unprivileged caller would.
/// The daemon writes as root (CAP_FSETID), so under FUSE_HANDLE_KILLPRIV_V2 the host kernel
/// would keep them: the guest then relies on us.
pub fn kill_suidgid(fd: BorrowedFd<'_>) -> io::Result<()> {
    let (attr, _) = sys::statx(fd)?;
    let mut mode = attr.mode & 0o7777;
    let sgid_exec = libc::S_ISGID | libc::S_IXGRP;
    if mode & libc::S_ISUID == 0 && mode & sgid_exec != sgid_exec {
        return Ok(());
    }
    mode &= !libc::S_ISUID;
    if mode & sgid_exec == sgid_exec {
        mode &= !libc::S_ISGID;
    }
    sys::fchmod(fd, mode)
}

impl Passthrough {
    pub(super) fn do_setattr(
        &self,
        ctx: &Context,
        node: NodeId,
        fh: Option<HandleId>,
        set: SetAttr,
    ) -> io::Result<(Attr, Duration)> {
        let inode = self.inode(node)?;
        let handle = fh.map(|fh| self.handles.get(fh, node)).transpose()?;
        // Opened as the daemon, before the switch: an inode held as a file handle cannot be
        // opened under the caller's credentials (see `cred::is_switched`). Only the changes
        // themselves run as the caller; the stat that answers does not need to.
        let path = inode.path_fd()?;
        {
            let _creds = ScopedCreds::switch(ctx)?;
            self.apply_setattr(&inode, handle.as_deref(), path.as_fd(), &set)?;
        }
        let (attr, mnt_id) = self.dax_stat_at(&inode, path.as_fd())?;
        Ok((self.decorate(attr, mnt_id, None), self.cfg.cache.timeout()))
    }

    /// The changes of a SETATTR, made as the caller (whose credentials are on) so the host
    /// applies the ownership and permission rules. Through `handle` when the guest sent one,
    /// else through `path` (an O_PATH fd the daemon opened) and /proc/self/fd.
    fn apply_setattr(
        &self,
        inode: &Inode,
        handle: Option<&Handle>,
        path: BorrowedFd<'_>,
        set: &SetAttr,
    ) -> io::Result<()> {
        let proc_name = sys::fd_name(path);
        let proc_fd = self.proc_fd.as_fd();
        if let Some(mode) = set.mode {
            match handle {
                Some(h) => sys::fchmod(h.as_fd(), mode)?,
                None => sys::fchmodat(proc_fd, &proc_name, mode)?,
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchown(path, set.uid.unwrap_or(u32::MAX), set.gid.unwrap_or(u32::MAX))?;
        }
        if let Some(size) = set.size {
            let reopened;
            let fd = match handle {
                // The guest checked write access when it opened the handle.
                Some(h) => h.as_fd(),
                None => {
                    // An open for write as the caller: the host checks its write permission.
                    reopened = self.io_fd_at(inode, path, libc::O_WRONLY)?;
                    reopened.as_fd()
                }
            };
            if self.is_dax_inode(inode) {
                self.dax_truncate(inode, fd, size)?;
            } else {
                sys::ftruncate(fd, size)?;
            }
            if set.kill_suidgid && set.mode.is_none() {
                kill_suidgid(fd)?;
            }
        }
        if set.atime != TimeSet::Omit || set.mtime != TimeSet::Omit {
            let times = [timespec(set.atime), timespec(set.mtime)];
            match handle {
                Some(h) => sys::futimens(h.as_fd(), &times)?,
                None => sys::utimensat(proc_fd, &proc_name, &times)?,
            }
        }
        Ok(())
    }
}
