//! Where randomness comes from. Daemons and clients draw nonces, session keys, serials and
//! request ids through [`Entropy`]; a test hands in a [`SeededEntropy`] and gets the same
//! values on every run (and can predict them), as it hands in a clock it moves.

use rand_core::{Infallible, TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of cryptographically strong random bytes, shared by the tasks of a daemon.
pub trait Entropy: Send + Sync + std::fmt::Debug {
    fn fill(&self, dest: &mut [u8]);
}

/// The operating system's generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, dest: &mut [u8]) {
        rand_core::Rng::fill_bytes(&mut pmtp_proto::rng::os(), dest);
    }
}

/// A deterministic stream for tests: SHA-256 of the seed and a block counter. Anyone who
/// knows the seed knows every value, so it must never mint or pay real money.
#[derive(Debug)]
pub struct SeededEntropy {
    seed: [u8; 32],
    block: AtomicU64,
}

impl SeededEntropy {
    pub fn new(seed: [u8; 32]) -> Self {
        SeededEntropy { seed, block: AtomicU64::new(0) }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, dest: &mut [u8]) {
        // One fresh block per 32 bytes, so concurrent callers never share bytes.
        for chunk in dest.chunks_mut(32) {
            let n = self.block.fetch_add(1, Ordering::SeqCst);
            let block = Sha256::new().chain_update(self.seed).chain_update(n.to_le_bytes()).finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

/// A `CryptoRng` drawing from an [`Entropy`] (see [`rng`]).
pub struct EntropyRng<'a>(&'a dyn Entropy);

/// A generator over `source`, for the functions that take `&mut impl CryptoRng`.
pub fn rng(source: &dyn Entropy) -> EntropyRng<'_> {
    EntropyRng(source)
}

impl TryRng for EntropyRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for EntropyRng<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_stream_and_another_seed_another() {
        let draw = |seed| {
            let e = SeededEntropy::new(seed);
            pmtp_proto::rng::bytes::<48, _>(&mut rng(&e))
        };
        assert_eq!(draw([1; 32]), draw([1; 32]));
        assert_ne!(draw([1; 32]), draw([2; 32]));
        let b = draw([1; 32]);
        assert_ne!(b[..16], b[32..48], "each 32 bytes come from a new block");
    }

    #[test]
    fn the_os_source_does_not_repeat() {
        let a = pmtp_proto::rng::bytes::<32, _>(&mut rng(&OsEntropy));
        let b = pmtp_proto::rng::bytes::<32, _>(&mut rng(&OsEntropy));
        assert_ne!(a, b);
    }
}
