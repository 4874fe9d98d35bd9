//! SETUPMAPPING: a file range mapped into the window (protected first: I5; allocated for
//! writing: I6; installed up to the page holding EOF, padding the file for QEMU: I2), or a
//! small read-only file served as a copy.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use log::debug;

use super::window::{Mapping, Piece};
use super::{DaxError, Inner, InodeId, LeasePolicy, Mapper, Setup, WinRange, copy, probe, round_up, sys};
use crate::log_limit::{error_limited, warn_limited};

/// One SETUPMAPPING in progress: the epoch it began in, and the inodes whose mappings it
/// replaced (their leases are released after).
struct SetupRun {
    epoch: u64,
    displaced: Vec<InodeId>,
}

/// How long a SETUPMAPPING waits for a host truncate that holds its range back.
const HELD_BACK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Allocates `[start, start + len)` of `file` (I6), keeping the mtime: allocation is no
/// modification.
fn allocate(file: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), DaxError> {
    let mtime = sys::mtime(file).map_err(DaxError::Host)?;
    sys::fallocate_keep_size(file, start, len).map_err(DaxError::Host)?;
    sys::set_mtime(file, mtime).map_err(DaxError::Host)
}

impl Inner {
    /// Runs `f(valid_end)` with the file extended to the page boundary past its EOF, so the
    /// frontend accepts a map of the page holding EOF (QEMU 11.1 refuses maps past the file's
    /// size), then cuts it back and restores its mtime. `valid_end` is that page boundary.
    /// Callers hold the inode's semaphore exclusively (WRITE and GETATTR take it shared, so
    /// neither sees the padded size) and a lease keeps other openers out.
    pub(super) fn padded<T>(
        &self,
        file: BorrowedFd<'_>,
        f: impl FnOnce(u64) -> Result<T, DaxError>,
    ) -> Result<T, DaxError> {
        let eof = sys::file_size(file).map_err(DaxError::Host)?;
        let end = round_up(eof, self.align);
        if end == eof {
            return f(end);
        }
        let mtime = sys::mtime(file).map_err(DaxError::Host)?;
        sys::ftruncate(file, end).map_err(DaxError::Host)?;
        let r = f(end);
        if let Err(e) = sys::ftruncate(file, eof) {
            error_limited!("cannot restore the size {eof} after mapping the EOF page: {e}");
        } else if let Err(e) = sys::set_mtime(file, mtime) {
            // Only the owner (or CAP_FOWNER) may set a time: a daemon that can write but does
            // not own the file (rootless, --dax-unprotected) leaves the truncate's mtime.
            warn_limited!("mapping the EOF page changed the file's mtime (cannot set it back: {e})");
        }
        r
    }

    pub(super) fn setup(&self, inode: InodeId, file: &Arc<OwnedFd>, s: Setup) -> Result<(), DaxError> {
        let mut run = SetupRun { epoch: self.epoch.load(Ordering::Acquire), displaced: Vec::new() };
        // A host truncate under way holds the range back: wait for it to be over (it usually
        // is within milliseconds), then answer EIO rather than map less than asked.
        let deadline = std::time::Instant::now() + HELD_BACK_WAIT;
        let r = loop {
            match self.setup_locked(inode, file, s, &mut run) {
                Err(DaxError::HeldBack) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(DaxError::HeldBack) => {
                    warn_limited!(
                        "SETUPMAPPING of inode {}: a host truncate has held it back for {HELD_BACK_WAIT:?}: EIO",
                        inode.0
                    );
                    break Err(DaxError::HeldBack);
                }
                r => break r,
            }
        };
        let mut displaced = run.displaced;
        if r.is_err() {
            // A lease taken for a mapping that did not happen would only break for nothing.
            self.release_lease_if_unmapped(inode);
        }
        // So would the lease of a file whose last mapping this one replaced.
        displaced.sort();
        displaced.dedup();
        displaced.into_iter().for_each(|i| self.release_lease_if_unmapped(i));
        r
    }

    /// The body of `setup`; the inodes whose mappings it replaced go to `displaced`.
    fn setup_locked(&self, inode: InodeId, file: &Arc<OwnedFd>, s: Setup, run: &mut SetupRun) -> Result<(), DaxError> {
        let st = self.inode(inode);
        // Exclusive: the EOF page may need the padded map below; the guest serializes its own
        // SETUPMAPPINGs per inode anyway.
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mapper = self.mapper()?;
        self.confirm_acks(&*mapper)?;
        if self.probe.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let _t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            probe::run(&*mapper, self.window_len);
        }
        if self.is_copyable(&s, file.as_fd()) && self.setup_copy(inode, file, s, &*mapper, run)? {
            return Ok(());
        }
        self.protect(inode, file)?;
        let eof = sys::file_size(file.as_fd()).map_err(DaxError::Host)?;
        let start = s.foffset.0;
        // I1: map writable from the start whenever the file allows, so the guest's read->write
        // upgrade (same offsets) needs no unmap+map.
        let writable = s.writable || sys::is_writable(file.as_fd()).unwrap_or(false);
        // I6: a write fault into a hole would SIGBUS the VM on ENOSPC; fail here instead. A
        // read request leaves the file alone (no blocks, no ctime): the guest asks again, with
        // the write flag, before it writes through the mapping, and that request allocates. But
        // on tmpfs even a read fault of a hole needs a page, and SIGBUSes when the filesystem is
        // full: there read requests allocate too (and fail with ENOSPC, no read-only fallback).
        let must_allocate = s.writable || sys::holes_take_space_to_read(file.as_fd());
        if writable && must_allocate && start < eof {
            allocate(file.as_fd(), start, s.range.len.min(eof - start))?;
        }
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.check_epoch(run.epoch)?;
        if t.has_same(inode, s.range, s.foffset, s.writable, round_up(eof, self.align)) {
            return Ok(());
        }
        let end = s.range.start.0 + s.range.len;
        // A copy slot there (a write over a copy, or another file) goes back to the file.
        run.displaced.extend(t.copies.unback_overlapping(s.range.start.0, end, &self.backing, &*mapper)?);
        run.displaced.extend(t.remove_overlapping(s.range.start, end, &*mapper)?);
        let mut full = t.installed() >= self.room(&t).cap;
        if full && t.copies.unback_idle(&*mapper)? {
            full = t.installed() >= self.room(&t).cap;
        }
        // Install up to the page holding EOF (valid); never a page wholly past EOF.
        let pieces = self.padded(file.as_fd(), |valid_end| {
            let clamped = self.clamp(inode, valid_end);
            let installed = clamped.saturating_sub(start).min(s.range.len);
            if installed < valid_end.saturating_sub(start).min(s.range.len) {
                return Err(DaxError::HeldBack);
            }
            if installed == 0 {
                return Ok(Vec::new());
            }
            if full {
                self.slots.note_refusal();
                warn_limited!("SETUPMAPPING refused (ENOSPC): every memory slot of the frontend is taken");
                return Err(DaxError::NoSlots);
            }
            let range = WinRange { start: s.range.start, len: installed };
            mapper.map(range, file.as_fd(), s.foffset, writable)?;
            Ok(vec![Piece { start: s.range.start, len: installed }])
        })?;
        let file = Arc::clone(file);
        t.insert(Mapping { inode, file, range: s.range, foffset: s.foffset, writable, pieces, revoked: false });
        Ok(())
    }

    /// I5 for a file about to be mapped: the host guard's mark, or else a lease (re-installing
    /// what a lease break revoked once the lease is back), or per policy nothing.
    fn protect(&self, inode: InodeId, file: &Arc<OwnedFd>) -> Result<(), DaxError> {
        let guarded = self.host_guard.get().is_some_and(|g| match g.watch(inode, file) {
            Ok(()) => true,
            Err(e) => {
                debug!("inode {}: no host guard mark ({e}); a lease instead", inode.0);
                false
            }
        });
        if guarded {
            return Ok(());
        }
        match self.leases.ensure(inode, file) {
            Ok(false) => Ok(()),
            Ok(true) => {
                // The file is stable again after a lease break: re-install to EOF first.
                self.unrevoke(inode);
                self.reinstall(inode, file.as_fd())
            }
            Err(e) if self.policy == LeasePolicy::Require => Err(DaxError::Unprotected(e)),
            Err(e) => {
                debug!("mapping inode {} without a lease: {e}", inode.0);
                Ok(())
            }
        }
    }

    /// NoWindow if the frontend dropped its mappings since `epoch` (call under the table lock).
    fn check_epoch(&self, epoch: u64) -> Result<(), DaxError> {
        if self.epoch.load(Ordering::Acquire) == epoch {
            return Ok(());
        }
        debug!("SETUPMAPPING began before a reset or disconnect; not mapped");
        Err(DaxError::NoWindow)
    }

    /// Whether `s` is served as a copy: read-only, within one slot, of a file no larger than
    /// `copy_max`.
    fn is_copyable(&self, s: &Setup, file: BorrowedFd<'_>) -> bool {
        let max = self.copy_max.load(Ordering::Relaxed);
        !s.writable && max > 0 && copy::slot_of(s.range).is_some() && sys::file_size(file).is_ok_and(|eof| eof <= max)
    }

    /// SETUPMAPPING as a copy: the slot is backed (one round trip the first time), the file's
    /// bytes copied in. No lease: nothing the host does to the file can fault the copy.
    /// False when the slot holds a file mapping outside the range (no backing can go there):
    /// the caller maps the file instead.
    fn setup_copy(
        &self,
        inode: InodeId,
        file: &Arc<OwnedFd>,
        s: Setup,
        mapper: &dyn Mapper,
        run: &mut SetupRun,
    ) -> Result<bool, DaxError> {
        let Some(slot) = copy::slot_of(s.range) else { return Ok(false) };
        let backing = &self.backing;
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.check_epoch(run.epoch)?;
        let end = s.range.start.0 + s.range.len;
        if t.copies.has_same(inode, s.range, s.foffset) {
            return Ok(true);
        }
        // At most one copy per window slot on average (a Linux guest maps whole slots): each
        // keeps its file open, beyond the guest's fd quota. Past that, map the file.
        if t.copies.len() >= self.window_slots() {
            return Ok(false);
        }
        run.displaced.extend(t.remove_overlapping(s.range.start, end, mapper)?);
        run.displaced.extend(t.copies.remove_overlapping(s.range.start.0, end, backing));
        if t.overlaps(slot.start, slot.start.0 + slot.len) {
            return Ok(false);
        }
        if !t.copies.is_backed(slot) {
            if t.installed() >= self.room(&t).cap && !t.copies.unback_idle(mapper)? {
                self.slots.note_refusal();
                warn_limited!("SETUPMAPPING refused (ENOSPC): every memory slot of the frontend is taken");
                return Err(DaxError::NoSlots);
            }
            t.copies.back(slot, backing, mapper)?;
        }
        let stamp = copy::fill(file.as_fd(), s.foffset, s.range, backing).map_err(DaxError::Host)?;
        self.copies_made.fetch_add(1, Ordering::Relaxed);
        t.copies.insert(copy::SlotCopy { inode, file: Arc::clone(file), range: s.range, foffset: s.foffset, stamp });
        Ok(true)
    }
}
