//! Every error answer: a small `Copy` value on the hot path; its status line,
//! message and extra header are produced only when it is encoded.

use crate::auth::Problem;
use crate::cursor::CursorProblem;

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
    /// `?cursor=` is not a `Feed-Cursor` token of this user.
    Cursor(CursorProblem),
    HeadTooLarge(u32),
    UriTooLong(u32),
    /// The request head did not arrive in time.
    Timeout,
    /// An `Expect` other than `100-continue`.
    ExpectationFailed,
    /// `--jwt-secret`: no valid token (`401`, `WWW-Authenticate: Bearer`).
    Unauthorized(Problem),
    /// `--jwt-secret`: a valid token for another user (`403`).
    Forbidden,
    /// A queue to another shard is full: try again.
    Overloaded,
    /// The shard has as many connections as it may: try again later.
    TooManyConnections,
    /// Stopping, the journal closed: a page now would not be kept.
    Stopping,
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
            HttpError::Unauthorized(_) => "401 Unauthorized",
            HttpError::Forbidden => "403 Forbidden",
            HttpError::NotFound => "404 Not Found",
            HttpError::MethodNotAllowed => "405 Method Not Allowed",
            HttpError::Timeout => "408 Request Timeout",
            HttpError::ExpectationFailed => "417 Expectation Failed",
            HttpError::BodyTooLarge(_) => "413 Content Too Large",
            HttpError::UriTooLong(_) => "414 URI Too Long",
            HttpError::UserId(_) | HttpError::Size(_) | HttpError::Cursor(_) => {
                "422 Unprocessable Content"
            }
            HttpError::HeadTooLarge(_) => "431 Request Header Fields Too Large",
            HttpError::Overloaded | HttpError::TooManyConnections | HttpError::Stopping => {
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
                | HttpError::ExpectationFailed
                | HttpError::TooManyConnections
                | HttpError::Stopping
        )
    }

    /// The message: static text, then an optional number. No message holds
    /// a quote or backslash, so it goes into JSON as it is.
    pub(super) fn message(self) -> (&'static str, Option<u32>, &'static str) {
        let text = match self {
            HttpError::BadRequest(why) => why,
            HttpError::NotFound => "no such resource",
            HttpError::MethodNotAllowed => "method not allowed: use GET or HEAD",
            HttpError::Timeout => "the request head did not arrive in time",
            HttpError::ExpectationFailed => "only `Expect: 100-continue` is supported",
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
            HttpError::Cursor(CursorProblem::Shape) => {
                "cursor must be a Feed-Cursor header value (32 hex digits), passed back unchanged"
            }
            HttpError::Cursor(CursorProblem::Check) => {
                "cursor is not valid for this user: mistyped, or the Feed-Cursor of another user"
            }
            HttpError::Unauthorized(Problem::Missing) => {
                "authorization required: send Authorization: Bearer <JWT>"
            }
            HttpError::Unauthorized(Problem::Malformed) => "invalid token: not a well-formed JWT",
            HttpError::Unauthorized(Problem::Algorithm) => "invalid token: alg must be HS256",
            HttpError::Unauthorized(Problem::Signature) => "invalid token: bad signature",
            HttpError::Unauthorized(Problem::Expired) => "invalid token: expired or not yet valid",
            HttpError::Forbidden => "the token is for another user",
            HttpError::Overloaded => "server busy: too many requests in flight, retry",
            HttpError::TooManyConnections => "server busy: too many connections, retry later",
            HttpError::Stopping => "stopping: retry on another connection",
        };
        (text, None, "")
    }

    /// A header this answer needs besides the usual ones.
    pub(super) fn extra_header(self) -> &'static [u8] {
        match self {
            HttpError::MethodNotAllowed => super::ALLOW_HEADER,
            HttpError::Overloaded | HttpError::TooManyConnections | HttpError::Stopping => {
                b"Retry-After: 1\r\n"
            }
            HttpError::Unauthorized(Problem::Missing) => {
                b"WWW-Authenticate: Bearer realm=\"shardfeed\"\r\n"
            }
            HttpError::Unauthorized(_) => {
                b"WWW-Authenticate: Bearer realm=\"shardfeed\", error=\"invalid_token\"\r\n"
            }
            _ => b"",
        }
    }
}

impl HttpError {
    /// Errors about a `/feed/{id}` request itself (counted with the feed).
    pub fn is_feed(self) -> bool {
        matches!(
            self,
            HttpError::UserId(_)
                | HttpError::Size(_)
                | HttpError::Cursor(_)
                | HttpError::Unauthorized(_)
                | HttpError::Forbidden
        )
    }
}
