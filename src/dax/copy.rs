//! Copy slots: read-only mappings of small files served as copies in window slots backed by
//! the daemon's own memory file, so mapping a small file costs a copy instead of a SHMEM_MAP
//! round trip (and its unmap), needs no lease, and no host truncate can ever make it SIGBUS.
//!
//! The backing is one memory file the size of the window; a slot, once backed, is one piece
//! mapping the same offset of it and stays installed after its copy goes (the next copy in it
//! costs no round trip). A copy holds the file's bytes from its file offset up to EOF at the
//! time it was made or last refreshed, and zeros after. A write request over a copy turns the
//! slot back into a file mapping (the caller unbacks it first).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{DaxError, FileOffset, InodeId, Mapper, WinOffset, WinRange, sys};

/// The window's slot size: the guest maps 2 MiB ranges (FUSE_DAX_SZ).
pub const SLOT: u64 = 2 << 20;

/// What a copy was made from, to tell whether the file changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// One read-only mapping served as a copy.
pub struct SlotCopy {
    pub inode: InodeId,
    pub file: Arc<OwnedFd>,
    pub range: WinRange,
    pub foffset: FileOffset,
    pub stamp: Stamp,
}

/// The copy slots of the window.
#[derive(Default)]
pub struct Copies {
    /// Window offsets of backed slots (each one installed piece of the backing).
    backed: BTreeSet<u64>,
    /// Copies by window start.
    copies: BTreeMap<u64, SlotCopy>,
}

/// The slot holding all of `range`, if one does.
pub fn slot_of(range: WinRange) -> Option<WinRange> {
    let start = range.start.0 - range.start.0 % SLOT;
    (range.start.0 + range.len <= start + SLOT).then_some(WinRange { start: WinOffset(start), len: SLOT })
}

fn overlaps(a_start: u64, a_len: u64, start: u64, end: u64) -> bool {
    a_start < end && a_start + a_len > start
}

impl Copies {
    /// Installed pieces of the backing.
    pub fn backed(&self) -> usize {
        self.backed.len()
    }

    /// (window offset, len) of every backed slot.
    pub fn backed_slots(&self) -> Vec<(u64, u64)> {
        self.backed.iter().map(|&s| (s, SLOT)).collect()
    }

    /// Whether `slot` is backed.
    pub fn is_backed(&self, slot: WinRange) -> bool {
        self.backed.contains(&slot.start.0)
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.copies.len()
    }

    /// Installs the backing at `slot`, zeroed, read-only: the guest can neither change a copy
    /// nor leave bytes in the slot for a later copy to show past its file's EOF.
    pub fn back(&mut self, slot: WinRange, backing: &File, mapper: &dyn Mapper) -> Result<(), DaxError> {
        sys::punch(backing.as_fd(), slot.start.0, slot.len).map_err(DaxError::Host)?;
        mapper.map(slot, backing.as_fd(), FileOffset(slot.start.0), false)?;
        self.backed.insert(slot.start.0);
        Ok(())
    }

    /// Drops every copy overlapping [start, end), zeroing what it filled. Returns their inodes.
    pub fn remove_overlapping(&mut self, start: u64, end: u64, backing: &File) -> Vec<InodeId> {
        let keys: Vec<u64> = self
            .copies
            .values()
            .filter(|c| overlaps(c.range.start.0, c.range.len, start, end))
            .map(|c| c.range.start.0)
            .collect();
        let mut inodes = Vec::new();
        for k in keys {
            if let Some(c) = self.copies.remove(&k) {
                if let Err(e) = sys::punch(backing.as_fd(), c.range.start.0, c.range.len) {
                    // Only fills write the backing, and each starts by zeroing its range.
                    log::debug!("cannot zero the copy at {:#x}: {e}", c.range.start.0);
                }
                inodes.push(c.inode);
            }
        }
        inodes
    }

    /// Unmaps the backing of every slot overlapping [start, end) (so a file piece can go
    /// there), dropping the copies in those slots. Returns the inodes of the dropped copies.
    pub fn unback_overlapping(
        &mut self,
        start: u64,
        end: u64,
        backing: &File,
        mapper: &dyn Mapper,
    ) -> Result<Vec<InodeId>, DaxError> {
        let slots: Vec<u64> = self.backed.iter().copied().filter(|&s| overlaps(s, SLOT, start, end)).collect();
        let mut inodes = Vec::new();
        for s in slots {
            inodes.extend(self.remove_overlapping(s, s + SLOT, backing));
            mapper.unmap(WinRange { start: WinOffset(s), len: SLOT })?;
            self.backed.remove(&s);
        }
        Ok(inodes)
    }

    /// Unmaps the backing of one slot holding no copy, to make room for a file piece; false
    /// when every backed slot holds one.
    pub fn unback_idle(&mut self, mapper: &dyn Mapper) -> Result<bool, DaxError> {
        let idle = self
            .backed
            .iter()
            .copied()
            .find(|&s| !self.copies.values().any(|c| overlaps(c.range.start.0, c.range.len, s, s + SLOT)));
        let Some(s) = idle else { return Ok(false) };
        mapper.unmap(WinRange { start: WinOffset(s), len: SLOT })?;
        self.backed.remove(&s);
        Ok(true)
    }

    /// Records a copy (its slot is backed and its bytes are in place).
    pub fn insert(&mut self, c: SlotCopy) {
        self.copies.insert(c.range.start.0, c);
    }

    /// Whether some copy of `inode` was made before its file last changed (one fstat).
    pub fn stale(&self, inode: InodeId) -> bool {
        let Some(file) = self.file_of(inode) else { return false };
        let Ok(now) = stamp(file.as_fd()) else { return true };
        self.copies.values().any(|c| c.inode == inode && c.stamp != now)
    }

    /// Whether `inode` has copies.
    pub fn has_inode(&self, inode: InodeId) -> bool {
        self.copies.values().any(|c| c.inode == inode)
    }

    /// Whether exactly this copy is there.
    pub fn has_same(&self, inode: InodeId, range: WinRange, foffset: FileOffset) -> bool {
        self.copies.get(&range.start.0).is_some_and(|c| c.inode == inode && c.range == range && c.foffset == foffset)
    }

    /// Copies `inode`'s file again into each of its copies whose stamp is not `stamp` (all of
    /// them when None): after the daemon changed the file, or when the guest revalidates.
    pub fn refresh(&mut self, inode: InodeId, stamp: Option<Stamp>, backing: &File) -> io::Result<usize> {
        let mut n = 0;
        for c in self.copies.values_mut().filter(|c| c.inode == inode) {
            if stamp.is_some_and(|s| s == c.stamp) {
                continue;
            }
            // On an error `fill` left the range zeroed: the guest reads zeros, never stale bytes
            // past EOF, until the next refresh.
            c.stamp = fill(c.file.as_fd(), c.foffset, c.range, backing)?;
            n += 1;
        }
        Ok(n)
    }

    /// The file of one of `inode`'s copies.
    pub fn file_of(&self, inode: InodeId) -> Option<Arc<OwnedFd>> {
        self.copies.values().find(|c| c.inode == inode).map(|c| Arc::clone(&c.file))
    }

    /// Drops every copy; unmaps every backed slot when `mapper` is given (else the frontend
    /// dropped them). A slot whose unmap the frontend refuses stays backed (I1).
    pub fn clear(&mut self, mapper: Option<&dyn Mapper>, backing: &File) {
        self.remove_overlapping(0, u64::MAX, backing);
        match mapper {
            None => self.backed.clear(),
            Some(mapper) => self.backed.retain(|&s| mapper.unmap(WinRange { start: WinOffset(s), len: SLOT }).is_err()),
        }
    }
}

/// The file's stamp.
pub fn stamp(file: BorrowedFd<'_>) -> io::Result<Stamp> {
    let (size, mtime, ctime) = sys::size_and_times(file)?;
    Ok(Stamp { size, mtime, ctime })
}

/// Copies `file` from `foffset` into the backing at `range` up to EOF (at most the range),
/// zeros after. Returns the stamp the bytes were read under. On an error the
/// range is left zeroed (or as zeroed as the backing allows).
pub fn fill(file: BorrowedFd<'_>, foffset: FileOffset, range: WinRange, backing: &File) -> io::Result<Stamp> {
    let r = fill_once(file, foffset, range, backing);
    if r.is_err() {
        let _ = sys::punch(backing.as_fd(), range.start.0, range.len);
    }
    r
}

fn fill_once(file: BorrowedFd<'_>, foffset: FileOffset, range: WinRange, backing: &File) -> io::Result<Stamp> {
    let st = stamp(file)?;
    // `range` lies within one slot: at most 2 MiB.
    let want = st.size.saturating_sub(foffset.0).min(range.len);
    let mut buf = vec![0u8; usize::try_from(want).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?];
    let got = sys::pread_full(file, &mut buf, foffset.0)?;
    // Data first, then zeros after it: a guest reading during a refresh sees old or new
    // bytes, never a moment of zeros where the file has data.
    backing.write_all_at(buf.get(..got).unwrap_or_default(), range.start.0)?;
    let got = got as u64;
    if got < range.len {
        sys::punch(backing.as_fd(), range.start.0 + got, range.len - got)?;
    }
    Ok(st)
}
