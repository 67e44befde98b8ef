//! The loyalty state of a shard's customers ("members"): each one's lots, tier, qualifying
//! points by month and cap counters; the points taken out of lots by open holds and transfers
//! in flight ("parked"); and the index of lot expiry days the expiry sweep reads.
//! Docs: docs/loyalty.md, "Tiers", "Point lots".
//!
//! Every change here follows a record that already applied to the accounts, so none can fail:
//! the checks are the ledger's (balances, holds) and the record's own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use smallvec::SmallVec;

use super::calendar::month_of_day;
use super::lots::{LotKind, LotPart, Lots, Parts, TakenBack};
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

/// One customer's loyalty state: 184 bytes, lots inline (docs/design-decisions.md, "Loyalty
/// state").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The tier and the caps counters, packed.
    standing: Standing,
    /// Qualifying points by month, oldest first, only months with points, within the window.
    pub months: SmallVec<[MonthPoints; 1]>,
    /// The customer's lots.
    pub lots: Lots,
}

/// A member's tier and caps counters in 24 bytes: the counters' month is their day's (both are
/// set by the same purchase), so only the day is kept, and the tier fills the rest of its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Standing {
    day_points: u64,
    month_points: u64,
    day: u32,
    tier: u8,
}

/// The month caps counters of `day` count: 0 for day 0 (counters never set).
fn caps_month(day: u32) -> u32 {
    match day {
        0 => 0,
        day => month_of_day(day),
    }
}

impl Member {
    /// A member as a snapshot holds it: its recorded tier and caps counters (whose month must
    /// be their day's).
    pub fn restore(tier: u8, caps: CapsCounters) -> Result<Member, &'static str> {
        if usize::from(tier) >= super::rules::TIERS_MAX {
            return Err("tier beyond the tiers a rule set may have");
        }
        if caps.month != caps_month(caps.day) {
            return Err("caps month is not the month of the caps day");
        }
        let standing = Standing {
            day_points: caps.day_points,
            month_points: caps.month_points,
            day: caps.day,
            tier,
        };
        Ok(Member { standing, ..Member::default() })
    }

    /// The tier the customer's last purchase left them in (its `tier_after`).
    pub fn tier(&self) -> u8 {
        self.standing.tier
    }

    /// Purchase points of the day and month of the customer's last purchase.
    pub fn caps(&self) -> CapsCounters {
        CapsCounters {
            day: self.standing.day,
            day_points: self.standing.day_points,
            month: caps_month(self.standing.day),
            month_points: self.standing.month_points,
        }
    }

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

    /// Gives back `points` of a purchase made on `day` (a refund or a failure): they leave the
    /// qualifying points of its month and the cap counters that still count its day and
    /// month; the recorded tier becomes the lower of itself and what `rules` give the points
    /// left in `month_now`. A give-back never raises the tier.
    pub fn give_back(&mut self, day: u32, points: u64, rules: &RuleSet, month_now: u32) {
        let month = month_of_day(day);
        if let Some(entry) = self.months.iter_mut().find(|entry| entry.month == month) {
            entry.points -= entry.points.min(points);
        }
        self.months.retain(|entry| entry.points > 0);
        let standing = &mut self.standing;
        if standing.day == day {
            standing.day_points -= standing.day_points.min(points);
        }
        if standing.day != 0 && caps_month(standing.day) == month {
            standing.month_points -= standing.month_points.min(points);
        }
        let tier = rules.tier_for(self.qualifying(month_now, rules.tier_window_months));
        self.standing.tier = self.standing.tier.min(tier);
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

/// Members in a slot each: an index from customer to slot, and the slots in chunks of
/// `CHUNK_SLOTS`, filled in order and never moved. A hash map of members would keep up to
/// twice its entries' room empty at its load factor; here only the last chunk has room to
/// spare, and a member's lots live in its slot (docs/performance.md, "Memory per member").
#[derive(Debug, Clone, Default)]
struct Table {
    slots: HashMap<u64, u32, Hasher>,
    chunks: Vec<Vec<Member>>,
    /// Members per recorded tier (kept as members are made and their tier changes).
    tiers: [u64; super::rules::TIERS_MAX],
}

/// Members per chunk of the table.
const CHUNK_SLOTS: usize = 4096;

impl Table {
    fn at(&self, slot: u32) -> &Member {
        let slot = slot as usize;
        &self.chunks[slot / CHUNK_SLOTS][slot % CHUNK_SLOTS]
    }

    fn at_mut(&mut self, slot: u32) -> &mut Member {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK_SLOTS][slot % CHUNK_SLOTS]
    }

    fn get(&self, customer: &u64) -> Option<&Member> {
        self.slots.get(customer).map(|slot| self.at(*slot))
    }

    /// Starts loading a member's slot: the lookup's miss overlaps those of the batch's other
    /// lookups in the prefetch pass, and the slot is in cache when the record applies.
    fn prefetch(&self, customer: &u64) {
        if let Some(slot) = self.slots.get(customer) {
            crate::prefetch::prefetch_read(self.at(*slot));
        }
    }

    fn get_mut(&mut self, customer: &u64) -> Option<&mut Member> {
        let slot = *self.slots.get(customer)?;
        Some(self.at_mut(slot))
    }

    /// The member's slot, made (empty) if there is none.
    fn get_or_default(&mut self, customer: u64) -> &mut Member {
        let next = self.slots.len();
        let slot = *self
            .slots
            .entry(customer)
            .or_insert_with(|| u32::try_from(next).expect("members of one shard fit in 32 bits"));
        if slot as usize == next {
            self.tiers[0] += 1;
            if self.chunks.last().is_none_or(|chunk| chunk.len() == CHUNK_SLOTS) {
                self.chunks.push(Vec::with_capacity(CHUNK_SLOTS));
            }
            self.chunks.last_mut().expect("pushed").push(Member::default());
        }
        self.at_mut(slot)
    }

    /// Adds a member; false if the customer has one.
    fn insert(&mut self, customer: u64, member: Member) -> bool {
        if self.slots.contains_key(&customer) {
            return false;
        }
        let tier = usize::from(member.tier());
        *self.get_or_default(customer) = member;
        self.tiers[0] -= 1;
        self.tiers[tier] += 1;
        true
    }

    fn iter(&self) -> impl Iterator<Item = (&u64, &Member)> {
        self.slots.iter().map(|(customer, slot)| (customer, self.at(*slot)))
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl PartialEq for Table {
    /// The same members, whatever their slots.
    fn eq(&self, other: &Table) -> bool {
        self.len() == other.len()
            && self.iter().all(|(customer, member)| other.get(customer) == Some(member))
    }
}

/// One change of a member's recorded tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierChange {
    /// The member.
    pub customer: u64,
    /// The tier recorded before.
    pub before: u8,
    /// The tier recorded now.
    pub after: u8,
}

/// What changed in the members since a reader last took it (`Members::set_journal`): for the
/// reporting replica, which copies each changed member's state rather than every lot event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembersJournal {
    /// Customers whose lots, parked points or tier changed, in order (repeats kept).
    pub touched: Vec<u64>,
    /// Every change of a recorded tier, in order.
    pub tiers: Vec<TierChange>,
}

/// The loyalty state of one shard's customers.
#[derive(Debug, Clone, Default)]
pub struct Members {
    members: Table,
    parked: HashMap<TxId, Parked, Hasher>,
    /// Every customer with lots, filed under the day their earliest lot expires: one entry per
    /// member, however many lots they hold (a set per day: 8 bytes an entry and O(1) moves,
    /// where a B-tree of `(day, customer)` took about 30). A day's set is dropped once empty.
    expiries: BTreeMap<u32, HashSet<u64, Hasher>>,
    /// Points in lots by the month they expire in (`year × 12 + month − 1`), kept as lots
    /// change: the programme's liability by expiry month, without a scan. Points parked by
    /// holds and transfers are not in it (they do not expire while parked).
    liability: BTreeMap<u32, u64>,
    /// Lots held by every member, kept as lots change (the shard's `lots` figure).
    lot_count: u64,
    /// What changed, when a reader asked (`set_journal`); not state.
    journal: Option<Box<MembersJournal>>,
}

impl PartialEq for Members {
    fn eq(&self, other: &Members) -> bool {
        self.members == other.members
            && self.parked == other.parked
            && self.expiries == other.expiries
            && self.liability == other.liability
            && self.lot_count == other.lot_count
    }
}

impl Eq for Members {}

impl Members {
    /// A customer's state.
    pub fn get(&self, customer: u64) -> Option<&Member> {
        self.members.get(&customer)
    }

    /// Starts loading a customer's state (`Ledger::prefetch`).
    pub fn prefetch(&self, customer: u64) {
        self.members.prefetch(&customer);
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

    /// Keeps (`true`) or stops keeping what changes, for `take_journal`.
    pub fn set_journal(&mut self, on: bool) {
        self.journal = on.then(Box::default);
    }

    /// What changed since the last call (empty unless `set_journal(true)`).
    pub fn take_journal(&mut self) -> MembersJournal {
        self.journal.as_deref_mut().map(std::mem::take).unwrap_or_default()
    }

    fn touch(&mut self, customer: u64) {
        if let Some(journal) = self.journal.as_deref_mut() {
            journal.touched.push(customer);
        }
    }

    fn note_tier(&mut self, customer: u64, before: usize, after: usize) {
        if let Some(journal) = self.journal.as_deref_mut()
            && before != after
        {
            journal.tiers.push(TierChange {
                customer,
                before: u8::try_from(before).expect("tiers fit in u8"),
                after: u8::try_from(after).expect("tiers fit in u8"),
            });
        }
    }

    fn count(&mut self, day: u32, amount: u64) {
        *self.liability.entry(month_of_day(day)).or_default() += amount;
    }

    fn discount(&mut self, parts: &[LotPart]) {
        for part in parts {
            let month = month_of_day(part.expires_day);
            let left = self.liability.get_mut(&month).expect("counted when credited");
            *left -= part.amount;
            if *left == 0 {
                self.liability.remove(&month);
            }
        }
    }

    /// Points in lots by the month they expire in, oldest first.
    pub fn liability_by_expiry_month(&self) -> &BTreeMap<u32, u64> {
        &self.liability
    }

    /// Lots held by every member.
    pub fn lot_count(&self) -> u64 {
        self.lot_count
    }

    /// A member's earliest lot's day and number of lots, for `refile`.
    fn first_day(&self, customer: u64) -> (Option<u32>, usize) {
        self.members
            .get(&customer)
            .map_or((None, 0), |member| (member.lots.first_day(), member.lots.len()))
    }

    /// Files `customer` in the expiry index at their earliest lot's day, and counts their
    /// lots, which were `before` (day and count).
    fn refile(&mut self, customer: u64, (before, lots_before): (Option<u32>, usize)) {
        let (after, lots_after) = self.first_day(customer);
        self.lot_count = self.lot_count + lots_after as u64 - lots_before as u64;
        if before != after {
            if let Some(day) = before {
                self.unfile(day, customer);
            }
            if let Some(day) = after {
                self.expiries.entry(day).or_default().insert(customer);
            }
        }
    }

    fn unfile(&mut self, day: u32, customer: u64) {
        if let Some(customers) = self.expiries.get_mut(&day) {
            customers.remove(&customer);
            if customers.is_empty() {
                self.expiries.remove(&day);
            }
        }
    }

    /// Credits points to a customer's lots.
    pub fn credit(&mut self, customer: u64, part: LotPart) {
        let before = self.first_day(customer);
        self.members.get_or_default(customer).lots.credit(part);
        self.count(part.expires_day, part.amount);
        self.refile(customer, before);
        self.touch(customer);
    }

    /// Takes points from a customer's lots, the earliest expiry first.
    pub fn take(&mut self, customer: u64, amount: u64) -> Parts {
        let before = self.first_day(customer);
        let member = self.members.get_mut(&customer).expect("a debited customer has lots");
        let parts = member.lots.take(amount);
        self.discount(&parts);
        self.refile(customer, before);
        self.touch(customer);
        parts
    }

    /// Takes back up to `amount` points of a customer: from the lots `first` names, then from
    /// their other lots, the earliest first (a refund; docs/loyalty.md, "Purchase lifecycle
    /// and refunds"). Points parked by holds are not touched.
    pub fn take_back(&mut self, customer: u64, first: &[(LotKind, u32)], amount: u64) -> TakenBack {
        let before = self.first_day(customer);
        let Some(member) = self.members.get_mut(&customer) else {
            return TakenBack { parts: Parts::new(), short: amount };
        };
        let back = member.lots.take_back(first, amount);
        self.discount(&back.parts);
        self.refile(customer, before);
        self.touch(customer);
        back
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
        self.touch(parked.customer);
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
        let before = self.first_day(customer);
        let Some(member) = self.members.get_mut(&customer) else {
            return false;
        };
        if !member.lots.remove_exact(parts) {
            return false;
        }
        self.discount(parts);
        self.refile(customer, before);
        self.touch(customer);
        true
    }

    /// Up to `max` customers with lots that expire on or before `day`, with those lots.
    pub fn due(&self, day: u32, max: usize) -> Vec<(u64, Parts)> {
        let mut due: Vec<(u64, Parts)> = Vec::new();
        for customer in self.expiries.range(..=day).flat_map(|(_, customers)| customers) {
            if due.len() >= max {
                break;
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
        self.expiries.first_key_value().map(|(day, _)| *day)
    }

    /// Counts a purchase's points towards caps and tiers and records the tier it left.
    pub fn record_purchase(&mut self, customer: u64, effect: PurchaseEffect) {
        let member = self.members.get_or_default(customer);
        let before = usize::from(member.tier());
        let used = member.caps().used(effect.day, effect.month);
        member.standing = Standing {
            day_points: used.day.saturating_add(effect.points),
            month_points: used.month.saturating_add(effect.points),
            day: effect.day,
            tier: effect.tier_after,
        };
        debug_assert_eq!(month_of_day(effect.day), effect.month, "a day lies in its month");
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
        self.members.tiers[before] -= 1;
        self.members.tiers[usize::from(effect.tier_after)] += 1;
        self.touch(customer);
        self.note_tier(customer, before, usize::from(effect.tier_after));
    }

    /// Gives back a purchase's points (`Member::give_back`); a customer without a member
    /// state has nothing to give back.
    pub fn give_back(&mut self, customer: u64, day: u32, points: u64, rules: &RuleSet, month: u32) {
        if let Some(member) = self.members.get_mut(&customer) {
            let before = usize::from(member.tier());
            member.give_back(day, points, rules, month);
            let after = usize::from(member.tier());
            self.members.tiers[before] -= 1;
            self.members.tiers[after] += 1;
            self.touch(customer);
            self.note_tier(customer, before, after);
        }
    }

    /// Members per recorded tier.
    pub fn tier_counts(&self) -> [u64; super::rules::TIERS_MAX] {
        self.members.tiers
    }

    /// Whether the tier counts equal a count of the members' tiers.
    pub fn tier_counts_match(&self) -> bool {
        let mut counted = [0_u64; super::rules::TIERS_MAX];
        for (_, member) in self.members.iter() {
            counted[usize::from(member.tier())] += 1;
        }
        counted == self.members.tiers
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

    /// Checks the expiry index against the lots (each member with lots, at their earliest day)
    /// and the liability by expiry month against their sum.
    pub fn expiries_match_lots(&self) -> bool {
        let derived: BTreeSet<(u32, u64)> = self
            .members
            .iter()
            .filter_map(|(customer, member)| member.lots.first_day().map(|day| (day, *customer)))
            .collect();
        let filed: BTreeSet<(u32, u64)> = self
            .expiries
            .iter()
            .flat_map(|(day, customers)| customers.iter().map(|customer| (*day, *customer)))
            .collect();
        let entries: usize = self.expiries.values().map(HashSet::len).sum();
        let mut liability = BTreeMap::<u32, u64>::new();
        for (_, member) in self.members.iter() {
            for lot in member.lots.iter() {
                *liability.entry(month_of_day(lot.expires_day)).or_default() += lot.remaining;
            }
        }
        let lots: usize = self.members.iter().map(|(_, member)| member.lots.len()).sum();
        derived == filed
            && lots as u64 == self.lot_count
            && entries == filed.len()
            && self.expiries.values().all(|c| !c.is_empty())
            && liability == self.liability
    }

    /// Restores a member as a snapshot holds it.
    pub fn restore_member(&mut self, customer: u64, member: Member) -> Result<(), &'static str> {
        if self.members.get(&customer).is_none() {
            if let Some(day) = member.lots.first_day() {
                self.expiries.entry(day).or_default().insert(customer);
            }
            for lot in member.lots.iter() {
                self.count(lot.expires_day, lot.remaining);
            }
            self.lot_count += member.lots.len() as u64;
        }
        match self.members.insert(customer, member) {
            true => Ok(()),
            false => Err("member listed twice"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loyalty::lots::part;

    #[test]
    fn a_restored_member_has_a_tier_a_rule_set_can_have_and_is_counted_in_it() {
        assert!(Member::restore(8, CapsCounters::default()).is_err(), "8 tiers at most: 0..=7");
        let mut members = Members::default();
        members.restore_member(1, Member::restore(7, CapsCounters::default()).unwrap()).unwrap();
        members.credit(2, part(1, LotKind::Earned, 300, 5));
        let mut expected = [0; crate::loyalty::rules::TIERS_MAX];
        (expected[0], expected[7]) = (1, 1);
        assert_eq!(members.tier_counts(), expected);
        assert!(members.tier_counts_match());
    }

    #[test]
    fn the_journal_names_each_changed_member_and_each_tier_change_only_when_on() {
        let mut members = Members::default();
        members.credit(1, part(1, LotKind::Earned, 300, 5));
        assert_eq!(members.take_journal(), MembersJournal::default(), "off by default");
        members.set_journal(true);
        members.credit(2, part(2, LotKind::Earned, 300, 50));
        let month = crate::loyalty::calendar::month_of_day(300);
        let effect = PurchaseEffect { day: 300, month, window: 12, points: 50, tier_after: 1 };
        members.record_purchase(2, effect);
        members.park(TxId(3), 1, 5, true);
        members.unpark(TxId(3), 5);
        // Another purchase at the same tier: touched, no change of tier.
        members.record_purchase(2, effect);
        let journal = members.take_journal();
        assert_eq!(journal.touched, [2, 2, 1, 1, 2]);
        assert_eq!(journal.tiers, [TierChange { customer: 2, before: 0, after: 1 }]);
        assert_eq!(members.take_journal(), MembersJournal::default(), "taken");
        members.set_journal(false);
        members.credit(4, part(4, LotKind::Earned, 300, 1));
        assert_eq!(members.take_journal(), MembersJournal::default());
    }

    #[test]
    fn the_expiry_index_follows_each_members_earliest_lot() {
        let mut members = Members::default();
        members.credit(7, part(1, LotKind::Earned, 300, 50));
        members.credit(7, part(2, LotKind::Transfer, 100, 10));
        members.credit(8, part(3, LotKind::Earned, 200, 5));
        assert!(members.expiries_match_lots());
        assert_eq!(members.next_expiry_day(), Some(100));
        // A refund takes back the purchase's lot of day 300 whole, then 5 of the earliest
        // (day 100): customer 7 keeps 5 points, still filed under day 100.
        let back = members.take_back(7, &[(LotKind::Earned, 300)], 55);
        assert_eq!(back.short, 0);
        assert_eq!(
            back.parts.as_slice(),
            [part(1, LotKind::Earned, 300, 50), part(2, LotKind::Transfer, 100, 5)]
        );
        assert!(members.expiries_match_lots());
        assert_eq!(members.next_expiry_day(), Some(100));
        assert_eq!(members.balance_of(7), 5);
        // Everything and more: 7 has no lot left and leaves the index; the rest is short.
        let back = members.take_back(7, &[], 9);
        assert_eq!(back.short, 4);
        assert!(members.expiries_match_lots());
        assert_eq!(members.next_expiry_day(), Some(200));
        assert_eq!(members.due(1_000, 10).len(), 1, "only customer 8 is filed");
        // A customer the shard never credited: all short.
        assert_eq!(members.take_back(99, &[], 3).short, 3);
        assert!(members.get(99).is_none(), "taking back creates no member");
    }

    #[test]
    fn the_liability_by_expiry_month_follows_every_lot_change() {
        let mut members = Members::default();
        // Day 20,819 is 2027-01-01 (month 24,324); day 20,818 is 2026-12-31 (24,323).
        members.credit(1, part(1, LotKind::Earned, 20_819, 50));
        members.credit(2, part(2, LotKind::Bonus, 20_818, 30));
        members.credit(2, part(3, LotKind::Earned, 20_819, 5));
        let months =
            |m: &Members| m.liability_by_expiry_month().clone().into_iter().collect::<Vec<_>>();
        assert_eq!(months(&members), [(24_323, 30), (24_324, 55)]);
        // A hold parks 32 of customer 2's points: the December lot and 2 of January's.
        members.park(TxId(9), 2, 32, true);
        assert_eq!(months(&members), [(24_324, 53)]);
        // Voided: back in their lots.
        assert!(members.unpark(TxId(9), 0));
        assert_eq!(months(&members), [(24_323, 30), (24_324, 55)]);
        // December's lot expires.
        assert!(members.expire(2, &[part(2, LotKind::Bonus, 20_818, 30)]));
        assert_eq!(months(&members), [(24_324, 55)]);
        // A refund takes back 60: 50 from customer 1, short 10.
        assert_eq!(members.take_back(1, &[], 60).short, 10);
        assert_eq!(months(&members), [(24_324, 5)]);
        assert!(members.expiries_match_lots());
        // A copy restored member by member counts the same.
        let mut restored = Members::default();
        for (customer, member) in members.iter() {
            restored.restore_member(*customer, member.clone()).unwrap();
        }
        assert_eq!(months(&restored), months(&members));
    }

    #[test]
    fn a_member_is_184_bytes_with_four_lots_inline() {
        assert_eq!(std::mem::size_of::<Member>(), 184);
    }

    #[test]
    fn caps_counters_keep_their_month_from_their_day() {
        let mut members = Members::default();
        // 2026-11-27 is day 20,784, in month 2026 × 12 + 10.
        let effect =
            PurchaseEffect { day: 20_784, month: 24_322, window: 12, points: 30, tier_after: 2 };
        members.record_purchase(5, effect);
        members.record_purchase(5, PurchaseEffect { day: 20_785, points: 12, ..effect });
        let member = members.get(5).unwrap();
        assert_eq!(member.tier(), 2);
        let caps = member.caps();
        assert_eq!(
            (caps.day, caps.day_points, caps.month, caps.month_points),
            (20_785, 12, 24_322, 42)
        );
        let restored = Member::restore(member.tier(), caps).unwrap();
        assert_eq!((restored.tier(), restored.caps()), (2, caps));
        assert!(Member::restore(0, CapsCounters { month: 24_321, ..caps }).is_err());
        assert_eq!(Member::default().caps(), CapsCounters::default(), "never set: all zero");
    }

    #[test]
    fn members_compare_by_content_not_by_slot() {
        let mut first = Members::default();
        let mut second = Members::default();
        first.credit(1, part(1, LotKind::Earned, 10, 5));
        first.credit(2, part(2, LotKind::Earned, 10, 6));
        second.credit(2, part(2, LotKind::Earned, 10, 6));
        second.credit(1, part(1, LotKind::Earned, 10, 5));
        assert_eq!(first, second);
        second.credit(1, part(3, LotKind::Bonus, 10, 1));
        assert_ne!(first, second);
    }
}
