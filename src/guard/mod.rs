//! The host guard (I5 with fanotify): a permission-event group marks every file with window
//! pieces, so another host process's open, read, write, truncate or fallocate of it waits for
//! an answer. The watcher (the supervisor, which sees host pids and may read their
//! /proc/TID/syscall) lets reads, writes, faults and opens without O_TRUNC go at once: they
//! never revoke a guest mapping. A truncate, an O_TRUNC open or a collapse is passed to the
//! daemon, which unmaps the window pages past the new EOF first; the watcher answers once the
//! daemon says so. No group (rootless, no CAP_SYS_ADMIN, an old kernel) leaves I5 to leases.

mod classify;
pub mod fan;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::log_limit::warn_limited;

pub use classify::{Kind, Verdict, classify};

/// Most shrinks the daemon is asked to prepare for at once, so the channel never fills and
/// the watcher never blocks on it. More wait in the watcher's backlog (their threads stay
/// blocked, nothing is allowed early); the group is read at all times, so the daemon's own
/// accesses are answered at once whatever waits.
const MAX_IN_FLIGHT: usize = 64;

/// A shrink the daemon prepares for before the watcher lets it happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shrink {
    /// The watcher's key for the event (its fd number there); the daemon sends it back.
    pub key: i32,
    pub dev: u64,
    pub ino: u64,
    /// The size the file may be left with.
    pub new_size: u64,
    /// The shrinking process, as the watcher's /proc sees it (0: unseen). Its own mappings of
    /// the file are its business: the window's wait for unmapped pages leaves it out.
    pub tgid: u32,
}

/// What the watcher tells the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Prepare the window for this shrink, then say `ready`.
    Shrink(Shrink),
    /// The shrink with this key is over: the thread left the syscall (or died), or it was
    /// denied.
    Done(i32),
}

const MSG_LEN: usize = 40;

/// The daemon's read timeout on the channel: how often it checks cut files for growth. Set
/// before the seccomp filter (setsockopt is not on the daemon's list).
pub const TICK: Duration = Duration::from_millis(10);

/// How long (tries, pause) the watcher waits for an event's thread to sleep before it puts
/// the event off (the thread stays blocked; it is looked at again every `DONE_POLL`).
const BLOCK_TRIES: u32 = 10;
const BLOCK_PAUSE: Duration = Duration::from_micros(100);

/// How long an event may be put off because its thread reads "running" before it counts as
/// "cannot tell". Such a thread waits for the answer (fanotify sleeps it killable); it reads
/// "running" only while it is runnable: woken by another answer (one wait queue for the whole
/// group) and not yet back on a CPU, which a low-priority thread on a busy CPU may not be for
/// seconds. Putting it off costs nothing but its own wait.
const DEFER_MAX: Duration = Duration::from_secs(30);

/// How often the watcher looks whether an allowed shrink has finished.
const DONE_POLL: Duration = Duration::from_millis(1);

impl Msg {
    fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        let (key, kind, s) = match self {
            Msg::Shrink(s) => (s.key, 0u32, *s),
            Msg::Done(k) => (*k, 1, Shrink { key: *k, dev: 0, ino: 0, new_size: 0, tgid: 0 }),
        };
        b[0..4].copy_from_slice(&key.to_le_bytes());
        b[4..8].copy_from_slice(&kind.to_le_bytes());
        b[8..16].copy_from_slice(&s.dev.to_le_bytes());
        b[16..24].copy_from_slice(&s.ino.to_le_bytes());
        b[24..32].copy_from_slice(&s.new_size.to_le_bytes());
        b[32..36].copy_from_slice(&s.tgid.to_le_bytes());
        b
    }

    fn decode(b: &[u8; MSG_LEN]) -> Option<Msg> {
        let u =
            |r: std::ops::Range<usize>| u64::from_le_bytes(b.get(r).unwrap_or_default().try_into().unwrap_or_default());
        let w = |r: std::ops::Range<usize>| b.get(r).unwrap_or_default().try_into().unwrap_or_default();
        let key = i32::from_le_bytes(w(0..4));
        let kind = u32::from_le_bytes(w(4..8));
        let tgid = u32::from_le_bytes(w(32..36));
        match kind {
            0 => Some(Msg::Shrink(Shrink { key, dev: u(8..16), ino: u(16..24), new_size: u(24..32), tgid })),
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

/// The daemon's side: the window is ready for shrink `key` (`ok`), or could not be made ready
/// (the watcher then denies the shrink: a failed host truncate beats a VM killed by SIGBUS).
pub fn ready(sock: &mut UnixStream, key: i32, ok: bool) -> io::Result<()> {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&key.to_le_bytes());
    b[4..8].copy_from_slice(&u32::from(ok).to_le_bytes());
    sock.write_all(&b)
}

/// Counts for the log.
#[derive(Default, Debug)]
pub struct Stats {
    pub allowed: u64,
    pub forwarded: u64,
    pub denied: u64,
}

/// Where a forwarded event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for a free in-flight place.
    Backlog,
    /// The daemon prepares the window.
    Asked,
    /// Allowed; the shrink runs until its thread leaves the syscall.
    Allowed(Instant),
}

/// A forwarded event: its file (kept open so no new event reuses the key before the daemon
/// heard it is over), the thread (None: unseen), and the syscall line it is blocked in.
struct Pending {
    _file: OwnedFd,
    tid: Option<i32>,
    shrink: Shrink,
    stage: Stage,
    line: Option<String>,
}

/// What to do with one event.
enum Decision {
    Allow,
    Deny,
    Shrink(Shrink, Option<(i32, String)>),
    /// Its thread reads "running": look again later.
    Defer,
}

/// The supervisor's side: reads events, answers or forwards them.
pub struct Watcher {
    group: OwnedFd,
    sock: UnixStream,
    /// The daemon's processes (their own accesses follow the window's rules already).
    daemon: Vec<u32>,
    pending: HashMap<i32, Pending>,
    backlog: VecDeque<i32>,
    /// Events put off (their threads stay blocked), with when they came.
    deferred: Vec<(fan::Event, Instant)>,
    pub stats: Stats,
}

fn tgid_of(tid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

fn syscall_of(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()
}

fn gone(tid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{tid}")).exists()
}

/// A thread's task flags (PF_*), from /proc/TID/stat.
fn task_flags(tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    // pid (comm) state ppid pgrp session tty_nr tpgid flags ...: the command name may hold
    // spaces and parentheses, so count after the last ')'.
    s.get(s.rfind(')')? + 1..)?.split_ascii_whitespace().nth(6)?.parse().ok()
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
        Watcher {
            group,
            sock,
            daemon: Vec::new(),
            pending: HashMap::new(),
            backlog: VecDeque::new(),
            deferred: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The daemon's processes, as the watcher sees their pids.
    pub fn set_daemon(&mut self, pids: &[u32]) {
        self.daemon = pids.to_vec();
    }

    /// The fds to poll: the group, the socket.
    pub fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.group.as_fd(), self.sock.as_fd())
    }

    /// How long the supervisor may sleep: short while an allowed shrink runs or an event is
    /// put off.
    pub fn timeout(&self) -> Option<Duration> {
        let busy = !self.deferred.is_empty() || self.pending.values().any(|p| matches!(p.stage, Stage::Allowed(_)));
        busy.then_some(DONE_POLL)
    }

    /// The group is readable: decide every queued event.
    pub fn on_events(&mut self) -> io::Result<()> {
        for ev in fan::read(self.group.as_fd())? {
            self.handle(ev, None);
        }
        self.pump();
        Ok(())
    }

    /// Decides the events put off again.
    fn retry_deferred(&mut self) {
        for (ev, since) in std::mem::take(&mut self.deferred) {
            self.handle(ev, Some(since));
        }
        self.pump();
    }

    /// Decides one event (put off since `since`, or new): answers it, forwards it, or puts it
    /// off.
    fn handle(&mut self, ev: fan::Event, since: Option<Instant>) {
        {
            let key = ev.file.as_raw_fd();
            // A new event of a thread whose shrink was allowed: that syscall is over.
            if ev.tid > 0 {
                let over: Vec<i32> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| matches!(p.stage, Stage::Allowed(_)) && p.tid == Some(ev.tid))
                    .map(|(k, _)| *k)
                    .collect();
                over.into_iter().for_each(|k| self.done(k));
            }
            match self.decide(&ev, since) {
                Decision::Defer => self.deferred.push((ev, since.unwrap_or_else(Instant::now))),
                Decision::Allow => {
                    self.stats.allowed += 1;
                    if let Err(e) = fan::answer(self.group.as_fd(), key, true) {
                        warn!("cannot answer a host access: {e}");
                    }
                }
                Decision::Deny => {
                    self.stats.denied += 1;
                    if let Err(e) = fan::answer(self.group.as_fd(), key, false) {
                        warn!("cannot answer a host access: {e}");
                    }
                }
                Decision::Shrink(shrink, seen) => {
                    self.stats.forwarded += 1;
                    let (tid, line) = seen.map_or((None, None), |(t, l)| (Some(t), Some(l)));
                    let p = Pending { _file: ev.file, tid, shrink, stage: Stage::Backlog, line };
                    self.pending.insert(key, p);
                    self.backlog.push_back(key);
                }
            }
        }
    }

    /// Asks the daemon about backlogged shrinks while in-flight places are free.
    fn pump(&mut self) {
        let mut asked = self.pending.values().filter(|p| p.stage == Stage::Asked).count();
        while asked < MAX_IN_FLIGHT {
            let Some(key) = self.backlog.pop_front() else { return };
            let Some(p) = self.pending.get_mut(&key) else { continue };
            if let Err(e) = self.sock.write_all(&Msg::Shrink(p.shrink).encode()) {
                // No daemon to prepare the window: it is going away with its mappings.
                debug!("cannot pass a host shrink on: {e}");
                let _ = fan::answer(self.group.as_fd(), key, true);
                self.pending.remove(&key);
                continue;
            }
            p.stage = Stage::Asked;
            asked += 1;
        }
    }

    /// What to do with `ev` (put off since `since`, or new). A thread that still reads
    /// "running" is put off (a new event's first look waits a moment for it to sleep; later
    /// looks do not), unless it has been for `DEFER_MAX` already: then it cannot be told.
    fn decide(&self, ev: &fan::Event, since: Option<Instant>) -> Decision {
        // Pid 0: a thread outside our pid namespace. Unseen, it cannot be classified.
        let seen = if ev.tid > 0 {
            match tgid_of(ev.tid) {
                Some(tgid) if self.daemon.contains(&tgid) || tgid == std::process::id() => return Decision::Allow,
                Some(tgid) => Some(tgid),
                // Gone: its syscall was interrupted, nothing will happen.
                None if gone(ev.tid) => return Decision::Allow,
                None => None,
            }
        } else {
            None
        };
        let Ok(st) = fan::fstat(ev.file.as_fd()) else {
            warn!("cannot stat a guarded file a host thread accesses: denying the access");
            return Decision::Deny;
        };
        let shrink = |new_size| Shrink { key: ev.file.as_raw_fd(), dev: st.st_dev, ino: st.st_ino, new_size, tgid: 0 };
        let Some(tgid) = seen else {
            // Nothing could tell when its truncate (if it is one) has run: no timer is safe.
            warn_limited!("host thread {} (unseen: outside our pid namespace) accesses a mapped file: denied", ev.tid);
            return Decision::Deny;
        };
        let line = if since.is_none() { blocked_syscall_of(ev.tid) } else { syscall_of(ev.tid) };
        if line.as_deref().is_some_and(|l| l.trim() == "running") {
            if since.is_some_and(|t| t.elapsed() >= DEFER_MAX) {
                warn_limited!(
                    "host thread {} stayed runnable for {DEFER_MAX:?} in an access to a mapped file: denied",
                    ev.tid
                );
                return Decision::Deny;
            }
            return Decision::Defer;
        }
        let kind = if ev.open { Kind::Open } else { Kind::Access };
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let flags = task_flags(ev.tid);
        if flags.is_some_and(|f| f & (classify::PF_KTHREAD | classify::PF_IO_WORKER) != 0) {
            // A kernel thread (ksmbd) or an io_uring worker runs it outside any syscall of its
            // own: neither what it does nor when it is done can be told.
            warn_limited!("a kernel thread or io_uring worker ({}) accesses a mapped file: denied", ev.tid);
            return Decision::Deny;
        }
        match classify(kind, line.as_deref(), flags, size) {
            Verdict::Allow => Decision::Allow,
            Verdict::Shrink(new_size) => {
                debug!("host thread {} may shrink ino {} to {new_size}", ev.tid, st.st_ino);
                match line {
                    Some(l) => Decision::Shrink(Shrink { tgid, ..shrink(new_size) }, Some((ev.tid, l))),
                    // No line: nothing could tell when it is over.
                    None => Decision::Deny,
                }
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
    /// on a CPU reads "running" (it may still be in that syscall): not over yet. An unseen
    /// thread's shrink is over after `UNSEEN_HOLD`.
    ///
    /// A runnable thread reads "running" whether it is still in the syscall (starved before
    /// its truncate, or spinning for the inode lock) or has left it and computes on; nothing
    /// in /proc tells the two apart (user-mode CPU time is scaled from the total runtime, and
    /// the file's size can be set by any writer), so the shrink lasts until the thread blocks
    /// elsewhere or exits. Meanwhile the window installs nothing past the new size, and a
    /// SETUPMAPPING there waits, then fails (EIO) rather than map less than the guest asked.
    pub fn on_tick(&mut self) {
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
        let left = |p: &Pending| match (p.stage, p.tid) {
            (Stage::Allowed(_), Some(tid)) => match syscall_of(tid) {
                None => gone(tid),
                Some(now) => now.trim() != "running" && p.line.as_ref().is_some_and(|l| *l != now),
            },
            _ => false,
        };
        let over: Vec<i32> = self.pending.iter().filter(|(_, p)| left(p)).map(|(k, _)| *k).collect();
        over.into_iter().for_each(|k| self.done(k));
    }

    /// The socket is readable: answer what the daemon is ready for. False once it is gone
    /// (then every waiting event is allowed: the daemon's mappings went with it).
    pub fn on_ready(&mut self) -> bool {
        let mut b = [0u8; 8];
        if self.sock.read_exact(&mut b).is_err() {
            for (key, p) in self.pending.drain() {
                if !matches!(p.stage, Stage::Allowed(_)) {
                    let _ = fan::answer(self.group.as_fd(), key, true);
                }
            }
            self.backlog.clear();
            return false;
        }
        let key = i32::from_le_bytes(b.get(0..4).unwrap_or_default().try_into().unwrap_or_default());
        let ok = b.get(4..8) != Some(&[0u8; 4][..]);
        if let Some(p) = self.pending.get_mut(&key).filter(|p| p.stage == Stage::Asked) {
            p.stage = Stage::Allowed(Instant::now());
            if !ok {
                self.stats.denied += 1;
                warn!("the window could not be made ready for a host shrink of ino {}: denying it", p.shrink.ino);
            }
            if let Err(e) = fan::answer(self.group.as_fd(), key, ok) {
                warn!("cannot answer a host shrink: {e}");
            }
            if !ok {
                self.done(key);
            }
        }
        self.pump();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire() {
        let s = Msg::Shrink(Shrink { key: 17, dev: 0x803, ino: u64::MAX - 1, new_size: 4097, tgid: 4_000_000 });
        assert_eq!(Msg::decode(&s.encode()), Some(s));
        assert_eq!(Msg::decode(&Msg::Done(-3).encode()), Some(Msg::Done(-3)));
        let mut bad = Msg::Done(1).encode();
        bad[4] = 9;
        assert_eq!(Msg::decode(&bad), None);
    }
}
