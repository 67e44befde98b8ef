//! The write-ahead log. Spec: docs/wal-format.md.
//!
//! - `format`: segment header and record frame, sealing and checking (the spec in code);
//! - `payload`: the bytes of each record body, and the idempotency fingerprint;
//! - `segment`: segment files, zero-filled preallocation, the spare;
//! - `writer`: sealed appends and group commit (fdatasync);
//! - `reader`: the checked scan used by recovery and by the auditors' CLI;
//! - `mark`: the durable mark, the newest durable record's LSN and hash kept beside the WAL.
//!
//! **Invariant:** the WAL is append-only. Recovery zeroes at most the torn tail of the newest
//! segment (bytes never acknowledged); nothing else ever rewrites a written byte.

pub mod format;
pub mod mark;
pub mod payload;
pub mod reader;
pub mod segment;
pub mod writer;
