//! Where time comes from. Daemons and clients read the system clock through [`Clock`];
//! tests hand in a [`ManualClock`] and move it, instead of sleeping until a window passes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds since the Unix epoch, as the protocol counts them (nonces, coin expiry).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        now()
    }
}

/// The system clock's seconds since the Unix epoch (0 if the clock is before it). In test
/// builds (feature `test-clock`), moved by the offset a test wrote (see [`TEST_CLOCK_VAR`]).
pub fn now() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    #[cfg(feature = "test-clock")]
    let t = t.saturating_add_signed(test_offset());
    t
}

/// Names a file holding a whole number of seconds that test builds add to the clock. A
/// test that runs the daemons as processes sets it for them, and moves their time by
/// rewriting the file ([`move_test_clock`]): nonce windows and coin expiry are tested
/// without sleeping through them. Read only in builds with the `test-clock` feature.
pub const TEST_CLOCK_VAR: &str = "PAYME_TEST_CLOCK";

#[cfg(feature = "test-clock")]
fn test_offset() -> i64 {
    static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    match PATH.get_or_init(|| std::env::var_os(TEST_CLOCK_VAR).map(std::path::PathBuf::from)) {
        Some(p) => std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0),
        None => 0,
    }
}

/// Moves the clock of daemons started with [`TEST_CLOCK_VAR`] = `file` forward by `secs`
/// (tests). Written whole (temporary file, rename), so a daemon never reads half a number.
pub fn move_test_clock(file: &std::path::Path, secs: i64) -> std::io::Result<i64> {
    let now: i64 = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let moved = now.saturating_add(secs);
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, moved.to_string())?;
    std::fs::rename(&tmp, file)?;
    Ok(moved)
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: u64) -> Self {
        ManualClock(AtomicU64::new(start))
    }
    /// Moves the clock `secs` forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now(), 1000);
        c.advance(30);
        assert_eq!(c.now(), 1030);
        c.set(5);
        assert_eq!(c.now(), 5);
        assert!(SystemClock.now() > 1_600_000_000);
    }
}
