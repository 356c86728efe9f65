//! Randomness from the operating system.
//!
//! Functions that need randomness take `&mut R: CryptoRng` so tests can pass a seeded
//! generator (golden vectors); daemons pass [`os`].

use getrandom::SysRng;
use rand_core::UnwrapErr;

/// The OS generator as an infallible `CryptoRng`. `getrandom` fails only when the kernel has
/// no entropy source at all (no `getrandom(2)`, no `/dev/urandom`); a daemon cannot mint
/// money safely on such a host, so the panic inside `UnwrapErr` is the right outcome there.
pub fn os() -> UnwrapErr<SysRng> {
    UnwrapErr(SysRng)
}

/// `N` random bytes from `rng`.
pub fn bytes<const N: usize, R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill_bytes(&mut b);
    b
}
