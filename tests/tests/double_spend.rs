//! Double spending: 64 concurrent attempts to spend the same coin, by deposits and
//! exchanges at the bank and by payments to two different merchant wallets (from fake
//! buyers that all hand over the same coin), over separate connections. Exactly one
//! succeeds, in each of 10 rounds, and the bank's audit holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{TestBank, PASSWORD};
use payme_tests::wallet_harness::TestWallet;
use pmtp_proto::*;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fake buyer wallet: answers every ask_payment_request with the same coins.
async fn fake_buyer(ip: IpAddr, coins: Vec<Coin>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let coins = coins.clone();
            tokio::spawn(async move {
                let mut header = [0u8; 10];
                if s.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([header[6], header[7], header[8], header[9]]) as usize;
                let mut body = vec![0u8; len.min(1 << 20)];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
                let Some(id) = MessageId::from_byte(header[5]) else { return };
                let Ok(ask) = (Frame { id, body: body.into() }).open_clear::<AskPaymentRequest>() else { return };
                let merchant = ask.body.merchant.parse().unwrap();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let pay = PayCoinsRequest {
                    request_nonce: ask.body.nonce,
                    coins,
                    session_key: SessionKey::generate(&mut rng::os()),
                    nonce: Nonce::new(&mut rng::os(), ip, now),
                };
                let f = Frame::seal_to(&mut rng::os(), &merchant.x25519, &pay).unwrap();
                let _ = s.write_all(&f.to_bytes().unwrap()).await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
        }
    });
    (addr, task)
}

#[test]
fn sixty_four_ways_to_spend_one_coin() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let holder = bank.holder(1, "holder", 1000);
    let depositor = Arc::new(bank.holder(2, "depositor", 0));
    let merchants = [
        TestWallet::start("shop-1", "127.0.0.3", &bank, Some(0), |c| c),
        TestWallet::start("shop-2", "127.0.0.4", &bank, Some(0), |c| c),
    ];
    let mut wins_by_kind = std::collections::BTreeMap::<&str, usize>::new();
    for round in 0..10u8 {
        let w = rt
            .block_on(bank.client().withdraw(
                &holder.identity,
                holder.account,
                "holder",
                PASSWORD,
                rng::bytes(&mut rng::os()),
                Amount::new(8),
                vec![],
            ))
            .unwrap();
        let coin = w.coins;
        // 12 fake buyers, each handing the same coin to whoever asks.
        let mut buyers = Vec::new();
        for i in 0..12u8 {
            buyers.push(rt.block_on(fake_buyer(IpAddr::from([127, 0, 1, 10 + i]), coin.clone())));
        }
        let mut attempts: Vec<(&str, std::thread::JoinHandle<bool>)> = Vec::new();
        // 24 payments: 12 to each merchant wallet.
        for (i, (addr, _)) in buyers.iter().enumerate() {
            for m in &merchants {
                let (dir, addr) = (m.dir.path().to_path_buf(), addr.clone());
                let _ = i;
                attempts.push((
                    "payment",
                    std::thread::spawn(move || {
                        let out = std::process::Command::new(payme_tests::wallet_harness::bin())
                            .arg("--data-dir")
                            .arg(dir)
                            .args([
                                "--json",
                                "collect",
                                "--from",
                                &addr,
                                "--amount",
                                "8",
                                "--description",
                                "double spend",
                            ])
                            .output()
                            .unwrap();
                        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                        v["outcome"] == "paid"
                    }),
                ));
            }
        }
        // 20 deposits and 20 exchanges at the bank.
        for i in 0..40u8 {
            let (mut c, coins, dep, h) = (bank.client(), coin.clone(), depositor.clone(), rt.handle().clone());
            // From four addresses, so the bank's per-source connection limit (16) lets
            // all 40 reach it at once.
            c.bind_ip = Some(std::net::IpAddr::from([127, 0, 0, 20 + i % 4]));
            let kind = if i % 2 == 0 { "deposit" } else { "exchange" };
            attempts.push((
                kind,
                std::thread::spawn(move || {
                    let id = rng::bytes(&mut rng::os());
                    // In odd rounds the bank attempts start late, so the 24 payments
                    // (through two merchant wallets) race each other for the coin.
                    if round % 2 == 1 {
                        std::thread::sleep(std::time::Duration::from_millis(1500));
                    }
                    h.block_on(async move {
                        if i % 2 == 0 {
                            c.deposit(&dep.identity, dep.account, "depositor", id, coins).await.is_ok()
                        } else {
                            c.exchange(id, coins, vec![]).await.is_ok()
                        }
                    })
                }),
            ));
        }
        assert_eq!(attempts.len(), 64);
        let mut wins = Vec::new();
        for (kind, t) in attempts {
            if t.join().unwrap() {
                wins.push(kind);
            }
        }
        assert_eq!(wins.len(), 1, "round {round}: exactly one of 64 spends succeeds, got {wins:?}");
        *wins_by_kind.entry(wins[0]).or_default() += 1;
        for (_, task) in buyers {
            task.abort();
        }
    }
    println!("winners over 10 rounds: {wins_by_kind:?}");
    let text = bank.assert_audit();
    println!("{text}");
}

/// Regression: a merchant that refuses a payment (one of its coins was already spent)
/// keeps none of its coins; the good ones stay the buyer's to recover.
#[test]
fn merchant_refusing_a_payment_keeps_none_of_its_coins() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let holder = bank.holder(1, "holder", 100);
    let other = bank.holder(2, "other", 0);
    let merchant = TestWallet::start("shop", "127.0.0.3", &bank, Some(0), |c| c);
    let c = bank.client();
    let w = rt
        .block_on(c.withdraw(
            &holder.identity,
            holder.account,
            "holder",
            PASSWORD,
            rng::bytes(&mut rng::os()),
            Amount::new(12),
            vec![],
        ))
        .unwrap();
    assert_eq!(w.coins.len(), 2, "8 + 4");
    // Spend the 8 first, then offer both coins to the merchant.
    rt.block_on(c.deposit(
        &other.identity,
        other.account,
        "other",
        rng::bytes(&mut rng::os()),
        vec![w.coins[0].clone()],
    ))
    .unwrap();
    let (addr, task) = rt.block_on(fake_buyer(IpAddr::from([127, 0, 1, 50]), w.coins.clone()));
    let out = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(merchant.dir.path())
        .args(["--json", "collect", "--from", &addr, "--amount", "12", "--description", "half spent"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "refused", "{v}");
    task.abort();
    let shop = bank.accounts().into_iter().find(|a| a.1 == "shop").unwrap();
    assert_eq!(shop.2, 0, "the merchant deposited nothing");
    // The good coin is still in circulation: its holder can exchange it.
    let back = rt.block_on(c.exchange(rng::bytes(&mut rng::os()), vec![w.coins[1].clone()], vec![])).unwrap();
    assert_eq!(back.coins.iter().map(|c| c.value().minor_units()).sum::<u64>(), 4);
    bank.assert_audit();
}
