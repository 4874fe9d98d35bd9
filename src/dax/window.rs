//! The window table: every mapping the guest set up and the pieces installed for it in the
//! frontend (I1). Pieces of a mapping are contiguous from its start, so "what is installed"
//! is one covered length per mapping. QEMU 11.1 unmaps only whole pieces, so a cut unmaps every
//! piece that reaches past it; the caller re-installs what stays valid.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use log::trace;

use super::copy::Copies;
use super::{DaxError, FileOffset, InodeId, Mapper, WinOffset, WinRange};

/// One installed SHMEM_MAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub start: WinOffset,
    pub len: u64,
}

/// One SETUPMAPPING the guest holds.
pub struct Mapping {
    pub inode: InodeId,
    pub file: Arc<OwnedFd>,
    pub range: WinRange,
    pub foffset: FileOffset,
    pub writable: bool,
    /// Installed pieces, contiguous from `range.start`.
    pub pieces: Vec<Piece>,
    /// Pieces were taken away by a lease break (I5) and are not to be re-grown until restored.
    pub revoked: bool,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.range.start.0 + self.range.len
    }

    /// Bytes installed from the start of the mapping.
    fn covered(&self) -> u64 {
        self.pieces.iter().map(|p| p.len).sum()
    }

    fn unmap_all(&mut self, mapper: &dyn Mapper) -> Result<(), DaxError> {
        while let Some(p) = self.pieces.last().copied() {
            mapper.unmap(WinRange { start: p.start, len: p.len })?;
            trace!("unmapped piece {:#x}+{:#x}", p.start.0, p.len);
            self.pieces.pop();
        }
        Ok(())
    }
}

/// How many pieces the frontend's memory slots leave room for (see `slots`).
#[derive(Clone, Copy, Debug)]
pub struct Room {
    /// The most pieces that may be installed.
    pub cap: usize,
    /// 2 MiB slots of the window: each may need a first piece, so growth leaves them room.
    pub window_slots: usize,
}

impl Room {
    /// Whether one more piece, beside `installed` pieces of which `firsts` are the first of
    /// their mapping, still leaves a first piece for every window slot that has none.
    fn fits(&self, installed: usize, firsts: usize) -> bool {
        installed + 1 + self.window_slots.saturating_sub(firsts) <= self.cap
    }
}

/// All mappings, by window start, and the copy slots.
#[derive(Default)]
pub struct Table {
    maps: BTreeMap<u64, Mapping>,
    /// Read-only mappings served as copies, and the slots backed for them.
    pub copies: Copies,
}

impl Table {
    /// Whether no mapping is recorded and no slot backed (so nothing is installed).
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty() && self.copies.backed() == 0
    }

    /// Whether some file mapping overlaps [start, end).
    pub fn overlaps(&self, start: WinOffset, end: u64) -> bool {
        !self.overlapping(start, end).is_empty()
    }

    /// Records a mapping whose pieces are installed.
    pub fn insert(&mut self, m: Mapping) {
        self.maps.insert(m.range.start.0, m);
    }

    fn overlapping(&self, start: WinOffset, end: u64) -> Vec<u64> {
        self.maps.values().filter(|m| m.range.start.0 < end && m.end() > start.0).map(|m| m.range.start.0).collect()
    }

    /// Unmaps and drops every mapping overlapping [start, end). Returns the inodes touched.
    pub fn remove_overlapping(
        &mut self,
        start: WinOffset,
        end: u64,
        mapper: &dyn Mapper,
    ) -> Result<Vec<InodeId>, DaxError> {
        let mut inodes = Vec::new();
        for key in self.overlapping(start, end) {
            let Some(m) = self.maps.get_mut(&key) else { continue };
            m.unmap_all(mapper)?;
            inodes.push(m.inode);
            self.maps.remove(&key);
        }
        Ok(inodes)
    }

    /// Drops mappings overlapping [start, end) without telling the frontend (it is gone).
    pub fn forget_overlapping(&mut self, start: WinOffset, end: u64) {
        for key in self.overlapping(start, end) {
            self.maps.remove(&key);
        }
    }

    fn of(&mut self, inode: InodeId) -> impl Iterator<Item = &mut Mapping> {
        self.maps.values_mut().filter(move |m| m.inode == inode)
    }

    /// I4: unmaps every piece of `inode` that reaches file offset `cut` or beyond, then
    /// re-installs the part below `cut` at once, while the file is still long enough for the
    /// frontend to accept it (QEMU 11.1 refuses maps past the file's size). Pieces wholly below
    /// the cut stay: a guest may still touch them (Linux before 6.15 unmaps only the file's
    /// first page from its processes during a truncate). Never adds pieces: one or more go, at
    /// most one comes back.
    pub fn cut(&mut self, inode: InodeId, cut: u64, mapper: &dyn Mapper) -> Result<(), DaxError> {
        for m in self.of(inode) {
            let before = m.covered();
            while let Some(p) = m.pieces.last().copied() {
                let file_end = m.foffset.0 + (p.start.0 - m.range.start.0) + p.len;
                if file_end <= cut {
                    break;
                }
                mapper.unmap(WinRange { start: p.start, len: p.len })?;
                trace!("cut: unmapped piece {:#x}+{:#x}", p.start.0, p.len);
                m.pieces.pop();
            }
            let keep = cut.saturating_sub(m.foffset.0).min(before);
            let covered = m.covered();
            if keep > covered && !m.revoked {
                let piece = Piece { start: WinOffset(m.range.start.0 + covered), len: keep - covered };
                mapper.map(
                    WinRange { start: piece.start, len: piece.len },
                    m.file.as_fd(),
                    FileOffset(m.foffset.0 + covered),
                    m.writable,
                )?;
                m.pieces.push(piece);
            }
        }
        Ok(())
    }

    /// Installed pieces, all mappings together.
    pub fn installed(&self) -> usize {
        self.maps.values().map(|m| m.pieces.len()).sum()
    }

    /// Mappings with at least one piece installed.
    fn with_pieces(&self) -> usize {
        self.maps.values().filter(|m| !m.pieces.is_empty()).count()
    }

    /// Whether `fill(inode, valid_end)` would install anything.
    pub fn needs_fill(&self, inode: InodeId, valid_end: u64) -> bool {
        self.maps.values().any(|m| {
            m.inode == inode && !m.revoked && valid_end.saturating_sub(m.foffset.0).min(m.range.len) > m.covered()
        })
    }

    /// Whether some installed piece of `inode` reaches file offset `cut` or beyond.
    pub fn crosses(&self, inode: InodeId, cut: u64) -> bool {
        self.maps.values().any(|m| {
            let covered = m.covered();
            m.inode == inode && covered > 0 && m.foffset.0 + covered > cut
        })
    }

    /// Whether `inode` already has exactly this mapping, writable if `writable` is asked, and
    /// installed up to file offset `valid_end` (or its end): a mapping a host shrink cut short
    /// is set up again, not answered as done.
    pub fn has_same(
        &self,
        inode: InodeId,
        range: WinRange,
        foffset: FileOffset,
        writable: bool,
        valid_end: u64,
    ) -> bool {
        self.maps.get(&range.start.0).is_some_and(|m| {
            m.inode == inode
                && m.range == range
                && m.foffset == foffset
                && (m.writable || !writable)
                && !m.revoked
                && m.covered() >= valid_end.saturating_sub(foffset.0).min(range.len)
        })
    }

    /// Installs, for every mapping of `inode` that is not revoked and whose covered part ends
    /// before file offset `valid_end`, the rest up to `valid_end` (clamped to the mapping).
    /// I3: this re-grows a shortened slot. Within `room` (the slot budget):
    /// - a mapping with nothing installed gets one piece, or `NoSlots` when none is left;
    /// - otherwise an adjacent piece (the installed pages stay in place) while that leaves a
    ///   first piece for every window slot without one (`Room::fits`);
    /// - past that, the mapping's last piece and the growth merge into one piece: an unmap and
    ///   a map, during which the guest's mapped access to that last piece reads zeros.
    ///
    /// Returns how many mappings were merged.
    pub fn fill(&mut self, inode: InodeId, valid_end: u64, mapper: &dyn Mapper, room: Room) -> Result<usize, DaxError> {
        let mut merged = 0;
        let keys: Vec<u64> = self.maps.values().filter(|m| m.inode == inode).map(|m| m.range.start.0).collect();
        for key in keys {
            let (installed, firsts) = (self.installed(), self.with_pieces());
            let Some(m) = self.maps.get_mut(&key) else { continue };
            let want = valid_end.saturating_sub(m.foffset.0).min(m.range.len);
            if m.revoked || want <= m.covered() {
                continue;
            }
            if m.pieces.is_empty() {
                if installed >= room.cap {
                    return Err(DaxError::NoSlots);
                }
            } else if !room.fits(installed, firsts) {
                merged += 1;
                if let Some(p) = m.pieces.last().copied() {
                    mapper.unmap(WinRange { start: p.start, len: p.len })?;
                    trace!("merge: unmapped piece {:#x}+{:#x}", p.start.0, p.len);
                    m.pieces.pop();
                }
            }
            let covered = m.covered();
            let piece = Piece { start: WinOffset(m.range.start.0 + covered), len: want - covered };
            let foffset = FileOffset(m.foffset.0 + covered);
            mapper.map(WinRange { start: piece.start, len: piece.len }, m.file.as_fd(), foffset, m.writable)?;
            trace!("filled piece {:#x}+{:#x}", piece.start.0, piece.len);
            m.pieces.push(piece);
        }
        Ok(merged)
    }

    /// I5: unmaps every piece of `inode`, keeping its mappings. Returns the number unmapped.
    pub fn revoke(&mut self, inode: InodeId, mapper: &dyn Mapper) -> Result<usize, DaxError> {
        let mut n = 0;
        for m in self.of(inode) {
            m.revoked = true;
            n += m.pieces.len();
            m.unmap_all(mapper)?;
        }
        Ok(n)
    }

    /// Lets `fill` re-install `inode`'s mappings again.
    pub fn unrevoke(&mut self, inode: InodeId) {
        for m in self.of(inode) {
            m.revoked = false;
        }
    }

    /// Whether some mapping of `inode` has less installed than it spans (after a cut).
    pub fn has_cut(&self, inode: InodeId) -> bool {
        self.maps.values().any(|m| m.inode == inode && !m.revoked && m.covered() < m.range.len)
    }

    /// Whether `inode` has any mapping.
    pub fn has_inode(&self, inode: InodeId) -> bool {
        self.maps.values().any(|m| m.inode == inode)
    }

    /// File ranges [start, end) installed writable for `inode`.
    pub fn writable_file_ranges(&self, inode: InodeId) -> Vec<(u64, u64)> {
        self.maps
            .values()
            .filter(|m| m.inode == inode && m.writable)
            .map(|m| (m.foffset.0, m.foffset.0 + m.covered()))
            .collect()
    }

    /// (window offset, file offset, len) of every installed piece of `inode`.
    pub fn pieces_of(&self, inode: InodeId) -> Vec<(u64, u64, u64)> {
        let mut v = Vec::new();
        for m in self.maps.values().filter(|m| m.inode == inode) {
            for p in &m.pieces {
                v.push((p.start.0, m.foffset.0 + (p.start.0 - m.range.start.0), p.len));
            }
        }
        v
    }

    /// Inodes with mappings.
    pub fn inodes(&self) -> Vec<InodeId> {
        let mut v: Vec<InodeId> = self.maps.values().map(|m| m.inode).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Unmaps everything (when `mapper` is given) and empties the table; returns how many
    /// mappings there were. A mapping whose unmap the frontend refuses stays, with the pieces
    /// still installed (I1: the table is the truth), so a later SETUPMAPPING, REMOVEMAPPING or
    /// shrink over it retries the unmap instead of mapping over a piece nobody tracks.
    pub fn clear(&mut self, mapper: Option<&dyn Mapper>) -> usize {
        let n = self.maps.len();
        let Some(mapper) = mapper else {
            self.maps.clear();
            return n;
        };
        self.maps.retain(|_, m| match m.unmap_all(mapper) {
            Ok(()) => false,
            Err(e) => {
                crate::log_limit::warn_limited!("cannot unmap {:#x}: {e}; keeping it", m.range.start.0);
                true
            }
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// Records maps and unmaps and enforces QEMU 11.1's rules: no map over any part of a piece,
    /// unmaps must match one piece exactly. `fail_at` makes the n-th call fail.
    #[derive(Default)]
    struct TestMapper {
        pieces: Mutex<BTreeMap<u64, u64>>,
        calls: Mutex<Vec<String>>,
        fail_at: Option<usize>,
    }

    impl TestMapper {
        fn call(&self, what: String) -> Result<(), DaxError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(what);
            if Some(calls.len()) == self.fail_at {
                return Err(DaxError::Frontend(std::io::Error::from_raw_os_error(libc::EIO)));
            }
            Ok(())
        }
        fn installed(&self) -> Vec<(u64, u64)> {
            self.pieces.lock().unwrap().iter().map(|(s, l)| (*s, *l)).collect()
        }
    }

    impl Mapper for TestMapper {
        fn map(&self, r: WinRange, _fd: std::os::fd::BorrowedFd<'_>, f: FileOffset, _w: bool) -> Result<(), DaxError> {
            self.call(format!("map {:#x}+{:#x}@{:#x}", r.start.0, r.len, f.0))?;
            let mut p = self.pieces.lock().unwrap();
            assert!(p.iter().all(|(s, l)| s + l <= r.start.0 || r.start.0 + r.len <= *s), "overlapping map");
            p.insert(r.start.0, r.len);
            Ok(())
        }
        fn unmap(&self, r: WinRange) -> Result<(), DaxError> {
            self.call(format!("unmap {:#x}+{:#x}", r.start.0, r.len))?;
            let mut p = self.pieces.lock().unwrap();
            assert_eq!(p.remove(&r.start.0), Some(r.len), "inexact unmap");
            Ok(())
        }
    }

    const MB2: u64 = 2 << 20;
    const PAGE: u64 = 4096;
    const A: InodeId = InodeId(7);

    fn file() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/dev/null").unwrap().into())
    }

    /// A mapping of slot `i` of `A`, installed over its first `covered` bytes.
    fn mapped(t: &mut Table, m: &TestMapper, i: u64, covered: u64) {
        let range = WinRange { start: WinOffset(i * MB2), len: MB2 };
        let f = file();
        m.map(WinRange { start: range.start, len: covered }, f.as_fd(), FileOffset(i * MB2), true).unwrap();
        let pieces = vec![Piece { start: range.start, len: covered }];
        t.insert(Mapping {
            inode: A,
            file: f,
            range,
            foffset: FileOffset(i * MB2),
            writable: true,
            pieces,
            revoked: false,
        });
    }

    #[test]
    fn cut_unmaps_past_eof_and_keeps_what_stays_valid() {
        let (mut t, m) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m, 0, MB2);
        mapped(&mut t, &m, 1, MB2);
        t.cut(A, 3 * PAGE, &m).unwrap();
        assert_eq!(m.installed(), vec![(0, 3 * PAGE)]);
        assert_eq!(t.pieces_of(A), vec![(0, 0, 3 * PAGE)]);
        assert!(t.has_cut(A) && t.crosses(A, PAGE) && !t.crosses(A, 3 * PAGE));
    }

    /// Plenty of slots: growth never has to merge.
    const ROOMY: Room = Room { cap: 1000, window_slots: 8 };

    #[test]
    fn fill_grows_an_adjacent_piece_up_to_valid_end() {
        let (mut t, m) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m, 0, PAGE);
        assert!(t.needs_fill(A, 5 * PAGE));
        assert_eq!(t.fill(A, 5 * PAGE, &m, ROOMY).unwrap(), 0);
        assert_eq!(m.installed(), vec![(0, PAGE), (PAGE, 4 * PAGE)]);
        assert!(!t.needs_fill(A, 5 * PAGE));
        // A later cut in the middle removes the piece it crosses and maps its kept part; the
        // piece below the cut stays in place.
        t.cut(A, 2 * PAGE, &m).unwrap();
        assert_eq!(m.installed(), vec![(0, PAGE), (PAGE, PAGE)]);
    }

    /// The budget's promise to an honest guest: however files grow, every window slot without
    /// a piece can still get its first one, and the cap is never passed.
    fn assert_reserve(t: &Table, room: Room) {
        let free = room.window_slots.saturating_sub(t.with_pieces());
        assert!(t.installed() + free <= room.cap, "{} pieces + {free} free slots > cap {}", t.installed(), room.cap);
    }

    /// Live growth adds pieces while every slot keeps a first piece in reserve; past that the
    /// last piece merges with the growth, so small extensions never pass the cap, and I3 holds.
    #[test]
    fn growth_stays_within_the_slot_budget_and_leaves_free_slots_their_first_piece() {
        let (mut t, m) = (Table::default(), TestMapper::default());
        let room = Room { cap: 8, window_slots: 4 };
        mapped(&mut t, &m, 0, PAGE);
        mapped(&mut t, &m, 2, PAGE); // a second slot, also of A, file offset 4 MiB
        let mut merges = 0;
        for end in 2..200 {
            merges += t.fill(A, end * PAGE, &m, room).unwrap();
            assert_reserve(&t, room);
            // I3: the slot is installed without a gap up to the valid end.
            assert_eq!(t.pieces_of(A).iter().filter(|p| p.1 < MB2).map(|p| p.2).sum::<u64>(), end * PAGE);
        }
        // 2 free slots keep 2 of 8: 4 pieces fit for slot 0, then each growth merges.
        assert!(merges > 150, "{merges} merges");
        assert_eq!(t.pieces_of(A).iter().filter(|p| p.1 >= MB2).count(), 1, "the other slot is untouched");
        // The two free slots still get their first pieces.
        mapped(&mut t, &m, 1, PAGE);
        mapped(&mut t, &m, 3, PAGE);
        assert!(m.installed().len() <= room.cap);
    }

    #[test]
    fn a_first_piece_past_the_cap_is_refused_and_the_table_stays_true() {
        let (mut t, m) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m, 0, PAGE);
        assert_eq!(t.revoke(A, &m).unwrap(), 1);
        t.unrevoke(A);
        let full = Room { cap: 0, window_slots: 1 };
        assert!(matches!(t.fill(A, PAGE, &m, full), Err(DaxError::NoSlots)));
        assert!(m.installed().is_empty() && t.needs_fill(A, PAGE));
        t.fill(A, PAGE, &m, Room { cap: 1, window_slots: 1 }).unwrap();
        assert_eq!(m.installed(), vec![(0, PAGE)]);
    }

    #[test]
    fn revoke_unmaps_all_and_fill_skips_until_unrevoked() {
        let (mut t, m) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m, 0, MB2);
        mapped(&mut t, &m, 3, PAGE);
        assert_eq!(t.revoke(A, &m).unwrap(), 2);
        assert!(m.installed().is_empty());
        t.fill(A, 4 * MB2, &m, ROOMY).unwrap();
        assert!(m.installed().is_empty(), "revoked mappings are not re-grown");
        t.unrevoke(A);
        t.fill(A, 3 * MB2 + 2 * PAGE, &m, ROOMY).unwrap();
        assert_eq!(m.installed(), vec![(0, MB2), (3 * MB2, 2 * PAGE)]);
    }

    #[test]
    fn growth_never_passes_the_cap_with_more_mappings_than_window_slots() {
        // Found by the `dax` fuzz target: page-sized mappings, more of them than the window
        // has 2 MiB slots, so the per-slot reserve alone did not bound the pieces.
        let (mut t, m) = (Table::default(), TestMapper::default());
        for i in 0..5 {
            let range = WinRange { start: WinOffset(i * 8 * PAGE), len: 8 * PAGE };
            let f = file();
            m.map(WinRange { start: range.start, len: PAGE }, f.as_fd(), FileOffset(0), true).unwrap();
            let pieces = vec![Piece { start: range.start, len: PAGE }];
            t.insert(Mapping {
                inode: A,
                file: f,
                range,
                foffset: FileOffset(0),
                writable: true,
                pieces,
                revoked: false,
            });
        }
        let room = Room { cap: 7, window_slots: 2 };
        for end in 2..8 {
            t.fill(A, end * PAGE, &m, room).unwrap();
            assert!(m.installed().len() <= room.cap, "{} pieces", m.installed().len());
            assert_eq!(t.pieces_of(A).iter().map(|p| p.2).sum::<u64>(), 5 * end * PAGE, "a hole at page {end}");
        }
    }

    #[test]
    fn frontend_failure_keeps_the_table_true() {
        let (mut t, m0) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m0, 0, MB2);
        // Fail the unmap: the piece stays recorded as installed (I1: the table is the truth).
        let m = TestMapper { fail_at: Some(1), ..TestMapper::default() };
        m.pieces.lock().unwrap().extend(m0.installed());
        assert!(t.cut(A, PAGE, &m).is_err());
        assert_eq!(t.pieces_of(A), vec![(0, 0, MB2)]);
        assert!(t.remove_overlapping(WinOffset(0), MB2, &m).is_ok());
        assert!(t.pieces_of(A).is_empty() && m.installed().is_empty());
    }

    #[test]
    fn clear_with_a_refused_unmap_keeps_that_mapping() {
        // Found by the `dax` fuzz target: clear forgot a piece the frontend still held, and the
        // next SETUPMAPPING mapped over it.
        let (mut t, m0) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m0, 0, MB2);
        mapped(&mut t, &m0, 1, PAGE);
        let m = TestMapper { fail_at: Some(1), ..TestMapper::default() };
        m.pieces.lock().unwrap().extend(m0.installed());
        assert_eq!(t.clear(Some(&m)), 2);
        assert_eq!(t.pieces_of(A), vec![(0, 0, MB2)]);
        assert_eq!(m.installed(), vec![(0, MB2)]);
        // The kept piece is unmapped by the next removal over it, after which the range is free.
        assert_eq!(t.remove_overlapping(WinOffset(0), PAGE, &m).unwrap(), vec![A]);
        assert!(t.is_empty() && m.installed().is_empty());
    }

    #[test]
    fn remove_overlapping_is_idempotent_and_clear_unmaps_all() {
        let (mut t, m) = (Table::default(), TestMapper::default());
        mapped(&mut t, &m, 0, MB2);
        mapped(&mut t, &m, 1, MB2);
        assert_eq!(t.remove_overlapping(WinOffset(0), MB2, &m).unwrap(), vec![A]);
        assert!(t.remove_overlapping(WinOffset(0), MB2, &m).unwrap().is_empty());
        assert_eq!(t.clear(Some(&m)), 1);
        assert!(m.installed().is_empty() && !t.has_inode(A));
    }
}
