//! The inode table: guest node ids -> host inodes held as file handles or O_PATH fds,
//! deduplicated by (st_dev, st_ino, mount id), with FUSE lookup counts. Owns no policy.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::file_handles::{InodeRepr, PathFd};
use super::quota::{FdPermit, FdQuota};
use crate::fs::{NodeId, ROOT_ID};

/// What identifies a host inode across lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: u64,
}

/// A guest lock owner's locks on one inode.
#[derive(Debug)]
pub struct LockOwner {
    /// The open file description holding them (OFD locks).
    pub fd: Arc<OwnedFd>,
    /// The guest handles the owner locked through: releasing one drops the owner (a POSIX
    /// owner's locks go at any close; an OFD owner is its one open file).
    pub handles: Vec<crate::fs::HandleId>,
    /// The description's share of the guest's fd quota.
    pub _permit: FdPermit,
}

/// The one open file DAX uses for an inode, and its share of the guest's fd quota.
#[derive(Debug)]
pub struct DaxFile {
    pub fd: Arc<OwnedFd>,
    pub _permit: FdPermit,
}

/// One host inode the guest knows.
#[derive(Debug)]
pub struct Inode {
    /// The inode: a file handle, or an O_PATH|O_NOFOLLOW fd.
    pub repr: InodeRepr,
    /// Its identity.
    pub key: InodeKey,
    /// The S_IFMT bits: fixed for an inode's life.
    pub file_type: u32,
    /// Its node id.
    pub nodeid: NodeId,
    /// FUSE lookup count.
    refs: AtomicU64,
    /// Lock owners -> the open file description their OFD locks live on.
    pub lock_owners: Mutex<HashMap<u64, LockOwner>>,
    /// The one open file DAX uses for this inode (mappings, guest handles, lease).
    pub dax_file: Mutex<Option<DaxFile>>,
    /// Its share of the guest's quota of inodes held as fds, or as handles (None for the
    /// root, which is ours).
    _permit: Option<FdPermit>,
}

impl Inode {
    /// An O_PATH fd of the inode for one operation (opened from its handle, if it has one).
    pub fn path_fd(&self) -> io::Result<PathFd<'_>> {
        self.repr.path_fd()
    }

    /// Whether this inode may be opened for I/O (regular files and directories only).
    pub fn is_openable(&self) -> bool {
        self.file_type == libc::S_IFREG || self.file_type == libc::S_IFDIR
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }
}

#[derive(Default)]
struct Tables {
    by_id: HashMap<NodeId, Arc<Inode>>,
    by_key: HashMap<InodeKey, NodeId>,
}

/// All inodes of the session.
pub struct InodeTable {
    tables: RwLock<Tables>,
    next_id: AtomicU64,
}

fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

impl InodeTable {
    /// An empty table.
    pub fn new() -> InodeTable {
        InodeTable { tables: RwLock::new(Tables::default()), next_id: AtomicU64::new(ROOT_ID.0 + 1) }
    }

    /// The inode for `id`, or ENOENT (the guest sent a node id it does not hold).
    pub fn get(&self, id: NodeId) -> io::Result<Arc<Inode>> {
        let t = self.tables.read().map_err(|_| stale())?;
        t.by_id.get(&id).cloned().ok_or_else(stale)
    }

    /// The inode `key`, if the guest holds it (no lookup is added).
    pub fn find(&self, key: &InodeKey) -> Option<Arc<Inode>> {
        let t = self.tables.read().ok()?;
        t.by_key.get(key).and_then(|id| t.by_id.get(id)).cloned()
    }

    /// Installs the root (lookup count 2, never forgotten).
    pub fn set_root(&self, repr: InodeRepr, key: InodeKey) -> io::Result<()> {
        let mut t = self.tables.write().map_err(|_| stale())?;
        t.by_id.clear();
        t.by_key.clear();
        let root = Inode {
            repr,
            key,
            file_type: libc::S_IFDIR,
            nodeid: ROOT_ID,
            refs: AtomicU64::new(2),
            lock_owners: Mutex::default(),
            dax_file: Mutex::default(),
            _permit: None,
        };
        t.by_id.insert(ROOT_ID, Arc::new(root));
        t.by_key.insert(key, ROOT_ID);
        Ok(())
    }

    /// Adds one lookup of the inode `key` if the table has it; returns its node id.
    pub fn add_lookup(&self, key: &InodeKey) -> io::Result<Option<NodeId>> {
        let t = self.tables.read().map_err(|_| stale())?;
        let found = t.by_key.get(key).and_then(|id| t.by_id.get(id));
        Ok(found.map(|inode| {
            inode.refs.fetch_add(1, Ordering::Relaxed);
            inode.nodeid
        }))
    }

    /// Adds one lookup of the inode `key`, inserting it held as `repr` if new (another lookup
    /// may have inserted it meanwhile: `repr` is then dropped). Returns its node id.
    /// A new inode takes a permit of `quota` (EMFILE past it, and `repr` is dropped).
    pub fn lookup_or_insert(
        &self,
        key: InodeKey,
        file_type: u32,
        repr: InodeRepr,
        quota: &FdQuota,
    ) -> io::Result<NodeId> {
        let mut t = self.tables.write().map_err(|_| stale())?;
        if let Some(id) = t.by_key.get(&key).copied()
            && let Some(inode) = t.by_id.get(&id)
        {
            inode.refs.fetch_add(1, Ordering::Relaxed);
            return Ok(id);
        }
        let permit = quota.acquire()?;
        let nodeid = NodeId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let inode = Inode {
            repr,
            key,
            file_type,
            nodeid,
            refs: AtomicU64::new(1),
            lock_owners: Mutex::default(),
            dax_file: Mutex::default(),
            _permit: Some(permit),
        };
        t.by_id.insert(nodeid, Arc::new(inode));
        t.by_key.insert(key, nodeid);
        Ok(nodeid)
    }

    /// Drops `n` lookups; forgets the inode at zero. The root is never forgotten.
    pub fn forget(&self, id: NodeId, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let Ok(mut t) = self.tables.write() else { return };
        let Some(inode) = t.by_id.get(&id) else { return };
        let old = inode.refs.load(Ordering::Relaxed);
        let new = old.saturating_sub(n);
        inode.refs.store(new, Ordering::Relaxed);
        if new == 0 {
            let key = inode.key;
            t.by_id.remove(&id);
            if t.by_key.get(&key) == Some(&id) {
                t.by_key.remove(&key);
            }
        }
    }

    /// Drops everything but keeps the id counter running (ids are never reused in a process).
    pub fn clear(&self) {
        if let Ok(mut t) = self.tables.write() {
            t.by_id.clear();
            t.by_key.clear();
        }
    }
}
