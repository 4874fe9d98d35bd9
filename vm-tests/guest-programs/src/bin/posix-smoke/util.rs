//! Helpers shared by the posix-smoke checks.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use guest::rng::Rng;
use guest::sys::errno_name;
use guest::{Context, Result, bail};

/// Expect `r` to fail with one of `errnos`.
pub fn expect_errno<T>(r: io::Result<T>, errnos: &[i32], what: &str) -> Result<()> {
    match r {
        Ok(_) => bail!("{what}: succeeded, expected {}", names(errnos)),
        Err(e) if e.raw_os_error().is_some_and(|n| errnos.contains(&n)) => Ok(()),
        Err(e) => bail!("{what}: got {} ({e}), expected {}", errno_name(&e), names(errnos)),
    }
}

fn names(errnos: &[i32]) -> String {
    errnos.iter().map(|&n| errno_name(&io::Error::from_raw_os_error(n))).collect::<Vec<_>>().join("|")
}

/// `len` pseudo-random bytes from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Text lines `PREFIX NNNNNN\n` for `n` lines (host-checkable with seq).
pub fn lines(prefix: &str, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * (prefix.len() + 8));
    for i in 0..n {
        v.extend_from_slice(format!("{prefix} {i:06}\n").as_bytes());
    }
    v
}

/// Create (or truncate) `path` with `data`, mode 0644.
pub fn write_file(path: &Path, data: &[u8]) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .with_ctx(|| format!("create {}", path.display()))?;
    f.write_all_at(data, 0).with_ctx(|| format!("write {}", path.display()))?;
    Ok(f)
}

/// Open read-write.
pub fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).open(path).with_ctx(|| format!("open {}", path.display()))
}

/// Whole file content.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_ctx(|| format!("read {}", path.display()))
}

/// `len` bytes at `off` (short at EOF).
pub fn read_at(f: &File, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(buf.get_mut(done..).unwrap_or_default(), off + done as u64)
            .with_ctx(|| format!("pread {len} at {off}"))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Check that `got` equals `want`; on a difference say where.
pub fn same(what: &str, got: &[u8], want: &[u8]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    bail!(
        "{what}: differs at byte {first} (got len {}, want len {}; got {:02x?} want {:02x?})",
        got.len(),
        want.len(),
        got.get(first..(first + 8).min(got.len())).unwrap_or_default(),
        want.get(first..(first + 8).min(want.len())).unwrap_or_default()
    )
}

/// Check a value.
pub fn eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<()> {
    if got == want { Ok(()) } else { bail!("{what}: got {got:?}, want {want:?}") }
}
