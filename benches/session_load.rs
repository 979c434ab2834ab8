//! Session load (issue 12): every connection is one user's app session. It
//! connects, asks for `--pages` pages of one random user's feed, one at a
//! time (closed loop: the next request leaves when the answer is in), then
//! closes and reconnects as another random user. wrk cannot express this
//! (its Lua sees requests, not connections).
//!
//! ```text
//! cargo bench --bench session_load -- --addr 127.0.0.1:8080 [--connections 64]
//!     [--threads 1] [--duration 8] [--pages 10] [--size 10] [--users 1000000]
//! ```
//!
//! Prints one JSON line: requests, seconds, requests/s, sessions, errors,
//! answers that were not 2xx, and the client's latency percentiles (us).
//!
//! A session ends with an abortive close (`SO_LINGER` 0: a reset, as an app
//! that goes away): a graceful close by the client would leave every
//! session's port in TIME_WAIT, and at ~10k sessions/s the 28k ephemeral
//! ports of loopback run out within seconds. Each thread is one epoll loop
//! over its connections, like `wrk -t1`; connect is blocking (on loopback it
//! completes in the call).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

struct Options {
    addr: SocketAddr,
    connections: usize,
    threads: usize,
    duration: Duration,
    pages: u32,
    size: u32,
    users: u32,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "session_load: {why}\nusage: session_load --addr IP:PORT [--connections N] [--threads N] \
         [--duration SECONDS] [--pages N] [--size N] [--users N]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        addr: "127.0.0.1:8080".parse().unwrap(),
        connections: 64,
        threads: 1,
        duration: Duration::from_secs(8),
        pages: 10,
        size: 10,
        users: 1_000_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag} {value}: not a number")))
        };
        match flag.as_str() {
            "--addr" => o.addr = value.parse().unwrap_or_else(|_| usage("--addr IP:PORT")),
            "--connections" => o.connections = number() as usize,
            "--threads" => o.threads = number() as usize,
            "--duration" => o.duration = Duration::from_secs(number()),
            "--pages" => o.pages = number() as u32,
            "--size" => o.size = number() as u32,
            "--users" => o.users = number() as u32,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if o.connections == 0 || o.threads == 0 || o.pages == 0 || o.users == 0 {
        usage("--connections, --threads, --pages and --users must be at least 1");
    }
    o.threads = o.threads.min(o.connections);
    o
}

/// What one thread counted.
struct Tally {
    requests: u64,
    sessions: u64,
    errors: u64,
    not_2xx: u64,
    latency: Histogram<u64>,
}

/// One session on its connection.
struct Session {
    stream: TcpStream,
    left: u32,
    request: Vec<u8>,
    sent_at: Instant,
    buf: Vec<u8>,
    filled: usize,
}

/// A small xorshift: the users of a run need not be cryptographic.
struct Rng(u64);

impl Rng {
    fn user(&mut self, users: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % users as u64) as u32 + 1
    }
}

fn open(o: &Options, rng: &mut Rng) -> std::io::Result<Session> {
    let stream = TcpStream::connect(o.addr)?;
    stream.set_nodelay(true)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our own socket with a valid `linger`.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    stream.set_nonblocking(true)?;
    let user = rng.user(o.users);
    let request = format!(
        "GET /feed/{user}?size={} HTTP/1.1\r\nHost: bench\r\n\r\n",
        o.size
    )
    .into_bytes();
    let mut s = Session {
        stream,
        left: o.pages,
        request,
        sent_at: Instant::now(),
        buf: vec![0; 4096],
        filled: 0,
    };
    send(&mut s)?;
    Ok(s)
}

fn send(s: &mut Session) -> std::io::Result<()> {
    s.sent_at = Instant::now();
    // A request of ~60 bytes into an empty socket buffer goes whole.
    let n = s.stream.write(&s.request)?;
    if n != s.request.len() {
        return Err(std::io::Error::other("short write"));
    }
    Ok(())
}

/// A whole answer at the start of `buf`: its status and length.
fn answer(buf: &[u8]) -> Option<(u16, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let length = head
        .split("\r\n")
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + length).then_some((status, end + length))
}

fn epoll_add(epoll: i32, fd: i32, slot: usize) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: slot as u64,
    };
    // SAFETY: epoll_ctl on our own descriptors with a valid event.
    let r = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
}

fn run_thread(o: &Options, connections: usize, seed: u64) -> Tally {
    let mut tally = Tally {
        requests: 0,
        sessions: 0,
        errors: 0,
        not_2xx: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    let mut rng = Rng(seed | 1);
    // SAFETY: epoll_create1 has no preconditions.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    let mut slots: Vec<Option<Session>> = (0..connections).map(|_| None).collect();
    let reopen = |slots: &mut Vec<Option<Session>>, i: usize, rng: &mut Rng, tally: &mut Tally| {
        slots[i] = None; // closes (a reset) and leaves the epoll set
        loop {
            match open(o, rng) {
                Ok(s) => {
                    epoll_add(epoll, s.stream.as_raw_fd(), i);
                    slots[i] = Some(s);
                    tally.sessions += 1;
                    return;
                }
                Err(_) => {
                    tally.errors += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    };
    for i in 0..connections {
        reopen(&mut slots, i, &mut rng, &mut tally);
    }
    let until = Instant::now() + o.duration;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while Instant::now() < until {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            let Some(s) = slots[i].as_mut() else { continue };
            let read = {
                let Session {
                    stream,
                    buf,
                    filled,
                    ..
                } = s;
                stream.read(&mut buf[*filled..])
            };
            match read {
                Ok(0) | Err(_) => {
                    if !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                        tally.errors += 1;
                        reopen(&mut slots, i, &mut rng, &mut tally);
                    }
                    continue;
                }
                Ok(k) => s.filled += k,
            }
            let Some((status, len)) = answer(&s.buf[..s.filled]) else {
                if s.filled == s.buf.len() {
                    s.buf.resize(s.buf.len() * 2, 0);
                }
                continue;
            };
            let us = s.sent_at.elapsed().as_micros() as u64;
            tally.latency.saturating_record(us.max(1));
            tally.requests += 1;
            if !(200..300).contains(&status) {
                tally.not_2xx += 1;
            }
            s.buf.copy_within(len..s.filled, 0);
            s.filled -= len;
            s.left -= 1;
            if s.left == 0 {
                reopen(&mut slots, i, &mut rng, &mut tally);
            } else if send(s).is_err() {
                tally.errors += 1;
                reopen(&mut slots, i, &mut rng, &mut tally);
            }
        }
    }
    drop(slots);
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(epoll) };
    tally
}

fn main() {
    let o = options();
    let started = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..o.threads)
            .map(|t| {
                let share = o.connections / o.threads + usize::from(t < o.connections % o.threads);
                let o = &o;
                let seed =
                    ((std::process::id() as u64) << 20) ^ ((t as u64 + 1) * 0x9e37_79b9_7f4a_7c15);
                scope.spawn(move || run_thread(o, share, seed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .min(o.duration.as_secs_f64().max(0.001));
    let mut all = tallies.into_iter();
    let mut total = all.next().unwrap();
    for t in all {
        total.requests += t.requests;
        total.sessions += t.sessions;
        total.errors += t.errors;
        total.not_2xx += t.not_2xx;
        total.latency.add(&t.latency).unwrap();
    }
    let p = |q: f64| total.latency.value_at_quantile(q);
    println!(
        "{{\"requests\":{},\"seconds\":{:.3},\"rps\":{:.0},\"sessions\":{},\"errors\":{},\
         \"not_2xx\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        total.requests,
        seconds,
        total.requests as f64 / seconds,
        total.sessions,
        total.errors,
        total.not_2xx,
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        total.latency.max()
    );
}
