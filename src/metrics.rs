//! Per-shard instruments: latency histograms and counters, their snapshots,
//! and how snapshots are rendered (`/stats` JSON, Prometheus text, the
//! shutdown summary).
//!
//! Every shard owns its own [`ShardMetrics`]: recorded with `&mut`, never
//! shared, never locked. A [`Snapshot`] is an owned copy that can cross
//! cores; merging snapshots gives the whole-server view.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::counters::{counters, Field, Kind};
use crate::feed::StoreCounters;
use crate::health::{Health, Phase};
use crate::shard::ShardId;

mod journal;
pub use journal::JournalSnapshot;

/// Histogram range in microseconds: 1 us to 60 s, 3 significant digits.
pub const HIST_LOW_US: u64 = 1;
pub const HIST_HIGH_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("valid histogram bounds")
}

/// What a request was, for its latency and counters: feed requests
/// (`Local`, `Forwarded`) are kept apart from everything else (`Other`), so
/// that health checks and scrapes do not dilute the feed's percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A `/feed/{id}` answered by this shard: it owns the user, or the
    /// request was refused before any owner was asked (`422`, `401`, ...).
    Local,
    /// A `/feed/{id}` sent to the owning shard.
    Forwarded,
    /// Not a feed request: `/healthz`, `/stats`, `/metrics`, `OPTIONS`,
    /// unknown paths, malformed requests, timeouts.
    Other,
}

/// Status class of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    ClientError,
    ServerError,
}

counters! {
    /// Counters of one shard, all monotonic except `open_connections`, which is
    /// filled in when a snapshot is taken (from the shard's connection
    /// registry). A counter is declared here once: its doc's first line is its
    /// help text, and `/stats` and `/metrics` render [`Counters::FIELDS`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Counters {
        /// Answered requests by route (feed: /feed/{id}; other: health, stats, metrics, errors outside /feed) and status class.
        requests_2xx: Status("feed", "2xx"),
        /// Feed requests answered 4xx.
        requests_4xx: Status("feed", "4xx"),
        /// Feed requests answered 5xx.
        requests_5xx: Status("feed", "5xx"),
        /// Other requests (not /feed) answered 2xx.
        other_2xx: Status("other", "2xx"),
        /// Other requests answered 4xx.
        other_4xx: Status("other", "4xx"),
        /// Other requests answered 5xx.
        other_5xx: Status("other", "5xx"),
        /// Requests sent to the shard owning the user.
        forwarded_out: Counter,
        /// Requests received from other shards.
        forwarded_in: Counter,
        /// Feed requests for users another cluster instance owns, answered with fallback items.
        ///
        /// Header `Shardfeed-Degraded: not-owner`; no progress changes.
        misdirected: Counter,
        /// Requests answered 503 because a cross-shard queue was full.
        ///
        /// Also counts a full in-flight table (no ticket for one more forward).
        queue_full: Counter,
        /// Connections accepted.
        connections_accepted: Counter,
        /// Connections answered 503 at the per-shard connection limit.
        refused_connections: Counter,
        /// Connections closed by a deadline: slow request head, idle, stuck write.
        timed_out_connections: Counter,
        /// Connections this shard handed to the shard that owns their user.
        ///
        /// After consecutive requests for that shard's users (SPEC "Beyond one machine"); counted by the shard they left.
        connections_moved: Counter,
        /// Connections open now.
        open_connections: Gauge,
        /// Users in this shard's store.
        feed_users: Gauge,
        /// Personalized items in this shard's store.
        feed_items: Gauge,
        /// Items in the fallback pool (every shard holds the whole pool).
        pool_items: Gauge,
    }
}

impl Counters {
    /// Answered feed requests.
    pub fn requests(&self) -> u64 {
        self.requests_2xx + self.requests_4xx + self.requests_5xx
    }

    /// Answered requests that were not for a feed.
    pub fn other_requests(&self) -> u64 {
        self.other_2xx + self.other_4xx + self.other_5xx
    }
}

/// One shard's live instruments.
pub struct ShardMetrics {
    /// Service time (request parsed -> answer handed to the socket), us.
    pub local: Histogram<u64>,
    pub forwarded: Histogram<u64>,
    /// Requests that were not for a feed ([`Route::Other`]).
    pub other: Histogram<u64>,
    /// Forwarded request sent -> its reply received, us.
    pub round_trip: Histogram<u64>,
    /// Feed service times since the last histogram-log interval (only when
    /// the log is on).
    pub interval: Option<Histogram<u64>>,
    /// Exact sums of recorded service times, us, for Prometheus `_sum`.
    pub local_sum_us: u64,
    pub forwarded_sum_us: u64,
    pub other_sum_us: u64,
    pub counters: Counters,
}

impl ShardMetrics {
    pub fn new(interval_log: bool) -> ShardMetrics {
        ShardMetrics {
            local: new_histogram(),
            forwarded: new_histogram(),
            other: new_histogram(),
            round_trip: new_histogram(),
            interval: interval_log.then(new_histogram),
            local_sum_us: 0,
            forwarded_sum_us: 0,
            other_sum_us: 0,
            counters: Counters::default(),
        }
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&mut self, route: Route, class: Class, us: u64) {
        match route {
            Route::Local => {
                self.local.saturating_record(us);
                self.local_sum_us += us;
            }
            Route::Forwarded => {
                self.forwarded.saturating_record(us);
                self.forwarded_sum_us += us;
            }
            Route::Other => {
                self.other.saturating_record(us);
                self.other_sum_us += us;
                let c = &mut self.counters;
                match class {
                    Class::Success => c.other_2xx += 1,
                    Class::ClientError => c.other_4xx += 1,
                    Class::ServerError => c.other_5xx += 1,
                }
                return;
            }
        }
        if let Some(h) = &mut self.interval {
            h.saturating_record(us);
        }
        let c = &mut self.counters;
        match class {
            Class::Success => c.requests_2xx += 1,
            Class::ClientError => c.requests_4xx += 1,
            Class::ServerError => c.requests_5xx += 1,
        }
    }

    /// Takes the interval histogram, leaving an empty one.
    pub fn take_interval(&mut self) -> Option<Histogram<u64>> {
        let h = self.interval.as_mut()?;
        let taken = h.clone();
        h.reset();
        Some(taken)
    }

    pub fn snapshot(&self, shard: ShardId, store: StoreCounters) -> Snapshot {
        Snapshot {
            shard: Some(shard),
            local: self.local.clone(),
            forwarded: self.forwarded.clone(),
            other: self.other.clone(),
            round_trip: self.round_trip.clone(),
            local_sum_us: self.local_sum_us,
            forwarded_sum_us: self.forwarded_sum_us,
            other_sum_us: self.other_sum_us,
            counters: self.counters,
            store,
            journal: None,
            feed_version: 0,
        }
    }
}

/// An owned copy of one shard's (or several merged shards') instruments.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The shard this snapshot is of; `None` for a merge of several.
    pub shard: Option<ShardId>,
    pub local: Histogram<u64>,
    pub forwarded: Histogram<u64>,
    pub other: Histogram<u64>,
    pub round_trip: Histogram<u64>,
    pub local_sum_us: u64,
    pub forwarded_sum_us: u64,
    pub other_sum_us: u64,
    pub counters: Counters,
    pub store: StoreCounters,
    /// This shard's journal (`--state-dir`); `None` without one, and in a
    /// merge.
    pub journal: Option<Box<JournalSnapshot>>,
    /// The feed version this shard serves (in a merge: the first shard's).
    pub feed_version: u64,
}

impl Snapshot {
    /// Every feed request, local and forwarded.
    pub fn all(&self) -> Histogram<u64> {
        let mut all = self.local.clone();
        all.add(&self.forwarded).expect("same bounds");
        all
    }

    pub fn merge(snapshots: &[Snapshot]) -> Snapshot {
        let mut merged = Snapshot {
            shard: None,
            local: new_histogram(),
            forwarded: new_histogram(),
            other: new_histogram(),
            round_trip: new_histogram(),
            local_sum_us: 0,
            forwarded_sum_us: 0,
            other_sum_us: 0,
            counters: Counters::default(),
            store: StoreCounters::default(),
            journal: None,
            feed_version: snapshots.first().map_or(0, |s| s.feed_version),
        };
        for s in snapshots {
            merged.local.add(&s.local).expect("same bounds");
            merged.forwarded.add(&s.forwarded).expect("same bounds");
            merged.other.add(&s.other).expect("same bounds");
            merged.round_trip.add(&s.round_trip).expect("same bounds");
            merged.local_sum_us += s.local_sum_us;
            merged.forwarded_sum_us += s.forwarded_sum_us;
            merged.other_sum_us += s.other_sum_us;
            merged.counters.add(&s.counters);
            merged.store.add(&s.store);
        }
        merged
    }
}

/// The shard a snapshot is of. Rendering takes one snapshot per shard, never
/// a merge.
fn shard_id(s: &Snapshot) -> usize {
    s.shard.expect("one shard's snapshot, not a merge").0
}

/// The percentiles reported everywhere.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)];

fn latency_json(out: &mut String, h: &Histogram<u64>) {
    let _ = write!(out, "{{\"count\":{}", h.len());
    for (name, q) in PERCENTILES {
        let _ = write!(out, ",\"{name}\":{}", h.value_at_percentile(q));
    }
    let _ = write!(out, ",\"max\":{}}}", h.max());
}

/// `,"name":value` for every counter of a table.
fn counters_json<T>(out: &mut String, fields: &[Field<T>], counters: &T) {
    for f in fields {
        let _ = write!(out, ",\"{}\":{}", f.name, (f.get)(counters));
    }
}

fn snapshot_json(out: &mut String, s: &Snapshot) {
    let all = s.all();
    let latencies = [
        ("latency_us", &all),
        ("local_latency_us", &s.local),
        ("forwarded_latency_us", &s.forwarded),
        ("round_trip_us", &s.round_trip),
        ("other_latency_us", &s.other),
    ];
    for (i, (name, h)) in latencies.into_iter().enumerate() {
        let _ = write!(out, "{}\"{name}\":", if i == 0 { '{' } else { ',' });
        latency_json(out, h);
    }
    let _ = write!(out, ",\"requests\":{}", s.counters.requests());
    counters_json(out, Counters::FIELDS, &s.counters);
    counters_json(out, StoreCounters::FIELDS, &s.store);
    journal::json(out, s);
    out.push('}');
}

/// `/stats`: `{"shards":[{"shard":0,...},...],"all":{...}}`.
pub fn stats_json(snapshots: &[Snapshot]) -> String {
    let mut out = String::with_capacity(1024 * (snapshots.len() + 1));
    let merged = Snapshot::merge(snapshots);
    let _ = write!(
        out,
        "{{\"feed\":{{\"version\":\"{}\",\"users\":{},\"items\":{}}},",
        crate::load::version_id(merged.feed_version),
        merged.counters.feed_users,
        merged.counters.feed_items
    );
    out.push_str("\"shards\":[");
    for (i, s) in snapshots.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"shard\":{},\"stats\":", shard_id(s));
        snapshot_json(&mut out, s);
        out.push('}');
    }
    out.push_str("],\"all\":");
    snapshot_json(&mut out, &merged);
    out.push('}');
    out
}

/// Upper bounds of the Prometheus latency buckets, in seconds.
const BUCKETS_S: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// What `/metrics` says about the process as a whole (no `shard` label).
#[derive(Debug, Clone)]
pub struct Process {
    pub start_time: SystemTime,
    /// `/healthz` answers `200`.
    pub serving: bool,
    pub degraded: Vec<&'static str>,
    pub resident_bytes: Option<u64>,
    /// Reloads (`SIGHUP`): `(ok, failed)`.
    pub reloads: (u64, u64),
}

impl Process {
    /// The process now.
    pub fn now(health: &Health) -> Process {
        Process {
            start_time: health.started(),
            serving: health.phase() == Phase::Serving && health.degraded().is_empty(),
            degraded: health.degraded().into_iter().map(|(s, _)| s).collect(),
            resident_bytes: resident_bytes(),
            reloads: health.reloads(),
        }
    }
}

/// Resident memory, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// `/metrics`: Prometheus text exposition format 0.0.4: a `shard` label on
/// every shard's series, then the process's own.
pub fn prometheus_text(snapshots: &[Snapshot], process: &Process) -> String {
    let mut out = String::with_capacity(4096 * snapshots.len());
    prometheus_counters(&mut out, snapshots, Counters::FIELDS, |s| &s.counters);
    prometheus_counters(&mut out, snapshots, StoreCounters::FIELDS, |s| &s.store);
    journal::prometheus(&mut out, snapshots);

    let name = "request_duration_seconds";
    let help = "Request service time: parsed to answer handed to the socket. route: local and forwarded are /feed requests, other is everything else.";
    family(&mut out, name, help, "histogram");
    for s in snapshots {
        for (route, h, sum_us) in [
            ("local", &s.local, s.local_sum_us),
            ("forwarded", &s.forwarded, s.forwarded_sum_us),
            ("other", &s.other, s.other_sum_us),
        ] {
            let labels = format!("shard=\"{}\",route=\"{route}\"", shard_id(s));
            prometheus_histogram(&mut out, name, &labels, h, sum_us as f64 / 1e6);
        }
    }

    let name = "forward_round_trip_seconds";
    let help = "Forwarded request sent to the owner until its reply is back.";
    family(&mut out, name, help, "histogram");
    for s in snapshots {
        let h = &s.round_trip;
        // The round trip keeps no exact sum: the histogram's mean is within
        // its 0.1 % precision.
        let sum = h.mean() * h.len() as f64 / 1e6;
        let labels = format!("shard=\"{}\"", shard_id(s));
        prometheus_histogram(&mut out, name, &labels, h, sum);
    }
    let help = "Always 1; the feed version each shard serves (two only during a reload).";
    family(&mut out, "feed_info", help, "gauge");
    let mut versions: Vec<u64> = snapshots.iter().map(|s| s.feed_version).collect();
    versions.sort_unstable();
    versions.dedup();
    for v in versions {
        let v = crate::load::version_id(v);
        let _ = writeln!(out, "shardfeed_feed_info{{version=\"{v}\"}} 1");
    }
    prometheus_process(&mut out, process);
    out
}

/// The process's series: build, start time, memory, health.
fn prometheus_process(out: &mut String, p: &Process) {
    let help = "Always 1; the version of the running build.";
    family(out, "build_info", help, "gauge");
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(out, "shardfeed_build_info{{version=\"{version}\"}} 1");
    let help = "1 while /healthz answers 200 (serving, nothing degraded), else 0.";
    family(out, "serving", help, "gauge");
    let _ = writeln!(out, "shardfeed_serving {}", p.serving as u8);
    let help = "1 for each component that reports a problem (/healthz says degraded).";
    family(out, "degraded", help, "gauge");
    for source in &p.degraded {
        let _ = writeln!(out, "shardfeed_degraded{{source=\"{source}\"}} 1");
    }
    let help = "Feed reloads (SIGHUP) by result: ok (the new version serves), failed (the old one still does).";
    family(out, "reloads_total", help, "counter");
    let (ok, failed) = p.reloads;
    let _ = writeln!(out, "shardfeed_reloads_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(out, "shardfeed_reloads_total{{result=\"failed\"}} {failed}");
    let start = p.start_time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP process_start_time_seconds Start time of the process since the epoch, in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.3}",
        start.as_secs_f64()
    );
    if let Some(rss) = p.resident_bytes {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
        );
    }
}

/// One family per counter of a table: `shardfeed_<name>_total` for a
/// [`Kind::Counter`], `shardfeed_<name>` for a [`Kind::Gauge`]. A run of
/// [`Kind::Status`] fields is the one family `shardfeed_requests_total`,
/// labelled `route` and `status`, with the first field's help text.
fn prometheus_counters<T>(
    out: &mut String,
    snapshots: &[Snapshot],
    fields: &[Field<T>],
    counters: fn(&Snapshot) -> &T,
) {
    let one_family = |a: &Field<T>, b: &Field<T>| {
        matches!((a.kind, b.kind), (Kind::Status(..), Kind::Status(..)))
    };
    for members in fields.chunk_by(one_family) {
        let first = &members[0];
        let (name, kind) = match first.kind {
            Kind::Counter => (format!("{}_total", first.name), "counter"),
            Kind::Gauge => (first.name.to_string(), "gauge"),
            Kind::Status(..) => ("requests_total".to_string(), "counter"),
        };
        family(out, &name, first.help, kind);
        for s in snapshots {
            for f in members {
                let _ = write!(out, "shardfeed_{name}{{shard=\"{}\"", shard_id(s));
                if let Kind::Status(route, class) = f.kind {
                    let _ = write!(out, ",route=\"{route}\",status=\"{class}\"");
                }
                let _ = writeln!(out, "}} {}", (f.get)(counters(s)));
            }
        }
    }
}

/// A family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP shardfeed_{name} {help}");
    let _ = writeln!(out, "# TYPE shardfeed_{name} {kind}");
}

/// One histogram's series: cumulative buckets, `_sum` (seconds), `_count`.
fn prometheus_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>, sum: f64) {
    let name = format!("shardfeed_{name}");
    for le in BUCKETS_S {
        let le_us = (le * 1e6) as u64;
        let n = h.count_between(0, le_us);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// A histogram's percentile distribution: the HdrHistogram text layout
/// (`Value Percentile TotalCount 1/(1-Percentile)`, values in us), or TSV
/// rows `tag<TAB>percentile<TAB>value_us`.
pub fn write_distribution(out: &mut String, tag: &str, h: &Histogram<u64>, tsv: bool) {
    if !tsv {
        let _ = writeln!(out, "# {tag}: {} requests, values in microseconds", h.len());
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
    }
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to();
        if tsv {
            let _ = writeln!(out, "{tag}\t{:.6}\t{value}", q * 100.0);
        } else if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:>12} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:>12} {q:>14.12} {total:>10} {:>14}", "inf");
        }
    }
    if !tsv {
        let _ = writeln!(
            out,
            "#[Mean = {:.3}, StdDeviation = {:.3}]\n#[Max = {}, Total count = {}]\n",
            h.mean(),
            h.stdev(),
            h.max(),
            h.len()
        );
    }
}

/// The table printed at shutdown: one row per shard and one for all.
pub fn summary_table(snapshots: &[Snapshot]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "shard", "requests", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    let row = |out: &mut String, name: &str, h: &Histogram<u64>| {
        let _ = writeln!(
            out,
            "{name:<6} {:>12} {:>10} {:>10} {:>10} {:>10}",
            h.len(),
            h.value_at_percentile(50.0),
            h.value_at_percentile(99.0),
            h.value_at_percentile(99.9),
            h.max()
        );
    };
    for s in snapshots {
        row(&mut out, &shard_id(s).to_string(), &s.all());
    }
    row(&mut out, "all", &Snapshot::merge(snapshots).all());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: usize, local: &[u64], forwarded: &[u64]) -> Snapshot {
        let mut m = ShardMetrics::new(true);
        for &us in local {
            m.record(Route::Local, Class::Success, us);
        }
        for &us in forwarded {
            m.record(Route::Forwarded, Class::ServerError, us);
            m.round_trip.saturating_record(us / 2);
        }
        m.counters.forwarded_out = forwarded.len() as u64;
        m.snapshot(
            ShardId(id),
            StoreCounters {
                exhausted_users: id as u64,
                ..Default::default()
            },
        )
    }

    #[test]
    fn records_and_merges() {
        let a = shard(0, &[10, 20, 30], &[100]);
        let b = shard(1, &[1000], &[]);
        assert_eq!((a.shard, b.shard), (Some(ShardId(0)), Some(ShardId(1))));
        assert_eq!(a.counters.requests(), 4);
        assert_eq!((a.counters.requests_2xx, a.counters.requests_5xx), (3, 1));
        assert_eq!(a.local_sum_us, 60);
        let all = Snapshot::merge(&[a, b]);
        assert_eq!(all.shard, None);
        assert_eq!(all.all().len(), 5);
        assert_eq!(all.all().max(), 1000);
        assert_eq!(all.store.exhausted_users, 1);
        assert_eq!(all.counters.forwarded_out, 1);
    }

    #[test]
    fn saturates_instead_of_failing() {
        let mut m = ShardMetrics::new(false);
        m.record(Route::Local, Class::Success, u64::MAX);
        m.record(Route::Local, Class::Success, 0);
        assert_eq!(m.local.len(), 2);
        assert!(m.take_interval().is_none());
    }

    #[test]
    fn interval_is_taken_and_reset() {
        let mut m = ShardMetrics::new(true);
        m.record(Route::Local, Class::Success, 5);
        assert_eq!(m.take_interval().unwrap().len(), 1);
        assert_eq!(m.take_interval().unwrap().len(), 0);
        assert_eq!(m.local.len(), 1, "the cumulative histogram keeps counting");
    }

    #[test]
    fn stats_json_has_shards_and_all() {
        let json = stats_json(&[shard(0, &[10, 20], &[]), shard(1, &[30], &[40])]);
        assert!(
            json.starts_with(
                "{\"feed\":{\"version\":\"0000000000000000\",\"users\":0,\"items\":0},\
                 \"shards\":[{\"shard\":0,\"stats\":{\"latency_us\":{\"count\":2,"
            ),
            "{json}"
        );
        assert!(
            json.contains("\"all\":{\"latency_us\":{\"count\":4,"),
            "{json}"
        );
        assert!(json.contains("\"forwarded_out\":1"), "{json}");
    }

    /// Every counter of both tables is in `/stats` and in `/metrics`, per
    /// shard, with its value and (in `/metrics`) its help text.
    #[test]
    fn every_counter_is_rendered_per_shard() {
        let mut snapshots = [shard(0, &[10], &[20]), shard(1, &[30], &[])];
        snapshots[1].counters.open_connections = 3;
        snapshots[1].store.fallback_items = 4;
        let json: serde_json::Value = serde_json::from_str(&stats_json(&snapshots)).unwrap();
        let text = prometheus_text(&snapshots, &process());
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid exposition text");
        let check = |name: &str, help: &str, kind: Kind, value: &dyn Fn(&Snapshot) -> u64| {
            let (series, status) = match kind {
                Kind::Counter => (format!("shardfeed_{name}_total"), None),
                Kind::Gauge => (format!("shardfeed_{name}"), None),
                Kind::Status(route, class) => {
                    ("shardfeed_requests_total".to_string(), Some((route, class)))
                }
            };
            if status.is_none() || name == "requests_2xx" {
                assert_eq!(scrape.docs.get(&series[..]).map(|d| &d[..]), Some(help));
            }
            for (i, s) in snapshots.iter().enumerate() {
                assert_eq!(json["shards"][i]["stats"][name], value(s), "{name}");
                let shard = i.to_string();
                let found: Vec<_> = scrape
                    .samples
                    .iter()
                    .filter(|x| x.metric == series && x.labels.get("shard") == Some(&shard))
                    .filter(|x| {
                        status.is_none_or(|(route, class)| {
                            x.labels.get("route") == Some(route)
                                && x.labels.get("status") == Some(class)
                        })
                    })
                    .collect();
                assert_eq!(found.len(), 1, "{series} {shard} {status:?}");
                let (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) =
                    found[0].value
                else {
                    panic!("{series}: {:?}", found[0].value);
                };
                assert_eq!(v, value(s) as f64, "{series} {shard}");
            }
            let merged = Snapshot::merge(&snapshots);
            assert_eq!(json["all"][name], value(&merged), "{name}");
        };
        for f in Counters::FIELDS {
            check(f.name, f.help, f.kind, &|s| (f.get)(&s.counters));
        }
        for f in StoreCounters::FIELDS {
            check(f.name, f.help, f.kind, &|s| (f.get)(&s.store));
        }
        assert_eq!(json["all"]["requests"], 3);
        assert_eq!(json["all"]["open_connections"], 3);
        assert_eq!(json["all"]["fallback_items"], 4);
    }

    #[test]
    fn prometheus_buckets_are_cumulative() {
        let text = prometheus_text(&[shard(0, &[40, 90, 2000], &[])], &process());
        let bucket = |le: &str| -> u64 {
            let key = format!("shardfeed_request_duration_seconds_bucket{{shard=\"0\",route=\"local\",le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&key)).unwrap();
            line[key.len()..].parse().unwrap()
        };
        assert_eq!(bucket("0.00005"), 1);
        assert_eq!(bucket("0.0001"), 2);
        assert_eq!(bucket("0.001"), 2);
        assert_eq!(bucket("0.0025"), 3);
        assert_eq!(bucket("+Inf"), 3);
        assert!(text.contains(
            "shardfeed_request_duration_seconds_sum{shard=\"0\",route=\"local\"} 0.00213"
        ));
    }

    fn process() -> Process {
        Process {
            start_time: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250),
            serving: false,
            degraded: vec!["journal"],
            resident_bytes: Some(4096),
            reloads: (2, 1),
        }
    }

    #[test]
    fn other_requests_are_kept_out_of_the_feed() {
        let mut m = ShardMetrics::new(true);
        m.record(Route::Local, Class::Success, 10);
        m.record(Route::Other, Class::Success, 5000);
        m.record(Route::Other, Class::ClientError, 7000);
        let s = m.snapshot(ShardId(0), StoreCounters::default());
        assert_eq!((s.all().len(), s.all().max()), (1, 10));
        assert_eq!(m.take_interval().unwrap().len(), 1, "the log is the feed's");
        assert_eq!((s.counters.requests(), s.counters.other_requests()), (1, 2));
        let text = prometheus_text(&[s], &process());
        for line in [
            "shardfeed_requests_total{shard=\"0\",route=\"feed\",status=\"2xx\"} 1",
            "shardfeed_requests_total{shard=\"0\",route=\"other\",status=\"4xx\"} 1",
            "shardfeed_request_duration_seconds_count{shard=\"0\",route=\"other\"} 2",
            "shardfeed_request_duration_seconds_count{shard=\"0\",route=\"local\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn process_series() {
        let text = prometheus_text(&[], &process());
        let build = format!(
            "shardfeed_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            build.as_str(),
            "shardfeed_serving 0",
            "shardfeed_degraded{source=\"journal\"} 1",
            "process_start_time_seconds 1700000000.250",
            "process_resident_memory_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())));
        assert!(scrape.is_ok());
        assert!(resident_bytes().unwrap() > 1 << 20);
    }

    #[test]
    fn distribution_ends_at_the_max() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let mut tsv = String::new();
        write_distribution(&mut tsv, "shard-0", &h, true);
        let last = tsv.lines().last().unwrap();
        assert!(last.starts_with("shard-0\t100.000000\t"), "{last}");
        let mut text = String::new();
        write_distribution(&mut text, "shard-0", &h, false);
        assert!(text.contains("#[Max = 1000, Total count = 1000]"), "{text}");
    }

    #[test]
    fn summary_has_a_row_per_shard_and_all() {
        let table = summary_table(&[shard(0, &[10], &[]), shard(1, &[20], &[])]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("shard"));
        assert!(lines[3].starts_with("all"));
    }
}
