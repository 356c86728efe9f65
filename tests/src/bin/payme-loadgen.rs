//! `payme-loadgen`: end-to-end throughput and latency of a real bank and wallets.
//!
//! Starts (release) payme-bank and two payme-wallets on loopback, preloads accounts and
//! coins, measures the machine's raw RSA-2048 sign and verify rates on all cores, then
//! drives N concurrent clients for a bounded time through each scenario: withdraw,
//! exchange, deposit (8 coins a request), and whole purchases (ask_payment, pay_coins,
//! deposit at the bank, receipt) with an auto-approving buyer. Prints a table (or JSON
//! with --json) with ops/s, coins/s, p50/p90/p99/max latency, bank CPU time and peak RSS.
//!
//! Run: `cargo run --release -p payme-tests --bin payme-loadgen -- --help`.
//! Requests are built and signed before each timed phase, so the client's own RSA work
//! does not take the cores the bank is measured on; the loadgen bank therefore runs with a
//! 600 s nonce window (requests may wait that long between being built and sent).
//!
//! A bank that dies or stops answering mid-run is reported in one line on stderr
//! (`payme-loadgen: ...`) with a non-zero exit, never a panic: after each scenario the
//! bank must still accept connections, and a scenario in which every request failed is an
//! error. The remaining `unwrap`s are on local set-up (keys, encodings, the harness).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use payme_tests::bank_harness::{self, TestBank, PASSWORD};
use payme_tests::load::{self, calibrate, drive, Job, Stats};
use payme_tests::wallet_harness::TestWallet;
use pmtp_proto::keys::Signed;
use pmtp_proto::text::{Name, Password};
use pmtp_proto::*;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "payme-loadgen", about = "Throughput and latency of payme, against the machine's RSA limits")]
struct Cli {
    /// Concurrent clients at saturation.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds per scenario (a scenario also ends when its preloaded requests run out).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Scenarios to run, comma separated: withdraw, exchange, deposit, purchase.
    #[arg(long, default_value = "withdraw,exchange,deposit,purchase")]
    scenarios: String,
    /// Most coins minted in advance for the deposit scenario (minting costs an RSA
    /// signature each).
    #[arg(long, default_value_t = 48_000)]
    deposit_coins: usize,
    /// Serials to put in circulation before starting (the scale test), inserted straight
    /// into the bank's database while it is stopped.
    #[arg(long, default_value_t = 0)]
    preload_serials: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Use a running bank instead of starting one: its data directory (accounts are
    /// opened there for the load) ...
    #[arg(long, requires = "bank_addr")]
    bank_dir: Option<std::path::PathBuf>,
    /// ... and its address, or the addresses of its nodes, comma separated (several
    /// `payme-bank serve` on one PostgreSQL database): each client connection goes to the
    /// next address in turn. Requests are signed before they are sent, so give that bank
    /// a nonce window longer than the preparation takes (nonce_window_secs = 600).
    #[arg(long, requires = "bank_dir")]
    bank_addr: Option<String>,
    /// Start a PostgreSQL server (Debian's package, durable: fsync on) and this many bank
    /// nodes on it instead of one bank on SQLite; the load is spread over the nodes.
    #[arg(long, default_value_t = 0, conflicts_with = "bank_dir")]
    postgres_nodes: usize,
    /// The running bank's process ids (comma separated, one per node), for its CPU time
    /// and peak memory in the report.
    #[arg(long, value_delimiter = ',')]
    bank_pid: Vec<u32>,
    /// Do not build the daemon binaries first (they are already built, as in tests).
    #[arg(long)]
    no_build: bool,
    /// Seconds of RSA signing, then of verifying, on all cores to calibrate.
    #[arg(long, default_value_t = 2.0)]
    calibration_secs: f64,
}

const PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

use pmtp_client::clock::now;

fn eight() -> Vec<Denomination> {
    (0..8).map(|e| Denomination::from_exponent(e).unwrap()).collect()
}

fn log(json: bool, s: &str) {
    if !json {
        eprintln!("{s}");
    }
}

/// Withdraws `count` coins of value 1, in requests of up to 64 (the bank's default
/// `max_coins_minted_per_request`), eight at a time.
async fn mint_ones(bank: &TestBank, h: &bank_harness::Holder, count: usize) -> Result<Vec<Coin>, String> {
    let mut out = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let mut wave = Vec::new();
        while wave.len() < 8 && left > 0 {
            let n = left.min(64);
            left -= n;
            let (c, id) = (bank.client(), pmtp_proto::testing::named_identity(1, &h.name));
            let (account, name) = (h.account, h.name.clone());
            wave.push(tokio::spawn(async move {
                let d = vec![Denomination::from_exponent(0).unwrap(); n];
                c.withdraw(&id, account, &name, PASSWORD, rng::bytes(&mut rng::os()), Amount::new(n as u64), d)
                    .await
                    .map(|r| r.coins)
            }));
        }
        for t in wave {
            let coins = t.await.map_err(|e| format!("minting task failed: {e}"))?;
            out.extend(coins.map_err(|e| format!("minting coins at the bank at {} failed: {e}", bank.addr))?);
        }
    }
    Ok(out)
}

/// After a scenario: the bank must still accept connections, and not every request may
/// have failed.
fn check_bank(addr: &str, s: &Stats) -> Result<(), String> {
    let first = s.first_error.as_deref().unwrap_or("none");
    if s.failed > 0 && std::net::TcpStream::connect(addr).is_err() {
        return Err(format!(
            "the bank at {addr} stopped answering during the {} scenario ({} of {} requests failed; first error: {first})",
            s.scenario,
            s.failed,
            s.failed + s.ok
        ));
    }
    if s.ok == 0 && s.failed > 0 {
        return Err(format!(
            "every request of the {} scenario failed ({}; first error: {first})",
            s.scenario, s.failed
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payme-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let scenarios: Vec<&str> = cli.scenarios.split(',').map(str::trim).collect();
    if !cli.no_build {
        log(cli.json, "building the release binaries");
        bank_harness::build_binaries();
    }
    log(cli.json, &format!("calibrating RSA-2048 on all cores ({} s)", cli.calibration_secs * 2.0));
    let cal = calibrate(&pmtp_proto::testing::signing_key(0), cli.calibration_secs);

    // All load comes from 127.0.0.1, one connection per client.
    let edit = |c: String| {
        c.replace("nonce_window_secs = 30", "nonce_window_secs = 600")
            .replace("max_connections_per_ip = 16", "max_connections_per_ip = 1024")
            .replace("max_withdraw_amount = 1099511627776", "max_withdraw_amount = 4611686018427387904")
    };
    let postgres = if cli.postgres_nodes > 0 {
        log(cli.json, &format!("starting PostgreSQL and {} bank nodes on it", cli.postgres_nodes));
        Some(payme_tests::pg::Postgres::start().ok_or("PostgreSQL is not installed")?)
    } else {
        None
    };
    let (mut bank, mut others) = match (&cli.bank_dir, &cli.bank_addr, &postgres) {
        (Some(dir), Some(addr), _) => {
            let first = addr.split(',').next().unwrap_or_default().trim().to_owned();
            (TestBank::attach(dir.clone(), first), Vec::new())
        }
        (_, _, Some(pg)) => {
            let mut nodes = payme_tests::pg::bank_nodes(pg, cli.postgres_nodes, edit);
            let first = nodes.remove(0);
            (first, nodes)
        }
        _ => (TestBank::start_with("bank-a", edit), Vec::new()),
    };
    if cli.preload_serials > 0 && bank.child.is_some() {
        log(cli.json, &format!("preloading {} serials into circulation", cli.preload_serials));
        bank.stop();
        for n in &mut others {
            n.stop();
        }
        preload(&bank, cli.preload_serials);
        bank.restart_same_port();
        for n in &mut others {
            n.restart();
        }
    }
    let addrs: Vec<String> = match &cli.bank_addr {
        Some(a) => a.split(',').map(|s| s.trim().to_owned()).collect(),
        None => std::iter::once(&bank).chain(&others).map(|b| b.addr.clone()).collect(),
    };
    let pids: Vec<u32> = match bank.child.as_ref() {
        Some(c) => {
            std::iter::once(c.id()).chain(others.iter().filter_map(|b| b.child.as_ref().map(|c| c.id()))).collect()
        }
        None => cli.bank_pid.clone(),
    };
    let pid = &pids[..];
    // Unique names, so a running bank can be loaded more than once.
    let tag = hex_tag();
    let holder = bank.holder(1, &format!("holder-{tag}"), 1 << 40);
    let shop = bank.holder(2, &format!("shop-{tag}"), 0);
    let bank_x = bank.public.parse().unwrap().x25519;
    let owner = pmtp_proto::testing::named_identity(1, &holder.name);
    let shop_id = pmtp_proto::testing::named_identity(2, &shop.name);
    let duration = Duration::from_secs(cli.duration);
    let mut results: Vec<Stats> = Vec::new();

    if scenarios.contains(&"withdraw") {
        // Enough for the signing limit to be the bound: calibrated rate / 8 per second, 1.5x.
        let n = ((cal.sign_per_sec / 8.0) * cli.duration as f64 * 1.5) as usize + 50;
        log(cli.json, &format!("withdraw: signing {n} requests"));
        let frames: Vec<Frame> = (0..n)
            .map(|_| {
                let mut r = rng::os();
                let body = WithdrawCoins {
                    account: holder.account,
                    name: Name::new(holder.name.clone()).unwrap(),
                    password: Password::new(PASSWORD).unwrap(),
                    request_id: rng::bytes(&mut r),
                    amount: Amount::new(255),
                    denominations: eight(),
                    session_key: SessionKey::generate(&mut r),
                    nonce: Nonce::new(&mut r, PEER, now()),
                };
                Frame::seal_to(&mut r, &bank_x, &Signed::sign(body, &owner.signing).unwrap()).unwrap()
            })
            .collect();
        let jobs = jobs_for(&addrs, frames, WithdrawCoinsResponse::ID);
        results.push(rt.block_on(drive("withdraw (8 coins)", jobs, cli.clients, duration, 8, pid)));
        check_bank(&bank.addr, &results[results.len() - 1])?;
    }

    if scenarios.contains(&"exchange") {
        let n = ((cal.sign_per_sec / 8.0) * cli.duration as f64 * 1.3) as usize + 50;
        log(cli.json, &format!("exchange: minting {} coins to hand in", n * 8));
        let coins = rt.block_on(mint_ones(&bank, &holder, n * 8))?;
        let frames: Vec<Frame> = coins
            .chunks(8)
            .map(|c| {
                let mut r = rng::os();
                let req = ExchangeCoinsRequest {
                    request_id: rng::bytes(&mut r),
                    coins: c.to_vec(),
                    denominations: vec![Denomination::from_exponent(0).unwrap(); 8],
                    session_key: SessionKey::generate(&mut r),
                    nonce: Nonce::new(&mut r, PEER, now()),
                };
                Frame::seal_to(&mut r, &bank_x, &req).unwrap()
            })
            .collect();
        let jobs = jobs_for(&addrs, frames, ExchangeCoinsResponse::ID);
        results.push(rt.block_on(drive("exchange (8 coins)", jobs, cli.clients, duration, 8, pid)));
        check_bank(&bank.addr, &results[results.len() - 1])?;
    }

    if scenarios.contains(&"deposit") {
        let n = cli.deposit_coins / 8;
        log(cli.json, &format!("deposit: minting {} coins and signing {n} requests", n * 8));
        let coins = rt.block_on(mint_ones(&bank, &holder, n * 8))?;
        let frames: Vec<Frame> = coins
            .chunks(8)
            .map(|c| {
                let mut r = rng::os();
                let body = DepositCoins {
                    account: shop.account,
                    name: Name::new(shop.name.clone()).unwrap(),
                    request_id: rng::bytes(&mut r),
                    coins: c.to_vec(),
                    session_key: SessionKey::generate(&mut r),
                    nonce: Nonce::new(&mut r, PEER, now()),
                };
                Frame::seal_to(&mut r, &bank_x, &Signed::sign(body, &shop_id.signing).unwrap()).unwrap()
            })
            .collect();
        let jobs = jobs_for(&addrs, frames, DepositCoinsResponse::ID);
        results.push(rt.block_on(drive("deposit (8 coins)", jobs, cli.clients, duration, 8, pid)));
        check_bank(&bank.addr, &results[results.len() - 1])?;
    }

    if scenarios.contains(&"purchase") {
        for s in purchases(&rt, &bank, cli, pid)? {
            check_bank(&bank.addr, &s)?;
            results.push(s);
        }
    }

    let out = bank_harness::payme_bank(bank.dir.path(), &["audit"]);
    let audit = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("the bank's audit does not hold: {}", audit.lines().nth(1).unwrap_or("(no output)")));
    }
    if cli.json {
        println!("{}", serde_json::json!({"calibration": cal, "results": results, "audit_holds": true}));
    } else {
        println!("{}", load::table(&cal, &results));
        println!("bank audit: {}", audit.lines().nth(1).unwrap_or(""));
        targets(&cal, &results);
    }
    Ok(())
}

fn hex_tag() -> String {
    let b: [u8; 4] = rng::bytes(&mut rng::os());
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One job per frame; a worker that has no connection yet opens one to the next address
/// in turn (job i to address i mod N), then keeps it for its later jobs.
fn jobs_for(addrs: &[String], frames: Vec<Frame>, response: MessageId) -> Vec<Job> {
    frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let addr = addrs[i % addrs.len()].clone();
            Box::new(move |conn: load::Conn| {
                Box::pin(async move { load::send_expect_response(&addr, conn, f, response).await })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = (load::Conn, Result<(), String>)> + Send>>
            }) as Job
        })
        .collect()
}

/// Purchases through the wallets: light load (1 client) and saturation.
fn purchases(rt: &tokio::runtime::Runtime, bank: &TestBank, cli: &Cli, pid: &[u32]) -> Result<Vec<Stats>, String> {
    std::net::TcpStream::connect(&bank.addr)
        .map_err(|e| format!("the bank at {} does not answer before the purchases: {e}", bank.addr))?;
    let buyer = TestWallet::start("buyer", "127.0.0.2", bank, Some(1 << 40), |c| {
        c.replace("auto_approve_limit = 0", "auto_approve_limit = 1000000")
            .replace("max_pending_requests = 32", "max_pending_requests = 1024")
            .replace("max_connections_per_ip = 8", "max_connections_per_ip = 1024")
    });
    let merchant = TestWallet::start("merchant", "127.0.0.3", bank, Some(0), |c| c);
    // Pin the merchant once (the person approves, paying with a first coin), then the
    // policy pays.
    let bsock = buyer.dir.path().join("control.sock");
    rt.block_on(wallet_daemon_call(
        &bsock,
        serde_json::json!({"cmd": "withdraw", "bank": null, "amount": 8, "password": PASSWORD}),
    ))
    .map_err(|e| format!("the buyer's first withdrawal failed: {e}"))?;
    let sock = merchant.dir.path().join("control.sock");
    let from = buyer.addr.clone();
    let first = {
        let (sock, from) = (sock.clone(), from.clone());
        std::thread::spawn(move || control_collect_blocking(&sock, &from))
    };
    // The buyer's request appears, or the merchant's collect ends first (it failed).
    let mut pending = None;
    for _ in 0..300 {
        if first.is_finished() {
            break;
        }
        if let Some(p) = buyer.ok(&["pending"]).as_array().and_then(|a| a.first().cloned()) {
            pending = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(p) = pending {
        buyer.ok(&["approve", &p["id"].to_string()]);
    }
    first
        .join()
        .map_err(|_| "the first purchase's thread failed".to_owned())?
        .and_then(|v| if v["outcome"] == "paid" { Ok(v) } else { Err(v.to_string()) })
        .map_err(|e| format!("the first purchase (pinning the merchant) failed: {e}"))?;
    // Coins of exactly the price (8), one per purchase: a withdrawal of 8 is one coin.
    let expected = ((cli.duration as f64) * 700.0) as usize + 200;
    log(cli.json, &format!("purchase: withdrawing {expected} coins of 8 into the buyer's wallet"));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for chunk in 0..8 {
            let s = bsock.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..(expected / 8 + 1) {
                    let _ = wallet_daemon_call(
                        &s,
                        serde_json::json!({"cmd": "withdraw", "bank": null, "amount": 8, "password": PASSWORD}),
                    )
                    .await;
                }
                chunk
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut out = Vec::new();
    for (label, clients, secs) in
        [("purchase (light, 1)", 1usize, cli.duration.min(5)), ("purchase (saturation)", cli.clients, cli.duration)]
    {
        let jobs: Vec<Job> = (0..expected)
            .map(|_| {
                let (sock, from) = (sock.clone(), from.clone());
                Box::new(move |conn: load::Conn| {
                    Box::pin(async move {
                        let v = wallet_daemon_call(
                            &sock,
                            serde_json::json!({"cmd": "collect", "from": from, "amount": 8, "description": "load"}),
                        )
                        .await;
                        let outcome = match v {
                            Ok(v) if v["outcome"] == "paid" => Ok(()),
                            Ok(v) => Err(v.to_string()),
                            Err(e) => Err(e),
                        };
                        (conn, outcome)
                    })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = (load::Conn, Result<(), String>)> + Send>>
                }) as Job
            })
            .collect();
        out.push(rt.block_on(drive(label, jobs, clients, Duration::from_secs(secs), 1, pid)));
    }
    Ok(out)
}

async fn wallet_daemon_call(sock: &std::path::Path, req: serde_json::Value) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await.map_err(|e| e.to_string())?;
    s.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut line = String::new();
    tokio::io::BufReader::new(s).read_line(&mut line).await.map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
    if v["ok"] == true {
        Ok(v["result"].clone())
    } else {
        Err(v.to_string())
    }
}

fn control_collect_blocking(sock: &std::path::Path, from: &str) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(wallet_daemon_call(
        sock,
        serde_json::json!({"cmd": "collect", "from": from, "amount": 8, "description": "pin"}),
    ))
}

/// Puts `n` random serials straight into the stopped bank's database (with the counters
/// that keep the audit true), in batches of 100,000 per transaction.
fn preload(bank: &TestBank, n: u64) {
    use bank_daemon::store::SerialRow;
    let dir = bank_daemon::data_dir(bank.dir.path());
    // The bank's own store, SQLite or PostgreSQL, as its config says.
    let mut store = bank_daemon::admin::store_location(&dir, None).open("preload").unwrap();
    let key_id = bank.public.parse().unwrap().verifying.key_id();
    let far = now() + 365 * 86_400;
    let mut left = n;
    while left > 0 {
        let batch = left.min(100_000);
        left -= batch;
        let rows: Vec<SerialRow> = (0..batch)
            .map(|_| SerialRow { serial: Serial::random(&mut rng::os()), value: Amount::new(1), expiry: far, key_id })
            .collect();
        let mut tx = store.begin().unwrap();
        assert!(tx.issue(&rows).unwrap(), "random serials collided");
        tx.commit().unwrap();
    }
}

fn targets(cal: &Calibration, results: &[Stats]) {
    let get = |p: &str| results.iter().find(|s| s.scenario.starts_with(p));
    println!("targets:");
    for p in ["withdraw", "exchange"] {
        if let Some(s) = get(p) {
            // Coins of one response share one signature: the raw rate is per signature.
            println!(
                "  {p}: {:.0} coins/s at {} clients (target: twice cdk-mintd's {}, measured beside it by \
                 tests/bench/side-by-side.sh); raw signing {:.0}/s",
                s.coins_per_sec,
                s.clients,
                if p == "withdraw" { "mint" } else { "swap" },
                cal.sign_per_sec
            );
        }
    }
    for s in results.iter().filter(|s| s.clients >= 16) {
        println!(
            "  {} at {} clients: {} stall(s) of a second or more without a completed request, \
             longest request {:.0} ms (target: no stall): {}",
            s.scenario,
            s.clients,
            s.stalls,
            s.max_ms,
            if s.stalls == 0 { "met" } else { "MISSED" }
        );
    }
    if let Some(s) = get("deposit") {
        let met = s.coins_per_sec >= 20_000.0 && s.p99_ms < 10.0;
        println!(
            "  deposit: {:.0} coins/s (target 20,000; raw verify limit {:.0}/s), p99 {:.1} ms (target < 10): {}",
            s.coins_per_sec,
            cal.verify_per_sec,
            s.p99_ms,
            if met { "met" } else { "MISSED" }
        );
    }
    if let Some(s) = get("purchase (light") {
        println!(
            "  purchase, light load: p50 {:.1} ms (target < 5), p99 {:.1} ms (target < 20): {}",
            s.p50_ms,
            s.p99_ms,
            if s.p50_ms < 5.0 && s.p99_ms < 20.0 { "met" } else { "MISSED" }
        );
    }
    if let Some(s) = get("purchase (sat") {
        println!(
            "  purchase, saturation: {:.0}/s (target 500): {}",
            s.ops_per_sec,
            if s.ops_per_sec >= 500.0 { "met" } else { "MISSED" }
        );
    }
}

use payme_tests::load::Calibration;
