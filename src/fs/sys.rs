//! Safe wrappers for every host syscall the passthrough filesystem makes.
//! Each takes `BorrowedFd` and `&CStr`, and returns `io::Result` built from errno, so the
//! guest sees the host's raw error. No policy here.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{Attr, StatFs};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn check_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `ret` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

fn check_len(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

const EMPTY: &CStr = c"";

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2 with RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS relative to `dir`; plain openat where the
/// kernel has no openat2 (callers have already rejected names with '/', "." and "..").
pub fn openat_beneath(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: u64::from((flags | libc::O_CLOEXEC).cast_unsigned()),
        mode: u64::from(mode),
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `name` is NUL-terminated and `how` is a live OpenHow of the size passed; the
    // kernel only reads both during the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), name.as_ptr(), &raw const how, size_of::<OpenHow>())
    };
    if ret >= 0 {
        let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EMFILE))?;
        return check_fd(fd);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    openat(dir, name, flags, mode)
}

/// openat(2) with O_CLOEXEC.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and borrowed for the call; the result is checked.
    check_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// A decimal fd number as a C string, for paths under /proc/self/fd.
pub fn fd_name(fd: BorrowedFd<'_>) -> std::ffi::CString {
    // A decimal number never contains NUL.
    std::ffi::CString::new(fd.as_raw_fd().to_string()).unwrap_or_default()
}

/// statx of `fd` itself (AT_EMPTY_PATH, no automount, no symlink follow).
pub fn statx(fd: BorrowedFd<'_>) -> io::Result<(Attr, u64)> {
    statx_at(fd, EMPTY, libc::AT_EMPTY_PATH)
}

/// statx of `name` in `dir`; returns the attributes and the mount id.
pub fn statx_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<(Attr, u64)> {
    let mut st = MaybeUninit::<libc::statx>::zeroed();
    let flags = flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME | libc::STATX_MNT_ID;
    // SAFETY: `name` is NUL-terminated, `st` is a writable statx buffer of the right type.
    check(unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, mask, st.as_mut_ptr()) })?;
    // SAFETY: statx succeeded, so it filled the buffer (and it was zeroed before anyway).
    let st = unsafe { st.assume_init() };
    let ts = |t: libc::statx_timestamp| (t.tv_sec, t.tv_nsec);
    let attr = Attr {
        ino: st.stx_ino,
        size: st.stx_size,
        blocks: st.stx_blocks,
        atime: ts(st.stx_atime),
        mtime: ts(st.stx_mtime),
        ctime: ts(st.stx_ctime),
        btime: ts(st.stx_btime),
        mode: u32::from(st.stx_mode),
        nlink: st.stx_nlink,
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: libc::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        blksize: st.stx_blksize,
        mask: st.stx_mask,
        attributes: (st.stx_attributes, st.stx_attributes_mask),
        flags: 0,
    };
    Ok((attr, st.stx_mnt_id))
}

/// fstatvfs(2).
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<StatFs> {
    let mut st = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `st` is a writable statvfs buffer; the fd is open for the call.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded and filled the (zeroed) buffer.
    let st = unsafe { st.assume_init() };
    Ok(StatFs {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: u32::try_from(st.f_bsize).unwrap_or(u32::MAX),
        namelen: u32::try_from(st.f_namemax).unwrap_or(255),
        frsize: u32::try_from(st.f_frsize).unwrap_or(u32::MAX),
    })
}

/// mkdirat(2).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name borrowed for the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// mknodat(2).
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: NUL-terminated name borrowed for the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })
}

/// symlinkat(2).
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and borrowed for the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// unlinkat(2).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: NUL-terminated name borrowed for the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// renameat2(2).
pub fn renameat2(
    old: BorrowedFd<'_>,
    oldname: &CStr,
    new: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and borrowed for the call.
    check(unsafe { libc::renameat2(old.as_raw_fd(), oldname.as_ptr(), new.as_raw_fd(), newname.as_ptr(), flags) })
}

/// linkat(2).
pub fn linkat(old: BorrowedFd<'_>, oldname: &CStr, new: BorrowedFd<'_>, newname: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and borrowed for the call.
    check(unsafe { libc::linkat(old.as_raw_fd(), oldname.as_ptr(), new.as_raw_fd(), newname.as_ptr(), flags) })
}

/// readlinkat(fd, "") of an O_PATH symlink fd.
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its whole length, which is what we pass.
    let n = check_len(unsafe { libc::readlinkat(fd.as_raw_fd(), EMPTY.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(buf)
}

/// fchmodat(2) (follows; used on /proc/self/fd entries).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name borrowed for the call.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// fchownat(fd, "", AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW); u32::MAX leaves an id alone.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: the empty path is a static NUL-terminated string.
    check(unsafe { libc::fchownat(fd.as_raw_fd(), EMPTY.as_ptr(), uid, gid, flags) })
}

/// utimensat(2) on `name` in `dir` (follows; used on /proc/self/fd entries).
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `times` points at two timespecs, as required.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) })
}

/// futimens(2).
pub fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points at two timespecs, as required.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

/// fchmod(2) on an open (non-O_PATH) fd.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// ftruncate(2).
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })
}

/// fallocate(2) with any mode.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let inval = || io::Error::from_raw_os_error(libc::EINVAL);
    let offset = libc::off_t::try_from(offset).map_err(|_| inval())?;
    let len = libc::off_t::try_from(len).map_err(|_| inval())?;
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) })
}

/// lseek(2).
pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> io::Result<u64> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on a borrowed fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    u64::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// fsync(2) or fdatasync(2).
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if datasync {
        // SAFETY: plain syscall on a borrowed fd.
        check(unsafe { libc::fdatasync(raw) })
    } else {
        // SAFETY: plain syscall on a borrowed fd.
        check(unsafe { libc::fsync(raw) })
    }
}

/// syncfs(2).
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// copy_file_range(2) with explicit offsets.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let inval = || io::Error::from_raw_os_error(libc::EINVAL);
    let mut off_in = libc::loff_t::try_from(off_in).map_err(|_| inval())?;
    let mut off_out = libc::loff_t::try_from(off_out).map_err(|_| inval())?;
    // SAFETY: both offsets are live locals the kernel updates; the fds are borrowed for the call.
    check_len(unsafe {
        libc::copy_file_range(fd_in.as_raw_fd(), &raw mut off_in, fd_out.as_raw_fd(), &raw mut off_out, len, flags)
    })
}

/// Reads directory entries with getdents64 into `buf`; returns the bytes filled.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its whole length, which is what we pass.
    let ret = unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// fsetxattr(2).
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `value` is readable for its length.
    check(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
}

/// fgetxattr(2); an empty `buf` asks for the size.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `name` is NUL-terminated; `buf` is writable for its length.
    check_len(unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// flistxattr(2); an empty `buf` asks for the size.
pub fn flistxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_len(unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// fremovexattr(2).
pub fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) })
}

/// fcntl(F_OFD_GETLK / F_OFD_SETLK / F_OFD_SETLKW) on `fd`.
pub fn ofd_lock(fd: BorrowedFd<'_>, cmd: i32, lock: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `lock` is a live flock the kernel reads and (for GETLK) writes.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, std::ptr::from_mut(lock)) })
}

/// flock(2).
pub fn flock(fd: BorrowedFd<'_>, op: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) })
}

/// The caller thread's umask, swapped; returns the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail. It is per-process unless the thread unshared CLONE_FS, which
    // every worker thread does (see `unshare_fs`).
    unsafe { libc::umask(mask) }
}

/// unshare(CLONE_FS): give this thread its own umask and cwd.
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: affects only the calling thread's fs_struct.
    check(unsafe { libc::unshare(libc::CLONE_FS) })
}

/// setfsuid(2) for this thread only (a raw syscall; glibc would broadcast nothing here either).
pub fn setfsuid(uid: u32) -> u32 {
    // SAFETY: per-thread credential change, reverted by the caller's guard.
    let old = unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
    u32::try_from(old).unwrap_or(0)
}

/// setfsgid(2) for this thread only.
pub fn setfsgid(gid: u32) -> u32 {
    // SAFETY: per-thread credential change, reverted by the caller's guard.
    let old = unsafe { libc::syscall(libc::SYS_setfsgid, gid) };
    u32::try_from(old).unwrap_or(0)
}

/// setgroups(2) for this thread only: the raw syscall, not glibc's all-threads broadcast.
pub fn setgroups_thread(groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` is readable for its length; the change is per-thread.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// This thread's supplementary groups.
pub fn getgroups() -> io::Result<Vec<u32>> {
    // SAFETY: size 0 asks for the count only.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut v = vec![0u32; n];
    let len = libc::c_int::try_from(n).unwrap_or(0);
    // SAFETY: `v` is writable for `n` entries.
    let got = unsafe { libc::getgroups(len, v.as_mut_ptr()) };
    v.truncate(usize::try_from(got).map_err(|_| io::Error::last_os_error())?);
    Ok(v)
}

/// The process's effective uid.
pub fn geteuid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() }
}

/// The host page size.
pub fn page_size() -> usize {
    // SAFETY: always succeeds for _SC_PAGESIZE.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Sets RLIMIT_NOFILE soft and hard limits.
pub fn set_nofile_limit(n: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: `lim` is a live rlimit read by the kernel.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) })
}

/// Sets only the soft RLIMIT_NOFILE (up to the current hard limit).
pub fn set_nofile_limit_soft(n: u64) -> io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let lim = libc::rlimit { rlim_cur: n.min(hard), rlim_max: hard };
    // SAFETY: `lim` is a live rlimit read by the kernel.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) })
}

/// The current RLIMIT_NOFILE (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a live rlimit written by the kernel.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// AT_FDCWD as a borrowed fd, for opening absolute paths at startup.
pub fn cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel every *at call accepts in place of a directory fd; it is
    // never closed.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// faccessat(2) with AT_EACCESS: checks against the thread's fsuid/fsgid.
pub fn faccessat(dir: BorrowedFd<'_>, name: &CStr, mask: i32) -> io::Result<()> {
    // SAFETY: NUL-terminated name borrowed for the call.
    check(unsafe { libc::faccessat(dir.as_raw_fd(), name.as_ptr(), mask, libc::AT_EACCESS) })
}

/// Takes ownership of the listening socket the operator passed with --fd.
pub fn take_listener_fd(fd: i32) -> std::os::unix::net::UnixListener {
    use std::os::fd::FromRawFd;
    // SAFETY: --fd names a listening socket handed to this process to own; nothing else in the
    // process uses that descriptor number, and it is taken exactly once, at startup.
    unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) }
}

/// Whether `fd` was opened read-only.
pub fn is_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: plain fcntl on a borrowed fd.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl & libc::O_ACCMODE == libc::O_RDONLY)
}

/// MAX_HANDLE_SZ of fcntl.h: the largest file handle any filesystem makes.
const MAX_HANDLE_SZ: usize = MAX_HANDLE_BYTES as usize;
const MAX_HANDLE_BYTES: u32 = 128;

/// struct file_handle with room for the largest handle.
#[repr(C)]
struct RawFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// A file handle made by `name_to_handle_at`: the filesystem's opaque bytes and their type.
/// Only the daemon makes these, from its own fds; none ever comes from the guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    handle_type: i32,
    bytes: Box<[u8]>,
}

/// name_to_handle_at(fd, "", AT_EMPTY_PATH): the handle of the inode `fd` refers to and the
/// id of the mount it is on. EOPNOTSUPP from a filesystem that cannot make handles.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, u64)> {
    let mut raw = RawFileHandle { handle_bytes: MAX_HANDLE_BYTES, handle_type: 0, f_handle: [0; MAX_HANDLE_SZ] };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a live file_handle whose handle_bytes says how much room follows it, and
    // `mount_id` a live int; the kernel writes only within both during the call. The path is
    // the static empty string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &raw mut raw,
            &raw mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = usize::try_from(raw.handle_bytes).unwrap_or(usize::MAX);
    let bytes = raw.f_handle.get(..len).ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let mount_id = u64::try_from(mount_id).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((FileHandle { handle_type: raw.handle_type, bytes: bytes.into() }, mount_id))
}

/// open_by_handle_at(2): opens the inode `handle` names on the filesystem of `mount` (an fd
/// opened without O_PATH on that mount) with `flags` and O_CLOEXEC. Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount: BorrowedFd<'_>, handle: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
    let mut raw = RawFileHandle {
        handle_bytes: u32::try_from(handle.bytes.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle
        .get_mut(..handle.bytes.len())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
        .copy_from_slice(&handle.bytes);
    // SAFETY: `raw` is a live file_handle holding handle_bytes bytes of handle, which the
    // kernel only reads; the result is checked before it is wrapped in an OwnedFd.
    let ret =
        unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount.as_raw_fd(), &raw mut raw, flags | libc::O_CLOEXEC) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    check_fd(libc::c_int::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EMFILE))?)
}
