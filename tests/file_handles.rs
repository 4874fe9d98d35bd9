//! Inodes held as file handles (`--inode-file-handles`, prefer by default): lookups, getattr,
//! open and read through handles, hard links and re-lookups deduplicated, no host fd per inode,
//! the fallback to O_PATH fds where a filesystem or the capability is missing, and mandatory
//! failing loudly there. Under the default sandbox (namespaces, seccomp kill).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::fuse::*;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// A ramfs (no export operations: no file handles) mounted at `dir`, unmounted on drop.
struct Ramfs(std::path::PathBuf);

impl Ramfs {
    fn mount(dir: std::path::PathBuf) -> Ramfs {
        std::fs::create_dir(&dir).unwrap();
        let st = Command::new("mount").args(["-t", "ramfs", "ramfs"]).arg(&dir).status().unwrap();
        assert!(st.success(), "mount -t ramfs failed");
        Ramfs(dir)
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn handle_inodes_serve_lookup_getattr_open_and_read() {
    let d = Daemon::start(&[]);
    std::fs::create_dir(d.path("dir")).unwrap();
    std::fs::write(d.path("dir/f"), b"hello through a handle").unwrap();
    let c = d.client();
    d.wait_for_log("inodes are held as file handles");
    let dir = c.lookup(1, "dir").unwrap();
    let f = c.lookup(dir.nodeid, "f").unwrap();
    let meta = std::fs::metadata(d.path("dir/f")).unwrap();
    assert_eq!(f.attr.ino, meta.ino());
    assert_eq!(c.getattr(f.nodeid).unwrap().attr.size, 22);
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 100).unwrap(), b"hello through a handle");
    c.release(f.nodeid, fh).unwrap();
    // Ops that need the parent's fd (it is opened from the handle for each).
    let g = c.mkdir(dir.nodeid, "sub", 0o755).unwrap();
    c.symlink(g.nodeid, "l", "../f").unwrap();
    assert_eq!(c.readlink(c.lookup(g.nodeid, "l").unwrap().nodeid).unwrap(), b"../f");
    c.rename(dir.nodeid, "f", g.nodeid, "f2").unwrap();
    assert!(d.path("dir/sub/f2").exists());
    c.unlink(g.nodeid, "f2").unwrap();
    assert!(!d.log().contains("no file handles"), "{}", d.log());
}

#[test]
fn hard_links_and_relookups_after_forget_dedupe_by_inode() {
    let d = Daemon::start(&[]);
    std::fs::write(d.path("a"), b"shared").unwrap();
    std::fs::hard_link(d.path("a"), d.path("b")).unwrap();
    let c = d.client();
    let a = c.lookup(1, "a").unwrap();
    let b = c.lookup(1, "b").unwrap();
    assert_eq!(a.nodeid, b.nodeid, "two names of one inode are one node");
    let l = c.link(a.nodeid, 1, "c").unwrap();
    assert_eq!(l.nodeid, a.nodeid);
    assert_eq!(std::fs::metadata(d.path("c")).unwrap().nlink(), 3);
    // Forget every lookup; the next one makes a new node from a new handle, which still opens.
    c.forget(a.nodeid, 3);
    let mut fresh = None;
    for _ in 0..100 {
        let e = c.lookup(1, "b").unwrap();
        if e.nodeid != a.nodeid {
            fresh = Some(e);
            break;
        }
        c.forget(e.nodeid, 1);
        c.getattr(1).unwrap(); // a round trip, for the FORGET on the other queue to land
    }
    let e = fresh.expect("the node was never forgotten");
    let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(e.nodeid, fh, 0, 10).unwrap(), b"shared");
    // A file removed on the host: its handle no longer opens (ESTALE, or ENOENT from the host).
    std::fs::remove_file(d.path("b")).unwrap();
    std::fs::remove_file(d.path("c")).unwrap();
    let x = c.lookup(1, "a").unwrap();
    std::fs::remove_file(d.path("a")).unwrap();
    c.release(e.nodeid, fh).unwrap();
    let _ = c.getattr(x.nodeid);
    c.getattr(1).unwrap();
}

/// The same flood that hits the inode fd quota with `never` (tests/security.rs) succeeds with
/// handles, and the daemon keeps no fd per inode.
#[test]
fn lookup_flood_with_handles_holds_no_fd_per_inode() {
    const FLOOD: u64 = 4000;
    let d = Daemon::start(&["--rlimit-nofile", "2048"]);
    for i in 0..FLOOD {
        std::fs::write(d.path(&format!("n{i}")), b"x").unwrap();
    }
    let c = d.client();
    let before = fd_count(d.serving_pid());
    for i in 0..FLOOD {
        c.lookup(1, &format!("n{i}")).unwrap_or_else(|e| panic!("LOOKUP n{i}: errno {e}"));
    }
    let after = fd_count(d.serving_pid());
    assert!(after < before + 16, "fds grew from {before} to {after} over {FLOOD} inodes");
    let e = c.lookup(1, "n3999").unwrap();
    let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(e.nodeid, fh, 0, 1).unwrap(), b"x");
}

#[test]
fn never_holds_an_fd_per_inode() {
    let d = Daemon::start(&["--inode-file-handles=never"]);
    for i in 0..200 {
        std::fs::write(d.path(&format!("n{i}")), b"x").unwrap();
    }
    let c = d.client();
    let before = fd_count(d.serving_pid());
    for i in 0..200 {
        c.lookup(1, &format!("n{i}")).unwrap();
    }
    assert!(fd_count(d.serving_pid()) >= before + 200);
    assert!(!d.log().contains("held as file handles"));
}

#[test]
fn prefer_falls_back_to_fds_on_a_mount_without_handles() {
    if !is_root() {
        eprintln!("skipped: mounting a ramfs needs root");
        return;
    }
    // Mounted before the daemon starts: a private host / propagates nothing to its namespace.
    let share = tempfile::tempdir().unwrap();
    let _ram = Ramfs::mount(share.path().join("ram"));
    std::fs::write(share.path().join("ram/f"), b"in ramfs").unwrap();
    std::fs::write(share.path().join("g"), b"on ext4").unwrap();
    let d = Daemon::start_in(share, &[]);
    let c = d.client();
    let ram = c.lookup(1, "ram").unwrap();
    let f = c.lookup(ram.nodeid, "f").unwrap();
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 100).unwrap(), b"in ramfs");
    d.wait_for_log("no file handles (name_to_handle_at");
    // The shared directory's own mount still uses handles.
    let before = fd_count(d.serving_pid());
    let g = c.lookup(1, "g").unwrap();
    assert_eq!(fd_count(d.serving_pid()), before, "an inode on the handle mount holds an fd");
    assert!(c.getattr(g.nodeid).is_ok());
}

#[test]
fn mandatory_fails_lookups_on_a_mount_without_handles_loudly() {
    if !is_root() {
        eprintln!("skipped: mounting a ramfs needs root");
        return;
    }
    let share = tempfile::tempdir().unwrap();
    let _ram = Ramfs::mount(share.path().join("ram"));
    std::fs::write(share.path().join("ram/f"), b"x").unwrap();
    std::fs::write(share.path().join("g"), b"x").unwrap();
    let mut d = Daemon::start_in(share, &["--inode-file-handles=mandatory"]);
    let c = d.client();
    // The ramfs root itself is on the ramfs: refused, and logged as an error.
    assert_eq!(c.lookup(1, "ram").unwrap_err(), libc::EOPNOTSUPP);
    d.wait_for_log("--inode-file-handles=mandatory: mount");
    assert!(c.lookup(1, "g").is_ok());
    still_serving(&mut d, &c);
}

#[test]
fn without_dac_read_search_prefer_falls_back_and_mandatory_fails_the_start() {
    if !is_root() {
        eprintln!("skipped: the capability matters only to a root daemon");
        return;
    }
    let d = Daemon::start(&["--modcaps=-dac_read_search"]);
    std::fs::write(d.path("f"), b"x").unwrap();
    let c = d.client();
    d.wait_for_log("open_by_handle_at needs CAP_DAC_READ_SEARCH");
    let f = c.lookup(1, "f").unwrap();
    let fh = c.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(f.nodeid, fh, 0, 1).unwrap(), b"x");
    drop(c);
    drop(d);
    let share = tempfile::tempdir().unwrap();
    let sock = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_daxfsd"))
        .arg("--shared-dir")
        .arg(share.path())
        .arg("--socket-path")
        .arg(sock.path().join("s"))
        .args(["--inode-file-handles=mandatory", "--modcaps=-dac_read_search"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "mandatory started without the capability");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--inode-file-handles=mandatory"), "{err}");
}

#[test]
fn rootless_prefer_falls_back_to_fds() {
    if !is_root() {
        eprintln!("skipped: the test starts the daemon as uid 65534");
        return;
    }
    let d = Daemon::start_as(65534, &[]);
    let c = d.client();
    d.wait_for_log("holding inodes as O_PATH fds");
    let e = c.mkdir(1, "d", 0o755).unwrap();
    assert!(c.getattr(e.nodeid).is_ok());
}
