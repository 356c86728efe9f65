//! Operations with banks, each crash-safe the same way: an `ops` row (kind, bank, request
//! id, and the coins it takes, marked pending) is committed before the request leaves. If
//! the reply is lost or the wallet dies, the next maintenance round sends the same request
//! id again, and the bank answers a retry with its original answer (new coins for a
//! withdrawal or exchange, the acknowledgement for a deposit). A definitive refusal ends
//! the operation ([`OpState::Failed`], final: its request id is never sent again); an
//! ambiguous failure leaves it started for the next round. A withdrawal also ends on a
//! wrong password, a locked account or a bank that cannot read it (see
//! [`ends_withdrawal`]): retrying a stored wrong password would only lock the account
//! further, with nobody asking.
//!
//! Outgoing payments whose outcome is unknown (no receipt) are resolved by exchanging their
//! coins ([`resolve_payment`]): new coins back if they were unspent; a refusal proves they
//! were spent.
//!
//! Available coins are chosen under the wallet's [`CoinLock`], held until the operation
//! that takes them has committed them as pending ([`begin_op`] with
//! [`Taking::Available`], which needs the held lock), so no two operations or payments
//! ever choose the same coin. This module uses only the store; the recovery of
//! unfinished work (`crate::recovery`) sits above it, and above buyer and merchant.

use crate::store::{self, CoinState, DbError, Op, OpKind, OpState, PaymentState};
use crate::{Claim, Wallet, WalletError};
use pmtp_client::ClientError;
use pmtp_proto::{Amount, Coin, Denomination, ReasonCode, Serial};
use std::sync::Arc;

fn is_ambiguous(e: &ClientError) -> bool {
    !matches!(e, ClientError::Refused(r) if r.code.is_definitive())
}

/// Whether a withdrawal's failure ends it, beyond the bank's definitive refusals.
///
/// - `wrong_password`: the stored password is wrong; each retry would count one more
///   failure against the account and lock it longer.
/// - `decrypt_failed` (even unauthenticated): the bank cannot read requests sealed to the
///   key this wallet has for it, so no attempt of this request has ever been executed.
/// - `too_many_attempts` on the first attempt only: the bank checks the lock before it
///   looks the request id up, so on a retry the lock may hide an earlier attempt that was
///   executed (its coins would be lost if the operation ended). A retry with the right
///   password during a lock costs the account nothing, and ends once the lock lapses.
pub fn ends_withdrawal(e: &ClientError, first_attempt: bool) -> bool {
    match e.code() {
        Some(ReasonCode::WRONG_PASSWORD | ReasonCode::DECRYPT_FAILED) => true,
        Some(ReasonCode::TOO_MANY_ATTEMPTS) => first_attempt,
        _ => !is_ambiguous(e),
    }
}

/// Withdraws `amount` from this wallet's account at `bank`.
pub async fn withdraw(w: &Arc<Wallet>, bank: &str, amount: Amount, password: &str) -> Result<Amount, WalletError> {
    let entry = w.bank(bank)?;
    if entry.account.is_none() {
        return Err(WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account at bank {bank} in the config")));
    }
    let request_id: [u8; 16] = pmtp_proto::rng::bytes(&mut w.rng());
    let (b, pw) = (bank.to_owned(), password.to_owned());
    let claims = w.ops_in_flight.clone();
    let (op_id, _claim) =
        w.db.call(move |c, vault| {
            let secret = vault.seal(b"withdraw password", pw.as_bytes())?;
            let tx = c.transaction()?;
            let id = store::insert_withdraw(&tx, &b, &request_id, amount, &secret)?;
            // Claimed before it is visible: maintenance does not send it alongside us.
            let claim = claims.claim(id);
            tx.commit()?;
            Ok((id, claim))
        })
        .await?;
    let op = Op {
        id: op_id,
        kind: OpKind::Withdraw,
        bank: bank.to_owned(),
        request_id,
        amount,
        payment: None,
        secret: None,
    };
    run_withdraw(w, &op, password, true).await
}

/// Sends a recorded withdrawal (`first_attempt`: its request id has never been sent).
async fn run_withdraw(w: &Arc<Wallet>, op: &Op, password: &str, first_attempt: bool) -> Result<Amount, WalletError> {
    let entry = w.bank(&op.bank)?;
    let (account, name) = entry
        .account
        .clone()
        .ok_or_else(|| WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account at bank {}", op.bank)))?;
    let result = entry.client.withdraw(&w.identity, account, &name, password, op.request_id, op.amount, vec![]).await;
    let op_id = op.id;
    match result {
        Ok(resp) => {
            let coins = resp.coins;
            w.db.call(move |c, vault| {
                let tx = c.transaction()?;
                // A retry after a crash may find the coins already stored.
                store::insert_issued_coins(&tx, vault, &coins)?;
                store::end_op(&tx, op_id, OpState::Done, "")?;
                tx.commit()?;
                Ok(())
            })
            .await?;
            tracing::info!(bank = %op.bank, amount = %op.amount, "withdrew coins");
            Ok(resp.balance)
        }
        Err(e) if ends_withdrawal(&e, first_attempt) => {
            let reason = e.to_string();
            w.db.call(move |c, _| {
                let tx = c.transaction()?;
                store::end_op(&tx, op_id, OpState::Failed, &reason)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
            tracing::warn!(op = op_id, bank = %op.bank, amount = %op.amount, reason = %e, "withdrawal failed; it will not be retried");
            Err(e.into())
        }
        Err(e) => Err(WalletError::new(
            e.code().unwrap_or(ReasonCode::PEER_BANK_UNAVAILABLE),
            format!("{e}; the wallet will retry this withdrawal (same request) until the bank answers"),
        )),
    }
}

/// Serialises the choice of available coins: held from reading which coins are available
/// until the payment or operation that takes them has committed them as pending, so two
/// never choose the same coin. Only [`CoinLock::lock`] makes a [`CoinsLocked`], and
/// taking available coins ([`Taking::Available`]) needs one, borrowed until the coins are
/// marked: the lock cannot be let go between the choice and the mark.
#[derive(Default)]
pub struct CoinLock(tokio::sync::Mutex<()>);

/// The held [`CoinLock`]; released on drop.
pub struct CoinsLocked<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

impl CoinLock {
    /// Waits for the lock (first come, first served).
    pub async fn lock(&self) -> CoinsLocked<'_> {
        CoinsLocked(self.0.lock().await)
    }
}

/// The coins an operation takes, by their state now.
#[derive(Clone, Copy)]
pub enum Taking<'a> {
    /// Available coins, chosen under the held coin lock: they become pending in the
    /// transaction that records the operation.
    Available(&'a CoinsLocked<'a>),
    /// Our coins, already pending (a payment without a receipt, a coin retried alone).
    Pending,
    /// Coins received from a buyer, validated by a merchant.
    Received,
}

impl Taking<'_> {
    fn state(self) -> CoinState {
        match self {
            Taking::Available(_) => CoinState::Available,
            Taking::Pending => CoinState::Pending,
            Taking::Received => CoinState::Received,
        }
    }
}

/// Work to do in the same transaction as an operation's success (a merchant marks the
/// payment done and stores the receipt there).
pub type OnDone = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(), DbError> + Send>;

/// Exchanges (or deposits) coins at their bank, as one operation
/// ([`begin_op`], then [`run_op_then`]). `denominations` applies to exchanges (empty: the
/// bank's split). Returns the new coins of an exchange (already stored as available).
pub async fn exchange_or_deposit(
    w: &Arc<Wallet>,
    kind: OpKind,
    bank: &str,
    serials: Vec<Serial>,
    from: Taking<'_>,
    denominations: Vec<Denomination>,
    payment: Option<i64>,
) -> Result<Vec<Coin>, WalletError> {
    let (op, _claim) = begin_op(w, kind, bank, serials, from, payment).await?;
    run_op_then(w, &op, denominations, None).await
}

/// Records an exchange or deposit of coins and commits it, with its coins marked
/// (available ones become pending, under the lock their choice was made under), before
/// anything is sent. Returns the operation and the claim on it (maintenance leaves it to
/// the caller while the claim is held).
pub async fn begin_op(
    w: &Arc<Wallet>,
    kind: OpKind,
    bank: &str,
    serials: Vec<Serial>,
    from: Taking<'_>,
    payment: Option<i64>,
) -> Result<(Op, Option<Claim>), WalletError> {
    let entry = w.bank(bank)?;
    if kind == OpKind::Deposit && entry.account.is_none() {
        return Err(WalletError::new(
            ReasonCode::UNKNOWN_ACCOUNT,
            format!("no account at bank {bank} to deposit into"),
        ));
    }
    let request_id: [u8; 16] = pmtp_proto::rng::bytes(&mut w.rng());
    let b = bank.to_owned();
    let claims = w.ops_in_flight.clone();
    let from = from.state();
    let (op_id, claim) =
        w.db.call(move |c, vault| {
            let tx = c.transaction()?;
            let op_id = store::start_coin_op(&tx, vault, kind, &b, &request_id, payment, &serials, from)?;
            // Claimed before it is visible: maintenance does not send it alongside us.
            let claim = claims.claim(op_id);
            tx.commit()?;
            Ok((op_id, claim))
        })
        .await?;
    let op = Op { id: op_id, kind, bank: bank.to_owned(), request_id, amount: Amount::ZERO, payment, secret: None };
    Ok((op, claim))
}

/// Runs a recorded exchange or deposit; on success, `on_done` runs in the same transaction
/// that marks its coins spent and the operation done.
pub async fn run_op_then(
    w: &Arc<Wallet>,
    op: &Op,
    denominations: Vec<Denomination>,
    on_done: Option<OnDone>,
) -> Result<Vec<Coin>, WalletError> {
    run_op_prepared(w, op, denominations, None, on_done).await
}

/// [`run_op_then`], sending `prepared` (connected and signed while the operation was being
/// recorded, with the coins it was recorded with) if it is this deposit's request: its
/// id and account.
pub async fn run_op_prepared(
    w: &Arc<Wallet>,
    op: &Op,
    denominations: Vec<Denomination>,
    prepared: Option<Result<pmtp_client::PreparedDeposit, ClientError>>,
    on_done: Option<OnDone>,
) -> Result<Vec<Coin>, WalletError> {
    let entry = w.bank(&op.bank)?;
    let op_id = op.id;
    // A deposit prepared for this operation holds the coins it was just recorded with
    // (received from a buyer, none spent yet): no need to read them back.
    let just_recorded = match &prepared {
        Some(Ok(p)) if op.kind == OpKind::Deposit && p.request().body.request_id == op.request_id => {
            Some(p.request().body.coins.clone())
        }
        _ => None,
    };
    let (coins, ours) = match just_recorded {
        Some(coins) => (coins, false),
        None => {
            let rows = w.db.call(move |c, vault| store::coins_of_op(c, vault, op_id)).await?;
            let rows: Vec<_> = rows.into_iter().filter(|r| r.state != CoinState::Spent).collect();
            if rows.is_empty() {
                w.db.call(move |c, _| {
                    let tx = c.transaction()?;
                    store::end_op(&tx, op_id, OpState::Done, "")?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
                return Ok(vec![]);
            }
            // Coins received from a buyer are validated all or nothing: if the bank refuses
            // one, none is kept (they are the buyer's to recover). Only our own coins are
            // salvaged.
            let ours = rows.iter().all(|r| r.state == CoinState::Pending);
            (rows.into_iter().map(|r| r.coin).collect::<Vec<Coin>>(), ours)
        }
    };
    let serials: Vec<Serial> = coins.iter().map(|c| c.serial()).collect();
    let result: Result<Vec<Coin>, ClientError> = match op.kind {
        OpKind::Exchange => entry.client.exchange(op.request_id, coins.clone(), denominations).await.map(|r| r.coins),
        OpKind::Deposit => {
            let (account, name) = entry.account.clone().ok_or_else(|| {
                WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account at bank {}", op.bank))
            })?;
            // This operation's request (so its coins are `coins`, taken from it above), into
            // the account this wallet has there.
            let mine = |p: &pmtp_client::PreparedDeposit| {
                let body = &p.request().body;
                body.request_id == op.request_id && body.account == account
            };
            let deposit = || entry.client.deposit(&w.identity, account, &name, op.request_id, coins.clone());
            match prepared {
                // The bank could not be reached a moment ago: not tried twice in a row (the
                // operation stays, for maintenance to send).
                Some(Err(e)) => Err(e),
                Some(Ok(p)) if mine(&p) => match entry.client.send_deposit(p).await {
                    // A connection prepared while the payment committed and closed since
                    // (an idle timeout): the same request again, on a new one. The bank
                    // answers a request id it has seen with its first answer.
                    Err(ClientError::Closed | ClientError::Io(_)) => deposit().await,
                    sent => sent,
                },
                _ => deposit().await,
            }
            .map(|_| vec![])
        }
        OpKind::Withdraw => return Err(WalletError::new(ReasonCode::INTERNAL, "not a coin operation")),
    };
    match result {
        Ok(fresh) => {
            let stored = fresh.clone();
            let spent = serials.clone();
            w.db.call(move |c, vault| {
                let tx = c.transaction()?;
                store::spend_coins(&tx, &spent)?;
                store::insert_issued_coins(&tx, vault, &stored)?;
                store::end_op(&tx, op_id, OpState::Done, "")?;
                if let Some(f) = on_done {
                    f(&tx)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
            tracing::info!(kind = op.kind.as_str(), bank = %op.bank, coins = serials.len(), "bank operation done");
            Ok(fresh)
        }
        Err(e) if is_ambiguous(&e) => Err(WalletError::new(
            e.code().unwrap_or(ReasonCode::PEER_BANK_UNAVAILABLE),
            format!("{e}; the wallet will retry (same request) until the bank answers"),
        )),
        Err(e) => {
            let code = e.code().unwrap_or(ReasonCode::INTERNAL);
            let reason = e.to_string();
            let spent_all =
                matches!(code, ReasonCode::COIN_NOT_IN_CIRCULATION | ReasonCode::COIN_EXPIRED) && serials.len() == 1;
            let split = ours
                && matches!(code, ReasonCode::COIN_NOT_IN_CIRCULATION | ReasonCode::COIN_EXPIRED)
                && serials.len() > 1;
            let back = serials.clone();
            w.db.call(move |c, _| {
                let tx = c.transaction()?;
                store::end_op(&tx, op_id, OpState::Failed, &reason)?;
                if spent_all {
                    store::spend_coins(&tx, &back)?;
                } else if !split {
                    // Refused for a reason that spends nothing: the coins are still ours.
                    store::restore_pending_coins(&tx, &back)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
            if split {
                // All or nothing at the bank: one of these coins is spent or expired. Try
                // each alone (bounded by the number of coins) to keep the good ones.
                for s in serials {
                    let kind = op.kind;
                    // The coin keeps its state (pending: ours, never available meanwhile
                    // for another payment to choose; received: the buyer's) under a new
                    // operation. Any other state has nothing left to try.
                    let from = match w.db.call(move |c, _| store::coin_state(c, &s)).await? {
                        Some(CoinState::Received) => Taking::Received,
                        Some(CoinState::Pending) => Taking::Pending,
                        Some(CoinState::Available | CoinState::Spent | CoinState::Quarantined) | None => continue,
                    };
                    let _ = Box::pin(exchange_or_deposit(w, kind, &op.bank, vec![s], from, vec![], op.payment)).await;
                }
            }
            Err(e.into())
        }
    }
}

/// Deposits `amount` (or everything, when `None`) of the available coins of `bank`.
pub async fn deposit(w: &Arc<Wallet>, bank: &str, amount: Option<Amount>) -> Result<Amount, WalletError> {
    let locked = w.coin_lock.lock().await;
    let b = bank.to_owned();
    let rows = w.db.call(move |c, vault| store::coins_in(c, vault, CoinState::Available, Some(&b))).await?;
    let chosen: Vec<Serial> = match amount {
        None => rows.iter().map(|r| r.coin.serial()).collect(),
        Some(a) => {
            let denoms: Vec<Denomination> = rows.iter().map(|r| r.coin.body().value).collect();
            match pmtp_proto::denomination::select_exact(&denoms, a) {
                Ok(idx) => idx.into_iter().map(|i| rows[i].coin.serial()).collect(),
                Err(e) => {
                    return Err(WalletError::new(
                        ReasonCode::NOT_ENOUGH_MONEY,
                        format!("{e}; try `payme-wallet exchange` first"),
                    ))
                }
            }
        }
    };
    if chosen.is_empty() {
        return Err(WalletError::new(ReasonCode::NOT_ENOUGH_MONEY, format!("no coins of bank {bank} to deposit")));
    }
    let total = Amount::checked_sum(rows.iter().filter(|r| chosen.contains(&r.coin.serial())).map(|r| r.coin.value()))
        .map_err(|e| WalletError::new(ReasonCode::INVALID_AMOUNT, e.to_string()))?;
    let (op, _claim) = begin_op(w, OpKind::Deposit, bank, chosen, Taking::Available(&locked), None).await?;
    drop(locked);
    run_op_then(w, &op, vec![], None).await?;
    Ok(total)
}

/// Exchanges all available coins of `bank` for fresh ones (new serials: unlinkable to the
/// withdrawal, and a new expiry).
pub async fn exchange_all(w: &Arc<Wallet>, bank: &str) -> Result<Amount, WalletError> {
    let locked = w.coin_lock.lock().await;
    let b = bank.to_owned();
    let rows = w.db.call(move |c, vault| store::coins_in(c, vault, CoinState::Available, Some(&b))).await?;
    if rows.is_empty() {
        return Err(WalletError::new(ReasonCode::NOT_ENOUGH_MONEY, format!("no coins of bank {bank} to exchange")));
    }
    let total = Amount::checked_sum(rows.iter().map(|r| r.coin.value()))
        .map_err(|e| WalletError::new(ReasonCode::INVALID_AMOUNT, e.to_string()))?;
    let serials = rows.iter().map(|r| r.coin.serial()).collect();
    let (op, _claim) = begin_op(w, OpKind::Exchange, bank, serials, Taking::Available(&locked), None).await?;
    drop(locked);
    run_op_then(w, &op, vec![], None).await?;
    Ok(total)
}

/// Exchanges the pending coins of an outgoing payment whose outcome is unknown, and
/// settles the payment as returned (some value came back) or spent_unconfirmed (none
/// did), unless one of its coins is quarantined or an exchange's outcome is itself
/// unknown. Returns the value that came back (the rest was spent: the merchant has it).
pub async fn resolve_payment(w: &Arc<Wallet>, payment: i64) -> Result<Amount, WalletError> {
    let (rows, quarantined) =
        w.db.call(move |c, vault| {
            Ok((store::coins_of_payment(c, vault, payment)?, store::quarantined_of_payment(c, payment)?))
        })
        .await?;
    let pending: Vec<_> = rows.into_iter().filter(|r| r.state == CoinState::Pending).collect();
    let mut by_bank: std::collections::BTreeMap<String, Vec<Serial>> = Default::default();
    for r in &pending {
        by_bank.entry(r.coin.body().bank_id.as_str().to_owned()).or_default().push(r.coin.serial());
    }
    let mut returned = Amount::ZERO;
    // A quarantined coin of the payment cannot be exchanged to learn its fate: the
    // payment stays unresolved (not "spent") until someone looks at it.
    let mut unresolved = quarantined > 0;
    if unresolved {
        tracing::warn!(payment, coins = quarantined, "payment has quarantined coins; left unresolved");
    }
    for (bank, serials) in by_bank {
        // The coins are pending under the payment; the exchange takes them as they are.
        match exchange_or_deposit(w, OpKind::Exchange, &bank, serials, Taking::Pending, vec![], Some(payment)).await {
            Ok(fresh) => {
                let back = Amount::checked_sum(fresh.iter().map(|c| c.value())).and_then(|v| returned.checked_add(v));
                match back {
                    Ok(v) => returned = v,
                    Err(e) => {
                        // Cannot happen with coins the bank issued; if it did, the value
                        // that came back is not known, so the payment stays unresolved.
                        tracing::error!(payment, error = %e, "value returned by exchange overflows");
                        unresolved = true;
                    }
                }
            }
            Err(e) if e.code.is_definitive() => {}
            Err(_) => unresolved = true,
        }
    }
    if !unresolved {
        let state = if returned.is_zero() { PaymentState::SpentUnconfirmed } else { PaymentState::Returned };
        w.db.call(move |c, _| {
            let tx = c.transaction()?;
            store::resolve_outgoing(&tx, payment, state)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        tracing::info!(payment, returned = %returned, "payment without receipt resolved");
    }
    Ok(returned)
}

/// Sends a started operation again, under its request id (maintenance, after a crash or
/// a lost reply). A withdrawal without a readable stored password is not sent: an empty
/// or garbled one would only count as a wrong password against the account.
pub async fn retry(w: &Arc<Wallet>, op: &Op) -> Result<(), WalletError> {
    match op.kind {
        OpKind::Withdraw => {
            let password = op
                .secret
                .as_ref()
                .and_then(|s| w.db.vault.open(b"withdraw password", s).ok())
                .and_then(|p| String::from_utf8(p.to_vec()).ok());
            match password {
                Some(p) => run_withdraw(w, op, &p, false).await.map(|_| ()),
                None => {
                    tracing::warn!(op = op.id, "unfinished withdrawal has no readable password; not retried");
                    Ok(())
                }
            }
        }
        OpKind::Exchange | OpKind::Deposit => run_op_then(w, op, vec![], None).await.map(|_| ()),
    }
}

/// Exchanges coins that expire within `refresh_before_secs` for fresh ones.
pub async fn refresh(w: &Arc<Wallet>) -> Result<(), WalletError> {
    let horizon = w.now().saturating_add(w.config.limits.refresh_before_secs);
    let banks: Vec<String> = w.banks.keys().cloned().collect();
    for bank in banks {
        let locked = w.coin_lock.lock().await;
        let b = bank.clone();
        let rows = w.db.call(move |c, _| store::values_in(c, CoinState::Available, &b)).await?;
        let old: Vec<Serial> = rows.iter().filter(|r| r.2 <= horizon).map(|r| r.0).collect();
        if old.is_empty() {
            continue;
        }
        tracing::info!(bank = %bank, coins = old.len(), "refreshing coins near expiry");
        let (op, _claim) = begin_op(w, OpKind::Exchange, &bank, old, Taking::Available(&locked), None).await?;
        drop(locked);
        run_op_then(w, &op, vec![], None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmtp_proto::refusal::{reason_text, PlainRefusal, Refusal};

    #[test]
    fn which_failures_end_a_withdrawal() {
        let sealed = |code| {
            ClientError::Refused(Refusal {
                code,
                text: reason_text("no"),
                nonce: pmtp_proto::Nonce::new(&mut pmtp_proto::rng::os(), [127, 0, 0, 1].into(), 0),
            })
        };
        let plain = |code| ClientError::PlainRefused(PlainRefusal { code, text: reason_text("no") });
        for first in [true, false] {
            assert!(ends_withdrawal(&sealed(ReasonCode::WRONG_PASSWORD), first));
            assert!(ends_withdrawal(&sealed(ReasonCode::INSUFFICIENT_FUNDS), first));
            assert!(ends_withdrawal(&plain(ReasonCode::DECRYPT_FAILED), first), "the bank cannot read our requests");
            assert!(!ends_withdrawal(&ClientError::Timeout, first));
            assert!(!ends_withdrawal(&sealed(ReasonCode::BUSY), first));
            assert!(!ends_withdrawal(&plain(ReasonCode::NONCE_OUTSIDE_WINDOW), first));
        }
        // A lock on the first attempt: nothing of this request ever executed. On a retry
        // the lock may hide an earlier attempt that did, so it goes on (costing nothing).
        assert!(ends_withdrawal(&sealed(ReasonCode::TOO_MANY_ATTEMPTS), true));
        assert!(!ends_withdrawal(&sealed(ReasonCode::TOO_MANY_ATTEMPTS), false));
    }
}
