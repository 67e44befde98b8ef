//! Pricing a purchase: what a basket earns under a rule set, component by component.
//! Docs: docs/loyalty.md, "Pricing a purchase".
//!
//! Every component is an exact fraction of integers, rounded down once (`floor`); components
//! are added, never multiplied together, so that each can be explained on its own.

use smallvec::SmallVec;

use super::decimal::RATIO_ONE;
use super::rules::{PromotionEffect, PromotionScope, RuleSet};
use crate::ids::Timestamp;

/// Lines of one purchase.
pub const BASKET_LINES_MAX: usize = 32;

/// One line of a basket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Line {
    /// The category of the goods (0: none).
    pub category: u16,
    /// What the line costs, in minor units of the purchase currency; never 0.
    pub amount: u64,
    /// Set by the till for goods that never earn (gift cards, tobacco, deposits).
    pub excluded: bool,
}

/// The lines of a purchase, inline up to 4.
pub type Lines = SmallVec<[Line; 4]>;

/// Why a basket cannot be priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasketError {
    /// No lines, or more than `BASKET_LINES_MAX`.
    #[error("a basket has 1..={BASKET_LINES_MAX} lines")]
    LineCount,
    /// A line of amount 0.
    #[error("a line's amount is 0")]
    LineAmountZero,
    /// The lines add up to more than `u64::MAX` minor units.
    #[error("the lines add up to more than 2^64 - 1 minor units")]
    TotalOverflow,
    /// The points or cashback earned do not fit in 64 bits.
    #[error("the points or cashback earned exceed 2^64 - 1")]
    EarnOverflow,
}

/// What a customer has already earned from purchases in the purchase's UTC day and month (for
/// caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapsUsed {
    /// Points earned from purchases on the purchase's UTC day.
    pub day: u64,
    /// Points earned from purchases in the purchase's UTC month.
    pub month: u64,
}

/// Points a promotion gave to one purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromotionPoints {
    /// Its position in the rule set's promotions.
    pub promotion: u8,
    /// Points, before any cap cut.
    pub points: u64,
}

/// What a purchase earned and why, component by component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Breakdown {
    /// Sum of the eligible lines (not excluded by the till or by their category).
    pub eligible_spend: u64,
    /// Whether eligible spend was below the minimum: then every component is 0.
    pub below_minimum: bool,
    /// Base points: eligible spend × base rate.
    pub base: u64,
    /// Category points: Σ line base × (category multiplier − 1).
    pub category: u64,
    /// The tier the purchase was priced at (the customer's tier before it).
    pub tier: u8,
    /// Tier points: eligible base × (tier multiplier − 1).
    pub tier_points: u64,
    /// Points of each promotion that ran and applied, in rule set order.
    pub promotions: SmallVec<[PromotionPoints; 2]>,
    /// Points the caps took away (from promotion points first, then from earned points).
    pub cap_cut: u64,
    /// Points credited as earned (base + category + tier, less what the cut took of them).
    pub earned: u64,
    /// Points credited as bonus (promotions, less what the cut took of them).
    pub bonus: u64,
    /// Cashback, in minor units of the cashback asset.
    pub cashback: u64,
}

impl Breakdown {
    /// Points credited: earned + bonus.
    pub fn points(&self) -> u64 {
        self.earned + self.bonus
    }

    /// Points of every promotion, before the cut.
    pub fn promotion_points(&self) -> u64 {
        self.promotions.iter().map(|promotion| promotion.points).sum()
    }
}

/// What a purchase record says it earned and why: the rule version, the tiers, and every
/// component of the breakdown. Replay applies it as recorded; re-pricing the purchase from its
/// inputs must give it again (`ledger-wal verify` reports any difference).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurchaseOutcome {
    /// The rule version in force at the purchase's timestamp.
    pub rules_version: u32,
    /// The customer's tier before the purchase: the one it was priced at.
    pub tier_before: u8,
    /// The customer's tier after it.
    pub tier_after: u8,
    /// Base points.
    pub base: u64,
    /// Category points.
    pub category: u64,
    /// Tier points.
    pub tier_points: u64,
    /// Each promotion's points, before the cut.
    pub promotions: SmallVec<[PromotionPoints; 2]>,
    /// Points the caps took away.
    pub cap_cut: u64,
    /// Earned points credited.
    pub earned: u64,
    /// Bonus points credited.
    pub bonus: u64,
    /// Cashback credited, in minor units of the cashback asset.
    pub cashback: u64,
}

impl PurchaseOutcome {
    /// The outcome of a priced purchase.
    pub fn new(rules_version: u32, breakdown: &Breakdown, tier_after: u8) -> PurchaseOutcome {
        PurchaseOutcome {
            rules_version,
            tier_before: breakdown.tier,
            tier_after,
            base: breakdown.base,
            category: breakdown.category,
            tier_points: breakdown.tier_points,
            promotions: breakdown.promotions.clone(),
            cap_cut: breakdown.cap_cut,
            earned: breakdown.earned,
            bonus: breakdown.bonus,
            cashback: breakdown.cashback,
        }
    }

    /// Points credited: earned + bonus.
    pub fn points(&self) -> u64 {
        self.earned.saturating_add(self.bonus)
    }
}

/// Checks a basket's shape: 1..=32 lines, none of amount 0, a total that fits in 64 bits.
/// Returns the total.
pub fn check_basket(lines: &[Line]) -> Result<u64, BasketError> {
    if lines.is_empty() || lines.len() > BASKET_LINES_MAX {
        return Err(BasketError::LineCount);
    }
    lines.iter().try_fold(0_u64, |total, line| {
        if line.amount == 0 {
            return Err(BasketError::LineAmountZero);
        }
        total.checked_add(line.amount).ok_or(BasketError::TotalOverflow)
    })
}

/// ⌊numerator / denominator⌋ as a u64, or `EarnOverflow`.
fn floor(numerator: u128, denominator: u128) -> Result<u64, BasketError> {
    u64::try_from(numerator / denominator).map_err(|_| BasketError::EarnOverflow)
}

/// Prices a purchase of `lines` at `store`, made at `at` by a customer in tier `tier` who has
/// already earned `used` in the purchase's day and month.
///
/// Components, each rounded down once (amounts in minor units, `B = base.points /
/// base.per_minor_units`, ratios in ten-thousandths):
/// - base = ⌊Σ eligible amount × B⌋
/// - category = ⌊Σ eligible amount × B × (category multiplier − 1)⌋
/// - tier = ⌊Σ eligible amount × B × (tier multiplier − 1)⌋
/// - each running multiplier promotion = ⌊Σ amount in scope × B × (multiplier − 1)⌋; each
///   running bonus promotion with a line in scope: its bonus
/// - cap cut = what exceeds the room left under the daily and monthly caps
/// - cashback = ⌊Σ eligible amount × its line's percent⌋ + each flat rule with a line
pub fn price(
    rules: &RuleSet,
    lines: &[Line],
    store: u32,
    at: Timestamp,
    tier: u8,
    used: CapsUsed,
) -> Result<Breakdown, BasketError> {
    check_basket(lines)?;
    let tier = tier.min(u8::try_from(rules.tiers.len() - 1).expect("at most TIERS_MAX"));
    let eligible = |line: &&Line| {
        !line.excluded && !rules.category(line.category).is_some_and(|category| category.excluded)
    };
    let eligible_spend: u64 = lines.iter().filter(eligible).map(|line| line.amount).sum();
    let mut breakdown = Breakdown { eligible_spend, tier, ..Breakdown::default() };
    if eligible_spend < rules.minimum_spend || eligible_spend == 0 {
        breakdown.below_minimum = eligible_spend < rules.minimum_spend;
        return Ok(breakdown);
    }
    let per = u128::from(rules.base.per_minor_units);
    let per_ratio = per * u128::from(RATIO_ONE);
    // Units of spend × base points: the numerator of every points component.
    let units = |amount: u64| u128::from(amount) * u128::from(rules.base.points);
    let spend_units = units(eligible_spend);
    breakdown.base = floor(spend_units, per)?;
    let category_units: u128 = lines
        .iter()
        .filter(eligible)
        .map(|line| {
            let excess = rules.category(line.category).map_or(0, |c| c.multiplier.excess());
            units(line.amount) * u128::from(excess)
        })
        .sum();
    breakdown.category = floor(category_units, per_ratio)?;
    let tier_excess = rules.tiers[usize::from(tier)].multiplier.excess();
    breakdown.tier_points = floor(spend_units * u128::from(tier_excess), per_ratio)?;
    for (index, promotion) in rules.promotions.iter().enumerate() {
        if !promotion.runs_at(at) {
            continue;
        }
        let in_scope = |line: &&Line| match &promotion.scope {
            PromotionScope::All => true,
            PromotionScope::Categories(ids) => ids.contains(&line.category),
            PromotionScope::Stores(stores) => stores.contains(&store),
        };
        let scoped_spend: u64 =
            lines.iter().filter(eligible).filter(in_scope).map(|line| line.amount).sum();
        if scoped_spend == 0 {
            continue;
        }
        let points = match promotion.effect {
            PromotionEffect::Multiplier(multiplier) => {
                floor(units(scoped_spend) * u128::from(multiplier.excess()), per_ratio)?
            }
            PromotionEffect::Bonus(points) => points,
        };
        if points > 0 {
            let promotion = u8::try_from(index).expect("at most PROMOTIONS_MAX promotions");
            breakdown.promotions.push(PromotionPoints { promotion, points });
        }
    }
    let earned = [breakdown.base, breakdown.category, breakdown.tier_points]
        .into_iter()
        .try_fold(0_u64, u64::checked_add)
        .ok_or(BasketError::EarnOverflow)?;
    let bonus = breakdown
        .promotions
        .iter()
        .try_fold(0_u64, |sum, promotion| sum.checked_add(promotion.points))
        .ok_or(BasketError::EarnOverflow)?;
    let total = earned.checked_add(bonus).ok_or(BasketError::EarnOverflow)?;
    let room = [
        rules.caps.daily.map(|cap| cap.saturating_sub(used.day)),
        rules.caps.monthly.map(|cap| cap.saturating_sub(used.month)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(u64::MAX);
    breakdown.cap_cut = total.saturating_sub(room);
    let bonus_cut = breakdown.cap_cut.min(bonus);
    breakdown.bonus = bonus - bonus_cut;
    breakdown.earned = earned - (breakdown.cap_cut - bonus_cut);
    breakdown.cashback = cashback(rules, lines.iter().filter(eligible))?;
    Ok(breakdown)
}

/// ⌊Σ amount × percent⌋ over the lines, plus each flat amount (the default rule's or a
/// category's) once per purchase with a line it covers.
fn cashback<'a>(
    rules: &RuleSet,
    lines: impl Iterator<Item = &'a Line>,
) -> Result<u64, BasketError> {
    let mut percent_units: u128 = 0;
    let mut flat: u128 = 0;
    // Rules whose flat amount is already counted: the default (None) or a category's id.
    let mut paid: SmallVec<[Option<u16>; 4]> = SmallVec::new();
    for line in lines {
        let own = rules.category(line.category).and_then(|category| category.cashback);
        let (rule, key) = match own {
            Some(rule) => (rule, Some(line.category)),
            None => (rules.cashback, None),
        };
        percent_units += u128::from(line.amount) * u128::from(rule.percent.0);
        if rule.flat > 0 && !paid.contains(&key) {
            paid.push(key);
            flat += u128::from(rule.flat);
        }
    }
    let percent = u128::from(floor(percent_units, u128::from(RATIO_ONE))?);
    u64::try_from(percent + flat).map_err(|_| BasketError::EarnOverflow)
}
