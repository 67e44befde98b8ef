//! `AccountTable`: the accounts of a shard, in an open-addressing hash table whose slots the
//! shard can prefetch.
//!
//! Why not `HashMap`: with millions of accounts every lookup is a cache miss, and the shard
//! knows a whole batch of accounts before it applies any of them. With a table whose slot
//! address follows from the key, the shard issues prefetches for the whole batch first and the
//! misses overlap; `HashMap` hides where a key lives until the lookup that pays the miss.
//!
//! Layout: a power-of-two array of slots (account id, counters, newest history entry: 96
//! bytes), linear probing,
//! at most 7/8 full, deletion by backward shift (deletion only undoes a rejected record's new
//! accounts). The hash is keyed per process, so chosen customer ids cannot be made to collide.
//! Iteration order is the table's and never reaches disk: snapshots sort by account id.

use std::hash::BuildHasher;

use super::account::{Account, AccountId, ClassId};
use super::history::NO_ENTRY;

/// The id stored in empty slots. Class `u32::MAX` is never defined (the registry refuses it),
/// so no real account has this id.
const EMPTY: AccountId = AccountId::new(ClassId(u32::MAX), u64::MAX);
const SLOTS_MIN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: AccountId,
    account: Account,
    /// Sequence of the account's newest history entry (`history::NO_ENTRY`: none).
    history: u64,
}

const EMPTY_SLOT: Slot = Slot { id: EMPTY, account: Account::ZERO, history: NO_ENTRY };

/// A hash table of accounts with prefetchable slots.
#[derive(Debug, Clone)]
pub(crate) struct AccountTable {
    slots: Vec<Slot>,
    /// `slots.len() - 1`; `slots.len()` is a power of two.
    mask: usize,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl AccountTable {
    pub(crate) fn new() -> AccountTable {
        AccountTable::with_slots(SLOTS_MIN)
    }

    fn with_slots(slots: usize) -> AccountTable {
        debug_assert!(slots.is_power_of_two());
        AccountTable {
            slots: vec![EMPTY_SLOT; slots],
            mask: slots - 1,
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Room for `additional` more accounts without growing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = (self.len + additional).saturating_mul(8) / 7 + 1;
        if wanted > self.slots.len() {
            self.resize(wanted.next_power_of_two());
        }
    }

    fn home(&self, id: &AccountId) -> usize {
        // The high bits of the hash are the best mixed.
        (self.hasher.hash_one(id) >> 20) as usize & self.mask
    }

    fn find(&self, id: &AccountId) -> Result<usize, usize> {
        debug_assert!(*id != EMPTY);
        let mut index = self.home(id);
        loop {
            let slot = &self.slots[index];
            if slot.id == *id {
                return Ok(index);
            }
            if slot.id == EMPTY {
                return Err(index);
            }
            index = (index + 1) & self.mask;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, id: &AccountId) -> Option<&Account> {
        self.find(id).ok().map(|index| &self.slots[index].account)
    }

    pub(crate) fn get_mut(&mut self, id: &AccountId) -> Option<&mut Account> {
        match self.find(id) {
            Ok(index) => Some(&mut self.slots[index].account),
            Err(_) => None,
        }
    }

    /// Sets the counters of `id`, adding the account if it is new.
    pub(crate) fn insert(&mut self, id: AccountId, account: Account) {
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.resize(self.slots.len() * 2);
        }
        match self.find(&id) {
            Ok(index) => self.slots[index].account = account,
            Err(index) => {
                self.slots[index] = Slot { id, account, history: NO_ENTRY };
                self.len += 1;
            }
        }
    }

    /// The sequence of the account's newest history entry (`NO_ENTRY` if none).
    pub(crate) fn history_head(&self, id: &AccountId) -> u64 {
        self.find(id).ok().map_or(NO_ENTRY, |index| self.slots[index].history)
    }

    /// Records the account's newest history entry. The account must exist.
    pub(crate) fn set_history_head(&mut self, id: &AccountId, sequence: u64) {
        let index = self.find(id).expect("history entries are of existing accounts");
        self.slots[index].history = sequence;
    }

    /// Records the account's newest history entry and returns the one before (one lookup on
    /// the apply path). The account must exist.
    pub(crate) fn replace_history_head(&mut self, id: &AccountId, sequence: u64) -> u64 {
        let index = self.find(id).expect("history entries are of existing accounts");
        std::mem::replace(&mut self.slots[index].history, sequence)
    }

    /// Removes `id`, shifting later slots of its probe run back so that no lookup stops early.
    pub(crate) fn remove(&mut self, id: &AccountId) -> Option<Account> {
        let mut hole = self.find(id).ok()?;
        let removed = self.slots[hole].account;
        let mut index = hole;
        loop {
            index = (index + 1) & self.mask;
            let slot = self.slots[index];
            if slot.id == EMPTY {
                break;
            }
            // A slot may move back into the hole only if its home is not strictly after the
            // hole on its probe run (cyclic distance from home).
            let home = self.home(&slot.id);
            let distance_to_slot = index.wrapping_sub(home) & self.mask;
            let distance_to_hole = hole.wrapping_sub(home) & self.mask;
            if distance_to_hole <= distance_to_slot {
                self.slots[hole] = slot;
                hole = index;
            }
        }
        self.slots[hole] = EMPTY_SLOT;
        self.len -= 1;
        Some(removed)
    }

    fn resize(&mut self, slots: usize) {
        let mut grown = AccountTable::with_slots(slots);
        grown.hasher = self.hasher.clone();
        for slot in self.slots.iter().filter(|slot| slot.id != EMPTY) {
            let Err(index) = grown.find(&slot.id) else { unreachable!("ids are unique") };
            grown.slots[index] = *slot;
            grown.len += 1;
        }
        *self = grown;
    }

    /// Asks the CPU to start loading the slot where `id` lives (or would be inserted), so that
    /// a later lookup finds it in cache. Changes nothing.
    pub(crate) fn prefetch(&self, id: &AccountId) {
        let slot = &self.slots[self.home(id)];
        crate::prefetch::prefetch_read(slot);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.slots.iter().filter(|slot| slot.id != EMPTY).map(|slot| (&slot.id, &slot.account))
    }
}

impl PartialEq for AccountTable {
    fn eq(&self, other: &AccountTable) -> bool {
        self.len == other.len && self.iter().all(|(id, account)| other.get(id) == Some(account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(owner: u64) -> AccountId {
        AccountId::new(ClassId(1), owner)
    }

    fn account(value: u128) -> Account {
        Account { credits_posted: value, ..Account::default() }
    }

    #[test]
    fn behaves_like_a_map_through_growth_and_removals() {
        let mut table = AccountTable::new();
        let mut model = BTreeMap::new();
        let mut rng = 0x1234_5678_9abc_def1u64;
        for step in 0..200_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let owner = rng % 5_000;
            if rng.is_multiple_of(7) {
                assert_eq!(table.remove(&id(owner)), model.remove(&owner), "step {step}");
            } else {
                table.insert(id(owner), account(u128::from(step)));
                model.insert(owner, account(u128::from(step)));
            }
            if step % 1_000 == 0 {
                assert_eq!(table.len(), model.len());
                for owner in 0..5_000 {
                    assert_eq!(
                        table.get(&id(owner)),
                        model.get(&owner),
                        "step {step} owner {owner}"
                    );
                }
            }
        }
        let listed: BTreeMap<u64, Account> = table.iter().map(|(id, a)| (id.owner(), *a)).collect();
        assert_eq!(listed, model);
    }

    #[test]
    fn reserve_avoids_growth_and_prefetch_changes_nothing() {
        let mut table = AccountTable::new();
        table.reserve(10_000);
        let slots = table.slots.len();
        for owner in 0..10_000 {
            table.prefetch(&id(owner));
            table.insert(id(owner), account(1));
        }
        assert_eq!(table.slots.len(), slots);
        assert_eq!(table.len(), 10_000);
    }
}
