//! The journal's part of `/stats` and `/metrics`: per shard, what its
//! journal wrote and synced, how long syncs took, how old its last
//! checkpoint is, and how long the start-up replay took.

use std::fmt::Write as _;
use std::time::Duration;

use super::{family, latency_json, prometheus_histogram, shard_id, Snapshot};
use crate::journal::JournalStats;

/// One shard's journal, as a snapshot carries it.
#[derive(Debug, Clone)]
pub struct JournalSnapshot {
    pub stats: JournalStats,
    /// Reading the state directory at start, plus restoring this shard's
    /// users into its store.
    pub replay: Duration,
}

/// A journal counter or gauge: Prometheus name, help, kind, value.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&JournalSnapshot) -> f64,
);

const SERIES: [Series; 9] = [
    (
        "journal_bytes_total",
        "Bytes written to journal segments, padding included.",
        "counter",
        |j| j.stats.bytes as f64,
    ),
    (
        "journal_records_total",
        "Progress records written to the journal.",
        "counter",
        |j| j.stats.records as f64,
    ),
    (
        "journal_syncs_total",
        "fdatasyncs that made journal records durable.",
        "counter",
        |j| j.stats.syncs as f64,
    ),
    (
        "journal_errors_total",
        "Failed journal writes, syncs, segment creations and checkpoints.",
        "counter",
        |j| j.stats.errors as f64,
    ),
    (
        "journal_dropped_records_total",
        "Records dropped because writes kept failing (a checkpoint restores them).",
        "counter",
        |j| j.stats.dropped as f64,
    ),
    (
        "journal_queued_records",
        "Records appended and not yet durable.",
        "gauge",
        |j| j.stats.queued as f64,
    ),
    (
        "journal_degraded",
        "1 while the journal cannot write or sync (see /healthz), else 0.",
        "gauge",
        |j| j.stats.degraded.is_some() as u8 as f64,
    ),
    (
        "journal_last_checkpoint_age_seconds",
        "Seconds since this run's last checkpoint (-1: none yet).",
        "gauge",
        |j| {
            j.stats
                .last_checkpoint_age
                .map_or(-1.0, |a| a.as_secs_f64())
        },
    ),
    (
        "journal_replay_seconds",
        "Start-up: reading the state directory and restoring this shard's users.",
        "gauge",
        |j| j.replay.as_secs_f64(),
    ),
];

/// `,"journal":{...}` for one shard's `/stats` entry (nothing without one).
pub(super) fn json(out: &mut String, s: &Snapshot) {
    let Some(j) = &s.journal else {
        return;
    };
    let st = &j.stats;
    let _ = write!(
        out,
        ",\"journal\":{{\"policy\":\"{}\",\"bytes\":{},\"records\":{},\"syncs\":{},\"errors\":{},\
         \"dropped\":{},\"queued\":{},\"segments\":{},\"checkpoints\":{},",
        st.policy,
        st.bytes,
        st.records,
        st.syncs,
        st.errors,
        st.dropped,
        st.queued,
        st.segments,
        st.checkpoints
    );
    match st.last_checkpoint_age {
        Some(age) => {
            let _ = write!(out, "\"last_checkpoint_age_s\":{:.3},", age.as_secs_f64());
        }
        None => out.push_str("\"last_checkpoint_age_s\":null,"),
    }
    let _ = write!(
        out,
        "\"replay_s\":{:.3},\"degraded\":",
        j.replay.as_secs_f64()
    );
    match &st.degraded {
        // Error texts come from the OS: escaped as JSON strings.
        Some(why) => out.push_str(&serde_json::to_string(why).expect("a string")),
        None => out.push_str("null"),
    }
    out.push_str(",\"sync_latency_us\":");
    latency_json(out, &st.sync_latency_us);
    out.push('}');
}

/// The journal's series, one per shard that keeps one.
pub(super) fn prometheus(out: &mut String, snapshots: &[Snapshot]) {
    let journals: Vec<(usize, &JournalSnapshot)> = snapshots
        .iter()
        .filter_map(|s| s.journal.as_deref().map(|j| (shard_id(s), j)))
        .collect();
    if journals.is_empty() {
        return;
    }
    for (name, help, kind, get) in SERIES {
        family(out, name, help, kind);
        for (shard, j) in &journals {
            let _ = writeln!(out, "shardfeed_{name}{{shard=\"{shard}\"}} {}", get(j));
        }
    }
    let name = "journal_sync_duration_seconds";
    family(
        out,
        name,
        "Latency of the journal's fdatasyncs.",
        "histogram",
    );
    for (shard, j) in &journals {
        let h = &j.stats.sync_latency_us;
        let sum = h.mean() * h.len() as f64 / 1e6;
        prometheus_histogram(out, name, &format!("shard=\"{shard}\""), h, sum);
    }
}
