//! Metrics, the histogram log and graceful shutdown, on the real binary.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Drives a known mix of requests through 2 shards: 200 feed requests over
/// many users from 32 connections, 10 errors, and one user read to the end.
/// Returns the number of answered requests.
///
/// The kernel spreads connections over the shards' listeners by hash: with
/// 32 connections, the chance that one shard gets none (and forwards
/// nothing) is 2^-31.
fn drive_load(s: &Server) -> u64 {
    const CONNS: usize = 32;
    let mut conns: Vec<Client> = (0..CONNS).map(|_| s.connect()).collect();
    for i in 0..200u32 {
        let user = 1 + i % USERS;
        let r = conns[i as usize % CONNS].get(&format!("/feed/{user}?size=1"));
        assert_eq!(r.status, 200);
    }
    for i in 0..10 {
        assert_eq!(conns[i % CONNS].get("/feed/x").status, 422);
    }
    // The loop read every user 5 times; user 3 (30 items) has 25 left.
    let r = conns[0].get("/feed/3?size=25");
    assert_eq!(r.items(), feed_of(3)[5..30]);
    211
}

fn stats(s: &Server) -> Value {
    let r = s.get("/stats");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn stats_count_every_request_per_shard_and_merged() {
    let dir = TempDir::new("stats");
    let s = Server::known(&dir, &[]);
    let answered = drive_load(&s);
    let st = stats(&s);
    let shards = st["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let all = &st["all"];
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(n(all, "requests"), answered);
    assert_eq!(n(&all["latency_us"], "count"), answered);
    assert_eq!(n(all, "requests_2xx"), 201);
    assert_eq!(n(all, "requests_4xx"), 10);
    // Users 7, 14, 21, 28, 35 have empty feeds: 5 x 5 pages from the pool.
    assert_eq!(n(all, "personalized_items"), 175 + 25);
    assert_eq!(n(all, "fallback_items"), 25);
    assert_eq!(n(all, "exhausted_users"), 1);
    // Both shards forwarded, and what went out came in.
    let out: u64 = shards.iter().map(|s| n(&s["stats"], "forwarded_out")).sum();
    let inn: u64 = shards.iter().map(|s| n(&s["stats"], "forwarded_in")).sum();
    assert_eq!(out, inn);
    assert_eq!(n(all, "forwarded_out"), out);
    for s in shards {
        assert!(n(&s["stats"], "forwarded_out") > 0, "{s}");
        assert_eq!(
            n(&s["stats"]["round_trip_us"], "count"),
            n(&s["stats"], "forwarded_out")
        );
    }
    let per_shard: u64 = shards.iter().map(|s| n(&s["stats"], "requests")).sum();
    assert_eq!(per_shard, answered);
    // Percentiles are ordered, in microseconds, and the merge covers both.
    for h in [&all["latency_us"], &shards[0]["stats"]["latency_us"]] {
        let (p50, p90, p99, p999, max) = (
            n(h, "p50"),
            n(h, "p90"),
            n(h, "p99"),
            n(h, "p99_9"),
            n(h, "max"),
        );
        assert!(
            p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{h}"
        );
        assert!(max < 10_000_000, "under 10 s: {h}");
    }
    // The /stats request itself is counted once answered, apart from the
    // feed: its latency and counters stay the feed's alone.
    let other = n(all, "other_2xx");
    let again = stats(&s);
    assert_eq!(n(&again["all"], "requests"), answered);
    assert_eq!(n(&again["all"]["latency_us"], "count"), answered);
    assert_eq!(n(&again["all"], "other_2xx"), other + 1);
    assert_eq!(n(&again["all"]["other_latency_us"], "count"), other + 1);
}

/// Health checks and scrapes used to be counted, and timed, with the feed:
/// a load balancer's checks diluted the percentiles users profile.
#[test]
fn health_checks_and_scrapes_stay_out_of_the_feed_numbers() {
    let dir = TempDir::new("routes");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    for _ in 0..50 {
        assert_eq!(c.get("/healthz").status, 200);
    }
    for _ in 0..5 {
        assert_eq!(c.get("/metrics").status, 200);
        assert_eq!(c.get("/stats").status, 200);
    }
    assert_eq!(c.get("/nope").status, 404);
    for user in 1..=10 {
        assert_eq!(c.get(&format!("/feed/{user}?size=1")).status, 200);
    }
    let st = stats(&s);
    let all = &st["all"];
    assert_eq!(all["requests"], 10, "{all}");
    assert_eq!(all["requests_2xx"], 10);
    assert_eq!(all["latency_us"]["count"], 10);
    assert_eq!(
        all["other_2xx"], 60,
        "50 health checks, 5 scrapes, 5 /stats"
    );
    assert_eq!(all["other_4xx"], 1);
    let text = s.get("/metrics").body;
    let line = |prefix: &str| -> f64 {
        let sum: f64 = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum();
        sum
    };
    let feed = line("shardfeed_request_duration_seconds_count{shard=\"0\",route=\"local\"}")
        + line("shardfeed_request_duration_seconds_count{shard=\"1\",route=\"local\"}")
        + line("shardfeed_request_duration_seconds_count{shard=\"0\",route=\"forwarded\"}")
        + line("shardfeed_request_duration_seconds_count{shard=\"1\",route=\"forwarded\"}");
    assert_eq!(feed, 10.0, "{text}");
    let feed_ok = line("shardfeed_requests_total{shard=\"0\",route=\"feed\",status=\"2xx\"}")
        + line("shardfeed_requests_total{shard=\"1\",route=\"feed\",status=\"2xx\"}");
    assert_eq!(feed_ok, 10.0);
}

#[test]
fn metrics_parse_as_prometheus_text_with_both_shards() {
    let dir = TempDir::new("metrics");
    let s = Server::known(&dir, &[]);
    let answered = drive_load(&s);
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    let shard_of = |s: &prometheus_parse::Sample| s.labels.get("shard").map(str::to_string);
    let process_wide = [
        "shardfeed_build_info",
        "shardfeed_feed_info",
        "shardfeed_serving",
        "shardfeed_reloads_total",
        "process_start_time_seconds",
        "process_resident_memory_bytes",
    ];
    for sample in &scrape.samples {
        assert!(
            shard_of(sample).is_some() || process_wide.contains(&sample.metric.as_str()),
            "every shard's series has a shard label: {sample:?}"
        );
    }
    let process = |name: &str| {
        let found: Vec<_> = scrape.samples.iter().filter(|s| s.metric == name).collect();
        assert_eq!(found.len(), 1, "{name}");
        match found[0].value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(process("shardfeed_build_info"), 1.0);
    assert_eq!(process("shardfeed_serving"), 1.0);
    let reloads: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "shardfeed_reloads_total")
        .map(|s| (s.labels.get("result").unwrap().to_string(), &s.value))
        .collect();
    assert_eq!(reloads.len(), 2, "ok and failed: {reloads:?}");
    for (_, v) in reloads {
        assert!(
            matches!(v, prometheus_parse::Value::Counter(c) if *c == 0.0),
            "{v:?}"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = process("process_start_time_seconds");
    assert!(started <= now && started > now - 600.0, "{started}");
    assert!(process("process_resident_memory_bytes") > 1e6);
    let value = |name: &str, shard: &str, extra: Option<(&str, &str)>| -> f64 {
        let found: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("shard") == Some(shard))
            .filter(|s| extra.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} shard {shard} {extra:?}");
        found[0]
    };
    let mut requests = 0.0;
    for shard in ["0", "1"] {
        for status in ["2xx", "4xx", "5xx"] {
            let found: Vec<f64> = scrape
                .samples
                .iter()
                .filter(|s| s.metric == "shardfeed_requests_total")
                .filter(|s| s.labels.get("shard") == Some(shard))
                .filter(|s| s.labels.get("route") == Some("feed"))
                .filter(|s| s.labels.get("status") == Some(status))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) => v,
                    ref other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(found.len(), 1, "{shard} {status}");
            requests += found[0];
        }
        assert!(value("shardfeed_forwarded_out_total", shard, None) > 0.0);
        assert!(value("shardfeed_feed_users", shard, None) as u32 <= USERS);
        assert_eq!(
            value("shardfeed_pool_items", shard, None),
            POOL.len() as f64
        );
        value("shardfeed_exhausted_users_total", shard, None);
        value("shardfeed_open_connections", shard, None);
    }
    assert_eq!(requests as u64, answered);
    // Latency histograms: cumulative buckets ending at +Inf == _count.
    let histograms: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "shardfeed_request_duration_seconds")
        .collect();
    assert_eq!(histograms.len(), 6, "2 shards x local/forwarded/other");
    let mut counted = 0.0;
    for h in histograms {
        let feed = h.labels.get("route") != Some("other");
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("not a histogram: {h:?}");
        };
        assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
        let inf = buckets
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .unwrap();
        if feed {
            counted += inf.count;
        }
    }
    assert_eq!(counted as u64, answered);
    let docs = &scrape.docs;
    assert!(docs.contains_key("shardfeed_request_duration_seconds"));
    assert!(docs.contains_key("shardfeed_exhausted_users_total"));
}

#[test]
fn sigterm_with_idle_connections_exits_0_with_the_summary_and_the_log() {
    let dir = TempDir::new("shutdown");
    let log = dir.0.join("latency.hlog");
    let s = Server::known(
        &dir,
        &[
            "--histogram-log",
            path_str(&log),
            "--histogram-interval",
            "200ms",
            "--shutdown-timeout",
            "5s",
        ],
    );
    let answered = drive_load(&s);
    // Idle keep-alive connections, some that never sent a byte.
    let mut idle: Vec<Client> = (0..30).map(|_| s.connect()).collect();
    for c in idle.iter_mut().take(10) {
        assert_eq!(c.get("/healthz").status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, stdout, took) = s.terminate(Duration::from_secs(8));
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(4),
        "idle connections close at once: {took:?}"
    );
    for c in &mut idle {
        assert!(c.closed_by_server());
    }
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(
        rows[0].starts_with("shard") && rows[0].contains("p99.9 us"),
        "{stdout}"
    );
    assert!(
        rows[1].starts_with("0 ") && rows[2].starts_with("1 "),
        "{stdout}"
    );
    let total: u64 = rows[3].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(total, answered, "feed requests only: {stdout}");

    // The log holds both shards' intervals and every request.
    let intervals = shardfeed::histlog::read_log(&std::fs::read(&log).unwrap()).unwrap();
    let mut tags: Vec<String> = intervals.iter().filter_map(|i| i.tag.clone()).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags, ["shard-0", "shard-1"]);
    let logged: u64 = intervals.iter().map(|i| i.histogram.len()).sum();
    assert_eq!(logged, answered, "feed requests only");
}

#[test]
fn shutdown_finishes_requests_already_started() {
    let dir = TempDir::new("inflight");
    let s = Server::known(&dir, &["--shutdown-timeout", "5s"]);
    let mut partial = s.connect();
    partial.send(b"GET /feed/4?size=2 HTTP/1.1\r\nHo");
    std::thread::sleep(Duration::from_millis(100));
    let addr = s.addr;
    let stopper = std::thread::spawn(move || s.terminate(Duration::from_secs(8)));
    std::thread::sleep(Duration::from_millis(300));
    // The half-sent request is completed after the signal, and answered.
    partial.send(b"st: t\r\n\r\n");
    assert_eq!(partial.response().items(), feed_of(4)[..2]);
    assert!(partial.closed_by_server());
    // No new connection is served once stopping: refused, or closed unanswered.
    if let Ok(mut late) = std::net::TcpStream::connect(addr) {
        let _ = late.write_all(get("/healthz").as_bytes());
        late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            matches!(std::io::Read::read(&mut late, &mut buf), Ok(0) | Err(_)),
            "a connection made while stopping got an answer"
        );
    }
    let (status, _, _) = stopper.join().unwrap();
    assert!(status.success());
}

#[test]
fn shutdown_gives_up_on_stuck_requests_after_the_timeout() {
    let dir = TempDir::new("stuck");
    let s = Server::known(&dir, &["--shutdown-timeout", "1s"]);
    let mut stuck = s.connect();
    stuck.send(b"GET /feed/4 HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let (status, stdout, took) = s.terminate(Duration::from_secs(6));
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(900),
        "waited for the request: {took:?}"
    );
    assert!(stdout.contains("all"), "{stdout}");
}

#[test]
fn log_interval_prints_status_lines() {
    let dir = TempDir::new("status");
    let (feeds, pool) = known_files(&dir);
    let child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--feed", path_str(&feeds), "--fallback", path_str(&pool)])
        .args(["--log-interval", "200ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("req/s")).collect();
    assert!(lines.len() >= 3, "{stderr}");
    assert!(
        lines[0].contains("% forwarded, p99 ") && lines[0].contains("exhausted"),
        "{stderr}"
    );
}
