//! What is in flight on one queue: which heads a worker still owns (a head is queued at most
//! once, so the guest cannot grow the job queue by re-publishing it), how many requests are
//! running (GET_VRING_BASE waits for them), and which requests a stop abandoned (they may
//! never touch the ring again). Knows nothing of rings or requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why a chain was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The guest published a head that a worker still owns.
    InFlight,
    /// The guest published a head past the queue's size: no chain can start there.
    OutOfRange,
    /// The queue was stopped after the chain was popped: it belongs to the frontend now.
    Stopped,
}

/// One claimed head: which head, and in which run of the queue (between two stops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    head: u16,
    run: u64,
}

impl Claim {
    /// The claimed head.
    pub fn head(&self) -> u16 {
        self.head
    }
}

struct State {
    /// Requests of the current run still going.
    running: usize,
    /// The current run; a stop starts the next. Never 0 (0 marks a free head).
    run: u64,
    /// Threads in `wait_idle` (a notify without one would be a syscall per request for nothing).
    waiters: usize,
}

/// The requests in flight on one queue.
pub struct Inflight {
    /// Per head: the run that claimed it, or 0.
    heads: Vec<AtomicU64>,
    state: Mutex<State>,
    idle: Condvar,
}

/// Held while a request of the current run writes its reply and puts its head in the used ring:
/// a stop waits for it, and a request whose run was stopped gets none.
pub struct Gate<'a>(#[allow(dead_code)] MutexGuard<'a, State>);

impl Inflight {
    /// Tracking for a queue of at most `size` entries.
    pub fn new(size: usize) -> Inflight {
        Inflight {
            heads: (0..size).map(|_| AtomicU64::new(0)).collect(),
            state: Mutex::new(State { running: 0, run: 1, waiters: 0 }),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current run: read it before popping a chain, and claim the chain in it.
    pub fn run(&self) -> u64 {
        self.lock().run
    }

    /// Takes `head` for a new request popped during `run`. Only the queue's own thread claims;
    /// workers release.
    pub fn claim(&self, head: u16, run: u64) -> Result<Claim, Refused> {
        let slot = self.heads.get(usize::from(head)).ok_or(Refused::OutOfRange)?;
        let mut st = self.lock();
        if st.run != run {
            return Err(Refused::Stopped);
        }
        if slot.load(Ordering::Acquire) == st.run {
            return Err(Refused::InFlight);
        }
        slot.store(st.run, Ordering::Release);
        st.running += 1;
        Ok(Claim { head, run: st.run })
    }

    /// The gate for `claim`'s reply, if its run was not stopped.
    pub fn gate(&self, claim: Claim) -> Option<Gate<'_>> {
        let st = self.lock();
        (st.run == claim.run).then_some(Gate(st))
    }

    /// Gives `claim`'s head back (under its gate). Call it under the vring lock right before
    /// the head goes to the used ring: from then on the guest may publish it again, and that
    /// is a new request.
    pub fn release_head(&self, claim: Claim, _gate: &Gate<'_>) {
        if let Some(slot) = self.heads.get(usize::from(claim.head)) {
            let _ = slot.compare_exchange(claim.run, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The request of `claim` is over (its head released, or its run stopped).
    pub fn finished(&self, claim: Claim) {
        let mut st = self.lock();
        if st.run == claim.run {
            st.running = st.running.saturating_sub(1);
            if st.running == 0 && st.waiters > 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Waits up to `timeout` for every request to finish; returns how many are left.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let mut st = self.lock();
        st.waiters += 1;
        let mut st = match self.idle.wait_timeout_while(st, timeout, |s| s.running > 0) {
            Ok((s, _)) => s,
            Err(e) => e.into_inner().0,
        };
        st.waiters -= 1;
        st.running
    }

    /// The queue stops (GET_VRING_BASE): the ring goes back to the frontend. Requests still
    /// running are abandoned: they will neither write a reply nor use their head, and every
    /// head is free for the next run. Returns how many were abandoned.
    pub fn stop(&self) -> usize {
        let mut st = self.lock();
        let left = std::mem::take(&mut st.running);
        st.run = st.run.checked_add(1).unwrap_or(1).max(1);
        for h in &self.heads {
            h.store(0, Ordering::Release);
        }
        self.idle.notify_all();
        left
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Inflight, Refused};

    #[test]
    fn claim_of_a_head_in_flight_is_refused() {
        let f = Inflight::new(4);
        assert!(f.claim(2, f.run()).is_ok());
        assert_eq!(f.claim(2, f.run()), Err(Refused::InFlight));
        assert!(f.claim(3, f.run()).is_ok());
    }

    #[test]
    fn claim_after_release_is_a_new_request() {
        let f = Inflight::new(4);
        let c = f.claim(1, f.run()).unwrap();
        f.release_head(c, &f.gate(c).unwrap());
        f.finished(c);
        assert!(f.claim(1, f.run()).is_ok());
    }

    #[test]
    fn claim_past_the_queue_size_is_refused() {
        let f = Inflight::new(4);
        assert_eq!(f.claim(4, f.run()), Err(Refused::OutOfRange));
        assert_eq!(f.claim(u16::MAX, f.run()), Err(Refused::OutOfRange));
        assert_eq!(f.wait_idle(Duration::ZERO), 0);
    }

    #[test]
    fn wait_idle_with_requests_running_reports_them() {
        let f = Inflight::new(4);
        let a = f.claim(0, f.run()).unwrap();
        let b = f.claim(1, f.run()).unwrap();
        assert_eq!(f.wait_idle(Duration::from_millis(1)), 2);
        for c in [a, b] {
            f.release_head(c, &f.gate(c).unwrap());
            f.finished(c);
        }
        assert_eq!(f.wait_idle(Duration::ZERO), 0);
    }

    #[test]
    fn a_stop_abandons_running_requests_and_frees_their_heads() {
        let f = Inflight::new(4);
        let old = f.claim(2, f.run()).unwrap();
        let before = f.run();
        assert_eq!(f.stop(), 1);
        assert_eq!(f.claim(3, before), Err(Refused::Stopped), "a chain popped before the stop is not taken");
        assert!(f.gate(old).is_none(), "a stopped run's request must get no gate");
        assert_eq!(f.wait_idle(Duration::ZERO), 0, "abandoned requests are not waited for");
        let new = f.claim(2, f.run()).expect("the head is free after the stop");
        // The abandoned request ends late: it frees neither the new claim's head nor its count.
        f.finished(old);
        assert_eq!(f.claim(2, f.run()), Err(Refused::InFlight));
        assert_eq!(f.wait_idle(Duration::ZERO), 1);
        f.release_head(new, &f.gate(new).unwrap());
        f.finished(new);
        assert_eq!(f.wait_idle(Duration::ZERO), 0);
    }
}
