//! Coins: `{value, serial, bank id, bank host:port, expiry}` signed by the minting bank.
//!
//! A coin also names the id of the bank key that signed it, so a bank can rotate keys. The
//! only way to get a [`VerifiedCoin`] is [`Coin::verify`]: a handler that takes one cannot
//! be handed a coin whose signature or expiry went unchecked. Whether the serial is still in
//! circulation is the bank's database's question, not this module's.
//!
//! Two coin formats share one shape (docs/PMTP.md, "Coins"): in format 1 the signature
//! field is the bank's PKCS#1 v1.5 signature over the coin, as long as the key's modulus;
//! in format 2 the coins minted together share one signature over the Merkle root of their
//! bodies ([`crate::batch`]), and each coin's signature field holds `PMB2` and its
//! inclusion proof. Verifiers remember roots they have checked ([`RootCache`]), so coins
//! minted together cost one RSA verification between them.

use crate::batch::BatchSigned;
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

/// How a format-2 coin's signature field starts.
const BATCH_MAGIC: &[u8; 4] = b"PMB2";

/// What a format-2 coin carries after [`BATCH_MAGIC`]: its place in the batch it was minted
/// in, the audit path to the batch's root, and the bank's signature over that root.
#[derive(Serialize, Deserialize)]
struct BatchProof {
    index: u32,
    size: u32,
    path: Vec<[u8; 32]>,
    signature: Vec<u8>,
}

impl Coin {
    /// Signs a new coin (format 1). CPU-bound: one RSA signature.
    pub fn mint(body: CoinBody, key: &SigningKey) -> Result<Coin, KeyError> {
        Signed::sign(body, key).map(Coin)
    }

    /// Signs coins minted together with one RSA signature over the Merkle root of their
    /// bodies (format 2; a single coin is minted in format 1, which is shorter). Returns
    /// them in the order given. The coins become linkable to each other through their
    /// shared root; the bank sees every serial it mints anyway.
    pub fn mint_batch(bodies: Vec<CoinBody>, key: &SigningKey) -> Result<Vec<Coin>, KeyError> {
        if bodies.len() == 1 {
            return bodies.into_iter().map(|b| Coin::mint(b, key)).collect();
        }
        BatchSigned::sign_batch(bodies, key)?
            .into_iter()
            .map(|b| {
                let proof = BatchProof { index: b.index, size: b.size, path: b.proof, signature: b.signature };
                let mut signature = BATCH_MAGIC.to_vec();
                signature.extend(bincode::serialize(&proof).map_err(|_| KeyError::SignFailed)?);
                Ok(Coin(Signed { body: b.body, signature }))
            })
            .collect()
    }

    /// 1 for a coin signed alone, 2 for a coin signed in a batch.
    pub fn format(&self) -> u8 {
        if self.batch_proof().is_some() {
            2
        } else {
            1
        }
    }

    fn batch_proof(&self) -> Option<BatchProof> {
        use bincode::Options;
        let rest = self.0.signature.strip_prefix(BATCH_MAGIC)?;
        // Bounded: a path is at most 32 hashes and a signature at most 512 bytes.
        bincode::options()
            .with_fixint_encoding()
            .with_limit(2048)
            .reject_trailing_bytes()
            .deserialize::<BatchProof>(rest)
            .ok()
            .filter(|p| p.path.len() <= 32)
    }

    /// Checks the bank's signature, in either format; a batch root already checked for
    /// this key (in `cache`) costs hashes only.
    fn check_signature(&self, key: &VerifyingKey, cache: &RootCache) -> Result<(), KeyError> {
        // A format-1 signature is exactly as long as the modulus; a format-2 field never
        // is (284 + 32k bytes), so the two cannot be confused.
        if self.0.signature.len() == key.bits().div_ceil(8) {
            return self.0.verify(key).map(|_| ());
        }
        let p = self.batch_proof().ok_or(KeyError::BadSignature)?;
        let root = crate::batch::root_of(&self.0.body, p.index, p.size, &p.path)?;
        let entry = RootCache::entry(key, p.size, &root, &p.signature);
        if cache.contains(&entry) {
            return Ok(());
        }
        crate::batch::verify_root::<CoinBody>(p.size, &root, &p.signature, key)?;
        cache.insert(entry);
        Ok(())
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
        self.check_signature(key, RootCache::shared()).map_err(|_| CoinError::BadSignature { serial: b.serial })?;
        if now > b.expiry {
            return Err(CoinError::Expired { serial: b.serial, expiry: b.expiry });
        }
        Ok(VerifiedCoin(self.clone()))
    }

    /// [`Coin::verify`] against whichever of `keys` the coin names: the bank's current key,
    /// or one it retired whose coins are still in circulation (until they expire).
    pub fn verify_among<'k>(
        &self,
        bank: &BankId,
        keys: impl IntoIterator<Item = &'k VerifyingKey>,
        now: u64,
    ) -> Result<VerifiedCoin, CoinError> {
        let b = &self.0.body;
        match keys.into_iter().find(|k| k.key_id() == b.key_id) {
            Some(key) => self.verify(bank, key, now),
            None if &b.bank_id != bank => Err(CoinError::ForeignBank {
                serial: b.serial,
                minted_by: b.bank_id.escaped(),
                expected: bank.escaped(),
            }),
            None => Err(CoinError::UnknownKey { serial: b.serial, key_id: b.key_id }),
        }
    }
}

/// Batch roots whose signature was checked, per key: coins minted together (one
/// withdrawal, one exchange) then cost one RSA verification between them, however many
/// requests they arrive in. Bounded: when full, the oldest entries are forgotten (and
/// would be checked again). Entries name the key, the batch size, the root and the
/// signature, so a coin whose path does not lead to a remembered root, or whose signature
/// bytes differ, is checked in full.
pub struct RootCache {
    capacity: usize,
    inner: std::sync::Mutex<Remembered>,
}

/// The remembered entries, and the order they came in (oldest first).
type Remembered = (std::collections::HashSet<[u8; 32]>, std::collections::VecDeque<[u8; 32]>);

impl RootCache {
    /// Entries kept by the process-wide cache that [`Coin::verify`] uses (about 2.5 MiB).
    pub const SHARED_CAPACITY: usize = 32_768;

    pub fn new(capacity: usize) -> RootCache {
        RootCache { capacity: capacity.max(1), inner: std::sync::Mutex::new(Default::default()) }
    }

    /// The cache every [`Coin::verify`] in this process shares.
    pub fn shared() -> &'static RootCache {
        static SHARED: std::sync::OnceLock<RootCache> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| RootCache::new(Self::SHARED_CAPACITY))
    }

    fn entry(key: &VerifyingKey, size: u32, root: &[u8; 32], signature: &[u8]) -> [u8; 32] {
        tagged_hash(b"PMTP v1 checked coin root", &[&key.key_id().0, &size.to_le_bytes(), root, signature])
    }

    fn contains(&self, entry: &[u8; 32]) -> bool {
        self.inner.lock().map(|g| g.0.contains(entry)).unwrap_or(false)
    }

    fn insert(&self, entry: [u8; 32]) {
        if let Ok(mut g) = self.inner.lock() {
            let (set, order) = &mut *g;
            if set.insert(entry) {
                order.push_back(entry);
                while order.len() > self.capacity {
                    if let Some(old) = order.pop_front() {
                        set.remove(&old);
                    }
                }
            }
        }
    }

    /// How many roots are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(all(test, feature = "test-keys"))]
mod batch_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing;

    pub(crate) fn body(i: u8) -> CoinBody {
        CoinBody {
            value: Denomination::from_exponent(i % 8).unwrap(),
            serial: Serial([i; 16]),
            bank_id: BankId::new("bank-a").unwrap(),
            bank_addr: HostPort::new("127.0.0.1:8000").unwrap(),
            expiry: 1_000,
            key_id: testing::signing_key(0).verifying_key().key_id(),
        }
    }

    fn check(c: &Coin, cache: &RootCache) -> Result<(), KeyError> {
        c.check_signature(testing::signing_key(0).verifying_key(), cache)
    }

    #[test]
    fn coins_minted_together_share_one_signature_and_each_verifies_alone() {
        let key = testing::signing_key(0);
        let coins = Coin::mint_batch((0..8).map(body).collect(), &key).unwrap();
        assert!(coins.iter().all(|c| c.format() == 2));
        let bank = BankId::new("bank-a").unwrap();
        for c in &coins {
            c.verify(&bank, key.verifying_key(), 10).unwrap();
        }
        // One root checked for eight coins; with a fresh cache, each coin alone checks too.
        let cache = RootCache::new(16);
        for c in &coins {
            check(c, &cache).unwrap();
        }
        assert_eq!(cache.len(), 1);
        let single = Coin::mint_batch(vec![body(9)], &key).unwrap();
        assert_eq!(single[0].format(), 1, "a coin minted alone is format 1");
        single[0].verify(&bank, key.verifying_key(), 10).unwrap();
    }

    #[test]
    fn tampered_batch_coins_are_refused_even_with_their_root_remembered() {
        let key = testing::signing_key(0);
        let a = Coin::mint_batch((0..4).map(body).collect(), &key).unwrap();
        let b = Coin::mint_batch((10..14).map(body).collect(), &key).unwrap();
        let cache = RootCache::new(16);
        for c in a.iter().chain(&b) {
            check(c, &cache).unwrap();
        }
        // A value changed.
        let mut dearer = a[1].clone();
        dearer.0.body.value = Denomination::from_exponent(20).unwrap();
        assert!(check(&dearer, &cache).is_err());
        // A coin moved to another batch: its body with the other batch's proof.
        let moved = Coin(Signed { body: a[1].0.body.clone(), signature: b[1].0.signature.clone() });
        assert!(check(&moved, &cache).is_err());
        // A path altered, and an index changed.
        let mut p = a[2].batch_proof().unwrap();
        p.path[0][0] ^= 1;
        let mut sig = BATCH_MAGIC.to_vec();
        sig.extend(bincode::serialize(&p).unwrap());
        assert!(check(&Coin(Signed { body: a[2].0.body.clone(), signature: sig }), &cache).is_err());
        let mut p = a[2].batch_proof().unwrap();
        p.index = 3;
        let mut sig = BATCH_MAGIC.to_vec();
        sig.extend(bincode::serialize(&p).unwrap());
        assert!(check(&Coin(Signed { body: a[2].0.body.clone(), signature: sig }), &cache).is_err());
        // Another key's batch under this bank's key id.
        let other = Coin::mint_batch((0..4).map(body).collect(), &testing::signing_key(1)).unwrap();
        assert!(check(&other[0], &RootCache::new(4)).is_err());
        // Garbage after the magic.
        let junk = Coin(Signed { body: body(1), signature: b"PMB2\x01\x02".to_vec() });
        assert!(check(&junk, &cache).is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let key = testing::signing_key(0);
        let cache = RootCache::new(2);
        for n in 0..4u8 {
            let coins = Coin::mint_batch((n * 10..n * 10 + 2).map(body).collect(), &key).unwrap();
            check(&coins[0], &cache).unwrap();
        }
        assert_eq!(cache.len(), 2);
    }
}
