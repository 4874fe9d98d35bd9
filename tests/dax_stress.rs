//! Stress: threads set up mappings and read/write through the window while others truncate
//! down and up, punch holes, O_TRUNC and extend the same files. SETUPMAPPING takes no file
//! lock, so it races the shrinks inside the daemon (the I4 race). Every window read below EOF
//! is checked against a model; after every shrink, no page that was valid before it may be
//! installed past the new EOF (I2), and a scanner that takes no lock at all reads every window
//! page all along: under QEMU 11.1's rules (nothing mapped past a file's size) any EIO it sees
//! is a page installed past EOF, a SIGBUS in a real VM. Half the sizes end mid-page, so the
//! EOF page goes through the daemon's padded map. Fixed operation count, fixed seed.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use common::fuse::*;
use daxfsd::fuse::abi::*;

const MB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
const FILES: usize = 2;
const SLOTS: usize = 2; // per file: file offsets 0 and 2 MiB
const OPS: u64 = 600; // per thread
const RW: u64 = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;

struct Slot {
    /// Held exclusively by SETUPMAPPING, shared by window access (as the guest's dax sem).
    lock: RwLock<()>,
    /// Bumped by every SETUPMAPPING, so a shrink check can skip fresh mappings.
    generation: AtomicU64,
}

struct File {
    node: u64,
    fh: u64,
    /// The file's content; held exclusively by every change, shared by checks.
    model: RwLock<Vec<u8>>,
    slots: Vec<Slot>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn moffset(f: usize, s: usize) -> u64 {
    ((f * SLOTS + s) as u64) * MB2
}

#[derive(Default)]
struct Counts {
    setups: AtomicU64,
    reads: AtomicU64,
    window_writes: AtomicU64,
    shrinks: AtomicU64,
    grows: AtomicU64,
    punches: AtomicU64,
}

fn check_page(c: &Client, f: usize, s: usize, page: u64, model: &[u8]) {
    let fo = s as u64 * MB2 + page * PAGE;
    let eof = model.len() as u64;
    if fo >= eof {
        return;
    }
    let got = c.vmm.window().read(moffset(f, s) + page * PAGE, PAGE as usize);
    let got = got.unwrap_or_else(|e| panic!("file {f} page {fo:#x} below EOF {eof:#x}: SIGBUS page ({e})"));
    let end = (fo + PAGE).min(eof);
    let want = &model[fo as usize..end as usize];
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("file {f} page {fo:#x} byte {i}: window {} model {} (eof {eof:#x})", got[i], want[i]);
    }
    assert!(got[want.len()..].iter().all(|b| *b == 0), "bytes past EOF in the EOF page are not zero");
}

/// Mapper/reader thread: SETUPMAPPING (no file lock: races shrinks), window reads and writes.
fn mapper_thread(c: &Client, files: &[File], seed: u64, n: &Counts) {
    let mut rng = Rng(seed);
    for _ in 0..OPS {
        let f = rng.below(FILES as u64) as usize;
        let s = rng.below(SLOTS as u64) as usize;
        let file = &files[f];
        let slot = &file.slots[s];
        match rng.below(4) {
            0 => {
                let _g = slot.lock.write().unwrap();
                c.setupmapping(file.node, s as u64 * MB2, MB2, RW, moffset(f, s)).unwrap();
                slot.generation.fetch_add(1, Ordering::SeqCst);
                n.setups.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                if slot.generation.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                let _g = slot.lock.read().unwrap();
                let mut model = file.model.write().unwrap();
                let fo = s as u64 * MB2 + rng.below(MB2 / PAGE) * PAGE;
                let len = 64u64;
                if fo + len > model.len() as u64 {
                    continue;
                }
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                c.vmm.window().write(moffset(f, s) + (fo - s as u64 * MB2), &data).unwrap();
                model[fo as usize..(fo + len) as usize].copy_from_slice(&data);
                n.window_writes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                if slot.generation.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                let _g = slot.lock.read().unwrap();
                let model = file.model.read().unwrap();
                check_page(c, f, s, rng.below(MB2 / PAGE), &model);
                n.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// After a shrink from `old` to the model's size: pages valid before and past EOF now must
/// not be installed, unless a SETUPMAPPING re-set the slot since (`gens` before the op).
fn check_after_shrink(c: &Client, f: usize, file: &File, old: u64, model: &[u8], gens: &[u64]) {
    let eof = model.len() as u64;
    for (s, slot) in file.slots.iter().enumerate() {
        // try_read: we hold the file lock, and window writers take slot then file.
        let Ok(_g) = slot.lock.try_read() else { continue };
        if slot.generation.load(Ordering::SeqCst) != gens[s] || gens[s] == 0 {
            continue;
        }
        let base = s as u64 * MB2;
        let first = eof.div_ceil(PAGE) * PAGE;
        for fo in (first.max(base)..old.min(base + MB2)).step_by(PAGE as usize) {
            let got = c.vmm.window().read(moffset(f, s) + (fo - base), PAGE as usize);
            assert!(got.is_ok(), "file {f} page {fo:#x} was valid, is past EOF {eof:#x} and still installed");
        }
        for page in 0..MB2 / PAGE {
            check_page(c, f, s, page, model);
        }
    }
}

/// Mutator thread: truncates, punches, O_TRUNCs and extends, updating the model.
fn mutator_thread(c: &Client, files: &[File], seed: u64, n: &Counts) {
    let mut rng = Rng(seed);
    for _ in 0..OPS {
        let f = rng.below(FILES as u64) as usize;
        let file = &files[f];
        let mut model = file.model.write().unwrap();
        let old = model.len() as u64;
        let gens: Vec<u64> = file.slots.iter().map(|s| s.generation.load(Ordering::SeqCst)).collect();
        match rng.below(5) {
            0 => {
                let size = if rng.below(2) == 0 { rng.below(old / PAGE + 1) * PAGE } else { rng.below(old + 1) };
                c.setattr(file.node, SetattrIn { valid: FATTR_SIZE, size, ..Default::default() }).unwrap();
                model.truncate(size as usize);
                n.shrinks.fetch_add(1, Ordering::Relaxed);
                check_after_shrink(c, f, file, old, &model, &gens);
            }
            1 => {
                let size = (rng.below(MB2 * SLOTS as u64 / PAGE + 1) * PAGE).max(old / 2 / PAGE * PAGE);
                c.setattr(file.node, SetattrIn { valid: FATTR_SIZE, size, ..Default::default() }).unwrap();
                model.resize(size as usize, 0);
                n.grows.fetch_add(1, Ordering::Relaxed);
                if size < old {
                    check_after_shrink(c, f, file, old, &model, &gens);
                }
            }
            2 => {
                if old < PAGE {
                    continue;
                }
                let off = rng.below(old / PAGE) * PAGE;
                let len = (rng.below(16) + 1) * PAGE;
                let mode = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
                c.fallocate(file.node, file.fh, mode, off, len).unwrap();
                let end = (off + len).min(old) as usize;
                model[off as usize..end].fill(0);
                n.punches.fetch_add(1, Ordering::Relaxed);
            }
            3 => {
                let fh = c.open(file.node, libc::O_RDWR | libc::O_TRUNC).unwrap();
                c.release(file.node, fh).unwrap();
                model.clear();
                n.shrinks.fetch_add(1, Ordering::Relaxed);
                check_after_shrink(c, f, file, old, &model, &gens);
            }
            _ => {
                let len = (rng.below(16) + 1) * PAGE;
                let off = old.min(MB2 * SLOTS as u64 - len);
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                c.write(file.node, file.fh, off, &data).unwrap();
                if (model.len() as u64) < off + len {
                    model.resize((off + len) as usize, 0);
                }
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
                n.grows.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Scanner thread: reads every window page of every slot, with no lock, until `stop`. Returns
/// (pages read, pages that gave EIO, the first EIO's window offset).
fn scanner_thread(c: &Client, stop: &AtomicBool) -> (u64, u64, Option<u64>) {
    let (mut reads, mut eio, mut first) = (0, 0, None);
    let total = (FILES * SLOTS) as u64 * MB2;
    let mut off = 0;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = c.vmm.window().read(off, PAGE as usize) {
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "window read at {off:#x}: {e}");
            eio += 1;
            first.get_or_insert(off);
        }
        reads += 1;
        off = (off + PAGE) % total;
    }
    (reads, eio, first)
}

/// The files under stress, with deterministic content and their models.
fn make_files(c: &Client) -> Vec<File> {
    (0..FILES)
        .map(|i| {
            let (e, fh) = c.create(1, &format!("stress{i}"), libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
            let init = pattern_bytes(i as u8, 0, MB2 as usize + 3 * PAGE as usize);
            for (k, chunk) in init.chunks(1 << 20).enumerate() {
                c.write(e.nodeid, fh, (k as u64) << 20, chunk).unwrap();
            }
            let slots = (0..SLOTS).map(|_| Slot { lock: RwLock::new(()), generation: AtomicU64::new(0) }).collect();
            File { node: e.nodeid, fh, model: RwLock::new(init), slots }
        })
        .collect()
}

#[test]
fn mappings_race_truncate_punch_and_otrunc_without_sigbus_or_mismatch() {
    let mut d = Daemon::start(&["--dax-window", "64M", "--thread-pool-size", "4", "--num-request-queues", "2"]);
    let c = Client::connect_dax(&d.socket, 2, false);
    let files = make_files(&c);
    let counts = Counts::default();
    let errors = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let scan = std::thread::scope(|s| {
        let scanner = s.spawn(|| scanner_thread(&c, &stop));
        let mut workers = Vec::new();
        for t in 0..2u64 {
            let (c, files, counts, errors) = (&c, &files, &counts, &errors);
            workers.push(s.spawn(move || {
                if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    mapper_thread(c, files, 0x1234 + t, counts)
                })) {
                    errors.lock().unwrap().push(format!("mapper {t}: {e:?}"));
                }
            }));
            workers.push(s.spawn(move || {
                if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    mutator_thread(c, files, 0x9876 + t, counts)
                })) {
                    errors.lock().unwrap().push(format!("mutator {t}: {e:?}"));
                }
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        scanner.join().unwrap()
    });
    let (scanned, eio, first) = scan;
    assert_eq!(eio, 0, "lock-free scan: {eio} of {scanned} page reads hit a page past EOF (first at {first:?})");
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{errors:?}\n{}", d.log());
    // Quiescent: every mapped slot matches the model below EOF.
    for (f, file) in files.iter().enumerate() {
        let model = file.model.read().unwrap();
        for (s, slot) in file.slots.iter().enumerate() {
            if slot.generation.load(Ordering::SeqCst) > 0 {
                for page in 0..MB2 / PAGE {
                    check_page(&c, f, s, page, &model);
                }
            }
        }
    }
    let warn = d.log().lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count();
    assert_eq!(warn, 0, "daemon warnings/errors:\n{}", d.log());
    assert!(d.is_running());
    println!("lock-free scan: {scanned} page reads, none past EOF");
    println!(
        "ops: setups {} reads {} window-writes {} shrinks {} grows {} punches {}",
        counts.setups.load(Ordering::Relaxed),
        counts.reads.load(Ordering::Relaxed),
        counts.window_writes.load(Ordering::Relaxed),
        counts.shrinks.load(Ordering::Relaxed),
        counts.grows.load(Ordering::Relaxed),
        counts.punches.load(Ordering::Relaxed)
    );
}
