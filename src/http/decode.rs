//! Bytes in, requests out: one request head (httparse, borrowed, no copies),
//! its framing (`Content-Length`, no `Transfer-Encoding`), what it asks for
//! the connection, and the route.

use std::mem::MaybeUninit;

use super::{Action, Decoded, HttpError, IdProblem, Limits, Persist, Request, SizeProblem, Span};
use crate::cursor::Cursor;
use crate::decimal::{self, DecimalError};

/// Header lines parsed per request; more is treated like an oversized head.
const MAX_HEADERS: usize = 64;

/// Decodes the first request in `buf`.
///
/// A [`Decoded::Request`] whose action is a closing error
/// ([`HttpError::closes`]) leaves the rest of the buffer in doubt: answer it,
/// then read nothing more (its `len` is then meaningless).
pub fn decode(buf: &[u8], limits: Limits) -> Decoded {
    let head_too_large = HttpError::HeadTooLarge(limits.max_head as u32);
    let line_end = memchr::memchr(b'\n', &buf[..buf.len().min(limits.max_request_line + 1)]);
    if line_end.is_none() && buf.len() > limits.max_request_line {
        return fail(HttpError::UriTooLong(limits.max_request_line as u32));
    }
    // Left uninitialised: httparse fills only the headers it finds, instead
    // of every request paying to zero all MAX_HEADERS slots (2 KiB).
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head => return Decoded::Incomplete,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return fail(head_too_large)
        }
        Err(_) => return fail(HttpError::BadRequest("malformed request")),
    };
    if head_len > limits.max_head {
        return fail(head_too_large);
    }
    if has_bare_lf(&buf[..head_len]) {
        return fail(HttpError::BadRequest(
            "malformed request: line ending without CR",
        ));
    }
    let head = match Head::read(&req, buf) {
        Ok(head) => head,
        Err(e) => return fail(e),
    };
    if head.body_len > limits.max_body {
        return fail(HttpError::BodyTooLarge(limits.max_body as u32));
    }
    let len = head_len + head.body_len;
    if buf.len() < len {
        return if head.expect_continue {
            Decoded::AwaitsContinue
        } else {
            Decoded::Incomplete
        };
    }
    let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    Decoded::Request(Request {
        action: route(method, target, limits),
        head: method == "HEAD",
        persist: head.persist,
        len,
        authorization: head.authorization,
    })
}

/// A request whose framing could not be read: nothing after it can be.
#[cold]
fn fail(e: HttpError) -> Decoded {
    debug_assert!(e.closes());
    Decoded::Request(Request {
        action: Action::Fail(e),
        head: false,
        persist: Persist::Close,
        len: 0,
        authorization: None,
    })
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
    /// `Expect: 100-continue` on HTTP/1.1 (HTTP/1.0 must ignore it).
    expect_continue: bool,
    authorization: Option<Span>,
}

impl Head {
    /// `buf` is the buffer `req` was parsed from (header values borrow it).
    fn read(req: &httparse::Request, buf: &[u8]) -> Result<Head, HttpError> {
        let http10 = req.version == Some(0);
        let (mut close, mut keep_alive) = (false, false);
        let mut body_len: Option<usize> = None;
        let mut hosts = 0;
        let mut expect_continue = false;
        let mut authorization = None;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                // Even identical repeats are refused: a proxy in front may
                // have picked the other one (RFC 9112 6.3).
                if body_len.is_some() {
                    return Err(HttpError::BadRequest("more than one Content-Length header"));
                }
                body_len = Some(match decimal::parse(h.value, usize::MAX as u64) {
                    Ok(n) => n as usize,
                    // Still a length, only a huge one: 413, not 400.
                    Err(DecimalError::TooLarge) => usize::MAX,
                    Err(_) => return Err(HttpError::BadRequest("invalid Content-Length")),
                });
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
            } else if name.eq_ignore_ascii_case(b"expect") && !http10 {
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    return Err(HttpError::ExpectationFailed);
                }
                expect_continue = true;
            } else if name.eq_ignore_ascii_case(b"authorization") {
                if authorization.is_some() {
                    return Err(HttpError::BadRequest("more than one Authorization header"));
                }
                let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
                authorization = Some(Span {
                    start: start as u32,
                    len: h.value.len() as u32,
                });
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
            expect_continue,
            authorization,
        })
    }
}

/// Maps method and request target to an action.
pub fn route(method: &str, target: &str, limits: Limits) -> Action {
    if target == "*" {
        return match method {
            "OPTIONS" => Action::Options,
            _ => Action::Fail(HttpError::BadRequest("invalid request target")),
        };
    }
    let Some(target) = origin_form(target) else {
        return Action::Fail(HttpError::BadRequest("invalid request target"));
    };
    let (path, query) = match target.find('?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, ""),
    };
    let action = match path {
        "/healthz" => Action::Health,
        "/stats" => Action::Stats,
        "/metrics" => Action::Metrics,
        _ => match path.strip_prefix("/feed/") {
            Some(id) if !id.contains('/') => feed_action(id, query, limits),
            _ => return Action::Fail(HttpError::NotFound),
        },
    };
    match method {
        "GET" | "HEAD" => action,
        "OPTIONS" => Action::Options,
        _ => Action::Fail(HttpError::MethodNotAllowed),
    }
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
    let user = match decimal::parse_u32(id.as_bytes()) {
        Ok(user) => user,
        Err(e) => {
            return Action::Fail(HttpError::UserId(match e {
                DecimalError::Empty => IdProblem::Empty,
                DecimalError::NotDecimal => IdProblem::NotDecimal,
                DecimalError::TooLarge => IdProblem::TooLarge,
            }))
        }
    };
    // One pass over the query for both parameters (the first of each
    // counts; others are ignored).
    let (mut size, mut cursor) = (None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "size" if size.is_none() => size = Some(v),
            "cursor" if cursor.is_none() => cursor = Some(v),
            _ => {}
        }
    }
    let size = match size {
        None => limits.default_size,
        Some(v) => match decimal::parse(v.as_bytes(), limits.max_size as u64) {
            Ok(0) => limits.default_size,
            Ok(n) => n as u16,
            Err(DecimalError::TooLarge) => {
                return Action::Fail(HttpError::Size(SizeProblem::AboveMax(limits.max_size)))
            }
            Err(_) => return Action::Fail(HttpError::Size(SizeProblem::NotANumber)),
        },
    };
    // `cursor=` with nothing after it is no cursor: a client's first
    // request, before it holds one, may use the same URL template.
    let cursor = match cursor {
        None | Some("") => None,
        Some(token) => match Cursor::parse(token.as_bytes(), user) {
            Ok(c) => Some(c),
            Err(problem) => return Action::Fail(HttpError::Cursor(problem)),
        },
    };
    Action::Feed { user, size, cursor }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_HEAD;
    use crate::http::MAX_REQUEST_LINE;

    const LIMITS: Limits = Limits::DEFAULT;

    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    /// The request at the start of `raw`, which must be complete.
    fn req(raw: &[u8]) -> Request {
        match decode(raw, LIMITS) {
            Decoded::Request(r) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn action(raw: &[u8]) -> Action {
        req(raw).action
    }

    #[test]
    fn decodes_feed_requests_and_sizes() {
        let r = req(&get("/feed/42?size=5"));
        assert_eq!(
            r.action,
            Action::Feed {
                user: 42,
                size: 5,
                cursor: None
            }
        );
        assert_eq!(r.persist, Persist::KeepAlive);
        assert_eq!(r.len, get("/feed/42?size=5").len());
        assert_eq!(
            action(&get("/feed/4294967295")),
            Action::Feed {
                user: u32::MAX,
                size: 10,
                cursor: None
            }
        );
        assert_eq!(
            action(&get("/feed/7?x=1&size=0&size=3")),
            Action::Feed {
                user: 7,
                size: 10,
                cursor: None
            }
        );
        assert_eq!(
            action(&get("/feed/7?size=100")),
            Action::Feed {
                user: 7,
                size: 100,
                cursor: None
            }
        );
        assert_eq!(
            action(&get("http://example.com:80/feed/9?size=2")),
            Action::Feed {
                user: 9,
                size: 2,
                cursor: None
            }
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
    fn decodes_cursors_checked_against_the_user() {
        use crate::cursor::{Cursor, CursorProblem};
        let c = Cursor {
            user: 7,
            version: 1,
            position: 20,
            pool: 3,
        };
        let token = String::from_utf8(c.token().to_vec()).unwrap();
        let feed = |target: &str| action(&get(target));
        assert_eq!(
            feed(&format!("/feed/7?size=3&cursor={token}")),
            Action::Feed {
                user: 7,
                size: 3,
                cursor: Some(c)
            }
        );
        assert_eq!(
            feed(&format!("/feed/7?cursor={token}&cursor=x&size=3")),
            Action::Feed {
                user: 7,
                size: 3,
                cursor: Some(c)
            },
            "the first one counts"
        );
        let none = Action::Feed {
            user: 7,
            size: 10,
            cursor: None,
        };
        assert_eq!(feed("/feed/7?cursor="), none, "empty: no cursor");
        assert_eq!(feed("/feed/7?cursors=abc&xcursor=1"), none);
        let shape = Action::Fail(HttpError::Cursor(CursorProblem::Shape));
        let check = Action::Fail(HttpError::Cursor(CursorProblem::Check));
        assert_eq!(feed("/feed/7?cursor=abc"), shape);
        assert_eq!(feed("/feed/7?cursor"), none, "a bare key is empty");
        assert_eq!(feed(&format!("/feed/7?cursor={token}0")), shape);
        assert_eq!(feed(&format!("/feed/7?cursor=%20{}", &token[3..])), shape);
        assert_eq!(
            feed(&format!("/feed/8?cursor={token}")),
            check,
            "another user's"
        );
        let typo = format!(
            "{}{}",
            &token[..31],
            if token.ends_with('0') { '1' } else { '0' }
        );
        assert_eq!(feed(&format!("/feed/7?cursor={typo}")), check);
        assert_eq!(HttpError::Cursor(CursorProblem::Check).code(), 422);
        assert!(!HttpError::Cursor(CursorProblem::Shape).closes());
        // The id and the size are judged first.
        assert_eq!(
            feed("/feed/x?cursor=abc"),
            Action::Fail(HttpError::UserId(IdProblem::NotDecimal))
        );
        assert_eq!(
            feed("/feed/7?size=x&cursor=abc"),
            Action::Fail(HttpError::Size(SizeProblem::NotANumber))
        );
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
            assert_eq!(
                decode(&raw[..cut], LIMITS),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
        let r = req(raw);
        assert_eq!(r.len, raw.len(), "the body is consumed");
        assert_eq!(
            r.action,
            Action::Feed {
                user: 12,
                size: 3,
                cursor: None
            }
        );
    }

    #[test]
    fn pipelined_requests_decode_one_after_another() {
        let mut raw = get("/feed/1");
        raw.extend(get("/feed/2?size=1"));
        raw.extend(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let mut at = 0;
        let mut seen = Vec::new();
        while let Decoded::Request(r) = decode(&raw[at..], LIMITS) {
            at += r.len;
            seen.push((r.action, r.persist));
        }
        assert_eq!(at, raw.len());
        assert_eq!(
            seen,
            [
                (
                    Action::Feed {
                        user: 1,
                        size: 10,
                        cursor: None
                    },
                    Persist::KeepAlive
                ),
                (
                    Action::Feed {
                        user: 2,
                        size: 1,
                        cursor: None
                    },
                    Persist::KeepAlive
                ),
                (Action::Health, Persist::Close),
            ]
        );
    }

    #[test]
    fn connection_persistence_rules() {
        let p = |raw: &[u8]| req(raw).persist;
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
            let r = req(raw);
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
        assert_eq!(action(&huge), Action::Fail(HttpError::HeadTooLarge(8192)));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..MAX_HEADERS + 1 {
            many.extend(b"A: b\r\n");
        }
        many.extend(b"\r\n");
        assert_eq!(action(&many), Action::Fail(HttpError::HeadTooLarge(8192)));
        let body = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4097\r\n\r\n";
        assert_eq!(action(body), Action::Fail(HttpError::BodyTooLarge(4096)));
        // A request line over its limit is 414, complete or not.
        let long = get(&format!("/feed/1?{}", "x".repeat(MAX_REQUEST_LINE)));
        assert_eq!(action(&long), Action::Fail(HttpError::UriTooLong(4096)));
        assert_eq!(
            action(&long[..MAX_REQUEST_LINE + 1]),
            Action::Fail(HttpError::UriTooLong(4096))
        );
        assert_eq!(
            decode(&long[..MAX_REQUEST_LINE], LIMITS),
            Decoded::Incomplete
        );
        // Smaller configured limits apply.
        let small = Limits {
            max_head: 100,
            max_body: 3,
            ..LIMITS
        };
        let body = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(
            small_action(body, small),
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
            small_action(&head, small),
            Action::Fail(HttpError::HeadTooLarge(100))
        );
    }

    fn small_action(raw: &[u8], limits: Limits) -> Action {
        match decode(raw, limits) {
            Decoded::Request(r) => r.action,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_authorization_value_is_found_in_place() {
        let raw = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nAuthorization:  Bearer a.b.c \r\n\r\n";
        let r = req(raw);
        assert_eq!(
            r.authorization.unwrap().of(raw).trim_ascii(),
            b"Bearer a.b.c"
        );
        assert_eq!(req(&get("/feed/1")).authorization, None);
        let twice =
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\nAuthorization: y\r\n\r\n";
        assert!(matches!(
            action(twice),
            Action::Fail(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn head_options_and_expect() {
        let head = req(b"HEAD /feed/3?size=2 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(head.head);
        assert_eq!(
            head.action,
            Action::Feed {
                user: 3,
                size: 2,
                cursor: None
            }
        );
        assert!(!req(&get("/feed/3")).head);
        let options = |target: &str| {
            action(format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        };
        assert_eq!(options("*"), Action::Options);
        assert_eq!(options("/feed/1"), Action::Options);
        assert_eq!(options("/healthz"), Action::Options);
        assert_eq!(options("/nope"), Action::Fail(HttpError::NotFound));
        assert!(matches!(
            action(&get("*")),
            Action::Fail(HttpError::BadRequest(_))
        ));

        // A body announced with 100-continue: say so until it arrives.
        let raw = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc";
        let head_len = raw.len() - 3;
        assert_eq!(decode(&raw[..head_len - 1], LIMITS), Decoded::Incomplete);
        for cut in head_len..raw.len() {
            assert_eq!(
                decode(&raw[..cut], LIMITS),
                Decoded::AwaitsContinue,
                "cut at {cut}"
            );
        }
        assert_eq!(req(raw).len, raw.len());
        // No body, or the body already here: nothing to wait for.
        let empty = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            req(empty).action,
            Action::Feed {
                user: 1,
                size: 10,
                cursor: None
            }
        );
        // Any other expectation: 417. HTTP/1.0 ignores Expect.
        let other = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n";
        assert_eq!(action(other), Action::Fail(HttpError::ExpectationFailed));
        let old = b"GET /feed/1 HTTP/1.0\r\nExpect: something\r\n\r\n";
        assert_eq!(
            action(old),
            Action::Feed {
                user: 1,
                size: 10,
                cursor: None
            }
        );
        // Too large a body is refused before the client sends it.
        let big = b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 99999\r\n\r\n";
        assert_eq!(action(big), Action::Fail(HttpError::BodyTooLarge(4096)));
        let huge =
            b"GET /feed/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(action(huge), Action::Fail(HttpError::BodyTooLarge(4096)));
    }
}
