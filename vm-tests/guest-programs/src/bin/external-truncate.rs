//! external-truncate — the guest side of "someone else truncates a file the
//! guest has mapped": keeps reading files through shared mappings and
//! read() while a HOST process (vm-tests/host-external-truncate.sh, started
//! by `run-vm.sh --host-during` when this program prints DAXFSD-READY)
//! truncates, punches and rewrites them.
//!
//! Protocol, all in `MOUNT/ext-trunc/` (`--dir`):
//! 1. the guest creates `f0..fN-1`, each `--file-size` bytes of a pattern
//!    that depends only on the file number and the offset, fsyncs them and
//!    prints `DAXFSD-READY name=external-truncate ...`;
//! 2. the host copies them, creates `host-started`, then loops: shrink,
//!    punch a hole, rewrite a range from its copy, or rewrite the whole file
//!    with O_TRUNC — it only ever writes the same bytes back;
//! 3. the guest waits for `host-started` (`--wait-host` seconds), runs
//!    `--ops` reads (and goes on for `--duration` seconds): every byte must be the pattern or zero; a SIGBUS is
//!    counted (the guest's idea of EOF lags the host's), never fatal;
//! 4. the guest creates `guest-done`; the host stops, restores every file
//!    in full and writes `host-stopped` (`iterations=N`);
//! 5. the guest checks that each file reads back whole (size, pread, a
//!    fresh mapping), retrying for `--final-timeout` seconds while its
//!    cached attributes catch up.
//!
//! Without a host side (`host-started` never appears) the result is a skip,
//! or a failure with `--require-host`. Under DAX, a daemon that lets the
//! host truncate below a window mapping kills the VM (QEMU SIGBUS): that
//! shows up as the run failing, not as a line from here.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest::args::{self, Opt, Parsed};
use guest::probe::{self, Copied};
use guest::report::{self, Status};
use guest::rng::{Rng, splitmix64};
use guest::sys::{self, Mapping};
use guest::{Context, Result, bail, ensure};

const NAME: &str = "external-truncate";

const OPTS: &[Opt] = &[
    Opt { name: "seed", default: Some("1"), help: "PRNG seed" },
    Opt { name: "ops", default: Some("3000"), help: "reads while the host mutates (at least)" },
    Opt { name: "duration", default: Some("0"), help: "keep reading for at least this many seconds" },
    Opt { name: "files", default: Some("2"), help: "files" },
    Opt { name: "file-size", default: Some("1M"), help: "file size (multiple of 8)" },
    Opt { name: "max-io", default: Some("64K"), help: "longest read" },
    Opt { name: "dir", default: Some("ext-trunc"), help: "directory under the mount (recreated)" },
    Opt { name: "wait-host", default: Some("60"), help: "seconds to wait for host-started" },
    Opt {
        name: "final-timeout",
        default: Some("20"),
        help: "seconds to wait for the restored files to read back whole",
    },
    Opt { name: "require-host", default: None, help: "fail (not skip) without a host side" },
];

/// The 8 bytes at word `off / 8` of file `file`.
fn word(file: usize, off: usize) -> [u8; 8] {
    splitmix64(((file as u64) << 40) ^ (off as u64 >> 3)).to_le_bytes()
}

fn fill(buf: &mut [u8], file: usize, off: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        let o = off + i;
        *b = word(file, o).get(o % 8).copied().unwrap_or(0);
    }
}

/// Every byte zero or the pattern's; the first offender otherwise.
fn check_pattern_or_zero(buf: &[u8], file: usize, off: usize) -> Option<(usize, u8, u8)> {
    let mut w = word(file, off);
    for (i, &b) in buf.iter().enumerate() {
        let o = off + i;
        if o.is_multiple_of(8) {
            w = word(file, o);
        }
        let want = w.get(o % 8).copied().unwrap_or(0);
        if b != 0 && b != want {
            return Some((o, b, want));
        }
    }
    None
}

struct Target {
    idx: usize,
    path: PathBuf,
    fd: File,
    map: Option<Mapping>,
}

impl Target {
    fn open(idx: usize, path: PathBuf, size: usize) -> Result<Target> {
        let fd = File::open(&path).with_ctx(|| format!("open {}", path.display()))?;
        let map = match Mapping::new(&fd, 0, size, false) {
            Ok(m) => Some(m),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => None,
            Err(e) => bail!("mmap {}: {e}", path.display()),
        };
        Ok(Target { idx, path, fd, map })
    }
}

#[derive(Default)]
struct Counts {
    mread: u64,
    pread: u64,
    reopen: u64,
    sigbus: u64,
    sigbus_below_guest_size: u64,
    zero_bytes: u64,
    pattern_bytes: u64,
    ops_while_host_ran: u64,
}

fn wait_for(p: &Path, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p.exists()
}

fn tally(c: &mut Counts, buf: &[u8]) {
    let z = buf.iter().filter(|&&b| b == 0).count() as u64;
    c.zero_bytes += z;
    c.pattern_bytes += buf.len() as u64 - z;
}

/// One read through the mapping or read(); Err only on a bad byte.
fn one_op(rng: &mut Rng, t: &mut Target, size: usize, max_io: usize, c: &mut Counts) -> Result<()> {
    let off = rng.below_usize(size);
    let len = (rng.between(1, max_io as u64) as usize).min(size - off);
    let mut buf = vec![0u8; len];
    let roll = rng.below(100);
    let (what, got) = if roll < 5 {
        c.reopen += 1;
        *t = Target::open(t.idx, t.path.clone(), size)?;
        return Ok(());
    } else if roll < 65 && t.map.is_some() {
        c.mread += 1;
        let map = t.map.as_ref().ok_or("no mapping")?;
        let done = match probe::read(map, off, &mut buf)? {
            Copied::All => len,
            Copied::Fault { done, fault_off } => {
                c.sigbus += 1;
                let guest_size = t.fd.metadata().map(|m| m.len()).unwrap_or(0);
                if (fault_off as u64) < guest_size {
                    c.sigbus_below_guest_size += 1;
                }
                done
            }
        };
        ("mapped read", buf.get(..done).unwrap_or_default())
    } else {
        c.pread += 1;
        let n = t.fd.read_at(&mut buf, off as u64).with_ctx(|| format!("pread f{} {off:#x}+{len:#x}", t.idx))?;
        ("read()", buf.get(..n).unwrap_or_default())
    };
    tally(c, got);
    if let Some((o, b, want)) = check_pattern_or_zero(got, t.idx, off) {
        bail!("{what} of f{} {off:#x}+{len:#x}: byte at {o:#x} is {b:#04x}, want {want:#04x} or 0", t.idx);
    }
    Ok(())
}

/// After the host restored everything: whole files, exactly.
fn final_check(dir: &Path, nfiles: usize, size: usize, timeout: u64) -> Result<String> {
    let t0 = Instant::now();
    let mut want = vec![0u8; size];
    loop {
        let mut problem = None;
        for i in 0..nfiles {
            fill(&mut want, i, 0);
            let p = dir.join(format!("f{i}"));
            let f = File::open(&p).with_ctx(|| format!("open {}", p.display()))?;
            let len = f.metadata().ctx("fstat")?.len();
            if len != size as u64 {
                problem = Some(format!("f{i}: size {len}, want {size}"));
                break;
            }
            let mut buf = vec![0u8; size];
            let n = f.read_at(&mut buf, 0).ctx("pread")?;
            if n != size || buf != want {
                let at = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(n);
                problem = Some(format!("f{i}: pread got {n} bytes, first difference at {at:#x}"));
                break;
            }
            match Mapping::new(&f, 0, size, false) {
                Ok(m) => {
                    let r = probe::read(&m, 0, &mut buf)?;
                    if r != Copied::All || buf != want {
                        let at = buf.iter().zip(&want).position(|(a, b)| a != b);
                        problem = Some(format!("f{i}: mapped read {r:?}, first difference at {at:?}"));
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => bail!("mmap f{i}: {e}"),
            }
        }
        match problem {
            None => return Ok(format!("files whole after {:.1}s", t0.elapsed().as_secs_f64())),
            Some(p) if t0.elapsed() > Duration::from_secs(timeout) => {
                bail!("after the host restored the files: {p} (still after {timeout}s)")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn run() -> Result<i32> {
    let args = match args::parse(NAME, "read files the host truncates meanwhile", OPTS, std::env::args().skip(1))? {
        Parsed::Help(u) => {
            print!("{u}");
            return Ok(0);
        }
        Parsed::Run(a) => a,
    };
    probe::install()?;
    let (seed, ops, nfiles) = (args.u64("seed")?, args.u64("ops")?, args.usize("files")?.max(1));
    let (size, max_io) = (args.usize("file-size")?, args.usize("max-io")?.max(1));
    ensure!(size >= 8 && size % 8 == 0, "--file-size must be a positive multiple of 8");
    let dir = args.mount.join(args.str("dir")?);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_ctx(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir(&dir).with_ctx(|| format!("mkdir {}", dir.display()))?;
    let mut buf = vec![0u8; size];
    for i in 0..nfiles {
        let p = dir.join(format!("f{i}"));
        fill(&mut buf, i, 0);
        let f =
            OpenOptions::new().write(true).create_new(true).open(&p).with_ctx(|| format!("create {}", p.display()))?;
        f.write_all_at(&buf, 0).with_ctx(|| format!("write {}", p.display()))?;
        f.sync_all().ctx("fsync")?;
    }
    let mut targets =
        (0..nfiles).map(|i| Target::open(i, dir.join(format!("f{i}")), size)).collect::<Result<Vec<_>>>()?;
    let mapped = targets.iter().all(|t| t.map.is_some());
    report::info(&format!(
        "{NAME} config seed={seed} ops={ops} files={nfiles} file-size={size} max-io={max_io} mmap={} dax_files={}",
        if mapped { "yes" } else { "no (ENODEV): read() only" },
        sys::dax_summary(targets.iter().map(|t| t.path.as_path()))
    ));
    report::ready(NAME, &format!("dir={} files={nfiles} size={size}", args.str("dir")?));
    let host = wait_for(&dir.join("host-started"), args.u64("wait-host")?);
    if !host {
        let msg =
            "no host side: host-started never appeared (run-vm.sh --host-during vm-tests/host-external-truncate.sh)";
        if args.flag("require-host") {
            report::result(NAME, Status::Fail, msg);
            return Ok(1);
        }
        report::info(&format!("{NAME} {msg}; reading unchanged files"));
    }
    let stopped = dir.join("host-stopped");
    let mut rng = Rng::new(seed);
    let mut c = Counts::default();
    let t0 = Instant::now();
    let mut host_running = host;
    let mut failure = None;
    let min_time = Duration::from_secs(args.u64("duration")?);
    let mut n = 0u64;
    while n < ops || t0.elapsed() < min_time {
        n += 1;
        if host_running && n.is_multiple_of(50) && stopped.exists() {
            host_running = false;
        }
        if host_running {
            c.ops_while_host_ran += 1;
        }
        let i = rng.below_usize(targets.len());
        let Some(t) = targets.get_mut(i) else { break };
        if let Err(e) = one_op(&mut rng, t, size, max_io, &mut c) {
            failure = Some(e.0);
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut host_info = String::from("no host");
    if host {
        std::fs::write(dir.join("guest-done"), b"done\n").ctx("create guest-done")?;
        host_info = if wait_for(&stopped, 120) {
            match std::fs::read_to_string(&stopped) {
                Ok(t) => t.trim().to_owned(),
                Err(e) => format!("(reading host-stopped: {e})"),
            }
        } else {
            failure.get_or_insert_with(|| "the host side did not write host-stopped within 120 s".into());
            "host did not stop".into()
        };
    }
    report::info(&format!(
        "{NAME} ops mread={} pread={} reopen={} total={} while_host_ran={} host: {host_info} seconds={secs:.1}",
        c.mread,
        c.pread,
        c.reopen,
        c.mread + c.pread + c.reopen,
        c.ops_while_host_ran
    ));
    report::info(&format!(
        "{NAME} sigbus={} sigbus_below_guest_size={} zero_bytes={} pattern_bytes={}",
        c.sigbus, c.sigbus_below_guest_size, c.zero_bytes, c.pattern_bytes
    ));
    drop(targets);
    if failure.is_none() && host {
        match final_check(&dir, nfiles, size, args.u64("final-timeout")?) {
            Ok(s) => report::info(&format!("{NAME} final check: {s}")),
            Err(e) => failure = Some(e.0),
        }
    }
    if let Some(e) = failure {
        report::result(NAME, Status::Fail, &format!("seed={seed}: {e}"));
        return Ok(1);
    }
    let detail = format!(
        "{} reads ({} while the host ran; {host_info}), {} SIGBUS, {} zero / {} pattern bytes{}",
        c.mread + c.pread,
        c.ops_while_host_ran,
        c.sigbus,
        c.zero_bytes,
        c.pattern_bytes,
        if mapped { "" } else { ", mmap unsupported" }
    );
    report::result(NAME, if host { Status::Pass } else { Status::Skip }, &detail);
    Ok(0)
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}
