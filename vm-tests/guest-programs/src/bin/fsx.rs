//! fsx — a file-system exerciser in the spirit of BSD fsx (written anew, not
//! a port): random reads, writes, mapped reads, mapped writes, truncates,
//! hole punches, zero ranges, fallocates, fsyncs, O_DIRECT reads and writes
//! and reopens on one file, checked byte for byte against an in-memory
//! model. Seeded (`--seed`), so a failing run is reproduced exactly by the
//! same seed and op count.
//!
//! Every read compares what it returned; every `--verify-every` ops and at
//! the end the whole file is read back (pread and, if available, a mapping).
//! Mapped reads of the page holding EOF also check that the bytes past EOF
//! read as zeros, and mapped writes past EOF first extend the file with
//! ftruncate (writes through a mapping past EOF are not file data).
//!
//! Op kinds the mount cannot do are detected and skipped (reported as
//! DAXFSD-INFO lines): O_DIRECT (EINVAL unless the daemon honours direct
//! I/O), shared mappings (ENODEV), fallocate modes (EOPNOTSUPP).
//! On a mismatch the tail of the op log and the first differing offset are
//! printed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use guest::args::{self, Opt, Parsed};
use guest::probe::{self, Copied};
use guest::report::{self, Status, is_unsupported};
use guest::rng::Rng;
use guest::sys::{self, Mapping, errno_name};
use guest::{Context, Result, bail, ensure};

const NAME: &str = "fsx";

const OPTS: &[Opt] = &[
    Opt { name: "seed", default: Some("1"), help: "PRNG seed" },
    Opt { name: "ops", default: Some("5000"), help: "operations" },
    Opt { name: "max-size", default: Some("3M"), help: "largest file size" },
    Opt { name: "max-io", default: Some("64K"), help: "longest single I/O" },
    Opt { name: "file", default: Some("fsx/fsx.data"), help: "file under the mount (its directory is created)" },
    Opt { name: "direct", default: Some("auto"), help: "O_DIRECT ops: auto (skip if refused), on, off" },
    Opt { name: "verify-every", default: Some("1000"), help: "full-file check every N ops (0: only at the end)" },
    Opt { name: "log", default: Some("40"), help: "op log lines printed on a failure" },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    MapRead,
    MapWrite,
    Truncate,
    Punch,
    Zero,
    Falloc,
    Fsync,
    DirectRead,
    DirectWrite,
    Reopen,
}

const KINDS: [(Kind, &str, u32); 12] = [
    (Kind::Read, "read", 12),
    (Kind::Write, "write", 12),
    (Kind::MapRead, "mapread", 10),
    (Kind::MapWrite, "mapwrite", 10),
    (Kind::Truncate, "truncate", 7),
    (Kind::Punch, "punch_hole", 5),
    (Kind::Zero, "zero_range", 5),
    (Kind::Falloc, "fallocate", 3),
    (Kind::Fsync, "fsync", 2),
    (Kind::DirectRead, "direct_read", 5),
    (Kind::DirectWrite, "direct_write", 5),
    (Kind::Reopen, "reopen", 1),
];

fn idx(k: Kind) -> usize {
    KINDS.iter().position(|(x, _, _)| *x == k).unwrap_or(0)
}

const DIO_ALIGN: usize = 4096;

struct Fsx {
    path: PathBuf,
    f: File,
    direct: Option<File>,
    model: Vec<u8>,
    rng: Rng,
    page: usize,
    max: usize,
    max_io: usize,
    enabled: [bool; KINDS.len()],
    counts: [u64; KINDS.len()],
    skipped: Vec<String>,
    log: VecDeque<String>,
    log_len: usize,
    opno: u64,
    verifies: u64,
}

/// A buffer aligned for O_DIRECT.
struct Aligned {
    buf: Vec<u8>,
    pad: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + DIO_ALIGN];
        let pad = buf.as_ptr().align_offset(DIO_ALIGN);
        Aligned { buf, pad, len }
    }
    fn get(&self) -> &[u8] {
        self.buf.get(self.pad..self.pad + self.len).unwrap_or_default()
    }
    fn get_mut(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.pad..self.pad + self.len).unwrap_or_default()
    }
}

fn open_direct(path: &Path) -> std::io::Result<File> {
    sys::open(path, libc::O_RDWR | libc::O_DIRECT, 0)
}

impl Fsx {
    fn size(&self) -> usize {
        self.model.len()
    }

    fn logop(&mut self, s: String) {
        if self.log.len() >= self.log_len.max(1) {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {s}", self.opno));
    }

    fn disable(&mut self, k: Kind, why: String) {
        if let Some(e) = self.enabled.get_mut(idx(k)) {
            if *e {
                report::info(&format!("{NAME} skipping {k:?} from op #{}: {why}", self.opno));
                self.skipped.push(format!("{k:?} ({why})"));
            }
            *e = false;
        }
    }

    /// Compare `got` (read at `off`) with the model; `want_len` is how many
    /// bytes the read should have returned.
    fn check(&self, what: &str, off: usize, got: &[u8]) -> Result<()> {
        let want_len = self.size().saturating_sub(off).min(got.len());
        let want = self.model.get(off..off + want_len).unwrap_or_default();
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            let end = (i + 16).min(want_len);
            bail!(
                "{what}: first difference at file offset {:#x} (size {:#x}): got {:02x?} want {:02x?}",
                off + i,
                self.size(),
                got.get(i..end).unwrap_or_default(),
                want.get(i..end).unwrap_or_default()
            );
        }
        Ok(())
    }

    fn pread(&self, off: usize, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self
                .f
                .read_at(buf.get_mut(done..).unwrap_or_default(), (off + done) as u64)
                .with_ctx(|| format!("pread {off:#x}+{len:#x}"))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn resize(&mut self, new: usize) {
        self.model.resize(new, 0);
    }

    fn range(&mut self, limit: usize) -> (usize, usize) {
        let off = self.rng.below_usize(limit.max(1));
        let cap = if self.rng.chance(1, 3) { 512 } else { self.max_io };
        let len = self.rng.between(1, cap as u64) as usize;
        (off, len.min(self.max - off.min(self.max)).max(1))
    }

    fn step(&mut self, k: Kind) -> Result<()> {
        let size = self.size();
        match k {
            Kind::Read => {
                let (off, len) = self.range(size + self.page);
                self.logop(format!("read {off:#x}+{len:#x} size {size:#x}"));
                let got = self.pread(off, len)?;
                ensure!(
                    got.len() == size.saturating_sub(off).min(len),
                    "pread {off:#x}+{len:#x} returned {} bytes (size {size:#x})",
                    got.len()
                );
                self.check("read", off, &got)?;
            }
            Kind::Write => {
                let (off, len) = self.range(self.max);
                let mut data = vec![0u8; len];
                self.rng.fill(&mut data);
                self.logop(format!("write {off:#x}+{len:#x} size {size:#x}"));
                self.f.write_all_at(&data, off as u64).with_ctx(|| format!("pwrite {off:#x}+{len:#x}"))?;
                self.put(off, &data);
            }
            Kind::MapRead => {
                if size == 0 {
                    return Ok(());
                }
                let (off, len) = self.range(size);
                let len = len.min(size - off);
                let map_off = off & !(self.page - 1);
                // Map through the end of the page holding EOF when the range
                // reaches it, to check the bytes past EOF read as zeros.
                let eof_page = off + len + self.page > size;
                let map_end = if eof_page { size.div_ceil(self.page) * self.page } else { off + len };
                self.logop(format!("mapread {off:#x}+{len:#x} size {size:#x}"));
                let map = match Mapping::new(&self.f, map_off as u64, map_end - map_off, false) {
                    Ok(m) => m,
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                        self.disable(Kind::MapRead, errno_name(&e));
                        self.disable(Kind::MapWrite, errno_name(&e));
                        return Ok(());
                    }
                    Err(e) => bail!("mmap {map_off:#x}+{:#x}: {e}", map_end - map_off),
                };
                let mut buf = vec![0u8; map_end - map_off];
                let r = probe::read(&map, 0, &mut buf)?;
                ensure!(r == Copied::All, "mapread below EOF: {r:?} (mapping at {map_off:#x}, size {size:#x})");
                self.check("mapread", off, buf.get(off - map_off..off - map_off + len).unwrap_or_default())?;
                if eof_page {
                    let tail = buf.get(size - map_off..).unwrap_or_default();
                    if let Some(i) = tail.iter().position(|&b| b != 0) {
                        bail!(
                            "mapread: byte {:#x} past EOF {size:#x} is {:#04x}, want 0",
                            size + i,
                            tail.get(i).copied().unwrap_or(0)
                        );
                    }
                }
            }
            Kind::MapWrite => {
                let (off, len) = self.range(self.max);
                let mut data = vec![0u8; len];
                self.rng.fill(&mut data);
                let end = off + len;
                self.logop(format!(
                    "mapwrite {off:#x}+{len:#x} size {size:#x}{}",
                    if end > size { format!(" (ftruncate to {end:#x} first)") } else { String::new() }
                ));
                if end > size {
                    self.f.set_len(end as u64).with_ctx(|| format!("ftruncate {end:#x}"))?;
                    self.resize(end);
                }
                let map_off = off & !(self.page - 1);
                let map = match Mapping::new(&self.f, map_off as u64, end - map_off, true) {
                    Ok(m) => m,
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                        self.disable(Kind::MapRead, errno_name(&e));
                        self.disable(Kind::MapWrite, errno_name(&e));
                        return Ok(());
                    }
                    Err(e) => bail!("mmap {map_off:#x}+{:#x}: {e}", end - map_off),
                };
                let r = probe::write(&map, off - map_off, &data)?;
                ensure!(
                    r == Copied::All,
                    "mapwrite below EOF: {r:?} (mapping at {map_off:#x}, size {:#x})",
                    self.size()
                );
                map.msync().ctx("msync")?;
                drop(map);
                self.put(off, &data);
            }
            Kind::Truncate => {
                let new = if self.rng.chance(1, 2) {
                    self.rng.below_usize(self.max + 1)
                } else {
                    let d = self.rng.below_usize(2 * self.page + 1);
                    (size + d).saturating_sub(self.page).min(self.max)
                };
                self.logop(format!("truncate {size:#x} -> {new:#x}"));
                self.f.set_len(new as u64).with_ctx(|| format!("ftruncate {new:#x}"))?;
                self.resize(new);
            }
            Kind::Punch | Kind::Zero | Kind::Falloc => {
                let (off, len) = self.range(if k == Kind::Falloc { self.max } else { size.max(1) });
                let keep = k == Kind::Punch || self.rng.chance(1, 2);
                let mode = match k {
                    Kind::Punch => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    Kind::Zero => libc::FALLOC_FL_ZERO_RANGE,
                    _ => 0,
                } | if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                self.logop(format!(
                    "{} {off:#x}+{len:#x} keep_size={keep} size {size:#x}",
                    KINDS.get(idx(k)).map_or("?", |x| x.1)
                ));
                match sys::fallocate(&self.f, mode, off as u64, len as u64) {
                    Ok(()) => {}
                    Err(e) if is_unsupported(&e) => {
                        self.disable(k, errno_name(&e));
                        return Ok(());
                    }
                    Err(e) => bail!("fallocate mode {mode:#x} {off:#x}+{len:#x}: {e}"),
                }
                let end = off + len;
                if k != Kind::Falloc {
                    let zend = end.min(size);
                    if off < zend {
                        self.model.get_mut(off..zend).unwrap_or_default().fill(0);
                    }
                }
                if !keep && end > size {
                    self.resize(end);
                }
            }
            Kind::Fsync => {
                let data_only = self.rng.chance(1, 2);
                self.logop(if data_only { "fdatasync" } else { "fsync" }.to_owned());
                if data_only { self.f.sync_data() } else { self.f.sync_all() }.ctx("fsync")?;
            }
            Kind::DirectRead | Kind::DirectWrite => self.direct(k)?,
            Kind::Reopen => {
                self.logop("reopen".into());
                self.f = OpenOptions::new().read(true).write(true).open(&self.path).ctx("reopen")?;
                if self.direct.is_some() {
                    self.direct = Some(open_direct(&self.path).ctx("reopen O_DIRECT")?);
                }
                let st = self.f.metadata().ctx("fstat")?.len();
                ensure!(st == size as u64, "size after reopen {st:#x}, want {size:#x}");
            }
        }
        Ok(())
    }

    fn put(&mut self, off: usize, data: &[u8]) {
        if off + data.len() > self.size() {
            self.resize(off + data.len());
        }
        self.model.get_mut(off..off + data.len()).unwrap_or_default().copy_from_slice(data);
    }

    fn direct(&mut self, k: Kind) -> Result<()> {
        let size = self.size();
        let blocks = self.max / DIO_ALIGN;
        let off = DIO_ALIGN * self.rng.below_usize(blocks.max(1));
        let nblk = self.rng.between(1, (self.max_io / DIO_ALIGN).max(1) as u64) as usize;
        let len = (DIO_ALIGN * nblk).min(self.max - off);
        if len == 0 {
            return Ok(());
        }
        let Some(d) = &self.direct else { return Ok(()) };
        let mut buf = Aligned::new(len);
        if k == Kind::DirectRead {
            let r = d.read_at(buf.get_mut(), off as u64);
            self.logop(format!("direct_read {off:#x}+{len:#x} size {size:#x}"));
            match r {
                Ok(n) => {
                    let want = size.saturating_sub(off).min(len);
                    ensure!(
                        n == want,
                        "O_DIRECT read {off:#x}+{len:#x} returned {n} bytes, want {want} (size {size:#x})"
                    );
                    self.check("direct_read", off, buf.get().get(..n).unwrap_or_default())?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.disable(k, "EINVAL".into()),
                Err(e) => bail!("O_DIRECT read {off:#x}+{len:#x}: {e}"),
            }
        } else {
            self.rng.fill(buf.get_mut());
            let r = d.write_at(buf.get(), off as u64);
            self.logop(format!("direct_write {off:#x}+{len:#x} size {size:#x}"));
            match r {
                Ok(n) => {
                    ensure!(n == len, "O_DIRECT write {off:#x}+{len:#x} wrote {n} bytes");
                    let data = buf.get().to_vec();
                    self.put(off, &data);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.disable(k, "EINVAL".into()),
                Err(e) => bail!("O_DIRECT write {off:#x}+{len:#x}: {e}"),
            }
        }
        Ok(())
    }

    /// The whole file through fstat, pread and (if possible) a mapping.
    fn verify_all(&mut self, when: &str) -> Result<()> {
        self.verifies += 1;
        let size = self.size();
        let st = self.f.metadata().ctx("fstat")?.len();
        ensure!(st == size as u64, "{when}: fstat size {st:#x}, want {size:#x}");
        let got = self.pread(0, size + 1)?;
        ensure!(got.len() == size, "{when}: pread returned {:#x} bytes, want {size:#x}", got.len());
        self.check(&format!("{when} (pread)"), 0, &got)?;
        if size > 0 && self.enabled.get(idx(Kind::MapRead)).copied().unwrap_or(false) {
            let len = size.div_ceil(self.page) * self.page;
            if let Ok(map) = Mapping::new(&self.f, 0, len, false) {
                let mut buf = vec![0u8; len];
                let r = probe::read(&map, 0, &mut buf)?;
                ensure!(r == Copied::All, "{when} (mmap): {r:?}");
                self.check(&format!("{when} (mmap)"), 0, buf.get(..size).unwrap_or_default())?;
                ensure!(
                    buf.get(size..).unwrap_or_default().iter().all(|&b| b == 0),
                    "{when} (mmap): non-zero bytes past EOF"
                );
            }
        }
        Ok(())
    }
}

fn run() -> Result<i32> {
    let args =
        match args::parse(NAME, "random file operations checked against a model", OPTS, std::env::args().skip(1))? {
            Parsed::Help(u) => {
                print!("{u}");
                return Ok(0);
            }
            Parsed::Run(a) => a,
        };
    probe::install()?;
    let (seed, ops, max, max_io) =
        (args.u64("seed")?, args.u64("ops")?, args.usize("max-size")?, args.usize("max-io")?);
    let verify_every = args.u64("verify-every")?;
    ensure!(max >= DIO_ALIGN && max_io >= 1, "--max-size must be >= {DIO_ALIGN} and --max-io >= 1");
    let path = args.mount.join(args.str("file")?);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_ctx(|| format!("mkdir {}", dir.display()))?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_ctx(|| format!("create {}", path.display()))?;
    let mut x = Fsx {
        path: path.clone(),
        f,
        direct: None,
        model: Vec::new(),
        rng: Rng::new(seed),
        page: sys::page_size(),
        max,
        max_io,
        enabled: [true; KINDS.len()],
        counts: [0; KINDS.len()],
        skipped: Vec::new(),
        log: VecDeque::new(),
        log_len: args.usize("log")?,
        opno: 0,
        verifies: 0,
    };
    match args.str("direct")? {
        "off" => x.disable(Kind::DirectRead, "--direct off".into()),
        mode => match open_direct(&path) {
            Ok(d) => x.direct = Some(d),
            Err(e) if mode == "auto" && e.raw_os_error() == Some(libc::EINVAL) => {
                x.disable(Kind::DirectRead, "open O_DIRECT: EINVAL".into());
            }
            Err(e) => bail!("open O_DIRECT: {e}"),
        },
    }
    if !x.enabled.get(idx(Kind::DirectRead)).copied().unwrap_or(true) {
        x.disable(Kind::DirectWrite, "see DirectRead".into());
    }
    report::info(&format!(
        "{NAME} config seed={seed} ops={ops} max-size={max} max-io={max_io} file={} direct={} dax_files={}",
        path.display(),
        if x.direct.is_some() { "yes" } else { "no" },
        sys::dax_summary([path.as_path()])
    ));
    let weights: Vec<u32> = KINDS.iter().map(|(_, _, w)| *w).collect();
    let t0 = Instant::now();
    let mut failure = None;
    for n in 1..=ops {
        x.opno = n;
        let mut k = KINDS.get(x.rng.weighted(&weights)).map_or(Kind::Read, |k| k.0);
        if !x.enabled.get(idx(k)).copied().unwrap_or(false) {
            k = Kind::Read;
        }
        let r = x.step(k).and_then(|()| {
            if verify_every > 0 && n % verify_every == 0 {
                x.verify_all(&format!("verify after op #{n}"))
            } else {
                Ok(())
            }
        });
        if let Some(c) = x.counts.get_mut(idx(k)) {
            *c += 1;
        }
        if let Err(e) = r {
            failure = Some(format!("op #{n}: {e}"));
            break;
        }
    }
    if failure.is_none() {
        x.opno = ops + 1;
        if let Err(e) = x.f.sync_all().ctx("final fsync").and_then(|()| x.verify_all("final check")) {
            failure = Some(e.0);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let per_kind: Vec<String> = KINDS.iter().zip(x.counts).map(|((_, n, _), c)| format!("{n}={c}")).collect();
    let executed: u64 = x.counts.iter().sum();
    report::info(&format!(
        "{NAME} ops {} total={executed} full_verifies={} seconds={secs:.1}",
        per_kind.join(" "),
        x.verifies
    ));
    match failure {
        Some(e) => {
            for l in &x.log {
                report::info(&format!("{NAME} log {l}"));
            }
            report::result(NAME, Status::Fail, &format!("seed={seed}: {e}"));
            Ok(1)
        }
        None => {
            let skipped =
                if x.skipped.is_empty() { String::new() } else { format!(", skipped: {}", x.skipped.join(", ")) };
            report::result(
                NAME,
                Status::Pass,
                &format!("{executed} ops in {secs:.1}s, final size {:#x}{skipped}", x.size()),
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
