//! Data checks: truncate, fsync, big I/O after dropping caches, mmap,
//! fallocate modes, SEEK_DATA/SEEK_HOLE, copy_file_range, O_TMPFILE.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use guest::probe::{self, Copied};
use guest::report::{Outcome, is_unsupported};
use guest::rng::Rng;
use guest::sys::{self, Mapping, errno_name};
use guest::{Context, Result, bail, ensure};
use libc::{ENOENT, ENXIO};

use crate::Ctx;
use crate::util::{eq, expect_errno, lines, open_rw, pattern, read_at, read_file, same, write_file};

const K: u64 = 1024;

/// ftruncate down/up, truncate(2), O_TRUNC; zeros after growth, including
/// the tail of a partial page.
pub fn truncate(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("t");
    let f = write_file(&p, b"abcdefghij")?;
    f.set_len(4).ctx("ftruncate 4")?;
    same("shrunk", &read_file(&p)?, b"abcd")?;
    f.set_len(10_000).ctx("ftruncate 10000")?;
    let mut want = b"abcd".to_vec();
    want.resize(10_000, 0);
    same("grown", &read_file(&p)?, &want)?;
    // Partial page: shrink into the middle of a page, grow again: the old
    // bytes past the cut must not come back.
    let data = pattern(1, 12_288);
    f.write_all_at(&data, 0).ctx("write 3 pages")?;
    f.set_len(5_000).ctx("ftruncate 5000")?;
    f.set_len(12_288).ctx("ftruncate 12288")?;
    let mut want = data.get(..5_000).unwrap_or_default().to_vec();
    want.resize(12_288, 0);
    same("regrown partial page", &read_at(&f, 0, 12_288)?, &want)?;
    let cp = sys::cstr(&p).ctx("path")?;
    // SAFETY: valid C string; plain syscall.
    let r = unsafe { libc::truncate(cp.as_ptr(), 3) };
    ensure!(r == 0, "truncate(path, 3): {}", io::Error::last_os_error());
    same("truncate(2)", &read_file(&p)?, data.get(..3).unwrap_or_default())?;
    drop(File::create(&p).ctx("open O_TRUNC")?);
    eq("size after O_TRUNC", fs::metadata(&p).ctx("stat")?.len(), 0)?;
    let k = c.keep.join("truncated");
    write_file(&k, b"abcdefghij")?.set_len(3).ctx("ftruncate keep")?;
    let k2 = c.keep.join("sparse-grown");
    write_file(&k2, b"")?.set_len(1 << 20).ctx("grow keep")?;
    Ok(Outcome::Pass(String::new()))
}

/// fsync, fdatasync, fsync of a directory, syncfs.
pub fn fsync(c: &Ctx) -> Result<Outcome> {
    let f = write_file(&c.work.join("s"), &pattern(2, 100_000))?;
    f.sync_all().ctx("fsync")?;
    f.write_all_at(b"more", 100_000).ctx("write")?;
    f.sync_data().ctx("fdatasync")?;
    File::open(&c.work).ctx("open dir")?.sync_all().ctx("fsync dir")?;
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    ensure!(r == 0, "syncfs: {}", io::Error::last_os_error());
    Ok(Outcome::Pass(String::new()))
}

/// Write a big file, drop the guest caches, read it back in odd pieces;
/// also leave the host-checkable data.txt.
pub fn bigio(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("big");
    let data = pattern(3, c.big_size);
    {
        let f = write_file(&p, b"")?;
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            f.write_all_at(chunk, (i << 20) as u64).ctx("write 1 MiB")?;
        }
        f.sync_all().ctx("fsync")?;
    }
    let text = lines("posix-smoke line", 100_000);
    write_file(&c.keep.join("data.txt"), &text)?.sync_all().ctx("fsync data.txt")?;
    sys::drop_caches().ctx("drop_caches")?;
    let f = File::open(&p).ctx("reopen")?;
    let mut off = 0usize;
    while off < data.len() {
        let got = read_at(&f, off as u64, 100_003)?;
        let end = (off + 100_003).min(data.len());
        same(&format!("bytes {off}..{end}"), &got, data.get(off..end).unwrap_or_default())?;
        off = end;
    }
    let mut rng = Rng::new(4);
    for _ in 0..200 {
        let o = rng.below_usize(data.len());
        let l = rng.between(1, 70_000) as usize;
        let end = (o + l).min(data.len());
        same(&format!("random read {o}+{l}"), &read_at(&f, o as u64, l)?, data.get(o..end).unwrap_or_default())?;
    }
    same("data.txt after drop_caches", &read_file(&c.keep.join("data.txt"))?, &text)?;
    Ok(Outcome::Pass(format!("{} bytes", data.len())))
}

/// Shared mappings: read, write, coherence with read/write, SIGBUS past EOF.
pub fn mmap(c: &Ctx) -> Result<Outcome> {
    let page = sys::page_size();
    let p = c.work.join("m");
    let size = 3 * page + 100;
    let data = pattern(5, size);
    let f = write_file(&p, &data)?;
    let map = match Mapping::new(&f, 0, 5 * page, true) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            write_file(&c.keep.join("mmap-unsupported"), b"")?;
            return Ok(Outcome::Skip("mmap MAP_SHARED: ENODEV (direct-io file without mmap support)".into()));
        }
        Err(e) => bail!("mmap: {e}"),
    };
    let mut buf = vec![0u8; 5 * page];
    let r = probe::read(&map, 0, &mut buf)?;
    eq("read through the mapping", r, Copied::Fault { done: 4 * page, fault_off: 4 * page })?;
    same("mapped data", buf.get(..size).unwrap_or_default(), &data)?;
    ensure!(buf.get(size..4 * page).unwrap_or_default().iter().all(|&b| b == 0), "tail of the EOF page not zero");
    eq("write through the mapping", probe::write(&map, 5000, b"via mmap")?, Copied::All)?;
    map.msync().ctx("msync")?;
    same("pread sees the mapped write", &read_at(&f, 5000, 8)?, b"via mmap")?;
    f.write_all_at(b"via pwrite", 6000).ctx("pwrite")?;
    let mut b = [0u8; 10];
    probe::read(&map, 6000, &mut b)?;
    same("mapping sees pwrite", &b, b"via pwrite")?;
    f.set_len(5000).ctx("ftruncate 5000")?;
    let r = probe::read(&map, page, &mut buf[..page])?;
    eq("read of the page holding EOF after truncate", r, Copied::All)?;
    let r = probe::read(&map, 2 * page, &mut buf[..page])?;
    eq("read past EOF after truncate", r, Copied::Fault { done: 0, fault_off: 2 * page })?;
    drop(map);
    // Kept: a file written only through a mapping.
    let k = c.keep.join("mmap-written");
    let kf = write_file(&k, b"")?;
    kf.set_len(8192).ctx("size mmap-written")?;
    let text: Vec<u8> = b"written through mmap\n".iter().copied().cycle().take(8192).collect();
    let km = Mapping::new(&kf, 0, 8192, true).ctx("mmap keep")?;
    eq("keep write", probe::write(&km, 0, &text)?, Copied::All)?;
    km.msync().ctx("msync keep")?;
    Ok(Outcome::Pass(String::new()))
}

/// A write through a shared mapping, its writeback started, then an
/// open(O_TRUNC): once the open returned the file is empty, and it must
/// stay empty — the earlier write must not land after the truncation.
pub fn mmap_then_otrunc(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("mo");
    let mut resurrected = Vec::new();
    for i in 0..c.otrunc_rounds {
        let f = write_file(&p, b"")?;
        f.set_len(1 << 20).ctx("ftruncate 1M")?;
        let map = match Mapping::new(&f, 0, 1 << 20, true) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                return Ok(Outcome::Skip("mmap MAP_SHARED: ENODEV".into()));
            }
            Err(e) => bail!("mmap: {e}"),
        };
        eq("mapped write", probe::write(&map, 512 * 1024 + 100, &[b'x'; 4000])?, Copied::All)?;
        sys::start_writeback(&f).ctx("sync_file_range")?;
        drop(File::create(&p).ctx("open O_TRUNC")?);
        drop(map);
        drop(f);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let size = sys::statx_size_sync(&p).ctx("statx")?;
        if size != 0 {
            resurrected.push(format!("round {i}: size {size:#x}"));
        }
    }
    ensure!(
        resurrected.is_empty(),
        "{} of {} rounds: size not 0 after open(O_TRUNC) ({})",
        resurrected.len(),
        c.otrunc_rounds,
        resurrected.join(", ")
    );
    Ok(Outcome::Pass(format!("{} rounds", c.otrunc_rounds)))
}

/// Result of one fallocate call: Ok(None) done, Ok(Some(skip)) unsupported.
fn falloc(f: &File, mode: i32, off: u64, len: u64, what: &str) -> Result<Option<Outcome>> {
    match sys::fallocate(f, mode, off, len) {
        Ok(()) => Ok(None),
        Err(e) if is_unsupported(&e) => Ok(Some(Outcome::Skip(format!("{what}: {}", errno_name(&e))))),
        Err(e) => bail!("{what}: {} ({e})", errno_name(&e)),
    }
}

fn blocks(f: &File) -> Result<u64> {
    Ok(f.metadata().ctx("fstat")?.blocks() * 512)
}

/// fallocate(mode 0): allocates and extends.
pub fn falloc_default(c: &Ctx) -> Result<Outcome> {
    let f = write_file(&c.work.join("fa"), b"")?;
    if let Some(s) = falloc(&f, 0, 0, 1 << 20, "fallocate 0..1M")? {
        return Ok(s);
    }
    eq("size", f.metadata().ctx("fstat")?.len(), 1 << 20)?;
    ensure!(blocks(&f)? >= 1 << 20, "allocated {} bytes, want >= 1 MiB", blocks(&f)?);
    same("reads zeros", &read_at(&f, 0, 1 << 20)?, &vec![0u8; 1 << 20])?;
    if let Some(s) = falloc(&f, 0, 512 * K, 1 << 20, "fallocate 512K..1.5M")? {
        return Ok(s);
    }
    eq("size after overlapping extend", f.metadata().ctx("fstat")?.len(), 1536 * K)?;
    Ok(Outcome::Pass(String::new()))
}

/// fallocate(KEEP_SIZE): allocates past EOF without changing the size.
pub fn falloc_keep_size(c: &Ctx) -> Result<Outcome> {
    let data = pattern(6, 4096);
    let f = write_file(&c.work.join("fk"), &data)?;
    let before = blocks(&f)?;
    if let Some(s) = falloc(&f, libc::FALLOC_FL_KEEP_SIZE, 4096, 1 << 20, "fallocate KEEP_SIZE")? {
        return Ok(s);
    }
    eq("size unchanged", f.metadata().ctx("fstat")?.len(), 4096)?;
    let after = blocks(&f)?;
    ensure!(after >= before + (1 << 20), "allocated {before} -> {after} bytes, want +1 MiB");
    same("data intact", &read_at(&f, 0, 8192)?, &data)?;
    Ok(Outcome::Pass(format!("allocated {before} -> {after}")))
}

/// fallocate(PUNCH_HOLE|KEEP_SIZE): aligned and unaligned holes read as
/// zeros, blocks are freed, the size stays.
pub fn falloc_punch_hole(c: &Ctx) -> Result<Outcome> {
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let mut data = pattern(7, 256 * 1024);
    let f = write_file(&c.work.join("fp"), &data)?;
    f.sync_all().ctx("fsync")?;
    let before = blocks(&f)?;
    if let Some(s) = falloc(&f, punch, 64 * K, 64 * K, "punch 64K+64K")? {
        return Ok(s);
    }
    if let Some(s) = falloc(&f, punch, 1000, 2000, "punch 1000+2000")? {
        return Ok(s);
    }
    data.get_mut(64 * 1024..128 * 1024).unwrap_or_default().fill(0);
    data.get_mut(1000..3000).unwrap_or_default().fill(0);
    eq("size unchanged", f.metadata().ctx("fstat")?.len(), 256 * K)?;
    same("content after punch", &read_at(&f, 0, 256 * 1024)?, &data)?;
    let after = blocks(&f)?;
    // On a DAX file daxfsd allocates punched ranges under writable mappings again (DESIGN.md
    // I6: a write fault into a hole could SIGBUS the VM on ENOSPC), so blocks may stay.
    let dax = guest::sys::is_dax(&c.work.join("fp")).ok().flatten() == Some(true);
    ensure!(dax || after + 64 * K <= before, "blocks {before} -> {after}: the 64 KiB hole was not freed");
    // A punch past EOF changes nothing.
    if let Some(s) = falloc(&f, punch, 300 * K, 4 * K, "punch past EOF")? {
        return Ok(s);
    }
    eq("size after punch past EOF", f.metadata().ctx("fstat")?.len(), 256 * K)?;
    // Kept: 1 MiB of 'A' with a hole at 256K..512K.
    let kf = write_file(&c.keep.join("punched.bin"), &[b'A'; 1 << 20])?;
    kf.sync_all().ctx("fsync keep")?;
    if let Some(s) = falloc(&kf, punch, 256 * K, 256 * K, "punch keep")? {
        return Ok(s);
    }
    Ok(Outcome::Pass(format!("blocks {before} -> {after}")))
}

/// fallocate(ZERO_RANGE) inside the file (with and without KEEP_SIZE) and
/// across EOF (extends without KEEP_SIZE).
pub fn falloc_zero_range(c: &Ctx) -> Result<Outcome> {
    let zero = libc::FALLOC_FL_ZERO_RANGE;
    let mut data = pattern(8, 64 * 1024);
    let f = write_file(&c.work.join("fz"), &data)?;
    if let Some(s) = falloc(&f, zero, 4 * K, 4 * K, "zero 4K+4K")? {
        return Ok(s);
    }
    if let Some(s) = falloc(&f, zero | libc::FALLOC_FL_KEEP_SIZE, 10_000, 100, "zero 10000+100 KEEP_SIZE")? {
        return Ok(s);
    }
    data.get_mut(4096..8192).unwrap_or_default().fill(0);
    data.get_mut(10_000..10_100).unwrap_or_default().fill(0);
    same("content after zero range", &read_at(&f, 0, 64 * 1024)?, &data)?;
    if let Some(s) = falloc(&f, zero, 60 * K, 16 * K, "zero 60K+16K (extends)")? {
        return Ok(s);
    }
    eq("size after extending zero range", f.metadata().ctx("fstat")?.len(), 76 * K)?;
    data.truncate(60 * 1024);
    data.resize(76 * 1024, 0);
    same("content after extending zero range", &read_at(&f, 0, 80 * 1024)?, &data)?;
    Ok(Outcome::Pass(String::new()))
}

/// fallocate(COLLAPSE_RANGE). FUSE (Linux) refuses it in the guest with
/// EOPNOTSUPP: then a skip.
pub fn falloc_collapse_range(c: &Ctx) -> Result<Outcome> {
    let data = pattern(9, 64 * 1024);
    let f = write_file(&c.work.join("fc"), &data)?;
    f.sync_all().ctx("fsync")?;
    if let Some(s) = falloc(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 16 * K, 16 * K, "collapse 16K+16K")? {
        return Ok(s);
    }
    let mut want = data.get(..16 * 1024).unwrap_or_default().to_vec();
    want.extend_from_slice(data.get(32 * 1024..).unwrap_or_default());
    eq("size", f.metadata().ctx("fstat")?.len(), 48 * K)?;
    same("content after collapse", &read_at(&f, 0, 64 * 1024)?, &want)?;
    Ok(Outcome::Pass(String::new()))
}

/// fallocate(INSERT_RANGE); skip when unsupported (as FUSE does).
pub fn falloc_insert_range(c: &Ctx) -> Result<Outcome> {
    let data = pattern(10, 64 * 1024);
    let f = write_file(&c.work.join("fi"), &data)?;
    f.sync_all().ctx("fsync")?;
    if let Some(s) = falloc(&f, libc::FALLOC_FL_INSERT_RANGE, 16 * K, 8 * K, "insert 8K at 16K")? {
        return Ok(s);
    }
    let mut want = data.get(..16 * 1024).unwrap_or_default().to_vec();
    want.resize(24 * 1024, 0);
    want.extend_from_slice(data.get(16 * 1024..).unwrap_or_default());
    eq("size", f.metadata().ctx("fstat")?.len(), 72 * K)?;
    same("content after insert", &read_at(&f, 0, 80 * 1024)?, &want)?;
    Ok(Outcome::Pass(String::new()))
}

/// SEEK_DATA/SEEK_HOLE over data|hole|data|hole. Without hole reporting
/// (LSEEK not implemented: the kernel treats the whole file as data) the
/// answers must still be consistent.
pub fn seek_data_hole(c: &Ctx) -> Result<Outcome> {
    const M: u64 = 1 << 20;
    let f = write_file(&c.work.join("sk"), &pattern(11, 4096))?;
    f.write_all_at(&pattern(12, 4096), M).ctx("write at 1M")?;
    f.set_len(2 * M).ctx("ftruncate 2M")?;
    f.sync_all().ctx("fsync")?;
    let seek = |off: u64, whence: i32| sys::lseek(&f, off, whence);
    eq("SEEK_DATA 0", seek(0, libc::SEEK_DATA).ctx("SEEK_DATA 0")?, 0)?;
    let hole = seek(0, libc::SEEK_HOLE).ctx("SEEK_HOLE 0")?;
    expect_errno(seek(2 * M, libc::SEEK_DATA), &[ENXIO], "SEEK_DATA at EOF")?;
    expect_errno(seek(2 * M, libc::SEEK_HOLE), &[ENXIO], "SEEK_HOLE at EOF")?;
    if hole == 2 * M {
        // No hole information: everything is data.
        eq("SEEK_DATA in the would-be hole", seek(8192, libc::SEEK_DATA).ctx("SEEK_DATA 8192")?, 8192)?;
        return Ok(Outcome::Pass("no hole reporting (whole file is data)".into()));
    }
    ensure!((4096..=M).contains(&hole), "SEEK_HOLE 0 = {hole}, want 4096..=1M");
    eq("SEEK_DATA from the hole", seek(hole, libc::SEEK_DATA).ctx("SEEK_DATA hole")?, M)?;
    let hole2 = seek(M, libc::SEEK_HOLE).ctx("SEEK_HOLE 1M")?;
    ensure!((M + 4096..=2 * M).contains(&hole2), "SEEK_HOLE 1M = {hole2}, want 1M+4K..=2M");
    expect_errno(seek(M + 8192, libc::SEEK_DATA), &[ENXIO], "SEEK_DATA in the trailing hole")?;
    eq("SEEK_HOLE in the trailing hole", seek(M + 8192, libc::SEEK_HOLE).ctx("SEEK_HOLE")?, M + 8192)?;
    Ok(Outcome::Pass(format!("holes at {hole} and {hole2}")))
}

fn cfr_all(src: &File, src_off: u64, dst: &File, dst_off: u64, len: usize) -> Result<usize> {
    let mut done = 0;
    while done < len {
        let n = sys::copy_file_range(src, src_off + done as u64, dst, dst_off + done as u64, len - done)
            .with_ctx(|| format!("copy_file_range {len} bytes from {src_off} to {dst_off}"))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// copy_file_range between files, to an offset past EOF, within one file.
pub fn copy_file_range(c: &Ctx) -> Result<Outcome> {
    let data = pattern(13, (1 << 20) + 100);
    let src = write_file(&c.work.join("src"), &data)?;
    let dst = write_file(&c.work.join("dst"), b"")?;
    eq("bytes copied", cfr_all(&src, 0, &dst, 0, data.len())?, data.len())?;
    same("copy", &read_file(&c.work.join("dst"))?, &data)?;
    eq("copy to 2M", cfr_all(&src, 4103, &dst, 2 << 20, 10_000)?, 10_000)?;
    eq("size after copy past EOF", dst.metadata().ctx("fstat")?.len(), (2 << 20) + 10_000)?;
    same("gap is zeros", &read_at(&dst, data.len() as u64, 4096)?, &[0u8; 4096])?;
    same("copied piece", &read_at(&dst, 2 << 20, 10_000)?, data.get(4103..14_103).unwrap_or_default())?;
    eq("copy from EOF", cfr_all(&src, data.len() as u64, &dst, 0, 100)?, 0)?;
    // Within one file, non-overlapping.
    eq("same-file copy", cfr_all(&src, 0, &src, 1 << 21, 5000)?, 5000)?;
    same("same-file result", &read_at(&src, 1 << 21, 5000)?, data.get(..5000).unwrap_or_default())?;
    // Kept: a copy of data.txt (written by bigio) for the host to compare.
    let text = c.keep.join("data.txt");
    if text.exists() {
        let s = File::open(&text).ctx("open data.txt")?;
        let len = usize::try_from(s.metadata().ctx("fstat")?.len()).unwrap_or(0);
        let d = write_file(&c.keep.join("copy-of-data.txt"), b"")?;
        eq("keep copy", cfr_all(&s, 0, &d, 0, len)?, len)?;
    }
    Ok(Outcome::Pass(String::new()))
}

/// O_TMPFILE, then a name via linkat(/proc/self/fd/N); O_EXCL forbids it.
pub fn tmpfile(c: &Ctx) -> Result<Outcome> {
    let f = match sys::open(&c.work, libc::O_TMPFILE | libc::O_RDWR, 0o600) {
        Ok(f) => f,
        Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::EISDIR) => {
            return Ok(Outcome::Skip(format!("O_TMPFILE: {}", errno_name(&e))));
        }
        Err(e) => bail!("O_TMPFILE: {} ({e})", errno_name(&e)),
    };
    f.write_all_at(b"from O_TMPFILE\n", 0).ctx("write tmpfile")?;
    eq("nlink of the tmpfile", f.metadata().ctx("fstat")?.nlink(), 0)?;
    let name = c.keep.join("tmpfile-linked");
    sys::link_fd(&f, &name).ctx("linkat /proc/self/fd")?;
    eq("nlink after linkat", f.metadata().ctx("fstat")?.nlink(), 1)?;
    same("linked content", &read_file(&name)?, b"from O_TMPFILE\n")?;
    let g = sys::open(&c.work, libc::O_TMPFILE | libc::O_RDWR | libc::O_EXCL, 0o600).ctx("O_TMPFILE|O_EXCL")?;
    expect_errno(sys::link_fd(&g, &c.work.join("never")), &[ENOENT], "linkat of an O_EXCL tmpfile")?;
    let _ = open_rw(&name)?;
    Ok(Outcome::Pass(String::new()))
}
