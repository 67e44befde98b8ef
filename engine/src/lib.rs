//! ledgerd's engine: a double-entry ledger kept in memory by single-threaded shards, made
//! durable by a checksummed, hash-chained write-ahead log before anything is acknowledged.
//!
//! # Layout
//! - `ids`, `amount`, `limits`, `reject`: the vocabulary (newtypes, money, bounds, error codes).
//! - `ledger`: the state machine of one shard. No I/O, no threads, no clock.
//! - `loyalty`: the loyalty programme the state machine runs: rules, pricing, calendar.
//! - `wal`: segment and record format, writer (group commit), checked reader, durable mark.
//! - `keyindex`: the idempotency keys the shards forgot in memory, kept on disk for the window.
//! - `snapshot`: snapshot files.
//! - `recovery`: snapshot + WAL replay + torn-tail repair + invariant checks at start-up.
//! - `follow`: a shard's ledger followed through its files by a reader outside the shard (the
//!   reporting replica), with each record's movements of value.
//! - `shard`: the shard thread, its WAL writer thread and its snapshotter.
//! - `engine`: all shards of a data directory behind one handle (`Engine`).
//! - `datadir`: the data directory's identity file and lock.
//! - `clock`: the time source that stamps records.
//! - `testing` (feature `testing`): reference model and fault injection for tests.
//!
//! The architecture, its invariants and the reasons for them: ARCHITECTURE.md and docs/.

#![deny(clippy::float_arithmetic)]
#![deny(clippy::host_endian_bytes, clippy::big_endian_bytes)]
#![deny(clippy::unwrap_used)]

pub mod amount;
pub mod clock;
pub mod codec;
pub mod datadir;
pub mod engine;
pub mod follow;
pub mod ids;
pub mod keyindex;
pub mod ledger;
pub mod limits;
pub mod loyalty;
mod prefetch;
pub mod recovery;
pub mod reject;
pub mod shard;
pub mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wal;

pub use amount::Amount;
pub use engine::{DefineError, Engine, EngineConfig, OpenError};
pub use ids::{CustomerId, IdempotencyKey, Lsn, PartnerId, ShardId, TerminalId, Timestamp, TxId};
pub use ledger::account::{
    Account, AccountAddress, AccountFlags, AccountId, AssetId, ClassId, Namespace,
};
pub use ledger::command::{Command, Committed, Operation, Query, Request, Response};
pub use ledger::record::{Metadata, Posting, Postings, Receipt, TxKind};
pub use limits::Limits;
pub use reject::RejectCode;
pub use shard::{ReplySink, ShardStats, ShardTuning, WalRetention};
