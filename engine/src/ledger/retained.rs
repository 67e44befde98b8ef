//! `Retained`: a bounded, time-windowed memory of keys (idempotency keys, closed holds).
//!
//! Entries are kept in a ring, in insertion order (which is timestamp order: a shard's record
//! timestamps never decrease), and found through two generations of hash index holding ring
//! positions. New entries go into the current generation; when it holds `capacity / 2`
//! entries, the previous generation is forgotten all at once and the current one becomes the
//! previous. So an entry is remembered for at least `capacity / 2` and at most `capacity`
//! later insertions, and for at most the retention window: a lookup ignores entries older than
//! the window.
//!
//! Why this shape: the table is large (millions of keys) and touched by every write, so each
//! random memory access costs. Forgetting a whole generation at once replaces a random-access
//! removal per insertion by one sequential clear; the ring makes insertion and the snapshot's
//! ordered walk sequential; both are allocated once, so the table never rehashes or grows.
//!
//! Determinism: the structure changes only when a record is applied, as a function of that
//! record, so a state rebuilt from the WAL holds exactly the same entries and generations.

use std::hash::{BuildHasher, Hash};

use crate::ids::Timestamp;

type Hasher = foldhash::fast::FixedState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot<K, V> {
    inserted: Timestamp,
    key: K,
    value: V,
}

/// The hash index of one generation: open addressing with linear probing over `u64` slots
/// holding a 32-bit tag of the key's hash and the key's ring offset plus one (zero: empty).
/// At most half full, so a lookup of an absent key ends after two or three slots; cleared all
/// at once. A key itself is compared (in the ring) only when its tag matches.
#[derive(Debug, Clone)]
struct GenerationIndex {
    slots: Vec<u64>,
    /// `slots.len() - 1`; `slots.len()` is a power of two.
    mask: usize,
    len: usize,
}

const TAG_MASK: u64 = 0xFFFF_FFFF_0000_0000;

impl GenerationIndex {
    fn new(entries_max: usize) -> GenerationIndex {
        let slots = (entries_max.max(1) * 2).next_power_of_two().max(8);
        GenerationIndex { slots: vec![0; slots], mask: slots - 1, len: 0 }
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// The ring offset of the newest entry of this generation whose key `matches`.
    ///
    /// A key can be in a generation more than once: used again after its window ended, it is
    /// inserted anew while its expired entry is still indexed. Insertion appends to the end
    /// of the probe chain (nothing is ever removed from a chain, only whole generations are
    /// cleared), so the newest use is the last match before the empty slot. A lookup of an
    /// absent key, the common case, reads to that empty slot anyway.
    fn find(&self, hash: u64, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = hash & TAG_MASK;
        let mut index = self.home(hash);
        let mut found = None;
        loop {
            let slot = self.slots[index];
            if slot == 0 {
                return found;
            }
            if slot & TAG_MASK == tag {
                let offset = u32::try_from((slot & !TAG_MASK) - 1).expect("offsets fit in u32");
                if matches(offset) {
                    found = Some(offset);
                }
            }
            index = (index + 1) & self.mask;
        }
    }

    fn insert(&mut self, hash: u64, offset: u32) {
        assert!(self.len * 2 < self.slots.len(), "a generation is at most half its slots");
        let entry = (hash & TAG_MASK) | (u64::from(offset) + 1);
        let mut index = self.home(hash);
        while self.slots[index] != 0 {
            index = (index + 1) & self.mask;
        }
        self.slots[index] = entry;
        self.len += 1;
    }

    fn clear(&mut self) {
        self.slots.fill(0);
        self.len = 0;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn prefetch(&self, hash: u64) {
        crate::prefetch::prefetch_read(&self.slots[self.home(hash)]);
    }
}

/// A bounded, time-windowed map.
#[derive(Debug, Clone)]
pub(crate) struct Retained<K, V> {
    /// Entries by position `p % capacity`; positions `oldest..next` are live.
    ring: Vec<Slot<K, V>>,
    /// Position of the oldest entry of the previous generation.
    oldest: u64,
    /// Position of the first entry of the current generation.
    current_start: u64,
    /// Position the next entry gets.
    next: u64,
    /// Ring positions (as `u32` offsets modulo capacity) of the previous and current
    /// generation, indexed by the hash of their key.
    previous: GenerationIndex,
    current: GenerationIndex,
    /// Entries kept at most.
    capacity: usize,
    /// How long an entry is remembered, in nanoseconds.
    retention_nanos: u64,
    /// Entries forgotten with their generation while still inside their window.
    evicted_early: u64,
    hasher: Hasher,
}

impl<K: Hash + Eq + Copy, V: Copy> Retained<K, V> {
    pub(crate) fn new(capacity: usize, retention_nanos: u64) -> Retained<K, V> {
        assert!(capacity >= 2, "two generations of at least one entry");
        assert!(u32::try_from(capacity).is_ok(), "ring positions fit in u32");
        let generation = capacity / 2;
        Retained {
            // Reserved, not touched: pages are faulted in as entries arrive, but the ring never
            // reallocates and copies.
            ring: Vec::with_capacity(capacity),
            oldest: 0,
            current_start: 0,
            next: 0,
            previous: GenerationIndex::new(generation),
            current: GenerationIndex::new(generation),
            capacity,
            retention_nanos,
            evicted_early: 0,
            // A fixed seed: the table's layout never reaches disk, but a fixed hasher keeps
            // two replicas of a state byte-for-byte alike in memory too.
            hasher: Hasher::with_seed(0x6c65_6467_6572_6421),
        }
    }

    fn generation_max(&self) -> usize {
        self.capacity / 2
    }

    fn slot(&self, offset: u32) -> &Slot<K, V> {
        &self.ring[offset as usize]
    }

    /// Starts loading the index slots where `key` would be found, so that the lookup that
    /// follows hits the cache. Changes nothing.
    pub(crate) fn prefetch(&self, key: &K) {
        let hash = self.hasher.hash_one(key);
        self.current.prefetch(hash);
        self.previous.prefetch(hash);
    }

    fn find(&self, key: &K) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let matches = |offset: u32| self.slot(offset).key == *key;
        self.current.find(hash, matches).or_else(|| self.previous.find(hash, matches))
    }

    fn live(&self, inserted: Timestamp, now: Timestamp) -> bool {
        inserted.plus_nanos(self.retention_nanos) > now
    }

    /// The entry for `key`, if it is remembered and still inside its window at `now`.
    pub(crate) fn get(&self, key: &K, now: Timestamp) -> Option<&V> {
        let slot = self.slot(self.find(key)?);
        self.live(slot.inserted, now).then_some(&slot.value)
    }

    /// The entry for `key`, if it is remembered (inside its window or not), to change in
    /// place. Changing a value must be a function of the record being applied, like every
    /// other change (see "Determinism" above).
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let offset = self.find(key)?;
        Some(&mut self.ring[offset as usize].value)
    }

    /// Inserts an entry at `now`. The key must not be remembered inside its window (callers
    /// look it up first); an expired entry of the key stays until its generation is forgotten,
    /// and lookups find the new one.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Timestamp) {
        debug_assert!(
            self.ring.is_empty() || self.newest_inserted().is_some_and(|last| last <= now)
        );
        if self.current.len() >= self.generation_max() {
            self.rotate(now);
        }
        let offset = u32::try_from(self.next % self.capacity as u64).expect("capacity fits in u32");
        let slot = Slot { inserted: now, key, value };
        if self.ring.len() < self.capacity {
            debug_assert_eq!(self.ring.len(), offset as usize);
            self.ring.push(slot);
        } else {
            self.ring[offset as usize] = slot;
        }
        let hash = self.hasher.hash_one(key);
        self.current.insert(hash, offset);
        self.next += 1;
    }

    /// Forgets the previous generation; the current one becomes the previous.
    fn rotate(&mut self, now: Timestamp) {
        for position in self.oldest..self.current_start {
            let offset = (position % self.capacity as u64) as usize;
            if self.live(self.ring[offset].inserted, now) {
                self.evicted_early += 1;
            }
        }
        self.previous.clear();
        std::mem::swap(&mut self.previous, &mut self.current);
        self.oldest = self.current_start;
        self.current_start = self.next;
    }

    fn newest_inserted(&self) -> Option<Timestamp> {
        let last = self.next.checked_sub(1)?;
        self.ring.get((last % self.capacity as u64) as usize).map(|slot| slot.inserted)
    }

    /// Entries remembered (in both generations, including those past their window).
    pub(crate) fn len(&self) -> usize {
        self.previous.len() + self.current.len()
    }

    pub(crate) fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Entries of the previous generation, then of the current one, in insertion order, for
    /// snapshots; and how many belong to the previous one.
    pub(crate) fn iter(&self) -> (usize, impl Iterator<Item = (Timestamp, &K, &V)>) {
        let slots = (self.oldest..self.next).map(|position| {
            let slot = &self.ring[(position % self.capacity as u64) as usize];
            (slot.inserted, &slot.key, &slot.value)
        });
        (self.previous.len(), slots)
    }

    /// Rebuilds the table from a snapshot's entries: `previous` entries of the previous
    /// generation, then the current generation, each in insertion order. If the capacity was
    /// lowered since, the oldest entries are dropped. Returns false for invalid input (a key
    /// used twice within its window, timestamps out of order, a generation over its size).
    pub(crate) fn restore(
        &mut self,
        previous: usize,
        entries: impl ExactSizeIterator<Item = (Timestamp, K, V)>,
        evicted_early: u64,
    ) -> bool {
        let total = entries.len();
        if previous > total
            || previous > self.generation_max()
            || total - previous > self.generation_max()
        {
            return false;
        }
        let mut last = None;
        for (index, (inserted, key, value)) in entries.enumerate() {
            if last.is_some_and(|last| last > inserted) || self.get(&key, inserted).is_some() {
                return false;
            }
            last = Some(inserted);
            if index == previous {
                // The snapshot's generation boundary: what came before is the previous one.
                self.rotate(inserted);
            }
            self.insert(key, value, inserted);
        }
        if previous == total {
            self.rotate(last.unwrap_or_default());
        }
        self.evicted_early = evicted_early;
        true
    }
}

impl<K: Hash + Eq + Copy, V: Copy + PartialEq> PartialEq for Retained<K, V> {
    fn eq(&self, other: &Retained<K, V>) -> bool {
        let (previous, entries) = self.iter();
        let (other_previous, other_entries) = other.iter();
        self.capacity == other.capacity
            && self.retention_nanos == other.retention_nanos
            && self.evicted_early == other.evicted_early
            && previous == other_previous
            && self.len() == other.len()
            && entries.eq(other_entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_window() {
        let mut retained: Retained<u32, &str> = Retained::new(8, 100);
        retained.insert(1, "a", Timestamp(0));
        retained.insert(2, "b", Timestamp(50));
        assert_eq!(retained.get(&1, Timestamp(99)), Some(&"a"));
        // At exactly the end of the window the entry is gone for lookups.
        assert_eq!(retained.get(&1, Timestamp(100)), None);
        assert_eq!(retained.get(&2, Timestamp(100)), Some(&"b"));
    }

    #[test]
    fn a_key_used_again_after_its_window_is_remembered_anew() {
        let mut retained: Retained<u32, &str> = Retained::new(8, 100);
        retained.insert(1, "first", Timestamp(0));
        retained.insert(2, "other", Timestamp(10));
        // Past its window the first use is forgotten for lookups, though still in the table.
        assert_eq!(retained.get(&1, Timestamp(150)), None);
        retained.insert(1, "second", Timestamp(150));
        assert_eq!(retained.get(&1, Timestamp(150)), Some(&"second"));
        assert_eq!(retained.get(&1, Timestamp(249)), Some(&"second"));
        *retained.get_mut(&1).unwrap() = "changed";
        assert_eq!(retained.get(&1, Timestamp(200)), Some(&"changed"));
        // A third use, and a rotation that moves all of them to the previous generation.
        retained.insert(1, "third", Timestamp(300));
        retained.insert(3, "x", Timestamp(301));
        retained.insert(4, "y", Timestamp(302));
        assert_eq!(retained.get(&1, Timestamp(302)), Some(&"third"));
        // A snapshot of it restores: the expired uses are not duplicates.
        let (previous, entries) = retained.iter();
        let entries: Vec<_> = entries.map(|(t, k, v)| (t, *k, *v)).collect();
        let mut restored: Retained<u32, &str> = Retained::new(8, 100);
        assert!(restored.restore(previous, entries.clone().into_iter(), retained.evicted_early()));
        assert!(restored == retained);
        assert_eq!(restored.get(&1, Timestamp(302)), Some(&"third"));
        // But two uses inside one window are.
        let mut live_twice = entries;
        live_twice.push((Timestamp(303), 1, "again"));
        assert!(!Retained::<u32, &str>::new(8, 100).restore(0, live_twice.into_iter(), 0));
    }

    #[test]
    fn generations_bound_memory_and_count_early_evictions() {
        let mut retained: Retained<u32, u32> = Retained::new(4, 1_000);
        for key in 0..4 {
            retained.insert(key, key * 10, Timestamp(u64::from(key)));
        }
        assert_eq!(retained.len(), 4);
        // The fifth insertion forgets the first generation (keys 0 and 1), both still in window.
        retained.insert(4, 40, Timestamp(4));
        assert_eq!(retained.len(), 3);
        assert_eq!(retained.get(&0, Timestamp(4)), None);
        assert_eq!(retained.get(&1, Timestamp(4)), None);
        assert_eq!(retained.get(&2, Timestamp(4)), Some(&20));
        assert_eq!(retained.get(&4, Timestamp(4)), Some(&40));
        assert_eq!(retained.evicted_early(), 2);
        // Keys are remembered for at least capacity / 2 insertions.
        for key in 5..100u32 {
            retained.insert(key, key * 10, Timestamp(u64::from(key)));
            assert_eq!(
                retained.get(&(key - 1), Timestamp(u64::from(key))),
                Some(&((key - 1) * 10))
            );
            assert!(retained.len() <= 4);
        }
    }

    #[test]
    fn restore_rebuilds_an_equal_table() {
        let mut retained: Retained<u32, u32> = Retained::new(6, 1_000);
        for key in 0..8 {
            retained.insert(key, key, Timestamp(u64::from(key)));
        }
        let (previous, entries) = retained.iter();
        let entries: Vec<(Timestamp, u32, u32)> = entries.map(|(t, k, v)| (t, *k, *v)).collect();
        let mut restored: Retained<u32, u32> = Retained::new(6, 1_000);
        assert!(restored.restore(previous, entries.clone().into_iter(), retained.evicted_early()));
        assert!(restored == retained);
        // Both evolve identically afterwards.
        for key in 8..20 {
            retained.insert(key, key, Timestamp(u64::from(key)));
            restored.insert(key, key, Timestamp(u64::from(key)));
            assert!(restored == retained);
        }
        let mut duplicate = entries.clone();
        duplicate.push(duplicate[0]);
        assert!(!Retained::<u32, u32>::new(6, 1_000).restore(0, duplicate.into_iter(), 0));
    }
}
