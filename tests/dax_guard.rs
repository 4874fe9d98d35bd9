//! I5 with the host guard (fanotify): host readers and writers of a mapped file leave the
//! guest's mappings alone; a host truncate unmaps only what passes EOF, and the pages come back
//! when the file grows again. This test process is "another host process" to the daemon.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::fuse::*;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;

/// A daemon whose guard must be fanotify (it fails to start otherwise), and a file of 2 MiB
/// mapped writable in the window's first slot.
fn mapped() -> (Daemon, Client, u64) {
    let d = Daemon::start(&["--dax-window", "64M", "--dax-copy-max", "0", "--dax-guard", "fanotify"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let (f, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    for off in (0..MB2).step_by(1 << 17) {
        c.write(f.nodeid, fh, off, &[b'a'; 1 << 17]).unwrap();
    }
    c.setupmapping(f.nodeid, 0, MB2, RW, 0).unwrap();
    (d, c, f.nodeid)
}

/// Writes `tag` through the window at `off` and reads it back through the window.
fn window_keeps(c: &Client, off: u64, tag: &[u8]) -> bool {
    c.vmm.window().write(off, tag).is_ok() && c.vmm.window().read(off, tag.len()).is_ok_and(|b| b == tag)
}

fn host_bytes(d: &Daemon, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    let n = std::fs::File::open(d.path("f")).unwrap().read_at(&mut b, off).unwrap();
    b.truncate(n);
    b
}

#[test]
fn host_readers_leave_the_mapping_alone() {
    let (d, c, _) = mapped();
    for i in 0..20u8 {
        let mut all = Vec::new();
        std::fs::File::open(d.path("f")).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, MB2);
        let tag = [b'r', i, i, i];
        assert!(window_keeps(&c, u64::from(i) * PAGE, &tag), "read {i} revoked the mapping:\n{}", d.log());
        // The guest's write through the window is the file's data (one page cache).
        assert_eq!(host_bytes(&d, u64::from(i) * PAGE, 4), tag);
    }
    assert!(!d.log().contains("lease break"), "{}", d.log());
    assert_eq!(c.vmm.window().pieces().len(), 1);
}

#[test]
fn a_host_writer_of_another_range_loses_no_guest_write() {
    let (d, c, _) = mapped();
    let mut w = std::fs::OpenOptions::new().append(true).open(d.path("f")).unwrap();
    for i in 0..20u8 {
        w.write_all(&[b'w'; 1000]).unwrap();
        let tag = [b'g', i, i, i];
        assert!(window_keeps(&c, u64::from(i) * PAGE, &tag), "append {i} revoked the mapping:\n{}", d.log());
        assert_eq!(host_bytes(&d, u64::from(i) * PAGE, 4), tag);
    }
    // A write over mapped bytes shows through the window at once.
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().write_all_at(b"HOST", 8 * PAGE).unwrap();
    assert_eq!(c.vmm.window().read(8 * PAGE, 4).unwrap(), b"HOST");
    assert_eq!(c.vmm.window().pieces().len(), 1);
}

#[test]
fn a_host_truncate_unmaps_only_past_eof_and_growth_brings_it_back() {
    let (d, c, _) = mapped();
    let half = MB2 / 2;
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(half + 100).unwrap();
    // I2: nothing past the new EOF page is installed; everything below still is.
    let end: u64 = c.vmm.window().pieces().iter().map(|p| p.shm_offset + p.len).max().unwrap_or(0);
    assert_eq!(end, half + PAGE, "pieces after the shrink: {:?}\n{}", c.vmm.window().pieces(), d.log());
    assert!(window_keeps(&c, PAGE, b"kept"));
    assert_eq!(host_bytes(&d, PAGE, 4), b"kept");
    // Grown back by the host: the rest of the slot is installed again without a guest request.
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.vmm.window().pieces().iter().map(|p| p.shm_offset + p.len).max().unwrap_or(0) < MB2 {
        assert!(Instant::now() < deadline, "not re-installed: {:?}\n{}", c.vmm.window().pieces(), d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(window_keeps(&c, MB2 - PAGE, b"back"));
    assert_eq!(host_bytes(&d, MB2 - PAGE, 4), b"back");
}

#[test]
fn a_host_o_trunc_open_unmaps_everything_first() {
    let (d, c, _) = mapped();
    drop(std::fs::File::create(d.path("f")).unwrap());
    assert!(c.vmm.window().pieces().is_empty(), "{:?}\n{}", c.vmm.window().pieces(), d.log());
    // The page is past EOF now: a read through the window is zeros (unmapped), never EIO.
    assert_eq!(c.vmm.window().read(0, 4).unwrap(), [0; 4]);
}
