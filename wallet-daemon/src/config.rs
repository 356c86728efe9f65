//! Wallet configuration: defaults, then `config.toml` in the data directory, then
//! environment variables and flags (applied in `main.rs`).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PMTP listener for other wallets (merchants asking for payment).
    pub listen: SocketAddr,
    /// The local control socket; empty means `control.sock` in the data directory.
    pub control_socket: String,
    /// Banks this wallet knows: coins of other banks are refused.
    #[serde(rename = "bank")]
    pub banks: Vec<BankConfig>,
    pub policy: Policy,
    pub merchant: Merchant,
    pub limits: Limits,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections from one source (IPv4 address, IPv6 /64) at once: taking every slot
    /// needs max_connections / max_connections_per_ip sources.
    pub max_connections_per_ip: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout_secs: u64,
    pub nonce_window_secs: u64,
    pub nonce_cache_capacity: usize,
    /// Require a peer's nonce address to equal its connection address.
    pub nonce_check_address: bool,
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
            control_socket: String::new(),
            banks: Vec::new(),
            policy: Policy::default(),
            merchant: Merchant::default(),
            limits: Limits::default(),
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
            max_connections: 1024,
            max_connections_per_ip: 8,
            max_frame_bytes: pmtp_proto::frame::DEFAULT_MAX_BODY,
            idle_timeout_secs: 60,
            nonce_window_secs: 30,
            nonce_cache_capacity: 100_000,
            nonce_check_address: true,
            max_pending_requests: 32,
            max_pending_per_source: 4,
            control_idle_timeout_secs: 60,
            refresh_before_secs: 7 * 86_400,
            maintenance_interval_secs: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = bank_daemon::daemon::load_toml(path).map_err(ConfigError::Invalid)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if self.limits.max_frame_bytes == 0 || self.limits.max_frame_bytes > pmtp_proto::frame::DEFAULT_MAX_BODY {
            return Err(ConfigError::Invalid("limits.max_frame_bytes must be 1 to 1048576".into()));
        }
        Ok(())
    }

    pub fn control_socket_path(&self, data_dir: &Path) -> PathBuf {
        if self.control_socket.is_empty() {
            data_dir.join("control.sock")
        } else {
            PathBuf::from(&self.control_socket)
        }
    }

    /// The config file `init` writes, every setting commented.
    pub fn commented_toml(&self) -> String {
        let (p, m, l) = (&self.policy, &self.merchant, &self.limits);
        format!(
            r#"# payme-wallet configuration. Flags and environment variables override these.

# PMTP listener where merchants' wallets reach this wallet (the paper's wallet port is 8001).
listen = "{listen}"
# Local control socket for the payme-wallet commands and the CGI program; empty means
# control.sock in the data directory. Created with mode 0600; only this user may connect.
control_socket = {control:?}

# Banks are added with `payme-wallet bank add`, which appends sections like this:
# [[bank]]
# id = "bank-a"                 # the bank's id, as in its coins
# addr = "127.0.0.1:8000"       # where it listens
# public_key = "..."            # what `payme-bank public-key` prints
# account = 1001                # your account there (to withdraw and deposit)
# account_name = "alice"

[policy]
# Pay known merchants up to this amount (minor units) without asking; 0 always asks.
auto_approve_limit = {auto}
# A merchant never paid before: "ask" (approving pins its keys) or "refuse".
unknown_merchants = "{unknown}"
# Seconds a payment request waits for your answer before it is refused.
consent_timeout_secs = {consent}

[merchant]
# Coins received are checked at their bank before the receipt goes out: "deposit" into
# your account there, or "exchange" them for fresh coins (no account needed).
validate = "{validate}"
# Seconds `collect` waits for the buyer (and their consent) and the bank.
collect_timeout_secs = {collect}
# Deposit coins of every known bank at this one, which clears them with the bank that
# minted them (inter-bank clearing); unset deposits each coin at its own bank.
{deposit_bank}
# Seconds a receipt re-opens the item it paid for (a buyer whose page timed out, or who
# lost the download, presents the receipt to the shop and gets the item again).
order_lifetime_secs = {order_life}
# Collects waiting for buyers at once; more are refused as busy.
max_concurrent_collects = {max_collects}

[limits]
max_connections = {maxc}
# Connections from one source, an IPv4 address or an IPv6 /64 (a merchant asks one
# request at a time), once half the slots are in use; taking every slot needs about
# max_connections / 2 / max_connections_per_ip sources. max_connections is capped by
# the open-file limit (ulimit -n).
max_connections_per_ip = {perip}
max_frame_bytes = {maxf}
idle_timeout_secs = {idle}
# Nonce clock window each way (seconds), and how many nonces are remembered.
nonce_window_secs = {window}
nonce_cache_capacity = {cap}
# Require a peer's nonce address to be its connection address (off only behind NAT).
nonce_check_address = {check}
# Payment requests waiting for your answer at once.
max_pending_requests = {pending}
# ...of which from one address (IPv6: one /64); never more than a quarter of the above.
max_pending_per_source = {per_source}
# Seconds a control-socket client may stay silent between requests before it is closed.
control_idle_timeout_secs = {control_idle}
# Coins this close to expiry (seconds) are exchanged for fresh ones.
refresh_before_secs = {refresh}
# Seconds between background rounds: refresh, and retrying unfinished operations.
maintenance_interval_secs = {maint}
"#,
            listen = self.listen,
            control = self.control_socket,
            auto = p.auto_approve_limit,
            unknown = match p.unknown_merchants {
                UnknownMerchants::Ask => "ask",
                UnknownMerchants::Refuse => "refuse",
            },
            consent = p.consent_timeout_secs,
            validate = match m.validate {
                Validate::Deposit => "deposit",
                Validate::Exchange => "exchange",
            },
            collect = m.collect_timeout_secs,
            deposit_bank = match &m.deposit_bank {
                Some(b) => format!("deposit_bank = {b:?}"),
                None => "# deposit_bank = \"bank-a\"".to_owned(),
            },
            order_life = m.order_lifetime_secs,
            max_collects = m.max_concurrent_collects,
            maxc = l.max_connections,
            perip = l.max_connections_per_ip,
            maxf = l.max_frame_bytes,
            idle = l.idle_timeout_secs,
            window = l.nonce_window_secs,
            cap = l.nonce_cache_capacity,
            check = l.nonce_check_address,
            pending = l.max_pending_requests,
            per_source = l.max_pending_per_source,
            control_idle = l.control_idle_timeout_secs,
            refresh = l.refresh_before_secs,
            maint = l.maintenance_interval_secs,
        )
    }

    /// The `[[bank]]` section `bank add` appends.
    pub fn bank_section(b: &BankConfig) -> String {
        let mut s = format!("\n[[bank]]\nid = {:?}\naddr = {:?}\npublic_key = {:?}\n", b.id, b.addr, b.public_key);
        if let (Some(a), Some(n)) = (b.account, &b.account_name) {
            s.push_str(&format!("account = {a}\naccount_name = {n:?}\n"));
        }
        s
    }
}

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
            ..Config::default()
        };
        assert_eq!(toml::from_str::<Config>(&c.commented_toml()).unwrap(), c);
    }

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example.config.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.banks.len(), 1);
        assert_eq!(c.policy, Policy::default());
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
        };
        let text = Config::default().commented_toml() + &Config::bank_section(&b);
        let c: Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.banks, vec![b]);
    }
}
