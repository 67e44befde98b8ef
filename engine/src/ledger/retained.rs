//! `Retained`: a bounded, time-windowed memory of keys (idempotency keys, closed holds).
//!
//! Entries are kept in a ring, in insertion order (which is timestamp order: a shard's record
//! timestamps never decrease), and found through a hash index of two generations holding ring
//! positions. New entries go into the current generation; when it holds `capacity / 2`
//! entries, the previous generation is forgotten all at once and the current one becomes the
//! previous. So an entry is remembered for at least `capacity / 2` and at most `capacity`
//! later insertions, and for at most the retention window: a lookup ignores entries older than
//! the window.
//!
//! Why this shape: the table is large (millions of keys) and touched by every write, so each
//! random memory access costs. Forgetting a whole generation at once replaces a random-access
//! removal per insertion; both generations share each cache line of the index, so a lookup
//! costs one miss (see `Index`); the ring makes insertion and the snapshot's ordered walk
//! sequential; all of it is allocated once, so the table never rehashes or grows.
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

/// Slots per half of a bucket: a bucket is one cache line of 8 `u64` slots, 4 for each of the
/// two live generations.
const HALF_SLOTS: usize = 4;

/// One cache line of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
struct Bucket([u64; 2 * HALF_SLOTS]);

/// Distinct generation stamps (1..=65,535; 0 marks a slot never used).
const EPOCHS: u64 = 65_535;

/// The hash index of both live generations, in one array of cache-line buckets.
///
/// Generation `g` uses half `g % 2` of every bucket, and its slots carry its stamp
/// `g % 65,535 + 1`. A slot holds `tag (16 bits) | stamp (16) | ring offset (32)`. To a
/// generation, a slot with another stamp is empty: so when the previous generation is
/// forgotten, nothing is cleared: the next generation takes over that half and reads the old
/// stamps as empty. A key's home bucket is where both generations keep it, so a lookup of a
/// fresh key, the common case, costs one cache miss instead of one per generation, and one
/// prefetch covers it.
///
/// Each half is open addressing with linear probing over buckets, at most half full, so a
/// chain almost always ends in its home bucket. A stamp comes back after 65,535 generations;
/// before that, a slow sweep (`scrub`, a few buckets per rotation) has zeroed every slot of a
/// dead generation, so an old slot can never pass for a live one.
#[derive(Debug, Clone)]
struct Index {
    buckets: Vec<Bucket>,
    /// `buckets.len() - 1`; `buckets.len()` is a power of two.
    mask: usize,
    /// The current generation's number (from 0); the previous one is `generation - 1`.
    generation: u64,
    current_len: usize,
    previous_len: usize,
    /// The next bucket the sweep zeroes dead slots of, and how many it does per rotation.
    scrub_next: usize,
    scrub_per_rotation: usize,
}

const TAG_SHIFT: u32 = 48;
const STAMP_SHIFT: u32 = 32;
const STAMP_MASK: u64 = 0xFFFF;

impl Index {
    /// An index for generations of up to `entries_max` entries each.
    fn new(entries_max: usize) -> Index {
        // Each half at most half full: 2 × entries_max slots per half, 4 slots per bucket.
        let buckets = (entries_max.max(1) * 2).div_ceil(HALF_SLOTS).next_power_of_two();
        Index {
            buckets: vec![Bucket([0; 2 * HALF_SLOTS]); buckets],
            mask: buckets - 1,
            generation: 0,
            current_len: 0,
            previous_len: 0,
            scrub_next: 0,
            // Every bucket is swept within 16,384 rotations, well before a stamp comes back.
            scrub_per_rotation: buckets.div_ceil(16_384),
        }
    }

    fn stamp(generation: u64) -> u64 {
        generation % EPOCHS + 1
    }

    fn half(generation: u64) -> usize {
        usize::from(generation % 2 == 1) * HALF_SLOTS
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// The ring offset of the newest entry of `generation` whose key `matches`.
    ///
    /// A key can be in a generation more than once: used again after its window ended, it is
    /// inserted anew while its expired entry is still indexed. Insertion appends to the end of
    /// the probe chain (nothing is removed from a chain; generations are dropped whole), so
    /// the newest use is the last match before the chain ends. A lookup of an absent key, the
    /// common case, reads to that end anyway.
    fn find_in(
        &self,
        generation: u64,
        hash: u64,
        mut matches: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let (stamp, half, tag) =
            (Self::stamp(generation), Self::half(generation), hash >> TAG_SHIFT);
        let mut bucket = self.home(hash);
        let mut found = None;
        loop {
            for slot in &self.buckets[bucket].0[half..half + HALF_SLOTS] {
                if (slot >> STAMP_SHIFT) & STAMP_MASK != stamp {
                    return found;
                }
                if slot >> TAG_SHIFT == tag {
                    let offset = u32::try_from(slot & 0xFFFF_FFFF).expect("masked to 32 bits");
                    if matches(offset) {
                        found = Some(offset);
                    }
                }
            }
            bucket = (bucket + 1) & self.mask;
        }
    }

    /// The newest entry whose key `matches`: in the current generation, else the previous.
    fn find(&self, hash: u64, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let current = self.find_in(self.generation, hash, &mut matches);
        if current.is_some() || self.generation == 0 {
            return current;
        }
        self.find_in(self.generation - 1, hash, matches)
    }

    fn insert(&mut self, hash: u64, offset: u32) {
        let half_slots = self.buckets.len() * HALF_SLOTS;
        assert!(self.current_len * 2 <= half_slots, "a generation is at most half its slots");
        let (stamp, half) = (Self::stamp(self.generation), Self::half(self.generation));
        let entry = (hash >> TAG_SHIFT) << TAG_SHIFT | stamp << STAMP_SHIFT | u64::from(offset);
        let mut bucket = self.home(hash);
        loop {
            for slot in &mut self.buckets[bucket].0[half..half + HALF_SLOTS] {
                if (*slot >> STAMP_SHIFT) & STAMP_MASK != stamp {
                    *slot = entry;
                    self.current_len += 1;
                    return;
                }
            }
            bucket = (bucket + 1) & self.mask;
        }
    }

    /// Drops the previous generation; the current one becomes the previous.
    fn rotate(&mut self) {
        self.generation += 1;
        self.previous_len = self.current_len;
        self.current_len = 0;
        self.scrub();
    }

    /// Zeroes the slots of dead generations in the next few buckets.
    fn scrub(&mut self) {
        let live = [Self::stamp(self.generation), Self::stamp(self.generation.saturating_sub(1))];
        for _ in 0..self.scrub_per_rotation {
            for slot in &mut self.buckets[self.scrub_next].0 {
                if !live.contains(&((*slot >> STAMP_SHIFT) & STAMP_MASK)) {
                    *slot = 0;
                }
            }
            self.scrub_next = (self.scrub_next + 1) & self.mask;
        }
    }

    fn len(&self) -> usize {
        self.previous_len + self.current_len
    }

    fn prefetch(&self, hash: u64) {
        crate::prefetch::prefetch_read(&self.buckets[self.home(hash)]);
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
    index: Index,
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
            index: Index::new(generation),
            capacity,
            retention_nanos,
            evicted_early: 0,
            // A fixed seed: the table's layout never reaches disk, but a fixed hasher keeps
            // two replicas of a state byte-for-byte alike in memory too.
            hasher: Hasher::with_seed(0x6c65_6467_6572_6421),
        }
    }

    /// Bytes of the hash index (the ring is `capacity` entries on top).
    #[cfg(test)]
    pub(crate) fn index_bytes(&self) -> usize {
        self.index.buckets.len() * std::mem::size_of::<Bucket>()
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
        self.index.prefetch(hash);
    }

    fn find(&self, key: &K) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let matches = |offset: u32| self.slot(offset).key == *key;
        self.index.find(hash, matches)
    }

    /// Whether `key` has an entry, inside its window or not.
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    /// The newest entry of `key` with the time it was inserted, inside its window at `now`
    /// (`Ok`) or past it (`Err`); `None` when the table has no entry for the key. One probe.
    pub(crate) fn lookup(&self, key: &K, now: Timestamp) -> Option<Result<(Timestamp, &V), ()>> {
        let slot = self.slot(self.find(key)?);
        Some(if self.live(slot.inserted, now) { Ok((slot.inserted, &slot.value)) } else { Err(()) })
    }

    /// Insertions left before the next one forgets the previous generation (0: the next one
    /// does).
    pub(crate) fn inserts_before_rotation(&self) -> usize {
        self.generation_max().saturating_sub(self.index.current_len)
    }

    /// The newest entry of the previous generation: the last one the next rotation forgets.
    pub(crate) fn previous_newest(&self) -> Option<&V> {
        if self.current_start == self.oldest {
            return None;
        }
        Some(&self.ring[((self.current_start - 1) % self.capacity as u64) as usize].value)
    }

    fn live(&self, inserted: Timestamp, now: Timestamp) -> bool {
        inserted.plus_nanos(self.retention_nanos) > now
    }

    /// The entry for `key`, if it is remembered and still inside its window at `now`.
    pub(crate) fn get(&self, key: &K, now: Timestamp) -> Option<&V> {
        self.get_with_time(key, now).map(|(_, value)| value)
    }

    /// `get`, with the time the entry was inserted.
    pub(crate) fn get_with_time(&self, key: &K, now: Timestamp) -> Option<(Timestamp, &V)> {
        let slot = self.slot(self.find(key)?);
        self.live(slot.inserted, now).then_some((slot.inserted, &slot.value))
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
        if self.index.current_len >= self.generation_max() {
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
        self.index.insert(hash, offset);
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
        self.index.rotate();
        self.oldest = self.current_start;
        self.current_start = self.next;
    }

    fn newest_inserted(&self) -> Option<Timestamp> {
        let last = self.next.checked_sub(1)?;
        self.ring.get((last % self.capacity as u64) as usize).map(|slot| slot.inserted)
    }

    /// Entries remembered (in both generations, including those past their window).
    pub(crate) fn len(&self) -> usize {
        self.index.len()
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
        (self.index.previous_len, slots)
    }

    /// Rebuilds the table from a snapshot's entries: `previous` entries of the previous
    /// generation, then the current generation, each in insertion order. Returns false for
    /// invalid input (a key used twice within its window, timestamps out of order, a generation
    /// over its size, which includes a snapshot of a larger table than this one).
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

    /// Slots of each live generation, counted by their stamp and half: they must be exactly
    /// the generation's entries (a dead slot passing for a live one would add to them).
    fn live_slots(index: &Index) -> (usize, usize) {
        let count = |generation: u64| {
            let (stamp, half) = (Index::stamp(generation), Index::half(generation));
            index
                .buckets
                .iter()
                .flat_map(|bucket| &bucket.0[half..half + HALF_SLOTS])
                .filter(|slot| (**slot >> STAMP_SHIFT) & STAMP_MASK == stamp)
                .count()
        };
        let previous = if index.generation == 0 { 0 } else { count(index.generation - 1) };
        (count(index.generation), previous)
    }

    #[test]
    fn stamps_survive_wrapping_around_many_times() {
        // Generations of 4 keys in 2 buckets: 140,000 generations wrap the 65,535 stamps twice.
        let mut retained: Retained<u64, u64> = Retained::new(8, u64::MAX);
        let mut key = 0u64;
        for generation in 0..140_000u64 {
            for _ in 0..4 {
                retained.insert(key, key, Timestamp(key));
                key += 1;
            }
            if generation % 997 == 0 || generation > 139_990 {
                let index = &retained.index;
                assert_eq!(live_slots(index), (index.current_len, index.previous_len));
                // The newest keys are found; one from before the previous generation is not.
                for recent in key.saturating_sub(8)..key {
                    assert_eq!(retained.get(&recent, Timestamp(key)), Some(&recent));
                }
                if let Some(old) = key.checked_sub(9) {
                    assert_eq!(retained.get(&old, Timestamp(key)), None);
                }
            }
        }
    }

    #[test]
    fn a_lookup_reads_one_bucket_per_generation_when_chains_are_short() {
        // A generation of 1,024 keys in 512 buckets: most chains end in their home bucket.
        let mut retained: Retained<u64, u64> = Retained::new(2_048, u64::MAX);
        for key in 0..1_024u64 {
            retained.insert(key, key, Timestamp(key));
        }
        let index = &retained.index;
        assert_eq!(index.buckets.len(), 512);
        let full_halves = index
            .buckets
            .iter()
            .filter(|bucket| bucket.0[..HALF_SLOTS].iter().all(|slot| *slot != 0))
            .count();
        assert!(full_halves < 512 / 5, "{full_halves} of 512 home halves are full");
        assert_eq!(std::mem::align_of::<Bucket>(), 64, "a bucket is one cache line");
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
