//! One shard's feed store: the users this shard owns, their progress, and the
//! fallback pool that tops pages up.
//!
//! Everything here is plain `&mut self` data: no locks, no atomics, no I/O,
//! and no idea that other shards exist. The shard that owns a user is the only
//! caller that ever builds that user's pages (see `shard.rs`), which is what
//! makes "progress advances atomically" true without synchronisation.

use ahash::AHashMap;

use crate::counters::counters;
use crate::cursor::{version_tag, Cursor};
use crate::hash::mix64;
use crate::mapped::MappedU32s;
use crate::user_table::{Entry, UserTable};

mod carry;
pub use carry::Carried;

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
    /// The server is stopping and its journal has closed (a connection
    /// that outlived `--shutdown-timeout`): the page's progress would not be
    /// kept, so the page is not given (`503`). Decided in `shard.rs`.
    Stopping,
    /// Another instance of the cluster owns the user: the page holds
    /// fallback items only (answered `200`, `Shardfeed-Degraded:
    /// not-owner`). Decided in `shard.rs`, never by the store.
    NotOwner,
}

/// A page buffer and what became of the request it was taken for. The
/// buffer always travels with the outcome, so that whoever holds a `Page`
/// holds the one buffer to give back.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<u32>,
    pub outcome: Result<(), Unserved>,
    /// The `Feed-Cursor` the answer carries: the place after this page
    /// (see [`Store::page`]); `None`: no header (no page, or a
    /// misdirected page asked without a cursor).
    pub cursor: Option<Cursor>,
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
        /// Pages served from a cursor of the serving feed version (retries included).
        cursor_pages: Counter,
        /// Cursors of another feed version, served as without a cursor.
        stale_cursors: Counter,
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

/// Every user's items, one user after another: owned, or borrowed from a
/// read-only mapping of a snapshot (no copy, no zeroing: the page cache's
/// own pages). Either way a `&[u32]` ([`Deref`](std::ops::Deref)), never
/// changed once the store is built; a mapping is unmapped when its `Items`
/// is dropped, and nothing keeps a pointer into it beyond a borrow.
#[derive(Debug)]
pub enum Items {
    Owned(Vec<u32>),
    Mapped(MappedU32s),
}

impl Default for Items {
    fn default() -> Items {
        Items::Owned(Vec::new())
    }
}

impl Items {
    /// Whether these items are borrowed from a mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Items::Mapped(_))
    }

    /// The owned vector to push onto; mapped items are copied into one
    /// first (builders from a mapping take no users in practice).
    fn owned_mut(&mut self) -> &mut Vec<u32> {
        if let Items::Mapped(_) = self {
            *self = Items::Owned(self.to_vec());
        }
        match self {
            Items::Owned(v) => v,
            Items::Mapped(_) => unreachable!("copied above"),
        }
    }
}

impl std::ops::Deref for Items {
    type Target = [u32];

    #[inline]
    fn deref(&self) -> &[u32] {
        match self {
            Items::Owned(v) => v,
            Items::Mapped(m) => m.as_slice(),
        }
    }
}

/// Accumulates users for a [`Store`]. Items of all users go into one buffer.
#[derive(Debug, Default)]
pub struct StoreBuilder {
    items: Items,
    users: UserTable,
}

/// The memory for a store (this many bytes) could not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory(pub usize);

/// A user id was added twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateUser(pub u32);

impl StoreBuilder {
    /// Reserves room for `users` users holding `items` items in total, so that
    /// loading never reallocates (and never holds two copies of the items).
    pub fn with_capacity(users: usize, items: usize) -> StoreBuilder {
        StoreBuilder {
            items: Items::Owned(Vec::with_capacity(items)),
            users: UserTable::with_capacity(users),
        }
    }

    /// [`StoreBuilder::with_capacity`], saying so instead of aborting the
    /// process when the memory cannot be had.
    pub fn try_with_capacity(users: usize, items: usize) -> Result<StoreBuilder, OutOfMemory> {
        let mut list = Vec::new();
        list.try_reserve_exact(items)
            .map_err(|_| OutOfMemory(items.saturating_mul(4)))?;
        Ok(StoreBuilder {
            items: Items::Owned(list),
            users: UserTable::try_with_capacity(users).map_err(OutOfMemory)?,
        })
    }

    /// Adds a user with their items in feed order.
    pub fn push_user(
        &mut self,
        user: u32,
        items: impl IntoIterator<Item = u32>,
    ) -> Result<(), DuplicateUser> {
        let all = self.items.owned_mut();
        let start = all.len();
        all.extend(items);
        let len = all.len() - start;
        // 2^32 items of one user would be 16 GiB on one line of the feed file.
        debug_assert!(len <= u32::MAX as usize, "a feed is at most 2^32 items");
        let entry = Entry::new(start as u64, len as u32, EMPTY_PREFIX);
        if !self.users.insert(user, entry) {
            all.truncate(start);
            return Err(DuplicateUser(user));
        }
        Ok(())
    }

    /// Says which user will be pushed next, so that finding their place
    /// overlaps with preparing the current one (see [`UserTable::prefetch`]).
    pub fn prefetch(&self, user: u32) {
        self.users.prefetch(user);
    }

    /// The user table and the items, as a snapshot stores them.
    pub fn parts(&self) -> (&UserTable, &[u32]) {
        (&self.users, &self.items)
    }

    /// A builder from a snapshot's user table and items (owned or mapped).
    pub fn from_parts(users: UserTable, items: Items) -> StoreBuilder {
        StoreBuilder { items, users }
    }

    /// Users added so far.
    pub fn users(&self) -> usize {
        self.users.len()
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
            version: 0,
            tag: version_tag(0),
            journaled: false,
            advanced: None,
        }
    }
}

/// The hash of an empty served prefix.
pub const EMPTY_PREFIX: u32 = 0x9e37_79b9;

/// Extends the 32-bit hash `h` of a served prefix by the next `items`
/// served, the first of them at position `first` of the feed. Fixed for
/// every build: hashes outlive the process in the journal.
///
/// A sum of one mixed term per (position, item), not a chain: the terms do
/// not wait for each other, so the CPU computes them side by side (a
/// chained hash made random-user pages 3x slower in the micro-benchmark by
/// holding up the next page's cache misses).
#[inline]
pub fn prefix_hash(h: u32, first: u32, items: &[u32]) -> u32 {
    let mut sum = h;
    for (i, &item) in items.iter().enumerate() {
        let pos = first as u64 + i as u64;
        sum = sum.wrapping_add((mix64((pos << 32) | item as u64) >> 32) as u32);
    }
    sum
}

/// A user's progress, as the store reports it after a page moved it on and
/// takes it back at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub user: u32,
    pub served: u32,
    /// [`prefix_hash`] of the first `served` items.
    pub prefix: u32,
}

/// What [`Store::restore`] made of a remembered progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The user continues where they were.
    Kept,
    /// The user's feed changed under the served items: they start again.
    Reset,
    /// The user is not in this feed.
    Unknown,
}

/// One shard's users and their progress.
///
/// Invariant: a user's `served <= len`, and only [`Store::next_page`] (and
/// [`Store::restore`], before serving starts) changes it, so only the owning
/// shard does.
#[derive(Debug)]
pub struct Store {
    /// Every user's items, one user after another (maybe a mapping).
    items: Items,
    users: UserTable,
    pool: Pool,
    /// Where the next top-up starts in the pool, so that successive pages
    /// rotate through it instead of always showing the same first items.
    pool_cursor: usize,
    /// Scratch bitset over pool positions: "already on this page". Kept to
    /// avoid an allocation per page.
    on_page: Vec<u64>,
    counters: StoreCounters,
    /// Which feed this store holds (0 until [`Store::set_version`]).
    version: u64,
    /// `version_tag(version)`, which every page's cursor carries: computed
    /// once, not per page.
    tag: u32,
    /// Progress is kept on disk: pages hash what they serve and report
    /// where they left the user ([`Store::journal_progress`]).
    journaled: bool,
    /// The progress the last served page left, for the journal.
    advanced: Option<Progress>,
}

impl Store {
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Whether the items are borrowed from a mapped snapshot.
    pub fn items_mapped(&self) -> bool {
        self.items.is_mapped()
    }

    /// Items in the fallback pool.
    pub fn pool_len(&self) -> usize {
        self.pool.items.len()
    }

    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    /// The feed version this store holds.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Names the feed version this store holds; set once, after loading.
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
        self.tag = version_tag(version);
    }

    /// From now on, every page that moves a user on keeps the hash of the
    /// served prefix up to date and reports the new progress to
    /// [`Store::take_advanced`]. Without a journal neither is needed.
    pub fn journal_progress(&mut self) {
        self.journaled = true;
    }

    /// The progress the last page moved on, if it moved any since the last
    /// call: what the journal must record (only after
    /// [`Store::journal_progress`]).
    #[inline]
    pub fn take_advanced(&mut self) -> Option<Progress> {
        self.advanced.take()
    }

    /// A user's progress now.
    pub fn progress(&self, user: u32) -> Option<Progress> {
        let e = self.users.get(user)?;
        Some(Progress {
            user,
            served: e.served,
            prefix: e.prefix,
        })
    }

    /// Appends the progress of the users in table slots `from..` to `out`,
    /// at most `max` slots' worth; returns where to go on, `None` when
    /// every user has been seen. For checkpoints, in chunks between which
    /// the shard serves.
    pub fn progress_from(&self, from: usize, max: usize, out: &mut Vec<Progress>) -> Option<usize> {
        let end = (from + max).min(self.users.slots());
        for i in from..end {
            if let Some((user, e)) = self.users.at(i) {
                out.push(Progress {
                    user,
                    served: e.served,
                    prefix: e.prefix,
                });
            }
        }
        (end < self.users.slots()).then_some(end)
    }

    /// Takes back a user's remembered progress at start-up: kept if
    /// `same_version` (the feed is the one it was served from) or if the
    /// user's first `served` items still hash to `prefix` (the prefix
    /// rule); otherwise the user starts again at the beginning.
    pub fn restore(&mut self, p: Progress, same_version: bool) -> Restored {
        let Some(e) = self.users.get_mut(p.user) else {
            return Restored::Unknown;
        };
        let start = e.start as usize;
        let keep = p.served <= e.len
            && (same_version
                || prefix_hash(
                    EMPTY_PREFIX,
                    0,
                    &self.items[start..start + p.served as usize],
                ) == p.prefix);
        if keep {
            e.served = p.served;
            e.prefix = p.prefix;
            Restored::Kept
        } else {
            e.served = 0;
            e.prefix = EMPTY_PREFIX;
            Restored::Reset
        }
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
    ) -> Result<Cursor, Unserved> {
        self.page(user, size, None, page, true)
    }

    /// The page [`Store::next_page`] would serve now, without serving it:
    /// no progress, no pool rotation, no counters (for `HEAD`).
    pub fn peek_page(
        &mut self,
        user: u32,
        size: usize,
        page: &mut Vec<u32>,
    ) -> Result<Cursor, Unserved> {
        self.page(user, size, None, page, false)
    }

    /// The place the next page of `user` would start from: what a client
    /// without a cursor is at (for tests and tools).
    pub fn cursor(&self, user: u32) -> Cursor {
        Cursor {
            user,
            version: self.tag,
            position: self.users.get(user).map_or(0, |e| e.served),
            pool: self.pool_cursor as u32,
        }
    }

    /// Fills `page` (cleared first) with up to `size` items for `user` and
    /// returns the place after it (the answer's `Feed-Cursor`).
    ///
    /// Without `at` (or with a cursor of another feed version, which is
    /// ignored): the user's next unseen personalized items, then distinct
    /// pool items from the pool's rotation; the user's progress moves to
    /// the page's end and the rotation on.
    ///
    /// With a cursor of this version: the personalized items from its
    /// position (clamped to the user's list: beyond it, fallback only), then
    /// pool items from its pool offset. The result depends on the cursor
    /// and the feed only, so a repeated request gets the same page. The
    /// user's progress moves to the page's end if that is further (never
    /// back: a pure retry changes nothing and reports nothing to the
    /// journal); the shared rotation stays where it is.
    ///
    /// `serve == false` (`HEAD`): the same page and cursor, nothing moved
    /// or counted.
    pub fn page(
        &mut self,
        user: u32,
        size: usize,
        at: Option<Cursor>,
        page: &mut Vec<u32>,
        serve: bool,
    ) -> Result<Cursor, Unserved> {
        debug_assert!(at.is_none_or(|c| c.user == user), "a cursor of this user");
        page.clear();
        // Keyed on the version alone: a reload's new store ignores old tokens.
        let version = self.tag;
        let at = match at {
            Some(c) if c.version == version => Some(c),
            Some(_) => {
                self.counters.stale_cursors += serve as u64;
                None
            }
            None => None,
        };
        let (mut unknown, mut exhausted_now) = (false, false);
        let mut position = 0;
        match self.users.get_mut(user) {
            Some(e) => {
                let from = at.map_or(e.served, |c| c.position.min(e.len));
                let take = size.min((e.len - from) as usize);
                let first = e.start as usize + from as usize;
                page.extend_from_slice(&self.items[first..first + take]);
                position = from + take as u32;
                if serve && position > e.served {
                    if self.journaled {
                        // The items between the old progress and the new
                        // one: the page itself unless a cursor jumped ahead.
                        let s = e.start as usize;
                        let newly = &self.items[s + e.served as usize..s + position as usize];
                        e.prefix = prefix_hash(e.prefix, e.served, newly);
                    }
                    e.served = position;
                    exhausted_now = position == e.len;
                    if self.journaled {
                        self.advanced = Some(Progress {
                            user,
                            served: e.served,
                            prefix: e.prefix,
                        });
                    }
                }
            }
            None => unknown = true,
        }
        let personalized = page.len();
        let pool_from = match at {
            // Any offset is a place in the pool: a token is not trusted to
            // be below its size.
            Some(c) if !self.pool.items.is_empty() => c.pool as usize % self.pool.items.len(),
            Some(_) => 0,
            None => self.pool_cursor,
        };
        let (fallback, pool_end) = if page.len() < size {
            self.top_up(page, size, pool_from)
        } else {
            (0, pool_from)
        };
        let next = Cursor {
            user,
            version,
            position,
            pool: pool_end as u32,
        };
        if !serve {
            return if page.is_empty() {
                Err(Unserved::NothingToServe)
            } else {
                Ok(next)
            };
        }
        if at.is_none() {
            self.pool_cursor = pool_end;
        }
        let c = &mut self.counters;
        c.unknown_users += unknown as u64;
        c.exhausted_users += exhausted_now as u64;
        c.cursor_pages += at.is_some() as u64;
        if page.is_empty() {
            c.nothing_to_serve += 1;
            return Err(Unserved::NothingToServe);
        }
        c.personalized_items += personalized as u64;
        c.fallback_items += fallback as u64;
        Ok(next)
    }

    /// Fills `page` with up to `size` fallback items only, for a user this
    /// store does not own (a misdirected request): no user's progress
    /// changes. From `at`'s pool offset if given (the same items for a
    /// repeated request, the rotation left alone), else from the rotation,
    /// which moves on only if `serve`; counts only if `serve`.
    pub fn fallback_page(
        &mut self,
        size: usize,
        at: Option<Cursor>,
        page: &mut Vec<u32>,
        serve: bool,
    ) {
        page.clear();
        let n = self.pool.items.len();
        let from = match at {
            Some(c) if n > 0 => c.pool as usize % n,
            Some(_) => 0,
            None => self.pool_cursor,
        };
        let (added, end) = self.top_up(page, size, from);
        if serve {
            if at.is_none() {
                self.pool_cursor = end;
            }
            self.counters.fallback_items += added as u64;
        }
    }

    /// Fills `page` up to `size` from the pool, starting at pool position
    /// `from`, skipping items already on it. Returns how many items were
    /// added and the pool position after the last one looked at.
    fn top_up(&mut self, page: &mut Vec<u32>, size: usize, from: usize) -> (usize, usize) {
        let n = self.pool.items.len();
        if n == 0 {
            return (0, 0);
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
        let mut pos = from;
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
        (page.len() - before, pos)
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

    #[test]
    fn progress_carries_the_hash_of_what_was_served() {
        let mut s = store(&[(1, &[10, 20, 30, 40]), (2, &[5])], &[99]);
        let mut page = Vec::new();
        s.next_page(2, 1, &mut page).unwrap();
        assert_eq!(
            s.take_advanced(),
            None,
            "nothing to report without a journal"
        );
        s.journal_progress();
        s.next_page(1, 3, &mut page).unwrap();
        let p = s.take_advanced().unwrap();
        assert_eq!((p.user, p.served), (1, 3));
        assert_eq!(p.prefix, prefix_hash(EMPTY_PREFIX, 0, &[10, 20, 30]));
        assert_eq!(s.take_advanced(), None, "taken once");
        s.next_page(1, 3, &mut page).unwrap();
        assert_eq!(
            s.take_advanced().unwrap().prefix,
            prefix_hash(EMPTY_PREFIX, 0, &[10, 20, 30, 40])
        );
        // Fallback-only pages and peeks move nothing.
        s.next_page(1, 3, &mut page).unwrap();
        s.peek_page(2, 1, &mut page).unwrap();
        s.next_page(7, 1, &mut page).unwrap();
        assert_eq!(s.take_advanced(), None);
        assert_eq!(s.progress(1).unwrap().served, 4);
    }

    #[test]
    fn restore_keeps_progress_only_over_the_same_items() {
        let served = prefix_hash(EMPTY_PREFIX, 0, &[10, 20]);
        assert_ne!(
            served,
            prefix_hash(EMPTY_PREFIX, 0, &[20, 10]),
            "order counts"
        );
        let p = |user, served_n, prefix| Progress {
            user,
            served: served_n,
            prefix,
        };
        // A new feed whose first two items are the same keeps the progress.
        let mut s = store(&[(1, &[10, 20, 31]), (2, &[10, 21, 30]), (3, &[10])], &[]);
        s.journal_progress();
        assert_eq!(s.restore(p(1, 2, served), false), Restored::Kept);
        assert_eq!(s.remaining(1).unwrap(), &[31]);
        assert_eq!(s.restore(p(2, 2, served), false), Restored::Reset);
        assert_eq!(s.remaining(2).unwrap(), &[10, 21, 30]);
        assert_eq!(
            s.restore(p(3, 2, served), true),
            Restored::Reset,
            "more than the feed holds"
        );
        assert_eq!(s.restore(p(9, 1, served), false), Restored::Unknown);
        // The same version is trusted; later pages extend the restored hash.
        assert_eq!(s.restore(p(2, 1, 12345), true), Restored::Kept);
        let mut page = Vec::new();
        s.next_page(1, 1, &mut page).unwrap();
        assert_eq!(
            s.take_advanced().unwrap().prefix,
            prefix_hash(served, 2, &[31])
        );
    }

    #[test]
    fn progress_from_walks_every_user_in_chunks() {
        let users: Vec<(u32, Vec<u32>)> = (0..100).map(|u| (u, vec![u; 3])).collect();
        let refs: Vec<(u32, &[u32])> = users.iter().map(|(u, i)| (*u, &i[..])).collect();
        let mut s = store(&refs, &[]);
        let mut page = Vec::new();
        s.next_page(42, 2, &mut page).unwrap();
        let (mut all, mut at) = (Vec::new(), Some(0));
        while let Some(from) = at {
            at = s.progress_from(from, 7, &mut all);
        }
        all.sort_by_key(|p| p.user);
        assert_eq!(all.len(), 100);
        assert_eq!(all[42].served, 2);
        assert_eq!(all[41].served, 0);
        assert_eq!(all[41].prefix, EMPTY_PREFIX);
    }

    fn at(s: &Store, user: u32, position: u32, pool: u32) -> Option<Cursor> {
        Some(Cursor {
            position,
            pool,
            ..s.cursor(user)
        })
    }

    #[test]
    fn a_cursor_serves_the_page_at_its_place_and_a_retry_the_same() {
        let mut s = store(&[(1, &[10, 20, 30, 40, 50])], &[20, 60, 70, 80]);
        let mut page = Vec::new();
        let first = s.next_page(1, 2, &mut page).unwrap();
        assert_eq!(page, [10, 20]);
        assert_eq!((first.position, first.pool), (2, 0), "no fallback yet");
        // The page after `first`, then the same request again.
        let second = s.page(1, 4, Some(first), &mut page, true).unwrap();
        assert_eq!(page, [30, 40, 50, 20], "20 of the pool is not on this page");
        assert_eq!((second.position, second.pool), (5, 1));
        assert_eq!(s.progress(1).unwrap().served, 5);
        // Other users' pages rotate the pool meanwhile.
        s.next_page(99, 3, &mut page).unwrap();
        let again = s.page(1, 4, Some(first), &mut page, true).unwrap();
        assert_eq!(page, [30, 40, 50, 20], "the same page, fallback included");
        assert_eq!(again, second, "and the same cursor");
        assert_eq!(s.progress(1).unwrap().served, 5, "never backwards");
        // Beyond the list: fallback only, walking the pool from the cursor.
        let third = s.page(1, 2, Some(second), &mut page, true).unwrap();
        assert_eq!(page, [60, 70]);
        assert_eq!((third.position, third.pool), (5, 3));
        s.page(1, 2, Some(third), &mut page, true).unwrap();
        assert_eq!(page, [80, 20]);
        let far = s.page(1, 2, at(&s, 1, 1000, 6), &mut page, true).unwrap();
        assert_eq!(
            page,
            [70, 80],
            "a position past the end is the end; offset 6 % 4"
        );
        assert_eq!(far.position, 5);
        assert_eq!(s.counters().cursor_pages, 5);
    }

    #[test]
    fn a_cursor_moves_progress_to_its_end_if_further() {
        let mut s = store(&[(1, &[1, 2, 3, 4, 5, 6])], &[9]);
        let mut page = Vec::new();
        // A position ahead of the progress (the server forgot, the client
        // did not): served from there, progress jumps to the page's end.
        s.page(1, 2, at(&s, 1, 3, 0), &mut page, true).unwrap();
        assert_eq!(page, [4, 5]);
        assert_eq!(s.remaining(1).unwrap(), &[6]);
        // Behind it: the old items again, progress stays.
        s.page(1, 2, at(&s, 1, 0, 0), &mut page, true).unwrap();
        assert_eq!(page, [1, 2]);
        assert_eq!(s.remaining(1).unwrap(), &[6]);
        // Overlapping it: moves to the end of this page.
        s.page(1, 3, at(&s, 1, 4, 0), &mut page, true).unwrap();
        assert_eq!(page, [5, 6, 9]);
        assert_eq!(s.remaining(1).unwrap(), &[] as &[u32]);
        assert_eq!(s.counters().exhausted_users, 1);
    }

    #[test]
    fn a_cursor_of_another_version_is_ignored() {
        let mut s = store(&[(1, &[1, 2, 3, 4])], &[9]);
        s.set_version(7);
        let mut page = Vec::new();
        let old = Cursor {
            version: crate::cursor::version_tag(6),
            ..s.cursor(1)
        };
        let next = s.page(1, 2, Some(Cursor { position: 2, ..old }), &mut page, true);
        assert_eq!(page, [1, 2], "served as without a cursor");
        assert_eq!(next.unwrap().version, crate::cursor::version_tag(7));
        assert_eq!(s.counters().stale_cursors, 1);
        assert_eq!(s.counters().cursor_pages, 0);
    }

    #[test]
    fn a_peek_at_a_cursor_shows_its_page_and_cursor() {
        let mut s = store(&[(1, &[1, 2, 3])], &[7, 8, 9]);
        let mut page = Vec::new();
        let c = at(&s, 1, 2, 1);
        let before = s.counters();
        let peeked = s.page(1, 3, c, &mut page, false).unwrap();
        assert_eq!(page, [3, 8, 9]);
        assert_eq!(s.counters(), before);
        assert_eq!(s.progress(1).unwrap().served, 0, "nothing served");
        let served = s.page(1, 3, c, &mut page, true).unwrap();
        assert_eq!((page.as_slice(), served), (&[3, 8, 9][..], peeked));
        // An unknown user: fallback from the cursor's offset, position 0.
        let c = at(&s, 5, 0, 2);
        let unknown = s.page(5, 2, c, &mut page, true).unwrap();
        assert_eq!(page, [9, 7]);
        assert_eq!((unknown.position, unknown.pool), (0, 1));
        s.page(5, 2, c, &mut page, true).unwrap();
        assert_eq!(page, [9, 7]);
    }

    #[test]
    fn a_cursor_advance_is_journaled_and_a_retry_is_not() {
        let mut s = store(&[(1, &[10, 20, 30, 40, 50])], &[99]);
        s.journal_progress();
        let mut page = Vec::new();
        let c = s.next_page(1, 2, &mut page).unwrap();
        s.take_advanced();
        let end = s.page(1, 2, Some(c), &mut page, true).unwrap();
        let p = s.take_advanced().expect("an advance is recorded");
        assert_eq!(
            (p.served, p.prefix),
            (4, prefix_hash(EMPTY_PREFIX, 0, &[10, 20, 30, 40]))
        );
        s.page(1, 2, Some(c), &mut page, true).unwrap();
        assert_eq!(s.take_advanced(), None, "a pure retry records nothing");
        // A jump ahead hashes every item up to the new progress.
        s.page(1, 1, at(&s, 1, 4, 0), &mut page, true).unwrap();
        assert_eq!(page, [50]);
        assert_eq!(
            s.take_advanced().unwrap().prefix,
            prefix_hash(EMPTY_PREFIX, 0, &[10, 20, 30, 40, 50])
        );
        let mut fresh = store(&[(1, &[10, 20, 30, 40, 50])], &[99]);
        fresh.journal_progress();
        fresh
            .page(1, 1, Some(Cursor { position: 4, ..end }), &mut page, true)
            .unwrap();
        assert_eq!(
            fresh.take_advanced().unwrap().prefix,
            prefix_hash(EMPTY_PREFIX, 0, &[10, 20, 30, 40, 50]),
            "the same hash whichever way the progress got there"
        );
    }

    #[test]
    fn a_misdirected_page_with_a_cursor_repeats_and_leaves_the_rotation() {
        let mut s = store(&[], &[1, 2, 3, 4, 5]);
        let mut page = Vec::new();
        let c = at(&s, 8, 0, 3);
        s.fallback_page(2, c, &mut page, true);
        assert_eq!(page, [4, 5]);
        s.fallback_page(2, c, &mut page, true);
        assert_eq!(page, [4, 5]);
        s.fallback_page(2, None, &mut page, true);
        assert_eq!(page, [1, 2], "the rotation did not move for cursors");
    }
}
