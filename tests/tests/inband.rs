//! Paying over HTTP 402, the buyer's side (`payme-wallet pay URL`), against a fake shop
//! (`payme_tests::fake_shop`) that takes coins at a real test bank: a wallet with no PMTP
//! listener buys; the person refuses; the shop refuses (coins back by exchange); the shop
//! dies after taking the coins (sent again by recovery, or resolved by exchange when it
//! never answers); a changed key for a pinned origin; an offer for another origin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::fake_shop::{FakeShop, Mode};
use payme_tests::wallet_harness::TestWallet;
use pmtp_proto::testing::named_identity;
use serde_json::Value;
use std::time::Duration;

const PRICE: u64 = 37;
/// Bytes no text conversion survives.
const BODY: &[u8] = b"%PDF-1.7\n\x00\x01\xfe\xff\r\n binary paper \x1b[31m";

/// A buyer's wallet with no PMTP listener, 100 in coins, maintenance every second and
/// `rounds` sendings again of an unanswered payment.
fn buyer(bank: &TestBank, rounds: u32) -> TestWallet {
    let w = TestWallet::start("alice", "127.0.0.2", bank, Some(1000), |c| {
        let c = c.replace("pmtp_listener = true", "pmtp_listener = false");
        let c = c.replace("maintenance_interval_secs = 30", "maintenance_interval_secs = 1");
        c.replace("resend_rounds = 10", &format!("resend_rounds = {rounds}"))
    });
    w.ok(&["withdraw", "100"]);
    assert_eq!(w.available(), 100);
    w
}

fn shop(bank: &TestBank) -> FakeShop {
    FakeShop::start(bank, named_identity(2, "bobs-books"), PRICE, BODY)
}

/// A bank, a buyer ([`buyer`]), a shop in `mode`, and where the body is to go.
struct Scene {
    _bank: TestBank,
    w: TestWallet,
    shop: FakeShop,
    file: std::path::PathBuf,
}

fn scene(rounds: u32, mode: Mode) -> Scene {
    let bank = TestBank::start();
    let w = buyer(&bank, rounds);
    let shop = shop(&bank);
    shop.set_mode(mode);
    let file = w.dir.path().join("paper.pdf");
    Scene { _bank: bank, w, shop, file }
}

impl Scene {
    /// `pay` for /paper, approved or refused when it shows in `pending`.
    fn pay(&self, approve: bool) -> (bool, Value, Value) {
        pay_answering(&self.w, &self.shop.url("/paper"), &self.file, approve)
    }
}

/// Runs `pay URL -o FILE` while `answer` deals with the pending list; returns (success,
/// output of pay, the pending entry seen).
fn pay_answering(w: &TestWallet, url: &str, file: &std::path::Path, approve: bool) -> (bool, Value, Value) {
    std::thread::scope(|s| {
        let pay = s.spawn(|| w.run(&["pay", url, "-o", file.to_str().unwrap()]));
        let pending = w.wait_pending();
        let id = pending["id"].to_string();
        w.ok(&[if approve { "approve" } else { "refuse" }, &id]);
        let (ok, v) = pay.join().unwrap();
        (ok, v, pending)
    })
}

fn history(w: &TestWallet) -> Vec<Value> {
    w.ok(&["history"]).as_array().unwrap().clone()
}

#[test]
fn a_wallet_with_no_pmtp_listener_buys_over_http_and_keeps_a_valid_receipt() {
    let sc = scene(3, Mode::Normal);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    assert!(w.addr.ends_with("control.sock"), "no PMTP listener: {}", w.addr);

    // Free: no payment, nothing asked.
    let free = w.ok(&["pay", &shop.url("/free"), "-o", file.to_str().unwrap()]);
    assert_eq!(free["paid"], false);
    assert_eq!(std::fs::read(file).unwrap(), b"free for all");

    let (ok, v, pending) = sc.pay(true);
    assert!(ok, "{v}");
    let origin = format!("http://{}", shop.addr);
    assert_eq!(pending["origin"], origin.as_str(), "{pending}");
    assert_eq!(pending["merchant"], "bobs-books");
    assert_eq!(pending["amount"], PRICE);
    assert_eq!(pending["new_merchant"], true, "over http a new origin is a new merchant");
    assert_eq!(pending["order"], v["order"]);
    assert_eq!(v["paid"], true);
    assert_eq!(std::fs::read(file).unwrap(), BODY, "the body, byte for byte");
    assert_eq!(w.available(), 100 - PRICE, "exactly the price");
    assert_eq!(w.holding(), 100 - PRICE, "nothing left pending");
    let h = history(w);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["state"], "done");
    assert_eq!(h[0]["receipt_valid"], true);
    assert_eq!(h[0]["peer"], origin.as_str());
    assert_eq!(h[0]["order"], v["order"]);
    assert_eq!(h[0]["url"], shop.url("/paper").as_str());
    assert_eq!(shop.orders_paid(), 1);
    // The same URL again: the receipt re-opens it, nothing asked or paid; to stdout, byte
    // for byte.
    let out = w.run_raw(&["pay", &shop.url("/paper")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, BODY);
    assert_eq!(shop.reopened(), 1);
    assert_eq!(w.available(), 100 - PRICE);
    // Another resource of the shop is another purchase, asked again (the policy pays
    // nothing without asking by default).
    let out = std::thread::scope(|s| {
        let pay = s.spawn(|| w.run_raw(&["pay", &shop.url("/other")]));
        let pending = w.wait_pending();
        assert_eq!(pending["new_merchant"], false, "the origin is pinned now");
        w.ok(&["approve", &pending["id"].to_string()]);
        pay.join().unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, BODY);
    assert!(String::from_utf8_lossy(&out.stderr).contains("paid 37 to bobs-books"), "{out:?}");
    assert_eq!(w.available(), 100 - 2 * PRICE);
    assert_eq!(shop.orders_paid(), 2);
    // The origin's key is pinned.
    let pins = w.ok(&["merchants"]);
    assert!(pins.as_array().unwrap().iter().any(|m| m["name"] == origin.as_str()), "{pins}");
}

#[test]
fn an_offer_the_person_refuses_pays_nothing() {
    let sc = scene(3, Mode::Normal);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    let (ok, v, _) = sc.pay(false);
    assert!(!ok);
    assert_eq!(v["label"], "refused_by_user", "{v}");
    assert!(!file.exists());
    assert_eq!(w.available(), 100);
    assert!(history(w).is_empty());
    assert_eq!(shop.payments_seen(), 0);
}

#[test]
fn a_payment_the_shop_refuses_comes_back_by_exchange() {
    let sc = scene(3, Mode::Refuse);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    let (ok, v, _) = sc.pay(true);
    assert!(!ok);
    assert_eq!(v["label"], "unexpected_payment", "{v}");
    assert_eq!(shop.payments_seen(), 1, "the payment reached the shop");
    assert!(!file.exists());
    assert_eq!(w.available(), 100, "the coins came back");
    let h = history(w);
    assert_eq!(h[0]["state"], "returned", "{h:?}");
}

#[test]
fn a_shop_that_dies_after_taking_the_coins_answers_the_payment_sent_again() {
    let sc = scene(30, Mode::TakeAndHangUp);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    let (ok, v, _) = sc.pay(true);
    assert!(!ok);
    assert_eq!(v["label"], "no_answer", "{v}");
    assert_eq!(history(w)[0]["state"], "sending");
    // The shop comes back: recovery sends the same sealed payment and gets the receipt.
    shop.set_mode(Mode::Normal);
    let h = w.wait_done(1);
    assert_eq!(h[0]["receipt_valid"], true, "{h:?}");
    assert!(shop.payments_seen() >= 2, "sent again");
    assert_eq!(shop.orders_paid(), 1, "paid once");
    assert_eq!(w.available(), 100 - PRICE);
    assert_eq!(w.holding(), 100 - PRICE);
    // The body the lost answer carried: `pay` again presents the receipt, and pays nothing.
    let v = w.ok(&["pay", &shop.url("/paper"), "-o", file.to_str().unwrap()]);
    assert_eq!(v["reopened"], true, "{v}");
    assert_eq!(std::fs::read(file).unwrap(), BODY);
    assert_eq!(w.available(), 100 - PRICE);
}

#[test]
fn paying_again_for_an_unanswered_url_sends_the_same_payment_not_a_new_one() {
    // Recovery waits long: the person's second `pay` is what sends it again.
    let sc = scene(30, Mode::TakeAndHangUp);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    let (ok, v, _) = sc.pay(true);
    assert!(!ok, "{v}");
    shop.set_mode(Mode::Normal);
    let (ok, v) = w.run(&["pay", &shop.url("/paper"), "-o", file.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert_eq!(v["paid"], true);
    assert_eq!(std::fs::read(file).unwrap(), BODY);
    assert_eq!(shop.orders_paid(), 1, "one order, paid once");
    assert_eq!(w.available(), 100 - PRICE);
    assert_eq!(w.holding(), 100 - PRICE);
}

#[test]
fn a_shop_that_never_answers_is_resolved_by_exchange_as_spent_unconfirmed() {
    let sc = scene(2, Mode::TakeAndHangUp);
    let (w, shop) = (&sc.w, &sc.shop);
    let (ok, v, _) = sc.pay(true);
    assert!(!ok, "{v}");
    let mut state = Value::Null;
    for _ in 0..300 {
        state = history(w)[0]["state"].clone();
        if state != "sending" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state, "spent_unconfirmed", "the shop's bank took the coins");
    assert!(shop.payments_seen() >= 3, "sent, then sent again twice");
    assert_eq!(w.holding(), 100 - PRICE);
}

#[test]
fn a_changed_key_for_a_pinned_origin_is_refused() {
    let sc = scene(3, Mode::Normal);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    let (ok, v, _) = sc.pay(true);
    assert!(ok, "{v}");
    // Another key under the same name, at the same origin.
    shop.set_merchant(named_identity(3, "bobs-books"));
    let (ok, v) = w.run(&["pay", &shop.url("/other"), "-o", file.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(v["label"], "merchant_key_changed", "{v}");
    assert_eq!(w.available(), 100 - PRICE, "nothing more paid");
    assert_eq!(shop.payments_seen(), 1);
}

#[test]
fn an_offer_for_another_origin_is_refused_before_paying() {
    let sc = scene(3, Mode::Normal);
    let (w, shop, file) = (&sc.w, &sc.shop, &sc.file);
    shop.set_offer_origin("http://127.0.0.9:8080");
    let (ok, v) = w.run(&["pay", &shop.url("/paper"), "-o", file.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(v["label"], "nonce_wrong_address", "{v}");
    assert!(v["error"].as_str().unwrap().contains("127.0.0.9"), "{v}");
    assert!(w.ok(&["pending"]).as_array().unwrap().is_empty());
    assert_eq!(w.available(), 100);
    assert_eq!(shop.payments_seen(), 0);
}
