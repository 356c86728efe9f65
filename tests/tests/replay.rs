//! The nonce-replay harness over real traffic: a withdrawal, an exchange, a deposit and
//! full purchases recorded through proxies in front of the bank and the buyer's wallet,
//! then replayed every way the harness knows. Nothing may be accepted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::replay::{replay_all, PastWindow, Proxy, ReplayConfig};
use payme_tests::wallet_harness::TestWallet;
use std::time::Duration;

#[test]
fn no_replay_is_accepted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The daemons run on a clock the test moves past their nonce window, instead of
    // waiting it out.
    let clock = std::sync::Arc::new(payme_tests::bank_harness::TestClock::install());
    let short = |c: String| c.replace("nonce_window_secs = 30", "nonce_window_secs = 2");
    let mut bank = TestBank::start_with("bank-a", short);
    let bank_proxy = rt.block_on(Proxy::start("127.0.0.1:0", &bank.addr)).unwrap();
    // The wallets reach the bank only through the proxy.
    let real = std::mem::replace(&mut bank.addr, bank_proxy.addr.to_string());
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| {
        short(c).replace("auto_approve_limit = 0", "auto_approve_limit = 1000")
    });
    let merchant = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), short);
    bank.addr = real;
    // Same address as the buyer (another port): the merchant sees the IP the buyer names.
    let buyer_proxy = rt.block_on(Proxy::start("127.0.0.2:0", &buyer.addr)).unwrap();

    buyer.ok(&["withdraw", "100"]);
    buyer.ok(&["exchange"]);
    buyer.ok(&["deposit", "4"]);
    let collect = |amount: &str| {
        let dir = merchant.dir.path().to_path_buf();
        let (from, amount) = (buyer_proxy.addr.to_string(), amount.to_owned());
        std::thread::spawn(move || {
            let out = std::process::Command::new(payme_tests::wallet_harness::bin())
                .arg("--data-dir")
                .arg(dir)
                .args(["--json", "collect", "--from", &from, "--amount", &amount, "--description", "replay me"])
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        })
    };
    // The first purchase pins the merchant; the second is paid at once by policy, so an
    // accepted replay of its request would pay again without anyone asked.
    let job = collect("13");
    let p = buyer.wait_pending();
    buyer.ok(&["approve", &p["id"].to_string()]);
    let first = job.join().unwrap();
    assert_eq!(first["outcome"], "paid", "{first}");
    assert_eq!(collect("7").join().unwrap()["outcome"], "paid");
    let before = (buyer.available(), bank.accounts());

    let mut recorded = bank_proxy.recorded();
    recorded.extend(buyer_proxy.recorded());
    let kinds: std::collections::BTreeSet<String> = recorded.iter().map(|r| r.request.id.name()).collect();
    for k in ["withdraw_coins_request", "exchange_coins_request", "deposit_coins_request", "ask_payment_request"] {
        assert!(kinds.contains(k), "recorded a {k}: {kinds:?}");
    }
    let cfg = ReplayConfig {
        past_window: PastWindow::MoveClock({
            let clock = clock.clone();
            std::sync::Arc::new(move || clock.advance(3))
        }),
        copies: 8,
        flip_sample: 24,
        deadline: Duration::from_secs(5),
        ..ReplayConfig::default()
    };
    let report = rt.block_on(replay_all(&recorded, &cfg));
    println!("{}", report.table());
    assert_eq!(report.refused_fresh(), 0, "every original request was served:\n{}", report.table());
    assert_eq!(report.accepted_replays(), 0, "no replay accepted:\n{}", report.table());
    assert_eq!((buyer.available(), bank.accounts()), before, "replays moved no money");
    bank.assert_audit();
}
