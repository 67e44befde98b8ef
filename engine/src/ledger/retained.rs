//! `Retained`: a map whose entries are remembered for a retention window and up to a capacity.
//!
//! It backs the idempotency table and the tombstones of closed holds. Entries are inserted in
//! timestamp order (a shard's record timestamps never decrease), so the oldest entry is always
//! at the front of `order`, and expiring or evicting is O(1) per entry.
//!
//! Determinism: the map changes only when a record is applied, as a function of that record's
//! timestamp, so a state rebuilt from the WAL holds exactly the same entries, in the same order,
//! as the live one. Lookups treat entries past their window as absent even before the next
//! record sweeps them out.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use crate::ids::Timestamp;

type Hasher = foldhash::fast::RandomState;

/// A bounded, time-windowed map.
#[derive(Debug, Clone)]
pub(crate) struct Retained<K, V> {
    map: HashMap<K, (Timestamp, V), Hasher>,
    /// Keys in insertion (= timestamp) order, with their insertion time.
    order: VecDeque<(Timestamp, K)>,
    /// Entries kept at most; the oldest goes first when a new one would exceed it.
    capacity: usize,
    /// How long an entry is remembered, in nanoseconds.
    retention_nanos: u64,
    /// Entries evicted by capacity while still inside their window.
    evicted_early: u64,
}

impl<K: Hash + Eq + Copy, V> Retained<K, V> {
    pub(crate) fn new(capacity: usize, retention_nanos: u64) -> Retained<K, V> {
        assert!(capacity > 0);
        Retained {
            map: HashMap::with_hasher(Hasher::default()),
            order: VecDeque::new(),
            capacity,
            retention_nanos,
            evicted_early: 0,
        }
    }

    fn live(&self, inserted: Timestamp, now: Timestamp) -> bool {
        inserted.plus_nanos(self.retention_nanos) > now
    }

    /// The entry for `key`, if it is still inside its window at `now`.
    pub(crate) fn get(&self, key: &K, now: Timestamp) -> Option<&V> {
        let (inserted, value) = self.map.get(key)?;
        self.live(*inserted, now).then_some(value)
    }

    /// Inserts an entry at `now`. The key must not be present (callers look it up first).
    pub(crate) fn insert(&mut self, key: K, value: V, now: Timestamp) {
        self.expire(now);
        while self.map.len() >= self.capacity {
            let (inserted, oldest) = self.order.pop_front().expect("map and order agree");
            if self.live(inserted, now) {
                self.evicted_early += 1;
            }
            self.map.remove(&oldest);
        }
        debug_assert!(self.order.back().is_none_or(|(last, _)| *last <= now));
        let previous = self.map.insert(key, (now, value));
        assert!(previous.is_none(), "retained key inserted twice");
        self.order.push_back((now, key));
    }

    /// Drops every entry whose window ended at or before `now`.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        while let Some((inserted, key)) = self.order.front().copied() {
            if self.live(inserted, now) {
                break;
            }
            self.order.pop_front();
            self.map.remove(&key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Entries in insertion order, for snapshots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Timestamp, &K, &V)> {
        self.order.iter().map(|(inserted, key)| {
            let (_, value) = self.map.get(key).expect("map and order agree");
            (*inserted, key, value)
        })
    }

    /// Restores an entry from a snapshot; entries must come in insertion order. If the
    /// capacity was lowered since the snapshot was taken, the oldest entries make room.
    pub(crate) fn restore(&mut self, key: K, value: V, inserted: Timestamp) -> bool {
        if self.order.back().is_some_and(|(last, _)| *last > inserted)
            || self.map.contains_key(&key)
        {
            return false;
        }
        if self.map.len() >= self.capacity {
            let (_, oldest) = self.order.pop_front().expect("map and order agree");
            self.map.remove(&oldest);
        }
        self.map.insert(key, (inserted, value));
        self.order.push_back((inserted, key));
        true
    }

    pub(crate) fn restore_evicted_early(&mut self, count: u64) {
        self.evicted_early = count;
    }
}

impl<K: Hash + Eq + Copy, V: PartialEq> PartialEq for Retained<K, V> {
    fn eq(&self, other: &Retained<K, V>) -> bool {
        self.order == other.order
            && self.evicted_early == other.evicted_early
            && self.capacity == other.capacity
            && self.retention_nanos == other.retention_nanos
            && self.map.len() == other.map.len()
            && self.map.iter().all(|(key, value)| other.map.get(key) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_window_and_capacity_evicts_the_oldest() {
        let mut retained: Retained<u32, &str> = Retained::new(3, 100);
        retained.insert(1, "a", Timestamp(0));
        retained.insert(2, "b", Timestamp(50));
        assert_eq!(retained.get(&1, Timestamp(99)), Some(&"a"));
        // At exactly the end of the window the entry is gone for lookups.
        assert_eq!(retained.get(&1, Timestamp(100)), None);
        retained.insert(3, "c", Timestamp(100));
        assert_eq!(retained.len(), 2, "key 1 was swept at t=100");
        retained.insert(4, "d", Timestamp(101));
        retained.insert(5, "e", Timestamp(102));
        // Capacity 3: key 2 (inserted at 50, window until 150) is evicted early.
        assert_eq!(retained.len(), 3);
        assert_eq!(retained.get(&2, Timestamp(102)), None);
        assert_eq!(retained.evicted_early(), 1);
        let keys: Vec<u32> = retained.iter().map(|(_, key, _)| *key).collect();
        assert_eq!(keys, vec![3, 4, 5]);
    }
}
