//! A fake shop for the buyer side of paying over HTTP 402 (`payme-wallet pay URL`): a
//! `std::net::TcpListener` on 127.0.0.1 port 0, in a thread, speaking just enough HTTP/1.1
//! (one request per connection, `Connection: close`).
//!
//! A GET without payment gets `402` with an offer signed by the test merchant identity;
//! the retry's sealed payment is opened with the merchant's X25519 secret, its coins are
//! exchanged at the real test bank (so they are spent: the shop has them), and the answer is
//! `200`, the body and the signed receipt. The same sealed payment sent again gets the same
//! receipt, and a receipt it issued (`PAYMENT-RECEIPT`) re-opens the resource. [`Mode`] makes it refuse, or take the coins and hang up without answering (a
//! shop that dies after the bank took the coins). `/free` is served without payment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::bank_harness::TestBank;
use pmtp_client::BankClient;
use pmtp_proto::http::{self, Offer, Origin, Payment, SignedOffer};
use pmtp_proto::keys::Identity;
use pmtp_proto::seal::SealedBox;
use pmtp_proto::text::{BoundedString, Description};
use pmtp_proto::{description_hash, Amount, Receipt, Signed};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the shop treats a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Takes the coins (exchange at the bank) and answers 200 with the receipt.
    Normal,
    /// Refuses every new payment without taking its coins: `PAYMENT-REFUSED: 46
    /// unexpected_payment` (as for an order already paid with other coins).
    Refuse,
    /// Takes the coins, records the receipt, and closes the connection without answering.
    TakeAndHangUp,
}

struct State {
    mode: Mode,
    merchant: Identity,
    price: u64,
    body: Vec<u8>,
    /// The origin the offers name (another origin, to test the wallet's check).
    offer_origin: Option<String>,
    /// Paid orders: the coins hash and the receipt's header value.
    paid: HashMap<[u8; 16], ([u8; 32], String)>,
    /// Payments received (sealed payments opened), repeats included.
    payments_seen: usize,
    /// Requests a receipt re-opened.
    reopened: usize,
}

pub struct FakeShop {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeShop {
    /// Starts a shop selling every path but `/free` for `price`, with `merchant`'s keys,
    /// taking coins at `bank`.
    pub fn start(bank: &TestBank, merchant: Identity, price: u64, body: &[u8]) -> FakeShop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Normal,
            merchant,
            price,
            body: body.to_vec(),
            offer_origin: None,
            paid: HashMap::new(),
            payments_seen: 0,
            reopened: 0,
        }));
        let client = bank.client();
        let s = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = handle(&rt, &client, &s, addr, conn);
            }
        });
        FakeShop { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Signs later offers (and receipts) with another key under the same name.
    pub fn set_merchant(&self, merchant: Identity) {
        self.state.lock().unwrap().merchant = merchant;
    }

    /// Later offers name `origin` instead of the shop's own.
    pub fn set_offer_origin(&self, origin: &str) {
        self.state.lock().unwrap().offer_origin = Some(origin.to_owned());
    }

    pub fn payments_seen(&self) -> usize {
        self.state.lock().unwrap().payments_seen
    }

    pub fn reopened(&self) -> usize {
        self.state.lock().unwrap().reopened
    }

    pub fn orders_paid(&self) -> usize {
        self.state.lock().unwrap().paid.len()
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn handle(
    rt: &tokio::runtime::Runtime,
    bank: &BankClient,
    state: &Arc<Mutex<State>>,
    addr: SocketAddr,
    mut conn: TcpStream,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?.take(256 * 1024));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut signature = None;
    let mut receipt = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case(http::PAYMENT_SIGNATURE) {
                signature = Some(v.trim().to_owned());
            }
            if n.trim().eq_ignore_ascii_case(http::PAYMENT_RECEIPT) {
                receipt = Some(v.trim().to_owned());
            }
        }
    }
    if path == "/free" {
        return respond(&mut conn, "200 OK", &[], b"free for all");
    }
    // A receipt this shop issued re-opens the resource.
    if let Some(r) = receipt.and_then(|r| http::decode::<Signed<Receipt>>(&r).ok()) {
        let mut s = state.lock().unwrap();
        let issued = s.paid.get(&r.body.request).map(|(_, issued)| issued.clone());
        if issued.is_some_and(|i| http::encode(&r).unwrap() == i) {
            s.reopened += 1;
            let body = s.body.clone();
            drop(s);
            return respond(&mut conn, "200 OK", &[], &body);
        }
    }
    let Some(signature) = signature else {
        let s = state.lock().unwrap();
        let origin = s.offer_origin.clone().unwrap_or_else(|| format!("http://{addr}"));
        let offer = Offer {
            order: pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os()),
            origin: Origin::of_url(&origin).unwrap(),
            resource: BoundedString::new(path).unwrap(),
            amount: Amount::new(s.price),
            merchant: s.merchant.public(),
            description: Description::new("a paper").unwrap(),
            accepted_banks: vec![],
            expires: pmtp_client::clock::now() + 600,
        };
        let signed: SignedOffer = Signed::sign(offer, &s.merchant.signing).unwrap();
        let header = http::encode(&signed).unwrap();
        return respond(&mut conn, "402 Payment Required", &[(http::PAYMENT_REQUIRED, header)], b"pay first");
    };
    let refuse = |conn: &mut TcpStream, why: &str| {
        respond(conn, "403 Forbidden", &[("PAYMENT-REFUSED", why.to_owned())], b"refused")
    };
    let (merchant_x, verifying, mode) = {
        let mut s = state.lock().unwrap();
        s.payments_seen += 1;
        let keys = s.merchant.public().parse().unwrap();
        (s.merchant.x25519.clone(), keys.verifying, s.mode)
    };
    let Ok(sealed) = http::decode::<SealedBox>(&signature) else { return refuse(&mut conn, "1 malformed") };
    let Ok(payment): Result<Payment, _> = http::open_payment(&merchant_x, &sealed) else {
        return refuse(&mut conn, "5 decrypt_failed");
    };
    if payment.offer.verify(&verifying).is_err() {
        return refuse(&mut conn, "6 bad_signature");
    }
    let order = payment.offer.body.order;
    let hash = payment.coins_hash();
    let known = state.lock().unwrap().paid.get(&order).cloned();
    let receipt = match known {
        // The same payment again: the same receipt (idempotent).
        Some((h, receipt)) if h == hash => receipt,
        Some(_) => return refuse(&mut conn, "46 unexpected_payment"),
        None if mode == Mode::Refuse => return refuse(&mut conn, "46 unexpected_payment"),
        None => {
            let total: u64 = payment.coins.iter().map(|c| c.value().minor_units()).sum();
            if total != payment.offer.body.amount.minor_units() {
                return refuse(&mut conn, "45 amount_mismatch");
            }
            let request_id: [u8; 16] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
            if rt.block_on(bank.exchange(request_id, payment.coins.clone(), vec![])).is_err() {
                return refuse(&mut conn, "30 coin_not_in_circulation");
            }
            let mut s = state.lock().unwrap();
            let public = s.merchant.public();
            let body = Receipt {
                merchant: public.name.clone(),
                merchant_fingerprint: public.fingerprint(),
                amount: payment.offer.body.amount,
                description_hash: description_hash(payment.offer.body.description.as_str()),
                coins_hash: hash,
                request: order,
                time: pmtp_client::clock::now(),
            };
            let receipt = http::encode(&Signed::sign(body, &s.merchant.signing).unwrap()).unwrap();
            s.paid.insert(order, (hash, receipt.clone()));
            receipt
        }
    };
    if state.lock().unwrap().mode == Mode::TakeAndHangUp {
        // The shop dies after its bank took the coins: no answer at all.
        return conn.shutdown(std::net::Shutdown::Both);
    }
    let body = state.lock().unwrap().body.clone();
    respond(&mut conn, "200 OK", &[(http::PAYMENT_RESPONSE, receipt)], &body)
}
