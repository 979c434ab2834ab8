//! One client connection: read, answer every complete request in order,
//! write all answers at once, repeat.
//!
//! Pipelining comes for free from that loop. A forwarded request (or a
//! `/stats` gathering) is awaited only when its turn comes to be written;
//! answers that are ready before it are staged, so answers always leave in
//! request order.
//!
//! Bounds: a round answers at most `max_pipeline` requests or `max_unsent`
//! bytes of answers, then writes them all before reading again, so a client
//! that pipelines without reading stops being read (and its write deadline
//! ends it). The input buffer starts small and grows at most to one largest
//! request. Deadlines are kept by the shard's [`watchdog`](crate::watchdog).
//!
//! Timing: one clock read when a round's bytes have been read, one when its
//! answers have been handed to the socket; every request of the round is
//! recorded with that service time.

use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::http::{self, Action, HttpError, Persist, Request};
use crate::metrics::{self, Class, Route};
use crate::shard::{Pending, Shard, Ticket, Unserved};
use crate::watchdog::{Expired, Phase, Registration, Registry, Watch};

/// Initial read buffer: a typical request is a few hundred bytes, and
/// thousands of idle connections should not cost a large buffer each.
const INITIAL_INPUT: usize = 2 * 1024;
/// After the last answer on a connection we close, how long to keep reading
/// (and discarding) what the client still sends, so that unread bytes do not
/// make the kernel reset the connection and destroy the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Per-connection limits from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// A request head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
    /// The client must take our answers within this long.
    pub write_timeout: Duration,
    /// Open connections per shard; beyond, `503` and close.
    pub max_connections: usize,
    /// Requests answered per round before writing.
    pub max_pipeline: usize,
    /// Bytes of answers per round before writing.
    pub max_unsent: usize,
}

impl ConnLimits {
    pub const DEFAULT: ConnLimits = ConnLimits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(30),
        max_connections: 10_000,
        max_pipeline: 128,
        max_unsent: 256 * 1024,
    };
}

/// What the connections of one shard share.
pub struct Conns {
    pub shard: Rc<Shard>,
    pub registry: Rc<Registry>,
    pub limits: ConnLimits,
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
enum Queued {
    Bytes(Range<usize>),
    Forwarded(Ticket, Persist),
    Report(Report, Persist),
}

#[derive(Clone, Copy)]
enum Report {
    Stats,
    Metrics,
}

/// Per-connection buffers, allocated once per connection.
struct Conn {
    shard: Rc<Shard>,
    limits: ConnLimits,
    input: Input,
    out: Vec<u8>,
    staged: Vec<u8>,
    queued: Vec<Queued>,
    /// Route and status class of every answer of this round, for metrics.
    answered: Vec<(Route, Class)>,
}

/// Keeps the open-connections gauge right however the connection ends.
struct OpenConnection(Rc<Shard>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.borrow_mut().counters.open_connections -= 1;
    }
}

/// Takes a newly accepted connection: registers it with the watchdog at
/// once (so that the connection limit counts it), then serves it in its own
/// task, or answers `503` if the shard is full.
pub fn accept(stream: TcpStream, conns: &Rc<Conns>, gate: &glommio::sync::Gate) {
    let task = if conns.registry.open() < conns.limits.max_connections {
        let idle_deadline = Instant::now() + conns.limits.idle_timeout;
        let watch = conns.registry.register(stream.as_raw_fd(), idle_deadline);
        gate.spawn(serve(stream, conns.shard.clone(), conns.limits, watch))
    } else {
        gate.spawn(refuse(stream, conns.shard.clone()))
    };
    if let Ok(task) = task {
        task.detach();
    }
}

/// Serves one connection until the client closes it, an error, a request
/// that ends it, a deadline, or shutdown while it is idle.
async fn serve(mut stream: TcpStream, shard: Rc<Shard>, limits: ConnLimits, watch: Registration) {
    {
        let mut m = shard.metrics.borrow_mut();
        m.counters.connections_accepted += 1;
        m.counters.open_connections += 1;
    }
    let _open = OpenConnection(shard.clone());
    // Answers are written whole, so Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        input: Input::new(shard.limits.max_request() + 1),
        shard,
        limits,
        out: Vec::new(),
        staged: Vec::new(),
        queued: Vec::new(),
        answered: Vec::new(),
    };
    run(&mut stream, &mut conn, &watch).await;
    if matches!(
        watch.expired(),
        Some(Expired::Idle | Expired::Head | Expired::Write)
    ) {
        conn.shard
            .metrics
            .borrow_mut()
            .counters
            .timed_out_connections += 1;
    }
}

/// The connection's read-answer-write loop.
async fn run(stream: &mut TcpStream, conn: &mut Conn, watch: &Watch) {
    let limits = conn.limits;
    let mut more_ready = false;
    let mut head_since: Option<Instant> = None;
    loop {
        if !more_ready {
            if conn.input.is_empty() && conn.shard.shutting_down() {
                return;
            }
            match stream.read(conn.input.spare()).await {
                Ok(n) if n > 0 && watch.expired().is_none() => conn.input.received(n),
                _ => {
                    if watch.expired() == Some(Expired::Head) {
                        conn.out.clear();
                        conn.encode_error(Route::Local, HttpError::Timeout, Persist::Close);
                        if stream.write_all(&conn.out).await.is_ok() {
                            conn.record(Instant::now());
                            linger(stream, conn.input.spare()).await;
                        }
                    }
                    return;
                }
            }
        }
        let started = Instant::now();
        watch.enter(Phase::Busy, None);
        let round = conn.answer_ready_requests(started);
        more_ready = round.more_ready;
        conn.flush_queued().await;
        if !conn.out.is_empty() {
            watch.enter(Phase::Writing, Some(started + limits.write_timeout));
            if stream.write_all(&conn.out).await.is_err() {
                return;
            }
            conn.out.clear();
        }
        let now = conn.record(started);
        if round.close {
            linger(stream, conn.input.spare()).await;
            return;
        }
        if conn.input.is_empty() {
            head_since = None;
            watch.enter(Phase::Idle, Some(now + limits.idle_timeout));
        } else if !more_ready {
            let since = *head_since.get_or_insert(started);
            watch.enter(Phase::Head, Some(since + limits.header_timeout));
        }
    }
}

/// Answers `503` and closes: the shard has as many connections as allowed.
async fn refuse(mut stream: TcpStream, shard: Rc<Shard>) {
    let mut out = Vec::new();
    let err = HttpError::TooManyConnections;
    http::encode_error(&mut out, &shard.date(), Persist::Close, err);
    shard.metrics.borrow_mut().counters.refused_connections += 1;
    let write = async { stream.write_all(&out).await.map_err(Into::into) };
    if glommio::timer::timeout(Duration::from_secs(1), write)
        .await
        .is_ok()
    {
        out.resize(1024, 0);
        linger(&mut stream, &mut out).await;
    }
}

/// What one round of answering found.
struct Round {
    /// The connection must close after these answers.
    close: bool,
    /// Complete requests are still waiting in the buffer.
    more_ready: bool,
}

impl Conn {
    /// Decodes and answers (or forwards) every complete request in the input,
    /// up to the round's limits, and drops their bytes from the buffer.
    fn answer_ready_requests(&mut self, now: Instant) -> Round {
        let mut at = 0;
        let mut answered = 0;
        let mut close = false;
        let mut full = false;
        loop {
            if answered == self.limits.max_pipeline
                || self.out.len() + self.staged.len() >= self.limits.max_unsent
            {
                full = true;
                break;
            }
            let Some(req) = http::decode(&self.input.data()[at..], self.shard.limits) else {
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
        match self.shard.page(user, size, now) {
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
                self.shard.recycle(page);
            }
            Err(Unserved::NothingToServe) => {
                self.encode_error(route, HttpError::NothingToServe, persist)
            }
            Err(Unserved::Overloaded) => self.encode_error(route, HttpError::Overloaded, persist),
        }
    }

    #[cold]
    fn encode_error(&mut self, route: Route, err: HttpError, persist: Persist) {
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
        let date = self.shard.date();
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
    async fn flush_queued(&mut self) {
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

    /// `/stats` or `/metrics`: gathers every shard's snapshot. Allocates;
    /// it is not on the feed path.
    async fn report(&mut self, report: Report, persist: Persist) {
        let snapshots = match self.shard.snapshots().await {
            Ok(s) => s,
            Err(_) => return self.encode_error(Route::Local, HttpError::Overloaded, persist),
        };
        let (content_type, body) = match report {
            Report::Stats => ("application/json", metrics::stats_json(&snapshots)),
            Report::Metrics => (
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::prometheus_text(&snapshots),
            ),
        };
        self.encode(Route::Local, Class::Success, |out, date| {
            http::encode_body(out, date, persist, content_type, body.as_bytes())
        });
    }

    /// Records this round's answers with its service time; returns now.
    fn record(&mut self, started: Instant) -> Instant {
        let now = Instant::now();
        let us = now.saturating_duration_since(started).as_micros() as u64;
        let mut m = self.shard.metrics.borrow_mut();
        for (route, class) in self.answered.drain(..) {
            m.record(route, class, us);
        }
        now
    }
}

/// Half-closes, then reads and discards for a moment before the socket is
/// dropped, so that the client receives the last answer instead of a reset.
/// Bounded in time and bytes whatever the client does.
///
/// `sink` is any scratch buffer (the connection's own input buffer): a
/// buffer here would make every connection's task larger.
async fn linger(stream: &mut TcpStream, sink: &mut [u8]) {
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(LINGER, drain).await;
}
