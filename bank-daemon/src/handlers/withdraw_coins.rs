//! withdraw_coins: debit an account and hand out new coins.
//!
//! Order: the owner's signature (no password oracle without the private key), then the
//! password (with back-off after repeated failures). Then, for a new request the balance
//! covers (read with the account), the coins' bodies are made and their signature started
//! on the CPU pool, and meanwhile one transaction records the nonce, debits the balance
//! (refused if it would go negative), records the request and puts the coins' serials in
//! circulation under its id, with their bodies. Coins leave the bank only after that
//! commit; coins a refused or failed transaction did not issue are thrown away. A request not signed for beforehand (a
//! retry, or a balance that grew since the read) is reserved first and finished by a
//! second transaction ([`super::finish_issue`]), and a reservation left by a node that
//! stopped between the two is finished by its retry (at any node) or by the background
//! round ([`super::resume_issues`]): the debit is never lost.

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
    // The owner's signature is checked while the account and the request id are read (a
    // primary-key read each): nothing read is used, or told, unless the signature holds.
    let (claimed, request_id) = (req.body.account, body.request_id);
    let (id, read) = tokio::join!(
        bank.authenticate(&claimed, body.name.as_str(), req.clone(), now),
        bank.readers.read(move |tx| Ok((tx.account(claimed)?, tx.issued(&request_id)?)))
    );
    let id = id?;
    let (account, earlier) = read?;
    let account =
        account.ok_or_else(|| Refuse::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account {id} at this bank")))?;
    bank.check_password(&account, body.password.expose(), now).await?;

    let (id, amount, nonce_random) = (account.id, body.amount, body.nonce.random);
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
    // Signed only for a new request the balance covers (a retry gets its coins back; a
    // balance too low is refused by the debit below, before any signature).
    let fresh = if earlier.is_none() && account.balance >= amount {
        Some(super::Fresh::start(&bank, &plan, now)?)
    } else {
        None
    };
    let issue = fresh.as_ref().map(|f| f.issue.clone());
    // One transaction: the nonce, the debit (which refuses to go below zero in the
    // statement itself, so two nodes debiting one account can never overdraw it), the
    // request's row and, when signed already, the coins in circulation. A retry by
    // request id finds the row (and its coins) instead.
    let (reserved, issued) = bank
        .writer
        .run(move |tx| {
            crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
            if let Some(previous) = tx.issued(&request_id)? {
                if previous.input_hash != input_hash || previous.balance.is_none() {
                    return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
                }
                return Ok((previous, false));
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
            if let Some(issue) = &issue {
                issue.run(tx, &request_id)?;
            }
            Ok::<_, Refuse>((row, issue.is_some()))
        })
        .await??;
    let balance = reserved.balance.unwrap_or_default();
    let retried = reserved.coins.is_some();
    // Not signed beforehand (a retry, or a balance that grew since the read): the
    // reservation is finished in a second transaction, as after a crash.
    let coins = super::issued_coins(&bank, reserved, issued, fresh).await?;
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
