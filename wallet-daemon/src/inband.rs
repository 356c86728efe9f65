//! Paying over HTTP 402, in band (`payme-wallet pay URL`): the buyer's wallet makes every
//! connection itself, outward, so it needs no inbound port (docs/PMTP.md, "Paying over
//! HTTP"; the messages are `pmtp_proto::http`).
//!
//! 1. GET the URL ([`crate::fetch`]). A 200 is the resource, free. A 402 carries the
//!    shop's signed offer in `PAYMENT-REQUIRED`.
//! 2. Check the offer: signed by the key it names, for the origin of the URL fetched, not
//!    expired; that key against the one pinned for the **origin** (the merchants table,
//!    keyed by origin). Over https the first contact is authenticated by TLS: the key is
//!    pinned at once and the shop counts as known. Over http a new origin is a new
//!    merchant, as over PMTP. A changed key is refused (`merchant_key_changed`).
//! 3. Policy or consent exactly as for PMTP (the pending list shows the shop's name, its
//!    origin, the order, the amount and the key's fingerprint), funds checked first.
//! 4. Choose exact coins (exchanging first if needed) and record the payment with the URL
//!    and the offer, coins pending; seal the payment to the shop's key and store the
//!    sealed header value; only then send it. All of this is committed before the retry.
//! 5. A 200 with a receipt that verifies (the offer's key, the order, the coins hash, the
//!    amount) settles the payment; the body goes to the file or back to the client. A
//!    definitive refusal (`PAYMENT-REFUSED: CODE LABEL`) resolves the coins by exchange
//!    (the buyer keeps them, unless the shop's bank took them). No answer leaves the
//!    payment unresolved: the maintenance round ([`recover`]) sends the same sealed
//!    payment again (the shop answers a repeat with the same receipt), and after
//!    `http.resend_rounds` unanswered rounds, or a refusal, exchanges the coins.
//!
//! Uses buyer (consent, pinning, coin choice), ops (resolving by exchange) and the store;
//! recovery calls [`recover`].

use crate::buyer;
use crate::fetch::{Answer, FetchError, Fetcher};
use crate::store::{self, CoinState, Direction, PaymentState};
use crate::{checked_amount, ops, Wallet, WalletError};
use pmtp_proto::http::{self, HttpError, Origin, Payment, SignedOffer};
use pmtp_proto::keys::PeerKeys;
use pmtp_proto::{ReasonCode, Receipt, Serial, Signed};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Response header of a refused payment: `CODE LABEL` (a PMTP reason code). It is not
/// authenticated: it only makes the wallet resolve the coins at their bank, which is the
/// judge of whether they were spent.
pub const PAYMENT_REFUSED: &str = "PAYMENT-REFUSED";

impl From<FetchError> for WalletError {
    fn from(e: FetchError) -> Self {
        let code = match e {
            FetchError::Url(_) => ReasonCode::MALFORMED,
            FetchError::TooLarge { .. } => ReasonCode::FRAME_TOO_LARGE,
            FetchError::Network { .. } | FetchError::Client(_) => ReasonCode::NO_ANSWER,
        };
        WalletError::new(code, e.to_string())
    }
}

fn offer_error(e: HttpError) -> WalletError {
    let code = match e {
        HttpError::BadSignature => ReasonCode::BAD_SIGNATURE,
        HttpError::WrongOrigin { .. } => ReasonCode::NONCE_WRONG_ADDRESS,
        HttpError::Expired => ReasonCode::NONCE_OUTSIDE_WINDOW,
        _ => ReasonCode::MALFORMED,
    };
    WalletError::new(code, format!("the shop's offer is refused: {e}"))
}

/// The wallet's HTTP client, made on first use.
fn fetcher(w: &Wallet) -> Result<&Fetcher, WalletError> {
    if let Some(f) = w.fetcher.get() {
        return Ok(f);
    }
    let made = Fetcher::new(&w.config.http)?;
    // Two first uses at once: one of the two clients is kept, either will do.
    let _ = w.fetcher.set(made);
    w.fetcher.get().ok_or_else(|| WalletError::new(ReasonCode::INTERNAL, "HTTP client missing"))
}

/// `payme-wallet pay URL [-o FILE]`: fetches `url`, paying its offer if it asks for one.
/// The body goes to `output` (an absolute path, written by the daemon) or back in the
/// answer, base64.
pub async fn pay_url(w: &Arc<Wallet>, url: &str, output: Option<PathBuf>) -> Result<Value, WalletError> {
    pay_url_approved(w, url, output, None).await
}

/// [`pay_url`], paying `approved` (a `PAYMENT-REQUIRED` value: the offer of the shop's
/// page that the person approved in the wallet window, [`crate::ui::pay`]) instead of
/// asking the shop for an offer, and without a question on the pending list. The offer is
/// checked as any other (signature, the URL's origin, expiry, the pinned key).
pub async fn pay_url_approved(
    w: &Arc<Wallet>,
    url: &str,
    output: Option<PathBuf>,
    approved: Option<&str>,
) -> Result<Value, WalletError> {
    let origin = Origin::of_url(url).map_err(|e| WalletError::new(ReasonCode::MALFORMED, e.to_string()))?;
    if let Some(p) = &output {
        if !p.is_absolute() {
            return Err(WalletError::new(ReasonCode::MALFORMED, "the output file must be an absolute path"));
        }
    }
    // Paid already for this URL (order unexpired): the receipt re-opens it, and a payment
    // still unanswered is sent again, rather than paying a new order.
    if let Some(v) = again(w, url, output.as_deref()).await? {
        return Ok(v);
    }
    let header = match approved {
        Some(offer) => offer.to_owned(),
        None => match ask_for_offer(w, url, output.as_deref()).await? {
            Ok(header) => header,
            Err(free) => return Ok(free),
        },
    };
    let offer: SignedOffer = http::decode(&header).map_err(offer_error)?;
    let keys = http::check_offer(&offer, &origin, w.now()).map_err(offer_error)?;
    let amount = checked_amount(offer.body.amount.minor_units())?;
    let order = http::order_label(&offer.body.order);

    let mut known = buyer::known_as(w, origin.as_str(), &keys).await?;
    // Over https the shop was authenticated by TLS for this origin: its key is pinned at
    // once, and the offer is treated as coming from a known shop.
    if !known && origin.as_str().starts_with("https://") {
        buyer::pin_as(w, origin.as_str(), &keys).await?;
        known = true;
    }
    let policy = &w.config.policy;
    if !known && policy.unknown_merchants == crate::config::UnknownMerchants::Refuse {
        return Err(WalletError::new(ReasonCode::UNKNOWN_MERCHANT, "this wallet pays only merchants it already knows"));
    }
    buyer::funds_for(w, amount, &offer.body.accepted_banks).await?;
    let auto = known && policy.auto_approve_limit > 0 && amount.minor_units() <= policy.auto_approve_limit;
    // The person approved this very offer in the wallet window.
    let given = approved.is_some();
    if !auto && !given {
        let question = buyer::Question {
            merchant: keys.name.escaped(),
            fingerprint: keys.fingerprint.to_string(),
            new_merchant: !known,
            description: offer.body.description.escaped(),
            amount,
            // The person asked for this themselves, from this machine.
            peer: std::net::IpAddr::from([127, 0, 0, 1]),
            origin: Some(origin.to_string()),
            order: order.clone(),
        };
        buyer::wait_for_consent(w, question).await?;
    }
    if !known {
        buyer::pin_as(w, origin.as_str(), &keys).await?;
    }

    let record = store::NewPayment {
        direction: Direction::Out,
        peer: origin.to_string(),
        merchant: keys.name.as_str().to_owned(),
        merchant_fp: keys.fingerprint.to_string(),
        amount,
        description: offer.body.description.as_str().to_owned(),
        request: offer.body.order.to_vec(),
        http: Some(store::HttpTerms { url: url.to_owned(), offer: header }),
    };
    let (payment, coins, claim) = buyer::reserve_for(w, &offer.body.accepted_banks, record).await?;
    // Sealed and stored before it leaves: a crash from here on finds it and sends it
    // again (or, unsealed, takes the coins back by exchange).
    let sealed = Payment { offer: offer.clone(), coins, time: w.now() };
    let stored = match http::seal_payment(&mut w.rng(), &keys, &sealed).and_then(|b| http::encode(&b)) {
        Ok(value) => {
            let v = value.clone();
            w.db.call(move |c, _| {
                let tx = c.transaction()?;
                store::store_sealed(&tx, payment, &v)?;
                tx.commit()?;
                Ok(())
            })
            .await
            .map(|()| value)
            .map_err(WalletError::from)
        }
        Err(e) => Err(WalletError::new(ReasonCode::INTERNAL, format!("sealing the payment: {e}"))),
    };
    let sealed = match stored {
        Ok(s) => s,
        Err(e) => {
            // Never sent: the coins come back by exchange.
            let _ = ops::resolve_payment(w, payment).await;
            drop(claim);
            return Err(e);
        }
    };
    tracing::info!(payment, origin = %origin, order = %order, amount = %amount, "paying in band");
    let terms = Terms { url: url.to_owned(), offer: offer.clone(), keys, sealed };
    let summary = json!({"url": escaped(url), "origin": origin.to_string(), "order": order,
                         "order_id": hex::encode(offer.body.order), "merchant": offer.body.merchant.name.escaped(),
                         "amount": amount.minor_units(), "payment": payment});
    match send(w, payment, &terms).await {
        Outcome::Paid(answer) => {
            let mut v = summary;
            v["status"] = json!(200);
            v["paid"] = json!(true);
            deliver(&mut v, answer.body, output.as_deref())?;
            drop(claim);
            Ok(v)
        }
        Outcome::Refused(code, reason) => {
            tracing::info!(payment, %reason, "the shop refused the payment; resolving its coins by exchange");
            buyer::set_state(w, payment, PaymentState::RefusedUnresolved, &reason).await;
            let back = ops::resolve_payment(w, payment).await;
            drop(claim);
            let back = match back {
                Ok(a) => format!("{a} came back by exchange"),
                Err(e) => format!("its coins are not resolved yet ({}); the wallet retries", e.text),
            };
            Err(WalletError::new(code, format!("the shop refused the payment: {reason}; {back}")))
        }
        Outcome::Unknown(reason) => {
            tracing::warn!(payment, %reason, "no receipt; the payment will be sent again by maintenance");
            drop(claim);
            Err(WalletError::new(
                ReasonCode::NO_ANSWER,
                format!(
                    "{reason}; payment #{payment} is unresolved: the wallet sends it again (the shop answers the \
                     same receipt) and otherwise takes its coins back by exchange (see payme-wallet history)"
                ),
            ))
        }
    }
}

/// GETs `url` for its offer: `Ok(Ok(offer))` for a 402 with one, `Ok(Err(answer))` for a
/// free resource (delivered already).
async fn ask_for_offer(
    w: &Arc<Wallet>,
    url: &str,
    output: Option<&Path>,
) -> Result<Result<String, Value>, WalletError> {
    let first = fetcher(w)?.get(url, &[]).await?;
    match (first.status, first.header(http::PAYMENT_REQUIRED)) {
        (200, _) => {
            let mut v = json!({"url": escaped(url), "status": 200, "paid": false});
            deliver(&mut v, first.body, output)?;
            Ok(Err(v))
        }
        (402, Some(offer)) => Ok(Ok(offer.to_owned())),
        (402, None) => Err(WalletError::new(
            ReasonCode::UNEXPECTED_MESSAGE,
            format!("{} answered 402 without a payme offer ({} header)", escaped(url), http::PAYMENT_REQUIRED),
        )),
        (status, _) => Err(WalletError::new(
            ReasonCode::UNEXPECTED_MESSAGE,
            format!("{} answered HTTP {status}{}", escaped(url), redirect_note(&first)),
        )),
    }
}

/// What an earlier payment for `url` gets, if there is one whose order has not expired: a
/// done payment presents its receipt (`PAYMENT-RECEIPT`); one still `sending` (sealed, and
/// no other task on it) is sent again. `None`: no such payment, or the shop did not answer
/// 200 (a new purchase follows).
async fn again(w: &Arc<Wallet>, url: &str, output: Option<&Path>) -> Result<Option<Value>, WalletError> {
    let u = url.to_owned();
    let Some(earlier) = w.db.call(move |c, _| store::latest_for_url(c, &u)).await? else {
        return Ok(None);
    };
    let store::UrlPayment { id: payment, state, offer, receipt } = earlier;
    let Ok(offer) = http::decode::<SignedOffer>(&offer) else { return Ok(None) };
    if offer.body.expires <= w.now() {
        return Ok(None);
    }
    let mut v = json!({"url": escaped(url), "origin": offer.body.origin.to_string(),
                       "order": http::order_label(&offer.body.order), "order_id": hex::encode(offer.body.order),
                       "merchant": offer.body.merchant.name.escaped(), "amount": offer.body.amount.minor_units(),
                       "payment": payment, "status": 200});
    match (state, receipt) {
        (PaymentState::Done, Some(blob)) => {
            let Ok(receipt) = bincode::deserialize::<Signed<Receipt>>(&blob) else { return Ok(None) };
            let header = http::encode(&receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
            let answer = fetcher(w)?.get(url, &[(http::PAYMENT_RECEIPT, header.as_str())]).await?;
            if answer.status != 200 {
                return Ok(None);
            }
            tracing::info!(payment, "paid earlier: the receipt re-opened the resource");
            v["paid"] = json!(false);
            v["reopened"] = json!(true);
            deliver(&mut v, answer.body, output)?;
            Ok(Some(v))
        }
        (PaymentState::Sending, _) => {
            let record = w.db.call(move |c, _| store::http_payment(c, payment)).await?;
            let Some(sealed) = record.and_then(|r| r.sealed) else { return Ok(None) };
            // Maintenance (or another `pay`) is sending it right now: it settles there.
            let Some(claim) = w.in_flight.claim(payment) else {
                return Err(WalletError::new(
                    ReasonCode::BUSY,
                    format!("payment #{payment} for this URL is being sent again right now; try again shortly"),
                ));
            };
            let keys =
                offer.body.merchant.parse().map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
            let terms = Terms { url: url.to_owned(), offer, keys, sealed };
            let outcome = send(w, payment, &terms).await;
            drop(claim);
            match outcome {
                Outcome::Paid(answer) => {
                    v["paid"] = json!(true);
                    deliver(&mut v, answer.body, output)?;
                    Ok(Some(v))
                }
                // Maintenance resolves it (a refusal is seen there again).
                Outcome::Refused(code, reason) => Err(WalletError::new(
                    code,
                    format!("payment #{payment} for this URL, sent again, is refused: {reason}; its coins will be taken back by exchange"),
                )),
                Outcome::Unknown(reason) => Err(WalletError::new(
                    ReasonCode::NO_ANSWER,
                    format!("payment #{payment} for this URL is still unanswered ({reason}); the wallet keeps sending it"),
                )),
            }
        }
        _ => Ok(None),
    }
}

/// Why a 3xx answer was not followed.
fn redirect_note(a: &Answer) -> String {
    match (a.status, a.header("location")) {
        (300..=399, Some(l)) => format!(" (a redirect to {} is not followed: another origin)", escaped(l)),
        _ => String::new(),
    }
}

fn escaped(s: &str) -> String {
    pmtp_proto::text::escape_control(s)
}

/// Puts the body in `output` (written whole, then renamed into place) or in `v`, base64.
fn deliver(v: &mut Value, body: Vec<u8>, output: Option<&Path>) -> Result<(), WalletError> {
    v["bytes"] = json!(body.len());
    match output {
        Some(path) => {
            let fail = |e: std::io::Error| {
                WalletError::new(
                    ReasonCode::INTERNAL,
                    format!("cannot write {}: {e}", escaped(&path.display().to_string())),
                )
            };
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".payme-partial");
            std::fs::write(&tmp, &body).map_err(fail)?;
            std::fs::rename(&tmp, path).map_err(fail)?;
            v["output"] = json!(path.display().to_string());
        }
        None => {
            use base64::Engine;
            v["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
        }
    }
    Ok(())
}

/// A recorded payment in band, ready to send.
struct Terms {
    url: String,
    offer: SignedOffer,
    keys: PeerKeys,
    sealed: String,
}

enum Outcome {
    /// Receipt verified and stored; the answer carries the resource.
    Paid(Answer),
    /// A definitive refusal (the code, and its text, escaped).
    Refused(ReasonCode, String),
    /// No answer, or one that settles nothing.
    Unknown(String),
}

/// Sends the sealed payment of `payment` and reads the answer; a verified receipt is stored
/// (payment done, coins spent) before this returns.
async fn send(w: &Arc<Wallet>, payment: i64, t: &Terms) -> Outcome {
    let fetcher = match fetcher(w) {
        Ok(f) => f,
        Err(e) => return Outcome::Unknown(e.text),
    };
    let answer = match fetcher.get(&t.url, &[(http::PAYMENT_SIGNATURE, t.sealed.as_str())]).await {
        Ok(a) => a,
        Err(e) => return Outcome::Unknown(e.to_string()),
    };
    if answer.status != 200 {
        return match answer.header(PAYMENT_REFUSED).map(parse_refusal) {
            Some((code, text)) if code.is_definitive() => Outcome::Refused(code, text),
            Some((code, text)) => Outcome::Unknown(format!("the shop answered {} ({text}, {code})", answer.status)),
            None => Outcome::Unknown(format!("the shop answered HTTP {}{}", answer.status, redirect_note(&answer))),
        };
    }
    let Some(header) = answer.header(http::PAYMENT_RESPONSE) else {
        return Outcome::Unknown("the shop answered 200 without a receipt".into());
    };
    let receipt: Signed<Receipt> = match http::decode(header) {
        Ok(r) => r,
        Err(e) => return Outcome::Unknown(format!("the shop's receipt does not decode: {e}")),
    };
    match store_receipt(w, payment, t, &receipt).await {
        Ok(()) => {
            tracing::info!(payment, merchant = %t.keys.name.escaped(), amount = %t.offer.body.amount, "paid in band; receipt stored");
            Outcome::Paid(answer)
        }
        Err(e) => Outcome::Unknown(e.text),
    }
}

/// Checks the receipt against the payment (signed by the offer's key, for its order, these
/// coins and the amount) and stores it: the payment done and its coins spent, at once.
async fn store_receipt(w: &Arc<Wallet>, payment: i64, t: &Terms, receipt: &Signed<Receipt>) -> Result<(), WalletError> {
    let bad = |what: &str| WalletError::new(ReasonCode::BAD_SIGNATURE, format!("the shop's receipt {what}"));
    let body = receipt.verify(&t.keys.verifying).map_err(|_| bad("is not signed by the offer's key"))?;
    let serials: Vec<Serial> = w
        .db
        .call(move |c, vault| Ok(store::coins_of_payment(c, vault, payment)?.iter().map(|r| r.coin.serial()).collect()))
        .await?;
    let hash = pmtp_proto::coin::coins_hash(serials.iter());
    if body.request != t.offer.body.order {
        return Err(bad("names another order"));
    }
    if body.coins_hash != hash {
        return Err(bad("names other coins"));
    }
    if body.amount != t.offer.body.amount {
        return Err(bad("names another amount"));
    }
    let blob = bincode::serialize(receipt).map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    w.db.call(move |c, _| {
        let tx = c.transaction()?;
        store::move_coins(&tx, &serials, CoinState::Spent, None, None)?;
        store::mark_payment_done(&tx, payment, &blob)?;
        tx.commit()?;
        Ok(())
    })
    .await?;
    Ok(())
}

/// Reads `CODE LABEL` (the label is only shown).
fn parse_refusal(v: &str) -> (ReasonCode, String) {
    let (code, label) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
    match code.parse::<u16>() {
        Ok(n) => (ReasonCode(n), escaped(label.trim())),
        // Not a reason code: a refusal all the same, of no known kind.
        Err(_) => (ReasonCode::MALFORMED, escaped(v.trim())),
    }
}

/// Maintenance, for an unresolved outgoing payment (claimed by the caller): if it was paid
/// in band, sealed and still `sending`, sends it again (the shop answers a repeat with the
/// same receipt). Returns `true` when nothing more is to be done this round (paid, or left
/// for the next round), `false` when the caller resolves it by exchange (a PMTP payment,
/// one never sealed, refused, or unanswered for `http.resend_rounds` rounds).
pub async fn recover(w: &Arc<Wallet>, payment: i64) -> Result<bool, WalletError> {
    let (record, state) =
        w.db.call(move |c, _| Ok((store::http_payment(c, payment)?, store::payment_state(c, payment)?))).await?;
    let Some(record) = record else { return Ok(false) };
    let Some(sealed) = record.sealed.clone() else { return Ok(false) };
    if state != PaymentState::Sending || record.attempts >= w.config.http.resend_rounds {
        return Ok(false);
    }
    let offer: SignedOffer = http::decode(&record.offer)
        .map_err(|e| WalletError::new(ReasonCode::INTERNAL, format!("stored offer: {e}")))?;
    let keys = offer.body.merchant.parse().map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
    let terms = Terms { url: record.url.clone(), offer, keys, sealed };
    match send(w, payment, &terms).await {
        Outcome::Paid(_) => {
            tracing::info!(payment, "payment in band sent again: receipt stored");
            Ok(true)
        }
        Outcome::Refused(_, reason) => {
            tracing::info!(payment, %reason, "payment in band refused when sent again; resolving by exchange");
            buyer::set_state(w, payment, PaymentState::RefusedUnresolved, &reason).await;
            Ok(false)
        }
        Outcome::Unknown(reason) => {
            let n = w.db.call(move |c, _| store::note_http_attempt(c, payment)).await?;
            tracing::info!(payment, attempt = n, %reason, "payment in band sent again: no answer");
            Ok(n < w.config.http.resend_rounds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_headers_are_read_and_their_text_escaped() {
        assert_eq!(
            parse_refusal("46 unexpected_payment"),
            (ReasonCode::UNEXPECTED_PAYMENT, "unexpected_payment".into())
        );
        assert_eq!(parse_refusal(" 13 busy ").0, ReasonCode::BUSY);
        assert!(!parse_refusal("13 busy").0.is_definitive(), "busy is sent again, not exchanged");
        let (code, text) = parse_refusal("go away\x1b[31m");
        assert_eq!(code, ReasonCode::MALFORMED);
        assert!(!text.contains('\x1b'), "{text}");
    }
}
