//! Deposit acknowledgements, signed in batches.
//!
//! One thread takes every acknowledgement waiting (up to a limit), signs them with one
//! RSA signature over their Merkle root ([`pmtp_proto::batch`]), and hands each its own
//! inclusion proof. Alone, an acknowledgement is a batch of one (one signature, as
//! before); under load, many deposits share one signature, as many share one commit.

use pmtp_proto::batch::BatchSigned;
use pmtp_proto::keys::SigningKey;
use pmtp_proto::DepositAck;
use tokio::sync::{mpsc, oneshot};

type Job = (DepositAck, oneshot::Sender<Result<BatchSigned<DepositAck>, String>>);

/// Handle to the signer thread; the thread stops when the handle is dropped.
pub struct AckSigner {
    jobs: mpsc::Sender<Job>,
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
        AckSigner { jobs: tx }
    }

    /// Signs `ack` (with whatever else is waiting).
    pub async fn sign(&self, ack: DepositAck) -> Result<BatchSigned<DepositAck>, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((ack, tx)).await.map_err(|_| "the acknowledgement signer stopped".to_owned())?;
        rx.await.map_err(|_| "the acknowledgement signer stopped".to_owned())?
    }
}
