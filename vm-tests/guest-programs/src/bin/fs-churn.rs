//! fs-churn — an fsstress-like load of our own: `--procs` forked processes,
//! each in its own directory `<mount>/<dir>/pN`, run random operations on a
//! pool of `--files` files for `--duration` seconds: create, many small
//! appends (bursts of up to `--burst` appends of 1-8 KiB: under DAX a mapped
//! 2 MiB slot whose file grows page by page collects one piece per growth;
//! half of the bursts first read the page at EOF through a mapping, so that
//! slot is mapped), large appends, pwrites below and past EOF, reads (of a
//! range, or of a whole file), shared-mapping reads and writes (through
//! `guest::probe`, so a SIGBUS is counted instead of killing the process),
//! ftruncate up and down, fallocate (allocate, keep-size, punch hole, zero
//! range), unlink, rename (to a fresh name and over another file of the
//! pool), mkdir/rmdir, fsync, stat, reopen and open with O_TRUNC.
//! `--hot-share` percent of the ops go to the first `--hot` files of the
//! pool, so some files stay mapped and keep growing.
//!
//! # The check
//!
//! A process is the only user of its directory, so it knows every file's
//! content exactly: a model per file of the size and of the ranges each
//! write left (an interval map from file offset to the write's pattern key;
//! what no write covers reads as zeros). Every write writes a pattern
//! derived from (process, file, generation, offset), every read (pread, a
//! mapped read, the read-back after a mapped write, the final pass over
//! every file) is compared byte for byte, and fstat's size against the
//! model. A mapped read may cross EOF: up to the end of the page holding EOF
//! the bytes are as modelled (zeros past EOF), the first page past it must
//! SIGBUS (counted); a SIGBUS below that is a failure.
//!
//! # Verdict
//!
//! Failures: a data or size mismatch, a SIGBUS below EOF, EIO from any call
//! (a refused SETUPMAPPING looks like that), ENOSPC (unless
//! `--allow-enospc`), any other unexpected errno, a process killed by a
//! signal or still running `--grace` seconds after the deadline. A file a
//! failed (or ENOSPC) operation touched is no longer checked until it is
//! truncated to zero, reopened with O_TRUNC or unlinked. "Not supported"
//! answers (fallocate modes: EOPNOTSUPP; shared mappings: ENODEV) disable
//! the op kind in that process and are reported as skips.
//!
//! Counters live in a shared anonymous mapping, so the parent prints
//! progress every `--progress` seconds (useful when the VM dies mid-run) and
//! the totals at the end.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use guest::args::{self, Opt, Parsed};
use guest::probe::{self, Copied};
use guest::report::{self, Status, is_unsupported};
use guest::rng::{Rng, splitmix64};
use guest::sys::{self, Exit, Mapping, errno_name};
use guest::{Context, Error, Result, bail, ensure};

const NAME: &str = "fs-churn";
const MAX_PROCS: usize = 64;
const MSG_LEN: usize = 480;
const NDIRS: usize = 8;
const LOG_KEEP: usize = 24;
/// Failure lines one process prints (all are counted).
const PRINT_FAILS: u64 = 6;

const OPTS: &[Opt] = &[
    Opt { name: "seed", default: Some("1"), help: "PRNG seed (process N uses stream N)" },
    Opt { name: "procs", default: Some("4"), help: "forked worker processes" },
    Opt { name: "duration", default: Some("45"), help: "seconds of random operations" },
    Opt { name: "files", default: Some("64"), help: "files per process" },
    Opt { name: "max-size", default: Some("4M"), help: "largest file size" },
    Opt { name: "max-io", default: Some("256K"), help: "longest large write/read" },
    Opt { name: "hot", default: Some("8"), help: "files f0..f(N-1) of each pool are hot (0: none)" },
    Opt { name: "hot-share", default: Some("50"), help: "percent of the ops aimed at the hot files" },
    Opt { name: "burst", default: Some("16"), help: "most small appends in a row to one file" },
    Opt { name: "small-min", default: Some("1K"), help: "shortest small append" },
    Opt { name: "small-max", default: Some("8K"), help: "longest small append" },
    Opt { name: "progress", default: Some("10"), help: "seconds between progress lines (0: none)" },
    Opt { name: "grace", default: Some("180"), help: "seconds after the deadline before a process counts as hung" },
    Opt { name: "dir", default: Some("fs-churn"), help: "work directory under the mount (recreated)" },
    Opt { name: "allow-enospc", default: None, help: "ENOSPC is counted and printed but not a failure" },
    Opt { name: "keep", default: None, help: "leave the files behind (default: remove them at the end)" },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Reopen,
    AppendSmall,
    AppendBig,
    Pwrite,
    PwritePastEof,
    Read,
    ReadFile,
    MapRead,
    MapWrite,
    TruncGrow,
    TruncShrink,
    Fallocate,
    Unlink,
    Rename,
    Mkdir,
    Rmdir,
    Fsync,
    OTrunc,
    Stat,
    Final,
}

const KINDS: [(Kind, &str, u32); 21] = [
    (Kind::Create, "create", 4),
    (Kind::Reopen, "reopen", 1),
    (Kind::AppendSmall, "append_small", 30),
    (Kind::AppendBig, "append_big", 4),
    (Kind::Pwrite, "pwrite", 8),
    (Kind::PwritePastEof, "pwrite_past_eof", 3),
    (Kind::Read, "read", 12),
    (Kind::ReadFile, "read_file", 3),
    (Kind::MapRead, "mread", 8),
    (Kind::MapWrite, "mwrite", 8),
    (Kind::TruncGrow, "trunc_grow", 2),
    (Kind::TruncShrink, "trunc_shrink", 3),
    (Kind::Fallocate, "fallocate", 3),
    (Kind::Unlink, "unlink", 2),
    (Kind::Rename, "rename", 2),
    (Kind::Mkdir, "mkdir", 1),
    (Kind::Rmdir, "rmdir", 1),
    (Kind::Fsync, "fsync", 2),
    (Kind::OTrunc, "otrunc", 1),
    (Kind::Stat, "stat", 3),
    // Not drawn: the final pass over every file.
    (Kind::Final, "final_check", 0),
];
const NKINDS: usize = KINDS.len();

fn kind_index(k: Kind) -> usize {
    KINDS.iter().position(|(x, _, _)| *x == k).unwrap_or(0)
}

fn kind_name(k: Kind) -> &'static str {
    KINDS.get(kind_index(k)).map_or("?", |x| x.1)
}

/// fallocate modes tried, with their names.
const FALLOC_MODES: [(&str, libc::c_int); 4] = [
    ("alloc", 0),
    ("keep_size", libc::FALLOC_FL_KEEP_SIZE),
    ("punch_hole", libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
    ("zero_range", libc::FALLOC_FL_ZERO_RANGE),
];

/// errno values counted one by one; larger ones share the last slot.
const NERRNO: usize = 134;

/// Counters shared by all processes (a MAP_SHARED anonymous mapping made
/// before the fork). Zero bytes are a valid value of every field.
#[repr(C)]
struct Counters {
    ops: [AtomicU64; NKINDS],
    op_errors: [AtomicU64; NKINDS],
    errno: [AtomicU64; NERRNO + 1],
    falloc_unsupported: [AtomicU64; FALLOC_MODES.len()],
    mmap_unsupported: AtomicU64,
    sigbus_past_eof: AtomicU64,
    sigbus_below_eof: AtomicU64,
    mismatches: AtomicU64,
    eio: AtomicU64,
    enospc: AtomicU64,
    unexpected: AtomicU64,
    internal: AtomicU64,
    bytes_written: AtomicU64,
    bytes_verified: AtomicU64,
    final_files: AtomicU64,
    /// Per process: the first failure's text (length in `msg_len`).
    msg_len: [AtomicU64; MAX_PROCS],
    msg: [[AtomicU8; MSG_LEN]; MAX_PROCS],
}

fn shared_counters() -> Result<&'static Counters> {
    let len = std::mem::size_of::<Counters>();
    // SAFETY: a fresh anonymous mapping chosen by the kernel (no MAP_FIXED);
    // the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap of the shared counters: {}", io::Error::last_os_error());
    }
    // SAFETY: the mapping is page aligned (enough for AtomicU64), zero filled
    // (a valid value of every atomic in Counters), at least
    // size_of::<Counters>() long and never unmapped, so a 'static shared
    // reference to it is sound. Every access goes through the atomics, also
    // from the forked children that share the mapping.
    Ok(unsafe { &*p.cast::<Counters>() })
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// One write's pattern key: process, file, generation.
fn pattern_key(proc_idx: usize, fid: u32, generation: u32) -> u64 {
    splitmix64(((proc_idx as u64) << 56) ^ (u64::from(fid) << 32) ^ u64::from(generation))
}

/// The pattern of key `key` at file offset `off`, into `buf`.
fn fill_pattern(buf: &mut [u8], key: u64, off: u64) {
    let mut i = 0;
    while i < buf.len() {
        let o = off + i as u64;
        let word = splitmix64(key ^ (o >> 3)).to_le_bytes();
        let start = (o & 7) as usize;
        let n = (8 - start).min(buf.len() - i);
        if let (Some(d), Some(s)) = (buf.get_mut(i..i + n), word.get(start..start + n)) {
            d.copy_from_slice(s);
        }
        i += n;
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// One range a write left: up to `end`, pattern `key`.
#[derive(Debug, Clone, Copy)]
struct Seg {
    end: u64,
    key: u64,
}

/// One file of a process's pool.
struct Slot {
    name: String,
    fd: File,
    map: Option<Mapping>,
    fid: u32,
    size: u64,
    /// Non-overlapping written ranges by start; gaps are zeros.
    segs: BTreeMap<u64, Seg>,
    /// A failed operation touched the file: its content is not checked.
    tainted: bool,
}

impl Slot {
    /// (start, end, key) of every segment overlapping [a, b).
    fn overlapping(&self, a: u64, b: u64) -> Vec<(u64, u64, u64)> {
        let mut v: Vec<_> = self
            .segs
            .range(..b)
            .rev()
            .take_while(|(_, s)| s.end > a)
            .map(|(&start, s)| (start, s.end, s.key))
            .collect();
        v.reverse();
        v
    }

    /// [a, b) reads as zeros from now on (as far as writes are concerned).
    fn clear(&mut self, a: u64, b: u64) {
        for (s, e, key) in self.overlapping(a, b) {
            self.segs.remove(&s);
            if s < a {
                self.segs.insert(s, Seg { end: a, key });
            }
            if e > b {
                self.segs.insert(b, Seg { end: e, key });
            }
        }
    }

    fn wrote(&mut self, a: u64, b: u64, key: u64) {
        if a < b {
            self.clear(a, b);
            self.segs.insert(a, Seg { end: b, key });
            self.size = self.size.max(b);
        }
    }

    fn truncate(&mut self, n: u64) {
        self.clear(n, u64::MAX);
        self.size = n;
        if n == 0 {
            self.tainted = false;
        }
    }

    /// The modelled bytes at [off, off + buf.len()) (zeros at and past EOF).
    fn expected(&self, off: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (s, e, key) in self.overlapping(off, end.min(self.size)) {
            let (a, b) = (s.max(off), e.min(end).min(self.size));
            if a < b
                && let Some(d) = buf.get_mut((a - off) as usize..(b - off) as usize)
            {
                fill_pattern(d, key, a);
            }
        }
    }
}

/// Why an operation failed.
enum Bad {
    /// A syscall error: what was done, the error.
    Sys(String, io::Error),
    /// Data or size differ from the model.
    Mismatch(String),
    /// A mapped access faulted below EOF.
    SigbusBelow(String),
    /// Anything else (a probe misuse, a bug here).
    Internal(String),
}

type OpResult = std::result::Result<(), Bad>;

fn sys_err(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> Bad {
    move |e| Bad::Sys(what(), e)
}

fn internal(e: Error) -> Bad {
    Bad::Internal(e.0)
}

/// Describe the first difference between `got` and `want` (at file offset `off`).
fn compare(what: &str, got: &[u8], want: &[u8], off: u64) -> OpResult {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (i + 16).min(got.len());
        let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
        return Err(Bad::Mismatch(format!(
            "{what}: {bad} byte(s) differ, first at file offset {:#x}: got {:02x?} want {:02x?}",
            off + i as u64,
            got.get(i..end).unwrap_or_default(),
            want.get(i..end).unwrap_or_default()
        )));
    }
    Ok(())
}

struct Config {
    burst: u64,
    hot: usize,
    hot_share: u64,
    seed: u64,
    keep: bool,
    nfiles: usize,
    max_size: u64,
    max_io: u64,
    small: (u64, u64),
    page: u64,
    allow_enospc: bool,
}

struct Worker<'a> {
    c: &'a Counters,
    cfg: &'a Config,
    idx: usize,
    dir: PathBuf,
    rng: Rng,
    slots: Vec<Option<Slot>>,
    dirs: [bool; NDIRS],
    next_fid: u32,
    next_gen: u32,
    rename_seq: u64,
    falloc_on: [bool; FALLOC_MODES.len()],
    mmap_on: bool,
    failures: u64,
    log: VecDeque<String>,
    buf: Vec<u8>,
    want: Vec<u8>,
}

impl Worker<'_> {
    fn note(&mut self, s: String) {
        if self.log.len() >= LOG_KEEP {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    fn fail(&mut self, msg: String) {
        self.failures += 1;
        let slot_len = self.c.msg_len.get(self.idx);
        if let (Some(len), Some(buf)) = (slot_len, self.c.msg.get(self.idx))
            && get(len) == 0
        {
            let text = format!("p{}: {msg}", self.idx);
            let bytes = text.as_bytes();
            let n = bytes.len().min(MSG_LEN);
            for (d, &s) in buf.iter().zip(bytes.iter().take(n)) {
                d.store(s, Ordering::Relaxed);
            }
            len.store(n as u64, Ordering::Release);
        }
        if self.failures <= PRINT_FAILS {
            report::info(&format!("{NAME} p{} FAIL {msg}", self.idx));
            if self.failures == 1 {
                for l in &self.log {
                    report::info(&format!("{NAME} p{} op log: {l}", self.idx));
                }
            }
        }
    }

    /// Count and judge a failed operation of kind `k` on file `fi`.
    fn bad(&mut self, k: Kind, fi: usize, b: Bad) {
        if let Some(c) = self.c.op_errors.get(kind_index(k)) {
            add(c, 1);
        }
        if let Some(Some(s)) = self.slots.get_mut(fi) {
            s.tainted = true;
        }
        let kn = kind_name(k);
        match b {
            Bad::Sys(what, e) => {
                let n = e.raw_os_error().map_or(NERRNO, |n| usize::try_from(n).unwrap_or(NERRNO).min(NERRNO));
                if let Some(c) = self.c.errno.get(n) {
                    add(c, 1);
                }
                let text = format!("{kn}: {what}: {} ({e})", errno_name(&e));
                match e.raw_os_error() {
                    Some(libc::EIO) => {
                        add(&self.c.eio, 1);
                        self.fail(text);
                    }
                    Some(libc::ENOSPC) => {
                        add(&self.c.enospc, 1);
                        if self.cfg.allow_enospc {
                            if get(&self.c.enospc) <= PRINT_FAILS {
                                report::info(&format!("{NAME} p{} ENOSPC (allowed) {text}", self.idx));
                            }
                        } else {
                            self.fail(text);
                        }
                    }
                    _ => {
                        add(&self.c.unexpected, 1);
                        self.fail(text);
                    }
                }
            }
            Bad::Mismatch(m) => {
                add(&self.c.mismatches, 1);
                self.fail(format!("{kn}: {m}"));
            }
            Bad::SigbusBelow(m) => {
                add(&self.c.sigbus_below_eof, 1);
                self.fail(format!("{kn}: {m}"));
            }
            Bad::Internal(m) => {
                add(&self.c.internal, 1);
                self.fail(format!("{kn}: {m}"));
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn slot(&mut self, fi: usize) -> std::result::Result<&mut Slot, Bad> {
        self.slots.get_mut(fi).and_then(Option::as_mut).ok_or_else(|| Bad::Internal(format!("file {fi} is absent")))
    }

    fn new_key(&mut self, fid: u32) -> u64 {
        self.next_gen = self.next_gen.wrapping_add(1);
        pattern_key(self.idx, fid, self.next_gen)
    }

    fn run(&mut self, deadline: Instant) {
        let weights: Vec<u32> = KINDS.iter().map(|(_, _, w)| *w).collect();
        while Instant::now() < deadline {
            let hot = self.cfg.hot.min(self.slots.len());
            let fi = if hot > 0 && self.rng.chance(self.cfg.hot_share, 100) {
                self.rng.below_usize(hot)
            } else {
                self.rng.below_usize(self.slots.len())
            };
            let mut k = KINDS.get(self.rng.weighted(&weights)).map_or(Kind::Read, |x| x.0);
            let present = self.slots.get(fi).is_some_and(Option::is_some);
            let needs_file = !matches!(k, Kind::Create | Kind::Mkdir | Kind::Rmdir);
            if !present && needs_file {
                k = Kind::Create;
            } else if present && k == Kind::Create {
                k = Kind::Reopen;
            }
            k = self.pick(fi, k);
            match self.op(fi, k) {
                Ok(()) => {
                    if let Some(c) = self.c.ops.get(kind_index(k)) {
                        add(c, 1);
                    }
                }
                Err(b) => self.bad(k, fi, b),
            }
        }
    }

    /// The op actually run for a drawn `k` on a present file `fi`: a full
    /// file is shrunk instead of grown, an empty one appended to instead of
    /// written through a mapping, and kinds that turned out unsupported fall
    /// back to their plain relatives (so the counts say what was done).
    fn pick(&self, fi: usize, k: Kind) -> Kind {
        let Some(Some(s)) = self.slots.get(fi) else { return k };
        let max = self.cfg.max_size;
        match k {
            Kind::AppendSmall | Kind::AppendBig if s.size + self.cfg.small.0 > max => Kind::TruncShrink,
            Kind::PwritePastEof if s.size + 1 >= max => Kind::TruncShrink,
            Kind::MapRead if !self.mmap_on => Kind::Read,
            Kind::MapWrite if !self.mmap_on => Kind::Pwrite,
            Kind::MapWrite if s.size == 0 => Kind::AppendSmall,
            Kind::Fallocate if !self.falloc_on.iter().any(|&on| on) => Kind::Pwrite,
            _ => k,
        }
    }

    fn op(&mut self, fi: usize, k: Kind) -> OpResult {
        match k {
            Kind::Create => self.create(fi),
            Kind::Reopen => {
                let drop_map = self.rng.chance(1, 2);
                let s = self.slot(fi)?;
                let (name, size) = (s.name.clone(), s.size);
                let p = self.path(&name);
                self.note(format!("reopen {name} size {size:#x} drop_map={drop_map}"));
                let fd =
                    OpenOptions::new().read(true).write(true).open(&p).map_err(sys_err(|| format!("open {name}")))?;
                let s = self.slot(fi)?;
                s.fd = fd;
                if drop_map {
                    s.map = None;
                }
                Ok(())
            }
            Kind::AppendBig => {
                let size = self.slot(fi)?.size;
                let len = self.rng.between(1, self.cfg.max_io).min(self.cfg.max_size - size).max(1);
                self.write(fi, size, len, k)
            }
            Kind::AppendSmall => {
                // A burst of 1..=--burst appends; each one counts as an op.
                let n = self.rng.between(1, self.cfg.burst);
                if self.mmap_on && self.slot(fi)?.size > 0 && self.rng.chance(1, 2) {
                    self.touch_eof(fi)?;
                }
                for i in 0..n {
                    let size = self.slot(fi)?.size;
                    if size + self.cfg.small.0 > self.cfg.max_size {
                        break;
                    }
                    let len = self.rng.between(self.cfg.small.0, self.cfg.small.1).min(self.cfg.max_size - size);
                    self.write(fi, size, len, k)?;
                    if i > 0
                        && let Some(c) = self.c.ops.get(kind_index(k))
                    {
                        add(c, 1);
                    }
                }
                Ok(())
            }
            Kind::Pwrite => {
                let size = self.slot(fi)?.size;
                let off = self.rng.below(size.max(1));
                let len = self.rng.between(1, self.cfg.max_io).min(self.cfg.max_size - off).max(1);
                self.write(fi, off, len, k)
            }
            Kind::PwritePastEof => {
                let size = self.slot(fi)?.size;
                let mut off = self.rng.between(size + 1, self.cfg.max_size - 1);
                if self.rng.chance(1, 2) {
                    off = (off & !(self.cfg.page - 1)).max(size);
                }
                let len = self.rng.between(1, 64 << 10).min(self.cfg.max_size - off).max(1);
                self.write(fi, off, len, k)
            }
            Kind::Read => self.read(fi),
            Kind::ReadFile => {
                let s = self.slot(fi)?;
                let (name, size) = (s.name.clone(), s.size);
                self.note(format!("read_file {name} size {size:#x}"));
                self.read_file(fi, size, "read_file")
            }
            Kind::MapRead => self.map_read(fi),
            Kind::MapWrite => self.map_write(fi),
            Kind::TruncGrow | Kind::TruncShrink => {
                let size = self.slot(fi)?.size;
                let mut new = if k == Kind::TruncGrow {
                    self.rng.between(size, self.cfg.max_size)
                } else {
                    self.rng.below(size + 1)
                };
                if self.rng.chance(1, 4) {
                    new &= !(self.cfg.page - 1);
                }
                let s = self.slot(fi)?;
                let name = s.name.clone();
                let r = s.fd.set_len(new);
                self.note(format!("{} {name} {size:#x} -> {new:#x}", kind_name(k)));
                r.map_err(sys_err(|| format!("ftruncate {name} to {new:#x}")))?;
                self.slot(fi)?.truncate(new);
                Ok(())
            }
            Kind::Fallocate => self.fallocate(fi),
            Kind::Unlink => {
                let name = self.slot(fi)?.name.clone();
                self.note(format!("unlink {name}"));
                std::fs::remove_file(self.path(&name)).map_err(sys_err(|| format!("unlink {name}")))?;
                if let Some(s) = self.slots.get_mut(fi) {
                    *s = None;
                }
                Ok(())
            }
            Kind::Rename => self.rename(fi),
            Kind::Mkdir | Kind::Rmdir => {
                let want = k == Kind::Mkdir;
                let start = self.rng.below_usize(NDIRS);
                // A directory in the state the op needs; else the other op.
                let (d, mkdir) = match (0..NDIRS).map(|i| (start + i) % NDIRS).find(|&d| self.dirs[d] != want) {
                    Some(d) => (d, want),
                    None => (start, !want),
                };
                let p = self.path(&format!("d{d}"));
                self.note(format!("{} d{d}", if mkdir { "mkdir" } else { "rmdir" }));
                if mkdir {
                    std::fs::create_dir(&p).map_err(sys_err(|| format!("mkdir d{d}")))?;
                } else {
                    std::fs::remove_dir(&p).map_err(sys_err(|| format!("rmdir d{d}")))?;
                }
                self.dirs[d] = mkdir;
                Ok(())
            }
            Kind::Fsync => {
                let data_only = self.rng.chance(1, 2);
                let s = self.slot(fi)?;
                let name = s.name.clone();
                let r = if data_only { s.fd.sync_data() } else { s.fd.sync_all() };
                self.note(format!("fsync {name} data_only={data_only}"));
                r.map_err(sys_err(|| format!("fsync {name}")))
            }
            Kind::OTrunc => {
                let s = self.slot(fi)?;
                let (name, size) = (s.name.clone(), s.size);
                let len = if self.rng.chance(1, 2) { self.rng.between(1, 64 << 10) } else { 0 };
                self.note(format!("otrunc {name} size {size:#x}, then write 0+{len:#x}"));
                let fd = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(self.path(&name))
                    .map_err(sys_err(|| format!("open O_TRUNC {name}")))?;
                let s = self.slot(fi)?;
                s.fd = fd;
                s.truncate(0);
                if len > 0 {
                    self.write(fi, 0, len, k)?;
                }
                Ok(())
            }
            Kind::Stat => {
                let by_path = self.rng.chance(1, 2);
                let s = self.slot(fi)?;
                let (name, size, tainted) = (s.name.clone(), s.size, s.tainted);
                let m = if by_path { std::fs::metadata(self.path(&name)) } else { self.slot(fi)?.fd.metadata() };
                let m = m.map_err(sys_err(|| format!("stat {name}")))?;
                if !tainted && m.len() != size {
                    return Err(Bad::Mismatch(format!(
                        "{} {name}: size {:#x}, model {size:#x}",
                        if by_path { "stat" } else { "fstat" },
                        m.len()
                    )));
                }
                Ok(())
            }
            Kind::Final => Ok(()),
        }
    }

    fn create(&mut self, fi: usize) -> OpResult {
        let name = format!("f{fi}");
        self.note(format!("create {name}"));
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(self.path(&name))
            .map_err(sys_err(|| format!("create {name}")))?;
        self.next_fid += 1;
        let slot = Slot { name, fd, map: None, fid: self.next_fid, size: 0, segs: BTreeMap::new(), tainted: false };
        if let Some(s) = self.slots.get_mut(fi) {
            *s = Some(slot);
        }
        if self.rng.chance(1, 2) {
            let len = self.rng.between(1, self.cfg.max_io);
            self.write(fi, 0, len, Kind::Create)?;
        }
        Ok(())
    }

    /// pwrite [off, off + len) with a fresh pattern and record it.
    fn write(&mut self, fi: usize, off: u64, len: u64, k: Kind) -> OpResult {
        let fid = self.slot(fi)?.fid;
        let key = self.new_key(fid);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        fill_pattern(&mut buf, key, off);
        let s = self.slot(fi)?;
        let (name, size) = (s.name.clone(), s.size);
        let r = s.fd.write_all_at(&buf, off);
        self.buf = buf;
        self.note(format!("{} {name} {off:#x}+{len:#x} size {size:#x}", kind_name(k)));
        r.map_err(sys_err(|| format!("pwrite {name} {off:#x}+{len:#x}")))?;
        self.slot(fi)?.wrote(off, off + len, key);
        add(&self.c.bytes_written, len);
        Ok(())
    }

    /// pread [off, off + len) and compare with the model (short at EOF).
    fn pread_check(&mut self, fi: usize, off: u64, len: u64, what: &str) -> OpResult {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let s = self.slot(fi)?;
        let mut done = 0usize;
        let mut err = None;
        while done < buf.len() {
            match s.fd.read_at(buf.get_mut(done..).unwrap_or_default(), off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let (name, size, tainted) = (s.name.clone(), s.size, s.tainted);
        let r = self.check_read(fi, &buf, done, err, (off, len, size, tainted, &name, what));
        self.buf = buf;
        r
    }

    fn check_read(
        &mut self,
        fi: usize,
        buf: &[u8],
        done: usize,
        err: Option<io::Error>,
        (off, len, size, tainted, name, what): (u64, u64, u64, bool, &str, &str),
    ) -> OpResult {
        if let Some(e) = err {
            return Err(Bad::Sys(format!("{what} {name} {off:#x}+{len:#x}"), e));
        }
        if tainted {
            return Ok(());
        }
        let want_len = size.saturating_sub(off).min(len) as usize;
        if done != want_len {
            return Err(Bad::Mismatch(format!(
                "{what} {name} {off:#x}+{len:#x}: {done} bytes, want {want_len} (model size {size:#x})"
            )));
        }
        let mut want = std::mem::take(&mut self.want);
        want.resize(done, 0);
        let r = match self.slot(fi) {
            Ok(s) => {
                s.expected(off, &mut want);
                compare(&format!("{what} {name} {off:#x}+{len:#x}"), buf.get(..done).unwrap_or_default(), &want, off)
            }
            Err(b) => Err(b),
        };
        self.want = want;
        if r.is_ok() {
            add(&self.c.bytes_verified, done as u64);
        }
        r
    }

    fn read(&mut self, fi: usize) -> OpResult {
        let size = self.slot(fi)?.size;
        let off = self.rng.below(size + 8192);
        let len =
            if self.rng.chance(1, 2) { self.rng.between(1, 16 << 10) } else { self.rng.between(1, self.cfg.max_io) };
        let name = self.slot(fi)?.name.clone();
        self.note(format!("read {name} {off:#x}+{len:#x} size {size:#x}"));
        self.pread_check(fi, off, len, "pread")
    }

    /// pread the whole file (1 MiB at a time; one more byte than its size,
    /// so a file longer than modelled is caught) and compare.
    fn read_file(&mut self, fi: usize, size: u64, what: &str) -> OpResult {
        let chunk = 1u64 << 20;
        let mut off = 0;
        loop {
            let len = chunk.min(size + 1 - off);
            self.pread_check(fi, off, len, what)?;
            off += len;
            if off > size {
                return Ok(());
            }
        }
    }

    /// The file's shared mapping of `max_size` bytes (made on first use).
    /// `Ok(false)`: the mount refuses shared mappings (mapped ops are off).
    fn ensure_map(&mut self, fi: usize) -> std::result::Result<bool, Bad> {
        let max = self.cfg.max_size as usize;
        let s = self.slot(fi)?;
        if s.map.is_some() {
            return Ok(true);
        }
        match Mapping::new(&s.fd, 0, max, true) {
            Ok(m) => {
                s.map = Some(m);
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                self.mmap_on = false;
                add(&self.c.mmap_unsupported, 1);
                report::info(&format!("{NAME} p{} skipping mapped ops: mmap MAP_SHARED: {}", self.idx, errno_name(&e)));
                Ok(false)
            }
            Err(e) => {
                let name = s.name.clone();
                Err(Bad::Sys(format!("mmap {name} 0+{max:#x}"), e))
            }
        }
    }

    fn map_read(&mut self, fi: usize) -> OpResult {
        if !self.ensure_map(fi)? {
            return self.read(fi);
        }
        let (max, page) = (self.cfg.max_size, self.cfg.page);
        let size = self.slot(fi)?.size;
        let (off, len) = if self.rng.chance(1, 4) || size == 0 {
            // Around EOF, often crossing into the pages past it.
            let off = self.rng.between(size.saturating_sub(2 * page), (size + page).min(max - 1));
            (off, self.rng.between(1, 3 * page))
        } else {
            (self.rng.below(size), self.rng.between(1, 64 << 10))
        };
        let len = len.min(max - off);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let s = self.slot(fi)?;
        let (name, tainted) = (s.name.clone(), s.tainted);
        let r = match &s.map {
            Some(m) => probe::read(m, off as usize, &mut buf).map_err(internal),
            None => Err(Bad::Internal("no mapping".into())),
        };
        self.note(format!("mread {name} {off:#x}+{len:#x} size {size:#x}"));
        let r = r.and_then(|r| self.judge_mapped(fi, &buf, r, (off, size, tainted, &name)));
        self.buf = buf;
        r
    }

    /// A mapped read of `buf.len()` bytes at `off` ended as `r`: bytes up
    /// to the end of the page holding EOF as modelled, a SIGBUS exactly at
    /// the first page wholly past EOF.
    fn judge_mapped(
        &mut self,
        fi: usize,
        buf: &[u8],
        r: Copied,
        (off, size, tainted, name): (u64, u64, bool, &str),
    ) -> OpResult {
        let valid_end = round_up(size, self.cfg.page);
        let end = off + buf.len() as u64;
        let what = format!("mread {name} {off:#x}+{:#x} (size {size:#x})", buf.len());
        let done = match r {
            Copied::All => {
                if end > valid_end && !tainted {
                    return Err(Bad::Mismatch(format!(
                        "{what}: no SIGBUS past EOF (pages valid up to {valid_end:#x})"
                    )));
                }
                buf.len()
            }
            Copied::Fault { done, fault_off } => {
                let fault_off = fault_off as u64;
                if fault_off < valid_end {
                    return Err(Bad::SigbusBelow(format!("{what}: SIGBUS at {fault_off:#x}, below EOF")));
                }
                if fault_off != off.max(valid_end) && !tainted {
                    return Err(Bad::Mismatch(format!(
                        "{what}: SIGBUS at {fault_off:#x}, want it at {:#x}",
                        off.max(valid_end)
                    )));
                }
                add(&self.c.sigbus_past_eof, 1);
                done
            }
        };
        if tainted {
            return Ok(());
        }
        let mut want = std::mem::take(&mut self.want);
        want.resize(done, 0);
        let r = match self.slot(fi) {
            Ok(s) => {
                s.expected(off, &mut want);
                match compare(&what, buf.get(..done).unwrap_or_default(), &want, off) {
                    // Say whether read(2) sees the same thing as the mapping.
                    Err(Bad::Mismatch(m)) => {
                        let mut again = vec![0u8; done];
                        let pread = match s.fd.read_at(&mut again, off) {
                            Ok(n) if n == done && again == want => "pread of the range matches the model".to_owned(),
                            Ok(n) if again.get(..n) == buf.get(..n) => {
                                format!("pread ({n} bytes) shows what the mapping showed")
                            }
                            Ok(n) => format!("pread ({n} bytes) differs from both"),
                            Err(e) => format!("pread: {e}"),
                        };
                        Err(Bad::Mismatch(format!("{m}; {pread}")))
                    }
                    r => r,
                }
            }
            Err(b) => Err(b),
        };
        self.want = want;
        if r.is_ok() {
            add(&self.c.bytes_verified, done as u64);
        }
        r
    }

    /// Read the page holding EOF through the mapping (checked), so that
    /// under DAX the file's last slot is mapped while the file grows.
    fn touch_eof(&mut self, fi: usize) -> OpResult {
        if !self.ensure_map(fi)? {
            return Ok(());
        }
        let page = self.cfg.page;
        let s = self.slot(fi)?;
        let (name, size, tainted) = (s.name.clone(), s.size, s.tainted);
        let off = size.saturating_sub(1) & !(page - 1);
        let len = page.min(self.cfg.max_size - off);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let r = match &self.slot(fi)?.map {
            Some(m) => probe::read(m, off as usize, &mut buf).map_err(internal),
            None => Err(Bad::Internal("no mapping".into())),
        };
        let r = r.and_then(|r| self.judge_mapped(fi, &buf, r, (off, size, tainted, &name)));
        self.buf = buf;
        r
    }

    fn map_write(&mut self, fi: usize) -> OpResult {
        let size = self.slot(fi)?.size;
        if !self.ensure_map(fi)? || size == 0 {
            return self.op(fi, Kind::Pwrite);
        }
        let off = self.rng.below(size);
        let len = self.rng.between(1, 64 << 10).min(size - off);
        let fid = self.slot(fi)?.fid;
        let key = self.new_key(fid);
        let msync = self.rng.chance(1, 4);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        fill_pattern(&mut buf, key, off);
        let s = self.slot(fi)?;
        let name = s.name.clone();
        let r = match &s.map {
            Some(m) => probe::write(m, off as usize, &buf).map_err(internal),
            None => Err(Bad::Internal("no mapping".into())),
        };
        self.buf = buf;
        self.note(format!("mwrite {name} {off:#x}+{len:#x} size {size:#x} msync={msync}"));
        match r? {
            Copied::All => {}
            Copied::Fault { fault_off, .. } => {
                return Err(Bad::SigbusBelow(format!(
                    "mwrite {name} {off:#x}+{len:#x}: SIGBUS at {fault_off:#x}, size {size:#x}"
                )));
            }
        }
        add(&self.c.bytes_written, len);
        let s = self.slot(fi)?;
        s.wrote(off, off + len, key);
        if msync && let Some(m) = &s.map {
            m.msync().map_err(sys_err(|| format!("msync {name}")))?;
        }
        // What was written through the mapping must read back through read(2).
        self.pread_check(fi, off, len, "pread after mwrite")
    }

    fn fallocate(&mut self, fi: usize) -> OpResult {
        let on: Vec<usize> = (0..FALLOC_MODES.len()).filter(|&m| self.falloc_on[m]).collect();
        let m = on.get(self.rng.below_usize(on.len())).copied().unwrap_or(0);
        let Some(&(mode_name, mode)) = FALLOC_MODES.get(m) else { return Ok(()) };
        let max = self.cfg.max_size;
        let off = self.rng.below(max);
        let len = self.rng.between(1, 4 * self.cfg.max_io).min(max - off);
        let s = self.slot(fi)?;
        let (name, size) = (s.name.clone(), s.size);
        let r = sys::fallocate(&s.fd, mode, off, len);
        self.note(format!("fallocate {mode_name} {name} {off:#x}+{len:#x} size {size:#x}"));
        match r {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => {
                self.falloc_on[m] = false;
                if let Some(c) = self.c.falloc_unsupported.get(m) {
                    add(c, 1);
                }
                return Ok(());
            }
            Err(e) => return Err(Bad::Sys(format!("fallocate {mode_name} {name} {off:#x}+{len:#x}"), e)),
        }
        let s = self.slot(fi)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            s.clear(off, off + len);
        }
        if !keep {
            s.size = s.size.max(off + len);
        }
        Ok(())
    }

    fn rename(&mut self, fi: usize) -> OpResult {
        let others: Vec<usize> =
            (0..self.slots.len()).filter(|&j| j != fi && self.slots.get(j).is_some_and(Option::is_some)).collect();
        let over = if self.rng.chance(1, 4) { others.get(self.rng.below_usize(others.len())).copied() } else { None };
        let from = self.slot(fi)?.name.clone();
        let to = match over {
            Some(j) => self.slot(j)?.name.clone(),
            None => {
                self.rename_seq += 1;
                format!("f{fi}.r{}", self.rename_seq)
            }
        };
        self.note(format!("rename {from} -> {to}{}", if over.is_some() { " (replacing)" } else { "" }));
        std::fs::rename(self.path(&from), self.path(&to)).map_err(sys_err(|| format!("rename {from} -> {to}")))?;
        match over {
            Some(j) => {
                let mut moved = self.slots.get_mut(fi).and_then(Option::take);
                if let Some(m) = moved.as_mut() {
                    m.name = to;
                }
                // The replaced file's fd and mapping go with its slot.
                if let Some(s) = self.slots.get_mut(j) {
                    *s = moved;
                }
            }
            None => self.slot(fi)?.name = to,
        }
        Ok(())
    }

    /// After the deadline: every file's size, content (pread) and valid
    /// mapped pages against the model.
    fn final_check(&mut self) {
        for fi in 0..self.slots.len() {
            let Some(s) = self.slots.get(fi).and_then(Option::as_ref) else { continue };
            if s.tainted {
                continue;
            }
            let (name, size) = (s.name.clone(), s.size);
            self.note(format!("final {name} size {size:#x}"));
            let r = (|| -> OpResult {
                let st = self.slot(fi)?.fd.metadata().map_err(sys_err(|| format!("fstat {name}")))?;
                if st.len() != size {
                    return Err(Bad::Mismatch(format!("final fstat {name}: size {:#x}, model {size:#x}", st.len())));
                }
                self.read_file(fi, size, "final pread")?;
                let chunk = 1u64 << 20;
                if self.slot(fi)?.map.is_some() {
                    let valid = round_up(size, self.cfg.page).min(self.cfg.max_size);
                    let mut off = 0;
                    while off < valid {
                        let len = chunk.min(valid - off);
                        let mut buf = std::mem::take(&mut self.buf);
                        buf.resize(len as usize, 0);
                        let r = match &self.slot(fi)?.map {
                            Some(m) => probe::read(m, off as usize, &mut buf).map_err(internal),
                            None => Err(Bad::Internal("no mapping".into())),
                        };
                        let r = r.and_then(|r| self.judge_mapped(fi, &buf, r, (off, size, false, &name)));
                        self.buf = buf;
                        r?;
                        off += len;
                    }
                }
                Ok(())
            })();
            match r {
                Ok(()) => {
                    add(&self.c.final_files, 1);
                    if let Some(c) = self.c.ops.get(kind_index(Kind::Final)) {
                        add(c, 1);
                    }
                }
                Err(b) => self.bad(Kind::Final, fi, b),
            }
        }
    }
}

/// The child: set up `dir`, run until `deadline`, check, clean up.
fn child(c: &Counters, cfg: &Config, idx: usize, dir: PathBuf, deadline: Instant) -> i32 {
    let mut w = Worker {
        c,
        cfg,
        idx,
        dir: dir.clone(),
        rng: Rng::stream(cfg.seed, idx as u64),
        slots: (0..cfg.nfiles).map(|_| None).collect(),
        dirs: [false; NDIRS],
        next_fid: 0,
        next_gen: 0,
        rename_seq: 0,
        falloc_on: [true; FALLOC_MODES.len()],
        mmap_on: true,
        failures: 0,
        log: VecDeque::new(),
        buf: Vec::new(),
        want: Vec::new(),
    };
    if let Err(e) = std::fs::create_dir(&dir) {
        w.bad(Kind::Mkdir, usize::MAX, Bad::Sys(format!("mkdir {}", dir.display()), e));
        return 1;
    }
    // The pool starts full (empty files), so the first ops have files to work on.
    for fi in 0..cfg.nfiles {
        if let Err(b) = w.create(fi) {
            w.bad(Kind::Create, fi, b);
        } else if let Some(cnt) = c.ops.get(kind_index(Kind::Create)) {
            add(cnt, 1);
        }
    }
    if idx == 0 {
        let paths: Vec<PathBuf> = w.slots.iter().flatten().map(|s| dir.join(&s.name)).collect();
        report::info(&format!("{NAME} p0 dax_files={}", sys::dax_summary(paths.iter().map(PathBuf::as_path))));
    }
    w.run(deadline);
    w.final_check();
    if !cfg.keep {
        w.slots.clear();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            w.bad(Kind::Unlink, usize::MAX, Bad::Sys(format!("remove {}", dir.display()), e));
        }
    }
    i32::from(w.failures > 0)
}

fn counts_line(c: &Counters) -> String {
    let per_kind: Vec<String> = KINDS.iter().zip(&c.ops).map(|((_, n, _), v)| format!("{n}={}", get(v))).collect();
    let total: u64 = c.ops.iter().map(get).sum();
    format!("{} total={total}", per_kind.join(" "))
}

fn errors_line(c: &Counters) -> String {
    let mut v: Vec<String> = Vec::new();
    for (n, cnt) in c.errno.iter().enumerate() {
        let cnt = get(cnt);
        if cnt > 0 {
            let name = if n == NERRNO {
                "other".to_owned()
            } else {
                errno_name(&io::Error::from_raw_os_error(i32::try_from(n).unwrap_or(0)))
            };
            v.push(format!("{name}={cnt}"));
        }
    }
    let by_kind: Vec<String> = KINDS
        .iter()
        .zip(&c.op_errors)
        .filter(|(_, e)| get(e) > 0)
        .map(|((_, n, _), e)| format!("{n}={}", get(e)))
        .collect();
    format!(
        "by_errno {} by_op {}",
        if v.is_empty() { "none".to_owned() } else { v.join(" ") },
        if by_kind.is_empty() { "none".to_owned() } else { by_kind.join(" ") }
    )
}

fn checks_line(c: &Counters) -> String {
    format!(
        "sigbus_past_eof={} sigbus_below_eof={} mismatches={} eio={} enospc={} unexpected_errors={} internal={} \
         bytes_written={} bytes_verified={} final_files_checked={}",
        get(&c.sigbus_past_eof),
        get(&c.sigbus_below_eof),
        get(&c.mismatches),
        get(&c.eio),
        get(&c.enospc),
        get(&c.unexpected),
        get(&c.internal),
        get(&c.bytes_written),
        get(&c.bytes_verified),
        get(&c.final_files)
    )
}

fn first_message(c: &Counters, idx: usize) -> Option<String> {
    let n = c.msg_len.get(idx).map(|l| l.load(Ordering::Acquire))? as usize;
    if n == 0 {
        return None;
    }
    let bytes: Vec<u8> = c.msg.get(idx)?.iter().take(n).map(|b| b.load(Ordering::Relaxed)).collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn run() -> Result<i32> {
    let args = match args::parse(
        NAME,
        "fsstress-like churn: processes doing random file operations, checked against a model",
        OPTS,
        std::env::args().skip(1),
    )? {
        Parsed::Help(u) => {
            print!("{u}");
            return Ok(0);
        }
        Parsed::Run(a) => a,
    };
    probe::install()?;
    let page = sys::page_size() as u64;
    let (seed, procs, duration) = (args.u64("seed")?, args.usize("procs")?.max(1), args.u64("duration")?);
    ensure!(procs <= MAX_PROCS, "--procs: at most {MAX_PROCS}");
    let cfg = Config {
        burst: args.u64("burst")?.max(1),
        hot: args.usize("hot")?,
        hot_share: args.u64("hot-share")?.min(100),
        seed,
        keep: args.flag("keep"),
        nfiles: args.usize("files")?.max(1),
        max_size: args.u64("max-size")?,
        max_io: args.u64("max-io")?.max(1),
        small: (args.u64("small-min")?.max(1), args.u64("small-max")?),
        page,
        allow_enospc: args.flag("allow-enospc"),
    };
    ensure!(
        cfg.max_size >= 2 * page && cfg.max_size.is_multiple_of(page),
        "--max-size must be a multiple of {page}, >= 2 pages"
    );
    ensure!(cfg.small.1 >= cfg.small.0, "--small-max must be >= --small-min");
    let (progress, grace) = (args.u64("progress")?, args.u64("grace")?);
    let base = args.mount.join(args.str("dir")?);
    if base.exists() {
        std::fs::remove_dir_all(&base).with_ctx(|| format!("remove {}", base.display()))?;
    }
    std::fs::create_dir(&base).with_ctx(|| format!("mkdir {}", base.display()))?;
    report::info(&format!(
        "{NAME} config seed={seed} procs={procs} duration={duration}s files={} hot={}@{}% max-size={} max-io={} small={}-{}x{} page={page} allow-enospc={}",
        cfg.nfiles,
        cfg.hot,
        cfg.hot_share,
        cfg.max_size,
        cfg.max_io,
        cfg.small.0,
        cfg.small.1,
        cfg.burst,
        cfg.allow_enospc
    ));
    let c = shared_counters()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(duration);
    let mut pids = Vec::new();
    for i in 0..procs {
        match sys::fork() {
            Ok(None) => {
                let code = child(c, &cfg, i, base.join(format!("p{i}")), deadline);
                sys::child_exit(code);
            }
            Ok(Some(pid)) => pids.push((i, pid, None::<Exit>)),
            Err(e) => {
                for (_, pid, _) in &pids {
                    sys::kill(*pid);
                    let _ = sys::wait(*pid);
                }
                bail!("fork: {e}");
            }
        }
    }
    let mut next_progress = t0 + Duration::from_secs(progress);
    let hard_end = deadline + Duration::from_secs(grace);
    let mut hung = Vec::new();
    let mut wait_err = None;
    while pids.iter().any(|p| p.2.is_none()) {
        std::thread::sleep(Duration::from_millis(200));
        for (i, pid, st) in pids.iter_mut().filter(|p| p.2.is_none()) {
            match sys::try_wait(*pid) {
                Ok(Some(e)) => *st = Some(e),
                Ok(None) => {
                    if Instant::now() >= hard_end {
                        hung.push(*i);
                        sys::kill(*pid);
                        *st = Some(sys::wait(*pid).unwrap_or(Exit::Signal(libc::SIGKILL)));
                    }
                }
                Err(e) => {
                    wait_err.get_or_insert(format!("waitpid p{i}: {e}"));
                    *st = Some(Exit::Code(-1));
                }
            }
        }
        if progress > 0 && Instant::now() >= next_progress {
            next_progress += Duration::from_secs(progress);
            report::info(&format!(
                "{NAME} progress t={}s ops {} | {} | errors {}",
                t0.elapsed().as_secs(),
                counts_line(c),
                checks_line(c),
                errors_line(c)
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    report::info(&format!("{NAME} ops {}", counts_line(c)));
    report::info(&format!("{NAME} errors {}", errors_line(c)));
    report::info(&format!("{NAME} checks {} seconds={secs:.1}", checks_line(c)));
    let mut skips: Vec<String> = FALLOC_MODES
        .iter()
        .zip(&c.falloc_unsupported)
        .filter(|(_, n)| get(n) > 0)
        .map(|((name, _), _)| format!("fallocate {name} (EOPNOTSUPP)"))
        .collect();
    if get(&c.mmap_unsupported) > 0 {
        skips.push("mapped reads/writes (mmap MAP_SHARED: ENODEV)".into());
    }
    for s in &skips {
        report::info(&format!("{NAME} skipped {s}"));
    }

    let mut problems = Vec::new();
    let fails = [
        ("SIGBUS below EOF", get(&c.sigbus_below_eof)),
        ("data/size mismatches", get(&c.mismatches)),
        ("EIO", get(&c.eio)),
        ("ENOSPC", if cfg.allow_enospc { 0 } else { get(&c.enospc) }),
        ("unexpected errors", get(&c.unexpected)),
        ("internal errors", get(&c.internal)),
    ];
    for (what, n) in fails {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    for (i, _, st) in &pids {
        match st {
            Some(Exit::Code(0)) => {}
            Some(Exit::Code(1)) => {}
            Some(Exit::Code(n)) => problems.push(format!("p{i} exited with {n}")),
            Some(Exit::Signal(s)) if hung.contains(i) => {
                problems.push(format!("p{i} still running {grace}s after the deadline (killed, signal {s})"))
            }
            Some(Exit::Signal(s)) => problems.push(format!("p{i} killed by signal {s}")),
            None => problems.push(format!("p{i}: no exit status")),
        }
    }
    if let Some(e) = wait_err {
        problems.push(e);
    }
    let first = (0..procs).find_map(|i| first_message(c, i));
    let total: u64 = c.ops.iter().map(get).sum();
    if problems.is_empty() && first.is_none() {
        report::result(
            NAME,
            Status::Pass,
            &format!(
                "{total} ops by {procs} processes in {secs:.1}s, {} bytes verified, {} SIGBUS past EOF, {} ENOSPC{}",
                get(&c.bytes_verified),
                get(&c.sigbus_past_eof),
                get(&c.enospc),
                if skips.is_empty() { String::new() } else { format!(", skipped: {}", skips.join("; ")) }
            ),
        );
        return Ok(0);
    }
    report::result(
        NAME,
        Status::Fail,
        &format!(
            "seed={seed}: {}; first: {}",
            if problems.is_empty() { "a process failed".to_owned() } else { problems.join(", ") },
            first.as_deref().unwrap_or("-")
        ),
    );
    Ok(1)
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval model against a plain byte vector, over random writes,
    /// clears (punch/zero), truncates and extensions.
    #[test]
    fn interval_model_matches_a_byte_model() -> Result<()> {
        let path = std::env::temp_dir().join(format!("fs-churn-test-{}", std::process::id()));
        let fd = File::create(&path).ctx("create")?;
        let _ = std::fs::remove_file(&path);
        let mut s = Slot { name: "t".into(), fd, map: None, fid: 1, size: 0, segs: BTreeMap::new(), tainted: false };
        let max = 64 * 1024u64;
        let mut bytes = vec![0u8; max as usize];
        let mut rng = Rng::new(3);
        for round in 0..3000u32 {
            let a = rng.below(max);
            let b = rng.between(a, max.min(a + 9000));
            match rng.below(4) {
                0 | 1 => {
                    let key = pattern_key(0, 1, round);
                    fill_pattern(bytes.get_mut(a as usize..b as usize).unwrap_or_default(), key, a);
                    s.wrote(a, b, key);
                }
                2 => {
                    bytes.get_mut(a as usize..b as usize).unwrap_or_default().fill(0);
                    s.clear(a, b);
                    s.size = s.size.max(b);
                }
                _ => {
                    let n = rng.below(max);
                    if n < s.size {
                        bytes.get_mut(n as usize..).unwrap_or_default().fill(0);
                    }
                    s.truncate(n);
                }
            }
            let (x, y) = (rng.below(max), rng.below(max));
            let (x, y) = (x.min(y), x.max(y));
            let mut got = vec![0u8; (y - x) as usize];
            s.expected(x, &mut got);
            let mut want = bytes.get(x as usize..y as usize).unwrap_or_default().to_vec();
            // Past the modelled size everything reads as zero.
            for (i, w) in want.iter_mut().enumerate() {
                if x + i as u64 >= s.size {
                    *w = 0;
                }
            }
            ensure!(got == want, "round {round}: model differs in {x:#x}..{y:#x}");
            let mut prev = 0;
            for (&start, seg) in &s.segs {
                ensure!(start >= prev && seg.end > start, "round {round}: segments overlap or are empty");
                prev = seg.end;
            }
        }
        Ok(())
    }
}
