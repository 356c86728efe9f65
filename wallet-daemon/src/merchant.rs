//! The merchant's side of a purchase: `collect`.
//!
//! Send a signed ask_payment_request to the buyer's wallet; receive pay_coins_request (or
//! a refusal); check the payment (our request, exact amount, banks we accept, valid coins);
//! record the coins as received (committed) before contacting the bank; validate them at
//! their bank by deposit (default) or exchange; only then answer pay_coins_response with a
//! signed receipt, or pay_coins_refusal with the reason. Coins received but not validated
//! when the wallet stops are validated on the next start.

use crate::config::Validate;
use crate::ops;
use crate::store::{self, CoinState, Direction, OpKind, PaymentState};
use crate::{Wallet, WalletError};
use futures::{SinkExt, StreamExt};
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::keys::Signed;
use pmtp_proto::refusal::reason_text;
use pmtp_proto::text::{BankId, Description};
use pmtp_proto::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::codec::Framed;

/// What `collect` reports to its caller (the CGI program, a person).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Collected {
    Paid { payment: i64, amount: u64, receipt: String, merchant_fingerprint: String },
    Refused { code: u16, label: String, reason: String },
}

impl Collected {
    fn refused(e: &WalletError) -> Self {
        Collected::Refused { code: e.code.0, label: e.code.label().to_owned(), reason: e.text.clone() }
    }
}

/// Banks whose coins this merchant can validate.
pub fn accepted_banks(w: &Wallet) -> Vec<String> {
    if w.config.merchant.validate == Validate::Deposit && w.config.merchant.deposit_bank.is_some() {
        let mut all: Vec<String> = w.banks.keys().cloned().collect();
        all.sort();
        return all;
    }
    let mut v: Vec<String> = w
        .banks
        .iter()
        .filter(|(_, b)| w.config.merchant.validate == Validate::Exchange || b.account.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    v.sort();
    v
}

pub async fn collect(w: &Arc<Wallet>, from: &str, amount: Amount, description: &str) -> Collected {
    match collect_inner(w, from, amount, description).await {
        Ok(c) => c,
        Err(e) => {
            // The text may quote the buyer's wallet: WalletError holds it escaped.
            tracing::info!(%from, code = %e.code, reason = %e.text, "collect refused");
            Collected::refused(&e)
        }
    }
}

async fn collect_inner(
    w: &Arc<Wallet>,
    from: &str,
    amount: Amount,
    description: &str,
) -> Result<Collected, WalletError> {
    crate::checked_amount(amount.minor_units())?;
    let description = Description::new(description)
        .map_err(|e| WalletError::new(ReasonCode::INVALID_AMOUNT, format!("description: {e}")))?;
    let accepted = accepted_banks(w);
    if accepted.is_empty() {
        return Err(WalletError::new(
            ReasonCode::UNKNOWN_ACCOUNT,
            "this wallet has no bank account to deposit payments into",
        ));
    }
    let deadline = Duration::from_secs(w.config.merchant.collect_timeout_secs.max(1));
    let stream = tokio::time::timeout(deadline, pmtp_client::connect(from, w.bind_ip))
        .await
        .map_err(|_| WalletError::new(ReasonCode::NO_ANSWER, format!("the buyer's wallet at {from} did not answer")))?
        .map_err(|e| {
            WalletError::new(ReasonCode::NO_ANSWER, format!("cannot reach the buyer's wallet at {from}: {e}"))
        })?;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?.ip();
    let peer = stream.peer_addr().map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?.ip();
    let mut conn = Framed::new(stream, PmtpCodec::new(w.config.limits.max_frame_bytes));
    let ask = Signed::sign(
        AskPayment {
            amount,
            merchant: w.public.clone(),
            description: description.clone(),
            accepted_banks: accepted.iter().filter_map(|b| BankId::new(b.clone()).ok()).collect(),
            nonce: Nonce::new(&mut rng::os(), local, store::now()),
        },
        &w.identity.signing,
    )
    .map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let frame = Frame::clear(&ask).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    conn.send(frame)
        .await
        .map_err(|e| WalletError::new(ReasonCode::NO_ANSWER, format!("sending the request failed: {e}")))?;
    let reply = match tokio::time::timeout(deadline, conn.next()).await {
        Ok(Some(Ok(f))) => f,
        Ok(_) => return Err(WalletError::new(ReasonCode::NO_ANSWER, "the buyer's wallet closed the connection")),
        Err(_) => return Err(WalletError::new(ReasonCode::TIMEOUT, "the buyer did not pay in time")),
    };
    let pay: PayCoinsRequest = if reply.id == AskPaymentRefusal::ID {
        return Err(match reply.envelope() {
            Ok(frame::Envelope::Plain(p)) => {
                WalletError::new(p.code, format!("the buyer's wallet refused: {}", p.text.escaped()))
            }
            _ => match reply.open_sealed::<AskPaymentRefusal>(&w.identity.x25519) {
                Ok(r) => WalletError::new(r.refusal.code, format!("the buyer refused: {}", r.refusal.text.escaped())),
                Err(e) => WalletError::new(ReasonCode::MALFORMED, format!("unreadable refusal: {e}")),
            },
        });
    } else if reply.id == AskPaymentResponse::ID {
        reply.open_sealed::<AskPaymentResponse>(&w.identity.x25519).map(|r| r.0)
    } else {
        reply.open_sealed::<PayCoinsRequest>(&w.identity.x25519)
    }
    .map_err(|e| WalletError::new(ReasonCode::from(&e), format!("unreadable payment: {e}")))?;

    let checked = check_payment(w, &ask.body, &pay, peer, &accepted);
    let key = pay.session_key.clone();
    let recorded = match checked {
        Ok(()) => record(w, &pay, &ask.body, peer).await,
        Err(e) => Err(e),
    };
    let (payment, op, claims) = match recorded {
        Ok(p) => p,
        Err(e) => {
            refuse(w, &mut conn, &key, &e).await;
            return Ok(Collected::refused(&e));
        }
    };
    // Signed now, sent only if the bank accepts the coins: then the payment's completion
    // and the receipt are stored in the same transaction as the bank's answer.
    let receipt = Signed::sign(
        Receipt {
            merchant: w.public.name.clone(),
            merchant_fingerprint: w.public.fingerprint(),
            amount,
            description_hash: description_hash(description.as_str()),
            coins_hash: pmtp_proto::coin::coins_hash(pay.coins.iter().map(|c| &c.0.body.serial)),
            request: ask.body.nonce.random,
            time: store::now(),
        },
        &w.identity.signing,
    )
    .map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let blob = bincode::serialize(&receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let validated = match op {
        Some(op) => {
            let b2 = blob.clone();
            let done: ops::OnDone = Box::new(move |tx| store::mark_payment_done(tx, payment, &b2).map(|_| ()));
            match ops::run_op_then(w, &op, vec![], Some(done)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(fail_payment(w, payment, e).await.unwrap_or_else(|e| e)),
            }
        }
        None => {
            let r = validate_received(w, payment).await;
            if r.is_ok() {
                let b2 = blob.clone();
                w.db.call(move |c, _| {
                    let tx = c.transaction()?;
                    store::store_receipt(&tx, payment, &b2)?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            }
            r
        }
    };
    drop(claims);
    if let Err(e) = validated {
        refuse(w, &mut conn, &key, &e).await;
        return Ok(Collected::refused(&e));
    }
    let resp = PayCoinsResponse { receipt, nonce: Nonce::new(&mut rng::os(), local, store::now()) };
    if let Ok(f) = Frame::seal_session(&mut rng::os(), &key, &resp) {
        // The money is ours once validated; a lost receipt is the buyer's to resolve.
        let _ = conn.send(f).await;
    }
    tracing::info!(payment, amount = %amount, "payment collected");
    Ok(Collected::Paid {
        payment,
        amount: amount.minor_units(),
        receipt: hex::encode(blob),
        merchant_fingerprint: w.public.fingerprint().to_string(),
    })
}

fn check_payment(
    w: &Wallet,
    ask: &AskPayment,
    pay: &PayCoinsRequest,
    peer: std::net::IpAddr,
    accepted: &[String],
) -> Result<(), WalletError> {
    if pay.request_nonce != ask.nonce {
        return Err(WalletError::new(ReasonCode::UNEXPECTED_PAYMENT, "the payment is for another request"));
    }
    w.nonces
        .lock()
        .map_err(|_| WalletError::new(ReasonCode::INTERNAL, "internal error"))?
        .check(&pay.nonce, peer, store::now())
        .map_err(|e| WalletError::new(ReasonCode::from(e), e.to_string()))?;
    let mut seen = HashSet::new();
    let now = store::now();
    let mut total = Amount::ZERO;
    for c in &pay.coins {
        if !seen.insert(c.serial()) {
            return Err(WalletError::new(ReasonCode::DUPLICATE_COIN, format!("coin {} appears twice", c.serial())));
        }
        let bank = c.body().bank_id.as_str();
        if !accepted.iter().any(|a| a == bank) {
            return Err(WalletError::new(
                ReasonCode::COIN_FOREIGN_BANK,
                format!("coins of bank {} are not accepted here", c.body().bank_id.escaped()),
            ));
        }
        let entry = w.bank(bank)?;
        c.verify(&entry.client.bank_id, &entry.client.keys.verifying, now)
            .map_err(|e| WalletError::new(ReasonCode::from(&e), e.to_string()))?;
        total = total.checked_add(c.value()).map_err(|_| WalletError::new(ReasonCode::AMOUNT_MISMATCH, "overflow"))?;
    }
    if total != ask.amount {
        return Err(WalletError::new(
            ReasonCode::AMOUNT_MISMATCH,
            format!("coins add up to {total}, not {} (no change is given)", ask.amount),
        ));
    }
    Ok(())
}

/// The bank each received coin is validated at: the configured deposit bank, or the
/// coin's own.
fn validation_bank(w: &Wallet, coin: &pmtp_proto::Coin) -> String {
    match (&w.config.merchant.validate, &w.config.merchant.deposit_bank) {
        (Validate::Deposit, Some(b)) => b.clone(),
        _ => coin.body().bank_id.as_str().to_owned(),
    }
}

fn validation_kind(w: &Wallet) -> OpKind {
    match w.config.merchant.validate {
        Validate::Deposit => OpKind::Deposit,
        Validate::Exchange => OpKind::Exchange,
    }
}

/// Commits the incoming payment and its coins (state received) before any bank call,
/// and, when they all go to one bank, the validating operation with its request id in
/// the same transaction (a crash after it retries that same request).
async fn record(
    w: &Arc<Wallet>,
    pay: &PayCoinsRequest,
    ask: &AskPayment,
    peer: std::net::IpAddr,
) -> Result<(i64, Option<store::Op>, Vec<crate::Claim>), WalletError> {
    let coins = pay.coins.clone();
    let record = store::NewPayment {
        direction: Direction::In,
        peer: peer.to_string(),
        merchant: w.public.name.as_str().to_owned(),
        merchant_fp: w.public.fingerprint().to_string(),
        amount: ask.amount,
        description: ask.description.as_str().to_owned(),
        request: bincode::serialize(&ask.nonce).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?,
    };
    let mut banks: Vec<String> = coins.iter().map(|c| validation_bank(w, c)).collect();
    banks.dedup();
    let one_bank = if banks.len() == 1 { banks.pop() } else { None };
    let kind = validation_kind(w);
    let request_id: [u8; 16] = rng::bytes(&mut rng::os());
    let b = one_bank.clone();
    let (payments, operations) = (w.in_flight.clone(), w.ops_in_flight.clone());
    let (payment, op_id, claims) =
        w.db.call(move |c, vault| {
            let tx = c.transaction()?;
            let id = store::insert_payment(&tx, &record)?;
            store::insert_coins(&tx, vault, &coins, CoinState::Received, Some(id))?;
            let serials: Vec<Serial> = coins.iter().map(|c| c.serial()).collect();
            let op = match &b {
                Some(bank) => Some(store::start_coin_op(
                    &tx,
                    vault,
                    kind,
                    bank,
                    &request_id,
                    Some(id),
                    &serials,
                    CoinState::Received,
                )?),
                None => None,
            };
            // Claimed before they are visible: maintenance leaves this payment and its
            // operation to this task.
            let claims: Vec<crate::Claim> =
                payments.claim(id).into_iter().chain(op.and_then(|o| operations.claim(o))).collect();
            tx.commit()?;
            Ok((id, op, claims))
        })
        .await?;
    let op = match (op_id, one_bank) {
        (Some(id), Some(bank)) => {
            Some(store::Op { id, kind, bank, request_id, amount: ask.amount, payment: Some(payment), secret: None })
        }
        _ => None,
    };
    Ok((payment, op, claims))
}

/// Records a payment whose coins the bank did not accept: refused if the bank said so
/// (the coins stay the buyer's, who recovers them by exchange), still received if the
/// outcome is unknown (retried later). Returns what to tell the buyer.
async fn fail_payment(w: &Arc<Wallet>, payment: i64, e: WalletError) -> Result<WalletError, WalletError> {
    let definitive = e.code.is_definitive();
    // An ambiguous failure leaves the payment received (its reason noted), for a retry.
    let state = if definitive { PaymentState::Refused } else { PaymentState::Received };
    let reason = e.text.clone();
    w.db.call(move |c, vault| {
        let tx = c.transaction()?;
        store::set_payment_state(&tx, payment, state, Some(&reason))?;
        if definitive {
            let left: Vec<Serial> = store::coins_of_payment(&tx, vault, payment)?
                .iter()
                .filter(|r| r.state == CoinState::Received)
                .map(|r| r.coin.serial())
                .collect();
            store::move_coins(&tx, &left, CoinState::Spent, None, None)?;
        }
        tx.commit()?;
        Ok(())
    })
    .await?;
    let code = if definitive { e.code } else { ReasonCode::PEER_BANK_UNAVAILABLE };
    Ok(WalletError::new(code, format!("the bank did not accept the coins: {}", e.text)))
}

async fn refuse(
    w: &Arc<Wallet>,
    conn: &mut Framed<tokio::net::TcpStream, PmtpCodec>,
    key: &SessionKey,
    e: &WalletError,
) {
    if e.code == ReasonCode::DUPLICATE_COIN {
        // A copied wallet, or a buyer trying to pay twice with one coin.
        tracing::warn!(code = %e.code, reason = %e.text, "payment refused: a coin was offered twice");
    } else {
        tracing::info!(code = %e.code, reason = %e.text, "payment refused");
    }
    let r = PayCoinsRefusal(Refusal {
        code: e.code,
        text: reason_text(&e.text),
        nonce: Nonce::new(&mut rng::os(), w.local_ip(), store::now()),
    });
    if let Ok(f) = Frame::seal_session(&mut rng::os(), key, &r) {
        let _ = conn.send(f).await;
    }
}

/// Validates the received coins of payment `payment` at their banks. On success the
/// payment is done; a definitive refusal fails it; an ambiguous failure leaves the coins
/// received for the next maintenance round (the same deposit request is retried).
pub async fn validate_received(w: &Arc<Wallet>, payment: i64) -> Result<(), WalletError> {
    let rows = w.db.call(move |c, vault| store::coins_of_payment(c, vault, payment)).await?;
    let mut by_bank: BTreeMap<String, Vec<Serial>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.state == CoinState::Received) {
        by_bank.entry(validation_bank(w, &r.coin)).or_default().push(r.coin.serial());
    }
    let kind = validation_kind(w);
    for (bank, serials) in by_bank {
        // A previous attempt may have left an unfinished operation for these coins: it is
        // retried by maintenance under its request id, never started afresh.
        let first = serials[0];
        if w.db.call(move |c, _| store::coin_has_started_op(c, &first)).await? {
            return Err(WalletError::new(
                ReasonCode::PEER_BANK_UNAVAILABLE,
                "the bank has not confirmed the coins yet",
            ));
        }
        if let Err(e) =
            ops::exchange_or_deposit(w, kind, &bank, serials, ops::Taking::Received, vec![], Some(payment)).await
        {
            return Err(fail_payment(w, payment, e).await?);
        }
    }
    w.db.call(move |c, _| {
        let tx = c.transaction()?;
        store::set_payment_state(&tx, payment, PaymentState::Done, None)?;
        tx.commit()?;
        Ok(())
    })
    .await?;
    Ok(())
}
