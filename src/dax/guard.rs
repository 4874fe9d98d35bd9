//! I5 with the host guard (`crate::guard`): marks on the files with window pieces, and the
//! thread that prepares the window for a host shrink (unmaps the pages past the new EOF) and
//! re-installs them once the file has grown back.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};

use log::{debug, info, warn};

use super::{Inner, InodeId, lease, round_up, sys};
use crate::guard;
use crate::log_limit::{info_limited, warn_limited};

/// A file as the host knows it: (dev, ino).
type FileKey = (u64, u64);

#[derive(Default)]
struct State {
    /// Marked files by (dev, ino), with every inode of ours that maps them: a FORGET and a
    /// new LOOKUP, a bind mount or a hard link give one host file several inodes.
    marked: HashMap<FileKey, Vec<(InodeId, Arc<OwnedFd>)>>,
    /// Which file each marked inode is.
    by_inode: HashMap<InodeId, FileKey>,
    /// Host shrinks asked for (or allowed) and not over yet, by the watcher's key: nothing of
    /// the file may be installed past that size meanwhile.
    pending: HashMap<i32, (FileKey, u64)>,
    /// Files a host shrink cut: re-installed when they grow.
    cut: HashSet<FileKey>,
    /// Whether the filesystem (by st_dev) takes the group's marks (tmpfs does not).
    markable: HashMap<u64, bool>,
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

    /// Starts the threads that read the watcher's messages from `sock` and prepare the window
    /// for its shrinks. The channel is read at all times, also while a shrink is prepared
    /// (which can wait seconds for the frontend and needs the supervisor meanwhile): the
    /// watcher never blocks writing to it.
    pub(super) fn start(&self, inner: Weak<Inner>, sock: UnixStream) -> io::Result<()> {
        let reader = sock.try_clone()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, weak) = (Arc::clone(&self.stop), inner.clone());
        std::thread::Builder::new().name("daxfsd-guard-rx".into()).spawn(move || read(&weak, reader, &tx, &stop))?;
        let stop = Arc::clone(&self.stop);
        std::thread::Builder::new().name("daxfsd-guard".into()).spawn(move || run(&inner, sock, &rx, &stop))?;
        Ok(())
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Marks `file` for `inode` (the host file once, however many inodes map it). An error
    /// leaves the file to leases.
    pub(super) fn watch(&self, inode: InodeId, file: &Arc<OwnedFd>) -> io::Result<()> {
        let key = sys::file_id(file.as_fd())?;
        let mut st = self.state.lock().map_err(|_| io::Error::other("guard state poisoned"))?;
        let entries = st.marked.get(&key).map_or(0, Vec::len);
        if st.marked.get(&key).is_some_and(|v| v.iter().any(|(i, _)| *i == inode)) {
            return Ok(());
        }
        if entries == 0 {
            guard::fan::mark(self.group.as_fd(), file.as_fd(), true)?;
            st.markable.insert(key.0, true);
        }
        st.marked.entry(key).or_default().push((inode, Arc::clone(file)));
        st.by_inode.insert(inode, key);
        Ok(())
    }

    /// Whether `file`'s filesystem takes the group's marks: known from a mark made, or tried
    /// once per filesystem with a mark taken off at once (only on a file not marked yet, whose
    /// mark must stay).
    pub(super) fn can_mark(&self, file: BorrowedFd<'_>) -> bool {
        let Ok(key) = sys::file_id(file) else { return false };
        let Ok(mut st) = self.state.lock() else { return false };
        if let Some(&ok) = st.markable.get(&key.0) {
            return ok;
        }
        let ok = st.marked.contains_key(&key) || guard::fan::mark(self.group.as_fd(), file, true).is_ok();
        if ok && !st.marked.contains_key(&key) {
            let _ = guard::fan::mark(self.group.as_fd(), file, false);
        }
        st.markable.insert(key.0, ok);
        ok
    }

    /// Whether `inode` is marked.
    pub(super) fn is_watched(&self, inode: InodeId) -> bool {
        self.state.lock().is_ok_and(|st| st.by_inode.contains_key(&inode))
    }

    /// `inode`'s last mapping went away; the host file's mark goes with the last such inode.
    pub(super) fn unwatch(&self, inode: InodeId) {
        let Ok(mut st) = self.state.lock() else { return };
        let Some(key) = st.by_inode.remove(&inode) else { return };
        let Some(entries) = st.marked.get_mut(&key) else { return };
        let file = entries.iter().find(|(i, _)| *i == inode).map(|(_, f)| Arc::clone(f));
        entries.retain(|(i, _)| *i != inode);
        if !entries.is_empty() {
            return;
        }
        st.marked.remove(&key);
        st.cut.remove(&key);
        if let Some(f) = file
            && let Err(e) = guard::fan::mark(self.group.as_fd(), f.as_fd(), false)
        {
            debug!("cannot remove the mark of inode {}: {e}", inode.0);
        }
    }

    /// The smallest size a pending host shrink may leave `inode`'s file with.
    pub(super) fn limit(&self, inode: InodeId) -> Option<u64> {
        let st = self.state.lock().ok()?;
        let key = st.by_inode.get(&inode)?;
        st.pending.values().filter(|(k, _)| k == key).map(|(_, l)| *l).min()
    }

    fn begin(&self, key: i32, file: FileKey, new_size: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.pending.insert(key, (file, new_size));
        }
    }

    fn end(&self, key: i32) {
        if let Ok(mut st) = self.state.lock()
            && let Some((file, _)) = st.pending.remove(&key)
            && st.marked.contains_key(&file)
        {
            st.cut.insert(file);
        }
    }

    /// Every inode of ours that maps host file (dev, ino).
    fn lookup(&self, file: FileKey) -> Vec<(InodeId, Arc<OwnedFd>)> {
        let Ok(st) = self.state.lock() else { return Vec::new() };
        st.marked.get(&file).map(|v| v.iter().map(|(i, f)| (*i, Arc::clone(f))).collect()).unwrap_or_default()
    }

    /// The inodes of cut files no pending shrink holds back.
    fn cut_inodes(&self) -> Vec<(InodeId, Arc<OwnedFd>)> {
        let Ok(st) = self.state.lock() else { return Vec::new() };
        let held = |k: &FileKey| st.pending.values().any(|(p, _)| p == k);
        st.cut
            .iter()
            .filter(|k| !held(k))
            .filter_map(|k| st.marked.get(k))
            .flatten()
            .map(|(i, f)| (*i, Arc::clone(f)))
            .collect()
    }
}

/// Reads the watcher's messages: a Done lifts its shrink's limit at once, a Shrink goes to
/// `run`. Nothing here waits for anything but the socket (and the guard's state lock).
fn read(inner: &Weak<Inner>, mut sock: UnixStream, shrinks: &Sender<guard::Shrink>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let next = guard::next(&mut sock);
        let Some(inner) = inner.upgrade() else { return };
        let Some(g) = inner.host_guard.get() else { return };
        match next {
            Ok(guard::Msg::Shrink(s)) => {
                if shrinks.send(s).is_err() {
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
    }
}

/// Prepares the window for each shrink `read` passes on and says so; re-installs cut files
/// that have grown back.
fn run(inner: &Weak<Inner>, mut sock: UnixStream, shrinks: &Receiver<guard::Shrink>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let next = shrinks.recv_timeout(guard::TICK);
        let Some(inner) = inner.upgrade() else { return };
        let Some(g) = inner.host_guard.get() else { return };
        match next {
            Ok(s) => {
                let file = (s.dev, s.ino);
                g.begin(s.key, file, s.new_size);
                let inodes = g.lookup(file);
                if inodes.is_empty() {
                    debug!("host shrink of an unmapped file (ino {})", s.ino);
                }
                // The truncater's own mappings are its business, unless it is the frontend
                // (QEMU resizing an image in the share): the frontend's pages must be gone.
                let except: Vec<u32> =
                    (s.tgid != 0 && !inner.known_mappers().contains(&s.tgid)).then_some(s.tgid).into_iter().collect();
                // Every inode, even after one failed: each cut is still worth making.
                let results: Vec<bool> =
                    inodes.iter().map(|(inode, f)| inner.host_shrink(*inode, f, s.new_size, &except)).collect();
                let ok = results.into_iter().all(|ok| ok);
                if let Err(e) = guard::ready(&mut sock, s.key, ok) {
                    warn!("cannot tell the supervisor the window is ready: {e}");
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        for (inode, file) in g.cut_inodes() {
            inner.host_regrow(inode, &file);
        }
    }
}

impl Inner {
    /// I5 with the host guard: another host process (`except`) is about to leave `file`
    /// `new_size` bytes long (the guard holds that limit until the shrink is over). Unmaps the
    /// pieces past the new EOF page first and waits until the frontend has dropped them. False
    /// when the window could not be made safe (the shrink is then denied).
    pub(super) fn host_shrink(&self, inode: InodeId, file: &Arc<OwnedFd>, new_size: u64, except: &[u32]) -> bool {
        let st = self.inode(inode);
        let _g = st.sem.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cut = round_up(new_size, self.align);
        if !self.table.lock().map(|t| t.crosses(inode, cut)).unwrap_or(true) {
            return true;
        }
        let t0 = std::time::Instant::now();
        let mut ok = true;
        if let Err(e) = self.cut(inode, file.as_fd(), cut) {
            warn!("host shrink of inode {}: cannot cut at {cut}: {e}; revoking every piece", inode.0);
            let revoked = self.mapper().is_ok_and(|mapper| {
                let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                t.revoke(inode, &*mapper).is_ok()
            });
            ok = revoked && !self.table.lock().map(|t| t.crosses(inode, cut)).unwrap_or(true);
        }
        let t1 = std::time::Instant::now();
        let unmapped = lease::wait_unmapped_elsewhere(self, file, cut, except);
        info_limited!(
            "host shrink of inode {} to {new_size}: pieces past {cut} unmapped in {} us, dropped by the frontend {} us later",
            inode.0,
            t1.duration_since(t0).as_micros(),
            t1.elapsed().as_micros()
        );
        ok && unmapped
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
