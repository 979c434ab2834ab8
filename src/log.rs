//! The server's log lines on stderr: each one starts with an RFC 3339 UTC
//! timestamp (millisecond precision) and `shardfeed:`, and is written with
//! one `write` so that lines from different threads never interleave.
//!
//! [`log_line!`](crate::log_line) writes a line; [`log_limited!`](crate::log_limited) writes at most one line per
//! period from its call site and says how many it held back, so that an
//! error repeating thousands of times a second (an `accept` failing for
//! want of descriptors) cannot flood the log. Neither is for the request
//! path: they format and write to stderr.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Writes `<RFC 3339 time> shardfeed: <message>` to stderr.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::log::line(::std::format_args!($($arg)*))
    };
}

/// As [`log_line!`](crate::log_line), but at most once per `$every` (a [`Duration`]) from
/// this call site, whichever thread calls; the next line written says how
/// many were held back meanwhile.
#[macro_export]
macro_rules! log_limited {
    ($every:expr, $($arg:tt)*) => {{
        static LIMIT: $crate::log::Limiter = $crate::log::Limiter::new($every);
        if let ::std::option::Option::Some(held) = LIMIT.allow() {
            $crate::log::line_held(::std::format_args!($($arg)*), held, $every);
        }
    }};
}

/// Writes one log line now.
pub fn line(message: fmt::Arguments) {
    write_line(&format!(
        "{} shardfeed: {message}\n",
        rfc3339(SystemTime::now())
    ));
}

/// Writes one rate-limited line: `held` lines like it were held back in the
/// period before it.
pub fn line_held(message: fmt::Arguments, held: u64, every: Duration) {
    if held == 0 {
        return line(message);
    }
    line(format_args!(
        "{message} (and {held} more like it in the last {} s, held back)",
        every.as_secs_f64()
    ));
}

fn write_line(text: &str) {
    // One write: stderr is unbuffered, and a line written in one call is
    // not interleaved with another thread's.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A call site's rate limit: lets one line through per period and counts
/// the ones it holds back. Lock-free, so any shard may call it.
pub struct Limiter {
    every_ms: u64,
    /// Milliseconds since the epoch before which lines are held back.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Limiter {
    pub const fn new(every: Duration) -> Limiter {
        Limiter {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one let through)` if a line may
    /// be written now; `None` (and counted) if not.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-12-01T22:21:00.123Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        since.subsec_millis()
    )
}

/// `(year, month, day)` of a day counted from 1970-01-01 (H. Hinnant's
/// algorithm, as for the HTTP `Date` header).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (month <= 2) as i64, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(784_111_777, 5)), "1994-11-06T08:49:37.005Z");
        assert_eq!(rfc3339(at(1_709_164_800, 999)), "2024-02-29T00:00:00.999Z");
        assert_eq!(rfc3339(at(4_102_444_799, 0)), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn the_limiter_lets_one_through_per_period_and_counts_the_rest() {
        let l = Limiter::new(Duration::from_secs(1));
        assert_eq!(l.allow_at(10_000), Some(0));
        for ms in 1..=130 {
            assert_eq!(l.allow_at(10_000 + ms), None);
        }
        assert_eq!(l.allow_at(11_000), Some(130));
        assert_eq!(l.allow_at(11_500), None);
        assert_eq!(l.allow_at(12_000), Some(1));
    }
}
