//! The cross-shard round trip: `cargo bench --bench cross_shard`.
//!
//! Two pinned shards wired exactly as the server wires them
//! (`shard::make_links`, `shard::start`); shard 0 asks for pages of users it
//! owns (local) and of users shard 1 owns (forwarded):
//! - one at a time: every forwarded request waits for its answer, so the
//!   owner parks between requests and each request pays a wake-up;
//! - 256 in flight: the owner stays busy (saturation), messages/s.
//!
//! CPU per request is the process's user + system time (both shards) over the
//! requests; the difference between forwarded and local is what forwarding
//! costs. Prints numbers only. The rings are made as the server makes them
//! (COOP_TASKRUN, `src/uring.rs`); set `SHARDFEED_NO_COOP=1` to compare
//! against glommio's default rings.

use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shardfeed::feed::Pool;
use shardfeed::metrics::ShardMetrics;
use shardfeed::session::{PageAsk, Pending};
use shardfeed::shard::{self, owner_of, ShardId, ShardParts, MAX_IN_FLIGHT};
use shardfeed::synthetic::{self, Synthetic};

const SHARDS: usize = 2;
const SPEC: Synthetic = Synthetic {
    users: 20_000,
    feed_len: 200,
    items: 1_000_000,
    seed: 42,
};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only `usage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn report(name: &str, n: usize, wall: Duration, cpu: f64) {
    println!(
        "{name:<40} {:>10.0} req/s {:>9.2} us wall/req {:>9.2} us CPU/req",
        n as f64 / wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / n as f64,
        cpu * 1e6 / n as f64
    );
}

fn main() {
    if std::env::var_os("SHARDFEED_NO_COOP").is_none() {
        shardfeed::uring::enable_coop_taskrun();
    }
    let cpus: Vec<usize> = shardfeed::host::available_cpus();
    let cpu_of = |i: usize| cpus[i % cpus.len()];
    let mut links = shard::make_links(SHARDS).into_iter();
    let mut handles = Vec::new();
    for i in 0..SHARDS {
        let links = links.next().unwrap();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu_of(i)))
            .name(&format!("bench-shard-{i}"))
            .io_memory(128 * 1024)
            .spawn(move || async move {
                let owns = |u| owner_of(u, SHARDS) == ShardId(i);
                let store = synthetic::synthetic_store(&SPEC, owns).build(Pool::new(0..50));
                let me = shard::start(ShardParts {
                    id: ShardId(i),
                    shards: SHARDS,
                    cluster: None,
                    store,
                    max_size: 100,
                    max_in_flight: MAX_IN_FLIGHT,
                    metrics: ShardMetrics::new(false),
                    links,
                    journal: None,
                    move_after: 0,
                })
                .await
                .expect("a shard");
                let ask = |user| PageAsk {
                    user,
                    size: 10,
                    peek: false,
                    cursor: None,
                };
                if i != 0 {
                    // The owner only answers; the process exits when shard 0
                    // is done.
                    return std::future::pending::<()>().await;
                }
                let local: Vec<u32> = SPEC.user_ids().filter(|&u| owns(u)).collect();
                let remote: Vec<u32> = SPEC.user_ids().filter(|&u| !owns(u)).collect();
                let take = |users: &[u32], k: usize| users[k % users.len()];

                // Local pages.
                let n = 200_000;
                let (t, c) = (Instant::now(), cpu_seconds());
                for k in 0..n {
                    match me.page(ask(take(&local, k)), Instant::now()) {
                        Pending::Ready(page) if page.outcome.is_ok() => me.recycle(page.items),
                        _ => panic!("a local page"),
                    }
                }
                report("local", n, t.elapsed(), cpu_seconds() - c);

                // Forwarded, one at a time: each pays the owner's wake-up.
                let n = 20_000;
                let (t, c) = (Instant::now(), cpu_seconds());
                for k in 0..n {
                    let Pending::Forwarded(ticket) = me.page(ask(take(&remote, k)), Instant::now())
                    else {
                        panic!("a forwarded page");
                    };
                    me.recycle(ticket.await.items);
                }
                report(
                    "forwarded, one at a time",
                    n,
                    t.elapsed(),
                    cpu_seconds() - c,
                );

                // Forwarded, 256 in flight: the owner stays awake.
                let (n, batch) = (400_000, 256);
                let (t, c) = (Instant::now(), cpu_seconds());
                let mut tickets = Vec::with_capacity(batch);
                for k in 0..n / batch {
                    for j in 0..batch {
                        let user = take(&remote, k * batch + j);
                        match me.page(ask(user), Instant::now()) {
                            Pending::Forwarded(ticket) => tickets.push(ticket),
                            Pending::Ready(_) | Pending::Durable(_) => panic!("a forwarded page"),
                        }
                    }
                    for ticket in tickets.drain(..) {
                        me.recycle(ticket.await.items);
                    }
                }
                report(
                    "forwarded, 256 in flight",
                    n,
                    t.elapsed(),
                    cpu_seconds() - c,
                );
                println!("{}", shardfeed::uring::report());
                std::process::exit(0);
            })
            .expect("start a shard");
        handles.push(handle);
    }
    for h in handles {
        let _ = h.join();
    }
}
