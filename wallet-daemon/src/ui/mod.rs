//! The wallet window: a small web UI for the person, on a loopback port of its own
//! (`ui.listen`), opened by `payme-wallet ui` with a one-time login link.
//!
//! Pages: the payment requests waiting for an answer (refreshed every few seconds by a
//! meta refresh, so no script is needed) with Approve and Refuse; the balance; the history
//! with receipts; withdraw, deposit and exchange; pinned merchants (forget); the spending
//! policy; and the pay page a shop's item page links to ("Pay with payme", [`pay`]).
//!
//! Every action goes through the control socket's own handler
//! ([`crate::control::handle`]): the window is one more client of the same logic, with no
//! second copy of it. Who may use the window, and the checks every request passes, are in
//! [`session`]; the pages are [`pages`]. Pages carry no script at all, and the
//! Content-Security-Policy says so (`default-src 'none'`, the stylesheet from this origin).

pub mod pages;
pub mod pay;
pub mod session;

use crate::control::Request as Ctl;
use crate::{Wallet, WalletError};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use session::Session;
use std::collections::HashMap;
use std::sync::Arc;

/// The policy of every page: nothing but this origin's stylesheet and forms posted here.
/// The pay page adds the shop's origin to `form-action` (its form ends in a redirect there).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// Largest form accepted (a form here holds a few short fields).
const MAX_FORM: usize = 16 * 1024;

/// Seconds between refreshes of the requests page.
pub const REFRESH_SECS: u32 = 2;

/// The window's routes over wallet `w`.
pub fn router(w: Arc<Wallet>) -> Router {
    Router::new()
        .route("/", get(requests))
        .route("/style.css", get(style))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/answer", post(answer))
        .route("/history", get(history))
        .route("/money", get(money))
        .route("/withdraw", post(withdraw))
        .route("/deposit", post(deposit))
        .route("/exchange", post(exchange))
        .route("/merchants", get(merchants))
        .route("/forget", post(forget))
        .route("/policy", get(policy))
        .route("/pay", get(pay::review).post(pay::pay))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn_with_state(w.clone(), guard))
        .with_state(w)
}

/// Serves the window on `listener` until `token` is cancelled.
pub async fn serve(w: Arc<Wallet>, listener: tokio::net::TcpListener, token: tokio_util::sync::CancellationToken) {
    let app = router(w);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
        tracing::error!(error = %e, "the wallet window stopped");
    }
}

/// Refuses requests for another host (DNS rebinding) or from another origin, and puts
/// the security headers on every answer.
async fn guard(State(w): State<Arc<Wallet>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let mut answer = if !w.ui.is_own_host(host) {
        tracing::warn!(host = %pmtp_proto::text::escape_control(host), "wallet window: request for another host refused");
        pages::refusal(StatusCode::MISDIRECTED_REQUEST, "This is not the address of your wallet window.")
    } else if headers.get(header::ORIGIN).is_some_and(|o| !o.to_str().map(|o| w.ui.is_own_origin(o)).unwrap_or(false)) {
        tracing::warn!(method = %req.method(), "wallet window: request from another origin refused");
        pages::refusal(StatusCode::FORBIDDEN, "Another web page tried to use your wallet window; it was refused.")
    } else if req.method() != Method::GET && req.method() != Method::HEAD && req.method() != Method::POST {
        pages::refusal(StatusCode::METHOD_NOT_ALLOWED, "Only pages and forms here.")
    } else {
        next.run(req).await
    };
    let h = answer.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        if !h.contains_key(&k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not "no-referrer": with it a browser sends `Origin: null` on the window's own forms.
    // Links to shops get no referrer (the policy, and rel=noreferrer).
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    answer
}

/// The session of a request, if it carries a live one.
fn session_of(w: &Wallet, headers: &HeaderMap) -> Option<Session> {
    w.ui.session(headers.get(header::COOKIE).and_then(|c| c.to_str().ok()))
}

/// The page for a request without a session.
fn login_needed() -> Response {
    pages::refusal(
        StatusCode::UNAUTHORIZED,
        "Open your wallet window from a terminal with payme-wallet ui: it logs this browser in.",
    )
}

/// The session and fields of a form that changes something: refused without a session or
/// without its CSRF token. (The error is the answer to send, made once per request: its
/// size does not matter.)
#[allow(clippy::result_large_err)]
fn checked_form(w: &Wallet, headers: &HeaderMap, body: &Bytes) -> Result<(Session, HashMap<String, String>), Response> {
    let Some(s) = session_of(w, headers) else { return Err(login_needed()) };
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    match form.get("csrf") {
        Some(t) if session::same_secret(t, &s.csrf) => Ok((s, form)),
        _ => {
            tracing::warn!("wallet window: a form without this session's token refused");
            Err(pages::refusal(
                StatusCode::FORBIDDEN,
                "This form is out of date or did not come from your wallet window.",
            ))
        }
    }
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// Runs a control request as the control socket would.
async fn ctl(w: &Arc<Wallet>, req: Ctl) -> Result<Value, WalletError> {
    crate::control::handle(w, req).await
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], pages::STYLE).into_response()
}

async fn not_found() -> Response {
    pages::refusal(StatusCode::NOT_FOUND, "No such page in your wallet window.")
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// The one-time link of `payme-wallet ui`: sets the session cookie, then shows the
/// requests page.
async fn login(State(w): State<Arc<Wallet>>, Query(q): Query<LoginQuery>) -> Response {
    let Some(s) = q.token.as_deref().and_then(|t| w.ui.redeem(t)) else {
        tracing::warn!("wallet window: a login link unknown, used or expired");
        return pages::refusal(
            StatusCode::FORBIDDEN,
            "This login link is used up or has expired. Run payme-wallet ui again for a new one.",
        );
    };
    tracing::info!("wallet window: a browser logged in");
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        w.ui.cookie_name(),
        s.id,
        session::SESSION_TTL.as_secs()
    );
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    match checked_form(&w, &headers, &body) {
        Ok((s, _)) => {
            w.ui.end(&s.id);
            pages::refusal(StatusCode::OK, "Logged out. Run payme-wallet ui to open the window again.")
        }
        Err(r) => r,
    }
}

async fn requests(State(w): State<Arc<Wallet>>, headers: HeaderMap) -> Response {
    let Some(s) = session_of(&w, &headers) else { return login_needed() };
    let pending = ctl(&w, Ctl::Pending).await;
    let balance = ctl(&w, Ctl::Balance).await;
    pages::requests(&w, &s, pending, balance)
}

async fn answer(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    let (s, form) = match checked_form(&w, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(id) = form.get("id").and_then(|i| i.parse::<u64>().ok()) else {
        return pages::refusal(StatusCode::BAD_REQUEST, "Which request? The form named none.");
    };
    let req = match form.get("answer").map(String::as_str) {
        Some("approve") => Ctl::Approve { id },
        Some("refuse") => Ctl::Refuse { id },
        _ => return pages::refusal(StatusCode::BAD_REQUEST, "Approve or refuse?"),
    };
    match ctl(&w, req).await {
        Ok(_) => see_other("/"),
        // Gone meanwhile (answered elsewhere, or timed out): the list says what is left.
        Err(e) => pages::answer_failed(&s, &e),
    }
}

async fn history(State(w): State<Arc<Wallet>>, headers: HeaderMap) -> Response {
    let Some(s) = session_of(&w, &headers) else { return login_needed() };
    pages::history(&w, &s, ctl(&w, Ctl::History).await)
}

async fn money(State(w): State<Arc<Wallet>>, headers: HeaderMap) -> Response {
    let Some(s) = session_of(&w, &headers) else { return login_needed() };
    pages::money_page(&w, &s, ctl(&w, Ctl::Balance).await, None)
}

/// Runs a withdraw, deposit or exchange from its form and shows the money page with the
/// outcome.
async fn money_op(
    w: Arc<Wallet>,
    headers: HeaderMap,
    body: Bytes,
    make: impl FnOnce(&HashMap<String, String>) -> Result<Ctl, String>,
) -> Response {
    let (s, form) = match checked_form(&w, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let outcome = match make(&form) {
        Ok(req) => ctl(&w, req).await.map_err(|e| e.text),
        Err(e) => Err(e),
    };
    pages::money_page(&w, &s, ctl(&w, Ctl::Balance).await, Some(outcome))
}

/// An amount typed in the currency's units ("0.37", "12", "1.5") as minor units.
pub fn parse_units(text: &str, digits: u8) -> Option<u64> {
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = usize::from(digits.min(19));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) || frac.len() > digits {
        return None;
    }
    let scale = 10u64.checked_pow(digits as u32)?;
    let w: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let f: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<digits$}").parse().ok()? };
    w.checked_mul(scale)?.checked_add(f).filter(|v| *v > 0)
}

fn bank_field(form: &HashMap<String, String>) -> Option<String> {
    form.get("bank").map(|b| b.trim().to_owned()).filter(|b| !b.is_empty())
}

fn amount_field(w: &Wallet, form: &HashMap<String, String>) -> Result<u64, String> {
    let digits = w.config.ui.currency_digits;
    form.get("amount").and_then(|a| parse_units(a, digits)).ok_or_else(|| {
        format!("Give an amount in {}, with at most {digits} decimal digits.", w.config.ui.currency.trim())
    })
}

async fn withdraw(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    let w2 = w.clone();
    money_op(w, headers, body, move |f| {
        Ok(Ctl::Withdraw {
            bank: bank_field(f),
            amount: amount_field(&w2, f)?,
            password: f.get("password").cloned().unwrap_or_default(),
        })
    })
    .await
}

async fn deposit(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    let w2 = w.clone();
    money_op(w, headers, body, move |f| {
        let all = f.get("all").is_some_and(|a| a == "yes");
        let amount = if all { None } else { Some(amount_field(&w2, f)?) };
        Ok(Ctl::Deposit { bank: bank_field(f), amount })
    })
    .await
}

async fn exchange(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    money_op(w, headers, body, |f| Ok(Ctl::Exchange { bank: bank_field(f) })).await
}

async fn merchants(State(w): State<Arc<Wallet>>, headers: HeaderMap) -> Response {
    let Some(s) = session_of(&w, &headers) else { return login_needed() };
    pages::merchants(&s, ctl(&w, Ctl::Merchants).await, None)
}

async fn forget(State(w): State<Arc<Wallet>>, headers: HeaderMap, body: Bytes) -> Response {
    let (s, form) = match checked_form(&w, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let name = form.get("name").cloned().unwrap_or_default();
    let outcome = ctl(&w, Ctl::Forget { name }).await.map_err(|e| e.text);
    pages::merchants(&s, ctl(&w, Ctl::Merchants).await, Some(outcome))
}

async fn policy(State(w): State<Arc<Wallet>>, headers: HeaderMap) -> Response {
    let Some(s) = session_of(&w, &headers) else { return login_needed() };
    pages::policy(&w, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_typed_in_units_become_minor_units() {
        assert_eq!(parse_units("0.37", 2), Some(37));
        assert_eq!(parse_units("12", 2), Some(1200));
        assert_eq!(parse_units("1.5", 2), Some(150));
        assert_eq!(parse_units(".5", 2), Some(50));
        assert_eq!(parse_units("37", 0), Some(37));
        for bad in ["", ".", "0", "0.00", "1.234", "-1", "1e3", "1,5", " ", "99999999999999999999"] {
            assert_eq!(parse_units(bad, 2), None, "{bad:?}");
        }
    }
}
