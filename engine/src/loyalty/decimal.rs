//! Exact decimal numbers for rule files: multipliers ("1.5") and percentages ("2.5") written as
//! decimal text and kept as integers in ten-thousandths, so that no float is ever involved.

use std::fmt;

/// The denominator of a `Ratio`: ratios are kept in ten-thousandths (basis points).
pub const RATIO_ONE: u32 = 10_000;

/// A non-negative fixed-point number in ten-thousandths: 15,000 is 1.5, 250 is 0.025.
/// Multipliers are ratios of the base (1.5 = one and a half times); cashback percentages are
/// ratios of the amount (2.5 % = 250).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ratio(pub u32);

impl Ratio {
    /// 1: a multiplier that adds nothing.
    pub const ONE: Ratio = Ratio(RATIO_ONE);
    /// 0.
    pub const ZERO: Ratio = Ratio(0);

    /// What the multiplier adds over 1, in ten-thousandths (0 for multipliers of 1 or below).
    pub fn excess(self) -> u32 {
        self.0.saturating_sub(RATIO_ONE)
    }

    /// Parses decimal text with at most `decimals` digits after the point and `scale` applied:
    /// `parse("1.5", 4, 0)` is 1.5 (15,000) and `parse("2.5", 2, 2)` is 2.5 % (250). At most
    /// 10 digits before the point; no sign, exponent or spaces.
    pub fn parse(text: &str, decimals: u32, percent: bool) -> Result<Ratio, String> {
        let fail = || {
            format!(
                "{text:?} is not a decimal number with at most {decimals} digits after the point"
            )
        };
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 10
            || !digits(whole)
            || !digits(fraction)
            || (text.contains('.') && fraction.is_empty())
            || fraction.len() > decimals as usize
        {
            return Err(fail());
        }
        // Percentages are hundredths of the ratio: 2.5 % = 0.025 = 250 ten-thousandths.
        let scale_digits = if percent { 2 } else { 4 };
        let mut value: u64 = whole.parse().map_err(|_| fail())?;
        let mut fraction_digits = fraction.bytes();
        for _ in 0..scale_digits {
            let digit = fraction_digits.next().map_or(0, |byte| u64::from(byte - b'0'));
            value = value.checked_mul(10).and_then(|v| v.checked_add(digit)).ok_or_else(fail)?;
        }
        u32::try_from(value).map(Ratio).map_err(|_| format!("{text:?} is too large"))
    }

    /// This ratio as a percentage with two decimals (`"2.50"` for 250).
    pub fn percent_text(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl fmt::Display for Ratio {
    /// `1.5`, `2`, `0.0025`: the shortest exact decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.0 / RATIO_ONE, self.0 % RATIO_ONE);
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:04}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(Ratio::parse("1.5", 4, false), Ok(Ratio(15_000)));
        assert_eq!(Ratio::parse("2", 4, false), Ok(Ratio(20_000)));
        assert_eq!(Ratio::parse("0.0001", 4, false), Ok(Ratio(1)));
        assert_eq!(Ratio::parse("1.2345", 4, false), Ok(Ratio(12_345)));
        assert_eq!(Ratio::parse("2.5", 2, true), Ok(Ratio(250)));
        assert_eq!(Ratio::parse("100", 2, true), Ok(Ratio(10_000)));
        assert_eq!(Ratio::parse("0.01", 2, true), Ok(Ratio(1)));
        for bad in ["", ".5", "1.", "1.23456", "-1", "+1", "1e3", " 1", "1,5", "1.5.1", "0x10"] {
            assert!(Ratio::parse(bad, 4, false).is_err(), "{bad:?}");
        }
        assert!(Ratio::parse("0.001", 2, true).is_err());
        assert!(Ratio::parse("500000", 4, false).is_err(), "past u32 ten-thousandths");
        assert!(Ratio::parse("99999999999", 4, false).is_err());
    }

    #[test]
    fn ratios_print_as_they_were_written() {
        for text in ["1.5", "2", "0.0001", "1.2345", "100", "0"] {
            assert_eq!(Ratio::parse(text, 4, false).unwrap().to_string(), text);
        }
        assert_eq!(Ratio(250).percent_text(), "2.50");
        assert_eq!(Ratio::ONE.excess(), 0);
        assert_eq!(Ratio(25_000).excess(), 15_000);
    }
}
