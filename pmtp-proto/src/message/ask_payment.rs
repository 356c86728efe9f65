//! ask_payment: a merchant asks a buyer's wallet for an amount (paper, Table 1).
//!
//! The request is the one cleartext message: amount, the merchant's public keys, the
//! description, and a nonce, all signed by the merchant. A buyer who pays answers with a
//! pay_coins_request (the paper's "ask_payment_response: same as pay_coins_request"); the
//! identifier ask_payment_response carries the same body, and a merchant treats either
//! alike. A buyer who declines answers with an ask_payment_refusal sealed to the merchant.

use crate::keys::{PublicIdentity, Signable, Signed};
use crate::nonce::Nonce;
use crate::refusal::Refusal;
use crate::text::{BankId, Description};
use crate::Amount;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AskPayment {
    pub amount: Amount,
    pub merchant: PublicIdentity,
    pub description: Description,
    /// Banks whose coins the merchant accepts; empty for any.
    pub accepted_banks: Vec<BankId>,
    pub nonce: Nonce,
}

impl Signable for AskPayment {
    const DOMAIN: &'static [u8] = b"PMTP v1 ask_payment_request";
}

/// Signed by the merchant's RSA key (the key inside `merchant`).
pub type AskPaymentRequest = Signed<AskPayment>;

/// Same body as a pay_coins_request (paper, Table 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AskPaymentResponse(pub super::PayCoinsRequest);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskPaymentRefusal {
    pub amount: Amount,
    /// The nonce of the ask_payment_request being declined.
    pub request_nonce: Nonce,
    pub refusal: Refusal,
}
