//! Error paths of the FUSE opcodes through a real vhost-user socket and the built daemon: each
//! case asserts the exact errno the Linux host gives, then that the daemon still serves.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::panic
)]

mod common;

use common::fuse::*;
use daxfsd::fuse::abi::*;

/// A node id the daemon never handed out.
const UNKNOWN_NODE: u64 = 987_654;
/// A handle id the daemon never handed out.
const UNKNOWN_FH: u64 = 876_543;

/// Asserts that `r` failed with exactly `want`, then that the daemon still serves.
fn assert_errno<T>(d: &mut Daemon, c: &Client, r: Result<T, Errno>, want: i32, what: &str) {
    match r {
        Ok(_) => panic!("{what}: succeeded, wanted errno {want}"),
        Err(e) => assert_eq!(e, want, "{what}: errno {e}, wanted {want}"),
    }
    still_serving(d, c);
}

fn lock(start: u64, end: u64, typ: i32) -> FileLock {
    FileLock { start, end, typ: typ as u32, pid: 1 }
}

#[test]
fn readlink_regular_file_is_einval() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"not a link");
    assert_errno(&mut d, &c, c.readlink(n), libc::EINVAL, "READLINK of a regular file");
    let dir = c.mkdir(1, "d", 0o755).unwrap();
    assert_errno(&mut d, &c, c.readlink(dir.nodeid), libc::EINVAL, "READLINK of a directory");
}

#[test]
fn readlink_unknown_node_is_enoent() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    assert_errno(&mut d, &c, c.readlink(UNKNOWN_NODE), libc::ENOENT, "READLINK of an unknown node");
}

#[test]
fn mknod_existing_name_is_eexist() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.make_file("f", b"keep");
    let r = c.mknod(1, "f", libc::S_IFIFO | 0o644, 0);
    assert_errno(&mut d, &c, r, libc::EEXIST, "MKNOD over a file");
    let r = c.mknod(1, "f", libc::S_IFREG | 0o644, 0);
    assert_errno(&mut d, &c, r, libc::EEXIST, "MKNOD S_IFREG over a file");
    assert_eq!(std::fs::read(d.path("f")).unwrap(), b"keep", "the existing file is untouched");
}

#[test]
fn link_onto_existing_name_is_eexist() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let f = c.make_file("f", b"one");
    c.make_file("g", b"two");
    assert_errno(&mut d, &c, c.link(f, 1, "g"), libc::EEXIST, "LINK onto a file");
    assert_errno(&mut d, &c, c.link(f, 1, "f"), libc::EEXIST, "LINK onto itself");
    assert_eq!(std::fs::read(d.path("g")).unwrap(), b"two");
    assert_eq!(c.getattr(f).unwrap().attr.nlink, 1, "no link was made");
}

#[test]
fn link_of_directory_is_eperm() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let dir = c.mkdir(1, "d", 0o755).unwrap();
    assert_errno(&mut d, &c, c.link(dir.nodeid, 1, "d2"), libc::EPERM, "LINK of a directory");
    assert!(!d.path("d2").exists());
}

#[test]
fn rename_missing_source_is_enoent() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.make_file("g", b"target");
    assert_errno(&mut d, &c, c.rename(1, "missing", 1, "new"), libc::ENOENT, "RENAME of a missing name");
    assert_errno(&mut d, &c, c.rename(1, "missing", 1, "g"), libc::ENOENT, "RENAME of a missing name onto a file");
    assert_eq!(std::fs::read(d.path("g")).unwrap(), b"target");
    assert!(!d.path("new").exists());
}

#[test]
fn rename2_noreplace_onto_existing_is_eexist() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.make_file("a", b"aaa");
    c.make_file("b", b"bbb");
    let r = c.rename2(1, "a", 1, "b", libc::RENAME_NOREPLACE);
    assert_errno(&mut d, &c, r, libc::EEXIST, "RENAME2(NOREPLACE) onto a file");
    assert_eq!(std::fs::read(d.path("a")).unwrap(), b"aaa");
    assert_eq!(std::fs::read(d.path("b")).unwrap(), b"bbb");
}

#[test]
fn rename2_exchange_with_missing_target_is_enoent() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.make_file("a", b"aaa");
    let r = c.rename2(1, "a", 1, "missing", libc::RENAME_EXCHANGE);
    assert_errno(&mut d, &c, r, libc::ENOENT, "RENAME2(EXCHANGE) with a missing target");
    assert_eq!(std::fs::read(d.path("a")).unwrap(), b"aaa");
    assert!(!d.path("missing").exists());
}

#[test]
fn create_excl_existing_name_is_eexist() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.make_file("f", b"keep");
    let r = c.create(1, "f", libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC, 0o644);
    assert_errno(&mut d, &c, r, libc::EEXIST, "CREATE(O_EXCL) of an existing name");
    assert_eq!(std::fs::read(d.path("f")).unwrap(), b"keep", "O_TRUNC did not apply");
}

#[test]
fn create_in_regular_file_is_enotdir() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let f = c.make_file("f", b"");
    let r = c.create(f, "child", libc::O_RDWR | libc::O_CREAT, 0o644);
    assert_errno(&mut d, &c, r, libc::ENOTDIR, "CREATE under a regular file");
}

#[test]
fn opendir_regular_file_is_enotdir() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let f = c.make_file("f", b"x");
    assert_errno(&mut d, &c, c.opendir(f), libc::ENOTDIR, "OPENDIR of a regular file");
}

#[test]
fn dir_handle_ops_unknown_fh_are_ebadf() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let r = c.readdir(1, UNKNOWN_FH, 0, 4096, false);
    assert_errno(&mut d, &c, r, libc::EBADF, "READDIR");
    let r = c.readdir(1, UNKNOWN_FH, 0, 4096, true);
    assert_errno(&mut d, &c, r, libc::EBADF, "READDIRPLUS");
    assert_errno(&mut d, &c, c.fsyncdir(1, UNKNOWN_FH, false), libc::EBADF, "FSYNCDIR");
    assert_errno(&mut d, &c, c.releasedir(1, UNKNOWN_FH), libc::EBADF, "RELEASEDIR");
    // A live handle of another node is as unknown to this one.
    let f = c.make_file("f", b"");
    let fh = c.open(f, libc::O_RDONLY).unwrap();
    assert_errno(&mut d, &c, c.readdir(1, fh, 0, 4096, false), libc::EBADF, "READDIR with a file's fh");
    c.release(f, fh).unwrap();
}

#[test]
fn file_handle_ops_unknown_fh_are_ebadf() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    assert_errno(&mut d, &c, c.fsync(n, UNKNOWN_FH, false), libc::EBADF, "FSYNC");
    assert_errno(&mut d, &c, c.fsync(n, UNKNOWN_FH, true), libc::EBADF, "FSYNC(DATASYNC)");
    assert_errno(&mut d, &c, c.flush(n, UNKNOWN_FH, 1), libc::EBADF, "FLUSH");
    assert_errno(&mut d, &c, c.read(n, UNKNOWN_FH, 0, 4), libc::EBADF, "READ");
    assert_errno(&mut d, &c, c.write(n, UNKNOWN_FH, 0, b"XXXX"), libc::EBADF, "WRITE");
    assert_errno(&mut d, &c, c.release(n, UNKNOWN_FH), libc::EBADF, "RELEASE");
    assert_eq!(std::fs::read(d.path("f")).unwrap(), b"data", "the refused write wrote nothing");
}

#[test]
fn listxattr_size_too_small_is_erange() {
    let mut d = Daemon::start(&["--xattr"]);
    let c = d.client();
    let n = c.make_file("f", b"");
    c.setxattr(n, "user.aaaa", b"v", 0).unwrap();
    // The list is "user.aaaa\0": 10 bytes.
    assert_errno(&mut d, &c, c.listxattr(n, 9), libc::ERANGE, "LISTXATTR one byte short");
    assert_errno(&mut d, &c, c.listxattr(n, 1), libc::ERANGE, "LISTXATTR of size 1");
    assert_eq!(c.listxattr(n, 10).unwrap(), b"user.aaaa\0", "an exact fit is enough");
}

#[test]
fn removexattr_missing_is_enodata() {
    let mut d = Daemon::start(&["--xattr"]);
    let c = d.client();
    let n = c.make_file("f", b"");
    c.setxattr(n, "user.present", b"v", 0).unwrap();
    assert_errno(&mut d, &c, c.removexattr(n, "user.absent"), libc::ENODATA, "REMOVEXATTR of a missing name");
    assert_eq!(c.getxattr(n, "user.present", 8).unwrap(), b"v", "other attributes stay");
}

#[test]
fn getxattr_missing_is_enodata() {
    let mut d = Daemon::start(&["--xattr"]);
    let c = d.client();
    let n = c.make_file("f", b"");
    assert_errno(&mut d, &c, c.getxattr(n, "user.absent", 64), libc::ENODATA, "GETXATTR");
    assert_errno(&mut d, &c, c.getxattr(n, "user.absent", 0), libc::ENODATA, "GETXATTR size probe");
}

#[test]
fn lock_ops_unknown_fh_are_ebadf() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let l = lock(0, 9, libc::F_WRLCK);
    assert_errno(&mut d, &c, c.lk(Opcode::Getlk, n, UNKNOWN_FH, 1, l, false), libc::EBADF, "GETLK");
    assert_errno(&mut d, &c, c.lk(Opcode::Setlk, n, UNKNOWN_FH, 1, l, false), libc::EBADF, "SETLK");
    assert_errno(&mut d, &c, c.lk(Opcode::Setlkw, n, UNKNOWN_FH, 1, l, false), libc::EBADF, "SETLKW");
    assert_errno(&mut d, &c, c.lk(Opcode::Setlk, n, UNKNOWN_FH, 1, l, true), libc::EBADF, "SETLK(flock)");
}

#[test]
fn setlk_conflicting_owner_is_eagain() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    c.lk(Opcode::Setlk, n, fh, 1, lock(0, 9, libc::F_WRLCK), false).unwrap();
    let r = c.lk(Opcode::Setlk, n, fh, 2, lock(9, 20, libc::F_WRLCK), false);
    assert_errno(&mut d, &c, r, libc::EAGAIN, "SETLK overlapping another owner's write lock");
    // The refused request took nothing: past the holder's range, owner 2 locks fine.
    c.lk(Opcode::Setlk, n, fh, 2, lock(10, 20, libc::F_WRLCK), false).unwrap();
    c.release(n, fh).unwrap();
}

#[test]
fn node_ops_unknown_nodeid_are_enoent() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    assert_errno(&mut d, &c, c.statfs(UNKNOWN_NODE), libc::ENOENT, "STATFS");
    assert_errno(&mut d, &c, c.statx(UNKNOWN_NODE), libc::ENOENT, "STATX");
    assert_errno(&mut d, &c, c.getattr(UNKNOWN_NODE), libc::ENOENT, "GETATTR");
}

#[test]
fn copy_file_range_unknown_fh_is_ebadf() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let src = c.make_file("src", &pattern_bytes(4, 0, 100));
    let dst = c.make_file("dst", b"keep");
    let (fh_src, fh_dst) = (c.open(src, libc::O_RDONLY).unwrap(), c.open(dst, libc::O_RDWR).unwrap());
    let cfr = CopyFileRangeIn {
        fh_in: UNKNOWN_FH,
        off_in: 0,
        nodeid_out: dst,
        fh_out: fh_dst,
        off_out: 0,
        len: 10,
        flags: 0,
    };
    assert_errno(&mut d, &c, c.copy_file_range(cfr, src), libc::EBADF, "COPY_FILE_RANGE, unknown fh_in");
    let cfr = CopyFileRangeIn { fh_in: fh_src, fh_out: UNKNOWN_FH, ..cfr };
    assert_errno(&mut d, &c, c.copy_file_range(cfr, src), libc::EBADF, "COPY_FILE_RANGE, unknown fh_out");
    assert_eq!(std::fs::read(d.path("dst")).unwrap(), b"keep", "nothing was copied");
    c.release(src, fh_src).unwrap();
    c.release(dst, fh_dst).unwrap();
}

#[test]
fn fallocate_unknown_mode_bit_is_eopnotsupp() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    // vfs_fallocate refuses bits outside FALLOC_FL_MODE_MASK | KEEP_SIZE with EOPNOTSUPP before
    // any filesystem sees them, so the answer is the same on every host filesystem.
    let r = c.fallocate(n, fh, 0x4000_0000, 0, 4096);
    assert_errno(&mut d, &c, r, libc::EOPNOTSUPP, "FALLOCATE with an unknown mode bit");
    assert_eq!(c.getattr(n).unwrap().attr.size, 4, "nothing was allocated");
    c.release(n, fh).unwrap();
}

#[test]
fn fallocate_mode_bit_31_is_eopnotsupp() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"data");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    // Bit 31 is as unknown to vfs_fallocate as bit 30: the host answers EOPNOTSUPP for both.
    let r = c.fallocate(n, fh, 0x8000_0000, 0, 4096);
    assert_errno(&mut d, &c, r, libc::EOPNOTSUPP, "FALLOCATE with mode bit 31");
    c.release(n, fh).unwrap();
}

#[test]
fn lseek_seek_hole_in_sparse_file_returns_hole_offset() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let (e, fh) = c.create(1, "sparse", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    // Data [0, 64 KiB), a hole up to 1 MiB, data [1 MiB, 1 MiB + 64 KiB): 64 KiB-aligned, so
    // the hole is exact on any host block size up to 64 KiB.
    const K64: u64 = 64 << 10;
    const M1: u64 = 1 << 20;
    c.write(e.nodeid, fh, 0, &pattern_bytes(5, 0, K64 as usize)).unwrap();
    c.write(e.nodeid, fh, M1, &pattern_bytes(5, M1 as usize, K64 as usize)).unwrap();
    let (hole, data) = (libc::SEEK_HOLE as u32, libc::SEEK_DATA as u32);
    assert_eq!(c.lseek(e.nodeid, fh, 0, hole).unwrap(), K64, "the hole after the first run");
    assert_eq!(c.lseek(e.nodeid, fh, 2 * K64, hole).unwrap(), 2 * K64, "inside the hole");
    assert_eq!(c.lseek(e.nodeid, fh, 2 * K64, data).unwrap(), M1, "data after the hole");
    assert_eq!(c.lseek(e.nodeid, fh, M1, hole).unwrap(), M1 + K64, "the implicit hole at EOF");
    c.release(e.nodeid, fh).unwrap();
}

#[test]
fn lseek_seek_data_past_eof_is_enxio() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", &pattern_bytes(6, 0, 4096));
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    let (hole, data) = (libc::SEEK_HOLE as u32, libc::SEEK_DATA as u32);
    assert_errno(&mut d, &c, c.lseek(n, fh, 4096, data), libc::ENXIO, "SEEK_DATA at EOF");
    assert_errno(&mut d, &c, c.lseek(n, fh, 1 << 30, data), libc::ENXIO, "SEEK_DATA past EOF");
    assert_errno(&mut d, &c, c.lseek(n, fh, 1 << 30, hole), libc::ENXIO, "SEEK_HOLE past EOF");
    c.release(n, fh).unwrap();
}

#[test]
fn tmpfile_in_regular_file_is_enotdir() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let f = c.make_file("f", b"");
    assert_errno(&mut d, &c, c.tmpfile(f, libc::O_RDWR, 0o600), libc::ENOTDIR, "TMPFILE under a regular file");
}

#[test]
fn forget_unknown_nodeid_is_ignored() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"");
    // `forget` asserts that no reply comes back.
    c.forget(UNKNOWN_NODE, 1);
    c.forget(0, 1);
    c.forget(u64::MAX, u64::MAX);
    still_serving(&mut d, &c);
    assert!(c.getattr(n).is_ok(), "a known node was not forgotten in its place");
}

#[test]
fn batch_forget_unknown_nodeids_is_ignored() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"");
    // `batch_forget` asserts that no reply comes back.
    c.batch_forget(&[(UNKNOWN_NODE, 1), (0, 1), (u64::MAX, u64::MAX)]);
    still_serving(&mut d, &c);
    assert!(c.getattr(n).is_ok(), "a known node was not forgotten in its place");
    // Unknown ids mixed with a known one: the known one is still forgotten.
    c.batch_forget(&[(UNKNOWN_NODE, 1), (n, 1), (u64::MAX, 1)]);
    assert_eq!(c.getattr(n).unwrap_err(), libc::ENOENT);
    still_serving(&mut d, &c);
}
