//! Several `payme-bank serve` processes (nodes) on one PostgreSQL database, the same bank
//! key, each on its own port: one coin spent at most once whichever node is asked, a
//! withdrawal retried at another node gets the same coins, a node killed with SIGKILL in
//! the middle of traffic loses nothing, and a nonce used at one node is refused at another.
//! Without PostgreSQL installed these skip loudly, or fail when `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::*;
use payme_tests::pg::{bank_nodes as nodes, Postgres};
use pmtp_client::{BankClient, ClientError};
use pmtp_proto::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn rid() -> [u8; 16] {
    rng::bytes(&mut rng::os())
}

fn code(e: &ClientError) -> ReasonCode {
    e.code().unwrap_or_else(|| panic!("expected a refusal, got {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_spends_of_one_coin_over_three_nodes_one_wins() {
    let Some(pg) = Postgres::start_with(false) else { return };
    let banks = nodes(&pg, 3, |c| c.replace("max_connections_per_ip = 16", "max_connections_per_ip = 128"));
    let alice = banks[0].holder(1, "alice", 1000);
    let shop = Arc::new(banks[0].holder(2, "shop", 0));
    for round in 0..2u8 {
        let w = banks[round as usize]
            .client()
            .withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(4), vec![])
            .await
            .unwrap();
        let clients: Vec<BankClient> = banks.iter().map(|b| b.client()).collect();
        let ok = spend_64_ways(&clients, shop.clone(), w.coins, round).await;
        assert_eq!(ok, 1, "round {round}: exactly one of 64 spends over three nodes succeeds");
    }
    banks[0].assert_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_retried_at_another_node_gets_the_same_coins() {
    let Some(pg) = Postgres::start_with(false) else { return };
    let banks = nodes(&pg, 2, |c| c);
    let alice = banks[0].holder(1, "alice", 100);
    let request = rid();
    let w = |i: usize| banks[i].client();
    let first = w(0)
        .withdraw(&alice.identity, alice.account, "alice", PASSWORD, request, Amount::new(13), vec![])
        .await
        .unwrap();
    let again = w(1)
        .withdraw(&alice.identity, alice.account, "alice", PASSWORD, request, Amount::new(13), vec![])
        .await
        .unwrap();
    assert_eq!(first.coins, again.coins, "the same coins, not new ones");
    assert_eq!((first.balance, again.balance), (Amount::new(87), Amount::new(87)), "charged once");
    assert_eq!(banks[1].balance(&alice).await, Amount::new(87));
    // The coins are good at either node, once.
    banks[1].client().exchange(rid(), first.coins.clone(), vec![]).await.unwrap();
    let e = banks[0].client().exchange(rid(), first.coins, vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::COIN_NOT_IN_CIRCULATION);
    banks[0].assert_audit();
}

/// Tries `op` at `first` and then the other live nodes while the outcome is unknown
/// (the node is gone): the same request id each time, so a request that took effect at
/// a node killed before it answered is answered, not done twice, by the next.
async fn at_any_node<T, F, Fut>(clients: &[BankClient], dead: &[AtomicBool], first: usize, op: F) -> T
where
    F: Fn(BankClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    for k in 0..clients.len() * 2 {
        let i = (first + k) % clients.len();
        if dead[i].load(Ordering::SeqCst) && k > 0 {
            continue;
        }
        match op(clients[i].clone()).await {
            Ok(v) => return v,
            // Not answered (refused connection, closed, timed out) or the bank's own failure.
            Err(e) if e.code().is_none() || e.code() == Some(ReasonCode::INTERNAL) => continue,
            Err(e) => panic!("refused at node {i}: {e}"),
        }
    }
    panic!("no node answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_traffic_loses_nothing() {
    let Some(pg) = Postgres::start_with(false) else { return };
    let mut banks = nodes(&pg, 3, |c| c);
    let alice = Arc::new(banks[0].holder(1, "alice", 10_000));
    let shop = Arc::new(banks[0].holder(2, "shop", 0));
    let clients: Arc<Vec<BankClient>> = Arc::new(
        banks
            .iter()
            .map(|b| {
                let mut c = b.client();
                c.timeout = Duration::from_secs(5);
                c
            })
            .collect(),
    );
    let dead: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
    let done = Arc::new(AtomicUsize::new(0));
    let halfway = Arc::new(tokio::sync::Notify::new());
    let (workers, rounds, amount) = (4usize, 10usize, 7u64);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (clients, dead, done, halfway) = (clients.clone(), dead.clone(), done.clone(), halfway.clone());
        let (alice, shop) = (alice.clone(), shop.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let (wid, did) = (rid(), rid());
                let coins = at_any_node(&clients, &dead, w + r, |c| {
                    let a = alice.clone();
                    async move {
                        c.withdraw(&a.identity, a.account, "alice", PASSWORD, wid, Amount::new(amount), vec![])
                            .await
                            .map(|w| w.coins)
                    }
                })
                .await;
                at_any_node(&clients, &dead, w + r + 1, |c| {
                    let (s, coins) = (shop.clone(), coins.clone());
                    async move { c.deposit(&s.identity, s.account, "shop", did, coins).await.map(|_| ()) }
                })
                .await;
                if done.fetch_add(1, Ordering::SeqCst) + 1 == workers * rounds / 3 {
                    halfway.notify_one();
                }
            }
        }));
    }
    // A third of the way through, node 1 dies without a word (SIGKILL).
    tokio::time::timeout(Duration::from_secs(120), halfway.notified()).await.expect("traffic reached a third");
    dead[1].store(true, Ordering::SeqCst);
    let mut killed = banks[1].child.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t).await.expect("traffic finished").unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), workers * rounds);
    // The others went on serving, and nothing was lost or paid twice.
    let total = (workers * rounds) as u64 * amount;
    let mut balances: Vec<(String, u64)> = banks[2].accounts().into_iter().map(|(_, n, b)| (n, b)).collect();
    balances.sort();
    assert_eq!(balances, vec![("alice".to_string(), 10_000 - total), ("shop".to_string(), total)]);
    assert_eq!(pg_reserved(&pg, &banks[0]), 0, "no withdrawal left paid for and unissued");
    banks[2].assert_audit();
    let text = banks[0].assert_audit();
    assert!(text.contains("in circulation 0 (0 serials)"), "{text}");
}

/// Withdrawals and exchanges reserved and not yet issued, read from the bank's database.
fn pg_reserved(pg: &Postgres, bank: &TestBank) -> u64 {
    let config = std::fs::read_to_string(bank.dir.path().join("config.toml")).unwrap();
    let url = config.lines().find_map(|l| l.strip_prefix("store = \"")).unwrap().trim_end_matches('"').to_owned();
    // An update that changes nothing, to count the rows.
    pg.execute(&url, "UPDATE issued SET coins = coins WHERE coins IS NULL")
}

#[test]
fn a_nonce_used_at_one_node_is_refused_at_another() {
    use payme_tests::replay::{replay_all, PastWindow, Proxy, ReplayConfig};
    let Some(pg) = Postgres::start_with(false) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = Arc::new(TestClock::install());
    let banks = nodes(&pg, 2, |c| c.replace("nonce_window_secs = 30", "nonce_window_secs = 2"));
    let alice = banks[0].holder(1, "alice", 500);
    let shop = banks[0].holder(2, "shop", 0);
    // Real requests to node 0, through a recording proxy.
    let proxy = rt.block_on(Proxy::start("127.0.0.1:0", &banks[0].addr)).unwrap();
    let c = BankClient::new(proxy.addr.to_string(), &banks[0].public).unwrap();
    rt.block_on(async {
        let w = c
            .withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(24), vec![])
            .await
            .unwrap();
        let x = c.exchange(rid(), w.coins, vec![]).await.unwrap();
        c.deposit(&shop.identity, shop.account, "shop", rid(), x.coins).await.unwrap();
    });
    let before = banks[0].accounts();
    // Replayed, every way the harness knows, at node 1.
    let mut recorded = proxy.recorded();
    assert_eq!(recorded.len(), 3, "withdraw, exchange, deposit");
    for r in &mut recorded {
        r.target = banks[1].addr.clone();
    }
    let cfg = ReplayConfig {
        past_window: PastWindow::MoveClock({
            let clock = clock.clone();
            Arc::new(move || clock.advance(3))
        }),
        copies: 8,
        flip_sample: 8,
        deadline: Duration::from_secs(5),
        ..ReplayConfig::default()
    };
    let report = rt.block_on(replay_all(&recorded, &cfg));
    println!("{}", report.table());
    assert_eq!(report.accepted_replays(), 0, "no replay accepted at the other node:\n{}", report.table());
    assert_eq!(banks[0].accounts(), before, "replays moved no money");
    banks[0].assert_audit();
}
