//! Signals an operator's system sends: SIGHUP (a closed terminal, `systemctl reload`, log
//! rotation) never stops a daemon; SIGTERM still stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::wallet_harness::TestWallet;
use std::process::Command;

fn hup(pid: u32) {
    assert!(Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap().success());
}

/// Regression: SIGHUP killed both daemons, and the wallet left its control socket behind.
#[test]
fn sighup_never_stops_a_daemon() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let mut w = TestWallet::start("carol", "127.0.0.2", &bank, Some(50), |c| c);
    for _ in 0..3 {
        hup(bank.child.as_ref().unwrap().id());
        hup(w.child.as_ref().unwrap().id());
    }
    // Both still answer (each request is a round trip, so the signals were handled first).
    let s = rt.block_on(bank.client().statement(&alice.identity, alice.account, "alice", None)).unwrap();
    assert_eq!(s.balance, pmtp_proto::Amount::new(100));
    w.ok(&["withdraw", "20"]);
    assert_eq!(w.available(), 20);
    assert!(bank.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the bank is running");
    assert!(w.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the wallet is running");
    // SIGTERM still stops them cleanly (the harness asserts a clean exit).
    w.stop();
    assert!(!w.dir.path().join("control.sock").exists(), "the wallet removed its control socket");
    bank.stop();
}
