//! Replacing the bank's signing key while its coins circulate: coins of the old key stay
//! good until they expire, new coins carry the new key, a wallet that still has the old
//! key says what to do and loses nothing, and one that was given the new key pays and
//! deposits coins of both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{payme_bank, TestBank};
use payme_tests::wallet_harness::{self, TestWallet};
use serde_json::Value;
use std::collections::BTreeSet;

/// The key ids of the coins in circulation, from the bank's database.
fn key_ids(bank: &TestBank) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(bank.dir.path().join("bank.db")).unwrap();
    let mut st = conn.prepare("SELECT DISTINCT hex(key_id) FROM serials").unwrap();
    st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
}

fn collect(shop: &TestWallet, buyer: &TestWallet, amount: u64) -> std::thread::JoinHandle<Value> {
    let (dir, from) = (shop.dir.path().to_path_buf(), buyer.addr.clone());
    std::thread::spawn(move || {
        let out = std::process::Command::new(wallet_harness::bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["--json", "collect", "--from", &from, "--amount", &amount.to_string(), "--description", "both keys"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    })
}

#[test]
fn coins_of_the_old_and_the_new_key_circulate_together() {
    let mut bank = TestBank::start();
    let mut carol = TestWallet::start("carol", "127.0.0.2", &bank, Some(1000), |c| c);
    let mut shop = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), |c| c);
    carol.ok(&["withdraw", "300"]);
    let old_keys = key_ids(&bank);
    assert_eq!(old_keys.len(), 1);

    bank.stop();
    let o = payme_bank(bank.dir.path(), &["key", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("stays valid for its coins until they expire"));
    bank.restart_same_port();
    let bank_pub = bank.dir.path().join("bank.pub");

    // A wallet that still has the old key: the bank's new coins do not check, it says
    // what to do, and the withdrawal stays recorded (the bank has debited the account).
    let (ok, v) = carol.run(&["withdraw", "100"]);
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("bank set --id bank-a --public-key"), "{v}");
    // Given the new key, the wallet's start-up recovery fetches the same coins again.
    carol.ok(&["bank", "set", "--id", "bank-a", "--public-key", bank_pub.to_str().unwrap()]);
    let config = std::fs::read_to_string(carol.dir.path().join("config.toml")).unwrap();
    assert!(config.contains("retired_public_keys"), "the old key is kept for its coins: {config}");
    carol.stop();
    carol.restart();
    carol.wait_recovered();
    assert_eq!(carol.available(), 400, "the withdrawal finished once, with the new key");
    let keys = key_ids(&bank);
    assert_eq!(keys.len(), 2, "coins of both keys in circulation: {keys:?}");
    assert!(keys.is_superset(&old_keys));

    // The shop learns the new key too, and takes coins of both in one payment.
    shop.ok(&["bank", "set", "--id", "bank-a", "--public-key", bank_pub.to_str().unwrap()]);
    shop.stop();
    shop.restart();
    let job = collect(&shop, &carol, 350);
    let p = carol.wait_pending();
    carol.ok(&["approve", &p["id"].to_string()]);
    let out = job.join().unwrap();
    assert_eq!(out["outcome"], "paid", "{out}");
    // And the bank takes the rest of both kinds in a deposit and an exchange.
    carol.ok(&["exchange"]);
    carol.ok(&["deposit", "--all"]);
    assert_eq!(carol.available(), 0);
    let accounts = bank.accounts();
    let balance = |name: &str| accounts.iter().find(|a| a.1 == name).unwrap().2;
    assert_eq!((balance("carol"), balance("shop")), (650, 350), "{accounts:?}");
    bank.assert_audit();
}

/// A leaked key (here: the retired one, read from the bank's old key file) can sign any
/// body; the bank still pays out only what it minted under each serial. A coin whose signed
/// value or expiry differs from the stored row is refused and nothing is credited.
#[test]
fn a_coin_re_signed_with_another_value_is_refused() {
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rid = || pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
    let password = payme_tests::bank_harness::PASSWORD;
    let w = rt
        .block_on(bank.client().withdraw(
            &alice.identity,
            alice.account,
            "alice",
            password,
            rid(),
            pmtp_proto::Amount::new(1),
            vec![],
        ))
        .unwrap();
    // The old key, as someone who stole bank.key and its passphrase would have it.
    let old_key = bank_daemon::admin::load_identity(
        &bank_daemon::data_dir(bank.dir.path().to_path_buf()),
        payme_tests::bank_harness::PASSPHRASE,
    )
    .unwrap();
    bank.stop();
    let o = payme_bank(bank.dir.path(), &["key", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    bank.restart_same_port();
    let mut body = w.coins[0].body().clone();
    body.value = pmtp_proto::Denomination::try_from(1024).unwrap();
    let forged = pmtp_proto::Coin::mint(body, &old_key.signing).unwrap();
    let e =
        rt.block_on(bank.client().deposit(&alice.identity, alice.account, "alice", rid(), vec![forged])).unwrap_err();
    assert_eq!(e.code(), Some(pmtp_proto::ReasonCode::COIN_BAD_SIGNATURE), "{e}");
    // The genuine coin still deposits, once: 1, not 1024 (the acknowledgement is signed
    // with the new key, so the client needs the new bank.pub).
    let text = std::fs::read_to_string(bank.dir.path().join("bank.pub")).unwrap();
    let public = pmtp_proto::keys::PublicIdentity::from_text(text.trim()).unwrap();
    let client = pmtp_client::BankClient::new(bank.addr.clone(), &public).unwrap();
    rt.block_on(client.deposit(&alice.identity, alice.account, "alice", rid(), w.coins.clone())).unwrap();
    let balance = bank.accounts().iter().find(|a| a.1 == "alice").unwrap().2;
    assert_eq!(balance, 100);
    bank.assert_audit();
}
