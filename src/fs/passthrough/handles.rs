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
    /// The fd's share of the guest's fd quota.
    _permit: FdPermit,
}

impl Handle {
    /// The open fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

    /// Registers an open fd, which holds `permit` for as long as it stays open; returns its id.
    pub fn insert(&self, fd: OwnedFd, inode: Arc<Inode>, permit: FdPermit) -> io::Result<HandleId> {
        let id = HandleId(self.next.fetch_add(1, Ordering::Relaxed));
        let h = Handle { fd, inode, dir_lock: Mutex::new(()), _permit: permit };
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
