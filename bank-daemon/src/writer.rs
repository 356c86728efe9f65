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
/// A job runs inside the batch's transaction and returns how to finish it once the batch
/// is committed (or not), and whether its savepoint was handled soundly: a job whose work
/// could neither be released nor rolled back to its savepoint leaves the transaction in a
/// state nobody can vouch for, so the whole batch is rolled back.
type Job = Box<dyn FnOnce(&mut dyn Tx) -> (Finish, bool) + Send>;
/// How many times a job runs at most when it keeps failing with retryable errors.
pub const ATTEMPTS: u32 = 4;

/// Whether an error may go away if the same work is run again.
pub trait Retry {
    fn retryable(&self) -> bool;
}

impl Retry for StoreError {
    fn retryable(&self) -> bool {
        StoreError::retryable(self)
    }
}

impl Retry for String {
    fn retryable(&self) -> bool {
        false
    }
}

type Reply<R, E> = oneshot::Receiver<Result<Result<R, E>, WriteError>>;

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
    ///
    /// A job that fails with a retryable error ([`Retry`]: busy, serialization failure,
    /// deadlock, a unique key another node took first) is rolled back to its savepoint and
    /// run again, at most [`ATTEMPTS`] times in all; so `f` may run more than once, and
    /// must do all its work through `tx`.
    pub async fn run<R, E, F>(&self, f: F) -> Result<Result<R, E>, WriteError>
    where
        R: Send + 'static,
        E: Retry + Send + 'static,
        F: FnMut(&mut dyn Tx) -> Result<R, E> + Send + 'static,
    {
        let (job, reply) = job(f);
        self.jobs.send(job).await.map_err(|_| WriteError::Stopped)?;
        reply.await.map_err(|_| WriteError::Stopped)?
    }
}

/// Wraps `f` as a job for a batch: its own savepoint, and its result held back until the
/// batch's commit decides what the caller is told.
fn job<R, E, F>(mut f: F) -> (Job, Reply<R, E>)
where
    R: Send + 'static,
    E: Retry + Send + 'static,
    F: FnMut(&mut dyn Tx) -> Result<R, E> + Send + 'static,
{
    let (reply_tx, reply_rx) = oneshot::channel();
    let job: Job = Box::new(move |tx: &mut dyn Tx| {
        let mut result = None;
        // No savepoint made yet, so nothing of this job is in the transaction.
        let mut sound = true;
        for attempt in 1..=ATTEMPTS {
            if tx.savepoint().is_err() {
                break;
            }
            let r = f(tx);
            let again = match &r {
                Ok(_) => {
                    sound = tx.release_savepoint().is_ok();
                    false
                }
                Err(e) => {
                    sound = tx.rollback_to_savepoint().is_ok();
                    sound && e.retryable() && attempt < ATTEMPTS
                }
            };
            result = Some(r);
            if !again {
                break;
            }
            tracing::debug!(attempt, "retrying a write after a conflict");
        }
        let finish: Finish = Box::new(move |committed: Result<(), String>| {
            let out = match (result, committed) {
                (Some(Err(e)), Ok(())) => Ok(Err(e)),
                (Some(Ok(r)), Ok(())) => Ok(Ok(r)),
                (None, Ok(())) => Err(WriteError::Commit("savepoint failed; nothing was done".into())),
                (_, Err(msg)) => Err(WriteError::Commit(msg)),
            };
            let _ = reply_tx.send(out);
        });
        (finish, sound)
    });
    (job, reply_rx)
}

fn run_batch(store: &mut dyn Store, batch: &mut Vec<Job>) {
    let mut finishers = Vec::with_capacity(batch.len());
    let outcome: Result<(), StoreError> = (|| {
        let mut tx = store.begin()?;
        let mut sound = true;
        for job in batch.drain(..) {
            let (finish, ok) = job(tx.as_mut());
            finishers.push(finish);
            sound &= ok;
        }
        if !sound {
            tx.rollback()?;
            return Err(StoreError::SavepointFailed);
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

/// Runs CPU-bound work (RSA, X25519, Argon2) on the CPU pool, one thread per core, so the
/// async workers stay free to accept and read.
pub async fn cpu<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, CpuJobFailed> {
    cpu_start(f).await
}

/// As [`cpu`], but the job is queued now, before the returned future is first polled: the
/// caller can do other work (a commit) while it runs. Dropping the future throws the
/// result away; the job still runs.
pub fn cpu_start<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> impl std::future::Future<Output = Result<R, CpuJobFailed>> + Send {
    let (tx, rx) = oneshot::channel();
    // A job that panics drops its sender: the caller gets `CpuJobFailed`.
    let job: CpuTask = Box::new(move || {
        let _ = tx.send(f());
    });
    if let Err(std::sync::mpsc::SendError(job)) = pool().send(job) {
        // No pool thread could be started: run the job here rather than lose it.
        job();
    }
    async move { rx.await.map_err(|_| CpuJobFailed) }
}

type CpuTask = Box<dyn FnOnce() + Send>;

/// The CPU pool: one thread per core, each waiting on a shared queue. Unlike a
/// work-stealing pool, an idle thread sleeps at once instead of spinning (yielding in a
/// loop) for more work, which on a small machine takes the core from the very processes
/// (wallets, the database) the bank is waiting for.
fn pool() -> &'static std::sync::mpsc::Sender<CpuTask> {
    static POOL: std::sync::OnceLock<std::sync::mpsc::Sender<CpuTask>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<CpuTask>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("payme-cpu-{i}")).spawn(move || loop {
                // The lock is held only while taking a job, never while running it.
                let next = match rx.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                match next {
                    Ok(job) => {
                        // A panicking job (a bug) must not take the thread with it.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                    Err(_) => return,
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a CPU pool thread");
            }
        }
        tx
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::SerialRow;
    use pmtp_proto::keys::KeyId;
    use pmtp_proto::{Amount, Serial};

    fn row(n: u8) -> SerialRow {
        SerialRow { serial: Serial([n; 16]), value: Amount::new(u64::from(n)), expiry: 100, key_id: KeyId([0; 8]) }
    }

    fn insert(n: u8) -> impl FnMut(&mut dyn Tx) -> Result<(), String> + Send + 'static {
        move |tx| tx.issue(&[row(n)]).map(|_| ()).map_err(|e| e.to_string())
    }

    fn serials(store: &mut SqliteStore) -> u64 {
        store.begin_read().unwrap().circulation().unwrap().count
    }

    /// One batch, one transaction: a job that refuses is rolled back to its savepoint
    /// alone; the jobs before and after it commit, and each caller hears its own outcome.
    #[test]
    fn a_refused_job_in_a_batch_leaves_the_others_committed() {
        let mut store = SqliteStore::in_memory().unwrap();
        let (a, ra) = job(insert(1));
        let (b, rb) = job(|tx: &mut dyn Tx| {
            tx.issue(&[row(2)]).unwrap();
            Err::<(), String>("refused after writing".into())
        });
        let (c, rc) = job(insert(3));
        run_batch(&mut store, &mut vec![a, b, c]);
        assert!(matches!(ra.blocking_recv().unwrap(), Ok(Ok(()))));
        assert!(matches!(rb.blocking_recv().unwrap(), Ok(Err(ref e)) if e == "refused after writing"));
        assert!(matches!(rc.blocking_recv().unwrap(), Ok(Ok(()))));
        assert_eq!(serials(&mut store), 2, "1 and 3 kept, the refused job's 2 rolled back");
    }

    /// A job that leaves its savepoint unusable (here it releases it itself, so the writer
    /// can neither keep nor undo its work alone): the whole group is rolled back, and every
    /// caller is told nothing was committed, which is the truth.
    #[test]
    fn a_failing_savepoint_rolls_back_the_group_and_says_so() {
        let mut store = SqliteStore::in_memory().unwrap();
        let (a, ra) = job(insert(1));
        let (b, rb) = job(|tx: &mut dyn Tx| {
            tx.issue(&[row(2)]).unwrap();
            tx.release_savepoint().unwrap();
            Err::<(), String>("refused".into())
        });
        let (c, rc) = job(insert(3));
        run_batch(&mut store, &mut vec![a, b, c]);
        for r in [ra, rc] {
            assert!(matches!(r.blocking_recv().unwrap(), Err(WriteError::Commit(_))));
        }
        assert!(matches!(rb.blocking_recv().unwrap(), Err(WriteError::Commit(_))));
        assert_eq!(serials(&mut store), 0, "nothing of the group was committed");
        // The writer goes on: the next batch commits.
        let (d, rd) = job(insert(4));
        run_batch(&mut store, &mut vec![d]);
        assert!(matches!(rd.blocking_recv().unwrap(), Ok(Ok(()))));
        assert_eq!(serials(&mut store), 1);
    }

    /// A job that fails with a retryable error (here a unique key another writer took) is
    /// rolled back to its savepoint and run again; one that keeps failing stops after
    /// `ATTEMPTS` runs; a refusal that is not retryable runs once.
    #[test]
    fn retryable_failures_are_run_again_and_bounded() {
        let mut store = SqliteStore::in_memory().unwrap();
        let mut runs = 0;
        let (a, ra) = job(move |tx: &mut dyn Tx| {
            runs += 1;
            tx.issue(&[row(10 + runs)])?;
            if runs < 3 {
                return Err(StoreError::Db(crate::store::DbError::new(
                    crate::store::DbErrorKind::Conflict,
                    "deadlock",
                )));
            }
            Ok(runs)
        });
        let forever = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let f = forever.clone();
        let (b, rb) = job(move |_: &mut dyn Tx| {
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(StoreError::Db(crate::store::DbError::new(crate::store::DbErrorKind::Busy, "busy")))
        });
        let (c, rc) = job(|_: &mut dyn Tx| Err::<(), String>("refused".into()));
        run_batch(&mut store, &mut vec![a, b, c]);
        assert!(matches!(ra.blocking_recv().unwrap(), Ok(Ok(3))));
        assert!(matches!(rb.blocking_recv().unwrap(), Ok(Err(StoreError::Db(_)))));
        assert_eq!(forever.load(std::sync::atomic::Ordering::SeqCst), ATTEMPTS);
        assert!(matches!(rc.blocking_recv().unwrap(), Ok(Err(_))));
        assert_eq!(serials(&mut store), 1, "the failed attempts' writes were rolled back");
    }
}
