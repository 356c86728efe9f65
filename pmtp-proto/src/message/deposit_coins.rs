//! deposit_coins: an account owner pays coins into their account.
//!
//! Signed by the owner, sealed to the bank. The bank removes the coins' serials from
//! circulation and credits the account in one transaction, and answers with an
//! acknowledgement it signs. `request_id` names the deposit independently of the nonce, so
//! a deposit whose outcome is unknown can be retried and recognised (inter-bank clearing).

use super::AccountId;
use crate::batch::BatchSigned;
use crate::coin::Coin;
use crate::keys::{Signable, Signed};
use crate::nonce::Nonce;
use crate::seal::SessionKey;
use crate::text::{BankId, Name};
use crate::Amount;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DepositCoins {
    pub account: AccountId,
    pub name: Name,
    pub request_id: [u8; 16],
    pub coins: Vec<Coin>,
    pub session_key: SessionKey,
    pub nonce: Nonce,
}

impl Signable for DepositCoins {
    const DOMAIN: &'static [u8] = b"PMTP v1 deposit_coins_request";
}

pub type DepositCoinsRequest = Signed<DepositCoins>;

/// What the bank signs when it accepts a deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositAck {
    pub bank_id: BankId,
    pub account: AccountId,
    pub request_id: [u8; 16],
    pub amount: Amount,
    /// [`crate::coin::coins_hash`] of the deposited serials.
    pub coins_hash: [u8; 32],
    pub balance: Amount,
    /// Unix seconds.
    pub time: u64,
}

impl Signable for DepositAck {
    const DOMAIN: &'static [u8] = b"PMTP v1 deposit acknowledgement";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DepositCoinsResponse {
    /// Signed by the bank's RSA key, possibly as one of a batch of acknowledgements
    /// (verifiable on its own with the bank's public key).
    pub ack: BatchSigned<DepositAck>,
    pub nonce: Nonce,
}

super::refusal_newtypes!(DepositCoinsRefusal);

super::request!(DepositCoinsRequest => DepositCoinsResponse, DepositCoinsRefusal, body);
