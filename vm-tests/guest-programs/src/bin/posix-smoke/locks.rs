//! Locks between processes (fork): POSIX record locks (F_SETLK conflicts,
//! F_GETLK, F_SETLKW waiting, release on close), OFD locks, flock.
//!
//! The children only make syscalls and end with `_exit(code)`; each code
//! names the step that went wrong (see `child_codes`).

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use guest::report::Outcome;
use guest::sys::{self, Exit, errno_name};
use guest::{Context, Result, bail, ensure};
use libc::{EACCES, EAGAIN, F_GETLK, F_OFD_GETLK, F_OFD_SETLK, F_RDLCK, F_SETLK, F_SETLKW, F_UNLCK, F_WRLCK};

use crate::Ctx;
use crate::util::{eq, expect_errno, open_rw, write_file};

fn lock(f: &File, cmd: i32, typ: i32, start: u64, len: u64) -> io::Result<libc::flock> {
    sys::fcntl_lock(f, cmd, sys::flock_range(typ, start, len)?)
}

/// Run `child` in a forked process; it returns an exit code (0 = fine).
fn in_child(child: impl FnOnce() -> i32) -> Result<libc::pid_t> {
    match sys::fork().ctx("fork")? {
        None => sys::child_exit(child()),
        Some(pid) => Ok(pid),
    }
}

fn expect_child_ok(pid: libc::pid_t, steps: &[&str]) -> Result<()> {
    match sys::wait(pid).ctx("waitpid")? {
        Exit::Code(0) => Ok(()),
        Exit::Code(n) => {
            let step = usize::try_from(n - 1).ok().and_then(|i| steps.get(i)).copied().unwrap_or("?");
            bail!("child failed at step {n}: {step}")
        }
        Exit::Signal(s) => bail!("child killed by signal {s}"),
    }
}

/// Conflicting F_SETLK from another process; F_GETLK reports the holder;
/// a read lock conflicts with a write lock; disjoint ranges do not.
pub fn posix(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("lockfile");
    let f = write_file(&p, &[0u8; 300])?;
    lock(&f, F_SETLK, F_WRLCK, 0, 100).ctx("F_SETLK write 0..100")?;
    let steps = [
        "open",
        "conflicting F_SETLK did not fail with EAGAIN/EACCES",
        "F_GETLK failed",
        "F_GETLK did not report the write lock",
        "disjoint F_SETLK failed",
        "conflicting read lock did not fail",
    ];
    let pid = in_child(|| {
        let Ok(g) = open_rw(&p) else { return 1 };
        match lock(&g, F_SETLK, F_WRLCK, 50, 10) {
            Err(e) if matches!(e.raw_os_error(), Some(EAGAIN | EACCES)) => {}
            _ => return 2,
        }
        let Ok(fl) = lock(&g, F_GETLK, F_WRLCK, 50, 10) else { return 3 };
        if i32::from(fl.l_type) != F_WRLCK || fl.l_start != 0 || fl.l_len != 100 {
            return 4;
        }
        if lock(&g, F_SETLK, F_WRLCK, 200, 10).is_err() {
            return 5;
        }
        if lock(&g, F_SETLK, F_RDLCK, 0, 10).is_ok() {
            return 6;
        }
        0
    })?;
    expect_child_ok(pid, &steps)?;
    // The child's lock died with it: we can take 200..210 now.
    lock(&f, F_SETLK, F_WRLCK, 200, 10).ctx("F_SETLK after the child exited")?;
    let fl = lock(&f, F_GETLK, F_WRLCK, 0, 300).ctx("F_GETLK own locks")?;
    eq("F_GETLK of our own locks", i32::from(fl.l_type), F_UNLCK)?;
    Ok(Outcome::Pass(String::new()))
}

/// F_SETLKW in a child blocks until the parent unlocks, then succeeds.
pub fn posix_wait(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("lockfile");
    let f = write_file(&p, &[0u8; 100])?;
    lock(&f, F_SETLK, F_WRLCK, 0, 100).ctx("F_SETLK")?;
    let pid = in_child(|| {
        let Ok(g) = open_rw(&p) else { return 1 };
        match lock(&g, F_SETLKW, F_WRLCK, 0, 100) {
            Ok(_) => 0,
            Err(e) => 10 + e.raw_os_error().unwrap_or(0).min(100),
        }
    })?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(st) = sys::try_wait(pid).ctx("waitpid WNOHANG")? {
        bail!("F_SETLKW did not wait for the conflicting lock (child ended: {st:?})");
    }
    lock(&f, F_SETLK, F_UNLCK, 0, 100).ctx("unlock")?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = sys::try_wait(pid).ctx("waitpid WNOHANG")? {
            return match st {
                Exit::Code(0) => Ok(Outcome::Pass(format!("woke {} ms after unlock", t0.elapsed().as_millis()))),
                Exit::Code(n) if n >= 10 => {
                    bail!("F_SETLKW failed: {}", errno_name(&io::Error::from_raw_os_error(n - 10)))
                }
                other => bail!("waiting child: {other:?}"),
            };
        }
        if t0.elapsed() > Duration::from_secs(20) {
            sys::kill(pid);
            let _ = sys::wait(pid);
            bail!("F_SETLKW still blocked 20 s after the unlock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Closing any descriptor of the file drops the process's POSIX locks.
pub fn posix_close(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("lockfile");
    let f = write_file(&p, &[0u8; 100])?;
    lock(&f, F_SETLK, F_WRLCK, 0, 100).ctx("F_SETLK")?;
    let steps = ["open", "F_SETLK while the parent holds the lock"];
    let pid = in_child(|| {
        let Ok(g) = open_rw(&p) else { return 1 };
        match lock(&g, F_SETLK, F_WRLCK, 0, 100) {
            Err(e) if matches!(e.raw_os_error(), Some(EAGAIN | EACCES)) => 0,
            _ => 2,
        }
    })?;
    expect_child_ok(pid, &steps)?;
    drop(File::open(&p).ctx("open a second fd")?);
    let steps = ["open", "F_SETLK after the parent closed another fd"];
    let pid = in_child(|| {
        let Ok(g) = open_rw(&p) else { return 1 };
        if lock(&g, F_SETLK, F_WRLCK, 0, 100).is_ok() { 0 } else { 2 }
    })?;
    expect_child_ok(pid, &steps)?;
    drop(f);
    Ok(Outcome::Pass(String::new()))
}

/// OFD locks: owned by the open file, so two opens in one process conflict.
pub fn ofd(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("ofd");
    let f1 = write_file(&p, &[0u8; 100])?;
    let f2 = open_rw(&p)?;
    lock(&f1, F_OFD_SETLK, F_WRLCK, 0, 10).ctx("F_OFD_SETLK on fd 1")?;
    expect_errno(lock(&f2, F_OFD_SETLK, F_WRLCK, 5, 10), &[EAGAIN, EACCES], "conflicting F_OFD_SETLK on fd 2")?;
    let fl = lock(&f2, F_OFD_GETLK, F_WRLCK, 5, 10).ctx("F_OFD_GETLK")?;
    eq("F_OFD_GETLK type", i32::from(fl.l_type), F_WRLCK)?;
    eq("F_OFD_GETLK pid", fl.l_pid, -1)?;
    lock(&f2, F_OFD_SETLK, F_WRLCK, 10, 10).ctx("disjoint F_OFD_SETLK")?;
    // A POSIX lock of this process conflicts with the OFD lock too.
    let f3 = open_rw(&p)?;
    expect_errno(lock(&f3, F_SETLK, F_WRLCK, 0, 5), &[EAGAIN, EACCES], "POSIX lock over an OFD lock")?;
    drop(f1);
    lock(&f2, F_OFD_SETLK, F_WRLCK, 0, 10).ctx("F_OFD_SETLK after closing fd 1")?;
    Ok(Outcome::Pass(String::new()))
}

/// flock: exclusive locks on two opens conflict; unlock releases.
pub fn flock(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("flock");
    let f1 = write_file(&p, b"")?;
    let f2 = open_rw(&p)?;
    sys::flock(&f1, libc::LOCK_EX).ctx("flock LOCK_EX")?;
    expect_errno(sys::flock(&f2, libc::LOCK_EX | libc::LOCK_NB), &[libc::EWOULDBLOCK], "second LOCK_EX|LOCK_NB")?;
    let steps = ["open", "LOCK_SH|LOCK_NB in a child did not fail"];
    let pid = in_child(|| {
        let Ok(g) = open_rw(&p) else { return 1 };
        if sys::flock(&g, libc::LOCK_SH | libc::LOCK_NB).is_err() { 0 } else { 2 }
    })?;
    expect_child_ok(pid, &steps)?;
    sys::flock(&f1, libc::LOCK_UN).ctx("LOCK_UN")?;
    sys::flock(&f2, libc::LOCK_EX | libc::LOCK_NB).ctx("LOCK_EX after unlock")?;
    ensure!(sys::flock(&f1, libc::LOCK_SH | libc::LOCK_NB).is_err(), "LOCK_SH while another open holds LOCK_EX");
    Ok(Outcome::Pass(String::new()))
}
