//! Inodes held as file handles (`--inode-file-handles`, prefer by default): lookups, getattr,
//! open and read through handles, hard links and re-lookups deduplicated, no host fd per inode,
//! the fallback to O_PATH fds where a filesystem or the capability is missing, and mandatory
//! failing loudly there; requests made as an unprivileged caller (the daemon takes on the
//! caller's fsuid, which drops CAP_DAC_READ_SEARCH: every handle is opened before that).
//! Under the default sandbox (namespaces, seccomp kill).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::fuse::*;
use daxfsd::fuse::abi::*;

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

/// The two ways of holding inodes the caller tests compare: the default, then O_PATH fds.
const MODES: [&[&str]; 2] = [&[], &["--inode-file-handles=never"]];

/// A daemon in `mode` (one of MODES), with the handle log line checked for the default.
fn start_in_mode(mode: &[&str], extra: &[&str]) -> Daemon {
    let args: Vec<&str> = mode.iter().chain(extra).copied().collect();
    let d = Daemon::start(&args);
    if mode.is_empty() {
        d.wait_for_log("inodes are held as file handles");
    }
    d
}

/// pjdfstest 0.2.2 chmod::clear_isgid_bit: root makes a file 0755 and gives it to a user, who
/// sets 02755 (kept: the file's group is the user's) and then 0755. Each SETATTR as the user
/// answers the new mode; with handles it once answered EPERM after the chmod was done (the
/// reply's stat opened the handle under the user's fsuid).
#[test]
fn setattr_chmod_sgid_as_the_owner_answers_the_new_mode() {
    if !is_root() {
        eprintln!("skipped: taking on a caller's credentials needs a root daemon");
        return;
    }
    for mode in MODES {
        let d = start_in_mode(mode, &[]);
        let mut c = d.client();
        let (e, fh) = c.create(1, "f", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644).unwrap();
        c.release(e.nodeid, fh).unwrap();
        c.setattr(e.nodeid, SetattrIn { valid: FATTR_MODE, mode: 0o755, ..Default::default() }).unwrap();
        let own = SetattrIn { valid: FATTR_UID | FATTR_GID, uid: 65534, gid: 65534, ..Default::default() };
        c.setattr(e.nodeid, own).unwrap();
        (c.uid, c.gid) = (65534, 65534);
        for want in [0o2755, 0o755] {
            let s = SetattrIn { valid: FATTR_MODE, mode: want, ..Default::default() };
            let got = c.setattr(e.nodeid, s).unwrap_or_else(|e| panic!("{mode:?}: chmod {want:o}: errno {e}"));
            assert_eq!(got.attr.mode & 0o7777, want, "{mode:?}");
            assert_eq!(std::fs::metadata(d.path("f")).unwrap().mode() & 0o7777, want, "{mode:?}");
            assert_eq!(c.getattr(e.nodeid).unwrap().attr.mode & 0o7777, want, "{mode:?}");
        }
    }
}

/// pjdfstest 0.2.2 ftruncate::affected_create_flags_only: a file created O_RDWR with mode 0
/// can be truncated through the fd that created it, by root and by a user in a 0777 directory
/// (the SETATTR carries the handle; the mode does not matter, only the open's flags).
#[test]
fn setattr_ftruncate_of_a_mode_0_file_through_its_create_handle_succeeds() {
    if !is_root() {
        eprintln!("skipped: taking on a caller's credentials needs a root daemon");
        return;
    }
    for mode in MODES {
        let d = start_in_mode(mode, &[]);
        let mut c = d.client();
        let sub = c.mkdir(1, "sub", 0o755).unwrap();
        let trunc = |c: &Client, node, fh| {
            let s = SetattrIn { valid: FATTR_SIZE | FATTR_FH, fh, size: 0, ..Default::default() };
            c.setattr(node, s).map(|a| a.attr.size)
        };
        let (e, fh) = c.create(sub.nodeid, "test", libc::O_RDWR | libc::O_CREAT, 0).unwrap();
        assert_eq!(trunc(&c, e.nodeid, fh), Ok(0), "{mode:?}: as root");
        c.setattr(sub.nodeid, SetattrIn { valid: FATTR_MODE, mode: 0o777, ..Default::default() }).unwrap();
        (c.uid, c.gid) = (65534, 65534);
        let (e, fh) = c.create(sub.nodeid, "unprivileged", libc::O_RDWR | libc::O_CREAT, 0).unwrap();
        c.write(e.nodeid, fh, 0, b"data").unwrap();
        assert_eq!(trunc(&c, e.nodeid, fh), Ok(0), "{mode:?}: as the user");
        assert_eq!(std::fs::metadata(d.path("sub/unprivileged")).unwrap().len(), 0, "{mode:?}");
    }
}

/// truncate(2) by path (no handle in the SETATTR): the daemon opens the file for writing as
/// the caller, so the host checks the caller's write permission, as with O_PATH fds.
#[test]
fn setattr_truncate_by_path_as_a_user_checks_write_permission() {
    if !is_root() {
        eprintln!("skipped: taking on a caller's credentials needs a root daemon");
        return;
    }
    for mode in MODES {
        let d = start_in_mode(mode, &[]);
        let mut c = d.client();
        (c.uid, c.gid) = (65534, 65534);
        let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0).unwrap();
        c.write(e.nodeid, fh, 0, b"0123456789").unwrap();
        c.release(e.nodeid, fh).unwrap();
        let size = |n| SetattrIn { valid: FATTR_SIZE, size: n, ..Default::default() };
        assert_eq!(c.setattr(e.nodeid, size(3)).unwrap_err(), libc::EACCES, "{mode:?}: mode 0");
        c.setattr(e.nodeid, SetattrIn { valid: FATTR_MODE, mode: 0o644, ..Default::default() }).unwrap();
        assert_eq!(c.setattr(e.nodeid, size(3)).map(|a| a.attr.size), Ok(3), "{mode:?}: mode 0644");
        assert_eq!(std::fs::metadata(d.path("f")).unwrap().len(), 3, "{mode:?}");
        (c.uid, c.gid) = (1000, 1000);
        assert_eq!(c.setattr(e.nodeid, size(1)).unwrap_err(), libc::EACCES, "{mode:?}: not the owner");
    }
}

/// Every request that runs as its caller, made by a user, answers as it does with O_PATH fds:
/// nothing opens a file handle under the caller's credentials (a debug daemon aborts if one
/// does, so the requests after it would fail too).
#[test]
fn requests_as_a_user_with_handles_answer_as_with_fds() {
    if !is_root() {
        eprintln!("skipped: taking on a caller's credentials needs a root daemon");
        return;
    }
    for mode in MODES {
        let mut d = start_in_mode(mode, &["--xattr"]);
        let mut c = d.client();
        (c.uid, c.gid) = (65534, 65534);
        let dir = c.mkdir(1, "d", 0o755).unwrap();
        let (f, fh) = c.create(dir.nodeid, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
        c.release(f.nodeid, fh).unwrap();
        c.mknod(dir.nodeid, "p", libc::S_IFIFO | 0o644, 0).unwrap();
        c.symlink(dir.nodeid, "l", "f").unwrap();
        assert_eq!(c.link(f.nodeid, dir.nodeid, "g").unwrap().nodeid, f.nodeid, "{mode:?}");
        c.rename(dir.nodeid, "g", 1, "g").unwrap();
        c.unlink(1, "g").unwrap();
        c.access(f.nodeid, libc::W_OK as u32).unwrap();
        c.setxattr(f.nodeid, "user.k", b"v", 0).unwrap();
        c.removexattr(f.nodeid, "user.k").unwrap();
        let times = SetattrIn { valid: FATTR_ATIME | FATTR_MTIME, atime: 5, mtime: 7, ..Default::default() };
        assert_eq!(c.setattr(f.nodeid, times).unwrap().attr.mtime, 7, "{mode:?}");
        let chgrp = SetattrIn { valid: FATTR_GID, gid: 65534, ..Default::default() };
        assert_eq!(c.setattr(f.nodeid, chgrp).unwrap().attr.gid, 65534, "{mode:?}");
        let steal = SetattrIn { valid: FATTR_UID, uid: 0, ..Default::default() };
        assert_eq!(c.setattr(f.nodeid, steal).unwrap_err(), libc::EPERM, "{mode:?}: chown away");
        c.uid = 1000;
        let chmod = SetattrIn { valid: FATTR_MODE, mode: 0o777, ..Default::default() };
        assert_eq!(c.setattr(f.nodeid, chmod).unwrap_err(), libc::EPERM, "{mode:?}: not the owner");
        assert_eq!(c.access(f.nodeid, libc::W_OK as u32).unwrap_err(), libc::EACCES, "{mode:?}");
        assert_eq!(c.rmdir(1, "d").unwrap_err(), libc::ENOTEMPTY, "{mode:?}");
        still_serving(&mut d, &c);
    }
}
