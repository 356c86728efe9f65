//! The merchant's side of paying over HTTP, in band (docs/PMTP.md, "Paying over HTTP (in
//! band)"): [`offer`] signs the offer a shop puts in a 402's `PAYMENT-REQUIRED` header;
//! [`settle`] takes the sealed payment a buyer sent back in `PAYMENT-SIGNATURE`.
//!
//! Making an offer writes nothing. Settling checks the echoed offer is this wallet's own,
//! unexpired, for the shop's origin and resource and at the catalog price; then, in one
//! transaction, writes the payment, its coins and the order's row (the orders table's
//! primary key: of two payments for one order, one wins, and the other's coins are never
//! recorded, so the buyer keeps them); validates the coins at their bank as the PMTP flow
//! does; and answers the signed receipt. A payment sent again unchanged (the same coins)
//! gets the same receipt; a bank that refuses the coins frees the order.

use crate::merchant::{self, Recorded};
use crate::store::{self, Direction, PaymentState};
use crate::{Wallet, WalletError};
use pmtp_proto::http::{self, Origin, Payment, SignedOffer};
use pmtp_proto::keys::Signed;
use pmtp_proto::seal::SealedBox;
use pmtp_proto::text::{BankId, BoundedString, Description};
use pmtp_proto::{description_hash, rng, Amount, ReasonCode, Receipt};
use serde::Serialize;
use std::sync::Arc;

/// What a shop asks an offer for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRequest {
    /// The shop's origin (any URL of it: only scheme, host and port count).
    pub origin: String,
    /// The paid resource's path and query at that origin.
    pub resource: String,
    pub amount: Amount,
    pub description: String,
    /// The order id; drawn here when the shop names none.
    pub order: Option<store::OrderId>,
}

/// A signed offer, as the shop sends it.
#[derive(Debug, Clone, Serialize)]
pub struct Offered {
    /// The `PAYMENT-REQUIRED` header value: `v1.` and the signed offer.
    pub offer: String,
    /// The order id, 32 hex digits.
    pub order: String,
    pub expires: u64,
}

/// Signs an offer for one order of `req.resource`, payable until
/// `merchant.order_lifetime_secs` from now. Writes nothing.
pub fn offer(w: &Wallet, req: &OfferRequest) -> Result<Offered, WalletError> {
    crate::checked_amount(req.amount.minor_units())?;
    let origin = Origin::of_url(&req.origin).map_err(|e| WalletError::new(ReasonCode::MALFORMED, e.to_string()))?;
    let resource = BoundedString::new(req.resource.clone())
        .map_err(|e| WalletError::new(ReasonCode::MALFORMED, format!("resource: {e}")))?;
    let description = Description::new(req.description.clone())
        .map_err(|e| WalletError::new(ReasonCode::MALFORMED, format!("description: {e}")))?;
    let accepted = merchant::accepted_banks(w);
    if accepted.is_empty() {
        return Err(WalletError::new(
            ReasonCode::UNKNOWN_ACCOUNT,
            "this wallet has no bank account to deposit payments into",
        ));
    }
    let order = req.order.unwrap_or_else(|| rng::bytes(&mut w.rng()));
    let expires = w.now().saturating_add(w.config.merchant.order_lifetime_secs);
    let body = http::Offer {
        order,
        origin,
        resource,
        amount: req.amount,
        merchant: w.public.clone(),
        description,
        accepted_banks: accepted.into_iter().filter_map(|b| BankId::new(b).ok()).collect(),
        expires,
    };
    let signed: SignedOffer =
        Signed::sign(body, &w.identity.signing).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let offer = http::encode(&signed).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    Ok(Offered { offer, order: hex::encode(order), expires })
}

/// A payment a shop received for one of its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest {
    /// The `PAYMENT-SIGNATURE` header value: `v1.` and the sealed [`Payment`].
    pub payment: String,
    /// The shop's origin, as the shop knows it (never the buyer's say).
    pub origin: String,
    /// The requested resource's path and query.
    pub resource: String,
    /// The shop's name for the item, and its catalog price.
    pub item: String,
    pub price: Amount,
}

/// A settled payment: what the shop sends back with the item.
#[derive(Debug, Clone, Serialize)]
pub struct Settled {
    /// The `PAYMENT-RESPONSE` header value: `v1.` and the signed receipt.
    pub receipt: String,
    /// The order id, 32 hex digits.
    pub order: String,
    pub amount: u64,
    /// The incoming payment's id in this wallet.
    pub payment: i64,
    /// Unix seconds until which the receipt re-opens the item.
    pub expires: u64,
    /// True when this very payment had been settled before (sent again): nothing new
    /// was taken.
    pub again: bool,
}

fn refused(code: ReasonCode, text: &str) -> WalletError {
    WalletError::new(code, text)
}

/// Opens and checks a payment against the shop's page: our own offer, for this origin,
/// resource and price. Expiry is checked later, after a payment sent again is recognised.
fn open(w: &Wallet, req: &SettleRequest) -> Result<Payment, WalletError> {
    let unreadable = |e: http::HttpError| WalletError::new(ReasonCode::MALFORMED, format!("unreadable payment: {e}"));
    let sealed: SealedBox = http::decode(&req.payment).map_err(unreadable)?;
    let pay = http::open_payment(&w.identity.x25519, &sealed).map_err(|e| match e {
        http::HttpError::Sealed => refused(ReasonCode::DECRYPT_FAILED, "the payment is not sealed to this shop"),
        e => unreadable(e),
    })?;
    let offer = &pay.offer;
    if offer.body.merchant != w.public || offer.verify(w.identity.signing.verifying_key()).is_err() {
        return Err(refused(ReasonCode::BAD_SIGNATURE, "the payment answers an offer this shop did not make"));
    }
    let origin = Origin::of_url(&req.origin).map_err(|e| WalletError::new(ReasonCode::MALFORMED, e.to_string()))?;
    if offer.body.origin != origin || offer.body.resource.as_str() != req.resource {
        return Err(refused(ReasonCode::UNEXPECTED_MESSAGE, "the payment is for another page"));
    }
    if offer.body.amount != req.price {
        return Err(refused(ReasonCode::AMOUNT_MISMATCH, "the offer's price is not the item's price"));
    }
    Ok(pay)
}

/// Answers a payment for an order another payment holds: the same receipt for the same
/// coins, once the bank accepted them; a refusal otherwise (nothing of this payment was
/// taken).
fn held_answer(held: &store::PaidOrder, state: PaymentState, coins_hash: &[u8; 32]) -> Result<Settled, WalletError> {
    let receipt: Signed<Receipt> = bincode::deserialize(&held.receipt)
        .map_err(|_| WalletError::new(ReasonCode::INTERNAL, "a stored receipt does not decode"))?;
    if &receipt.body.coins_hash != coins_hash {
        return Err(refused(
            ReasonCode::UNEXPECTED_PAYMENT,
            "this order is already paid, or being paid, with other coins; yours were not taken",
        ));
    }
    if state != PaymentState::Done {
        return Err(refused(
            ReasonCode::PEER_BANK_UNAVAILABLE,
            "this payment is being confirmed at the bank; send it again in a moment",
        ));
    }
    Ok(Settled {
        receipt: http::encode(&receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?,
        order: hex::encode(held.order),
        amount: held.amount.minor_units(),
        payment: held.payment,
        expires: held.expires,
        again: true,
    })
}

/// Settles a payment received in band for item `req.item` (see the module doc).
pub async fn settle(w: &Arc<Wallet>, req: SettleRequest) -> Result<Settled, WalletError> {
    let pay = open(w, &req)?;
    let order = pay.offer.body.order;
    let coins_hash = pay.coins_hash();
    let now = w.now();
    // A payment sent again is answered before the expiry check: its receipt stands.
    if let Some((held, state)) =
        w.db.call(move |c, _| match store::paid_order(c, &order)? {
            Some(h) => Ok(Some((store::payment_state(c, h.payment)?, h))),
            None => Ok(None),
        })
        .await?
        .filter(|(state, _)| *state != PaymentState::Refused)
        .map(|(s, h)| (h, s))
    {
        return held_answer(&held, state, &coins_hash);
    }
    if pay.offer.body.expires <= now {
        return Err(refused(ReasonCode::NONCE_OUTSIDE_WINDOW, "the offer has expired; ask for the page again"));
    }
    let accepted = merchant::accepted_banks(w);
    merchant::check_coins(w, &pay.coins, req.price, &accepted)?;
    let offer = &pay.offer.body;
    let receipt = Signed::sign(
        Receipt {
            merchant: w.public.name.clone(),
            merchant_fingerprint: w.public.fingerprint(),
            amount: offer.amount,
            description_hash: description_hash(offer.description.as_str()),
            coins_hash,
            request: order,
            time: now,
        },
        &w.identity.signing,
    )
    .map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let blob = bincode::serialize(&receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let expires = now.saturating_add(w.config.merchant.order_lifetime_secs);
    let row = store::PaidOrder {
        order,
        item: req.item.clone(),
        amount: offer.amount,
        payment: 0, // set by `record` to the payment it inserts
        buyer: format!("in band at {}", offer.origin),
        receipt: blob.clone(),
        expires,
    };
    let record = store::NewPayment {
        direction: Direction::In,
        peer: format!("in band at {}", offer.origin),
        merchant: w.public.name.as_str().to_owned(),
        merchant_fp: w.public.fingerprint().to_string(),
        amount: offer.amount,
        description: offer.description.as_str().to_owned(),
        request: order.to_vec(),
        http: None,
    };
    let (payment, op, claims) =
        match merchant::record(w, pay.coins.clone(), record, order, Some(row), rng::bytes(&mut w.rng())).await? {
            Recorded::New(p, op, claims) => (p, op, claims),
            Recorded::Taken(held, state) => return held_answer(&held, state, &coins_hash),
        };
    let validated = merchant::validate_and_finish(w, payment, op, None, blob, None).await;
    drop(claims);
    if let Err(e) = validated {
        // Refused by the bank for good: the order is free again. Not known yet: the order
        // stays held by this payment, which maintenance confirms or refuses later.
        w.db.call(move |c, _| {
            let tx = c.transaction()?;
            if store::payment_state(&tx, payment)? == PaymentState::Refused {
                store::release_order(&tx, &order, payment)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        tracing::info!(order = %store::short_order_id(&order), code = %e.code, reason = %e.text, "in-band payment refused");
        return Err(e);
    }
    tracing::info!(order = %store::short_order_id(&order), payment, amount = %offer.amount, "in-band payment settled");
    Ok(Settled {
        receipt: http::encode(&receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?,
        order: hex::encode(order),
        amount: offer.amount.minor_units(),
        payment,
        expires,
        again: false,
    })
}
