//! `SIGHUP` reloads the feeds (SPEC "Feed versions"): the real binary, a
//! pipeline's rename-then-signal, the prefix rule, a failed reload, and
//! reloads under concurrent load.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{get_from, path_str, Client, Spawned, TempDir};

const LIMIT: Duration = Duration::from_secs(30);

/// Writes `text` beside `path`, then renames it over `path`: what a
/// pipeline does before it signals.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tsv(users: &[(u32, Vec<u32>)]) -> String {
    let mut out = String::new();
    for (user, items) in users {
        let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        out.push_str(&format!("{user}\t{}\n", items.join(",")));
    }
    out
}

fn lines(items: impl IntoIterator<Item = u32>) -> String {
    items.into_iter().map(|i| format!("{i}\n")).collect()
}

struct Fixture {
    _dir: TempDir,
    feed: PathBuf,
    pool: PathBuf,
    server: Spawned,
    addr: SocketAddr,
}

impl Fixture {
    fn start(name: &str, feed: &str, pool: &str, extra: &[&str]) -> Fixture {
        let dir = TempDir::new(name);
        let feed_path = dir.file("feed.tsv", feed);
        let pool_path = dir.file("pool.txt", pool);
        let mut args = vec!["--listen", "127.0.0.1:0", "--shards", "2"];
        args.extend([
            "--feed",
            path_str(&feed_path),
            "--fallback",
            path_str(&pool_path),
        ]);
        args.extend_from_slice(extra);
        let mut server = Spawned::serve(&args);
        let addr = server.listening();
        Fixture {
            _dir: dir,
            feed: feed_path,
            pool: pool_path,
            server,
            addr,
        }
    }

    /// Stops the server cleanly; the directory and its feed and pool stay,
    /// for a restart.
    fn stop(mut self) -> (TempDir, PathBuf, PathBuf) {
        self.server.stop(LIMIT);
        (self._dir, self.feed, self.pool)
    }

    fn page(&self, user: u32, size: usize) -> Vec<u32> {
        let r = get_from(self.addr, &format!("/feed/{user}?size={size}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.items()
    }

    /// Signals a reload and waits for its `n`th outcome line (`reload:
    /// version` or `reload failed`).
    fn reload(&self, n: usize) -> String {
        self.server.signal(libc::SIGHUP);
        let started = std::time::Instant::now();
        loop {
            let log = self.server.stderr();
            let outcomes: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("reload: version") || l.contains("reload failed"))
                .collect();
            if outcomes.len() >= n {
                return outcomes[n - 1].to_string();
            }
            assert!(started.elapsed() < LIMIT, "no reload outcome: {log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn version(&self) -> String {
        let stats: serde_json::Value =
            serde_json::from_str(&get_from(self.addr, "/stats").body).unwrap();
        stats["feed"]["version"].as_str().unwrap().to_string()
    }

    /// A per-shard counter summed over the shards.
    fn total(&self, name: &str) -> u64 {
        let text = get_from(self.addr, "/metrics").body;
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    fn reloads(&self) -> (u64, u64) {
        let text = get_from(self.addr, "/metrics").body;
        let value = |result: &str| {
            let name = format!("shardfeed_reloads_total{{result=\"{result}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&name)).expect(&name);
            line[name.len()..].parse().unwrap()
        };
        (value("ok"), value("failed"))
    }
}

#[test]
fn a_reload_serves_the_new_version_by_the_prefix_rule() {
    let v1 = [
        (1, vec![101, 102, 103, 104]),
        (2, vec![201, 202, 203, 204]),
        (3, vec![301, 302]),
        (4, vec![401, 402, 403]),
        (5, vec![501, 502]),
    ];
    let f = Fixture::start("reload-rule", &tsv(&v1), &lines(900_001..=900_005), &[]);
    assert_eq!(f.page(1, 2), [101, 102]);
    assert_eq!(f.page(2, 2), [201, 202]);
    assert_eq!(f.page(3, 1), [301]);
    assert_eq!(f.page(4, 2), [401, 402]);
    let before = f.version();
    let served_before = f.total("shardfeed_personalized_items_total");
    assert_eq!(served_before, 7);

    let v2 = [
        (1, vec![101, 102, 103, 104, 105]), // appended: kept
        (2, vec![201, 299, 202, 203]),      // changed under what was served: again
        (4, vec![401, 402, 403]),           // unchanged: kept
        (5, vec![501, 502, 503]),           // never served
        (6, vec![601]),                     // new
    ]; // user 3 removed
    replace(&f.feed, &tsv(&v2));
    replace(&f.pool, &lines(800_001..=800_005));
    let line = f.reload(1);
    assert!(
        line.contains("1 start their new list again") && line.contains("1 not in it any more"),
        "{line}"
    );
    assert!(line.contains("2 kept it"), "{line}");

    assert_ne!(f.version(), before, "a new version id");
    assert_eq!(
        f.total("shardfeed_personalized_items_total"),
        served_before,
        "counters go on across a reload (a fall to 0 reads as a restart)"
    );
    assert_eq!(f.page(1, 3), [103, 104, 105]);
    assert_eq!(f.page(2, 2), [201, 299]);
    // Removed: unknown, fallback items of the new pool only.
    let gone = f.page(3, 2);
    assert!(
        gone.iter().all(|i| (800_001..=800_005).contains(i)),
        "{gone:?}"
    );
    assert_eq!(f.page(4, 1), [403]);
    assert_eq!(f.page(5, 3), [501, 502, 503]);
    assert_eq!(f.page(6, 1), [601]);
    // The new pool tops pages up.
    let topped = f.page(6, 2);
    assert!(
        topped.iter().all(|i| (800_001..=800_005).contains(i)),
        "{topped:?}"
    );
    assert_eq!(f.reloads(), (1, 0));
}

#[test]
fn a_feed_that_does_not_load_leaves_the_old_version_serving() {
    let v1 = [(1, vec![11, 12, 13, 14]), (2, vec![21, 22])];
    let f = Fixture::start("reload-failed", &tsv(&v1), &lines([90, 91]), &[]);
    assert_eq!(f.page(1, 1), [11]);
    let version = f.version();

    replace(&f.feed, "1\t11,12\n2\tnot-a-number\n");
    let line = f.reload(1);
    assert!(
        line.contains("keeps serving") && line.contains("feed.tsv:2"),
        "{line}"
    );
    assert_eq!(f.reloads(), (0, 1));
    assert_eq!(f.version(), version);
    assert_eq!(f.page(1, 1), [12], "progress and version untouched");

    // A pool file that went missing fails the reload just the same.
    replace(&f.feed, &tsv(&v1));
    std::fs::remove_file(&f.pool).unwrap();
    let line = f.reload(2);
    assert!(line.contains("reload failed"), "{line}");
    assert_eq!(f.page(1, 1), [13]);

    // Once the files are right again, the next signal goes through.
    replace(&f.pool, &lines([95]));
    let line = f.reload(3);
    assert!(line.contains("reload: version"), "{line}");
    assert_eq!(f.reloads(), (1, 2));
    assert_eq!(f.page(1, 2), [14, 95], "the same feed keeps progress");
}

#[test]
fn the_same_file_reloaded_keeps_everyone_where_they_were() {
    let users: Vec<(u32, Vec<u32>)> = (1..=200)
        .map(|u| (u, (0..20).map(|i| u * 100 + i).collect()))
        .collect();
    let f = Fixture::start("reload-same", &tsv(&users), &lines([7]), &[]);
    for u in 1..=200 {
        assert_eq!(f.page(u, (u % 5) as usize + 1).len(), (u % 5) as usize + 1);
    }
    let version = f.version();
    let line = f.reload(1);
    assert!(line.contains("200 kept it"), "{line}");
    assert_eq!(f.version(), version, "the same file, the same version");
    for u in 1..=200 {
        let next = u * 100 + u % 5 + 1;
        assert_eq!(f.page(u, 1), [next], "user {u}");
    }
}

/// Kept and reset progress survive a restart after the reload: the journal
/// holds the old version's records and the prefix hash decides again.
#[test]
fn reloaded_progress_survives_a_restart() {
    let state = TempDir::new("reload-state");
    let state_dir = path_str(&state.0).to_string();
    let v1 = [(1, vec![11, 12, 13, 14]), (2, vec![21, 22, 23])];
    let f = Fixture::start(
        "reload-restart",
        &tsv(&v1),
        &lines([90]),
        &["--state-dir", &state_dir],
    );
    assert_eq!(f.page(1, 2), [11, 12]);
    assert_eq!(f.page(2, 2), [21, 22]);
    let v2 = [(1, vec![11, 12, 13, 14, 15]), (2, vec![29, 21, 22, 23])];
    replace(&f.feed, &tsv(&v2));
    f.reload(1);
    assert_eq!(f.page(1, 1), [13]);
    let (_dir, feed, pool) = f.stop();

    let mut server = Spawned::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--feed",
        path_str(&feed),
        "--fallback",
        path_str(&pool),
        "--state-dir",
        &state_dir,
    ]);
    let addr = server.listening();
    assert_eq!(get_from(addr, "/feed/1?size=2").items(), [14, 15]);
    assert_eq!(get_from(addr, "/feed/2?size=2").items(), [29, 21]);
    server.stop(LIMIT);
}

/// Under concurrent load on both shards, a reload fails no request, no page
/// mixes versions, and each version's items reach each user exactly once
/// and in order.
#[test]
fn reloads_under_load_fail_nothing_and_mix_no_versions() {
    const USERS: u32 = 400;
    const LEN: u32 = 60;
    const NEW: u32 = 50_000_000;
    let version = |base: u32| -> Vec<(u32, Vec<u32>)> {
        (1..=USERS)
            .map(|u| (u, (0..LEN).map(|i| base + u * 1000 + i).collect()))
            .collect()
    };
    let f = Fixture::start(
        "reload-load",
        &tsv(&version(0)),
        &lines(40_000_000..40_000_020),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let stop = stop.clone();
            let addr = f.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut pages = Vec::new();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let user = 1 + (n * 7 + w * 13) % USERS;
                    n += 1;
                    let r = c.get(&format!("/feed/{user}?size=3"));
                    assert_eq!(r.status, 200, "{}", r.body);
                    pages.push((user, r.items()));
                }
                pages
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    replace(&f.feed, &tsv(&version(NEW)));
    replace(&f.pool, &lines(60_000_000..60_000_020));
    f.reload(1);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let mut served: HashMap<(u32, bool), Vec<u32>> = HashMap::new();
    let (mut old_pages, mut new_pages) = (0, 0);
    for w in workers {
        for (user, page) in w.join().unwrap() {
            let new = page[0] >= NEW;
            assert!(
                page.iter().all(|&i| (i >= NEW) == new),
                "user {user}: a page mixes versions: {page:?}"
            );
            if new {
                new_pages += 1;
            } else {
                old_pages += 1;
            }
            let list = served.entry((user, new)).or_default();
            let personal = if new {
                NEW..NEW + 1_000_000
            } else {
                0..1_000_000
            };
            list.extend(page.iter().filter(|i| personal.contains(*i)));
        }
    }
    assert!(
        old_pages > 0 && new_pages > 0,
        "{old_pages} old, {new_pages} new"
    );
    for ((user, new), mut items) in served {
        let base = if new { NEW } else { 0 };
        items.sort_unstable();
        let expected: Vec<u32> = (0..items.len() as u32)
            .map(|i| base + user * 1000 + i)
            .collect();
        assert_eq!(
            items, expected,
            "user {user} (new: {new}): not each item once from the start"
        );
    }
    // After the reload line, only the new version serves.
    for u in [1, USERS / 2, USERS] {
        assert!(f.page(u, 3).iter().all(|&i| i >= NEW));
    }
}

/// A cursor of the version before a reload is ignored after it (served as
/// without one); the new version's cursors work.
#[test]
fn a_cursor_of_the_old_version_is_ignored_after_a_reload() {
    let v1 = [(1, vec![11, 12, 13, 14, 15])];
    let f = Fixture::start("reload-cursor", &tsv(&v1), &lines([90, 91]), &[]);
    let first = get_from(f.addr, "/feed/1?size=2");
    assert_eq!(first.items(), [11, 12]);
    let old = first.header("feed-cursor").expect("a cursor").to_string();
    let v2 = [(1, vec![21, 22, 23, 24, 25])];
    replace(&f.feed, &tsv(&v2));
    f.reload(1);
    // Changed under what was served: user 1 starts the new list; the old
    // token names a place in the old list and counts for nothing.
    let r = get_from(f.addr, &format!("/feed/1?size=2&cursor={old}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.items(), [21, 22]);
    let new = r.header("feed-cursor").expect("a cursor").to_string();
    assert_ne!(new, old);
    assert_eq!(f.page(1, 1), [23]);
    // A retry with the new version's token gets the same page again.
    let again = get_from(f.addr, &format!("/feed/1?size=2&cursor={new}"));
    assert_eq!(again.items(), [23, 24]);
    let again = get_from(f.addr, &format!("/feed/1?size=2&cursor={new}"));
    assert_eq!(again.items(), [23, 24]);
}

/// The mapped snapshot of the old version: kept intact while it serves
/// (the new file was renamed over it), unmapped once a reload replaced it.
#[test]
fn a_reload_unmaps_the_snapshot_it_replaced() {
    let dir = TempDir::new("reload-snapshot");
    let v1: Vec<(u32, Vec<u32>)> = (1..=200)
        .map(|u| (u, (0..20).map(|i| u * 100 + i).collect()))
        .collect();
    let v2: Vec<(u32, Vec<u32>)> = (1..=200)
        .map(|u| (u, (0..20).map(|i| u * 1000 + i).collect()))
        .collect();
    let snap = dir.0.join("feed.snap");
    let pack = |users: &[(u32, Vec<u32>)], name: &str| {
        let tsv_path = dir.file(name, &tsv(users));
        common::pack(&tsv_path, &snap, &[]);
    };
    pack(&v1, "v1.tsv");
    let pool = dir.file("pool.txt", &lines([7]));
    let mut server = Spawned::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--feed",
        path_str(&snap),
        "--fallback",
        path_str(&pool),
    ]);
    let addr = server.listening();
    let maps = || {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", server.child.id())).unwrap();
        let name = path_str(&snap).to_string();
        let mapped = text.lines().filter(|l| l.ends_with(&name)).count();
        let old = text
            .lines()
            .filter(|l| l.ends_with(&format!("{name} (deleted)")))
            .count();
        (mapped, old)
    };
    // Counted as VMAs: the kernel merges two shards' mappings that happen to
    // lie next to each other (in memory and in the file) into one, so "at
    // least one" is all a count can say.
    let (mapped, old) = maps();
    assert!(
        mapped >= 1 && old == 0,
        "the shards map the file: {:?}",
        (mapped, old)
    );
    let page = |user: u32| get_from(addr, &format!("/feed/{user}?size=2")).items();
    assert_eq!(page(5), [500, 501]);
    // A new snapshot renamed over the old one: the old keeps serving.
    pack(&v2, "v2.tsv");
    let (mapped, old) = maps();
    assert!(
        mapped == 0 && old >= 1,
        "the old inode stays mapped: {:?}",
        (mapped, old)
    );
    assert_eq!(page(5), [502, 503]);
    server.signal(libc::SIGHUP);
    let started = std::time::Instant::now();
    while !server.stderr().contains("reload: version") {
        assert!(started.elapsed() < LIMIT, "no reload: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Each shard drops the old store after its last request on it.
    while !matches!(maps(), (mapped, 0) if mapped >= 1) {
        let _ = page(6);
        assert!(started.elapsed() < LIMIT, "still mapped: {:?}", maps());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(page(5), [5000, 5001], "a new list: from its beginning");
    server.signal(libc::SIGTERM);
    server.wait_exit(LIMIT);
}

/// A user whose list changed at a reload starts again, and the journal
/// says so: a restart on the old feed (a rollback) does not bring back
/// the progress the reload dropped.
#[test]
fn a_reset_at_a_reload_is_journaled() {
    let state = TempDir::new("reload-reset-state");
    let state_dir = path_str(&state.0).to_string();
    let v1 = tsv(&[(1, vec![11, 12, 13, 14]), (2, vec![21, 22, 23])]);
    let f = Fixture::start(
        "reload-reset",
        &v1,
        &lines([90]),
        &["--state-dir", &state_dir, "--fsync", "always"],
    );
    assert_eq!(f.page(1, 2), [11, 12]);
    assert_eq!(f.page(2, 1), [21]);
    replace(
        &f.feed,
        &tsv(&[(1, vec![19, 11, 12]), (2, vec![21, 22, 23])]),
    );
    f.reload(1);
    let (_dir, feed, pool) = f.stop();

    replace(&feed, &v1);
    let mut server = Spawned::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--feed",
        path_str(&feed),
        "--fallback",
        path_str(&pool),
        "--state-dir",
        &state_dir,
    ]);
    let addr = server.listening();
    assert_eq!(
        get_from(addr, "/feed/1?size=1").items(),
        [11],
        "reset stays reset"
    );
    assert_eq!(
        get_from(addr, "/feed/2?size=1").items(),
        [22],
        "kept stays kept"
    );
    server.stop(LIMIT);
}

/// A server started with a relative `--state-dir` keeps its progress there.
#[test]
fn a_relative_state_dir_works() {
    let dir = TempDir::new("relative-state");
    let (feeds, pool) = common::known_files(&dir);
    let start = || {
        let mut s = Spawned::command(
            std::process::Command::new(common::BIN)
                .current_dir(&dir.0)
                .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
                .args(["--feed", path_str(&feeds), "--fallback", path_str(&pool)])
                .args(["--state-dir", "state"]),
        );
        let addr = s.listening();
        (s, addr)
    };
    let (mut s, addr) = start();
    assert_eq!(get_from(addr, "/feed/1?size=2").items(), [1000, 1001]);
    s.stop(LIMIT);
    assert!(dir.0.join("state").join("LOCK").exists());
    let (mut s, addr) = start();
    assert_eq!(get_from(addr, "/feed/1?size=1").items(), [1002]);
    s.stop(LIMIT);
}

/// A SIGHUP during a stop (here the `--drain` wait) loads nothing: the new
/// version would be dropped at once, after holding twice the memory.
#[test]
fn a_sighup_while_stopping_is_ignored() {
    let v1 = [(1, vec![11, 12, 13])];
    let mut f = Fixture::start(
        "reload-stopping",
        &tsv(&v1),
        &lines([90]),
        &["--drain", "2s"],
    );
    assert_eq!(f.page(1, 1), [11]);
    replace(&f.feed, &tsv(&[(1, vec![31, 32])]));
    f.server.signal(libc::SIGTERM);
    f.server.wait_stderr("draining for 2s", LIMIT);
    f.server.signal(libc::SIGHUP);
    let log = f
        .server
        .wait_stderr("SIGHUP while stopping: ignored", LIMIT);
    let (status, _, _) = f.server.wait_exit(LIMIT);
    assert!(status.success(), "{log}");
    let log = f.server.stderr();
    assert!(
        !log.contains("reload: version") && !log.contains("reload failed"),
        "{log}"
    );
}
