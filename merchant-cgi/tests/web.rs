//! payme-cgi under real web servers (lighttpd's mod_cgi, Debian's Apache with mod_cgid set
//! up as docs/DEPLOY.md says, the merchant's wallet then run as www-data, and Python's CGI
//! server), with a real bank and real wallets; each scenario runs under every server: buying through the page flow (order id and fingerprint on
//! the page, the same order id in the buyer's prompt), refusals in plain words, the wallet
//! field, bodies read before any answer, a late approval claimed with its receipt, and a
//! double submission paid once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::wallet_harness::TestWallet;
use payme_tests::web_harness::{self, http, Kind, WebServer};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The item's bytes: every byte value, so any mangling shows.
fn item_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(3000).collect()
}

/// Writes a config for `merchant`'s wallet with `extra` settings; returns its path.
fn write_config(dir: &Path, merchant: &TestWallet, name: &str, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("paper.bin"), item_bytes()).unwrap();
    let cfg = dir.join(name);
    std::fs::write(
        &cfg,
        format!(
            r#"control_socket = "{sock}"
shop_name = "Bob's Books"
{extra}

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

/// The order id (32 hex digits) an item's page carries in its form.
fn order_of(page: &web_harness::HttpResponse) -> String {
    let text = page.text();
    let at = text.find("name=\"order\" value=\"").expect("the page's form carries an order") + 20;
    text[at..at + 32].to_owned()
}

/// The short form of an order id, as pages and prompts show it.
fn short(order: &str) -> String {
    format!("{}-{}-{}-{}", &order[0..4], &order[4..8], &order[8..12], &order[12..16])
}

fn ip(w: &TestWallet) -> IpAddr {
    w.ip.parse().unwrap()
}

/// POSTs `form` to `item` from `from` (so REMOTE_ADDR is that address), in a thread.
fn post(web: &WebServer, from: IpAddr, item: &str, form: String) -> std::thread::JoinHandle<web_harness::HttpResponse> {
    let (addr, path) = (web.addr.clone(), format!("/cgi-bin/payme-cgi/{item}"));
    std::thread::spawn(move || http(&addr, "POST", &path, Some(&form), Some(from)))
}

/// Follows the "Open the item" link of the page a browser gets once it has paid.
fn open_item(web: &WebServer, delivered: &web_harness::HttpResponse, from: IpAddr) -> web_harness::HttpResponse {
    let text = delivered.text();
    let href = text.split("id=\"open-item\" href=\"").nth(1).expect("a link to the item").split('"').next().unwrap();
    http(&web.addr, "GET", &href.replace("&amp;", "&"), None, Some(from))
}

/// Opens `item`'s page and buys it from `buyer`'s wallet (its port in the form), answering
/// the prompt with `answer` when given. Returns (the page's order, the response).
fn buy(web: &WebServer, buyer: &TestWallet, item: &str, answer: Option<&str>) -> (String, web_harness::HttpResponse) {
    let page = http(&web.addr, "GET", &format!("/cgi-bin/payme-cgi/{item}"), None, Some(ip(buyer)));
    assert_eq!(web.status_of(&page), 200, "{}", page.text());
    let order = order_of(&page);
    let job = post(web, ip(buyer), item, format!("order={order}&wallet={}", buyer.port()));
    if let Some(verb) = answer {
        let p = buyer.wait_pending();
        assert_eq!(p["order"], short(&order), "the prompt names the page's order");
        buyer.ok(&[verb, &p["id"].to_string()]);
    }
    (order, job.join().unwrap())
}

/// The page flow: the item bought with its order and fingerprint on the page and in the
/// prompt, approved and without a question; refused by the person (402), by an empty
/// wallet (402); a wallet field naming another host (400); an unreachable buyer (402 in
/// fixed words); 404, HEAD, bodies read before any answer, 405 and 413; the shop's own
/// wallet down (503).
fn shop_under(kind: Kind) {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| {
        c.replace("auto_approve_limit = 0", "auto_approve_limit = 100")
    });
    let poor = TestWallet::start("bob", "127.0.0.4", &bank, Some(0), |c| c);
    let merchant = TestWallet::create_as(kind.cgi_user(), "bob's books", "127.0.0.3", &bank, Some(0), |c| c).started();
    buyer.ok(&["withdraw", "300"]);
    let cfg_dir = web_harness::shop_dir();
    let cfg = write_config(cfg_dir.path(), &merchant, "cgi.toml", "allow_buyer_address = true\ntimeout_secs = 60");
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &cfg);

    // GET shows the item, its order and the shop key's fingerprint, and a form; it never
    // collects. The buyer's prompt shows the same order, fingerprint and the shop's address.
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, Some(ip(&buyer)));
    assert_eq!(web.status_of(&page), 200);
    assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("method=\"post\""), "{}", page.text());
    assert_eq!(buyer.available(), 300);
    let order = order_of(&page);
    assert!(page.text().contains(&format!("<strong class=\"order\">{}</strong>", short(&order))), "{}", page.text());
    let job = post(&web, ip(&buyer), "paper", format!("order={order}&wallet={}", buyer.port()));
    let p = buyer.wait_pending();
    assert_eq!(p["order"], short(&order));
    assert_eq!(p["peer"], "127.0.0.3", "the shop's address");
    let fp = p["fingerprint"].as_str().unwrap();
    assert!(page.text().contains(&format!("<code class=\"fingerprint\">{fp}</code>")), "{}", page.text());
    buyer.ok(&["approve", &p["id"].to_string()]);
    let r = job.join().unwrap();
    assert_eq!(web.status_of(&r), 200, "{}", r.text());
    // The browser gets its receipt (payment number, amount) and the link to the item.
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("X-Payme-Order"), Some(order.as_str()));
    assert!(r.text().contains("<strong class=\"price\">0.37 EUR</strong>"), "{}", r.text());
    assert!(r.text().contains("id=\"payment\""), "{}", r.text());
    let r = open_item(&web, &r, ip(&buyer));
    assert_eq!(web.status_of(&r), 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(r.body, item_bytes(), "the item's exact bytes");
    assert_eq!(buyer.available(), 263);
    // Known merchant under the limit: no question asked.
    let (_, r) = buy(&web, &buyer, "paper", None);
    assert_eq!(web.status_of(&r), 200);
    assert_eq!(buyer.available(), 226);

    // The buyer refuses: 402 in plain words.
    let (order, r) = buy(&web, &buyer, "atlas", Some("refuse"));
    assert_eq!(web.status_of(&r), 402);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r.text().contains("You declined the payment") && r.text().contains(&short(&order)), "{}", r.text());
    // An empty wallet: refused before any prompt (nobody answers one here), 402.
    let (_, r) = buy(&web, &poor, "paper", None);
    assert_eq!(web.status_of(&r), 402);
    assert!(r.text().contains("does not hold enough money"), "{}", r.text());
    assert_eq!(buyer.available(), 226, "refusals moved nothing");

    // The wallet field takes only a port of REMOTE_ADDR: another host (here the shop's own
    // wallet) is refused with a plain message, and nothing is collected.
    let r = post(&web, ip(&buyer), "paper", format!("wallet={}", merchant.addr.replace(':', "%3A"))).join().unwrap();
    assert_eq!(web.status_of(&r), 400);
    assert!(r.text().contains("on the computer you are browsing from"), "{}", r.text());
    // A wallet that is not there: a fixed text, never the OS's error.
    let r = post(&web, "127.0.0.5".parse().unwrap(), "paper", "wallet=9".into()).join().unwrap();
    assert_eq!(web.status_of(&r), 402);
    assert!(r.text().contains("could not reach your payme wallet at 127.0.0.5:9"), "{}", r.text());
    assert!(!r.text().contains("os error") && !r.text().contains("refused"), "{}", r.text());

    // 404, 405, HEAD; a body the CGI does not use is read, so the answer is whole at once.
    let r = http(&web.addr, "GET", "/cgi-bin/payme-cgi/nothing", None, None);
    assert_eq!(web.status_of(&r), 404);
    let r = http(&web.addr, "HEAD", "/cgi-bin/payme-cgi/paper", None, None);
    assert!(r.body.is_empty(), "HEAD has no body");
    let body = "x=".to_owned() + &"y".repeat(300_000);
    let started = Instant::now();
    let r = http(&web.addr, "POST", "/cgi-bin/payme-cgi/nothing", Some(&body), None);
    assert_eq!(web.status_of(&r), 404);
    assert_whole(&r, started);
    if kind != Kind::Python {
        // Python's server answers 501 for methods it does not implement before the CGI runs.
        let started = Instant::now();
        let r = http(&web.addr, "PUT", "/cgi-bin/payme-cgi/paper", Some(&body), None);
        assert_eq!(r.status, 405);
        assert_whole(&r, started);
        let started = Instant::now();
        let r = http(&web.addr, "POST", "/cgi-bin/payme-cgi/paper", Some(&body), None);
        assert_eq!(r.status, 413);
        assert_whole(&r, started);
    }
    let merchant_balance = bank.accounts().into_iter().find(|a| a.1 == "bob's books").unwrap().2;
    assert_eq!(merchant_balance, 74, "two purchases of 37 deposited");
    bank.assert_audit();

    // The shop's own wallet is down: 503, for the page and for Buy.
    let mut merchant = merchant;
    merchant.stop();
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, Some(ip(&buyer)));
    assert_eq!(web.status_of(&page), 503, "{}", page.text());
    let r = post(&web, ip(&buyer), "paper", format!("wallet={}", buyer.port())).join().unwrap();
    assert_eq!(web.status_of(&r), 503, "{}", r.text());
}

/// The response arrived whole (its Content-Length, when given, is its length) and at once
/// (a web server waiting for an unread body may cut the answer after seconds).
fn assert_whole(r: &web_harness::HttpResponse, started: Instant) {
    if let Some(len) = r.header("Content-Length") {
        assert_eq!(len.parse::<usize>().unwrap(), r.body.len(), "whole: {}", r.text());
    }
    assert!(r.text().contains("</html>"), "whole: {}", r.text());
    assert!(started.elapsed() < Duration::from_secs(3), "at once, not after {:?}", started.elapsed());
}

/// A `#[test]` per server running `scenario(kind)`; where the server is missing (or, for
/// Apache, the tests do not run as root) the test says so loudly and skips, or fails on CI.
macro_rules! under_each {
    ($scenario:ident: $($test:ident => $kind:expr),+ $(,)?) => {$(
        #[test]
        fn $test() {
            if web_harness::server_available($kind) {
                $scenario($kind);
            }
        }
    )+};
}

under_each!(shop_under:
    shop_under_pythons_cgi_server => Kind::Python,
    shop_under_lighttpd => Kind::Lighttpd,
    shop_under_apache => Kind::Apache,
);

under_each!(late_approval_and_double_submission:
    late_approval_is_claimed_with_the_receipt_and_a_double_submission_pays_once_under_lighttpd => Kind::Lighttpd,
    late_approval_is_claimed_with_the_receipt_and_a_double_submission_pays_once_under_apache => Kind::Apache,
);

/// With the shop's defaults (no wallet field): a wallet address in the form is ignored; a
/// buyer who approves after the page stopped waiting is charged, and the receipt from
/// `payme-wallet receipt` gets the item (and only that item); a double submission of one
/// order gives one prompt, one payment, and the item to both requests.
fn late_approval_and_double_submission(kind: Kind) {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| c);
    let merchant =
        TestWallet::create_as(kind.cgi_user(), "bob's books", "127.0.0.3", &bank, Some(0), |c| c).with_log().started();
    buyer.ok(&["withdraw", "300"]);
    let cfg_dir = web_harness::shop_dir();
    let port = format!("wallet_port = {}", buyer.port());
    let impatient = write_config(cfg_dir.path(), &merchant, "impatient.toml", &format!("{port}\ntimeout_secs = 2"));
    let patient = write_config(cfg_dir.path(), &merchant, "patient.toml", &format!("{port}\ntimeout_secs = 60"));
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &impatient);

    // The form's wallet field (here naming the shop's own wallet) is ignored by default:
    // the payment is asked of REMOTE_ADDR's wallet.
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, Some(ip(&buyer)));
    assert!(!page.text().contains("name=\"wallet\""), "no wallet field by default");
    let order = order_of(&page);
    let wallet = merchant.addr.replace(':', "%3A");
    let job = post(&web, ip(&buyer), "paper", format!("order={order}&wallet={wallet}"));
    let p = buyer.wait_pending();
    assert_eq!(p["order"], short(&order));
    // The page gives up first, and says how to get the item if the wallet pays.
    let r = job.join().unwrap();
    assert_eq!(r.status, 402);
    assert!(
        r.text().contains("Payment not confirmed yet") && r.text().contains("payme-wallet receipt"),
        "{}",
        r.text()
    );
    assert!(r.text().contains(&short(&order)), "{}", r.text());
    buyer.ok(&["approve", &p["id"].to_string()]);
    let h = buyer.wait_done(1);
    let paid = h.as_array().unwrap().iter().find(|p| p["state"] == "done").unwrap().clone();
    assert_eq!(paid["order_id"], order.as_str());
    assert_eq!(buyer.available(), 263, "charged");
    let receipt = buyer.ok(&["receipt", &paid["id"].to_string(), "--url", "/cgi-bin/payme-cgi/paper"]);
    let url = receipt["claim_url"].as_str().unwrap();
    let r = http(&web.addr, "GET", url, None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, item_bytes(), "the receipt re-opens the item");
    let token = receipt["receipt"].as_str().unwrap();
    let r = http(&web.addr, "POST", "/cgi-bin/payme-cgi/paper", Some(&format!("receipt={token}")), None);
    assert_eq!((r.status, r.body.len()), (200, item_bytes().len()), "as a form field too");
    let r = http(&web.addr, "GET", &format!("/cgi-bin/payme-cgi/atlas?receipt={token}"), None, None);
    assert_eq!(r.status, 403, "the receipt opens only its own item");
    let mut forged = token.to_owned();
    forged.replace_range(forged.len() - 2.., if token.ends_with("00") { "01" } else { "00" });
    let r = http(&web.addr, "GET", &format!("/cgi-bin/payme-cgi/paper?receipt={forged}"), None, None);
    assert_eq!(r.status, 403, "only the receipt the shop issued");
    drop(web);

    // A double submission: one prompt, one payment, the item for both requests.
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &patient);
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, Some(ip(&buyer)));
    let order = order_of(&page);
    let first = post(&web, ip(&buyer), "paper", format!("order={order}"));
    let p = buyer.wait_pending();
    let second = post(&web, ip(&buyer), "paper", format!("order={order}"));
    merchant.wait_log("collect joins the one in progress");
    assert_eq!(buyer.ok(&["pending"]).as_array().unwrap().len(), 1, "one prompt");
    buyer.ok(&["approve", &p["id"].to_string()]);
    for r in [first.join().unwrap(), second.join().unwrap()] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(open_item(&web, &r, ip(&buyer)).body, item_bytes());
    }
    buyer.wait_done(2);
    assert_eq!(buyer.available(), 226, "paid once");
    let merchant_balance = bank.accounts().into_iter().find(|a| a.1 == "bob's books").unwrap().2;
    assert_eq!(merchant_balance, 74);
    bank.assert_audit();
}

under_each!(paying_in_band:
    paying_in_band_under_lighttpd => Kind::Lighttpd,
    paying_in_band_under_apache => Kind::Apache,
);

/// In band over HTTP 402: a program's GET gets 402 with the signed offer; a retry with a
/// sealed payment gets the item and the receipt; the receipt re-opens the item; a second
/// payment for the paid order is refused (409) and its coins stay the buyer's; an offer for
/// another page does not pay; a damaged header is 400; a paid item that cannot be read is
/// 500 with the receipt, which re-opens it once it is back.
fn paying_in_band(kind: Kind) {
    use payme_tests::inband::{self, exchange, get, pay, withdraw};
    let bank = TestBank::start();
    let buyer = bank.holder(1, "carol", 500);
    let merchant = TestWallet::create_as(kind.cgi_user(), "bob's books", "127.0.0.3", &bank, Some(0), |c| c).started();
    let cfg_dir = web_harness::shop_dir();
    let cfg = write_config(cfg_dir.path(), &merchant, "cgi.toml", "timeout_secs = 60");
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &cfg);
    let path = "/cgi-bin/payme-cgi/paper?edition=2";
    let url = format!("http://{}{path}", web.addr);

    let r = get(&web.addr, path, &[]);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert!(r.text().contains(&format!("payme-wallet pay {url}")), "{}", r.text());
    let offer_header = r.header("PAYMENT-REQUIRED").expect("the offer").to_owned();
    let offer = inband::offer_of(&offer_header);
    // The origin is the one the buyer fetched (pay() checks it as a wallet does).
    assert_eq!(offer.body.resource.as_str(), path);
    assert_eq!(offer.body.amount, pmtp_proto::Amount::new(37));

    let coins = withdraw(&bank, &buyer, 37);
    let payment = pay(&offer_header, &url, coins.clone());
    let r = get(&web.addr, path, &[("PAYMENT-SIGNATURE", &payment)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, item_bytes(), "the item's exact bytes");
    let receipt = r.header("PAYMENT-RESPONSE").expect("the receipt").to_owned();
    inband::check_receipt(&receipt, &offer, &coins);

    // The same payment again: the same receipt, nothing taken twice.
    let r = get(&web.addr, path, &[("PAYMENT-SIGNATURE", &payment)]);
    assert_eq!((r.status, r.header("PAYMENT-RESPONSE")), (200, Some(receipt.as_str())));
    // The receipt re-opens the item; not another item.
    let r = get(&web.addr, path, &[("PAYMENT-RECEIPT", &receipt)]);
    assert_eq!((r.status, r.body == item_bytes()), (200, true), "{}", r.text());
    let r = get(&web.addr, "/cgi-bin/payme-cgi/atlas", &[("PAYMENT-RECEIPT", &receipt)]);
    assert_eq!(r.status, 403);

    // Another payment for the paid order: 409, and its coins are still in circulation.
    let other = withdraw(&bank, &buyer, 37);
    let r = get(&web.addr, path, &[("PAYMENT-SIGNATURE", &pay(&offer_header, &url, other.clone()))]);
    assert_eq!((r.status, r.header("PAYMENT-REFUSED")), (409, Some("46 unexpected_payment")), "{}", r.text());
    assert!(r.text().contains("were not taken"), "{}", r.text());
    assert!(exchange(&bank, other).is_ok(), "the refused coins are the buyer's");
    // The offer for one page does not pay for another.
    let coins = withdraw(&bank, &buyer, 37);
    let fresh = get(&web.addr, path, &[]).header("PAYMENT-REQUIRED").unwrap().to_owned();
    let r = get(&web.addr, "/cgi-bin/payme-cgi/paper", &[("PAYMENT-SIGNATURE", &pay(&fresh, &url, coins.clone()))]);
    assert_eq!((r.status, r.header("PAYMENT-REFUSED")), (402, Some("7 unexpected_message")), "{}", r.text());
    assert!(exchange(&bank, coins).is_ok());
    // A damaged header: 400, and nothing reaches the wallet's words.
    let r = get(&web.addr, path, &[("PAYMENT-SIGNATURE", "v1.<b>")]);
    assert_eq!((r.status, r.header("PAYMENT-REFUSED")), (400, Some("1 malformed")));
    assert!(!r.text().contains("<b>"));
    // Paid, but the item cannot be read: 500 with the receipt, which gets the item once it
    // is back.
    let coins = withdraw(&bank, &buyer, 37);
    let fresh = get(&web.addr, path, &[]).header("PAYMENT-REQUIRED").unwrap().to_owned();
    let file = cfg_dir.path().join("paper.bin");
    std::fs::rename(&file, file.with_extension("away")).unwrap();
    let r = get(&web.addr, path, &[("PAYMENT-SIGNATURE", &pay(&fresh, &url, coins.clone()))]);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("keep your receipt"), "{}", r.text());
    let receipt = r.header("PAYMENT-RESPONSE").expect("the receipt, even so").to_owned();
    inband::check_receipt(&receipt, &inband::offer_of(&fresh), &coins);
    std::fs::rename(file.with_extension("away"), &file).unwrap();
    let r = get(&web.addr, path, &[("PAYMENT-RECEIPT", &receipt)]);
    assert_eq!((r.status, r.body == item_bytes()), (200, true), "{}", r.text());

    let merchant_balance = bank.accounts().into_iter().find(|a| a.1 == "bob's books").unwrap().2;
    assert_eq!(merchant_balance, 74, "two payments of 37 deposited");
    bank.assert_audit();
}

under_each!(a_wallet_with_no_listener_buys:
    a_wallet_with_no_listener_buys_under_lighttpd => Kind::Lighttpd,
    a_wallet_with_no_listener_buys_under_apache => Kind::Apache,
);

/// The whole in-band purchase with the real programs: a buyer's wallet with no PMTP
/// listener at all (it only connects outward) runs `payme-wallet pay URL -o FILE` against
/// payme-cgi; the person approves the new shop (the prompt names its origin and the order),
/// the item arrives whole, the receipt is kept and verified, and paying the URL again
/// re-opens the item with the receipt instead of paying twice.
fn a_wallet_with_no_listener_buys(kind: Kind) {
    let bank = TestBank::start();
    let merchant = TestWallet::create_as(kind.cgi_user(), "bob's books", "127.0.0.3", &bank, Some(0), |c| c).started();
    let buyer = TestWallet::start("carol", "127.0.0.2", &bank, Some(500), |c| {
        assert!(c.contains("pmtp_listener = true"), "{c}");
        c.replace("pmtp_listener = true", "pmtp_listener = false")
    });
    buyer.ok(&["withdraw", "100"]);
    let cfg_dir = web_harness::shop_dir();
    let cfg = write_config(cfg_dir.path(), &merchant, "cgi.toml", "timeout_secs = 60");
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &cfg);
    let url = format!("http://{}/cgi-bin/payme-cgi/paper", web.addr);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("paper.bin");
    let job = {
        let (dir, url, file) = (buyer.dir.path().to_path_buf(), url.clone(), file.clone());
        std::thread::spawn(move || {
            std::process::Command::new(payme_tests::wallet_harness::bin())
                .arg("--data-dir")
                .arg(dir)
                .args(["pay", &url, "-o"])
                .arg(file)
                .output()
                .unwrap()
        })
    };
    let p = buyer.wait_pending();
    let text = p.to_string();
    assert!(text.contains(&format!("http://{}", web.addr)), "the prompt names the shop's origin: {text}");
    assert_eq!(p["amount"], 37, "{text}");
    assert_eq!(p["new_merchant"], true, "{text}");
    buyer.ok(&["approve", &p["id"].to_string()]);
    let done = job.join().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), item_bytes(), "the item, whole");
    assert_eq!(buyer.available(), 63, "paid exactly 37");
    let h = buyer.ok(&["history"]);
    assert!(
        h.as_array().unwrap().iter().any(|x| x["state"] == "done" && x["receipt_valid"] == true && x["amount"] == 37),
        "{h}"
    );
    // The same URL again: the receipt re-opens the item; nothing is paid.
    std::fs::remove_file(&file).unwrap();
    let again = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(buyer.dir.path())
        .args(["pay", &url, "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), item_bytes());
    assert_eq!(buyer.available(), 63, "not paid twice");
    let merchant_balance = bank.accounts().into_iter().find(|a| a.1 == "bob's books").unwrap().2;
    assert_eq!(merchant_balance, 37);
    bank.assert_audit();
}
