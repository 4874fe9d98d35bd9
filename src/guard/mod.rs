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

/// What the watcher tells the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Prepare the window for this shrink, then say `ready`.
    Shrink(Shrink),
    /// The shrink with this key is over: the thread left the syscall (or died).
    Done(i32),
}

const MSG_LEN: usize = 32;

/// The daemon's read timeout on the channel: how often it checks cut files for growth. Set
/// before the seccomp filter (setsockopt is not on the daemon's list).
pub const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// How long (tries, pause) the watcher waits for an event's thread to sleep.
const BLOCK_TRIES: u32 = 100;
const BLOCK_PAUSE: std::time::Duration = std::time::Duration::from_micros(100);

/// How often the watcher looks whether an allowed shrink has finished.
const DONE_POLL: std::time::Duration = std::time::Duration::from_millis(1);

impl Msg {
    fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        let (key, kind, s) = match self {
            Msg::Shrink(s) => (s.key, 0u32, *s),
            Msg::Done(k) => (*k, 1, Shrink { key: *k, dev: 0, ino: 0, new_size: 0 }),
        };
        b[0..4].copy_from_slice(&key.to_le_bytes());
        b[4..8].copy_from_slice(&kind.to_le_bytes());
        b[8..16].copy_from_slice(&s.dev.to_le_bytes());
        b[16..24].copy_from_slice(&s.ino.to_le_bytes());
        b[24..32].copy_from_slice(&s.new_size.to_le_bytes());
        b
    }

    fn decode(b: &[u8; MSG_LEN]) -> Option<Msg> {
        let u =
            |r: std::ops::Range<usize>| u64::from_le_bytes(b.get(r).unwrap_or_default().try_into().unwrap_or_default());
        let key = i32::from_le_bytes(b.get(0..4).unwrap_or_default().try_into().unwrap_or_default());
        let kind = u32::from_le_bytes(b.get(4..8).unwrap_or_default().try_into().unwrap_or_default());
        match kind {
            0 => Some(Msg::Shrink(Shrink { key, dev: u(8..16), ino: u(16..24), new_size: u(24..32) })),
            1 => Some(Msg::Done(key)),
            _ => None,
        }
    }
}

/// The daemon's side: the next message (blocking, up to the socket's read timeout).
pub fn next(sock: &mut UnixStream) -> io::Result<Msg> {
    let mut b = [0u8; MSG_LEN];
    sock.read_exact(&mut b)?;
    Msg::decode(&b).ok_or_else(|| io::Error::from_raw_os_error(libc::EPROTO))
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

/// A forwarded event: its file (kept open so no new event reuses the key before the daemon
/// heard it is over), the thread, and once allowed, the syscall line it was blocked in.
struct Pending {
    _file: OwnedFd,
    tid: i32,
    line: Option<String>,
    allowed: bool,
}

/// The supervisor's side: reads events, answers or forwards them.
pub struct Watcher {
    group: OwnedFd,
    sock: UnixStream,
    /// The daemon's processes (their own accesses follow the window's rules already).
    daemon: Vec<u32>,
    pending: HashMap<i32, Pending>,
    pub stats: Stats,
}

fn tgid_of(tid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

fn syscall_of(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()
}

/// The syscall line of a thread that waits for our answer. The event is queued before the
/// thread goes to sleep, so for a moment it may still read "running".
fn blocked_syscall_of(tid: i32) -> Option<String> {
    for _ in 0..BLOCK_TRIES {
        let line = syscall_of(tid)?;
        if line.trim() != "running" {
            return Some(line);
        }
        std::thread::sleep(BLOCK_PAUSE);
    }
    syscall_of(tid)
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

    /// How long the supervisor may sleep: short while an allowed shrink runs.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.pending.values().any(|p| p.allowed).then_some(DONE_POLL)
    }

    /// The group is readable: decide every queued event.
    pub fn on_events(&mut self) -> io::Result<()> {
        for ev in fan::read(self.group.as_fd())? {
            let key = ev.file.as_raw_fd();
            // A new event of a thread whose shrink was allowed: that syscall is over.
            let over: Vec<i32> =
                self.pending.iter().filter(|(_, p)| p.allowed && p.tid == ev.tid).map(|(k, _)| *k).collect();
            over.into_iter().for_each(|k| self.done(k));
            match self.decide(&ev) {
                None => {
                    self.stats.allowed += 1;
                    if let Err(e) = fan::answer(self.group.as_fd(), key, true) {
                        warn!("cannot answer a host access: {e}");
                    }
                }
                Some(s) => {
                    self.stats.forwarded += 1;
                    if let Err(e) = self.sock.write_all(&Msg::Shrink(s).encode()) {
                        // No daemon to prepare the window: it is going away with its mappings.
                        debug!("cannot pass a host shrink on: {e}");
                        let _ = fan::answer(self.group.as_fd(), key, true);
                        continue;
                    }
                    self.pending.insert(key, Pending { _file: ev.file, tid: ev.tid, line: None, allowed: false });
                }
            }
        }
        Ok(())
    }

    /// None: allow now. Some: the daemon must prepare first.
    fn decide(&self, ev: &fan::Event) -> Option<Shrink> {
        // Gone: its syscall was interrupted, nothing will happen.
        let tgid = tgid_of(ev.tid)?;
        if self.daemon.contains(&tgid) || tgid == std::process::id() {
            return None;
        }
        let st = fan::fstat(ev.file.as_fd()).ok()?;
        let line = blocked_syscall_of(ev.tid);
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

    /// The daemon hears that shrink `key` is over.
    fn done(&mut self, key: i32) {
        if self.pending.remove(&key).is_some()
            && let Err(e) = self.sock.write_all(&Msg::Done(key).encode())
        {
            debug!("cannot tell the daemon a host shrink is over: {e}");
        }
    }

    /// Allowed shrinks whose thread has left the syscall it was blocked in are over. A thread
    /// on a CPU reads "running" (it may still be in that syscall): not over yet.
    pub fn on_tick(&mut self) {
        let left = |p: &Pending| match syscall_of(p.tid) {
            None => !std::path::Path::new(&format!("/proc/{}", p.tid)).exists(),
            Some(now) => now.trim() != "running" && Some(&now) != p.line.as_ref(),
        };
        let over: Vec<i32> = self.pending.iter().filter(|(_, p)| p.allowed && left(p)).map(|(k, _)| *k).collect();
        over.into_iter().for_each(|k| self.done(k));
    }

    /// The socket is readable: answer what the daemon is ready for. False once it is gone
    /// (then every waiting event is allowed: the daemon's mappings went with it).
    pub fn on_ready(&mut self) -> bool {
        let mut b = [0u8; 4];
        if self.sock.read_exact(&mut b).is_err() {
            for (key, p) in self.pending.drain() {
                if !p.allowed {
                    let _ = fan::answer(self.group.as_fd(), key, true);
                }
            }
            return false;
        }
        let key = i32::from_le_bytes(b);
        let Some(p) = self.pending.get_mut(&key).filter(|p| !p.allowed) else { return true };
        // The line before the answer: the thread is still blocked in that syscall.
        p.line = blocked_syscall_of(p.tid);
        p.allowed = true;
        if let Err(e) = fan::answer(self.group.as_fd(), key, true) {
            warn!("cannot answer a host shrink: {e}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire() {
        let s = Msg::Shrink(Shrink { key: 17, dev: 0x803, ino: u64::MAX - 1, new_size: 4097 });
        assert_eq!(Msg::decode(&s.encode()), Some(s));
        assert_eq!(Msg::decode(&Msg::Done(-3).encode()), Some(Msg::Done(-3)));
        let mut bad = Msg::Done(1).encode();
        bad[4] = 9;
        assert_eq!(Msg::decode(&bad), None);
    }
}
