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

const GUARDED: &[&str] = &["--dax-window", "64M", "--dax-copy-max", "0", "--dax-guard", "fanotify"];

/// A daemon whose guard must be fanotify (it fails to start otherwise), and a file of 2 MiB
/// mapped writable in the window's first slot.
fn mapped() -> (Daemon, Client, u64) {
    map_in(Daemon::start(GUARDED))
}

fn map_in(d: Daemon) -> (Daemon, Client, u64) {
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

/// The installed pieces whose slot-relative end passes the EOF page of a file `eof` long
/// (every slot here maps a file from offset 0).
fn past_eof(c: &Client, eof: u64) -> Vec<(u64, u64)> {
    let limit = eof.div_ceil(PAGE) * PAGE;
    c.vmm.window().pieces().iter().map(|p| (p.shm_offset, p.len)).filter(|&(o, l)| o % MB2 + l > limit).collect()
}

/// openat2(2) of `path` with `flags` (libc has no wrapper); closes what it opened.
fn openat2(path: &std::path::Path, flags: i32) -> i64 {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let how = OpenHow { flags: u64::from(flags.unsigned_abs()), mode: 0, resolve: 0 };
    // SAFETY: a valid path and open_how of the size passed; the fd returned is closed here.
    let fd =
        unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, p.as_ptr(), &raw const how, size_of::<OpenHow>()) };
    if fd >= 0 {
        // SAFETY: the fd was just opened by this function.
        unsafe { libc::close(fd as i32) };
    }
    fd
}

#[test]
fn a_host_truncate_cuts_every_inode_of_the_file() {
    // FORGET and a new LOOKUP give the same host file a second inode while the first one's
    // pieces stay installed (the guest's own reclaim removes them later).
    let (d, c, a) = mapped();
    c.forget(a, 1);
    let b = c.lookup(1, "f").unwrap().nodeid;
    assert_ne!(a, b);
    c.setupmapping(b, 0, MB2, RW, MB2).unwrap();
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2 / 2).unwrap();
    let bad = past_eof(&c, MB2 / 2);
    assert!(bad.is_empty(), "pieces past EOF {bad:?}\n{}", d.log());
    // The first inode going away leaves the second one marked: a second truncate is guarded.
    c.removemapping(&[(0, MB2)]).unwrap();
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2).unwrap();
    c.setupmapping(b, 0, MB2, RW, MB2).unwrap();
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(PAGE).unwrap();
    let bad = past_eof(&c, PAGE);
    assert!(bad.is_empty(), "pieces past EOF after the other inode left {bad:?}\n{}", d.log());
}

#[test]
fn a_read_only_openat2_loses_no_guest_write() {
    let (d, c, _) = mapped();
    let path = d.path("f");
    for i in 0..50u32 {
        assert!(openat2(&path, libc::O_RDONLY) >= 0);
        let tag = i.to_le_bytes();
        assert!(window_keeps(&c, u64::from(i) * PAGE, &tag), "openat2 {i} revoked the mapping:\n{}", d.log());
        assert_eq!(host_bytes(&d, u64::from(i) * PAGE, 4), tag);
    }
    assert!(!d.log().contains("host shrink of inode"), "{}", d.log());
    // openat2 with O_TRUNC is a shrink to 0.
    assert!(openat2(&path, libc::O_RDWR | libc::O_TRUNC) >= 0);
    assert!(c.vmm.window().pieces().is_empty(), "{:?}\n{}", c.vmm.window().pieces(), d.log());
}

#[test]
fn a_crowd_of_waiting_host_truncates_never_wedges_the_daemon() {
    // Hundreds of host threads wait in the guard at once (each truncate is forwarded), more
    // than the daemon is asked about at a time, while the guest maps a file whose EOF the
    // daemon pads (its own ftruncate of a marked file needs the watcher's answer at once).
    let (d, c, _) = mapped();
    let (g, gfh) = c.create(1, "g", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    c.write(g.nodeid, gfh, 0, &[b'g'; 5000]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Shrinks within the last page: forwarded, nothing to cut.
    let threads: Vec<_> = (0..400u64)
        .map(|t| {
            let (p, st, k) = (d.path("f"), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                let mut n = t;
                while !st.load(std::sync::atomic::Ordering::Relaxed) {
                    f.set_len(MB2 - 100 - n % 2 * 100).unwrap();
                    n += 1;
                    k.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let gn = g.nodeid;
    std::thread::spawn(move || {
        for i in 0..100 {
            let r = c.setupmapping(gn, 0, MB2, RW, 4 * MB2).and_then(|()| c.removemapping(&[(4 * MB2, MB2)]));
            let _ = tx.send((i, r));
        }
    });
    let mut done = 0;
    // A liveness bound, not a timing: a wedged daemon never answers.
    while let Ok((i, r)) = rx.recv_timeout(Duration::from_secs(30)) {
        assert!(r.is_ok(), "round {i}: {r:?}\n{}", d.log());
        done = i + 1;
    }
    let before = calls.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let after = calls.load(std::sync::atomic::Ordering::Relaxed);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(done, 100, "the guest's mappings stopped after {done} rounds\n{}", d.log());
    assert!(after > before, "host truncates stopped moving");
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(d.log().contains("host thread"), "no truncate was forwarded:\n{}", d.log());
}

#[test]
fn a_truncater_the_supervisor_cannot_see_is_still_guarded() {
    // The daemon in a pid namespace of its own (as in a container): this process, in the
    // parent namespace, has pid 0 in the watcher's events.
    let wrap = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let (d, c, _) = map_in(Daemon::start_wrapped(&wrap, GUARDED));
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2 / 2).unwrap();
    let bad = past_eof(&c, MB2 / 2);
    assert!(bad.is_empty(), "pieces past EOF {bad:?}\n{}", d.log());
    assert!(d.log().contains("(unseen)"), "{}", d.log());
}

/// Under the host guard, host processes use the files the guest maps, so the guest's locks
/// must be the host's: a DAX session negotiates lock forwarding, a guest lock on a mapped file
/// stops a host locker, and taking it (a new open of ours) leaves the mapping alone. (Under
/// leases the session keeps locks in the guest: tests/dax_window.rs.)
#[test]
fn guest_locks_on_a_mapped_file_are_the_hosts() {
    let (d, c, node) = mapped();
    assert_ne!(c.init.flags & (FUSE_POSIX_LOCKS as u32), 0, "lock forwarding not negotiated under the guard");
    let fh = c.open(node, libc::O_RDWR).unwrap();
    let lk = FileLock { start: 0, end: 99, typ: libc::F_WRLCK as u32, pid: 1 };
    c.lk(Opcode::Setlk, node, fh, 7, lk, false).unwrap();
    let host = std::fs::OpenOptions::new().read(true).write(true).open(d.path("f")).unwrap();
    assert_eq!(
        host_ofd_lock(&host, libc::F_WRLCK, 0, 100),
        Err(libc::EAGAIN),
        "the host does not see the guest's lock"
    );
    assert!(window_keeps(&c, 0, b"lock"), "taking the lock revoked the mapping:\n{}", d.log());
    // Unlocked by the guest: the host gets it, and the guest then sees the host's lock.
    c.lk(Opcode::Setlk, node, fh, 7, FileLock { typ: libc::F_UNLCK as u32, ..lk }, false).unwrap();
    assert_eq!(host_ofd_lock(&host, libc::F_WRLCK, 0, 100), Ok(()));
    assert_eq!(c.lk(Opcode::Setlk, node, fh, 7, lk, false).unwrap_err(), libc::EAGAIN);
    assert_eq!(c.vmm.window().pieces().len(), 1);
}

/// F_OFD_SETLK on `f` for [start, start + len).
fn host_ofd_lock(f: &std::fs::File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    let fl = libc::flock { l_type: typ as i16, l_whence: libc::SEEK_SET as i16, l_start: start, l_len: len, l_pid: 0 };
    // SAFETY: F_OFD_SETLK reads the flock struct passed; the fd is open for the call.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) }
}
