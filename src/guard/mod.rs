//! The host guard (I5 with fanotify): a permission-event group marks every file with window
//! pieces, so another host process's open, read, write, truncate or fallocate of it waits for
//! an answer. The watcher (the supervisor, which sees host pids and may read their
//! /proc/TID/syscall) lets reads, writes, faults and opens without O_TRUNC go at once: they
//! never revoke a guest mapping. A truncate, an O_TRUNC open or a collapse is passed to the
//! daemon, which unmaps the window pages past the new EOF first; the watcher answers once the
//! daemon says so. No group (rootless, no CAP_SYS_ADMIN, an old kernel) leaves I5 to leases.

mod classify;
pub mod fan;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use log::{debug, warn};

pub use classify::{Kind, Verdict, classify};

/// Most forwarded events waiting for the daemon; past that, the watcher waits for answers
/// before it reads more events (the waiting processes stay blocked, nothing is allowed early).
const MAX_PENDING: usize = 256;

/// A shrink the daemon prepares for before the watcher lets it happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shrink {
    /// The watcher's key for the event (its fd number there); the daemon sends it back.
    pub key: i32,
    pub dev: u64,
    pub ino: u64,
    /// The size the file may be left with.
    pub new_size: u64,
}

const SHRINK_LEN: usize = 32;

/// The daemon's read timeout on the channel: how often it checks cut files for growth. Set
/// before the seccomp filter (setsockopt is not on the daemon's list).
pub const TICK: std::time::Duration = std::time::Duration::from_millis(10);

impl Shrink {
    fn encode(&self) -> [u8; SHRINK_LEN] {
        let mut b = [0u8; SHRINK_LEN];
        b[0..4].copy_from_slice(&self.key.to_le_bytes());
        b[8..16].copy_from_slice(&self.dev.to_le_bytes());
        b[16..24].copy_from_slice(&self.ino.to_le_bytes());
        b[24..32].copy_from_slice(&self.new_size.to_le_bytes());
        b
    }

    fn decode(b: &[u8; SHRINK_LEN]) -> Shrink {
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b.get(r).unwrap_or_default().try_into().unwrap_or_default());
        let key = i32::from_le_bytes(b.get(0..4).unwrap_or_default().try_into().unwrap_or_default());
        Shrink { key, dev: u(8..16), ino: u(16..24), new_size: u(24..32) }
    }
}

/// The daemon's side: read the next shrink (blocking, up to the socket's read timeout).
pub fn next_shrink(sock: &mut UnixStream) -> io::Result<Shrink> {
    let mut b = [0u8; SHRINK_LEN];
    sock.read_exact(&mut b)?;
    Ok(Shrink::decode(&b))
}

/// The daemon's side: the window is ready for shrink `key`.
pub fn ready(sock: &mut UnixStream, key: i32) -> io::Result<()> {
    sock.write_all(&key.to_le_bytes())
}

/// Counts for the log.
#[derive(Default, Debug)]
pub struct Stats {
    pub allowed: u64,
    pub forwarded: u64,
}

/// The supervisor's side: reads events, answers or forwards them.
pub struct Watcher {
    group: OwnedFd,
    sock: UnixStream,
    /// The daemon's processes (their own accesses follow the window's rules already).
    daemon: Vec<u32>,
    /// Forwarded events by key, kept open so no new event reuses the key before the answer.
    pending: HashMap<i32, OwnedFd>,
    pub stats: Stats,
}

fn tgid_of(tid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

impl Watcher {
    pub fn new(group: OwnedFd, sock: UnixStream) -> Watcher {
        Watcher { group, sock, daemon: Vec::new(), pending: HashMap::new(), stats: Stats::default() }
    }

    /// The daemon's processes, as the watcher sees their pids.
    pub fn set_daemon(&mut self, pids: &[u32]) {
        self.daemon = pids.to_vec();
    }

    /// The fds to poll: the group (unless too many events wait for the daemon), the socket.
    pub fn fds(&self) -> (Option<BorrowedFd<'_>>, BorrowedFd<'_>) {
        let group = (self.pending.len() < MAX_PENDING).then(|| self.group.as_fd());
        (group, self.sock.as_fd())
    }

    /// The group is readable: decide every queued event.
    pub fn on_events(&mut self) -> io::Result<()> {
        for ev in fan::read(self.group.as_fd())? {
            let key = ev.file.as_raw_fd();
            match self.decide(&ev) {
                None => {
                    self.stats.allowed += 1;
                    if let Err(e) = fan::answer(self.group.as_fd(), key, true) {
                        warn!("cannot answer a host access: {e}");
                    }
                }
                Some(s) => {
                    self.stats.forwarded += 1;
                    if let Err(e) = self.sock.write_all(&s.encode()) {
                        // No daemon to prepare the window: it is going away with its mappings.
                        debug!("cannot pass a host shrink on: {e}");
                        let _ = fan::answer(self.group.as_fd(), key, true);
                        continue;
                    }
                    self.pending.insert(key, ev.file);
                }
            }
        }
        Ok(())
    }

    /// None: allow now. Some: the daemon must prepare first.
    fn decide(&self, ev: &fan::Event) -> Option<Shrink> {
        let tgid = tgid_of(ev.tid);
        // Gone: its syscall was interrupted, nothing will happen.
        let tgid = tgid?;
        if self.daemon.contains(&tgid) || tgid == std::process::id() {
            return None;
        }
        let st = fstat(ev.file.as_fd()).ok()?;
        let line = std::fs::read_to_string(format!("/proc/{}/syscall", ev.tid)).ok();
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", ev.tid)).unwrap_or_default();
        let kind = if ev.open { Kind::Open } else { Kind::Access };
        let size = u64::try_from(st.st_size).unwrap_or(0);
        match classify(kind, line.as_deref(), comm.trim(), size) {
            Verdict::Allow => None,
            Verdict::Shrink(new_size) => {
                debug!("host thread {} ({}) may shrink ino {} to {new_size}", ev.tid, comm.trim(), st.st_ino);
                Some(Shrink { key: ev.file.as_raw_fd(), dev: st.st_dev, ino: st.st_ino, new_size })
            }
        }
    }

    /// The socket is readable: answer what the daemon is ready for. False once it is gone
    /// (then every waiting event is allowed: the daemon's mappings went with it).
    pub fn on_ready(&mut self) -> bool {
        let mut b = [0u8; 4];
        if self.sock.read_exact(&mut b).is_err() {
            for (key, _file) in self.pending.drain() {
                let _ = fan::answer(self.group.as_fd(), key, true);
            }
            return false;
        }
        let key = i32::from_le_bytes(b);
        if self.pending.remove(&key).is_some()
            && let Err(e) = fan::answer(self.group.as_fd(), key, true)
        {
            warn!("cannot answer a host shrink: {e}");
        }
        true
    }
}

#[allow(unsafe_code)]
fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable for one stat; the fd is borrowed.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled `st`.
    Ok(unsafe { st.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_survives_the_wire() {
        let s = Shrink { key: 17, dev: 0x803, ino: u64::MAX - 1, new_size: 4097 };
        assert_eq!(Shrink::decode(&s.encode()), s);
    }
}
