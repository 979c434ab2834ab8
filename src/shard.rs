//! Shards: which core owns which user, and how a page request reaches the
//! owner.
//!
//! Every page request has one shape (Seastar's `sharded_cache`): if this
//! shard owns the user, ask the local store; otherwise send the request to
//! the owner over a cross-core channel and wait for its reply. Only the owner
//! ever touches a user's progress, so progress needs no locks and no atomics.
//! Ownership is decided here alone, by [`owner_of`]; the loaders ask it which
//! users each shard keeps.
//!
//! Around this core: `shard/tickets.rs` (the origin's table of requests awaiting a
//! reply), `shard/mesh.rs` (creating and connecting the channels), `shard/control.rs`
//! (gathering every shard's metrics, and the shard's stop announcement).
//!
//! Connection moves: a connection whose requests keep going to one other
//! shard (the policy is in `session.rs`, [`crate::session::MOVE_AFTER`], `--move-after`) is
//! handed to that shard ([`Shard::hand_off`], `conn.rs` does the socket
//! side), so that its later requests are local. Here is only where it may
//! go ([`Backend::home`]) and the channel it travels by, one per ordered
//! pair of shards, one-way, sent with `try_send` only (full: the
//! connection stays).
//!
//! Why forwarding cannot deadlock: requests are only ever sent with
//! `try_send` (a full queue answers `503` at once), so a connection task never
//! waits on a channel. The only task that waits to send is the owner's
//! serving task (waiting for room in a reply channel), and the task that
//! empties a reply channel sends nothing at all, so it always makes progress.
//! There is no cycle of senders waiting on each other (glommio issue 555).

mod control;
mod mesh;
mod succession;
mod tickets;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use glommio::{GlommioError, ResourceType};

use crate::cluster::ClusterSeat;
use crate::conn::Handoff;
use crate::feed::{Page, Store, Unserved};
use crate::hash::mix64;
use crate::journal::{self, FsyncPolicy, Lsn, ShardJournal};
use crate::metrics::{Class, JournalSnapshot, Route, ShardMetrics, Snapshot};
use crate::session::{Backend, PageAsk, Pending};
use crate::watchdog::Registry;
pub use mesh::{make_links, Links};
pub use tickets::Ticket;
use tickets::{Tickets, Token};

/// Requests queued to one peer before `503`.
pub const REQUEST_QUEUE: usize = 1024;
/// Replies queued back from one peer. Larger than the request queue so that
/// an owner rarely waits for the origin to drain replies.
pub const REPLY_QUEUE: usize = 4096;
/// Connections moving to one peer at once; beyond, a connection stays.
pub const HANDOFF_QUEUE: usize = 256;
/// Default forwarded requests awaiting an answer, per shard, before `503`.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Page buffers kept for reuse per shard.
const PAGE_FREE_LIST: usize = 4096;
/// When answers wait for the journal, forwarded requests an owner serves
/// before it waits once for their records and replies to all of them.
const DURABLE_BATCH: usize = 256;
/// Users whose progress a checkpoint copies between two yields.
const CHECKPOINT_CHUNK: usize = 4096;
/// How often a shard asks its journal whether a checkpoint is due.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// Seed of the ownership hash. Never change it: it decides where every user
/// lives for a given shard count.
const OWNER_SEED: u64 = 0x6a09_e667_f3bc_c908;

/// A shard's index, 0..shards. Not a CPU number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// The shard that owns `user` among `shards`.
///
/// A fixed mixing function (SplitMix64's finalizer), not ahash: ahash's
/// output depends on the crate version and on the CPU features the binary was
/// built with, and this mapping must be the same for every build.
#[inline]
pub fn owner_of(user: u32, shards: usize) -> ShardId {
    ShardId((mix64(user as u64 ^ OWNER_SEED) % shards as u64) as usize)
}

/// Which users this process's shards own, and which shard each.
///
/// Alone, a process owns every user ([`owner_of`]). As instance `instance`
/// of a cluster (`serve --cluster`), it owns the users that
/// [`crate::cluster::Cluster::owner`] gives it, its shard `i` those of pair
/// (`instance`, `i`); any other user is *misdirected* here: answered with
/// fallback items, no progress anywhere (SPEC "Beyond one machine").
#[derive(Debug, Clone)]
pub enum Ownership {
    Alone { shards: usize },
    Cluster(ClusterSeat),
}

impl Ownership {
    pub fn new(shards: usize, cluster: Option<ClusterSeat>) -> Ownership {
        match cluster {
            Some(seat) => {
                let own = seat.cluster.instances[seat.instance].shards;
                assert_eq!(own, shards, "an instance runs the shards its line says");
                Ownership::Cluster(seat)
            }
            None => Ownership::Alone { shards },
        }
    }

    /// Whether users are placed by [`owner_of`]`(user, shards)`, as
    /// `shardfeed pack --shards` places them (a process alone with that
    /// many shards): a snapshot's sections are then the shards' stores.
    pub fn placed_by_owner_of(&self, shards: usize) -> bool {
        matches!(self, Ownership::Alone { shards: n } if *n == shards)
    }

    /// The shard of this process that owns `user`; `None`: another
    /// instance does. Allocates nothing.
    #[inline]
    pub fn shard_of(&self, user: u32) -> Option<ShardId> {
        match self {
            Ownership::Alone { shards } => Some(owner_of(user, *shards)),
            Ownership::Cluster(seat) => {
                let o = seat.cluster.owner(user);
                (o.instance == seat.instance).then_some(ShardId(o.shard))
            }
        }
    }
}

/// A page request forwarded from its origin shard to the user's owner.
///
/// Contract:
/// - Sent only by the origin, only with `try_send`; a full channel is
///   answered `503` by the origin and nothing is sent.
/// - The owner answers every request it receives, in the order received,
///   with exactly one [`PageReply`] carrying the same `token`, on the reply
///   channel back to the origin.
/// - `items` is an empty buffer of the origin's (capacity >= `size`); the
///   owner fills it and sends it back in the reply's [`Page`], and the origin
///   reuses it: forwarding allocates nothing in steady state.
/// - If a channel closes, its shard has stopped, and the process stops with
///   it (see `server.rs`): no request is silently dropped in a live server.
#[derive(Debug)]
pub struct PageRequest {
    pub token: Token,
    pub ask: PageAsk,
    pub items: Vec<u32>,
    /// When the origin sent it, for the round-trip histogram.
    pub sent_at: Instant,
}

/// The owner's answer to one [`PageRequest`].
#[derive(Debug)]
pub struct PageReply {
    pub token: Token,
    pub page: Page,
    pub sent_at: Instant,
}

/// One shard's state, shared by its tasks (never across cores).
pub struct Shard {
    pub id: ShardId,
    ownership: Ownership,
    /// Only this shard's users; only this shard's tasks touch it.
    store: RefCell<Store>,
    /// The version `store` replaces, while its users' progress is carried
    /// over (a reload).
    succession: RefCell<Option<succession::Succession>>,
    /// Counts the stores this shard has served: a walk over the store
    /// between awaits (a checkpoint) sees whether it changed under it.
    generation: Cell<u64>,
    /// `peers[p]`: request channel to shard p (`None` for ourselves).
    peers: Vec<Option<ConnectedSender<PageRequest>>>,
    tickets: RefCell<Tickets>,
    /// Page buffers for reuse, each with room for the largest page.
    free_pages: RefCell<Vec<Vec<u32>>>,
    page_capacity: usize,
    pub metrics: RefCell<ShardMetrics>,
    control: control::Control,
    /// This shard's users' progress on disk (`--state-dir`), if kept.
    journal: Option<ShardJournal>,
    /// How long this shard's start-up replay took (for metrics).
    replay: Duration,
    /// This shard's open connections and their deadlines. The open count
    /// is read from here (no separate gauge to keep in step).
    pub connections: Rc<Registry>,
    /// `handoffs_to[p]`: connections moving to shard p (`None` for
    /// ourselves); empty when connections do not move
    /// (`--no-move-connections`).
    handoffs_to: Vec<Option<ConnectedSender<Box<Handoff>>>>,
    /// Feed requests in a row for one other shard's users after which a
    /// connection moves there (`--move-after`).
    move_after: u8,
    /// Connections moving here, until the server takes the channels
    /// ([`Shard::take_handoffs`]).
    handoffs_from: RefCell<Vec<ConnectedReceiver<Box<Handoff>>>>,
}

impl Shard {
    /// A page for `ask`: from the local store if this shard owns the user,
    /// else forwarded to the owner. Give the page's buffer back with
    /// [`Shard::recycle`] once it is written.
    pub fn page(self: &Rc<Self>, ask: PageAsk, now: Instant) -> Pending<Waiting> {
        let Some(owner) = self.ownership.shard_of(ask.user) else {
            return Pending::Ready(self.misdirected(ask));
        };
        let items = self.take_buffer();
        if owner == self.id {
            let (page, lsn) = self.serve_here(ask, items);
            return match (lsn, &self.journal) {
                (Some(lsn), Some(j)) if answers_wait(j.policy()) => {
                    Pending::Durable(Waiting::Durable {
                        shard: self.clone(),
                        page: Some(page),
                        durable: j.durable(lsn),
                    })
                }
                _ => Pending::Ready(page),
            };
        }
        let Some(token) = self.tickets.borrow_mut().open() else {
            return Pending::Ready(self.overloaded(items));
        };
        let request = PageRequest {
            token,
            ask,
            items,
            sent_at: now,
        };
        let sender = self.peers[owner.0].as_ref().expect("a peer's channel");
        match sender.try_send(request) {
            Ok(()) => {
                self.metrics.borrow_mut().counters.forwarded_out += 1;
                Pending::Forwarded(Waiting::Reply(Ticket::new(self.clone(), token)))
            }
            // Full (or, while the process stops, closed): answer 503.
            Err(GlommioError::WouldBlock(ResourceType::Channel(request)))
            | Err(GlommioError::Closed(ResourceType::Channel(request))) => {
                self.tickets.borrow_mut().cancel(token);
                Pending::Ready(self.overloaded(request.items))
            }
            Err(e) => unreachable!("try_send fails only as full or closed: {e}"),
        }
    }

    /// Owner side: serves a peer's request; the reply, and the LSN of the
    /// progress it made.
    fn serve_forwarded(&self, req: PageRequest) -> (PageReply, Option<Lsn>) {
        let (page, lsn) = self.serve_here(req.ask, req.items);
        self.metrics.borrow_mut().counters.forwarded_in += 1;
        let reply = PageReply {
            token: req.token,
            page,
            sent_at: req.sent_at,
        };
        (reply, lsn)
    }

    /// The one call into the store, for local and forwarded requests alike:
    /// serves the page and, if it moved the user on, queues the new
    /// progress in the journal (memory only), whose LSN it returns.
    fn serve_here(&self, ask: PageAsk, mut items: Vec<u32>) -> (Page, Option<Lsn>) {
        debug_assert_eq!(
            self.ownership.shard_of(ask.user),
            Some(self.id),
            "only the owner"
        );
        let size = ask.size as usize;
        let mut store = self.store.borrow_mut();
        self.carry_first(&mut store, ask.user);
        let served = store.page(ask.user, size, ask.cursor, &mut items, !ask.peek);
        // A cursor's page that moved the user on is journaled like any
        // other; a pure retry (progress already past its end) reports
        // nothing, so it has no record to wait for.
        let advanced = store.take_advanced();
        let lsn = match (advanced, &self.journal) {
            (Some(p), Some(journal)) => {
                let lsn = journal.append(journal::Progress {
                    user: p.user,
                    served: p.served,
                    version: store.version(),
                    prefix: p.prefix as u64,
                });
                if lsn == Lsn::CLOSED {
                    // A stop past its drain closed the journal: answered,
                    // this page would come again after the restart.
                    items.clear();
                    let page = Page {
                        items,
                        outcome: Err(Unserved::Stopping),
                        cursor: None,
                    };
                    return (page, None);
                }
                Some(lsn)
            }
            _ => None,
        };
        let page = Page {
            items,
            outcome: served.map(|_| ()),
            cursor: served.ok(),
        };
        (page, lsn)
    }

    /// A user of another instance: fallback items only, no progress
    /// changes anywhere, counted; answered with `Shardfeed-Degraded:
    /// not-owner`. Not cold: while an instance is down, the front sends its
    /// users here. A request's cursor comes back unchanged (the user is
    /// still where it says, and continues there once the owner is back),
    /// and its pool offset makes a repeated request's items the same;
    /// without one the answer has no cursor: this instance does not know
    /// where the user is.
    fn misdirected(&self, ask: PageAsk) -> Page {
        let mut items = self.take_buffer();
        self.metrics.borrow_mut().counters.misdirected += 1;
        let mut store = self.store.borrow_mut();
        store.fallback_page(ask.size as usize, ask.cursor, &mut items, !ask.peek);
        Page {
            items,
            outcome: Err(Unserved::NotOwner),
            cursor: ask.cursor,
        }
    }

    #[cold]
    fn overloaded(&self, mut items: Vec<u32>) -> Page {
        self.metrics.borrow_mut().counters.queue_full += 1;
        items.clear();
        Page {
            items,
            outcome: Err(Unserved::Overloaded),
            cursor: None,
        }
    }

    fn take_buffer(&self) -> Vec<u32> {
        self.free_pages
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.page_capacity))
    }

    /// Takes a page buffer back for reuse: the one way buffers return.
    pub fn recycle(&self, items: Vec<u32>) {
        let mut free = self.free_pages.borrow_mut();
        if free.len() < PAGE_FREE_LIST {
            free.push(items);
        }
    }

    /// This shard's metrics, copied.
    pub fn snapshot(&self) -> Snapshot {
        let store = self.store.borrow();
        let mut snapshot = self.metrics.borrow().snapshot(self.id, store.counters());
        let c = &mut snapshot.counters;
        c.open_connections = self.connections.open() as u64;
        c.feed_users = store.users() as u64;
        c.feed_items = store.item_count() as u64;
        c.pool_items = store.pool_len() as u64;
        snapshot.feed_version = store.version();
        snapshot.journal = self.journal.as_ref().map(|j| {
            Box::new(JournalSnapshot {
                stats: j.stats(),
                replay: self.replay,
            })
        });
        snapshot
    }

    /// This shard's journal, if progress is kept on disk.
    pub fn journal(&self) -> Option<&ShardJournal> {
        self.journal.as_ref()
    }

    /// Every shard's snapshot, in shard order (see `shard/control.rs`).
    pub async fn snapshots(&self) -> Option<Vec<Snapshot>> {
        self.control.gather(self.snapshot()).await
    }

    pub fn stopping(&self) -> bool {
        self.control.stopping()
    }

    /// Starts this shard's shutdown: tasks waiting in
    /// [`Shard::stop_announced`] stop (the accept loop), idle connections
    /// are woken to close, busy ones close once answered.
    pub fn begin_shutdown(&self) {
        self.control.announce_stop();
        self.connections.close_idle();
    }

    /// Completes once shutdown has begun.
    pub async fn stop_announced(&self) {
        self.control.stop_announced().await
    }

    /// The shard whose users `user` is one of, if it is another shard of
    /// this process and connections move.
    #[inline]
    fn home(&self, user: u32) -> Option<ShardId> {
        if self.handoffs_to.is_empty() || self.stopping() {
            return None;
        }
        self.ownership.shard_of(user).filter(|&s| s != self.id)
    }

    /// Sends a connection to shard `to` (see `conn.rs`); gives it back if
    /// it cannot go now (the channel is full, or `to` has stopped).
    pub fn hand_off(&self, to: ShardId, handoff: Box<Handoff>) -> Result<(), Box<Handoff>> {
        let Some(Some(sender)) = self.handoffs_to.get(to.0) else {
            return Err(handoff);
        };
        match sender.try_send(handoff) {
            Ok(()) => {
                self.metrics.borrow_mut().counters.connections_moved += 1;
                Ok(())
            }
            Err(GlommioError::WouldBlock(ResourceType::Channel(h)))
            | Err(GlommioError::Closed(ResourceType::Channel(h))) => Err(h),
            Err(_) => unreachable!("try_send fails only as full or closed"),
        }
    }

    /// The channels of the connections moving here, once (the server reads
    /// them, as it accepts connections).
    pub fn take_handoffs(&self) -> Vec<ConnectedReceiver<Box<Handoff>>> {
        std::mem::take(&mut self.handoffs_from.borrow_mut())
    }
}

/// What a connection asks of a shard.
impl Backend for Rc<Shard> {
    type Forwarded = Waiting;

    #[inline]
    fn page(&self, ask: PageAsk, now: Instant) -> Pending<Waiting> {
        Shard::page(self, ask, now)
    }

    fn recycle(&self, items: Vec<u32>) {
        Shard::recycle(self, items)
    }

    fn record(&self, answered: &[(Route, Class)], us: u64) {
        let mut m = self.metrics.borrow_mut();
        for &(route, class) in answered {
            m.record(route, class, us);
        }
    }

    async fn snapshots(&self) -> Option<Vec<Snapshot>> {
        Shard::snapshots(self).await
    }

    fn stopping(&self) -> bool {
        Shard::stopping(self)
    }

    type Home = ShardId;
    #[inline]
    fn home(&self, user: u32) -> Option<ShardId> {
        Shard::home(self, user)
    }

    fn move_after(&self) -> u8 {
        self.move_after
    }
}

/// What a shard starts from.
pub struct ShardParts {
    pub id: ShardId,
    pub shards: usize,
    /// `serve --cluster`: the instance this process is.
    pub cluster: Option<ClusterSeat>,
    pub store: Store,
    /// Largest page, for the capacity of page buffers.
    pub max_size: u16,
    pub max_in_flight: usize,
    pub metrics: ShardMetrics,
    pub links: Links,
    /// Where to keep this shard's journal (`--state-dir`), if anywhere.
    pub journal: Option<JournalPlan>,
    /// Connections move to the shard that owns their user after this many
    /// feed requests in a row for its users (`--move-after`); 0: never
    /// (`--no-move-connections`).
    pub move_after: u8,
}

/// How a shard opens its journal, on its own executor.
#[derive(Debug, Clone)]
pub struct JournalPlan {
    pub dir: std::path::PathBuf,
    pub policy: FsyncPolicy,
    pub config: journal::JournalConfig,
    /// How long reading the state and restoring this shard's users took.
    pub replay: Duration,
}

/// Opens this shard's journal, connects its channel ends, starts the tasks
/// that serve peers and complete forwarded requests, and returns the shard.
pub async fn start(parts: ShardParts) -> Result<Rc<Shard>, String> {
    use glommio::spawn_local;
    let (journal, replay) = match parts.journal {
        Some(plan) => {
            let opened = ShardJournal::open(&plan.dir, parts.id.0, plan.policy, plan.config).await;
            (Some(opened?), plan.replay)
        }
        None => (None, Duration::ZERO),
    };
    let pages = mesh::connect(parts.links.pages).await;
    let control = mesh::connect(parts.links.control).await;
    // Connected whether or not connections move here: every shard connects
    // every end, or its peers would wait for it.
    let (mut handoffs_to, handoffs_from) =
        mesh::connect_oneway(parts.links.handoffs_to, parts.links.handoffs_from).await;
    if parts.move_after == 0 {
        handoffs_to.clear();
    }
    let shard = Rc::new(Shard {
        id: parts.id,
        ownership: Ownership::new(parts.shards, parts.cluster),
        store: RefCell::new(parts.store),
        succession: RefCell::new(None),
        generation: Cell::new(0),
        peers: pages.requests_to,
        tickets: RefCell::new(Tickets::new(parts.max_in_flight)),
        free_pages: RefCell::new(Vec::new()),
        page_capacity: parts.max_size as usize,
        metrics: RefCell::new(parts.metrics),
        control: control::Control::new(control.requests_to, control.replies_from),
        journal,
        replay,
        connections: Rc::new(Registry::default()),
        handoffs_to,
        move_after: parts.move_after.max(1),
        handoffs_from: RefCell::new(handoffs_from.into_iter().flatten().collect()),
    });
    for (requests, replies) in pages.requests_from.into_iter().zip(pages.replies_to) {
        if let (Some(requests), Some(replies)) = (requests, replies) {
            spawn_local(serve_peer(shard.clone(), requests, replies)).detach();
        }
    }
    for replies in pages.replies_from.into_iter().flatten() {
        spawn_local(complete_forwarded(shard.clone(), replies)).detach();
    }
    control::serve_peers(&shard, control.requests_from, control.replies_to);
    if shard.journal.is_some() {
        spawn_local(checkpoints(shard.clone())).detach();
    }
    Ok(shard)
}

/// A page that waits before it can be answered: for the owner's reply, or
/// for the progress it made to reach the journal (`answers_wait`; every
/// page waiting in one executor loop shares one write and one fdatasync).
pub enum Waiting {
    Reply(Ticket),
    Durable {
        shard: Rc<Shard>,
        /// Taken when the wait is over.
        page: Option<Page>,
        durable: journal::Durable,
    },
}

impl Future for Waiting {
    type Output = Page;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Page> {
        match self.get_mut() {
            Waiting::Reply(ticket) => Pin::new(ticket).poll(cx),
            Waiting::Durable { page, durable, .. } => match Pin::new(durable).poll(cx) {
                Poll::Pending => Poll::Pending,
                // A failed write or sync still answers: the page is served
                // and the journal reports itself degraded (and retries).
                Poll::Ready(_) => Poll::Ready(page.take().expect("a page, once")),
            },
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Waiting::Durable {
            shard,
            page: Some(page),
            ..
        } = self
        {
            shard.recycle(std::mem::take(&mut page.items));
        }
    }
}

/// Whether an answer that moved a user on waits for its journal record:
/// under `always` until it is synced, under `never` until it is written
/// (so that acknowledged progress survives the process being killed);
/// under `everysec` not at all (the journal writes within 100 ms and syncs
/// within 500 ms on its own).
fn answers_wait(policy: FsyncPolicy) -> bool {
    policy != FsyncPolicy::EverySec
}

/// Owner side: answers one peer's requests, in order. When answers wait for
/// the journal ([`answers_wait`]), each page is served at once and handed to
/// [`reply_when_durable`], which replies once its progress is durable: the
/// next requests are served (and journaled, in the next group commit) while
/// earlier ones wait, as local pages are.
async fn serve_peer(
    shard: Rc<Shard>,
    requests: ConnectedReceiver<PageRequest>,
    replies: ConnectedSender<PageReply>,
) {
    let waits = shard
        .journal
        .as_ref()
        .is_some_and(|j| answers_wait(j.policy()));
    if !waits {
        while let Some(req) = requests.recv().await {
            let (reply, _) = shard.serve_forwarded(req);
            // May wait for room; the receiving task never sends, so it frees room.
            if replies.send(reply).await.is_err() {
                return;
            }
        }
        return;
    }
    // Unbounded, but holds at most what the peer has in flight (its tickets).
    let (waiting, served) = glommio::channels::local_channel::new_unbounded();
    glommio::spawn_local(reply_when_durable(shard.clone(), served, replies)).detach();
    while let Some(req) = requests.recv().await {
        if waiting.try_send(shard.serve_forwarded(req)).is_err() {
            return;
        }
    }
}

/// Owner side, when answers wait for the journal: takes the served pages
/// that have arrived (up to [`DURABLE_BATCH`]), waits once for the last of
/// their records to be durable (records are durable in order), then replies
/// to all of them.
async fn reply_when_durable(
    shard: Rc<Shard>,
    served: glommio::channels::local_channel::LocalReceiver<(PageReply, Option<Lsn>)>,
    replies: ConnectedSender<PageReply>,
) {
    let Some(journal) = shard.journal.as_ref() else {
        return;
    };
    let mut batch: Vec<PageReply> = Vec::with_capacity(DURABLE_BATCH);
    while let Some((reply, lsn)) = served.recv().await {
        let mut last = lsn;
        batch.push(reply);
        while batch.len() < DURABLE_BATCH {
            match futures_lite::future::poll_once(served.recv()).await {
                Some(Some((reply, lsn))) => {
                    last = lsn.or(last);
                    batch.push(reply);
                }
                _ => break,
            }
        }
        if let Some(lsn) = last {
            // An error still answers; the journal reports it.
            let _ = journal.durable(lsn).await;
        }
        for reply in batch.drain(..) {
            // May wait for room; the receiving task never sends, so it frees room.
            if replies.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// Writes a checkpoint whenever the journal says one is due: every user's
/// progress, copied from the store in chunks between which the shard serves.
async fn checkpoints(shard: Rc<Shard>) {
    let Some(journal) = shard.journal.as_ref() else {
        return;
    };
    let mut chunk: Vec<journal::Progress> = Vec::with_capacity(CHECKPOINT_CHUNK);
    let mut progress = Vec::with_capacity(CHECKPOINT_CHUNK);
    loop {
        glommio::timer::sleep(CHECKPOINT_POLL).await;
        if shard.stopping() {
            return;
        }
        // While a reload carries progress over, the store holds only part
        // of it: wait until it holds all.
        if !journal.checkpoint_due() || shard.succeeding() {
            continue;
        }
        let mut checkpoint = journal.checkpoint();
        let generation = shard.generation.get();
        let mut from = Some(0);
        let mut result = Ok(());
        while let (Some(at), Ok(())) = (from, &result) {
            if shard.generation.get() != generation {
                // A reload swapped the store mid-walk: what was copied
                // mixes two stores. Dropped unfinished, the checkpoint
                // leaves a `.tmp` file the next start removes; the next
                // one is due at once.
                break;
            }
            progress.clear();
            let version = {
                let store = shard.store.borrow();
                from = store.progress_from(at, CHECKPOINT_CHUNK, &mut progress);
                store.version()
            };
            chunk.clear();
            chunk.extend(progress.iter().map(|p| journal::Progress {
                user: p.user,
                served: p.served,
                version,
                prefix: p.prefix as u64,
            }));
            result = checkpoint.add(&chunk).await;
            // Not `yield_if_needed`: see `succession::BETWEEN_CHUNKS`.
            glommio::timer::sleep(succession::BETWEEN_CHUNKS).await;
        }
        if shard.generation.get() != generation {
            continue;
        }
        let finished = match result {
            Ok(()) => checkpoint.finish().await,
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            crate::log_limited!(
                Duration::from_secs(60),
                "shard {}: checkpoint failed: {e}",
                shard.id.0
            );
        }
    }
}

/// Origin side: hands each reply to the request waiting for it. Never sends.
async fn complete_forwarded(shard: Rc<Shard>, replies: ConnectedReceiver<PageReply>) {
    while let Some(reply) = replies.recv().await {
        let round_trip = reply.sent_at.elapsed().as_micros() as u64;
        shard
            .metrics
            .borrow_mut()
            .round_trip
            .saturating_record(round_trip);
        let (waker, unclaimed) = shard.tickets.borrow_mut().complete(reply);
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(items) = unclaimed {
            shard.recycle(items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spreads_users() {
        assert_eq!(owner_of(12345, 1), ShardId(0));
        let mut counts = [0usize; 4];
        for user in 0..100_000 {
            let s = owner_of(user, 4);
            assert_eq!(s, owner_of(user, 4));
            counts[s.0] += 1;
        }
        for c in counts {
            assert!((23_000..27_000).contains(&c), "{counts:?}");
        }
        // Pinned values: changing the mapping moves every user's owner.
        let pinned: Vec<usize> = (0..8).map(|u| owner_of(u, 2).0).collect();
        assert_eq!(pinned, PINNED_OWNERS_2);
    }

    const PINNED_OWNERS_2: [usize; 8] = [1, 0, 1, 1, 1, 1, 0, 1];
}
