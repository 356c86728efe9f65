//! Paid orders, on the merchant's side: what a receipt re-opens until the order expires.
//!
//! An order is named by the random part of the ask_payment_request's nonce (16 bytes),
//! which the receipt's `request` field repeats; see docs/PMTP.md, "Orders". Nothing is
//! written for an order until it is paid: the row is inserted in the same transaction that
//! marks the incoming payment done and stores its receipt. An order paid in band over HTTP
//! (`crate::settle`) is named by its offer's order id; its row is written with the
//! incoming payment, before the bank is asked, so that the primary key lets one payment
//! of two win; it counts as paid once that payment is done, and is released
//! ([`release_order`]) if the bank refuses the coins.

use super::{i, DbError};
use rusqlite::{params, OptionalExtension, Transaction};

/// An order's id: the ask's nonce random part (in band: the offer's order).
pub use pmtp_proto::http::OrderId;

/// An order id as people see it (the shop's page, the wallet's prompt): the first 8
/// bytes in hex, in groups of four digits. Enough to tell orders apart by eye; the whole
/// id is in the receipt.
pub fn short_order_id(id: &OrderId) -> String {
    pmtp_proto::http::order_label(id)
}

/// A paid order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaidOrder {
    pub order: OrderId,
    /// The shop's name for what was sold (the CGI's item id).
    pub item: String,
    pub amount: pmtp_proto::Amount,
    pub payment: i64,
    /// The buyer's wallet address the shop collected from (host:port, as given).
    pub buyer: String,
    /// The signed receipt (bincode), as sent to the buyer.
    pub receipt: Vec<u8>,
    /// Unix seconds after which the receipt no longer re-opens the item.
    pub expires: u64,
}

/// Records a paid order (writes `orders`). A second record for one order is an error: an
/// order is paid once.
pub fn insert_paid_order(tx: &Transaction<'_>, o: &PaidOrder) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO orders(id, item, amount, payment, buyer, receipt, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![&o.order[..], o.item, i(o.amount.minor_units())?, o.payment, o.buyer, o.receipt, i(o.expires)?],
    )?;
    Ok(())
}

/// The paid order `id`, if any, expired or not (reads `orders`).
pub fn paid_order(conn: &rusqlite::Connection, id: &OrderId) -> Result<Option<PaidOrder>, DbError> {
    let row = conn
        .query_row(
            "SELECT item, amount, payment, buyer, receipt, expires FROM orders WHERE id = ?1",
            params![&id[..]],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    row.map(|(item, amount, payment, buyer, receipt, expires)| {
        Ok(PaidOrder {
            order: *id,
            item,
            amount: super::amount(amount)?,
            payment,
            buyer,
            receipt,
            expires: u64::try_from(expires).map_err(|_| DbError::Corrupt(format!("order expiry {expires}")))?,
        })
    })
    .transpose()
}

/// Frees order `id` held by `payment`, which the bank refused (writes `orders`): the
/// buyer may pay the order again. A row held by another payment is left alone.
pub fn release_order(tx: &Transaction<'_>, id: &OrderId, payment: i64) -> Result<bool, DbError> {
    Ok(tx.execute("DELETE FROM orders WHERE id = ?1 AND payment = ?2", params![&id[..], payment])? > 0)
}

/// Forgets up to `limit` orders that expired before `before` (writes `orders`): their
/// receipts no longer re-open anything, and the table would otherwise grow with every
/// sale. Returns how many were removed.
pub fn prune_expired_orders(conn: &rusqlite::Connection, before: u64, limit: usize) -> Result<usize, DbError> {
    let before = i64::try_from(before).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(conn.execute(
        "DELETE FROM orders WHERE id IN (SELECT id FROM orders WHERE expires < ?1 ORDER BY expires LIMIT ?2)",
        params![before, limit],
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_ids_are_the_first_eight_bytes_grouped() {
        let id: OrderId = [0x3f, 0x2a, 0x91, 0xbc, 0x0d, 0x4e, 0x77, 0xa1, 9, 9, 9, 9, 9, 9, 9, 9];
        assert_eq!(short_order_id(&id), "3f2a-91bc-0d4e-77a1");
    }

    #[test]
    fn an_order_is_recorded_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::test_db(dir.path());
        let o = PaidOrder {
            order: [7; 16],
            item: "paper".into(),
            amount: pmtp_proto::Amount::new(37),
            payment: 3,
            buyer: "127.0.0.2:8001".into(),
            receipt: b"signed".to_vec(),
            expires: 99,
        };
        db.with(|c| {
            let tx = c.transaction()?;
            insert_paid_order(&tx, &o)?;
            tx.commit()?;
            assert_eq!(paid_order(c, &[7; 16])?, Some(o.clone()));
            assert_eq!(paid_order(c, &[8; 16])?, None);
            let tx = c.transaction()?;
            assert!(insert_paid_order(&tx, &o).is_err(), "an order is paid once");
            drop(tx);
            // Expired orders are forgotten, in bounded rounds; live ones stay.
            let tx = c.transaction()?;
            for (n, expires) in [(1u8, 50u64), (2, 60), (3, 10_000)] {
                insert_paid_order(&tx, &PaidOrder { order: [n; 16], expires, payment: i64::from(n), ..o.clone() })?;
            }
            tx.commit()?;
            assert_eq!(prune_expired_orders(c, 100, 2)?, 2, "the two that expired first: [1] (50) and [2] (60)");
            assert_eq!(prune_expired_orders(c, 100, 2)?, 1);
            assert_eq!(prune_expired_orders(c, 100, 2)?, 0);
            assert!(paid_order(c, &[3; 16])?.is_some(), "an unexpired order stays");
            assert!(paid_order(c, &[2; 16])?.is_none());
            Ok(())
        })
        .unwrap();
    }
}
