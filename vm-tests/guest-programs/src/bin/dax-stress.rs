//! dax-stress — threads fault, read and write shared mappings of files on
//! the mount while other operations truncate them down and up, punch holes,
//! zero ranges, reopen them with O_TRUNC and extend them with write(); every
//! byte read is checked against a model.
//!
//! # Concurrency design (why the model is exact)
//!
//! Each file has one shared mapping (`--file-size` long, set up once; pages
//! past EOF are part of it), one model (expected bytes, size) behind an
//! `RwLock`, and a sequence counter `seq`.
//!
//! - Mutators (mapped write, write, extend, truncate down/up, punch, zero,
//!   O_TRUNC + write) hold the lock exclusively; `seq` is odd while one runs.
//!   The model changes together with the file, so it is exact whenever the
//!   lock is free.
//! - Locked readers (mapped read, pread, fsync) hold the lock shared and
//!   compare every byte exactly. Reads may cross EOF: bytes up to the end of
//!   the page holding EOF must match (zeros past EOF), and a SIGBUS is
//!   expected exactly at the first page past it. Any other SIGBUS, or a
//!   missing one, is a failure.
//! - Racy readers take no lock, so their faults race the truncates and
//!   punches of other threads (the guest's own serialization of DAX faults
//!   against truncation, and the daemon's window, are what is tested). They
//!   use `seq` as a seqlock: if no mutator ran between just before the read
//!   and taking the lock shared right after it, the check is exact as above;
//!   otherwise each byte must be zero or the byte the self-describing pattern
//!   puts at that file offset (data is 8-byte words: offset/8, a generation,
//!   the file number, a magic byte), and a SIGBUS is counted, not judged.
//!
//! SIGBUS handling: see `guest::probe` — every mapped access is one
//! `rep movsb` whose fault the handler turns into a short copy.
//!
//! Each thread's operation sequence is fixed by `--seed` and its index; the
//! interleaving of threads is up to the scheduler (use `--threads 1` for a
//! fully reproducible run).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use guest::args::{self, Opt, Parsed};
use guest::probe::{self, Copied};
use guest::report::{self, Status, is_unsupported};
use guest::rng::Rng;
use guest::sys::{self, Mapping, errno_name};
use guest::{Context, Error, Result, bail, ensure};

const NAME: &str = "dax-stress";
const MAGIC: u8 = 0xa5;

const OPTS: &[Opt] = &[
    Opt { name: "seed", default: Some("1"), help: "PRNG seed" },
    Opt { name: "ops", default: Some("4000"), help: "operations in total (split over the threads)" },
    Opt { name: "threads", default: Some("4"), help: "worker threads" },
    Opt { name: "files", default: Some("3"), help: "files" },
    Opt { name: "file-size", default: Some("4M"), help: "maximum file size = mapping length (page multiple)" },
    Opt { name: "max-io", default: Some("64K"), help: "longest single read/write" },
    Opt { name: "dir", default: Some("dax-stress"), help: "work directory under the mount (recreated)" },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MapRead,
    RacyRead,
    Read,
    MapWrite,
    Write,
    Extend,
    TruncDown,
    TruncUp,
    Punch,
    Zero,
    OTrunc,
    Fsync,
    DropCaches,
}

const KINDS: [(Kind, &str, u32); 13] = [
    (Kind::MapRead, "mread", 20),
    (Kind::RacyRead, "racy_mread", 12),
    (Kind::Read, "read", 10),
    (Kind::MapWrite, "mwrite", 15),
    (Kind::Write, "write", 10),
    (Kind::Extend, "extend", 5),
    (Kind::TruncDown, "trunc_down", 5),
    (Kind::TruncUp, "trunc_up", 4),
    (Kind::Punch, "punch", 6),
    (Kind::Zero, "zero", 6),
    (Kind::OTrunc, "otrunc", 2),
    (Kind::Fsync, "fsync", 2),
    (Kind::DropCaches, "drop_caches", 1),
];

fn kind_index(k: Kind) -> usize {
    KINDS.iter().position(|(x, _, _)| *x == k).unwrap_or(0)
}

/// The expected content of one file.
struct Model {
    /// `max` bytes; everything at or past `size` is zero.
    data: Vec<u8>,
    size: usize,
    generation: u16,
}

struct FileState {
    idx: u8,
    path: PathBuf,
    fd: File,
    map: Option<Mapping>,
    model: RwLock<Model>,
    /// Seqlock counter: odd while a mutator runs.
    seq: AtomicU64,
    /// The size, readable without the lock (for choosing racy ranges).
    size_hint: AtomicUsize,
}

struct Shared {
    files: Vec<FileState>,
    max: usize,
    max_io: usize,
    page: usize,
    stop: AtomicBool,
    /// Per kind: false once the daemon said "not supported".
    enabled: Vec<AtomicBool>,
    disabled_why: std::sync::Mutex<Vec<String>>,
    /// Recent operations of all threads, in the order they were logged
    /// (mutators log under the file's exclusive lock, so per file the order
    /// of mutations is exact): (thread, file, text).
    log: std::sync::Mutex<std::collections::VecDeque<(u64, usize, String)>>,
}

const LOG_KEEP: usize = 4000;

#[derive(Debug, Default, Clone)]
struct Stats {
    ops: [u64; KINDS.len()],
    sigbus_past_eof: u64,
    sigbus_racy: u64,
    racy_exact: u64,
    racy_weak: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        for (a, b) in self.ops.iter_mut().zip(o.ops) {
            *a += b;
        }
        self.sigbus_past_eof += o.sigbus_past_eof;
        self.sigbus_racy += o.sigbus_racy;
        self.racy_exact += o.racy_exact;
        self.racy_weak += o.racy_weak;
    }
}

fn lock_err<T>(_: T) -> Error {
    Error("a worker panicked while holding a file lock".into())
}

impl FileState {
    fn read(&self) -> Result<RwLockReadGuard<'_, Model>> {
        self.model.read().map_err(lock_err)
    }

    /// Exclusive access; `seq` is odd until the guard is dropped.
    fn write(&self) -> Result<MutGuard<'_>> {
        let g = self.model.write().map_err(lock_err)?;
        self.seq.fetch_add(1, Ordering::AcqRel);
        Ok(MutGuard { f: self, g })
    }
}

struct MutGuard<'a> {
    f: &'a FileState,
    g: RwLockWriteGuard<'a, Model>,
}

impl Drop for MutGuard<'_> {
    fn drop(&mut self) {
        self.f.size_hint.store(self.g.size, Ordering::Relaxed);
        self.f.seq.fetch_add(1, Ordering::AcqRel);
    }
}

/// The pattern byte at file offset `off` of file `file`, generation `generation`.
fn pattern_byte(file: u8, generation: u16, off: usize) -> u8 {
    let word = (off >> 3) as u64 & 0xffff_ffff;
    let [g0, g1] = generation.to_le_bytes();
    match off % 8 {
        k @ 0..=3 => (word >> (8 * k)) as u8,
        4 => g0,
        5 => g1,
        6 => file,
        _ => MAGIC,
    }
}

/// Could this byte have been written at `off` by any generation?
fn plausible(file: u8, off: usize, b: u8) -> bool {
    b == 0 || matches!(off % 8, 4 | 5) || b == pattern_byte(file, 0, off)
}

fn fill_pattern(buf: &mut [u8], file: u8, generation: u16, off: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(file, generation, off + i);
    }
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// An 8-aligned range of 8..=max_len bytes starting in `lo..hi` (clamped to
/// `limit`); `None` if empty.
fn pick_range(rng: &mut Rng, lo: usize, hi: usize, max_len: usize, limit: usize) -> Option<(usize, usize)> {
    let hi = hi.min(limit);
    if hi <= lo {
        return None;
    }
    let off = (lo + rng.below_usize(hi - lo)) & !7;
    let cap = if rng.chance(1, 2) { 4096.min(max_len) } else { max_len };
    let len = 8 * rng.between(1, (cap / 8).max(1) as u64) as usize;
    let len = len.min(limit - off) & !7;
    (len > 0).then_some((off, len))
}

/// Compare `got` with the model bytes at `off`; describe the first difference.
fn compare(what: &str, got: &[u8], want: &[u8], off: usize) -> Result<()> {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (i + 16).min(got.len());
        bail!(
            "{what}: mismatch at file offset {:#x}: got {:02x?} want {:02x?}",
            off + i,
            got.get(i..end).unwrap_or_default(),
            want.get(i..end).unwrap_or_default()
        );
    }
    Ok(())
}

/// What a mapped read saw: `buf` read from file offset `off`, ending as `r`.
struct Seen<'a> {
    off: usize,
    buf: &'a [u8],
    r: Copied,
}

struct Worker<'a> {
    sh: &'a Shared,
    rng: Rng,
    stats: Stats,
    thread: u64,
    last_file: usize,
}

impl Worker<'_> {
    fn note(&mut self, s: String) {
        if let Ok(mut log) = self.sh.log.lock() {
            if log.len() >= LOG_KEEP {
                log.pop_front();
            }
            log.push_back((self.thread, self.last_file, s));
        }
    }

    fn disable(&self, k: Kind, why: String) {
        if let Some(e) = self.sh.enabled.get(kind_index(k))
            && e.swap(false, Ordering::Relaxed)
            && let Ok(mut v) = self.sh.disabled_why.lock()
        {
            v.push(why);
        }
    }

    fn run(&mut self, ops: u64) -> Result<()> {
        let weights: Vec<u32> = KINDS.iter().map(|(_, _, w)| *w).collect();
        for _ in 0..ops {
            if self.sh.stop.load(Ordering::Relaxed) {
                break;
            }
            let fi = self.rng.below_usize(self.sh.files.len());
            let mut k = KINDS.get(self.rng.weighted(&weights)).map_or(Kind::Read, |x| x.0);
            let mapped = matches!(k, Kind::MapRead | Kind::RacyRead | Kind::MapWrite);
            let on = self.sh.enabled.get(kind_index(k)).is_some_and(|e| e.load(Ordering::Relaxed));
            if !on || (mapped && self.sh.files.get(fi).is_some_and(|f| f.map.is_none())) {
                k = Kind::Read;
            }
            self.op(fi, k)?;
            if let Some(c) = self.stats.ops.get_mut(kind_index(k)) {
                *c += 1;
            }
        }
        Ok(())
    }

    fn op(&mut self, fi: usize, k: Kind) -> Result<()> {
        let sh = self.sh;
        let f = sh.files.get(fi).ok_or("bad file index")?;
        self.last_file = fi;
        match k {
            Kind::MapRead => {
                let m = f.read()?;
                let (off, len) = self.read_range(m.size);
                self.note(format!("mread f{fi} {off:#x}+{len:#x} size {:#x}", m.size));
                self.mapped_read_exact(f, &m, off, len, "mread")?;
            }
            Kind::RacyRead => self.racy_read(f, fi)?,
            Kind::Read => {
                let m = f.read()?;
                let (off, len) = self.read_range(m.size);
                self.note(format!("read f{fi} {off:#x}+{len:#x} size {:#x}", m.size));
                let mut buf = vec![0u8; len];
                let mut done = 0;
                while done < len {
                    let n =
                        f.fd.read_at(buf.get_mut(done..).unwrap_or_default(), (off + done) as u64)
                            .with_ctx(|| format!("pread f{fi} {off:#x}+{len:#x}"))?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                let want = m.size.saturating_sub(off).min(len);
                if done != want {
                    let st = f.fd.metadata().map(|m| m.len()).unwrap_or(0);
                    bail!(
                        "pread f{fi} {off:#x}+{len:#x}: {done} bytes, want {want} (model size {:#x}, fstat size {st:#x})",
                        m.size
                    );
                }
                compare(
                    "pread",
                    buf.get(..done).unwrap_or_default(),
                    m.data.get(off..off + done).unwrap_or_default(),
                    off,
                )?;
            }
            Kind::MapWrite => {
                let mut g = f.write()?;
                let Some((off, len)) = pick_range(&mut self.rng, 0, g.g.size, sh.max_io, g.g.size) else {
                    return Ok(());
                };
                g.g.generation = g.g.generation.wrapping_add(1);
                self.note(format!("mwrite f{fi} {off:#x}+{len:#x} size {:#x}", g.g.size));
                let mut buf = vec![0u8; len];
                fill_pattern(&mut buf, f.idx, g.g.generation, off);
                let map = f.map.as_ref().ok_or("no mapping")?;
                match probe::write(map, off, &buf)? {
                    Copied::All => {}
                    Copied::Fault { fault_off, .. } => {
                        bail!("SIGBUS on a mapped write below EOF: f{fi} offset {fault_off:#x}, size {:#x}", g.g.size)
                    }
                }
                if self.rng.chance(1, 8) {
                    map.msync().ctx("msync")?;
                }
                g.g.data.get_mut(off..off + len).ok_or("range")?.copy_from_slice(&buf);
            }
            Kind::Write | Kind::Extend => {
                let mut g = f.write()?;
                let size = g.g.size;
                let r = if k == Kind::Write {
                    pick_range(&mut self.rng, 0, sh.max, sh.max_io, sh.max)
                } else {
                    pick_range(&mut self.rng, size, size + 1, sh.max_io, sh.max)
                };
                let Some((off, len)) = r else { return Ok(()) };
                g.g.generation = g.g.generation.wrapping_add(1);
                self.note(format!("{k:?} f{fi} {off:#x}+{len:#x} size {size:#x}"));
                let mut buf = vec![0u8; len];
                fill_pattern(&mut buf, f.idx, g.g.generation, off);
                f.fd.write_all_at(&buf, off as u64).with_ctx(|| format!("pwrite f{fi} {off:#x}+{len:#x}"))?;
                g.g.data.get_mut(off..off + len).ok_or("range")?.copy_from_slice(&buf);
                g.g.size = size.max(off + len);
            }
            Kind::TruncDown | Kind::TruncUp => {
                let mut g = f.write()?;
                let size = g.g.size;
                let new = if k == Kind::TruncDown {
                    8 * self.rng.below_usize(size / 8 + 1)
                } else {
                    8 * self.rng.between((size / 8) as u64, (sh.max / 8) as u64) as usize
                };
                let new = if self.rng.chance(1, 4) { new & !(sh.page - 1) } else { new };
                self.note(format!("{k:?} f{fi} {size:#x} -> {new:#x}"));
                f.fd.set_len(new as u64).with_ctx(|| format!("ftruncate f{fi} {new:#x}"))?;
                if new < size {
                    g.g.data.get_mut(new..size).ok_or("range")?.fill(0);
                }
                g.g.size = new;
            }
            Kind::Punch | Kind::Zero => {
                let mut g = f.write()?;
                let size = g.g.size;
                let Some((off, len)) = pick_range(&mut self.rng, 0, sh.max, 4 * sh.max_io, sh.max) else {
                    return Ok(());
                };
                let keep = k == Kind::Punch || self.rng.chance(1, 2);
                let mode = match k {
                    Kind::Punch => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    _ if keep => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    _ => libc::FALLOC_FL_ZERO_RANGE,
                };
                self.note(format!("{k:?} f{fi} {off:#x}+{len:#x} keep={keep} size {size:#x}"));
                match sys::fallocate(&f.fd, mode, off as u64, len as u64) {
                    Ok(()) => {}
                    Err(e) if is_unsupported(&e) => {
                        self.disable(k, format!("{k:?}: {}", errno_name(&e)));
                        return Ok(());
                    }
                    Err(e) => bail!("fallocate {k:?} f{fi} {off:#x}+{len:#x}: {e}"),
                }
                let end = if keep { (off + len).min(size) } else { off + len };
                if off < end {
                    g.g.data.get_mut(off..end).ok_or("range")?.fill(0);
                }
                if !keep {
                    g.g.size = size.max(off + len);
                }
            }
            Kind::OTrunc => {
                let mut g = f.write()?;
                let len = 8 * self.rng.between(0, (sh.max_io / 8) as u64) as usize;
                g.g.generation = g.g.generation.wrapping_add(1);
                self.note(format!("otrunc f{fi} size {:#x}, then write 0+{len:#x}", g.g.size));
                let t = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(&f.path)
                    .with_ctx(|| format!("open O_TRUNC f{fi}"))?;
                let old = g.g.size;
                g.g.data.get_mut(..old).ok_or("range")?.fill(0);
                g.g.size = 0;
                let mut buf = vec![0u8; len];
                fill_pattern(&mut buf, f.idx, g.g.generation, 0);
                t.write_all_at(&buf, 0).with_ctx(|| format!("write after O_TRUNC f{fi}"))?;
                g.g.data.get_mut(..len).ok_or("range")?.copy_from_slice(&buf);
                g.g.size = len;
            }
            Kind::Fsync => {
                let _m = f.read()?;
                self.note(format!("fsync f{fi}"));
                f.fd.sync_all().with_ctx(|| format!("fsync f{fi}"))?;
            }
            Kind::DropCaches => {
                self.note("drop_caches".into());
                sys::drop_caches().ctx("drop_caches")?;
            }
        }
        Ok(())
    }

    /// A read range: mostly below EOF, a quarter of the time around EOF.
    fn read_range(&mut self, size: usize) -> (usize, usize) {
        let sh = self.sh;
        let r = if self.rng.chance(1, 4) || size == 0 {
            let lo = size.saturating_sub(2 * sh.page);
            pick_range(&mut self.rng, lo, size + 2 * sh.page, 4 * sh.page, sh.max)
        } else {
            pick_range(&mut self.rng, 0, size, sh.max_io, sh.max)
        };
        r.unwrap_or((0, 8))
    }

    /// Mapped read checked exactly against `m`: bytes up to the end of the
    /// EOF page as modelled, a SIGBUS exactly at the first page past it.
    fn mapped_read_exact(&mut self, f: &FileState, m: &Model, off: usize, len: usize, what: &str) -> Result<()> {
        let map = f.map.as_ref().ok_or("no mapping")?;
        let mut buf = vec![0u8; len];
        let r = probe::read(map, off, &mut buf)?;
        self.check_exact(f, m, Seen { off, buf: &buf, r }, what)
    }

    fn check_exact(&mut self, f: &FileState, m: &Model, seen: Seen<'_>, what: &str) -> Result<()> {
        let Seen { off, buf, r } = seen;
        let valid_end = round_up(m.size, self.sh.page);
        let end = off + buf.len();
        let done = match r {
            Copied::All => {
                ensure!(
                    end <= valid_end,
                    "{what} f{} {off:#x}+{:#x}: no SIGBUS past EOF (size {:#x}, pages valid up to {valid_end:#x})",
                    f.idx,
                    buf.len(),
                    m.size
                );
                buf.len()
            }
            Copied::Fault { done, fault_off } => {
                let want = off.max(valid_end);
                ensure!(
                    end > valid_end && fault_off == want,
                    "{what} f{} {off:#x}+{:#x}: SIGBUS at {fault_off:#x} but size is {:#x} (want {})",
                    f.idx,
                    buf.len(),
                    m.size,
                    if end > valid_end { format!("SIGBUS at {want:#x}") } else { "no SIGBUS".into() }
                );
                self.stats.sigbus_past_eof += 1;
                done
            }
        };
        compare(what, buf.get(..done).unwrap_or_default(), m.data.get(off..off + done).unwrap_or_default(), off)
    }

    fn racy_read(&mut self, f: &FileState, fi: usize) -> Result<()> {
        let map = f.map.as_ref().ok_or("no mapping")?;
        let s1 = f.seq.load(Ordering::Acquire);
        let (off, len) = self.read_range(f.size_hint.load(Ordering::Relaxed));
        let mut buf = vec![0u8; len];
        let r = probe::read(map, off, &mut buf)?;
        let m = f.read()?;
        let s2 = f.seq.load(Ordering::Acquire);
        self.note(format!("racy_mread f{fi} {off:#x}+{len:#x} seq {s1}->{s2} size {:#x}", m.size));
        if s1.is_multiple_of(2) && s1 == s2 {
            self.stats.racy_exact += 1;
            return self.check_exact(f, &m, Seen { off, buf: &buf, r }, "racy_mread(stable)");
        }
        drop(m);
        self.stats.racy_weak += 1;
        let done = match r {
            Copied::All => len,
            Copied::Fault { done, fault_off } => {
                ensure!(
                    fault_off == off || fault_off % self.sh.page == 0,
                    "racy SIGBUS at {fault_off:#x}: neither the start nor a page boundary"
                );
                self.stats.sigbus_racy += 1;
                done
            }
        };
        for (i, &b) in buf.get(..done).unwrap_or_default().iter().enumerate() {
            ensure!(
                plausible(f.idx, off + i, b),
                "racy_mread f{fi}: byte {b:#04x} at file offset {:#x} is neither zero nor this file's pattern",
                off + i
            );
        }
        Ok(())
    }
}

/// The last 40 logged operations on file `fi` (and drop_caches).
fn print_log(sh: &Shared, fi: usize) {
    let Ok(log) = sh.log.lock() else { return };
    let mine: Vec<_> = log.iter().filter(|(_, f, s)| *f == fi || s.starts_with("drop_caches")).collect();
    for (t, _, s) in mine.iter().skip(mine.len().saturating_sub(40)) {
        report::info(&format!("{NAME} op log (thread {t}): {s}"));
    }
}

/// After the threads: every file checked through fstat, pread and the mapping.
fn final_check(sh: &Shared) -> Result<()> {
    for f in &sh.files {
        let m = f.read()?;
        let st = f.fd.metadata().ctx("fstat")?;
        ensure!(st.len() == m.size as u64, "final: f{} size {} want {}", f.idx, st.len(), m.size);
        let mut buf = vec![0u8; sh.max];
        let n = f.fd.read_at(&mut buf, 0).ctx("final pread")?;
        let mut done = n;
        while done < m.size {
            let k = f.fd.read_at(buf.get_mut(done..).unwrap_or_default(), done as u64).ctx("final pread")?;
            if k == 0 {
                break;
            }
            done += k;
        }
        ensure!(done == m.size, "final: f{} pread returned {done} of {} bytes", f.idx, m.size);
        compare("final pread", buf.get(..done).unwrap_or_default(), m.data.get(..done).unwrap_or_default(), 0)?;
        if let Some(map) = &f.map {
            let valid = round_up(m.size, sh.page).min(sh.max);
            let r = probe::read(map, 0, buf.get_mut(..valid).unwrap_or_default())?;
            ensure!(r == Copied::All, "final: f{} mapped read of valid pages: {r:?}", f.idx);
            compare("final mread", buf.get(..valid).unwrap_or_default(), m.data.get(..valid).unwrap_or_default(), 0)?;
            if valid < sh.max {
                let r = probe::read(map, valid, buf.get_mut(..8).unwrap_or_default())?;
                ensure!(
                    r == Copied::Fault { done: 0, fault_off: valid },
                    "final: f{} read past EOF page: {r:?}",
                    f.idx
                );
            }
        }
    }
    Ok(())
}

fn setup(mount: &std::path::Path, dir: &str, nfiles: usize, max: usize) -> Result<(Vec<FileState>, Option<String>)> {
    let d = mount.join(dir);
    if d.exists() {
        std::fs::remove_dir_all(&d).with_ctx(|| format!("remove {}", d.display()))?;
    }
    std::fs::create_dir(&d).with_ctx(|| format!("mkdir {}", d.display()))?;
    let mut files = Vec::new();
    let mut no_mmap = None;
    for i in 0..nfiles {
        let path = d.join(format!("f{i}"));
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_ctx(|| format!("create {}", path.display()))?;
        let map = match Mapping::new(&fd, 0, max, true) {
            Ok(m) => Some(m),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                no_mmap = Some(format!("mmap MAP_SHARED: {}", errno_name(&e)));
                None
            }
            Err(e) => bail!("mmap {}: {e}", path.display()),
        };
        files.push(FileState {
            idx: u8::try_from(i).map_err(|_| "too many files (max 255)")?,
            path,
            fd,
            map,
            model: RwLock::new(Model { data: vec![0u8; max], size: 0, generation: 0 }),
            seq: AtomicU64::new(0),
            size_hint: AtomicUsize::new(0),
        });
    }
    Ok((files, no_mmap))
}

fn run() -> Result<i32> {
    let args =
        match args::parse(NAME, "mmap fault/truncate/punch stress with data checks", OPTS, std::env::args().skip(1))? {
            Parsed::Help(u) => {
                print!("{u}");
                return Ok(0);
            }
            Parsed::Run(a) => a,
        };
    probe::install()?;
    let page = sys::page_size();
    let (seed, ops, threads) = (args.u64("seed")?, args.u64("ops")?, args.u64("threads")?.max(1));
    let (nfiles, max, max_io) = (args.usize("files")?.max(1), args.usize("file-size")?, args.usize("max-io")?);
    ensure!(max >= page && max % page == 0, "--file-size must be a positive multiple of {page}");
    ensure!(max_io >= 8, "--max-io must be at least 8");
    let (files, no_mmap) = setup(&args.mount, args.str("dir")?, nfiles, max)?;
    report::info(&format!(
        "{NAME} config seed={seed} ops={ops} threads={threads} files={nfiles} file-size={max} max-io={max_io} page={page} mmap={} dax_files={}",
        if no_mmap.is_some() { "no" } else { "yes" },
        sys::dax_summary(files.iter().map(|f| f.path.as_path()))
    ));
    let sh = Shared {
        files,
        max,
        max_io,
        page,
        stop: AtomicBool::new(false),
        enabled: KINDS.iter().map(|_| AtomicBool::new(true)).collect(),
        disabled_why: std::sync::Mutex::new(Vec::new()),
        log: std::sync::Mutex::new(std::collections::VecDeque::new()),
    };
    let t0 = Instant::now();
    let mut total = Stats::default();
    let mut failure: Option<String> = None;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sh = &sh;
                let n = ops / threads + u64::from(t < ops % threads);
                s.spawn(move || {
                    let mut w =
                        Worker { sh, rng: Rng::stream(seed, t), stats: Stats::default(), thread: t, last_file: 0 };
                    let r = w.run(n);
                    if r.is_err() {
                        sh.stop.store(true, Ordering::Relaxed);
                    }
                    (t, r, w.stats, w.last_file)
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok((t, r, st, fi)) => {
                    total.add(&st);
                    if let Err(e) = r {
                        print_log(&sh, fi);
                        failure.get_or_insert(format!("thread {t}: {e}"));
                    }
                }
                Err(_) => {
                    failure.get_or_insert("a worker thread panicked".into());
                }
            }
        }
    });
    if failure.is_none()
        && let Err(e) = final_check(&sh)
    {
        failure = Some(e.0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let executed: u64 = total.ops.iter().sum();
    let per_kind: Vec<String> = KINDS.iter().zip(total.ops).map(|((_, n, _), c)| format!("{n}={c}")).collect();
    report::info(&format!("{NAME} ops {} total={executed}", per_kind.join(" ")));
    report::info(&format!(
        "{NAME} sigbus past_eof={} racy={} racy_exact_checks={} racy_weak_checks={} mismatches={} seconds={secs:.1}",
        total.sigbus_past_eof,
        total.sigbus_racy,
        total.racy_exact,
        total.racy_weak,
        u32::from(failure.is_some())
    ));
    let mut skipped: Vec<String> = sh.disabled_why.lock().map(|v| v.clone()).unwrap_or_default();
    if let Some(n) = &no_mmap {
        skipped.push(format!("{n}: mapped ops not run"));
        report::result(&format!("{NAME}.mmap"), Status::Skip, n);
    }
    for s in &skipped {
        report::info(&format!("{NAME} skipped {s}"));
    }
    match failure {
        Some(e) => {
            report::result(NAME, Status::Fail, &format!("seed={seed}: {e}"));
            Ok(1)
        }
        None => {
            report::result(
                NAME,
                Status::Pass,
                &format!(
                    "{executed} ops in {secs:.1}s, {} SIGBUS past EOF, {} racy SIGBUS{}",
                    total.sigbus_past_eof,
                    total.sigbus_racy,
                    if skipped.is_empty() { String::new() } else { format!(", skipped: {}", skipped.join("; ")) }
                ),
            );
            Ok(0)
        }
    }
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}
