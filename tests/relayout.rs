//! `shardfeed relayout` (README "Changing the layout"): stopped instances'
//! state directories rewritten for a new cluster file, and the new
//! instances continuing every user exactly where they were, checked with
//! the items themselves. No nginx needed: requests go to the owner
//! instance's shared port, as the front would send them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use shardfeed::cluster::Cluster;
use shardfeed::journal::{self, Progress};

/// A cluster file of `(name, shards)` on fresh loopback ports.
fn cluster_file(dir: &TempDir, file: &str, layout: &[(&str, usize)]) -> (PathBuf, Cluster) {
    let mut text = String::from("# test cluster\n");
    for (name, shards) in layout {
        let port = common::free_ports(*shards as u16);
        text.push_str(&format!("{name} 127.0.0.1:{port} {shards}\n"));
    }
    (dir.file(file, &text), Cluster::parse(&text).unwrap())
}

/// Every instance of `cluster`, each with its `--state-dir` `states[i]`
/// and `extra` flags.
fn start_all_with(
    dir: &TempDir,
    file: &Path,
    cluster: &Cluster,
    states: &[PathBuf],
    extra: &[&str],
) -> Vec<Spawned> {
    let (feeds, pool) = known_files(dir);
    let mut all = Vec::new();
    for (inst, state) in cluster.instances.iter().zip(states) {
        let mut s = Spawned::serve(
            &[
                "--cluster",
                path_str(file),
                "--instance",
                &inst.name,
                "--feed",
                path_str(&feeds),
                "--fallback",
                path_str(&pool),
                "--state-dir",
                path_str(state),
                "--no-pin",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        s.listening();
        all.push(s);
    }
    all
}

fn start_all(dir: &TempDir, file: &Path, cluster: &Cluster, states: &[PathBuf]) -> Vec<Spawned> {
    start_all_with(dir, file, cluster, states, &[])
}

fn stop_all(servers: Vec<Spawned>) {
    for mut s in servers {
        s.signal(libc::SIGTERM);
        let (status, _, _) = s.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{}", s.stderr());
    }
}

/// Asks each user's owner for `pages(u)` pages of 3 (all until its feed is
/// exhausted if `None`), adding the user's own items to `served`.
fn serve_pages(cluster: &Cluster, served: &mut [Vec<u32>], pages: impl Fn(u32) -> Option<u32>) {
    let addrs: Vec<SocketAddr> = cluster
        .instances
        .iter()
        .map(|i| i.shared().parse().unwrap())
        .collect();
    let mut clients: Vec<Client> = addrs.iter().map(|a| Client::connect(*a)).collect();
    for u in 1..=USERS {
        let c = &mut clients[cluster.owner(u).instance];
        let mut n = 0;
        loop {
            if pages(u).is_some_and(|p| n >= p) {
                break;
            }
            let r = c.get(&format!("/feed/{u}?size=3"));
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.header("Shardfeed-Degraded"), None, "user {u}: {r:?}");
            let mine: Vec<u32> = r.items().into_iter().filter(|&i| i < 900_000).collect();
            if pages(u).is_none() && mine.is_empty() {
                break;
            }
            served[u as usize].extend(mine);
            n += 1;
        }
    }
}

/// Every user's recovered progress in `dir` (read as a server would).
fn progress_in(dir: &Path) -> Vec<Progress> {
    journal::recover_existing(dir, "test").unwrap().users
}

/// Runs `shardfeed relayout ARGS`; (success, stdout, stderr).
fn relayout(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["relayout"];
    all.extend_from_slice(args);
    let out = run(&all);
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Relayout from `old` to `new` (written under `root`); checks that each
/// new directory holds exactly its owners' progress, carried over
/// unchanged. Returns the new directories, in `new`'s order.
fn relayout_and_check(
    old: (&Cluster, &[PathBuf]),
    new: (&Path, &Cluster),
    root: &Path,
) -> Vec<PathBuf> {
    let before: Vec<Progress> = {
        let mut all: Vec<Progress> = old.1.iter().flat_map(|d| progress_in(d)).collect();
        all.sort_by_key(|p| p.user);
        all
    };
    // Each old directory holds only its own users' progress here.
    for (i, d) in old.1.iter().enumerate() {
        assert!(progress_in(d)
            .iter()
            .all(|p| old.0.owner(p.user).instance == i));
    }
    let mut args = vec!["--cluster", path_str(new.0), "--out-dir", path_str(root)];
    for d in old.1 {
        args.extend(["--from", path_str(d)]);
    }
    let (ok, stdout, stderr) = relayout(&args);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("checked by reading them back"), "{stdout}");
    let dirs: Vec<PathBuf> = new.1.instances.iter().map(|i| root.join(&i.name)).collect();
    let mut after = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let got = progress_in(d);
        assert!(
            got.iter().all(|p| new.1.owner(p.user).instance == i),
            "{} holds users of other instances",
            d.display()
        );
        let shards = new.1.instances[i].shards;
        let ckpts = std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_str().unwrap().ends_with(".ckpt")
            })
            .count();
        assert_eq!(ckpts, shards, "one checkpoint per shard in {}", d.display());
        after.extend(got);
    }
    after.sort_by_key(|p| p.user);
    assert_eq!(after, before, "every user's progress, once, unchanged");
    assert!(!before.is_empty());
    dirs
}

/// 2 instances (2 and 1 shards) serve part of every feed (`--fsync always`;
/// one stops with SIGTERM, the other is killed); relayout to 3
/// (1, 2, 2 shards: a and b change their shard counts, c is new); those
/// serve more; relayout to 2 (a with 2 shards, c with 1: b removed); those
/// serve every feed to its end. Every user gets every item exactly once,
/// in order, across the three layouts.
#[test]
fn relayout_keeps_every_users_progress_across_layouts() {
    let dir = TempDir::new("relayout-chain");
    let mut served: Vec<Vec<u32>> = vec![Vec::new(); USERS as usize + 1];

    let (file1, c1) = cluster_file(&dir, "c1.txt", &[("a", 2), ("b", 1)]);
    let states1 = vec![dir.0.join("a1"), dir.0.join("b1")];
    // Under --fsync always every page answered is durable: b is killed
    // (its segments end in a zeroed tail, unsealed) and still loses nothing.
    let mut s = start_all_with(&dir, &file1, &c1, &states1, &["--fsync", "always"]);
    serve_pages(&c1, &mut served, |u| Some(u % 3));
    let mut b = s.pop().unwrap();
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(20));
    stop_all(s);
    let killed = journal::recover_existing(&states1[1], "test")
        .unwrap()
        .report;
    assert!(
        killed
            .files
            .iter()
            .any(|f| f.ending.contains("(zeroed) tail")),
        "{:?}",
        killed.files
    );

    let (file2, c2) = cluster_file(&dir, "c2.txt", &[("a", 1), ("b", 2), ("c", 2)]);
    // Each instance's directory says which cluster it was of (INSTANCE):
    // leaving b's out is refused, as its users would start again.
    for (inst, state) in c1.instances.iter().zip(&states1) {
        let marker = std::fs::read_to_string(state.join("INSTANCE")).unwrap();
        assert!(
            marker.contains(&format!("instance {}", inst.name)),
            "{marker}"
        );
    }
    let left_out = dir.0.join("left-out");
    let (ok, _, stderr) = relayout(&[
        "--cluster",
        path_str(&file2),
        "--from",
        path_str(&states1[0]),
        "--out-dir",
        path_str(&left_out),
    ]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("also had b"), "{stderr}");
    assert!(!left_out.exists(), "a refused relayout leaves no --out-dir");
    let root2 = dir.0.join("layout2");
    let states2 = relayout_and_check((&c1, &states1), (&file2, &c2), &root2);
    // Users move: some now belong to another instance than before.
    let moved = (1..=USERS)
        .filter(|&u| {
            c1.instances[c1.owner(u).instance].name != c2.instances[c2.owner(u).instance].name
        })
        .count();
    assert!(moved > 0);
    let s = start_all(&dir, &file2, &c2, &states2);
    for srv in &s {
        assert!(
            !srv.stderr().contains("belong to other instances"),
            "{}",
            srv.stderr()
        );
    }
    serve_pages(&c2, &mut served, |u| Some(u % 2 + 1));
    stop_all(s);

    let (file3, c3) = cluster_file(&dir, "c3.txt", &[("a", 2), ("c", 1)]);
    let root3 = dir.0.join("layout3");
    let states3 = relayout_and_check((&c2, &states2), (&file3, &c3), &root3);
    // The same split over hosts: each old instance scatters its users
    // (--old-cluster --partial), each new one gathers its pieces
    // (--instance); the result is the same progress.
    let (old_file, new_file) = (path_str(&file2), path_str(&file3));
    for (inst, state) in c2.instances.iter().zip(&states2) {
        let from = format!("{}={}", inst.name, path_str(state));
        let out = dir.0.join("scatter").join(&inst.name);
        let (ok, stdout, stderr) = relayout(&[
            "--cluster",
            new_file,
            "--old-cluster",
            old_file,
            "--partial",
            "--from",
            &from,
            "--out-dir",
            path_str(&out),
        ]);
        assert!(ok, "{stdout}{stderr}");
    }
    let mut gathered = Vec::new();
    for (inst, direct) in c3.instances.iter().zip(&states3) {
        let pieces: Vec<PathBuf> = c2
            .instances
            .iter()
            .map(|o| dir.0.join("scatter").join(&o.name).join(&inst.name))
            .collect();
        let out = dir.0.join("gather").join(&inst.name);
        let mut args = vec!["--cluster", new_file, "--instance", &inst.name];
        args.extend(["--out-dir", path_str(&out)]);
        for p in &pieces {
            args.extend(["--from", path_str(p)]);
        }
        let (ok, stdout, stderr) = relayout(&args);
        assert!(ok, "{stdout}{stderr}");
        let written: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            written,
            std::slice::from_ref(&inst.name),
            "only the chosen instance"
        );
        let state = out.join(&inst.name);
        assert_eq!(progress_in(&state), progress_in(direct), "{}", inst.name);
        gathered.push(state);
    }
    // A piece left out of a gather is seen: each piece is marked as its
    // old instance's, as an instance's directory is.
    let inst = &c3.instances[0];
    let short = dir.0.join("gather-short");
    let mut args = vec!["--cluster", new_file, "--instance", &inst.name];
    args.extend(["--out-dir", path_str(&short)]);
    let pieces: Vec<PathBuf> = c2.instances[1..]
        .iter()
        .map(|o| dir.0.join("scatter").join(&o.name).join(&inst.name))
        .collect();
    for p in &pieces {
        args.extend(["--from", path_str(p)]);
    }
    let (ok, _, stderr) = relayout(&args);
    assert!(!ok, "{stderr}");
    let left_out = format!("also had {}", c2.instances[0].name);
    assert!(stderr.contains(&left_out), "{stderr}");
    assert!(!short.exists(), "nothing written");
    let s = start_all(&dir, &file3, &c3, &gathered);
    serve_pages(&c3, &mut served, |_| None);
    stop_all(s);

    for u in 1..=USERS {
        assert_eq!(
            served[u as usize],
            feed_of(u),
            "user {u}: every item once, in order"
        );
    }
}

/// Every file of `dir` and its bytes.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    all.sort();
    all
}

/// An instance started with a changed (or wrong) cluster file, on a
/// directory holding users it does not own under that file, or with the
/// wrong `--instance`: refused, saying what to do, its files untouched (the
/// start's checkpoints would have erased those users for good). Started
/// right again, every user continues.
#[test]
fn a_start_that_would_drop_other_instances_users_is_refused() {
    let dir = TempDir::new("relayout-foreign");
    let mut served: Vec<Vec<u32>> = vec![Vec::new(); USERS as usize + 1];
    let (file1, c1) = cluster_file(&dir, "c1.txt", &[("a", 1), ("b", 2)]);
    let states = vec![dir.0.join("a"), dir.0.join("b")];
    let s = start_all(&dir, &file1, &c1, &states);
    serve_pages(&c1, &mut served, |u| Some(u % 3 + 1));
    stop_all(s);
    let before = files_of(&states[1]);

    let (file2, c2) = cluster_file(&dir, "c2.txt", &[("a", 2), ("b", 1), ("c", 1)]);
    assert!(
        (1..=USERS).any(|u| c1.owner(u).instance == 1 && c2.owner(u).instance != 1),
        "some of b's users move"
    );
    let (feeds, pool) = known_files(&dir);
    let refused = |file: &Path, instance: &str, says: &[&str]| {
        let mut s = Spawned::serve(&[
            "--cluster",
            path_str(file),
            "--instance",
            instance,
            "--feed",
            path_str(&feeds),
            "--fallback",
            path_str(&pool),
            "--state-dir",
            path_str(&states[1]),
            "--no-pin",
        ]);
        let (status, _, _) = s.wait_exit(Duration::from_secs(20));
        let stderr = s.stderr();
        assert!(!status.success(), "{stderr}");
        for s in says {
            assert!(stderr.contains(s), "{s:?} in {stderr}");
        }
        // Refused before the feed loads (a big feed takes a while).
        assert!(!stderr.contains("loaded in"), "{stderr}");
    };
    refused(
        &file2,
        "b",
        &[
            "belong to other instances under this --cluster file",
            "relayout",
        ],
    );
    refused(
        &file1,
        "a",
        &["holds the state of instance b, not of --instance a"],
    );
    assert_eq!(
        files_of(&states[1]),
        before,
        "nothing changed in b's directory"
    );
    // relayout takes each directory as the instance it is named after:
    // names swapped are refused by the INSTANCE files.
    let swapped = [
        format!("a={}", path_str(&states[1])),
        format!("b={}", path_str(&states[0])),
    ];
    let out = dir.0.join("swapped");
    let (ok, _, stderr) = relayout(&[
        "--cluster",
        path_str(&file2),
        "--old-cluster",
        path_str(&file1),
        "--from",
        &swapped[0],
        "--from",
        &swapped[1],
        "--out-dir",
        path_str(&out),
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("that directory is instance b's"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");

    let s = start_all(&dir, &file1, &c1, &states);
    serve_pages(&c1, &mut served, |_| None);
    stop_all(s);
    for u in 1..=USERS {
        assert_eq!(
            served[u as usize],
            feed_of(u),
            "user {u}: every item once, in order"
        );
    }
}

fn p(user: u32, served: u32) -> Progress {
    Progress {
        user,
        served,
        version: 7,
        prefix: served as u64,
    }
}

/// A state directory holding `users` (one checkpoint, as relayout writes).
fn state_with(dir: &Path, users: &[Progress]) {
    std::fs::create_dir_all(dir).unwrap();
    journal::seed_checkpoints(dir, &mut [users.to_vec()]).unwrap();
}

/// What relayout refuses, with a message saying what to change, writing
/// nothing: a non-empty --out-dir, a missing or empty --from, a directory
/// a running server holds, a user with two different progresses (unless
/// --old-cluster says whose it is), an old instance left out.
#[test]
fn relayout_refuses_what_would_lose_or_mix_progress() {
    let dir = TempDir::new("relayout-refuse");
    let (new, c) = cluster_file(&dir, "new.txt", &[("x", 1), ("y", 2)]);
    let new = path_str(&new);
    let (a, b) = (dir.0.join("a"), dir.0.join("b"));
    let old_text = "a 127.0.0.1:7000 1\nb 127.0.0.1:7100 1\n";
    let old = Cluster::parse(old_text).unwrap();
    let old_file = dir.file("old.txt", old_text);
    // User 5 in both directories, differently; user 6 in both the same.
    let held_by = [
        vec![p(5, 10), p(6, 2), p(7, 1)],
        vec![p(5, 20), p(6, 2), p(8, 3)],
    ];
    state_with(&a, &held_by[0]);
    state_with(&b, &held_by[1]);
    let out = dir.0.join("out");
    let (sa, sb, so) = (path_str(&a), path_str(&b), path_str(&out));

    let refused = |args: &[&str], says: &str| {
        let (ok, stdout, stderr) = relayout(args);
        assert!(!ok, "{args:?}: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    let conflict = [
        "--cluster",
        new,
        "--from",
        sa,
        "--from",
        sb,
        "--out-dir",
        so,
    ];
    refused(&conflict, "give --old-cluster FILE");
    assert!(!out.exists(), "nothing written, not even --out-dir");

    let of = path_str(&old_file);
    let named = |n: &str, d: &str| format!("{n}={d}");
    let (na, nb) = (named("a", sa), named("b", sb));
    refused(
        &[
            "--cluster",
            new,
            "--old-cluster",
            of,
            "--from",
            &na,
            "--out-dir",
            so,
        ],
        "no --from NAME=DIR for old instance(s) b",
    );
    refused(
        &["--cluster", new, "--partial", "--from", sa, "--out-dir", so],
        "--old-cluster",
    );
    refused(
        &[
            "--cluster",
            new,
            "--old-cluster",
            of,
            "--from",
            sa,
            "--out-dir",
            so,
        ],
        "give NAME=DIR",
    );
    let missing = path_str(&dir.0.join("missing")).to_string();
    refused(
        &["--cluster", new, "--from", &missing, "--out-dir", so],
        "does not exist",
    );
    assert!(!dir.0.join("missing").exists(), "an input is never created");
    refused(
        &["--cluster", new, "--from", &na, "--out-dir", so],
        "NAME=DIR is for use with --old-cluster",
    );
    let empty = dir.0.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(
        &[
            "--cluster",
            new,
            "--from",
            path_str(&empty),
            "--out-dir",
            so,
        ],
        "holds no checkpoint or journal file",
    );

    // With the old layout, each user comes from its old owner.
    let args = [
        "--cluster",
        new,
        "--old-cluster",
        of,
        "--from",
        &na,
        "--from",
        &nb,
        "--out-dir",
        so,
    ];
    let (ok, stdout, stderr) = relayout(&args);
    assert!(ok, "{stdout}{stderr}");
    let mut got: Vec<Progress> = c
        .instances
        .iter()
        .flat_map(|i| progress_in(&out.join(&i.name)))
        .collect();
    got.sort_by_key(|p| p.user);
    let want: Vec<Progress> = (5..=8)
        .filter_map(|u| {
            let from = &held_by[old.owner(u).instance];
            from.iter().find(|r| r.user == u).copied()
        })
        .collect();
    assert_eq!(got, want);

    // Never over a non-empty --out-dir.
    refused(&args, "is not empty");

    // Not a directory a running server holds.
    let held = dir.0.join("held");
    let mut server = Spawned::known(&dir, &["--state-dir", path_str(&held)]);
    server.listening();
    let out2 = dir.0.join("out2");
    refused(
        &[
            "--cluster",
            new,
            "--from",
            path_str(&held),
            "--out-dir",
            path_str(&out2),
        ],
        "is in use by another shardfeed",
    );
    server.stop(Duration::from_secs(20));
}
