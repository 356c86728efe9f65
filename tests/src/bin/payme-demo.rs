//! `payme-demo`: the whole system on loopback, step by step.
//!
//! Starts a bank, a buyer's wallet and a merchant's wallet, and a web server running
//! payme-cgi (lighttpd when installed, else Python's CGI server); funds the buyer; buys an
//! item over HTTP, approving the payment as the buyer would; prints each step and the
//! balances; and stops everything, at the end or on Ctrl-C. `--keep-running` leaves it all
//! up for you to try with a browser and `payme-wallet` until Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a demo that fails should stop loudly

use payme_tests::bank_harness::{self, TestBank};
use payme_tests::wallet_harness::{self, TestWallet};
use payme_tests::web_harness::{self, http, Kind, WebServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn step(n: u32, text: &str) {
    println!("[{n}/9] {text}");
}

fn main() {
    let keep = std::env::args().any(|a| a == "--keep-running");
    println!("payme demo: a bank, two wallets and a web shop, all on loopback, in temporary directories\n");
    step(1, "building payme-bank, payme-wallet and payme-cgi");
    bank_harness::build_binaries();

    // Ctrl-C reaches the daemons too (same process group) and they stop gracefully; we
    // wait for that, then remove the temporary directories on the way out.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::SeqCst);
        });
    }

    let bank = TestBank::start();
    step(2, &format!("bank {} listening on {} (data in {})", bank.public.name, bank.addr, bank.dir.path().display()));
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(1000), |c| c);
    step(
        3,
        &format!(
            "buyer wallet 'alice' on {}; her account {} was paid 1000 at the counter",
            buyer.addr,
            buyer.account.unwrap()
        ),
    );
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    step(4, &format!("merchant wallet 'bob's books' on {}; account {}", merchant.addr, merchant.account.unwrap()));
    let w = buyer.ok(&["withdraw", "500"]);
    step(
        5,
        &format!(
            "alice withdraws 500 in coins: wallet holds {}, account keeps {}",
            buyer.available(),
            w["account_balance"]
        ),
    );

    let shop = tempfile::tempdir().unwrap();
    let item = "The PayMe paper, as a plain-text excerpt.\n\nPayMe is an on-line electronic cash system...\n";
    std::fs::write(shop.path().join("paper.txt"), item).unwrap();
    let cfg = shop.path().join("cgi.toml");
    std::fs::write(
        &cfg,
        format!(
            "control_socket = \"{}\"\nshop_name = \"Bob's Books\"\nwallet_port = {}\n\n[[item]]\nid = \"paper\"\nprice = 37\ndescription = \"The PayMe paper (excerpt)\"\ncontent_type = \"text/plain; charset=utf-8\"\nfile = \"{}/paper.txt\"\n",
            merchant.dir.path().join("control.sock").display(),
            buyer.port(),
            shop.path().display()
        ),
    )
    .unwrap();
    let kind = if web_harness::lighttpd_installed() { Kind::Lighttpd } else { Kind::Python };
    let web = WebServer::start(kind, &web_harness::cgi_bin(), &cfg);
    let url = format!("http://{}/cgi-bin/payme-cgi/paper", web.addr);
    step(
        6,
        &format!(
            "web server ({}) runs payme-cgi: {url}",
            if kind == Kind::Lighttpd { "lighttpd" } else { "python3 http.server --cgi" }
        ),
    );

    // Alice browses from her wallet's address: the shop asks the wallet at REMOTE_ADDR.
    let alice: std::net::IpAddr = buyer.ip.parse().unwrap();
    let page = http(&web.addr, "GET", "/cgi-bin/payme-cgi/paper", None, Some(alice));
    let text = page.text();
    let order = text.split("name=\"order\" value=\"").nth(1).map(|t| t[..32].to_owned()).unwrap_or_default();
    let short = text.split("<strong class=\"order\">").nth(1).and_then(|t| t.split('<').next()).unwrap_or("");
    println!("      GET  -> {} (the item page: order {short}, a Buy button; GET never pays)", web.status_of(&page));
    let (addr, form) = (web.addr.clone(), format!("order={order}"));
    let job = std::thread::spawn(move || http(&addr, "POST", "/cgi-bin/payme-cgi/paper", Some(&form), Some(alice)));
    let p = buyer.wait_pending();
    println!(
        "      POST -> the shop's wallet asks alice's wallet: '{}' wants {} for '{}', order {} (new merchant: {})",
        p["merchant"].as_str().unwrap_or(""),
        p["amount"],
        p["description"].as_str().unwrap_or(""),
        p["order"].as_str().unwrap_or(""),
        p["new_merchant"]
    );
    buyer.ok(&["approve", &p["id"].to_string()]);
    println!("      alice approves (payme-wallet approve {})", p["id"]);
    let r = job.join().unwrap();
    let text = r.text();
    let open = text.split("id=\"open-item\" href=\"").nth(1).and_then(|t| t.split('"').next()).unwrap_or("");
    println!("      -> HTTP {} (the receipt page: payment number, amount, a link to the item)", web.status_of(&r));
    let r = http(&web.addr, "GET", &open.replace("&amp;", "&"), None, Some(alice));
    println!(
        "      GET the link -> HTTP {} {}: {} bytes of the item",
        web.status_of(&r),
        r.header("Content-Type").unwrap_or(""),
        r.body.len()
    );
    assert_eq!(r.body, item.as_bytes(), "the item arrived whole");
    let history = buyer.ok(&["history"]);
    step(
        7,
        &format!(
            "alice's receipt: {} (state {})",
            if history[0]["receipt_valid"] == true { "signed by bob's books, verified" } else { "MISSING" },
            history[0]["state"]
        ),
    );

    // The same shop, in band over HTTP 402: dave's wallet has no PMTP listener at all (a
    // wallet behind a home router); it makes every connection itself.
    let dave = TestWallet::start("dave", "127.0.0.4", &bank, Some(200), |c| {
        c.replace("pmtp_listener = true", "pmtp_listener = false")
    });
    dave.ok(&["withdraw", "100"]);
    let in_band = kind == Kind::Lighttpd;
    if in_band {
        step(8, "dave's wallet listens on no port; he buys the same item in band: payme-wallet pay URL -o paper.txt");
        let got = dave.dir.path().join("paper.txt");
        let job = {
            let (dir, url, got) = (dave.dir.path().to_path_buf(), url.clone(), got.clone());
            std::thread::spawn(move || {
                std::process::Command::new(wallet_harness::bin())
                    .arg("--data-dir")
                    .arg(dir)
                    .args(["pay", &url, "-o"])
                    .arg(got)
                    .output()
                    .unwrap()
            })
        };
        let p = dave.wait_pending();
        println!(
            "      GET -> 402 with the shop's signed offer; dave's wallet asks him: '{}' at {} wants {}, order {}",
            p["merchant"].as_str().unwrap_or(""),
            p["origin"].as_str().or(p["peer"].as_str()).unwrap_or(""),
            p["amount"],
            p["order"].as_str().unwrap_or("")
        );
        dave.ok(&["approve", &p["id"].to_string()]);
        let done = job.join().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        assert_eq!(std::fs::read(&got).unwrap(), item.as_bytes(), "the item arrived whole");
        println!("      retry with PAYMENT-SIGNATURE -> 200, the item and the receipt (PAYMENT-RESPONSE)");
    } else {
        step(8, "(in band needs lighttpd or Apache: Python's CGI server drops the payment headers)");
    }

    let accounts = bank.accounts();
    let acct = |n: &str| accounts.iter().find(|a| a.1 == n).map(|a| a.2).unwrap_or(0);
    let audit = bank.assert_audit();
    step(
        9,
        &format!(
            "balances: alice's coins {}, dave's coins {}, bob's account {}\n      bank audit: {}",
            buyer.available(),
            dave.available(),
            acct("bob's books"),
            audit.lines().next().unwrap_or("")
        ),
    );
    if keep {
        println!("\nEverything stays up. Try: {url}");
        println!("  payme-wallet --data-dir {} pending | approve ID", buyer.dir.path().display());
        println!("  (wallet and account passphrases: see tests/src/*_harness.rs) -- Ctrl-C to stop");
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    println!("\nstopping the web server, wallets and bank");
    drop(web);
    let (mut buyer, mut dave, mut merchant, mut bank) = (buyer, dave, merchant, bank);
    if !interrupted.load(Ordering::SeqCst) {
        buyer.stop();
        dave.stop();
        merchant.stop();
        bank.stop();
    }
    let _ = wallet_harness::WALLET_PASSPHRASE;
    println!("done");
}
