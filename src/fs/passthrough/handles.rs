//! Open file and directory handles given to the guest, by handle id.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::inodes::Inode;
use super::quota::FdPermit;
use crate::fs::HandleId;

/// One open host file description.
pub struct Handle {
    /// The host fd, opened from the inode's file handle or through /proc/self/fd.
    pub fd: OwnedFd,
    /// The inode it was opened from.
    pub inode: Arc<Inode>,
    /// Serializes lseek+getdents on directory handles.
    pub dir_lock: Mutex<()>,
    /// What the guest opened it for, which the fd may exceed (a clone of a DAX inode's shared
    /// file is read-write whatever the guest asked).
    pub open: OpenMode,
    /// The fd's share of the guest's fd quota.
    _permit: FdPermit,
}

/// A guest open's access mode, and the per-write flags that carry out what its open asked and
/// the fd lacks (a clone of a DAX inode's shared file: see `Passthrough::dax_open`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    /// RWF_APPEND, RWF_SYNC, RWF_DSYNC for every write through the handle.
    pub rwf: libc::c_int,
}

impl OpenMode {
    /// The guest's open flags, for a fd that has them all itself (nothing to carry out).
    pub fn of(flags: i32) -> OpenMode {
        let acc = flags & libc::O_ACCMODE;
        OpenMode { read: acc != libc::O_WRONLY, write: acc != libc::O_RDONLY, rwf: 0 }
    }

    /// The guest's open flags, for a fd that has none of its own: O_APPEND and O_SYNC/O_DSYNC
    /// become per-write flags.
    pub fn emulated(flags: i32) -> OpenMode {
        let mut rwf = 0;
        if flags & libc::O_APPEND != 0 {
            rwf |= libc::RWF_APPEND;
        }
        if flags & libc::O_SYNC == libc::O_SYNC {
            rwf |= libc::RWF_SYNC;
        } else if flags & libc::O_DSYNC != 0 {
            rwf |= libc::RWF_DSYNC;
        }
        OpenMode { rwf, ..OpenMode::of(flags) }
    }
}

impl Handle {
    /// The open fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The handle, if the guest opened it for reading (EBADF otherwise, as a host fd says).
    pub fn for_read(self: Arc<Self>) -> io::Result<Arc<Self>> {
        if self.open.read { Ok(self) } else { Err(ebadf()) }
    }

    /// The handle, if the guest opened it for writing (EBADF otherwise).
    pub fn for_write(self: Arc<Self>) -> io::Result<Arc<Self>> {
        if self.open.write { Ok(self) } else { Err(ebadf()) }
    }
}

/// All handles of the session.
pub struct HandleTable {
    map: RwLock<HashMap<HandleId, Arc<Handle>>>,
    next: AtomicU64,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl HandleTable {
    /// An empty table.
    pub fn new() -> HandleTable {
        HandleTable { map: RwLock::new(HashMap::new()), next: AtomicU64::new(1) }
    }

    /// Registers an open fd (opened for `open`), which holds `permit` for as long as it stays open; returns its id.
    pub fn insert(&self, fd: OwnedFd, inode: Arc<Inode>, open: OpenMode, permit: FdPermit) -> io::Result<HandleId> {
        let id = HandleId(self.next.fetch_add(1, Ordering::Relaxed));
        let h = Handle { fd, inode, dir_lock: Mutex::new(()), open, _permit: permit };
        self.map.write().map_err(|_| ebadf())?.insert(id, Arc::new(h));
        Ok(id)
    }

    /// The handle `id`, which must belong to `node` (EBADF otherwise).
    pub fn get(&self, id: HandleId, node: crate::fs::NodeId) -> io::Result<Arc<Handle>> {
        let map = self.map.read().map_err(|_| ebadf())?;
        match map.get(&id) {
            Some(h) if h.inode.nodeid == node => Ok(Arc::clone(h)),
            _ => Err(ebadf()),
        }
    }

    /// Removes a handle (EBADF if unknown or not `node`'s).
    pub fn remove(&self, id: HandleId, node: crate::fs::NodeId) -> io::Result<Arc<Handle>> {
        let mut map = self.map.write().map_err(|_| ebadf())?;
        match map.get(&id) {
            Some(h) if h.inode.nodeid == node => map.remove(&id).ok_or_else(ebadf),
            _ => Err(ebadf()),
        }
    }

    /// Closes everything.
    pub fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }
}
