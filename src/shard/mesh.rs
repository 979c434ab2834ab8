//! The cross-core channels: for every ordered pair of shards (a, b), one
//! bounded request channel a -> b and one bounded reply channel b -> a, for
//! pages and for control messages. Built once before the executors start
//! (element i of [`make_links`] goes to shard i), connected on each shard.

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use super::control::{ControlReply, ControlRequest, CONTROL_QUEUE};
use super::{PageReply, PageRequest, REPLY_QUEUE, REQUEST_QUEUE};

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
