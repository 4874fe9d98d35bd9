//! Namespace and metadata checks: files, directories, rename(at2), links,
//! xattrs, permissions, ownership, readdir, statfs.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use guest::report::{Outcome, is_unsupported};
use guest::sys::{self, errno_name};
use guest::{Context, Result, bail, ensure};
use libc::{EEXIST, EISDIR, ELOOP, ENODATA, ENOENT, ENOTDIR, ENOTEMPTY, EPERM};

use crate::Ctx;
use crate::util::{eq, expect_errno, open_rw, read_at, read_file, same, write_file};

fn pass() -> Result<Outcome> {
    Ok(Outcome::Pass(String::new()))
}

/// Create, O_EXCL, append, holes, unlink-while-open, ENOENT, times, FIFOs.
pub fn files(c: &Ctx) -> Result<Outcome> {
    let p = c.work.join("f1");
    let f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(&p).ctx("create O_EXCL f1")?;
    expect_errno(OpenOptions::new().write(true).create_new(true).open(&p), &[EEXIST], "O_EXCL on existing")?;
    f.write_all_at(b"hello", 0).ctx("write")?;
    {
        use std::io::Write;
        let mut a = OpenOptions::new().append(true).open(&p).ctx("open O_APPEND")?;
        a.write_all(b" world").ctx("append")?;
    }
    same("after append", &read_file(&p)?, b"hello world")?;
    // A write past EOF leaves a hole that reads as zeros.
    f.write_all_at(b"X", 100).ctx("pwrite past EOF")?;
    eq("size after pwrite at 100", f.metadata().ctx("fstat")?.len(), 101)?;
    let mut want = b"hello world".to_vec();
    want.resize(100, 0);
    want.push(b'X');
    same("hole reads zeros", &read_file(&p)?, &want)?;
    // Unlink while open: the open file lives on.
    fs::remove_file(&p).ctx("unlink f1")?;
    expect_errno(File::open(&p), &[ENOENT], "open after unlink")?;
    eq("nlink after unlink", f.metadata().ctx("fstat")?.nlink(), 0)?;
    f.write_all_at(b"still here", 200).ctx("write to unlinked file")?;
    same("read unlinked file", &read_at(&f, 200, 10)?, b"still here")?;
    expect_errno(fs::remove_file(c.work.join("nope")), &[ENOENT], "unlink missing")?;
    expect_errno(File::open(c.work.join("nope")), &[ENOENT], "open missing")?;
    // Timestamps with nanoseconds.
    let t = c.keep.join("times");
    write_file(&t, b"times\n")?;
    sys::utimens(&t, (1_000_000_000, 5), (1_234_567_890, 123_456_789)).ctx("utimensat")?;
    let m = fs::metadata(&t).ctx("stat times")?;
    eq("mtime", (m.mtime(), m.mtime_nsec()), (1_234_567_890, 123_456_789))?;
    eq("atime", (m.atime(), m.atime_nsec()), (1_000_000_000, 5))?;
    // A FIFO.
    let fifo = c.keep.join("fifo");
    sys::mkfifo(&fifo, 0o640).ctx("mkfifo")?;
    let m = fs::symlink_metadata(&fifo).ctx("stat fifo")?;
    eq("fifo type", m.mode() & libc::S_IFMT, libc::S_IFIFO)?;
    pass()
}

/// mkdir, EEXIST, link counts, rmdir ENOTEMPTY/ENOTDIR, unlink EISDIR.
pub fn dirs(c: &Ctx) -> Result<Outcome> {
    let d = c.work.join("d");
    fs::create_dir(&d).ctx("mkdir d")?;
    expect_errno(fs::create_dir(&d), &[EEXIST], "mkdir existing")?;
    for s in ["a", "b", "c"] {
        fs::create_dir(d.join(s)).ctx("mkdir subdir")?;
    }
    fs::create_dir_all(d.join("a/x/y/z")).ctx("mkdir -p")?;
    eq("nlink of a dir with 3 subdirs", fs::metadata(&d).ctx("stat d")?.nlink(), 5)?;
    write_file(&d.join("b/file"), b"x")?;
    expect_errno(fs::remove_dir(d.join("b")), &[ENOTEMPTY, EEXIST], "rmdir non-empty")?;
    expect_errno(fs::remove_dir(d.join("b/file")), &[ENOTDIR], "rmdir a file")?;
    expect_errno(fs::remove_file(d.join("c")), &[EISDIR, EPERM], "unlink a dir")?;
    fs::remove_dir(d.join("c")).ctx("rmdir empty")?;
    eq("nlink after rmdir", fs::metadata(&d).ctx("stat d")?.nlink(), 4)?;
    ensure!(!d.join("c").exists(), "removed dir still exists");
    ensure!(fs::metadata(d.join("a/x/y/z")).ctx("stat deep")?.is_dir(), "deep path not a directory");
    pass()
}

/// rename: file, over a file, directory, over an empty dir; the errors.
pub fn rename(c: &Ctx) -> Result<Outcome> {
    let w = &c.work;
    write_file(&w.join("r1"), b"moved")?;
    let ino = fs::metadata(w.join("r1")).ctx("stat r1")?.ino();
    fs::rename(w.join("r1"), w.join("r2")).ctx("rename r1 r2")?;
    expect_errno(fs::metadata(w.join("r1")), &[ENOENT], "old name after rename")?;
    eq("inode kept", fs::metadata(w.join("r2")).ctx("stat r2")?.ino(), ino)?;
    same("renamed content", &read_file(&w.join("r2"))?, b"moved")?;
    // Over an existing file: replaced; the old target's open fd still works.
    write_file(&w.join("victim"), b"old")?;
    let victim = File::open(w.join("victim")).ctx("open victim")?;
    fs::rename(w.join("r2"), w.join("victim")).ctx("rename over file")?;
    same("replaced", &read_file(&w.join("victim"))?, b"moved")?;
    same("old target via fd", &read_at(&victim, 0, 10)?, b"old")?;
    // Directories.
    fs::create_dir(w.join("d1")).ctx("mkdir d1")?;
    write_file(&w.join("d1/inner"), b"inner")?;
    fs::rename(w.join("d1"), w.join("d2")).ctx("rename dir")?;
    same("file in renamed dir", &read_file(&w.join("d2/inner"))?, b"inner")?;
    fs::create_dir(w.join("empty")).ctx("mkdir empty")?;
    fs::rename(w.join("d2"), w.join("empty")).ctx("rename dir over empty dir")?;
    same("after dir over dir", &read_file(&w.join("empty/inner"))?, b"inner")?;
    fs::create_dir(w.join("full")).ctx("mkdir full")?;
    write_file(&w.join("full/x"), b"")?;
    expect_errno(fs::rename(w.join("empty"), w.join("full")), &[ENOTEMPTY, EEXIST], "rename over non-empty dir")?;
    expect_errno(fs::rename(w.join("victim"), w.join("full")), &[EISDIR], "rename file over dir")?;
    expect_errno(fs::rename(w.join("full"), w.join("victim")), &[ENOTDIR], "rename dir over file")?;
    expect_errno(fs::rename(w.join("missing"), w.join("x")), &[ENOENT], "rename missing")?;
    // Across directories, into the kept tree for the host.
    write_file(&w.join("before-rename"), b"renamed\n")?;
    fs::rename(w.join("before-rename"), c.keep.join("renamed")).ctx("rename into keep")?;
    pass()
}

fn renameat2_ctx(e: std::io::Error, what: &str) -> guest::Error {
    guest::Error(format!(
        "{what}: {} ({e}){}",
        errno_name(&e),
        if e.raw_os_error() == Some(libc::EINVAL) { " — RENAME2 flags not supported?" } else { "" }
    ))
}

/// renameat2(RENAME_NOREPLACE).
pub fn rename_noreplace(c: &Ctx) -> Result<Outcome> {
    let w = &c.work;
    let (a, b, n) = (w.join("a"), w.join("b"), w.join("new"));
    write_file(&a, b"a-content")?;
    write_file(&b, b"b-content")?;
    expect_errno(sys::renameat2(&a, &b, libc::RENAME_NOREPLACE), &[EEXIST], "NOREPLACE over existing")?;
    same("source untouched", &read_file(&a)?, b"a-content")?;
    same("target untouched", &read_file(&b)?, b"b-content")?;
    sys::renameat2(&a, &n, libc::RENAME_NOREPLACE).map_err(|e| renameat2_ctx(e, "NOREPLACE to a new name"))?;
    expect_errno(fs::metadata(&a), &[ENOENT], "source after NOREPLACE")?;
    same("moved", &read_file(&n)?, b"a-content")?;
    // Kept: a target that a refused NOREPLACE left alone.
    let t = c.keep.join("noreplace-target");
    write_file(&t, b"target\n")?;
    write_file(&w.join("intruder"), b"intruder\n")?;
    expect_errno(sys::renameat2(&w.join("intruder"), &t, libc::RENAME_NOREPLACE), &[EEXIST], "NOREPLACE into keep")?;
    pass()
}

/// renameat2(RENAME_EXCHANGE): two files, file and directory, missing.
pub fn rename_exchange(c: &Ctx) -> Result<Outcome> {
    let w = &c.work;
    let (x, y) = (w.join("x"), w.join("y"));
    write_file(&x, b"X")?;
    write_file(&y, b"Y")?;
    let (ix, iy) = (fs::metadata(&x).ctx("stat x")?.ino(), fs::metadata(&y).ctx("stat y")?.ino());
    sys::renameat2(&x, &y, libc::RENAME_EXCHANGE).map_err(|e| renameat2_ctx(e, "EXCHANGE two files"))?;
    same("x after exchange", &read_file(&x)?, b"Y")?;
    same("y after exchange", &read_file(&y)?, b"X")?;
    eq("inodes swapped", (fs::metadata(&x).ctx("stat x")?.ino(), fs::metadata(&y).ctx("stat y")?.ino()), (iy, ix))?;
    let d = w.join("dir");
    fs::create_dir(&d).ctx("mkdir dir")?;
    write_file(&d.join("in-dir"), b"D")?;
    sys::renameat2(&x, &d, libc::RENAME_EXCHANGE).map_err(|e| renameat2_ctx(e, "EXCHANGE file and dir"))?;
    same("dir now at x", &read_file(&x.join("in-dir"))?, b"D")?;
    same("file now at dir", &read_file(&d)?, b"Y")?;
    expect_errno(sys::renameat2(&y, &w.join("missing"), libc::RENAME_EXCHANGE), &[ENOENT], "EXCHANGE with missing")?;
    // Kept: exchange-a holds "B\n", exchange-b holds "A\n".
    let (ka, kb) = (c.keep.join("exchange-a"), c.keep.join("exchange-b"));
    write_file(&ka, b"A\n")?;
    write_file(&kb, b"B\n")?;
    sys::renameat2(&ka, &kb, libc::RENAME_EXCHANGE).map_err(|e| renameat2_ctx(e, "EXCHANGE in keep"))?;
    pass()
}

/// Hard links: count, shared inode and data, unlink one name, EPERM on dirs.
pub fn hardlink(c: &Ctx) -> Result<Outcome> {
    let (h1, h2) = (c.keep.join("hard-1"), c.keep.join("hard-2"));
    write_file(&h1, b"two names\n")?;
    fs::hard_link(&h1, &h2).ctx("link")?;
    let (m1, m2) = (fs::metadata(&h1).ctx("stat h1")?, fs::metadata(&h2).ctx("stat h2")?);
    eq("nlink", (m1.nlink(), m2.nlink()), (2, 2))?;
    eq("same inode", m1.ino(), m2.ino())?;
    let t1 = c.work.join("t1");
    write_file(&t1, b"linked")?;
    fs::hard_link(&t1, c.work.join("t2")).ctx("link t2")?;
    open_rw(&c.work.join("t2"))?.write_all_at(b"L", 0).ctx("write via t2")?;
    same("write via one name, read via other", &read_file(&t1)?, b"Linked")?;
    fs::remove_file(&t1).ctx("unlink t1")?;
    eq("nlink after unlink", fs::metadata(c.work.join("t2")).ctx("stat t2")?.nlink(), 1)?;
    expect_errno(fs::hard_link(&t1, c.work.join("t3")), &[ENOENT], "link from missing")?;
    fs::create_dir(c.work.join("d")).ctx("mkdir")?;
    expect_errno(fs::hard_link(c.work.join("d"), c.work.join("d2")), &[EPERM], "link a directory")?;
    expect_errno(fs::hard_link(c.work.join("t2"), c.work.join("d")), &[EEXIST], "link over existing")?;
    pass()
}

/// Symlinks: readlink, lstat vs stat, dangling, loops, O_NOFOLLOW, long targets.
pub fn symlink(c: &Ctx) -> Result<Outcome> {
    use std::os::unix::fs::symlink;
    let w = &c.work;
    write_file(&w.join("target"), b"target-content")?;
    symlink("target", w.join("sl")).ctx("symlink")?;
    eq("readlink", fs::read_link(w.join("sl")).ctx("readlink")?, "target".into())?;
    ensure!(fs::symlink_metadata(w.join("sl")).ctx("lstat")?.file_type().is_symlink(), "lstat: not a symlink");
    eq("stat follows", fs::metadata(w.join("sl")).ctx("stat")?.len(), 14)?;
    same("read through", &read_file(&w.join("sl"))?, b"target-content")?;
    symlink("does-not-exist", w.join("dangling")).ctx("dangling symlink")?;
    expect_errno(fs::metadata(w.join("dangling")), &[ENOENT], "stat dangling")?;
    symlink("loop-b", w.join("loop-a")).ctx("symlink loop-a")?;
    symlink("loop-a", w.join("loop-b")).ctx("symlink loop-b")?;
    expect_errno(File::open(w.join("loop-a")), &[ELOOP], "open a loop")?;
    expect_errno(
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(w.join("sl")),
        &[ELOOP],
        "O_NOFOLLOW on a symlink",
    )?;
    let long: String = "x/".repeat(500) + "end";
    symlink(&long, w.join("long")).ctx("symlink with a 1003-byte target")?;
    eq("long readlink", fs::read_link(w.join("long")).ctx("readlink long")?, long.into())?;
    expect_errno(symlink("t", w.join("sl")), &[EEXIST], "symlink over existing")?;
    // Kept for the host.
    symlink("data.txt", c.keep.join("link-to-data")).ctx("symlink in keep")?;
    pass()
}

/// user.* xattrs: set/get/list/remove, CREATE/REPLACE flags, big values,
/// directories. Unsupported (daemon without --xattr) is a skip.
pub fn xattr(c: &Ctx) -> Result<Outcome> {
    let f = c.work.join("xf");
    write_file(&f, b"x")?;
    if let Err(e) = sys::setxattr(&f, "user.daxfsd.test", b"value1", 0) {
        if is_unsupported(&e) {
            write_file(&c.keep.join("xattr-unsupported"), b"")?;
            return Ok(Outcome::Skip(format!("setxattr: {} (daemon without --xattr?)", errno_name(&e))));
        }
        bail!("setxattr: {} ({e})", errno_name(&e));
    }
    same("getxattr", &sys::getxattr(&f, "user.daxfsd.test").ctx("getxattr")?, b"value1")?;
    let names = sys::listxattr(&f).ctx("listxattr")?;
    ensure!(names.iter().any(|n| n == "user.daxfsd.test"), "listxattr: {names:?} lacks user.daxfsd.test");
    expect_errno(
        sys::setxattr(&f, "user.daxfsd.test", b"v", libc::XATTR_CREATE),
        &[EEXIST],
        "XATTR_CREATE on existing",
    )?;
    expect_errno(
        sys::setxattr(&f, "user.daxfsd.none", b"v", libc::XATTR_REPLACE),
        &[ENODATA],
        "XATTR_REPLACE on missing",
    )?;
    sys::setxattr(&f, "user.daxfsd.test", b"value2", libc::XATTR_REPLACE).ctx("XATTR_REPLACE")?;
    same("replaced value", &sys::getxattr(&f, "user.daxfsd.test").ctx("getxattr")?, b"value2")?;
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    sys::setxattr(&f, "user.daxfsd.big", &big, 0).ctx("setxattr 4000 bytes")?;
    same("big value", &sys::getxattr(&f, "user.daxfsd.big").ctx("getxattr big")?, &big)?;
    sys::setxattr(&f, "user.daxfsd.empty", b"", 0).ctx("setxattr empty value")?;
    same("empty value", &sys::getxattr(&f, "user.daxfsd.empty").ctx("getxattr empty")?, b"")?;
    sys::removexattr(&f, "user.daxfsd.test").ctx("removexattr")?;
    expect_errno(sys::getxattr(&f, "user.daxfsd.test"), &[ENODATA], "getxattr after remove")?;
    expect_errno(sys::removexattr(&f, "user.daxfsd.test"), &[ENODATA], "removexattr missing")?;
    let d = c.work.join("xd");
    fs::create_dir(&d).ctx("mkdir")?;
    sys::setxattr(&d, "user.daxfsd.dir", b"on a dir", 0).ctx("setxattr on a dir")?;
    same("dir xattr", &sys::getxattr(&d, "user.daxfsd.dir").ctx("getxattr dir")?, b"on a dir")?;
    let k = c.keep.join("xattr-file");
    write_file(&k, b"has an xattr\n")?;
    sys::setxattr(&k, "user.daxfsd", b"hello from the guest", 0).ctx("setxattr keep")?;
    pass()
}

/// chmod/fchmod, including set-uid (as root).
pub fn chmod(c: &Ctx) -> Result<Outcome> {
    let f = c.work.join("m");
    write_file(&f, b"")?;
    for mode in [0o640, 0o4755, 0o2750, 0o1777, 0o000, 0o644] {
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).with_ctx(|| format!("chmod {mode:o}"))?;
        eq(&format!("mode after chmod {mode:o}"), fs::metadata(&f).ctx("stat")?.mode() & 0o7777, mode)?;
    }
    let file = open_rw(&f)?;
    file.set_permissions(fs::Permissions::from_mode(0o600)).ctx("fchmod")?;
    eq("mode after fchmod", file.metadata().ctx("fstat")?.mode() & 0o7777, 0o600)?;
    fs::set_permissions(&c.work, fs::Permissions::from_mode(0o711)).ctx("chmod dir")?;
    eq("dir mode", fs::metadata(&c.work).ctx("stat dir")?.mode() & 0o7777, 0o711)?;
    let k = c.keep.join("suid");
    write_file(&k, b"#!/bin/sh\n")?;
    fs::set_permissions(&k, fs::Permissions::from_mode(0o4755)).ctx("chmod 4755 keep")?;
    pass()
}

/// chown/fchown/lchown (as root).
pub fn chown(c: &Ctx) -> Result<Outcome> {
    use std::os::unix::fs::{fchown, lchown};
    let f = c.work.join("o");
    write_file(&f, b"")?;
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).ctx("chown")?;
    let m = fs::metadata(&f).ctx("stat")?;
    eq("owner after chown", (m.uid(), m.gid()), (1234, 5678))?;
    std::os::unix::fs::chown(&f, None, Some(42)).ctx("chgrp")?;
    let m = fs::metadata(&f).ctx("stat")?;
    eq("owner after chgrp", (m.uid(), m.gid()), (1234, 42))?;
    let file = File::open(&f).ctx("open")?;
    fchown(&file, Some(0), Some(0)).ctx("fchown")?;
    let m = file.metadata().ctx("fstat")?;
    eq("owner after fchown", (m.uid(), m.gid()), (0, 0))?;
    std::os::unix::fs::symlink("o", c.work.join("ol")).ctx("symlink")?;
    lchown(c.work.join("ol"), Some(77), Some(88)).ctx("lchown")?;
    let l = fs::symlink_metadata(c.work.join("ol")).ctx("lstat")?;
    eq("symlink owner", (l.uid(), l.gid()), (77, 88))?;
    eq("target owner unchanged", fs::metadata(&f).ctx("stat")?.uid(), 0)?;
    let k = c.keep.join("chowned");
    write_file(&k, b"owned by 1234:5678\n")?;
    std::os::unix::fs::chown(&k, Some(1234), Some(5678)).ctx("chown keep")?;
    fs::set_permissions(&k, fs::Permissions::from_mode(0o640)).ctx("chmod keep")?;
    pass()
}

/// A large directory read back three ways; every name exactly once.
pub fn readdir(c: &Ctx) -> Result<Outcome> {
    let d = c.keep.join("many");
    fs::create_dir(&d).ctx("mkdir many")?;
    let mut want: Vec<String> = (0..c.dir_entries).map(|i| format!("entry-{i:05}")).collect();
    // A few names of the maximum length.
    for ch in ['a', 'b', 'c'] {
        want.push(std::iter::repeat_n(ch, 255).collect());
    }
    for n in &want {
        File::create(d.join(n)).with_ctx(|| format!("create {n}"))?;
    }
    fs::create_dir(d.join("subdir")).ctx("mkdir subdir")?;
    want.push("subdir".into());
    write_file(&c.keep.join("many-count"), format!("{}\n", want.len()).as_bytes())?;
    let check = |how: &str, seen: Vec<String>| -> Result<()> {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for n in &seen {
            *count.entry(n.as_str()).or_default() += 1;
        }
        if let Some((n, k)) = count.iter().find(|(_, k)| **k > 1) {
            bail!("{how}: {n:?} returned {k} times");
        }
        if let Some(n) = want.iter().find(|n| !count.contains_key(n.as_str())) {
            bail!("{how}: {n:?} missing ({} of {} names seen)", seen.len(), want.len());
        }
        if let Some(n) = seen.iter().find(|n| !want.contains(n)) {
            bail!("{how}: unexpected name {n:?}");
        }
        Ok(())
    };
    let std_names: Vec<String> = fs::read_dir(&d)
        .ctx("opendir")?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .ctx("readdir")?;
    check("readdir", std_names)?;
    // getdents64 with a 512-byte buffer: many READDIR requests, each
    // resuming at the previous offset.
    let dir = File::open(&d).ctx("open dir")?;
    let (ents, calls) = sys::getdents_all(&dir, 512).ctx("getdents64")?;
    let mut names = Vec::new();
    let mut dots = 0;
    for e in &ents {
        let n = String::from_utf8_lossy(&e.name).into_owned();
        if n == "." || n == ".." {
            dots += 1;
            continue;
        }
        let want_type = if n == "subdir" { libc::DT_DIR } else { libc::DT_REG };
        if e.kind != libc::DT_UNKNOWN && e.kind != want_type {
            bail!("getdents64: {n:?} has d_type {}, want {want_type}", e.kind);
        }
        ensure!(e.ino != 0, "getdents64: {n:?} has inode 0");
        names.push(n);
    }
    eq("'.' and '..' entries", dots, 2)?;
    check("getdents64 (512-byte buffer)", names)?;
    // And again from the start after rewinding.
    sys::lseek(&dir, 0, libc::SEEK_SET).ctx("rewinddir")?;
    let (again, _) = sys::getdents_all(&dir, 4096).ctx("getdents64 after rewind")?;
    eq("entries after rewind", again.len(), ents.len())?;
    Ok(Outcome::Pass(format!("{} entries, {calls} getdents64 calls", want.len())))
}

/// statfs of the mount.
pub fn statfs(c: &Ctx) -> Result<Outcome> {
    let st = sys::statfs(&c.work).ctx("statfs")?;
    eq("f_type", st.f_type, libc::FUSE_SUPER_MAGIC)?;
    ensure!(st.f_bsize > 0 && st.f_blocks > 0, "f_bsize {} f_blocks {}", st.f_bsize, st.f_blocks);
    ensure!(st.f_bfree <= st.f_blocks, "f_bfree {} > f_blocks {}", st.f_bfree, st.f_blocks);
    ensure!(st.f_bavail <= st.f_bfree, "f_bavail {} > f_bfree {}", st.f_bavail, st.f_bfree);
    ensure!(st.f_ffree <= st.f_files, "f_ffree {} > f_files {}", st.f_ffree, st.f_files);
    ensure!(st.f_namelen >= 255, "f_namelen {}", st.f_namelen);
    Ok(Outcome::Pass(format!(
        "bsize={} blocks={} bfree={} files={} namelen={}",
        st.f_bsize, st.f_blocks, st.f_bfree, st.f_files, st.f_namelen
    )))
}
