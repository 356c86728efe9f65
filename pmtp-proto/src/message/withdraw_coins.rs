//! withdraw_coins: an account owner takes coins out of their account.
//!
//! The request carries the account id, matching name, password and amount, signed by the
//! account owner (paper, "Withdraw Coins"), sealed to the bank. The response carries the
//! new coins and the balance left, under the request's session key.

use crate::coin::Coin;
use crate::denomination::Denomination;
use crate::keys::{Signable, Signed};
use crate::nonce::Nonce;
use crate::seal::SessionKey;
use crate::text::{Name, Password};
use crate::Amount;
use serde::{Deserialize, Serialize};

/// A bank account number, as the bank assigned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub u64);

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WithdrawCoins {
    pub account: AccountId,
    pub name: Name,
    pub password: Password,
    /// Names this withdrawal: a retry with the same id (after a lost reply or a crash)
    /// gets the coins the first attempt minted, instead of a second debit.
    pub request_id: [u8; 16],
    pub amount: Amount,
    /// The coin values wanted, summing to `amount`; empty asks for the bank's default split.
    pub denominations: Vec<Denomination>,
    pub session_key: SessionKey,
    pub nonce: Nonce,
}

impl Signable for WithdrawCoins {
    const DOMAIN: &'static [u8] = b"PMTP v1 withdraw_coins_request";
}

/// Signed by the account owner's RSA key.
pub type WithdrawCoinsRequest = Signed<WithdrawCoins>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WithdrawCoinsResponse {
    pub coins: Vec<Coin>,
    pub balance: Amount,
    pub nonce: Nonce,
}

super::refusal_newtypes!(WithdrawCoinsRefusal);

super::request!(WithdrawCoinsRequest => WithdrawCoinsResponse, WithdrawCoinsRefusal, body);
