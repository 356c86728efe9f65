//! exchange_coins: valid coins in, new coins of the same total out. No account and no
//! identity: the bank learns only the network address (paper, "Exchange Coins").

use crate::coin::Coin;
use crate::denomination::Denomination;
use crate::nonce::Nonce;
use crate::seal::SessionKey;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeCoinsRequest {
    /// Names this exchange: a retry with the same id and the same coins gets the coins the
    /// first attempt minted (the old ones are spent by then).
    pub request_id: [u8; 16],
    pub coins: Vec<Coin>,
    /// The values wanted, summing to the coins' total; empty asks for the default split.
    pub denominations: Vec<Denomination>,
    pub session_key: SessionKey,
    pub nonce: Nonce,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeCoinsResponse {
    pub coins: Vec<Coin>,
    pub nonce: Nonce,
}

super::refusal_newtypes!(ExchangeCoinsRefusal);

super::request!(ExchangeCoinsRequest => ExchangeCoinsResponse, ExchangeCoinsRefusal);
