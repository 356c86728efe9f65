//! Inter-bank clearing: deposits of coins minted by a peer bank.
//!
//! "A deposit can be done with any bank with which the user has an account. If the coins
//! are not minted by that bank then the minting bank will be contacted to validate the
//! coins. Banks have accounts with other banks and in this way records are kept of how much
//! each bank owes another." (the paper)
//!
//! A deposit at this bank (A) holding coins of peer B goes in three steps, and no network
//! call is made inside a database transaction:
//!
//! 1. One transaction: record the nonce; take A's own coins out of circulation (all or
//!    nothing); record a pending clearing with everything needed to finish or undo it.
//! 2. Deposit B's coins into A's account at B, under a request id derived from the
//!    depositor's, so a retry is recognised by B and never credited twice.
//! 3. On B's acknowledgement, one transaction credits the depositor and settles the
//!    clearing (A's claim on B grows by the value). On B's definitive refusal, one
//!    transaction puts A's own coins back into circulation and fails the clearing; the
//!    depositor gets B's reason. If B cannot be reached, or answers ambiguously, the
//!    depositor gets a retryable refusal, nothing is credited, and the resolver (and the
//!    depositor's own retry with the same request id) finishes the clearing later.
//!
//! Coins of two or more peers in one deposit are refused up front: making them all or
//! nothing would need a hold-then-commit step at each peer that PMTP does not have.

use crate::handlers::Refuse;
use crate::store::{Circulation, ClearingRow, DepositRow, SerialRow, Spend};
use crate::Bank;
use pmtp_client::BankClient;
use pmtp_proto::bank_statement::EntryKind;
use pmtp_proto::keys::tagged_hash;
use pmtp_proto::{AccountId, Amount, Coin, ReasonCode, VerifiedCoin};
use std::sync::Arc;

/// A peer bank as this bank sees it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub client: BankClient,
    /// This bank's account at the peer.
    pub account: AccountId,
    pub account_name: String,
    /// The peer's account here.
    pub local_account: Option<AccountId>,
}

/// The request id this bank uses at the peer for a depositor's request.
pub fn peer_request_id(bank: &Bank, request_id: &[u8; 16], account: AccountId) -> [u8; 16] {
    let h = tagged_hash(
        b"payme clearing request",
        &[request_id, bank.bank_id.as_str().as_bytes(), &account.0.to_le_bytes()],
    );
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    id
}

enum Begun {
    /// A deposit finished earlier under this request id.
    Done(DepositRow),
    /// The clearing is recorded and the peer must be asked.
    Started(ClearingRow),
}

/// Steps 1 to 3 for a deposit with coins of `peer`.
#[allow(clippy::too_many_arguments)]
pub async fn deposit(
    bank: &Arc<Bank>,
    account: AccountId,
    request_id: [u8; 16],
    nonce: &pmtp_proto::Nonce,
    local: Vec<VerifiedCoin>,
    peer: String,
    foreign: Vec<Coin>,
    coins_hash: [u8; 32],
) -> Result<DepositRow, Refuse> {
    let local_amount = Amount::checked_sum(local.iter().map(|c| c.value()))
        .map_err(|_| Refuse::new(ReasonCode::INVALID_AMOUNT, "overflow"))?;
    let foreign_amount = Amount::checked_sum(foreign.iter().map(|c| c.value()))
        .map_err(|_| Refuse::new(ReasonCode::INVALID_AMOUNT, "overflow"))?;
    let mut serials: Vec<_> = local.iter().map(|c| crate::handlers::row_of(c.coin())).collect();
    serials.sort_unstable_by_key(|r| r.serial);
    let row = ClearingRow {
        request_id,
        peer_request_id: peer_request_id(bank, &request_id, account),
        peer: peer.clone(),
        account,
        local_serials: Vec::new(),
        foreign_coins: bincode::serialize(&foreign).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?,
        local_amount,
        foreign_amount,
        coins_hash,
        state: "pending".into(),
        reason: String::new(),
        time: bank.clock.now(),
    };
    let (nonce_random, nonce_expiry) = (nonce.random, bank.nonce_expiry(nonce));
    let begun = bank
        .writer
        .run(move |tx| {
            crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
            if let Some(done) = tx.deposit(&request_id)? {
                if done.account == account && done.coins_hash == coins_hash {
                    return Ok(Begun::Done(done));
                }
                return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another deposit"));
            }
            if let Some(c) = tx.clearing(&request_id)? {
                if c.account != account || c.coins_hash != coins_hash {
                    return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another deposit"));
                }
                return Err(match c.state.as_str() {
                    "failed" => Refuse::new(ReasonCode::PEER_BANK_REFUSED, c.reason),
                    _ => Refuse::new(
                        ReasonCode::PEER_BANK_UNAVAILABLE,
                        format!("still confirming the coins with bank {}; retry later", c.peer),
                    ),
                });
            }
            let held: Vec<_> = serials.iter().map(|r| r.serial).collect();
            let removed = match tx.hold(&held)? {
                Spend::Spent(rows) => rows,
                Spend::Missing(s) => {
                    return Err(Refuse::new(
                        ReasonCode::COIN_NOT_IN_CIRCULATION,
                        format!("coin {s} is not in circulation (already spent); nothing was deposited"),
                    ))
                }
            };
            crate::handlers::check_spent(&serials, &removed)?;
            let mut row = row.clone();
            row.local_serials = bincode::serialize(&removed.iter().map(serial_tuple).collect::<Vec<_>>())
                .map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?;
            tx.insert_clearing(&row)?;
            Ok(Begun::Started(row))
        })
        .await??;
    match begun {
        Begun::Done(d) => Ok(d),
        Begun::Started(row) => {
            let id = row.request_id;
            if let Ok(mut f) = bank.clearing_in_flight.lock() {
                f.insert(id);
            }
            let out = settle(bank, row).await;
            if let Ok(mut f) = bank.clearing_in_flight.lock() {
                f.remove(&id);
            }
            out
        }
    }
}

/// How a clearing stores each local serial it holds: (serial, value, expiry, key id).
pub(crate) type SerialTuple = ([u8; 16], u64, u64, [u8; 8]);

fn serial_tuple(r: &SerialRow) -> SerialTuple {
    (r.serial.0, r.value.minor_units(), r.expiry, r.key_id.0)
}

fn from_tuple(t: &SerialTuple) -> SerialRow {
    SerialRow {
        serial: pmtp_proto::Serial(t.0),
        value: Amount::new(t.1),
        expiry: t.2,
        key_id: pmtp_proto::keys::KeyId(t.3),
    }
}

/// This bank's own coins a clearing holds out of circulation. Damaged, they are an
/// internal failure: read as none, settling would redeem nothing and a refusal would put
/// nothing back, and the audit would no longer hold.
fn held_serials(row: &ClearingRow) -> Result<Vec<SerialTuple>, Refuse> {
    bincode::deserialize(&row.local_serials).map_err(|_| {
        tracing::error!(clearing = %hex::encode(row.request_id), "stored clearing serials are damaged");
        Refuse::new(ReasonCode::INTERNAL, "the bank's record of this clearing is damaged")
    })
}

/// Asks the peer (step 2) and applies its answer (step 3). Used by the deposit and by
/// the resolver for clearings left pending.
pub async fn settle(bank: &Arc<Bank>, row: ClearingRow) -> Result<DepositRow, Refuse> {
    let peer = bank.peers.get(&row.peer).ok_or_else(|| {
        Refuse::new(ReasonCode::PEER_BANK_UNAVAILABLE, format!("bank {} is no longer a configured peer", row.peer))
    })?;
    let coins: Vec<Coin> = bincode::deserialize(&row.foreign_coins)
        .map_err(|_| Refuse::new(ReasonCode::INTERNAL, "stored clearing coins are damaged"))?;
    let answer =
        peer.client.deposit(&bank.identity, peer.account, &peer.account_name, row.peer_request_id, coins).await;
    let request_id = row.request_id;
    match answer {
        Ok(_) => {
            let now = bank.clock.now();
            let total = row
                .local_amount
                .checked_add(row.foreign_amount)
                .map_err(|_| Refuse::new(ReasonCode::INVALID_AMOUNT, "overflow"))?;
            let locals = held_serials(&row)?;
            let peer_id = row.peer.clone();
            let done = bank
                .writer
                .run(move |tx| {
                    if let Some(d) = tx.deposit(&request_id)? {
                        return Ok(d); // the resolver and a retry raced; settled once
                    }
                    let memo = format!("coins deposited ({} cleared with {peer_id})", row.foreign_amount);
                    let balance = tx.credit(row.account, total, now, EntryKind::Deposit, &memo)?;
                    let held = Circulation { count: locals.len() as u64, value: row.local_amount };
                    if !tx.settle_clearing(&request_id, held)? {
                        return Err(Refuse::new(ReasonCode::INTERNAL, "the clearing was undone meanwhile"));
                    }
                    let d = DepositRow {
                        request_id,
                        account: row.account,
                        amount: total,
                        coins_hash: row.coins_hash,
                        balance,
                        time: now,
                    };
                    tx.insert_deposit(&d)?;
                    Ok::<DepositRow, Refuse>(d)
                })
                .await??;
            tracing::info!(peer = %row.peer, amount = %row.foreign_amount, "cleared deposit with peer bank");
            Ok(done)
        }
        Err(e) if e.is_definitive() => {
            let reason = format!("bank {} refused the coins: {e}", row.peer);
            let locals = held_serials(&row)?;
            let r2 = reason.clone();
            bank.writer
                .run(move |tx| {
                    // Undo step 1: the depositor's own coins of this bank are valid again
                    // (nothing done if the clearing was no longer pending).
                    let held: Vec<SerialRow> = locals.iter().map(from_tuple).collect();
                    tx.undo_clearing(&request_id, &held, &r2)?;
                    Ok::<(), Refuse>(())
                })
                .await??;
            tracing::info!(peer = %row.peer, %reason, "peer bank refused cleared coins");
            Err(Refuse::new(ReasonCode::PEER_BANK_REFUSED, reason))
        }
        Err(e) => {
            let unknown = e.outcome_unknown();
            tracing::warn!(peer = %row.peer, error = %e, "peer bank unavailable; clearing stays pending");
            Err(Refuse::new(
                ReasonCode::PEER_BANK_UNAVAILABLE,
                if unknown {
                    format!(
                        "bank {} did not confirm in time; nothing was credited yet; retry the same deposit later",
                        row.peer
                    )
                } else {
                    format!(
                        "bank {} cannot be reached ({e}); nothing was credited; retry the same deposit later",
                        row.peer
                    )
                },
            ))
        }
    }
}

/// Retries every clearing left pending (crash, peer down), once each.
pub async fn resolve_pending(bank: &Arc<Bank>) {
    let pending = match bank.readers.read(|tx| tx.pending_clearings(1000)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list pending clearings");
            return;
        }
    };
    for row in pending {
        let busy = bank.clearing_in_flight.lock().map(|f| f.contains(&row.request_id)).unwrap_or(true);
        if busy {
            continue;
        }
        let id = row.request_id;
        if let Ok(mut f) = bank.clearing_in_flight.lock() {
            f.insert(id);
        }
        let _ = settle(bank, row).await;
        if let Ok(mut f) = bank.clearing_in_flight.lock() {
            f.remove(&id);
        }
    }
}
