//! Per-shard instruments: latency histograms and counters, their snapshots,
//! and how snapshots are rendered (`/stats` JSON, Prometheus text, the
//! shutdown summary).
//!
//! Every shard owns its own [`ShardMetrics`]: recorded with `&mut`, never
//! shared, never locked. A [`Snapshot`] is an owned copy that can cross
//! cores; merging snapshots gives the whole-server view.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::counters::counters;
use crate::feed::StoreCounters;

/// Histogram range in microseconds: 1 us to 60 s, 3 significant digits.
pub const HIST_LOW_US: u64 = 1;
pub const HIST_HIGH_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("valid histogram bounds")
}

/// How a feed request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This shard owns the user, or the request needed no user (health,
    /// errors, stats).
    Local,
    /// Sent to the owning shard.
    Forwarded,
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
        /// Answered requests by status class.
        requests_2xx: Status("2xx"),
        /// Answered requests by status class.
        requests_4xx: Status("4xx"),
        /// Answered requests by status class.
        requests_5xx: Status("5xx"),
        /// Requests sent to the shard owning the user.
        forwarded_out: Counter,
        /// Requests received from other shards.
        forwarded_in: Counter,
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
        /// Connections open now.
        open_connections: Gauge,
    }
}

impl Counters {
    pub fn requests(&self) -> u64 {
        self.requests_2xx + self.requests_4xx + self.requests_5xx
    }
}

/// One shard's live instruments.
pub struct ShardMetrics {
    /// Service time (request parsed -> answer handed to the socket), us.
    pub local: Histogram<u64>,
    pub forwarded: Histogram<u64>,
    /// Forwarded request sent -> its reply received, us.
    pub round_trip: Histogram<u64>,
    /// All service times since the last histogram-log interval (only when
    /// the log is on).
    pub interval: Option<Histogram<u64>>,
    /// Exact sums of recorded service times, us, for Prometheus `_sum`.
    pub local_sum_us: u64,
    pub forwarded_sum_us: u64,
    pub counters: Counters,
}

impl ShardMetrics {
    pub fn new(interval_log: bool) -> ShardMetrics {
        ShardMetrics {
            local: new_histogram(),
            forwarded: new_histogram(),
            round_trip: new_histogram(),
            interval: interval_log.then(new_histogram),
            local_sum_us: 0,
            forwarded_sum_us: 0,
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

    pub fn snapshot(&self, shard: usize, store: StoreCounters) -> Snapshot {
        Snapshot {
            shard: Some(shard),
            local: self.local.clone(),
            forwarded: self.forwarded.clone(),
            round_trip: self.round_trip.clone(),
            local_sum_us: self.local_sum_us,
            forwarded_sum_us: self.forwarded_sum_us,
            counters: self.counters,
            store,
        }
    }
}

/// An owned copy of one shard's (or several merged shards') instruments.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The shard this snapshot is of; `None` for a merge of several.
    pub shard: Option<usize>,
    pub local: Histogram<u64>,
    pub forwarded: Histogram<u64>,
    pub round_trip: Histogram<u64>,
    pub local_sum_us: u64,
    pub forwarded_sum_us: u64,
    pub counters: Counters,
    pub store: StoreCounters,
}

impl Snapshot {
    /// Every request, local and forwarded.
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
            round_trip: new_histogram(),
            local_sum_us: 0,
            forwarded_sum_us: 0,
            counters: Counters::default(),
            store: StoreCounters::default(),
        };
        for s in snapshots {
            merged.local.add(&s.local).expect("same bounds");
            merged.forwarded.add(&s.forwarded).expect("same bounds");
            merged.round_trip.add(&s.round_trip).expect("same bounds");
            merged.local_sum_us += s.local_sum_us;
            merged.forwarded_sum_us += s.forwarded_sum_us;
            merged.counters.add(&s.counters);
            merged.store.add(&s.store);
        }
        merged
    }
}

/// The shard a snapshot is of. Rendering takes one snapshot per shard, never
/// a merge.
fn shard_id(s: &Snapshot) -> usize {
    s.shard.expect("one shard's snapshot, not a merge")
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

fn snapshot_json(out: &mut String, s: &Snapshot) {
    let c = &s.counters;
    let st = &s.store;
    out.push_str("{\"latency_us\":");
    latency_json(out, &s.all());
    out.push_str(",\"local_latency_us\":");
    latency_json(out, &s.local);
    out.push_str(",\"forwarded_latency_us\":");
    latency_json(out, &s.forwarded);
    out.push_str(",\"round_trip_us\":");
    latency_json(out, &s.round_trip);
    let _ = write!(
        out,
        ",\"requests\":{},\"requests_2xx\":{},\"requests_4xx\":{},\"requests_5xx\":{},\
         \"forwarded_out\":{},\"forwarded_in\":{},\"queue_full\":{},\
         \"personalized_items\":{},\"fallback_items\":{},\"unknown_users\":{},\
         \"exhausted_users\":{},\"nothing_to_serve\":{},\
         \"connections_accepted\":{},\"refused_connections\":{},\
         \"timed_out_connections\":{},\"open_connections\":{}}}",
        c.requests(),
        c.requests_2xx,
        c.requests_4xx,
        c.requests_5xx,
        c.forwarded_out,
        c.forwarded_in,
        c.queue_full,
        st.personalized_items,
        st.fallback_items,
        st.unknown_users,
        st.exhausted_users,
        st.nothing_to_serve,
        c.connections_accepted,
        c.refused_connections,
        c.timed_out_connections,
        c.open_connections,
    );
}

/// `/stats`: `{"shards":[{"shard":0,...},...],"all":{...}}`.
pub fn stats_json(snapshots: &[Snapshot]) -> String {
    let mut out = String::with_capacity(1024 * (snapshots.len() + 1));
    out.push_str("{\"shards\":[");
    for (i, s) in snapshots.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"shard\":{},\"stats\":", shard_id(s));
        snapshot_json(&mut out, s);
        out.push('}');
    }
    out.push_str("],\"all\":");
    snapshot_json(&mut out, &Snapshot::merge(snapshots));
    out.push('}');
    out
}

/// Upper bounds of the Prometheus latency buckets, in seconds.
const BUCKETS_S: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// `/metrics`: Prometheus text exposition format 0.0.4, a `shard` label on
/// every series.
pub fn prometheus_text(snapshots: &[Snapshot]) -> String {
    let mut out = String::with_capacity(4096 * snapshots.len());
    let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(&Snapshot) -> u64| {
        let _ = writeln!(out, "# HELP shardfeed_{name} {help}");
        let _ = writeln!(out, "# TYPE shardfeed_{name} counter");
        for s in snapshots {
            let _ = writeln!(
                out,
                "shardfeed_{name}{{shard=\"{}\"}} {}",
                shard_id(s),
                get(s)
            );
        }
    };
    let _ = writeln!(
        out,
        "# HELP shardfeed_requests_total Answered requests by status class."
    );
    let _ = writeln!(out, "# TYPE shardfeed_requests_total counter");
    for s in snapshots {
        let c = &s.counters;
        for (class, n) in [
            ("2xx", c.requests_2xx),
            ("4xx", c.requests_4xx),
            ("5xx", c.requests_5xx),
        ] {
            let _ = writeln!(
                out,
                "shardfeed_requests_total{{shard=\"{}\",status=\"{class}\"}} {n}",
                shard_id(s)
            );
        }
    }
    counter(
        &mut out,
        "forwarded_out_total",
        "Requests sent to the shard owning the user.",
        &|s| s.counters.forwarded_out,
    );
    counter(
        &mut out,
        "forwarded_in_total",
        "Requests received from other shards.",
        &|s| s.counters.forwarded_in,
    );
    counter(
        &mut out,
        "queue_full_total",
        "Requests answered 503 because a cross-shard queue was full.",
        &|s| s.counters.queue_full,
    );
    counter(
        &mut out,
        "personalized_items_total",
        "Personalized items served.",
        &|s| s.store.personalized_items,
    );
    counter(
        &mut out,
        "fallback_items_total",
        "Fallback pool items served.",
        &|s| s.store.fallback_items,
    );
    counter(
        &mut out,
        "unknown_users_total",
        "Page requests for users not in the feeds.",
        &|s| s.store.unknown_users,
    );
    counter(
        &mut out,
        "exhausted_users_total",
        "Users whose personalized feed ran out.",
        &|s| s.store.exhausted_users,
    );
    counter(
        &mut out,
        "nothing_to_serve_total",
        "Page requests answered 503: nothing left to serve.",
        &|s| s.store.nothing_to_serve,
    );
    counter(
        &mut out,
        "connections_accepted_total",
        "Connections accepted.",
        &|s| s.counters.connections_accepted,
    );
    counter(
        &mut out,
        "refused_connections_total",
        "Connections answered 503 at the per-shard connection limit.",
        &|s| s.counters.refused_connections,
    );
    counter(
        &mut out,
        "timed_out_connections_total",
        "Connections closed by a deadline: slow request head, idle, stuck write.",
        &|s| s.counters.timed_out_connections,
    );
    let _ = writeln!(
        out,
        "# HELP shardfeed_open_connections Connections open now."
    );
    let _ = writeln!(out, "# TYPE shardfeed_open_connections gauge");
    for s in snapshots {
        let _ = writeln!(
            out,
            "shardfeed_open_connections{{shard=\"{}\"}} {}",
            shard_id(s),
            s.counters.open_connections
        );
    }

    let _ = writeln!(
        out,
        "# HELP shardfeed_request_duration_seconds Request service time: parsed to answer handed to the socket."
    );
    let _ = writeln!(out, "# TYPE shardfeed_request_duration_seconds histogram");
    for s in snapshots {
        for (route, h, sum_us) in [
            ("local", &s.local, s.local_sum_us),
            ("forwarded", &s.forwarded, s.forwarded_sum_us),
        ] {
            let labels = format!("shard=\"{}\",route=\"{route}\"", shard_id(s));
            prometheus_buckets(&mut out, "shardfeed_request_duration_seconds", &labels, h);
            let _ = writeln!(
                out,
                "shardfeed_request_duration_seconds_sum{{{labels}}} {}",
                sum_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "shardfeed_request_duration_seconds_count{{{labels}}} {}",
                h.len()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardfeed_forward_round_trip_seconds Forwarded request sent to the owner until its reply is back."
    );
    let _ = writeln!(out, "# TYPE shardfeed_forward_round_trip_seconds histogram");
    for s in snapshots {
        let labels = format!("shard=\"{}\"", shard_id(s));
        let h = &s.round_trip;
        prometheus_buckets(&mut out, "shardfeed_forward_round_trip_seconds", &labels, h);
        // The round trip keeps no exact sum: the histogram's mean is within
        // its 0.1 % precision.
        let sum = h.mean() * h.len() as f64 / 1e6;
        let _ = writeln!(
            out,
            "shardfeed_forward_round_trip_seconds_sum{{{labels}}} {sum}"
        );
        let _ = writeln!(
            out,
            "shardfeed_forward_round_trip_seconds_count{{{labels}}} {}",
            h.len()
        );
    }
    out
}

fn prometheus_buckets(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    for le in BUCKETS_S {
        let le_us = (le * 1e6) as u64;
        let n = h.count_between(0, le_us);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
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
            id,
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
        assert_eq!((a.shard, b.shard), (Some(0), Some(1)));
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
            json.starts_with("{\"shards\":[{\"shard\":0,\"stats\":{\"latency_us\":{\"count\":2,")
        );
        assert!(
            json.contains("\"all\":{\"latency_us\":{\"count\":4,"),
            "{json}"
        );
        assert!(json.contains("\"forwarded_out\":1"), "{json}");
    }

    #[test]
    fn prometheus_buckets_are_cumulative() {
        let text = prometheus_text(&[shard(0, &[40, 90, 2000], &[])]);
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
