//! A hostile driver against the rings: whatever it publishes, the daemon's memory stays bounded,
//! no chain comes back twice, and the daemon keeps serving.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::fuse::*;
use daxfsd::fuse::abi::*;

/// Re-publishes of one head while it is in flight: before duplicates were dropped, 400,000 of
/// them grew a debug daemon from 7 MB to 49 MB of RSS (one queued job each).
const REPUBLISHES: usize = 400_000;
/// Growth allowed across the flood: far below what queuing every duplicate costs.
const MAX_GROWTH_KIB: u64 = 16 << 10;
/// A generous absolute ceiling for a debug build serving one connection.
const MAX_RSS_KIB: u64 = 128 << 10;

/// The head of a SETLKW that waits on a lock the test holds is re-published over and over. The
/// daemon must drop every duplicate (none queued, none used), then answer the SETLKW exactly
/// once when the lock is released.
#[test]
fn republished_in_flight_head_is_dropped_and_memory_stays_bounded() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    let wr = FileLock { start: 0, end: 0, typ: libc::F_WRLCK as u32, pid: 1 };
    c.lk(Opcode::Setlk, n, fh, 1, wr, false).unwrap();
    let (t, unique) = c.submit_setlkw(n, fh, 2, wr);
    assert!(c.getattr(n).is_ok(), "the SETLKW must not hold up other requests");
    let before = d.rss_kib();
    c.vmm.republish(&t, REPUBLISHES).unwrap();
    let after = d.rss_kib();
    eprintln!("daemon VmRSS: {before} KiB before {REPUBLISHES} re-publishes, {after} KiB after");
    assert!(after < MAX_RSS_KIB, "daemon RSS {after} KiB after the flood (limit {MAX_RSS_KIB})");
    assert!(after.saturating_sub(before) < MAX_GROWTH_KIB, "daemon RSS grew from {before} to {after} KiB");
    assert!(c.getattr(n).is_ok(), "the duplicates must not hold up other requests:\n{}", d.log());
    let un = FileLock { typ: libc::F_UNLCK as u32, ..wr };
    c.lk(Opcode::Setlk, n, fh, 1, un, false).unwrap();
    check_reply(&c.vmm.wait(t).unwrap(), unique).unwrap();
    // A second used element for the head would fail every later wait ("head not in flight").
    still_serving(&mut d, &c);
    assert!(c.lk(Opcode::Getlk, n, fh, 1, wr, false).is_ok());
}

/// GET_VRING_BASE hands the ring back to the frontend. A SETLKW still waiting when the daemon
/// stops waiting for it (5 s) is abandoned: when the lock comes free later, its reply must not
/// reach the guest's buffers nor its head the used ring (the ring may be the frontend's, or a
/// new driver's, by then), and its head is free for the queue's next start.
#[test]
fn no_used_element_after_get_vring_base() {
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    // A host process holds the lock the guest's SETLKW waits for.
    let host = std::fs::OpenOptions::new().read(true).write(true).open(d.path("f")).unwrap();
    let mut fl =
        libc::flock { l_type: libc::F_WRLCK as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 0, l_pid: 0 };
    // SAFETY: fcntl on an fd we own with a valid flock.
    assert_eq!(unsafe { libc::fcntl(host.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) }, 0);
    let wr = FileLock { start: 0, end: 0, typ: libc::F_WRLCK as u32, pid: 1 };
    let (t, _unique) = c.submit_setlkw(n, fh, 2, wr);
    std::thread::sleep(Duration::from_millis(300));
    let used = c.vmm.used_idx(REQ_Q).unwrap();
    c.vmm.stop_queue(REQ_Q).unwrap();
    drop(host); // the lock comes free: the abandoned SETLKW gets it now
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.vmm.used_idx(REQ_Q).unwrap(), used, "a used element appeared after GET_VRING_BASE:\n{}", d.log());
    d.wait_for_log("finished after its queue stopped");
    drop(t);
    // The queue starts again with every head free.
    c.vmm.reset_device().unwrap();
    c.do_init(0);
    still_serving(&mut d, &c);
}
