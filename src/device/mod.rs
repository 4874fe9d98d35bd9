//! The vhost-user glue: virtio-fs features, config space, queues, and the path from a kick to
//! a completed request. Requests from every queue run on the worker pool, or on the queue's
//! thread when one is alone on its ring; a reply is added to the used ring only after the
//! filesystem finished the operation.

mod inflight;
mod mapper;
mod pool;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use log::{debug, info};
use vhost::vhost_user::Backend;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringMutex, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{
    Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

use crate::dax::{self, Dax};
use crate::fs::Filesystem;
use crate::fuse::Server;
use crate::fuse::abi::{InHeader, Opcode};
use crate::fuse::chain::{GuestMem, Reader, Writer};
use crate::log_limit::{info_limited, warn_limited};
use inflight::{Claim, Inflight, Refused};
pub use pool::prepare_worker_thread;

/// Length of the virtio-fs config space: tag[36] + le32 num_request_queues.
pub const CONFIG_LEN: usize = 40;
/// Longest tag the config space holds.
pub const MAX_TAG_LEN: usize = 36;
/// Most SETLKW requests allowed to wait on their own threads at once.
const MAX_LOCK_WAITERS: usize = 64;

type Chain = DescriptorChain<Arc<GuestMem>>;

/// Device configuration.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub tag: Option<String>,
    pub num_request_queues: usize,
    pub queue_size: usize,
    pub thread_pool_size: usize,
}

/// The DAX side of a connection: the window is live once the frontend asked for the shared
/// memory config (so it negotiated SHMEM) and gave us a backend channel.
#[derive(Default)]
struct DaxLink {
    shmem_config_read: bool,
    backend: Option<Backend>,
}

/// The virtio-fs vhost-user backend.
pub struct FsDevice<F: Filesystem + 'static> {
    cfg: DeviceConfig,
    server: Arc<Server<F>>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMem>>>,
    event_idx: AtomicBool,
    pool: pool::Pool,
    inflight: Vec<Arc<Inflight>>,
    lock_waiters: Arc<AtomicUsize>,
    dax: Option<Arc<Dax>>,
    link: Mutex<DaxLink>,
    /// The file behind each memory region seen, by where it is: a region that stays in the
    /// table is not looked at again.
    region_files: Mutex<HashMap<RegionKey, Option<dax::RangeKey>>>,
}

/// A memory region as the backend mapped it: (guest address, length, host address, file offset).
type RegionKey = (u64, u64, usize, u64);

/// A failure to start or run the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Threads(io::Error),
}

impl<F: Filesystem + 'static> FsDevice<F> {
    /// A device serving `server`.
    pub fn new(cfg: DeviceConfig, server: Server<F>, dax: Option<Arc<Dax>>) -> Result<FsDevice<F>, DeviceError> {
        let inflight: Vec<_> = (0..=cfg.num_request_queues).map(|_| Arc::new(Inflight::new(cfg.queue_size))).collect();
        // Each queued job owns a distinct claimed head, so no more than this can ever wait.
        let capacity = inflight.len().saturating_mul(cfg.queue_size);
        let pool = pool::Pool::new(cfg.thread_pool_size, capacity).map_err(DeviceError::Threads)?;
        Ok(FsDevice {
            cfg,
            server: Arc::new(server),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            pool,
            inflight,
            lock_waiters: Arc::new(AtomicUsize::new(0)),
            dax,
            link: Mutex::new(DaxLink::default()),
            region_files: Mutex::new(HashMap::new()),
        })
    }

    /// The frontend went away: end the FUSE session (unmaps, closes every handle).
    pub fn disconnected(&self) {
        info!("frontend disconnected; session state dropped");
        if let Some(dax) = &self.dax {
            dax.detach();
        }
        if let Ok(mut l) = self.link.lock() {
            *l = DaxLink::default();
        }
        self.server.reset();
        if let Ok(mut m) = self.mem.write() {
            m.take();
        }
    }

    /// Stops the worker pool (at exit).
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// Attaches the window's mapper once both halves of the link are there.
    fn link_dax(&self, update: impl FnOnce(&mut DaxLink)) {
        let Some(dax) = &self.dax else { return };
        let Ok(mut l) = self.link.lock() else { return };
        update(&mut l);
        if let (true, Some(backend)) = (l.shmem_config_read, l.backend.clone()) {
            info!("DAX window of {} MiB live on this connection", dax.window_len() >> 20);
            dax.attach(Arc::new(mapper::VhostMapper::new(backend)));
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let tag = self.cfg.tag.as_deref().unwrap_or_default().as_bytes();
        for (d, s) in c.iter_mut().zip(tag.iter().take(MAX_TAG_LEN)) {
            *d = *s;
        }
        let nq = u32::try_from(self.cfg.num_request_queues).unwrap_or(1).to_le_bytes();
        for (d, s) in c.iter_mut().skip(MAX_TAG_LEN).zip(nq) {
            *d = s;
        }
        c
    }

    /// Pops every available chain of `vring` and hands each to a worker. A ring it cannot read
    /// ends the drain with a warning, never the queue's thread: the next kick tries again.
    fn drain_queue(&self, qidx: usize, vring: &VringMutex<GuestMemoryAtomic<GuestMem>>) {
        let Some(mem) = self.mem.read().ok().and_then(|m| m.as_ref().map(|a| a.memory().into_inner())) else {
            return;
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx && let Err(e) = vring.disable_notification() {
                return self.bad_ring(qidx, &e);
            }
            // The chain popped last is held back until the ring is seen empty: then it is the
            // only request waiting, and it may run on this thread (no hand-off to a worker);
            // every chain with another behind it goes to the pool.
            let mut held: Option<Popped> = None;
            loop {
                // Own statement: a `while let` would keep the vring lock for the loop body, and
                // the workers completing requests need that lock.
                // The run before the pop: a stop between the pop and the claim drops the chain.
                let run = self.inflight.get(qidx).map_or(0, |f| f.run());
                let next = vring.get_mut().get_queue_mut().iter(Arc::clone(&mem)).map(|mut it| it.next());
                match next {
                    Ok(Some(chain)) => {
                        if let Some(prev) = held.replace(Popped { chain, run }) {
                            self.submit(qidx, vring.clone(), Arc::clone(&mem), prev, false);
                        }
                    }
                    Ok(None) => break,
                    // The guest's avail index is bogus, or the queue is not set up. Stop here:
                    // re-arming would report that index as new work forever (a guest-made spin).
                    Err(e) => {
                        if let Some(prev) = held.take() {
                            self.submit(qidx, vring.clone(), Arc::clone(&mem), prev, false);
                        }
                        return self.bad_ring(qidx, &e);
                    }
                }
            }
            if let Some(last) = held.take() {
                self.submit(qidx, vring.clone(), Arc::clone(&mem), last, true);
            }
            if !event_idx {
                return;
            }
            match vring.enable_notification() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return self.bad_ring(qidx, &e),
            }
        }
    }

    /// Logs a ring the daemon cannot use (the guest controls the rate, so rate-limited).
    fn bad_ring(&self, qidx: usize, e: &dyn std::fmt::Display) {
        warn_limited!("queue {qidx}: cannot read the ring: {e}");
    }

    /// Hands a popped chain to a worker, unless its head is already in flight: a driver may
    /// not make a head available again before the device used it (virtio 1.2 §2.7.13), and
    /// queuing such duplicates would let the guest grow the job queue without bound. The
    /// duplicate is dropped like any invalid chain: it never reaches the used ring, which gets
    /// the head exactly once, when the original request completes.
    /// `alone`: no other request waits on the ring, so this one may run inline on the queue's
    /// thread (see `runs_inline`).
    fn submit(
        &self,
        qidx: usize,
        vring: VringMutex<GuestMemoryAtomic<GuestMem>>,
        mem: Arc<GuestMem>,
        popped: Popped,
        alone: bool,
    ) {
        let Popped { chain, run } = popped;
        let head = chain.head_index();
        let Some(inflight) = self.inflight.get(qidx).cloned() else {
            warn_limited!("chain {head} on unknown queue {qidx} dropped");
            return;
        };
        let claim = match inflight.claim(head, run) {
            Ok(c) => c,
            Err(Refused::Stopped) => {
                return warn_limited!("queue {qidx}: chain {head} popped as the queue stopped; dropped");
            }
            Err(Refused::InFlight) => return warn_limited!("queue {qidx}: chain {head} is already in flight; dropped"),
            Err(Refused::OutOfRange) => {
                return warn_limited!("queue {qidx}: chain head {head} is past the queue; dropped");
            }
        };
        let opcode = peek_opcode(&mem, &chain);
        let blocking = opcode == Some(Opcode::Setlkw as u32);
        // SETLKW may wait forever for another owner: never let it hold a pool worker. Past
        // MAX_LOCK_WAITERS it is answered ENOLCK at once, so a guest cannot wedge the pool.
        let refuse = blocking && !self.reserve_lock_waiter();
        // Only a lock-waiter thread may run a SETLKW: the guest can rewrite the opcode after
        // this peek, and a SETLKW that reaches a pool worker anyway is answered ENOLCK there.
        let run = match (blocking, refuse) {
            (true, true) => RunOn::Refused(libc::ENOLCK),
            (true, false) => RunOn::LockWaiter,
            (false, _) => RunOn::Pool,
        };
        let server = Arc::clone(&self.server);
        let job: pool::Job = Box::new(move || {
            complete(&server, &vring, &inflight, claim, chain, run);
            inflight.finished(claim);
        });
        let job = if blocking && !refuse { self.spawn_lock_waiter(job) } else { Some(job) };
        let Some(job) = job else { return };
        if alone && !blocking && opcode.is_some_and(runs_inline) {
            prepare_queue_thread();
            job();
        } else {
            self.pool.submit(job);
        }
    }

    /// Takes one of the MAX_LOCK_WAITERS lock-waiter places; false when all are taken.
    fn reserve_lock_waiter(&self) -> bool {
        if self.lock_waiters.fetch_add(1, Ordering::AcqRel) >= MAX_LOCK_WAITERS {
            self.lock_waiters.fetch_sub(1, Ordering::AcqRel);
            warn_limited!("more than {MAX_LOCK_WAITERS} SETLKW waiting; answering ENOLCK");
            return false;
        }
        true
    }

    /// Runs `job` on a thread of its own, in a place `reserve_lock_waiter` took; if no thread
    /// can be started, frees the place and gives the job back for the pool.
    fn spawn_lock_waiter(&self, job: pool::Job) -> Option<pool::Job> {
        // Shared with the thread so a failed spawn can hand the job (and its claimed head) back.
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = Arc::clone(&slot);
        let waiters = Arc::clone(&self.lock_waiters);
        let spawned = std::thread::Builder::new().name("daxfsd-lock".into()).spawn(move || {
            prepare_worker_thread();
            if let Some(job) = theirs.lock().ok().and_then(|mut j| j.take()) {
                job();
            }
            waiters.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            warn_limited!("cannot start a lock waiter thread: {e}");
            self.lock_waiters.fetch_sub(1, Ordering::AcqRel);
            return slot.lock().ok().and_then(|mut j| j.take());
        }
        None
    }
}

/// Whether a request with this opcode may run on its queue's thread when it is the only one
/// waiting (saving the hand-off to a worker and back: two wake-ups per request). Not the ones
/// that can take long by design and would keep the queue's next requests from being popped:
/// DAX requests (frontend round trips; a SETUPMAPPING may wait for a host truncate), syncs,
/// fallocate and copy_file_range (disk work), locks (a SETLKW waits on its own thread
/// anyway), and the session's INIT and DESTROY. The opcode is the guest's and may change
/// before the request is read: a request that turns into another runs where it started, as
/// with any worker.
fn runs_inline(opcode: u32) -> bool {
    const NOT_INLINE: &[Opcode] = &[
        Opcode::Setupmapping,
        Opcode::Removemapping,
        Opcode::Fsync,
        Opcode::Fsyncdir,
        Opcode::Syncfs,
        Opcode::Fallocate,
        Opcode::CopyFileRange,
        Opcode::Getlk,
        Opcode::Setlk,
        Opcode::Setlkw,
        Opcode::Init,
        Opcode::Destroy,
    ];
    !NOT_INLINE.iter().any(|&op| op as u32 == opcode)
}

thread_local! {
    static QUEUE_THREAD_READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A queue thread about to run a request inline gets a worker's per-thread setup once (its
/// own umask, unshared from the other queue threads).
fn prepare_queue_thread() {
    QUEUE_THREAD_READY.with(|ready| {
        if !ready.replace(true) {
            prepare_worker_thread();
        }
    });
}

/// A chain popped from a ring, with the run it was popped in.
struct Popped {
    chain: Chain,
    run: u64,
}

/// Where a claimed chain runs.
#[derive(Clone, Copy)]
enum RunOn {
    /// A pool worker: nothing there may wait on the guest's locks.
    Pool,
    /// A lock-waiter thread of its own (a SETLKW).
    LockWaiter,
    /// Nowhere: answered with this errno at once.
    Refused(i32),
}

/// The opcode of a chain's request, read without consuming the chain. Usually straight from
/// the first descriptor (no walk of the chain on the hot path); when that descriptor is too
/// short to hold it, through a `Reader`, as the request itself will be read: the guest may split
/// the in-header across descriptors.
fn peek_opcode(mem: &GuestMem, chain: &Chain) -> Option<u32> {
    let first = chain.clone().next()?;
    if !first.is_write_only() && first.len() >= 8 {
        let at = vm_memory::GuestAddress(first.addr().0.checked_add(4)?);
        return chain.memory().read_obj::<u32>(at).ok();
    }
    let mut r = Reader::new(mem, chain.clone()).ok()?;
    r.read_obj::<InHeader>().ok().map(|h| h.opcode)
}

/// Runs one request and puts its chain in the used ring, signalling the guest if it wants;
/// if its queue was stopped meanwhile (GET_VRING_BASE gave up waiting), neither: the ring and
/// the guest's buffers are the frontend's again.
fn complete<F: Filesystem>(
    server: &Server<F>,
    vring: &VringMutex<GuestMemoryAtomic<GuestMem>>,
    inflight: &Inflight,
    claim: Claim,
    chain: Chain,
    run: RunOn,
) {
    let head = claim.head();
    let held = chain.clone();
    let mem = held.memory();
    let gate = || inflight.gate(claim);
    let (used, gate) = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
        (Ok(mut r), Ok(mut w)) => match run {
            RunOn::Refused(errno) => {
                let g = gate();
                (g.as_ref().map_or(0, |_| server.refuse(&mut r, &mut w, errno)), g)
            }
            RunOn::Pool => server.handle_gated(&mut r, &mut w, false, gate),
            RunOn::LockWaiter => server.handle_gated(&mut r, &mut w, true, gate),
        },
        (Err(e), _) | (_, Err(e)) => {
            warn_limited!("unusable descriptor chain {head}: {e}");
            (0, gate())
        }
    };
    let Some(gate) = gate else {
        warn_limited!("chain {head} finished after its queue stopped; not returned to the used ring");
        return;
    };
    let used = u32::try_from(used).unwrap_or(0);
    let mut state = vring.get_mut();
    // Under the vring lock, so the queue's thread cannot pop the guest's next use of the head
    // before it is free again; before add_used, so the guest cannot reuse it earlier either.
    inflight.release_head(claim, &gate);
    if let Err(e) = state.add_used(head, used) {
        warn_limited!("cannot return chain {head} to the used ring: {e}");
        return;
    }
    log::trace!("chain {head} used, {used} bytes");
    match state.needs_notification() {
        Ok(false) => {}
        Ok(true) | Err(_) => {
            if let Err(e) = state.signal_used_queue() {
                debug!("cannot signal the guest: {e}");
            }
        }
    }
}

impl<F: Filesystem + 'static> VhostUserBackend for FsDevice<F> {
    type Bitmap = ();
    type Vring = VringMutex<GuestMemoryAtomic<GuestMem>>;

    fn num_queues(&self) -> usize {
        1 + self.cfg.num_request_queues
    }

    fn max_queue_size(&self) -> usize {
        self.cfg.queue_size
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.cfg.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        if self.dax.is_some() {
            f |= VhostUserProtocolFeatures::SHMEM;
        }
        f
    }

    fn reset_device(&self) {
        info_limited!("device reset");
        // The frontend drops its window mappings on reset; forget ours without sending unmaps.
        if let Some(dax) = &self.dax {
            dax.forget_all();
        }
        self.server.reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let len = usize::try_from(size).unwrap_or(0);
        (0..len).map(|i| start.checked_add(i).and_then(|j| c.get(j)).copied().unwrap_or(0)).collect()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        if let Some(dax) = &self.dax {
            // QEMU announces each window piece as one more region: the window counts them.
            let started = std::time::Instant::now();
            let mut known = self.region_files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut now = HashMap::with_capacity(known.len() + 1);
            let guard = mem.memory();
            for r in guard.iter() {
                let host = r.get_host_address(MemoryRegionAddress(0)).map_or(0, |p| p as usize);
                let key = (r.start_addr().0, r.len(), host, r.file_offset().map_or(0, |f| f.start()));
                let id = known.remove(&key).unwrap_or_else(|| {
                    r.file_offset().and_then(|f| file_id(f.file()).ok().map(|id| (id, f.start(), r.len())))
                });
                now.insert(key, id);
            }
            let regions: Vec<Option<dax::RangeKey>> = now.values().copied().collect();
            *known = now;
            drop(known);
            dax.frontend_regions(&regions, started);
        }
        let mut m = self.mem.write().map_err(|_| io::Error::other("memory lock poisoned"))?;
        *m = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        self.link_dax(|l| l.backend = Some(backend));
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        let Some(dax) = &self.dax else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no DAX window"));
        };
        self.link_dax(|l| l.shmem_config_read = true);
        // Region 0 is the virtio-fs cache (VIRTIO_FS_SHMCAP_ID_CACHE).
        Ok(VhostUserShMemConfig::new(1, &[dax.window_len()]))
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let Some(inflight) = usize::try_from(queue_index).ok().and_then(|i| self.inflight.get(i)) else {
            return Ok(());
        };
        // Bounded: a request blocked on a lock must not wedge the frontend forever.
        // Requests still running then are abandoned: none may write a reply or the used ring
        // once the frontend has the ring back, and their heads are free for the next start.
        inflight.wait_idle(Duration::from_secs(5));
        let left = inflight.stop();
        if left > 0 {
            warn_limited!("queue {queue_index} stopped with {left} requests still running; they get no reply");
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn_limited!("unexpected event set {evset:?} on queue {device_event}");
            return Ok(());
        }
        let qidx = usize::from(device_event);
        let Some(vring) = vrings.get(qidx) else {
            warn_limited!("event for unknown queue {device_event}");
            return Ok(());
        };
        self.drain_queue(qidx, vring);
        Ok(())
    }
}

/// The (st_dev, st_ino) of the file behind a memory region.
fn file_id(f: &std::fs::File) -> io::Result<dax::FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}
