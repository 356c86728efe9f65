//! Recovery: one maintenance round finishes whatever is unfinished, at start-up (after a
//! crash or kill -9) and then periodically (lost replies, banks that were down).
//!
//! It sits above the rest: it uses [`crate::ops`] (retrying started operations, resolving
//! outgoing payments without a receipt, refreshing coins), [`crate::inband`] (sending a
//! payment in band again before resolving it), [`crate::merchant`] (validating
//! coins a buyer sent) and the store, and nothing below imports it. Work a task is doing
//! right now is claimed (`Wallet::in_flight`, `Wallet::ops_in_flight`), and a round leaves
//! claimed payments and operations alone.

use crate::store;
use crate::{ops, Wallet, WalletError};
use std::sync::Arc;

/// One maintenance round: finish operations left unfinished (crash, lost replies),
/// resolve payments with no receipt, validate coins a buyer sent, forget orders a day past
/// their expiry, refresh coins near
/// expiry. A failure is logged; the next round tries again.
pub async fn maintenance(w: &Arc<Wallet>) {
    if let Err(e) = round(w).await {
        tracing::warn!(error = %e, "maintenance round failed; will retry");
    }
}

async fn round(w: &Arc<Wallet>) -> Result<(), WalletError> {
    for op in w.db.call(|c, _| store::started_ops(c)).await? {
        // Another task is sending this one right now.
        let Some(_claim) = w.ops_in_flight.claim(op.id) else { continue };
        if let Err(e) = ops::retry(w, &op).await {
            tracing::info!(op = op.id, reason = %e, "unfinished operation retried");
        }
    }
    // Outgoing payments with no receipt and nothing in flight.
    for p in w.db.call(|c, _| store::unresolved_outgoing(c)).await? {
        // Checked now, not before the query: a payment claimed since is being sent.
        let Some(_claim) = w.in_flight.claim(p) else { continue };
        // Paid in band: sent again first (the shop answers the same receipt).
        match crate::inband::recover(w, p).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(payment = p, error = %e, "payment in band not sent again");
                continue;
            }
        }
        let _ = ops::resolve_payment(w, p).await;
    }
    // Merchant side: coins received and not yet validated.
    for p in w.db.call(|c, _| store::payments_with_received_coins(c)).await? {
        let Some(_claim) = w.in_flight.claim(p) else { continue };
        let _ = crate::merchant::validate_received(w, p).await;
    }
    // Incoming payments whose coins a retried operation has since validated.
    w.db.call(|c, _| store::mark_validated_incoming_done(c)).await?;
    // Orders a day past their expiry: their receipts re-open nothing any more.
    let before = w.now().saturating_sub(86_400);
    let pruned = w.db.call(move |c, _| store::prune_expired_orders(c, before, 1000)).await?;
    if pruned > 0 {
        tracing::info!(pruned, "forgot expired orders");
    }
    ops::refresh(w).await
}
