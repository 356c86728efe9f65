//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives power loss (NORMAL could un-spend a coin: never for money).
//!
//! Schema changes are numbered migrations recorded in `schema_migrations`; opening a
//! database written by a newer version is refused. Integers that hold money are `u64` in
//! Rust and `INTEGER` (i64) here; every conversion is checked.

use super::*;
use payme_node::sqlite::{apply_migrations, open_durable};
use pmtp_proto::bank_statement::LedgerEntry;
use pmtp_proto::text::BoundedString;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;

/// Schema migrations, applied in order; never edit one that has shipped.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "
    CREATE TABLE serials (
        serial BLOB PRIMARY KEY,
        value INTEGER NOT NULL,
        expiry INTEGER NOT NULL,
        key_id BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX serials_expiry ON serials(expiry);
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        owner_identity BLOB NOT NULL,
        password_hash TEXT NOT NULL,
        balance INTEGER NOT NULL CHECK (balance >= 0),
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked_until INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY,
        account INTEGER NOT NULL REFERENCES accounts(id),
        time INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        amount INTEGER NOT NULL CHECK (amount >= 0),
        balance_after INTEGER NOT NULL,
        memo TEXT NOT NULL
    );
    CREATE INDEX ledger_account_time ON ledger(account, time, id);
    CREATE TABLE nonces (
        random BLOB PRIMARY KEY,
        expiry INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX nonces_expiry ON nonces(expiry);
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters(name, value) VALUES
        ('minted_value', 0), ('minted_count', 0),
        ('redeemed_value', 0), ('redeemed_count', 0),
        ('expired_value', 0), ('expired_count', 0);
    CREATE TABLE deposits (
        request_id BLOB PRIMARY KEY,
        account INTEGER NOT NULL REFERENCES accounts(id),
        amount INTEGER NOT NULL,
        coins_hash BLOB NOT NULL,
        balance INTEGER NOT NULL,
        time INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    ",
    ),
    (
        2,
        "
    CREATE TABLE issued (
        request_id BLOB PRIMARY KEY,
        input_hash BLOB NOT NULL,
        coins BLOB NOT NULL,
        balance INTEGER,
        time INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX issued_time ON issued(time);
    CREATE INDEX deposits_time ON deposits(time);
    ",
    ),
    (
        3,
        "
    CREATE TABLE clearing (
        request_id BLOB PRIMARY KEY,
        peer_request_id BLOB NOT NULL,
        peer TEXT NOT NULL,
        account INTEGER NOT NULL,
        local_serials BLOB NOT NULL,
        foreign_coins BLOB NOT NULL,
        local_amount INTEGER NOT NULL,
        foreign_amount INTEGER NOT NULL,
        coins_hash BLOB NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        time INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX clearing_state ON clearing(state, time);
    CREATE INDEX clearing_peer ON clearing(peer, state);
    ",
    ),
    (
        4,
        "
    CREATE TABLE counter_shards (
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        value INTEGER NOT NULL CHECK (value >= 0),
        PRIMARY KEY (node, name)
    ) WITHOUT ROWID;
    INSERT INTO counter_shards(node, name, value) SELECT '', name, value FROM counters;
    DROP TABLE counters;
    CREATE TABLE issued_new (
        request_id BLOB PRIMARY KEY,
        input_hash BLOB NOT NULL,
        plan BLOB NOT NULL,
        coins BLOB,
        balance INTEGER,
        time INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO issued_new(request_id, input_hash, plan, coins, balance, time)
        SELECT request_id, input_hash, x'', coins, balance, time FROM issued;
    DROP TABLE issued;
    ALTER TABLE issued_new RENAME TO issued;
    CREATE INDEX issued_time ON issued(time);
    CREATE INDEX issued_reserved ON issued(time) WHERE coins IS NULL;
    ",
    ),
];

/// The counter shard a store writes when none is named: a single bank process.
pub const DEFAULT_NODE: &str = "main";

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.into())
}

fn i(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Range("value over i64"))
}

fn u(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Range("negative value"))
}

fn arr<const N: usize>(v: Vec<u8>) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Range("blob length"))
}

/// The SQLite store: one connection, used by one thread at a time.
pub struct SqliteStore {
    conn: Connection,
    /// The counter shard this connection's operations update.
    node: String,
    /// The background checkpoint thread, once started ([`Store::checkpoint_in_background`]).
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl SqliteStore {
    /// Stops the background checkpoint thread, if any: the WAL hook (holding the thread's
    /// wake-up) is removed, so the thread ends after the checkpoint it may be running,
    /// and is joined; its connection is closed when this returns.
    fn stop_checkpointer(&mut self) {
        if let Some(thread) = self.checkpointer.take() {
            let no_hook: Option<fn(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()>> = None;
            if let Err(e) = self.conn.wal_hook(no_hook) {
                tracing::warn!(error = %e, "cannot remove the WAL hook");
            }
            let _ = thread.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop_checkpointer();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` for writing, and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_durable(path)?;
        // 64 MiB of page cache (SQLite's default is 2 MiB): the upper levels of the serials'
        // B-trees stay in memory when millions of serials are in circulation.
        conn.pragma_update(None, "cache_size", -65_536).map_err(db)?;
        let mut s = SqliteStore { conn, node: DEFAULT_NODE.into(), checkpointer: None };
        s.migrate()?;
        Ok(s)
    }

    /// A read-only connection for queries that change nothing (statements, audit).
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db)?;
        Ok(SqliteStore { conn, node: DEFAULT_NODE.into(), checkpointer: None })
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut s = SqliteStore {
            conn: Connection::open_in_memory().map_err(db)?,
            node: DEFAULT_NODE.into(),
            checkpointer: None,
        };
        s.migrate()?;
        Ok(s)
    }

    /// Names the counter shard this store's operations update (one per bank node).
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = node.to_owned();
        self
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        Ok(apply_migrations(&mut self.conn, MIGRATIONS)?)
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0)).map_err(db)
    }
}

impl Store for SqliteStore {
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        // IMMEDIATE takes the write lock at once, so a transaction never fails half-way
        // with SQLITE_BUSY when it first writes.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        Ok(Box::new(SqliteTx { tx, node: &self.node }))
    }

    fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Deferred).map_err(db)?;
        Ok(Box::new(SqliteTx { tx, node: &self.node }))
    }

    fn integrity_check(&mut self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("PRAGMA integrity_check").map_err(db)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
        let found: Vec<String> = rows.collect::<Result<_, _>>().map_err(db)?;
        Ok(found.into_iter().filter(|r| r != "ok").collect())
    }

    fn checkpoint(&mut self) -> Result<(), StoreError> {
        // The background thread first: a checkpoint of its own running now would make
        // this one busy.
        self.stop_checkpointer();
        // TRUNCATE: every frame copied into the database and the WAL emptied, so a clean
        // stop leaves no WAL for the next start to recover (and nothing there to damage).
        let (busy, _, _): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db)?;
        if busy != 0 {
            return Err(StoreError::Db(DbError::new(
                DbErrorKind::Busy,
                "checkpoint blocked by a reader; the WAL stays for the next start",
            )));
        }
        Ok(())
    }

    /// SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1,000
    /// pages: that request (and every one grouped with it) waits while pages are copied
    /// into the database and the database file is synced, which with millions of serials
    /// (pages scattered over a large file) is the tail of the latency. Instead a thread of
    /// its own, on its own connection, copies the WAL (a passive checkpoint: it never
    /// blocks the writer) whenever a commit leaves it past [`CHECKPOINT_PAGES`]; the writer
    /// checkpoints itself only if the log reaches [`BACKSTOP_PAGES`] (the thread fell
    /// behind under sustained load, or failed). Durability is unchanged: a commit is
    /// durable once its WAL frames are synced, before and after.
    fn checkpoint_in_background(&mut self) -> Result<(), StoreError> {
        let Some(path) = self.conn.path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from) else {
            return Ok(()); // in memory: no log
        };
        if self.checkpointer.is_some() {
            return Ok(());
        }
        let checkpointer = open_durable(&path)?;
        // After a checkpoint lets the log start over, SQLite truncates the file to this
        // (64 MiB), so a burst that grew it does not leave it large.
        self.conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024).map_err(db)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("payme-db-checkpoint".into())
            .spawn(move || {
                // Ends when the writer's connection (holding `wake`) is closed.
                while woken.recv().is_ok() {
                    let done: Result<(i64, i64, i64), _> = checkpointer
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "background checkpoint failed; the writer checkpoints if the log keeps growing");
                    }
                }
            })
            .map_err(|e| StoreError::Db(DbError::new(DbErrorKind::Io, format!("cannot start the checkpoint thread: {e}"))))?;
        self.checkpointer = Some(thread);
        // Replaces SQLite's automatic checkpoint (itself a WAL hook). The hook runs after
        // the commit is durable, and never fails it: an error returned here would reach
        // the writer as a failed COMMIT of work that is in fact committed.
        self.conn
            .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                if pages >= BACKSTOP_PAGES {
                    // Busy when the thread is checkpointing: it is catching up already.
                    if let Err(e) = wal.checkpoint() {
                        tracing::debug!(error = %e, pages, "writer's own checkpoint did not run");
                    }
                    return Ok(());
                }
                if pages >= CHECKPOINT_PAGES {
                    // Full: a wake-up is pending already.
                    let _ = wake.try_send(());
                }
                Ok(())
            }))
            .map_err(db)
    }
}

/// WAL pages after which the background thread copies the log into the database (32 MB of
/// 4 KiB pages): fewer, larger checkpoints, so fewer commits share the disk with one.
pub const CHECKPOINT_PAGES: std::ffi::c_int = 8_000;
/// WAL pages after which the writer copies it itself (160 MB).
pub const BACKSTOP_PAGES: std::ffi::c_int = 40_000;

struct SqliteTx<'c> {
    tx: rusqlite::Transaction<'c>,
    node: &'c str,
}

impl SqliteTx<'_> {
    fn ledger_entry(
        &mut self,
        account: AccountId,
        time: u64,
        kind: EntryKind,
        amount: Amount,
        balance_after: Amount,
        memo: &str,
    ) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO ledger(account, time, kind, amount, balance_after, memo) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?;
        st.execute(params![
            i(account.0)?,
            i(time)?,
            kind_code(kind),
            i(amount.minor_units())?,
            i(balance_after.minor_units())?,
            memo
        ])
        .map_err(db)?;
        Ok(())
    }

    fn exists(&mut self, id: AccountId) -> Result<bool, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT 1 FROM accounts WHERE id = ?1").map_err(db)?;
        st.exists(params![i(id.0)?]).map_err(db)
    }
}

impl Primitives for SqliteTx<'_> {
    /// Deletes the sorted serials one by one inside a savepoint of its own: all or none.
    fn take(&mut self, serials: &[Serial]) -> Result<Spend, StoreError> {
        let mut sorted = serials.to_vec();
        sorted.sort_unstable();
        self.tx.execute_batch("SAVEPOINT take").map_err(db)?;
        let mut out = Vec::with_capacity(sorted.len());
        let result = (|| {
            let mut st = self
                .tx
                .prepare_cached("DELETE FROM serials WHERE serial = ?1 RETURNING value, expiry, key_id")
                .map_err(db)?;
            for s in &sorted {
                let row = st
                    .query_row(params![&s.0[..]], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
                    })
                    .optional()
                    .map_err(db)?;
                match row {
                    Some((value, expiry, key_id)) => out.push(SerialRow {
                        serial: *s,
                        value: Amount::new(u(value)?),
                        expiry: u(expiry)?,
                        key_id: KeyId(arr(key_id)?),
                    }),
                    None => return Ok(Some(*s)),
                }
            }
            Ok::<_, StoreError>(None)
        })();
        match result {
            Ok(None) => {
                self.tx.execute_batch("RELEASE take").map_err(db)?;
                Ok(Spend::Spent(out))
            }
            Ok(Some(missing)) => {
                self.tx.execute_batch("ROLLBACK TO take; RELEASE take").map_err(db)?;
                Ok(Spend::Missing(missing))
            }
            Err(e) => {
                let _ = self.tx.execute_batch("ROLLBACK TO take; RELEASE take");
                Err(e)
            }
        }
    }

    /// Inserts serials without counting them; false (nothing inserted) on a collision.
    fn put(&mut self, rows: &[SerialRow]) -> Result<bool, StoreError> {
        self.tx.execute_batch("SAVEPOINT put").map_err(db)?;
        let result = (|| {
            let mut st = self
                .tx
                .prepare_cached("INSERT OR IGNORE INTO serials(serial, value, expiry, key_id) VALUES (?1, ?2, ?3, ?4)")
                .map_err(db)?;
            for r in rows {
                let n = st
                    .execute(params![&r.serial.0[..], i(r.value.minor_units())?, i(r.expiry)?, &r.key_id.0[..]])
                    .map_err(db)?;
                if n != 1 {
                    return Ok(false);
                }
            }
            Ok::<_, StoreError>(true)
        })();
        match result {
            Ok(true) => {
                self.tx.execute_batch("RELEASE put").map_err(db)?;
                Ok(true)
            }
            other => {
                let _ = self.tx.execute_batch("ROLLBACK TO put; RELEASE put");
                other
            }
        }
    }

    /// Adds to this node's shard of one counter pair, refusing an overflow past i64.
    fn bump(&mut self, names: (&str, &str), by: Circulation) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO counter_shards(node, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(node, name) DO UPDATE SET value = value + excluded.value
                 WHERE value <= 9223372036854775807 - excluded.value",
            )
            .map_err(db)?;
        for (name, v) in [(names.0, by.value.minor_units()), (names.1, by.count)] {
            if v != 0 && st.execute(params![self.node, name, i(v)?]).map_err(db)? != 1 {
                return Err(StoreError::Range("counter overflow"));
            }
        }
        Ok(())
    }
}

/// An account row's columns as SQLite returns them, before range checks.
type RawAccount = (i64, String, Vec<u8>, String, i64, i64, i64, i64);

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAccount> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

fn to_account(t: RawAccount) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        id: AccountId(u(t.0)?),
        name: t.1,
        owner_identity: t.2,
        password_hash: t.3,
        balance: Amount::new(u(t.4)?),
        failed_attempts: u32::try_from(t.5).map_err(|_| StoreError::Range("failed_attempts"))?,
        locked_until: u(t.6)?,
        created_at: u(t.7)?,
    })
}

const CLEARING_COLS: &str = "request_id, peer_request_id, peer, account, local_serials, foreign_coins, local_amount, foreign_amount, coins_hash, state, reason, time";

type RawClearing = (Vec<u8>, Vec<u8>, String, i64, Vec<u8>, Vec<u8>, i64, i64, Vec<u8>, String, String, i64);

fn clearing_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawClearing> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn to_clearing(t: RawClearing) -> Result<ClearingRow, StoreError> {
    Ok(ClearingRow {
        request_id: arr(t.0)?,
        peer_request_id: arr(t.1)?,
        peer: t.2,
        account: AccountId(u(t.3)?),
        local_serials: t.4,
        foreign_coins: t.5,
        local_amount: Amount::new(u(t.6)?),
        foreign_amount: Amount::new(u(t.7)?),
        coins_hash: arr(t.8)?,
        state: t.9,
        reason: t.10,
        time: u(t.11)?,
    })
}

type RawIssued = (Vec<u8>, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<i64>, i64);

fn issued_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawIssued> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_issued(t: RawIssued) -> Result<IssuedRow, StoreError> {
    Ok(IssuedRow {
        request_id: arr(t.0)?,
        input_hash: arr(t.1)?,
        plan: t.2,
        coins: t.3,
        balance: t.4.map(|b| u(b).map(Amount::new)).transpose()?,
        time: u(t.5)?,
    })
}

const ACCOUNT_COLS: &str =
    "id, name, owner_identity, password_hash, balance, failed_attempts, locked_until, created_at";

impl Tx for SqliteTx<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().map_err(db)
    }
    fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().map_err(db)
    }
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.tx.execute_batch("SAVEPOINT request").map_err(db)
    }
    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.tx.execute_batch("RELEASE request").map_err(db)
    }
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.tx.execute_batch("ROLLBACK TO request; RELEASE request").map_err(db)
    }

    fn create_account(
        &mut self,
        name: &str,
        owner_identity: &[u8],
        password_hash: &str,
        now: u64,
    ) -> Result<AccountId, StoreError> {
        // Account numbers start at 1001 so that they never look like small counts.
        let next: i64 =
            self.tx.query_row("SELECT COALESCE(MAX(id), 1000) + 1 FROM accounts", [], |r| r.get(0)).map_err(db)?;
        self.tx
            .execute(
                "INSERT INTO accounts(id, name, owner_identity, password_hash, balance, created_at) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                params![next, name, owner_identity, password_hash, i(now)?],
            )
            .map_err(db)?;
        Ok(AccountId(u(next)?))
    }

    fn account(&mut self, id: AccountId) -> Result<Option<AccountRow>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1");
        let mut st = self.tx.prepare_cached(&sql).map_err(db)?;
        let row = st.query_row(params![i(id.0)?], account_row).optional().map_err(db)?;
        row.map(to_account).transpose()
    }

    fn accounts(&mut self) -> Result<Vec<AccountRow>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY id");
        let mut st = self.tx.prepare_cached(&sql).map_err(db)?;
        let rows = st.query_map([], account_row).map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(to_account)).collect()
    }

    fn set_login_failures(&mut self, id: AccountId, failed_attempts: u32, locked_until: u64) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached("UPDATE accounts SET failed_attempts = ?2, locked_until = ?3 WHERE id = ?1")
            .map_err(db)?;
        st.execute(params![i(id.0)?, failed_attempts, i(locked_until)?]).map_err(db)?;
        Ok(())
    }

    fn set_password_hash(&mut self, id: AccountId, password_hash: &str) -> Result<(), StoreError> {
        let mut st = self.tx.prepare_cached("UPDATE accounts SET password_hash = ?2 WHERE id = ?1").map_err(db)?;
        if st.execute(params![i(id.0)?, password_hash]).map_err(db)? == 0 {
            return Err(StoreError::NoAccount(id));
        }
        Ok(())
    }

    fn debit(
        &mut self,
        id: AccountId,
        amount: Amount,
        time: u64,
        kind: EntryKind,
        memo: &str,
    ) -> Result<Option<Amount>, StoreError> {
        let after: Option<i64> = {
            let mut st = self
                .tx
                .prepare_cached(
                    "UPDATE accounts SET balance = balance - ?2 WHERE id = ?1 AND balance >= ?2 RETURNING balance",
                )
                .map_err(db)?;
            st.query_row(params![i(id.0)?, i(amount.minor_units())?], |r| r.get(0)).optional().map_err(db)?
        };
        match after {
            Some(b) => {
                let b = Amount::new(u(b)?);
                self.ledger_entry(id, time, kind, amount, b, memo)?;
                Ok(Some(b))
            }
            None if self.exists(id)? => Ok(None),
            None => Err(StoreError::NoAccount(id)),
        }
    }

    fn credit(
        &mut self,
        id: AccountId,
        amount: Amount,
        time: u64,
        kind: EntryKind,
        memo: &str,
    ) -> Result<Amount, StoreError> {
        let after: Option<i64> = {
            let mut st = self
                .tx
                .prepare_cached(
                    "UPDATE accounts SET balance = balance + ?2
                     WHERE id = ?1 AND balance <= ?3 - ?2 RETURNING balance",
                )
                .map_err(db)?;
            st.query_row(params![i(id.0)?, i(amount.minor_units())?, i(Amount::MAX.minor_units())?], |r| r.get(0))
                .optional()
                .map_err(db)?
        };
        match after {
            Some(b) => {
                let b = Amount::new(u(b)?);
                self.ledger_entry(id, time, kind, amount, b, memo)?;
                Ok(b)
            }
            None if self.exists(id)? => Err(StoreError::Range("balance would overflow")),
            None => Err(StoreError::NoAccount(id)),
        }
    }

    fn ledger(&mut self, account: AccountId, since: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "SELECT id, time, kind, amount, balance_after, memo FROM ledger
                 WHERE account = ?1 AND time >= ?2 ORDER BY time, id LIMIT ?3",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![i(account.0)?, i(since)?, i(limit as u64)?], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(db)?;
        rows.map(|r| {
            let (id, time, kind, amount, after, memo) = r.map_err(db)?;
            Ok(LedgerEntry {
                id: u(id)?,
                time: u(time)?,
                kind: kind_from_code(kind)?,
                amount: Amount::new(u(amount)?),
                balance_after: Amount::new(u(after)?),
                memo: BoundedString::truncated(&memo),
            })
        })
        .collect()
    }

    fn ledger_sums(&mut self) -> Result<Vec<(AccountId, i128)>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT account, kind, amount FROM ledger ORDER BY account").map_err(db)?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))).map_err(db)?;
        fold_ledger_sums(rows.map(|r| r.map_err(db)))
    }

    fn spend(&mut self, serials: &[Serial]) -> Result<Spend, StoreError> {
        spend_with(self, serials)
    }

    fn hold(&mut self, serials: &[Serial]) -> Result<Spend, StoreError> {
        self.take(serials)
    }

    fn issue(&mut self, rows: &[SerialRow]) -> Result<bool, StoreError> {
        issue_with(self, rows)
    }

    fn first_missing_serial(&mut self, serials: &[Serial]) -> Result<Option<Serial>, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT 1 FROM serials WHERE serial = ?1").map_err(db)?;
        for s in serials {
            if !st.exists(params![&s.0[..]]).map_err(db)? {
                return Ok(Some(*s));
            }
        }
        Ok(None)
    }

    fn circulation(&mut self) -> Result<Circulation, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT value FROM serials").map_err(db)?;
        let rows = st.query_map([], |r| r.get::<_, i64>(0)).map_err(db)?;
        let mut c = Circulation::default();
        for v in rows {
            c.count += 1;
            c.value = c.value.checked_add(Amount::new(u(v.map_err(db)?)?)).map_err(|_| StoreError::Range("total"))?;
        }
        Ok(c)
    }

    fn expire(&mut self, now: u64, limit: usize) -> Result<Circulation, StoreError> {
        let c = {
            let mut st = self
                .tx
                .prepare_cached(
                    "DELETE FROM serials WHERE serial IN
                   (SELECT serial FROM serials WHERE expiry < ?1 ORDER BY expiry LIMIT ?2)
                 RETURNING value",
                )
                .map_err(db)?;
            let rows = st.query_map(params![i(now)?, i(limit as u64)?], |r| r.get::<_, i64>(0)).map_err(db)?;
            let mut c = Circulation::default();
            for v in rows {
                c.count += 1;
                c.value =
                    c.value.checked_add(Amount::new(u(v.map_err(db)?)?)).map_err(|_| StoreError::Range("total"))?;
            }
            c
        };
        self.bump(EXPIRED, c)?;
        Ok(c)
    }

    fn insert_nonce(&mut self, random: &[u8; 16], expiry: u64) -> Result<bool, StoreError> {
        let mut st =
            self.tx.prepare_cached("INSERT OR IGNORE INTO nonces(random, expiry) VALUES (?1, ?2)").map_err(db)?;
        Ok(st.execute(params![&random[..], i(expiry)?]).map_err(db)? == 1)
    }

    fn purge_nonces(&mut self, now: u64, limit: usize) -> Result<u64, StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "DELETE FROM nonces WHERE random IN (SELECT random FROM nonces WHERE expiry < ?1 ORDER BY expiry LIMIT ?2)",
            )
            .map_err(db)?;
        Ok(st.execute(params![i(now)?, i(limit as u64)?]).map_err(db)? as u64)
    }

    fn counters(&mut self) -> Result<Counters, StoreError> {
        let mut st = self.tx.prepare_cached("SELECT name, value FROM counter_shards").map_err(db)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(db)?;
        let mut c = Counters::default();
        for row in rows {
            let (name, v) = row.map_err(db)?;
            c.add_named(&name, u(v)?)?;
        }
        Ok(c)
    }

    fn deposit(&mut self, request_id: &[u8; 16]) -> Result<Option<DepositRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT account, amount, coins_hash, balance, time FROM deposits WHERE request_id = ?1")
            .map_err(db)?;
        let row = st
            .query_row(params![&request_id[..]], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
            .map_err(db)?;
        row.map(|(a, amt, h, bal, t)| {
            Ok(DepositRow {
                request_id: *request_id,
                account: AccountId(u(a)?),
                amount: Amount::new(u(amt)?),
                coins_hash: arr(h)?,
                balance: Amount::new(u(bal)?),
                time: u(t)?,
            })
        })
        .transpose()
    }

    fn insert_deposit(&mut self, row: &DepositRow) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO deposits(request_id, account, amount, coins_hash, balance, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?;
        st.execute(params![
            &row.request_id[..],
            i(row.account.0)?,
            i(row.amount.minor_units())?,
            &row.coins_hash[..],
            i(row.balance.minor_units())?,
            i(row.time)?
        ])
        .map_err(db)?;
        Ok(())
    }

    fn issued(&mut self, request_id: &[u8; 16]) -> Result<Option<IssuedRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "SELECT request_id, input_hash, plan, coins, balance, time FROM issued WHERE request_id = ?1",
            )
            .map_err(db)?;
        let row = st.query_row(params![&request_id[..]], issued_raw).optional().map_err(db)?;
        row.map(to_issued).transpose()
    }

    fn reserve_issue(&mut self, row: &IssuedRow) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO issued(request_id, input_hash, plan, coins, balance, time) VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
            )
            .map_err(db)?;
        let balance = row.balance.map(|b| i(b.minor_units())).transpose()?;
        st.execute(params![&row.request_id[..], &row.input_hash[..], &row.plan, balance, i(row.time)?]).map_err(db)?;
        Ok(())
    }

    fn complete_issue(&mut self, request_id: &[u8; 16], rows: &[SerialRow], coins: &[u8]) -> Result<bool, StoreError> {
        let n = {
            let mut st = self
                .tx
                .prepare_cached("UPDATE issued SET coins = ?2 WHERE request_id = ?1 AND coins IS NULL")
                .map_err(db)?;
            st.execute(params![&request_id[..], coins]).map_err(db)?
        };
        if n != 1 {
            return Ok(false);
        }
        if !self.issue(rows)? {
            return Err(StoreError::Db(DbError::new(DbErrorKind::Unique, "serial collision")));
        }
        Ok(true)
    }

    fn reserved_issues(&mut self, limit: usize) -> Result<Vec<IssuedRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "SELECT request_id, input_hash, plan, coins, balance, time FROM issued
                 WHERE coins IS NULL ORDER BY time LIMIT ?1",
            )
            .map_err(db)?;
        let rows = st.query_map(params![i(limit as u64)?], issued_raw).map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(to_issued)).collect()
    }

    fn unsigned_issues(&mut self, after: Option<(u64, [u8; 16])>, limit: usize) -> Result<Vec<IssuedRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "SELECT request_id, input_hash, plan, coins, balance, time FROM issued
                 WHERE substr(coins, 1, ?2) = ?1 AND (time > ?3 OR (time = ?3 AND request_id > ?4))
                 ORDER BY time, request_id LIMIT ?5",
            )
            .map_err(db)?;
        let prefix = &super::UNSIGNED_COINS[..];
        let (time, id) = match after {
            Some((t, id)) => (i(t)?, id.to_vec()),
            None => (-1, Vec::new()),
        };
        let rows =
            st.query_map(params![prefix, prefix.len() as i64, time, id, i(limit as u64)?], issued_raw).map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(to_issued)).collect()
    }

    fn sign_issue(&mut self, request_id: &[u8; 16], unsigned: &[u8], coins: &[u8]) -> Result<bool, StoreError> {
        let mut st =
            self.tx.prepare_cached("UPDATE issued SET coins = ?3 WHERE request_id = ?1 AND coins = ?2").map_err(db)?;
        Ok(st.execute(params![&request_id[..], unsigned, coins]).map_err(db)? == 1)
    }

    fn purge_requests(&mut self, before: u64, limit: usize) -> Result<u64, StoreError> {
        let mut n = 0;
        for (table, done) in [("issued", "AND coins IS NOT NULL"), ("deposits", "")] {
            let sql = format!(
                "DELETE FROM {table} WHERE request_id IN
                   (SELECT request_id FROM {table} WHERE time < ?1 {done} ORDER BY time LIMIT ?2)"
            );
            let mut st = self.tx.prepare_cached(&sql).map_err(db)?;
            n += st.execute(params![i(before)?, i(limit as u64)?]).map_err(db)? as u64;
        }
        Ok(n)
    }

    fn insert_clearing(&mut self, r: &ClearingRow) -> Result<(), StoreError> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO clearing(request_id, peer_request_id, peer, account, local_serials, foreign_coins,
                 local_amount, foreign_amount, coins_hash, state, reason, time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(db)?;
        st.execute(params![
            &r.request_id[..],
            &r.peer_request_id[..],
            r.peer,
            i(r.account.0)?,
            r.local_serials,
            r.foreign_coins,
            i(r.local_amount.minor_units())?,
            i(r.foreign_amount.minor_units())?,
            &r.coins_hash[..],
            r.state,
            r.reason,
            i(r.time)?
        ])
        .map_err(db)?;
        Ok(())
    }

    fn clearing(&mut self, request_id: &[u8; 16]) -> Result<Option<ClearingRow>, StoreError> {
        let sql = format!("SELECT {CLEARING_COLS} FROM clearing WHERE request_id = ?1");
        let mut st = self.tx.prepare_cached(&sql).map_err(db)?;
        let row = st.query_row(params![&request_id[..]], clearing_raw).optional().map_err(db)?;
        row.map(to_clearing).transpose()
    }

    fn settle_clearing(&mut self, request_id: &[u8; 16], held: Circulation) -> Result<bool, StoreError> {
        let n = {
            let mut st = self
                .tx
                .prepare_cached("UPDATE clearing SET state = 'settled' WHERE request_id = ?1 AND state = 'pending'")
                .map_err(db)?;
            st.execute(params![&request_id[..]]).map_err(db)?
        };
        if n != 1 {
            return Ok(false);
        }
        self.bump(REDEEMED, held)?;
        Ok(true)
    }

    fn undo_clearing(&mut self, request_id: &[u8; 16], held: &[SerialRow], reason: &str) -> Result<bool, StoreError> {
        let n = {
            let mut st = self
                .tx
                .prepare_cached(
                    "UPDATE clearing SET state = 'failed', reason = ?2 WHERE request_id = ?1 AND state = 'pending'",
                )
                .map_err(db)?;
            st.execute(params![&request_id[..], reason]).map_err(db)?
        };
        if n != 1 {
            return Ok(false);
        }
        if !self.put(held)? {
            return Err(StoreError::Db(DbError::new(DbErrorKind::Unique, "a held serial is back in circulation")));
        }
        Ok(true)
    }

    fn pending_clearings(&mut self, limit: usize) -> Result<Vec<ClearingRow>, StoreError> {
        let sql = format!("SELECT {CLEARING_COLS} FROM clearing WHERE state = 'pending' ORDER BY time LIMIT ?1");
        let mut st = self.tx.prepare_cached(&sql).map_err(db)?;
        let rows = st.query_map(params![i(limit as u64)?], clearing_raw).map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(to_clearing)).collect()
    }

    fn held_by_clearings(&mut self) -> Result<Circulation, StoreError> {
        let mut st =
            self.tx.prepare_cached("SELECT local_serials FROM clearing WHERE state = 'pending'").map_err(db)?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(db)?;
        fold_held(rows.map(|r| r.map_err(db)))
    }

    fn clearing_totals(&mut self) -> Result<Vec<(String, Amount)>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT peer, foreign_amount FROM clearing WHERE state = 'settled' ORDER BY peer")
            .map_err(db)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(db)?;
        fold_clearing_totals(rows.map(|r| r.map_err(db)))
    }

    fn audit_event(&mut self, time: u64, event: &str, detail: &str) -> Result<(), StoreError> {
        let mut st =
            self.tx.prepare_cached("INSERT INTO audit_log(time, event, detail) VALUES (?1, ?2, ?3)").map_err(db)?;
        st.execute(params![i(time)?, event, detail]).map_err(db)?;
        Ok(())
    }
}
