//! Coins: `{value, serial, bank id, bank host:port, expiry}` signed by the minting bank.
//!
//! A coin also names the id of the bank key that signed it, so a bank can rotate keys. The
//! only way to get a [`VerifiedCoin`] is [`Coin::verify`]: a handler that takes one cannot
//! be handed a coin whose signature or expiry went unchecked. Whether the serial is still in
//! circulation is the bank's database's question, not this module's.

use crate::denomination::Denomination;
use crate::keys::{tagged_hash, KeyError, KeyId, Signable, Signed, SigningKey, VerifyingKey};
use crate::text::{BankId, HostPort};
use crate::Amount;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A coin's serial: 128 random bits, unguessable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Serial(pub [u8; 16]);

impl Serial {
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Serial(crate::rng::bytes(rng))
    }
}
impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinBody {
    pub value: Denomination,
    pub serial: Serial,
    pub bank_id: BankId,
    /// Where the minting bank listens (`host:port`): exchanges go there.
    pub bank_addr: HostPort,
    /// Unix seconds after which the bank refuses the coin.
    pub expiry: u64,
    pub key_id: KeyId,
}

impl Signable for CoinBody {
    const DOMAIN: &'static [u8] = b"PMTP v1 coin";
}

/// A signed coin as it travels and as wallets store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Coin(pub Signed<CoinBody>);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoinError {
    #[error("coin {serial} was minted by bank {minted_by}, not {expected}")]
    ForeignBank { serial: Serial, minted_by: String, expected: String },
    #[error("coin {serial} names key {key_id}, which this bank does not have")]
    UnknownKey { serial: Serial, key_id: KeyId },
    #[error("coin {serial} has a bad signature")]
    BadSignature { serial: Serial },
    #[error("coin {serial} expired at {expiry}")]
    Expired { serial: Serial, expiry: u64 },
}

impl CoinError {
    pub fn serial(&self) -> Serial {
        match self {
            CoinError::ForeignBank { serial, .. }
            | CoinError::UnknownKey { serial, .. }
            | CoinError::BadSignature { serial }
            | CoinError::Expired { serial, .. } => *serial,
        }
    }
}

impl Coin {
    /// Signs a new coin. CPU-bound: one RSA signature.
    pub fn mint(body: CoinBody, key: &SigningKey) -> Result<Coin, KeyError> {
        Signed::sign(body, key).map(Coin)
    }

    pub fn body(&self) -> &CoinBody {
        &self.0.body
    }
    pub fn serial(&self) -> Serial {
        self.0.body.serial
    }
    pub fn value(&self) -> Amount {
        self.0.body.value.value()
    }

    /// Checks that `bank` minted this coin with `key` and that it has not expired at `now`.
    /// A coin is valid up to and including its expiry second.
    pub fn verify(&self, bank: &BankId, key: &VerifyingKey, now: u64) -> Result<VerifiedCoin, CoinError> {
        let b = &self.0.body;
        if &b.bank_id != bank {
            return Err(CoinError::ForeignBank {
                serial: b.serial,
                minted_by: b.bank_id.escaped(),
                expected: bank.escaped(),
            });
        }
        if b.key_id != key.key_id() {
            return Err(CoinError::UnknownKey { serial: b.serial, key_id: b.key_id });
        }
        self.0.verify(key).map_err(|_| CoinError::BadSignature { serial: b.serial })?;
        if now > b.expiry {
            return Err(CoinError::Expired { serial: b.serial, expiry: b.expiry });
        }
        Ok(VerifiedCoin(self.clone()))
    }
}

/// A coin whose signature and expiry were checked. Only [`Coin::verify`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedCoin(Coin);

impl VerifiedCoin {
    pub fn coin(&self) -> &Coin {
        &self.0
    }
    pub fn serial(&self) -> Serial {
        self.0.serial()
    }
    pub fn value(&self) -> Amount {
        self.0.value()
    }
    pub fn expiry(&self) -> u64 {
        self.0.body().expiry
    }
    pub fn into_coin(self) -> Coin {
        self.0
    }
}

/// A digest of a set of serials, independent of their order: receipts and deposit
/// acknowledgements name the coins they cover by it.
pub fn coins_hash<'a, I: IntoIterator<Item = &'a Serial>>(serials: I) -> [u8; 32] {
    let mut v: Vec<&[u8]> = serials.into_iter().map(|s| &s.0[..]).collect();
    v.sort_unstable();
    tagged_hash(b"PMTP v1 coin set", &v)
}
