//! The socket-free half of a connection: decode every complete request in
//! the input, answer it (or have it forwarded), stage answers so that they
//! leave in request order, and count them.
//!
//! It is generic over a [`Backend`], the shard side of answering: the real
//! one is a shard (`Rc<Shard>`, in `conn.rs`); [`LocalBackend`] serves a
//! single store, which lets tests and the fuzz target drive this exact loop
//! without sockets or executors.

use std::cell::RefCell;
use std::future::Future;
use std::ops::Range;
use std::time::Instant;

use crate::feed::Store;
use crate::http::{self, Action, HttpDate, HttpError, Limits, Persist, Request};
use crate::metrics::{Class, Route};
use crate::shard::{Pending, Unserved};

/// Initial read buffer: a typical request is a few hundred bytes, and
/// thousands of idle connections should not cost a large buffer each.
const INITIAL_INPUT: usize = 2 * 1024;

type PageResult = Result<Vec<u32>, Unserved>;

/// What answering needs from the shard.
pub trait Backend {
    /// A page on its way from another shard.
    type Forwarded: Future<Output = PageResult>;
    fn limits(&self) -> Limits;
    fn date(&self) -> HttpDate;
    /// The user's next page: ready, or forwarded to its owner.
    fn page(&self, user: u32, size: u16, now: Instant) -> Pending<Self::Forwarded>;
    /// Takes back a page buffer once it is written.
    fn recycle(&self, page: Vec<u32>);
    /// Counts answered requests that took `us` microseconds.
    fn record(&self, answered: &[(Route, Class)], us: u64);
    /// `/stats` or `/metrics` as (content type, body); `None`: unavailable.
    fn report(&self, report: Report) -> impl Future<Output = Option<(&'static str, String)>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Stats,
    Metrics,
}

/// A connection's read buffer: `buf[..filled]` is received, unanswered
/// input. Grows (never beyond `max`) only when a request does not fit.
pub struct Input {
    buf: Vec<u8>,
    filled: usize,
    max: usize,
}

impl Input {
    /// `max` must hold one largest request plus one byte, so that a full
    /// buffer always holds something [`http::decode`] decides on.
    pub fn new(max: usize) -> Input {
        Input {
            buf: vec![0; INITIAL_INPUT.min(max)],
            filled: 0,
            max,
        }
    }

    /// Room to read into (never empty).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.filled == self.buf.len() {
            let grown = (self.buf.len() * 2).min(self.max);
            assert!(grown > self.buf.len(), "a full input buffer is decodable");
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.filled..]
    }

    pub fn received(&mut self, n: usize) {
        self.filled += n;
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Drops the first `n` bytes.
    pub fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }
}

/// An answer not yet written: encoded bytes in `staged`, or one that must be
/// waited for.
enum Queued<F> {
    Bytes(Range<usize>),
    Forwarded(F, Persist),
    Report(Report, Persist),
}

/// One connection's input, answers and bookkeeping; allocated once per
/// connection.
pub struct Answers<B: Backend> {
    pub backend: B,
    /// Requests answered per round before writing.
    max_pipeline: usize,
    /// Bytes of answers per round before writing.
    max_unsent: usize,
    pub input: Input,
    /// Answers ready to be written, in request order.
    pub out: Vec<u8>,
    staged: Vec<u8>,
    queued: Vec<Queued<B::Forwarded>>,
    /// Route and status class of every answer of this round, for metrics.
    answered: Vec<(Route, Class)>,
}

impl<B: Backend> Answers<B> {
    pub fn new(backend: B, max_pipeline: usize, max_unsent: usize) -> Answers<B> {
        Answers {
            input: Input::new(backend.limits().max_request() + 1),
            backend,
            max_pipeline,
            max_unsent,
            out: Vec::new(),
            staged: Vec::new(),
            queued: Vec::new(),
            answered: Vec::new(),
        }
    }
}

/// What one round of answering found.
pub struct Round {
    /// The connection must close after these answers.
    pub close: bool,
    /// Complete requests are still waiting in the buffer.
    pub more_ready: bool,
}

impl<B: Backend> Answers<B> {
    /// Decodes and answers (or forwards) every complete request in the input,
    /// up to the round's limits, and drops their bytes from the buffer.
    pub fn answer_ready_requests(&mut self, now: Instant) -> Round {
        let mut at = 0;
        let mut answered = 0;
        let mut close = false;
        let mut full = false;
        loop {
            if answered == self.max_pipeline
                || self.out.len() + self.staged.len() >= self.max_unsent
            {
                full = true;
                break;
            }
            let Some(req) = http::decode(&self.input.data()[at..], self.backend.limits()) else {
                break;
            };
            answered += 1;
            self.answer(req, now);
            if req.persist == Persist::Close {
                close = true;
                break;
            }
            at += req.len;
        }
        self.input.consume(at);
        Round {
            close,
            more_ready: !close && full,
        }
    }

    fn answer(&mut self, req: Request, now: Instant) {
        let persist = req.persist;
        let (user, size) = match req.action {
            Action::Feed { user, size } => (user, size),
            Action::Health => {
                return self.encode(Route::Local, Class::Success, |out, date| {
                    http::encode_health(out, date, persist)
                })
            }
            Action::Stats => return self.queued.push(Queued::Report(Report::Stats, persist)),
            Action::Metrics => return self.queued.push(Queued::Report(Report::Metrics, persist)),
            Action::Fail(err) => return self.encode_error(Route::Local, err, persist),
        };
        match self.backend.page(user, size, now) {
            Pending::Ready(result) => self.encode_page(Route::Local, result, persist),
            Pending::Forwarded(ticket) => self.queued.push(Queued::Forwarded(ticket, persist)),
        }
    }

    fn encode_page(&mut self, route: Route, result: Result<Vec<u32>, Unserved>, persist: Persist) {
        match result {
            Ok(page) => {
                self.encode(route, Class::Success, |out, date| {
                    http::encode_page(out, date, persist, &page)
                });
                self.backend.recycle(page);
            }
            Err(Unserved::NothingToServe) => {
                self.encode_error(route, HttpError::NothingToServe, persist)
            }
            Err(Unserved::Overloaded) => self.encode_error(route, HttpError::Overloaded, persist),
        }
    }

    #[cold]
    pub fn encode_error(&mut self, route: Route, err: HttpError, persist: Persist) {
        let class = if err.code() >= 500 {
            Class::ServerError
        } else {
            Class::ClientError
        };
        self.encode(route, class, |out, date| {
            http::encode_error(out, date, persist, err)
        });
    }

    /// Encodes an answer that is ready: straight into the output if nothing
    /// before it is still waiting, else into the staging buffer.
    fn encode(
        &mut self,
        route: Route,
        class: Class,
        f: impl FnOnce(&mut Vec<u8>, &http::HttpDate),
    ) {
        self.answered.push((route, class));
        let date = self.backend.date();
        if self.queued.is_empty() {
            f(&mut self.out, &date);
        } else {
            let start = self.staged.len();
            f(&mut self.staged, &date);
            self.queued.push(Queued::Bytes(start..self.staged.len()));
        }
    }

    /// Writes the queued answers into the output in request order, waiting
    /// for the ones that need it as their turn comes.
    pub async fn flush_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        for q in queued.drain(..) {
            match q {
                Queued::Bytes(range) => self.out.extend_from_slice(&self.staged[range]),
                Queued::Forwarded(ticket, persist) => {
                    let result = ticket.await;
                    self.encode_page(Route::Forwarded, result, persist);
                }
                // Boxed: its state would otherwise make every connection's
                // task larger, for a request that is rare.
                Queued::Report(report, persist) => Box::pin(self.report(report, persist)).await,
            }
        }
        self.queued = queued;
        self.staged.clear();
    }

    /// `/stats` or `/metrics`: allocates; it is not on the feed path.
    async fn report(&mut self, report: Report, persist: Persist) {
        let Some((content_type, body)) = self.backend.report(report).await else {
            return self.encode_error(Route::Local, HttpError::Overloaded, persist);
        };
        self.encode(Route::Local, Class::Success, |out, date| {
            http::encode_body(out, date, persist, content_type, body.as_bytes())
        });
    }

    /// Records this round's answers with its service time; returns now.
    pub fn record(&mut self, started: Instant) -> Instant {
        let now = Instant::now();
        if !self.answered.is_empty() {
            let us = now.saturating_duration_since(started).as_micros() as u64;
            self.backend.record(&self.answered, us);
            self.answered.clear();
        }
        now
    }
}

/// A backend serving one store, no other shards: for tests and fuzzing.
/// Odd user ids are answered through the forwarded path (an immediately
/// ready future), so that staging and ordering are exercised too.
pub struct LocalBackend {
    pub store: RefCell<Store>,
    pub limits: Limits,
}

impl Backend for LocalBackend {
    type Forwarded = std::future::Ready<PageResult>;

    fn limits(&self) -> Limits {
        self.limits
    }

    fn date(&self) -> HttpDate {
        HttpDate::from_unix(0)
    }

    fn page(&self, user: u32, size: u16, _now: Instant) -> Pending<Self::Forwarded> {
        let mut page = Vec::new();
        let served = self
            .store
            .borrow_mut()
            .next_page(user, size as usize, &mut page);
        let result = served.map(|_| page).map_err(Unserved::from);
        if user % 2 == 1 {
            Pending::Forwarded(std::future::ready(result))
        } else {
            Pending::Ready(result)
        }
    }

    fn recycle(&self, _page: Vec<u32>) {}

    fn record(&self, _answered: &[(Route, Class)], _us: u64) {}

    async fn report(&self, report: Report) -> Option<(&'static str, String)> {
        match report {
            Report::Stats => Some(("application/json", "{}".into())),
            Report::Metrics => None,
        }
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
}

impl Offline {
    /// The answers in the output as (head, body), checking that each is a
    /// complete HTTP/1.1 response framed by its `Content-Length`.
    pub fn answers(&self) -> Result<Vec<(&str, &[u8])>, String> {
        let mut out = &self.output[..];
        let mut answers = Vec::new();
        while !out.is_empty() {
            if !out.starts_with(b"HTTP/1.1 ") {
                return Err("an answer does not start with a status line".into());
            }
            let head_end = memchr::memmem::find(out, b"\r\n\r\n").ok_or("an incomplete head")?;
            let head =
                std::str::from_utf8(&out[..head_end]).map_err(|_| "a head that is not text")?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .ok_or("an answer without Content-Length")?
                .parse()
                .map_err(|_| "a bad Content-Length")?;
            let end = head_end + 4 + len;
            if end > out.len() {
                return Err("a body shorter than its Content-Length".into());
            }
            answers.push((head, &out[head_end + 4..end]));
            out = &out[end..];
        }
        Ok(answers)
    }
}

/// Runs the answer loop over in-memory input arriving in `chunks`, exactly
/// as a connection does over its socket (read what fits, answer every
/// complete request, write, repeat), minus the socket and the deadlines.
/// For tests and fuzzing: forwarded futures must be ready at once.
pub fn run_offline<'a, B: Backend>(
    answers: &mut Answers<B>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Offline {
    let mut result = Offline::default();
    for mut chunk in chunks {
        while !chunk.is_empty() {
            let room = answers.input.spare();
            let n = room.len().min(chunk.len());
            room[..n].copy_from_slice(&chunk[..n]);
            answers.input.received(n);
            chunk = &chunk[n..];
            loop {
                let now = Instant::now();
                let round = answers.answer_ready_requests(now);
                futures_lite::future::block_on(answers.flush_queued());
                if !answers.out.is_empty() {
                    result.output.append(&mut answers.out);
                    result.writes += 1;
                }
                answers.record(now);
                if round.close {
                    result.closed = true;
                    return result;
                }
                if !round.more_ready {
                    break;
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Pool, StoreBuilder};

    fn answers(max_pipeline: usize) -> Answers<LocalBackend> {
        let mut b = StoreBuilder::default();
        for user in 1..=4 {
            b.push_user(user, (0..20).map(|i| user * 100 + i)).unwrap();
        }
        let backend = LocalBackend {
            store: RefCell::new(b.build(Pool::new([9000, 9001]))),
            limits: Limits::DEFAULT,
        };
        Answers::new(backend, max_pipeline, 1 << 20)
    }

    fn get(target: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
    }

    /// The bodies of the answers, in order.
    fn bodies(done: &Offline) -> Vec<String> {
        let answers = done.answers().expect("well-framed answers");
        answers
            .iter()
            .map(|(_, body)| String::from_utf8(body.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn forwarded_and_local_answers_leave_in_request_order() {
        let mut a = answers(128);
        let raw: String = [1, 2, 3, 4, 1, 2]
            .iter()
            .map(|u| get(&format!("/feed/{u}?size=2")))
            .collect::<String>()
            + &get("/stats")
            + &get("/feed/x");
        let done = run_offline(&mut a, [raw.as_bytes()]);
        assert_eq!(done.writes, 1, "one write for the whole pipeline");
        assert_eq!(
            bodies(&done),
            [
                "[100,101]",
                "[200,201]",
                "[300,301]",
                "[400,401]",
                "[102,103]",
                "[202,203]",
                "{}",
                "{\"error\":\"user id must be a decimal number without sign\"}",
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_answers() {
        let raw = get("/feed/1?size=3") + &get("/feed/2?size=1") + &get("/metrics");
        let whole = run_offline(&mut answers(128), [raw.as_bytes()]);
        for cut in 0..raw.len() {
            let (a, b) = raw.as_bytes().split_at(cut);
            let split = run_offline(&mut answers(128), [a, b]);
            assert_eq!(bodies(&split), bodies(&whole), "cut at {cut}");
        }
        assert_eq!(
            bodies(&whole)[2],
            "{\"error\":\"server busy: too many requests in flight, retry\"}"
        );
    }

    #[test]
    fn pipeline_limit_splits_rounds_and_close_stops() {
        let mut a = answers(2);
        let raw = get("/healthz").repeat(5)
            + "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            + &get("/healthz");
        let done = run_offline(&mut a, [raw.as_bytes()]);
        assert_eq!(done.writes, 3, "2 + 2 + 2 answers");
        assert_eq!(bodies(&done).len(), 6, "nothing after the close");
        assert!(done.closed);
    }

    #[test]
    fn input_grows_for_a_large_request_and_stays_bounded() {
        let mut a = answers(128);
        let big = format!(
            "GET /feed/2 HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "b".repeat(7000)
        );
        let done = run_offline(&mut a, big.as_bytes().chunks(100));
        assert_eq!(bodies(&done), ["[200,201,202,203,204,205,206,207,208,209]"]);
        let huge = "x".repeat(50_000);
        let done = run_offline(&mut answers(128), [huge.as_bytes()]);
        assert!(done.closed);
        assert!(String::from_utf8_lossy(&done.output).starts_with("HTTP/1.1 414"));
    }
}
