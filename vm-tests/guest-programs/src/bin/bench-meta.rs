//! bench-meta — the metadata half of the guest benchmark (`vm-tests/bench.sh`). For each
//! thread count of `--threads`, `--files` files of `--size` bytes are split between the
//! threads, each thread working in its own directory (so the guest's per-directory lock does
//! not serialise the threads before the daemon sees them). The phases, each timed alone:
//!
//! - `create`: open(O_CREAT|O_EXCL) + write + close each file;
//! - `stat`: after dropping the guest's caches, stat each file by path (a LOOKUP each);
//! - `readdir_stat`: after dropping the caches, read each directory and lstat every entry;
//! - `open_read`: after dropping the caches, open + read (content checked) + close each file;
//! - `rename`: rename each file to a new name in its directory;
//! - `unlink`: unlink each renamed file;
//! - `mkdir_rmdir`: mkdir as many directories as files, then rmdir them (pairs per second).
//!
//! One line per thread count, rates in operations per second:
//!
//! ```text
//! DAXFSD-INFO bench-meta threads=1 files=2000 create=812 stat=1500 readdir_stat=... mkdir_rmdir=...
//! ```
//!
//! Fails on a wrong byte, a wrong entry count or any failed call; prints rates only (a
//! benchmark, never a timed verdict).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use guest::args::{self, Opt, Parsed};
use guest::report::{self, Status};
use guest::{Context, Result, bail, ensure};

const NAME: &str = "bench-meta";

const OPTS: &[Opt] = &[
    Opt { name: "files", default: Some("2000"), help: "files per thread count (split between the threads)" },
    Opt { name: "size", default: Some("100"), help: "bytes per file" },
    Opt { name: "threads", default: Some("1,4"), help: "comma-separated thread counts, one round each" },
    Opt { name: "dir", default: Some("bench-meta"), help: "directory under the mount" },
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

/// The layout of one round: `threads` directories, file `i` belongs to thread `i / per`.
struct Layout {
    root: PathBuf,
    files: usize,
    threads: usize,
    size: usize,
}

impl Layout {
    fn per(&self) -> usize {
        self.files.div_ceil(self.threads)
    }

    fn dir(&self, t: usize) -> PathBuf {
        self.root.join(format!("d{t}"))
    }

    /// Indexes of thread `t`'s files.
    fn share(&self, t: usize) -> std::ops::Range<usize> {
        let per = self.per();
        (t * per).min(self.files)..((t + 1) * per).min(self.files)
    }

    fn file(&self, i: usize) -> PathBuf {
        self.dir(i / self.per()).join(format!("f{i:06}"))
    }

    fn renamed(&self, i: usize) -> PathBuf {
        self.dir(i / self.per()).join(format!("r{i:06}"))
    }

    fn subdir(&self, i: usize) -> PathBuf {
        self.dir(i / self.per()).join(format!("s{i:06}"))
    }
}

/// Runs `op(t)` on `threads` threads at once; returns the seconds from start to the last join.
fn timed(threads: usize, op: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<f64> {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || op(t))).collect();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a worker thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(t0.elapsed().as_secs_f64().max(1e-9))
}

/// Runs `op(i)` for every file index, each thread on its own share; returns operations per
/// second.
fn per_file(l: &Layout, op: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<f64> {
    let secs = timed(l.threads, &|t| l.share(t).try_for_each(op))?;
    Ok(l.files as f64 / secs)
}

fn create(l: &Layout, i: usize) -> Result<()> {
    let p = l.file(i);
    let mut f =
        OpenOptions::new().write(true).create_new(true).open(&p).with_ctx(|| format!("create {}", p.display()))?;
    f.write_all(&content(i, l.size)).with_ctx(|| format!("write {}", p.display()))
}

fn stat(l: &Layout, i: usize) -> Result<()> {
    let p = l.file(i);
    let m = fs::symlink_metadata(&p).with_ctx(|| format!("stat {}", p.display()))?;
    ensure!(m.len() == l.size as u64, "{}: size {} (want {})", p.display(), m.len(), l.size);
    Ok(())
}

fn readdir_stat(l: &Layout, t: usize) -> Result<()> {
    let dir = l.dir(t);
    let mut n = 0;
    for e in fs::read_dir(&dir).with_ctx(|| format!("readdir {}", dir.display()))? {
        let e = e.with_ctx(|| format!("readdir {}", dir.display()))?;
        let p = e.path();
        fs::symlink_metadata(&p).with_ctx(|| format!("stat {}", p.display()))?;
        n += 1;
    }
    let want = l.share(t).len();
    ensure!(n == want, "{}: {n} entries (want {want})", dir.display());
    Ok(())
}

fn open_read(l: &Layout, i: usize) -> Result<()> {
    let p = l.file(i);
    let mut got = Vec::with_capacity(l.size + 1);
    File::open(&p).and_then(|mut f| f.read_to_end(&mut got)).with_ctx(|| format!("read {}", p.display()))?;
    ensure!(got == content(i, l.size), "{}: {} bytes read, content differs", p.display(), got.len());
    Ok(())
}

fn rename(l: &Layout, i: usize) -> Result<()> {
    let (from, to) = (l.file(i), l.renamed(i));
    fs::rename(&from, &to).with_ctx(|| format!("rename {} -> {}", from.display(), to.display()))
}

fn unlink(l: &Layout, i: usize) -> Result<()> {
    let p = l.renamed(i);
    fs::remove_file(&p).with_ctx(|| format!("unlink {}", p.display()))
}

fn mkdir_rmdir(l: &Layout, t: usize) -> Result<()> {
    for i in l.share(t) {
        let p = l.subdir(i);
        fs::create_dir(&p).with_ctx(|| format!("mkdir {}", p.display()))?;
    }
    for i in l.share(t) {
        let p = l.subdir(i);
        fs::remove_dir(&p).with_ctx(|| format!("rmdir {}", p.display()))?;
    }
    Ok(())
}

fn round(root: &Path, files: usize, size: usize, threads: usize) -> Result<String> {
    if root.exists() {
        fs::remove_dir_all(root).with_ctx(|| format!("remove {}", root.display()))?;
    }
    let l = Layout { root: root.to_path_buf(), files, threads, size };
    fs::create_dir(root).with_ctx(|| format!("mkdir {}", root.display()))?;
    for t in 0..threads {
        fs::create_dir(l.dir(t)).with_ctx(|| format!("mkdir {}", l.dir(t).display()))?;
    }
    let create = per_file(&l, &|i| create(&l, i))?;
    drop_caches()?;
    let stat = per_file(&l, &|i| stat(&l, i))?;
    drop_caches()?;
    let readdir_stat = files as f64 / timed(threads, &|t| readdir_stat(&l, t))?;
    drop_caches()?;
    let open_read = per_file(&l, &|i| open_read(&l, i))?;
    let rename = per_file(&l, &|i| rename(&l, i))?;
    let unlink = per_file(&l, &|i| unlink(&l, i))?;
    let mkdir_rmdir = files as f64 / timed(threads, &|t| mkdir_rmdir(&l, t))?;
    fs::remove_dir_all(root).with_ctx(|| format!("remove {}", root.display()))?;
    Ok(format!(
        "threads={threads} files={files} size={size} create={create:.0} stat={stat:.0} \
         readdir_stat={readdir_stat:.0} open_read={open_read:.0} rename={rename:.0} unlink={unlink:.0} \
         mkdir_rmdir={mkdir_rmdir:.0}"
    ))
}

fn run() -> Result<i32> {
    let about = "metadata rates (create, cold stat, readdir+stat, open+read, rename, unlink, mkdir/rmdir)";
    let args = match args::parse(NAME, about, OPTS, std::env::args().skip(1))? {
        Parsed::Help(u) => {
            print!("{u}");
            return Ok(0);
        }
        Parsed::Run(a) => a,
    };
    let (files, size) = (args.usize("files")?.max(1), args.usize("size")?);
    let root = args.mount.join(args.str("dir")?);
    let mut lines = Vec::new();
    for t in args.str("threads")?.split(',') {
        let threads: usize = t.trim().parse().map_err(|_| guest::Error(format!("bad thread count {t:?}")))?;
        let line = round(&root, files, size, threads.clamp(1, files))?;
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
