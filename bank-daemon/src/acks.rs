//! Deposit acknowledgements, signed in batches.
//!
//! One thread takes every acknowledgement waiting (up to a limit), signs them with one
//! RSA signature over their Merkle root ([`pmtp_proto::batch`]), and hands each its own
//! inclusion proof. Alone, an acknowledgement is a batch of one (one signature, as
//! before); under load, many deposits share one signature, as many share one commit.
//!
//! A batch holds only acknowledgements of deposits already committed: one whose commit
//! then failed could otherwise share a root with a released one, and a depositor holding
//! both proofs could rebuild a signed acknowledgement of a deposit that never happened.
//! The one exception is [`AckSigner::alone`]: a deposit with no other in progress signs its
//! acknowledgement as a batch of its own while it commits (the root vouches for that
//! acknowledgement only, and it is released only once the commit is durable), so a lone
//! deposit waits for the longer of its signature and its commit, not their sum.

use pmtp_proto::batch::BatchSigned;
use pmtp_proto::keys::SigningKey;
use pmtp_proto::DepositAck;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

type Job = (DepositAck, oneshot::Sender<Result<BatchSigned<DepositAck>, String>>);

/// Handle to the signer thread; the thread stops when the handle is dropped.
pub struct AckSigner {
    jobs: mpsc::Sender<Job>,
    /// Deposits between [`AckSigner::enter`] and their answer.
    deposits: AtomicUsize,
}

/// A deposit in progress, counted until dropped.
pub struct Entered<'a>(&'a AtomicUsize);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AckSigner {
    pub fn start(key: SigningKey, max_batch: usize) -> AckSigner {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        let max_batch = max_batch.clamp(1, pmtp_proto::batch::MAX_BATCH);
        let spawned = std::thread::Builder::new().name("payme-ack-signer".into()).spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let (acks, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match BatchSigned::sign_batch(acks, &key) {
                    Ok(signed) => {
                        for (s, r) in signed.into_iter().zip(replies) {
                            let _ = r.send(Ok(s));
                        }
                    }
                    Err(e) => {
                        for r in replies {
                            let _ = r.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the acknowledgement signer");
        }
        AckSigner { jobs: tx, deposits: AtomicUsize::new(0) }
    }

    /// Counts a deposit in progress until the guard drops.
    pub fn enter(&self) -> Entered<'_> {
        self.deposits.fetch_add(1, Ordering::Relaxed);
        Entered(&self.deposits)
    }

    /// Whether the caller (counted by [`AckSigner::enter`]) is the only deposit in
    /// progress: then a batch of its own costs no more signatures than waiting would, and
    /// it may sign its acknowledgement while it commits ([`sign_alone`]).
    pub fn alone(&self) -> bool {
        self.deposits.load(Ordering::Relaxed) <= 1
    }

    /// Signs `ack` (with whatever else is waiting).
    pub async fn sign(&self, ack: DepositAck) -> Result<BatchSigned<DepositAck>, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((ack, tx)).await.map_err(|_| "the acknowledgement signer stopped".to_owned())?;
        rx.await.map_err(|_| "the acknowledgement signer stopped".to_owned())?
    }
}

/// An acknowledgement being signed as a batch of its own, on the CPU pool.
pub type Presigned =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<BatchSigned<DepositAck>, String>> + Send>>;

/// Starts signing `ack` as a batch of one (see [`AckSigner::alone`]). The caller must not
/// release the result before the deposit it acknowledges is durable.
pub fn sign_alone(bank: &std::sync::Arc<crate::Bank>, ack: DepositAck) -> Presigned {
    let b = bank.clone();
    let job = crate::writer::cpu_start(move || {
        BatchSigned::sign_batch(vec![ack], &b.identity.signing)
            .map_err(|e| e.to_string())
            .and_then(|v| v.into_iter().next().ok_or_else(|| "no acknowledgement signed".to_owned()))
    });
    Box::pin(async move { job.await.map_err(|e| e.to_string())? })
}
