//! Test harness: start the real binary, speak raw HTTP/1.1 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shardfeed");

/// Items of test user `u`: `u*1000 .. u*1000 + len(u)`, so that any item says
/// whose it is and where in the feed it stands.
pub fn feed_of(user: u32) -> Vec<u32> {
    (0..feed_len(user)).map(|i| user * 1000 + i).collect()
}

/// Users 1..=40; user u has (u % 7) * 10 items (0 to 60).
pub fn feed_len(user: u32) -> u32 {
    (user % 7) * 10
}

pub const USERS: u32 = 40;
/// Fallback pool of the test server: ids far from any user's items.
pub const POOL: [u32; 12] = [
    900_001, 900_002, 900_003, 900_004, 900_005, 900_006, 900_007, 900_008, 900_009, 900_010,
    900_011, 900_012,
];

/// A scratch directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shardfeed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the known feed file and pool file; returns their paths.
pub fn known_files(dir: &TempDir) -> (PathBuf, PathBuf) {
    let mut feeds = String::from("# test feeds\n");
    for u in 1..=USERS {
        let items: Vec<String> = feed_of(u).iter().map(|i| i.to_string()).collect();
        feeds.push_str(&format!("{u}\t{}\n", items.join(",")));
    }
    let pool: Vec<String> = POOL.iter().map(|i| i.to_string()).collect();
    (
        dir.file("feeds.tsv", &feeds),
        dir.file("pool.txt", &pool.join("\n")),
    )
}

/// A running server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Kept open so that the server can still write to stdout.
    stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `shardfeed serve --listen 127.0.0.1:0 ARGS` and waits for its
    /// `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_stderr(args, Stdio::inherit())
    }

    /// As [`Server::start`], with the server's stderr going to `stderr`
    /// (`Stdio::piped()`: read `child.stderr` after `terminate`).
    pub fn start_with_stderr(args: &[&str], stderr: Stdio) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start shardfeed");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!("expected `listening on ADDR`, got {line:?}");
        };
        Server {
            addr: addr.parse().unwrap(),
            child,
            stdout,
        }
    }

    /// Sends SIGTERM and waits (at most `limit`) for the process to exit.
    /// Returns its status, the rest of its stdout, and how long it took.
    pub fn terminate(self, limit: Duration) -> (ExitStatus, String, Duration) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(limit)
    }

    /// Waits (at most `limit`) for the process to exit by itself.
    pub fn wait_exit(mut self, limit: Duration) -> (ExitStatus, String, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = started.elapsed();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        (status, rest, took)
    }

    /// The known test data on 2 shards.
    pub fn known(dir: &TempDir, extra: &[&str]) -> Server {
        let (feeds, pool) = known_files(dir);
        let mut args = vec![
            "--shards",
            "2",
            "--feed",
            feeds.to_str().unwrap(),
            "--fallback",
            pool.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One GET on a new connection; returns the response.
    pub fn get(&self, target: &str) -> Response {
        get_from(self.addr, target)
    }

    /// Whole-server counter `key` of `/stats` (asked on a new connection).
    pub fn total(&self, key: &str) -> u64 {
        let body = self.get("/stats").body;
        let st: serde_json::Value = serde_json::from_str(&body).unwrap();
        st["all"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {st}"))
    }

    /// A keep-alive connection accepted by a shard that does not own `user`
    /// (the kernel spreads connections over the shards' listeners): found by
    /// a `HEAD` (no progress) that was forwarded, sent with `extra` header
    /// lines (each ending in CRLF).
    pub fn connection_away_from(&self, user: u32, extra: &str) -> Client {
        for _ in 0..64 {
            let before = self.total("forwarded_out");
            let mut c = self.connect();
            let head = format!("HEAD /feed/{user}?size=1 HTTP/1.1\r\nHost: test\r\n{extra}\r\n");
            c.send(head.as_bytes());
            assert_eq!(c.head_response().status, 200);
            if self.total("forwarded_out") > before {
                return c;
            }
        }
        panic!("64 connections, none on a shard that does not own user {user}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as a JSON array of numbers.
    pub fn items(&self) -> Vec<u32> {
        assert_eq!(self.status, 200, "{self:?}");
        let inner = self
            .body
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix(']'))
            .unwrap_or_else(|| panic!("not an array: {}", self.body));
        if inner.is_empty() {
            return Vec::new();
        }
        inner.split(',').map(|n| n.parse().unwrap()).collect()
    }

    /// The message of a JSON error body.
    pub fn error(&self) -> String {
        let msg = self
            .body
            .strip_prefix("{\"error\":\"")
            .and_then(|b| b.strip_suffix("\"}"))
            .unwrap_or_else(|| panic!("not an error body: {}", self.body));
        msg.to_string()
    }
}

/// A raw TCP client with a read buffer.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.send(get(target).as_bytes());
        self.response()
    }

    /// Reads one full response (framed by Content-Length).
    pub fn response(&mut self) -> Response {
        self.read_response(true)
    }

    /// Reads the response to a `HEAD`: its head only, whatever its
    /// Content-Length says (the body stays empty).
    pub fn head_response(&mut self) -> Response {
        self.read_response(false)
    }

    fn read_response(&mut self, with_body: bool) -> Response {
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, with_body) {
                self.buf.drain(..used);
                return resp;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read a response");
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the server has closed the connection (after any bytes
    /// already buffered).
    pub fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(self.stream.read(&mut chunk), Ok(0))
    }
}

/// One GET on a new connection to `addr`.
pub fn get_from(addr: SocketAddr, target: &str) -> Response {
    Client::connect(addr).get(target)
}

pub fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// One response at the start of `buf`: framed by its Content-Length, or
/// bodiless (`1xx`, `204`, or the answer to a `HEAD` when `!with_body`).
fn parse_response(buf: &[u8], with_body: bool) -> Option<(Response, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let bodiless = status < 200 || status == 204;
    assert_eq!(
        length.is_none(),
        bodiless,
        "Content-Length on every answer but 1xx and 204: {head}"
    );
    let len = if bodiless || !with_body {
        0
    } else {
        length.unwrap()
    };
    let total = end + 4 + len;
    if buf.len() < total {
        return None;
    }
    let body = String::from_utf8(buf[end + 4..total].to_vec()).unwrap();
    Some((
        Response {
            status,
            headers,
            body,
        },
        total,
    ))
}

/// Runs `shardfeed ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `shardfeed pack INPUT -o OUTPUT --shards 2 FLAGS`, which must succeed;
/// returns what it said (stderr).
#[allow(dead_code)]
pub fn pack(input: &Path, output: &Path, flags: &[&str]) -> String {
    let mut args = vec![
        "pack",
        path_str(input),
        "-o",
        path_str(output),
        "--shards",
        "2",
    ];
    args.extend_from_slice(flags);
    let out = run(&args);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pack {input:?}: {said}");
    said
}

/// Runs `shardfeed ARGS` in a shell after `prefix` (e.g. `ulimit -l 256;`).
pub fn run_in_shell(prefix: &str, args: &[&str]) -> Output {
    let script = format!("{prefix} exec \"$0\" \"$@\"");
    Command::new("sh")
        .args(["-c", &script, BIN])
        .args(args)
        .output()
        .unwrap()
}

/// A free loopback port `p` such that `p..=p+extra` are all free now.
pub fn free_ports(extra: u16) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p as u32 + extra as u32 > 65_000 {
            continue;
        }
        let rest: Vec<_> = (1..=extra)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)))
            .collect();
        if rest.iter().all(|r| r.is_ok()) {
            return p;
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A server process whose stderr is collected as it comes (so that tests
/// can wait for a log line), started without waiting for anything.
pub struct Spawned {
    pub child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stdout: BufReader<ChildStdout>,
}

impl Spawned {
    /// Starts `shardfeed serve ARGS` (no `--listen` added).
    pub fn serve(args: &[&str]) -> Spawned {
        Spawned::command(Command::new(BIN).arg("serve").args(args))
    }

    /// The known test data on 2 shards on `127.0.0.1:0`, as
    /// [`Server::known`], with `extra` flags.
    pub fn known(dir: &TempDir, extra: &[&str]) -> Spawned {
        let (feeds, pool) = known_files(dir);
        let (feeds, pool) = (path_str(&feeds), path_str(&pool));
        let mut args = vec!["--listen", "127.0.0.1:0", "--shards", "2"];
        args.extend(["--feed", feeds, "--fallback", pool]);
        args.extend_from_slice(extra);
        Spawned::serve(&args)
    }

    /// Starts `cmd` with piped stdout and stderr.
    pub fn command(cmd: &mut Command) -> Spawned {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the process");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Spawned {
            child,
            stderr: text,
            stdout,
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for a stderr line containing `pattern`.
    pub fn wait_stderr(&self, pattern: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(pattern)) {
                return line.to_string();
            }
            assert!(
                started.elapsed() < limit,
                "no {pattern:?} on stderr within {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address of a stderr line `... <pattern> ADDR...`.
    pub fn wait_addr(&self, pattern: &str, limit: Duration) -> SocketAddr {
        let line = self.wait_stderr(pattern, limit);
        let rest = &line[line.find(pattern).unwrap() + pattern.len()..];
        let word = rest.split_whitespace().next().unwrap();
        word.trim_end_matches([';', ',', ')']).parse().unwrap()
    }

    /// Reads the `listening on ADDR` line from stdout.
    pub fn listening(&mut self) -> SocketAddr {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ");
        addr.unwrap_or_else(|| panic!("{line:?}; stderr: {}", self.stderr()))
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, and the process must exit 0 within `limit`.
    #[allow(dead_code)]
    pub fn stop(&mut self, limit: Duration) {
        self.signal(libc::SIGTERM);
        let (status, _, _) = self.wait_exit(limit);
        assert!(status.success(), "exit {status}: {}", self.stderr());
    }

    /// Waits (at most `limit`) for the process to exit; its status, the
    /// rest of its stdout and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, String, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < limit,
                "still running after {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = started.elapsed();
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        (status, rest, took)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request (raw bytes) on a new connection; the response.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.response()
}

/// Says loudly (past the test harness's capture) that `test` was skipped
/// for want of a component, or fails if `SHARDFEED_REQUIRE_COMPONENTS` is
/// set (as `scripts/test` and `.ci/run` do, having installed them).
pub fn skipped(test: &str, why: &str) {
    assert!(
        std::env::var_os("SHARDFEED_REQUIRE_COMPONENTS").is_none(),
        "{test}: {why}, and SHARDFEED_REQUIRE_COMPONENTS is set"
    );
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
}

/// Every known user's pages (users 1..=USERS and two unknown ones, 3 pages
/// of 25 each) from the server at `addr`: enough to use up every feed.
pub fn all_pages(addr: SocketAddr) -> Vec<Vec<u32>> {
    let mut c = Client::connect(addr);
    (1..=USERS + 2)
        .map(|u| {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.extend(c.get(&format!("/feed/{u}?size=25")).items());
            }
            got
        })
        .collect()
}

/// Asserts that a command failed saying each of `wanted` on stderr, without
/// a panic and with nothing on stdout (where `listening on` would go).
pub fn fails_with(out: Output, wanted: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "expected {w:?} in {stderr:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
}
