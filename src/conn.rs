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
//!
//! Moves: between rounds, with every answer written, a connection that its
//! session says belongs elsewhere ([`Session::wants_move`]) is handed to
//! that shard as a [`Handoff`] (its socket, its session's [`Carry`]) and
//! served there from where it stopped; see [`Handoff`] for why that is
//! safe with glommio.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpStream;

use crate::http::{self, Framing, HttpError, Limits, Persist};
use crate::session::{Carry, Endpoint, Session};
use crate::shard::{Shard, ShardId};
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
        // Answers are written whole, so Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        gate.spawn(serve(stream, session, watch, limits, Between::START))
    } else {
        gate.spawn(refuse(stream, shard.clone()))
    };
    if let Ok(task) = task {
        task.detach();
    }
}

/// A connection on its way to the shard that owns its user.
///
/// Why this is safe with glommio 0.9 (`net/stream.rs`): a `TcpStream`
/// reads and writes with plain `recv`/`send` first and queues only *poll*
/// operations on io_uring (readiness, never a `recv` that could take bytes
/// into a buffer of its own). A connection moves only between rounds, its
/// answers written, so at most a readiness poll is pending; dropping the
/// old stream cancels it, and a poll that completes meanwhile consumes
/// nothing. glommio has no `into_raw_fd`, so the socket travels as a
/// duplicate descriptor (`dup`: one syscall per move, not per request), and
/// the old stream closes the original. Bytes already read travel in the
/// session's [`Carry`], and are answered first on arrival.
pub struct Handoff {
    socket: OwnedFd,
    session: Carry,
    between: Between,
}

/// Where a connection's loop is between two rounds.
#[derive(Debug, Clone, Copy)]
struct Between {
    /// Complete requests wait in the input: answer before reading.
    more_ready: bool,
    /// When the first byte of the request head in the input came.
    head_since: Option<Instant>,
}

impl Between {
    const START: Between = Between {
        more_ready: false,
        head_since: None,
    };
}

/// How a connection's loop ended.
enum End {
    Closed,
    /// Between rounds, for the shard that owns its user.
    Move(ShardId, Between),
}

/// Serves one connection until the client closes it, an error, an answer
/// that closes it, a deadline, shutdown while it is idle, or until it moves
/// to another shard.
async fn serve(
    mut stream: TcpStream,
    mut session: Session<Rc<Shard>>,
    watch: Registration,
    limits: ConnLimits,
    mut between: Between,
) {
    loop {
        match run(&mut stream, &mut session, &watch, limits, between).await {
            End::Closed => break,
            End::Move(to, at) => match move_to(&stream, &mut session, to, at) {
                // The stream and the registration go with this task: the
                // socket lives on in the handoff's descriptor.
                Ok(()) => return,
                Err(()) => between = at,
            },
        }
    }
    if matches!(
        watch.expired(),
        Some(Expired::Idle | Expired::Head | Expired::Write)
    ) {
        let mut m = session.backend().metrics.borrow_mut();
        m.counters.timed_out_connections += 1;
    }
}

/// Hands the connection to shard `to`, or leaves it as it was (it then
/// stays for good) when it cannot go: no descriptor, the channel full or
/// closed.
#[cold]
fn move_to(
    stream: &TcpStream,
    session: &mut Session<Rc<Shard>>,
    to: ShardId,
    between: Between,
) -> Result<(), ()> {
    let carry = session.carry();
    // SAFETY: the stream's descriptor is open for as long as this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let Ok(socket) = fd.try_clone_to_owned() else {
        session.keep(carry);
        return Err(());
    };
    let handoff = Box::new(Handoff {
        socket,
        session: carry,
        between,
    });
    session.backend().hand_off(to, handoff).map_err(|h| {
        // Dropping the handoff closes the duplicate; the original serves on.
        session.keep(h.session);
    })
}

/// Takes the connections that move to this shard from one peer, until the
/// shard stops, and serves each as if accepted here (on `endpoint`, the
/// public one: only feed requests make a connection move). A moved
/// connection is not refused at `--max-connections`: it was accepted once,
/// and the process's count does not change.
pub async fn adopt_moved(
    handoffs: ConnectedReceiver<Box<Handoff>>,
    shard: Rc<Shard>,
    endpoint: Rc<Endpoint>,
    limits: ConnLimits,
    gate: glommio::sync::Gate,
) {
    loop {
        let next = async { handoffs.recv().await };
        let stop = async {
            shard.stop_announced().await;
            None
        };
        let Some(h) = futures_lite::future::or(next, stop).await else {
            break;
        };
        adopt(*h, &shard, &endpoint, limits, &gate);
    }
    // A peer sees the stop on its own poll, and may have moved a connection
    // here just before: served too, not dropped with its requests unanswered.
    while let Some(Some(h)) = futures_lite::future::poll_once(handoffs.recv()).await {
        adopt(*h, &shard, &endpoint, limits, &gate);
    }
}

/// Serves one moved connection from where it was.
fn adopt(
    h: Handoff,
    shard: &Rc<Shard>,
    endpoint: &Rc<Endpoint>,
    limits: ConnLimits,
    gate: &glommio::sync::Gate,
) {
    // SAFETY: the descriptor is a connected TCP socket that this
    // handoff owned alone.
    let stream = unsafe { TcpStream::from_raw_fd(h.socket.into_raw_fd()) };
    let now = Instant::now();
    let watch = shard
        .connections
        .register(stream.as_raw_fd(), now + limits.idle_timeout);
    let session = Session::resume(
        h.session,
        endpoint.clone(),
        shard.clone(),
        limits.http,
        limits.max_pipeline,
        limits.max_unsent,
    );
    match (h.between.more_ready, h.between.head_since) {
        (true, _) => watch.enter(Phase::Busy, None),
        (false, Some(since)) => watch.enter(Phase::Head, Some(since + limits.header_timeout)),
        (false, None) => {}
    }
    let task = serve(stream, session, watch, limits, h.between);
    // Past the drain (the gate closed) it is served all the same: the
    // process runs until every shard has drained.
    let spawned = if gate.is_open() {
        gate.spawn(task)
    } else {
        Ok(glommio::spawn_local(task))
    };
    if let Ok(task) = spawned {
        task.detach();
    }
}

/// The connection's read-answer-write loop, from `between`.
async fn run(
    stream: &mut TcpStream,
    session: &mut Session<Rc<Shard>>,
    watch: &Registration,
    limits: ConnLimits,
    between: Between,
) -> End {
    let Between {
        mut more_ready,
        mut head_since,
    } = between;
    loop {
        if !more_ready {
            if !session.has_input() && session.backend().stopping() {
                return End::Closed;
            }
            match stream.read(session.read_buf()).await {
                Ok(n) if n > 0 && watch.expired().is_none() => session.received(n),
                _ => {
                    if watch.expired() == Some(Expired::Head) {
                        time_out(stream, session).await;
                    }
                    return End::Closed;
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
                return End::Closed;
            }
            session.written();
        }
        let now = session.record(started);
        if round.close {
            linger(stream, session.read_buf()).await;
            return End::Closed;
        }
        if !session.has_input() {
            head_since = None;
            watch.enter(Phase::Idle, Some(now + limits.idle_timeout));
        } else if !more_ready {
            let since = *head_since.get_or_insert(started);
            watch.enter(Phase::Head, Some(since + limits.header_timeout));
        }
        if let Some(to) = session.wants_move() {
            // Not once the watchdog has shut the socket down, nor in a
            // stop (the connection is closed after its answers anyway).
            if watch.expired().is_none() && !session.backend().stopping() {
                let at = Between {
                    more_ready,
                    head_since,
                };
                return End::Move(to, at);
            }
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
