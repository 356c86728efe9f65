//! End-to-end tests of the real `payme-bank` binary on 127.0.0.1, driven by the PMTP client.
//! The bank's audit (minted - redeemed - expired = circulating; ledgers = balances) is
//! checked after each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/src/bank_harness.rs"]
mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use pmtp_client::clock::{Clock, ManualClock};
use pmtp_client::entropy::{Entropy, OsEntropy, SeededEntropy};
use pmtp_client::{BankClient, ClientError};
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::keys::Signed;
use pmtp_proto::text::{Name, Password};
use pmtp_proto::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

use pmtp_client::clock::now;

fn rid() -> [u8; 16] {
    rng::bytes(&mut rng::os())
}

fn code(e: &ClientError) -> ReasonCode {
    e.code().unwrap_or_else(|| panic!("expected a refusal, got {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_then_deposit() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 1000);
    let shop = bank.holder(2, "shop", 0);
    let c = bank.client();
    let w =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(300), vec![]).await.unwrap();
    assert_eq!(w.balance, Amount::new(700));
    assert_eq!(w.coins.len(), 4, "300 = 256 + 32 + 8 + 4: the fewest powers of two");
    let total: u64 = w.coins.iter().map(|c| c.value().minor_units()).sum();
    assert_eq!(total, 300);
    // The coins name the bank's real address (public_addr port 0 = bound address).
    assert_eq!(w.coins[0].body().bank_addr.as_str(), bank.addr);
    let d = c.deposit(&shop.identity, shop.account, "shop", [1; 16], w.coins.clone()).await.unwrap();
    let ack = d.ack.verify(&c.keys.verifying).unwrap();
    assert_eq!((ack.amount, ack.balance), (Amount::new(300), Amount::new(300)));
    assert_eq!(bank.balance(&shop).await, Amount::new(300));
    let s = c.statement(&alice.identity, alice.account, "alice", None).await.unwrap();
    assert_eq!(s.entries.len(), 2);
    assert_eq!(s.entries[1].kind, bank_statement::EntryKind::Withdrawal);
    let text = bank.assert_audit();
    assert!(text.contains("in circulation 0 (0 serials)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_exchange_deposit_and_double_spends() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 1000);
    let shop = bank.holder(2, "shop", 0);
    let c = bank.client();
    let w =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(16), vec![]).await.unwrap();
    assert_eq!(w.coins.len(), 1);
    // Break a 16 into 8 + 4 + 2 + 1 + 1.
    let want: Vec<_> = [8u64, 4, 2, 1, 1].iter().map(|v| Denomination::try_from(*v).unwrap()).collect();
    let x = c.exchange(rid(), w.coins.clone(), want).await.unwrap();
    assert_eq!(x.coins.len(), 5);
    // The old coin is spent: exchanging or depositing it again is refused.
    let again = c.exchange(rid(), w.coins.clone(), vec![]).await.unwrap_err();
    assert_eq!(code(&again), ReasonCode::COIN_NOT_IN_CIRCULATION);
    assert!(again.is_definitive());
    // A wrong split is refused and spends nothing.
    let bad = c.exchange(rid(), x.coins.clone(), vec![Denomination::try_from(8u64).unwrap()]).await.unwrap_err();
    assert_eq!(code(&bad), ReasonCode::AMOUNT_MISMATCH);
    c.deposit(&shop.identity, shop.account, "shop", [2; 16], x.coins[..2].to_vec()).await.unwrap();
    // All or nothing: one spent coin among fresh ones removes none of them.
    let mixed = vec![x.coins[0].clone(), x.coins[2].clone(), x.coins[3].clone()];
    let err = c.deposit(&shop.identity, shop.account, "shop", [3; 16], mixed).await.unwrap_err();
    assert_eq!(code(&err), ReasonCode::COIN_NOT_IN_CIRCULATION);
    assert!(err.to_string().contains(&x.coins[0].serial().to_string()), "refusal names the coin: {err}");
    c.deposit(&shop.identity, shop.account, "shop", [4; 16], x.coins[2..].to_vec()).await.unwrap();
    assert_eq!(bank.balance(&shop).await, Amount::new(16));
    // The same coin twice in one request.
    let w2 =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(1), vec![]).await.unwrap();
    let dup = vec![w2.coins[0].clone(), w2.coins[0].clone()];
    assert_eq!(code(&c.exchange(rid(), dup, vec![]).await.unwrap_err()), ReasonCode::DUPLICATE_COIN);
    bank.assert_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_deposit_is_idempotent() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let c = bank.client();
    let w =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(40), vec![]).await.unwrap();
    let first = c.deposit(&alice.identity, alice.account, "alice", [7; 16], w.coins.clone()).await.unwrap();
    // The reply was "lost": the same deposit again (fresh nonce) gets the same answer, once.
    let second = c.deposit(&alice.identity, alice.account, "alice", [7; 16], w.coins.clone()).await.unwrap();
    assert_eq!(first.ack.body, second.ack.body);
    assert_eq!(bank.balance(&alice).await, Amount::new(100));
    bank.assert_audit();
}

/// A client that lost the reply retries with the same request id: the same coins come
/// back, and the account is debited (or the old coins spent) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_withdraw_and_exchange_return_the_same_coins() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let c = bank.client();
    let id = [5; 16];
    let first =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, id, Amount::new(30), vec![]).await.unwrap();
    let again =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, id, Amount::new(30), vec![]).await.unwrap();
    assert_eq!(first.coins, again.coins);
    assert_eq!(again.balance, Amount::new(70));
    assert_eq!(bank.balance(&alice).await, Amount::new(70), "debited once");
    // The same id for a different request is refused.
    let e =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, id, Amount::new(31), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::MALFORMED);
    let x1 = c.exchange([6; 16], first.coins.clone(), vec![]).await.unwrap();
    let x2 = c.exchange([6; 16], first.coins.clone(), vec![]).await.unwrap();
    assert_eq!(x1.coins, x2.coins);
    // A fresh id for the spent coins is a double spend.
    let e = c.exchange([7; 16], first.coins.clone(), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::COIN_NOT_IN_CIRCULATION);
    let text = bank.assert_audit();
    assert!(text.contains("in circulation 30"), "{text}");
}

/// The bank stores a request's coins as bodies and signs them while it commits; a retry
/// signs them again. A key rotation signs every stored request with the old key before the
/// key goes, so a retry after it still gets the same coins, not a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_a_key_rotation_return_the_same_coins() {
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let c = bank.client();
    let first =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, [5; 16], Amount::new(30), vec![]).await.unwrap();
    let x1 = c.exchange([6; 16], first.coins[..1].to_vec(), vec![]).await.unwrap();
    bank.stop();
    let o = payme_bank(bank.dir.path(), &["key", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    bank.restart();
    // The harness's client still holds the old key, which these coins must verify under.
    let c = bank.client();
    let again =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, [5; 16], Amount::new(30), vec![]).await.unwrap();
    assert_eq!(first.coins, again.coins);
    let x2 = c.exchange([6; 16], first.coins[..1].to_vec(), vec![]).await.unwrap();
    assert_eq!(x1.coins, x2.coins);
    assert_eq!(bank.balance(&alice).await, Amount::new(70), "debited once");
    bank.assert_audit();
}

/// A merchant prepares (connects and signs) its deposit while it records the payment, and
/// sends it only once that is durable: a prepared deposit dropped unsent deposits nothing,
/// and one sent is credited once, with an acknowledgement for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_deposit_counts_only_once_sent() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let shop = bank.holder(2, "shop", 0);
    let c = bank.client();
    let w =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(40), vec![]).await.unwrap();
    let dropped = c.prepare_deposit(&shop.identity, shop.account, "shop", [3; 16], w.coins.clone()).await.unwrap();
    assert_eq!(dropped.request().body.request_id, [3; 16]);
    drop(dropped);
    assert_eq!(bank.balance(&shop).await, Amount::ZERO, "nothing sent, nothing deposited");
    let prepared = c.prepare_deposit(&shop.identity, shop.account, "shop", [4; 16], w.coins.clone()).await.unwrap();
    let d = c.send_deposit(prepared).await.unwrap();
    let ack = d.ack.verify(&c.keys.verifying).unwrap();
    assert_eq!((ack.amount, ack.balance, ack.request_id), (Amount::new(40), Amount::new(40), [4; 16]));
    assert_eq!(bank.balance(&shop).await, Amount::new(40));
    let text = bank.assert_audit();
    assert!(text.contains("in circulation 0 (0 serials)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_name_signature_and_funds() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 50);
    let c = bank.client();
    let id = &alice.identity;
    let e =
        c.withdraw(id, alice.account, "alice", "not the password", rid(), Amount::new(5), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::WRONG_PASSWORD);
    let e = c.withdraw(id, alice.account, "mallory", PASSWORD, rid(), Amount::new(5), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::BAD_SIGNATURE);
    let e = c.withdraw(id, AccountId(999_999), "alice", PASSWORD, rid(), Amount::new(5), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::UNKNOWN_ACCOUNT);
    // Without the owner's key, the right name and a wrong one get the same refusal: the
    // bank is no oracle for the name on an account.
    let other = pmtp_proto::testing::identity(3);
    let right = c.withdraw(&other, alice.account, "alice", PASSWORD, rid(), Amount::new(5), vec![]).await.unwrap_err();
    let wrong =
        c.withdraw(&other, alice.account, "mallory", PASSWORD, rid(), Amount::new(5), vec![]).await.unwrap_err();
    assert_eq!(code(&right), ReasonCode::BAD_SIGNATURE);
    assert_eq!(right.to_string(), wrong.to_string(), "one refusal for a wrong key, whatever the name");
    let s = c.statement(&other, alice.account, "alice", None).await.unwrap_err();
    let s2 = c.statement(&other, alice.account, "bob", None).await.unwrap_err();
    assert_eq!((code(&s), s.to_string()), (code(&s2), s2.to_string()));
    let e = c.withdraw(id, alice.account, "alice", PASSWORD, rid(), Amount::new(51), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::INSUFFICIENT_FUNDS);
    let e = c.withdraw(id, alice.account, "alice", PASSWORD, rid(), Amount::new(0), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::INVALID_AMOUNT);
    // Back-off: after three wrong passwords the account locks, even for the right one.
    for _ in 0..3 {
        let _ = c.withdraw(id, alice.account, "alice", "guess", rid(), Amount::new(5), vec![]).await.unwrap_err();
    }
    let e = c.withdraw(id, alice.account, "alice", PASSWORD, rid(), Amount::new(5), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::TOO_MANY_ATTEMPTS, "{e}");
    assert!(!e.is_definitive(), "a lock is temporary");
    assert_eq!(bank.balance(&alice).await, Amount::new(50), "nothing moved");
    bank.assert_audit();
}

/// Builds a withdraw request frame by hand so it can be sent more than once.
fn withdraw_frame(bank: &TestBank, h: &Holder, amount: u64) -> (Frame, SessionKey) {
    let mut rng = rng::os();
    let sk = SessionKey::generate(&mut rng);
    let body = WithdrawCoins {
        account: h.account,
        name: Name::new(h.name.clone()).unwrap(),
        password: Password::new(PASSWORD).unwrap(),
        request_id: rid(),
        amount: Amount::new(amount),
        denominations: vec![],
        session_key: sk.clone(),
        nonce: Nonce::new(&mut rng, "127.0.0.1".parse().unwrap(), now()),
    };
    let req = Signed::sign(body, &h.identity.signing).unwrap();
    let frame = Frame::seal_to(&mut rng, &bank.public.parse().unwrap().x25519, &req).unwrap();
    (frame, sk)
}

async fn send(addr: &str, frame: Frame) -> Frame {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, PmtpCodec::default());
    framed.send(frame).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), framed.next()).await.unwrap().unwrap().unwrap()
}

fn refusal_code(reply: &Frame, sk: &SessionKey) -> Option<ReasonCode> {
    match reply.open_reply::<WithdrawCoinsRequest>(sk).unwrap() {
        Reply::Response(_) => None,
        Reply::Refused(r) => Some(r.code),
        Reply::PlainRefused(p) => Some(p.code),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_request_is_refused_also_after_restart() {
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    let (frame, sk) = withdraw_frame(&bank, &alice, 10);
    assert_eq!(refusal_code(&send(&bank.addr, frame.clone()).await, &sk), None, "first is served");
    assert_eq!(refusal_code(&send(&bank.addr, frame.clone()).await, &sk), Some(ReasonCode::NONCE_REPLAY));
    // A restart empties the in-memory cache; the durable nonce table still refuses it.
    bank.stop();
    bank.restart();
    assert_eq!(refusal_code(&send(&bank.addr, frame.clone()).await, &sk), Some(ReasonCode::NONCE_REPLAY));
    assert_eq!(bank.balance(&alice).await, Amount::new(90), "debited once");
    bank.assert_audit();
}

/// A bank's data directory served in this process, its time read from a clock the test
/// moves: expiry and nonce windows are tested without sleeping through them.
struct InProcess {
    bank: Option<std::sync::Arc<bank_daemon::Bank>>,
    addr: String,
    clock: std::sync::Arc<ManualClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    writer: Option<bank_daemon::writer::WriterThread>,
    _lock: std::fs::File,
}

/// Opens alice's account (100) at `bank`, stops its binary and serves its directory in
/// this process instead, on a clock the test moves.
async fn alice_served_here(bank: &mut TestBank) -> (Holder, std::sync::Arc<ManualClock>, InProcess) {
    let alice = bank.holder(1, "alice", 100);
    bank.stop();
    let clock = std::sync::Arc::new(ManualClock::new(now()));
    let served = InProcess::serve(bank, clock.clone()).await;
    (alice, clock, served)
}

impl InProcess {
    /// Serves `bank`'s directory (whose binary the caller has stopped) on 127.0.0.1:0.
    async fn serve(bank: &TestBank, clock: std::sync::Arc<ManualClock>) -> InProcess {
        Self::serve_with(bank, clock, std::sync::Arc::new(OsEntropy)).await
    }

    /// [`InProcess::serve`], the bank drawing its randomness from `entropy`.
    async fn serve_with(
        bank: &TestBank,
        clock: std::sync::Arc<ManualClock>,
        entropy: std::sync::Arc<dyn Entropy>,
    ) -> InProcess {
        let dir = bank_daemon::data_dir(bank.data_dir());
        let mut cfg = bank_daemon::config::Config::load(&dir.config()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        cfg.public_addr = addr.clone();
        let (b, writer, lock) = bank_daemon::admin::open_bank(&dir, cfg, PASSPHRASE, clock.clone(), entropy).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(bank_daemon::server::serve(b.clone(), listener, async move {
            let _ = stopped.await;
        }));
        InProcess {
            bank: Some(b),
            addr,
            clock,
            stop: Some(stop),
            served: Some(served),
            writer: Some(writer),
            _lock: lock,
        }
    }

    /// A client whose clock is the bank's.
    fn client(&self) -> BankClient {
        let bank = self.bank.as_ref().unwrap();
        let mut c = BankClient::new(self.addr.clone(), &bank.identity.public()).unwrap();
        c.clock = self.clock.clone();
        c
    }

    /// Stops serving, lets the writer drain, and releases the directory.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.served.take().unwrap().await.unwrap();
        drop(self.bank.take());
        let writer = self.writer.take().unwrap();
        tokio::task::spawn_blocking(move || writer.join()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_draws_serials_from_the_entropy_it_is_given() {
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    bank.stop();
    let seed = [7; 32];
    let served = InProcess::serve_with(
        &bank,
        std::sync::Arc::new(ManualClock::new(now())),
        std::sync::Arc::new(SeededEntropy::new(seed)),
    )
    .await;
    let w = served
        .client()
        .withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(7), vec![])
        .await
        .unwrap();
    served.stop().await;
    // The first draws of a seeded bank are the serials of the first coins it mints.
    let mine = SeededEntropy::new(seed);
    let mut rng = pmtp_client::entropy::rng(&mine);
    let expected: Vec<Serial> = (0..3).map(|_| Serial::random(&mut rng)).collect();
    let mut got: Vec<Serial> = w.coins.iter().map(|c| c.body().serial).collect();
    assert_eq!(got.len(), 3, "7 = 4 + 2 + 1");
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);
    bank.assert_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_coins_are_refused_and_purged() {
    let mut bank =
        TestBank::start_with("bank-a", |c| c.replace("coin_lifetime_secs = 31536000", "coin_lifetime_secs = 60"));
    let (alice, clock, served) = alice_served_here(&mut bank).await;
    let c = served.client();
    let w =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(12), vec![]).await.unwrap();
    clock.advance(61);
    let e = c.deposit(&alice.identity, alice.account, "alice", [1; 16], w.coins.clone()).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::COIN_EXPIRED);
    // A purge round at the bank's time removes the expired serials and counts them.
    let purged = served.bank.as_ref().unwrap().purge_expired(clock.now()).await.unwrap();
    assert_eq!(purged, 2, "12 = 8 + 4");
    served.stop().await;
    let text = bank.assert_audit();
    assert!(text.contains("expired 12 (2 coins)") && text.contains("in circulation 0 (0 serials)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_refusals_and_the_bank_keeps_serving() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 100);
    // Oversize length: a plain refusal, then the connection closes; nothing is allocated.
    let mut s = tokio::net::TcpStream::connect(&bank.addr).await.unwrap();
    s.write_all(b"PMTP\x01\x11\x00\x20\x00\x00").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let f = Frame::decode_exact(&buf, 1 << 20).unwrap();
    assert_eq!(f.id, DepositCoinsRefusal::ID);
    match f.envelope().unwrap() {
        frame::Envelope::Plain(p) => assert_eq!(p.code, ReasonCode::FRAME_TOO_LARGE),
        other => panic!("{other:?}"),
    }
    // Unknown version and garbage: the connection is closed (with a refusal where one fits).
    for bytes in [&b"PMTP\x09\x01\x00\x00\x00\x00"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut s = tokio::net::TcpStream::connect(&bank.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
        if bytes.starts_with(b"PMTP") {
            let f = Frame::decode_exact(&buf, 1 << 20).unwrap();
            assert!(
                matches!(f.envelope().unwrap(), frame::Envelope::Plain(p) if p.code == ReasonCode::UNSUPPORTED_VERSION)
            );
        } else {
            assert!(buf.is_empty(), "no reply to non-PMTP bytes");
        }
    }
    // A valid header with a body that does not open: a plain `malformed` refusal.
    let s = tokio::net::TcpStream::connect(&bank.addr).await.unwrap();
    let mut framed = Framed::new(s, PmtpCodec::default());
    framed.send(Frame { id: ExchangeCoinsRequest::ID, body: bytes::Bytes::from_static(b"abc") }).await.unwrap();
    let f = framed.next().await.unwrap().unwrap();
    assert!(matches!(f.envelope().unwrap(), frame::Envelope::Plain(p) if p.code == ReasonCode::MALFORMED));
    // A request sent to the bank that a bank does not serve.
    let mut s = tokio::net::TcpStream::connect(&bank.addr).await.unwrap();
    s.write_all(b"PMTP\x01\x51\x00\x00\x00\x00").await.unwrap();
    let mut framed = Framed::new(s, PmtpCodec::default());
    let f = framed.next().await.unwrap().unwrap();
    assert_eq!(f.id, PayCoinsRefusal::ID);
    // Still serving real clients.
    let c = bank.client();
    c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(1), vec![]).await.unwrap();
    bank.assert_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_coins_are_refused() {
    let bank_a = TestBank::start_with("bank-a", |c| c);
    let bank_b = TestBank::start_with("bank-b", |c| c);
    let alice = bank_b.holder(1, "alice", 100);
    let w = bank_b
        .client()
        .withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(8), vec![])
        .await
        .unwrap();
    let shop = bank_a.holder(2, "shop", 0);
    let e = bank_a.client().deposit(&shop.identity, shop.account, "shop", [1; 16], w.coins.clone()).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::COIN_FOREIGN_BANK);
    assert!(e.to_string().contains("bank-b"), "{e}");
    bank_a.assert_audit();
    bank_b.assert_audit();
}

/// 64 concurrent spends of the same coin over separate connections: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_spends_of_one_coin() {
    // 64 connections from one address at once: the per-source limit (16 by default) would
    // close most at accept, and this test is about the spends, not the connection limit.
    let bank =
        TestBank::start_with("bank-a", |c| c.replace("max_connections_per_ip = 16", "max_connections_per_ip = 128"));
    let alice = bank.holder(1, "alice", 1000);
    let shop = std::sync::Arc::new(bank.holder(2, "shop", 0));
    let c = bank.client();
    for round in 0..2u8 {
        let w =
            c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(4), vec![]).await.unwrap();
        let ok = spend_64_ways(&[bank.client()], shop.clone(), w.coins, round).await;
        assert_eq!(ok, 1, "round {round}: exactly one spend succeeds");
    }
    bank.assert_audit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_can_be_switched_off() {
    let bank = TestBank::start_with("cpu-bank", |c| c.replace("exchange_enabled = true", "exchange_enabled = false"));
    let alice = bank.holder(1, "alice", 10);
    let c = bank.client();
    let w = c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(2), vec![]).await.unwrap();
    let e = c.exchange(rid(), w.coins.clone(), vec![]).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::EXCHANGE_DISABLED);
    c.deposit(&alice.identity, alice.account, "alice", [1; 16], w.coins).await.unwrap();
    bank.assert_audit();
}

#[test]
fn second_daemon_on_one_data_dir_is_refused_and_sigterm_stops_cleanly() {
    let mut bank = TestBank::start();
    let out = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(bank.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PAYME_BANK_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another payme-bank"), "{err}");
    bank.stop();
}

#[test]
fn wrong_passphrase_is_a_clear_error() {
    let mut bank = TestBank::start();
    bank.stop();
    let out = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(bank.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PAYME_BANK_PASSPHRASE", "not it")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// CPU time (user + system) the process has used, from /proc/PID/stat, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap(); // utime, stime
    let hz = String::from_utf8(std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap_or(100);
    ticks * 1000 / hz
}

/// Regression: a doomed request (a spent coin to exchange, a withdrawal the balance cannot
/// cover, a retry) used to make the bank sign every coin asked for before finding out (1024
/// coins: 2 CPU-seconds each time). The checks now come first, and a request can ask for at
/// most `max_coins_minted_per_request` new coins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doomed_requests_cost_no_signatures() {
    let bank = TestBank::start();
    let alice = bank.holder(1, "alice", 1 << 20);
    let c = bank.client();
    let pid = bank.child.as_ref().unwrap().id();
    let ones = |n: usize| vec![Denomination::try_from(1u64).unwrap(); n];
    let big = |v: u64| vec![Denomination::try_from(v).unwrap()];
    // A coin of 1024 and one of 64, spent by exchange; a first withdrawal warms the
    // password cache, so Argon2 is not counted below.
    let w = c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(1024), big(1024));
    let spent_1024 = w.await.unwrap().coins;
    let w = c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(64), big(64));
    let spent_64 = w.await.unwrap().coins;
    c.exchange(rid(), spent_1024.clone(), vec![]).await.unwrap();
    c.exchange(rid(), spent_64.clone(), vec![]).await.unwrap();
    let retry_id = rid();
    let first = c
        .withdraw(&alice.identity, alice.account, "alice", PASSWORD, retry_id, Amount::new(64), ones(64))
        .await
        .unwrap();
    let balance = bank.balance(&alice).await;

    let before = cpu_ms(pid);
    for _ in 0..5 {
        // 1024 new coins is more than one request may ask for.
        let e = c.exchange(rid(), spent_1024.clone(), ones(1024)).await.unwrap_err();
        assert_eq!(code(&e), ReasonCode::TOO_MANY_COINS);
        // The most a request may ask for, for a spent coin.
        let e = c.exchange(rid(), spent_64.clone(), ones(64)).await.unwrap_err();
        assert_eq!(code(&e), ReasonCode::COIN_NOT_IN_CIRCULATION);
        // More than the balance.
        let amount = Amount::new(balance.minor_units() + 64);
        let e = c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), amount, vec![]).await;
        assert_eq!(code(&e.unwrap_err()), ReasonCode::INSUFFICIENT_FUNDS);
        // A retry returns the coins it was given: stored signed, or (until the background
        // round writes them back) its stored bodies signed again, one signature for all 64.
        let again = c
            .withdraw(&alice.identity, alice.account, "alice", PASSWORD, retry_id, Amount::new(64), ones(64))
            .await
            .unwrap();
        assert_eq!(again.coins, first.coins);
    }
    let used = cpu_ms(pid) - before;
    // 20 requests; signing what they asked for would take 5 x (1024 + 64 + 64) RSA
    // signatures, several CPU-seconds. Opening, checking and answering them takes a few ms.
    println!("bank CPU for 20 doomed or retried requests: {used} ms");
    assert!(used < 300, "the bank spent {used} ms of CPU on requests it refused or had answered");
    assert_eq!(bank.balance(&alice).await, balance, "nothing was charged");
    bank.assert_audit();
}

/// Runs `payme-bank serve` on a bank that must refuse to start; returns what it said.
/// Bounded: 30 s, then the test fails (it would be serving).
fn serve_must_refuse(bank: &TestBank) -> String {
    let mut child = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(bank.dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PAYME_BANK_PASSPHRASE", PASSPHRASE)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "serve should refuse: {err}");
            return err;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("payme-bank serve started on a damaged database");
}

fn flip_all(path: &std::path::Path, pattern: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i + pattern.len() <= bytes.len() {
        if &bytes[i..i + pattern.len()] == pattern {
            bytes[i + pattern.len() - 1] ^= 0x01;
            n += 1;
        }
        i += 1;
    }
    std::fs::write(path, bytes).unwrap();
    n
}

/// Regression: one flipped byte in an account's balance was served in statements. The
/// bank checks its database at start (SQLite's integrity check, and the audit with every
/// ledger against its balance) and refuses to serve a damaged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_balance_byte_stops_the_bank_at_start() {
    let mut bank = TestBank::start();
    // A balance whose bytes appear nowhere else: credited 0x3A5B7C9D1F, then 1 withdrawn.
    let alice = bank.holder(1, "alice", 0x3A_5B7C_9D1F);
    let c = bank.client();
    c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(1), vec![]).await.unwrap();
    bank.stop();
    let db = bank.dir.path().join("bank.db");
    let wal = bank.dir.path().join("bank.db-wal");
    assert!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0, "a clean stop leaves no WAL to recover");
    // SQLite stores 0x3A5B7C9D1E as a 6-byte big-endian integer.
    let flipped = flip_all(&db, &[0x00, 0x3A, 0x5B, 0x7C, 0x9D, 0x1E]);
    assert!(flipped >= 1, "the balance is in the database file");
    let said = serve_must_refuse(&bank);
    assert!(said.contains("audit failed") && said.contains("ledger"), "{said}");
    assert!(said.contains("Restore the data directory from a backup"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
}

/// Regression: after kill -9, a damaged WAL tail made SQLite silently drop a committed
/// deposit (its coins back in circulation, the depositor's wallet holding them as spent).
/// The bank reads the WAL itself before SQLite opens it, and refuses to serve, or to run
/// an admin command that would let SQLite drop the frames, when committed ones are damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_wal_after_kill_9_stops_the_bank_at_start() {
    let mut bank = TestBank::start();
    let alice = bank.holder(1, "alice", 1000);
    let shop = bank.holder(2, "shop", 0);
    let c = bank.client();
    let w = c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, rid(), Amount::new(300), vec![]);
    let coins = w.await.unwrap().coins;
    c.deposit(&shop.identity, shop.account, "shop", rid(), coins).await.unwrap();
    let mut child = bank.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let wal = bank.dir.path().join("bank.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len() as usize;
    assert!(len > 4096, "the crash left committed frames in the WAL");
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[len - 100] ^= 0x40; // inside the last committed frame
    std::fs::write(&wal, &bytes).unwrap();
    let said = serve_must_refuse(&bank);
    assert!(said.contains("write-ahead log") && said.contains("committed"), "{said}");
    // An admin command refuses too, instead of letting SQLite drop the frames.
    let out = payme_bank(bank.dir.path(), &["audit"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("write-ahead log"));
    // Undamaged, the same crash recovers: restore the byte and the bank serves again.
    bytes[len - 100] ^= 0x40;
    std::fs::write(&wal, &bytes).unwrap();
    bank.restart();
    assert_eq!(bank.balance(&shop).await, Amount::new(300), "the deposit survived the crash");
    bank.assert_audit();
}

/// Clearing, driven in-process: bank A served in this process with peer B down, a
/// deposit of B's coins at A is held (the audit counts it) and refused as retryable; the
/// test then runs A's resolver itself once B is back, instead of waiting for its timer,
/// and the depositor's retry gets the credit, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_resolved_in_process_when_the_peer_returns() {
    let mut banks = vec![TestBank::start_with("bank-a", |c| c), TestBank::start_with("bank-b", |c| c)];
    connect_banks(&mut banks);
    let holder = banks[1].holder(1, "holder", 100);
    let dep = banks[0].holder(2, "dep", 0);
    let own = banks[0].holder(3, "own", 10);
    let (cb, ca) = (banks[1].client(), banks[0].client());
    let w_b = cb.withdraw(&holder.identity, holder.account, "holder", PASSWORD, rid(), Amount::new(12), vec![]);
    let mut coins = w_b.await.unwrap().coins;
    let w_a = ca.withdraw(&own.identity, own.account, "own", PASSWORD, rid(), Amount::new(8), vec![]);
    coins.extend(w_a.await.unwrap().coins);
    for b in banks.iter_mut() {
        b.stop();
    }
    let clock = std::sync::Arc::new(ManualClock::new(now()));
    let a = InProcess::serve(&banks[0], clock.clone()).await;
    let c = a.client();
    let request = rid();
    let e = c.deposit(&dep.identity, dep.account, "dep", request, coins.clone()).await.unwrap_err();
    assert_eq!(code(&e), ReasonCode::PEER_BANK_UNAVAILABLE, "{e}");
    let bank_a = a.bank.clone().unwrap();
    // While B is down, A's own coin of 8 is held, and the audit counts it there.
    let mut store = bank_daemon::store::sqlite::SqliteStore::open(&banks[0].data_dir().join("bank.db")).unwrap();
    let report = bank_daemon::admin::audit_store(&mut store).unwrap();
    drop(store);
    assert!(report.holds(), "{}", report.describe());
    assert_eq!(report.held.value, Amount::new(8));
    banks[1].restart_same_port();
    bank_daemon::clearing::resolve_pending(&bank_a).await;
    let ack = c.deposit(&dep.identity, dep.account, "dep", request, coins.clone()).await.unwrap();
    assert_eq!(ack.ack.body.amount, Amount::new(20));
    // Once: asking again returns the same acknowledgement, and B credited A once.
    let again = c.deposit(&dep.identity, dep.account, "dep", request, coins).await.unwrap();
    assert_eq!(again.ack.body.balance, Amount::new(20));
    drop(bank_a);
    a.stop().await;
    assert_eq!(banks[1].accounts().iter().find(|x| x.1 == "bank-a").map(|x| x.2), Some(12));
    for b in &banks {
        b.assert_audit();
    }
}

/// A withdrawal's transaction stores its coins' bodies and the coins are signed meanwhile;
/// the background round then writes the signed coins over the bodies, so a retry reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_coins_are_written_back_over_their_bodies() {
    let mut bank = TestBank::start();
    let (alice, _clock, served) = alice_served_here(&mut bank).await;
    let b = served.bank.clone().unwrap();
    let c = served.client();
    let request_id = rid();
    let w = c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, request_id, Amount::new(12), vec![]).await;
    let coins = w.unwrap().coins;
    let stored = move || {
        let b = b.clone();
        async move { b.readers.read(move |tx| tx.issued(&request_id)).await.unwrap().unwrap().coins.unwrap() }
    };
    assert!(stored().await.starts_with(bank_daemon::store::UNSIGNED_COINS), "bodies first");
    let b = served.bank.clone().unwrap();
    assert_eq!(bank_daemon::handlers::write_back_signed(&b).await.unwrap(), 1);
    assert_eq!(bank_daemon::handlers::write_back_signed(&b).await.unwrap(), 0, "once");
    let signed: Vec<Coin> = bincode::deserialize(&stored().await).unwrap();
    assert_eq!(signed, coins, "the very coins the withdrawal returned");
    let again =
        c.withdraw(&alice.identity, alice.account, "alice", PASSWORD, request_id, Amount::new(12), vec![]).await;
    assert_eq!(again.unwrap().coins, coins);
    drop((b, stored)); // the writer stops when its last handle is gone
    served.stop().await;
    bank.assert_audit();
}

/// A withdrawal whose node stopped between its steps (debited and reserved, never signed)
/// is finished by the background round: the coins are minted under its request id, they
/// deposit, and the audit holds; a round before the grace period leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_withdrawal_is_finished_by_the_background_round() {
    use bank_daemon::store::IssuedRow;
    let mut bank = TestBank::start();
    let (alice, clock, served) = alice_served_here(&mut bank).await;
    let b = served.bank.clone().unwrap();
    let t0 = clock.now();
    let plan = bincode::serialize(&Denomination::split(Amount::new(12)).unwrap()).unwrap();
    let (account, request_id) = (alice.account, rid());
    // Step 1 alone, as a node that died right after it would leave it.
    b.writer
        .run(move |tx| {
            let balance = tx
                .debit(account, Amount::new(12), t0, bank_statement::EntryKind::Withdrawal, "coins withdrawn")?
                .unwrap();
            tx.reserve_issue(&IssuedRow {
                request_id,
                input_hash: [0; 32],
                plan: plan.clone(),
                coins: None,
                balance: Some(balance),
                time: t0,
            })
        })
        .await
        .unwrap()
        .unwrap();
    let after = bank_daemon::handlers::RESUME_AFTER_SECS;
    assert_eq!(bank_daemon::handlers::resume_issues(&b, t0 + 1, after).await.unwrap(), 0, "in progress");
    assert_eq!(bank_daemon::handlers::resume_issues(&b, t0 + after, after).await.unwrap(), 1);
    assert_eq!(bank_daemon::handlers::resume_issues(&b, t0 + after, after).await.unwrap(), 0, "once");
    let row = b.readers.read(move |tx| tx.issued(&request_id)).await.unwrap().unwrap();
    let coins: Vec<Coin> = bincode::deserialize(&row.coins.unwrap()).unwrap();
    assert_eq!(Amount::checked_sum(coins.iter().map(|c| c.value())).unwrap(), Amount::new(12));
    let c = served.client();
    let d = c.deposit(&alice.identity, alice.account, "alice", rid(), coins).await.unwrap();
    assert_eq!(d.ack.body.balance, Amount::new(100), "debited 12 at step 1, credited 12 back");
    drop(b); // the writer stops when its last handle is gone
    served.stop().await;
    let text = bank.assert_audit();
    assert!(text.contains("in circulation 0 (0 serials)"), "{text}");
}
