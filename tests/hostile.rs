//! Hostile and broken clients, on the real binary over loopback: after each,
//! a normal client is still served and the server's resident memory stays
//! under a stated bound. Every test is bounded in time and count.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Resident memory growth allowed over the server's size after start-up.
/// Per-connection state is a few KiB; thousands of connections stay well
/// under this.
const RSS_GROWTH_BOUND_KB: u64 = 64 * 1024;

fn rss_kb(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Short deadlines so that the tests run in seconds; a flag in `extra`
/// replaces its default here.
fn hostile_server(dir: &TempDir, extra: &[&str]) -> Server {
    let defaults = [
        ("--header-timeout", "1s"),
        ("--idle-timeout", "2s"),
        ("--write-timeout", "2s"),
    ];
    let mut args: Vec<&str> = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    Server::known(dir, &args)
}

fn still_serves(s: &Server, baseline_kb: u64) {
    let mut c = s.connect();
    assert_eq!(c.get("/healthz").status, 200);
    let page = c.get("/feed/0?size=3").items();
    assert_eq!(page.len(), 3);
    let rss = rss_kb(s);
    eprintln!("RSS {rss} kB (after start: {baseline_kb} kB)");
    assert!(
        rss < baseline_kb + RSS_GROWTH_BOUND_KB,
        "RSS {rss} kB, was {baseline_kb} kB after start"
    );
}

/// Lets this test process open many sockets.
fn raise_fd_limit() {
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn slowloris_gets_408_at_the_header_deadline() {
    let dir = TempDir::new("slowloris");
    let s = hostile_server(&dir, &[]);
    let baseline = rss_kb(&s);
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /feed/1 HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    // One header line every 200 ms: progress, but never a complete head.
    let mut answers = Vec::new();
    for round in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        for c in slow.iter_mut() {
            let _ = c.write_all(format!("X-Slow-{round}: 1\r\n").as_bytes());
        }
        if round == 2 {
            still_serves(&s, baseline);
        }
    }
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        answers.push(text);
    }
    for text in &answers {
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text:?}"
        );
        assert!(text.contains("Connection: close"));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(s.total("timed_out_connections"), 50);
    still_serves(&s, baseline);
}

#[test]
fn pipeliner_that_never_reads_is_bounded_and_cut_off() {
    let dir = TempDir::new("pipeliner");
    let s = hostile_server(&dir, &[]);
    let baseline = rss_kb(&s);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request = get("/feed/0?size=100");
    let batch = request.repeat(1000);
    // Write until the server stops reading (our writes block), at most 100 MB.
    let mut sent = 0usize;
    while sent < 100 << 20 {
        match c.write(batch.as_bytes()) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 100 << 20,
        "the server kept reading a client that never reads"
    );
    still_serves(&s, baseline);
    // The write deadline closes it (the sweeper runs every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(6);
    while s.total("timed_out_connections") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stuck writer was never cut off"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    still_serves(&s, baseline);
}

#[test]
fn thousands_of_idle_connections_then_the_idle_deadline() {
    raise_fd_limit();
    let dir = TempDir::new("idle");
    let s = hostile_server(&dir, &["--idle-timeout", "3s"]);
    let baseline = rss_kb(&s);
    let idle: Vec<TcpStream> = (0..3000)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.total("open_connections") >= 3000);
    still_serves(&s, baseline);
    // All of them go at the idle deadline, with no answer.
    let deadline = Instant::now() + Duration::from_secs(8);
    while s.total("open_connections") > 1 {
        assert!(
            Instant::now() < deadline,
            "idle connections were not closed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for mut c in idle.into_iter().step_by(100) {
        let mut buf = [0u8; 16];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
    still_serves(&s, baseline);
}

#[test]
fn connections_beyond_the_limit_get_503_and_close() {
    raise_fd_limit();
    let dir = TempDir::new("maxconn");
    let s = hostile_server(&dir, &["--max-connections", "20", "--idle-timeout", "30s"]);
    let held: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    for mut c in held.iter() {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = c.read(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
            assert!(text.contains("too many connections"), "{text}");
            refused += 1;
        }
    }
    // 2 shards x 20 allowed; the rest (about 60, as the kernel spreads them)
    // are refused.
    assert!(refused >= 40, "refused {refused}");
    // Once they go, the shard has room again (including for this /stats).
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.total("refused_connections"), refused);
}

#[test]
fn random_bytes_are_answered_or_dropped_and_nothing_breaks() {
    let dir = TempDir::new("random");
    let s = hostile_server(&dir, &[]);
    let baseline = rss_kb(&s);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..300 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let len = 1 + next() as usize % 20_000;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            // Start like a request, then garbage.
            bytes.splice(0..0, b"GET /feed/1 HTTP/1.1\r\n".iter().copied());
        }
        let _ = c.write_all(&bytes);
        let _ = c.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        if !answer.is_empty() {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 4"), "{text}");
        }
    }
    still_serves(&s, baseline);
}

#[test]
fn resets_in_the_middle_of_answers() {
    let dir = TempDir::new("resets");
    let s = hostile_server(&dir, &[]);
    let baseline = rss_kb(&s);
    for _ in 0..200 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        let _ = c.write_all(get("/feed/0?size=100").repeat(100).as_bytes());
        let mut first = [0u8; 100];
        let _ = c.read(&mut first);
        // Close with unread data and SO_LINGER 0: the kernel sends a reset.
        let sock = socket2::SockRef::from(&c);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(c);
    }
    still_serves(&s, baseline);
    // Every reset connection is closed (the server may still be seeing the
    // last resets): only the /stats connection stays open.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.total("open_connections") != 1 {
        assert!(
            Instant::now() < deadline,
            "reset connections were not closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn half_closed_sockets() {
    let dir = TempDir::new("halfclosed");
    let s = hostile_server(&dir, &[]);
    let baseline = rss_kb(&s);
    // Half-closed with nothing sent: closed at once, no answer.
    let mut quiet = TcpStream::connect(s.addr).unwrap();
    quiet.shutdown(Shutdown::Write).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(quiet.read_to_end(&mut buf).unwrap(), 0);
    // Half-closed in the middle of a head: no answer, closed.
    let mut partial = TcpStream::connect(s.addr).unwrap();
    partial.write_all(b"GET /feed/1 HTTP/1.1\r\nHo").unwrap();
    partial.shutdown(Shutdown::Write).unwrap();
    partial
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_eq!(partial.read_to_end(&mut buf).unwrap(), 0);
    // Half-closed after complete requests: every answer, then closed.
    let mut done = Client::connect(s.addr);
    done.send((get("/feed/2?size=1") + &get("/feed/2?size=1")).as_bytes());
    done.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(done.response().items(), feed_of(2)[0..1]);
    assert_eq!(done.response().items(), feed_of(2)[1..2]);
    assert!(done.closed_by_server());
    still_serves(&s, baseline);
}
