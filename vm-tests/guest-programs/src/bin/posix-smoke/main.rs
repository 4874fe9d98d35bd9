//! posix-smoke — POSIX operations on the virtiofs mount, each checked, one
//! `DAXFSD-RESULT name=posix-smoke.CHECK` line per check.
//!
//! Works in `MOUNT/posix-smoke/` (recreated, removed at the end) and leaves
//! known files in `MOUNT/posix-smoke-keep/` for the host-side checker
//! `vm-tests/host-check-posix.sh`. Features the daemon or the host may lack
//! (xattrs without `--xattr`, fallocate modes FUSE does not pass on,
//! O_TMPFILE) are reported as `status=skip` when they fail with "not
//! supported" errors, never as a pass.
//!
//! (Named posix-smoke because vm-tests/guest/init has a built-in `smoke`.)

mod fs_ops;
mod io_ops;
mod locks;
mod util;

use std::path::PathBuf;

use guest::args::{self, Opt, Parsed};
use guest::report::{self, Outcome, Status, Tally};
use guest::{Context, Result};

const NAME: &str = "posix-smoke";

const OPTS: &[Opt] = &[
    Opt { name: "dir-entries", default: Some("2000"), help: "files in the large directory read back with readdir" },
    Opt { name: "big-size", default: Some("8M"), help: "bytes written and read back by the bigio check" },
    Opt { name: "otrunc-rounds", default: Some("50"), help: "rounds of the mmap_then_otrunc check" },
    Opt { name: "only", default: Some(""), help: "comma-separated checks to run (default: all)" },
    Opt { name: "list", default: None, help: "list the checks and exit" },
];

/// Where a check works.
pub struct Ctx {
    /// Scratch directory of this check (empty at the start).
    pub work: PathBuf,
    /// Files the host checks afterwards (shared by all checks).
    pub keep: PathBuf,
    /// --dir-entries.
    pub dir_entries: usize,
    /// --big-size.
    pub big_size: usize,
    /// --otrunc-rounds.
    pub otrunc_rounds: usize,
}

type Check = fn(&Ctx) -> Result<Outcome>;

const CHECKS: &[(&str, Check)] = &[
    ("files", fs_ops::files),
    ("dirs", fs_ops::dirs),
    ("rename", fs_ops::rename),
    ("renameat2.noreplace", fs_ops::rename_noreplace),
    ("renameat2.exchange", fs_ops::rename_exchange),
    ("hardlink", fs_ops::hardlink),
    ("symlink", fs_ops::symlink),
    ("xattr", fs_ops::xattr),
    ("chmod", fs_ops::chmod),
    ("chown", fs_ops::chown),
    ("readdir", fs_ops::readdir),
    ("statfs", fs_ops::statfs),
    ("truncate", io_ops::truncate),
    ("fsync", io_ops::fsync),
    ("bigio", io_ops::bigio),
    ("mmap", io_ops::mmap),
    ("mmap_then_otrunc", io_ops::mmap_then_otrunc),
    ("fallocate.default", io_ops::falloc_default),
    ("fallocate.keep_size", io_ops::falloc_keep_size),
    ("fallocate.punch_hole", io_ops::falloc_punch_hole),
    ("fallocate.zero_range", io_ops::falloc_zero_range),
    ("fallocate.collapse_range", io_ops::falloc_collapse_range),
    ("fallocate.insert_range", io_ops::falloc_insert_range),
    ("seek_data_hole", io_ops::seek_data_hole),
    ("copy_file_range", io_ops::copy_file_range),
    ("tmpfile", io_ops::tmpfile),
    ("lock.posix", locks::posix),
    ("lock.posix_wait", locks::posix_wait),
    ("lock.posix_close", locks::posix_close),
    ("lock.ofd", locks::ofd),
    ("lock.flock", locks::flock),
];

fn run() -> Result<i32> {
    let args = match args::parse(NAME, "POSIX operations on a virtiofs mount", OPTS, std::env::args().skip(1))? {
        Parsed::Help(u) => {
            print!("{u}");
            return Ok(0);
        }
        Parsed::Run(a) => a,
    };
    if args.flag("list") {
        for (name, _) in CHECKS {
            println!("{name}");
        }
        return Ok(0);
    }
    let only: Vec<String> = args.str("only")?.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if let Some(bad) = only.iter().find(|o| !CHECKS.iter().any(|(n, _)| n == o)) {
        guest::bail!("--only: no check named {bad:?} (see --list)");
    }
    let root = args.mount.join("posix-smoke");
    let keep = args.mount.join("posix-smoke-keep");
    for d in [&root, &keep] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_ctx(|| format!("remove old {}", d.display()))?;
        }
        std::fs::create_dir(d).with_ctx(|| format!("mkdir {}", d.display()))?;
    }
    let mut tally = Tally::default();
    let mut times = Vec::new();
    for (name, check) in CHECKS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let work = root.join(name);
        let ctx = Ctx {
            work: work.clone(),
            keep: keep.clone(),
            dir_entries: args.usize("dir-entries")?,
            big_size: args.usize("big-size")?,
            otrunc_rounds: args.usize("otrunc-rounds")?,
        };
        let t0 = std::time::Instant::now();
        let r = std::fs::create_dir(&work).with_ctx(|| format!("mkdir {}", work.display())).and_then(|()| check(&ctx));
        tally.check(&format!("{NAME}.{name}"), r);
        times.push(format!("{name}={}", t0.elapsed().as_millis()));
    }
    report::info(&format!("{NAME} milliseconds {}", times.join(" ")));
    let cleanup = std::fs::remove_dir_all(&root).with_ctx(|| format!("remove {}", root.display())).and_then(|()| {
        guest::ensure!(!root.exists(), "{} still exists after removal", root.display());
        Ok(Outcome::Pass(String::new()))
    });
    tally.check(&format!("{NAME}.cleanup"), cleanup);
    report::info(&format!("{NAME} summary passed={} failed={} skipped={}", tally.passed, tally.failed, tally.skipped));
    Ok(tally.exit_code())
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}
