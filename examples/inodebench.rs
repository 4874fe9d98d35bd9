//! inodebench: the host-side cost of LOOKUP and GETATTR with inodes held as file handles
//! against O_PATH fds, calling the passthrough filesystem directly (no transport, no guest), so
//! the difference is the syscalls alone. Rounds alternate the two modes; the table gives each
//! operation's median time over the rounds.
//!
//! cargo run --release --example inodebench -- [--files N] [--rounds R]   (as root: handles
//! need CAP_DAC_READ_SEARCH)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::exit
)]

use std::ffi::CString;
use std::time::Instant;

use daxfsd::fs::passthrough::{Config, FileHandles, Passthrough};
use daxfsd::fs::{Context, Filesystem, NodeId, ROOT_ID};

fn args() -> (usize, usize) {
    let (mut files, mut rounds) = (10_000, 5);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: inodebench [--files N] [--rounds R]");
            std::process::exit(2)
        });
        match k.as_str() {
            "--files" => files = v,
            "--rounds" => rounds = v,
            _ => {
                eprintln!("usage: inodebench [--files N] [--rounds R]");
                std::process::exit(2);
            }
        }
    }
    (files, rounds)
}

/// Microseconds per call of `op` over `n` calls.
fn per_call(n: usize, mut op: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        op(i);
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// One round in `mode`: [new-inode lookup, held-inode lookup, getattr, forget] in µs per call.
fn round(dir: &std::path::Path, names: &[CString], mode: FileHandles) -> [f64; 4] {
    let fs = Passthrough::new(Config {
        root: dir.into(),
        inode_file_handles: mode,
        guest_fd_quota: 64,
        ..Config::default()
    })
    .unwrap();
    assert_eq!(fs.holds_file_handles(), mode != FileHandles::Never, "file handles unavailable (run as root)");
    let ctx = Context::default();
    let d = fs.lookup(&ctx, ROOT_ID, c"d").unwrap().nodeid;
    let mut nodes: Vec<NodeId> = Vec::with_capacity(names.len());
    let new = per_call(names.len(), |i| nodes.push(fs.lookup(&ctx, d, &names[i]).unwrap().nodeid));
    let held = per_call(names.len(), |i| assert_eq!(fs.lookup(&ctx, d, &names[i]).unwrap().nodeid, nodes[i]));
    let getattr = per_call(names.len(), |i| {
        fs.getattr(&ctx, nodes[i], None).unwrap();
    });
    let forget = per_call(names.len(), |i| fs.forget(nodes[i], 2));
    [new, held, getattr, forget]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let (files, rounds) = args();
    // Room for one O_PATH fd per inode in the fd mode (the fd quota comes out of the limit):
    // the soft limit up to the hard one.
    daxfsd::fs::sys::set_nofile_limit_soft(u64::MAX).expect("raise the soft RLIMIT_NOFILE");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let names: Vec<CString> = (0..files).map(|i| CString::new(format!("f{i:06}")).unwrap()).collect();
    for n in &names {
        std::fs::write(dir.path().join("d").join(n.to_str().unwrap()), b"x").unwrap();
    }
    let modes = [("file handles", FileHandles::Prefer), ("O_PATH fds", FileHandles::Never)];
    let mut got = vec![vec![Vec::new(); 4]; modes.len()];
    for _ in 0..rounds {
        for (m, (_, mode)) in modes.iter().enumerate() {
            for (k, v) in round(dir.path(), &names, *mode).into_iter().enumerate() {
                got[m][k].push(v);
            }
        }
    }
    println!("inodebench: {files} files in one directory, {rounds} interleaved rounds, µs per call (median, min-max)");
    println!("| operation | {} | {} |", modes[0].0, modes[1].0);
    println!("|---|---:|---:|");
    for (k, op) in ["LOOKUP, new inode", "LOOKUP, known inode", "GETATTR", "FORGET (last)"].iter().enumerate() {
        let cells: Vec<String> = got
            .iter_mut()
            .map(|g| {
                let v = &mut g[k];
                let m = median(v);
                format!("{m:.2} ({:.2}-{:.2})", v[0], v[v.len() - 1])
            })
            .collect();
        println!("| {op} | {} | {} |", cells[0], cells[1]);
    }
}
