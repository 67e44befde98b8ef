//! Shard actors: one OS thread per shard owns its `Ledger`, fed by a bounded inbox.
//!
//! The pipeline of one shard is four threads:
//! 1. the **shard thread** (this module) drains its inbox, applies each command to the ledger,
//!    encodes the resulting records into a batch buffer and queues the batch with its replies;
//! 2. the **WAL writer** (`writer`) seals and writes queued batches, fdatasyncs once per commit
//!    group, and only then sends the replies, the messages to other shards, and the batch's
//!    idempotency key entries to the indexer;
//! 3. the **snapshotter** (`snapshotter`) prepares capture buffers, then encodes and writes
//!    snapshots in the background;
//! 4. the **key indexer** (`crate::keyindex::indexer`) writes the key entries into runs on
//!    disk, which the shard thread installs and looks old keys up in;
//! 5. the **scrubber** (`scrub`) re-reads finished segments, snapshots and runs at a bounded
//!    rate and reports damage (unless `ShardTuning::scrub_rate_bytes_per_sec` is 0).
//!
//! So the shard applies batch N+1 while batch N is being flushed, and nobody hears about a
//! change before it is durable: replies, including reads and rejections (which depend on state
//! that is not yet durable), travel with the batch and are released by the writer.
//!
//! **Invariant:** the shard thread is the only writer of its ledger; nothing else touches it.
//! **Invariant:** every queue is bounded: the inbox (`inbox_depth_max`, a full inbox answers
//! `Busy`), the peer channel (`peer_queue_depth_max`, overflow is re-driven), the writer queue
//! (`write_queue_depth_max`, the shard waits: backpressure reaches the inbox), the indexer queue
//! (the writer waits). The indexer hands runs back through a mailbox that never blocks, so the
//! shard → writer → indexer chain has no cycle.

mod actor;
mod scrub;
mod snapshotter;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use actor::{ShardActor, ShardSetup};

use crate::amount::Amount;
use crate::ids::TxId;
use crate::ids::{Lsn, ShardId};
use crate::ledger::account::{AccountId, AssetId};
use crate::ledger::command::{Command, Response};
use crate::ledger::record::Body;
use crate::reject::RejectCode;

/// Where a shard sends the answers to commands: typically one sink per client connection, so
/// that answers reach a connection in bulk, one wake-up per batch.
pub trait ReplySink: Send + Sync {
    /// Delivers answers, each with the tag its command was submitted with. Called from a
    /// shard's WAL writer thread (or the submitting thread, for immediate `Busy` answers):
    /// it must not block for long.
    fn deliver(&self, replies: Vec<(u64, Response)>);
}

/// What a shard's inbox carries.
pub(crate) enum Input {
    /// Client commands, answered through `sink`.
    Commands { sink: Arc<dyn ReplySink>, commands: Vec<(u64, Command)> },
    /// An asset, class or rule version definition, answered once durable.
    Define { body: Box<Body>, reply: crossbeam_channel::Sender<Result<(), RejectCode>> },
    /// Take a snapshot now; answered with its LSN once written.
    Snapshot { reply: crossbeam_channel::Sender<Result<Lsn, String>> },
}

/// Messages between shards (cross-shard transfers).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerMessage {
    /// Step 2 of a transfer, to the destination shard.
    TransferIn {
        source_shard: ShardId,
        sequence: u64,
        source_tx: TxId,
        source: AccountId,
        destination: AccountId,
        asset: AssetId,
        amount: Amount,
    },
    /// The destination applied step 2 (or refused the credit), to the source shard.
    TransferAck { destination_shard: ShardId, sequence: u64, accepted: bool },
}

/// Control of a shard's life.
pub(crate) enum Control {
    /// Recovery is over and the shards agree: apply these missing definitions and serve.
    Start { missing_definitions: Vec<Body> },
    /// Answer what is queued, flush, stop.
    Shutdown,
}

/// Runtime settings of a shard that do not affect what its records contain.
#[derive(Debug, Clone)]
pub struct ShardTuning {
    /// How often the shard wakes up when idle (hold expiry, re-drive, snapshot checks).
    pub tick: Duration,
    /// How long a sent transfer waits for its acknowledgement before it is sent again.
    pub transfer_redrive: Duration,
    /// Take a snapshot after this many records (0: never by count).
    pub snapshot_every_records: u64,
    /// Take a snapshot after this much time with new records (zero: never by time).
    pub snapshot_every: Duration,
    /// Take a snapshot when shutting down.
    pub snapshot_on_shutdown: bool,
    /// Whether WAL segments covered by the older kept snapshot are deleted.
    pub wal_retention: WalRetention,
    /// A reader outside the shard follows its WAL (the reporting replica): until it says how
    /// far it has read (`Engine::release_wal_below`), no segment and no snapshot it would
    /// need is deleted, whatever the retention.
    pub wal_reader: bool,
    /// Bytes per second the background scrub reads at most (0: no scrub).
    pub scrub_rate_bytes_per_sec: u64,
    /// Time between scrub passes (and before the first).
    pub scrub_interval: Duration,
    /// Customers whose due lots the expiry sweep expires per turn at most: the bound on the
    /// work a midnight of expiries adds to a turn. While more are due the shard takes its next
    /// turn at once instead of waiting for a tick; a customer whose lots are due is expired
    /// before any write or query of theirs in any case.
    pub lots_expired_per_turn: usize,
}

impl Default for ShardTuning {
    fn default() -> ShardTuning {
        ShardTuning {
            tick: Duration::from_millis(10),
            transfer_redrive: Duration::from_millis(500),
            snapshot_every_records: 5_000_000,
            snapshot_every: Duration::from_secs(600),
            snapshot_on_shutdown: true,
            wal_retention: WalRetention::KeepAll,
            wal_reader: false,
            scrub_rate_bytes_per_sec: 16 * 1024 * 1024,
            scrub_interval: Duration::from_secs(3600),
            lots_expired_per_turn: 256,
        }
    }
}

/// What happens to WAL segments that snapshots cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRetention {
    /// Keep every segment: the full history stays available to auditors (the default).
    KeepAll,
    /// Delete segments whose records are all covered by the older of the two kept snapshots
    /// and, with a WAL reader (`ShardTuning::wal_reader`), read by it: the newest snapshot at
    /// or below the reader's position is kept too, with every segment after it.
    DeleteCovered,
}

/// Counters one shard publishes for stats; written by its threads, read by anyone.
#[derive(Debug, Default)]
pub(crate) struct ShardShared {
    pub(crate) applied_lsn: AtomicU64,
    pub(crate) durable_lsn: AtomicU64,
    pub(crate) poisoned: AtomicBool,
    pub(crate) snapshot_in_progress: AtomicBool,
    pub(crate) last_snapshot_lsn: AtomicU64,
    /// Nanoseconds since the epoch of the record `last_snapshot_lsn` (0: no snapshot).
    pub(crate) last_snapshot_created: AtomicU64,
    /// `LotsExpire` records appended (by the sweep and before a member's requests).
    pub(crate) expiry_records: AtomicU64,
    /// The earliest expiry day among the shard's lots (`u64::MAX`: no lot).
    pub(crate) expiry_next_day: AtomicU64,
    /// The sweep's last turn had more due than it may take in a turn.
    pub(crate) expiry_behind: AtomicBool,
    pub(crate) snapshot_pause_nanos_last: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) sync_nanos_total: AtomicU64,
    pub(crate) wal_bytes: AtomicU64,
    pub(crate) accounts: AtomicU64,
    pub(crate) lots: AtomicU64,
    pub(crate) holds: AtomicU64,
    pub(crate) idempotency_keys: AtomicU64,
    pub(crate) idempotency_evicted_early: AtomicU64,
    pub(crate) transfers_in_flight: AtomicU64,
    /// The first LSN the WAL still holds (1 until retention deletes segments).
    pub(crate) wal_first_lsn: AtomicU64,
    /// The LSN a WAL reader has read up to (`u64::MAX`: no reader): retention keeps a
    /// snapshot at or below it and the segments after that snapshot.
    pub(crate) reader_lsn: AtomicU64,
    pub(crate) key_indexer: Arc<crate::keyindex::indexer::IndexerStats>,
    pub(crate) key_index_runs: AtomicU64,
    pub(crate) key_index_keys: AtomicU64,
    pub(crate) key_index_memory_bytes: AtomicU64,
    pub(crate) key_index_through: AtomicU64,
    pub(crate) key_index_lookups: AtomicU64,
    pub(crate) key_index_block_reads: AtomicU64,
    pub(crate) key_index_hits: AtomicU64,
    pub(crate) key_index_expired_hits: AtomicU64,
    pub(crate) key_index_keys_expired: AtomicU64,
    pub(crate) key_index_unreadable: AtomicU64,
    pub(crate) key_index_waits: AtomicU64,
    pub(crate) key_index_wait_nanos: AtomicU64,
    pub(crate) scrub_passes: AtomicU64,
    pub(crate) scrub_bytes: AtomicU64,
    pub(crate) scrub_findings: AtomicU64,
    pub(crate) scrub_findings_last: AtomicU64,
    pub(crate) scrub_pass_nanos_last: AtomicU64,
}

/// A point-in-time view of one shard's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardStats {
    /// The shard.
    pub shard: u16,
    /// LSN of the last applied record.
    pub applied_lsn: u64,
    /// LSN up to which the WAL is durable.
    pub durable_lsn: u64,
    /// Whether the shard stopped after a write or fsync error.
    pub poisoned: bool,
    /// LSN of the last snapshot written (or loaded at start).
    pub last_snapshot_lsn: u64,
    /// When that snapshot was taken: the time of its last record, in nanoseconds since the
    /// epoch (0: no snapshot).
    pub last_snapshot_created_nanos: u64,
    /// Lot expiries recorded (`LotsExpire` records: one per member and turn).
    pub expiry_records: u64,
    /// The earliest expiry day (UTC day number) among the shard's lots, if any: a lot of this
    /// day is due from its 00:00 UTC, so a day in the past means the sweep has work left.
    pub expiry_next_day: Option<u32>,
    /// The sweep's last turn had more due than it may take in a turn (it runs again at once).
    pub expiry_behind: bool,
    /// How long the shard thread paused for the last snapshot (copying its state into the
    /// buffer the snapshotter prepared).
    pub snapshot_pause_nanos_last: u64,
    /// Batches handed to the writer.
    pub batches: u64,
    /// Records appended.
    pub records: u64,
    /// Commands rejected.
    pub rejected: u64,
    /// Commands refused as `Busy` (inbox full).
    pub busy: u64,
    /// fdatasync calls.
    pub syncs: u64,
    /// Total time spent in fdatasync.
    pub sync_nanos_total: u64,
    /// Bytes written to the WAL.
    pub wal_bytes: u64,
    /// Accounts on the shard.
    pub accounts: u64,
    /// Point lots held by the shard's members.
    pub lots: u64,
    /// Open holds.
    pub holds: u64,
    /// Idempotency keys remembered.
    pub idempotency_keys: u64,
    /// Idempotency keys forgotten early because the table was full.
    pub idempotency_evicted_early: u64,
    /// Cross-shard transfers sent and not yet settled.
    pub transfers_in_flight: u64,
    /// Key index: runs on disk, keys in them, and bytes of their filters and fences in memory.
    pub key_index_runs: u64,
    /// See `key_index_runs`.
    pub key_index_keys: u64,
    /// See `key_index_runs`.
    pub key_index_memory_bytes: u64,
    /// The LSN the key index runs reach.
    pub key_index_through: u64,
    /// Keys the table in memory had no entry for, looked up in the key index.
    pub key_index_lookups: u64,
    /// Lookups that read a block from disk (a filter let the key through).
    pub key_index_block_reads: u64,
    /// Lookups that found a write inside its window: retries answered from disk.
    pub key_index_hits: u64,
    /// Lookups that found the key only past its window: a key used again after the window
    /// (posted as a new write).
    pub key_index_expired_hits: u64,
    /// Keys deleted with runs past the window.
    pub key_index_keys_expired: u64,
    /// Lookups refused because a block could not be read (`idempotency_unverifiable`).
    pub key_index_unreadable: u64,
    /// Times the shard waited for the indexer before its table forgot a generation, and how
    /// long in all.
    pub key_index_waits: u64,
    /// See `key_index_waits`.
    pub key_index_wait_nanos: u64,
    /// Runs the indexer wrote, the keys in them, and the time it spent writing them.
    pub key_index_runs_written: u64,
    /// See `key_index_runs_written`.
    pub key_index_keys_written: u64,
    /// See `key_index_runs_written`.
    pub key_index_write_nanos: u64,
    /// Scrub passes finished, bytes they read, damage they found (each logged as an error),
    /// and how long the last pass took.
    pub scrub_passes: u64,
    /// See `scrub_passes`.
    pub scrub_bytes: u64,
    /// See `scrub_passes`.
    pub scrub_findings: u64,
    /// Findings of the last finished pass (what is damaged now, as the last pass saw it).
    pub scrub_findings_last: u64,
    /// See `scrub_passes`.
    pub scrub_pass_nanos_last: u64,
}

impl ShardStats {
    /// How long the oldest change not in a snapshot has waited, about: the time since the last
    /// record the snapshot covers, at `now` (zero when it covers every applied record; `None`
    /// when the shard has records and no snapshot).
    pub fn snapshot_age(&self, now: crate::ids::Timestamp) -> Option<std::time::Duration> {
        if self.applied_lsn <= self.last_snapshot_lsn {
            return Some(std::time::Duration::ZERO);
        }
        (self.last_snapshot_created_nanos > 0).then(|| {
            std::time::Duration::from_nanos(now.0.saturating_sub(self.last_snapshot_created_nanos))
        })
    }

    /// How long the earliest lot still held has been due at `now` (zero when none is due):
    /// the expiry sweep's lag.
    pub fn expiry_overdue(&self, now: crate::ids::Timestamp) -> std::time::Duration {
        let due_since = self
            .expiry_next_day
            .map(|day| u64::from(day).saturating_mul(crate::loyalty::calendar::NANOS_PER_DAY));
        match due_since {
            Some(since) if since <= now.0 => std::time::Duration::from_nanos(now.0 - since),
            _ => std::time::Duration::ZERO,
        }
    }
}

impl ShardShared {
    pub(crate) fn stats(&self, shard: ShardId) -> ShardStats {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        ShardStats {
            shard: shard.index(),
            applied_lsn: load(&self.applied_lsn),
            durable_lsn: load(&self.durable_lsn),
            poisoned: self.poisoned.load(Ordering::Relaxed),
            last_snapshot_lsn: load(&self.last_snapshot_lsn),
            last_snapshot_created_nanos: load(&self.last_snapshot_created),
            expiry_records: load(&self.expiry_records),
            expiry_next_day: u32::try_from(load(&self.expiry_next_day)).ok(),
            expiry_behind: self.expiry_behind.load(Ordering::Relaxed),
            snapshot_pause_nanos_last: load(&self.snapshot_pause_nanos_last),
            batches: load(&self.batches),
            records: load(&self.records),
            rejected: load(&self.rejected),
            busy: load(&self.busy),
            syncs: load(&self.syncs),
            sync_nanos_total: load(&self.sync_nanos_total),
            wal_bytes: load(&self.wal_bytes),
            accounts: load(&self.accounts),
            lots: load(&self.lots),
            holds: load(&self.holds),
            idempotency_keys: load(&self.idempotency_keys),
            idempotency_evicted_early: load(&self.idempotency_evicted_early),
            transfers_in_flight: load(&self.transfers_in_flight),
            key_index_runs: load(&self.key_index_runs),
            key_index_keys: load(&self.key_index_keys),
            key_index_memory_bytes: load(&self.key_index_memory_bytes),
            key_index_through: load(&self.key_index_through),
            key_index_lookups: load(&self.key_index_lookups),
            key_index_block_reads: load(&self.key_index_block_reads),
            key_index_hits: load(&self.key_index_hits),
            key_index_expired_hits: load(&self.key_index_expired_hits),
            key_index_keys_expired: load(&self.key_index_keys_expired),
            key_index_unreadable: load(&self.key_index_unreadable),
            key_index_waits: load(&self.key_index_waits),
            key_index_wait_nanos: load(&self.key_index_wait_nanos),
            key_index_runs_written: load(&self.key_indexer.runs_written),
            key_index_keys_written: load(&self.key_indexer.entries_written),
            key_index_write_nanos: load(&self.key_indexer.write_nanos),
            scrub_passes: load(&self.scrub_passes),
            scrub_bytes: load(&self.scrub_bytes),
            scrub_findings: load(&self.scrub_findings),
            scrub_findings_last: load(&self.scrub_findings_last),
            scrub_pass_nanos_last: load(&self.scrub_pass_nanos_last),
        }
    }
}
