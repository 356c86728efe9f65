//! Pinned merchant keys, like SSH's known_hosts: the first key a merchant's name presents
//! is kept, and a different one later is refused until a person forgets the old one.

use super::{i, now, DbError};
use rusqlite::{params, Connection, OptionalExtension};

/// The fingerprint pinned for merchant `name`, if any (reads `merchants`).
pub fn pinned_fingerprint(conn: &Connection, name: &str) -> Result<Option<String>, DbError> {
    Ok(conn.query_row("SELECT fingerprint FROM merchants WHERE name = ?1", params![name], |r| r.get(0)).optional()?)
}

/// The pinned public identity (bincode) of merchant `name`, if any (reads `merchants`).
pub fn pinned_identity(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, DbError> {
    Ok(conn.query_row("SELECT identity FROM merchants WHERE name = ?1", params![name], |r| r.get(0)).optional()?)
}

/// Pins merchant `name` with `fingerprint` and `identity` (bincode) if it is new; if it is
/// known, only notes that it was seen now (the pinned key is never replaced here).
pub fn pin_merchant(conn: &Connection, name: &str, fingerprint: &str, identity: &[u8]) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO merchants(name, fingerprint, identity, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT(name) DO UPDATE SET last_seen = ?4",
        params![name, fingerprint, identity, i(now())?],
    )?;
    Ok(())
}

/// One pinned merchant, as `merchants` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedMerchant {
    pub name: String,
    pub fingerprint: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// Every pinned merchant, by name.
pub fn pinned_merchants(conn: &Connection) -> Result<Vec<PinnedMerchant>, DbError> {
    let mut st = conn.prepare_cached("SELECT name, fingerprint, first_seen, last_seen FROM merchants ORDER BY name")?;
    let rows = st
        .query_map([], |r| {
            Ok(PinnedMerchant { name: r.get(0)?, fingerprint: r.get(1)?, first_seen: r.get(2)?, last_seen: r.get(3)? })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Forgets merchant `name`'s pinned key (its next key is pinned afresh); returns how many
/// were forgotten (0 or 1).
pub fn forget_merchant(conn: &Connection, name: &str) -> Result<usize, DbError> {
    Ok(conn.execute("DELETE FROM merchants WHERE name = ?1", params![name])?)
}
