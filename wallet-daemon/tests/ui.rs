//! The wallet window over real HTTP: a real bank and real wallet processes on loopback,
//! the window's requests written by hand (so every header is the test's to choose). Each
//! of its defences is shown refusing: another Host (DNS rebinding), another Origin, no
//! session, no CSRF token or a wrong one; and the same request passing once it is right.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::wallet_harness::TestWallet;
use payme_tests::web_harness::{http_exact, HttpResponse};
use serde_json::Value;

/// One request with exactly these headers; the body as text.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let form = (method == "POST").then_some(body);
    let r = http_exact(addr, method, path, headers, form);
    Answer { status: r.status, body: r.text(), r }
}

struct Answer {
    status: u16,
    body: String,
    r: HttpResponse,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.r.header(name)
    }
}

/// Logs in: (address, cookie header value, CSRF token).
fn logged_in(w: &TestWallet) -> (String, String, String) {
    let s = w.window_session();
    (s.addr, s.cookie, s.csrf)
}

/// Starts `collect` from `buyer` in a thread (it blocks until the buyer answers).
fn collect(merchant: &TestWallet, buyer: &TestWallet, amount: u64) -> std::thread::JoinHandle<Value> {
    let (dir, from) = (merchant.dir.path().to_path_buf(), buyer.addr.clone());
    std::thread::spawn(move || {
        let out = std::process::Command::new(payme_tests::wallet_harness::bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["--json", "collect", "--from", &from, "--amount", &amount.to_string()])
            .args(["--description", "a <b>bold</b> book"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    })
}

fn pending_ids(w: &TestWallet) -> Vec<u64> {
    w.ok(&["pending"]).as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

#[test]
fn the_login_link_works_once_and_sets_a_strict_http_only_cookie() {
    let bank = TestBank::start();
    let w = TestWallet::create("alice", "127.0.0.2", &bank, None, |c| c).with_log().started();
    let (addr, path) = w.window_link();
    let token = path.rsplit_once('=').unwrap().1.to_owned();
    let a = http(&addr, "GET", &path, &[("Host", &addr)], "");
    assert_eq!(a.status, 303);
    let cookie = a.header("set-cookie").unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let csp = a.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let again = http(&addr, "GET", &path, &[("Host", &addr)], "");
    assert_eq!(again.status, 403, "a login link is good once");
    assert!(again.header("set-cookie").is_none());
    // Without the cookie, no page.
    let anon = http(&addr, "GET", "/", &[("Host", &addr)], "");
    assert_eq!(anon.status, 401);
    assert!(!anon.body.contains("csrf"));
    // Nothing secret in the log.
    let session = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let log = w.log_text();
    assert!(log.contains("logged in"), "the daemon logs the login: {log}");
    assert!(!log.contains(&token) && !log.contains(session), "a secret in the log: {log}");
}

#[test]
fn requests_for_another_host_from_another_origin_or_without_the_token_are_refused() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(1000), |c| c);
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "300"]);
    let (addr, cookie, csrf) = logged_in(&buyer);
    let job = collect(&merchant, &buyer, 37);
    let p = buyer.wait_pending();
    let id = p["id"].to_string();

    // The page shows the request, the shop's text escaped.
    let page = http(&addr, "GET", "/", &[("Host", &addr), ("Cookie", &cookie)], "");
    assert!(page.body.contains("€0.37") || page.body.contains("0.37 EUR"), "{}", page.body);
    assert!(page.body.contains("a &lt;b&gt;bold&lt;/b&gt; book"), "{}", page.body);
    assert!(!page.body.contains("<b>bold"), "peer text unescaped");
    assert!(page.body.contains(p["fingerprint"].as_str().unwrap()));
    assert!(page.body.contains(p["order"].as_str().unwrap()));
    assert!(page.body.contains("http-equiv=\"refresh\""), "the list refreshes itself without script");
    assert!(page.header("access-control-allow-origin").is_none(), "no CORS");

    let approve = format!("csrf={csrf}&id={id}&answer=approve");
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    let port = addr.rsplit_once(':').unwrap().1;
    let rebound = format!("evil.example:{port}");
    let a = http(&addr, "POST", "/answer", &[("Host", &rebound), ("Cookie", &cookie)], &approve);
    assert_eq!(a.status, 421, "{}", a.body);
    let a = http(&addr, "GET", "/", &[("Host", &rebound), ("Cookie", &cookie)], "");
    assert_eq!(a.status, 421);
    assert!(!a.body.contains(&csrf), "no page, no token for another host");
    // Another origin's form, even holding the token.
    let a = http(
        &addr,
        "POST",
        "/answer",
        &[("Host", &addr), ("Cookie", &cookie), ("Origin", "http://evil.example")],
        &approve,
    );
    assert_eq!(a.status, 403);
    // No token, a wrong one, no session.
    let a = http(&addr, "POST", "/answer", &[("Host", &addr), ("Cookie", &cookie)], &format!("id={id}&answer=approve"));
    assert_eq!(a.status, 403);
    let wrong = format!("csrf={}&id={id}&answer=approve", "0".repeat(csrf.len()));
    let a = http(&addr, "POST", "/answer", &[("Host", &addr), ("Cookie", &cookie)], &wrong);
    assert_eq!(a.status, 403);
    let a = http(&addr, "POST", "/answer", &[("Host", &addr)], &approve);
    assert_eq!(a.status, 401);
    assert_eq!(pending_ids(&buyer), vec![p["id"].as_u64().unwrap()], "nothing refused the request meanwhile");

    // The same form, right: paid.
    let a = http(
        &addr,
        "POST",
        "/answer",
        &[("Host", &addr), ("Cookie", &cookie), ("Origin", &format!("http://{addr}"))],
        &approve,
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let out = job.join().unwrap();
    assert_eq!(out["outcome"], "paid", "{out}");
    let history = http(&addr, "GET", "/history", &[("Host", &addr), ("Cookie", &cookie)], "");
    assert!(history.body.contains("verified"), "{}", history.body);
}

#[test]
fn a_refusal_in_the_window_reaches_the_shop() {
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(1000), |c| c);
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "100"]);
    let (addr, cookie, csrf) = logged_in(&buyer);
    let job = collect(&merchant, &buyer, 20);
    let id = buyer.wait_pending()["id"].to_string();
    let a = http(
        &addr,
        "POST",
        "/answer",
        &[("Host", &addr), ("Cookie", &cookie)],
        &format!("csrf={csrf}&id={id}&answer=refuse"),
    );
    assert_eq!(a.status, 303);
    let out = job.join().unwrap();
    assert_eq!(out["outcome"], "refused", "{out}");
    assert_eq!(out["label"], "refused_by_user", "{out}");
    assert_eq!(buyer.available(), 100, "nothing paid");
}

#[test]
fn the_window_is_off_when_configured_so() {
    let bank = TestBank::start();
    let w = TestWallet::start("alice", "127.0.0.2", &bank, None, |c| {
        c.replace("listen = \"127.0.0.1:0\"", "listen = \"none\"")
    });
    let (ok, v) = w.run(&["ui"]);
    assert!(!ok, "{v}");
    assert!(v.to_string().contains("off"), "{v}");
}

#[test]
fn payme_wallet_ui_hands_the_browser_a_login_link_that_works() {
    let bank = TestBank::start();
    let w = TestWallet::start("alice", "127.0.0.2", &bank, None, |c| c);
    // A "browser" that writes down the address it was given.
    let dir = tempfile::tempdir().unwrap();
    let (script, given) = (dir.path().join("browser"), dir.path().join("given"));
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" > {}.tmp && mv {0}.tmp {0}\n", given.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(w.dir.path())
        .arg("ui")
        .env("BROWSER", &script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("opening in your browser") && !said.contains("token="),
        "the link goes to the browser only: {said}"
    );
    let mut url = String::new();
    for _ in 0..200 {
        url = std::fs::read_to_string(&given).unwrap_or_default().trim().to_owned();
        if !url.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("no link given to the browser: {url:?}"));
    let (addr, path) = rest.split_once('/').unwrap();
    let r = http(addr, "GET", &format!("/{path}"), &[("Host", addr)], "");
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("set-cookie").is_some());
    // --print: the link on the terminal instead.
    let out = std::process::Command::new(payme_tests::wallet_harness::bin())
        .arg("--data-dir")
        .arg(w.dir.path())
        .args(["ui", "--print"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("http://{addr}/login?token=")), "{said}");
}
