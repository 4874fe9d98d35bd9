//! Syscalls the DAX layer makes: file size, allocation, leases, the lease-break signals, and
//! which processes map a file (/proc).
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

// include/uapi/asm-generic/fcntl.h: not in the libc crate.
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

#[repr(C)]
struct FOwnerEx {
    typ: libc::c_int,
    pid: libc::pid_t,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// fstat(2).
fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a writable stat buffer; the fd is borrowed for the call.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled the (zeroed) buffer.
    let st = unsafe { st.assume_init() };
    Ok(st)
}

/// The file's current size.
pub fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// The file's (st_dev, st_ino).
pub fn file_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// ftruncate(2).
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// The file's mtime.
pub fn mtime(fd: BorrowedFd<'_>) -> io::Result<libc::timespec> {
    let st = fstat(fd)?;
    Ok(libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec })
}

/// Sets the mtime, leaving atime alone.
pub fn set_mtime(fd: BorrowedFd<'_>, mtime: libc::timespec) -> io::Result<()> {
    let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, mtime];
    // SAFETY: `times` points at two timespecs, as futimens requires.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// fallocate(2).
fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let inval = || io::Error::from_raw_os_error(libc::EINVAL);
    let offset = libc::off_t::try_from(offset).map_err(|_| inval())?;
    let len = libc::off_t::try_from(len).map_err(|_| inval())?;
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// Whether a read fault of a hole of `file` needs space (shmem: tmpfs, hugetlbfs), so it can
/// SIGBUS on a full filesystem. True when unknown.
pub fn holes_take_space_to_read(file: BorrowedFd<'_>) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a writable statfs buffer; the fd is borrowed for the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return true;
    }
    // SAFETY: fstatfs succeeded and filled the (zeroed) buffer.
    let f_type = unsafe { st.assume_init() }.f_type;
    matches!(f_type, libc::TMPFS_MAGIC | libc::HUGETLBFS_MAGIC)
}

/// fallocate(FALLOC_FL_KEEP_SIZE): allocates blocks without changing the size (I6).
pub fn fallocate_keep_size(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Whether `fd` was opened for writing.
pub fn is_writable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: plain fcntl on a borrowed fd.
    let fl = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    Ok(fl & libc::O_ACCMODE != libc::O_RDONLY)
}

/// The signal lease breaks are delivered with.
pub fn lease_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// The calling thread's id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() }
}

/// Takes (F_RDLCK/F_WRLCK) or drops (F_UNLCK) a lease, with breaks signalled to thread `tid`
/// as `lease_signal()` carrying the fd in si_fd.
pub fn set_lease(fd: BorrowedFd<'_>, typ: libc::c_int, tid: libc::pid_t) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if typ != libc::F_UNLCK {
        // SAFETY: plain fcntl on a borrowed fd.
        check(unsafe { libc::fcntl(raw, F_SETSIG, lease_signal()) })?;
        let owner = FOwnerEx { typ: F_OWNER_TID, pid: tid };
        // SAFETY: `owner` is a live f_owner_ex the kernel reads during the call.
        check(unsafe { libc::fcntl(raw, F_SETOWN_EX, &raw const owner) })?;
    }
    // SAFETY: plain fcntl on a borrowed fd.
    check(unsafe { libc::fcntl(raw, libc::F_SETLEASE, typ) }).map(drop)
}

/// The lease type the fd's access mode allows: a write lease for a writable fd.
pub fn lease_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: plain fcntl on a borrowed fd.
    let fl = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    Ok(if fl & libc::O_ACCMODE == libc::O_RDONLY { libc::F_RDLCK } else { libc::F_WRLCK })
}

fn sigset_of(sigs: &[libc::c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `set` is a writable sigset; sigemptyset initializes it.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    for &sig in sigs {
        // SAFETY: `set` was initialized just above; `sig` is a valid signal number.
        unsafe { libc::sigaddset(set.as_mut_ptr(), sig) };
    }
    // SAFETY: initialized by sigemptyset.
    unsafe { set.assume_init() }
}

/// The signals the lease thread takes: `lease_signal()`, and SIGIO, which the kernel sends
/// instead (without the fd) when the realtime signal cannot be queued.
fn lease_signals() -> libc::sigset_t {
    sigset_of(&[lease_signal(), libc::SIGIO])
}

fn block(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is a valid sigset; only the calling thread's mask changes.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(()) }
}

/// Blocks `lease_signal()` and SIGIO in the calling thread, so they are only ever taken by
/// `wait_signal`.
pub fn block_lease_signals() -> io::Result<()> {
    block(&lease_signals())
}

/// Blocks SIGIO in the calling thread and in every thread it starts from now on.
pub fn block_sigio() -> io::Result<()> {
    block(&sigset_of(&[libc::SIGIO]))
}

/// What `wait_signal` took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseSignal {
    /// The lease on this fd is being broken.
    Break(libc::c_int),
    /// SIGIO: a lease-break signal was lost (queue full), or someone sent SIGIO. Any lease may
    /// be breaking.
    Lost,
}

/// Waits up to `timeout` for `lease_signal()` or SIGIO.
pub fn wait_signal(timeout: Duration) -> Option<LeaseSignal> {
    let set = lease_signals();
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(1),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `set`, `info` and `ts` are live for the call; `info` is writable.
    let r = unsafe { libc::sigtimedwait(&raw const set, info.as_mut_ptr(), &raw const ts) };
    if r < 0 {
        return None;
    }
    if r != lease_signal() {
        return Some(LeaseSignal::Lost);
    }
    // SAFETY: sigtimedwait succeeded and filled `info`.
    let info = unsafe { info.assume_init() };
    // siginfo for SIGPOLL-style signals: si_band (long) then si_fd (int), after the header
    // (si_signo, si_errno, si_code, and padding to 8 bytes).
    Some(LeaseSignal::Break(si_fd(&info)))
}

/// F_GETLEASE: the lease the fd holds now; while a break is pending, the type it is being
/// broken to (F_UNLCK, or F_RDLCK for a write lease being downgraded).
pub fn lease_now(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: plain fcntl on a borrowed fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) })
}

fn si_fd(info: &libc::siginfo_t) -> libc::c_int {
    #[repr(C)]
    struct SigPoll {
        signo: libc::c_int,
        errno: libc::c_int,
        code: libc::c_int,
        pad: libc::c_int,
        band: libc::c_long,
        fd: libc::c_int,
    }
    const _: () = assert!(size_of::<SigPoll>() <= size_of::<libc::siginfo_t>());
    // SAFETY: siginfo_t is larger than SigPoll and at least as aligned; for a signal queued by
    // a lease break the kernel fills the SIGPOLL layout, which SigPoll mirrors (x86_64 ABI).
    let p = unsafe { &*std::ptr::from_ref(info).cast::<SigPoll>() };
    p.fd
}

/// An anonymous memory file of `len` zero bytes.
pub fn memfd(name: &std::ffi::CStr, len: u64) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated string borrowed for the call.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    ftruncate(std::os::fd::AsFd::as_fd(&fd), len)?;
    Ok(fd.into())
}

/// The processes other than this one and `exclude` that map the file (dev, ino), per
/// /proc/<pid>/maps: among `among` only, or among every process when `None` (a scan of all
/// of /proc). A process whose maps this one may not read is not seen (the README says when
/// that happens: a rootless supervisor and a frontend of another user).
pub fn processes_mapping(dev: u64, ino: u64, from: u64, among: Option<&[u32]>, exclude: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    let want_dev = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let want_ino = ino.to_string();
    let maps_file = |pid: u32| {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return false };
        maps.lines().any(|l| {
            // start-end perms offset dev inode [path]: the mapping covers file offsets
            // [offset, offset + end - start).
            let mut f = l.split_ascii_whitespace();
            let range = f.next().and_then(|r| r.split_once('-'));
            let span = range.and_then(|(a, b)| {
                Some(u64::from_str_radix(b, 16).ok()?.saturating_sub(u64::from_str_radix(a, 16).ok()?))
            });
            let offset = f.nth(1).and_then(|o| u64::from_str_radix(o, 16).ok());
            let reaches = match (offset, span) {
                (Some(o), Some(s)) => o.saturating_add(s) > from,
                _ => true,
            };
            f.next() == Some(want_dev.as_str()) && f.next() == Some(want_ino.as_str()) && reaches
        })
    };
    let candidates: Vec<u32> = match among {
        Some(pids) => pids.to_vec(),
        None => std::fs::read_dir("/proc")
            .map(|d| d.flatten().filter_map(|p| p.file_name().to_str().and_then(|n| n.parse().ok())).collect())
            .unwrap_or_default(),
    };
    candidates.into_iter().filter(|&pid| pid != me && !exclude.contains(&pid) && maps_file(pid)).collect()
}

/// pread(2) into `buf`; short only at EOF (retries EINTR and partial reads).
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        let off =
            libc::off_t::try_from(offset + done as u64).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `rest` is a writable buffer of `rest.len()` bytes; the fd is borrowed.
        let n = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), off) };
        match n {
            0 => break,
            n if n > 0 => done += n.unsigned_abs(),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// Zeroes [offset, offset + len) of `fd` by punching a hole (a memfd gives the pages back).
pub fn punch(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// A timestamp as (seconds, nanoseconds).
pub type Time = (i64, i64);

/// The file's size, mtime and ctime.
pub fn size_and_times(fd: BorrowedFd<'_>) -> io::Result<(u64, Time, Time)> {
    let st = fstat(fd)?;
    Ok((u64::try_from(st.st_size).unwrap_or(0), (st.st_mtime, st.st_mtime_nsec), (st.st_ctime, st.st_ctime_nsec)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::{file_id, lease_now, memfd, processes_mapping};

    #[test]
    fn processes_mapping_a_file_no_one_maps_is_none() {
        let f = memfd(c"test", 4096).unwrap();
        let (dev, ino) = file_id(f.as_fd()).unwrap();
        assert!(processes_mapping(dev, ino, 0, None, &[]).is_empty());
        assert!(processes_mapping(dev, ino, 0, Some(&[std::process::id(), u32::MAX]), &[]).is_empty());
    }

    #[test]
    fn lease_now_without_a_lease_is_unlck() {
        let f = memfd(c"test", 4096).unwrap();
        assert_eq!(lease_now(f.as_fd()).unwrap(), libc::F_UNLCK);
    }
}
