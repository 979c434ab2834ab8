//! One client connection: read, answer every complete request in order,
//! write all answers at once, repeat.
//!
//! Pipelining comes for free from that loop. A forwarded request (or a
//! `/stats` gathering) is awaited only when its turn comes to be written;
//! answers that are ready before it are staged, so answers always leave in
//! request order.
//!
//! Timing: one clock read when a round's bytes have been read, one when its
//! answers have been handed to the socket; every request of the round is
//! recorded with that service time.

use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::http::{self, Action, HttpError, Persist, Request};
use crate::metrics::{self, Class, Route};
use crate::shard::{Pending, Shard, Ticket, Unserved};

/// Read buffer: one largest request (head + body) always fits.
const READ_BUFFER: usize = 16 * 1024;
/// Requests answered per round before writing, so that one pipelining client
/// cannot make its pending output grow without bound.
const MAX_PIPELINE: usize = 128;
/// After the last answer on a connection we close, how long to keep reading
/// (and discarding) what the client still sends, so that unread bytes do not
/// make the kernel reset the connection and destroy the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

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
    input: Box<[u8]>,
    filled: usize,
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

/// Serves one connection until the client closes it, an error, a request
/// that ends it, or shutdown while it is idle.
pub async fn serve(mut stream: TcpStream, shard: Rc<Shard>) {
    {
        let mut m = shard.metrics.borrow_mut();
        m.counters.connections_accepted += 1;
        m.counters.open_connections += 1;
    }
    let _open = OpenConnection(shard.clone());
    // Answers are written whole, so Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        shard,
        input: vec![0; READ_BUFFER].into_boxed_slice(),
        filled: 0,
        out: Vec::with_capacity(READ_BUFFER),
        staged: Vec::new(),
        queued: Vec::new(),
        answered: Vec::new(),
    };
    let mut more_ready = false;
    loop {
        if !more_ready {
            // A full buffer always holds a decodable request (head <= 8 KiB,
            // body <= 4 KiB), so there is always room to read into here.
            debug_assert!(conn.filled < conn.input.len());
            let idle = conn.filled == 0;
            if idle && conn.shard.shutting_down() {
                return;
            }
            let read = stream.read(&mut conn.input[conn.filled..]);
            let read = if idle {
                // Between requests: shutdown closes the connection at once.
                let shutdown = async {
                    conn.shard.shutdown_announced().await;
                    Ok(0)
                };
                futures_lite::future::or(read, shutdown).await
            } else {
                read.await
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => conn.filled += n,
            }
        }
        let started = Instant::now();
        let round = conn.answer_ready_requests(started);
        more_ready = round.more_ready;
        conn.flush_queued().await;
        if stream.write_all(&conn.out).await.is_err() {
            return;
        }
        conn.out.clear();
        conn.record(started);
        if round.close {
            linger(&mut stream).await;
            return;
        }
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
    /// up to [`MAX_PIPELINE`], and drops their bytes from the buffer.
    fn answer_ready_requests(&mut self, now: Instant) -> Round {
        let mut at = 0;
        let mut answered = 0;
        let mut close = false;
        while answered < MAX_PIPELINE {
            let Some(req) = http::decode(&self.input[at..self.filled], self.shard.limits) else {
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
        self.input.copy_within(at..self.filled, 0);
        self.filled -= at;
        Round {
            close,
            more_ready: !close && answered == MAX_PIPELINE,
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
                Queued::Report(report, persist) => self.report(report, persist).await,
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

    /// Records this round's answers with its service time.
    fn record(&mut self, started: Instant) {
        let us = started.elapsed().as_micros() as u64;
        let mut m = self.shard.metrics.borrow_mut();
        for (route, class) in self.answered.drain(..) {
            m.record(route, class, us);
        }
    }
}

/// Half-closes, then reads and discards for a moment before the socket is
/// dropped, so that the client receives the last answer instead of a reset.
/// Bounded in time and bytes whatever the client does.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(LINGER, drain).await;
}
