//! HTTP/1.1 on the wire: bytes in, requests out; answers to bytes.
//!
//! Decoding borrows the connection's buffer (no copies) and treats an
//! incomplete request as a normal state (`Ok(None)`). Encoding writes straight
//! into the connection's output buffer with `itoa`: no `format!`, no allocation
//! once the buffer has grown to its working size. This module knows nothing of
//! shards or stores.

use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

/// Default largest request head (request line + headers): SPEC, `431` beyond.
pub const MAX_HEAD: usize = 8 * 1024;
/// Default largest request line: `414` beyond.
pub const MAX_REQUEST_LINE: usize = 4 * 1024;
/// Default largest body accepted (and discarded) on a GET: `413` beyond.
pub const MAX_BODY: usize = 4 * 1024;
/// Header lines parsed per request; more is treated like an oversized head.
const MAX_HEADERS: usize = 64;

/// Request limits and page-size rules from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub default_size: u16,
    pub max_size: u16,
    pub max_head: usize,
    pub max_request_line: usize,
    pub max_body: usize,
}

impl Limits {
    /// The SPEC's defaults.
    pub const DEFAULT: Limits = Limits {
        default_size: 10,
        max_size: 100,
        max_head: MAX_HEAD,
        max_request_line: MAX_REQUEST_LINE,
        max_body: MAX_BODY,
    };

    /// Bytes one request may take in a buffer: a head and a body at their
    /// limits.
    pub fn max_request(&self) -> usize {
        self.max_head + self.max_body
    }
}

/// What the client wants done with the connection after this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: keep the connection, say nothing.
    KeepAlive,
    /// HTTP/1.0 with `Connection: keep-alive`: keep it and say so.
    KeepAliveAnnounced,
    /// Close after this answer and say so.
    Close,
}

/// A decoded request: what to answer, and how many bytes it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    pub persist: Persist,
    /// Bytes of the buffer this request took (head and any body).
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Feed {
        user: u32,
        size: u16,
    },
    Health,
    /// `/stats`: JSON latency and counters of every shard.
    Stats,
    /// `/metrics`: Prometheus text exposition.
    Metrics,
    Fail(HttpError),
}

/// Every error answer. The hot path carries this small value; the message is
/// written only when the answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    BadRequest(&'static str),
    NotFound,
    MethodNotAllowed,
    BodyTooLarge(u32),
    UserId(IdProblem),
    Size(SizeProblem),
    HeadTooLarge(u32),
    UriTooLong(u32),
    /// The request head did not arrive in time.
    Timeout,
    /// Nothing can be served for this user (empty pool, feed used up).
    NothingToServe,
    /// A queue to another shard is full: try again.
    Overloaded,
    /// The shard has as many connections as it may: try again later.
    TooManyConnections,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdProblem {
    Empty,
    NotDecimal,
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeProblem {
    NotANumber,
    AboveMax(u16),
}

impl HttpError {
    pub fn code(self) -> u16 {
        self.status()[..3]
            .parse()
            .expect("a status starts with its code")
    }

    pub fn status(self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "400 Bad Request",
            HttpError::NotFound => "404 Not Found",
            HttpError::MethodNotAllowed => "405 Method Not Allowed",
            HttpError::Timeout => "408 Request Timeout",
            HttpError::BodyTooLarge(_) => "413 Content Too Large",
            HttpError::UriTooLong(_) => "414 URI Too Long",
            HttpError::UserId(_) | HttpError::Size(_) => "422 Unprocessable Content",
            HttpError::HeadTooLarge(_) => "431 Request Header Fields Too Large",
            HttpError::NothingToServe | HttpError::Overloaded | HttpError::TooManyConnections => {
                "503 Service Unavailable"
            }
        }
    }

    /// Errors after which the byte stream cannot be trusted: answer and close.
    pub fn closes(self) -> bool {
        matches!(
            self,
            HttpError::BadRequest(_)
                | HttpError::BodyTooLarge(_)
                | HttpError::HeadTooLarge(_)
                | HttpError::UriTooLong(_)
                | HttpError::Timeout
                | HttpError::TooManyConnections
        )
    }

    /// The message: static text, then an optional number. No message holds
    /// a quote or backslash, so it goes into JSON as it is.
    fn message(self) -> (&'static str, Option<u32>, &'static str) {
        let text = match self {
            HttpError::BadRequest(why) => why,
            HttpError::NotFound => "no such resource",
            HttpError::MethodNotAllowed => "method not allowed: use GET",
            HttpError::Timeout => "the request head did not arrive in time",
            HttpError::BodyTooLarge(max) => {
                return (
                    "request body too large: a GET may carry at most ",
                    Some(max),
                    " bytes",
                )
            }
            HttpError::UriTooLong(max) => {
                return ("request line too long: at most ", Some(max), " bytes")
            }
            HttpError::HeadTooLarge(max) => {
                return ("request head too large: at most ", Some(max), " bytes")
            }
            HttpError::UserId(IdProblem::Empty) => "user id is empty",
            HttpError::UserId(IdProblem::NotDecimal) => {
                "user id must be a decimal number without sign"
            }
            HttpError::UserId(IdProblem::TooLarge) => "user id is larger than 4294967295",
            HttpError::Size(SizeProblem::NotANumber) => "size must be a decimal number",
            HttpError::Size(SizeProblem::AboveMax(max)) => {
                return ("size must be at most ", Some(max as u32), "")
            }
            HttpError::NothingToServe => "no items left to serve for this user",
            HttpError::Overloaded => "server busy: too many requests in flight, retry",
            HttpError::TooManyConnections => "server busy: too many connections, retry later",
        };
        (text, None, "")
    }

    /// A header this answer needs besides the usual ones.
    fn extra_header(self) -> &'static [u8] {
        match self {
            HttpError::MethodNotAllowed => b"Allow: GET\r\n",
            HttpError::Overloaded | HttpError::TooManyConnections => b"Retry-After: 1\r\n",
            _ => b"",
        }
    }
}

/// Decodes the first request in `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(req))`: answer `req.action` and
/// drop `req.len` bytes. An `Action::Fail` whose error `closes()` means: answer,
/// then close without reading further (its `len` is then meaningless).
pub fn decode(buf: &[u8], limits: Limits) -> Option<Request> {
    let head_too_large = HttpError::HeadTooLarge(limits.max_head as u32);
    let line_end = memchr::memchr(b'\n', &buf[..buf.len().min(limits.max_request_line + 1)]);
    if line_end.is_none() && buf.len() > limits.max_request_line {
        return Some(fail(HttpError::UriTooLong(limits.max_request_line as u32)));
    }
    // Left uninitialised: httparse fills only the headers it finds, instead
    // of every request paying to zero all MAX_HEADERS slots (2 KiB).
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Some(fail(head_too_large))
        }
        Err(_) => return Some(fail(HttpError::BadRequest("malformed request"))),
    };
    if head_len > limits.max_head {
        return Some(fail(head_too_large));
    }
    if has_bare_lf(&buf[..head_len]) {
        return Some(fail(HttpError::BadRequest(
            "malformed request: line ending without CR",
        )));
    }
    let head = match Head::read(&req) {
        Ok(head) => head,
        Err(e) => return Some(fail(e)),
    };
    if head.body_len > limits.max_body {
        return Some(fail(HttpError::BodyTooLarge(limits.max_body as u32)));
    }
    let len = head_len + head.body_len;
    if buf.len() < len {
        return None;
    }
    let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    Some(Request {
        action: route(method, target, limits),
        persist: head.persist,
        len,
    })
}

#[cold]
fn fail(e: HttpError) -> Request {
    Request {
        action: Action::Fail(e),
        persist: Persist::Close,
        len: 0,
    }
}

/// RFC 9112 lets a server reject a line ending without CR, and httparse
/// accepts one; rejecting closes a request-smuggling gap with proxies that
/// disagree. memchr finds the few line ends without a per-byte loop.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// What the headers say about framing and the connection.
struct Head {
    body_len: usize,
    persist: Persist,
}

impl Head {
    fn read(req: &httparse::Request) -> Result<Head, HttpError> {
        let http10 = req.version == Some(0);
        let (mut close, mut keep_alive) = (false, false);
        let mut body_len: Option<usize> = None;
        let mut hosts = 0;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                // Even identical repeats are refused: a proxy in front may
                // have picked the other one (RFC 9112 6.3).
                if body_len.is_some() {
                    return Err(HttpError::BadRequest("more than one Content-Length header"));
                }
                let n = parse_content_length(h.value)
                    .ok_or(HttpError::BadRequest("invalid Content-Length"))?;
                body_len = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // A GET has no use for a chunked body, and Transfer-Encoding
                // next to Content-Length is the classic smuggling vector.
                return Err(HttpError::BadRequest(
                    "Transfer-Encoding is not accepted on requests",
                ));
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
            }
        }
        if !http10 && hosts != 1 {
            return Err(HttpError::BadRequest(
                "HTTP/1.1 requests need exactly one Host header",
            ));
        }
        let persist = match (close, http10, keep_alive) {
            (true, _, _) | (false, true, false) => Persist::Close,
            (false, true, true) => Persist::KeepAliveAnnounced,
            (false, false, _) => Persist::KeepAlive,
        };
        Ok(Head {
            body_len: body_len.unwrap_or(0),
            persist,
        })
    }
}

/// Digits only, no sign or spaces; saturates instead of overflowing so that a
/// huge value is still "too large" rather than "invalid".
fn parse_content_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add((d - b'0') as usize)
    }))
}

/// Maps method and request target to an action.
pub fn route(method: &str, target: &str, limits: Limits) -> Action {
    let Some(target) = origin_form(target) else {
        return Action::Fail(HttpError::BadRequest("invalid request target"));
    };
    let (path, query) = match target.find('?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, ""),
    };
    let action = if path == "/healthz" {
        Action::Health
    } else if path == "/stats" {
        Action::Stats
    } else if path == "/metrics" {
        Action::Metrics
    } else if let Some(id) = path.strip_prefix("/feed/") {
        if id.contains('/') {
            return Action::Fail(HttpError::NotFound);
        }
        feed_action(id, query, limits)
    } else {
        return Action::Fail(HttpError::NotFound);
    };
    if method != "GET" {
        return Action::Fail(HttpError::MethodNotAllowed);
    }
    action
}

/// Accepts origin-form (`/path?q`) and absolute-form (`http://host/path?q`).
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let b = target.as_bytes();
    let rest = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let after_authority = rest.find(['/', '?']).unwrap_or(rest.len());
    match &rest[after_authority..] {
        "" => Some("/"),
        path if path.starts_with('/') => Some(path),
        _ => None,
    }
}

fn feed_action(id: &str, query: &str, limits: Limits) -> Action {
    let user = match parse_user_id(id) {
        Ok(user) => user,
        Err(p) => return Action::Fail(HttpError::UserId(p)),
    };
    let size = match query_param(query, "size") {
        None => limits.default_size,
        Some(v) => match parse_size(v, limits) {
            Ok(size) => size,
            Err(p) => return Action::Fail(HttpError::Size(p)),
        },
    };
    Action::Feed { user, size }
}

pub fn parse_user_id(s: &str) -> Result<u32, IdProblem> {
    if s.is_empty() {
        return Err(IdProblem::Empty);
    }
    let mut n: u64 = 0;
    for &d in s.as_bytes() {
        if !d.is_ascii_digit() {
            return Err(IdProblem::NotDecimal);
        }
        n = n * 10 + (d - b'0') as u64;
        if n > u32::MAX as u64 {
            return Err(IdProblem::TooLarge);
        }
    }
    Ok(n as u32)
}

fn parse_size(s: &str, limits: Limits) -> Result<u16, SizeProblem> {
    if s.is_empty() || !s.bytes().all(|d| d.is_ascii_digit()) {
        return Err(SizeProblem::NotANumber);
    }
    let too_large = SizeProblem::AboveMax(limits.max_size);
    let n = s.bytes().try_fold(0u32, |n, d| {
        let n = n * 10 + (d - b'0') as u32;
        (n <= limits.max_size as u32).then_some(n).ok_or(too_large)
    })?;
    Ok(if n == 0 {
        limits.default_size
    } else {
        n as u16
    })
}

/// The first value of `key` in an `a=1&b=2` query.
fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
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

/// Appends a `200` answer whose body is the JSON array of `items`.
pub fn encode_page(out: &mut Vec<u8>, date: &HttpDate, persist: Persist, items: &[u32]) {
    let body_len = if items.is_empty() {
        2
    } else {
        1 + items.iter().map(|&i| decimal_len(i) + 1).sum::<usize>()
    };
    write_head(out, "200 OK", date, JSON, persist, b"", body_len);
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

/// Appends the `/healthz` answer.
pub fn encode_health(out: &mut Vec<u8>, date: &HttpDate, persist: Persist) {
    const BODY: &[u8] = br#"{"status":"ok"}"#;
    write_head(out, "200 OK", date, JSON, persist, b"", BODY.len());
    out.extend_from_slice(BODY);
}

/// Appends a `200` answer with the given body and content type.
pub fn encode_body(
    out: &mut Vec<u8>,
    date: &HttpDate,
    persist: Persist,
    content_type: &str,
    body: &[u8],
) {
    write_head(out, "200 OK", date, content_type, persist, b"", body.len());
    out.extend_from_slice(body);
}

/// Appends an error answer: `{"error":"<message>"}`.
#[cold]
pub fn encode_error(out: &mut Vec<u8>, date: &HttpDate, persist: Persist, err: HttpError) {
    const OPEN: &[u8] = br#"{"error":""#;
    const CLOSE: &[u8] = br#""}"#;
    let persist = if err.closes() {
        Persist::Close
    } else {
        persist
    };
    let (text, number, after) = err.message();
    let mut digits = itoa::Buffer::new();
    let number = number.map_or("", |n| digits.format(n));
    let body_len = OPEN.len() + text.len() + number.len() + after.len() + CLOSE.len();
    let extra = err.extra_header();
    write_head(out, err.status(), date, JSON, persist, extra, body_len);
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

    const LIMITS: Limits = Limits::DEFAULT;

    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    fn action(raw: &[u8]) -> Action {
        decode(raw, LIMITS).expect("complete").action
    }

    #[test]
    fn decodes_feed_requests_and_sizes() {
        let r = decode(&get("/feed/42?size=5"), LIMITS).unwrap();
        assert_eq!(r.action, Action::Feed { user: 42, size: 5 });
        assert_eq!(r.persist, Persist::KeepAlive);
        assert_eq!(r.len, get("/feed/42?size=5").len());
        assert_eq!(
            action(&get("/feed/4294967295")),
            Action::Feed {
                user: u32::MAX,
                size: 10
            }
        );
        assert_eq!(
            action(&get("/feed/7?x=1&size=0&size=3")),
            Action::Feed { user: 7, size: 10 }
        );
        assert_eq!(
            action(&get("/feed/7?size=100")),
            Action::Feed { user: 7, size: 100 }
        );
        assert_eq!(
            action(&get("http://example.com:80/feed/9?size=2")),
            Action::Feed { user: 9, size: 2 }
        );
        assert_eq!(action(&get("/healthz")), Action::Health);
        assert_eq!(action(&get("/stats")), Action::Stats);
        assert_eq!(action(&get("/metrics?x")), Action::Metrics);
    }

    #[test]
    fn rejects_bad_ids_and_sizes_with_422() {
        use HttpError::*;
        let cases = [
            ("/feed/", UserId(IdProblem::Empty)),
            ("/feed/?size=3", UserId(IdProblem::Empty)),
            ("/feed/-1", UserId(IdProblem::NotDecimal)),
            ("/feed/+1", UserId(IdProblem::NotDecimal)),
            ("/feed/abc", UserId(IdProblem::NotDecimal)),
            ("/feed/4294967296", UserId(IdProblem::TooLarge)),
            ("/feed/99999999999999999999999", UserId(IdProblem::TooLarge)),
            ("/feed/1?size=abc", Size(SizeProblem::NotANumber)),
            ("/feed/1?size=", Size(SizeProblem::NotANumber)),
            ("/feed/1?size=-5", Size(SizeProblem::NotANumber)),
            ("/feed/1?size=101", Size(SizeProblem::AboveMax(100))),
            (
                "/feed/1?size=99999999999999",
                Size(SizeProblem::AboveMax(100)),
            ),
        ];
        for (target, want) in cases {
            assert_eq!(action(&get(target)), Action::Fail(want), "{target}");
        }
    }

    #[test]
    fn routes_unknown_paths_and_methods() {
        assert_eq!(action(&get("/nope")), Action::Fail(HttpError::NotFound));
        assert_eq!(action(&get("/feed")), Action::Fail(HttpError::NotFound));
        assert_eq!(action(&get("/feed/1/2")), Action::Fail(HttpError::NotFound));
        let post = b"POST /feed/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(action(post), Action::Fail(HttpError::MethodNotAllowed));
        let delete = b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(action(delete), Action::Fail(HttpError::MethodNotAllowed));
        let put = b"PUT /stats HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(action(put), Action::Fail(HttpError::MethodNotAllowed));
        assert_eq!(HttpError::MethodNotAllowed.code(), 405);
        assert!(matches!(
            action(&get("*")),
            Action::Fail(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn incomplete_at_every_split_point_then_complete() {
        let raw = b"GET /feed/12?size=3 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
        for cut in 0..raw.len() {
            assert_eq!(decode(&raw[..cut], LIMITS), None, "cut at {cut}");
        }
        let r = decode(raw, LIMITS).unwrap();
        assert_eq!(r.len, raw.len(), "the body is consumed");
        assert_eq!(r.action, Action::Feed { user: 12, size: 3 });
    }

    #[test]
    fn pipelined_requests_decode_one_after_another() {
        let mut raw = get("/feed/1");
        raw.extend(get("/feed/2?size=1"));
        raw.extend(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some(r) = decode(&raw[at..], LIMITS) {
            at += r.len;
            seen.push((r.action, r.persist));
        }
        assert_eq!(at, raw.len());
        assert_eq!(
            seen,
            [
                (Action::Feed { user: 1, size: 10 }, Persist::KeepAlive),
                (Action::Feed { user: 2, size: 1 }, Persist::KeepAlive),
                (Action::Health, Persist::Close),
            ]
        );
    }

    #[test]
    fn connection_persistence_rules() {
        let p = |raw: &[u8]| decode(raw, LIMITS).unwrap().persist;
        assert_eq!(p(b"GET /healthz HTTP/1.0\r\n\r\n"), Persist::Close);
        assert_eq!(
            p(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
            Persist::KeepAliveAnnounced
        );
        assert_eq!(
            p(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n"),
            Persist::Close
        );
    }

    #[test]
    fn malformed_and_smuggling_requests_close_with_400() {
        let bad: &[&[u8]] = &[
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\na",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\nHost: a\n\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\n\r\n",
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /feed/1 HTTP/9.9\r\nHost: a\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET  /feed/1 HTTP/1.1\r\n\r\n",
        ];
        for raw in bad {
            let r = decode(raw, LIMITS).expect("decided");
            assert!(
                matches!(r.action, Action::Fail(HttpError::BadRequest(_))),
                "{:?} -> {:?}",
                String::from_utf8_lossy(raw),
                r.action
            );
            assert_eq!(r.persist, Persist::Close);
        }
    }

    #[test]
    fn oversized_head_and_body() {
        let mut huge = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert_eq!(
            decode(&huge, LIMITS).unwrap().action,
            Action::Fail(HttpError::HeadTooLarge(8192))
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..MAX_HEADERS + 1 {
            many.extend(b"A: b\r\n");
        }
        many.extend(b"\r\n");
        assert_eq!(
            decode(&many, LIMITS).unwrap().action,
            Action::Fail(HttpError::HeadTooLarge(8192))
        );
        let body = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4097\r\n\r\n";
        assert_eq!(
            decode(body, LIMITS).unwrap().action,
            Action::Fail(HttpError::BodyTooLarge(4096))
        );
        // A request line over its limit is 414, complete or not.
        let long = get(&format!("/feed/1?{}", "x".repeat(MAX_REQUEST_LINE)));
        assert_eq!(
            decode(&long, LIMITS).unwrap().action,
            Action::Fail(HttpError::UriTooLong(4096))
        );
        assert_eq!(
            decode(&long[..MAX_REQUEST_LINE + 1], LIMITS)
                .unwrap()
                .action,
            Action::Fail(HttpError::UriTooLong(4096))
        );
        assert_eq!(decode(&long[..MAX_REQUEST_LINE], LIMITS), None);
        // Smaller configured limits apply.
        let small = Limits {
            max_head: 100,
            max_body: 3,
            ..LIMITS
        };
        let body = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(
            decode(body, small).unwrap().action,
            Action::Fail(HttpError::BodyTooLarge(3))
        );
        let mut head = get("/feed/1");
        let after_line = head.iter().position(|&b| b == b'\n').unwrap() + 1;
        head.splice(
            after_line..after_line,
            b"X-Pad: "
                .iter()
                .chain([b'p'; 90].iter())
                .chain(b"\r\n")
                .copied(),
        );
        assert_eq!(
            decode(&head, small).unwrap().action,
            Action::Fail(HttpError::HeadTooLarge(100))
        );
    }

    #[test]
    fn encodes_pages_errors_and_health() {
        let date = HttpDate::from_unix(0);
        let mut out = Vec::new();
        encode_page(
            &mut out,
            &date,
            Persist::KeepAlive,
            &[17, 4, 4_294_967_295, 0],
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: shardfeed\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 19\r\n\r\n[17,4,4294967295,0]"
        );
        out.clear();
        encode_page(&mut out, &date, Persist::Close, &[]);
        assert!(out.ends_with(b"Content-Length: 2\r\nConnection: close\r\n\r\n[]"));
        out.clear();
        encode_error(
            &mut out,
            &date,
            Persist::KeepAlive,
            HttpError::MethodNotAllowed,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET\r\n\r\n{\"error\":\"method not allowed: use GET\"}"));
        out.clear();
        encode_error(
            &mut out,
            &date,
            Persist::KeepAlive,
            HttpError::Size(SizeProblem::AboveMax(100)),
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.ends_with("\r\n\r\n{\"error\":\"size must be at most 100\"}"));
        assert_framed(&text);
        out.clear();
        encode_error(
            &mut out,
            &date,
            Persist::KeepAlive,
            HttpError::BadRequest("x"),
        );
        assert!(String::from_utf8(out.clone())
            .unwrap()
            .contains("Connection: close"));
        out.clear();
        encode_health(&mut out, &date, Persist::KeepAliveAnnounced);
        assert!(out.ends_with(b"Connection: keep-alive\r\n\r\n{\"status\":\"ok\"}"));
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
            HttpError::UserId(IdProblem::Empty),
            HttpError::UserId(IdProblem::NotDecimal),
            HttpError::UserId(IdProblem::TooLarge),
            HttpError::Size(SizeProblem::NotANumber),
            HttpError::Size(SizeProblem::AboveMax(7)),
            HttpError::Size(SizeProblem::AboveMax(10000)),
            HttpError::HeadTooLarge(8192),
            HttpError::NothingToServe,
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
                encode_error(&mut out, &date, persist, err);
                assert_framed(std::str::from_utf8(&out).unwrap());
            }
            for items in [&[][..], &[0], &[1, 22, 333, 4_294_967_295]] {
                let mut out = Vec::new();
                encode_page(&mut out, &date, persist, items);
                assert_framed(std::str::from_utf8(&out).unwrap());
            }
            let mut out = Vec::new();
            encode_health(&mut out, &date, persist);
            assert_framed(std::str::from_utf8(&out).unwrap());
            let mut out = Vec::new();
            encode_body(&mut out, &date, persist, "text/plain", b"a\nb\n");
            assert_framed(std::str::from_utf8(&out).unwrap());
        }
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
