//! The conformance suite ([`super::conformance`]) stamped for SQLite: in memory, on disk,
//! and on disk with competing connections; and SQLite's own migrations.

use super::conformance::{CONCURRENT, SINGLE};
use super::*;

#[test]
fn conformance_in_memory() {
    for (name, f) in SINGLE {
        eprintln!("sqlite in memory: {name}");
        f(&mut sqlite::SqliteStore::in_memory().unwrap());
    }
}

mod sqlite_file {
    use super::*;

    fn file_store() -> (tempfile::TempDir, sqlite::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = sqlite::SqliteStore::open(&dir.path().join("bank.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn conformance_on_disk() {
        for (name, f) in SINGLE {
            eprintln!("sqlite on disk: {name}");
            let (_dir, mut s) = file_store();
            f(&mut s);
        }
    }

    /// Competing transactions on separate connections to one file, as two processes.
    #[test]
    fn conformance_competing_connections() {
        for (name, f) in CONCURRENT {
            eprintln!("sqlite, competing connections: {name}");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bank.db");
            drop(sqlite::SqliteStore::open(&path).unwrap());
            f(&move || Box::new(sqlite::SqliteStore::open(&path).unwrap()) as Box<dyn Store>);
        }
    }

    /// A database of schema 3 (one counters row per counter, issued rows without a
    /// plan) keeps its totals and its issued coins through migration 4.
    #[test]
    fn migration_4_keeps_counters_and_issued_coins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.db");
        let mut conn = payme_node::sqlite::open_durable(&path).unwrap();
        payme_node::sqlite::apply_migrations(&mut conn, &sqlite::MIGRATIONS[..3]).unwrap();
        conn.execute_batch(
            "UPDATE counters SET value = 12 WHERE name = 'minted_value';
             UPDATE counters SET value = 2 WHERE name = 'minted_count';
             INSERT INTO serials VALUES (x'01010101010101010101010101010101', 12, 100, x'0707070707070707');
             INSERT INTO issued VALUES (x'08080808080808080808080808080808', zeroblob(32), x'aa', NULL, 5);",
        )
        .unwrap();
        drop(conn);
        let mut s = sqlite::SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), sqlite::MIGRATIONS.len() as i64);
        let mut tx = s.begin_read().unwrap();
        let c = tx.counters().unwrap();
        assert_eq!((c.minted_value, c.minted_count), (Amount::new(12), 2));
        let issued = tx.issued(&[8; 16]).unwrap().unwrap();
        assert_eq!(issued.coins.as_deref(), Some(&[0xaa][..]));
        assert!(tx.reserved_issues(10).unwrap().is_empty());
    }

    #[test]
    fn migrations_are_recorded_and_reopen_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.db");
        let s = sqlite::SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 4);
        drop(s);
        let s = sqlite::SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 4);
        let mode: String =
            rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    /// The serving writer leaves checkpoints to a thread of its own: its commits take the
    /// log past the threshold, and the thread (not a commit) copies it into the database
    /// file, which grows while the writer goes on.
    #[test]
    fn a_thread_of_its_own_copies_the_log_into_the_database() {
        use pmtp_proto::keys::KeyId;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.db");
        let mut s = sqlite::SqliteStore::open(&path).unwrap();
        s.checkpoint_in_background().unwrap();
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        let row = |n: u32| {
            let mut serial = [0u8; 16];
            serial[..4].copy_from_slice(&n.to_be_bytes());
            SerialRow { serial: Serial(serial), value: Amount::new(1), expiry: 100, key_id: KeyId([0; 8]) }
        };
        // Commits of 500 serials until the log holds more pages than the threshold
        // (bounded: a few hundred commits).
        let wal_len = || std::fs::metadata(dir.path().join("bank.db-wal")).map(|m| m.len()).unwrap_or(0);
        let past = (u64::try_from(sqlite::CHECKPOINT_PAGES).unwrap() + 100) * 4096;
        let mut issued = 0u32;
        while wal_len() < past && issued < 1_000_000 {
            let mut tx = s.begin().unwrap();
            let rows: Vec<SerialRow> = (0..500).map(|i| row(issued + i)).collect();
            assert!(tx.issue(&rows).unwrap());
            tx.commit().unwrap();
            issued += 500;
        }
        assert!(wal_len() >= past, "the log never grew past the threshold");
        // Bounded: the thread's passive checkpoint lands within seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while db_len() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(db_len() > before, "the log was not copied into the database");
        assert_eq!(s.begin_read().unwrap().circulation().unwrap().count, u64::from(issued));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.db");
        drop(sqlite::SqliteStore::open(&path).unwrap());
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("INSERT INTO schema_migrations(version, applied_at) VALUES (99, 0)", [])
            .unwrap();
        assert!(matches!(sqlite::SqliteStore::open(&path), Err(StoreError::NewerSchema { found: 99, .. })));
    }
}
