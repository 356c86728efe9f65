//! Refusal reasons: a stable numeric code and a human-readable text.
//!
//! Codes are part of the wire format and never change meaning; new ones may be added.
//! Every internal error maps to a code in exactly one place ([`From`] impls here for this
//! crate's errors, and one function per daemon for its own). A caller can ask whether a
//! refusal is definitive (the request was judged and rejected: retrying it unchanged
//! will fail again, and e.g. a spent coin is proven spent) or retryable (nothing was done,
//! or the outcome is unknown: try again later).

use crate::nonce::{Nonce, NonceError};
use crate::text::ReasonText;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReasonCode(pub u16);

macro_rules! reason_codes {
    ($( $name:ident = $n:literal, $label:literal, $definitive:literal; )*) => {
        impl ReasonCode {
            $( pub const $name: ReasonCode = ReasonCode($n); )*
            /// Every code this version knows.
            pub const ALL: &'static [ReasonCode] = &[$( ReasonCode::$name ),*];

            /// A short stable label (`insufficient_funds`); `unknown` for codes from a newer peer.
            pub fn label(self) -> &'static str {
                match self.0 { $( $n => $label, )* _ => "unknown" }
            }

            /// True when the request was judged and rejected; false when it may succeed if
            /// retried (busy, unreachable, timed out) or the outcome is unknown.
            pub fn is_definitive(self) -> bool {
                match self.0 { $( $n => $definitive, )* _ => false }
            }
        }
    };
}

reason_codes! {
    MALFORMED = 1, "malformed", true;
    UNSUPPORTED_VERSION = 2, "unsupported_version", true;
    UNKNOWN_MESSAGE = 3, "unknown_message", true;
    FRAME_TOO_LARGE = 4, "frame_too_large", true;
    DECRYPT_FAILED = 5, "decrypt_failed", true;
    BAD_SIGNATURE = 6, "bad_signature", true;
    UNEXPECTED_MESSAGE = 7, "unexpected_message", true;
    NONCE_REPLAY = 10, "nonce_replay", true;
    NONCE_WRONG_ADDRESS = 11, "nonce_wrong_address", true;
    NONCE_OUTSIDE_WINDOW = 12, "nonce_outside_window", true;
    BUSY = 13, "busy", false;
    UNKNOWN_ACCOUNT = 20, "unknown_account", true;
    NAME_MISMATCH = 21, "name_mismatch", true;
    WRONG_PASSWORD = 22, "wrong_password", true;
    TOO_MANY_ATTEMPTS = 23, "too_many_attempts", false;
    INSUFFICIENT_FUNDS = 24, "insufficient_funds", true;
    INVALID_AMOUNT = 25, "invalid_amount", true;
    COIN_NOT_IN_CIRCULATION = 30, "coin_not_in_circulation", true;
    COIN_EXPIRED = 31, "coin_expired", true;
    COIN_FOREIGN_BANK = 32, "coin_foreign_bank", true;
    COIN_BAD_SIGNATURE = 33, "coin_bad_signature", true;
    DUPLICATE_COIN = 34, "duplicate_coin", true;
    EXCHANGE_DISABLED = 35, "exchange_disabled", true;
    TOO_MANY_COINS = 36, "too_many_coins", true;
    REFUSED_BY_USER = 40, "refused_by_user", true;
    UNKNOWN_MERCHANT = 41, "unknown_merchant", true;
    MERCHANT_KEY_CHANGED = 42, "merchant_key_changed", true;
    NOT_ENOUGH_MONEY = 43, "not_enough_money", true;
    NO_ANSWER = 44, "no_answer", false;
    AMOUNT_MISMATCH = 45, "amount_mismatch", true;
    UNEXPECTED_PAYMENT = 46, "unexpected_payment", true;
    PEER_BANK_UNAVAILABLE = 50, "peer_bank_unavailable", false;
    PEER_BANK_REFUSED = 51, "peer_bank_refused", true;
    INTERNAL = 60, "internal", false;
    TIMEOUT = 61, "timeout", false;
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.label(), self.0)
    }
}
impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.label(), self.0)
    }
}

/// An authenticated refusal (sealed under the session key or to the requester's key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: ReasonCode,
    pub text: ReasonText,
    pub nonce: Nonce,
}

/// A refusal sent in clear when the request could not be opened (malformed frame, unknown
/// version, oversize): there is no session key to seal it under. It is unauthenticated, so
/// a client must never treat it as proof about money (for example that coins were spent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainRefusal {
    pub code: ReasonCode,
    pub text: ReasonText,
}

/// Builds reason text, truncated at a character boundary to fit [`ReasonText`].
pub fn reason_text(s: &str) -> ReasonText {
    ReasonText::truncated(s)
}

impl From<NonceError> for ReasonCode {
    fn from(e: NonceError) -> ReasonCode {
        match e {
            NonceError::Replay => ReasonCode::NONCE_REPLAY,
            NonceError::WrongAddress { .. } => ReasonCode::NONCE_WRONG_ADDRESS,
            NonceError::OutsideWindow { .. } => ReasonCode::NONCE_OUTSIDE_WINDOW,
            NonceError::CacheFull => ReasonCode::BUSY,
        }
    }
}

impl From<&crate::coin::CoinError> for ReasonCode {
    fn from(e: &crate::coin::CoinError) -> ReasonCode {
        use crate::coin::CoinError::*;
        match e {
            ForeignBank { .. } => ReasonCode::COIN_FOREIGN_BANK,
            UnknownKey { .. } | BadSignature { .. } => ReasonCode::COIN_BAD_SIGNATURE,
            Expired { .. } => ReasonCode::COIN_EXPIRED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_labelled() {
        let mut seen = std::collections::HashSet::new();
        for c in ReasonCode::ALL {
            assert!(seen.insert(c.0), "duplicate code {}", c.0);
            assert_ne!(c.label(), "unknown");
        }
        assert_eq!(ReasonCode(999).label(), "unknown");
        assert!(!ReasonCode(999).is_definitive());
        assert!(ReasonCode::COIN_NOT_IN_CIRCULATION.is_definitive());
        assert!(!ReasonCode::PEER_BANK_UNAVAILABLE.is_definitive());
        assert_eq!(reason_text(&"é".repeat(300)).as_str().len(), 512);
    }
}
