//! Shards: which core owns which user, and how a request reaches the owner.
//!
//! This is the only module that knows about cores, ownership and the
//! cross-core channels. Every page request has the same shape: if this shard
//! owns the user, build the page from the local store right away; otherwise
//! send it to the owner and wait for the answer (see [`PageRequest`]).
//!
//! Topology: for every ordered pair of shards (a, b) there is one bounded
//! request channel a -> b and one bounded reply channel b -> a. On b, one task
//! per peer serves a's requests; on a, one task per peer completes a's
//! waiting requests from the replies.
//!
//! Why this cannot deadlock: requests are only ever sent with `try_send` (a
//! full queue answers `503` at once), so a connection task never waits on a
//! channel. The only task that waits to send is the owner's serving task
//! (waiting for room in a reply channel), and the task that empties a reply
//! channel sends nothing at all, so it always makes progress. There is no
//! cycle of senders waiting on each other (glommio issue 555).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

use crate::feed::{PageError, Store};
use crate::hash::mix64;
use crate::http::{HttpDate, Limits};
use crate::metrics::{ShardMetrics, Snapshot};
use crate::watchdog::Registry;

/// Requests queued to one peer before `503`.
pub const REQUEST_QUEUE: usize = 1024;
/// Replies queued back from one peer. Larger than the request queue so that
/// an owner rarely waits for the origin to drain replies.
pub const REPLY_QUEUE: usize = 4096;
/// Default forwarded requests awaiting an answer, per shard, before `503`.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Page buffers kept for reuse per shard.
const PAGE_FREE_LIST: usize = 4096;

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

/// Identifies a waiting request in its origin's [`Tickets`]: slot index and
/// the slot's generation, so a late reply can never complete a reused slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    slot: u32,
    generation: u32,
}

/// A page request forwarded from its origin shard to the user's owner.
///
/// Contract:
/// - Sent only by the origin, only with `try_send`; a full channel is
///   answered `503` by the origin and nothing is sent.
/// - The owner answers every request it receives, in the order received,
///   with exactly one [`PageReply`] carrying the same `token`, on the reply
///   channel back to the origin.
/// - `page` is an empty buffer of the origin's (capacity >= `size`); the owner
///   fills it and sends it back, and the origin reuses it: forwarding
///   allocates nothing in steady state.
/// - If a channel closes, its shard has stopped, and the process stops with
///   it (see `server.rs`): no request is silently dropped in a live server.
#[derive(Debug)]
pub struct PageRequest {
    pub token: Token,
    pub user: u32,
    pub size: u16,
    pub page: Vec<u32>,
    /// When the origin sent it, for the round-trip histogram.
    pub sent_at: Instant,
}

/// The owner's answer to one [`PageRequest`].
#[derive(Debug)]
pub struct PageReply {
    pub token: Token,
    pub page: Vec<u32>,
    pub result: Result<(), PageError>,
    pub sent_at: Instant,
}

/// A request for the receiving shard's metrics snapshot (`/stats`,
/// `/metrics`). Same rules as [`PageRequest`]: sent with `try_send` only,
/// answered with exactly one [`ControlReply`] carrying the same `seq`. A
/// shard gathers one set of snapshots at a time, and drops replies with an
/// older `seq` (left by a gather whose client went away).
#[derive(Debug)]
pub struct ControlRequest {
    pub seq: u64,
}

#[derive(Debug)]
pub struct ControlReply {
    pub seq: u64,
    pub snapshot: Box<Snapshot>,
}

/// Why a page request got no page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// The store had nothing to serve for the user.
    NothingToServe,
    /// Too many requests in flight to the owner: try again.
    Overloaded,
}

impl From<PageError> for Unserved {
    fn from(e: PageError) -> Unserved {
        match e {
            PageError::NothingToServe => Unserved::NothingToServe,
        }
    }
}

type PageResult = Result<Vec<u32>, Unserved>;

/// One shard's view of the world, shared by its tasks (never across cores).
pub struct Shard {
    pub id: ShardId,
    shards: usize,
    pub limits: Limits,
    store: RefCell<Store>,
    date: Cell<HttpDate>,
    /// `to_peer[p]`: request channel to shard p (`None` for ourselves).
    to_peer: Vec<Option<ConnectedSender<PageRequest>>>,
    tickets: RefCell<Tickets>,
    free_pages: RefCell<Vec<Vec<u32>>>,
    pub metrics: RefCell<ShardMetrics>,
    /// Control channels to and from each peer, for snapshots.
    control_to: Vec<Option<ConnectedSender<ControlRequest>>>,
    control_replies: Vec<Option<ConnectedReceiver<ControlReply>>>,
    /// One snapshot gathering at a time (it reads the reply channels).
    gathering: glommio::sync::Semaphore,
    gather_seq: Cell<u64>,
    /// This shard's open connections and their deadlines. The open count
    /// is read from here (no separate gauge to keep in step).
    pub connections: Rc<Registry>,
    /// Never signalled, only closed: closing it announces shutdown to every
    /// task waiting on it.
    shutdown: glommio::sync::Semaphore,
    shutting_down: Cell<bool>,
}

/// A page that is either ready or on its way back from the owner.
pub enum Pending<F = Ticket> {
    Ready(PageResult),
    Forwarded(F),
}

impl Shard {
    /// Serves a page for `user`: from the local store if this shard owns the
    /// user, else by forwarding to the owner. Give the page back with
    /// [`Shard::recycle`] once it is written.
    pub fn page(self: &Rc<Self>, user: u32, size: u16, now: Instant) -> Pending {
        let owner = owner_of(user, self.shards);
        let mut page = self.take_page();
        if owner == self.id {
            return Pending::Ready(self.serve_local(user, size, page));
        }
        let Some(token) = self.tickets.borrow_mut().open() else {
            self.recycle(page);
            self.metrics.borrow_mut().counters.queue_full += 1;
            return Pending::Ready(Err(Unserved::Overloaded));
        };
        page.clear();
        let request = PageRequest {
            token,
            user,
            size,
            page,
            sent_at: now,
        };
        let sender = self.to_peer[owner.0].as_ref().expect("a peer's channel");
        match sender.try_send(request) {
            Ok(()) => {
                self.metrics.borrow_mut().counters.forwarded_out += 1;
                Pending::Forwarded(Ticket {
                    shard: self.clone(),
                    token,
                })
            }
            Err(e) => {
                // Full (or, while the process stops, closed): answer 503.
                self.tickets.borrow_mut().cancel(token);
                if let GlommioError::WouldBlock(ResourceType::Channel(request))
                | GlommioError::Closed(ResourceType::Channel(request)) = e
                {
                    self.recycle(request.page);
                }
                self.metrics.borrow_mut().counters.queue_full += 1;
                Pending::Ready(Err(Unserved::Overloaded))
            }
        }
    }

    fn serve_local(&self, user: u32, size: u16, mut page: Vec<u32>) -> PageResult {
        debug_assert_eq!(owner_of(user, self.shards), self.id, "only the owner");
        match self
            .store
            .borrow_mut()
            .next_page(user, size as usize, &mut page)
        {
            Ok(_) => Ok(page),
            Err(e) => {
                self.recycle(page);
                Err(e.into())
            }
        }
    }

    fn take_page(&self) -> Vec<u32> {
        self.free_pages
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.limits.max_size as usize))
    }

    /// Returns a page buffer for reuse.
    pub fn recycle(&self, page: Vec<u32>) {
        let mut free = self.free_pages.borrow_mut();
        if free.len() < PAGE_FREE_LIST {
            free.push(page);
        }
    }

    /// The `Date` header value, refreshed twice a second by a timer task so
    /// that requests never read the clock.
    pub fn date(&self) -> HttpDate {
        self.date.get()
    }

    /// This shard's metrics, copied.
    pub fn snapshot(&self) -> Snapshot {
        let store = self.store.borrow().counters();
        let mut snapshot = self.metrics.borrow().snapshot(self.id.0, store);
        snapshot.counters.open_connections = self.connections.open() as u64;
        snapshot
    }

    /// Every shard's snapshot, in shard order, gathered over the control
    /// channels. Request handling goes on meanwhile on every shard.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, Unserved> {
        let _one_at_a_time = self
            .gathering
            .acquire_permit(1)
            .await
            .map_err(|_| Unserved::Overloaded)?;
        let seq = self.gather_seq.get() + 1;
        self.gather_seq.set(seq);
        for to in self.control_to.iter().flatten() {
            if to.try_send(ControlRequest { seq }).is_err() {
                return Err(Unserved::Overloaded);
            }
        }
        let mut all = vec![self.snapshot()];
        for replies in self.control_replies.iter().flatten() {
            loop {
                let reply = replies.recv().await.ok_or(Unserved::Overloaded)?;
                if reply.seq == seq {
                    all.push(*reply.snapshot);
                    break;
                }
            }
        }
        all.sort_by_key(|s| s.shard);
        Ok(all)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Starts this shard's shutdown: tasks waiting in
    /// [`Shard::shutdown_announced`] stop (the accept loop), idle
    /// connections are woken to close, busy ones close once answered.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        self.shutdown.close();
        self.connections.close_idle();
    }

    /// Completes once shutdown has begun.
    pub async fn shutdown_announced(&self) {
        let _ = self.shutdown.acquire(1).await;
    }
}

/// A forwarded request's answer, on its way. Dropping it before the answer
/// arrives is fine: the reply is then discarded when it comes.
pub struct Ticket {
    shard: Rc<Shard>,
    token: Token,
}

impl Future for Ticket {
    type Output = PageResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PageResult> {
        let mut tickets = self.shard.tickets.borrow_mut();
        let slot = &mut tickets.slots[self.token.slot as usize];
        debug_assert_eq!(slot.generation, self.token.generation);
        match std::mem::replace(&mut slot.state, SlotState::Free) {
            SlotState::Done(result) => {
                tickets.release(self.token.slot);
                Poll::Ready(result)
            }
            SlotState::Waiting(_) => {
                slot.state = SlotState::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
            SlotState::Free | SlotState::Abandoned => unreachable!("a ticket's slot is open"),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut tickets = self.shard.tickets.borrow_mut();
        let slot = &mut tickets.slots[self.token.slot as usize];
        if slot.generation != self.token.generation {
            return;
        }
        match std::mem::replace(&mut slot.state, SlotState::Free) {
            SlotState::Waiting(_) => slot.state = SlotState::Abandoned,
            SlotState::Done(result) => {
                tickets.release(self.token.slot);
                drop(tickets);
                if let Ok(page) = result {
                    self.shard.recycle(page);
                }
            }
            // Already taken by `poll` and released.
            SlotState::Free | SlotState::Abandoned => {}
        }
    }
}

/// The origin's table of forwarded requests awaiting their reply.
struct Tickets {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most requests in flight at once.
    capacity: usize,
}

struct Slot {
    generation: u32,
    state: SlotState,
}

enum SlotState {
    Free,
    Waiting(Option<Waker>),
    Done(PageResult),
    /// The waiter is gone; free the slot when the reply comes.
    Abandoned,
}

impl Tickets {
    fn new(capacity: usize) -> Tickets {
        Tickets {
            slots: Vec::new(),
            free: Vec::new(),
            capacity,
        }
    }

    fn open(&mut self) -> Option<Token> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < self.capacity => {
                self.slots.push(Slot {
                    generation: 0,
                    state: SlotState::Free,
                });
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::Waiting(None);
        Some(Token {
            slot,
            generation: s.generation,
        })
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::Free;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
    }

    fn cancel(&mut self, token: Token) {
        self.release(token.slot);
    }

    /// Stores a reply. Returns the waker to wake, and the page buffer to
    /// recycle if the reply does not carry it to a waiter (no page, or
    /// nobody waits any more).
    fn complete(&mut self, reply: PageReply) -> (Option<Waker>, Option<Vec<u32>>) {
        let slot = &mut self.slots[reply.token.slot as usize];
        debug_assert_eq!(slot.generation, reply.token.generation, "stale reply");
        let (result, spare) = match reply.result {
            Ok(()) => (Ok(reply.page), None),
            Err(e) => (Err(e.into()), Some(reply.page)),
        };
        match std::mem::replace(&mut slot.state, SlotState::Free) {
            SlotState::Waiting(waker) => {
                slot.state = SlotState::Done(result);
                (waker, spare)
            }
            SlotState::Abandoned => {
                self.release(reply.token.slot);
                (None, result.ok().or(spare))
            }
            SlotState::Free | SlotState::Done(_) => unreachable!("one reply per request"),
        }
    }
}

/// One shard's ends of a request/reply mesh, before connecting.
/// Index = peer shard; `None` at our own index.
pub struct Duplex<Req: Send, Rep: Send> {
    pub requests_to: Vec<Option<SharedSender<Req>>>,
    pub requests_from: Vec<Option<SharedReceiver<Req>>>,
    pub replies_to: Vec<Option<SharedSender<Rep>>>,
    pub replies_from: Vec<Option<SharedReceiver<Rep>>>,
}

/// One shard's ends of every cross-core channel.
pub struct Links {
    pub pages: Duplex<PageRequest, PageReply>,
    pub control: Duplex<ControlRequest, ControlReply>,
}

/// Control messages in flight per peer: one gathering at a time, plus the
/// stale replies of gatherings whose client went away.
const CONTROL_QUEUE: usize = 16;

/// Creates the channel meshes for `n` shards: element `i` belongs to shard `i`.
pub fn make_links(n: usize) -> Vec<Links> {
    let mut pages = make_duplex(n, REQUEST_QUEUE, REPLY_QUEUE).into_iter();
    let control = make_duplex(n, CONTROL_QUEUE, CONTROL_QUEUE).into_iter();
    control
        .map(|control| Links {
            pages: pages.next().expect("one per shard"),
            control,
        })
        .collect()
}

fn make_duplex<Req: Send, Rep: Send>(
    n: usize,
    req_cap: usize,
    rep_cap: usize,
) -> Vec<Duplex<Req, Rep>> {
    fn none<T>(n: usize) -> Vec<Option<T>> {
        (0..n).map(|_| None).collect()
    }
    let mut ends: Vec<Duplex<Req, Rep>> = (0..n)
        .map(|_| Duplex {
            requests_to: none(n),
            requests_from: none(n),
            replies_to: none(n),
            replies_from: none(n),
        })
        .collect();
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let (req_tx, req_rx) = glommio::channels::shared_channel::new_bounded(req_cap);
            let (rep_tx, rep_rx) = glommio::channels::shared_channel::new_bounded(rep_cap);
            ends[a].requests_to[b] = Some(req_tx);
            ends[b].requests_from[a] = Some(req_rx);
            ends[b].replies_to[a] = Some(rep_tx);
            ends[a].replies_from[b] = Some(rep_rx);
        }
    }
    ends
}

/// A [`Duplex`] with every end connected.
struct Connected<Req: Send, Rep: Send> {
    requests_to: Vec<Option<ConnectedSender<Req>>>,
    requests_from: Vec<Option<ConnectedReceiver<Req>>>,
    replies_to: Vec<Option<ConnectedSender<Rep>>>,
    replies_from: Vec<Option<ConnectedReceiver<Rep>>>,
}

/// Connects every end of `d` at once: `connect()` waits for the peer to
/// connect its end, so connecting one at a time could wait in a circle.
async fn connect<Req: Send + 'static, Rep: Send + 'static>(
    d: Duplex<Req, Rep>,
) -> Connected<Req, Rep> {
    let requests_to = connect_senders(d.requests_to);
    let replies_to = connect_senders(d.replies_to);
    let requests_from = connect_receivers(d.requests_from);
    let replies_from = connect_receivers(d.replies_from);
    Connected {
        requests_to: join_all(requests_to).await,
        requests_from: join_all(requests_from).await,
        replies_to: join_all(replies_to).await,
        replies_from: join_all(replies_from).await,
    }
}

fn connect_senders<T: Send + 'static>(
    ends: Vec<Option<SharedSender<T>>>,
) -> Vec<Option<glommio::Task<ConnectedSender<T>>>> {
    let connect = |s: SharedSender<T>| glommio::spawn_local(s.connect());
    ends.into_iter().map(|s| s.map(connect)).collect()
}

fn connect_receivers<T: Send + 'static>(
    ends: Vec<Option<SharedReceiver<T>>>,
) -> Vec<Option<glommio::Task<ConnectedReceiver<T>>>> {
    let connect = |r: SharedReceiver<T>| glommio::spawn_local(r.connect());
    ends.into_iter().map(|r| r.map(connect)).collect()
}

async fn join_all<T>(tasks: Vec<Option<glommio::Task<T>>>) -> Vec<Option<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(match task {
            Some(t) => Some(t.await),
            None => None,
        });
    }
    out
}

/// Connects this shard's channel ends, starts the tasks that serve peers and
/// complete forwarded requests, and returns the shard.
pub async fn start(
    id: ShardId,
    shards: usize,
    store: Store,
    limits: Limits,
    max_in_flight: usize,
    metrics: ShardMetrics,
    links: Links,
) -> Rc<Shard> {
    use glommio::spawn_local;
    let pages = connect(links.pages).await;
    let control = connect(links.control).await;
    let shard = Rc::new(Shard {
        id,
        shards,
        limits,
        store: RefCell::new(store),
        date: Cell::new(HttpDate::now()),
        to_peer: pages.requests_to,
        tickets: RefCell::new(Tickets::new(max_in_flight)),
        free_pages: RefCell::new(Vec::new()),
        metrics: RefCell::new(metrics),
        control_to: control.requests_to,
        control_replies: control.replies_from,
        gathering: glommio::sync::Semaphore::new(1),
        gather_seq: Cell::new(0),
        connections: Rc::new(Registry::default()),
        shutdown: glommio::sync::Semaphore::new(0),
        shutting_down: Cell::new(false),
    });
    for (requests, replies) in pages.requests_from.into_iter().zip(pages.replies_to) {
        if let (Some(requests), Some(replies)) = (requests, replies) {
            spawn_local(serve_peer(shard.clone(), requests, replies)).detach();
        }
    }
    for replies in pages.replies_from.into_iter().flatten() {
        spawn_local(complete_forwarded(shard.clone(), replies)).detach();
    }
    for (requests, replies) in control.requests_from.into_iter().zip(control.replies_to) {
        if let (Some(requests), Some(replies)) = (requests, replies) {
            spawn_local(serve_control(shard.clone(), requests, replies)).detach();
        }
    }
    spawn_local(refresh_date(shard.clone())).detach();
    shard
}

/// Owner side: answers one peer's requests, in order.
async fn serve_peer(
    shard: Rc<Shard>,
    requests: ConnectedReceiver<PageRequest>,
    replies: ConnectedSender<PageReply>,
) {
    while let Some(mut req) = requests.recv().await {
        let result = shard
            .store
            .borrow_mut()
            .next_page(req.user, req.size as usize, &mut req.page)
            .map(|_| ());
        shard.metrics.borrow_mut().counters.forwarded_in += 1;
        let reply = PageReply {
            token: req.token,
            page: req.page,
            result,
            sent_at: req.sent_at,
        };
        // May wait for room; the receiving task never sends, so it frees room.
        if replies.send(reply).await.is_err() {
            return;
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
        let (waker, spare) = shard.tickets.borrow_mut().complete(reply);
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(page) = spare {
            shard.recycle(page);
        }
    }
}

/// Owner side of the control channel: answers snapshot requests. May wait
/// for room in the reply channel; its reader (a gathering) never sends.
async fn serve_control(
    shard: Rc<Shard>,
    requests: ConnectedReceiver<ControlRequest>,
    replies: ConnectedSender<ControlReply>,
) {
    while let Some(req) = requests.recv().await {
        let reply = ControlReply {
            seq: req.seq,
            snapshot: Box::new(shard.snapshot()),
        };
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

async fn refresh_date(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        shard.date.set(HttpDate::now());
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

    #[test]
    fn tickets_complete_abandon_and_reuse() {
        let mut t = Tickets::new(MAX_IN_FLIGHT);
        let a = t.open().unwrap();
        let b = t.open().unwrap();
        assert_ne!(a, b);
        let reply = |token| PageReply {
            token,
            page: vec![1, 2],
            result: Ok(()),
            sent_at: Instant::now(),
        };
        let (waker, spare) = t.complete(reply(a));
        assert!(
            waker.is_none() && spare.is_none(),
            "the page goes to the waiter"
        );
        assert!(matches!(
            t.slots[a.slot as usize].state,
            SlotState::Done(Ok(_))
        ));
        // b's waiter goes away: its reply is handed back for recycling.
        t.slots[b.slot as usize].state = SlotState::Abandoned;
        let (_, spare) = t.complete(reply(b));
        assert_eq!(spare, Some(vec![1, 2]));
        let c = t.open().unwrap();
        assert_eq!(c.slot, b.slot);
        assert_ne!(c.generation, b.generation, "a reused slot is a new ticket");
        // Nothing to serve: the waiter gets the error, the buffer comes back.
        let (_, spare) = t.complete(PageReply {
            result: Err(PageError::NothingToServe),
            ..reply(c)
        });
        assert_eq!(spare, Some(vec![1, 2]));
        assert!(matches!(
            t.slots[c.slot as usize].state,
            SlotState::Done(Err(Unserved::NothingToServe))
        ));
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut t = Tickets::new(MAX_IN_FLIGHT);
        let tokens: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| t.open().unwrap()).collect();
        assert!(t.open().is_none());
        t.cancel(tokens[7]);
        assert!(t.open().is_some());
    }
}
