//! The cross-core channels: for every ordered pair of shards (a, b), one
//! bounded request channel a -> b and one bounded reply channel b -> a, for
//! pages and for control messages, and one one-way channel a -> b for
//! connections moving to b. Built once before the executors start (element
//! i of [`make_links`] goes to shard i), connected on each shard.

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use super::control::{ControlReply, ControlRequest, CONTROL_QUEUE};
use super::{PageReply, PageRequest, HANDOFF_QUEUE, REPLY_QUEUE, REQUEST_QUEUE};
use crate::conn::Handoff;

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
    /// Connections moving to each peer, and from each peer.
    pub handoffs_to: Vec<Option<SharedSender<Box<Handoff>>>>,
    pub handoffs_from: Vec<Option<SharedReceiver<Box<Handoff>>>>,
}

/// Creates the channel meshes for `n` shards: element `i` belongs to shard `i`.
pub fn make_links(n: usize) -> Vec<Links> {
    let mut pages = make_duplex(n, REQUEST_QUEUE, REPLY_QUEUE).into_iter();
    // A handoff mesh is a duplex's request half: its reply half goes unused.
    // Boxed: a move is rare, and the channels' slots stay small.
    let mut handoffs = make_duplex::<Box<Handoff>, ()>(n, HANDOFF_QUEUE, 1).into_iter();
    let control = make_duplex(n, CONTROL_QUEUE, CONTROL_QUEUE).into_iter();
    control
        .map(|control| {
            let handoffs = handoffs.next().expect("one per shard");
            Links {
                pages: pages.next().expect("one per shard"),
                control,
                handoffs_to: handoffs.requests_to,
                handoffs_from: handoffs.requests_from,
            }
        })
        .collect()
}

/// Connects a one-way mesh's ends (both at once, as [`connect`] does).
pub(super) async fn connect_oneway<T: Send + 'static>(
    to: Vec<Option<SharedSender<T>>>,
    from: Vec<Option<SharedReceiver<T>>>,
) -> (
    Vec<Option<ConnectedSender<T>>>,
    Vec<Option<ConnectedReceiver<T>>>,
) {
    let to = connect_senders(to);
    let from = connect_receivers(from);
    (join_all(to).await, join_all(from).await)
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
pub(super) struct Connected<Req: Send, Rep: Send> {
    pub requests_to: Vec<Option<ConnectedSender<Req>>>,
    pub requests_from: Vec<Option<ConnectedReceiver<Req>>>,
    pub replies_to: Vec<Option<ConnectedSender<Rep>>>,
    pub replies_from: Vec<Option<ConnectedReceiver<Rep>>>,
}

/// Connects every end of `d` at once: `connect()` waits for the peer to
/// connect its end, so connecting one at a time could wait in a circle.
pub(super) async fn connect<Req: Send + 'static, Rep: Send + 'static>(
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
