//! The buyer's side of a purchase: a merchant's wallet sends ask_payment_request.
//!
//! Check the merchant's signature and nonce; compare its keys with the pinned ones (a
//! changed key is refused, like SSH's known_hosts); ask the person, unless their policy
//! pays this merchant and amount at once (one source address may hold only its share of
//! the requests waiting for the person, `limits.max_pending_per_source`); choose coins
//! that make the exact amount (exchanging a larger coin first when the denominations do
//! not fit); record the payment and mark its coins pending (committed) before they leave;
//! send pay_coins_request sealed to the merchant; store the receipt. Without a receipt,
//! the coins are resolved by exchange at their bank.

use crate::db::{self, move_coins, CoinState};
use crate::ops::{self, OpKind};
use crate::{PendingRequest, Wallet, WalletError};
use futures::{SinkExt, StreamExt};
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::denomination::{select_exact, SelectError};
use pmtp_proto::keys::PeerKeys;
use pmtp_proto::refusal::reason_text;
use pmtp_proto::*;
use rusqlite::{params, OptionalExtension};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, PmtpCodec>;

/// Handles one ask_payment_request frame and the rest of its exchange on `conn`.
pub async fn on_ask_payment(w: Arc<Wallet>, frame: Frame, peer: IpAddr, conn: &mut Conn) {
    let ask: AskPaymentRequest = match frame.open_clear() {
        Ok(a) => a,
        Err(e) => return plain(conn, ReasonCode::from(&e), &e.to_string()).await,
    };
    let merchant = match ask.body.merchant.parse() {
        Ok(k) => k,
        Err(e) => return plain(conn, ReasonCode::BAD_SIGNATURE, &format!("merchant key: {e}")).await,
    };
    if ask.verify(&merchant.verifying).is_err() {
        return plain(conn, ReasonCode::BAD_SIGNATURE, "the request is not signed by the key it carries").await;
    }
    let checked = w.nonces.lock().map(|mut n| n.check(&ask.body.nonce, peer, db::now())).map_err(|_| ());
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return plain(conn, ReasonCode::from(e), &e.to_string()).await,
        Err(_) => return plain(conn, ReasonCode::INTERNAL, "internal error").await,
    }
    let outcome = decide_and_pay(&w, &ask, &merchant, peer, conn).await;
    if let Err(e) = outcome {
        tracing::info!(merchant = %merchant.name.escaped(), code = %e.code, reason = %e.text, "payment request refused");
        let refusal = AskPaymentRefusal {
            amount: ask.body.amount,
            request_nonce: ask.body.nonce,
            refusal: Refusal {
                code: e.code,
                text: reason_text(&e.text),
                nonce: Nonce::new(&mut rng::os(), w.local_ip(), db::now()),
            },
        };
        if let Ok(f) = Frame::seal_to(&mut rng::os(), &merchant.x25519, &refusal) {
            let _ = conn.send(f).await;
        }
    }
}

async fn plain(conn: &mut Conn, code: ReasonCode, text: &str) {
    tracing::info!(%code, reason = %pmtp_proto::text::escape_control(text), "unreadable payment request refused");
    if let Ok(f) = Frame::plain_refusal(AskPaymentRefusal::ID, code, text) {
        let _ = conn.send(f).await;
    }
}

/// Pinning: `Ok(true)` for a merchant already known with these keys, `Ok(false)` for a new
/// merchant, and an error for a known name with different keys.
async fn known_merchant(w: &Arc<Wallet>, merchant: &PeerKeys) -> Result<bool, WalletError> {
    let name = merchant.name.as_str().to_owned();
    let pinned: Option<String> =
        w.db.call(move |c, _| {
            Ok(c.query_row("SELECT fingerprint FROM merchants WHERE name = ?1", params![name], |r| r.get(0))
                .optional()?)
        })
        .await?;
    match pinned {
        Some(fp) if fp == merchant.fingerprint.to_string() => Ok(true),
        Some(fp) => {
            tracing::warn!(
                merchant = %merchant.name.escaped(), pinned = %fp, presented = %merchant.fingerprint,
                "MERCHANT KEY CHANGED: refusing; if the merchant really changed keys, run `payme-wallet merchants forget`"
            );
            Err(WalletError::new(
                ReasonCode::MERCHANT_KEY_CHANGED,
                format!("merchant {} presented a key different from the one pinned; refused", merchant.name.escaped()),
            ))
        }
        None => Ok(false),
    }
}

async fn decide_and_pay(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    peer: IpAddr,
    conn: &mut Conn,
) -> Result<(), WalletError> {
    let amount = ask.body.amount;
    crate::checked_amount(amount.minor_units())?;
    let known = known_merchant(w, merchant).await?;
    let policy = &w.config.policy;
    if !known && policy.unknown_merchants == crate::config::UnknownMerchants::Refuse {
        return Err(WalletError::new(ReasonCode::UNKNOWN_MERCHANT, "this wallet pays only merchants it already knows"));
    }
    let auto = known && policy.auto_approve_limit > 0 && amount.minor_units() <= policy.auto_approve_limit;
    if !auto {
        ask_person(w, ask, merchant, known, peer).await?;
    }
    if !known {
        pin(w, merchant).await?;
    }
    pay(w, ask, merchant, peer, conn).await
}

/// Shows the request as pending and waits for `approve` or `refuse`, or the deadline.
async fn ask_person(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    known: bool,
    peer: IpAddr,
) -> Result<(), WalletError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = w.next_pending.fetch_add(1, Ordering::Relaxed);
    {
        let mut pending = w.pending.lock().map_err(|_| WalletError::new(ReasonCode::INTERNAL, "internal error"))?;
        if pending.len() >= w.config.limits.max_pending_requests {
            return Err(WalletError::new(ReasonCode::BUSY, "too many payment requests are waiting; try again later"));
        }
        // One source's share of the list, so a flood from one address (or one IPv6 /64)
        // cannot keep every other shop out.
        let source = crate::source_of(peer);
        let share = w.config.limits.pending_per_source();
        if pending.values().filter(|r| crate::source_of(r.peer) == source).count() >= share {
            tracing::info!(%peer, share, "payment request refused: its address already has its share waiting");
            return Err(WalletError::new(
                ReasonCode::BUSY,
                format!("{share} payment requests from your address are already waiting; try again later"),
            ));
        }
        pending.insert(
            id,
            PendingRequest {
                id,
                merchant: merchant.name.escaped(),
                fingerprint: merchant.fingerprint.to_string(),
                new_merchant: !known,
                description: ask.body.description.escaped(),
                amount: ask.body.amount.minor_units(),
                peer,
                created: db::now(),
                answer: tx,
            },
        );
    }
    tracing::info!(
        id, merchant = %merchant.name.escaped(), amount = %ask.body.amount, description = %ask.body.description.escaped(),
        "payment request waiting for approval (payme-wallet pending / approve / refuse)"
    );
    let wait = Duration::from_secs(w.config.policy.consent_timeout_secs.max(1));
    let answer = tokio::time::timeout(wait, rx).await;
    if let Ok(mut p) = w.pending.lock() {
        p.remove(&id);
    }
    match answer {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(WalletError::new(ReasonCode::REFUSED_BY_USER, "the buyer declined")),
        _ => Err(WalletError::new(ReasonCode::NO_ANSWER, "the buyer did not answer in time")),
    }
}

async fn pin(w: &Arc<Wallet>, merchant: &PeerKeys) -> Result<(), WalletError> {
    let (name, fp) = (merchant.name.as_str().to_owned(), merchant.fingerprint.to_string());
    let identity =
        bincode::serialize(&merchant.public).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    w.db.call(move |c, _| {
        c.execute(
            "INSERT INTO merchants(name, fingerprint, identity, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(name) DO UPDATE SET last_seen = ?4",
            params![name, fp, identity, db::i(db::now())?],
        )?;
        Ok(())
    })
    .await?;
    Ok(())
}

/// Chooses coins for `amount` from one acceptable bank, exchanging a larger coin first if
/// needed, and marks them pending under a new payment record. Returns (payment id, coins).
async fn reserve(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    peer: IpAddr,
) -> Result<(i64, Vec<Coin>), WalletError> {
    let amount = ask.body.amount;
    let accepted: Vec<String> = ask.body.accepted_banks.iter().map(|b| b.as_str().to_owned()).collect();
    let banks: Vec<String> = w.banks.keys().filter(|b| accepted.is_empty() || accepted.contains(b)).cloned().collect();
    // Bounded: each bank at most twice (before and after one exchange).
    for bank in banks {
        for _attempt in 0..2 {
            let guard = w.coin_lock.lock().await;
            let b = bank.clone();
            let rows = w.db.call(move |c, _| db::values_in(c, CoinState::Available, &b)).await?;
            let denoms: Vec<Denomination> = rows.iter().map(|r| r.1).collect();
            match select_exact(&denoms, amount) {
                Ok(idx) => {
                    let serials: Vec<Serial> = idx.iter().map(|&i| rows[i].0).collect();
                    let s2 = serials.clone();
                    let coins: Vec<Coin> = w.db.call(move |c, vault| db::coins_by_serial(c, vault, &s2)).await?;
                    let record = db::NewPayment {
                        direction: "out",
                        state: "sending",
                        peer: peer.to_string(),
                        merchant: merchant.name.as_str().to_owned(),
                        merchant_fp: merchant.fingerprint.to_string(),
                        amount,
                        description: ask.body.description.as_str().to_owned(),
                        request: bincode::serialize(&ask.body.nonce).unwrap_or_default(),
                    };
                    let payment =
                        w.db.call(move |c, _| {
                            let tx = c.transaction()?;
                            let id = db::insert_payment(&tx, &record)?;
                            move_coins(&tx, &serials, CoinState::Pending, Some(id), None)?;
                            tx.commit()?;
                            Ok(id)
                        })
                        .await?;
                    drop(guard);
                    return Ok((payment, coins));
                }
                Err(SelectError::NeedsExchange { missing, break_index, .. }) => {
                    let (serial, value, _) = rows[break_index];
                    drop(guard);
                    // Break the coin into what is missing plus change for ourselves.
                    let missing_total = Amount::checked_sum(missing.iter().map(|d| d.value())).unwrap_or_default();
                    let rest = value.value().checked_sub(missing_total).unwrap_or_default();
                    let mut want = missing.clone();
                    want.extend(Denomination::split(rest).unwrap_or_default());
                    tracing::info!(bank = %bank, coin = %value, "exchanging a coin to pay the exact amount");
                    ops::exchange_or_deposit(
                        w,
                        OpKind::Exchange,
                        &bank,
                        vec![serial],
                        CoinState::Available,
                        want,
                        None,
                    )
                    .await?;
                }
                Err(SelectError::Insufficient { .. }) => break,
            }
        }
    }
    Err(WalletError::new(
        ReasonCode::NOT_ENOUGH_MONEY,
        format!("not enough money in coins the merchant accepts to pay {amount}"),
    ))
}

async fn pay(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    peer: IpAddr,
    conn: &mut Conn,
) -> Result<(), WalletError> {
    let (payment, coins) = reserve(w, ask, merchant, peer).await?;
    if let Ok(mut f) = w.in_flight.lock() {
        f.insert(payment);
    }
    let result = send_coins(w, ask, merchant, payment, coins, conn).await;
    if let Ok(mut f) = w.in_flight.lock() {
        f.remove(&payment);
    }
    match result {
        Ok(()) => Ok(()),
        Err(Outcome::Refused(reason)) => {
            // The merchant refused; whether its bank spent the coins is the bank's to say.
            tracing::info!(payment, %reason, "merchant refused the payment; resolving its coins");
            set_state(w, payment, "refused_unresolved", &reason).await;
            let w2 = w.clone();
            w.tasks.spawn(async move {
                let _ = ops::resolve_payment(&w2, payment).await;
            });
            Ok(())
        }
        Err(Outcome::Unknown(reason)) => {
            tracing::warn!(payment, %reason, "no receipt; resolving the payment's coins at the bank");
            let w2 = w.clone();
            w.tasks.spawn(async move {
                let _ = ops::resolve_payment(&w2, payment).await;
            });
            Ok(())
        }
    }
}

enum Outcome {
    Refused(String),
    Unknown(String),
}

async fn set_state(w: &Arc<Wallet>, payment: i64, state: &'static str, reason: &str) {
    let reason = reason.to_owned();
    let _ =
        w.db.call(move |c, _| {
            c.execute(
                "UPDATE payments SET state = ?2, reason = ?3, updated = ?4 WHERE id = ?1",
                params![payment, state, reason, db::i(db::now())?],
            )?;
            Ok(())
        })
        .await;
}

async fn send_coins(
    w: &Arc<Wallet>,
    ask: &AskPaymentRequest,
    merchant: &PeerKeys,
    payment: i64,
    coins: Vec<Coin>,
    conn: &mut Conn,
) -> Result<(), Outcome> {
    let session_key = SessionKey::generate(&mut rng::os());
    let hash = pmtp_proto::coin::coins_hash(coins.iter().map(|c| &c.0.body.serial));
    let pay = PayCoinsRequest {
        request_nonce: ask.body.nonce,
        coins,
        session_key: session_key.clone(),
        nonce: Nonce::new(&mut rng::os(), w.local_ip(), db::now()),
    };
    let frame = Frame::seal_to(&mut rng::os(), &merchant.x25519, &pay).map_err(|e| Outcome::Unknown(e.to_string()))?;
    conn.send(frame).await.map_err(|e| Outcome::Unknown(format!("sending coins failed: {e}")))?;
    let wait = Duration::from_secs(w.config.merchant.collect_timeout_secs.max(5) + 10);
    let reply = match tokio::time::timeout(wait, conn.next()).await {
        Ok(Some(Ok(f))) => f,
        Ok(_) => return Err(Outcome::Unknown("the merchant closed the connection without a receipt".into())),
        Err(_) => return Err(Outcome::Unknown("the merchant sent no receipt in time".into())),
    };
    match reply.open_reply::<PayCoinsRequest>(&session_key) {
        Ok(Reply::Response(resp)) => {
            let receipt = resp
                .receipt
                .verify(&merchant.verifying)
                .map_err(|_| Outcome::Unknown("receipt not signed by the merchant".into()))?;
            let ok = receipt.amount == ask.body.amount
                && receipt.coins_hash == hash
                && receipt.request == ask.body.nonce.random
                && receipt.description_hash == description_hash(ask.body.description.as_str());
            if !ok {
                return Err(Outcome::Unknown("the receipt does not match the payment".into()));
            }
            let blob = bincode::serialize(&resp.receipt).unwrap_or_default();
            let stored =
                w.db.call(move |c, vault| {
                    let tx = c.transaction()?;
                    let serials: Vec<Serial> =
                        db::coins_of(&tx, vault, "payment", payment)?.iter().map(|r| r.coin.serial()).collect();
                    move_coins(&tx, &serials, CoinState::Spent, None, None)?;
                    tx.execute(
                        "UPDATE payments SET state = 'done', receipt = ?2, updated = ?3 WHERE id = ?1",
                        params![payment, blob, db::i(db::now())?],
                    )?;
                    tx.commit()?;
                    Ok(())
                })
                .await;
            if let Err(e) = stored {
                tracing::error!(payment, error = %e, "receipt received but not stored");
            }
            tracing::info!(payment, merchant = %merchant.name.escaped(), amount = %ask.body.amount, "paid; receipt stored");
            Ok(())
        }
        // The merchant's text is stored, shown and logged: escaped.
        Ok(Reply::Refused(r)) => Err(Outcome::Refused(format!("{} ({})", r.text.escaped(), r.code))),
        Ok(Reply::PlainRefused(p)) => Err(Outcome::Refused(format!("{} ({})", p.text.escaped(), p.code))),
        Err(e) => Err(Outcome::Unknown(format!("unreadable answer: {e}"))),
    }
}
