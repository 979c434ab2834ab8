//! Retry-safe pages (SPEC "Feed versions", issue 11) against the real
//! binary: every `200` of `/feed` carries `Feed-Cursor`; `?cursor=TOKEN`
//! serves that page again, byte for byte, from any connection and shard,
//! and moves progress to its end; malformed tokens are `422`; another feed
//! version's tokens are ignored; a cursor's advance is journaled.
//!
//! The known data (tests/common): user u holds `u*1000 + i` for i below
//! `(u % 7) * 10`; the pool is 900_001..=900_012.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;

/// The `Feed-Cursor` of a response, which must have one.
fn cursor(r: &Response) -> String {
    let c = r.header("Feed-Cursor").unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()),
        "{c}"
    );
    c.to_string()
}

fn items(user: u32, range: std::ops::Range<u32>) -> Vec<u32> {
    range.map(|i| user * 1000 + i).collect()
}

/// The answer as a client compares it: status, headers but `Date`, body.
fn same_answer(a: &Response, b: &Response) {
    let strip = |r: &Response| {
        let headers: Vec<_> = (r.headers.iter())
            .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
            .cloned()
            .collect();
        (r.status, headers, r.body.clone())
    };
    assert_eq!(strip(a), strip(b));
}

#[test]
fn a_retry_gets_the_same_page_and_progress_ends_at_its_end() {
    let dir = TempDir::new("cursor-retry");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    let first = c.get("/feed/6?size=5");
    assert_eq!(first.items(), items(6, 0..5));
    let t0 = cursor(&first);
    let at = format!("/feed/6?size=5&cursor={t0}");
    let second = c.get(&at);
    assert_eq!(second.items(), items(6, 5..10));
    // The answer was "lost": the same request again, on other connections
    // (which the kernel spreads over both shards).
    for _ in 0..6 {
        same_answer(&s.get(&at), &second);
    }
    assert_ne!(cursor(&second), t0);
    // Progress is at the end of the cursor's page, once.
    assert_eq!(c.get("/feed/6?size=3").items(), items(6, 10..13));
    // Going back serves old items again and moves nothing.
    same_answer(&c.get(&at), &second);
    assert_eq!(c.get("/feed/6?size=1").items(), items(6, 13..14));
    // Following the chain goes on from the cursor, not from the progress.
    let third = c.get(&format!("/feed/6?size=5&cursor={}", cursor(&second)));
    assert_eq!(third.items(), items(6, 10..15));
    assert_eq!(c.get("/feed/6?size=1").items(), items(6, 15..16));
    // Empty means none: served as without a cursor.
    assert_eq!(c.get("/feed/6?size=1&cursor=").items(), items(6, 16..17));
}

#[test]
fn the_fallback_part_repeats_too_and_beyond_the_list_pages_are_fallback() {
    let dir = TempDir::new("cursor-fallback");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    let rotate = |c: &mut Client| {
        // Unknown users' pages turn the pool's rotation on every shard.
        for u in 500..520 {
            assert_eq!(c.get(&format!("/feed/{u}?size=5")).status, 200);
        }
    };
    let t0 = cursor(&c.get("/feed/1?size=8"));
    let at = format!("/feed/1?size=8&cursor={t0}");
    let page = c.get(&at);
    let got = page.items();
    assert_eq!(got[..2], items(1, 8..10), "the last two of user 1's ten");
    assert!(got[2..].iter().all(|i| POOL.contains(i)), "{got:?}");
    for _ in 0..3 {
        rotate(&mut c);
        same_answer(&c.get(&at), &page);
    }
    // Past the end: fallback only; each cursor its own page, repeatably.
    let mut token = cursor(&page);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let at = format!("/feed/1?size=5&cursor={token}");
        let next = c.get(&at);
        assert!(next.items().iter().all(|i| POOL.contains(i)));
        rotate(&mut c);
        same_answer(&c.get(&at), &next);
        seen.push(next.items());
        token = cursor(&next);
    }
    assert_ne!(seen[0], seen[1], "the chain walks the pool");
    // An unknown user's cursor steers its fallback pages the same way.
    let t = cursor(&c.get("/feed/777?size=4"));
    let at = format!("/feed/777?size=4&cursor={t}");
    let page = c.get(&at);
    rotate(&mut c);
    same_answer(&c.get(&at), &page);
}

#[test]
fn concurrent_identical_retries_all_get_the_same_page() {
    let dir = TempDir::new("cursor-concurrent");
    let s = Server::known(&dir, &[]);
    let t0 = cursor(&s.get("/feed/5?size=3"));
    let at = format!("/feed/5?size=4&cursor={t0}");
    for round in 0..3 {
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (barrier, at, addr) = (barrier.clone(), at.clone(), s.addr);
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    barrier.wait();
                    c.get(&at)
                })
            })
            .collect();
        let answers: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for a in &answers {
            same_answer(a, &answers[0]);
        }
        assert_eq!(answers[0].items(), items(5, 3..7), "round {round}");
    }
    assert_eq!(s.get("/feed/5?size=2").items(), items(5, 7..9));
    assert!(
        metric_sum(&s, "shardfeed_forwarded_in_total") > 0,
        "some retries came through the other shard"
    );
    assert_eq!(metric_sum(&s, "shardfeed_cursor_pages_total"), 48);
}

/// The sum over shards of a Prometheus family, from `/metrics`.
fn metric_sum(s: &Server, family: &str) -> u64 {
    let text = s.get("/metrics").body;
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn malformed_cursors_are_422_and_change_nothing() {
    let dir = TempDir::new("cursor-malformed");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    let t = cursor(&c.get("/feed/4?size=2"));
    let mut typo = t.clone().into_bytes();
    typo[20] = if typo[20] == b'0' { b'1' } else { b'0' };
    let typo = String::from_utf8(typo).unwrap();
    let cases = [
        ("nope".to_string(), "32 hex digits"),
        (format!("{t}0"), "32 hex digits"),
        (t[..31].to_string(), "32 hex digits"),
        (format!("{}g", &t[..31]), "32 hex digits"),
        (typo, "not valid for this user"),
    ];
    for (token, says) in &cases {
        let r = c.get(&format!("/feed/4?size=2&cursor={token}"));
        assert_eq!(r.status, 422, "{token}: {r:?}");
        assert!(r.error().contains(says), "{token}: {}", r.error());
        assert_eq!(r.header("Feed-Cursor"), None);
    }
    // Another user's token: refused, not silently another position.
    let r = c.get(&format!("/feed/3?size=2&cursor={t}"));
    assert_eq!(r.status, 422);
    assert!(r.error().contains("another user"), "{}", r.error());
    assert_eq!(c.get("/feed/4?size=2").items(), items(4, 2..4));
    assert_eq!(c.get("/feed/3?size=1").items(), items(3, 0..1));
}

#[test]
fn head_carries_the_cursor_a_get_would_end_at() {
    let dir = TempDir::new("cursor-head");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    let head = |c: &mut Client, target: &str| {
        c.send(format!("HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        c.head_response()
    };
    let h = head(&mut c, "/feed/6?size=4");
    let g = c.get("/feed/6?size=4");
    assert_eq!(g.items(), items(6, 0..4), "HEAD served nothing");
    assert_eq!(cursor(&h), cursor(&g));
    let at = format!("/feed/6?size=4&cursor={}", cursor(&g));
    let h = head(&mut c, &at);
    let g = c.get(&at);
    assert_eq!(cursor(&h), cursor(&g));
    assert_eq!(h.header("Content-Length"), g.header("Content-Length"));
    assert_eq!(g.items(), items(6, 4..8));
}

#[test]
fn pipelined_cursor_requests_are_answered_in_order() {
    let dir = TempDir::new("cursor-pipeline");
    let s = Server::known(&dir, &[]);
    let mut c = s.connect();
    let mut raw = String::new();
    let mut users = Vec::new();
    for u in [5, 6, 12, 13] {
        let t = cursor(&c.get(&format!("/feed/{u}?size=2")));
        let at = format!("/feed/{u}?size=3&cursor={t}");
        raw += &get(&at);
        raw += &format!("HEAD {at} HTTP/1.1\r\nHost: t\r\n\r\n");
        raw += &get(&format!("/feed/{u}?size=1"));
        raw += &get(&at);
        users.push(u);
    }
    c.send(raw.as_bytes());
    for u in users {
        let a = c.response();
        let h = c.head_response();
        let next = c.response();
        let b = c.response();
        assert_eq!(a.items(), items(u, 2..5), "user {u}");
        same_answer(&a, &b);
        assert_eq!(cursor(&h), cursor(&a));
        assert_eq!(next.items(), items(u, 5..6));
    }
}

#[test]
fn a_token_survives_a_restart_over_the_same_feed_and_not_another() {
    let dir = TempDir::new("cursor-versions");
    let s = Server::known(&dir, &[]);
    s.get("/feed/6?size=5");
    let t = cursor(&s.get("/feed/6?size=5"));
    assert!(s.terminate(Duration::from_secs(10)).0.success());
    // The same feed (no state directory): the client's cursor carries the
    // position the server forgot.
    let s = Server::known(&dir, &[]);
    let at = format!("/feed/6?size=3&cursor={t}");
    assert_eq!(s.get(&at).items(), items(6, 10..13));
    assert_eq!(s.get("/feed/6?size=1").items(), items(6, 13..14));
    assert!(s.terminate(Duration::from_secs(10)).0.success());
    // A new feed version (one more user, user 6 unchanged): the old token
    // is ignored, the page is the one without a cursor.
    let (feeds, pool) = known_files(&dir);
    let mut text = std::fs::read_to_string(&feeds).unwrap();
    text.push_str("41\t1,2,3\n");
    std::fs::write(&feeds, text).unwrap();
    let s = Server::start(&[
        "--shards",
        "2",
        "--feed",
        path_str(&feeds),
        "--fallback",
        path_str(&pool),
    ]);
    let r = s.get(&at);
    assert_eq!(r.items(), items(6, 0..3));
    assert_ne!(cursor(&r)[..8], t[..8], "the new version's tag");
    let stats = s.get("/stats").body;
    assert!(stats.contains("\"stale_cursors\":1"), "{stats}");
}

#[test]
fn a_cursor_advance_is_durable_before_its_answer_under_fsync_always() {
    let dir = TempDir::new("cursor-durable");
    let state = dir.0.join("state");
    let flags = ["--state-dir", path_str(&state), "--fsync", "always"];
    let s = Server::known(&dir, &flags);
    let t0 = cursor(&s.get("/feed/6?size=5"));
    let at = format!("/feed/6?size=5&cursor={t0}");
    let page = s.get(&at);
    assert_eq!(page.items(), items(6, 5..10));
    same_answer(&s.get(&at), &page);
    // kill -9: only what was durable before the answers survives.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    drop(s);
    let s = Server::known(&dir, &flags);
    assert_eq!(s.get("/feed/6?size=2").items(), items(6, 10..12));
    // The old token still serves its page: the same version.
    same_answer(&s.get(&at), &page);
}
