//! Micro-benchmarks of the per-request work, without the network:
//! `cargo bench --bench hot_path`. Prints ns per operation (best of 5 runs,
//! so that a noisy neighbour inflates the figure less). Numbers only: no
//! thresholds.

use std::hint::black_box;
use std::time::Instant;

use shardfeed::cursor::Cursor;
use shardfeed::feed::Pool;
use shardfeed::http::{self, Framing, HttpDate, Limits, Persist};
use shardfeed::load;
use shardfeed::metrics::{Class, Route, ShardMetrics};
use shardfeed::shard::owner_of;
use shardfeed::synthetic::{self, Synthetic};

const LIMITS: Limits = Limits::DEFAULT;

/// Runs `f` `iters` times, five times over; prints and returns the best ns/op.
fn bench(name: &str, iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..iters {
            f(i);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    println!("{name:<44} {best:>10.1} ns/op");
    best
}

fn main() {
    let request =
        b"GET /feed/123456?size=10 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n";
    bench("http::decode (wrk-like request)", 2_000_000, |_| {
        black_box(http::decode(black_box(request), LIMITS));
    });
    bench("http::route", 5_000_000, |_| {
        black_box(http::route(
            "GET",
            black_box("/feed/123456?size=10"),
            LIMITS,
        ));
    });
    let cursor = Cursor {
        user: 123_456,
        version: 0x1234_5678,
        position: 20,
        pool: 7,
    };
    let token = String::from_utf8(cursor.token().to_vec()).unwrap();
    let with_cursor = format!("/feed/123456?size=10&cursor={token}");
    bench("http::route (with cursor)", 5_000_000, |_| {
        black_box(http::route("GET", black_box(&with_cursor), LIMITS));
    });
    let date = HttpDate::now();
    let page: Vec<u32> = (0..10).map(|i| 1_000_000 + i * 7919).collect();
    let mut out = Vec::with_capacity(4096);
    bench("http::encode_page (10 items, no cursor)", 5_000_000, |_| {
        out.clear();
        http::encode_page(
            &mut out,
            &date,
            Framing::full(Persist::KeepAlive),
            black_box(&page),
            None,
        );
        black_box(&out);
    });
    bench(
        "http::encode_page (10 items, Feed-Cursor)",
        5_000_000,
        |_| {
            out.clear();
            http::encode_page(
                &mut out,
                &date,
                Framing::full(Persist::KeepAlive),
                black_box(&page),
                Some(black_box(&cursor)),
            );
            black_box(&out);
        },
    );
    let ten: Vec<u32> = (0..10).map(|i| 1_000_000 + i * 7919).collect();
    bench("feed::prefix_hash (10 items)", 10_000_000, |i| {
        black_box(shardfeed::feed::prefix_hash(
            black_box(i as u32),
            20,
            black_box(&ten),
        ));
    });
    bench("shard::owner_of", 50_000_000, |i| {
        black_box(owner_of(black_box(i as u32), 2));
    });
    // What metrics add per request: one record (two with the histogram log)
    // and, per round of requests, two clock reads.
    let mut metrics = ShardMetrics::new(true);
    bench(
        "ShardMetrics::record (with interval log)",
        20_000_000,
        |i| {
            metrics.record(Route::Local, Class::Success, black_box(i & 1023));
        },
    );
    bench("Instant::now + elapsed (per round)", 10_000_000, |_| {
        black_box(black_box(Instant::now()).elapsed());
    });

    let spec = Synthetic {
        users: 1_000_000,
        feed_len: 200,
        items: 10_000_000,
        seed: 42,
    };
    let start = Instant::now();
    let (mut seen, mut feed, mut sum) = (synthetic::SeenSet::default(), Vec::new(), 0u64);
    for user in 1..=1_000_000 {
        synthetic::synthetic_feed(&spec, user, &mut seen, &mut feed);
        sum += feed[0] as u64;
    }
    black_box(sum);
    println!(
        "{:<44} {:>10.2} s",
        "synthetic_feed alone (1M users x 200)",
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let builder = synthetic::synthetic_store(&spec, |_| true);
    println!(
        "{:<44} {:>10.2} s",
        "synthetic_store (1M users x 200, 1 thread)",
        start.elapsed().as_secs_f64()
    );
    let pool = load::top_items(&load::count_items(builder.items(), 1_000_000), 50);
    // The same users as a one-section snapshot, loaded the fast way (items
    // mapped), for the same pages from a mapping.
    let snap = std::env::temp_dir().join(format!("hot-path-{}.snap", std::process::id()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&snap).unwrap());
    shardfeed::snapshot::write(&mut out, 1, std::slice::from_ref(&builder)).unwrap();
    drop(out);
    let (mapped, _) =
        shardfeed::snapshot::load(&snap, shardfeed::shard::ShardId(0), 1, true, |_| true).unwrap();
    let mut mapped = mapped.build(Pool::new(pool.iter().copied()));
    assert!(mapped.items_mapped());
    let mut store = builder.build(Pool::new(pool));
    let next_page = |store: &mut shardfeed::feed::Store, name: &str| {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut page = Vec::with_capacity(100);
        bench(name, 2_000_000, |_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let user = 1 + (rng % 1_000_000) as u32;
            black_box(store.next_page(user, 10, &mut page).ok());
            black_box(store.take_advanced());
        })
    };
    next_page(&mut store, "Store::next_page (size 10, random of 1M users)");
    next_page(&mut mapped, "  the same, items mapped from a snapshot");
    store.journal_progress();
    next_page(&mut store, "  the same, journaled (prefix hash, progress)");
    drop(mapped);
    let _ = std::fs::remove_file(&snap);
}
