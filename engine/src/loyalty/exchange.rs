//! Exchange rates between partner programmes' points and the programme's own: a registry of
//! versioned rates (each a pair of assets, an integer ratio and an effective time, immutable
//! once recorded), which rate prices a conversion at a given instant, and the arithmetic of a
//! conversion. Docs: docs/loyalty.md, "Partner exchange".

use crate::ids::Timestamp;
use crate::ledger::account::AssetId;

/// Largest numerator or denominator of a rate: any amount of points times it fits in 128 bits
/// with room, and a rate can still say "one point for a billion".
pub const RATE_TERM_MAX: u64 = 1_000_000_000;

/// Rate versions a registry holds: one a day for about eleven years.
pub const RATE_VERSIONS_MAX: usize = 4_096;

/// One recorded rate: `amount` points of `from` convert to `⌊amount × numerator /
/// denominator⌋` points of `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeRate {
    /// 1, 2, 3… in the order rates were recorded (over all pairs).
    pub version: u32,
    /// The asset converted from.
    pub from: AssetId,
    /// The asset converted to.
    pub to: AssetId,
    /// Points of `to` per `denominator` points of `from`.
    pub numerator: u64,
    /// See `numerator`.
    pub denominator: u64,
    /// The effective time asked for (0: at once).
    pub requested_at: Timestamp,
    /// When it takes effect: the requested time, or the time it was recorded if later.
    pub effective_at: Timestamp,
}

/// Why a rate or a conversion is refused. Each changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// A rate or conversion from an asset to itself.
    #[error("a rate converts between two different assets")]
    SameAsset,
    /// A numerator or denominator of 0 or above `RATE_TERM_MAX`.
    #[error("a rate's numerator and denominator are 1..=1,000,000,000")]
    RateInvalid,
    /// An effective time before the moment the rate is recorded.
    #[error("the effective time is in the past")]
    EffectiveTimePast,
    /// Another rate of the pair was recorded for the same effective time.
    #[error("another rate of this pair takes effect at the same time")]
    EffectiveTimeTaken,
    /// The registry is full.
    #[error("the registry holds {RATE_VERSIONS_MAX} rates")]
    RegistryFull,
    /// No rate of the pair is in force at the conversion's time.
    #[error("no rate of this pair is in force")]
    RateMissing,
    /// The conversion would credit nothing: the customer would give points for none.
    #[error("the amount converts to no point")]
    ConversionTooSmall,
    /// The conversion would credit more than 2^64 − 1 points.
    #[error("the conversion credits more than 2^64 - 1 points")]
    Overflow,
}

/// A conversion priced by a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// The rate's version, recorded with the conversion.
    pub version: u32,
    /// Points of `from` debited.
    pub debited: u64,
    /// Points of `to` credited: `⌊debited × numerator / denominator⌋`.
    pub credited: u64,
}

/// The recorded rates, as every shard holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rates {
    rates: Vec<ExchangeRate>,
}

impl Rates {
    /// Every rate, in the order recorded.
    pub fn versions(&self) -> &[ExchangeRate] {
        &self.rates
    }

    /// The number the next rate gets.
    pub fn next_version(&self) -> u32 {
        u32::try_from(self.rates.len() + 1).expect("at most RATE_VERSIONS_MAX")
    }

    /// The rate of `from` → `to` in force at `at`: of those in effect, the one that took effect
    /// last (of two at one instant, the one recorded later).
    pub fn in_force(&self, from: AssetId, to: AssetId, at: Timestamp) -> Option<&ExchangeRate> {
        self.rates
            .iter()
            .filter(|rate| rate.from == from && rate.to == to && rate.effective_at <= at)
            .max_by_key(|rate| (rate.effective_at, rate.version))
    }

    /// Checks a new rate recorded at `now`: `Ok(None)` if it should be recorded, `Ok(Some)`
    /// with the version that already says the same (recording it again changes nothing), or
    /// why it is refused.
    pub fn check(
        &self,
        from: AssetId,
        to: AssetId,
        (numerator, denominator): (u64, u64),
        requested_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<u32>, ExchangeError> {
        if from == to {
            return Err(ExchangeError::SameAsset);
        }
        let term = |value: u64| (1..=RATE_TERM_MAX).contains(&value);
        if !term(numerator) || !term(denominator) {
            return Err(ExchangeError::RateInvalid);
        }
        if requested_at != Timestamp(0) && requested_at < now {
            return Err(ExchangeError::EffectiveTimePast);
        }
        let same_time =
            self.rates.iter().rev().find(|rate| {
                rate.from == from && rate.to == to && rate.requested_at == requested_at
            });
        if let Some(rate) = same_time.filter(|_| requested_at != Timestamp(0)) {
            // The same ratio (however written) is the same rate: re-running a file is harmless.
            let same = u128::from(rate.numerator) * u128::from(denominator)
                == u128::from(numerator) * u128::from(rate.denominator);
            return if same {
                Ok(Some(rate.version))
            } else {
                Err(ExchangeError::EffectiveTimeTaken)
            };
        }
        if self.rates.len() >= RATE_VERSIONS_MAX {
            return Err(ExchangeError::RegistryFull);
        }
        Ok(None)
    }

    /// Records a rate `check` accepted, defined by a record stamped `now`; returns its version.
    pub fn define(
        &mut self,
        from: AssetId,
        to: AssetId,
        (numerator, denominator): (u64, u64),
        requested_at: Timestamp,
        now: Timestamp,
    ) -> u32 {
        let version = self.next_version();
        self.rates.push(ExchangeRate {
            version,
            from,
            to,
            numerator,
            denominator,
            requested_at,
            effective_at: requested_at.max(now),
        });
        version
    }

    /// Prices converting `amount` points of `from` into `to` at `at`.
    pub fn convert(
        &self,
        from: AssetId,
        to: AssetId,
        amount: u64,
        at: Timestamp,
    ) -> Result<Conversion, ExchangeError> {
        if from == to {
            return Err(ExchangeError::SameAsset);
        }
        let rate = self.in_force(from, to, at).ok_or(ExchangeError::RateMissing)?;
        let credited =
            u128::from(amount) * u128::from(rate.numerator) / u128::from(rate.denominator);
        // At most amount × 10^9, which can exceed 64 bits.
        let credited = u64::try_from(credited).map_err(|_| ExchangeError::Overflow)?;
        if credited == 0 {
            return Err(ExchangeError::ConversionTooSmall);
        }
        Ok(Conversion { version: rate.version, debited: amount, credited })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTNER: AssetId = AssetId(2);
    const OWN: AssetId = AssetId(0);
    const T0: Timestamp = Timestamp(1_000);

    #[test]
    fn a_conversion_is_priced_by_the_rate_in_force_at_its_time() {
        let mut rates = Rates::default();
        assert_eq!(rates.convert(PARTNER, OWN, 10, T0), Err(ExchangeError::RateMissing));
        // 3 own points for 2 partner points, at once; 1 for 1 from T0 + 100.
        assert_eq!(rates.check(PARTNER, OWN, (3, 2), Timestamp(0), T0), Ok(None));
        assert_eq!(rates.define(PARTNER, OWN, (3, 2), Timestamp(0), T0), 1);
        let later = Timestamp(T0.0 + 100);
        assert_eq!(rates.check(PARTNER, OWN, (1, 1), later, T0), Ok(None));
        assert_eq!(rates.define(PARTNER, OWN, (1, 1), later, T0), 2);
        // 7 partner points: ⌊7 × 3 / 2⌋ = 10 (rounded down, the customer's half point is not
        // minted), until the second rate takes effect, at its first nanosecond.
        let before = Timestamp(later.0 - 1);
        assert_eq!(
            rates.convert(PARTNER, OWN, 7, before),
            Ok(Conversion { version: 1, debited: 7, credited: 10 })
        );
        assert_eq!(
            rates.convert(PARTNER, OWN, 7, later),
            Ok(Conversion { version: 2, debited: 7, credited: 7 })
        );
        // A rate is for one direction.
        assert_eq!(rates.convert(OWN, PARTNER, 7, later), Err(ExchangeError::RateMissing));
        assert_eq!(rates.convert(OWN, OWN, 7, later), Err(ExchangeError::SameAsset));
    }

    #[test]
    fn bad_rates_are_refused_and_a_repeated_one_is_recognised() {
        let mut rates = Rates::default();
        assert_eq!(rates.check(OWN, OWN, (1, 1), Timestamp(0), T0), Err(ExchangeError::SameAsset));
        for terms in [(0, 1), (1, 0), (RATE_TERM_MAX + 1, 1), (1, RATE_TERM_MAX + 1)] {
            assert_eq!(
                rates.check(PARTNER, OWN, terms, Timestamp(0), T0),
                Err(ExchangeError::RateInvalid),
                "{terms:?}"
            );
        }
        assert_eq!(
            rates.check(PARTNER, OWN, (1, 1), Timestamp(T0.0 - 1), T0),
            Err(ExchangeError::EffectiveTimePast)
        );
        let friday = Timestamp(T0.0 + 500);
        rates.define(PARTNER, OWN, (3, 2), friday, T0);
        // The same ratio at the same time is the same rate; another is refused.
        assert_eq!(rates.check(PARTNER, OWN, (6, 4), friday, T0), Ok(Some(1)));
        assert_eq!(
            rates.check(PARTNER, OWN, (2, 1), friday, T0),
            Err(ExchangeError::EffectiveTimeTaken)
        );
        // The other direction is another pair.
        assert_eq!(rates.check(OWN, PARTNER, (2, 3), friday, T0), Ok(None));
    }

    #[test]
    fn conversions_that_credit_nothing_or_overflow_are_refused() {
        let mut rates = Rates::default();
        rates.define(PARTNER, OWN, (1, 1_000), Timestamp(0), T0);
        assert_eq!(rates.convert(PARTNER, OWN, 999, T0), Err(ExchangeError::ConversionTooSmall));
        assert_eq!(rates.convert(PARTNER, OWN, 1_000, T0).map(|c| c.credited), Ok(1));
        rates.define(OWN, PARTNER, (RATE_TERM_MAX, 1), Timestamp(0), T0);
        assert_eq!(rates.convert(OWN, PARTNER, u64::MAX, T0), Err(ExchangeError::Overflow));
        assert_eq!(
            rates.convert(OWN, PARTNER, 1 << 20, T0).map(|c| c.credited),
            Ok((1 << 20) * RATE_TERM_MAX)
        );
    }
}
