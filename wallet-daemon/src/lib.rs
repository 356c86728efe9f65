//! # payme-wallet
//!
//! The program every user runs, buyer and merchant alike. It holds coins (encrypted at
//! rest), pays merchants who ask (with the person's consent or under their policy),
//! collects payments as a merchant, and deals with banks.
//!
//! - [`config`]: TOML configuration.
//! - [`store`]: durable state, the only SQL: coins, payments, operations, merchants, each
//!   state and kind an enum with its transition table.
//! - [`ops`]: withdraw, deposit, exchange as crash-safe operations; resolving a payment
//!   without a receipt.
//! - [`buyer`]: answering ask_payment_request: consent, coin choice, pay_coins.
//! - [`inband`]: `payme-wallet pay URL`: paying a shop over HTTP 402, in band; [`fetch`]
//!   is its HTTP client.
//! - [`merchant`]: `collect`: ask a buyer's wallet, validate coins at the bank, receipt.
//! - [`recovery`]: the maintenance round that finishes unfinished work; above buyer,
//!   merchant and ops, which never call it.
//! - [`peer`]: the PMTP listener for other wallets.
//! - [`control`]: the local control socket (JSON lines) and its client.
//! - [`ui`]: the wallet window, a web UI on a loopback port of its own; [`notify`]: a
//!   desktop notification when a payment request waits.
//!
//! Banks are reached through `pmtp-client`; the data directory, accept loop, signals,
//! logs, secrets and SQLite opening are the shared `payme-node`. The wallet links nothing
//! of the bank daemon.

#![forbid(unsafe_code)]

pub mod buyer;
pub mod config;
pub mod control;
pub mod fetch;
pub mod inband;
pub mod merchant;
pub mod notify;
pub mod ops;
pub mod peer;
pub mod recovery;
pub mod settle;
pub mod store;
pub mod ui;

pub use payme_node::DataDir;
use pmtp_client::BankClient;
use pmtp_proto::keys::{Identity, PublicIdentity};
use pmtp_proto::{AccountId, Amount, NonceChecker, ReasonCode};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

/// An error a person or a peer sees: a reason code and a one-line text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct WalletError {
    pub code: ReasonCode,
    pub text: String,
}

impl WalletError {
    /// The text is escaped here, once for every path: it often quotes a peer (a bank's or
    /// a merchant's refusal, a name), and it is shown in terminals, logged and sent on.
    pub fn new(code: ReasonCode, text: impl Into<String>) -> Self {
        WalletError { code, text: pmtp_proto::text::escape_control(&text.into()) }
    }
}

impl From<store::DbError> for WalletError {
    fn from(e: store::DbError) -> Self {
        match e {
            // A peer sent a coin this wallet already has: the peer's doing, not a fault here.
            store::DbError::DuplicateCoin(serial) => WalletError::new(
                ReasonCode::DUPLICATE_COIN,
                format!("coin {serial} was already received by this wallet (paid twice, or from a copied wallet)"),
            ),
            e => {
                tracing::error!(error = %e, "database error");
                WalletError::new(ReasonCode::INTERNAL, e.to_string())
            }
        }
    }
}

/// The source a peer's requests are counted under: its IPv4 address, or the /64 of its
/// IPv6 address (one host usually holds a whole /64). The same key the accept loop counts
/// connections under.
pub use payme_node::net::source_key as source_of;

impl From<pmtp_client::ClientError> for WalletError {
    fn from(e: pmtp_client::ClientError) -> Self {
        let code = e.code().unwrap_or(ReasonCode::PEER_BANK_UNAVAILABLE);
        WalletError::new(code, e.to_string())
    }
}

/// An amount a person or a peer named: from 1 to the protocol's maximum ([`Amount::MAX`]).
pub fn checked_amount(minor_units: u64) -> Result<Amount, WalletError> {
    let a = Amount::new(minor_units);
    if a.is_zero() || a > Amount::MAX {
        return Err(WalletError::new(
            ReasonCode::INVALID_AMOUNT,
            format!("amounts are whole minor units from 1 to {}", Amount::MAX),
        ));
    }
    Ok(a)
}

/// A wallet's data directory: `config.toml`, `wallet.key`, `wallet.pub`, `wallet.db`,
/// `serve.lock`.
pub fn data_dir(root: impl Into<PathBuf>) -> DataDir {
    DataDir::new(root, "wallet")
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] payme_node::datadir::LockError),
    #[error("{}: {source}", .path.display())]
    Key { path: PathBuf, source: pmtp_proto::keyfile::KeyFileError },
    #[error(transparent)]
    Db(#[from] store::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot listen on {addr} for the wallet window (ui.listen): {source}")]
    UiListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create {}: {source}", .path.display())]
    Control { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A bank this wallet knows.
pub struct BankEntry {
    pub client: BankClient,
    pub account: Option<(AccountId, String)>,
}

/// A payment request waiting for the person's answer.
pub struct PendingRequest {
    pub id: u64,
    pub merchant: String,
    pub fingerprint: String,
    pub new_merchant: bool,
    pub description: String,
    pub amount: u64,
    pub peer: IpAddr,
    /// The shop's web origin, for a payment in band (`payme-wallet pay URL`).
    pub origin: Option<String>,
    /// The order id, short (as the shop's page shows it).
    pub order: String,
    pub created: u64,
    pub answer: tokio::sync::oneshot::Sender<bool>,
}

/// Ids (of payments, or of operations) that a task is working on right now: the
/// maintenance round leaves them alone instead of resolving or retrying them under the
/// task's feet. A [`Claim`] is taken before the record is committed, and released when
/// dropped, whatever way the task ends.
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashSet<i64>>>);

impl Claims {
    /// Claims `id`; `None` if another task holds it.
    pub fn claim(&self, id: i64) -> Option<Claim> {
        let mut set = self.0.lock().ok()?;
        set.insert(id).then(|| Claim { claims: self.clone(), id })
    }
}

/// A held claim on a payment or operation id; released on drop.
pub struct Claim {
    claims: Claims,
    id: i64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.claims.0.lock() {
            set.remove(&self.id);
        }
    }
}

/// Everything the running wallet shares.
pub struct Wallet {
    pub config: config::Config,
    pub dir: DataDir,
    pub identity: Identity,
    pub public: PublicIdentity,
    pub db: store::Db,
    pub banks: HashMap<String, BankEntry>,
    pub nonces: Mutex<NonceChecker>,
    pub pending: Mutex<BTreeMap<u64, PendingRequest>>,
    pub next_pending: AtomicU64,
    /// Held while choosing available coins and marking them pending, so two payments or
    /// operations never pick the same coin.
    pub coin_lock: ops::CoinLock,
    /// Payments (outgoing or incoming) whose exchange with the peer is in progress (not to
    /// be resolved or validated by maintenance).
    pub in_flight: Claims,
    /// Bank operations a task is sending right now (not to be retried by maintenance).
    pub ops_in_flight: Claims,
    /// Set once the first maintenance round after start-up (the recovery of whatever a
    /// previous run left unfinished) has ended; `balance` reports it.
    pub recovered: AtomicBool,
    /// Outbound connections come from this address (the listen address, when specific).
    pub bind_ip: Option<IpAddr>,
    /// Every task the daemon starts, so shutdown waits for them all.
    pub tasks: tokio_util::task::TaskTracker,
    /// Collects in progress, by order: a second collect for one order joins the first.
    pub collects: merchant::InProgressMap,
    /// Permits for collects running at once (`merchant.max_concurrent_collects`).
    pub collect_permits: Arc<tokio::sync::Semaphore>,
    /// Where the buyer, merchant and recovery logic (and this wallet's bank clients) get
    /// the time: the system clock, or one a test moves ([`Wallet::with_clock`]).
    pub clock: Arc<dyn pmtp_client::clock::Clock>,
    /// Where nonces, session keys, request ids and orders get their randomness: the OS, or
    /// a seeded source a test predicts ([`Wallet::with_entropy`]).
    pub entropy: Arc<dyn pmtp_client::entropy::Entropy>,
    /// The HTTP client of payments in band, made on first use.
    pub fetcher: std::sync::OnceLock<fetch::Fetcher>,
    /// The wallet window's address, login links and sessions.
    pub ui: ui::session::Access,
}

impl Wallet {
    pub fn new(config: config::Config, dir: DataDir, identity: Identity, db: store::Db) -> Result<Wallet, WalletError> {
        config.validate().map_err(|e| WalletError::new(ReasonCode::INTERNAL, e.to_string()))?;
        let bind_ip = Some(config.listen.ip()).filter(|ip| config.pmtp_listener && !ip.is_unspecified());
        let mut banks = HashMap::new();
        for b in &config.banks {
            let public = PublicIdentity::from_text(&b.public_key)
                .map_err(|e| WalletError::new(ReasonCode::INTERNAL, format!("bank {}: {e}", b.id)))?;
            let mut client = BankClient::new(b.addr.clone(), &public)
                .and_then(|c| c.with_retired(&b.retired_public_keys))
                .map_err(WalletError::from)?;
            client.bind_ip = bind_ip;
            if client.bank_id.as_str() != b.id {
                return Err(WalletError::new(
                    ReasonCode::INTERNAL,
                    format!("bank {}: its public key is for bank {:?}", b.id, client.bank_id.as_str()),
                ));
            }
            let account = b.account.zip(b.account_name.clone()).map(|(a, n)| (AccountId(a), n));
            banks.insert(b.id.clone(), BankEntry { client, account });
        }
        let nonces = config.limits.net.nonce_checker();
        let public = identity.public();
        let collect_permits = Arc::new(tokio::sync::Semaphore::new(config.merchant.max_concurrent_collects.max(1)));
        Ok(Wallet {
            config,
            dir,
            identity,
            public,
            db,
            banks,
            nonces: Mutex::new(nonces),
            pending: Mutex::new(BTreeMap::new()),
            next_pending: AtomicU64::new(1),
            coin_lock: ops::CoinLock::default(),
            in_flight: Claims::default(),
            ops_in_flight: Claims::default(),
            recovered: AtomicBool::new(false),
            bind_ip,
            tasks: tokio_util::task::TaskTracker::new(),
            collects: Default::default(),
            collect_permits,
            clock: Arc::new(pmtp_client::clock::SystemClock),
            entropy: Arc::new(pmtp_client::entropy::OsEntropy),
            fetcher: std::sync::OnceLock::new(),
            ui: Default::default(),
        })
    }

    /// This wallet, reading the time from `clock`, and so do its bank clients.
    pub fn with_clock(mut self, clock: Arc<dyn pmtp_client::clock::Clock>) -> Self {
        for b in self.banks.values_mut() {
            b.client.clock = clock.clone();
        }
        self.clock = clock;
        self
    }

    /// This wallet, drawing its randomness from `entropy`, and so do its bank clients.
    pub fn with_entropy(mut self, entropy: Arc<dyn pmtp_client::entropy::Entropy>) -> Self {
        for b in self.banks.values_mut() {
            b.client.entropy = entropy.clone();
        }
        self.entropy = entropy;
        self
    }

    /// A generator over this wallet's entropy.
    pub fn rng(&self) -> pmtp_client::entropy::EntropyRng<'_> {
        pmtp_client::entropy::rng(&*self.entropy)
    }

    /// The time by this wallet's clock (Unix seconds).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn bank(&self, id: &str) -> Result<&BankEntry, WalletError> {
        self.banks.get(id).ok_or_else(|| {
            WalletError::new(
                ReasonCode::COIN_FOREIGN_BANK,
                format!("bank {id:?} is not in this wallet's config (payme-wallet bank add)"),
            )
        })
    }

    /// The bank to use when the person named none: the only one, or the only one with an
    /// account.
    pub fn default_bank(&self, need_account: bool) -> Result<String, WalletError> {
        let candidates: Vec<&String> =
            self.banks.iter().filter(|(_, b)| !need_account || b.account.is_some()).map(|(id, _)| id).collect();
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(WalletError::new(ReasonCode::UNKNOWN_ACCOUNT, "no bank configured (payme-wallet bank add)")),
            _ => {
                Err(WalletError::new(ReasonCode::INVALID_AMOUNT, "several banks are configured: name one with --bank"))
            }
        }
    }

    pub fn local_ip(&self) -> IpAddr {
        self.bind_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}

/// The address a nonce names for a live connection: the one the connection really uses
/// (its socket's local address), which a wallet listening on 0.0.0.0 or [::] cannot know
/// from its config. The configured address only if the socket cannot say.
pub fn conn_local_ip(stream: &tokio::net::TcpStream, w: &Wallet) -> IpAddr {
    stream.local_addr().map(|a| a.ip()).unwrap_or_else(|_| w.local_ip())
}

/// Runs the wallet daemon until SIGINT or SIGTERM: loads the key, opens the database,
/// serves peers and the control socket at once, and resolves whatever a previous run left
/// unfinished in the background (the first maintenance round), so that a bank that
/// accepts connections and never answers cannot hold the wallet's start hostage.
pub async fn run_daemon(dir: DataDir, cfg: config::Config, passphrase: &str) -> Result<(), DaemonError> {
    let shutdown = payme_node::shutdown::shutdown_signal()?;
    let (clock, entropy) = (Arc::new(pmtp_client::clock::SystemClock), Arc::new(pmtp_client::entropy::OsEntropy));
    serve(dir, cfg, passphrase, clock, entropy, shutdown).await
}

/// [`run_daemon`] with the clock, the source of randomness and the shutdown future passed
/// in: a test serves a wallet in its own process on port 0, moves its time, and stops it
/// when it likes.
pub async fn serve(
    dir: DataDir,
    cfg: config::Config,
    passphrase: &str,
    clock: Arc<dyn pmtp_client::clock::Clock>,
    entropy: Arc<dyn pmtp_client::entropy::Entropy>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let lock = dir.lock()?;
    let key = |source| DaemonError::Key { path: dir.key(), source };
    let bytes = pmtp_proto::keyfile::fs::read_private(&dir.key()).map_err(key)?;
    let identity = pmtp_proto::keyfile::open_identity(&bytes, passphrase.as_bytes()).map_err(key)?;
    let db = store::Db::open(&dir.database(), store::Vault::new(&identity))?;
    // No PMTP listener: a buyer who pays only in band needs no inbound port.
    let listener = match cfg.pmtp_listener {
        true => Some(
            tokio::net::TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| DaemonError::Listen { addr: cfg.listen, source })?,
        ),
        false => None,
    };
    let local = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    // The wallet window, on loopback only (the config refuses any other address).
    let ui_listener = match cfg.ui.addr()? {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| DaemonError::UiListen { addr, source })?)
        }
        None => None,
    };
    let socket_path = cfg.control_socket_path(&dir.root);
    let control =
        control::bind(&socket_path).map_err(|source| DaemonError::Control { path: socket_path.clone(), source })?;
    let w = std::sync::Arc::new(Wallet::new(cfg, dir, identity, db)?.with_clock(clock).with_entropy(entropy));

    let token = tokio_util::sync::CancellationToken::new();
    let tracker = w.tasks.clone();
    // Finish what a previous run left (crash, kill -9) in the background, then keep a
    // maintenance round going. Work that arrives meanwhile is safe: every payment and
    // operation a task is working on is claimed, and maintenance leaves claimed ones alone.
    // A round cut short by shutdown is like a crash, which every operation survives (its
    // state is durable before anything is sent).
    {
        let (w, token) = (w.clone(), token.clone());
        let every = std::time::Duration::from_secs(w.config.limits.maintenance_interval_secs.max(1));
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = recovery::maintenance(&w) => {}
                }
                if !w.recovered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("start-up recovery done");
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
    tracker.spawn(control::serve(w.clone(), control, token.clone(), tracker.clone()));
    let ui_addr = ui_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    if let (Some(l), Some(addr)) = (ui_listener, ui_addr) {
        w.ui.set_addr(addr);
        tracker.spawn(ui::serve(w.clone(), l, token.clone()));
    }
    {
        // Whoever started the daemon may have closed stdout: that must not stop it.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = match local {
            Some(local) => {
                tracing::info!(addr = %local, control = %socket_path.display(), "wallet serving");
                writeln!(out, "payme-wallet listening on {local}")
            }
            None => {
                tracing::info!(control = %socket_path.display(), "wallet serving the control socket only (no PMTP listener)");
                writeln!(out, "payme-wallet serving no PMTP listener; control socket {}", socket_path.display())
            }
        };
        if let Some(addr) = ui_addr {
            tracing::info!(%addr, "wallet window serving (payme-wallet ui opens it)");
            let _ = writeln!(out, "payme-wallet window on http://{addr}/ (payme-wallet ui opens it)");
        }
        let _ = out.flush();
    }
    payme_node::notify::ready();
    match listener {
        Some(listener) => peer::serve(w.clone(), listener, token.clone(), tracker.clone(), shutdown).await,
        None => shutdown.await,
    }
    tracing::info!("shutting down");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    let _ = std::fs::remove_file(&socket_path);
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("127.0.0.2")), ip("127.0.0.2"));
        assert_ne!(source_of(ip("127.0.0.2")), source_of(ip("127.0.0.3")));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), source_of(ip("2001:db8:1:2:bbbb::2")));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:3::1")));
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn a_source_gets_at_most_a_quarter_of_the_pending_list() {
        let mut l = config::Limits::default();
        assert_eq!(l.pending_per_source(), 4, "default: 4 of 32");
        l.max_pending_requests = 8;
        assert_eq!(l.pending_per_source(), 2, "a quarter of 8");
        l.max_pending_requests = 2;
        assert_eq!(l.pending_per_source(), 1, "never zero");
        l.max_pending_requests = 1000;
        l.max_pending_per_source = 10;
        assert_eq!(l.pending_per_source(), 10);
    }

    #[test]
    fn error_texts_never_carry_control_characters() {
        let e = WalletError::new(ReasonCode::MALFORMED, "bank says \x1b]0;pwned\x07\x1b[31m\nFAKE");
        assert_eq!(e.text, "bank says \\u{1b}]0;pwned\\u{7}\\u{1b}[31m\\u{a}FAKE");
    }
}
