//! Protocol behaviour against the real binary: the close decision, `HEAD`,
//! `OPTIONS`, `Expect: 100-continue`, and answers while stopping.

mod common;

use std::time::Duration;

use common::*;

/// An error that leaves the byte stream in doubt answers, says close, and
/// really closes: the pipelined request after it is never answered.
#[test]
fn a_closing_error_is_the_last_answer_on_its_connection() {
    let dir = TempDir::new("proto-close");
    let s = Server::known(&dir, &[]);
    for (served, bad) in [
        &b"GET * HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET nope HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /feed/1 HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = s.connect();
        let mut raw = get("/feed/3?size=1").into_bytes();
        raw.extend_from_slice(bad);
        raw.extend_from_slice(get("/feed/3?size=1").as_bytes());
        c.send(&raw);
        assert_eq!(c.response().items(), feed_of(3)[served..served + 1]);
        let r = c.response();
        assert!(matches!(r.status, 400 | 417), "{r:?}");
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.closed_by_server(), "nothing after a closing answer");
    }
    // The requests after the bad ones were never served: user 3 moved by
    // one item per connection.
    assert_eq!(s.get("/feed/3?size=1").items(), feed_of(3)[3..4]);
}

#[test]
fn head_is_get_without_body_and_without_progress() {
    let dir = TempDir::new("proto-head");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    // Users 2 and 5 are on different shards for 2 shards (one is forwarded).
    for user in [2u32, 5] {
        c.send(format!("HEAD /feed/{user}?size=3 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let head = c.head_response();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("Content-Type"), Some("application/json"));
        let page = c.get(&format!("/feed/{user}?size=3"));
        assert_eq!(page.items(), feed_of(user)[..3], "HEAD served nothing");
        assert_eq!(
            head.header("Content-Length").unwrap(),
            page.body.len().to_string(),
            "HEAD announces the GET's length"
        );
    }
    for (target, status) in [("/healthz", 200), ("/nothing", 404), ("/feed/x", 422)] {
        c.send(format!("HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.head_response().status, status, "{target}");
    }
    // The connection is still in step after bodiless answers.
    assert_eq!(c.get("/feed/2?size=1").items(), feed_of(2)[3..4]);
}

#[test]
fn options_answers_204_with_allow() {
    let dir = TempDir::new("proto-options");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    for target in ["*", "/feed/1", "/healthz", "/metrics"] {
        c.send(format!("OPTIONS {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 204, "{target}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD, OPTIONS"));
        assert_eq!(r.header("Content-Length"), None);
    }
    c.send(b"OPTIONS /nothing HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().status, 404);
    assert_eq!(c.get("/feed/1?size=2").items(), feed_of(1)[..2]);
}

#[test]
fn expect_100_continue_gets_100_then_the_answer() {
    let dir = TempDir::new("proto-expect");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    c.send(b"GET /feed/4?size=2 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c.response();
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    assert_eq!(c.response().items(), feed_of(4)[..2]);
    // A body over the limit is refused at once, not waited for (no 408).
    c.send(b"GET /feed/4 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("Connection"), Some("close"));
}

/// A connection in the middle of a request when the stop comes gets its
/// answer, with `Connection: close`, and the server still exits cleanly.
#[test]
fn answers_written_while_stopping_close_their_connection() {
    let dir = TempDir::new("proto-stop");
    let s = Server::known(&dir, &["--shutdown-timeout", "5s"]);
    let mut c = s.connect();
    assert_eq!(c.get("/feed/6?size=1").items(), feed_of(6)[..1]);
    c.send(b"GET /feed/6?size=1 HTTP/1.1\r\n");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    c.send(b"Host: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.items(), feed_of(6)[1..2]);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed_by_server());
    let (status, summary, _) = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(summary.contains("shard"), "{summary}");
}
