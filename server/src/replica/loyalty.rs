//! The loyalty programme's rows of a chunk (docs/reporting.md, "Tables"): purchases and their
//! transitions, tier changes and rule and rate versions from the records; members and lots
//! from the shard's state once the chunk's last record applied ("as of the watermark"), for
//! every member a record of the chunk changed. Pure: followed records and the ledger in, rows
//! out.

use std::collections::{HashMap, HashSet};

use ledger_engine::Timestamp;
use ledger_engine::follow::{Followed, Transition};
use ledger_engine::ledger::Ledger;
use ledger_engine::ledger::MoveEffect;
use ledger_engine::ledger::account::ClassId;
use ledger_engine::ledger::record::Body;
use ledger_engine::ledger::registry::Registry;
use ledger_engine::loyalty::calendar::rfc3339;
use ledger_engine::loyalty::lifecycle::LifecycleState;
use ledger_engine::loyalty::rules::PendingPoints;
use serde_json::json;

use super::rows::address;

/// A `purchases` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseRow {
    /// Its id.
    pub tx_id: u64,
    /// Its record's time, shard and LSN.
    pub time: Timestamp,
    /// See `time`.
    pub lsn: u64,
    /// The member.
    pub customer: u64,
    /// The terminal, store and receipt.
    pub terminal: u32,
    /// See `terminal`.
    pub store: u32,
    /// See `terminal`.
    pub receipt: String,
    /// The basket's total.
    pub spend: u64,
    /// Its lines.
    pub lines: u32,
    /// The rule version that priced it.
    pub rules_version: u32,
    /// What it gave.
    pub earned: u64,
    /// See `earned`.
    pub bonus: u64,
    /// See `earned`.
    pub cashback: u64,
    /// The member's tier before and after.
    pub tier_before: u8,
    /// See `tier_before`.
    pub tier_after: u8,
    /// Its points were credited pending.
    pub points_held: bool,
    /// Its state as of the chunk's end.
    pub state: &'static str,
    /// Refunded of its basis, as of the chunk's end.
    pub refunded: u64,
    /// The record that set `state`.
    pub state_time: Timestamp,
    /// See `state_time`.
    pub state_lsn: u64,
}

/// A purchase's state set by a transition, for a purchase an earlier chunk wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateUpdate {
    /// The purchase.
    pub tx_id: u64,
    /// Its state.
    pub state: &'static str,
    /// Refunded of its basis.
    pub refunded: u64,
    /// The transition's time and LSN.
    pub time: Timestamp,
    /// See `time`.
    pub lsn: u64,
}

/// A `purchase_transitions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRow {
    /// The record's time and LSN.
    pub time: Timestamp,
    /// See `time`.
    pub lsn: u64,
    /// The transition, as the engine derives it from the record.
    pub change: Transition,
}

/// A `tier_changes` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRow {
    /// The record's time, LSN, id and kind.
    pub time: Timestamp,
    /// See `time`.
    pub lsn: u64,
    /// See `time`.
    pub tx_id: Option<u64>,
    /// See `time`.
    pub record_kind: &'static str,
    /// The member.
    pub customer: u64,
    /// The tiers.
    pub before: u8,
    /// See `before`.
    pub after: u8,
}

/// A `rule_versions` row.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVersionRow {
    /// The version.
    pub version: u32,
    /// The effective time asked for.
    pub effective_at: Option<Timestamp>,
    /// This shard's record time.
    pub recorded_at: Timestamp,
    /// Class names and the points' asset.
    pub points_class: String,
    /// See `points_class`.
    pub points_asset: String,
    /// See `points_class`.
    pub issuance_class: String,
    /// See `points_class`.
    pub breakage_class: String,
    /// See `points_class`.
    pub cashback_class: Option<String>,
    /// See `points_class`.
    pub cashback_funding_class: Option<String>,
    /// See `points_class`.
    pub clawback_class: Option<String>,
    /// See `points_class`.
    pub cashback_clawback_class: Option<String>,
    /// The point's value.
    pub point_value_minor_units: u64,
    /// See `point_value_minor_units`.
    pub point_value_points: u64,
    /// Lot lives, tier window, refund window, pending hold.
    pub earned_months: u8,
    /// See `earned_months`.
    pub bonus_months: u8,
    /// See `earned_months`.
    pub transfer_months: u8,
    /// See `earned_months`.
    pub tier_window_months: u8,
    /// See `earned_months`.
    pub refund_days: u16,
    /// See `earned_months`.
    pub pending_hold_days: Option<u16>,
    /// `[{"tier", "name", "threshold"}]`.
    pub tiers: serde_json::Value,
    /// `[{"promotion", "name", "starts_at", "ends_at"}]`.
    pub promotions: serde_json::Value,
}

/// An `exchange_rates` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRow {
    /// The version.
    pub version: u32,
    /// The effective time asked for.
    pub effective_at: Option<Timestamp>,
    /// This shard's record time.
    pub recorded_at: Timestamp,
    /// Asset codes.
    pub from_asset: String,
    /// See `from_asset`.
    pub to_asset: String,
    /// See `from_asset`.
    pub money_asset: String,
    /// The ratio.
    pub numerator: u64,
    /// See `numerator`.
    pub denominator: u64,
    /// `[customer class, fund, money fund]` of each side.
    pub from_accounts: [String; 3],
    /// See `from_accounts`.
    pub to_accounts: [String; 3],
    /// `(minor units, points)` of each side's point value.
    pub from_value: (u64, u64),
    /// See `from_value`.
    pub to_value: (u64, u64),
}

/// A `members` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The member.
    pub customer: u64,
    /// Their recorded tier.
    pub tier: u8,
    /// Points in their lots.
    pub points_in_lots: u64,
    /// Points parked from their lots by open holds.
    pub points_held: u64,
    /// Their lots.
    pub lots: u32,
    /// Their first purchase in this chunk, if any (the database keeps the earliest).
    pub first_purchase: Option<Timestamp>,
    /// The LSN the row is as of.
    pub lsn: u64,
}

/// A `lots` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotRow {
    /// The member.
    pub customer: u64,
    /// `earned`, `bonus`, `transfer`.
    pub kind: &'static str,
    /// Days since 1970-01-01 of the midnight it expires at.
    pub expires_day: u32,
    /// The transaction that opened it.
    pub origin: u64,
    /// Credited into it.
    pub amount: u64,
    /// Left.
    pub remaining: u64,
}

/// The loyalty rows of one chunk.
#[derive(Debug, Clone, Default)]
pub struct LoyaltyRows {
    /// Purchases the chunk made, with their state as of its end.
    pub purchases: Vec<PurchaseRow>,
    /// States set for purchases of earlier chunks (the last per purchase), by id.
    pub updates: Vec<StateUpdate>,
    /// Transitions, in order.
    pub transitions: Vec<TransitionRow>,
    /// Tier changes, in order.
    pub tiers: Vec<TierRow>,
    /// Rule versions recorded.
    pub rule_versions: Vec<RuleVersionRow>,
    /// Rates recorded.
    pub rates: Vec<RateRow>,
    /// Every member the chunk changed, as of its end (`finish`).
    pub members: Vec<MemberRow>,
    /// Their open lots, as of its end.
    pub lots: Vec<LotRow>,
    /// Write every member of the shard, not only those changed, and drop the shard's other
    /// member and lot rows (a shard replicated before the loyalty tables existed).
    pub whole: bool,
    purchase_index: HashMap<u64, usize>,
    update_index: HashMap<u64, usize>,
    touched: HashSet<u64>,
    first_purchase: HashMap<u64, Timestamp>,
}

fn class_name(registry: &Registry, class: ClassId) -> String {
    registry.class(class).map_or_else(|| class.0.to_string(), |class| class.name.to_string())
}

impl LoyaltyRows {
    /// Adds what `followed` says of the programme.
    pub fn add(&mut self, followed: &Followed<'_>) {
        let record = followed.record;
        let (time, lsn) = (record.timestamp, record.lsn.0);
        let tx_id = record.body.tx_id().map(|id| id.0);
        self.touched.extend(followed.members.touched.iter().copied());
        for change in &followed.members.tiers {
            self.tiers.push(TierRow {
                time,
                lsn,
                tx_id,
                record_kind: record.body.kind().name(),
                customer: change.customer,
                before: change.before,
                after: change.after,
            });
        }
        if let Some(change) = followed.transition() {
            self.transition(TransitionRow { time, lsn, change });
        }
        match &record.body {
            Body::Purchase(purchase) => {
                let outcome = &purchase.outcome;
                let header = &purchase.header;
                let spend = purchase.lines.iter().map(|line| line.amount).sum();
                self.purchase_index.insert(header.id.0, self.purchases.len());
                self.purchases.push(PurchaseRow {
                    tx_id: header.id.0,
                    time,
                    lsn,
                    customer: purchase.customer,
                    terminal: header.terminal.0,
                    store: header.metadata.store,
                    receipt: header.metadata.receipt.as_str().to_string(),
                    spend,
                    lines: u32::try_from(purchase.lines.len()).unwrap_or(u32::MAX),
                    rules_version: outcome.rules_version,
                    earned: outcome.earned,
                    bonus: outcome.bonus,
                    cashback: outcome.cashback,
                    tier_before: outcome.tier_before,
                    tier_after: outcome.tier_after,
                    points_held: followed
                        .moved
                        .iter()
                        .any(|moved| moved.effect == MoveEffect::Pending),
                    state: LifecycleState::Pending.name(),
                    refunded: 0,
                    state_time: time,
                    state_lsn: lsn,
                });
                self.first_purchase.entry(purchase.customer).or_insert(time);
            }
            Body::RulesDefine(define) => {
                self.rule_versions.push(rule_version_row(followed.registry, define, time));
            }
            Body::RateDefine(define) => {
                let registry = followed.registry;
                let terms = &define.terms;
                let asset =
                    |id| registry.asset(id).map_or_else(String::new, |a| a.code.to_string());
                let side = |side: &ledger_engine::loyalty::exchange::ExchangeSide| {
                    [
                        class_name(registry, side.customer),
                        address(registry, side.fund),
                        address(registry, side.money),
                    ]
                };
                self.rates.push(RateRow {
                    version: define.version,
                    effective_at: (define.effective_at.0 != 0).then_some(define.effective_at),
                    recorded_at: time,
                    from_asset: asset(terms.from.asset),
                    to_asset: asset(terms.to.asset),
                    money_asset: asset(terms.money),
                    numerator: terms.numerator,
                    denominator: terms.denominator,
                    from_accounts: side(&terms.from),
                    to_accounts: side(&terms.to),
                    from_value: (terms.from.value.minor_units, terms.from.value.points),
                    to_value: (terms.to.value.minor_units, terms.to.value.points),
                });
            }
            _ => {}
        }
    }

    fn transition(&mut self, row: TransitionRow) {
        let (purchase, state, refunded, time, lsn) =
            (row.change.purchase, row.change.state_after, row.change.refunded, row.time, row.lsn);
        self.transitions.push(row);
        if let Some(&index) = self.purchase_index.get(&purchase) {
            let made = &mut self.purchases[index];
            (made.state, made.refunded, made.state_time, made.state_lsn) =
                (state, refunded, time, lsn);
            return;
        }
        let update = StateUpdate { tx_id: purchase, state, refunded, time, lsn };
        match self.update_index.get(&purchase) {
            Some(&index) => self.updates[index] = update,
            None => {
                self.update_index.insert(purchase, self.updates.len());
                self.updates.push(update);
            }
        }
    }

    /// Writes the members the chunk changed (every member, when `whole`) and their lots, as
    /// `ledger` holds them once the chunk's last record applied.
    pub fn finish(&mut self, ledger: &Ledger) {
        let members = ledger.members();
        let mut held: HashMap<u64, u64> = HashMap::new();
        for (_, parked) in members.parked() {
            if parked.in_balance {
                *held.entry(parked.customer).or_default() += parked.total();
            }
        }
        let mut customers: Vec<u64> = if self.whole {
            members.iter().map(|(customer, _)| *customer).collect()
        } else {
            self.touched.drain().collect()
        };
        customers.sort_unstable();
        let lsn = ledger.lsn().0;
        for customer in customers {
            let Some(member) = members.get(customer) else { continue };
            for lot in member.lots.iter() {
                self.lots.push(LotRow {
                    customer,
                    kind: lot.kind.name(),
                    expires_day: lot.expires_day,
                    origin: lot.origin.0,
                    amount: lot.amount,
                    remaining: lot.remaining,
                });
            }
            self.members.push(MemberRow {
                customer,
                tier: member.tier(),
                points_in_lots: u64::try_from(member.lots.total()).unwrap_or(u64::MAX),
                points_held: held.get(&customer).copied().unwrap_or(0),
                lots: u32::try_from(member.lots.len()).unwrap_or(u32::MAX),
                first_purchase: self.first_purchase.get(&customer).copied(),
                lsn,
            });
        }
    }
}

/// The row of a rule version.
fn rule_version_row(
    registry: &Registry,
    define: &ledger_engine::ledger::record::RulesDefine,
    time: Timestamp,
) -> RuleVersionRow {
    let accounts = &define.accounts;
    let rules = &define.rules;
    let points_asset = registry
        .class(accounts.points)
        .and_then(|class| registry.asset(class.asset))
        .map_or_else(String::new, |asset| asset.code.to_string());
    let tiers = rules
        .tiers
        .iter()
        .enumerate()
        .map(|(tier, rule)| json!({"tier": tier, "name": rule.name, "threshold": rule.threshold}))
        .collect();
    let promotions = rules
        .promotions
        .iter()
        .enumerate()
        .map(|(index, promotion)| {
            json!({
                "promotion": index,
                "name": promotion.name,
                "starts_at": rfc3339(promotion.starts_at),
                "ends_at": rfc3339(promotion.ends_at),
            })
        })
        .collect();
    let name = |class| class_name(registry, class);
    RuleVersionRow {
        version: define.version,
        effective_at: (define.effective_at.0 != 0).then_some(define.effective_at),
        recorded_at: time,
        points_class: name(accounts.points),
        points_asset,
        issuance_class: name(accounts.issuance),
        breakage_class: name(accounts.breakage),
        cashback_class: accounts.cashback.map(|(class, _)| name(class)),
        cashback_funding_class: accounts.cashback.map(|(_, funding)| name(funding)),
        clawback_class: accounts.clawback.map(name),
        cashback_clawback_class: accounts.cashback_clawback.map(name),
        point_value_minor_units: rules.purchases.point_value.minor_units,
        point_value_points: rules.purchases.point_value.points,
        earned_months: rules.expiry.earned_months,
        bonus_months: rules.expiry.bonus_months,
        transfer_months: rules.expiry.transfer_months,
        tier_window_months: rules.tier_window_months,
        refund_days: rules.purchases.refund_days,
        pending_hold_days: match rules.purchases.pending {
            PendingPoints::Available => None,
            PendingPoints::Held { days } => Some(days),
        },
        tiers: serde_json::Value::Array(tiers),
        promotions: serde_json::Value::Array(promotions),
    }
}
