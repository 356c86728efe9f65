//! The load generator's machinery: calibration of the raw RSA rates, pre-built requests,
//! concurrent clients with a time bound, latency statistics, and daemon resource usage.
//!
//! Requests are built and signed before the timed phase (the client's own signatures
//! would otherwise eat the same two cores the bank needs); only sending, the bank's work
//! and the reply are timed.

use pmtp_proto::keys::SigningKey;
use pmtp_proto::Frame;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Raw RSA rates on all cores with the crate the bank uses.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub cores: usize,
    pub sign_per_sec: f64,
    pub verify_per_sec: f64,
}

/// Signs and verifies on every core for `secs` seconds each.
pub fn calibrate(key: &SigningKey, secs: f64) -> Calibration {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let msg = b"payme calibration message of typical coin size ........................";
    let sig = key.sign(msg).unwrap_or_default();
    let run = |sign: bool| {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        if sign {
                            let _ = key.sign(msg);
                        } else {
                            let _ = key.verifying_key().verify(msg, &sig);
                        }
                        n += 1;
                    }
                    total.fetch_add(n, Ordering::Relaxed);
                });
            }
        });
        total.load(Ordering::Relaxed) as f64 / secs
    };
    Calibration { cores, sign_per_sec: run(true), verify_per_sec: run(false) }
}

/// Latency and throughput of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub scenario: String,
    pub clients: usize,
    pub ok: usize,
    pub failed: usize,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub coins_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Stalls: periods of a second or more in which no request completed (as the peers'
    /// benchmark counts them), and their total length.
    pub stalls: usize,
    pub stall_secs: f64,
    /// Bank CPU seconds (user + system) spent during the scenario, all nodes together.
    pub bank_cpu_secs: f64,
    /// The bank's peak resident memory so far, KiB (the largest node's).
    pub bank_peak_rss_kib: u64,
    pub first_error: Option<String>,
}

/// A worker's kept-open connection to the bank (clients that send many requests keep
/// one; the bank serves requests on a connection one after another).
pub type Conn = Option<tokio_util::codec::Framed<tokio::net::TcpStream, pmtp_proto::codec::PmtpCodec>>;

/// One unit of work: given the worker's connection, do one request; give the connection
/// back (or `None` after an error) with the outcome.
pub type Job = Box<
    dyn FnOnce(Conn) -> std::pin::Pin<Box<dyn std::future::Future<Output = (Conn, Result<(), String>)> + Send>> + Send,
>;

/// Runs `jobs` with `clients` concurrent workers until they run out or `duration` passes.
pub async fn drive(
    scenario: &str,
    jobs: Vec<Job>,
    clients: usize,
    duration: Duration,
    coins_per_op: usize,
    bank_pids: &[u32],
) -> Stats {
    let cpu = || bank_pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    // On stderr, for whoever profiles the bank: the measured window starts now.
    eprintln!("{scenario}: measuring, {clients} clients, at most {} s", duration.as_secs_f64());
    let queue = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let cpu0 = cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            let (mut lat, mut done_at) = (Vec::new(), Vec::new());
            let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None);
            let mut conn: Conn = None;
            while Instant::now() < deadline {
                let job = match queue.lock().ok().and_then(|mut q| q.next()) {
                    Some(j) => j,
                    None => break,
                };
                let t = Instant::now();
                let (back, outcome) = job(conn.take()).await;
                conn = back;
                match outcome {
                    Ok(()) => {
                        ok += 1;
                        lat.push(t.elapsed());
                        done_at.push(start.elapsed());
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, done_at, ok, failed, first_error)
        }));
    }
    let (mut lat, mut done_at, mut ok, mut failed, mut first_error) = (Vec::new(), Vec::new(), 0, 0, None);
    for w in workers {
        if let Ok((l, d, o, f, e)) = w.await {
            lat.extend(l);
            done_at.extend(d);
            ok += o;
            failed += f;
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (stalls, stall_secs) = stalls(&mut done_at, start.elapsed(), Duration::from_secs(1));
    lat.sort();
    let pct = |q: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0
        }
    };
    Stats {
        scenario: scenario.to_owned(),
        clients,
        ok,
        failed,
        seconds,
        ops_per_sec: ok as f64 / seconds,
        coins_per_sec: (ok * coins_per_op) as f64 / seconds,
        p50_ms: pct(0.5),
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        max_ms: lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        stalls,
        stall_secs,
        bank_cpu_secs: cpu() - cpu0,
        bank_peak_rss_kib: bank_pids.iter().map(|p| peak_rss_kib(*p)).max().unwrap_or(0),
        first_error,
    }
}

/// The gaps of at least `min` between the start and the first completion, between one
/// completion and the next, or between the last and the end (`done_at`: completion times
/// since the start; `end`: the scenario's length): how many, and their total in seconds.
pub fn stalls(done_at: &mut [Duration], end: Duration, min: Duration) -> (usize, f64) {
    done_at.sort();
    let mut last = Duration::ZERO;
    let (mut n, mut total) = (0, 0.0);
    for &d in done_at.iter().chain(std::iter::once(&end.max(last))) {
        let gap = d.saturating_sub(last);
        if gap >= min {
            n += 1;
            total += gap.as_secs_f64();
        }
        last = d;
    }
    (n, total)
}

/// User + system CPU seconds of a process (from /proc; 100 ticks a second on Linux).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sends a pre-built frame on the worker's connection (opening one if needed) and checks
/// that the reply is `response`.
pub async fn send_expect_response(
    addr: &str,
    conn: Conn,
    frame: Frame,
    response: pmtp_proto::MessageId,
) -> (Conn, Result<(), String>) {
    use futures::{SinkExt, StreamExt};
    let mut c = match conn {
        Some(c) => c,
        None => match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                tokio_util::codec::Framed::new(s, pmtp_proto::codec::PmtpCodec::default())
            }
            Err(e) => return (None, Err(e.to_string())),
        },
    };
    if let Err(e) = c.send(frame).await {
        return (None, Err(e.to_string()));
    }
    match tokio::time::timeout(Duration::from_secs(30), c.next()).await {
        Ok(Some(Ok(r))) if r.id == response => (Some(c), Ok(())),
        Ok(Some(Ok(r))) => (Some(c), Err(format!("refused ({})", r.id))),
        Ok(_) => (None, Err("closed".into())),
        Err(_) => (None, Err("timeout".into())),
    }
}

/// A table of results with the targets they are measured against.
pub fn table(cal: &Calibration, stats: &[Stats]) -> String {
    let mut s = format!(
        "calibration: {} cores; RSA-2048 sign {:.0}/s, verify {:.0}/s (all cores)\n",
        cal.cores, cal.sign_per_sec, cal.verify_per_sec
    );
    s.push_str(&format!(
        "{:<22} {:>7} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>9}\n",
        "scenario",
        "clients",
        "ok",
        "failed",
        "ops/s",
        "coins/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "stalls",
        "bank cpu",
        "peak RSS"
    ));
    for x in stats {
        s.push_str(&format!(
            "{:<22} {:>7} {:>7} {:>6} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>7.1}s {:>7}MiB\n",
            x.scenario,
            x.clients,
            x.ok,
            x.failed,
            x.ops_per_sec,
            x.coins_per_sec,
            x.p50_ms,
            x.p90_ms,
            x.p99_ms,
            x.max_ms,
            x.stalls,
            x.bank_cpu_secs,
            x.bank_peak_rss_kib / 1024
        ));
        if let Some(e) = &x.first_error {
            s.push_str(&format!("    first error: {e}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_a_second_without_any_completion() {
        let ms = Duration::from_millis;
        // Steady completions, then 1.2 s of nothing, then more: one stall of 1.2 s.
        let mut done = vec![ms(900), ms(100), ms(200), ms(2100), ms(2200)];
        let (n, secs) = stalls(&mut done, ms(2300), Duration::from_secs(1));
        assert_eq!(n, 1);
        assert!((secs - 1.2).abs() < 1e-9);
        // Nothing completed in the first 1.5 s: that counts too.
        assert_eq!(stalls(&mut [ms(1500), ms(1600)], ms(1700), Duration::from_secs(1)).0, 1);
        assert_eq!(stalls(&mut [ms(10), ms(990), ms(1980)], ms(2000), Duration::from_secs(1)).0, 0);
        // Nothing after 0.5 s of a 3 s scenario: a stall at the end.
        assert_eq!(stalls(&mut [ms(500)], ms(3000), Duration::from_secs(1)), (1, 2.5));
        // Nothing at all.
        assert_eq!(stalls(&mut [], ms(3000), Duration::from_secs(1)), (1, 3.0));
    }
}
