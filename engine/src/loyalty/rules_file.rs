//! Rule files: a rule set written by an operator in TOML, read into a checked `RuleSet`.
//! The schema and a complete example: docs/loyalty.md, "Rule files".
//!
//! Every error names the line it is about: a TOML error where the parser stopped, a rule error
//! at the table (`[[promotion]]`, `[caps]`, …) that holds the offending value. Numbers that are
//! not whole (multipliers, percentages) are written as quoted decimals, `"1.5"`: TOML floats are
//! refused, so no binary fraction ever reaches the rules.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use toml::value::{Datetime, Offset};

use super::calendar::{self, Date};
use super::decimal::Ratio;
use super::rules::{
    Caps, Cashback, CategoryRule, Expiry, PendingPoints, PointValue, Promotion, PromotionEffect,
    PromotionScope, PurchaseSettings, RuleItem, RuleSet, TierRule,
};
use crate::ids::Timestamp;

/// Bytes of a rule file: a rule set at its limits is a few KiB of TOML with comments.
pub const RULES_FILE_BYTES_MAX: usize = 256 * 1024;

/// Why a rule file is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RulesFileError {
    /// 1-based line of the problem (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A rule file: the rule set, and when it should take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesFile {
    /// The rules, checked.
    pub rules: RuleSet,
    /// `effective_at`, if the file gives one (else: at once).
    pub effective_at: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    effective_at: Option<Spanned<Datetime>>,
    tier_window_months: Option<Spanned<u8>>,
    earning: Spanned<EarningFile>,
    cashback: Option<Spanned<CashbackFile>>,
    caps: Option<Spanned<CapsFile>>,
    expiry: Option<Spanned<ExpiryFile>>,
    purchases: Option<Spanned<PurchasesFile>>,
    #[serde(default)]
    tier: Vec<Spanned<TierFile>>,
    #[serde(default)]
    category: Vec<Spanned<CategoryFile>>,
    #[serde(default)]
    promotion: Vec<Spanned<PromotionFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EarningFile {
    points: u32,
    per_minor_units: u64,
    minimum_spend: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CashbackFile {
    percent: Option<Spanned<toml::Value>>,
    flat: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsFile {
    daily: Option<u64>,
    monthly: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiryFile {
    earned_months: Option<u8>,
    bonus_months: Option<u8>,
    transfer_months: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchasesFile {
    refund_days: Option<u16>,
    pending_points: Option<Spanned<String>>,
    pending_hold_days: Option<u16>,
    point_value_minor_units: Option<u64>,
    point_value_points: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    name: String,
    threshold: u64,
    multiplier: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    id: u16,
    name: String,
    multiplier: Option<Spanned<toml::Value>>,
    excluded: Option<bool>,
    cashback_percent: Option<Spanned<toml::Value>>,
    cashback_flat: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionFile {
    name: String,
    starts_at: Spanned<Datetime>,
    ends_at: Spanned<Datetime>,
    multiplier: Option<Spanned<toml::Value>>,
    bonus: Option<u64>,
    categories: Option<Vec<u16>>,
    stores: Option<Vec<u32>>,
}

/// Reads and checks the rule file at `path`.
pub fn read(path: &Path) -> Result<RulesFile, RulesFileError> {
    let whole = |message: String| RulesFileError { line: 0, message };
    let metadata = std::fs::metadata(path)
        .map_err(|error| whole(format!("cannot read {}: {error}", path.display())))?;
    if metadata.len() > RULES_FILE_BYTES_MAX as u64 {
        return Err(whole(format!(
            "{} is {} bytes; a rule file has at most {RULES_FILE_BYTES_MAX}",
            path.display(),
            metadata.len()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|error| whole(format!("cannot read {}: {error}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| whole(format!("{} is not UTF-8 text", path.display())))?;
    parse(&text)
}

/// Parses and checks a rule file's text.
pub fn parse(text: &str) -> Result<RulesFile, RulesFileError> {
    if text.len() > RULES_FILE_BYTES_MAX {
        return Err(RulesFileError {
            line: 0,
            message: format!(
                "{} bytes; a rule file has at most {RULES_FILE_BYTES_MAX}",
                text.len()
            ),
        });
    }
    let at = |span: Range<usize>, message: String| RulesFileError {
        line: line_of(text, span.start),
        message,
    };
    let file: File = toml::from_str(text).map_err(|error| {
        at(error.span().unwrap_or(0..0), error.message().trim_end().to_string())
    })?;
    let (rules, spans) = build(&file).map_err(|(span, message)| at(span, message))?;
    rules.validate().map_err(|error| {
        let span = match error.item {
            RuleItem::Base | RuleItem::MinimumSpend => Some(file.earning.span()),
            RuleItem::Category(index) => spans.categories.get(index).cloned(),
            RuleItem::Tier(index) => spans.tiers.get(index).cloned(),
            RuleItem::Promotion(index) => spans.promotions.get(index).cloned(),
            RuleItem::TierWindow => file.tier_window_months.as_ref().map(Spanned::span),
            RuleItem::Caps => file.caps.as_ref().map(Spanned::span),
            RuleItem::Cashback => file.cashback.as_ref().map(Spanned::span),
            RuleItem::Expiry => file.expiry.as_ref().map(Spanned::span),
            RuleItem::Purchases => file.purchases.as_ref().map(Spanned::span),
            RuleItem::Whole => None,
        };
        // A list too long points at its first item past the limit, or at the file.
        at(span.unwrap_or(0..0), error.to_string())
    })?;
    let effective_at = file
        .effective_at
        .as_ref()
        .map(timestamp)
        .transpose()
        .map_err(|(span, message)| at(span, message))?;
    Ok(RulesFile { rules, effective_at })
}

/// Where the items of a file are, for errors found once the rule set is built.
#[derive(Default)]
struct Spans {
    categories: Vec<Range<usize>>,
    tiers: Vec<Range<usize>>,
    promotions: Vec<Range<usize>>,
}

type Located<T> = Result<T, (Range<usize>, String)>;

fn purchase_settings(file: &Spanned<PurchasesFile>) -> Located<PurchaseSettings> {
    let span = file.span();
    let file = file.get_ref();
    let defaults = PurchaseSettings::default();
    let pending = match (file.pending_points.as_ref(), file.pending_hold_days) {
        (None, None) => PendingPoints::Available,
        (Some(mode), days) if mode.get_ref() == "available" => match days {
            None => PendingPoints::Available,
            Some(_) => {
                return Err((
                    span,
                    "pending_hold_days is only for pending_points = \"held\"".into(),
                ));
            }
        },
        (Some(mode), Some(days)) if mode.get_ref() == "held" => PendingPoints::Held { days },
        (Some(mode), None) if mode.get_ref() == "held" => {
            return Err((mode.span(), "pending_points = \"held\" needs pending_hold_days".into()));
        }
        (Some(mode), _) => {
            return Err((
                mode.span(),
                format!("pending_points {:?}: \"available\" or \"held\"", mode.get_ref()),
            ));
        }
        (None, Some(_)) => {
            return Err((span, "pending_hold_days needs pending_points = \"held\"".into()));
        }
    };
    Ok(PurchaseSettings {
        refund_days: file.refund_days.unwrap_or(defaults.refund_days),
        pending,
        point_value: PointValue {
            minor_units: file.point_value_minor_units.unwrap_or(defaults.point_value.minor_units),
            points: file.point_value_points.unwrap_or(defaults.point_value.points),
        },
    })
}

fn build(file: &File) -> Located<(RuleSet, Spans)> {
    let mut spans = Spans::default();
    let earning = file.earning.get_ref();
    let mut rules = RuleSet::flat(earning.points, earning.per_minor_units);
    rules.minimum_spend = earning.minimum_spend.unwrap_or(0);
    if let Some(window) = &file.tier_window_months {
        rules.tier_window_months = *window.get_ref();
    }
    if let Some(cashback) = &file.cashback {
        let cashback = cashback.get_ref();
        rules.cashback = Cashback {
            percent: percent(cashback.percent.as_ref())?.unwrap_or(Ratio::ZERO),
            flat: cashback.flat.unwrap_or(0),
        };
    }
    if let Some(caps) = &file.caps {
        let caps = caps.get_ref();
        rules.caps = Caps { daily: caps.daily, monthly: caps.monthly };
    }
    if let Some(expiry) = &file.expiry {
        let expiry = expiry.get_ref();
        let defaults = Expiry::default();
        rules.expiry = Expiry {
            earned_months: expiry.earned_months.unwrap_or(defaults.earned_months),
            bonus_months: expiry.bonus_months.unwrap_or(defaults.bonus_months),
            transfer_months: expiry.transfer_months.unwrap_or(defaults.transfer_months),
        };
    }
    if let Some(purchases) = &file.purchases {
        rules.purchases = purchase_settings(purchases)?;
    }
    if !file.tier.is_empty() {
        rules.tiers.clear();
    }
    for tier in &file.tier {
        spans.tiers.push(tier.span());
        let tier = tier.get_ref();
        rules.tiers.push(TierRule {
            name: tier.name.clone(),
            threshold: tier.threshold,
            multiplier: multiplier(tier.multiplier.as_ref())?,
        });
    }
    for category in &file.category {
        spans.categories.push(category.span());
        let category = category.get_ref();
        let cashback_percent = percent(category.cashback_percent.as_ref())?;
        let cashback = match (cashback_percent, category.cashback_flat) {
            (None, None) => None,
            (percent, flat) => {
                Some(Cashback { percent: percent.unwrap_or(Ratio::ZERO), flat: flat.unwrap_or(0) })
            }
        };
        rules.categories.push(CategoryRule {
            id: category.id,
            name: category.name.clone(),
            multiplier: multiplier(category.multiplier.as_ref())?,
            excluded: category.excluded.unwrap_or(false),
            cashback,
        });
    }
    for promotion in &file.promotion {
        spans.promotions.push(promotion.span());
        let span = promotion.span();
        let promotion = promotion.get_ref();
        let effect = match (&promotion.multiplier, promotion.bonus) {
            (Some(value), None) => PromotionEffect::Multiplier(multiplier(Some(value))?),
            (None, Some(points)) => PromotionEffect::Bonus(points),
            _ => return Err((span, "a promotion gives either `multiplier` or `bonus`".into())),
        };
        let scope = match (&promotion.categories, &promotion.stores) {
            (None, None) => PromotionScope::All,
            (Some(categories), None) => PromotionScope::Categories(categories.clone()),
            (None, Some(stores)) => PromotionScope::Stores(stores.clone()),
            (Some(_), Some(_)) => {
                return Err((span, "a promotion names `categories` or `stores`, not both".into()));
            }
        };
        rules.promotions.push(Promotion {
            name: promotion.name.clone(),
            starts_at: timestamp(&promotion.starts_at)?,
            ends_at: timestamp(&promotion.ends_at)?,
            scope,
            effect,
        });
    }
    Ok((rules, spans))
}

/// A decimal written as a quoted string (`"1.5"`) or a whole number (`2`).
fn decimal(value: &Spanned<toml::Value>, decimals: u32, percent: bool) -> Located<Ratio> {
    let text = match value.get_ref() {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(whole) => whole.to_string(),
        other => {
            return Err((
                value.span(),
                format!(
                    "write {other} as a quoted decimal with at most {decimals} digits after the \
                     point (\"1.5\"): rules never hold binary fractions"
                ),
            ));
        }
    };
    Ratio::parse(&text, decimals, percent).map_err(|message| (value.span(), message))
}

fn multiplier(value: Option<&Spanned<toml::Value>>) -> Located<Ratio> {
    value.map_or(Ok(Ratio::ONE), |value| decimal(value, 4, false))
}

fn percent(value: Option<&Spanned<toml::Value>>) -> Located<Option<Ratio>> {
    value.map(|value| decimal(value, 2, true)).transpose()
}

/// A TOML offset date-time as a UTC timestamp.
fn timestamp(value: &Spanned<Datetime>) -> Located<Timestamp> {
    utc(value.get_ref()).map_err(|message| (value.span(), message))
}

/// Parses an RFC 3339 date-time with its offset (`2026-11-27T00:00:00Z`) as a UTC timestamp.
pub fn parse_timestamp(text: &str) -> Result<Timestamp, String> {
    let datetime: Datetime =
        text.parse().map_err(|error| format!("{text:?} is not a date-time: {error}"))?;
    utc(&datetime)
}

/// The instant of a date-time with an offset; one without an offset is refused, since its
/// instant is not known. A leap second (:60) counts as :59.
fn utc(datetime: &Datetime) -> Result<Timestamp, String> {
    let fail = |message: &str| format!("{datetime}: {message}");
    let (Some(date), Some(time), Some(offset)) = (datetime.date, datetime.time, datetime.offset)
    else {
        return Err(fail("give a full date-time with its UTC offset, like 2026-11-27T00:00:00Z"));
    };
    let days = calendar::days_from_civil(Date {
        year: u32::from(date.year),
        month: u32::from(date.month),
        day: u32::from(date.day),
    });
    let offset_seconds = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes) * 60,
    };
    let seconds = days * 86_400
        + i64::from(time.hour) * 3_600
        + i64::from(time.minute) * 60
        + i64::from(time.second.min(59))
        - offset_seconds;
    let nanos = u64::try_from(seconds)
        .ok()
        .and_then(|seconds| seconds.checked_mul(1_000_000_000))
        .and_then(|nanos| nanos.checked_add(u64::from(time.nanosecond)))
        .ok_or_else(|| fail("outside 1970-01-01T00:00:00Z..2554-07-21T23:34:33Z"))?;
    Ok(Timestamp(nanos))
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&byte| byte == b'\n').count() + 1
}
