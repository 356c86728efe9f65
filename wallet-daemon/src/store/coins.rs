//! Coins: one row each, encrypted at rest.
//!
//! Every coin moves through the states of [`CoinState`] along the transitions that
//! [`CoinState::can_become`] allows, and each change is committed before anything is sent
//! on the network.
//!
//! A coin row has clear columns (bank id, value, expiry) that coin choice reads without
//! decrypting, and the sealed coin. The seal's associated data covers the clear columns
//! (seal format 2), so a row whose columns were edited no longer opens. Rows of format 1
//! (serial only) are re-sealed when the database is opened, after their columns are
//! checked against the decrypted coin. Every read that hands out coins or reports value
//! opens the seal and compares the columns again; a row that fails is damaged: it moves to
//! [`CoinState::Quarantined`] (kept, never spent, reported by `balance`), and the reader
//! carries on with the other coins. Balances are summed from opened coins, never from the
//! clear value column alone.

use super::vault::{Clear, Damage, Vault};
use super::{i, now, DbError};
use pmtp_proto::{Amount, Coin, Denomination, Serial};
use rusqlite::{params, Connection, OptionalExtension};

stored_enum! {
    /// Where a coin is in its life in this wallet.
    pub enum CoinState ("coin state") {
        /// Ours to spend.
        Available = "available",
        /// Handed to a payment, exchange or deposit whose outcome is not yet known.
        Pending = "pending",
        /// Received from a buyer, not yet validated at the bank (merchant side).
        Received = "received",
        /// Gone: paid, deposited, exchanged, or proven spent by the bank.
        Spent = "spent",
        /// Damaged in storage (does not decrypt, or its clear columns disagree with the
        /// sealed coin): kept for inspection, never spent, reported apart in `balance`.
        Quarantined = "quarantined",
    }
}

impl CoinState {
    /// The transition table. Anything else is a bug and is refused.
    ///
    /// | from | to | when |
    /// |---|---|---|
    /// | available | pending | chosen for a payment, exchange or deposit (before sending) |
    /// | pending | spent | receipt, deposit acknowledgement, exchange done, or the bank says spent |
    /// | pending | available | the operation is known not to have spent it (refused before use) |
    /// | received | spent | deposited or exchanged by the merchant |
    /// | available, pending, received | quarantined | its stored row is damaged |
    ///
    /// Spent and quarantined are final (a quarantined coin leaves only by an operator's
    /// hand, after inspection).
    pub fn can_become(self, to: CoinState) -> bool {
        matches!(
            (self, to),
            (CoinState::Available, CoinState::Pending)
                | (CoinState::Pending, CoinState::Spent)
                | (CoinState::Pending, CoinState::Available)
                | (CoinState::Received, CoinState::Spent)
                | (CoinState::Available | CoinState::Pending | CoinState::Received, CoinState::Quarantined)
        )
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

/// Inserts coins in `state` (new coins from a bank or a buyer).
pub fn insert_coins(
    tx: &rusqlite::Transaction<'_>,
    vault: &Vault,
    coins: &[Coin],
    state: CoinState,
    payment: Option<i64>,
) -> Result<(), DbError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO coins(serial, bank_id, value, expiry, state, payment, op, sealed, updated, seal) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8, 2)",
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

/// Stores coins a bank just issued as available, unless they are already stored: a retry
/// after a crash or a lost reply gets the same coins again from the bank. Writes `coins`.
pub fn insert_issued_coins(tx: &rusqlite::Transaction<'_>, vault: &Vault, coins: &[Coin]) -> Result<(), DbError> {
    match coins.first() {
        Some(first) if coin_state(tx, &first.serial())?.is_none() => {
            insert_coins(tx, vault, coins, CoinState::Available, None)
        }
        _ => Ok(()),
    }
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

/// One stored coin row, still sealed.
struct StoredRow {
    clear: Clear,
    seal: i64,
    sealed: Vec<u8>,
    state: CoinState,
    payment: Option<i64>,
    op: Option<i64>,
}

const ROW_COLUMNS: &str = "serial, bank_id, value, expiry, seal, sealed, state, payment, op";

/// Reads one row of [`ROW_COLUMNS`]. A serial that is not 16 bytes or an unknown state
/// fails the read loudly: such a row cannot even be named to quarantine it.
fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(DbError::Other(e)))
    };
    let serial: Vec<u8> = r.get(0)?;
    let serial = Serial(serial.try_into().map_err(|_| bad(0, "a stored serial is not 16 bytes".into()))?);
    let state: String = r.get(6)?;
    let state = CoinState::parse(&state).map_err(|e| bad(6, e.to_string()))?;
    // Any other column of the wrong type is damage of that one coin, not of the whole
    // read: it is read as a value that cannot open (and so gets quarantined).
    use rusqlite::types::ValueRef;
    let int = |i: usize| -> rusqlite::Result<i64> {
        Ok(match r.get_ref(i)? {
            ValueRef::Integer(v) => v,
            _ => -1,
        })
    };
    let bank_id = match r.get_ref(1)? {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        _ => String::new(),
    };
    let sealed = match r.get_ref(5)? {
        ValueRef::Blob(b) => b.to_vec(),
        _ => Vec::new(),
    };
    Ok(StoredRow {
        clear: Clear { serial, bank_id, value: int(2)?, expiry: int(3)? },
        seal: int(4)?,
        sealed,
        state,
        payment: r.get(7)?,
        op: r.get(8)?,
    })
}

/// Rows matching `filter` (an SQL condition on `coins` with parameters `p`), still sealed.
fn load_rows(conn: &Connection, filter: &str, p: impl rusqlite::Params) -> Result<Vec<StoredRow>, DbError> {
    let mut st =
        conn.prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM coins WHERE {filter} ORDER BY value DESC, serial"))?;
    let rows = st.query_map(p, stored_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Opens `rows`: returns the sound ones decrypted, and moves each damaged one that still
/// counts (available, pending or received) to quarantined, through `conn` (inside the
/// caller's transaction when there is one). Damaged spent coins are only skipped.
fn open_rows(conn: &Connection, vault: &Vault, rows: Vec<StoredRow>) -> Result<Vec<CoinRow>, DbError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match vault.open_coin(&row.clear, row.seal, &row.sealed) {
            Ok(coin) => out.push(CoinRow { coin, state: row.state, payment: row.payment, op: row.op }),
            Err(damage) if row.state.can_become(CoinState::Quarantined) => quarantine(conn, &row, &damage)?,
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Moves one damaged coin to quarantined (kept, never spent) and says so.
fn quarantine(conn: &Connection, row: &StoredRow, damage: &Damage) -> Result<(), DbError> {
    let changed = conn.execute(
        "UPDATE coins SET state = 'quarantined', damage = ?2, updated = ?3 WHERE serial = ?1 AND state = ?4",
        params![&row.clear.serial.0[..], damage.0, i(now())?, row.state.as_str()],
    )?;
    if changed == 1 {
        tracing::warn!(
            serial = %row.clear.serial, bank = %row.clear.bank_id, claimed_value = row.clear.value, was = row.state.as_str(),
            damage = %damage.0, "stored coin is damaged: quarantined (kept, never spent, shown by balance)"
        );
    }
    Ok(())
}

/// Re-seals coins of format 1 in format 2, in one transaction, after checking their clear
/// columns against the decrypted coin; damaged ones are quarantined instead. Spent coins
/// are left as they are (nothing reads their value).
pub(super) fn reseal_v1(conn: &mut Connection, vault: &Vault) -> Result<(), DbError> {
    let tx = conn.transaction()?;
    let rows = load_rows(&tx, "seal = 1 AND state IN ('available', 'pending', 'received')", [])?;
    if rows.is_empty() {
        return Ok(());
    }
    let count = rows.len();
    for row in open_rows(&tx, vault, rows)? {
        tx.execute(
            "UPDATE coins SET sealed = ?2, seal = 2 WHERE serial = ?1",
            params![&row.coin.serial().0[..], vault.seal_coin(&row.coin)?],
        )?;
    }
    tx.commit()?;
    tracing::info!(coins = count, "stored coins re-sealed with their clear columns bound");
    Ok(())
}

/// Coins in `state`, optionally of one bank, decrypted (damaged ones are quarantined and
/// left out).
pub fn coins_in(
    conn: &Connection,
    vault: &Vault,
    state: CoinState,
    bank: Option<&str>,
) -> Result<Vec<CoinRow>, DbError> {
    let rows = load_rows(conn, "state = ?1 AND (?2 IS NULL OR bank_id = ?2)", params![state.as_str(), bank])?;
    open_rows(conn, vault, rows)
}

/// Serials, values and expiries of coins in `state` of one bank, as the clear columns say,
/// without decrypting anything (coin choice needs only values; the refresher only
/// expiries). Whoever then takes coins opens them ([`coins_by_serial`], [`coins_of_op`],
/// [`coins_of_payment`]), which catches a row whose columns lie.
pub fn values_in(conn: &Connection, state: CoinState, bank: &str) -> Result<Vec<(Serial, Denomination, u64)>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT serial, value, expiry FROM coins WHERE state = ?1 AND bank_id = ?2 ORDER BY value DESC, serial",
    )?;
    // A value or expiry that is not an integer (damage) reads as -1: left out below.
    let int = |v: rusqlite::types::ValueRef<'_>| v.as_i64().unwrap_or(-1);
    let rows = st.query_map(params![state.as_str(), bank], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, int(r.get_ref(1)?), int(r.get_ref(2)?)))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (serial, value, expiry) = r?;
        let serial = Serial(serial.try_into().map_err(|_| DbError::Other("a stored serial is not 16 bytes".into()))?);
        // A value that is no denomination is a lie of the clear column: leave the coin out
        // here; the next read that opens it quarantines it.
        if let (Ok(d), true) = (Denomination::try_from(value.max(0) as u64), expiry >= 0) {
            out.push((serial, d, expiry.max(0) as u64));
        }
    }
    Ok(out)
}

/// How many coins of each value one bank has in `state`, largest value first, as the
/// clear columns say (counted in the index, nothing read from the table, nothing
/// decrypted): what coin choice needs. Rows whose value is no denomination, or whose
/// value or expiry is not an integer (damage), are left out, as [`values_in`] leaves them.
pub fn counts_in(conn: &Connection, state: CoinState, bank: &str) -> Result<Vec<(Denomination, usize)>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT value, COUNT(*) FROM coins WHERE state = ?1 AND bank_id = ?2 AND typeof(value) = 'integer' \
         AND typeof(expiry) = 'integer' AND expiry >= 0 GROUP BY value ORDER BY value DESC",
    )?;
    let rows = st.query_map(params![state.as_str(), bank], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for r in rows {
        let (value, count) = r?;
        if let Ok(d) = Denomination::try_from(value.max(0) as u64) {
            out.push((d, usize::try_from(count).unwrap_or(0)));
        }
    }
    Ok(out)
}

/// [`counts_in`] for a payment of `amount`: of a value up to `amount`, at most
/// `amount / value + 1` coins are counted, and of a larger value at most one. No exact
/// choice can use more, the counted total reaches `amount` exactly when the full one does,
/// and a coin to exchange is still found; but the work is a few index probes per value,
/// not a count of every coin (a wallet holding thousands of coins of one value read them
/// all for each payment).
pub fn counts_for(
    conn: &Connection,
    state: CoinState,
    bank: &str,
    amount: Amount,
) -> Result<Vec<(Denomination, usize)>, DbError> {
    let mut below = conn.prepare_cached(
        "SELECT value FROM coins WHERE state = ?1 AND bank_id = ?2 AND typeof(value) = 'integer' AND value < ?3 \
         AND typeof(expiry) = 'integer' AND expiry >= 0 ORDER BY value DESC LIMIT 1",
    )?;
    let mut count = conn.prepare_cached(
        "SELECT COUNT(*) FROM (SELECT 1 FROM coins WHERE state = ?1 AND bank_id = ?2 AND value = ?3 \
         AND typeof(expiry) = 'integer' AND expiry >= 0 LIMIT ?4)",
    )?;
    let mut out = Vec::new();
    let mut under = i64::MAX;
    // One round per distinct value held (at most 64 denominations; the bound also stops
    // at rows whose damaged values are no denomination).
    for _ in 0..4096 {
        let Some(value) = below.query_row(params![state.as_str(), bank, under], |r| r.get::<_, i64>(0)).optional()?
        else {
            break;
        };
        under = value;
        let Ok(d) = Denomination::try_from(value.max(0) as u64) else { continue };
        let v = u64::from(d);
        let cap = if v <= amount.minor_units() { amount.minor_units() / v + 1 } else { 1 };
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let n: i64 = count.query_row(params![state.as_str(), bank, value, cap], |r| r.get(0))?;
        if n > 0 {
            out.push((d, usize::try_from(n).unwrap_or(0)));
        }
    }
    Ok(out)
}

/// The first `n` serials (in serial order) of one bank's coins of value `value` in
/// `state`: the coins [`counts_in`] counted, as coin choice takes them.
pub fn serials_of_value(
    conn: &Connection,
    state: CoinState,
    bank: &str,
    value: Denomination,
    n: usize,
) -> Result<Vec<Serial>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT serial FROM coins WHERE state = ?1 AND bank_id = ?2 AND value = ?3 \
         AND typeof(expiry) = 'integer' AND expiry >= 0 ORDER BY serial LIMIT ?4",
    )?;
    let value = i64::try_from(u64::from(value)).map_err(|_| DbError::Other("a denomination out of range".into()))?;
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let rows = st.query_map(params![state.as_str(), bank, value, n], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(Serial(r?.try_into().map_err(|_| DbError::Other("a stored serial is not 16 bytes".into()))?));
    }
    Ok(out)
}

/// The sound coins among these serials, decrypted, in the order asked; damaged ones are
/// quarantined and left out (the caller compares lengths, and chooses again).
pub fn coins_by_serial(conn: &Connection, vault: &Vault, serials: &[Serial]) -> Result<Vec<Coin>, DbError> {
    let mut out = Vec::with_capacity(serials.len());
    for s in serials {
        let rows = load_rows(conn, "serial = ?1", params![&s.0[..]])?;
        out.extend(open_rows(conn, vault, rows)?.into_iter().map(|r| r.coin));
    }
    Ok(out)
}

/// The coins of payment `payment`, in any state but quarantined, decrypted (damaged ones
/// are quarantined and left out).
pub fn coins_of_payment(conn: &Connection, vault: &Vault, payment: i64) -> Result<Vec<CoinRow>, DbError> {
    let rows = load_rows(conn, "payment = ?1 AND state != 'quarantined'", params![payment])?;
    open_rows(conn, vault, rows)
}

/// The coins of operation `op`, in any state but quarantined, decrypted (damaged ones are
/// quarantined and left out).
pub fn coins_of_op(conn: &Connection, vault: &Vault, op: i64) -> Result<Vec<CoinRow>, DbError> {
    let rows = load_rows(conn, "op = ?1 AND state != 'quarantined'", params![op])?;
    open_rows(conn, vault, rows)
}

/// How many of payment `payment`'s coins are quarantined (reads `coins` only).
pub fn quarantined_of_payment(conn: &Connection, payment: i64) -> Result<u64, DbError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM coins WHERE payment = ?1 AND state = 'quarantined'",
        params![payment],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// The state of coin `serial`, or `None` if this wallet has no such coin. An unknown
/// stored state is [`DbError::Corrupt`].
pub fn coin_state(conn: &Connection, serial: &Serial) -> Result<Option<CoinState>, DbError> {
    let state: Option<String> =
        conn.query_row("SELECT state FROM coins WHERE serial = ?1", params![&serial.0[..]], |r| r.get(0)).optional()?;
    state.map(|s| CoinState::parse(&s)).transpose()
}

/// Tags coins with operation `op` without changing their state (coins already pending
/// under a payment, or received from a buyer). Writes `coins.op`.
pub fn tag_coins_with_op(tx: &rusqlite::Transaction<'_>, serials: &[Serial], op: i64) -> Result<(), DbError> {
    let mut st = tx.prepare_cached("UPDATE coins SET op = ?2 WHERE serial = ?1")?;
    for s in serials {
        st.execute(params![&s.0[..], op])?;
    }
    Ok(())
}

/// Marks coins spent, from pending or received, along the table. A coin already spent is
/// left as it is (a retry), and so is one quarantined while its operation was under way
/// (kept and reported; its row is not to be trusted).
pub fn spend_coins(tx: &rusqlite::Transaction<'_>, serials: &[Serial]) -> Result<(), DbError> {
    for s in serials {
        match coin_state(tx, s)? {
            Some(CoinState::Spent | CoinState::Quarantined) => {}
            Some(_) => move_coins(tx, std::slice::from_ref(s), CoinState::Spent, None, None)?,
            None => return Err(DbError::Other(format!("coin {s} is not in this wallet"))),
        }
    }
    Ok(())
}

/// Puts the pending ones among these coins back to available (an operation that is known
/// not to have spent them); coins in any other state are left as they are (received coins
/// stay received for a later try).
pub fn restore_pending_coins(tx: &rusqlite::Transaction<'_>, serials: &[Serial]) -> Result<(), DbError> {
    for s in serials {
        if coin_state(tx, s)? == Some(CoinState::Pending) {
            move_coins(tx, std::slice::from_ref(s), CoinState::Available, None, None)?;
        }
    }
    Ok(())
}

/// Payments (incoming) that have coins received and not yet validated at a bank.
pub fn payments_with_received_coins(conn: &Connection) -> Result<Vec<i64>, DbError> {
    let mut st =
        conn.prepare_cached("SELECT DISTINCT payment FROM coins WHERE state = 'received' AND payment IS NOT NULL")?;
    let ids = st.query_map([], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// What `balance` shows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// (bank, value, count, state) of sound coins not spent, from the opened coins.
    pub coins: Vec<(String, u64, u64, CoinState)>,
    /// (bank, count, value the clear columns claim) of quarantined coins, per bank.
    pub quarantined: Vec<(String, u64, u64)>,
}

/// The balance: every coin not spent is opened (damaged ones are quarantined on the way),
/// and value is summed from the coins themselves, never from the clear column alone.
pub fn balance(conn: &Connection, vault: &Vault) -> Result<Balance, DbError> {
    let rows = load_rows(conn, "state IN ('available', 'pending', 'received')", [])?;
    let mut sums: std::collections::BTreeMap<(String, std::cmp::Reverse<u64>, &'static str), (u64, CoinState)> =
        Default::default();
    for r in open_rows(conn, vault, rows)? {
        let key = (
            r.coin.body().bank_id.as_str().to_owned(),
            std::cmp::Reverse(r.coin.value().minor_units()),
            r.state.as_str(),
        );
        sums.entry(key).or_insert((0, r.state)).0 += 1;
    }
    let coins = sums.into_iter().map(|((bank, v, _), (n, state))| (bank, v.0, n, state)).collect();
    let mut st = conn.prepare_cached(
        "SELECT bank_id, COUNT(*), COALESCE(SUM(MAX(value, 0)), 0) FROM coins WHERE state = 'quarantined' GROUP BY bank_id ORDER BY bank_id",
    )?;
    let quarantined = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get::<_, i64>(2)?.max(0) as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Balance { coins, quarantined })
}

/// Total value of sound coins in `state`, summed from the opened coins.
pub fn total(conn: &Connection, vault: &Vault, state: CoinState) -> Result<Amount, DbError> {
    Amount::checked_sum(coins_in(conn, vault, state, None)?.iter().map(|r| r.coin.value()))
        .map_err(|e| DbError::Other(e.to_string()))
}

/// Coins of `bank` this wallet still holds or may get back (every state but spent), and
/// their value: what removing that bank from the config would strand.
pub fn held_of_bank(conn: &Connection, bank: &str) -> Result<(u64, Amount), DbError> {
    let mut st = conn.prepare_cached("SELECT value FROM coins WHERE bank_id = ?1 AND state != ?2")?;
    let values = st
        .query_map(params![bank, CoinState::Spent.as_str()], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    let amounts = values
        .into_iter()
        .map(|v| u64::try_from(v).map(Amount::new).map_err(|_| DbError::Corrupt(format!("coin value {v}"))))
        .collect::<Result<Vec<Amount>, DbError>>()?;
    let total = Amount::checked_sum(amounts.iter().copied()).map_err(|e| DbError::Other(e.to_string()))?;
    Ok((amounts.len() as u64, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Db, SEAL_V1, SEAL_V2};

    #[test]
    fn transition_table_is_exactly_as_documented() {
        use CoinState::*;
        let all = [Available, Pending, Received, Spent, Quarantined];
        let allowed = [
            (Available, Pending),
            (Pending, Spent),
            (Pending, Available),
            (Received, Spent),
            (Available, Quarantined),
            (Pending, Quarantined),
            (Received, Quarantined),
        ];
        for state in all {
            assert_eq!(CoinState::parse(state.as_str()).unwrap(), state);
        }
        assert!(CoinState::parse("lost").is_err());
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
        assert!(other.open_coin(&Clear::of(&coin).unwrap(), SEAL_V2, &raw).is_err());
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
        assert_eq!(db.with(|c| total(c, &db.vault, CoinState::Spent)).unwrap(), Amount::new(8));
    }

    #[test]
    fn counts_for_a_payment_count_no_more_than_it_could_use() {
        let dir = tempfile::tempdir().unwrap();
        let (db, coins) = wallet_holding(dir.path(), &[1, 1, 1, 2, 2, 4, 8, 8, 8, 8, 16, 16]);
        let bank = coins[0].body().bank_id.as_str().to_owned();
        let counts = |amount: u64| {
            db.with(|c| counts_for(c, CoinState::Available, &bank, Amount::new(amount)))
                .unwrap()
                .into_iter()
                .map(|(d, n)| (u64::from(d), n))
                .collect::<Vec<_>>()
        };
        // 5: one coin of each larger value, 5/4+1 = 2 fours (one held), 3 twos (two held),
        // 6 ones (three held).
        assert_eq!(counts(5), vec![(16, 1), (8, 1), (4, 1), (2, 2), (1, 3)]);
        // 16: 16/8+1 = 3 eights of the four held; 16/16+1 = 2 sixteens.
        assert_eq!(counts(16), vec![(16, 2), (8, 3), (4, 1), (2, 2), (1, 3)]);
        // Large enough: every coin, as counts_in counts them.
        let all: Vec<_> = db
            .with(|c| counts_in(c, CoinState::Available, &bank))
            .unwrap()
            .into_iter()
            .map(|(d, n)| (u64::from(d), n))
            .collect();
        assert_eq!(counts(1000), all);
        assert!(counts(1).iter().all(|&(_, n)| n <= 2));
        assert_eq!(db.with(|c| counts_for(c, CoinState::Pending, &bank, Amount::new(5))).unwrap(), vec![]);
    }

    /// A wallet database in `dir` holding available coins of these values.
    fn wallet_holding(dir: &std::path::Path, values: &[u64]) -> (Db, Vec<Coin>) {
        let db = Db::open(&dir.join("w.db"), Vault::new(&pmtp_proto::testing::identity(1))).unwrap();
        let coins = sample_coins(values);
        db.with(|c| {
            let tx = c.transaction()?;
            insert_coins(&tx, &db.vault, &coins, CoinState::Available, None)?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        (db, coins)
    }

    fn sample_coins(values: &[u64]) -> Vec<Coin> {
        let bank = pmtp_proto::testing::samples::parties().bank;
        let mut rng = pmtp_proto::testing::TestRng(7);
        values.iter().map(|&v| pmtp_proto::testing::samples::coin(&bank, &mut rng, v, now() + 1000)).collect()
    }

    fn state_of(db: &Db, coin: &Coin) -> (String, String) {
        db.with(|c| {
            Ok(c.query_row("SELECT state, damage FROM coins WHERE serial = ?1", params![&coin.serial().0[..]], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?)
        })
        .unwrap()
    }

    fn available_value(b: &Balance) -> u64 {
        b.coins.iter().filter(|c| c.3 == CoinState::Available).map(|c| c.1 * c.2).sum()
    }

    #[test]
    fn damaged_rows_are_quarantined_kept_reported_and_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let (db, coins) = wallet_holding(dir.path(), &[8, 16, 32, 4]);
        // One ciphertext byte flipped; one clear value forged (the seal binds it); one
        // sealed column turned to text (damage of one row must not fail every read).
        db.with(|c| {
            c.execute("UPDATE coins SET sealed = 'x' || sealed WHERE serial = ?1", params![&coins[3].serial().0[..]])?;
            Ok(())
        })
        .unwrap();
        db.with(|c| {
            let mut sealed: Vec<u8> =
                c.query_row("SELECT sealed FROM coins WHERE serial = ?1", params![&coins[0].serial().0[..]], |r| {
                    r.get(0)
                })?;
            sealed[20] ^= 1;
            c.execute("UPDATE coins SET sealed = ?2 WHERE serial = ?1", params![&coins[0].serial().0[..], sealed])?;
            c.execute("UPDATE coins SET value = 64 WHERE serial = ?1", params![&coins[1].serial().0[..]])?;
            Ok(())
        })
        .unwrap();
        let b = db.with(|c| balance(c, &db.vault)).unwrap();
        assert_eq!(available_value(&b), 32, "only the sound coin counts: {b:?}");
        assert_eq!(state_of(&db, &coins[3]).0, "quarantined");
        let serials: Vec<Serial> = coins.iter().map(|c| c.serial()).collect();
        let got = db.with(|c| coins_by_serial(c, &db.vault, &serials)).unwrap();
        assert_eq!(got, vec![coins[2].clone()], "only the sound coin is handed out");
        assert_eq!(state_of(&db, &coins[0]).0, "quarantined");
        let (state, damage) = state_of(&db, &coins[1]);
        assert_eq!(state, "quarantined");
        assert!(damage.contains("does not decrypt"), "{damage}");
        let b = db.with(|c| balance(c, &db.vault)).unwrap();
        assert_eq!(available_value(&b), 32, "forged and damaged coins are not counted: {b:?}");
        let bank = coins[0].body().bank_id.as_str().to_owned();
        assert_eq!(b.quarantined, vec![(bank, 3, 8 + 64 + 4)], "reported apart, with the value claimed");
        // Kept, and never leaving quarantine by the ordinary moves.
        let moved = db.with(|c| {
            let tx = c.transaction()?;
            move_coins(&tx, &serials[..1], CoinState::Pending, Some(1), None)
        });
        assert!(matches!(moved, Err(DbError::Transition { .. })));
        let rows: i64 = db.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM coins", [], |r| r.get(0))?)).unwrap();
        assert_eq!(rows, 4);
    }

    #[test]
    fn format_1_rows_are_resealed_at_open_and_forged_ones_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let id = pmtp_proto::testing::identity(1);
        let coins = sample_coins(&[8, 16]);
        {
            let db = Db::open(&path, Vault::new(&id)).unwrap();
            // Rows as the previous release wrote them: sealed under the serial alone.
            db.with(|c| {
                for (coin, value) in coins.iter().zip([8i64, 128]) {
                    let clear = Clear::of(coin)?;
                    let plain = bincode::serialize(coin).map_err(|e| DbError::Other(e.to_string()))?;
                    let sealed = db.vault.seal(&clear.aad(SEAL_V1), &plain)?;
                    c.execute(
                        "INSERT INTO coins(serial, bank_id, value, expiry, state, sealed, updated, seal)
                         VALUES (?1, ?2, ?3, ?4, 'available', ?5, 0, 1)",
                        params![&clear.serial.0[..], clear.bank_id, value, clear.expiry, sealed],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        }
        let db = Db::open(&path, Vault::new(&id)).unwrap();
        let seal: i64 = db
            .with(|c| {
                Ok(c.query_row("SELECT seal FROM coins WHERE serial = ?1", params![&coins[0].serial().0[..]], |r| {
                    r.get(0)
                })?)
            })
            .unwrap();
        assert_eq!(seal, SEAL_V2, "re-sealed with its clear columns bound");
        let got = db.with(|c| coins_in(c, &db.vault, CoinState::Available, None)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].coin, coins[0]);
        let (state, damage) = state_of(&db, &coins[1]);
        assert_eq!(state, "quarantined", "its value column (128) is not the coin's (16)");
        assert!(damage.contains("disagree"), "{damage}");
        assert_eq!(available_value(&db.with(|c| balance(c, &db.vault)).unwrap()), 8);
    }
}
