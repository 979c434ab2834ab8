//! Journal micro-benchmarks (harness = false; `cargo bench --bench journal`).
//!
//! 1. Recovery: a state directory with a checkpoint of USERS users (split
//!    over 2 shards as `owner_of` does) plus a tail of TAIL journal records
//!    (written as EverySec batches of ~100 records), built with the real
//!    encoders; `recover()` timed with the files in the page cache and
//!    after evicting them (`posix_fadvise(DONTNEED)`, these files only).
//! 2. The writer on a glommio executor: `append` cost, and `--fsync always`
//!    group commit with 1 and 64 concurrent waiters (sync latency from the
//!    journal's own histogram).
//!
//! Environment: JOURNAL_BENCH_USERS [5000000], JOURNAL_BENCH_TAIL
//! [3000000], JOURNAL_BENCH_DIR [a new directory under /tmp].
//!
//! JOURNAL_BENCH_STATE=DIR only builds such a state directory in DIR, for
//! the synthetic users `serve --users JOURNAL_BENCH_USERS` loads (ids from
//! 1, the synthetic data's version), and keeps it: for timing a real
//! restart (`serve --users N --state-dir DIR` until `listening on`).

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shardfeed::journal::format::{build_checkpoint, build_segment, FileHeader, FileKind, FileName};
use shardfeed::journal::{recover, FsyncPolicy, JournalConfig, Progress, ShardJournal};
use shardfeed::shard::owner_of;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn progress(user: u32, served: u32, version: u64) -> Progress {
    Progress {
        user,
        served,
        version,
        prefix: shardfeed::hash::mix64(user as u64 ^ served as u64) & 0xffff_ffff,
    }
}

fn header(kind: FileKind, shard: u32, seq: u64, first_lsn: u64) -> FileHeader {
    FileHeader {
        kind,
        unit: 512,
        shard,
        shards: 2,
        generation: 1,
        seq,
        first_lsn,
        salt: shardfeed::hash::mix64(seq ^ (shard as u64) << 32 ^ kind as u64),
        created_ms: 0,
    }
}

/// Writes the state directory; returns its size in bytes.
/// Writes the state directory for users `first..first + users` of feed
/// `version`; returns its size in bytes.
fn build(dir: &Path, first: u32, users: u64, tail: u64, version: u64) -> u64 {
    let mut bytes = 0;
    let mut per_shard: [Vec<Progress>; 2] = [Vec::new(), Vec::new()];
    for u in first..first + users as u32 {
        per_shard[owner_of(u, 2).0].push(progress(u, u % 190, version));
    }
    let mut rng = 0x1234u64;
    for (shard, entries) in per_shard.iter().enumerate() {
        let shard = shard as u32;
        let ck = build_checkpoint(&header(FileKind::Checkpoint, shard, 0, 0), entries);
        let name = FileName::Checkpoint {
            generation: 1,
            shard,
            seq: 0,
        };
        std::fs::write(dir.join(name.to_string()), &ck).unwrap();
        bytes += ck.len() as u64;
        // The tail: random users of this shard, in batches of ~100.
        let n = tail / 2;
        let records: Vec<Progress> = (0..n)
            .map(|i| {
                rng = shardfeed::hash::mix64(rng);
                let e = entries[(rng % entries.len() as u64) as usize];
                progress(e.user, e.served + 1 + (i % 7) as u32, version)
            })
            .collect();
        let per_segment = 1_000_000usize;
        for (seq, seg) in records.chunks(per_segment).enumerate() {
            let first = (seq * per_segment) as u64;
            let batches: Vec<&[Progress]> = seg.chunks(100).collect();
            let b = build_segment(
                &header(FileKind::Segment, shard, seq as u64, first),
                &batches,
                false,
            );
            let name = FileName::Segment {
                generation: 1,
                shard,
                seq: seq as u64,
            };
            std::fs::write(dir.join(name.to_string()), &b).unwrap();
            bytes += b.len() as u64;
        }
    }
    bytes
}

fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let f = std::fs::File::open(e.path()).unwrap();
        f.sync_all().unwrap();
        // SAFETY: advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn bench_recovery() {
    let users = env("JOURNAL_BENCH_USERS", 5_000_000);
    let tail = env("JOURNAL_BENCH_TAIL", 3_000_000);
    let tmp = tempfile::Builder::new()
        .prefix("journal-bench")
        .tempdir_in(std::env::var("JOURNAL_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()));
    let tmp = tmp.unwrap();
    let dir = tmp.path();
    let t = Instant::now();
    let bytes = build(dir, 0, users, tail, 0x5eed);
    println!(
        "recovery: {users} users in checkpoints + {tail} journal records, 2 shards: {:.1} MB on disk (built in {:.1} s)",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    for run in ["warm", "warm", "cold", "cold"] {
        if run == "cold" {
            evict(dir);
        }
        let t = Instant::now();
        let r = recover(dir).unwrap();
        let took = t.elapsed();
        assert_eq!(r.users.len() as u64, users);
        println!(
            "  recover ({run} cache): {:>6.0} ms ({:.0} ms reading, the rest merging; {} users, {} records, {} threads, {:.0} MB/s)",
            took.as_secs_f64() * 1e3,
            r.report.read_took.as_secs_f64() * 1e3,
            r.users.len(),
            r.report.records,
            r.report.threads,
            bytes as f64 / 1e6 / took.as_secs_f64()
        );
        let t = Instant::now();
        let parts = r.partition(2, |u| owner_of(u, 2).0);
        if run == "warm" {
            println!(
                "  partition for 2 shards: {:.0} ms ({} + {})",
                t.elapsed().as_secs_f64() * 1e3,
                parts[0].len(),
                parts[1].len()
            );
        }
    }
}

fn bench_writer() {
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let dir = tmp.path().to_path_buf();
    let r = recover(&dir).unwrap();
    let cfg = JournalConfig::after(&r, 1);
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(128 << 10)
        .make()
        .unwrap()
        .run(async move {
            // append: memory only.
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, cfg.clone()).await.unwrap();
            let n = 200_000u32;
            let t = Instant::now();
            for i in 0..n {
                j.append(progress(i, i, 0x5eed));
            }
            let per = t.elapsed().as_nanos() as f64 / n as f64;
            j.close().await.unwrap();
            let s = j.stats();
            println!(
                "writer: append {per:.1} ns each (EverySec); {} records in {:.1} MB ({:.1} bytes/record), {} syncs",
                s.records,
                s.bytes as f64 / 1e6,
                s.bytes as f64 / s.records as f64,
                s.syncs
            );

            // A checkpoint of 2.5M users (one shard of 5M), fed in chunks of
            // 4096 with a yield between them, as the shard would.
            let users: Vec<Progress> = (0..2_500_000u32).map(|u| progress(u, u % 200, 0x5eed)).collect();
            let mut c = cfg.clone();
            c.generation += 100;
            let j = ShardJournal::open(&dir, 0, FsyncPolicy::EverySec, c).await.unwrap();
            let t = Instant::now();
            let mut longest = Duration::ZERO;
            let mut ck = j.checkpoint();
            for chunk in users.chunks(4096) {
                let c = Instant::now();
                ck.add(chunk).await.unwrap();
                longest = longest.max(c.elapsed());
                glommio::yield_if_needed().await;
            }
            ck.finish().await.unwrap();
            println!(
                "checkpoint: 2500000 users in {:.0} ms, {:.1} MB, longest add() of 4096 users {:.0} us",
                t.elapsed().as_secs_f64() * 1e3,
                j.stats().last_checkpoint_bytes as f64 / 1e6,
                longest.as_secs_f64() * 1e6
            );
            j.close().await.unwrap();

            // Always: waiters per loop share one write + one fdatasync.
            for waiters in [1usize, 64] {
                let mut c = cfg.clone();
                c.generation += waiters as u64;
                let j = Rc::new(ShardJournal::open(&dir, 0, FsyncPolicy::Always, c).await.unwrap());
                let until = Instant::now() + Duration::from_secs(2);
                let tasks: Vec<_> = (0..waiters)
                    .map(|w| {
                        let j = j.clone();
                        glommio::spawn_local(async move {
                            let mut done = 0u64;
                            let mut lat = Vec::new();
                            while Instant::now() < until {
                                let t = Instant::now();
                                j.durable(j.append(progress(w as u32, done as u32, 0x5eed))).await.unwrap();
                                lat.push(t.elapsed().as_micros() as u64);
                                done += 1;
                            }
                            lat
                        })
                    })
                    .collect();
                let mut lat = Vec::new();
                for t in tasks {
                    lat.extend(t.await);
                }
                lat.sort_unstable();
                let s = j.stats();
                let h = &s.sync_latency_us;
                println!(
                    "  always, {waiters:>2} waiters: {:>6} durable answers/s, {:.1} per sync; answer p50 {} us p99 {} us; fdatasync p50 {} us p99 {} us; {:.0} bytes/record",
                    lat.len() / 2,
                    lat.len() as f64 / s.syncs.max(1) as f64,
                    lat[lat.len() / 2],
                    lat[lat.len() * 99 / 100],
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    s.bytes as f64 / s.records.max(1) as f64
                );
                j.close().await.unwrap();
            }
        });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(dir) = std::env::var("JOURNAL_BENCH_STATE") {
        let users = env("JOURNAL_BENCH_USERS", 5_000_000);
        let tail = env("JOURNAL_BENCH_TAIL", 3_000_000);
        let spec = shardfeed::synthetic::Synthetic {
            users: users as u32,
            feed_len: 200,
            items: 10_000_000,
            seed: 42,
        };
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = build(Path::new(&dir), 1, users, tail, spec.version());
        println!(
            "state for `serve --users {users}`: {users} users + {tail} records, {:.1} MB in {dir}",
            bytes as f64 / 1e6
        );
        return;
    }
    bench_recovery();
    bench_writer();
}
