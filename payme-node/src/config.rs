//! Where a daemon's files live by default, loading its TOML config, and the settings
//! both daemons' `[limits]` share.

use pmtp_proto::{NonceChecker, NonceConfig};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// `$XDG_DATA_HOME/app`, else `~/.local/share/app`.
pub fn default_data_dir(app: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join(app);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share").join(app)
}

/// Reads and parses a TOML file; the error names the file and what is wrong.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The replay checker a daemon builds from its `[limits]` nonce settings: the clock
/// window each way, how many nonces are remembered, whether a nonce must name the
/// connection's address.
pub fn nonce_checker(window_secs: u64, capacity: usize, check_address: bool) -> NonceChecker {
    NonceChecker::new(NonceConfig { window_secs, capacity, check_address })
}
