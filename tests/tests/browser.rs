//! A buyer in a real browser (headless Chromium through chromedriver): the shop's pages
//! from payme-cgi under lighttpd, and the buyer's wallet window, with a real bank and real
//! wallets. The browser tests take the screenshots in docs/screenshots/ (with
//! `PAYME_SCREENSHOTS=1`; see [`Chrome::screenshot`]).
//!
//! Without Chromium and chromedriver these tests fail under CI and say SKIP loudly
//! elsewhere ([`payme_tests::browser_harness`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use payme_tests::bank_harness::TestBank;
use payme_tests::browser_harness::Chrome;
use payme_tests::wallet_harness::TestWallet;
use payme_tests::web_harness::{paper_shop, PAPER};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The page flow: the buyer opens the wallet window (a login link), then the shop in
/// another tab, clicks Buy (the button disables itself and counts down), sees the request
/// appear live in the wallet window, approves it there and sees the receipt, then the
/// item. A second purchase refused in the window ends on the shop's plain 402 page.
#[test]
fn a_buyer_clicks_buy_approves_in_the_wallet_window_and_gets_the_item() {
    let rt = runtime();
    let Some(chrome) = rt.block_on(Chrome::start("browser page flow")) else { return };
    let bank = TestBank::start();
    // The shop's wallet reaches the buyer's at REMOTE_ADDR, the browser's: 127.0.0.1.
    let buyer = TestWallet::start("alice", "127.0.0.1", &bank, Some(500), |c| c);
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "300"]);
    let (window, login) = buyer.window_link();
    let (_dir, web) = paper_shop(&merchant, &format!("http://{window}"), &format!("wallet_port = {}", buyer.port()));
    let item = format!("http://{}/cgi-bin/payme-cgi/paper", web.addr);

    rt.block_on(async {
        let c = &chrome.client;
        c.goto(&format!("http://{window}{login}")).await.unwrap();
        chrome.find("#no-requests").await;
        chrome.screenshot("wallet-no-requests").await;
        let wallet_tab = c.window().await.unwrap();
        let shop_tab = c.new_window(true).await.unwrap().handle;

        for (round, answer) in [(1, "approve"), (2, "refuse")] {
            c.switch_to_window(shop_tab.clone()).await.unwrap();
            c.goto(&item).await.unwrap();
            let text = chrome.wait_text("Price").await;
            assert!(text.contains("0.37 EUR"), "{text}");
            if round == 1 {
                chrome.screenshot("shop-item").await;
            }
            if round == 1 {
                // The waiting state, seen before the real click: the form's submit handler
                // run by a submit event that submits nothing. (While the real POST waits for
                // the wallet, chromedriver holds every command on this tab.)
                c.execute("document.querySelector('form.buy').dispatchEvent(new Event('submit'))", vec![])
                    .await
                    .unwrap();
                let waiting = chrome.find("#waiting").await.text().await.unwrap();
                assert!(waiting.contains("s left"), "{waiting}");
                assert_eq!(chrome.find("#buy").await.prop("disabled").await.unwrap().as_deref(), Some("true"));
                chrome.screenshot("shop-waiting").await;
                c.refresh().await.unwrap();
                // The fresh page: its Buy button enabled again (WebDriver's bounded wait).
                c.wait()
                    .at_most(std::time::Duration::from_secs(30))
                    .for_element(fantoccini::Locator::Css("#buy:not([disabled])"))
                    .await
                    .expect("the page reloaded with its Buy button enabled");
            }
            chrome.find("#buy").await.click().await.unwrap();
            // The wallet window shows the request without anyone reloading it.
            c.switch_to_window(wallet_tab.clone()).await.unwrap();
            let request = chrome.find(".request").await;
            let shown = request.text().await.unwrap();
            assert!(shown.contains("0.37 EUR") && shown.contains("bob's books"), "{shown}");
            if round == 1 {
                assert!(shown.contains("never paid"), "a new shop: {shown}");
                chrome.screenshot("wallet-request").await;
            }
            chrome.find(&format!("button.{answer}")).await.click().await.unwrap();
            chrome.find("#no-requests").await;
            c.switch_to_window(shop_tab.clone()).await.unwrap();
            if answer == "approve" {
                chrome.find("#open-item").await;
                let text = chrome.wait_text("Receipt").await;
                assert!(text.contains("0.37 EUR"), "{text}");
                chrome.screenshot("shop-delivered").await;
                chrome.find("#open-item").await.click().await.unwrap();
                chrome.wait_text(PAPER).await;
            } else {
                let text = chrome.wait_text("declined").await;
                assert!(!text.contains("refused_by_user"), "no protocol codes: {text}");
                chrome.find("a[href]").await;
                chrome.screenshot("shop-refused").await;
            }
        }
    });
    assert_eq!(buyer.available(), 263, "paid once, refused once");
    rt.block_on(chrome.quit());
    bank.assert_audit();
}

/// In band from the browser: the shop's "Pay with payme" opens the wallet window's pay
/// page; approving there pays the shop (the buyer's wallet has no inbound port at all)
/// and brings the browser back to the item. Then the window's other pages.
#[test]
fn pay_with_payme_in_chromium_and_the_wallet_windows_pages() {
    let rt = runtime();
    let Some(chrome) = rt.block_on(Chrome::start("browser in-band flow")) else { return };
    let bank = TestBank::start();
    let buyer = TestWallet::start("alice", "127.0.0.2", &bank, Some(500), |c| {
        c.replace("pmtp_listener = true", "pmtp_listener = false")
    });
    let merchant = TestWallet::start("bob's books", "127.0.0.3", &bank, Some(0), |c| c);
    buyer.ok(&["withdraw", "300"]);
    let (window, login) = buyer.window_link();
    let (_dir, web) = paper_shop(&merchant, &format!("http://{window}"), "");
    let item = format!("http://{}/cgi-bin/payme-cgi/paper", web.addr);

    rt.block_on(async {
        let c = &chrome.client;
        c.goto(&format!("http://{window}{login}")).await.unwrap();
        chrome.find("#no-requests").await;
        c.goto(&item).await.unwrap();
        chrome.find("#pay-with-payme").await.click().await.unwrap();
        let offer = chrome.find("#offer").await.text().await.unwrap();
        assert!(offer.contains("0.37 EUR") && offer.contains(&format!("http://{}", web.addr)), "{offer}");
        chrome.screenshot("wallet-pay").await;
        chrome.find("#approve").await.click().await.unwrap();
        chrome.wait_text(PAPER).await;
        let url = c.current_url().await.unwrap();
        assert!(url.as_str().starts_with(&item) && url.query().unwrap_or("").contains("receipt="), "{url}");

        for (path, name, needle) in [
            ("/history", "wallet-history", "verified"),
            ("/money", "wallet-money", "Withdraw"),
            ("/merchants", "wallet-shops", "Forget this shop"),
            ("/policy", "wallet-policy", "every payment is asked"),
        ] {
            c.goto(&format!("http://{window}{path}")).await.unwrap();
            chrome.wait_text(needle).await;
            chrome.screenshot(name).await;
        }
    });
    assert_eq!(buyer.available(), 263);
    rt.block_on(chrome.quit());
    bank.assert_audit();
}
