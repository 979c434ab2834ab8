//! A server run in-process through the library seam (`server::start`),
//! as the binary's `serve` runs it: real listeners, real shards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::Parser;
use shardfeed::cli::{Cli, Command};
use shardfeed::server;

fn get(addr: std::net::SocketAddr, target: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
}

/// `shardfeed serve FLAGS` started in this process.
fn start(flags: &[&str]) -> server::Running {
    let cli = Cli::parse_from(["shardfeed", "serve"].iter().chain(flags));
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let config = args.config().unwrap();
    let listeners =
        server::bind(config.listen, config.cpus.len(), "choose another --listen").unwrap();
    server::start(&config, listeners).unwrap()
}

#[test]
fn start_serve_stop_and_report() {
    let running = start(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--users",
        "100",
        "--feed-len",
        "5",
        "--items",
        "50",
    ]);
    let addr = running.addr;
    assert_ne!(addr.port(), 0);
    let stop = running.stop_handle();
    let waiter = std::thread::spawn(move || running.wait());

    let first = get(addr, "/feed/7?size=5");
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    let again = get(addr, "/feed/7?size=5");
    let body = |a: &str| a.split_once("\r\n\r\n").unwrap().1.to_string();
    assert_ne!(body(&first), body(&again), "progress advanced");
    assert!(get(addr, "/feed/x").starts_with("HTTP/1.1 422 "));

    stop.stop("the test is done");
    stop.stop("an echo of the same stop");
    let drained = waiter.join().unwrap().expect("a clean stop");
    assert_eq!(drained.len(), 2);
    let shard_ids: Vec<_> = drained.iter().map(|s| s.shard.map(|id| id.0)).collect();
    assert_eq!(shard_ids, [Some(0), Some(1)]);
    let (ok, client_errors): (u64, u64) = drained.iter().fold((0, 0), |(ok, bad), s| {
        (ok + s.counters.requests_2xx, bad + s.counters.requests_4xx)
    });
    assert_eq!((ok, client_errors), (2, 1));
}

/// A connection that outlives `--shutdown-timeout` (its request half sent)
/// finishes its request after the journal has closed: the page's progress
/// could not be kept, so it is refused (`503`, closed), not answered as
/// served, which would give the user those items again after the restart.
#[test]
fn a_page_after_the_journal_closed_is_refused() {
    let state = std::env::temp_dir().join(format!("sf-inproc-closed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let running = start(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--users",
        "100",
        "--feed-len",
        "50",
        "--state-dir",
        state.to_str().unwrap(),
        "--fsync",
        "always",
        "--shutdown-timeout",
        "1s",
    ]);
    let addr = running.addr;
    let stop = running.stop_handle();
    let waiter = std::thread::spawn(move || running.wait());
    assert!(get(addr, "/feed/7?size=2").starts_with("HTTP/1.1 200 OK\r\n"));

    let mut late = TcpStream::connect(addr).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(late, "GET /feed/7?size=2 HTTP/1.1\r\nHost: t\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop.stop("the test is done");
    // Returns once the shard has drained (here: given up after the timeout)
    // and closed its journal; the shard itself runs on.
    let drained = waiter.join().unwrap().expect("a clean stop");
    assert_eq!(drained.len(), 1);
    write!(late, "Connection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("stopping"), "{answer}");
    let _ = std::fs::remove_dir_all(&state);
}
