//! The supervisor: the process the operator started, left outside the sandbox. It reaps the
//! sandboxed daemon and exits with its status, passes SIGTERM/SIGINT/SIGHUP on to it, and
//! answers one question the daemon cannot answer from inside: "does any process other than
//! the daemon still map file (dev, ino)?" (I5 waits for the frontend to drop unmapped pages).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use log::{debug, warn};

use super::{ScanFn, sys};

/// Most pids one maps query or answer carries (the frontend and its helpers; more is a bug or
/// an attack, and the answer is cut there).
const MAX_PIDS: usize = 64;
/// How long the supervisor waits for the rest of a query it has started reading.
pub(super) const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// At most one scan of every process per this interval: a compromised daemon asking again and
/// again gets slower answers, not the supervisor's whole CPU.
const FULL_SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// A pid no process has: the answer when the supervisor cannot be asked, so the caller keeps
/// waiting (to its bound) rather than assume nothing maps the file.
const UNKNOWN: u32 = u32::MAX;

/// How long the daemon waits for a maps answer. The supervisor answers in milliseconds; past
/// this it is taken as wedged, and every later query answers "cannot tell" (a reply that came
/// late would be read as the answer to the next query).
const MAPS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The daemon's end of the maps channel (None once a query timed out).
pub struct MapsClient {
    sock: Mutex<Option<UnixStream>>,
}

impl MapsClient {
    /// Sets the read timeout, so call it before the seccomp filter (setsockopt is not on the
    /// daemon's list).
    pub(super) fn new(sock: UnixStream) -> MapsClient {
        if let Err(e) = sock.set_read_timeout(Some(MAPS_TIMEOUT)) {
            warn!("maps channel: cannot set a read timeout: {e}");
        }
        MapsClient { sock: Mutex::new(Some(sock)) }
    }

    /// The processes other than the daemon that map (dev, ino) at or past file offset `from`,
    /// among `among` or all of them.
    pub fn processes_mapping(&self, dev: u64, ino: u64, from: u64, among: Option<&[u32]>) -> Vec<u32> {
        let ask = |s: &mut UnixStream| -> io::Result<Vec<u32>> {
            let mut req = Vec::with_capacity(32);
            req.extend_from_slice(&dev.to_le_bytes());
            req.extend_from_slice(&ino.to_le_bytes());
            req.extend_from_slice(&from.to_le_bytes());
            let pids = among.map(|a| a.get(..MAX_PIDS).unwrap_or(a));
            // u32::MAX as the count means "all".
            let n = pids.map_or(u32::MAX, |p| u32::try_from(p.len()).unwrap_or(0));
            req.extend_from_slice(&n.to_le_bytes());
            pids.unwrap_or_default().iter().for_each(|p| req.extend_from_slice(&p.to_le_bytes()));
            s.write_all(&req)?;
            read_pids(s)
        };
        let Ok(mut guard) = self.sock.lock() else { return vec![UNKNOWN] };
        let Some(s) = guard.as_mut() else { return vec![UNKNOWN] };
        match ask(s) {
            Ok(p) => p,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                warn!("the supervisor did not answer a maps query in {MAPS_TIMEOUT:?}: no more queries");
                guard.take();
                vec![UNKNOWN]
            }
            Err(e) => {
                debug!("maps query failed: {e}");
                vec![UNKNOWN]
            }
        }
    }
}

fn read_u32(s: &mut UnixStream) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// A count and that many pids (at most MAX_PIDS).
fn read_pids(s: &mut UnixStream) -> io::Result<Vec<u32>> {
    let n = usize::try_from(read_u32(s)?).unwrap_or(usize::MAX);
    if n > MAX_PIDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    (0..n).map(|_| read_u32(s)).collect()
}

fn write_pids(s: &mut UnixStream, pids: &[u32]) -> io::Result<()> {
    let pids = pids.get(..MAX_PIDS).unwrap_or(pids);
    let mut out = Vec::with_capacity(4 * (pids.len() + 1));
    out.extend_from_slice(&u32::try_from(pids.len()).unwrap_or(0).to_le_bytes());
    pids.iter().for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
    s.write_all(&out)
}

/// What the supervisor watches.
pub(super) struct Watch {
    /// The direct child (the daemon, or the namespace's init waiter).
    pub child: libc::pid_t,
    /// The daemon's end talks here; None when there is no maps channel.
    pub maps: Option<UnixStream>,
    /// Where the direct child reports the daemon's pid (namespace mode).
    pub daemon_pid: Option<UnixStream>,
    /// The /proc scan.
    pub scan: ScanFn,
    /// When the last scan of every process began.
    pub last_full_scan: Option<std::time::Instant>,
    /// The host guard's watcher (when the daemon has a fanotify group).
    pub guard: Option<crate::guard::Watcher>,
}

/// Runs until the child exits; returns the exit code to leave with.
pub(super) fn run(mut w: Watch, pidfd: &OwnedFd, signals: &OwnedFd) -> io::Result<u8> {
    let mut exclude: Vec<u32> = u32::try_from(w.child).into_iter().collect();
    if let Some(mut s) = w.daemon_pid.take()
        && let Ok(pid) = read_u32(&mut s)
    {
        exclude.push(pid);
    }
    if let Some(g) = w.guard.as_mut() {
        g.set_daemon(&exclude);
    }
    loop {
        let mut fds = vec![pidfd.as_fd(), signals.as_fd()];
        let maps_at = w.maps.as_ref().map(|m| {
            fds.push(m.as_fd());
            fds.len() - 1
        });
        let (mut group_at, mut guard_at) = (None, None);
        if let Some(g) = &w.guard {
            let (group, sock) = g.fds();
            fds.push(group);
            group_at = Some(fds.len() - 1);
            fds.push(sock);
            guard_at = Some(fds.len() - 1);
        }
        let timeout = w.guard.as_ref().and_then(crate::guard::Watcher::timeout);
        let ready = sys::poll_readable_for(&fds, timeout)?;
        drop(fds);
        if let Some(g) = w.guard.as_mut() {
            g.on_tick();
        }
        let is = |at: Option<usize>| at.is_some_and(|i| ready.get(i) == Some(&true));
        if is(group_at)
            && let Some(g) = w.guard.as_mut()
            && let Err(e) = g.on_events()
        {
            warn!("cannot read the host guard's events: {e}");
        }
        if is(guard_at) && w.guard.as_mut().is_some_and(|g| !g.on_ready()) {
            w.guard = None;
        }
        if ready.first() == Some(&true) {
            return sys::waitpid(w.child).map(report);
        }
        if ready.get(1) == Some(&true) {
            let sig = sys::read_signal(signals.as_fd())?;
            let sig = libc::c_int::try_from(sig).unwrap_or(libc::SIGTERM);
            if let Err(e) = sys::kill(w.child, sig) {
                warn!("cannot pass signal {sig} to the daemon: {e}");
            }
        }
        if is(maps_at) && !answer(&mut w, &exclude) {
            w.maps = None;
        }
    }
}

/// The exit code for a child's wait status; says why when a signal killed it.
pub(super) fn report(status: libc::c_int) -> u8 {
    match sys::killed_by(status) {
        Some(libc::SIGSYS) => {
            log::error!(
                "the daemon made a syscall off the seccomp allowlist and was killed (the kernel's audit log has its number; --seccomp log lets it through and logs it)"
            );
        }
        // What the operator (or the supervisor, passing it on) sent: an ordinary end.
        Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGKILL) => {}
        Some(sig) => log::error!("the daemon was killed by signal {sig}"),
        None => {}
    }
    sys::exit_code(status)
}

/// Answers one maps query; false once the daemon closed its end (or broke the protocol).
fn answer(w: &mut Watch, exclude: &[u32]) -> bool {
    let Some(sock) = w.maps.as_mut() else { return false };
    let mut req = [0u8; 24];
    if sock.read_exact(&mut req).is_err() {
        return false;
    }
    let word =
        |r: std::ops::Range<usize>| u64::from_le_bytes(req.get(r).unwrap_or_default().try_into().unwrap_or_default());
    let (dev, ino, from) = (word(0..8), word(8..16), word(16..24));
    let among = match read_u32(sock) {
        Ok(u32::MAX) => None,
        Ok(n) if usize::try_from(n).is_ok_and(|n| n <= MAX_PIDS) => {
            match (0..n).map(|_| read_u32(sock)).collect::<io::Result<Vec<u32>>>() {
                Ok(p) => Some(p),
                Err(_) => return false,
            }
        }
        _ => return false,
    };
    if among.is_none() {
        if let Some(wait) = w.last_full_scan.and_then(|t| FULL_SCAN_INTERVAL.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        w.last_full_scan = Some(std::time::Instant::now());
    }
    let found = (w.scan)(dev, ino, from, among.as_deref(), exclude);
    write_pids(sock, &found).is_ok()
}
