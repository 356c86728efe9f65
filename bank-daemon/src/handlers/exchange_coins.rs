//! exchange_coins: valid coins in, new coins of the same total out. No account, no
//! identity (the bank learns only the network address). The coins handed in are checked
//! (signatures, then circulation, then a retry by request id) before any new coin is
//! signed; the old serials' removal and the new serials' insertion are one transaction.

use super::withdraw_coins::{decode_issued, Issued};
use super::{mint, plan_denominations, verify_coins, Refuse};
use crate::store::{CounterDelta, IssuedRow, SerialRow};
use crate::Bank;
use pmtp_proto::{Amount, ExchangeCoinsRequest, ExchangeCoinsResponse, Nonce, ReasonCode};
use std::net::IpAddr;
use std::sync::Arc;

pub async fn handle(
    bank: Arc<Bank>,
    req: Arc<ExchangeCoinsRequest>,
    peer: IpAddr,
    now: u64,
) -> Result<ExchangeCoinsResponse, Refuse> {
    if !bank.config.exchange_enabled {
        return Err(Refuse::new(
            ReasonCode::EXCHANGE_DISABLED,
            "this bank does not exchange coins; deposit them instead",
        ));
    }
    let (coins, total) = verify_coins(&bank, req.coins.clone(), now).await?;
    let plan = plan_denominations(&bank, total, &req.denominations)?;
    let mut old_rows: Vec<_> = coins.iter().map(|c| super::row_of(c.coin())).collect();
    old_rows.sort_unstable_by_key(|r| r.serial);
    let old: Vec<_> = old_rows.iter().map(|r| r.serial).collect();
    let (nonce_random, request_id) = (req.nonce.random, req.request_id);
    let input_hash = pmtp_proto::coin::coins_hash(old.iter());
    // Before any signing: a retry gets its coins back, and coins already spent are
    // refused for the cost of a read (the transaction below re-checks).
    let serials = old.clone();
    let (previous, missing) =
        bank.readers.read(move |tx| Ok((tx.issued(&request_id)?, tx.first_missing_serial(&serials)?))).await?;
    let fresh = match previous {
        Some(p) if p.input_hash != input_hash || p.balance.is_some() => {
            return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
        }
        Some(_) => Vec::new(),
        None => {
            if let Some(s) = missing {
                return Err(not_in_circulation(&s));
            }
            mint(&bank, plan, now).await?
        }
    };
    let new_rows: Vec<SerialRow> = fresh
        .iter()
        .map(|c| SerialRow { serial: c.serial(), value: c.value(), expiry: c.body().expiry, key_id: c.body().key_id })
        .collect();
    let coins_blob = bincode::serialize(&fresh).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?;
    let nonce_expiry = bank.nonce_expiry(&req.nonce);
    let (n_old, n_new) = (old.len() as u64, new_rows.len() as u64);
    let outcome = bank
        .writer
        .run(move |tx| {
            crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
            // A retry of an exchange that already happened gets the same new coins.
            if let Some(previous) = tx.issued(&request_id)? {
                if previous.input_hash != input_hash || previous.balance.is_some() {
                    return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
                }
                return Ok(Issued::Before(previous.coins, Amount::ZERO));
            }
            if new_rows.is_empty() {
                // The record read before signing is gone (retention ran in between).
                return Err(Refuse::new(ReasonCode::INTERNAL, "the bank lost track of this retry; try again"));
            }
            for r in &old_rows {
                super::spend_coin(tx, r, not_in_circulation)?;
            }
            for r in &new_rows {
                if !tx.insert_serial(r)? {
                    return Err(Refuse::new(ReasonCode::INTERNAL, "serial collision; try again"));
                }
            }
            tx.add_counters(&CounterDelta { minted: (total, n_new), redeemed: (total, n_old), ..Default::default() })?;
            tx.insert_issued(&IssuedRow { request_id, input_hash, coins: coins_blob, balance: None, time: now })?;
            Ok::<Issued, Refuse>(Issued::Now(total))
        })
        .await??;
    let coins = match outcome {
        Issued::Now(_) => {
            tracing::info!(amount = %total, coins_in = n_old, coins_out = n_new, "exchange");
            fresh
        }
        Issued::Before(blob, _) => {
            tracing::info!(amount = %total, "exchange retried; same coins returned");
            decode_issued(&blob)?
        }
    };
    Ok(ExchangeCoinsResponse { coins, nonce: Nonce::new(&mut bank.rng(), bank.local_ip(peer), now) })
}

fn not_in_circulation(s: &pmtp_proto::Serial) -> Refuse {
    Refuse::new(
        ReasonCode::COIN_NOT_IN_CIRCULATION,
        format!("coin {s} is not in circulation (already spent); nothing was exchanged"),
    )
}
