//! A cluster behind a real nginx (SPEC "Beyond one machine"): the generated
//! front's routing against `cluster::owner`, and two instances x two shards
//! on loopback through it. Needs nginx (Debian `nginx-light`); skipped
//! loudly without it (`scripts/test` installs it).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shardfeed::cluster::Cluster;
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

/// A free loopback port `p` such that `p..=p+extra` are all free now.
fn free_ports(extra: u16) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p as u32 + extra as u32 > 65_000 {
            continue;
        }
        let rest: Vec<_> = (1..=extra)
            .map(|i| TcpListener::bind(("127.0.0.1", p + i)))
            .collect();
        if rest.iter().all(|r| r.is_ok()) {
            return p;
        }
    }
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
