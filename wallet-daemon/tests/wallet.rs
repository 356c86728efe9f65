//! End-to-end: a real payme-bank and real payme-wallet processes on loopback, buyer on
//! 127.0.0.2 and merchant on 127.0.0.3, driven through the wallet's own commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::wallet_harness::TestWallet;
use serde_json::Value;
use std::thread;

/// Starts `collect` in a thread (it blocks until the buyer answers).
fn collect(
    merchant: &TestWallet,
    buyer: &TestWallet,
    amount: u64,
    description: &str,
) -> thread::JoinHandle<(bool, Value)> {
    collect_from(merchant, &buyer.addr, amount, description, &[])
}

/// `collect` from the wallet at `from`, with `extra` arguments (`--order`).
fn collect_from(
    merchant: &TestWallet,
    from: &str,
    amount: u64,
    description: &str,
    extra: &[&str],
) -> thread::JoinHandle<(bool, Value)> {
    let dir = merchant.dir.path().to_path_buf();
    let (from, amount, description) = (from.to_owned(), amount.to_string(), description.to_owned());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    thread::spawn(move || {
        let out = std::process::Command::new(payme_tests::wallet_harness::bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["--json", "collect", "--from", &from, "--amount", &amount, "--description", &description])
            .args(&extra)
            .output()
            .unwrap();
        (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    })
}

/// `collect` that the buyer approves; asserts it was paid.
fn collect_approved(merchant: &TestWallet, buyer: &TestWallet, amount: u64, description: &str) -> Value {
    let job = collect(merchant, buyer, amount, description);
    let p = buyer.wait_pending();
    buyer.ok(&["approve", &p["id"].to_string()]);
    let (ok, out) = job.join().unwrap();
    assert!(ok, "{out}");
    out
}

fn balance_of(bank: &TestBank, name: &str) -> u64 {
    bank.accounts().into_iter().find(|a| a.1 == name).map(|a| a.2).unwrap()
}

#[test]
fn purchase_with_explicit_approval_then_auto_approval() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(1000), |c| {
        c.replace("auto_approve_limit = 0", "auto_approve_limit = 50")
    });
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    let w = buyer.ok(&["withdraw", "300"]);
    assert_eq!(w["account_balance"], 700);
    assert_eq!(buyer.available(), 300);

    // First purchase: a new merchant, so the buyer is asked.
    let job = collect(&merchant, &buyer, 37, "The PayMe paper \u{1b}[31m(PDF)");
    let p = buyer.wait_pending();
    assert_eq!(p["amount"], 37);
    assert_eq!(p["merchant"], "bob's books");
    assert_eq!(p["new_merchant"], true);
    assert_eq!(p["description"], "The PayMe paper \\u{1b}[31m(PDF)", "control characters escaped");
    buyer.ok(&["approve", &p["id"].to_string()]);
    let (ok, out) = job.join().unwrap();
    assert!(ok, "{out}");
    assert_eq!(out["outcome"], "paid");
    assert_eq!(out["amount"], 37);
    // 300 in coins of 256+32+8+4 could not make 37 exactly: the wallet exchanged first.
    assert_eq!(buyer.available(), 263, "coins fell by exactly the amount");
    assert_eq!(balance_of(&bank, "bob's books"), 37, "merchant's bank balance rose by exactly the amount");

    // Second purchase: known merchant under the limit: paid without asking.
    let (ok, out) = collect(&merchant, &buyer, 20, "a second book").join().unwrap();
    assert!(ok, "{out}");
    assert_eq!(buyer.available(), 243);
    assert_eq!(balance_of(&bank, "bob's books"), 57);
    // Above the limit: asked again.
    let job = collect(&merchant, &buyer, 51, "an expensive book");
    let p = buyer.wait_pending();
    assert_eq!(p["new_merchant"], false);
    buyer.ok(&["approve", &p["id"].to_string()]);
    assert!(job.join().unwrap().0);

    // Receipts verify on both sides. The merchant's collect returns once it has sent the
    // receipt; the buyer stores it a moment later: wait for that (bounded, 10 s).
    let mut h = buyer.ok(&["history"]);
    for _ in 0..200 {
        if h.as_array().unwrap().iter().filter(|p| p["state"] == "done").count() == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        h = buyer.ok(&["history"]);
    }
    let done: Vec<_> = h.as_array().unwrap().iter().filter(|p| p["state"] == "done").collect();
    assert_eq!(done.len(), 3, "{h}");
    assert!(done.iter().all(|p| p["receipt_valid"] == true && p["direction"] == "out"), "{h}");
    let h = merchant.ok(&["history"]);
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .all(|p| p["receipt_valid"] == true && p["direction"] == "in" && p["state"] == "done"),
        "{h}"
    );
    let m = buyer.ok(&["merchants"]);
    assert_eq!(m[0]["name"], "bob's books");
    bank.assert_audit();
}

#[test]
fn refused_payments_and_a_changed_merchant_key() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| c);
    let merchant = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "64"]);

    // The person refuses.
    let job = collect(&merchant, &buyer, 10, "something");
    let p = buyer.wait_pending();
    buyer.ok(&["refuse", &p["id"].to_string()]);
    let (ok, out) = job.join().unwrap();
    assert!(!ok);
    assert_eq!(out["outcome"], "refused");
    assert_eq!(out["label"], "refused_by_user");
    assert_eq!(buyer.available(), 64, "nothing paid");

    // Not enough money: refused at once, before the person is asked (nobody approves
    // here: a prompt would hold the collect until the consent window ends, as a timeout).
    let (_, out) = collect(&merchant, &buyer, 65, "too dear").join().unwrap();
    assert_eq!(out["label"], "not_enough_money", "{out}");
    assert_eq!(buyer.ok(&["pending"]).as_array().unwrap().len(), 0);

    // Pay once (pins the merchant's key)...
    let job = collect(&merchant, &buyer, 4, "pin me");
    let p = buyer.wait_pending();
    buyer.ok(&["approve", &p["id"].to_string()]);
    assert!(job.join().unwrap().0);
    // ...then an impostor with the same name and another key is refused outright.
    let impostor = TestWallet::start("shop", "127.0.0.4", &bank, Some(0), |c| c);
    let (ok, out) = collect(&impostor, &buyer, 4, "give me money").join().unwrap();
    assert!(!ok);
    assert_eq!(out["label"], "merchant_key_changed", "{out}");
    assert_eq!(buyer.ok(&["pending"]).as_array().unwrap().len(), 0, "not even asked");
    assert_eq!(buyer.available(), 60);
    // Forgetting the pinned key lets the (now legitimate) new key be approved.
    buyer.ok(&["merchants", "forget", "shop"]);
    let job = collect(&impostor, &buyer, 4, "after forget");
    let p = buyer.wait_pending();
    assert_eq!(p["new_merchant"], true);
    buyer.ok(&["refuse", &p["id"].to_string()]);
    assert!(!job.join().unwrap().0);
    bank.assert_audit();
}

#[test]
fn withdraw_deposit_exchange_statement_and_errors() {
    let mut bank = TestBank::start();
    let mut w = TestWallet::start("carol", "127.0.0.2", &bank, Some(500), |c| c);
    w.ok(&["withdraw", "100"]);
    let x = w.ok(&["exchange"]);
    assert_eq!(x["amount"], 100);
    assert_eq!(w.available(), 100);
    let d = w.ok(&["deposit", "36"]);
    assert_eq!(d["amount"], 36);
    assert_eq!(w.available(), 64);
    let s = w.ok(&["statement"]);
    assert_eq!(s["balance"], 436);
    assert_eq!(s["entries"].as_array().unwrap().len(), 3);
    w.ok(&["deposit", "--all"]);
    assert_eq!(w.available(), 0);
    assert_eq!(balance_of(&bank, "carol"), 500);
    // A wrong password is a clear refusal, and nothing moves.
    let out = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(w.dir.path())
        .args(["withdraw", "10"])
        .env("PAYME_ACCOUNT_PASSWORD", "wrong password")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong_password"));
    // The bank down: a one-line error, and no coin lost.
    bank.stop();
    let (ok, v) = w.run(&["withdraw", "10"]);
    assert!(!ok, "{v}");
    bank.restart();
    // The unfinished withdrawal is retried (same request id) when the wallet restarts:
    // the bank is now at another port, so only the fresh start matters here.
    w.stop();
    // A daemon that is not running: a one-line error saying how to start it.
    let out = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(w.dir.path())
        .arg("balance")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("payme-wallet serve") && err.lines().count() == 1, "{err}");
    bank.assert_audit();
}

/// A merchant built from pmtp-proto: asks the buyer for `amount`, takes the coins, and
/// never sends a receipt (the connection stays open until the returned stream drops).
async fn merchant_that_takes_coins(
    buyer: &str,
    me: &pmtp_proto::Identity,
    amount: u64,
) -> (pmtp_proto::PayCoinsRequest, tokio::net::TcpStream) {
    use pmtp_proto::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(buyer).await.unwrap();
    let local = s.local_addr().unwrap().ip();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ask = Signed::sign(
        AskPayment {
            amount: Amount::new(amount),
            merchant: me.public(),
            description: "crash test".try_into().unwrap(),
            accepted_banks: vec![],
            nonce: Nonce::new(&mut rng::os(), local, now),
        },
        &me.signing,
    )
    .unwrap();
    s.write_all(&Frame::clear(&ask).unwrap().to_bytes().unwrap()).await.unwrap();
    let mut header = [0u8; 10];
    s.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([header[6], header[7], header[8], header[9]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    let frame = Frame { id: MessageId::from_byte(header[5]).unwrap(), body: body.into() };
    (frame.open_sealed::<PayCoinsRequest>(&me.x25519).unwrap(), s)
}

/// kill -9 of the buyer between sending coins and receiving the receipt, then restart:
/// the payment is resolved by exchanging its coins at the bank, and no value is lost.
#[test]
fn buyer_killed_before_the_receipt_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let me = pmtp_proto::testing::named_identity(4, "fly-by-night");
    for merchant_deposits in [false, true] {
        let mut buyer = TestWallet::start("dave", "127.0.0.2", &bank, Some(200), |c| c);
        buyer.ok(&["withdraw", "64"]);
        let shop_account = bank.holder(4, &format!("fly-by-night-{merchant_deposits}"), 0);
        let before = buyer.holding() + balance_of(&bank, "dave") + balance_of(&bank, &shop_account.name);
        assert_eq!(before, 200);

        let addr = buyer.addr.clone();
        let me2 = pmtp_proto::testing::named_identity(4, "fly-by-night");
        let taker = rt.spawn(async move { merchant_that_takes_coins(&addr, &me2, 40).await });
        let p = buyer.wait_pending();
        buyer.ok(&["approve", &p["id"].to_string()]);
        let (pay, _conn) = rt.block_on(taker).unwrap();
        assert_eq!(pay.coins.iter().map(|c| c.value().minor_units()).sum::<u64>(), 40);
        // The buyer is now waiting for a receipt, its coins pending. Crash it.
        buyer.kill9();
        if merchant_deposits {
            let c = bank.client();
            rt.block_on(c.deposit(&me, shop_account.account, &shop_account.name, [9; 16], pay.coins.clone())).unwrap();
        }
        buyer.restart();
        // The start-up recovery (in the background) resolves the payment.
        buyer.wait_recovered();
        let after = buyer.holding() + balance_of(&bank, "dave") + balance_of(&bank, &shop_account.name);
        assert_eq!(after, before, "value lost must be zero");
        let h = buyer.ok(&["history"]);
        let state = h[0]["state"].as_str().unwrap().to_owned();
        if merchant_deposits {
            assert_eq!(state, "spent_unconfirmed", "the bank proved the coins spent: {h}");
            assert_eq!(buyer.available(), 24);
        } else {
            assert_eq!(state, "returned", "{h}");
            assert_eq!(buyer.available(), 64, "the coins came back as fresh ones");
        }
        assert_eq!(buyer.ok(&["balance"])["banks"][0]["pending"], 0, "every pending payment resolved");
        bank.assert_audit();
    }
}

/// A merchant configured to validate by exchange gets fresh coins instead of a deposit.
#[test]
fn merchant_validating_by_exchange_holds_fresh_coins() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| c);
    // No account needed for exchange.
    let merchant = TestWallet::start("street vendor", "127.0.0.3", &bank, None, |c| {
        c.replace("validate = \"deposit\"", "validate = \"exchange\"")
    });
    buyer.ok(&["withdraw", "16"]);
    collect_approved(&merchant, &buyer, 16, "a coffee");
    assert_eq!(merchant.available(), 16, "the merchant holds fresh coins of the same value");
    assert_eq!(buyer.available(), 0);
    let h = merchant.ok(&["history"]);
    assert_eq!(h[0]["state"], "done");
    bank.assert_audit();
}

/// The wallet's unspent coins (available or pending): (serial, value, expiry).
fn wallet_coins(w: &TestWallet) -> Vec<(Vec<u8>, u64, u64)> {
    let c = rusqlite::Connection::open(w.dir.path().join("wallet.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let mut st = c.prepare("SELECT serial, value, expiry FROM coins WHERE state IN ('available', 'pending')").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The value of `coins` that the bank would still accept at `now`: in circulation there
/// (not spent, not purged), and not expired.
fn valid_at_bank(bank: &TestBank, coins: &[(Vec<u8>, u64, u64)], now: u64) -> u64 {
    let c = rusqlite::Connection::open(bank.dir.path().join("bank.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    coins
        .iter()
        .filter_map(|(serial, _, _)| {
            c.query_row("SELECT value, expiry FROM serials WHERE serial = ?1", [serial], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .ok()
        })
        .filter(|&(_, expiry)| expiry >= now)
        .map(|(value, _)| value)
        .sum()
}

/// Coins near their expiry are exchanged for fresh ones automatically, so none lapses.
/// The bank purges every second, so a coin that lapsed would be gone from circulation
/// (and counted expired) well within the test; the check counts only coins the bank
/// still accepts, not the wallet's own figure.
#[test]
fn coins_near_expiry_are_refreshed() {
    // The bank and the wallet run on a clock the test moves: no waiting out a lifetime.
    let clock = payme_tests::bank_harness::TestClock::install();
    let bank = TestBank::start_with("bank-a", |c| {
        assert!(c.contains("coin_lifetime_secs = 31536000") && c.contains("purge_interval_secs = 60"));
        c.replace("coin_lifetime_secs = 31536000", "coin_lifetime_secs = 1000")
            .replace("purge_interval_secs = 60", "purge_interval_secs = 1")
    });
    let w = TestWallet::start("carol", "127.0.0.2", &bank, Some(100), |c| {
        c.replace("refresh_before_secs = 604800", "refresh_before_secs = 100")
            .replace("maintenance_interval_secs = 30", "maintenance_interval_secs = 1")
    });
    w.ok(&["withdraw", "40"]);
    let audit = |b: &TestBank| {
        let out = payme_tests::bank_harness::payme_bank(b.dir.path(), &["audit", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let minted_before = audit(&bank)["minted_coins"].as_u64().unwrap();
    let first = wallet_coins(&w);
    assert_eq!(first.iter().map(|c| c.1).sum::<u64>(), 40);
    let first_expiry = first.iter().map(|c| c.2).max().unwrap();
    // 950 s later the coins are within the wallet's 100 s refresh horizon, still valid.
    clock.advance(950);
    // The wallet's next maintenance round (every second) exchanges them: wait for that
    // (bounded: 20 s) until it holds 40 in coins that expire later and the bank accepts.
    // (A snapshot can straddle a refresh in progress: then the next one is taken.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refreshed = loop {
        let coins = wallet_coins(&w);
        let later = coins.iter().all(|c| c.2 > first_expiry);
        if later && valid_at_bank(&bank, &coins, clock.now()) == 40 {
            break coins;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "coins not refreshed: wallet coins {coins:?}, first expiry {first_expiry}, now {} \
             (the daemons need the test clock: cargo test --workspace --all-features)",
            clock.now()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(refreshed.iter().all(|c| !first.iter().any(|f| f.0 == c.0)), "every first coin was replaced");
    // Past the first coins' expiry: they are gone from the bank, the new ones are valid.
    clock.advance(100);
    assert!(clock.now() > first_expiry);
    assert_eq!(valid_at_bank(&bank, &refreshed, clock.now()), 40);
    let a = audit(&bank);
    assert!(a["minted_coins"].as_u64().unwrap() > minted_before, "coins were exchanged for fresh ones: {a}");
    assert_eq!(a["expired_coins"], 0, "no coin lapsed: {a}");
    assert_eq!(w.holding(), 40);
    assert_eq!(a["holds"], true);
}

/// A bank that accepts connections and never answers must not hold up the wallet's
/// start: the wallet serves first and recovers unfinished operations in the background.
#[test]
fn wallet_serves_while_a_silent_bank_holds_up_recovery() {
    use std::time::Duration;
    let mut bank = TestBank::start();
    let mut w = TestWallet::start("erin", "127.0.0.2", &bank, Some(100), |c| c);
    // A withdrawal that cannot reach the bank stays recorded, unfinished.
    bank.stop();
    let (ok, v) = w.run(&["withdraw", "10"]);
    assert!(!ok, "{v}");
    w.stop();
    // The bank's address now leads to a listener that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.5:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    thread::spawn(move || {
        // Holds every connection open, never reading or writing (bounded: 64 of them).
        let held: Vec<_> = silent.incoming().take(64).collect();
        drop(held);
    });
    w.set_bank_addr(&bank.addr, &silent_addr);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        w.restart();
        let v = w.ok(&["balance"]);
        let _ = tx.send((v, w));
    });
    // The bank client waits 15 s for an answer: recovery before serving would miss this.
    let (v, mut w) = rx
        .recv_timeout(Duration::from_secs(8))
        .expect("the wallet answers balance within 8 s of starting, whatever its bank does");
    assert_eq!(v["recovering"], true, "the recovery is still waiting for the silent bank: {v}");
    assert_eq!(v["total_available"], 0);
    // Shutdown does not wait for the silent bank either (stop asserts a clean exit in 15 s).
    w.stop();
}

/// The bank's record of an account: (balance, failed password attempts). Read straight
/// from its database (the admin commands do not show the lockout).
fn bank_account_row(bank: &TestBank, name: &str) -> (u64, u64) {
    let c = rusqlite::Connection::open(bank.dir.path().join("bank.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c.query_row("SELECT balance, failed_attempts FROM accounts WHERE name = ?1", [name], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
    .unwrap()
}

/// Operations recorded in a wallet's database: (kind, state, has a stored secret).
fn wallet_ops(w: &TestWallet) -> Vec<(String, String, bool)> {
    let c = rusqlite::Connection::open(w.dir.path().join("wallet.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let mut st = c.prepare("SELECT kind, state, secret IS NOT NULL FROM ops ORDER BY id").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

/// Runs `payme-wallet withdraw AMOUNT` with `password`; returns (success, stderr).
fn withdraw_with(w: &TestWallet, amount: &str, password: &str) -> (bool, String) {
    let out = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(w.dir.path())
        .args(["withdraw", amount])
        .env("PAYME_ACCOUNT_PASSWORD", password)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A withdrawal refused for its password, for the account's lock, or because the bank
/// cannot read it (a wrong bank key) ends at once as failed, and its request is never
/// sent again: not by the maintenance rounds, not after a restart. The bank counts one
/// wrong password, and no money moves.
#[test]
fn failed_withdrawals_end_at_once_and_are_never_retried() {
    let mut bank = TestBank::start();
    let mut w = TestWallet::start("frank", "127.0.0.2", &bank, Some(100), |c| {
        c.replace("maintenance_interval_secs = 30", "maintenance_interval_secs = 1")
    });
    // A wrong password: one failure at the bank.
    let (ok, err) = withdraw_with(&w, "10", "wrong password");
    assert!(!ok && err.contains("wrong_password"), "{err}");
    assert_eq!(bank_account_row(&bank, "frank"), (100, 1));

    // The account locked (as after repeated wrong passwords): the right password is
    // refused with too_many_attempts, and that withdrawal must not happen later either.
    let db = rusqlite::Connection::open(bank.dir.path().join("bank.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let lock = |until: u64| {
        db.execute("UPDATE accounts SET locked_until = ?1 WHERE name = 'frank'", [until as i64]).unwrap();
    };
    lock(unix_now() + 3600);
    let (ok, err) = withdraw_with(&w, "20", payme_tests::bank_harness::PASSWORD);
    assert!(!ok && err.contains("too_many_attempts"), "{err}");
    lock(0);

    // A wrong key for the bank: the bank cannot read the request (decrypt_failed).
    let other = tempfile::tempdir().unwrap();
    let out = payme_tests::bank_harness::payme_bank(
        other.path(),
        &["init", "--bank-id", "bank-a", "--public-addr", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg_path = w.dir.path().join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let key = |dir: &std::path::Path| std::fs::read_to_string(dir.join("bank.pub")).unwrap().trim().to_owned();
    let (right, wrong) = (format!("{:?}", key(bank.dir.path())), format!("{:?}", key(other.path())));
    assert!(cfg.contains(&right));
    std::fs::write(&cfg_path, cfg.replace(&right, &wrong)).unwrap();
    w.stop();
    w.restart();
    let (ok, err) = withdraw_with(&w, "30", payme_tests::bank_harness::PASSWORD);
    assert!(!ok && err.contains("decrypt_failed"), "{err}");

    // All three ended as failed at once, their passwords forgotten.
    let failed = vec![
        ("withdraw".to_owned(), "failed".to_owned(), false),
        ("withdraw".to_owned(), "failed".to_owned(), false),
        ("withdraw".to_owned(), "failed".to_owned(), false),
    ];
    assert_eq!(wallet_ops(&w), failed);
    // With the right key back, after a restart and its whole recovery round, and a bank
    // restart too: nothing was sent again, nothing moved, one wrong password counted.
    std::fs::write(&cfg_path, std::fs::read_to_string(&cfg_path).unwrap().replace(&wrong, &right)).unwrap();
    bank.stop();
    bank.restart_same_port();
    w.stop();
    w.restart();
    let v = w.wait_recovered();
    assert_eq!(v["total_available"], 0, "{v}");
    assert_eq!(wallet_ops(&w), failed);
    assert_eq!(bank_account_row(&bank, "frank"), (100, 1), "balance unchanged, one wrong password counted");
    // The wallet still withdraws with the right password (and that resets the count).
    w.ok(&["withdraw", "5"]);
    assert_eq!(bank_account_row(&bank, "frank"), (95, 0));
    bank.assert_audit();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Runs `edit` on the wallet's database (the daemon may be running: SQLite locks), with
/// the serial of one available coin of value `value`.
fn edit_stored_coin(w: &TestWallet, value: u64, edit: impl FnOnce(&rusqlite::Connection, Vec<u8>)) {
    let c = rusqlite::Connection::open(w.dir.path().join("wallet.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let serial: Vec<u8> = c
        .query_row("SELECT serial FROM coins WHERE state = 'available' AND value = ?1 LIMIT 1", [value as i64], |r| {
            r.get(0)
        })
        .unwrap();
    edit(&c, serial);
}

/// A damaged stored coin blocks nothing: the payment that chooses it quarantines it and
/// pays with other coins; a forged clear value is not counted; both are kept and shown
/// apart by `balance`.
#[test]
fn damaged_stored_coins_are_quarantined_and_other_coins_still_pay() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("gina", "127.0.0.2", &bank, Some(200), |c| c);
    let merchant = TestWallet::start("kiosk", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "48"]);
    assert_eq!(
        buyer.ok(&["balance"])["banks"][0]["coins"],
        serde_json::json!([{"value": 32, "count": 1}, {"value": 16, "count": 1}])
    );
    // One byte of the 16 coin's ciphertext flipped, under the running daemon.
    edit_stored_coin(&buyer, 16, |c, serial| {
        let mut sealed: Vec<u8> =
            c.query_row("SELECT sealed FROM coins WHERE serial = ?1", [&serial], |r| r.get(0)).unwrap();
        sealed[30] ^= 0x40;
        c.execute("UPDATE coins SET sealed = ?2 WHERE serial = ?1", rusqlite::params![serial, sealed]).unwrap();
    });
    // A payment of 16 chooses that coin first; it is quarantined, and the 32 is broken
    // by exchange to pay instead.
    collect_approved(&merchant, &buyer, 16, "a paperback");
    assert_eq!(balance_of(&bank, "kiosk"), 16);
    let b = buyer.ok(&["balance"]);
    assert_eq!(b["total_available"], 16, "{b}");
    assert_eq!(
        (&b["quarantined_coins"], &b["total_quarantined"]),
        (&serde_json::json!(1), &serde_json::json!(16)),
        "{b}"
    );
    assert_eq!(b["banks"][0]["quarantined"], 16);

    // The clear value column of the last coin forged (16 -> 128) with raw SQL.
    edit_stored_coin(&buyer, 16, |c, serial| {
        c.execute("UPDATE coins SET value = 128 WHERE serial = ?1", [&serial]).unwrap();
    });
    let b = buyer.ok(&["balance"]);
    assert_eq!(b["total_available"], 0, "a forged value is never counted: {b}");
    assert_eq!(buyer.holding(), 0);
    assert_eq!(
        (&b["quarantined_coins"], &b["total_quarantined"]),
        (&serde_json::json!(2), &serde_json::json!(16 + 128)),
        "{b}"
    );
    // Nothing is deleted: every coin the wallet ever held is still a row.
    let rows: i64 = rusqlite::Connection::open(buyer.dir.path().join("wallet.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM coins WHERE state = 'quarantined'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
    // And the wallet still works: a fresh withdrawal pays.
    buyer.ok(&["withdraw", "4"]);
    collect_approved(&merchant, &buyer, 4, "a bookmark");
    assert_eq!(balance_of(&bank, "kiosk"), 20);
    assert_eq!(buyer.ok(&["balance"])["total_quarantined"], 16 + 128, "quarantined coins stay out of payments");
    bank.assert_audit();
}

/// A payment without a receipt whose coin was damaged while pending: recovery returns
/// the sound coins, quarantines the damaged one, and leaves the payment unresolved
/// rather than calling it spent or returned; no value goes missing from the report.
#[test]
fn a_damaged_pending_coin_leaves_its_payment_unresolved() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let mut buyer = TestWallet::start("hana", "127.0.0.2", &bank, Some(200), |c| c);
    buyer.ok(&["withdraw", "64"]);
    let addr = buyer.addr.clone();
    let taker = rt.spawn(async move {
        merchant_that_takes_coins(&addr, &pmtp_proto::testing::named_identity(5, "taker"), 40).await
    });
    let p = buyer.wait_pending();
    buyer.ok(&["approve", &p["id"].to_string()]);
    let (pay, _conn) = rt.block_on(taker).unwrap();
    let values: Vec<u64> = pay.coins.iter().map(|c| c.value().minor_units()).collect();
    assert_eq!(values.iter().sum::<u64>(), 40);
    buyer.kill9();
    // The 32 coin sent (pending, no receipt) is damaged on disk before the restart.
    let c = rusqlite::Connection::open(buyer.dir.path().join("wallet.db")).unwrap();
    let (serial, mut sealed): (Vec<u8>, Vec<u8>) = c
        .query_row("SELECT serial, sealed FROM coins WHERE state = 'pending' AND value = 32", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    sealed[40] ^= 1;
    c.execute("UPDATE coins SET sealed = ?2 WHERE serial = ?1", rusqlite::params![serial, sealed]).unwrap();
    drop(c);
    buyer.restart();
    let b = buyer.wait_recovered();
    assert_eq!(b["banks"][0]["pending"], 0, "{b}");
    assert_eq!(
        (&b["quarantined_coins"], &b["total_quarantined"]),
        (&serde_json::json!(1), &serde_json::json!(32)),
        "{b}"
    );
    assert_eq!(b["total_available"], 64 - 32, "the change (24) and the returned 8: {b}");
    let h = buyer.ok(&["history"]);
    assert_eq!(h[0]["state"], "sending", "neither spent nor returned while a coin is quarantined: {h}");
    assert_eq!(balance_of(&bank, "hana"), 136);
    bank.assert_audit();
}

/// A buyer's wallet listening on 0.0.0.0 names in its nonces the address each connection
/// really uses (127.0.0.2 here, where the merchant reached it), not 127.0.0.1: the merchant
/// accepts the payment (it used to refuse it as nonce_wrong_address after the approval).
#[test]
fn a_buyer_listening_on_all_addresses_pays() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "0.0.0.0", &bank, Some(100), |c| c);
    let merchant = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "64"]);
    let from = format!("127.0.0.2:{}", buyer.port());
    let job = collect_from(&merchant, &from, 10, "a book", &[]);
    let p = buyer.wait_pending();
    assert_eq!(p["peer"], "127.0.0.3", "the shop's address");
    buyer.ok(&["approve", &p["id"].to_string()]);
    let (ok, out) = job.join().unwrap();
    assert!(ok, "{out}");
    assert_eq!(out["outcome"], "paid");
    buyer.wait_done(1);
    assert_eq!(buyer.available(), 54);
    bank.assert_audit();
}

/// The order a collect names is what the buyer's prompt shows; a second collect for the
/// same order (a double click) joins the first: one prompt, one payment, the same outcome
/// for both; a later one for the paid order gets that outcome again without a prompt, and
/// one for the same order with another amount is refused. The receipt names the order.
#[test]
fn a_second_collect_for_an_order_joins_the_first() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| c);
    let merchant = TestWallet::create("shop", "127.0.0.3", &bank, Some(0), |c| c).with_log().started();
    buyer.ok(&["withdraw", "64"]);
    let order = "3f2a91bc0d4e77a101020304050607ff";
    let first = collect_from(&merchant, &buyer.addr, 10, "a book", &["--order", order]);
    let p = buyer.wait_pending();
    assert_eq!(p["order"], "3f2a-91bc-0d4e-77a1", "{p}");
    let second = collect_from(&merchant, &buyer.addr, 10, "a book", &["--order", order]);
    merchant.wait_log("collect joins the one in progress");
    assert_eq!(buyer.ok(&["pending"]).as_array().unwrap().len(), 1, "one prompt");
    buyer.ok(&["approve", &p["id"].to_string()]);
    let (ok1, out1) = first.join().unwrap();
    let (ok2, out2) = second.join().unwrap();
    assert!(ok1 && ok2, "{out1} {out2}");
    assert_eq!(out1, out2, "one payment, one outcome");
    assert_eq!(out1["order"], order);
    let (ok3, out3) = collect_from(&merchant, &buyer.addr, 10, "a book", &["--order", order]).join().unwrap();
    assert!(ok3, "{out3}");
    assert_eq!(out3["payment"], out1["payment"], "the paid order's outcome again");
    let (ok4, out4) = collect_from(&merchant, &buyer.addr, 11, "a book", &["--order", order]).join().unwrap();
    assert!(!ok4);
    assert_eq!(out4["label"], "unexpected_payment", "{out4}");
    let h = buyer.wait_done(1);
    let out: Vec<_> = h.as_array().unwrap().iter().filter(|p| p["direction"] == "out").collect();
    assert_eq!(out.len(), 1, "paid once: {h}");
    assert_eq!(out[0]["order_id"], order, "the receipt names its order");
    assert_eq!(buyer.available(), 54);
    assert_eq!(balance_of(&bank, "shop"), 10);
    // The receipt, as the buyer's wallet gives it, is what the shop's wallet takes back.
    let r = buyer.ok(&["receipt", &out[0]["id"].to_string(), "--url", "http://shop.example/cgi-bin/payme-cgi/paper"]);
    assert_eq!(r["receipt"], out1["receipt"]);
    assert_eq!(
        r["claim_url"],
        format!("http://shop.example/cgi-bin/payme-cgi/paper?receipt={}", out1["receipt"].as_str().unwrap())
    );
    bank.assert_audit();
}

/// Collects beyond `merchant.max_concurrent_collects` are refused as busy at once; a
/// buyer's wallet that does not approve in time is worded as a timeout, not as a wallet
/// that could not be reached (no_answer).
#[test]
fn collects_are_bounded_and_a_consent_timeout_is_a_timeout() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| {
        c.replace("consent_timeout_secs = 45", "consent_timeout_secs = 2")
    });
    let merchant = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), |c| {
        c.replace("max_concurrent_collects = 64", "max_concurrent_collects = 1")
    });
    buyer.ok(&["withdraw", "64"]);
    let first = collect(&merchant, &buyer, 10, "a book");
    buyer.wait_pending();
    let (ok, busy) = collect(&merchant, &buyer, 10, "another book").join().unwrap();
    assert!(!ok);
    assert_eq!(busy["label"], "busy", "{busy}");
    let (ok, out) = first.join().unwrap();
    assert!(!ok);
    assert_eq!(out["label"], "timeout", "{out}");
    // The permit came back with the first collect's end.
    let job = collect(&merchant, &buyer, 10, "a third book");
    let p = buyer.wait_pending();
    buyer.ok(&["approve", &p["id"].to_string()]);
    assert!(job.join().unwrap().0);
    bank.assert_audit();
}

/// Sends one JSON request to `w`'s control socket, as payme-cgi does; returns the answer.
fn control(w: &TestWallet, req: &Value) -> Value {
    control_at(w.dir.path(), req)
}

/// [`control`] for the wallet whose data directory is `dir`.
fn control_at(dir: &std::path::Path, req: &Value) -> Value {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("control.sock")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// The shop's wallet says who it is; a paid order's receipt claims its item (and nothing
/// else does) until the order expires; an expired order is not paid again either.
#[test]
fn a_receipt_claims_its_order_until_it_expires() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| c);
    let shop = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), |c| c);
    let brief = TestWallet::start("brief shop", "127.0.0.4", &bank, Some(0), |c| {
        c.replace("order_lifetime_secs = 604800", "order_lifetime_secs = 0")
    });
    buyer.ok(&["withdraw", "64"]);
    let id = control(&shop, &serde_json::json!({"cmd": "identity"}));
    assert_eq!(id["result"]["name"], "shop", "{id}");
    let ask = |order: &str| {
        serde_json::json!({"cmd": "collect", "from": buyer.addr, "amount": 5, "description": "a map",
                           "order": order, "item": "map"})
    };
    let (o1, o2) = ("11111111111111111111111111111111", "22222222222222222222222222222222");
    let mut paid = Vec::new();
    for (w, order) in [(&shop, o1), (&brief, o2)] {
        let (req, dir) = (ask(order), w.dir.path().to_path_buf());
        let job = thread::spawn(move || control_at(&dir, &req));
        let p = buyer.wait_pending();
        buyer.ok(&["approve", &p["id"].to_string()]);
        let out = job.join().unwrap();
        assert_eq!(out["result"]["outcome"], "paid", "{out}");
        paid.push(out["result"].clone());
    }
    let claim = |w: &TestWallet, receipt: &Value| control(w, &serde_json::json!({"cmd": "claim", "receipt": receipt}));
    let c = claim(&shop, &paid[0]["receipt"]);
    assert_eq!(c["result"]["item"], "map", "{c}");
    assert_eq!((c["result"]["order"].as_str(), c["result"]["expired"].as_bool()), (Some(o1), Some(false)));
    let c = claim(&brief, &paid[1]["receipt"]);
    assert_eq!(c["result"]["expired"], true, "{c}");
    // Another shop's receipt, or garbage, claims nothing.
    for (w, receipt) in [(&shop, paid[1]["receipt"].clone()), (&shop, Value::from("00ff")), (&brief, Value::from("zz"))]
    {
        let c = claim(w, &receipt);
        assert_eq!(c["label"], "unexpected_payment", "{c}");
    }
    // A collect for the expired order is refused, never paid twice.
    let again = control(&brief, &ask(o2));
    assert_eq!(again["result"]["label"], "unexpected_payment", "{again}");
    assert_eq!(buyer.ok(&["pending"]).as_array().unwrap().len(), 0);
    assert_eq!(buyer.available(), 54);
    bank.assert_audit();
}
