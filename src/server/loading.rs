//! While the feeds load: the listening sockets are bound (the kernel
//! already completes connections on them), but no shard runs yet. So that
//! a load balancer or an operator's `curl` is answered instead of hanging
//! for the length of the load, one plain thread accepts on every listener
//! and answers each request `503`: `/healthz` with the health's own answer
//! (`{"status":"loading"}`), anything else `{"error":"loading: ..."}` with
//! `Retry-After`. Every answer closes its connection. It stops (and the
//! shards take the same sockets over) just before the shards start.
//!
//! Blocking I/O with short timeouts: a connection that sends nothing is
//! dropped after [`READ_LIMIT`], and at most [`MAX_CLIENTS`] are answered
//! at once (one short-lived thread each), so a slow client delays no one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::health::Health;

/// How long a client may take to send its request head.
const READ_LIMIT: Duration = Duration::from_secs(2);
/// Connections answered at once; beyond, new ones are closed unanswered.
const MAX_CLIENTS: usize = 64;
/// How often the accepting thread looks at its stop flag.
const POLL_MS: i32 = 50;

/// The answering thread; [`Responder::stop`] ends it.
pub(super) struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Starts answering on (duplicates of) `listeners`.
    pub(super) fn start<'a>(
        listeners: impl IntoIterator<Item = &'a TcpListener>,
        health: Health,
    ) -> Result<Responder, String> {
        let sockets = listeners
            .into_iter()
            .map(|l| l.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot share the listening sockets: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loading".into())
            .spawn(move || answer_while_loading(&sockets, &health, &flag))
            .map_err(|e| format!("cannot start the loading responder: {e}"))?;
        Ok(Responder {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting and waits until the thread has let go of the sockets.
    /// Connections arriving meanwhile wait in the kernel's backlog for the
    /// shards.
    pub(super) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer_while_loading(sockets: &[TcpListener], health: &Health, stop: &AtomicBool) {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n <= 0 {
            continue;
        }
        for (socket, fd) in sockets.iter().zip(&fds) {
            if fd.revents == 0 {
                continue;
            }
            // The listeners are non-blocking: take what is there.
            while let Ok((stream, _)) = socket.accept() {
                if busy.load(Ordering::Relaxed) >= MAX_CLIENTS {
                    continue; // dropped: closed unanswered
                }
                busy.fetch_add(1, Ordering::Relaxed);
                let (health, done) = (health.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("loading-client".into())
                    .spawn(move || {
                        answer_one(stream, &health);
                        done.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Reads one request head (within [`READ_LIMIT`]) and answers it `503`.
fn answer_one(mut stream: TcpStream, health: &Health) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_LIMIT));
    let _ = stream.set_write_timeout(Some(READ_LIMIT));
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().unwrap_or(&[]);
    let path = words.next().unwrap_or(&[]);
    let path = path.split(|&b| b == b'?').next().unwrap_or(&[]);
    let (body, extra) = if path == b"/healthz" {
        (health.answer().1.into_owned(), "")
    } else {
        let body = br#"{"error":"loading: not serving yet, retry"}"#;
        (body.to_vec(), "Retry-After: 1\r\n")
    };
    let date = crate::http::HttpDate::now();
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nServer: shardfeed\r\nDate: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        String::from_utf8_lossy(date.as_bytes()),
        body.len()
    )
    .into_bytes();
    if method != b"HEAD" {
        answer.extend_from_slice(&body);
    }
    if stream.write_all(&answer).is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Let the client read the answer before the socket goes.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = stream.read(&mut chunk);
    }
}
