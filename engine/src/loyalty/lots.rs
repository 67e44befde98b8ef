//! Point lots: every credit of points to a customer is a lot that expires at a midnight, and
//! every debit takes from the lots that expire first. Docs: docs/loyalty.md, "Point lots".
//!
//! A lot is all the points of one kind a customer was credited that expire on one day: a
//! credit whose kind and expiry day match an existing lot adds to it, so a customer has at
//! most one lot per kind and expiry day, however many purchases they make.

use smallvec::SmallVec;

use crate::ids::TxId;

/// Lots one customer can hold (format limit): one per kind (3) and expiry day over the longest
/// life (120 months, 3,653 days) fits with room.
pub const LOTS_PER_MEMBER_MAX: usize = 16_384;

/// How a lot's points were credited, which decides how long they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LotKind {
    /// Points a purchase earned (base, category, tier), and any credit not listed below
    /// (adjustments, reversed redemptions): `earned_months`.
    Earned = 1,
    /// Promotion points of a purchase: `bonus_months`.
    Bonus = 2,
    /// Points received from another customer: `transfer_months`.
    Transfer = 3,
}

impl LotKind {
    /// The kind for a stored byte.
    pub fn from_u8(value: u8) -> Option<LotKind> {
        Some(match value {
            1 => LotKind::Earned,
            2 => LotKind::Bonus,
            3 => LotKind::Transfer,
            _ => return None,
        })
    }

    /// A stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            LotKind::Earned => "earned",
            LotKind::Bonus => "bonus",
            LotKind::Transfer => "transfer",
        }
    }
}

/// One lot of a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lot {
    /// The transaction whose credit opened it.
    pub origin: TxId,
    /// How it was credited.
    pub kind: LotKind,
    /// It expires at 00:00 UTC of this day (days since 1970-01-01).
    pub expires_day: u32,
    /// Points credited into it.
    pub amount: u64,
    /// Points left: never 0 (a spent lot is dropped).
    pub remaining: u64,
}

impl Lot {
    fn part(&self, amount: u64) -> LotPart {
        LotPart { origin: self.origin, kind: self.kind, expires_day: self.expires_day, amount }
    }
}

/// Points taken from one lot (to be spent, reserved by a hold, or in flight in a transfer),
/// with what it takes to put them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotPart {
    /// The lot's origin.
    pub origin: TxId,
    /// The lot's kind.
    pub kind: LotKind,
    /// The lot's expiry day.
    pub expires_day: u32,
    /// Points taken.
    pub amount: u64,
}

/// Parts taken by one debit, inline up to four lots.
pub type Parts = SmallVec<[LotPart; 4]>;

/// What a refund or a failed payment takes back from a customer's lots
/// (docs/loyalty.md, "Purchase lifecycle and refunds").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenBack {
    /// The parts taken: from the purchase's own lots first, then from the others.
    pub parts: Parts,
    /// What the lots could not give: recorded as a receivable, never as a negative balance.
    pub short: u64,
}

/// Lots a member holds without a heap allocation: the common case (an earned and a bonus lot
/// on a couple of days) lives inside the member's slot.
pub const LOTS_INLINE: usize = 4;

/// A customer's lots, in spending order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lots {
    lots: SmallVec<[Lot; LOTS_INLINE]>,
}

impl Lots {
    /// The lots, in spending order.
    pub fn iter(&self) -> impl Iterator<Item = &Lot> {
        self.lots.iter()
    }

    /// Lots held.
    pub fn len(&self) -> usize {
        self.lots.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.lots.is_empty()
    }

    /// Points left in every lot.
    pub fn total(&self) -> u128 {
        self.lots.iter().map(|lot| u128::from(lot.remaining)).sum()
    }

    /// The day the earliest lot expires: where the expiry index files the customer.
    pub fn first_day(&self) -> Option<u32> {
        self.lots.first().map(|lot| lot.expires_day)
    }

    /// Adds points: to the lot of the same kind and expiry day if there is one (its origin
    /// stays the first credit's), else as a new lot.
    pub fn credit(&mut self, part: LotPart) {
        assert!(part.amount > 0, "lots hold points");
        let key = (part.expires_day, part.kind);
        let position = self.lots.partition_point(|lot| (lot.expires_day, lot.kind) < key);
        match self.lots.get_mut(position) {
            Some(lot) if (lot.expires_day, lot.kind) == key => {
                lot.amount = lot.amount.saturating_add(part.amount);
                lot.remaining += part.amount;
            }
            _ => {
                assert!(self.lots.len() < LOTS_PER_MEMBER_MAX, "lots per member are bounded");
                let lot = Lot {
                    origin: part.origin,
                    kind: part.kind,
                    expires_day: part.expires_day,
                    amount: part.amount,
                    remaining: part.amount,
                };
                self.lots.insert(position, lot);
            }
        }
    }

    /// Takes `amount` points, from the lots that expire first; the caller knows they are
    /// there. Returns the parts taken.
    pub fn take(&mut self, mut amount: u64) -> Parts {
        let mut parts = Parts::new();
        let mut emptied = 0;
        for lot in &mut self.lots {
            if amount == 0 {
                break;
            }
            let taken = lot.remaining.min(amount);
            parts.push(lot.part(taken));
            lot.remaining -= taken;
            amount -= taken;
            if lot.remaining == 0 {
                emptied += 1;
            }
        }
        assert_eq!(amount, 0, "a debit never takes more points than the lots hold");
        // The emptied lots are a prefix: all but possibly the last part's lot were emptied.
        self.lots.drain(..emptied);
        parts
    }

    /// Takes back up to `amount` points: first from the lots `first` names (kind and expiry
    /// day, in that order: the lots a purchase credited), then from the others, the earliest
    /// first. What the lots cannot give is `short`.
    pub fn take_back(&mut self, first: &[(LotKind, u32)], amount: u64) -> TakenBack {
        let mut back = TakenBack::default();
        let mut left = amount;
        for &(kind, day) in first {
            let key = (day, kind);
            let position = self.lots.partition_point(|lot| (lot.expires_day, lot.kind) < key);
            let Some(lot) =
                self.lots.get_mut(position).filter(|lot| (lot.expires_day, lot.kind) == key)
            else {
                continue;
            };
            let taken = lot.remaining.min(left);
            if taken == 0 {
                continue;
            }
            back.parts.push(lot.part(taken));
            lot.remaining -= taken;
            left -= taken;
            if lot.remaining == 0 {
                self.lots.remove(position);
            }
        }
        let held = u64::try_from(self.total()).unwrap_or(u64::MAX);
        let from_others = left.min(held);
        back.parts.extend(self.take(from_others));
        back.short = left - from_others;
        back
    }

    /// Removes exactly `parts` (each the whole remainder of its lot): the expiry of due lots.
    /// Returns false, changing nothing, if a part does not match a lot's remainder.
    pub fn remove_exact(&mut self, parts: &[LotPart]) -> bool {
        let matches = |part: &LotPart| {
            self.lots.iter().any(|lot| {
                (lot.origin, lot.kind, lot.expires_day, lot.remaining)
                    == (part.origin, part.kind, part.expires_day, part.amount)
            })
        };
        if !parts.iter().all(matches) {
            return false;
        }
        for part in parts {
            let position = self
                .lots
                .iter()
                .position(|lot| {
                    (lot.origin, lot.kind, lot.expires_day)
                        == (part.origin, part.kind, part.expires_day)
                })
                .expect("checked above");
            self.lots.remove(position);
        }
        true
    }

    /// The lots that expire on or before `day`, whole, as parts.
    pub fn due(&self, day: u32) -> Parts {
        self.lots
            .iter()
            .take_while(|lot| lot.expires_day <= day)
            .map(|lot| lot.part(lot.remaining))
            .collect()
    }

    /// Restores a lot as a snapshot holds it; lots must come in spending order.
    pub fn restore(&mut self, lot: Lot) -> Result<(), &'static str> {
        if lot.remaining == 0 {
            return Err("lot with nothing left");
        }
        if self
            .lots
            .last()
            .is_some_and(|last| (last.expires_day, last.kind) >= (lot.expires_day, lot.kind))
        {
            return Err("lots out of order");
        }
        if self.lots.len() >= LOTS_PER_MEMBER_MAX {
            return Err("too many lots");
        }
        self.lots.push(lot);
        Ok(())
    }
}

/// `amount` points of the lot of `kind` expiring on `day` opened by transaction `origin`.
#[cfg(test)]
pub(crate) fn part(origin: u64, kind: LotKind, day: u32, amount: u64) -> LotPart {
    LotPart { origin: TxId(origin), kind, expires_day: day, amount }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_of_one_kind_and_day_share_a_lot() {
        let mut lots = Lots::default();
        lots.credit(part(1, LotKind::Earned, 100, 50));
        assert_eq!(lots.first_day(), Some(100));
        lots.credit(part(2, LotKind::Earned, 100, 20));
        lots.credit(part(3, LotKind::Bonus, 100, 5));
        lots.credit(part(4, LotKind::Earned, 90, 7));
        assert_eq!(lots.first_day(), Some(90));
        let all: Vec<_> =
            lots.iter().map(|l| (l.origin.0, l.kind, l.expires_day, l.remaining)).collect();
        assert_eq!(
            all,
            [
                (4, LotKind::Earned, 90, 7),
                (1, LotKind::Earned, 100, 70),
                (3, LotKind::Bonus, 100, 5)
            ]
        );
        assert_eq!(lots.total(), 82);
    }

    #[test]
    fn debits_take_the_earliest_expiry_first_and_drop_spent_lots() {
        let mut lots = Lots::default();
        lots.credit(part(1, LotKind::Earned, 100, 50));
        lots.credit(part(2, LotKind::Bonus, 80, 30));
        lots.credit(part(3, LotKind::Transfer, 90, 20));
        let parts = lots.take(40);
        assert_eq!(
            parts.as_slice(),
            [part(2, LotKind::Bonus, 80, 30), part(3, LotKind::Transfer, 90, 10)]
        );
        assert_eq!(lots.first_day(), Some(90), "the lot of day 80 is spent and dropped");
        assert_eq!(lots.len(), 2);
        let parts = lots.take(60);
        assert_eq!(parts.len(), 2);
        assert!(lots.is_empty());
        // Spent points put back make the lot again.
        lots.credit(parts[0]);
        assert_eq!(lots.iter().next().unwrap().origin, TxId(3));
    }

    #[test]
    fn take_back_empties_the_purchase_lots_first_then_the_earliest_then_falls_short() {
        let mut lots = Lots::default();
        lots.credit(part(1, LotKind::Transfer, 50, 10));
        lots.credit(part(2, LotKind::Earned, 100, 40));
        lots.credit(part(3, LotKind::Bonus, 100, 5));
        lots.credit(part(4, LotKind::Earned, 200, 30));
        // A purchase's earned lot of day 200, then its bonus lot of day 100.
        let first = [(LotKind::Earned, 200), (LotKind::Bonus, 100)];
        let back = lots.take_back(&first, 20);
        assert_eq!(back.parts.as_slice(), [part(4, LotKind::Earned, 200, 20)]);
        assert_eq!(back.short, 0);
        let back = lots.take_back(&first, 25);
        assert_eq!(
            back.parts.as_slice(),
            [
                part(4, LotKind::Earned, 200, 10),
                part(3, LotKind::Bonus, 100, 5),
                part(1, LotKind::Transfer, 50, 10),
            ],
            "the purchase's lots, then the earliest of the others"
        );
        assert_eq!(back.short, 0);
        assert_eq!(lots.total(), 40);
        // More than is left: everything, and the rest is short.
        let back = lots.take_back(&first, 55);
        assert_eq!(back.parts.as_slice(), [part(2, LotKind::Earned, 100, 40)]);
        assert_eq!(back.short, 15);
        assert!(lots.is_empty());
        // Nothing to take: all short, nothing changes.
        assert_eq!(lots.take_back(&first, 7), TakenBack { parts: Parts::new(), short: 7 });
    }

    #[test]
    fn expiry_removes_only_the_exact_remainder() {
        let mut lots = Lots::default();
        lots.credit(part(1, LotKind::Earned, 100, 50));
        lots.credit(part(2, LotKind::Earned, 200, 50));
        let due = lots.due(150);
        assert_eq!(due.as_slice(), [part(1, LotKind::Earned, 100, 50)]);
        assert!(!lots.remove_exact(&[part(1, LotKind::Earned, 100, 49)]));
        assert_eq!(lots.total(), 100, "a part that is not a lot's remainder changes nothing");
        assert!(lots.remove_exact(&due));
        assert_eq!(lots.first_day(), Some(200));
        assert_eq!(lots.total(), 50);
        assert!(lots.due(199).is_empty());
    }
}
