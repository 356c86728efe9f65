//! The keys `init` makes for a new bank or wallet.
//!
//! Ordinary builds generate a fresh RSA key and seal it under the passphrase with Argon2id
//! at OWASP's cost. Test builds (feature `test-keys`, on under `cargo test --workspace
//! --all-features`) take a pre-generated key from a pool instead, and cheap Argon2
//! parameters, when [`TEST_KEY_VAR`] names a pool index: test suites that start dozens of
//! daemons stop paying for key generation and slow hashing. The pool's private keys are
//! public in this repository, so no ordinary build ever reads the variable.

use pmtp_proto::keyfile::KdfParams;
use pmtp_proto::keys::{Identity, KeyError};
use pmtp_proto::text::Name;

/// Names the pool key a test build's `init` takes (an index, taken modulo the pool size).
pub const TEST_KEY_VAR: &str = "PAYME_TEST_KEY";

/// A new identity named `name`: fresh keys of `rsa_bits`, or a test build's pool key.
pub fn new_identity(name: Name, rsa_bits: usize) -> Result<Identity, KeyError> {
    #[cfg(feature = "test-keys")]
    if let Some(i) = test_key_index() {
        return Ok(pmtp_proto::testing::pool_identity(i, name.as_str()));
    }
    Identity::generate(name, &mut pmtp_proto::rng::os(), rsa_bits)
}

/// The Argon2id cost for key files and account passwords: OWASP's, or a test build's
/// cheap one when it uses the key pool.
pub fn kdf_params() -> KdfParams {
    if cheap_kdf() {
        KdfParams::INSECURE_FAST
    } else {
        KdfParams::default()
    }
}

/// True only in test builds told to use the pool ([`TEST_KEY_VAR`]).
pub fn cheap_kdf() -> bool {
    #[cfg(feature = "test-keys")]
    if test_key_index().is_some() {
        return true;
    }
    false
}

#[cfg(feature = "test-keys")]
fn test_key_index() -> Option<usize> {
    std::env::var(TEST_KEY_VAR).ok().and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn without_the_variable_keys_are_fresh_and_the_kdf_is_full_cost() {
        // The test binary does not set PAYME_TEST_KEY.
        assert!(std::env::var_os(TEST_KEY_VAR).is_none());
        assert!(!cheap_kdf());
        assert_eq!(kdf_params(), KdfParams::default());
    }
}
