//! `Amount`: money as an integer count of the currency's minor unit.
//!
//! Only checked arithmetic exists: an overflow or an underflow is an error the caller must
//! handle, never a wrap and never a panic. There is no `Add`/`Sub` impl on purpose.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A non-negative amount in minor units (for example cents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(u64);

/// Arithmetic on amounts left the range of `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount overflow")]
    Overflow,
    #[error("amount underflow: {have} is less than {need}")]
    Underflow { have: Amount, need: Amount },
}

impl Amount {
    pub const ZERO: Amount = Amount(0);
    /// The largest amount any single PMTP message may name (2^62 minor units), so that sums
    /// of a few amounts a peer sends can never reach `u64::MAX`.
    pub const MAX: Amount = Amount(1 << 62);

    pub const fn new(minor_units: u64) -> Self {
        Amount(minor_units)
    }
    pub const fn minor_units(self) -> u64 {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_add(other.0).map(Amount).ok_or(AmountError::Overflow)
    }
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_sub(other.0).map(Amount).ok_or(AmountError::Underflow { have: self, need: other })
    }
    pub fn checked_mul(self, n: u64) -> Result<Amount, AmountError> {
        self.0.checked_mul(n).map(Amount).ok_or(AmountError::Overflow)
    }
    /// Sum of many amounts; an overflow anywhere is an error.
    pub fn checked_sum<I: IntoIterator<Item = Amount>>(iter: I) -> Result<Amount, AmountError> {
        iter.into_iter().try_fold(Amount::ZERO, Amount::checked_add)
    }
}

impl Amount {
    /// The amount as a person reads it: `digits` decimal digits of minor unit (2: cents),
    /// and `currency` written before the number when it is a symbol ("€0.37") or after it
    /// when it is a word or code ("0.37 EUR"); an empty `currency` gives the number alone.
    pub fn in_units(self, digits: u8, currency: &str) -> String {
        // 10^19 is the largest power of ten a u64 holds.
        let digits = u32::from(digits.min(19));
        let scale = 10u64.pow(digits);
        let (whole, frac) = (self.0 / scale, self.0 % scale);
        let number = match digits {
            0 => whole.to_string(),
            d => format!("{whole}.{frac:0width$}", width = d as usize),
        };
        let c = currency.trim();
        if c.is_empty() {
            number
        } else if c.chars().all(char::is_alphabetic) && c.chars().count() > 1 {
            format!("{number} {c}")
        } else {
            format!("{c}{number}")
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Amount {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse::<u64>().map(Amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_read_in_the_currency_units() {
        let a = Amount::new(37);
        assert_eq!(a.in_units(2, "€"), "€0.37");
        assert_eq!(a.in_units(2, "EUR"), "0.37 EUR");
        assert_eq!(Amount::new(1250).in_units(2, "$"), "$12.50");
        assert_eq!(Amount::new(5).in_units(3, ""), "0.005");
        assert_eq!(Amount::new(37).in_units(0, "JPY"), "37 JPY");
        assert_eq!(Amount::new(u64::MAX).in_units(200, "X"), "X1.8446744073709551615");
    }

    #[test]
    fn overflow_and_underflow_are_errors() {
        assert_eq!(Amount::new(u64::MAX).checked_add(Amount::new(1)), Err(AmountError::Overflow));
        assert!(matches!(Amount::new(1).checked_sub(Amount::new(2)), Err(AmountError::Underflow { .. })));
        assert_eq!(Amount::new(u64::MAX).checked_mul(2), Err(AmountError::Overflow));
        assert_eq!(Amount::checked_sum([Amount::new(u64::MAX), Amount::new(1)]), Err(AmountError::Overflow));
    }

    proptest! {
        #[test]
        fn add_then_sub_is_identity(a in any::<u64>(), b in any::<u64>()) {
            let (a, b) = (Amount::new(a), Amount::new(b));
            match a.checked_add(b) {
                Ok(s) => prop_assert_eq!(s.checked_sub(b), Ok(a)),
                Err(_) => prop_assert!(a.minor_units() as u128 + b.minor_units() as u128 > u64::MAX as u128),
            }
        }

        #[test]
        fn checked_sum_matches_u128(v in proptest::collection::vec(any::<u64>(), 0..8)) {
            let wide: u128 = v.iter().map(|&x| x as u128).sum();
            let got = Amount::checked_sum(v.into_iter().map(Amount::new));
            if wide <= u64::MAX as u128 {
                prop_assert_eq!(got, Ok(Amount::new(wide as u64)));
            } else {
                prop_assert_eq!(got, Err(AmountError::Overflow));
            }
        }
    }
}
