//! The accept loop and per-connection loop.
//!
//! A connection permit is taken before `accept`, so at most `max_connections` are served;
//! further clients wait in the kernel's backlog. Each connection reads one frame at a time
//! with an idle deadline, answers it within the request deadline, and stops between
//! requests when shutdown begins: in-flight requests always finish. A frame the codec
//! refuses (bad header, oversize) gets a plain refusal where one fits, then the
//! connection is closed; the daemon keeps serving everyone else.

use crate::handlers::dispatch;
use crate::Bank;
use futures::{SinkExt, StreamExt};
use payme_node::net::accept_loop;
use pmtp_proto::codec::{CodecError, PmtpCodec};
use pmtp_proto::frame::Frame;
use pmtp_proto::ReasonCode;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves until `shutdown` completes, then waits for in-flight requests to finish.
pub async fn serve(bank: Arc<Bank>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let limits = &bank.config.limits;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Expired serials and nonces are purged, and interrupted issues finished, in the
    // background.
    {
        let (bank, token) = (bank.clone(), token.clone());
        let every = Duration::from_secs(bank.config.limits.purge_interval_secs.max(1));
        tracker.spawn(async move {
            loop {
                if let Err(e) = bank.purge_expired(bank.clock.now()).await {
                    tracing::warn!(reason = %e.text, "purge failed; will retry");
                }
                // Withdrawals and exchanges paid for but left unsigned by a node that
                // stopped (this one before a restart, or another on the same database).
                let now = bank.clock.now();
                if let Err(e) = crate::handlers::resume_issues(&bank, now, crate::handlers::RESUME_AFTER_SECS).await {
                    tracing::warn!(reason = %e.text, "finishing interrupted requests failed; will retry");
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    // Coins signed while their request committed are written over their stored bodies.
    {
        let (bank, token) = (bank.clone(), token.clone());
        tracker.spawn(async move {
            loop {
                let stopping = tokio::select! {
                    _ = token.cancelled() => true,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                };
                if let Err(e) = crate::handlers::write_back_signed(&bank).await {
                    tracing::warn!(reason = %e.text, "writing back signed coins failed; their retries sign again");
                }
                if stopping {
                    break;
                }
            }
        });
    }

    // Deposits waiting for a peer bank are retried until the peer answers.
    if !bank.peers.is_empty() {
        let (bank, token) = (bank.clone(), token.clone());
        let every = Duration::from_secs(bank.config.limits.clearing_retry_secs.max(1));
        tracker.spawn(async move {
            loop {
                crate::clearing::resolve_pending(&bank).await;
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    let max = limits.net.connections();
    accept_loop(listener, max, &tracker, shutdown, |stream| {
        let (bank, token) = (bank.clone(), token.clone());
        async move { connection(bank, stream, token).await }
    })
    .await;
    tracing::info!("shutting down: finishing in-flight requests");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    // Requests that finished after the write-back loop's last round.
    if let Err(e) = crate::handlers::write_back_signed(&bank).await {
        tracing::warn!(reason = %e.text, "writing back signed coins failed; their retries sign again");
    }
}

async fn connection(bank: Arc<Bank>, stream: TcpStream, token: CancellationToken) {
    let peer = match stream.peer_addr() {
        Ok(a) => a.ip(),
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let limits = &bank.config.limits;
    let idle = Duration::from_secs(limits.net.idle_timeout_secs.max(1));
    let deadline = Duration::from_secs(limits.request_timeout_secs.max(1));
    let mut framed = Framed::new(stream, PmtpCodec::new(limits.net.max_frame_bytes));
    loop {
        let next = tokio::select! {
            _ = token.cancelled() => return,
            n = tokio::time::timeout(idle, framed.next()) => n,
        };
        let frame = match next {
            Err(_) | Ok(None) => return,
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(CodecError::Frame(e)))) => {
                tracing::info!(%peer, error = %e, "bad frame; closing");
                payme_node::net::refuse_bad_frame(&mut framed, &e, idle).await;
                return;
            }
            Ok(Some(Err(CodecError::Io(_)))) => return,
        };
        let request = frame.id;
        let reply = match tokio::time::timeout(deadline, dispatch(&bank, frame, peer)).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(%peer, %request, "request timed out");
                let id = request.message_type().id(pmtp_proto::message::Kind::Refusal);
                match Frame::plain_refusal(
                    id,
                    ReasonCode::TIMEOUT,
                    "the bank did not finish in time; the outcome is unknown",
                ) {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
        };
        if tokio::time::timeout(idle, framed.send(reply)).await.map(|r| r.is_err()).unwrap_or(true) {
            return;
        }
    }
}
