//! The DAX window: which file ranges the guest mapped where (the table), what is installed in
//! the frontend (pieces), the per-inode mmap rw-semaphore, and the shrink/grow/revoke rules
//! (DESIGN.md §3, I1-I6). Talks to the frontend only through `Mapper`; knows no FUSE or vhost.

mod copy;
mod guard;
mod lease;
mod probe;
mod setup;
mod slots;
mod sys;
mod window;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::log_limit::{error_limited, info_limited, warn_limited};
use log::{debug, info, warn};

pub use self::lease::block_sigio_in_process;
pub use self::slots::{FileId, RangeKey, max_window_slots};
use self::window::Room;
pub use self::window::Table;

/// An offset in the DAX window (shm region 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WinOffset(pub u64);

/// An offset in a mapped file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileOffset(pub u64);

/// Which inode a mapping belongs to (the filesystem's node id; opaque here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId(pub u64);

/// A range of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinRange {
    pub start: WinOffset,
    pub len: u64,
}

/// Installs and removes pieces of the window in the frontend. Each call returns only after the
/// frontend acknowledged it (I1).
pub trait Mapper: Send + Sync {
    /// Maps `len` bytes of `fd` at `foffset` at `range` (read-only unless `writable`).
    fn map(&self, range: WinRange, fd: BorrowedFd<'_>, foffset: FileOffset, writable: bool) -> Result<(), DaxError>;
    /// Unmaps exactly one earlier piece.
    fn unmap(&self, range: WinRange) -> Result<(), DaxError>;
}

/// Why a DAX operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DaxError {
    /// The guest asked for a range that is empty, misaligned or outside the window.
    #[error("range {moffset:#x}+{len:#x} is empty, misaligned or outside the window")]
    OutsideWindow { moffset: u64, len: u64 },
    /// The guest asked for a range whose end overflows.
    #[error("range {moffset:#x}+{len:#x} overflows")]
    Overflow { moffset: u64, len: u64 },
    /// The guest sent unknown SETUPMAPPING flags.
    #[error("unknown mapping flags {0:#x}")]
    BadFlags(u64),
    /// The window is not available on this connection (no SHMEM, no backend channel).
    #[error("no DAX window on this connection")]
    NoWindow,
    /// The frontend refused or failed a map/unmap.
    #[error("frontend refused the request: {0}")]
    Frontend(io::Error),
    /// The file cannot be protected against other truncaters (no lease) and policy forbids it.
    #[error("file cannot be protected by a lease: {0}")]
    Unprotected(io::Error),
    /// The frontend does not acknowledge SHMEM_MAP/UNMAP (no REPLY_ACK), so no map could be
    /// known to be in place before its reply (I1).
    #[error("the frontend does not acknowledge window changes (REPLY_ACK not negotiated?)")]
    NoReplyAck,
    /// The frontend runs as a user whose mappings the daemon cannot watch (a rootless daemon
    /// serving another user's VMM), so I5 could not wait for them to go.
    #[error("the frontend's mappings cannot be watched (it runs as another user)")]
    Unwatched,
    /// Every memory slot the frontend can track is taken (guest RAM and installed pieces):
    /// one more piece would make QEMU abort.
    #[error("no memory slot left in the frontend for another piece")]
    NoSlots,
    /// A host shrink of the file is allowed and not seen over yet: the range past its new
    /// size cannot be installed (it might pass EOF any moment), and installing less would
    /// drop the guest's accesses there silently.
    #[error("a host truncate of the file is under way")]
    HeldBack,
    /// A host operation failed.
    #[error("host: {0}")]
    Host(io::Error),
}

impl DaxError {
    /// The errno the guest sees. Never EAGAIN (a faulting guest task would spin) nor ENOMEM
    /// (guest OOM killer): guest-dax.md §2.4.
    pub fn errno(&self) -> i32 {
        match self {
            DaxError::OutsideWindow { .. } | DaxError::Overflow { .. } | DaxError::BadFlags(_) => libc::EINVAL,
            DaxError::NoWindow
            | DaxError::Frontend(_)
            | DaxError::Unprotected(_)
            | DaxError::NoReplyAck
            | DaxError::Unwatched
            | DaxError::HeldBack => libc::EIO,
            DaxError::NoSlots => libc::ENOSPC,
            DaxError::Host(e) => match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOMEM) | None => libc::EIO,
                Some(n) => n,
            },
        }
    }
}

impl From<DaxError> for io::Error {
    fn from(e: DaxError) -> Self {
        io::Error::from_raw_os_error(e.errno())
    }
}

/// What to do with files the daemon cannot lease (I5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LeasePolicy {
    /// Refuse to map them (SETUPMAPPING fails with EIO).
    #[default]
    Require,
    /// Map them anyway: another host process truncating them can kill the VM.
    Unprotected,
}

/// A SETUPMAPPING, checked against the window.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub range: WinRange,
    pub foffset: FileOffset,
    pub writable: bool,
}

/// Per-inode state: the mmap rw-semaphore (I4) and whether pieces were revoked (I5).
#[derive(Default)]
struct InodeDax {
    /// Held shared by SETUPMAPPING and WRITE, exclusively by anything that shrinks the file.
    sem: RwLock<()>,
}

/// The window and everything mapped in it. One per daemon; the mapper changes per connection.
pub struct Dax {
    inner: Arc<Inner>,
}

struct Inner {
    window_len: u64,
    align: u64,
    policy: LeasePolicy,
    mapper: RwLock<Option<Arc<dyn Mapper>>>,
    table: Mutex<Table>,
    inodes: Mutex<HashMap<InodeId, Arc<InodeDax>>>,
    leases: lease::Leases,
    /// The host guard, when the daemon has a fanotify group: it replaces leases (I5).
    host_guard: std::sync::OnceLock<guard::HostGuard>,
    /// Run the frontend conformance probe at the next SETUPMAPPING.
    probe: std::sync::atomic::AtomicBool,
    /// Whether this connection's frontend acknowledges window changes: `ACKS_*`.
    acks: AtomicU8,
    /// Who answers "does another process still map this file?" (I5); None: scan /proc here.
    mapped_elsewhere: RwLock<Option<MappedElsewhere>>,
    /// False while this connection's frontend cannot be watched: no DAX for it.
    watched: std::sync::atomic::AtomicBool,
    /// The frontend's memory slots: how many pieces may be installed.
    slots: Arc<slots::Slots>,
    /// The memory file behind copy slots, as large as the window.
    backing: std::fs::File,
    /// Read-only mappings of files up to this size are copies (0: never).
    copy_max: std::sync::atomic::AtomicU64,
    /// Bumped (under the table lock) when the frontend drops every mapping itself (reset,
    /// disconnect): a SETUPMAPPING that began before must not map or record anything after.
    epoch: std::sync::atomic::AtomicU64,
    /// The processes other than the daemon found mapping our files on this connection (the
    /// frontend): I5's waits read only their maps.
    mappers: Mutex<Vec<u32>>,
    /// Copies made and made again, for the summary line.
    copies_made: std::sync::atomic::AtomicU64,
    copies_refreshed: std::sync::atomic::AtomicU64,
}

/// `--dax-copy-max`'s default: most files of a source tree or a container image.
pub const COPY_MAX_DEFAULT: u64 = 64 << 10;

/// The processes other than the daemon that map file (dev, ino) at or past a file offset,
/// among the given pids or all (None), for I5's wait (`sys::processes_mapping`'s contract).
pub type MappedElsewhere = Arc<dyn Fn(u64, u64, u64, Option<&[u32]>) -> Vec<u32> + Send + Sync>;

/// The processes other than this one and `exclude` that map file (dev, ino), per this
/// process's view of /proc (the sandbox's supervisor answers the daemon with it).
pub fn processes_mapping(dev: u64, ino: u64, from: u64, among: Option<&[u32]>, exclude: &[u32]) -> Vec<u32> {
    sys::processes_mapping(dev, ino, from, among, exclude)
}

/// `Inner::acks`: not checked yet on this connection, checked, or found missing.
const ACKS_UNKNOWN: u8 = 0;
const ACKS_CONFIRMED: u8 = 1;
const ACKS_MISSING: u8 = 2;

fn round_up(x: u64, align: u64) -> u64 {
    x.checked_next_multiple_of(align).unwrap_or(u64::MAX - (u64::MAX % align))
}

impl Dax {
    /// A window of `window_len` bytes with mappings aligned to `align` (the host page size),
    /// keeping `reserved_slots` of the frontend's memory slots free (memory hotplug).
    pub fn new(window_len: u64, align: u64, policy: LeasePolicy, reserved_slots: usize) -> io::Result<Dax> {
        let backing = sys::memfd(c"daxfsd-copies", window_len)?;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            window_len,
            align,
            policy,
            mapper: RwLock::new(None),
            table: Mutex::new(Table::default()),
            inodes: Mutex::new(HashMap::new()),
            leases: lease::Leases::new(weak.clone()),
            host_guard: std::sync::OnceLock::new(),
            probe: std::sync::atomic::AtomicBool::new(false),
            acks: AtomicU8::new(ACKS_UNKNOWN),
            mapped_elsewhere: RwLock::new(None),
            watched: std::sync::atomic::AtomicBool::new(true),
            slots: Arc::new(slots::Slots::new(reserved_slots)),
            backing,
            copy_max: std::sync::atomic::AtomicU64::new(COPY_MAX_DEFAULT),
            epoch: std::sync::atomic::AtomicU64::new(0),
            mappers: Mutex::new(Vec::new()),
            copies_made: std::sync::atomic::AtomicU64::new(0),
            copies_refreshed: std::sync::atomic::AtomicU64::new(0),
        });
        inner.leases.start()?;
        Ok(Dax { inner })
    }

    /// Routes I5's "does another process still map this file?" through `f` (the sandbox's
    /// supervisor, which can still see the frontend's /proc/PID/maps).
    pub fn set_mapped_elsewhere(&self, f: MappedElsewhere) {
        if let Ok(mut m) = self.inner.mapped_elsewhere.write() {
            *m = Some(f);
        }
    }

    /// Guards mapped files with `group` (a fanotify pre-content group) instead of leases; the
    /// watcher that reads its events passes host shrinks in over `sock` (`crate::guard`).
    pub fn set_host_guard(&self, group: OwnedFd, sock: std::os::unix::net::UnixStream) -> io::Result<()> {
        let g = guard::HostGuard::new(group);
        if self.inner.host_guard.set(g).is_err() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let weak = Arc::downgrade(&self.inner);
        self.inner.host_guard.get().map_or(Ok(()), |g| g.start(weak, sock))
    }

    /// Whether the host guard (rather than a lease) would protect mappings of `file`: its
    /// filesystem takes the guard's marks. Then the daemon may open the file again freely (no
    /// lease of its own to break).
    pub fn guards(&self, file: BorrowedFd<'_>) -> bool {
        self.inner.host_guard.get().is_some_and(|g| g.can_mark(file))
    }

    /// Whether the host guard (rather than a lease) protects `inode`'s mappings.
    pub fn is_guarded(&self, inode: InodeId) -> bool {
        self.inner.host_guard.get().is_some_and(|g| g.is_watched(inode))
    }

    /// Read-only mappings of files up to `max` bytes become copies (`--dax-copy-max`; 0: none).
    pub fn set_copy_max(&self, max: u64) {
        self.inner.copy_max.store(max, Ordering::Relaxed);
    }

    /// Window ranges backed for copies, as (window offset, len): for tests and the fuzzer.
    pub fn backed_slots(&self) -> Vec<(u64, u64)> {
        let t = self.inner.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.copies.backed_slots()
    }

    /// The guest revalidates `inode` (GETATTR): copies of it made before the file last changed
    /// are made again, so the guest sees host changes as a page cache would after its
    /// attribute timeout.
    pub fn revalidate_copies(&self, inode: InodeId) {
        if !self.inner.table.lock().is_ok_and(|t| t.copies.stale(inode)) {
            return;
        }
        let st = self.inner.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inner.refresh_copies(inode, true);
    }

    /// Probes the frontend's SHMEM rules at the next guest SETUPMAPPING (`--dax-probe-frontend`).
    pub fn probe_frontend(&self) {
        self.inner.probe.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The window size.
    pub fn window_len(&self) -> u64 {
        self.inner.window_len
    }

    /// log2 of the mapping alignment, for FUSE_INIT's map_alignment.
    pub fn map_alignment(&self) -> u16 {
        u16::try_from(self.inner.align.trailing_zeros()).unwrap_or(12)
    }

    /// Whether this connection has a window (a mapper was attached).
    pub fn is_active(&self) -> bool {
        self.inner.mapper.read().map(|m| m.is_some()).unwrap_or(false)
    }

    /// Attaches the frontend's mapper (SHMEM negotiated and a backend channel set up).
    pub fn attach(&self, mapper: Arc<dyn Mapper>) {
        if let Ok(mut m) = self.inner.mapper.write() {
            *m = Some(Arc::new(self.inner.slots.counting(mapper)));
            self.inner.acks.store(ACKS_UNKNOWN, Ordering::Release);
        }
        if let Ok(mut p) = self.inner.mappers.lock() {
            p.clear();
        }
    }

    /// The frontend went away: forget every mapping without sending anything.
    pub fn detach(&self) {
        if let Ok(mut m) = self.inner.mapper.write() {
            m.take();
        }
        self.inner.clear(false);
        self.inner.slots.forget_frontend();
        self.inner.log_slots();
        self.inner.watched.store(true, Ordering::Release);
    }

    /// The frontend's memory table changed (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG): per
    /// region, the file range it maps. Regions mapping a piece's range are the window's
    /// (QEMU announces each piece as guest memory); the rest count against the slot budget.
    /// `started`: when the update's handling began (for the summary's timing).
    pub fn frontend_regions(&self, regions: &[Option<RangeKey>], started: std::time::Instant) {
        self.inner.slots.table_changed(regions, started);
    }

    /// This connection's frontend cannot be watched (I5's wait would be blind): every
    /// SETUPMAPPING answers EIO and no file is offered as DAX, until the frontend goes.
    pub fn refuse_unwatched_frontend(&self) {
        self.inner.watched.store(false, Ordering::Release);
    }

    /// Whether DAX may be offered to this connection's frontend.
    pub fn is_watched(&self) -> bool {
        self.inner.watched.load(Ordering::Acquire)
    }

    /// A device reset: the frontend dropped its mappings; forget ours without sending anything.
    pub fn forget_all(&self) {
        self.inner.clear(false);
        self.inner.slots.forget_pieces();
    }

    /// DESTROY or a new INIT: unmap everything (I1).
    pub fn unmap_all(&self) {
        self.inner.clear(true);
    }

    /// Checks a SETUPMAPPING's range and flags against the window (I1's validation).
    pub fn check(&self, moffset: u64, len: u64, foffset: u64, writable: bool) -> Result<Setup, DaxError> {
        let end = moffset.checked_add(len).ok_or(DaxError::Overflow { moffset, len })?;
        foffset.checked_add(len).ok_or(DaxError::Overflow { moffset, len })?;
        let a = self.inner.align;
        if len == 0
            || end > self.inner.window_len
            || !moffset.is_multiple_of(a)
            || !len.is_multiple_of(a)
            || !foffset.is_multiple_of(a)
        {
            return Err(DaxError::OutsideWindow { moffset, len });
        }
        Ok(Setup { range: WinRange { start: WinOffset(moffset), len }, foffset: FileOffset(foffset), writable })
    }

    /// SETUPMAPPING: maps `file` as `s` for `inode`, replacing whatever the range held.
    pub fn setup(&self, inode: InodeId, file: &Arc<OwnedFd>, s: Setup) -> Result<(), DaxError> {
        self.inner.setup(inode, file, s)
    }

    /// REMOVEMAPPING of one range; unknown ranges succeed (the guest retries removals).
    pub fn remove(&self, moffset: u64, len: u64) -> Result<(), DaxError> {
        let end = moffset.checked_add(len).ok_or(DaxError::Overflow { moffset, len })?;
        if end > self.inner.window_len {
            return Err(DaxError::OutsideWindow { moffset, len });
        }
        self.inner.remove_range(WinOffset(moffset), end)
    }

    /// Holds `inode`'s semaphore shared (WRITE: the write barrier shrinks wait for).
    pub fn shared<T>(&self, inode: InodeId, f: impl FnOnce() -> T) -> T {
        let st = self.inner.inode(inode);
        let _g = st.sem.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    }

    /// Holds the semaphores of `a` and `b` shared (in one order, so two such calls never
    /// deadlock): a COPY_FILE_RANGE reads one DAX inode and writes another.
    pub fn shared2<T>(&self, a: InodeId, b: InodeId, f: impl FnOnce() -> T) -> T {
        if a == b {
            return self.shared(a, f);
        }
        let (first, second) = (self.inner.inode(a.min(b)), self.inner.inode(a.max(b)));
        let _g1 = first.sem.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _g2 = second.sem.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    }

    /// Runs a host operation that may shrink `file` to `new_size` (or drop blocks), under the
    /// exclusive semaphore: pieces past the new EOF page are unmapped first (I4), and what stays
    /// valid is re-installed after, to the EOF the operation actually left.
    pub fn shrink<T>(
        &self,
        inode: InodeId,
        file: BorrowedFd<'_>,
        new_size: u64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let st = self.inner.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inner.cut(inode, file, round_up(new_size, self.inner.align))?;
        let result = op();
        self.inner.reinstall(inode, file)?;
        result
    }

    /// The guest touches `inode`: if a lease break revoked its pieces and the file is stable
    /// again, re-take the lease and re-install to EOF now rather than at the next retry (I5).
    pub fn touch(&self, inode: InodeId, file: &Arc<OwnedFd>) {
        if !self.inner.leases.is_revoked(inode) {
            return;
        }
        let st = self.inner.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(true) = self.inner.leases.ensure(inode, file) {
            self.inner.unrevoke(inode);
            if let Err(e) = self.inner.reinstall(inode, file.as_fd()) {
                warn_limited!("cannot re-install inode {}: {e}", inode.0);
            }
        }
    }

    /// After an operation that may have grown the file: re-install cut slots (I3) before the
    /// reply tells the guest the new size.
    /// Copies of the inode are made again (the daemon changed the file).
    pub fn grow(&self, inode: InodeId, file: BorrowedFd<'_>) -> io::Result<()> {
        let (cut, copies) =
            self.inner.table.lock().map(|t| (t.has_cut(inode), t.copies.has_inode(inode))).unwrap_or((false, false));
        if !cut && !copies {
            return Ok(());
        }
        let st = self.inner.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if copies {
            self.inner.refresh_copies(inode, false);
        }
        self.inner.reinstall(inode, file).map_err(io::Error::from)
    }

    /// I6 after a punch: ranges of writable mappings that became sparse are allocated again.
    pub fn reallocate_writable(&self, inode: InodeId, file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
        let eof = sys::file_size(file)?;
        let end = offset.saturating_add(len).min(eof);
        let ranges = self.inner.writable_file_ranges(inode);
        for (start, stop) in ranges {
            let (a, b) = (start.max(offset), stop.min(end));
            if a < b {
                sys::fallocate_keep_size(file, a, b - a)?;
            }
        }
        Ok(())
    }

    /// The inode's installed pieces, as (window offset, file offset, len): for tests and logs.
    pub fn pieces(&self, inode: InodeId) -> Vec<(u64, u64, u64)> {
        let t = self.inner.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.pieces_of(inode)
    }

    /// Drops the state of an inode the filesystem forgot (its mappings stay until removed).
    /// Kept while another thread holds it: a second semaphore for the same inode would let a
    /// shrink and a SETUPMAPPING of it run at once (I4).
    pub fn forget_inode(&self, inode: InodeId) {
        let has = self.inner.table.lock().map(|t| t.has_inode(inode)).unwrap_or(true);
        if !has && let Ok(mut m) = self.inner.inodes.lock() {
            // Under the map's lock nobody can take a new reference; one is the map's own.
            if m.get(&inode).is_some_and(|st| Arc::strong_count(st) == 1) {
                m.remove(&inode);
            }
        }
    }
}

impl Drop for Dax {
    fn drop(&mut self) {
        self.inner.leases.stop();
        if let Some(g) = self.inner.host_guard.get() {
            g.stop();
        }
    }
}

impl Inner {
    fn inode(&self, inode: InodeId) -> Arc<InodeDax> {
        let mut m = self.inodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(inode).or_default())
    }

    fn mapper(&self) -> Result<Arc<dyn Mapper>, DaxError> {
        self.mapper.read().ok().and_then(|m| m.clone()).ok_or(DaxError::NoWindow)
    }

    /// Makes `inode`'s copies again from its file (only those whose file changed since, when
    /// `if_changed`). Callers hold the inode's semaphore exclusively.
    fn refresh_copies(&self, inode: InodeId, if_changed: bool) {
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = if if_changed {
            let file = t.copies.file_of(inode);
            match file.map(|f| copy::stamp(f.as_fd())) {
                Some(Ok(st)) => Some(st),
                _ => return,
            }
        } else {
            None
        };
        match t.copies.refresh(inode, stamp, &self.backing) {
            Ok(n) => {
                self.copies_refreshed.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => warn_limited!("cannot refresh the copies of inode {}: {e}", inode.0),
        }
    }

    /// I1 needs the frontend to acknowledge every map and unmap (REPLY_ACK). vhost-user-backend
    /// 0.24 does not tell the backend which protocol features were acked, and without REPLY_ACK
    /// its SHMEM_UNMAP returns success without waiting for any answer. So the first SETUPMAPPING
    /// of a connection unmaps a page nothing covers: a frontend that acknowledges refuses it
    /// (QEMU 11.1 does, DESIGN.md §3); success means no acknowledgements, and no DAX.
    fn confirm_acks(&self, mapper: &dyn Mapper) -> Result<(), DaxError> {
        if !self.watched.load(Ordering::Acquire) {
            return Err(DaxError::Unwatched);
        }
        let t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.acks.load(Ordering::Acquire) {
            ACKS_CONFIRMED => return Ok(()),
            ACKS_MISSING => return Err(DaxError::NoReplyAck),
            _ if !t.is_empty() => return Ok(()), // only a checked connection maps anything
            _ => {}
        }
        let last = WinRange { start: WinOffset(self.window_len - self.align), len: self.align };
        if mapper.unmap(last).is_ok() {
            error_limited!(
                "DAX off on this connection: the frontend does not acknowledge window changes \
                 (an unmap of an unmapped page came back as success); it must negotiate REPLY_ACK"
            );
            self.acks.store(ACKS_MISSING, Ordering::Release);
            return Err(DaxError::NoReplyAck);
        }
        debug!("the frontend acknowledges window changes");
        self.acks.store(ACKS_CONFIRMED, Ordering::Release);
        Ok(())
    }

    fn remove_range(&self, start: WinOffset, end: u64) -> Result<(), DaxError> {
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mapper = self.mapper.read().ok().and_then(|m| m.clone());
        t.copies.remove_overlapping(start.0, end, &self.backing);
        let Some(mapper) = mapper else {
            t.forget_overlapping(start, end);
            return Ok(());
        };
        let removed = t.remove_overlapping(start, end, &*mapper)?;
        drop(t);
        for inode in removed {
            self.release_lease_if_unmapped(inode);
        }
        Ok(())
    }

    /// Drops `inode`'s lease if nothing of it is mapped; under its semaphore, so a SETUPMAPPING
    /// of it in progress (which holds the semaphore from taking the lease to recording the
    /// mapping) is never left mapped without one.
    fn release_lease_if_unmapped(&self, inode: InodeId) {
        let st = self.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let has = self.table.lock().map(|t| t.has_inode(inode)).unwrap_or(true);
        if !has {
            self.leases.release(inode);
            if let Some(g) = self.host_guard.get() {
                g.unwatch(inode);
            }
        }
    }

    /// I4 before a shrink; the kept part is re-mapped while the file still has its old size.
    fn cut(&self, inode: InodeId, file: BorrowedFd<'_>, cut: u64) -> Result<(), DaxError> {
        let Ok(mapper) = self.mapper() else { return Ok(()) };
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !t.crosses(inode, cut) {
            return Ok(());
        }
        self.padded(file, |_| t.cut(inode, cut, &*mapper))
    }

    /// Installs every mapping of `inode` up to the page holding the current EOF (I3, I4, I5).
    fn reinstall(&self, inode: InodeId, file: BorrowedFd<'_>) -> Result<(), DaxError> {
        let Ok(mapper) = self.mapper() else { return Ok(()) };
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let eof = sys::file_size(file).map_err(DaxError::Host)?;
        if !t.needs_fill(inode, self.clamp(inode, round_up(eof, self.align))) {
            return Ok(());
        }
        let room = self.room(&t);
        match self.padded(file, |valid_end| t.fill(inode, self.clamp(inode, valid_end), &*mapper, room)) {
            Ok(merged) => {
                self.slots.note_merges(merged);
                Ok(())
            }
            Err(DaxError::NoSlots) => {
                self.slots.note_refusal();
                warn_limited!("inode {}: no memory slot left to re-install its mapping", inode.0);
                Err(DaxError::NoSlots)
            }
            Err(e) => Err(e),
        }
    }

    /// The window's 2 MiB slots.
    fn window_slots(&self) -> usize {
        usize::try_from(self.window_len >> 21).unwrap_or(usize::MAX)
    }

    /// The slot budget as the table's file mappings see it: backed copy slots hold a piece
    /// each, and need no first piece of a mapping.
    fn room(&self, t: &Table) -> Room {
        let backed = t.copies.backed();
        let window_slots = self.window_slots();
        Room { cap: self.slots.cap().saturating_sub(backed), window_slots: window_slots.saturating_sub(backed) }
    }

    /// One line on what the window did with the frontend's memory slots (vm-tests grep it).
    fn log_slots(&self) {
        let s = self.slots.take_stats();
        let made = self.copies_made.swap(0, Ordering::Relaxed);
        let refreshed = self.copies_refreshed.swap(0, Ordering::Relaxed);
        if s.maps == 0 && s.table_updates == 0 && made == 0 {
            return;
        }
        let mean = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        info!(
            "DAX window: peak {} pieces, peak {} frontend memory regions ({} not ours), budget {} of {} slots; \
             {} maps (mean {} us, max {} us), {} unmaps (mean {} us), {} memory-table updates (mean {} us to classify), {} merges, {} refusals, {} late announcements; {} copies made, {} refreshed",
            s.peak_pieces,
            s.peak_regions,
            s.peak_others,
            self.slots.cap(),
            slots::max_slots(),
            s.maps,
            mean(s.map_micros, s.maps),
            s.max_map_micros,
            s.unmaps,
            mean(s.unmap_micros, s.unmaps),
            s.table_updates,
            mean(s.table_micros, s.table_updates),
            s.merges,
            s.refusals,
            s.late_announcements,
            made,
            refreshed,
        );
    }

    fn unrevoke(&self, inode: InodeId) {
        if let Ok(mut t) = self.table.lock() {
            t.unrevoke(inode);
        }
    }

    fn writable_file_ranges(&self, inode: InodeId) -> Vec<(u64, u64)> {
        self.table.lock().map(|t| t.writable_file_ranges(inode)).unwrap_or_default()
    }

    /// I5: another opener broke the lease. Unmap every piece of the inode (keeping the
    /// mappings) before the breaker may proceed; the lease is released by the caller after.
    /// The processes other than this one that map (dev, ino), among `among` or all.
    fn processes_mapping(&self, dev: u64, ino: u64, from: u64, among: Option<&[u32]>) -> Vec<u32> {
        let f = self.mapped_elsewhere.read().ok().and_then(|m| m.clone());
        match f {
            Some(f) => f(dev, ino, from, among),
            None => sys::processes_mapping(dev, ino, from, among, &[]),
        }
    }

    fn revoke(&self, inode: InodeId) {
        let st = self.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(mapper) = self.mapper() else { return };
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match t.revoke(inode, &*mapper) {
            Ok(n) => info!("lease break on inode {}: revoked {n} pieces", inode.0),
            Err(e) => warn!("lease break on inode {}: cannot revoke every piece: {e}", inode.0),
        }
    }

    /// I5: the file is stable again (a new lease was taken): re-install to the current EOF.
    fn restore(&self, inode: InodeId, file: BorrowedFd<'_>) -> bool {
        let st = self.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.unrevoke(inode);
        match self.reinstall(inode, file) {
            Ok(()) => true,
            Err(e) => {
                warn!("cannot re-install inode {} after a lease break: {e}", inode.0);
                false
            }
        }
    }

    fn clear(&self, send: bool) {
        let mapper = if send { self.mapper().ok() } else { None };
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !send {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        let before = t.inodes();
        t.copies.clear(mapper.as_deref(), &self.backing);
        let n = t.clear(mapper.as_deref());
        // Mappings the frontend refused to unmap stay in the table: keep their leases and state.
        let kept = t.inodes();
        drop(t);
        if kept.is_empty() {
            self.leases.release_all();
        } else {
            before.iter().filter(|i| !kept.contains(i)).for_each(|i| self.leases.release(*i));
        }
        if let Some(g) = self.host_guard.get() {
            before.iter().filter(|i| !kept.contains(i)).for_each(|i| g.unwatch(*i));
        }
        if let Ok(mut m) = self.inodes.lock() {
            // A semaphore another thread holds stays (see `forget_inode`).
            m.retain(|i, st| kept.contains(i) || Arc::strong_count(st) > 1);
        }
        if n > 0 {
            info_limited!("DAX window cleared ({n} mappings)");
            self.log_slots();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_misaligned_outside_and_overflowing_ranges() {
        let d = Dax::new(64 << 20, 4096, LeasePolicy::Require, 16).unwrap();
        let mb2 = 2 << 20;
        assert!(d.check(0, mb2, 0, false).is_ok());
        assert!(d.check((64 << 20) - mb2, mb2, mb2, true).is_ok());
        for (m, l, f) in [(100, mb2, 0), (0, 100, 0), (0, mb2, 7), (0, 0, 0), (64 << 20, mb2, 0)] {
            assert!(matches!(d.check(m, l, f, false), Err(DaxError::OutsideWindow { .. })), "{m} {l} {f}");
        }
        assert!(matches!(d.check(4096, u64::MAX - 4095, 0, false), Err(DaxError::Overflow { .. })));
        assert!(matches!(d.check(0, mb2, u64::MAX - 4095, false), Err(DaxError::Overflow { .. })));
        assert!(matches!(
            d.setup(
                InodeId(1),
                &Arc::new(std::fs::File::open("/dev/null").unwrap().into()),
                d.check(0, mb2, 0, false).unwrap()
            ),
            Err(DaxError::NoWindow)
        ));
    }

    /// I4 needs one semaphore per inode: forgetting an inode while a thread holds its
    /// semaphore must not let the next user get a second one.
    #[test]
    fn forget_inode_keeps_a_semaphore_in_use() {
        let d = Dax::new(64 << 20, 4096, LeasePolicy::Require, 16).unwrap();
        let id = InodeId(7);
        let held = d.inner.inode(id);
        d.forget_inode(id);
        assert!(Arc::ptr_eq(&held, &d.inner.inode(id)), "a second semaphore for the same inode");
        d.unmap_all();
        assert!(Arc::ptr_eq(&held, &d.inner.inode(id)), "DESTROY made a second semaphore for the inode");
        drop(held);
        d.forget_inode(id);
        assert!(d.inner.inodes.lock().unwrap().is_empty(), "an unused semaphore is dropped");
    }

    #[test]
    fn errno_is_never_eagain_or_enomem() {
        for e in [libc::EAGAIN, libc::ENOMEM] {
            assert_eq!(DaxError::Host(io::Error::from_raw_os_error(e)).errno(), libc::EIO);
        }
        assert_eq!(DaxError::Host(io::Error::from_raw_os_error(libc::ENOSPC)).errno(), libc::ENOSPC);
        assert_eq!(DaxError::NoWindow.errno(), libc::EIO);
        assert_eq!(DaxError::BadFlags(8).errno(), libc::EINVAL);
    }
}
