//! Operations with banks, each crash-safe the same way: an `ops` row (kind, bank, request
//! id, and the coins it takes, marked pending) is committed before the request leaves. If
//! the reply is lost or the wallet dies, the next maintenance round sends the same request
//! id again, and the bank answers a retry with its original answer (new coins for a
//! withdrawal or exchange, the acknowledgement for a deposit). A definitive refusal ends
//! the operation; an ambiguous failure leaves it for the next round.
//!
//! Outgoing payments whose outcome is unknown (no receipt) are resolved by exchanging their
//! coins: new coins back if they were unspent; a refusal proves they were spent.

use crate::db::{self, coins_in, coins_of, insert_coins, move_coins, CoinState, DbError};
use crate::{Wallet, WalletError};
use pmtp_client::ClientError;
use pmtp_proto::{Amount, Coin, Denomination, ReasonCode, Serial};
use rusqlite::{params, OptionalExtension};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Withdraw,
    Exchange,
    Deposit,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Withdraw => "withdraw",
            OpKind::Exchange => "exchange",
            OpKind::Deposit => "deposit",
        }
    }
}

/// An operation row.
#[derive(Clone, Debug)]
pub struct Op {
    pub id: i64,
    pub kind: OpKind,
    pub bank: String,
    pub request_id: [u8; 16],
    pub amount: Amount,
    pub payment: Option<i64>,
    pub secret: Option<Vec<u8>>,
}

fn is_ambiguous(e: &ClientError) -> bool {
    !matches!(e, ClientError::Refused(r) if r.code.is_definitive())
}

/// Withdraws `amount` from this wallet's account at `bank`.
pub async fn withdraw(w: &Arc<Wallet>, bank: &str, amount: Amount, password: &str) -> Result<Amount, WalletError> {
    let entry = w.bank(bank)?;
    if entry.account.is_none() {
        return Err(WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account at bank {bank} in the config")));
    }
    let request_id: [u8; 16] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
    let (b, pw) = (bank.to_owned(), password.to_owned());
    let op_id = w
        .db
        .call(move |c, vault| {
            let secret = vault.seal(b"withdraw password", pw.as_bytes())?;
            c.execute(
                "INSERT INTO ops(kind, state, bank_id, request_id, amount, secret, created) VALUES ('withdraw', 'started', ?1, ?2, ?3, ?4, ?5)",
                params![b, &request_id[..], db::i(amount.minor_units())?, secret, db::i(db::now())?],
            )?;
            Ok(c.last_insert_rowid())
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
    run_withdraw(w, &op, password).await
}

async fn run_withdraw(w: &Arc<Wallet>, op: &Op, password: &str) -> Result<Amount, WalletError> {
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
                let known: Option<i64> = tx
                    .query_row("SELECT 1 FROM coins WHERE serial = ?1", params![&coins[0].serial().0[..]], |r| r.get(0))
                    .optional()?;
                if known.is_none() {
                    insert_coins(&tx, vault, &coins, CoinState::Available, None)?;
                }
                tx.execute("UPDATE ops SET state = 'done', secret = NULL WHERE id = ?1", params![op_id])?;
                tx.commit()?;
                Ok(())
            })
            .await?;
            tracing::info!(bank = %op.bank, amount = %op.amount, "withdrew coins");
            Ok(resp.balance)
        }
        Err(e) if !is_ambiguous(&e) => {
            let reason = e.to_string();
            w.db.call(move |c, _| {
                c.execute(
                    "UPDATE ops SET state = 'failed', secret = NULL, reason = ?2 WHERE id = ?1",
                    params![op_id, reason],
                )?;
                Ok(())
            })
            .await?;
            Err(e.into())
        }
        Err(e) => Err(WalletError::new(
            e.code().unwrap_or(ReasonCode::PEER_BANK_UNAVAILABLE),
            format!("{e}; the wallet will retry this withdrawal (same request) until the bank answers"),
        )),
    }
}

/// Records an exchange or deposit operation and tags its coins, inside `tx` (so it can
/// share a transaction with whatever made the coins ours). Coins in `from = Available`
/// become pending; received coins stay received until the bank answers.
#[allow(clippy::too_many_arguments)]
pub fn start_op(
    tx: &rusqlite::Transaction<'_>,
    vault: &db::Vault,
    kind: OpKind,
    bank: &str,
    request_id: &[u8; 16],
    payment: Option<i64>,
    serials: &[Serial],
    from: CoinState,
) -> Result<i64, DbError> {
    tx.execute(
        "INSERT INTO ops(kind, state, bank_id, request_id, amount, payment, created) VALUES (?1, 'started', ?2, ?3, 0, ?4, ?5)",
        params![kind.as_str(), bank, &request_id[..], payment, db::i(db::now())?],
    )?;
    let op_id = tx.last_insert_rowid();
    if from == CoinState::Available {
        move_coins(tx, serials, CoinState::Pending, None, Some(op_id))?;
    } else {
        for s in serials {
            tx.execute("UPDATE coins SET op = ?2 WHERE serial = ?1", params![&s.0[..], op_id])?;
        }
    }
    let total: i64 = coins_of(tx, vault, "op", op_id)?.iter().map(|r| r.coin.value().minor_units() as i64).sum();
    tx.execute("UPDATE ops SET amount = ?2 WHERE id = ?1", params![op_id, total])?;
    Ok(op_id)
}

/// Work to do in the same transaction as an operation's success (a merchant marks the
/// payment done and stores the receipt there).
pub type OnDone = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(), DbError> + Send>;

/// Exchanges (or deposits) coins now in `from` state at their bank, as one operation.
/// `denominations` applies to exchanges (empty: the bank's split). Returns the new coins
/// of an exchange (already stored as available).
pub async fn exchange_or_deposit(
    w: &Arc<Wallet>,
    kind: OpKind,
    bank: &str,
    serials: Vec<Serial>,
    from: CoinState,
    denominations: Vec<Denomination>,
    payment: Option<i64>,
) -> Result<Vec<Coin>, WalletError> {
    let entry = w.bank(bank)?;
    if kind == OpKind::Deposit && entry.account.is_none() {
        return Err(WalletError::new(
            ReasonCode::UNKNOWN_ACCOUNT,
            format!("no account at bank {bank} to deposit into"),
        ));
    }
    let request_id: [u8; 16] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
    let b = bank.to_owned();
    let op_id =
        w.db.call(move |c, vault| {
            let tx = c.transaction()?;
            let op_id = start_op(&tx, vault, kind, &b, &request_id, payment, &serials, from)?;
            tx.commit()?;
            Ok(op_id)
        })
        .await?;
    let op = Op { id: op_id, kind, bank: bank.to_owned(), request_id, amount: Amount::ZERO, payment, secret: None };
    run_exchange_or_deposit(w, &op, denominations).await
}

async fn run_exchange_or_deposit(
    w: &Arc<Wallet>,
    op: &Op,
    denominations: Vec<Denomination>,
) -> Result<Vec<Coin>, WalletError> {
    run_op_then(w, op, denominations, None).await
}

/// Runs a recorded exchange or deposit; on success, `on_done` runs in the same transaction
/// that marks its coins spent and the operation done.
pub async fn run_op_then(
    w: &Arc<Wallet>,
    op: &Op,
    denominations: Vec<Denomination>,
    on_done: Option<OnDone>,
) -> Result<Vec<Coin>, WalletError> {
    let entry = w.bank(&op.bank)?;
    let op_id = op.id;
    let rows = w.db.call(move |c, vault| coins_of(c, vault, "op", op_id)).await?;
    let rows: Vec<_> = rows.into_iter().filter(|r| r.state != CoinState::Spent).collect();
    if rows.is_empty() {
        w.db.call(move |c, _| Ok(c.execute("UPDATE ops SET state = 'done' WHERE id = ?1", params![op_id])?)).await?;
        return Ok(vec![]);
    }
    let coins: Vec<Coin> = rows.iter().map(|r| r.coin.clone()).collect();
    let serials: Vec<Serial> = coins.iter().map(|c| c.serial()).collect();
    // Coins received from a buyer are validated all or nothing: if the bank refuses one,
    // none is kept (they are the buyer's to recover). Only our own coins are salvaged.
    let ours = rows.iter().all(|r| r.state == CoinState::Pending);
    let result: Result<Vec<Coin>, ClientError> = match op.kind {
        OpKind::Exchange => entry.client.exchange(op.request_id, coins.clone(), denominations).await.map(|r| r.coins),
        OpKind::Deposit => {
            let (account, name) = entry.account.clone().ok_or_else(|| {
                WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account at bank {}", op.bank))
            })?;
            entry.client.deposit(&w.identity, account, &name, op.request_id, coins.clone()).await.map(|_| vec![])
        }
        OpKind::Withdraw => return Err(WalletError::new(ReasonCode::INTERNAL, "not a coin operation")),
    };
    match result {
        Ok(fresh) => {
            let stored = fresh.clone();
            let spent = serials.clone();
            w.db.call(move |c, vault| {
                let tx = c.transaction()?;
                finish_coins(&tx, &spent)?;
                let known: Option<i64> = match stored.first() {
                    Some(f) => tx
                        .query_row("SELECT 1 FROM coins WHERE serial = ?1", params![&f.serial().0[..]], |r| r.get(0))
                        .optional()?,
                    None => Some(1),
                };
                if known.is_none() {
                    insert_coins(&tx, vault, &stored, CoinState::Available, None)?;
                }
                tx.execute("UPDATE ops SET state = 'done' WHERE id = ?1", params![op_id])?;
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
                tx.execute("UPDATE ops SET state = 'failed', reason = ?2 WHERE id = ?1", params![op_id, reason])?;
                if spent_all {
                    finish_coins(&tx, &back)?;
                } else if !split {
                    // Refused for a reason that spends nothing: the coins are still ours.
                    restore_coins(&tx, &back)?;
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
                    let state: Option<String> =
                        w.db.call(move |c, _| {
                            Ok(c.query_row("SELECT state FROM coins WHERE serial = ?1", params![&s.0[..]], |r| {
                                r.get(0)
                            })
                            .optional()?)
                        })
                        .await?;
                    let from = match state.as_deref() {
                        Some("received") => CoinState::Received,
                        Some("pending") => {
                            w.db.call(move |c, _| {
                                let tx = c.transaction()?;
                                move_coins(&tx, &[s], CoinState::Available, None, None)?;
                                tx.commit()?;
                                Ok(())
                            })
                            .await?;
                            CoinState::Available
                        }
                        _ => continue,
                    };
                    let _ = Box::pin(exchange_or_deposit(w, kind, &op.bank, vec![s], from, vec![], op.payment)).await;
                }
            }
            Err(e.into())
        }
    }
}

/// Marks coins spent, from pending or received.
fn finish_coins(tx: &rusqlite::Transaction<'_>, serials: &[Serial]) -> Result<(), DbError> {
    for s in serials {
        let state: String =
            tx.query_row("SELECT state FROM coins WHERE serial = ?1", params![&s.0[..]], |r| r.get(0))?;
        if state != "spent" {
            move_coins(tx, &[*s], CoinState::Spent, None, None)?;
        }
    }
    Ok(())
}

/// Puts pending coins back to available (received coins stay received for a later try).
fn restore_coins(tx: &rusqlite::Transaction<'_>, serials: &[Serial]) -> Result<(), DbError> {
    for s in serials {
        let state: String =
            tx.query_row("SELECT state FROM coins WHERE serial = ?1", params![&s.0[..]], |r| r.get(0))?;
        if state == "pending" {
            move_coins(tx, &[*s], CoinState::Available, None, None)?;
        }
    }
    Ok(())
}

/// Deposits `amount` (or everything, when `None`) of the available coins of `bank`.
pub async fn deposit(w: &Arc<Wallet>, bank: &str, amount: Option<Amount>) -> Result<Amount, WalletError> {
    let _guard = w.coin_lock.lock().await;
    let b = bank.to_owned();
    let rows = w.db.call(move |c, vault| coins_in(c, vault, CoinState::Available, Some(&b))).await?;
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
    drop(_guard);
    exchange_or_deposit(w, OpKind::Deposit, bank, chosen, CoinState::Available, vec![], None).await?;
    Ok(total)
}

/// Exchanges all available coins of `bank` for fresh ones (new serials: unlinkable to the
/// withdrawal, and a new expiry).
pub async fn exchange_all(w: &Arc<Wallet>, bank: &str) -> Result<Amount, WalletError> {
    let guard = w.coin_lock.lock().await;
    let b = bank.to_owned();
    let rows = w.db.call(move |c, vault| coins_in(c, vault, CoinState::Available, Some(&b))).await?;
    if rows.is_empty() {
        return Err(WalletError::new(ReasonCode::NOT_ENOUGH_MONEY, format!("no coins of bank {bank} to exchange")));
    }
    let total = Amount::checked_sum(rows.iter().map(|r| r.coin.value()))
        .map_err(|e| WalletError::new(ReasonCode::INVALID_AMOUNT, e.to_string()))?;
    let serials = rows.iter().map(|r| r.coin.serial()).collect();
    drop(guard);
    exchange_or_deposit(w, OpKind::Exchange, bank, serials, CoinState::Available, vec![], None).await?;
    Ok(total)
}

/// Exchanges the pending coins of an outgoing payment whose outcome is unknown. Returns
/// the value that came back (the rest was spent: the merchant has it).
pub async fn resolve_payment(w: &Arc<Wallet>, payment: i64) -> Result<Amount, WalletError> {
    let rows = w.db.call(move |c, vault| coins_of(c, vault, "payment", payment)).await?;
    let pending: Vec<_> = rows.into_iter().filter(|r| r.state == CoinState::Pending).collect();
    let mut by_bank: std::collections::BTreeMap<String, Vec<Serial>> = Default::default();
    for r in &pending {
        by_bank.entry(r.coin.body().bank_id.as_str().to_owned()).or_default().push(r.coin.serial());
    }
    let mut returned = Amount::ZERO;
    let mut unresolved = false;
    for (bank, serials) in by_bank {
        // The coins are pending under the payment; the exchange takes them as they are.
        let request_id: [u8; 16] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
        let b = bank.clone();
        let s2 = serials.clone();
        let op_id = w
            .db
            .call(move |c, _| {
                let tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO ops(kind, state, bank_id, request_id, amount, payment, created) VALUES ('exchange', 'started', ?1, ?2, 0, ?3, ?4)",
                    params![b, &request_id[..], payment, db::i(db::now())?],
                )?;
                let op_id = tx.last_insert_rowid();
                for s in &s2 {
                    tx.execute("UPDATE coins SET op = ?2 WHERE serial = ?1", params![&s.0[..], op_id])?;
                }
                tx.commit()?;
                Ok(op_id)
            })
            .await?;
        let op = Op {
            id: op_id,
            kind: OpKind::Exchange,
            bank,
            request_id,
            amount: Amount::ZERO,
            payment: Some(payment),
            secret: None,
        };
        match run_exchange_or_deposit(w, &op, vec![]).await {
            Ok(fresh) => {
                returned = returned
                    .checked_add(Amount::checked_sum(fresh.iter().map(|c| c.value())).unwrap_or_default())
                    .unwrap_or(returned);
            }
            Err(e) if e.code.is_definitive() => {}
            Err(_) => unresolved = true,
        }
    }
    if !unresolved {
        let state = if returned.is_zero() { "spent_unconfirmed" } else { "returned" };
        w.db.call(move |c, _| {
            c.execute(
                "UPDATE payments SET state = ?2, updated = ?3 WHERE id = ?1 AND state IN ('sending', 'refused_unresolved')",
                params![payment, state, db::i(db::now())?],
            )?;
            Ok(())
        })
        .await?;
        tracing::info!(payment, returned = %returned, "payment without receipt resolved");
    }
    Ok(returned)
}

/// One maintenance round: finish operations left unfinished (crash, lost replies),
/// resolve payments with no receipt, validate coins a buyer sent, refresh coins near expiry.
pub async fn maintenance(w: &Arc<Wallet>) {
    if let Err(e) = maintenance_inner(w).await {
        tracing::warn!(error = %e, "maintenance round failed; will retry");
    }
}

async fn maintenance_inner(w: &Arc<Wallet>) -> Result<(), WalletError> {
    let ops: Vec<Op> = w
        .db
        .call(|c, _| {
            let mut st = c.prepare("SELECT id, kind, bank_id, request_id, amount, payment, secret FROM ops WHERE state = 'started' ORDER BY id")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<Vec<u8>>>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (id, kind, bank, rid, amount, payment, secret) = r?;
                let kind = match kind.as_str() {
                    "withdraw" => OpKind::Withdraw,
                    "exchange" => OpKind::Exchange,
                    _ => OpKind::Deposit,
                };
                let request_id = rid.try_into().map_err(|_| DbError::Other("bad request id".into()))?;
                out.push(Op { id, kind, bank, request_id, amount: Amount::new(amount.max(0) as u64), payment, secret });
            }
            Ok(out)
        })
        .await?;
    for op in ops {
        let result = match op.kind {
            OpKind::Withdraw => {
                let password = match &op.secret {
                    Some(s) => {
                        String::from_utf8(w.db.vault.open(b"withdraw password", s)?.to_vec()).unwrap_or_default()
                    }
                    None => String::new(),
                };
                run_withdraw(w, &op, &password).await.map(|_| ())
            }
            _ => run_exchange_or_deposit(w, &op, vec![]).await.map(|_| ()),
        };
        if let Err(e) = result {
            tracing::info!(op = op.id, reason = %e, "unfinished operation retried");
        }
    }
    // Outgoing payments with no receipt and nothing in flight.
    let in_flight: Vec<i64> = w.in_flight.lock().map(|s| s.iter().copied().collect()).unwrap_or_default();
    let open: Vec<i64> =
        w.db.call(|c, _| {
            let mut st = c.prepare(
                "SELECT id FROM payments WHERE direction = 'out' AND state IN ('sending', 'refused_unresolved')",
            )?;
            let ids = st.query_map([], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await?;
    for p in open.into_iter().filter(|p| !in_flight.contains(p)) {
        let _ = resolve_payment(w, p).await;
    }
    // Merchant side: coins received and not yet validated.
    let received: Vec<i64> =
        w.db.call(|c, _| {
            let mut st =
                c.prepare("SELECT DISTINCT payment FROM coins WHERE state = 'received' AND payment IS NOT NULL")?;
            let ids = st.query_map([], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await?;
    for p in received.into_iter().filter(|p| !in_flight.contains(p)) {
        let _ = crate::merchant::validate_received(w, p).await;
    }
    // Incoming payments whose coins a retried operation has since validated.
    w.db.call(|c, _| {
        c.execute(
            "UPDATE payments SET state = 'done' WHERE direction = 'in' AND state = 'received'
             AND NOT EXISTS (SELECT 1 FROM coins WHERE coins.payment = payments.id AND coins.state = 'received')",
            [],
        )?;
        Ok(())
    })
    .await?;
    refresh(w).await
}

/// Exchanges coins that expire within `refresh_before_secs` for fresh ones.
pub async fn refresh(w: &Arc<Wallet>) -> Result<(), WalletError> {
    let horizon = db::now().saturating_add(w.config.limits.refresh_before_secs);
    let banks: Vec<String> = w.banks.keys().cloned().collect();
    for bank in banks {
        let guard = w.coin_lock.lock().await;
        let b = bank.clone();
        let rows = w.db.call(move |c, _| db::values_in(c, CoinState::Available, &b)).await?;
        let old: Vec<Serial> = rows.iter().filter(|r| r.2 <= horizon).map(|r| r.0).collect();
        drop(guard);
        if !old.is_empty() {
            tracing::info!(bank = %bank, coins = old.len(), "refreshing coins near expiry");
            exchange_or_deposit(w, OpKind::Exchange, &bank, old, CoinState::Available, vec![], None).await?;
        }
    }
    Ok(())
}
