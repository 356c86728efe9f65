//! withdraw_coins: debit an account and hand out new coins.
//!
//! Order: the owner's signature (no password oracle without the private key), then the
//! password (with back-off after repeated failures), then the checks one read can make
//! (a retry by request id, the balance), then minting on all cores, then one transaction
//! that records the nonce, re-checks and debits the balance, writes the ledger and inserts
//! the new serials. Coins leave the bank only after that commit; if it fails,
//! the signed coins are dropped and, their serials never inserted, are worthless.

use super::{cpu, mint, plan_denominations, Refuse};
use crate::store::{CounterDelta, IssuedRow, SerialRow};
use crate::Bank;
use pmtp_proto::bank_statement::EntryKind;
use pmtp_proto::{Amount, Nonce, ReasonCode, WithdrawCoinsRequest, WithdrawCoinsResponse};
use std::net::IpAddr;
use std::sync::Arc;

pub async fn handle(
    bank: Arc<Bank>,
    req: Arc<WithdrawCoinsRequest>,
    peer: IpAddr,
    now: u64,
) -> Result<WithdrawCoinsResponse, Refuse> {
    let body = &req.body;
    if body.amount.is_zero() || body.amount.minor_units() > bank.config.limits.max_withdraw_amount {
        return Err(Refuse::new(
            ReasonCode::INVALID_AMOUNT,
            format!("amount must be 1 to {}", bank.config.limits.max_withdraw_amount),
        ));
    }
    let plan = plan_denominations(&bank, body.amount, &body.denominations)?;
    let id = bank.authenticate(&req.body.account, body.name.as_str(), req.clone(), now).await?;
    let account = bank.account(id).await?;
    bank.check_password(&account, body.password.expose(), now).await?;

    let (id, amount, nonce_random, request_id) = (account.id, body.amount, body.nonce.random, body.request_id);
    let input_hash = pmtp_proto::keys::tagged_hash(
        b"payme withdraw request",
        &[
            &id.0.to_le_bytes(),
            &amount.minor_units().to_le_bytes(),
            &bincode::serialize(&body.denominations).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?,
        ],
    );
    // Everything a read can tell, before paying for signatures: a retry gets its coins
    // back without new ones being signed; a request that reuses an id, or that the
    // balance cannot cover, is refused for the cost of one read.
    let previous = bank.readers.read(move |tx| tx.issued(&request_id)).await?;
    let fresh = match previous {
        Some(p) if p.input_hash != input_hash || p.balance.is_none() => {
            return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
        }
        Some(_) => None,
        None => {
            if account.balance < amount {
                return Err(insufficient(account.balance, amount));
            }
            Some(mint(&bank, plan, now).await?)
        }
    };
    let rows: Vec<SerialRow> = fresh
        .iter()
        .flatten()
        .map(|c| SerialRow { serial: c.serial(), value: c.value(), expiry: c.body().expiry, key_id: c.body().key_id })
        .collect();
    let coins_blob = match &fresh {
        Some(coins) => bincode::serialize(coins).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?,
        None => Vec::new(),
    };
    let nonce_expiry = bank.nonce_expiry(&body.nonce);
    let count = rows.len() as u64;
    let reset_failures = account.failed_attempts > 0;
    let outcome = bank
        .writer
        .run(move |tx| {
            crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
            if let Some(previous) = tx.issued(&request_id)? {
                if previous.input_hash != input_hash || previous.balance.is_none() {
                    return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
                }
                return Ok(Issued::Before(previous.coins, previous.balance.unwrap_or_default()));
            }
            if rows.is_empty() {
                // The record read before signing is gone (retention ran in between).
                return Err(Refuse::new(ReasonCode::INTERNAL, "the bank lost track of this retry; try again"));
            }
            let acct = tx.account(id)?.ok_or_else(|| Refuse::new(ReasonCode::UNKNOWN_ACCOUNT, "account closed"))?;
            let balance = acct.balance.checked_sub(amount).map_err(|_| insufficient(acct.balance, amount))?;
            tx.set_balance(id, balance)?;
            tx.add_ledger_entry(id, now, EntryKind::Withdrawal, amount, balance, "coins withdrawn")?;
            for r in &rows {
                if !tx.insert_serial(r)? {
                    return Err(Refuse::new(ReasonCode::INTERNAL, "serial collision; try again"));
                }
            }
            tx.add_counters(&CounterDelta { minted: (amount, count), ..Default::default() })?;
            if reset_failures {
                tx.set_login_failures(id, 0, 0)?;
            }
            tx.insert_issued(&IssuedRow {
                request_id,
                input_hash,
                coins: coins_blob,
                balance: Some(balance),
                time: now,
            })?;
            Ok::<Issued, Refuse>(Issued::Now(balance))
        })
        .await??;
    let (coins, balance) = match outcome {
        Issued::Now(balance) => {
            tracing::info!(account = %id, amount = %amount, coins = count, "withdrawal");
            (fresh.unwrap_or_default(), balance)
        }
        Issued::Before(blob, balance) => {
            tracing::info!(account = %id, amount = %amount, "withdrawal retried; same coins returned");
            (decode_issued(&blob)?, balance)
        }
    };
    Ok(WithdrawCoinsResponse { coins, balance, nonce: Nonce::new(&mut bank.rng(), bank.local_ip(peer), now) })
}

fn insufficient(balance: Amount, amount: Amount) -> Refuse {
    Refuse::new(ReasonCode::INSUFFICIENT_FUNDS, format!("balance {balance} is less than {amount}"))
}

/// Whether a withdrawal or exchange was done now, or earlier under the same request id.
pub(crate) enum Issued {
    Now(Amount),
    Before(Vec<u8>, Amount),
}

pub(crate) fn decode_issued(blob: &[u8]) -> Result<Vec<pmtp_proto::Coin>, Refuse> {
    bincode::deserialize(blob).map_err(|_| Refuse::new(ReasonCode::INTERNAL, "stored coins are damaged"))
}

/// Checks an Argon2id password hash (CPU pool).
pub(crate) async fn verify_password(hash: String, password: String) -> Result<bool, Refuse> {
    Ok(cpu(move || {
        use argon2::password_hash::PasswordVerifier;
        // A malformed stored hash verifies nothing: the account cannot withdraw until an
        // administrator resets its password.
        argon2::Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok()
    })
    .await?)
}
