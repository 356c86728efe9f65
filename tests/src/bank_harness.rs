//! Runs the real `payme-bank` binary on 127.0.0.1, port 0, in a temporary data directory.
//!
//! Shared by bank-daemon's own tests (which include this file by path and find the binary
//! through `CARGO_BIN_EXE_payme-bank`) and by the end-to-end tests of the other crates
//! (through the `payme-tests` library, which finds it beside the running test).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use pmtp_client::BankClient;
use pmtp_proto::keys::{Identity, PublicIdentity};
use pmtp_proto::{AccountId, Amount};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PASSPHRASE: &str = "bank passphrase for tests";
pub const PASSWORD: &str = "account password";

pub fn bin() -> std::path::PathBuf {
    match option_env!("CARGO_BIN_EXE_payme-bank") {
        Some(p) => p.into(),
        None => workspace_binary("payme-bank", "bank-daemon"),
    }
}

/// The directory of this build's binaries: target/debug (or release), whether the running
/// program is a test (target/debug/deps/...) or a binary (target/debug/...).
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Builds the daemon binaries with cargo, in the profile of the running program.
pub fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // With the tests' features (the test clock among them), so this build and the test
    // build's binaries are the same and neither overwrites the other with a different one.
    cmd.args(["build", "-p", "bank-daemon", "-p", "wallet-daemon", "-p", "merchant-cgi", "--bins", "--all-features"]);
    if target_dir().file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building the payme binaries failed");
}

/// A binary of this workspace, beside the running program; built first if missing (when
/// one package's tests run alone).
pub fn workspace_binary(name: &str, package: &str) -> std::path::PathBuf {
    let path = target_dir().join(name);
    if !path.exists() {
        let _ = package;
        build_binaries();
    }
    assert!(path.exists(), "{} not found; run `cargo build --workspace` first", path.display());
    path
}

/// Spawns a daemon command and waits (at most 60 s) for its "... listening on ADDR" line.
pub fn spawn_daemon(cmd: Command) -> (Child, String) {
    spawn_daemon_logging(cmd, None)
}

/// [`spawn_daemon`], with the daemon's log (stderr, at level info) appended to `log`
/// when given, for tests that check what a daemon logs.
pub fn spawn_daemon_logging(mut cmd: Command, log: Option<&Path>) -> (Child, String) {
    with_test_clock(&mut cmd);
    let level = std::env::var("PAYME_TEST_LOG").unwrap_or_else(|_| "warn".into());
    match log {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            cmd.env("RUST_LOG", "info").stderr(file);
        }
        None => {
            cmd.env("RUST_LOG", level).stderr(Stdio::inherit());
        }
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("daemon starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("the daemon prints its address");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (child, addr)
}

/// SIGTERM, then a bounded wait (15 s) for a clean exit, which is asserted.
pub fn stop_daemon(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "daemon exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("daemon did not stop within 15 s of SIGTERM");
}

thread_local! {
    /// The next pool key an `init` of this test thread takes ([`with_pool_key`]).
    static NEXT_POOL_KEY: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The clock file of this test thread's [`TestClock`], if it installed one.
    static CLOCK_FILE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// A clock for the daemons a test runs as processes: every daemon and command this test
/// thread starts after [`TestClock::install`] reads the time as the system clock plus an
/// offset the test moves with [`TestClock::advance`], instead of sleeping through a nonce
/// window or a coin's lifetime. The daemons honour it in test builds (`cargo test
/// --workspace --all-features`, feature `test-clock`) only.
pub struct TestClock {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl TestClock {
    pub fn install() -> TestClock {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        std::fs::write(&file, "0").unwrap();
        CLOCK_FILE.with(|c| *c.borrow_mut() = Some(file.clone()));
        TestClock { _dir: dir, file }
    }

    /// Moves the daemons' time (and [`TestClock::now`]) forward by `secs`.
    pub fn advance(&self, secs: u64) {
        pmtp_client::clock::move_test_clock(&self.file, secs as i64).unwrap();
    }

    /// The time the daemons read now.
    pub fn now(&self) -> u64 {
        let offset: u64 = std::fs::read_to_string(&self.file).unwrap().trim().parse().unwrap();
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + offset
    }
}

impl Drop for TestClock {
    fn drop(&mut self) {
        CLOCK_FILE.with(|c| *c.borrow_mut() = None);
    }
}

/// Gives `cmd` this test thread's clock, if it installed one.
pub fn with_test_clock(cmd: &mut Command) -> &mut Command {
    CLOCK_FILE.with(|c| {
        if let Some(f) = c.borrow().as_ref() {
            cmd.env(pmtp_client::clock::TEST_CLOCK_VAR, f);
        }
    });
    cmd
}

/// Gives an `init` command the next pre-generated key of the pool, so the suite does not
/// pay for RSA key generation and full-cost Argon2 (test builds: `--all-features`; see
/// payme-node's `keys`). Each daemon a test thread creates gets another key.
pub fn with_pool_key(cmd: &mut Command) -> &mut Command {
    let i = NEXT_POOL_KEY.with(|n| {
        let i = n.get();
        n.set(i + 1);
        i
    });
    cmd.env(payme_node::keys::TEST_KEY_VAR, i.to_string())
}

pub fn payme_bank(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    if args.first() == Some(&"init") {
        with_pool_key(&mut cmd);
    }
    with_test_clock(&mut cmd)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("PAYME_BANK_PASSPHRASE", PASSPHRASE)
        .env("PAYME_ACCOUNT_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn")
        .output()
        .expect("payme-bank runs")
}

/// A bank's data directory: a temporary one the harness made, or an existing bank's.
pub enum BankDir {
    Temp(tempfile::TempDir),
    Existing(PathBuf),
}

impl BankDir {
    pub fn path(&self) -> &Path {
        match self {
            BankDir::Temp(t) => t.path(),
            BankDir::Existing(p) => p,
        }
    }
}

pub struct TestBank {
    pub dir: BankDir,
    pub child: Option<Child>,
    pub addr: String,
    pub public: PublicIdentity,
}

/// An account holder: their keys and account number.
pub struct Holder {
    pub identity: Identity,
    pub account: AccountId,
    pub name: String,
}

impl TestBank {
    /// `init` a bank named `bank_id`, apply `edit` to its config.toml, and start it.
    pub fn start_with(bank_id: &str, edit: impl FnOnce(String) -> String) -> TestBank {
        let dir = tempfile::tempdir().unwrap();
        let out = payme_bank(
            dir.path(),
            &["init", "--bank-id", bank_id, "--public-addr", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        );
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let cfg_path = dir.path().join("config.toml");
        let cfg = std::fs::read_to_string(&cfg_path).unwrap();
        std::fs::write(&cfg_path, edit(cfg)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("bank.pub")).unwrap();
        let public = PublicIdentity::from_text(&text).unwrap();
        let mut bank = TestBank { dir: BankDir::Temp(dir), child: None, addr: String::new(), public };
        bank.restart();
        bank
    }

    /// A bank that is already running (not started, and never stopped, by the harness):
    /// its data directory (for account administration and its public key) and address.
    pub fn attach(dir: PathBuf, addr: String) -> TestBank {
        let text = std::fs::read_to_string(dir.join("bank.pub")).expect("the directory holds a bank (bank.pub)");
        let public = PublicIdentity::from_text(&text).unwrap();
        TestBank { dir: BankDir::Existing(dir), child: None, addr, public }
    }

    pub fn start() -> TestBank {
        Self::start_with("bank-a", |c| c)
    }

    /// Starts `serve` (after a stop) and waits for its "listening on" line.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir").arg(self.dir.path()).arg("serve").env("PAYME_BANK_PASSPHRASE", PASSPHRASE);
        let (child, addr) = spawn_daemon(cmd);
        self.addr = addr;
        self.child = Some(child);
    }

    /// Starts `serve` again on the address it had (peers keep reaching it there).
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(["serve", "--listen", &self.addr])
            .env("PAYME_BANK_PASSPHRASE", PASSPHRASE);
        let (child, addr) = spawn_daemon(cmd);
        assert_eq!(addr, self.addr);
        self.child = Some(child);
    }

    /// Runs `payme-bank clearing --json`: (whether both sides agree, per-peer positions).
    pub fn clearing(&self) -> (bool, serde_json::Value) {
        let out = payme_bank(self.dir.path(), &["clearing", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), v)
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_daemon(child);
        }
    }

    pub fn client(&self) -> BankClient {
        BankClient::new(self.addr.clone(), &self.public).unwrap()
    }

    /// Opens an account for test identity `key` and pays `funds` in at the counter.
    pub fn holder(&self, key: usize, name: &str, funds: u64) -> Holder {
        let identity = pmtp_proto::testing::named_identity(key, name);
        let pubfile = self.dir.path().join(format!("{name}.pub"));
        std::fs::write(&pubfile, identity.public().to_text()).unwrap();
        let out = payme_bank(
            self.dir.path(),
            &["account", "open", "--name", name, "--public-key", pubfile.to_str().unwrap()],
        );
        assert!(out.status.success(), "account open: {}", String::from_utf8_lossy(&out.stderr));
        let account = AccountId(String::from_utf8(out.stdout).unwrap().trim().parse().unwrap());
        if funds > 0 {
            let out = payme_bank(self.dir.path(), &["account", "credit", &account.0.to_string(), &funds.to_string()]);
            assert!(out.status.success(), "credit: {}", String::from_utf8_lossy(&out.stderr));
        }
        Holder { identity, account, name: name.to_owned() }
    }

    /// Opens an account for the owner whose public identity file is `public_key`.
    pub fn open_account(&self, name: &str, public_key: &Path, funds: u64) -> AccountId {
        let out = payme_bank(
            self.dir.path(),
            &["account", "open", "--name", name, "--public-key", public_key.to_str().unwrap()],
        );
        assert!(out.status.success(), "account open: {}", String::from_utf8_lossy(&out.stderr));
        let account = AccountId(String::from_utf8(out.stdout).unwrap().trim().parse().unwrap());
        if funds > 0 {
            let out = payme_bank(self.dir.path(), &["account", "credit", &account.0.to_string(), &funds.to_string()]);
            assert!(out.status.success(), "credit: {}", String::from_utf8_lossy(&out.stderr));
        }
        account
    }

    /// The account list as (id, name, balance).
    pub fn accounts(&self) -> Vec<(u64, String, u64)> {
        let out = payme_bank(self.dir.path(), &["account", "list", "--json"]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (a["id"].as_u64().unwrap(), a["name"].as_str().unwrap().to_owned(), a["balance"].as_u64().unwrap())
            })
            .collect()
    }

    /// Runs `payme-bank audit` and asserts the invariants hold.
    pub fn assert_audit(&self) -> String {
        let out = payme_bank(self.dir.path(), &["audit"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "audit failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub async fn balance(&self, h: &Holder) -> Amount {
        self.client().statement(&h.identity, h.account, &h.name, None).await.unwrap().balance
    }
}

impl Drop for TestBank {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes every bank a peer of every other: each opens an account for each other bank
/// (with that bank's key), and each configures the others as peers; then all restart on
/// their ports to load the peers.
pub fn connect_banks(banks: &mut [TestBank]) {
    let n = banks.len();
    // accounts[x][y]: the account bank y holds for bank x.
    let mut accounts = vec![vec![0u64; n]; n];
    for x in 0..n {
        for y in 0..n {
            if x != y {
                let name = banks[x].public.name.as_str().to_owned();
                accounts[x][y] = banks[y].open_account(&name, &banks[x].dir.path().join("bank.pub"), 0).0;
            }
        }
    }
    for x in 0..n {
        for y in 0..n {
            if x == y {
                continue;
            }
            let (peer_id, peer_addr) = (banks[y].public.name.as_str().to_owned(), banks[y].addr.clone());
            let peer_pub = banks[y].dir.path().join("bank.pub");
            let me = banks[x].public.name.as_str().to_owned();
            let out = payme_bank(
                banks[x].dir.path(),
                &[
                    "peer",
                    "add",
                    "--id",
                    &peer_id,
                    "--addr",
                    &peer_addr,
                    "--public-key",
                    peer_pub.to_str().unwrap(),
                    "--account",
                    &accounts[x][y].to_string(),
                    "--account-name",
                    &me,
                    "--local-account",
                    &accounts[y][x].to_string(),
                ],
            );
            assert!(out.status.success(), "peer add: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    for b in banks.iter_mut() {
        b.stop();
        b.restart_same_port();
    }
}

/// Spends the same `coins` 64 times at once, spread over `clients` in turn: even tasks
/// deposit them to `shop`, odd ones exchange them. Returns how many succeeded; every
/// other one must be refused as not in circulation.
pub async fn spend_64_ways(
    clients: &[BankClient],
    shop: std::sync::Arc<Holder>,
    coins: Vec<pmtp_proto::Coin>,
    round: u8,
) -> usize {
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let (c, coins, shop) = (clients[i as usize % clients.len()].clone(), coins.clone(), shop.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let request = [round, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                c.deposit(&shop.identity, shop.account, &shop.name, request, coins).await.map(|_| ())
            } else {
                let request = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
                c.exchange(request, coins, vec![]).await.map(|_| ())
            }
        }));
    }
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            // Spent by the winner; or, for an exchange, refused as busy while another
            // exchange of the same coin was being signed for (nothing taken, no signature).
            Err(e) => assert!(
                e.code() == Some(pmtp_proto::ReasonCode::COIN_NOT_IN_CIRCULATION)
                    || (i % 2 == 1 && e.code() == Some(pmtp_proto::ReasonCode::BUSY)),
                "{e}"
            ),
        }
    }
    ok
}
