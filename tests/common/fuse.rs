//! A small FUSE client over the test VMM: starts the built daemon on a socket in a temp dir,
//! builds requests with the daemon's own ABI structs, checks and parses replies.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use daxfsd::fuse::abi::*;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::vmm::{Desc, Reply, Vmm, VmmOptions};

/// The request queue tests use unless they pick one.
pub const REQ_Q: usize = 1;
/// The high-priority queue (FORGET).
pub const HIPRIO_Q: usize = 0;

/// A daemon process serving a fresh shared directory.
pub struct Daemon {
    child: Child,
    pub share: tempfile::TempDir,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts daxfsd with `--shared-dir`, `--socket-path`, `--tag testfs` and `extra` options.
    pub fn start(extra: &[&str]) -> Daemon {
        let share = tempfile::tempdir().unwrap();
        std::fs::set_permissions(share.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        Self::start_in(share, extra)
    }

    /// Starts daxfsd on an existing directory.
    pub fn start_in(share: tempfile::TempDir, extra: &[&str]) -> Daemon {
        Self::spawn(share, extra, None, &[])
    }

    /// Starts daxfsd under the command `wrap` (e.g. `unshare --pid --fork`): the daemon's
    /// binary and arguments follow it.
    #[allow(dead_code)]
    pub fn start_wrapped(wrap: &[&str], extra: &[&str]) -> Daemon {
        Self::spawn(tempfile::tempdir().unwrap(), extra, None, wrap)
    }

    /// Starts daxfsd as the unprivileged user `uid` (gid the same number), rootless: the share
    /// and the socket's directory are given to that user first.
    pub fn start_as(uid: u32, extra: &[&str]) -> Daemon {
        let share = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(share.path(), Some(uid), Some(uid)).unwrap();
        Self::spawn(share, extra, Some(uid), &[])
    }

    fn spawn(share: tempfile::TempDir, extra: &[&str], uid: Option<u32>, wrap: &[&str]) -> Daemon {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        }
        let socket = dir.path().join("vfs.sock");
        let log = dir.path().join("daemon.log");
        let bin = option_env!("CARGO_BIN_EXE_daxfsd").unwrap_or("target/debug/daxfsd");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd
            .arg("--shared-dir")
            .arg(share.path())
            .arg("--socket-path")
            .arg(&socket)
            .args(["--tag", "testfs", "--log-level", "debug"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, share, dir, socket, log };
        d.wait_for_socket();
        d
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "daemon never created its socket:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (up to 10 s) until the daemon's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in the daemon log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of `name` in the shared directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.share.path().join(name)
    }

    /// The pid of the process we started (the sandbox's supervisor, unless `--sandbox none`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid of the process that serves requests: the deepest descendant of the one we
    /// started (supervisor -> namespace init waiter -> daemon), as the host sees it.
    pub fn serving_pid(&self) -> u32 {
        let mut pid = self.child.id();
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            match kids.split_whitespace().next().and_then(|k| k.parse().ok()) {
                Some(k) => pid = k,
                None => return pid,
            }
        }
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The daemon's resident set (VmRSS of /proc/<pid>/status) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.serving_pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_ascii_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Connects a test VMM and negotiates INIT.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket, 1, VmmOptions::default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The out-header's error field of a raw reply (0 or a negative errno).
pub fn reply_errno(r: &Reply) -> i32 {
    i32::from_ne_bytes(r.written()[4..8].try_into().unwrap())
}

/// A FUSE session over one vhost-user connection.
pub struct Client {
    pub vmm: Vmm,
    unique: AtomicU64,
    pub uid: u32,
    pub gid: u32,
    pub init: InitOut,
}

/// A failed FUSE request: the positive errno.
pub type Errno = i32;

fn bytes_of<T: IntoBytes + Immutable>(v: &T) -> Vec<u8> {
    v.as_bytes().to_vec()
}

/// Parses a wire struct from the front of a reply payload.
pub fn parse<T: FromBytes + KnownLayout + Immutable>(b: &[u8]) -> T {
    T::read_from_prefix(b).unwrap_or_else(|_| panic!("reply of {} bytes too short", b.len())).0
}

/// A NUL-terminated name.
pub fn name(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

impl Client {
    /// Connects to `socket` with `queues` request queues and sends INIT.
    pub fn connect(socket: &Path, queues: usize, opts: VmmOptions) -> Client {
        let vmm = Vmm::connect(socket, 1 + queues, opts).unwrap();
        let mut c = Client { vmm, unique: AtomicU64::new(1), uid: 0, gid: 0, init: InitOut::default() };
        c.init = c.do_init(
            FUSE_INIT_EXT
                | FUSE_DO_READDIRPLUS
                | FUSE_POSIX_LOCKS
                | FUSE_FLOCK_LOCKS
                | FUSE_SETXATTR_EXT
                | FUSE_CREATE_SUPP_GROUP
                | FUSE_MAX_PAGES
                | FUSE_ATOMIC_O_TRUNC,
        );
        c
    }

    /// Connects as QEMU 11.1's generic device does (SHMEM: a DAX window) and offers DAX at INIT
    /// like `mount -o dax=always` (or `dax=inode` when `inode_dax`).
    pub fn connect_dax(socket: &Path, queues: usize, inode_dax: bool) -> Client {
        let opts = VmmOptions { shmem: true, mem_size: 128 << 20, ..VmmOptions::default() };
        let vmm = Vmm::connect(socket, 1 + queues, opts).unwrap();
        let mut c = Client { vmm, unique: AtomicU64::new(1), uid: 0, gid: 0, init: InitOut::default() };
        let mut flags = FUSE_INIT_EXT
            | FUSE_MAP_ALIGNMENT
            | FUSE_DO_READDIRPLUS
            | FUSE_POSIX_LOCKS
            | FUSE_ATOMIC_O_TRUNC
            | FUSE_MAX_PAGES;
        if inode_dax {
            flags |= FUSE_HAS_INODE_DAX;
        }
        c.init = c.do_init(flags);
        c
    }

    /// Sends INIT offering `flags`.
    pub fn do_init(&self, flags: u64) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 41,
            max_readahead: 128 * 1024,
            flags: (flags & 0xffff_ffff) as u32,
            flags2: (flags >> 32) as u32,
            ..Default::default()
        };
        parse(&self.call(Opcode::Init, 0, &[&bytes_of(&init)], 64).unwrap())
    }

    /// A header for `opcode` on `nodeid` with `body_len` bytes after it.
    pub fn header(&self, opcode: u32, nodeid: u64, body_len: usize) -> InHeader {
        InHeader {
            len: (size_of::<InHeader>() + body_len) as u32,
            opcode,
            unique: self.unique.fetch_add(1, Ordering::Relaxed),
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: 4242,
            total_extlen: 0,
            padding: 0,
        }
    }

    /// Sends raw readable parts on `queue` with one writable buffer of `out` bytes.
    pub fn raw(&self, queue: usize, parts: &[&[u8]], out: usize) -> Reply {
        let mut descs: Vec<Desc> = parts.iter().map(|p| Desc::Read(p)).collect();
        if out > 0 {
            descs.push(Desc::Write(out));
        }
        let t = self.vmm.submit(queue, &descs).unwrap();
        self.vmm.wait(t).unwrap()
    }

    /// Sends one request; returns the reply payload or the errno. Checks the out-header.
    pub fn call(&self, op: Opcode, nodeid: u64, args: &[&[u8]], out: usize) -> Result<Vec<u8>, Errno> {
        self.call_on(REQ_Q, op as u32, nodeid, args, out)
    }

    /// `call` with an explicit queue and raw opcode.
    pub fn call_on(&self, queue: usize, op: u32, nodeid: u64, args: &[&[u8]], out: usize) -> Result<Vec<u8>, Errno> {
        let body: Vec<u8> = args.concat();
        let hdr = self.header(op, nodeid, body.len());
        let reply = self.raw(queue, &[hdr.as_bytes(), &body], size_of::<OutHeader>() + out);
        check_reply(&reply, hdr.unique)
    }

    pub fn lookup(&self, parent: u64, n: &str) -> Result<EntryOut, Errno> {
        self.call(Opcode::Lookup, parent, &[&name(n)], 128).map(|b| parse(&b))
    }

    pub fn forget(&self, node: u64, nlookup: u64) {
        let hdr = self.header(Opcode::Forget as u32, node, 8);
        let r = self.raw(HIPRIO_Q, &[hdr.as_bytes(), ForgetIn { nlookup }.as_bytes()], 0);
        assert_eq!(r.used_len, 0);
    }

    /// BATCH_FORGET of (nodeid, nlookup) pairs; no reply is defined, so none may come.
    pub fn batch_forget(&self, nodes: &[(u64, u64)]) {
        let mut body = BatchForgetIn { count: nodes.len() as u32, dummy: 0 }.as_bytes().to_vec();
        for &(nodeid, nlookup) in nodes {
            body.extend_from_slice(ForgetOne { nodeid, nlookup }.as_bytes());
        }
        let hdr = self.header(Opcode::BatchForget as u32, 0, body.len());
        let r = self.raw(HIPRIO_Q, &[hdr.as_bytes(), &body], 0);
        assert_eq!(r.used_len, 0);
    }

    pub fn getattr(&self, node: u64) -> Result<AttrOut, Errno> {
        self.call(Opcode::Getattr, node, &[&bytes_of(&GetattrIn::default())], 104).map(|b| parse(&b))
    }

    pub fn setattr(&self, node: u64, s: SetattrIn) -> Result<AttrOut, Errno> {
        self.call(Opcode::Setattr, node, &[&bytes_of(&s)], 104).map(|b| parse(&b))
    }

    pub fn mkdir(&self, parent: u64, n: &str, mode: u32) -> Result<EntryOut, Errno> {
        let m = MkdirIn { mode: libc::S_IFDIR | mode, umask: 0 };
        self.call(Opcode::Mkdir, parent, &[&bytes_of(&m), &name(n)], 128).map(|b| parse(&b))
    }

    pub fn mknod(&self, parent: u64, n: &str, mode: u32, rdev: u32) -> Result<EntryOut, Errno> {
        let m = MknodIn { mode, rdev, umask: 0, padding: 0 };
        self.call(Opcode::Mknod, parent, &[&bytes_of(&m), &name(n)], 128).map(|b| parse(&b))
    }

    pub fn symlink(&self, parent: u64, n: &str, target: &str) -> Result<EntryOut, Errno> {
        self.call(Opcode::Symlink, parent, &[&name(n), &name(target)], 128).map(|b| parse(&b))
    }

    pub fn readlink(&self, node: u64) -> Result<Vec<u8>, Errno> {
        self.call(Opcode::Readlink, node, &[], 4096)
    }

    pub fn link(&self, node: u64, parent: u64, n: &str) -> Result<EntryOut, Errno> {
        self.call(Opcode::Link, parent, &[&bytes_of(&LinkIn { oldnodeid: node }), &name(n)], 128).map(|b| parse(&b))
    }

    pub fn unlink(&self, parent: u64, n: &str) -> Result<(), Errno> {
        self.call(Opcode::Unlink, parent, &[&name(n)], 0).map(drop)
    }

    pub fn rmdir(&self, parent: u64, n: &str) -> Result<(), Errno> {
        self.call(Opcode::Rmdir, parent, &[&name(n)], 0).map(drop)
    }

    pub fn rename2(&self, parent: u64, old: &str, newdir: u64, new: &str, flags: u32) -> Result<(), Errno> {
        let r = Rename2In { newdir, flags, padding: 0 };
        self.call(Opcode::Rename2, parent, &[&bytes_of(&r), &name(old), &name(new)], 0).map(drop)
    }

    pub fn rename(&self, parent: u64, old: &str, newdir: u64, new: &str) -> Result<(), Errno> {
        self.call(Opcode::Rename, parent, &[&bytes_of(&RenameIn { newdir }), &name(old), &name(new)], 0).map(drop)
    }

    /// CREATE: returns (entry, fh).
    pub fn create(&self, parent: u64, n: &str, flags: i32, mode: u32) -> Result<(EntryOut, u64), Errno> {
        // Like the kernel: the mode carries S_IFREG.
        let c = CreateIn { flags: flags as u32, mode: libc::S_IFREG | mode, umask: 0, open_flags: 0 };
        let b = self.call(Opcode::Create, parent, &[&bytes_of(&c), &name(n)], 144)?;
        let o: OpenOut = parse(&b[128..]);
        Ok((parse(&b), o.fh))
    }

    pub fn tmpfile(&self, parent: u64, flags: i32, mode: u32) -> Result<(EntryOut, u64), Errno> {
        let c = CreateIn { flags: flags as u32, mode: libc::S_IFREG | mode, umask: 0, open_flags: 0 };
        let b = self.call(Opcode::Tmpfile, parent, &[&bytes_of(&c)], 144)?;
        Ok((parse(&b), parse::<OpenOut>(&b[128..]).fh))
    }

    pub fn open(&self, node: u64, flags: i32) -> Result<u64, Errno> {
        let o = OpenIn { flags: flags as u32, open_flags: 0 };
        self.call(Opcode::Open, node, &[&bytes_of(&o)], 16).map(|b| parse::<OpenOut>(&b).fh)
    }

    pub fn opendir(&self, node: u64) -> Result<u64, Errno> {
        let o = OpenIn { flags: libc::O_RDONLY as u32, open_flags: 0 };
        self.call(Opcode::Opendir, node, &[&bytes_of(&o)], 16).map(|b| parse::<OpenOut>(&b).fh)
    }

    pub fn read(&self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let r = ReadIn { fh, offset, size, ..Default::default() };
        self.call(Opcode::Read, node, &[&bytes_of(&r)], size as usize)
    }

    pub fn write(&self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let w = WriteIn { fh, offset, size: data.len() as u32, ..Default::default() };
        self.call(Opcode::Write, node, &[&bytes_of(&w), data], 8).map(|b| parse::<WriteOut>(&b).size)
    }

    pub fn release(&self, node: u64, fh: u64) -> Result<(), Errno> {
        let r = ReleaseIn { fh, ..Default::default() };
        self.call(Opcode::Release, node, &[&bytes_of(&r)], 0).map(drop)
    }

    pub fn releasedir(&self, node: u64, fh: u64) -> Result<(), Errno> {
        let r = ReleaseIn { fh, ..Default::default() };
        self.call(Opcode::Releasedir, node, &[&bytes_of(&r)], 0).map(drop)
    }

    /// READDIR or READDIRPLUS from `offset`: returns (name, next offset, nodeid) triples.
    pub fn readdir(
        &self,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> Result<Vec<(String, u64, u64)>, Errno> {
        let r = ReadIn { fh, offset, size, ..Default::default() };
        let op = if plus { Opcode::Readdirplus } else { Opcode::Readdir };
        let b = self.call(op, node, &[&bytes_of(&r)], size as usize)?;
        Ok(parse_dirents(&b, plus))
    }

    pub fn statfs(&self, node: u64) -> Result<Kstatfs, Errno> {
        self.call(Opcode::Statfs, node, &[], 80).map(|b| parse(&b))
    }

    pub fn fsync(&self, node: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        let f = FsyncIn { fh, fsync_flags: if datasync { FUSE_FSYNC_FDATASYNC } else { 0 }, padding: 0 };
        self.call(Opcode::Fsync, node, &[&bytes_of(&f)], 0).map(drop)
    }

    pub fn fsyncdir(&self, node: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        let f = FsyncIn { fh, fsync_flags: if datasync { FUSE_FSYNC_FDATASYNC } else { 0 }, padding: 0 };
        self.call(Opcode::Fsyncdir, node, &[&bytes_of(&f)], 0).map(drop)
    }

    pub fn flush(&self, node: u64, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        let f = FlushIn { fh, lock_owner, ..Default::default() };
        self.call(Opcode::Flush, node, &[&bytes_of(&f)], 0).map(drop)
    }

    pub fn setxattr(&self, node: u64, n: &str, value: &[u8], flags: u32) -> Result<(), Errno> {
        let s = SetxattrIn { size: value.len() as u32, flags, setxattr_flags: 0, padding: 0 };
        self.call(Opcode::Setxattr, node, &[&bytes_of(&s), &name(n), value], 0).map(drop)
    }

    pub fn getxattr(&self, node: u64, n: &str, size: u32) -> Result<Vec<u8>, Errno> {
        let g = GetxattrIn { size, padding: 0 };
        self.call(Opcode::Getxattr, node, &[&bytes_of(&g), &name(n)], size.max(8) as usize)
    }

    pub fn listxattr(&self, node: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let g = GetxattrIn { size, padding: 0 };
        self.call(Opcode::Listxattr, node, &[&bytes_of(&g)], size.max(8) as usize)
    }

    pub fn removexattr(&self, node: u64, n: &str) -> Result<(), Errno> {
        self.call(Opcode::Removexattr, node, &[&name(n)], 0).map(drop)
    }

    pub fn lk(&self, op: Opcode, node: u64, fh: u64, owner: u64, lk: FileLock, flock: bool) -> Result<Vec<u8>, Errno> {
        let l = LkIn { fh, owner, lk, lk_flags: if flock { FUSE_LK_FLOCK } else { 0 }, padding: 0 };
        self.call(op, node, &[&bytes_of(&l)], 24)
    }

    /// Sends a SETLKW without waiting for its reply (it may block on another owner's lock);
    /// returns the ticket and the request's unique.
    pub fn submit_setlkw(&self, node: u64, fh: u64, owner: u64, lk: FileLock) -> (super::vmm::Ticket, u64) {
        let body = LkIn { fh, owner, lk, lk_flags: 0, padding: 0 };
        let hdr = self.header(Opcode::Setlkw as u32, node, size_of::<LkIn>());
        let descs = [Desc::Read(hdr.as_bytes()), Desc::Read(body.as_bytes()), Desc::Write(16)];
        (self.vmm.submit(REQ_Q, &descs).unwrap(), hdr.unique)
    }

    pub fn access(&self, node: u64, mask: u32) -> Result<(), Errno> {
        self.call(Opcode::Access, node, &[&bytes_of(&AccessIn { mask, padding: 0 })], 0).map(drop)
    }

    pub fn fallocate(&self, node: u64, fh: u64, mode: u32, offset: u64, length: u64) -> Result<(), Errno> {
        let f = FallocateIn { fh, offset, length, mode, padding: 0 };
        self.call(Opcode::Fallocate, node, &[&bytes_of(&f)], 0).map(drop)
    }

    pub fn lseek(&self, node: u64, fh: u64, offset: u64, whence: u32) -> Result<u64, Errno> {
        let l = LseekIn { fh, offset, whence, padding: 0 };
        self.call(Opcode::Lseek, node, &[&bytes_of(&l)], 8).map(|b| parse::<LseekOut>(&b).offset)
    }

    pub fn copy_file_range(&self, c: CopyFileRangeIn, node_in: u64) -> Result<u32, Errno> {
        self.call(Opcode::CopyFileRange, node_in, &[&bytes_of(&c)], 8).map(|b| parse::<WriteOut>(&b).size)
    }

    pub fn syncfs(&self, node: u64) -> Result<(), Errno> {
        self.call(Opcode::Syncfs, node, &[&bytes_of(&SyncfsIn::default())], 0).map(drop)
    }

    pub fn statx(&self, node: u64) -> Result<StatxOut, Errno> {
        let s = StatxIn { sx_mask: libc::STATX_BASIC_STATS | libc::STATX_BTIME, ..Default::default() };
        self.call(Opcode::Statx, node, &[&bytes_of(&s)], 288).map(|b| parse(&b))
    }

    pub fn setupmapping(&self, node: u64, foffset: u64, len: u64, flags: u64, moffset: u64) -> Result<(), Errno> {
        let s = SetupmappingIn { fh: u64::MAX, foffset, len, flags, moffset };
        self.call(Opcode::Setupmapping, node, &[&bytes_of(&s)], 0).map(drop)
    }

    pub fn removemapping(&self, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let mut body = RemovemappingIn { count: ranges.len() as u32 }.as_bytes().to_vec();
        for &(moffset, len) in ranges {
            body.extend_from_slice(RemovemappingOne { moffset, len }.as_bytes());
        }
        self.call(Opcode::Removemapping, 1, &[&body], 0).map(drop)
    }

    pub fn destroy(&self) -> Result<(), Errno> {
        self.call(Opcode::Destroy, 0, &[], 0).map(drop)
    }

    /// Creates `n` in the root with `data`, via CREATE + WRITE + RELEASE; returns its nodeid.
    pub fn make_file(&self, n: &str, data: &[u8]) -> u64 {
        let (e, fh) = self.create(1, n, libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
        if !data.is_empty() {
            assert_eq!(self.write(e.nodeid, fh, 0, data).unwrap() as usize, data.len());
        }
        self.release(e.nodeid, fh).unwrap();
        e.nodeid
    }
}

/// Checks an out-header (length, unique) and returns the payload or the errno.
pub fn check_reply(reply: &Reply, unique: u64) -> Result<Vec<u8>, Errno> {
    let w = reply.written();
    assert!(w.len() >= 16, "reply too short: {} bytes", w.len());
    let h: OutHeader = parse(w);
    assert_eq!(h.unique, unique, "reply for another request");
    assert_eq!(h.len as usize, w.len(), "out-header length disagrees with the used length");
    if h.error != 0 {
        assert!(h.error < 0 && h.error > -4096, "bad error {}", h.error);
        assert_eq!(w.len(), 16, "error replies carry no payload");
        return Err(-h.error);
    }
    Ok(w[16..].to_vec())
}

/// Parses READDIR(PLUS) records into (name, off, nodeid).
pub fn parse_dirents(mut b: &[u8], plus: bool) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (nodeid, rest) = if plus {
            let e: EntryOut = parse(b);
            (e.nodeid, &b[128..])
        } else {
            (0, b)
        };
        let d: Dirent = parse(rest);
        let name = String::from_utf8_lossy(&rest[24..24 + d.namelen as usize]).into_owned();
        let size = dirent_align(24 + d.namelen as usize) + if plus { 128 } else { 0 };
        out.push((name, d.off, nodeid));
        b = &b[size..];
    }
    out
}

/// The byte at offset `o` of a test file seeded `seed` (deterministic content).
pub fn pattern(seed: u8, o: usize) -> u8 {
    (o as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((o >> 8) as u8)
}

/// `len` bytes of pattern `seed` from offset `from`.
pub fn pattern_bytes(seed: u8, from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|o| pattern(seed, o)).collect()
}

/// After a bad request, the daemon must still be alive and answer a good one.
pub fn still_serving(d: &mut Daemon, c: &Client) {
    assert!(c.getattr(1).is_ok(), "daemon stopped answering:\n{}", d.log());
    assert!(d.is_running(), "daemon exited:\n{}", d.log());
}
