//! Exchange rates between partner programmes' points and the programme's own: a registry of
//! versioned rates (each a pair of assets with the accounts a conversion posts to, an integer
//! ratio and an effective time, immutable once recorded), which rate prices a conversion at a
//! given instant, and the arithmetic and postings of a conversion. Docs: docs/loyalty.md,
//! "Partner exchange".

use crate::amount::Amount;
use crate::ids::Timestamp;
use crate::ledger::account::{AccountFlags, AccountId, AssetId, ClassId, Namespace};
use crate::ledger::record::{Posting, Postings};
use crate::ledger::registry::Registry;
use crate::loyalty::rules::{POINT_VALUE_TERM_MAX, PointValue};

/// Largest numerator or denominator of a rate: any amount of points times it fits in 128 bits
/// with room, and a rate can still say "one point for a billion".
pub const RATE_TERM_MAX: u64 = 1_000_000_000;

/// Rate versions a registry holds: one a day for about eleven years.
pub const RATE_VERSIONS_MAX: usize = 4_096;

/// One side of a pair: an asset, where members hold it, and the accounts a conversion posts
/// to on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeSide {
    /// The side's points (the programme's own, or a partner's `PARTNER_A_POINTS` …).
    pub asset: AssetId,
    /// The customer class members hold `asset` in (`customer:<id>:partner_a`).
    pub customer: ClassId,
    /// The side's exchange fund in `asset`: credited with the points members give, debited
    /// for the points they receive (a house or partner account that may go either way).
    pub fund: AccountId,
    /// The side's exchange fund in the liability asset, where differentials are booked.
    pub money: AccountId,
    /// What the side's points are worth in the liability asset.
    pub value: PointValue,
}

/// What a rate says: the pair, its ratio and the liability asset of its differentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateTerms {
    /// The side converted from.
    pub from: ExchangeSide,
    /// The side converted to.
    pub to: ExchangeSide,
    /// Points of `to` per `denominator` points of `from`.
    pub numerator: u64,
    /// See `numerator`.
    pub denominator: u64,
    /// The asset differentials are booked in (money: `USD` …).
    pub money: AssetId,
}

impl RateTerms {
    /// Whether `other` says the same: the same accounts and values, and the same ratio however
    /// written (6/4 is 3/2).
    fn same_as(&self, other: &RateTerms) -> bool {
        let ratio = |terms: &RateTerms| (terms.numerator, terms.denominator);
        let ((n1, d1), (n2, d2)) = (ratio(self), ratio(other));
        let reduced = |terms: &RateTerms| RateTerms { numerator: 0, denominator: 0, ..*terms };
        reduced(self) == reduced(other)
            && u128::from(n1) * u128::from(d2) == u128::from(n2) * u128::from(d1)
    }
}

/// One recorded rate: `amount` points of `from` convert to `⌊amount × numerator /
/// denominator⌋` points of `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeRate {
    /// 1, 2, 3… in the order rates were recorded (over all pairs).
    pub version: u32,
    /// The pair, ratio and accounts.
    pub terms: RateTerms,
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
    /// A numerator, denominator or point value term of 0 or above its maximum.
    #[error("a rate's terms and point values are 1..=1,000,000,000")]
    RateInvalid,
    /// An account of the rate does not exist or is of the wrong kind or asset.
    #[error("{0}")]
    AccountsInvalid(&'static str),
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
    /// The conversion would credit more than 2^64 − 1 points, or its money value would.
    #[error("the conversion credits more than 2^64 - 1 points or minor units")]
    Overflow,
}

/// A conversion priced by a rate: what the shard decides and the record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Priced {
    /// The rate's version.
    pub version: u32,
    /// Points of `to` credited: `⌊debited × numerator / denominator⌋`.
    pub credited: u64,
    /// What the points given are worth in the liability asset (`from`'s point value, rounded
    /// down).
    pub from_value: u64,
    /// What the points received are worth (`to`'s point value, rounded down).
    pub to_value: u64,
}

impl Priced {
    /// The exchange differential: what the points given are worth above what the points
    /// received are (negative when below).
    pub fn differential(&self) -> i128 {
        i128::from(self.from_value) - i128::from(self.to_value)
    }
}

/// `⌊points × value⌋` in minor units.
fn money_value(points: u64, value: PointValue) -> Result<u64, ExchangeError> {
    let minor = u128::from(points) * u128::from(value.minor_units) / u128::from(value.points);
    u64::try_from(minor).map_err(|_| ExchangeError::Overflow)
}

/// The postings of a conversion of `debited` points by `customer` priced as `priced`: their
/// `from` points to the `from` fund, the `to` fund's points to them, and the differential
/// between the two money funds — from the side whose points were worth more (it owes the
/// difference) to the other; none when the values are equal.
pub fn conversion_postings(
    terms: &RateTerms,
    customer: u64,
    debited: Amount,
    priced: &Priced,
) -> Result<Postings, ExchangeError> {
    let credited = Amount::new(priced.credited).ok_or(ExchangeError::ConversionTooSmall)?;
    let mut postings = Postings::new();
    postings.push(Posting {
        debit: AccountId::new(terms.from.customer, customer),
        credit: terms.from.fund,
        asset: terms.from.asset,
        amount: debited,
    });
    postings.push(Posting {
        debit: terms.to.fund,
        credit: AccountId::new(terms.to.customer, customer),
        asset: terms.to.asset,
        amount: credited,
    });
    let differential = priced.differential();
    let amount = u64::try_from(differential.unsigned_abs()).map_err(|_| ExchangeError::Overflow)?;
    if let Some(amount) = Amount::new(amount) {
        let (debit, credit) = match differential > 0 {
            true => (terms.from.money, terms.to.money),
            false => (terms.to.money, terms.from.money),
        };
        postings.push(Posting { debit, credit, asset: terms.money, amount });
    }
    Ok(postings)
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

    /// Rate `version`.
    pub fn version(&self, version: u32) -> Option<&ExchangeRate> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.rates.get(index)
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
            .filter(|rate| {
                rate.terms.from.asset == from
                    && rate.terms.to.asset == to
                    && rate.effective_at <= at
            })
            .max_by_key(|rate| (rate.effective_at, rate.version))
    }

    /// Checks a new rate: `Ok(None)` if it should be recorded, `Ok(Some)` with the version
    /// that already says the same for the same effective time (recording it again changes
    /// nothing), or why it is refused. Whether the effective time is past is the recorder's
    /// check (`ExchangeError::EffectiveTimePast`): a shard records what the engine decided.
    pub fn check(
        &self,
        terms: &RateTerms,
        requested_at: Timestamp,
        registry: &Registry,
    ) -> Result<Option<u32>, ExchangeError> {
        if terms.from.asset == terms.to.asset {
            return Err(ExchangeError::SameAsset);
        }
        let term = |value: u64| (1..=RATE_TERM_MAX).contains(&value);
        let value = |v: PointValue| {
            (1..=POINT_VALUE_TERM_MAX).contains(&v.minor_units)
                && (1..=POINT_VALUE_TERM_MAX).contains(&v.points)
        };
        if !term(terms.numerator)
            || !term(terms.denominator)
            || !value(terms.from.value)
            || !value(terms.to.value)
        {
            return Err(ExchangeError::RateInvalid);
        }
        check_accounts(terms, registry)?;
        let same_time = self.rates.iter().rev().find(|rate| {
            rate.terms.from.asset == terms.from.asset
                && rate.terms.to.asset == terms.to.asset
                && rate.requested_at == requested_at
        });
        if let Some(rate) = same_time.filter(|_| requested_at != Timestamp(0)) {
            // The same rate (however its ratio is written) is harmless to record again.
            return if rate.terms.same_as(terms) {
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
    pub fn define(&mut self, terms: RateTerms, requested_at: Timestamp, now: Timestamp) -> u32 {
        let version = self.next_version();
        self.rates.push(ExchangeRate {
            version,
            terms,
            requested_at,
            effective_at: requested_at.max(now),
        });
        version
    }

    /// Puts back a rate a snapshot holds: the next version, effective no earlier than asked.
    pub fn restore(&mut self, rate: ExchangeRate) -> Result<(), &'static str> {
        if rate.version != self.next_version() || self.rates.len() >= RATE_VERSIONS_MAX {
            return Err("rate version");
        }
        if rate.effective_at < rate.requested_at {
            return Err("rate effective at");
        }
        self.rates.push(rate);
        Ok(())
    }

    /// Prices converting `amount` points of `from` into `to` at `at`.
    pub fn convert(
        &self,
        from: AssetId,
        to: AssetId,
        amount: u64,
        at: Timestamp,
    ) -> Result<Priced, ExchangeError> {
        if from == to {
            return Err(ExchangeError::SameAsset);
        }
        let rate = self.in_force(from, to, at).ok_or(ExchangeError::RateMissing)?;
        let terms = &rate.terms;
        let credited =
            u128::from(amount) * u128::from(terms.numerator) / u128::from(terms.denominator);
        // At most amount × 10^9, which can exceed 64 bits.
        let credited = u64::try_from(credited).map_err(|_| ExchangeError::Overflow)?;
        if credited == 0 {
            return Err(ExchangeError::ConversionTooSmall);
        }
        Ok(Priced {
            version: rate.version,
            credited,
            from_value: money_value(amount, terms.from.value)?,
            to_value: money_value(credited, terms.to.value)?,
        })
    }

    /// The classes of the exchange funds of the pairs that have `points` on one side: a
    /// conversion into `points` from one of them is points issued, into one of them points
    /// redeemed (the liability flows).
    pub fn fund_classes_of(&self, points: ClassId) -> Vec<ClassId> {
        let mut classes = Vec::new();
        for rate in &self.rates {
            for side in [rate.terms.from, rate.terms.to] {
                if side.customer == points && !classes.contains(&side.fund.class()) {
                    classes.push(side.fund.class());
                }
            }
        }
        classes
    }
}

/// The accounts of a rate: each side's customer class a customer class of its asset, its
/// funds house or partner accounts that may go either way, of its asset and of the liability
/// asset, which is neither side's.
fn check_accounts(terms: &RateTerms, registry: &Registry) -> Result<(), ExchangeError> {
    use ExchangeError::AccountsInvalid;
    if registry.asset(terms.money).is_none()
        || terms.money == terms.from.asset
        || terms.money == terms.to.asset
    {
        return Err(AccountsInvalid("the liability asset is unknown or one side's points"));
    }
    for side in [&terms.from, &terms.to] {
        let customer =
            registry.class(side.customer).ok_or(AccountsInvalid("a class is unknown"))?;
        if customer.namespace != Namespace::Customer || customer.asset != side.asset {
            return Err(AccountsInvalid(
                "a side's customer class is not a customer class of its asset",
            ));
        }
        for (account, asset) in [(side.fund, side.asset), (side.money, terms.money)] {
            let fits = registry.account_terms(account).is_some_and(|(held, flags, namespace)| {
                held == asset && flags == AccountFlags::NONE && namespace != Namespace::Customer
            });
            if !fits || account.class() == ClassId::TRANSIT {
                return Err(AccountsInvalid(
                    "an exchange fund is not a house or partner account of its asset without flags",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::account::Name;
    use crate::ledger::registry::{AssetDef, ClassDef};

    const T0: Timestamp = Timestamp(1_000);

    /// Assets PTS (0), PARTNER_A_POINTS (1), USD (2); per points asset a customer class, a
    /// house exchange fund and a partner money fund (`partner:<n>:exchange`).
    fn registry() -> Registry {
        let mut registry = Registry::default();
        for code in ["PTS", "PARTNER_A_POINTS", "USD"] {
            let id = registry.next_asset_id();
            let code = Name::asset(code).unwrap();
            registry.define_asset(AssetDef { id, code, scale: 0 }).unwrap();
        }
        let classes = [
            (Namespace::Customer, "points", 0, AccountFlags::NO_OVERDRAFT),
            (Namespace::House, "exchange_pts", 0, AccountFlags::NONE),
            (Namespace::Customer, "partner_a", 1, AccountFlags::NO_OVERDRAFT),
            (Namespace::House, "exchange_partner_a", 1, AccountFlags::NONE),
            (Namespace::Partner, "exchange", 2, AccountFlags::NONE),
        ];
        for (namespace, name, asset, flags) in classes {
            let id = registry.next_class_id();
            let name = Name::class(name).unwrap();
            registry
                .define_class(ClassDef { id, namespace, name, asset: AssetId(asset), flags })
                .unwrap();
        }
        registry
    }

    /// 3 own points for 2 of partner A's; a partner point worth 2 cents, an own point 1.
    fn partner_to_own() -> RateTerms {
        RateTerms {
            from: ExchangeSide {
                asset: AssetId(1),
                customer: ClassId(3),
                fund: AccountId::new(ClassId(4), 0),
                money: AccountId::new(ClassId(5), 7),
                value: PointValue { minor_units: 2, points: 1 },
            },
            to: ExchangeSide {
                asset: AssetId(0),
                customer: ClassId(1),
                fund: AccountId::new(ClassId(2), 0),
                money: AccountId::new(ClassId(5), 1),
                value: PointValue { minor_units: 1, points: 1 },
            },
            numerator: 3,
            denominator: 2,
            money: AssetId(2),
        }
    }

    fn reversed(terms: RateTerms) -> RateTerms {
        RateTerms { from: terms.to, to: terms.from, ..terms }
    }

    fn with_ratio(terms: RateTerms, numerator: u64, denominator: u64) -> RateTerms {
        RateTerms { numerator, denominator, ..terms }
    }

    #[test]
    fn a_conversion_is_priced_by_the_rate_in_force_at_its_time() {
        let registry = registry();
        let (partner, own) = (AssetId(1), AssetId(0));
        let mut rates = Rates::default();
        assert_eq!(rates.convert(partner, own, 10, T0), Err(ExchangeError::RateMissing));
        // 3 own points for 2 partner points, at once; 1 for 1 from T0 + 100.
        let terms = partner_to_own();
        assert_eq!(rates.check(&terms, Timestamp(0), &registry), Ok(None));
        assert_eq!(rates.define(terms, Timestamp(0), T0), 1);
        let later = Timestamp(T0.0 + 100);
        let one_for_one = with_ratio(terms, 1, 1);
        assert_eq!(rates.check(&one_for_one, later, &registry), Ok(None));
        assert_eq!(rates.define(one_for_one, later, T0), 2);
        // 7 partner points: ⌊7 × 3 / 2⌋ = 10 (rounded down, the customer's half point is not
        // minted), until the second rate takes effect, at its first nanosecond. 7 partner
        // points are worth 14 cents, 10 own points 10.
        let before = Timestamp(later.0 - 1);
        let priced = Priced { version: 1, credited: 10, from_value: 14, to_value: 10 };
        assert_eq!(rates.convert(partner, own, 7, before), Ok(priced));
        assert_eq!(priced.differential(), 4);
        assert_eq!(
            rates.convert(partner, own, 7, later),
            Ok(Priced { version: 2, credited: 7, from_value: 14, to_value: 7 })
        );
        // A rate is for one direction.
        assert_eq!(rates.convert(own, partner, 7, later), Err(ExchangeError::RateMissing));
        assert_eq!(rates.convert(own, own, 7, later), Err(ExchangeError::SameAsset));
    }

    #[test]
    fn a_conversion_posts_the_points_both_ways_and_the_differential_between_the_funds() {
        let terms = partner_to_own();
        let amount = Amount::new(7).unwrap();
        let priced = Priced { version: 1, credited: 10, from_value: 14, to_value: 10 };
        let postings = conversion_postings(&terms, 42, amount, &priced).unwrap();
        let moves: Vec<_> =
            postings.iter().map(|p| (p.debit, p.credit, p.asset, p.amount.get())).collect();
        assert_eq!(
            moves,
            [
                (AccountId::new(ClassId(3), 42), terms.from.fund, AssetId(1), 7),
                (terms.to.fund, AccountId::new(ClassId(1), 42), AssetId(0), 10),
                // Partner A's members gave 14 cents of points for 10: A owes 4.
                (terms.from.money, terms.to.money, AssetId(2), 4),
            ]
        );
        // The other way round, and none when the values are equal.
        let cheaper = Priced { to_value: 20, ..priced };
        let postings = conversion_postings(&terms, 42, amount, &cheaper).unwrap();
        let last = postings[2];
        assert_eq!(
            (last.debit, last.credit, last.amount.get()),
            (terms.to.money, terms.from.money, 6)
        );
        let even = Priced { to_value: 14, ..priced };
        assert_eq!(conversion_postings(&terms, 42, amount, &even).unwrap().len(), 2);
    }

    #[test]
    fn bad_rates_are_refused_and_a_repeated_one_is_recognised() {
        let registry = registry();
        let mut rates = Rates::default();
        let terms = partner_to_own();
        let same = RateTerms { to: terms.from, ..terms };
        assert_eq!(rates.check(&same, Timestamp(0), &registry), Err(ExchangeError::SameAsset));
        for (n, d) in [(0, 1), (1, 0), (RATE_TERM_MAX + 1, 1), (1, RATE_TERM_MAX + 1)] {
            assert_eq!(
                rates.check(&with_ratio(terms, n, d), Timestamp(0), &registry),
                Err(ExchangeError::RateInvalid),
                "{n}/{d}"
            );
        }
        let mut worthless = terms;
        worthless.to.value.minor_units = 0;
        assert_eq!(
            rates.check(&worthless, Timestamp(0), &registry),
            Err(ExchangeError::RateInvalid)
        );
        // Accounts of the wrong kind, asset or flags.
        let mut wrong = Vec::new();
        let mut t = terms;
        t.from.customer = ClassId(1); // PTS, not the side's asset
        wrong.push(t);
        let mut t = terms;
        t.to.fund = AccountId::new(ClassId(1), 0); // a customer class
        wrong.push(t);
        let mut t = terms;
        t.from.money = AccountId::new(ClassId(4), 0); // not in the liability asset
        wrong.push(t);
        let mut t = terms;
        t.money = AssetId(0); // the liability asset is one side's points
        wrong.push(t);
        let mut t = terms;
        t.to.customer = ClassId(99);
        wrong.push(t);
        for terms in wrong {
            assert!(
                matches!(
                    rates.check(&terms, Timestamp(0), &registry),
                    Err(ExchangeError::AccountsInvalid(_))
                ),
                "{terms:?}"
            );
        }
        let friday = Timestamp(T0.0 + 500);
        rates.define(terms, friday, T0);
        // The same ratio at the same time is the same rate; another is refused.
        assert_eq!(rates.check(&with_ratio(terms, 6, 4), friday, &registry), Ok(Some(1)));
        assert_eq!(
            rates.check(&with_ratio(terms, 2, 1), friday, &registry),
            Err(ExchangeError::EffectiveTimeTaken)
        );
        // The other direction is another pair.
        assert_eq!(rates.check(&reversed(with_ratio(terms, 2, 3)), friday, &registry), Ok(None));
    }

    #[test]
    fn conversions_that_credit_nothing_or_overflow_are_refused() {
        let mut rates = Rates::default();
        let terms = partner_to_own();
        rates.define(with_ratio(terms, 1, 1_000), Timestamp(0), T0);
        let (partner, own) = (AssetId(1), AssetId(0));
        assert_eq!(rates.convert(partner, own, 999, T0), Err(ExchangeError::ConversionTooSmall));
        assert_eq!(rates.convert(partner, own, 1_000, T0).map(|c| c.credited), Ok(1));
        rates.define(reversed(with_ratio(terms, RATE_TERM_MAX, 1)), Timestamp(0), T0);
        assert_eq!(rates.convert(own, partner, u64::MAX, T0), Err(ExchangeError::Overflow));
        assert_eq!(
            rates.convert(own, partner, 1 << 20, T0).map(|c| c.credited),
            Ok((1 << 20) * RATE_TERM_MAX)
        );
        // The money value of what is credited can overflow too (a partner point worth 2).
        assert_eq!(rates.convert(own, partner, 1 << 34, T0), Err(ExchangeError::Overflow));
    }
}
