//! The local control socket: one JSON object per line in each direction.
//!
//! The socket file is created with mode 0600 and every connection's peer credentials are
//! checked (SO_PEERCRED): only the user running the wallet may use it. The `payme-wallet`
//! subcommands and the CGI program are its clients. A connection silent for
//! `limits.control_idle_timeout_secs` between requests is closed, and a failing `accept`
//! (out of file descriptors) pauses with a bounded backoff instead of spinning.
//!
//! Request: `{"cmd": "balance"}`, `{"cmd": "collect", "from": "host:port", "amount": 100,
//! "description": "..."}`, `{"cmd": "offer", ...}` and `{"cmd": "settle", ...}` (in band over
//! HTTP, see [`crate::settle`]), ... (see [`Request`]). Answer: `{"ok": true, "result": ...}` or
//! `{"ok": false, "code": 43, "label": "not_enough_money", "error": "..."}`.

use crate::ops;
use crate::store::{self, CoinState, Direction};
use crate::{checked_amount, Wallet, WalletError};
use futures::{SinkExt, StreamExt};
use pmtp_proto::{Amount, ReasonCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Balance,
    Withdraw {
        bank: Option<String>,
        amount: u64,
        password: String,
    },
    Deposit {
        bank: Option<String>,
        amount: Option<u64>,
    },
    Exchange {
        bank: Option<String>,
    },
    Statement {
        bank: Option<String>,
        since: Option<u64>,
    },
    Pending,
    Approve {
        id: u64,
    },
    Refuse {
        id: u64,
    },
    History,
    Merchants,
    Forget {
        name: String,
    },
    /// Merchant side: collect `amount` from the wallet at `from`. `order` (32 hex digits)
    /// names the order (drawn by the wallet when absent); `item` is recorded with it.
    Collect {
        from: String,
        amount: u64,
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<String>,
    },
    /// Merchant side: the paid order a receipt re-opens. The receipt is hex (as
    /// `history` shows it) or a `PAYMENT-RESPONSE` header value (`v1.`...).
    Claim {
        receipt: String,
    },
    /// Merchant side, in band over HTTP: a signed offer for one order of `resource` at
    /// `origin`, for a 402's `PAYMENT-REQUIRED` header. Writes nothing.
    Offer {
        origin: String,
        resource: String,
        amount: u64,
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<String>,
    },
    /// Merchant side, in band over HTTP: settle the `PAYMENT-SIGNATURE` header value
    /// `payment` a shop received for `item` at price `price` (its catalog's), requested
    /// as `resource` at `origin`.
    Settle {
        payment: String,
        origin: String,
        resource: String,
        item: String,
        price: u64,
    },
    /// This wallet's name and key fingerprint (a shop shows them on its pages).
    Identity,
    /// Buyer side: payment `id`'s receipt, as a token a shop takes back (`?receipt=`).
    Receipt {
        id: i64,
    },
    /// A one-time link that logs a browser into the wallet window (`payme-wallet ui`).
    UiLogin,
    /// Buyer side: fetch `url`, paying over HTTP 402 if it asks (`payme-wallet pay`). The
    /// body is written to `output` (an absolute path) or returned base64.
    PayUrl {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
}

/// Reads an order id given as 32 hex digits.
pub fn parse_order(s: &str) -> Result<store::OrderId, WalletError> {
    let bad = || WalletError::new(ReasonCode::MALFORMED, "an order id is 32 hex digits");
    hex::decode(s.trim()).ok().and_then(|b| <[u8; 16]>::try_from(b).ok()).ok_or_else(bad)
}

/// Binds the control socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A live daemon holds the data-dir lock, so a socket file here is stale.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The pause after a failed `accept` (out of file descriptors, EMFILE, and the like):
/// doubling from 10 ms to at most 1 s while failures last, back to nothing after a success.
/// Retrying at once would spin a core, since the cause persists until a descriptor closes.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<std::time::Duration>,
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);

    /// The pause to take after one more failure.
    pub fn failed(&mut self) -> std::time::Duration {
        let next = self.pause.map_or(Self::FIRST, |p| p.saturating_mul(2).min(Self::MAX));
        self.pause = Some(next);
        next
    }

    pub fn succeeded(&mut self) {
        self.pause = None;
    }
}

pub async fn serve(w: Arc<Wallet>, listener: UnixListener, token: CancellationToken, tracker: TaskTracker) {
    let me = payme_node::users::current_uid();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                let pause = backoff.failed();
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "control socket accept failed; pausing");
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        if me.is_none() || uid != me {
            tracing::warn!(?uid, "control connection from another user refused");
            // One line saying why, then the connection closes: the person sees which
            // user may use this wallet instead of a reset connection.
            let owner = me.map(payme_node::users::user_name).unwrap_or_else(|| "its owner".into());
            let caller = uid.map(payme_node::users::user_name).unwrap_or_else(|| "an unknown user".into());
            let line = json!({"ok": false, "code": ReasonCode::UNEXPECTED_MESSAGE.0, "label": "wrong_user",
                "error": format!("this wallet belongs to {owner} and only answers {owner}; you are {caller}: run the command as {owner}")});
            tracker.spawn(async move {
                // The request is read first (and not acted on), so the answer is not lost
                // to a connection reset by unread data.
                let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    let _ = lines.next().await;
                    lines.send(line.to_string()).await
                })
                .await;
            });
            continue;
        }
        let (w, token) = (w.clone(), token.clone());
        tracker.spawn(async move { client_loop(w, stream, token).await });
    }
}

async fn client_loop(w: Arc<Wallet>, stream: UnixStream, token: CancellationToken) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    // Between requests only: a request being handled (a collect waiting for a buyer) is
    // bounded by its own deadlines.
    let idle = std::time::Duration::from_secs(w.config.limits.control_idle_timeout_secs.max(1));
    loop {
        let line = tokio::select! {
            _ = token.cancelled() => return,
            l = tokio::time::timeout(idle, lines.next()) => match l {
                Ok(l) => l,
                Err(_) => {
                    tracing::debug!("control connection idle; closed");
                    return;
                }
            },
        };
        let answer = match line {
            Some(Ok(l)) => match serde_json::from_str::<Request>(&l) {
                Ok(req) => match handle(&w, req).await {
                    Ok(result) => json!({"ok": true, "result": result}),
                    Err(e) => json!({"ok": false, "code": e.code.0, "label": e.code.label(), "error": e.text}),
                },
                Err(e) => {
                    json!({"ok": false, "code": ReasonCode::MALFORMED.0, "label": "malformed", "error": format!("bad request: {e}")})
                }
            },
            _ => return,
        };
        if lines.send(answer.to_string()).await.is_err() {
            return;
        }
    }
}

fn bank_or_default(w: &Wallet, bank: Option<String>, need_account: bool) -> Result<String, WalletError> {
    match bank {
        Some(b) => w.bank(&b).map(|_| b),
        None => w.default_bank(need_account),
    }
}

/// Answers one request: the control socket's clients and the wallet window ([`crate::ui`])
/// both come here.
pub(crate) async fn handle(w: &Arc<Wallet>, req: Request) -> Result<Value, WalletError> {
    match req {
        Request::Balance => {
            let b = w.db.call(|c, vault| store::balance(c, vault)).await?;
            let mut banks: std::collections::BTreeMap<String, Value> = Default::default();
            let mut available = 0u64;
            for (bank, value, count, state) in b.coins {
                let e = bank_entry(&mut banks, &bank);
                let sum = value.saturating_mul(count);
                if let Some(v) = e.get_mut(state.as_str()) {
                    *v = json!(v.as_u64().unwrap_or(0).saturating_add(sum));
                }
                if state == CoinState::Available {
                    available = available.saturating_add(sum);
                    if let Some(Value::Array(a)) = e.get_mut("coins") {
                        a.push(json!({"value": value, "count": count}));
                    }
                }
            }
            // Damaged coins: kept and shown apart, with the value their clear columns
            // claim (unverifiable), never counted as available.
            let (mut q_coins, mut q_value) = (0u64, 0u64);
            for (bank, count, value) in b.quarantined {
                let e = bank_entry(&mut banks, &bank);
                e["quarantined"] = json!(value);
                e["quarantined_coins"] = json!(count);
                q_coins = q_coins.saturating_add(count);
                q_value = q_value.saturating_add(value);
            }
            // While the start-up recovery runs, pending values may still move.
            let recovering = !w.recovered.load(std::sync::atomic::Ordering::SeqCst);
            Ok(json!({"total_available": available, "recovering": recovering,
                      "total_quarantined": q_value, "quarantined_coins": q_coins,
                      "banks": banks.into_values().collect::<Vec<_>>()}))
        }
        Request::Withdraw { bank, amount, password } => {
            let bank = bank_or_default(w, bank, true)?;
            let balance = ops::withdraw(w, &bank, checked_amount(amount)?, &password).await?;
            Ok(json!({"bank": bank, "amount": amount, "account_balance": balance.minor_units()}))
        }
        Request::Deposit { bank, amount } => {
            let bank = bank_or_default(w, bank, true)?;
            let done = ops::deposit(w, &bank, amount.map(checked_amount).transpose()?).await?;
            Ok(json!({"bank": bank, "amount": done.minor_units()}))
        }
        Request::Exchange { bank } => {
            let bank = bank_or_default(w, bank, false)?;
            let done = ops::exchange_all(w, &bank).await?;
            Ok(json!({"bank": bank, "amount": done.minor_units()}))
        }
        Request::Statement { bank, since } => {
            let bank = bank_or_default(w, bank, true)?;
            let entry = w.bank(&bank)?;
            let (account, name) =
                entry.account.clone().ok_or_else(|| WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, "no account"))?;
            let s = entry.client.statement(&w.identity, account, &name, since).await?;
            let entries: Vec<Value> = s
                .entries
                .iter()
                .map(|e| {
                    json!({"id": e.id, "time": e.time, "kind": format!("{:?}", e.kind), "credit": e.kind.is_credit(),
                           "amount": e.amount.minor_units(), "balance_after": e.balance_after.minor_units(), "memo": e.memo.escaped()})
                })
                .collect();
            Ok(
                json!({"bank": bank, "account": account.0, "balance": s.balance.minor_units(), "truncated": s.truncated, "entries": entries}),
            )
        }
        Request::Pending => {
            let now = w.now();
            let p = w.pending.lock().map_err(|_| WalletError::new(ReasonCode::INTERNAL, "internal error"))?;
            Ok(Value::Array(
                p.values()
                    .map(|r| {
                        json!({"id": r.id, "merchant": r.merchant, "fingerprint": r.fingerprint, "new_merchant": r.new_merchant,
                               "description": r.description, "amount": r.amount, "peer": r.peer.to_string(), "order": r.order,
                               "origin": r.origin,
                               "waiting_secs": now.saturating_sub(r.created)})
                    })
                    .collect(),
            ))
        }
        Request::Approve { id } | Request::Refuse { id } => {
            let approve = matches!(req, Request::Approve { .. });
            let r = w
                .pending
                .lock()
                .map_err(|_| WalletError::new(ReasonCode::INTERNAL, "internal error"))?
                .remove(&id)
                .ok_or_else(|| {
                    WalletError::new(
                        ReasonCode::UNEXPECTED_MESSAGE,
                        format!("no pending request {id} (see payme-wallet pending)"),
                    )
                })?;
            let _ = r.answer.send(approve);
            Ok(json!({"id": id, "approved": approve}))
        }
        Request::History => history(w).await,
        Request::Merchants => {
            let rows = w.db.call(|c, _| store::pinned_merchants(c)).await?;
            Ok(Value::Array(
                rows.into_iter()
                    .map(|m| {
                        json!({"name": pmtp_proto::text::escape_control(&m.name), "fingerprint": m.fingerprint,
                               "first_seen": m.first_seen, "last_seen": m.last_seen})
                    })
                    .collect(),
            ))
        }
        Request::Forget { name } => {
            let n = w.db.call(move |c, _| store::forget_merchant(c, &name)).await?;
            Ok(json!({"forgotten": n}))
        }
        Request::Collect { from, amount, description, order, item } => {
            let order = order.as_deref().map(parse_order).transpose()?;
            let req = crate::merchant::CollectRequest {
                from,
                amount: Amount::new(amount),
                description,
                order,
                item: item.unwrap_or_default(),
            };
            let out = crate::merchant::collect(w, req).await;
            serde_json::to_value(out).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))
        }
        Request::Claim { receipt } => {
            let c = crate::merchant::claim(w, &receipt).await?;
            serde_json::to_value(c).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))
        }
        Request::Offer { origin, resource, amount, description, order } => {
            let order = order.as_deref().map(parse_order).transpose()?;
            let req = crate::settle::OfferRequest { origin, resource, amount: Amount::new(amount), description, order };
            let o = crate::settle::offer(w, &req)?;
            serde_json::to_value(o).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))
        }
        Request::Settle { payment, origin, resource, item, price } => {
            let req = crate::settle::SettleRequest { payment, origin, resource, item, price: Amount::new(price) };
            let s = crate::settle::settle(w, req).await?;
            serde_json::to_value(s).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))
        }
        Request::Identity => {
            Ok(json!({"name": w.public.name.escaped(), "fingerprint": w.public.fingerprint().to_string()}))
        }
        Request::UiLogin => match w.ui.login_link() {
            Some(url) => Ok(json!({"url": url})),
            None => Err(WalletError::new(
                ReasonCode::UNEXPECTED_MESSAGE,
                "the wallet window is off (ui.listen = \"none\" in config.toml)",
            )),
        },
        Request::PayUrl { url, output } => crate::inband::pay_url(w, &url, output.map(std::path::PathBuf::from)).await,
        Request::Receipt { id } => {
            let all = history(w).await?;
            let p = all
                .as_array()
                .and_then(|a| a.iter().find(|p| p["id"] == id))
                .filter(|p| !p["receipt"].is_null())
                .ok_or_else(|| {
                WalletError::new(
                    ReasonCode::UNEXPECTED_MESSAGE,
                    format!("payment {id} has no receipt (see payme-wallet history)"),
                )
            })?;
            Ok(json!({"id": id, "order": p["order"], "order_id": p["order_id"], "merchant": p["merchant"],
                      "amount": p["amount"], "description": p["description"], "receipt": p["receipt"]}))
        }
    }
}

/// The `balance` entry of one bank, created empty.
fn bank_entry<'a>(banks: &'a mut std::collections::BTreeMap<String, Value>, bank: &str) -> &'a mut Value {
    banks.entry(bank.to_owned()).or_insert_with(|| {
        json!({"bank": bank, "available": 0u64, "pending": 0u64, "received": 0u64,
               "quarantined": 0u64, "quarantined_coins": 0u64, "coins": []})
    })
}

async fn history(w: &Arc<Wallet>) -> Result<Value, WalletError> {
    let rows = w.db.call(|c, _| store::payment_history(c, 1000)).await?;
    let mut out = Vec::new();
    for p in rows {
        let offer = p.offer.as_deref().and_then(|o| pmtp_proto::http::decode::<pmtp_proto::http::SignedOffer>(o).ok());
        // A receipt is shown with whether it verifies against the pinned merchant key.
        let receipt_valid = p.receipt.as_ref().and_then(|b| {
            let r: pmtp_proto::Signed<pmtp_proto::Receipt> = bincode::deserialize(b).ok()?;
            let key = match (p.direction, &offer) {
                (Direction::In, _) => Some(w.public.clone()),
                // In band: the key the offer named (and the wallet pinned for the origin).
                (Direction::Out, Some(o)) => Some(o.body.merchant.clone()),
                (Direction::Out, None) => pinned_identity(w, &p.merchant),
            };
            Some(key?.parse().ok().map(|k| r.verify(&k.verifying).is_ok()).unwrap_or(false))
        });
        // The order a receipt settles: its `request`, the ask's nonce random part (in band:
        // the offer's order, known before any receipt).
        let order = p
            .receipt
            .as_ref()
            .and_then(|b| bincode::deserialize::<pmtp_proto::Signed<pmtp_proto::Receipt>>(b).ok())
            .map(|r| r.body.request)
            .or(offer.as_ref().map(|o| o.body.order));
        // Names, descriptions and reasons may hold what a peer wrote.
        use pmtp_proto::text::escape_control;
        out.push(json!({
            "id": p.id, "direction": p.direction.as_str(), "state": p.state.as_str(), "peer": p.peer,
            "merchant": escape_control(&p.merchant), "merchant_fingerprint": p.merchant_fp,
            "amount": p.amount.minor_units(), "description": escape_control(&p.description),
            // The receipt in hex is also the token a shop takes back (`?receipt=`).
            "receipt": p.receipt.map(hex::encode), "receipt_valid": receipt_valid,
            "order": order.as_ref().map(store::short_order_id), "order_id": order.map(hex::encode),
            "reason": escape_control(&p.reason), "time": p.created,
            "url": p.url.as_deref().map(escape_control),
        }));
    }
    Ok(Value::Array(out))
}

fn pinned_identity(w: &Wallet, merchant: &str) -> Option<pmtp_proto::PublicIdentity> {
    let blob = w.db.with(|c| store::pinned_identity(c, merchant)).ok()??;
    bincode::deserialize(&blob).ok()
}

/// Why a control call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the wallet daemon is not running (no control socket at {}); start it with `payme-wallet serve`", .path.display())]
    NotRunning { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot use the wallet's control socket {}: {source}{}", .path.display(), payme_node::users::permission_hint(.path, .source))]
    Denied { path: std::path::PathBuf, source: std::io::Error },
    #[error("the control connection failed: {0}")]
    Connection(#[from] tokio_util::codec::LinesCodecError),
    #[error("the wallet daemon closed the connection")]
    Closed,
    #[error("the control message is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Longest answer line a client reads (a paid body of 64 MiB in base64, and more).
pub const MAX_ANSWER: usize = 100 * 1024 * 1024;

/// Client side: sends one request to the daemon's control socket and returns its result.
pub async fn call(socket: &Path, req: &Request) -> Result<Result<Value, (u16, String, String)>, CallError> {
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        let path = socket.to_owned();
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => CallError::Denied { path, source },
            _ => CallError::NotRunning { path, source },
        }
    })?;
    // A `pay_url` answer may carry a body of up to `http.max_body_bytes` (64 MiB by
    // default) in base64.
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_ANSWER));
    lines.send(serde_json::to_string(req)?).await?;
    let line = lines.next().await.ok_or(CallError::Closed)??;
    let v: Value = serde_json::from_str(&line)?;
    if v["ok"].as_bool() == Some(true) {
        Ok(Ok(v["result"].clone()))
    } else {
        Ok(Err((
            v["code"].as_u64().unwrap_or(0) as u16,
            v["label"].as_str().unwrap_or("error").to_owned(),
            v["error"].as_str().unwrap_or("").to_owned(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accept_failures_pause_longer_each_time_up_to_a_second() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(pauses[9], Duration::from_secs(1), "bounded");
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10), "a success resets the pause");
    }
}
