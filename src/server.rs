//! Start-up, supervision and shutdown: bind the listeners, load every
//! shard's users in parallel, choose the fallback pool, start one pinned
//! executor per shard, announce `listening on`, then wait for a signal (a
//! graceful stop) or a shard that stops (a failure).
//!
//! Shutdown, on SIGINT or SIGTERM: every shard stops accepting, closes its
//! idle connections, lets the others finish what they have read (waiting at
//! most `--shutdown-timeout`), and reports its final metrics. Shards keep
//! answering their peers' forwarded requests until the process exits, so a
//! connection still draining on one shard is never left without its owner.
//! Then the histogram log is flushed, the per-shard summary printed, and the
//! process exits 0.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use glommio::sync::Gate;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::conn::{self, ConnLimits};
use crate::data::{self, LoadError, Synthetic, POOL_SAMPLE_ITEMS};
use crate::feed::{Pool, Store, StoreBuilder};
use crate::histlog::{HistogramLog, Interval};
use crate::host;
use crate::http::Limits;
use crate::metrics::{self, ShardMetrics, Snapshot};
use crate::shard::{self, owner_of, Shard, ShardId};
use crate::uring;
use crate::watchdog::Registry;

/// Memory each executor registers with its io_uring rings (x3 rings). A
/// network server does no file DMA, so a small amount keeps the locked-memory
/// needs far below common `ulimit -l` defaults.
const IO_MEMORY: usize = 128 * 1024;
const LISTEN_BACKLOG: i32 = 4096;
/// How often a shard looks at the process-wide stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often a shard checks its connections' deadlines: timeouts fire up to
/// this much late.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Where the feeds come from.
#[derive(Debug, Clone)]
pub enum Source {
    Synthetic(Synthetic),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// One CPU per shard.
    pub cpus: Vec<usize>,
    pub source: Source,
    pub fallback: Option<PathBuf>,
    pub fallback_size: usize,
    pub limits: Limits,
    pub conn_limits: ConnLimits,
    pub max_in_flight: usize,
    pub histogram_log: Option<PathBuf>,
    pub histogram_interval: Duration,
    pub log_interval: Option<Duration>,
    pub shutdown_timeout: Duration,
    /// Pin each shard (and its loader) to its CPU.
    pub pin: bool,
    /// Create the shards' io_uring rings with IORING_SETUP_COOP_TASKRUN.
    pub coop_taskrun: bool,
}

/// What shards and the signal thread tell the main thread.
enum Event {
    Ready,
    Stopped(usize, String),
    Signal(i32),
    Status(Box<Snapshot>),
    Drained(Box<Snapshot>),
}

/// Runs the server until a signal stops it (`Ok`) or it cannot start or a
/// shard fails (`Err`).
pub fn serve(config: ServeConfig) -> Result<(), String> {
    // The limit first: a too-low limit also makes io_uring fail, less clearly.
    host::check_memlock()?;
    host::check_io_uring()?;
    host::raise_nofile_limit();
    // Before any thread starts, so that every thread inherits the mask and
    // only the signal thread receives SIGINT and SIGTERM.
    let signals = block_stop_signals()?;
    let shards = config.cpus.len();

    let (addr, listeners) = bind_listeners(config.listen, shards)?;
    let stores = load_stores(&config)?;
    let started = SystemTime::now();
    let histogram_log = match &config.histogram_log {
        Some(path) => Some(HistogramLog::create(path, started)?),
        None => None,
    };

    if config.coop_taskrun {
        uring::enable_coop_taskrun();
    }
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let links = shard::make_links(shards);
    let parts = stores.into_iter().zip(listeners).zip(links).enumerate();
    for (i, ((store, listener), links)) in parts {
        let events = events_tx.clone();
        let stop = stop.clone();
        let log = histogram_log.as_ref().map(|l| l.sender());
        let cpu = config.cpus[i];
        let config = config.clone();
        // Pinned by default: a shard owns its core. Unpinned, the kernel may
        // move shard threads away from other busy threads (a load generator
        // on the same host), as it does for a server's unpinned workers.
        let placement = if config.pin {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                let metrics = ShardMetrics::new(log.is_some());
                let shard = shard::start(
                    ShardId(i),
                    shards,
                    store,
                    config.limits,
                    config.max_in_flight,
                    metrics,
                    links,
                )
                .await;
                // SAFETY: the descriptor comes from a listening socket we own.
                let listener =
                    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
                run_shard(shard, listener, &config, stop, log, events).await
            })
            .map_err(|e| format!("cannot start shard {i} on CPU {cpu}: {e}"))?;
        let stopped = events_tx.clone();
        std::thread::spawn(move || {
            let why = match handle.join() {
                Ok(()) => "it returned".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = stopped.send(Event::Stopped(i, why));
        });
    }
    let signal_events = events_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let sig = wait_for_signal(&signals);
            if signal_events.send(Event::Signal(sig)).is_err() {
                return;
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    drop(events_tx);

    let mut ready = 0;
    while ready < shards {
        match events.recv() {
            Ok(Event::Ready) => ready += 1,
            Ok(Event::Stopped(i, why)) => return Err(format!("shard {i} failed to start: {why}")),
            Ok(Event::Signal(_)) => return Err("stopped by a signal while starting".into()),
            Ok(_) => {}
            Err(_) => return Err("every shard stopped".into()),
        }
    }
    eprintln!("shardfeed: {}", uring::report());
    // Written, not println!: a closed stdout must not stop the server.
    say(&format!("listening on {addr}\n"));

    let mut status = StatusLine::new(shards);
    loop {
        match events.recv() {
            Ok(Event::Signal(sig)) => {
                eprintln!("shardfeed: signal {sig}: stopping");
                stop.store(true, Ordering::Relaxed);
                break;
            }
            Ok(Event::Status(snapshot)) => status.add(*snapshot),
            Ok(Event::Stopped(i, why)) => return Err(format!("shard {i} stopped: {why}")),
            Ok(_) => {}
            Err(_) => return Err("every shard stopped".into()),
        }
    }

    // Each shard waits at most the timeout; allow a margin for the last
    // answers and snapshots to arrive.
    let deadline = Instant::now() + config.shutdown_timeout + Duration::from_secs(2);
    let mut drained: Vec<Snapshot> = Vec::with_capacity(shards);
    while drained.len() < shards {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Drained(snapshot)) => drained.push(*snapshot),
            Ok(Event::Signal(sig)) => return Err(format!("signal {sig} again: stopping at once")),
            Ok(Event::Stopped(i, why)) => return Err(format!("shard {i} stopped: {why}")),
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "{} of {shards} shards did not finish in time",
                    shards - drained.len()
                ))
            }
        }
    }
    if let Some(log) = histogram_log {
        log.finish()?;
    }
    drained.sort_by_key(|s| s.shard);
    say(&metrics::summary_table(&drained));
    Ok(())
}

/// Writes to stdout and flushes, ignoring a closed stdout.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A shard's life after start-up: serve until told to stop, drain, report.
async fn run_shard(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    config: &ServeConfig,
    stop: Arc<AtomicBool>,
    log: Option<mpsc::Sender<Interval>>,
    events: mpsc::Sender<Event>,
) {
    use glommio::spawn_local;
    spawn_local(sweep_deadlines(shard.connections.clone())).detach();
    spawn_local(watch_stop_flag(shard.clone(), stop)).detach();
    // The log sender is shared with the interval task and taken back at the
    // end, so that the writer thread sees every sender go.
    let log = Rc::new(RefCell::new(log.map(|tx| (tx, SystemTime::now()))));
    if log.borrow().is_some() {
        let interval = config.histogram_interval;
        spawn_local(log_intervals(shard.clone(), log.clone(), interval)).detach();
    }
    if let Some(every) = config.log_interval {
        spawn_local(status_ticks(shard.clone(), events.clone(), every)).detach();
    }
    let _ = events.send(Event::Ready);

    let gate = Gate::new();
    accept_loop(&listener, &shard, config.conn_limits, &gate).await;
    drop(listener);
    let drain = gate.close();
    let _ = glommio::timer::timeout(config.shutdown_timeout, drain).await;

    if let Some((tx, since)) = log.borrow_mut().take() {
        send_interval(&shard, &tx, since);
    }
    let _ = events.send(Event::Drained(Box::new(shard.snapshot())));
    // Keep answering the other shards until the process exits.
    std::future::pending::<()>().await
}

async fn accept_loop(
    listener: &glommio::net::TcpListener,
    shard: &Rc<Shard>,
    limits: ConnLimits,
    gate: &Gate,
) {
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            shard.shutdown_announced().await;
            None
        };
        let Some(accepted) = futures_lite::future::or(accept, stop).await else {
            return;
        };
        match accepted {
            Ok(stream) => conn::accept(stream, shard, limits, gate),
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning;
                // anything else (an aborted handshake) concerns one client.
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if exhausted {
                    eprintln!("shard {}: accept failed: {e}; pausing 100 ms", shard.id.0);
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Wakes the connections that are past their deadline, a few times a second.
async fn sweep_deadlines(registry: Rc<Registry>) {
    loop {
        glommio::timer::sleep(SWEEP_EVERY).await;
        registry.sweep(Instant::now());
    }
}

/// Turns the process-wide stop flag (set by the main thread on a signal)
/// into this shard's shutdown.
async fn watch_stop_flag(shard: Rc<Shard>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    shard.begin_shutdown();
}

type LogSlot = Rc<RefCell<Option<(mpsc::Sender<Interval>, SystemTime)>>>;

/// Sends this shard's interval histogram to the log writer every `every`.
async fn log_intervals(shard: Rc<Shard>, log: LogSlot, every: Duration) {
    loop {
        glommio::timer::sleep(every).await;
        let mut slot = log.borrow_mut();
        let Some((tx, since)) = slot.as_mut() else {
            return;
        };
        *since = send_interval(&shard, tx, *since);
    }
}

/// Sends the interval since `since`; returns its end.
fn send_interval(shard: &Shard, tx: &mpsc::Sender<Interval>, since: SystemTime) -> SystemTime {
    let now = SystemTime::now();
    if let Some(histogram) = shard.metrics.borrow_mut().take_interval() {
        let _ = tx.send(Interval {
            shard: shard.id.0,
            start: since,
            end: now,
            histogram,
        });
    }
    now
}

/// Sends a snapshot to the main thread every `every`, for the status line.
async fn status_ticks(shard: Rc<Shard>, events: mpsc::Sender<Event>, every: Duration) {
    while !shard.shutting_down() {
        glommio::timer::sleep(every).await;
        let _ = events.send(Event::Status(Box::new(shard.snapshot())));
    }
}

/// The `--log-interval` line: once every shard has sent its snapshot for an
/// interval, prints what changed since the previous line.
struct StatusLine {
    shards: usize,
    pending: Vec<Option<Snapshot>>,
    last: Option<(Instant, Snapshot)>,
}

impl StatusLine {
    fn new(shards: usize) -> StatusLine {
        StatusLine {
            shards,
            pending: vec![None; shards],
            last: None,
        }
    }

    fn add(&mut self, snapshot: Snapshot) {
        let i = snapshot.shard.expect("one shard's snapshot");
        self.pending[i] = Some(snapshot);
        if self.pending.iter().any(Option::is_none) {
            return;
        }
        let all: Vec<Snapshot> = self.pending.iter_mut().filter_map(Option::take).collect();
        let now = Instant::now();
        let merged = Snapshot::merge(&all);
        if let Some((then, last)) = &self.last {
            eprintln!("{}", status_text(now - *then, last, &merged));
        }
        self.last = Some((now, merged));
        debug_assert_eq!(all.len(), self.shards);
    }
}

fn status_text(elapsed: Duration, before: &Snapshot, now: &Snapshot) -> String {
    let requests = now.counters.requests() - before.counters.requests();
    let forwarded = now.counters.forwarded_out - before.counters.forwarded_out;
    let mut interval = now.all();
    let _ = interval.subtract(before.all());
    let exhausted = now.store.exhausted_users - before.store.exhausted_users;
    format!(
        "shardfeed: {:.0} req/s, {:.1}% forwarded, p99 {} us, {} users exhausted their feed ({} in all)",
        requests as f64 / elapsed.as_secs_f64().max(1e-9),
        100.0 * forwarded as f64 / requests.max(1) as f64,
        interval.value_at_percentile(99.0),
        exhausted,
        now.store.exhausted_users
    )
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it
/// starts); returns the set for [`wait_for_signal`].
fn block_stop_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            e => Err(format!(
                "cannot block signals: {}",
                std::io::Error::from_raw_os_error(e)
            )),
        }
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: sigwait only writes `sig`.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Binds one `SO_REUSEPORT` listener per shard on the same address. Port 0 is
/// resolved once and shared. A fixed port is first probed without
/// `SO_REUSEPORT`, so that a server already listening there (a stale
/// shardfeed would otherwise silently share it) is an error.
fn bind_listeners(addr: SocketAddr, n: usize) -> Result<(SocketAddr, Vec<StdListener>), String> {
    let in_use = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{addr} is already in use (another server, or a shardfeed still running?): stop it or choose another --listen")
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    };
    if addr.port() != 0 {
        let probe = new_socket(addr).map_err(in_use)?;
        probe.bind(&SockAddr::from(addr)).map_err(in_use)?;
    }
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = new_socket(bound).map_err(in_use)?;
        socket.set_reuse_port(true).map_err(in_use)?;
        socket.bind(&SockAddr::from(bound)).map_err(in_use)?;
        socket.listen(LISTEN_BACKLOG).map_err(in_use)?;
        socket.set_nonblocking(true).map_err(in_use)?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| format!("cannot read the bound address of {addr}"))?;
        }
        listeners.push(socket.into());
    }
    Ok((bound, listeners))
}

fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Loads every shard's users in parallel, one thread per shard pinned to the
/// shard's CPU (so that the memory is first touched where it will be used),
/// then picks the fallback pool and builds the stores.
fn load_stores(config: &ServeConfig) -> Result<Vec<Store>, String> {
    let shards = config.cpus.len();
    let count_for_pool = config.fallback.is_none();
    let loaded: Vec<Result<(StoreBuilder, _), LoadError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..shards)
            .map(|i| {
                let cpu = config.cpus[i];
                let source = &config.source;
                scope.spawn(move || {
                    if config.pin {
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    }
                    let owns = |user| owner_of(user, shards) == ShardId(i);
                    let builder = match source {
                        Source::Synthetic(spec) => data::synthetic_store(spec, owns),
                        Source::File(path) => data::load_feed_file(path, owns)?,
                    };
                    let counts = count_for_pool
                        .then(|| data::count_items(builder.items(), POOL_SAMPLE_ITEMS / shards));
                    Ok((builder, counts))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("loader thread"))
            .collect()
    });

    let mut builders = Vec::with_capacity(shards);
    let mut merged = ahash::AHashMap::new();
    let mut first_error: Option<LoadError> = None;
    for result in loaded {
        match result {
            Ok((builder, counts)) => {
                for (item, n) in counts.into_iter().flatten() {
                    *merged.entry(item).or_insert(0) += n;
                }
                builders.push(builder);
            }
            Err(e) => {
                if first_error.as_ref().is_none_or(|f| e.line < f.line) {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(format!("cannot load feeds: {e}"));
    }

    let pool = match &config.fallback {
        Some(path) => Pool::new(data::load_fallback_file(path).map_err(|e| e.to_string())?),
        None => Pool::new(data::top_items(&merged, config.fallback_size)),
    };
    Ok(builders
        .into_iter()
        .map(|b| b.build(pool.clone()))
        .collect())
}
