//! RFC 3339 formatting of record timestamps (UTC, always nine fractional digits, so that
//! columns line up), on the engine's calendar.

use ledger_engine::Timestamp;
use ledger_engine::loyalty::calendar::{NANOS_PER_DAY, date_of};

/// `2026-11-21T13:07:09.123456789Z`.
pub fn rfc3339(timestamp: Timestamp) -> String {
    let date = date_of(timestamp);
    let in_day = timestamp.0 % NANOS_PER_DAY;
    let (seconds, nanos) = (in_day / 1_000_000_000, in_day % 1_000_000_000);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        date.year,
        date.month,
        date.day,
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T12:34:56.5Z, a leap day.
        assert_eq!(rfc3339(Timestamp(1_709_210_096_500_000_000)), "2024-02-29T12:34:56.500000000Z");
        assert_eq!(rfc3339(Timestamp(4_102_444_800_000_000_000)), "2100-01-01T00:00:00.000000000Z");
    }
}
