//! HTTP/1.1 on the wire: bytes in, requests out; answers to bytes. Knows
//! nothing of shards or stores.
//!
//! - `http/decode.rs` ([`decode`], [`route`]): one request head (httparse,
//!   borrowed, no copies), its framing, and the route it asks for. An
//!   incomplete request is a normal state, not an error.
//! - `http/encode.rs` (`encode_*`): answers written straight into the
//!   connection's output buffer with `itoa`: no `format!`, no allocation
//!   once the buffer has grown to its working size. The `Date` header is
//!   cached per thread and refreshed by a timer, so that requests never
//!   read the clock.
//! - `http/error.rs` ([`HttpError`]): every error answer, as a small `Copy`
//!   value on the hot path; its status and message are produced only when it
//!   is encoded.

use crate::cursor::Cursor;

mod decode;
mod encode;
mod error;

pub use decode::{decode, route};
pub use encode::{
    cached_date, encode_body, encode_continue, encode_degraded_page, encode_error, encode_health,
    encode_no_content, encode_options, encode_page, refresh_date, Framing, HttpDate,
};
pub use error::{HttpError, IdProblem, SizeProblem};

/// Default largest request head (request line + headers): `431` beyond.
pub const MAX_HEAD: usize = 8 * 1024;
/// Default largest request line: `414` beyond.
pub const MAX_REQUEST_LINE: usize = 4 * 1024;
/// Default largest body accepted (and discarded) on a GET: `413` beyond.
pub const MAX_BODY: usize = 4 * 1024;

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
    /// The README's documented defaults.
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

/// What happens to the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: keep the connection, say nothing.
    KeepAlive,
    /// HTTP/1.0 with `Connection: keep-alive`: keep it and say so.
    KeepAliveAnnounced,
    /// Close after this answer and say so.
    Close,
}

/// What [`decode`] found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole request yet: read more.
    Incomplete,
    /// The head is complete and asks `Expect: 100-continue`; its body has
    /// not arrived yet. Send `100 Continue` (once), then read more.
    AwaitsContinue,
    Request(Request),
}

/// A decoded request: what to answer, and how many bytes it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    /// `HEAD`: answer as for `GET`, without the body.
    pub head: bool,
    /// What the client's headers ask for the connection. Whether the
    /// answer really keeps it is the connection's decision (it also closes
    /// after errors that leave the byte stream in doubt, and when stopping).
    pub persist: Persist,
    /// Bytes of the buffer this request took (head and any body).
    pub len: usize,
    /// Where the `Authorization` header's value is, from the start of the
    /// request (the value is not copied).
    pub authorization: Option<Span>,
}

/// A range of a request's bytes, from the start of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    /// These bytes of `request` (the buffer starting at the request).
    pub fn of<'b>(&self, request: &'b [u8]) -> &'b [u8] {
        &request[self.start as usize..][..self.len as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Feed {
        user: u32,
        size: u16,
        /// `?cursor=TOKEN`, checked against `user` (not yet against the
        /// feed version: only the owner's store knows that).
        cursor: Option<Cursor>,
    },
    Health,
    /// `/stats`: JSON latency and counters of every shard.
    Stats,
    /// `/metrics`: Prometheus text exposition.
    Metrics,
    /// `OPTIONS` on a known path or `*`: `204` with `Allow`.
    Options,
    Fail(HttpError),
}

/// The methods every known path takes: the `Allow` header of `OPTIONS` and
/// `405` answers.
pub const ALLOW_HEADER: &[u8] = b"Allow: GET, HEAD, OPTIONS\r\n";
