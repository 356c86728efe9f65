//! Encryption at rest: coins and secrets are sealed under a key derived from the
//! wallet's private key, and a coin's seal binds its row's clear columns.

use super::{i, DbError};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce as GcmNonce};
use pmtp_proto::Coin;
use pmtp_proto::Serial;

/// Encrypts stored coins and secrets under a key derived from the wallet's private key
/// (itself under the passphrase): without the passphrase the coins cannot be spent.
pub struct Vault {
    cipher: Aes256Gcm,
}

impl Vault {
    pub fn new(identity: &pmtp_proto::Identity) -> Vault {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"payme wallet storage v1"), identity.x25519.as_bytes());
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes is within HKDF's output limit; expand cannot fail.
        let _ = hk.expand(b"coins and secrets", key.as_mut());
        Vault { cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)) }
    }

    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, DbError> {
        let nonce: [u8; 12] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&GcmNonce::from(nonce), Payload { msg: plain, aad })
                .map_err(|_| DbError::Other("encryption failed".into()))?,
        );
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, DbError> {
        if sealed.len() < 12 {
            return Err(DbError::Decrypt);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        self.cipher
            .decrypt(&GcmNonce::from(nonce), Payload { msg: &sealed[12..], aad })
            .map(zeroize::Zeroizing::new)
            .map_err(|_| DbError::Decrypt)
    }

    /// Seals a coin in the current format ([`SEAL_V2`]): its clear columns are bound in.
    pub fn seal_coin(&self, coin: &Coin) -> Result<Vec<u8>, DbError> {
        let plain = bincode::serialize(coin).map_err(|e| DbError::Other(e.to_string()))?;
        self.seal(&Clear::of(coin)?.aad(SEAL_V2), &plain)
    }

    /// Opens a stored coin given its row's clear columns and seal format, and checks that
    /// the columns are the coin's. Any failure is damage, reported with why.
    pub fn open_coin(&self, clear: &Clear, seal: i64, sealed: &[u8]) -> Result<Coin, Damage> {
        if seal != SEAL_V1 && seal != SEAL_V2 {
            return Err(Damage(format!("unknown seal format {seal}")));
        }
        let plain = self
            .open(&clear.aad(seal), sealed)
            .map_err(|_| Damage("does not decrypt with this wallet's key and its clear columns".into()))?;
        let coin: Coin = bincode::deserialize(&plain).map_err(|_| Damage("decrypts to no coin".into()))?;
        let actual = Clear::of(&coin).map_err(|e| Damage(e.to_string()))?;
        if actual != *clear {
            return Err(Damage(format!(
                "clear columns (bank {:?}, value {}, expiry {}) disagree with the coin (bank {:?}, value {}, expiry {})",
                clear.bank_id, clear.value, clear.expiry, actual.bank_id, actual.value, actual.expiry
            )));
        }
        Ok(coin)
    }
}

/// Seal format 1: the associated data is the serial alone (rows written before format 2).
pub const SEAL_V1: i64 = 1;
/// Seal format 2: the associated data binds the clear columns (serial, bank id, value,
/// expiry), so that editing any of them makes the coin fail to open.
pub const SEAL_V2: i64 = 2;

/// Why a stored coin is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage(pub String);

/// A coin row's clear columns, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clear {
    pub serial: Serial,
    pub bank_id: String,
    pub value: i64,
    pub expiry: i64,
}

impl Clear {
    pub fn of(coin: &Coin) -> Result<Clear, DbError> {
        let b = coin.body();
        Ok(Clear {
            serial: b.serial,
            bank_id: b.bank_id.as_str().to_owned(),
            value: i(coin.value().minor_units())?,
            expiry: i(b.expiry)?,
        })
    }

    /// The associated data of seal format `seal`: every field length-prefixed or fixed
    /// width, so that no two rows share an encoding.
    pub(super) fn aad(&self, seal: i64) -> Vec<u8> {
        if seal == SEAL_V1 {
            return self.serial.0.to_vec();
        }
        let mut aad = b"payme wallet coin v2".to_vec();
        aad.extend_from_slice(&self.serial.0);
        aad.extend_from_slice(&(self.bank_id.len() as u64).to_le_bytes());
        aad.extend_from_slice(self.bank_id.as_bytes());
        aad.extend_from_slice(&self.value.to_le_bytes());
        aad.extend_from_slice(&self.expiry.to_le_bytes());
        aad
    }
}
