//! withdraw_coins: debit an account and hand out new coins.
//!
//! Order: the owner's signature (no password oracle without the private key), then the
//! password (with back-off after repeated failures), then three persisted steps: one
//! transaction records the nonce, debits the balance (refused if it would go negative)
//! and reserves the request; the coins are signed on all cores outside any transaction;
//! a second transaction puts their serials in circulation and stores them under the
//! request id ([`super::finish_issue`]). Coins leave the bank only after that commit. A
//! request interrupted between the steps is finished by its retry (at any node) or by
//! the background round ([`super::resume_issues`]): the debit is never lost.

use super::{cpu, plan_denominations, Refuse};
use crate::store::IssuedRow;
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
    let plan_blob = bincode::serialize(&plan).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?;
    let nonce_expiry = bank.nonce_expiry(&body.nonce);
    let reset_failures = account.failed_attempts > 0;
    // Step 1, before paying for signatures: check and reserve. The debit refuses to go
    // below zero in the statement itself, so two nodes debiting one account can never
    // overdraw it; a retry by request id finds the reservation (or the coins) instead.
    let (reserved, minting) = bank
        .writer
        .run_then(
            move |tx| {
                crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
                if let Some(previous) = tx.issued(&request_id)? {
                    if previous.input_hash != input_hash || previous.balance.is_none() {
                        return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
                    }
                    return Ok(previous);
                }
                let Some(balance) = tx.debit(id, amount, now, EntryKind::Withdrawal, "coins withdrawn")? else {
                    let have = tx.account(id)?.map(|a| a.balance).unwrap_or_default();
                    return Err(insufficient(have, amount));
                };
                if reset_failures {
                    tx.set_login_failures(id, 0, 0)?;
                }
                let row = IssuedRow {
                    request_id,
                    input_hash,
                    plan: plan_blob.clone(),
                    coins: None,
                    balance: Some(balance),
                    time: now,
                };
                tx.reserve_issue(&row)?;
                Ok::<IssuedRow, Refuse>(row)
            },
            // Signing starts while the reservation's commit waits for the disk; the coins
            // are issued (step 3) only after that commit.
            super::minting(&bank),
        )
        .await??;
    let balance = reserved.balance.unwrap_or_default();
    let retried = reserved.coins.is_some();
    // Steps 2 and 3: sign outside any transaction, then issue.
    let coins = super::finish_issue(&bank, reserved, minting).await?;
    if retried {
        tracing::info!(account = %id, amount = %amount, "withdrawal retried; same coins returned");
    } else {
        tracing::info!(account = %id, amount = %amount, coins = coins.len(), "withdrawal");
    }
    Ok(WithdrawCoinsResponse { coins, balance, nonce: Nonce::new(&mut bank.rng(), bank.local_ip(peer), now) })
}

fn insufficient(balance: Amount, amount: Amount) -> Refuse {
    Refuse::new(ReasonCode::INSUFFICIENT_FUNDS, format!("balance {balance} is less than {amount}"))
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
