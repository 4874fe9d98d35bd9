//! Copy slots through a test VMM with a real window: read-only mappings of small files are
//! copies in slots backed by the daemon's memory file, made without a SHMEM_MAP once the slot
//! is backed, never revoked or faulted by what the host does to the file, refreshed when the
//! daemon changes the file or the guest revalidates it, and turned back into file mappings by
//! a write request.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use std::os::unix::fs::MetadataExt;

use common::fuse::*;
use common::vmm::ShmemOp;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const R: u64 = FUSE_SETUPMAPPING_FLAG_READ;
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;

fn daemon(extra: &[&str]) -> (Daemon, Client) {
    let mut args = vec!["--dax-window", "64M"];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args);
    let c = Client::connect_dax(&d.socket, 1, false);
    (d, c)
}

/// A new file `name` holding `data`, through the daemon; returns (node, fh).
fn small_file(c: &Client, name: &str, data: &[u8]) -> (u64, u64) {
    let (e, fh) = c.create(1, name, libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    assert_eq!(c.write(e.nodeid, fh, 0, data).unwrap() as usize, data.len());
    (e.nodeid, fh)
}

fn maps(c: &Client) -> usize {
    c.vmm.window().log().iter().filter(|e| e.op == ShmemOp::Map && e.errno == 0).count()
}

/// I3 for copies: the slot reads as the file up to EOF and as zeros after it.
fn assert_slot_is(c: &Client, moffset: u64, data: &[u8]) {
    assert_eq!(c.vmm.window().read(moffset, data.len()).unwrap(), data, "the copy's bytes");
    let tail = c.vmm.window().read(moffset + data.len() as u64, 8192).unwrap();
    assert!(tail.iter().all(|&b| b == 0), "non-zero bytes past EOF in the copy");
}

#[test]
fn a_read_only_mapping_of_a_small_file_is_a_copy_and_a_backed_slot_needs_no_map() {
    let (d, c) = daemon(&[]);
    let (a, _) = small_file(&c, "a", b"alpha contents");
    let (b, _) = small_file(&c, "b", b"b");
    c.setupmapping(a, 0, MB2, R, 0).unwrap();
    assert_slot_is(&c, 0, b"alpha contents");
    // The slot is one piece of the daemon's memory file, not of the file.
    let pieces = c.vmm.window().pieces();
    let ino = std::fs::metadata(d.path("a")).unwrap().ino();
    assert_eq!(pieces.len(), 1);
    assert_eq!((pieces[0].shm_offset, pieces[0].len), (0, MB2));
    assert_ne!(pieces[0].ino, ino, "a copy maps the daemon's memory, not the file");
    let after_first = maps(&c);
    // The guest drops it and maps another (shorter) file there: no SHMEM_MAP, and nothing of
    // the first file is left past the second's EOF.
    c.removemapping(&[(0, MB2)]).unwrap();
    c.setupmapping(b, 0, MB2, R, 0).unwrap();
    assert_slot_is(&c, 0, b"b");
    assert_eq!(maps(&c), after_first, "a backed slot was mapped again");
    assert!(!d.log().contains("leased inode"), "a copy needs no lease:\n{}", d.log());
}

#[test]
fn host_changes_never_revoke_a_copy_and_show_when_the_guest_revalidates() {
    let (d, c) = daemon(&[]);
    let (a, _) = small_file(&c, "a", b"0123456789");
    c.setupmapping(a, 0, MB2, R, 0).unwrap();
    // A host writer and truncate go through at once: no lease to break, nothing to fault.
    let f = std::fs::OpenOptions::new().write(true).open(d.path("a")).unwrap();
    f.set_len(4).unwrap();
    drop(f);
    assert!(!d.log().contains("lease break"), "{}", d.log());
    assert_slot_is(&c, 0, b"0123456789");
    // The guest's next GETATTR (its attribute timeout ran out) refreshes the copy.
    assert_eq!(c.getattr(a).unwrap().attr.size, 4);
    assert_slot_is(&c, 0, b"0123");
    std::fs::write(d.path("a"), b"rewritten by the host").unwrap();
    c.getattr(a).unwrap();
    assert_slot_is(&c, 0, b"rewritten by the host");
}

#[test]
fn daemon_side_changes_refresh_the_copy() {
    let (_d, c) = daemon(&[]);
    let (a, fh) = small_file(&c, "a", b"hello");
    c.setupmapping(a, 0, MB2, R, 0).unwrap();
    // An extending WRITE (the guest's path for writes past EOF) shows in the window at once.
    c.write(a, fh, 5, b", world").unwrap();
    assert_slot_is(&c, 0, b"hello, world");
    // So does a truncate: nothing past the new EOF.
    c.setattr(a, SetattrIn { valid: FATTR_SIZE, size: 2, ..Default::default() }).unwrap();
    assert_slot_is(&c, 0, b"he");
}

#[test]
fn a_write_request_over_a_copy_maps_the_file_itself() {
    let (d, c) = daemon(&[]);
    let (a, _) = small_file(&c, "a", b"read first");
    c.setupmapping(a, 0, MB2, R, 0).unwrap();
    // The guest's upgrade of the same range for a write fault.
    c.setupmapping(a, 0, MB2, RW, 0).unwrap();
    let ino = std::fs::metadata(d.path("a")).unwrap().ino();
    let pieces = c.vmm.window().pieces();
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0].ino, ino, "the upgraded slot maps the file");
    assert!(pieces[0].writable);
    c.vmm.window().write(0, b"WRITE").unwrap();
    c.removemapping(&[(0, MB2)]).unwrap();
    assert_eq!(std::fs::read(d.path("a")).unwrap(), b"WRITEfirst");
}

#[test]
fn files_over_the_copy_limit_and_copy_max_0_map_the_file() {
    let (d, c) = daemon(&["--dax-copy-max", "0"]);
    let (a, _) = small_file(&c, "a", b"tiny");
    c.setupmapping(a, 0, MB2, R, 0).unwrap();
    let ino = std::fs::metadata(d.path("a")).unwrap().ino();
    assert_eq!(c.vmm.window().pieces().iter().map(|p| p.ino).collect::<Vec<_>>(), vec![ino]);
    drop(c);
    drop(d);
    let (d, c) = daemon(&["--dax-copy-max", "4K"]);
    let (big, _) = small_file(&c, "big", &[7u8; 5000]);
    c.setupmapping(big, 0, MB2, R, 0).unwrap();
    let ino = std::fs::metadata(d.path("big")).unwrap().ino();
    assert_eq!(c.vmm.window().pieces().iter().map(|p| p.ino).collect::<Vec<_>>(), vec![ino]);
}

/// A copy is read-only for the guest: it can neither change it nor leave bytes in the slot
/// that a later copy of another file would show past that file's EOF.
#[test]
fn a_copy_slot_is_read_only_and_a_reused_slot_shows_nothing_of_earlier_copies() {
    let (_d, c) = daemon(&[]);
    let (a, _) = small_file(&c, "a", &[b'a'; 9000]);
    let (b, _) = small_file(&c, "b", b"b");
    c.setupmapping(a, 0, MB2, R, 0).unwrap();
    assert!(c.vmm.window().write(8192, b"PLANTED").is_err(), "the guest wrote into a copy slot");
    assert!(c.vmm.window().pieces().iter().all(|p| !p.writable));
    c.removemapping(&[(0, MB2)]).unwrap();
    c.setupmapping(b, 0, MB2, R, 0).unwrap();
    assert_slot_is(&c, 0, b"b");
    assert!(c.vmm.window().read(8192, 808).unwrap().iter().all(|&x| x == 0), "a's bytes past b's EOF");
}
