//! The merchant wallet's side of paying over HTTP in band, through its control socket as
//! payme-cgi uses it (`offer`, `settle`, `claim`), with a real bank: payments built here
//! with `pmtp_proto::http` from coins withdrawn straight from the bank.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{Holder, TestBank};
use payme_tests::inband::{self, control, exchange, pay, withdraw};
use payme_tests::wallet_harness::TestWallet;
use pmtp_proto::http::{self, Origin};
use pmtp_proto::Signed;
use serde_json::{json, Value};

const ORIGIN: &str = "http://shop.example:8080";
const RESOURCE: &str = "/cgi-bin/payme-cgi/paper";
const URL: &str = "http://shop.example:8080/cgi-bin/payme-cgi/paper";

fn offer(shop: &TestWallet, amount: u64) -> String {
    let v = control(
        shop.dir.path(),
        &json!({"cmd": "offer", "origin": ORIGIN, "resource": RESOURCE, "amount": amount, "description": "The PayMe paper"}),
    );
    assert_eq!(v["ok"], true, "{v}");
    v["result"]["offer"].as_str().unwrap().to_owned()
}

fn settle_at(shop: &TestWallet, payment: &str, origin: &str, resource: &str, price: u64) -> Value {
    control(
        shop.dir.path(),
        &json!({"cmd": "settle", "payment": payment, "origin": origin, "resource": resource, "item": "paper", "price": price}),
    )
}

fn settle(shop: &TestWallet, payment: &str) -> Value {
    settle_at(shop, payment, ORIGIN, RESOURCE, 37)
}

/// The shop's balance at the bank.
fn shop_balance(shop: &TestWallet) -> u64 {
    shop.ok(&["statement"])["balance"].as_u64().unwrap_or_else(|| panic!("{}", shop.ok(&["statement"])))
}

fn start() -> (TestBank, Holder, TestWallet) {
    let bank = TestBank::start();
    let buyer = bank.holder(1, "buyer", 1000);
    let shop = TestWallet::start("bobs-books", "127.0.0.3", &bank, Some(0), |c| c);
    (bank, buyer, shop)
}

/// A payment settles once: the receipt verifies and re-opens the item; the same payment
/// again gets the same receipt and takes nothing more; another payment for the paid order
/// is refused, and its coins are still the buyer's (the bank exchanges them).
#[test]
fn a_payment_settles_once_and_again_gets_the_same_receipt() {
    let (bank, buyer, shop) = start();
    let o = offer(&shop, 37);
    let signed = inband::offer_of(&o);
    assert_eq!(signed.body.origin, Origin::of_url(URL).unwrap());
    assert_eq!(signed.body.resource.as_str(), RESOURCE);
    assert_eq!(signed.body.merchant.name.as_str(), "bobs-books");
    let coins = withdraw(&bank, &buyer, 37);
    let payment = pay(&o, URL, coins.clone());
    let first = settle(&shop, &payment);
    assert_eq!(first["ok"], true, "{first}");
    let r = &first["result"];
    assert_eq!((r["again"].as_bool(), r["amount"].as_u64()), (Some(false), Some(37)), "{first}");
    assert_eq!(r["order"], hex(&signed.body.order));
    let receipt = inband::check_receipt(r["receipt"].as_str().unwrap(), &signed, &coins);
    assert_eq!(shop_balance(&shop), 37, "deposited");

    let again = settle(&shop, &payment);
    assert_eq!(again["result"]["again"], true, "{again}");
    assert_eq!(again["result"]["receipt"], r["receipt"], "the same receipt");
    let same: Signed<pmtp_proto::Receipt> = http::decode(again["result"]["receipt"].as_str().unwrap()).unwrap();
    assert_eq!(same, receipt);
    assert_eq!(shop_balance(&shop), 37, "nothing taken twice");

    let other = withdraw(&bank, &buyer, 37);
    let second = settle(&shop, &pay(&o, URL, other.clone()));
    assert_eq!((second["ok"].as_bool(), second["code"].as_u64()), (Some(false), Some(46)), "{second}");
    assert_eq!(exchange(&bank, other).map(|c| !c.is_empty()), Ok(true), "the refused coins are still in circulation");
    assert_eq!(shop_balance(&shop), 37);

    // The receipt, as PAYMENT-RESPONSE carried it, claims the order; a damaged one does not.
    let c = control(shop.dir.path(), &json!({"cmd": "claim", "receipt": r["receipt"]}));
    assert_eq!((c["result"]["item"].as_str(), c["result"]["expired"].as_bool()), (Some("paper"), Some(false)), "{c}");
    let c = control(shop.dir.path(), &json!({"cmd": "claim", "receipt": "v1.AAAA"}));
    assert_eq!(c["label"], "unexpected_payment", "{c}");
    bank.assert_audit();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Each refusal takes nothing: the coins are exchanged at the bank afterwards.
#[test]
fn expired_tampered_misdirected_and_mispriced_payments_are_refused_before_any_coin_is_taken() {
    let (bank, buyer, shop) = start();
    let brief = TestWallet::start("brief", "127.0.0.4", &bank, Some(0), |c| {
        c.replace("order_lifetime_secs = 604800", "order_lifetime_secs = 0")
    });
    let keys = inband::offer_of(&offer(&shop, 37)).body.merchant.parse().unwrap();
    let refused = |shop: &TestWallet, payment: &str, origin: &str, resource: &str, price: u64, code: u64| {
        let v = settle_at(shop, payment, origin, resource, price);
        assert_eq!((v["ok"].as_bool(), v["code"].as_u64()), (Some(false), Some(code)), "{v}");
    };
    let mut spent = Vec::new();
    // Expired: the brief shop's offers expire as they are made.
    let coins = withdraw(&bank, &buyer, 37);
    let expired = inband::offer_of(&offer(&brief, 37));
    let brief_keys = expired.body.merchant.parse().unwrap();
    refused(&brief, &inband::pay_unchecked(&brief_keys, expired, coins.clone()), ORIGIN, RESOURCE, 37, 12);
    spent.push(coins);
    // Tampered: the price lowered under the shop's signature.
    let coins = withdraw(&bank, &buyer, 5);
    let mut cheaper = inband::offer_of(&offer(&shop, 37));
    cheaper.body.amount = pmtp_proto::Amount::new(5);
    refused(&shop, &inband::pay_unchecked(&keys, cheaper, coins.clone()), ORIGIN, RESOURCE, 5, 6);
    spent.push(coins);
    // Misdirected: paid at another origin, or for another page.
    let coins = withdraw(&bank, &buyer, 37);
    let p = pay(&offer(&shop, 37), URL, coins.clone());
    refused(&shop, &p, "http://evil.example:8080", RESOURCE, 37, 7);
    refused(&shop, &p, ORIGIN, "/cgi-bin/payme-cgi/atlas", 37, 7);
    // Mispriced: an offer at 37 for an item the catalog now sells at 40; coins short.
    refused(&shop, &p, ORIGIN, RESOURCE, 40, 45);
    spent.push(coins);
    let short = withdraw(&bank, &buyer, 30);
    refused(&shop, &pay(&offer(&shop, 37), URL, short.clone()), ORIGIN, RESOURCE, 37, 45);
    spent.push(short);
    // Unreadable, or sealed to another shop.
    refused(&shop, "v1.AAAA", ORIGIN, RESOURCE, 37, 1);
    let coins = withdraw(&bank, &buyer, 37);
    refused(&brief, &pay(&offer(&shop, 37), URL, coins.clone()), ORIGIN, RESOURCE, 37, 5);
    spent.push(coins);
    for coins in spent {
        assert!(exchange(&bank, coins).is_ok(), "refused coins stay in circulation");
    }
    assert_eq!(shop_balance(&shop), 0);
    bank.assert_audit();
}

/// Two different payments for one order at once: exactly one is paid, the other refused
/// before its coins are taken.
#[test]
fn of_two_simultaneous_payments_for_one_order_exactly_one_is_paid() {
    let (bank, buyer, shop) = start();
    for _round in 0..3 {
        let o = offer(&shop, 37);
        let payments: Vec<_> = (0..2)
            .map(|_| {
                let coins = withdraw(&bank, &buyer, 37);
                (pay(&o, URL, coins.clone()), coins)
            })
            .collect();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let jobs: Vec<_> = payments
            .iter()
            .map(|(p, _)| {
                let (p, dir, b) = (p.clone(), shop.dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    control(
                        &dir,
                        &json!({"cmd": "settle", "payment": p, "origin": ORIGIN, "resource": RESOURCE, "item": "paper", "price": 37}),
                    )
                })
            })
            .collect();
        let outs: Vec<Value> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
        let won: Vec<bool> = outs.iter().map(|v| v["ok"] == true).collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{outs:?}");
        for (out, (_, coins)) in outs.iter().zip(payments) {
            if out["ok"] != true {
                assert_eq!(out["code"], 46, "{out}");
                assert!(exchange(&bank, coins).is_ok(), "the loser's coins were not taken");
            }
        }
    }
    assert_eq!(shop_balance(&shop), 3 * 37);
    bank.assert_audit();
}

/// Coins the bank refuses (spent already) are refused with the bank's reason, and the
/// order is free again: the buyer pays it with good coins.
#[test]
fn an_order_whose_coins_the_bank_refuses_can_be_paid_again() {
    let (bank, buyer, shop) = start();
    let o = offer(&shop, 37);
    let spent = withdraw(&bank, &buyer, 37);
    exchange(&bank, spent.clone()).unwrap();
    let v = settle(&shop, &pay(&o, URL, spent));
    assert_eq!((v["ok"].as_bool(), v["code"].as_u64()), (Some(false), Some(30)), "{v}");
    let good = withdraw(&bank, &buyer, 37);
    let v = settle(&shop, &pay(&o, URL, good.clone()));
    assert_eq!(v["ok"], true, "{v}");
    inband::check_receipt(v["result"]["receipt"].as_str().unwrap(), &inband::offer_of(&o), &good);
    assert_eq!(shop_balance(&shop), 37);
    bank.assert_audit();
}
