//! One connection's protocol state, without its socket: decode every
//! complete request in the input, answer it (or have it forwarded), keep the
//! answers in request order, and count them. `conn.rs` moves bytes between
//! this and the socket; tests and the fuzz target drive it with bytes in
//! memory (see `testing.rs`).
//!
//! Whether an answer closes the connection is decided once, in
//! `Session::persist_for`; the encoders only write what they are told.

use std::future::Future;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Refusal, TokenCache, Verifier};
use crate::cursor::Cursor;
use crate::feed::{Page, Unserved};
use crate::health::Health;
use crate::http::{self, Action, Decoded, Framing, HttpDate, HttpError, Limits, Persist, Request};
use crate::metrics::{self, Class, Route, Snapshot};

/// Initial read buffer: a typical request is a few hundred bytes, and
/// thousands of idle connections should not cost a large buffer each.
const INITIAL_INPUT: usize = 2 * 1024;

/// Connection moves: by default, a connection whose last this many feed
/// requests were all for users of one other [`Backend::Home`] moves there
/// (a mobile app's connection asks for its own user only); the backend
/// may say otherwise ([`Backend::move_after`], `--move-after`). Two, not
/// one: one request says little about a connection (it may be its only
/// one), though every request before the move is forwarded.
pub const MOVE_AFTER: u8 = 2;
/// A connection moves at most this often: a connection asking for random
/// users (a load generator, a pooled proxy) gains nothing from moving, and
/// must not bounce between shards for ever.
pub const MAX_MOVES: u8 = 2;

/// What a connection asks for one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAsk {
    pub user: u32,
    pub size: u16,
    /// Look, do not serve (`HEAD`): no progress changes.
    pub peek: bool,
    /// `?cursor=`: the page at this place (a retry-safe page). Travels by
    /// value with a forwarded request: no allocation.
    pub cursor: Option<Cursor>,
}

/// A page that is ready, or one to wait for.
pub enum Pending<F> {
    Ready(Page),
    /// On its way from the user's owner.
    Forwarded(F),
    /// Served here; leaves once the progress it made is durable
    /// (`--fsync always`, `never`). Counted as local.
    Durable(F),
}

/// What answering needs from the shards: the real one is a shard
/// (`Rc<Shard>`, in `shard.rs`); `testing.rs` has one over a single store.
pub trait Backend {
    /// A page to wait for: on its way from another shard, or waiting for
    /// the journal.
    type Forwarded: Future<Output = Page>;
    /// The page for `ask`: ready, forwarded to the user's owner, or served
    /// and waiting for its progress to be durable.
    fn page(&self, ask: PageAsk, now: Instant) -> Pending<Self::Forwarded>;
    /// Takes back a page's buffer once the page is encoded.
    fn recycle(&self, items: Vec<u32>);
    /// Counts answered requests that took `us` microseconds.
    fn record(&self, answered: &[(Route, Class)], us: u64);
    /// Every shard's metrics, for `/stats` and `/metrics`; `None`: not now.
    fn snapshots(&self) -> impl Future<Output = Option<Vec<Snapshot>>>;
    /// The server is stopping: answers close their connections.
    fn stopping(&self) -> bool;
    /// Where a connection could go to have its pages of `user` answered
    /// there instead of asking for them (the owning shard); `None`: they are
    /// answered here, or connections do not move. See [`MOVE_AFTER`].
    type Home: Copy + Eq;
    fn home(&self, user: u32) -> Option<Self::Home>;
    /// A connection moves after this many feed requests in a row for one
    /// other home (at least 1).
    fn move_after(&self) -> u8 {
        MOVE_AFTER
    }
}

/// Which routes a listening port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// Everything (no `--admin-listen`).
    All,
    /// The public port beside an admin port: `/feed` and `/healthz`.
    Public,
    /// `--admin-listen`: `/healthz`, `/stats` and `/metrics`.
    Admin,
}

/// What every connection of one listening port shares: what it serves, the
/// process's health, and the token check (`--jwt-secret`).
pub struct Endpoint {
    pub serves: Serves,
    pub health: Health,
    pub jwt: Option<Arc<Verifier>>,
}

impl Endpoint {
    /// Everything, serving, no tokens: a session without a server.
    pub fn plain() -> Endpoint {
        Endpoint {
            serves: Serves::All,
            health: Health::serving(),
            jwt: None,
        }
    }

    /// `action`, or `404` if this port does not serve it.
    fn admit(&self, action: Action) -> Action {
        let refused = matches!(
            (self.serves, action),
            (Serves::Public, Action::Stats | Action::Metrics)
                | (Serves::Admin, Action::Feed { .. })
        );
        if refused {
            Action::Fail(HttpError::NotFound)
        } else {
            action
        }
    }
}

/// A connection's read buffer: `buf[..filled]` is received, unanswered
/// input. Grows (never beyond `max`) only when a request does not fit.
#[derive(Debug)]
struct Input {
    buf: Vec<u8>,
    filled: usize,
    max: usize,
}

impl Input {
    /// `max` must hold one largest request plus one byte, so that a full
    /// buffer always holds something [`http::decode`] decides on.
    fn new(max: usize) -> Input {
        Input {
            buf: vec![0; INITIAL_INPUT.min(max)],
            filled: 0,
            max,
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        if self.filled == self.buf.len() {
            let grown = (self.buf.len() * 2).min(self.max);
            assert!(grown > self.buf.len(), "a full input buffer is decodable");
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.filled..]
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }
}

/// An answer not yet written: encoded bytes in `staged`, or one that must be
/// waited for.
enum Queued<F> {
    Bytes(Range<usize>),
    /// A forwarded page, or one waiting for the journal: counted as `Route`.
    Later(F, Framing, Route),
    Report(Report, Framing),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Stats,
    Metrics,
}

/// What one round of answering found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// The connection must close after these answers.
    pub close: bool,
    /// Complete requests are still waiting in the buffer.
    pub more_ready: bool,
}

/// The feed requests of a connection so far, for its move ([`MOVE_AFTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streak<H> {
    /// The home of the last feed requests, and how many in a row.
    home: Option<H>,
    count: u8,
    /// Moves of this connection so far (it carries them when it moves).
    moves: u8,
}

impl<H: Copy + Eq> Streak<H> {
    fn new(moves: u8) -> Streak<H> {
        Streak {
            home: None,
            count: 0,
            moves,
        }
    }

    fn see(&mut self, home: Option<H>) {
        if home.is_some() && home == self.home {
            self.count = self.count.saturating_add(1);
        } else {
            self.home = home;
            self.count = u8::from(home.is_some());
        }
    }
}

/// What a session takes with it when its connection moves to another shard
/// (`conn.rs`): received bytes not yet answered (a partial request, or whole
/// pipelined ones), the token that passed, the interim `100 Continue`
/// already sent, how often it moved; and its buffers, for their capacity.
/// Nothing else is pending: a session moves only between rounds with every
/// answer written ([`Session::wants_move`]).
pub struct Carry {
    input: Input,
    tokens: TokenCache,
    continued: bool,
    moves: u8,
    out: Vec<u8>,
    staged: Vec<u8>,
    answered: Vec<(Route, Class)>,
}

/// One connection's input, answers and bookkeeping; allocated once per
/// connection.
pub struct Session<B: Backend> {
    backend: B,
    endpoint: Rc<Endpoint>,
    /// The last token that passed on this connection (`--jwt-secret`).
    tokens: TokenCache,
    limits: Limits,
    /// Requests answered per round before writing.
    max_pipeline: usize,
    /// Bytes of answers per round before writing.
    max_unsent: usize,
    input: Input,
    /// Answers ready to be written, in request order.
    out: Vec<u8>,
    staged: Vec<u8>,
    queued: Vec<Queued<B::Forwarded>>,
    /// Route and status class of every answer of this round, for metrics.
    answered: Vec<(Route, Class)>,
    /// `100 Continue` went out for the request at the start of the input.
    continued: bool,
    streak: Streak<B::Home>,
    /// Test builds, when the test oracle asks (`Some`): for every answer, in
    /// request order, whether it was sent without its body (`HEAD`), so that
    /// the oracle can frame them. `None` in a server, even a test build's.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) bodiless: Option<Vec<bool>>,
}

impl<B: Backend> Session<B> {
    /// A session of a port that serves everything, without tokens.
    pub fn new(backend: B, limits: Limits, max_pipeline: usize, max_unsent: usize) -> Session<B> {
        let endpoint = Rc::new(Endpoint::plain());
        Session::on(endpoint, backend, limits, max_pipeline, max_unsent)
    }

    /// A session of a connection to `endpoint`.
    pub fn on(
        endpoint: Rc<Endpoint>,
        backend: B,
        limits: Limits,
        max_pipeline: usize,
        max_unsent: usize,
    ) -> Session<B> {
        Session {
            backend,
            endpoint,
            tokens: TokenCache::default(),
            input: Input::new(limits.max_request() + 1),
            limits,
            max_pipeline,
            max_unsent,
            out: Vec::new(),
            staged: Vec::new(),
            queued: Vec::new(),
            answered: Vec::new(),
            continued: false,
            streak: Streak::new(0),
            #[cfg(any(test, feature = "testing"))]
            bodiless: None,
        }
    }

    /// The session of a connection that moved here with `carry`, on
    /// `backend` (the new shard) and its `endpoint`.
    pub fn resume(
        carry: Carry,
        endpoint: Rc<Endpoint>,
        backend: B,
        limits: Limits,
        max_pipeline: usize,
        max_unsent: usize,
    ) -> Session<B> {
        let mut s = Session::on(endpoint, backend, limits, max_pipeline, max_unsent);
        debug_assert_eq!(carry.input.max, s.input.max, "the same limits everywhere");
        s.input = carry.input;
        s.tokens = carry.tokens;
        s.continued = carry.continued;
        s.streak = Streak::new(carry.moves);
        (s.out, s.staged, s.answered) = (carry.out, carry.staged, carry.answered);
        s
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Where this connection should move, between rounds: its last
    /// [`Backend::move_after`] feed requests were for users of that home, it has
    /// moved fewer than [`MAX_MOVES`] times, and every answer is written.
    #[inline]
    pub fn wants_move(&self) -> Option<B::Home> {
        let s = &self.streak;
        let settled = self.queued.is_empty() && self.out.is_empty() && self.answered.is_empty();
        (s.count >= self.backend.move_after() && s.moves < MAX_MOVES && settled)
            .then_some(s.home)
            .flatten()
    }

    /// Everything the session takes to another shard, leaving it empty
    /// (only call after [`Session::wants_move`]).
    pub fn carry(&mut self) -> Carry {
        debug_assert!(self.wants_move().is_some());
        let input = Input {
            buf: std::mem::take(&mut self.input.buf),
            filled: std::mem::take(&mut self.input.filled),
            max: self.input.max,
        };
        Carry {
            input,
            tokens: std::mem::take(&mut self.tokens),
            continued: std::mem::take(&mut self.continued),
            moves: self.streak.moves + 1,
            out: std::mem::take(&mut self.out),
            staged: std::mem::take(&mut self.staged),
            answered: std::mem::take(&mut self.answered),
        }
    }

    /// Takes back what [`Session::carry`] took, when the move did not
    /// happen: the connection stays, and tries no more moves.
    pub fn keep(&mut self, carry: Carry) {
        self.input = carry.input;
        self.tokens = carry.tokens;
        self.continued = carry.continued;
        self.streak = Streak::new(MAX_MOVES);
        (self.out, self.staged, self.answered) = (carry.out, carry.staged, carry.answered);
    }

    /// Room to read into (never empty).
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.input.spare()
    }

    /// `n` bytes were read into [`Session::read_buf`].
    pub fn received(&mut self, n: usize) {
        self.input.filled += n;
    }

    /// Received bytes are waiting for an answer (a partial request).
    pub fn has_input(&self) -> bool {
        self.input.filled > 0
    }

    /// Bytes the input buffer holds at most now (test builds: its bound).
    #[cfg(any(test, feature = "testing"))]
    pub fn input_capacity(&self) -> usize {
        self.input.buf.len()
    }

    /// The answers to write, in request order.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The output was handed to the socket.
    pub fn written(&mut self) {
        self.out.clear();
    }

    /// Decodes and answers (or forwards) every complete request in the input,
    /// up to the round's limits, and drops their bytes from the buffer.
    pub fn answer_ready(&mut self, now: Instant) -> Round {
        let mut at = 0;
        let mut answered = 0;
        let mut round = Round {
            close: false,
            more_ready: false,
        };
        loop {
            if answered == self.max_pipeline
                || self.out.len() + self.staged.len() >= self.max_unsent
            {
                round.more_ready = true;
                break;
            }
            let req = match http::decode(&self.input.buf[at..self.input.filled], self.limits) {
                Decoded::Incomplete => break,
                Decoded::AwaitsContinue => {
                    if !self.continued {
                        self.continued = true;
                        self.encode_in_order(http::encode_continue);
                    }
                    break;
                }
                Decoded::Request(req) => self.authorize(req, at),
            };
            self.continued = false;
            answered += 1;
            let persist = self.persist_for(&req);
            self.answer(req, persist, now);
            if persist == Persist::Close {
                round.close = true;
                break;
            }
            at += req.len;
        }
        self.input.consume(at);
        round
    }

    /// The request as this port serves it: a route it does not serve is
    /// `404`, and with `--jwt-secret` a feed request without a valid token
    /// for its user is refused here, before any store is asked (so no
    /// progress changes). `at`: where the request starts in the input.
    fn authorize(&mut self, mut req: Request, at: usize) -> Request {
        req.action = self.endpoint.admit(req.action);
        let (Action::Feed { user, .. }, Some(jwt)) = (req.action, &self.endpoint.jwt) else {
            return req;
        };
        let request = &self.input.buf[at..self.input.filled];
        let authorization = req.authorization.map(|span| span.of(request));
        if let Err(refusal) = self.tokens.check(jwt, authorization, user) {
            req.action = Action::Fail(match refusal {
                Refusal::Unauthorized(problem) => HttpError::Unauthorized(problem),
                Refusal::Forbidden => HttpError::Forbidden,
            });
        }
        req
    }

    /// The one decision whether an answer closes its connection: when the
    /// client asks, after an error that leaves the rest of the input in
    /// doubt, and while the server drains or stops (so that clients
    /// reconnect elsewhere).
    fn persist_for(&self, req: &Request) -> Persist {
        let doubtful = matches!(req.action, Action::Fail(e) if e.closes());
        if doubtful || self.backend.stopping() || self.endpoint.health.draining() {
            Persist::Close
        } else {
            req.persist
        }
    }

    fn answer(&mut self, req: Request, persist: Persist, now: Instant) {
        let f = Framing {
            persist,
            body: !req.head,
        };
        #[cfg(any(test, feature = "testing"))]
        if let Some(log) = &mut self.bodiless {
            log.push(req.head);
        }
        let ok = Class::Success;
        let other = Route::Other;
        match req.action {
            Action::Feed { user, size, cursor } => {
                // Once a connection may move no more, its users' homes do
                // not matter: no second ownership lookup.
                if self.streak.moves < MAX_MOVES {
                    self.streak.see(self.backend.home(user));
                }
                let ask = PageAsk {
                    user,
                    size,
                    peek: req.head,
                    cursor,
                };
                match self.backend.page(ask, now) {
                    Pending::Ready(page) => self.encode_page(Route::Local, page, f),
                    Pending::Forwarded(ticket) => {
                        self.queued.push(Queued::Later(ticket, f, Route::Forwarded))
                    }
                    Pending::Durable(wait) => {
                        self.queued.push(Queued::Later(wait, f, Route::Local))
                    }
                }
            }
            Action::Health => {
                let (up, body) = self.endpoint.health.answer();
                let class = if up { ok } else { Class::ServerError };
                self.encode(other, class, |o, d| http::encode_health(o, d, f, up, &body))
            }
            Action::Options => self.encode(other, ok, |o, d| http::encode_options(o, d, persist)),
            Action::Stats => self.queued.push(Queued::Report(Report::Stats, f)),
            Action::Metrics => self.queued.push(Queued::Report(Report::Metrics, f)),
            Action::Fail(err) if err.is_feed() => self.encode_error(Route::Local, err, f),
            Action::Fail(err) => self.encode_error(other, err, f),
        }
    }

    /// Encodes a page (or why there is none) and gives its buffer back: the
    /// one place where page buffers leave a connection.
    fn encode_page(&mut self, route: Route, page: Page, f: Framing) {
        let cursor = page.cursor.as_ref();
        match page.outcome {
            Ok(()) => self.encode(route, Class::Success, |out, date| {
                http::encode_page(out, date, f, &page.items, cursor)
            }),
            // Nothing for this user (feed used up, no pool): not an error
            // of the server, which load balancers would read in a 5xx.
            Err(Unserved::NothingToServe) => self.encode(route, Class::Success, |out, date| {
                http::encode_no_content(out, date, f.persist)
            }),
            Err(Unserved::Overloaded) => self.encode_error(route, HttpError::Overloaded, f),
            Err(Unserved::Stopping) => self.encode_error(route, HttpError::Stopping, f),
            // Another instance owns the user: fallback items, said so.
            Err(Unserved::NotOwner) => self.encode(route, Class::Success, |out, date| {
                http::encode_degraded_page(out, date, f, &page.items, cursor, "not-owner")
            }),
        }
        self.backend.recycle(page.items);
    }

    #[cold]
    fn encode_error(&mut self, route: Route, err: HttpError, f: Framing) {
        let class = if err.code() >= 500 {
            Class::ServerError
        } else {
            Class::ClientError
        };
        self.encode(route, class, |out, date| {
            http::encode_error(out, date, f, err)
        });
    }

    /// Answers `err` and closes, outside any request (a head that did not
    /// arrive in time). Call between rounds, with the output written.
    #[cold]
    pub fn fail_and_close(&mut self, err: HttpError) {
        debug_assert!(self.queued.is_empty() && self.out.is_empty());
        #[cfg(any(test, feature = "testing"))]
        if let Some(log) = &mut self.bodiless {
            log.push(false);
        }
        self.encode_error(Route::Other, err, Framing::full(Persist::Close));
    }

    /// Encodes a ready answer and counts it.
    fn encode(&mut self, route: Route, class: Class, f: impl FnOnce(&mut Vec<u8>, &HttpDate)) {
        self.answered.push((route, class));
        let date = http::cached_date();
        self.encode_in_order(|out| f(out, &date));
    }

    /// Writes bytes straight into the output if nothing before them is still
    /// waiting, else into the staging buffer, to follow in order.
    fn encode_in_order(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.queued.is_empty() {
            f(&mut self.out);
        } else {
            let start = self.staged.len();
            f(&mut self.staged);
            self.queued.push(Queued::Bytes(start..self.staged.len()));
        }
    }

    /// Moves the round's waiting answers into the output in request order,
    /// waiting for each one that needs it as its turn comes.
    pub async fn finish_round(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        for q in queued.drain(..) {
            match q {
                Queued::Bytes(range) => self.out.extend_from_slice(&self.staged[range]),
                Queued::Later(page, f, route) => {
                    let page = page.await;
                    self.encode_page(route, page, f);
                }
                // Boxed: its state would otherwise make every connection's
                // task larger, for a request that is rare.
                Queued::Report(report, f) => Box::pin(self.report(report, f)).await,
            }
        }
        self.queued = queued;
        self.staged.clear();
    }

    /// `/stats` or `/metrics`: allocates; it is not on the feed path.
    async fn report(&mut self, report: Report, f: Framing) {
        let Some(snapshots) = self.backend.snapshots().await else {
            return self.encode_error(Route::Other, HttpError::Overloaded, f);
        };
        let (content_type, body) = match report {
            Report::Stats => ("application/json", metrics::stats_json(&snapshots)),
            Report::Metrics => (
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::prometheus_text(&snapshots, &metrics::Process::now(&self.endpoint.health)),
            ),
        };
        self.encode(Route::Other, Class::Success, |out, date| {
            http::encode_body(out, date, f, content_type, body.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Pool, StoreBuilder};
    use crate::testing::{run_offline, LocalBackend, Offline};

    fn backend() -> LocalBackend {
        let mut b = StoreBuilder::default();
        for user in 1..=4 {
            b.push_user(user, (0..20).map(|i| user * 100 + i)).unwrap();
        }
        LocalBackend::new(b.build(Pool::new([9000, 9001])))
    }

    fn answers(max_pipeline: usize) -> Session<LocalBackend> {
        Session::new(backend(), Limits::DEFAULT, max_pipeline, 1 << 20)
    }

    fn get(target: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
    }

    /// The bodies of the answers, in order.
    fn bodies(done: &Offline) -> Vec<String> {
        let answers = done.answers().expect("well-framed answers");
        answers
            .iter()
            .map(|a| String::from_utf8(a.body.to_vec()).unwrap())
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
                "{\"error\":\"server busy: too many requests in flight, retry\"}",
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

    fn statuses(done: &Offline) -> Vec<u16> {
        done.answers()
            .expect("well-framed answers")
            .iter()
            .map(|a| a.status())
            .collect()
    }

    /// The review's bug: an error that closes (here an invalid target) used
    /// to say `Connection: close` and then answer the next request anyway.
    #[test]
    fn an_answer_that_says_close_is_the_last() {
        for bad in [
            "GET * HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET nope HTTP/1.1\r\nHost: t\r\n\r\n",
        ] {
            let raw = get("/feed/2") + bad + &get("/feed/2");
            let done = run_offline(&mut answers(128), [raw.as_bytes()]);
            assert_eq!(statuses(&done), [200, 400], "{bad:?}");
            assert!(done.closed);
            assert!(done.answers().unwrap()[1].closes());
        }
        // Errors that keep the byte stream whole keep the connection.
        let raw = get("/feed/x") + &get("/nope") + &get("/feed/2");
        let done = run_offline(&mut answers(128), [raw.as_bytes()]);
        assert_eq!(statuses(&done), [422, 404, 200]);
        assert!(!done.closed);
    }

    #[test]
    fn head_is_get_without_body_or_progress() {
        let raw = "HEAD /feed/2?size=3 HTTP/1.1\r\nHost: t\r\n\r\n".to_string()
            + "HEAD /feed/3?size=3 HTTP/1.1\r\nHost: t\r\n\r\n"
            + "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            + "HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n"
            + &get("/feed/2?size=3")
            + &get("/feed/3?size=3");
        let done = run_offline(&mut answers(128), [raw.as_bytes()]);
        let got = done.answers().unwrap();
        assert_eq!(statuses(&done), [200, 200, 200, 404, 200, 200]);
        assert!(got[..4].iter().all(|a| a.body.is_empty()));
        assert_eq!(
            bodies(&done)[4..],
            ["[200,201,202]", "[300,301,302]"],
            "HEAD served nothing"
        );
        let head_len = |a: &crate::testing::Answer| {
            a.head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            head_len(&got[0]),
            head_len(&got[4]),
            "HEAD announces the GET's length"
        );
    }

    fn feed_cursor<'a>(a: &crate::testing::Answer<'a>) -> &'a str {
        a.head
            .lines()
            .find_map(|l| l.strip_prefix("Feed-Cursor: "))
            .expect("a Feed-Cursor")
    }

    #[test]
    fn pipelined_retries_at_a_cursor_get_the_same_answer() {
        let mut s = answers(128);
        // The pool's rotation is shared: user 2's pages moved it on by one.
        for (user, pool) in [(2, [9000, 9001]), (3, [9001, 9000])] {
            // 3 is odd: answered through the forwarded path.
            let first = run_offline(&mut s, [get(&format!("/feed/{user}?size=18")).as_bytes()]);
            let token = feed_cursor(&first.answers().unwrap()[0]).to_string();
            let at = format!("/feed/{user}?size=4&cursor={token}");
            let raw = get(&at).repeat(2)
                + &format!("HEAD {at} HTTP/1.1\r\nHost: t\r\n\r\n")
                + &get(&format!("/feed/{user}?size=1"))
                + &get(&at);
            let done = run_offline(&mut s, [raw.as_bytes()]);
            let got = done.answers().unwrap();
            let base = user * 100;
            let page = format!("[{},{},{},{}]", base + 18, base + 19, pool[0], pool[1]);
            let next = format!("[{}]", pool[0]);
            assert_eq!(bodies(&done), [&page, &page, "", &next, &page]);
            let cursors: Vec<&str> = got.iter().map(feed_cursor).collect();
            assert_eq!(cursors[0], cursors[1]);
            assert_eq!(cursors[0], cursors[2], "HEAD carries the GET's cursor");
            assert_eq!(cursors[0], cursors[4]);
            assert_ne!(cursors[0], token);
            // Not strictly equal heads: the Date may have ticked.
            let no_date = |head: &str| -> String {
                head.lines().filter(|l| !l.starts_with("Date:")).collect()
            };
            assert_eq!(no_date(got[0].head), no_date(got[4].head), "byte for byte");
        }
        let raw = get("/feed/2?cursor=nope") + &get("/feed/2?size=1");
        let done = run_offline(&mut s, [raw.as_bytes()]);
        assert_eq!(statuses(&done), [422, 200]);
        assert!(bodies(&done)[0].contains("cursor must be a Feed-Cursor"));
    }

    #[test]
    fn options_gets_204_with_allow() {
        let raw = "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n".to_string()
            + "OPTIONS /feed/1 HTTP/1.1\r\nHost: t\r\n\r\n"
            + &get("/feed/2?size=1");
        let done = run_offline(&mut answers(128), [raw.as_bytes()]);
        let got = done.answers().unwrap();
        assert_eq!(statuses(&done), [204, 204, 200]);
        assert!(got[0].head.contains("\r\nAllow: GET, HEAD, OPTIONS"));
        assert_eq!(bodies(&done)[2], "[200]", "OPTIONS served nothing");
    }

    #[test]
    fn expect_100_continue_is_answered_once_then_the_request() {
        let head = "GET /feed/2?size=1 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        let mut s = answers(128);
        let done = run_offline(&mut s, [head.as_bytes()]);
        assert_eq!(done.output, b"HTTP/1.1 100 Continue\r\n\r\n");
        let more = run_offline(&mut s, [&b"ab"[..]]);
        assert!(more.output.is_empty(), "one 100 Continue per request");
        let rest = run_offline(&mut s, [&b"cd"[..], get("/feed/2?size=1").as_bytes()]);
        assert_eq!(bodies(&rest), ["[200]", "[201]"]);
        let refused =
            "GET /feed/2 HTTP/1.1\r\nHost: t\r\nExpect: x\r\n\r\n".to_string() + &get("/feed/2");
        let done = run_offline(&mut answers(128), [refused.as_bytes()]);
        assert_eq!(statuses(&done), [417]);
        assert!(done.closed);
    }

    #[test]
    fn answers_close_while_stopping() {
        let mut s = Session::new(
            LocalBackend {
                stopping: true,
                ..backend()
            },
            Limits::DEFAULT,
            128,
            1 << 20,
        );
        let raw = get("/feed/2") + &get("/feed/2");
        let done = run_offline(&mut s, [raw.as_bytes()]);
        assert_eq!(statuses(&done), [200]);
        assert!(done.closed && done.answers().unwrap()[0].closes());
    }

    #[test]
    fn the_oracle_catches_a_close_that_does_not_close() {
        let done = Offline {
            output: (http_ok("Connection: close\r\n") + &http_ok("")).into_bytes(),
            writes: 1,
            closed: false,
            bodiless: vec![false, false],
        };
        assert!(done.answers().is_err());
        let done = Offline {
            output: http_ok("").into_bytes(),
            writes: 1,
            closed: true,
            bodiless: vec![false],
        };
        assert!(done.answers().is_err(), "closed without saying so");
    }

    /// Odd users are elsewhere (`LocalBackend::home`): two feed requests in
    /// a row for them, and the session wants to move; anything local in
    /// between starts again; other requests do not count.
    #[test]
    fn a_session_wants_to_move_after_two_requests_for_one_other_home() {
        let mut s = answers(128);
        run_offline(&mut s, [get("/feed/1?size=1").as_bytes()]);
        assert_eq!(s.wants_move(), None, "one request says little");
        run_offline(&mut s, [get("/feed/2?size=1").as_bytes()]);
        run_offline(&mut s, [get("/feed/3?size=1").as_bytes()]);
        assert_eq!(s.wants_move(), None, "a local one in between");
        let raw = get("/healthz") + &get("/feed/x") + &get("/feed/3?size=1");
        run_offline(&mut s, [raw.as_bytes()]);
        assert_eq!(s.wants_move(), Some(()), "health and errors do not count");
    }

    /// What a moving session takes goes on where it stopped: a partial
    /// request, the moves so far; at most [`MAX_MOVES`] moves.
    #[test]
    fn a_carried_session_answers_its_buffered_bytes_and_moves_at_most_twice() {
        let mut s = answers(128);
        let raw = get("/feed/1?size=2") + &get("/feed/3?size=2");
        let (whole, partial) = raw.split_at(raw.len() - 9);
        let done = run_offline(&mut s, [whole.as_bytes()]);
        assert_eq!(bodies(&done), ["[100,101]"]);
        // Not yet: only one answered; then a partial request in the input.
        assert_eq!(s.wants_move(), None);
        let third = get("/feed/1?size=2");
        let done = run_offline(&mut s, [partial.as_bytes(), &third.as_bytes()[..5]]);
        assert_eq!(bodies(&done), ["[300,301]"]);
        assert_eq!(s.wants_move(), Some(()));
        let carry = s.carry();
        let endpoint = Rc::new(Endpoint::plain());
        let mut moved = Session::resume(carry, endpoint, backend(), Limits::DEFAULT, 128, 1 << 20);
        assert!(moved.has_input(), "the partial request came along");
        let done = run_offline(&mut moved, [&third.as_bytes()[5..]]);
        // A new store here (`backend()`): user 1 starts again.
        assert_eq!(bodies(&done), ["[100,101]"]);
        run_offline(&mut moved, [get("/feed/5?size=1").as_bytes()]);
        assert_eq!(moved.wants_move(), Some(()), "the second move");
        let carry = moved.carry();
        let endpoint = Rc::new(Endpoint::plain());
        let mut twice = Session::resume(carry, endpoint, backend(), Limits::DEFAULT, 128, 1 << 20);
        let raw = get("/feed/1") + &get("/feed/3") + &get("/feed/5");
        run_offline(&mut twice, [raw.as_bytes()]);
        assert_eq!(twice.wants_move(), None, "no third move");
    }

    /// A move that did not happen leaves the session as it was, for good.
    #[test]
    fn a_kept_session_goes_on_and_moves_no_more() {
        let mut s = answers(128);
        let raw = get("/feed/1?size=1") + &get("/feed/3?size=1");
        run_offline(&mut s, [raw.as_bytes(), b"GET /feed/1?si"]);
        let carry = s.carry();
        s.keep(carry);
        assert_eq!(s.wants_move(), None);
        let done = run_offline(&mut s, [&b"ze=1 HTTP/1.1\r\nHost: t\r\n\r\n"[..]]);
        assert_eq!(bodies(&done), ["[101]"]);
        run_offline(&mut s, [(get("/feed/1") + &get("/feed/3")).as_bytes()]);
        assert_eq!(s.wants_move(), None);
    }

    fn http_ok(extra: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{extra}\r\n[]")
    }
}
