//! The one thread that writes to the database, committing requests in groups.
//!
//! Async handlers never touch the database on a tokio worker (a blocked worker can stall
//! the very task that holds a lock it waits for). Instead they send a job to this thread.
//! The thread takes every job waiting (up to a batch limit), runs each inside its own
//! savepoint in one transaction (a job that fails is rolled back to its savepoint alone),
//! commits once (one fsync for the whole group), and only then sends each job its result:
//! a reply never leaves before the transaction that it reports is durable.

use crate::store::{Store, StoreError, Tx};
use tokio::sync::{mpsc, oneshot};

type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut dyn Tx) -> Finish + Send>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the database writer has stopped")]
    Stopped,
    #[error("commit failed: {0}")]
    Commit(String),
}

/// Handle to the writer thread. Cloning is cheap; the thread stops when every handle is gone
/// and the queue is empty.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// Joins the writer thread when it has finished its queue.
pub struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl WriterThread {
    /// Waits for the thread to finish (after every [`Writer`] handle is dropped).
    pub fn join(mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread over `store`, committing at most `max_batch` jobs at a time.
    pub fn start(mut store: Box<dyn Store>, max_batch: usize, queue: usize) -> (Writer, WriterThread) {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let max_batch = max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("payme-db-writer".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(max_batch);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    run_batch(store.as_mut(), &mut batch);
                }
                // Every handle is gone: the daemon is stopping cleanly.
                match store.checkpoint() {
                    Ok(()) => tracing::info!("database checkpointed"),
                    Err(e) => tracing::warn!(error = %e, "checkpoint at stop failed"),
                }
            })
            .ok();
        (Writer { jobs: tx }, WriterThread(handle))
    }

    /// Runs `f` in the next group transaction. `Ok(Ok(r))`: `f` succeeded and its work is
    /// durable. `Ok(Err(e))`: `f` refused and nothing it did was kept. `Err`: the outcome
    /// was not committed (the writer stopped or the commit failed).
    pub async fn run<R, E, F>(&self, f: F) -> Result<Result<R, E>, WriteError>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<R, E> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |tx: &mut dyn Tx| {
            let result = match tx.savepoint() {
                Ok(()) => Some(f(tx)),
                Err(_) => None,
            };
            let kept = match &result {
                Some(Ok(_)) => tx.release_savepoint().is_ok(),
                Some(Err(_)) => tx.rollback_to_savepoint().is_ok(),
                None => false,
            };
            Box::new(move |committed: Result<(), String>| {
                let out = match (result, committed, kept) {
                    (Some(Err(e)), _, _) => Ok(Err(e)),
                    (Some(Ok(r)), Ok(()), true) => Ok(Ok(r)),
                    (Some(Ok(_)), Ok(()), false) => Err(WriteError::Commit("savepoint failed".into())),
                    (_, Err(msg), _) => Err(WriteError::Commit(msg)),
                    (None, Ok(()), _) => Err(WriteError::Commit("savepoint failed".into())),
                };
                let _ = reply_tx.send(out);
            })
        });
        self.jobs.send(job).await.map_err(|_| WriteError::Stopped)?;
        reply_rx.await.map_err(|_| WriteError::Stopped)?
    }
}

fn run_batch(store: &mut dyn Store, batch: &mut Vec<Job>) {
    let mut finishers = Vec::with_capacity(batch.len());
    let outcome: Result<(), StoreError> = (|| {
        let mut tx = store.begin()?;
        for job in batch.drain(..) {
            finishers.push(job(tx.as_mut()));
        }
        tx.commit()
    })();
    // Jobs not run because `begin` failed are dropped: their callers see `Stopped`.
    batch.clear();
    let outcome = outcome.map_err(|e| e.to_string());
    if let Err(e) = &outcome {
        tracing::error!(error = %e, jobs = finishers.len(), "group commit failed; no job in it took effect");
    }
    for f in finishers {
        f(outcome.clone());
    }
}

/// Read-only connections for queries, used on tokio's blocking pool.
pub struct Readers {
    open: Box<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>,
    idle: std::sync::Mutex<Vec<Box<dyn Store>>>,
}

impl Readers {
    pub fn new(open: Box<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>) -> Self {
        Readers { open, idle: std::sync::Mutex::new(Vec::new()) }
    }

    /// Runs `f` in a read transaction on a pooled connection, off the async workers.
    pub async fn read<R, F>(self: &std::sync::Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = me.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            let mut store = match pooled {
                Some(s) => s,
                None => (me.open)()?,
            };
            let result = (|| {
                let mut tx = store.begin_read()?;
                let r = f(tx.as_mut())?;
                tx.rollback()?;
                Ok(r)
            })();
            if let Ok(mut idle) = me.idle.lock() {
                if idle.len() < 16 {
                    idle.push(store);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Task(format!("reader: {e}")))?
    }
}

/// CPU-bound work panicked (a bug, never peer input): the request gets an internal refusal.
#[derive(Debug, thiserror::Error)]
#[error("CPU job failed")]
pub struct CpuJobFailed;

/// Runs CPU-bound work (RSA, X25519, Argon2) on the rayon pool, one thread per core, so the
/// async workers stay free to accept and read.
pub async fn cpu<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, CpuJobFailed> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| CpuJobFailed)
}
