//! The command lines as people and scripts use them: human text by default, JSON only with
//! `--json` and then for everything (errors too, numbers as numbers), the documented exit
//! codes, `--help` on every command, and errors that name the user when permissions are
//! the cause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::{self, TestBank};
use payme_tests::wallet_harness::{self, TestWallet};
use payme_tests::web_harness::cgi_bin;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The subcommands a `--help` page lists under "Commands:" (but `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// `--help` of `bin` and of every subcommand below it, each exiting 0 with a usage line.
fn help_everywhere(bin: &Path, path: &mut Vec<String>, seen: &mut usize) {
    assert!(*seen < 100, "bounded walk");
    let out = Command::new(bin).args(path.iter()).arg("--help").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && page.contains("Usage:"), "{} {path:?} --help: {}", bin.display(), text(&out));
    *seen += 1;
    for sub in subcommands(&page) {
        path.push(sub);
        help_everywhere(bin, path, seen);
        path.pop();
    }
}

#[test]
fn every_command_has_help() {
    for bin in [bank_harness::bin(), wallet_harness::bin()] {
        let mut seen = 0;
        help_everywhere(&bin, &mut Vec::new(), &mut seen);
        assert!(seen >= 8, "{}: only {seen} help pages", bin.display());
    }
    for flag in ["--help", "-h"] {
        let out = Command::new(cgi_bin()).arg(flag).env_remove("REQUEST_METHOD").output().unwrap();
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && page.contains("Usage") && !page.contains("405"), "{}", text(&out));
    }
}

#[test]
fn the_wallet_prints_text_for_people_and_json_for_scripts() {
    let bank = TestBank::start();
    let w = TestWallet::start("carol", "127.0.0.2", &bank, Some(100), |c| c);
    let out = w.run_raw(&["withdraw", "20"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(human.starts_with("withdrew 20 from bank bank-a; the account holds 80"), "{human}");
    assert!(serde_json::from_str::<Value>(human.trim()).is_err(), "no JSON without --json: {human}");
    for args in [&["balance"][..], &["history"], &["merchants"], &["pending"], &["statement"]] {
        let out = w.run_raw(args);
        let human = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(!human.trim_start().starts_with(['{', '[']), "{args:?} printed JSON: {human}");
    }
    // Under --json, numbers are numbers.
    let (ok, v) = w.run(&["withdraw", "5"]);
    assert!(ok);
    assert_eq!((v["amount"].as_u64(), v["account_balance"].as_u64()), (Some(5), Some(75)), "{v}");
    // A refusal by the daemon: JSON on stdout, exit 1.
    let (ok, v) = w.run(&["approve", "999"]);
    assert!(!ok);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no pending request 999"), "{v}");
    // A failure before any daemon is asked (a missing file): JSON too, exit 1.
    let out = Command::new(wallet_harness::bin())
        .args(["--json", "--data-dir"])
        .arg(w.dir.path())
        .args(["bank", "add", "--id", "x", "--addr", "127.0.0.1:1", "--public-key", "/nonexistent/bank.pub"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("JSON: {}", text(&out)));
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("/nonexistent/bank.pub"), "{v}");
    // A bad amount is a usage error: exit 2, one line.
    let out = w.run_raw(&["withdraw", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", text(&out));
    bank.assert_audit();
}

#[test]
fn the_bank_prints_json_for_everything_under_json() {
    let bank = TestBank::start();
    bank.holder(1, "alice", 250);
    let run = |args: &[&str]| {
        let out = Command::new(bank_harness::bin())
            .arg("--data-dir")
            .arg(bank.dir.path())
            .args(args)
            .env("PAYME_BANK_PASSPHRASE", bank_harness::PASSPHRASE)
            .output()
            .unwrap();
        (out.status.code(), text(&out), serde_json::from_slice::<Value>(&out.stdout).ok())
    };
    let (code, out, v) = run(&["--json", "audit"]);
    let v = v.unwrap_or_else(|| panic!("audit --json: {out}"));
    assert_eq!(code, Some(0));
    assert_eq!(v["total_balances"].as_u64(), Some(250), "a number, not a string: {v}");
    let (_, out, v) = run(&["audit"]);
    assert!(v.is_none() && out.contains("account balances total 250"), "{out}");
    let (code, out, v) = run(&["--json", "account", "credit", "1001", "5"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v.unwrap()["balance"].as_u64(), Some(255));
    // An error under --json is JSON, exit 1.
    let (code, out, v) = run(&["--json", "account", "credit", "999999", "5"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(v.unwrap_or_else(|| panic!("{out}"))["ok"], false);
    let (code, out, _) = run(&["account", "credit", "999999", "5"]);
    assert!(code == Some(1) && out.starts_with("payme-bank: "), "{out}");
    bank.assert_audit();
}

fn is_root() -> bool {
    payme_node::users::current_uid() == Some(0)
}

fn as_www_data(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=www-data", "--regid=www-data", "--clear-groups"]).arg(bin);
    c
}

/// Another user's command on a wallet's files or control socket says whose they are.
#[test]
fn errors_name_the_users_when_permissions_are_the_cause() {
    if !is_root() || Command::new("id").arg("www-data").output().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs as root with a www-data user");
        eprintln!("SKIPPED: needs root and a www-data user to act as another user");
        return;
    }
    let bank = TestBank::start();
    let w = TestWallet::start("carol", "127.0.0.2", &bank, None, |c| c);
    // The directory is readable, config.toml (0600, root's) is not.
    std::fs::set_permissions(w.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = as_www_data(&wallet_harness::bin()).arg("--data-dir").arg(w.dir.path()).arg("balance").output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("config.toml") && msg.contains("owned by root; this runs as www-data"), "{msg}");
    // The control socket, opened to www-data for this test: the daemon answers whose it is
    // instead of resetting the connection.
    let socket = w.dir.path().join("control.sock");
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let config = w.dir.path().join("config.toml");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = as_www_data(&wallet_harness::bin()).arg("--data-dir").arg(w.dir.path()).arg("balance").output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("this wallet belongs to root") && msg.contains("you are www-data"), "{msg}");
}
