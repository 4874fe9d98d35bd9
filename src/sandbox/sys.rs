//! Safe wrappers for the syscalls that build the sandbox: fork, namespaces, mounts, chroot,
//! capabilities, prctl, signals and child reaping. Each returns `io::Result` from errno; no
//! policy here.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn check_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `ret` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Which side of a fork this is.
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(libc::pid_t),
    /// The child.
    Child,
}

/// fork(2). Callers fork only while the process is single-threaded (before any worker or
/// library thread exists), so the child holds no lock another thread held at the fork.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory preconditions; the single-thread rule above keeps the child's
    // heap and locks consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(p)),
    }
}

/// unshare(2) with CLONE_* `flags`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes plain flags and touches no memory of ours.
    check(unsafe { libc::unshare(flags) })
}

/// mount(2). `None` arguments pass NULL.
pub fn mount(src: Option<&CStr>, target: &CStr, fstype: Option<&CStr>, flags: libc::c_ulong) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is NULL or a NUL-terminated string borrowed for the call; no data.
    check(unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, std::ptr::null()) })
}

/// umount2(2).
pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `target` is a NUL-terminated string borrowed for the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// pivot_root(2) (no libc wrapper).
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated strings borrowed for the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) }).map(drop)
}

/// chroot(2).
pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    check(unsafe { libc::chroot(path.as_ptr()) })
}

/// chdir(2). Only the sandbox setup changes the cwd, before any other thread exists.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call.
    check(unsafe { libc::chdir(path.as_ptr()) })
}

/// openat(2) of an absolute path, O_CLOEXEC added.
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call; the result is checked.
    check_fd(unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), flags | libc::O_CLOEXEC) })
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the options used here take integer arguments only (no pointers).
    let r = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// PR_SET_PDEATHSIG: `sig` when the parent thread dies.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, libc::c_ulong::try_from(sig).unwrap_or(0)).map(drop)
}

/// PR_SET_NO_NEW_PRIVS.
pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

/// PR_CAPBSET_DROP of one capability from the bounding set.
pub fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)).map(drop)
}

/// Whether `cap` is in the bounding set (false for numbers this kernel does not know).
pub fn in_bounding_set(cap: u32) -> bool {
    prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap)).is_ok_and(|r| r == 1)
}

/// PR_CAP_AMBIENT_CLEAR_ALL.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(r)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capability.h: 64-bit sets in two 32-bit words.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted) capability sets.
pub fn capget() -> io::Result<(u64, u64)> {
    let mut hdr = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and a two-element data array of the v3 layout, both writable and
    // borrowed for the call.
    check_long(unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) })?;
    let [lo, hi] = data;
    let join = |l: u32, h: u32| u64::from(l) | (u64::from(h) << 32);
    Ok((join(lo.effective, hi.effective), join(lo.permitted, hi.permitted)))
}

/// Sets the calling thread's effective and permitted sets to `caps`, inheritable to none.
pub fn capset(caps: u64) -> io::Result<()> {
    let mut hdr = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let lo = u32::try_from(caps & 0xffff_ffff).unwrap_or(0);
    let hi = u32::try_from(caps >> 32).unwrap_or(0);
    let data = [
        CapData { effective: lo, permitted: lo, inheritable: 0 },
        CapData { effective: hi, permitted: hi, inheritable: 0 },
    ];
    // SAFETY: the header (written by the kernel on a version mismatch) and a two-element data
    // array of the v3 layout, borrowed for the call.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) }).map(drop)
}

/// setgroups(2) with an empty list (process-wide; called while single-threaded).
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list; the pointer is not read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })
}

/// setresuid/setresgid to 0 inside a new user namespace.
pub fn become_ns_root() -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(0, 0, 0) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(0, 0, 0) })
}

/// geteuid(2).
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// getegid(2).
pub fn getegid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getegid() }
}

/// getppid(2).
pub fn getppid() -> libc::pid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getppid() }
}

/// The uid (as this process's user namespace sees it) of the peer of socket `fd`, by fd
/// number; None if `fd` is not an open socket with a peer.
pub fn peer_uid(fd: libc::c_int) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = libc::socklen_t::try_from(size_of::<libc::ucred>()).unwrap_or(0);
    // SAFETY: `cred` and `len` are writable and sized for SO_PEERCRED; an fd number that is not
    // an open socket only makes the call fail (EBADF, ENOTSOCK), it touches no memory of ours.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len) };
    // No peer: the kernel reports uid -1.
    (r == 0 && cred.uid != u32::MAX).then_some(cred.uid)
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::kill(pid, sig) })
}

/// waitpid(2) for `pid`, retried on EINTR; returns the raw wait status.
pub fn waitpid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a writable int borrowed for the call.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The signal that killed a child, from its wait status.
pub fn killed_by(status: libc::c_int) -> Option<libc::c_int> {
    libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
}

/// A wait status as a process exit code (128 + signal for a killed child, as shells do).
pub fn exit_code(status: libc::c_int) -> u8 {
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    };
    u8::try_from(code).unwrap_or(1)
}

/// pidfd_open(2): an fd that polls readable when `pid` exits.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only; the result is checked before being owned.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    check_fd(libc::c_int::try_from(r).unwrap_or(-1))
}

/// Blocks `signals` for the calling thread and returns a signalfd that reads them.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `set` is a writable sigset buffer.
    check(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    for &s in signals {
        // SAFETY: `set` was initialised by sigemptyset above.
        check(unsafe { libc::sigaddset(set.as_mut_ptr(), s) })?;
    }
    // SAFETY: sigemptyset/sigaddset initialised the set.
    let set = unsafe { set.assume_init() };
    // SAFETY: `set` is a valid sigset borrowed for the call; no old set requested.
    check(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) })?;
    // SAFETY: `set` is a valid sigset borrowed for the call; the result is checked.
    check_fd(unsafe { libc::signalfd(-1, &raw const set, libc::SFD_CLOEXEC) })
}

/// Reads one signal number from a signalfd.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::zeroed();
    let len = size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of `len` bytes borrowed for the call.
    let r = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), len) };
    if usize::try_from(r).ok() != Some(len) {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the whole (zeroed) structure.
    Ok(unsafe { info.assume_init() }.ssi_signo)
}

/// poll(2) on `fds` for POLLIN, retried on EINTR; returns which are ready (or hung up).
/// Gives up after `timeout` (None: never); then nothing is readable.
pub fn poll_readable_for(fds: &[BorrowedFd<'_>], timeout: Option<std::time::Duration>) -> io::Result<Vec<bool>> {
    let ms = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX));
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let n = libc::nfds_t::try_from(p.len()).unwrap_or(0);
    loop {
        // SAFETY: `p` is a writable array of `n` pollfds borrowed for the call.
        let r = unsafe { libc::poll(p.as_mut_ptr(), n, ms) };
        if r >= 0 {
            return Ok(p.iter().map(|x| x.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Installs a handler for SIGSYS that reports the blocked syscall on stderr and returns
/// (`--seccomp trap`): the call then fails instead of killing the daemon.
pub fn install_sigsys_reporter() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is valid (no handler, empty mask, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = sigsys_handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa` is a valid sigaction borrowed for the call; no old action requested.
    check(unsafe { libc::sigaction(libc::SIGSYS, &raw const sa, std::ptr::null_mut()) })
}

/// Async-signal-safe: formats the syscall number into a stack buffer and write(2)s it.
extern "C" fn sigsys_handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The kernel's siginfo for SIGSYS carries si_syscall at byte 24 on 64-bit (after
    // si_call_addr), see include/uapi/asm-generic/siginfo.h.
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo (128 bytes) for SA_SIGINFO handlers, so
        // byte 24 is inside it.
        let at = unsafe { info.cast::<u8>().add(24) };
        // SAFETY: for SIGSYS those bytes hold an int; read_unaligned needs no alignment.
        unsafe { at.cast::<libc::c_int>().read_unaligned() }
    };
    let mut buf = *b"daxfsd: seccomp: blocked syscall           \n";
    let mut n = nr.unsigned_abs();
    let mut i = 42;
    loop {
        if let Some(b) = buf.get_mut(i) {
            *b = b'0' + u8::try_from(n % 10).unwrap_or(0);
        }
        n /= 10;
        if n == 0 || i == 33 {
            break;
        }
        i -= 1;
    }
    // SAFETY: `buf` is a live stack buffer of the given length; write is async-signal-safe.
    unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
}
