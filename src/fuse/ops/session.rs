//! INIT and DESTROY: protocol version and feature negotiation.

use std::io;
use std::sync::atomic::Ordering;

use crate::fs::{DaxMode, Filesystem, Negotiated};
use crate::fuse::abi::*;
use crate::fuse::server::{MAX_WRITE, OpResult, Request, Server, ok, ok_empty};
use crate::log_limit::info_limited;

/// Flags we accept whenever the guest offers them. Not FUSE_ATOMIC_O_TRUNC: with it the guest
/// sends OPEN(O_TRUNC) without waiting for its in-flight writeback WRITEs, and the worker pool
/// may run the OPEN first, so an older WRITE re-extends the file (12 of 100 rounds in a VM).
/// Without it the guest truncates with SETATTR after its writeback settled.
const ALWAYS: u64 = FUSE_ASYNC_READ
    | FUSE_PARALLEL_DIROPS
    | FUSE_BIG_WRITES
    | FUSE_AUTO_INVAL_DATA
    | FUSE_ASYNC_DIO
    | FUSE_HAS_IOCTL_DIR
    | FUSE_MAX_PAGES
    | FUSE_INIT_EXT
    | FUSE_SETXATTR_EXT
    | FUSE_CREATE_SUPP_GROUP;

fn eproto() -> io::Error {
    io::Error::from_raw_os_error(libc::EPROTO)
}

impl<F: Filesystem> Server<F> {
    fn wanted_flags(&self) -> u64 {
        let c = self.fs.capabilities();
        let mut f = ALWAYS;
        let pick = |on: bool, bits: u64| if on { bits } else { 0 };
        f |= pick(c.readdirplus, FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO);
        f |= pick(c.writeback, FUSE_WRITEBACK_CACHE);
        f |= pick(c.killpriv_v2, FUSE_HANDLE_KILLPRIV_V2);
        f |= pick(c.posix_acl, FUSE_POSIX_ACL | FUSE_DONT_MASK);
        f |= pick(c.submounts, FUSE_SUBMOUNTS);
        f |= pick(c.posix_locks, FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS);
        f |= pick(c.allow_mmap_direct, FUSE_DIRECT_IO_ALLOW_MMAP);
        f
    }

    pub(crate) fn init(&self, req: &mut Request<'_>) -> OpResult {
        let compat: InitInCompat = req.body.obj()?;
        // 64-byte init_in since 7.36; flags2 is its fifth word.
        let flags2 = if compat.flags as u64 & FUSE_INIT_EXT != 0 { req.body.obj::<u32>().unwrap_or(0) } else { 0 };
        if compat.major < FUSE_KERNEL_VERSION {
            return Err(eproto().into());
        }
        let mut out = InitOut { major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, ..InitOut::default() };
        if compat.major > FUSE_KERNEL_VERSION {
            // The guest retries INIT with our major.
            return ok(&out);
        }
        if compat.minor < FUSE_MIN_MINOR_VERSION {
            return Err(eproto().into());
        }
        let offered = u64::from(compat.flags) | (u64::from(flags2) << 32);
        let caps = self.fs.capabilities();
        let mut wanted = self.wanted_flags();
        // DAX only with a window on this connection (guest-dax.md §1.3): MAP_ALIGNMENT makes the
        // guest use it; HAS_INODE_DAX (offered for dax=inode) enables FUSE_ATTR_DAX.
        if caps.dax_alignment.is_some() {
            wanted |= FUSE_MAP_ALIGNMENT | FUSE_HAS_INODE_DAX;
            if offered & FUSE_MAP_ALIGNMENT != 0 {
                // Forwarding locks needs an open per lock owner, which would break the lease
                // that protects a mapped file (I5); leased files have no other user, so the
                // guest's own locking is exact.
                wanted &= !(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS);
            }
        }
        let enabled = offered & wanted;
        out.minor = compat.minor.min(FUSE_KERNEL_MINOR_VERSION);
        out.max_readahead = compat.max_readahead;
        out.flags = u32::try_from(enabled & 0xffff_ffff).unwrap_or(0);
        out.flags2 = u32::try_from(enabled >> 32).unwrap_or(0);
        out.max_background = u16::MAX;
        out.congestion_threshold = u16::MAX / 4 * 3;
        out.max_write = MAX_WRITE;
        out.time_gran = 1;
        out.max_pages = u16::try_from(MAX_WRITE as usize / crate::fs::sys::page_size()).unwrap_or(256);
        let dax = match (enabled & FUSE_MAP_ALIGNMENT != 0, enabled & FUSE_HAS_INODE_DAX != 0) {
            (false, _) => DaxMode::Off,
            (true, false) => DaxMode::Always,
            (true, true) => DaxMode::Inode,
        };
        if dax != DaxMode::Off {
            out.map_alignment = caps.dax_alignment.unwrap_or(12);
        }
        let negotiated = Negotiated {
            writeback: enabled & FUSE_WRITEBACK_CACHE != 0,
            killpriv_v2: enabled & FUSE_HANDLE_KILLPRIV_V2 != 0,
            posix_acl: enabled & FUSE_POSIX_ACL != 0,
            supp_groups: enabled & FUSE_CREATE_SUPP_GROUP != 0,
            dax,
        };
        self.fs.init(negotiated)?;
        self.session.flags.store(enabled, Ordering::Relaxed);
        self.session.initialized.store(true, Ordering::Release);
        info_limited!(
            "FUSE INIT: guest {}.{}, flags {enabled:#x}, max_write {}, dax {dax:?}, map_alignment {}",
            compat.major,
            compat.minor,
            out.max_write,
            out.map_alignment
        );
        ok(&out)
    }

    pub(crate) fn destroy(&self) -> OpResult {
        info_limited!("FUSE DESTROY");
        self.reset();
        ok_empty()
    }
}
