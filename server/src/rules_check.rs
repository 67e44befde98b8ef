//! `ledgerd rules check FILE`: a rule file checked as the server would check it, without a
//! server or a data directory, and a sample purchase priced by it. Everything it computes comes
//! from the engine's `loyalty` modules: this only reads arguments and prints.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ledger_engine::Timestamp;
use ledger_engine::loyalty::calendar::rfc3339;
use ledger_engine::loyalty::pricing::{CapsUsed, Line, price};
use ledger_engine::loyalty::rules::{PromotionEffect, PromotionScope};
use ledger_engine::loyalty::rules_file::{self, RulesFile};

/// `ledgerd rules check` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The rule file.
    pub file: PathBuf,
    /// A sample purchase line, `CATEGORY:AMOUNT` in minor units, `x` at the end for a line the
    /// till excludes (`20:2500`, `40:1000x`); repeat for a basket of up to 32 lines.
    #[arg(long = "line", value_name = "CATEGORY:AMOUNT[x]")]
    pub lines: Vec<String>,
    /// When the sample purchase is made (RFC 3339 with its offset) [default: the file's
    /// `effective_at`, or now].
    #[arg(long)]
    pub at: Option<String>,
    /// The store of the sample purchase [default: 0, none].
    #[arg(long, default_value_t = 0)]
    pub store: u32,
    /// The tier of the sample customer, by name [default: the first tier].
    #[arg(long)]
    pub tier: Option<String>,
    /// Points the sample customer already earned that day and month, `DAY/MONTH`, for caps
    /// [default: 0/0].
    #[arg(long, value_name = "DAY/MONTH")]
    pub used: Option<String>,
}

/// Runs the check: `Ok(true)` when the file is valid, `Ok(false)` when it is refused (the
/// reason is printed on stderr), `Err` for bad arguments.
pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    let file = match rules_file::read(&args.file) {
        Ok(file) => file,
        Err(error) => {
            match error.line {
                0 => eprintln!("{}: {}", args.file.display(), error.message),
                line => eprintln!("{}:{line}: {}", args.file.display(), error.message),
            }
            return Ok(false);
        }
    };
    // The sample is worked out first: bad sample arguments print nothing but their error.
    let priced = if args.lines.is_empty() { None } else { Some(sample(args, &file)?) };
    print!("{}", summary(&args.file, &file));
    if let Some(priced) = priced {
        print!("{priced}");
    }
    Ok(true)
}

fn summary(path: &std::path::Path, file: &RulesFile) -> String {
    let rules = &file.rules;
    let mut out = format!("{}: valid\n", path.display());
    let effective = file.effective_at.map_or_else(|| "at once".to_string(), rfc3339);
    out += &format!("effective: {effective}\n");
    out += &format!(
        "base: {} point(s) per {} minor units; minimum spend {}\n",
        rules.base.points, rules.base.per_minor_units, rules.minimum_spend
    );
    for category in &rules.categories {
        let cashback = category.cashback.map_or(String::new(), |c| {
            format!(", cashback {}% + {}", c.percent.percent_text(), c.flat)
        });
        let excluded = if category.excluded { ", excluded" } else { "" };
        out += &format!(
            "category {} {}: ×{}{excluded}{cashback}\n",
            category.id, category.name, category.multiplier
        );
    }
    for tier in &rules.tiers {
        out +=
            &format!("tier {}: from {} points, ×{}\n", tier.name, tier.threshold, tier.multiplier);
    }
    out += &format!("tier window: {} months\n", rules.tier_window_months);
    for promotion in &rules.promotions {
        let effect = match promotion.effect {
            PromotionEffect::Multiplier(multiplier) => format!("×{multiplier}"),
            PromotionEffect::Bonus(points) => format!("+{points} points"),
        };
        let scope = match &promotion.scope {
            PromotionScope::All => "every line".to_string(),
            PromotionScope::Categories(ids) => format!("categories {ids:?}"),
            PromotionScope::Stores(stores) => format!("stores {stores:?}"),
        };
        out += &format!(
            "promotion {}: {effect} on {scope}, {} to {}\n",
            promotion.name,
            rfc3339(promotion.starts_at),
            rfc3339(promotion.ends_at)
        );
    }
    let cap = |cap: Option<u64>| cap.map_or_else(|| "none".to_string(), |cap| cap.to_string());
    out += &format!("caps: daily {}, monthly {}\n", cap(rules.caps.daily), cap(rules.caps.monthly));
    out += &format!(
        "cashback: {}% + {} per purchase\n",
        rules.cashback.percent.percent_text(),
        rules.cashback.flat
    );
    out += &format!(
        "lots live: earned {} months, bonus {}, transfer {}\n",
        rules.expiry.earned_months, rules.expiry.bonus_months, rules.expiry.transfer_months
    );
    out
}

fn parse_line(text: &str) -> anyhow::Result<Line> {
    let (category, amount) =
        text.split_once(':').with_context(|| format!("--line {text:?}: want CATEGORY:AMOUNT"))?;
    let excluded = amount.ends_with('x');
    let amount = amount.trim_end_matches('x');
    Ok(Line {
        category: category.parse().with_context(|| format!("--line {text:?}: category"))?,
        amount: amount.parse().with_context(|| format!("--line {text:?}: amount"))?,
        excluded,
    })
}

fn sample(args: &CheckArgs, file: &RulesFile) -> anyhow::Result<String> {
    let rules = &file.rules;
    let lines =
        args.lines.iter().map(|line| parse_line(line)).collect::<anyhow::Result<Vec<_>>>()?;
    let at = match &args.at {
        Some(text) => rules_file::parse_timestamp(text).map_err(anyhow::Error::msg)?,
        None => file.effective_at.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            Timestamp(now.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
        }),
    };
    let tier = match &args.tier {
        None => 0,
        Some(name) => match rules.tiers.iter().position(|tier| &tier.name == name) {
            Some(index) => u8::try_from(index).expect("at most 8 tiers"),
            None => bail!("--tier {name:?}: the file has no such tier"),
        },
    };
    let used = match &args.used {
        None => CapsUsed::default(),
        Some(text) => {
            let (day, month) =
                text.split_once('/').with_context(|| format!("--used {text:?}: want DAY/MONTH"))?;
            CapsUsed { day: day.parse()?, month: month.parse()? }
        }
    };
    let priced = price(rules, &lines, args.store, at, tier, used)
        .map_err(|error| anyhow::anyhow!("the sample purchase is refused: {error}"))?;
    let mut out = format!(
        "\nsample purchase at {}, store {}, tier {}: eligible spend {}{}\n",
        rfc3339(at),
        args.store,
        rules.tiers[usize::from(tier)].name,
        priced.eligible_spend,
        if priced.below_minimum { " (below the minimum: earns nothing)" } else { "" }
    );
    out += &format!("  base        {:>12}\n", priced.base);
    out += &format!("  category    {:>12}\n", priced.category);
    out += &format!("  tier        {:>12}\n", priced.tier_points);
    for promotion in &priced.promotions {
        let name = &rules.promotions[usize::from(promotion.promotion)].name;
        out += &format!("  promotion   {:>12}  {name}\n", promotion.points);
    }
    out += &format!("  cap cut     {:>12}\n", priced.cap_cut);
    out += &format!(
        "  earned      {:>12}  (lives {} months)\n",
        priced.earned, rules.expiry.earned_months
    );
    out += &format!(
        "  bonus       {:>12}  (lives {} months)\n",
        priced.bonus, rules.expiry.bonus_months
    );
    out += &format!("  points      {:>12}\n", priced.points());
    out += &format!("  cashback    {:>12}\n", priced.cashback);
    Ok(out)
}
