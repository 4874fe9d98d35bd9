//! The passthrough side of DAX: one shared host file per DAX inode (mappings, guest handles and
//! the lease all use it, so the daemon never breaks its own lease), SETUPMAPPING/REMOVEMAPPING,
//! and routing every size change of a DAX inode through the window's shrink/grow rules.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::handles::OpenMode;
use super::inodes::{DaxFile, Inode};
use super::quota::FdPermit;
use super::{Passthrough, errno};
use crate::dax::{Dax, InodeId};
use crate::fs::{DaxMode, NodeId, SetupMapping, sys};

const FLAG_WRITE: u64 = 1 << 0;
const FLAG_READ: u64 = 1 << 1;

/// Which files get FUSE_ATTR_DAX under `-o dax=inode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DaxFiles {
    /// Every regular file.
    All,
    /// Regular files the daemon can lease (it is root, or owns them).
    #[default]
    Leasable,
    /// None.
    None,
}

impl Passthrough {
    /// The window, when this session negotiated DAX.
    pub(super) fn dax_session(&self) -> Option<&Dax> {
        let on = DaxMode::from_u8(self.dax_mode.load(Ordering::Relaxed)) != DaxMode::Off;
        self.cfg.dax.as_deref().filter(|d| on && d.is_active())
    }

    /// Whether `inode` goes through the shared DAX file.
    pub(super) fn is_dax_inode(&self, inode: &Inode) -> bool {
        inode.file_type == libc::S_IFREG && self.dax_session().is_some()
    }

    /// FUSE_ATTR_DAX for `-o dax=inode`.
    pub(super) fn wants_attr_dax(&self, mode: u32, uid: u32) -> bool {
        if mode & libc::S_IFMT != libc::S_IFREG
            || DaxMode::from_u8(self.dax_mode.load(Ordering::Relaxed)) != DaxMode::Inode
            || !self.cfg.dax.as_ref().is_some_and(|d| d.is_watched())
        {
            return false;
        }
        match self.cfg.dax_files {
            DaxFiles::All => true,
            DaxFiles::None => false,
            DaxFiles::Leasable => sys::geteuid() == 0 || sys::geteuid() == uid,
        }
    }

    /// The inode's shared file, opened read-write when the export allows. Opening it takes a
    /// share of the guest's fd quota (EMFILE past it), held until the inode drops the file.
    pub(super) fn shared_file(&self, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        let mut slot = inode.dax_file.lock().map_err(|_| errno(libc::EIO))?;
        if let Some(f) = slot.as_ref() {
            return Ok(Arc::clone(&f.fd));
        }
        let permit = self.quota.acquire()?;
        let fd = if self.cfg.readonly {
            self.reopen(inode, libc::O_RDONLY)?
        } else {
            self.reopen(inode, libc::O_RDWR).or_else(|_| self.reopen(inode, libc::O_RDONLY))?
        };
        let f = Arc::new(fd);
        *slot = Some(DaxFile { fd: Arc::clone(&f), _permit: permit });
        Ok(f)
    }

    /// Adopts `fd` (just created with O_RDWR, a regular file) as the inode's shared file unless
    /// it has one; `permit` goes with it (and back to the quota if unused).
    pub(super) fn adopt_shared_file(&self, inode: &Inode, fd: OwnedFd, permit: FdPermit) -> io::Result<Arc<OwnedFd>> {
        let mut slot = inode.dax_file.lock().map_err(|_| errno(libc::EIO))?;
        Ok(Arc::clone(&slot.get_or_insert_with(|| DaxFile { fd: Arc::new(fd), _permit: permit }).fd))
    }

    /// A guest handle of a DAX inode opened with `flags` (its O_TRUNC is the caller's), and what
    /// it was opened for. Normally a clone of the shared file, so no open of ours breaks the
    /// daemon's own lease, with O_APPEND and O_SYNC/O_DSYNC carried out per write. A host fd of
    /// its own, with the guest's flags, when the clone cannot serve the open (a write open of a
    /// file the shared file only reads: the open gets the host's answer, e.g. EPERM on an
    /// append-only file), or when the open asks for what a clone has not (O_DIRECT; O_APPEND and
    /// O_SYNC too, so a host appender's bytes are never overwritten between the check and the
    /// write) and the host guard protects the file, so that no lease can break.
    pub(super) fn dax_open(&self, inode: &Inode, flags: u32, shared: &Arc<OwnedFd>) -> io::Result<(OwnedFd, OpenMode)> {
        let host = self.host_open_flags(flags) & !libc::O_TRUNC;
        let needs_own_fd = host & (libc::O_APPEND | libc::O_DSYNC | libc::O_DIRECT) != 0;
        let cannot_clone = Self::wants_write(flags) && sys::is_read_only(shared.as_fd())?;
        if cannot_clone || (needs_own_fd && self.dax_session().is_some_and(|d| d.guards(shared.as_fd()))) {
            return Ok((self.reopen(inode, host)?, OpenMode::of(host)));
        }
        Ok((shared.try_clone()?, OpenMode::emulated(host)))
    }

    /// An fd for host I/O on `inode` that never breaks our own lease: the shared file for DAX
    /// inodes, a fresh open otherwise.
    pub(super) fn io_fd(&self, inode: &Inode, flags: i32) -> io::Result<IoFd> {
        match Self::dax_file_of(inode) {
            Some(f) => Ok(IoFd::Shared(f)),
            None => self.reopen(inode, flags).map(IoFd::Own),
        }
    }

    /// `io_fd` under a caller's credentials, with `path` an O_PATH fd of the inode the daemon
    /// opened before the switch: a fresh open goes through it and /proc/self/fd, as the caller
    /// (so the host checks the caller's permission), never through the inode's file handle.
    pub(super) fn io_fd_at(&self, inode: &Inode, path: BorrowedFd<'_>, flags: i32) -> io::Result<IoFd> {
        if let Some(f) = Self::dax_file_of(inode) {
            return Ok(IoFd::Shared(f));
        }
        // As in `reopen`: the type is checked before anything is opened.
        if !inode.is_openable() {
            return Err(errno(libc::EBADF));
        }
        self.reopen_fd(path, flags).map(IoFd::Own)
    }

    fn dax_file_of(inode: &Inode) -> Option<Arc<OwnedFd>> {
        inode.dax_file.lock().ok().and_then(|s| s.as_ref().map(|f| Arc::clone(&f.fd)))
    }

    /// Runs `op` under the inode's shared semaphore (any regular file of a DAX session: its
    /// first SETUPMAPPING may open the shared file and pad it while `op` runs), so nothing it
    /// reports (size, data, holes) comes from the instant the file is padded to map its EOF
    /// page. Every reply that shows a DAX inode's size or data past a page boundary goes through
    /// here.
    pub(super) fn dax_stable<T>(&self, inode: &Inode, op: impl FnOnce() -> T) -> T {
        match self.dax_session() {
            Some(dax) if inode.file_type == libc::S_IFREG => dax.shared(InodeId(inode.nodeid.0), op),
            _ => op(),
        }
    }

    /// COPY_FILE_RANGE: like `dax_write` into `dst`, with `src` held stable too (see
    /// `dax_stable`): the copy must not read the instant its source is padded.
    pub(super) fn dax_copy<T>(&self, src: &Inode, dst: &Inode, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let Some(dax) = self.dax_session() else { return op() };
        let (src_id, dst_id) = (InodeId(src.nodeid.0), InodeId(dst.nodeid.0));
        let Some(file) = dst.dax_file.lock().ok().and_then(|s| s.as_ref().map(|f| Arc::clone(&f.fd))) else {
            return dax.shared2(src_id, dst_id, op);
        };
        dax.touch(dst_id, &file);
        let r = dax.shared2(src_id, dst_id, op)?;
        dax.grow(dst_id, file.as_fd())?;
        Ok(r)
    }

    /// statx of an inode, never seeing the padded size (see `dax_stable`).
    /// The guest revalidates here: copies of the file made before a host change are made again.
    pub(super) fn dax_stat(&self, inode: &Inode) -> io::Result<(crate::fs::Attr, u64)> {
        let path = inode.path_fd()?;
        self.dax_stat_at(inode, path.as_fd())
    }

    /// `dax_stat` through `path`, an O_PATH fd of the inode already open.
    pub(super) fn dax_stat_at(&self, inode: &Inode, path: BorrowedFd<'_>) -> io::Result<(crate::fs::Attr, u64)> {
        if let Some(dax) = self.dax_session() {
            dax.revalidate_copies(InodeId(inode.nodeid.0));
        }
        self.dax_stable(inode, || sys::statx(path))
    }

    /// Truncates a DAX inode: shrinks go through the window's cut/re-install (I4).
    pub(super) fn dax_truncate(&self, inode: &Inode, file: BorrowedFd<'_>, size: u64) -> io::Result<()> {
        let Some(dax) = self.dax_session() else { return sys::ftruncate(file, size) };
        let id = InodeId(inode.nodeid.0);
        dax.shrink(id, file, size, || sys::ftruncate(file, size))?;
        dax.grow(id, file)
    }

    /// fallocate on a DAX inode, by mode: see DESIGN.md I4 and I6.
    pub(super) fn dax_fallocate(
        &self,
        inode: &Inode,
        file: BorrowedFd<'_>,
        mode: i32,
        off: u64,
        len: u64,
    ) -> io::Result<()> {
        let Some(dax) = self.dax_session() else { return sys::fallocate(file, mode, off, len) };
        let id = InodeId(inode.nodeid.0);
        let op = || sys::fallocate(file, mode, off, len);
        if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 {
            let size = crate::fs::sys::statx(file)?.0.size;
            dax.shrink(id, file, size.saturating_sub(len), op)?;
        } else if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            // No page stops being valid, but blocks go away: exclusive, no cut.
            dax.shrink(id, file, u64::MAX, op)?;
            if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
                dax.reallocate_writable(id, file, off, len)?;
            }
        } else {
            dax.shared(id, op)?;
        }
        dax.grow(id, file)
    }

    /// A WRITE to a DAX inode: held shared against shrinks (the write barrier), then grown (I3).
    /// Held shared also before the inode has a shared file: a first SETUPMAPPING padding the
    /// file meanwhile would otherwise cut a write past the old EOF when it restores the size.
    pub(super) fn dax_write<T>(&self, inode: &Inode, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let Some(dax) = self.dax_session() else { return op() };
        let id = InodeId(inode.nodeid.0);
        let file = inode.dax_file.lock().ok().and_then(|s| s.as_ref().map(|f| Arc::clone(&f.fd)));
        if let Some(file) = &file {
            dax.touch(id, file);
        }
        let r = dax.shared(id, op)?;
        if let Some(file) = file {
            dax.grow(id, file.as_fd())?;
        }
        Ok(r)
    }

    pub(super) fn do_setupmapping(&self, node: NodeId, m: SetupMapping) -> io::Result<()> {
        let dax = self.dax_session().ok_or_else(|| errno(libc::ENOSYS))?;
        if m.flags & !(FLAG_READ | FLAG_WRITE) != 0 {
            return Err(crate::dax::DaxError::BadFlags(m.flags).into());
        }
        let writable = m.flags & FLAG_WRITE != 0;
        let setup = dax.check(m.moffset, m.len, m.foffset, writable)?;
        let inode = self.inode(node)?;
        if inode.file_type != libc::S_IFREG {
            return Err(errno(libc::EBADF));
        }
        if writable && self.cfg.readonly {
            return Err(errno(libc::EACCES));
        }
        // DESIGN.md §3: EMFILE is no SETUPMAPPING answer the guest knows; EIO is.
        let file = self.shared_file(&inode).map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE) => errno(libc::EIO),
            _ => e,
        })?;
        if writable && sys::is_read_only(file.as_fd())? {
            return Err(errno(libc::EACCES));
        }
        dax.setup(InodeId(node.0), &file, setup).map_err(io::Error::from)
    }

    pub(super) fn do_removemapping(&self, ranges: &[(u64, u64)]) -> io::Result<()> {
        let Some(dax) = self.cfg.dax.as_deref() else { return Err(errno(libc::ENOSYS)) };
        for &(moffset, len) in ranges {
            dax.remove(moffset, len)?;
        }
        Ok(())
    }
}

/// An fd for one host operation.
pub enum IoFd {
    Shared(Arc<OwnedFd>),
    Own(OwnedFd),
}

impl AsFd for IoFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            IoFd::Shared(f) => f.as_fd(),
            IoFd::Own(f) => f.as_fd(),
        }
    }
}

impl DaxMode {
    /// Stored in an atomic.
    pub fn to_u8(self) -> u8 {
        match self {
            DaxMode::Off => 0,
            DaxMode::Always => 1,
            DaxMode::Inode => 2,
        }
    }

    /// Loaded from an atomic.
    pub fn from_u8(v: u8) -> DaxMode {
        match v {
            1 => DaxMode::Always,
            2 => DaxMode::Inode,
            _ => DaxMode::Off,
        }
    }
}
