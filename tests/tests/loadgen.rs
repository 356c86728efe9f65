//! payme-loadgen against a bank that dies mid-run: a one-line report and a non-zero exit,
//! never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn loadgen_reports_a_bank_that_dies_mid_run_and_exits_non_zero() {
    let mut bank = TestBank::start_with("bank-a", |c| c.replace("nonce_window_secs = 30", "nonce_window_secs = 600"));
    let pid = bank.child.as_ref().unwrap().id().to_string();
    let dir = bank.dir.path().to_str().unwrap().to_owned();
    let mut loadgen = Command::new(env!("CARGO_BIN_EXE_payme-loadgen"))
        .args(["--bank-dir", &dir, "--bank-addr", &bank.addr, "--bank-pid", &pid])
        .args(["--scenarios", "withdraw,exchange", "--duration", "2", "--clients", "2"])
        .args(["--no-build", "--calibration-secs", "0.1"])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = loadgen.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Kill the bank (SIGKILL) once the load generator is about to drive it.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.iter().any(|l: &String| l.starts_with("withdraw: signing")) {
        let left = deadline.saturating_duration_since(Instant::now());
        lines.push(rx.recv_timeout(left).expect("loadgen announces the withdraw scenario within 60 s"));
    }
    let mut b = bank.child.take().unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    // The rest of its stderr, until it exits (bounded: 60 s).
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        if let Some(s) = loadgen.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "loadgen still running 60 s after the bank died: {lines:?}");
        let _ = rx.recv_timeout(Duration::from_millis(100)).map(|l| lines.push(l));
    };
    // The reader thread ends at EOF; collect what it still holds.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
    }
    let text = lines.join("\n");
    assert!(!status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("payme-loadgen: the bank at ") && last.contains("stopped answering during the withdraw"),
        "one line saying what happened: {text}"
    );
}
