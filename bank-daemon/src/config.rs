//! Bank configuration: defaults, then `config.toml` in the data directory, then
//! environment variables and command-line flags (which `main.rs` applies on top).
//!
//! Every limit a peer can push against is here, with its default.

pub use payme_node::config::ConfigError;
use payme_node::config::{PeerLimitDefaults, PeerLimits, UnknownKeys};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This bank's identifier, written into every coin.
    pub bank_id: String,
    /// Where wallets reach this bank (`host:port`), written into every coin.
    pub public_addr: String,
    /// The address `serve` listens on.
    pub listen: SocketAddr,
    /// Where the ledger lives: empty for `bank.db` in the data directory (SQLite), a path
    /// to an SQLite file, or a `postgres://` URL (several nodes on one database).
    /// `PAYME_BANK_STORE` overrides it.
    pub store: String,
    /// This node's name among the nodes sharing one database: its money counters are
    /// its own rows. Empty means `main`. `PAYME_BANK_NODE_ID` overrides it.
    pub node_id: String,
    /// ISO 4217 code or any short name of the currency.
    pub currency: String,
    /// Minor units per major unit, as a power of ten (2: cents).
    pub minor_unit_digits: u8,
    /// Largest coin: 2^max_denomination_exponent minor units.
    pub max_denomination_exponent: u8,
    /// Seconds a new coin stays valid.
    pub coin_lifetime_secs: u64,
    /// Refuse exchange_coins (for coins that must stay traceable).
    pub exchange_enabled: bool,
    pub limits: Limits,
    /// Banks this bank clears with (`payme-bank peer add` appends them).
    #[serde(rename = "peer")]
    pub peers: Vec<PeerBank>,
}

/// A bank this bank holds an account at, whose coins it accepts in deposits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerBank {
    /// The peer's bank id (as in its coins).
    pub id: String,
    /// host:port of the peer.
    pub addr: String,
    /// The peer's public identity (what `payme-bank public-key` prints there).
    pub public_key: String,
    /// This bank's account at the peer, and the name on it (opened with this bank's key).
    pub account: u64,
    pub account_name: String,
    /// The peer's account at this bank, if it has one (for `payme-bank clearing`).
    #[serde(default)]
    pub local_account: Option<u64>,
    /// Public keys the peer has replaced (`peer set --public-key` moves the old one here):
    /// its coins minted under them are accepted until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_public_keys: Vec<String>,
}

/// The bank's `[limits]`: what every daemon serving peers has ([`PeerLimits`]), then the
/// bank's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    #[serde(flatten)]
    pub net: PeerLimits<Bank>,
    /// A request not answered in this time gets a `timeout` refusal.
    pub request_timeout_secs: u64,
    /// Most coins handed in by one deposit or exchange.
    pub max_coins_per_request: usize,
    /// Most coins minted for one withdraw or exchange: each costs an RSA signature, so
    /// this bounds the CPU one request can spend. 64 coins make any amount up to 44 of the
    /// largest denomination.
    pub max_coins_minted_per_request: usize,
    /// Largest single withdrawal, minor units.
    pub max_withdraw_amount: u64,
    /// Most requests committed in one database transaction, and most deposit
    /// acknowledgements signed with one signature (1 to [`MAX_COMMIT_BATCH`]).
    pub commit_batch: usize,
    /// Wrong passwords tolerated before back-off starts.
    pub password_failures_free: u32,
    /// Seconds between purges of expired serials and nonces.
    pub purge_interval_secs: u64,
    /// Rows removed per purge transaction.
    pub purge_batch: usize,
    /// Ledger entries in one statement.
    pub statement_max_entries: usize,
    /// Seconds the bank remembers a withdrawal, exchange or deposit by its request id, so
    /// that a retry returns the original answer.
    pub request_retention_secs: u64,
    /// Seconds between retries of deposits waiting for a peer bank's answer.
    pub clearing_retry_secs: u64,
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownKeys,
}

/// The bank's defaults for the settings every daemon serving peers has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bank;

impl PeerLimitDefaults for Bank {
    const DEFAULT: PeerLimits<Bank> = PeerLimits {
        max_connections: 4096,
        max_connections_per_ip: 16,
        max_frame_bytes: pmtp_proto::frame::DEFAULT_MAX_BODY,
        idle_timeout_secs: 30,
        nonce_window_secs: 30,
        nonce_cache_capacity: 1_000_000,
        nonce_check_address: true,
        defaults: std::marker::PhantomData,
    };
}

/// Largest `limits.commit_batch`. It also sizes acknowledgement batches, whose Merkle tree
/// and proofs the signer thread builds while every deposit in the batch waits: at 4096 that
/// is a few milliseconds (docs/BENCHMARKS.md), and one durable commit of 4096 requests is
/// already far past the point where a bigger group saves fsyncs.
pub const MAX_COMMIT_BATCH: usize = 4096;

impl Default for Config {
    fn default() -> Self {
        Config {
            bank_id: "bank".into(),
            public_addr: "127.0.0.1:8000".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            store: String::new(),
            node_id: String::new(),
            currency: "EUR".into(),
            minor_unit_digits: 2,
            max_denomination_exponent: 20,
            coin_lifetime_secs: 365 * 86_400,
            exchange_enabled: true,
            limits: Limits::default(),
            peers: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            net: PeerLimits::default(),
            request_timeout_secs: 10,
            max_coins_per_request: 1024,
            max_coins_minted_per_request: 64,
            max_withdraw_amount: 1 << 40,
            commit_batch: 256,
            password_failures_free: 3,
            purge_interval_secs: 60,
            purge_batch: 10_000,
            statement_max_entries: 1000,
            request_retention_secs: 7 * 86_400,
            clearing_retry_secs: 5,
            unknown: UnknownKeys,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        payme_node::config::load(path, Config::validate)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if pmtp_proto::text::BankId::new(self.bank_id.clone()).is_err() || self.bank_id.is_empty() {
            return bad("bank_id must be 1 to 64 bytes".into());
        }
        if pmtp_proto::text::HostPort::new(self.public_addr.clone()).is_err() || !self.public_addr.contains(':') {
            return bad(format!("public_addr {:?} must be host:port", self.public_addr));
        }
        if self.max_denomination_exponent > pmtp_proto::denomination::MAX_EXPONENT {
            return bad("max_denomination_exponent must be at most 62".into());
        }
        self.limits.net.validate()?;
        if self.limits.commit_batch == 0
            || self.limits.max_coins_per_request == 0
            || self.limits.max_coins_minted_per_request == 0
        {
            return bad(
                "limits.commit_batch, max_coins_per_request and max_coins_minted_per_request must be positive".into()
            );
        }
        if self.limits.commit_batch > MAX_COMMIT_BATCH {
            return bad(format!("limits.commit_batch must be at most {MAX_COMMIT_BATCH}"));
        }
        if self.coin_lifetime_secs == 0 {
            return bad("coin_lifetime_secs must be positive".into());
        }
        let mut ids: Vec<_> = self.peers.iter().map(|p| &p.id).collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("peer {} appears twice; change it with `payme-bank peer set`", w[0]));
        }
        if self.limits.net.max_connections == 0 {
            return bad("limits.max_connections must be positive".into());
        }
        for p in &self.peers {
            let id = pmtp_proto::keys::PublicIdentity::from_text(&p.public_key)
                .map_err(|e| ConfigError::Invalid(format!("peer {}: public_key: {e}", p.id)))?;
            id.parse().map_err(|e| ConfigError::Invalid(format!("peer {}: public_key: {e}", p.id)))?;
            if id.name.as_str() != p.id {
                return bad(format!("peer {}: its public key is for bank {:?}", p.id, id.name.as_str()));
            }
            if p.id == self.bank_id {
                return bad("a bank cannot be its own peer".into());
            }
        }
        Ok(())
    }

    /// This node's counter shard: `PAYME_BANK_NODE_ID`, else `node_id`, else `main`.
    pub fn node(&self) -> String {
        match std::env::var("PAYME_BANK_NODE_ID") {
            Ok(n) if !n.is_empty() => n,
            _ if !self.node_id.is_empty() => self.node_id.clone(),
            _ => crate::store::sqlite::DEFAULT_NODE.to_owned(),
        }
    }

    /// The `[[peer]]` section `peer add` appends.
    pub fn peer_section(p: &PeerBank) -> Result<String, ConfigError> {
        payme_node::config::array_section("peer", p)
    }

    /// The config file `init` writes: every setting, with a comment saying what it does.
    pub fn commented_toml(&self) -> Result<String, ConfigError> {
        let doc = payme_node::config::commented_document(self, COMMENTS)?;
        Ok(format!("{HEADER}{doc}{PEER_EXAMPLE}"))
    }
}

const HEADER: &str = "\
# payme-bank configuration. Environment variables and flags override these
# (see `payme-bank serve --help`).

";

/// The comment above each setting in the file `init` writes (one comment may cover the
/// settings that follow it).
const COMMENTS: &[(&str, &str)] = &[
    ("bank_id", "This bank's identifier, written into every coin it mints. Wallets know the bank by it."),
    (
        "public_addr",
        "host:port where wallets reach this bank; written into every coin (exchanges go there).\n\
         Port 0 means the address `serve` actually listens on.",
    ),
    ("listen", "Address `payme-bank serve` listens on (PMTP over TCP; the paper's port is 8000)."),
    (
        "store",
        "Where the ledger lives: empty for bank.db in the data directory (SQLite), or a\n\
         postgres://user:password@host/dbname URL (or postgres:///dbname?host=/run/postgresql)\n\
         to put several `payme-bank serve` nodes on one PostgreSQL database (docs/BANK.md).\n\
         PAYME_BANK_STORE overrides it.",
    ),
    (
        "node_id",
        "This node's name among nodes sharing one database (each keeps its own counter rows);\n\
         empty means \"main\". PAYME_BANK_NODE_ID overrides it.",
    ),
    ("currency", "Currency name, and how many decimal digits its minor unit has (2: amounts are cents)."),
    ("max_denomination_exponent", "Coins are powers of two minor units, from 1 up to 2^max_denomination_exponent."),
    ("coin_lifetime_secs", "Seconds a coin stays valid after minting; expired coins are refused and purged."),
    ("exchange_enabled", "false refuses exchange_coins (coins that must stay traceable, e.g. CPU time)."),
    ("limits", ""),
    (
        "limits.max_connections",
        "Connections served at once, and from one source (an IPv4 address or an IPv6 /64) once\n\
         half the slots are in use: more are closed at once, so taking every slot needs about\n\
         max_connections / 2 / max_connections_per_ip sources. max_connections is capped by the\n\
         open-file limit (ulimit -n).",
    ),
    ("limits.max_frame_bytes", "Largest frame body accepted, in bytes (at most 1048576)."),
    ("limits.idle_timeout_secs", "Close a connection idle this many seconds between requests."),
    ("limits.request_timeout_secs", "Answer `timeout` to a request not done in this many seconds."),
    ("limits.max_coins_per_request", "Most coins handed in by one deposit or exchange."),
    (
        "limits.max_coins_minted_per_request",
        "Most coins minted for one withdraw or exchange (each costs one RSA signature).",
    ),
    ("limits.max_withdraw_amount", "Largest single withdrawal, in minor units."),
    (
        "limits.nonce_window_secs",
        "Nonce clock window each way, in seconds, and how many nonces are remembered in memory.",
    ),
    (
        "limits.nonce_check_address",
        "Require a request's nonce address to equal the connection's address (turn off only\n\
         when clients sit behind NAT).",
    ),
    (
        "limits.commit_batch",
        "Most requests committed together in one durable transaction, and most deposit\n\
         acknowledgements signed with one signature (1 to 4096).",
    ),
    (
        "limits.password_failures_free",
        "Wrong passwords allowed before an account backs off (doubling delay, up to 15 min).",
    ),
    (
        "limits.purge_interval_secs",
        "Seconds between purges of expired serials and nonces, and rows per purge transaction.",
    ),
    ("limits.statement_max_entries", "Most ledger entries in one bank statement."),
    (
        "limits.request_retention_secs",
        "Seconds a withdrawal, exchange or deposit is remembered by its request id, so that a\n\
         client retrying after a lost reply gets the original answer instead of a second one.",
    ),
    (
        "limits.clearing_retry_secs",
        "Seconds between retries of deposits waiting for a peer bank (inter-bank clearing).",
    ),
];

const PEER_EXAMPLE: &str = r#"
# Peer banks this bank clears with are appended by `payme-bank peer add`:
# [[peer]]
# id = "bank-b"                 # its bank id
# addr = "127.0.0.1:8002"       # where it listens
# public_key = "..."            # what `payme-bank public-key` prints there
# account = 1001                # this bank's account there (opened with this bank's bank.pub)
# account_name = "bank-a"
# local_account = 1002          # its account here, if any
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_batch_above_the_cap_is_refused() {
        let with = |commit_batch| Config { limits: Limits { commit_batch, ..Limits::default() }, ..Config::default() };
        assert!(with(MAX_COMMIT_BATCH).validate().is_ok());
        let err = with(MAX_COMMIT_BATCH + 1).validate().unwrap_err().to_string();
        assert!(err.contains("commit_batch"), "{err}");
        assert!(with(pmtp_proto::batch::MAX_BATCH).validate().is_err());
        assert!(with(0).validate().is_err());
    }

    #[test]
    fn commented_file_round_trips_every_setting() {
        let c = Config {
            bank_id: "bank \"quoted\"".into(),
            exchange_enabled: false,
            limits: Limits { commit_batch: 7, ..Limits::default() },
            ..Config::default()
        };
        let back: Config = toml::from_str(&c.commented_toml().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_setting_has_a_comment_and_every_comment_a_setting() {
        let text = Config::default().commented_toml().unwrap();
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        for (path, _) in COMMENTS {
            let mut d = doc.clone();
            assert!(payme_node::config::comment(&mut d, path, "x"), "no setting {path}");
        }
        assert!(
            text.contains("\n# Largest frame body accepted, in bytes (at most 1048576).\nmax_frame_bytes = 1048576\n"),
            "{text}"
        );
        assert!(text.contains("# id = \"bank-b\""), "the peer example is kept");
    }

    #[test]
    fn control_characters_in_names_round_trip() {
        let nasty = "b\u{1}\u{1b}[31m\"\\\n\u{7f}'x'\t";
        let c = Config { bank_id: nasty.into(), currency: nasty.into(), ..Config::default() };
        let text = c.commented_toml().unwrap();
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "no raw control character: {text:?}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let p = PeerBank {
            id: nasty.into(),
            addr: "127.0.0.1:1".into(),
            public_key: "k".into(),
            account: 7,
            account_name: nasty.into(),
            local_account: Some(3),
            retired_public_keys: vec![nasty.into()],
        };
        let text = Config::default().commented_toml().unwrap() + &Config::peer_section(&p).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.peers, vec![p]);
    }

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example.config.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c, Config::default(), "the example documents the defaults");
    }

    #[test]
    fn limits_share_one_section_with_the_bank_defaults() {
        let c: Config = toml::from_str("[limits]\nmax_connections = 7\ncommit_batch = 9\n").unwrap();
        assert_eq!(c.limits.net.max_connections, 7, "a shared setting is read");
        assert_eq!(c.limits.commit_batch, 9, "a bank setting beside it is read");
        assert_eq!(c.limits.net.max_connections_per_ip, 16, "an unset shared setting takes the bank's default");
        assert_eq!(c.limits.net.nonce_cache_capacity, 1_000_000);
        let err = toml::from_str::<Config>("[limits]\nmax_conections = 7\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `max_conections`"), "{err}");
        let c = Config {
            limits: Limits { net: PeerLimits { max_frame_bytes: 0, ..PeerLimits::default() }, ..Limits::default() },
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("max_frame_bytes"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("bank_idd = \"x\"").is_err());
        let c = Config { max_denomination_exponent: 63, ..Config::default() };
        assert!(c.validate().is_err());
    }
}
