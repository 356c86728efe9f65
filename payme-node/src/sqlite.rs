//! Opening SQLite for money: WAL with `synchronous=FULL`, numbered migrations, and errors
//! that keep their kind. A caller decides on the kind (a constraint is the request's
//! doing, busy may be retried, corrupt stops the daemon); the message is for people.

use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use std::path::Path;

/// What kind of failure a database error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A CHECK, NOT NULL or foreign key constraint refused the change.
    Constraint,
    /// A UNIQUE or PRIMARY KEY constraint refused an insert: another writer got the key
    /// first (PostgreSQL 23505). Retryable: the retry reads what the other one wrote.
    Unique,
    /// Two transactions collided: a serialization failure or a deadlock (PostgreSQL 40001,
    /// 40P01). Retryable: nothing of the failed attempt was kept.
    Conflict,
    /// Another connection holds the lock (after the busy timeout), or a checkpoint was
    /// blocked by a reader.
    Busy,
    /// The file is damaged or not a database.
    Corrupt,
    /// The operating system failed a read or write (disk full, I/O error, cannot open).
    Io,
    /// Anything else (a query that does not fit the schema, a missing row, a value of
    /// the wrong type).
    Other,
}

impl std::fmt::Display for DbErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbErrorKind::Constraint => "constraint",
            DbErrorKind::Unique => "unique key taken",
            DbErrorKind::Conflict => "conflict",
            DbErrorKind::Busy => "busy",
            DbErrorKind::Corrupt => "corrupt",
            DbErrorKind::Io => "I/O",
            DbErrorKind::Other => "other",
        })
    }
}

/// A database error: its kind and SQLite's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("database error ({kind}): {message}")]
pub struct DbError {
    pub kind: DbErrorKind,
    pub message: String,
}

impl DbErrorKind {
    /// Whether running the same work again may succeed: busy, conflict, a unique key taken
    /// by a concurrent writer. Never a damaged database or a refused value.
    pub fn retryable(self) -> bool {
        matches!(self, DbErrorKind::Busy | DbErrorKind::Conflict | DbErrorKind::Unique)
    }
}

impl DbError {
    pub fn new(kind: DbErrorKind, message: impl Into<String>) -> Self {
        DbError { kind, message: message.into() }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        let extended = match &e {
            rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
            _ => 0,
        };
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation)
                if extended == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || extended == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                DbErrorKind::Unique
            }
            Some(ErrorCode::ConstraintViolation) => DbErrorKind::Constraint,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DbErrorKind::Busy,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => DbErrorKind::Corrupt,
            Some(ErrorCode::SystemIoFailure | ErrorCode::DiskFull | ErrorCode::CannotOpen) => DbErrorKind::Io,
            _ => DbErrorKind::Other,
        };
        DbError { kind, message: e.to_string() }
    }
}

/// Opening or migrating a database failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database schema version {found} is newer than this program knows ({known})")]
    NewerSchema { found: i64, known: i64 },
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Db(e.into())
    }
}

/// Opens a SQLite database for durable writing: WAL, `synchronous=FULL` (a committed
/// transaction survives power loss; NORMAL could un-spend a coin), foreign keys on, a
/// 10 s busy timeout. Bank and wallet open their databases this way.
pub fn open_durable(path: &Path) -> Result<Connection, DbError> {
    create_private(path)?;
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Applies the numbered `migrations` newer than the database's schema, in one
/// transaction, recording each in `schema_migrations`; refuses a database written by a
/// newer program. Never edit a migration that has shipped: add the next one.
pub fn apply_migrations(conn: &mut Connection, migrations: &[(i64, &str)]) -> Result<(), OpenError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
    let known = migrations.last().map(|m| m.0).unwrap_or(0);
    if current > known {
        return Err(OpenError::NewerSchema { found: current, known });
    }
    let now = i64::try_from(pmtp_client::clock::now()).unwrap_or(i64::MAX);
    for (version, sql) in migrations.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql)?;
        tx.execute("INSERT INTO schema_migrations(version, applied_at) VALUES (?1, ?2)", params![version, now])?;
    }
    Ok(tx.commit()?)
}

/// Creates the database file `path` with mode 0600 if it does not exist yet, before SQLite
/// opens it: SQLite gives its -wal and -shm files the database file's mode, so money data
/// is never readable by other users, whatever the umask or the directory's mode.
fn create_private(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |e: std::io::Error| DbError::new(DbErrorKind::Io, format!("cannot create {}: {e}", path.display()));
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        // A database made before files were created private: made so now.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)
            }
            _ => Ok(()),
        },
        Err(e) => Err(failed(e)),
    }
}

/// Creates `path` with mode 0600, failing if anything is there already (a file, or a
/// symbolic link someone planted: O_EXCL does not follow it).
fn create_exclusive(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| DbError::new(DbErrorKind::Io, format!("cannot create {}: {e}", path.display())))
}

/// Copies the database at `db` to a new file `to` while daemons keep using it (SQLite's
/// online backup: one consistent snapshot, whatever commits meanwhile), then makes the
/// copy durable (fsync, rename into place, fsync of the directory). Refuses to replace an
/// existing file. Returns the copy's size in bytes.
pub fn backup(db: &Path, to: &Path) -> Result<u64, DbError> {
    use std::io::ErrorKind;
    let io =
        |what: &str, p: &Path, e: std::io::Error| DbError::new(DbErrorKind::Io, format!("{what} {}: {e}", p.display()));
    if to.exists() {
        return Err(io("will not replace", to, std::io::Error::from(ErrorKind::AlreadyExists)));
    }
    if !db.exists() {
        return Err(io("no database at", db, std::io::Error::from(ErrorKind::NotFound)));
    }
    let tmp = to.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let copied = (|| {
        let src = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        src.busy_timeout(std::time::Duration::from_secs(10))?;
        create_exclusive(&tmp)?;
        let mut dst = Connection::open(&tmp)?;
        // All pages in one step: one read snapshot of the source, so the copy is one
        // consistent state even while the daemon commits.
        let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // Bounded: a writer holding the lock makes a step answer Busy; 200 tries, 10 s.
        for _ in 0..200 {
            match b.step(-1)? {
                rusqlite::backup::StepResult::Done => return Ok(()),
                rusqlite::backup::StepResult::More => {}
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        Err(DbError::new(DbErrorKind::Busy, "the database stayed busy; the backup did not finish"))
    })();
    if let Err(e) = copied {
        // Nothing half-written is left to be mistaken for a backup.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let f = std::fs::File::open(&tmp).map_err(|e| io("cannot open", &tmp, e))?;
    f.sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
    let size = f.metadata().map_err(|e| io("cannot read", &tmp, e))?.len();
    std::fs::rename(&tmp, to).map_err(|e| io("cannot rename to", to, e))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_whole_never_overwrites_and_leaves_nothing_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let conn = open_durable(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (42);").unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [db.clone(), dir.path().join("a.db-wal"), dir.path().join("a.db-shm")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is its owner's only: {mode:o}", f.display());
        }
        let copy = dir.path().join("copy.db");
        assert!(backup(&db, &copy).unwrap() > 0);
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the copy is readable by its owner only: {mode:o}");
        let back = Connection::open(&copy).unwrap();
        assert_eq!(back.query_row("SELECT v FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 42);
        assert_eq!(backup(&db, &copy).unwrap_err().kind, DbErrorKind::Io, "never overwrites");
        // Not a database: the backup fails, and no partial file is left behind.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        let out = dir.path().join("out.db");
        assert!(backup(&junk, &out).is_err());
        assert!(!out.exists() && !out.with_extension("partial").exists());
        assert!(backup(&dir.path().join("none.db"), &out).is_err());
    }

    #[test]
    fn errors_keep_their_kind() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply_migrations(
            &mut conn,
            &[(1, "CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL CHECK (v >= 0))")],
        )
        .unwrap();
        conn.execute("INSERT INTO t VALUES (1, 1)", []).unwrap();
        let dup = DbError::from(conn.execute("INSERT INTO t VALUES (1, 2)", []).unwrap_err());
        assert_eq!(dup.kind, DbErrorKind::Unique, "{dup}");
        assert!(dup.kind.retryable());
        let neg = DbError::from(conn.execute("INSERT INTO t VALUES (2, -1)", []).unwrap_err());
        assert_eq!(neg.kind, DbErrorKind::Constraint, "{neg}");
        let bad = DbError::from(conn.execute("INSERT INTO nowhere VALUES (1)", []).unwrap_err());
        assert_eq!(bad.kind, DbErrorKind::Other, "{bad}");
        assert!(bad.to_string().contains("nowhere"), "the message is kept: {bad}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.db");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let e = open_durable(&path)
            .map_err(OpenError::from)
            .and_then(|mut c| apply_migrations(&mut c, &[(1, "CREATE TABLE t (k INTEGER)")]))
            .unwrap_err();
        assert!(matches!(e, OpenError::Db(DbError { kind: DbErrorKind::Corrupt, .. })), "{e}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply_migrations(&mut conn, &[(1, "CREATE TABLE a (k INTEGER)"), (2, "CREATE TABLE b (k INTEGER)")]).unwrap();
        let e = apply_migrations(&mut conn, &[(1, "CREATE TABLE a (k INTEGER)")]).unwrap_err();
        assert!(matches!(e, OpenError::NewerSchema { found: 2, known: 1 }), "{e}");
    }
}
