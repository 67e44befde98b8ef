//! Counters of the POS listener: connections, requests, operations, and every outcome by
//! status (results of operations and refusals of whole frames alike), so that each limit
//! violation and each rejection is counted. Atomics, written by connection tasks, read by
//! anyone (the admin API's `/metrics` exports them), and each opcode's latency from the read
//! that brought its request to the encoding of its answer.

use std::sync::atomic::{AtomicU64, Ordering};

use ledger_protocol::Status;

/// Status numbers counted individually (every defined status is below this).
const STATUS_SLOTS: usize = 128;

/// Opcodes timed individually (every defined opcode is below this).
const OPCODE_SLOTS: usize = 64;

/// Latency buckets: operations answered within 2^i microseconds, i = 0..LATENCY_BUCKETS
/// (1 µs to about 8.4 s); a last one counts the slower.
pub const LATENCY_BUCKETS: usize = 24;

/// The latency of one opcode's operations.
#[derive(Debug)]
struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

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
    latencies: Box<[Latency; OPCODE_SLOTS]>,
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
            latencies: Box::new(std::array::from_fn(|_| Latency::default())),
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

    /// Counts `count` operations of `opcode` answered `nanos` after their request was read
    /// (a request's operations of one opcode are counted together: one add per group).
    pub fn observe(&self, opcode: u8, count: u64, nanos: u64) {
        let Some(latency) = self.latencies.get(usize::from(opcode)) else { return };
        let micros = nanos.div_ceil(1_000);
        // The first bucket whose bound (2^i µs) holds it.
        let bucket =
            if micros <= 1 { 0 } else { (u64::BITS - (micros - 1).leading_zeros()) as usize };
        latency.buckets[bucket.min(LATENCY_BUCKETS)].fetch_add(count, Ordering::Relaxed);
        latency.sum_nanos.fetch_add(nanos.saturating_mul(count), Ordering::Relaxed);
    }

    /// The latency of `opcode`'s operations: per bucket (not cumulative) and the sum of their
    /// latencies in nanoseconds; `None` for an opcode never timed.
    pub fn latency(&self, opcode: u8) -> Option<([u64; LATENCY_BUCKETS + 1], u64)> {
        let latency = self.latencies.get(usize::from(opcode))?;
        let buckets = std::array::from_fn(|i| latency.buckets[i].load(Ordering::Relaxed));
        (buckets.iter().any(|count| *count > 0))
            .then(|| (buckets, latency.sum_nanos.load(Ordering::Relaxed)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_power_of_two_buckets_by_opcode() {
        let stats = PosStats::default();
        assert_eq!(stats.latency(16), None);
        stats.observe(16, 3, 500); // under 1 µs
        stats.observe(16, 1, 1_500); // 1.5 µs: the 2 µs bucket
        stats.observe(16, 2, 3_000_000); // 3 ms: the 4,096 µs bucket
        stats.observe(16, 1, u64::MAX / 2); // beyond every bound
        let (buckets, sum) = stats.latency(16).unwrap();
        assert_eq!((buckets[0], buckets[1], buckets[12], buckets[LATENCY_BUCKETS]), (3, 1, 2, 1));
        assert_eq!(buckets.iter().sum::<u64>(), 7);
        assert!(sum >= 3 * 500 + 1_500 + 2 * 3_000_000);
        assert_eq!(stats.latency(17), None, "per opcode");
        stats.observe(200, 1, 1); // no such opcode slot: ignored
    }
}
