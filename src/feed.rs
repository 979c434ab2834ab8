//! One shard's feed store: the users this shard owns, their progress, and the
//! fallback pool that tops pages up.
//!
//! Everything here is plain `&mut self` data: no locks, no atomics, no I/O,
//! and no idea that other shards exist. The shard that owns a user is the only
//! caller that ever builds that user's pages (see `shard.rs`), which is what
//! makes "progress advances atomically" true without synchronisation.

use ahash::AHashMap;

use crate::counters::counters;
use crate::user_table::{Entry, UserTable};

/// Why a page request got no page: the one outcome type from the store to
/// the wire. The store itself only ever says `NothingToServe`; `Overloaded`
/// comes from the queues between shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// The user's personalized items are used up (or the user is unknown) and
    /// the fallback pool has nothing to add.
    NothingToServe,
    /// Too many requests in flight to the user's owner: try again.
    Overloaded,
}

/// A page buffer and what became of the request it was taken for. The
/// buffer always travels with the outcome, so that whoever holds a `Page`
/// holds the one buffer to give back.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<u32>,
    pub outcome: Result<(), Unserved>,
}

counters! {
    /// Running totals of one store, read by metrics.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct StoreCounters {
        /// Personalized items served.
        personalized_items: Counter,
        /// Fallback pool items served.
        fallback_items: Counter,
        /// Page requests for users not in the feeds.
        unknown_users: Counter,
        /// Users whose personalized feed ran out.
        exhausted_users: Counter,
        /// Page requests answered 503: nothing left to serve.
        nothing_to_serve: Counter,
    }
}

/// The fallback pool: distinct popular items, served in rotation.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    items: Vec<u32>,
    /// item -> position in `items`, to mark in O(1) which pool entries are
    /// already on a page.
    position: AHashMap<u32, u32>,
}

impl Pool {
    /// Builds a pool from items in preference order; repeats are dropped
    /// (first occurrence wins).
    pub fn new(items: impl IntoIterator<Item = u32>) -> Pool {
        let mut pool = Pool::default();
        for item in items {
            let next = pool.items.len() as u32;
            if let std::collections::hash_map::Entry::Vacant(slot) = pool.position.entry(item) {
                slot.insert(next);
                pool.items.push(item);
            }
        }
        pool
    }

    pub fn items(&self) -> &[u32] {
        &self.items
    }
}

/// Accumulates users for a [`Store`]. Items of all users go into one buffer.
#[derive(Debug, Default)]
pub struct StoreBuilder {
    items: Vec<u32>,
    users: UserTable,
}

/// A user id was added twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateUser(pub u32);

impl StoreBuilder {
    /// Reserves room for `users` users holding `items` items in total, so that
    /// loading never reallocates (and never holds two copies of the items).
    pub fn with_capacity(users: usize, items: usize) -> StoreBuilder {
        StoreBuilder {
            items: Vec::with_capacity(items),
            users: UserTable::with_capacity(users),
        }
    }

    /// Adds a user with their items in feed order.
    pub fn push_user(
        &mut self,
        user: u32,
        items: impl IntoIterator<Item = u32>,
    ) -> Result<(), DuplicateUser> {
        let start = self.items.len();
        self.items.extend(items);
        let len = self.items.len() - start;
        // 2^32 items of one user would be 16 GiB on one line of the feed file.
        debug_assert!(len <= u32::MAX as usize, "a feed is at most 2^32 items");
        let entry = Entry {
            start: start as u64,
            len: len as u32,
            served: 0,
        };
        if !self.users.insert(user, entry) {
            self.items.truncate(start);
            return Err(DuplicateUser(user));
        }
        Ok(())
    }

    /// Says which user will be pushed next, so that finding their place
    /// overlaps with preparing the current one (see [`UserTable::prefetch`]).
    pub fn prefetch(&self, user: u32) {
        self.users.prefetch(user);
    }

    /// All items added so far, for frequency counting.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    pub fn build(self, pool: Pool) -> Store {
        Store {
            items: self.items,
            users: self.users,
            pool,
            pool_cursor: 0,
            on_page: Vec::new(),
            counters: StoreCounters::default(),
        }
    }
}

/// One shard's users and their progress.
///
/// Invariant: a user's `served <= len`, and only [`Store::next_page`] changes
/// it, so only the owning shard does.
#[derive(Debug)]
pub struct Store {
    /// Every user's items, one user after another.
    items: Vec<u32>,
    users: UserTable,
    pool: Pool,
    /// Where the next top-up starts in the pool, so that successive pages
    /// rotate through it instead of always showing the same first items.
    pool_cursor: usize,
    /// Scratch bitset over pool positions: "already on this page". Kept to
    /// avoid an allocation per page.
    on_page: Vec<u64>,
    counters: StoreCounters,
}

impl Store {
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Items in the fallback pool.
    pub fn pool_len(&self) -> usize {
        self.pool.items.len()
    }

    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    /// The user's remaining personalized items, without serving them.
    pub fn remaining(&self, user: u32) -> Option<&[u32]> {
        Some(&self.items[self.users.get(user)?.unserved()])
    }

    /// Serves the user's next page of up to `size` items into `page` (cleared
    /// first): the next unseen personalized items in feed order, then distinct
    /// pool items not already on the page. Advances the user's progress.
    pub fn next_page(
        &mut self,
        user: u32,
        size: usize,
        page: &mut Vec<u32>,
    ) -> Result<(), Unserved> {
        self.page(user, size, page, true)
    }

    /// The page [`Store::next_page`] would serve now, without serving it:
    /// no progress, no pool rotation, no counters (for `HEAD`).
    pub fn peek_page(
        &mut self,
        user: u32,
        size: usize,
        page: &mut Vec<u32>,
    ) -> Result<(), Unserved> {
        self.page(user, size, page, false)
    }

    /// [`Store::next_page`] if `serve`, else [`Store::peek_page`].
    pub fn page(
        &mut self,
        user: u32,
        size: usize,
        page: &mut Vec<u32>,
        serve: bool,
    ) -> Result<(), Unserved> {
        page.clear();
        let (mut unknown, mut exhausted_now) = (false, false);
        match self.users.get_mut(user) {
            Some(e) => {
                let unserved = e.unserved();
                let take = size.min(unserved.len());
                page.extend_from_slice(&self.items[unserved.start..unserved.start + take]);
                if serve && take > 0 {
                    e.served += take as u32;
                    exhausted_now = take == unserved.len();
                }
            }
            None => unknown = true,
        }
        let personalized = page.len();
        let fallback = if page.len() < size {
            self.top_up(page, size, serve)
        } else {
            0
        };
        if !serve {
            return if page.is_empty() {
                Err(Unserved::NothingToServe)
            } else {
                Ok(())
            };
        }
        let c = &mut self.counters;
        c.unknown_users += unknown as u64;
        c.exhausted_users += exhausted_now as u64;
        if page.is_empty() {
            c.nothing_to_serve += 1;
            return Err(Unserved::NothingToServe);
        }
        c.personalized_items += personalized as u64;
        c.fallback_items += fallback as u64;
        Ok(())
    }

    /// Fills `page` up to `size` from the pool, skipping items already on it.
    /// Returns how many items were added. Rotates the pool only if `serve`.
    fn top_up(&mut self, page: &mut Vec<u32>, size: usize, serve: bool) -> usize {
        let n = self.pool.items.len();
        if n == 0 {
            return 0;
        }
        let words = n.div_ceil(64);
        self.on_page.clear();
        self.on_page.resize(words, 0);
        for item in page.iter() {
            if let Some(&pos) = self.pool.position.get(item) {
                self.on_page[pos as usize / 64] |= 1 << (pos % 64);
            }
        }
        let before = page.len();
        let mut pos = self.pool_cursor;
        for _ in 0..n {
            if page.len() == size {
                break;
            }
            if self.on_page[pos / 64] & (1 << (pos % 64)) == 0 {
                page.push(self.pool.items[pos]);
            }
            pos += 1;
            if pos == n {
                pos = 0;
            }
        }
        if serve {
            self.pool_cursor = pos;
        }
        page.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(users: &[(u32, &[u32])], pool: &[u32]) -> Store {
        let mut b = StoreBuilder::with_capacity(users.len(), 0);
        for (user, items) in users {
            b.push_user(*user, items.iter().copied()).unwrap();
        }
        b.build(Pool::new(pool.iter().copied()))
    }

    #[test]
    fn serves_personalized_items_in_order_then_advances() {
        let mut s = store(&[(7, &[1, 2, 3, 4, 5])], &[100, 101]);
        let mut page = Vec::new();
        s.next_page(7, 2, &mut page).unwrap();
        assert_eq!(page, [1, 2]);
        assert_eq!(s.counters().personalized_items, 2);
        assert_eq!(s.counters().exhausted_users, 0);
        s.next_page(7, 2, &mut page).unwrap();
        assert_eq!(page, [3, 4]);
        assert_eq!(s.remaining(7).unwrap(), &[5]);
    }

    #[test]
    fn tops_up_from_pool_without_items_already_on_page() {
        let mut s = store(&[(1, &[10, 20, 30])], &[20, 40, 50, 60]);
        let mut page = Vec::new();
        s.next_page(1, 5, &mut page).unwrap();
        assert_eq!(page, [10, 20, 30, 40, 50]);
        let c = s.counters();
        assert_eq!((c.personalized_items, c.fallback_items), (3, 2));
        assert_eq!((c.unknown_users, c.exhausted_users), (0, 1));
        // Exhausted user: fallback only, rotation continues where it stopped.
        s.next_page(1, 2, &mut page).unwrap();
        assert_eq!(page, [60, 20]);
        s.next_page(1, 2, &mut page).unwrap();
        assert_eq!(s.counters().fallback_items, 6);
        assert_eq!(
            s.counters().exhausted_users,
            1,
            "exhaustion is counted once"
        );
    }

    #[test]
    fn short_page_when_pool_is_small_and_error_when_empty() {
        let mut s = store(&[(1, &[5])], &[5, 6]);
        let mut page = Vec::new();
        s.next_page(1, 10, &mut page).unwrap();
        assert_eq!(page, [5, 6], "pool item 5 is already on the page");
        let mut empty = store(&[(1, &[5])], &[]);
        empty.next_page(1, 10, &mut page).unwrap();
        assert_eq!(page, [5]);
        assert_eq!(
            empty.next_page(1, 10, &mut page),
            Err(Unserved::NothingToServe)
        );
        assert_eq!(empty.counters().nothing_to_serve, 1);
    }

    #[test]
    fn unknown_user_gets_pool_items_and_is_counted() {
        let mut s = store(&[(1, &[5])], &[8, 9, 10]);
        let mut page = Vec::new();
        s.next_page(42, 2, &mut page).unwrap();
        assert_eq!(page, [8, 9]);
        assert_eq!(s.counters().unknown_users, 1);
        assert_eq!(s.remaining(42), None);
    }

    #[test]
    fn pool_drops_repeats_and_users_are_unique() {
        let p = Pool::new([3, 1, 3, 2, 1]);
        assert_eq!(p.items(), &[3, 1, 2]);
        let mut b = StoreBuilder::default();
        b.push_user(1, [1]).unwrap();
        assert_eq!(b.push_user(1, [2]), Err(DuplicateUser(1)));
        assert_eq!(b.items(), &[1], "a refused user leaves no items behind");
        let mut s = b.build(Pool::default());
        assert_eq!(s.users(), 1);
        assert_eq!(s.remaining(1).unwrap(), &[1]);
        let mut page = Vec::new();
        s.next_page(1, 5, &mut page).unwrap();
        assert_eq!(page, [1]);
    }

    #[test]
    fn user_with_empty_feed_is_known_but_gets_fallback() {
        let mut s = store(&[(3, &[])], &[1]);
        let mut page = Vec::new();
        s.next_page(3, 1, &mut page).unwrap();
        assert_eq!(s.counters().unknown_users, 0);
        assert_eq!(page, [1]);
    }

    #[test]
    fn a_peek_is_the_next_page_without_serving_it() {
        let mut s = store(&[(1, &[10, 20, 30])], &[40, 50, 60]);
        let (mut peeked, mut page) = (Vec::new(), Vec::new());
        s.next_page(1, 2, &mut page).unwrap();
        let before = s.counters();
        s.peek_page(1, 3, &mut peeked).unwrap();
        s.peek_page(1, 3, &mut peeked).unwrap();
        assert_eq!(peeked, [30, 40, 50]);
        assert_eq!(s.counters(), before, "a peek counts nothing");
        s.next_page(1, 3, &mut page).unwrap();
        assert_eq!(page, peeked, "and changes nothing");
        s.peek_page(99, 2, &mut peeked).unwrap();
        s.next_page(99, 2, &mut page).unwrap();
        assert_eq!(page, peeked, "the pool did not rotate for the peek");
        let mut empty = store(&[(1, &[])], &[]);
        assert_eq!(
            empty.peek_page(1, 3, &mut peeked),
            Err(Unserved::NothingToServe)
        );
        assert_eq!(empty.counters().nothing_to_serve, 0);
    }
}
