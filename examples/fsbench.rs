//! fsbench: drives any vhost-user-fs socket (daxfsd or virtiofsd) with the test frontend and
//! prints ops/s per workload. No guest in the loop: this measures the daemon.
//!
//! cargo run --release --example fsbench -- --socket /path/vfs.sock [--queues N] [--seconds S]
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
    clippy::exit,
    clippy::too_many_lines
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fuse::{Client, Errno, name, parse};
use common::vmm::VmmOptions;
use daxfsd::fuse::abi::*;
use zerocopy::IntoBytes;

struct Args {
    socket: PathBuf,
    queues: usize,
    seconds: f64,
    label: String,
}

fn args() -> Args {
    let mut a = Args { socket: PathBuf::new(), queues: 1, seconds: 2.0, label: "daemon".into() };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--socket" => a.socket = v().into(),
            "--queues" => a.queues = v().parse().unwrap(),
            "--seconds" => a.seconds = v().parse().unwrap(),
            "--label" => a.label = v(),
            _ => {
                eprintln!("usage: fsbench --socket PATH [--queues N] [--seconds S] [--label NAME]");
                std::process::exit(2);
            }
        }
    }
    assert!(!a.socket.as_os_str().is_empty(), "--socket is required");
    a
}

/// One FUSE request on queue `q`; panics on a transport failure, returns the FUSE errno.
fn call(c: &Client, q: usize, op: Opcode, node: u64, args: &[&[u8]], out: usize) -> Result<Vec<u8>, Errno> {
    c.call_on(q, op as u32, node, args, out)
}

fn create(c: &Client, q: usize, n: &str) -> (u64, u64) {
    let ci =
        CreateIn { flags: (libc::O_RDWR | libc::O_CREAT) as u32, mode: libc::S_IFREG | 0o644, umask: 0, open_flags: 0 };
    let b = call(c, q, Opcode::Create, 1, &[ci.as_bytes(), &name(n)], 144).unwrap();
    (parse::<EntryOut>(&b).nodeid, parse::<OpenOut>(&b[128..]).fh)
}

fn write(c: &Client, q: usize, node: u64, fh: u64, off: u64, data: &[u8]) {
    let w = WriteIn { fh, offset: off, size: data.len() as u32, ..Default::default() };
    let b = call(c, q, Opcode::Write, node, &[w.as_bytes(), data], 8).unwrap();
    assert_eq!(parse::<WriteOut>(&b).size as usize, data.len());
}

fn read(c: &Client, q: usize, node: u64, fh: u64, off: u64, size: u32) -> usize {
    let r = ReadIn { fh, offset: off, size, ..Default::default() };
    call(c, q, Opcode::Read, node, &[r.as_bytes()], size as usize).unwrap().len()
}

/// FORGET one lookup, as the guest does when it evicts an inode (hiprio queue, no reply).
fn forget(c: &Client, node: u64) {
    let hdr = c.header(Opcode::Forget as u32, node, 8);
    let _ = c.raw(0, &[hdr.as_bytes(), ForgetIn { nlookup: 1 }.as_bytes()], 0);
}

/// Runs `op(queue, iteration)` on every queue in parallel for `secs`; returns (ops, elapsed).
fn timed(c: &Client, queues: usize, secs: f64, op: &(dyn Fn(usize, u64) + Sync)) -> (u64, Duration) {
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=queues)
            .map(|q| {
                s.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        for _ in 0..16 {
                            op(q, n);
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let _ = c;
    (total, start.elapsed())
}

const FILE_MB: u64 = 64;

fn main() {
    let a = args();
    common::keep_heap();
    let opts = VmmOptions { mem_size: 256 << 20, ..VmmOptions::default() };
    let c = Client::connect(&a.socket, a.queues, opts);
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();

    // Setup: one file per queue for lookups, one 64 MiB data file.
    for q in 1..=a.queues {
        let (n, fh) = create(&c, q, &format!("meta{q}"));
        call(&c, q, Opcode::Release, n, &[ReleaseIn { fh, ..Default::default() }.as_bytes()], 0).unwrap();
    }
    let (data_node, data_fh) = create(&c, 1, "data");
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..FILE_MB {
        write(&c, 1, data_node, data_fh, i << 20, &chunk);
    }

    let (n, t) = timed(&c, a.queues, a.seconds, &|q, _| {
        let e: EntryOut = parse(&call(&c, q, Opcode::Lookup, 1, &[&name(&format!("meta{q}"))], 128).unwrap());
        call(&c, q, Opcode::Getattr, e.nodeid, &[GetattrIn::default().as_bytes()], 104).unwrap();
        forget(&c, e.nodeid);
    });
    rows.push(("lookup+getattr".into(), n as f64 / t.as_secs_f64(), None));

    // The same name, its inode held across the loop: LOOKUP finds it in the table.
    let held: Vec<u64> = (1..=a.queues)
        .map(|q| parse::<EntryOut>(&call(&c, q, Opcode::Lookup, 1, &[&name(&format!("meta{q}"))], 128).unwrap()).nodeid)
        .collect();
    let (n, t) = timed(&c, a.queues, a.seconds, &|q, _| {
        let e: EntryOut = parse(&call(&c, q, Opcode::Lookup, 1, &[&name(&format!("meta{q}"))], 128).unwrap());
        forget(&c, e.nodeid);
    });
    rows.push(("lookup, inode held".into(), n as f64 / t.as_secs_f64(), None));

    let (n, t) = timed(&c, a.queues, a.seconds, &|q, _| {
        call(&c, q, Opcode::Getattr, held[q - 1], &[GetattrIn::default().as_bytes()], 104).unwrap();
    });
    rows.push(("getattr, inode held".into(), n as f64 / t.as_secs_f64(), None));
    for node in held {
        forget(&c, node);
    }

    let (n, t) = timed(&c, a.queues, a.seconds, &|q, i| {
        let nm = format!("tmp{q}-{i}");
        let (node, fh) = create(&c, q, &nm);
        call(&c, q, Opcode::Release, node, &[ReleaseIn { fh, ..Default::default() }.as_bytes()], 0).unwrap();
        call(&c, q, Opcode::Unlink, 1, &[&name(&nm)], 0).unwrap();
        forget(&c, node);
    });
    rows.push(("create+unlink".into(), n as f64 / t.as_secs_f64(), None));

    let (n, t) = timed(&c, a.queues, a.seconds, &|_q, i| {
        let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
        let off = (x % (FILE_MB * 256)) * 4096;
        assert_eq!(read(&c, _q, data_node, data_fh, off, 4096), 4096);
    });
    let ops = n as f64 / t.as_secs_f64();
    rows.push(("4 KiB random read".into(), ops, Some(ops * 4096.0 / 1e6)));

    let (n, t) = timed(&c, a.queues, a.seconds, &|q, i| {
        assert_eq!(read(&c, q, data_node, data_fh, (i % FILE_MB) << 20, 1 << 20), 1 << 20);
    });
    let ops = n as f64 / t.as_secs_f64();
    rows.push(("1 MiB sequential read".into(), ops, Some(ops * 1048576.0 / 1e6)));

    let (n, t) = timed(&c, a.queues, a.seconds, &|q, i| {
        write(&c, q, data_node, data_fh, (i % FILE_MB) << 20, &chunk);
    });
    let ops = n as f64 / t.as_secs_f64();
    rows.push(("1 MiB sequential write".into(), ops, Some(ops * 1048576.0 / 1e6)));

    call(&c, 1, Opcode::Release, data_node, &[ReleaseIn { fh: data_fh, ..Default::default() }.as_bytes()], 0).unwrap();
    call(&c, 1, Opcode::Unlink, 1, &[&name("data")], 0).unwrap();

    println!(
        "fsbench: {} over {}, {} request queue(s), {:.1} s per workload",
        a.label,
        a.socket.display(),
        a.queues,
        a.seconds
    );
    println!("| workload | {} ops/s | MB/s |", a.label);
    println!("|---|---:|---:|");
    for (w, ops, mbs) in rows {
        println!("| {w} | {ops:.0} | {} |", mbs.map_or("-".to_string(), |m| format!("{m:.0}")));
    }
}
