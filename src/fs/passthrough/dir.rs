//! Directories: OPENDIR and listing entries with getdents64 from a guest-given offset.

use std::io;

use super::handles::{Handle, OpenMode};
use super::{CachePolicy, Passthrough, errno};
use crate::fs::{DirEntry, DirSink, HandleId, NodeId, OpenOptions, sys};

/// Bytes asked of getdents64 at a time.
const DIRENT_BUF: usize = 32 * 1024;
/// Size of linux_dirent64 before its name: d_ino u64, d_off i64, d_reclen u16, d_type u8.
const DIRENT64_HEADER: usize = 19;

impl Passthrough {
    pub(super) fn do_opendir(&self, node: NodeId) -> io::Result<(HandleId, OpenOptions)> {
        let inode = self.inode(node)?;
        if !inode.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let permit = self.quota.acquire()?;
        let fd = self.reopen(&inode, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let cached = matches!(self.cfg.cache, CachePolicy::Metadata | CachePolicy::Always);
        let opts = OpenOptions { keep_cache: cached, cache_dir: cached, direct_io: false };
        Ok((self.handles.insert(fd, inode, OpenMode::of(libc::O_RDONLY), permit)?, opts))
    }
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Feeds entries from `offset` on to `sink` until it is full or the directory ends.
pub fn read_entries(h: &Handle, offset: u64, sink: &mut dyn DirSink) -> io::Result<()> {
    // lseek + getdents must not interleave with another READDIR on the same handle.
    let _guard = h.dir_lock.lock().map_err(|_| errno(libc::EIO))?;
    sys::lseek(h.as_fd(), offset, libc::SEEK_SET)?;
    let mut buf = vec![0u8; DIRENT_BUF];
    loop {
        let n = sys::getdents64(h.as_fd(), &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut pos = 0usize;
        while pos + DIRENT64_HEADER <= n {
            let rec = buf.get(pos..n).ok_or_else(|| errno(libc::EIO))?;
            let ino = read_u64(rec, 0).ok_or_else(|| errno(libc::EIO))?;
            let off = read_u64(rec, 8).ok_or_else(|| errno(libc::EIO))?;
            let reclen = usize::from(u16::from_ne_bytes([*rec.get(16).unwrap_or(&0), *rec.get(17).unwrap_or(&0)]));
            let typ = u32::from(*rec.get(18).unwrap_or(&0));
            let raw_name = rec.get(DIRENT64_HEADER..reclen).ok_or_else(|| errno(libc::EIO))?;
            let name = raw_name.split(|b| *b == 0).next().unwrap_or_default();
            if reclen == 0 {
                return Err(errno(libc::EIO));
            }
            if !sink.add(&DirEntry { ino, offset: off, typ, name })? {
                return Ok(());
            }
            pos += reclen;
        }
    }
}
