//! Running under systemd: the shipped unit files pass `systemd-analyze verify`, and both
//! daemons tell a `Type=notify` service manager when they are ready and when they stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{self, spawn_daemon, stop_daemon, TestBank, PASSPHRASE};
use payme_tests::wallet_harness::{self, TestWallet, WALLET_PASSPHRASE};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze verify` on `text` (written as `name` in a fresh directory), `--user`
/// for a user unit; returns what it printed. An installed binary path is replaced by the
/// one just built, since verify checks that ExecStart's program exists.
fn verify(name: &str, text: &str, user: bool) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime).env("HOME", dir.path());
    }
    let out = cmd.arg("verify").arg(&path).output().expect("systemd-analyze runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

fn have_systemd_analyze() -> bool {
    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "systemd-analyze is missing on CI (.ci/run installs systemd)"
    );
    eprintln!("SKIPPED: systemd-analyze is not installed; the unit files were not checked");
    false
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    if !have_systemd_analyze() {
        return;
    }
    let bank = unit("payme-bank.service").replace("/usr/local/bin/payme-bank", &bank_harness::bin().to_string_lossy());
    let (ok, printed) = verify("payme-bank.service", &bank, false);
    assert!(ok && printed.trim().is_empty(), "payme-bank.service: {printed}");
    // The check is real: a misspelt setting is reported.
    let (_, printed) = verify("payme-bank.service", &bank.replace("Type=notify", "Type=notifyy"), false);
    assert!(printed.contains("notifyy"), "{printed}");

    // A user unit: %h is the home directory, where `cargo install` puts the binary.
    let wallet =
        unit("payme-wallet.service").replace("%h/.cargo/bin/payme-wallet", &wallet_harness::bin().to_string_lossy());
    assert!(!wallet.contains("/.cargo/bin/payme-wallet"));
    let (ok, printed) = verify("payme-wallet.service", &wallet, true);
    assert!(ok && printed.trim().is_empty(), "payme-wallet.service: {printed}");
}

/// Waits (at most 60 s) for one datagram on `socket`.
fn next_state(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0; 256];
    let n = socket.recv(&mut buf).expect("a notification within 60 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    (UnixDatagram::bind(&path).unwrap(), path)
}

#[test]
fn the_bank_notifies_ready_once_it_serves_and_stopping_on_sigterm() {
    let mut bank = TestBank::start();
    bank.stop();
    let sockets = tempfile::tempdir().unwrap();
    let (socket, path) = notify_socket(sockets.path());
    let mut cmd = Command::new(bank_harness::bin());
    cmd.arg("--data-dir").arg(bank.dir.path()).arg("serve").env("PAYME_BANK_PASSPHRASE", PASSPHRASE);
    cmd.env("NOTIFY_SOCKET", &path);
    let (child, addr) = spawn_daemon(cmd);
    assert_eq!(next_state(&socket), "READY=1\n");
    // Ready means serving: a connection is accepted at once.
    std::net::TcpStream::connect(&addr).expect("the bank accepts once it said ready");
    let pid = child.id();
    assert!(Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success());
    assert_eq!(next_state(&socket), "STOPPING=1\n");
    stop_daemon(child);
    bank.assert_audit();
}

#[test]
fn the_wallet_notifies_ready_once_it_serves() {
    let bank = TestBank::start();
    let mut w = TestWallet::start("carol", "127.0.0.2", &bank, None, |c| c);
    w.stop();
    let sockets = tempfile::tempdir().unwrap();
    let (socket, path) = notify_socket(sockets.path());
    let mut cmd = Command::new(wallet_harness::bin());
    cmd.arg("--data-dir").arg(w.dir.path()).arg("serve").env("PAYME_WALLET_PASSPHRASE", WALLET_PASSPHRASE);
    cmd.env("NOTIFY_SOCKET", &path);
    let (child, _addr) = spawn_daemon(cmd);
    assert_eq!(next_state(&socket), "READY=1\n");
    assert!(w.dir.path().join("control.sock").exists(), "the control socket is there once it said ready");
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    assert_eq!(next_state(&socket), "STOPPING=1\n");
    stop_daemon(child);
}
