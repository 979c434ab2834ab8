//! Progress that survives restarts and crashes, against the real binary on a
//! real disk: clean restarts, `kill -9` under load for every `--fsync`
//! policy, another shard count, damaged journal files, a full disk, and
//! state directories that cannot be used. Checked with the items
//! themselves: user u's item at position i is `u * 100_000 + i`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const USERS: u32 = 64;
const FEED_LEN: u32 = 5_000;

fn item(user: u32, pos: u32) -> u32 {
    user * 100_000 + pos
}

/// Where an item stands in its user's feed (`None`: a fallback item).
fn position(user: u32, item: u32) -> Option<u32> {
    (item / 100_000 == user).then_some(item % 100_000)
}

fn feed_file(dir: &TempDir) -> String {
    let mut text = String::new();
    for u in 1..=USERS {
        let items: Vec<String> = (0..FEED_LEN).map(|i| item(u, i).to_string()).collect();
        text.push_str(&format!("{u}\t{}\n", items.join(",")));
    }
    path_str(&dir.file("feeds.tsv", &text)).to_string()
}

fn start(feeds: &str, state: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--feed",
        feeds,
        "--state-dir",
        path_str(state),
        "--fallback-size",
        "5",
    ];
    args.extend_from_slice(extra);
    Server::start_with_stderr(&args, Stdio::null())
}

/// The position of `user`'s next personalized item (serves one item).
fn next_position(s: &Server, user: u32) -> u32 {
    let items = s.get(&format!("/feed/{user}?size=1")).items();
    position(user, items[0]).expect("a personalized item")
}

/// Starts on `state` with `flags`, takes `user`'s next position (serving
/// one item) and stops cleanly.
fn position_after_restart(feeds: &str, state: &Path, flags: &[&str], user: u32) -> u32 {
    let s = start(feeds, state, flags);
    let next = next_position(&s, user);
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    next
}

fn kill9(s: Server) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    drop(s);
}

#[test]
fn a_clean_restart_continues_every_user_even_with_other_shards() {
    let dir = TempDir::new("durable-clean");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let s = start(&feeds, &state, &["--shards", "2"]);
    for u in 1..=USERS {
        let page = s.get(&format!("/feed/{u}?size={}", 1 + u % 5)).items();
        let want: Vec<u32> = (0..1 + u % 5).map(|i| item(u, i)).collect();
        assert_eq!(page, want);
    }
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success());
    for shards in ["1", "2"] {
        let s = start(&feeds, &state, &["--shards", shards]);
        let offset = if shards == "1" { 0 } else { 1 };
        for u in 1..=USERS {
            assert_eq!(
                next_position(&s, u),
                1 + u % 5 + offset,
                "user {u}, {shards} shard(s)"
            );
        }
        let (status, _, _) = s.terminate(Duration::from_secs(10));
        assert!(status.success());
    }
}

/// What a load thread saw of one user: every acknowledged position, with the
/// time its answer arrived.
#[derive(Default, Clone)]
struct Seen {
    acked: Vec<(Instant, u32)>,
}

/// Clients paging through every user as fast as they can (each user on one
/// connection, one request at a time), until told to stop.
fn load(
    s: &Server,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(vec![Seen::default(); USERS as usize + 1]));
    let mut threads = Vec::new();
    for t in 0..8u32 {
        let (addr, stop, seen) = (s.addr, stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let users: Vec<u32> = (1..=USERS).filter(|u| u % 8 == t).collect();
            let mut at = vec![0u32; users.len()];
            while !stop.load(Ordering::Relaxed) {
                for (k, &u) in users.iter().enumerate() {
                    if at[k] + 10 > FEED_LEN {
                        continue;
                    }
                    c.send(get(&format!("/feed/{u}?size=3")).as_bytes());
                    let mut buf = [0u8; 1];
                    // The server dies under us: stop reading.
                    if c.stream.peek(&mut buf).map_or(true, |n| n == 0) {
                        return;
                    }
                    let r = c.response();
                    let got: Vec<u32> =
                        r.items().iter().map(|&i| position(u, i).unwrap()).collect();
                    assert_eq!(
                        got,
                        [at[k], at[k] + 1, at[k] + 2],
                        "user {u}: in order, no gaps"
                    );
                    at[k] += 3;
                    seen.lock().unwrap()[u as usize]
                        .acked
                        .push((Instant::now(), at[k]));
                }
            }
        }));
    }
    (threads, seen)
}

/// Runs clients for a while, kills the server with SIGKILL, restarts it and
/// checks every user's next position against what was acknowledged: never
/// before an acknowledged item (for `everysec`: acknowledged more than
/// `allowed_loss` before the kill), never past what was sent.
fn kill_under_load(policy: &str, allowed_loss: Duration) {
    let dir = TempDir::new(&format!("durable-kill-{policy}"));
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let s = start(&feeds, &state, &["--shards", "2", "--fsync", policy]);
    let stop = Arc::new(AtomicBool::new(false));
    let (threads, seen) = load(&s, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    kill9(s);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let seen = seen.lock().unwrap().clone();
    let total: usize = seen.iter().map(|s| s.acked.len()).sum();
    assert!(total > 100, "the load ran: {total} answers");

    let s = start(&feeds, &state, &["--shards", "2", "--fsync", policy]);
    for u in 1..=USERS {
        let acked = &seen[u as usize].acked;
        let last = acked.last().map_or(0, |a| a.1);
        let safe = acked
            .iter()
            .rev()
            .find(|(t, _)| *t + allowed_loss <= killed_at)
            .map_or(0, |a| a.1);
        let next = next_position(&s, u);
        assert!(
            next >= safe,
            "{policy}: user {u} resumed at {next}, lost acknowledged {safe}"
        );
        // At most the one request in flight was served and not acknowledged.
        assert!(
            next <= last + 3,
            "{policy}: user {u} resumed at {next}, past {last} + 3"
        );
        if allowed_loss.is_zero() {
            assert!(
                next >= last,
                "{policy}: user {u} resumed at {next}, acknowledged {last}"
            );
        }
    }
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged_with_always() {
    kill_under_load("always", Duration::ZERO);
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged_with_never() {
    kill_under_load("never", Duration::ZERO);
}

#[test]
fn kill_9_under_load_loses_at_most_a_second_with_everysec() {
    kill_under_load("everysec", Duration::from_secs(1));
}

/// A page answered while the server stops survives it, under every policy.
/// Each shard drains its own connections at a stop, but another shard's
/// connection may still forward it a page (here the shard of `user` has no
/// connection at all, so it drains at once): its journal must stay open
/// until every shard has drained, or that page's progress is lost.
#[test]
fn pages_answered_during_a_stop_survive_it() {
    let dir = TempDir::new("durable-stop");
    let feeds = feed_file(&dir);
    let user = 3;
    for policy in ["always", "everysec", "never"] {
        let state = dir.0.join(format!("state-{policy}"));
        let flags = ["--shards", "2", "--fsync", policy, "--no-move-connections"];
        let s = start(&feeds, &state, &flags);
        let mut c = s.connection_away_from(user, "");
        let first = c.get(&format!("/feed/{user}?size=5")).items();
        assert_eq!(first, (0..5).map(|i| item(user, i)).collect::<Vec<_>>());
        // Half a request in flight, then the stop, then the rest of it.
        c.send(format!("GET /feed/{user}?size=5 HTTP/1.1\r\n").as_bytes());
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        c.send(b"Host: test\r\n\r\n");
        let during = c.response();
        assert_eq!(during.status, 200, "{policy}: {}", during.body);
        assert_eq!(
            during.items(),
            (5..10).map(|i| item(user, i)).collect::<Vec<_>>(),
            "{policy}"
        );
        drop(c);
        let (status, _, _) = s.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{policy}: {status}");
        assert_eq!(
            position_after_restart(&feeds, &state, &["--shards", "2"], user),
            10,
            "{policy}: the page answered during the stop was forgotten"
        );
    }
}

/// A junk file named like a segment of the last generation there can be
/// is ignored, and does not decide this run's generation: the starts after
/// it go on (they used to refuse, having named their own files after it).
#[test]
fn a_junk_file_named_for_the_last_generation_does_not_stop_later_starts() {
    let dir = TempDir::new("durable-junk-generation");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let junk = state.join("journal-18446744073709551613-0000-0000000000.log");
    std::fs::write(junk, [0x5a; 600]).unwrap();
    for run in 0..3 {
        let next = position_after_restart(&feeds, &state, &["--shards", "2"], 7);
        assert_eq!(next, run, "start {run}");
    }
}

/// Junk after the valid records, and a journal cut in the middle of a
/// sector: the server starts, says what it dropped, and keeps everything
/// before the damage.
#[test]
fn damaged_journal_files_keep_the_valid_prefix() {
    let dir = TempDir::new("durable-damaged");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let s = start(&feeds, &state, &["--shards", "1", "--fsync", "always"]);
    for _ in 0..5 {
        s.get("/feed/7?size=2");
    }
    kill9(s);
    let segment = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("journal-"))
        .expect("a journal segment");
    // Garbage over the zeroed tail after the records.
    let mut bytes = std::fs::read(&segment).unwrap();
    let used = 512 * 8;
    for (i, b) in bytes[used..used + 4096].iter_mut().enumerate() {
        *b = (i * 131 + 7) as u8;
    }
    std::fs::write(&segment, &bytes).unwrap();
    let s = Server::start_with_stderr(
        &[
            "--feed",
            &feeds,
            "--state-dir",
            path_str(&state),
            "--shards",
            "1",
        ],
        Stdio::piped(),
    );
    assert_eq!(
        next_position(&s, 7),
        10,
        "all five pages survive the junk after them"
    );
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success());

    // A file cut in the middle of its last sector of records.
    let segment = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("journal-"))
        .max()
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    f.set_len(512 + 100).unwrap();
    let s = start(&feeds, &state, &["--shards", "1"]);
    let next = next_position(&s, 7);
    assert!(
        next == 10 || next == 11,
        "the cut record is dropped, not misread: {next}"
    );
    drop(s);
}

#[test]
fn a_state_dir_that_cannot_be_used_is_a_clear_error() {
    let dir = TempDir::new("durable-baddir");
    let feeds = feed_file(&dir);
    let file = dir.file("not-a-dir", "x");
    // `serve` on the feed with `flags`: its exit code and what it said.
    let refused = |flags: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--feed", &feeds];
        args.extend_from_slice(flags);
        let out = run(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = refused(&["--state-dir", path_str(&file)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not-a-dir") && err.contains("state"), "{err}");
    let (code, err) = refused(&["--fsync", "sometimes"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("always, everysec or never"), "{err}");
    // A LOCK that is a directory is named as what to remove.
    let locked = dir.0.join("lock-is-a-dir");
    std::fs::create_dir_all(locked.join("LOCK")).unwrap();
    let (code, err) = refused(&["--state-dir", path_str(&locked)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("its LOCK is a directory: remove it"), "{err}");
    // Junk in the directory is ignored and named.
    let state = dir.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("journal-zzz.log"), vec![0xab; 5000]).unwrap();
    std::fs::write(
        state.join("journal-00000001-0000-0000000000.log"),
        vec![0xcd; 5000],
    )
    .unwrap();
    let s = Server::start_with_stderr(
        &["--feed", &feeds, "--state-dir", path_str(&state)],
        Stdio::piped(),
    );
    assert_eq!(next_position(&s, 3), 0);
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success());
}

/// The journal's fields of one shard in `/stats`.
fn journal_stats(s: &Server, shard: usize) -> serde_json::Value {
    let stats: serde_json::Value = serde_json::from_str(&s.get("/stats").body).unwrap();
    stats["shards"][shard]["stats"]["journal"].clone()
}

/// Unmounts a test's tmpfs when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a 256 KiB tmpfs on `dir` (made here), too small for a journal
/// segment: a full disk. `None`, with a loud skip for `test`, where mounting
/// is not allowed.
fn small_tmpfs(dir: &Path, test: &str) -> Option<Unmount> {
    std::fs::create_dir_all(dir).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", path_str(dir)])
        .status();
    if !mount.is_ok_and(|s| s.success()) {
        skipped(
            test,
            "cannot mount a tmpfs (needs root; .ci/run runs as root)",
        );
        return None;
    }
    Some(Unmount(dir.to_path_buf()))
}

/// A disk that stays full is logged once per shard, not at every retry
/// (every 0.5 s), though each retry tries a new file.
#[test]
fn a_full_disk_is_logged_once_not_at_every_retry() {
    let dir = TempDir::new("durable-full-log");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let Some(_unmount) = small_tmpfs(&state, "a_full_disk_is_logged_once_not_at_every_retry")
    else {
        return;
    };
    let args = [
        "--feed",
        &feeds,
        "--state-dir",
        path_str(&state),
        "--shards",
        "2",
    ];
    let mut s = Server::start_with_stderr(&args, Stdio::piped());
    let mut stderr = s.child.stderr.take().unwrap();
    let _ = s.get("/feed/5?size=2");
    // Three retries or more per shard.
    std::thread::sleep(Duration::from_millis(2_000));
    for shard in 0..2 {
        assert!(journal_stats(&s, shard)["errors"].as_u64().unwrap() >= 3);
    }
    let (status, stdout, _) = s.terminate(Duration::from_secs(10));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    // A stop that could not sync fails, and still prints what was served.
    assert!(!status.success(), "{log}");
    assert!(log.contains("progress not synced at the stop"), "{log}");
    assert!(stdout.contains("p99 us"), "the summary: {stdout}");
    for shard in 0..2 {
        let lines = log
            .lines()
            .filter(|l| l.contains(&format!("degraded: journal (shard {shard})")))
            .count();
        assert_eq!(lines, 1, "shard {shard}:\n{log}");
    }
}

/// A full disk: pages are still served, the journal says it is degraded and
/// counts errors; given room again it recovers by itself, and the progress
/// made meanwhile survives a crash.
#[test]
fn a_full_disk_degrades_and_recovers_by_itself() {
    let dir = TempDir::new("durable-full");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let Some(_unmount) = small_tmpfs(&state, "a_full_disk_degrades_and_recovers_by_itself") else {
        return;
    };
    let s = start(&feeds, &state, &["--shards", "1", "--fsync", "always"]);
    for k in 0..20 {
        let page = s.get("/feed/5?size=2").items();
        assert_eq!(
            page,
            [item(5, 2 * k), item(5, 2 * k + 1)],
            "served while the disk is full"
        );
    }
    let j = journal_stats(&s, 0);
    assert!(j["errors"].as_u64().unwrap() > 0, "{j}");
    assert!(j["degraded"].is_string(), "{j}");
    let metrics = s.get("/metrics").body;
    assert!(
        metrics.contains("shardfeed_journal_degraded{shard=\"0\"} 1"),
        "{metrics}"
    );

    let grow = std::process::Command::new("mount")
        .args(["-o", "remount,size=128m", path_str(&state)])
        .status()
        .unwrap();
    assert!(grow.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journal_stats(&s, 0)["degraded"].is_null() {
        assert!(
            Instant::now() < deadline,
            "still degraded: {}",
            journal_stats(&s, 0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.get("/healthz").status != 200 {
        assert!(Instant::now() < deadline, "/healthz still not ok");
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = s.get("/feed/5?size=2").items();
    assert_eq!(page, [item(5, 40), item(5, 41)]);
    kill9(s);
    assert_eq!(
        position_after_restart(&feeds, &state, &["--shards", "1"], 5),
        42,
        "what was served on the full disk is kept too"
    );
}

/// A restart that finds a new feed: a user keeps their progress P only if
/// the first P items of their new list are the P items they were served.
#[test]
fn a_changed_feed_keeps_progress_only_over_the_same_items() {
    let dir = TempDir::new("durable-prefix");
    let state = dir.0.join("state");
    let old = dir.file("old.tsv", "1\t10,11,12,13\n2\t20,21,22,23\n3\t30,31\n");
    let new = dir.file("new.tsv", "1\t10,11,12,99,98\n2\t20,77,22,23\n4\t40\n");
    let args = |feed: &Path| {
        let state = path_str(&state).to_string();
        vec![
            "--feed".to_string(),
            path_str(feed).to_string(),
            "--state-dir".into(),
            state,
            "--fallback-size".into(),
            "1".into(),
        ]
    };
    let s = Server::start(&args(&old).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(s.get("/feed/1?size=3").items(), [10, 11, 12]);
    assert_eq!(s.get("/feed/2?size=3").items(), [20, 21, 22]);
    assert_eq!(s.get("/feed/3?size=1").items(), [30]);
    assert!(s.terminate(Duration::from_secs(10)).0.success());
    let s = Server::start_with_stderr(
        &args(&new).iter().map(String::as_str).collect::<Vec<_>>(),
        Stdio::piped(),
    );
    assert_eq!(
        s.get("/feed/1?size=2").items(),
        [99, 98],
        "same first three: continues"
    );
    assert_eq!(
        s.get("/feed/2?size=2").items(),
        [20, 77],
        "changed under the served items: from the start"
    );
    assert_eq!(s.get("/feed/4?size=1").items(), [40]);
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success());
}

/// A page that waits for its record under `always` is still a local page in
/// `/stats` (only pages from another shard count as forwarded), and a
/// forwarded page waits for its owner's journal like a local one: every
/// answer survives a crash.
#[test]
fn pages_that_wait_for_the_journal_count_as_local() {
    let dir = TempDir::new("durable-routes");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let args = [
        "--shards",
        "2",
        "--fsync",
        "always",
        "--no-move-connections",
    ];
    let s = start(&feeds, &state, &args);
    let mut c = Client::connect(s.addr);
    for u in 1..=USERS {
        c.send(get(&format!("/feed/{u}?size=2")).as_bytes());
        assert_eq!(c.response().status, 200);
    }
    let stats: serde_json::Value = serde_json::from_str(&s.get("/stats").body).unwrap();
    let count = |which: &str| stats["all"][which]["count"].as_u64().unwrap();
    let (local, forwarded) = (count("local_latency_us"), count("forwarded_latency_us"));
    assert_eq!(local + forwarded, USERS as u64, "{stats}");
    // One connection on one shard: about half of the users are the other's.
    assert!(
        local > 0 && forwarded > 0,
        "local {local}, forwarded {forwarded}"
    );
    let forwarded_in: u64 = (0..2)
        .map(|i| {
            stats["shards"][i]["stats"]["forwarded_in"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(forwarded, forwarded_in, "{stats}");
    kill9(s);
    let s = start(&feeds, &state, &args);
    for u in 1..=USERS {
        assert_eq!(next_position(&s, u), 2, "user {u}: both items acknowledged");
    }
    let (status, _, _) = s.terminate(Duration::from_secs(10));
    assert!(status.success());
}

/// The start says how many users continue: those who were served
/// something, not every user of the checkpoint.
#[test]
fn the_start_counts_only_users_who_were_served() {
    let dir = TempDir::new("durable-count");
    let feeds = feed_file(&dir);
    let state = dir.0.join("state");
    let s = start(&feeds, &state, &[]);
    for u in [3, 4] {
        assert_eq!(s.get(&format!("/feed/{u}?size=2")).items().len(), 2);
    }
    assert!(s.terminate(Duration::from_secs(10)).0.success());
    // A start on inherited state checkpoints every user at once.
    let s = start(&feeds, &state, &[]);
    let t = Instant::now();
    while !std::fs::read_dir(&state).unwrap().any(|e| {
        let name = e.unwrap().file_name();
        name.to_str().unwrap().ends_with(".ckpt")
    }) {
        assert!(t.elapsed() < Duration::from_secs(10), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.terminate(Duration::from_secs(10)).0.success());
    let args = ["--feed", &feeds, "--state-dir", path_str(&state)];
    let mut s = Server::start_with_stderr(&args, Stdio::piped());
    let mut stderr = s.child.stderr.take().unwrap();
    assert!(s.terminate(Duration::from_secs(10)).0.success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("progress restored: 2 users continue"), "{log}");
}
