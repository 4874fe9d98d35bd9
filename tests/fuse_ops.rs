//! Every FUSE opcode the Linux virtio-fs client sends, success and error paths, through a real
//! vhost-user socket and the built daemon.
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::too_many_lines,
    clippy::panic
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::fuse::*;
use daxfsd::fuse::abi::*;

#[test]
fn init_reply_is_full_and_negotiates() {
    let d = Daemon::start(&[]);
    let c = d.client();
    assert_eq!(c.init.major, 7);
    assert_eq!(c.init.minor, 41);
    assert_eq!(c.init.max_write, 1 << 20);
    let flags = u64::from(c.init.flags) | (u64::from(c.init.flags2) << 32);
    assert_ne!(flags & FUSE_INIT_EXT, 0);
    assert_ne!(flags & FUSE_POSIX_LOCKS, 0);
    // Not offered by the client, so not granted.
    assert_eq!(flags & FUSE_WRITEBACK_CACHE, 0);
    assert_eq!(flags & FUSE_MAP_ALIGNMENT, 0);
}

#[test]
fn create_write_read_roundtrip_is_seen_on_host() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let data = pattern_bytes(7, 0, 300_000);
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o640).unwrap();
    assert_ne!(e.generation, 0);
    assert_eq!(c.write(e.nodeid, fh, 0, &data).unwrap() as usize, data.len());
    assert_eq!(c.read(e.nodeid, fh, 0, 1 << 20).unwrap(), data);
    assert_eq!(c.read(e.nodeid, fh, 1000, 10).unwrap(), data[1000..1010]);
    assert_eq!(c.read(e.nodeid, fh, 400_000, 10).unwrap(), Vec::<u8>::new());
    c.release(e.nodeid, fh).unwrap();
    assert_eq!(std::fs::read(d.path("f")).unwrap(), data);
    let md = std::fs::metadata(d.path("f")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!(c.getattr(e.nodeid).unwrap().attr.size, data.len() as u64);
}

#[test]
fn lookup_finds_host_files_and_counts_references() {
    let d = Daemon::start(&[]);
    std::fs::write(d.path("host"), b"hello").unwrap();
    let c = d.client();
    let e1 = c.lookup(1, "host").unwrap();
    let e2 = c.lookup(1, "host").unwrap();
    assert_eq!(e1.nodeid, e2.nodeid);
    assert_eq!(e1.attr.size, 5);
    assert_eq!(e1.attr.ino, std::fs::metadata(d.path("host")).unwrap().ino());
    assert_eq!(c.lookup(1, "missing").unwrap_err(), libc::ENOENT);
    c.forget(e1.nodeid, 1);
    assert!(c.getattr(e1.nodeid).is_ok(), "one lookup reference is left");
    c.forget(e1.nodeid, 1);
    assert_eq!(c.getattr(e1.nodeid).unwrap_err(), libc::ENOENT);
}

#[test]
fn names_that_escape_are_rejected() {
    let d = Daemon::start(&[]);
    let c = d.client();
    for bad in ["..", ".", "a/b", "/etc", ""] {
        assert_eq!(c.lookup(1, bad).unwrap_err(), libc::EINVAL, "{bad:?}");
        assert_eq!(c.mkdir(1, bad, 0o755).unwrap_err(), libc::EINVAL, "{bad:?}");
    }
    // A symlink pointing outside is created as a link, but never followed by lookups.
    c.symlink(1, "out", "/etc").unwrap();
    let e = c.lookup(1, "out").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(c.lookup(e.nodeid, "passwd").unwrap_err(), libc::ENOTDIR);
}

#[test]
fn directories_mkdir_readdir_rmdir() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let dir = c.mkdir(1, "d", 0o755).unwrap();
    for i in 0..300 {
        c.mkdir(dir.nodeid, &format!("sub{i:03}"), 0o700).unwrap();
    }
    let fh = c.opendir(dir.nodeid).unwrap();
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let ents = c.readdir(dir.nodeid, fh, off, 4096, false).unwrap();
        let Some(last) = ents.last() else { break };
        off = last.1;
        names.extend(ents.into_iter().map(|e| e.0));
    }
    c.releasedir(dir.nodeid, fh).unwrap();
    names.sort();
    assert_eq!(names.len(), 302);
    assert!(names.contains(&".".to_string()) && names.contains(&"sub299".to_string()));
    assert_eq!(c.rmdir(1, "d").unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(c.rmdir(dir.nodeid, "sub000"), Ok(()));
    assert!(!d.path("d/sub000").exists());
}

#[test]
fn readdirplus_returns_entries_with_nodeids() {
    let d = Daemon::start(&[]);
    std::fs::write(d.path("a"), b"1").unwrap();
    std::fs::write(d.path("b"), b"22").unwrap();
    let c = d.client();
    let fh = c.opendir(1).unwrap();
    let ents = c.readdir(1, fh, 0, 8192, true).unwrap();
    let a = ents.iter().find(|e| e.0 == "a").unwrap();
    assert_ne!(a.2, 0);
    assert_eq!(c.getattr(a.2).unwrap().attr.size, 1);
    let dot = ents.iter().find(|e| e.0 == ".").unwrap();
    assert_eq!(dot.2, 0, "'.' is listed without a node");
    c.releasedir(1, fh).unwrap();
}

#[test]
fn rename_link_symlink_unlink() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let f = c.make_file("f", b"abc");
    c.rename(1, "f", 1, "g").unwrap();
    assert!(d.path("g").exists() && !d.path("f").exists());
    c.make_file("h", b"x");
    assert_eq!(c.rename2(1, "g", 1, "h", libc::RENAME_NOREPLACE).unwrap_err(), libc::EEXIST);
    c.rename2(1, "g", 1, "h", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read(d.path("h")).unwrap(), b"abc");
    let l = c.link(f, 1, "hard").unwrap();
    assert_eq!(l.nodeid, f);
    assert_eq!(l.attr.nlink, 2);
    let s = c.symlink(1, "sym", "h").unwrap();
    assert_eq!(c.readlink(s.nodeid).unwrap(), b"h");
    assert_eq!(std::fs::read_link(d.path("sym")).unwrap().to_str(), Some("h"));
    c.unlink(1, "hard").unwrap();
    assert_eq!(c.unlink(1, "hard").unwrap_err(), libc::ENOENT);
}

#[test]
fn mknod_makes_fifo_that_is_never_opened() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let e = c.mknod(1, "fifo", libc::S_IFIFO | 0o644, 0).unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(c.open(e.nodeid, libc::O_RDONLY).unwrap_err(), libc::EBADF);
}

#[test]
fn setattr_chmod_truncate_utimes() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", &pattern_bytes(1, 0, 10_000));
    let s = SetattrIn { valid: FATTR_MODE | FATTR_SIZE, mode: 0o600, size: 100, ..Default::default() };
    let a = c.setattr(n, s).unwrap();
    assert_eq!(a.attr.size, 100);
    assert_eq!(a.attr.mode & 0o7777, 0o600);
    let t = SetattrIn {
        valid: FATTR_ATIME | FATTR_MTIME,
        atime: 1_000_000,
        mtime: 2_000_000,
        mtimensec: 5,
        ..Default::default()
    };
    let a = c.setattr(n, t).unwrap();
    assert_eq!((a.attr.atime, a.attr.mtime, a.attr.mtimensec), (1_000_000, 2_000_000, 5));
    let md = std::fs::metadata(d.path("f")).unwrap();
    assert_eq!((md.len(), md.mtime()), (100, 2_000_000));
}

#[test]
fn setattr_runs_with_caller_credentials() {
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let n = c.make_file("root-owned", b"x");
    c.uid = 1000;
    c.gid = 1000;
    let s = SetattrIn { valid: FATTR_MODE, mode: 0o777, ..Default::default() };
    assert_eq!(c.setattr(n, s).unwrap_err(), libc::EPERM, "only the owner may chmod");
    let e = c.mkdir(1, "user-dir", 0o755).unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (1000, 1000), "new nodes belong to the caller");
    let md = std::fs::metadata(d.path("user-dir")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
}

#[test]
fn statfs_statx_access_syncfs() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let s = c.statfs(1).unwrap();
    assert!(s.blocks > 0 && s.bsize > 0 && s.namelen > 0);
    let n = c.make_file("f", b"12345");
    let sx = c.statx(n).unwrap();
    assert_eq!(sx.stat.size, 5);
    assert_ne!(sx.stat.mask & libc::STATX_SIZE, 0);
    c.access(n, libc::R_OK as u32).unwrap();
    c.syncfs(1).unwrap();
}

#[test]
fn fsync_flush_fallocate_lseek_copy_file_range() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let (e, fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    c.write(e.nodeid, fh, 0, &pattern_bytes(3, 0, 8192)).unwrap();
    c.fsync(e.nodeid, fh, false).unwrap();
    c.fsync(e.nodeid, fh, true).unwrap();
    c.flush(e.nodeid, fh, 77).unwrap();
    c.fallocate(e.nodeid, fh, 0, 0, 1 << 20).unwrap();
    assert_eq!(c.getattr(e.nodeid).unwrap().attr.size, 1 << 20);
    let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
    c.fallocate(e.nodeid, fh, punch, 0, 4096).unwrap();
    assert_eq!(c.read(e.nodeid, fh, 0, 8).unwrap(), vec![0; 8]);
    assert_eq!(c.read(e.nodeid, fh, 4096, 4).unwrap(), pattern_bytes(3, 4096, 4));
    assert_eq!(c.lseek(e.nodeid, fh, 0, libc::SEEK_DATA as u32).unwrap(), 4096);
    assert_eq!(c.lseek(e.nodeid, fh, 1 << 21, libc::SEEK_DATA as u32).unwrap_err(), libc::ENXIO);
    let (e2, fh2) = c.create(1, "g", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let cfr =
        CopyFileRangeIn { fh_in: fh, off_in: 4096, nodeid_out: e2.nodeid, fh_out: fh2, off_out: 0, len: 100, flags: 0 };
    assert_eq!(c.copy_file_range(cfr, e.nodeid).unwrap(), 100);
    assert_eq!(std::fs::read(d.path("g")).unwrap(), pattern_bytes(3, 4096, 100));
    c.release(e.nodeid, fh).unwrap();
    c.release(e2.nodeid, fh2).unwrap();
    assert_eq!(c.release(e2.nodeid, fh2).unwrap_err(), libc::EBADF);
}

#[test]
fn tmpfile_is_unnamed_and_writable() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let (e, fh) = c.tmpfile(1, libc::O_RDWR, 0o600).unwrap();
    assert_eq!(c.write(e.nodeid, fh, 0, b"tmp").unwrap(), 3);
    assert_eq!(c.read(e.nodeid, fh, 0, 3).unwrap(), b"tmp");
    assert_eq!(std::fs::read_dir(d.share.path()).unwrap().count(), 0);
    c.release(e.nodeid, fh).unwrap();
}

#[test]
fn xattrs_need_the_option_and_then_work() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"");
    assert_eq!(c.setxattr(n, "user.k", b"v", 0).unwrap_err(), libc::ENOSYS);
    let d = Daemon::start(&["--xattr"]);
    let c = d.client();
    let n = c.make_file("f", b"");
    c.setxattr(n, "user.k", b"value", 0).unwrap();
    assert_eq!(c.getxattr(n, "user.k", 64).unwrap(), b"value");
    assert_eq!(parse::<GetxattrOut>(&c.getxattr(n, "user.k", 0).unwrap()).size, 5);
    assert_eq!(c.getxattr(n, "user.k", 2).unwrap_err(), libc::ERANGE);
    assert_eq!(c.listxattr(n, 256).unwrap(), b"user.k\0");
    assert_eq!(c.setxattr(n, "user.k", b"v", libc::XATTR_CREATE as u32).unwrap_err(), libc::EEXIST);
    c.removexattr(n, "user.k").unwrap();
    assert_eq!(c.getxattr(n, "user.k", 64).unwrap_err(), libc::ENODATA);
    assert_eq!(c.setxattr(n, "system.posix_acl_access", b"x", 0).unwrap_err(), libc::EOPNOTSUPP);
}

fn lock(start: u64, end: u64, typ: i32) -> FileLock {
    FileLock { start, end, typ: typ as u32, pid: 1 }
}

#[test]
fn posix_locks_are_forwarded_to_the_host() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    c.lk(Opcode::Setlk, n, fh, 1, lock(0, 9, libc::F_WRLCK), false).unwrap();
    // Another owner conflicts, and GETLK reports the holder's range.
    assert_eq!(c.lk(Opcode::Setlk, n, fh, 2, lock(5, 5, libc::F_RDLCK), false).unwrap_err(), libc::EAGAIN);
    let got: LkOut = parse(&c.lk(Opcode::Getlk, n, fh, 2, lock(0, 100, libc::F_RDLCK), false).unwrap());
    assert_eq!((got.lk.typ, got.lk.start, got.lk.end), (libc::F_WRLCK as u32, 0, 9));
    // A host process sees the lock too.
    let f = std::fs::OpenOptions::new().write(true).open(d.path("f")).unwrap();
    let mut fl = libc::flock { l_type: libc::F_WRLCK as i16, l_whence: 0, l_start: 0, l_len: 1, l_pid: 0 };
    use std::os::fd::AsRawFd;
    // SAFETY: `fl` is a live flock for the duration of the call; `f` stays open.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    assert_eq!(r, -1, "host locker must conflict");
    // FLUSH by the owner drops its locks.
    c.flush(n, fh, 1).unwrap();
    c.lk(Opcode::Setlk, n, fh, 2, lock(5, 5, libc::F_RDLCK), false).unwrap();
    c.release(n, fh).unwrap();
}

#[test]
fn unimplemented_opcodes_answer_enosys() {
    let d = Daemon::start(&[]);
    let c = d.client();
    for op in [Opcode::Ioctl, Opcode::Poll, Opcode::Bmap, Opcode::Setupmapping] {
        assert_eq!(c.call(op, 1, &[&[0u8; 64]], 64).unwrap_err(), libc::ENOSYS, "{op:?}");
    }
    assert_eq!(c.call_on(REQ_Q, 999, 1, &[], 0).unwrap_err(), libc::ENOSYS);
}

#[test]
fn readonly_export_refuses_writes() {
    let d = Daemon::start(&["--readonly"]);
    std::fs::write(d.path("f"), b"ro").unwrap();
    let c = d.client();
    assert_eq!(c.mkdir(1, "x", 0o755).unwrap_err(), libc::EROFS);
    let e = c.lookup(1, "f").unwrap();
    assert_eq!(c.open(e.nodeid, libc::O_RDWR).unwrap_err(), libc::EROFS);
    let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(e.nodeid, fh, 0, 10).unwrap(), b"ro");
}

#[test]
fn destroy_then_init_starts_a_new_session() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"x");
    c.destroy().unwrap();
    assert_eq!(c.getattr(n).unwrap_err(), libc::EIO, "no session after DESTROY");
    c.do_init(FUSE_INIT_EXT);
    assert_eq!(c.getattr(n).unwrap_err(), libc::ENOENT, "old node ids are gone");
    assert!(c.lookup(1, "f").is_ok());
}

#[test]
fn killpriv_v2_write_clears_suid() {
    let d = Daemon::start(&["--killpriv-v2"]);
    let c = d.client();
    let flags = c.do_init(FUSE_INIT_EXT | FUSE_HANDLE_KILLPRIV_V2);
    assert_ne!(flags.flags & FUSE_HANDLE_KILLPRIV_V2 as u32, 0);
    let (e, fh) = c.create(1, "suid", libc::O_RDWR | libc::O_CREAT, 0o4755).unwrap();
    assert_eq!(c.getattr(e.nodeid).unwrap().attr.mode & 0o7777, 0o4755);
    let w = WriteIn { fh, offset: 0, size: 1, write_flags: FUSE_WRITE_KILL_SUIDGID, ..Default::default() };
    use zerocopy::IntoBytes;
    c.call(Opcode::Write, e.nodeid, &[w.as_bytes(), b"x"], 8).unwrap();
    assert_eq!(std::fs::metadata(d.path("suid")).unwrap().permissions().mode() & 0o7777, 0o755);
    // A plain write (no kill flag) leaves the bits alone, as the guest asked for nothing.
    let s = SetattrIn { valid: FATTR_MODE, mode: 0o4755, ..Default::default() };
    c.setattr(e.nodeid, s).unwrap();
    c.write(e.nodeid, fh, 1, b"y").unwrap();
    assert_eq!(std::fs::metadata(d.path("suid")).unwrap().permissions().mode() & 0o7777, 0o4755);
}

#[test]
fn flock_conflicts_between_handles() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"x");
    let fh1 = c.open(n, libc::O_RDONLY).unwrap();
    let fh2 = c.open(n, libc::O_RDONLY).unwrap();
    c.lk(Opcode::Setlk, n, fh1, 1, lock(0, u64::MAX, libc::F_WRLCK), true).unwrap();
    assert_eq!(c.lk(Opcode::Setlk, n, fh2, 2, lock(0, u64::MAX, libc::F_RDLCK), true).unwrap_err(), libc::EAGAIN);
    c.lk(Opcode::Setlk, n, fh1, 1, lock(0, u64::MAX, libc::F_UNLCK), true).unwrap();
    c.lk(Opcode::Setlk, n, fh2, 2, lock(0, u64::MAX, libc::F_RDLCK), true).unwrap();
}

#[test]
fn batch_forget_drops_every_listed_node_without_reply() {
    use zerocopy::IntoBytes;
    let d = Daemon::start(&[]);
    let c = d.client();
    let a = c.make_file("a", b"");
    let b = c.make_file("b", b"");
    let body = [
        BatchForgetIn { count: 2, dummy: 0 }.as_bytes(),
        ForgetOne { nodeid: a, nlookup: 1 }.as_bytes(),
        ForgetOne { nodeid: b, nlookup: 1 }.as_bytes(),
    ]
    .concat();
    let hdr = c.header(Opcode::BatchForget as u32, 0, body.len());
    let r = c.raw(HIPRIO_Q, &[hdr.as_bytes(), &body], 0);
    assert_eq!(r.used_len, 0);
    assert_eq!(c.getattr(a).unwrap_err(), libc::ENOENT);
    assert_eq!(c.getattr(b).unwrap_err(), libc::ENOENT);
}

#[test]
fn fsyncdir_getattr_by_handle_and_interrupt() {
    use zerocopy::IntoBytes;
    let d = Daemon::start(&[]);
    let c = d.client();
    let fh = c.opendir(1).unwrap();
    let f = FsyncIn { fh, fsync_flags: 0, padding: 0 };
    c.call(Opcode::Fsyncdir, 1, &[f.as_bytes()], 0).unwrap();
    let g = GetattrIn { getattr_flags: FUSE_GETATTR_FH, dummy: 0, fh };
    let a: AttrOut = parse(&c.call(Opcode::Getattr, 1, &[g.as_bytes()], 104).unwrap());
    assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let hdr = c.header(Opcode::Interrupt as u32, 0, 8);
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), InterruptIn { unique: 1 }.as_bytes()], 16);
    assert_eq!(r.used_len, 0, "INTERRUPT gets no reply");
    c.releasedir(1, fh).unwrap();
}

#[test]
fn access_is_checked_as_the_caller() {
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let n = c.make_file("secret", b"x");
    let s = SetattrIn { valid: FATTR_MODE, mode: 0o600, ..Default::default() };
    c.setattr(n, s).unwrap();
    c.uid = 1000;
    c.gid = 1000;
    assert_eq!(c.access(n, libc::R_OK as u32).unwrap_err(), libc::EACCES);
    c.uid = 0;
    c.gid = 0;
    c.access(n, libc::R_OK as u32).unwrap();
}

#[test]
fn ofd_lock_dies_with_its_released_handle() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh1 = c.open(n, libc::O_RDWR).unwrap();
    let fh2 = c.open(n, libc::O_RDWR).unwrap();
    // An OFD lock's owner is the guest's open file; its RELEASE names no owner.
    c.lk(Opcode::Setlk, n, fh1, 0xf11e, lock(0, 9, libc::F_WRLCK), false).unwrap();
    assert_eq!(c.lk(Opcode::Setlk, n, fh2, 0xf22e, lock(0, 9, libc::F_WRLCK), false).unwrap_err(), libc::EAGAIN);
    c.release(n, fh1).unwrap();
    c.lk(Opcode::Setlk, n, fh2, 0xf22e, lock(0, 9, libc::F_WRLCK), false).unwrap();
}
