//! The pay page: a purchase from the browser, in band (HTTP 402).
//!
//! A shop's item page links here ("Pay with payme") with the item's address and the
//! shop's signed offer. The page checks the offer (signed by the key it names, for the
//! origin of the address, not expired), says whether that key is the one pinned for the
//! shop's origin, new, or changed, and shows the shop, origin, order, amount and key
//! fingerprint with Approve and Cancel. Approving (a form with the session's CSRF token)
//! pays exactly as `payme-wallet pay URL` does ([`crate::inband`]), without a second
//! question for the same terms, and sends the browser back to the item with its receipt
//! (`?receipt=`), which the shop answers with the item.
//!
//! The browser arrives from the shop's page, another site: a SameSite=Strict cookie is not
//! sent with that navigation. The page then reloads itself once (a meta refresh, a
//! navigation this origin starts, which carries the cookie); a browser still without a
//! session is told to log in with `payme-wallet ui`.

use super::{checked_form, pages, session_of};
use crate::store;
use crate::Wallet;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, DOCTYPE};
use pmtp_proto::http::{self, Origin, SignedOffer};
use pmtp_proto::keys::PeerKeys;
use std::sync::Arc;

#[derive(serde::Deserialize)]
pub struct PayQuery {
    url: Option<String>,
    offer: Option<String>,
    again: Option<String>,
}

/// An offer checked against the address it is for.
struct Checked {
    url: String,
    origin: Origin,
    offer: SignedOffer,
    keys: PeerKeys,
}

fn check(w: &Wallet, url: &str, offer: &str) -> Result<Checked, String> {
    let origin = Origin::of_url(url).map_err(|e| format!("The shop's address is not one the wallet can pay: {e}."))?;
    if offer.len() > http::MAX_HEADER {
        return Err("The shop's offer is too long.".into());
    }
    let offer: SignedOffer =
        http::decode(offer).map_err(|e| format!("The shop's offer cannot be read ({e}). Nothing was paid."))?;
    let keys = http::check_offer(&offer, &origin, w.now())
        .map_err(|e| format!("The shop's offer is refused: {e}. Nothing was paid."))?;
    Ok(Checked { url: url.to_owned(), origin, offer, keys })
}

/// The pay page's policy: the usual one, and the shop's origin as a place the form may
/// end (the answer to Approve is a redirect back to the item).
fn with_policy(mut r: Response, origin: &Origin) -> Response {
    let csp = super::CSP.replace("form-action 'self'", &format!("form-action 'self' {}", origin.as_str()));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// The page for a browser that came without its session: reload once, then ask to log in.
fn reload_with_session(q: &PayQuery) -> Response {
    if q.again.is_some() {
        return pages::refusal(
            StatusCode::UNAUTHORIZED,
            "Your wallet window is not open in this browser. Run payme-wallet ui, then follow the shop's Pay with payme link again.",
        );
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("url", q.url.as_deref().unwrap_or(""))
        .append_pair("offer", q.offer.as_deref().unwrap_or(""))
        .append_pair("again", "1")
        .finish();
    let target = format!("/pay?{query}");
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(format!("0; url={target}"));
                title { "Opening your wallet" }
                link rel="stylesheet" href="/style.css";
            }
            body { main { p { "Opening your wallet… " a href=(target) { "Continue" } } } }
        }
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response()
}

/// GET /pay: the shop's offer, for the person to approve.
pub async fn review(State(w): State<Arc<Wallet>>, headers: HeaderMap, Query(q): Query<PayQuery>) -> Response {
    let Some(s) = session_of(&w, &headers) else { return reload_with_session(&q) };
    let (Some(url), Some(offer)) = (q.url.as_deref(), q.offer.as_deref()) else {
        return pages::refusal(StatusCode::BAD_REQUEST, "The link names no shop and no offer.");
    };
    let c = match check(&w, url, offer) {
        Ok(c) => c,
        Err(e) => return pages::pay_failed(&s, &e, Some(url)),
    };
    let pinned = {
        let key = c.origin.as_str().to_owned();
        w.db.call(move |conn, _| store::pinned_fingerprint(conn, &key)).await
    };
    let standing = match pinned {
        Ok(Some(fp)) if fp == c.keys.fingerprint.to_string() => pages::Standing::Known,
        Ok(Some(_)) => pages::Standing::Changed,
        Ok(None) => pages::Standing::New,
        Err(e) => return pages::pay_failed(&s, &format!("The wallet's database failed: {e}"), Some(url)),
    };
    let terms = pages::Terms {
        url: &c.url,
        offer,
        origin: c.origin.as_str(),
        merchant: &c.keys.name.escaped(),
        fingerprint: &c.keys.fingerprint.to_string(),
        description: &c.offer.body.description.escaped(),
        order: &http::order_label(&c.offer.body.order),
        amount: c.offer.body.amount.minor_units(),
        standing,
    };
    with_policy(pages::pay(&w, &s, &terms), &c.origin)
}

/// POST /pay: the person approved; pay, then back to the item with the receipt.
pub async fn pay(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    let (s, form) = match checked_form(&w, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (Some(url), Some(offer)) = (form.get("url"), form.get("offer")) else {
        return pages::refusal(StatusCode::BAD_REQUEST, "The form names no shop and no offer.");
    };
    let c = match check(&w, url, offer) {
        Ok(c) => c,
        Err(e) => return pages::pay_failed(&s, &e, Some(url)),
    };
    tracing::info!(origin = %c.origin, amount = %c.offer.body.amount, "paying in band, approved in the wallet window");
    let paid = crate::inband::pay_url_approved(&w, &c.url, None, Some(offer)).await;
    let payment = match paid {
        Ok(v) => v["payment"].as_i64(),
        Err(e) => return pages::pay_failed(&s, &e.text, Some(url)),
    };
    // Free (no offer): the item itself is at its address.
    let Some(id) = payment else { return super::see_other(&c.url) };
    match super::ctl(&w, crate::control::Request::Receipt { id }).await {
        Ok(r) => match r["receipt"].as_str() {
            Some(receipt) => super::see_other(&pages::reopen_link(&c.url, receipt)),
            None => pages::pay_failed(&s, "Paid, but the receipt is missing; see the history.", Some(url)),
        },
        Err(e) => pages::pay_failed(&s, &e.text, Some(url)),
    }
}
