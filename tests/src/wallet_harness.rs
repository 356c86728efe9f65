//! Runs real `payme-wallet` daemons on loopback addresses (127.0.0.2, 127.0.0.3, ...) with
//! port 0, each in a temporary data directory with an account at a test bank.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::bank_harness::{spawn_daemon_logging, stop_daemon, workspace_binary, TestBank, PASSWORD};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub const WALLET_PASSPHRASE: &str = "wallet passphrase for tests";

pub fn bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_payme-wallet") {
        Some(p) => p.into(),
        None => workspace_binary("payme-wallet", "wallet-daemon"),
    }
}

pub struct TestWallet {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub child: Option<Child>,
    /// `ip:port` of its PMTP listener.
    pub addr: String,
    pub ip: String,
    pub account: Option<u64>,
    /// Where the daemon's log (stderr, level info) goes, for tests that read it; `None`:
    /// the test's own stderr.
    pub log: Option<PathBuf>,
    /// The daemon's limit on open file descriptors, when a test lowers it.
    pub fd_limit: Option<u32>,
    /// The system user the wallet (daemon and commands) runs as, when not this process's
    /// (a merchant wallet run as the web server's user, `www-data`).
    pub user: Option<String>,
}

/// The wallet binary where another user can run it: a copy in a directory of its own under
/// the system's temporary directory (made once per test process), since the build's
/// target directory may sit below a directory only its owner may enter.
fn bin_for_others() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("payme-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("payme-wallet");
        std::fs::copy(bin(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

fn wallet_cmd(dir: &Path, user: Option<&str>) -> Command {
    wallet_cmd_limited(dir, None, user)
}

/// The wallet command, run with at most `fd_limit` open file descriptors when given (a
/// shell lowers the limit, then becomes the wallet: the child's pid is the wallet's), as
/// `user` when given (setpriv switches user, then becomes the wallet; needs root).
fn wallet_cmd_limited(dir: &Path, fd_limit: Option<u32>, user: Option<&str>) -> Command {
    let mut c = match (fd_limit, user) {
        (None, None) => Command::new(bin()),
        (None, Some(u)) => {
            let mut c = Command::new("setpriv");
            c.args([&format!("--reuid={u}"), &format!("--regid={u}"), "--init-groups", "--"]).arg(bin_for_others());
            c
        }
        (Some(_), Some(_)) => panic!("a wallet run as another user with a lowered fd limit is not supported"),
        (Some(n), None) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("ulimit -n {n} && exec \"$@\"")).arg("sh").arg(bin());
            c
        }
    };
    c.arg("--data-dir")
        .arg(dir)
        .env("PAYME_WALLET_PASSPHRASE", WALLET_PASSPHRASE)
        .env("PAYME_ACCOUNT_PASSWORD", PASSWORD);
    crate::bank_harness::with_test_clock(&mut c);
    c
}

impl TestWallet {
    /// Creates a wallet named `name` listening on `ip`, with an account at `bank` holding
    /// `funds` (none if `None`), `edit` applied to its config.toml, and starts it.
    pub fn start(
        name: &str,
        ip: &str,
        bank: &TestBank,
        funds: Option<u64>,
        edit: impl FnOnce(String) -> String,
    ) -> TestWallet {
        TestWallet::create(name, ip, bank, funds, edit).started()
    }

    /// [`TestWallet::start`] without starting: the wallet is initialised and configured.
    pub fn create(
        name: &str,
        ip: &str,
        bank: &TestBank,
        funds: Option<u64>,
        edit: impl FnOnce(String) -> String,
    ) -> TestWallet {
        TestWallet::create_as(None, name, ip, bank, funds, edit)
    }

    /// [`TestWallet::create`] run as the system user `user` when given (its data directory
    /// owned by that user, every command and the daemon run as that user; needs root).
    pub fn create_as(
        user: Option<&str>,
        name: &str,
        ip: &str,
        bank: &TestBank,
        funds: Option<u64>,
        edit: impl FnOnce(String) -> String,
    ) -> TestWallet {
        let dir = tempfile::tempdir().unwrap();
        if let Some(u) = user {
            let st = Command::new("chown").arg(format!("{u}:")).arg(dir.path()).status().unwrap();
            assert!(st.success(), "chown {u}: {}", dir.path().display());
            let st = Command::new("setpriv")
                .args([&format!("--reuid={u}"), &format!("--regid={u}"), "--init-groups", "--"])
                .arg(bin_for_others())
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(
                st.success(),
                "{u} cannot run {}: install it where {u} can (every directory above it searchable)",
                bin_for_others().display()
            );
        }
        let out = crate::bank_harness::with_pool_key(&mut wallet_cmd(dir.path(), user))
            .args(["init", "--name", name, "--listen", &format!("{ip}:0")])
            .output()
            .unwrap();
        assert!(out.status.success(), "wallet init: {}", String::from_utf8_lossy(&out.stderr));
        let account = funds.map(|f| bank.open_account(name, &dir.path().join("wallet.pub"), f));
        // The bank's public key, where the wallet's user can read it.
        let bank_pub = match user {
            None => bank.dir.path().join("bank.pub"),
            Some(_) => {
                let p = dir.path().join("bank-key.pub");
                std::fs::copy(bank.dir.path().join("bank.pub"), &p).unwrap();
                p
            }
        };
        let mut args = vec![
            "bank".to_owned(),
            "add".into(),
            "--id".into(),
            bank.public.name.as_str().to_owned(),
            "--addr".into(),
            bank.addr.clone(),
            "--public-key".into(),
            bank_pub.to_str().unwrap().to_owned(),
        ];
        if let Some(a) = account {
            args.extend(["--account".into(), a.0.to_string(), "--account-name".into(), name.to_owned()]);
        }
        let out = wallet_cmd(dir.path(), user).args(&args).output().unwrap();
        assert!(out.status.success(), "bank add: {}", String::from_utf8_lossy(&out.stderr));
        let cfg_path = dir.path().join("config.toml");
        let cfg = std::fs::read_to_string(&cfg_path).unwrap();
        // The wallet window on a port of its own: test wallets run side by side.
        let cfg = cfg.replace("listen = \"127.0.0.1:8002\"", "listen = \"127.0.0.1:0\"");
        // Rewritten in place: the file keeps its owner and mode.
        std::fs::write(&cfg_path, edit(cfg)).unwrap();
        TestWallet {
            dir,
            name: name.to_owned(),
            child: None,
            addr: String::new(),
            ip: ip.to_owned(),
            account: account.map(|a| a.0),
            log: None,
            fd_limit: None,
            user: user.map(str::to_owned),
        }
    }

    /// Keeps the daemon's log (level info) in `daemon.log` in its data directory from its
    /// next start, readable with [`TestWallet::log_text`].
    pub fn with_log(mut self) -> TestWallet {
        self.log = Some(self.dir.path().join("daemon.log"));
        self
    }

    /// Runs the daemon with at most `n` open file descriptors from its next start.
    pub fn with_fd_limit(mut self, n: u32) -> TestWallet {
        self.fd_limit = Some(n);
        self
    }

    /// Starts the daemon (after [`TestWallet::create`]).
    pub fn started(mut self) -> TestWallet {
        self.restart();
        self
    }

    /// What the daemon has logged so far (empty unless made [`TestWallet::with_log`]).
    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// A second wallet holding a copy of this one's data (keys, coins, pins), as a person
    /// who copied their wallet directory would have, listening on `ip`. This wallet must be
    /// stopped (its database quiet) while the copy is made; neither is started.
    pub fn copy_to(&self, ip: &str) -> TestWallet {
        assert!(self.child.is_none(), "stop the wallet before copying it");
        let dir = tempfile::tempdir().unwrap();
        for name in ["config.toml", "wallet.key", "wallet.pub", "wallet.db", "wallet.db-wal", "wallet.db-shm"] {
            let from = self.dir.path().join(name);
            if from.exists() {
                std::fs::copy(&from, dir.path().join(name)).unwrap();
            }
        }
        let cfg_path = dir.path().join("config.toml");
        let cfg = std::fs::read_to_string(&cfg_path).unwrap();
        let cfg = cfg.replace(&format!("listen = \"{}:", self.ip), &format!("listen = \"{ip}:"));
        std::fs::write(&cfg_path, cfg).unwrap();
        TestWallet {
            dir,
            name: self.name.clone(),
            child: None,
            addr: String::new(),
            ip: ip.to_owned(),
            account: self.account,
            log: None,
            fd_limit: None,
            user: None,
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = wallet_cmd_limited(self.dir.path(), self.fd_limit, self.user.as_deref());
        cmd.arg("serve");
        let (child, addr) = spawn_daemon_logging(cmd, self.log.as_deref());
        self.addr = addr;
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up (crash tests).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and a bounded wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_daemon(child);
        }
    }

    /// Runs a client subcommand as a person would (no --json); returns its raw output.
    pub fn run_raw(&self, args: &[&str]) -> std::process::Output {
        wallet_cmd(self.dir.path(), self.user.as_deref()).args(args).output().unwrap()
    }

    /// Runs a client subcommand with --json; returns (success, parsed output).
    pub fn run(&self, args: &[&str]) -> (bool, Value) {
        let out = wallet_cmd(self.dir.path(), self.user.as_deref()).arg("--json").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim())
            .unwrap_or_else(|_| Value::String(format!("{text}{}", String::from_utf8_lossy(&out.stderr))));
        (out.status.success(), v)
    }

    /// Runs a client subcommand that must succeed.
    pub fn ok(&self, args: &[&str]) -> Value {
        let (ok, v) = self.run(args);
        assert!(ok, "payme-wallet {args:?} failed: {v}");
        v
    }

    /// Value of coins available in the wallet.
    pub fn available(&self) -> u64 {
        self.ok(&["balance"])["total_available"].as_u64().unwrap()
    }

    /// Value of all coins not spent (available, pending, received).
    pub fn holding(&self) -> u64 {
        let v = self.ok(&["balance"]);
        v["banks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                b["available"].as_u64().unwrap() + b["pending"].as_u64().unwrap() + b["received"].as_u64().unwrap()
            })
            .sum()
    }

    /// Polls `balance` (bounded: 600 tries, 30 s) until the start-up recovery (which runs
    /// in the background after the daemon starts serving) has ended; returns that balance.
    pub fn wait_recovered(&self) -> Value {
        for _ in 0..600 {
            let v = self.ok(&["balance"]);
            if v["recovering"] == false {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the wallet's start-up recovery did not end within 30 s");
    }

    /// Points the wallet's config at another address for its bank (takes effect at the
    /// next start).
    pub fn set_bank_addr(&self, from: &str, to: &str) {
        let path = self.dir.path().join("config.toml");
        let cfg = std::fs::read_to_string(&path).unwrap();
        let (old, new) = (format!("addr = {from:?}"), format!("addr = {to:?}"));
        assert!(cfg.contains(&old), "no bank at {from} in {cfg}");
        std::fs::write(&path, cfg.replace(&old, &new)).unwrap();
    }

    /// Polls `pending` (bounded: 300 tries, 15 s) until a request appears.
    pub fn wait_pending(&self) -> Value {
        for _ in 0..300 {
            let v = self.ok(&["pending"]);
            if let Some(first) = v.as_array().and_then(|a| a.first()) {
                return first.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no payment request became pending");
    }

    /// A fresh one-time login link of the wallet window (`payme-wallet ui`): the window's
    /// host:port and the link's path.
    pub fn window_link(&self) -> (String, String) {
        let url = self.ok(&["ui"])["url"].as_str().expect("a login link").to_owned();
        let rest = url.strip_prefix("http://").expect("an http link");
        let (addr, path) = rest.split_once('/').expect("a path");
        (addr.to_owned(), format!("/{path}"))
    }

    /// Logs a browser (of the test's making) into the wallet window.
    pub fn window_session(&self) -> WindowSession {
        let (addr, path) = self.window_link();
        let r = crate::web_harness::http_exact(&addr, "GET", &path, &[("Host", &addr)], None);
        assert_eq!(r.status, 303, "login: {}", r.text());
        let cookie = r.header("Set-Cookie").expect("a session cookie").split(';').next().unwrap().to_owned();
        let mut w = WindowSession { addr, cookie, csrf: String::new() };
        let page = w.get("/");
        assert_eq!(page.status, 200, "{}", page.text());
        let text = page.text();
        w.csrf =
            text.split("name=\"csrf\" value=\"").nth(1).expect("a CSRF token").split('"').next().unwrap().to_owned();
        w
    }

    /// The port the daemon listens on.
    pub fn port(&self) -> u16 {
        self.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("a running wallet's address")
    }

    /// Polls the daemon's log (bounded: 300 tries, 15 s) until it contains `needle`; the
    /// wallet must be made [`TestWallet::with_log`].
    pub fn wait_log(&self, needle: &str) {
        for _ in 0..300 {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the wallet never logged {needle:?}: {}", self.log_text());
    }

    /// Polls `history` (bounded: 300 tries, 15 s) until `count` payments are done;
    /// returns the history.
    pub fn wait_done(&self, count: usize) -> Value {
        for _ in 0..300 {
            let h = self.ok(&["history"]);
            if h.as_array().unwrap().iter().filter(|p| p["state"] == "done").count() >= count {
                return h;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{count} payments did not end done: {}", self.ok(&["history"]));
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("wallet.pub")
    }
}

impl Drop for TestWallet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A browser logged into a wallet's window: its session cookie and CSRF token.
pub struct WindowSession {
    /// The window's host:port.
    pub addr: String,
    /// `name=value` of the session cookie.
    pub cookie: String,
    pub csrf: String,
}

impl WindowSession {
    /// GET `path` with the session, as the browser would send it.
    pub fn get(&self, path: &str) -> crate::web_harness::HttpResponse {
        crate::web_harness::http_exact(&self.addr, "GET", path, &[("Host", &self.addr), ("Cookie", &self.cookie)], None)
    }

    /// POST `form` (urlencoded, the CSRF token not added) to `path` with the session.
    pub fn post(&self, path: &str, form: &str) -> crate::web_harness::HttpResponse {
        let headers = [("Host", self.addr.as_str()), ("Cookie", self.cookie.as_str())];
        crate::web_harness::http_exact(&self.addr, "POST", path, &headers, Some(form))
    }
}
