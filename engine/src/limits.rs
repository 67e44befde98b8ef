//! Every limit of the engine, with the reason for its value.
//!
//! Two kinds live here. Format limits (`const`s) are part of the WAL and snapshot formats:
//! a reader relies on them to bound what it allocates from bytes it has not yet verified, so they
//! can only change with a new format version. Runtime limits (`Limits`) are configuration, each
//! no larger than the format limit it sits under; `Limits::validate` checks how they relate
//! when the engine starts.

/// Shards a data directory can have: `TxId` reserves 10 bits for the shard.
pub const SHARD_COUNT_MAX: usize = 1024;

/// Postings in one transaction record (format limit). Loyalty transactions have one to a few
/// postings (earn, earn a bonus asset, fee); 64 leaves room for multi-asset settlements.
pub const TRANSACTION_POSTINGS_MAX: usize = 64;

/// Bytes of the free-text receipt reference in transaction metadata (format limit). POS
/// receipt numbers are short; a bound keeps records small and fixed-cost to decode.
pub const RECEIPT_BYTES_MAX: usize = 32;

/// Longest actor (an admin token's name) an annotated record names.
pub const ANNOTATION_ACTOR_BYTES_MAX: usize = 64;

/// Longest reason an annotated record gives.
pub const ANNOTATION_REASON_BYTES_MAX: usize = 512;

/// Bytes of an account class or asset name (format limit): short, human-chosen identifiers.
pub const NAME_BYTES_MAX: usize = 32;

/// Bytes of one WAL record, header included (format limit). A transaction with the maximum
/// postings and receipt is about 2.4 KiB; readers refuse any length above this before reading.
pub const RECORD_BYTES_MAX: u32 = 4096;

/// Runtime limits of one engine. `Limits::default()` is the production configuration;
/// `Limits::test_min()` is tiny so that tests reach every boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Postings a client may put in one transaction; at most `TRANSACTION_POSTINGS_MAX`.
    pub transaction_postings_max: usize,
    /// Requests waiting in one shard's inbox. A full inbox answers `Busy` at once: memory stays
    /// bounded and a client learns about overload instead of waiting in an invisible queue.
    pub inbox_depth_max: usize,
    /// Records in one group-commit batch of a shard. Larger batches amortise the fsync further
    /// but delay the first answer of the batch; 8,192 records are ~1.2 MiB of WAL, a few ms of
    /// apply work and one fast fdatasync on this class of disk.
    pub batch_records_max: usize,
    /// Batches queued between a shard and its WAL writer. Two lets the shard apply batch N+1
    /// while batch N is being flushed; more only adds latency.
    pub write_queue_depth_max: usize,
    /// Bytes of one WAL segment file, header included. Segments are zero-filled up front, so
    /// this is also the size of each file on disk and of the zeroing work done per segment.
    pub segment_bytes: u64,
    /// Idempotency keys remembered per shard: a key is remembered for at least half this many
    /// later writes of its shard, and at most the retention time. Each key of capacity takes
    /// 96 bytes: 2 Mi keys take 192 MiB per shard and remember each key for at least 17
    /// minutes at 1,000 writes/s per shard. Size it as peak writes per second per shard × the
    /// retry window needed × 2. Keys forgotten before their retention time are counted in
    /// `ShardStats`. See docs/design-decisions.md.
    pub idempotency_keys_max: usize,
    /// Open holds per shard. A hold ties up memory until it is captured, voided or expires.
    pub holds_open_max: usize,
    /// Recent postings of customer accounts remembered per shard (72 bytes each): what a
    /// history query can show and what a reversal can find. 1 Mi entries are 72 MiB.
    pub history_entries_max: usize,
    /// Cross-shard transfers a shard may have sent but not yet seen settled. Past this, new
    /// cross-shard transfers from that shard are refused as `Busy`.
    pub transfers_in_flight_max: usize,
    /// Depth of a shard's channel for messages from other shards (transfer legs and acks). A
    /// message that does not fit is dropped and re-sent by the sender's re-drive timer.
    pub peer_queue_depth_max: usize,
    /// Purchases per shard an explain query answers from memory (about 400 bytes each: 16 Ki
    /// take 6.5 MiB); older ones are explained from the WAL (`loyalty::explain::from_wal`).
    pub explain_purchases_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            transaction_postings_max: 16,
            inbox_depth_max: 65_536,
            batch_records_max: 8_192,
            write_queue_depth_max: 2,
            segment_bytes: 64 * 1024 * 1024,
            idempotency_keys_max: 2 * 1024 * 1024,
            holds_open_max: 1024 * 1024,
            history_entries_max: 1024 * 1024,
            transfers_in_flight_max: 65_536,
            peer_queue_depth_max: 65_536,
            explain_purchases_max: 16_384,
        }
    }
}

/// A relation between limits that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limits: {0}")]
pub struct LimitsError(String);

impl Limits {
    /// Small limits for tests: segments roll after a few records, queues fill at once.
    pub fn test_min() -> Limits {
        Limits {
            transaction_postings_max: 4,
            inbox_depth_max: 64,
            batch_records_max: 8,
            write_queue_depth_max: 1,
            segment_bytes: crate::wal::format::RECORDS_OFFSET_GROUPS
                + 8 * u64::from(RECORD_BYTES_MAX)
                + crate::wal::format::SECTOR_BYTES,
            idempotency_keys_max: 64,
            holds_open_max: 16,
            history_entries_max: 64,
            transfers_in_flight_max: 8,
            peer_queue_depth_max: 8,
            explain_purchases_max: 64,
        }
    }

    /// Checks every limit against its bounds and the others.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let fail = |message: String| Err(LimitsError(message));
        if self.transaction_postings_max == 0
            || self.transaction_postings_max > TRANSACTION_POSTINGS_MAX
        {
            return fail(format!(
                "transaction_postings_max must be 1..={TRANSACTION_POSTINGS_MAX}"
            ));
        }
        for (name, value) in [
            ("inbox_depth_max", self.inbox_depth_max),
            ("batch_records_max", self.batch_records_max),
            ("write_queue_depth_max", self.write_queue_depth_max),
            ("idempotency_keys_max", self.idempotency_keys_max),
            ("holds_open_max", self.holds_open_max),
            ("history_entries_max", self.history_entries_max),
            ("transfers_in_flight_max", self.transfers_in_flight_max),
            ("peer_queue_depth_max", self.peer_queue_depth_max),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        // A whole batch must fit in one segment: the writer never splits a group commit across
        // segments, which is what lets recovery look for a torn tail in the newest one only.
        let batch_bytes_max = self.batch_bytes_max();
        let segment_needed = self.segment_bytes_min();
        if self.segment_bytes < segment_needed {
            return fail(format!(
                "segment_bytes ({}) must be at least {segment_needed}: a full batch \
                 ({batch_bytes_max} bytes) with its commit trailer after the header page",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > crate::wal::format::SEGMENT_BYTES_MAX {
            return fail("segment_bytes must be at most 1 TiB".to_string());
        }
        Ok(())
    }

    /// The smallest segment that holds a full batch: the header page, the batch, and the
    /// padding and trailer that close its commit group.
    pub fn segment_bytes_min(&self) -> u64 {
        use crate::wal::format::{FORMAT_VERSION, group_end, records_offset};
        group_end(records_offset(FORMAT_VERSION).saturating_add(self.batch_bytes_max()))
    }

    /// The largest number of WAL bytes one batch can produce.
    pub fn batch_bytes_max(&self) -> u64 {
        let records = u64::try_from(self.batch_records_max).unwrap_or(u64::MAX);
        records.saturating_mul(u64::from(RECORD_BYTES_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_test_limits_are_valid() {
        Limits::default().validate().unwrap();
        Limits::test_min().validate().unwrap();
    }

    #[test]
    fn a_batch_larger_than_a_segment_is_refused() {
        let limits = Limits { segment_bytes: 1024 * 1024, ..Limits::default() };
        let error = limits.validate().unwrap_err();
        assert!(error.to_string().contains("segment_bytes"), "{error}");
        let limits = Limits { transaction_postings_max: 0, ..Limits::default() };
        assert!(limits.validate().is_err());
        let limits = Limits { inbox_depth_max: 0, ..Limits::default() };
        assert!(limits.validate().unwrap_err().to_string().contains("inbox_depth_max"));
    }
}
