//! small-files — the small-file workload of a container rootfs or a source
//! tree, timed: for each thread count of `--threads` (a list), create
//! `--files` files of `--size` bytes in a fresh directory (split evenly
//! between the threads), drop the guest's caches, open+read+close every file
//! (its content checked), drop the caches again, unlink every file. Each
//! phase prints its rate:
//!
//! ```text
//! DAXFSD-INFO small-files threads=1 files=2000 create=812/s read=700/s unlink=1900/s
//! ```
//!
//! Under DAX every read of a file is a SETUPMAPPING of its first slot (the
//! guest drops its mappings with the inode), so a tree larger than the window
//! (`--files` × 2 MiB > window) also measures the guest's window reclaim.
//! Fails on a short read, a content mismatch or any failed call; prints
//! timings only (a benchmark, never a timed verdict).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use guest::args::{self, Opt, Parsed};
use guest::report::{self, Status};
use guest::{Context, Result, bail, ensure};

const NAME: &str = "small-files";

const OPTS: &[Opt] = &[
    Opt { name: "files", default: Some("2000"), help: "files per round" },
    Opt { name: "size", default: Some("100"), help: "bytes per file" },
    Opt { name: "threads", default: Some("1,4"), help: "comma-separated thread counts, one round each" },
    Opt { name: "dir", default: Some("small-files"), help: "directory under the mount" },
];

/// The content of file `i`: its index repeated, so a mix-up between files shows.
fn content(i: usize, size: usize) -> Vec<u8> {
    let tag = format!("{i:08}|");
    tag.bytes().cycle().take(size).collect()
}

fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut f = OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches").ctx("open drop_caches")?;
    f.write_all(b"3").ctx("write drop_caches")
}

/// Runs `op(i)` for every file index, `threads` threads taking contiguous shares; returns
/// files per second.
fn phase(files: usize, threads: usize, op: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<f64> {
    let t0 = Instant::now();
    let per = files.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    for i in t * per..((t + 1) * per).min(files) {
                        op(i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a worker thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(files as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

fn path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("f{i:06}"))
}

fn round(dir: &Path, files: usize, size: usize, threads: usize) -> Result<String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_ctx(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir(dir).with_ctx(|| format!("mkdir {}", dir.display()))?;
    let create = phase(files, threads, &|i| {
        let p = path(dir, i);
        let mut f =
            OpenOptions::new().write(true).create_new(true).open(&p).with_ctx(|| format!("create {}", p.display()))?;
        f.write_all(&content(i, size)).with_ctx(|| format!("write {}", p.display()))
    })?;
    drop_caches()?;
    let read = phase(files, threads, &|i| {
        let p = path(dir, i);
        let mut got = Vec::with_capacity(size + 1);
        File::open(&p).and_then(|mut f| f.read_to_end(&mut got)).with_ctx(|| format!("read {}", p.display()))?;
        ensure!(
            got == content(i, size),
            "{}: {} bytes read, content {}",
            p.display(),
            got.len(),
            if got.len() == size { "differs" } else { "short" }
        );
        Ok(())
    })?;
    drop_caches()?;
    let unlink = phase(files, threads, &|i| {
        let p = path(dir, i);
        std::fs::remove_file(&p).with_ctx(|| format!("unlink {}", p.display()))
    })?;
    std::fs::remove_dir(dir).with_ctx(|| format!("rmdir {}", dir.display()))?;
    Ok(format!(
        "threads={threads} files={files} size={size} create={create:.0}/s read={read:.0}/s unlink={unlink:.0}/s"
    ))
}

fn run() -> Result<i32> {
    let args =
        match args::parse(NAME, "create, read and unlink many small files, timed", OPTS, std::env::args().skip(1))? {
            Parsed::Help(u) => {
                print!("{u}");
                return Ok(0);
            }
            Parsed::Run(a) => a,
        };
    let (files, size) = (args.usize("files")?.max(1), args.usize("size")?);
    let dir = args.mount.join(args.str("dir")?);
    let mut lines = Vec::new();
    for t in args.str("threads")?.split(',') {
        let threads: usize = t.trim().parse().map_err(|_| guest::Error(format!("bad thread count {t:?}")))?;
        let line = round(&dir, files, size, threads.max(1))?;
        report::info(&format!("{NAME} {line}"));
        lines.push(line);
    }
    report::result(NAME, Status::Pass, &lines.join("; "));
    Ok(0)
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}
