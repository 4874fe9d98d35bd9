//! Thin, checked wrappers over the libc calls std does not offer. Each
//! returns `io::Result` so the caller can tell "not supported" (skip) from
//! a real failure.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use libc::{c_int, c_uint, c_void};

/// A path as a C string (fails on an interior NUL).
pub fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

fn off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// fallocate(2).
pub fn fallocate(f: &File, mode: c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; no pointers.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off(offset)?, off(len)?) }).map(drop)
}

/// lseek(2) with any whence (SEEK_DATA/SEEK_HOLE included).
pub fn lseek(f: &File, offset: u64, whence: c_int) -> io::Result<u64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off(offset)?, whence) };
    u64::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// renameat2(2) relative to the current directory.
pub fn renameat2(from: &Path, to: &Path, flags: c_uint) -> io::Result<()> {
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: both strings are valid NUL-terminated C strings for the call.
    cvt(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) }).map(drop)
}

/// copy_file_range(2) with explicit offsets; returns bytes copied.
pub fn copy_file_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: usize) -> io::Result<usize> {
    let mut so = off(src_off)?;
    let mut d = off(dst_off)?;
    // SAFETY: the offset pointers point to live locals; fds are valid.
    let r = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d, len, 0) };
    cvt_size(r)
}

/// setxattr(2).
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: c_int) -> io::Result<()> {
    let (p, n) = (cstr(path)?, cstr(name)?);
    // SAFETY: valid C strings and a value buffer of the given length.
    cvt(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast::<c_void>(), value.len(), flags) })
        .map(drop)
}

/// getxattr(2) into a buffer of up to 64 KiB.
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cstr(path)?, cstr(name)?);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings; buf is writable for buf.len() bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
    buf.truncate(cvt_size(r)?);
    Ok(buf)
}

/// listxattr(2): the names.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cstr(path)?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string; buf is writable for buf.len() bytes.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast::<libc::c_char>(), buf.len()) };
    buf.truncate(cvt_size(r)?);
    Ok(buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// removexattr(2).
pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cstr(path)?, cstr(name)?);
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// statfs(2).
pub fn statfs(path: &Path) -> io::Result<libc::statfs> {
    let p = cstr(path)?;
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a writable statfs.
    cvt(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    Ok(st)
}

/// A `struct flock` for a byte range.
pub fn flock_range(typ: c_int, start: u64, len: u64) -> io::Result<libc::flock> {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = i16::try_from(typ).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = off(start)?;
    fl.l_len = off(len)?;
    Ok(fl)
}

/// fcntl record-lock command (F_SETLK, F_SETLKW, F_GETLK, F_OFD_*); the
/// struct comes back as the kernel left it (F_GETLK fills it in).
pub fn fcntl_lock(f: &File, cmd: c_int, mut fl: libc::flock) -> io::Result<libc::flock> {
    // SAFETY: fl is a valid, writable struct flock for the duration.
    cvt(unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) })?;
    Ok(fl)
}

/// flock(2).
pub fn flock(f: &File, op: c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::flock(f.as_raw_fd(), op) }).map(drop)
}

/// open(2) with raw flags and mode (O_TMPFILE, O_DIRECT...). O_CLOEXEC is added.
pub fn open(path: &Path, flags: c_int, mode: u32) -> io::Result<File> {
    let p = cstr(path)?;
    // SAFETY: valid C string; mode is passed as the variadic third argument.
    let fd = cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, new, AT_SYMLINK_FOLLOW):
/// gives an O_TMPFILE file a name.
pub fn link_fd(f: &File, new: &Path) -> io::Result<()> {
    let from = cstr(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let to = cstr(new)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) })
        .map(drop)
}

/// utimensat(2) (no flags): set atime and mtime to (sec, nsec).
pub fn utimens(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let p = cstr(path)?;
    let ts =
        [libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 }, libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 }];
    // SAFETY: valid C string and a two-element timespec array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) }).map(drop)
}

/// mkfifo(3).
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkfifo(p.as_ptr(), mode) }).map(drop)
}

/// The size as the server has it: statx(AT_STATX_FORCE_SYNC) makes a
/// network/FUSE file system ask instead of using cached attributes.
pub fn statx_size_sync(path: &Path) -> io::Result<u64> {
    let p = cstr(path)?;
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a writable statx buffer.
    cvt(unsafe { libc::statx(libc::AT_FDCWD, p.as_ptr(), libc::AT_STATX_FORCE_SYNC, libc::STATX_SIZE, &mut stx) })?;
    Ok(stx.stx_size)
}

/// Whether the kernel accesses this file through DAX (statx
/// STATX_ATTR_DAX); `None` if the kernel does not report the attribute.
pub fn is_dax(path: &Path) -> io::Result<Option<bool>> {
    let p = cstr(path)?;
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a writable statx buffer.
    cvt(unsafe { libc::statx(libc::AT_FDCWD, p.as_ptr(), 0, libc::STATX_BASIC_STATS, &mut stx) })?;
    let bit = libc::STATX_ATTR_DAX as u64;
    Ok((stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0))
}

/// "N/M" files of `paths` that are DAX ("?" where the kernel cannot say).
pub fn dax_summary<'a>(paths: impl IntoIterator<Item = &'a Path>) -> String {
    let (mut dax, mut total, mut unknown) = (0, 0, false);
    for p in paths {
        total += 1;
        match is_dax(p) {
            Ok(Some(true)) => dax += 1,
            Ok(Some(false)) => {}
            _ => unknown = true,
        }
    }
    if unknown { format!("?/{total}") } else { format!("{dax}/{total}") }
}

/// sync_file_range(SYNC_FILE_RANGE_WRITE) of the whole file: start
/// writeback of dirty pages without waiting for it.
pub fn start_writeback(f: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) }).map(drop)
}

/// One directory entry from getdents64.
#[derive(Debug, Clone)]
pub struct Dirent {
    /// d_ino.
    pub ino: u64,
    /// d_type (DT_*).
    pub kind: u8,
    /// d_name.
    pub name: Vec<u8>,
}

/// Read a whole directory with getdents64 and a small buffer of `bufsize`
/// bytes (many calls, each resuming at the previous entry's offset).
/// Returns the entries and the number of getdents64 calls made.
pub fn getdents_all(dir: &File, bufsize: usize) -> io::Result<(Vec<Dirent>, usize)> {
    const HDR: usize = 19; // d_ino(8) d_off(8) d_reclen(2) d_type(1)
    let mut buf = vec![0u8; bufsize];
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        // SAFETY: buf is writable for buf.len() bytes; fd is a directory.
        let r = unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
        if n == 0 {
            return Ok((out, calls));
        }
        let mut pos = 0;
        while pos + HDR <= n {
            let rec = buf.get(pos..n).ok_or_else(|| io::Error::other("getdents64: bad record"))?;
            let ino = u64::from_ne_bytes(rec.get(0..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]));
            let reclen =
                usize::from(u16::from_ne_bytes(rec.get(16..18).and_then(|s| s.try_into().ok()).unwrap_or([0; 2])));
            let kind = rec.get(18).copied().unwrap_or(0);
            if reclen < HDR || reclen > rec.len() {
                return Err(io::Error::other(format!("getdents64: bad reclen {reclen}")));
            }
            let name_field = rec.get(HDR..reclen).unwrap_or(&[]);
            let name_len = name_field.iter().position(|&b| b == 0).unwrap_or(name_field.len());
            out.push(Dirent { ino, kind, name: name_field.get(..name_len).unwrap_or(&[]).to_vec() });
            pos += reclen;
        }
    }
}

/// Write back and drop the guest's page cache, dentries and inodes, so the
/// next reads come from the daemon.
pub fn drop_caches() -> io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
}

/// The page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(r).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// exit(code).
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

/// fork(2): `Ok(None)` in the child, `Ok(Some(pid))` in the parent. Only
/// for single-threaded callers; the child must end with [`child_exit`].
pub fn fork() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: the callers are single-threaded, so the child's state is sane.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 { None } else { Some(pid) })
}

/// _exit(2) from a forked child (no atexit handlers, no stdio flush).
pub fn child_exit(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// waitpid(2) for one child.
pub fn wait(pid: libc::pid_t) -> io::Result<Exit> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid, writable int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    })
}

/// waitpid(WNOHANG): `None` while the child runs.
pub fn try_wait(pid: libc::pid_t) -> io::Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: status is a valid, writable int.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    }))
}

/// SIGKILL one of our children.
pub fn kill(pid: libc::pid_t) {
    // SAFETY: plain syscall; pid is a child we forked and have not reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A shared file mapping (MAP_SHARED), unmapped on drop. Its bytes are
/// only ever touched through [`crate::probe`], which survives SIGBUS.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all accesses go through the
// probe copy routine (no Rust references into it), so sharing the address
// between threads is fine — racing accesses are what the tests are about.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// mmap(fd, offset, len, PROT_READ[|PROT_WRITE], MAP_SHARED).
    pub fn new(f: &File, offset: u64, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED); the
        // result is checked before use.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, libc::MAP_SHARED, f.as_raw_fd(), off(offset)?) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast::<u8>(), len })
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw start pointer (for the probe routine).
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// msync(MS_SYNC) of the whole mapping.
    pub fn msync(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our live mapping.
        cvt(unsafe { libc::msync(self.ptr.cast::<c_void>(), self.len, libc::MS_SYNC) }).map(drop)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range mmap returned, once.
        unsafe { libc::munmap(self.ptr.cast::<c_void>(), self.len) };
    }
}

/// An errno as text, e.g. "EOPNOTSUPP".
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENODATA) => "ENODATA",
        Some(libc::ENOTEMPTY) => "ENOTEMPTY",
        Some(libc::EISDIR) => "EISDIR",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::ELOOP) => "ELOOP",
        Some(libc::ENXIO) => "ENXIO",
        Some(libc::EXDEV) => "EXDEV",
        Some(libc::EIO) => "EIO",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EFBIG) => "EFBIG",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EINTR) => "EINTR",
        Some(libc::ESTALE) => "ESTALE",
        Some(libc::EROFS) => "EROFS",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::ENOTCONN) => "ENOTCONN",
        Some(n) => return format!("errno {n}"),
        None => return e.to_string(),
    };
    name.to_owned()
}
