//! SIGIO, the signal whose default action ends a process: the kernel sends it when the lease
//! break's realtime signal cannot be queued, and anyone may send it. The daemon survives it and,
//! for a lease break, still revokes before the breaker proceeds.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::fuse::*;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;

fn pid_of(d: &Daemon) -> libc::pid_t {
    libc::pid_t::try_from(d.serving_pid()).unwrap()
}

#[test]
fn sigio_sent_to_the_daemon_is_survived() {
    for extra in [&[][..], &["--dax-window", "64M"][..]] {
        let mut d = Daemon::start(extra);
        let c = d.client();
        for _ in 0..3 {
            // SAFETY: kill only sends a signal to the daemon child this test started.
            assert_eq!(unsafe { libc::kill(pid_of(&d), libc::SIGIO) }, 0);
            still_serving(&mut d, &c);
        }
    }
}

/// With no room for queued signals (RLIMIT_SIGPENDING 0), a lease break arrives as a plain
/// SIGIO without the fd. The daemon must not die of it, and must find the broken lease itself:
/// every piece is unmapped before the breaker's open returns.
#[test]
fn lease_break_with_the_signal_queue_full_revokes_and_survives() {
    let mut d = Daemon::start(&["--dax-window", "64M", "--dax-guard", "lease"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    assert_eq!(c.write(e.nodeid, fh, 0, &pattern_bytes(5, 0, 8192)).unwrap(), 8192);
    c.setupmapping(e.nodeid, 0, MB2, RW, 0).unwrap();
    assert!(!c.vmm.window().pieces().is_empty());
    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit only lowers a limit of the daemon child this test started; `none` is live.
    let r = unsafe { libc::prlimit(pid_of(&d), libc::RLIMIT_SIGPENDING, &raw const none, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let f = std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap();
    assert!(d.is_running(), "the lease break killed the daemon:\n{}", d.log());
    assert!(c.vmm.window().pieces().is_empty(), "pieces still installed after the lease break");
    drop(f);
    still_serving(&mut d, &c);
}
