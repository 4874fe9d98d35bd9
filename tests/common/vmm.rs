//! Test VMM: the transport half of the integration-test frontend. It drives a vhost-user-fs
//! backend over a real unix socket with vhost's `Frontend`: memfd guest memory, split virtqueues
//! written here (driver side), the backend request channel, and a DAX window that behaves like
//! QEMU 11.1's. It knows nothing of FUSE and must not depend on the daxfsd crate.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{
    Error as VhostUserError, Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend,
    VhostUserFrontendReqHandler, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const PAGE: u64 = 4096;
// The flags as they sit in a 16-bit descriptor field (virtio_ring.h values all fit).
const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn mem_err(e: vm_memory::GuestMemoryError) -> io::Error {
    io::Error::other(format!("guest memory: {e}"))
}

/// How the test VMM behaves. `Default` is a QEMU `vhost-user-fs-pci`-like frontend: no SHMEM.
#[derive(Clone, Debug)]
pub struct VmmOptions {
    /// Size of the memfd guest memory (a page multiple).
    pub mem_size: usize,
    /// Descriptors per virtqueue (a power of two).
    pub queue_size: u16,
    /// Ack VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Ack VIRTIO_RING_F_INDIRECT_DESC if offered.
    pub indirect: bool,
    /// Offer the SHMEM protocol feature: the DAX window (QEMU 11.1 `vhost-user-test-device`).
    pub shmem: bool,
    /// Negotiate REPLY_ACK if offered (QEMU always does; off: a frontend that never
    /// acknowledges the backend's SHMEM_MAP/UNMAP).
    pub reply_ack: bool,
    /// Bound of every wait: connecting, one vhost-user round trip, one reply.
    pub timeout: Duration,
}

impl Default for VmmOptions {
    fn default() -> Self {
        Self {
            mem_size: 64 << 20,
            queue_size: 256,
            event_idx: true,
            indirect: true,
            shmem: false,
            reply_ack: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The virtio-fs config space (virtio 1.2 §5.11.4): `tag[36]`, `le32 num_request_queues`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag up to its first NUL.
    pub tag: String,
    pub num_request_queues: u32,
}

/// One descriptor of a chain, in chain order (NEXT links are added by the VMM).
#[derive(Clone, Copy, Debug)]
pub enum Desc<'a> {
    /// A device-readable buffer holding these bytes.
    Read(&'a [u8]),
    /// A device-writable buffer of this many zeroed bytes, returned in `Reply::data`.
    Write(usize),
    /// Any descriptor, backed by nothing of the VMM's: for malformed-chain tests.
    Raw { addr: u64, len: u32, flags: u16 },
}

/// A completed chain: the used length the device reported and every writable byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub used_len: u32,
    /// The `Desc::Write` buffers concatenated, whatever `used_len` says.
    pub data: Vec<u8>,
}

impl Reply {
    /// The bytes the device claims to have written: `data` cut at `used_len`.
    pub fn written(&self) -> &[u8] {
        let n = usize::try_from(self.used_len).map_or(self.data.len(), |n| n.min(self.data.len()));
        self.data.get(..n).unwrap_or_default()
    }
}

/// A chain in flight, to be passed to `Vmm::wait` exactly once.
#[must_use]
#[derive(Debug)]
pub struct Ticket {
    queue: usize,
    id: u64,
}

/// Guest memory: one memfd-backed region at GPA 0 and a first-fit allocator over it. Page 0 is
/// never handed out (virtio-queue refuses rings at GPA 0, and it makes a handy bad address).
pub struct GuestMem {
    pub mem: GuestMemoryMmap,
    free: Mutex<BTreeMap<u64, u64>>, // start -> length of each free block, never adjacent
}

impl GuestMem {
    pub fn new(size: usize) -> io::Result<Self> {
        let len = u64::try_from(size).map_err(|_| einval())?;
        if len <= PAGE || len % PAGE != 0 {
            return Err(einval());
        }
        // SAFETY: the name is a NUL-terminated literal; the result is checked before use.
        let fd = unsafe { libc::memfd_create(c"test-vmm-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len)?;
        let region = (GuestAddress(0), size, Some(FileOffset::new(file, 0)));
        let mem = GuestMemoryMmap::from_ranges_with_files([region])
            .map_err(|e| io::Error::other(format!("guest memory: {e}")))?;
        Ok(Self { mem, free: Mutex::new(BTreeMap::from([(PAGE, len - PAGE)])) })
    }

    /// Allocates `len` bytes (at least 1) aligned to `align` (a power of two); ENOMEM when full.
    pub fn alloc(&self, len: u64, align: u64) -> io::Result<u64> {
        let len = len.max(1);
        let mut free = self.free.lock().unwrap();
        let (start, end, at) = free
            .iter()
            .map(|(&s, &l)| (s, s + l, s.next_multiple_of(align)))
            .find(|&(_, end, at)| at.checked_add(len).is_some_and(|e| e <= end))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        free.remove(&start);
        if at > start {
            free.insert(start, at - start);
        }
        if at + len < end {
            free.insert(at + len, end - at - len);
        }
        Ok(at)
    }

    /// Returns a block from `alloc` (same `len`), merging it with its free neighbours.
    pub fn release(&self, start: u64, len: u64) {
        let (mut start, mut len) = (start, len.max(1));
        let mut free = self.free.lock().unwrap();
        if let Some((&s, &l)) = free.range(..start).next_back()
            && s + l == start
        {
            free.remove(&s);
            (start, len) = (s, l + len);
        }
        if let Some(l) = free.remove(&(start + len)) {
            len += l;
        }
        free.insert(start, len);
    }
}

/// Where a split virtqueue's three parts live (virtio 1.2 §2.7).
#[derive(Clone, Copy, Debug)]
pub struct SplitRing {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
}

impl SplitRing {
    /// Lays a ring of `size` entries out from `base`; returns it and the bytes it spans.
    pub fn layout(base: u64, size: u16) -> (Self, u64) {
        let n = u64::from(size);
        let avail = base + 16 * n; // flags, idx, ring[n], used_event
        let used = (avail + 6 + 2 * n).next_multiple_of(4); // flags, idx, ring[n] of 8, avail_event
        let ring = Self { size, desc: GuestAddress(base), avail: GuestAddress(avail), used: GuestAddress(used) };
        (ring, used + 6 + 8 * n - base)
    }

    fn desc_addr(&self, i: u16) -> u64 {
        self.desc.0 + 16 * u64::from(i)
    }

    /// Puts `head` in avail slot `idx`, then publishes `idx + 1` to the device.
    fn publish(&self, mem: &GuestMemoryMmap, idx: u16, head: u16) -> io::Result<()> {
        let slot = self.avail.0 + 4 + 2 * u64::from(idx % self.size);
        mem.write_slice(&head.to_le_bytes(), GuestAddress(slot)).map_err(mem_err)?;
        // Release: the device may read the slot and the chain as soon as it sees the new index.
        let idx_addr = GuestAddress(self.avail.0 + 2);
        mem.store(idx.wrapping_add(1).to_le(), idx_addr, Ordering::Release).map_err(mem_err)
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> io::Result<u16> {
        let idx: u16 = mem.load(GuestAddress(self.used.0 + 2), Ordering::Acquire).map_err(mem_err)?;
        Ok(u16::from_le(idx))
    }

    /// The used element in slot `i % size`: (id, len).
    fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> io::Result<(u32, u32)> {
        let mut b = [0u8; 8];
        let at = self.used.0 + 4 + 8 * u64::from(i % self.size);
        mem.read_slice(&mut b, GuestAddress(at)).map_err(mem_err)?;
        let [a0, a1, a2, a3, l0, l1, l2, l3] = b;
        Ok((u32::from_le_bytes([a0, a1, a2, a3]), u32::from_le_bytes([l0, l1, l2, l3])))
    }

    /// EVENT_IDX: the avail index the device last re-armed notifications at (it has consumed
    /// every chain below it).
    fn avail_event(&self, mem: &GuestMemoryMmap) -> io::Result<u16> {
        let at = GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size));
        let idx: u16 = mem.load(at, Ordering::Acquire).map_err(mem_err)?;
        Ok(u16::from_le(idx))
    }

    /// EVENT_IDX: ask for a call once the used index moves past `idx` (harmless without it).
    fn set_used_event(&self, mem: &GuestMemoryMmap, idx: u16) -> io::Result<()> {
        let at = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size));
        mem.store(idx.to_le(), at, Ordering::SeqCst).map_err(mem_err)
    }
}

fn write_desc_at(mem: &GuestMemoryMmap, at: u64, (addr, len, flags): (u64, u32, u16), next: u16) -> io::Result<()> {
    let mut b = [0u8; 16];
    for (dst, src) in b.iter_mut().zip(
        addr.to_le_bytes().into_iter().chain(len.to_le_bytes()).chain(flags.to_le_bytes()).chain(next.to_le_bytes()),
    ) {
        *dst = src;
    }
    mem.write_slice(&b, GuestAddress(at)).map_err(mem_err)
}

/// A chain's buffers staged in guest memory: one block holding an optional indirect table, then
/// the `Read`/`Write` buffers.
struct Staged {
    block: (u64, u64),
    table: Option<u64>,
    chain: Vec<(u64, u32, u16)>, // addr, len, flags (without NEXT)
    writes: Vec<(u64, usize)>,
}

impl Staged {
    fn new(g: &GuestMem, descs: &[Desc], indirect: bool) -> io::Result<Self> {
        let n = u64::try_from(descs.len()).map_err(|_| einval())?;
        if n == 0 || (indirect && n > 0x1_0000) {
            return Err(einval());
        }
        let table_len = if indirect { 16 * n } else { 0 };
        let buf_len = |d: &Desc| match *d {
            Desc::Read(b) => b.len(),
            Desc::Write(n) => n,
            Desc::Raw { .. } => 0,
        };
        let total = table_len + descs.iter().map(|d| (buf_len(d) as u64).next_multiple_of(8)).sum::<u64>();
        let base = g.alloc(total, 16)?;
        let mut s = Self { block: (base, total), table: indirect.then_some(base), chain: vec![], writes: vec![] };
        let mut at = base + table_len;
        for d in descs {
            let (len, flags, written) = match *d {
                Desc::Read(b) => (b.len(), 0, g.mem.write_slice(b, GuestAddress(at))),
                Desc::Write(n) => (n, F_WRITE, g.mem.write_slice(&vec![0; n], GuestAddress(at))),
                Desc::Raw { addr, len, flags } => {
                    s.chain.push((addr, len, flags));
                    continue;
                }
            };
            let len32 = match written.map_err(mem_err).and_then(|()| u32::try_from(len).map_err(|_| einval())) {
                Ok(l) => l,
                Err(e) => {
                    g.release(base, total);
                    return Err(e);
                }
            };
            if flags == F_WRITE {
                s.writes.push((at, len));
            }
            s.chain.push((at, len32, flags));
            at += (len as u64).next_multiple_of(8);
        }
        Ok(s)
    }
}

struct Inflight {
    id: u64,
    descs: Vec<u16>,
    staged: Staged,
}

#[derive(Default)]
struct QueueState {
    free: Vec<u16>,                    // free descriptor indices
    next_avail: u16,                   // avail idx the next chain is published under
    last_used: u16,                    // used idx consumed so far
    next_id: u64,                      // ticket ids
    inflight: HashMap<u16, Inflight>,  // head -> chain not yet used
    done: HashMap<u64, (u32, Staged)>, // ticket id -> used len, buffers
    polling: bool,                     // a waiter is blocked on `call`; others use `cond`
}

/// The driver side of one split virtqueue. Any number of threads may submit and wait.
pub struct Virtqueue {
    pub ring: SplitRing,
    /// Written by `submit`; the device's SET_VRING_KICK fd.
    pub kick: EventFd,
    /// Read by `wait`; the device's SET_VRING_CALL fd.
    pub call: EventFd,
    state: Mutex<QueueState>,
    cond: Condvar,
}

impl Virtqueue {
    pub fn new(g: &GuestMem, size: u16) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(einval());
        }
        let (_, len) = SplitRing::layout(0, size);
        let at = g.alloc(len, PAGE)?;
        // A driver starts from zeroed rings; reused guest memory may hold old requests.
        g.mem.write_slice(&vec![0; len as usize], GuestAddress(at)).map_err(mem_err)?;
        let (ring, _) = SplitRing::layout(at, size);
        let state = QueueState { free: (0..size).rev().collect(), ..Default::default() };
        Ok(Self {
            ring,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            state: Mutex::new(state),
            cond: Condvar::new(),
        })
    }

    /// Stages `descs`, makes them available (directly, or as one indirect table) and kicks.
    /// ENOSPC if the queue lacks free descriptors. Returns the ticket id.
    pub fn submit(&self, g: &GuestMem, descs: &[Desc], indirect: bool) -> io::Result<u64> {
        let staged = Staged::new(g, descs, indirect)?;
        let need = if indirect { 1 } else { staged.chain.len() };
        let mut st = self.state.lock().unwrap();
        if st.free.len() < need {
            drop(st);
            g.release(staged.block.0, staged.block.1);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let at = st.free.len() - need;
        let idx = st.free.split_off(at);
        // Direct: the chain links ring descriptors `idx`. Indirect: it links table entries 0..n,
        // and ring descriptor idx[0] points at the table.
        let n = staged.chain.len();
        for (i, &(addr, len, flags)) in staged.chain.iter().enumerate() {
            let (at, next) = match staged.table {
                Some(t) => (t + 16 * i as u64, u16::try_from(i + 1).ok()),
                None => (self.ring.desc_addr(idx[i]), idx.get(i + 1).copied()),
            };
            let next = next.filter(|_| i + 1 < n);
            let flags = if next.is_some() { flags | F_NEXT } else { flags };
            write_desc_at(&g.mem, at, (addr, len, flags), next.unwrap_or(0))?;
        }
        if let Some(t) = staged.table {
            let table_len = u32::try_from(16 * n).map_err(|_| einval())?;
            write_desc_at(&g.mem, self.ring.desc_addr(idx[0]), (t, table_len, F_INDIRECT), 0)?;
        }
        self.ring.publish(&g.mem, st.next_avail, idx[0])?;
        st.next_avail = st.next_avail.wrapping_add(1);
        let id = st.next_id;
        st.next_id += 1;
        st.inflight.insert(idx[0], Inflight { id, descs: idx, staged });
        drop(st);
        self.kick.write(1)?;
        Ok(id)
    }

    /// Makes the head of in-flight chain `id` available `times` more times, as a hostile driver
    /// might: in batches of half the queue, each kicked and waited for until the device has
    /// consumed it (EVENT_IDX's avail_event), so the avail index never runs a queue ahead.
    pub fn republish(&self, g: &GuestMem, id: u64, times: usize, timeout: Duration) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        let head = st.inflight.iter().find(|(_, c)| c.id == id).map(|(h, _)| *h).ok_or_else(einval)?;
        let batch = usize::from(self.ring.size / 2).max(1);
        let mut left = times;
        while left > 0 {
            for _ in 0..batch.min(left) {
                self.ring.publish(&g.mem, st.next_avail, head)?;
                st.next_avail = st.next_avail.wrapping_add(1);
                left -= 1;
            }
            self.kick.write(1)?;
            let deadline = Instant::now() + timeout;
            while self.ring.avail_event(&g.mem)? != st.next_avail {
                if Instant::now() >= deadline {
                    return Err(timed_out(format!("device never consumed avail index {}", st.next_avail)));
                }
                thread::yield_now();
            }
        }
        Ok(())
    }

    /// Moves every new used element to `done` and re-arms `used_event`.
    fn harvest(&self, g: &GuestMem, st: &mut QueueState) -> io::Result<()> {
        let seen = st.last_used;
        loop {
            let idx = self.ring.used_idx(&g.mem)?;
            while st.last_used != idx {
                let (head, len) = self.ring.used_elem(&g.mem, st.last_used)?;
                st.last_used = st.last_used.wrapping_add(1);
                let chain = u16::try_from(head).ok().and_then(|h| st.inflight.remove(&h));
                let chain = chain.ok_or_else(|| io::Error::other(format!("used ring: head {head} not in flight")))?;
                st.free.extend(chain.descs);
                st.done.insert(chain.id, (len, chain.staged));
            }
            self.ring.set_used_event(&g.mem, st.last_used)?;
            // Pairs with the device's barrier between writing used idx and reading used_event:
            // either it sees our used_event and signals, or we see its new idx here.
            fence(Ordering::SeqCst);
            if self.ring.used_idx(&g.mem)? == st.last_used {
                break;
            }
        }
        if st.last_used != seen {
            // What we moved may be another waiter's, whose call the device may now skip (our
            // used_event moved): wake the condvar waiters, and the poller with a call of our own.
            self.cond.notify_all();
            if st.polling {
                self.call.write(1)?;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the chain `id` to be used, then copies its writable bytes out.
    pub fn wait(&self, g: &GuestMem, id: u64, timeout: Duration) -> io::Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut done = st.done.remove(&id);
            if done.is_none() {
                self.harvest(g, &mut st)?;
                done = st.done.remove(&id);
                if done.is_some() && left.is_zero() {
                    // Strict on purpose: a device that forgets to signal fails the test.
                    return Err(timed_out(format!("chain {id} was used but no call came")));
                }
            }
            if let Some((used_len, staged)) = done {
                drop(st);
                let mut data = Vec::new();
                for &(addr, n) in &staged.writes {
                    let at = data.len();
                    data.resize(at + n, 0);
                    g.mem.read_slice(&mut data[at..], GuestAddress(addr)).map_err(mem_err)?;
                }
                g.release(staged.block.0, staged.block.1);
                return Ok(Reply { used_len, data });
            }
            if left.is_zero() {
                return Err(timed_out(format!("chain {id} was not used")));
            }
            if st.polling {
                st = self.cond.wait_timeout(st, left).unwrap().0;
                continue;
            }
            st.polling = true;
            drop(st);
            let polled = poll_readable(self.call.as_raw_fd(), left);
            let _ = self.call.read(); // EAGAIN when nothing was signalled
            st = self.state.lock().unwrap();
            st.polling = false;
            self.cond.notify_all();
            polled?;
        }
    }
}

fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid pollfd that outlives the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    let e = io::Error::last_os_error();
    if r < 0 && e.kind() != io::ErrorKind::Interrupted { Err(e) } else { Ok(()) }
}

/// A piece installed by SHMEM_MAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub shm_offset: u64,
    pub len: u64,
    pub fd_offset: u64,
    pub writable: bool,
    /// Identity of the mapped file (`st_dev`, `st_ino`), to compare with `fs::metadata`.
    pub dev: u64,
    pub ino: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmemOp {
    Map,
    Unmap,
}

/// One SHMEM_MAP/UNMAP request as received, with the errno answered (0: done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemEvent {
    pub op: ShmemOp,
    pub shmid: u8,
    pub fd_offset: u64,
    pub shm_offset: u64,
    pub len: u64,
    pub flags: u64,
    pub errno: i32,
}

#[derive(Default)]
struct WindowState {
    pieces: BTreeMap<u64, Piece>, // by shm_offset; never overlapping
    log: Vec<ShmemEvent>,
    /// The most pieces installed at once.
    peak: usize,
    /// Announce every piece to the backend as a memory region, as QEMU 11.1 does.
    mirror: Option<Frontend>,
}

/// Where mirrored pieces appear in guest-physical space (QEMU: the device's BAR).
const MIRROR_GPA: u64 = 1 << 44;

/// Shared memory region 0, emulating QEMU 11.1 (DESIGN.md §3): a map over any part of an
/// installed piece is refused, an unmap must match one piece exactly, and a page outside every
/// piece reads as zeros and drops writes (here: anonymous read-only zero pages).
pub struct Window {
    base: usize, // start of the reservation; 0 when `len` is 0
    len: u64,
    proc_mem: File, // /proc/self/mem: a page past EOF gives EIO instead of SIGBUS
    state: Mutex<WindowState>,
}

impl Window {
    /// Reserves a window of `len` bytes (a page multiple; 0: no window, every map refused).
    pub fn new(len: u64) -> io::Result<Self> {
        let proc_mem = File::options().read(true).write(true).open("/proc/self/mem")?;
        if !len.is_multiple_of(PAGE) {
            return Err(einval());
        }
        let mut w = Self { base: 0, len: 0, proc_mem, state: Mutex::default() };
        if len > 0 {
            let n = usize::try_from(len).map_err(|_| einval())?;
            // SAFETY: a new private anonymous mapping where the kernel chooses; it aliases nothing.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), n, ZERO_PROT, ZERO_FLAGS, -1, 0) };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            (w.base, w.len) = (p as usize, len);
        }
        Ok(w)
    }

    /// The window's first byte. Direct access is not what a guest sees: a write outside every
    /// piece raises SIGSEGV, and touching a page past its file's EOF raises SIGBUS. Prefer
    /// `read` and `write`.
    pub fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    /// The installed pieces, by offset.
    pub fn pieces(&self) -> Vec<Piece> {
        self.state.lock().unwrap().pieces.values().copied().collect()
    }
    /// Every SHMEM_MAP/UNMAP received so far, in order.
    pub fn log(&self) -> Vec<ShmemEvent> {
        self.state.lock().unwrap().log.clone()
    }
    /// The most pieces that were installed at once.
    pub fn peak_pieces(&self) -> usize {
        self.state.lock().unwrap().peak
    }

    /// The memory region QEMU makes of a piece, for ADD_MEM_REG / REM_MEM_REG.
    fn region_of(&self, start: u64, len: u64, fd_offset: u64, fd: RawFd) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: MIRROR_GPA + start,
            memory_size: len,
            userspace_addr: self.base as u64 + start,
            mmap_offset: fd_offset,
            mmap_handle: fd,
        }
    }

    /// Host address of `[offset, offset + len)`, which must lie in the window.
    fn addr(&self, offset: u64, len: u64) -> io::Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base as u64 + offset),
            _ => Err(einval()),
        }
    }

    /// Reads through /proc/self/mem: zeros outside pieces, EIO on a page past its file's EOF.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let at = self.addr(offset, len as u64)?;
        let mut buf = vec![0; len];
        self.proc_mem.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }

    /// Writes through /proc/self/mem into the pieces the range covers; the rest is dropped.
    /// EIO on a read-only piece or a page past EOF.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.addr(offset, data.len() as u64)?;
        let end = offset + data.len() as u64;
        let st = self.state.lock().unwrap();
        let hit = st.pieces.range(..end).rev().take_while(|(s, p)| *s + p.len > offset);
        for (&s, p) in hit {
            let (from, to) = (s.max(offset), (s + p.len).min(end));
            let part = &data[(from - offset) as usize..(to - offset) as usize];
            self.proc_mem.write_all_at(part, self.base as u64 + from)?;
        }
        Ok(())
    }

    /// Validates shmid and range; `fd_offset` matters only for a map.
    fn check(&self, req: &VhostUserMMap, map: bool) -> io::Result<(u64, u64)> {
        let (shm_offset, len, fd_offset) = (req.shm_offset, req.len, req.fd_offset);
        let aligned = shm_offset % PAGE == 0 && len % PAGE == 0 && (!map || fd_offset % PAGE == 0);
        if req.shmid != 0 || len == 0 || !aligned || VhostUserMMapFlags::from_bits(req.flags).is_none() {
            return Err(einval());
        }
        self.addr(shm_offset, len)?;
        Ok((shm_offset, len))
    }

    fn map(&self, st: &mut WindowState, req: &VhostUserMMap, fd: RawFd) -> io::Result<()> {
        let (start, len) = self.check(req, true)?;
        if let Some((&s, p)) = st.pieces.range(..start + len).next_back()
            && s + p.len > start
        {
            return Err(einval()); // QEMU 11.1: no map over any part of a piece; the old one stays
        }
        let writable = req.flags & VhostUserMMapFlags::WRITABLE.bits() != 0;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let fd_offset = libc::off_t::try_from(req.fd_offset).map_err(|_| einval())?;
        // SAFETY: borrowed only for the duration of this call, during which the caller keeps it open.
        let meta = File::from(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?).metadata()?;
        // QEMU 11.1 backs each map with a RAM region made from the fd, which refuses a file
        // smaller than offset + size ("backing store size ... is too small"): measured in a VM.
        if meta.len() > 0 && meta.len() < req.fd_offset.saturating_add(len) {
            return Err(einval());
        }
        let addr = (self.base as u64 + start) as *mut libc::c_void;
        // SAFETY: the range lies in our reservation (checked) and under no piece, so MAP_FIXED
        // replaces only our own zero pages, which nothing in Rust refers to.
        let p = unsafe { libc::mmap(addr, len as usize, prot, libc::MAP_SHARED | libc::MAP_FIXED, fd, fd_offset) };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            self.zero(start, len)?; // a failed MAP_FIXED may have dropped the old pages
            return Err(e);
        }
        let piece =
            Piece { shm_offset: start, len, fd_offset: req.fd_offset, writable, dev: meta.dev(), ino: meta.ino() };
        // QEMU 11.1 announces the new RAM region to the backend right after it answered the map
        // (it commits the memory transaction after its reply); announcing it just before the
        // answer keeps this frontend single-threaded, and a backend must cope with both orders.
        if let Some(fe) = st.mirror.as_mut() {
            let region = self.region_of(start, len, req.fd_offset, fd);
            if let Err(e) = fe.add_mem_region(&region) {
                self.zero(start, len)?;
                return Err(io::Error::other(format!("ADD_MEM_REG of a piece: {e}")));
            }
        }
        st.pieces.insert(start, piece);
        st.peak = st.peak.max(st.pieces.len());
        Ok(())
    }

    fn unmap(&self, st: &mut WindowState, req: &VhostUserMMap) -> io::Result<()> {
        let (start, len) = self.check(req, false)?;
        if st.pieces.get(&start).is_none_or(|p| p.len != len) {
            return Err(einval()); // QEMU 11.1: only an exact earlier map can be unmapped
        }
        self.zero(start, len)?;
        if let Some(p) = st.pieces.remove(&start)
            && let Some(fe) = st.mirror.as_mut()
        {
            // REM_MEM_REG matches by address and size; the fd is not sent.
            let region = self.region_of(start, len, p.fd_offset, -1);
            fe.remove_mem_region(&region).map_err(|e| io::Error::other(format!("REM_MEM_REG of a piece: {e}")))?;
        }
        Ok(())
    }

    /// Drops every piece without a request, as QEMU does on a device reset.
    fn drop_all(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        for (&start, p) in &st.pieces {
            self.zero(start, p.len)?;
        }
        st.pieces.clear();
        Ok(())
    }

    /// Puts anonymous read-only zero pages back over `[start, start + len)` of the window.
    fn zero(&self, start: u64, len: u64) -> io::Result<()> {
        let addr = (self.base as u64 + start) as *mut libc::c_void;
        // SAFETY: the range lies in our reservation (checked by the callers); nothing in Rust
        // refers to it.
        let p = unsafe { libc::mmap(addr, len as usize, ZERO_PROT, ZERO_FLAGS | libc::MAP_FIXED, -1, 0) };
        if p == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn handle(&self, op: ShmemOp, req: &VhostUserMMap, fd: Option<RawFd>) -> HandlerResult<u64> {
        let mut st = self.state.lock().unwrap();
        let r = match fd {
            Some(fd) => self.map(&mut st, req, fd),
            None => self.unmap(&mut st, req),
        };
        let errno = r.as_ref().err().map_or(0, |e| e.raw_os_error().unwrap_or(libc::EIO));
        let (shmid, fd_offset, shm_offset, len, flags) = (req.shmid, req.fd_offset, req.shm_offset, req.len, req.flags);
        st.log.push(ShmemEvent { op, shmid, fd_offset, shm_offset, len, flags, errno });
        r.map(|()| 0)
    }
}

const ZERO_PROT: libc::c_int = libc::PROT_READ;
const ZERO_FLAGS: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

impl VhostUserFrontendReqHandler for Window {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        self.handle(ShmemOp::Map, req, Some(fd.as_raw_fd()))
    }
    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        self.handle(ShmemOp::Unmap, req, None)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the reservation is ours, and `&mut self` proves no reader remains.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
        }
    }
}

/// Shuts `sock` down unless dropped within `timeout`: a silent backend turns a blocked
/// vhost-user call (the crate has no timeouts) into an error instead of a hang.
struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn arm(sock: &UnixStream, timeout: Duration) -> io::Result<Self> {
        let (sock, fired) = (sock.try_clone()?, Arc::new(AtomicBool::new(false)));
        let (tx, rx) = mpsc::channel::<()>();
        let flag = fired.clone();
        let thread = thread::spawn(move || {
            if rx.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) {
                flag.store(true, Ordering::SeqCst);
                let _ = sock.shutdown(Shutdown::Both);
            }
        });
        Ok(Self { disarm: Some(tx), thread: Some(thread), fired })
    }

    /// Turns a vhost-user result into an `io::Result` naming the step (TimedOut if we fired).
    fn check<T>(&self, what: &str, r: vhost::Result<T>) -> io::Result<T> {
        r.map_err(|e| {
            if self.fired.load(Ordering::SeqCst) {
                timed_out(format!("{what}: no answer"))
            } else {
                io::Error::other(format!("{what}: {e}"))
            }
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The backend request channel: a thread serving SHMEM_MAP/UNMAP into the window.
struct Channel {
    sock: UnixStream, // our handle on the backend's end, to make the thread's recv see EOF
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Channel {
    fn start(fe: &mut Frontend, dog: &Watchdog, window: Arc<Window>, reply_ack: bool) -> io::Result<Self> {
        let mut handler = FrontendReqHandler::new(window).map_err(|e| io::Error::other(e.to_string()))?;
        // Without this the backend waits forever for the ack of its first SHMEM_MAP.
        handler.set_reply_ack_flag(reply_ack);
        let tx = handler.get_tx_raw_fd();
        // SAFETY: `handler` owns `tx` and is alive here.
        let sock = UnixStream::from(unsafe { BorrowedFd::borrow_raw(tx) }.try_clone_to_owned()?);
        dog.check("SET_BACKEND_REQ_FD", fe.set_backend_request_fd(&tx))?;
        let thread = thread::spawn(move || {
            loop {
                match handler.handle_request() {
                    // A refused map was answered with -errno and logged; keep serving.
                    Ok(_) | Err(VhostUserError::ReqHandlerError(_)) => {}
                    Err(VhostUserError::Disconnected | VhostUserError::PartialMessage) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        Ok(Self { sock, thread: Some(thread) })
    }

    fn stop(&mut self) -> io::Result<()> {
        let _ = self.sock.shutdown(Shutdown::Both);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(io::Error::other(format!("backend request channel: {e}"))),
            Some(Err(_)) => Err(io::Error::other("backend request channel thread panicked")),
            _ => Ok(()),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A vhost-user frontend with guest memory, `num_queues` virtqueues and a DAX window.
pub struct Vmm {
    frontend: Frontend,
    sock: UnixStream, // the frontend socket: watchdog and hang-up
    guest: GuestMem,
    queues: Vec<Virtqueue>,
    window: Arc<Window>,
    channel: Option<Channel>,
    config: Option<FsConfig>,
    shmem_sizes: Vec<u64>,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    timeout: Duration,
    closed: bool,
    /// Memory regions added by `add_memory_regions`.
    extra: Vec<File>,
}

/// FEATURES_OK, the memory table, then each vring, enabled: the driver's part of bringing the
/// device up, at connect and again after a reset.
fn bring_up(
    fe: &mut Frontend,
    dog: &Watchdog,
    guest: &GuestMem,
    num_queues: usize,
    queue_size: u16,
    features: u64,
) -> io::Result<Vec<Virtqueue>> {
    dog.check("SET_FEATURES", fe.set_features(features))?;
    let regions = guest.mem.iter().map(VhostUserMemoryRegionInfo::from_guest_region).collect::<Result<Vec<_>, _>>();
    dog.check("SET_MEM_TABLE", regions.and_then(|r| fe.set_mem_table(&r)))?;
    let queues = (0..num_queues).map(|_| Virtqueue::new(guest, queue_size)).collect::<io::Result<Vec<_>>>()?;
    for (i, q) in queues.iter().enumerate() {
        let hva = |a: GuestAddress| guest.mem.get_host_address(a).map(|p| p as u64).map_err(mem_err);
        let ring = q.ring;
        let addrs = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            // Frontend virtual addresses: the backend translates them through the mem table.
            desc_table_addr: hva(ring.desc)?,
            used_ring_addr: hva(ring.used)?,
            avail_ring_addr: hva(ring.avail)?,
            log_addr: None,
        };
        dog.check("SET_VRING_NUM", fe.set_vring_num(i, ring.size))?;
        dog.check("SET_VRING_BASE", fe.set_vring_base(i, 0))?;
        dog.check("SET_VRING_ADDR", fe.set_vring_addr(i, &addrs))?;
        dog.check("SET_VRING_CALL", fe.set_vring_call(i, &q.call))?;
        dog.check("SET_VRING_KICK", fe.set_vring_kick(i, &q.kick))?;
        dog.check("SET_VRING_ENABLE", fe.set_vring_enable(i, true))?;
    }
    Ok(queues)
}

impl Vmm {
    /// Connects (retrying while the socket is absent or refuses) and brings the device up the
    /// way QEMU does: owner, features, protocol features, queue count, config, shmem config,
    /// backend channel, FEATURES_OK, memory table, then each vring, enabled.
    pub fn connect(path: impl AsRef<Path>, num_queues: usize, opts: VmmOptions) -> io::Result<Self> {
        type P = VhostUserProtocolFeatures;
        let stream = connect_socket(path.as_ref(), opts.timeout)?;
        let sock = stream.try_clone()?;
        let dog = Watchdog::arm(&sock, opts.timeout)?;
        let mut fe = Frontend::from_stream(stream, num_queues as u64);
        dog.check("SET_OWNER", fe.set_owner())?;
        let offered = dog.check("GET_FEATURES", fe.get_features())?;
        let needed = (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & needed != needed {
            return Err(io::Error::other(format!("backend features {offered:#x} lack {needed:#x}")));
        }
        let optional = u64::from(opts.indirect) << VIRTIO_RING_F_INDIRECT_DESC
            | u64::from(opts.event_idx) << VIRTIO_RING_F_EVENT_IDX;
        let features = needed | (offered & optional);

        let mut wanted = P::MQ
            | P::REPLY_ACK
            | P::CONFIG
            | P::BACKEND_REQ
            | P::BACKEND_SEND_FD
            | P::RESET_DEVICE
            | P::CONFIGURE_MEM_SLOTS;
        wanted.set(P::SHMEM, opts.shmem);
        wanted.set(P::REPLY_ACK, opts.reply_ack);
        // set_protocol_features records what it is given as acked: mask by the offer first.
        let protocol = wanted & dog.check("GET_PROTOCOL_FEATURES", fe.get_protocol_features())?;
        dog.check("SET_PROTOCOL_FEATURES", fe.set_protocol_features(protocol))?;
        if protocol.contains(P::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(P::MQ) {
            let n = dog.check("GET_QUEUE_NUM", fe.get_queue_num())?;
            if n < num_queues as u64 {
                return Err(io::Error::other(format!("backend has {n} queues, {num_queues} wanted")));
            }
        }
        let mut config = None;
        if protocol.contains(P::CONFIG) {
            let (_, raw) = dog.check("GET_CONFIG", fe.get_config(0, 40, VhostUserConfigFlags::empty(), &[0; 40]))?;
            config = Some(parse_config(&raw)?);
        }
        let mut shmem_sizes = vec![];
        if protocol.contains(P::SHMEM) {
            let c = dog.check("GET_SHMEM_CONFIG", fe.get_shmem_config())?;
            shmem_sizes = c.memory_sizes.into_iter().take(c.nregions as usize).collect();
        }
        let window = Arc::new(Window::new(shmem_sizes.first().copied().unwrap_or(0))?);
        let mut channel = None;
        if protocol.contains(P::BACKEND_REQ) {
            channel = Some(Channel::start(&mut fe, &dog, window.clone(), protocol.contains(P::REPLY_ACK))?);
        }
        let guest = GuestMem::new(opts.mem_size)?;
        let queues = bring_up(&mut fe, &dog, &guest, num_queues, opts.queue_size, features)?;
        drop(dog);
        let timeout = opts.timeout;
        Ok(Self {
            frontend: fe,
            sock,
            guest,
            queues,
            window,
            channel,
            config,
            shmem_sizes,
            features,
            protocol,
            timeout,
            closed: false,
            extra: Vec::new(),
        })
    }

    /// VHOST_USER_RESET_DEVICE, as QEMU sends on a guest reset: the frontend drops every window
    /// mapping itself, then the driver brings the device up again, with fresh queues.
    pub fn reset_device(&mut self) -> io::Result<()> {
        let dog = Watchdog::arm(&self.sock, self.timeout)?;
        // QEMU stops every vring first (GET_VRING_BASE), then resets.
        for i in 0..self.queues.len() {
            dog.check("GET_VRING_BASE", self.frontend.get_vring_base(i))?;
        }
        dog.check("RESET_DEVICE", self.frontend.reset_device())?;
        self.window.drop_all()?;
        let size = self.queues.first().map_or(256, |q| q.ring.size);
        let n = self.queues.len();
        self.queues = bring_up(&mut self.frontend, &dog, &self.guest, n, size, self.features)?;
        Ok(())
    }

    /// The acked virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }
    /// The acked protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }
    /// GET_CONFIG's answer, if CONFIG was acked.
    pub fn config(&self) -> Option<&FsConfig> {
        self.config.as_ref()
    }
    /// GET_SHMEM_CONFIG's region sizes, if SHMEM was acked.
    pub fn shmem_sizes(&self) -> &[u64] {
        &self.shmem_sizes
    }
    /// The DAX window (length 0 without SHMEM).
    pub fn window(&self) -> &Window {
        &self.window
    }
    pub fn guest(&self) -> &GuestMem {
        &self.guest
    }
    /// A handle for raw vhost-user messages (lifecycle tests). It shares the connection.
    pub fn frontend(&self) -> Frontend {
        self.frontend.clone()
    }

    /// From now on, announce every window piece to the backend as one more memory region
    /// (ADD_MEM_REG before answering the map, REM_MEM_REG on unmap), as QEMU 11.1 does.
    pub fn mirror_pieces_as_regions(&self) {
        self.window.state.lock().unwrap().mirror = Some(self.frontend.clone());
    }

    /// ADD_MEM_REG of `n` more regions of one page each (memfds above guest RAM), standing for
    /// what else a QEMU frontend holds as vhost memory (RAM above 4 GiB, DIMMs, other devices).
    pub fn add_memory_regions(&mut self, n: usize) -> io::Result<()> {
        for i in 0..n {
            // SAFETY: the name is a NUL-terminated literal; the result is checked before use.
            let fd = unsafe { libc::memfd_create(c"test-vmm-extra".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            file.set_len(PAGE)?;
            let at = (1 << 40) + (self.extra.len() as u64 + i as u64) * PAGE;
            // The backend maps the fd itself; the frontend address is only for translating vring
            // addresses, which never point here.
            let region = VhostUserMemoryRegionInfo {
                guest_phys_addr: at,
                memory_size: PAGE,
                userspace_addr: at,
                mmap_offset: 0,
                mmap_handle: file.as_raw_fd(),
            };
            self.frontend.add_mem_region(&region).map_err(|e| io::Error::other(format!("ADD_MEM_REG: {e}")))?;
            self.extra.push(file);
        }
        Ok(())
    }
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn queue(&self, queue: usize) -> io::Result<&Virtqueue> {
        self.queues.get(queue).ok_or_else(einval)
    }

    /// Publishes an avail index `ahead` entries past the true one and kicks, as a buggy or
    /// hostile driver might; 0 writes the true index back (and kicks).
    pub fn poke_avail_idx(&self, queue: usize, ahead: u16) -> io::Result<()> {
        let q = self.queue(queue)?;
        let st = q.state.lock().unwrap();
        let v = st.next_avail.wrapping_add(ahead);
        let at = GuestAddress(q.ring.avail.0 + 2);
        self.guest.mem.store(v.to_le(), at, Ordering::Release).map_err(mem_err)?;
        q.kick.write(1)
    }

    /// The device's used index of `queue`, as the guest would read it.
    pub fn used_idx(&self, queue: usize) -> io::Result<u16> {
        self.queue(queue)?.ring.used_idx(&self.guest.mem)
    }

    /// GET_VRING_BASE on one queue (the frontend stops it); returns its next avail index.
    pub fn stop_queue(&self, queue: usize) -> io::Result<u32> {
        let dog = Watchdog::arm(&self.sock, self.timeout)?;
        dog.check("GET_VRING_BASE", self.frontend.get_vring_base(queue))
    }

    /// Re-publishes the head of the still-in-flight `ticket` `times` times (see
    /// `Virtqueue::republish`); needs EVENT_IDX.
    pub fn republish(&self, ticket: &Ticket, times: usize) -> io::Result<()> {
        self.queue(ticket.queue)?.republish(&self.guest, ticket.id, times, self.timeout)
    }

    /// Makes a chain of `descs` available on `queue` and kicks.
    pub fn submit(&self, queue: usize, descs: &[Desc]) -> io::Result<Ticket> {
        let id = self.queue(queue)?.submit(&self.guest, descs, false)?;
        Ok(Ticket { queue, id })
    }

    /// Like `submit`, but as one descriptor pointing at an indirect table holding `descs`
    /// (sent whether or not INDIRECT_DESC was acked).
    pub fn submit_indirect(&self, queue: usize, descs: &[Desc]) -> io::Result<Ticket> {
        let id = self.queue(queue)?.submit(&self.guest, descs, true)?;
        Ok(Ticket { queue, id })
    }

    /// Waits (up to the timeout: TimedOut) for a submitted chain to come back in the used ring.
    pub fn wait(&self, ticket: Ticket) -> io::Result<Reply> {
        self.queue(ticket.queue)?.wait(&self.guest, ticket.id, self.timeout)
    }

    /// One descriptor per readable slice, then one per writable length; submit and wait.
    pub fn request(&self, queue: usize, readable: &[&[u8]], writable: &[usize]) -> io::Result<Reply> {
        let reads = readable.iter().map(|b| Desc::Read(b));
        let descs: Vec<Desc> = reads.chain(writable.iter().map(|&n| Desc::Write(n))).collect();
        self.wait(self.submit(queue, &descs)?)
    }

    /// Stops every vring (GET_VRING_BASE: their next avail index), hangs up, stops the backend
    /// channel. Drop does the same and ignores errors.
    pub fn close(mut self) -> io::Result<Vec<u32>> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<Vec<u32>> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(vec![]);
        }
        let bases = Watchdog::arm(&self.sock, self.timeout).and_then(|dog| {
            (0..self.queues.len()).map(|q| dog.check("GET_VRING_BASE", self.frontend.get_vring_base(q))).collect()
        });
        let _ = self.sock.shutdown(Shutdown::Both);
        let stopped = self.channel.take().map_or(Ok(()), |mut c| c.stop());
        let bases = bases?;
        stopped.map(|()| bases)
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

fn parse_config(raw: &[u8]) -> io::Result<FsConfig> {
    let (tag, rest) = raw.split_at_checked(36).ok_or_else(|| io::Error::other("config: short"))?;
    let nrq: [u8; 4] = rest.try_into().map_err(|_| io::Error::other("config: not 40 bytes"))?;
    let tag = tag.split(|&b| b == 0).next().unwrap_or_default();
    Ok(FsConfig { tag: String::from_utf8_lossy(tag).into_owned(), num_request_queues: u32::from_le_bytes(nrq) })
}

fn connect_socket(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            // The daemon may not have bound (ENOENT) or be listening (ECONNREFUSED) yet.
            Err(e)
                if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}
