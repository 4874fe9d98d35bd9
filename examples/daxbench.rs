//! daxbench: DAX numbers for a daxfsd socket, with the test frontend as the VMM (no guest):
//! SETUPMAPPING latency (p50/p99) and read bandwidth through the window vs READ requests, on
//! the same host-cached file. Prints a table.
//!
//! cargo run --release --example daxbench -- --socket /path/vfs.sock [--iterations N]
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
    clippy::too_many_lines
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fuse::Client;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const FILE_MB: u64 = 64;

fn main() {
    let mut socket = PathBuf::new();
    let mut iterations = 2000u64;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--socket" => socket = it.next().unwrap().into(),
            "--iterations" => iterations = it.next().unwrap().parse().unwrap(),
            _ => panic!("usage: daxbench --socket PATH [--iterations N]"),
        }
    }
    common::keep_heap();
    let c = Client::connect_dax(&socket, 1, false);
    assert!(c.init.flags & FUSE_MAP_ALIGNMENT as u32 != 0, "no DAX window: start daxfsd with --dax-window");
    let (e, fh) = c.create(1, "daxbench", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..FILE_MB {
        c.write(e.nodeid, fh, i << 20, &chunk).unwrap();
    }
    let slots = FILE_MB * (1 << 20) / MB2;

    // SETUPMAPPING latency: map slot i of the file at window slot i, cycling; every setup after
    // the first round replaces a mapping (unmap + map, as guest reclaim and reuse do).
    let mut lat = Vec::with_capacity(iterations as usize);
    for i in 0..iterations {
        let s = i % slots;
        let t = Instant::now();
        c.setupmapping(e.nodeid, s * MB2, MB2, FUSE_SETUPMAPPING_FLAG_READ, s * MB2).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];

    // Read bandwidth: every slot is mapped now. Window reads are plain memory copies, as a
    // guest's would be; READ requests go through the virtqueue and preadv.
    let window = c.vmm.window();
    let total = FILE_MB << 20;
    let mut buf = vec![0u8; 1 << 20];
    let rounds = 8;
    let t = Instant::now();
    for _ in 0..rounds {
        for off in (0..total).step_by(1 << 20) {
            // SAFETY: `off` < 64 MiB lies inside the window reservation.
            let src = unsafe { window.base().add(off as usize) };
            // SAFETY: [off, off + 1 MiB) lies in installed pieces (the whole 64 MiB file, whose
            // size is a page multiple, is mapped), which stay mapped while we read: nothing
            // else runs against this file.
            unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
            // Every copy counts: without this the compiler may drop all but the last.
            std::hint::black_box(&mut buf);
        }
    }
    let window_bw = (rounds * total) as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert!(buf.iter().all(|b| *b == 0xa5));
    let t = Instant::now();
    for _ in 0..rounds {
        for off in (0..total).step_by(1 << 20) {
            assert_eq!(c.read(e.nodeid, fh, off, 1 << 20).unwrap().len(), 1 << 20);
        }
    }
    let read_bw = (rounds * total) as f64 / t.elapsed().as_secs_f64() / 1e6;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("daxbench: {} SETUPMAPPINGs of 2 MiB, {} MiB read {rounds}x each way", iterations, FILE_MB);
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| SETUPMAPPING p50 | {:.0} us |", us(pct(0.50)));
    println!("| SETUPMAPPING p99 | {:.0} us |", us(pct(0.99)));
    println!("| read through the window | {window_bw:.0} MB/s |");
    println!("| READ requests (1 MiB) | {read_bw:.0} MB/s |");
    c.removemapping(&(0..slots).map(|s| (s * MB2, MB2)).collect::<Vec<_>>()).unwrap();
    c.release(e.nodeid, fh).unwrap();
    c.call(Opcode::Unlink, 1, &[b"daxbench\0"], 0).unwrap();
}
