//! A real browser for the end-to-end tests: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) with fantoccini.
//!
//! [`Chrome::start`] finds `chromium` and `chromedriver` on the PATH. Where they are
//! missing, a test under CI (`CI=true`) fails, since CI installs them (`.ci/run`); anywhere
//! else it prints a loud SKIP line and the test returns. chromedriver listens on a port of
//! its own choosing on 127.0.0.1, and is killed when the [`Chrome`] is dropped.
//!
//! Pages load with the "none" strategy: a click that submits a form returns at once, so a
//! test can switch to the wallet window's tab while the shop's page still waits for the
//! wallet. Every wait is bounded ([`WAIT`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fantoccini::{Client, ClientBuilder, Locator};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The longest a test waits for an element or a page.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where `name` is on the PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The paths of the programs `tools` names (program, Debian package), or `None` after a
/// loud SKIP line when one is missing outside CI; under CI (`CI=true`) a missing program
/// fails the test, since CI installs what the tests need.
pub fn installed_or_skip(test: &str, tools: &[(&str, &str)]) -> Option<Vec<PathBuf>> {
    let found: Vec<Option<PathBuf>> = tools.iter().map(|(bin, _)| on_path(bin)).collect();
    if found.iter().all(Option::is_some) {
        return Some(found.into_iter().flatten().collect());
    }
    let packages: Vec<&str> = tools.iter().map(|(_, p)| *p).collect();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "{test}: needs {} (apt-get install {})", packages.join(", "), packages.join(" "));
    // Straight to stderr, past the test harness's capture of eprintln!.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIP {test}: {} not installed (apt-get install {}); this test did NOT run !!!!!!!!\n",
        packages.join(", "),
        packages.join(" ")
    );
    None
}

/// A running chromedriver and one browser session.
pub struct Chrome {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Chrome {
    /// Starts chromedriver and a headless Chromium; `None` (after a loud SKIP line) where
    /// they are not installed outside CI. Panics under CI when they are missing.
    pub async fn start(test: &str) -> Option<Chrome> {
        let tools = installed_or_skip(test, &[("chromium", "chromium"), ("chromedriver", "chromium-driver")])?;
        let (chromium, driver) = (&tools[0], &tools[1]);
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().expect("chromedriver's output");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    let _ = tx.send(port.trim_end_matches('.').trim().to_owned());
                }
            }
        });
        let port = rx.recv_timeout(WAIT).expect("chromedriver says its port");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=900,1000".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        // Chromium's sandbox refuses to run as root.
        if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false) {
            args.push("--no-sandbox".into());
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": chromium.display().to_string(), "args": args}),
        );
        caps.insert("pageLoadStrategy".into(), "none".into());
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Some(Chrome { client, driver: child, _profile: profile })
    }

    /// Waits (bounded) for the element matching CSS `selector` and returns it.
    pub async fn find(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no {selector} within {WAIT:?}: {e}"))
    }

    /// Waits (bounded, through WebDriver's wait for an element) until the page's text
    /// contains `needle`; returns the text.
    pub async fn wait_text(&self, needle: &str) -> String {
        // An XPath string literal cannot escape its quote: split on one kind and concat().
        let literal = if !needle.contains('\'') {
            format!("'{needle}'")
        } else {
            let parts: Vec<String> = needle.split('\'').map(|p| format!("'{p}'")).collect();
            format!("concat({})", parts.join(", \"'\", "))
        };
        let xpath = format!("//body[contains(., {literal})]");
        match self.client.wait().at_most(WAIT).for_element(Locator::XPath(&xpath)).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => {
                let source = self.client.source().await.unwrap_or_default();
                let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
                panic!("no {needle:?} within {WAIT:?} at {url} ({e}); its source: {source}");
            }
        }
    }

    /// Takes a screenshot of the page: written to docs/screenshots/`name`.png when
    /// `PAYME_SCREENSHOTS=1` (how the committed ones are made:
    /// `PAYME_SCREENSHOTS=1 cargo test -p payme-tests --all-features --test browser`), else
    /// to the system's temporary directory, so an ordinary test run leaves the work tree as
    /// it was.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = match std::env::var("PAYME_SCREENSHOTS").is_ok_and(|v| v == "1") {
            true => Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots"),
            false => std::env::temp_dir().join("payme-screenshots"),
        };
        std::fs::create_dir_all(&dir).expect("the screenshots' directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot written");
    }

    /// Ends the session (closing the browser) and chromedriver.
    pub async fn quit(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
