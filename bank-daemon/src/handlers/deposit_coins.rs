//! deposit_coins: take coins out of circulation and credit an account.
//!
//! All or nothing: every serial is removed in one transaction (sorted, so concurrent
//! deposits take row locks in one order), and if any is missing the savepoint is rolled
//! back, nothing is removed, and the refusal names that coin. A retried deposit (same
//! request id, same coins, same account; a fresh nonce) gets the original answer, so a
//! depositor who lost the reply can ask again without being credited twice.

use super::{verify_coins, Refuse};
use crate::store::{DepositRow, Spend};
use crate::Bank;
use pmtp_proto::bank_statement::EntryKind;
use pmtp_proto::coin::coins_hash;
use pmtp_proto::{Coin, DepositAck, DepositCoinsRequest, DepositCoinsResponse, Nonce, ReasonCode};
use std::net::IpAddr;
use std::sync::Arc;

pub async fn handle(
    bank: Arc<Bank>,
    req: Arc<DepositCoinsRequest>,
    peer: IpAddr,
    now: u64,
) -> Result<DepositCoinsResponse, Refuse> {
    let body = &req.body;
    let account_id = bank.authenticate(&body.account, body.name.as_str(), req.clone(), now).await?;
    let (local, foreign) = split_by_bank(&bank, &body.coins)?;
    if let Some((peer_id, foreign)) = foreign {
        let local = if local.is_empty() { vec![] } else { verify_coins(&bank, local, now).await?.0 };
        let foreign = verify_foreign(&bank, &peer_id, foreign, now).await?;
        let hash = coins_hash(body.coins.iter().map(|c| &c.0.body.serial));
        let row =
            crate::clearing::deposit(&bank, account_id, body.request_id, &body.nonce, local, peer_id, foreign, hash)
                .await?;
        return answer(&bank, row, None, peer, now).await;
    }
    let _in_flight = bank.acks.enter();
    let (coins, total) = verify_coins(&bank, local, now).await?;
    let mut rows: Vec<_> = coins.iter().map(|c| super::row_of(c.coin())).collect();
    rows.sort_unstable_by_key(|r| r.serial);
    let hash = coins_hash(rows.iter().map(|r| &r.serial));
    let (id, request_id, nonce_random) = (account_id, body.request_id, body.nonce.random);
    let nonce_expiry = bank.nonce_expiry(&body.nonce);
    let b = bank.clone();
    // Alone, the acknowledgement is signed while the deposit commits (released only once it
    // is durable; see crate::acks).
    let presign = move |row: DepositRow| {
        let presigned = b.acks.alone().then(|| crate::acks::sign_alone(&b, ack_of(&b, &row)));
        Ok((row, presigned))
    };
    let (row, presigned) = bank
        .writer
        .run(move |tx| {
            crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
            if let Some(previous) = tx.deposit(&request_id)? {
                if previous.account == id && previous.coins_hash == hash {
                    return presign(previous);
                }
                return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another deposit"));
            }
            let serials: Vec<_> = rows.iter().map(|r| r.serial).collect();
            match tx.spend(&serials)? {
                Spend::Missing(s) => {
                    return Err(Refuse::new(
                        ReasonCode::COIN_NOT_IN_CIRCULATION,
                        format!("coin {s} is not in circulation (already spent); nothing was deposited"),
                    ))
                }
                Spend::Spent(spent) => super::check_spent(&rows, &spent)?,
            }
            let balance = tx.credit(id, total, now, EntryKind::Deposit, "coins deposited")?;
            let row = DepositRow { request_id, account: id, amount: total, coins_hash: hash, balance, time: now };
            tx.insert_deposit(&row)?;
            presign(row)
        })
        .await??;
    tracing::info!(account = %id, amount = %row.amount, coins = coins.len(), "deposit");
    answer(&bank, row, presigned, peer, now).await
}

fn ack_of(bank: &Bank, row: &DepositRow) -> DepositAck {
    DepositAck {
        bank_id: bank.bank_id.clone(),
        account: row.account,
        request_id: row.request_id,
        amount: row.amount,
        coins_hash: row.coins_hash,
        balance: row.balance,
        time: row.time,
    }
}

/// The answer to a deposit that is done (committed): its acknowledgement, signed in a
/// batch of committed ones, or `presigned` as a batch of its own (see crate::acks).
async fn answer(
    bank: &Arc<Bank>,
    row: DepositRow,
    presigned: Option<crate::acks::Presigned>,
    peer: IpAddr,
    now: u64,
) -> Result<DepositCoinsResponse, Refuse> {
    let ack = match presigned {
        Some(signing) => signing.await,
        None => bank.acks.sign(ack_of(bank, &row)).await,
    }
    .map_err(|e| Refuse::new(ReasonCode::INTERNAL, format!("deposit done, acknowledgement not signed: {e}")))?;
    Ok(DepositCoinsResponse { ack, nonce: Nonce::new(&mut bank.rng(), bank.local_ip(peer), now) })
}

/// Splits a deposit's coins into this bank's and one peer's. Coins of a bank that is not a
/// configured peer, or of two peers at once, are refused.
#[allow(clippy::type_complexity)]
fn split_by_bank(bank: &Bank, coins: &[Coin]) -> Result<(Vec<Coin>, Option<(String, Vec<Coin>)>), Refuse> {
    let max = bank.config.limits.max_coins_per_request;
    if coins.len() > max {
        return Err(Refuse::new(
            ReasonCode::TOO_MANY_COINS,
            format!("{} coins is more than the {max} allowed", coins.len()),
        ));
    }
    let mut local = Vec::new();
    let mut foreign: Option<(String, Vec<Coin>)> = None;
    let mut seen = std::collections::HashSet::with_capacity(coins.len());
    for c in coins {
        if !seen.insert(c.serial()) {
            return Err(Refuse::new(ReasonCode::DUPLICATE_COIN, format!("coin {} appears twice", c.serial())));
        }
        let minted_by = c.body().bank_id.as_str();
        if minted_by == bank.bank_id.as_str() {
            local.push(c.clone());
            continue;
        }
        if !bank.peers.contains_key(minted_by) {
            return Err(Refuse::new(
                ReasonCode::COIN_FOREIGN_BANK,
                format!(
                    "coin {} was minted by bank {}, which this bank does not clear with; deposit it there",
                    c.serial(),
                    c.body().bank_id.escaped()
                ),
            ));
        }
        match &mut foreign {
            None => foreign = Some((minted_by.to_owned(), vec![c.clone()])),
            Some((p, v)) if p == minted_by => v.push(c.clone()),
            Some((p, _)) => {
                return Err(Refuse::new(
                    ReasonCode::COIN_FOREIGN_BANK,
                    format!(
                        "coins of banks {p} and {} in one deposit: deposit each other bank's coins separately",
                        c.body().bank_id.escaped()
                    ),
                ))
            }
        }
    }
    if local.is_empty() && foreign.is_none() {
        return Err(Refuse::new(ReasonCode::INVALID_AMOUNT, "no coins in the request"));
    }
    Ok((local, foreign))
}

/// Checks a peer's coins against its key (signature, expiry) on the CPU pool.
async fn verify_foreign(bank: &Arc<Bank>, peer: &str, coins: Vec<Coin>, now: u64) -> Result<Vec<Coin>, Refuse> {
    let p = bank.peers.get(peer).cloned().ok_or_else(|| Refuse::new(ReasonCode::COIN_FOREIGN_BANK, "unknown peer"))?;
    super::cpu(move || {
        for c in &coins {
            p.client.verify_coin(c, now)?;
        }
        Ok::<_, Refuse>(coins)
    })
    .await?
}
