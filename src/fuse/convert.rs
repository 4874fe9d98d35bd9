//! Conversions from the filesystem's types to wire structs.

use std::time::Duration;

use super::abi;
use crate::fs::{Attr, Entry, OpenOptions};

/// Linux `new_encode_dev`, which the guest decodes with `new_decode_dev`.
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn secs(t: (i64, u32)) -> u64 {
    u64::from_ne_bytes(t.0.to_ne_bytes())
}

impl From<Attr> for abi::Attr {
    fn from(a: Attr) -> Self {
        abi::Attr {
            ino: a.ino,
            size: a.size,
            blocks: a.blocks,
            atime: secs(a.atime),
            mtime: secs(a.mtime),
            ctime: secs(a.ctime),
            atimensec: a.atime.1,
            mtimensec: a.mtime.1,
            ctimensec: a.ctime.1,
            mode: a.mode,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: encode_dev(a.rdev),
            blksize: a.blksize,
            flags: a.flags,
        }
    }
}

fn sx_time(t: (i64, u32)) -> abi::SxTime {
    abi::SxTime { tv_sec: t.0, tv_nsec: t.1, reserved: 0 }
}

impl From<Attr> for abi::Statx {
    fn from(a: Attr) -> Self {
        abi::Statx {
            mask: a.mask & !libc::STATX_MNT_ID,
            blksize: a.blksize,
            attributes: a.attributes.0,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            mode: u16::try_from(a.mode & 0xffff).unwrap_or(0),
            ino: a.ino,
            size: a.size,
            blocks: a.blocks,
            attributes_mask: a.attributes.1,
            atime: sx_time(a.atime),
            btime: sx_time(a.btime),
            ctime: sx_time(a.ctime),
            mtime: sx_time(a.mtime),
            rdev_major: libc::major(a.rdev),
            rdev_minor: libc::minor(a.rdev),
            dev_major: libc::major(a.dev),
            dev_minor: libc::minor(a.dev),
            ..Default::default()
        }
    }
}

/// A timeout as (seconds, nanoseconds).
pub fn timeout(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

impl From<Entry> for abi::EntryOut {
    fn from(e: Entry) -> Self {
        let (ev, evn) = timeout(e.entry_timeout);
        let (av, avn) = timeout(e.attr_timeout);
        abi::EntryOut {
            nodeid: e.nodeid.0,
            generation: e.generation,
            entry_valid: ev,
            attr_valid: av,
            entry_valid_nsec: evn,
            attr_valid_nsec: avn,
            attr: e.attr.into(),
        }
    }
}

/// FOPEN_* flags for an open reply.
pub fn open_flags(o: OpenOptions) -> u32 {
    let mut f = 0;
    if o.direct_io {
        f |= abi::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= abi::FOPEN_KEEP_CACHE;
    }
    if o.cache_dir {
        f |= abi::FOPEN_CACHE_DIR;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_dev_matches_kernel_new_encode_dev() {
        // new_encode_dev(MKDEV(8, 1)) == 0x801; large minors move to bits 20+.
        assert_eq!(encode_dev(libc::makedev(8, 1)), 0x801);
        assert_eq!(encode_dev(libc::makedev(259, 0x1_0005)), 0x05 | (259 << 8) | (0x1_0000 << 12));
    }

    #[test]
    fn negative_times_keep_their_bits() {
        let a = Attr { mtime: (-1, 5), ..Attr::default() };
        let w = abi::Attr::from(a);
        assert_eq!((w.mtime, w.mtimensec), (u64::MAX, 5));
    }
}
