//! PMTP over HTTP 402: paying for a web resource in band, with no inbound connection to
//! the buyer (docs/PMTP.md, "Paying over HTTP").
//!
//! 1. A request for a paid resource without payment is answered `402 Payment Required`
//!    with the merchant's signed [`Offer`] for an **order** in the [`PAYMENT_REQUIRED`]
//!    header. Making an offer writes nothing: the order id is random, and the offer's
//!    signature is what later proves its terms to the merchant itself.
//! 2. The buyer's wallet checks the offer (signature, the key it pinned for that origin,
//!    the origin against the URL it fetched, expiry), asks the person or its policy, and
//!    retries the request with a [`Payment`] sealed to the merchant in the
//!    [`PAYMENT_SIGNATURE`] header: the signed offer echoed back, and exact coins.
//! 3. The merchant opens it, checks the echoed offer is its own, unexpired, for this
//!    origin and resource, records the order as paid (once: a second payment for a paid
//!    order is refused before any coin is taken), validates the coins at their bank, and
//!    answers 200 with the resource and the signed receipt in [`PAYMENT_RESPONSE`]. The
//!    receipt's `request` field is the order id.
//! 4. A later request presenting the receipt in [`PAYMENT_RECEIPT`] gets the resource
//!    again until the order expires; a payment sent again unchanged gets the same receipt.
//!
//! Header values are `v1.` followed by the unpadded base64url of the bincode encoding, so
//! they are plain ASCII and the version can change without guessing.

use crate::coin::{coins_hash, Coin};
use crate::keys::{KeyError, PeerKeys, PublicIdentity, Signable, Signed};
use crate::message::pay_coins::Receipt;
use crate::seal::{self, SealedBox};
use crate::text::{BankId, BoundedString, Description};
use crate::Amount;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Response header of a 402: the merchant's signed offer.
pub const PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
/// Request header of the retry: the sealed payment.
pub const PAYMENT_SIGNATURE: &str = "PAYMENT-SIGNATURE";
/// Response header of the paid answer: the merchant's signed receipt.
pub const PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
/// Request header presenting a receipt, to get a paid resource again.
pub const PAYMENT_RECEIPT: &str = "PAYMENT-RECEIPT";

/// Longest header value accepted (a payment of 64 coins fits with room to spare).
pub const MAX_HEADER: usize = 48 * 1024;

const VERSION_PREFIX: &str = "v1.";
const PAYMENT_AAD: &[u8] = b"PMTP v1 http payment";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("the header is not a payme v1 value")]
    Version,
    #[error("the header is longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("the header does not decode: {0}")]
    Decode(String),
    #[error("not a web origin: {0}")]
    Origin(String),
    #[error("the offer is not signed by the merchant key it names")]
    BadSignature,
    #[error("the offer is for {offered}, but the page is at {fetched}")]
    WrongOrigin { offered: String, fetched: String },
    #[error("the offer expired")]
    Expired,
    #[error("the payment cannot be opened with this merchant's key")]
    Sealed,
    #[error("the merchant key is unusable: {0}")]
    Key(String),
}

impl From<KeyError> for HttpError {
    fn from(e: KeyError) -> Self {
        HttpError::Key(e.to_string())
    }
}

/// Encodes a value for a header: `v1.` and unpadded base64url of its bincode.
pub fn encode<T: Serialize>(value: &T) -> Result<String, HttpError> {
    use base64::Engine;
    let bytes = bincode::serialize(value).map_err(|e| HttpError::Decode(e.to_string()))?;
    Ok(format!("{VERSION_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Decodes a header value made by [`encode`], refusing anything longer than
/// [`MAX_HEADER`] before decoding, and trailing bytes after the value.
pub fn decode<T: DeserializeOwned>(header: &str) -> Result<T, HttpError> {
    use base64::Engine;
    use bincode::Options;
    let header = header.trim();
    if header.len() > MAX_HEADER {
        return Err(HttpError::TooLong);
    }
    let b64 = header.strip_prefix(VERSION_PREFIX).ok_or(HttpError::Version)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).map_err(|e| HttpError::Decode(e.to_string()))?;
    bincode::options()
        .with_fixint_encoding()
        .with_limit(MAX_HEADER as u64)
        .reject_trailing_bytes()
        .deserialize(&bytes)
        .map_err(|e| HttpError::Decode(e.to_string()))
}

/// A web origin (RFC 6454): scheme, host and port, lower-case, port always written:
/// `https://shop.example:443`. What a nonce's address is to PMTP over TCP, the origin is
/// to the in-band flow: an offer names the origin it was served from, and the buyer's
/// wallet pays it only if that is the origin of the URL it fetched.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin(BoundedString<300>);

impl Origin {
    /// The origin of an `http://` or `https://` URL.
    pub fn of_url(url: &str) -> Result<Origin, HttpError> {
        let bad = || HttpError::Origin(crate::text::escape_control(url));
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad()),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') || authority.is_empty() {
            return Err(bad()); // no credentials in URLs
        }
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal's colons are inside brackets.
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad())?),
            _ => (authority, default_port),
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty()
            || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        {
            return Err(bad());
        }
        BoundedString::new(format!("{scheme}://{host}:{port}")).map(Origin).map_err(|_| bad())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({})", self.0)
    }
}

/// An order: what one offer sells, named by 16 random bytes.
pub type OrderId = [u8; 16];

/// How an order id is shown to people: the first 8 bytes, hex, in groups of four.
pub fn order_label(order: &OrderId) -> String {
    let h = hex::encode(&order[..8]);
    format!("{}-{}-{}-{}", &h[0..4], &h[4..8], &h[8..12], &h[12..16])
}

/// The merchant's signed ask for one order of one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub order: OrderId,
    /// Where the resource is served: the buyer's wallet compares it with the URL.
    pub origin: Origin,
    /// Path (and query) of the paid resource at the origin.
    pub resource: BoundedString<1024>,
    pub amount: Amount,
    pub merchant: PublicIdentity,
    pub description: Description,
    /// Banks whose coins the merchant accepts; empty for any.
    pub accepted_banks: Vec<BankId>,
    /// Unix seconds until which the offer may be paid and its receipt re-opens the resource.
    pub expires: u64,
}

impl Signable for Offer {
    const DOMAIN: &'static [u8] = b"PMTP v1 http offer";
}

pub type SignedOffer = Signed<Offer>;

/// Checks an offer as the buyer's wallet must before paying it: signed by the key it
/// names, served from the origin of the URL that was fetched, and not expired. Returns
/// the merchant's parsed keys (pinning them is the wallet's business).
pub fn check_offer(offer: &SignedOffer, fetched: &Origin, now: u64) -> Result<PeerKeys, HttpError> {
    let keys = offer.body.merchant.parse()?;
    offer.verify(&keys.verifying).map_err(|_| HttpError::BadSignature)?;
    if &offer.body.origin != fetched {
        return Err(HttpError::WrongOrigin { offered: offer.body.origin.to_string(), fetched: fetched.to_string() });
    }
    if offer.body.expires <= now {
        return Err(HttpError::Expired);
    }
    Ok(keys)
}

/// What the buyer's wallet pays with: the offer it accepts, echoed, and exact coins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub offer: SignedOffer,
    pub coins: Vec<Coin>,
    /// Unix seconds when the wallet made it.
    pub time: u64,
}

impl Payment {
    /// The digest a receipt for this payment names ([`Receipt::coins_hash`]).
    pub fn coins_hash(&self) -> [u8; 32] {
        coins_hash(self.coins.iter().map(|c| &c.0.body.serial))
    }
}

/// Seals a payment to the merchant's X25519 key (only the merchant can read the coins).
pub fn seal_payment<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    merchant: &PeerKeys,
    payment: &Payment,
) -> Result<SealedBox, HttpError> {
    let plain = bincode::serialize(payment).map_err(|e| HttpError::Decode(e.to_string()))?;
    seal::seal_to(rng, &merchant.x25519, PAYMENT_AAD, &plain).map_err(|_| HttpError::Sealed)
}

/// Opens a sealed payment with the merchant's X25519 secret.
pub fn open_payment(secret: &x25519_dalek::StaticSecret, sealed: &SealedBox) -> Result<Payment, HttpError> {
    let plain = seal::open_sealed(secret, PAYMENT_AAD, sealed).map_err(|_| HttpError::Sealed)?;
    use bincode::Options;
    bincode::options()
        .with_fixint_encoding()
        .with_limit(MAX_HEADER as u64)
        .reject_trailing_bytes()
        .deserialize(&plain)
        .map_err(|e| HttpError::Decode(e.to_string()))
}

/// A receipt settles `order` when its `request` field names it.
pub fn receipt_order(receipt: &Signed<Receipt>) -> OrderId {
    receipt.body.request
}

#[cfg(all(test, feature = "test-keys"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing;

    fn offer(origin: &str, expires: u64) -> SignedOffer {
        let id = testing::named_identity(2, "bobs-books");
        let body = Offer {
            order: [7; 16],
            origin: Origin::of_url(origin).unwrap(),
            resource: BoundedString::new("/cgi-bin/payme-cgi/paper").unwrap(),
            amount: Amount::new(37),
            merchant: id.public(),
            description: Description::new("The PayMe paper").unwrap(),
            accepted_banks: vec![],
            expires,
        };
        Signed::sign(body, &id.signing).unwrap()
    }

    #[test]
    fn origins_are_normalised_and_strangers_refused() {
        let o = |u: &str| Origin::of_url(u).map(|o| o.to_string());
        assert_eq!(o("HTTPS://Shop.Example/item?x=1").unwrap(), "https://shop.example:443");
        assert_eq!(o("http://127.0.0.1:8080/cgi-bin/x").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(o("http://[::1]:81/").unwrap(), "http://[::1]:81");
        assert_eq!(o("http://[::1]/").unwrap(), "http://[::1]:80");
        assert_eq!(o("https://shop.example:443").unwrap(), o("https://shop.example").unwrap());
        for bad in ["ftp://x/", "http://user@shop/", "shop.example", "http://", "http://a:99999/", "http://a b/"] {
            assert!(Origin::of_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_offer_is_paid_only_where_it_was_served_while_it_lasts() {
        let o = offer("http://127.0.0.1:8080/", 1000);
        let here = Origin::of_url("http://127.0.0.1:8080/other").unwrap();
        assert!(check_offer(&o, &here, 999).is_ok());
        assert_eq!(check_offer(&o, &here, 1000).unwrap_err(), HttpError::Expired);
        let elsewhere = Origin::of_url("http://127.0.0.2:8080/").unwrap();
        assert!(matches!(check_offer(&o, &elsewhere, 10), Err(HttpError::WrongOrigin { .. })));
        // A higher price under the same signature: refused.
        let mut dearer = o.clone();
        dearer.body.amount = Amount::new(370);
        assert_eq!(check_offer(&dearer, &here, 10).unwrap_err(), HttpError::BadSignature);
        // Another key under the real name (an on-path substitution) signs its own offer,
        // which checks; the wallet's pin for the origin is what refuses it.
        let mallory = testing::named_identity(3, "bobs-books");
        let mut swapped = o.body.clone();
        swapped.merchant = mallory.public();
        let swapped = Signed::sign(swapped, &mallory.signing).unwrap();
        let keys = check_offer(&swapped, &here, 10).unwrap();
        assert_ne!(keys.fingerprint, o.body.merchant.fingerprint());
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let o = offer("http://127.0.0.1:8080/", 1000);
        let h = encode(&o).unwrap();
        assert!(h.starts_with("v1.") && h.is_ascii() && !h.contains('='));
        assert_eq!(decode::<SignedOffer>(&h).unwrap(), o);
        assert_eq!(decode::<SignedOffer>(&h.replacen("v1.", "v2.", 1)).unwrap_err(), HttpError::Version);
        assert!(matches!(decode::<SignedOffer>(&format!("{h}AAAA")), Err(HttpError::Decode(_))));
        assert_eq!(decode::<SignedOffer>(&"v1.".repeat(MAX_HEADER)).unwrap_err(), HttpError::TooLong);
        assert!(decode::<SignedOffer>(&h[..h.len() / 2]).is_err());
    }

    #[test]
    fn a_payment_opens_only_for_the_merchant() {
        let merchant = testing::named_identity(2, "bobs-books");
        let keys = merchant.public().parse().unwrap();
        let p = Payment { offer: offer("http://127.0.0.1:8080/", 1000), coins: vec![], time: 5 };
        let sealed = seal_payment(&mut crate::rng::os(), &keys, &p).unwrap();
        let back = decode::<SealedBox>(&encode(&sealed).unwrap()).unwrap();
        assert_eq!(open_payment(&merchant.x25519, &back).unwrap(), p);
        let other = testing::named_identity(3, "x");
        assert_eq!(open_payment(&other.x25519, &back).unwrap_err(), HttpError::Sealed);
    }

    #[test]
    fn order_labels_are_short_and_stable() {
        assert_eq!(order_label(&[0xab; 16]), "abab-abab-abab-abab");
    }
}
