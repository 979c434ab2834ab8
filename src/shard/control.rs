//! Control messages between shards: gathering every shard's metrics
//! snapshot (for `/stats` and `/metrics`), and the shard's own stop
//! announcement.

use std::cell::Cell;
use std::rc::Rc;

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use glommio::sync::Semaphore;

use super::Shard;
use crate::metrics::Snapshot;

/// Control messages in flight per peer: one gathering at a time, plus the
/// stale replies of gatherings whose client went away.
pub(super) const CONTROL_QUEUE: usize = 16;

/// A request for the receiving shard's metrics snapshot. Same rules as a
/// page request: sent with `try_send` only, answered with exactly one
/// [`ControlReply`] carrying the same `seq`. A shard gathers one set of
/// snapshots at a time, and drops replies with an older `seq` (left by a
/// gathering whose client went away).
#[derive(Debug)]
pub struct ControlRequest {
    seq: u64,
}

#[derive(Debug)]
pub struct ControlReply {
    seq: u64,
    snapshot: Box<Snapshot>,
}

/// One shard's ends of the control channels, and its stop announcement.
pub(super) struct Control {
    to: Vec<Option<ConnectedSender<ControlRequest>>>,
    replies: Vec<Option<ConnectedReceiver<ControlReply>>>,
    /// One gathering at a time (it reads the reply channels).
    gathering: Semaphore,
    seq: Cell<u64>,
    /// Never signalled, only closed: closing it announces the stop to every
    /// task waiting on it.
    stop: Semaphore,
    stopping: Cell<bool>,
}

impl Control {
    pub(super) fn new(
        to: Vec<Option<ConnectedSender<ControlRequest>>>,
        replies: Vec<Option<ConnectedReceiver<ControlReply>>>,
    ) -> Control {
        Control {
            to,
            replies,
            gathering: Semaphore::new(1),
            seq: Cell::new(0),
            stop: Semaphore::new(0),
            stopping: Cell::new(false),
        }
    }

    /// `own` and every peer's snapshot, in shard order; `None` if a peer
    /// cannot be asked now (its queue is full, or it stopped). Request
    /// handling goes on meanwhile on every shard.
    pub(super) async fn gather(&self, own: Snapshot) -> Option<Vec<Snapshot>> {
        let _one_at_a_time = self.gathering.acquire_permit(1).await.ok()?;
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        for to in self.to.iter().flatten() {
            to.try_send(ControlRequest { seq }).ok()?;
        }
        let mut all = vec![own];
        for replies in self.replies.iter().flatten() {
            loop {
                let reply = replies.recv().await?;
                if reply.seq == seq {
                    all.push(*reply.snapshot);
                    break;
                }
            }
        }
        all.sort_by_key(|s| s.shard);
        Some(all)
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.get()
    }

    pub(super) fn announce_stop(&self) {
        self.stopping.set(true);
        self.stop.close();
    }

    pub(super) async fn stop_announced(&self) {
        let _ = self.stop.acquire(1).await;
    }
}

/// Starts one task per peer that answers its snapshot requests.
pub(super) fn serve_peers(
    shard: &Rc<Shard>,
    requests: Vec<Option<ConnectedReceiver<ControlRequest>>>,
    replies: Vec<Option<ConnectedSender<ControlReply>>>,
) {
    for (requests, replies) in requests.into_iter().zip(replies) {
        if let (Some(requests), Some(replies)) = (requests, replies) {
            glommio::spawn_local(serve_peer(shard.clone(), requests, replies)).detach();
        }
    }
}

/// Answers one peer's snapshot requests. May wait for room in the reply
/// channel; its reader (a gathering) never sends.
async fn serve_peer(
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
