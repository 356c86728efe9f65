//! Hardening of the wallet's peer-facing side, end to end: real payme-bank and
//! payme-wallet processes on loopback, and hostile peers built from pmtp-proto on other
//! 127.0.0.x addresses.
//!
//! - a flood of payment requests from one address gets only its share of the pending list;
//! - text a peer wrote (descriptions, refusals) is escaped in history, collect and logs;
//! - a coin offered twice (in one payment, or by a copied wallet) is refused as a duplicate;
//! - an idle control connection is closed;
//! - the CLI exits cleanly on a closed pipe and refuses amounts above the protocol maximum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{SinkExt, StreamExt};
use payme_tests::bank_harness::{TestBank, PASSWORD};
use payme_tests::wallet_harness::{bin, TestWallet};
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::keys::PeerKeys;
use pmtp_proto::text::ReasonText;
use pmtp_proto::*;
use serde_json::Value;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, PmtpCodec>;

/// An OSC title change, a bell and a colour change: what a hostile peer writes.
const EVIL: &str = "\u{1b}]0;pwned\u{7}\u{1b}[31m";
/// The same, as `escape_control` shows it.
const EVIL_ESCAPED: &str = "\\u{1b}]0;pwned\\u{7}\\u{1b}[31m";

use pmtp_client::clock::now;

/// Polls `f` (bounded: 300 tries, 15 s) until it returns something.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Runs a client subcommand for a person (no --json): (exit code, stdout, stderr).
fn human(w: &TestWallet, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin()).arg("--data-dir").arg(w.dir.path()).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn assert_no_control_characters(what: &str, text: &str) {
    assert!(!text.contains(['\u{1b}', '\u{7}']), "{what} carries raw escape sequences: {text:?}");
}

/// A log, escaped: no raw escape sequence, and no line a peer forged with a newline.
fn assert_log_escaped(log: &str) {
    assert_no_control_characters("the daemon log", log);
    assert!(!log.lines().any(|l| l.starts_with("FAKE LOG LINE")), "a peer forged a log line:\n{log}");
}

/// Next frame on `conn`, within 20 s.
async fn next_frame(conn: &mut Conn) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), conn.next()).await.expect("a frame in time").unwrap().unwrap()
}

/// A merchant built from pmtp-proto: connects from `source` to the buyer's wallet and sends
/// a signed ask_payment_request.
async fn send_ask(source: [u8; 4], buyer: &str, me: &Identity, amount: u64, description: &str) -> Conn {
    let s = payme_tests::replay::connect_from(IpAddr::from(source), buyer).await.unwrap();
    let ask = Signed::sign(
        AskPayment {
            amount: Amount::new(amount),
            merchant: me.public(),
            description: description.try_into().unwrap(),
            accepted_banks: vec![],
            nonce: Nonce::new(&mut rng::os(), IpAddr::from(source), now()),
        },
        &me.signing,
    )
    .unwrap();
    let mut conn = Framed::new(s, PmtpCodec::new(1 << 20));
    conn.send(Frame::clear(&ask).unwrap()).await.unwrap();
    conn
}

/// A buyer's wallet built from pmtp-proto, listening on `ip`: takes one ask_payment_request
/// and answers it with what `answer` makes of it (the ask and the merchant's keys).
async fn hostile_buyer<F>(ip: [u8; 4], answer: F) -> (String, tokio::task::JoinHandle<Option<Frame>>)
where
    F: FnOnce(&AskPaymentRequest, &PeerKeys) -> (Frame, Option<SessionKey>) + Send + 'static,
{
    let listener = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (s, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await.unwrap().unwrap();
        let mut conn = Framed::new(s, PmtpCodec::new(1 << 20));
        let ask: AskPaymentRequest = next_frame(&mut conn).await.open_clear().unwrap();
        let merchant: PeerKeys = ask.body.merchant.parse().unwrap();
        let (frame, key) = answer(&ask, &merchant);
        conn.send(frame).await.unwrap();
        // With a session key, the merchant answers the payment: hand that answer back.
        match key {
            Some(_) => Some(next_frame(&mut conn).await),
            None => None,
        }
    });
    (addr, task)
}

/// `collect` run by the merchant's CLI (blocking): (exit code, stdout).
fn collect(merchant: &TestWallet, from: &str, amount: u64, json: bool) -> (Option<i32>, String) {
    let amount = amount.to_string();
    let mut args = vec!["collect", "--from", from, "--amount", &amount, "--description", "an item"];
    if json {
        args.insert(0, "--json");
    }
    let (code, out, _) = human(merchant, &args);
    (code, out)
}

#[test]
fn one_address_gets_a_share_of_the_pending_list_and_other_shops_still_get_through() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    // Funded: a wallet that cannot pay refuses before anything waits for the person.
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| c);
    buyer.ok(&["withdraw", "100"]);
    let pending = |from: &str| -> usize {
        buyer.ok(&["pending"]).as_array().unwrap().iter().filter(|p| p["peer"] == from).count()
    };
    let flooder = pmtp_proto::testing::named_identity(4, "flood shop");
    // 32 asks from one address, as the issue describes: 4 (its share) wait, the rest are
    // refused as busy at once.
    let mut held = Vec::new();
    let mut busy = 0;
    for i in 0..32 {
        let mut conn = rt.block_on(send_ask([127, 0, 0, 5], &buyer.addr, &flooder, 10, "flood"));
        if i < 4 {
            // Wait until it is listed, so the next one is judged with it counted.
            wait_for("the ask to be pending", || (pending("127.0.0.5") == i + 1).then_some(()));
            held.push(conn);
        } else {
            let f = rt.block_on(next_frame(&mut conn));
            let r = f.open_sealed::<AskPaymentRefusal>(&flooder.x25519).unwrap();
            assert_eq!(r.refusal.code, ReasonCode::BUSY, "{}", r.refusal.text);
            busy += 1;
        }
    }
    assert_eq!((pending("127.0.0.5"), busy), (4, 28));
    // A real shop at another address still reaches the person.
    let shop = pmtp_proto::testing::named_identity(5, "real shop");
    let _shop_conn = rt.block_on(send_ask([127, 0, 0, 6], &buyer.addr, &shop, 20, "a real book"));
    wait_for("the shop's ask to be pending", || (pending("127.0.0.6") == 1).then_some(()));
    // The person sees where each request came from.
    let (code, out, _) = human(&buyer, &["pending"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("from 127.0.0.5").count(), 4, "{out}");
    assert_eq!(out.matches("from 127.0.0.6").count(), 1, "{out}");
    drop(held);
}

#[test]
fn peer_text_is_escaped_in_history_collect_output_and_logs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let buyer = TestWallet::create("alice", "127.0.0.2", &bank, Some(100), |c| c).with_log().started();
    buyer.ok(&["withdraw", "16"]);

    // A merchant whose description and refusal carry escape sequences and a newline.
    let me = pmtp_proto::testing::named_identity(4, "evil shop");
    let addr = buyer.addr.clone();
    let merchant = rt.spawn(async move {
        let mut conn = send_ask([127, 0, 0, 8], &addr, &me, 16, &format!("book {EVIL}")).await;
        let pay: PayCoinsRequest = next_frame(&mut conn).await.open_sealed(&me.x25519).unwrap();
        let refusal = PayCoinsRefusal(Refusal {
            code: ReasonCode::AMOUNT_MISMATCH,
            text: ReasonText::new(format!("no {EVIL}\nFAKE LOG LINE")).unwrap(),
            nonce: Nonce::new(&mut rng::os(), IpAddr::from([127, 0, 0, 8]), now()),
        });
        conn.send(Frame::seal_session(&mut rng::os(), &pay.session_key, &refusal).unwrap()).await.unwrap();
        conn
    });
    let p = buyer.wait_pending();
    assert_eq!(p["description"], format!("book {EVIL_ESCAPED}"));
    buyer.ok(&["approve", &p["id"].to_string()]);
    let _conn = rt.block_on(merchant).unwrap();
    let reason = wait_for("the refusal in the history", || {
        let h = buyer.ok(&["history"]);
        Some(h[0]["reason"].as_str().unwrap().to_owned()).filter(|r| !r.is_empty())
    });
    assert!(reason.contains(&format!("no {EVIL_ESCAPED}\\u{{a}}FAKE LOG LINE")), "{reason}");
    let (_, out, _) = human(&buyer, &["history"]);
    assert_no_control_characters("history", &out);
    assert!(out.contains(EVIL_ESCAPED) && out.contains("FAKE LOG LINE"), "{out}");
    let log = wait_for("the refusal in the buyer's log", || {
        Some(buyer.log_text()).filter(|l| l.contains("merchant refused the payment"))
    });
    assert_log_escaped(&log);
    assert!(log.contains(&format!("book {EVIL_ESCAPED}")), "the description, escaped:\n{log}");
    assert!(log.contains(&format!("no {EVIL_ESCAPED}")), "the refusal, escaped:\n{log}");

    // A buyer's wallet refusing a collect with such a text, sealed and in clear.
    let shop = TestWallet::create("shop", "127.0.0.3", &bank, Some(0), |c| c).with_log().started();
    for sealed in [true, false] {
        let (from, buyer_task) = rt.block_on(hostile_buyer([127, 0, 0, 9], move |ask, merchant| {
            let text = format!("declined {EVIL}\nFAKE LOG LINE");
            let frame = if sealed {
                let refusal = AskPaymentRefusal {
                    amount: ask.body.amount,
                    request_nonce: ask.body.nonce,
                    refusal: Refusal {
                        code: ReasonCode::REFUSED_BY_USER,
                        text: ReasonText::new(text).unwrap(),
                        nonce: Nonce::new(&mut rng::os(), IpAddr::from([127, 0, 0, 9]), now()),
                    },
                };
                Frame::seal_to(&mut rng::os(), &merchant.x25519, &refusal).unwrap()
            } else {
                Frame::plain_refusal(AskPaymentRefusal::ID, ReasonCode::REFUSED_BY_USER, &text).unwrap()
            };
            (frame, None)
        }));
        let (code, out) = collect(&shop, &from, 5, false);
        rt.block_on(buyer_task).unwrap();
        assert_eq!(code, Some(2), "a refused collect fails: {out}");
        assert_no_control_characters("collect output", &out);
        assert!(out.contains(&format!("declined {EVIL_ESCAPED}\\u{{a}}FAKE LOG LINE")), "sealed {sealed}: {out}");
    }
    let log = shop.log_text();
    assert_eq!(log.matches("collect refused").count(), 2, "{log}");
    assert_log_escaped(&log);
    assert!(log.contains(&format!("declined {EVIL_ESCAPED}")), "{log}");
}

/// Real coins of `bank` for a buyer built from pmtp-proto: one coin of `value`.
fn coin_of(rt: &tokio::runtime::Runtime, bank: &TestBank, key: usize, name: &str, value: u64) -> Coin {
    let h = bank.holder(key, name, value);
    let d = Denomination::try_from(value).unwrap();
    let r = rt
        .block_on(bank.client().withdraw(
            &h.identity,
            h.account,
            name,
            PASSWORD,
            [key as u8; 16],
            Amount::new(value),
            vec![d],
        ))
        .unwrap();
    r.coins.into_iter().next().unwrap()
}

#[test]
fn a_coin_offered_twice_in_one_payment_is_refused_as_a_duplicate() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let shop = TestWallet::create("shop", "127.0.0.3", &bank, Some(0), |c| c).with_log().started();
    let coin = coin_of(&rt, &bank, 6, "mallory", 8);
    let (from, buyer_task) = rt.block_on(hostile_buyer([127, 0, 0, 10], move |ask, merchant| {
        let key = SessionKey::generate(&mut rng::os());
        let pay = PayCoinsRequest {
            request_nonce: ask.body.nonce,
            coins: vec![coin.clone(), coin],
            session_key: key.clone(),
            nonce: Nonce::new(&mut rng::os(), IpAddr::from([127, 0, 0, 10]), now()),
        };
        (Frame::seal_to(&mut rng::os(), &merchant.x25519, &pay).unwrap(), Some(key))
    }));
    let (code, out) = collect(&shop, &from, 16, true);
    let answer = rt.block_on(buyer_task).unwrap().unwrap();
    assert_eq!(answer.id, PayCoinsRefusal::ID, "the buyer got a refusal");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(code, Some(2));
    assert_eq!(v["label"], "duplicate_coin", "{v}");
    let log = shop.log_text();
    assert!(log.contains("WARN") && log.contains("a coin was offered twice"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(shop.holding(), 0, "nothing kept");
    bank.assert_audit();
}

#[test]
fn a_copied_wallet_paying_with_a_coin_the_merchant_holds_gets_a_duplicate_coin_refusal() {
    let bank = TestBank::start();
    let mut buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(100), |c| c);
    buyer.ok(&["withdraw", "16"]);
    buyer.stop();
    let mut copy = buyer.copy_to("127.0.0.4");
    buyer.restart();
    copy.restart();
    let shop = TestWallet::create("shop", "127.0.0.3", &bank, Some(0), |c| c).with_log().started();
    let pay = |from: &TestWallet| -> Value {
        let (addr, dir) = (from.addr.clone(), shop.dir.path().to_path_buf());
        let job = std::thread::spawn(move || {
            let out = Command::new(bin())
                .arg("--data-dir")
                .arg(dir)
                .args(["--json", "collect", "--from", &addr, "--amount", "16", "--description", "a book"])
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        });
        let p = from.wait_pending();
        from.ok(&["approve", &p["id"].to_string()]);
        job.join().unwrap()
    };
    let first = pay(&buyer);
    assert_eq!(first["outcome"], "paid", "{first}");
    let second = pay(&copy);
    assert_eq!(second["outcome"], "refused", "{second}");
    assert_eq!(second["label"], "duplicate_coin", "a definitive refusal, not internal: {second}");
    let reason = second["reason"].as_str().unwrap();
    assert!(reason.contains("already received") && !reason.contains("UNIQUE"), "{reason}");
    let log = shop.log_text();
    assert!(log.contains("WARN") && log.contains("a coin was offered twice"), "{log}");
    assert!(!log.contains("ERROR"), "no database error: {log}");
    let balance = bank.accounts().into_iter().find(|a| a.1 == "shop").unwrap().2;
    assert_eq!(balance, 16, "paid once");
    // The copy learns its coin was spent (the bank says so when it tries to exchange it).
    wait_for("the copy to resolve its payment", || {
        let h = copy.ok(&["history"]);
        (h[0]["state"] == "spent_unconfirmed").then_some(())
    });
    bank.assert_audit();
}

#[test]
fn an_idle_control_connection_is_closed() {
    use tokio_util::codec::LinesCodec;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bank = TestBank::start();
    let w = TestWallet::start("idle", "127.0.0.2", &bank, None, |c| {
        c.replace("control_idle_timeout_secs = 60", "control_idle_timeout_secs = 1")
    });
    let socket = w.dir.path().join("control.sock");
    rt.block_on(async {
        let s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut lines = Framed::new(s, LinesCodec::new());
        lines.send(r#"{"cmd": "balance"}"#).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), lines.next()).await.unwrap().unwrap().unwrap();
        assert!(answer.contains(r#""ok":true"#), "{answer}");
        // Then silence: the daemon closes the connection (end of stream), well before 20 s.
        let quiet = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(20), lines.next()).await.expect("closed in time");
        assert!(end.is_none(), "closed, not answered: {end:?}");
        assert!(quiet.elapsed() >= Duration::from_millis(900), "not before the idle time: {:?}", quiet.elapsed());
    });
    assert_eq!(w.available(), 0, "the daemon still serves");
}

/// Seconds since midnight of a log line's timestamp (`2026-11-22T08:05:17.524092Z ...`).
fn log_time(line: &str) -> f64 {
    let t = &line[11..line.find('Z').unwrap()];
    let mut parts = t.split(':').map(|p| p.parse::<f64>().unwrap());
    let (h, m, s) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn out_of_file_descriptors_the_control_socket_pauses_instead_of_spinning() {
    let bank = TestBank::start();
    let w = TestWallet::create("fds", "127.0.0.2", &bank, None, |c| c).with_log().with_fd_limit(48).started();
    let socket = w.dir.path().join("control.sock");
    // More connections than the daemon has descriptors for: they wait in the backlog and
    // each accept fails with EMFILE until some close.
    let held: Vec<_> = (0..100).map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap()).collect();
    let failures = wait_for("six accept failures in the log", || {
        let lines: Vec<String> =
            w.log_text().lines().filter(|l| l.contains("accept failed")).map(String::from).collect();
        (lines.len() >= 6).then_some(lines)
    });
    assert!(failures[0].contains("Too many open files"), "{}", failures[0]);
    // Pauses of 10, 20, 40, 80 and 160 ms between the first six: not a spin.
    let mut span = log_time(&failures[5]) - log_time(&failures[0]);
    if span < 0.0 {
        span += 86_400.0;
    }
    assert!(span >= 0.3, "six failures within {span} s: the loop did not pause");
    // Descriptors freed: the daemon serves again.
    drop(held);
    wait_for("the control socket to serve again", || w.run(&["balance"]).0.then_some(()));
}

#[test]
fn printing_commands_exit_cleanly_when_the_reader_is_gone() {
    let bank = TestBank::start();
    let w = TestWallet::start("reader", "127.0.0.2", &bank, None, |c| c);
    for args in [&["pending"][..], &["balance"], &["merchants"], &["--json", "history"], &["public-key"]] {
        // A pipe whose reading end is closed before the command starts: every write fails
        // with EPIPE (`payme-wallet pending | head -0`), deterministically.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bin())
            .arg("--data-dir")
            .arg(w.dir.path())
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn amounts_above_the_protocol_maximum_are_refused_at_parse_time() {
    // No wallet and no daemon: nothing can be contacted, so only parsing speaks.
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("PAYME_ACCOUNT_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let max = Amount::MAX.minor_units().to_string();
    for args in [
        &["withdraw", "18446744073709551615"][..],
        &["withdraw", "4611686018427387905"],
        &["withdraw", "0"],
        &["withdraw", "99999999999999999999999"],
        &["deposit", "18446744073709551615"],
        &["collect", "--from", "127.0.0.1:1", "--amount", "18446744073709551615", "--description", "x"],
    ] {
        let (ok, err) = run(args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("from 1 to {max}")), "{args:?}: {err}");
        assert!(!err.contains("internal") && !err.contains("no wallet"), "{args:?}: {err}");
    }
    // The maximum itself parses (and then finds no wallet here).
    let (ok, err) = run(&["deposit", &max]);
    assert!(!ok && err.contains("no wallet"), "{err}");
}
