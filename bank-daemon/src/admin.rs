//! Administrative commands: `init`, accounts, `audit`, and assembling a [`Bank`] to serve.
//!
//! Admin commands open the database directly; SQLite's own locking (or PostgreSQL's) lets
//! them run while `serve` is running (the daemon keeps no balances in memory), waiting
//! briefly for the writer if it is mid-commit. Where the database is: [`store_location`].

use crate::config::{Config, ConfigError};
use crate::store::{sqlite::SqliteStore, Circulation, Counters, Location, Store, StoreError};
use crate::{Bank, DataDir};
use payme_node::datadir::LockError;
use pmtp_client::clock::now;
use pmtp_proto::bank_statement::EntryKind;
use pmtp_proto::keyfile::{self, KdfParams, KeyFileError};
use pmtp_proto::keys::{Identity, KeyError, PublicIdentity};
use pmtp_proto::text::Name;
use pmtp_proto::{AccountId, Amount};
use std::path::{Path, PathBuf};

/// Why an administrative command failed: one line for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// What the person asked for cannot be done (a bad name, amount or key file).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Client(#[from] pmtp_client::ClientError),
    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "refusing to use the database in {}: {what}. Nothing was changed. Restore the data directory from \
         a backup (README.md, \"Backups and recovery\"); keep this copy for inspection",
        .dir.display()
    )]
    Damaged { dir: PathBuf, what: String },
}

fn refused(text: impl Into<String>) -> AdminError {
    AdminError::Refused(text.into())
}

/// Options for `init`.
pub struct InitOptions {
    pub bank_id: String,
    pub public_addr: String,
    pub listen: std::net::SocketAddr,
    pub rsa_bits: usize,
    pub kdf: KdfParams,
}

/// Creates a bank: keys under the passphrase, a commented config file, the database.
/// Refuses to touch a directory that already holds a bank key.
pub fn init(dir: &DataDir, passphrase: &str, opts: &InitOptions) -> Result<PublicIdentity, AdminError> {
    if dir.key().exists() {
        return Err(refused(format!("{} already holds a bank key; refusing to overwrite it", dir.root.display())));
    }
    let io = |source| AdminError::Io { path: dir.root.clone(), source };
    std::fs::create_dir_all(&dir.root).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let config = Config {
        bank_id: opts.bank_id.clone(),
        public_addr: opts.public_addr.clone(),
        listen: opts.listen,
        // A store named at init (--store or PAYME_BANK_STORE) is where this bank lives
        // from now on.
        store: STORE_FLAG.get().cloned().or_else(|| std::env::var("PAYME_BANK_STORE").ok()).unwrap_or_default(),
        ..Config::default()
    };
    config.validate()?;
    let mut rng = pmtp_proto::rng::os();
    let name = Name::new(opts.bank_id.clone()).map_err(|e| refused(format!("bank id: {e}")))?;
    let identity = payme_node::keys::new_identity(name, opts.rsa_bits)?;
    let sealed = keyfile::seal_identity(&mut rng, &identity, passphrase.as_bytes(), opts.kdf)?;
    keyfile::fs::write_private(&dir.key(), &sealed)?;
    let public = identity.public();
    keyfile::fs::write_atomic(&dir.public(), format!("{}\n", public.to_text()).as_bytes(), 0o644)?;
    if !dir.config().exists() {
        keyfile::fs::write_atomic(&dir.config(), config.commented_toml()?.as_bytes(), 0o600)?;
    }
    let config = if dir.config().exists() { Config::load(&dir.config())? } else { config };
    let location = store_location(dir, Some(&config));
    let mut store = location.open(&config.node())?;
    let mut tx = store.begin()?;
    tx.audit_event(now(), "init", &format!("bank {} key {}", opts.bank_id, identity.signing.verifying_key().key_id()))?;
    tx.commit()?;
    Ok(public)
}

/// Loads the bank's identity from its encrypted key file.
pub fn load_identity(dir: &DataDir, passphrase: &str) -> Result<Identity, AdminError> {
    let bytes = keyfile::fs::read_private(&dir.key())?;
    keyfile::open_identity(&bytes, passphrase.as_bytes()).map_err(|e| refused(format!("{}: {e}", dir.key().display())))
}

/// The file of keys this bank has replaced: one public identity per line, oldest first.
pub fn retired_file(dir: &DataDir) -> std::path::PathBuf {
    dir.root.join("retired.pub")
}

/// The signing keys this bank has replaced (none if it never rotated).
pub fn retired_keys(dir: &DataDir) -> Result<Vec<pmtp_proto::keys::VerifyingKey>, AdminError> {
    let path = retired_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(AdminError::Io { path, source }),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            PublicIdentity::from_text(l.trim())
                .and_then(|p| p.parse())
                .map(|k| k.verifying)
                .map_err(|e| refused(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Replaces the bank's signing key: new coins, acknowledgements and statements are signed
/// with a fresh key from now on, while coins under the old one stay good until they expire
/// (its public identity moves to `retired.pub`). The X25519 key stays, so wallets keep
/// reaching the bank; they need the new `bank.pub` to check what it signs. Run while the
/// bank is stopped (it takes the serve lock). Returns the old key's id, the new one's, and the
/// new public identity.
pub fn rotate_key(
    dir: &DataDir,
    passphrase: &str,
    rsa_bits: usize,
    kdf: KdfParams,
) -> Result<(pmtp_proto::keys::KeyId, pmtp_proto::keys::KeyId, PublicIdentity), AdminError> {
    let _lock = dir.lock()?;
    let old = load_identity(dir, passphrase)?;
    let fresh = payme_node::keys::new_identity(old.name.clone(), rsa_bits)?;
    let (old_public, old_id) = (old.public(), old.signing.verifying_key().key_id());
    if fresh.signing.verifying_key().key_id() == old_id {
        return Err(refused("the new key is the old one (a test key pool reused?); nothing changed"));
    }
    let new = Identity { name: old.name.clone(), signing: fresh.signing, x25519: old.x25519.clone() };
    // Coins stored unsigned are signed by a retry with the key they name: sign them all
    // now, while that key is still here.
    let mut store = open_store(dir)?;
    let (signed, unsignable) = sign_unsigned_issues(store.as_mut(), &old.signing)?;
    // The retired key first: if the next steps fail, the bank still accepts every coin.
    let path = retired_file(dir);
    let mut retired = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(AdminError::Io { path, source }),
    };
    retired.push_str(&format!("{}\n", old_public.to_text()));
    keyfile::fs::write_atomic(&path, retired.as_bytes(), 0o644)?;
    let sealed = keyfile::seal_identity(&mut pmtp_proto::rng::os(), &new, passphrase.as_bytes(), kdf)?;
    keyfile::fs::write_atomic(&dir.key(), &sealed, 0o600)?;
    let public = new.public();
    keyfile::fs::write_atomic(&dir.public(), format!("{}\n", public.to_text()).as_bytes(), 0o644)?;
    let mut tx = store.begin()?;
    let mut what = format!(
        "key {old_id} retired ({signed} requests' coins signed with it first); key {} signs from now on",
        new.signing.verifying_key().key_id()
    );
    if !unsignable.is_empty() {
        // The first few by id (the log names them all).
        let named = unsignable.iter().take(20).cloned().collect::<Vec<_>>().join(" ");
        what.push_str(&format!(
            "; {} requests' stored coins could not be signed with it (their retries are refused): {named}{}",
            unsignable.len(),
            if unsignable.len() > 20 { " ..." } else { "" }
        ));
    }
    tx.audit_event(now(), "key_rotate", &what)?;
    tx.commit()?;
    Ok((old_id, new.signing.verifying_key().key_id(), public))
}

/// Signs, with `key`, the coins of finished withdrawals and exchanges stored as bodies
/// only ([`crate::store::UNSIGNED_COINS`]), so that a retry finds them signed once `key`
/// is gone. Returns how many requests it signed, and the ids of those it could not (bodies
/// under another key, or damaged): they are named, not allowed to block a rotation.
pub fn sign_unsigned_issues(
    store: &mut dyn crate::store::Store,
    key: &pmtp_proto::keys::SigningKey,
) -> Result<(usize, Vec<String>), AdminError> {
    let (mut signed, mut failed) = (0, Vec::new());
    let mut after = None;
    loop {
        let mut tx = store.begin()?;
        let rows = tx.unsigned_issues(after, 256)?;
        let Some(last) = rows.last() else {
            return Ok((signed, failed));
        };
        after = Some((last.time, last.request_id));
        for row in rows {
            let blob = row.coins.unwrap_or_default();
            let coins = match crate::handlers::stored_coins(&blob, key) {
                Ok(c) => c,
                Err(r) => {
                    tracing::warn!(request = %hex::encode(row.request_id), reason = %r.text, "stored coins not signed");
                    failed.push(hex::encode(row.request_id));
                    continue;
                }
            };
            let coins = bincode::serialize(&coins).map_err(|e| refused(e.to_string()))?;
            if tx.sign_issue(&row.request_id, &blob, &coins)? {
                signed += 1;
            }
        }
        tx.commit()?;
    }
}

/// Opens the data directory for serving: lock, config, key, store, writer, readers.
pub fn open_bank(
    dir: &DataDir,
    config: Config,
    passphrase: &str,
    clock: std::sync::Arc<dyn pmtp_client::clock::Clock>,
    entropy: std::sync::Arc<dyn pmtp_client::entropy::Entropy>,
) -> Result<(std::sync::Arc<Bank>, crate::writer::WriterThread, std::fs::File), AdminError> {
    let lock = dir.lock()?;
    let identity = load_identity(dir, passphrase)?;
    if identity.name.as_str() != config.bank_id {
        return Err(refused(format!(
            "the key in {} is for bank {:?}, but config.toml says {:?}",
            dir.key().display(),
            identity.name.as_str(),
            config.bank_id
        )));
    }
    let location = store_location(dir, Some(&config));
    let node = config.node();
    // On a thread of its own: the PostgreSQL client may not block an async worker.
    let store = crate::store::pg::in_own_thread(|| {
        let mut store = open_checked(dir, &location, &node)?;
        check_at_start(dir, store.as_mut())?;
        store.checkpoint_in_background()?;
        Ok::<_, AdminError>(store)
    })?;
    tracing::info!(store = %location.describe(), node = %node, "store opened");
    let (writer, thread) = crate::writer::Writer::start(store, config.limits.commit_batch, 4096);
    let readers = crate::writer::Readers::new(Box::new(move || location.open_reader()));
    // bank.pub must be the key the bank signs with (a rotation cut short by a crash may
    // have left the old one): wallets and peers are given this file.
    let public = format!("{}\n", identity.public().to_text());
    if std::fs::read_to_string(dir.public()).ok().as_deref() != Some(public.as_str()) {
        tracing::warn!(path = %dir.public().display(), "bank.pub did not match the bank's key; rewritten");
        keyfile::fs::write_atomic(&dir.public(), public.as_bytes(), 0o644)?;
    }
    let mut bank = Bank::new(config, identity, writer, readers)?.with_clock(clock).with_entropy(entropy);
    bank.retired = retired_keys(dir)?;
    Ok((std::sync::Arc::new(bank), thread, lock))
}

/// The store named on the command line (`--store`), which outranks the environment and
/// config.toml; set once, by `main`, before any command runs.
static STORE_FLAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the `--store` flag for [`store_location`] (the first call wins).
pub fn set_store_flag(store: String) {
    let _ = STORE_FLAG.set(store);
}

/// Where this bank's store is: the `--store` flag, else `PAYME_BANK_STORE`, else `store` in
/// `config` (or in the data directory's config.toml when none is given), else `bank.db` in
/// the data directory.
pub fn store_location(dir: &DataDir, config: Option<&Config>) -> Location {
    if let Some(s) = STORE_FLAG.get().filter(|s| !s.trim().is_empty()) {
        return Location::parse(s, &dir.database());
    }
    if let Ok(s) = std::env::var("PAYME_BANK_STORE") {
        if !s.trim().is_empty() {
            return Location::parse(&s, &dir.database());
        }
    }
    let store = match config {
        Some(c) => c.store.clone(),
        None => Config::load(&dir.config()).map(|c| c.store).unwrap_or_default(),
    };
    Location::parse(&store, &dir.database())
}

fn node_of(dir: &DataDir) -> String {
    Config::load(&dir.config()).map(|c| c.node()).unwrap_or_else(|_| Config::default().node())
}

fn open_store(dir: &DataDir) -> Result<Box<dyn Store>, AdminError> {
    let location = store_location(dir, None);
    if let Location::Postgres(_) = location {
        if !dir.key().exists() {
            let d = dir.root.display();
            return Err(refused(format!("no bank in {d} (run `payme-bank init --data-dir {d}` first)")));
        }
        return Ok(location.open(&node_of(dir))?);
    }
    if !dir.database().exists() {
        let d = dir.root.display();
        return Err(refused(format!("no bank in {d} (run `payme-bank init --data-dir {d}` first)")));
    }
    match dir.lock() {
        // No `serve` is running: this may be the first open since a crash, which would
        // let SQLite drop damaged committed frames for good. Check first.
        Ok(_lock) => open_checked(dir, &location, &node_of(dir)),
        // `serve` checked the database when it started and keeps it open.
        Err(_) => Ok(location.open(&node_of(dir))?),
    }
}

/// What to do when the database fails a check: one line for the log, and the way out.
fn damaged(dir: &DataDir, what: &str) -> AdminError {
    AdminError::Damaged { dir: dir.root.clone(), what: what.to_owned() }
}

/// Opens the bank's database; an SQLite file after checking that its WAL holds every
/// committed transaction (see [`crate::store::wal`]). The caller holds the serve lock.
fn open_checked(dir: &DataDir, location: &Location, node: &str) -> Result<Box<dyn Store>, AdminError> {
    if let Location::Sqlite(path) = location {
        if let crate::store::wal::WalCheck::Damaged(what) = crate::store::wal::check(path)? {
            return Err(damaged(dir, &format!("committed transactions in its write-ahead log are damaged ({what})")));
        }
    }
    Ok(location.open(node)?)
}

/// The checks `serve` makes before it answers anyone: SQLite's integrity check, and the
/// audit (counters against the serials in circulation, every account's ledger against its
/// balance). A bank that fails them would serve damaged numbers as the truth.
pub fn check_at_start(dir: &DataDir, store: &mut dyn Store) -> Result<(), AdminError> {
    let started = std::time::Instant::now();
    let problems = store.integrity_check()?;
    if !problems.is_empty() {
        let first: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        return Err(damaged(dir, &format!("SQLite's integrity check failed: {}", first.join("; "))));
    }
    let report = audit_store(store)?;
    if !report.holds() {
        let what = report.describe().lines().filter(|l| l.contains("VIOLATION")).collect::<Vec<_>>().join("; ");
        return Err(damaged(dir, &format!("the audit failed: {what}")));
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        serials = report.circulation.count,
        "database checked: integrity and audit hold"
    );
    Ok(())
}

/// Hashes an account password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, AdminError> {
    use argon2::password_hash::PasswordHasher;
    let salt: [u8; 16] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
    // The same cost as key files: OWASP's (a test build's cheap one when it uses the key
    // pool); verifying reads the cost back from the stored hash.
    let k = payme_node::keys::kdf_params();
    let params = argon2::Params::new(k.m_cost_kib, k.t_cost, k.p_cost, None)
        .map_err(|e| AdminError::Encode { what: "the password hash", message: e.to_string() })?;
    let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| AdminError::Encode { what: "the password hash", message: e.to_string() })?;
    Ok(hash.to_string())
}

/// Opens an account for the owner whose public identity is in `public_key_file`.
pub fn account_open(
    dir: &DataDir,
    name: &str,
    public_key_file: &Path,
    password: &str,
) -> Result<AccountId, AdminError> {
    if Name::new(name).is_err() || name.is_empty() {
        return Err(refused("account name must be 1 to 128 bytes"));
    }
    if password.len() < 8 {
        return Err(refused("the account password must be at least 8 characters"));
    }
    let text = std::fs::read_to_string(public_key_file)
        .map_err(|source| AdminError::Io { path: public_key_file.to_owned(), source })?;
    let identity = PublicIdentity::from_text(&text)
        .map_err(|e| refused(format!("{} is not a payme public key: {e}", public_key_file.display())))?;
    identity.parse().map_err(|e| refused(format!("{}: {e}", public_key_file.display())))?;
    let hash = hash_password(password)?;
    let owner = bincode::serialize(&identity)
        .map_err(|e| AdminError::Encode { what: "the owner key", message: e.to_string() })?;
    let mut store = open_store(dir)?;
    let mut tx = store.begin()?;
    let id = tx.create_account(name, &owner, &hash, now())?;
    tx.audit_event(now(), "account_open", &format!("account {id} name {name:?} key {}", identity.fingerprint()))?;
    tx.commit()?;
    Ok(id)
}

/// Sets account `id`'s password (the holder forgot it, or it leaked) and lifts a lock from
/// wrong passwords. Takes effect at once, also while `serve` runs.
pub fn account_password(dir: &DataDir, id: AccountId, password: &str) -> Result<(), AdminError> {
    if password.len() < 8 {
        return Err(refused("the account password must be at least 8 characters"));
    }
    let hash = hash_password(password)?;
    let mut store = open_store(dir)?;
    let mut tx = store.begin()?;
    tx.set_password_hash(id, &hash)?;
    tx.set_login_failures(id, 0, 0)?;
    tx.audit_event(now(), "account_password", &format!("account {id}"))?;
    tx.commit()?;
    Ok(())
}

/// How many deposits wait for peer `peer`'s answer.
pub fn pending_clearings_with(dir: &DataDir, peer: &str) -> Result<usize, AdminError> {
    let mut store = open_store(dir)?;
    let mut tx = store.begin_read()?;
    Ok(tx.pending_clearings(i64::MAX as usize)?.iter().filter(|c| c.peer == peer).count())
}

pub fn account_list(dir: &DataDir) -> Result<Vec<crate::store::AccountRow>, AdminError> {
    let mut store = open_store(dir)?;
    let mut tx = store.begin_read()?;
    Ok(tx.accounts()?)
}

/// Money paid in (positive) or out (negative) at the counter, with a ledger entry.
pub fn account_adjust(
    dir: &DataDir,
    id: AccountId,
    amount: Amount,
    credit: bool,
    memo: &str,
) -> Result<Amount, AdminError> {
    if amount.is_zero() || amount > Amount::MAX {
        return Err(refused("amount must be positive and at most 2^62"));
    }
    let mut store = open_store(dir)?;
    let mut tx = store.begin()?;
    let balance = if credit {
        match tx.credit(id, amount, now(), EntryKind::CounterCredit, memo) {
            Err(StoreError::NoAccount(_)) => return Err(refused(format!("no account {id}"))),
            Err(StoreError::Range(what)) => return Err(refused(what.to_owned())),
            other => other?,
        }
    } else {
        match tx.debit(id, amount, now(), EntryKind::CounterDebit, memo) {
            Err(StoreError::NoAccount(_)) => return Err(refused(format!("no account {id}"))),
            Ok(None) => {
                let have = tx.account(id)?.map(|a| a.balance).unwrap_or_default();
                return Err(refused(format!("balance {have} is less than {amount}")));
            }
            other => other?.unwrap_or_default(),
        }
    };
    tx.audit_event(now(), if credit { "credit" } else { "debit" }, &format!("account {id} amount {amount}"))?;
    tx.commit()?;
    Ok(balance)
}

/// What `audit` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub counters: Counters,
    pub circulation: Circulation,
    /// This bank's own coins held by clearings waiting for a peer: out of circulation, not
    /// yet redeemed (settlement redeems them; a refusal puts them back).
    pub held: Circulation,
    /// Accounts whose ledger does not sum to their balance: (id, balance, ledger sum).
    pub ledger_mismatches: Vec<(AccountId, Amount, i128)>,
    pub total_balances: u128,
}

impl AuditReport {
    pub fn holds(&self) -> bool {
        self.counters.expected_circulation() == self.accounted() && self.ledger_mismatches.is_empty()
    }

    /// What the counters must equal: the serials in circulation plus those held by clearings.
    pub fn accounted(&self) -> Option<Amount> {
        self.circulation.value.checked_add(self.held.value).ok()
    }

    pub fn describe(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "minted {} ({} coins) - redeemed {} ({} coins) - expired {} ({} coins) = {}; in circulation {} ({} serials); held by pending clearings {} ({} serials)\n",
            c.minted_value,
            c.minted_count,
            c.redeemed_value,
            c.redeemed_count,
            c.expired_value,
            c.expired_count,
            c.expected_circulation().map(|a| a.to_string()).unwrap_or_else(|| "NEGATIVE".into()),
            self.circulation.value,
            self.circulation.count,
            self.held.value,
            self.held.count
        );
        let accounted = self.circulation.value.minor_units() as i128 + self.held.value.minor_units() as i128;
        match c.expected_circulation() {
            Some(e) if e.minor_units() as i128 == accounted => s.push_str("circulation: OK\n"),
            Some(e) => {
                s.push_str(&format!("circulation: VIOLATION: difference {}\n", e.minor_units() as i128 - accounted))
            }
            None => s.push_str("circulation: VIOLATION: counters go negative\n"),
        }
        s.push_str(&format!("account balances total {}\n", self.total_balances));
        if self.ledger_mismatches.is_empty() {
            s.push_str("ledger: OK (every account's entries sum to its balance)\n");
        }
        for (id, bal, sum) in &self.ledger_mismatches {
            s.push_str(&format!("ledger: VIOLATION: account {id} balance {bal} but entries sum to {sum}\n"));
        }
        s
    }
}

/// Checks minted - redeemed - expired = circulating, and ledger sums = balances.
/// Copies the bank's database to `to` (also while `serve` runs), then checks the copy as
/// `serve` checks at start: SQLite's integrity check and the audit. A copy that fails is
/// removed and the failure returned.
pub fn backup(dir: &DataDir, to: &Path) -> Result<AuditReport, AdminError> {
    let db = match store_location(dir, None) {
        Location::Sqlite(path) => path,
        Location::Postgres(_) => {
            return Err(refused(
                "this bank's store is PostgreSQL: back it up with pg_dump, or with base backups and WAL \
                 archiving for point-in-time recovery (docs/BANK.md)",
            ))
        }
    };
    payme_node::sqlite::backup(&db, to).map_err(StoreError::from)?;
    let checked = (|| {
        let mut copy = SqliteStore::open(to)?;
        let problems = copy.integrity_check()?;
        let report = audit_store(&mut copy)?;
        Ok::<_, StoreError>((problems, report))
    })();
    match checked {
        Ok((problems, report)) if problems.is_empty() && report.holds() => Ok(report),
        Ok((problems, report)) => {
            let _ = std::fs::remove_file(to);
            Err(damaged(dir, &format!("the copy fails its check: {problems:?} {}", report.describe().trim())))
        }
        Err(e) => {
            let _ = std::fs::remove_file(to);
            Err(e.into())
        }
    }
}

pub fn audit(dir: &DataDir) -> Result<AuditReport, AdminError> {
    let mut store = open_store(dir)?;
    audit_store(store.as_mut()).map_err(Into::into)
}

pub fn audit_store(store: &mut dyn Store) -> Result<AuditReport, StoreError> {
    let mut tx = store.begin_read()?;
    let counters = tx.counters()?;
    let circulation = tx.circulation()?;
    let held = tx.held_by_clearings()?;
    let sums: std::collections::HashMap<AccountId, i128> = tx.ledger_sums()?.into_iter().collect();
    let mut ledger_mismatches = Vec::new();
    let mut total_balances = 0u128;
    for a in tx.accounts()? {
        total_balances += a.balance.minor_units() as u128;
        let sum = sums.get(&a.id).copied().unwrap_or(0);
        if sum != a.balance.minor_units() as i128 {
            ledger_mismatches.push((a.id, a.balance, sum));
        }
    }
    Ok(AuditReport { counters, circulation, held, ledger_mismatches, total_balances })
}

/// One peer's position, from this bank's books and the peer's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPosition {
    pub peer: String,
    /// What this bank deposited at the peer by clearing (its own books).
    pub cleared_there: Amount,
    /// This bank's balance at the peer (the peer's statement), if the peer answered.
    pub balance_there: Option<Amount>,
    /// The peer's balance at this bank, if it holds an account here.
    pub peer_balance_here: Amount,
    pub error: Option<String>,
}

impl PeerPosition {
    /// Net: positive when the peer owes this bank.
    pub fn net(&self) -> Option<i128> {
        self.balance_there.map(|b| b.minor_units() as i128 - self.peer_balance_here.minor_units() as i128)
    }
    /// The two sides agree: the peer's statement shows what this bank's books say.
    pub fn agrees(&self) -> bool {
        self.balance_there == Some(self.cleared_there)
    }
}

/// This bank's net position with every peer, from its books and statements at the peers.
pub fn clearing(dir: &DataDir, config: &Config, passphrase: &str) -> Result<Vec<PeerPosition>, AdminError> {
    let identity = load_identity(dir, passphrase)?;
    let mut store = open_store(dir)?;
    let (totals, balances) = {
        let mut tx = store.begin_read()?;
        let totals: std::collections::HashMap<String, Amount> = tx.clearing_totals()?.into_iter().collect();
        let balances: std::collections::HashMap<AccountId, Amount> =
            tx.accounts()?.into_iter().map(|a| (a.id, a.balance)).collect();
        (totals, balances)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AdminError::Runtime)?;
    let mut out = Vec::new();
    for p in &config.peers {
        let public = PublicIdentity::from_text(&p.public_key)?;
        let client = pmtp_client::BankClient::new(p.addr.clone(), &public)?;
        let statement = rt.block_on(client.statement(&identity, AccountId(p.account), &p.account_name, None));
        let (balance_there, error) = match statement {
            Ok(s) => (Some(s.balance), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(PeerPosition {
            peer: p.id.clone(),
            cleared_there: totals.get(&p.id).copied().unwrap_or_default(),
            balance_there,
            peer_balance_here: p.local_account.and_then(|a| balances.get(&AccountId(a)).copied()).unwrap_or_default(),
            error,
        });
    }
    Ok(out)
}
