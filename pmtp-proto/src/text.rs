//! Bounded strings from peers, and safe display of text that came from a peer.
//!
//! Every string a peer sends has a maximum length checked while decoding, so a name or a
//! description can never be larger than its type allows (parse, don't validate).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A UTF-8 string of at most `N` bytes, checked on construction and on decoding.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BoundedString<const N: usize>(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("text of {len} bytes is longer than the {max} allowed")]
pub struct TooLong {
    pub len: usize,
    pub max: usize,
}

impl<const N: usize> BoundedString<N> {
    pub fn new(s: impl Into<String>) -> Result<Self, TooLong> {
        let s = s.into();
        if s.len() > N {
            return Err(TooLong { len: s.len(), max: N });
        }
        Ok(Self(s))
    }
    /// The longest prefix of `s` (at a character boundary) that fits.
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s[..end].to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The text with control characters escaped, for showing text a peer sent to a person
    /// (a merchant's description must not move the cursor or recolour a terminal).
    pub fn escaped(&self) -> String {
        escape_control(&self.0)
    }
}

impl<const N: usize> TryFrom<String> for BoundedString<N> {
    type Error = TooLong;
    fn try_from(s: String) -> Result<Self, TooLong> {
        Self::new(s)
    }
}
impl<const N: usize> TryFrom<&str> for BoundedString<N> {
    type Error = TooLong;
    fn try_from(s: &str) -> Result<Self, TooLong> {
        Self::new(s)
    }
}
impl<const N: usize> From<BoundedString<N>> for String {
    fn from(s: BoundedString<N>) -> String {
        s.0
    }
}
impl<const N: usize> fmt::Display for BoundedString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl<const N: usize> fmt::Debug for BoundedString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A bank's identifier (the paper's "userid of the bank's public key").
pub type BankId = BoundedString<64>;
/// An account holder's, merchant's or bank's display name.
pub type Name = BoundedString<128>;
/// A network address as `host:port`.
pub type HostPort = BoundedString<255>;
/// What a merchant sells, shown to the buyer before they consent.
pub type Description = BoundedString<1024>;
/// Human-readable text in refusals.
pub type ReasonText = BoundedString<512>;
/// An account password (compared by the bank against an argon2 hash; never logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub BoundedString<256>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    pub fn new(s: impl Into<String>) -> Result<Self, TooLong> {
        BoundedString::new(s).map(Password)
    }
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

/// Escapes control characters (C0, DEL, C1 and bidi overrides) as `\u{..}`.
pub fn escape_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked_when_decoding() {
        let long = bincode::serialize(&"x".repeat(65)).unwrap();
        assert!(bincode::deserialize::<BankId>(&long).is_err());
        let ok = bincode::serialize(&"bank-1").unwrap();
        assert_eq!(bincode::deserialize::<BankId>(&ok).unwrap().as_str(), "bank-1");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("a\x1b[31mb\n"), "a\\u{1b}[31mb\\u{a}");
        assert_eq!(escape_control("caf\u{e9} \u{202e}x"), "caf\u{e9} \\u{202e}x");
        assert_eq!(format!("{:?}", Password::new("hunter2").unwrap()), "Password(<redacted>)");
    }
}
