//! # pmtp-proto: the PayMe Transfer Protocol
//!
//! Everything the payme daemons agree on, and nothing that touches the network: messages
//! and their framing ([`frame`], [`message`]), coins and denominations ([`coin`],
//! [`denomination`]), money ([`Amount`]), keys and signatures ([`keys`]), encryption
//! ([`seal`]), replay protection ([`nonce`]) and refusal reasons ([`refusal`]). Time is
//! always passed in. The tokio-util codec ([`codec`], feature `codec`) is a thin adapter, and
//! key-file IO ([`keyfile::fs`], feature `fs`) is the one place that touches the filesystem.
//!
//! Every decode, verify and open function returns a typed error on bad input; none panics.

#![forbid(unsafe_code)]

pub mod amount;
pub mod batch;
pub mod coin;
pub mod denomination;
pub mod frame;
pub mod http;
pub mod keyfile;
pub mod keys;
pub mod message;
pub mod nonce;
pub mod refusal;
pub mod rng;
pub mod seal;
pub mod text;

#[cfg(feature = "codec")]
pub mod codec;
#[cfg(any(test, feature = "test-keys"))]
pub mod testing;

pub use amount::Amount;
pub use coin::{Coin, Serial, VerifiedCoin};
pub use denomination::Denomination;
pub use frame::{Frame, FrameDecoder, ProtoError, Reply};
pub use keys::{Identity, PublicIdentity, Signed};
pub use message::*;
pub use nonce::{Nonce, NonceChecker, NonceConfig};
pub use refusal::{ReasonCode, Refusal};
pub use seal::SessionKey;
