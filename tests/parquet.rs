//! Parquet feeds (issue 11, SPEC "Feed versions"): files written by pyarrow
//! in the test serve the same pages as the same feeds in TSV and as a
//! snapshot packed from the Parquet file; every bad file fails the start
//! with a message naming the file, the place and the column. Needs python3
//! with pyarrow (`scripts/test` installs it); skipped loudly without.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Writes a Parquet file from a JSON spec: `rows` ([user, [items] or
/// null]), `user_type`/`item_type` (pyarrow type names), `compression`,
/// `row_group_size`, `user_name`/`items_name`, `items_plain` (items as one
/// integer per row), `user_strings`/`item_strings` (wrong types).
const WRITER: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
spec = json.loads(sys.argv[1])
rows = spec["rows"]
utype = pa.string() if spec.get("user_strings") else getattr(pa, spec.get("user_type", "uint32"))()
users = pa.array([None if r[0] is None else (str(r[0]) if spec.get("user_strings") else r[0]) for r in rows], utype)
if spec.get("items_plain"):
    items = pa.array([r[1][0] if r[1] else 0 for r in rows], getattr(pa, spec.get("item_type", "int64"))())
elif spec.get("item_strings"):
    items = pa.array([None if r[1] is None else [str(i) for i in r[1]] for r in rows], pa.list_(pa.string()))
else:
    items = pa.array([r[1] for r in rows], pa.list_(getattr(pa, spec.get("item_type", "uint32"))()))
cols = {
    "extra": pa.array(["u%s" % r[0] for r in rows]),
    spec.get("user_name", "user_id"): users,
    spec.get("items_name", "items"): items,
}
pq.write_table(pa.table(cols), spec["path"], compression=spec.get("compression", "snappy"),
               row_group_size=spec.get("row_group_size", 1 << 20))
"#;

/// Whether pyarrow can be used; says SKIPPED (or fails where components
/// are required) otherwise.
fn have_pyarrow(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pyarrow.parquet"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skipped(
            test,
            "python3 with pyarrow is not installed (pip install pyarrow)",
        );
    }
    ok
}

/// Writes `dir/name` from `spec` (see [`WRITER`]); its path.
fn write(dir: &TempDir, name: &str, mut spec: Value) -> PathBuf {
    let path = dir.0.join(name);
    spec["path"] = json!(path_str(&path));
    let out = Command::new("python3")
        .args(["-c", WRITER, &spec.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// The known test feeds as rows; `null_empty`: users without items have
/// a null list instead of an empty one.
fn known_rows(null_empty: bool) -> Value {
    let rows: Vec<Value> = (1..=USERS)
        .map(|u| {
            let items = feed_of(u);
            if items.is_empty() && null_empty {
                json!([u, null])
            } else {
                json!([u, items])
            }
        })
        .collect();
    json!(rows)
}

/// Pages and the start line of a 2-shard server on `feed`.
fn serve_pages(feed: &Path, pool: &Path, extra: &[&str]) -> (Vec<Vec<u32>>, String) {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--feed",
        path_str(feed),
        "--fallback",
        path_str(pool),
    ];
    args.extend_from_slice(extra);
    let mut s = Spawned::serve(&args);
    let addr = s.listening();
    let line = s.wait_stderr("loaded in", Duration::from_secs(10));
    let pages = common::all_pages(addr);
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10));
    (pages, line)
}

#[test]
fn parquet_serves_the_same_pages_as_tsv_and_its_snapshot() {
    if !have_pyarrow("parquet_serves_the_same_pages_as_tsv_and_its_snapshot") {
        return;
    }
    let dir = TempDir::new("parquet-pages");
    let (tsv, pool) = known_files(&dir);
    let (want, line) = serve_pages(&tsv, &pool, &[]);
    assert!(line.contains("(TSV)"), "{line}");
    for u in 1..=USERS {
        assert_eq!(want[u as usize - 1][..feed_len(u) as usize], feed_of(u)[..]);
    }
    let cases = [
        // (file, spec, extra flags)
        (
            "uint32-snappy.parquet",
            json!({"user_type": "uint32", "item_type": "uint32", "compression": "snappy",
                   "row_group_size": 7}),
            vec![],
        ),
        (
            "int64-zstd-renamed.parquet",
            json!({"user_type": "int64", "item_type": "int64", "compression": "zstd",
                   "row_group_size": 5, "user_name": "uid", "items_name": "recs",
                   "null_empty": true}),
            vec!["--user-column", "uid", "--items-column", "recs"],
        ),
        (
            "int32-gzip.parquet",
            json!({"user_type": "int32", "item_type": "int32", "compression": "gzip",
                   "row_group_size": 16}),
            vec![],
        ),
        (
            "uint64-lz4.parquet",
            json!({"user_type": "uint64", "item_type": "uint64", "compression": "lz4",
                   "row_group_size": 3}),
            vec![],
        ),
        (
            "int32-lz4raw.parquet",
            json!({"user_type": "int32", "item_type": "int32", "compression": "lz4_raw",
                   "row_group_size": 11}),
            vec![],
        ),
        (
            "int64-none-one-group.parquet",
            json!({"user_type": "int64", "item_type": "uint16", "compression": "none"}),
            vec![],
        ),
    ];
    for (name, mut spec, extra) in cases {
        let null_empty = spec["null_empty"].as_bool().unwrap_or(false);
        spec["rows"] = known_rows(null_empty);
        let file = write(&dir, name, spec);
        let (pages, line) = serve_pages(&file, &pool, &extra);
        assert!(line.contains("(Parquet)"), "{name}: {line}");
        assert!(line.contains("40 users"), "{name}: {line}");
        assert_eq!(pages, want, "{name}");
    }

    // A snapshot packed from the Parquet file serves the same, with the
    // Parquet file's version.
    let mut spec = json!({"row_group_size": 6, "user_name": "u"});
    spec["rows"] = known_rows(false);
    let file = write(&dir, "packed.parquet", spec);
    let snap = dir.0.join("packed.snap");
    let said = common::pack(&file, &snap, &["--user-column", "u"]);
    assert!(said.contains("40 users"), "{said}");
    let (pages, snap_line) = serve_pages(&snap, &pool, &[]);
    assert_eq!(pages, want, "snapshot of the Parquet file");
    let (_, pq_line) = serve_pages(&file, &pool, &["--user-column", "u"]);
    let version = |l: &str| l.split("version ").nth(1).unwrap()[..16].to_string();
    assert_eq!(
        version(&snap_line),
        version(&pq_line),
        "{snap_line} / {pq_line}"
    );
    assert_ne!(
        version(&pq_line),
        version(&line),
        "another file, another version"
    );
}

fn serve(feed: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--feed",
        path_str(feed),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn bad_parquet_files_fail_naming_file_place_and_column() {
    if !have_pyarrow("bad_parquet_files_fail_naming_file_place_and_column") {
        return;
    }
    let dir = TempDir::new("parquet-bad");
    let rows = |r: Value| json!({"rows": r, "user_type": "int64", "item_type": "int64"});
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "too-large.parquet",
            rows(json!([
                [1, [1]],
                [2, [2]],
                [3, [3]],
                [4, [5, 4294967296_u64]]
            ])),
            vec![
                "too-large.parquet: row group 0, row 3 (row 3 of the file)",
                "column `items`, item 2: 4294967296 is larger than 4294967295",
            ],
        ),
        (
            "negative-item.parquet",
            {
                let mut s = rows(json!([[1, [1]], [2, [2]], [3, [3, 4, -7]]]));
                s["row_group_size"] = json!(2);
                s["item_type"] = json!("int32");
                s
            },
            vec![
                "negative-item.parquet: row group 1, row 0 (row 2 of the file)",
                "column `items`, item 3: -7 is negative",
            ],
        ),
        (
            "negative-user.parquet",
            rows(json!([[1, [1]], [-5, [2]]])),
            vec![
                "negative-user.parquet: row group 0, row 1",
                "column `user_id`: user id -5 is negative",
            ],
        ),
        (
            "null-user.parquet",
            rows(json!([[1, [1]], [2, [2]], [null, [3]]])),
            vec![
                "null-user.parquet: row group 0, row 2",
                "the user id is null",
            ],
        ),
        (
            "null-item.parquet",
            rows(json!([[1, [1, null, 2]]])),
            vec![
                "null-item.parquet: row group 0, row 0",
                "column `items`, item 2: null item",
            ],
        ),
        (
            "duplicate.parquet",
            {
                let mut s = rows(json!([[1, [1]], [2, [2]], [3, [3]], [2, [4]]]));
                s["row_group_size"] = json!(2);
                s
            },
            vec![
                "duplicate.parquet: row group 1, row 1 (row 3 of the file)",
                "user 2 appears a second time (first at row group 0, row 1)",
            ],
        ),
        (
            "missing.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["items_name"] = json!("recs");
                s
            },
            vec![
                "missing.parquet: has no column `items`; its columns: `extra`, `user_id`, `recs`",
                "--items-column",
            ],
        ),
        (
            "string-items.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["item_strings"] = json!(true);
                s
            },
            vec![
                "string-items.parquet: column `items` (the item lists) holds lists of \
                 BYTE_ARRAY values",
                "it must be a list of integers",
            ],
        ),
        (
            "plain-items.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["items_plain"] = json!(true);
                s
            },
            vec!["column `items` (the item lists) holds one value per row, not a list"],
        ),
        (
            "string-users.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["user_strings"] = json!(true);
                s
            },
            vec!["column `user_id` (the user ids) holds BYTE_ARRAY values, not integers"],
        ),
        (
            "date-users.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["user_type"] = json!("date32");
                s
            },
            vec!["column `user_id` (the user ids) holds INT32 values annotated Date, not integers"],
        ),
        (
            "double-users.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["user_type"] = json!("float64");
                s
            },
            vec!["column `user_id` (the user ids) holds DOUBLE values, not integers"],
        ),
        (
            "brotli.parquet",
            {
                let mut s = rows(json!([[1, [1]]]));
                s["compression"] = json!("brotli");
                s
            },
            vec![
                "brotli.parquet: row group 0: column `user_id` is compressed with BROTLI, \
                 which this build does not read",
            ],
        ),
    ];
    for (name, spec, wanted) in cases {
        let file = write(&dir, name, spec);
        let mut wanted = wanted;
        wanted.push("cannot load feeds");
        common::fails_with(serve(&file, &[]), &wanted);
    }

    // Cut short: the footer is missing.
    let good = write(&dir, "good.parquet", rows(json!([[1, [1, 2]], [2, [3]]])));
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.0.join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    common::fails_with(
        serve(&cut, &[]),
        &["cut.parquet: starts as Parquet but does not end with `PAR1`: cut short"],
    );
    // The footer is there but damaged.
    let mut damaged = bytes.clone();
    let n = damaged.len();
    let footer = u32::from_le_bytes(damaged[n - 8..n - 4].try_into().unwrap()) as usize;
    for b in &mut damaged[n - 8 - footer..n - 8] {
        *b = 0xff;
    }
    let bad = dir.0.join("damaged.parquet");
    std::fs::write(&bad, &damaged).unwrap();
    common::fails_with(
        serve(&bad, &[]),
        &["damaged.parquet: is not a readable Parquet file"],
    );
    // A pipe: Parquet is read from its end, a pipe cannot be.
    let out = run_in_shell(
        &format!("cat '{}' |", path_str(&good)),
        &["serve", "--listen", "127.0.0.1:0", "--feed", "/dev/stdin"],
    );
    common::fails_with(out, &["/dev/stdin", "not a regular file", "pipe"]);
    // Renaming columns means nothing for TSV or synthetic feeds.
    let tsv = dir.file("feeds.tsv", "1\t1,2\n");
    common::fails_with(
        serve(&tsv, &["--user-column", "uid"]),
        &[
            "--user-column and --items-column apply to Parquet feeds only",
            "feeds.tsv is a TSV file",
        ],
    );
    common::fails_with(
        run(&["serve", "--listen", "127.0.0.1:0", "--items-column", "recs"]),
        &["name the columns of a Parquet --feed"],
    );
    // pack says the same as serve.
    let missing = dir.0.join("missing.parquet");
    let out = run(&[
        "pack",
        path_str(&missing),
        "-o",
        path_str(&dir.0.join("x.snap")),
    ]);
    common::fails_with(out, &["missing.parquet: has no column `items`"]);
}

/// A cluster instance loads only its own users from a Parquet file, as
/// from TSV.
#[test]
fn a_cluster_instance_keeps_only_its_users() {
    if !have_pyarrow("a_cluster_instance_keeps_only_its_users") {
        return;
    }
    let dir = TempDir::new("parquet-cluster");
    let (tsv, pool) = known_files(&dir);
    let mut spec = json!({"row_group_size": 9});
    spec["rows"] = known_rows(false);
    let file = write(&dir, "feeds.parquet", spec);
    let text = format!(
        "a 127.0.0.1:{} 2\nb 127.0.0.1:{} 2\n",
        common::free_ports(2),
        common::free_ports(2)
    );
    let cluster = dir.file("cluster.txt", &text);
    let owner = shardfeed::cluster::Cluster::parse(&text).unwrap();
    let users_of = |feed: &Path| {
        let mut s = Spawned::serve(&[
            "--cluster",
            path_str(&cluster),
            "--instance",
            "b",
            "--feed",
            path_str(feed),
            "--fallback",
            path_str(&pool),
            "--no-pin",
        ]);
        let addr = s.listening();
        let stats: Value = serde_json::from_str(&get_from(addr, "/stats").body).unwrap();
        let mut pages = Vec::new();
        for u in (1..=USERS).filter(|&u| owner.owner(u).instance == 1) {
            pages.push(get_from(addr, &format!("/feed/{u}?size=100")).items());
        }
        s.signal(libc::SIGTERM);
        s.wait_exit(Duration::from_secs(10));
        (stats["feed"]["users"].clone(), pages)
    };
    let (users, pages) = users_of(&file);
    let want = (1..=USERS)
        .filter(|&u| owner.owner(u).instance == 1)
        .count();
    assert_eq!(users, json!(want));
    assert_eq!((users, pages), users_of(&tsv));
}

/// SIGHUP reads a new Parquet file renamed into place with the same
/// column names; one that fails (a negative item) leaves the old version.
#[test]
fn a_reload_reads_the_new_parquet_file() {
    if !have_pyarrow("a_reload_reads_the_new_parquet_file") {
        return;
    }
    let dir = TempDir::new("parquet-reload");
    let (_, pool) = known_files(&dir);
    let spec = |rows: Value| {
        json!({"rows": rows, "user_type": "int64", "item_type": "int64",
               "user_name": "uid", "items_name": "recs", "row_group_size": 2})
    };
    let feed = write(
        &dir,
        "feed.parquet",
        spec(json!([[1, [10, 11, 12]], [2, [20]], [3, [30]]])),
    );
    let mut s = Spawned::serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--feed",
        path_str(&feed),
        "--fallback",
        path_str(&pool),
        "--user-column",
        "uid",
        "--items-column",
        "recs",
    ]);
    let addr = s.listening();
    let page = |u: u32| get_from(addr, &format!("/feed/{u}?size=2")).items();
    assert_eq!(page(1), [10, 11]);
    let outcomes = |s: &Spawned| {
        s.stderr()
            .lines()
            .filter(|l| l.contains("reload: version") || l.contains("reload failed"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let reload = |s: &Spawned, n: usize| {
        s.signal(libc::SIGHUP);
        let started = std::time::Instant::now();
        loop {
            if let Some(l) = outcomes(s).get(n - 1) {
                return l.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // User 1's new list starts with what they were served: kept (prefix
    // rule); user 4 is new.
    let next = write(
        &dir,
        "next.parquet",
        spec(json!([[1, [10, 11, 13]], [2, [21]], [4, [40]]])),
    );
    std::fs::rename(&next, &feed).unwrap();
    let line = reload(&s, 1);
    assert!(line.contains("reload: version"), "{line}");
    // (A page past the end of a list is filled from the pool.)
    assert_eq!(page(1)[0], 13);
    assert_eq!(page(4)[0], 40);
    // A bad file: the old version serves on, the failure names the place.
    let bad = write(
        &dir,
        "bad.parquet",
        spec(json!([[1, [1]], [2, [2]], [5, [-1]]])),
    );
    std::fs::rename(&bad, &feed).unwrap();
    let line = reload(&s, 2);
    assert!(line.contains("reload failed"), "{line}");
    assert!(
        line.contains("feed.parquet: row group 1, row 0") && line.contains("-1 is negative"),
        "{line}"
    );
    assert_eq!(page(2)[0], 21);
    // The pipeline switches to a snapshot at the same path: the column
    // flags, which name Parquet columns, do not stand in its way.
    let good = write(
        &dir,
        "good.parquet",
        spec(json!([[1, [10, 11, 13, 14]], [2, [21, 22]], [4, [40]]])),
    );
    let snap = dir.0.join("feed.snap");
    common::pack(
        &good,
        &snap,
        &["--user-column", "uid", "--items-column", "recs"],
    );
    std::fs::rename(&snap, &feed).unwrap();
    let line = reload(&s, 3);
    assert!(line.contains("reload: version"), "{line}");
    assert_eq!(page(2)[0], 22, "user 2 kept their progress");
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10));
}
