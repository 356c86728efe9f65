//! The wallet's durable state: coins (encrypted at rest), payments, bank operations,
//! pinned merchant keys. SQLite in WAL mode with `synchronous=FULL`.
//!
//! Every coin moves through the states of [`CoinState`] along the transitions that
//! [`CoinState::can_become`] allows, and each change is committed before anything is sent
//! on the network. All access goes through [`Db::call`], which runs on tokio's blocking
//! pool, never on an async worker.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce as GcmNonce};
use pmtp_proto::{Amount, Coin, Denomination, Serial};
use rusqlite::{params, Connection, OptionalExtension};
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
    /// A coin to insert is already in this wallet (under any state).
    #[error("coin {0} is already in this wallet")]
    DuplicateCoin(Serial),
}

/// Where a coin is in its life in this wallet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoinState {
    /// Ours to spend.
    Available,
    /// Handed to a payment, exchange or deposit whose outcome is not yet known.
    Pending,
    /// Received from a buyer, not yet validated at the bank (merchant side).
    Received,
    /// Gone: paid, deposited, exchanged, or proven spent by the bank.
    Spent,
}

impl CoinState {
    pub fn as_str(self) -> &'static str {
        match self {
            CoinState::Available => "available",
            CoinState::Pending => "pending",
            CoinState::Received => "received",
            CoinState::Spent => "spent",
        }
    }
    pub fn parse(s: &str) -> Result<Self, DbError> {
        Ok(match s {
            "available" => CoinState::Available,
            "pending" => CoinState::Pending,
            "received" => CoinState::Received,
            "spent" => CoinState::Spent,
            _ => return Err(DbError::Other(format!("unknown coin state {s:?}"))),
        })
    }

    /// The transition table. Anything else is a bug and is refused.
    ///
    /// | from | to | when |
    /// |---|---|---|
    /// | available | pending | chosen for a payment, exchange or deposit (before sending) |
    /// | pending | spent | receipt, deposit acknowledgement, exchange done, or the bank says spent |
    /// | pending | available | the operation is known not to have spent it (refused before use) |
    /// | received | spent | deposited or exchanged by the merchant |
    pub fn can_become(self, to: CoinState) -> bool {
        matches!(
            (self, to),
            (CoinState::Available, CoinState::Pending)
                | (CoinState::Pending, CoinState::Spent)
                | (CoinState::Pending, CoinState::Available)
                | (CoinState::Received, CoinState::Spent)
        )
    }
}

const SCHEMA: &[(i64, &str)] = &[(
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
)];

/// Encrypts stored coins and secrets under a key derived from the wallet's private key
/// (itself under the passphrase): without the passphrase the coins cannot be spent.
pub struct Vault {
    cipher: Aes256Gcm,
}

impl Vault {
    pub fn new(identity: &pmtp_proto::Identity) -> Vault {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"payme wallet storage v1"), identity.x25519.as_bytes());
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes is within HKDF's output limit; expand cannot fail.
        let _ = hk.expand(b"coins and secrets", key.as_mut());
        Vault { cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)) }
    }

    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, DbError> {
        let nonce: [u8; 12] = pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os());
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&GcmNonce::from(nonce), Payload { msg: plain, aad })
                .map_err(|_| DbError::Other("encryption failed".into()))?,
        );
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, DbError> {
        if sealed.len() < 12 {
            return Err(DbError::Decrypt);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        self.cipher
            .decrypt(&GcmNonce::from(nonce), Payload { msg: &sealed[12..], aad })
            .map(zeroize::Zeroizing::new)
            .map_err(|_| DbError::Decrypt)
    }

    pub fn seal_coin(&self, coin: &Coin) -> Result<Vec<u8>, DbError> {
        let plain = bincode::serialize(coin).map_err(|e| DbError::Other(e.to_string()))?;
        self.seal(&coin.serial().0, &plain)
    }

    pub fn open_coin(&self, serial: &Serial, sealed: &[u8]) -> Result<Coin, DbError> {
        let plain = self.open(&serial.0, sealed)?;
        let coin: Coin = bincode::deserialize(&plain).map_err(|_| DbError::Decrypt)?;
        if coin.serial() != *serial {
            return Err(DbError::Decrypt);
        }
        Ok(coin)
    }
}

/// One row of `coins`, decrypted.
#[derive(Clone, Debug)]
pub struct CoinRow {
    pub coin: Coin,
    pub state: CoinState,
    pub payment: Option<i64>,
    pub op: Option<i64>,
}

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

/// A payment record as first written: outgoing (`out`, state `sending`) or incoming
/// (`in`, state `received`).
pub struct NewPayment<'a> {
    pub direction: &'a str,
    pub state: &'a str,
    pub peer: String,
    pub merchant: String,
    pub merchant_fp: String,
    pub amount: Amount,
    pub description: String,
    /// bincode of the ask_payment_request's nonce.
    pub request: Vec<u8>,
}

/// Inserts a payment record; returns its id.
pub fn insert_payment(tx: &rusqlite::Transaction<'_>, p: &NewPayment<'_>) -> Result<i64, DbError> {
    tx.execute(
        "INSERT INTO payments(direction, state, peer, merchant, merchant_fp, amount, description, request, created, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![p.direction, p.state, p.peer, p.merchant, p.merchant_fp, i(p.amount.minor_units())?, p.description, p.request, i(now())?],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Inserts coins in `state` (new coins from a bank or a buyer).
pub fn insert_coins(
    tx: &rusqlite::Transaction<'_>,
    vault: &Vault,
    coins: &[Coin],
    state: CoinState,
    payment: Option<i64>,
) -> Result<(), DbError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO coins(serial, bank_id, value, expiry, state, payment, op, sealed, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8)",
    )?;
    for c in coins {
        let b = c.body();
        let inserted = st.execute(params![
            &b.serial.0[..],
            b.bank_id.as_str(),
            i(c.value().minor_units())?,
            i(b.expiry)?,
            state.as_str(),
            payment,
            vault.seal_coin(c)?,
            i(now())?
        ]);
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return Err(DbError::DuplicateCoin(b.serial));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Moves coins to `to`, checking each one's current state against the transition table,
/// and tags them with a payment or operation.
pub fn move_coins(
    tx: &rusqlite::Transaction<'_>,
    serials: &[Serial],
    to: CoinState,
    payment: Option<i64>,
    op: Option<i64>,
) -> Result<(), DbError> {
    for s in serials {
        let from: String = tx
            .query_row("SELECT state FROM coins WHERE serial = ?1", params![&s.0[..]], |r| r.get(0))
            .optional()?
            .ok_or_else(|| DbError::Other(format!("coin {s} is not in this wallet")))?;
        let from = CoinState::parse(&from)?;
        if !from.can_become(to) {
            return Err(DbError::Transition { serial: *s, from, to });
        }
        tx.execute(
            "UPDATE coins SET state = ?2, payment = COALESCE(?3, payment), op = COALESCE(?4, op), updated = ?5 WHERE serial = ?1",
            params![&s.0[..], to.as_str(), payment, op, i(now())?],
        )?;
    }
    Ok(())
}

/// Coins in `state`, optionally of one bank, decrypted.
pub fn coins_in(
    conn: &Connection,
    vault: &Vault,
    state: CoinState,
    bank: Option<&str>,
) -> Result<Vec<CoinRow>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT serial, sealed, payment, op FROM coins WHERE state = ?1 AND (?2 IS NULL OR bank_id = ?2) ORDER BY value DESC, serial",
    )?;
    let rows = st.query_map(params![state.as_str(), bank], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?))
    })?;
    rows.map(|r| {
        let (serial, sealed, payment, op) = r?;
        let serial = Serial(serial.try_into().map_err(|_| DbError::Decrypt)?);
        Ok(CoinRow { coin: vault.open_coin(&serial, &sealed)?, state, payment, op })
    })
    .collect()
}

/// Serials, values and expiries of coins in `state` of one bank, without decrypting
/// anything (coin selection needs only values; the refresher only expiries).
pub fn values_in(conn: &Connection, state: CoinState, bank: &str) -> Result<Vec<(Serial, Denomination, u64)>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT serial, value, expiry FROM coins WHERE state = ?1 AND bank_id = ?2 ORDER BY value DESC, serial",
    )?;
    let rows = st.query_map(params![state.as_str(), bank], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })?;
    rows.map(|r| {
        let (serial, value, expiry) = r?;
        let serial = Serial(serial.try_into().map_err(|_| DbError::Decrypt)?);
        let d = Denomination::try_from(value.max(0) as u64).map_err(|e| DbError::Other(e.to_string()))?;
        Ok((serial, d, expiry.max(0) as u64))
    })
    .collect()
}

/// The coins with these serials, decrypted.
pub fn coins_by_serial(conn: &Connection, vault: &Vault, serials: &[Serial]) -> Result<Vec<Coin>, DbError> {
    let mut st = conn.prepare_cached("SELECT sealed FROM coins WHERE serial = ?1")?;
    serials
        .iter()
        .map(|s| {
            let sealed: Vec<u8> = st.query_row(params![&s.0[..]], |r| r.get(0))?;
            vault.open_coin(s, &sealed)
        })
        .collect()
}

/// Coins tagged with a payment or an operation.
pub fn coins_of(conn: &Connection, vault: &Vault, column: &str, id: i64) -> Result<Vec<CoinRow>, DbError> {
    let sql = match column {
        "payment" => "SELECT serial, sealed, state, payment, op FROM coins WHERE payment = ?1",
        _ => "SELECT serial, sealed, state, payment, op FROM coins WHERE op = ?1",
    };
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map(params![id], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })?;
    rows.map(|r| {
        let (serial, sealed, state, payment, op) = r?;
        let serial = Serial(serial.try_into().map_err(|_| DbError::Decrypt)?);
        Ok(CoinRow { coin: vault.open_coin(&serial, &sealed)?, state: CoinState::parse(&state)?, payment, op })
    })
    .collect()
}

/// Balance per bank and denomination: (bank, value, count, state).
pub fn balance(conn: &Connection) -> Result<Vec<(String, u64, u64, String)>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT bank_id, value, COUNT(*), state FROM coins WHERE state != 'spent' GROUP BY bank_id, value, state ORDER BY bank_id, value DESC",
    )?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
    })?;
    rows.map(|r| {
        let (b, v, n, s) = r?;
        Ok((b, v as u64, n as u64, s))
    })
    .collect()
}

/// Total value of coins in `state`.
pub fn total(conn: &Connection, state: CoinState) -> Result<Amount, DbError> {
    let v: i64 =
        conn.query_row("SELECT COALESCE(SUM(value), 0) FROM coins WHERE state = ?1", params![state.as_str()], |r| {
            r.get(0)
        })?;
    Ok(Amount::new(v.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_table_is_exactly_as_documented() {
        use CoinState::*;
        let all = [Available, Pending, Received, Spent];
        let allowed = [(Available, Pending), (Pending, Spent), (Pending, Available), (Received, Spent)];
        for from in all {
            for to in all {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn coins_are_encrypted_at_rest_and_moves_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = pmtp_proto::testing::identity(1);
        let db = Db::open(&dir.path().join("w.db"), Vault::new(&id)).unwrap();
        let bank = pmtp_proto::testing::samples::parties().bank;
        let mut rng = pmtp_proto::testing::TestRng(3);
        let coin = pmtp_proto::testing::samples::coin(&bank, &mut rng, 8, now() + 100);
        db.with(|c| {
            let tx = c.transaction()?;
            insert_coins(&tx, &db.vault, std::slice::from_ref(&coin), CoinState::Available, None)?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        // The stored blob is not the coin's encoding.
        let raw: Vec<u8> = db.with(|c| Ok(c.query_row("SELECT sealed FROM coins", [], |r| r.get(0))?)).unwrap();
        let plain = bincode::serialize(&coin).unwrap();
        assert!(!raw.windows(plain.len().min(64)).any(|w| w == &plain[..plain.len().min(64)]));
        // Another wallet's key cannot read it.
        let other = Vault::new(&pmtp_proto::testing::identity(2));
        assert!(matches!(other.open_coin(&coin.serial(), &raw), Err(DbError::Decrypt)));
        let got = db.with(|c| coins_in(c, &db.vault, CoinState::Available, None)).unwrap();
        assert_eq!(got[0].coin, coin);
        let s = [coin.serial()];
        let bad = db.with(|c| {
            let tx = c.transaction()?;
            move_coins(&tx, &s, CoinState::Spent, None, None)
        });
        assert!(matches!(bad, Err(DbError::Transition { .. })), "available cannot become spent directly");
        db.with(|c| {
            let tx = c.transaction()?;
            move_coins(&tx, &s, CoinState::Pending, Some(1), None)?;
            move_coins(&tx, &s, CoinState::Spent, None, None)?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        assert_eq!(db.with(|c| total(c, CoinState::Spent)).unwrap(), Amount::new(8));
    }
}
