//! A fixed pool of worker threads that run request jobs from every queue concurrently, fed by
//! a bounded queue. Each worker unshares CLONE_FS so credential and umask changes stay
//! per-thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::log_limit::error_limited;

/// One unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue the workers take jobs from. A worker waits on `work` without holding the lock,
/// and a job wakes one worker only when one waits: handing a request over costs one futex
/// wake when a worker sleeps, and none when one is busy and will look again.
struct Queue {
    state: Mutex<QueueState>,
    /// A job was queued (or the pool shuts down).
    work: Condvar,
    /// A place in the queue came free.
    room: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers waiting on `work`.
    idle: usize,
    /// Submitters waiting on `room`.
    full_waiters: usize,
    shutdown: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The worker pool.
pub struct Pool {
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Per-thread setup shared by pool workers, one-off lock waiters and queue threads that run
/// requests inline.
pub fn prepare_worker_thread() {
    if let Err(e) = crate::fs::sys::unshare_fs() {
        // Per thread, and a guest's SETLKW starts lock waiter threads: rate-limited.
        error_limited!("unshare(CLONE_FS) failed, umask changes will leak between threads: {e}");
    }
    // The guest applies its umask to modes itself (or sends it with POSIX ACLs).
    crate::fs::sys::umask(0);
}

impl Pool {
    /// Starts `n` workers (at least one) behind a queue of `capacity` jobs (at least one).
    pub fn new(n: usize, capacity: usize) -> std::io::Result<Pool> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
        });
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let q = Arc::clone(&queue);
            let t = std::thread::Builder::new().name(format!("daxfsd-worker-{i}")).spawn(move || worker(&q))?;
            threads.push(t);
        }
        Ok(Pool { queue, threads: Mutex::new(threads) })
    }

    /// Queues a job; runs it inline if the pool is shutting down. The caller sizes the queue
    /// so it never fills (the device queues one job per claimed head). Should it fill anyway,
    /// the caller waits for a free place: safe, because no caller holds a lock a worker needs
    /// (the vring threads pop a chain and release the vring lock before they submit it).
    pub fn submit(&self, job: Job) {
        let q = &self.queue;
        let mut st = q.lock();
        if st.shutdown {
            drop(st);
            return job();
        }
        if st.jobs.len() >= q.capacity {
            error_limited!("worker queue full; waiting for a worker (a daemon bug: it is sized to never fill)");
            st.full_waiters += 1;
            while st.jobs.len() >= q.capacity && !st.shutdown {
                st = q.room.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            st.full_waiters -= 1;
            if st.shutdown {
                drop(st);
                return job();
            }
        }
        st.jobs.push_back(job);
        let wake = st.idle > 0;
        drop(st);
        if wake {
            q.work.notify_one();
        }
    }

    /// Stops accepting jobs and joins the workers after they drain the queue.
    pub fn shutdown(&self) {
        self.queue.lock().shutdown = true;
        self.queue.work.notify_all();
        self.queue.room.notify_all();
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn worker(q: &Queue) {
    prepare_worker_thread();
    loop {
        let job = {
            let mut st = q.lock();
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    if st.full_waiters > 0 {
                        q.room.notify_one();
                    }
                    break job;
                }
                if st.shutdown {
                    return;
                }
                st.idle += 1;
                st = q.work.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
                st.idle -= 1;
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn every_job_runs_and_shutdown_drains_the_queue() {
        let pool = Pool::new(3, 1000).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..500 {
            let d = Arc::clone(&done);
            pool.submit(Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }));
        }
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 500);
        // After shutdown a job runs on the caller's thread.
        let d = Arc::clone(&done);
        pool.submit(Box::new(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(done.load(Ordering::SeqCst), 501);
    }

    #[test]
    fn workers_run_jobs_at_once_side_by_side() {
        // Two jobs that each wait for the other: they finish only if two workers run them
        // together.
        let pool = Pool::new(2, 8).unwrap();
        let (a_tx, a_rx) = mpsc::channel::<()>();
        let (b_tx, b_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let d1 = done_tx.clone();
        pool.submit(Box::new(move || {
            a_tx.send(()).unwrap();
            d1.send(b_rx.recv_timeout(Duration::from_secs(5)).is_ok()).unwrap();
        }));
        pool.submit(Box::new(move || {
            b_tx.send(()).unwrap();
            done_tx.send(a_rx.recv_timeout(Duration::from_secs(5)).is_ok()).unwrap();
        }));
        assert!(done_rx.recv().unwrap() && done_rx.recv().unwrap());
        pool.shutdown();
    }

    #[test]
    fn a_full_queue_makes_the_submitter_wait_for_room() {
        let pool = Arc::new(Pool::new(1, 1).unwrap());
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        // The worker is busy until `go`; one job fills the queue; a third submit must wait.
        pool.submit(Box::new(move || {
            let _ = go_rx.recv();
        }));
        while !pool.queue.lock().jobs.is_empty() || pool.queue.lock().idle > 0 {
            std::thread::yield_now();
        }
        let d = Arc::clone(&done);
        pool.submit(Box::new(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }));
        let (p, d) = (Arc::clone(&pool), Arc::clone(&done));
        let third = std::thread::spawn(move || {
            p.submit(Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }));
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!third.is_finished(), "the submit into a full queue did not wait");
        go_tx.send(()).unwrap();
        third.join().unwrap();
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }
}
