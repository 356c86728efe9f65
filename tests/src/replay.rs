//! The nonce-replay harness: a recording proxy for PMTP, and replays of what it recorded.
//!
//! The proxy listens on loopback and forwards each connection to the target daemon *from
//! the client's own source address* (loopback lets us bind any 127.x address), so the
//! nonces inside still match the connection they arrive on. It records every request the
//! client sent and whether the daemon accepted it.
//!
//! Then every recorded request is replayed against the live daemon: verbatim at once;
//! after the nonce window; from another loopback address; with bytes flipped (every header
//! byte and a spread sample of the body); all of them in reverse order; and N copies at
//! once. A replay is *accepted* if the daemon answers with a response identifier (for an
//! ask_payment_request: a payment). Refusals sealed under a session key cannot be read by
//! a third party and count as `refused:sealed`; plain refusals show their code.

use futures::StreamExt;
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::frame::{Envelope, Frame, FrameDecoder};
use pmtp_proto::message::{Kind, MessageType};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request seen by the proxy, with the daemon's verdict on it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub target: String,
    pub source: IpAddr,
    pub request: Frame,
    pub verdict: Verdict,
}

/// What a daemon did with a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Accepted,
    Refused(String),
    /// No answer: the connection closed, or nothing came within the deadline.
    NoAnswer,
}

impl Verdict {
    pub fn label(&self) -> String {
        match self {
            Verdict::Accepted => "ACCEPTED".into(),
            Verdict::Refused(r) => format!("refused:{r}"),
            Verdict::NoAnswer => "closed".into(),
        }
    }
}

/// Classifies a daemon's reply to `request`.
pub fn classify(request: &Frame, reply: Option<&Frame>) -> Verdict {
    let Some(reply) = reply else { return Verdict::NoAnswer };
    let ty = request.id.message_type();
    let accepted = match ty {
        // A buyer that pays answers ask_payment with pay_coins_request (or the alias).
        MessageType::AskPayment => {
            reply.id == MessageType::PayCoins.id(Kind::Request)
                || reply.id == MessageType::AskPayment.id(Kind::Response)
        }
        _ => reply.id == ty.id(Kind::Response),
    };
    if accepted {
        return Verdict::Accepted;
    }
    match reply.envelope() {
        Ok(Envelope::Plain(p)) => Verdict::Refused(p.code.label().to_owned()),
        _ => Verdict::Refused("sealed".into()),
    }
}

/// A recording proxy in front of one daemon.
pub struct Proxy {
    pub addr: SocketAddr,
    pub target: String,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Proxy {
    /// Listens on `listen` (port 0 for any) and forwards to `target`.
    pub async fn start(listen: &str, target: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (log2, target2) = (log.clone(), target.to_owned());
        tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                let (log, target) = (log2.clone(), target2.clone());
                tokio::spawn(async move {
                    let _ = relay(client, peer.ip(), &target, log).await;
                });
            }
        });
        Ok(Proxy { addr, target: target.to_owned(), log })
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Connects to `target` from `source` (any port).
pub async fn connect_from(source: IpAddr, target: &str) -> std::io::Result<TcpStream> {
    pmtp_client::connect(target, Some(source)).await
}

async fn relay(client: TcpStream, source: IpAddr, target: &str, log: Arc<Mutex<Vec<Recorded>>>) -> std::io::Result<()> {
    let server = connect_from(source, target).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Requests the client sent, waiting for the server's next frame as their verdict.
    let waiting: Arc<Mutex<Vec<Frame>>> = Arc::new(Mutex::new(Vec::new()));
    let (w1, w2) = (waiting.clone(), waiting);
    let (log1, target1) = (log.clone(), target.to_owned());
    let upstream = async move {
        let mut dec = FrameDecoder::default();
        let mut buf = bytes::BytesMut::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut chunk).await?;
            if n == 0 {
                let _ = sw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            sw.write_all(&chunk[..n]).await?;
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(f)) = dec.decode(&mut buf) {
                if f.id.kind() == Kind::Request {
                    if let Ok(mut w) = w1.lock() {
                        w.push(f);
                    }
                }
            }
        }
    };
    let downstream = async move {
        let mut dec = FrameDecoder::default();
        let mut buf = bytes::BytesMut::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = sr.read(&mut chunk).await?;
            if n == 0 {
                let _ = cw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            cw.write_all(&chunk[..n]).await?;
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(reply)) = dec.decode(&mut buf) {
                let req = w2.lock().ok().and_then(|mut w| if w.is_empty() { None } else { Some(w.remove(0)) });
                if let Some(request) = req {
                    let verdict = classify(&request, Some(&reply));
                    if let Ok(mut l) = log1.lock() {
                        l.push(Recorded { target: target1.clone(), source, request, verdict });
                    }
                }
            }
        }
    };
    let _ = tokio::join!(upstream, downstream);
    Ok(())
}

/// Sends `bytes` from `source` to `target`, half-closes, and waits (at most `deadline`) for
/// one reply frame.
pub async fn send_raw(source: IpAddr, target: &str, bytes: &[u8], deadline: Duration) -> Option<Frame> {
    let work = async {
        let mut s = connect_from(source, target).await.ok()?;
        s.write_all(bytes).await.ok()?;
        let _ = s.shutdown().await;
        let mut framed = tokio_util::codec::FramedRead::new(s, PmtpCodec::default());
        framed.next().await.and_then(|r| r.ok())
    };
    tokio::time::timeout(deadline, work).await.ok().flatten()
}

/// How the after-window replay gets past the daemons' nonce window.
#[derive(Clone)]
pub enum PastWindow {
    /// Wait this long (the window plus one second): daemons on the real clock.
    Wait(Duration),
    /// Move the daemons' clock instead (tests: [`crate::bank_harness::TestClock`]).
    MoveClock(std::sync::Arc<dyn Fn() + Send + Sync>),
}

impl std::fmt::Debug for PastWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PastWindow::Wait(d) => write!(f, "Wait({d:?})"),
            PastWindow::MoveClock(_) => f.write_str("MoveClock"),
        }
    }
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// How to get past the daemons' nonce window before the after-window replay.
    pub past_window: PastWindow,
    /// Another source address for the re-addressed replay.
    pub other_source: IpAddr,
    /// Concurrent copies.
    pub copies: usize,
    /// Most byte positions flipped per request (all header bytes, the rest spread evenly).
    pub flip_sample: usize,
    /// Deadline for each reply.
    pub deadline: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            past_window: PastWindow::Wait(Duration::from_secs(31)),
            other_source: IpAddr::from([127, 0, 0, 9]),
            copies: 16,
            flip_sample: 48,
            deadline: Duration::from_secs(5),
        }
    }
}

/// One row of the report: (message, variant) -> attempts and verdicts.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// (request identifier name, variant) -> verdict label -> count.
    pub rows: BTreeMap<(String, String), BTreeMap<String, usize>>,
}

impl Report {
    fn add(&mut self, request: &Frame, variant: &str, v: &Verdict) {
        *self.rows.entry((request.id.name(), variant.to_owned())).or_default().entry(v.label()).or_default() += 1;
    }

    /// Replays that a daemon accepted (must be zero).
    pub fn accepted_replays(&self) -> usize {
        self.rows.iter().filter(|((_, v), _)| v != "fresh").map(|(_, m)| m.get("ACCEPTED").copied().unwrap_or(0)).sum()
    }

    /// Fresh (recorded, original) requests a daemon refused (must be zero).
    pub fn refused_fresh(&self) -> usize {
        self.rows
            .iter()
            .filter(|((_, v), _)| v == "fresh")
            .map(|(_, m)| m.iter().filter(|(k, _)| k.as_str() != "ACCEPTED").map(|(_, n)| n).sum::<usize>())
            .sum()
    }

    pub fn table(&self) -> String {
        let mut s =
            format!("{:<26} {:<14} {:>8} {:>8}  refused by reason\n", "message", "variant", "attempts", "accepted");
        for ((msg, variant), m) in &self.rows {
            let attempts: usize = m.values().sum();
            let accepted = m.get("ACCEPTED").copied().unwrap_or(0);
            let reasons: Vec<String> =
                m.iter().filter(|(k, _)| k.as_str() != "ACCEPTED").map(|(k, n)| format!("{k}={n}")).collect();
            s.push_str(&format!("{msg:<26} {variant:<14} {attempts:>8} {accepted:>8}  {}\n", reasons.join(" ")));
        }
        s.push_str(&format!(
            "replays accepted: {}; fresh requests refused: {}\n",
            self.accepted_replays(),
            self.refused_fresh()
        ));
        s
    }
}

fn flip_positions(len: usize, sample: usize) -> Vec<usize> {
    let header = pmtp_proto::frame::HEADER_LEN.min(len);
    let mut v: Vec<usize> = (0..header).collect();
    let body = len.saturating_sub(header);
    let rest = sample.saturating_sub(header).min(body);
    for k in 0..rest {
        v.push(header + k * body / rest.max(1));
    }
    v.dedup();
    v
}

/// Replays everything recorded, in every variant, and reports.
pub async fn replay_all(recorded: &[Recorded], cfg: &ReplayConfig) -> Report {
    let mut report = Report::default();
    let replayable: Vec<&Recorded> = recorded.iter().collect();
    for r in &replayable {
        report.add(&r.request, "fresh", &r.verdict);
    }
    let bytes = |r: &Recorded| r.request.to_bytes().map(|b| b.to_vec()).unwrap_or_default();
    // Verbatim, at once.
    for r in &replayable {
        let reply = send_raw(r.source, &r.target, &bytes(r), cfg.deadline).await;
        report.add(&r.request, "verbatim", &classify(&r.request, reply.as_ref()));
    }
    // From another loopback address.
    for r in &replayable {
        let reply = send_raw(cfg.other_source, &r.target, &bytes(r), cfg.deadline).await;
        report.add(&r.request, "other-address", &classify(&r.request, reply.as_ref()));
    }
    // Reordered: all of them, last first.
    for r in replayable.iter().rev() {
        let reply = send_raw(r.source, &r.target, &bytes(r), cfg.deadline).await;
        report.add(&r.request, "reordered", &classify(&r.request, reply.as_ref()));
    }
    // N copies at once.
    for r in &replayable {
        let b = bytes(r);
        let mut tasks = Vec::new();
        for _ in 0..cfg.copies {
            let (b, target, source, deadline) = (b.clone(), r.target.clone(), r.source, cfg.deadline);
            tasks.push(tokio::spawn(async move { send_raw(source, &target, &b, deadline).await }));
        }
        for t in tasks {
            let reply = t.await.ok().flatten();
            report.add(&r.request, "concurrent", &classify(&r.request, reply.as_ref()));
        }
    }
    // Flipped bytes.
    for r in &replayable {
        let b = bytes(r);
        for pos in flip_positions(b.len(), cfg.flip_sample) {
            let mut t = b.clone();
            t[pos] ^= 0xff;
            let reply = send_raw(r.source, &r.target, &t, cfg.deadline).await;
            report.add(&r.request, "flipped-byte", &classify(&r.request, reply.as_ref()));
        }
    }
    // After the nonce window: the timestamp is stale, and the durable record refuses it too.
    match &cfg.past_window {
        PastWindow::Wait(d) => tokio::time::sleep(*d).await,
        PastWindow::MoveClock(advance) => advance(),
    }
    for r in &replayable {
        let reply = send_raw(r.source, &r.target, &bytes(r), cfg.deadline).await;
        report.add(&r.request, "after-window", &classify(&r.request, reply.as_ref()));
    }
    report
}
