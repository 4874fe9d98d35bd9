//! Inodes kept as file handles (`--inode-file-handles`): how each inode is held (a handle or an
//! O_PATH fd), one open fd per host mount to open handles on, and which mounts cannot use them.
//! Handles are made here from the daemon's own fds only; none ever comes from the guest.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use log::{error, warn};

use super::inodes::InodeKey;
use crate::fs::cred;
use crate::fs::sys::{self, FileHandle};

/// Whether inodes are held as file handles (virtiofsd's `--inode-file-handles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FileHandles {
    /// Always O_PATH fds.
    Never,
    /// Handles where the filesystem and the capability allow; O_PATH fds elsewhere.
    #[default]
    Prefer,
    /// Handles only: the start fails without them, and so does a lookup on a mount without.
    Mandatory,
}

/// An fd opened (not O_PATH: open_by_handle_at refuses those) on one host mount.
#[derive(Debug)]
pub struct MountFd {
    fd: OwnedFd,
}

/// How an inode is held.
#[derive(Debug)]
pub enum InodeRepr {
    /// An O_PATH|O_NOFOLLOW fd, which pins one host fd for the inode's life.
    Fd(OwnedFd),
    /// A file handle and the mount to open it on: no fd between operations.
    Handle { handle: FileHandle, mount: Arc<MountFd> },
}

/// An fd for one operation on an inode: its own O_PATH fd, or one opened from its handle and
/// closed when this drops.
pub enum PathFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for PathFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            PathFd::Borrowed(fd) => *fd,
            PathFd::Owned(fd) => fd.as_fd(),
        }
    }
}

impl InodeRepr {
    /// Whether this is a handle (it holds no fd).
    pub fn is_handle(&self) -> bool {
        matches!(self, InodeRepr::Handle { .. })
    }

    /// An O_PATH fd of the inode for one operation.
    pub fn path_fd(&self) -> io::Result<PathFd<'_>> {
        match self {
            InodeRepr::Fd(fd) => Ok(PathFd::Borrowed(fd.as_fd())),
            InodeRepr::Handle { handle, mount } => {
                open_as_daemon(mount, handle, libc::O_PATH | libc::O_NOFOLLOW).map(PathFd::Owned)
            }
        }
    }

    /// Opens a handle's inode with `flags` directly (None for an fd-backed inode). The caller
    /// has checked the inode is a regular file or a directory: this opens whatever it names.
    pub fn open_handle(&self, flags: i32) -> Option<io::Result<OwnedFd>> {
        match self {
            InodeRepr::Fd(_) => None,
            InodeRepr::Handle { handle, mount } => Some(open_as_daemon(mount, handle, flags)),
        }
    }
}

/// open_by_handle_at with the daemon's own credentials. Every handle is opened before a
/// request takes on its caller's (ScopedCreds): setfsuid to the caller drops
/// CAP_DAC_READ_SEARCH from the effective set, and the kernel then refuses the open with EPERM,
/// which the guest would get for an operation that may already have been done. What must be
/// checked as the caller is done on the fd opened here (through /proc/self/fd for an open).
fn open_as_daemon(mount: &MountFd, handle: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
    // A daemon bug if it fires; in a release build the kernel's EPERM is the answer.
    debug_assert!(!cred::is_switched(), "open_by_handle_at under a caller's credentials");
    sys::open_by_handle(mount.fd.as_fd(), handle, flags)
}

enum MountState {
    /// Handles work here; the fd lives while some inode on the mount holds it.
    Usable(Weak<MountFd>),
    /// The filesystem cannot make or open handles (logged once).
    Unsupported,
}

/// The mount fds, by mount id, and the policy.
pub struct MountFds {
    mode: FileHandles,
    /// Off for good: open_by_handle_at needs a capability the daemon lacks (prefer only).
    disabled: AtomicBool,
    mounts: Mutex<HashMap<u64, MountState>>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl MountFds {
    /// No mounts seen yet.
    pub fn new(mode: FileHandles) -> MountFds {
        MountFds { mode, disabled: AtomicBool::new(false), mounts: Mutex::new(HashMap::new()) }
    }

    /// Whether handles may still be used anywhere.
    pub fn is_enabled(&self) -> bool {
        self.mode != FileHandles::Never && !self.disabled.load(Ordering::Relaxed)
    }

    /// How to hold the inode `key` (of type `file_type`) behind the O_PATH fd `fd`: as a
    /// handle where possible, else as `fd` itself (prefer) or not at all (mandatory, with the
    /// reason). `reopen` opens an O_PATH fd for real, to become a new mount's fd.
    pub fn hold<F>(&self, fd: OwnedFd, key: &InodeKey, file_type: u32, reopen: F) -> io::Result<InodeRepr>
    where
        F: FnOnce(BorrowedFd<'_>, i32) -> io::Result<OwnedFd>,
    {
        if !self.is_enabled() {
            return Ok(InodeRepr::Fd(fd));
        }
        match self.try_handle(fd.as_fd(), key, file_type, reopen) {
            Ok(repr) => Ok(repr),
            Err(_) if self.mode == FileHandles::Prefer => Ok(InodeRepr::Fd(fd)),
            Err(e) => Err(e),
        }
    }

    fn try_handle<F>(&self, fd: BorrowedFd<'_>, key: &InodeKey, file_type: u32, reopen: F) -> io::Result<InodeRepr>
    where
        F: FnOnce(BorrowedFd<'_>, i32) -> io::Result<OwnedFd>,
    {
        if let Some(mount) = self.known_mount(key.mnt_id)? {
            return Ok(InodeRepr::Handle { handle: self.handle_of(fd, key)?, mount });
        }
        let handle = self.handle_of(fd, key)?;
        // A new mount (or one whose inodes were all forgotten): made under the lock, once.
        let mut mounts = self.mounts.lock().map_err(|_| errno(libc::EIO))?;
        match mounts.get(&key.mnt_id) {
            Some(MountState::Unsupported) => return Err(errno(libc::EOPNOTSUPP)),
            Some(MountState::Usable(w)) => {
                if let Some(mount) = w.upgrade() {
                    return Ok(InodeRepr::Handle { handle, mount });
                }
            }
            None => {}
        }
        // Its fd is this inode opened for real (only a directory or a regular file: opening
        // anything else has effects), checked to open the handle back to this inode.
        let flags = match file_type {
            libc::S_IFDIR => libc::O_RDONLY | libc::O_DIRECTORY,
            libc::S_IFREG => libc::O_RDONLY | libc::O_NONBLOCK,
            _ => return Err(errno(libc::EOPNOTSUPP)),
        };
        let mount = Arc::new(MountFd { fd: reopen(fd, flags)? });
        match verify(&mount, &handle, key) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && self.mode == FileHandles::Prefer => {
                self.disabled.store(true, Ordering::Relaxed);
                warn!(
                    "file handles unavailable: open_by_handle_at needs CAP_DAC_READ_SEARCH in the initial user \
                     namespace ({e}); holding inodes as O_PATH fds (one host fd each)"
                );
                return Err(e);
            }
            Err(e) => {
                self.unsupported(&mut mounts, key.mnt_id, "open_by_handle_at", &e);
                return Err(e);
            }
        }
        mounts.insert(key.mnt_id, MountState::Usable(Arc::downgrade(&mount)));
        Ok(InodeRepr::Handle { handle, mount })
    }

    /// The live fd of mount `mnt_id`, if it has one; EOPNOTSUPP if it cannot use handles.
    fn known_mount(&self, mnt_id: u64) -> io::Result<Option<Arc<MountFd>>> {
        let mounts = self.mounts.lock().map_err(|_| errno(libc::EIO))?;
        match mounts.get(&mnt_id) {
            Some(MountState::Unsupported) => Err(errno(libc::EOPNOTSUPP)),
            Some(MountState::Usable(w)) => Ok(w.upgrade()),
            None => Ok(None),
        }
    }

    /// The handle of the inode `key` behind `fd`; a filesystem that cannot make one is marked.
    fn handle_of(&self, fd: BorrowedFd<'_>, key: &InodeKey) -> io::Result<FileHandle> {
        let (handle, mnt_id) = match sys::name_to_handle(fd) {
            Ok(h) => h,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EOVERFLOW)) => {
                if let Ok(mut mounts) = self.mounts.lock() {
                    self.unsupported(&mut mounts, key.mnt_id, "name_to_handle_at", &e);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if mnt_id != key.mnt_id {
            // Moved to another mount since the statx: hold this one as an fd.
            return Err(errno(libc::EXDEV));
        }
        Ok(handle)
    }

    fn unsupported(&self, mounts: &mut HashMap<u64, MountState>, mnt_id: u64, what: &str, e: &io::Error) {
        if matches!(mounts.insert(mnt_id, MountState::Unsupported), Some(MountState::Unsupported)) {
            return; // logged already
        }
        if self.mode == FileHandles::Mandatory {
            error!(
                "--inode-file-handles=mandatory: mount {mnt_id} cannot use file handles ({what}: {e}); lookups \
                 on it fail (use --inode-file-handles=prefer to hold its inodes as fds)"
            );
        } else {
            warn!("mount {mnt_id}: no file handles ({what}: {e}); its inodes are held as O_PATH fds");
        }
    }
}

/// Whether `handle` opens, on `mount`, the inode `key` names.
fn verify(mount: &MountFd, handle: &FileHandle, key: &InodeKey) -> io::Result<()> {
    let fd = open_as_daemon(mount, handle, libc::O_PATH | libc::O_NOFOLLOW)?;
    let (attr, mnt_id) = sys::statx(fd.as_fd())?;
    if (InodeKey { dev: attr.dev, ino: attr.ino, mnt_id }) != *key {
        return Err(errno(libc::ESTALE));
    }
    Ok(())
}
