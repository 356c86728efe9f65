//! payme-cgi run by hand (no web server): --help and --version answer, and it never prints
//! a CGI response to a terminal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_payme-cgi")).args(args).env_remove("GATEWAY_INTERFACE").output().unwrap()
}

#[test]
fn help_and_version_by_hand() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{flag}");
        assert!(text.starts_with("payme-cgi:") && text.contains("PAYME_CGI_CONFIG"), "{text}");
        assert!(!text.contains("Status:"), "no CGI response: {text}");
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("payme-cgi "));
    let out = run(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown option"));
}
