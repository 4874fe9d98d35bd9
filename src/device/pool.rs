//! A fixed pool of worker threads that run request jobs from every queue concurrently, fed by
//! a bounded queue. Each worker unshares CLONE_FS so credential and umask changes stay
//! per-thread.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::log_limit::error_limited;

/// One unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// The worker pool.
pub struct Pool {
    tx: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Per-thread setup shared by pool workers and one-off lock waiters.
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
        let (tx, rx) = sync_channel::<Job>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx = Arc::clone(&rx);
            let t = std::thread::Builder::new().name(format!("daxfsd-worker-{i}")).spawn(move || worker(&rx))?;
            threads.push(t);
        }
        Ok(Pool { tx: Mutex::new(Some(tx)), threads: Mutex::new(threads) })
    }

    /// Queues a job; runs it inline if the pool is shutting down. The caller sizes the queue
    /// so it never fills (the device queues one job per claimed head). Should it fill anyway,
    /// the caller waits for a free place: safe, because no caller holds a lock a worker needs
    /// (the vring threads pop a chain and release the vring lock before they submit it).
    pub fn submit(&self, job: Job) {
        let tx = self.tx.lock().ok().and_then(|g| g.clone());
        let Some(tx) = tx else { return job() };
        let job = match tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Disconnected(job)) => return job(),
            Err(TrySendError::Full(job)) => job,
        };
        error_limited!("worker queue full; waiting for a worker (a daemon bug: it is sized to never fill)");
        if let Err(e) = tx.send(job) {
            (e.0)();
        }
    }

    /// Stops accepting jobs and joins the workers after they drain the queue.
    pub fn shutdown(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    prepare_worker_thread();
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
