//! `payme-cgi`: reads the CGI environment and standard input, answers on standard output.
//! Errors go to standard error (the web server's log); the buyer never sees a trace.

use merchant_cgi::config::{Config, DEFAULT_PATH};
use merchant_cgi::wallet::WalletSocket;
use merchant_cgi::{handle, Request};
use std::io::Write;
use std::time::Duration;

const HELP: &str = "\
payme-cgi: sells items from any web server for payme coins (CGI/1.1, RFC 3875)

Usage: payme-cgi [--help | --version]    (by hand; a web server runs it without arguments)

A web server runs it for each request of a shop page; it reads the CGI environment and
standard input and prints the response. It is not meant to be run by hand.

Configuration: the file PAYME_CGI_CONFIG names (default /etc/payme/cgi.toml): the catalog
(items, prices, files), the merchant wallet's control socket, the shop's origin.
Deployment with lighttpd and Apache: docs/DEPLOY.md.

Options (outside a web server only):
  -h, --help     this text
  -V, --version  the version
";

fn main() {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    // Run by hand (no web server set GATEWAY_INTERFACE): answer --help and --version
    // instead of printing a CGI response to a terminal.
    if !env.contains_key("GATEWAY_INTERFACE") {
        let arg = std::env::args().nth(1).unwrap_or_default();
        let text = match arg.as_str() {
            "-h" | "--help" => HELP.to_owned(),
            "-V" | "--version" => format!("payme-cgi {}\n", env!("CARGO_PKG_VERSION")),
            "" => format!("{HELP}\n(no GATEWAY_INTERFACE: run by a web server, not by hand)\n"),
            other => {
                eprintln!("payme-cgi: unknown option {}; try --help", other.escape_debug());
                std::process::exit(2);
            }
        };
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return;
    }
    let req = Request::from_env(&env);
    let path = env.get("PAYME_CGI_CONFIG").cloned().unwrap_or_else(|| DEFAULT_PATH.into());
    let response = match Config::load(std::path::Path::new(&path)) {
        Ok(config) => {
            let wallet = WalletSocket {
                path: &config.control_socket,
                deadline: Duration::from_secs(config.timeout_secs.max(1)),
            };
            handle(&req, &mut std::io::stdin().lock(), &config, &wallet)
        }
        Err(e) => {
            eprintln!("payme-cgi: configuration: {e} (set PAYME_CGI_CONFIG)");
            merchant_cgi::Response {
                status: 500,
                reason: "Internal Server Error",
                headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
                body: b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Shop unavailable</title></head><body><h1>Shop unavailable</h1><p>The shop is not configured correctly.</p></body></html>\n".to_vec(),
            }
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&response.to_cgi(req.method == "HEAD"));
    let _ = out.flush();
}
