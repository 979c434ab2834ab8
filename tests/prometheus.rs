//! `deploy/` against a real Prometheus: promtool checks and unit-tests the
//! alerting rules, then a Prometheus on loopback scrapes a real shardfeed
//! (under load, on its admin port) with those rules loaded, and every query
//! of the Grafana dashboard must return data.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on
//! PATH). Without it the test says loudly that it was skipped and passes,
//! so that `cargo test` works on a fresh machine; `.ci/run` installs the
//! package and sets `SHARDFEED_REQUIRE_COMPONENTS=1`, which turns a missing
//! Prometheus into a failure.

mod common;

use std::io::{Read, Write};

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `Some(path)` of `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The Prometheus binaries, or `None` after saying loudly why the test is
/// skipped (written past the test harness's capture, so it shows).
fn prometheus_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (which("prometheus"), which("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ => {
            skipped(
                test,
                "prometheus/promtool not on PATH (apt-get install prometheus; scripts/test does)",
            );
            None
        }
    }
}

fn promtool(tool: &Path, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let Some((_, tool)) = prometheus_or_skip("alert_rules_pass_promtool") else {
        return;
    };
    promtool(&tool, &["check", "rules", "alerts.yml"]);
    promtool(&tool, &["test", "rules", "alerts.test.yml"]);
    promtool(&tool, &["check", "config", "prometheus.yml"]);
}

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.0; the status and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector.
fn query(prometheus: SocketAddr, promql: &str) -> Vec<Value> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(promql)),
    )
    .unwrap_or_else(|| panic!("no answer to {promql}"));
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(
        (status, &json["status"]),
        (200, &Value::from("success")),
        "{promql}: {body}"
    );
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Grafana's variables, as the dashboard's "All" would set them.
fn as_grafana_runs_it(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$job", ".+")
        .replace("$instance", ".+")
}

#[test]
fn dashboard_queries_return_data_from_a_real_prometheus_scraping_shardfeed() {
    let test = "dashboard_queries_return_data_from_a_real_prometheus_scraping_shardfeed";
    let Some((prometheus_bin, _)) = prometheus_or_skip(test) else {
        return;
    };
    // shardfeed, its admin port scraped, its public port under load.
    let mut s = Spawned::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--users",
        "2000",
        "--feed-len",
        "20",
        "--items",
        "1000",
    ]);
    let public = s.listening();
    let admin = s.wait_addr(
        "admin port (/metrics, /stats, /healthz) on ",
        Duration::from_secs(5),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut c = Client::connect(public);
            let mut n: u32 = 0;
            // Bounded in time and count whatever happens.
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
                && n < 2_000_000
            {
                n += 1;
                // Users 1..=2500: some unknown (fallback pages); some read
                // to the end of their 20 items.
                let user = 1 + (n.wrapping_mul(2_654_435_761) % 2500);
                assert_eq!(c.get(&format!("/feed/{user}?size=5")).status, 200);
                if n.is_multiple_of(64) {
                    c = Client::connect(public);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };

    let dir = TempDir::new("prometheus");
    let port = free_port();
    let config = dir.file(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: shardfeed\n    static_configs:\n      - targets: [\"{admin}\"]\n",
            deploy().join("prometheus/alerts.yml").display()
        ),
    );
    let prometheus_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _prometheus = Killed(
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let started = Instant::now();
    while http_get(prometheus_addr, "/-/ready").map(|r| r.0) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Enough scrapes for a 15 s rate window.
    let started = Instant::now();
    loop {
        let scrapes = query(
            prometheus_addr,
            "count_over_time(up{job=\"shardfeed\"}[1m])",
        );
        let n = scrapes
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 12.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "scrapes: {n}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = query(prometheus_addr, "up{job=\"shardfeed\"}");
    assert_eq!(up[0]["value"][1], "1", "the scrape works: {up:?}");

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/shardfeed.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = as_grafana_runs_it(target["expr"].as_str().unwrap());
            let result = query(prometheus_addr, &expr);
            assert!(
                !result.is_empty(),
                "panel {:?}: no data for {expr}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 16, "{checked} queries");
    // The variables' queries find the instance.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let metric = q
                .trim_start_matches("label_values(")
                .split([',', '{'])
                .next()
                .unwrap();
            assert!(!query(prometheus_addr, metric).is_empty(), "{q}");
        }
    }
    // The rules loaded and evaluate without error.
    let (_, body) = http_get(prometheus_addr, "/api/v1/rules").unwrap();
    let rules: Value = serde_json::from_str(&body).unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let group = groups
        .iter()
        .find(|g| g["name"] == "shardfeed")
        .expect("the group");
    let rules = group["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 8);
    for r in rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // A healthy instance under light load fires nothing but, perhaps,
    // nothing at all.
    let (_, body) = http_get(prometheus_addr, "/api/v1/alerts").unwrap();
    let alerts: Value = serde_json::from_str(&body).unwrap();
    let firing: Vec<&Value> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "{firing:?}");

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    s.stop(Duration::from_secs(10));
}
