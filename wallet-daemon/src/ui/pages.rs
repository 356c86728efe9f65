//! The wallet window's pages (maud: every interpolated value is HTML-escaped). The data
//! come as the control socket answers them; names, descriptions and reasons in them may be
//! what a peer wrote, and are only ever interpolated, never written as markup.
//!
//! No page has a script: the requests page refreshes itself with a meta refresh, and every
//! action is a form. Each page is readable on a phone (viewport meta, one column).

use super::session::Session;
use crate::{Wallet, WalletError};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use pmtp_proto::Amount;
use serde_json::Value;

/// The stylesheet (served as /style.css: the policy allows no inline style).
pub const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4;line-height:1.4}
header{background:#20394f;color:#fff;padding:.5em 1em}
header a{color:#fff;margin-right:1em}
header form{display:inline}
main{max-width:46em;margin:0 auto;padding:1em}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
.card.new{border-color:#b35c00}
.amount{font-size:1.6em;font-weight:bold}
.new-shop{color:#b35c00;font-weight:bold}
.fingerprint,.order{font-family:monospace;word-break:break-all}
button{font-size:1em;padding:.5em 1.2em;margin:.3em .5em .3em 0;border-radius:4px;border:1px solid #555;cursor:pointer}
button.approve{background:#1f7a3a;color:#fff}
button.refuse{background:#fff;color:#a11}
.outcome{padding:.6em;border-radius:4px;background:#e7f4ea}
.outcome.error{background:#fbe9e9}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.3em;border-bottom:1px solid #ddd;vertical-align:top}
label{display:block;margin:.4em 0}
input{font-size:1em;padding:.3em}
";

/// The amount `minor` as the person reads it (`ui.currency`, `ui.currency_digits`).
pub fn money(w: &Wallet, minor: u64) -> String {
    Amount::new(minor).in_units(w.config.ui.currency_digits, &w.config.ui.currency)
}

fn html_response(status: StatusCode, page: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response()
}

/// A page of the window: head, navigation (for a logged-in browser), title, body.
fn layout(title: &str, session: Option<&Session>, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(r) = refresh { meta http-equiv="refresh" content=(r); }
                title { (title) " · payme wallet" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    strong { "payme wallet" } " "
                    @if let Some(s) = session {
                        nav {
                            a href="/" { "Requests" }
                            a href="/history" { "History" }
                            a href="/money" { "Money" }
                            a href="/merchants" { "Shops" }
                            a href="/policy" { "Policy" }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page that only says `text` (a refusal, or a notice), with `status`.
pub fn refusal(status: StatusCode, text: &str) -> Response {
    let title = if status.is_success() { "payme wallet" } else { "Not allowed" };
    html_response(status, layout(title, None, None, html! { p { (text) } }))
}

/// A request that could not be answered (answered meanwhile elsewhere, or timed out).
pub fn answer_failed(s: &Session, e: &WalletError) -> Response {
    let body = html! { p.outcome.error { (e.text) } p { a href="/" { "Back to the requests" } } };
    html_response(StatusCode::OK, layout("Request", Some(s), None, body))
}

fn error_block(e: &WalletError) -> Markup {
    html! { p.outcome.error { "The wallet could not answer: " (e.text) } }
}

fn outcome_block(w: &Wallet, o: &Result<Value, String>) -> Markup {
    match o {
        Ok(v) => html! { p.outcome { "Done" @if let Some(a) = v["amount"].as_u64() { ": " (money(w, a)) } "." } },
        Err(e) => html! { p.outcome.error { (e) } },
    }
}

/// The CSRF field every form carries.
fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The requests page: payment requests waiting for an answer, and the balance.
pub fn requests(
    w: &Wallet,
    s: &Session,
    pending: Result<Value, WalletError>,
    balance: Result<Value, WalletError>,
) -> Response {
    let timeout = w.config.policy.consent_timeout_secs;
    let list = pending.as_ref().ok().and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let body = html! {
        @if let Err(e) = &pending { (error_block(e)) }
        @if list.is_empty() && pending.is_ok() {
            p #no-requests { "No payment request is waiting. A shop's request appears here as it arrives." }
        }
        @for r in &list {
            @let new = r["new_merchant"].as_bool() == Some(true);
            section.card.new[new] .request data-id=(r["id"]) {
                p {
                    strong.merchant { (text(r, "merchant")) } " asks for "
                    span.amount { (money(w, r["amount"].as_u64().unwrap_or(0))) }
                }
                p.description { (text(r, "description")) }
                @if new {
                    p.new-shop { "A shop you have never paid: approving remembers its key, and a shop using this name with another key will be refused." }
                }
                table {
                    @match r["origin"].as_str() {
                        Some(o) => tr { th { "Shop" } td.origin { (o) } },
                        None => tr { th { "Asking from" } td.origin { (text(r, "peer")) } },
                    }
                    tr { th { "Order" } td.order { (text(r, "order")) } }
                    tr { th { "Shop's key" } td.fingerprint { (text(r, "fingerprint")) } }
                    tr { th { "Time left" } td { (timeout.saturating_sub(r["waiting_secs"].as_u64().unwrap_or(0))) " s" } }
                }
                p { "Check that the shop's page shows the same order and key." }
                form method="post" action="/answer" {
                    (csrf(s))
                    input type="hidden" name="id" value=(r["id"]);
                    button.approve type="submit" name="answer" value="approve" { "Approve and pay" }
                    button.refuse type="submit" name="answer" value="refuse" { "Refuse" }
                }
            }
        }
        h2 { "Balance" }
        @match &balance {
            Ok(b) => {
                p { "Available: " strong #available { (money(w, b["total_available"].as_u64().unwrap_or(0))) } }
                @if b["recovering"] == true { p { "Unfinished payments of the last run are being resolved; the balance may still move." } }
                @if b["quarantined_coins"].as_u64().unwrap_or(0) > 0 {
                    p.outcome.error { (b["quarantined_coins"]) " coins are damaged in storage: kept, never spent (see the wallet's log)." }
                }
            }
            Err(e) => (error_block(e)),
        }
    };
    html_response(StatusCode::OK, layout("Payment requests", Some(s), Some(super::REFRESH_SECS), body))
}

/// Unix seconds as `YYYY-MM-DD HH:MM` UTC.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// The link that re-opens a paid item: its address with the receipt.
pub fn reopen_link(url: &str, receipt: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}receipt={receipt}")
}

/// Payments made and received, with their receipts.
pub fn history(w: &Wallet, s: &Session, h: Result<Value, WalletError>) -> Response {
    let list = h.as_ref().ok().and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let body = html! {
        @if let Err(e) = &h { (error_block(e)) }
        @if list.is_empty() && h.is_ok() { p { "No payments yet." } }
        @if !list.is_empty() {
            table #history {
                tr { th { "#" } th { "When" } th { "What" } th { "Amount" } th { "State" } th { "Receipt" } }
                @for p in &list {
                    @let out = text(p, "direction") == "out";
                    tr.payment data-id=(p["id"]) {
                        td { (p["id"]) }
                        td { (utc(p["time"].as_u64().unwrap_or(0))) }
                        td {
                            (if out { "Paid to " } else { "Received for " }) strong { (text(p, "merchant")) } br;
                            (text(p, "description")) br;
                            @if let Some(o) = p["order"].as_str() { "order " span.order { (o) } br; }
                            span.origin { (text(p, "peer")) }
                        }
                        td.amount-cell { (money(w, p["amount"].as_u64().unwrap_or(0))) }
                        td { (text(p, "state")) @if !text(p, "reason").is_empty() { br; small { (text(p, "reason")) } } }
                        td {
                            @match p["receipt_valid"].as_bool() {
                                Some(true) => "verified",
                                Some(false) => strong { "INVALID" },
                                None => "none",
                            }
                            @if let (Some(url), Some(r)) = (p["url"].as_str(), p["receipt"].as_str()) {
                                br; a.reopen href=(reopen_link(url, r)) rel="noreferrer" { "Open the item again" }
                            }
                        }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout("History", Some(s), None, body))
}

/// Balance per bank, and the withdraw, deposit and exchange forms.
pub fn money_page(
    w: &Wallet,
    s: &Session,
    balance: Result<Value, WalletError>,
    done: Option<Result<Value, String>>,
) -> Response {
    let banks: Vec<&String> = {
        let mut b: Vec<&String> = w.banks.keys().collect();
        b.sort();
        b
    };
    let unit = w.config.ui.currency.trim().to_owned();
    let bank_select = html! {
        @if banks.len() > 1 {
            label { "Bank " select name="bank" { @for b in &banks { option value=(b) { (b) } } } }
        }
    };
    let body = html! {
        @if let Some(o) = &done { (outcome_block(w, o)) }
        @match &balance {
            Ok(b) => {
                p { "Available: " strong #available { (money(w, b["total_available"].as_u64().unwrap_or(0))) } }
                table {
                    tr { th { "Bank" } th { "Available" } th { "Being paid" } th { "Received" } }
                    @for bank in b["banks"].as_array().into_iter().flatten() {
                        tr {
                            td { (text(bank, "bank")) }
                            td { (money(w, bank["available"].as_u64().unwrap_or(0))) }
                            td { (money(w, bank["pending"].as_u64().unwrap_or(0))) }
                            td { (money(w, bank["received"].as_u64().unwrap_or(0))) }
                        }
                    }
                }
            }
            Err(e) => (error_block(e)),
        }
        section.card {
            h2 { "Withdraw" }
            p { "Coins from your account at the bank." }
            form method="post" action="/withdraw" {
                (csrf(s)) (bank_select)
                label { "Amount (" (unit) ") " input name="amount" inputmode="decimal" required; }
                label { "Account password " input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Withdraw" }
            }
        }
        section.card {
            h2 { "Deposit" }
            p { "Coins back into your account." }
            form method="post" action="/deposit" {
                (csrf(s)) (bank_select)
                label { "Amount (" (unit) ") " input name="amount" inputmode="decimal"; }
                label { input type="checkbox" name="all" value="yes"; " everything" }
                button type="submit" { "Deposit" }
            }
        }
        section.card {
            h2 { "Exchange" }
            p { "All coins of a bank for fresh ones (no account needed)." }
            form method="post" action="/exchange" {
                (csrf(s)) (bank_select)
                button type="submit" { "Exchange" }
            }
        }
    };
    html_response(StatusCode::OK, layout("Money", Some(s), None, body))
}

/// Shops whose keys this wallet remembers.
pub fn merchants(s: &Session, m: Result<Value, WalletError>, done: Option<Result<Value, String>>) -> Response {
    let list = m.as_ref().ok().and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let body = html! {
        @if let Some(o) = &done {
            @match o {
                Ok(v) => p.outcome { "Forgotten: " (v["forgotten"]) "." },
                Err(e) => p.outcome.error { (e) },
            }
        }
        p { "The wallet remembers each shop's key the first time you pay it, and refuses a shop that later shows another key under the same name or address. Forget a shop only if it really changed its key." }
        @if let Err(e) = &m { (error_block(e)) }
        @if list.is_empty() && m.is_ok() { p { "No shop yet." } }
        @for r in &list {
            section.card.merchant {
                p { strong { (text(r, "name")) } }
                p { "Key " span.fingerprint { (text(r, "fingerprint")) } }
                p { "First paid " (utc(r["first_seen"].as_u64().unwrap_or(0))) ", last " (utc(r["last_seen"].as_u64().unwrap_or(0))) " UTC" }
                form method="post" action="/forget" {
                    (csrf(s))
                    input type="hidden" name="name" value=(text(r, "name"));
                    button.refuse type="submit" { "Forget this shop" }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout("Shops", Some(s), None, body))
}

/// The spending policy (set in config.toml).
pub fn policy(w: &Wallet, s: &Session) -> Response {
    let p = &w.config.policy;
    let body = html! {
        table {
            tr { th { "Paid without asking" } td {
                @if p.auto_approve_limit == 0 { "nothing: every payment is asked" }
                @else { "payments to shops you know, up to " (money(w, p.auto_approve_limit)) }
            } }
            tr { th { "Shops never paid before" } td {
                @match p.unknown_merchants {
                    crate::config::UnknownMerchants::Ask => "asked (approving remembers the shop's key)",
                    crate::config::UnknownMerchants::Refuse => "refused",
                }
            } }
            tr { th { "Time to answer a request" } td { (p.consent_timeout_secs) " seconds" } }
        }
        p { "The policy is the [policy] section of config.toml in the wallet's data directory; restart payme-wallet serve after changing it." }
    };
    html_response(StatusCode::OK, layout("Spending policy", Some(s), None, body))
}

/// Whether the wallet knows the shop's key for its origin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Known,
    New,
    Changed,
}

/// A shop's offer as the pay page shows it (texts escaped of control characters already).
pub struct Terms<'a> {
    pub url: &'a str,
    pub offer: &'a str,
    pub origin: &'a str,
    pub merchant: &'a str,
    pub fingerprint: &'a str,
    pub description: &'a str,
    pub order: &'a str,
    pub amount: u64,
    pub standing: Standing,
}

/// The pay page: the shop's offer, with Approve and Cancel.
pub fn pay(w: &Wallet, s: &Session, t: &Terms) -> Response {
    let body = html! {
        section.card.new[t.standing != Standing::Known] #offer {
            p { strong.merchant { (t.merchant) } " asks for " span.amount { (money(w, t.amount)) } }
            p.description { (t.description) }
            @match t.standing {
                Standing::New => p.new-shop { "A shop you have never paid: approving remembers its key for " (t.origin) "." },
                Standing::Changed => p.outcome.error { "This shop's key is not the one your wallet remembers for " (t.origin) ". The wallet will refuse to pay it. If the shop really changed its key, forget it under Shops first." },
                Standing::Known => p { "A shop you have paid before, with the same key." },
            }
            table {
                tr { th { "Shop" } td.origin { (t.origin) } }
                tr { th { "Item" } td { (t.url) } }
                tr { th { "Order" } td.order { (t.order) } }
                tr { th { "Shop's key" } td.fingerprint { (t.fingerprint) } }
            }
            p { "Check that the shop's page shows the same order and key." }
            form method="post" action="/pay" {
                (csrf(s))
                input type="hidden" name="url" value=(t.url);
                input type="hidden" name="offer" value=(t.offer);
                button.approve #approve type="submit" { "Approve and pay" }
                a href=(t.url) rel="noreferrer" #cancel { "Cancel" }
            }
        }
    };
    html_response(StatusCode::OK, layout("Pay a shop", Some(s), None, body))
}

/// A purchase that did not happen, in plain words, with the way back to the shop.
pub fn pay_failed(s: &Session, why: &str, url: Option<&str>) -> Response {
    let back = url.filter(|u| u.starts_with("http://") || u.starts_with("https://"));
    let body = html! {
        p.outcome.error #why { (why) }
        @if let Some(u) = back { p { a href=(u) rel="noreferrer" { "Back to the shop" } } }
        p { a href="/" { "Your wallet" } }
    };
    html_response(StatusCode::OK, layout("Not paid", Some(s), None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06");
    }

    #[test]
    fn reopen_links_append_the_receipt() {
        assert_eq!(reopen_link("http://s/item", "ab"), "http://s/item?receipt=ab");
        assert_eq!(reopen_link("http://s/i?x=1", "ab"), "http://s/i?x=1&receipt=ab");
    }
}
