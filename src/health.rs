//! The process's health, as `/healthz` tells it to load balancers: one
//! [`Health`] per process, shared by every shard, the supervisor and any
//! component that can go wrong while pages are still served (the journal:
//! a disk error is reported here and cleared when writes succeed again).
//!
//! `/healthz` answers `200 {"status":"ok"}` only while serving and nothing
//! is degraded; otherwise `503` with `"loading"` (from the moment the port
//! accepts until every shard serves), `"draining"` (from the stop signal:
//! `--drain`, then the stop itself) or `"degraded"` with a reason. Loading
//! and draining come first: a degraded instance that is also draining says
//! `draining`.
//!
//! Reading is lock-free (two atomics); only a degraded state takes the
//! lock, to read its reasons.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bound, loading the feeds: nothing is served yet.
    Loading = 0,
    /// Every shard serves.
    Serving = 1,
    /// Asked to stop: the `--drain` period, then the stop.
    Draining = 2,
}

/// What `/healthz` says, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    Loading,
    Draining,
    /// Serving, but a component reports a problem: `(source, reason)` for
    /// each, in the order they were first reported.
    Degraded(Vec<(&'static str, String)>),
}

/// The process's health; clones share it (an `Arc`).
#[derive(Clone)]
pub struct Health(Arc<Inner>);

struct Inner {
    phase: AtomicU8,
    /// Some source is degraded: lets readers skip the lock when none is.
    any_degraded: AtomicBool,
    degraded: Mutex<Vec<(&'static str, String)>>,
    started: SystemTime,
    /// Reloads (`SIGHUP`) that went through, and that failed (the old
    /// version kept serving).
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Health({:?})", self.status())
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    /// A process that has just started: loading.
    pub fn new() -> Health {
        Health(Arc::new(Inner {
            phase: AtomicU8::new(Phase::Loading as u8),
            any_degraded: AtomicBool::new(false),
            degraded: Mutex::new(Vec::new()),
            started: SystemTime::now(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }))
    }

    /// A health that serves already (for sessions run without a server).
    pub fn serving() -> Health {
        let h = Health::new();
        h.set_phase(Phase::Serving);
        h
    }

    /// Counts a reload's result (`shardfeed_reloads_total`).
    pub fn count_reload(&self, ok: bool) {
        let counter = if ok {
            &self.0.reloads_ok
        } else {
            &self.0.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads so far: `(ok, failed)`.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.0.reloads_ok.load(Ordering::Relaxed),
            self.0.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// When the process started (for `process_start_time_seconds`).
    pub fn started(&self) -> SystemTime {
        self.0.started
    }

    pub fn phase(&self) -> Phase {
        match self.0.phase.load(Ordering::Relaxed) {
            0 => Phase::Loading,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase`. Phases only go forward: loading, serving,
    /// draining.
    pub fn set_phase(&self, phase: Phase) {
        self.0.phase.fetch_max(phase as u8, Ordering::Relaxed);
    }

    /// The server is asked to stop: answers close their connections.
    #[inline]
    pub fn draining(&self) -> bool {
        self.0.phase.load(Ordering::Relaxed) == Phase::Draining as u8
    }

    /// `source` (e.g. `"journal"`) reports a problem: `/healthz` answers
    /// `503 degraded` with `reason` until [`Health::clear`]`(source)`. A
    /// source has one reason at a time: a new report replaces its old one.
    /// Logged when the reason changes, not on every repeat, so a component
    /// may report on every failure.
    pub fn set_degraded(&self, source: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let mut degraded = self.0.degraded.lock().unwrap_or_else(|e| e.into_inner());
        match degraded.iter_mut().find(|(s, _)| *s == source) {
            Some((_, old)) if *old == reason => return,
            Some((_, old)) => *old = reason.clone(),
            None => degraded.push((source, reason.clone())),
        }
        self.0.any_degraded.store(true, Ordering::Relaxed);
        drop(degraded);
        crate::log_line!("degraded: {source}: {reason}");
    }

    /// `source` works again. A no-op if it was not degraded.
    pub fn clear(&self, source: &'static str) {
        let mut degraded = self.0.degraded.lock().unwrap_or_else(|e| e.into_inner());
        let before = degraded.len();
        degraded.retain(|(s, _)| *s != source);
        let cleared = degraded.len() < before;
        self.0
            .any_degraded
            .store(!degraded.is_empty(), Ordering::Relaxed);
        drop(degraded);
        if cleared {
            crate::log_line!("recovered: {source}");
        }
    }

    /// The sources degraded now, with their reasons.
    pub fn degraded(&self) -> Vec<(&'static str, String)> {
        if !self.0.any_degraded.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let degraded = self.0.degraded.lock().unwrap_or_else(|e| e.into_inner());
        degraded.clone()
    }

    pub fn status(&self) -> Status {
        match self.phase() {
            Phase::Loading => Status::Loading,
            Phase::Draining => Status::Draining,
            Phase::Serving => match self.degraded() {
                d if d.is_empty() => Status::Ok,
                d => Status::Degraded(d),
            },
        }
    }

    /// The `/healthz` answer: whether it is `200` (else `503`), and its
    /// JSON body. Allocates only when degraded.
    pub fn answer(&self) -> (bool, Cow<'static, [u8]>) {
        match self.status() {
            Status::Ok => (true, Cow::Borrowed(br#"{"status":"ok"}"#)),
            Status::Loading => (false, Cow::Borrowed(br#"{"status":"loading"}"#)),
            Status::Draining => (false, Cow::Borrowed(br#"{"status":"draining"}"#)),
            Status::Degraded(d) => {
                let reason: Vec<String> = d.iter().map(|(s, r)| format!("{s}: {r}")).collect();
                let reason = serde_json::to_string(&reason.join("; ")).expect("a string");
                let body = format!(r#"{{"status":"degraded","reason":{reason}}}"#);
                (false, Cow::Owned(body.into_bytes()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(h: &Health) -> (bool, String) {
        let (ok, body) = h.answer();
        (ok, String::from_utf8(body.into_owned()).unwrap())
    }

    #[test]
    fn phases_go_forward_and_decide_the_answer() {
        let h = Health::new();
        assert_eq!(body(&h), (false, r#"{"status":"loading"}"#.into()));
        h.set_phase(Phase::Serving);
        assert_eq!(body(&h), (true, r#"{"status":"ok"}"#.into()));
        h.set_phase(Phase::Draining);
        h.set_phase(Phase::Serving);
        assert!(h.draining());
        assert_eq!(body(&h), (false, r#"{"status":"draining"}"#.into()));
    }

    #[test]
    fn degraded_sources_are_reported_and_cleared_one_by_one() {
        let h = Health::serving();
        h.set_degraded(
            "journal",
            "write failed: No space left on device (os error 28)",
        );
        h.set_degraded("journal", "write failed: \"disk\" gone");
        h.set_degraded("other", "x");
        assert_eq!(
            body(&h),
            (
                false,
                r#"{"status":"degraded","reason":"journal: write failed: \"disk\" gone; other: x"}"#
                    .into()
            )
        );
        h.clear("journal");
        assert_eq!(h.status(), Status::Degraded(vec![("other", "x".into())]));
        h.clear("other");
        h.clear("never-reported");
        assert_eq!(h.status(), Status::Ok);
        // Loading and draining come before degraded.
        h.set_degraded("journal", "x");
        h.set_phase(Phase::Draining);
        assert_eq!(h.status(), Status::Draining);
    }
}
