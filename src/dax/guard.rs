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

use super::{Inner, InodeId, lease, round_up, sys};
use crate::guard;
use crate::log_limit::{info_limited, warn_limited};

#[derive(Default)]
struct State {
    /// Marked files by (dev, ino).
    marked: HashMap<(u64, u64), (InodeId, Arc<OwnedFd>)>,
    /// Host shrinks allowed (or about to be) and not over yet, by the watcher's key: nothing
    /// of the inode may be installed past that size meanwhile.
    pending: HashMap<i32, (InodeId, u64)>,
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

    /// The smallest size a pending host shrink may leave `inode` with.
    pub(super) fn limit(&self, inode: InodeId) -> Option<u64> {
        let st = self.state.lock().ok()?;
        st.pending.values().filter(|(i, _)| *i == inode).map(|(_, l)| *l).min()
    }

    fn begin(&self, key: i32, inode: InodeId, new_size: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.pending.insert(key, (inode, new_size));
        }
    }

    fn end(&self, key: i32) {
        if let Ok(mut st) = self.state.lock()
            && let Some((inode, _)) = st.pending.remove(&key)
        {
            st.cut.insert(inode);
        }
    }

    fn lookup(&self, dev: u64, ino: u64) -> Option<(InodeId, Arc<OwnedFd>)> {
        self.state.lock().ok()?.marked.get(&(dev, ino)).map(|(i, f)| (*i, Arc::clone(f)))
    }

    /// Cut inodes no pending shrink holds back.
    fn cut_inodes(&self) -> Vec<(InodeId, Arc<OwnedFd>)> {
        let Ok(st) = self.state.lock() else { return Vec::new() };
        let held = |i: &InodeId| st.pending.values().any(|(p, _)| p == i);
        st.marked.values().filter(|(i, _)| st.cut.contains(i) && !held(i)).map(|(i, f)| (*i, Arc::clone(f))).collect()
    }
}

fn run(inner: &Weak<Inner>, mut sock: UnixStream, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let next = guard::next(&mut sock);
        let Some(inner) = inner.upgrade() else { return };
        let Some(g) = inner.host_guard.get() else { return };
        match next {
            Ok(guard::Msg::Shrink(s)) => {
                match g.lookup(s.dev, s.ino) {
                    Some((inode, file)) => {
                        g.begin(s.key, inode, s.new_size);
                        inner.host_shrink(inode, &file, s.new_size);
                    }
                    None => debug!("host shrink of an unmapped file (ino {})", s.ino),
                }
                if let Err(e) = guard::ready(&mut sock, s.key) {
                    warn!("cannot tell the supervisor the window is ready: {e}");
                    return;
                }
            }
            Ok(guard::Msg::Done(key)) => g.end(key),
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

impl Inner {
    /// I5 with the host guard: another host process is about to leave `file` `new_size` bytes
    /// long (the guard holds that limit until the shrink is over). Unmaps the pieces past the
    /// new EOF page first and waits until the frontend has dropped them.
    pub(super) fn host_shrink(&self, inode: InodeId, file: &Arc<OwnedFd>, new_size: u64) {
        let st = self.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cut = round_up(new_size, self.align);
        if !self.table.lock().map(|t| t.crosses(inode, cut)).unwrap_or(true) {
            return;
        }
        let t0 = std::time::Instant::now();
        if let Err(e) = self.cut(inode, file.as_fd(), cut) {
            warn!("host shrink of inode {}: cannot cut at {cut}: {e}; revoking every piece", inode.0);
            if let Ok(mapper) = self.mapper() {
                let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = t.revoke(inode, &*mapper);
            }
        }
        let t1 = std::time::Instant::now();
        lease::wait_unmapped_elsewhere(self, file, cut);
        info_limited!(
            "host shrink of inode {} to {new_size}: pieces past {cut} unmapped in {} us, dropped by the frontend {} us later",
            inode.0,
            t1.duration_since(t0).as_micros(),
            t1.elapsed().as_micros()
        );
    }

    /// `valid_end` (a page boundary past EOF), lowered to what a pending host shrink of
    /// `inode` may leave: nothing is installed there until that shrink is over (I2).
    pub(super) fn clamp(&self, inode: InodeId, valid_end: u64) -> u64 {
        match self.host_guard.get().and_then(|g| g.limit(inode)) {
            Some(limit) => valid_end.min(round_up(limit, self.align)),
            None => valid_end,
        }
    }

    /// After a host shrink: re-installs what the file has grown back to (I3).
    pub(super) fn host_regrow(&self, inode: InodeId, file: &Arc<OwnedFd>) {
        let st = self.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = self.reinstall(inode, file.as_fd()) {
            warn_limited!("inode {}: cannot re-install after a host shrink: {e}", inode.0);
        }
    }
}
