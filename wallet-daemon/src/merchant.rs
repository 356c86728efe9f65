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
    /// `order` is the order id (hex); `receipt` the signed receipt (hex of its bincode),
    /// which re-opens the item until the order expires (see [`claim`]).
    Paid {
        payment: i64,
        amount: u64,
        receipt: String,
        merchant_fingerprint: String,
        order: String,
    },
    Refused {
        code: u16,
        label: String,
        reason: String,
    },
}

impl Collected {
    fn refused(e: &WalletError) -> Self {
        Collected::Refused { code: e.code.0, label: e.code.label().to_owned(), reason: e.text.clone() }
    }
}

/// What to collect: from whom, how much, for what, and under which order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectRequest {
    /// The buyer's wallet, host:port.
    pub from: String,
    pub amount: Amount,
    pub description: String,
    /// The order id (the ask's nonce random part); drawn here when the caller names none.
    pub order: Option<store::OrderId>,
    /// The shop's name for the item, recorded with the paid order.
    pub item: String,
}

/// A collect in progress, which a second collect for the same order joins.
pub struct InProgress {
    request: CollectRequest,
    result: tokio::sync::watch::Receiver<Option<Collected>>,
}

/// Collects in progress, by order id.
pub type InProgressMap = std::sync::Mutex<std::collections::HashMap<store::OrderId, InProgress>>;

/// Removes an order from the in-progress map when its collect ends, however it ends.
struct Leaving<'a> {
    map: &'a InProgressMap,
    order: store::OrderId,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&self.order);
        }
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

/// Collects `req.amount` from the buyer's wallet at `req.from` for order `req.order`.
///
/// One order is collected once: a second collect for an order in progress (a double
/// click) waits for the first and gets its outcome, without asking the buyer again; a
/// collect for an order already paid gets the paid outcome again when it names the same
/// buyer, amount and item, and a refusal otherwise. At most
/// `merchant.max_concurrent_collects` orders are collected at once; more are `busy`.
pub async fn collect(w: &Arc<Wallet>, req: CollectRequest) -> Collected {
    // An order id drawn here is new: no payment can hold it yet.
    let drawn = req.order.is_none();
    let order = req.order.unwrap_or_else(|| rng::bytes(&mut w.rng()));
    let req = CollectRequest { order: Some(order), ..req };
    let started = {
        let Ok(mut map) = w.collects.lock() else {
            return Collected::refused(&WalletError::new(ReasonCode::INTERNAL, "internal error"));
        };
        match map.get(&order) {
            Some(running) if running.request == req => Err(running.result.clone()),
            Some(_) => {
                return Collected::refused(&WalletError::new(
                    ReasonCode::UNEXPECTED_PAYMENT,
                    "this order is being paid for another item or buyer",
                ))
            }
            None => {
                let Ok(permit) = w.collect_permits.clone().try_acquire_owned() else {
                    tracing::info!(from = %pmtp_proto::text::escape_control(&req.from), "collect refused: too many at once");
                    return Collected::refused(&WalletError::new(
                        ReasonCode::BUSY,
                        "the shop is taking too many payments at once; try again in a minute",
                    ));
                };
                let (tx, rx) = tokio::sync::watch::channel(None);
                map.insert(order, InProgress { request: req.clone(), result: rx });
                Ok((tx, permit))
            }
        }
    };
    let (tx, _permit) = match started {
        Ok(s) => s,
        Err(mut joined) => {
            tracing::info!(order = %store::short_order_id(&order), "collect joins the one in progress for its order");
            return match joined.wait_for(|r| r.is_some()).await {
                Ok(r) => r.clone().unwrap_or_else(|| Collected::refused(&internal())),
                Err(_) => Collected::refused(&internal()),
            };
        }
    };
    let leaving = Leaving { map: &w.collects, order };
    let out = match collect_new(w, &req, order, drawn).await {
        Ok(c) => c,
        Err(e) => {
            // The text may quote the buyer's wallet: WalletError holds it escaped.
            tracing::info!(from = %pmtp_proto::text::escape_control(&req.from), code = %e.code, reason = %e.text, "collect refused");
            Collected::refused(&e)
        }
    };
    // Published before the order leaves the map: a collect that finds the order gone
    // finds it paid (recorded before this) or free.
    let _ = tx.send(Some(out.clone()));
    drop(leaving);
    out
}

fn internal() -> WalletError {
    WalletError::new(ReasonCode::INTERNAL, "internal error")
}

/// A collect for an order nobody is collecting now: paid already, or collect it.
async fn collect_new(
    w: &Arc<Wallet>,
    req: &CollectRequest,
    order: store::OrderId,
    drawn: bool,
) -> Result<Collected, WalletError> {
    let paid = if drawn { None } else { w.db.call(move |c, _| store::paid_order(c, &order)).await? };
    match paid {
        None => collect_inner(w, req, order).await,
        Some(p) if p.buyer == req.from && p.amount == req.amount && p.item == req.item && p.expires > w.now() => {
            tracing::info!(order = %store::short_order_id(&order), payment = p.payment, "order already paid; its outcome again");
            Ok(Collected::Paid {
                payment: p.payment,
                amount: p.amount.minor_units(),
                receipt: hex::encode(p.receipt),
                merchant_fingerprint: w.public.fingerprint().to_string(),
                order: hex::encode(order),
            })
        }
        Some(_) => Err(WalletError::new(
            ReasonCode::UNEXPECTED_PAYMENT,
            "this order is already paid; its receipt re-opens the item",
        )),
    }
}

/// What a receipt re-opens: the paid order whose receipt is exactly `receipt_hex`.
#[derive(Debug, Clone, Serialize)]
pub struct Claimed {
    pub item: String,
    pub amount: u64,
    pub order: String,
    pub expires: u64,
    pub expired: bool,
}

/// Finds the paid order a receipt (hex of its bincode, as `history` and
/// `payme-wallet receipt` show it) belongs to. Only the very receipt this wallet issued
/// for the order matches: it is compared byte for byte with the stored one.
///
/// The receipt may also be given as a `PAYMENT-RESPONSE` header value (`v1.`...), as the
/// in-band flow sends it back in `PAYMENT-RECEIPT`. An order counts once its payment is
/// done (an in-band order's row is written when its payment is recorded).
pub async fn claim(w: &Arc<Wallet>, receipt_text: &str) -> Result<Claimed, WalletError> {
    let unknown = || WalletError::new(ReasonCode::UNEXPECTED_PAYMENT, "this receipt is not one of this shop's orders");
    let text = receipt_text.trim();
    let blob = if text.starts_with("v1.") {
        let r: Signed<Receipt> = pmtp_proto::http::decode(text).map_err(|_| unknown())?;
        bincode::serialize(&r).map_err(|_| unknown())?
    } else {
        hex::decode(text).map_err(|_| unknown())?
    };
    if blob.len() > 64 * 1024 {
        return Err(unknown());
    }
    let receipt: Signed<Receipt> = bincode::deserialize(&blob).map_err(|_| unknown())?;
    let order = receipt.body.request;
    let (paid, state) =
        w.db.call(move |c, _| match store::paid_order(c, &order)? {
            Some(p) => Ok(Some((store::payment_state(c, p.payment)?, p))),
            None => Ok(None),
        })
        .await?
        .map(|(s, p)| (p, s))
        .ok_or_else(unknown)?;
    if paid.receipt != blob || state != PaymentState::Done {
        return Err(unknown());
    }
    Ok(Claimed {
        item: paid.item,
        amount: paid.amount.minor_units(),
        order: hex::encode(order),
        expires: paid.expires,
        expired: paid.expires <= w.now(),
    })
}

async fn collect_inner(w: &Arc<Wallet>, req: &CollectRequest, order: store::OrderId) -> Result<Collected, WalletError> {
    let (from, amount, description) = (req.from.as_str(), req.amount, req.description.as_str());
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
    let mut conn = Framed::new(stream, PmtpCodec::new(w.config.limits.net.max_frame_bytes));
    let ask = Signed::sign(
        AskPayment {
            amount,
            merchant: w.public.clone(),
            description: description.clone(),
            accepted_banks: accepted.iter().filter_map(|b| BankId::new(b.clone()).ok()).collect(),
            // The order id is the nonce's random part: the receipt's `request` names it.
            nonce: Nonce { random: order, addr: pmtp_proto::nonce::canonical(local), timestamp: w.now() },
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
                // Reached, but no answer from the person in time: a timeout, told apart
                // from a wallet that could not be reached (no_answer).
                Ok(r) if r.refusal.code == ReasonCode::NO_ANSWER => WalletError::new(
                    ReasonCode::TIMEOUT,
                    format!("the buyer did not approve in time: {}", r.refusal.text.escaped()),
                ),
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
        Ok(()) => incoming_record(w, &ask.body, peer).map(|r| (pay.coins.clone(), r)),
        Err(e) => Err(e),
    };
    // The receipt is signed on a blocking thread while the payment's commit waits for the
    // disk (one RSA signature off the purchase's critical path). It is sent only if the
    // bank accepts the coins: then the payment's completion and the receipt are stored in
    // the same transaction as the bank's answer.
    let receipt_body = Receipt {
        merchant: w.public.name.clone(),
        merchant_fingerprint: w.public.fingerprint(),
        amount,
        description_hash: description_hash(description.as_str()),
        coins_hash: pmtp_proto::coin::coins_hash(pay.coins.iter().map(|c| &c.0.body.serial)),
        request: ask.body.nonce.random,
        time: w.now(),
    };
    let (recorded, receipt) = match recorded {
        Ok((coins, r)) => {
            let signer = w.clone();
            let signing = tokio::task::spawn_blocking(move || Signed::sign(receipt_body, &signer.identity.signing));
            // The deposit that validates the coins is connected and signed meanwhile too;
            // it is sent only once the payment and its operation are recorded.
            let request_id: [u8; 16] = rng::bytes(&mut w.rng());
            let deposit = prepare_deposit(w, coins.clone(), request_id);
            let (recorded, receipt, prepared) =
                tokio::join!(record(w, coins, r, order, None, request_id), signing, deposit);
            (recorded.map(|r| (r, prepared)), Some(receipt))
        }
        Err(e) => (Err(e), None),
    };
    let (payment, op, claims, prepared) = match recorded {
        Ok((Recorded::New(p, op, claims), prepared)) => (p, op, claims, prepared),
        Ok((Recorded::Taken(..), _)) => {
            let e = WalletError::new(ReasonCode::UNEXPECTED_PAYMENT, "this order is already paid");
            refuse(w, &mut conn, &key, &e).await;
            return Ok(Collected::refused(&e));
        }
        Err(e) => {
            refuse(w, &mut conn, &key, &e).await;
            return Ok(Collected::refused(&e));
        }
    };
    let receipt = receipt
        .ok_or_else(internal)?
        .map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?
        .map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let blob = bincode::serialize(&receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let paid_order = store::PaidOrder {
        order,
        item: req.item.clone(),
        amount,
        payment,
        buyer: from.to_owned(),
        receipt: blob.clone(),
        expires: w.now().saturating_add(w.config.merchant.order_lifetime_secs),
    };
    let validated = validate_and_finish(w, payment, op, prepared, blob.clone(), Some(paid_order)).await;
    drop(claims);
    if let Err(e) = validated {
        refuse(w, &mut conn, &key, &e).await;
        return Ok(Collected::refused(&e));
    }
    let resp = PayCoinsResponse { receipt, nonce: Nonce::new(&mut w.rng(), local, w.now()) };
    if let Ok(f) = Frame::seal_session(&mut w.rng(), &key, &resp) {
        // The money is ours once validated; a lost receipt is the buyer's to resolve.
        let _ = conn.send(f).await;
    }
    tracing::info!(payment, amount = %amount, "payment collected");
    Ok(Collected::Paid {
        payment,
        amount: amount.minor_units(),
        receipt: hex::encode(blob),
        merchant_fingerprint: w.public.fingerprint().to_string(),
        order: hex::encode(order),
    })
}

/// The deposit that will validate `coins` (all of one bank, into our account there),
/// connected and signed ahead; the error when the bank cannot be reached now; `None` when
/// validation is not such a deposit (or preparing it failed otherwise: the operation's own
/// try then says why).
async fn prepare_deposit(
    w: &Arc<Wallet>,
    coins: Vec<Coin>,
    request_id: [u8; 16],
) -> Option<Result<pmtp_client::PreparedDeposit, pmtp_client::ClientError>> {
    if validation_kind(w) != OpKind::Deposit {
        return None;
    }
    let mut banks = coins.iter().map(|c| validation_bank(w, c));
    let bank = banks.next()?;
    if banks.any(|b| b != bank) {
        return None;
    }
    let entry = w.bank(&bank).ok()?;
    let (account, name) = entry.account.clone()?;
    match entry.client.prepare_deposit(&w.identity, account, &name, request_id, coins).await {
        Ok(p) => Some(Ok(p)),
        // Unreachable: the operation's own try gives this error at once.
        Err(e @ (pmtp_client::ClientError::Connect { .. } | pmtp_client::ClientError::Timeout)) => Some(Err(e)),
        Err(_) => None,
    }
}

/// The payment row of coins received for `ask`.
fn incoming_record(w: &Wallet, ask: &AskPayment, peer: std::net::IpAddr) -> Result<store::NewPayment, WalletError> {
    Ok(store::NewPayment {
        direction: Direction::In,
        peer: peer.to_string(),
        merchant: w.public.name.as_str().to_owned(),
        merchant_fp: w.public.fingerprint().to_string(),
        amount: ask.amount,
        description: ask.description.as_str().to_owned(),
        request: bincode::serialize(&ask.nonce).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?,
        http: None,
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
        .check(&pay.nonce, peer, w.now())
        .map_err(|e| WalletError::new(ReasonCode::from(e), e.to_string()))?;
    check_coins(w, &pay.coins, ask.amount, accepted)
}

/// Checks coins offered in payment of `amount`: no coin twice, each of a bank accepted
/// here and valid under its key now, adding up to exactly `amount` (no change is given).
pub(crate) fn check_coins(w: &Wallet, coins: &[Coin], amount: Amount, accepted: &[String]) -> Result<(), WalletError> {
    let mut seen = HashSet::new();
    let now = w.now();
    let mut total = Amount::ZERO;
    for c in coins {
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
        entry.client.verify_coin(c, now).map_err(|e| WalletError::new(ReasonCode::from(&e), e.to_string()))?;
        total = total.checked_add(c.value()).map_err(|_| WalletError::new(ReasonCode::AMOUNT_MISMATCH, "overflow"))?;
    }
    if total != amount {
        return Err(WalletError::new(
            ReasonCode::AMOUNT_MISMATCH,
            format!("coins add up to {total}, not {amount} (no change is given)"),
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

/// What [`record`] did: recorded the payment (its id, its validating operation when the
/// coins all go to one bank, and the claims that keep maintenance off them), or found the
/// order taken by another payment, paid or being validated.
pub(crate) enum Recorded {
    New(i64, Option<store::Op>, Vec<crate::Claim>),
    Taken(store::PaidOrder, store::PaymentState),
}

/// Commits the incoming payment and its coins (state received) before any bank call,
/// and, when they all go to one bank, the validating operation with its request id in
/// the same transaction (a crash after it retries that same request).
///
/// The order is checked in that transaction: one already paid, or being validated, is
/// [`Recorded::Taken`] and nothing is written, so a second payment for it is refused
/// before any coin is taken. A row left by a payment the bank refused no longer holds
/// the order. With `claim_row` (the in-band flow), the order's row is written in the same
/// transaction: the orders table's primary key makes one of two simultaneous payments
/// the winner; the row counts as paid once its payment is done.
pub(crate) async fn record(
    w: &Arc<Wallet>,
    coins: Vec<Coin>,
    record: store::NewPayment,
    order: store::OrderId,
    claim_row: Option<store::PaidOrder>,
    request_id: [u8; 16],
) -> Result<Recorded, WalletError> {
    let amount = record.amount;
    let mut banks: Vec<String> = coins.iter().map(|c| validation_bank(w, c)).collect();
    banks.dedup();
    let one_bank = if banks.len() == 1 { banks.pop() } else { None };
    let kind = validation_kind(w);
    let b = one_bank.clone();
    let (payments, operations) = (w.in_flight.clone(), w.ops_in_flight.clone());
    let recorded =
        w.db.call(move |c, vault| {
            let tx = c.transaction()?;
            if let Some(held) = store::paid_order(&tx, &order)? {
                let state = store::payment_state(&tx, held.payment)?;
                if state != PaymentState::Refused {
                    return Ok(Err((held, state)));
                }
                store::release_order(&tx, &order, held.payment)?;
            }
            let id = store::insert_payment(&tx, &record)?;
            store::insert_coins(&tx, vault, &coins, CoinState::Received, Some(id))?;
            if let Some(row) = &claim_row {
                store::insert_paid_order(&tx, &store::PaidOrder { payment: id, ..row.clone() })?;
            }
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
            Ok(Ok((id, op, claims)))
        })
        .await?;
    let (payment, op_id, claims) = match recorded {
        Ok(r) => r,
        Err((held, state)) => return Ok(Recorded::Taken(held, state)),
    };
    let op = match (op_id, one_bank) {
        (Some(id), Some(bank)) => {
            Some(store::Op { id, kind, bank, request_id, amount, payment: Some(payment), secret: None })
        }
        _ => None,
    };
    Ok(Recorded::New(payment, op, claims))
}

/// Validates the recorded coins of `payment` at their bank(s) and, when the bank accepts
/// them, marks the payment done with its receipt `blob` (and records `order_row`, the
/// paid order, in that same transaction) so a receipt sent is a receipt that re-opens
/// the item. On failure, says what to tell the buyer.
pub(crate) async fn validate_and_finish(
    w: &Arc<Wallet>,
    payment: i64,
    op: Option<store::Op>,
    prepared: Option<Result<pmtp_client::PreparedDeposit, pmtp_client::ClientError>>,
    blob: Vec<u8>,
    order_row: Option<store::PaidOrder>,
) -> Result<(), WalletError> {
    match op {
        Some(op) => {
            let done: ops::OnDone = Box::new(move |tx| {
                store::mark_payment_done(tx, payment, &blob)?;
                match &order_row {
                    Some(o) => store::insert_paid_order(tx, o),
                    None => Ok(()),
                }
            });
            match ops::run_op_prepared(w, &op, vec![], prepared, Some(done)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(fail_payment(w, payment, e).await.unwrap_or_else(|e| e)),
            }
        }
        None => {
            let r = validate_received(w, payment).await;
            if r.is_ok() {
                w.db.call(move |c, _| {
                    let tx = c.transaction()?;
                    store::store_receipt(&tx, payment, &blob)?;
                    if let Some(o) = &order_row {
                        store::insert_paid_order(&tx, o)?;
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            }
            r
        }
    }
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
        nonce: Nonce::new(&mut w.rng(), crate::conn_local_ip(conn.get_ref(), w), w.now()),
    });
    if let Ok(f) = Frame::seal_session(&mut w.rng(), key, &r) {
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
