//! Start-up, supervision and shutdown of one server process.
//!
//! [`serve`] is the binary's `serve`: check the host, bind, load, [`start`],
//! announce `listening on` (and `READY=1` to systemd), stop on
//! SIGINT/SIGTERM, print the summary. [`start`] is the library seam under
//! it: given bound listeners it loads every shard's users, starts one
//! executor per shard and returns a [`Running`] server once every shard
//! serves; tests run servers in-process through it.
//!
//! While loading, `server/loading.rs` answers every connection `503`
//! (`/healthz`: `loading`), and a stop signal ends the process at once:
//! nothing has been served, so nothing needs finishing.
//!
//! The [`Health`] is the process's `/healthz`: loading until every shard
//! serves, draining from the stop request on (`--drain D`: keep serving
//! that long, so that load balancers take the instance out, then stop).
//!
//! Shutdown ([`StopHandle::stop`], which a signal calls): every shard stops
//! accepting, closes its idle connections, lets the others finish what they
//! have read (waiting at most `--shutdown-timeout`), and reports its final
//! metrics. Shards keep answering their peers' forwarded requests until the
//! process exits, so a connection still draining on one shard is never left
//! without its owner. Two stop requests within [`STOP_ECHO`] are one (GNU
//! `timeout` signals the child and its process group); a later one stops at
//! once.

mod listen;
mod loading;
mod ports;
mod reload;
mod state;
mod status;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use glommio::sync::Gate;
use glommio::{LocalExecutorBuilder, Placement};

use crate::auth::Verifier;
use crate::cluster::ClusterSeat;
use crate::conn::{self, ConnLimits};
use crate::health::{Health, Phase};
use crate::histlog::{HistogramLog, Interval};
use crate::host;
use crate::load::{self, Feeds};
use crate::metrics::{self, ShardMetrics, Snapshot};
use crate::session::{Endpoint, Serves};
use crate::shard::{self, Shard, ShardId, ShardParts};
use crate::uring;
use crate::watchdog::Registry;
pub use listen::{bind, Listeners};
pub use reload::ReloadHandle;
pub use state::StateConfig;

/// Memory each executor registers with its io_uring rings (x3 rings). A
/// network server does no file DMA, so a small amount keeps the locked-memory
/// needs far below common `ulimit -l` defaults.
const IO_MEMORY: usize = 128 * 1024;
/// How often a shard looks at the process-wide stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// What to change when the admin address is in use.
const ADMIN_CHANGE: &str = "choose another --admin-listen";
/// How often a drained shard looks whether the others have drained too.
const DRAINED_POLL: Duration = Duration::from_millis(5);
/// How often a shard checks its connections' deadlines: timeouts fire up to
/// this much late.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often a shard tells the process's health how its journal is.
const JOURNAL_HEALTH_EVERY: Duration = Duration::from_millis(250);
/// How often a shard refreshes its cached `Date` header.
const DATE_EVERY: Duration = Duration::from_millis(500);
/// A second stop request this soon after the first is the same request.
pub const STOP_ECHO: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// `--admin-listen`: `/metrics`, `/stats` and `/healthz` there, not on
    /// the public port.
    pub admin_listen: Option<SocketAddr>,
    /// `--drain`: after the stop request, keep serving this long with
    /// `/healthz` at `503 draining`.
    pub drain: Duration,
    /// `--jwt-secret`: `/feed` needs a bearer token signed with it.
    pub jwt_secret: Option<PathBuf>,
    /// One CPU per shard.
    pub cpus: Vec<usize>,
    pub feeds: Feeds,
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
    /// How long an idle shard polls before it sleeps (`--idle-poll`).
    pub idle_poll: Duration,
    /// Keep progress on disk (`--state-dir`, `--fsync`).
    pub state: Option<StateConfig>,
    /// `--cluster FILE --instance NAME`: this process is one instance; its
    /// shards also listen on their own ports (see `server/ports.rs`).
    pub cluster: Option<ClusterSeat>,
    /// Connections that ask this many times in a row for one other shard's
    /// users move there (`--move-after`); 0: never (`--no-move-connections`).
    pub move_after: u8,
}

/// What shards, stop handles and the signal thread tell the supervisor.
enum Event {
    Ready,
    Stopped(usize, String),
    Stop(String),
    Status(Box<Snapshot>),
    /// A shard's final metrics, and why its journal could not be synced
    /// at the stop, if it could not.
    Drained(Box<Snapshot>, Option<String>),
}

/// Asks a running server to stop, from any thread.
#[derive(Clone)]
pub struct StopHandle(mpsc::Sender<Event>);

impl StopHandle {
    /// Starts a graceful stop; `why` is logged (e.g. `signal 15`).
    pub fn stop(&self, why: &str) {
        let _ = self.0.send(Event::Stop(why.to_string()));
    }
}

/// A server whose every shard serves.
pub struct Running {
    pub addr: SocketAddr,
    /// The bound `--admin-listen` address.
    pub admin_addr: Option<SocketAddr>,
    health: Health,
    drain: Duration,
    shards: usize,
    events: mpsc::Receiver<Event>,
    handle: StopHandle,
    reload: ReloadHandle,
    stop: Arc<AtomicBool>,
    histogram_log: Option<HistogramLog>,
    log_interval: bool,
    shutdown_timeout: Duration,
    /// The state directory's lock: no second process writes it meanwhile.
    _state_lock: Option<crate::journal::DirLock>,
}

/// Runs the server until a signal stops it (`Ok`) or it cannot start or a
/// shard fails (`Err`).
pub fn serve(config: ServeConfig) -> Result<(), String> {
    // The limit first: a too-low limit also makes io_uring fail, less clearly.
    host::check_memlock()?;
    host::check_io_uring()?;
    host::raise_nofile_limit();
    let shards = config.cpus.len();
    if let Some(warning) = host::nofile_warning(config.conn_limits.max_connections, shards) {
        crate::log_line!("warning: {warning}");
    }
    // Before any thread starts, so that every thread inherits the mask and
    // only the signal thread receives SIGINT, SIGTERM and SIGHUP.
    let signals = listen::block_signals()?;
    let change = match &config.cluster {
        Some(seat) => seat.change_port(),
        None => "choose another --listen".to_string(),
    };
    let listeners = bind(config.listen, shards, &change)?;
    let admin = config
        .admin_listen
        .map(|a| bind(a, shards, ADMIN_CHANGE))
        .transpose()?;
    match &admin {
        Some(a) => crate::log_line!(
            "bound {} (admin {}); loading: /healthz answers 503 loading until serving",
            listeners.addr,
            a.addr
        ),
        None => crate::log_line!(
            "bound {}; loading: /healthz answers 503 loading until serving",
            listeners.addr
        ),
    }
    enum Supervise {
        Signal(i32),
        Started(Box<Result<Running, String>>),
    }
    let (tx, rx) = mpsc::channel();
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let sig = listen::wait_for_signal(&signals);
            if signal_tx.send(Supervise::Signal(sig)).is_err() {
                return;
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    // Loading runs beside this thread, so that a stop signal during the
    // load is acted on at once.
    let health = Health::new();
    std::thread::Builder::new()
        .name("start".into())
        .spawn(move || {
            let started = launch(&config, listeners, admin, health);
            let _ = tx.send(Supervise::Started(Box::new(started)));
        })
        .map_err(|e| format!("cannot start the loader: {e}"))?;
    let running = loop {
        match rx.recv() {
            Ok(Supervise::Started(started)) => break (*started)?,
            Ok(Supervise::Signal(libc::SIGHUP)) => {
                crate::log_line!(
                    "SIGHUP while loading: ignored (the load under way reads the files)"
                );
            }
            Ok(Supervise::Signal(sig)) => {
                // Nothing was served, nothing is to be persisted: returning
                // ends the process and its loaders.
                crate::log_line!("signal {sig} while loading: stopped");
                return Ok(());
            }
            Err(_) => return Err("the loader stopped without a word".into()),
        }
    };
    let handle = running.stop_handle();
    let reload = running.reload_handle();
    std::thread::spawn(move || {
        let mut stopping = false;
        for message in rx {
            match message {
                // A new version would only be loaded to be dropped (and
                // would hold twice the feed's memory during the drain).
                Supervise::Signal(libc::SIGHUP) if stopping => {
                    crate::log_line!("SIGHUP while stopping: ignored");
                }
                Supervise::Signal(libc::SIGHUP) => reload.reload(),
                Supervise::Signal(sig) => {
                    stopping = true;
                    handle.stop(&format!("signal {sig}"));
                }
                Supervise::Started(_) => {}
            }
        }
    });
    crate::log_line!("{}", uring::report());
    // Written, not println!: a closed stdout must not stop the server.
    say(&format!("listening on {}\n", running.addr));
    if let Some(admin) = running.admin_addr {
        crate::log_line!("admin port (/metrics, /stats, /healthz) on {admin}");
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on {}", running.addr)),
    ]);
    let drained = running.wait()?;
    say(&metrics::summary_table(&drained));
    Ok(())
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; else nothing).
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        crate::log_limited!(Duration::from_secs(60), "cannot notify systemd: {e}");
    }
}

/// Loads every shard's users and starts one executor per shard on
/// `listeners` (and on `--admin-listen`, bound here); returns once every
/// shard serves.
pub fn start(config: &ServeConfig, listeners: Listeners) -> Result<Running, String> {
    let admin = config
        .admin_listen
        .map(|a| bind(a, config.cpus.len(), ADMIN_CHANGE))
        .transpose()?;
    launch(config, listeners, admin, Health::new())
}

/// [`start`], with the admin listeners already bound and the process's
/// health.
fn launch(
    config: &ServeConfig,
    listeners: Listeners,
    admin: Option<Listeners>,
    health: Health,
) -> Result<Running, String> {
    let shards = config.cpus.len();
    assert_eq!(listeners.sockets.len(), shards, "one listener per shard");
    let jwt = match &config.jwt_secret {
        Some(path) => Some(Arc::new(Verifier::from_file(path)?)),
        None => None,
    };
    let own_ports = ports::bind_shard_ports(config.cluster.as_ref(), listeners.addr)?;
    let all_sockets = listeners
        .sockets
        .iter()
        .chain(admin.iter().flat_map(|a| &a.sockets))
        .chain(own_ports.iter().flatten());
    let responder = loading::Responder::start(all_sockets, health.clone())?;
    if let (Some(seat), Some(st)) = (&config.cluster, &config.state) {
        seat.check_marker(&st.dir)?;
    }
    let recovery = state::recover(config.state.as_ref())?;
    let ownership = shard::Ownership::new(shards, config.cluster.clone());
    state::refuse_foreign_users(config.state.as_ref(), recovery.as_ref(), &ownership)?;
    // A user of another instance belongs to no shard here.
    let mut stores = load::load_stores(&config.feeds, &config.cpus, config.pin, &ownership)?;
    let state = state::restore(config.state.as_ref(), recovery, &mut stores, &ownership)?;
    if let (Some(seat), Some(st)) = (&config.cluster, &config.state) {
        // For `relayout` (a layout change must not leave an instance out),
        // once the feed has loaded (a start that fails writes none); a full
        // disk must not stop the start, so only said.
        if let Err(e) = seat.write_marker(&st.dir) {
            crate::log_line!(
                "warning: cannot write {} in --state-dir {}: {e}",
                crate::cluster::MARKER_FILE,
                st.dir.display()
            );
        }
    }
    let histogram_log = match &config.histogram_log {
        Some(path) => Some(HistogramLog::create(path, SystemTime::now())?),
        None => None,
    };
    responder.stop();
    let admin_addr = admin.as_ref().map(|a| a.addr);
    let mut admin_sockets = admin.map(|a| a.sockets.into_iter());
    let mut own_ports = own_ports.into_iter();
    if config.coop_taskrun {
        uring::enable_coop_taskrun();
    }
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicUsize::new(shards));
    let links = shard::make_links(shards);
    let mailboxes: Vec<Arc<reload::Mailbox>> = (0..shards).map(|_| Arc::default()).collect();
    let parts = stores
        .into_iter()
        .zip(state.plans)
        .zip(listeners.sockets)
        .zip(links);
    for (i, (((store, journal), listener), links)) in parts.enumerate() {
        let log = histogram_log.as_ref().map(|l| l.sender());
        let metrics = ShardMetrics::new(log.is_some());
        let parts = ShardParts {
            id: ShardId(i),
            shards,
            cluster: config.cluster.clone(),
            store,
            max_size: config.conn_limits.http.max_size,
            max_in_flight: config.max_in_flight,
            metrics,
            links,
            journal,
            move_after: config.move_after,
        };
        let life = ShardLife {
            config: config.clone(),
            stop: stop.clone(),
            draining: draining.clone(),
            log,
            events: events_tx.clone(),
            health: health.clone(),
            jwt: jwt.clone(),
            admin: admin_sockets.as_mut().and_then(Iterator::next),
            own_port: own_ports.next().flatten(),
            mailbox: mailboxes[i].clone(),
        };
        start_shard(parts, listener, life)?;
    }
    let reload = reload::Reloader {
        feeds: config.feeds.clone(),
        cpus: config.cpus.clone(),
        pin: config.pin,
        ownership,
        health: health.clone(),
        mailboxes,
    }
    .start()?;
    let running = Running {
        addr: listeners.addr,
        reload,
        admin_addr,
        health,
        drain: config.drain,
        shards,
        events,
        handle: StopHandle(events_tx),
        stop,
        histogram_log,
        log_interval: config.log_interval.is_some(),
        shutdown_timeout: config.shutdown_timeout,
        _state_lock: state.lock,
    };
    running.wait_ready()?;
    running.health.set_phase(Phase::Serving);
    Ok(running)
}

/// Starts shard `parts.id` on its own executor thread, and a thread that
/// reports when that executor ends.
fn start_shard(
    parts: ShardParts,
    listener: std::net::TcpListener,
    life: ShardLife,
) -> Result<(), String> {
    let i = parts.id.0;
    let cpu = life.config.cpus[i];
    // Pinned by default: a shard owns its core. Unpinned, the kernel may
    // move shard threads away from other busy threads (a load generator on
    // the same host), as it does for a server's unpinned workers.
    let placement = if life.config.pin {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    };
    let stopped = life.events.clone();
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{i}"))
        .io_memory(IO_MEMORY);
    if !life.config.idle_poll.is_zero() {
        builder = builder.spin_before_park(life.config.idle_poll);
    }
    let handle = builder
        .spawn(move || async move {
            let shard = match shard::start(parts).await {
                Ok(shard) => shard,
                // The supervisor hears of it when this executor ends.
                Err(e) => return crate::log_line!("shard {i}: {e}"),
            };
            // SAFETY: the descriptor comes from a listening socket we own.
            let listener =
                unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
            life.run(shard, listener).await
        })
        .map_err(|e| format!("cannot start shard {i} on CPU {cpu}: {e}"))?;
    std::thread::spawn(move || {
        let why = match handle.join() {
            Ok(()) => "it returned".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = stopped.send(Event::Stopped(i, why));
    });
    Ok(())
}

impl Running {
    pub fn stop_handle(&self) -> StopHandle {
        self.handle.clone()
    }

    /// Reloads the feeds, as `SIGHUP` does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// The process's health: components report problems there
    /// ([`Health::set_degraded`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let mut ready = 0;
        while ready < self.shards {
            match self.events.recv() {
                Ok(Event::Ready) => ready += 1,
                Ok(Event::Stopped(i, why)) => {
                    return Err(format!("shard {i} failed to start: {why}"))
                }
                Ok(Event::Stop(why)) => return Err(format!("stopped while starting: {why}")),
                Ok(_) => {}
                Err(_) => return Err("every shard stopped".into()),
            }
        }
        Ok(())
    }

    /// Serves until stopped, then drains; returns every shard's final
    /// metrics, in shard order.
    pub fn wait(self) -> Result<Vec<Snapshot>, String> {
        let mut status = status::StatusLine::new(self.shards);
        let stopped_at = loop {
            match self.events.recv() {
                Ok(Event::Stop(why)) => {
                    crate::log_line!("{why}: stopping");
                    break Instant::now();
                }
                Ok(Event::Status(snapshot)) if self.log_interval => status.add(*snapshot),
                Ok(Event::Stopped(i, why)) => return Err(format!("shard {i} stopped: {why}")),
                Ok(_) => {}
                Err(_) => return Err("every shard stopped".into()),
            }
        };
        self.health.set_phase(Phase::Draining);
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ]);
        if !self.drain.is_zero() {
            crate::log_line!(
                "draining for {:?}: serving on, /healthz answers 503 draining",
                self.drain
            );
            let until = stopped_at + self.drain;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.events.recv_timeout(left) {
                    Ok(Event::Stop(_)) if stopped_at.elapsed() < STOP_ECHO => {}
                    Ok(Event::Stop(why)) => return Err(format!("{why} again: stopping at once")),
                    Ok(Event::Status(snapshot)) if self.log_interval => status.add(*snapshot),
                    Ok(Event::Stopped(i, why)) => return Err(format!("shard {i} stopped: {why}")),
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err("every shard stopped".into())
                    }
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        // Each shard waits at most the timeout; allow a margin for the last
        // answers and snapshots to arrive.
        let deadline = Instant::now() + self.shutdown_timeout + Duration::from_secs(2);
        let mut drained: Vec<Snapshot> = Vec::with_capacity(self.shards);
        let mut unsynced = Vec::new();
        while drained.len() < self.shards {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Drained(snapshot, failed)) => {
                    drained.push(*snapshot);
                    unsynced.extend(failed);
                }
                Ok(Event::Stop(_)) if stopped_at.elapsed() < STOP_ECHO => {}
                Ok(Event::Stop(why)) => return Err(format!("{why} again: stopping at once")),
                Ok(Event::Stopped(i, why)) => return Err(format!("shard {i} stopped: {why}")),
                Ok(_) => {}
                Err(_) => {
                    let late = self.shards - drained.len();
                    return Err(format!(
                        "{late} of {} shards did not finish in time",
                        self.shards
                    ));
                }
            }
        }
        if let Some(log) = self.histogram_log {
            log.finish()?;
        }
        drained.sort_by_key(|s| s.shard);
        if !unsynced.is_empty() {
            // What was served is still worth a summary; the message and the
            // exit status say what was not kept.
            say(&metrics::summary_table(&drained));
            return Err(unsynced.join("; "));
        }
        Ok(drained)
    }
}

/// Writes to stdout and flushes, ignoring a closed stdout.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// What a shard's executor needs besides the shard itself.
struct ShardLife {
    config: ServeConfig,
    stop: Arc<AtomicBool>,
    /// Shards whose connections have not all drained yet, at a stop.
    draining: Arc<AtomicUsize>,
    log: Option<mpsc::Sender<Interval>>,
    events: mpsc::Sender<Event>,
    health: Health,
    jwt: Option<Arc<Verifier>>,
    /// This shard's `--admin-listen` listener.
    admin: Option<std::net::TcpListener>,
    /// This shard's own port (`--cluster`), served like the public one.
    own_port: Option<std::net::TcpListener>,
    /// Where this shard finds a reloaded version.
    mailbox: Arc<reload::Mailbox>,
}

impl ShardLife {
    /// A shard's life after start-up: serve until told to stop, drain, report.
    async fn run(self, shard: Rc<Shard>, listener: glommio::net::TcpListener) {
        use glommio::spawn_local;
        spawn_local(sweep_deadlines(shard.connections.clone())).detach();
        spawn_local(watch_stop_flag(shard.clone(), self.stop.clone())).detach();
        spawn_local(refresh_date()).detach();
        spawn_local(reload::take_new_versions(
            shard.clone(),
            self.mailbox.clone(),
        ))
        .detach();
        if shard.journal().is_some() {
            spawn_local(report_journal(shard.clone(), self.health.clone())).detach();
        }
        let log = status::IntervalLog::start(&shard, self.log, self.config.histogram_interval);
        if let Some(every) = self.config.log_interval {
            spawn_local(status::send_status(
                shard.clone(),
                self.events.clone(),
                every,
            ))
            .detach();
        }
        let endpoint = |serves| {
            Rc::new(Endpoint {
                serves,
                health: self.health.clone(),
                jwt: self.jwt.clone(),
            })
        };
        let (public, admin) = match self.admin {
            // SAFETY: the descriptor comes from a listening socket we own.
            Some(l) => (
                endpoint(Serves::Public),
                Some((endpoint(Serves::Admin), unsafe {
                    glommio::net::TcpListener::from_raw_fd(l.into_raw_fd())
                })),
            ),
            None => (endpoint(Serves::All), None),
        };
        let _ = self.events.send(Event::Ready);

        let gate = Gate::new();
        let limits = self.config.conn_limits;
        let admin_loop = async {
            if let Some((endpoint, listener)) = &admin {
                accept_loop(listener, &shard, endpoint, limits, &gate).await;
            }
        };
        // SAFETY: the descriptor comes from a listening socket we own.
        let own_port = self
            .own_port
            .map(|l| unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) });
        let own_loop = async {
            if let Some(listener) = &own_port {
                accept_loop(listener, &shard, &public, limits, &gate).await;
            }
        };
        for handoffs in shard.take_handoffs() {
            let adopt = conn::adopt_moved(
                handoffs,
                shard.clone(),
                public.clone(),
                limits,
                gate.clone(),
            );
            if let Ok(task) = gate.spawn(adopt) {
                task.detach();
            }
        }
        let public_loop = accept_loop(&listener, &shard, &public, limits, &gate);
        futures_lite::future::zip(public_loop, futures_lite::future::zip(admin_loop, own_loop))
            .await;
        drop(listener);
        drop(admin);
        drop(own_port);
        let drain = gate.close();
        let _ = glommio::timer::timeout(self.config.shutdown_timeout, drain).await;
        // The other shards' connections may still forward pages for this
        // shard's users, and each moves progress on here: the journal stays
        // open (and this shard serves them) until every shard has drained.
        all_drained(&self.draining, self.config.shutdown_timeout).await;

        log.finish(&shard);
        let mut unsynced = None;
        if let Some(journal) = shard.journal() {
            if let Err(e) = journal.close().await {
                unsynced = Some(format!(
                    "shard {}: progress not synced at the stop: {e}",
                    shard.id.0
                ));
            }
        }
        let _ = self
            .events
            .send(Event::Drained(Box::new(shard.snapshot()), unsynced));
        // Keep answering the other shards until the process exits.
        std::future::pending::<()>().await
    }
}

async fn accept_loop(
    listener: &glommio::net::TcpListener,
    shard: &Rc<Shard>,
    endpoint: &Rc<Endpoint>,
    limits: ConnLimits,
    gate: &Gate,
) {
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            shard.stop_announced().await;
            None
        };
        let Some(accepted) = futures_lite::future::or(accept, stop).await else {
            return;
        };
        match accepted {
            Ok(stream) => conn::accept(stream, shard, endpoint, limits, gate),
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning;
                // anything else (an aborted handshake) concerns one client.
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if exhausted {
                    crate::log_limited!(
                        Duration::from_secs(10),
                        "shard {}: accept failed: {e}; pausing 100 ms (raise the open-files \
                         limit, or lower --max-connections)",
                        shard.id.0
                    );
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

/// Counts this shard's connections as drained, then waits until every
/// shard's are: at most `limit` (plus a poll), the longest another shard's
/// drain can take once the stop is seen, so that a shard stuck for another
/// reason cannot keep the process from exiting.
async fn all_drained(draining: &AtomicUsize, limit: Duration) {
    draining.fetch_sub(1, Ordering::AcqRel);
    let until = Instant::now() + limit + STOP_POLL;
    while draining.load(Ordering::Acquire) > 0 && Instant::now() < until {
        glommio::timer::sleep(DRAINED_POLL).await;
    }
}

/// Turns the process-wide stop flag (set by the supervisor) into this
/// shard's shutdown.
async fn watch_stop_flag(shard: Rc<Shard>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    shard.begin_shutdown();
}

/// Tells the process's health whether this shard's journal can write: a
/// failing disk makes `/healthz` answer `503 degraded` with the reason, so
/// that a load balancer drains the instance, until writes work again.
async fn report_journal(shard: Rc<Shard>, health: Health) {
    // One source per shard, named once for the process's life.
    let source: &'static str =
        Box::leak(format!("journal (shard {})", shard.id.0).into_boxed_str());
    let mut reported = false;
    loop {
        match shard.journal().and_then(|j| j.degraded()) {
            Some(why) => {
                health.set_degraded(source, why);
                reported = true;
            }
            None if reported => {
                health.clear(source);
                reported = false;
            }
            None => {}
        }
        glommio::timer::sleep(JOURNAL_HEALTH_EVERY).await;
    }
}

/// Keeps this shard's cached `Date` header fresh.
async fn refresh_date() {
    loop {
        crate::http::refresh_date();
        glommio::timer::sleep(DATE_EVERY).await;
    }
}
