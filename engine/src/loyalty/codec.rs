//! The byte form of a rule set, shared by the `rules_define` WAL record and the snapshot's
//! programme section. Spec: docs/wal-format.md, "rules_define".
//!
//! A decoded rule set is checked (`RuleSet::validate`) before it is returned: no reader ever
//! holds a rule set the engine would have refused.

use super::decimal::Ratio;
use super::lots::{LotKind, LotPart};
use super::pricing::{BASKET_LINES_MAX, Line, Lines, PromotionPoints, PurchaseOutcome};
use super::programme::ProgrammeAccounts;
use super::rules::{
    BaseRate, CATEGORIES_MAX, Caps, Cashback, CategoryRule, Expiry, PROMOTION_SCOPE_MAX,
    PROMOTIONS_MAX, PendingPoints, PointValue, Promotion, PromotionEffect, PromotionScope,
    PurchaseSettings, RULE_NAME_BYTES_MAX, RuleSet, TIERS_MAX, TierRule,
};
use crate::codec::{DecodeError, Decoder, Encoder};
use crate::ids::{Timestamp, TxId};
use crate::ledger::account::ClassId;

const CATEGORY_EXCLUDED: u8 = 1;
const CATEGORY_OWN_CASHBACK: u8 = 2;
const EFFECT_MULTIPLIER: u8 = 1;
const EFFECT_BONUS: u8 = 2;
const SCOPE_ALL: u8 = 0;
const SCOPE_CATEGORIES: u8 = 1;
const SCOPE_STORES: u8 = 2;

fn count_u8(len: usize) -> u8 {
    u8::try_from(len).expect("rule set lists are bounded by validate")
}

/// Appends a lot part: `origin: u64`, `kind: u8`, `expires_day: u32`, `amount: u64` (21 bytes).
pub fn encode_part(encoder: &mut Encoder<'_>, part: &LotPart) {
    encoder.u64(part.origin.0);
    encoder.u8(part.kind as u8);
    encoder.u32(part.expires_day);
    encoder.u64(part.amount);
}

/// Reads a lot part; its amount is never 0.
pub fn decode_part(decoder: &mut Decoder<'_>) -> Result<LotPart, DecodeError> {
    let origin = TxId(decoder.u64("lot origin")?);
    let kind = decoder.u8("lot kind")?;
    let kind = LotKind::from_u8(kind).ok_or_else(|| invalid("lot kind", kind))?;
    let expires_day = decoder.u32("lot expiry day")?;
    let amount = decoder.u64("lot amount")?;
    if amount == 0 {
        return Err(invalid("lot amount", 0_u8));
    }
    Ok(LotPart { origin, kind, expires_day, amount })
}

/// Appends a basket: `count: u8`, then per line `category: u16`, `amount: u64`, `flags: u8`
/// (bit 0: excluded by the till).
pub fn encode_lines(encoder: &mut Encoder<'_>, lines: &[Line]) {
    encoder.u8(u8::try_from(lines.len()).expect("baskets are bounded"));
    for line in lines {
        encoder.u16(line.category);
        encoder.u64(line.amount);
        encoder.u8(u8::from(line.excluded));
    }
}

/// Reads a basket: 1..=32 lines, amounts not 0, flags 0 or 1.
pub fn decode_lines(decoder: &mut Decoder<'_>) -> Result<Lines, DecodeError> {
    let count = decoder.u8("line count")?;
    if count == 0 || usize::from(count) > BASKET_LINES_MAX {
        return Err(invalid("line count", count));
    }
    let mut lines = Lines::new();
    for _ in 0..count {
        let category = decoder.u16("line category")?;
        let amount = decoder.u64("line amount")?;
        let flags = decoder.u8("line flags")?;
        if amount == 0 || flags > 1 {
            return Err(invalid("line", amount));
        }
        lines.push(Line { category, amount, excluded: flags == 1 });
    }
    Ok(lines)
}

/// Bytes of an encoded basket of `lines` lines.
pub fn lines_len(lines: usize) -> usize {
    1 + lines * LINE_BYTES
}

/// Bytes of one encoded line.
pub const LINE_BYTES: usize = 2 + 8 + 1;

/// Appends a purchase's outcome.
pub fn encode_outcome(encoder: &mut Encoder<'_>, outcome: &PurchaseOutcome) {
    encoder.u32(outcome.rules_version);
    encoder.u8(outcome.tier_before);
    encoder.u8(outcome.tier_after);
    encoder.u64(outcome.base);
    encoder.u64(outcome.category);
    encoder.u64(outcome.tier_points);
    encoder.u8(u8::try_from(outcome.promotions.len()).expect("at most PROMOTIONS_MAX"));
    for promotion in &outcome.promotions {
        encoder.u8(promotion.promotion);
        encoder.u64(promotion.points);
    }
    encoder.u64(outcome.cap_cut);
    encoder.u64(outcome.earned);
    encoder.u64(outcome.bonus);
    encoder.u64(outcome.cashback);
}

/// Reads a purchase's outcome: tiers below `TIERS_MAX`, promotions below `PROMOTIONS_MAX` in
/// increasing order, credited points that add up (earned + bonus + cut = every component).
pub fn decode_outcome(decoder: &mut Decoder<'_>) -> Result<PurchaseOutcome, DecodeError> {
    let rules_version = decoder.u32("rule version")?;
    let tier_before = decoder.u8("tier before")?;
    let tier_after = decoder.u8("tier after")?;
    if usize::from(tier_before.max(tier_after)) >= TIERS_MAX {
        return Err(invalid("tier", tier_before.max(tier_after)));
    }
    let base = decoder.u64("base points")?;
    let category = decoder.u64("category points")?;
    let tier_points = decoder.u64("tier points")?;
    let count = small_count(decoder, "promotion count", PROMOTIONS_MAX)?;
    let mut promotions = smallvec::SmallVec::new();
    for _ in 0..count {
        let promotion = decoder.u8("promotion")?;
        let points = decoder.u64("promotion points")?;
        let ordered =
            promotions.last().is_none_or(|last: &PromotionPoints| last.promotion < promotion);
        if usize::from(promotion) >= PROMOTIONS_MAX || !ordered || points == 0 {
            return Err(invalid("promotion", promotion));
        }
        promotions.push(PromotionPoints { promotion, points });
    }
    let outcome = PurchaseOutcome {
        rules_version,
        tier_before,
        tier_after,
        base,
        category,
        tier_points,
        promotions,
        cap_cut: decoder.u64("cap cut")?,
        earned: decoder.u64("earned points")?,
        bonus: decoder.u64("bonus points")?,
        cashback: decoder.u64("cashback")?,
    };
    let components = [base, category, tier_points]
        .into_iter()
        .chain(outcome.promotions.iter().map(|p| p.points))
        .try_fold(0_u64, u64::checked_add);
    let credited = [outcome.earned, outcome.bonus, outcome.cap_cut]
        .into_iter()
        .try_fold(0_u64, u64::checked_add);
    if components.is_none() || components != credited || rules_version == 0 {
        return Err(invalid("purchase outcome (components do not add up)", 0_u8));
    }
    Ok(outcome)
}

/// Appends the programme's five classes (`points`, `issuance`, `breakage`, `cashback`,
/// `cashback_funding`; 0 for no cashback).
pub fn encode_accounts(encoder: &mut Encoder<'_>, accounts: &ProgrammeAccounts) {
    encoder.u32(accounts.points.0);
    encoder.u32(accounts.issuance.0);
    encoder.u32(accounts.breakage.0);
    let (cashback, funding) = accounts.cashback.unwrap_or((ClassId(0), ClassId(0)));
    encoder.u32(cashback.0);
    encoder.u32(funding.0);
}

/// Reads what `encode_accounts` wrote; one cashback class without the other is invalid.
pub fn decode_accounts(decoder: &mut Decoder<'_>) -> Result<ProgrammeAccounts, DecodeError> {
    let mut class = |field| decoder.u32(field).map(ClassId);
    let points = class("points class")?;
    let issuance = class("issuance class")?;
    let breakage = class("breakage class")?;
    let cashback = match (class("cashback class")?, class("cashback funding class")?) {
        (ClassId(0), ClassId(0)) => None,
        (ClassId(0), _) | (_, ClassId(0)) => return Err(invalid("cashback classes", 0_u8)),
        pair => Some(pair),
    };
    Ok(ProgrammeAccounts {
        points,
        issuance,
        breakage,
        cashback,
        clawback: None,
        cashback_clawback: None,
    })
}

/// Appends `rules` (already validated) to `encoder`.
pub fn encode_rules(encoder: &mut Encoder<'_>, rules: &RuleSet) {
    encoder.u32(rules.base.points);
    encoder.u64(rules.base.per_minor_units);
    encoder.u64(rules.minimum_spend);
    encoder.u8(rules.tier_window_months);
    encoder.u8(rules.expiry.earned_months);
    encoder.u8(rules.expiry.bonus_months);
    encoder.u8(rules.expiry.transfer_months);
    encoder.u64(rules.caps.daily.unwrap_or(0));
    encoder.u64(rules.caps.monthly.unwrap_or(0));
    encoder.u32(rules.cashback.percent.0);
    encoder.u64(rules.cashback.flat);
    encoder.u8(count_u8(rules.categories.len()));
    for category in &rules.categories {
        encoder.u16(category.id);
        encoder.short_str(&category.name);
        encoder.u32(category.multiplier.0);
        let mut flags = 0;
        if category.excluded {
            flags |= CATEGORY_EXCLUDED;
        }
        if category.cashback.is_some() {
            flags |= CATEGORY_OWN_CASHBACK;
        }
        encoder.u8(flags);
        let cashback = category.cashback.unwrap_or_default();
        encoder.u32(cashback.percent.0);
        encoder.u64(cashback.flat);
    }
    encoder.u8(count_u8(rules.tiers.len()));
    for tier in &rules.tiers {
        encoder.short_str(&tier.name);
        encoder.u64(tier.threshold);
        encoder.u32(tier.multiplier.0);
    }
    encoder.u8(count_u8(rules.promotions.len()));
    for promotion in &rules.promotions {
        encoder.short_str(&promotion.name);
        encoder.u64(promotion.starts_at.0);
        encoder.u64(promotion.ends_at.0);
        match promotion.effect {
            PromotionEffect::Multiplier(multiplier) => {
                encoder.u8(EFFECT_MULTIPLIER);
                encoder.u64(u64::from(multiplier.0));
            }
            PromotionEffect::Bonus(points) => {
                encoder.u8(EFFECT_BONUS);
                encoder.u64(points);
            }
        }
        match &promotion.scope {
            PromotionScope::All => {
                encoder.u8(SCOPE_ALL);
                encoder.u8(0);
            }
            PromotionScope::Categories(ids) => {
                encoder.u8(SCOPE_CATEGORIES);
                encoder.u8(count_u8(ids.len()));
                ids.iter().for_each(|id| encoder.u16(*id));
            }
            PromotionScope::Stores(stores) => {
                encoder.u8(SCOPE_STORES);
                encoder.u8(count_u8(stores.len()));
                stores.iter().for_each(|store| encoder.u32(*store));
            }
        }
    }
}

/// The bytes `encode_rules` writes for `rules`.
pub fn encoded_len(rules: &RuleSet) -> usize {
    let mut bytes = Vec::new();
    encode_rules(&mut Encoder::new(&mut bytes), rules);
    bytes.len()
}

fn invalid(field: &'static str, value: impl Into<u128>) -> DecodeError {
    DecodeError::Invalid { field, value: value.into() }
}

fn small_count(
    decoder: &mut Decoder<'_>,
    field: &'static str,
    max: usize,
) -> Result<usize, DecodeError> {
    let count = decoder.u8(field)?;
    if usize::from(count) > max {
        return Err(invalid(field, count));
    }
    Ok(usize::from(count))
}

fn name(decoder: &mut Decoder<'_>, field: &'static str) -> Result<String, DecodeError> {
    Ok(decoder.short_str(field, RULE_NAME_BYTES_MAX)?.to_string())
}

fn cap(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

/// Bytes of the settings `encode_settings` appends.
pub const SETTINGS_BYTES: usize = 29;

const PENDING_AVAILABLE: u8 = 0;
const PENDING_HELD: u8 = 1;

/// Appends what format 5 added to a rule version, after its rule set: the clawback classes
/// and the purchase settings (docs/wal-format.md, "rules_define").
pub fn encode_settings(encoder: &mut Encoder<'_>, accounts: &ProgrammeAccounts, rules: &RuleSet) {
    encoder.u32(accounts.clawback.map_or(0, |class| class.0));
    encoder.u32(accounts.cashback_clawback.map_or(0, |class| class.0));
    let settings = rules.purchases;
    encoder.u16(settings.refund_days);
    match settings.pending {
        PendingPoints::Available => {
            encoder.u8(PENDING_AVAILABLE);
            encoder.u16(0);
        }
        PendingPoints::Held { days } => {
            encoder.u8(PENDING_HELD);
            encoder.u16(days);
        }
    }
    encoder.u64(settings.point_value.minor_units);
    encoder.u64(settings.point_value.points);
}

/// Whether a rule version carries the settings of format 5 after its rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settings {
    /// Written before format 5 (snapshots before version 8): the defaults, no clawback classes.
    Absent,
    /// Always there (snapshots from version 8).
    Present,
    /// There when bytes are left (the `rules_define` payload, whose rule set ends it).
    IfAny,
}

/// Reads a rule version's rule set and, as `settings` says, the settings after it; checks the
/// rule set and fills in `accounts`' clawback classes.
pub fn decode_version_rules(
    decoder: &mut Decoder<'_>,
    accounts: &mut ProgrammeAccounts,
    settings: Settings,
) -> Result<RuleSet, DecodeError> {
    let mut rules = decode_rules_unchecked(decoder)?;
    let present = match settings {
        Settings::Absent => false,
        Settings::Present => true,
        Settings::IfAny => decoder.remaining() > 0,
    };
    if present {
        let class = |value: u32| (value != 0).then_some(ClassId(value));
        accounts.clawback = class(decoder.u32("clawback class")?);
        accounts.cashback_clawback = class(decoder.u32("cashback clawback class")?);
        if accounts.cashback_clawback.is_some() && accounts.cashback.is_none() {
            return Err(invalid("cashback clawback class without cashback", 0_u8));
        }
        let refund_days = decoder.u16("refund days")?;
        let pending = match (decoder.u8("pending points")?, decoder.u16("pending hold days")?) {
            (PENDING_AVAILABLE, 0) => PendingPoints::Available,
            (PENDING_HELD, days) => PendingPoints::Held { days },
            (other, _) => return Err(invalid("pending points", other)),
        };
        let point_value = PointValue {
            minor_units: decoder.u64("point value minor units")?,
            points: decoder.u64("point value points")?,
        };
        rules.purchases = PurchaseSettings { refund_days, pending, point_value };
    }
    rules.validate().map_err(|_| invalid("rule set (fails its checks)", 0_u8))?;
    Ok(rules)
}

/// Reads a rule set written by `encode_rules` (no settings after it) and checks it.
pub fn decode_rules(decoder: &mut Decoder<'_>) -> Result<RuleSet, DecodeError> {
    let rules = decode_rules_unchecked(decoder)?;
    rules.validate().map_err(|_| invalid("rule set (fails its checks)", 0_u8))?;
    Ok(rules)
}

fn decode_rules_unchecked(decoder: &mut Decoder<'_>) -> Result<RuleSet, DecodeError> {
    let base = BaseRate {
        points: decoder.u32("base points")?,
        per_minor_units: decoder.u64("base per minor units")?,
    };
    let minimum_spend = decoder.u64("minimum spend")?;
    let tier_window_months = decoder.u8("tier window")?;
    let expiry = Expiry {
        earned_months: decoder.u8("earned months")?,
        bonus_months: decoder.u8("bonus months")?,
        transfer_months: decoder.u8("transfer months")?,
    };
    let caps =
        Caps { daily: cap(decoder.u64("daily cap")?), monthly: cap(decoder.u64("monthly cap")?) };
    let cashback = Cashback {
        percent: Ratio(decoder.u32("cashback percent")?),
        flat: decoder.u64("cashback flat")?,
    };
    let count = small_count(decoder, "categories", CATEGORIES_MAX)?;
    let mut categories = Vec::with_capacity(count);
    for _ in 0..count {
        let id = decoder.u16("category id")?;
        let name = name(decoder, "category name")?;
        let multiplier = Ratio(decoder.u32("category multiplier")?);
        let flags = decoder.u8("category flags")?;
        if flags & !(CATEGORY_EXCLUDED | CATEGORY_OWN_CASHBACK) != 0 {
            return Err(invalid("category flags", flags));
        }
        let own = Cashback {
            percent: Ratio(decoder.u32("category cashback percent")?),
            flat: decoder.u64("category cashback flat")?,
        };
        let cashback = if flags & CATEGORY_OWN_CASHBACK != 0 {
            Some(own)
        } else if own.is_none() {
            None
        } else {
            return Err(invalid("category cashback without its flag", own.flat));
        };
        categories.push(CategoryRule {
            id,
            name,
            multiplier,
            excluded: flags & CATEGORY_EXCLUDED != 0,
            cashback,
        });
    }
    let count = small_count(decoder, "tiers", TIERS_MAX)?;
    let mut tiers = Vec::with_capacity(count);
    for _ in 0..count {
        tiers.push(TierRule {
            name: name(decoder, "tier name")?,
            threshold: decoder.u64("tier threshold")?,
            multiplier: Ratio(decoder.u32("tier multiplier")?),
        });
    }
    let count = small_count(decoder, "promotions", PROMOTIONS_MAX)?;
    let mut promotions = Vec::with_capacity(count);
    for _ in 0..count {
        let name = name(decoder, "promotion name")?;
        let starts_at = Timestamp(decoder.u64("promotion start")?);
        let ends_at = Timestamp(decoder.u64("promotion end")?);
        let effect = match decoder.u8("promotion effect")? {
            EFFECT_MULTIPLIER => {
                let value = decoder.u64("promotion multiplier")?;
                let multiplier =
                    u32::try_from(value).map_err(|_| invalid("promotion multiplier", value))?;
                PromotionEffect::Multiplier(Ratio(multiplier))
            }
            EFFECT_BONUS => PromotionEffect::Bonus(decoder.u64("promotion bonus")?),
            other => return Err(invalid("promotion effect", other)),
        };
        let kind = decoder.u8("promotion scope")?;
        let entries = small_count(decoder, "promotion scope entries", PROMOTION_SCOPE_MAX)?;
        let scope = match kind {
            SCOPE_ALL if entries == 0 => PromotionScope::All,
            SCOPE_CATEGORIES => PromotionScope::Categories(
                (0..entries).map(|_| decoder.u16("scope category")).collect::<Result<_, _>>()?,
            ),
            SCOPE_STORES => PromotionScope::Stores(
                (0..entries).map(|_| decoder.u32("scope store")).collect::<Result<_, _>>()?,
            ),
            other => return Err(invalid("promotion scope", other)),
        };
        promotions.push(Promotion { name, starts_at, ends_at, scope, effect });
    }
    let rules = RuleSet {
        base,
        minimum_spend,
        categories,
        tiers,
        tier_window_months,
        promotions,
        caps,
        cashback,
        expiry,
        purchases: PurchaseSettings::default(),
    };
    Ok(rules)
}

/// Bytes of an encoded exchange side: asset 2, customer class 4, fund account 12, money
/// account 12, point value 8 + 8.
pub const EXCHANGE_SIDE_BYTES: usize = 2 + 4 + 12 + 12 + 8 + 8;

/// Bytes of encoded rate terms: numerator 8, denominator 8, liability asset 2, two sides.
pub const RATE_TERMS_BYTES: usize = 8 + 8 + 2 + 2 * EXCHANGE_SIDE_BYTES;
const _: () = assert!(RATE_TERMS_BYTES == 110);

fn encode_side(encoder: &mut Encoder<'_>, side: &super::exchange::ExchangeSide) {
    encoder.u16(side.asset.0);
    encoder.u32(side.customer.0);
    crate::wal::payload::encode_account_id(encoder, side.fund);
    crate::wal::payload::encode_account_id(encoder, side.money);
    encoder.u64(side.value.minor_units);
    encoder.u64(side.value.points);
}

fn decode_side(decoder: &mut Decoder<'_>) -> Result<super::exchange::ExchangeSide, DecodeError> {
    use crate::ledger::account::AssetId;
    let asset = AssetId(decoder.u16("side asset")?);
    let customer = ClassId(decoder.u32("side customer class")?);
    let fund = crate::wal::payload::decode_account_id(decoder)?;
    let money = crate::wal::payload::decode_account_id(decoder)?;
    let minor_units = decoder.u64("side point value minor units")?;
    let points = decoder.u64("side point value points")?;
    let term = super::rules::POINT_VALUE_TERM_MAX;
    for (field, value) in
        [("side point value minor units", minor_units), ("side point value points", points)]
    {
        if !(1..=term).contains(&value) {
            return Err(invalid(field, value));
        }
    }
    Ok(super::exchange::ExchangeSide {
        asset,
        customer,
        fund,
        money,
        value: PointValue { minor_units, points },
    })
}

/// Appends rate terms (`RATE_TERMS_BYTES`): numerator, denominator, liability asset, the
/// `from` side, the `to` side.
pub fn encode_rate_terms(encoder: &mut Encoder<'_>, terms: &super::exchange::RateTerms) {
    encoder.u64(terms.numerator);
    encoder.u64(terms.denominator);
    encoder.u16(terms.money.0);
    encode_side(encoder, &terms.from);
    encode_side(encoder, &terms.to);
}

/// Reads rate terms: ratio terms in range, two different assets, point values in range (the
/// accounts are the registry's to check).
pub fn decode_rate_terms(
    decoder: &mut Decoder<'_>,
) -> Result<super::exchange::RateTerms, DecodeError> {
    use super::exchange::RATE_TERM_MAX;
    let numerator = decoder.u64("rate numerator")?;
    let denominator = decoder.u64("rate denominator")?;
    for (field, value) in [("rate numerator", numerator), ("rate denominator", denominator)] {
        if !(1..=RATE_TERM_MAX).contains(&value) {
            return Err(invalid(field, value));
        }
    }
    let money = crate::ledger::account::AssetId(decoder.u16("liability asset")?);
    let from = decode_side(decoder)?;
    let to = decode_side(decoder)?;
    if from.asset == to.asset {
        return Err(invalid("rate to asset", to.asset.0));
    }
    Ok(super::exchange::RateTerms { from, to, numerator, denominator, money })
}
