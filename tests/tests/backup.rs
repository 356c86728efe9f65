//! Backups taken while the daemons run, and restores: back up, lose the data, restore
//! from the copy; the audit holds and the coins are spendable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{payme_bank, TestBank, PASSWORD};
use payme_tests::wallet_harness::TestWallet;
use pmtp_proto::Amount;

fn lose_and_restore(db: &std::path::Path, copy: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    assert!(!db.exists(), "the data is lost");
    std::fs::copy(copy, db).unwrap();
}

#[test]
fn a_bank_backed_up_while_serving_restores_with_its_coins_valid() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 1000);
    let shop = bank.holder(2, "shop", 0);
    let w = rt
        .block_on(bank.client().withdraw(
            &alice.identity,
            alice.account,
            "alice",
            PASSWORD,
            [1; 16],
            Amount::new(300),
            vec![],
        ))
        .unwrap();
    let backups = tempfile::tempdir().unwrap();
    let copy = backups.path().join("bank-backup.db");
    let out = payme_bank(bank.dir.path(), &["backup", copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{said}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("audit holds") && said.contains(&format!("{} serials", w.coins.len())), "{said}");
    // A second backup to the same file is refused: a backup is never overwritten.
    let again = payme_bank(bank.dir.path(), &["backup", copy.to_str().unwrap()]);
    assert!(!again.status.success());
    bank.stop();
    lose_and_restore(&bank.dir.path().join("bank.db"), &copy);
    bank.restart_same_port();
    bank.assert_audit();
    // The coins withdrawn before the backup are spendable at the restored bank.
    let d = rt.block_on(bank.client().deposit(&shop.identity, shop.account, "shop", [2; 16], w.coins)).unwrap();
    assert_eq!(d.ack.body.amount, Amount::new(300));
    let text = bank.assert_audit();
    assert!(text.contains("in circulation 0"), "{text}");
}

#[test]
fn a_wallet_backed_up_while_serving_restores_with_its_coins_spendable() {
    let bank = TestBank::start();
    let mut w = TestWallet::start("carol", "127.0.0.2", &bank, Some(500), |c| c);
    w.ok(&["withdraw", "120"]);
    let backups = tempfile::tempdir().unwrap();
    let copy = backups.path().join("wallet-backup.db");
    let out = w.run_raw(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.stop();
    lose_and_restore(&w.dir.path().join("wallet.db"), &copy);
    w.restart();
    assert_eq!(w.available(), 120, "the coins are back");
    w.ok(&["deposit", "120"]);
    assert_eq!(w.available(), 0);
    let carol = bank.accounts().into_iter().find(|a| a.1 == "carol").unwrap().2;
    assert_eq!(carol, 500, "380 left + 120 deposited back");
    bank.assert_audit();
}
