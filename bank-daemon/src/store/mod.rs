//! The bank's durable state, behind one transaction trait.
//!
//! A [`Store`] hands out transactions; a [`Tx`] is consumed by `commit` or `rollback`, so it
//! cannot be used after either. Savepoints let the group-commit writer run many requests in
//! one transaction while each request still succeeds or fails on its own. Every query a
//! request makes uses a primary key or an index (see the schema in `sqlite.rs`).
//!
//! The transaction speaks in money operations ([`Tx::spend`], [`Tx::issue`], [`Tx::debit`],
//! [`Tx::credit`], [`Tx::expire`], [`Tx::settle_clearing`], ...), each atomic on its own in
//! any SQL engine (conditional `UPDATE ... RETURNING`, `DELETE ... RETURNING`) and each
//! keeping the money counters in the same operation, so `minted - redeemed - expired =
//! circulating (+ held by clearings)` holds by construction: there is no way to change a
//! balance, a serial or a counter alone. The counters are sharded per node (the
//! `counter_shards` table, one row per node and counter): several bank processes on one
//! database never queue on one hot row; [`Tx::counters`] adds the shards up.
//!
//! Backends: SQLite (`sqlite.rs`, the embedded default) and PostgreSQL (`pg.rs`, for
//! several bank nodes on one database); [`Location`] says which a bank uses. The conformance tests in
//! `conformance.rs` are written once against these traits, exported, and stamped per
//! backend (see `tests.rs`), including competing transactions on separate connections.

pub mod conformance;
pub mod pg;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod wal;

use payme_node::sqlite::OpenError;
pub use payme_node::sqlite::{DbError, DbErrorKind};
use pmtp_proto::bank_statement::{EntryKind, LedgerEntry};
use pmtp_proto::keys::KeyId;
use pmtp_proto::{AccountId, Amount, Serial};

/// A store failure, typed by what went wrong so callers can act on it (a constraint is the
/// request's doing, busy may be retried, corrupt stops the bank).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed; [`DbError::kind`] says how.
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("stored value out of range: {0}")]
    Range(&'static str),
    #[error("no account {0}")]
    NoAccount(AccountId),
    #[error("{}: {source}", .path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("database schema version {found} is newer than this program knows ({known})")]
    NewerSchema { found: i64, known: i64 },
    /// A job of a group commit left its savepoint unusable; the whole group was rolled
    /// back (see the writer).
    #[error("a job's savepoint failed; the whole group was rolled back")]
    SavepointFailed,
    /// A database task on the blocking pool panicked or was cancelled (a bug).
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Db(e) => StoreError::Db(e),
            OpenError::NewerSchema { found, known } => StoreError::NewerSchema { found, known },
        }
    }
}

impl StoreError {
    /// The database's kind of failure, when the database failed.
    pub fn kind(&self) -> Option<DbErrorKind> {
        match self {
            StoreError::Db(e) => Some(e.kind),
            _ => None,
        }
    }

    /// Whether the same work run again may succeed (busy, serialization failure,
    /// deadlock, a unique key another writer took first): the writer retries these.
    pub fn retryable(&self) -> bool {
        self.kind().is_some_and(DbErrorKind::retryable)
    }
}

/// Where a bank's store lives: its SQLite file, or a PostgreSQL database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    /// `store` as configured: a `postgres://` URL, a path to an SQLite file, or empty for
    /// the SQLite file `default` (the data directory's `bank.db`).
    pub fn parse(store: &str, default: &std::path::Path) -> Location {
        match store.trim() {
            "" => Location::Sqlite(default.to_path_buf()),
            s if pg::is_postgres_url(s) => Location::Postgres(s.to_owned()),
            s => Location::Sqlite(s.into()),
        }
    }

    /// Opens the store for writing (creating and migrating it if needed), its counters
    /// going to `node`'s shard.
    pub fn open(&self, node: &str) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Location::Sqlite(p) => Box::new(sqlite::SqliteStore::open(p)?.with_node(node)),
            Location::Postgres(url) => Box::new(pg::PgStore::open(url)?.with_node(node)),
        })
    }

    /// A connection for reading.
    pub fn open_reader(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Location::Sqlite(p) => Box::new(sqlite::SqliteStore::open_reader(p)?),
            Location::Postgres(url) => Box::new(pg::PgStore::connect(url)?),
        })
    }

    /// For logs and messages: the file, or the database URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => match url.parse::<postgres::Config>() {
                Ok(c) => format!(
                    "PostgreSQL database {:?} as {:?}",
                    c.get_dbname().unwrap_or(""),
                    c.get_user().unwrap_or("")
                ),
                Err(_) => "PostgreSQL (unparsable URL)".into(),
            },
        }
    }
}

/// An account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub id: AccountId,
    pub name: String,
    /// The owner's public identity (bincode of `PublicIdentity`).
    pub owner_identity: Vec<u8>,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub balance: Amount,
    pub failed_attempts: u32,
    pub locked_until: u64,
    pub created_at: u64,
}

/// A serial in circulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialRow {
    pub serial: Serial,
    pub value: Amount,
    pub expiry: u64,
    pub key_id: KeyId,
}

/// The running totals the audit checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub minted_value: Amount,
    pub minted_count: u64,
    pub redeemed_value: Amount,
    pub redeemed_count: u64,
    pub expired_value: Amount,
    pub expired_count: u64,
}

/// A recorded deposit, so a retried deposit (same request id) gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositRow {
    pub request_id: [u8; 16],
    pub account: AccountId,
    pub amount: Amount,
    pub coins_hash: [u8; 32],
    pub balance: Amount,
    pub time: u64,
}

/// How an [`IssuedRow`]'s `coins` blob starts when it holds the coins' bodies only:
/// `UNSIGNED_COINS` then bincode of the `Vec<CoinBody>`. A withdrawal or exchange commits
/// its coins this way while their signature is being made, and a retry signs the bodies
/// again, byte for byte the same (a Merkle root and a PKCS#1 v1.5 signature are
/// deterministic). Any other blob is bincode of the signed `Vec<Coin>`, whose first eight
/// bytes are a length these bytes could never be.
pub const UNSIGNED_COINS: &[u8; 8] = b"PMTPBODY";

/// Coins minted for a withdrawal or exchange, kept so a retry with the same request id
/// gets the same coins instead of being charged twice (or losing the coins).
///
/// Usually one transaction takes the payment, puts the serials in circulation and stores
/// the coins' bodies ([`UNSIGNED_COINS`]) while they are signed; the signed coins are
/// written over them later ([`Tx::sign_issue`]). Otherwise issuing is two persisted
/// steps: [`Tx::reserve_issue`] records the request in the transaction that pays for it,
/// with `coins` `None`; signing happens outside any transaction; [`Tx::complete_issue`]
/// then puts the new serials in circulation and stores the coins. A reserved request
/// whose signing was interrupted (a crash, a lost node) is finished by a retry or by the
/// background round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedRow {
    pub request_id: [u8; 16],
    /// Digest of what was asked (account, amount and split; or the coins handed in).
    pub input_hash: [u8; 32],
    /// bincode of the `Vec<Denomination>` to mint.
    pub plan: Vec<u8>,
    /// bincode of the `Vec<Coin>` that was minted (or their bodies, see
    /// [`UNSIGNED_COINS`]); `None` while only reserved.
    pub coins: Option<Vec<u8>>,
    /// The account balance after a withdrawal; `None` for an exchange.
    pub balance: Option<Amount>,
    pub time: u64,
}

/// What [`Tx::spend`] and [`Tx::hold`] did: every serial taken out, or none because this
/// one was not in circulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spend {
    Spent(Vec<SerialRow>),
    Missing(Serial),
}

/// A deposit that includes coins of a peer bank: the depositor's request, the local coins
/// taken out of circulation while the peer is asked, and the foreign coins sent there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClearingRow {
    pub request_id: [u8; 16],
    /// The request id this bank uses for its deposit at the peer.
    pub peer_request_id: [u8; 16],
    pub peer: String,
    pub account: AccountId,
    /// bincode of the `Vec<SerialRow>` removed locally (restored if the peer refuses).
    pub local_serials: Vec<u8>,
    /// bincode of the `Vec<Coin>` deposited at the peer.
    pub foreign_coins: Vec<u8>,
    pub local_amount: Amount,
    pub foreign_amount: Amount,
    pub coins_hash: [u8; 32],
    /// `pending`, `settled` or `failed`.
    pub state: String,
    pub reason: String,
    pub time: u64,
}

/// What the serials table holds in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Circulation {
    pub count: u64,
    pub value: Amount,
}

/// One database transaction. Dropping it without `commit` rolls it back. After an
/// operation fails, roll back to the savepoint (or the whole transaction) before going
/// on: PostgreSQL refuses every further statement of a transaction in error.
pub trait Tx {
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
    fn rollback(self: Box<Self>) -> Result<(), StoreError>;

    /// Marks a point that [`Tx::rollback_to_savepoint`] returns to; [`Tx::release_savepoint`]
    /// keeps the work since. One level is enough for the writer.
    fn savepoint(&mut self) -> Result<(), StoreError>;
    fn release_savepoint(&mut self) -> Result<(), StoreError>;
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError>;

    fn create_account(
        &mut self,
        name: &str,
        owner_identity: &[u8],
        password_hash: &str,
        now: u64,
    ) -> Result<AccountId, StoreError>;
    fn account(&mut self, id: AccountId) -> Result<Option<AccountRow>, StoreError>;
    fn accounts(&mut self) -> Result<Vec<AccountRow>, StoreError>;
    fn set_login_failures(&mut self, id: AccountId, failed_attempts: u32, locked_until: u64) -> Result<(), StoreError>;
    /// Replaces an account's password hash (Argon2id PHC string).
    fn set_password_hash(&mut self, id: AccountId, password_hash: &str) -> Result<(), StoreError>;
    /// Takes `amount` from the account and writes its ledger entry, in one statement that
    /// refuses to go below zero (`UPDATE ... WHERE balance >= amount RETURNING balance`):
    /// the new balance, or `None` when the balance does not cover it.
    fn debit(
        &mut self,
        id: AccountId,
        amount: Amount,
        time: u64,
        kind: EntryKind,
        memo: &str,
    ) -> Result<Option<Amount>, StoreError>;
    /// Adds `amount` to the account and writes its ledger entry; the new balance. An
    /// overflow is refused ([`StoreError::Range`]).
    fn credit(
        &mut self,
        id: AccountId,
        amount: Amount,
        time: u64,
        kind: EntryKind,
        memo: &str,
    ) -> Result<Amount, StoreError>;
    /// Entries at or after `since`, oldest first, at most `limit`.
    fn ledger(&mut self, account: AccountId, since: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Per account: credits minus debits over the whole ledger (for the audit).
    fn ledger_sums(&mut self) -> Result<Vec<(AccountId, i128)>, StoreError>;

    /// Takes every one of `serials` out of circulation and counts them redeemed, or takes
    /// none out and names the first one missing. Serials are deleted in sorted order with
    /// `DELETE ... RETURNING`, so of two transactions spending one serial exactly one gets
    /// it, and two spending overlapping sets wait for each other in one order.
    fn spend(&mut self, serials: &[Serial]) -> Result<Spend, StoreError>;
    /// As [`Tx::spend`], but the serials are held by a clearing, not redeemed: the
    /// clearing's row counts them until [`Tx::settle_clearing`] or [`Tx::undo_clearing`].
    fn hold(&mut self, serials: &[Serial]) -> Result<Spend, StoreError>;
    /// Puts new serials in circulation and counts them minted; false (and nothing
    /// inserted) if one is already there (a collision, astronomically unlikely).
    fn issue(&mut self, rows: &[SerialRow]) -> Result<bool, StoreError>;
    /// The first of `serials` that is not in circulation, if any (reads only).
    fn first_missing_serial(&mut self, serials: &[Serial]) -> Result<Option<Serial>, StoreError>;
    fn circulation(&mut self) -> Result<Circulation, StoreError>;
    /// Removes up to `limit` serials that expired before `now` and counts them expired;
    /// returns what was removed.
    fn expire(&mut self, now: u64, limit: usize) -> Result<Circulation, StoreError>;

    /// Records a nonce until `expiry`; false if it is already recorded (a replay).
    fn insert_nonce(&mut self, random: &[u8; 16], expiry: u64) -> Result<bool, StoreError>;
    fn purge_nonces(&mut self, now: u64, limit: usize) -> Result<u64, StoreError>;

    /// The money counters: the sum of every node's shard.
    fn counters(&mut self) -> Result<Counters, StoreError>;

    fn deposit(&mut self, request_id: &[u8; 16]) -> Result<Option<DepositRow>, StoreError>;
    fn insert_deposit(&mut self, row: &DepositRow) -> Result<(), StoreError>;
    fn issued(&mut self, request_id: &[u8; 16]) -> Result<Option<IssuedRow>, StoreError>;
    /// Records a withdrawal or exchange that has been paid for and is yet to be signed
    /// (`row.coins` is ignored). A request id already recorded fails with
    /// [`DbErrorKind::Unique`].
    fn reserve_issue(&mut self, row: &IssuedRow) -> Result<(), StoreError>;
    /// Finishes a reserved request: its serials go into circulation (counted minted) and
    /// its coins are stored. False, and nothing done, when it was already finished (by a
    /// retry at this node or another).
    fn complete_issue(&mut self, request_id: &[u8; 16], rows: &[SerialRow], coins: &[u8]) -> Result<bool, StoreError>;
    /// Requests reserved and not yet finished, oldest first.
    fn reserved_issues(&mut self, limit: usize) -> Result<Vec<IssuedRow>, StoreError>;
    /// Finished requests whose stored coins are bodies not yet signed (their blob starts
    /// with [`UNSIGNED_COINS`]), in (time, request id) order after `after`, up to `limit`.
    /// Key rotation signs them with the old key first.
    fn unsigned_issues(&mut self, after: Option<(u64, [u8; 16])>, limit: usize) -> Result<Vec<IssuedRow>, StoreError>;
    /// Replaces a finished request's stored coins `unsigned` (exactly) with the signed
    /// `coins`; false, and nothing changed, if the row holds something else.
    fn sign_issue(&mut self, request_id: &[u8; 16], unsigned: &[u8], coins: &[u8]) -> Result<bool, StoreError>;
    /// Forgets deposit and issue records made before `before` (retention), up to `limit`.
    /// Reserved requests are kept until finished.
    fn purge_requests(&mut self, before: u64, limit: usize) -> Result<u64, StoreError>;

    fn insert_clearing(&mut self, row: &ClearingRow) -> Result<(), StoreError>;
    fn clearing(&mut self, request_id: &[u8; 16]) -> Result<Option<ClearingRow>, StoreError>;
    /// A pending clearing settled: its held serials (`held`) are counted redeemed and the
    /// row marked settled. False, and nothing done, if it was not pending.
    fn settle_clearing(&mut self, request_id: &[u8; 16], held: Circulation) -> Result<bool, StoreError>;
    /// A pending clearing undone: its held serials go back into circulation and the row is
    /// marked failed with `reason`. False, and nothing done, if it was not pending.
    fn undo_clearing(&mut self, request_id: &[u8; 16], held: &[SerialRow], reason: &str) -> Result<bool, StoreError>;
    /// Clearings still waiting for their peer, oldest first.
    fn pending_clearings(&mut self, limit: usize) -> Result<Vec<ClearingRow>, StoreError>;
    /// This bank's own coins taken out of circulation by clearings still waiting for their
    /// peer: neither in circulation nor redeemed until the clearing settles or is undone.
    fn held_by_clearings(&mut self) -> Result<Circulation, StoreError>;
    /// Per peer: the value of foreign coins this bank deposited there (settled clearings).
    fn clearing_totals(&mut self) -> Result<Vec<(String, Amount)>, StoreError>;

    /// Appends to the durable audit log (administrative events).
    fn audit_event(&mut self, time: u64, event: &str, detail: &str) -> Result<(), StoreError>;
}

/// A backend that hands out transactions on one connection.
pub trait Store: Send {
    /// A read-write transaction that holds the write lock from its start.
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>, StoreError>;
    /// A transaction for reading a consistent snapshot (writes in it may fail).
    fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>, StoreError>;
    /// The engine's own consistency check: the problems it finds, none when sound.
    fn integrity_check(&mut self) -> Result<Vec<String>, StoreError>;
    /// Called once when the daemon stops cleanly: leaves nothing for crash recovery
    /// (SQLite: copies the WAL into the database and empties it).
    fn checkpoint(&mut self) -> Result<(), StoreError>;
    /// For the serving daemon's writer: from now on, copying the log into the database
    /// (SQLite's checkpoint, an fsync of the database file) happens on a thread of its own,
    /// not inside a commit that a request is waiting for. A store whose server does that
    /// already (PostgreSQL) does nothing.
    fn checkpoint_in_background(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Counters {
    /// `minted - redeemed - expired`: what the serials table should hold, or `None` if the
    /// counters are inconsistent enough to go negative.
    pub fn expected_circulation(&self) -> Option<Amount> {
        self.minted_value.checked_sub(self.redeemed_value).ok()?.checked_sub(self.expired_value).ok()
    }
}

/// The counters' names in the `counter_shards` table: (value, count) per kind.
pub(crate) const MINTED: (&str, &str) = ("minted_value", "minted_count");
pub(crate) const REDEEMED: (&str, &str) = ("redeemed_value", "redeemed_count");
pub(crate) const EXPIRED: (&str, &str) = ("expired_value", "expired_count");

impl Counters {
    /// Adds one shard's row to the totals (checked: a sum past `u64` is damage).
    pub(crate) fn add_named(&mut self, name: &str, v: u64) -> Result<(), StoreError> {
        let over = |_| StoreError::Range("counter total");
        match name {
            "minted_value" => self.minted_value = self.minted_value.checked_add(Amount::new(v)).map_err(over)?,
            "redeemed_value" => self.redeemed_value = self.redeemed_value.checked_add(Amount::new(v)).map_err(over)?,
            "expired_value" => self.expired_value = self.expired_value.checked_add(Amount::new(v)).map_err(over)?,
            "minted_count" => self.minted_count = self.minted_count.checked_add(v).ok_or(StoreError::Range("count"))?,
            "redeemed_count" => {
                self.redeemed_count = self.redeemed_count.checked_add(v).ok_or(StoreError::Range("count"))?
            }
            "expired_count" => {
                self.expired_count = self.expired_count.checked_add(v).ok_or(StoreError::Range("count"))?
            }
            _ => {}
        }
        Ok(())
    }
}

/// The total of some serial rows (checked).
pub(crate) fn total_of(rows: &[SerialRow]) -> Result<Circulation, StoreError> {
    let value = Amount::checked_sum(rows.iter().map(|r| r.value)).map_err(|_| StoreError::Range("total"))?;
    Ok(Circulation { count: rows.len() as u64, value })
}

/// The three primitives each backend writes in its own SQL; the money operations built on
/// them ([`spend_with`], [`issue_with`]) are shared, so both backends count alike.
pub(crate) trait Primitives {
    /// Deletes the serials (sorted, in a savepoint of its own): all, or none and the
    /// first missing.
    fn take(&mut self, serials: &[Serial]) -> Result<Spend, StoreError>;
    /// Inserts serials: all, or none (false) when one is already there.
    fn put(&mut self, rows: &[SerialRow]) -> Result<bool, StoreError>;
    /// Adds to this node's shard of one counter pair (value, count).
    fn bump(&mut self, names: (&str, &str), by: Circulation) -> Result<(), StoreError>;
}

pub(crate) fn spend_with(p: &mut impl Primitives, serials: &[Serial]) -> Result<Spend, StoreError> {
    let spent = p.take(serials)?;
    if let Spend::Spent(rows) = &spent {
        p.bump(REDEEMED, total_of(rows)?)?;
    }
    Ok(spent)
}

pub(crate) fn issue_with(p: &mut impl Primitives, rows: &[SerialRow]) -> Result<bool, StoreError> {
    let total = total_of(rows)?;
    if !p.put(rows)? {
        return Ok(false);
    }
    p.bump(MINTED, total)?;
    Ok(true)
}

/// Per account, credits minus debits, from ledger rows (account, kind, amount) ordered by
/// account; summed in i128 (an SQL SUM over i64 could overflow).
pub(crate) fn fold_ledger_sums(
    rows: impl Iterator<Item = Result<(i64, i64, i64), StoreError>>,
) -> Result<Vec<(AccountId, i128)>, StoreError> {
    let mut out: Vec<(AccountId, i128)> = Vec::new();
    for r in rows {
        let (acct, kind, amount) = r?;
        let signed = if kind_from_code(kind)?.is_credit() { amount as i128 } else { -(amount as i128) };
        let acct = AccountId(u64::try_from(acct).map_err(|_| StoreError::Range("account"))?);
        match out.last_mut() {
            Some((a, sum)) if *a == acct => *sum += signed,
            _ => out.push((acct, signed)),
        }
    }
    Ok(out)
}

/// Per peer, the total of settled clearings, from rows (peer, amount) ordered by peer.
pub(crate) fn fold_clearing_totals(
    rows: impl Iterator<Item = Result<(String, i64), StoreError>>,
) -> Result<Vec<(String, Amount)>, StoreError> {
    let mut out: Vec<(String, Amount)> = Vec::new();
    for r in rows {
        let (peer, v) = r?;
        let v = Amount::new(u64::try_from(v).map_err(|_| StoreError::Range("clearing amount"))?);
        match out.last_mut() {
            Some((p, total)) if *p == peer => {
                *total = total.checked_add(v).map_err(|_| StoreError::Range("clearing total"))?
            }
            _ => out.push((peer, v)),
        }
    }
    Ok(out)
}

/// What pending clearings hold, from their `local_serials` blobs.
pub(crate) fn fold_held(blobs: impl Iterator<Item = Result<Vec<u8>, StoreError>>) -> Result<Circulation, StoreError> {
    let mut held = Circulation::default();
    for blob in blobs {
        let serials: Vec<crate::clearing::SerialTuple> =
            bincode::deserialize(&blob?).map_err(|_| StoreError::Range("held serials"))?;
        for t in serials {
            held.count += 1;
            held.value = held.value.checked_add(Amount::new(t.1)).map_err(|_| StoreError::Range("held value"))?;
        }
    }
    Ok(held)
}

pub(crate) fn kind_code(kind: EntryKind) -> i64 {
    match kind {
        EntryKind::CounterCredit => 0,
        EntryKind::Withdrawal => 1,
        EntryKind::Deposit => 2,
        EntryKind::CounterDebit => 3,
    }
}

pub(crate) fn kind_from_code(code: i64) -> Result<EntryKind, StoreError> {
    Ok(match code {
        0 => EntryKind::CounterCredit,
        1 => EntryKind::Withdrawal,
        2 => EntryKind::Deposit,
        3 => EntryKind::CounterDebit,
        _ => return Err(StoreError::Range("ledger kind")),
    })
}
