//! Wallet configuration: defaults, then `config.toml` in the data directory, then
//! environment variables and flags (applied in `main.rs`).

pub use payme_node::config::ConfigError;
use payme_node::config::{PeerLimitDefaults, PeerLimits, UnknownKeys};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PMTP listener for other wallets (merchants asking for payment).
    pub listen: SocketAddr,
    /// Whether to listen for PMTP at all. A buyer who pays only in band (`payme-wallet pay
    /// URL`, HTTP 402) needs no inbound port: `false` serves the control socket only.
    pub pmtp_listener: bool,
    /// The local control socket; empty means `control.sock` in the data directory.
    pub control_socket: String,
    /// Banks this wallet knows: coins of other banks are refused.
    #[serde(rename = "bank")]
    pub banks: Vec<BankConfig>,
    pub policy: Policy,
    pub merchant: Merchant,
    pub limits: Limits,
    /// After `limits`: the commented example of `merchant.deposit_bank` sits above
    /// `[limits]`, and must stay in the `[merchant]` section when uncommented.
    pub http: Http,
    /// The wallet window: a web UI for the person ([`crate::ui`]).
    pub ui: Ui,
}

/// The wallet window (`payme-wallet ui`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ui {
    /// A loopback address and port, or `"none"` for no window.
    pub listen: String,
    /// How amounts are shown: the currency's symbol ("€") or code ("EUR"), and the decimal
    /// digits of its minor unit (2: amounts are cents).
    pub currency: String,
    pub currency_digits: u8,
}

/// Where the wallet window listens by default (the PMTP port's neighbour).
pub const DEFAULT_UI_LISTEN: &str = "127.0.0.1:8002";

impl Default for Ui {
    fn default() -> Self {
        Ui { listen: DEFAULT_UI_LISTEN.into(), currency: "EUR".into(), currency_digits: 2 }
    }
}

impl Ui {
    /// The window's address: `None` when `listen` is `"none"`. Only a loopback address is
    /// accepted: every page the person visits can reach this server, and no other
    /// computer may.
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let v = self.listen.trim();
        if v.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        match v.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Ok(Some(a)),
            _ => Err(ConfigError::Invalid(format!(
                "ui.listen {v:?}: give a loopback address and port (as \"{DEFAULT_UI_LISTEN}\"), or \"none\""
            ))),
        }
    }
}

/// The HTTP client of payments in band (`payme-wallet pay URL`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Seconds to connect to a shop.
    pub connect_timeout_secs: u64,
    /// Seconds one request may take, answer and body included.
    pub timeout_secs: u64,
    /// Largest body accepted (bytes); a longer answer is cut off as an error.
    pub max_body_bytes: u64,
    /// Redirects followed per request, and only within the URL's origin.
    pub max_redirects: usize,
    /// Maintenance rounds that send an unanswered payment again before its coins are
    /// resolved by exchange at their bank.
    pub resend_rounds: u32,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            connect_timeout_secs: 10,
            timeout_secs: 120,
            max_body_bytes: 64 * 1024 * 1024,
            max_redirects: 5,
            resend_rounds: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankConfig {
    /// The bank's id (as written in its coins).
    pub id: String,
    /// host:port of the bank.
    pub addr: String,
    /// The bank's public identity (the text `payme-bank public-key` prints).
    pub public_key: String,
    /// This wallet owner's account there, if any (needed to withdraw and deposit).
    #[serde(default)]
    pub account: Option<u64>,
    /// The name on that account.
    #[serde(default)]
    pub account_name: Option<String>,
    /// Public keys the bank has replaced (`bank set --public-key` moves the old one here):
    /// coins minted under them are accepted until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_public_keys: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMerchants {
    /// Ask the person (the default): approving pins the merchant's keys.
    Ask,
    /// Refuse every merchant not already known.
    Refuse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Payments to known merchants up to this amount (minor units) are made without
    /// asking. 0: always ask.
    pub auto_approve_limit: u64,
    /// What to do when a merchant this wallet has never paid asks for money.
    pub unknown_merchants: UnknownMerchants,
    /// Seconds a payment request waits for the person's answer before it is refused.
    pub consent_timeout_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validate {
    /// Deposit received coins into this wallet's account at their bank (the default).
    Deposit,
    /// Exchange received coins for fresh ones at their bank (no account needed; more
    /// anonymous).
    Exchange,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Merchant {
    /// How coins received in a payment are validated before the receipt is sent.
    pub validate: Validate,
    /// Seconds `collect` waits for the buyer (including their consent) and the bank.
    pub collect_timeout_secs: u64,
    /// Deposit coins of every known bank at this one (which clears them with their
    /// minting banks), instead of at each coin's own bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposit_bank: Option<String>,
    /// Seconds a paid order's receipt re-opens its item (the shop serves it again to a
    /// request presenting the receipt).
    pub order_lifetime_secs: u64,
    /// Collects running at once; more are refused as `busy` at once. A second collect for
    /// an order being collected joins it and does not count.
    pub max_concurrent_collects: usize,
}

/// The wallet's `[limits]`: what every daemon serving peers has ([`PeerLimits`]), then the
/// wallet's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    #[serde(flatten)]
    pub net: PeerLimits<WalletDefaults>,
    /// Payment requests waiting for consent at once; more are refused as busy.
    pub max_pending_requests: usize,
    /// Payment requests waiting for consent from one source (an IPv4 address, an IPv6 /64)
    /// at once; more from it are refused as busy. Never more than a quarter of
    /// `max_pending_requests` (at least 1), so one source cannot crowd out the others.
    pub max_pending_per_source: usize,
    /// Seconds a control-socket connection may stay silent between requests before it is
    /// closed.
    pub control_idle_timeout_secs: u64,
    /// Coins within this many seconds of expiry are exchanged for fresh ones.
    pub refresh_before_secs: u64,
    /// Seconds between background rounds (refresh, retry of unresolved operations).
    pub maintenance_interval_secs: u64,
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownKeys,
}

/// A desktop wallet's defaults for the settings every daemon serving peers has: fewer
/// slots than a bank, a longer idle time for a person's slower round trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalletDefaults;

impl PeerLimitDefaults for WalletDefaults {
    const DEFAULT: PeerLimits<WalletDefaults> = PeerLimits {
        max_connections: 1024,
        max_connections_per_ip: 8,
        max_frame_bytes: pmtp_proto::frame::DEFAULT_MAX_BODY,
        idle_timeout_secs: 60,
        nonce_window_secs: 30,
        nonce_cache_capacity: 100_000,
        nonce_check_address: true,
        defaults: std::marker::PhantomData,
    };
}

impl Limits {
    /// Pending requests one source may have: the configured share, capped at a quarter of
    /// the list and at least 1.
    pub fn pending_per_source(&self) -> usize {
        self.max_pending_per_source.min(self.max_pending_requests / 4).max(1)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            pmtp_listener: true,
            control_socket: String::new(),
            banks: Vec::new(),
            policy: Policy::default(),
            merchant: Merchant::default(),
            http: Http::default(),
            limits: Limits::default(),
            ui: Ui::default(),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy { auto_approve_limit: 0, unknown_merchants: UnknownMerchants::Ask, consent_timeout_secs: 45 }
    }
}

impl Default for Merchant {
    fn default() -> Self {
        Merchant {
            validate: Validate::Deposit,
            collect_timeout_secs: 55,
            deposit_bank: None,
            order_lifetime_secs: 7 * 86_400,
            max_concurrent_collects: 64,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            net: PeerLimits::default(),
            max_pending_requests: 32,
            max_pending_per_source: 4,
            control_idle_timeout_secs: 60,
            refresh_before_secs: 7 * 86_400,
            maintenance_interval_secs: 30,
            unknown: UnknownKeys,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        payme_node::config::load(path, Config::validate)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ui.addr()?;
        if let Some(d) = &self.merchant.deposit_bank {
            if !self.banks.iter().any(|b| &b.id == d && b.account.is_some()) {
                return Err(ConfigError::Invalid(format!(
                    "merchant.deposit_bank {d:?} must be a bank with an account"
                )));
            }
        }
        for b in &self.banks {
            pmtp_proto::keys::PublicIdentity::from_text(&b.public_key)
                .and_then(|p| p.parse())
                .map_err(|e| ConfigError::Invalid(format!("bank {}: public_key: {e}", b.id)))?;
            if b.account.is_some() != b.account_name.is_some() {
                return Err(ConfigError::Invalid(format!("bank {}: give both account and account_name", b.id)));
            }
        }
        let mut ids: Vec<_> = self.banks.iter().map(|b| &b.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid("a bank id appears twice".into()));
        }
        if self.http.max_body_bytes == 0 || self.http.timeout_secs == 0 || self.http.connect_timeout_secs == 0 {
            return Err(ConfigError::Invalid("http.max_body_bytes and the http timeouts must be above 0".into()));
        }
        self.limits.net.validate()
    }

    pub fn control_socket_path(&self, data_dir: &Path) -> PathBuf {
        if self.control_socket.is_empty() {
            data_dir.join("control.sock")
        } else {
            PathBuf::from(&self.control_socket)
        }
    }

    /// The config file `init` writes, every setting commented.
    pub fn commented_toml(&self) -> Result<String, ConfigError> {
        let mut doc = payme_node::config::commented_document(self, COMMENTS)?;
        if self.merchant.deposit_bank.is_none() {
            // Unset, it is not in the document: its comment and an example go above [limits].
            payme_node::config::comment(&mut doc, "limits", &format!("{DEPOSIT_BANK}\ndeposit_bank = \"bank-a\"\n\n"));
        }
        Ok(format!("{HEADER}{doc}"))
    }

    /// The `[[bank]]` section `bank add` appends.
    pub fn bank_section(b: &BankConfig) -> Result<String, ConfigError> {
        payme_node::config::array_section("bank", b)
    }
}

const HEADER: &str = "# payme-wallet configuration. Flags and environment variables override these.\n\n";

const DEPOSIT_BANK: &str = "Deposit coins of every known bank at this one, which clears them with the bank that\n\
                            minted them (inter-bank clearing); unset deposits each coin at its own bank.";

/// The comment above each setting in the file `init` writes (one comment may cover the
/// settings that follow it).
const COMMENTS: &[(&str, &str)] = &[
    ("listen", "PMTP listener where merchants' wallets reach this wallet (the paper's wallet port is 8001)."),
    (
        "pmtp_listener",
        "false: no PMTP listener at all (`serve` serves the control socket only). A buyer who\n\
         pays in band over HTTP 402 (`payme-wallet pay URL`) needs no inbound port.",
    ),
    (
        "control_socket",
        "Local control socket for the payme-wallet commands and the CGI program; empty means\n\
         control.sock in the data directory. Created with mode 0600; only this user may connect.",
    ),
    (
        "policy",
        "Banks are added with `payme-wallet bank add`, which appends sections like this:\n\
         [[bank]]\n\
         id = \"bank-a\"                 # the bank's id, as in its coins\n\
         addr = \"127.0.0.1:8000\"       # where it listens\n\
         public_key = \"...\"            # what `payme-bank public-key` prints\n\
         account = 1001                # your account there (to withdraw and deposit)\n\
         account_name = \"alice\"\n\n",
    ),
    ("policy.auto_approve_limit", "Pay known merchants up to this amount (minor units) without asking; 0 always asks."),
    ("policy.unknown_merchants", "A merchant never paid before: \"ask\" (approving pins its keys) or \"refuse\"."),
    ("policy.consent_timeout_secs", "Seconds a payment request waits for your answer before it is refused."),
    ("merchant", ""),
    (
        "merchant.validate",
        "Coins received are checked at their bank before the receipt goes out: \"deposit\" into\n\
         your account there, or \"exchange\" them for fresh coins (no account needed).",
    ),
    ("merchant.collect_timeout_secs", "Seconds `collect` waits for the buyer (and their consent) and the bank."),
    ("merchant.deposit_bank", DEPOSIT_BANK),
    (
        "merchant.order_lifetime_secs",
        "Seconds a receipt re-opens the item it paid for (a buyer whose page timed out, or who\n\
         lost the download, presents the receipt to the shop and gets the item again).",
    ),
    ("merchant.max_concurrent_collects", "Collects waiting for buyers at once; more are refused as busy."),
    ("http", "Paying over HTTP 402 (`payme-wallet pay URL`): the client's bounds."),
    ("http.max_redirects", "Redirects followed per request, only within the URL's origin (scheme, host, port)."),
    (
        "http.resend_rounds",
        "Maintenance rounds that send an unanswered payment to the shop again (it answers the\n\
         same receipt) before its coins are taken back by exchange at their bank.",
    ),
    (
        "ui",
        "The wallet window, a web page for you on this computer (`payme-wallet ui` opens it):\n\
         where it listens (a loopback address and port, or \"none\"), and how amounts are shown\n\
         (the currency's symbol or code, and its minor unit's decimal digits).",
    ),
    ("limits", ""),
    (
        "limits.max_connections_per_ip",
        "Connections from one source, an IPv4 address or an IPv6 /64 (a merchant asks one\n\
         request at a time), once half the slots are in use; taking every slot needs about\n\
         max_connections / 2 / max_connections_per_ip sources. max_connections is capped by\n\
         the open-file limit (ulimit -n).",
    ),
    ("limits.nonce_window_secs", "Nonce clock window each way (seconds), and how many nonces are remembered."),
    (
        "limits.nonce_check_address",
        "Require a peer's nonce address to be its connection address (off only behind NAT).",
    ),
    ("limits.max_pending_requests", "Payment requests waiting for your answer at once."),
    (
        "limits.max_pending_per_source",
        "...of which from one address (IPv6: one /64); never more than a quarter of the above.",
    ),
    (
        "limits.control_idle_timeout_secs",
        "Seconds a control-socket client may stay silent between requests before it is closed.",
    ),
    ("limits.refresh_before_secs", "Coins this close to expiry (seconds) are exchanged for fresh ones."),
    (
        "limits.maintenance_interval_secs",
        "Seconds between background rounds: refresh, and retrying unfinished operations.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_file_round_trips() {
        let c = Config {
            policy: Policy {
                auto_approve_limit: 500,
                unknown_merchants: UnknownMerchants::Refuse,
                consent_timeout_secs: 9,
            },
            merchant: Merchant {
                validate: Validate::Exchange,
                collect_timeout_secs: 3,
                deposit_bank: Some("b".into()),
                order_lifetime_secs: 77,
                max_concurrent_collects: 5,
            },
            pmtp_listener: false,
            http: Http {
                connect_timeout_secs: 3,
                timeout_secs: 4,
                max_body_bytes: 5,
                max_redirects: 0,
                resend_rounds: 7,
            },
            ..Config::default()
        };
        assert_eq!(toml::from_str::<Config>(&c.commented_toml().unwrap()).unwrap(), c);
    }

    #[test]
    fn limits_share_one_section_with_the_wallet_defaults() {
        let c: Config = toml::from_str("[limits]\nidle_timeout_secs = 5\nmax_pending_requests = 9\n").unwrap();
        assert_eq!(c.limits.net.idle_timeout_secs, 5, "a shared setting is read");
        assert_eq!(c.limits.max_pending_requests, 9, "a wallet setting beside it is read");
        assert_eq!(c.limits.net.max_connections, 1024, "an unset shared setting takes the wallet's default");
        assert_eq!(c.limits.net.max_connections_per_ip, 8);
        let err = toml::from_str::<Config>("[limits]\ncommit_batch = 7\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `commit_batch`"), "a bank setting is not a wallet's: {err}");
    }

    #[test]
    fn the_wallet_window_listens_on_loopback_only() {
        let at = |v: &str| Config { ui: Ui { listen: v.into(), ..Ui::default() }, ..Config::default() };
        assert_eq!(at("127.0.0.1:8002").ui.addr().unwrap(), Some(SocketAddr::from(([127, 0, 0, 1], 8002))));
        assert!(at("[::1]:0").ui.addr().unwrap().is_some());
        assert_eq!(at("none").ui.addr().unwrap(), None);
        for bad in ["0.0.0.0:8002", "192.168.1.2:8002", "[::]:8002", "localhost:8002", ""] {
            assert!(at(bad).validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example.config.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.banks.len(), 1);
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.http, Http::default());
        assert!(c.pmtp_listener);
    }

    #[test]
    fn appended_bank_sections_parse() {
        let public = pmtp_proto::testing::identity(0).public().to_text();
        let b = BankConfig {
            id: "b".into(),
            addr: "127.0.0.1:1".into(),
            public_key: public,
            account: Some(7),
            account_name: Some("a".into()),
            retired_public_keys: Vec::new(),
        };
        let text = Config::default().commented_toml().unwrap() + &Config::bank_section(&b).unwrap();
        let c: Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.banks, vec![b]);
    }

    #[test]
    fn control_characters_in_values_round_trip() {
        let nasty = "b\u{1}\u{1b}[31m\"\\\n\u{7f}'x'\t";
        let mut c = Config { control_socket: nasty.into(), ..Config::default() };
        c.merchant.deposit_bank = Some(nasty.into());
        let text = c.commented_toml().unwrap();
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "no raw control character: {text:?}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        let b = BankConfig {
            id: nasty.into(),
            addr: nasty.into(),
            public_key: nasty.into(),
            account: Some(1),
            account_name: Some(nasty.into()),
            retired_public_keys: vec![nasty.into()],
        };
        let without = BankConfig { account: None, account_name: None, ..b.clone() };
        let text = Config::default().commented_toml().unwrap()
            + &Config::bank_section(&b).unwrap()
            + &Config::bank_section(&without).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap().banks, vec![b, without]);
    }

    #[test]
    fn every_comment_names_a_setting() {
        let mut c = Config::default();
        c.merchant.deposit_bank = Some("b".into());
        let doc: toml_edit::DocumentMut = c.commented_toml().unwrap().parse().unwrap();
        for (path, _) in COMMENTS {
            assert!(payme_node::config::comment(&mut doc.clone(), path, "x"), "no setting {path}");
        }
        let text = Config::default().commented_toml().unwrap();
        assert!(text.contains("# deposit_bank = \"bank-a\"\n\n[limits]\n"), "{text}");
    }

    #[test]
    fn the_deposit_bank_example_uncommented_lands_in_the_merchant_section() {
        let text = Config::default().commented_toml().unwrap().replace("# deposit_bank = ", "deposit_bank = ");
        let c: Config = toml::from_str(&text).unwrap();
        assert_eq!(c.merchant.deposit_bank.as_deref(), Some("bank-a"));
    }
}
