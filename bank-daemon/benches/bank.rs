//! Whole bank operations through the request dispatcher (everything but TCP): withdraw,
//! deposit and exchange of 8 coins, with durable SQLite commits in a temporary directory.
//! `cargo bench -p bank-daemon --bench bank`; figures in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that fails should stop loudly

use bank_daemon::config::Config;
use bank_daemon::store::{sqlite::SqliteStore, SerialRow, Store};
use bank_daemon::writer::{Readers, Writer};
use bank_daemon::Bank;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pmtp_proto::coin::{CoinBody, Serial};
use pmtp_proto::keys::{Identity, Signed};
use pmtp_proto::text::{Name, Password};
use pmtp_proto::*;
use rayon::prelude::*;
use std::net::IpAddr;
use std::sync::Arc;

const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const PASSWORD: &str = "bench password";

struct Setup {
    bank: Arc<Bank>,
    owner: Identity,
    account: AccountId,
    bank_x: x25519_dalek::PublicKey,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

use pmtp_client::clock::now;

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let mut store = SqliteStore::open(&db).unwrap();
    let owner = pmtp_proto::testing::named_identity(1, "bench");
    let account = {
        let mut tx = store.begin().unwrap();
        let hash = bank_daemon::admin::hash_password(PASSWORD).unwrap();
        let id = tx.create_account("bench", &bincode::serialize(&owner.public()).unwrap(), &hash, now()).unwrap();
        tx.credit(id, Amount::new(1 << 50), now(), bank_statement::EntryKind::CounterCredit, "bench").unwrap();
        tx.commit().unwrap();
        id
    };
    let config = Config { bank_id: "bank-a".into(), ..Config::default() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let bank = rt.block_on(async {
        let (writer, _thread) = Writer::start(Box::new(store), config.limits.commit_batch, 4096);
        let readers =
            Readers::new(Box::new(move || SqliteStore::open_reader(&db).map(|s| Box::new(s) as Box<dyn Store>)));
        Arc::new(Bank::new(config, pmtp_proto::testing::named_identity(0, "bank-a"), writer, readers).unwrap())
    });
    let bank_x = bank.identity.public().parse().unwrap().x25519;
    Setup { bank, owner, account, bank_x, rt, _dir: dir }
}

fn eight() -> Vec<Denomination> {
    (0..8).map(|e| Denomination::from_exponent(e).unwrap()).collect()
}

/// Mints `n` sets of 8 coins straight into circulation (bench preparation, all cores).
fn coins_in_circulation(s: &Setup, n: usize) -> Vec<Vec<Coin>> {
    let key = &s.bank.identity.signing;
    let sets: Vec<Vec<Coin>> = (0..n)
        .into_par_iter()
        .map(|_| {
            eight()
                .into_iter()
                .map(|d| {
                    let body = CoinBody {
                        value: d,
                        serial: Serial::random(&mut rng::os()),
                        bank_id: s.bank.bank_id.clone(),
                        bank_addr: s.bank.public_addr.clone(),
                        expiry: now() + 86_400,
                        key_id: key.verifying_key().key_id(),
                    };
                    Coin::mint(body, key).unwrap()
                })
                .collect()
        })
        .collect();
    let rows: Vec<SerialRow> = sets
        .iter()
        .flatten()
        .map(|c| SerialRow { serial: c.serial(), value: c.value(), expiry: c.body().expiry, key_id: c.body().key_id })
        .collect();
    s.rt.block_on(s.bank.writer.run(move |tx| tx.issue(&rows).map(|_| ()))).unwrap().unwrap();
    sets
}

fn run(s: &Setup, frame: Frame) -> Frame {
    s.rt.block_on(bank_daemon::handlers::dispatch(&s.bank, frame, PEER)).unwrap()
}

fn bank_ops(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("bank_8_coins");
    g.sample_size(30);
    g.throughput(Throughput::Elements(8));

    g.bench_function("withdraw", |b| {
        b.iter_batched(
            || {
                let mut r = rng::os();
                let sk = SessionKey::generate(&mut r);
                let body = WithdrawCoins {
                    account: s.account,
                    name: Name::new("bench").unwrap(),
                    password: Password::new(PASSWORD).unwrap(),
                    request_id: rng::bytes(&mut r),
                    amount: Amount::new(255),
                    denominations: eight(),
                    session_key: sk.clone(),
                    nonce: Nonce::new(&mut r, PEER, now()),
                };
                (Frame::seal_to(&mut r, &s.bank_x, &Signed::sign(body, &s.owner.signing).unwrap()).unwrap(), sk)
            },
            |(f, sk)| {
                let reply = run(&s, f);
                assert!(matches!(reply.open_reply::<WithdrawCoinsRequest>(&sk).unwrap(), Reply::Response(_)));
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("deposit", |b| {
        b.iter_batched(
            || {
                let mut r = rng::os();
                let sk = SessionKey::generate(&mut r);
                let body = DepositCoins {
                    account: s.account,
                    name: Name::new("bench").unwrap(),
                    request_id: rng::bytes(&mut r),
                    coins: coins_in_circulation(&s, 1).remove(0),
                    session_key: sk.clone(),
                    nonce: Nonce::new(&mut r, PEER, now()),
                };
                (Frame::seal_to(&mut r, &s.bank_x, &Signed::sign(body, &s.owner.signing).unwrap()).unwrap(), sk)
            },
            |(f, sk)| {
                let reply = run(&s, f);
                assert!(matches!(reply.open_reply::<DepositCoinsRequest>(&sk).unwrap(), Reply::Response(_)));
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("exchange", |b| {
        b.iter_batched(
            || {
                let mut r = rng::os();
                let sk = SessionKey::generate(&mut r);
                let req = ExchangeCoinsRequest {
                    request_id: rng::bytes(&mut r),
                    coins: coins_in_circulation(&s, 1).remove(0),
                    denominations: eight(),
                    session_key: sk.clone(),
                    nonce: Nonce::new(&mut r, PEER, now()),
                };
                (Frame::seal_to(&mut r, &s.bank_x, &req).unwrap(), sk)
            },
            |(f, sk)| {
                let reply = run(&s, f);
                assert!(matches!(reply.open_reply::<ExchangeCoinsRequest>(&sk).unwrap(), Reply::Response(_)));
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bank_ops);
criterion_main!(benches);
