//! Administration as an operator does it: change or remove a wallet's bank, a bank's peer,
//! an account's password; each edit keeps the rest of config.toml and is refused where it
//! would strand money.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{payme_bank, TestBank, PASSWORD};
use payme_tests::wallet_harness::TestWallet;
use pmtp_proto::{Amount, ReasonCode};

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_wallet_changes_and_removes_its_bank() {
    let mut bank = TestBank::start();
    let mut w = TestWallet::start("carol", "127.0.0.2", &bank, Some(100), |c| c);
    let config = w.dir.path().join("config.toml");
    let public = bank.dir.path().join("bank.pub");
    // Adding it twice says what to do instead.
    let (ok, v) =
        w.run(&["bank", "add", "--id", "bank-a", "--addr", "127.0.0.1:1", "--public-key", public.to_str().unwrap()]);
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("bank set --id bank-a"), "{v}");
    // The bank moves to another port: `bank set` follows it, comments and all else kept.
    w.ok(&["withdraw", "30"]);
    bank.stop();
    bank.restart();
    let before = std::fs::read_to_string(&config).unwrap();
    w.ok(&["bank", "set", "--id", "bank-a", "--addr", &bank.addr]);
    let after = std::fs::read_to_string(&config).unwrap();
    assert!(after.contains(&format!("addr = \"{}\"", bank.addr)), "{after}");
    let comments = |t: &str| t.lines().filter(|l| l.starts_with('#')).count();
    assert_eq!(comments(&before), comments(&after), "every comment kept");
    w.stop();
    w.restart();
    w.ok(&["withdraw", "10"]);
    assert_eq!(w.available(), 40);
    let list = w.ok(&["bank", "list"]);
    assert_eq!(list[0]["addr"], bank.addr.as_str(), "{list}");
    // Removing a bank whose coins the wallet holds is refused, and changes nothing.
    let (ok, v) = w.run(&["bank", "remove", "--id", "bank-a"]);
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("coins of bank bank-a (value 40)"), "{v}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), after);
    let (ok, v) = w.run(&["bank", "set", "--id", "bank-z", "--addr", "127.0.0.1:1"]);
    assert!(!ok && v["error"].as_str().unwrap().contains("no bank bank-z in config.toml (the banks: bank-a)"), "{v}");
    // Once the coins are deposited, it goes.
    w.ok(&["deposit", "--all"]);
    w.ok(&["bank", "remove", "--id", "bank-a"]);
    assert!(!std::fs::read_to_string(&config).unwrap().lines().any(|l| l == "[[bank]]"));
    assert_eq!(w.ok(&["bank", "list"]), serde_json::json!([]));
    w.stop();
    bank.assert_audit();
}

#[test]
fn a_bank_sets_an_account_password_and_lifts_its_lock() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let withdraw = |password: &str| {
        let rid = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
        rt.block_on(bank.client().withdraw(
            &alice.identity,
            alice.account,
            "alice",
            password,
            rid,
            Amount::new(1),
            vec![],
        ))
    };
    // Wrong passwords until the account locks.
    let mut locked = false;
    for _ in 0..10 {
        if withdraw("not the password").unwrap_err().code() == Some(ReasonCode::TOO_MANY_ATTEMPTS) {
            locked = true;
            break;
        }
    }
    assert!(locked, "the account locks after wrong passwords");
    let id = alice.account.0.to_string();
    let o = payme_bank(bank.dir.path(), &["account", "password", &id, "--password-file", "/dev/stdin"]);
    assert!(!o.status.success(), "an empty password is refused: {}", out(&o));
    let file = bank.dir.path().join("new-password");
    std::fs::write(&file, "a new password\n").unwrap();
    let o = payme_bank(bank.dir.path(), &["account", "password", &id, "--password-file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    // At once, while serving: the old password is wrong, the new one works, no lock.
    assert_eq!(withdraw(PASSWORD).unwrap_err().code(), Some(ReasonCode::WRONG_PASSWORD));
    withdraw("a new password").unwrap();
    bank.assert_audit();
}

#[test]
fn a_bank_changes_lists_and_removes_a_peer() {
    let mut a = TestBank::start_with("bank-a", |c| c);
    let b = TestBank::start_with("bank-b", |c| c);
    let b_pub = b.dir.path().join("bank.pub");
    let add = payme_bank(
        a.dir.path(),
        &[
            "peer",
            "add",
            "--id",
            "bank-b",
            "--addr",
            &b.addr,
            "--public-key",
            b_pub.to_str().unwrap(),
            "--account",
            "1001",
            "--account-name",
            "bank-a",
        ],
    );
    assert!(add.status.success(), "{}", out(&add));
    let o = payme_bank(
        a.dir.path(),
        &["peer", "set", "--id", "bank-b", "--addr", "127.0.0.1:9", "--local-account", "1002"],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = payme_bank(a.dir.path(), &["--json", "peer", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v[0]["addr"].as_str(), v[0]["local_account"].as_u64()), (Some("127.0.0.1:9"), Some(1002)), "{v}");
    // A change that would make the config invalid is refused and writes nothing.
    let before = std::fs::read_to_string(a.dir.path().join("config.toml")).unwrap();
    let o = payme_bank(
        a.dir.path(),
        &["peer", "set", "--id", "bank-b", "--public-key", a.dir.path().join("bank.pub").to_str().unwrap()],
    );
    assert!(!o.status.success() && out(&o).contains("its public key is for bank"), "{}", out(&o));
    assert_eq!(std::fs::read_to_string(a.dir.path().join("config.toml")).unwrap(), before);
    // Not while the bank serves (it may be clearing with that peer).
    let o = payme_bank(a.dir.path(), &["peer", "remove", "--id", "bank-b"]);
    assert!(!o.status.success() && out(&o).contains("stop `payme-bank serve` first"), "{}", out(&o));
    a.stop();
    let o = payme_bank(a.dir.path(), &["peer", "remove", "--id", "bank-b"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(!std::fs::read_to_string(a.dir.path().join("config.toml")).unwrap().lines().any(|l| l == "[[peer]]"));
    let o = payme_bank(a.dir.path(), &["peer", "remove", "--id", "bank-b"]);
    assert!(!o.status.success() && out(&o).contains("no peer bank-b"), "{}", out(&o));
}
