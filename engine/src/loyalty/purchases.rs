//! The purchases a shard can still settle, fail or refund: what each transition needs of a
//! purchase, in 64 bytes, kept for the programme's refund window and found by id.
//! Docs: docs/loyalty.md, "Purchase lifecycle and refunds".
//!
//! A shard's transaction ids increase, so the table is a ring in id order: a purchase is
//! appended, found by binary search, and dropped from the front once older than the window.
//! Beside it: the hash of each purchase's store and receipt (for refunds by receipt) and the
//! queue of purchases whose points are held.

use std::collections::{HashMap, VecDeque};

use super::decimal::{RATIO_ONE, Ratio};
use super::lifecycle::{LifecycleError, LifecycleEvent, LifecycleState, next_state, refund_share};
use super::pricing::Line;
use super::rules::RuleSet;
use crate::ids::TxId;

/// What a refund, a settlement or a failure needs of one purchase: 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refundable {
    /// The purchase's transaction id.
    pub id: TxId,
    /// The member.
    pub customer: u64,
    /// Its whole spend (every line), the basis of refunds by amount.
    pub spend: u64,
    /// Its weighted eligible spend (`weight`), the basis of refunds by lines.
    pub weight: u64,
    /// How much of its basis was refunded so far (spend, or weight once refunded by lines).
    pub refunded: u64,
    earned: u32,
    bonus: u32,
    cashback: u32,
    /// Its UTC day (its lots' days follow from it and its rule version's lot lives).
    pub day: u32,
    /// The rule version that priced it (at most `RULE_VERSIONS_MAX`, 1,024).
    pub version: u16,
    /// Where it stands.
    pub state: LifecycleState,
    /// `BY_LINES`, `HELD`.
    pub flags: u8,
}

/// What a purchase gave, for its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gave {
    /// Earned points.
    pub earned: u64,
    /// Bonus points.
    pub bonus: u64,
    /// Cashback.
    pub cashback: u64,
}

/// The basis of a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// A share of the spend.
    Spend,
    /// Returned lines' weight.
    Weight,
}

impl Refundable {
    /// Refunded by lines (`refunded` counts weight).
    pub const BY_LINES: u8 = 1;
    /// Its points and cashback are credited as pending until it settles or its hold ends.
    pub const HELD: u8 = 2;

    /// The entry of a pending purchase; `None` when a component is above `u32::MAX` (such a
    /// purchase is not kept: refunds of it are manual adjustments).
    pub fn new(
        id: TxId,
        customer: u64,
        (spend, weight): (u64, u64),
        gave: Gave,
        (day, version): (u32, u16),
        held: bool,
    ) -> Option<Refundable> {
        Some(Refundable {
            id,
            customer,
            spend,
            weight,
            refunded: 0,
            earned: u32::try_from(gave.earned).ok()?,
            bonus: u32::try_from(gave.bonus).ok()?,
            cashback: u32::try_from(gave.cashback).ok()?,
            day,
            version,
            state: LifecycleState::Pending,
            flags: if held { Refundable::HELD } else { 0 },
        })
    }

    /// What the purchase gave.
    pub fn gave(&self) -> Gave {
        Gave {
            earned: u64::from(self.earned),
            bonus: u64::from(self.bonus),
            cashback: u64::from(self.cashback),
        }
    }

    /// Whether its points are still credited as pending.
    pub fn held(&self) -> bool {
        self.flags & Refundable::HELD != 0
    }

    /// The basis its refunds so far used (`Spend` before any).
    pub fn basis(&self) -> Basis {
        if self.flags & Refundable::BY_LINES != 0 { Basis::Weight } else { Basis::Spend }
    }

    fn basis_total(&self, basis: Basis) -> u64 {
        match basis {
            Basis::Spend => self.spend,
            Basis::Weight => self.weight,
        }
    }

    /// What `event` does to this purchase: a settlement takes nothing back; a refund (of
    /// `basis` units) takes back its cumulative share of each component; a failure takes back
    /// all that is left. A purchase refunded by amount cannot then be refunded by lines, nor
    /// the other way round.
    pub fn transition(
        &self,
        event: LifecycleEvent,
        basis: Basis,
    ) -> Result<Transition, LifecycleError> {
        let basis = match event {
            // A final state refuses every refund by its own status, whatever the basis.
            LifecycleEvent::Refund { .. } if self.state.is_final() => self.basis(),
            LifecycleEvent::Refund { .. } => {
                if self.refunded > 0 && basis != self.basis() {
                    return Err(LifecycleError::RefundBasisMismatch);
                }
                basis
            }
            _ => self.basis(),
        };
        let total = self.basis_total(basis);
        let event = match event {
            LifecycleEvent::Refund { amount, .. } => {
                LifecycleEvent::Refund { amount, left: total - self.refunded }
            }
            other => other,
        };
        let state = next_state(self.state, event)?;
        let now = match event {
            LifecycleEvent::Settle => 0,
            LifecycleEvent::Fail => total - self.refunded,
            LifecycleEvent::Refund { amount, .. } => amount,
        };
        let gave = self.gave();
        let share = |component| match event {
            // A failure takes back all that is left, even of a purchase whose basis is 0.
            LifecycleEvent::Fail => {
                component - refund_share(component, total, 0, self.refunded.min(total))
            }
            _ => refund_share(component, total, self.refunded, now),
        };
        Ok(Transition {
            state,
            refunded: self.refunded + now,
            basis,
            earned: share(gave.earned),
            bonus: share(gave.bonus),
            cashback: share(gave.cashback),
        })
    }

    /// Records `transition` (from `transition`).
    pub fn apply(&mut self, transition: &Transition) {
        self.state = transition.state;
        self.refunded = transition.refunded;
        if transition.basis == Basis::Weight {
            self.flags |= Refundable::BY_LINES;
        }
        if transition.state != LifecycleState::Pending {
            self.flags &= !Refundable::HELD;
        }
    }
}

/// What a transition of a purchase takes back of each component, and where it leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state after.
    pub state: LifecycleState,
    /// Basis refunded after it.
    pub refunded: u64,
    /// The basis it counts in.
    pub basis: Basis,
    /// Earned points taken back.
    pub earned: u64,
    /// Bonus points taken back.
    pub bonus: u64,
    /// Cashback taken back.
    pub cashback: u64,
}

/// The weighted eligible spend of `lines` under `rules`: each line not excluded (by the till or
/// its category) weighs `⌊amount × category multiplier⌋`; the sum saturates at `u64::MAX`.
pub fn weight(rules: &RuleSet, lines: &[Line]) -> u64 {
    lines
        .iter()
        .map(|line| {
            let category = rules.category(line.category);
            if line.excluded || category.is_some_and(|category| category.excluded) {
                return 0;
            }
            let multiplier = category.map_or(Ratio::ONE, |category| category.multiplier);
            let weighed =
                u128::from(line.amount) * u128::from(multiplier.0) / u128::from(RATIO_ONE);
            u64::try_from(weighed).unwrap_or(u64::MAX)
        })
        .fold(0_u64, u64::saturating_add)
}

/// The refundable purchases of one shard, in id order, with an index by store and receipt
/// and the queue of purchases whose points are held.
#[derive(Debug, Clone, Default)]
pub struct Purchases {
    entries: VecDeque<Refundable>,
    /// Per entry, the hash of its store and receipt (0: no receipt), to drop it from `receipts`.
    receipt_keys: VecDeque<u64>,
    /// Store and receipt → the newest purchase with them.
    receipts: HashMap<u64, TxId, Hasher>,
    /// Purchases whose points are held, oldest first (some may have settled since).
    held: VecDeque<TxId>,
}

type Hasher = foldhash::fast::RandomState;

impl PartialEq for Purchases {
    /// The same entries and receipts (the index follows from them).
    fn eq(&self, other: &Purchases) -> bool {
        self.entries == other.entries && self.receipt_keys == other.receipt_keys
    }
}

impl Eq for Purchases {}

/// The key of a store and receipt in the index: 0 for a purchase without a receipt.
pub fn receipt_key(store: u32, receipt: &str) -> u64 {
    if receipt.is_empty() {
        return 0;
    }
    // The store and the receipt (at most `RECEIPT_BYTES_MAX`) side by side, on the stack: this
    // runs for every purchase.
    let mut bytes = [0_u8; 4 + crate::limits::RECEIPT_BYTES_MAX];
    let receipt = receipt.as_bytes();
    let len = 4 + receipt.len().min(crate::limits::RECEIPT_BYTES_MAX);
    bytes[..4].copy_from_slice(&store.to_le_bytes());
    bytes[4..len].copy_from_slice(&receipt[..len - 4]);
    xxhash_rust::xxh3::xxh3_64(&bytes[..len]).max(1)
}

impl Purchases {
    /// Adds a purchase, which is newer than every other, with its receipt key.
    pub fn push(&mut self, purchase: Refundable, receipt: u64) {
        assert!(
            self.entries.back().is_none_or(|last| last.id < purchase.id),
            "a shard's transaction ids increase"
        );
        if purchase.held() {
            self.held.push_back(purchase.id);
        }
        if receipt != 0 {
            self.receipts.insert(receipt, purchase.id);
        }
        self.entries.push_back(purchase);
        self.receipt_keys.push_back(receipt);
    }

    /// The purchase `id`, if still refundable.
    pub fn get(&self, id: TxId) -> Option<&Refundable> {
        let index = self.entries.binary_search_by_key(&id, |entry| entry.id).ok()?;
        self.entries.get(index)
    }

    /// The purchase `id`, to record a transition.
    pub fn get_mut(&mut self, id: TxId) -> Option<&mut Refundable> {
        let index = self.entries.binary_search_by_key(&id, |entry| entry.id).ok()?;
        self.entries.get_mut(index)
    }

    /// The newest refundable purchase with this receipt key (`receipt_key`).
    pub fn by_receipt(&self, receipt: u64) -> Option<&Refundable> {
        self.receipts.get(&receipt).and_then(|id| self.get(*id))
    }

    /// Drops the purchases made before `day` (the first day still in the window); returns how
    /// many. A purchase whose points are still held is kept (with every later one) until its
    /// hold ends: its pending credit must be posted or released by a record first.
    pub fn forget_before(&mut self, day: u32) -> usize {
        let old = self.entries.partition_point(|entry| entry.day < day);
        let old = self.entries.iter().take(old).position(Refundable::held).unwrap_or(old);
        for (entry, key) in self.entries.drain(..old).zip(self.receipt_keys.drain(..old)) {
            if key != 0 && self.receipts.get(&key) == Some(&entry.id) {
                self.receipts.remove(&key);
            }
        }
        if let Some(first) = self.entries.front().map(|entry| entry.id) {
            while self.held.front().is_some_and(|id| *id < first) {
                self.held.pop_front();
            }
        } else {
            self.held.clear();
        }
        old
    }

    /// The purchases whose points are still held, oldest first.
    pub fn held_iter(&self) -> impl Iterator<Item = &Refundable> {
        self.held.iter().filter_map(|id| self.get(*id)).filter(|entry| entry.held())
    }

    /// Drops the queue's front entries that are no longer held (settled, failed, released).
    pub fn trim_held(&mut self) {
        while let Some(id) = self.held.front().copied() {
            if self.get(id).is_some_and(Refundable::held) {
                return;
            }
            self.held.pop_front();
        }
    }

    /// Purchases held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every purchase held, oldest first, with its receipt key.
    pub fn iter(&self) -> impl Iterator<Item = (&Refundable, u64)> {
        self.entries.iter().zip(self.receipt_keys.iter().copied())
    }

    /// Up to `limit` purchases made on days `from_day..=to_day`, with their receipt keys, in
    /// id order, after purchase `after` when given (a page of a longer walk).
    pub fn page(
        &self,
        (from_day, to_day): (u32, u32),
        after: Option<TxId>,
        limit: usize,
    ) -> Vec<(Refundable, u64)> {
        // Ids increase with time, so days do too: the range is contiguous.
        let start = match after {
            Some(after) => self.entries.partition_point(|entry| entry.id <= after),
            None => 0,
        }
        .max(self.entries.partition_point(|entry| entry.day < from_day));
        self.entries
            .range(start..)
            .zip(self.receipt_keys.range(start..))
            .take_while(|(entry, _)| entry.day <= to_day)
            .take(limit)
            .map(|(entry, key)| (*entry, *key))
            .collect()
    }

    /// Bytes the table takes: its entries, their receipt keys, the receipt index and the queue
    /// of held purchases.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Refundable>()
            + self.receipt_keys.capacity() * 8
            + self.receipts.capacity() * (std::mem::size_of::<(u64, TxId)>() + 1)
            + self.held.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(id: u64, day: u32) -> Refundable {
        let gave = Gave { earned: 125, bonus: 40, cashback: 50 };
        Refundable::new(TxId(id), 42, (10_000, 20_000), gave, (day, 1), false).unwrap()
    }

    fn refund(amount: u64) -> LifecycleEvent {
        LifecycleEvent::Refund { amount, left: 0 }
    }

    #[test]
    fn a_page_walks_the_purchases_of_a_range_of_days() {
        let mut table = Purchases::default();
        for (id, day) in [(1, 10), (2, 11), (3, 11), (4, 11), (5, 12), (6, 14)] {
            table.push(purchase(id, day), receipt_key(1, &format!("R{id}")));
        }
        let ids =
            |page: Vec<(Refundable, u64)>| page.iter().map(|(p, _)| p.id.0).collect::<Vec<_>>();
        assert_eq!(ids(table.page((11, 12), None, 10)), [2, 3, 4, 5]);
        assert_eq!(ids(table.page((11, 12), None, 2)), [2, 3]);
        assert_eq!(ids(table.page((11, 12), Some(TxId(3)), 2)), [4, 5]);
        assert_eq!(ids(table.page((11, 12), Some(TxId(5)), 2)), Vec::<u64>::new());
        assert_eq!(ids(table.page((13, 13), None, 9)), Vec::<u64>::new());
        assert_eq!(ids(table.page((0, u32::MAX), Some(TxId(1)), 9)), [2, 3, 4, 5, 6]);
        let (_, key) = table.page((14, 14), None, 1)[0];
        assert_eq!(key, receipt_key(1, "R6"));
    }

    #[test]
    fn an_entry_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Refundable>(), 64);
    }

    #[test]
    fn a_purchase_giving_more_than_u32_of_a_component_is_not_kept() {
        let gave = Gave { earned: u64::from(u32::MAX) + 1, bonus: 0, cashback: 0 };
        assert!(Refundable::new(TxId(1), 1, (1, 1), gave, (1, 1), false).is_none());
        let gave = Gave { earned: u64::from(u32::MAX), bonus: 0, cashback: 0 };
        let entry = Refundable::new(TxId(1), 1, (1, 1), gave, (1, 1), false).unwrap();
        assert_eq!(entry.gave().earned, u64::from(u32::MAX));
    }

    #[test]
    fn purchases_are_found_by_id_and_receipt_and_forgotten_by_day() {
        let mut purchases = Purchases::default();
        let receipt = receipt_key(7, "R-1");
        assert_ne!(receipt, receipt_key(8, "R-1"));
        assert_eq!(receipt_key(7, ""), 0);
        for (id, day, key) in [(10, 100, receipt), (11, 100, 0), (15, 101, 0), (20, 103, 0)] {
            purchases.push(purchase(id, day), key);
        }
        assert_eq!(purchases.get(TxId(15)).map(|p| p.day), Some(101));
        assert_eq!(purchases.by_receipt(receipt).map(|p| p.id), Some(TxId(10)));
        assert!(purchases.get(TxId(12)).is_none());
        purchases.get_mut(TxId(11)).unwrap().state = LifecycleState::Settled;
        assert_eq!(purchases.forget_before(101), 2);
        assert!(purchases.get(TxId(11)).is_none());
        assert!(purchases.by_receipt(receipt).is_none());
        assert_eq!(purchases.len(), 2);
        assert_eq!(purchases.forget_before(101), 0);
        assert_eq!(purchases.iter().map(|(p, _)| p.id.0).collect::<Vec<_>>(), [15, 20]);
    }

    #[test]
    fn a_reused_receipt_finds_the_newest_purchase_until_it_is_forgotten() {
        let mut purchases = Purchases::default();
        let receipt = receipt_key(7, "R-1");
        purchases.push(purchase(10, 100), receipt);
        purchases.push(purchase(20, 102), receipt);
        assert_eq!(purchases.by_receipt(receipt).map(|p| p.id), Some(TxId(20)));
        // Forgetting the older one keeps the index of the newer.
        purchases.forget_before(101);
        assert_eq!(purchases.by_receipt(receipt).map(|p| p.id), Some(TxId(20)));
    }

    #[test]
    fn held_purchases_are_queued_and_kept_until_their_hold_ends() {
        let mut purchases = Purchases::default();
        let gave = Gave { earned: 10, bonus: 0, cashback: 0 };
        for id in [1, 2, 3] {
            let entry = Refundable::new(TxId(id), 1, (100, 100), gave, (5, 1), id != 2).unwrap();
            purchases.push(entry, 0);
        }
        let held =
            |purchases: &Purchases| purchases.held_iter().map(|p| p.id.0).collect::<Vec<_>>();
        assert_eq!(held(&purchases), [1, 3]);
        // A held purchase is not forgotten, nor anything after it.
        assert_eq!(purchases.forget_before(6), 0);
        let settle =
            purchases.get(TxId(1)).unwrap().transition(LifecycleEvent::Settle, Basis::Spend);
        purchases.get_mut(TxId(1)).unwrap().apply(&settle.unwrap());
        assert!(!purchases.get(TxId(1)).unwrap().held());
        purchases.trim_held();
        assert_eq!(held(&purchases), [3]);
        assert_eq!(purchases.forget_before(6), 2);
        assert_eq!(held(&purchases), [3]);
    }

    #[test]
    #[should_panic(expected = "ids increase")]
    fn an_older_id_after_a_newer_is_a_bug() {
        let mut purchases = Purchases::default();
        purchases.push(purchase(20, 1), 0);
        purchases.push(purchase(10, 1), 0);
    }

    #[test]
    fn refunds_then_a_chargeback_take_back_exactly_what_the_purchase_gave() {
        let mut entry = purchase(1, 1);
        assert_eq!(entry.transition(refund(1), Basis::Spend), Err(LifecycleError::NotSettled));
        let settled = entry.transition(LifecycleEvent::Settle, Basis::Spend).unwrap();
        assert_eq!((settled.state, settled.earned, settled.bonus), (LifecycleState::Settled, 0, 0));
        entry.apply(&settled);
        // 33.33 of 100.00: ⌊125 × 3333 / 10000⌋ = 41, ⌊40 × …⌋ = 13, ⌊50 × …⌋ = 16.
        let first = entry.transition(refund(3_333), Basis::Spend).unwrap();
        assert_eq!(
            first,
            Transition {
                state: LifecycleState::PartlyRefunded,
                refunded: 3_333,
                basis: Basis::Spend,
                earned: 41,
                bonus: 13,
                cashback: 16,
            }
        );
        entry.apply(&first);
        // More than is left is refused; `left` comes from the entry, not the caller.
        assert_eq!(
            entry
                .transition(LifecycleEvent::Refund { amount: 6_668, left: u64::MAX }, Basis::Spend),
            Err(LifecycleError::RefundExceedsPurchase)
        );
        // The other basis is refused once one was used.
        assert_eq!(
            entry.transition(refund(1), Basis::Weight),
            Err(LifecycleError::RefundBasisMismatch)
        );
        // A chargeback of the rest takes back all that is left.
        let fail = entry.transition(LifecycleEvent::Fail, Basis::Spend).unwrap();
        assert_eq!(
            (fail.state, fail.refunded, fail.earned, fail.bonus, fail.cashback),
            (LifecycleState::Failed, 10_000, 84, 27, 34)
        );
        let gave = entry.gave();
        assert_eq!(first.earned + fail.earned, gave.earned);
        assert_eq!(first.bonus + fail.bonus, gave.bonus);
        assert_eq!(first.cashback + fail.cashback, gave.cashback);
        // Once failed, a refund of either basis is refused as failed.
        entry.apply(&fail);
        assert_eq!(entry.transition(refund(1), Basis::Weight), Err(LifecycleError::PurchaseFailed));
    }

    #[test]
    fn refunds_by_lines_count_weight_and_end_refunded() {
        let mut entry = purchase(1, 1);
        entry.apply(&entry.transition(LifecycleEvent::Settle, Basis::Spend).unwrap());
        // Half the weight: half of each component, rounded down.
        let half = entry.transition(refund(10_000), Basis::Weight).unwrap();
        assert_eq!((half.earned, half.bonus, half.cashback), (62, 20, 25));
        entry.apply(&half);
        assert_eq!(entry.basis(), Basis::Weight);
        assert_eq!(
            entry.transition(refund(1), Basis::Spend),
            Err(LifecycleError::RefundBasisMismatch)
        );
        let rest = entry.transition(refund(10_000), Basis::Weight).unwrap();
        assert_eq!(
            (rest.state, rest.earned, rest.bonus, rest.cashback),
            (LifecycleState::Refunded, 63, 20, 25)
        );
    }

    #[test]
    fn a_pending_purchase_fails_whole_and_a_refunded_one_cannot_fail() {
        let entry = purchase(1, 1);
        let fail = entry.transition(LifecycleEvent::Fail, Basis::Spend).unwrap();
        assert_eq!((fail.earned, fail.bonus, fail.cashback), (125, 40, 50));
        let refunded = Refundable { refunded: 10_000, state: LifecycleState::Refunded, ..entry };
        assert_eq!(
            refunded.transition(LifecycleEvent::Fail, Basis::Spend),
            Err(LifecycleError::AlreadyRefunded)
        );
        // A purchase of no basis (all lines excluded) still fails whole.
        let gave = Gave { earned: 0, bonus: 0, cashback: 100 };
        let empty = Refundable::new(TxId(2), 1, (500, 0), gave, (1, 1), false).unwrap();
        let empty = Refundable { flags: Refundable::BY_LINES, ..empty };
        assert_eq!(empty.transition(LifecycleEvent::Fail, Basis::Spend).unwrap().cashback, 100);
    }

    #[test]
    fn lines_weigh_their_category_multiplier_and_excluded_lines_nothing() {
        let rules = crate::testing::loyalty::example_rules();
        let line = |category, amount, excluded| Line { category, amount, excluded };
        // Groceries ×1, electronics ×2, gift cards excluded, a line excluded by the till.
        let lines = [line(10, 1_234, false), line(20, 5_000, false), line(40, 2_500, false)];
        assert_eq!(weight(&rules, &lines), 1_234 + 10_000);
        assert_eq!(weight(&rules, &[line(20, 5_000, true)]), 0);
        assert_eq!(weight(&rules, &[line(99, 700, false)]), 700, "an unnamed category weighs 1");
        assert_eq!(weight(&rules, &[line(30, u64::MAX, false)]), u64::MAX, "saturates");
    }
}
