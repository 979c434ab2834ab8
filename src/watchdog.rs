//! Deadlines for connections, without a timer per request.
//!
//! Every open connection of a shard is registered here with its phase and a
//! deadline, both plain `Cell`s that the connection updates with clock
//! readings it takes anyway. A sweeper task looks at every connection a few
//! times a second; one past its deadline is marked expired and its socket is
//! shut down (`shutdown(2)`), which wakes the connection's pending read or
//! write. The connection then sees why it woke: a slow request head gets a
//! `408`, an idle connection is closed, a stuck write gives up.
//!
//! The same mechanism closes idle connections when the server stops.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

/// What a connection is doing, which decides what its deadline means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the next request, nothing of it received yet.
    Idle,
    /// Part of a request head received: it must complete by the deadline.
    Head,
    /// Answering: no deadline (waits only for other shards).
    Busy,
    /// Handing answers to the socket: the client must read by the deadline.
    Writing,
}

/// Why a connection was woken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    Head,
    Write,
    /// The server is stopping and the connection was idle.
    Shutdown,
}

/// One connection's phase and deadline.
#[derive(Debug)]
pub struct Watch {
    fd: RawFd,
    phase: Cell<Phase>,
    deadline: Cell<Option<Instant>>,
    expired: Cell<Option<Expired>>,
}

impl Watch {
    /// Enters `phase`, which must be over by `deadline` (`None`: no limit).
    #[inline]
    pub fn enter(&self, phase: Phase, deadline: Option<Instant>) {
        self.phase.set(phase);
        self.deadline.set(deadline);
    }

    /// Set once the sweeper (or shutdown) has woken this connection.
    pub fn expired(&self) -> Option<Expired> {
        self.expired.get()
    }

    fn expire(&self, why: Expired) {
        if self.expired.get().is_some() {
            return;
        }
        self.expired.set(Some(why));
        self.deadline.set(None);
        // Reading ends for every reason; writing only when the client stopped
        // reading, so that a 408 can still be sent after a slow head.
        let how = match why {
            Expired::Write => libc::SHUT_RDWR,
            _ => libc::SHUT_RD,
        };
        // SAFETY: `fd` belongs to a connection still registered, so it is
        // open (the registration is dropped before the socket is closed).
        unsafe { libc::shutdown(self.fd, how) };
    }
}

/// The open connections of one shard.
#[derive(Debug, Default)]
pub struct Registry {
    slots: RefCell<Vec<Option<Rc<Watch>>>>,
    free: RefCell<Vec<usize>>,
    open: Cell<usize>,
}

impl Registry {
    /// Registers a connection's socket, idle until `idle_deadline`.
    pub fn register(self: &Rc<Self>, fd: RawFd, idle_deadline: Instant) -> Registration {
        let watch = Rc::new(Watch {
            fd,
            phase: Cell::new(Phase::Idle),
            deadline: Cell::new(Some(idle_deadline)),
            expired: Cell::new(None),
        });
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => {
                slots[slot] = Some(watch.clone());
                slot
            }
            None => {
                slots.push(Some(watch.clone()));
                slots.len() - 1
            }
        };
        self.open.set(self.open.get() + 1);
        Registration {
            registry: self.clone(),
            slot,
            watch,
        }
    }

    /// Connections registered now.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Wakes every connection past its deadline. Returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut woken = 0;
        for watch in self.slots.borrow().iter().flatten() {
            let Some(deadline) = watch.deadline.get() else {
                continue;
            };
            if deadline <= now {
                let why = match watch.phase.get() {
                    Phase::Idle => Expired::Idle,
                    Phase::Head => Expired::Head,
                    Phase::Writing => Expired::Write,
                    Phase::Busy => continue,
                };
                watch.expire(why);
                woken += 1;
            }
        }
        woken
    }

    /// Wakes every idle connection so that it closes (server stopping).
    pub fn close_idle(&self) {
        for watch in self.slots.borrow().iter().flatten() {
            if watch.phase.get() == Phase::Idle {
                watch.expire(Expired::Shutdown);
            }
        }
    }
}

/// A connection's place in the registry; leaving it unregisters.
pub struct Registration {
    registry: Rc<Registry>,
    slot: usize,
    watch: Rc<Watch>,
}

impl std::ops::Deref for Registration {
    type Target = Watch;
    fn deref(&self) -> &Watch {
        &self.watch
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.borrow_mut()[self.slot] = None;
        self.registry.free.borrow_mut().push(self.slot);
        self.registry.open.set(self.registry.open.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A connected socket pair to shut down for real.
    fn pair() -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        std::os::unix::net::UnixStream::pair().unwrap()
    }

    #[test]
    fn sweep_expires_by_phase_and_deadline() {
        let reg = Rc::new(Registry::default());
        let now = Instant::now();
        let (a, _a) = pair();
        let (b, _b) = pair();
        let (c, _c) = pair();
        let idle = reg.register(a.as_raw_fd(), now + Duration::from_secs(5));
        let head = reg.register(b.as_raw_fd(), now);
        head.enter(Phase::Head, Some(now));
        let busy = reg.register(c.as_raw_fd(), now);
        busy.enter(Phase::Busy, Some(now));
        assert_eq!(reg.open(), 3);
        assert_eq!(reg.sweep(now), 1);
        assert_eq!(head.expired(), Some(Expired::Head));
        assert_eq!(idle.expired(), None);
        assert_eq!(
            busy.expired(),
            None,
            "busy connections wait for other shards"
        );
        // The shut-down socket reads EOF at once.
        let mut buf = [0u8; 4];
        assert_eq!(std::io::Read::read(&mut &b, &mut buf).unwrap(), 0);
        assert_eq!(reg.sweep(now + Duration::from_secs(6)), 1);
        assert_eq!(idle.expired(), Some(Expired::Idle));
        drop(head);
        assert_eq!(reg.open(), 2);
    }

    #[test]
    fn close_idle_leaves_the_others_and_slots_are_reused() {
        let reg = Rc::new(Registry::default());
        let now = Instant::now();
        let (a, _a) = pair();
        let (b, _b) = pair();
        let idle = reg.register(a.as_raw_fd(), now + Duration::from_secs(60));
        let writing = reg.register(b.as_raw_fd(), now);
        writing.enter(Phase::Writing, Some(now + Duration::from_secs(60)));
        reg.close_idle();
        assert_eq!(idle.expired(), Some(Expired::Shutdown));
        assert_eq!(writing.expired(), None);
        drop(idle);
        let (c, _c) = pair();
        let again = reg.register(c.as_raw_fd(), now);
        assert_eq!(again.slot, 0, "a freed slot is reused");
    }
}
