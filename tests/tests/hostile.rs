//! Hostile peers against a real bank: oversize length headers, random bytes, half frames
//! then silence on many sockets (slowloris), and a connection flood, all at once from
//! other loopback addresses, while a real client keeps using the bank. The bank must stay
//! up, keep its memory bounded, and keep serving the client; the client's success rate and
//! latency during the attack are reported (speed is not asserted: this is not a benchmark).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::replay::connect_from;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[test]
fn bank_survives_hostile_peers_and_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The shipped connection limits; a short idle deadline so half frames are closed
    // within the attack.
    let bank = TestBank::start_with("bank-a", |c| c.replace("idle_timeout_secs = 30", "idle_timeout_secs = 2"));
    let alice = bank.holder(1, "alice", 100);
    let pid = bank.child.as_ref().unwrap().id();
    let rss_before = rss_kib(pid);
    let target = bank.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let attack_for = Duration::from_secs(6);

    let report = rt.block_on(async {
        let mut attackers = Vec::new();
        // Slowloris: half a frame, then silence, on 300 sockets.
        {
            let (t, stop) = (target.clone(), stop.clone());
            attackers.push(tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..300 {
                    if let Ok(mut s) = connect_from(IpAddr::from([127, 0, 0, 66]), &t).await {
                        let _ = s.write_all(b"PMTP\x01\x11\x00\x00\x04\x00abc").await;
                        held.push(s);
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                held.len()
            }));
        }
        // Connection flood: 500 connections held open, doing nothing.
        {
            let (t, stop) = (target.clone(), stop.clone());
            attackers.push(tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..500 {
                    if let Ok(s) = connect_from(IpAddr::from([127, 0, 0, 67]), &t).await {
                        held.push(s);
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                held.len()
            }));
        }
        // Oversize length headers and random bytes, as fast as they go.
        for (ip, oversize) in [(68u8, true), (69u8, false)] {
            let (t, stop) = (target.clone(), stop.clone());
            attackers.push(tokio::spawn(async move {
                let mut n = 0usize;
                let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = connect_from(IpAddr::from([127, 0, 0, ip]), &t).await {
                        let bytes: Vec<u8> = if oversize {
                            b"PMTP\x01\x01\xff\xff\xff\xff".to_vec()
                        } else {
                            (0..512)
                                .map(|_| {
                                    seed ^= seed << 13;
                                    seed ^= seed >> 7;
                                    seed ^= seed << 17;
                                    seed as u8
                                })
                                .collect()
                        };
                        let _ = s.write_all(&bytes).await;
                        n += 1;
                    }
                }
                n
            }));
        }
        // The real client, during the attack.
        let client = bank.client();
        let started = Instant::now();
        let (mut ok, mut failed, mut latencies) = (0usize, 0usize, Vec::new());
        while started.elapsed() < attack_for {
            let t0 = Instant::now();
            match client.statement(&alice.identity, alice.account, "alice", None).await {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            latencies.push(t0.elapsed());
        }
        let rss_during = rss_kib(pid);
        stop.store(true, Ordering::Relaxed);
        let mut counts = Vec::new();
        for a in attackers {
            counts.push(a.await.unwrap());
        }
        latencies.sort();
        let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        (ok, failed, p(0.5), p(0.99), rss_during, counts)
    });
    let (ok, failed, p50, p99, rss_during, counts) = report;
    println!(
        "hostile peers: slowloris sockets opened {}, flood connections opened {}, oversize headers {}, random-byte connections {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    println!(
        "real client during the attack: {ok} ok, {failed} failed ({:.1}% success), p50 {:?}, p99 {:?}",
        100.0 * ok as f64 / (ok + failed).max(1) as f64,
        p50,
        p99
    );
    println!("bank RSS: {} KiB before, {} KiB during", rss_before, rss_during);
    assert!(ok > 0 && failed * 100 <= (ok + failed), "the real client kept being served ({ok} ok, {failed} failed)");
    assert!(rss_during < 256 * 1024, "bounded memory: {rss_during} KiB");
    // Still up and serving after the attack.
    let after = rt.block_on(bank.client().statement(&alice.identity, alice.account, "alice", None)).unwrap();
    assert_eq!(after.balance, pmtp_proto::Amount::new(100));
    assert!(bank.child.is_some());
    bank.assert_audit();
}

/// Opens `per_source` connections from each of `sources` to `target`, sending half a
/// frame on each, and returns them (held open by the caller). Connections the daemon
/// closes at accept are kept too: they cost it nothing.
async fn hold_half_frames(sources: &[IpAddr], per_source: usize, target: &str) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for ip in sources {
        for _ in 0..per_source {
            // A connect that does not complete at once means the daemon's backlog is
            // full: this source has done what it can.
            match tokio::time::timeout(Duration::from_millis(500), connect_from(*ip, target)).await {
                Ok(Ok(mut s)) => {
                    let _ = s.write_all(b"PMTP\x01\x11\x00\x00\x04\x00abc").await;
                    held.push(s);
                }
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
    }
    held
}

/// Whether a daemon still serves a newcomer: an oversize frame header from 127.0.0.1
/// gets a refusal frame back (a connection stuck in the kernel's backlog gets nothing).
async fn answers_newcomer(target: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let probe = async {
        let mut s = connect_from(IpAddr::from([127, 0, 0, 1]), target).await?;
        s.write_all(b"PMTP\x01\x01\xff\xff\xff\xff").await?;
        let mut buf = [0u8; 64];
        s.read(&mut buf).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), probe).await, Ok(Ok(n)) if n > 0)
}

/// Regression: under the shipped defaults, 5 addresses with 256 half-open frames each
/// took every connection slot of a bank (1024 slots, 256 per address), and 10 addresses
/// every slot of a wallet. At the shipped defaults now, 10 addresses with 300 half-open
/// frames each leave both serving newcomers, and the bank's real clients.
#[test]
fn a_handful_of_addresses_cannot_take_every_slot_at_the_shipped_defaults() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let wallet = payme_tests::wallet_harness::TestWallet::start("buyer", "127.0.0.2", &bank, None, |c| c);
    let sources: Vec<IpAddr> = (100..110u8).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    rt.block_on(async {
        for target in [bank.addr.clone(), wallet.addr.clone()] {
            let held = hold_half_frames(&sources, 300, &target).await;
            println!("{target}: {} connections opened from {} addresses", held.len(), sources.len());
            assert!(answers_newcomer(&target).await, "{target} still answers a newcomer while the slots are held");
            drop(held);
        }
        // And a real request at the bank, with the attack in place again.
        let held = hold_half_frames(&sources, 300, &bank.addr).await;
        let mut client = bank.client();
        client.timeout = Duration::from_secs(5);
        let s = client.statement(&alice.identity, alice.account, "alice", None).await.unwrap();
        assert_eq!(s.balance, pmtp_proto::Amount::new(100));
        drop(held);
    });
    bank.assert_audit();
}
