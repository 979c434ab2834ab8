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
use std::time::Duration;

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

use crate::data::mix64;
use crate::feed::{PageError, Store};
use crate::http::{HttpDate, SizeLimits};

/// Requests queued to one peer before `503`.
pub const REQUEST_QUEUE: usize = 1024;
/// Replies queued back from one peer. Larger than the request queue so that
/// an owner rarely waits for the origin to drain replies.
pub const REPLY_QUEUE: usize = 4096;
/// Forwarded requests awaiting an answer, per shard, before `503`.
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
}

/// The owner's answer to one [`PageRequest`].
#[derive(Debug)]
pub struct PageReply {
    pub token: Token,
    pub page: Vec<u32>,
    pub result: Result<(), PageError>,
}

/// Why a page request got no page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// The store had nothing to serve for the user.
    NothingToServe,
    /// Too many requests in flight to the owner: try again.
    Overloaded,
}

type PageResult = Result<Vec<u32>, Unserved>;

/// One shard's view of the world, shared by its tasks (never across cores).
pub struct Shard {
    pub id: ShardId,
    shards: usize,
    pub limits: SizeLimits,
    store: RefCell<Store>,
    date: Cell<HttpDate>,
    /// `to_peer[p]`: request channel to shard p (`None` for ourselves).
    to_peer: Vec<Option<ConnectedSender<PageRequest>>>,
    tickets: RefCell<Tickets>,
    free_pages: RefCell<Vec<Vec<u32>>>,
}

/// A page that is either ready or on its way back from the owner.
pub enum Pending {
    Ready(PageResult),
    Forwarded(Ticket),
}

impl Shard {
    /// Serves a page for `user`: from the local store if this shard owns the
    /// user, else by forwarding to the owner. Give the page back with
    /// [`Shard::recycle`] once it is written.
    pub fn page(self: &Rc<Self>, user: u32, size: u16) -> Pending {
        let owner = owner_of(user, self.shards);
        let mut page = self.take_page();
        if owner == self.id {
            return Pending::Ready(self.serve_local(user, size, page));
        }
        let Some(token) = self.tickets.borrow_mut().open() else {
            self.recycle(page);
            return Pending::Ready(Err(Unserved::Overloaded));
        };
        page.clear();
        let request = PageRequest {
            token,
            user,
            size,
            page,
        };
        let sender = self.to_peer[owner.0].as_ref().expect("a peer's channel");
        match sender.try_send(request) {
            Ok(()) => Pending::Forwarded(Ticket {
                shard: self.clone(),
                token,
            }),
            Err(e) => {
                // Full (or, while the process stops, closed): answer 503.
                self.tickets.borrow_mut().cancel(token);
                if let GlommioError::WouldBlock(ResourceType::Channel(request))
                | GlommioError::Closed(ResourceType::Channel(request)) = e
                {
                    self.recycle(request.page);
                }
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
            Err(PageError::NothingToServe) => {
                self.recycle(page);
                Err(Unserved::NothingToServe)
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
#[derive(Default)]
struct Tickets {
    slots: Vec<Slot>,
    free: Vec<u32>,
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
    fn open(&mut self) -> Option<Token> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < MAX_IN_FLIGHT => {
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

    /// Stores a reply. Returns the waker to wake, or the page to recycle if
    /// nobody waits for it any more.
    fn complete(&mut self, reply: PageReply) -> (Option<Waker>, Option<Vec<u32>>) {
        let slot = &mut self.slots[reply.token.slot as usize];
        debug_assert_eq!(slot.generation, reply.token.generation, "stale reply");
        let result = match reply.result {
            Ok(()) => Ok(reply.page),
            Err(PageError::NothingToServe) => Err(Unserved::NothingToServe),
        };
        match std::mem::replace(&mut slot.state, SlotState::Free) {
            SlotState::Waiting(waker) => {
                slot.state = SlotState::Done(result);
                (waker, None)
            }
            SlotState::Abandoned => {
                self.release(reply.token.slot);
                (None, result.ok())
            }
            SlotState::Free | SlotState::Done(_) => unreachable!("one reply per request"),
        }
    }
}

/// One shard's ends of the cross-core channels, before connecting.
/// Index = peer shard; `None` at our own index.
pub struct Links {
    pub requests_to: Vec<Option<SharedSender<PageRequest>>>,
    pub requests_from: Vec<Option<SharedReceiver<PageRequest>>>,
    pub replies_to: Vec<Option<SharedSender<PageReply>>>,
    pub replies_from: Vec<Option<SharedReceiver<PageReply>>>,
}

/// Creates the channel mesh for `n` shards: element `i` belongs to shard `i`.
pub fn make_links(n: usize) -> Vec<Links> {
    fn none<T>(n: usize) -> Vec<Option<T>> {
        (0..n).map(|_| None).collect()
    }
    let mut links: Vec<Links> = (0..n)
        .map(|_| Links {
            requests_to: none(n),
            requests_from: none(n),
            replies_to: none(n),
            replies_from: none(n),
        })
        .collect();
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let (req_tx, req_rx) = glommio::channels::shared_channel::new_bounded(REQUEST_QUEUE);
            let (rep_tx, rep_rx) = glommio::channels::shared_channel::new_bounded(REPLY_QUEUE);
            links[a].requests_to[b] = Some(req_tx);
            links[b].requests_from[a] = Some(req_rx);
            links[b].replies_to[a] = Some(rep_tx);
            links[a].replies_from[b] = Some(rep_rx);
        }
    }
    links
}

/// Connects this shard's channel ends, starts the tasks that serve peers and
/// complete forwarded requests, and returns the shard.
///
/// Every shard connects all its ends at once: `connect()` waits for the peer
/// to connect its end, so connecting one at a time could wait in a circle.
pub async fn start(
    id: ShardId,
    shards: usize,
    store: Store,
    limits: SizeLimits,
    links: Links,
) -> Rc<Shard> {
    use glommio::spawn_local;
    let Links {
        requests_to,
        requests_from,
        replies_to,
        replies_from,
    } = links;
    let requests_to: Vec<_> = requests_to
        .into_iter()
        .map(|s| s.map(|s| spawn_local(s.connect())))
        .collect();
    let requests_from: Vec<_> = requests_from
        .into_iter()
        .map(|r| r.map(|r| spawn_local(r.connect())))
        .collect();
    let replies_to: Vec<_> = replies_to
        .into_iter()
        .map(|s| s.map(|s| spawn_local(s.connect())))
        .collect();
    let replies_from: Vec<_> = replies_from
        .into_iter()
        .map(|r| r.map(|r| spawn_local(r.connect())))
        .collect();

    let mut to_peer = Vec::with_capacity(shards);
    for task in requests_to {
        to_peer.push(match task {
            Some(t) => Some(t.await),
            None => None,
        });
    }
    let shard = Rc::new(Shard {
        id,
        shards,
        limits,
        store: RefCell::new(store),
        date: Cell::new(HttpDate::now()),
        to_peer,
        tickets: RefCell::new(Tickets::default()),
        free_pages: RefCell::new(Vec::new()),
    });
    for (requests, replies) in requests_from.into_iter().zip(replies_to) {
        if let (Some(requests), Some(replies)) = (requests, replies) {
            let (requests, replies) = (requests.await, replies.await);
            spawn_local(serve_peer(shard.clone(), requests, replies)).detach();
        }
    }
    for replies in replies_from.into_iter().flatten() {
        spawn_local(complete_forwarded(shard.clone(), replies.await)).detach();
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
        let reply = PageReply {
            token: req.token,
            page: req.page,
            result,
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
        let (waker, orphan) = shard.tickets.borrow_mut().complete(reply);
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(page) = orphan {
            shard.recycle(page);
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
        let mut t = Tickets::default();
        let a = t.open().unwrap();
        let b = t.open().unwrap();
        assert_ne!(a, b);
        let reply = |token| PageReply {
            token,
            page: vec![1, 2],
            result: Ok(()),
        };
        let (waker, orphan) = t.complete(reply(a));
        assert!(waker.is_none() && orphan.is_none());
        assert!(matches!(
            t.slots[a.slot as usize].state,
            SlotState::Done(Ok(_))
        ));
        // b's waiter goes away: its reply is handed back for recycling.
        t.slots[b.slot as usize].state = SlotState::Abandoned;
        let (_, orphan) = t.complete(reply(b));
        assert_eq!(orphan, Some(vec![1, 2]));
        let c = t.open().unwrap();
        assert_eq!(c.slot, b.slot);
        assert_ne!(c.generation, b.generation, "a reused slot is a new ticket");
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut t = Tickets::default();
        let tokens: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| t.open().unwrap()).collect();
        assert!(t.open().is_none());
        t.cancel(tokens[7]);
        assert!(t.open().is_some());
    }
}
