//! Checks a SQLite write-ahead log for committed transactions that SQLite would drop.
//!
//! When SQLite opens a database after a crash it replays the WAL up to the last frame
//! whose checksum chain holds, and silently forgets the rest. Frames that a crash tore
//! (never acknowledged) are rightly forgotten; but a committed, acknowledged transaction
//! whose frames were damaged afterwards (a bad disk, a stray write) would vanish too: a
//! deposit un-done while the depositor's wallet holds its coins as spent. So before the
//! bank opens its database it reads the WAL itself (the format is in SQLite's `wal.c`
//! and <https://www.sqlite.org/fileformat2.html#walformat>) and refuses to go on when:
//!
//! - the wal-index (`-shm`), which a crash leaves behind and which records how many
//!   frames were committed, says more frames were committed than the WAL now holds valid
//!   (and more than were already copied into the database); or
//! - after the first invalid frame, a later frame still carries the WAL's current salts:
//!   the damaged frame was followed by more writes, so it was not the torn tail of a crash.
//!
//! Run only while no other process has the database open (the caller holds the bank's
//! serve lock): a live writer's half-written frame is not damage.

use super::StoreError;
use std::path::Path;

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const SHM_HEADER: usize = 48;

/// What the WAL check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalCheck {
    /// No WAL, or nothing in it that SQLite would drop and that was committed.
    Clean,
    /// Committed transactions would be lost; the text says what was found.
    Damaged(String),
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

fn ne32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// SQLite's WAL checksum: over 32-bit words, in pairs, continuing from `s`.
fn checksum(data: &[u8], big_endian: bool, s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian { (be32(pair, 0), be32(pair, 4)) } else { (le32(pair, 0), le32(pair, 4)) };
        s0 = s0.wrapping_add(a).wrapping_add(s1);
        s1 = s1.wrapping_add(b).wrapping_add(s0);
    }
    (s0, s1)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The wal-index header a crash left behind, if it is intact.
struct IndexHeader {
    /// Frames committed (the last commit frame's number).
    max_frame: u32,
    /// Frames already copied into the database by a checkpoint: losing those loses
    /// nothing. (When SQLite starts the WAL over, every old frame was copied.)
    backfilled: u32,
}

fn read_index(shm: &[u8]) -> Option<IndexHeader> {
    if shm.len() < 2 * SHM_HEADER + 4 {
        return None;
    }
    let (a, b) = (&shm[..SHM_HEADER], &shm[SHM_HEADER..2 * SHM_HEADER]);
    // Two copies, equal when the header is not being written; `isInit` set.
    if a != b || a[12] != 1 {
        return None;
    }
    // Its checksum is in native byte order (SQLite's `walIndexWriteHdr`).
    let native_big = cfg!(target_endian = "big");
    let (c0, c1) = checksum(&a[..40], native_big, (0, 0));
    if (c0, c1) != (ne32(a, 40), ne32(a, 44)) {
        return None;
    }
    Some(IndexHeader { max_frame: ne32(a, 16), backfilled: ne32(shm, 2 * SHM_HEADER) })
}

/// Checks the WAL beside the database at `db` (`<db>-wal`, `<db>-shm`).
pub fn check(db: &Path) -> Result<WalCheck, StoreError> {
    let with = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let read = |p: &Path| match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io { path: p.to_owned(), source }),
    };
    let wal_path = with("-wal");
    let Some(wal) = read(&wal_path)? else { return Ok(WalCheck::Clean) };
    let index = read(&with("-shm"))?.as_deref().and_then(read_index);
    let committed_elsewhere = |valid: u32| -> Option<String> {
        let i = index.as_ref()?;
        (i.max_frame > valid.max(i.backfilled)).then(|| {
            format!(
                "{} holds {valid} readable committed frames, but {} frames were committed before the bank stopped",
                wal_path.display(),
                i.max_frame
            )
        })
    };
    if wal.len() < WAL_HEADER {
        return Ok(match committed_elsewhere(0) {
            Some(text) => WalCheck::Damaged(text),
            None => WalCheck::Clean,
        });
    }
    let magic = be32(&wal, 0);
    let page = be32(&wal, 8) as usize;
    let header_ok = (magic & !1) == 0x377f_0682
        && page.is_power_of_two()
        && (512..=65536).contains(&page)
        && checksum(&wal[..24], magic & 1 == 1, (0, 0)) == (be32(&wal, 24), be32(&wal, 28));
    if !header_ok {
        let frames_follow = wal.len() > WAL_HEADER;
        return Ok(match committed_elsewhere(0) {
            Some(text) => WalCheck::Damaged(format!("its header is damaged; {text}")),
            None if frames_follow && index.is_some() => {
                WalCheck::Damaged(format!("the header of {} is damaged", wal_path.display()))
            }
            None => WalCheck::Clean,
        });
    }
    let big_endian = magic & 1 == 1;
    let salts = &wal[16..24];
    let frame_len = FRAME_HEADER + page;
    let mut s = (be32(&wal, 24), be32(&wal, 28));
    let (mut frame, mut last_commit) = (0u32, 0u32);
    let mut at = WAL_HEADER;
    let mut first_bad = None;
    while at + frame_len <= wal.len() {
        let f = &wal[at..at + frame_len];
        let next = checksum(&f[FRAME_HEADER..], big_endian, checksum(&f[..8], big_endian, s));
        if &f[8..16] != salts || next != (be32(f, 16), be32(f, 20)) {
            first_bad = Some(at);
            break;
        }
        s = next;
        frame += 1;
        if be32(f, 4) != 0 {
            last_commit = frame;
        }
        at += frame_len;
    }
    if let Some(text) = committed_elsewhere(last_commit) {
        return Ok(WalCheck::Damaged(text));
    }
    if let Some(bad) = first_bad {
        // Frames of this generation after the damaged one: it was written over later.
        let mut later = bad + frame_len;
        while later + FRAME_HEADER <= wal.len() {
            if wal[later + 8..later + 12] == salts[..4] || wal[later + 12..later + 16] == salts[4..] {
                return Ok(WalCheck::Damaged(format!(
                    "{}: frame {} is damaged but later frames were written after it",
                    wal_path.display(),
                    frame + 1
                )));
            }
            later += frame_len;
        }
    }
    Ok(WalCheck::Clean)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A database whose WAL a crash left behind: the connection is leaked, as `kill -9`
    /// would leave it, so SQLite neither checkpoints nor deletes the WAL.
    fn crashed_db(dir: &Path, rows: usize) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("t.db");
        let conn = payme_node::sqlite::open_durable(&path).unwrap();
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (v BLOB)").unwrap();
        for i in 0..rows {
            conn.execute("INSERT INTO t VALUES (?1)", [vec![i as u8; 3000]]).unwrap();
        }
        // Copy the files as they are now, as a crash would leave them.
        let crashed = dir.join("crashed");
        std::fs::create_dir_all(&crashed).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let from = format!("{}{suffix}", path.display());
            std::fs::copy(&from, crashed.join(format!("t.db{suffix}"))).unwrap();
        }
        drop(conn);
        crashed.join("t.db")
    }

    fn wal_of(db: &Path) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}-wal", db.display()))
    }

    fn flip(path: &Path, at_from_end: usize) {
        let mut b = std::fs::read(path).unwrap();
        let at = b.len() - at_from_end;
        b[at] ^= 0x40;
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn an_intact_wal_after_a_crash_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let db = crashed_db(dir.path(), 5);
        assert!(std::fs::metadata(wal_of(&db)).unwrap().len() > 4096, "the crash left frames in the WAL");
        assert_eq!(check(&db).unwrap(), WalCheck::Clean);
        assert_eq!(check(&dir.path().join("none.db")).unwrap(), WalCheck::Clean);
    }

    #[test]
    fn a_damaged_committed_frame_is_found_and_sqlite_would_drop_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crashed_db(dir.path(), 5);
        flip(&wal_of(&db), 100); // inside the last frame: the last committed row
        assert!(matches!(check(&db).unwrap(), WalCheck::Damaged(_)), "{:?}", check(&db));
        // Without the index, a damaged frame followed by later frames is found too.
        let db2 = crashed_db(&dir.path().join("b"), 5);
        let wal = std::fs::read(wal_of(&db2)).unwrap();
        let page = be32(&wal, 8) as usize;
        flip(&wal_of(&db2), FRAME_HEADER + page + 50); // inside the frame before the last
        std::fs::remove_file(format!("{}-shm", db2.display())).unwrap();
        assert!(matches!(check(&db2).unwrap(), WalCheck::Damaged(_)));
        // What the check guards against: SQLite itself opens it and silently has fewer rows.
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert!(n < 5, "SQLite dropped the damaged transaction ({n} rows of 5)");
    }
}
