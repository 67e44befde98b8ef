//! Counters of the POS listener: connections, requests, operations, and every outcome by
//! status (results of operations and refusals of whole frames alike), so that each limit
//! violation and each rejection is counted. Atomics, written by connection tasks, read by
//! anyone (the admin API's `/metrics` will export them).

use std::sync::atomic::{AtomicU64, Ordering};

use ledger_protocol::Status;

/// Status numbers counted individually (every defined status is below this).
const STATUS_SLOTS: usize = 128;

/// The counters.
#[derive(Debug)]
pub struct PosStats {
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `connections_max` were open.
    pub connections_refused: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Handshakes that failed (unknown terminal, wrong MAC, timeout).
    pub auth_failures: AtomicU64,
    /// Request frames received from authenticated terminals.
    pub requests: AtomicU64,
    /// Operations in accepted requests.
    pub operations: AtomicU64,
    statuses: [AtomicU64; STATUS_SLOTS],
}

impl Default for PosStats {
    fn default() -> PosStats {
        PosStats {
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            operations: AtomicU64::new(0),
            statuses: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PosStats {
    /// Counts one outcome.
    pub fn count(&self, status: Status) {
        if let Some(counter) = self.statuses.get(usize::from(status.code())) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many outcomes had this status.
    pub fn outcomes(&self, status: Status) -> u64 {
        self.statuses.get(usize::from(status.code())).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every status seen at least once, with its count.
    pub fn outcome_counts(&self) -> Vec<(Status, u64)> {
        Status::ALL
            .iter()
            .map(|status| (*status, self.outcomes(*status)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}
