//! The guest's quota of host fds. Every fd the daemon keeps open for the guest beyond one
//! request (an inode's O_PATH fd, an open handle, a lock owner's open file description, a DAX
//! shared file) holds an `FdPermit`, given back when it drops. Past the quota, only the ops
//! that would keep a new fd answer EMFILE, so the daemon's own fds (sockets, guest memory,
//! a reconnecting frontend's) never run out.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::warn;

/// The smallest quota the default formula gives, however low RLIMIT_NOFILE is.
const MIN_QUOTA: usize = 32;
/// The fewest fds the default formula leaves to the daemon and the inodes' O_PATH fds.
const MIN_RESERVE: u64 = 256;

#[derive(Debug)]
struct Counter {
    limit: usize,
    held: AtomicUsize,
    refused: AtomicUsize,
}

/// A counter of fds held for the guest, shared by every permit it gave.
#[derive(Debug, Clone)]
pub struct FdQuota {
    counter: Arc<Counter>,
}

/// One held fd's share of the quota; dropping it gives the share back.
#[derive(Debug)]
pub struct FdPermit {
    counter: Arc<Counter>,
}

impl FdQuota {
    /// A quota of `limit` fds.
    pub fn new(limit: usize) -> FdQuota {
        FdQuota { counter: Arc::new(Counter { limit, held: AtomicUsize::new(0), refused: AtomicUsize::new(0) }) }
    }

    /// The default for a soft RLIMIT_NOFILE of `nofile`: a quarter of it, and at least
    /// `MIN_RESERVE`, stays with the daemon (its own fds, per-request fds); the guest gets the
    /// rest, and never less than `MIN_QUOTA`.
    pub fn default_limit(nofile: u64) -> usize {
        let reserve = (nofile / 4).max(MIN_RESERVE);
        usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX).max(MIN_QUOTA)
    }

    /// The open-file and inode quotas for a soft RLIMIT_NOFILE of `nofile`: what
    /// `default_limit` leaves the guest, halved between them; `handles` (when not 0) sets the
    /// open-file one and the inodes get the rest.
    pub fn split(nofile: u64, handles: usize) -> (FdQuota, FdQuota) {
        let total = Self::default_limit(nofile);
        let h = if handles == 0 { total / 2 } else { handles };
        (FdQuota::new(h.max(MIN_QUOTA)), FdQuota::new(total.saturating_sub(h).max(MIN_QUOTA)))
    }

    /// EMFILE when the quota is used up (for an op about to create what would need a permit).
    pub fn check(&self) -> io::Result<()> {
        if self.counter.held.load(Ordering::Acquire) >= self.counter.limit {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(())
    }

    /// The quota.
    pub fn limit(&self) -> usize {
        self.counter.limit
    }

    /// A permit for one more fd, or EMFILE at the quota (logged at the 1st, 2nd, 4th... refusal).
    pub fn acquire(&self) -> io::Result<FdPermit> {
        let c = &self.counter;
        let taken = c.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < c.limit).then_some(n + 1));
        if taken.is_err() {
            let n = c.refused.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if n.is_power_of_two() {
                warn!(
                    "guest holds its quota of {} host fds of one kind: refusing with EMFILE ({n} times so far)",
                    c.limit
                );
            }
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(FdPermit { counter: Arc::clone(c) })
    }

    /// How many permits are out.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.counter.held.load(Ordering::Acquire)
    }
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        self.counter.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_past_limit_is_emfile_until_a_permit_drops() {
        let q = FdQuota::new(2);
        let a = q.acquire().unwrap();
        let _b = q.acquire().unwrap();
        assert_eq!(q.acquire().unwrap_err().raw_os_error(), Some(libc::EMFILE));
        assert_eq!(q.held(), 2);
        drop(a);
        assert_eq!(q.held(), 1);
        assert!(q.acquire().is_ok());
    }

    #[test]
    fn default_limit_keeps_a_reserve_and_a_minimum() {
        assert_eq!(FdQuota::default_limit(2048), 1536);
        assert_eq!(FdQuota::default_limit(1024), 768);
        assert_eq!(FdQuota::default_limit(1_000_000), 750_000);
        assert_eq!(FdQuota::default_limit(512), 256);
        assert_eq!(FdQuota::default_limit(100), MIN_QUOTA);
        assert!(FdQuota::default_limit(u64::MAX) > 0);
    }
}
