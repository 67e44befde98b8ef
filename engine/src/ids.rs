//! Identifier newtypes: every id the engine handles has its own type, so that a customer id can
//! never be passed where a partner id or an LSN is expected.
//!
//! Ids that people read (`TxId`, `Lsn`, `ShardId`, `CustomerId`) implement `Display` and
//! `FromStr`. Account addresses have their own module (`account`), because their text form
//! needs the registry of account classes.

use std::fmt;
use std::num::NonZeroU128;
use std::str::FromStr;

use crate::limits::SHARD_COUNT_MAX;

/// Error returned when an id's text form does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {text:?}")]
pub struct ParseIdError {
    what: &'static str,
    text: String,
}

impl ParseIdError {
    pub(crate) fn new(what: &'static str, text: &str) -> ParseIdError {
        let text: String = text.chars().take(64).collect();
        ParseIdError { what, text }
    }
}

macro_rules! display_fromstr_u64 {
    ($ty:ident, $inner:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        impl FromStr for $ty {
            type Err = ParseIdError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse::<$inner>().map($ty).map_err(|_| ParseIdError::new($what, text))
            }
        }
    };
}

/// A customer of the loyalty programme, as the POS systems know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomerId(pub u64);
display_fromstr_u64!(CustomerId, u64, "customer id");

/// A partner (airline, hotel chain…) that points can be exchanged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartnerId(pub u64);
display_fromstr_u64!(PartnerId, u64, "partner id");

/// Log sequence number: position of a record in one shard's WAL. The first record is LSN 1;
/// LSN 0 means "before the first record".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);
display_fromstr_u64!(Lsn, u64, "lsn");

impl Lsn {
    /// The position before any record.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN that follows this one.
    #[must_use]
    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("lsn space exhausted"))
    }
}

/// The terminal (till, gateway) a request came from; scopes idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TerminalId(pub u32);
display_fromstr_u64!(TerminalId, u32, "terminal id");

/// One shard of the engine. At most `SHARD_COUNT_MAX` shards exist, so a shard id fits the
/// 10 bits that `TxId` reserves for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(u16);

impl ShardId {
    /// Builds a shard id, or `None` if it exceeds the supported shard count.
    pub fn new(index: u16) -> Option<ShardId> {
        (usize::from(index) < SHARD_COUNT_MAX).then_some(ShardId(index))
    }

    /// The shard's index, `0..shard_count`.
    pub fn index(self) -> u16 {
        self.0
    }

    /// The shard's index as a `usize`, for indexing per-shard vectors.
    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point in time: nanoseconds since the Unix epoch, UTC. Only the shard's clock creates
/// timestamps; the state machine reads them from the records it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);
display_fromstr_u64!(Timestamp, u64, "timestamp");

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// This timestamp moved forward by `nanos`, saturating at the end of time.
    #[must_use]
    pub fn plus_nanos(self, nanos: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(nanos))
    }
}

/// A transaction id: 64 bits, unique across shards and sortable by time.
///
/// Layout (most significant first): 42 bits of milliseconds since `TxId::EPOCH_MS`
/// (2024-01-01T00:00:00Z; good for 139 years), 10 bits of shard, 12 bits of sequence within
/// the millisecond. A shard that needs more than 4,096 ids in one millisecond borrows the next
/// millisecond, so ids stay unique and increasing; see `TxIdGenerator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u64);
display_fromstr_u64!(TxId, u64, "transaction id");

impl TxId {
    /// The epoch of the millisecond field: 2024-01-01T00:00:00Z in Unix milliseconds.
    pub const EPOCH_MS: u64 = 1_704_067_200_000;
    const SEQUENCE_BITS: u32 = 12;
    const SHARD_BITS: u32 = 10;
    const SEQUENCE_MAX: u64 = (1 << TxId::SEQUENCE_BITS) - 1;
    const MILLIS_MAX: u64 = (1 << (64 - TxId::SEQUENCE_BITS - TxId::SHARD_BITS)) - 1;

    /// Assembles an id from its three fields.
    pub fn from_parts(millis_since_epoch: u64, shard: ShardId, sequence: u16) -> TxId {
        assert!(millis_since_epoch <= TxId::MILLIS_MAX, "tx id millisecond field overflows");
        assert!(u64::from(sequence) <= TxId::SEQUENCE_MAX, "tx id sequence overflows");
        TxId(
            (millis_since_epoch << (TxId::SEQUENCE_BITS + TxId::SHARD_BITS))
                | (u64::from(shard.index()) << TxId::SEQUENCE_BITS)
                | u64::from(sequence),
        )
    }

    /// The shard that assigned this id.
    pub fn shard(self) -> u16 {
        let mask = (1u64 << TxId::SHARD_BITS) - 1;
        u16::try_from((self.0 >> TxId::SEQUENCE_BITS) & mask).expect("masked to 10 bits")
    }

    /// Milliseconds since `TxId::EPOCH_MS`.
    pub fn millis_since_epoch(self) -> u64 {
        self.0 >> (TxId::SEQUENCE_BITS + TxId::SHARD_BITS)
    }

    fn sequence(self) -> u64 {
        self.0 & TxId::SEQUENCE_MAX
    }
}

const _: () = assert!(SHARD_COUNT_MAX <= 1 << TxId::SHARD_BITS);

/// Hands out increasing `TxId`s for one shard. Its only state is the last id issued, which the
/// ledger state carries (and snapshots), so a restarted shard continues above every id in its
/// WAL even if the wall clock went backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxIdGenerator {
    shard: ShardId,
    last: Option<TxId>,
}

impl TxIdGenerator {
    /// A generator for `shard` that continues after `last` (if any).
    pub fn new(shard: ShardId, last: Option<TxId>) -> TxIdGenerator {
        TxIdGenerator { shard, last }
    }

    /// The id the next record stamped with `now` gets, without issuing it: a request that is
    /// then rejected leaves the generator (which is part of the ledger state) untouched.
    pub fn peek(&self, now: Timestamp) -> TxId {
        let now_ms = now.as_millis().saturating_sub(TxId::EPOCH_MS);
        match self.last {
            Some(last) if last.millis_since_epoch() >= now_ms => {
                if last.sequence() < TxId::SEQUENCE_MAX {
                    TxId(last.0 + 1)
                } else {
                    TxId::from_parts(last.millis_since_epoch() + 1, self.shard, 0)
                }
            }
            _ => TxId::from_parts(now_ms, self.shard, 0),
        }
    }

    /// Issues the next id for a record stamped with `now`.
    pub fn next(&mut self, now: Timestamp) -> TxId {
        let id = self.peek(now);
        self.observe(id);
        id
    }

    /// Records that `id` was issued (replay path), so later ids are greater.
    pub fn observe(&mut self, id: TxId) {
        if self.last.is_none_or(|last| id > last) {
            self.last = Some(id);
        }
    }

    /// The last id issued or observed.
    pub fn last(&self) -> Option<TxId> {
        self.last
    }
}

/// A client-chosen idempotency key (e.g. a UUID). Together with the `TerminalId` it names one
/// logical write: a retry with the same key returns the original result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey(NonZeroU128);

impl IdempotencyKey {
    /// A key; zero is reserved for "no key" on disk and is refused.
    pub fn new(value: u128) -> Option<IdempotencyKey> {
        NonZeroU128::new(value).map(IdempotencyKey)
    }

    /// The key's 128-bit value.
    pub fn get(self) -> u128 {
        self.0.get()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0.get())
    }
}

impl FromStr for IdempotencyKey {
    type Err = ParseIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.is_empty() || hex.len() > 32 {
            return Err(ParseIdError::new("idempotency key", text));
        }
        u128::from_str_radix(&hex, 16)
            .ok()
            .and_then(IdempotencyKey::new)
            .ok_or_else(|| ParseIdError::new("idempotency key", text))
    }
}

/// Maps a customer to its shard: jump consistent hash (Lamping & Veach, 2014) of the
/// customer id after a SplitMix64 finaliser, so that sequential ids spread evenly.
///
/// This mapping is part of the data directory's format: changing it, or the shard count of an
/// existing data directory, would send customers to shards that do not hold their accounts.
pub fn shard_for_customer(customer: CustomerId, shard_count: u16) -> ShardId {
    assert!(shard_count >= 1, "at least one shard");
    let mut key = splitmix64(customer.0);
    let mut bucket: i64 = -1;
    let mut jump: i64 = 0;
    while jump < i64::from(shard_count) {
        bucket = jump;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        jump = jump_step(bucket, key);
    }
    ShardId(u16::try_from(bucket).expect("bucket is below shard_count"))
}

/// One step of jump consistent hash. It is usually written with floating point; the ledger
/// bans floats, so the same step is computed in integers: `(bucket + 1) * 2^31 / ((key >> 33) + 1)`.
fn jump_step(bucket: i64, key: u64) -> i64 {
    let bucket_plus_one = u128::try_from(bucket + 1).expect("bucket >= -1");
    let value = bucket_plus_one * (1u128 << 31) / u128::from((key >> 33) + 1);
    i64::try_from(value.min(u128::from(u32::MAX))).expect("clamped to u32")
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_id_fields_round_trip_and_sort_by_time() {
        let shard = ShardId::new(513).unwrap();
        let id = TxId::from_parts(123_456, shard, 4095);
        assert_eq!(id.shard(), 513);
        assert_eq!(id.millis_since_epoch(), 123_456);
        assert_eq!(id.sequence(), 4095);
        let later = TxId::from_parts(123_457, ShardId::new(0).unwrap(), 0);
        assert!(later > id);
    }

    #[test]
    fn generator_is_strictly_increasing_even_when_the_clock_goes_back() {
        let shard = ShardId::new(3).unwrap();
        let mut generator = TxIdGenerator::new(shard, None);
        let t = Timestamp((TxId::EPOCH_MS + 1_000) * 1_000_000);
        let mut last = generator.next(t);
        // 10,000 ids in the same millisecond borrow the following milliseconds.
        for _ in 0..10_000 {
            let id = generator.next(t);
            assert!(id > last);
            assert_eq!(id.shard(), 3);
            last = id;
        }
        assert!(last.millis_since_epoch() > 1_000);
        // The clock goes back one second: ids still increase.
        let id = generator.next(Timestamp(TxId::EPOCH_MS * 1_000_000));
        assert!(id > last);
    }

    #[test]
    fn shard_mapping_is_stable_and_spreads() {
        // Pinned values: the mapping is part of the on-disk contract.
        let pinned: Vec<u16> =
            (0..8).map(|c| shard_for_customer(CustomerId(c), 4).index()).collect();
        assert_eq!(pinned, PINNED_FOUR_SHARDS);
        let mut counts = [0u32; 8];
        for customer in 0..80_000 {
            counts[shard_for_customer(CustomerId(customer), 8).as_usize()] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven spread: {counts:?}");
        }
        for customer in 0..1_000 {
            assert_eq!(shard_for_customer(CustomerId(customer), 1).index(), 0);
        }
    }

    // Pinned, and computed independently by the Python reference in docs/operations.md.
    const PINNED_FOUR_SHARDS: [u16; 8] = [3, 3, 0, 1, 3, 3, 0, 1];

    #[test]
    fn jump_hash_moves_few_keys_when_a_shard_is_added() {
        let moved = (0..10_000)
            .filter(|c| {
                shard_for_customer(CustomerId(*c), 4) != shard_for_customer(CustomerId(*c), 5)
            })
            .count();
        // Ideal is 1/5 of the keys.
        assert!((1_500..2_500).contains(&moved), "moved {moved}");
    }

    #[test]
    fn idempotency_key_parses_uuid_text_and_refuses_zero() {
        let key: IdempotencyKey = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
        assert_eq!(key.to_string(), "123e4567e89b12d3a456426614174000");
        assert!("0".parse::<IdempotencyKey>().is_err());
        assert!("xyz".parse::<IdempotencyKey>().is_err());
        assert!(IdempotencyKey::new(0).is_none());
    }
}
