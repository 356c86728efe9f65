//! The CGI program's configuration and catalog (TOML).
//!
//! ```toml
//! control_socket = "/home/shop/.local/share/payme-wallet/control.sock"
//! shop_name = "Bob's Books"
//! wallet_port = 8001            # buyers' wallets listen here (at REMOTE_ADDR)
//! allow_buyer_address = false   # buyers may type their wallet's port (at REMOTE_ADDR only)
//! timeout_secs = 120            # the longest wait for a payment: the buyer's consent
//!                               # window (45 s by default) plus the bank's validation;
//!                               # below the web server's CGI timeout (docs/DEPLOY.md)
//! origin = "https://shop.example" # named in in-band offers (HTTP 402); recommended:
//!                               # else from the CGI variables (SERVER_NAME may be the
//!                               # client's Host header)
//! currency = "€"                # prices read "€2.50"; a code reads "2.50 EUR"
//! currency_digits = 2           # decimal digits of the minor unit (2: prices are cents)
//! wallet_ui = "http://127.0.0.1:8002" # the buyer's wallet window: "Pay with payme"
//!                               # links to its pay page; "" for no such link
//!
//! [[item]]
//! id = "paper"
//! price = 250                   # minor units
//! description = "The PayMe paper (PDF)"
//! content_type = "application/pdf"
//! file = "/srv/shop/payme.pdf"  # or: body = "inline content"
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the config is looked for when `PAYME_CGI_CONFIG` is not set.
pub const DEFAULT_PATH: &str = "/etc/payme/cgi.toml";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The merchant wallet's control socket.
    pub control_socket: PathBuf,
    #[serde(default = "default_shop")]
    pub shop_name: String,
    /// Port of buyers' wallets, used with REMOTE_ADDR.
    #[serde(default = "default_port")]
    pub wallet_port: u16,
    /// Let the buyer give their wallet's port in the form (a wallet on another port of the
    /// same computer). Off by default: the shop's wallet connects where the form says, so
    /// when on, only a port on the requester's own address (REMOTE_ADDR) is accepted.
    #[serde(default)]
    pub allow_buyer_address: bool,
    /// The longest wait for a payment. It must cover the buyer's consent window (a
    /// wallet's `policy.consent_timeout_secs`, 45 s by default) plus the bank's validation,
    /// or buyers who approve late pay for a page that already said "not confirmed" (their
    /// receipt still opens the item); and it must stay below the web server's CGI timeout
    /// so the buyer gets our page, not the server's (docs/DEPLOY.md).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The shop's web origin (`https://shop.example`), named in every in-band offer and
    /// checked on every in-band payment. Unset: from the CGI meta-variables
    /// (REQUEST_SCHEME or HTTPS, SERVER_NAME, SERVER_PORT), which some servers fill from
    /// the request's Host header; set it in production.
    #[serde(default)]
    pub origin: Option<String>,
    /// How prices read: the currency's symbol ("€", written before the number) or code
    /// ("EUR", written after it), and the decimal digits of its minor unit.
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_digits")]
    pub currency_digits: u8,
    /// The buyer's wallet window (`payme-wallet ui`), where the item page's "Pay with
    /// payme" link leads, with the shop's offer; empty: no such link.
    #[serde(default = "default_wallet_ui")]
    pub wallet_ui: String,
    #[serde(rename = "item", default)]
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: String,
    pub price: u64,
    pub description: String,
    pub content_type: String,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub body: Option<String>,
}

fn default_shop() -> String {
    "payme shop".into()
}
fn default_port() -> u16 {
    8001
}
fn default_currency() -> String {
    "EUR".into()
}
fn default_digits() -> u8 {
    2
}
/// Where a buyer's wallet window listens unless they moved it (the wallet's `ui.listen`).
pub const DEFAULT_WALLET_UI: &str = "http://127.0.0.1:8002";
fn default_wallet_ui() -> String {
    DEFAULT_WALLET_UI.into()
}
/// The default wait: the wallet's default consent window (45 s) and collect deadline
/// (55 s), plus room for the bank.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?;
        let c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?;
        if let Some(o) = &c.origin {
            if crate::origin_of_url(o).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "origin {o:?}: give scheme and host, as in \"https://shop.example\""
                )));
            }
        }
        if !c.wallet_ui.is_empty() && crate::origin_of_url(&c.wallet_ui).is_none() {
            return Err(ConfigError::Invalid(format!(
                "wallet_ui {:?}: give the wallet window's address, as \"{DEFAULT_WALLET_UI}\", or \"\"",
                c.wallet_ui
            )));
        }
        for i in &c.items {
            if i.file.is_some() == i.body.is_some() {
                return Err(ConfigError::Invalid(format!("item {:?}: give exactly one of file and body", i.id)));
            }
            if i.price == 0 {
                return Err(ConfigError::Invalid(format!("item {:?}: price must be positive", i.id)));
            }
            if i.id.is_empty() || !i.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(ConfigError::Invalid(format!(
                    "item id {:?}: letters, digits, '-', '_' and '.' only",
                    i.id
                )));
            }
        }
        Ok(c)
    }

    /// `minor` units as a buyer reads a price: "€0.37", "0.37 EUR".
    pub fn price(&self, minor: u64) -> String {
        pmtp_proto::Amount::new(minor).in_units(self.currency_digits, &self.currency)
    }

    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }
}

impl Item {
    /// Whether the item can be read now (its file opens), before a page promises it.
    pub fn readable(&self) -> bool {
        match &self.file {
            Some(f) => std::fs::File::open(f).is_ok(),
            None => true,
        }
    }

    /// The item's bytes, read when it is sold.
    pub fn content(&self) -> std::io::Result<Vec<u8>> {
        match (&self.file, &self.body) {
            (Some(f), _) => std::fs::read(f),
            (None, Some(b)) => Ok(b.as_bytes().to_vec()),
            (None, None) => Ok(Vec::new()),
        }
    }
}
