//! Asking the merchant's wallet, over its control socket, within a deadline: collect a
//! payment for an order, say who the shop is (name, key fingerprint), and find the paid
//! order a receipt re-opens.

use crate::order::OrderId;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest answer line read from the wallet.
const MAX_ANSWER: u64 = 256 * 1024;

/// How long `identity` and `claim`, which never wait for a buyer, may take.
const QUICK: Duration = Duration::from_secs(10);

/// What to collect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    /// The buyer's wallet, host:port.
    pub buyer: String,
    pub amount: u64,
    pub description: String,
    pub item: String,
    pub order: OrderId,
}

/// The outcome of a collection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Paid: the merchant wallet's payment number, and the receipt (hex) that re-opens the
    /// item.
    Paid { payment: i64, receipt: String },
    /// The buyer's side: refused, no money, their wallet unreachable, timed out. `reason`
    /// is for the shop's log only (it may quote the buyer's wallet or the OS).
    Refused { label: String, reason: String },
    /// This program stopped waiting; the merchant's wallet goes on, and may still be paid
    /// (the buyer's receipt then re-opens the item).
    GaveUp,
    /// The merchant's own wallet could not be asked (not running, broken answer).
    WalletDown(String),
}

/// Who the shop is, as its pages show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shop {
    pub name: String,
    pub fingerprint: String,
}

/// What a presented receipt re-opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The paid order's item; `expired` once the order's lifetime has passed.
    Order {
        item: String,
        order: String,
        expired: bool,
    },
    /// Not a receipt of this shop's orders.
    Unknown,
    WalletDown(String),
}

/// The merchant's wallet (the real one over its socket, or a test double).
/// What the shop asks its wallet to sign for a 402: an offer of one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferAsk {
    /// The shop's origin (`scheme://host:port`).
    pub origin: String,
    /// The requested path and query.
    pub resource: String,
    pub amount: u64,
    pub description: String,
    pub order: OrderId,
}

/// A payment received in a request's `PAYMENT-SIGNATURE` header, for the wallet to settle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    /// The header's value, as received (the wallet decodes it).
    pub payment: String,
    pub origin: String,
    pub resource: String,
    /// The catalog's item id and price (never the buyer's say).
    pub item: String,
    pub price: u64,
}

/// How the wallet settled an in-band payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// `receipt` is the `PAYMENT-RESPONSE` header value; `order` 32 hex digits.
    Paid {
        receipt: String,
        order: String,
        payment: i64,
    },
    /// Refused with a pmtp-proto reason code; `reason` (the wallet's words) is for the log.
    Refused {
        code: u16,
        label: String,
        reason: String,
    },
    /// The wallet did not answer within the page's deadline: the payment may still be
    /// settled, and the same payment sent again gets its receipt.
    GaveUp,
    WalletDown(String),
}

pub trait Collector {
    fn collect(&self, purchase: &Purchase) -> Outcome;
    fn identity(&self) -> Result<Shop, String>;
    fn claim(&self, receipt: &str) -> Claim;
    /// The signed offer (the `PAYMENT-REQUIRED` header value) for `ask`.
    fn offer(&self, ask: &OfferAsk) -> Result<String, String>;
    fn settle(&self, s: &Settle) -> Settlement;
}

/// The merchant's wallet daemon, reached through its control socket.
pub struct WalletSocket<'a> {
    pub path: &'a Path,
    pub deadline: Duration,
}

enum CallError {
    Timeout,
    Down(String),
}

impl WalletSocket<'_> {
    /// Sends one request and reads the one-line answer, within `deadline`.
    fn call(&self, req: &Value, deadline: Duration) -> Result<Value, CallError> {
        let mut stream = UnixStream::connect(self.path).map_err(|e| {
            CallError::Down(format!("cannot reach the merchant wallet at {}: {e}", self.path.display()))
        })?;
        let _ = stream.set_read_timeout(Some(deadline));
        let _ = stream.set_write_timeout(Some(deadline));
        writeln!(stream, "{req}")
            .map_err(|e| CallError::Down(format!("writing to the merchant wallet failed: {e}")))?;
        let mut line = String::new();
        // Bounded: one line of at most MAX_ANSWER bytes; the read timeout is the deadline.
        match BufReader::new((&stream).take(MAX_ANSWER)).read_line(&mut line) {
            Ok(0) => return Err(CallError::Down("the merchant wallet closed the connection".into())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(CallError::Timeout)
            }
            Err(e) => return Err(CallError::Down(format!("reading from the merchant wallet failed: {e}"))),
        }
        serde_json::from_str(&line)
            .map_err(|e| CallError::Down(format!("the merchant wallet's answer is not JSON: {e}")))
    }
}

fn error_text(v: &Value) -> String {
    v["error"].as_str().unwrap_or("the merchant wallet failed").to_owned()
}

impl Collector for WalletSocket<'_> {
    fn collect(&self, p: &Purchase) -> Outcome {
        let req = json!({"cmd": "collect", "from": p.buyer, "amount": p.amount, "description": p.description,
                         "order": p.order.hex(), "item": p.item});
        let v = match self.call(&req, self.deadline) {
            Ok(v) => v,
            Err(CallError::Timeout) => return Outcome::GaveUp,
            Err(CallError::Down(e)) => return Outcome::WalletDown(e),
        };
        if v["ok"] != true {
            return Outcome::WalletDown(error_text(&v));
        }
        let r = &v["result"];
        match r["outcome"].as_str() {
            Some("paid") => Outcome::Paid {
                payment: r["payment"].as_i64().unwrap_or(0),
                receipt: r["receipt"].as_str().unwrap_or("").to_owned(),
            },
            _ => Outcome::Refused {
                label: r["label"].as_str().unwrap_or("refused").to_owned(),
                reason: r["reason"].as_str().unwrap_or("the payment was refused").to_owned(),
            },
        }
    }

    fn identity(&self) -> Result<Shop, String> {
        let v = match self.call(&json!({"cmd": "identity"}), QUICK) {
            Ok(v) if v["ok"] == true => v,
            Ok(v) => return Err(error_text(&v)),
            Err(CallError::Timeout) => return Err("the merchant wallet did not answer in time".into()),
            Err(CallError::Down(e)) => return Err(e),
        };
        let text = |k: &str| v["result"][k].as_str().map(str::to_owned);
        match (text("name"), text("fingerprint")) {
            (Some(name), Some(fingerprint)) => Ok(Shop { name, fingerprint }),
            _ => Err("the merchant wallet's identity answer lacks name or fingerprint".into()),
        }
    }

    fn claim(&self, receipt: &str) -> Claim {
        let v = match self.call(&json!({"cmd": "claim", "receipt": receipt}), QUICK) {
            Ok(v) => v,
            Err(CallError::Timeout) => return Claim::WalletDown("the merchant wallet did not answer in time".into()),
            Err(CallError::Down(e)) => return Claim::WalletDown(e),
        };
        if v["ok"] != true {
            return match v["label"].as_str() {
                Some("unexpected_payment" | "malformed") => Claim::Unknown,
                _ => Claim::WalletDown(error_text(&v)),
            };
        }
        let r = &v["result"];
        match (r["item"].as_str(), r["order"].as_str(), r["expired"].as_bool()) {
            (Some(item), Some(order), Some(expired)) => {
                Claim::Order { item: item.to_owned(), order: order.to_owned(), expired }
            }
            _ => Claim::WalletDown("the merchant wallet's claim answer is incomplete".into()),
        }
    }

    fn offer(&self, ask: &OfferAsk) -> Result<String, String> {
        let req = json!({"cmd": "offer", "origin": ask.origin, "resource": ask.resource, "amount": ask.amount,
                         "description": ask.description, "order": ask.order.hex()});
        let v = match self.call(&req, QUICK) {
            Ok(v) if v["ok"] == true => v,
            Ok(v) => return Err(error_text(&v)),
            Err(CallError::Timeout) => return Err("the merchant wallet did not answer in time".into()),
            Err(CallError::Down(e)) => return Err(e),
        };
        v["result"]["offer"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the merchant wallet's offer answer lacks the offer".into())
    }

    fn settle(&self, s: &Settle) -> Settlement {
        let req = json!({"cmd": "settle", "payment": s.payment, "origin": s.origin, "resource": s.resource,
                         "item": s.item, "price": s.price});
        let v = match self.call(&req, self.deadline) {
            Ok(v) => v,
            Err(CallError::Timeout) => return Settlement::GaveUp,
            Err(CallError::Down(e)) => return Settlement::WalletDown(e),
        };
        if v["ok"] != true {
            return match (v["code"].as_u64().and_then(|c| u16::try_from(c).ok()), v["label"].as_str()) {
                // The wallet's own failure is not the buyer's refusal.
                (Some(60), _) | (None, _) | (_, None) => Settlement::WalletDown(error_text(&v)),
                (Some(code), Some(label)) => {
                    Settlement::Refused { code, label: label.to_owned(), reason: error_text(&v) }
                }
            };
        }
        let r = &v["result"];
        match (r["receipt"].as_str(), r["order"].as_str(), r["payment"].as_i64()) {
            (Some(receipt), Some(order), Some(payment)) => {
                Settlement::Paid { receipt: receipt.to_owned(), order: order.to_owned(), payment }
            }
            _ => Settlement::WalletDown("the merchant wallet's settle answer is incomplete".into()),
        }
    }
}
