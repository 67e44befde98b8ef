//! The loyalty state of a shard's customers ("members"): each one's lots, tier, qualifying
//! points by month and cap counters; the points taken out of lots by open holds and transfers
//! in flight ("parked"); and the index of lot expiry days the expiry sweep reads.
//! Docs: docs/loyalty.md, "Tiers", "Point lots".
//!
//! Every change here follows a record that already applied to the accounts, so none can fail:
//! the checks are the ledger's (balances, holds) and the record's own.

use std::collections::{BTreeSet, HashMap};

use smallvec::SmallVec;

use super::lots::{DayChanges, LotPart, Lots, Parts};
use super::pricing::CapsUsed;
use super::rules::RuleSet;
use crate::ids::TxId;

type Hasher = foldhash::fast::RandomState;

/// Points a customer earned from purchases in the current UTC day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapsCounters {
    /// The day `day_points` counts (days since 1970-01-01).
    pub day: u32,
    /// Purchase points credited on `day`.
    pub day_points: u64,
    /// The month `month_points` counts (`year × 12 + month − 1`).
    pub month: u32,
    /// Purchase points credited in `month`.
    pub month_points: u64,
}

impl CapsCounters {
    /// What was used in `day` and `month` (counters of other days or months count 0).
    pub fn used(&self, day: u32, month: u32) -> CapsUsed {
        CapsUsed {
            day: if self.day == day { self.day_points } else { 0 },
            month: if self.month == month { self.month_points } else { 0 },
        }
    }

    fn add(&mut self, day: u32, month: u32, points: u64) {
        let used = self.used(day, month);
        *self = CapsCounters {
            day,
            day_points: used.day.saturating_add(points),
            month,
            month_points: used.month.saturating_add(points),
        };
    }
}

/// Qualifying points of one calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthPoints {
    /// `year × 12 + month − 1`.
    pub month: u32,
    /// Purchase points credited in it.
    pub points: u64,
}

/// Months of qualifying points a member keeps (format limit): the longest tier window.
pub const MONTHS_KEPT_MAX: usize = super::rules::MONTHS_MAX as usize;

/// One customer's loyalty state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The tier the customer's last purchase left them in (its `tier_after`).
    pub tier: u8,
    /// Purchase points of the current day and month.
    pub caps: CapsCounters,
    /// Qualifying points by month, oldest first, only months with points, within the window.
    pub months: SmallVec<[MonthPoints; 2]>,
    /// The customer's lots.
    pub lots: Lots,
}

impl Member {
    /// Purchase points of the `window` months up to `month` (included).
    pub fn qualifying(&self, month: u32, window: u8) -> u64 {
        let first = month.saturating_sub(u32::from(window) - 1);
        self.months
            .iter()
            .filter(|entry| entry.month >= first && entry.month <= month)
            .fold(0_u64, |sum, entry| sum.saturating_add(entry.points))
    }

    /// The tier `rules` give the customer in `month`: the window has rolled past old points.
    pub fn tier_in(&self, rules: &RuleSet, month: u32) -> u8 {
        rules.tier_for(self.qualifying(month, rules.tier_window_months))
    }
}

/// Points taken out of a customer's lots by an open hold or a transfer in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Whose lots they came from.
    pub customer: u64,
    /// The parts, in the order they were taken.
    pub parts: Parts,
    /// Whether they still count in the customer's posted balance: yes for a hold (a
    /// reservation), no for a transfer (the points left the account; they come back only if
    /// the destination refuses them).
    pub in_balance: bool,
}

impl Parked {
    /// Points parked.
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|part| part.amount).sum()
    }
}

/// What a purchase changes in its member's state (from its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseEffect {
    /// Its UTC day.
    pub day: u32,
    /// Its UTC month.
    pub month: u32,
    /// The tier window of the version that priced it: older months are dropped.
    pub window: u8,
    /// Points it credited (earned + bonus).
    pub points: u64,
    /// The tier it left the customer in.
    pub tier_after: u8,
}

/// The loyalty state of one shard's customers.
#[derive(Debug, Clone, Default)]
pub struct Members {
    members: HashMap<u64, Member, Hasher>,
    parked: HashMap<TxId, Parked, Hasher>,
    /// `(day, customer)` for every day on which one of the customer's lots expires.
    expiries: BTreeSet<(u32, u64)>,
}

impl PartialEq for Members {
    fn eq(&self, other: &Members) -> bool {
        self.members == other.members
            && self.parked == other.parked
            && self.expiries == other.expiries
    }
}

impl Eq for Members {}

impl Members {
    /// A customer's state.
    pub fn get(&self, customer: u64) -> Option<&Member> {
        self.members.get(&customer)
    }

    /// Every member, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Member)> {
        self.members.iter()
    }

    /// Members held.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every parked entry, in no order.
    pub fn parked(&self) -> impl Iterator<Item = (&TxId, &Parked)> {
        self.parked.iter()
    }

    /// The entry parked under `tx`.
    pub fn parked_of(&self, tx: TxId) -> Option<&Parked> {
        self.parked.get(&tx)
    }

    fn note_days(&mut self, customer: u64, days: &DayChanges) {
        for day in &days.removed {
            self.expiries.remove(&(*day, customer));
        }
        for day in &days.added {
            self.expiries.insert((*day, customer));
        }
    }

    /// Credits points to a customer's lots.
    pub fn credit(&mut self, customer: u64, part: LotPart) {
        if let Some(day) = self.members.entry(customer).or_default().lots.credit(part) {
            self.expiries.insert((day, customer));
        }
    }

    /// Takes points from a customer's lots, the earliest expiry first.
    pub fn take(&mut self, customer: u64, amount: u64) -> Parts {
        let member = self.members.get_mut(&customer).expect("a debited customer has lots");
        let mut days = DayChanges::default();
        let parts = member.lots.take(amount, &mut days);
        self.note_days(customer, &days);
        parts
    }

    /// Takes points from a customer's lots and parks them under `tx` (a hold or a transfer).
    pub fn park(&mut self, tx: TxId, customer: u64, amount: u64, in_balance: bool) {
        let parts = self.take(customer, amount);
        let parked = Parked { customer, parts, in_balance };
        assert!(self.parked.insert(tx, parked).is_none(), "a transaction parks once");
    }

    /// Ends what `tx` parked: `spent` points are gone (captured, or delivered), the earliest
    /// expiry first; the rest goes back to the customer's lots, expired or not (the sweep
    /// expires those past their day). Returns false if nothing was parked under `tx`.
    pub fn unpark(&mut self, tx: TxId, mut spent: u64) -> bool {
        let Some(parked) = self.parked.remove(&tx) else {
            return false;
        };
        for part in parked.parts {
            let gone = part.amount.min(spent);
            spent -= gone;
            if part.amount > gone {
                self.credit(parked.customer, LotPart { amount: part.amount - gone, ..part });
            }
        }
        assert_eq!(spent, 0, "no more is spent than was parked");
        true
    }

    /// Removes the whole remainder of due lots (the expiry sweep's record). Returns false,
    /// changing nothing, if they are not exactly a lot's remainder each.
    pub fn expire(&mut self, customer: u64, parts: &[LotPart]) -> bool {
        let Some(member) = self.members.get_mut(&customer) else {
            return false;
        };
        match member.lots.remove_exact(parts) {
            Some(days) => {
                self.note_days(customer, &days);
                true
            }
            None => false,
        }
    }

    /// Up to `max` customers with lots that expire on or before `day`, with those lots.
    pub fn due(&self, day: u32, max: usize) -> Vec<(u64, Parts)> {
        let mut due: Vec<(u64, Parts)> = Vec::new();
        for (_, customer) in self.expiries.range(..(day + 1, 0)) {
            if due.len() >= max {
                break;
            }
            if due.iter().any(|(seen, _)| seen == customer) {
                continue;
            }
            let parts =
                self.members.get(customer).map(|member| member.lots.due(day)).unwrap_or_default();
            if !parts.is_empty() {
                due.push((*customer, parts));
            }
        }
        due
    }

    /// The earliest day a lot expires, if any.
    pub fn next_expiry_day(&self) -> Option<u32> {
        self.expiries.first().map(|(day, _)| *day)
    }

    /// Counts a purchase's points towards caps and tiers and records the tier it left.
    pub fn record_purchase(&mut self, customer: u64, effect: PurchaseEffect) {
        let member = self.members.entry(customer).or_default();
        member.caps.add(effect.day, effect.month, effect.points);
        member.tier = effect.tier_after;
        let first = effect.month.saturating_sub(u32::from(effect.window) - 1);
        member.months.retain(|entry| entry.month >= first);
        if effect.points > 0 {
            match member.months.last_mut() {
                Some(last) if last.month == effect.month => {
                    last.points = last.points.saturating_add(effect.points);
                }
                _ => member.months.push(MonthPoints { month: effect.month, points: effect.points }),
            }
        }
    }

    /// Points in a customer's lots plus what holds parked from them: equal to the customer's
    /// posted points balance (`check_invariants`).
    pub fn balance_of(&self, customer: u64) -> u128 {
        let lots = self.members.get(&customer).map_or(0, |member| member.lots.total());
        let parked: u128 = self
            .parked
            .values()
            .filter(|parked| parked.customer == customer && parked.in_balance)
            .map(|parked| u128::from(parked.total()))
            .sum();
        lots + parked
    }

    /// Every customer with lots or parked points.
    pub fn customers_with_points(&self) -> BTreeSet<u64> {
        let mut customers: BTreeSet<u64> =
            self.members.iter().filter(|(_, m)| !m.lots.is_empty()).map(|(c, _)| *c).collect();
        customers.extend(self.parked.values().filter(|p| p.in_balance).map(|p| p.customer));
        customers
    }

    /// Checks the expiry index against the lots.
    pub fn expiries_match_lots(&self) -> bool {
        let derived: BTreeSet<(u32, u64)> = self
            .members
            .iter()
            .flat_map(|(customer, member)| {
                member.lots.iter().map(move |lot| (lot.expires_day, *customer))
            })
            .collect();
        derived == self.expiries
    }

    /// Restores a member as a snapshot holds it.
    pub fn restore_member(&mut self, customer: u64, member: Member) -> Result<(), &'static str> {
        for lot in member.lots.iter() {
            self.expiries.insert((lot.expires_day, customer));
        }
        match self.members.insert(customer, member) {
            None => Ok(()),
            Some(_) => Err("member listed twice"),
        }
    }

    /// Restores a parked entry as a snapshot holds it.
    pub fn restore_parked(&mut self, tx: TxId, parked: Parked) -> Result<(), &'static str> {
        match self.parked.insert(tx, parked) {
            None => Ok(()),
            Some(_) => Err("parked entry listed twice"),
        }
    }
}
