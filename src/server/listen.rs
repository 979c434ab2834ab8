//! The process's ends of the outside world: listening sockets, and the stop
//! signals.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const LISTEN_BACKLOG: i32 = 4096;
/// How long a fixed port that is in use is probed again before that is an
/// error: the listeners of a process killed a moment ago (a `kill -9` and an
/// immediate restart) outlive it while the kernel tears down its io_uring
/// rings, measured ~0.6 s here.
const IN_USE_PATIENCE: Duration = Duration::from_secs(3);
const IN_USE_RETRY: Duration = Duration::from_millis(50);

/// One bound `SO_REUSEPORT` listener per shard, all on `addr`.
pub struct Listeners {
    /// The real bound address (port 0 resolved).
    pub addr: SocketAddr,
    pub sockets: Vec<StdListener>,
}

/// Binds one `SO_REUSEPORT` listener per shard on the same address. Port 0 is
/// resolved once and shared. A fixed port is first probed without
/// `SO_REUSEPORT`, so that a server already listening there (a stale
/// shardfeed would otherwise silently share it) is an error, after
/// a few seconds (a server that has just died lets go by then).
/// `change` says what to change then (e.g. "choose another --listen").
pub fn bind(addr: SocketAddr, n: usize, change: &str) -> Result<Listeners, String> {
    let in_use = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{addr} is already in use (another server, or a shardfeed still running?): stop it or {change}")
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    };
    if addr.port() != 0 {
        let since = Instant::now();
        loop {
            let probe = new_socket(addr).map_err(in_use)?;
            match probe.bind(&SockAddr::from(addr)) {
                Ok(()) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && since.elapsed() < IN_USE_PATIENCE =>
                {
                    std::thread::sleep(IN_USE_RETRY)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(format!(
                        "{} (still after {} s)",
                        in_use(e),
                        IN_USE_PATIENCE.as_secs()
                    ))
                }
                Err(e) => return Err(in_use(e)),
            }
        }
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
    Ok(Listeners {
        addr: bound,
        sockets: listeners,
    })
}

fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Blocks SIGINT, SIGTERM (stop) and SIGHUP (reload) in this thread (and
/// so in every thread it starts); returns the set for [`wait_for_signal`].
pub(super) fn block_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            e => Err(format!(
                "cannot block signals: {}",
                std::io::Error::from_raw_os_error(e)
            )),
        }
    }
}

pub(super) fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: sigwait only writes `sig`.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
