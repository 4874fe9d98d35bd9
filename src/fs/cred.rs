//! Per-thread credential switching: the caller's fsuid/fsgid and groups for the duration of one
//! host operation, so the host kernel applies ownership and permission rules as for the caller.
//! Restored on drop; failure to restore is logged (the thread keeps serving as the caller).

use std::cell::Cell;
use std::io;

use log::error;

use super::Context;
use super::sys;

thread_local! {
    /// Whether this thread serves as a caller now (a ScopedCreds with a saved identity lives).
    static SWITCHED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread has taken on a caller's credentials. Under them the host kernel has
/// dropped the filesystem capabilities from the thread's effective set (setfsuid to a non-zero
/// id clears CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, ...), so what needs one of
/// them for the daemon itself (open_by_handle_at) must run before the switch.
pub fn is_switched() -> bool {
    SWITCHED.with(Cell::get)
}

/// Holds a switched identity; dropping it restores the daemon's.
pub struct ScopedCreds {
    saved: Option<Saved>,
}

struct Saved {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// `is_switched` before this switch.
    was_switched: bool,
}

impl ScopedCreds {
    /// Takes on `ctx`'s fsuid, fsgid and supplementary groups. A no-op when the daemon is not
    /// root (it could not switch) or when the caller is root (nothing to enforce).
    pub fn switch(ctx: &Context) -> io::Result<ScopedCreds> {
        if sys::geteuid() != 0 || (ctx.uid == 0 && ctx.gid == 0) {
            return Ok(ScopedCreds { saved: None });
        }
        let groups = sys::getgroups()?;
        sys::setgroups_thread(&ctx.groups)?;
        // Group first: once the fsuid is not 0 the thread may lose CAP_SETGID's effect on fs ops.
        let gid = sys::setfsgid(ctx.gid);
        let uid = sys::setfsuid(ctx.uid);
        // setfsuid reports no errors; asking again (with an invalid id) returns the current one.
        if sys::setfsuid(u32::MAX) != ctx.uid || sys::setfsgid(u32::MAX) != ctx.gid {
            let restore = ScopedCreds { saved: Some(Saved { uid, gid, groups, was_switched: is_switched() }) };
            drop(restore);
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let was_switched = SWITCHED.with(|s| s.replace(true));
        Ok(ScopedCreds { saved: Some(Saved { uid, gid, groups, was_switched }) })
    }
}

impl Drop for ScopedCreds {
    fn drop(&mut self) {
        let Some(saved) = self.saved.take() else { return };
        sys::setfsuid(saved.uid);
        sys::setfsgid(saved.gid);
        if let Err(e) = sys::setgroups_thread(&saved.groups) {
            error!("cannot restore supplementary groups: {e}");
        }
        if sys::setfsuid(u32::MAX) == saved.uid {
            SWITCHED.with(|s| s.set(saved.was_switched));
        } else {
            error!("cannot restore fsuid {}", saved.uid);
        }
    }
}

/// Holds a thread umask for one create; restores the old one on drop.
pub struct ScopedUmask(u32);

impl ScopedUmask {
    /// Sets the thread's umask (workers unshare CLONE_FS, so this is per-thread).
    pub fn set(mask: u32) -> ScopedUmask {
        ScopedUmask(sys::umask(mask & 0o777))
    }
}

impl Drop for ScopedUmask {
    fn drop(&mut self) {
        sys::umask(self.0);
    }
}
