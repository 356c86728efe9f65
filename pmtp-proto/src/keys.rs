//! Keys, identities and signatures.
//!
//! Every party (bank, wallet) has an RSA key pair for signatures (PKCS#1 v1.5 with SHA-256,
//! deterministic, so golden vectors are reproducible) and an X25519 key pair that sealed
//! boxes are encrypted to. The public half travels as a [`PublicIdentity`]; parsing one
//! yields [`PeerKeys`], ready to verify and seal with.
//!
//! Signatures cover a domain tag and the bincode encoding of the signed value
//! ([`Signed`]), so a signature over one kind of message can never pass for another.
//!
//! Two libraries share the RSA work. `rsa` generates, parses and encodes keys (PKCS#8,
//! SPKI); `ring` signs and verifies: about 2x faster signing and 2-4x faster verifying on
//! this hardware (docs/BENCHMARKS.md). PKCS#1 v1.5 is deterministic, so both produce the
//! same bytes: the golden vectors and a test that compares the two libraries hold that.
//! Each key keeps both forms, parsed once.

use crate::text::Name;
use ring::signature::{RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// RSA modulus sizes accepted from peers and generated locally.
pub const MIN_RSA_BITS: usize = 2048;
pub const MAX_RSA_BITS: usize = 4096;
/// The default for newly generated keys.
pub const DEFAULT_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key size {0} bits is outside 2048..=4096")]
    RsaSize(usize),
    #[error("malformed public key: {0}")]
    MalformedPublic(String),
    #[error("malformed private key")]
    MalformedPrivate,
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing failed")]
    SignFailed,
    #[error("X25519 key exchange gave a non-contributory (low-order) result")]
    WeakX25519,
}

/// Identifies a bank signing key: the first 8 bytes of SHA-256 over its SPKI DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}
impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An RSA public key for verification, with its encoded form and key id.
#[derive(Clone)]
pub struct VerifyingKey {
    inner: rsa::RsaPublicKey,
    /// The modulus and exponent, big-endian without leading zeros, as ring verifies with.
    ring: RsaPublicKeyComponents<Vec<u8>>,
    spki_der: Vec<u8>,
    key_id: KeyId,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.key_id)
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl VerifyingKey {
    /// Parses a SubjectPublicKeyInfo DER; refuses sizes outside 2048..=4096 bits.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| KeyError::MalformedPublic(e.to_string()))?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: rsa::RsaPublicKey) -> Result<Self, KeyError> {
        let bits = key.size() * 8;
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::RsaSize(bits));
        }
        let spki_der =
            key.to_public_key_der().map_err(|e| KeyError::MalformedPublic(e.to_string()))?.as_bytes().to_vec();
        let digest = Sha256::digest(&spki_der);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        let ring = RsaPublicKeyComponents { n: key.n_bytes().into(), e: key.e_bytes().into() };
        Ok(Self { inner: key, ring, spki_der, key_id: KeyId(id) })
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    pub fn bits(&self) -> usize {
        self.inner.size() * 8
    }

    /// Verifies an RSA PKCS#1 v1.5 SHA-256 signature over `msg`.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        self.ring.verify(&RSA_PKCS1_2048_8192_SHA256, msg, signature).map_err(|_| KeyError::BadSignature)
    }
}

/// An RSA private key for signing.
pub struct SigningKey {
    /// Kept for encoding the key (ring cannot export one).
    inner: rsa::RsaPrivateKey,
    ring: RsaKeyPair,
    public: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.public.key_id)
    }
}

impl SigningKey {
    /// Generates a fresh key of `bits` (2048 to 4096). Slow (hundreds of milliseconds):
    /// run it off any async reactor.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R, bits: usize) -> Result<Self, KeyError> {
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::RsaSize(bits));
        }
        let key = rsa::RsaPrivateKey::new(rng, bits).map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_rsa(key)
    }

    /// ring is stricter than rsa: it refuses, for instance, a public exponent below 65537
    /// or more than two primes. Keys this crate generates are two-prime with e = 65537.
    fn from_rsa(key: rsa::RsaPrivateKey) -> Result<Self, KeyError> {
        let public = VerifyingKey::from_rsa(key.to_public_key())?;
        let pkcs1 = key.to_pkcs1_der().map_err(|_| KeyError::MalformedPrivate)?;
        let ring = RsaKeyPair::from_der(pkcs1.as_bytes()).map_err(|_| KeyError::MalformedPrivate)?;
        Ok(Self { inner: key, ring, public })
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|_| KeyError::MalformedPrivate)?;
        Self::from_rsa(key)
    }

    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let doc = self.inner.to_pkcs8_der().map_err(|_| KeyError::MalformedPrivate)?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `msg` (RSA PKCS#1 v1.5, SHA-256). CPU-bound (about 0.8 ms at 2048 bits).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut sig = vec![0; self.ring.public().modulus_len()];
        // PKCS#1 v1.5 padding draws nothing from the generator; ring's API asks for one.
        let rng = ring::rand::SystemRandom::new();
        self.ring.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).map_err(|_| KeyError::SignFailed)?;
        Ok(sig)
    }
}

/// A value that can be signed: its domain tag keeps signatures of different kinds apart.
pub trait Signable: Serialize {
    const DOMAIN: &'static [u8];

    /// The exact bytes a signature covers: `DOMAIN`, a zero byte, then the bincode body.
    fn signing_bytes(&self) -> Result<Vec<u8>, KeyError> {
        let mut out = Vec::with_capacity(Self::DOMAIN.len() + 256);
        out.extend_from_slice(Self::DOMAIN);
        out.push(0);
        bincode::serialize_into(&mut out, self).map_err(|_| KeyError::SignFailed)?;
        Ok(out)
    }
}

/// A value with an RSA signature over [`Signable::signing_bytes`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signature: Vec<u8>,
}

impl<T: Signable + DeserializeOwned> Signed<T> {
    pub fn sign(body: T, key: &SigningKey) -> Result<Self, KeyError> {
        let signature = key.sign(&body.signing_bytes()?)?;
        Ok(Self { body, signature })
    }

    /// Checks the signature against `key`; on success the body may be trusted as coming
    /// from the key's holder.
    pub fn verify(&self, key: &VerifyingKey) -> Result<&T, KeyError> {
        key.verify(&self.body.signing_bytes()?, &self.signature)?;
        Ok(&self.body)
    }
}

/// A party's public keys as they travel on the wire and sit in config files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    pub name: Name,
    /// RSA public key, SubjectPublicKeyInfo DER.
    pub rsa_spki: Vec<u8>,
    /// X25519 public key that sealed boxes are encrypted to.
    pub x25519: [u8; 32],
}

/// SHA-256 over a public identity's encoding: what people compare and wallets pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self)
    }
}
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl PublicIdentity {
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"PMTP identity v1\0");
        // Serializing plain data into a Vec cannot fail.
        h.update(bincode::serialize(self).unwrap_or_default());
        Fingerprint(h.finalize().into())
    }

    /// Parses the keys, refusing malformed or weak ones.
    pub fn parse(&self) -> Result<PeerKeys, KeyError> {
        let verifying = VerifyingKey::from_spki_der(&self.rsa_spki)?;
        let x25519 = x25519_dalek::PublicKey::from(self.x25519);
        if self.x25519 == [0u8; 32] {
            return Err(KeyError::WeakX25519);
        }
        Ok(PeerKeys {
            name: self.name.clone(),
            verifying,
            x25519,
            fingerprint: self.fingerprint(),
            public: self.clone(),
        })
    }

    /// A one-line text form for config files: the hex of its bincode encoding.
    pub fn to_text(&self) -> String {
        hex::encode(bincode::serialize(self).unwrap_or_default())
    }
    pub fn from_text(s: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(s.trim()).map_err(|e| KeyError::MalformedPublic(e.to_string()))?;
        bincode::deserialize(&bytes).map_err(|e| KeyError::MalformedPublic(e.to_string()))
    }
}

/// A peer's parsed, usable public keys.
#[derive(Clone, Debug)]
pub struct PeerKeys {
    pub name: Name,
    pub verifying: VerifyingKey,
    pub x25519: x25519_dalek::PublicKey,
    pub fingerprint: Fingerprint,
    pub public: PublicIdentity,
}

/// A party's full identity: name, RSA signing key and X25519 secret.
pub struct Identity {
    pub name: Name,
    pub signing: SigningKey,
    pub x25519: x25519_dalek::StaticSecret,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({}, {:?}, <redacted>)", self.name, self.signing.public.key_id)
    }
}

impl Identity {
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(name: Name, rng: &mut R, bits: usize) -> Result<Self, KeyError> {
        let signing = SigningKey::generate(rng, bits)?;
        let x25519 = x25519_dalek::StaticSecret::random_from_rng(rng);
        Ok(Self { name, signing, x25519 })
    }

    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            name: self.name.clone(),
            rsa_spki: self.signing.verifying_key().spki_der().to_vec(),
            x25519: x25519_dalek::PublicKey::from(&self.x25519).to_bytes(),
        }
    }

    /// The secret parts as bytes (for the encrypted key file).
    pub(crate) fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let rsa = self.signing.to_pkcs8_der()?;
        let x = Zeroizing::new(self.x25519.to_bytes());
        let secret = SecretIdentity { name: self.name.clone(), rsa_pkcs8: rsa.to_vec(), x25519: *x };
        let bytes = bincode::serialize(&secret).map_err(|_| KeyError::MalformedPrivate);
        drop(secret);
        bytes.map(Zeroizing::new)
    }

    pub(crate) fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let secret: SecretIdentity = bincode::deserialize(bytes).map_err(|_| KeyError::MalformedPrivate)?;
        let signing = SigningKey::from_pkcs8_der(&secret.rsa_pkcs8)?;
        Ok(Self { name: secret.name.clone(), signing, x25519: x25519_dalek::StaticSecret::from(secret.x25519) })
    }
}

#[derive(Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
struct SecretIdentity {
    #[zeroize(skip)]
    name: Name,
    rsa_pkcs8: Vec<u8>,
    x25519: [u8; 32],
}

/// SHA-256 with a domain tag; used for receipt and acknowledgement digests.
pub fn tagged_hash(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag);
    h.update([0u8]);
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(all(test, feature = "test-keys"))]
mod tests {
    use super::*;
    use rsa::signature::{SignatureEncoding, Signer, Verifier};

    type RsaSigner = rsa::pkcs1v15::SigningKey<Sha256>;
    type RsaVerifier = rsa::pkcs1v15::VerifyingKey<Sha256>;

    /// Calls `f` for every test key (2048 and 3072 bits) and a few messages, with the rsa
    /// crate's PKCS#1 v1.5 SHA-256 pair for the same key: the reference ring must match.
    fn each_key_and_message(mut f: impl FnMut(&str, &SigningKey, &RsaSigner, &RsaVerifier, &[u8])) {
        let messages = [Vec::new(), b"PMTP v1 batch root\0".to_vec(), vec![0xa5; 1000], (0..=255u8).collect()];
        for i in 0..crate::testing::COUNT {
            let key = crate::testing::signing_key(i);
            let signer = RsaSigner::new(key.inner.clone());
            let verifier = RsaVerifier::new(key.public.inner.clone());
            for msg in &messages {
                let case = format!("key {i}, {} bits, {} byte message", key.public.bits(), msg.len());
                f(&case, &key, &signer, &verifier, msg);
            }
        }
    }

    #[test]
    fn ring_signs_exactly_as_the_rsa_crate_does() {
        each_key_and_message(|case, key, rsa_signer, _, msg| {
            assert_eq!(key.sign(msg).unwrap(), rsa_signer.try_sign(msg).unwrap().to_vec(), "{case}");
        });
    }

    #[test]
    fn a_signature_by_either_library_verifies_with_the_other() {
        each_key_and_message(|_, key, rsa_signer, rsa_verifier, msg| {
            let by_rsa = rsa_signer.try_sign(msg).unwrap().to_vec();
            key.verifying_key().verify(msg, &by_rsa).unwrap();
            let by_ring = key.sign(msg).unwrap();
            let sig = rsa::pkcs1v15::Signature::try_from(by_ring.as_slice()).unwrap();
            rsa_verifier.verify(msg, &sig).unwrap();

            // Both refuse the same tampering.
            let other = [msg, &[0]].concat();
            assert!(key.verifying_key().verify(&other, &by_rsa).is_err());
            assert!(rsa_verifier.verify(&other, &sig).is_err());
            let mut flipped = by_ring.clone();
            flipped[7] ^= 1;
            assert!(key.verifying_key().verify(msg, &flipped).is_err());
            let flipped = rsa::pkcs1v15::Signature::try_from(flipped.as_slice()).unwrap();
            assert!(rsa_verifier.verify(msg, &flipped).is_err());
        });
    }

    #[test]
    fn signatures_of_the_wrong_length_or_key_are_refused() {
        let key = crate::testing::signing_key(0);
        let other = crate::testing::signing_key(1);
        let sig = key.sign(b"m").unwrap();
        assert_eq!(sig.len(), 256);
        assert!(other.verifying_key().verify(b"m", &sig).is_err());
        assert!(key.verifying_key().verify(b"m", &sig[1..]).is_err());
        let mut long = sig.clone();
        long.insert(0, 0);
        assert!(key.verifying_key().verify(b"m", &long).is_err());
        assert!(key.verifying_key().verify(b"m", &[]).is_err());
    }

    #[test]
    fn a_key_survives_its_pkcs8_encoding_with_the_same_signatures() {
        let key = crate::testing::signing_key(6);
        let back = SigningKey::from_pkcs8_der(&key.to_pkcs8_der().unwrap()).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
        assert_eq!(back.sign(b"m").unwrap(), key.sign(b"m").unwrap());
    }
}
