//! tree-walk — walks a big tree the host made (vm-tests/tree-walk.sh), as `find` and `stat`
//! would: every directory read, every entry lstat'ed, every `--read-every`th file opened and
//! its content checked (the host writes each file's own relative path and a newline). Each
//! round starts from dropped guest caches, so its lookups reach the daemon. Prints per round:
//!
//! ```text
//! DAXFSD-INFO tree-walk round=1 entries=200200 files=200000 dirs=200 read=2062 errors=0 secs=80.1 us_per_entry=400
//! ```
//!
//! Fails when any call failed (the detail counts them by errno, e.g. `EMFILE=1000`, with the
//! first failure quoted; a walk stops at the directory where `--max-errors` were reached) or
//! when `--expect-files` is given and the count differs. Timings are printed, never judged.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use guest::args::{self, Opt, Parsed};
use guest::report::{self, Status};
use guest::{Context, Result};

const NAME: &str = "tree-walk";

const OPTS: &[Opt] = &[
    Opt { name: "dir", default: Some("tree"), help: "the tree's directory under the mount" },
    Opt { name: "read-every", default: Some("97"), help: "open and check every Nth file (0: none)" },
    Opt { name: "rounds", default: Some("1"), help: "walks, each from dropped caches" },
    Opt { name: "expect-files", default: Some("0"), help: "files the tree must hold (0: any)" },
    Opt { name: "max-errors", default: Some("1000"), help: "stop a walk after this many failed calls" },
];

fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut f = OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches").ctx("open drop_caches")?;
    f.write_all(b"3").ctx("write drop_caches")
}

/// What one walk saw.
#[derive(Default)]
struct Walk {
    files: u64,
    dirs: u64,
    read: u64,
    /// Failed calls by errno name, and the first one in full.
    errors: std::collections::BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Walk {
    fn fail(&mut self, what: &str, path: &Path, e: &std::io::Error) {
        let name = errno_name(e);
        *self.errors.entry(name).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what} {}: {e}", path.display()));
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ENFILE) => "ENFILE".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(libc::ESTALE) => "ESTALE".into(),
        Some(libc::EIO) => "EIO".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".into(),
        Some(n) => format!("errno{n}"),
        None => "other".into(),
    }
}

/// Opens `path` and checks it holds `rel` and a newline.
fn check_file(w: &mut Walk, path: &Path, rel: &str) {
    let mut got = Vec::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut got)) {
        Ok(_) if got == format!("{rel}\n").as_bytes() => w.read += 1,
        Ok(n) => {
            *w.errors.entry("content".into()).or_default() += 1;
            if w.first_error.is_none() {
                w.first_error = Some(format!("{}: {n} bytes, not its name", path.display()));
            }
        }
        Err(e) => w.fail("read", path, &e),
    }
}

/// Depth-first, as find(1) walks: read a directory, lstat each entry, descend into dirs.
fn walk(root: &Path, read_every: u64, max_errors: u64) -> Walk {
    let mut w = Walk::default();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        if w.error_count() >= max_errors {
            break;
        }
        w.dirs += 1;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                w.fail("opendir", &dir, &e);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    w.fail("readdir", &dir, &e);
                    break;
                }
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => stack.push((path, child_rel)),
                Ok(_) => {
                    w.files += 1;
                    if read_every > 0 && w.files % read_every == 0 {
                        check_file(&mut w, &path, &child_rel);
                    }
                }
                Err(e) => w.fail("lstat", &path, &e),
            }
        }
    }
    w
}

fn run() -> Result<i32> {
    let args = match args::parse(NAME, "walk a big tree: readdir, lstat, read some", OPTS, std::env::args().skip(1))? {
        Parsed::Help(u) => {
            print!("{u}");
            return Ok(0);
        }
        Parsed::Run(a) => a,
    };
    let root = args.mount.join(args.str("dir")?);
    let read_every = args.u64("read-every")?;
    let expect = args.u64("expect-files")?;
    report::ready(NAME, &format!("root={}", root.display()));
    let mut failed = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=args.u64("rounds")?.max(1) {
        drop_caches()?;
        let t0 = Instant::now();
        let w = walk(&root, read_every, args.u64("max-errors")?.max(1));
        let secs = t0.elapsed().as_secs_f64();
        let entries = w.files + w.dirs;
        let per = secs * 1e6 / entries.max(1) as f64;
        let errs: Vec<String> = w.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let line = format!(
            "round={round} entries={entries} files={} dirs={} read={} errors={} secs={secs:.1} us_per_entry={per:.0}",
            w.files,
            w.dirs,
            w.read,
            w.error_count()
        );
        report::info(&format!("{NAME} {line} {}", errs.join(" ")));
        if w.error_count() > 0 {
            failed.push(format!(
                "round {round}: {} failed calls ({}); first: {}",
                w.error_count(),
                errs.join(" "),
                w.first_error.unwrap_or_default()
            ));
        } else if expect > 0 && w.files != expect {
            failed.push(format!("round {round}: {} files, expected {expect}", w.files));
        }
        lines.push(line);
    }
    if failed.is_empty() {
        report::result(NAME, Status::Pass, &lines.join("; "));
        Ok(0)
    } else {
        report::result(NAME, Status::Fail, &failed.join("; "));
        Ok(1)
    }
}

fn main() {
    let code = run().unwrap_or_else(|e| {
        report::result(NAME, Status::Fail, &e.0);
        1
    });
    std::process::exit(code);
}
