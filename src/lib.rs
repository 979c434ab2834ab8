//! shardfeed: a thread-per-core recommendation-feed server on glommio.
//!
//! # Layout
//! - [`feed`]: one shard's store: users, items, progress, fallback pool. No I/O, no locks.
//!   [`user_table`] is its index: user id -> items and progress, one slot each.
//! - [`data`]: synthetic feeds, the feed and fallback files, item counts for the pool.
//! - [`http`]: bytes to requests and answers to bytes (httparse, itoa). Knows no shards.
//! - [`shard`]: ownership (`owner_of`), cross-core channels, forwarding. Knows no bytes.
//! - [`metrics`]: per-shard histograms and counters; `/stats`, `/metrics` and summary rendering.
//! - [`answer`]: the socket-free answer loop: decode, answer or forward, keep order.
//! - [`conn`]: one client connection on its socket: read, answer, write; deadlines, bounds.
//! - [`watchdog`]: connection deadlines (slow head, idle, stuck write) without per-request timers.
//! - [`server`]: start-up (bind, load, executors) and supervision.
//! - [`hash`]: `mix64`, the mixer behind ownership, synthetic data and the user table.
//! - [`histlog`]: the HdrHistogram interval log (writer thread, reader).
//! - [`host`]: checks of the host (io_uring, `ulimit -l`, CPUs).
//! - [`uring`]: io_uring rings without an IPI per completion (COOP_TASKRUN for glommio's rings).
//! - [`cli`]: the command line.
//!
//! Error policy: hot code returns small enums (`http::HttpError`,
//! `feed::PageError`, `shard::Unserved`); start-up code returns a `String`
//! that tells the operator what to change, printed once by `main`.

pub mod answer;
pub mod cli;
pub mod conn;
pub mod data;
pub mod feed;
pub mod hash;
pub mod histlog;
pub mod host;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod server;
pub mod shard;
pub mod uring;
pub mod user_table;
pub mod watchdog;
