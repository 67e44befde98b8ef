//! The purchases a shard can still settle, fail or refund: what each transition needs of a
//! purchase, in 64 bytes, kept for the programme's refund window and found by id.
//! Docs: docs/loyalty.md, "Purchase lifecycle and refunds".
//!
//! A shard's transaction ids increase, so the table is a ring in id order: a purchase is
//! appended, found by binary search, and dropped from the front once older than the window.
//! Nothing here hashes or allocates per purchase beyond the ring's own growth.

use std::collections::VecDeque;

use super::lifecycle::{LifecycleError, LifecycleEvent, LifecycleState, next_state, refund_share};
use crate::ids::TxId;

/// What a refund, a settlement or a failure needs of one purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refundable {
    /// The purchase's transaction id.
    pub id: TxId,
    /// The member.
    pub customer: u64,
    /// Its whole spend (every line), the basis of refunds by amount.
    pub spend: u64,
    /// How much of `spend` was refunded so far.
    pub refunded: u64,
    /// Earned points it credited.
    pub earned: u64,
    /// Bonus points it credited.
    pub bonus: u64,
    /// Cashback it credited.
    pub cashback: u64,
    /// Its UTC day (its lots' days follow from it and its rule version's lot lives).
    pub day: u32,
    /// The rule version that priced it (at most `RULE_VERSIONS_MAX`, 1,024).
    pub version: u16,
    /// Where it stands.
    pub state: LifecycleState,
}

/// What a transition of a purchase takes back of each component, and where it leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state after.
    pub state: LifecycleState,
    /// Spend refunded after it.
    pub refunded: u64,
    /// Earned points taken back.
    pub earned: u64,
    /// Bonus points taken back.
    pub bonus: u64,
    /// Cashback taken back.
    pub cashback: u64,
}

impl Refundable {
    /// What `event` does to this purchase: a settlement takes nothing back; a refund takes
    /// back its cumulative share of each component; a failure takes back all that is left.
    pub fn transition(&self, event: LifecycleEvent) -> Result<Transition, LifecycleError> {
        let event = match event {
            LifecycleEvent::Refund { amount, .. } => {
                LifecycleEvent::Refund { amount, left: self.spend - self.refunded }
            }
            other => other,
        };
        let state = next_state(self.state, event)?;
        let now = match event {
            LifecycleEvent::Settle => 0,
            LifecycleEvent::Fail => self.spend - self.refunded,
            LifecycleEvent::Refund { amount, .. } => amount,
        };
        let share = |total| refund_share(total, self.spend, self.refunded, now);
        Ok(Transition {
            state,
            refunded: self.refunded + now,
            earned: share(self.earned),
            bonus: share(self.bonus),
            cashback: share(self.cashback),
        })
    }
}

/// The refundable purchases of one shard, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purchases {
    entries: VecDeque<Refundable>,
}

impl Purchases {
    /// Adds a purchase, which is newer than every other.
    pub fn push(&mut self, purchase: Refundable) {
        assert!(
            self.entries.back().is_none_or(|last| last.id < purchase.id),
            "a shard's transaction ids increase"
        );
        self.entries.push_back(purchase);
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

    /// Drops the purchases made before `day` (the first day still in the window); returns how
    /// many.
    pub fn forget_before(&mut self, day: u32) -> usize {
        let old = self.entries.partition_point(|entry| entry.day < day);
        self.entries.drain(..old);
        old
    }

    /// Purchases held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every purchase held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Refundable> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(id: u64, day: u32) -> Refundable {
        Refundable {
            id: TxId(id),
            customer: 42,
            spend: 10_000,
            refunded: 0,
            earned: 125,
            bonus: 40,
            cashback: 50,
            day,
            version: 1,
            state: LifecycleState::Pending,
        }
    }

    #[test]
    fn an_entry_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Refundable>(), 64);
    }

    #[test]
    fn purchases_are_found_by_id_and_forgotten_by_day() {
        let mut purchases = Purchases::default();
        for (id, day) in [(10, 100), (11, 100), (15, 101), (20, 103)] {
            purchases.push(purchase(id, day));
        }
        assert_eq!(purchases.get(TxId(15)).map(|p| p.day), Some(101));
        assert!(purchases.get(TxId(12)).is_none());
        purchases.get_mut(TxId(11)).unwrap().state = LifecycleState::Settled;
        assert_eq!(purchases.forget_before(101), 2);
        assert!(purchases.get(TxId(11)).is_none());
        assert_eq!(purchases.len(), 2);
        assert_eq!(purchases.forget_before(101), 0);
        assert_eq!(purchases.iter().map(|p| p.id.0).collect::<Vec<_>>(), [15, 20]);
    }

    #[test]
    #[should_panic(expected = "ids increase")]
    fn an_older_id_after_a_newer_is_a_bug() {
        let mut purchases = Purchases::default();
        purchases.push(purchase(20, 1));
        purchases.push(purchase(10, 1));
    }

    #[test]
    fn refunds_then_a_chargeback_take_back_exactly_what_the_purchase_gave() {
        let mut entry = purchase(1, 1);
        assert_eq!(
            entry.transition(LifecycleEvent::Refund { amount: 1, left: 0 }),
            Err(LifecycleError::NotSettled)
        );
        let settled = entry.transition(LifecycleEvent::Settle).unwrap();
        assert_eq!((settled.state, settled.earned, settled.bonus), (LifecycleState::Settled, 0, 0));
        entry.state = settled.state;
        // 33.33 of 100.00: ⌊125 × 3333 / 10000⌋ = 41, ⌊40 × …⌋ = 13, ⌊50 × …⌋ = 16.
        let first = entry.transition(LifecycleEvent::Refund { amount: 3_333, left: 0 }).unwrap();
        assert_eq!(
            first,
            Transition {
                state: LifecycleState::PartlyRefunded,
                refunded: 3_333,
                earned: 41,
                bonus: 13,
                cashback: 16,
            }
        );
        entry.state = first.state;
        entry.refunded = first.refunded;
        // More than is left is refused; `left` comes from the entry, not the caller.
        assert_eq!(
            entry.transition(LifecycleEvent::Refund { amount: 6_668, left: u64::MAX }),
            Err(LifecycleError::RefundExceedsPurchase)
        );
        // A chargeback of the rest takes back all that is left.
        let fail = entry.transition(LifecycleEvent::Fail).unwrap();
        assert_eq!(
            (fail.state, fail.refunded, fail.earned, fail.bonus, fail.cashback),
            (LifecycleState::Failed, 10_000, 84, 27, 34)
        );
        assert_eq!(first.earned + fail.earned, entry.earned);
        assert_eq!(first.bonus + fail.bonus, entry.bonus);
        assert_eq!(first.cashback + fail.cashback, entry.cashback);
    }

    #[test]
    fn a_pending_purchase_fails_whole_and_a_refunded_one_cannot_fail() {
        let entry = purchase(1, 1);
        let fail = entry.transition(LifecycleEvent::Fail).unwrap();
        assert_eq!((fail.earned, fail.bonus, fail.cashback), (125, 40, 50));
        let refunded = Refundable { refunded: 10_000, state: LifecycleState::Refunded, ..entry };
        assert_eq!(refunded.transition(LifecycleEvent::Fail), Err(LifecycleError::AlreadyRefunded));
    }
}
