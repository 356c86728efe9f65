//! Nonces and the replay checker.
//!
//! A nonce is 16 random bytes, the sender's network address and a timestamp (Unix seconds).
//! The receiver refuses a nonce whose address is not the connection's peer address, whose
//! timestamp is more than the window away from its own clock (either way), or that it has
//! already seen while that nonce could still be in the window. Time is passed in: this
//! module never reads a clock.
//!
//! Memory is bounded: entries expire when their timestamp leaves the window and are pruned,
//! and when the cache is full of live entries a new nonce is refused (`CacheFull`) rather
//! than let the cache grow. Refusing is safe: the sender may retry with a new nonce later.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nonce {
    pub random: [u8; 16],
    pub addr: IpAddr,
    /// Unix seconds when the sender made it.
    pub timestamp: u64,
}

impl Nonce {
    pub fn new<R: rand_core::CryptoRng + ?Sized>(rng: &mut R, addr: IpAddr, now: u64) -> Self {
        Nonce { random: crate::rng::bytes(rng), addr: canonical(addr), timestamp: now }
    }
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("nonce address {claimed} is not the connection's address {peer}")]
    WrongAddress { claimed: IpAddr, peer: IpAddr },
    #[error("nonce timestamp {timestamp} is outside the window around {now}")]
    OutsideWindow { timestamp: u64, now: u64 },
    #[error("nonce already seen (replay)")]
    Replay,
    #[error("nonce cache is full; try again shortly")]
    CacheFull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceConfig {
    /// Seconds a timestamp may differ from the receiver's clock, each way. Default 30.
    pub window_secs: u64,
    /// Most live nonces remembered. Default 1,000,000 (about 60 MB at worst).
    pub capacity: usize,
    /// Whether the nonce's address must equal the connection's peer address. Default true;
    /// turn off only behind NAT where the peer's own idea of its address differs.
    pub check_address: bool,
}

impl Default for NonceConfig {
    fn default() -> Self {
        NonceConfig { window_secs: 30, capacity: 1_000_000, check_address: true }
    }
}

/// Remembers recently seen nonces. Not thread-safe by itself: wrap it in a mutex (it does
/// only O(log n) work under the lock).
#[derive(Debug)]
pub struct NonceChecker {
    config: NonceConfig,
    seen: HashSet<[u8; 16]>,
    /// (expiry second, random) for pruning in expiry order.
    by_expiry: BTreeSet<(u64, [u8; 16])>,
}

impl NonceChecker {
    pub fn new(config: NonceConfig) -> Self {
        NonceChecker { config, seen: HashSet::new(), by_expiry: BTreeSet::new() }
    }

    pub fn config(&self) -> &NonceConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Only the address and window checks, without remembering the nonce (a bank calls this
    /// before its durable nonce table decides).
    pub fn check_fresh(&self, nonce: &Nonce, peer: IpAddr, now: u64) -> Result<(), NonceError> {
        let (claimed, peer) = (canonical(nonce.addr), canonical(peer));
        if self.config.check_address && claimed != peer {
            return Err(NonceError::WrongAddress { claimed, peer });
        }
        if nonce.timestamp.abs_diff(now) > self.config.window_secs {
            return Err(NonceError::OutsideWindow { timestamp: nonce.timestamp, now });
        }
        Ok(())
    }

    /// Checks and remembers a nonce received from `peer` at time `now`.
    pub fn check(&mut self, nonce: &Nonce, peer: IpAddr, now: u64) -> Result<(), NonceError> {
        self.check_fresh(nonce, peer, now)?;
        self.prune(now);
        if self.seen.contains(&nonce.random) {
            return Err(NonceError::Replay);
        }
        if self.seen.len() >= self.config.capacity {
            return Err(NonceError::CacheFull);
        }
        // The nonce can pass the window check until timestamp + window; remember it that long.
        let expiry = nonce.timestamp.saturating_add(self.config.window_secs);
        self.seen.insert(nonce.random);
        self.by_expiry.insert((expiry, nonce.random));
        Ok(())
    }

    /// The time after which a nonce with this timestamp is refused by the window alone.
    pub fn expiry_of(&self, nonce: &Nonce) -> u64 {
        nonce.timestamp.saturating_add(self.config.window_secs)
    }

    /// Forgets nonces whose timestamps can no longer pass the window check.
    pub fn prune(&mut self, now: u64) {
        while let Some(&(expiry, random)) = self.by_expiry.first() {
            if expiry >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&random);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const NOW: u64 = 1_800_000_000;

    fn nonce(b: u8, ts: u64) -> Nonce {
        Nonce { random: [b; 16], addr: PEER, timestamp: ts }
    }

    #[test]
    fn window_edges_each_way() {
        let mut c = NonceChecker::new(NonceConfig::default());
        assert_eq!(c.check(&nonce(1, NOW + 30), PEER, NOW), Ok(()));
        assert_eq!(c.check(&nonce(2, NOW - 30), PEER, NOW), Ok(()));
        assert!(matches!(c.check(&nonce(3, NOW + 31), PEER, NOW), Err(NonceError::OutsideWindow { .. })));
        assert!(matches!(c.check(&nonce(4, NOW - 31), PEER, NOW), Err(NonceError::OutsideWindow { .. })));
        // Far future or epoch-zero timestamps do not overflow.
        assert!(c.check(&nonce(5, u64::MAX), PEER, NOW).is_err());
        assert!(c.check(&nonce(6, 0), PEER, NOW).is_err());
    }

    #[test]
    fn same_nonce_twice_is_a_replay() {
        let mut c = NonceChecker::new(NonceConfig::default());
        assert_eq!(c.check(&nonce(1, NOW), PEER, NOW), Ok(()));
        assert_eq!(c.check(&nonce(1, NOW), PEER, NOW + 1), Err(NonceError::Replay));
        // Same random bytes with another timestamp is still the same nonce.
        assert_eq!(c.check(&nonce(1, NOW + 5), PEER, NOW + 5), Err(NonceError::Replay));
        // Once outside the window, the window check refuses it, and the entry is pruned.
        assert!(matches!(c.check(&nonce(1, NOW), PEER, NOW + 31), Err(NonceError::OutsideWindow { .. })));
        c.prune(NOW + 31);
        assert_eq!(c.len(), 0, "the refused copy was never stored; the original expired");
    }

    #[test]
    fn other_address_is_refused() {
        let mut c = NonceChecker::new(NonceConfig::default());
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(c.check(&nonce(1, NOW), other, NOW), Err(NonceError::WrongAddress { claimed: PEER, peer: other }));
        // An IPv4-mapped IPv6 peer address is the same host.
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(c.check(&nonce(2, NOW), mapped, NOW), Ok(()));
    }

    #[test]
    fn full_cache_refuses_then_recovers_after_expiry() {
        let mut c = NonceChecker::new(NonceConfig { capacity: 3, ..NonceConfig::default() });
        for b in 0..3 {
            assert_eq!(c.check(&nonce(b, NOW), PEER, NOW), Ok(()));
        }
        assert_eq!(c.check(&nonce(9, NOW), PEER, NOW), Err(NonceError::CacheFull));
        assert_eq!(c.len(), 3, "refusal, not growth");
        assert_eq!(c.check(&nonce(9, NOW + 31), PEER, NOW + 31), Ok(()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn flood_stays_bounded() {
        let mut c = NonceChecker::new(NonceConfig { capacity: 1000, ..NonceConfig::default() });
        let mut rng = crate::rng::os();
        for i in 0..10_000u64 {
            let n = Nonce::new(&mut rng, PEER, NOW + i / 100);
            let _ = c.check(&n, PEER, NOW + i / 100);
            assert!(c.len() <= 1000);
        }
    }
}
