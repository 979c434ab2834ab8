//! One client connection on its socket: read into its [`Session`], answer,
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

use crate::http::{self, Framing, HttpError, Limits, Persist};
use crate::session::{Endpoint, Session};
use crate::shard::Shard;
use crate::watchdog::{Expired, Phase, Registration};

/// After the last answer on a connection we close, how long to keep reading
/// (and discarding) what the client still sends, so that unread bytes do not
/// make the kernel reset the connection and destroy the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Per-connection limits from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Request limits and page sizes.
    pub http: Limits,
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

/// Takes a newly accepted connection of `endpoint`: registers it with the
/// shard's watchdog at once (so that the connection limit counts it), then
/// serves it in its own task, or answers `503` if the shard is full.
pub fn accept(
    stream: TcpStream,
    shard: &Rc<Shard>,
    endpoint: &Rc<Endpoint>,
    limits: ConnLimits,
    gate: &glommio::sync::Gate,
) {
    let registry = &shard.connections;
    let task = if registry.open() < limits.max_connections {
        shard.metrics.borrow_mut().counters.connections_accepted += 1;
        let watch = registry.register(stream.as_raw_fd(), Instant::now() + limits.idle_timeout);
        let session = Session::on(
            endpoint.clone(),
            shard.clone(),
            limits.http,
            limits.max_pipeline,
            limits.max_unsent,
        );
        gate.spawn(serve(stream, session, watch, limits))
    } else {
        gate.spawn(refuse(stream, shard.clone()))
    };
    if let Ok(task) = task {
        task.detach();
    }
}

/// Serves one connection until the client closes it, an error, an answer
/// that closes it, a deadline, or shutdown while it is idle.
async fn serve(
    mut stream: TcpStream,
    mut session: Session<Rc<Shard>>,
    watch: Registration,
    limits: ConnLimits,
) {
    // Answers are written whole, so Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    run(&mut stream, &mut session, &watch, limits).await;
    if matches!(
        watch.expired(),
        Some(Expired::Idle | Expired::Head | Expired::Write)
    ) {
        let mut m = session.backend().metrics.borrow_mut();
        m.counters.timed_out_connections += 1;
    }
}

/// The connection's read-answer-write loop.
async fn run(
    stream: &mut TcpStream,
    session: &mut Session<Rc<Shard>>,
    watch: &Registration,
    limits: ConnLimits,
) {
    let mut more_ready = false;
    let mut head_since: Option<Instant> = None;
    loop {
        if !more_ready {
            if !session.has_input() && session.backend().stopping() {
                return;
            }
            match stream.read(session.read_buf()).await {
                Ok(n) if n > 0 && watch.expired().is_none() => session.received(n),
                _ => {
                    if watch.expired() == Some(Expired::Head) {
                        time_out(stream, session).await;
                    }
                    return;
                }
            }
        }
        let started = Instant::now();
        watch.enter(Phase::Busy, None);
        let round = session.answer_ready(started);
        more_ready = round.more_ready;
        session.finish_round().await;
        if !session.output().is_empty() {
            watch.enter(Phase::Writing, Some(started + limits.write_timeout));
            if stream.write_all(session.output()).await.is_err() {
                return;
            }
            session.written();
        }
        let now = session.record(started);
        if round.close {
            linger(stream, session.read_buf()).await;
            return;
        }
        if !session.has_input() {
            head_since = None;
            watch.enter(Phase::Idle, Some(now + limits.idle_timeout));
        } else if !more_ready {
            let since = *head_since.get_or_insert(started);
            watch.enter(Phase::Head, Some(since + limits.header_timeout));
        }
    }
}

/// A request head did not arrive in time: `408` and close.
#[cold]
async fn time_out(stream: &mut TcpStream, session: &mut Session<Rc<Shard>>) {
    let started = Instant::now();
    session.fail_and_close(HttpError::Timeout);
    if stream.write_all(session.output()).await.is_ok() {
        session.written();
        session.record(started);
        linger(stream, session.read_buf()).await;
    }
}

/// Answers `503` and closes: the shard has as many connections as allowed.
async fn refuse(mut stream: TcpStream, shard: Rc<Shard>) {
    let mut out = Vec::new();
    let err = HttpError::TooManyConnections;
    http::encode_error(
        &mut out,
        &http::cached_date(),
        Framing::full(Persist::Close),
        err,
    );
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
