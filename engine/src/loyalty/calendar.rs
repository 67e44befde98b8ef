//! UTC calendar arithmetic on record timestamps, in integers: the day and month a purchase
//! counts towards (caps, tier windows) and the midnight a lot expires at.
//!
//! Days are counted from 1970-01-01 and months as `year × 12 + (month − 1)`, both from a
//! timestamp's UTC date. The date conversions are Howard Hinnant's `days_from_civil` and
//! `civil_from_days` (proleptic Gregorian calendar), exact for every `u64` nanosecond timestamp.

use crate::ids::Timestamp;

/// Nanoseconds in a day. UTC days in ledgerd have no leap seconds: timestamps are Unix time.
pub const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;

/// A UTC calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// The year, 1970 or later.
    pub year: u32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
}

/// Days since 1970-01-01 of `timestamp`'s UTC date.
pub fn day_index(timestamp: Timestamp) -> u32 {
    u32::try_from(timestamp.0 / NANOS_PER_DAY).expect("u64 nanoseconds span fewer than 2^32 days")
}

/// `year × 12 + (month − 1)` of `timestamp`'s UTC date.
pub fn month_index(timestamp: Timestamp) -> u32 {
    month_of_day(day_index(timestamp))
}

/// `year × 12 + (month − 1)` of day `day` (days since 1970-01-01).
pub fn month_of_day(day: u32) -> u32 {
    let date = civil_from_days(i64::from(day));
    date.year * 12 + (date.month - 1)
}

/// The UTC date of `timestamp`.
pub fn date_of(timestamp: Timestamp) -> Date {
    civil_from_days(i64::from(day_index(timestamp)))
}

/// The date `days` days after 1970-01-01.
pub fn civil_from_days(days: i64) -> Date {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Date {
        year: u32::try_from(year).expect("dates of u64 timestamps are after 1970"),
        month: u32::try_from(month).expect("1..=12"),
        day: u32::try_from(day).expect("1..=31"),
    }
}

/// Days from 1970-01-01 to `date` (negative before it).
pub fn days_from_civil(date: Date) -> i64 {
    let (month, day) = (i64::from(date.month), i64::from(date.day));
    let year = i64::from(date.year) - i64::from(date.month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days in `month` (1..=12) of `year`.
pub fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// The date `months` months after `date`, its day clamped to the end of a shorter month
/// (2025-01-31 + 1 month = 2025-02-28).
pub fn add_months(date: Date, months: u32) -> Date {
    let index = date.year * 12 + (date.month - 1) + months;
    let (year, month) = (index / 12, index % 12 + 1);
    Date { year, month, day: date.day.min(days_in_month(year, month)) }
}

/// The first nanosecond of `date`, saturating at the end of `u64` time.
pub fn start_of(date: Date) -> Timestamp {
    let days = u64::try_from(days_from_civil(date)).unwrap_or(0);
    Timestamp(days.saturating_mul(NANOS_PER_DAY))
}

/// When a lot credited at `credited` with a life of `months` expires: 00:00 UTC of the day
/// after the date `months` months after `credited`'s date. Every lot of one day expires at the
/// same midnight, whatever time of day it was credited.
pub fn expiry_after(credited: Timestamp, months: u32) -> Timestamp {
    let last_day = add_months(date_of(credited), months);
    start_of(last_day).plus_nanos(NANOS_PER_DAY)
}

/// `timestamp` as an RFC 3339 UTC date-time: `2026-11-27T00:00:00Z`, with nanoseconds when
/// it has any (`2026-11-27T23:59:59.999999999Z`).
pub fn rfc3339(timestamp: Timestamp) -> String {
    let date = date_of(timestamp);
    let in_day = timestamp.0 % NANOS_PER_DAY;
    let seconds = in_day / 1_000_000_000;
    let nanos = in_day % 1_000_000_000;
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let fraction = if nanos == 0 { String::new() } else { format!(".{nanos:09}") };
    format!(
        "{:04}-{:02}-{:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z",
        date.year, date.month, date.day
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(year: u32, month: u32, day: u32) -> Timestamp {
        start_of(Date { year, month, day })
    }

    #[test]
    fn dates_round_trip_over_five_centuries() {
        let last = day_index(Timestamp(u64::MAX));
        let mut days = 0_i64;
        while days <= i64::from(last) {
            let date = civil_from_days(days);
            assert_eq!(days_from_civil(date), days, "{date:?}");
            assert!(date.day >= 1 && date.day <= days_in_month(date.year, date.month));
            days += 1;
        }
        assert_eq!(civil_from_days(0), Date { year: 1970, month: 1, day: 1 });
        assert_eq!(civil_from_days(i64::from(last)), Date { year: 2554, month: 7, day: 21 });
    }

    #[test]
    fn known_dates_and_indices() {
        // 2026-11-27T00:00:00Z, Black Friday, is Unix second 1_795_737_600.
        let black_friday = Timestamp(1_795_737_600 * 1_000_000_000);
        assert_eq!(ts(2026, 11, 27), black_friday);
        assert_eq!(date_of(black_friday), Date { year: 2026, month: 11, day: 27 });
        assert_eq!(date_of(Timestamp(black_friday.0 - 1)).day, 26);
        assert_eq!(month_index(black_friday), 2026 * 12 + 10);
        assert_eq!(day_index(black_friday), 20_784);
        assert_eq!(rfc3339(black_friday), "2026-11-27T00:00:00Z");
        assert_eq!(rfc3339(Timestamp(black_friday.0 - 1)), "2026-11-26T23:59:59.999999999Z");
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00Z");
        assert_eq!(date_of(ts(2024, 2, 29)), Date { year: 2024, month: 2, day: 29 });
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2100, 2), 28);
    }

    #[test]
    fn months_clamp_to_the_end_of_shorter_months() {
        let date = |year, month, day| Date { year, month, day };
        assert_eq!(add_months(date(2025, 1, 31), 1), date(2025, 2, 28));
        assert_eq!(add_months(date(2024, 1, 31), 1), date(2024, 2, 29));
        assert_eq!(add_months(date(2024, 2, 29), 12), date(2025, 2, 28));
        assert_eq!(add_months(date(2024, 2, 29), 24), date(2026, 2, 28));
        assert_eq!(add_months(date(2025, 11, 30), 2), date(2026, 1, 30));
        assert_eq!(add_months(date(2025, 12, 15), 0), date(2025, 12, 15));
    }

    #[test]
    fn lots_expire_at_the_midnight_after_their_anniversary() {
        let morning = ts(2026, 11, 27).plus_nanos(1);
        let evening = ts(2026, 11, 27).plus_nanos(NANOS_PER_DAY - 1);
        assert_eq!(expiry_after(morning, 24), ts(2028, 11, 28));
        assert_eq!(expiry_after(evening, 24), ts(2028, 11, 28), "same day, same midnight");
        assert_eq!(expiry_after(ts(2028, 2, 29), 12), ts(2029, 3, 1));
        assert_eq!(expiry_after(Timestamp(u64::MAX), 120), Timestamp(u64::MAX));
    }
}
