//! I5 with the host guard (`crate::guard`): marks on the files with window pieces, and the
//! thread that prepares the window for a host shrink (unmaps the pages past the new EOF) and
//! re-installs them once the file has grown back.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};


use log::{debug, info, warn};

use super::{Inner, InodeId, sys};
use crate::guard;


#[derive(Default)]
struct State {
    /// Marked files by (dev, ino).
    marked: HashMap<(u64, u64), (InodeId, Arc<OwnedFd>)>,
    /// Inodes a host shrink cut: re-installed when the file grows.
    cut: HashSet<InodeId>,
}

/// The daemon's end of the guard.
pub(super) struct HostGuard {
    group: OwnedFd,
    state: Mutex<State>,
    stop: Arc<AtomicBool>,
}

impl HostGuard {
    pub(super) fn new(group: OwnedFd) -> HostGuard {
        HostGuard { group, state: Mutex::default(), stop: Arc::default() }
    }

    /// Starts the thread that reads the watcher's shrinks from `sock`.
    pub(super) fn start(&self, inner: Weak<Inner>, sock: UnixStream) -> io::Result<()> {
        let stop = Arc::clone(&self.stop);
        std::thread::Builder::new().name("daxfsd-guard".into()).spawn(move || run(&inner, sock, &stop))?;
        Ok(())
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Marks `file` (once per inode). An error leaves the file to leases.
    pub(super) fn watch(&self, inode: InodeId, file: &Arc<OwnedFd>) -> io::Result<()> {
        let key = sys::file_id(file.as_fd())?;
        let mut st = self.state.lock().map_err(|_| io::Error::other("guard state poisoned"))?;
        if st.marked.get(&key).is_some_and(|(i, _)| *i == inode) {
            return Ok(());
        }
        guard::fan::mark(self.group.as_fd(), file.as_fd(), true)?;
        st.marked.insert(key, (inode, Arc::clone(file)));
        Ok(())
    }

    /// Whether `inode` is marked.
    pub(super) fn is_watched(&self, inode: InodeId) -> bool {
        self.state.lock().is_ok_and(|st| st.marked.values().any(|(i, _)| *i == inode))
    }

    /// Removes `inode`'s mark (its last mapping went away).
    pub(super) fn unwatch(&self, inode: InodeId) {
        let Ok(mut st) = self.state.lock() else { return };
        st.cut.remove(&inode);
        let keys: Vec<(u64, u64)> = st.marked.iter().filter(|(_, (i, _))| *i == inode).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some((_, f)) = st.marked.remove(&k)
                && let Err(e) = guard::fan::mark(self.group.as_fd(), f.as_fd(), false)
            {
                debug!("cannot remove the mark of inode {}: {e}", inode.0);
            }
        }
    }

    fn lookup(&self, dev: u64, ino: u64) -> Option<(InodeId, Arc<OwnedFd>)> {
        self.state.lock().ok()?.marked.get(&(dev, ino)).map(|(i, f)| (*i, Arc::clone(f)))
    }

    fn note_cut(&self, inode: InodeId) {
        if let Ok(mut st) = self.state.lock() {
            st.cut.insert(inode);
        }
    }

    fn cut_inodes(&self) -> Vec<(InodeId, Arc<OwnedFd>)> {
        let Ok(st) = self.state.lock() else { return Vec::new() };
        st.marked.values().filter(|(i, _)| st.cut.contains(i)).map(|(i, f)| (*i, Arc::clone(f))).collect()
    }

}

fn run(inner: &Weak<Inner>, mut sock: UnixStream, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let next = guard::next_shrink(&mut sock);
        let Some(inner) = inner.upgrade() else { return };
        let Some(g) = inner.host_guard.get() else { return };
        match next {
            Ok(s) => {
                if let Some((inode, file)) = g.lookup(s.dev, s.ino) {
                    if inner.host_shrink(inode, &file, s.new_size) {
                        g.note_cut(inode);
                    }
                } else {
                    debug!("host shrink of an unmapped file (ino {})", s.ino);
                }
                if let Err(e) = guard::ready(&mut sock, s.key) {
                    warn!("cannot tell the supervisor the window is ready: {e}");
                    return;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => {
                info!("the host guard's channel closed: {e}");
                return;
            }
        }
        for (inode, file) in g.cut_inodes() {
            inner.host_regrow(inode, &file);
        }
    }
}
