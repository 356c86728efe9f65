//! Payment records: one row per purchase, outgoing (this wallet paid a merchant) or
//! incoming (this wallet collected as a merchant). A payment's state moves only along
//! [`PaymentState::can_become`]; an unknown stored direction or state is
//! [`DbError::Corrupt`].

use super::{amount, i, now, DbError};
use pmtp_proto::Amount;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

stored_enum! {
    /// Which way a payment's money went. Stored in `payments.direction`.
    pub enum Direction ("payment direction") {
        /// This wallet paid a merchant.
        Out = "out",
        /// This wallet collected a payment as a merchant.
        In = "in",
    }
}

impl Direction {
    /// The state a payment of this direction is first written in.
    pub fn first_state(self) -> PaymentState {
        match self {
            Direction::Out => PaymentState::Sending,
            Direction::In => PaymentState::Received,
        }
    }
}

stored_enum! {
    /// Where a payment is. Stored in `payments.state`.
    pub enum PaymentState ("payment state") {
        /// Outgoing: its coins are pending and may have been sent; no receipt yet.
        Sending = "sending",
        /// Outgoing: the merchant refused; whether its bank spent the coins is not yet known.
        RefusedUnresolved = "refused_unresolved",
        /// Outgoing, resolved without a receipt: nothing came back (every coin was spent,
        /// so the merchant has them).
        SpentUnconfirmed = "spent_unconfirmed",
        /// Outgoing, resolved without a receipt: some value came back by exchange.
        Returned = "returned",
        /// Incoming: its coins are recorded as received, not yet validated at a bank.
        Received = "received",
        /// Incoming: the bank refused the coins for good (the buyer keeps them).
        Refused = "refused",
        /// Outgoing: paid, receipt stored. Incoming: coins validated at the bank.
        Done = "done",
    }
}

impl PaymentState {
    /// The transition table. Anything else is refused; `done`, `spent_unconfirmed`,
    /// `returned` and `refused` are final.
    ///
    /// | from | to | when |
    /// |---|---|---|
    /// | sending | done | the merchant's receipt is stored (out) |
    /// | sending | refused_unresolved | the merchant refused (out) |
    /// | sending, refused_unresolved | spent_unconfirmed, returned | resolved by exchanging its coins (out) |
    /// | received | done | its coins are validated at the bank (in) |
    /// | received | refused | the bank refused its coins for good (in) |
    pub fn can_become(self, to: PaymentState) -> bool {
        use PaymentState::*;
        matches!(
            (self, to),
            (Sending, Done)
                | (Sending, RefusedUnresolved)
                | (Sending | RefusedUnresolved, SpentUnconfirmed | Returned)
                | (Received, Done | Refused)
        )
    }

    /// Outgoing and not yet settled: resolved by exchanging its pending coins.
    pub fn is_unresolved(self) -> bool {
        matches!(self, PaymentState::Sending | PaymentState::RefusedUnresolved)
    }
}

/// A payment record as first written, in its direction's [`Direction::first_state`].
#[derive(Clone)]
pub struct NewPayment {
    pub direction: Direction,
    pub peer: String,
    pub merchant: String,
    pub merchant_fp: String,
    pub amount: Amount,
    pub description: String,
    /// bincode of the ask_payment_request's nonce (empty for a payment in band).
    pub request: Vec<u8>,
    /// A payment in band (HTTP 402): the URL and the shop's offer.
    pub http: Option<HttpTerms>,
}

/// What an outgoing payment in band records beside the common fields.
#[derive(Clone, Debug)]
pub struct HttpTerms {
    /// The URL whose answer was 402 (and where the payment is sent, and sent again).
    pub url: String,
    /// The shop's signed offer, as its header value (`v1.`...).
    pub offer: String,
}

/// An outgoing payment in band as recovery sends it again.
#[derive(Clone, Debug)]
pub struct HttpPaymentRecord {
    pub url: String,
    pub offer: String,
    /// The sealed payment, as its header value; `None` until it is made (before sending).
    pub sealed: Option<String>,
    /// How many times recovery has sent it again without an answer.
    pub attempts: u32,
}

/// Inserts a payment record (writes one `payments` row); returns its id.
pub fn insert_payment(tx: &Transaction<'_>, p: &NewPayment) -> Result<i64, DbError> {
    tx.execute(
        "INSERT INTO payments(direction, state, peer, merchant, merchant_fp, amount, description, request, created, updated,
                              url, offer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)",
        params![
            p.direction.as_str(),
            p.direction.first_state().as_str(),
            p.peer,
            p.merchant,
            p.merchant_fp,
            i(p.amount.minor_units())?,
            p.description,
            p.request,
            i(now())?,
            p.http.as_ref().map(|h| h.url.as_str()),
            p.http.as_ref().map(|h| h.offer.as_str()),
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Stores the sealed payment (its header value) of payment in band `id`, before it is
/// sent (writes `payments.sealed`).
pub fn store_sealed(tx: &Transaction<'_>, id: i64, sealed: &str) -> Result<(), DbError> {
    tx.execute("UPDATE payments SET sealed = ?2 WHERE id = ?1", params![id, sealed])?;
    Ok(())
}

/// The in-band part of payment `id`, or `None` for a PMTP payment (reads `payments`).
pub fn http_payment(conn: &Connection, id: i64) -> Result<Option<HttpPaymentRecord>, DbError> {
    let row = conn
        .query_row(
            "SELECT url, offer, sealed, http_attempts FROM payments WHERE id = ?1 AND url IS NOT NULL",
            params![id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    row.map(|(url, offer, sealed, attempts)| {
        Ok(HttpPaymentRecord {
            url,
            offer: offer.ok_or_else(|| DbError::Corrupt(format!("payment {id} has a URL but no offer")))?,
            sealed,
            attempts: u32::try_from(attempts)
                .map_err(|_| DbError::Corrupt(format!("payment {id}: {attempts} attempts")))?,
        })
    })
    .transpose()
}

/// An earlier outgoing payment in band for a URL.
#[derive(Clone, Debug)]
pub struct UrlPayment {
    pub id: i64,
    pub state: PaymentState,
    /// The offer's header value.
    pub offer: String,
    /// The receipt (bincode), once done.
    pub receipt: Option<Vec<u8>>,
}

/// The latest outgoing payment in band for `url` that is done or still `sending` (reads
/// `payments`).
pub fn latest_for_url(conn: &Connection, url: &str) -> Result<Option<UrlPayment>, DbError> {
    let row = conn
        .query_row(
            "SELECT id, state, offer, receipt FROM payments
             WHERE direction = 'out' AND url = ?1 AND state IN ('done', 'sending') AND offer IS NOT NULL
             ORDER BY id DESC LIMIT 1",
            params![url],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?)),
        )
        .optional()?;
    row.map(|(id, state, offer, receipt)| Ok(UrlPayment { id, state: PaymentState::parse(&state)?, offer, receipt }))
        .transpose()
}

/// Counts one more unanswered attempt to send payment in band `id` again; returns the
/// count (writes `payments.http_attempts`).
pub fn note_http_attempt(conn: &Connection, id: i64) -> Result<u32, DbError> {
    let n: i64 = conn.query_row(
        "UPDATE payments SET http_attempts = http_attempts + 1 WHERE id = ?1 RETURNING http_attempts",
        params![id],
        |r| r.get(0),
    )?;
    u32::try_from(n).map_err(|_| DbError::Corrupt(format!("payment {id}: {n} attempts")))
}

/// The state of payment `id` (reads `payments.state`); an unknown payment is an error.
pub fn payment_state(conn: &Connection, id: i64) -> Result<PaymentState, DbError> {
    let state: String = conn
        .query_row("SELECT state FROM payments WHERE id = ?1", params![id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| DbError::Other(format!("no payment {id}")))?;
    PaymentState::parse(&state)
}

/// Moves payment `id` to `to` along the table, noting `reason` when given, and returns the
/// state it had. Setting the state it already has only notes the reason (an attempt that
/// changed nothing, or a retry that raced its original); any other move outside the table
/// is [`DbError::Move`]. Reads and writes one `payments` row.
pub fn set_payment_state(
    tx: &Transaction<'_>,
    id: i64,
    to: PaymentState,
    reason: Option<&str>,
) -> Result<PaymentState, DbError> {
    let from = payment_state(tx, id)?;
    if from != to && !from.can_become(to) {
        return Err(DbError::Move { what: "payment", id, from: from.as_str(), to: to.as_str() });
    }
    tx.execute(
        "UPDATE payments SET state = ?2, reason = COALESCE(?3, reason), updated = ?4 WHERE id = ?1",
        params![id, to.as_str(), reason, i(now())?],
    )?;
    Ok(from)
}

/// Marks payment `id` done and stores its signed receipt (bincode), in one write: an
/// outgoing payment whose receipt arrived, or an incoming one whose coins the bank has
/// just accepted. Returns the state it had; moves outside the table are refused.
pub fn mark_payment_done(tx: &Transaction<'_>, id: i64, receipt: &[u8]) -> Result<PaymentState, DbError> {
    let from = set_payment_state(tx, id, PaymentState::Done, None)?;
    store_receipt(tx, id, receipt)?;
    Ok(from)
}

/// Stores the receipt of payment `id` without changing its state (writes
/// `payments.receipt`).
pub fn store_receipt(tx: &Transaction<'_>, id: i64, receipt: &[u8]) -> Result<(), DbError> {
    tx.execute("UPDATE payments SET receipt = ?2 WHERE id = ?1", params![id, receipt])?;
    Ok(())
}

/// Settles an unresolved outgoing payment as `to` (`returned` or `spent_unconfirmed`), a
/// compare-and-set: returns `false`, changing nothing, if the payment is no longer
/// unresolved (its receipt arrived meanwhile).
pub fn resolve_outgoing(tx: &Transaction<'_>, id: i64, to: PaymentState) -> Result<bool, DbError> {
    let from = payment_state(tx, id)?;
    if !from.is_unresolved() {
        return Ok(false);
    }
    set_payment_state(tx, id, to, None)?;
    Ok(true)
}

/// Outgoing payments that are unresolved (`sending` or `refused_unresolved`), by id.
pub fn unresolved_outgoing(conn: &Connection) -> Result<Vec<i64>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT id FROM payments WHERE direction = 'out' AND state IN ('sending', 'refused_unresolved') ORDER BY id",
    )?;
    let ids = st.query_map([], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// Moves every incoming payment still `received` whose coins are all validated (none
/// received or quarantined left) to `done` (a retried operation validated them). Returns
/// how many moved.
pub fn mark_validated_incoming_done(conn: &Connection) -> Result<usize, DbError> {
    Ok(conn.execute(
        "UPDATE payments SET state = 'done', updated = ?1 WHERE direction = 'in' AND state = 'received'
         AND NOT EXISTS (SELECT 1 FROM coins WHERE coins.payment = payments.id
                         AND coins.state IN ('received', 'quarantined'))",
        params![i(now())?],
    )?)
}

/// One payment as `history` shows it.
#[derive(Clone, Debug)]
pub struct PaymentRecord {
    pub id: i64,
    pub direction: Direction,
    pub state: PaymentState,
    pub peer: String,
    pub merchant: String,
    pub merchant_fp: String,
    pub amount: Amount,
    pub description: String,
    pub receipt: Option<Vec<u8>>,
    pub reason: String,
    pub created: i64,
    /// Payments in band: the URL paid for, and the shop's offer (header value).
    pub url: Option<String>,
    pub offer: Option<String>,
}

/// The latest `limit` payments, newest first. A row with an unknown direction or state,
/// or a negative amount, is [`DbError::Corrupt`].
pub fn payment_history(conn: &Connection, limit: u32) -> Result<Vec<PaymentRecord>, DbError> {
    let mut st = conn.prepare_cached(
        "SELECT id, direction, state, peer, merchant, merchant_fp, amount, description, receipt, reason, created,
                url, offer
         FROM payments ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = st
        .query_map(params![limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                (r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?),
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<Vec<u8>>>(8)?,
                r.get::<_, String>(9)?,
                (r.get::<_, i64>(10)?, r.get::<_, Option<String>>(11)?, r.get::<_, Option<String>>(12)?),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(
                id,
                direction,
                state,
                (peer, merchant, merchant_fp),
                stored,
                description,
                receipt,
                reason,
                (created, url, offer),
            )| {
                Ok(PaymentRecord {
                    id,
                    direction: Direction::parse(&direction)?,
                    state: PaymentState::parse(&state)?,
                    peer,
                    merchant,
                    merchant_fp,
                    amount: amount(stored)?,
                    description,
                    receipt,
                    reason,
                    created,
                    url,
                    offer,
                })
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentState::*;

    #[test]
    fn payment_transition_table_is_exactly_as_documented() {
        let allowed = [
            (Sending, Done),
            (Sending, RefusedUnresolved),
            (Sending, SpentUnconfirmed),
            (Sending, Returned),
            (RefusedUnresolved, SpentUnconfirmed),
            (RefusedUnresolved, Returned),
            (Received, Done),
            (Received, Refused),
        ];
        for &from in PaymentState::ALL {
            assert_eq!(PaymentState::parse(from.as_str()).unwrap(), from);
            for &to in PaymentState::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
        for d in [Direction::Out, Direction::In] {
            assert_eq!(Direction::parse(d.as_str()).unwrap(), d);
        }
    }

    #[test]
    fn unknown_stored_payment_states_and_directions_are_errors_not_defaults() {
        assert!(matches!(PaymentState::parse("paid"), Err(DbError::Corrupt(_))));
        assert!(matches!(PaymentState::parse(""), Err(DbError::Corrupt(_))));
        assert!(matches!(Direction::parse("sideways"), Err(DbError::Corrupt(_))));
    }

    fn new_payment(direction: Direction) -> NewPayment {
        NewPayment {
            direction,
            peer: "127.0.0.1".into(),
            merchant: "bob".into(),
            merchant_fp: "fp".into(),
            amount: Amount::new(24),
            description: "a book".into(),
            request: vec![1],
            http: None,
        }
    }

    #[test]
    fn payments_move_only_along_the_table_and_resolving_is_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::test_db(dir.path());
        db.with(|c| {
            let tx = c.transaction()?;
            let out = insert_payment(&tx, &new_payment(Direction::Out))?;
            assert_eq!(payment_state(&tx, out)?, Sending);
            assert_eq!(mark_payment_done(&tx, out, b"receipt")?, Sending);
            // The receipt arrived first: resolving it afterwards changes nothing.
            assert!(!resolve_outgoing(&tx, out, SpentUnconfirmed)?);
            assert_eq!(payment_state(&tx, out)?, Done);
            let refused = set_payment_state(&tx, out, RefusedUnresolved, Some("late"));
            assert!(matches!(refused, Err(DbError::Move { what: "payment", .. })), "{refused:?}");

            let incoming = insert_payment(&tx, &new_payment(Direction::In))?;
            assert_eq!(payment_state(&tx, incoming)?, Received);
            // An ambiguous failure stays received, with its reason noted.
            assert_eq!(set_payment_state(&tx, incoming, Received, Some("bank busy"))?, Received);
            set_payment_state(&tx, incoming, Refused, Some("coin spent"))?;
            assert!(set_payment_state(&tx, incoming, Done, None).is_err(), "a refused payment never turns done");
            let history = payment_history(&tx, 10)?;
            assert_eq!(history.len(), 2);
            assert_eq!((history[0].direction, history[0].state), (Direction::In, Refused));
            assert_eq!(history[0].reason, "coin spent");
            assert_eq!(history[1].receipt.as_deref(), Some(&b"receipt"[..]));
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_payment_in_band_keeps_its_url_offer_sealed_value_and_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::test_db(dir.path());
        db.with(|c| {
            let tx = c.transaction()?;
            let pmtp = insert_payment(&tx, &new_payment(Direction::Out))?;
            let terms = HttpTerms { url: "http://shop:80/paper".into(), offer: "v1.offer".into() };
            let inband = insert_payment(&tx, &NewPayment { http: Some(terms), ..new_payment(Direction::Out) })?;
            assert!(http_payment(&tx, pmtp)?.is_none(), "a PMTP payment has no in-band part");
            let r = http_payment(&tx, inband)?.unwrap();
            assert_eq!(
                (r.url.as_str(), r.offer.as_str(), r.sealed, r.attempts),
                ("http://shop:80/paper", "v1.offer", None, 0)
            );
            store_sealed(&tx, inband, "v1.sealed")?;
            assert_eq!(note_http_attempt(&tx, inband)?, 1);
            assert_eq!(note_http_attempt(&tx, inband)?, 2);
            let r = http_payment(&tx, inband)?.unwrap();
            assert_eq!((r.sealed.as_deref(), r.attempts), (Some("v1.sealed"), 2));
            let h = payment_history(&tx, 10)?;
            assert_eq!(h[0].url.as_deref(), Some("http://shop:80/paper"));
            assert_eq!(h[1].url, None);
            offerless_is_corrupt(&tx, inband)
        })
        .unwrap();
    }

    /// An in-band row with a URL but no offer is corrupt, not a default.
    fn offerless_is_corrupt(tx: &Transaction<'_>, id: i64) -> Result<(), DbError> {
        tx.execute("UPDATE payments SET offer = NULL WHERE id = ?1", [id])?;
        assert!(matches!(http_payment(tx, id), Err(DbError::Corrupt(_))));
        Ok(())
    }

    #[test]
    fn a_stored_payment_of_unknown_state_or_direction_or_negative_amount_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::test_db(dir.path());
        let id = db
            .with(|c| {
                let tx = c.transaction()?;
                let id = insert_payment(&tx, &new_payment(Direction::Out))?;
                tx.commit()?;
                Ok(id)
            })
            .unwrap();
        for edit in ["state = 'paid'", "direction = 'sideways'", "amount = -24"] {
            db.with(|c| {
                c.execute("UPDATE payments SET state = 'sending', direction = 'out', amount = 24 WHERE id = ?1", [id])?;
                c.execute(&format!("UPDATE payments SET {edit} WHERE id = ?1"), [id])?;
                Ok(())
            })
            .unwrap();
            let read = db.with(|c| payment_history(c, 10));
            assert!(matches!(read, Err(DbError::Corrupt(_))), "{edit}: {read:?}");
        }
        db.with(|c| Ok(c.execute("UPDATE payments SET state = 'paid', amount = 24 WHERE id = ?1", [id])?)).unwrap();
        let moved = db.with(|c| {
            let tx = c.transaction()?;
            set_payment_state(&tx, id, Done, None)
        });
        assert!(matches!(moved, Err(DbError::Corrupt(_))), "{moved:?}");
    }
}
