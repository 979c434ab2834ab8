//! A cluster behind a real nginx (SPEC "Beyond one machine"): the generated
//! front's routing against `cluster::owner`, and two instances x two shards
//! on loopback through it. Needs nginx (Debian `nginx-light`); skipped
//! loudly without it (`scripts/test` installs it).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shardfeed::cluster::Cluster;
use shardfeed::cursor::{version_tag, Cursor};
use shardfeed::nginx;

/// The nginx binary, or `None` (the test is then skipped loudly).
fn nginx_binary(test: &str) -> Option<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return Some(p.into());
        }
    }
    skipped(test, "nginx is not installed (apt-get install nginx-light)");
    None
}

/// An nginx with a private prefix, stopped (by PID) when dropped.
struct Nginx {
    child: Child,
}

impl Nginx {
    /// Starts nginx with `http` (the inside of the http block) after
    /// checking it with `nginx -t`.
    fn start(bin: &Path, dir: &TempDir, http: &str, addr: SocketAddr) -> Nginx {
        let prefix = dir.0.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let p = prefix.display();
        let conf = format!(
            "worker_processes 2;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n \
             client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n \
             fastcgi_temp_path {p}/fastcgi;\n uwsgi_temp_path {p}/uwsgi;\n \
             scgi_temp_path {p}/scgi;\n{http}\n}}\n"
        );
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let check = Command::new(bin)
            .args(["-t", "-p"])
            .arg(&prefix)
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGQUIT would wait for
        // keep-alive connections, SIGTERM stops at once.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// nginx's `split_clients` and `map` route every id exactly as
/// `Cluster::owner` does; non-canonical ids go to any instance.
#[test]
fn nginx_routes_every_id_as_cluster_owner() {
    let Some(bin) = nginx_binary("nginx_routes_every_id_as_cluster_owner") else {
        return;
    };
    let dir = TempDir::new("nginx-routing");
    // Uneven shares (7 pairs: 14.29 % and 14.28 %) exercise the boundary
    // arithmetic.
    let cluster = Cluster::parse("a 127.0.0.1:9000 3\nb 127.0.0.1:9100 4\n").unwrap();
    let port = free_ports(0);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = format!(
        "{}server {{ listen {addr}; keepalive_requests 100000; location / {{ return 200 \"$shardfeed_route\"; }} }}\n",
        nginx::routing(&cluster)
    );
    let _nginx = Nginx::start(&bin, &dir, &http, addr);
    let mut client = Client::connect(addr);
    let mut ids: Vec<u32> = (0..5000).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    ids.extend((0..5000).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u32
    }));
    ids.extend([
        241_453_554,
        u32::MAX,
        u32::MAX - 1,
        999_999_999,
        1_000_000_000,
    ]);
    for id in ids {
        let o = cluster.owner(id);
        let want = nginx::upstream_name(&cluster, o.instance, o.shard);
        for target in [format!("/feed/{id}"), format!("/feed/{id}?size=3")] {
            let got = client.get(&target).body;
            assert_eq!(got, want, "{target}");
        }
    }
    for other in [
        "/feed/007",
        "/feed/4294967296",
        "/feed/99999999999",
        "/feed/-1",
        "/feed/x",
        "/feed/",
        "/feed/12/x",
        "/healthz",
        "/stats",
    ] {
        assert_eq!(client.get(other).body, "sf_any", "{other}");
    }
}

/// The sum over shards of a Prometheus family, from `/metrics`.
fn metric_sum(addr: SocketAddr, family: &str) -> u64 {
    let text = Client::connect(addr).get("/metrics").body;
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The generated front of `cluster` (`nginx-conf`) on port `port`, running.
fn front_of(bin: &Path, dir: &TempDir, cluster: &Path, port: u16) -> (Nginx, SocketAddr) {
    let conf = run(&[
        "nginx-conf",
        "--cluster",
        path_str(cluster),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(conf.status.success(), "{conf:?}");
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = String::from_utf8(conf.stdout).unwrap();
    (Nginx::start(bin, dir, &http, front), front)
}

fn start_instance(cluster: &Path, name: &str, feeds: &Path, pool: &Path, state: &Path) -> Spawned {
    let mut s = Spawned::serve(&[
        "--cluster",
        path_str(cluster),
        "--instance",
        name,
        "--feed",
        path_str(feeds),
        "--fallback",
        path_str(pool),
        "--state-dir",
        path_str(state),
        "--no-pin",
    ]);
    s.listening();
    s
}

/// A page for another instance's user (its owner down, say) echoes the
/// request's cursor, so that the client continues where it was once the
/// owner is back, and repeats its fallback items for a repeated request;
/// without a cursor it carries none (this instance does not know where the
/// user is). No nginx needed: the client goes to the instance directly.
#[test]
fn a_misdirected_page_echoes_the_cursor() {
    let dir = TempDir::new("cluster-cursor");
    let (feeds, pool) = known_files(&dir);
    let (pa, pb) = (free_ports(2), free_ports(2));
    let text = format!("a 127.0.0.1:{pa} 2\nb 127.0.0.1:{pb} 2\n");
    let file = dir.file("cluster.txt", &text);
    let cluster = Cluster::parse(&text).unwrap();
    let mut a = start_instance(&file, "a", &feeds, &pool, &dir.0.join("state"));
    let addr: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
    let mine = (1..=USERS)
        .find(|&u| cluster.owner(u).instance == 0)
        .unwrap();
    let theirs = (1..=USERS)
        .find(|&u| cluster.owner(u).instance == 1)
        .unwrap();
    let mut c = Client::connect(addr);
    let r = c.get(&format!("/feed/{theirs}?size=3"));
    assert_eq!(r.header("Shardfeed-Degraded"), Some("not-owner"));
    assert_eq!(r.header("Feed-Cursor"), None);
    // The token the owner (instance b, same feed) would have given.
    let stats = c.get("/stats").body;
    let version = stats.split("\"version\":\"").nth(1).unwrap();
    let version = u64::from_str_radix(&version[..16], 16).unwrap();
    let held = Cursor {
        user: theirs,
        version: version_tag(version),
        position: 7,
        pool: 5,
    };
    let token = String::from_utf8(held.token().to_vec()).unwrap();
    let at = format!("/feed/{theirs}?size=3&cursor={token}");
    let first = c.get(&at);
    assert_eq!(first.header("Shardfeed-Degraded"), Some("not-owner"));
    assert_eq!(first.header("Feed-Cursor"), Some(token.as_str()), "echoed");
    assert_eq!(first.items(), POOL[5..8], "from the cursor's pool offset");
    for _ in 0..3 {
        c.get(&format!("/feed/{theirs}?size=5"));
        assert_eq!(c.get(&at).items(), first.items(), "the same items again");
    }
    // The cursor is checked against its user here too.
    let r = c.get(&format!("/feed/{mine}?size=3&cursor={token}"));
    assert_eq!(r.status, 422);
    a.stop(Duration::from_secs(20));
}

/// SPEC "Beyond one machine", on loopback: two instances x two shards
/// behind the generated nginx front.
#[test]
fn two_instances_behind_the_generated_nginx() {
    let Some(bin) = nginx_binary("two_instances_behind_the_generated_nginx") else {
        return;
    };
    let dir = TempDir::new("cluster-nginx");
    let (feeds, pool) = known_files(&dir);
    let (pa, pb, pf) = (free_ports(2), free_ports(2), free_ports(0));
    let text = format!("# test cluster\na 127.0.0.1:{pa} 2\nb 127.0.0.1:{pb} 2\n");
    let file = dir.file("cluster.txt", &text);
    let cluster = Cluster::parse(&text).unwrap();
    let states = [dir.0.join("state-a"), dir.0.join("state-b")];
    let mut a = start_instance(&file, "a", &feeds, &pool, &states[0]);
    let mut b = start_instance(&file, "b", &feeds, &pool, &states[1]);
    let direct: [SocketAddr; 2] = [pa, pb].map(|p| format!("127.0.0.1:{p}").parse().unwrap());

    let (nginx, front) = front_of(&bin, &dir, &file, pf);

    // Each user is personalized on exactly one instance: its owner.
    let users: [u64; 2] = direct.map(|d| metric_sum(d, "shardfeed_feed_users"));
    assert_eq!(users[0] + users[1], USERS as u64, "{users:?}");
    let owner = |u: u32| cluster.owner(u).instance;
    assert_eq!(
        users[0],
        (1..=USERS).filter(|&u| owner(u) == 0).count() as u64
    );

    // Through the front: the first 10 items of every user, in order, local.
    let mut served: Vec<Vec<u32>> = vec![Vec::new(); USERS as usize + 1];
    let mut c = Client::connect(front);
    for u in 1..=USERS {
        for _ in 0..2 {
            let r = c.get(&format!("/feed/{u}?size=5"));
            assert_eq!(r.header("Shardfeed-Degraded"), None, "{r:?}");
            let items = r.items();
            served[u as usize].extend(items.iter().filter(|&&i| i < 900_000));
        }
    }
    for d in direct {
        assert_eq!(metric_sum(d, "shardfeed_forwarded_out_total"), 0);
        assert_eq!(metric_sum(d, "shardfeed_misdirected_total"), 0);
    }
    // Other paths go to any instance.
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(c.get("/feed/x").status, 422);

    // A client bypassing the front: the non-owner answers fallback items,
    // degraded, without progress; the owner then continues.
    let u = (1..=USERS)
        .find(|&u| owner(u) == 1 && feed_len(u) > 20)
        .unwrap();
    let r = Client::connect(direct[0]).get(&format!("/feed/{u}?size=4"));
    assert_eq!(r.header("Shardfeed-Degraded"), Some("not-owner"));
    assert!(r.items().iter().all(|i| POOL.contains(i)), "{r:?}");
    assert_eq!(metric_sum(direct[0], "shardfeed_misdirected_total"), 1);

    // Instance b stops: its users get degraded pages from a, a's users
    // are unaffected.
    let (status, _, _) = {
        b.signal(libc::SIGTERM);
        b.wait_exit(Duration::from_secs(20))
    };
    assert!(status.success());
    for u in 1..=USERS {
        let r = c.get(&format!("/feed/{u}?size=3"));
        assert_eq!(r.status, 200, "{r:?}");
        if owner(u) == 1 {
            assert_eq!(r.header("Shardfeed-Degraded"), Some("not-owner"), "{u}");
            assert!(r.items().iter().all(|i| POOL.contains(i)), "{r:?}");
        } else {
            assert_eq!(r.header("Shardfeed-Degraded"), None, "{u}");
            served[u as usize].extend(r.items().iter().filter(|&&i| i < 900_000));
        }
    }
    // b returns with its state: its users continue where they were.
    b = start_instance(&file, "b", &feeds, &pool, &states[1]);
    let started = Instant::now();
    let probe = (1..=USERS).find(|&u| owner(u) == 1).unwrap();
    let mut c = loop {
        // HEAD: no progress either way.
        let mut c = Client::connect(front);
        c.send(format!("HEAD /feed/{probe} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.head_response();
        if r.header("Shardfeed-Degraded").is_none() {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b did not return"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for u in 1..=USERS {
        loop {
            let r = c.get(&format!("/feed/{u}?size=7"));
            assert_eq!(r.header("Shardfeed-Degraded"), None, "{u}: {r:?}");
            let mine: Vec<u32> = r.items().into_iter().filter(|&i| i < 900_000).collect();
            if mine.is_empty() {
                break;
            }
            served[u as usize].extend(mine);
        }
        assert_eq!(
            served[u as usize],
            feed_of(u),
            "user {u}: every item once, in order"
        );
    }
    for d in direct {
        assert_eq!(metric_sum(d, "shardfeed_forwarded_out_total"), 0);
    }
    drop(nginx);
    for s in [&mut a, &mut b] {
        s.stop(Duration::from_secs(20));
    }
}

/// While an instance loads its feed (its ports accept and answer `503
/// loading` from the first moment), the front gives its users degraded
/// pages from the other instance, never that `503`; and `/healthz` through
/// the front is `200` while one instance is ready.
#[test]
fn a_loading_instance_is_covered_by_the_front() {
    let Some(bin) = nginx_binary("a_loading_instance_is_covered_by_the_front") else {
        return;
    };
    let dir = TempDir::new("cluster-loading");
    let (pa, pb, pf) = (free_ports(1), free_ports(1), free_ports(0));
    let text = format!("a 127.0.0.1:{pa} 1\nb 127.0.0.1:{pb} 1\n");
    let file = dir.file("cluster.txt", &text);
    let cluster = Cluster::parse(&text).unwrap();
    // Synthetic users, enough that a load takes a while.
    let serve = |name: &str| {
        Spawned::serve(&[
            "--cluster",
            path_str(&file),
            "--instance",
            name,
            "--users",
            "2000000",
            "--feed-len",
            "50",
            "--no-pin",
        ])
    };
    let mut a = serve("a");
    a.listening();
    let (nginx, front) = front_of(&bin, &dir, &file, pf);
    let user_of_b = (1..).find(|&u| cluster.owner(u).instance == 1).unwrap();
    let b_direct: SocketAddr = format!("127.0.0.1:{pb}").parse().unwrap();

    let mut b = serve("b");
    b.wait_addr("bound ", Duration::from_secs(20));
    let loading = || get_from(b_direct, "/healthz").status == 503;
    let mut covered = 0;
    while loading() {
        // Never the 503: a degraded page while b loads, b's own once ready
        // (it may finish between the two requests).
        let r = get_from(front, &format!("/feed/{user_of_b}?size=3"));
        assert_eq!(r.status, 200, "{r:?}");
        let degraded = r.header("Shardfeed-Degraded") == Some("not-owner");
        let health = get_from(front, "/healthz");
        assert_eq!(health.status, 200, "{health:?}");
        // Counted if b was still loading after the page was answered.
        covered += (degraded && loading()) as u32;
    }
    assert!(
        covered > 0,
        "b loaded before the front was asked; make its feed larger"
    );
    b.listening();
    let r = get_from(front, &format!("/feed/{user_of_b}?size=3"));
    assert_eq!(r.header("Shardfeed-Degraded"), None, "b serves: {r:?}");
    drop(nginx);
    for s in [&mut a, &mut b] {
        s.signal(libc::SIGTERM);
        let (status, _, _) = s.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{}", s.stderr());
    }
}
