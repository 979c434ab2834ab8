//! Operating the real binary: health states, drain, the admin port,
//! systemd notification, stop signals, bearer tokens, logs.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// Large enough that loading a debug build takes seconds.
const SLOW_LOAD: &[&str] = &["--shards", "2", "--users", "1000000", "--feed-len", "50"];

/// The issue's finding: while a large feed loaded, the port accepted and
/// `curl /healthz` hung for the whole load; a stop signal waited for it.
#[test]
fn healthz_says_loading_from_the_first_accept_and_a_stop_while_loading_is_prompt() {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(SLOW_LOAD);
    let mut s = Spawned::serve(&args);
    let addr = s.wait_addr("bound ", Duration::from_secs(10));
    let asked = Instant::now();
    let r = get_from(addr, "/healthz");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, r#"{"status":"loading"}"#)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let r = get_from(addr, "/feed/1");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(
        !s.stderr().contains("io_uring:"),
        "still loading when asked; make SLOW_LOAD larger: {}",
        s.stderr()
    );
    s.signal(libc::SIGTERM);
    let (status, stdout, took) = s.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?} {}", s.stderr());
    assert!(took < Duration::from_secs(1), "stopped promptly: {took:?}");
    assert!(stdout.is_empty(), "never served: {stdout}");
    assert!(s.stderr().contains("while loading"), "{}", s.stderr());
}

#[test]
fn drain_keeps_serving_with_healthz_draining_then_stops() {
    let dir = TempDir::new("drain");
    let mut s = Spawned::known(&dir, &["--drain", "1500ms"]);
    let addr = s.listening();
    let mut kept = Client::connect(addr);
    assert_eq!(kept.get("/healthz").status, 200);
    s.signal(libc::SIGTERM);
    s.wait_stderr("draining for", Duration::from_secs(2));
    let r = get_from(addr, "/healthz");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, r#"{"status":"draining"}"#)
    );
    // Still serving, on new connections and on open ones, each answer
    // closing its connection.
    let r = get_from(addr, "/feed/2?size=2");
    assert_eq!(r.items(), feed_of(2)[..2]);
    assert_eq!(r.header("Connection"), Some("close"));
    let r = kept.get("/feed/2?size=2");
    assert_eq!(r.items(), feed_of(2)[2..4]);
    assert_eq!(r.header("Connection"), Some("close"));
    let (status, stdout, took) = s.wait_exit(Duration::from_secs(6));
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(1000),
        "drained first: {took:?}"
    );
    assert!(stdout.contains("all"), "the summary: {stdout}");
}

#[test]
fn the_admin_port_serves_metrics_and_stats_and_the_public_port_does_not() {
    let dir = TempDir::new("admin");
    let mut s = Spawned::known(&dir, &["--admin-listen", "127.0.0.1:0"]);
    let public = s.listening();
    let admin = s.wait_addr(
        "admin port (/metrics, /stats, /healthz) on ",
        Duration::from_secs(5),
    );
    assert_ne!(public, admin);
    assert_eq!(get_from(public, "/feed/3?size=1").items(), feed_of(3)[..1]);
    assert_eq!(get_from(public, "/healthz").status, 200);
    assert_eq!(get_from(public, "/metrics").status, 404);
    assert_eq!(get_from(public, "/stats").status, 404);
    let m = get_from(admin, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("shardfeed_requests_total{"), "{}", m.body);
    assert_eq!(get_from(admin, "/stats").status, 200);
    assert_eq!(get_from(admin, "/healthz").status, 200);
    assert_eq!(
        get_from(admin, "/feed/3").status,
        404,
        "no feeds on the admin port"
    );
    s.stop(Duration::from_secs(6));
}

/// `Type=notify`: READY=1 once serving, STOPPING=1 on the stop signal.
#[test]
fn systemd_hears_ready_and_stopping() {
    let dir = TempDir::new("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut s = Spawned::command(
        std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--users", "1000"])
            .env("NOTIFY_SOCKET", &socket_path),
    );
    let _addr = s.listening();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    s.signal(libc::SIGTERM);
    let n = socket.recv(&mut buf).expect("a notification");
    let stopping = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let (status, _, _) = s.wait_exit(Duration::from_secs(6));
    assert!(status.success());
}

/// GNU `timeout` signals its child and then the child's process group: two
/// SIGTERMs at once. They used to be "a second signal: stop at once" (exit
/// 1, no summary, an empty histogram log) in 6 runs of 10.
#[test]
fn gnu_timeout_double_sigterm_is_one_clean_stop() {
    if std::process::Command::new("timeout")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED gnu_timeout_double_sigterm_is_one_clean_stop: no `timeout` (coreutils)");
        return;
    }
    let dir = TempDir::new("timeout");
    for run in 0..5 {
        let log = dir.0.join(format!("latency-{run}.hlog"));
        let out = std::process::Command::new("timeout")
            .args(["--preserve-status", "-s", "TERM", "1.5", BIN, "serve"])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--users",
                "1000",
            ])
            .args([
                "--histogram-log",
                path_str(&log),
                "--histogram-interval",
                "200ms",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "run {run}: {:?} {stderr}", out.status);
        assert!(
            stdout.lines().any(|l| l.starts_with("all")),
            "run {run}: {stdout}"
        );
        assert!(!stderr.contains("at once"), "run {run}: {stderr}");
        let intervals = shardfeed::histlog::read_log(&std::fs::read(&log).unwrap()).unwrap();
        assert!(
            intervals.len() >= 2,
            "run {run}: {} intervals",
            intervals.len()
        );
    }
}

fn rfc3339_prefix(line: &str) -> bool {
    // 2026-12-01T22:21:00.123Z shardfeed: ...
    let b = line.as_bytes();
    b.len() > 25
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && &line[23..35] == "Z shardfeed:"
        && line[..4].bytes().all(|c| c.is_ascii_digit())
}

/// Status lines used to skip the first interval, and no line had a time.
#[test]
fn every_log_line_has_a_timestamp_and_the_first_interval_is_reported() {
    let dir = TempDir::new("timestamps");
    let mut s = Spawned::known(&dir, &["--log-interval", "1s"]);
    let addr = s.listening();
    let mut c = Client::connect(addr);
    for user in 1..=20 {
        assert_eq!(c.get(&format!("/feed/{user}?size=1")).status, 200);
    }
    let first = s.wait_stderr("feed req/s", Duration::from_millis(1900));
    let rate: f64 = first
        .split(" feed req/s")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{first}"));
    assert!(
        rate >= 10.0,
        "the 20 requests are in the first line: {first}"
    );
    s.stop(Duration::from_secs(6));
    let stderr = s.stderr();
    assert!(stderr.lines().count() >= 3, "{stderr}");
    for line in stderr.lines() {
        assert!(rfc3339_prefix(line), "no RFC 3339 timestamp: {line:?}");
    }
}

/// 131 identical "accept failed" lines in 1.5 s with `ulimit -n 48` and 60
/// connections, and no word at start that the limit was too low.
#[test]
fn descriptor_exhaustion_warns_at_start_and_logs_few_lines() {
    let script = format!("ulimit -n 48 && exec {BIN} \"$@\"");
    let mut s = Spawned::command(
        std::process::Command::new("sh")
            .args(["-c", &script, "sh", "serve", "--listen", "127.0.0.1:0"])
            .args([
                "--shards",
                "2",
                "--users",
                "1000",
                "--max-connections",
                "60",
            ]),
    );
    let addr = s.listening();
    let warning = s.wait_stderr("warning:", Duration::from_secs(1));
    assert!(
        warning.contains("--max-connections 60 x 2 shards = 120 connections")
            && warning.contains("open-files limit is 48"),
        "{warning}"
    );
    let conns: Vec<std::net::TcpStream> = (0..60)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let failures = s
        .stderr()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(failures >= 1, "the limit was reached: {}", s.stderr());
    assert!(failures <= 2, "{failures} lines: {}", s.stderr());
    drop(conns);
    s.signal(libc::SIGTERM);
    let _ = s.wait_exit(Duration::from_secs(8));
}

/// A `kill -9` used to leave the log empty (an 8 KiB buffer), and a restart
/// truncated it.
#[test]
fn the_histogram_log_survives_kill_9_and_a_restart() {
    let dir = TempDir::new("hlog-kill");
    let log = dir.0.join("latency.hlog");
    let start = |dir: &TempDir| {
        Server::known(
            dir,
            &[
                "--histogram-log",
                path_str(&log),
                "--histogram-interval",
                "200ms",
            ],
        )
    };
    let mut s = start(&dir);
    let mut c = s.connect();
    for user in 1..=30 {
        assert_eq!(c.get(&format!("/feed/{user}?size=1")).status, 200);
    }
    std::thread::sleep(Duration::from_millis(700));
    s.child.kill().unwrap();
    let _ = s.child.wait();
    drop(s);
    let first = std::fs::read(&log).unwrap();
    let logged: u64 = shardfeed::histlog::read_log(&first)
        .unwrap()
        .iter()
        .map(|i| i.histogram.len())
        .sum();
    assert_eq!(
        logged, 30,
        "every interval reached the file before the kill"
    );

    let s = start(&dir);
    let (status, _, _) = s.terminate(Duration::from_secs(6));
    assert!(status.success());
    let kept: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().contains("latency.hlog."))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), first, "kept whole");

    // `latency` reads a log cut in its last line, and names a bad line.
    let cut = dir.file("cut.hlog", "");
    std::fs::write(&cut, &first[..first.len() - 20]).unwrap();
    let out = run(&["latency", path_str(&cut)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is cut short"));
    let mut bad = b"#[StartTime: 1 (seconds since epoch)]\nnot,a,histogram\n".to_vec();
    bad.extend_from_slice(&first);
    let bad_path = dir.file("bad.hlog", "");
    std::fs::write(&bad_path, bad).unwrap();
    let out = run(&["latency", path_str(&bad_path)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.hlog: line 2: "), "{stderr}");
    assert!(!stderr.contains("Err("), "{stderr}");
}

mod jwt {
    use super::*;

    const SECRET: &str = "a shared secret of the gateway";
    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn token(sub: &str, exp: u64) -> String {
        shardfeed::auth::sign(
            SECRET.as_bytes(),
            HS256,
            &format!(r#"{{"sub":"{sub}","exp":{exp}}}"#),
        )
    }

    fn later() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    fn with_token(target: &str, token: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
    }

    #[test]
    fn feeds_need_a_valid_token_for_their_user_and_refusals_change_nothing() {
        let dir = TempDir::new("jwt");
        let secret = dir.file("jwt.secret", &format!("{SECRET}\n"));
        let s = Server::known(&dir, &["--jwt-secret", path_str(&secret)]);
        let mut c = s.connect();
        let r = c.get("/feed/5?size=2");
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Bearer realm=\"shardfeed\"")
        );
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(&format!(r#"{{"sub":"5","exp":{}}}"#, later()))
        );
        let forged = shardfeed::auth::sign(
            b"guessed",
            HS256,
            &format!(r#"{{"sub":"5","exp":{}}}"#, later()),
        );
        for (bad, why) in [
            (none.as_str(), "alg"),
            (forged.as_str(), "signature"),
            ("not-a-token", "well-formed"),
            (&token("5", 1000), "expired"),
        ] {
            c.send(with_token("/feed/5?size=2", bad).as_bytes());
            let r = c.response();
            assert_eq!(r.status, 401, "{why}");
            assert!(r.error().contains(why), "{why}: {}", r.error());
            assert!(r
                .header("WWW-Authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""));
        }
        let mine = token("5", later());
        c.send(with_token("/feed/6?size=2", &mine).as_bytes());
        assert_eq!(c.response().status, 403, "another user's feed");
        // Nothing above moved user 5 or 6; the same token on a keep-alive
        // connection pages on.
        for page in 0..3 {
            c.send(with_token("/feed/5?size=2", &mine).as_bytes());
            let r = c.response();
            assert_eq!(r.items(), feed_of(5)[page * 2..page * 2 + 2], "page {page}");
        }
        let theirs = token("6", later());
        assert_eq!(
            request(s.addr, &with_token("/feed/6?size=2", &theirs)).items(),
            feed_of(6)[..2]
        );
        // Health checks need no token.
        assert_eq!(c.get("/healthz").status, 200);
        let st: serde_json::Value = serde_json::from_str(&c.get("/stats").body).unwrap();
        assert_eq!(
            st["all"]["requests_4xx"], 6,
            "1 missing, 4 invalid, 1 forbidden"
        );
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn an_empty_or_missing_secret_file_fails_the_start() {
        let dir = TempDir::new("jwt-empty");
        let empty = dir.file("empty", "\n");
        let out = run(&["serve", "--listen", "127.0.0.1:0", "--users", "100"]
            .into_iter()
            .chain(["--jwt-secret", path_str(&empty)])
            .collect::<Vec<_>>());
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("the file is empty"));
        let out = run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--users",
            "100",
            "--jwt-secret",
            "/nonexistent/secret",
        ]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/secret: cannot read"));
    }
}

#[test]
fn listen_accepts_host_names() {
    let mut s = Spawned::serve(&["--listen", "localhost:0", "--shards", "1", "--users", "100"]);
    let addr = s.listening();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(get_from(addr, "/healthz").status, 200);
    s.stop(Duration::from_secs(6));
}
