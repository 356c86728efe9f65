//! pay_coins: a buyer sends coins to a merchant (paper, Table 2).
//!
//! The request (coins, a session key, a nonce) is sealed to the merchant; the merchant
//! validates the coins at their bank and answers with a signed receipt, or a refusal, under
//! the session key.

use crate::coin::Coin;
use crate::keys::{tagged_hash, Fingerprint, Signable, Signed};
use crate::nonce::Nonce;
use crate::seal::SessionKey;
use crate::text::Name;
use crate::Amount;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PayCoinsRequest {
    /// The nonce of the ask_payment_request this pays.
    pub request_nonce: Nonce,
    pub coins: Vec<Coin>,
    pub session_key: SessionKey,
    pub nonce: Nonce,
}

/// Proof of payment, signed by the merchant and verifiable by anyone with its public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub merchant: Name,
    pub merchant_fingerprint: Fingerprint,
    pub amount: Amount,
    /// [`description_hash`] of what was bought.
    pub description_hash: [u8; 32],
    /// [`crate::coin::coins_hash`] of the coins paid.
    pub coins_hash: [u8; 32],
    /// The random part of the ask_payment_request's nonce: which request this settles.
    pub request: [u8; 16],
    /// Unix seconds.
    pub time: u64,
}

impl Signable for Receipt {
    const DOMAIN: &'static [u8] = b"PMTP v1 receipt";
}

pub fn description_hash(description: &str) -> [u8; 32] {
    tagged_hash(b"PMTP v1 description", &[description.as_bytes()])
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PayCoinsResponse {
    pub receipt: Signed<Receipt>,
    pub nonce: Nonce,
}

super::refusal_newtypes!(PayCoinsRefusal);

super::request!(PayCoinsRequest => PayCoinsResponse, PayCoinsRefusal);
