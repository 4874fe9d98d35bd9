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

/// The daemon's end of the maps channel.
pub struct MapsClient {
    sock: Mutex<UnixStream>,
}

impl MapsClient {
    pub(super) fn new(sock: UnixStream) -> MapsClient {
        MapsClient { sock: Mutex::new(sock) }
    }

    /// Whether a process other than the daemon maps (dev, ino). If the supervisor cannot
    /// answer, the answer is "yes": the caller then waits out its bound, the safe direction.
    pub fn mapped_elsewhere(&self, dev: u64, ino: u64) -> bool {
        let Ok(mut s) = self.sock.lock() else { return true };
        let mut req = [0u8; 16];
        let (d, i) = req.split_at_mut(8);
        d.copy_from_slice(&dev.to_le_bytes());
        i.copy_from_slice(&ino.to_le_bytes());
        let mut ans = [0u8; 1];
        match s.write_all(&req).and_then(|()| s.read_exact(&mut ans)) {
            Ok(()) => ans != [0],
            Err(e) => {
                debug!("maps query failed: {e}");
                true
            }
        }
    }
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
}

/// Runs until the child exits; returns the exit code to leave with.
pub(super) fn run(mut w: Watch, pidfd: &OwnedFd, signals: &OwnedFd) -> io::Result<u8> {
    let mut exclude = vec![w.child];
    if let Some(mut s) = w.daemon_pid.take() {
        let mut b = [0u8; 4];
        if s.read_exact(&mut b).is_ok() {
            exclude.push(i32::from_le_bytes(b));
        }
    }
    loop {
        let mut fds = vec![pidfd.as_fd(), signals.as_fd()];
        if let Some(m) = &w.maps {
            fds.push(m.as_fd());
        }
        let ready = sys::poll_readable(&fds)?;
        if ready.first() == Some(&true) {
            return sys::waitpid(w.child).map(sys::exit_code);
        }
        if ready.get(1) == Some(&true) {
            let sig = sys::read_signal(signals.as_fd())?;
            let sig = libc::c_int::try_from(sig).unwrap_or(libc::SIGTERM);
            if let Err(e) = sys::kill(w.child, sig) {
                warn!("cannot pass signal {sig} to the daemon: {e}");
            }
        }
        if ready.get(2) == Some(&true) && !answer(&mut w, &exclude) {
            w.maps = None;
        }
    }
}

/// Answers one maps query; false once the daemon closed its end.
fn answer(w: &mut Watch, exclude: &[libc::pid_t]) -> bool {
    let Some(sock) = w.maps.as_mut() else { return false };
    let mut req = [0u8; 16];
    if sock.read_exact(&mut req).is_err() {
        return false;
    }
    let (d, i) = req.split_at(8);
    let dev = u64::from_le_bytes(d.try_into().unwrap_or_default());
    let ino = u64::from_le_bytes(i.try_into().unwrap_or_default());
    let mapped = (w.scan)(dev, ino, exclude);
    sock.write_all(&[u8::from(mapped)]).is_ok()
}
