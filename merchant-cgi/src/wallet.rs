//! Asking the merchant's wallet to collect a payment, over its control socket, within a
//! deadline.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The outcome of a collection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Paid {
        payment: i64,
    },
    /// The buyer's side: refused, no money, their wallet unreachable, timed out.
    Refused {
        label: String,
        reason: String,
    },
    /// The merchant's own wallet could not be asked (not running, broken answer).
    WalletDown(String),
}

/// Something that can collect a payment (the real wallet, or a test double).
pub trait Collector {
    fn collect(&self, buyer: &str, amount: u64, description: &str) -> Outcome;
}

/// The merchant's wallet daemon, reached through its control socket.
pub struct WalletSocket<'a> {
    pub path: &'a Path,
    pub deadline: Duration,
}

impl Collector for WalletSocket<'_> {
    fn collect(&self, buyer: &str, amount: u64, description: &str) -> Outcome {
        let mut stream = match UnixStream::connect(self.path) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::WalletDown(format!("cannot reach the merchant wallet at {}: {e}", self.path.display()))
            }
        };
        let _ = stream.set_read_timeout(Some(self.deadline));
        let _ = stream.set_write_timeout(Some(self.deadline));
        let req = json!({"cmd": "collect", "from": buyer, "amount": amount, "description": description});
        if let Err(e) = writeln!(stream, "{req}") {
            return Outcome::WalletDown(format!("writing to the merchant wallet failed: {e}"));
        }
        let mut line = String::new();
        // Bounded: the wallet answers one line; the read timeout is the deadline.
        match BufReader::new(&stream).read_line(&mut line) {
            Ok(0) => return Outcome::WalletDown("the merchant wallet closed the connection".into()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Outcome::Refused {
                    label: "timeout".into(),
                    reason: "the payment did not complete in time".into(),
                };
            }
            Err(e) => return Outcome::WalletDown(format!("reading from the merchant wallet failed: {e}")),
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => return Outcome::WalletDown(format!("the merchant wallet's answer is not JSON: {e}")),
        };
        if v["ok"] != true {
            return Outcome::WalletDown(v["error"].as_str().unwrap_or("the merchant wallet failed").to_owned());
        }
        let r = &v["result"];
        match r["outcome"].as_str() {
            Some("paid") => Outcome::Paid { payment: r["payment"].as_i64().unwrap_or(0) },
            _ => Outcome::Refused {
                label: r["label"].as_str().unwrap_or("refused").to_owned(),
                reason: r["reason"].as_str().unwrap_or("the payment was refused").to_owned(),
            },
        }
    }
}
