//! The host side: the `Filesystem` trait the FUSE server calls, its types, and the passthrough
//! implementation. Knows nothing of virtqueues or the wire format.

pub mod cred;
pub mod passthrough;
pub mod sys;

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// A FUSE node id (1 is the root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// The root's node id.
pub const ROOT_ID: NodeId = NodeId(1);

/// A file or directory handle id given to the guest at OPEN/OPENDIR/CREATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleId(pub u64);

/// Who is asking: the caller's ids from the request header and its extension.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Caller's fsuid.
    pub uid: u32,
    /// Caller's fsgid.
    pub gid: u32,
    /// Caller's pid (in the guest).
    pub pid: u32,
    /// Supplementary groups sent with FUSE_CREATE_SUPP_GROUP (at most a few).
    pub groups: Vec<u32>,
}

/// File attributes, as statx gave them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub btime: (i64, u32),
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub dev: u64,
    pub blksize: u32,
    /// statx mask of valid fields.
    pub mask: u32,
    /// statx attributes and attributes_mask.
    pub attributes: (u64, u64),
    /// FUSE_ATTR_* flags (submount, dax) decided by the filesystem.
    pub flags: u32,
}

/// Which FUSE_ATTR_* bits an `Attr` may carry (set by the filesystem).
pub mod attr_flags {
    /// The directory is a mount point: the guest makes it a submount.
    pub const SUBMOUNT: u32 = 1 << 0;
    /// The guest should use DAX for this file (per-inode DAX).
    pub const DAX: u32 = 1 << 1;
}

/// The answer to a name lookup or a create.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub nodeid: NodeId,
    pub generation: u64,
    pub attr: Attr,
    pub entry_timeout: Duration,
    pub attr_timeout: Duration,
}

/// How the guest should cache an opened file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    pub direct_io: bool,
    pub keep_cache: bool,
    pub cache_dir: bool,
}

/// What SETATTR changes. `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: TimeSet,
    pub mtime: TimeSet,
    /// Clear suid/sgid as a write would (FATTR_KILL_SUIDGID).
    pub kill_suidgid: bool,
}

/// One timestamp in a SETATTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeSet {
    #[default]
    Omit,
    Now,
    At(i64, u32),
}

/// Filesystem statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A POSIX record lock (or flock) as the guest describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    pub start: u64,
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: u32,
    pub pid: u32,
}

/// A lock request: which handle, which owner, and how.
#[derive(Clone, Copy, Debug)]
pub struct LockRequest {
    pub fh: HandleId,
    pub owner: u64,
    pub lock: Lock,
    /// Wait for the lock (SETLKW).
    pub sleep: bool,
    /// A flock(2) request rather than a record lock.
    pub flock: bool,
}

/// The creation parameters of CREATE/MKNOD/MKDIR/TMPFILE.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateParams {
    pub mode: u32,
    pub umask: u32,
    /// open(2) flags for CREATE/TMPFILE.
    pub flags: u32,
    pub rdev: u32,
    pub kill_suidgid: bool,
}

/// The arguments of COPY_FILE_RANGE.
#[derive(Clone, Copy, Debug)]
pub struct CopyRange {
    pub node_in: NodeId,
    pub fh_in: HandleId,
    pub off_in: u64,
    pub node_out: NodeId,
    pub fh_out: HandleId,
    pub off_out: u64,
    pub len: u64,
    pub flags: u64,
}

/// A READ's handle and range.
#[derive(Clone, Copy, Debug)]
pub struct ReadParams {
    pub fh: HandleId,
    pub offset: u64,
    pub size: usize,
}

/// A WRITE's details beyond the data.
#[derive(Clone, Copy, Debug)]
pub struct WriteParams {
    pub fh: HandleId,
    pub offset: u64,
    pub size: usize,
    /// Clear suid/sgid (FUSE_WRITE_KILL_SUIDGID under killpriv_v2).
    pub kill_suidgid: bool,
    /// Written back from the guest page cache (ignore O_APPEND).
    pub writeback: bool,
}

/// A GETXATTR/LISTXATTR answer: the value, or just its size when the guest asked with size 0.
#[derive(Debug)]
pub enum XattrReply {
    Value(Vec<u8>),
    Size(u32),
}

/// One directory entry as READDIR reports it.
#[derive(Debug)]
pub struct DirEntry<'a> {
    pub ino: u64,
    pub offset: u64,
    pub typ: u32,
    pub name: &'a [u8],
}

/// Receives directory entries; returns `false` when the reply buffer is full.
pub trait DirSink {
    /// Adds one entry; `false` means it did not fit and was not added.
    fn add(&mut self, entry: &DirEntry<'_>) -> io::Result<bool>;
}

/// Reads from a host file straight into the guest's reply buffers.
pub trait ZeroCopyWriter {
    /// preadv `count` bytes at `off` from `fd` into the guest buffers; returns bytes read.
    fn read_from(&mut self, fd: BorrowedFd<'_>, count: usize, off: u64) -> io::Result<usize>;
    /// Room left in the guest buffers.
    fn available(&self) -> usize;
}

/// Writes guest request data straight into a host file.
pub trait ZeroCopyReader {
    /// pwritev2 up to `count` bytes at `off` to `fd` from the guest buffers, with the per-write
    /// flags `rwf` (RWF_APPEND, RWF_DSYNC, ...); returns bytes written.
    fn write_to(&mut self, fd: BorrowedFd<'_>, count: usize, off: u64, rwf: libc::c_int) -> io::Result<usize>;
}

/// Options the filesystem wants negotiated at INIT (it asks; the guest may refuse).
#[derive(Clone, Copy, Debug, Default)]
pub struct FsCapabilities {
    pub writeback: bool,
    pub readdirplus: bool,
    pub killpriv_v2: bool,
    pub posix_acl: bool,
    pub submounts: bool,
    pub posix_locks: bool,
    pub allow_mmap_direct: bool,
    /// log2 of the mapping alignment when this connection has a DAX window.
    pub dax_alignment: Option<u16>,
}

/// How the guest mounted with respect to DAX (what INIT negotiated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DaxMode {
    /// No window, or the guest did not ask for it.
    #[default]
    Off,
    /// `-o dax=always`: every regular file goes through the window.
    Always,
    /// `-o dax=inode`: files flagged with FUSE_ATTR_DAX do.
    Inode,
}

/// A SETUPMAPPING as the guest sent it.
#[derive(Clone, Copy, Debug)]
pub struct SetupMapping {
    /// Ignored: Linux always sends u64::MAX; the file comes from the node id.
    pub fh: u64,
    pub foffset: u64,
    pub len: u64,
    /// FUSE_SETUPMAPPING_FLAG_*.
    pub flags: u64,
    pub moffset: u64,
}

/// What INIT settled, told to the filesystem so it can adjust (e.g. writeback open flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct Negotiated {
    pub writeback: bool,
    pub killpriv_v2: bool,
    pub posix_acl: bool,
    pub supp_groups: bool,
    pub dax: DaxMode,
}

fn enosys<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The host filesystem the FUSE server serves. Every method runs on a worker thread,
/// concurrently with others; errors carry the errno the guest will see. Defaults are ENOSYS,
/// which the kernel remembers as "not supported" for some opcodes (xattrs, fallocate, lseek).
#[allow(unused_variables)]
pub trait Filesystem: Send + Sync {
    /// What to ask for at INIT.
    fn capabilities(&self) -> FsCapabilities;
    /// A new session starts (INIT): drop all state of the previous one.
    fn init(&self, negotiated: Negotiated) -> io::Result<()>;
    /// The session ends (DESTROY, reset, disconnect): drop all inodes and handles.
    fn destroy(&self);
    /// Looks `name` up in `parent`; a success adds one to the node's lookup count.
    fn lookup(&self, ctx: &Context, parent: NodeId, name: &CStr) -> io::Result<Entry> {
        enosys()
    }
    /// Drops `nlookup` from the lookup count; the node is freed at zero. Never replied to.
    fn forget(&self, node: NodeId, nlookup: u64) {}
    /// Attributes of `node` (through `fh` when given).
    fn getattr(&self, ctx: &Context, node: NodeId, fh: Option<HandleId>) -> io::Result<(Attr, Duration)> {
        enosys()
    }
    /// Changes attributes; returns the new ones.
    fn setattr(&self, ctx: &Context, node: NodeId, fh: Option<HandleId>, set: SetAttr) -> io::Result<(Attr, Duration)> {
        enosys()
    }
    /// The target of a symlink.
    fn readlink(&self, ctx: &Context, node: NodeId) -> io::Result<Vec<u8>> {
        enosys()
    }
    /// Creates a symlink `name` -> `target` in `parent`.
    fn symlink(&self, ctx: &Context, parent: NodeId, name: &CStr, target: &CStr) -> io::Result<Entry> {
        enosys()
    }
    /// Creates a file system node (regular, fifo, socket, device).
    fn mknod(&self, ctx: &Context, parent: NodeId, name: &CStr, p: CreateParams) -> io::Result<Entry> {
        enosys()
    }
    /// Creates a directory.
    fn mkdir(&self, ctx: &Context, parent: NodeId, name: &CStr, p: CreateParams) -> io::Result<Entry> {
        enosys()
    }
    /// Removes a non-directory.
    fn unlink(&self, ctx: &Context, parent: NodeId, name: &CStr) -> io::Result<()> {
        enosys()
    }
    /// Removes an empty directory.
    fn rmdir(&self, ctx: &Context, parent: NodeId, name: &CStr) -> io::Result<()> {
        enosys()
    }
    /// Renames, with renameat2 flags.
    fn rename(&self, ctx: &Context, from: (NodeId, &CStr), to: (NodeId, &CStr), flags: u32) -> io::Result<()> {
        enosys()
    }
    /// Makes a hard link to `node` as `name` in `parent`.
    fn link(&self, ctx: &Context, node: NodeId, parent: NodeId, name: &CStr) -> io::Result<Entry> {
        enosys()
    }
    /// Opens a regular file.
    fn open(&self, ctx: &Context, node: NodeId, flags: u32, kill_suidgid: bool) -> io::Result<(HandleId, OpenOptions)> {
        enosys()
    }
    /// Reads up to `p.size` bytes at `p.offset` into `w`.
    fn read(&self, ctx: &Context, node: NodeId, w: &mut dyn ZeroCopyWriter, p: ReadParams) -> io::Result<usize> {
        enosys()
    }
    /// Writes `p.size` bytes from `r` at `p.offset`.
    fn write(&self, ctx: &Context, node: NodeId, r: &mut dyn ZeroCopyReader, p: WriteParams) -> io::Result<usize> {
        enosys()
    }
    /// Filesystem statistics.
    fn statfs(&self, ctx: &Context, node: NodeId) -> io::Result<StatFs> {
        enosys()
    }
    /// Closes a file handle; `lock_owner` drops that owner's locks when `flush` or flock unlock.
    fn release(&self, ctx: &Context, node: NodeId, fh: HandleId, lock_owner: Option<u64>) -> io::Result<()> {
        enosys()
    }
    /// fsync/fdatasync.
    fn fsync(&self, ctx: &Context, node: NodeId, fh: HandleId, datasync: bool) -> io::Result<()> {
        enosys()
    }
    /// close(2) on a guest fd: drop `lock_owner`'s POSIX locks. ENOSYS means "never again".
    fn flush(&self, ctx: &Context, node: NodeId, fh: HandleId, lock_owner: u64) -> io::Result<()> {
        enosys()
    }
    /// Sets an extended attribute.
    fn setxattr(&self, ctx: &Context, node: NodeId, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        enosys()
    }
    /// Gets an extended attribute (size 0: only its size).
    fn getxattr(&self, ctx: &Context, node: NodeId, name: &CStr, size: u32) -> io::Result<XattrReply> {
        enosys()
    }
    /// Lists extended attribute names (size 0: only the size).
    fn listxattr(&self, ctx: &Context, node: NodeId, size: u32) -> io::Result<XattrReply> {
        enosys()
    }
    /// Removes an extended attribute.
    fn removexattr(&self, ctx: &Context, node: NodeId, name: &CStr) -> io::Result<()> {
        enosys()
    }
    /// Opens a directory.
    fn opendir(&self, ctx: &Context, node: NodeId, flags: u32) -> io::Result<(HandleId, OpenOptions)> {
        enosys()
    }
    /// Lists entries from `offset` into `sink` until it is full.
    fn readdir(
        &self,
        ctx: &Context,
        node: NodeId,
        fh: HandleId,
        offset: u64,
        sink: &mut dyn DirSink,
    ) -> io::Result<()> {
        enosys()
    }
    /// Closes a directory handle.
    fn releasedir(&self, ctx: &Context, node: NodeId, fh: HandleId) -> io::Result<()> {
        enosys()
    }
    /// fsync on a directory.
    fn fsyncdir(&self, ctx: &Context, node: NodeId, fh: HandleId, datasync: bool) -> io::Result<()> {
        enosys()
    }
    /// Tests for a conflicting lock (F_GETLK).
    fn getlk(&self, ctx: &Context, node: NodeId, req: LockRequest) -> io::Result<Lock> {
        enosys()
    }
    /// Takes or releases a lock (F_SETLK/F_SETLKW, flock).
    fn setlk(&self, ctx: &Context, node: NodeId, req: LockRequest) -> io::Result<()> {
        enosys()
    }
    /// Checks access (only sent without default_permissions).
    fn access(&self, ctx: &Context, node: NodeId, mask: u32) -> io::Result<()> {
        enosys()
    }
    /// Creates and opens a regular file.
    fn create(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        p: CreateParams,
    ) -> io::Result<(Entry, HandleId, OpenOptions)> {
        enosys()
    }
    /// fallocate(2) with any mode the host supports.
    fn fallocate(&self, ctx: &Context, node: NodeId, fh: HandleId, mode: u32, range: (u64, u64)) -> io::Result<()> {
        enosys()
    }
    /// lseek(2) (SEEK_DATA/SEEK_HOLE are what the guest sends).
    fn lseek(&self, ctx: &Context, node: NodeId, fh: HandleId, offset: u64, whence: u32) -> io::Result<u64> {
        enosys()
    }
    /// copy_file_range(2) between two handles.
    fn copy_file_range(&self, ctx: &Context, args: CopyRange) -> io::Result<usize> {
        enosys()
    }
    /// syncfs(2) on the filesystem holding `node`.
    fn syncfs(&self, ctx: &Context, node: NodeId) -> io::Result<()> {
        enosys()
    }
    /// Maps a file range into the DAX window (I1: replaces what the range held).
    fn setupmapping(&self, ctx: &Context, node: NodeId, m: SetupMapping) -> io::Result<()> {
        enosys()
    }
    /// Unmaps window ranges (moffset, len); unknown ranges succeed.
    fn removemapping(&self, ctx: &Context, ranges: &[(u64, u64)]) -> io::Result<()> {
        enosys()
    }
    /// Creates and opens an unnamed file in `parent` (O_TMPFILE).
    fn tmpfile(&self, ctx: &Context, parent: NodeId, p: CreateParams) -> io::Result<(Entry, HandleId, OpenOptions)> {
        enosys()
    }
}
