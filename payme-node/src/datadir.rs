//! A daemon's data directory: the names of the files in it, and the lock that stops a
//! second `serve` on it.

use std::path::{Path, PathBuf};

/// File names inside a daemon's data directory: `config.toml`, `{stem}.key`, `{stem}.pub`,
/// `{stem}.db` and `serve.lock`, where the stem names the daemon (`bank`, `wallet`).
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
    stem: &'static str,
}

/// Another `serve` holds the directory, or its lock file cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the data directory is in use by another payme-{program} ({})", .path.display())]
    InUse { program: &'static str, path: PathBuf },
    #[error("cannot open {}: {source}{}", .path.display(), crate::users::permission_hint(.path, .source))]
    Open { path: PathBuf, source: std::io::Error },
}

impl DataDir {
    /// The directory at `root` of the daemon whose files start with `stem`.
    pub fn new(root: impl Into<PathBuf>, stem: &'static str) -> Self {
        DataDir { root: root.into(), stem }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join(format!("{}.key", self.stem))
    }
    pub fn public(&self) -> PathBuf {
        self.root.join(format!("{}.pub", self.stem))
    }
    pub fn database(&self) -> PathBuf {
        self.root.join(format!("{}.db", self.stem))
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("serve.lock")
    }

    /// Takes the exclusive lock that stops a second `serve` on this directory. Held until
    /// the returned file is dropped (the OS releases it if the process dies).
    pub fn lock(&self) -> Result<std::fs::File, LockError> {
        let path = self.lock_file();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Open { path: path.clone(), source })?;
        f.try_lock().map_err(|_| LockError::InUse { program: self.stem, path })?;
        // Who holds it, for clients that wait for a daemon still starting (see `holder`).
        {
            use std::io::Write;
            let _ = f.set_len(0);
            let _ = (&f).write_all(format!("{}\n", std::process::id()).as_bytes());
        }
        Ok(f)
    }

    /// The process that took the serve lock, if it is still alive: a daemon serving this
    /// directory, or starting to. Read without taking the lock (which would race a
    /// starting daemon).
    pub fn holder(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.lock_file()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let name = exe.file_name()?.to_string_lossy().into_owned();
        name.starts_with(&format!("payme-{}", self.stem)).then_some(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_serve_per_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path(), "wallet");
        assert_eq!(dir.key(), tmp.path().join("wallet.key"));
        let held = dir.lock().unwrap();
        let err = dir.lock().unwrap_err();
        assert!(err.to_string().contains("in use by another payme-wallet"), "{err}");
        drop(held);
        assert!(dir.lock().is_ok(), "the lock comes back when its holder lets go");
    }
}
