//! I5: read/write leases on files with installed pieces, and the thread that handles lease
//! breaks: it revokes the inode's pieces before releasing the lease (so the breaker proceeds
//! only once nothing of the file is installed), then re-takes the lease and re-installs to the
//! current EOF once the file is stable again. A break whose signal was lost (SIGIO instead)
//! is found by checking every held lease.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, error, info, warn};

use super::{Inner, InodeId, sys};

/// How often revoked files are retried.
const RETRY: Duration = Duration::from_millis(20);
/// How often, and how far apart, a lease refused with EAGAIN is retried.
const LEASE_ATTEMPTS: u32 = 20;
const LEASE_RETRY: Duration = Duration::from_millis(10);
/// How long a lease break waits for the frontend to drop the unmapped pages.
const UNMAP_WAIT: Duration = Duration::from_secs(2);
/// First and longest pause between checks of the processes still mapping a broken file.
const UNMAP_POLL_MIN: Duration = Duration::from_millis(1);
const UNMAP_POLL_MAX: Duration = Duration::from_millis(16);

#[derive(Default)]
struct State {
    held: HashMap<InodeId, Arc<OwnedFd>>,
    by_fd: HashMap<RawFd, InodeId>,
    revoked: HashMap<InodeId, Arc<OwnedFd>>,
}

/// The leases of one daemon.
pub(super) struct Leases {
    inner: Weak<Inner>,
    state: Mutex<State>,
    tid: AtomicI32,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// SIGIOs taken (lost lease-break signals), for a rate-limited warning.
    lost: AtomicU64,
}

/// Blocks SIGIO for the whole process. Call it before any thread starts (threads inherit the
/// mask): the kernel falls back to SIGIO, whose default action ends the process, when a
/// lease-break signal cannot be queued, and anyone may send SIGIO. Blocked everywhere, it is
/// only ever taken by the lease thread (which checks every lease then) or stays pending.
pub fn block_sigio_in_process() -> io::Result<()> {
    sys::block_sigio()
}

impl Leases {
    pub(super) fn new(inner: Weak<Inner>) -> Leases {
        Leases {
            inner,
            state: Mutex::default(),
            tid: AtomicI32::new(0),
            stop: Arc::default(),
            thread: Mutex::new(None),
            lost: AtomicU64::new(0),
        }
    }

    /// Starts the lease-break thread.
    pub(super) fn start(&self) -> io::Result<()> {
        let inner = self.inner.clone();
        let stop = Arc::clone(&self.stop);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::Builder::new().name("daxfsd-lease".into()).spawn(move || {
            let blocked = sys::block_lease_signals();
            let _ = tx.send((sys::gettid(), blocked.is_ok()));
            if let Err(e) = blocked {
                error!("cannot block the lease signal; lease breaks will not be handled: {e}");
                return;
            }
            run(&inner, &stop);
        })?;
        let (tid, ok) = rx.recv().map_err(|_| io::Error::other("lease thread died"))?;
        if ok {
            self.tid.store(tid, Ordering::Release);
        }
        if let Ok(mut th) = self.thread.lock() {
            *th = Some(t);
        }
        Ok(())
    }

    /// Stops the thread.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }

    /// Makes sure `inode`'s file is leased. Fails if another opener holds it or the filesystem
    /// has no leases. Returns true when it re-took a lease that a break had revoked: the caller
    /// then re-installs the revoked pieces.
    pub(super) fn ensure(&self, inode: InodeId, file: &Arc<OwnedFd>) -> io::Result<bool> {
        // A frontend releases the files of unmapped pieces late (QEMU frees memory regions
        // after an RCU grace period), and until then it counts as another opener: retry EAGAIN
        // for a moment before calling the file unprotectable.
        let mut attempt = 0;
        loop {
            match self.try_ensure(inode, file) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && attempt < LEASE_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(LEASE_RETRY);
                }
                r => return r,
            }
        }
    }

    fn try_ensure(&self, inode: InodeId, file: &Arc<OwnedFd>) -> io::Result<bool> {
        let mut st = self.state.lock().map_err(|_| io::Error::other("lease state poisoned"))?;
        if st.held.contains_key(&inode) {
            return Ok(false);
        }
        let tid = self.tid.load(Ordering::Acquire);
        if tid == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOLCK));
        }
        let file = st.revoked.get(&inode).cloned().unwrap_or_else(|| Arc::clone(file));
        sys::set_lease(file.as_fd(), sys::lease_type(file.as_fd())?, tid)?;
        debug!("leased inode {}", inode.0);
        let retaken = st.revoked.remove(&inode).is_some();
        st.by_fd.insert(file.as_raw_fd(), inode);
        st.held.insert(inode, file);
        Ok(retaken)
    }

    /// Whether a break revoked `inode`'s pieces and they are not back yet.
    pub(super) fn is_revoked(&self, inode: InodeId) -> bool {
        self.state.lock().map(|st| st.revoked.contains_key(&inode)).unwrap_or(false)
    }

    /// Drops `inode`'s lease (its last mapping went away).
    pub(super) fn release(&self, inode: InodeId) {
        let Ok(mut st) = self.state.lock() else { return };
        st.revoked.remove(&inode);
        if let Some(f) = st.held.remove(&inode) {
            st.by_fd.remove(&f.as_raw_fd());
            let _ = sys::set_lease(f.as_fd(), libc::F_UNLCK, 0);
        }
    }

    /// Drops every lease.
    pub(super) fn release_all(&self) {
        let Ok(mut st) = self.state.lock() else { return };
        for (_, f) in st.held.drain() {
            let _ = sys::set_lease(f.as_fd(), libc::F_UNLCK, 0);
        }
        st.by_fd.clear();
        st.revoked.clear();
    }

    /// A break on `fd`: revoke, then let the breaker go.
    fn broken(&self, inner: &Inner, fd: RawFd) {
        let (inode, file) = {
            let Ok(st) = self.state.lock() else { return };
            let Some(inode) = st.by_fd.get(&fd).copied() else { return };
            let Some(file) = st.held.get(&inode).cloned() else { return };
            (inode, file)
        };
        inner.revoke(inode);
        wait_unmapped_elsewhere(inner, &file, 0, &[]);
        let Ok(mut st) = self.state.lock() else { return };
        st.held.remove(&inode);
        st.by_fd.remove(&fd);
        if let Err(e) = sys::set_lease(file.as_fd(), libc::F_UNLCK, 0) {
            debug!("lease release after break: {e}");
        }
        st.revoked.insert(inode, file);
    }

    /// SIGIO: a lease-break signal may have been lost, so check every held lease; one that is
    /// being broken (F_GETLEASE reports less than was taken) is handled as a break.
    fn rescan(&self, inner: &Inner) {
        let n = self.lost.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if n.is_power_of_two() {
            warn!("SIGIO instead of a lease-break signal (queue full?): checking every lease ({n} times so far)");
        }
        let held: Vec<Arc<OwnedFd>> = match self.state.lock() {
            Ok(st) => st.held.values().cloned().collect(),
            Err(_) => return,
        };
        for file in held {
            let (Ok(now), Ok(taken)) = (sys::lease_now(file.as_fd()), sys::lease_type(file.as_fd())) else {
                continue;
            };
            if now != taken {
                self.broken(inner, file.as_raw_fd());
            }
        }
    }

    /// Retries revoked files: a new lease means no other opener is left; re-install then.
    fn retry(&self, inner: &Inner) {
        let revoked: Vec<(InodeId, Arc<OwnedFd>)> = match self.state.lock() {
            Ok(st) => st.revoked.iter().map(|(i, f)| (*i, Arc::clone(f))).collect(),
            Err(_) => return,
        };
        let tid = self.tid.load(Ordering::Acquire);
        for (inode, file) in revoked {
            if !inner.table.lock().map(|t| t.has_inode(inode)).unwrap_or(false) {
                if let Ok(mut st) = self.state.lock() {
                    st.revoked.remove(&inode);
                }
                continue;
            }
            let Ok(typ) = sys::lease_type(file.as_fd()) else { continue };
            if sys::set_lease(file.as_fd(), typ, tid).is_err() {
                continue;
            }
            if let Ok(mut st) = self.state.lock() {
                st.revoked.remove(&inode);
                st.by_fd.insert(file.as_raw_fd(), inode);
                st.held.insert(inode, Arc::clone(&file));
            }
            if inner.restore(inode, file.as_fd()) {
                info!("inode {} leased again; pieces re-installed to EOF", inode.0);
            }
        }
    }
}

/// The frontend acknowledges SHMEM_UNMAP before its mapping leaves its address space (QEMU
/// frees memory regions after an RCU grace period, and a TCG vCPU may still hit the old pages
/// meanwhile). Measured in a VM: releasing the lease on the ack let a host truncate SIGBUS
/// QEMU. So the lease is released only once no process that mapped the file at the break maps
/// it any more. One scan of all of /proc finds them; later checks read only their maps, so
/// repeated breaks stay cheap. A process that had not mapped the file by then is not waited
/// for: the frontend maps only on the daemon's SHMEM_MAP, and none is sent during a revoke.
/// The processes found are remembered for the connection (the frontend does not change), so
/// later waits read only their maps. Only mappings of file offsets at or past `from` count,
/// and only by processes other than `except` (a host truncater's own mappings are its
/// business). False when some process still maps them after `UNMAP_WAIT`.
pub(super) fn wait_unmapped_elsewhere(inner: &Inner, file: &OwnedFd, from: u64, except: &[u32]) -> bool {
    let Ok((dev, ino)) = sys::file_id(file.as_fd()) else { return false };
    let deadline = std::time::Instant::now() + UNMAP_WAIT;
    let known = inner.known_mappers();
    let query = |among: Option<&[u32]>| {
        let mut pids = inner.processes_mapping(dev, ino, from, among);
        pids.retain(|p| !except.contains(p));
        pids
    };
    let mut pids = query((!known.is_empty()).then_some(known.as_slice()));
    if known.is_empty() {
        inner.remember_mappers(&pids);
    }
    let mut pause = UNMAP_POLL_MIN;
    while !pids.is_empty() {
        if std::time::Instant::now() >= deadline {
            warn!("the frontend still maps inode {ino} {UNMAP_WAIT:?} after unmapping it");
            return false;
        }
        std::thread::sleep(pause);
        pause = pause.saturating_mul(2).min(UNMAP_POLL_MAX);
        pids = query(Some(&pids));
    }
    true
}

impl Inner {
    /// The frontend's processes found by an earlier wait on this connection.
    pub(super) fn known_mappers(&self) -> Vec<u32> {
        self.mappers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub(super) fn remember_mappers(&self, pids: &[u32]) {
        if let Ok(mut p) = self.mappers.lock() {
            // u32::MAX is the supervisor's "could not tell": never a pid to rely on.
            p.extend(pids.iter().filter(|&&pid| pid != u32::MAX));
            p.sort_unstable();
            p.dedup();
        }
    }
}

fn run(inner: &Weak<Inner>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let signal = sys::wait_signal(RETRY);
        let Some(inner) = inner.upgrade() else { return };
        match signal {
            Some(sys::LeaseSignal::Break(fd)) => inner.leases.broken(&inner, fd),
            Some(sys::LeaseSignal::Lost) => inner.leases.rescan(&inner),
            None => {}
        }
        inner.leases.retry(&inner);
    }
}
