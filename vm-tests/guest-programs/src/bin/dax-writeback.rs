//! dax-writeback — does a guest write through a shared mapping survive what HOST processes
//! do to the file meanwhile (issue 12)? Maps `--file-size` bytes of one file read-write and,
//! for `--duration` seconds, writes a word (round, page) at the start of every page and reads
//! it back at once, while a host loop (vm-tests/host-dax-writeback.sh, started by `run-vm.sh
//! --host-during` when this program prints DAXFSD-READY) reads the file, writes another range
//! of it, or shrinks and restores it.
//!
//! Counted, below the host's truncation point (`--shrink-to`, default: no truncation):
//! - lost: a read-back that is not the word just written;
//! - zeros: a read of zeros where the file has data (a subset of lost);
//! - final mismatches: after the host stopped and msync, pages whose file content is not the
//!   last word the guest wrote there.
//!
//! The same counts past the truncation point are reported apart: there the truncation may
//! remove what the guest wrote (and a SIGBUS is what a native filesystem gives). Passes when
//! the three counts below the truncation point are zero.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use guest::args::{self, Opt, Parsed};
use guest::probe::{self, Copied};
use guest::report::{self, Status};
use guest::sys::Mapping;
use guest::{Context, Result, ensure};

const NAME: &str = "dax-writeback";
const PAGE: usize = 4096;

const OPTS: &[Opt] = &[
    Opt { name: "duration", default: Some("20"), help: "seconds of writes while the host runs" },
    Opt { name: "file-size", default: Some("8M"), help: "mapped size (a multiple of 4096)" },
    Opt { name: "shrink-to", default: Some("0"), help: "the host's truncation point in bytes (0: none)" },
    Opt { name: "dir", default: Some("dax-wb"), help: "directory under the mount (recreated)" },
    Opt { name: "wait-host", default: Some("60"), help: "seconds to wait for host-started" },
];

/// The word written at the start of `page` in `round` (never zero).
fn word(round: u64, page: usize) -> [u8; 8] {
    ((round << 32) | (page as u64 + 1)).to_le_bytes()
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

/// Counts below (index 0) and past (index 1) the truncation point.
#[derive(Default)]
struct Counts {
    writes: [u64; 2],
    lost: [u64; 2],
    zeros: [u64; 2],
    sigbus: [u64; 2],
    mismatches: [u64; 2],
}

fn run() -> Result<i32> {
    let args = match args::parse(
        NAME,
        "guest writes through a mapping while the host uses the file",
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
    let size = args.usize("file-size")?;
    ensure!(size >= PAGE && size % PAGE == 0, "--file-size must be a positive multiple of 4096");
    let shrink_to = args.usize("shrink-to")?;
    let pages = size / PAGE;
    // A page is "below" when its word lies wholly below the truncation point.
    let side = |p: usize| usize::from(shrink_to != 0 && p * PAGE + 8 > shrink_to);
    let dir = args.mount.join(args.str("dir")?);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_ctx(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir(&dir).with_ctx(|| format!("mkdir {}", dir.display()))?;
    let path = dir.join("wfile");
    let f = OpenOptions::new().read(true).write(true).create_new(true).open(&path).ctx("create wfile")?;
    let mut last: Vec<u64> = vec![0; pages];
    for p in 0..pages {
        f.write_all_at(&word(0, p), (p * PAGE) as u64).ctx("write the first round")?;
    }
    f.set_len(size as u64).ctx("size wfile")?;
    f.sync_all().ctx("fsync")?;
    let map = Mapping::new(&f, 0, size, true).ctx("mmap wfile read-write")?;
    report::ready(NAME, &format!("dir={} size={size} shrink-to={shrink_to}", args.str("dir")?));
    let host = wait_for(&dir.join("host-started"), args.u64("wait-host")?);
    if !host {
        report::result(NAME, Status::Fail, "no host side: host-started never appeared");
        return Ok(1);
    }
    let mut c = Counts::default();
    let t0 = Instant::now();
    let mut round = 0u64;
    let duration = Duration::from_secs(args.u64("duration")?);
    while t0.elapsed() < duration {
        round += 1;
        for (p, last_round) in last.iter_mut().enumerate() {
            let s = side(p);
            let w = word(round, p);
            c.writes[s] += 1;
            if let Copied::Fault { .. } = probe::write(&map, p * PAGE, &w)? {
                c.sigbus[s] += 1;
                continue;
            }
            *last_round = round;
            let mut back = [0u8; 8];
            if let Copied::Fault { .. } = probe::read(&map, p * PAGE, &mut back)? {
                c.sigbus[s] += 1;
                continue;
            }
            if back != w {
                c.lost[s] += 1;
                if back == [0; 8] {
                    c.zeros[s] += 1;
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    std::fs::write(dir.join("guest-done"), b"done\n").ctx("create guest-done")?;
    let host_info = if wait_for(&dir.join("host-stopped"), 120) {
        std::fs::read_to_string(dir.join("host-stopped")).map(|t| t.trim().to_owned()).unwrap_or_default()
    } else {
        report::result(NAME, Status::Fail, "the host side did not write host-stopped within 120 s");
        return Ok(1);
    };
    map.msync().ctx("msync")?;
    drop(map);
    drop(f);
    // The file as a fresh open reads it, against the last word written to each page.
    let f = OpenOptions::new().read(true).open(&path).ctx("reopen wfile")?;
    for (p, &r) in last.iter().enumerate() {
        let mut got = [0u8; 8];
        let n = f.read_at(&mut got, (p * PAGE) as u64).ctx("pread")?;
        if n < 8 || got != word(r, p) {
            c.mismatches[side(p)] += 1;
        }
    }
    let pair = |v: [u64; 2]| format!("{}/{}", v[0], v[1]);
    report::info(&format!(
        "{NAME} rounds={round} seconds={secs:.1} host: {host_info}; below/past the truncation point: writes={} lost={} zeros={} sigbus={} final_mismatches={}",
        pair(c.writes),
        pair(c.lost),
        pair(c.zeros),
        pair(c.sigbus),
        pair(c.mismatches)
    ));
    let bad = c.lost[0] + c.zeros[0] + c.mismatches[0] + c.sigbus[0];
    let detail = format!(
        "{} writes below the truncation point: {} lost, {} zero reads, {} SIGBUS, {} final mismatches ({} rounds; host: {host_info})",
        c.writes[0], c.lost[0], c.zeros[0], c.sigbus[0], c.mismatches[0], round
    );
    if bad > 0 || round == 0 {
        report::result(NAME, Status::Fail, &detail);
        return Ok(1);
    }
    report::result(NAME, Status::Pass, &detail);
    Ok(0)
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}
