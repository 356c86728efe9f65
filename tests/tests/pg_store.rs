//! The bank's store on a real PostgreSQL server (started by the harness, see
//! `payme_tests::pg`): the conformance suite, including competing connections from
//! different nodes, the migrations, and `payme-bank init` and the admin commands.
//! Without PostgreSQL installed these skip loudly, or fail when `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_daemon::store::conformance::{CONCURRENT, SINGLE};
use bank_daemon::store::pg::PgStore;
use bank_daemon::store::{Store, StoreError};
use payme_tests::bank_harness::*;
use payme_tests::pg::Postgres;
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn conformance_on_postgres() {
    let Some(pg) = Postgres::start_with(false) else { return };
    for (name, f) in SINGLE {
        eprintln!("postgres: {name}");
        let mut store = PgStore::open(&pg.create_db()).unwrap();
        f(&mut store);
    }
    for (name, f) in CONCURRENT {
        eprintln!("postgres, competing connections of different nodes: {name}");
        let url = pg.create_db();
        drop(PgStore::open(&url).unwrap());
        // Each connection is another node, with counter rows of its own.
        let nodes = AtomicUsize::new(0);
        f(&move || {
            let node = format!("node-{}", nodes.fetch_add(1, Ordering::SeqCst));
            Box::new(PgStore::connect(&url).unwrap().with_node(&node)) as Box<dyn Store>
        });
    }
}

#[test]
fn postgres_migrations_are_recorded_once_and_a_newer_schema_is_refused() {
    let Some(pg) = Postgres::start_with(false) else { return };
    let url = pg.create_db();
    // Three nodes starting at once migrate once (the advisory lock orders them).
    let versions: Vec<i64> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..3).map(|_| s.spawn(|| PgStore::open(&url).unwrap().schema_version().unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(versions, vec![1, 1, 1]);
    assert_eq!(pg.execute(&url, "INSERT INTO schema_migrations(version, applied_at) VALUES (99, 0)"), 1);
    assert!(matches!(PgStore::open(&url), Err(StoreError::NewerSchema { found: 99, .. })));
}

fn run_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = payme_bank(dir, args);
    assert!(out.status.success(), "payme-bank {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `payme-bank init` with PAYME_BANK_STORE names the database in config.toml; then every
/// admin command works on it, and the SQLite file is never made.
#[test]
fn init_and_admin_commands_on_postgres() {
    let Some(pg) = Postgres::start_with(false) else { return };
    let url = pg.create_db();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin());
    with_pool_key(&mut cmd);
    let out = with_test_clock(&mut cmd)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["init", "--bank-id", "bank-pg"])
        .env("PAYME_BANK_PASSPHRASE", PASSPHRASE)
        .env("PAYME_BANK_STORE", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert!(config.contains(&format!("store = \"{url}\"")), "{config}");
    let key = pmtp_proto::testing::named_identity(1, "alice");
    let pubfile = dir.path().join("alice.pub");
    std::fs::write(&pubfile, key.public().to_text()).unwrap();
    let id = run_ok(dir.path(), &["account", "open", "--name", "alice", "--public-key", pubfile.to_str().unwrap()]);
    let id = id.trim();
    assert!(id.parse::<u64>().unwrap() > 1000, "{id}");
    run_ok(dir.path(), &["account", "credit", id, "500"]);
    run_ok(dir.path(), &["account", "debit", id, "120"]);
    let refused = payme_bank(dir.path(), &["account", "debit", id, "381"]);
    assert!(!refused.status.success(), "a debit past the balance is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("less than"), "{refused:?}");
    let list = run_ok(dir.path(), &["account", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["balance"], 380, "{list}");
    let audit = run_ok(dir.path(), &["audit", "--json"]);
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit["holds"], true, "{audit}");
    assert_eq!(audit["total_balances"], 380, "{audit}");
    let backup = payme_bank(dir.path(), &["backup", dir.path().join("copy.db").to_str().unwrap()]);
    assert!(!backup.status.success() && String::from_utf8_lossy(&backup.stderr).contains("pg_dump"), "{backup:?}");
    assert!(!dir.path().join("bank.db").exists(), "no SQLite file for a bank on PostgreSQL");
    // And the rows are in PostgreSQL.
    assert_eq!(pg.execute(&url, "UPDATE accounts SET name = name WHERE balance = 380"), 1);
    // --store outranks config.toml: another, empty database has no accounts yet.
    let other = pg.create_db();
    let list = run_ok(dir.path(), &["--store", &other, "account", "list", "--json"]);
    assert_eq!(list.trim(), "[]", "{list}");
}
