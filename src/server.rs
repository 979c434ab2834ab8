//! Start-up and supervision: bind the listeners, load every shard's users in
//! parallel, choose the fallback pool, start one pinned executor per shard,
//! announce `listening on`, and stop the process if any shard stops.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::data::{self, LoadError, Synthetic, POOL_SAMPLE_ITEMS};
use crate::feed::{Pool, Store, StoreBuilder};
use crate::http::SizeLimits;
use crate::shard::{self, owner_of, ShardId};
use crate::{conn, host};

/// Memory each executor registers with its io_uring rings (x3 rings). A
/// network server does no file DMA, so a small amount keeps the locked-memory
/// needs far below common `ulimit -l` defaults.
const IO_MEMORY: usize = 128 * 1024;
const LISTEN_BACKLOG: i32 = 4096;

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
    pub limits: SizeLimits,
}

/// Runs the server. Returns only if it cannot start or a shard stops.
pub fn serve(config: ServeConfig) -> Result<(), String> {
    host::check_io_uring()?;
    host::check_memlock()?;
    host::raise_nofile_limit();
    let shards = config.cpus.len();

    let (addr, listeners) = bind_listeners(config.listen, shards)?;
    let stores = load_stores(&config)?;

    let (events_tx, events) = mpsc::channel();
    let links = shard::make_links(shards);
    let parts = stores.into_iter().zip(listeners).zip(links).enumerate();
    for (i, ((store, listener), links)) in parts {
        let ready = events_tx.clone();
        let limits = config.limits;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(config.cpus[i]))
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                let shard = shard::start(ShardId(i), shards, store, limits, links).await;
                // SAFETY: the descriptor comes from a listening socket we own.
                let listener =
                    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
                let _ = ready.send(Event::Ready);
                accept_loop(listener, shard).await;
            })
            .map_err(|e| format!("cannot start shard {i} on CPU {}: {e}", config.cpus[i]))?;
        let stopped = events_tx.clone();
        std::thread::spawn(move || {
            let why = match handle.join() {
                Ok(()) => "it returned".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = stopped.send(Event::Stopped(i, why));
        });
    }
    drop(events_tx);

    let mut ready = 0;
    for event in &events {
        match event {
            Event::Ready => ready += 1,
            Event::Stopped(i, why) => return Err(format!("shard {i} failed to start: {why}")),
        }
        if ready == shards {
            break;
        }
    }
    println!("listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    match events.recv() {
        Ok(Event::Stopped(i, why)) => Err(format!("shard {i} stopped: {why}")),
        Ok(Event::Ready) | Err(_) => Err("a shard stopped".into()),
    }
}

enum Event {
    Ready,
    Stopped(usize, String),
}

async fn accept_loop(listener: glommio::net::TcpListener, shard: std::rc::Rc<shard::Shard>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(conn::serve(stream, shard.clone())).detach();
            }
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
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
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
