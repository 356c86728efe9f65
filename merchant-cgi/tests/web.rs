//! payme-cgi under real web servers (lighttpd's mod_cgi and Python's CGI server), with a
//! real bank and two real wallets: buying through the page flow, refusals, 404, HEAD.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::wallet_harness::TestWallet;
use payme_tests::web_harness::{self, http, Kind, WebServer};
use std::path::Path;

/// The item's bytes: every byte value, so any mangling shows.
fn item_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(3000).collect()
}

fn write_config(dir: &Path, merchant: &TestWallet) -> std::path::PathBuf {
    std::fs::write(dir.join("paper.bin"), item_bytes()).unwrap();
    let cfg = dir.join("cgi.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"control_socket = "{sock}"
shop_name = "Bob's Books"
timeout_secs = 40

[[item]]
id = "paper"
price = 37
description = "The PayMe paper"
content_type = "application/octet-stream"
file = "{dir}/paper.bin"

[[item]]
id = "atlas"
price = 200
description = "A very large atlas"
content_type = "text/plain; charset=utf-8"
body = "an atlas"
"#,
            sock = merchant.dir.path().join("control.sock").display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// Buys `item` over HTTP in a thread while `approve` answers the buyer's wallet.
fn buy(web: &WebServer, buyer: &TestWallet, item: &str, answer: Option<&str>) -> web_harness::HttpResponse {
    let (addr, form) = (web.addr.clone(), format!("wallet={}", buyer.addr.replace(':', "%3A")));
    let path = format!("/cgi-bin/payme-cgi/{item}");
    let job = std::thread::spawn(move || http(&addr, "POST", &path, Some(&form), None));
    if let Some(verb) = answer {
        let p = buyer.wait_pending();
        buyer.ok(&[verb, &p["id"].to_string()]);
    }
    job.join().unwrap()
}

fn shop_under(kind: Kind) {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| {
        c.replace("auto_approve_limit = 0", "auto_approve_limit = 100")
    });
    let poor = TestWallet::start("bob", "127.0.0.4", &bank, Some(0), |c| c);
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "300"]);
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = write_config(cfg_dir.path(), &merchant);
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &cfg);

    // GET shows the item and a form; it never collects.
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, None);
    assert_eq!(web.status_of(&page), 200);
    assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("method=\"post\""), "{}", page.text());
    assert_eq!(buyer.available(), 300);

    // The first purchase: a new merchant, so the buyer approves; the item's exact bytes.
    let r = buy(&web, &buyer, "paper", Some("approve"));
    assert_eq!(web.status_of(&r), 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(r.body, item_bytes(), "the item's exact bytes");
    assert_eq!(buyer.available(), 263);
    // Known merchant under the limit: no question asked.
    let r = buy(&web, &buyer, "paper", None);
    assert_eq!(web.status_of(&r), 200);
    assert_eq!(buyer.available(), 226);

    // The buyer refuses: 402 with the reason.
    let r = buy(&web, &buyer, "atlas", Some("refuse"));
    assert_eq!(web.status_of(&r), 402);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r.text().contains("You declined the payment"), "{}", r.text());
    // An empty wallet: 402, not enough money.
    let r = buy(&web, &poor, "paper", Some("approve"));
    assert_eq!(web.status_of(&r), 402);
    assert!(r.text().contains("does not hold enough money"), "{}", r.text());
    assert_eq!(buyer.available(), 226, "refusals moved nothing");

    // 404, 405, HEAD.
    let r = http(&web.addr, "GET", "/cgi-bin/payme-cgi/nothing", None, None);
    assert_eq!(web.status_of(&r), 404);
    let r = http(&web.addr, "HEAD", "/cgi-bin/payme-cgi/paper", None, None);
    assert!(r.body.is_empty(), "HEAD has no body");
    if kind == Kind::Lighttpd {
        // Python's server answers 501 for methods it does not implement before the CGI runs.
        let r = http(&web.addr, "PUT", "/cgi-bin/payme-cgi/paper", Some(""), None);
        assert_eq!(r.status, 405);
    }
    let merchant_balance = bank.accounts().into_iter().find(|a| a.1 == "bob's books").unwrap().2;
    assert_eq!(merchant_balance, 74, "two purchases of 37 deposited");
    bank.assert_audit();
}

#[test]
fn shop_under_pythons_cgi_server() {
    shop_under(Kind::Python);
}

#[test]
fn shop_under_lighttpd() {
    if !web_harness::lighttpd_installed() {
        // CI installs lighttpd (.ci/run); there a missing server is a failure.
        assert!(std::env::var_os("CI").is_none(), "lighttpd is not installed on CI");
        eprintln!("SKIPPED: lighttpd is not installed (apt-get install lighttpd)");
        return;
    }
    shop_under(Kind::Lighttpd);
}
