//! The desktop notification of a payment request, on a real D-Bus: a private session bus
//! (dbus-daemon) with dbus-monitor watching org.freedesktop.Notifications. The buyer's
//! wallet daemon, started with that bus as its session bus, calls Notify when a shop's
//! request starts waiting; the bus has no notification service, so the call fails, and
//! the request waits and is answered as always. (Every other test runs without a session
//! bus: nothing there breaks either.)
//!
//! Its own test binary: it sets DBUS_SESSION_BUS_ADDRESS for the daemons it starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::browser_harness::installed_or_skip;
use payme_tests::wallet_harness::TestWallet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Children killed (by their own handles) when the test ends, however it ends.
struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads the monitor's lines as they come (bounded: 20 s in all) until what it has printed
/// so far holds every one of `needles`; returns that text.
fn wait_lines(lines: &std::sync::mpsc::Receiver<String>, seen: &mut String, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !needles.iter().all(|n| seen.contains(n)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => panic!("no {needles:?} from dbus-monitor within 20 s:\n{seen}"),
        }
    }
    seen.clone()
}

#[test]
fn a_waiting_payment_request_is_announced_on_the_session_bus() {
    let Some(tools) =
        installed_or_skip("desktop notification", &[("dbus-daemon", "dbus-daemon"), ("dbus-monitor", "dbus-bin")])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A bus of the test's own: no service activation, so a Notify call fails at once.
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let mut bus = Command::new(&tools[0])
        .arg("--nofork")
        .arg("--print-address=1")
        .arg(format!("--config-file={}", config.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = bus.stdout.take().unwrap();
    let mut children = Killed(vec![bus]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(line)) = BufReader::new(stdout).lines().next() {
            let _ = tx.send(line);
        }
    });
    let address = rx.recv_timeout(Duration::from_secs(20)).expect("dbus-daemon prints its address");
    let mut monitor = Command::new(&tools[1])
        .args(["--address", &address, "--monitor", "interface='org.freedesktop.Notifications'"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = monitor.stdout.take().unwrap();
    children.0.push(monitor);
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    // The monitor is on the bus once the bus has named it.
    wait_lines(&lines, &mut printed, &["NameAcquired"]);
    // The daemons started from here on have this bus as their session bus.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &address);

    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| c);
    let merchant = TestWallet::start("bob's <b>books</b>", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "100"]);
    let (dir_m, from) = (merchant.dir.path().to_path_buf(), buyer.addr.clone());
    let job = std::thread::spawn(move || {
        Command::new(payme_tests::wallet_harness::bin())
            .arg("--data-dir")
            .arg(dir_m)
            .args(["--json", "collect", "--from", &from, "--amount", "37", "--description", "a book"])
            .output()
            .unwrap()
    });
    let p = buyer.wait_pending();
    let seen = wait_lines(&lines, &mut printed, &["member=Notify", "payme: a payment request", "a book"]);
    assert!(
        seen.contains("bob's &lt;b&gt;books&lt;/b&gt; asks for 0.37 EUR: a book"),
        "the shop, the amount and the description, the shop's text escaped for the body's markup: {seen}"
    );
    // No notification service answered: the request waits and is answered as always.
    buyer.ok(&["refuse", &p["id"].to_string()]);
    let out = job.join().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "refused", "{v}");
    assert_eq!(buyer.available(), 100);
}
