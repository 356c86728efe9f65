//! Private keys at rest: an [`Identity`] encrypted under a passphrase.
//!
//! ```text
//! "PMTPKEY1" | m_cost u32 LE (KiB) | t_cost u32 LE | p_cost u32 LE | salt[16] | nonce[12] | AES-256-GCM ciphertext
//! ```
//!
//! The key is Argon2id(passphrase, salt, params); the header is the associated data, so the
//! parameters cannot be weakened without the tag failing. A wrong passphrase and a damaged
//! file are both [`KeyFileError::WrongPassphrase`]-or-`Corrupt`, never a panic. Reading and
//! writing the file itself (mode 0600) is behind the `fs` feature.

use crate::keys::Identity;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

const MAGIC: &[u8; 8] = b"PMTPKEY1";
const HEADER_LEN: usize = 8 + 12 + 16 + 12;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's Argon2id recommendation (19 MiB, 2 passes, 1 lane): about 30 ms here.
    fn default() -> Self {
        KdfParams { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only.
    pub const INSECURE_FAST: KdfParams = KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("wrong passphrase (or the key file was altered)")]
    WrongPassphrase,
    #[error("not a payme key file or damaged: {0}")]
    Corrupt(&'static str),
    #[error("key file parameters are unacceptable: {0}")]
    BadParams(String),
    #[error("{0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
}

fn derive_key(passphrase: &[u8], salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    // Refuse absurd parameters from a tampered file before allocating memory for them.
    if p.m_cost_kib > 4 * 1024 * 1024 || p.t_cost > 64 || p.p_cost > 64 || p.t_cost == 0 || p.p_cost == 0 {
        return Err(KeyFileError::BadParams(format!("{p:?}")));
    }
    let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| KeyFileError::BadParams(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(passphrase, salt, key.as_mut()).map_err(|e| KeyFileError::BadParams(e.to_string()))?;
    Ok(key)
}

/// Encrypts `identity` under `passphrase`.
pub fn seal_identity<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    identity: &Identity,
    passphrase: &[u8],
    params: KdfParams,
) -> Result<Vec<u8>, KeyFileError> {
    let salt: [u8; 16] = crate::rng::bytes(rng);
    let nonce: [u8; 12] = crate::rng::bytes(rng);
    let mut out = Vec::with_capacity(HEADER_LEN + 1400);
    out.extend_from_slice(MAGIC);
    for v in [params.m_cost_kib, params.t_cost, params.p_cost] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = derive_key(passphrase, &salt, params)?;
    let plain = identity.to_secret_bytes()?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: &plain, aad: &out[..HEADER_LEN] })
        .map_err(|_| KeyFileError::Corrupt("encryption failed"))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts a key file's bytes.
pub fn open_identity(bytes: &[u8], passphrase: &[u8]) -> Result<Identity, KeyFileError> {
    if bytes.len() < HEADER_LEN + 16 || &bytes[..8] != MAGIC {
        return Err(KeyFileError::Corrupt("bad header"));
    }
    let u = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let params = KdfParams { m_cost_kib: u(8), t_cost: u(12), p_cost: u(16) };
    let salt = &bytes[20..36];
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[36..48]);
    let key = derive_key(passphrase, salt, params)?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let plain = cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: &bytes[HEADER_LEN..], aad: &bytes[..HEADER_LEN] })
        .map(Zeroizing::new)
        .map_err(|_| KeyFileError::WrongPassphrase)?;
    Ok(Identity::from_secret_bytes(&plain)?)
}

/// Writing and reading key files (and other secrets) with owner-only permissions.
#[cfg(feature = "fs")]
pub mod fs {
    use super::KeyFileError;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    fn io(path: &Path, e: std::io::Error) -> KeyFileError {
        KeyFileError::Io { path: path.display().to_string(), message: e.to_string() }
    }

    /// Writes `bytes` to `path` with mode 0600, atomically (see [`write_atomic`]), refusing
    /// to replace an existing file.
    pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
        if path.exists() {
            return Err(KeyFileError::Io {
                path: path.display().to_string(),
                message: "already exists; refusing to overwrite a key".into(),
            });
        }
        write_atomic(path, bytes, 0o600)
    }

    /// Writes `bytes` to `path` with permissions `mode`, replacing any file there, so that
    /// after a crash or a power loss the path holds either the old content or the new, never
    /// a mix or nothing: a temporary file in the same directory is written and fsynced, then
    /// renamed over `path`, and the directory is fsynced so the rename itself is durable.
    /// To append, read the file, append in memory and write the whole through this.
    pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A name no other writer uses (process id and a counter): concurrent writers never
        // share a temporary file, and a leftover from a crash is never reused.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(|e| io(&tmp, e))?;
            // The umask may have narrowed `mode` at creation: set it exactly.
            f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io(&tmp, e))?;
            f.write_all(bytes).map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| io(path, e))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return written;
        }
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io(&dir, e))
    }

    /// Appends `bytes` to the existing file at `path` durably: reads it, appends in memory
    /// and replaces it through [`write_atomic`], keeping its permissions. A crash leaves the
    /// old content or the new, never half a section.
    pub fn append_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
        let mode = std::fs::metadata(path).map_err(|e| io(path, e))?.permissions().mode() & 0o7777;
        let mut content = std::fs::read(path).map_err(|e| io(path, e))?;
        content.extend_from_slice(bytes);
        write_atomic(path, &content, mode)
    }

    /// Reads a private file, refusing it when group or others may read or write it.
    pub fn read_private(path: &Path) -> Result<Vec<u8>, KeyFileError> {
        let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path: path.display().to_string(), mode });
        }
        std::fs::read(path).map_err(|e| io(path, e))
    }
}

#[cfg(all(test, feature = "test-keys"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let id = crate::testing::identity(0);
        let mut rng = crate::rng::os();
        let sealed = seal_identity(&mut rng, &id, b"correct horse", KdfParams::INSECURE_FAST).unwrap();
        let back = open_identity(&sealed, b"correct horse").unwrap();
        assert_eq!(back.public(), id.public());
        assert!(matches!(open_identity(&sealed, b"wrong"), Err(KeyFileError::WrongPassphrase)));
        assert!(matches!(open_identity(&sealed[..20], b"x"), Err(KeyFileError::Corrupt(_))));
        // Weakening the stored parameters breaks the tag.
        let mut weak = sealed.clone();
        weak[12] = 0x02;
        assert!(open_identity(&weak, b"correct horse").is_err());
        // A tampered memory cost is refused before allocation.
        let mut huge = sealed.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open_identity(&huge, b"correct horse"), Err(KeyFileError::BadParams(_))));
    }

    #[cfg(feature = "fs")]
    #[test]
    fn files_are_0600_and_loose_permissions_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write_private(&path, b"secret").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_private(&path).unwrap(), b"secret");
        assert!(fs::write_private(&path, b"again").is_err(), "never overwrites a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = fs::read_private(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[cfg(feature = "fs")]
    #[test]
    fn write_atomic_replaces_keeps_mode_and_leaves_no_temporary_file_and_appends() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // 0664: a usual umask (022) would narrow it at creation; the helper must not.
        fs::write_atomic(&path, b"first version, rather long", 0o664).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first version, rather long");
        fs::write_atomic(&path, b"second", 0o664).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second", "replaced, not overwritten in place");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o664);
        // The mode given is the mode the file gets, whatever the old file's mode was.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        fs::write_atomic(&path, b"third", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Appending keeps the file's mode and adds to its content.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        fs::append_atomic(&path, b" and more").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third and more");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.toml")], "no temporary file left");
        // A directory that does not exist: an error naming the path, nothing written.
        let err = fs::write_atomic(&dir.path().join("missing/x"), b"y", 0o600).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
