//! The wallet's durable state, and the only code that speaks SQL: coins (encrypted at
//! rest), payments, bank operations, pinned merchant keys. SQLite in WAL mode with
//! `synchronous=FULL`.
//!
//! - [`coins`]: coin rows, their states ([`CoinState`]) and transition table, damage and
//!   quarantine.
//! - [`payments`]: payment records, their direction and states ([`PaymentState`]) and
//!   transition table.
//! - [`ops`]: bank operations, their kinds ([`OpKind`]) and states ([`OpState`]).
//! - [`merchants`]: pinned merchant keys.
//! - [`orders`]: paid orders, which a receipt re-opens until they expire (merchant side).
//! - [`vault`]: the encryption of coins and secrets at rest.
//!
//! Every state or kind stored as text is read back through its enum's `parse`: an unknown
//! value is [`DbError::Corrupt`], never a default. Every change of state goes through its
//! table and is committed before anything is sent on the network. Callers name what they
//! do (`mark_payment_done`, `end_op`); they never write SQL. All access goes through
//! [`Db::call`], which runs on tokio's blocking pool, never on an async worker; the one
//! connection sits behind a mutex, so each `call` is atomic with respect to every other.

/// Declares an enum stored as text: its variants with their stored names, `ALL`,
/// `as_str`, and `parse`, which turns an unknown stored name into [`DbError::Corrupt`]
/// (never a default). The transition table, if any, is written beside it by hand.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Reads a stored name; an unknown one is [`DbError::Corrupt`].
            pub fn parse(s: &str) -> Result<Self, $crate::store::DbError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::store::DbError::Corrupt(format!(concat!("unknown ", $what, " {:?}"), s))),
                }
            }
        }
    };
}

pub mod coins;
pub mod merchants;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod vault;

pub use coins::*;
pub use merchants::*;
pub use ops::*;
pub use orders::*;
pub use payments::*;
pub use vault::*;

use pmtp_proto::Serial;
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("wallet database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("wallet database: {0}")]
    Other(String),
    #[error("a stored coin does not decrypt (wrong key or damaged database)")]
    Decrypt,
    #[error("coin {serial} cannot go from {from:?} to {to:?}")]
    Transition { serial: Serial, from: CoinState, to: CoinState },
    /// A payment or an operation asked to move outside its transition table.
    #[error("{what} {id} cannot go from {from} to {to}")]
    Move { what: &'static str, id: i64, from: &'static str, to: &'static str },
    /// A coin to insert is already in this wallet (under any state).
    #[error("coin {0} is already in this wallet")]
    DuplicateCoin(Serial),
    /// A stored value that cannot be what it claims: an unknown state or kind, an amount
    /// out of range, a request id of the wrong length. Never read as a default.
    #[error("wallet database is corrupt: {0}")]
    Corrupt(String),
}

/// Reads a stored amount: a negative one is corruption, not zero.
pub(crate) fn amount(stored: i64) -> Result<pmtp_proto::Amount, DbError> {
    u64::try_from(stored)
        .map(pmtp_proto::Amount::new)
        .map_err(|_| DbError::Corrupt(format!("stored amount {stored} is negative")))
}

const SCHEMA: &[(i64, &str)] = &[
    (
        1,
        "
    CREATE TABLE coins (
        serial BLOB PRIMARY KEY,
        bank_id TEXT NOT NULL,
        value INTEGER NOT NULL,
        expiry INTEGER NOT NULL,
        state TEXT NOT NULL,
        payment INTEGER,
        op INTEGER,
        sealed BLOB NOT NULL,
        updated INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX coins_state ON coins(state, bank_id, value);
    CREATE INDEX coins_payment ON coins(payment);
    CREATE INDEX coins_op ON coins(op);
    CREATE TABLE payments (
        id INTEGER PRIMARY KEY,
        direction TEXT NOT NULL,
        state TEXT NOT NULL,
        peer TEXT NOT NULL,
        merchant TEXT NOT NULL,
        merchant_fp TEXT NOT NULL,
        amount INTEGER NOT NULL,
        description TEXT NOT NULL,
        request BLOB NOT NULL,
        receipt BLOB,
        reason TEXT NOT NULL DEFAULT '',
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE INDEX payments_state ON payments(state);
    CREATE TABLE ops (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        bank_id TEXT NOT NULL,
        request_id BLOB NOT NULL,
        amount INTEGER NOT NULL,
        payment INTEGER,
        secret BLOB,
        reason TEXT NOT NULL DEFAULT '',
        created INTEGER NOT NULL
    );
    CREATE INDEX ops_state ON ops(state);
    CREATE TABLE merchants (
        name TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        identity BLOB NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    ",
    ),
    (
        2,
        "
    -- seal: what the sealed coin's associated data covers (1: serial; 2: serial, bank id,
    -- value, expiry). damage: why a quarantined coin was quarantined.
    ALTER TABLE coins ADD COLUMN seal INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE coins ADD COLUMN damage TEXT NOT NULL DEFAULT '';
    ",
    ),
    (
        3,
        "
    -- Paid orders (merchant side): id is the ask's nonce random part, as in the receipt.
    CREATE TABLE orders (
        id BLOB PRIMARY KEY,
        item TEXT NOT NULL,
        amount INTEGER NOT NULL,
        payment INTEGER NOT NULL,
        buyer TEXT NOT NULL,
        receipt BLOB NOT NULL,
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    ),
    (
        5,
        "
    -- Outgoing payments in band (HTTP 402, payme-wallet pay URL): the URL paid for, the
    -- shop's signed offer and the sealed payment (header values, v1....), and how many
    -- times recovery sent it again without an answer. NULL url: a PMTP payment.
    ALTER TABLE payments ADD COLUMN url TEXT;
    ALTER TABLE payments ADD COLUMN offer TEXT;
    ALTER TABLE payments ADD COLUMN sealed TEXT;
    ALTER TABLE payments ADD COLUMN http_attempts INTEGER NOT NULL DEFAULT 0;
    ",
    ),
    (
        6,
        "
    -- Maintenance forgets orders a day after they expire (store::prune_expired_orders).
    CREATE INDEX orders_expires ON orders(expires);
    ",
    ),
    (
        7,
        "
    -- Coin choice (store::counts_in, store::serials_of_value) counts one bank's coins in one
    -- state by value and reads the chosen serials from this index alone: no row of the
    -- table (with its sealed coin) is read for it.
    CREATE INDEX coins_choice ON coins(state, bank_id, value DESC, serial, expiry);
    DROP INDEX coins_state;
    ",
    ),
];

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    pub vault: Arc<Vault>,
}

pub use pmtp_client::clock::now;

pub(crate) fn i(v: u64) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::Other("value out of range".into()))
}

impl Db {
    pub fn open(path: &Path, vault: Vault) -> Result<Db, DbError> {
        use payme_node::sqlite::{apply_migrations, open_durable};
        let mut conn = open_durable(path).map_err(|e| DbError::Other(e.to_string()))?;
        apply_migrations(&mut conn, SCHEMA).map_err(|e| DbError::Other(e.to_string()))?;
        reseal_v1(&mut conn, &vault)?;
        Ok(Db { conn: Arc::new(Mutex::new(conn)), vault: Arc::new(vault) })
    }

    /// Runs `f` with the connection, synchronously (start-up and tests).
    pub fn with<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R, DbError>) -> Result<R, DbError> {
        let mut guard = self.conn.lock().map_err(|_| DbError::Other("database lock poisoned".into()))?;
        f(&mut guard)
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Vault) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.with(|c| f(c, &db.vault)))
            .await
            .map_err(|e| DbError::Other(format!("database task failed: {e}")))?
    }
}

/// A fresh database in `dir` under a fixed test key (unit tests).
#[cfg(test)]
pub(crate) fn test_db(dir: &Path) -> Db {
    #[allow(clippy::unwrap_used)]
    Db::open(&dir.join("w.db"), Vault::new(&pmtp_proto::testing::identity(1))).unwrap()
}
