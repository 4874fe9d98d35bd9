//! Holes found in review, each proved through the real daemon (default sandbox, seccomp kill).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use common::fuse::*;
use common::vmm::Desc;
use daxfsd::fuse::abi::*;
use zerocopy::IntoBytes;

fn lock(start: u64, end: u64, typ: i32) -> FileLock {
    FileLock { start, end, typ: typ as u32, pid: 1 }
}

/// The device sends SETLKW to a lock-waiter thread only when it sees the opcode in the
/// chain's first descriptor. A guest that splits the in-header (4 bytes, then the rest) used
/// to get its SETLKW run on a pool worker, where it waited for the lock: as many as there are
/// workers wedged the pool, and every queue stopped answering.
#[test]
fn setlkw_with_a_split_header_never_blocks_the_workers() {
    let mut d = Daemon::start(&["--thread-pool-size", "2"]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    c.lk(Opcode::Setlk, n, fh, 1, lock(0, 0, libc::F_WRLCK), false).unwrap();
    let mut waiting = Vec::new();
    for owner in 2..6u64 {
        // Read locks: once the holder unlocks, every waiter gets one.
        let l = LkIn { fh, owner, lk: lock(0, 0, libc::F_RDLCK), lk_flags: 0, padding: 0 };
        let hdr = c.header(Opcode::Setlkw as u32, n, size_of::<LkIn>());
        let (a, b) = hdr.as_bytes().split_at(4);
        let descs = [Desc::Read(a), Desc::Read(b), Desc::Read(l.as_bytes()), Desc::Write(16)];
        waiting.push(c.vmm.submit(REQ_Q, &descs).unwrap());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    still_serving(&mut d, &c);
    c.lk(Opcode::Setlk, n, fh, 1, lock(0, 0, libc::F_UNLCK), false)
        .unwrap_or_else(|e| panic!("the holder's unlock behind the waiters: errno {e}"));
    for t in waiting {
        let r = c.vmm.wait(t).unwrap();
        let err = i32::from_ne_bytes(r.written()[4..8].try_into().unwrap());
        assert_eq!(err, 0, "a split-header SETLKW is served (on a lock-waiter thread)");
    }
}
