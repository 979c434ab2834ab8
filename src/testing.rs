//! Test doubles, for this crate's tests, `tests/` and the fuzz target
//! (feature `testing`): a [`Session`] over a single store, driven with bytes
//! in memory exactly as a connection drives it over its socket, and an
//! oracle for what comes out.

use std::cell::RefCell;
use std::time::Instant;

use crate::feed::{Page, Store};
use crate::metrics::{Class, Route, Snapshot};
use crate::session::{Backend, PageAsk, Pending, Session};

/// A backend serving one store, no other shards. Odd user ids are answered
/// through the forwarded path (an immediately ready future), so that
/// staging and ordering are exercised too, and their home is elsewhere
/// (connection moves). `/stats` is `{"shards":[],...}`
/// of no shard; `/metrics` is unavailable (a `503`).
pub struct LocalBackend {
    pub store: RefCell<Store>,
    /// Answers close their connections, as when the server stops.
    pub stopping: bool,
}

impl LocalBackend {
    pub fn new(store: Store) -> LocalBackend {
        LocalBackend {
            store: RefCell::new(store),
            stopping: false,
        }
    }
}

impl Backend for LocalBackend {
    type Forwarded = std::future::Ready<Page>;

    fn page(&self, ask: PageAsk, _now: Instant) -> Pending<Self::Forwarded> {
        let mut items = Vec::new();
        let size = ask.size as usize;
        let served =
            (self.store.borrow_mut()).page(ask.user, size, ask.cursor, &mut items, !ask.peek);
        let page = Page {
            items,
            outcome: served.map(|_| ()),
            cursor: served.ok(),
        };
        if ask.user % 2 == 1 {
            Pending::Forwarded(std::future::ready(page))
        } else {
            Pending::Ready(page)
        }
    }

    fn recycle(&self, _items: Vec<u32>) {}

    fn record(&self, _answered: &[(Route, Class)], _us: u64) {}

    async fn snapshots(&self) -> Option<Vec<Snapshot>> {
        None
    }

    fn stopping(&self) -> bool {
        self.stopping
    }

    /// Odd users are "elsewhere", as their pages are "forwarded".
    type Home = ();
    fn home(&self, user: u32) -> Option<()> {
        (user % 2 == 1).then_some(())
    }
}

/// One answer as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<'a> {
    pub head: &'a str,
    pub body: &'a [u8],
}

impl Answer<'_> {
    pub fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap_or(0)
    }

    pub fn closes(&self) -> bool {
        self.head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close"))
    }
}

/// What [`run_offline`] produced.
#[derive(Debug, Default)]
pub struct Offline {
    /// Every answer written, in order.
    pub output: Vec<u8>,
    /// Rounds that wrote something (the number of writes a socket would get).
    pub writes: usize,
    /// The loop decided to close the connection.
    pub closed: bool,
    /// For every final answer, in order: sent without its body (`HEAD`).
    pub bodiless: Vec<bool>,
}

impl Offline {
    /// The final answers in the output (interim `100 Continue` left out),
    /// checking that each is a complete HTTP/1.1 response framed by its
    /// `Content-Length` (none on `204`, no body after `HEAD`), that an
    /// answer saying `Connection: close` is the last one, and that the loop
    /// closed the connection after it, and only then.
    pub fn answers(&self) -> Result<Vec<Answer<'_>>, String> {
        let mut out = &self.output[..];
        let mut answers: Vec<Answer> = Vec::new();
        while !out.is_empty() {
            if answers.last().is_some_and(|a| a.closes()) {
                return Err("an answer after one that said `Connection: close`".into());
            }
            if !out.starts_with(b"HTTP/1.1 ") {
                return Err("an answer does not start with a status line".into());
            }
            let head_end = memchr::memmem::find(out, b"\r\n\r\n").ok_or("an incomplete head")?;
            let head =
                std::str::from_utf8(&out[..head_end]).map_err(|_| "a head that is not text")?;
            let rest = &out[head_end + 4..];
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "));
            if status == 100 {
                if length.is_some() || head.lines().count() != 1 {
                    return Err("a 100 Continue with headers".into());
                }
                out = rest;
                continue;
            }
            let bodiless = *self
                .bodiless
                .get(answers.len())
                .ok_or("more answers than requests")?;
            let len = match (status, length) {
                (204, None) => 0,
                (204, Some(_)) => return Err("a 204 with Content-Length".into()),
                (_, None) => return Err("an answer without Content-Length".into()),
                (_, Some(n)) => n.parse::<usize>().map_err(|_| "a bad Content-Length")?,
            };
            let sent = if bodiless { 0 } else { len };
            if sent > rest.len() {
                return Err("a body shorter than its Content-Length".into());
            }
            answers.push(Answer {
                head,
                body: &rest[..sent],
            });
            out = &rest[sent..];
        }
        let closing = answers.last().is_some_and(|a| a.closes());
        if closing != self.closed {
            return Err(format!(
                "the last answer says close: {closing}, the connection closed: {}",
                self.closed
            ));
        }
        Ok(answers)
    }
}

/// Runs the session over in-memory input arriving in `chunks`, exactly as a
/// connection does over its socket (read what fits, answer every complete
/// request, write, repeat), minus the socket and the deadlines. Forwarded
/// futures must be ready at once.
pub fn run_offline<'a, B: Backend>(
    session: &mut Session<B>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Offline {
    let mut result = Offline::default();
    session.bodiless.get_or_insert_with(Vec::new);
    'input: for mut chunk in chunks {
        while !chunk.is_empty() {
            let room = session.read_buf();
            let n = room.len().min(chunk.len());
            room[..n].copy_from_slice(&chunk[..n]);
            session.received(n);
            chunk = &chunk[n..];
            loop {
                let now = Instant::now();
                let round = session.answer_ready(now);
                futures_lite::future::block_on(session.finish_round());
                if !session.output().is_empty() {
                    result.output.extend_from_slice(session.output());
                    session.written();
                    result.writes += 1;
                }
                session.record(now);
                if round.close {
                    result.closed = true;
                    break 'input;
                }
                if !round.more_ready {
                    break;
                }
            }
        }
    }
    result.bodiless = session.bodiless.take().unwrap_or_default();
    result
}
