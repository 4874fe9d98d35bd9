//! The DAX window through a test VMM that has a real window: SETUPMAPPING/REMOVEMAPPING, data
//! through the window, bad input, and the safety invariants (DESIGN.md §3) after every shrink.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use common::fuse::*;
use common::vmm::{ShmemEvent, ShmemOp, VmmOptions};
use daxfsd::fuse::abi::*;
use vhost::vhost_user::VhostUserProtocolFeatures;

const MB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
const R: u64 = FUSE_SETUPMAPPING_FLAG_READ;
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;

/// File mappings only: read-only mappings of small files would be copies (tests/dax_copy.rs).
fn dax_daemon() -> (Daemon, Client) {
    dax_daemon_guarded_by("auto")
}

/// A DAX daemon whose mapped files are guarded by `guard` (`--dax-guard`).
fn dax_daemon_guarded_by(guard: &str) -> (Daemon, Client) {
    let d = Daemon::start(&["--dax-window", "64M", "--dax-copy-max", "0", "--dax-guard", guard]);
    let c = Client::connect_dax(&d.socket, 1, false);
    (d, c)
}

/// The file's bytes as the daemon sees them (GETATTR + READ). Opening the host file from this
/// process would break the daemon's lease and revoke the mapping under test.
fn file_data(c: &Client, node: u64) -> Vec<u8> {
    let size = c.getattr(node).unwrap().attr.size;
    let fh = c.open(node, libc::O_RDONLY).unwrap();
    let mut data = Vec::new();
    while (data.len() as u64) < size {
        let chunk = c.read(node, fh, data.len() as u64, 1 << 20).unwrap();
        assert!(!chunk.is_empty());
        data.extend_from_slice(&chunk);
    }
    c.release(node, fh).unwrap();
    data
}

/// Asserts I2 for a mapping of `node` at window `moffset`, file offset `foffset`: every page
/// below EOF reads the file's bytes, and no page that was valid before a shrink (below
/// `old_eof`) is still installed past the new EOF. An installed page past EOF reads as EIO
/// through /proc/self/mem (where the guest would take a SIGBUS); pages past the old EOF may
/// stay installed, since the guest never touches them.
fn assert_window_safe(c: &Client, node: u64, moffset: u64, foffset: u64, len: u64, old_eof: u64) {
    let data = file_data(c, node);
    let eof = data.len() as u64;
    for p in (0..len).step_by(PAGE as usize) {
        let got = c.vmm.window().read(moffset + p, PAGE as usize);
        let fo = foffset + p;
        if fo < eof {
            let got = got.unwrap_or_else(|e| panic!("page at file offset {fo:#x} below EOF {eof:#x} unreadable: {e}"));
            let end = (fo + PAGE).min(eof);
            let want = &data[fo as usize..end as usize];
            if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
                panic!(
                    "page {fo:#x}: byte {i} is {} through the window, {} in the file (eof {eof:#x})",
                    got[i], want[i]
                );
            }
        } else if fo < old_eof {
            match got {
                Ok(b) => assert!(b.iter().all(|x| *x == 0), "uninstalled page {fo:#x} reads non-zero"),
                Err(e) => panic!("page {fo:#x}, valid before the shrink, is installed past EOF {eof:#x}: {e}"),
            }
        }
    }
}

/// Writes `data` at `off` in max_write-sized requests.
fn write_all(c: &Client, node: u64, fh: u64, off: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        c.write(node, fh, off + (i as u64) * (1 << 20), chunk).unwrap();
    }
}

#[test]
fn init_offers_map_alignment_only_with_a_window() {
    let (_d, c) = dax_daemon();
    assert_ne!(c.init.flags & FUSE_MAP_ALIGNMENT as u32, 0);
    assert_eq!(c.init.map_alignment, 12);
    assert_eq!(c.init.flags & FUSE_POSIX_LOCKS as u32, 0, "DAX sessions keep locks in the guest");
    assert_eq!(c.vmm.shmem_sizes().first(), Some(&(64 << 20)));
    // Same daemon, a frontend without SHMEM (QEMU's vhost-user-fs-pci): plain virtio-fs.
    let d = Daemon::start(&["--dax-window", "64M"]);
    let plain = Client::connect(&d.socket, 1, VmmOptions::default());
    let flags = plain.do_init(FUSE_INIT_EXT | FUSE_MAP_ALIGNMENT);
    assert_eq!(flags.flags & FUSE_MAP_ALIGNMENT as u32, 0);
    assert_eq!(flags.map_alignment, 0);
    let n = plain.make_file("f", b"x");
    assert_eq!(plain.setupmapping(n, 0, MB2, R, 0).unwrap_err(), libc::ENOSYS);
}

#[test]
fn window_reads_file_and_writes_reach_the_host() {
    let (d, c) = dax_daemon();
    let data = pattern_bytes(1, 0, 3 * PAGE as usize + 100);
    let n = c.make_file("f", &data);
    c.setupmapping(n, 0, MB2, R, 0).unwrap();
    assert_eq!(c.vmm.window().read(0, data.len()).unwrap(), data);
    assert_window_safe(&c, n, 0, 0, MB2, 0);
    let host = std::fs::read(d.path("f")).unwrap();
    assert_eq!(host, data);
    // Upgrade in place to writable (same offsets, as the guest does on a write fault).
    c.setupmapping(n, 0, MB2, RW, 0).unwrap();
    c.vmm.window().write(PAGE, b"through the window").unwrap();
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(n, fh, PAGE, 18).unwrap(), b"through the window");
    let host = std::fs::read(d.path("f")).unwrap();
    assert_eq!(&host[PAGE as usize..PAGE as usize + 18], b"through the window");
    // A WRITE request is seen through the window.
    let fh2 = c.open(n, libc::O_RDWR).unwrap();
    c.write(n, fh2, 10, b"via WRITE").unwrap();
    assert_eq!(c.vmm.window().read(10, 9).unwrap(), b"via WRITE");
}

#[test]
fn remap_a_slot_to_another_file_and_remove() {
    let (_d, c) = dax_daemon();
    let a = c.make_file("a", &pattern_bytes(2, 0, 8192));
    let b = c.make_file("b", &pattern_bytes(3, 0, 8192));
    c.setupmapping(a, 0, MB2, R, MB2).unwrap();
    assert_eq!(c.vmm.window().read(MB2, 16).unwrap(), pattern_bytes(2, 0, 16));
    c.setupmapping(b, 0, MB2, R, MB2).unwrap();
    assert_eq!(c.vmm.window().read(MB2, 16).unwrap(), pattern_bytes(3, 0, 16));
    c.removemapping(&[(MB2, MB2)]).unwrap();
    assert_eq!(c.vmm.window().read(MB2, 16).unwrap(), vec![0; 16], "unmapped window reads zeros");
    assert!(c.vmm.window().pieces().is_empty());
    // Removing again (the guest retries failed removals) succeeds.
    c.removemapping(&[(MB2, MB2)]).unwrap();
}

#[test]
fn removemapping_of_4096_entries() {
    let d = Daemon::start(&["--dax-window", "16M"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let n = e.nodeid;
    write_all(&c, n, fh, 0, &pattern_bytes(4, 0, 4096 * PAGE as usize));
    // Every 16th page is mapped (the frontend's memory slots hold a few hundred pieces, not
    // 4096); the removal names all 4096, mapped or not (unknown ranges succeed).
    for i in (0..4096).step_by(16) {
        c.setupmapping(n, i * PAGE, PAGE, R, i * PAGE).unwrap();
    }
    assert_eq!(c.vmm.window().pieces().len(), 256);
    assert_eq!(c.vmm.window().read(4080 * PAGE, 8).unwrap(), pattern_bytes(4, 4080 * PAGE as usize, 8));
    let ranges: Vec<(u64, u64)> = (0..4096).map(|i| (i * PAGE, PAGE)).collect();
    c.removemapping(&ranges).unwrap();
    assert!(c.vmm.window().pieces().is_empty());
}

#[test]
fn bad_mapping_requests_are_rejected_and_serving_continues() {
    let (mut d, c) = dax_daemon();
    let n = c.make_file("f", b"data");
    let dir = c.mkdir(1, "dir", 0o755).unwrap().nodeid;
    let w = 64 << 20;
    for (foff, len, flags, moff, errno) in [
        (0, MB2, R, 100, libc::EINVAL),                  // misaligned window offset
        (0, 100, R, 0, libc::EINVAL),                    // misaligned length
        (7, MB2, R, 0, libc::EINVAL),                    // misaligned file offset
        (0, 0, R, 0, libc::EINVAL),                      // empty
        (0, MB2, R, w, libc::EINVAL),                    // outside the window
        (0, MB2, R, w - PAGE, libc::EINVAL),             // straddles the end
        (0, u64::MAX - PAGE + 1, R, PAGE, libc::EINVAL), // overflows
        (u64::MAX - PAGE + 1, MB2, R, 0, libc::EINVAL),  // file range overflows
        (0, MB2, 1 << 7, 0, libc::EINVAL),               // unknown flags
    ] {
        assert_eq!(c.setupmapping(n, foff, len, flags, moff).unwrap_err(), errno, "{foff} {len} {flags} {moff}");
    }
    assert_eq!(c.setupmapping(987_654, 0, MB2, R, 0).unwrap_err(), libc::ENOENT);
    assert_eq!(c.setupmapping(dir, 0, MB2, R, 0).unwrap_err(), libc::EBADF);
    // REMOVEMAPPING: count against the message length, count limits, range checks.
    use zerocopy::IntoBytes;
    let one = RemovemappingOne { moffset: 0, len: MB2 };
    for (count, entries) in [(2u32, 1usize), (1, 2), (0, 0), (5000, 5000)] {
        let mut body = RemovemappingIn { count }.as_bytes().to_vec();
        for _ in 0..entries {
            body.extend_from_slice(one.as_bytes());
        }
        assert_eq!(c.call(Opcode::Removemapping, 1, &[&body], 0).unwrap_err(), libc::EINVAL, "count {count}");
    }
    assert_eq!(c.removemapping(&[(w, MB2)]).unwrap_err(), libc::EINVAL);
    assert_eq!(c.removemapping(&[(u64::MAX - 10, 20)]).unwrap_err(), libc::EINVAL);
    assert!(c.vmm.window().log().iter().all(|e| e.errno == 0), "no bad request reached the frontend");
    assert!(c.getattr(1).is_ok() && d.is_running());
    c.setupmapping(n, 0, MB2, R, 0).unwrap();
}

/// A 2-slot writable mapping of a file, for the shrink tests.
fn mapped_file(c: &Client, name: &str, len: usize) -> (u64, u64) {
    let (e, fh) = c.create(1, name, libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    write_all(c, e.nodeid, fh, 0, &pattern_bytes(5, 0, len));
    c.setupmapping(e.nodeid, 0, MB2, RW, 0).unwrap();
    c.setupmapping(e.nodeid, MB2, MB2, RW, MB2).unwrap();
    (e.nodeid, fh)
}

#[test]
fn truncate_down_leaves_no_page_past_eof_and_growth_is_visible() {
    let (_d, c) = dax_daemon();
    let (n, fh) = mapped_file(&c, "f", 3 << 20);
    let mut old = 3 << 20;
    for size in [3 << 20, (2 << 20) + 5000, 1 << 20, 12_345, 4096, 0] {
        let s = SetattrIn { valid: FATTR_SIZE, size, ..Default::default() };
        c.setattr(n, s).unwrap();
        assert_window_safe(&c, n, 0, 0, 2 * MB2, old);
        old = size;
    }
    // Grow again by WRITE past EOF: the new data is visible through the old mapping (I3).
    c.write(n, fh, 3 * PAGE, b"grown").unwrap();
    assert_eq!(c.vmm.window().read(3 * PAGE, 5).unwrap(), b"grown");
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 0);
    // Grow by SETATTR and by FALLOCATE, into the second slot.
    c.setattr(n, SetattrIn { valid: FATTR_SIZE, size: MB2 + 100, ..Default::default() }).unwrap();
    assert_window_safe(&c, n, MB2, MB2, MB2, 0);
    c.fallocate(n, fh, 0, 0, MB2 + 3 * PAGE).unwrap();
    c.write(n, fh, MB2 + 2 * PAGE, b"tail").unwrap();
    assert_eq!(c.vmm.window().read(MB2 + 2 * PAGE, 4).unwrap(), b"tail");
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 0);
}

#[test]
fn open_with_o_trunc_and_create_trunc_are_safe() {
    let (d, c) = dax_daemon();
    let (n, _fh) = mapped_file(&c, "f", 1 << 20);
    let fh = c.open(n, libc::O_RDWR | libc::O_TRUNC).unwrap();
    assert_eq!(std::fs::metadata(d.path("f")).unwrap().len(), 0, "stat does not open: no lease break");
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 1 << 20);
    c.write(n, fh, 0, b"again").unwrap();
    assert_eq!(c.vmm.window().read(0, 5).unwrap(), b"again");
}

#[test]
fn punch_zero_collapse_insert_keep_the_window_exact() {
    let (_d, c) = dax_daemon();
    let (n, fh) = mapped_file(&c, "f", 1 << 20);
    let keep = libc::FALLOC_FL_KEEP_SIZE as u32;
    c.fallocate(n, fh, libc::FALLOC_FL_PUNCH_HOLE as u32 | keep, 8 * PAGE, 4 * PAGE).unwrap();
    assert_eq!(c.vmm.window().read(8 * PAGE, 8).unwrap(), vec![0; 8]);
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 1 << 20);
    c.fallocate(n, fh, libc::FALLOC_FL_ZERO_RANGE as u32, 20 * PAGE, PAGE).unwrap();
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 1 << 20);
    // COLLAPSE/INSERT need a filesystem that has them (ext4, xfs); skip quietly on others.
    match c.fallocate(n, fh, libc::FALLOC_FL_COLLAPSE_RANGE as u32, 0, 64 * PAGE) {
        Ok(()) => assert_window_safe(&c, n, 0, 0, 2 * MB2, 1 << 20),
        Err(e) => assert_eq!(e, libc::EOPNOTSUPP),
    }
    match c.fallocate(n, fh, libc::FALLOC_FL_INSERT_RANGE as u32, 0, 16 * PAGE) {
        Ok(()) => assert_window_safe(&c, n, 0, 0, 2 * MB2, 1 << 20),
        Err(e) => assert_eq!(e, libc::EOPNOTSUPP),
    }
}

#[test]
fn eof_page_of_an_unaligned_file_is_mapped_and_size_kept() {
    let (d, c) = dax_daemon();
    let n = c.make_file("small", b"hello");
    let before = std::fs::metadata(d.path("small")).unwrap();
    c.setupmapping(n, 0, MB2, R, 0).unwrap();
    // QEMU 11.1 maps only up to the file's size: the daemon pads the file to the page boundary
    // for the map and cuts it back, so the EOF page is installed and nothing past it.
    let pieces = c.vmm.window().pieces();
    assert_eq!(pieces.len(), 1);
    assert_eq!((pieces[0].fd_offset, pieces[0].len), (0, PAGE));
    let page = c.vmm.window().read(0, PAGE as usize).unwrap();
    assert_eq!(&page[..5], b"hello");
    assert!(page[5..].iter().all(|b| *b == 0));
    assert!(c.vmm.window().read(PAGE, 8).unwrap().iter().all(|b| *b == 0), "page past EOF not installed");
    use std::os::unix::fs::MetadataExt;
    let after = std::fs::metadata(d.path("small")).unwrap();
    assert_eq!(after.len(), 5, "size restored");
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()), "mtime restored");
    assert_eq!(c.getattr(n).unwrap().attr.size, 5);
    // Growth to another unaligned size makes the new EOF page visible (I3).
    let fh = c.open(n, libc::O_RDWR).unwrap();
    c.write(n, fh, PAGE + 100, b"tail").unwrap();
    assert_eq!(c.vmm.window().read(PAGE + 100, 4).unwrap(), b"tail");
    assert_window_safe(&c, n, 0, 0, MB2, 0);
    // Truncating to an unaligned size keeps the new EOF page mapped.
    c.setattr(n, SetattrIn { valid: FATTR_SIZE, size: 3, ..Default::default() }).unwrap();
    assert_eq!(c.vmm.window().read(0, 5).unwrap(), b"hel\0\0");
    assert_window_safe(&c, n, 0, 0, MB2, PAGE + 104);
}

#[test]
fn writable_mapping_allocates_its_blocks() {
    let (d, c) = dax_daemon();
    let (e, fh) = c.create(1, "sparse", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    c.setattr(e.nodeid, SetattrIn { valid: FATTR_SIZE, size: MB2, ..Default::default() }).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(d.path("sparse")).unwrap().blocks(), 0);
    c.setupmapping(e.nodeid, 0, MB2, RW, 0).unwrap();
    assert!(std::fs::metadata(d.path("sparse")).unwrap().blocks() >= MB2 / 512, "I6: blocks allocated");
    c.release(e.nodeid, fh).unwrap();
}

#[test]
fn destroy_unmaps_everything() {
    let (_d, c) = dax_daemon();
    let (n, _) = mapped_file(&c, "f", 8192);
    assert!(!c.vmm.window().pieces().is_empty());
    c.destroy().unwrap();
    assert!(c.vmm.window().pieces().is_empty());
    let _ = n;
}

#[test]
fn host_truncate_of_a_leased_file_revokes_before_it_returns() {
    let (d, c) = dax_daemon_guarded_by("lease");
    let (n, _fh) = mapped_file(&c, "f", 3 << 20);
    assert_eq!(c.vmm.window().pieces().len(), 2);
    // Another opener for write breaks the daemon's lease; the break must have unmapped every
    // piece before that open returns (a blocking open: coreutils truncate uses O_NONBLOCK and
    // would get EAGAIN instead of waiting).
    let f = std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap();
    assert!(c.vmm.window().pieces().is_empty(), "pieces still installed after the lease break");
    f.set_len(5000).unwrap();
    assert!(c.vmm.window().pieces().is_empty());
    drop(f);
    // Once the file is stable again the daemon re-takes the lease and re-installs to EOF.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.vmm.window().read(0, 4).unwrap() != pattern_bytes(5, 0, 4) {
        assert!(std::time::Instant::now() < deadline, "pieces never re-installed:\n{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 3 << 20);
    let pieces = c.vmm.window().pieces();
    assert!(pieces.iter().all(|p| p.fd_offset + p.len <= PAGE * 2), "re-installed only to EOF: {pieces:?}");
}

#[test]
fn frontend_conformance_probe_passes_against_the_test_vmm() {
    let d = Daemon::start(&["--dax-window", "64M", "--dax-probe-frontend"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let n = c.make_file("f", &pattern_bytes(1, 0, PAGE as usize));
    c.setupmapping(n, 0, MB2, R, 0).unwrap();
    assert!(d.log().contains("frontend conformance: 9/9 checks as expected"), "{}", d.log());
    // The probe left nothing behind but the guest's own mapping.
    assert_eq!(c.vmm.window().pieces().len(), 1);
}

#[test]
fn bad_dax_window_sizes_fail_at_startup() {
    for bad in ["3M", "1000", "1x", "0x10", "3G"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_daxfsd"))
            .args(["--shared-dir", "/tmp", "--socket-path", "/tmp/never-used.sock", "--dax-window", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--dax-window {bad} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--dax-window"), "{bad}");
    }
}

#[test]
fn inode_dax_flags_regular_files_per_policy() {
    for (policy, want) in [("leasable", true), ("all", true), ("none", false)] {
        let d = Daemon::start(&["--dax-window", "64M", "--dax-files", policy]);
        std::fs::write(d.path("f"), b"x").unwrap();
        std::fs::create_dir(d.path("dir")).unwrap();
        let c = Client::connect_dax(&d.socket, 1, true);
        assert_ne!((u64::from(c.init.flags2) << 32) & FUSE_HAS_INODE_DAX, 0);
        let f = c.lookup(1, "f").unwrap();
        assert_eq!(f.attr.flags & FUSE_ATTR_DAX != 0, want, "policy {policy}");
        assert_eq!(c.lookup(1, "dir").unwrap().attr.flags & FUSE_ATTR_DAX, 0, "directories never");
    }
    // dax=always (no HAS_INODE_DAX offered): no per-inode flags at all.
    let (d, c) = dax_daemon();
    std::fs::write(d.path("f"), b"x").unwrap();
    assert_eq!(c.lookup(1, "f").unwrap().attr.flags & FUSE_ATTR_DAX, 0);
}

/// Host processes mutate a mapped file in a loop while the window is scanned: no installed
/// page may ever be past the host EOF (a read of one is EIO here, a dead VM there). Under
/// both guards: leases, and fanotify.
#[test]
fn host_mutations_never_leave_an_installed_page_past_eof() {
    host_mutations_under("lease");
    host_mutations_under("fanotify");
}

fn host_mutations_under(guard: &str) {
    let (d, c) = dax_daemon_guarded_by(guard);
    let full = pattern_bytes(8, 0, 1 << 20);
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    write_all(&c, e.nodeid, fh, 0, &full);
    c.setupmapping(e.nodeid, 0, MB2, RW, 0).unwrap();
    let path = d.path("f");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let bad = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::io::Write;
            let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            for i in 0..300u64 {
                let size = (i * 7919) % (1 << 20);
                match i % 4 {
                    0 => std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&path)
                        .unwrap()
                        .write_all(&full)
                        .unwrap(),
                    1 => std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(size).unwrap(),
                    // SAFETY: `cpath` is a NUL-terminated path that outlives the call.
                    2 => assert_eq!(unsafe { libc::truncate(cpath.as_ptr(), i64::try_from(size).unwrap()) }, 0),
                    _ => std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 20).unwrap(),
                }
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for p in 0..(1 << 20) / PAGE {
                    if c.vmm.window().read(p * PAGE, 1).is_err() {
                        bad.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        });
    });
    assert_eq!(bad.load(std::sync::atomic::Ordering::SeqCst), 0, "{guard}: installed pages seen past EOF\n{}", d.log());
}

#[test]
fn create_o_trunc_of_a_mapped_file_replies_size_zero() {
    let (d, c) = dax_daemon();
    let (n, _fh) = mapped_file(&c, "f", 1 << 20);
    // CREATE of an existing name with O_TRUNC: the guest takes the entry's size as the file's.
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644).unwrap();
    assert_eq!(e.nodeid, n);
    assert_eq!(e.attr.size, 0, "CREATE(O_TRUNC) entry shows the size before the truncate");
    assert_eq!(std::fs::metadata(d.path("f")).unwrap().len(), 0);
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 1 << 20);
    c.write(n, fh, 0, b"again").unwrap();
    assert_eq!(c.vmm.window().read(0, 5).unwrap(), b"again");
}

/// Mapping the page that holds EOF pads the host file to the page boundary for an instant
/// (QEMU 11.1 maps nothing past a file's size). No reply may ever show that padded size or
/// the zeros it adds: LOOKUP, GETATTR, READ and SEEK_HOLE race SETUPMAPPING here.
#[test]
fn padded_eof_page_is_never_visible_to_racing_requests() {
    let (_d, c) = dax_daemon();
    const SIZE: u64 = 3 * PAGE + 100;
    let n = c.make_file("f", &pattern_bytes(4, 0, SIZE as usize));
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300 {
                let flags = if i % 2 == 0 { R } else { RW };
                c.setupmapping(n, 0, MB2, flags, 0).unwrap();
                c.removemapping(&[(0, MB2)]).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut checks = 0u64;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || checks < 50 {
            assert_eq!(c.lookup(1, "f").unwrap().attr.size, SIZE, "LOOKUP saw the padded size");
            c.forget(n, 1);
            assert_eq!(c.getattr(n).unwrap().attr.size, SIZE, "GETATTR saw the padded size");
            let tail = c.read(n, fh, 3 * PAGE, PAGE as u32).unwrap();
            assert_eq!(tail.len(), 100, "READ returned the padding");
            assert_eq!(c.lseek(n, fh, 0, libc::SEEK_HOLE as u32).unwrap(), SIZE, "SEEK_HOLE saw the padding");
            checks += 1;
        }
    });
}

/// The INIT flags `Client::connect_dax` offers (`mount -o dax=always`).
const DAX_INIT: u64 = FUSE_INIT_EXT | FUSE_MAP_ALIGNMENT | FUSE_DO_READDIRPLUS | FUSE_ATOMIC_O_TRUNC | FUSE_MAX_PAGES;

/// Whether every listed window slot reads as zeros (nothing installed there).
fn slots_read_zeros(c: &Client, slots: std::ops::Range<u64>) -> bool {
    slots.into_iter().all(|s| c.vmm.window().read(s * MB2, PAGE as usize).unwrap().iter().all(|b| *b == 0))
}

#[test]
fn init_again_on_a_mapped_session_unmaps_every_piece() {
    let (_d, c) = dax_daemon();
    mapped_file(&c, "a", 3 << 20);
    let b = c.make_file("b", &pattern_bytes(6, 0, 2 * PAGE as usize));
    c.setupmapping(b, 0, MB2, R, 2 * MB2).unwrap();
    assert_eq!(c.vmm.window().pieces().len(), 3);
    let init = c.do_init(DAX_INIT);
    assert_ne!(init.flags & FUSE_MAP_ALIGNMENT as u32, 0, "the window is still offered");
    assert!(c.vmm.window().pieces().is_empty(), "I1: pieces left installed by a new INIT");
    assert!(slots_read_zeros(&c, 0..3));
    // The new session knows no node ids of the old one: map the same slots after a LOOKUP. A
    // table that kept the old mappings would unmap them again, which the frontend refuses.
    let a = c.lookup(1, "a").unwrap().nodeid;
    c.setupmapping(a, 0, MB2, RW, 0).unwrap();
    c.setupmapping(a, MB2, MB2, RW, MB2).unwrap();
    assert_window_safe(&c, a, 0, 0, 2 * MB2, 0);
    let log = c.vmm.window().log();
    let unmapped = log.iter().filter(|e| e.op == ShmemOp::Unmap && e.errno == 0).count();
    assert_eq!(unmapped, 3, "one acknowledged unmap per piece: {log:?}");
}

#[test]
fn reconnect_after_disconnect_starts_with_an_empty_window() {
    let (mut d, c) = dax_daemon();
    mapped_file(&c, "f", 3 << 20);
    assert_eq!(c.vmm.window().pieces().len(), 2);
    drop(c);
    let c = Client::connect_dax(&d.socket, 1, false);
    assert_ne!(c.init.flags & FUSE_MAP_ALIGNMENT as u32, 0, "the window is offered to the new frontend");
    let n = c.lookup(1, "f").unwrap().nodeid;
    // The same window ranges as before: the daemon must have forgotten the old frontend's
    // pieces, neither unmapping them in this one (refused) nor taking them as still mapped.
    c.setupmapping(n, 0, MB2, RW, 0).unwrap();
    c.setupmapping(n, MB2, MB2, RW, MB2).unwrap();
    let log = c.vmm.window().log();
    let stale = |e: &&ShmemEvent| e.op == ShmemOp::Unmap && e.shm_offset < 2 * MB2;
    assert!(!log.iter().any(|e| stale(&e)), "the old frontend's pieces unmapped in the new one: {log:?}");
    assert!(log.iter().filter(|e| e.op == ShmemOp::Map).all(|e| e.errno == 0), "{log:?}");
    assert_eq!(c.vmm.window().pieces().len(), 2);
    assert_window_safe(&c, n, 0, 0, 2 * MB2, 0);
    c.vmm.window().write(MB2 + 10, b"second frontend").unwrap();
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(n, fh, MB2 + 10, 15).unwrap(), b"second frontend");
    assert!(d.is_running());
}

#[test]
fn dax_window_zero_offers_no_window_and_setupmapping_is_enosys() {
    let d = Daemon::start(&["--dax-window", "0"]);
    // A DAX-capable frontend (SHMEM) offering dax=inode at INIT.
    let c = Client::connect_dax(&d.socket, 1, true);
    assert!(!c.vmm.protocol_features().contains(VhostUserProtocolFeatures::SHMEM), "SHMEM offered");
    assert!(c.vmm.shmem_sizes().is_empty());
    assert_eq!(c.vmm.window().len(), 0);
    assert_eq!(c.init.flags & FUSE_MAP_ALIGNMENT as u32, 0);
    assert_eq!(c.init.map_alignment, 0);
    assert_eq!((u64::from(c.init.flags2) << 32) & FUSE_HAS_INODE_DAX, 0);
    let n = c.make_file("f", b"plain");
    assert_eq!(c.lookup(1, "f").unwrap().attr.flags & FUSE_ATTR_DAX, 0);
    for flags in [R, RW] {
        assert_eq!(c.setupmapping(n, 0, MB2, flags, 0).unwrap_err(), libc::ENOSYS, "flags {flags}");
    }
    assert_eq!(c.removemapping(&[(0, MB2)]).unwrap_err(), libc::ENOSYS);
    assert!(c.vmm.window().log().is_empty(), "SHMEM_MAP/UNMAP sent without a window");
    // Plain virtio-fs keeps working.
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(n, fh, 0, 100).unwrap(), b"plain");
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when a test fails). Lazily
/// (MNT_DETACH), in case the daemon still has files open there.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes; EPERM without CAP_SYS_ADMIN.
    fn mount(size: u64) -> std::io::Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let data = std::ffi::CString::new(format!("size={size}")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let r = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, data.as_ptr().cast()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes `path` until its filesystem is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5; 64 << 10];
    let e = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
}

/// Review item 1 of issue 9: a read-only SETUPMAPPING of a sparse file (below EOF, no EOF
/// page to pad) leaves the host file as it was: no blocks allocated, the same ctime. The guest's
/// write request over the same range then allocates (I6). On a filesystem where a read fault of
/// a hole needs space (tmpfs), read requests allocate too: see the full-filesystem test below.
#[test]
fn a_read_only_setupmapping_of_a_sparse_file_changes_nothing_on_the_host() {
    use std::os::unix::fs::MetadataExt;
    let (d, c) = dax_daemon();
    std::fs::File::create(d.path("sparse")).unwrap().set_len(2 * MB2).unwrap();
    let before = std::fs::metadata(d.path("sparse")).unwrap();
    let n = c.lookup(1, "sparse").unwrap().nodeid;
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    c.setupmapping(n, 0, MB2, R, 0).unwrap();
    assert_eq!(c.vmm.window().read(PAGE, 4).unwrap(), [0; 4]);
    let after = std::fs::metadata(d.path("sparse")).unwrap();
    assert_eq!(after.blocks(), 0, "a read-only mapping allocated blocks");
    assert_eq!((after.ctime(), after.ctime_nsec()), (before.ctime(), before.ctime_nsec()), "ctime changed");
    // The guest's upgrade (a write request over the same range) allocates first (I6).
    c.setupmapping(n, 0, MB2, RW, 0).unwrap();
    assert!(std::fs::metadata(d.path("sparse")).unwrap().blocks() >= MB2 / 512, "I6: blocks allocated");
    c.release(n, fh).unwrap();
}

/// Whether some process holds a lease on inode `ino` (/proc/locks: "1: LEASE ... MAJ:MIN:INO ...").
fn has_lease(ino: u64) -> bool {
    std::fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"LEASE") && f.get(5).and_then(|d| d.rsplit(':').next()) == Some(ino.to_string().as_str())
    })
}

/// I6 on a full filesystem: the allocation of a writable mapping fails with ENOSPC before
/// anything is installed, and the daemon keeps serving. Skipped (with a message) where a tmpfs
/// cannot be mounted.
#[test]
fn setupmapping_of_a_sparse_file_on_a_full_filesystem_answers_enospc() {
    let fs = match Tmpfs::mount(1 << 20) {
        Ok(fs) => fs,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            eprintln!("SKIPPED: cannot mount a tmpfs ({e}); needs CAP_SYS_ADMIN");
            return;
        }
        Err(e) => panic!("mount tmpfs: {e}"),
    };
    // The share lives inside the tmpfs, so the daemon removes it before the tmpfs goes.
    let share = tempfile::tempdir_in(fs.path()).unwrap();
    std::fs::write(share.path().join("small"), pattern_bytes(7, 0, 2 * PAGE as usize)).unwrap();
    std::fs::File::create(share.path().join("sparse")).unwrap().set_len(4 << 20).unwrap();
    fill(&share.path().join("filler"));
    let mut d = Daemon::start_in(share, &["--dax-window", "64M"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let sparse = c.lookup(1, "sparse").unwrap().nodeid;
    assert_eq!(c.setupmapping(sparse, 0, MB2, RW, 0).unwrap_err(), libc::ENOSPC);
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(d.path("sparse")).unwrap());
    assert!(!has_lease(ino), "the failed SETUPMAPPING left its lease behind");
    // A read-only request gets the same answer: the daemon opens the file O_RDWR and installs
    // the piece writable whenever it may (I1, so the guest's later read->write upgrade needs no
    // remap), and a writable piece must be allocated first (I6). A read-only piece would be no
    // way out: on tmpfs a read fault of a hole needs a page too, and SIGBUSes on a full
    // filesystem (tried: /proc/self/mem read such a piece as EIO).
    assert_eq!(c.setupmapping(sparse, 0, MB2, R, 0).unwrap_err(), libc::ENOSPC);
    assert!(!has_lease(ino), "the failed SETUPMAPPING left its lease behind");
    let log = c.vmm.window().log();
    assert!(log.iter().all(|e| e.op != ShmemOp::Map), "a SHMEM_MAP went out before the allocation: {log:?}");
    // Still serving, mappings included: an allocated file maps writable on the full filesystem.
    let small = c.lookup(1, "small").unwrap().nodeid;
    c.setupmapping(small, 0, MB2, RW, 0).unwrap();
    assert_eq!(c.vmm.window().read(0, 2 * PAGE as usize).unwrap(), pattern_bytes(7, 0, 2 * PAGE as usize));
    c.vmm.window().write(PAGE, b"full").unwrap();
    let fh = c.open(small, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(small, fh, PAGE, 4).unwrap(), b"full");
    assert!(d.is_running());
}

/// I1 needs acknowledged maps. A frontend without REPLY_ACK gets no DAX: SETUPMAPPING answers
/// EIO every time, nothing is mapped, the daemon logs why and keeps serving.
#[test]
fn setupmapping_without_reply_ack_is_eio_and_maps_nothing() {
    let d = Daemon::start(&["--dax-window", "64M"]);
    let opts = VmmOptions { shmem: true, reply_ack: false, mem_size: 128 << 20, ..VmmOptions::default() };
    let c = Client::connect(&d.socket, 1, opts);
    c.do_init(FUSE_INIT_EXT | FUSE_MAP_ALIGNMENT);
    let n = c.make_file("f", &pattern_bytes(1, 0, 8192));
    for flags in [R, RW] {
        assert_eq!(c.setupmapping(n, 0, MB2, flags, 0).unwrap_err(), libc::EIO);
    }
    assert!(c.vmm.window().pieces().is_empty());
    assert!(c.vmm.window().log().iter().all(|e| e.op != ShmemOp::Map), "a SHMEM_MAP went out");
    assert!(d.log().contains("must negotiate REPLY_ACK"), "{}", d.log());
    assert_eq!(c.getattr(n).unwrap().attr.size, 8192);
    // The same daemon maps for the next frontend, which acknowledges.
    drop(c);
    let c = Client::connect_dax(&d.socket, 1, false);
    let n = c.lookup(1, "f").unwrap().nodeid;
    c.setupmapping(n, 0, MB2, R, 0).unwrap();
    assert_eq!(c.vmm.window().read(0, 8192).unwrap(), pattern_bytes(1, 0, 8192));
}

/// A device reset (QEMU: a guest reboot) drops the frontend's mappings itself. The daemon
/// forgets its own without sending unmaps, and the re-initialized device maps the same ranges.
#[test]
fn device_reset_forgets_every_mapping_without_unmaps() {
    let (_d, mut c) = dax_daemon();
    let n = c.make_file("f", &pattern_bytes(6, 0, 8192));
    c.setupmapping(n, 0, MB2, RW, 0).unwrap();
    c.setupmapping(n, 0, MB2, R, 4 * MB2).unwrap();
    c.vmm.reset_device().unwrap();
    assert!(c.vmm.window().pieces().is_empty());
    let seen = c.vmm.window().log().len();
    c.init = c.do_init(FUSE_INIT_EXT | FUSE_MAP_ALIGNMENT);
    assert_ne!(c.init.flags & FUSE_MAP_ALIGNMENT as u32, 0, "the window survives a reset");
    let n = c.lookup(1, "f").unwrap().nodeid;
    c.setupmapping(n, 0, MB2, RW, 0).unwrap();
    c.setupmapping(n, 0, MB2, R, 4 * MB2).unwrap();
    let after: Vec<_> = c.vmm.window().log().split_off(seen);
    assert!(after.iter().all(|e| e.op == ShmemOp::Map && e.errno == 0), "after the reset: {after:?}");
    assert_eq!(after.len(), 2);
    assert_eq!(c.vmm.window().read(4 * MB2, 8192).unwrap(), pattern_bytes(6, 0, 8192));
}

/// I5 holds for the daemon's own opens: a CREATE (without O_EXCL) of a name whose file is
/// mapped reuses the inode's shared file instead of opening it again, which would break the
/// daemon's own lease and revoke the guest's mappings.
#[test]
fn create_of_a_mapped_existing_name_keeps_its_mappings() {
    let (d, mut c) = dax_daemon();
    let (_n, _fh) = mapped_file(&c, "f", 1 << 20);
    assert_eq!(c.vmm.window().pieces().len(), 1);
    let (e, fh2) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    assert_eq!(e.attr.size, 1 << 20);
    assert_eq!(c.vmm.window().pieces().len(), 1, "the CREATE revoked the mapping:\n{}", d.log());
    assert!(!d.log().contains("lease break"), "the CREATE broke the daemon's own lease:\n{}", d.log());
    // The handle works, and a CREATE still checks the caller's permission on what it opens.
    c.write(e.nodeid, fh2, 0, b"same").unwrap();
    assert_eq!(c.vmm.window().read(0, 4).unwrap(), b"same");
    std::fs::set_permissions(d.path("f"), std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    (c.uid, c.gid) = (65534, 65534);
    assert_eq!(c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap_err(), libc::EACCES);
}

/// A lease is held only while the file is mapped (I5): a SETUPMAPPING that displaces another
/// file's last mapping releases that file's lease, so host openers of it no longer wait on a
/// break for nothing.
#[test]
fn a_displaced_files_lease_is_released() {
    let (d, c) = dax_daemon();
    let (a, fa) = c.create(1, "a", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    write_all(&c, a.nodeid, fa, 0, b"aaaa");
    c.setupmapping(a.nodeid, 0, MB2, RW, 0).unwrap();
    let (b, fb) = c.create(1, "b", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    write_all(&c, b.nodeid, fb, 0, b"bbbb");
    // b's mapping replaces a's, a's only one.
    c.setupmapping(b.nodeid, 0, MB2, RW, 0).unwrap();
    assert_eq!(c.vmm.window().read(0, 4).unwrap(), b"bbbb");
    // A host open of a breaks nothing now: no revoke of a (it has nothing mapped).
    drop(std::fs::OpenOptions::new().write(true).open(d.path("a")).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!d.log().contains("lease break on inode"), "a's lease was still held:\n{}", d.log());
}

/// I2 for readers of a DAX file: the instant a SETUPMAPPING pads a file to its EOF page must
/// never be seen by a COPY_FILE_RANGE from it (that copy would carry the padding's zeros into
/// the destination and grow it past the source's size).
#[test]
fn copy_file_range_never_copies_the_eof_padding() {
    let (_d, c) = dax_daemon();
    let (a, fa) = c.create(1, "a", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    write_all(&c, a.nodeid, fa, 0, &[b'a'; 100]);
    let (b, fb) = c.create(1, "b", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Each map of the unaligned file pads it to 4096 bytes for an instant.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.setupmapping(a.nodeid, 0, MB2, R, 0).unwrap();
                c.removemapping(&[(0, MB2)]).unwrap();
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let cfr = CopyFileRangeIn {
                fh_in: fa,
                off_in: 0,
                nodeid_out: b.nodeid,
                fh_out: fb,
                off_out: 0,
                len: 8192,
                flags: 0,
            };
            let n = c.copy_file_range(cfr, a.nodeid).unwrap();
            let size = c.getattr(b.nodeid).unwrap().attr.size;
            if n != 100 || size != 100 {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!(
                    "COPY_FILE_RANGE copied {n} bytes, the destination is {size} bytes: the source's padding leaked"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
