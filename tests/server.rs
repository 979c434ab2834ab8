//! Black-box tests: the real binary, 2 shards, a known feed file, raw TCP.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::sync::{Arc, Mutex};

use common::*;

#[test]
fn pages_follow_the_feed_and_progress_is_remembered() {
    let dir = TempDir::new("progress");
    let s = Server::known(&dir, &[]);
    let user = 6; // 60 items
    let first = s.get("/feed/6?size=3");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("Content-Type"), Some("application/json"));
    assert_eq!(first.items(), feed_of(user)[0..3]);
    // Progress is kept across connections (and so across shards).
    for _ in 0..5 {
        s.connect().get("/feed/6?size=1");
    }
    assert_eq!(s.get("/feed/6?size=4").items(), feed_of(user)[8..12]);
    // The default size is 10; size=0 means the default.
    assert_eq!(s.get("/feed/6").items(), feed_of(user)[12..22]);
    assert_eq!(s.get("/feed/6?size=0&x=y").items(), feed_of(user)[22..32]);
}

#[test]
fn fallback_tops_up_distinct_items_and_unknown_users_get_the_pool() {
    let dir = TempDir::new("fallback");
    let s = Server::known(&dir, &["--default-size", "8", "--max-size", "20"]);
    // User 1 has 10 items: a page of 14 = 10 personalized + 4 from the pool.
    let page = s.get("/feed/1?size=14").items();
    assert_eq!(page[..10], feed_of(1)[..]);
    assert!(page[10..].iter().all(|i| POOL.contains(i)), "{page:?}");
    // Exhausted: the pool only, distinct, full pages while the pool suffices.
    let page = s.get("/feed/1?size=12").items();
    assert_eq!(page.len(), 12);
    let mut sorted = page.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, POOL, "the whole pool, each item once");
    // More than the pool holds: a shorter page, still distinct.
    let page = s.get("/feed/1?size=20").items();
    assert_eq!(page.len(), POOL.len());
    // Unknown users (0, absent, the largest id) get pool items.
    for target in ["/feed/0", "/feed/41", "/feed/4294967295?size=3"] {
        let page = s.get(target).items();
        assert!(!page.is_empty() && page.iter().all(|i| POOL.contains(i)));
    }
    assert_eq!(s.get("/feed/41").items().len(), 8, "default size");
    // A user with an empty feed (7: 0 items) is served from the pool too.
    assert!(s
        .get("/feed/7?size=2")
        .items()
        .iter()
        .all(|i| POOL.contains(i)));
}

#[test]
fn nothing_to_serve_is_204_not_a_5xx() {
    let dir = TempDir::new("nopool");
    let (feeds, _) = known_files(&dir);
    let s = Server::start(&[
        "--shards",
        "2",
        "--feed",
        path_str(&feeds),
        "--fallback-size",
        "0",
    ]);
    assert_eq!(s.get("/feed/1?size=7").items(), feed_of(1)[..7]);
    assert_eq!(
        s.get("/feed/1?size=7").items(),
        feed_of(1)[7..],
        "short page"
    );
    // Nothing for this user is not a sick backend: 204, no body, and the
    // connection stays.
    let mut c = s.connect();
    let r = c.get("/feed/1");
    assert_eq!(r.status, 204);
    assert_eq!((r.body.as_str(), r.header("Content-Length")), ("", None));
    assert_eq!(c.get("/feed/999").status, 204, "unknown user, no pool");
    c.send(b"HEAD /feed/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.head_response().status, 204);
    assert_eq!(c.get("/feed/2?size=2").items(), feed_of(2)[..2]);
    let stats: serde_json::Value = serde_json::from_str(&s.get("/stats").body).unwrap();
    assert_eq!(stats["all"]["nothing_to_serve"], 2, "HEAD counts nothing");
    assert_eq!(stats["all"]["requests_5xx"], 0);
}

#[test]
fn every_error_status_with_a_json_message() {
    let dir = TempDir::new("errors");
    let s = Server::known(&dir, &[]);
    let cases: &[(&str, u16, &str)] = &[
        ("/feed/", 422, "user id is empty"),
        (
            "/feed/-3",
            422,
            "user id must be a decimal number without sign",
        ),
        (
            "/feed/12ab",
            422,
            "user id must be a decimal number without sign",
        ),
        ("/feed/4294967296", 422, "user id is larger than 4294967295"),
        ("/feed/1?size=x", 422, "size must be a decimal number"),
        ("/feed/1?size=101", 422, "size must be at most 100"),
        ("/nothing", 404, "no such resource"),
        ("/feed/1/2", 404, "no such resource"),
    ];
    let mut c = s.connect();
    for (target, status, message) in cases {
        let r = c.get(target);
        assert_eq!(r.status, *status, "{target}");
        assert_eq!(r.error(), *message, "{target}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }
    // 4xx of that kind keep the connection: it still serves.
    assert_eq!(c.get("/feed/2?size=2").items(), feed_of(2)[..2]);

    c.send(b"DELETE /feed/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(
        (r.status, r.header("Allow")),
        (405, Some("GET, HEAD, OPTIONS"))
    );
    assert_eq!(r.error(), "method not allowed: use GET or HEAD");

    // Errors that make the stream untrustworthy answer and close.
    let closing: Vec<(Vec<u8>, u16)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (b"GET /feed/1 HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            b"GET /feed/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"GET /feed/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n\r\n".to_vec(),
            413,
        ),
        (
            format!("GET /feed/1 HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n", "a".repeat(9000))
                .into_bytes(),
            431,
        ),
        (
            format!("GET /feed/1?{} HTTP/1.1\r\nHost: t\r\n\r\n", "q".repeat(5000)).into_bytes(),
            414,
        ),
        (b"GET /feed/1 HTTP/1.1\nHost: t\n\n".to_vec(), 400),
        (
            b"GET /feed/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
                .to_vec(),
            400,
        ),
        (b"GET /feed/1 HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n".to_vec(), 400),
        (b"GET /feed/1 HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n".to_vec(), 400),
    ];
    for (raw, status) in closing {
        let mut c = s.connect();
        c.send(&raw);
        let r = c.response();
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&raw[..20]));
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(!r.error().is_empty());
        assert!(c.closed_by_server());
    }
}

#[test]
fn get_body_is_read_and_discarded() {
    let dir = TempDir::new("body");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    c.send(b"GET /feed/3?size=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    c.send(get("/feed/3?size=2").as_bytes());
    assert_eq!(c.response().items(), feed_of(3)[0..2]);
    assert_eq!(c.response().items(), feed_of(3)[2..4]);
}

#[test]
fn pipelined_requests_with_mixed_owners_are_answered_in_order() {
    let dir = TempDir::new("pipeline");
    let s = Server::known(&dir, &[]);
    // 60 requests over 20 users (about half owned by the other shard),
    // three rounds each, sent in arbitrary pieces.
    let users: Vec<u32> = (1..=USERS)
        .filter(|u| feed_len(*u) >= 30)
        .take(20)
        .collect();
    let mut raw = Vec::new();
    let mut expected = Vec::new();
    for round in 0..3 {
        for &u in &users {
            raw.extend_from_slice(get(&format!("/feed/{u}?size=5")).as_bytes());
            let start = round * 5;
            expected.push(feed_of(u)[start..start + 5].to_vec());
        }
    }
    raw.extend_from_slice(get("/healthz").as_bytes());
    let mut c = s.connect();
    let mut at = 0;
    let mut step = 1;
    while at < raw.len() {
        let end = (at + step).min(raw.len());
        c.stream.write_all(&raw[at..end]).unwrap();
        at = end;
        step = step * 7 % 997 + 1;
    }
    for want in expected {
        assert_eq!(c.response().items(), want);
    }
    let health = c.response();
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "{\"status\":\"ok\"}")
    );
}

#[test]
fn keep_alive_close_and_http_1_0() {
    let dir = TempDir::new("conn");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    for _ in 0..3 {
        assert_eq!(c.get("/healthz").status, 200);
    }
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed_by_server());

    // Requests after `Connection: close` in the same packet get no answer.
    let mut c = s.connect();
    c.send(b"GET /feed/5?size=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /feed/5?size=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().items(), feed_of(5)[..1]);
    assert!(c.closed_by_server());
    assert_eq!(
        s.get("/feed/5?size=1").items(),
        feed_of(5)[1..2],
        "the second never ran"
    );

    // HTTP/1.0 closes by default, stays with keep-alive and says so.
    let mut c = s.connect();
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(c.closed_by_server());
    let mut c = s.connect();
    for _ in 0..2 {
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(c.response().header("Connection"), Some("keep-alive"));
    }

    // A client that half-closes after its requests still gets every answer.
    let mut c = s.connect();
    c.send((get("/feed/4?size=2") + &get("/feed/4?size=2")).as_bytes());
    c.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.response().items(), feed_of(4)[0..2]);
    assert_eq!(c.response().items(), feed_of(4)[2..4]);
    assert!(c.closed_by_server());
}

#[test]
fn absolute_form_target_and_answer_headers() {
    let dir = TempDir::new("headers");
    let s = Server::known(&dir, &[]);
    let r = s.get("http://example.com/feed/2?size=1");
    assert_eq!(r.items(), feed_of(2)[..1]);
    assert_eq!(r.header("Server"), Some("shardfeed"));
    let date = r.header("Date").expect("a Date header");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
}

/// Many connections, on both shards, drain the same users at once: every
/// personalized item is served exactly once, in feed order within each
/// answer, with no gaps.
#[test]
fn concurrent_clients_get_each_item_exactly_once() {
    let dir = TempDir::new("concurrent");
    let s = Server::known(&dir, &["--max-size", "100"]);
    let users: Vec<u32> = (1..=USERS).filter(|u| feed_len(*u) == 60).collect();
    assert!(users.len() >= 5);
    let served: Arc<Mutex<HashMap<u32, Vec<Vec<u32>>>>> = Arc::default();
    let addr = s.addr;
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let users = users.clone();
            let served = served.clone();
            std::thread::spawn(move || {
                let mut conns: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
                for round in 0..40usize {
                    let u = users[(t + round) % users.len()];
                    let size = 1 + (t * 7 + round * 3) % 5;
                    let c = &mut conns[round % 3];
                    let page = c.get(&format!("/feed/{u}?size={size}")).items();
                    assert_eq!(page.len(), size);
                    let mine: Vec<u32> = page.iter().copied().filter(|i| i / 1000 == u).collect();
                    served.lock().unwrap().entry(u).or_default().push(mine);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let served = served.lock().unwrap();
    for &u in &users {
        let pages = &served[&u];
        for page in pages {
            // Contiguous and in order within each answer.
            assert!(page.windows(2).all(|w| w[1] == w[0] + 1), "{page:?}");
        }
        let mut all: Vec<u32> = pages.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            feed_of(u),
            "user {u}: each item exactly once, none missing"
        );
    }
}

/// The same seed gives the same feeds on 1 or 2 shards, and `gen` writes
/// exactly the feeds the server generates.
#[test]
fn synthetic_feeds_do_not_depend_on_shard_count_or_source() {
    let dir = TempDir::new("synthetic");
    let data = [
        "--users",
        "300",
        "--feed-len",
        "30",
        "--items",
        "5000",
        "--seed",
        "7",
    ];
    let gen = dir.0.join("gen.tsv");
    let mut args = vec!["gen", "--out", path_str(&gen)];
    args.extend_from_slice(&data);
    assert!(run(&args).status.success());

    let mut one = vec!["--shards", "1"];
    one.extend_from_slice(&data);
    let mut two = vec!["--shards", "2"];
    two.extend_from_slice(&data);
    let from_file = ["--shards", "2", "--feed", path_str(&gen)];
    let servers = [
        Server::start(&one),
        Server::start(&two),
        Server::start(&from_file),
    ];
    let mut clients: Vec<Client> = servers.iter().map(|s| s.connect()).collect();
    for u in (1..=300).step_by(13) {
        let pages: Vec<Vec<u32>> = clients
            .iter_mut()
            .map(|c| c.get(&format!("/feed/{u}?size=30")).items())
            .collect();
        assert_eq!(pages[0], pages[1], "user {u}: 1 vs 2 shards");
        assert_eq!(pages[0], pages[2], "user {u}: generated vs file");
        let mut distinct = pages[0].clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 30);
    }
    // The default pool is the same too: the feeds' most frequent items.
    let pools: Vec<Vec<u32>> = clients
        .iter_mut()
        .map(|c| c.get("/feed/0?size=20").items())
        .collect();
    assert_eq!(pools[0], pools[1]);
    assert_eq!(pools[0], pools[2]);
}

/// Unpinned shards (`--no-pin`) serve exactly like pinned ones.
#[test]
fn unpinned_shards_serve_the_same_feeds() {
    let dir = TempDir::new("nopin");
    let s = Server::known(&dir, &["--no-pin"]);
    let mut c = s.connect();
    for u in [1, 2, 3, 4, 5, 6] {
        assert_eq!(c.get(&format!("/feed/{u}?size=2")).items(), feed_of(u)[..2]);
    }
}

/// Shards that poll before they sleep (`--idle-poll`) serve exactly like
/// ones that sleep at once, pinned or not.
#[test]
fn polling_shards_serve_the_same_feeds() {
    let dir = TempDir::new("idlepoll");
    for flags in [
        &["--idle-poll", "300us"][..],
        &["--idle-poll", "1ms", "--no-pin"],
    ] {
        let s = Server::known(&dir, flags);
        let mut c = s.connect();
        for u in [1, 2, 3, 4, 5, 6] {
            assert_eq!(c.get(&format!("/feed/{u}?size=2")).items(), feed_of(u)[..2]);
        }
    }
}
