//! The passthrough filesystem: serves a host directory to the guest. Every guest name is
//! resolved relative to its parent's O_PATH fd (opened from its file handle when it has one)
//! and kept beneath it; FIFOs, sockets and device nodes are never opened for I/O. The ops
//! live by family in the sibling files.

mod attr;
mod dax;
mod dir;
mod entry;
mod file;
mod file_handles;
mod handles;
mod inodes;
mod lock;
mod quota;
mod xattr;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::dax::DaxFiles;
pub use self::file_handles::FileHandles;
use self::file_handles::{InodeRepr, MountFds};
use self::handles::{HandleTable, OpenMode};
use self::inodes::{Inode, InodeKey, InodeTable};
use self::quota::FdQuota;
use super::{
    Attr, Context, CopyRange, CreateParams, DirSink, Entry, Filesystem, FsCapabilities, HandleId, Lock, LockRequest,
    Negotiated, NodeId, OpenOptions, ReadParams, SetAttr, SetupMapping, StatFs, WriteParams, XattrReply,
    ZeroCopyReader, ZeroCopyWriter, attr_flags, sys,
};

/// How much the guest may cache (virtiofsd's `--cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// No caching: direct I/O, zero timeouts, no readdirplus.
    Never,
    /// Cache metadata for a day; file data goes direct.
    Metadata,
    /// Cache for one second (close-to-open).
    #[default]
    Auto,
    /// Cache everything for a day; keep page cache across opens.
    Always,
}

impl CachePolicy {
    /// Entry and attribute timeout (virtiofsd's values).
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Metadata | CachePolicy::Always => Duration::from_secs(86400),
        }
    }
}

/// What the operator configured.
#[derive(Clone, Default)]
pub struct Config {
    pub root: PathBuf,
    /// An O_PATH fd of /proc/self/fd opened by the sandbox (None: open it here).
    pub proc_self_fd: Option<Arc<OwnedFd>>,
    /// The DAX window, when enabled (`--dax-window`).
    pub dax: Option<Arc<crate::dax::Dax>>,
    /// Which files get FUSE_ATTR_DAX under `-o dax=inode`.
    pub dax_files: DaxFiles,
    pub cache: CachePolicy,
    pub writeback: bool,
    pub xattr: bool,
    pub posix_acl: bool,
    pub announce_submounts: bool,
    pub readonly: bool,
    pub killpriv_v2: bool,
    pub allow_direct_io: bool,
    pub readdirplus: bool,
    pub posix_locks: bool,
    /// Most host fds held open for the guest at once (`--guest-fd-quota`): handles, lock
    /// owners' files, DAX shared files. 0 = computed from RLIMIT_NOFILE at startup.
    pub guest_fd_quota: usize,
    /// Whether inodes are held as file handles (`--inode-file-handles`).
    pub inode_file_handles: FileHandles,
}

/// The passthrough filesystem.
pub struct Passthrough {
    cfg: Config,
    /// The shared directory, O_PATH.
    root_fd: OwnedFd,
    /// /proc/self/fd, O_PATH: reopens inodes for I/O.
    proc_fd: OwnedFd,
    inodes: InodeTable,
    handles: HandleTable,
    /// Host fds the guest may keep open (EMFILE past it).
    quota: FdQuota,
    /// The guest's quota of inodes held as O_PATH fds (one fd each until the last FORGET).
    inode_quota: FdQuota,
    /// The guest's quota of inodes held as file handles (memory only).
    handle_quota: FdQuota,
    /// The mount fds file handles open on, and where handles cannot be used.
    mounts: MountFds,
    /// Mixed into every entry's generation, so node ids reused by a restarted daemon differ.
    generation: u64,
    /// Writeback cache negotiated in this session.
    writeback: AtomicBool,
    /// POSIX ACLs negotiated in this session (the guest then sends the umask to apply).
    posix_acl: AtomicBool,
    /// The session's DaxMode (as u8).
    dax_mode: AtomicU8,
}

/// The most inodes the guest may hold as file handles at once (each costs the daemon memory,
/// about 200 bytes, and no fd); past it LOOKUP answers EMFILE, as past the fd quota.
const MAX_HANDLE_INODES: usize = 1 << 22;

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// `fd` if it is a regular file or a directory; closed with EBADF otherwise (defence in depth
/// after an open for I/O).
fn checked_type(fd: OwnedFd) -> io::Result<OwnedFd> {
    let mode = sys::statx(fd.as_fd())?.0.mode;
    match mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => Ok(fd),
        other => {
            crate::log_limit::error_limited!("reopen gave a non-regular file (type {other:#o}); closed it");
            Err(errno(libc::EBADF))
        }
    }
}

/// Rejects names the guest may not use: empty, containing '/', "." or "..".
pub fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    Ok(())
}

impl Passthrough {
    /// Opens the shared directory. Fails with a clear error if it is unusable.
    pub fn new(cfg: Config) -> io::Result<Passthrough> {
        let path = CString::new(cfg.root.as_os_str().as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        let cwd = sys::cwd();
        let root_fd = sys::openat(cwd, &path, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let proc_fd = match &cfg.proc_self_fd {
            Some(fd) => fd.try_clone()?,
            None => sys::openat(cwd, c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY, 0)?,
        };
        let (quota, inode_quota) =
            FdQuota::split(sys::nofile_limit().map_or(1024, |(soft, _)| soft), cfg.guest_fd_quota);
        log::info!(
            "guest fd quotas: {} open files, {} inodes (host fds; RLIMIT_NOFILE keeps the rest for the daemon)",
            quota.limit(),
            inode_quota.limit()
        );
        let cfg_handles = cfg.inode_file_handles;
        let generation = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1).max(1);
        let fs = Passthrough {
            cfg,
            root_fd,
            proc_fd,
            inodes: InodeTable::new(),
            handles: HandleTable::new(),
            quota,
            inode_quota,
            handle_quota: FdQuota::new(MAX_HANDLE_INODES),
            mounts: MountFds::new(cfg_handles),
            generation,
            writeback: AtomicBool::new(false),
            posix_acl: AtomicBool::new(false),
            dax_mode: AtomicU8::new(0),
        };
        fs.install_root()?;
        Ok(fs)
    }

    fn install_root(&self) -> io::Result<()> {
        let fd = sys::openat(self.root_fd.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let (attr, mnt_id) = sys::statx(fd.as_fd())?;
        let key = InodeKey { dev: attr.dev, ino: attr.ino, mnt_id };
        let repr = self.hold(fd, &key, libc::S_IFDIR)?;
        if repr.is_handle() {
            log::info!("inodes are held as file handles (--inode-file-handles={:?})", self.cfg.inode_file_handles);
        }
        self.inodes.set_root(repr, key)
    }

    /// Whether inodes of the shared directory's own mount are held as file handles.
    pub fn holds_file_handles(&self) -> bool {
        self.inodes.get(crate::fs::ROOT_ID).is_ok_and(|i| i.repr.is_handle())
    }

    /// How to hold the inode behind the O_PATH fd `fd`: a file handle where possible.
    fn hold(&self, fd: OwnedFd, key: &InodeKey, file_type: u32) -> io::Result<InodeRepr> {
        self.mounts.hold(fd, key, file_type, |fd, flags| self.reopen_fd(fd, flags))
    }

    /// Adds one lookup of the inode behind the O_PATH fd `fd`, inserting it if new, against
    /// the quota of how it is held (fds: EMFILE past it). Returns its node id.
    fn insert_inode(&self, key: InodeKey, file_type: u32, fd: OwnedFd) -> io::Result<NodeId> {
        if let Some(id) = self.inodes.add_lookup(&key)? {
            return Ok(id);
        }
        let repr = self.hold(fd, &key, file_type)?;
        let quota = if repr.is_handle() { &self.handle_quota } else { &self.inode_quota };
        self.inodes.lookup_or_insert(key, file_type, repr, quota)
    }

    /// EMFILE if a new inode could not be kept (checked before making a node the guest could
    /// then not look up).
    fn check_inode_quota(&self) -> io::Result<()> {
        if self.mounts.is_enabled() { self.handle_quota.check() } else { self.inode_quota.check() }
    }

    fn inode(&self, node: NodeId) -> io::Result<Arc<Inode>> {
        self.inodes.get(node)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.cfg.readonly { Err(errno(libc::EROFS)) } else { Ok(()) }
    }

    /// Opens an inode for I/O, from its file handle or through /proc/self/fd (regular files
    /// and directories only). Every host open made for guest I/O goes through here or
    /// `reopen_fd`.
    fn reopen(&self, inode: &Inode, flags: i32) -> io::Result<OwnedFd> {
        // The type check comes before the open: an open(2) of a FIFO blocks and one of a
        // device runs its driver, so checking the fd afterwards would be too late.
        if !inode.is_openable() {
            return Err(errno(libc::EBADF));
        }
        let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL);
        match inode.repr.open_handle(flags) {
            Some(fd) => checked_type(fd?),
            None => self.reopen_fd(inode.path_fd()?.as_fd(), flags),
        }
    }

    /// Opens the inode behind the O_PATH fd `path` through /proc/self/fd, for an inode the
    /// caller knows to be a regular file or a directory. Defence in depth: the fd it got is
    /// checked to be one, and closed with EBADF otherwise.
    fn reopen_fd(&self, path: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let name = sys::fd_name(path);
        let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL);
        checked_type(sys::openat(self.proc_fd.as_fd(), &name, flags, 0)?)
    }

    /// Finishes an attribute set for the guest: submount and DAX flags.
    fn decorate(&self, mut attr: Attr, mnt_id: u64, parent: Option<&Inode>) -> Attr {
        attr.flags = 0;
        if self.cfg.announce_submounts
            && attr.mode & libc::S_IFMT == libc::S_IFDIR
            && let Some(p) = parent
            && (p.key.mnt_id != mnt_id || p.key.dev != attr.dev)
        {
            attr.flags |= attr_flags::SUBMOUNT;
        }
        if self.wants_attr_dax(attr.mode, attr.uid) {
            attr.flags |= attr_flags::DAX;
        }
        attr
    }

    /// Looks up `name` in `parent` and returns an Entry holding one new lookup reference.
    fn do_lookup(&self, parent: &Inode, name: &CStr) -> io::Result<Entry> {
        let fd = sys::openat_beneath(parent.path_fd()?.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (attr, mnt_id) = sys::statx(fd.as_fd())?;
        let key = InodeKey { dev: attr.dev, ino: attr.ino, mnt_id };
        let nodeid = self.insert_inode(key, attr.mode & libc::S_IFMT, fd)?;
        // A file mapped through DAX may have been padded at that instant: stat it again, stably.
        let attr = match self.dax_session().map(|_| self.inode(nodeid)) {
            Some(Ok(inode)) if inode.dax_file.lock().is_ok_and(|f| f.is_some()) => self.dax_stat(&inode)?.0,
            _ => attr,
        };
        Ok(self.entry(nodeid, self.decorate(attr, mnt_id, Some(parent))))
    }

    fn entry(&self, nodeid: NodeId, attr: Attr) -> Entry {
        let t = self.cfg.cache.timeout();
        Entry { nodeid, generation: self.generation, attr, entry_timeout: t, attr_timeout: t }
    }

    fn file_open_options(&self, inode: &Inode) -> OpenOptions {
        // A DAX file has no guest page cache: FOPEN_DIRECT_IO would only send the guest's
        // extending writes down its direct-I/O path, which fails (EBUSY) on mapped pages.
        if self.is_dax_inode(inode) {
            return OpenOptions::default();
        }
        match self.cfg.cache {
            CachePolicy::Never | CachePolicy::Metadata => OpenOptions { direct_io: true, ..OpenOptions::default() },
            CachePolicy::Auto => OpenOptions::default(),
            CachePolicy::Always => OpenOptions { keep_cache: true, ..OpenOptions::default() },
        }
    }

    /// Host open flags for a guest open: drop what the host must not see, add what we need.
    fn host_open_flags(&self, flags: u32) -> i32 {
        let mut f = i32::from_ne_bytes(flags.to_ne_bytes());
        f &= !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_NOATIME | libc::O_PATH);
        if !self.cfg.allow_direct_io {
            f &= !libc::O_DIRECT;
        }
        if self.writeback.load(Ordering::Relaxed) {
            // The guest page cache may read to fill partial pages, and it appends itself.
            f &= !libc::O_APPEND;
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
        }
        f | libc::O_CLOEXEC
    }

    fn wants_write(flags: u32) -> bool {
        let f = i32::from_ne_bytes(flags.to_ne_bytes());
        f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0
    }
}

impl Filesystem for Passthrough {
    fn capabilities(&self) -> FsCapabilities {
        FsCapabilities {
            writeback: self.cfg.writeback,
            readdirplus: self.cfg.readdirplus && self.cfg.cache != CachePolicy::Never,
            killpriv_v2: self.cfg.killpriv_v2,
            posix_acl: self.cfg.posix_acl,
            submounts: self.cfg.announce_submounts,
            posix_locks: self.cfg.posix_locks,
            allow_mmap_direct: true,
            dax_alignment: self.cfg.dax.as_deref().filter(|d| d.is_active()).map(crate::dax::Dax::map_alignment),
        }
    }

    fn init(&self, n: Negotiated) -> io::Result<()> {
        self.destroy();
        self.writeback.store(n.writeback, Ordering::Relaxed);
        self.posix_acl.store(n.posix_acl, Ordering::Relaxed);
        self.dax_mode.store(n.dax.to_u8(), Ordering::Relaxed);
        self.install_root()
    }

    fn destroy(&self) {
        if let Some(dax) = &self.cfg.dax {
            dax.unmap_all();
        }
        self.dax_mode.store(0, Ordering::Relaxed);
        self.handles.clear();
        self.inodes.clear();
    }

    fn lookup(&self, _ctx: &Context, parent: NodeId, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        let parent = self.inode(parent)?;
        self.do_lookup(&parent, name)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        self.inodes.forget(node, nlookup);
        if let Some(dax) = &self.cfg.dax
            && self.inodes.get(node).is_err()
        {
            dax.forget_inode(crate::dax::InodeId(node.0));
        }
    }

    fn getattr(&self, _ctx: &Context, node: NodeId, _fh: Option<HandleId>) -> io::Result<(Attr, Duration)> {
        let inode = self.inode(node)?;
        let (attr, mnt_id) = self.dax_stat(&inode)?;
        Ok((self.decorate(attr, mnt_id, None), self.cfg.cache.timeout()))
    }

    fn setattr(&self, ctx: &Context, node: NodeId, fh: Option<HandleId>, set: SetAttr) -> io::Result<(Attr, Duration)> {
        self.check_writable()?;
        self.do_setattr(ctx, node, fh, set)
    }

    fn readlink(&self, _ctx: &Context, node: NodeId) -> io::Result<Vec<u8>> {
        let inode = self.inode(node)?;
        // readlinkat(fd, "") answers ENOENT for a non-symlink; readlink(2) answers EINVAL.
        if inode.file_type != libc::S_IFLNK {
            return Err(errno(libc::EINVAL));
        }
        sys::readlink(inode.path_fd()?.as_fd())
    }

    fn symlink(&self, ctx: &Context, parent: NodeId, name: &CStr, target: &CStr) -> io::Result<Entry> {
        self.do_symlink(ctx, parent, name, target)
    }

    fn mknod(&self, ctx: &Context, parent: NodeId, name: &CStr, p: CreateParams) -> io::Result<Entry> {
        self.do_mknod(ctx, parent, name, p)
    }

    fn mkdir(&self, ctx: &Context, parent: NodeId, name: &CStr, p: CreateParams) -> io::Result<Entry> {
        self.do_mkdir(ctx, parent, name, p)
    }

    fn unlink(&self, ctx: &Context, parent: NodeId, name: &CStr) -> io::Result<()> {
        self.do_unlink(ctx, parent, name, 0)
    }

    fn rmdir(&self, ctx: &Context, parent: NodeId, name: &CStr) -> io::Result<()> {
        self.do_unlink(ctx, parent, name, libc::AT_REMOVEDIR)
    }

    fn rename(&self, ctx: &Context, from: (NodeId, &CStr), to: (NodeId, &CStr), flags: u32) -> io::Result<()> {
        self.do_rename(ctx, from, to, flags)
    }

    fn link(&self, ctx: &Context, node: NodeId, parent: NodeId, name: &CStr) -> io::Result<Entry> {
        self.do_link(ctx, node, parent, name)
    }

    fn open(&self, _ctx: &Context, node: NodeId, flags: u32, kill: bool) -> io::Result<(HandleId, OpenOptions)> {
        if Self::wants_write(flags) {
            self.check_writable()?;
        }
        let inode = self.inode(node)?;
        if inode.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        let trunc = i32::from_ne_bytes(flags.to_ne_bytes()) & libc::O_TRUNC != 0;
        let permit = self.quota.acquire()?;
        let (fd, mode) = if self.is_dax_inode(&inode) {
            let shared = self.shared_file(&inode)?;
            let (fd, mode) = self.dax_open(&inode, flags, &shared)?;
            if trunc {
                let via = if sys::is_read_only(shared.as_fd())? { fd.as_fd() } else { shared.as_fd() };
                self.dax_truncate(&inode, via, 0)?;
            }
            (fd, mode)
        } else {
            let host = self.host_open_flags(flags);
            (self.reopen(&inode, host)?, OpenMode::of(host))
        };
        if kill && trunc {
            attr::kill_suidgid(fd.as_fd())?;
        }
        let opts = self.file_open_options(&inode);
        Ok((self.handles.insert(fd, inode, mode, permit)?, opts))
    }

    fn read(&self, _ctx: &Context, node: NodeId, w: &mut dyn ZeroCopyWriter, p: ReadParams) -> io::Result<usize> {
        let h = self.handles.get(p.fh, node)?.for_read()?;
        self.dax_stable(&h.inode, || file::read_into(h.as_fd(), w, p.size, p.offset))
    }

    fn write(&self, _ctx: &Context, node: NodeId, r: &mut dyn ZeroCopyReader, p: WriteParams) -> io::Result<usize> {
        self.check_writable()?;
        let h = self.handles.get(p.fh, node)?.for_write()?;
        let n = self.dax_write(&h.inode, || file::write_from(h.as_fd(), r, p.size, p.offset, h.open.rwf))?;
        if p.kill_suidgid {
            attr::kill_suidgid(h.as_fd())?;
        }
        Ok(n)
    }

    fn statfs(&self, _ctx: &Context, node: NodeId) -> io::Result<StatFs> {
        let inode = self.inode(node)?;
        sys::fstatvfs(inode.path_fd()?.as_fd())
    }

    fn release(&self, _ctx: &Context, node: NodeId, fh: HandleId, lock_owner: Option<u64>) -> io::Result<()> {
        let h = self.handles.remove(fh, node)?;
        if let Some(owner) = lock_owner {
            lock::drop_owner(&h.inode, owner);
        }
        lock::drop_handle(&h.inode, fh);
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, node: NodeId, fh: HandleId, datasync: bool) -> io::Result<()> {
        sys::fsync(self.handles.get(fh, node)?.as_fd(), datasync)
    }

    fn flush(&self, _ctx: &Context, node: NodeId, fh: HandleId, lock_owner: u64) -> io::Result<()> {
        let h = self.handles.get(fh, node)?;
        lock::drop_owner(&h.inode, lock_owner);
        Ok(())
    }

    fn setxattr(&self, ctx: &Context, node: NodeId, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.check_writable()?;
        self.do_setxattr(ctx, node, name, value, flags)
    }

    fn getxattr(&self, _ctx: &Context, node: NodeId, name: &CStr, size: u32) -> io::Result<XattrReply> {
        self.do_getxattr(node, name, size)
    }

    fn listxattr(&self, _ctx: &Context, node: NodeId, size: u32) -> io::Result<XattrReply> {
        self.do_listxattr(node, size)
    }

    fn removexattr(&self, ctx: &Context, node: NodeId, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.do_removexattr(ctx, node, name)
    }

    fn opendir(&self, _ctx: &Context, node: NodeId, _flags: u32) -> io::Result<(HandleId, OpenOptions)> {
        self.do_opendir(node)
    }

    fn readdir(
        &self,
        _ctx: &Context,
        node: NodeId,
        fh: HandleId,
        offset: u64,
        sink: &mut dyn DirSink,
    ) -> io::Result<()> {
        dir::read_entries(&*self.handles.get(fh, node)?, offset, sink)
    }

    fn releasedir(&self, _ctx: &Context, node: NodeId, fh: HandleId) -> io::Result<()> {
        self.handles.remove(fh, node).map(drop)
    }

    fn fsyncdir(&self, _ctx: &Context, node: NodeId, fh: HandleId, datasync: bool) -> io::Result<()> {
        sys::fsync(self.handles.get(fh, node)?.as_fd(), datasync)
    }

    fn getlk(&self, _ctx: &Context, node: NodeId, req: LockRequest) -> io::Result<Lock> {
        let h = self.handles.get(req.fh, node)?;
        lock::getlk(self, &h, req)
    }

    fn setlk(&self, _ctx: &Context, node: NodeId, req: LockRequest) -> io::Result<()> {
        let h = self.handles.get(req.fh, node)?;
        lock::setlk(self, &h, req)
    }

    fn access(&self, ctx: &Context, node: NodeId, mask: u32) -> io::Result<()> {
        self.do_access(ctx, node, mask)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        p: CreateParams,
    ) -> io::Result<(Entry, HandleId, OpenOptions)> {
        self.do_create(ctx, parent, Some(name), p)
    }

    fn fallocate(&self, _ctx: &Context, node: NodeId, fh: HandleId, mode: u32, range: (u64, u64)) -> io::Result<()> {
        self.check_writable()?;
        // Bit for bit: unknown mode bits (bit 31 too) get the host's own answer, EOPNOTSUPP.
        let mode = i32::from_ne_bytes(mode.to_ne_bytes());
        let h = self.handles.get(fh, node)?.for_write()?;
        if self.is_dax_inode(&h.inode) {
            return self.dax_fallocate(&h.inode, h.as_fd(), mode, range.0, range.1);
        }
        sys::fallocate(h.as_fd(), mode, range.0, range.1)
    }

    fn lseek(&self, _ctx: &Context, node: NodeId, fh: HandleId, offset: u64, whence: u32) -> io::Result<u64> {
        let whence = i32::try_from(whence).map_err(|_| errno(libc::EINVAL))?;
        let h = self.handles.get(fh, node)?;
        self.dax_stable(&h.inode, || sys::lseek(h.as_fd(), offset, whence))
    }

    fn copy_file_range(&self, _ctx: &Context, a: CopyRange) -> io::Result<usize> {
        self.check_writable()?;
        let hin = self.handles.get(a.fh_in, a.node_in)?.for_read()?;
        let hout = self.handles.get(a.fh_out, a.node_out)?.for_write()?;
        if hout.open.rwf & libc::RWF_APPEND != 0 {
            // As copy_file_range(2) into an O_APPEND fd.
            return Err(errno(libc::EBADF));
        }
        let len = usize::try_from(a.len).unwrap_or(usize::MAX);
        let flags = u32::try_from(a.flags).map_err(|_| errno(libc::EINVAL))?;
        self.dax_copy(&hin.inode, &hout.inode, || {
            sys::copy_file_range(hin.as_fd(), a.off_in, hout.as_fd(), a.off_out, len, flags)
        })
    }

    fn syncfs(&self, _ctx: &Context, node: NodeId) -> io::Result<()> {
        let inode = self.inode(node)?;
        let fd = self.io_fd(&inode, libc::O_RDONLY | if inode.is_dir() { libc::O_DIRECTORY } else { 0 })?;
        sys::syncfs(fd.as_fd())
    }

    fn tmpfile(&self, ctx: &Context, parent: NodeId, p: CreateParams) -> io::Result<(Entry, HandleId, OpenOptions)> {
        self.do_create(ctx, parent, None, p)
    }

    fn setupmapping(&self, _ctx: &Context, node: NodeId, m: SetupMapping) -> io::Result<()> {
        self.do_setupmapping(node, m)
    }

    fn removemapping(&self, _ctx: &Context, ranges: &[(u64, u64)]) -> io::Result<()> {
        self.do_removemapping(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::ROOT_ID;

    #[test]
    fn check_name_rejects_escapes() {
        for bad in [c"", c".", c"..", c"a/b", c"/", c"../x"] {
            assert_eq!(check_name(bad).unwrap_err().raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
        for good in [c"a", c"...", c".hidden", c"a b", c"\xff"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn reopen_fd_of_a_device_is_ebadf_and_of_a_file_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let fs = Passthrough::new(Config { root: dir.path().into(), ..Config::default() }).unwrap();
        // /dev/null: opening it has no effect, so the check after the open can be shown.
        let null = sys::openat(sys::cwd(), c"/dev/null", libc::O_PATH, 0).unwrap();
        assert_eq!(fs.reopen_fd(null.as_fd(), libc::O_RDONLY).unwrap_err().raw_os_error(), Some(libc::EBADF));
        let f = sys::openat(fs.root_fd.as_fd(), c"f", libc::O_PATH, 0).unwrap();
        assert!(fs.reopen_fd(f.as_fd(), libc::O_RDONLY).is_ok());
    }

    #[test]
    fn cache_timeouts_are_virtiofsds() {
        assert_eq!(CachePolicy::Never.timeout(), Duration::ZERO);
        assert_eq!(CachePolicy::Auto.timeout(), Duration::from_secs(1));
        assert_eq!(CachePolicy::Always.timeout(), Duration::from_secs(86400));
    }

    #[test]
    fn lookup_on_unknown_parent_is_enoent_and_forget_frees() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let fs = Passthrough::new(Config { root: dir.path().into(), ..Config::default() }).unwrap();
        let ctx = Context::default();
        assert_eq!(fs.lookup(&ctx, NodeId(99), c"f").unwrap_err().raw_os_error(), Some(libc::ENOENT));
        let e = fs.lookup(&ctx, ROOT_ID, c"f").unwrap();
        assert_eq!(fs.lookup(&ctx, ROOT_ID, c"f").unwrap().nodeid, e.nodeid);
        fs.forget(e.nodeid, 2);
        assert!(fs.getattr(&ctx, e.nodeid, None).is_err());
        fs.forget(ROOT_ID, 100);
        assert!(fs.getattr(&ctx, ROOT_ID, None).is_ok(), "the root is never forgotten");
    }
}
