//! The PostgreSQL store: several `payme-bank` processes (nodes) on one database.
//!
//! Transactions run at READ COMMITTED, the server's default: every money operation is one
//! statement whose condition the server re-checks on the row's newest version after
//! waiting for a competing writer (`DELETE ... RETURNING` of a serial: one winner;
//! `UPDATE ... WHERE balance >= $1 RETURNING balance`: never negative; `UPDATE issued ...
//! WHERE coins IS NULL`: finished once). Serials are deleted in sorted order, so two
//! nodes spending overlapping sets wait for each other instead of deadlocking; what
//! deadlocks remain (two group commits touching two accounts in opposite orders) fail
//! with 40P01, which [`DbErrorKind::Conflict`] marks retryable and the writer retries.
//! The counters are one row per node and counter, so nodes never queue on one row.
//!
//! Read transactions are REPEATABLE READ, READ ONLY: the audit sees one snapshot.
//!
//! This client is the synchronous `postgres` crate: the store traits are synchronous and
//! run on the writer thread and tokio's blocking pool. It makes its own small runtime per
//! connection, which may not be started or dropped on an async worker; so connecting and
//! dropping happen on threads of their own ([`PgStore::open`], [`in_own_thread`]).
//! Connections are plain TCP or a Unix socket, without TLS: a bank reaches its database
//! on loopback, a socket, or a private network (docs/BANK.md).

use super::*;
use pmtp_proto::bank_statement::LedgerEntry;
use pmtp_proto::text::BoundedString;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;

/// Schema migrations, applied in order; never edit one that has shipped. One migration
/// holds what SQLite reached in four.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "
    CREATE TABLE serials (
        serial BYTEA PRIMARY KEY,
        value BIGINT NOT NULL,
        expiry BIGINT NOT NULL,
        key_id BYTEA NOT NULL
    );
    CREATE INDEX serials_expiry ON serials(expiry);
    CREATE SEQUENCE accounts_id_seq START 1001;
    CREATE TABLE accounts (
        id BIGINT PRIMARY KEY DEFAULT nextval('accounts_id_seq'),
        name TEXT NOT NULL,
        owner_identity BYTEA NOT NULL,
        password_hash TEXT NOT NULL,
        balance BIGINT NOT NULL CHECK (balance >= 0),
        failed_attempts BIGINT NOT NULL DEFAULT 0,
        locked_until BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL
    );
    ALTER SEQUENCE accounts_id_seq OWNED BY accounts.id;
    CREATE TABLE ledger (
        id BIGSERIAL PRIMARY KEY,
        account BIGINT NOT NULL REFERENCES accounts(id),
        time BIGINT NOT NULL,
        kind BIGINT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount >= 0),
        balance_after BIGINT NOT NULL,
        memo TEXT NOT NULL
    );
    CREATE INDEX ledger_account_time ON ledger(account, time, id);
    CREATE TABLE nonces (
        random BYTEA PRIMARY KEY,
        expiry BIGINT NOT NULL
    );
    CREATE INDEX nonces_expiry ON nonces(expiry);
    CREATE TABLE counter_shards (
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        value BIGINT NOT NULL CHECK (value >= 0),
        PRIMARY KEY (node, name)
    );
    CREATE TABLE deposits (
        request_id BYTEA PRIMARY KEY,
        account BIGINT NOT NULL REFERENCES accounts(id),
        amount BIGINT NOT NULL,
        coins_hash BYTEA NOT NULL,
        balance BIGINT NOT NULL,
        time BIGINT NOT NULL
    );
    CREATE INDEX deposits_time ON deposits(time);
    CREATE TABLE issued (
        request_id BYTEA PRIMARY KEY,
        input_hash BYTEA NOT NULL,
        plan BYTEA NOT NULL,
        coins BYTEA,
        balance BIGINT,
        time BIGINT NOT NULL
    );
    CREATE INDEX issued_time ON issued(time);
    CREATE INDEX issued_reserved ON issued(time) WHERE coins IS NULL;
    CREATE TABLE clearing (
        request_id BYTEA PRIMARY KEY,
        peer_request_id BYTEA NOT NULL,
        peer TEXT NOT NULL,
        account BIGINT NOT NULL,
        local_serials BYTEA NOT NULL,
        foreign_coins BYTEA NOT NULL,
        local_amount BIGINT NOT NULL,
        foreign_amount BIGINT NOT NULL,
        coins_hash BYTEA NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        time BIGINT NOT NULL
    );
    CREATE INDEX clearing_state ON clearing(state, time);
    CREATE INDEX clearing_peer ON clearing(peer, state);
    CREATE TABLE audit_log (
        id BIGSERIAL PRIMARY KEY,
        time BIGINT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    ",
)];

/// Any key for the advisory lock that serialises migrations between nodes starting at once.
const MIGRATION_LOCK: i64 = 0x7061_796d_6562_616e;

fn db(e: postgres::Error) -> StoreError {
    let kind = match e.code() {
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
            DbErrorKind::Conflict
        }
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => DbErrorKind::Unique,
        Some(c) if c.code().starts_with("23") => DbErrorKind::Constraint,
        Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => DbErrorKind::Corrupt,
        // Too many connections, the server shutting down or starting: worth another try.
        Some(c) if c.code().starts_with("57P") || *c == SqlState::TOO_MANY_CONNECTIONS => DbErrorKind::Busy,
        Some(c) if c.code().starts_with("08") => DbErrorKind::Io,
        Some(_) => DbErrorKind::Other,
        // No SQLSTATE: the connection failed or closed.
        None => DbErrorKind::Io,
    };
    let message = match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    };
    StoreError::Db(DbError::new(kind, message))
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

/// Runs `f` on a thread of its own and waits for it: for the client's connect and drop,
/// which start or stop a runtime and so may not run on an async worker.
pub fn in_own_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Whether `store` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// One connection to the bank's PostgreSQL database.
pub struct PgStore {
    client: Option<Client>,
    /// The counter shard this connection's operations update.
    node: String,
    /// Prepared statements by their text (they belong to this connection).
    cache: HashMap<&'static str, Statement>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            in_own_thread(move || drop(client));
        }
    }
}

impl PgStore {
    /// Connects to `url` and applies the migrations this program knows (one node at a time).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let url = url.to_owned();
        in_own_thread(move || {
            let mut s = PgStore::connect_here(&url)?;
            s.migrate()?;
            Ok(s)
        })
    }

    /// Connects without migrating (read connections of a node that has migrated).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let url = url.to_owned();
        in_own_thread(move || PgStore::connect_here(&url))
    }

    fn connect_here(url: &str) -> Result<Self, StoreError> {
        let config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Db(DbError::new(DbErrorKind::Other, format!("store URL: {e}")))
        })?;
        let client = config.connect(NoTls).map_err(db)?;
        Ok(PgStore { client: Some(client), node: super::sqlite::DEFAULT_NODE.into(), cache: HashMap::new() })
    }

    /// Names the counter shard this store's operations update (one per bank node).
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = node.to_owned();
        self
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client.as_mut().ok_or(StoreError::Task("connection already closed".into()))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let client = self.client()?;
        let mut tx = client.transaction().map_err(db)?;
        tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(db)?;
        let current: i64 =
            tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).map_err(db)?.get(0);
        let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > known {
            return Err(StoreError::NewerSchema { found: current, known });
        }
        let now = i64::try_from(pmtp_client::clock::now()).unwrap_or(i64::MAX);
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql).map_err(db)?;
            tx.execute("INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)", &[version, &now])
                .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// The schema version in force.
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self.client()?.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).map_err(db)?.get(0))
    }
}

impl Store for PgStore {
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        let PgStore { client, node, cache } = self;
        let client = client.as_mut().ok_or(StoreError::Task("connection already closed".into()))?;
        let tx = client.transaction().map_err(db)?;
        Ok(Box::new(PgTx { tx, node, cache }))
    }

    fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        let PgStore { client, node, cache } = self;
        let client = client.as_mut().ok_or(StoreError::Task("connection already closed".into()))?;
        let tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(db)?;
        Ok(Box::new(PgTx { tx, node, cache }))
    }

    /// PostgreSQL checks its own pages (with data checksums, if the cluster was made with
    /// them); `amcheck` needs an extension and a superuser, so nothing more here.
    fn integrity_check(&mut self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Nothing to do: the server makes its own checkpoints.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

struct PgTx<'c> {
    tx: postgres::Transaction<'c>,
    node: &'c str,
    cache: &'c mut HashMap<&'static str, Statement>,
}

type Params<'a> = &'a [&'a (dyn postgres::types::ToSql + Sync)];

fn to_account(r: &postgres::Row) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        id: AccountId(u(r.get(0))?),
        name: r.get(1),
        owner_identity: r.get(2),
        password_hash: r.get(3),
        balance: Amount::new(u(r.get(4))?),
        failed_attempts: u32::try_from(r.get::<_, i64>(5)).map_err(|_| StoreError::Range("failed_attempts"))?,
        locked_until: u(r.get(6))?,
        created_at: u(r.get(7))?,
    })
}

fn to_clearing(r: &postgres::Row) -> Result<ClearingRow, StoreError> {
    Ok(ClearingRow {
        request_id: arr(r.get(0))?,
        peer_request_id: arr(r.get(1))?,
        peer: r.get(2),
        account: AccountId(u(r.get(3))?),
        local_serials: r.get(4),
        foreign_coins: r.get(5),
        local_amount: Amount::new(u(r.get(6))?),
        foreign_amount: Amount::new(u(r.get(7))?),
        coins_hash: arr(r.get(8))?,
        state: r.get(9),
        reason: r.get(10),
        time: u(r.get(11))?,
    })
}

fn to_issued(r: &postgres::Row) -> Result<IssuedRow, StoreError> {
    Ok(IssuedRow {
        request_id: arr(r.get(0))?,
        input_hash: arr(r.get(1))?,
        plan: r.get(2),
        coins: r.get(3),
        balance: r.get::<_, Option<i64>>(4).map(|b| u(b).map(Amount::new)).transpose()?,
        time: u(r.get(5))?,
    })
}

impl PgTx<'_> {
    /// The prepared statement for `sql` (prepared once per connection).
    fn st(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(db)?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    fn exec(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        let st = self.st(sql)?;
        self.tx.execute(&st, params).map_err(db)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<postgres::Row>, StoreError> {
        let st = self.st(sql)?;
        self.tx.query(&st, params).map_err(db)
    }

    fn query_opt(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<postgres::Row>, StoreError> {
        let st = self.st(sql)?;
        self.tx.query_opt(&st, params).map_err(db)
    }

    fn ledger_entry(
        &mut self,
        account: AccountId,
        time: u64,
        kind: EntryKind,
        amount: Amount,
        after: Amount,
        memo: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO ledger(account, time, kind, amount, balance_after, memo) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&i(account.0)?, &i(time)?, &kind_code(kind), &i(amount.minor_units())?, &i(after.minor_units())?, &memo],
        )?;
        Ok(())
    }

    fn exists(&mut self, id: AccountId) -> Result<bool, StoreError> {
        Ok(self.query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&i(id.0)?])?.is_some())
    }

    fn savepoint_named(&mut self, sql: &'static str) -> Result<(), StoreError> {
        self.tx.batch_execute(sql).map_err(db)
    }
}

impl Primitives for PgTx<'_> {
    /// Deletes the sorted serials one by one inside a savepoint of its own: all or none.
    fn take(&mut self, serials: &[Serial]) -> Result<Spend, StoreError> {
        let mut sorted = serials.to_vec();
        sorted.sort_unstable();
        self.savepoint_named("SAVEPOINT take")?;
        let mut out = Vec::with_capacity(sorted.len());
        let result = (|| {
            for s in &sorted {
                let row = self
                    .query_opt("DELETE FROM serials WHERE serial = $1 RETURNING value, expiry, key_id", &[&&s.0[..]])?;
                match row {
                    Some(r) => out.push(SerialRow {
                        serial: *s,
                        value: Amount::new(u(r.get(0))?),
                        expiry: u(r.get(1))?,
                        key_id: KeyId(arr(r.get(2))?),
                    }),
                    None => return Ok(Some(*s)),
                }
            }
            Ok::<_, StoreError>(None)
        })();
        match result {
            Ok(None) => {
                self.savepoint_named("RELEASE take")?;
                Ok(Spend::Spent(out))
            }
            Ok(Some(missing)) => {
                self.savepoint_named("ROLLBACK TO take; RELEASE take")?;
                Ok(Spend::Missing(missing))
            }
            Err(e) => {
                let _ = self.savepoint_named("ROLLBACK TO take; RELEASE take");
                Err(e)
            }
        }
    }

    /// Inserts serials without counting them; false (nothing inserted) on a collision.
    fn put(&mut self, rows: &[SerialRow]) -> Result<bool, StoreError> {
        self.savepoint_named("SAVEPOINT put")?;
        let result = (|| {
            for r in rows {
                let n = self.exec(
                    "INSERT INTO serials(serial, value, expiry, key_id) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (serial) DO NOTHING",
                    &[&&r.serial.0[..], &i(r.value.minor_units())?, &i(r.expiry)?, &&r.key_id.0[..]],
                )?;
                if n != 1 {
                    return Ok(false);
                }
            }
            Ok::<_, StoreError>(true)
        })();
        match result {
            Ok(true) => {
                self.savepoint_named("RELEASE put")?;
                Ok(true)
            }
            other => {
                let _ = self.savepoint_named("ROLLBACK TO put; RELEASE put");
                other
            }
        }
    }

    /// Adds to this node's shard of one counter pair, refusing an overflow past i64.
    fn bump(&mut self, names: (&str, &str), by: Circulation) -> Result<(), StoreError> {
        for (name, v) in [(names.0, by.value.minor_units()), (names.1, by.count)] {
            if v == 0 {
                continue;
            }
            let node = self.node.to_owned();
            let n = self.exec(
                "INSERT INTO counter_shards(node, name, value) VALUES ($1, $2, $3)
                 ON CONFLICT (node, name) DO UPDATE SET value = counter_shards.value + excluded.value
                 WHERE counter_shards.value <= 9223372036854775807 - excluded.value",
                &[&node, &name, &i(v)?],
            )?;
            if n != 1 {
                return Err(StoreError::Range("counter overflow"));
            }
        }
        Ok(())
    }
}

impl Tx for PgTx<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().map_err(db)
    }
    fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().map_err(db)
    }
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoint_named("SAVEPOINT request")
    }
    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoint_named("RELEASE request")
    }
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoint_named("ROLLBACK TO request; RELEASE request")
    }

    fn create_account(
        &mut self,
        name: &str,
        owner_identity: &[u8],
        password_hash: &str,
        now: u64,
    ) -> Result<AccountId, StoreError> {
        // The id comes from a sequence: nodes opening accounts at once never collide.
        let r = self.query(
            "INSERT INTO accounts(name, owner_identity, password_hash, balance, created_at)
             VALUES ($1, $2, $3, 0, $4) RETURNING id",
            &[&name, &owner_identity, &password_hash, &i(now)?],
        )?;
        let id: i64 = r.first().ok_or(StoreError::Range("no id returned"))?.get(0);
        Ok(AccountId(u(id)?))
    }

    fn account(&mut self, id: AccountId) -> Result<Option<AccountRow>, StoreError> {
        const SQL: &str = concat!(
            "SELECT id, name, owner_identity, password_hash, balance, failed_attempts, locked_until, created_at ",
            "FROM accounts WHERE id = $1"
        );
        self.query_opt(SQL, &[&i(id.0)?])?.as_ref().map(to_account).transpose()
    }

    fn accounts(&mut self) -> Result<Vec<AccountRow>, StoreError> {
        const SQL: &str = concat!(
            "SELECT id, name, owner_identity, password_hash, balance, failed_attempts, locked_until, created_at ",
            "FROM accounts ORDER BY id"
        );
        self.query(SQL, &[])?.iter().map(to_account).collect()
    }

    fn set_login_failures(&mut self, id: AccountId, failed_attempts: u32, locked_until: u64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE accounts SET failed_attempts = $2, locked_until = $3 WHERE id = $1",
            &[&i(id.0)?, &i64::from(failed_attempts), &i(locked_until)?],
        )?;
        Ok(())
    }

    fn set_password_hash(&mut self, id: AccountId, password_hash: &str) -> Result<(), StoreError> {
        if self.exec("UPDATE accounts SET password_hash = $2 WHERE id = $1", &[&i(id.0)?, &password_hash])? == 0 {
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
        let row = self.query_opt(
            "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2 RETURNING balance",
            &[&i(id.0)?, &i(amount.minor_units())?],
        )?;
        match row {
            Some(r) => {
                let b = Amount::new(u(r.get(0))?);
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
        let row = self.query_opt(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance <= $3::BIGINT - $2::BIGINT RETURNING balance",
            &[&i(id.0)?, &i(amount.minor_units())?, &i(Amount::MAX.minor_units())?],
        )?;
        match row {
            Some(r) => {
                let b = Amount::new(u(r.get(0))?);
                self.ledger_entry(id, time, kind, amount, b, memo)?;
                Ok(b)
            }
            None if self.exists(id)? => Err(StoreError::Range("balance would overflow")),
            None => Err(StoreError::NoAccount(id)),
        }
    }

    fn ledger(&mut self, account: AccountId, since: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = self.query(
            "SELECT id, time, kind, amount, balance_after, memo FROM ledger
             WHERE account = $1 AND time >= $2 ORDER BY time, id LIMIT $3",
            &[&i(account.0)?, &i(since)?, &i(limit as u64)?],
        )?;
        rows.iter()
            .map(|r| {
                Ok(LedgerEntry {
                    id: u(r.get(0))?,
                    time: u(r.get(1))?,
                    kind: kind_from_code(r.get(2))?,
                    amount: Amount::new(u(r.get(3))?),
                    balance_after: Amount::new(u(r.get(4))?),
                    memo: BoundedString::truncated(r.get::<_, &str>(5)),
                })
            })
            .collect()
    }

    fn ledger_sums(&mut self) -> Result<Vec<(AccountId, i128)>, StoreError> {
        let rows = self.query("SELECT account, kind, amount FROM ledger ORDER BY account", &[])?;
        fold_ledger_sums(rows.iter().map(|r| Ok((r.get(0), r.get(1), r.get(2)))))
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
        for s in serials {
            if self.query_opt("SELECT 1 FROM serials WHERE serial = $1", &[&&s.0[..]])?.is_none() {
                return Ok(Some(*s));
            }
        }
        Ok(None)
    }

    fn circulation(&mut self) -> Result<Circulation, StoreError> {
        // Summed as NUMERIC, which cannot overflow, and checked on the way back.
        let r = self.query("SELECT COUNT(*), COALESCE(SUM(value), 0)::TEXT FROM serials", &[])?;
        let r = r.first().ok_or(StoreError::Range("no total"))?;
        let value: u64 = r.get::<_, String>(1).parse().map_err(|_| StoreError::Range("total"))?;
        Ok(Circulation { count: u(r.get(0))?, value: Amount::new(value) })
    }

    fn expire(&mut self, now: u64, limit: usize) -> Result<Circulation, StoreError> {
        // SKIP LOCKED: serials a request is spending right now are left to it.
        let rows = self.query(
            "DELETE FROM serials WHERE serial IN
               (SELECT serial FROM serials WHERE expiry < $1 ORDER BY expiry LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING value",
            &[&i(now)?, &i(limit as u64)?],
        )?;
        let mut c = Circulation::default();
        for r in rows {
            c.count += 1;
            c.value = c.value.checked_add(Amount::new(u(r.get(0))?)).map_err(|_| StoreError::Range("total"))?;
        }
        self.bump(EXPIRED, c)?;
        Ok(c)
    }

    fn insert_nonce(&mut self, random: &[u8; 16], expiry: u64) -> Result<bool, StoreError> {
        let n = self.exec(
            "INSERT INTO nonces(random, expiry) VALUES ($1, $2) ON CONFLICT (random) DO NOTHING",
            &[&&random[..], &i(expiry)?],
        )?;
        Ok(n == 1)
    }

    fn purge_nonces(&mut self, now: u64, limit: usize) -> Result<u64, StoreError> {
        self.exec(
            "DELETE FROM nonces WHERE random IN
               (SELECT random FROM nonces WHERE expiry < $1 ORDER BY expiry LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&i(now)?, &i(limit as u64)?],
        )
    }

    fn counters(&mut self) -> Result<Counters, StoreError> {
        let rows = self.query("SELECT name, value FROM counter_shards", &[])?;
        let mut c = Counters::default();
        for r in rows {
            c.add_named(r.get(0), u(r.get(1))?)?;
        }
        Ok(c)
    }

    fn deposit(&mut self, request_id: &[u8; 16]) -> Result<Option<DepositRow>, StoreError> {
        let row = self.query_opt(
            "SELECT account, amount, coins_hash, balance, time FROM deposits WHERE request_id = $1",
            &[&&request_id[..]],
        )?;
        row.map(|r| {
            Ok(DepositRow {
                request_id: *request_id,
                account: AccountId(u(r.get(0))?),
                amount: Amount::new(u(r.get(1))?),
                coins_hash: arr(r.get(2))?,
                balance: Amount::new(u(r.get(3))?),
                time: u(r.get(4))?,
            })
        })
        .transpose()
    }

    fn insert_deposit(&mut self, row: &DepositRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO deposits(request_id, account, amount, coins_hash, balance, time) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &&row.request_id[..],
                &i(row.account.0)?,
                &i(row.amount.minor_units())?,
                &&row.coins_hash[..],
                &i(row.balance.minor_units())?,
                &i(row.time)?,
            ],
        )?;
        Ok(())
    }

    fn issued(&mut self, request_id: &[u8; 16]) -> Result<Option<IssuedRow>, StoreError> {
        let row = self.query_opt(
            "SELECT request_id, input_hash, plan, coins, balance, time FROM issued WHERE request_id = $1",
            &[&&request_id[..]],
        )?;
        row.as_ref().map(to_issued).transpose()
    }

    fn reserve_issue(&mut self, row: &IssuedRow) -> Result<(), StoreError> {
        let balance = row.balance.map(|b| i(b.minor_units())).transpose()?;
        self.exec(
            "INSERT INTO issued(request_id, input_hash, plan, coins, balance, time) VALUES ($1, $2, $3, NULL, $4, $5)",
            &[&&row.request_id[..], &&row.input_hash[..], &row.plan, &balance, &i(row.time)?],
        )?;
        Ok(())
    }

    fn complete_issue(&mut self, request_id: &[u8; 16], rows: &[SerialRow], coins: &[u8]) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE issued SET coins = $2 WHERE request_id = $1 AND coins IS NULL",
            &[&&request_id[..], &coins],
        )?;
        if n != 1 {
            return Ok(false);
        }
        if !self.issue(rows)? {
            return Err(StoreError::Db(DbError::new(DbErrorKind::Unique, "serial collision")));
        }
        Ok(true)
    }

    fn reserved_issues(&mut self, limit: usize) -> Result<Vec<IssuedRow>, StoreError> {
        let rows = self.query(
            "SELECT request_id, input_hash, plan, coins, balance, time FROM issued
             WHERE coins IS NULL ORDER BY time LIMIT $1",
            &[&i(limit as u64)?],
        )?;
        rows.iter().map(to_issued).collect()
    }

    fn unsigned_issues(&mut self, after: Option<(u64, [u8; 16])>, limit: usize) -> Result<Vec<IssuedRow>, StoreError> {
        let prefix = &super::UNSIGNED_COINS[..];
        let (time, id) = match after {
            Some((t, id)) => (i(t)?, id.to_vec()),
            None => (-1, Vec::new()),
        };
        let rows = self.query(
            "SELECT request_id, input_hash, plan, coins, balance, time FROM issued
             WHERE substring(coins from 1 for $2) = $1 AND (time, request_id) > ($3, $4)
             ORDER BY time, request_id LIMIT $5",
            &[&prefix, &(prefix.len() as i32), &time, &id, &i(limit as u64)?],
        )?;
        rows.iter().map(to_issued).collect()
    }

    fn sign_issue(&mut self, request_id: &[u8; 16], unsigned: &[u8], coins: &[u8]) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE issued SET coins = $3 WHERE request_id = $1 AND coins = $2",
            &[&&request_id[..], &unsigned, &coins],
        )?;
        Ok(n == 1)
    }

    fn purge_requests(&mut self, before: u64, limit: usize) -> Result<u64, StoreError> {
        let (before, limit) = (i(before)?, i(limit as u64)?);
        let a = self.exec(
            "DELETE FROM issued WHERE request_id IN
               (SELECT request_id FROM issued WHERE time < $1 AND coins IS NOT NULL ORDER BY time LIMIT $2
                FOR UPDATE SKIP LOCKED)",
            &[&before, &limit],
        )?;
        let b = self.exec(
            "DELETE FROM deposits WHERE request_id IN
               (SELECT request_id FROM deposits WHERE time < $1 ORDER BY time LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&before, &limit],
        )?;
        Ok(a + b)
    }

    fn insert_clearing(&mut self, r: &ClearingRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO clearing(request_id, peer_request_id, peer, account, local_serials, foreign_coins,
             local_amount, foreign_amount, coins_hash, state, reason, time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &&r.request_id[..],
                &&r.peer_request_id[..],
                &r.peer,
                &i(r.account.0)?,
                &r.local_serials,
                &r.foreign_coins,
                &i(r.local_amount.minor_units())?,
                &i(r.foreign_amount.minor_units())?,
                &&r.coins_hash[..],
                &r.state,
                &r.reason,
                &i(r.time)?,
            ],
        )?;
        Ok(())
    }

    fn clearing(&mut self, request_id: &[u8; 16]) -> Result<Option<ClearingRow>, StoreError> {
        let row = self.query_opt(
            "SELECT request_id, peer_request_id, peer, account, local_serials, foreign_coins, \
             local_amount, foreign_amount, coins_hash, state, reason, time FROM clearing WHERE request_id = $1",
            &[&&request_id[..]],
        )?;
        row.as_ref().map(to_clearing).transpose()
    }

    fn settle_clearing(&mut self, request_id: &[u8; 16], held: Circulation) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE clearing SET state = 'settled' WHERE request_id = $1 AND state = 'pending'",
            &[&&request_id[..]],
        )?;
        if n != 1 {
            return Ok(false);
        }
        self.bump(REDEEMED, held)?;
        Ok(true)
    }

    fn undo_clearing(&mut self, request_id: &[u8; 16], held: &[SerialRow], reason: &str) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE clearing SET state = 'failed', reason = $2 WHERE request_id = $1 AND state = 'pending'",
            &[&&request_id[..], &reason],
        )?;
        if n != 1 {
            return Ok(false);
        }
        if !self.put(held)? {
            return Err(StoreError::Db(DbError::new(DbErrorKind::Unique, "a held serial is back in circulation")));
        }
        Ok(true)
    }

    fn pending_clearings(&mut self, limit: usize) -> Result<Vec<ClearingRow>, StoreError> {
        let rows = self.query(
            "SELECT request_id, peer_request_id, peer, account, local_serials, foreign_coins, \
             local_amount, foreign_amount, coins_hash, state, reason, time FROM clearing \
             WHERE state = 'pending' ORDER BY time LIMIT $1",
            &[&i(limit as u64)?],
        )?;
        rows.iter().map(to_clearing).collect()
    }

    fn held_by_clearings(&mut self) -> Result<Circulation, StoreError> {
        let rows = self.query("SELECT local_serials FROM clearing WHERE state = 'pending'", &[])?;
        fold_held(rows.iter().map(|r| Ok(r.get(0))))
    }

    fn clearing_totals(&mut self) -> Result<Vec<(String, Amount)>, StoreError> {
        let rows =
            self.query("SELECT peer, foreign_amount FROM clearing WHERE state = 'settled' ORDER BY peer", &[])?;
        fold_clearing_totals(rows.iter().map(|r| Ok((r.get(0), r.get(1)))))
    }

    fn audit_event(&mut self, time: u64, event: &str, detail: &str) -> Result<(), StoreError> {
        self.exec("INSERT INTO audit_log(time, event, detail) VALUES ($1, $2, $3)", &[&i(time)?, &event, &detail])?;
        Ok(())
    }
}
