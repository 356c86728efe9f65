//! The buyer's wallet window and a shop (payme-cgi under lighttpd), end to end: the shop's
//! "Pay with payme" link opens the wallet window's pay page with the shop's offer; the
//! person approves there; the wallet pays the shop itself and sends the browser back to
//! the item with its receipt. Driven over HTTP by hand here (each header the test's to
//! choose).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::wallet_harness::TestWallet;
use payme_tests::web_harness::{http, http_exact, paper_shop, PAPER as ITEM};

/// The href of the element with id `id` in `html`, unescaped.
fn href_of(html: &str, id: &str) -> String {
    let after = html.split(&format!("id=\"{id}\" href=\"")).nth(1).unwrap_or_else(|| panic!("no #{id} in {html}"));
    after.split('"').next().unwrap().replace("&amp;", "&")
}

/// The path and query of an absolute http URL.
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    format!("/{}", rest.split_once('/').unwrap().1)
}

fn hidden(html: &str, name: &str) -> String {
    let after = html.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap();
    after.split('"').next().unwrap().replace("&amp;", "&")
}

#[test]
fn pay_with_payme_from_the_shops_page_through_the_wallet_window() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| {
        c.replace("pmtp_listener = true", "pmtp_listener = false")
    });
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "300"]);
    let window = buyer.window_session();
    let (_dir, web) = paper_shop(&merchant, &format!("http://{}", window.addr), "");

    // The shop's page links to the wallet window with its offer.
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, None);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("<span class=\"price\">0.37 EUR</span>"), "{}", page.text());
    let link = href_of(&page.text(), "pay-with-payme");
    assert!(link.starts_with(&format!("http://{}/pay?", window.addr)), "{link}");
    let pay_path = path_of(&link);

    // Arriving from the shop's site, the browser brings no cookie: the page reloads itself
    // once from the window's own origin (which brings it), and without one says to log in.
    let bare = http_exact(&window.addr, "GET", &pay_path, &[("Host", &window.addr)], None);
    assert_eq!(bare.status, 200);
    assert!(bare.text().contains("http-equiv=\"refresh\""), "{}", bare.text());
    assert!(bare.text().contains("again=1"), "{}", bare.text());
    let again = http_exact(&window.addr, "GET", &format!("{pay_path}&again=1"), &[("Host", &window.addr)], None);
    assert_eq!(again.status, 401, "{}", again.text());

    // With the session: the shop, its origin, the order, the amount, the key, new.
    let review = window.get(&pay_path);
    assert_eq!(review.status, 200, "{}", review.text());
    let text = review.text();
    let order = page.text().split("<strong class=\"order\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    assert!(text.contains(&order), "the page's order: {text}");
    assert!(text.contains("0.37 EUR"), "{text}");
    assert!(text.contains(&format!("http://{}", web.addr)), "the shop's origin: {text}");
    assert!(text.contains("never paid"), "a new shop: {text}");
    let csp = review.header("Content-Security-Policy").unwrap();
    assert!(csp.contains(&format!("form-action 'self' http://{}", web.addr)), "{csp}");
    let (url, offer) = (hidden(&text, "url"), hidden(&text, "offer"));
    let form = |csrf: &str| {
        let mut f = form_urlencoded_pairs(&[("url", &url), ("offer", &offer)]);
        if !csrf.is_empty() {
            f.push_str(&format!("&csrf={csrf}"));
        }
        f
    };

    // Without the token: refused, nothing paid.
    let r = window.post("/pay", &form(""));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(buyer.available(), 300);

    // Approved: paid at once (no second question), and back to the item with the receipt.
    let r = window.post("/pay", &form(&window.csrf));
    assert_eq!(r.status, 303, "{}", r.text());
    let back = r.header("Location").unwrap().to_owned();
    assert!(back.starts_with(&url) && back.contains("receipt="), "{back}");
    assert_eq!(buyer.available(), 263, "paid 37");
    let item = http(&web.addr, "GET", &path_of(&back), None, None);
    assert_eq!((item.status, item.text().as_str()), (200, ITEM));
    let history = buyer.ok(&["history"]);
    assert_eq!(history[0]["receipt_valid"], true, "{history}");
    assert_eq!(history[0]["order"], order.as_str(), "{history}");

    // The same link again: the wallet re-opens the paid order rather than paying twice.
    let r = window.post("/pay", &form(&window.csrf));
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(buyer.available(), 263, "not paid twice");
    bank.assert_audit();
}

/// `k=v&k=v`, urlencoded.
fn form_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}
