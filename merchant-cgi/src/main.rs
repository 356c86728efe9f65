//! `payme-cgi`: reads the CGI environment and standard input, answers on standard output.
//! Errors go to standard error (the web server's log); the buyer never sees a trace.

use merchant_cgi::config::{Config, DEFAULT_PATH};
use merchant_cgi::wallet::WalletSocket;
use merchant_cgi::{handle, Request};
use std::io::Write;
use std::time::Duration;

fn main() {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
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
