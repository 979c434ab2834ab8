//! One client connection on its socket: read, answer (see `answer.rs`),
//! write, repeat, within deadlines and bounds.
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

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::answer::{Answers, Backend, Report};
use crate::http::{self, HttpDate, HttpError, Limits, Persist};
use crate::metrics::{self, Class, Route};
use crate::shard::{Pending, Shard, Ticket};
use crate::watchdog::{Expired, Phase, Registration, Watch};

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

/// Takes a newly accepted connection: registers it with the shard's
/// watchdog at once (so that the connection limit counts it), then serves it
/// in its own task, or answers `503` if the shard is full.
pub fn accept(
    stream: TcpStream,
    shard: &Rc<Shard>,
    limits: ConnLimits,
    gate: &glommio::sync::Gate,
) {
    let registry = &shard.connections;
    let task = if registry.open() < limits.max_connections {
        shard.metrics.borrow_mut().counters.connections_accepted += 1;
        let watch = registry.register(stream.as_raw_fd(), Instant::now() + limits.idle_timeout);
        gate.spawn(serve(stream, shard.clone(), limits, watch))
    } else {
        gate.spawn(refuse(stream, shard.clone()))
    };
    if let Ok(task) = task {
        task.detach();
    }
}

/// Serves one connection until the client closes it, an error, a request
/// that ends it, a deadline, or shutdown while it is idle.
async fn serve(mut stream: TcpStream, shard: Rc<Shard>, limits: ConnLimits, watch: Registration) {
    // Answers are written whole, so Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut conn = Answers::new(shard, limits.max_pipeline, limits.max_unsent);
    run(&mut stream, &mut conn, &watch, limits).await;
    if matches!(
        watch.expired(),
        Some(Expired::Idle | Expired::Head | Expired::Write)
    ) {
        let mut m = conn.backend.metrics.borrow_mut();
        m.counters.timed_out_connections += 1;
    }
}

/// The connection's read-answer-write loop.
async fn run(
    stream: &mut TcpStream,
    conn: &mut Answers<Rc<Shard>>,
    watch: &Watch,
    limits: ConnLimits,
) {
    let mut more_ready = false;
    let mut head_since: Option<Instant> = None;
    loop {
        if !more_ready {
            if conn.input.is_empty() && conn.backend.shutting_down() {
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

/// The real backend: a shard, forwarding to the others.
impl Backend for Rc<Shard> {
    type Forwarded = Ticket;

    fn limits(&self) -> Limits {
        self.limits
    }

    fn date(&self) -> HttpDate {
        Shard::date(self)
    }

    #[inline]
    fn page(&self, user: u32, size: u16, now: Instant) -> Pending<Ticket> {
        Shard::page(self, user, size, now)
    }

    fn recycle(&self, page: Vec<u32>) {
        Shard::recycle(self, page)
    }

    fn record(&self, answered: &[(Route, Class)], us: u64) {
        let mut m = self.metrics.borrow_mut();
        for &(route, class) in answered {
            m.record(route, class, us);
        }
    }

    /// Gathers every shard's snapshot over the control channels.
    async fn report(&self, report: Report) -> Option<(&'static str, String)> {
        let snapshots = self.snapshots().await.ok()?;
        Some(match report {
            Report::Stats => ("application/json", metrics::stats_json(&snapshots)),
            Report::Metrics => (
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::prometheus_text(&snapshots),
            ),
        })
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
