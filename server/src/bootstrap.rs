//! The definitions every ledgerd data directory starts with, and its loyalty rules. Defining
//! them is idempotent, so this runs at every start and changes nothing after the first.
//!
//! | address | asset | flags | role |
//! |---|---|---|---|
//! | `customer:<id>:points` | PTS | no overdraft | a member's points |
//! | `house:issuance` | PTS | – | debited when points are earned |
//! | `house:redemption` | PTS | – | credited when points are spent |
//! | `house:expiry` | PTS | – | credited when points expire (breakage) |
//! | `house:adjustment` | PTS | – | operator corrections |
//! | `customer:<id>:cashback` | CASHBACK (scale 2) | no overdraft | a member's cashback |
//! | `house:cashback` | CASHBACK | – | debited when cashback is earned |
//! | `customer:<id>:clawback` | PTS | – (may go below zero) | points a refund could not take back: owed by the member |
//! | `customer:<id>:cashback_clawback` | CASHBACK | – (may go below zero) | cashback owed back |
//!
//! The loyalty programme posts to `points`, `issuance`, `expiry`, the cashback pair and the
//! clawback classes. Its rules
//! come from `--rules FILE` (a new version when the file differs from the version in force),
//! or, for a data directory with no rules yet, from `[pos] earn_points` and
//! `earn_per_minor_units`: a flat rate, nothing else.

use anyhow::Context;
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::programme::ProgrammeAccounts;
use ledger_engine::loyalty::rules_file::RulesFile;
use ledger_engine::{AccountFlags, DefineError, Engine, Namespace};

use crate::config::PosConfig;

/// What the defaults amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defined {
    /// Assets defined (new or existing).
    pub assets: usize,
    /// Classes defined (new or existing).
    pub classes: usize,
    /// The classes the loyalty programme posts to.
    pub accounts: ProgrammeAccounts,
}

/// Defines (or finds) the default assets and classes.
pub fn define_defaults(engine: &Engine) -> Result<Defined, DefineError> {
    let points = engine.define_asset("PTS", 0)?;
    let customer =
        engine.define_class(Namespace::Customer, "points", points, AccountFlags::NO_OVERDRAFT)?;
    let mut house = Vec::new();
    for name in ["issuance", "redemption", "expiry", "adjustment"] {
        house.push(engine.define_class(Namespace::House, name, points, AccountFlags::NONE)?);
    }
    let cash = engine.define_asset("CASHBACK", 2)?;
    let cashback =
        engine.define_class(Namespace::Customer, "cashback", cash, AccountFlags::NO_OVERDRAFT)?;
    let funding = engine.define_class(Namespace::House, "cashback", cash, AccountFlags::NONE)?;
    let clawback =
        engine.define_class(Namespace::Customer, "clawback", points, AccountFlags::NONE)?;
    let cashback_clawback =
        engine.define_class(Namespace::Customer, "cashback_clawback", cash, AccountFlags::NONE)?;
    let registry = engine.registry();
    Ok(Defined {
        assets: registry.assets().len(),
        classes: registry.classes().len(),
        accounts: ProgrammeAccounts {
            points: customer,
            issuance: house[0],
            breakage: house[2],
            cashback: Some((cashback, funding)),
            clawback: Some(clawback),
            cashback_clawback: Some(cashback_clawback),
        },
    })
}

/// What `record_rules` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulesRecorded {
    /// The version the file (or the default rate) is.
    pub version: u32,
    /// Whether it was recorded now (false: it was the version in force, or already scheduled).
    pub new: bool,
}

/// Records the programme's rules: those of `file` if given, else, when the data directory has
/// no rule version yet, a flat `earn_points` per `earn_per_minor_units`.
pub fn record_rules(
    engine: &Engine,
    accounts: ProgrammeAccounts,
    file: Option<&RulesFile>,
    pos: &PosConfig,
) -> anyhow::Result<Option<RulesRecorded>> {
    let (rules, effective_at) = match file {
        Some(file) => (file.rules.clone(), file.effective_at),
        None if engine.programme().versions().is_empty() => {
            let points = u32::try_from(pos.earn_points)
                .ok()
                .filter(|points| *points <= ledger_engine::loyalty::rules::BASE_POINTS_MAX)
                .context("pos.earn_points is above 1000000, the largest base rate")?;
            (RuleSet::flat(points, pos.earn_per_minor_units), None)
        }
        None => return Ok(None),
    };
    let (version, new) = engine
        .define_rules(rules, accounts, effective_at)
        .context("the loyalty rules are refused")?;
    Ok(Some(RulesRecorded { version, new }))
}
