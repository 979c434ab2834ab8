//! The `Date` header: IMF-fixdate (RFC 9110), cached per thread.
//!
//! Every shard runs on its own thread; [`refresh_date`] is called by a timer
//! task of the shard twice a second, and answers read the cached value with
//! [`cached_date`], so that no request reads the clock.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHED: Cell<HttpDate> = Cell::new(HttpDate::now());
}

/// This thread's cached `Date` value.
#[inline]
pub fn cached_date() -> HttpDate {
    CACHED.with(Cell::get)
}

/// Reads the clock into this thread's cached `Date` value.
pub fn refresh_date() {
    CACHED.with(|d| d.set(HttpDate::now()));
}

/// `Date` header value, IMF-fixdate (RFC 9110), cached per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpDate([u8; 29]);

impl HttpDate {
    pub fn now() -> HttpDate {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        HttpDate::from_unix(secs)
    }

    pub fn from_unix(secs: u64) -> HttpDate {
        const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let days = secs / 86_400;
        let sod = secs % 86_400;
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + (month <= 2) as i64;

        let mut d = *b"Thu, 01 Jan 1970 00:00:00 GMT";
        d[..3].copy_from_slice(DAYS[(days % 7) as usize]);
        two(&mut d[5..7], day as u64);
        d[8..11].copy_from_slice(MONTHS[month as usize - 1]);
        let y = year.clamp(0, 9999) as u64;
        two(&mut d[12..14], y / 100);
        two(&mut d[14..16], y % 100);
        two(&mut d[17..19], sod / 3600);
        two(&mut d[20..22], sod / 60 % 60);
        two(&mut d[23..25], sod % 60);
        HttpDate(d)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn two(out: &mut [u8], n: u64) {
    out[0] = b'0' + (n / 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            HttpDate::from_unix(0).as_bytes(),
            b"Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            HttpDate::from_unix(784_111_777).as_bytes(),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            HttpDate::from_unix(1_709_164_800).as_bytes(),
            b"Thu, 29 Feb 2024 00:00:00 GMT"
        );
    }
}
