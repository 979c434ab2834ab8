//! shardfeed: a thread-per-core recommendation-feed server on glommio.
//!
//! # Layout
//!
//! The path of one `GET /feed/42`, in the order it runs:
//! - [`conn`]: the connection's socket loop: read bytes into its session,
//!   write the answers back, keep deadlines; move the connection to the
//!   shard that owns its user when its session asks.
//! - [`session`]: the connection's protocol state: decode each request,
//!   answer it or ask the shards, keep answers in request order.
//! - [`http`]: bytes on the wire: request heads in (`http/decode.rs`),
//!   answers out (`http/encode.rs`). Knows no shards.
//! - [`shard`]: cores, ownership and forwarding: ask the local store if this
//!   shard owns the user, else send to the owner and wait. Knows no bytes.
//! - [`feed`]: one shard's store: users, items, progress, the fallback pool.
//!   No I/O, no locks, no idea that other shards exist. Its index is
//!   [`user_table`].
//!
//! A local page runs through those five modules (six files: `http` decodes
//! in one and encodes in another), calling only leaf helpers besides
//! ([`decimal`], [`hash`], [`cursor`], [`user_table`], [`metrics`]); a
//! forwarded page adds the forwarding parts of [`shard`]
//! (`shard/tickets.rs` on the origin) and nothing else.
//!
//! Around the path:
//! - [`server`]: start-up (bind, load, one executor per shard), supervision,
//!   drain and shutdown; [`server::start`] is the seam that tests run
//!   servers through. `server/loading.rs` answers `503 loading` on the
//!   bound ports while the feeds load; `server/reload.rs` reads the feeds
//!   again on `SIGHUP`, and each shard takes its new store between two
//!   requests (`shard/succession.rs`), carrying its users' progress by the
//!   prefix rule (`feed/carry.rs`).
//! - [`journal`]: progress that survives restarts: one journal per shard
//!   and checkpoints under `--state-dir` (files and bytes; no HTTP, no
//!   store), and the start-up recovery that reads them.
//! - [`load`]: feed and fallback files into stores, in parallel per shard
//!   (`load/parquet.rs`: Parquet feeds, by row group on the same threads);
//!   [`synthetic`]: the embedded default data set; [`snapshot`]: the
//!   snapshot format of `shardfeed pack`, mapped by each shard for its own
//!   users; [`mapped`]: the read-only file mappings (unmapped on drop)
//!   that a store's items can live in.
//! - [`metrics`]: per-shard histograms and counters; `/stats`, `/metrics`
//!   and the summary. [`histlog`]: the HdrHistogram interval log.
//! - [`health`]: the process's health for `/healthz` (loading, serving,
//!   draining, degraded with a reason); components report problems there.
//! - [`auth`]: `--jwt-secret`: HS256 bearer tokens for `/feed`, checked
//!   once per connection and token.
//! - [`log`]: timestamped, rate-limited log lines on stderr.
//! - [`watchdog`]: connection deadlines without a timer per request.
//! - [`cluster`]: the cluster file (`serve --cluster`) and the one
//!   ownership function over all (instance, shard) pairs, the same as the
//!   generated nginx front's; [`nginx`]: that front (`nginx-conf`).
//!   `server/ports.rs` binds each shard's own port. [`relayout`]: the
//!   old instances' state directories rewritten for a new cluster file
//!   (`shardfeed relayout`), through the journal's recovery and
//!   `journal/seed.rs`.
//! - [`host`]: checks of the host (io_uring, `ulimit -l`, CPUs); [`cli`]:
//!   the command line.
//! - [`counters`]: the macro that declares a counter struct once (fields,
//!   merging, the table `/stats` and `/metrics` render from).
//! - [`decimal`], [`hash`]: the one decimal parser and the one mixer.
//! - [`cursor`]: the `Feed-Cursor` token of retry-safe pages (its format
//!   only; the store decides what a cursor serves).
//! - [`uring`]: **the process's io_uring setup is intercepted.** `build.rs`
//!   links the binary, tests and benches with
//!   `-Wl,--wrap=__sys_io_uring_setup`, so every ring glommio's bundled
//!   liburing creates goes through `uring::__wrap___sys_io_uring_setup`,
//!   which adds `IORING_SETUP_COOP_TASKRUN` (no IPI per completion). No
//!   other call is redirected; crates linking shardfeed as a library do
//!   not get the wrap.
//! - `testing` (feature `testing`, and this crate's tests): a session over
//!   one store without sockets, and the oracle of the property and fuzz
//!   tests.
//!
//! Error policy: hot code returns small `Copy` enums ([`http::HttpError`],
//! [`feed::Unserved`]); start-up code returns a `String` that tells the
//! operator what to change, printed once by `main`.

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod conn;
pub mod counters;
pub mod cursor;
pub mod decimal;
pub mod feed;
pub mod hash;
pub mod health;
pub mod histlog;
pub mod host;
pub mod http;
pub mod journal;
pub mod load;
pub mod log;
pub mod mapped;
pub mod metrics;
pub mod nginx;
pub mod relayout;
pub mod server;
pub mod session;
pub mod shard;
pub mod snapshot;
pub mod synthetic;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod uring;
pub mod user_table;
pub mod watchdog;
