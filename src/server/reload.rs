//! `SIGHUP`: a new feed version without a restart (SPEC "Feed versions").
//!
//! `--feed` and `--fallback` are read again from the same paths by the
//! same loaders as at start-up, on a thread of their own at a low
//! priority (nice 10), beside the version that keeps serving: memory is at
//! most old plus new. A file that does not load leaves the old version
//! serving, logged and counted (`shardfeed_reloads_total{result="failed"}`).
//! Once every shard's new store is built, each shard takes its own at its
//! next poll ([`RELOAD_POLL`]) and switches between two requests
//! ([`crate::shard::Shard::succeed`]), so a request is answered wholly from
//! one version; the users' progress follows by the prefix rule.
//!
//! One reload at a time; signals that arrive during one are folded into one
//! more reload after it (a pipeline that renames two files in a row gets
//! the last).

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::feed::{Carried, Store};
use crate::health::Health;
use crate::load::{self, Feeds};
use crate::shard::{Ownership, Shard};

/// How often a shard looks for a new version.
const RELOAD_POLL: Duration = Duration::from_millis(20);

/// Where a shard finds its next store, from the reload thread.
#[derive(Default)]
pub(super) struct Mailbox {
    full: AtomicBool,
    /// The new store, and where to say what became of the users' progress.
    letter: Mutex<Option<(Store, mpsc::Sender<Carried>)>>,
}

impl Mailbox {
    fn deliver(&self, store: Store, done: mpsc::Sender<Carried>) {
        *self.letter.lock().unwrap_or_else(|e| e.into_inner()) = Some((store, done));
        self.full.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<(Store, mpsc::Sender<Carried>)> {
        if !self.full.swap(false, Ordering::Acquire) {
            return None;
        }
        self.letter.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A shard's task: takes each new version delivered to `mailbox`.
pub(super) async fn take_new_versions(shard: Rc<Shard>, mailbox: Arc<Mailbox>) {
    loop {
        glommio::timer::sleep(RELOAD_POLL).await;
        if let Some((store, done)) = mailbox.take() {
            let carried = shard.succeed(store).await;
            let _ = done.send(carried);
        }
    }
}

/// Asks a running server to reload its feeds, from any thread.
#[derive(Clone)]
pub struct ReloadHandle(mpsc::Sender<()>);

impl ReloadHandle {
    /// Starts a reload, or one more after the one under way.
    pub fn reload(&self) {
        let _ = self.0.send(());
    }
}

/// What a reload needs from the server's configuration.
pub(super) struct Reloader {
    pub feeds: Feeds,
    pub cpus: Vec<usize>,
    pub pin: bool,
    pub ownership: Ownership,
    pub health: Health,
    pub mailboxes: Vec<Arc<Mailbox>>,
}

impl Reloader {
    /// Starts the reload thread; it lives as long as the process.
    pub(super) fn start(self) -> Result<ReloadHandle, String> {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                // Inherited by the loader threads it starts.
                crate::host::lower_thread_priority();
                while rx.recv().is_ok() {
                    // Signals that came meanwhile are served by this reload.
                    while rx.try_recv().is_ok() {}
                    self.reload();
                }
            })
            .map_err(|e| format!("cannot start the reload thread: {e}"))?;
        Ok(ReloadHandle(tx))
    }

    fn reload(&self) {
        let started = Instant::now();
        crate::log_line!("reload: reading the feeds again (the current version serves meanwhile)");
        // `--user-column`/`--items-column` name a Parquet file's columns; a
        // pipeline that switches to a snapshot (or TSV) at the same path
        // must not need a restart to drop them.
        let mut feeds = std::borrow::Cow::Borrowed(&self.feeds);
        if let load::Source::File(path) = &self.feeds.source {
            if load::detect(path).ok() != Some(load::Format::Parquet) {
                feeds.to_mut().columns = load::Columns::default();
            }
        }
        let stores = load::load_stores(&feeds, &self.cpus, self.pin, &self.ownership);
        let stores = match stores {
            Ok(stores) => stores,
            Err(e) => {
                self.health.count_reload(false);
                return crate::log_line!("reload failed, the current version keeps serving: {e}");
            }
        };
        let version = stores.first().map_or(0, Store::version);
        let (done_tx, done) = mpsc::channel();
        for (store, mailbox) in stores.into_iter().zip(&self.mailboxes) {
            mailbox.deliver(store, done_tx.clone());
        }
        drop(done_tx);
        let mut carried = Carried::default();
        for _ in &self.mailboxes {
            match done.recv() {
                Ok(c) => carried.add(c),
                // A shard stopped (the process is stopping): the rest
                // does not matter any more.
                Err(_) => return,
            }
        }
        self.health.count_reload(true);
        crate::log_line!(
            "reload: version {} serves on every shard, {:.2} s after the signal; users with \
             progress: {} kept it, {} start their new list again (it changed), {} not in it \
             any more",
            load::version_id(version),
            started.elapsed().as_secs_f64(),
            carried.kept,
            carried.reset,
            carried.gone
        );
    }
}
