//! A new feed version taking over a shard (`SIGHUP`, see
//! `server/reload.rs`): the store is swapped between two requests, so every
//! request is answered wholly from the old or wholly from the new version,
//! and the users' progress follows by the prefix rule ([`crate::feed`]'s
//! `carry`), in chunks between which the shard serves. A request for a user
//! not carried yet carries that user first, so nobody is ever served from
//! the new version without their progress.
//!
//! The old store is freed on a thread of its own once every user is
//! carried: returning gigabytes to the kernel takes long enough to be felt
//! by the requests waiting behind it.

use std::time::Duration;

use super::Shard;
use crate::feed::{Carried, Restored, Store};

/// Users carried per chunk: ~0.5 ms of work, so a chunk does not show in
/// the requests' latency.
const CARRY_CHUNK: usize = 2048;

/// The pause between chunks. A timer, not `yield_now`: a task that is
/// always ready keeps glommio from polling for I/O until its 100 ms
/// preemption timer fires, while a sleeping one lets the executor run out
/// of work and poll.
pub(super) const BETWEEN_CHUNKS: Duration = Duration::from_micros(50);

/// The version a shard is leaving, while its users' progress is carried.
pub(super) struct Succession {
    old: Store,
    tally: Carried,
}

impl Shard {
    /// Serves `new` from the next request on, carries every user's progress
    /// over from the store it replaces, frees that store; returns what
    /// became of the users' progress.
    pub async fn succeed(&self, mut new: Store) -> Carried {
        let old = {
            let mut store = self.store.borrow_mut();
            new.succeed(&store);
            std::mem::replace(&mut *store, new)
        };
        self.generation.set(self.generation.get() + 1);
        *self.succession.borrow_mut() = Some(Succession {
            old,
            tally: Carried::default(),
        });
        let mut from = Some(0);
        let mut reset = Vec::with_capacity(CARRY_CHUNK);
        while let Some(at) = from {
            {
                let mut store = self.store.borrow_mut();
                let mut succession = self.succession.borrow_mut();
                let s = succession.as_mut().expect("a succession in progress");
                reset.clear();
                from = store.carry_from(&mut s.old, at, CARRY_CHUNK, &mut s.tally, &mut reset);
                for &user in &reset {
                    self.journal_reset(&store, user);
                }
            }
            glommio::timer::sleep(BETWEEN_CHUNKS).await;
        }
        let Succession { old, tally } = self.succession.borrow_mut().take().expect("succession");
        free_elsewhere(old);
        tally
    }

    /// Carries `user`'s progress into `store` (the shard's current one) if a
    /// succession is under way and has not reached them yet. On the hot path:
    /// one flag check when no reload runs.
    #[inline]
    pub(super) fn carry_first(&self, store: &mut Store, user: u32) {
        if let Some(s) = self.succession.borrow_mut().as_mut() {
            if let Some(r) = store.carry(&mut s.old, user) {
                s.tally.count(r);
                if r != Restored::Kept {
                    self.journal_reset(store, user);
                }
            }
        }
    }

    /// Records that `user` starts the new version's list again (or is not
    /// in it: a restart on the old feed finds them at its start too). Without
    /// it the journal's last word on them would be their old progress,
    /// which a restart on the old feed would bring back (a reload back to
    /// it would not). Kept progress needs no record: it is the same
    /// either way. Not waited for, under any `--fsync`: no answer depends
    /// on it.
    fn journal_reset(&self, store: &Store, user: u32) {
        if let Some(journal) = &self.journal {
            journal.append(crate::journal::Progress {
                user,
                served: 0,
                version: store.version(),
                prefix: crate::feed::EMPTY_PREFIX as u64,
            });
        }
    }

    /// A succession is under way (a checkpoint now would miss the users not
    /// carried yet).
    pub(super) fn succeeding(&self) -> bool {
        self.succession.borrow().is_some()
    }
}

/// Drops `old` on a thread of its own, at a low priority (a thread
/// start, once per reload: the one syscall here beyond the socket's).
fn free_elsewhere(old: Store) {
    let spawned = std::thread::Builder::new()
        .name("free-old-feed".into())
        .spawn(move || {
            crate::host::lower_thread_priority();
            drop(old);
        });
    if let Err(e) = spawned {
        // The store was moved into the closure and dropped with it.
        crate::log_line!("cannot start a thread to free the old feed ({e}): freed in place");
    }
}
