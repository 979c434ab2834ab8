//! Connection moves (issue 12): a keep-alive connection that keeps asking
//! for users of the other shard moves there and is served locally; what it
//! sent meanwhile is answered, in order; connections asking for random
//! users move at most twice; `--no-move-connections` keeps them.

mod common;

use common::*;
use serde_json::Value;

/// A connection moves at most this often (`session::MAX_MOVES`).
const MAX_MOVES: u64 = 2;

/// A `GET` or `HEAD` with `extra` header lines (each ending in CRLF).
fn ask(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n")
}

fn head(target: &str) -> String {
    format!("HEAD {target} HTTP/1.1\r\nHost: test\r\n\r\n")
}

#[test]
fn a_one_user_connection_moves_to_the_owner_and_is_served_there() {
    let dir = TempDir::new("moves-one-user");
    let s = Server::known(&dir, &[]);
    let user = 6; // 60 items
    let mut c = s.connection_away_from(user, "");
    let forwarded = s.total("forwarded_out");
    assert_eq!(s.total("connections_moved"), 0);
    for k in 0..20 {
        let r = c.get(&format!("/feed/{user}?size=1"));
        assert_eq!(r.items(), [feed_of(user)[k]], "page {k}");
    }
    // The HEAD and the first GET were forwarded; then the connection moved
    // to the owner, and the next 19 pages were local.
    assert_eq!(s.total("forwarded_out"), forwarded + 1);
    assert_eq!(s.total("connections_moved"), 1);
    // Still the same connection, and it does not move back.
    for k in 20..30 {
        assert_eq!(
            c.get(&format!("/feed/{user}?size=1")).items(),
            [feed_of(user)[k]]
        );
    }
    assert_eq!(s.total("forwarded_out"), forwarded + 1);
    assert_eq!(s.total("connections_moved"), 1);
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
    let mut c = s.connection_away_from(user, "");
    let forwarded = s.total("forwarded_out");
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
    let away = s.total("forwarded_out") - forwarded;
    assert!((1..=2).contains(&away), "{away} forwarded after the HEAD");
    assert_eq!(s.total("connections_moved"), 1);
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
        let now = s.total("connections_moved");
        assert!(
            (1..=MAX_MOVES).contains(&(now - moved)),
            "connection {round} moved {} times",
            now - moved
        );
        moved = now;
    }
    // Random users keep being forwarded: moving does not help them.
    assert!(s.total("forwarded_out") > 100);
}

#[test]
fn no_move_connections_keeps_every_connection_where_it_was_accepted() {
    let dir = TempDir::new("moves-off");
    let s = Server::known(&dir, &["--no-move-connections"]);
    let user = 6;
    let mut c = s.connection_away_from(user, "");
    let forwarded = s.total("forwarded_out");
    for k in 0..10 {
        assert_eq!(
            c.get(&format!("/feed/{user}?size=1")).items(),
            [feed_of(user)[k]]
        );
    }
    assert_eq!(s.total("forwarded_out"), forwarded + 10);
    assert_eq!(s.total("connections_moved"), 0);
}

/// The token check goes with the connection: after the move its token still
/// serves its user, and another user's feed or a bad token is still refused.
#[test]
fn a_moved_connection_keeps_checking_tokens() {
    const SECRET: &str = "a secret of the gateway";
    let dir = TempDir::new("moves-jwt");
    let secret = dir.file("jwt.secret", SECRET);
    let s = Server::known(&dir, &["--jwt-secret", path_str(&secret)]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |sub: u32, exp: u64| {
        let claims = format!(r#"{{"sub":"{sub}","exp":{exp}}}"#);
        let t = shardfeed::auth::sign(SECRET.as_bytes(), r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
        format!("Authorization: Bearer {t}\r\n")
    };
    let user = 6;
    let mine = token(user, exp);
    let mut c = s.connection_away_from(user, &mine);
    for k in 0..5 {
        c.send(ask("GET", &format!("/feed/{user}?size=1"), &mine).as_bytes());
        assert_eq!(c.response().items(), [feed_of(user)[k]], "page {k}");
    }
    assert_eq!(s.total("connections_moved"), 1);
    c.send(ask("GET", "/feed/13?size=1", &mine).as_bytes());
    assert_eq!(c.response().status, 403, "another user's feed");
    c.send(ask("GET", &format!("/feed/{user}?size=1"), &token(user, 1000)).as_bytes());
    assert_eq!(c.response().status, 401, "an expired token");
    c.send(ask("GET", &format!("/feed/{user}?size=1"), &mine).as_bytes());
    assert_eq!(c.response().items(), [feed_of(user)[5]]);
    assert_eq!(s.total("connections_moved"), 1);
}

/// As instance `a` of a cluster, reached on shard 0's own port: a user of
/// shard 1 moves the connection there (no guessing which shard accepted);
/// users of instance `b` get degraded pages and never move it.
#[test]
fn in_a_cluster_only_this_instances_other_shard_moves_a_connection() {
    let dir = TempDir::new("moves-cluster");
    let (feeds, pool) = known_files(&dir);
    let (pa, pb) = (common::free_ports(2), common::free_ports(2));
    let text = format!("a 127.0.0.1:{pa} 2\nb 127.0.0.1:{pb} 2\n");
    let file = dir.file("cluster.txt", &text);
    let cluster = shardfeed::cluster::Cluster::parse(&text).unwrap();
    let mut a = Spawned::serve(&[
        "--cluster",
        path_str(&file),
        "--instance",
        "a",
        "--feed",
        path_str(&feeds),
        "--fallback",
        path_str(&pool),
    ]);
    let shared = a.listening();
    let stat = |key: &str| {
        let st: Value = serde_json::from_str(&get_from(shared, "/stats").body).unwrap();
        st["all"][key].as_u64().unwrap()
    };
    let shard0: std::net::SocketAddr = format!("127.0.0.1:{}", pa + 1).parse().unwrap();
    let owned = |instance, shard| {
        (1..=USERS)
            .filter(|&u| feed_len(u) >= 30)
            .find(|&u| {
                let o = cluster.owner(u);
                (o.instance, o.shard) == (instance, shard)
            })
            .unwrap()
    };
    // Instance b's user: degraded pages, no move, however many.
    let theirs = owned(1, 0);
    let mut c = Client::connect(shard0);
    for _ in 0..5 {
        let r = c.get(&format!("/feed/{theirs}?size=1"));
        assert_eq!(r.header("Shardfeed-Degraded"), Some("not-owner"));
    }
    assert_eq!((stat("connections_moved"), stat("misdirected")), (0, 5));
    // Shard 1's user: two forwarded, then the connection moves to shard 1.
    let user = owned(0, 1);
    for k in 0..10 {
        let r = c.get(&format!("/feed/{user}?size=1"));
        assert_eq!(r.items(), [feed_of(user)[k]], "page {k}");
    }
    assert_eq!(stat("forwarded_out"), 2);
    assert_eq!(stat("connections_moved"), 1);
    let st: Value = serde_json::from_str(&get_from(shared, "/stats").body).unwrap();
    assert_eq!(st["shards"][0]["stats"]["connections_moved"], 1);
    assert_eq!(st["shards"][1]["stats"]["connections_moved"], 0);
    a.stop(std::time::Duration::from_secs(20));
}

/// `--move-after 1`: the first request for the other shard's user moves
/// the connection; nothing after it is forwarded.
#[test]
fn move_after_one_moves_after_the_first_request() {
    let dir = TempDir::new("moves-after-1");
    let s = Server::known(&dir, &["--move-after", "1"]);
    let user = 6;
    let mut c = s.connection_away_from(user, "");
    let forwarded = s.total("forwarded_out");
    for k in 0..5 {
        assert_eq!(
            c.get(&format!("/feed/{user}?size=1")).items(),
            [feed_of(user)[k]]
        );
    }
    assert_eq!(s.total("forwarded_out"), forwarded);
    assert_eq!(s.total("connections_moved"), 1);
}
