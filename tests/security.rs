//! A malicious guest kernel against the daemon, requests built by hand: it must never open a
//! host device or FIFO for the guest, never let one request wedge the worker pool, and never
//! let the guest spend the daemon's file descriptors.
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

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::fuse::*;
use common::vmm::Desc;
use daxfsd::fuse::abi::*;
use zerocopy::IntoBytes;

/// /dev/zero: a READ that returns zeros proves the device itself was opened.
const DEV_ZERO: u32 = (1 << 8) | 5;
/// Opens that the fd tests send: about twice what --rlimit-nofile 2048 allows.
const FLOOD: u64 = 4000;

/// MKNOD of a device needs CAP_MKNOD: CI runs as root, elsewhere these tests say so and pass.
fn is_root(what: &str) -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("skipping {what}: needs root (CAP_MKNOD)");
    }
    root
}

fn lock(start: u64, end: u64, typ: i32) -> FileLock {
    FileLock { start, end, typ: typ as u32, pid: 1 }
}

/// Reads from `fh` and fails, showing the bytes, if the daemon let the guest read anything.
fn assert_unreadable(c: &Client, node: u64, fh: u64, what: &str) {
    if let Ok(b) = c.read(node, fh, 0, 16) {
        panic!("{what}: a host special file was opened; READ returned {b:?}");
    }
}

#[test]
fn create_existing_char_device_is_refused() {
    if !is_root("create_existing_char_device_is_refused") {
        return;
    }
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.mknod(1, "zero", libc::S_IFCHR | 0o666, DEV_ZERO).unwrap();
    assert!(std::fs::symlink_metadata(d.path("zero")).unwrap().file_type().is_char_device());
    for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC, libc::O_RDONLY | libc::O_NONBLOCK] {
        match c.create(1, "zero", flags | libc::O_CREAT, 0o644) {
            Ok((e, fh)) => assert_unreadable(&c, e.nodeid, fh, "CREATE without O_EXCL of a char device"),
            Err(e) => assert_eq!(e, libc::ENXIO, "CREATE of a char device, flags {flags:#o}"),
        }
    }
    assert_eq!(c.create(1, "zero", libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL, 0o644).unwrap_err(), libc::EEXIST);
    still_serving(&mut d, &c);
}

#[test]
fn open_of_char_device_is_refused() {
    if !is_root("open_of_char_device_is_refused") {
        return;
    }
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let dev = c.mknod(1, "zero", libc::S_IFCHR | 0o666, DEV_ZERO).unwrap();
    for flags in [libc::O_RDONLY, libc::O_RDWR] {
        if let Ok(fh) = c.open(dev.nodeid, flags) {
            assert_unreadable(&c, dev.nodeid, fh, "OPEN of a char device");
        }
    }
    assert!(c.opendir(dev.nodeid).is_err(), "OPENDIR of a char device");
    still_serving(&mut d, &c);
}

#[test]
fn create_existing_nonregular_answers_like_linux() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.mkdir(1, "dir", 0o755).unwrap();
    c.symlink(1, "link", "target").unwrap();
    c.make_file("target", b"through the link");
    c.mknod(1, "sock", libc::S_IFSOCK | 0o644, 0).unwrap();
    let r = c.create(1, "dir", libc::O_RDONLY | libc::O_CREAT, 0o644).map(drop);
    assert_eq!(r, Err(libc::EISDIR), "CREATE of a directory");
    let r = c.create(1, "link", libc::O_RDONLY | libc::O_CREAT, 0o644).map(drop);
    assert_eq!(r, Err(libc::ELOOP), "CREATE of a symlink (O_NOFOLLOW semantics)");
    let r = c.create(1, "sock", libc::O_RDWR | libc::O_CREAT, 0o644).map(drop);
    assert_eq!(r, Err(libc::ENXIO), "CREATE of a socket");
    still_serving(&mut d, &c);
}

#[test]
fn create_existing_regular_file_opens_it_with_the_guests_flags() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"old contents");
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
    assert_eq!(e.nodeid, n, "the existing inode");
    assert_eq!(c.read(n, fh, 0, 64).unwrap(), b"old contents");
    c.release(n, fh).unwrap();
    let (e, fh) = c.create(1, "f", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o600).unwrap();
    assert_eq!(e.attr.size, 0, "O_TRUNC of the existing file");
    c.write(n, fh, 0, b"new").unwrap();
    c.release(n, fh).unwrap();
    assert_eq!(std::fs::read(d.path("f")).unwrap(), b"new");
    still_serving(&mut d, &c);
}

#[test]
fn create_existing_regular_file_checks_the_callers_permission() {
    let mut d = Daemon::start(&[]);
    let mut c = d.client();
    c.make_file("roots", b"secret");
    std::fs::set_permissions(d.path("roots"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (c.uid, c.gid) = (1000, 1000);
    let r = c.create(1, "roots", libc::O_RDONLY | libc::O_CREAT, 0o644).map(drop);
    assert_eq!(r, Err(libc::EACCES), "CREATE of another user's 0600 file, opened as the caller");
    let (e, fh) = c.create(1, "mine", libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
    c.release(e.nodeid, fh).unwrap();
    let (again, fh) = c.create(1, "mine", libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o600).unwrap();
    assert_eq!(again.nodeid, e.nodeid, "the caller's own file, reopened");
    c.release(e.nodeid, fh).unwrap();
    (c.uid, c.gid) = (0, 0);
    still_serving(&mut d, &c);
}

#[test]
fn create_existing_char_device_in_dax_session_is_refused() {
    if !is_root("create_existing_char_device_in_dax_session_is_refused") {
        return;
    }
    let mut d = Daemon::start(&["--dax-window", "64M"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    c.mknod(1, "zero", libc::S_IFCHR | 0o666, DEV_ZERO).unwrap();
    match c.create(1, "zero", libc::O_RDWR | libc::O_CREAT, 0o644) {
        Ok((e, fh)) => assert_unreadable(&c, e.nodeid, fh, "CREATE without O_EXCL of a char device under DAX"),
        Err(e) => assert_eq!(e, libc::ENXIO, "CREATE of a char device under DAX"),
    }
    let dev = c.lookup(1, "zero").unwrap();
    assert!(c.setupmapping(dev.nodeid, 0, 2 << 20, 2, 0).is_err(), "SETUPMAPPING of a char device");
    still_serving(&mut d, &c);
}

#[test]
fn create_existing_regular_file_in_dax_session_truncates_and_maps() {
    let mut d = Daemon::start(&["--dax-window", "64M"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let n = c.make_file("f", &[7u8; 8192]);
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644).unwrap();
    assert_eq!((e.nodeid, e.attr.size), (n, 0), "the existing inode, truncated");
    assert_eq!(c.write(n, fh, 0, b"dax").unwrap(), 3);
    c.setupmapping(n, 0, 2 << 20, 3, 0).unwrap();
    c.release(n, fh).unwrap();
    assert_eq!(std::fs::read(d.path("f")).unwrap(), b"dax");
    still_serving(&mut d, &c);
}

/// Puts a CREATE of `n` on the ring without waiting for its reply.
fn submit_create(c: &Client, n: &str, flags: i32) -> (common::vmm::Ticket, u64) {
    let body =
        [CreateIn { flags: flags as u32, mode: libc::S_IFREG | 0o644, umask: 0, open_flags: 0 }.as_bytes(), &name(n)]
            .concat();
    let hdr = c.header(Opcode::Create as u32, 1, body.len());
    let descs = [Desc::Read(hdr.as_bytes()), Desc::Read(&body), Desc::Write(16 + 144)];
    (c.vmm.submit(REQ_Q, &descs).unwrap(), hdr.unique)
}

#[test]
fn create_existing_fifo_never_blocks_the_workers() {
    let mut d = Daemon::start(&["--thread-pool-size", "2"]);
    let c = d.client();
    c.mknod(1, "fifo", libc::S_IFIFO | 0o666, 0).unwrap();
    assert!(std::fs::symlink_metadata(d.path("fifo")).unwrap().file_type().is_fifo());
    // One per worker: if either opened the FIFO, it would wait for a writer that never comes.
    let sent = [submit_create(&c, "fifo", libc::O_RDONLY | libc::O_CREAT), submit_create(&c, "fifo", libc::O_RDONLY)];
    for (ticket, unique) in sent {
        let reply = c.vmm.wait(ticket).unwrap_or_else(|e| panic!("CREATE of a FIFO got no reply: {e}"));
        assert_eq!(check_reply(&reply, unique).map(drop), Err(libc::ENXIO), "CREATE of a FIFO");
    }
    still_serving(&mut d, &c);
}

/// Sends OPENs of `node` until the daemon refuses; returns the handles it gave.
fn open_until_refused(c: &Client, node: u64) -> Vec<u64> {
    let mut fhs = Vec::new();
    for i in 0..FLOOD {
        match c.open(node, libc::O_RDONLY) {
            Ok(fh) => fhs.push(fh),
            Err(e) => {
                assert_eq!(e, libc::EMFILE, "OPEN #{i} failed with errno {e}");
                assert!(!fhs.is_empty(), "the first OPEN was refused");
                return fhs;
            }
        }
    }
    panic!("{FLOOD} OPENs without RELEASE all succeeded under --rlimit-nofile 2048");
}

/// Past the guest's fd quota, everything that holds no new fd for the guest still works.
fn assert_namespace_works(d: &mut Daemon, c: &Client, tag: &str) {
    std::fs::write(d.path(&format!("new-{tag}")), b"x").unwrap();
    let e = c.lookup(1, &format!("new-{tag}")).unwrap_or_else(|e| panic!("LOOKUP at the quota: errno {e}"));
    c.getattr(e.nodeid).unwrap_or_else(|e| panic!("GETATTR at the quota: errno {e}"));
    c.mkdir(1, &format!("dir-{tag}"), 0o755).unwrap_or_else(|e| panic!("MKDIR at the quota: errno {e}"));
    still_serving(d, c);
}

#[test]
fn open_flood_hits_the_quota_and_namespace_ops_still_work() {
    let mut d = Daemon::start(&["--rlimit-nofile", "2048"]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fhs = open_until_refused(&c, n);
    assert_eq!(c.read(n, fhs[0], 0, 4).unwrap(), b"data", "READ on a handle opened before the quota");
    assert_eq!(c.opendir(1).unwrap_err(), libc::EMFILE, "OPENDIR past the quota");
    assert_eq!(c.create(1, "g", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap_err(), libc::EMFILE);
    assert_namespace_works(&mut d, &c, "open");
    for &fh in &fhs[..10] {
        c.release(n, fh).unwrap();
    }
    let fh = c.open(n, libc::O_RDONLY).unwrap_or_else(|e| panic!("OPEN after RELEASE: errno {e}"));
    assert_eq!(c.read(n, fh, 0, 4).unwrap(), b"data");
    d.wait_for_log("EMFILE");
}

#[test]
fn open_flood_in_dax_session_hits_the_quota_and_namespace_ops_still_work() {
    let mut d = Daemon::start(&["--dax-window", "64M", "--rlimit-nofile", "2048"]);
    let c = Client::connect_dax(&d.socket, 1, false);
    let n = c.make_file("f", b"data");
    let fhs = open_until_refused(&c, n);
    assert_namespace_works(&mut d, &c, "dax");
    c.release(n, fhs[0]).unwrap();
    c.open(n, libc::O_RDONLY).unwrap_or_else(|e| panic!("OPEN after RELEASE: errno {e}"));
}

#[test]
fn setlk_with_fresh_owners_hits_the_quota_and_namespace_ops_still_work() {
    let mut d = Daemon::start(&["--rlimit-nofile", "2048"]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    let mut owners = 0;
    for owner in 1..=FLOOD {
        match c.lk(Opcode::Setlk, n, fh, owner, lock(0, 0, libc::F_RDLCK), false) {
            Ok(_) => owners = owner,
            Err(e) => {
                assert_eq!(e, libc::EMFILE, "SETLK of owner {owner}: errno {e}");
                break;
            }
        }
    }
    assert!(owners > 0 && owners < FLOOD, "{owners} of {FLOOD} fresh lock owners were given an fd");
    assert_namespace_works(&mut d, &c, "lock");
    let got = c.lk(Opcode::Getlk, n, fh, FLOOD + 2, lock(0, 0, libc::F_WRLCK), false);
    let got: LkOut = parse(&got.unwrap_or_else(|e| panic!("GETLK of a fresh owner at the quota: errno {e}")));
    assert_eq!(got.lk.typ, libc::F_RDLCK as u32, "GETLK sees the other owners' read locks");
    for owner in 1..=10 {
        c.flush(n, fh, owner).unwrap();
    }
    c.lk(Opcode::Setlk, n, fh, FLOOD + 1, lock(0, 0, libc::F_RDLCK), false)
        .unwrap_or_else(|e| panic!("SETLK after the owners were flushed: errno {e}"));
}

/// A daemon with two pool workers and a file whose write lock owner 1 holds: (daemon, client,
/// node, handle).
fn two_workers_and_a_held_lock() -> (Daemon, Client, u64, u64) {
    let d = Daemon::start(&["--thread-pool-size", "2"]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    c.lk(Opcode::Setlk, n, fh, 1, lock(0, 0, libc::F_WRLCK), false).unwrap();
    (d, c, n, fh)
}

/// Owner 1's unlock, which must get through whatever SETLKWs wait behind it.
fn unlock_behind_the_waiters(c: &Client, n: u64, fh: u64) {
    c.lk(Opcode::Setlk, n, fh, 1, lock(0, 0, libc::F_UNLCK), false)
        .unwrap_or_else(|e| panic!("the holder's unlock behind the waiters: errno {e}"));
}

/// Past the device's 64 lock-waiter threads a SETLKW used to run on a pool worker and wait
/// there, so enough of them on a held lock wedged the pool (the holder's unlock included). Now
/// the ones past the cap are answered ENOLCK at once.
#[test]
fn setlkw_flood_on_a_held_lock_never_blocks_the_workers() {
    let (mut d, c, n, fh) = two_workers_and_a_held_lock();
    // More waiters than the daemon has lock-waiter threads: the rest must not wait in a worker.
    let mut waiting = Vec::new();
    for owner in 2..100u64 {
        let l = LkIn { fh, owner, lk: lock(0, 0, libc::F_WRLCK), lk_flags: 0, padding: 0 };
        let hdr = c.header(Opcode::Setlkw as u32, n, size_of::<LkIn>());
        let descs = [Desc::Read(hdr.as_bytes()), Desc::Read(l.as_bytes()), Desc::Write(16)];
        waiting.push(c.vmm.submit_indirect(REQ_Q, &descs).unwrap());
    }
    still_serving(&mut d, &c);
    unlock_behind_the_waiters(&c, n, fh);
    // The ones past the 64 waiter threads were refused, not queued.
    for t in waiting.split_off(64) {
        assert_eq!(reply_errno(&c.vmm.wait(t).unwrap()), -libc::ENOLCK);
    }
}

/// Held as O_PATH fds, each inode the guest knows holds an fd until its last FORGET. A guest
/// that looks up names without forgetting them used to take every fd the daemon had; now such
/// inodes have a quota of their own, and past it LOOKUP answers EMFILE while open files,
/// per-request fds and the daemon's own keep working. (With file handles, the default, the
/// same flood holds no fds at all: tests/file_handles.rs.)
#[test]
fn lookup_flood_hits_the_inode_quota_and_the_daemon_keeps_its_fds() {
    let mut d = Daemon::start(&["--rlimit-nofile", "2048", "--inode-file-handles=never"]);
    for i in 0..FLOOD {
        std::fs::write(d.path(&format!("n{i}")), b"x").unwrap();
    }
    let c = d.client();
    let mut known = Vec::new();
    let refused = (0..FLOOD).find_map(|i| match c.lookup(1, &format!("n{i}")) {
        Ok(e) => {
            known.push(e.nodeid);
            None
        }
        Err(e) => Some(e),
    });
    assert_eq!(refused, Some(libc::EMFILE), "{FLOOD} LOOKUPs without FORGET all succeeded");
    assert!(known.len() > 100, "the inode quota refused early: {} lookups", known.len());
    assert_eq!(c.mkdir(1, "more", 0o755).unwrap_err(), libc::EMFILE, "MKDIR past the inode quota");
    assert!(!d.path("more").exists(), "a refused MKDIR made the directory anyway");
    // What needs no new inode still works: open files, a per-request fd (SYNCFS reopens).
    let fh = c.open(known[0], libc::O_RDONLY).unwrap_or_else(|e| panic!("OPEN at the inode quota: errno {e}"));
    assert_eq!(c.read(known[0], fh, 0, 1).unwrap(), b"x");
    c.syncfs(1).unwrap_or_else(|e| panic!("SYNCFS at the inode quota: errno {e}"));
    still_serving(&mut d, &c);
    // FORGET gives inodes back (it has no reply and goes by the other queue: retry a little).
    for &n in &known[..10] {
        c.forget(n, 1);
    }
    let mut again = false;
    for _ in 0..100 {
        if c.lookup(1, "n3999").is_ok() {
            again = true;
            break;
        }
        c.getattr(1).unwrap(); // a round trip, for the FORGETs to land
    }
    assert!(again, "LOOKUP still refused after FORGET");
}

/// The device sends SETLKW to a lock-waiter thread only when it sees the opcode in the
/// chain's first descriptor. A guest that splits the in-header (4 bytes, then the rest) used
/// to get its SETLKW run on a pool worker, where it waited for the lock: as many as there are
/// workers wedged the pool, and every queue stopped answering.
#[test]
fn setlkw_with_a_split_header_never_blocks_the_workers() {
    let (mut d, c, n, fh) = two_workers_and_a_held_lock();
    let mut waiting = Vec::new();
    for owner in 2..6u64 {
        // Read locks: once the holder unlocks, every waiter gets one.
        let l = LkIn { fh, owner, lk: lock(0, 0, libc::F_RDLCK), lk_flags: 0, padding: 0 };
        let hdr = c.header(Opcode::Setlkw as u32, n, size_of::<LkIn>());
        let (a, b) = hdr.as_bytes().split_at(4);
        let descs = [Desc::Read(a), Desc::Read(b), Desc::Read(l.as_bytes()), Desc::Write(16)];
        waiting.push(c.vmm.submit(REQ_Q, &descs).unwrap());
    }
    // The chains are popped in order: a waiter on a pool worker would hold up this GETATTR.
    still_serving(&mut d, &c);
    unlock_behind_the_waiters(&c, n, fh);
    for t in waiting {
        assert_eq!(
            reply_errno(&c.vmm.wait(t).unwrap()),
            0,
            "a split-header SETLKW is served (on a lock-waiter thread)"
        );
    }
}
