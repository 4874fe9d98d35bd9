//! The frontend's memory slots. QEMU 11.1 turns every installed piece into one more vhost
//! memory region (of this device and every other vhost device) and aborts once it tracks more
//! than VHOST_USER_MAX_RAM_SLOTS, so the window counts the regions the frontend gave us, tells
//! our own pieces apart from the rest (guest RAM, other devices' memory) by file, offset and
//! length, and says how many pieces may be installed at most. QEMU also answers a SHMEM_MAP
//! before the new region is in the guest's address space (it commits the memory transaction
//! after its reply, then announces the region to every vhost backend), so a map is complete
//! only once its region is announced: `Counting` waits for that.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::info;

use super::{DaxError, FileOffset, Mapper, WinRange};

/// QEMU's VHOST_USER_MAX_RAM_SLOTS (hw/virtio/vhost-user.c): past it QEMU asserts.
pub const FRONTEND_MAX_RAM_SLOTS: usize = 512;

/// What vhost-user-backend 0.24 answers GET_MAX_MEM_SLOTS (handler.rs MAX_MEM_SLOTS); QEMU
/// takes the smaller of the two.
pub const BACKEND_MAX_MEM_SLOTS: usize = 509;

/// Regions of its own (guest RAM, ROMs, other devices) a frontend is assumed to hold when the
/// window size is checked at startup, before any frontend connected.
pub const ASSUMED_FRONTEND_REGIONS: usize = 16;

/// A file as the kernel knows it: (st_dev, st_ino).
pub type FileId = (u64, u64);

/// A file range as a piece or a memory region maps it: (file, file offset, length).
pub type RangeKey = (FileId, u64, u64);

/// How long a map (unmap) waits for its region to be announced (withdrawn), once the frontend
/// has announced a piece (QEMU 11.1 under TCG with 400 regions: tens of ms).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

/// The memory-slot budget of one window.
pub struct Slots {
    /// Slots pieces and the frontend's own regions may use together.
    limit: usize,
    state: Mutex<State>,
    /// Signalled at every memory-table update.
    announced: Condvar,
}

#[derive(Default)]
struct State {
    /// Pieces being installed or installed, per file range: regions mapping these are ours.
    ours: HashMap<RangeKey, usize>,
    /// Installed pieces by window start, and the file range behind each.
    pieces: HashMap<u64, RangeKey>,
    /// Regions of the last memory table that are not our pieces.
    others: usize,
    /// File-backed regions of the last memory table, per file range.
    regions: HashMap<RangeKey, usize>,
    /// This connection's frontend has announced a piece as a region (QEMU does): from then on
    /// every map waits for its announcement.
    announces: bool,
    stats: SlotStats,
}

/// What the window did with the slots since the last `take_stats` (the `DAX window:` line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats {
    pub peak_pieces: usize,
    pub peak_regions: usize,
    pub peak_others: usize,
    pub maps: u64,
    pub map_micros: u64,
    pub max_map_micros: u64,
    pub unmaps: u64,
    pub unmap_micros: u64,
    pub table_updates: u64,
    /// Time spent classifying the regions of those updates.
    pub table_micros: u64,
    /// Growths that merged pieces instead of adding one (no slot left for growth).
    pub merges: u64,
    /// SETUPMAPPINGs or re-installs refused because no slot was left.
    pub refusals: u64,
    /// Maps whose region the frontend did not announce in time.
    pub late_announcements: u64,
}

impl Slots {
    /// A budget that keeps `reserved` of the frontend's slots free (memory hotplug).
    pub fn new(reserved: usize) -> Slots {
        Slots {
            limit: max_slots().saturating_sub(reserved),
            state: Mutex::new(State::default()),
            announced: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most pieces that may be installed now: the limit less the frontend's own regions.
    pub fn cap(&self) -> usize {
        self.limit.saturating_sub(self.state().others)
    }

    /// The frontend's memory table changed: `regions` holds, per region, the file range it
    /// maps (None when it has no file or it cannot be identified: the frontend's own).
    pub fn table_changed(&self, regions: &[Option<RangeKey>], started: Instant) {
        let mut s = self.state();
        let others = regions.iter().filter(|r| r.is_none_or(|k| !s.ours.contains_key(&k))).count();
        s.others = others;
        s.regions.clear();
        for k in regions.iter().flatten() {
            *s.regions.entry(*k).or_default() += 1;
        }
        if !s.announces && others < regions.len() {
            info!("the frontend announces window pieces as memory regions: maps wait for them");
            s.announces = true;
        }
        s.stats.table_updates += 1;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.stats.table_micros = s.stats.table_micros.saturating_add(us);
        s.stats.peak_regions = s.stats.peak_regions.max(regions.len());
        s.stats.peak_others = s.stats.peak_others.max(others);
        drop(s);
        self.announced.notify_all();
    }

    /// After the frontend acknowledged a map of `key`: on a frontend that announces pieces,
    /// waits until the memory table holds as many regions of `key` as the window has pieces of
    /// it, so the guest can reach the piece once the caller replies. (A connection's first
    /// map cannot know yet; it does not wait.)
    fn await_region(&self, key: RangeKey) {
        self.await_table(key, |regions, ours| regions >= ours);
    }

    /// After the frontend acknowledged an unmap of `key` (the window's count already lowered):
    /// likewise waits until the memory table no longer holds the region, so the guest cannot
    /// reach the file through it once the caller goes on (to a truncate, say).
    fn await_region_gone(&self, key: RangeKey) {
        self.await_table(key, |regions, ours| regions <= ours);
    }

    /// Waits (bounded) until `done(regions of key in the table, pieces of key)` holds.
    fn await_table(&self, key: RangeKey, done: impl Fn(usize, usize) -> bool) {
        let mut s = self.state();
        if !s.announces {
            return;
        }
        let deadline = Instant::now() + ANNOUNCE_WAIT;
        loop {
            let ours = s.ours.get(&key).copied().unwrap_or(0);
            if done(s.regions.get(&key).copied().unwrap_or(0), ours) {
                return;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            s = self.announced.wait_timeout(s, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        s.stats.late_announcements += 1;
        drop(s);
        crate::log_limit::warn_limited!(
            "the frontend did not announce a piece's region change within {ANNOUNCE_WAIT:?}"
        );
    }

    /// The frontend dropped every piece by itself (reset, disconnect).
    pub fn forget_pieces(&self) {
        let mut s = self.state();
        s.ours.clear();
        s.pieces.clear();
    }

    /// The frontend is gone: its regions went with it.
    pub fn forget_frontend(&self) {
        self.forget_pieces();
        let mut s = self.state();
        s.others = 0;
        s.regions.clear();
        s.announces = false;
    }

    pub fn note_merges(&self, n: usize) {
        self.state().stats.merges += n as u64;
    }

    pub fn note_refusal(&self) {
        self.state().stats.refusals += 1;
    }

    /// The counters so far, reset to zero except the peaks' current levels.
    pub fn take_stats(&self) -> SlotStats {
        let mut s = self.state();
        let now = SlotStats { peak_pieces: s.pieces.len(), peak_others: s.others, ..SlotStats::default() };
        std::mem::replace(&mut s.stats, now)
    }

    /// The frontend's mapper, counting what it installs.
    pub fn counting(self: &Arc<Self>, mapper: Arc<dyn Mapper>) -> Counting {
        Counting { slots: Arc::clone(self), mapper }
    }

    fn begin_map(&self, id: RangeKey) {
        *self.state().ours.entry(id).or_default() += 1;
    }

    fn end_map(&self, id: RangeKey, start: u64, ok: bool, started: Instant) {
        let mut s = self.state();
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.stats.maps += 1;
        s.stats.map_micros = s.stats.map_micros.saturating_add(us);
        s.stats.max_map_micros = s.stats.max_map_micros.max(us);
        if ok {
            if let Some(old) = s.pieces.insert(start, id) {
                release(&mut s.ours, old);
            }
            s.stats.peak_pieces = s.stats.peak_pieces.max(s.pieces.len());
        } else {
            release(&mut s.ours, id);
        }
    }

    /// Returns the file range the unmapped piece had.
    fn end_unmap(&self, start: u64, ok: bool, started: Instant) -> Option<RangeKey> {
        let mut s = self.state();
        s.stats.unmaps += 1;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.stats.unmap_micros = s.stats.unmap_micros.saturating_add(us);
        let key = if ok { s.pieces.remove(&start) } else { None };
        if let Some(key) = key {
            release(&mut s.ours, key);
        }
        key
    }
}

fn release(ours: &mut HashMap<RangeKey, usize>, id: RangeKey) {
    if let Some(n) = ours.get_mut(&id) {
        *n -= 1;
        if *n == 0 {
            ours.remove(&id);
        }
    }
}

/// The most regions the frontend can track: QEMU's limit, or our GET_MAX_MEM_SLOTS if lower.
pub fn max_slots() -> usize {
    FRONTEND_MAX_RAM_SLOTS.min(BACKEND_MAX_MEM_SLOTS)
}

/// The largest window (in 2 MiB slots) whose first pieces fit beside `reserved` free slots and
/// a frontend of `ASSUMED_FRONTEND_REGIONS` regions.
pub fn max_window_slots(reserved: usize) -> usize {
    max_slots().saturating_sub(reserved).saturating_sub(ASSUMED_FRONTEND_REGIONS)
}

/// A `Mapper` that tells the budget which files it maps before the frontend can announce them
/// as regions, and times each round trip.
pub struct Counting {
    slots: Arc<Slots>,
    mapper: Arc<dyn Mapper>,
}

impl Mapper for Counting {
    fn map(&self, range: WinRange, fd: BorrowedFd<'_>, foffset: FileOffset, writable: bool) -> Result<(), DaxError> {
        let key = (super::sys::file_id(fd).map_err(DaxError::Host)?, foffset.0, range.len);
        self.slots.begin_map(key);
        let t = Instant::now();
        let r = self.mapper.map(range, fd, foffset, writable);
        if r.is_ok() {
            self.slots.await_region(key);
        }
        self.slots.end_map(key, range.start.0, r.is_ok(), t);
        r
    }

    fn unmap(&self, range: WinRange) -> Result<(), DaxError> {
        let t = Instant::now();
        let r = self.mapper.unmap(range);
        if let Some(key) = self.slots.end_unmap(range.start.0, r.is_ok(), t) {
            self.slots.await_region_gone(key);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dax::WinOffset;

    struct Null;
    impl Mapper for Null {
        fn map(&self, _: WinRange, _: BorrowedFd<'_>, _: FileOffset, _: bool) -> Result<(), DaxError> {
            Ok(())
        }
        fn unmap(&self, _: WinRange) -> Result<(), DaxError> {
            Ok(())
        }
    }

    #[test]
    fn regions_backed_by_mapped_files_are_not_counted_against_the_frontend() {
        let slots = Arc::new(Slots::new(9));
        assert_eq!(slots.cap(), 500);
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&f);
        let id = crate::dax::sys::file_id(fd).unwrap();
        let m = slots.counting(Arc::new(Null));
        let r = |i: u64| WinRange { start: WinOffset(i << 21), len: 4096 };
        // The frontend has announced nothing: no map waits.
        let t = Instant::now();
        m.map(r(0), fd, FileOffset(0), false).unwrap();
        m.map(r(1), fd, FileOffset(0), false).unwrap();
        assert!(t.elapsed() < ANNOUNCE_WAIT);
        // Guest RAM (no file, or another file) plus our two pieces, as QEMU announces them.
        let ours = Some((id, 0, 4096));
        slots.table_changed(&[None, Some(((1, 2), 0, 4096)), ours, ours], Instant::now());
        assert_eq!(slots.cap(), 498);
        // Another range of the same file is not ours.
        slots.table_changed(&[None, Some(((1, 2), 0, 4096)), ours, ours, Some((id, 4096, 4096))], Instant::now());
        assert_eq!(slots.cap(), 497);
        // Now it has: a map waits for its region, here in vain (counted), for a bounded time.
        let t = Instant::now();
        m.map(r(2), fd, FileOffset(8192), false).unwrap();
        assert!(t.elapsed() >= ANNOUNCE_WAIT);
        m.unmap(r(2)).unwrap();
        // Unmaps wait until the region is withdrawn: here it already is, so they do not.
        let t = Instant::now();
        slots.table_changed(&[None, ours], Instant::now());
        m.unmap(r(0)).unwrap();
        slots.table_changed(&[None], Instant::now());
        m.unmap(r(1)).unwrap();
        assert!(t.elapsed() < ANNOUNCE_WAIT);
        // Once unmapped, a region of that range is the frontend's again.
        slots.table_changed(&[None, ours], Instant::now());
        assert_eq!(slots.cap(), 498);
        let st = slots.take_stats();
        assert_eq!((st.peak_pieces, st.peak_regions, st.maps, st.unmaps, st.table_updates), (3, 5, 3, 3, 5));
        assert_eq!(st.late_announcements, 1);
    }

    #[test]
    fn the_default_window_fits_and_a_1g_window_does_not() {
        assert!(max_window_slots(16) >= 256);
        assert!(max_window_slots(16) < 512);
    }
}
