//! Per-terminal rate limits: a token bucket per terminal, shared by all its connections
//! (`terminals::Admitted::bucket`).
//!
//! Integer arithmetic only: a token is `NANOS` units, the bucket refills `rate` units per
//! elapsed nanosecond and holds at most one second's worth (the burst). A request of `n`
//! operations takes `n` tokens or is refused whole; a refused request takes nothing.

use std::time::Instant;

const NANOS: u128 = 1_000_000_000;

/// One terminal's bucket.
#[derive(Debug)]
pub struct Bucket {
    /// Operations per second.
    rate: u32,
    /// Tokens × `NANOS`, at most `rate × NANOS`.
    units: u128,
    /// When `units` was last refilled.
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u32, now: Instant) -> Bucket {
        assert!(rate > 0, "rates are validated to be positive");
        Bucket { rate, units: u128::from(rate) * NANOS, refilled: now }
    }

    /// Operations per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Takes `count` tokens if there are that many.
    pub fn try_take(&mut self, count: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_nanos();
        let capacity = u128::from(self.rate) * NANOS;
        self.units = self.units.saturating_add(elapsed.saturating_mul(u128::from(self.rate)));
        self.units = self.units.min(capacity);
        self.refilled = now;
        let cost = (count as u128).saturating_mul(NANOS);
        if cost <= self.units {
            self.units -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_a_second_of_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10, start);
        assert!(bucket.try_take(10, start));
        assert!(!bucket.try_take(1, start), "the burst is spent");
        assert!(!bucket.try_take(1, start + Duration::from_millis(99)));
        assert!(bucket.try_take(1, start + Duration::from_millis(100)), "one token per 100 ms");
        // A refused request takes nothing, and the bucket never holds more than a second.
        assert!(!bucket.try_take(11, start + Duration::from_secs(60)));
        assert!(bucket.try_take(10, start + Duration::from_secs(60)));
    }
}
