//! The PMTP listener for other wallets: merchants asking this wallet for payment.
//!
//! Same hygiene as the bank: a connection permit before `accept`, an idle deadline, a
//! maximum frame size, and graceful shutdown between requests.

use crate::Wallet;
use futures::{SinkExt, StreamExt};
use payme_node::net::accept_loop;
use pmtp_proto::codec::{CodecError, PmtpCodec};
use pmtp_proto::message::Kind;
use pmtp_proto::{AskPaymentRequest, Frame, Message, ReasonCode};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub async fn serve(
    w: Arc<Wallet>,
    listener: TcpListener,
    token: CancellationToken,
    tracker: TaskTracker,
    shutdown: impl Future<Output = ()>,
) {
    let l = &w.config.limits;
    let max = l.net.connections();
    accept_loop(listener, max, &tracker, shutdown, |stream| {
        let (w, token) = (w.clone(), token.clone());
        async move { connection(w, stream, token).await }
    })
    .await;
}

async fn connection(w: Arc<Wallet>, stream: TcpStream, token: CancellationToken) {
    let Ok(peer) = stream.peer_addr().map(|a| a.ip()) else { return };
    let _ = stream.set_nodelay(true);
    let idle = Duration::from_secs(w.config.limits.net.idle_timeout_secs.max(1));
    let mut conn = Framed::new(stream, PmtpCodec::new(w.config.limits.net.max_frame_bytes));
    let next = tokio::select! {
        _ = token.cancelled() => return,
        n = tokio::time::timeout(idle, conn.next()) => n,
    };
    let frame = match next {
        Ok(Some(Ok(f))) => f,
        Ok(Some(Err(CodecError::Frame(e)))) => {
            payme_node::net::refuse_bad_frame(&mut conn, &e, idle).await;
            return;
        }
        _ => return,
    };
    if frame.id == AskPaymentRequest::ID {
        crate::buyer::on_ask_payment(w, frame, peer, &mut conn).await;
    } else if frame.id.kind() == Kind::Request {
        let id = frame.id.message_type().id(Kind::Refusal);
        if let Ok(f) =
            Frame::plain_refusal(id, ReasonCode::UNEXPECTED_MESSAGE, &format!("a wallet does not serve {}", frame.id))
        {
            let _ = conn.send(f).await;
        }
    }
}
