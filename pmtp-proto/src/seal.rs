//! Encryption "to a public key" (sealed boxes) and under a session key (replies).
//!
//! A sealed box is ephemeral X25519 with the receiver's static X25519 key, HKDF-SHA256
//! (salt: both public keys; info: a version tag) giving an AES-256-GCM key and nonce that are
//! used once. A session box is AES-256-GCM under the 32-byte session key that the request
//! carried, with a random 96-bit nonce (a session key protects one response or refusal).
//!
//! Both authenticate associated data: the protocol version and message identifier of the
//! frame that carries them, so a body cannot be relabelled as another message. Any flipped
//! byte makes opening fail with [`SealError::Decrypt`]; nothing here panics on input.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce as GcmNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const SEAL_INFO: &[u8] = b"PMTP v1 sealed box";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("decryption failed: wrong key or tampered message")]
    Decrypt,
    #[error("the sender's ephemeral key is weak (low order)")]
    WeakKey,
    #[error("encryption failed")]
    Encrypt,
}

/// A message encrypted to the holder of an X25519 secret key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBox {
    pub ephemeral: [u8; 32],
    pub ciphertext: Vec<u8>,
}

/// A reply encrypted under the request's session key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBox {
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

/// A fresh symmetric key carried inside a request; the reply comes back under it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionKey(pub [u8; 32]);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        SessionKey(crate::rng::bytes(rng))
    }

    pub fn seal<R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<SessionBox, SealError> {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0));
        let nonce: [u8; 12] = crate::rng::bytes(rng);
        let ciphertext =
            cipher.encrypt(&GcmNonce::from(nonce), Payload { msg: plaintext, aad }).map_err(|_| SealError::Encrypt)?;
        Ok(SessionBox { nonce, ciphertext })
    }

    pub fn open(&self, aad: &[u8], sealed: &SessionBox) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0));
        cipher
            .decrypt(&GcmNonce::from(sealed.nonce), Payload { msg: &sealed.ciphertext, aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Decrypt)
    }
}

fn derive(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 44]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut okm = Zeroizing::new([0u8; 44]);
    // 44 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(SEAL_INFO, okm.as_mut());
    okm
}

fn gcm_parts(okm: &[u8; 44]) -> (Aes256Gcm, [u8; 12]) {
    let mut key = [0u8; 32];
    key.copy_from_slice(&okm[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm[32..]);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key));
    key.zeroize();
    (cipher, nonce)
}

/// Encrypts `plaintext` to `recipient`; only the holder of its secret can open it.
pub fn seal_to<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &x25519_dalek::PublicKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<SealedBox, SealError> {
    let eph = x25519_dalek::EphemeralSecret::random_from_rng(rng);
    let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(recipient);
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let okm = derive(shared.as_bytes(), &eph_pub, recipient.as_bytes());
    let (cipher, nonce) = gcm_parts(&okm);
    let ciphertext =
        cipher.encrypt(&GcmNonce::from(nonce), Payload { msg: plaintext, aad }).map_err(|_| SealError::Encrypt)?;
    Ok(SealedBox { ephemeral: eph_pub, ciphertext })
}

/// Opens a sealed box with the recipient's static secret.
pub fn open_sealed(
    secret: &x25519_dalek::StaticSecret,
    aad: &[u8],
    sealed: &SealedBox,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let eph = x25519_dalek::PublicKey::from(sealed.ephemeral);
    let shared = secret.diffie_hellman(&eph);
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let recipient = x25519_dalek::PublicKey::from(secret);
    let okm = derive(shared.as_bytes(), &sealed.ephemeral, recipient.as_bytes());
    let (cipher, nonce) = gcm_parts(&okm);
    cipher
        .decrypt(&GcmNonce::from(nonce), Payload { msg: &sealed.ciphertext, aad })
        .map(Zeroizing::new)
        .map_err(|_| SealError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_box_round_trip_and_every_flipped_byte_fails() {
        let mut rng = crate::rng::os();
        let secret = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
        let public = x25519_dalek::PublicKey::from(&secret);
        let sealed = seal_to(&mut rng, &public, b"aad", b"a secret message").unwrap();
        assert_eq!(&open_sealed(&secret, b"aad", &sealed).unwrap()[..], b"a secret message");
        assert_eq!(open_sealed(&secret, b"aaD", &sealed), Err(SealError::Decrypt));
        for i in 0..32 {
            let mut bad = sealed.clone();
            bad.ephemeral[i] ^= 1;
            assert!(open_sealed(&secret, b"aad", &bad).is_err(), "ephemeral byte {i}");
        }
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x80;
            assert_eq!(open_sealed(&secret, b"aad", &bad), Err(SealError::Decrypt), "ciphertext byte {i}");
        }
        let other = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
        assert_eq!(open_sealed(&other, b"aad", &sealed), Err(SealError::Decrypt));
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let mut rng = crate::rng::os();
        let secret = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
        let bad = SealedBox { ephemeral: [0u8; 32], ciphertext: vec![0; 32] };
        assert_eq!(open_sealed(&secret, b"", &bad), Err(SealError::WeakKey));
    }

    #[test]
    fn session_box_round_trip_and_tamper() {
        let mut rng = crate::rng::os();
        let key = SessionKey::generate(&mut rng);
        let boxed = key.seal(&mut rng, b"id", b"reply").unwrap();
        assert_eq!(&key.open(b"id", &boxed).unwrap()[..], b"reply");
        let mut bad = boxed.clone();
        bad.nonce[0] ^= 1;
        assert_eq!(key.open(b"id", &bad), Err(SealError::Decrypt));
        assert_eq!(SessionKey([7; 32]).open(b"id", &boxed), Err(SealError::Decrypt));
        assert_eq!(format!("{key:?}"), "SessionKey(<redacted>)");
    }
}
