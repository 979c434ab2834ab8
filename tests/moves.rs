//! Connection moves (issue 12): a keep-alive connection that keeps asking
//! for users of the other shard moves there and is served locally; what it
//! sent meanwhile is answered, in order; connections asking for random
//! users move at most twice; `--no-move-connections` keeps them.

mod common;

use common::*;
use serde_json::Value;

/// A connection moves at most this often (`session::MAX_MOVES`).
const MAX_MOVES: u64 = 2;

/// Whole-server counter `key` from `/stats` (asked on a new connection).
fn total(s: &Server, key: &str) -> u64 {
    let st: Value = serde_json::from_str(&s.get("/stats").body).unwrap();
    st["all"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {st}"))
}

fn head(target: &str) -> String {
    format!("HEAD {target} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// A keep-alive connection accepted by the shard that does not own `user`
/// (the kernel spreads connections over the shards' listeners): found by
/// a `HEAD` (no progress) that was forwarded. That `HEAD` is the first
/// request of the connection's streak.
fn connection_away_from(s: &Server, user: u32) -> Client {
    for _ in 0..64 {
        let before = total(s, "forwarded_out");
        let mut c = s.connect();
        c.send(head(&format!("/feed/{user}?size=1")).as_bytes());
        assert_eq!(c.head_response().status, 200);
        if total(s, "forwarded_out") > before {
            return c;
        }
    }
    panic!("64 connections, none on the shard that does not own user {user}");
}

#[test]
fn a_one_user_connection_moves_to_the_owner_and_is_served_there() {
    let dir = TempDir::new("moves-one-user");
    let s = Server::known(&dir, &[]);
    let user = 6; // 60 items
    let mut c = connection_away_from(&s, user);
    let forwarded = total(&s, "forwarded_out");
    assert_eq!(total(&s, "connections_moved"), 0);
    for k in 0..20 {
        let r = c.get(&format!("/feed/{user}?size=1"));
        assert_eq!(r.items(), [feed_of(user)[k]], "page {k}");
    }
    // The HEAD and the first GET were forwarded; then the connection moved
    // to the owner, and the next 19 pages were local.
    assert_eq!(total(&s, "forwarded_out"), forwarded + 1);
    assert_eq!(total(&s, "connections_moved"), 1);
    // Still the same connection, and it does not move back.
    for k in 20..30 {
        assert_eq!(
            c.get(&format!("/feed/{user}?size=1")).items(),
            [feed_of(user)[k]]
        );
    }
    assert_eq!(total(&s, "forwarded_out"), forwarded + 1);
    assert_eq!(total(&s, "connections_moved"), 1);
    let metrics = s.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shardfeed_connections_moved_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn pipelined_requests_across_the_move_are_answered_in_order() {
    let dir = TempDir::new("moves-pipelined");
    // Two answers per round: the move comes after the first round, with
    // four whole requests and part of a fifth still unread by anyone.
    let s = Server::known(&dir, &["--max-pipeline", "2"]);
    let user = 13; // 60 items
    let mut c = connection_away_from(&s, user);
    let forwarded = total(&s, "forwarded_out");
    let page = get(&format!("/feed/{user}?size=2"));
    let mut burst = page.repeat(6);
    let (first, rest) = page.split_at(10);
    burst.push_str(first);
    c.send(burst.as_bytes());
    let mut items = Vec::new();
    for _ in 0..6 {
        items.extend(c.response().items());
    }
    c.send(rest.as_bytes());
    items.extend(c.response().items());
    c.send((head("/healthz") + &page).as_bytes());
    assert_eq!(c.head_response().status, 200);
    items.extend(c.response().items());
    assert_eq!(items, feed_of(user)[..16]);
    let away = total(&s, "forwarded_out") - forwarded;
    assert!((1..=2).contains(&away), "{away} forwarded after the HEAD");
    assert_eq!(total(&s, "connections_moved"), 1);
}

#[test]
fn random_user_connections_move_at_most_twice_and_stay_correct() {
    let dir = TempDir::new("moves-random");
    let s = Server::known(&dir, &[]);
    let mut seed = 0x2545_f491_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut moved = 0;
    for round in 0..6 {
        let mut c = s.connect();
        for _ in 0..100 {
            let user = next() % USERS + 1;
            let r = c.get(&format!("/feed/{user}?size=3"));
            if r.status == 204 {
                continue; // used up and no pool left: never here, but fine
            }
            for item in r.items() {
                assert!(
                    item / 1000 == user || POOL.contains(&item),
                    "user {user} got {item}"
                );
            }
        }
        // Two requests in a row for the other shard's users come soon
        // with random users: every connection moves, and the limit stops it.
        let now = total(&s, "connections_moved");
        assert!(
            (1..=MAX_MOVES).contains(&(now - moved)),
            "connection {round} moved {} times",
            now - moved
        );
        moved = now;
    }
    // Random users keep being forwarded: moving does not help them.
    assert!(total(&s, "forwarded_out") > 100);
}

#[test]
fn no_move_connections_keeps_every_connection_where_it_was_accepted() {
    let dir = TempDir::new("moves-off");
    let s = Server::known(&dir, &["--no-move-connections"]);
    let user = 6;
    let mut c = connection_away_from(&s, user);
    let forwarded = total(&s, "forwarded_out");
    for k in 0..10 {
        assert_eq!(
            c.get(&format!("/feed/{user}?size=1")).items(),
            [feed_of(user)[k]]
        );
    }
    assert_eq!(total(&s, "forwarded_out"), forwarded + 10);
    assert_eq!(total(&s, "connections_moved"), 0);
}
