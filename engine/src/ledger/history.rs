//! `History`: the recent postings that touched customer accounts, one shard's bounded memory of
//! them. It answers "recent history" queries and lets a transaction be reversed by its id.
//!
//! Entries live in a ring in the order their records were applied; each knows the previous
//! entry of the same customer account, and each account's newest entry is kept in its table
//! slot, so a customer's history is a walk back along a chain, with no per-customer allocation.
//! Transaction ids grow with the ring's order, so the entries of a transaction are found by
//! binary search. The ring keeps the last `capacity` entries; older ones are gone, and a chain
//! stops where they begin.
//!
//! Part of the ledger state: appended only when a record commits, snapshotted, and rebuilt
//! identically by replay.

use super::account::AccountId;
use super::record::TxKind;
use crate::ids::{Timestamp, TxId};

/// The sequence number meaning "no entry".
pub(crate) const NO_ENTRY: u64 = u64::MAX;

/// One posting seen from a customer account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The transaction.
    pub tx_id: TxId,
    /// When it was applied.
    pub timestamp: Timestamp,
    /// Its business kind.
    pub kind: TxKind,
    /// The customer account.
    pub account: AccountId,
    /// The other account of the posting.
    pub counterparty: AccountId,
    /// The amount moved.
    pub amount: u64,
    /// What happened to the account (`HistoryEntry::CREDIT`, …).
    pub flags: u8,
    /// Position of the posting in its transaction, and how many postings it has (reversal
    /// needs all of them).
    pub posting: u8,
    /// Postings of the transaction.
    pub postings: u8,
    /// Sequence of the previous entry of the same account (`NO_ENTRY`: none).
    pub(crate) previous: u64,
}

impl HistoryEntry {
    /// The account was credited (otherwise debited).
    pub const CREDIT: u8 = 1;
    /// A hold reserved the amount (pending, not posted).
    pub const HOLD: u8 = 2;
    /// A hold's reservation was released (voided or expired).
    pub const RELEASE: u8 = 4;
    /// The entry comes from a plain transaction, which can be reversed.
    pub const REVERSIBLE: u8 = 8;
    /// The transaction was reversed.
    pub const REVERSED: u8 = 16;
    const KNOWN: u8 = 31;

    /// Whether a flag is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// The change to the account's posted balance.
    pub fn posted_delta(&self) -> i128 {
        if self.has(HistoryEntry::HOLD) || self.has(HistoryEntry::RELEASE) {
            0
        } else if self.has(HistoryEntry::CREDIT) {
            i128::from(self.amount)
        } else {
            -i128::from(self.amount)
        }
    }

    /// Whether `flags` is a valid flag set (for decoders).
    pub(crate) fn flags_are_known(flags: u8) -> bool {
        flags & !HistoryEntry::KNOWN == 0
    }
}

/// The ring of recent entries.
#[derive(Debug, Clone)]
pub(crate) struct History {
    /// Grows to `capacity`, then wraps: the entry of sequence `s` is at `(s - base) % capacity`.
    ring: Vec<HistoryEntry>,
    capacity: usize,
    /// The sequence stored at ring position 0 when the ring was (re)started: 0 for a new
    /// ledger, the first restored sequence for one loaded from a snapshot.
    base: u64,
    /// Sequence the next entry gets; entries `next - ring.len() .. next` are live.
    next: u64,
}

/// Two histories are equal when they remember the same entries under the same sequences,
/// wherever the ring happens to keep them.
impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        self.capacity == other.capacity
            && self.next == other.next
            && self.ring.len() == other.ring.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for History {}

impl History {
    pub(crate) fn new(capacity: usize) -> History {
        assert!(capacity > 0);
        // Reserved, not touched: pages are faulted in as the ring fills, and it never
        // reallocates (a reallocation would copy the whole ring inside a batch).
        History { ring: Vec::with_capacity(capacity), capacity, base: 0, next: 0 }
    }

    /// The sequence of the oldest entry held.
    pub(crate) fn oldest(&self) -> u64 {
        self.next - self.ring.len() as u64
    }

    fn index(&self, sequence: u64) -> usize {
        let offset = (sequence - self.base) % self.capacity as u64;
        usize::try_from(offset).expect("below the capacity, a usize")
    }

    /// The entry with this sequence, if it is still remembered.
    pub(crate) fn get(&self, sequence: u64) -> Option<&HistoryEntry> {
        if sequence == NO_ENTRY || sequence < self.oldest() || sequence >= self.next {
            return None;
        }
        self.ring.get(self.index(sequence))
    }

    /// Appends an entry and returns its sequence.
    pub(crate) fn push(&mut self, entry: HistoryEntry) -> u64 {
        debug_assert!(
            self.ring.is_empty() || self.newest().is_some_and(|last| last.tx_id <= entry.tx_id)
        );
        let sequence = self.next;
        if self.ring.len() < self.capacity {
            self.ring.push(entry);
        } else {
            let index = self.index(sequence);
            self.ring[index] = entry;
        }
        self.next += 1;
        sequence
    }

    fn newest(&self) -> Option<&HistoryEntry> {
        self.next.checked_sub(1).and_then(|sequence| self.get(sequence))
    }

    /// Sequences of the entries of transaction `tx_id`, oldest first (binary search: ids grow
    /// with the ring).
    pub(crate) fn entries_of(&self, tx_id: TxId) -> std::ops::Range<u64> {
        let (oldest, next) = (self.oldest(), self.next);
        let at = |sequence: u64| self.ring[self.index(sequence)].tx_id;
        let first = partition_point(oldest, next, |sequence| at(sequence) < tx_id);
        let end = partition_point(first, next, |sequence| at(sequence) <= tx_id);
        first..end
    }

    /// Sets `flag` on the entry with this sequence.
    pub(crate) fn mark(&mut self, sequence: u64, flag: u8) {
        if self.get(sequence).is_some() {
            let index = self.index(sequence);
            self.ring[index].flags |= flag;
        }
    }

    /// Clears `flag` of entry `sequence`, if the ring still holds it.
    pub(crate) fn unmark(&mut self, sequence: u64, flag: u8) {
        if self.get(sequence).is_some() {
            let index = self.index(sequence);
            self.ring[index].flags &= !flag;
        }
    }

    /// Live entries, oldest first, with their sequences (for snapshots).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &HistoryEntry)> {
        (self.oldest()..self.next).map(|sequence| (sequence, &self.ring[self.index(sequence)]))
    }

    /// Entries remembered.
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// Entries remembered at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The sequence the next entry gets.
    pub(crate) fn next_sequence(&self) -> u64 {
        self.next
    }

    /// Rebuilds the ring from a snapshot: entries from sequence `first` on, in order.
    pub(crate) fn restore(&mut self, first: u64, entries: Vec<HistoryEntry>) -> bool {
        if entries.len() > self.capacity {
            return false;
        }
        self.ring.clear();
        self.ring.reserve_exact(self.capacity);
        self.base = first;
        self.next = first;
        for entry in entries {
            self.push(entry);
        }
        true
    }
}

/// The first sequence in `low..high` for which `before` is false (`before` is true on a prefix).
fn partition_point(mut low: u64, mut high: u64, before: impl Fn(u64) -> bool) -> u64 {
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::account::ClassId;

    fn entry(tx: u64) -> HistoryEntry {
        HistoryEntry {
            tx_id: TxId(tx),
            timestamp: Timestamp(tx),
            kind: TxKind::PURCHASE,
            account: AccountId::new(ClassId(1), tx % 3),
            counterparty: AccountId::new(ClassId(2), 0),
            amount: tx,
            flags: HistoryEntry::CREDIT,
            posting: 0,
            postings: 1,
            previous: NO_ENTRY,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_entries_and_finds_a_transaction() {
        let mut history = History::new(4);
        for tx in [10, 20, 20, 30, 40, 50] {
            history.push(entry(tx));
        }
        // Capacity 4: the entries of 10 and the first of 20 are gone.
        assert_eq!(history.get(0), None);
        assert_eq!(history.get(1), None);
        assert_eq!(history.get(2).map(|e| e.tx_id), Some(TxId(20)));
        assert_eq!(history.entries_of(TxId(20)), 2..3);
        assert_eq!(history.entries_of(TxId(40)), 4..5);
        assert!(history.entries_of(TxId(35)).is_empty());
        assert!(history.entries_of(TxId(10)).is_empty());
        history.mark(4, HistoryEntry::REVERSED);
        assert!(history.get(4).unwrap().has(HistoryEntry::REVERSED));
        let sequences: Vec<u64> = history.iter().map(|(s, _)| s).collect();
        assert_eq!(sequences, vec![2, 3, 4, 5]);
        let mut restored = History::new(4);
        assert!(restored.restore(2, history.iter().map(|(_, e)| *e).collect()));
        assert_eq!(restored, history);
    }
}
