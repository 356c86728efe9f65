//! Secrets (key passphrases, account passwords) for the command line: from a file, the
//! environment, or a prompt on the terminal. Never from a flag, which `ps` would show.

use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no secret given: use the --*-file flag or set {env_var}")]
    Missing { env_var: String },
    #[error("cannot read the secret from the terminal: {0}")]
    Prompt(#[from] std::io::Error),
}

/// Reads a secret: from a file (first line), else an environment variable, else a prompt
/// on the terminal. Fails with a one-line message saying how to provide it.
pub fn read_secret(file: Option<&Path>, env_var: &str, prompt: &str) -> Result<Zeroizing<String>, SecretError> {
    if let Some(path) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| SecretError::Read { path: path.to_owned(), source })?,
        );
        return Ok(Zeroizing::new(text.lines().next().unwrap_or("").to_owned()));
    }
    if let Ok(v) = std::env::var(env_var) {
        return Ok(Zeroizing::new(v));
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(SecretError::Missing { env_var: env_var.to_owned() });
    }
    Ok(Zeroizing::new(rpassword::prompt_password(prompt)?))
}
