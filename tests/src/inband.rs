//! Helpers for tests of paying over HTTP in band (docs/PMTP.md, "Paying over HTTP (in
//! band)"), for the shop's side and the buyer's alike: a raw HTTP/1.1 client that sends
//! any headers, coins withdrawn straight from a test bank, a payment built and sealed as a
//! buyer's wallet does, the merchant wallet's control socket, and the bank's word on
//! whether coins are still in circulation (by exchanging them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::bank_harness::{Holder, TestBank, PASSWORD};
use crate::web_harness::HttpResponse;
use pmtp_proto::http::{self, Origin, Payment, SignedOffer};
use pmtp_proto::{rng, Amount, Coin, Receipt, Signed};
use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

/// One HTTP/1.1 GET of `path` at `addr` with extra `headers` (read to the end, at most
/// 90 s). No `Accept: text/html`: the shop takes it for a program, not a browser.
pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    crate::web_harness::parse_response(&raw)
}

/// Sends one JSON request to the control socket of the wallet whose data directory is
/// `dir` (as payme-cgi does); returns the answer.
pub fn control(dir: &Path, req: &Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("control.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Withdraws `amount` in coins from `holder`'s account at `bank`, straight from the bank
/// (no wallet involved).
pub fn withdraw(bank: &TestBank, holder: &Holder, amount: u64) -> Vec<Coin> {
    let w = block_on(bank.client().withdraw(
        &holder.identity,
        holder.account,
        &holder.name,
        PASSWORD,
        rng::bytes(&mut rng::os()),
        Amount::new(amount),
        vec![],
    ))
    .unwrap();
    w.coins
}

/// Whether the bank still has `coins` in circulation: exchanges them (so they are spent
/// afterwards, and their value returns as fresh coins, which are returned).
pub fn exchange(bank: &TestBank, coins: Vec<Coin>) -> Result<Vec<Coin>, String> {
    block_on(bank.client().exchange(rng::bytes(&mut rng::os()), coins, vec![]))
        .map(|r| r.coins)
        .map_err(|e| e.to_string())
}

/// The signed offer in a `PAYMENT-REQUIRED` header value.
pub fn offer_of(header: &str) -> SignedOffer {
    http::decode(header).unwrap()
}

/// A buyer's payment of `offer` (a `PAYMENT-REQUIRED` value, checked against the origin
/// of `url` as a buyer's wallet checks it) with `coins`, sealed to the merchant: the
/// `PAYMENT-SIGNATURE` header value.
pub fn pay(offer: &str, url: &str, coins: Vec<Coin>) -> String {
    let offer = offer_of(offer);
    let keys = http::check_offer(&offer, &Origin::of_url(url).unwrap(), pmtp_client::clock::now()).unwrap();
    pay_unchecked(&keys, offer, coins)
}

/// [`pay`] without checking the offer (for tests that tamper with it): sealed to `keys`.
pub fn pay_unchecked(keys: &pmtp_proto::keys::PeerKeys, offer: SignedOffer, coins: Vec<Coin>) -> String {
    let payment = Payment { offer, coins, time: pmtp_client::clock::now() };
    http::encode(&http::seal_payment(&mut rng::os(), keys, &payment).unwrap()).unwrap()
}

/// The receipt in a `PAYMENT-RESPONSE` header value, checked as a buyer checks it: signed
/// by the merchant who made `offer`, for its order and these coins.
pub fn check_receipt(header: &str, offer: &SignedOffer, coins: &[Coin]) -> Signed<Receipt> {
    let receipt: Signed<Receipt> = http::decode(header).unwrap();
    let keys = offer.body.merchant.parse().unwrap();
    receipt.verify(&keys.verifying).expect("the receipt is signed by the offer's merchant");
    assert_eq!(receipt.body.request, offer.body.order, "the receipt names the order");
    assert_eq!(receipt.body.amount, offer.body.amount);
    assert_eq!(receipt.body.coins_hash, pmtp_proto::coin::coins_hash(coins.iter().map(|c| &c.0.body.serial)));
    receipt
}
