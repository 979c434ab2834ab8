//! Progress on disk at start-up (`--state-dir`): read the state directory
//! before loading (a bad directory fails fast), restore every shard's users
//! from it once the stores are loaded, and plan each shard's journal.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::feed::{Progress, Restored, Store};
use crate::journal::{self, DirLock, FsyncPolicy, JournalConfig, Recovery};
use crate::shard::{JournalPlan, Ownership};

/// `--state-dir` and `--fsync`.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
}

/// What the shards start from: one journal plan each (`None` without
/// `--state-dir`), and the directory's lock, held for the process's life.
pub(super) struct State {
    pub plans: Vec<Option<JournalPlan>>,
    pub lock: Option<DirLock>,
}

/// Reads everything in the state directory (or says that progress is kept
/// in memory only).
pub(super) fn recover(state: Option<&StateConfig>) -> Result<Option<Recovery>, String> {
    let Some(state) = state else {
        crate::log_line!(
            "progress is kept in memory only (no --state-dir): \
             a restart starts every user at the beginning of their feed"
        );
        return Ok(None);
    };
    let recovery = journal::recover(&state.dir)?;
    // One timestamped line per file that lost something or was ignored.
    for line in recovery.report.to_string().lines() {
        crate::log_line!("{}", line.trim_start());
    }
    Ok(Some(recovery))
}

/// Refuses a directory that holds users another instance owns under this
/// cluster file: the start's first checkpoint would cover only this
/// instance's users and so erase theirs, before `relayout` could move
/// them (a changed or wrong cluster file). Called before the feed loads,
/// so that the refusal comes in seconds, not after a long load.
pub(super) fn refuse_foreign_users(
    state: Option<&StateConfig>,
    recovery: Option<&Recovery>,
    ownership: &Ownership,
) -> Result<(), String> {
    let (Some(state), Some(recovery)) = (state, recovery) else {
        return Ok(());
    };
    let mut foreign = recovery
        .users
        .iter()
        .filter(|p| ownership.shard_of(p.user).is_none());
    match foreign.next() {
        None => Ok(()),
        Some(first) => Err(foreign_users(
            state,
            ownership,
            first.user,
            1 + foreign.count(),
        )),
    }
}

/// Gives every store its users' recovered progress (each user goes to its
/// owner under this run's `ownership`: shard count and cluster layout), in
/// parallel, and plans the journals. [`refuse_foreign_users`] has run: a
/// user of another instance is refused here too, should one remain.
pub(super) fn restore(
    state: Option<&StateConfig>,
    recovery: Option<Recovery>,
    stores: &mut [Store],
    ownership: &Ownership,
) -> Result<State, String> {
    let shards = stores.len();
    let (Some(state), Some(recovery)) = (state, recovery) else {
        return Ok(State {
            plans: vec![None; shards],
            lock: None,
        });
    };
    // Part `shards`: users of other instances.
    let parts = recovery.partition(shards + 1, |user| {
        ownership.shard_of(user).map_or(shards, |s| s.0)
    });
    if let Some(first) = parts[shards].first() {
        return Err(foreign_users(
            state,
            ownership,
            first.user,
            parts[shards].len(),
        ));
    }
    for store in stores.iter_mut() {
        store.journal_progress();
    }
    let read = recovery.report.took;
    let results: Vec<(Tally, Duration)> = std::thread::scope(|scope| {
        let threads: Vec<_> = stores
            .iter_mut()
            .zip(&parts)
            .map(|(store, part)| scope.spawn(move || restore_shard(store, part)))
            .collect();
        let joined = threads
            .into_iter()
            .map(|t| t.join().expect("restore thread"));
        joined.collect()
    });
    let mut all = Tally::default();
    for (t, _) in &results {
        all.add(t);
    }
    crate::log_line!(
        "progress restored: {} users continue, {} start again (their feed changed), \
         {} are not in this feed",
        all.kept,
        all.reset,
        all.unknown
    );
    let config = JournalConfig::after(&recovery, shards);
    let plans = results
        .iter()
        .map(|(_, took)| {
            Some(JournalPlan {
                dir: state.dir.clone(),
                policy: state.fsync,
                config: config.clone(),
                replay: read + *took,
            })
        })
        .collect();
    Ok(State {
        plans,
        lock: Some(recovery.lock),
    })
}

/// The start-up error for a state directory holding `count` users of other
/// instances, `user` one of them.
fn foreign_users(state: &StateConfig, ownership: &Ownership, user: u32, count: usize) -> String {
    let owner = match ownership {
        Ownership::Cluster(seat) => {
            let o = seat.cluster.owner(user);
            format!(
                " (user {user}: instance {})",
                seat.cluster.instances[o.instance].name
            )
        }
        Ownership::Alone { .. } => String::new(),
    };
    format!(
        "--state-dir {}: {count} users in it belong to other instances under this --cluster \
         file{owner}. If the layout changed, move their progress first with `shardfeed \
         relayout` (README, \"Changing the layout\"); if not, this is the wrong cluster file \
         or state directory. Its files were left as they are",
        state.dir.display()
    )
}

#[derive(Debug, Default)]
struct Tally {
    kept: u64,
    reset: u64,
    unknown: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.kept += o.kept;
        self.reset += o.reset;
        self.unknown += o.unknown;
    }
}

fn restore_shard(store: &mut Store, part: &[journal::Progress]) -> (Tally, Duration) {
    let started = Instant::now();
    let version = store.version();
    let mut tally = Tally::default();
    // A user who was served nothing has nothing to restore, and is not
    // counted as one who continues (checkpoints list every user).
    for p in part.iter().filter(|p| p.served > 0) {
        let progress = Progress {
            user: p.user,
            served: p.served,
            // Written from a 32-bit hash (see `feed::prefix_hash`).
            prefix: p.prefix as u32,
        };
        match store.restore(progress, p.version == version) {
            Restored::Kept => tally.kept += 1,
            Restored::Reset => tally.reset += 1,
            Restored::Unknown => tally.unknown += 1,
        }
    }
    (tally, started.elapsed())
}
