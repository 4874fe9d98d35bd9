//! What is in flight on one queue: which heads a worker still owns (a head is queued at most
//! once, so the guest cannot grow the job queue by re-publishing it) and how many requests are
//! running (GET_VRING_BASE waits for them). Knows nothing of rings or requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Why a chain was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The guest published a head that a worker still owns.
    InFlight,
    /// The guest published a head past the queue's size: no chain can start there.
    OutOfRange,
}

/// The requests in flight on one queue.
pub struct Inflight {
    heads: Vec<AtomicBool>,
    count: Mutex<usize>,
    idle: Condvar,
}

impl Inflight {
    /// Tracking for a queue of at most `size` entries.
    pub fn new(size: usize) -> Inflight {
        Inflight {
            heads: (0..size).map(|_| AtomicBool::new(false)).collect(),
            count: Mutex::new(0),
            idle: Condvar::new(),
        }
    }

    /// Takes `head` for a new request. Only the queue's own thread claims; workers release.
    pub fn claim(&self, head: u16) -> Result<(), Refused> {
        let slot = self.heads.get(usize::from(head)).ok_or(Refused::OutOfRange)?;
        if slot.swap(true, Ordering::AcqRel) {
            return Err(Refused::InFlight);
        }
        if let Ok(mut n) = self.count.lock() {
            *n += 1;
        }
        Ok(())
    }

    /// Gives `head` back. Call it under the vring lock right before the head goes to the used
    /// ring: from then on the guest may publish it again, and that is a new request.
    pub fn release_head(&self, head: u16) {
        if let Some(slot) = self.heads.get(usize::from(head)) {
            slot.store(false, Ordering::Release);
        }
    }

    /// The request that claimed a head is over (its head released).
    pub fn finished(&self) {
        if let Ok(mut n) = self.count.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Waits up to `timeout` for every request to finish; returns how many are left.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let Ok(n) = self.count.lock() else { return 0 };
        match self.idle.wait_timeout_while(n, timeout, |n| *n > 0) {
            Ok((n, _)) => *n,
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Inflight, Refused};

    #[test]
    fn claim_of_a_head_in_flight_is_refused() {
        let f = Inflight::new(4);
        assert_eq!(f.claim(2), Ok(()));
        assert_eq!(f.claim(2), Err(Refused::InFlight));
        assert_eq!(f.claim(3), Ok(()));
    }

    #[test]
    fn claim_after_release_is_a_new_request() {
        let f = Inflight::new(4);
        assert_eq!(f.claim(1), Ok(()));
        f.release_head(1);
        f.finished();
        assert_eq!(f.claim(1), Ok(()));
    }

    #[test]
    fn claim_past_the_queue_size_is_refused() {
        let f = Inflight::new(4);
        assert_eq!(f.claim(4), Err(Refused::OutOfRange));
        assert_eq!(f.claim(u16::MAX), Err(Refused::OutOfRange));
        f.release_head(u16::MAX);
        assert_eq!(f.wait_idle(Duration::ZERO), 0);
    }

    #[test]
    fn wait_idle_with_requests_running_reports_them() {
        let f = Inflight::new(4);
        f.claim(0).unwrap();
        f.claim(1).unwrap();
        assert_eq!(f.wait_idle(Duration::from_millis(1)), 2);
        f.release_head(0);
        f.finished();
        f.release_head(1);
        f.finished();
        assert_eq!(f.wait_idle(Duration::ZERO), 0);
    }
}
