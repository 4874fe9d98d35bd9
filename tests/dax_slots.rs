//! The frontend's memory slots (issue 13): QEMU 11.1 makes every window piece one more vhost
//! memory region and aborts past its slot limit, so the window keeps its pieces within what the
//! frontend's own regions leave. Through the test VMM, which can announce extra regions and, as
//! QEMU does, announce every piece as a region too.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use common::fuse::*;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
const R: u64 = FUSE_SETUPMAPPING_FLAG_READ;
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;

/// What the daemon's GET_MAX_MEM_SLOTS answers (vhost-user-backend 0.24), below QEMU's 512.
const MAX_SLOTS: usize = 509;
/// Reserved so the budget is small enough to reach in a test.
const RESERVED: usize = 480;

/// A daemon with a 16 MiB window (8 slots) and a budget of `MAX_SLOTS - RESERVED` slots, and a
/// DAX client whose frontend holds `1 + extra` memory regions (guest RAM plus `extra`).
fn budget_daemon(extra: usize) -> (Daemon, Client) {
    let reserved = RESERVED.to_string();
    let d = Daemon::start(&["--dax-window", "16M", "--dax-reserved-mem-slots", &reserved]);
    let mut c = Client::connect_dax(&d.socket, 1, false);
    c.vmm.add_memory_regions(extra).unwrap();
    (d, c)
}

#[test]
fn a_frontend_with_n_regions_gets_at_most_budget_minus_n_pieces() {
    let budget = MAX_SLOTS - RESERVED;
    for extra in [20, 21] {
        let n = 1 + extra;
        let (d, c) = budget_daemon(extra);
        let node = c.make_file("f", &[]);
        let fh = c.open(node, libc::O_RDWR).unwrap();
        for (i, chunk) in pattern_bytes(1, 0, (8 * MB2) as usize).chunks(1 << 20).enumerate() {
            c.write(node, fh, i as u64 * (1 << 20), chunk).unwrap();
        }
        let mut mapped = 0;
        for slot in 0..8 {
            match c.setupmapping(node, slot * MB2, MB2, R, slot * MB2) {
                Ok(()) => mapped += 1,
                Err(e) => assert_eq!(e, libc::ENOSPC, "slot {slot}: the refusal is ENOSPC"),
            }
        }
        assert_eq!(mapped, 8.min(budget - n), "{n} frontend regions");
        assert_eq!(c.vmm.window().pieces().len(), mapped);
        if mapped < 8 {
            // A removal frees a slot: the refused mapping goes in, with the file's data.
            c.removemapping(&[(0, MB2)]).unwrap();
            c.setupmapping(node, 7 * MB2, MB2, R, 7 * MB2).unwrap();
            assert_eq!(c.vmm.window().read(7 * MB2, 64).unwrap(), pattern_bytes(1, (7 * MB2) as usize, 64));
            d.wait_for_log("SETUPMAPPING refused (ENOSPC)");
        }
    }
}

/// QEMU's behaviour: each piece comes back as a memory region. Those regions are the window's
/// own (not counted twice), and small extending writes to mapped files, which add a piece each,
/// never push the frontend past its limit; nor does the guest ever see a hole in its data
/// (no other access races the merges here).
#[test]
fn growing_mapped_files_never_pushes_a_mirroring_frontend_past_its_slots() {
    let extra = 16; // 17 regions of the frontend's own: 12 slots for pieces, 8 of them firsts
    let (d, c) = budget_daemon(extra);
    c.vmm.mirror_pieces_as_regions();
    let limit = MAX_SLOTS - RESERVED - (1 + extra);
    // Eight files, one page each, each mapped writable in its own slot.
    let mut files = Vec::new();
    for slot in 0..8u64 {
        let (e, fh) = c.create(1, &format!("f{slot}"), libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
        c.write(e.nodeid, fh, 0, &pattern_bytes(slot as u8, 0, PAGE as usize)).unwrap();
        c.setupmapping(e.nodeid, 0, MB2, RW, slot * MB2).unwrap();
        files.push((e.nodeid, fh));
    }
    assert_eq!(c.vmm.window().pieces().len(), 8, "the mirrored pieces were not counted against the budget");
    // Round-robin appends of one page: every one crosses a page boundary and needs a piece.
    for round in 1..40u64 {
        for (slot, &(node, fh)) in files.iter().enumerate() {
            let off = round * PAGE;
            c.write(node, fh, off, &pattern_bytes(slot as u8, off as usize, PAGE as usize)).unwrap();
            let pieces = c.vmm.window().pieces().len();
            assert!(pieces <= limit, "{pieces} pieces with {limit} slots left by the frontend");
            // I3: the whole file reads back through the window, no page a hole.
            let len = ((round + 1) * PAGE) as usize;
            let got = c.vmm.window().read(slot as u64 * MB2, len).unwrap();
            assert!(got == pattern_bytes(slot as u8, 0, len), "slot {slot} round {round}: window differs from file");
        }
    }
    assert!(c.vmm.window().peak_pieces() <= limit);
    drop(c);
    d.wait_for_log("DAX window: peak");
    let line = d.log().lines().find(|l| l.contains("DAX window: peak")).unwrap_or_default().to_string();
    assert!(!line.contains(" 0 merges"), "{line}");
    assert!(line.contains(&format!("peak {limit} pieces")), "{line}");
}

/// Growth by WRITE and SETATTR adds adjacent pieces (the installed pages stay in place), and a
/// shrink keeps the pieces below its cut: the slot stays installed without a gap up to EOF.
#[test]
fn growth_and_shrink_keep_a_slot_installed_without_gaps() {
    let d = Daemon::start(&["--dax-window", "16M"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let n = e.nodeid;
    c.write(n, fh, 0, &pattern_bytes(3, 0, PAGE as usize)).unwrap();
    c.setupmapping(n, 0, MB2, RW, 0).unwrap();
    c.write(n, fh, PAGE, &pattern_bytes(3, PAGE as usize, PAGE as usize)).unwrap();
    c.setattr(n, SetattrIn { valid: FATTR_SIZE, size: 5 * PAGE, ..Default::default() }).unwrap();
    let spans = |c: &Client| c.vmm.window().pieces().iter().map(|p| (p.shm_offset, p.len)).collect::<Vec<_>>();
    assert_eq!(spans(&c), vec![(0, PAGE), (PAGE, PAGE), (2 * PAGE, 3 * PAGE)]);
    let got = c.vmm.window().read(0, (5 * PAGE) as usize).unwrap();
    assert_eq!(&got[..(2 * PAGE) as usize], &pattern_bytes(3, 0, (2 * PAGE) as usize)[..]);
    assert!(got[(2 * PAGE) as usize..].iter().all(|b| *b == 0));
    c.setattr(n, SetattrIn { valid: FATTR_SIZE, size: PAGE + 1, ..Default::default() }).unwrap();
    assert_eq!(spans(&c), vec![(0, PAGE), (PAGE, PAGE)]);
}

#[test]
fn a_window_larger_than_the_frontend_slots_fails_at_startup() {
    for (window, reserved, ok) in
        [("1G", "16", false), ("1G", "0", false), ("512M", "16", true), ("64M", "480", false), ("16M", "480", true)]
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_daxfsd"))
            .args(["--shared-dir", "/tmp", "--socket-path", "/nonexistent-dir/daxfsd.sock"])
            .args(["--dax-window", window, "--dax-reserved-mem-slots", reserved])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Accepted windows get as far as the socket, whose directory does not exist.
        assert!(!out.status.success());
        assert_eq!(
            err.contains("memory slots"),
            !ok,
            "--dax-window {window} --dax-reserved-mem-slots {reserved}: {err}"
        );
    }
}
