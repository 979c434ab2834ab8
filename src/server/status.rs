//! What a running server reports while it runs: the `--log-interval` status
//! line (shards send snapshots, the supervisor prints the difference) and
//! the `--histogram-log` intervals (shards send their interval histograms
//! to the log's writer thread).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::Event;
use crate::histlog::Interval;
use crate::metrics::Snapshot;
use crate::shard::Shard;

/// Sends a snapshot to the supervisor every `every`, for the status line.
pub(super) async fn send_status(shard: Rc<Shard>, events: mpsc::Sender<Event>, every: Duration) {
    while !shard.stopping() {
        glommio::timer::sleep(every).await;
        let _ = events.send(Event::Status(Box::new(shard.snapshot())));
    }
}

/// A shard's end of the histogram log: the sender, shared with the task
/// that sends each interval, and taken back at the end so that the writer
/// thread sees every sender go.
pub(super) struct IntervalLog(LogSlot);

/// The log's sender and the start of the current interval; `None` once the
/// shard has sent its last interval.
type LogSlot = Rc<RefCell<Option<(mpsc::Sender<Interval>, SystemTime)>>>;

impl IntervalLog {
    /// Starts sending `shard`'s interval histogram every `every` (if the log
    /// is on).
    pub(super) fn start(
        shard: &Rc<Shard>,
        log: Option<mpsc::Sender<Interval>>,
        every: Duration,
    ) -> IntervalLog {
        let on = log.is_some();
        let slot = Rc::new(RefCell::new(log.map(|tx| (tx, SystemTime::now()))));
        if on {
            glommio::spawn_local(send_intervals(shard.clone(), slot.clone(), every)).detach();
        }
        IntervalLog(slot)
    }

    /// Sends the last interval and lets the sender go.
    pub(super) fn finish(self, shard: &Shard) {
        if let Some((tx, since)) = self.0.borrow_mut().take() {
            send_interval(shard, &tx, since);
        }
    }
}

async fn send_intervals(shard: Rc<Shard>, slot: LogSlot, every: Duration) {
    loop {
        glommio::timer::sleep(every).await;
        let mut slot = slot.borrow_mut();
        let Some((tx, since)) = slot.as_mut() else {
            return;
        };
        *since = send_interval(&shard, tx, *since);
    }
}

/// Sends the interval since `since`; returns its end.
fn send_interval(shard: &Shard, tx: &mpsc::Sender<Interval>, since: SystemTime) -> SystemTime {
    let now = SystemTime::now();
    if let Some(histogram) = shard.metrics.borrow_mut().take_interval() {
        let _ = tx.send(Interval {
            shard: shard.id,
            start: since,
            end: now,
            histogram,
        });
    }
    now
}

/// The `--log-interval` line: once every shard has sent its snapshot for an
/// interval, prints what changed since the previous line.
pub(super) struct StatusLine {
    shards: usize,
    pending: Vec<Option<Snapshot>>,
    last: Option<(Instant, Snapshot)>,
}

impl StatusLine {
    pub(super) fn new(shards: usize) -> StatusLine {
        StatusLine {
            shards,
            pending: vec![None; shards],
            // From zero: the first line covers the first interval.
            last: Some((Instant::now(), Snapshot::merge(&[]))),
        }
    }

    pub(super) fn add(&mut self, snapshot: Snapshot) {
        let i = snapshot.shard.expect("one shard's snapshot").0;
        self.pending[i] = Some(snapshot);
        if self.pending.iter().any(Option::is_none) {
            return;
        }
        let all: Vec<Snapshot> = self.pending.iter_mut().filter_map(Option::take).collect();
        let now = Instant::now();
        let merged = Snapshot::merge(&all);
        if let Some((then, last)) = &self.last {
            crate::log_line!("{}", status_text(now - *then, last, &merged));
        }
        self.last = Some((now, merged));
        debug_assert_eq!(all.len(), self.shards);
    }
}

fn status_text(elapsed: Duration, before: &Snapshot, now: &Snapshot) -> String {
    let requests = now.counters.requests() - before.counters.requests();
    let forwarded = now.counters.forwarded_out - before.counters.forwarded_out;
    let mut interval = now.all();
    let _ = interval.subtract(before.all());
    // Saturating: a store's counters survive a reload, but a snapshot taken
    // across a shard's restart of them must not wrap.
    let exhausted = now
        .store
        .exhausted_users
        .saturating_sub(before.store.exhausted_users);
    format!(
        "{:.0} feed req/s, {:.1}% forwarded, p99 {} us, {} users exhausted their feed ({} in all)",
        requests as f64 / elapsed.as_secs_f64().max(1e-9),
        100.0 * forwarded as f64 / requests.max(1) as f64,
        interval.value_at_percentile(99.0),
        exhausted,
        now.store.exhausted_users
    )
}
