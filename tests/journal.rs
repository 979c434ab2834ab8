//! The journal on a real glommio executor in a scratch directory: what is on
//! disk after `durable`, group commit, the background cadence of each
//! policy, close, checkpoints, a second run with another shard count, bad
//! state directories, and a disk that fills up and frees again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shardfeed::journal::format::{build_segment, decode_segment, FileHeader, FileKind, FileName};
use shardfeed::journal::{
    recover, FsyncPolicy, JournalConfig, JournalError, Progress, Recovery, ShardJournal,
};
use shardfeed::shard::owner_of;

/// Runs `f` on a fresh executor of this thread, with the server's io_memory.
fn on_executor<Fut: Future<Output = T>, T>(f: impl FnOnce() -> Fut) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(128 << 10)
        .make()
        .expect("an executor")
        .run(f())
}

fn p(user: u32, served: u32) -> Progress {
    Progress {
        user,
        served,
        version: 7,
        prefix: (user as u64) << 32 | served as u64,
    }
}

/// Every record of every segment on disk, in file-name order.
fn records_on_disk(dir: &Path) -> Vec<Progress> {
    let mut names: Vec<_> = segment_files(dir);
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let (_, records, _) = decode_segment(&bytes, 0).unwrap();
        out.extend(records);
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn segment_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| matches!(FileName::parse(n), Some(FileName::Segment { .. })))
        .collect()
}

fn checkpoint_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| matches!(FileName::parse(n), Some(FileName::Checkpoint { .. })))
        .collect()
}

fn quick(r: &Recovery, shards: usize) -> JournalConfig {
    let mut c = JournalConfig::after(r, shards);
    c.write_every = Duration::from_millis(20);
    c.sync_every = Duration::from_millis(50);
    c.retry_every = Duration::from_millis(30);
    c
}

/// Latest progress per user of a model run.
fn model(records: &[Progress]) -> Vec<Progress> {
    let mut m = BTreeMap::new();
    for r in records {
        m.insert(r.user, *r);
    }
    m.into_values().collect()
}

#[test]
fn always_durable_means_the_records_are_in_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    assert_eq!(r.generation, 1);
    assert!(!r.inherited && r.users.is_empty());
    let cfg = quick(&r, 1);
    on_executor(|| async move {
        let j = ShardJournal::open(&dir, 0, FsyncPolicy::Always, cfg)
            .await
            .unwrap();
        let a = j.append(p(1, 10));
        let b = j.append(p(2, 20));
        assert!(a < b);
        j.durable(b).await.unwrap();
        j.durable(a).await.unwrap();
        assert_eq!(records_on_disk(&dir), vec![p(1, 10), p(2, 20)]);
        let s = j.stats();
        assert_eq!(s.records, 2);
        assert!(s.syncs >= 1 && s.sync_latency_us.len() == s.syncs);
        assert_eq!(s.queued, 0);
        assert!(s.bytes >= 512 * 2, "header unit and one sector at least");
        assert!(
            s.padding_bytes >= 28 * 16,
            "the sector's unused slots are padding"
        );
        let c = j.append(p(1, 11));
        j.durable(c).await.unwrap();
        assert_eq!(records_on_disk(&dir), vec![p(1, 10), p(2, 20), p(1, 11)]);
        j.close().await.unwrap();
        assert_eq!(
            j.durable(j.append(p(3, 1))).await,
            Err(JournalError::Closed)
        );
    });
}

#[test]
fn group_commit_many_waiters_in_one_loop_share_one_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let cfg = quick(&r, 1);
    on_executor(|| async move {
        let j = Rc::new(
            ShardJournal::open(&dir, 0, FsyncPolicy::Always, cfg)
                .await
                .unwrap(),
        );
        j.durable(j.append(p(0, 1))).await.unwrap();
        let before = j.stats().syncs;
        let tasks: Vec<_> = (1..=64u32)
            .map(|u| {
                let j = j.clone();
                glommio::spawn_local(async move { j.durable(j.append(p(u, u))).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let s = j.stats();
        assert_eq!(s.syncs, before + 1, "64 waiters, one fdatasync");
        assert_eq!(records_on_disk(&dir).len(), 65);
        j.close().await.unwrap();
    });
}

/// Pipelined group commit: with several syncs in flight, batches written
/// while earlier syncs run, and segments rotating under them, every record
/// is on disk when its `durable` completes, and the records come back in
/// order from the files.
#[test]
fn pipelined_syncs_every_acknowledged_record_is_on_disk_when_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let mut cfg = quick(&r, 1);
    cfg.max_syncs = 3;
    cfg.segment_bytes = 16 << 10;
    on_executor(|| async move {
        let j = Rc::new(
            ShardJournal::open(&dir, 0, FsyncPolicy::Always, cfg)
                .await
                .unwrap(),
        );
        let dir = Rc::new(dir);
        let mut appended = Vec::new();
        for wave in 1..=40u32 {
            let tasks: Vec<_> = (0..40u32)
                .map(|u| {
                    let (j, dir) = (j.clone(), dir.clone());
                    let rec = p(u, wave);
                    glommio::spawn_local(async move {
                        // Spread the appends over several executor loops,
                        // so that some arrive while a sync is in flight.
                        for _ in 0..u % 4 {
                            futures_lite::future::yield_now().await;
                        }
                        let lsn = j.append(rec);
                        j.durable(lsn).await.unwrap();
                        assert!(
                            records_on_disk(&dir).contains(&rec),
                            "{rec:?} acknowledged but not on disk"
                        );
                        rec
                    })
                })
                .collect();
            for t in tasks {
                appended.push(t.await);
            }
        }
        let s = j.stats();
        assert_eq!(s.queued, 0);
        assert_eq!(s.errors, 0);
        assert!(s.segments > 1, "segments rotated under the syncs: {s:?}");
        assert!(s.syncs >= 40, "at least a sync per wave: {}", s.syncs);
        j.close().await.unwrap();
        let mut on_disk = records_on_disk(&dir);
        on_disk.sort_by_key(|r| (r.served, r.user));
        appended.sort_by_key(|r| (r.served, r.user));
        assert_eq!(on_disk, appended, "each record once, none lost");
    });
}

#[test]
fn everysec_writes_and_syncs_within_a_second_without_waiters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    // The real defaults: write within 100 ms, sync within 500 ms.
    let cfg = JournalConfig::after(&r, 1);
    on_executor(|| async move {
        let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg)
            .await
            .unwrap();
        let t = Instant::now();
        for u in 0..100 {
            j.append(p(u, 1));
        }
        while j.stats().queued > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "synced within a second"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "not synced at once"
        );
        assert_eq!(records_on_disk(&dir).len(), 100);
        assert_eq!(
            j.stats().syncs,
            1,
            "one sync for the whole second's records"
        );
        j.close().await.unwrap();
    });
}

#[test]
fn never_writes_soon_and_never_syncs_until_close() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let cfg = JournalConfig::after(&r, 1);
    on_executor(|| async move {
        let j = ShardJournal::open(&dir, 0, FsyncPolicy::Never, cfg)
            .await
            .unwrap();
        let t = Instant::now();
        let mut last = None;
        for u in 0..50 {
            last = Some(j.append(p(u, 2)));
        }
        let last = last.unwrap();
        while records_on_disk(&dir).len() < 50 {
            assert!(
                t.elapsed() < Duration::from_millis(600),
                "written within ~100 ms"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // Durable for Never means written: survives the process, not the box.
        j.durable(last).await.unwrap();
        assert_eq!(j.stats().syncs, 0);
        j.close().await.unwrap();
        assert_eq!(j.stats().syncs, 1, "close syncs everything");
    });
}

#[test]
fn close_writes_and_syncs_everything_and_recovery_reads_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let mut cfg = quick(&r, 1);
    cfg.write_every = Duration::from_secs(60);
    cfg.segment_bytes = 64 << 10;
    let mut written = Vec::new();
    for i in 0..5000u32 {
        written.push(p(i % 700, i));
    }
    let records = written.clone();
    on_executor(|| async move {
        let j = ShardJournal::open(&dir, 0, FsyncPolicy::Never, cfg)
            .await
            .unwrap();
        for r in &records {
            j.append(*r);
        }
        j.close().await.unwrap();
        assert_eq!(j.stats().queued, 0);
        assert!(
            j.stats().segments > 1,
            "5000 records rotate through 64 KiB segments"
        );
    });
    drop(r);
    let again = recover(tmp.path()).unwrap();
    assert_eq!(again.users, model(&written));
    assert_eq!(again.generation, 2);
    assert!(again.inherited);
    assert!(!again.report.dropped_anything(), "{}", again.report);
    assert!(
        again
            .report
            .files
            .iter()
            .all(|f| f.ending.contains("sealed")),
        "{:?}",
        again.report.files
    );
}

#[test]
fn checkpoint_then_recover_gives_the_same_progress_and_drops_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let mut cfg = quick(&r, 1);
    cfg.segment_bytes = 64 << 10;
    cfg.keep_free = 1;
    let mut all = Vec::new();
    for i in 0..20_000u32 {
        all.push(p(i.wrapping_mul(2_654_435_761) % 3000, i));
    }
    let records = all.clone();
    on_executor(|| async move {
        let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg)
            .await
            .unwrap();
        let mut state = BTreeMap::new();
        for r in &records[..15_000] {
            j.append(*r);
            state.insert(r.user, *r);
        }
        j.durable(j.append(records[15_000])).await.unwrap();
        state.insert(records[15_000].user, records[15_000]);
        assert!(segment_files(&dir).len() > 2);
        assert!(!j.checkpoint_due(), "64 MiB not reached");

        let mut ck = j.checkpoint();
        assert_eq!(j.checkpoint().finish().await, Err(JournalError::Busy));
        let users: Vec<Progress> = state.values().copied().collect();
        let chunks = users.chunks(500).len();
        for (i, chunk) in users.chunks(500).enumerate() {
            ck.add(chunk).await.unwrap();
            // Serving goes on between chunks.
            j.append(records[15_001 + i]);
            state.insert(records[15_001 + i].user, records[15_001 + i]);
            glommio::yield_if_needed().await;
        }
        assert_eq!(ck.entries(), users.len() as u64);
        ck.finish().await.unwrap();
        let s = j.stats();
        assert_eq!(s.checkpoints, 1);
        assert!(s.last_checkpoint_age.unwrap() < Duration::from_secs(5));
        assert_eq!(checkpoint_files(&dir).len(), 1);
        assert_eq!(
            segment_files(&dir).len(),
            1,
            "only the segment after the checkpoint: {:?}",
            names(&dir)
        );
        // One kept for reuse; a second may be a new segment the writer is
        // zeroing right now (made as a free file first, renamed once
        // ready), which a loaded machine can catch in the listing.
        let free = names(&dir)
            .iter()
            .filter(|n| n.starts_with("free-"))
            .count();
        assert!(
            free == 1 || free == 2,
            "one kept for reuse (two while a segment is made): {:?}",
            names(&dir)
        );
        for r in &records[15_001 + chunks..] {
            j.append(*r);
        }
        j.close().await.unwrap();
    });
    drop(r);
    let again = recover(tmp.path()).unwrap();
    assert_eq!(again.users, model(&all), "{}", again.report);
    let read: Vec<&str> = again.report.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(checkpoint_files(tmp.path()).len(), 1);
    assert_eq!(
        read.iter().filter(|n| n.starts_with("checkpoint-")).count(),
        1
    );
    assert_eq!(
        read.len(),
        1 + segment_files(tmp.path()).len(),
        "{}",
        again.report
    );
    assert!(!again.report.dropped_anything());
}

#[test]
fn a_second_run_with_another_shard_count_keeps_everyone_and_cleans_up_after_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut expect = BTreeMap::new();

    // Run 1: two shards.
    let r = recover(&dir).unwrap();
    let cfg = quick(&r, 2);
    let run1: Vec<Progress> = (0..3000u32).map(|u| p(u, u % 50 + 1)).collect();
    for x in &run1 {
        expect.insert(x.user, *x);
    }
    on_executor(|| {
        let dir = dir.clone();
        let run1 = run1.clone();
        async move {
            let js = [
                ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg.clone())
                    .await
                    .unwrap(),
                ShardJournal::open(&dir, 1, FsyncPolicy::EverySec, cfg)
                    .await
                    .unwrap(),
            ];
            for x in &run1 {
                js[owner_of(x.user, 2).0].append(*x);
            }
            for j in &js {
                j.close().await.unwrap();
            }
        }
    });
    drop(r);

    // Run 2: three shards, recovered users re-owned; some progress moves on.
    let r = recover(&dir).unwrap();
    assert_eq!(r.generation, 2);
    assert_eq!(r.users, expect.values().copied().collect::<Vec<_>>());
    let parts = r.partition(3, |u| owner_of(u, 3).0);
    assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 3000);
    let cfg = quick(&r, 3);
    let run2: Vec<Progress> = (0..3000u32).step_by(7).map(|u| p(u, 999)).collect();
    for x in &run2 {
        expect.insert(x.user, *x);
    }
    on_executor(|| {
        let dir = dir.clone();
        let run2 = run2.clone();
        async move {
            let mut js = Vec::new();
            for s in 0..3 {
                js.push(
                    ShardJournal::open(&dir, s, FsyncPolicy::Always, cfg.clone())
                        .await
                        .unwrap(),
                );
            }
            for x in &run2 {
                js[owner_of(x.user, 3).0].append(*x);
            }
            for j in &js {
                j.close().await.unwrap();
            }
        }
    });
    drop(r);

    // Run 3: three shards again; the later generation wins per user. Then
    // every shard checkpoints what it owns, and the old runs' files go.
    let r = recover(&dir).unwrap();
    assert_eq!(r.generation, 3);
    let want: Vec<Progress> = expect.values().copied().collect();
    assert_eq!(r.users, want);
    let parts = r.partition(3, |u| owner_of(u, 3).0);
    let cfg = quick(&r, 3);
    assert!(cfg.inherited);
    on_executor(|| {
        let dir = dir.clone();
        async move {
            let mut js = Vec::new();
            for s in 0..3 {
                js.push(
                    ShardJournal::open(&dir, s, FsyncPolicy::EverySec, cfg.clone())
                        .await
                        .unwrap(),
                );
            }
            for (s, j) in js.iter().enumerate() {
                assert!(j.checkpoint_due(), "inherited state asks for a checkpoint");
                let mut ck = j.checkpoint();
                ck.add(&parts[s]).await.unwrap();
                ck.finish().await.unwrap();
                assert!(!j.checkpoint_due());
                let old = names(&dir)
                    .iter()
                    .filter(|n| {
                        FileName::parse(n)
                            .and_then(|f| f.generation())
                            .is_some_and(|g| g < 3)
                    })
                    .count();
                assert_eq!(
                    old == 0,
                    s == 2,
                    "old files go once every shard has checkpointed"
                );
            }
            for j in &js {
                j.close().await.unwrap();
            }
        }
    });
    drop(r);
    let r = recover(&dir).unwrap();
    assert_eq!(r.users, want);
    assert_eq!(r.generation, 4);
    assert!(names(&dir)
        .iter()
        .all(|n| !n.contains("-00000001-") && !n.contains("-00000002-")));
}

#[test]
fn a_state_dir_that_is_a_file_or_in_use_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("state");
    std::fs::write(&file, "x").unwrap();
    let e = recover(&file).unwrap_err();
    assert!(e.contains("not a directory"), "{e}");

    let dir = tmp.path().join("new/deeper");
    let held = recover(&dir).expect("a missing directory is created");
    let e = recover(&dir).unwrap_err();
    assert!(e.contains("in use by another shardfeed"), "{e}");
    drop(held);
    recover(&dir).unwrap();

    let e = recover(Path::new("/proc/self/nope/state")).unwrap_err();
    assert!(e.contains("cannot create"), "{e}");
}

#[test]
fn junk_in_the_state_dir_is_ignored_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let cfg = quick(&r, 1);
    on_executor(|| {
        let dir = dir.clone();
        async move {
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::Always, cfg)
                .await
                .unwrap();
            j.durable(j.append(p(5, 5))).await.unwrap();
            j.close().await.unwrap();
        }
    });
    drop(r);
    let w = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    w("README", b"hello");
    w("journal-00000009-0000-0000000000.log", &[0xAB; 5000]);
    // Junk that claims the end of the range of generations.
    w(
        "journal-18446744073709551613-0000-0000000000.log",
        &[0x5A; 600],
    );
    w("journal-00000002-0000-0000000000.log", &[0x11; 600]);
    w("journal-00000001-0000-0000000007.log", b"");
    w("checkpoint-00000001-0000-0000000003.ckpt", &[0u8; 1024]);
    w("checkpoint-00000001-0000-0000000004.ckpt.tmp", b"half");
    std::fs::create_dir(dir.join("journal-00000001-0000-0000000009.log")).unwrap();
    // A real segment under a wrong name: its header does not match.
    let real = segment_files(&dir)
        .into_iter()
        .find(|n| n.contains("-00000001-"))
        .unwrap();
    std::fs::copy(
        dir.join(&real),
        dir.join("journal-00000001-0003-0000000000.log"),
    )
    .unwrap();

    // A valid header on a huge sparse file (1 TiB): read to its first
    // unwritten sector, nothing reserved for what it claims.
    let sparse = dir.join("journal-00000001-0000-0000000005.log");
    let h = FileHeader {
        kind: FileKind::Segment,
        unit: 512,
        shard: 0,
        shards: 1,
        generation: 1,
        seq: 5,
        first_lsn: 1000,
        salt: 9,
        created_ms: 0,
    };
    std::fs::write(&sparse, build_segment(&h, &[], false)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();

    let r = recover(&dir).unwrap();
    assert_eq!(r.users, vec![p(5, 5)]);
    assert_eq!(
        r.generation, 3,
        "after the newest generation read (1), past the names of junk (2)"
    );
    let ignored: BTreeMap<&str, &str> = r
        .report
        .ignored
        .iter()
        .map(|(n, w)| (n.as_str(), w.as_str()))
        .collect();
    assert!(ignored["README"].contains("not ours"));
    assert!(ignored["journal-00000009-0000-0000000000.log"].contains("junk"));
    // A generation no run reaches is not a name of ours.
    assert!(ignored["journal-18446744073709551613-0000-0000000000.log"].contains("not ours"));
    assert!(ignored["journal-00000001-0000-0000000007.log"].contains("junk"));
    assert!(ignored["checkpoint-00000001-0000-0000000003.ckpt"].contains("junk"));
    assert!(ignored["journal-00000001-0000-0000000009.log"].contains("not a regular file"));
    assert!(ignored["journal-00000001-0003-0000000000.log"].contains("does not match"));
    assert_eq!(
        r.report.removed,
        vec!["checkpoint-00000001-0000-0000000004.ckpt.tmp".to_string()]
    );
    assert!(!dir
        .join("checkpoint-00000001-0000-0000000004.ckpt.tmp")
        .exists());
    let text = r.report.to_string();
    assert!(text.contains("ignored README"), "{text}");
    let big = r
        .report
        .files
        .iter()
        .find(|f| f.name.ends_with("0000000005.log"))
        .unwrap();
    assert_eq!(
        (big.bytes, big.records, big.dropped.is_none()),
        (1 << 40, 0, true)
    );
}

/// Thousands of junk files are each in the report, but the start-up text
/// names only the first ones and counts the rest.
#[test]
fn many_junk_files_are_counted_not_each_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for i in 0..500 {
        std::fs::write(dir.join(format!("junk-{i}.txt")), b"x").unwrap();
    }
    let r = recover(&dir).unwrap();
    assert_eq!(r.report.ignored.len(), 500);
    let text = r.report.to_string();
    assert_eq!(
        text.lines().filter(|l| l.contains("ignored junk-")).count(),
        20,
        "{text}"
    );
    assert!(text.contains("ignored 480 more files"), "{text}");
}

#[test]
fn a_torn_tail_is_dropped_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let cfg = quick(&r, 1);
    on_executor(|| {
        let dir = dir.clone();
        async move {
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::Always, cfg)
                .await
                .unwrap();
            for u in 0..3 {
                j.durable(j.append(p(u, 1))).await.unwrap();
            }
            // No close: as after kill -9.
            std::mem::forget(j);
        }
    });
    drop(r);
    let seg = dir.join(&segment_files(&dir)[0]);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Tear the third record's sector (header unit, then one sector each).
    bytes[512 * 3 + 100] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(r.users, vec![p(0, 1), p(1, 1)]);
    let text = r.report.to_string();
    assert!(text.contains("torn last write"), "{text}");
    assert!(r.report.dropped_anything());
}

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(at))
    }
}

impl Tmpfs {
    /// Unmounts; false if it is busy (a file left open).
    fn unmount(&self) -> bool {
        std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !self.unmount() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// A queue dropped while the current segment is healthy (appends beyond
/// `max_queued` before the writer runs: a stalled disk) moves the LSNs on;
/// what is written after it must still be read back: a new segment, not a
/// jump in the old one's LSN sequence (recovery stops at such a jump).
#[test]
fn records_after_a_dropped_queue_are_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let mut cfg = quick(&r, 1);
    cfg.max_queued = 64;
    drop(r);
    on_executor(|| {
        let dir = dir.clone();
        async move {
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg)
                .await
                .unwrap();
            j.durable(j.append(p(1, 1))).await.unwrap();
            // No await: the writer cannot run, the queue overflows.
            for i in 0..100 {
                j.append(p(2, i));
            }
            assert!(j.stats().dropped > 0);
            j.durable(j.append(p(3, 5))).await.unwrap();
            j.close().await.unwrap();
        }
    });
    let users = recover(&dir).unwrap().users;
    assert!(users.contains(&p(3, 5)), "{users:?}");
    assert!(users.contains(&p(2, 99)), "{users:?}");
}

/// Fills the file system at `dir` with a file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = [0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_degrades_the_journal_and_it_recovers_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(tmp.path().join("mnt"), "96k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    };
    let dir = fs.0.join("state");
    let r = recover(&dir).unwrap();
    let mut cfg = quick(&r, 1);
    cfg.segment_bytes = 16 << 10;
    cfg.max_queued = 400;
    let records: Vec<Progress> = (0..1000u32).map(|i| p(i % 97, i)).collect();
    let want = model(&records);
    on_executor(|| {
        let dir = dir.clone();
        let mnt = fs.0.clone();
        let want = want.clone();
        async move {
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::Always, cfg)
                .await
                .unwrap();
            j.durable(j.append(records[0])).await.unwrap();
            let filler = fill(&mnt);
            // Each durable record takes a sector: the 16 KiB segment fills,
            // and the next one cannot be made.
            let mut failed_at = None;
            for (i, r) in records.iter().enumerate().skip(1).take(100) {
                if let Err(e) = j.durable(j.append(*r)).await {
                    assert!(matches!(e, JournalError::Degraded(_)), "{e}");
                    failed_at = Some(i);
                    break;
                }
            }
            let failed_at = failed_at.expect("writes failed on a full disk");
            let s = j.stats();
            assert!(s.errors >= 1);
            let why = s.degraded.expect("degraded");
            assert!(why.contains("No space left"), "{why}");
            // While degraded, answers do not wait: durable fails at once.
            let t = Instant::now();
            assert!(j.durable(j.append(records[failed_at + 1])).await.is_err());
            assert!(t.elapsed() < Duration::from_millis(20));
            // More than the queue holds: the oldest are dropped, and a
            // checkpoint is asked for.
            for r in &records[failed_at + 2..] {
                j.append(*r);
            }
            assert!(j.stats().dropped > 0);
            assert!(j.checkpoint_due());

            std::fs::remove_file(filler).unwrap();
            let t = Instant::now();
            while j
                .stats()
                .degraded
                .as_deref()
                .is_some_and(|d| d.contains("No space"))
            {
                assert!(t.elapsed() < Duration::from_secs(5), "recovers by itself");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let last = j.append(records[999]);
            j.durable(last).await.unwrap();
            assert!(
                j.degraded().unwrap().contains("dropped"),
                "until a checkpoint"
            );
            let mut ck = j.checkpoint();
            ck.add(&want).await.unwrap();
            ck.finish().await.unwrap();
            assert_eq!(j.degraded(), None);
            j.close().await.unwrap();
        }
    });
    drop(r);
    let again = recover(&dir).unwrap();
    assert_eq!(again.users, want, "{}", again.report);
    drop(again);
    assert!(fs.unmount(), "no file of the journal is left open");
    std::mem::forget(fs);
}

#[test]
fn dropped_segments_are_recycled_and_read_back_after_a_crash() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let mut cfg = quick(&r, 1);
    cfg.segment_bytes = 16 << 10;
    cfg.keep_free = 2;
    let all: Vec<Progress> = (0..4200u32)
        .map(|i| p(i.wrapping_mul(7919) % 500, i))
        .collect();
    let records = all.clone();
    on_executor(|| {
        let dir = dir.clone();
        async move {
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg)
                .await
                .unwrap();
            let mut state = BTreeMap::new();
            for r in &records[..3000] {
                j.append(*r);
                state.insert(r.user, *r);
            }
            j.durable(j.append(records[3000])).await.unwrap();
            state.insert(records[3000].user, records[3000]);
            assert!(segment_files(&dir).len() >= 3);
            let mut ck = j.checkpoint();
            ck.add(&state.values().copied().collect::<Vec<_>>())
                .await
                .unwrap();
            ck.finish().await.unwrap();
            let free: Vec<u64> = names(&dir)
                .iter()
                .filter(|n| n.starts_with("free-"))
                .map(|n| std::fs::metadata(dir.join(n)).unwrap().ino())
                .collect();
            assert_eq!(free.len(), 2, "{:?}", names(&dir));
            // 1200 records: a recycled segment filled and sealed, and a
            // second one being written when the process dies.
            for r in &records[3001..4199] {
                j.append(*r);
            }
            j.durable(j.append(records[4199])).await.unwrap();
            assert!(
                names(&dir).iter().all(|n| !n.starts_with("free-")),
                "both reused"
            );
            let reused = segment_files(&dir)
                .iter()
                .filter(|n| free.contains(&std::fs::metadata(dir.join(n)).unwrap().ino()))
                .count();
            assert_eq!(reused, 2);
            // A crash: no close, no seal.
            std::mem::forget(j);
        }
    });
    drop(r);
    let again = recover(&dir).unwrap();
    assert_eq!(again.users, model(&all), "{}", again.report);
    assert!(!again.report.dropped_anything(), "{}", again.report);
    let endings: Vec<&str> = again
        .report
        .files
        .iter()
        .map(|f| f.ending.as_str())
        .collect();
    assert!(
        endings.iter().any(|e| e.contains("recycled")),
        "{endings:?}"
    );
}

#[test]
fn everysec_durable_does_not_wait_for_the_tick() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let mut cfg = JournalConfig::after(&r, 1);
    cfg.write_every = Duration::from_secs(30);
    cfg.sync_every = Duration::from_secs(30);
    on_executor(|| async move {
        let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg)
            .await
            .unwrap();
        let t = Instant::now();
        j.durable(j.append(p(1, 1))).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(records_on_disk(&dir), vec![p(1, 1)]);
        assert_eq!(j.stats().syncs, 1);
        j.close().await.unwrap();
    });
}
