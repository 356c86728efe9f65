//! The store conformance suite: written once against [`Store`]/[`Tx`], run against every
//! backend (SQLite here in `tests.rs`; PostgreSQL by the `payme-tests` crate, which starts
//! a server). [`SINGLE`] takes one fresh store each; [`CONCURRENT`] takes a way to open
//! more connections to one fresh database and makes transactions on separate
//! connections compete, as several bank nodes do.
//!
//! Panics are the verdict: these are test helpers, exported so other crates can run them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use pmtp_proto::bank_statement::EntryKind;
use std::sync::{Arc, Barrier};

/// Opens a new connection to the database under test (one per competing thread).
pub type Opener = dyn Fn() -> Box<dyn Store> + Send + Sync;

/// A test on one fresh store.
pub type SingleTest = fn(&mut dyn Store);
/// A test of competing connections to one fresh database.
pub type ConcurrentTest = fn(&Opener);

/// Every single-connection test, by name.
pub const SINGLE: &[(&str, SingleTest)] = &[
    ("spend_takes_all_or_none_and_counts", spend_takes_all_or_none_and_counts),
    ("rollback_and_savepoints_undo_work", rollback_and_savepoints_undo_work),
    ("debit_never_goes_negative_and_credit_never_overflows", debit_never_goes_negative_and_credit_never_overflows),
    ("accounts_ledger_and_sums", accounts_ledger_and_sums),
    ("nonces_refuse_replays_and_purge", nonces_refuse_replays_and_purge),
    ("expiry_is_counted", expiry_is_counted),
    ("requests_are_remembered", requests_are_remembered),
    ("issue_is_reserved_then_completed_once", issue_is_reserved_then_completed_once),
    ("unsigned_coins_are_found_and_signed_once", unsigned_coins_are_found_and_signed_once),
    ("clearing_holds_then_settles_or_undoes", clearing_holds_then_settles_or_undoes),
];

/// Every test of competing connections, by name.
pub const CONCURRENT: &[(&str, ConcurrentTest)] = &[
    ("concurrent_spends_of_one_serial_have_one_winner", concurrent_spends_of_one_serial_have_one_winner),
    ("concurrent_debits_never_overdraw", concurrent_debits_never_overdraw),
    ("concurrent_account_creation_gives_distinct_ids", concurrent_account_creation_gives_distinct_ids),
    ("concurrent_completions_issue_once", concurrent_completions_issue_once),
];

fn serial(b: u8) -> Serial {
    Serial([b; 16])
}

fn row(b: u8, value: u64, expiry: u64) -> SerialRow {
    SerialRow { serial: serial(b), value: Amount::new(value), expiry, key_id: KeyId([7; 8]) }
}

/// The books balance: `minted - redeemed - expired = circulating + held`, and every
/// account's ledger sums to its balance.
pub fn assert_books_balance(store: &mut dyn Store) {
    let mut tx = store.begin_read().unwrap();
    let c = tx.counters().unwrap();
    let circulating = tx.circulation().unwrap();
    let held = tx.held_by_clearings().unwrap();
    let expected = c.expected_circulation().expect("counters go negative");
    assert_eq!(expected, circulating.value.checked_add(held.value).unwrap(), "value: {c:?}");
    let n = c.minted_count - c.redeemed_count - c.expired_count;
    assert_eq!(n, circulating.count + held.count, "count: {c:?}");
    let sums: std::collections::HashMap<AccountId, i128> = tx.ledger_sums().unwrap().into_iter().collect();
    for a in tx.accounts().unwrap() {
        assert_eq!(sums.get(&a.id).copied().unwrap_or(0), a.balance.minor_units() as i128, "ledger of {}", a.id);
    }
}

pub fn spend_takes_all_or_none_and_counts(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    assert!(tx.issue(&[row(1, 8, 100), row(2, 4, 100)]).unwrap());
    assert!(!tx.issue(&[row(3, 1, 100), row(1, 8, 100)]).unwrap(), "a collision issues nothing");
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.circulation().unwrap(), Circulation { count: 2, value: Amount::new(12) });
    assert_eq!(tx.spend(&[serial(3), serial(1)]).unwrap(), Spend::Missing(serial(3)));
    assert_eq!(tx.circulation().unwrap().count, 2, "a refused spend takes nothing out");
    assert_eq!(tx.first_missing_serial(&[serial(1), serial(3)]).unwrap(), Some(serial(3)));
    assert_eq!(tx.spend(&[serial(2), serial(1)]).unwrap(), Spend::Spent(vec![row(1, 8, 100), row(2, 4, 100)]));
    assert_eq!(tx.spend(&[serial(1)]).unwrap(), Spend::Missing(serial(1)), "spent once only");
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    let c = tx.counters().unwrap();
    assert_eq!((c.minted_value, c.minted_count), (Amount::new(12), 2));
    assert_eq!((c.redeemed_value, c.redeemed_count), (Amount::new(12), 2));
    assert_eq!(tx.circulation().unwrap(), Circulation::default());
    drop(tx);
    assert_books_balance(store);
}

pub fn rollback_and_savepoints_undo_work(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    tx.issue(&[row(2, 4, 100)]).unwrap();
    tx.rollback().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.circulation().unwrap().count, 0, "rolled back");
    assert_eq!(tx.counters().unwrap(), Counters::default(), "the counters with it");
    tx.issue(&[row(3, 4, 100)]).unwrap();
    tx.savepoint().unwrap();
    tx.issue(&[row(4, 4, 100)]).unwrap();
    tx.rollback_to_savepoint().unwrap();
    tx.savepoint().unwrap();
    tx.issue(&[row(5, 2, 100)]).unwrap();
    tx.release_savepoint().unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.circulation().unwrap(), Circulation { count: 2, value: Amount::new(6) });
    // Dropping a transaction without commit rolls it back.
    tx.issue(&[row(6, 1, 100)]).unwrap();
    drop(tx);
    let mut tx = store.begin_read().unwrap();
    assert_eq!(tx.circulation().unwrap().count, 2);
    drop(tx);
    assert_books_balance(store);
}

pub fn debit_never_goes_negative_and_credit_never_overflows(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    let a = tx.create_account("alice", b"identity", "$argon2id$hash", 10).unwrap();
    assert_eq!(tx.credit(a, Amount::new(100), 20, EntryKind::CounterCredit, "in").unwrap(), Amount::new(100));
    assert_eq!(tx.debit(a, Amount::new(30), 21, EntryKind::Withdrawal, "").unwrap(), Some(Amount::new(70)));
    assert_eq!(tx.debit(a, Amount::new(71), 22, EntryKind::Withdrawal, "").unwrap(), None, "would go negative");
    assert_eq!(tx.debit(a, Amount::new(70), 23, EntryKind::Withdrawal, "").unwrap(), Some(Amount::ZERO));
    assert!(matches!(tx.credit(a, Amount::MAX, 24, EntryKind::Deposit, "").unwrap(), b if b == Amount::MAX));
    assert!(
        matches!(tx.credit(a, Amount::new(1), 25, EntryKind::Deposit, ""), Err(StoreError::Range(_))),
        "past the largest amount is refused"
    );
    let nobody = AccountId(999_999);
    assert!(matches!(tx.debit(nobody, Amount::new(1), 1, EntryKind::Withdrawal, ""), Err(StoreError::NoAccount(_))));
    assert!(matches!(tx.credit(nobody, Amount::new(1), 1, EntryKind::Deposit, ""), Err(StoreError::NoAccount(_))));
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    let ledger = tx.ledger(a, 0, 100).unwrap();
    assert_eq!(ledger.len(), 4, "refused operations leave no ledger entry");
    assert_eq!(ledger.last().unwrap().balance_after, Amount::MAX);
    drop(tx);
    assert_books_balance(store);
}

pub fn accounts_ledger_and_sums(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    let a = tx.create_account("alice", b"identity", "$argon2id$hash", 10).unwrap();
    let b = tx.create_account("bob", b"identity2", "$argon2id$hash2", 11).unwrap();
    assert_ne!(a, b);
    assert!(a.0 > 1000, "account numbers never look like small counts");
    tx.credit(a, Amount::new(100), 20, EntryKind::CounterCredit, "paid in").unwrap();
    tx.debit(a, Amount::new(30), 30, EntryKind::Withdrawal, "").unwrap();
    tx.set_login_failures(a, 3, 99).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    let acct = tx.account(a).unwrap().unwrap();
    assert_eq!(
        (acct.name.as_str(), acct.balance, acct.failed_attempts, acct.locked_until),
        ("alice", Amount::new(70), 3, 99)
    );
    assert_eq!(tx.account(AccountId(999_999)).unwrap(), None);
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

pub fn expiry_is_counted(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    let rows: Vec<_> = (0..10u8).map(|b| row(b, 2, 50 + b as u64)).collect();
    assert!(tx.issue(&rows).unwrap());
    let purged = tx.expire(55, 3).unwrap();
    assert_eq!(purged, Circulation { count: 3, value: Amount::new(6) }, "bounded batch, oldest first");
    tx.commit().unwrap();
    let mut tx = store.begin_read().unwrap();
    let c = tx.counters().unwrap();
    assert_eq!(
        (c.minted_value, c.minted_count, c.expired_value, c.expired_count),
        (Amount::new(20), 10, Amount::new(6), 3)
    );
    drop(tx);
    assert_books_balance(store);
}

pub fn requests_are_remembered(store: &mut dyn Store) {
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
    // After an error the work since the savepoint is rolled back (PostgreSQL refuses any
    // further statement until then; the writer runs every job in a savepoint).
    tx.savepoint().unwrap();
    let again = tx.insert_deposit(&d).unwrap_err();
    tx.rollback_to_savepoint().unwrap();
    assert_eq!(again.kind(), Some(DbErrorKind::Unique), "request ids are unique, and say so: {again}");
    assert!(again.retryable(), "a retry reads the other writer's row");
    tx.audit_event(3, "test", "detail").unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.deposit(&[9; 16]).unwrap(), Some(d));
    assert_eq!(tx.purge_requests(3, 10).unwrap(), 0, "strictly older only");
    assert_eq!(tx.purge_requests(4, 10).unwrap(), 1);
    assert_eq!(tx.deposit(&[9; 16]).unwrap(), None);
    tx.commit().unwrap();
}

fn reserved(id: u8, time: u64) -> IssuedRow {
    IssuedRow {
        request_id: [id; 16],
        input_hash: [2; 32],
        plan: vec![4, 5],
        coins: None,
        balance: Some(Amount::new(3)),
        time,
    }
}

pub fn issue_is_reserved_then_completed_once(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    tx.reserve_issue(&reserved(8, 3)).unwrap();
    tx.savepoint().unwrap();
    let again = tx.reserve_issue(&reserved(8, 3)).unwrap_err();
    tx.rollback_to_savepoint().unwrap();
    assert_eq!(again.kind(), Some(DbErrorKind::Unique), "{again}");
    tx.reserve_issue(&reserved(7, 4)).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.issued(&[8; 16]).unwrap(), Some(reserved(8, 3)));
    assert_eq!(tx.reserved_issues(10).unwrap(), vec![reserved(8, 3), reserved(7, 4)], "oldest first");
    assert_eq!(tx.purge_requests(100, 10).unwrap(), 0, "reserved requests are kept until finished");
    assert!(tx.complete_issue(&[8; 16], &[row(1, 2, 100), row(2, 1, 100)], b"coins").unwrap());
    assert!(!tx.complete_issue(&[8; 16], &[row(3, 2, 100)], b"other coins").unwrap(), "finished once");
    assert!(!tx.complete_issue(&[6; 16], &[row(4, 2, 100)], b"coins").unwrap(), "never reserved");
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    let done = tx.issued(&[8; 16]).unwrap().unwrap();
    assert_eq!(done.coins.as_deref(), Some(&b"coins"[..]));
    assert_eq!(done.plan, vec![4, 5]);
    assert_eq!(tx.reserved_issues(10).unwrap(), vec![reserved(7, 4)]);
    assert_eq!(tx.circulation().unwrap(), Circulation { count: 2, value: Amount::new(3) });
    let c = tx.counters().unwrap();
    assert_eq!((c.minted_value, c.minted_count), (Amount::new(3), 2));
    assert_eq!(tx.purge_requests(100, 10).unwrap(), 1, "the finished one");
    tx.commit().unwrap();
    assert_books_balance(store);
}

pub fn unsigned_coins_are_found_and_signed_once(store: &mut dyn Store) {
    let bodies = [&super::UNSIGNED_COINS[..], b"bodies"].concat();
    let mut tx = store.begin().unwrap();
    for (id, time) in [(1, 5), (2, 3), (3, 4)] {
        tx.reserve_issue(&reserved(id, time)).unwrap();
    }
    assert!(tx.complete_issue(&[1; 16], &[row(1, 2, 100)], &bodies).unwrap());
    assert!(tx.complete_issue(&[2; 16], &[row(2, 2, 100)], &bodies).unwrap());
    // Signed coins, and a blob that only shares a shorter start, are not unsigned.
    assert!(tx.complete_issue(&[3; 16], &[row(3, 2, 100)], &super::UNSIGNED_COINS[..7]).unwrap());
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    let found: Vec<_> = tx.unsigned_issues(None, 10).unwrap().into_iter().map(|r| r.request_id[0]).collect();
    assert_eq!(found, vec![2, 1], "oldest first, only the unsigned");
    let first = tx.unsigned_issues(None, 1).unwrap();
    assert_eq!(first.len(), 1, "limited");
    let next = tx.unsigned_issues(Some((first[0].time, first[0].request_id)), 10).unwrap();
    assert_eq!(next.iter().map(|r| r.request_id[0]).collect::<Vec<_>>(), vec![1], "the page after");
    assert!(tx.sign_issue(&[2; 16], &bodies, b"signed").unwrap());
    assert!(!tx.sign_issue(&[2; 16], &bodies, b"signed again").unwrap(), "signed once");
    assert!(!tx.sign_issue(&[9; 16], &bodies, b"signed").unwrap(), "no such request");
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.issued(&[2; 16]).unwrap().unwrap().coins.as_deref(), Some(&b"signed"[..]));
    let found: Vec<_> = tx.unsigned_issues(None, 10).unwrap().into_iter().map(|r| r.request_id[0]).collect();
    assert_eq!(found, vec![1]);
    tx.commit().unwrap();
    assert_books_balance(store);
}

pub fn clearing_holds_then_settles_or_undoes(store: &mut dyn Store) {
    let mut tx = store.begin().unwrap();
    let a = tx.create_account("m", b"id", "h", 1).unwrap();
    assert!(tx.issue(&[row(1, 8, 100), row(2, 4, 100)]).unwrap());
    let clearing = |id: u8, held: &[SerialRow]| ClearingRow {
        request_id: [id; 16],
        peer_request_id: [id + 1; 16],
        peer: "bank-b".into(),
        account: a,
        local_serials: bincode::serialize(
            &held
                .iter()
                .map(|r| (r.serial.0, r.value.minor_units(), r.expiry, r.key_id.0))
                .collect::<Vec<crate::clearing::SerialTuple>>(),
        )
        .unwrap(),
        foreign_coins: vec![9],
        local_amount: Amount::checked_sum(held.iter().map(|r| r.value)).unwrap(),
        foreign_amount: Amount::new(4),
        coins_hash: [3; 32],
        state: "pending".into(),
        reason: String::new(),
        time: 5,
    };
    let Spend::Spent(first) = tx.hold(&[serial(1)]).unwrap() else { panic!("held") };
    tx.insert_clearing(&clearing(1, &first)).unwrap();
    let Spend::Spent(second) = tx.hold(&[serial(2)]).unwrap() else { panic!("held") };
    tx.insert_clearing(&clearing(2, &second)).unwrap();
    tx.commit().unwrap();
    assert_books_balance(store);
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.held_by_clearings().unwrap(), Circulation { count: 2, value: Amount::new(12) });
    assert_eq!(tx.pending_clearings(10).unwrap().len(), 2);
    assert!(tx.settle_clearing(&[1; 16], Circulation { count: 1, value: Amount::new(8) }).unwrap());
    assert!(!tx.settle_clearing(&[1; 16], Circulation { count: 1, value: Amount::new(8) }).unwrap(), "once");
    assert!(tx.undo_clearing(&[2; 16], &second, "refused").unwrap());
    assert!(!tx.undo_clearing(&[2; 16], &second, "refused").unwrap(), "once");
    assert!(!tx.undo_clearing(&[1; 16], &first, "late").unwrap(), "a settled clearing is not undone");
    assert_eq!(tx.clearing(&[2; 16]).unwrap().unwrap().state, "failed");
    assert_eq!(tx.clearing(&[2; 16]).unwrap().unwrap().reason, "refused");
    assert!(tx.pending_clearings(10).unwrap().is_empty());
    assert_eq!(tx.clearing_totals().unwrap(), vec![("bank-b".to_string(), Amount::new(4))]);
    assert_eq!(tx.circulation().unwrap(), Circulation { count: 1, value: Amount::new(4) }, "undone: back");
    let c = tx.counters().unwrap();
    assert_eq!((c.redeemed_value, c.redeemed_count), (Amount::new(8), 1), "settled: redeemed");
    tx.commit().unwrap();
    assert_books_balance(store);
}

/// Runs `work` on `threads` threads, each on its own connection, all starting together;
/// each transaction is retried (bounded) while it fails with a retryable error, as the
/// writer does. Returns each thread's result.
fn compete<R: Send + 'static>(
    open: &Opener,
    threads: usize,
    work: impl Fn(usize, &mut dyn Tx) -> Result<R, StoreError> + Send + Sync + 'static,
) -> Vec<R> {
    let barrier = Arc::new(Barrier::new(threads));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let mut store = open();
            let (barrier, work) = (barrier.clone(), work.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..50 {
                    let attempt = (|| {
                        let mut tx = store.begin()?;
                        let r = work(i, tx.as_mut())?;
                        tx.commit()?;
                        Ok::<R, StoreError>(r)
                    })();
                    match attempt {
                        Ok(r) => return r,
                        Err(e) if e.retryable() => continue,
                        Err(e) => panic!("thread {i}: {e}"),
                    }
                }
                panic!("thread {i}: still conflicting after 50 attempts");
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a competing thread panicked")).collect()
}

pub fn concurrent_spends_of_one_serial_have_one_winner(open: &Opener) {
    let mut store = open();
    let mut tx = store.begin().unwrap();
    assert!(tx.issue(&[row(1, 8, 100), row(2, 4, 100)]).unwrap());
    tx.commit().unwrap();
    // Some spend serial 1 alone, some 1 and 2 together (sorted differently): exactly one
    // of all of them takes serial 1.
    let results = compete(open, 8, |i, tx| {
        let serials = if i % 2 == 0 { vec![serial(1)] } else { vec![serial(2), serial(1)] };
        tx.spend(&serials)
    });
    let winners = results.iter().filter(|r| matches!(r, Spend::Spent(_))).count();
    assert_eq!(winners, 1, "{results:?}");
    let c = store.begin_read().unwrap().counters().unwrap();
    assert!(c.redeemed_count == 1 || c.redeemed_count == 2, "{c:?}");
    assert_books_balance(store.as_mut());
}

pub fn concurrent_debits_never_overdraw(open: &Opener) {
    let mut store = open();
    let mut tx = store.begin().unwrap();
    let a = tx.create_account("alice", b"id", "h", 1).unwrap();
    tx.credit(a, Amount::new(100), 1, EntryKind::CounterCredit, "in").unwrap();
    tx.commit().unwrap();
    let results = compete(open, 10, move |_, tx| tx.debit(a, Amount::new(30), 2, EntryKind::Withdrawal, ""));
    let paid: Vec<Amount> = results.iter().flatten().copied().collect();
    assert_eq!(paid.len(), 3, "100 covers three debits of 30: {results:?}");
    let mut tx = store.begin_read().unwrap();
    assert_eq!(tx.account(a).unwrap().unwrap().balance, Amount::new(10));
    drop(tx);
    assert_books_balance(store.as_mut());
}

pub fn concurrent_account_creation_gives_distinct_ids(open: &Opener) {
    let mut ids: Vec<AccountId> = compete(open, 8, |i, tx| {
        let mut mine = Vec::new();
        for k in 0..5 {
            mine.push(tx.create_account(&format!("a{i}-{k}"), b"id", "h", 1)?);
        }
        Ok(mine)
    })
    .into_iter()
    .flatten()
    .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(open().begin_read().unwrap().accounts().unwrap().len(), 40);
}

pub fn concurrent_completions_issue_once(open: &Opener) {
    let mut store = open();
    let mut tx = store.begin().unwrap();
    tx.reserve_issue(&reserved(8, 3)).unwrap();
    tx.commit().unwrap();
    // Two nodes finishing one request, each with coins of its own signing.
    let results = compete(open, 6, |i, tx| tx.complete_issue(&[8; 16], &[row(10 + i as u8, 1, 100)], &[i as u8]));
    assert_eq!(results.iter().filter(|won| **won).count(), 1, "{results:?}");
    let mut tx = store.begin_read().unwrap();
    assert_eq!(tx.circulation().unwrap().count, 1, "only the winner's serial");
    drop(tx);
    assert_books_balance(store.as_mut());
}
