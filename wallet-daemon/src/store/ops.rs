//! Bank operations (withdraw, exchange, deposit): one `ops` row each, with the request id
//! that is sent, and sent again, until the bank answers. A kind or state is an enum with a
//! written table; an unknown stored one is [`DbError::Corrupt`] (an unknown kind must never
//! be retried as some other operation).

use super::coins::{coins_of_op, move_coins, tag_coins_with_op, CoinState};
use super::vault::Vault;
use super::{amount, i, now, DbError};
use pmtp_proto::{Amount, Serial};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

stored_enum! {
    /// What an operation asks of its bank. Stored in `ops.kind`.
    pub enum OpKind ("operation kind") {
        /// Money from the account into new coins.
        Withdraw = "withdraw",
        /// Coins for new coins of the same total (refresh, change, resolving a payment, or a
        /// merchant validating received coins).
        Exchange = "exchange",
        /// Coins into the account.
        Deposit = "deposit",
    }
}

stored_enum! {
    /// Where an operation is. Stored in `ops.state`.
    pub enum OpState ("operation state") {
        /// Recorded; its request may have been sent, and is sent again (same request id)
        /// until the bank answers.
        Started = "started",
        /// The bank answered with success; its effect is stored.
        Done = "done",
        /// The bank refused it for good, and the person was told so; never sent again.
        Failed = "failed",
    }
}

impl OpState {
    /// The transition table: `done` and `failed` are final.
    ///
    /// | from | to | when |
    /// |---|---|---|
    /// | started | done | the bank's success is stored |
    /// | started | failed | a definitive refusal (the request id is retired) |
    pub fn can_become(self, to: OpState) -> bool {
        matches!((self, to), (OpState::Started, OpState::Done) | (OpState::Started, OpState::Failed))
    }
}

/// An operation row.
#[derive(Clone, Debug)]
pub struct Op {
    pub id: i64,
    pub kind: OpKind,
    pub bank: String,
    pub request_id: [u8; 16],
    pub amount: Amount,
    pub payment: Option<i64>,
    /// A withdrawal's password, sealed by the vault (forgotten when it ends).
    pub secret: Option<Vec<u8>>,
}

/// Records a withdrawal (state started) with its password sealed; returns its id.
pub fn insert_withdraw(
    tx: &Transaction<'_>,
    bank: &str,
    request_id: &[u8; 16],
    amount: Amount,
    sealed_password: &[u8],
) -> Result<i64, DbError> {
    tx.execute(
        "INSERT INTO ops(kind, state, bank_id, request_id, amount, secret, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            OpKind::Withdraw.as_str(),
            OpState::Started.as_str(),
            bank,
            &request_id[..],
            i(amount.minor_units())?,
            sealed_password,
            i(now())?
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Records an exchange or deposit (state started) and tags its coins with it, inside `tx`
/// (so it can share a transaction with whatever made the coins ours). Coins in
/// `from = Available` become pending along the coin table; coins pending under a payment
/// or received from a buyer keep their state. The operation's amount is the sum of its
/// coins, opened. Returns its id.
#[allow(clippy::too_many_arguments)]
pub fn start_coin_op(
    tx: &Transaction<'_>,
    vault: &Vault,
    kind: OpKind,
    bank: &str,
    request_id: &[u8; 16],
    payment: Option<i64>,
    serials: &[Serial],
    from: CoinState,
) -> Result<i64, DbError> {
    if kind == OpKind::Withdraw {
        return Err(DbError::Other("a withdrawal takes no coins".into()));
    }
    tx.execute(
        "INSERT INTO ops(kind, state, bank_id, request_id, amount, payment, created) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
        params![kind.as_str(), OpState::Started.as_str(), bank, &request_id[..], payment, i(now())?],
    )?;
    let op_id = tx.last_insert_rowid();
    if from == CoinState::Available {
        move_coins(tx, serials, CoinState::Pending, None, Some(op_id))?;
    } else {
        tag_coins_with_op(tx, serials, op_id)?;
    }
    let total = Amount::checked_sum(coins_of_op(tx, vault, op_id)?.iter().map(|r| r.coin.value()))
        .map_err(|e| DbError::Other(e.to_string()))?;
    tx.execute("UPDATE ops SET amount = ?2 WHERE id = ?1", params![op_id, i(total.minor_units())?])?;
    Ok(op_id)
}

/// Ends operation `id` in `to` (with `reason` if failed), and forgets its stored secret.
/// Ending it twice in the same state is a no-op (a retry that raced its original); any
/// other move outside the table is refused, so a failed operation can never turn done.
pub fn end_op(tx: &Transaction<'_>, id: i64, to: OpState, reason: &str) -> Result<(), DbError> {
    let from: String = tx
        .query_row("SELECT state FROM ops WHERE id = ?1", params![id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| DbError::Other(format!("no operation {id}")))?;
    let from = OpState::parse(&from)?;
    if from == to {
        return Ok(());
    }
    if !from.can_become(to) {
        return Err(DbError::Move { what: "operation", id, from: from.as_str(), to: to.as_str() });
    }
    tx.execute(
        "UPDATE ops SET state = ?2, secret = NULL, reason = ?3 WHERE id = ?1",
        params![id, to.as_str(), reason],
    )?;
    Ok(())
}

/// Operations still started (to be sent again), oldest first. An unknown kind, a request
/// id that is not 16 bytes or a negative amount is [`DbError::Corrupt`].
pub fn started_ops(conn: &Connection) -> Result<Vec<Op>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT id, kind, bank_id, request_id, amount, payment, secret FROM ops WHERE state = ?1 ORDER BY id",
    )?;
    let rows = st
        .query_map(params![OpState::Started.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(id, kind, bank, rid, stored, payment, secret)| {
            let request_id = rid
                .try_into()
                .map_err(|_| DbError::Corrupt(format!("operation {id}: its request id is not 16 bytes")))?;
            Ok(Op { id, kind: OpKind::parse(&kind)?, bank, request_id, amount: amount(stored)?, payment, secret })
        })
        .collect()
}

/// Whether coin `serial` belongs to an operation still started (reads `coins` and `ops`).
pub fn coin_has_started_op(conn: &Connection, serial: &Serial) -> Result<bool, DbError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM ops o JOIN coins k ON k.op = o.id WHERE k.serial = ?1 AND o.state = ?2",
        params![&serial.0[..], OpState::Started.as_str()],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Operations (withdrawals, exchanges, deposits) at `bank` whose outcome is not known yet:
/// the bank may have acted on them, so the wallet must be able to reach it again.
pub fn unfinished_ops_of_bank(conn: &Connection, bank: &str) -> Result<u64, DbError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM ops WHERE bank_id = ?1 AND state = ?2",
        params![bank, OpState::Started.as_str()],
        |r| r.get(0),
    )?;
    u64::try_from(n).map_err(|_| DbError::Corrupt("negative count".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_transition_table_is_exactly_as_documented() {
        use OpState::*;
        for &from in OpState::ALL {
            assert_eq!(OpState::parse(from.as_str()).unwrap(), from);
            for &to in OpState::ALL {
                assert_eq!(from.can_become(to), from == Started && to != Started, "{from:?} -> {to:?}");
            }
        }
        for &kind in OpKind::ALL {
            assert_eq!(OpKind::parse(kind.as_str()).unwrap(), kind);
        }
    }

    #[test]
    fn unknown_stored_op_kinds_and_states_are_errors_not_defaults() {
        assert!(matches!(OpState::parse("retrying"), Err(DbError::Corrupt(_))));
        assert!(matches!(OpKind::parse("refund"), Err(DbError::Corrupt(_))));
        assert!(matches!(OpKind::parse(""), Err(DbError::Corrupt(_))));
    }

    #[test]
    fn a_stored_op_of_unknown_kind_or_negative_amount_is_corrupt_not_retried_as_another() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::test_db(dir.path());
        let id = db
            .with(|c| {
                let tx = c.transaction()?;
                let id = insert_withdraw(&tx, "bank-a", &[7; 16], Amount::new(16), b"sealed")?;
                tx.commit()?;
                Ok(id)
            })
            .unwrap();
        let ops = db.with(|c| started_ops(c)).unwrap();
        assert_eq!((ops.len(), ops[0].kind, ops[0].amount), (1, OpKind::Withdraw, Amount::new(16)));
        for (column, value) in [("kind", "refund"), ("kind", "Deposit"), ("amount", "-16"), ("request_id", "x'07'")] {
            db.with(|c| {
                c.execute(
                    "UPDATE ops SET kind = 'withdraw', amount = 16, request_id = zeroblob(16) WHERE id = ?1",
                    [id],
                )?;
                c.execute(&format!("UPDATE ops SET {column} = {} WHERE id = ?1", sql_literal(value)), [id])?;
                Ok(())
            })
            .unwrap();
            let read = db.with(|c| started_ops(c));
            assert!(matches!(read, Err(DbError::Corrupt(_))), "{column} = {value}: {read:?}");
        }
    }

    fn sql_literal(v: &str) -> String {
        if v.starts_with("x'") || v.parse::<i64>().is_ok() {
            v.to_owned()
        } else {
            format!("'{v}'")
        }
    }

    #[test]
    fn a_failed_op_never_turns_done() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::test_db(dir.path());
        let moved = db.with(|c| {
            let tx = c.transaction()?;
            let id = insert_withdraw(&tx, "bank-a", &[7; 16], Amount::new(16), b"sealed")?;
            end_op(&tx, id, OpState::Failed, "wrong password")?;
            end_op(&tx, id, OpState::Failed, "again")?;
            end_op(&tx, id, OpState::Done, "")
        });
        assert!(matches!(moved, Err(DbError::Move { what: "operation", .. })), "{moved:?}");
    }
}
