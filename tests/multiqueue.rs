//! Several request queues served concurrently, many requests in flight at once.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation)]

mod common;

use common::fuse::*;
use common::vmm::{Desc, VmmOptions};
use daxfsd::fuse::abi::*;
use zerocopy::IntoBytes;

#[test]
fn four_queues_in_parallel_keep_every_byte() {
    let d = Daemon::start(&["--num-request-queues", "4", "--thread-pool-size", "4"]);
    let c = Client::connect(&d.socket, 4, VmmOptions::default());
    std::thread::scope(|s| {
        for q in 1..=4usize {
            let c = &c;
            s.spawn(move || {
                let name = format!("q{q}");
                let body = [
                    CreateIn {
                        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
                        mode: libc::S_IFREG | 0o644,
                        umask: 0,
                        open_flags: 0,
                    }
                    .as_bytes(),
                    &common::fuse::name(&name),
                ]
                .concat();
                let b = c.call_on(q, Opcode::Create as u32, 1, &[&body], 144).unwrap();
                let e: EntryOut = parse(&b);
                let fh = parse::<OpenOut>(&b[128..]).fh;
                for i in 0..64u64 {
                    let data = pattern_bytes(q as u8, (i * 4096) as usize, 4096);
                    let w = WriteIn { fh, offset: i * 4096, size: 4096, ..Default::default() };
                    let out = c.call_on(q, Opcode::Write as u32, e.nodeid, &[w.as_bytes(), &data], 8).unwrap();
                    assert_eq!(parse::<WriteOut>(&out).size, 4096);
                }
                let r = ReadIn { fh, offset: 0, size: 64 * 4096, ..Default::default() };
                let got = c.call_on(q, Opcode::Read as u32, e.nodeid, &[r.as_bytes()], 64 * 4096).unwrap();
                assert_eq!(got, pattern_bytes(q as u8, 0, 64 * 4096));
            });
        }
    });
    for q in 1..=4u8 {
        assert_eq!(std::fs::read(d.path(&format!("q{q}"))).unwrap(), pattern_bytes(q, 0, 64 * 4096));
    }
}

#[test]
fn many_requests_in_flight_on_one_queue_all_complete() {
    let d = Daemon::start(&[]);
    let c = d.client();
    c.make_file("f", b"hello");
    let mut tickets = Vec::new();
    let mut uniques = Vec::new();
    let nm = name("f");
    // 80 chains of 3 descriptors fill most of the 256-entry ring.
    for _ in 0..80 {
        let hdr = c.header(Opcode::Lookup as u32, 1, nm.len());
        uniques.push(hdr.unique);
        let descs = [Desc::Read(hdr.as_bytes()), Desc::Read(&nm), Desc::Write(16 + 128)];
        tickets.push(c.vmm.submit(REQ_Q, &descs).unwrap());
    }
    for (t, u) in tickets.into_iter().zip(uniques) {
        let r = c.vmm.wait(t).unwrap();
        let e: EntryOut = parse(&check_reply(&r, u).unwrap());
        assert_eq!(e.attr.size, 5);
    }
}

#[test]
fn blocking_lock_waits_without_starving_other_requests() {
    let d = Daemon::start(&["--thread-pool-size", "1"]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    let wr = FileLock { start: 0, end: 0, typ: libc::F_WRLCK as u32, pid: 1 };
    c.lk(Opcode::Setlk, n, fh, 1, wr, false).unwrap();
    // Owner 2 blocks in SETLKW; the single pool worker must stay free for owner 1's unlock.
    let (t, unique) = c.submit_setlkw(n, fh, 2, wr);
    assert!(c.getattr(n).is_ok());
    let un = FileLock { typ: libc::F_UNLCK as u32, ..wr };
    c.lk(Opcode::Setlk, n, fh, 1, un, false).unwrap();
    let r = c.vmm.wait(t).unwrap();
    check_reply(&r, unique).unwrap();
}
