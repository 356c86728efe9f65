//! The wallet in this process: its logic driven directly, without a daemon or sockets of
//! its own, against a real bank. Recovery is tested by calling the maintenance round
//! itself, so the test decides when it runs instead of waiting for the daemon's timer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{TestBank, PASSWORD};
use pmtp_client::clock::Clock;
use pmtp_proto::Amount;
use std::sync::Arc;
use wallet_daemon::config::{BankConfig, Config};
use wallet_daemon::store::{self, CoinState};
use wallet_daemon::{ops, recovery, DataDir, Wallet};

/// A wallet over a fresh data directory, with an account at `bank` for test identity 1
/// ("alice", holding `funds` there).
fn wallet(bank: &TestBank, funds: u64) -> (tempfile::TempDir, Arc<Wallet>) {
    let holder = bank.holder(1, "alice", funds);
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        banks: vec![BankConfig {
            id: "bank-a".into(),
            addr: bank.addr.clone(),
            public_key: bank.public.to_text(),
            account: Some(holder.account.0),
            account_name: Some("alice".into()),
            retired_public_keys: Vec::new(),
        }],
        ..Config::default()
    };
    let identity = pmtp_proto::testing::named_identity(1, "alice");
    let db = store::Db::open(&dir.path().join("wallet.db"), store::Vault::new(&identity)).unwrap();
    let w = Wallet::new(config, DataDir::new(dir.path(), "wallet"), identity, db).unwrap();
    (dir, Arc::new(w))
}

async fn available(w: &Arc<Wallet>) -> Amount {
    w.db.call(|c, v| store::total(c, v, CoinState::Available)).await.unwrap()
}

async fn started_ops(w: &Arc<Wallet>) -> usize {
    w.db.call(|c, _| store::started_ops(c)).await.unwrap().len()
}

/// A withdrawal the bank never answered stays recorded; the next maintenance round, once
/// the bank is back, finishes it: the coins arrive once, the account is debited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_a_withdrawal_the_bank_missed() {
    let mut bank = TestBank::start();
    let (_dir, w) = wallet(&bank, 100);
    bank.stop();
    let e = ops::withdraw(&w, "bank-a", Amount::new(40), PASSWORD).await.unwrap_err();
    assert!(!e.code.is_definitive(), "an unreachable bank is not a definitive refusal: {e:?}");
    assert_eq!(started_ops(&w).await, 1, "the withdrawal stays recorded");
    assert_eq!(available(&w).await, Amount::ZERO);
    // Still down: a round changes nothing.
    recovery::maintenance(&w).await;
    assert_eq!(started_ops(&w).await, 1);
    bank.restart_same_port();
    recovery::maintenance(&w).await;
    assert_eq!(started_ops(&w).await, 0, "the round finished it");
    assert_eq!(available(&w).await, Amount::new(40));
    // A second round does not withdraw again.
    recovery::maintenance(&w).await;
    assert_eq!(available(&w).await, Amount::new(40));
    let accounts = bank.accounts();
    assert!(accounts.iter().any(|(_, name, balance)| name == "alice" && *balance == 60), "{accounts:?}");
    bank.assert_audit();
}

/// The wallet reads its time from the clock it is given, and so do its bank clients: with
/// a clock an hour ahead, the bank refuses the wallet's requests as outside its nonce
/// window, and nothing is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_and_its_bank_clients_read_the_clock_they_are_given() {
    let bank = TestBank::start();
    let (_dir, w) = wallet(&bank, 100);
    let w = Arc::into_inner(w).unwrap();
    let clock = Arc::new(pmtp_client::clock::ManualClock::new(pmtp_client::clock::now() + 3600));
    let w = Arc::new(w.with_clock(clock.clone()));
    assert_eq!(w.now(), clock.now());
    let e = ops::withdraw(&w, "bank-a", Amount::new(40), PASSWORD).await.unwrap_err();
    assert_eq!(e.code, pmtp_proto::ReasonCode::NONCE_OUTSIDE_WINDOW, "{e:?}");
    // The bank judged that request (and did nothing): it is over, not retried.
    recovery::maintenance(&w).await;
    assert_eq!(started_ops(&w).await, 0);
    assert_eq!(available(&w).await, Amount::ZERO);
    // Back to the bank's time, a withdrawal goes through.
    clock.set(pmtp_client::clock::now());
    ops::withdraw(&w, "bank-a", Amount::new(40), PASSWORD).await.unwrap();
    assert_eq!(available(&w).await, Amount::new(40));
    bank.assert_audit();
}

/// The wallet draws its randomness from the source it is given: with a seeded source, the
/// request id of its first withdrawal is the first 16 bytes of that seed's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_draws_from_the_entropy_it_is_given() {
    use pmtp_client::entropy::{rng, SeededEntropy};
    let mut bank = TestBank::start();
    let (_dir, w) = wallet(&bank, 100);
    bank.stop();
    let seed = [9; 32];
    let w = Arc::new(Arc::into_inner(w).unwrap().with_entropy(Arc::new(SeededEntropy::new(seed))));
    ops::withdraw(&w, "bank-a", Amount::new(40), PASSWORD).await.unwrap_err();
    let ops = w.db.call(|c, _| store::started_ops(c)).await.unwrap();
    let expected: [u8; 16] = pmtp_proto::rng::bytes(&mut rng(&SeededEntropy::new(seed)));
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].request_id, expected);
}
