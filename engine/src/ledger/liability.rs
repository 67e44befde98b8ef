//! Where the liability figures meet the ledger: every posting notes what it changes of the
//! customer classes' totals and, for the programme's points, which flow it is (issued,
//! redeemed, expired, refunded); a record's notes are kept when it commits and dropped when it
//! is refused. Docs: docs/loyalty.md, "Liability and breakage".

use super::account::{AccountId, ClassId, Namespace};
use super::{Ledger, Leg, LiabilityChange};
use crate::loyalty::liability::{Flow, Flows};

/// One shard's liability figures, as a query answers them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardLiability {
    /// Posted balance of every customer class with accounts on the shard, by class.
    pub classes: Vec<(ClassId, i128)>,
    /// Points issued, redeemed, expired and refunded per UTC day.
    pub flows: Flows,
    /// Points in lots by the month they expire in (`year × 12 + month − 1`).
    pub by_expiry_month: std::collections::BTreeMap<u32, u64>,
    /// Members per tier, as their last purchase or give-back recorded it.
    pub tiers: [u64; crate::loyalty::rules::TIERS_MAX],
}

impl ShardLiability {
    /// Adds another shard's figures (the engine sums every shard's).
    pub fn merge(&mut self, other: &ShardLiability) -> Result<(), crate::reject::RejectCode> {
        let overflow = crate::reject::RejectCode::Overflow;
        for (class, total) in &other.classes {
            match self.classes.iter_mut().find(|(known, _)| known == class) {
                Some((_, sum)) => *sum = sum.checked_add(*total).ok_or(overflow)?,
                None => self.classes.push((*class, *total)),
            }
        }
        self.classes.sort_unstable_by_key(|(class, _)| *class);
        self.flows.merge(&other.flows);
        for (month, points) in &other.by_expiry_month {
            let sum = self.by_expiry_month.entry(*month).or_default();
            *sum = sum.checked_add(*points).ok_or(overflow)?;
        }
        for (sum, count) in self.tiers.iter_mut().zip(other.tiers) {
            *sum += count;
        }
        Ok(())
    }

    /// The total of customer class `class`.
    pub fn class_total(&self, class: ClassId) -> i128 {
        self.classes.iter().find(|(known, _)| *known == class).map_or(0, |(_, total)| *total)
    }
}

impl Ledger {
    /// Notes what a posting changes of the liability figures (kept if the record commits);
    /// answers the flow its posted part is, if any.
    pub(super) fn note_liability(
        &mut self,
        debit: AccountId,
        credit: AccountId,
        leg: Leg,
        namespaces: [Namespace; 2],
    ) -> Option<Flow> {
        let posted = match leg {
            Leg::Post(amount) | Leg::Capture { captured: amount, .. } => amount,
            Leg::Reserve(_) | Leg::Release(_) => return None,
        };
        if posted == 0 {
            return None;
        }
        let delta = i128::try_from(posted).expect("postings fit in u64");
        if namespaces[0] == Namespace::Customer {
            self.liability_pending.push(LiabilityChange::Class(debit.class().0, -delta));
        }
        if namespaces[1] == Namespace::Customer {
            self.liability_pending.push(LiabilityChange::Class(credit.class().0, delta));
        }
        let flow = self.flow_of(debit, credit, namespaces[1])?;
        let amount = u64::try_from(posted).expect("postings fit in u64");
        self.liability_pending.push(LiabilityChange::Flow(flow, amount));
        Some(flow)
    }

    /// Which flow of the programme's points a posting from `debit` to `credit` is, if any.
    fn flow_of(
        &self,
        debit: AccountId,
        credit: AccountId,
        credit_namespace: Namespace,
    ) -> Option<Flow> {
        let classes = &self.flow_classes;
        let points = classes.points?;
        let from = |list: &[ClassId], class: ClassId| list.contains(&class);
        Some(
            if credit.class() == points
                && (from(&classes.issuance, debit.class())
                    || from(&classes.exchange, debit.class()))
            {
                // Points from a partner's exchange fund are issued as much as earned ones are.
                Flow::Issued
            } else if debit.class() != points {
                return None;
            } else if classes.issuance.contains(&credit.class()) {
                Flow::Refunded
            } else if classes.breakage.contains(&credit.class()) {
                Flow::Expired
            } else if credit_namespace == Namespace::House
                || classes.exchange.contains(&credit.class())
            {
                Flow::Redeemed
            } else {
                return None;
            },
        )
    }

    /// Keeps the notes of the record that commits.
    pub(super) fn keep_liability_changes(&mut self) {
        let day = self.applying_day;
        for change in self.liability_pending.drain(..) {
            match change {
                LiabilityChange::Class(class, delta) => {
                    let index = class as usize;
                    if self.class_totals.len() <= index {
                        self.class_totals.resize(index + 1, 0);
                    }
                    self.class_totals[index] += delta;
                }
                LiabilityChange::Flow(flow, amount) => self.flows.add(day, flow, amount),
            }
        }
    }

    /// The customer classes' totals, recomputed from the accounts (after a snapshot is loaded,
    /// and by `check_invariants`); `None` when a class's total overflows (only a damaged state
    /// can: balances are bounded by their asset's totals).
    pub(super) fn class_totals_from_accounts(&self) -> Option<Vec<i128>> {
        let mut totals: Vec<i128> = Vec::new();
        for (id, account) in self.accounts.iter() {
            let customer = self
                .registry
                .account_terms(*id)
                .is_some_and(|(_, _, namespace)| namespace == Namespace::Customer);
            if !customer {
                continue;
            }
            let index = id.class().0 as usize;
            if totals.len() <= index {
                totals.resize(index + 1, 0);
            }
            totals[index] = totals[index].checked_add(account.balance_posted())?;
        }
        Some(totals)
    }

    /// Sets the class totals from the accounts (a state decoded from a snapshot); `Err` when a
    /// class's total overflows.
    pub(super) fn restore_class_totals(&mut self) -> Result<(), ()> {
        self.class_totals = self.class_totals_from_accounts().ok_or(())?;
        Ok(())
    }

    /// Whether the kept class totals equal what the accounts add up to.
    pub(super) fn class_totals_match(&self) -> bool {
        self.class_totals_from_accounts()
            .is_some_and(|totals| super::trimmed(&self.class_totals) == super::trimmed(&totals))
    }

    /// The flows of points per day.
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// Restores the flows of a snapshot.
    pub(super) fn flows_mut(&mut self) -> &mut Flows {
        &mut self.flows
    }

    /// This shard's liability figures.
    pub fn liability(&self) -> ShardLiability {
        ShardLiability {
            classes: self
                .class_totals
                .iter()
                .enumerate()
                .filter(|(_, total)| **total != 0)
                .map(|(class, total)| {
                    (ClassId(u32::try_from(class).expect("class ids are u32")), *total)
                })
                .collect(),
            flows: self.flows.clone(),
            by_expiry_month: self.members.liability_by_expiry_month().clone(),
            tiers: self.members.tier_counts(),
        }
    }
}
