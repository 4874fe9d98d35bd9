//! opcount: sends exactly `--count N` of one FUSE operation to any vhost-user-fs socket
//! (daxfsd or virtiofsd) with the test frontend, one request in flight, so a tracer attached
//! to the daemon between "ready" and "done" sees only those requests. No guest in the loop.
//!
//! cargo run --release --example opcount -- --socket PATH --op OP --count N [--uid N] [--sync]
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::exit
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use common::fuse::Client;
use common::vmm::VmmOptions;

/// The operations, each one iteration of the timed loop; the number is the FUSE requests it
/// sends (FORGET goes on the hiprio queue and gets no reply).
const OPS: &[(&str, u32)] = &[
    ("lookup+forget", 2),
    ("getattr", 1),
    ("create+release", 2),
    ("unlink", 1),
    ("open+release", 2),
    ("read4k", 1),
    ("write4k", 1),
    ("mkdir+rmdir", 2),
    ("rename", 1),
    ("readdir", 1),
];

struct Args {
    socket: PathBuf,
    op: String,
    count: u64,
    /// The caller's uid and gid in every request (0: root, for whom the daemons switch nothing).
    uid: u32,
    sync: bool,
}

fn usage() -> ! {
    let ops: Vec<&str> = OPS.iter().map(|o| o.0).collect();
    eprintln!("usage: opcount --socket PATH --op {} --count N [--uid N] [--sync]", ops.join("|"));
    eprintln!("  --uid N: send requests as uid N, gid N (the shared directory must let it create)");
    eprintln!("  --sync: print \"ready\" after the setup and wait for a line on stdin before the");
    eprintln!("          timed loop; print \"done\" after it and wait for another line before exiting");
    std::process::exit(2);
}

fn args() -> Args {
    let mut a = Args { socket: PathBuf::new(), op: String::new(), count: 1000, uid: 0, sync: false };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--socket" => a.socket = v().into(),
            "--op" => a.op = v(),
            "--count" => a.count = v().parse().unwrap_or_else(|_| usage()),
            "--uid" => a.uid = v().parse().unwrap_or_else(|_| usage()),
            "--sync" => a.sync = true,
            _ => usage(),
        }
    }
    if a.socket.as_os_str().is_empty() || !OPS.iter().any(|o| o.0 == a.op) {
        usage();
    }
    a
}

/// What the setup leaves for the timed loop.
#[derive(Default)]
struct Fixture {
    /// A regular file of DATA_LEN bytes in the root, looked up once.
    file: u64,
    /// A handle on `file`, O_RDWR.
    fh: u64,
    /// A directory with DIR_ENTRIES files, and a handle on it.
    dir: u64,
    dir_fh: u64,
    /// For unlink: `count` files u<i> in the root, each created and released (still known).
    victims: u64,
}

const DATA_LEN: usize = 1 << 20;
const DIR_ENTRIES: usize = 8;

fn setup(c: &Client, op: &str, count: u64) -> Fixture {
    let mut f = Fixture::default();
    let data: Vec<u8> = (0..DATA_LEN).map(|o| common::fuse::pattern(7, o)).collect();
    f.file = c.make_file("file", &data);
    f.fh = c.open(f.file, libc::O_RDWR).unwrap();
    match op {
        "readdir" => {
            f.dir = c.mkdir(1, "dir", 0o755).unwrap().nodeid;
            for i in 0..DIR_ENTRIES {
                let (e, fh) = c.create(f.dir, &format!("entry{i}"), libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
                c.release(e.nodeid, fh).unwrap();
            }
            f.dir_fh = c.opendir(f.dir).unwrap();
        }
        "unlink" => {
            for i in 0..count {
                c.make_file(&format!("u{i}"), b"");
            }
            f.victims = count;
        }
        "rename" => {
            c.make_file("r0", b"x");
        }
        _ => {}
    }
    f
}

/// Iteration `i` of `op`.
fn run_one(c: &Client, f: &Fixture, op: &str, i: u64) {
    let rw = libc::O_RDWR | libc::O_CREAT;
    match op {
        "lookup+forget" => {
            let e = c.lookup(1, "file").unwrap();
            c.forget(e.nodeid, 1);
        }
        "getattr" => drop(c.getattr(f.file).unwrap()),
        "create+release" => {
            let (e, fh) = c.create(1, &format!("c{i}"), rw, 0o644).unwrap();
            c.release(e.nodeid, fh).unwrap();
        }
        "unlink" => {
            debug_assert!(i < f.victims);
            c.unlink(1, &format!("u{i}")).unwrap();
        }
        "open+release" => {
            let fh = c.open(f.file, libc::O_RDONLY).unwrap();
            c.release(f.file, fh).unwrap();
        }
        "read4k" => {
            let off = (i % (DATA_LEN as u64 / 4096)) * 4096;
            assert_eq!(c.read(f.file, f.fh, off, 4096).unwrap().len(), 4096);
        }
        "write4k" => {
            let off = (i % (DATA_LEN as u64 / 4096)) * 4096;
            assert_eq!(c.write(f.file, f.fh, off, &[0xa5; 4096]).unwrap(), 4096);
        }
        "mkdir+rmdir" => {
            let n = format!("d{i}");
            c.mkdir(1, &n, 0o755).unwrap();
            c.rmdir(1, &n).unwrap();
        }
        "rename" => c.rename(1, &format!("r{}", i % 2), 1, &format!("r{}", (i + 1) % 2)).unwrap(),
        "readdir" => {
            let ents = c.readdir(f.dir, f.dir_fh, 0, 4096, false).unwrap();
            assert_eq!(ents.len(), DIR_ENTRIES + 2, "entries of dir");
        }
        _ => usage(),
    }
}

/// With --sync: says `what` on stdout and waits for the driver's line on stdin.
fn handshake(sync: bool, what: &str) {
    if !sync {
        return;
    }
    println!("{what}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
}

fn main() {
    let a = args();
    common::keep_heap();
    let mut c = Client::connect(&a.socket, 1, VmmOptions::default());
    c.uid = a.uid;
    c.gid = a.uid;
    let f = setup(&c, &a.op, a.count);
    // Two untimed iterations (a rename there and back) warm both sides (allocations, first
    // touch of guest pages), except where an iteration consumes the fixture.
    if a.op != "unlink" && a.op != "create+release" && a.op != "mkdir+rmdir" {
        run_one(&c, &f, &a.op, 0);
        run_one(&c, &f, &a.op, 1);
    }
    handshake(a.sync, "ready");
    let start = Instant::now();
    for i in 0..a.count {
        run_one(&c, &f, &a.op, i);
    }
    let ns = start.elapsed().as_nanos();
    let requests = OPS.iter().find(|o| o.0 == a.op).map_or(1, |o| o.1);
    let per_op = if a.count == 0 { 0.0 } else { ns as f64 / a.count as f64 / 1000.0 };
    println!("op={} count={} fuse_requests_per_op={requests} total_ns={ns} us_per_op={per_op:.2}", a.op, a.count);
    handshake(a.sync, "done");
}
