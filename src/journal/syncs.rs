//! Pipelined group commit (`--fsync always`): the fdatasyncs in flight on
//! the current segment, and the rule that turns their completions into a
//! durable LSN.
//!
//! The writer does not wait for a sync before writing the next batch: as
//! soon as a write completes it issues an fdatasync covering every record
//! written so far, and goes on writing what arrived meanwhile, with up to
//! [`super::JournalConfig::max_syncs`] syncs in flight. An fdatasync makes
//! durable every write that had completed before it was issued, so a sync
//! issued when the records below `upto` were all written covers `upto`.
//!
//! The rule, in [`SyncQueue::complete`]: completions are applied in issue
//! order. A sync that succeeds makes its `upto` durable once every sync
//! issued before it has succeeded too; one that fails abandons itself and
//! every later one (their results are ignored when they arrive), so a
//! failed sync never lets a later one mark its records durable, and the
//! writer writes those records again into a new segment. Syncs normally
//! complete in issue order anyway (the block layer runs one cache flush at
//! a time per queue and folds the ones issued meanwhile into the next).

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

/// Which issued sync a completion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SyncTicket {
    generation: u64,
    id: u64,
}

#[derive(Debug)]
struct Slot {
    upto: u64,
    started: Instant,
    /// Filled when it completes: how long it took, or why it failed.
    done: Option<Result<u64, Rc<str>>>,
}

/// What one completion changed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Completed {
    /// Everything below this LSN is durable now.
    Durable(u64),
    /// A sync failed: it and every sync issued after it are abandoned.
    Failed(Rc<str>),
    /// Nothing to apply yet (an earlier sync is still in flight), or the
    /// ticket was of an abandoned sync.
    Nothing,
}

/// The syncs in flight on one segment, in issue order.
#[derive(Debug, Default)]
pub(super) struct SyncQueue {
    slots: VecDeque<Slot>,
    /// Id of `slots[0]`.
    base: u64,
    /// Bumped by [`SyncQueue::abandon`]: tickets of older generations are
    /// ignored.
    generation: u64,
    /// The largest `upto` issued in this generation.
    issued_upto: u64,
}

impl SyncQueue {
    pub(super) fn with_capacity(n: usize) -> SyncQueue {
        SyncQueue {
            slots: VecDeque::with_capacity(n),
            ..SyncQueue::default()
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// The largest LSN bound covered by a sync issued (and not abandoned).
    pub(super) fn issued_upto(&self) -> u64 {
        self.issued_upto
    }

    /// A sync is being issued now, after every write below `upto` completed.
    pub(super) fn issue(&mut self, upto: u64, now: Instant) -> SyncTicket {
        let id = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot {
            upto,
            started: now,
            done: None,
        });
        self.issued_upto = self.issued_upto.max(upto);
        SyncTicket {
            generation: self.generation,
            id,
        }
    }

    /// Sync `ticket` completed with `result` at `now`. Calls `synced(us)`
    /// for every sync whose success is applied, in issue order.
    pub(super) fn complete(
        &mut self,
        ticket: SyncTicket,
        result: Result<(), Rc<str>>,
        now: Instant,
        mut synced: impl FnMut(u64),
    ) -> Completed {
        if ticket.generation != self.generation || ticket.id < self.base {
            return Completed::Nothing;
        }
        let Some(slot) = self.slots.get_mut((ticket.id - self.base) as usize) else {
            return Completed::Nothing;
        };
        let us = now.saturating_duration_since(slot.started).as_micros() as u64;
        slot.done = Some(result.map(|()| us));
        let mut durable = None;
        while self.slots.front().is_some_and(|s| s.done.is_some()) {
            let slot = self.slots.pop_front().expect("a front");
            self.base += 1;
            match slot.done.expect("done") {
                Ok(us) => {
                    synced(us);
                    durable = Some(durable.map_or(slot.upto, |d: u64| d.max(slot.upto)));
                }
                Err(why) => {
                    self.abandon();
                    return Completed::Failed(why);
                }
            }
        }
        durable.map_or(Completed::Nothing, Completed::Durable)
    }

    /// Forgets every sync in flight: their completions will be ignored
    /// (after a failure, or when the segment is abandoned).
    pub(super) fn abandon(&mut self) {
        self.base += self.slots.len() as u64;
        self.slots.clear();
        self.generation += 1;
        self.issued_upto = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ok() -> Result<(), Rc<str>> {
        Ok(())
    }

    #[test]
    fn in_order_completions_advance_durable() {
        let t0 = Instant::now();
        let mut q = SyncQueue::default();
        let a = q.issue(10, t0);
        let b = q.issue(25, t0);
        assert_eq!(q.in_flight(), 2);
        assert_eq!(q.issued_upto(), 25);
        let mut lat = Vec::new();
        let t1 = t0 + Duration::from_micros(300);
        assert_eq!(
            q.complete(a, ok(), t1, |us| lat.push(us)),
            Completed::Durable(10)
        );
        assert_eq!(
            q.complete(b, ok(), t1, |us| lat.push(us)),
            Completed::Durable(25)
        );
        assert_eq!(lat, [300, 300]);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn a_later_sync_waits_for_the_earlier_ones() {
        let t0 = Instant::now();
        let mut q = SyncQueue::default();
        let a = q.issue(10, t0);
        let b = q.issue(25, t0);
        let c = q.issue(40, t0);
        // b and c finish first: nothing is durable until a has succeeded.
        assert_eq!(q.complete(c, ok(), t0, |_| {}), Completed::Nothing);
        assert_eq!(q.complete(b, ok(), t0, |_| {}), Completed::Nothing);
        let mut n = 0;
        assert_eq!(q.complete(a, ok(), t0, |_| n += 1), Completed::Durable(40));
        assert_eq!(n, 3);
    }

    #[test]
    fn a_failed_sync_never_lets_a_later_one_count() {
        let t0 = Instant::now();
        let mut q = SyncQueue::default();
        let a = q.issue(10, t0);
        let b = q.issue(25, t0);
        let c = q.issue(40, t0);
        assert_eq!(q.complete(a, ok(), t0, |_| {}), Completed::Durable(10));
        // c succeeds before b fails: c must not make 25..40 durable.
        assert_eq!(q.complete(c, ok(), t0, |_| {}), Completed::Nothing);
        let failed = q.complete(b, Err("fdatasync: EIO".into()), t0, |_| {});
        assert_eq!(failed, Completed::Failed("fdatasync: EIO".into()));
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.issued_upto(), 0);
        // And a completion arriving after the abandonment is ignored.
        assert_eq!(q.complete(c, ok(), t0, |_| {}), Completed::Nothing);
    }

    #[test]
    fn abandoned_tickets_are_ignored_by_the_next_generation() {
        let t0 = Instant::now();
        let mut q = SyncQueue::default();
        let old = q.issue(10, t0);
        q.abandon();
        let new = q.issue(5, t0);
        assert_eq!(q.complete(old, ok(), t0, |_| {}), Completed::Nothing);
        assert_eq!(q.in_flight(), 1);
        assert_eq!(q.complete(new, ok(), t0, |_| {}), Completed::Durable(5));
    }
}
