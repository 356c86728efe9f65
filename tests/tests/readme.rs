//! The README's walk-through ("A first purchase, top to bottom") runs as written: its shell
//! blocks, in order, in one shell, with the programs just built on PATH. Only the two fixed
//! ports (the bank's 8000, the shop's 8080) are swapped for free ones, so the test cannot
//! collide with anything else on the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness;
use std::path::Path;
use std::process::Command;

/// The ```sh blocks between two headings of the README.
fn shell_blocks(readme: &str, from: &str, to: &str) -> String {
    let start = readme.find(from).expect("the walk-through heading");
    let end = start + readme[start..].find(to).expect("the heading after it");
    let mut script = String::new();
    let mut inside = false;
    for line in readme[start..end].lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_readme_walkthrough_runs_top_to_bottom() {
    if Command::new("lighttpd").arg("-v").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "lighttpd is missing on CI (.ci/run installs it)");
        eprintln!("SKIPPED: lighttpd is not installed; the README's walk-through was not run");
        return;
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let walk = shell_blocks(&readme, "## A first purchase, top to bottom", "## Try it without typing");
    assert!(walk.contains("payme-wallet --data-dir ./alice pay ") && walk.contains("lighttpd -f"), "{walk}");
    let (bank, web) = (free_port(), free_port());
    let walk = walk
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{bank}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{web}"))
        .replace("server.port = 8080", &format!("server.port = {web}"));
    assert!(!walk.contains("8000") && !walk.contains("8080"), "every fixed port replaced: {walk}");

    let home = tempfile::tempdir().unwrap();
    let bin = bank_harness::bin();
    let bin_dir = bin.parent().unwrap();
    for program in ["payme-bank", "payme-wallet", "payme-cgi"] {
        assert!(bin_dir.join(program).exists(), "{program} is built (cargo build --bins)");
    }
    // Whatever happens, nothing the walk-through started outlives the test.
    let script = format!(
        "set -euo pipefail\n\
         trap 'set +e; kill $(jobs -p) 2>/dev/null; p=$(cat {h}/payme-try/lighttpd.pid 2>/dev/null); [ -n \"$p\" ] && kill \"$p\" 2>/dev/null; true' EXIT\n\
         {walk}",
        h = home.path().display()
    );
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("timeout")
        .args(["300", "bash", "-c", &script])
        .current_dir(home.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .env("LANG", "C.UTF-8")
        // Alice's wallet window on a free port too (the shop's has none: `--ui none`).
        .env("PAYME_WALLET_UI", "127.0.0.1:0")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the walk-through failed ({}):\n{text}", out.status);
    for expected in [
        "withdrew 2000 from bank bank-a; the account holds 8000",
        "Bob's Books asks 250 for The PayMe paper (NEW merchant",
        "paid 250 to Bob's Books at http://127.0.0.1:",
        "The PayMe paper, as a text file.",
        "receipt verified",
        "available: 1750",
        "circulation: OK",
        "ledger: OK",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let bob = text.lines().find(|l| l.trim_end().ends_with(" bob")).unwrap_or_else(|| panic!("bob's account:\n{text}"));
    assert!(bob.split_whitespace().nth(1) == Some("250"), "bob holds 250: {bob}");
}
