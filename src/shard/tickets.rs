//! The origin's table of forwarded requests awaiting their reply: one slot
//! per request in flight, found again by a [`Token`] that the request and
//! its reply carry across cores.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{PageReply, Shard};
use crate::feed::Page;

/// Identifies a waiting request in its origin's [`Tickets`]: slot index and
/// the slot's generation, so a late reply can never complete a reused slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    slot: u32,
    generation: u32,
}

/// A forwarded request's page, on its way. Dropping it before the reply
/// arrives is fine: the reply's buffer is then recycled when it comes.
pub struct Ticket {
    shard: Rc<Shard>,
    token: Token,
}

impl Ticket {
    pub(super) fn new(shard: Rc<Shard>, token: Token) -> Ticket {
        Ticket { shard, token }
    }
}

impl Future for Ticket {
    type Output = Page;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Page> {
        let mut tickets = self.shard.tickets.borrow_mut();
        let slot = &mut tickets.slots[self.token.slot as usize];
        debug_assert_eq!(slot.generation, self.token.generation);
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Done(page) => {
                tickets.release(self.token.slot);
                Poll::Ready(page)
            }
            State::Waiting(_) => {
                slot.state = State::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
            State::Free | State::Abandoned => unreachable!("a ticket's slot is open"),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut tickets = self.shard.tickets.borrow_mut();
        let slot = &mut tickets.slots[self.token.slot as usize];
        if slot.generation != self.token.generation {
            return; // Already taken by `poll` and released.
        }
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting(_) => slot.state = State::Abandoned,
            State::Done(page) => {
                tickets.release(self.token.slot);
                drop(tickets);
                self.shard.recycle(page.items);
            }
            State::Free | State::Abandoned => {}
        }
    }
}

/// Slots of the requests in flight.
pub(super) struct Tickets {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most requests in flight at once.
    capacity: usize,
}

struct Slot {
    generation: u32,
    state: State,
}

enum State {
    Free,
    Waiting(Option<Waker>),
    Done(Page),
    /// The waiter is gone; free the slot when the reply comes.
    Abandoned,
}

impl Tickets {
    pub(super) fn new(capacity: usize) -> Tickets {
        Tickets {
            slots: Vec::new(),
            free: Vec::new(),
            capacity,
        }
    }

    /// A slot for a new request; `None` when `capacity` are in flight.
    pub(super) fn open(&mut self) -> Option<Token> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < self.capacity => {
                self.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                });
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let s = &mut self.slots[slot as usize];
        s.state = State::Waiting(None);
        Some(Token {
            slot,
            generation: s.generation,
        })
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.state = State::Free;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
    }

    /// Gives up a slot whose request was never sent.
    pub(super) fn cancel(&mut self, token: Token) {
        self.release(token.slot);
    }

    /// Stores a reply. Returns the waker to wake, and the page buffer to
    /// recycle if nobody waits for it any more.
    pub(super) fn complete(&mut self, reply: PageReply) -> (Option<Waker>, Option<Vec<u32>>) {
        let slot = &mut self.slots[reply.token.slot as usize];
        debug_assert_eq!(slot.generation, reply.token.generation, "stale reply");
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting(waker) => {
                slot.state = State::Done(reply.page);
                (waker, None)
            }
            State::Abandoned => {
                self.release(reply.token.slot);
                (None, Some(reply.page.items))
            }
            State::Free | State::Done(_) => unreachable!("one reply per request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Unserved;
    use crate::shard::MAX_IN_FLIGHT;
    use std::time::Instant;

    fn reply(token: Token, outcome: Result<(), Unserved>) -> PageReply {
        PageReply {
            token,
            page: Page {
                items: vec![1, 2],
                outcome,
                cursor: None,
            },
            sent_at: Instant::now(),
        }
    }

    #[test]
    fn complete_abandon_and_reuse() {
        let mut t = Tickets::new(MAX_IN_FLIGHT);
        let a = t.open().unwrap();
        let b = t.open().unwrap();
        assert_ne!(a, b);
        let (waker, unclaimed) = t.complete(reply(a, Ok(())));
        assert!(
            waker.is_none() && unclaimed.is_none(),
            "the page waits for its ticket"
        );
        assert!(matches!(&t.slots[a.slot as usize].state, State::Done(p) if p.outcome.is_ok()));
        // b's waiter goes away: its reply's buffer is handed back.
        t.slots[b.slot as usize].state = State::Abandoned;
        let (_, unclaimed) = t.complete(reply(b, Ok(())));
        assert_eq!(unclaimed, Some(vec![1, 2]));
        let c = t.open().unwrap();
        assert_eq!(c.slot, b.slot);
        assert_ne!(c.generation, b.generation, "a reused slot is a new ticket");
        // Nothing to serve: the waiter gets the outcome with the buffer.
        let (_, unclaimed) = t.complete(reply(c, Err(Unserved::NothingToServe)));
        assert_eq!(unclaimed, None);
        assert!(matches!(
            &t.slots[c.slot as usize].state,
            State::Done(p) if p.outcome == Err(Unserved::NothingToServe) && p.items == [1, 2]
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
