//! `Amount`: a positive quantity of an asset in integer minor units.
//!
//! A posting moves an `Amount`, never zero and never negative, so "amount > 0" is checked once,
//! where the value enters the engine, and holds by construction everywhere after. Balances are
//! `u128` counters (see `account`), so sums of amounts do not overflow in any realistic lifetime,
//! and when they would, checked arithmetic turns that into a rejection instead of a wrap.

use std::fmt;
use std::num::NonZeroU64;

/// A positive amount in minor units (points, cents…) of some asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(NonZeroU64);

impl Amount {
    /// An amount, or `None` for zero.
    pub fn new(minor_units: u64) -> Option<Amount> {
        NonZeroU64::new(minor_units).map(Amount)
    }

    /// The amount in minor units; always at least 1.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The amount widened to the balance counters' type.
    pub fn wide(self) -> u128 {
        u128::from(self.0.get())
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Formats `minor_units` of an asset with `scale` decimal places, e.g. 12345 at scale 2 is
/// "123.45". Integer arithmetic only.
pub fn format_minor_units(minor_units: i128, scale: u8) -> String {
    if scale == 0 {
        return minor_units.to_string();
    }
    let divisor = 10i128.pow(u32::from(scale));
    let sign = if minor_units < 0 { "-" } else { "" };
    let magnitude = minor_units.unsigned_abs();
    let divisor = divisor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        magnitude / divisor,
        magnitude % divisor,
        width = usize::from(scale)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_not_an_amount() {
        assert!(Amount::new(0).is_none());
        assert_eq!(Amount::new(7).map(Amount::get), Some(7));
        assert_eq!(Amount::new(u64::MAX).map(Amount::wide), Some(u128::from(u64::MAX)));
    }

    #[test]
    fn minor_units_format_with_scale() {
        assert_eq!(format_minor_units(12_345, 2), "123.45");
        assert_eq!(format_minor_units(-5, 2), "-0.05");
        assert_eq!(format_minor_units(700, 0), "700");
        assert_eq!(format_minor_units(i128::MIN, 3), "-170141183460469231731687303715884105.728");
    }
}
