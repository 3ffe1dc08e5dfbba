//! UTC wall-clock formatting for the `Date` header, the pages and the access log.
//!
//! Owns: turning Unix seconds into calendar fields (Howard Hinnant's `civil_from_days`, exact for
//! the proleptic Gregorian calendar) and the three text forms we print. A date crate would do the
//! same in far more code than these few lines.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. A clock set before 1970 is not worth a panic: it reads as 1970.
pub fn unix_millis_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// A UTC time to the millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
    /// 0 = Sunday.
    pub weekday: u8,
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

impl UtcTime {
    pub fn from_unix_millis(ms: i64) -> UtcTime {
        let secs = ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // civil_from_days: http://howardhinnant.github.io/date_algorithms.html
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        UtcTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3_600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            millis: ms.rem_euclid(1000) as u16,
            weekday: (days + 4).rem_euclid(7) as u8, // 1970-01-01 was a Thursday
        }
    }

    /// IMF-fixdate, the `Date` header's form (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn http_date(&self) -> String {
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            WEEKDAYS[usize::from(self.weekday)],
            self.day,
            MONTHS[usize::from(self.month - 1)],
            self.year,
            self.hour,
            self.minute,
            self.second
        )
    }

    /// What the pages show: `2026-11-27 07:34:17 UTC`.
    pub fn page_time(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339 with milliseconds, for the access log: `2026-11-27T07:34:17.042Z`. Written straight
    /// into the log line: `format!` with `{:02}` padding was a fifth of a logged request's cost.
    pub fn rfc3339_millis(&self) -> Rfc3339Millis {
        Rfc3339Millis(*self)
    }
}

/// See `UtcTime::rfc3339_millis`.
pub struct Rfc3339Millis(UtcTime);

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.0;
        if !(0..=9999).contains(&t.year) {
            // Not a year this clock will show; `{:04}` writes it whole.
            return write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
            );
        }
        let mut text = *b"0000-00-00T00:00:00.000Z";
        for (range, n) in [
            (0..4, t.year as u32),
            (5..7, t.month.into()),
            (8..10, t.day.into()),
            (11..13, t.hour.into()),
            (14..16, t.minute.into()),
            (17..19, t.second.into()),
            (20..23, t.millis.into()),
        ] {
            let mut n: u32 = n;
            for digit in text[range].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9110_example() {
        // RFC 9110 §5.6.7's example date.
        let t = UtcTime::from_unix_millis(784_111_777_000);
        assert_eq!(t.http_date(), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn epoch_and_leap_days() {
        assert_eq!(UtcTime::from_unix_millis(0).http_date(), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(UtcTime::from_unix_millis(951_782_400_000).page_time(), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            UtcTime::from_unix_millis(4_107_542_399_999).rfc3339_millis().to_string(),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(UtcTime::from_unix_millis(4_107_542_400_000).page_time(), "2100-03-01 00:00:00 UTC");
        assert_eq!(
            UtcTime::from_unix_millis(1_795_765_457_042).rfc3339_millis().to_string(),
            "2026-11-27T07:44:17.042Z"
        );
        assert_eq!(UtcTime::from_unix_millis(1_795_765_457_042).http_date(), "Fri, 27 Nov 2026 07:44:17 GMT");
        assert_eq!(UtcTime::from_unix_millis(-1).page_time(), "1969-12-31 23:59:59 UTC");
        assert_eq!(UtcTime::from_unix_millis(-1).rfc3339_millis().to_string(), "1969-12-31T23:59:59.999Z");
        let far = UtcTime::from_unix_millis(253_402_300_800_000); // the first millisecond of 10000
        assert_eq!(far.rfc3339_millis().to_string(), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_for_four_centuries_is_consecutive() {
        // Walk day by day from 1970 to 2370 and check the calendar advances one day at a time.
        let mut prev = UtcTime::from_unix_millis(0);
        for day in 1..(400 * 366) {
            let t = UtcTime::from_unix_millis(day * 86_400_000);
            let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = [31, if leap(prev.year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            if prev.day == month_len[usize::from(prev.month - 1)] {
                assert_eq!(t.day, 1);
                assert_eq!(t.month, if prev.month == 12 { 1 } else { prev.month + 1 });
            } else {
                assert_eq!((t.year, t.month, t.day), (prev.year, prev.month, prev.day + 1));
            }
            assert_eq!(t.weekday, (prev.weekday + 1) % 7);
            prev = t;
        }
    }
}
