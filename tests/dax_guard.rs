//! I5 with the host guard (fanotify): host readers and writers of a mapped file leave the
//! guest's mappings alone; a host truncate unmaps only what passes EOF, and the pages come back
//! when the file grows again. This test process is "another host process" to the daemon.
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::multiple_unsafe_ops_per_block,
    clippy::too_many_lines,
    clippy::panic
)]

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
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.path("f"))
        .unwrap()
        .set_len(half + 100)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
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
    drop(std::fs::File::create(d.path("f")).unwrap_or_else(|e| panic!("{e}\n{}", d.log())));
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
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.path("f"))
        .unwrap()
        .set_len(MB2 / 2)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
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

/// openat2 keeps its flags in the caller's memory, which another thread may rewrite after the
/// kernel read them: every openat2 is a shrink to 0 (cut before it returns), and the mapping
/// comes back to EOF once it is over and the file is unchanged.
#[test]
fn every_openat2_cuts_first_and_the_mapping_comes_back() {
    let (d, c, _) = mapped();
    let path = d.path("f");
    assert!(openat2(&path, libc::O_RDONLY) >= 0);
    assert!(d.log().contains("host shrink of inode"), "the openat2 was not taken for a shrink:\n{}", d.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.vmm.window().pieces().iter().map(|p| p.shm_offset + p.len).max().unwrap_or(0) < MB2 {
        assert!(Instant::now() < deadline, "not re-installed: {:?}\n{}", c.vmm.window().pieces(), d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(window_keeps(&c, PAGE, b"back"));
    assert_eq!(host_bytes(&d, PAGE, 4), b"back");
    // With O_TRUNC: nothing is left installed.
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
fn a_host_process_the_supervisor_cannot_see_is_denied() {
    // The daemon in a pid namespace of its own (as in a container): this process, in the
    // parent namespace, has pid 0 in the watcher's events. Nothing could tell when such a
    // process's truncate has run (a review let one wait on the inode lock past a timer, then
    // truncate under re-installed pieces), so its accesses to mapped files are refused.
    let wrap = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let (d, c, _) = map_in(Daemon::start_wrapped(&wrap, GUARDED));
    let open = std::fs::OpenOptions::new().write(true).open(d.path("f"));
    assert_eq!(open.map(drop).map_err(|e| e.raw_os_error()), Err(Some(libc::EPERM)), "{}", d.log());
    assert_eq!(std::fs::metadata(d.path("f")).unwrap().len(), MB2);
    assert!(past_eof(&c, MB2).is_empty());
    assert!(window_keeps(&c, PAGE, b"kept"), "{}", d.log());
    assert!(d.log().contains("(unseen"), "{}", d.log());
}

// Attacks an adversarial review found; each test failed on d036256 (its comment tells the
// attack as it worked then).

/// The calling thread in SCHED_IDLE: it spins without starving the daemon (a spinning thread
/// still reads "running" in /proc/TID/syscall).
fn idle_priority() {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const p) };
}

/// A process other than this one that maps all of `path` (a host reader with an mmap).
fn mapper_process(path: &std::path::Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import mmap,sys,time\nf=open(sys.argv[1],'r+b')\nm=mmap.mmap(f.fileno(),0)\nprint('mapped',flush=True)\ntime.sleep(120)",
        ])
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "mapped");
    child
}

/// Runs `f` on a thread; its result if it finishes within `t`.
fn within<T: Send + 'static>(t: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(t).ok()
}

#[test]
fn a_burst_of_finished_host_truncates_never_wedges_the_supervisor() {
    // The watcher bounds the Shrink messages in flight (64) but not the Done messages: each
    // allowed shrink whose thread leaves its syscall is one blocking 40-byte write to the
    // daemon's guard thread. While that thread is inside host_shrink (here: waiting up to 2 s
    // for another process to drop its mapping), nobody reads the channel; ~278 messages fill
    // it, the supervisor blocks in write(2), and the guard thread's next maps query (or the
    // daemon's own ftruncate of a marked file) is never answered: a permanent deadlock.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let (d, _c, _) = mapped();
    let path = d.path("f");
    let mut other = mapper_process(&path);
    let (release, stop, ready) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    const N: usize = 400;
    let spinners: Vec<_> = (0..N)
        .map(|_| {
            let (p, rel, st, rd) = (path.clone(), release.clone(), stop.clone(), ready.clone());
            std::thread::spawn(move || {
                idle_priority();
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                // Within the last page: forwarded, allowed at once (nothing to cut).
                f.set_len(MB2 - 100).unwrap();
                rd.fetch_add(1, Relaxed);
                // Still "running" to the watcher: the shrink stays allowed-not-over.
                while !rel.load(Relaxed) {
                    std::hint::spin_loop();
                }
                while !st.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Relaxed) < N {
        assert!(Instant::now() < deadline, "spinners not all allowed: {}\n{}", ready.load(Relaxed), d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // A shrink that crosses the mapping: the guard thread cuts, then waits for `other`.
    let p = path.clone();
    let (ttx, trx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::OpenOptions::new().write(true).open(&p).and_then(|f| f.set_len(MB2 / 2));
        let _ = ttx.send(r.map_err(|e| e.to_string()));
    });
    std::thread::sleep(Duration::from_millis(300));
    // Every spinner leaves its syscall at once: ~N Done messages.
    release.store(true, Relaxed);
    // Far past the guard's 2 s bound: a live daemon has answered by now (allowed or denied).
    let truncate = trx.recv_timeout(Duration::from_secs(10));
    let sup = d.pid();
    let sup_syscall = std::fs::read_to_string(format!("/proc/{sup}/syscall")).unwrap_or_default();
    let sup_wchan = std::fs::read_to_string(format!("/proc/{sup}/wchan")).unwrap_or_default();
    // Any host open of the mapped file now waits for an answer that never comes.
    let p = path.clone();
    let reader = within(Duration::from_secs(5), move || std::fs::File::open(&p).is_ok());
    stop.store(true, Relaxed);
    let _ = other.kill();
    let _ = other.wait();
    let log = d.log();
    drop(d); // SIGKILL: the group closes and lets every waiting thread go
    spinners.into_iter().for_each(|t| t.join().unwrap());
    assert!(
        truncate.is_ok() && reader.is_some(),
        "wedged: truncate {truncate:?}, host reader {reader:?}, supervisor in syscall {sup_syscall:?} wchan {sup_wchan:?}\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

/// Pins thread/process `tid` (0: the calling thread) to CPU `cpu`.
fn pin(tid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

#[test]
fn a_preempted_host_reader_is_never_taken_for_a_shrink() {
    // A pre-content event is queued while the reader's thread is still runnable; the watcher
    // then reads "running" in /proc/TID/syscall. blocked_syscall_of gives up after 100 x 100 us
    // and classify() takes "running" for "cannot tell": a shrink to 0, every piece cut. A
    // reader that does not get the CPU back within 10 ms (a nice/idle-class backup on a busy
    // host) is enough. Here: a SCHED_IDLE reader sharing CPU 0 with a busy thread (and
    // twenty other readers of the file, whose answers wake it while it waits).
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (d, c, _) = mapped();
    let stop = Arc::new(AtomicBool::new(false));
    // Other host readers (a parallel grep): each answer wakes every waiter of the group.
    let crowd: Vec<_> = (0..20)
        .map(|_| {
            let (p, st) = (d.path("f"), stop.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(&p).unwrap();
                let mut b = [0u8; 16];
                while !st.load(Relaxed) {
                    f.read_at(&mut b, 4096).unwrap();
                }
            })
        })
        .collect();
    let hog = {
        let st = stop.clone();
        std::thread::spawn(move || {
            pin(0, 0);
            while !st.load(Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let p = d.path("f");
    let reader = std::thread::spawn(move || {
        pin(0, 0);
        idle_priority();
        let f = std::fs::File::open(&p).unwrap();
        let mut b = [0u8; 16];
        let t0 = Instant::now();
        let mut n = 0;
        while t0.elapsed() < Duration::from_secs(20) {
            f.read_at(&mut b, 0).unwrap();
            n += 1;
        }
        n
    });
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut cut = false;
    while Instant::now() < deadline && !reader.is_finished() {
        if d.log().contains("to 0: pieces past 0") {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Relaxed);
    let n = reader.join().unwrap();
    hog.join().unwrap();
    crowd.into_iter().for_each(|t| t.join().unwrap());
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("to 0")).take(5).collect();
    drop(c);
    assert!(!cut, "{n} reads: a host reader cut the guest's mapping:\n{}", lines.join("\n"));
}

#[test]
fn openat2_flags_rewritten_by_another_thread_leave_no_page_past_eof() {
    // The watcher reads openat2's flags from the caller's memory after the kernel copied them
    // (syscall entry). Another thread of the caller rewrites them meanwhile: the kernel
    // truncates (O_TRUNC in its copy), the watcher sees no O_TRUNC and allows at once, and the
    // pieces past the new EOF stay installed: the guest's next touch of them is a SIGBUS in QEMU.
    use std::os::unix::ffi::OsStrExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    #[repr(C)]
    struct OpenHow {
        flags: AtomicU64,
        mode: u64,
        resolve: u64,
    }
    let (d, c, node) = mapped();
    let path = d.path("f");
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let how = Arc::new(OpenHow { flags: AtomicU64::new(0), mode: 0, resolve: 0 });
    let stop = Arc::new(AtomicBool::new(false));
    let trunc = (libc::O_WRONLY | libc::O_TRUNC) as u64;
    let flipper = {
        let (h, st) = (how.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n: u64 = 0;
            while !st.load(Relaxed) {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                h.flags.store(if n >> 63 == 0 { trunc } else { libc::O_WRONLY as u64 }, Relaxed);
                for _ in 0..(n >> 50) % 4000 {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let mut found = None;
    let mut guarded = 0;
    for attempt in 0..300 {
        // Back to 2 MiB of data, mapped.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(MB2).unwrap();
        c.setupmapping(node, 0, MB2, RW, 0).unwrap();
        // SAFETY: a valid path and open_how of the size passed; the fd is closed at once.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, cpath.as_ptr(), Arc::as_ptr(&how), size_of::<OpenHow>())
        };
        assert!(fd >= 0, "openat2: {}", std::io::Error::last_os_error());
        // SAFETY: just opened.
        unsafe { libc::close(fd as i32) };
        let size = std::fs::metadata(&path).unwrap().len();
        if size == 0 {
            let bad = past_eof(&c, 0);
            if bad.is_empty() {
                guarded += 1;
            } else {
                found = Some((attempt, bad));
                break;
            }
        }
    }
    stop.store(true, Relaxed);
    flipper.join().unwrap();
    // Do not touch the window: a page past EOF would SIGBUS this process.
    let (attempt, bad) = found.map_or((None, Vec::new()), |(a, b)| (Some(a), b));
    assert!(
        attempt.is_none(),
        "attempt {attempt:?} ({guarded} O_TRUNC opens guarded before it): the file is 0 bytes long and pieces {bad:?} are still installed"
    );
}

/// The 32-bit (ia32) openat(2), as any i386 program's fopen(path, "w") makes it (glibc's
/// open() is openat); a 64-bit process may issue it with `int 0x80`. The kernel runs the
/// ia32 table, and /proc/TID/syscall shows the ia32 number: 295.
#[cfg(target_arch = "x86_64")]
fn ia32_openat(path: &std::path::Path, flags: u32) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a fresh anonymous page below 4 GiB (ia32 pointers are 32 bits), unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    // SAFETY: the page is ours and larger than the path plus its NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), page.cast::<u8>(), bytes.len());
        *page.cast::<u8>().add(bytes.len()) = 0;
    }
    let ptr = u32::try_from(page as usize).unwrap();
    let dirfd = libc::AT_FDCWD as u32;
    let mut ret: u32 = 295; // __NR_openat in arch/x86/entry/syscalls/syscall_32.tbl
    // SAFETY: int 0x80 with the ia32 openat arguments in ebx/ecx/edx/esi; rbx is restored.
    unsafe {
        std::arch::asm!(
            "xchg {d:e}, ebx",
            "int 0x80",
            "xchg {d:e}, ebx",
            d = inout(reg) dirfd => _,
            inout("eax") ret,
            in("ecx") ptr,
            in("edx") flags,
            in("esi") 0o644u32,
        );
        libc::munmap(page, 4096);
    }
    ret as i32
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_32_bit_o_trunc_open_cuts_first() {
    // ia32 openat is 295, which is x86_64's preadv: classify() finds it in nr::DATA and allows
    // the open at once. The O_TRUNC then empties the file under the guest's installed pieces.
    let (d, c, _) = mapped();
    let fd = ia32_openat(&d.path("f"), (libc::O_WRONLY | libc::O_TRUNC) as u32);
    assert!(fd >= 0, "ia32 openat: {fd}");
    // SAFETY: just opened.
    unsafe { libc::close(fd) };
    let size = std::fs::metadata(d.path("f")).unwrap().len();
    assert_eq!(size, 0);
    // Do not touch the window: a page past EOF would SIGBUS this process.
    let bad = past_eof(&c, 0);
    assert!(bad.is_empty(), "a 0-byte file with pieces {bad:?} still installed\n{}", d.log());
}

#[test]
fn a_truncater_that_keeps_running_never_gets_the_guest_a_short_mapping() {
    // on_tick() takes "running" for "still in the syscall", so a thread that computes after its
    // ftruncate returned keeps its shrink allowed-not-over: the daemon's limit stays at the
    // truncated size, nothing of the file past it is installed again (not the host's regrowth,
    // not a new SETUPMAPPING), and the guest's writes there are dropped, for as long as that
    // thread stays runnable.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (d, c, node) = mapped();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let spinner = {
        let (p, st) = (d.path("f"), stop.clone());
        std::thread::spawn(move || {
            idle_priority();
            std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(PAGE).unwrap();
            tx.send(()).unwrap();
            while !st.load(Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    rx.recv().unwrap();
    // The host grows the file back (another process: a log rotation's next writer).
    std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The guest maps it again, as it would after its own GETATTR.
    let setup = c.setupmapping(node, 0, MB2, RW, 0);
    let end = c.vmm.window().pieces().iter().map(|p| p.shm_offset + p.len).max().unwrap_or(0);
    let kept = window_keeps(&c, MB2 - PAGE, b"lost");
    stop.store(true, Relaxed);
    spinner.join().unwrap();
    // Nothing tells a truncater still in its syscall from one that computes on (see
    // Watcher::on_tick): the range stays held back while it runs. What must never happen is a
    // SETUPMAPPING that answers Ok and installs less than asked.
    assert!(
        setup == Err(libc::EIO) || (end == MB2 && kept),
        "3 s after the host truncate returned and the file grew back: setup {setup:?}, pieces end at {end} of {MB2}, guest write kept: {kept}"
    );
}

/// read(2) through the ia32 table (number 3) with `int 0x80`; what a 32-bit `cat` does.
#[cfg(target_arch = "x86_64")]
fn ia32_read(fd: i32, len: u32) -> i32 {
    // SAFETY: a fresh anonymous page below 4 GiB, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    let ptr = u32::try_from(page as usize).unwrap();
    let mut ret: u32 = 3; // __NR_read, syscall_32.tbl
    // SAFETY: int 0x80 read into our page (len <= 4096); rbx is restored.
    unsafe {
        std::arch::asm!(
            "xchg {d:e}, ebx",
            "int 0x80",
            "xchg {d:e}, ebx",
            d = inout(reg) fd as u32 => _,
            inout("eax") ret,
            in("ecx") ptr,
            in("edx") len.min(4096),
        );
        libc::munmap(page, 4096);
    }
    ret as i32
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_32_bit_reader_loses_no_guest_write() {
    // ia32 read is 3 (x86_64 close): not in nr::DATA, so classify() says "cannot tell", a
    // shrink to 0: every piece of the file is cut. A reader with read permission only, which
    // then stays runnable, holds the window cut (see the test above): guest writes dropped.
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (d, c, _) = mapped();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let (p, st) = (d.path("f"), stop.clone());
        std::thread::spawn(move || {
            idle_priority();
            let f = std::fs::File::open(&p).unwrap(); // read-only
            let n = ia32_read(f.as_raw_fd(), 16);
            tx.send(n).unwrap();
            while !st.load(Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let n = rx.recv().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let pieces = c.vmm.window().pieces().len();
    let kept = window_keeps(&c, PAGE, b"gone");
    stop.store(true, Relaxed);
    reader.join().unwrap();
    assert!(
        pieces == 1 && kept,
        "ia32 read returned {n}; 2 s later: {pieces} pieces installed, guest write kept: {kept}\n{}",
        d.log().lines().filter(|l| l.contains("shrink")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_read_only_host_user_never_wedges_the_supervisor() {
    // The Done-message deadlock above, by a user who can only read the guest's files: ia32
    // reads are shrinks to 0 to the watcher, so they become allowed-not-over shrinks too.
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let (d, c, _) = mapped();
    // A second mapped file, which another process maps too.
    let (g, gfh) = c.create(1, "g", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    for off in (0..MB2).step_by(1 << 17) {
        c.write(g.nodeid, gfh, off, &[b'g'; 1 << 17]).unwrap();
    }
    c.setupmapping(g.nodeid, 0, MB2, RW, MB2).unwrap();
    let mut other = mapper_process(&d.path("g"));
    let (release, stop, ready) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    const N: usize = 400;
    let spinners: Vec<_> = (0..N)
        .map(|_| {
            let (p, rel, st, rd) = (d.path("f"), release.clone(), stop.clone(), ready.clone());
            std::thread::spawn(move || {
                idle_priority();
                let f = std::fs::File::open(&p).unwrap();
                let _ = ia32_read(f.as_raw_fd(), 16);
                rd.fetch_add(1, Relaxed);
                while !rel.load(Relaxed) {
                    std::hint::spin_loop();
                }
                while !st.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Relaxed) < N {
        assert!(Instant::now() < deadline, "spinners not all answered: {}\n{}", ready.load(Relaxed), d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // One more read, of g: the guard thread cuts g and waits (up to 2 s) for `other`.
    let p = d.path("g");
    let (ttx, trx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&p).unwrap();
        let _ = ttx.send(ia32_read(f.as_raw_fd(), 16));
    });
    std::thread::sleep(Duration::from_millis(300));
    release.store(true, Relaxed);
    let read = trx.recv_timeout(Duration::from_secs(10));
    let sup = d.pid();
    let sup_wchan = std::fs::read_to_string(format!("/proc/{sup}/wchan")).unwrap_or_default();
    let p = d.path("f");
    let reader = within(Duration::from_secs(5), move || std::fs::File::open(&p).is_ok());
    stop.store(true, Relaxed);
    let _ = other.kill();
    let _ = other.wait();
    drop(d);
    spinners.into_iter().for_each(|t| t.join().unwrap());
    assert!(
        read.is_ok() && reader.is_some(),
        "wedged: read {read:?}, host open {reader:?}, supervisor wchan {sup_wchan:?}"
    );
}

#[test]
fn a_shrink_seen_running_at_its_answer_is_never_over_early() {
    // on_ready() records the thread's syscall line just before the answer; a thread woken by
    // another event's answer (one wait queue for the whole group) and not yet back on a CPU
    // reads "running" for all 100 tries. Once allowed, the truncate waits for the inode lock
    // (a writer holds it): its line is now "77 ...", which is not "running" and not the line
    // recorded, so on_tick() calls the shrink over while it has not happened yet. The daemon
    // re-installs to the old EOF; then the truncate runs under the installed pieces.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (d, c, node) = mapped();
    let stop = Arc::new(AtomicBool::new(false));
    let mut helpers = Vec::new();
    for _ in 0..20 {
        let (p, st) = (d.path("f"), stop.clone());
        helpers.push(std::thread::spawn(move || {
            let f = std::fs::File::open(&p).unwrap();
            let mut b = [0u8; 16];
            while !st.load(Relaxed) {
                let _ = f.read_at(&mut b, 4096);
            }
        }));
    }
    {
        let st = stop.clone();
        helpers.push(std::thread::spawn(move || {
            pin(0, 0);
            while !st.load(Relaxed) {
                std::hint::spin_loop();
            }
        }));
    }
    {
        // Holds the inode lock often: 64 KiB writes at 0 (they never shrink the file).
        let (p, st) = (d.path("f"), stop.clone());
        helpers.push(std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            let b = vec![b'w'; 64 << 10];
            while !st.load(Relaxed) {
                let _ = f.write_all_at(&b, 0);
            }
        }));
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (gtx, grx) = std::sync::mpsc::channel::<()>();
    let truncater = {
        let p = d.path("f");
        std::thread::spawn(move || {
            pin(0, 0);
            idle_priority();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            while grx.recv().is_ok() {
                let _ = f.set_len(PAGE);
                let _ = tx.send(());
            }
        })
    };
    let mut found = None;
    let t0 = Instant::now();
    let mut attempts = 0;
    while t0.elapsed() < Duration::from_secs(40) && found.is_none() {
        attempts += 1;
        std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2).unwrap();
        let _ = c.setupmapping(node, 0, MB2, RW, 0);
        gtx.send(()).unwrap();
        rx.recv().unwrap();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(5));
            let size = std::fs::metadata(d.path("f")).unwrap().len();
            let bad = past_eof(&c, size);
            if !bad.is_empty() {
                found = Some((attempts, size, bad));
                break;
            }
        }
    }
    drop(gtx);
    stop.store(true, Relaxed);
    truncater.join().unwrap();
    helpers.into_iter().for_each(|t| t.join().unwrap());
    assert!(found.is_none(), "after {attempts} truncates: (attempt, EOF, pieces past it) {found:?}");
}

#[test]
fn a_reader_named_iou_loses_no_guest_write() {
    // classify() treats every thread whose comm starts with "iou-" as an io_uring worker
    // ("cannot tell"), and any process may name its threads so: a plain pread by a read-only
    // host user then cuts every piece of the file (guest writes dropped until re-install).
    let (d, c, _) = mapped();
    let p = d.path("f");
    std::thread::spawn(move || {
        // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"iou-cat".as_ptr()) };
        let mut b = [0u8; 16];
        std::fs::File::open(&p).unwrap().read_at(&mut b, 0).unwrap();
    })
    .join()
    .unwrap();
    let log = d.log();
    assert!(
        !log.contains("to 0: pieces past 0"),
        "one read cut the mapping ({} pieces now):\n{}",
        c.vmm.window().pieces().len(),
        log.lines().filter(|l| l.contains("shrink")).collect::<Vec<_>>().join("\n")
    );
}

// Attacks a second review found (on 7b73541).

/// A userfaultfd over `len` bytes of fresh anonymous memory: the first touch of the page
/// blocks until `release` is sent, then reads zeros. Returns the memory and the sender.
fn slow_page(len: usize) -> (usize, std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>) {
    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct Reg {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct Zero {
        start: u64,
        len: u64,
        mode: u64,
        zeropage: i64,
    }
    // SAFETY: plain syscalls on fresh objects; the structs match linux/userfaultfd.h.
    unsafe {
        let uffd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
        assert!(uffd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        let mut api = Api { api: 0xAA, features: 0, ioctls: 0 };
        assert_eq!(libc::ioctl(uffd, 0xc018_aa3f, &raw mut api), 0);
        let mem = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(mem, libc::MAP_FAILED);
        let mut reg = Reg { start: mem as u64, len: len as u64, mode: 1, ioctls: 0 };
        assert_eq!(libc::ioctl(uffd, 0xc020_aa00, &raw mut reg), 0, "{}", std::io::Error::last_os_error());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ftx, frx) = std::sync::mpsc::channel::<()>();
        let base = mem as u64;
        std::thread::spawn(move || {
            let mut msg = [0u8; 32];
            let n = libc::read(uffd, msg.as_mut_ptr().cast(), 32);
            assert_eq!(n, 32);
            let _ = ftx.send(());
            let _ = rx.recv();
            let mut z = Zero { start: base, len: len as u64, mode: 0, zeropage: 0 };
            libc::ioctl(uffd, 0xc020_aa04, &raw mut z);
        });
        (mem as usize, tx, frx)
    }
}

#[test]
fn a_host_writer_holding_the_inode_lock_never_parks_a_read_only_setupmapping() {
    // watch() runs SEEK_DATA after a file's first mark, under the inode's mmap semaphore held
    // exclusively (setup_locked). SEEK_DATA takes the inode lock shared, so a host writer that
    // holds the inode lock (its copy from a slowly faulting buffer: userfaultfd here, a FUSE
    // mmap for an unprivileged user) parks the SETUPMAPPING for as long as it likes, and every
    // guest request that needs the semaphore (here: a GETATTR) behind it, even a read-only
    // mapping that never writes the file.
    use std::os::fd::AsRawFd;
    let d = Daemon::start(GUARDED);
    let c = Client::connect_dax(&d.socket, 1, false);
    let (g, gfh) = c.create(1, "g", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    c.write(g.nodeid, gfh, 0, &[b'g'; 8192]).unwrap();
    let (buf, release, faulted) = slow_page(4096);
    let p = d.path("g");
    let writer = std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        // SAFETY: `buf` is a live 4 KiB mapping; the write reads it (and blocks in its fault).
        unsafe { libc::pwrite(f.as_raw_fd(), buf as *const libc::c_void, 4096, 0) }
    });
    faulted.recv_timeout(Duration::from_secs(10)).expect("the writer never faulted");
    let c = std::sync::Arc::new(c);
    let (c1, gn) = (c.clone(), g.nodeid);
    let setup = within(Duration::from_secs(3), move || c1.setupmapping(gn, 0, MB2, FUSE_SETUPMAPPING_FLAG_READ, 0));
    let c2 = c.clone();
    let getattr = within(Duration::from_secs(2), move || c2.getattr(gn).map(|a| a.attr.size));
    // What the daemon's threads are in (8: lseek; 202: futex).
    let pid = d.serving_pid();
    let stuck: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("syscall")).ok())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n == "8")
        .collect();
    release.send(()).unwrap();
    writer.join().unwrap();
    assert!(
        setup.is_some() && getattr.is_some(),
        "while a host writer holds the inode lock: SETUPMAPPING (read) {setup:?}, GETATTR {getattr:?} (None: still waiting); daemon threads in lseek: {}",
        stuck.len()
    );
}

#[test]
fn a_starved_truncater_is_not_over_when_another_writer_shows_its_size() {
    // RUNNING_HOLD: a shrink whose thread reads "running" ends 1 s after its answer once the
    // file has been seen at the new size. "Seen at the new size" is not "this truncate has
    // run": another writer of the file can show that size for a moment (truncate to it, grow
    // back). The truncater itself, SCHED_IDLE behind busy threads on its CPU, is runnable
    // but has not run its truncate 1 s after its answer: the daemon re-installs to the grown
    // EOF, then the truncate runs under the pieces.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (d, c, node) = mapped();
    let stop = Arc::new(AtomicBool::new(false));
    let mut found = None;
    let hogs: Vec<_> = (0..8)
        .map(|_| {
            let st = stop.clone();
            std::thread::spawn(move || {
                pin(0, 0);
                while !st.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for attempt in 0..8 {
        std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap().set_len(MB2).unwrap();
        let _ = c.setupmapping(node, 0, MB2, RW, 0);
        std::thread::sleep(Duration::from_millis(100));
        let before = d.log().matches("to 1048576: pieces").count();
        let p = d.path("f");
        let t = std::thread::spawn(move || {
            pin(0, 0);
            idle_priority();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(MB2 / 2).unwrap();
        });
        // The truncater's shrink is prepared and allowed; now show its size and grow back.
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.log().matches("to 1048576: pieces").count() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let other = std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap();
        other.set_len(MB2 / 2).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        other.set_len(MB2).unwrap();
        // Watch until the truncater is done.
        let mut sample = None;
        while !t.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().unwrap();
        for _ in 0..40 {
            let size = std::fs::metadata(d.path("f")).unwrap().len();
            let bad = past_eof(&c, size);
            if !bad.is_empty() {
                sample = Some((attempt, size, bad));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if sample.is_some() {
            found = sample;
            break;
        }
    }
    stop.store(true, Relaxed);
    hogs.into_iter().for_each(|h| h.join().unwrap());
    assert!(
        found.is_none(),
        "(attempt, EOF, pieces past it): {found:?}\n{}",
        d.log().lines().filter(|l| l.contains("shrink") || l.contains("install")).collect::<Vec<_>>().join("\n")
    );
}
