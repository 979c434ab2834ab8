//! Feed inputs (issue 11): formats told by content, the loader's refusals
//! (each naming the file and the place), the start line, and the version
//! in `/stats` and `/metrics`.

mod common;

use common::*;

fn serve(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--shards", "1"];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn bad_inputs_fail_with_file_and_place() {
    let dir = TempDir::new("feeds-bad");
    let empty = dir.file("empty.tsv", "");
    common::fails_with(
        serve(&["--feed", path_str(&empty)]),
        &["empty.tsv", "holds no users"],
    );
    let comments = dir.file("comments.tsv", "# nothing\n\n");
    common::fails_with(
        serve(&["--feed", path_str(&comments)]),
        &["comments.tsv", "holds no users"],
    );
    let no_items = dir.file("noitems.tsv", "1\t\n2\t\n");
    common::fails_with(
        serve(&["--feed", path_str(&no_items)]),
        &["noitems.tsv", "every page would be empty"],
    );
    let gz = dir.0.join("feeds.tsv");
    std::fs::write(&gz, b"\x1f\x8b\x08\x00\x00\x00\x00\x00junk").unwrap();
    common::fails_with(
        serve(&["--feed", path_str(&gz)]),
        &["feeds.tsv", "gzip-compressed", "gunzip"],
    );
    let zst = dir.0.join("feeds.zst");
    std::fs::write(&zst, b"\x28\xb5\x2f\xfdjunk").unwrap();
    common::fails_with(serve(&["--feed", path_str(&zst)]), &["zstd-compressed"]);
    let binary = dir.0.join("bin");
    std::fs::write(&binary, b"\x7fELF\x02\x01\x01\x00").unwrap();
    common::fails_with(serve(&["--feed", path_str(&binary)]), &["binary data"]);
    // Random bytes whose first 8 hold no NUL were read as TSV ("no tab on
    // this line"): a pseudo-random kilobyte without any NUL at all.
    let noise: Vec<u8> = (1..=1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .collect();
    let random = dir.0.join("random.bin");
    std::fs::write(&random, &noise).unwrap();
    common::fails_with(serve(&["--feed", path_str(&random)]), &["binary data"]);
    common::fails_with(
        serve(&["--feed", path_str(&dir.0)]),
        &["is a directory", "regular file"],
    );
    // A BOM is accepted at the start; elsewhere a stray byte is shown escaped.
    let stray = dir.0.join("stray.tsv");
    std::fs::write(&stray, "1\t1\n\u{feff}2\t3\n").unwrap();
    common::fails_with(
        serve(&["--feed", path_str(&stray)]),
        &["stray.tsv:2: user id: `\\xef\\xbb\\xbf2` is not a decimal number"],
    );
}

#[test]
fn a_pipe_is_refused_with_a_reason() {
    let out = run_in_shell(
        "printf '1\\t5,6\\n' |",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--feed",
            "/dev/stdin",
        ],
    );
    common::fails_with(out, &["/dev/stdin", "not a regular file", "pipe"]);
}

/// A named pipe nobody writes to, as the feed, the pool or `pack`'s input:
/// refused at once (opening it would block until a writer came).
#[test]
fn a_named_pipe_without_a_writer_is_refused_not_waited_for() {
    let dir = TempDir::new("fifo");
    let fifo = dir.0.join("feed.fifo");
    let c = std::ffi::CString::new(path_str(&fifo)).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (feeds, _) = common::known_files(&dir);
    common::fails_with(
        serve(&["--feed", path_str(&fifo)]),
        &["feed.fifo", "not a regular file"],
    );
    common::fails_with(
        serve(&["--feed", path_str(&feeds), "--fallback", path_str(&fifo)]),
        &["feed.fifo", "not a regular file"],
    );
    let out = common::run(&[
        "pack",
        path_str(&fifo),
        "-o",
        path_str(&dir.0.join("x.snap")),
    ]);
    common::fails_with(out, &["feed.fifo", "not a regular file"]);
}

/// `pack X -o X` (or through another path to the same file) would replace
/// the feed with its snapshot: refused, the feed untouched.
#[test]
fn pack_refuses_to_write_over_its_input() {
    let dir = TempDir::new("pack-self");
    let (feeds, _) = common::known_files(&dir);
    let before = std::fs::read(&feeds).unwrap();
    let other_path = dir.0.join(".").join("feeds.tsv");
    for out in [path_str(&feeds), path_str(&other_path)] {
        common::fails_with(
            common::run(&["pack", path_str(&feeds), "-o", out]),
            &["is the input file itself"],
        );
    }
    assert_eq!(std::fs::read(&feeds).unwrap(), before);
}

#[test]
fn synthetic_flags_that_mean_nothing_or_too_much() {
    common::fails_with(serve(&["--users", "0"]), &["--users must be at least 1"]);
    common::fails_with(
        serve(&["--feed-len", "0"]),
        &["--feed-len must be at least 1"],
    );
    common::fails_with(
        serve(&["--users", "200000000"]),
        &[
            "200000000 synthetic users x 200 items needs about",
            "lower --users",
        ],
    );
    let dir = TempDir::new("feeds-flags");
    let (feeds, _) = known_files(&dir);
    common::fails_with(
        serve(&["--feed", path_str(&feeds), "--users", "5", "--seed", "1"]),
        &["--users, --seed describe the synthetic feeds, which --feed replaces"],
    );
}

#[test]
fn a_bom_is_ignored_and_the_start_line_and_version_show() {
    let dir = TempDir::new("feeds-bom");
    let path = dir.0.join("bom.tsv");
    std::fs::write(&path, "\u{feff}1\t5,6,7\n2\t8\n").unwrap();
    let mut s = Spawned::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--feed",
        path_str(&path),
    ]);
    let addr = s.listening();
    let line = s.wait_stderr("loaded in", std::time::Duration::from_secs(10));
    assert!(line.contains("(TSV)"), "{line}");
    assert!(line.contains("2 users, 4 items, pool 4 items"), "{line}");
    let version = line
        .split("version ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(version.len(), 16, "{line}");
    assert_eq!(
        request(addr, "GET /feed/1?size=3 HTTP/1.1\r\nHost: x\r\n\r\n").items(),
        [5, 6, 7]
    );
    let stats = request(addr, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let json: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(json["feed"]["version"], version.as_str());
    assert_eq!(json["feed"]["users"], 2);
    assert_eq!(json["feed"]["items"], 4);
    let metrics = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body;
    assert!(
        metrics.contains(&format!("shardfeed_feed_info{{version=\"{version}\"}} 1")),
        "{metrics}"
    );
    s.signal(libc::SIGTERM);
    s.wait_exit(std::time::Duration::from_secs(10));
}

#[test]
fn a_snapshot_serves_the_same_pages_as_its_tsv() {
    let dir = TempDir::new("feeds-pack");
    let (feeds, pool) = known_files(&dir);
    let snap = dir.0.join("feeds.snap");
    let said = common::pack(&feeds, &snap, &[]);
    assert!(
        said.contains("40 users") && said.contains("2 shards"),
        "{said}"
    );
    assert!(!dir.0.join("feeds.snap.tmp").exists());
    let serve = |feed: &std::path::Path, shards: &str| {
        let s = Server::start(&[
            "--shards",
            shards,
            "--feed",
            path_str(feed),
            "--fallback",
            path_str(&pool),
        ]);
        let pages = common::all_pages(s.addr);
        let stats: serde_json::Value = serde_json::from_str(&s.get("/stats").body).unwrap();
        (pages, stats["feed"].clone())
    };
    let (tsv, tsv_feed) = serve(&feeds, "2");
    for u in 1..=USERS {
        assert_eq!(tsv[u as usize - 1][..feed_len(u) as usize], feed_of(u)[..]);
    }
    // The same shard count (each shard reads its section) and another one.
    // (The pool rotates per shard: compare at the same shard count.)
    for shards in ["2", "1"] {
        let (pages, feed) = serve(&snap, shards);
        let (tsv, _) = serve(&feeds, shards);
        assert_eq!(pages, tsv, "--shards {shards}");
        assert_eq!(feed, tsv_feed, "the snapshot keeps the file's version");
    }
    // A damaged snapshot fails the start, naming the file.
    let mut bytes = std::fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    let bad = dir.0.join("damaged.snap");
    std::fs::write(&bad, &bytes).unwrap();
    common::fails_with(
        serve_args(&["--feed", path_str(&bad)]),
        &["damaged.snap", "checksum mismatch"],
    );
    // Never renamed over a device.
    let out = run(&["pack", path_str(&feeds), "-o", "/dev/null"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a regular file"));
    assert!(!std::path::Path::new("/dev/null.tmp").exists());
    // Packing refuses what loading refuses.
    let empty = dir.file("empty.tsv", "# none\n");
    let out = run(&["pack", path_str(&empty), "-o", path_str(&snap)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no users"));
}

/// A cluster member places users by the cluster file, not as `pack
/// --shards` did: from a snapshot it serves its own users their feeds
/// (none of them unknown because the section it read was another
/// partition's) and nobody else personalized items, as from the TSV.
#[test]
fn a_snapshot_serves_a_cluster_member_its_own_users() {
    let dir = TempDir::new("feeds-cluster-snap");
    let (feeds, pool) = known_files(&dir);
    let snap = dir.0.join("feeds.snap");
    common::pack(&feeds, &snap, &[]);
    let (pa, pb) = (free_ports(2), free_ports(2));
    let text = format!("a 127.0.0.1:{pa} 2\nb 127.0.0.1:{pb} 2\n");
    let cluster = dir.file("cluster.txt", &text);
    let owner = shardfeed::cluster::Cluster::parse(&text).unwrap();
    let mine: Vec<u32> = (1..=USERS)
        .filter(|&u| owner.owner(u).instance == 0)
        .collect();
    assert!(!mine.is_empty() && mine.len() < USERS as usize);
    let serve = |feed: &std::path::Path| {
        let mut s = Spawned::serve(&[
            "--cluster",
            path_str(&cluster),
            "--instance",
            "a",
            "--feed",
            path_str(feed),
            "--fallback",
            path_str(&pool),
            "--no-pin",
        ]);
        let addr = s.listening();
        // Personalized items only: which shard tops a page up with the
        // pool depends on which shard accepted the connection.
        let pages: Vec<Vec<u32>> = common::all_pages(addr)
            .into_iter()
            .map(|p| p.into_iter().filter(|i| !POOL.contains(i)).collect())
            .collect();
        let stats: serde_json::Value =
            serde_json::from_str(&get_from(addr, "/stats").body).unwrap();
        s.signal(libc::SIGTERM);
        s.wait_exit(std::time::Duration::from_secs(10));
        (pages, stats["feed"]["users"].as_u64().unwrap())
    };
    for feed in [&feeds, &snap] {
        let (pages, users) = serve(feed);
        assert_eq!(users, mine.len() as u64, "{feed:?}");
        for u in 1..=USERS {
            let want = match mine.contains(&u) {
                true => feed_of(u).into_iter().take(75).collect(),
                false => Vec::new(),
            };
            assert_eq!(pages[u as usize - 1], want, "user {u} from {feed:?}");
        }
    }
}

fn serve_args(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--shards", "2"];
    args.extend_from_slice(extra);
    run(&args)
}
