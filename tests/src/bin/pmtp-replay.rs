//! `pmtp-replay`: the nonce-replay test harness, as a command.
//!
//! Puts a recording proxy in front of a PMTP daemon, records the requests real clients
//! send through it for a while, then replays every one against the live daemon (verbatim,
//! after the nonce window, from another loopback address, with flipped bytes, reordered,
//! and N copies at once) and prints what was accepted. Exits 1 if any replay was accepted
//! or any fresh request was refused.
//!
//! Point clients at the proxy address it prints, e.g. a wallet's `bank` addr, or a
//! merchant's `collect --from`. Loopback only: the proxy binds the client's own 127.x
//! source address to reach the daemon.

use clap::Parser;
use payme_tests::replay::{replay_all, PastWindow, Proxy, ReplayConfig};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "pmtp-replay",
    about = "Record PMTP exchanges through a proxy, then replay them against the live daemon"
)]
struct Cli {
    /// The daemon to protect-test (host:port, on loopback).
    #[arg(long)]
    target: String,
    /// Where the proxy listens; by default the target's address with a free port, so that
    /// clients see the address the daemon's own nonces name.
    #[arg(long)]
    listen: Option<String>,
    /// Seconds to record before replaying (Ctrl-C ends recording early).
    #[arg(long, default_value_t = 60)]
    record_secs: u64,
    /// The daemon's nonce window in seconds (the after-window replay waits one more).
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// Concurrent copies per request.
    #[arg(long, default_value_t = 16)]
    copies: usize,
    /// Byte positions flipped per request.
    #[arg(long, default_value_t = 48)]
    flip_sample: usize,
    /// Source address of the re-addressed replay.
    #[arg(long, default_value = "127.0.0.9")]
    other_source: std::net::IpAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pmtp-replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let listen = cli.listen.clone().unwrap_or_else(|| match cli.target.rsplit_once(':') {
            Some((host, _)) => format!("{host}:0"),
            None => "127.0.0.1:0".into(),
        });
        let proxy = match Proxy::start(&listen, &cli.target).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pmtp-replay: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("pmtp-replay: proxy for {} listening on {}", cli.target, proxy.addr);
        println!("recording for {} s (Ctrl-C to stop early)", cli.record_secs);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(cli.record_secs)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let recorded = proxy.recorded();
        println!("recorded {} requests; replaying", recorded.len());
        let cfg = ReplayConfig {
            past_window: PastWindow::Wait(Duration::from_secs(cli.window_secs + 1)),
            other_source: cli.other_source,
            copies: cli.copies,
            flip_sample: cli.flip_sample,
            ..ReplayConfig::default()
        };
        let report = replay_all(&recorded, &cfg).await;
        print!("{}", report.table());
        if report.accepted_replays() > 0 || report.refused_fresh() > 0 || recorded.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}
