//! Answers to bytes, straight into the connection's output buffer: heads
//! and JSON bodies with `itoa`, no `format!`, no allocation once the buffer
//! has grown to its working size. A `HEAD` answer is the same head without
//! its body.
//!
//! The `Date` header (IMF-fixdate, RFC 9110) is cached per thread: every
//! shard runs on its own thread, a timer task of the shard calls
//! [`refresh_date`] twice a second, and answers read [`cached_date`], so that
//! no request reads the clock.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{HttpError, Persist, ALLOW_HEADER};
use crate::cursor::{Cursor, TOKEN_LEN};

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

/// How one answer goes out: what happens to the connection after it, and
/// whether its body is sent (not for `HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub persist: Persist,
    pub body: bool,
}

impl Framing {
    /// A full answer (with its body).
    pub fn full(persist: Persist) -> Framing {
        Framing {
            persist,
            body: true,
        }
    }
}

/// Appends a `200` answer whose body is the JSON array of `items`, with
/// `Feed-Cursor: TOKEN` if `cursor` is given.
pub fn encode_page(
    out: &mut Vec<u8>,
    date: &HttpDate,
    f: Framing,
    items: &[u32],
    cursor: Option<&Cursor>,
) {
    encode_page_with(out, date, f, items, cursor, "")
}

/// Appends a `200` page that says it is degraded and why
/// (`Shardfeed-Degraded: REASON`).
pub fn encode_degraded_page(
    out: &mut Vec<u8>,
    date: &HttpDate,
    f: Framing,
    items: &[u32],
    cursor: Option<&Cursor>,
    reason: &str,
) {
    encode_page_with(out, date, f, items, cursor, reason)
}

/// The longest degraded reason a page header takes.
const MAX_REASON: usize = 32;

fn encode_page_with(
    out: &mut Vec<u8>,
    date: &HttpDate,
    f: Framing,
    items: &[u32],
    cursor: Option<&Cursor>,
    reason: &str,
) {
    // The extra header lines, assembled on the stack: no allocation.
    const CURSOR: &[u8] = b"Feed-Cursor: ";
    const DEGRADED: &[u8] = b"Shardfeed-Degraded: ";
    let mut extra = [0u8; CURSOR.len() + TOKEN_LEN + 2 + DEGRADED.len() + MAX_REASON + 2];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        extra[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    if let Some(c) = cursor {
        put(CURSOR);
        put(&c.token());
        put(b"\r\n");
    }
    if !reason.is_empty() {
        assert!(reason.len() <= MAX_REASON, "a short reason");
        put(DEGRADED);
        put(reason.as_bytes());
        put(b"\r\n");
    }
    let extra = &extra[..n];
    let body_len = if items.is_empty() {
        2
    } else {
        1 + items.iter().map(|&i| decimal_len(i) + 1).sum::<usize>()
    };
    write_head(out, "200 OK", date, JSON, f.persist, extra, body_len);
    if !f.body {
        return;
    }
    out.push(b'[');
    let mut digits = itoa::Buffer::new();
    for (n, &item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(digits.format(item).as_bytes());
    }
    out.push(b']');
}

/// Appends a `/healthz` answer: `200` if `ok`, else `503`, with its JSON
/// body (what it says is the health's business, not the wire's).
pub fn encode_health(out: &mut Vec<u8>, date: &HttpDate, f: Framing, ok: bool, body: &[u8]) {
    let status = if ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    write_head(out, status, date, JSON, f.persist, b"", body.len());
    if f.body {
        out.extend_from_slice(body);
    }
}

/// Appends `204 No Content`: a `/feed` page with nothing for this user.
pub fn encode_no_content(out: &mut Vec<u8>, date: &HttpDate, persist: Persist) {
    write_204(out, date, b"", persist);
}

/// Appends a `200` answer with the given body and content type.
pub fn encode_body(
    out: &mut Vec<u8>,
    date: &HttpDate,
    f: Framing,
    content_type: &str,
    body: &[u8],
) {
    write_head(
        out,
        "200 OK",
        date,
        content_type,
        f.persist,
        b"",
        body.len(),
    );
    if f.body {
        out.extend_from_slice(body);
    }
}

/// Appends the `OPTIONS` answer: `204` with `Allow`, no body.
pub fn encode_options(out: &mut Vec<u8>, date: &HttpDate, persist: Persist) {
    write_204(out, date, ALLOW_HEADER, persist);
}

/// A `204 No Content` head (no `Content-Length`, RFC 9110), with `extra`
/// header lines.
fn write_204(out: &mut Vec<u8>, date: &HttpDate, extra: &[u8], persist: Persist) {
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\nServer: shardfeed\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    end_head(out, persist);
}

/// Appends the interim answer to `Expect: 100-continue`.
pub fn encode_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Appends an error answer: `{"error":"<message>"}`. Whether it closes the
/// connection is the caller's decision (`f.persist`), made once.
#[cold]
pub fn encode_error(out: &mut Vec<u8>, date: &HttpDate, f: Framing, err: HttpError) {
    const OPEN: &[u8] = br#"{"error":""#;
    const CLOSE: &[u8] = br#""}"#;
    let (text, number, after) = err.message();
    let mut digits = itoa::Buffer::new();
    let number = number.map_or("", |n| digits.format(n));
    let body_len = OPEN.len() + text.len() + number.len() + after.len() + CLOSE.len();
    let extra = err.extra_header();
    write_head(out, err.status(), date, JSON, f.persist, extra, body_len);
    if !f.body {
        return;
    }
    out.extend_from_slice(OPEN);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(number.as_bytes());
    out.extend_from_slice(after.as_bytes());
    out.extend_from_slice(CLOSE);
}

const JSON: &str = "application/json";

fn write_head(
    out: &mut Vec<u8>,
    status: &str,
    date: &HttpDate,
    content_type: &str,
    persist: Persist,
    extra_header: &[u8],
    body_len: usize,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nServer: shardfeed\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra_header);
    end_head(out, persist);
}

fn end_head(out: &mut Vec<u8>, persist: Persist) {
    out.extend_from_slice(match persist {
        Persist::KeepAlive => b"\r\n".as_slice(),
        Persist::KeepAliveAnnounced => b"Connection: keep-alive\r\n\r\n",
        Persist::Close => b"Connection: close\r\n\r\n",
    });
}

fn decimal_len(n: u32) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1_000..=9_999 => 4,
        10_000..=99_999 => 5,
        100_000..=999_999 => 6,
        1_000_000..=9_999_999 => 7,
        10_000_000..=99_999_999 => 8,
        100_000_000..=999_999_999 => 9,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{IdProblem, SizeProblem};

    #[test]
    fn encodes_pages_errors_and_health() {
        let date = HttpDate::from_unix(0);
        let mut out = Vec::new();
        encode_page(
            &mut out,
            &date,
            Framing::full(Persist::KeepAlive),
            &[17, 4, 4_294_967_295, 0],
            None,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: shardfeed\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 19\r\n\r\n[17,4,4294967295,0]"
        );
        out.clear();
        encode_page(&mut out, &date, Framing::full(Persist::Close), &[], None);
        assert!(out.ends_with(b"Content-Length: 2\r\nConnection: close\r\n\r\n[]"));
        out.clear();
        encode_error(
            &mut out,
            &date,
            Framing::full(Persist::KeepAlive),
            HttpError::MethodNotAllowed,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains(
            "\r\nAllow: GET, HEAD, OPTIONS\r\n\r\n{\"error\":\"method not allowed: use GET or HEAD\"}"
        ));
        out.clear();
        encode_error(
            &mut out,
            &date,
            Framing::full(Persist::KeepAlive),
            HttpError::Size(SizeProblem::AboveMax(100)),
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.ends_with("\r\n\r\n{\"error\":\"size must be at most 100\"}"));
        assert_framed(&text);
        out.clear();
        encode_error(
            &mut out,
            &date,
            Framing::full(Persist::KeepAlive),
            HttpError::BadRequest("x"),
        );
        assert!(
            !String::from_utf8(out.clone())
                .unwrap()
                .contains("Connection:"),
            "the caller decides about the connection, not the encoder"
        );
        out.clear();
        let ok = br#"{"status":"ok"}"#;
        encode_health(
            &mut out,
            &date,
            Framing::full(Persist::KeepAliveAnnounced),
            true,
            ok,
        );
        assert!(out.ends_with(b"Connection: keep-alive\r\n\r\n{\"status\":\"ok\"}"));
        out.clear();
        encode_health(
            &mut out,
            &date,
            Framing::full(Persist::KeepAlive),
            false,
            b"{}",
        );
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        out.clear();
        encode_no_content(&mut out, &date, Persist::KeepAlive);
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nServer: shardfeed\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n"
        );
    }

    /// Content-Length must equal the bytes after the head.
    fn assert_framed(text: &str) {
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{text}");
    }

    #[test]
    fn every_answer_is_framed_by_its_content_length() {
        let date = HttpDate::now();
        let errors = [
            HttpError::BadRequest("malformed request"),
            HttpError::NotFound,
            HttpError::MethodNotAllowed,
            HttpError::BodyTooLarge(4096),
            HttpError::UriTooLong(4096),
            HttpError::Timeout,
            HttpError::ExpectationFailed,
            HttpError::UserId(IdProblem::Empty),
            HttpError::UserId(IdProblem::NotDecimal),
            HttpError::UserId(IdProblem::TooLarge),
            HttpError::Size(SizeProblem::NotANumber),
            HttpError::Size(SizeProblem::AboveMax(7)),
            HttpError::Size(SizeProblem::AboveMax(10000)),
            HttpError::HeadTooLarge(8192),
            HttpError::Unauthorized(crate::auth::Problem::Missing),
            HttpError::Unauthorized(crate::auth::Problem::Signature),
            HttpError::Forbidden,
            HttpError::Overloaded,
            HttpError::TooManyConnections,
        ];
        for persist in [
            Persist::KeepAlive,
            Persist::KeepAliveAnnounced,
            Persist::Close,
        ] {
            for err in errors {
                let mut out = Vec::new();
                encode_error(&mut out, &date, Framing::full(persist), err);
                assert_framed(std::str::from_utf8(&out).unwrap());
            }
            for items in [&[][..], &[0], &[1, 22, 333, 4_294_967_295]] {
                let mut out = Vec::new();
                encode_page(&mut out, &date, Framing::full(persist), items, None);
                assert_framed(std::str::from_utf8(&out).unwrap());
            }
            let mut out = Vec::new();
            encode_health(&mut out, &date, Framing::full(persist), false, b"{\"a\":1}");
            assert_framed(std::str::from_utf8(&out).unwrap());
            let mut out = Vec::new();
            encode_body(
                &mut out,
                &date,
                Framing::full(persist),
                "text/plain",
                b"a\nb\n",
            );
            assert_framed(std::str::from_utf8(&out).unwrap());
        }
    }

    #[test]
    fn a_page_carries_its_cursor_and_a_degraded_one_its_reason() {
        let date = HttpDate::from_unix(0);
        let c = Cursor {
            user: 1,
            version: 2,
            position: 3,
            pool: 4,
        };
        let token = String::from_utf8(c.token().to_vec()).unwrap();
        let mut out = Vec::new();
        encode_page(
            &mut out,
            &date,
            Framing::full(Persist::Close),
            &[5],
            Some(&c),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(&format!(
                "Content-Length: 3\r\nFeed-Cursor: {token}\r\nConnection: close\r\n\r\n[5]"
            )),
            "{text}"
        );
        let mut out = Vec::new();
        let head = Framing {
            persist: Persist::KeepAlive,
            body: false,
        };
        encode_degraded_page(&mut out, &date, head, &[5, 6], Some(&c), "not-owner");
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(&format!(
            "Content-Length: 5\r\nFeed-Cursor: {token}\r\nShardfeed-Degraded: not-owner\r\n\r\n"
        )));
        let mut out = Vec::new();
        encode_degraded_page(&mut out, &date, head, &[5], None, "not-owner");
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("Feed-Cursor") && text.contains("\r\nShardfeed-Degraded: not-owner\r\n")
        );
    }

    #[test]
    fn decimal_len_matches_itoa() {
        for n in [
            0,
            9,
            10,
            99,
            100,
            12345,
            999_999_999,
            1_000_000_000,
            u32::MAX,
        ] {
            assert_eq!(decimal_len(n), itoa::Buffer::new().format(n).len());
        }
    }

    #[test]
    fn head_answers_keep_the_head_and_drop_the_body() {
        let date = HttpDate::from_unix(0);
        let head = Framing {
            persist: Persist::KeepAlive,
            body: false,
        };
        let (mut get, mut head_only) = (Vec::new(), Vec::new());
        encode_page(
            &mut get,
            &date,
            Framing::full(Persist::KeepAlive),
            &[1, 22],
            None,
        );
        encode_page(&mut head_only, &date, head, &[1, 22], None);
        assert!(get.starts_with(&head_only));
        assert_eq!(&get[head_only.len()..], b"[1,22]");
        let (mut err, mut err_head) = (Vec::new(), Vec::new());
        encode_error(
            &mut err,
            &date,
            Framing::full(Persist::KeepAlive),
            HttpError::NotFound,
        );
        encode_error(&mut err_head, &date, head, HttpError::NotFound);
        assert!(err.starts_with(&err_head));
        assert_eq!(&err[err_head.len()..], br#"{"error":"no such resource"}"#);
        let mut out = Vec::new();
        encode_options(&mut out, &date, Persist::Close);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(text.ends_with("\r\nAllow: GET, HEAD, OPTIONS\r\nConnection: close\r\n\r\n"));
        let mut out = Vec::new();
        encode_continue(&mut out);
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

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
