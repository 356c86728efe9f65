//! exchange_coins: valid coins in, new coins of the same total out. No account, no
//! identity (the bank learns only the network address). The coins handed in are checked
//! (signatures, then a read that they are still in circulation) before any new coin is
//! signed; one transaction then spends them, records the request and puts the new coins
//! in circulation. A retry gets the coins of its first try; a reservation left by an
//! earlier version's two-step exchange is finished by its retry or the background round
//! ([`super::finish_issue`]).

use super::{plan_denominations, verify_coins, Refuse};
use crate::store::{IssuedRow, Spend};
use crate::Bank;
use pmtp_proto::{ExchangeCoinsRequest, ExchangeCoinsResponse, Nonce, ReasonCode};
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
    let plan_blob = bincode::serialize(&plan).map_err(|e| Refuse::new(ReasonCode::INTERNAL, e.to_string()))?;
    let nonce_expiry = bank.nonce_expiry(&req.nonce);
    let n_old = old.len();
    // A read first: a retry gets its coins back, and coins spent already are refused,
    // before anything is signed.
    let spent_check = old.clone();
    let (earlier, missing) =
        bank.readers.read(move |tx| Ok((tx.issued(&request_id)?, tx.first_missing_serial(&spent_check)?))).await?;
    if let (None, Some(s)) = (&earlier, missing) {
        return Err(not_in_circulation(&s));
    }
    // The read cannot see a concurrent exchange of the same coins: the serials are
    // claimed here (this node) until the transaction has run, so only one of them is
    // signed for; the others are refused without a signature and may retry.
    let _claim = match earlier {
        None => Some(Claim::take(&bank, &old)?),
        Some(_) => None,
    };
    let fresh = if earlier.is_none() { Some(super::Fresh::start(&bank, &plan, now)?) } else { None };
    let issue = fresh.as_ref().map(|f| f.issue.clone());
    // One transaction: the coins handed in are spent (one winner per serial, whichever
    // node it asks), the request recorded and the new coins put in circulation. A retry
    // finds the request's row instead.
    let (reserved, issued) = bank
        .writer
        .run(move |tx| {
            crate::handlers::record_nonce(tx, &nonce_random, nonce_expiry)?;
            if let Some(previous) = tx.issued(&request_id)? {
                if previous.input_hash != input_hash || previous.balance.is_some() {
                    return Err(Refuse::new(ReasonCode::MALFORMED, "request id already used for another request"));
                }
                return Ok((previous, false));
            }
            match tx.spend(&old)? {
                Spend::Missing(s) => return Err(not_in_circulation(&s)),
                Spend::Spent(spent) => super::check_spent(&old_rows, &spent)?,
            }
            let row =
                IssuedRow { request_id, input_hash, plan: plan_blob.clone(), coins: None, balance: None, time: now };
            tx.reserve_issue(&row)?;
            if let Some(issue) = &issue {
                issue.run(tx, &request_id)?;
            }
            Ok::<_, Refuse>((row, issue.is_some()))
        })
        .await??;
    let retried = reserved.coins.is_some();
    let coins = super::issued_coins(&bank, reserved, issued, fresh).await?;
    if retried {
        tracing::info!(amount = %total, "exchange retried; same coins returned");
    } else {
        tracing::info!(amount = %total, coins_in = n_old, coins_out = coins.len(), "exchange");
    }
    Ok(ExchangeCoinsResponse { coins, nonce: Nonce::new(&mut bank.rng(), bank.local_ip(peer), now) })
}

/// Serials claimed by one exchange in [`Bank::exchanging`], released when dropped.
struct Claim<'b> {
    bank: &'b Bank,
    serials: Vec<pmtp_proto::Serial>,
}

impl<'b> Claim<'b> {
    fn take(bank: &'b Bank, serials: &[pmtp_proto::Serial]) -> Result<Claim<'b>, Refuse> {
        let mut claim = Claim { bank, serials: Vec::with_capacity(serials.len()) };
        for s in serials {
            if !bank.exchanging.insert(*s) {
                // Dropping `claim` releases the serials taken so far.
                return Err(Refuse::new(
                    ReasonCode::BUSY,
                    format!("coin {s} is being exchanged by another request; try again in a moment"),
                ));
            }
            claim.serials.push(*s);
        }
        Ok(claim)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        for s in &self.serials {
            self.bank.exchanging.remove(s);
        }
    }
}

fn not_in_circulation(s: &pmtp_proto::Serial) -> Refuse {
    Refuse::new(
        ReasonCode::COIN_NOT_IN_CIRCULATION,
        format!("coin {s} is not in circulation (already spent); nothing was exchanged"),
    )
}
