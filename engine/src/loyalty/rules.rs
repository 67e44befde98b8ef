//! A rule set: the data that prices a purchase (base rate, categories, tiers, promotions, caps,
//! cashback) and sets how long points live. Docs: docs/loyalty.md, "The rule model".
//!
//! A rule set is checked whole by `RuleSet::validate` before anything records it; every error
//! names the item it is about, so that a rule file can point at the line.

use std::fmt;

use super::calendar::rfc3339;
use super::decimal::Ratio;
use crate::ids::Timestamp;

/// Categories a rule set may name (rules per category: multiplier, exclusion, cashback).
pub const CATEGORIES_MAX: usize = 64;
/// Tiers of a rule set: bronze, silver, gold, platinum and room for a few more.
pub const TIERS_MAX: usize = 8;
/// Promotions of one rule set (past, running and scheduled together).
pub const PROMOTIONS_MAX: usize = 16;
/// Categories or stores one promotion is limited to.
pub const PROMOTION_SCOPE_MAX: usize = 16;
/// Bytes of the name of a category, tier or promotion.
pub const RULE_NAME_BYTES_MAX: usize = 32;
/// The largest multiplier (category, tier, promotion): 100×.
pub const MULTIPLIER_MAX: Ratio = Ratio(100 * super::decimal::RATIO_ONE);
/// The largest base rate numerator, in points.
pub const BASE_POINTS_MAX: u32 = 1_000_000;
/// The largest base rate denominator, in minor units (10^12: one point per ten billion units of
/// a two-decimal currency).
pub const BASE_PER_MINOR_UNITS_MAX: u64 = 1_000_000_000_000;
/// The largest amount a rule states in points or minor units (minimum spend, caps, thresholds,
/// bonuses, flat cashback): 10^15.
pub const RULE_AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Bytes of an encoded rule set (`loyalty::codec`): a rule version is one WAL record, at most
/// `RECORD_BYTES_MAX` (4 KiB) with its frame and the version's own fields. A rule set of 20
/// categories, 4 tiers and 8 promotions with 12-byte names takes about 2 KiB.
pub const RULES_BYTES_MAX: usize = 3_968;
/// The longest life of a lot and the longest tier window, in months (10 years).
pub const MONTHS_MAX: u8 = 120;

/// Points for spend: `points` points per `per_minor_units` minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRate {
    /// Points earned per `per_minor_units`: 1..=`BASE_POINTS_MAX`.
    pub points: u32,
    /// Minor units of spend: 1..=`BASE_PER_MINOR_UNITS_MAX`.
    pub per_minor_units: u64,
}

/// Cashback on spend, in the cashback asset's minor units: `percent` of the amount of the
/// lines it covers, plus `flat` once per purchase that has such a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cashback {
    /// A ratio of the amount, in ten-thousandths (2.5 % is 250): at most 100 %.
    pub percent: Ratio,
    /// Minor units per purchase: at most `RULE_AMOUNT_MAX`.
    pub flat: u64,
}

impl Cashback {
    /// Whether this rule pays anything.
    pub fn is_none(&self) -> bool {
        self.percent == Ratio::ZERO && self.flat == 0
    }
}

/// The rules of one category of goods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryRule {
    /// The category number baskets carry: 1..=65535 (0 is "no category").
    pub id: u16,
    /// For people: "electronics".
    pub name: String,
    /// Multiplier of the base points of its lines: 1..=`MULTIPLIER_MAX`.
    pub multiplier: Ratio,
    /// Its lines earn nothing (no points, no cashback) and do not count towards minimum spend.
    pub excluded: bool,
    /// Its own cashback, replacing the rule set's default for its lines.
    pub cashback: Option<Cashback>,
}

/// One tier: reached when a customer's qualifying points reach `threshold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRule {
    /// "gold".
    pub name: String,
    /// Qualifying points at which the tier starts; the first tier's is 0.
    pub threshold: u64,
    /// Multiplier of the base points of its members' purchases.
    pub multiplier: Ratio,
}

/// Which lines of a purchase a promotion applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionScope {
    /// Every eligible line.
    All,
    /// Eligible lines of these categories (each named in the rule set's categories).
    Categories(Vec<u16>),
    /// Every eligible line of a purchase at one of these stores.
    Stores(Vec<u32>),
}

/// What a promotion gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionEffect {
    /// Extra points: (multiplier − 1) × the base points of the lines in scope.
    Multiplier(Ratio),
    /// A fixed number of points per purchase with at least one eligible line in scope.
    Bonus(u64),
}

/// A promotion, running from `starts_at` (inclusive) to `ends_at` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// "black-friday".
    pub name: String,
    /// Its first nanosecond.
    pub starts_at: Timestamp,
    /// The first nanosecond after it.
    pub ends_at: Timestamp,
    /// The lines it applies to.
    pub scope: PromotionScope,
    /// What it gives.
    pub effect: PromotionEffect,
}

impl Promotion {
    /// Whether it runs at `at`.
    pub fn runs_at(&self, at: Timestamp) -> bool {
        self.starts_at <= at && at < self.ends_at
    }
}

/// Most points a customer may earn from purchases per UTC day and per UTC month (`None`: no
/// cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// Per UTC calendar day.
    pub daily: Option<u64>,
    /// Per UTC calendar month.
    pub monthly: Option<u64>,
}

/// How long points live, by how they were credited, in months; a lot expires at 00:00 UTC of
/// the day after its anniversary (`calendar::expiry_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Points earned by purchases (base, category, tier) and any other credit: 24 by default.
    pub earned_months: u8,
    /// Promotion points: 12 by default.
    pub bonus_months: u8,
    /// Points received from another customer: 6 by default.
    pub transfer_months: u8,
}

impl Default for Expiry {
    fn default() -> Expiry {
        Expiry { earned_months: 24, bonus_months: 12, transfer_months: 6 }
    }
}

/// The longest refund window, in days (ten years).
pub const REFUND_DAYS_MAX: u16 = 3_650;
/// The longest a pending purchase's points stay held, in days.
pub const PENDING_HOLD_DAYS_MAX: u16 = 365;
/// The largest term of a point's money value.
pub const POINT_VALUE_TERM_MAX: u64 = 1_000_000_000;

/// What a pending purchase's points may do until its payment is confirmed
/// (docs/loyalty.md, "Purchase lifecycle and refunds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PendingPoints {
    /// Spendable at once (the default).
    #[default]
    Available,
    /// Credited as pending (not spendable) until the purchase settles, or for at most `days`
    /// days; a failure then takes them back from the pending credit.
    Held {
        /// 1..=`PENDING_HOLD_DAYS_MAX`.
        days: u16,
    },
}

/// What one point is worth in the programme's money: `minor_units` minor units of money per
/// `points` points (1 and 1: a point is worth one cent of a two-decimal currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointValue {
    /// Minor units of money: 1..=`POINT_VALUE_TERM_MAX`.
    pub minor_units: u64,
    /// Points: 1..=`POINT_VALUE_TERM_MAX`.
    pub points: u64,
}

impl Default for PointValue {
    fn default() -> PointValue {
        PointValue { minor_units: 1, points: 1 }
    }
}

impl PointValue {
    /// What `points` points are worth, rounded down.
    pub fn money(&self, points: u128) -> u128 {
        points.saturating_mul(u128::from(self.minor_units)) / u128::from(self.points)
    }
}

/// How the programme treats purchases after the till.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseSettings {
    /// Days a purchase stays refundable (and can be settled or failed): 1..=`REFUND_DAYS_MAX`,
    /// 90 by default.
    pub refund_days: u16,
    /// What a pending purchase's points may do.
    pub pending: PendingPoints,
    /// The money value of a point, for the liability figures.
    pub point_value: PointValue,
}

impl Default for PurchaseSettings {
    fn default() -> PurchaseSettings {
        PurchaseSettings {
            refund_days: 90,
            pending: PendingPoints::Available,
            point_value: PointValue::default(),
        }
    }
}

/// A whole rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Points for spend.
    pub base: BaseRate,
    /// Least eligible spend, in minor units, that earns anything (points or cashback).
    pub minimum_spend: u64,
    /// Rules per category, by increasing id; a category not named here has multiplier 1, is
    /// not excluded and gets the default cashback.
    pub categories: Vec<CategoryRule>,
    /// Tiers by increasing threshold, the first at 0: 1..=`TIERS_MAX`.
    pub tiers: Vec<TierRule>,
    /// The rolling window of qualifying points, in calendar months (the current one included).
    pub tier_window_months: u8,
    /// Promotions, in the order the file lists them.
    pub promotions: Vec<Promotion>,
    /// Caps on purchase points.
    pub caps: Caps,
    /// Cashback of lines whose category has none of its own.
    pub cashback: Cashback,
    /// Lot lives.
    pub expiry: Expiry,
    /// Refund window, pending points and the point's value.
    pub purchases: PurchaseSettings,
}

/// The part of a rule set an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleItem {
    /// The base rate.
    Base,
    /// The minimum spend.
    MinimumSpend,
    /// A category, by position.
    Category(usize),
    /// A tier, by position.
    Tier(usize),
    /// The tier window.
    TierWindow,
    /// A promotion, by position.
    Promotion(usize),
    /// The caps.
    Caps,
    /// The default cashback.
    Cashback,
    /// The lot lives.
    Expiry,
    /// The purchase settings (refund window, pending points, point value).
    Purchases,
    /// The rule set as a whole (its encoded size).
    Whole,
}

impl fmt::Display for RuleItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleItem::Base => f.write_str("base"),
            RuleItem::MinimumSpend => f.write_str("minimum_spend"),
            RuleItem::Category(index) => write!(f, "category #{}", index + 1),
            RuleItem::Tier(index) => write!(f, "tier #{}", index + 1),
            RuleItem::TierWindow => f.write_str("tier_window_months"),
            RuleItem::Promotion(index) => write!(f, "promotion #{}", index + 1),
            RuleItem::Caps => f.write_str("caps"),
            RuleItem::Cashback => f.write_str("cashback"),
            RuleItem::Expiry => f.write_str("expiry"),
            RuleItem::Purchases => f.write_str("purchases"),
            RuleItem::Whole => f.write_str("the rule set"),
        }
    }
}

/// Why a rule set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{item}: {reason}")]
pub struct RuleError {
    /// What it is about.
    pub item: RuleItem,
    /// Why, for people.
    pub reason: String,
}

fn check(ok: bool, item: RuleItem, reason: impl FnOnce() -> String) -> Result<(), RuleError> {
    if ok { Ok(()) } else { Err(RuleError { item, reason: reason() }) }
}

fn check_name(name: &str, item: RuleItem) -> Result<(), RuleError> {
    check(
        !name.is_empty()
            && name.len() <= RULE_NAME_BYTES_MAX
            && !name.chars().any(char::is_control)
            && name.trim() == name,
        item,
        || {
            format!(
                "name {name:?} must be 1..={RULE_NAME_BYTES_MAX} bytes, without control \
                 characters or surrounding spaces"
            )
        },
    )
}

fn check_multiplier(multiplier: Ratio, item: RuleItem) -> Result<(), RuleError> {
    check(multiplier >= Ratio::ONE && multiplier <= MULTIPLIER_MAX, item, || {
        format!("multiplier {multiplier} must be from 1 to {MULTIPLIER_MAX}")
    })
}

fn check_amount(amount: u64, what: &str, item: RuleItem) -> Result<(), RuleError> {
    check(amount <= RULE_AMOUNT_MAX, item, || format!("{what} {amount} is above {RULE_AMOUNT_MAX}"))
}

fn check_cashback(cashback: &Cashback, item: RuleItem) -> Result<(), RuleError> {
    check(cashback.percent <= Ratio::ONE, item, || {
        format!("cashback percent {} is above 100", cashback.percent.percent_text())
    })?;
    check_amount(cashback.flat, "flat cashback", item)
}

impl RuleSet {
    /// The rule set of a programme that gives `points` per `per_minor_units` and nothing else:
    /// one tier, no promotions, caps or cashback, default lot lives.
    pub fn flat(points: u32, per_minor_units: u64) -> RuleSet {
        RuleSet {
            base: BaseRate { points, per_minor_units },
            minimum_spend: 0,
            categories: Vec::new(),
            tiers: vec![TierRule {
                name: "member".to_string(),
                threshold: 0,
                multiplier: Ratio::ONE,
            }],
            tier_window_months: 12,
            promotions: Vec::new(),
            caps: Caps::default(),
            cashback: Cashback::default(),
            expiry: Expiry::default(),
            purchases: PurchaseSettings::default(),
        }
    }

    /// Checks every bound and relation; the first problem found is the error.
    pub fn validate(&self) -> Result<(), RuleError> {
        let base = self.base;
        check(
            (1..=BASE_POINTS_MAX).contains(&base.points)
                && (1..=BASE_PER_MINOR_UNITS_MAX).contains(&base.per_minor_units),
            RuleItem::Base,
            || {
                format!(
                    "{} points per {} minor units: points must be 1..={BASE_POINTS_MAX} and \
                     minor units 1..={BASE_PER_MINOR_UNITS_MAX}",
                    base.points, base.per_minor_units
                )
            },
        )?;
        check_amount(self.minimum_spend, "minimum spend", RuleItem::MinimumSpend)?;
        check(self.categories.len() <= CATEGORIES_MAX, RuleItem::Category(CATEGORIES_MAX), || {
            format!("{} categories: at most {CATEGORIES_MAX}", self.categories.len())
        })?;
        for (index, category) in self.categories.iter().enumerate() {
            let item = RuleItem::Category(index);
            check(category.id != 0, item, || "category id 0 means \"none\"; use 1..=65535".into())?;
            check_name(&category.name, item)?;
            if let Some(previous) = index.checked_sub(1).map(|i| &self.categories[i]) {
                check(previous.id != category.id, item, || {
                    format!("category {} is listed twice", category.id)
                })?;
                check(previous.id < category.id, item, || {
                    format!(
                        "categories must be listed by increasing id ({} after {})",
                        category.id, previous.id
                    )
                })?;
            }
            check_multiplier(category.multiplier, item)?;
            if let Some(cashback) = &category.cashback {
                check_cashback(cashback, item)?;
            }
        }
        check(!self.tiers.is_empty() && self.tiers.len() <= TIERS_MAX, RuleItem::Tier(0), || {
            format!("{} tiers: there must be 1..={TIERS_MAX}", self.tiers.len())
        })?;
        for (index, tier) in self.tiers.iter().enumerate() {
            let item = RuleItem::Tier(index);
            check_name(&tier.name, item)?;
            check_multiplier(tier.multiplier, item)?;
            check_amount(tier.threshold, "threshold", item)?;
            match index.checked_sub(1).map(|i| &self.tiers[i]) {
                None => check(tier.threshold == 0, item, || {
                    format!("the first tier's threshold is {}, not 0", tier.threshold)
                })?,
                Some(previous) => {
                    check(previous.threshold < tier.threshold, item, || {
                        format!(
                            "thresholds must increase ({} after {})",
                            tier.threshold, previous.threshold
                        )
                    })?;
                    check(
                        self.tiers[..index].iter().all(|other| other.name != tier.name),
                        item,
                        || format!("tier {:?} is listed twice", tier.name),
                    )?;
                }
            }
        }
        check((1..=MONTHS_MAX).contains(&self.tier_window_months), RuleItem::TierWindow, || {
            format!("{} months: must be 1..={MONTHS_MAX}", self.tier_window_months)
        })?;
        check(
            self.promotions.len() <= PROMOTIONS_MAX,
            RuleItem::Promotion(PROMOTIONS_MAX),
            || format!("{} promotions: at most {PROMOTIONS_MAX}", self.promotions.len()),
        )?;
        for (index, promotion) in self.promotions.iter().enumerate() {
            self.validate_promotion(index, promotion)?;
        }
        let caps = self.caps;
        for (cap, what) in [(caps.daily, "daily cap"), (caps.monthly, "monthly cap")] {
            if let Some(cap) = cap {
                check(cap > 0, RuleItem::Caps, || {
                    format!("{what} 0 would forbid earning; leave it out for no cap")
                })?;
                check_amount(cap, what, RuleItem::Caps)?;
            }
        }
        check_cashback(&self.cashback, RuleItem::Cashback)?;
        let expiry = self.expiry;
        for (months, what) in [
            (expiry.earned_months, "earned"),
            (expiry.bonus_months, "bonus"),
            (expiry.transfer_months, "transfer"),
        ] {
            check((1..=MONTHS_MAX).contains(&months), RuleItem::Expiry, || {
                format!("{what} points live {months} months: must be 1..={MONTHS_MAX}")
            })?;
        }
        self.validate_purchases()?;
        let bytes = super::codec::encoded_len(self);
        check(bytes <= RULES_BYTES_MAX, RuleItem::Whole, || {
            format!(
                "it takes {bytes} bytes encoded, above the {RULES_BYTES_MAX} one WAL record \
                 holds: use fewer categories or promotions, or shorter names"
            )
        })?;
        Ok(())
    }

    fn validate_purchases(&self) -> Result<(), RuleError> {
        let settings = self.purchases;
        let item = RuleItem::Purchases;
        check((1..=REFUND_DAYS_MAX).contains(&settings.refund_days), item, || {
            format!("refund_days {} must be 1..={REFUND_DAYS_MAX}", settings.refund_days)
        })?;
        if let PendingPoints::Held { days } = settings.pending {
            check((1..=PENDING_HOLD_DAYS_MAX).contains(&days), item, || {
                format!("pending_hold_days {days} must be 1..={PENDING_HOLD_DAYS_MAX}")
            })?;
        }
        let value = settings.point_value;
        check(
            (1..=POINT_VALUE_TERM_MAX).contains(&value.minor_units)
                && (1..=POINT_VALUE_TERM_MAX).contains(&value.points),
            item,
            || {
                format!(
                    "point value {} minor units per {} points: both must be \
                     1..={POINT_VALUE_TERM_MAX}",
                    value.minor_units, value.points
                )
            },
        )
    }

    fn validate_promotion(&self, index: usize, promotion: &Promotion) -> Result<(), RuleError> {
        let item = RuleItem::Promotion(index);
        check_name(&promotion.name, item)?;
        check(
            self.promotions[..index].iter().all(|other| other.name != promotion.name),
            item,
            || format!("promotion {:?} is listed twice", promotion.name),
        )?;
        check(promotion.starts_at < promotion.ends_at, item, || {
            format!(
                "it ends {}, before it starts {}: the end must be after the start",
                rfc3339(promotion.ends_at),
                rfc3339(promotion.starts_at)
            )
        })?;
        match &promotion.scope {
            PromotionScope::All => {}
            PromotionScope::Categories(ids) => {
                check(!ids.is_empty() && ids.len() <= PROMOTION_SCOPE_MAX, item, || {
                    format!("{} categories: a scope names 1..={PROMOTION_SCOPE_MAX}", ids.len())
                })?;
                for (position, id) in ids.iter().enumerate() {
                    let known = self.category(*id);
                    check(known.is_some(), item, || {
                        format!("unknown category {id}: name it under [[category]] first")
                    })?;
                    check(known.is_some_and(|category| !category.excluded), item, || {
                        format!("category {id} is excluded: no line of it earns")
                    })?;
                    check(!ids[..position].contains(id), item, || {
                        format!("category {id} is listed twice")
                    })?;
                }
            }
            PromotionScope::Stores(stores) => {
                check(!stores.is_empty() && stores.len() <= PROMOTION_SCOPE_MAX, item, || {
                    format!("{} stores: a scope names 1..={PROMOTION_SCOPE_MAX}", stores.len())
                })?;
                for (position, store) in stores.iter().enumerate() {
                    check(*store != 0, item, || "store 0 means \"none\"".into())?;
                    check(!stores[..position].contains(store), item, || {
                        format!("store {store} is listed twice")
                    })?;
                }
            }
        }
        match promotion.effect {
            PromotionEffect::Multiplier(multiplier) => check_multiplier(multiplier, item),
            PromotionEffect::Bonus(points) => {
                check(points > 0, item, || "a bonus of 0 points gives nothing".into())?;
                check_amount(points, "bonus", item)
            }
        }
    }

    /// The rules of category `id`, if it has any.
    pub fn category(&self, id: u16) -> Option<&CategoryRule> {
        self.categories
            .binary_search_by_key(&id, |category| category.id)
            .ok()
            .map(|i| &self.categories[i])
    }

    /// The tier of a customer with `qualifying` points: the last whose threshold they reach.
    pub fn tier_for(&self, qualifying: u64) -> u8 {
        let reached = self.tiers.iter().take_while(|tier| tier.threshold <= qualifying).count();
        u8::try_from(reached.saturating_sub(1)).expect("at most TIERS_MAX tiers")
    }
}
