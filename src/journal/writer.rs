//! One shard's journal writer: [`ShardJournal`] (append, durable, stats,
//! close), its background writer task, and [`Checkpoint`].
//!
//! Everything lives on the shard's executor. `append` only pushes the record
//! into an in-memory queue (a `VecDeque` that keeps its capacity); the
//! writer task, spawned by [`ShardJournal::open`], takes whatever is queued
//! when it runs, encodes it into a DMA buffer, writes it with O_DIRECT at the
//! end of the current segment and, per policy, fdatasyncs: all through
//! glommio's io_uring, so the executor never blocks. Whoever awaited
//! [`ShardJournal::durable`] in the meantime is woken by that one write and
//! one sync: group commit. Under `always` the commit is pipelined: the sync
//! runs as its own task while the writer writes the next batch, and the
//! next sync is issued as soon as that write completes (up to
//! [`JournalConfig::max_syncs`] in flight; the rule that turns their
//! completions into a durable LSN is in `syncs.rs`). Waiters are woken only
//! when the durable LSN moves (or on a failure), not after every write.
//!
//! DMA buffers come from the executor's registered `io_memory` (the server
//! gives it 128 KiB) and, when that pool is exhausted, glommio falls back to
//! a heap allocation of the same alignment (`DmaBuffer::new`), so an
//! exhausted pool costs a malloc, never an error. One journal write is at
//! most [`JournalConfig::write_bytes`] (32 KiB) and a checkpoint write 64
//! KiB, and each is freed when its write completes, so both fit the pool.
//!
//! Checkpoints also go through glommio (O_DIRECT writes, fdatasync,
//! rename): no page cache to pollute with a 50 MB file, no thread to hand
//! buffers to, and the CRC and encoding work is small (a few ms per million
//! users) and done between the shard's chunks. Only the directory clean-up
//! after a checkpoint (listing, renames, unlinks) runs on glommio's blocking
//! thread pool (`spawn_blocking`), as getdents has no io_uring form.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use glommio::io::{Directory, DmaFile, OpenOptions};
use hdrhistogram::Histogram;

use super::checkpoint::Checkpoint;
use super::format::{
    encode_batch, encode_pad, encode_seal, plan, FileHeader, FileKind, FileName, MAX_UNIT,
    PER_SECTOR, SECTOR,
};
use super::recover::Recovery;
use super::syncs::{Completed, SyncQueue, SyncTicket};
use super::{FsyncPolicy, JournalError, Lsn, Progress};

/// How one shard's journal behaves. [`JournalConfig::new`] gives the
/// defaults; tests shrink the sizes and intervals.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// This run's generation ([`Recovery::generation`]).
    pub generation: u64,
    /// Shards in this run.
    pub shards: usize,
    /// The directory held state from earlier runs: [`ShardJournal::checkpoint_due`]
    /// says yes until this shard's first checkpoint, so the old files can go.
    pub inherited: bool,
    /// Size of a segment file (preallocated). Default 32 MiB.
    pub segment_bytes: u64,
    /// EverySec and Never: queued records are written at most this long
    /// after being appended. Default 100 ms.
    pub write_every: Duration,
    /// EverySec: written records are synced at most this long after being
    /// appended. Default 500 ms.
    pub sync_every: Duration,
    /// After a write or sync error, the next attempt comes this much later.
    /// Default 500 ms.
    pub retry_every: Duration,
    /// Records kept in memory until durable. Beyond it (writes failing for
    /// long) the queue is dropped and a checkpoint is asked for. Default 1 Mi
    /// records (24 MiB).
    pub max_queued: usize,
    /// Largest single journal write. Default 32 KiB (960 records).
    pub write_bytes: usize,
    /// Always: fdatasyncs in flight at once (pipelined group commit: the
    /// next batch is written, and its sync issued, while earlier syncs are
    /// in flight). 1 still overlaps writing with syncing. Default 2.
    pub max_syncs: usize,
    /// Dropped segments kept for reuse (an overwrite is cheaper to sync than
    /// an append to new blocks). Default 2.
    pub keep_free: usize,
    /// [`ShardJournal::checkpoint_due`] once this many journal bytes were
    /// written since the last checkpoint. Default 64 MiB.
    pub checkpoint_bytes: u64,
    /// ... or once this long passed since the last one with records since.
    /// Default 10 min.
    pub checkpoint_every: Duration,
}

impl JournalConfig {
    pub fn new(generation: u64, shards: usize) -> JournalConfig {
        JournalConfig {
            generation,
            shards,
            inherited: false,
            segment_bytes: 32 << 20,
            write_every: Duration::from_millis(100),
            sync_every: Duration::from_millis(500),
            retry_every: Duration::from_millis(500),
            max_queued: 1 << 20,
            write_bytes: 32 << 10,
            max_syncs: 2,
            keep_free: 2,
            checkpoint_bytes: 64 << 20,
            checkpoint_every: Duration::from_secs(600),
        }
    }

    /// The defaults for the run that follows `recovery`.
    pub fn after(recovery: &Recovery, shards: usize) -> JournalConfig {
        JournalConfig {
            inherited: recovery.inherited,
            ..JournalConfig::new(recovery.generation, shards)
        }
    }
}

/// One shard's journal counters (for `/metrics` and `/stats`).
#[derive(Debug, Clone)]
pub struct JournalStats {
    pub shard: usize,
    pub policy: FsyncPolicy,
    /// Bytes written to segments: headers, records, padding, seals.
    pub bytes: u64,
    /// Of which padding (unused record slots, pad sectors).
    pub padding_bytes: u64,
    /// Records written (a rewrite after an error counts again).
    pub records: u64,
    pub appended: u64,
    /// Records dropped (queue full while writes failed, or after close).
    pub dropped: u64,
    /// fdatasyncs that made records durable.
    pub syncs: u64,
    /// Failed writes, syncs, segment creations and checkpoints.
    pub errors: u64,
    /// Latency of those fdatasyncs, in microseconds.
    pub sync_latency_us: Histogram<u64>,
    /// Records appended and not yet durable.
    pub queued: u64,
    /// Segments of this run not yet dropped.
    pub segments: usize,
    pub checkpoints: u64,
    pub last_checkpoint_bytes: u64,
    /// None before this run's first checkpoint.
    pub last_checkpoint_age: Option<Duration>,
    /// Why the journal is degraded, if it is.
    pub degraded: Option<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) bytes: u64,
    pub(super) padding_bytes: u64,
    pub(super) records: u64,
    pub(super) appended: u64,
    pub(super) dropped: u64,
    pub(super) syncs: u64,
    pub(super) errors: u64,
    pub(super) checkpoints: u64,
    pub(super) last_checkpoint_bytes: u64,
}

/// A segment of this run, for dropping it after a checkpoint.
#[derive(Debug, Clone)]
pub(super) struct SegInfo {
    pub(super) path: PathBuf,
    /// One past the largest LSN written into it.
    pub(super) end_lsn: u64,
}

/// A one-shot wake-up for the writer task: a flag and one waker.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        let w = self.waker.borrow_mut().take();
        if let Some(w) = w {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// What append, durable, the writer and checkpoints share.
///
/// LSNs: `base_lsn <= durable_lsn <= written_lsn <= next_lsn`; `queue` holds
/// the records `base_lsn..next_lsn` (the ones not yet durable, kept so that
/// they can be written again into a new segment after an error).
pub(super) struct State {
    pub(super) queue: VecDeque<Progress>,
    pub(super) base_lsn: u64,
    pub(super) next_lsn: u64,
    pub(super) written_lsn: u64,
    pub(super) durable_lsn: u64,
    /// When the oldest record not yet written / not yet durable was
    /// appended (or an earlier instant).
    pub(super) oldest_unwritten: Option<Instant>,
    pub(super) oldest_undurable: Option<Instant>,
    /// Someone awaits `durable`: write and sync now.
    pub(super) want_flush: bool,
    /// Answers waiting for a record, with its LSN.
    pub(super) waiters: Vec<(u64, Waker)>,
    /// The last attempt failed, with this reason.
    pub(super) io_failed: Option<Rc<str>>,
    pub(super) failed_at: Option<Instant>,
    /// Bumped at every failure, so that a waiter learns of one.
    pub(super) fail_epoch: u64,
    /// Bumped when the queue is dropped, so that a write in flight does not
    /// account records that are gone.
    pub(super) reset_epoch: u64,
    /// LSNs dropped from a full queue, lost until a checkpoint from
    /// `lost.1` on is durable.
    pub(super) lost: Option<(u64, u64)>,
    pub(super) closing: bool,
    pub(super) closed: bool,
    pub(super) close_result: Option<Result<(), JournalError>>,
    pub(super) close_waiters: Vec<Waker>,
    /// A checkpoint starting at this LSN asked for a new segment.
    pub(super) rotate_at: Option<u64>,
    pub(super) segments: Vec<SegInfo>,
    pub(super) free: Vec<PathBuf>,
    pub(super) next_free: u64,
    pub(super) checkpointing: bool,
    pub(super) next_checkpoint: u64,
    pub(super) last_checkpoint: Option<(Instant, PathBuf)>,
    pub(super) bytes_at_checkpoint: u64,
    pub(super) appended_at_checkpoint: u64,
    pub(super) started: Instant,
    pub(super) counters: Counters,
    pub(super) sync_latency: Histogram<u64>,
    /// Always: the fdatasyncs in flight on the current segment.
    syncs: SyncQueue,
    /// One of them failed: the writer abandons the segment.
    sync_failed: Option<Rc<str>>,
}

impl State {
    /// Forgets the records that are durable.
    fn trim(&mut self) {
        let k = (self.durable_lsn - self.base_lsn) as usize;
        if k > 0 {
            self.queue.drain(..k);
            self.base_lsn = self.durable_lsn;
        }
        if self.durable_lsn == self.next_lsn {
            self.oldest_undurable = None;
        }
    }

    /// Wakes every waiter: something other than durability (a failure, a
    /// dropped queue, closing) decides for them.
    fn wake_waiters(&mut self) {
        for (_, w) in self.waiters.drain(..) {
            w.wake();
        }
    }

    /// Wakes the waiters whose records are durable now. Only those: with
    /// syncs pipelined, the next batch's answers are waiting too, and
    /// waking them for nothing costs a poll each.
    fn wake_durable(&mut self) {
        let durable = self.durable_lsn;
        self.waiters.retain(|(lsn, w)| {
            let done = *lsn < durable;
            if done {
                w.wake_by_ref();
            }
            !done
        });
    }

    /// Makes every record below `upto` durable (if they are not already).
    fn advance_durable(&mut self, upto: u64) {
        if upto > self.durable_lsn {
            self.durable_lsn = upto;
            self.trim();
        }
    }

    fn degraded(&self) -> Option<String> {
        if let Some(why) = &self.io_failed {
            return Some(why.to_string());
        }
        self.lost.map(|(a, b)| {
            format!(
                "{} records were dropped while writes failed; waiting for a checkpoint",
                b - a
            )
        })
    }
}

pub(super) struct Inner {
    pub(super) dir: PathBuf,
    pub(super) shard: usize,
    policy: FsyncPolicy,
    pub(super) cfg: JournalConfig,
    pub(super) st: RefCell<State>,
    writer: Signal,
}

impl Inner {
    /// The path of a new free file of this shard (a zeroed new segment, or
    /// a segment dropped by a checkpoint and kept for reuse).
    pub(super) fn new_free_path(&self, st: &mut State) -> PathBuf {
        let n = st.next_free;
        st.next_free += 1;
        let name = FileName::Free {
            shard: self.shard as u32,
            n,
        };
        self.dir.join(name.to_string())
    }
}

/// One shard's journal. Not `Send`: it lives on the shard's executor, and
/// only the shard that owns a user appends that user's progress.
pub struct ShardJournal {
    inner: Rc<Inner>,
}

impl ShardJournal {
    /// Opens shard `shard`'s journal in `dir` (which [`super::recover`] has
    /// read and locked) on the current glommio executor, and spawns its
    /// writer task, which creates the first segment at once. `Err` if the
    /// directory cannot be opened or the configuration is impossible; a
    /// failing disk only makes the journal degraded (see [`JournalStats`]).
    pub async fn open(
        dir: &Path,
        shard: usize,
        policy: FsyncPolicy,
        config: JournalConfig,
    ) -> Result<ShardJournal, String> {
        if shard >= config.shards {
            return Err(format!("journal: shard {shard} of {}", config.shards));
        }
        if config.segment_bytes < 16 << 10 || config.write_bytes < 4096 || config.max_syncs == 0 {
            return Err(
                "journal: segment_bytes must be >= 16 KiB, write_bytes >= 4 KiB, max_syncs >= 1"
                    .into(),
            );
        }
        // Absolute: glommio opens a relative directory path as a bad
        // descriptor, and every later path of this journal (segments,
        // checkpoints) is made from this one.
        let dir = &std::path::absolute(dir)
            .map_err(|e| format!("cannot open --state-dir {}: {e}", dir.display()))?;
        let directory = Directory::open(dir)
            .await
            .map_err(|e| format!("cannot open --state-dir {}: {e}", dir.display()))?;
        // Free segments left by earlier runs, listed off the executor.
        let listing = {
            let dir = dir.to_path_buf();
            let shards = config.shards as u32;
            glommio::executor()
                .spawn_blocking(move || list_free(&dir, shard as u32, shards))
                .await
        };
        let (free, next_free) = listing;
        let now = Instant::now();
        let inner = Rc::new(Inner {
            dir: dir.to_path_buf(),
            shard,
            policy,
            st: RefCell::new(State {
                queue: VecDeque::with_capacity(4096),
                base_lsn: 0,
                next_lsn: 0,
                written_lsn: 0,
                durable_lsn: 0,
                oldest_unwritten: None,
                oldest_undurable: None,
                want_flush: false,
                waiters: Vec::with_capacity(256),
                io_failed: None,
                failed_at: None,
                fail_epoch: 0,
                reset_epoch: 0,
                lost: None,
                closing: false,
                closed: false,
                close_result: None,
                close_waiters: Vec::new(),
                rotate_at: None,
                segments: Vec::new(),
                free,
                next_free,
                checkpointing: false,
                next_checkpoint: 0,
                last_checkpoint: None,
                bytes_at_checkpoint: 0,
                appended_at_checkpoint: 0,
                started: now,
                counters: Counters::default(),
                sync_latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
                syncs: SyncQueue::with_capacity(config.max_syncs),
                sync_failed: None,
            }),
            cfg: config,
            writer: Signal::default(),
        });
        let writer = Writer {
            inner: inner.clone(),
            dir: directory,
            seg: None,
            broken: false,
            next_seq: 0,
        };
        glommio::spawn_local(writer.run()).detach();
        Ok(ShardJournal { inner })
    }

    /// Queues a record: memory only, never blocks, no I/O, and no allocation
    /// once the queue has grown to its working size. Returns its LSN.
    pub fn append(&self, p: Progress) -> Lsn {
        let mut st = self.inner.st.borrow_mut();
        st.counters.appended += 1;
        if st.closed || st.closing {
            st.counters.dropped += 1;
            return Lsn::CLOSED;
        }
        if st.queue.len() >= self.inner.cfg.max_queued {
            // Writes have failed for long: forget the queue (a checkpoint
            // restores it) rather than grow without bound.
            let (from, to) = (st.lost.map_or(st.durable_lsn, |l| l.0), st.next_lsn);
            st.counters.dropped += st.queue.len() as u64;
            st.queue.clear();
            st.lost = Some((from, to));
            st.base_lsn = to;
            st.written_lsn = to;
            st.durable_lsn = to;
            st.reset_epoch += 1;
            st.oldest_unwritten = None;
            st.oldest_undurable = None;
            st.wake_waiters();
        }
        let lsn = st.next_lsn;
        let was_idle = st.written_lsn == st.next_lsn;
        st.queue.push_back(p);
        st.next_lsn += 1;
        if was_idle {
            let now = Instant::now();
            st.oldest_unwritten = Some(now);
            st.oldest_undurable.get_or_insert(now);
        }
        let wake = was_idle || self.inner.policy == FsyncPolicy::Always;
        drop(st);
        if wake {
            self.inner.writer.notify();
        }
        Lsn(lsn)
    }

    /// Completes once record `lsn` is durable: synced (Always, EverySec) or
    /// written to the file (Never). Asks the writer to write and sync now;
    /// every caller waiting when it runs shares that one write and one
    /// fdatasync. Fails at once while writes are failing (the record stays
    /// queued and is written when they work again), and when the record
    /// was dropped or the journal closed.
    pub fn durable(&self, lsn: Lsn) -> Durable {
        Durable {
            inner: self.inner.clone(),
            lsn,
            epoch: None,
        }
    }

    /// Starts a checkpoint: feed it every user's current progress with
    /// [`Checkpoint::add`], then [`Checkpoint::finish`]. It covers every
    /// record appended before this call; a new segment starts for the ones
    /// after. One at a time per shard (a second one fails with `Busy`).
    pub fn checkpoint(&self) -> Checkpoint {
        let mut st = self.inner.st.borrow_mut();
        let busy = st.checkpointing;
        let seq = st.next_checkpoint;
        if !busy {
            st.checkpointing = true;
            st.next_checkpoint += 1;
            st.rotate_at = Some(st.next_lsn);
        }
        Checkpoint::new(self.inner.clone(), st.next_lsn, seq, busy)
    }

    /// True when a checkpoint should be taken: the journal grew by
    /// `checkpoint_bytes`, or `checkpoint_every` passed with new records, or
    /// records were dropped, or the directory has state of an earlier run
    /// and this shard has not checkpointed yet.
    pub fn checkpoint_due(&self) -> bool {
        let st = self.inner.st.borrow();
        let cfg = &self.inner.cfg;
        if st.checkpointing || st.closing {
            return false;
        }
        let since = st.last_checkpoint.as_ref().map_or(st.started, |c| c.0);
        st.lost.is_some()
            || (cfg.inherited && st.last_checkpoint.is_none())
            || st.counters.bytes - st.bytes_at_checkpoint >= cfg.checkpoint_bytes
            || (since.elapsed() >= cfg.checkpoint_every
                && st.counters.appended > st.appended_at_checkpoint)
    }

    /// When progress is made durable.
    pub fn policy(&self) -> FsyncPolicy {
        self.inner.policy
    }

    /// Why the journal is degraded (for `/healthz`), if it is.
    pub fn degraded(&self) -> Option<String> {
        self.inner.st.borrow().degraded()
    }

    pub fn stats(&self) -> JournalStats {
        let st = self.inner.st.borrow();
        let c = st.counters;
        JournalStats {
            shard: self.inner.shard,
            policy: self.inner.policy,
            bytes: c.bytes,
            padding_bytes: c.padding_bytes,
            records: c.records,
            appended: c.appended,
            dropped: c.dropped,
            syncs: c.syncs,
            errors: c.errors,
            sync_latency_us: st.sync_latency.clone(),
            queued: st.next_lsn - st.durable_lsn,
            segments: st.segments.len(),
            checkpoints: c.checkpoints,
            last_checkpoint_bytes: c.last_checkpoint_bytes,
            last_checkpoint_age: st.last_checkpoint.as_ref().map(|c| c.0.elapsed()),
            degraded: st.degraded(),
        }
    }

    /// Stops: writes and fdatasyncs everything queued (whatever the
    /// policy), seals the segment and stops the writer task. Later appends
    /// are dropped. One attempt: on a failing disk it returns the error.
    pub async fn close(&self) -> Result<(), JournalError> {
        self.inner.st.borrow_mut().closing = true;
        self.inner.writer.notify();
        poll_fn(|cx| {
            let mut st = self.inner.st.borrow_mut();
            match &st.close_result {
                Some(r) => Poll::Ready(r.clone()),
                None => {
                    st.close_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// [`ShardJournal::durable`]'s future: a named type (not an `async fn`'s),
/// so that a shard can keep it beside the page that waits for it.
pub struct Durable {
    inner: Rc<Inner>,
    lsn: Lsn,
    /// The failure epoch seen at the first poll: a failure after it fails
    /// this wait too.
    epoch: Option<u64>,
}

impl Future for Durable {
    type Output = Result<(), JournalError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Self::Output> {
        let lsn = self.lsn;
        let inner = self.inner.clone();
        let mut st = inner.st.borrow_mut();
        if st.lost.is_some_and(|(a, b)| (a..b).contains(&lsn.0)) {
            return Poll::Ready(Err(JournalError::Dropped));
        }
        if lsn.0 < st.durable_lsn {
            return Poll::Ready(Ok(()));
        }
        if st.closed {
            return Poll::Ready(Err(JournalError::Closed));
        }
        match self.epoch {
            None => {
                if let Some(why) = &st.io_failed {
                    return Poll::Ready(Err(JournalError::Degraded(why.clone())));
                }
                self.epoch = Some(st.fail_epoch);
            }
            Some(e) if e != st.fail_epoch => {
                let why = st
                    .io_failed
                    .clone()
                    .unwrap_or_else(|| "write failed".into());
                return Poll::Ready(Err(JournalError::Degraded(why)));
            }
            Some(_) => {}
        }
        st.want_flush = true;
        st.waiters.push((lsn.0, cx.waker().clone()));
        drop(st);
        inner.writer.notify();
        Poll::Pending
    }
}

/// A sync issued by [`Writer::launch_sync`] completed: applies the rule of
/// `syncs.rs`, wakes the answers whose records became durable, and tells
/// the writer (a slot is free; or a failure abandons the segment).
fn sync_done(inner: &Inner, ticket: SyncTicket, epoch: u64, r: Result<(), Rc<str>>) {
    let mut guard = inner.st.borrow_mut();
    let st = &mut *guard;
    let mut synced = 0;
    let latency = &mut st.sync_latency;
    let outcome = st.syncs.complete(ticket, r, Instant::now(), |us| {
        synced += 1;
        let _ = latency.record(us.max(1));
    });
    st.counters.syncs += synced;
    match outcome {
        Completed::Durable(upto) => {
            // A queue dropped meanwhile (writes failing for long) moved
            // the LSNs on: these records are gone already.
            if st.reset_epoch == epoch {
                st.advance_durable(upto);
            }
            if st.syncs.in_flight() == 0 && st.failed_at.is_none() {
                st.io_failed = None;
            }
            st.wake_durable();
        }
        Completed::Failed(why) => st.sync_failed = Some(why),
        Completed::Nothing => return,
    }
    drop(guard);
    inner.writer.notify();
}

/// This shard's free files and the next free number (over all shards);
/// shard 0 also removes free files of shards this run does not have.
fn list_free(dir: &Path, shard: u32, shards: u32) -> (Vec<PathBuf>, u64) {
    let mut free = Vec::new();
    let mut next = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(FileName::Free { shard: s, n }) = name.to_str().and_then(FileName::parse)
            else {
                continue;
            };
            next = next.max(n + 1);
            if s == shard && e.file_type().is_ok_and(|t| t.is_file()) {
                free.push(e.path());
            } else if shard == 0 && s >= shards {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    free.sort();
    (free, next)
}

pub(super) fn new_salt() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    crate::hash::mix64(
        t ^ (std::process::id() as u64) << 40 ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The OS error inside a glommio error (glommio's own conversion keeps only
/// the kind, not the errno).
fn os_error(e: glommio::GlommioError<()>) -> std::io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        e => e.into(),
    }
}

pub(super) fn reason(what: &str, path: &Path, e: glommio::GlommioError<()>) -> Rc<str> {
    io_reason(what, path, os_error(e))
}

pub(super) fn io_reason(what: &str, path: &Path, e: std::io::Error) -> Rc<str> {
    let shown = path.file_name().map_or(path.display().to_string(), |n| {
        n.to_string_lossy().into_owned()
    });
    format!("{what} {shown}: {e}").into()
}

pub(super) fn short_write(path: &Path) -> Rc<str> {
    io_reason(
        "short write",
        path,
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    )
}

/// The segment being written.
struct OpenSegment {
    /// Shared with the fdatasyncs in flight on it (Always).
    file: Rc<DmaFile>,
    path: Rc<Path>,
    salt: u64,
    unit: u64,
    /// Where the next write goes.
    pos: u64,
    /// Bytes usable for records (the last unit is kept for the seal).
    limit: u64,
    first_lsn: u64,
    /// The queue's `reset_epoch` when `first_lsn` was taken. A queue dropped
    /// since (writes failing for long) moved the LSNs on: a record written
    /// here now would break the segment's LSN sequence, and recovery would
    /// stop at it, so the writer starts a new segment instead.
    epoch: u64,
    /// Written since its last fdatasync was issued.
    dirty: bool,
}

/// Closes a segment's file once no sync holds it any more (they are
/// drained before a healthy segment is closed; an abandoned one may still
/// have some in flight, and its file is then closed when the last ends).
async fn close_file(file: Rc<DmaFile>) {
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
}

/// What the writer does next.
enum Step {
    Flush {
        sync: bool,
    },
    /// Always: issue an fdatasync for what is written and not yet covered.
    Sync,
    Sleep(Duration),
    Park,
    Close,
}

/// The writer task's own state (the segment file is only touched here).
struct Writer {
    inner: Rc<Inner>,
    dir: Directory,
    seg: Option<OpenSegment>,
    /// The segment failed: do not write to it again.
    broken: bool,
    next_seq: u64,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let failed = self.inner.st.borrow_mut().sync_failed.take();
            if let Some(why) = failed {
                self.settle(Err(why));
                continue;
            }
            match self.decide() {
                Step::Flush { sync } => {
                    let r = self.flush(sync).await;
                    self.settle(r);
                }
                Step::Sync => self.launch_sync(),
                Step::Sleep(d) => {
                    futures_lite::future::or(glommio::timer::sleep(d), self.inner.writer.wait())
                        .await
                }
                Step::Park => self.inner.writer.wait().await,
                Step::Close => {
                    let r = self.close().await;
                    // Closed explicitly: a dropped glommio file is only
                    // closed at the executor's next I/O cycle, if any.
                    let _ = self.dir.close().await;
                    let mut st = self.inner.st.borrow_mut();
                    st.closed = true;
                    st.close_result = Some(r);
                    st.wake_waiters();
                    for w in st.close_waiters.drain(..) {
                        w.wake();
                    }
                    return;
                }
            }
        }
    }

    fn decide(&self) -> Step {
        let mut st = self.inner.st.borrow_mut();
        let cfg = &self.inner.cfg;
        let policy = self.inner.policy;
        if st.closing {
            return Step::Close;
        }
        let now = Instant::now();
        let unwritten = st.next_lsn > st.written_lsn;
        let undurable = st.written_lsn > st.durable_lsn;
        if let Some(at) = st.failed_at {
            let due = at + cfg.retry_every;
            return if !(unwritten || undurable || self.seg.is_none() || self.broken) {
                Step::Park
            } else if now < due {
                Step::Sleep(due - now)
            } else {
                Step::Flush {
                    sync: policy != FsyncPolicy::Never,
                }
            };
        }
        if self.seg.is_none() {
            let sync = policy == FsyncPolicy::Always || st.want_flush;
            return Step::Flush {
                sync: sync && policy != FsyncPolicy::Never,
            };
        }
        let sync = policy != FsyncPolicy::Never;
        if !(unwritten || undurable) {
            st.want_flush = false;
            return Step::Park;
        }
        if policy == FsyncPolicy::Always {
            // Writes go on while syncs are in flight; a sync is issued
            // whenever written records are not covered and a slot is free.
            if unwritten || self.broken {
                return Step::Flush { sync };
            }
            let covered = st.syncs.issued_upto().max(st.durable_lsn);
            if st.written_lsn > covered && st.syncs.in_flight() < cfg.max_syncs {
                return Step::Sync;
            }
            return Step::Park;
        }
        if st.want_flush {
            return Step::Flush { sync };
        }
        let per_write = cfg.write_bytes / SECTOR * PER_SECTOR;
        if (st.next_lsn - st.written_lsn) as usize >= per_write {
            return Step::Flush { sync: false };
        }
        let write_due = if unwritten {
            st.oldest_unwritten.map(|t| t + cfg.write_every)
        } else {
            None
        };
        let sync_due = match policy {
            FsyncPolicy::EverySec => st.oldest_undurable.map(|t| t + cfg.sync_every),
            _ => None,
        };
        let Some(due) = write_due.into_iter().chain(sync_due).min() else {
            return Step::Park;
        };
        if due > now {
            return Step::Sleep(due - now);
        }
        Step::Flush {
            sync: sync_due.is_some_and(|t| t <= now),
        }
    }

    /// Writes everything queued when it starts, then fdatasyncs if `sync`.
    async fn flush(&mut self, sync: bool) -> Result<(), Rc<str>> {
        let started = Instant::now();
        let (target, epoch) = {
            let mut st = self.inner.st.borrow_mut();
            st.want_flush = false;
            (st.next_lsn, st.reset_epoch)
        };
        if self.seg.is_none() || self.broken {
            self.rotate().await?;
        }
        loop {
            let rotate_now = {
                let mut st = self.inner.st.borrow_mut();
                if st.reset_epoch != epoch {
                    // The queue was dropped under us: start a new segment,
                    // the LSNs jump.
                    self.broken = true;
                    return Ok(());
                }
                if st.written_lsn >= target {
                    break;
                }
                let seg = self.seg.as_ref().expect("a segment");
                if seg.epoch != st.reset_epoch {
                    // Dropped before this flush (or while the segment was
                    // made): its LSN sequence cannot go on.
                    self.broken = true;
                    true
                } else {
                    let rotate = match st.rotate_at {
                        Some(at) if st.written_lsn >= at => {
                            st.rotate_at = None;
                            seg.first_lsn < st.written_lsn
                        }
                        _ => false,
                    };
                    rotate || seg.pos + seg.unit > seg.limit
                }
            };
            if rotate_now {
                self.rotate().await?;
                continue;
            }
            self.write_some(target, epoch).await?;
            if sync && self.inner.policy == FsyncPolicy::Always {
                // Pipelined: the sync runs while the next batch is written.
                self.launch_sync();
            }
        }
        let sync_needed = sync && self.seg.as_ref().is_some_and(|s| s.dirty);
        if sync_needed && self.inner.policy == FsyncPolicy::Always {
            self.launch_sync();
        } else if sync_needed {
            let seg = self.seg.as_mut().expect("a segment");
            let upto = self.inner.st.borrow().written_lsn;
            let t = Instant::now();
            seg.file
                .fdatasync()
                .await
                .map_err(|e| reason("fdatasync", &seg.path, e))?;
            seg.dirty = false;
            let us = t.elapsed().as_micros() as u64;
            let mut st = self.inner.st.borrow_mut();
            st.counters.syncs += 1;
            let _ = st.sync_latency.record(us.max(1));
            if st.reset_epoch == epoch && upto > st.durable_lsn {
                st.durable_lsn = upto;
                st.trim();
                if st.durable_lsn < st.next_lsn {
                    st.oldest_undurable = Some(started);
                }
            }
        }
        Ok(())
    }

    /// Always: issues an fdatasync covering every record written so far,
    /// unless one already covers them or `max_syncs` are in flight. It runs
    /// as its own task, sharing the segment's file, while the writer goes
    /// on; its completion makes records durable by the rule of `syncs.rs`
    /// ([`sync_done`]). The task and its future are one allocation per sync
    /// (per batch of answers, not per answer).
    fn launch_sync(&mut self) {
        if self.broken {
            return;
        }
        let Some(seg) = self.seg.as_mut() else {
            return;
        };
        let mut st = self.inner.st.borrow_mut();
        let upto = st.written_lsn;
        let covered = st.syncs.issued_upto().max(st.durable_lsn);
        // After a failed sync, nothing more on this segment until the
        // writer has abandoned it: a later sync must not vouch for it.
        if upto <= covered
            || st.syncs.in_flight() >= self.inner.cfg.max_syncs
            || st.sync_failed.is_some()
        {
            return;
        }
        let ticket = st.syncs.issue(upto, Instant::now());
        let epoch = st.reset_epoch;
        drop(st);
        seg.dirty = false;
        let file = seg.file.clone();
        let path = seg.path.clone();
        let inner = self.inner.clone();
        glommio::spawn_local(async move {
            let r = file
                .fdatasync()
                .await
                .map_err(|e| reason("fdatasync", &path, e));
            // Released before the writer may look for the last holder.
            drop(file);
            sync_done(&inner, ticket, epoch, r);
        })
        .detach();
    }

    /// Waits until no sync is in flight (before the segment is sealed or
    /// closed). `Err` if one of them failed.
    async fn drain_syncs(&self) -> Result<(), Rc<str>> {
        loop {
            {
                let mut st = self.inner.st.borrow_mut();
                if let Some(why) = st.sync_failed.take() {
                    return Err(why);
                }
                if st.syncs.in_flight() == 0 {
                    return Ok(());
                }
            }
            // sync_done notifies the writer; any other wake-up just loops.
            self.inner.writer.wait().await;
        }
    }

    /// One write of up to `write_bytes` of the queued records before `target`.
    async fn write_some(&mut self, target: u64, epoch: u64) -> Result<(), Rc<str>> {
        let seg = self.seg.as_mut().expect("a segment");
        let (buf, bytes, fit, padding, first) = {
            let st = self.inner.st.borrow();
            let from = (st.written_lsn - st.base_lsn) as usize;
            let to = (target - st.base_lsn) as usize;
            let room = ((seg.limit - seg.pos) / seg.unit * seg.unit) as usize;
            let max_sectors = room.min(self.inner.cfg.write_bytes) / SECTOR;
            let (sectors, fit) = plan(st.queue.range(from..to), max_sectors);
            debug_assert!(fit > 0, "a write has room and records");
            let bytes = ((sectors * SECTOR) as u64).div_ceil(seg.unit) * seg.unit;
            let mut buf = seg.file.alloc_dma_buffer(bytes as usize);
            let e = encode_batch(
                buf.as_bytes_mut(),
                seg.salt,
                st.written_lsn,
                st.queue.range(from..from + fit),
            );
            debug_assert_eq!(e.records, fit);
            (buf, bytes, fit, e.padding_bytes, st.written_lsn)
        };
        let n = seg
            .file
            .write_at(buf, seg.pos)
            .await
            .map_err(|e| reason("write", &seg.path, e))?;
        if n as u64 != bytes {
            return Err(short_write(&seg.path));
        }
        seg.pos += bytes;
        seg.dirty = true;
        let mut st = self.inner.st.borrow_mut();
        st.counters.bytes += bytes;
        st.counters.records += fit as u64;
        st.counters.padding_bytes += padding as u64;
        if st.reset_epoch != epoch || st.written_lsn != first {
            return Ok(());
        }
        st.written_lsn += fit as u64;
        let written = st.written_lsn;
        if let Some(info) = st.segments.last_mut() {
            info.end_lsn = info.end_lsn.max(written);
        }
        if st.written_lsn == st.next_lsn {
            st.oldest_unwritten = None;
        }
        if self.inner.policy == FsyncPolicy::Never {
            st.durable_lsn = st.written_lsn;
            st.trim();
        }
        Ok(())
    }

    /// Closes the current segment (sealed and synced, unless it failed) and
    /// starts the next one at the first record not yet durable.
    async fn rotate(&mut self) -> Result<(), Rc<str>> {
        if let Some(mut old) = self.seg.take() {
            if !self.broken {
                if let Err(e) = self.drain_syncs().await {
                    close_file(old.file).await;
                    return Err(e);
                }
                let r = self
                    .seal(&mut old, self.inner.policy != FsyncPolicy::Never)
                    .await;
                if let Err(e) = r {
                    close_file(old.file).await;
                    return Err(e);
                }
                let mut st = self.inner.st.borrow_mut();
                if st.written_lsn > st.durable_lsn {
                    st.durable_lsn = st.written_lsn;
                    st.trim();
                }
            }
            close_file(old.file).await;
        }
        // Syncs still in flight on an abandoned segment count no more.
        self.inner.st.borrow_mut().syncs.abandon();
        let seg = self.new_segment().await?;
        self.broken = false;
        let mut st = self.inner.st.borrow_mut();
        st.segments.push(SegInfo {
            path: seg.path.to_path_buf(),
            end_lsn: seg.first_lsn,
        });
        self.seg = Some(seg);
        Ok(())
    }

    /// Writes the seal sector and, if `sync`, syncs the segment.
    async fn seal(&self, seg: &mut OpenSegment, sync: bool) -> Result<(), Rc<str>> {
        let next = self.inner.st.borrow().written_lsn;
        let mut buf = seg.file.alloc_dma_buffer(seg.unit as usize);
        let b = buf.as_bytes_mut();
        encode_seal(&mut b[..SECTOR], seg.salt, next, 0);
        for s in (SECTOR..b.len()).step_by(SECTOR) {
            encode_pad(&mut b[s..s + SECTOR], seg.salt, next);
        }
        let n = seg
            .file
            .write_at(buf, seg.pos)
            .await
            .map_err(|e| reason("write", &seg.path, e))?;
        if n as u64 != seg.unit {
            return Err(short_write(&seg.path));
        }
        seg.pos += seg.unit;
        self.inner.st.borrow_mut().counters.bytes += seg.unit;
        if sync {
            seg.file
                .fdatasync()
                .await
                .map_err(|e| reason("fdatasync", &seg.path, e))?;
            seg.dirty = false;
        }
        Ok(())
    }

    /// A new segment: a recycled free file if there is one, else a new
    /// zeroed one. Its header, and its name in the directory, are
    /// durable before it is used.
    async fn new_segment(&mut self) -> Result<OpenSegment, Rc<str>> {
        let cfg = &self.inner.cfg;
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = FileName::Segment {
            generation: cfg.generation,
            shard: self.inner.shard as u32,
            seq,
        };
        let path = self.inner.dir.join(name.to_string());
        let recycled = self.inner.st.borrow_mut().free.pop();
        let (file, from) = match &recycled {
            Some(free) => match OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(free)
                .await
            {
                Ok(f) => (f, Some(free.clone())),
                Err(_) => {
                    let _ = glommio::io::remove(free).await;
                    (self.create(&path).await?, None)
                }
            },
            None => {
                // A new file is made, zeroed, as a free file first, then
                // used as a recycled one: a crash while it is zeroed
                // leaves a free file, never a segment without a header.
                let (free, n) = {
                    let mut st = self.inner.st.borrow_mut();
                    let n = st.next_free;
                    (self.inner.new_free_path(&mut st), n)
                };
                // A failed try leaves no file, and gives its number back
                // unless a later one was taken meanwhile (a checkpoint's):
                // the retries of a full disk then report the same name (one
                // log line, not one per retry).
                let give_back = |inner: &Inner| {
                    let mut st = inner.st.borrow_mut();
                    if st.next_free == n + 1 {
                        st.next_free = n;
                    }
                };
                let file = match self.create(&free).await {
                    Ok(file) => file,
                    Err(e) => {
                        give_back(&self.inner);
                        return Err(e);
                    }
                };
                if let Err(e) = self.zero_fill(&file, &free).await {
                    let _ = file.close().await;
                    // A file that stays keeps its number (a retry under the
                    // same name would find it there).
                    if glommio::io::remove(&free).await.is_ok() {
                        give_back(&self.inner);
                    }
                    return Err(e);
                }
                (file, Some(free))
            }
        };
        let r = self.prepare(&file, &path, seq, from.as_deref()).await;
        match r {
            Ok((unit, salt, (first_lsn, epoch))) => Ok(OpenSegment {
                file: Rc::new(file),
                path: path.into(),
                salt,
                unit,
                pos: unit,
                limit: cfg.segment_bytes / unit * unit - unit,
                first_lsn,
                epoch,
                dirty: false,
            }),
            Err(e) => {
                let _ = file.close().await;
                // A half-made new file goes; a free one stays free.
                match from {
                    None => {
                        let _ = glommio::io::remove(&path).await;
                    }
                    Some(free) => self.inner.st.borrow_mut().free.push(free),
                }
                Err(e)
            }
        }
    }

    async fn create(&self, path: &Path) -> Result<DmaFile, Rc<str>> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(path)
            .await
            .map_err(|e| reason("create", path, e))
    }

    /// Writes the header, syncs, renames the (recycled, or new and zeroed)
    /// free file into place, syncs the directory. Returns (unit, salt, first LSN).
    async fn prepare(
        &self,
        file: &DmaFile,
        path: &Path,
        seq: u64,
        from: Option<&Path>,
    ) -> Result<(u64, u64, (u64, u64)), Rc<str>> {
        let cfg = &self.inner.cfg;
        let unit = file.alignment().max(SECTOR as u64);
        if unit > MAX_UNIT as u64 {
            return Err(format!("device block size {unit} is above {MAX_UNIT}").into());
        }
        let (first_lsn, epoch) = {
            let st = self.inner.st.borrow();
            (st.written_lsn, st.reset_epoch)
        };
        let salt = new_salt();
        let header = FileHeader {
            kind: FileKind::Segment,
            unit: unit as u32,
            shard: self.inner.shard as u32,
            shards: cfg.shards as u32,
            generation: cfg.generation,
            seq,
            first_lsn,
            salt,
            created_ms: now_ms(),
        };
        let mut buf = file.alloc_dma_buffer(unit as usize);
        header.encode(buf.as_bytes_mut());
        let n = file
            .write_at(buf, 0)
            .await
            .map_err(|e| reason("write", path, e))?;
        if n as u64 != unit {
            return Err(short_write(path));
        }
        file.fdatasync()
            .await
            .map_err(|e| reason("fdatasync", path, e))?;
        if let Some(from) = from {
            glommio::io::rename(from, path)
                .await
                .map_err(|e| reason("rename", path, e))?;
        }
        self.dir
            .sync()
            .await
            .map_err(|e| reason("fsync directory", &self.inner.dir, e))?;
        self.inner.st.borrow_mut().counters.bytes += unit;
        Ok((unit, salt, (first_lsn, epoch)))
    }

    /// Preallocates a new segment and writes zeros over it, then syncs it,
    /// once, before any record goes in (ScyllaDB does the same). Preallocated space is "unwritten"
    /// to ext4: every record written into it would convert extents, and
    /// every fdatasync after that would commit the filesystem's journal,
    /// milliseconds each here; over written blocks an fdatasync only
    /// flushes the data. Recycled segments are written already.
    async fn zero_fill(&self, file: &DmaFile, path: &Path) -> Result<(), Rc<str>> {
        const CHUNK: usize = 1 << 20;
        let size = self.inner.cfg.segment_bytes;
        if let Err(e) = file.pre_allocate(size, false).await {
            let e = os_error(e);
            if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) {
                return Err(io_reason("preallocate", path, e));
            }
        }
        let mut at = 0u64;
        while at < size {
            let len = CHUNK.min((size - at) as usize);
            let mut buf = file.alloc_dma_buffer(len);
            buf.as_bytes_mut().fill(0);
            let n = file
                .write_at(buf, at)
                .await
                .map_err(|e| reason("write", path, e))?;
            if n != len {
                return Err(short_write(path));
            }
            at += len as u64;
        }
        file.fdatasync()
            .await
            .map_err(|e| reason("fdatasync", path, e))
    }

    /// Accounts the outcome of a flush: on success the journal is healthy;
    /// on failure it is degraded, the segment is abandoned and the records
    /// not yet durable will be written again into a new one.
    fn settle(&mut self, r: Result<(), Rc<str>>) {
        let mut st = self.inner.st.borrow_mut();
        match r {
            Ok(()) => {
                st.failed_at = None;
                // Healthy again once the syncs of these writes succeed too.
                if st.syncs.in_flight() == 0 {
                    st.io_failed = None;
                }
                st.wake_durable();
            }
            Err(why) => {
                st.syncs.abandon();
                st.sync_failed = None;
                st.counters.errors += 1;
                st.io_failed = Some(why);
                st.failed_at = Some(Instant::now());
                st.fail_epoch += 1;
                st.written_lsn = st.durable_lsn;
                st.oldest_unwritten = st.oldest_undurable;
                if self.seg.is_some() {
                    self.broken = true;
                }
                st.wake_waiters();
            }
        }
    }

    /// Everything queued written and synced, the segment sealed and closed.
    async fn close(&mut self) -> Result<(), JournalError> {
        let r = async {
            self.flush(true).await?;
            self.drain_syncs().await?;
            if let Some(mut seg) = self.seg.take() {
                if !self.broken {
                    let r = self.seal(&mut seg, true).await;
                    close_file(seg.file).await;
                    r?;
                    let mut st = self.inner.st.borrow_mut();
                    st.durable_lsn = st.durable_lsn.max(st.written_lsn);
                    st.trim();
                }
            }
            Ok::<(), Rc<str>>(())
        }
        .await;
        let mut st = self.inner.st.borrow_mut();
        match r {
            Ok(()) if st.durable_lsn == st.next_lsn => Ok(()),
            Ok(()) => Err(JournalError::Degraded(
                "records left unwritten at close".into(),
            )),
            Err(why) => {
                st.counters.errors += 1;
                st.io_failed = Some(why.clone());
                Err(JournalError::Degraded(why))
            }
        }
    }
}
