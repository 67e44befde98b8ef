//! Tables of the pricing arithmetic, the rule checks and rule file errors; a property test of
//! what pricing keeps true for any rule set and basket.

use proptest::prelude::*;

use super::calendar::NANOS_PER_DAY;
use super::decimal::Ratio;
use super::pricing::{BasketError, CapsUsed, Line, PromotionPoints, check_basket, price};
use super::rules::{
    Caps, Cashback, CategoryRule, Promotion, PromotionEffect, PromotionScope, RuleItem, RuleSet,
    TierRule,
};
use super::rules_file::{parse, parse_timestamp};
use crate::ids::Timestamp;

const DAY: u64 = NANOS_PER_DAY;

fn line(category: u16, amount: u64) -> Line {
    Line { category, amount, excluded: false }
}

/// 3 points per 200 minor units, so that rounding shows; categories 1 (×1.5), 2 (excluded),
/// 3 (×2, 10 % cashback); tiers at 0 (×1) and 1000 (×1.1); a ×2 promotion on category 1 on day
/// 10 and a 7-point bonus at store 9 on days 10..12.
fn rules() -> RuleSet {
    let mut rules = RuleSet::flat(3, 200);
    rules.categories = vec![
        CategoryRule {
            id: 1,
            name: "one".into(),
            multiplier: Ratio(15_000),
            excluded: false,
            cashback: None,
        },
        CategoryRule {
            id: 2,
            name: "two".into(),
            multiplier: Ratio::ONE,
            excluded: true,
            cashback: None,
        },
        CategoryRule {
            id: 3,
            name: "three".into(),
            multiplier: Ratio(20_000),
            excluded: false,
            cashback: Some(Cashback { percent: Ratio(1_000), flat: 0 }),
        },
    ];
    rules.tiers.push(TierRule { name: "plus".into(), threshold: 1000, multiplier: Ratio(11_000) });
    rules.promotions = vec![
        Promotion {
            name: "double-one".into(),
            starts_at: Timestamp(10 * DAY),
            ends_at: Timestamp(11 * DAY),
            scope: PromotionScope::Categories(vec![1]),
            effect: PromotionEffect::Multiplier(Ratio(20_000)),
        },
        Promotion {
            name: "store-nine".into(),
            starts_at: Timestamp(10 * DAY),
            ends_at: Timestamp(12 * DAY),
            scope: PromotionScope::Stores(vec![9]),
            effect: PromotionEffect::Bonus(7),
        },
    ];
    rules.cashback = Cashback { percent: Ratio(100), flat: 5 };
    rules.validate().expect("valid");
    rules
}

struct Case {
    name: &'static str,
    lines: Vec<Line>,
    store: u32,
    at: u64,
    tier: u8,
    used: (u64, u64),
    caps: Caps,
    /// base, category, tier, promotion points, cap cut, earned, bonus, cashback
    expect: [u64; 8],
}

#[test]
fn every_component_in_a_table() {
    let none = Caps::default();
    let cases = [
        Case {
            name: "66 units earn 0.99: rounded down",
            lines: vec![line(0, 66)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [0, 0, 0, 0, 0, 0, 0, 5],
        },
        Case {
            name: "67 units earn 1.005",
            lines: vec![line(0, 67)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [1, 0, 0, 0, 0, 1, 0, 5],
        },
        Case {
            name: "rounded once, not per line",
            lines: vec![line(0, 66), line(0, 66), line(0, 2)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [2, 0, 0, 0, 0, 2, 0, 6],
        },
        Case {
            name: "category ×1.5 adds half",
            lines: vec![line(1, 400)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [6, 3, 0, 0, 0, 9, 0, 9],
        },
        Case {
            name: "excluded category earns nothing",
            lines: vec![line(2, 400)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [0; 8],
        },
        Case {
            name: "till-excluded line earns nothing",
            lines: vec![Line { category: 1, amount: 400, excluded: true }, line(0, 200)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [3, 0, 0, 0, 0, 3, 0, 7],
        },
        Case {
            name: "tier ×1.1",
            lines: vec![line(0, 2000)],
            store: 1,
            at: DAY,
            tier: 1,
            used: (0, 0),
            caps: none,
            expect: [30, 0, 3, 0, 0, 33, 0, 25],
        },
        Case {
            name: "tier past the last is the last",
            lines: vec![line(0, 2000)],
            store: 1,
            at: DAY,
            tier: 7,
            used: (0, 0),
            caps: none,
            expect: [30, 0, 3, 0, 0, 33, 0, 25],
        },
        Case {
            name: "promotion's first nanosecond",
            lines: vec![line(1, 400)],
            store: 1,
            at: 10 * DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [6, 3, 0, 6, 0, 9, 6, 9],
        },
        Case {
            name: "promotion's last nanosecond",
            lines: vec![line(1, 400)],
            store: 1,
            at: 11 * DAY - 1,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [6, 3, 0, 6, 0, 9, 6, 9],
        },
        Case {
            name: "promotion's end is outside it",
            lines: vec![line(1, 400)],
            store: 1,
            at: 11 * DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [6, 3, 0, 0, 0, 9, 0, 9],
        },
        Case {
            name: "nanosecond before the start",
            lines: vec![line(1, 400)],
            store: 1,
            at: 10 * DAY - 1,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [6, 3, 0, 0, 0, 9, 0, 9],
        },
        Case {
            name: "category promotion skips other lines",
            lines: vec![line(1, 400), line(3, 400)],
            store: 1,
            at: 10 * DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [12, 9, 0, 6, 0, 21, 6, 49],
        },
        Case {
            name: "store bonus and the category promotion stack",
            lines: vec![line(1, 400)],
            store: 9,
            at: 10 * DAY,
            tier: 1,
            used: (0, 0),
            caps: none,
            expect: [6, 3, 0, 13, 0, 9, 13, 9],
        },
        Case {
            name: "store bonus needs an eligible line",
            lines: vec![line(2, 400)],
            store: 9,
            at: 10 * DAY,
            tier: 0,
            used: (0, 0),
            caps: none,
            expect: [0; 8],
        },
        Case {
            name: "daily cap crossed in the middle: bonus cut first",
            lines: vec![line(1, 400), line(0, 400)],
            store: 9,
            at: 10 * DAY,
            tier: 0,
            used: (95, 95),
            caps: Caps { daily: Some(100), monthly: None },
            expect: [12, 3, 0, 13, 23, 5, 0, 13],
        },
        Case {
            name: "cap cut reaches earned points",
            lines: vec![line(0, 2000)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (10, 10),
            caps: Caps { daily: Some(20), monthly: None },
            expect: [30, 0, 0, 0, 20, 10, 0, 25],
        },
        Case {
            name: "exactly the room left: no cut",
            lines: vec![line(0, 2000)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 70),
            caps: Caps { daily: None, monthly: Some(100) },
            expect: [30, 0, 0, 0, 0, 30, 0, 25],
        },
        Case {
            name: "monthly cap smaller than the daily",
            lines: vec![line(0, 2000)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (0, 90),
            caps: Caps { daily: Some(1000), monthly: Some(100) },
            expect: [30, 0, 0, 0, 20, 10, 0, 25],
        },
        Case {
            name: "over the cap already: everything cut",
            lines: vec![line(0, 2000)],
            store: 1,
            at: DAY,
            tier: 0,
            used: (150, 150),
            caps: Caps { daily: Some(100), monthly: None },
            expect: [30, 0, 0, 0, 30, 0, 0, 25],
        },
    ];
    for case in cases {
        let mut rules = rules();
        rules.caps = case.caps;
        let priced = price(
            &rules,
            &case.lines,
            case.store,
            Timestamp(case.at),
            case.tier,
            CapsUsed { day: case.used.0, month: case.used.1 },
        )
        .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let got = [
            priced.base,
            priced.category,
            priced.tier_points,
            priced.promotion_points(),
            priced.cap_cut,
            priced.earned,
            priced.bonus,
            priced.cashback,
        ];
        assert_eq!(got, case.expect, "{}: {priced:?}", case.name);
    }
}

#[test]
fn minimum_spend_counts_eligible_lines_only() {
    let mut rules = rules();
    rules.minimum_spend = 500;
    let at = Timestamp(DAY);
    let below =
        price(&rules, &[line(0, 499), line(2, 10_000)], 1, at, 0, CapsUsed::default()).unwrap();
    assert!(below.below_minimum);
    assert_eq!((below.points(), below.cashback, below.eligible_spend), (0, 0, 499));
    let at_minimum =
        price(&rules, &[line(0, 499), line(0, 1)], 1, at, 0, CapsUsed::default()).unwrap();
    assert!(!at_minimum.below_minimum);
    assert_eq!(at_minimum.base, 7, "⌊500 × 3 / 200⌋");
}

#[test]
fn promotions_are_listed_by_rule_set_position() {
    let priced =
        price(&rules(), &[line(1, 400)], 9, Timestamp(10 * DAY), 0, CapsUsed::default()).unwrap();
    assert_eq!(
        priced.promotions.as_slice(),
        [PromotionPoints { promotion: 0, points: 6 }, PromotionPoints { promotion: 1, points: 7 }]
    );
}

#[test]
fn bad_baskets_are_refused() {
    let rules = rules();
    let at = Timestamp(DAY);
    let used = CapsUsed::default();
    assert_eq!(price(&rules, &[], 1, at, 0, used), Err(BasketError::LineCount));
    assert_eq!(price(&rules, &vec![line(0, 1); 33], 1, at, 0, used), Err(BasketError::LineCount));
    assert_eq!(check_basket(&vec![line(0, 1); 32]), Ok(32));
    assert_eq!(
        price(&rules, &[line(0, 5), line(0, 0)], 1, at, 0, used),
        Err(BasketError::LineAmountZero)
    );
    assert_eq!(
        price(&rules, &[line(0, u64::MAX), line(0, 1)], 1, at, 0, used),
        Err(BasketError::TotalOverflow)
    );
    let generous = RuleSet::flat(1_000_000, 1);
    assert_eq!(
        price(&generous, &[line(0, u64::MAX)], 1, at, 0, used),
        Err(BasketError::EarnOverflow)
    );
    // The largest basket at the largest multipliers does not overflow 128-bit arithmetic.
    let mut extreme = RuleSet::flat(1_000_000, 1_000_000_000_000);
    extreme.tiers[0].multiplier = super::rules::MULTIPLIER_MAX;
    let lines = vec![line(0, u64::MAX / 32); 32];
    assert!(price(&extreme, &lines, 1, at, 0, used).is_ok());
}

#[test]
fn rule_sets_out_of_bounds_are_refused_naming_the_item() {
    type Edit = fn(&mut RuleSet);
    let cases: [(Edit, RuleItem, &str); 16] = [
        (|r| r.base.points = 0, RuleItem::Base, "points must be"),
        (|r| r.base.per_minor_units = 0, RuleItem::Base, "minor units"),
        (|r| r.minimum_spend = u64::MAX, RuleItem::MinimumSpend, "above"),
        (|r| r.categories[0].id = 0, RuleItem::Category(0), "id 0"),
        (|r| r.categories[1].id = 1, RuleItem::Category(1), "listed twice"),
        (|r| r.categories.swap(0, 2), RuleItem::Category(1), "increasing id"),
        (|r| r.categories[0].multiplier = Ratio(9_999), RuleItem::Category(0), "multiplier"),
        (
            |r| r.categories[2].cashback = Some(Cashback { percent: Ratio(10_001), flat: 0 }),
            RuleItem::Category(2),
            "above 100",
        ),
        (|r| r.tiers[0].threshold = 1, RuleItem::Tier(0), "not 0"),
        (|r| r.tiers[1].threshold = 0, RuleItem::Tier(1), "increase"),
        (|r| r.tiers[1].name = "member".into(), RuleItem::Tier(1), "twice"),
        (|r| r.tier_window_months = 0, RuleItem::TierWindow, "months"),
        (|r| r.promotions[1].ends_at = r.promotions[1].starts_at, RuleItem::Promotion(1), "ends"),
        (
            |r| r.promotions[0].scope = PromotionScope::Categories(vec![2]),
            RuleItem::Promotion(0),
            "excluded",
        ),
        (
            |r| r.promotions[0].scope = PromotionScope::Categories(vec![4]),
            RuleItem::Promotion(0),
            "unknown category 4",
        ),
        (|r| r.caps.daily = Some(0), RuleItem::Caps, "daily cap 0"),
    ];
    for (edit, item, reason) in cases {
        let mut rules = rules();
        edit(&mut rules);
        let error = rules.validate().expect_err(reason);
        assert_eq!(error.item, item, "{error}");
        assert!(error.reason.contains(reason), "{error} should say {reason:?}");
    }
    let mut rules = rules();
    rules.expiry.bonus_months = 121;
    assert_eq!(rules.validate().unwrap_err().item, RuleItem::Expiry);
    let mut rules = super::rules::RuleSet::flat(1, 1);
    rules.tiers.clear();
    assert_eq!(rules.validate().unwrap_err().item, RuleItem::Tier(0));
    let mut rules = RuleSet::flat(1, 1);
    rules.tiers[0].name = " padded".into();
    assert!(rules.validate().unwrap_err().reason.contains("surrounding spaces"));
}

const FILE: &str = r#"tier_window_months = 6

[earning]
points = 3
per_minor_units = 200

[[tier]]
name = "base"
threshold = 0

[[tier]]
name = "plus"
threshold = 1000
multiplier = "1.1"

[[category]]
id = 1
name = "one"
multiplier = "1.5"

[[promotion]]
name = "double-one"
starts_at = 1970-01-11T00:00:00Z
ends_at = 1970-01-12T00:00:00Z
multiplier = "2"
categories = [1]
"#;

#[test]
fn a_rule_file_reads_into_the_rule_set_it_describes() {
    let file = parse(FILE).expect("valid");
    assert_eq!(file.effective_at, None);
    let rules = file.rules;
    assert_eq!(
        (rules.base.points, rules.base.per_minor_units, rules.tier_window_months),
        (3, 200, 6)
    );
    assert_eq!(rules.tiers[1].multiplier, Ratio(11_000));
    assert_eq!(rules.tiers[0].multiplier, Ratio::ONE, "multiplier defaults to 1");
    assert_eq!(rules.promotions[0].starts_at, Timestamp(10 * DAY));
    assert_eq!(rules.promotions[0].scope, PromotionScope::Categories(vec![1]));
    assert_eq!(rules.expiry, super::rules::Expiry::default());
    assert_eq!(parse_timestamp("1970-01-02T01:00:00+01:00"), Ok(Timestamp(DAY)));
    assert_eq!(parse_timestamp("1970-01-01T00:00:00.000000001Z"), Ok(Timestamp(1)));
    assert!(parse_timestamp("1969-12-31T23:59:59Z").is_err());
    assert!(parse_timestamp("2026-11-27T00:00:00").unwrap_err().contains("offset"));
    assert!(parse_timestamp("2026-11-27").is_err());
    let scheduled = parse(&format!("effective_at = 1970-01-02T00:00:00Z\n{FILE}")).unwrap();
    assert_eq!(scheduled.effective_at, Some(Timestamp(DAY)));
}

#[test]
fn bad_rule_files_are_refused_with_the_line_and_the_reason() {
    let cases: [(&str, &str, usize, &str); 10] = [
        ("multiplier = \"1.5\"", "multiplier = 1.5", 19, "quoted decimal"),
        ("multiplier = \"1.5\"", "multiplier = \"1.55555\"", 19, "at most 4 digits"),
        ("multiplier = \"1.5\"", "multiplier = \"0.5\"", 16, "multiplier 0.5 must be from 1"),
        (
            "ends_at = 1970-01-12T00:00:00Z",
            "ends_at = 1970-01-10T00:00:00Z",
            21,
            "it ends 1970-01-10T00:00:00Z, before it starts 1970-01-11T00:00:00Z",
        ),
        ("categories = [1]", "categories = [7]", 21, "unknown category 7"),
        ("threshold = 1000", "threshold = -5", 13, "invalid value"),
        (
            "per_minor_units = 200",
            "per_minor_units = 200\nsurprise = 1",
            6,
            "unknown field `surprise`",
        ),
        ("tier_window_months = 6", "tier_window_months = 0", 1, "tier_window_months"),
        ("starts_at = 1970-01-11T00:00:00Z", "starts_at = 1970-01-11T00:00:00", 23, "offset"),
        ("categories = [1]", "categories = [1]\nstores = [4]", 21, "not both"),
    ];
    for (from, to, line, reason) in cases {
        let text = FILE.replacen(from, to, 1);
        assert_ne!(text, FILE, "{from:?} is in the file");
        let error = parse(&text).expect_err(to);
        assert!(error.message.contains(reason), "{to:?}: {error}");
        assert_eq!(error.line, line, "{to:?}: {error}");
    }
    assert!(parse("[earning]\npoints = 1\n").unwrap_err().message.contains("per_minor_units"));
    assert_eq!(parse("").unwrap_err().line, 1);
    let huge = format!("{FILE}#{}", "x".repeat(super::rules_file::RULES_FILE_BYTES_MAX));
    assert_eq!(parse(&huge).unwrap_err().line, 0);
}

#[test]
fn the_purchase_settings_read_from_their_table_and_bad_ones_name_it() {
    use super::rules::{PendingPoints, PointValue, PurchaseSettings};
    assert_eq!(parse(FILE).unwrap().rules.purchases, PurchaseSettings::default());
    let with = |table: &str| format!("{FILE}\n[purchases]\n{table}\n");
    let held = parse(&with(
        "refund_days = 30\npending_points = \"held\"\npending_hold_days = 5\n\
         point_value_minor_units = 1\npoint_value_points = 2",
    ))
    .unwrap();
    assert_eq!(
        held.rules.purchases,
        PurchaseSettings {
            refund_days: 30,
            pending: PendingPoints::Held { days: 5 },
            point_value: PointValue { minor_units: 1, points: 2 },
        }
    );
    let purchases_line = with("").lines().count() - 1;
    for (table, reason) in [
        ("refund_days = 0", "refund_days 0 must be 1..=3650"),
        ("pending_points = \"held\"", "needs pending_hold_days"),
        ("pending_points = \"later\"", "\"available\" or \"held\""),
        ("pending_hold_days = 3", "needs pending_points"),
        ("pending_points = \"available\"\npending_hold_days = 3", "only for"),
        ("pending_points = \"held\"\npending_hold_days = 366", "must be 1..=365"),
        ("point_value_points = 0", "both must be"),
    ] {
        let error = parse(&with(table)).expect_err(table);
        assert!(error.message.contains(reason), "{table:?}: {error}");
        assert!(error.line >= purchases_line, "{table:?}: {error}");
    }
}

fn any_rules() -> impl Strategy<Value = RuleSet> {
    (
        (1_u32..=1000, 1_u64..=10_000, 0_u64..=5_000),
        proptest::collection::vec(
            (1_u16..=8, 10_000_u32..=40_000, any::<bool>(), 0_u32..=2_000, 0_u64..=50),
            0..=4,
        ),
        proptest::collection::vec(
            (
                0_u64..=5,
                1_u64..=5,
                prop_oneof![Just(0_u16), 1_u16..=8],
                any::<bool>(),
                10_000_u32..=40_000,
                1_u64..=500,
            ),
            0..=3,
        ),
        (
            proptest::option::of(1_u64..=2_000),
            proptest::option::of(1_u64..=5_000),
            10_000_u32..=30_000,
        ),
    )
        .prop_map(
            |(
                (points, per, minimum),
                categories,
                promotions,
                (daily, monthly, tier_multiplier),
            )| {
                let mut rules = RuleSet::flat(points, per);
                rules.minimum_spend = minimum;
                let mut seen = Vec::new();
                for (id, multiplier, excluded, percent, flat) in categories {
                    if seen.contains(&id) {
                        continue;
                    }
                    seen.push(id);
                    rules.categories.push(CategoryRule {
                        id,
                        name: format!("c{id}"),
                        multiplier: Ratio(multiplier),
                        excluded,
                        cashback: Some(Cashback { percent: Ratio(percent), flat }),
                    });
                }
                rules.categories.sort_by_key(|category| category.id);
                for (index, (start, length, category, bonus, multiplier, points)) in
                    promotions.into_iter().enumerate()
                {
                    let scope = match rules.category(category) {
                        Some(rule) if !rule.excluded => PromotionScope::Categories(vec![category]),
                        _ => PromotionScope::All,
                    };
                    rules.promotions.push(Promotion {
                        name: format!("p{index}"),
                        starts_at: Timestamp(start * DAY),
                        ends_at: Timestamp((start + length) * DAY),
                        scope,
                        effect: if bonus {
                            PromotionEffect::Bonus(points)
                        } else {
                            PromotionEffect::Multiplier(Ratio(multiplier))
                        },
                    });
                }
                rules.tiers.push(TierRule {
                    name: "up".into(),
                    threshold: 100,
                    multiplier: Ratio(tier_multiplier),
                });
                rules.caps = Caps { daily, monthly };
                rules
            },
        )
}

fn any_lines() -> impl Strategy<Value = Vec<Line>> {
    proptest::collection::vec(
        (0_u16..=9, 1_u64..=1_000_000, proptest::bool::weighted(0.1))
            .prop_map(|(category, amount, excluded)| Line { category, amount, excluded }),
        1..=32,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// For any valid rule set and basket: the components add up, the cut never exceeds them,
    /// caps hold, and the totals never exceed the exact rational value of the components.
    #[test]
    fn pricing_keeps_its_sums(rules in any_rules(), lines in any_lines(), day in 0_u64..=10, tier in 0_u8..=2, used in (0_u64..=3_000, 0_u64..=6_000), store in 0_u32..=3) {
        prop_assume!(rules.validate().is_ok());
        let used = CapsUsed { day: used.0, month: used.0.max(used.1) };
        let priced = price(&rules, &lines, store, Timestamp(day * DAY + 1), tier, used).unwrap();
        let components = priced.base + priced.category + priced.tier_points + priced.promotion_points();
        prop_assert_eq!(priced.earned + priced.bonus + priced.cap_cut, components);
        prop_assert!(priced.bonus <= priced.promotion_points());
        if let Some(daily) = rules.caps.daily {
            prop_assert!(priced.points() <= daily.saturating_sub(used.day));
        }
        if let Some(monthly) = rules.caps.monthly {
            prop_assert!(priced.points() <= monthly.saturating_sub(used.month));
        }
        let eligible: u64 = lines.iter().filter(|line| !line.excluded && !rules.category(line.category).is_some_and(|c| c.excluded)).map(|line| line.amount).sum();
        prop_assert_eq!(priced.eligible_spend, eligible);
        if eligible < rules.minimum_spend {
            prop_assert_eq!((priced.points(), priced.cashback, priced.cap_cut), (0, 0, 0));
        } else {
            prop_assert_eq!(u128::from(priced.base), u128::from(eligible) * u128::from(rules.base.points) / u128::from(rules.base.per_minor_units));
        }
        // Pricing is a function: the same inputs price the same.
        prop_assert_eq!(price(&rules, &lines, store, Timestamp(day * DAY + 1), tier, used).unwrap(), priced);
    }
}
