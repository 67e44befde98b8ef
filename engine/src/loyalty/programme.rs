//! The programme's rule versions as every shard holds them: which version prices a purchase at
//! a given instant, and the checks a new version passes before it is recorded.
//! Docs: docs/loyalty.md, "Rule versions".

use std::sync::Arc;

use super::rules::RuleSet;
use crate::ids::Timestamp;
use crate::ledger::account::{AccountFlags, ClassId, Namespace};
use crate::ledger::registry::Registry;
use crate::reject::RejectCode;

/// Why a rule version is refused: the code a shard answers, and the reason for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code})")]
pub struct VersionRefused {
    /// The shard's reject code.
    pub code: RejectCode,
    /// What is wrong.
    pub reason: String,
}

fn refuse(code: RejectCode, reason: impl Into<String>) -> VersionRefused {
    VersionRefused { code, reason: reason.into() }
}

/// Rule versions a data directory can hold: one a week for twenty years.
pub const RULE_VERSIONS_MAX: usize = 1_024;

/// The account classes the programme posts to. They are named by every version; the points
/// class cannot change once a version is recorded (lots live on its accounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProgrammeAccounts {
    /// Customer class of points (`customer:<id>:points`), no overdraft.
    pub points: ClassId,
    /// House class debited when points are earned (`house:issuance`).
    pub issuance: ClassId,
    /// House class credited when points expire (`house:expiry`).
    pub breakage: ClassId,
    /// Customer class of cashback and the house class that funds it, when the programme pays
    /// cashback; `None` otherwise.
    pub cashback: Option<(ClassId, ClassId)>,
    /// Customer class of points owed back (`customer:<id>:clawback`, overdraft allowed): what a
    /// refund could not take from the customer's lots. `None` before format 5; a refund
    /// short of points is then refused.
    pub clawback: Option<ClassId>,
    /// Customer class of cashback owed back, in the cashback asset (overdraft allowed).
    pub cashback_clawback: Option<ClassId>,
}

/// A recorded rule version, as one shard holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesVersion {
    /// 1, 2, 3… in the order versions were recorded.
    pub version: u32,
    /// The effective time the operator asked for (0: at once).
    pub requested_at: Timestamp,
    /// When it takes effect on this shard: the requested time, or the timestamp of the record
    /// that defined it if that is later.
    pub effective_at: Timestamp,
    /// The accounts it posts to.
    pub accounts: ProgrammeAccounts,
    /// The rules.
    pub rules: Arc<RuleSet>,
}

/// Every rule version, in version order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Programme {
    versions: Vec<RulesVersion>,
}

impl Programme {
    /// Every version, in version order.
    pub fn versions(&self) -> &[RulesVersion] {
        &self.versions
    }

    /// Version `version`.
    pub fn version(&self, version: u32) -> Option<&RulesVersion> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.versions.get(index)
    }

    /// The number the next version gets.
    pub fn next_version(&self) -> u32 {
        u32::try_from(self.versions.len() + 1).expect("at most RULE_VERSIONS_MAX")
    }

    /// The version in force at `at`: of those in effect by then, the one that took effect last
    /// (and of two at the same instant, the later version).
    pub fn in_force(&self, at: Timestamp) -> Option<&RulesVersion> {
        self.versions
            .iter()
            .filter(|version| version.effective_at <= at)
            .max_by_key(|version| (version.effective_at, version.version))
    }

    /// The points class, once a version names it.
    pub fn points_class(&self) -> Option<ClassId> {
        self.versions.first().map(|version| version.accounts.points)
    }

    /// Checks a new version before it is recorded: the next number, an effective time no other
    /// version asked for, and accounts of the right kinds. `rules` are valid already (decoding
    /// and `RuleSet::validate` see to it).
    pub fn check_define(
        &self,
        version: u32,
        requested_at: Timestamp,
        accounts: &ProgrammeAccounts,
        rules: &RuleSet,
        registry: &Registry,
    ) -> Result<(), VersionRefused> {
        if self.versions.len() >= RULE_VERSIONS_MAX {
            return Err(refuse(
                RejectCode::DefinitionConflict,
                format!("the programme holds {RULE_VERSIONS_MAX} versions already"),
            ));
        }
        if version != self.next_version() {
            return Err(refuse(
                RejectCode::DefinitionConflict,
                format!("version {version} is not the next one, {}", self.next_version()),
            ));
        }
        if requested_at != Timestamp(0)
            && let Some(other) =
                self.versions.iter().find(|other| other.requested_at == requested_at)
        {
            return Err(refuse(
                RejectCode::DefinitionConflict,
                format!("version {} already takes effect at that time", other.version),
            ));
        }
        if let Some(points) = self.points_class().filter(|points| *points != accounts.points) {
            return Err(refuse(
                RejectCode::DefinitionConflict,
                format!(
                    "the points class is class {} since version 1; a version cannot change it",
                    points.0
                ),
            ));
        }
        check_accounts(accounts, rules, registry)
    }

    /// Records a version checked by `check_define`, defined by a record stamped `now`.
    pub fn define(
        &mut self,
        version: u32,
        requested_at: Timestamp,
        accounts: ProgrammeAccounts,
        rules: Arc<RuleSet>,
        now: Timestamp,
    ) {
        assert_eq!(version, self.next_version(), "checked by check_define");
        let effective_at = requested_at.max(now);
        self.versions.push(RulesVersion { version, requested_at, effective_at, accounts, rules });
    }

    /// Adds a version as a snapshot holds it.
    pub fn restore(&mut self, version: RulesVersion) -> Result<(), &'static str> {
        if version.version != self.next_version() || self.versions.len() >= RULE_VERSIONS_MAX {
            return Err("rule versions out of order");
        }
        if version.effective_at < version.requested_at {
            return Err("rule version effective before its requested time");
        }
        self.versions.push(version);
        Ok(())
    }
}

/// The points class is a customer class with no overdraft; issuance and breakage are house
/// classes of the points asset; cashback, when paid, is a customer class of another asset
/// funded by a house class of that asset.
fn check_accounts(
    accounts: &ProgrammeAccounts,
    rules: &RuleSet,
    registry: &Registry,
) -> Result<(), VersionRefused> {
    let class = |id: ClassId, namespace: Namespace, role: &str| {
        registry.class(id).filter(|class| class.namespace == namespace).ok_or_else(|| {
            refuse(
                RejectCode::ClassUnknown,
                format!("the {role} class {} is not a defined {} class", id.0, namespace.prefix()),
            )
        })
    };
    let points = class(accounts.points, Namespace::Customer, "points")?;
    if !points.flags.contains(AccountFlags::NO_OVERDRAFT) {
        return Err(refuse(
            RejectCode::DefinitionConflict,
            format!("the points class {} allows overdrafts", points.name),
        ));
    }
    for (house, role) in [(accounts.issuance, "issuance"), (accounts.breakage, "breakage")] {
        if class(house, Namespace::House, role)?.asset != points.asset {
            return Err(refuse(
                RejectCode::AssetMismatch,
                format!("the {role} class holds another asset than the points class"),
            ));
        }
    }
    let owed = |id: Option<ClassId>, asset, role: &str| -> Result<(), VersionRefused> {
        let Some(id) = id else { return Ok(()) };
        let owed = class(id, Namespace::Customer, role)?;
        if owed.asset != asset {
            return Err(refuse(
                RejectCode::AssetMismatch,
                format!("the {role} class holds another asset than what it takes back"),
            ));
        }
        if owed.flags.contains(AccountFlags::NO_OVERDRAFT) {
            return Err(refuse(
                RejectCode::DefinitionConflict,
                format!("the {role} class {} must allow a balance below zero", owed.name),
            ));
        }
        Ok(())
    };
    owed(accounts.clawback, points.asset, "clawback")?;
    if accounts.cashback.is_some_and(|(customer, _)| accounts.cashback_clawback == Some(customer)) {
        return Err(refuse(
            RejectCode::DefinitionConflict,
            "the cashback clawback class is the cashback class itself",
        ));
    }
    match (accounts.cashback, accounts.cashback_clawback) {
        (None, Some(_)) => {
            return Err(refuse(
                RejectCode::DefinitionConflict,
                "a cashback clawback class without cashback accounts",
            ));
        }
        (Some((customer, _)), owed_class) => {
            let asset = registry.class(customer).map(|class| class.asset);
            if let Some(asset) = asset {
                owed(owed_class, asset, "cashback clawback")?;
            }
        }
        (None, None) => {}
    }
    let pays_cashback = !rules.cashback.is_none()
        || rules.categories.iter().any(|category| category.cashback.is_some_and(|c| !c.is_none()));
    match accounts.cashback {
        None if pays_cashback => Err(refuse(
            RejectCode::DefinitionConflict,
            "the rules pay cashback but the programme has no cashback accounts",
        )),
        None => Ok(()),
        Some((customer, funding)) => {
            let customer = class(customer, Namespace::Customer, "cashback")?;
            let funding = class(funding, Namespace::House, "cashback funding")?;
            if customer.asset != funding.asset || customer.asset == points.asset {
                return Err(refuse(
                    RejectCode::AssetMismatch,
                    "cashback and its funding must hold one asset, not the points asset",
                ));
            }
            Ok(())
        }
    }
}
