//! `KeyEntry`: a remembered write as it leaves the state machine for the key index on disk.
//!
//! The idempotency table in memory (`Retained`) holds the recent keys of a shard. Every entry it
//! takes, and every later change to how an entry is answered (a refund mark), is also handed
//! out as a `KeyEntry`, in LSN order, so that the key index (`crate::keyindex`) can keep the
//! keys the table forgets. The entries are an output of `Ledger::apply`, a function of the
//! records applied like everything else the state machine does: replay hands out the same ones.

use super::Refusal;
use super::command::Committed;
use crate::ids::{IdempotencyKey, Lsn, TerminalId, Timestamp, TxId};
use crate::reject::RejectCode;

/// A write remembered under `(terminal, key)`, with the original result its retries get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// The terminal the request came from (keys are scoped by terminal).
    pub terminal: TerminalId,
    /// The client's idempotency key.
    pub key: IdempotencyKey,
    /// When the write was remembered (its record's timestamp): the idempotency window runs from
    /// here.
    pub inserted: Timestamp,
    /// The request's fingerprint (`wal::payload::fingerprint`); a retry must match it.
    pub fingerprint: u64,
    /// The write's transaction id.
    pub tx_id: TxId,
    /// The LSN of the write's record.
    pub lsn: Lsn,
    /// What the write moved (`Committed::amount`).
    pub amount: u64,
    /// Set when a later record undid the write and its retries get this refusal instead
    /// (`transfer_refunded`).
    pub refused: Option<RejectCode>,
    /// Whether this is a mark: the entry again, handed out by the later record that changed
    /// how it is answered. For the same key and LSN, a mark supersedes the entry.
    pub mark: bool,
}

impl KeyEntry {
    /// The original result of the write.
    pub fn committed(&self) -> Committed {
        Committed {
            tx_id: self.tx_id,
            lsn: self.lsn,
            timestamp: self.inserted,
            amount: self.amount,
        }
    }

    /// How a write with this key and `fingerprint` is answered: as a duplicate of this one (or
    /// with the refusal a later record put in its place), or, with another payload, as a
    /// conflict.
    pub fn answer(&self, fingerprint: u64) -> Refusal {
        if fingerprint != self.fingerprint {
            return Refusal::Rejected(RejectCode::IdempotencyConflict);
        }
        match self.refused {
            Some(code) => Refusal::Rejected(code),
            None => Refusal::Duplicate(self.committed()),
        }
    }

    /// Whether the window of `retention_nanos` that started when this write was remembered
    /// still covers `now`.
    pub fn live_at(&self, now: Timestamp, retention_nanos: u64) -> bool {
        self.inserted.plus_nanos(retention_nanos) > now
    }
}
