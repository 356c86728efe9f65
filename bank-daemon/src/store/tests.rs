//! Store conformance tests, written once against [`Store`]/[`Tx`] and stamped per backend
//! by `store_conformance!`.

use super::*;
use pmtp_proto::bank_statement::EntryKind;

fn serial(b: u8) -> Serial {
    Serial([b; 16])
}

fn row(b: u8, value: u64, expiry: u64) -> SerialRow {
    SerialRow { serial: serial(b), value: Amount::new(value), expiry, key_id: KeyId([7; 8]) }
}

pub fn serials_are_removed_once(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    assert!(tx.insert_serial(&row(1, 8, 100)).unwrap());
    assert!(!tx.insert_serial(&row(1, 8, 100)).unwrap(), "duplicate serial is not inserted twice");
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.remove_serial(&serial(1)).unwrap(), Some(row(1, 8, 100)));
    assert_eq!(tx.remove_serial(&serial(1)).unwrap(), None);
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    assert_eq!(tx.circulation().unwrap(), Circulation::default());
}

pub fn rollback_and_savepoints_undo_work(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    tx.insert_serial(&row(2, 4, 100)).unwrap();
    tx.rollback().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.circulation().unwrap().count, 0, "rolled back");
    tx.insert_serial(&row(3, 4, 100)).unwrap();
    tx.savepoint().unwrap();
    tx.insert_serial(&row(4, 4, 100)).unwrap();
    tx.rollback_to_savepoint().unwrap();
    tx.savepoint().unwrap();
    tx.insert_serial(&row(5, 2, 100)).unwrap();
    tx.release_savepoint().unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.circulation().unwrap(), Circulation { count: 2, value: Amount::new(6) });
    // Dropping a transaction without commit rolls it back.
    tx.insert_serial(&row(6, 1, 100)).unwrap();
    drop(tx);
    let mut tx = store.begin_read().unwrap();
    assert_eq!(tx.circulation().unwrap().count, 2);
}

pub fn accounts_ledger_and_sums(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    let a = tx.create_account("alice", b"identity", "$argon2id$hash", 10).unwrap();
    let b = tx.create_account("bob", b"identity2", "$argon2id$hash2", 11).unwrap();
    assert_ne!(a, b);
    tx.set_balance(a, Amount::new(100)).unwrap();
    tx.add_ledger_entry(a, 20, EntryKind::CounterCredit, Amount::new(100), Amount::new(100), "paid in").unwrap();
    tx.set_balance(a, Amount::new(70)).unwrap();
    tx.add_ledger_entry(a, 30, EntryKind::Withdrawal, Amount::new(30), Amount::new(70), "").unwrap();
    tx.set_login_failures(a, 3, 99).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    let acct = tx.account(a).unwrap().unwrap();
    assert_eq!(
        (acct.name.as_str(), acct.balance, acct.failed_attempts, acct.locked_until),
        ("alice", Amount::new(70), 3, 99)
    );
    assert_eq!(tx.account(AccountId(999_999)).unwrap(), None);
    assert!(matches!(
        tx.set_balance(AccountId(999_999), Amount::new(1)),
        Err(StoreError::NoAccount(AccountId(999_999)))
    ));
    assert_eq!(tx.accounts().unwrap().len(), 2);
    let all = tx.ledger(a, 0, 100).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].kind, EntryKind::Withdrawal);
    assert_eq!(tx.ledger(a, 25, 100).unwrap().len(), 1, "since filters");
    assert_eq!(tx.ledger(a, 0, 1).unwrap().len(), 1, "limit applies");
    assert_eq!(tx.ledger_sums().unwrap(), vec![(a, 70)]);
}

pub fn nonces_refuse_replays_and_purge(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    assert!(tx.insert_nonce(&[1; 16], 100).unwrap());
    assert!(!tx.insert_nonce(&[1; 16], 100).unwrap());
    assert!(tx.insert_nonce(&[2; 16], 200).unwrap());
    assert_eq!(tx.purge_nonces(150, 10).unwrap(), 1);
    assert!(tx.insert_nonce(&[1; 16], 300).unwrap(), "purged nonce space is reusable");
    tx.commit().unwrap();
}

pub fn counters_and_expiry_purge(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    for b in 0..10u8 {
        tx.insert_serial(&row(b, 2, 50 + b as u64)).unwrap();
    }
    tx.add_counters(&CounterDelta { minted: (Amount::new(20), 10), ..Default::default() }).unwrap();
    let purged = tx.purge_expired_serials(55, 3).unwrap();
    assert_eq!(purged, Circulation { count: 3, value: Amount::new(6) }, "bounded batch, oldest first");
    tx.add_counters(&CounterDelta { expired: (purged.value, purged.count), ..Default::default() }).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    let c = tx.counters().unwrap();
    assert_eq!((c.minted_value, c.minted_count, c.expired_count), (Amount::new(20), 10, 3));
    drop(tx);
    let mut tx = store.begin().unwrap();
    let huge = CounterDelta { minted: (Amount::new(i64::MAX as u64), 0), ..Default::default() };
    assert!(matches!(tx.add_counters(&huge), Err(StoreError::Range(_))), "overflow is refused");
    assert_eq!(c.expected_circulation(), Some(tx.circulation().unwrap().value));
}

pub fn deposits_are_remembered(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    let a = tx.create_account("m", b"id", "h", 1).unwrap();
    let d = DepositRow {
        request_id: [9; 16],
        account: a,
        amount: Amount::new(5),
        coins_hash: [1; 32],
        balance: Amount::new(5),
        time: 3,
    };
    assert_eq!(tx.deposit(&[9; 16]).unwrap(), None);
    tx.insert_deposit(&d).unwrap();
    let again = tx.insert_deposit(&d).unwrap_err();
    assert_eq!(again.kind(), Some(DbErrorKind::Constraint), "request ids are unique, and say so: {again}");
    tx.audit_event(3, "test", "detail").unwrap();
    let issued = IssuedRow { request_id: [8; 16], input_hash: [2; 32], coins: vec![1, 2, 3], balance: None, time: 3 };
    tx.insert_issued(&issued).unwrap();
    let again = tx.insert_issued(&issued).unwrap_err();
    assert_eq!(again.kind(), Some(DbErrorKind::Constraint), "request ids are unique, and say so: {again}");
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.deposit(&[9; 16]).unwrap(), Some(d));
    assert_eq!(tx.issued(&[8; 16]).unwrap(), Some(issued));
    assert_eq!(tx.purge_requests(3, 10).unwrap(), 0, "strictly older only");
    assert_eq!(tx.purge_requests(4, 10).unwrap(), 2);
    assert_eq!(tx.issued(&[8; 16]).unwrap(), None);
    let c = ClearingRow {
        request_id: [1; 16],
        peer_request_id: [2; 16],
        peer: "bank-b".into(),
        account: a,
        local_serials: vec![],
        foreign_coins: vec![9],
        local_amount: Amount::new(1),
        foreign_amount: Amount::new(4),
        coins_hash: [3; 32],
        state: "pending".into(),
        reason: String::new(),
        time: 5,
    };
    tx.insert_clearing(&c).unwrap();
    assert_eq!(tx.pending_clearings(10).unwrap(), vec![c.clone()]);
    assert_eq!(tx.clearing_totals().unwrap(), vec![]);
    tx.set_clearing_state(&[1; 16], "settled", "").unwrap();
    assert_eq!(tx.clearing(&[1; 16]).unwrap().unwrap().state, "settled");
    assert!(tx.pending_clearings(10).unwrap().is_empty());
    assert_eq!(tx.clearing_totals().unwrap(), vec![("bank-b".to_string(), Amount::new(4))]);
}

/// Stamps every conformance test for one backend: `store_conformance!(module, || make())`.
macro_rules! store_conformance {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;
            #[test]
            fn serials_are_removed_once() {
                super::serials_are_removed_once(&mut $make);
            }
            #[test]
            fn rollback_and_savepoints_undo_work() {
                super::rollback_and_savepoints_undo_work(&mut $make);
            }
            #[test]
            fn accounts_ledger_and_sums() {
                super::accounts_ledger_and_sums(&mut $make);
            }
            #[test]
            fn nonces_refuse_replays_and_purge() {
                super::nonces_refuse_replays_and_purge(&mut $make);
            }
            #[test]
            fn counters_and_expiry_purge() {
                super::counters_and_expiry_purge(&mut $make);
            }
            #[test]
            fn deposits_are_remembered() {
                super::deposits_are_remembered(&mut $make);
            }
        }
    };
}

store_conformance!(sqlite_memory, sqlite::SqliteStore::in_memory().unwrap());

mod sqlite_file {
    use super::*;

    fn file_store() -> (tempfile::TempDir, sqlite::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = sqlite::SqliteStore::open(&dir.path().join("bank.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn conformance_on_disk() {
        for f in [
            super::serials_are_removed_once,
            super::rollback_and_savepoints_undo_work,
            super::accounts_ledger_and_sums,
            super::nonces_refuse_replays_and_purge,
            super::counters_and_expiry_purge,
            super::deposits_are_remembered,
        ] {
            let (_dir, mut s) = file_store();
            f(&mut s);
        }
    }

    #[test]
    fn migrations_are_recorded_and_reopen_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.db");
        let s = sqlite::SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 3);
        drop(s);
        let s = sqlite::SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 3);
        let mode: String =
            rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
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
