//! The frontend's memory slots. QEMU 11.1 turns every installed piece into one more vhost
//! memory region (of this device and every other vhost device) and aborts once it tracks more
//! than VHOST_USER_MAX_RAM_SLOTS, so the window counts the regions the frontend gave us, tells
//! our own pieces apart from the rest (guest RAM, other devices' memory) by the file behind
//! them, and says how many pieces may be installed at most.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

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

/// The memory-slot budget of one window.
pub struct Slots {
    /// Slots pieces and the frontend's own regions may use together.
    limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Pieces being installed or installed, per file: regions backed by these files are ours.
    ours: HashMap<FileId, usize>,
    /// Installed pieces by window start, and the file behind each.
    pieces: HashMap<u64, FileId>,
    /// Regions of the last memory table that are not our pieces.
    others: usize,
    stats: SlotStats,
}

/// What the window did with the slots since the last `take_stats`.
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
    /// Growths that merged pieces instead of adding one (the budget or a quiet guest).
    pub merges: u64,
    /// SETUPMAPPINGs or re-installs refused because no slot was left.
    pub refusals: u64,
}

impl Slots {
    /// A budget that keeps `reserved` of the frontend's slots free (memory hotplug).
    pub fn new(reserved: usize) -> Slots {
        Slots { limit: max_slots().saturating_sub(reserved), state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most pieces that may be installed now: the limit less the frontend's own regions.
    pub fn cap(&self) -> usize {
        self.limit.saturating_sub(self.state().others)
    }

    /// The frontend's memory table changed: `regions` holds, per region, the file behind it
    /// (None when it has none or it cannot be identified: counted as the frontend's own).
    pub fn table_changed(&self, regions: &[Option<FileId>], started: Instant) {
        let mut s = self.state();
        let others = regions.iter().filter(|r| r.is_none_or(|id| !s.ours.contains_key(&id))).count();
        s.others = others;
        s.stats.table_updates += 1;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.stats.table_micros = s.stats.table_micros.saturating_add(us);
        s.stats.peak_regions = s.stats.peak_regions.max(regions.len());
        s.stats.peak_others = s.stats.peak_others.max(others);
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
        self.state().others = 0;
    }

    pub fn note_merge(&self) {
        self.state().stats.merges += 1;
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

    fn begin_map(&self, id: FileId) {
        *self.state().ours.entry(id).or_default() += 1;
    }

    fn end_map(&self, id: FileId, start: u64, ok: bool, started: Instant) {
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

    fn end_unmap(&self, start: u64, ok: bool, started: Instant) {
        let mut s = self.state();
        s.stats.unmaps += 1;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.stats.unmap_micros = s.stats.unmap_micros.saturating_add(us);
        if ok && let Some(id) = s.pieces.remove(&start) {
            release(&mut s.ours, id);
        }
    }
}

fn release(ours: &mut HashMap<FileId, usize>, id: FileId) {
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
        let id = super::sys::file_id(fd).map_err(DaxError::Host)?;
        self.slots.begin_map(id);
        let t = Instant::now();
        let r = self.mapper.map(range, fd, foffset, writable);
        self.slots.end_map(id, range.start.0, r.is_ok(), t);
        r
    }

    fn unmap(&self, range: WinRange) -> Result<(), DaxError> {
        let t = Instant::now();
        let r = self.mapper.unmap(range);
        self.slots.end_unmap(range.start.0, r.is_ok(), t);
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
        m.map(r(0), fd, FileOffset(0), false).unwrap();
        m.map(r(1), fd, FileOffset(0), false).unwrap();
        // Guest RAM (no file, or another file) plus our two pieces, as QEMU announces them.
        slots.table_changed(&[None, Some((1, 2)), Some(id), Some(id)], Instant::now());
        assert_eq!(slots.cap(), 498);
        m.unmap(r(0)).unwrap();
        m.unmap(r(1)).unwrap();
        // Once unmapped, a region of that file is the frontend's again.
        slots.table_changed(&[None, Some(id)], Instant::now());
        assert_eq!(slots.cap(), 498);
        let st = slots.take_stats();
        assert_eq!((st.peak_pieces, st.peak_regions, st.maps, st.unmaps, st.table_updates), (2, 4, 2, 2, 2));
    }

    #[test]
    fn the_default_window_fits_and_a_1g_window_does_not() {
        assert!(max_window_slots(16) >= 256);
        assert!(max_window_slots(16) < 512);
    }
}
