//! One shard's users: user id -> where the user's items are in the store and
//! how many of them were served, in a single open-addressing table.
//!
//! Why not a `HashMap<u32, u32>` plus arrays of offsets and progress: a page
//! for a random user then takes five dependent cache misses (the map's control
//! bytes, its bucket, the offset, the progress, the items). Here the id, the
//! item range and the progress share one 24-byte slot, found by linear probing
//! from the id's hash, so a lookup usually costs one miss before the items.
//!
//! The table is at most `MAX_LOAD` full (about 1.75 slots probed per hit)
//! and always keeps an empty slot, which ends every probe.

use crate::hash::mix64;

/// Where one user's items are and how far they got: one slot of the table,
/// 24 bytes (checked below), the user id included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Entry {
    /// Whose entry this is (set by [`UserTable::insert`]).
    user: u32,
    /// Number of items. `u32`: a feed is at most 2^32 items.
    pub len: u32,
    /// First item in the store's item array; `EMPTY` in an empty slot.
    pub start: u64,
    /// Items already served (`<= len`).
    pub served: u32,
    /// 32-bit hash of the first `served` items (see `feed::prefix_hash`),
    /// kept so that a changed feed can be checked against what was served.
    /// 32 bits keep the slot at 24 bytes; a changed prefix that hashes the
    /// same (one in 4 billion) would keep its progress.
    pub prefix: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 24);

/// `start` of an empty slot: no feed starts there.
const EMPTY: u64 = u64::MAX;

impl Default for Entry {
    fn default() -> Entry {
        Entry::new(EMPTY, 0, 0)
    }
}

impl Entry {
    /// A user's entry: `len` items from `start`, none served yet (`prefix`:
    /// the hash of an empty prefix).
    pub fn new(start: u64, len: u32, prefix: u32) -> Entry {
        Entry {
            user: 0,
            len,
            start,
            served: 0,
            prefix,
        }
    }

    /// The user in this slot; `None` for an empty slot (for walking a
    /// snapshot's slots without building a table).
    pub fn occupant(&self) -> Option<u32> {
        (self.start != EMPTY).then_some(self.user)
    }

    /// Where the user's items not yet served are in the store's item array.
    pub fn unserved(&self) -> std::ops::Range<usize> {
        let end = (self.start + self.len as u64) as usize;
        (self.start + self.served as u64) as usize..end
    }
}

/// Largest share of slots in use, as a fraction `MAX_LOAD.0 / MAX_LOAD.1`.
const MAX_LOAD: (usize, usize) = (7, 10);

/// Fixed, so that a store's layout does not vary between runs; not
/// `shard::owner_of`'s seed, whose hash every user of a shard has in common.
const SEED: u64 = 0x243f_6a88_85a3_08d3;

#[derive(Debug, Default)]
pub struct UserTable {
    slots: Vec<Entry>,
    len: usize,
}

impl UserTable {
    /// A table that takes `users` users without growing.
    pub fn with_capacity(users: usize) -> UserTable {
        UserTable {
            slots: vec![Entry::default(); slots_for(users)],
            len: 0,
        }
    }

    /// [`UserTable::with_capacity`], or the bytes it needed when they
    /// cannot be allocated.
    pub fn try_with_capacity(users: usize) -> Result<UserTable, usize> {
        let n = slots_for(users);
        let mut slots = Vec::new();
        let bytes = n.saturating_mul(std::mem::size_of::<Entry>());
        slots.try_reserve_exact(n).map_err(|_| bytes)?;
        slots.resize(n, Entry::default());
        Ok(UserTable { slots, len: 0 })
    }

    /// The table's slots as they are laid out: for a snapshot, which
    /// stores a shard's table ready to use.
    pub fn raw_slots(&self) -> &[Entry] {
        &self.slots
    }

    /// A table from slots laid out by [`UserTable::raw_slots`] (the same
    /// count, so every user is at its place). `None` if a slot names items
    /// beyond `items`, the count of users is not `len`, or no slot is empty
    /// (an empty slot ends every probe).
    pub fn from_raw_slots(slots: Vec<Entry>, len: usize, items: usize) -> Option<UserTable> {
        let mut used = 0;
        for e in &slots {
            if e.start != EMPTY {
                used += 1;
                if e.start.checked_add(e.len as u64)? > items as u64 || e.served > e.len {
                    return None;
                }
            }
        }
        (used == len && used < slots.len()).then_some(UserTable { slots, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `user`; `false` (and no change) if it is already there.
    pub fn insert(&mut self, user: u32, entry: Entry) -> bool {
        debug_assert_ne!(entry.start, EMPTY, "no feed starts at u64::MAX");
        if slots_for(self.len + 1) > self.slots.len() {
            self.grow();
        }
        match self.find(user) {
            Ok(_) => false,
            Err(empty) => {
                self.slots[empty] = Entry { user, ..entry };
                self.len += 1;
                true
            }
        }
    }

    pub fn get(&self, user: u32) -> Option<&Entry> {
        self.find(user).ok().map(|i| &self.slots[i])
    }

    pub fn get_mut(&mut self, user: u32) -> Option<&mut Entry> {
        match self.find(user) {
            Ok(i) => Some(&mut self.slots[i]),
            Err(_) => None,
        }
    }

    /// Slots to walk with [`UserTable::at`] (a bound, not the user count).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The user in slot `i`, if any: for walking every user in chunks.
    pub fn at(&self, i: usize) -> Option<(u32, &Entry)> {
        let slot = self.slots.get(i)?;
        (slot.start != EMPTY).then_some((slot.user, slot))
    }

    /// Starts loading the slot where `user`'s probe begins into the cache,
    /// for a caller that knows its next user well ahead (the loaders insert
    /// users one after another; each insert is otherwise a cache miss).
    pub fn prefetch(&self, user: u32) {
        #[cfg(target_arch = "x86_64")]
        if !self.slots.is_empty() {
            let slot = &self.slots[home(user, self.slots.len())];
            // SAFETY: a prefetch is only a hint; the address is a valid slot.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>((slot as *const Entry).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = user;
    }

    /// `Ok(slot)` of `user`, or `Err(slot)` of the empty slot that ends its
    /// probe (where it would go).
    fn find(&self, user: u32) -> Result<usize, usize> {
        let n = self.slots.len();
        if n == 0 {
            return Err(0);
        }
        let mut i = home(user, n);
        loop {
            let slot = &self.slots[i];
            if slot.start == EMPTY {
                return Err(i);
            }
            if slot.user == user {
                return Ok(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![Entry::default(); slots_for((self.len + 1).max(8) * 2)];
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.start != EMPTY) {
            self.insert(slot.user, slot);
        }
    }
}

/// Slots for `users` users at most `MAX_LOAD` full, plus the empty slot.
fn slots_for(users: usize) -> usize {
    users * MAX_LOAD.1 / MAX_LOAD.0 + 1
}

/// The slot where `user`'s probe starts: the hash mapped onto `0..n` by its
/// high bits (no power-of-two size needed).
fn home(user: u32, n: usize) -> usize {
    ((mix64(user as u64 ^ SEED) as u128 * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64) -> Entry {
        Entry::new(start, 3, 0)
    }

    #[test]
    fn finds_what_was_inserted_and_nothing_else() {
        let mut t = UserTable::with_capacity(1000);
        for user in (0..1000u32).map(|u| u * 7919) {
            assert!(t.insert(user, entry(user as u64)));
        }
        assert_eq!(t.len(), 1000);
        for user in (0..1000u32).map(|u| u * 7919) {
            assert_eq!(t.get(user).unwrap().start, user as u64);
        }
        assert!(t.get(1).is_none());
        assert!(!t.insert(7919, entry(0)), "a second insert is refused");
        assert_eq!(t.get(7919).unwrap().start, 7919);
    }

    #[test]
    fn extreme_ids_and_updates_in_place() {
        let mut t = UserTable::default();
        assert!(t.get(0).is_none());
        assert!(t.insert(0, entry(1)));
        assert!(t.insert(u32::MAX, entry(2)));
        t.get_mut(u32::MAX).unwrap().served = 3;
        assert_eq!(t.get(u32::MAX).unwrap().served, 3);
        assert_eq!(t.get(0).unwrap().start, 1);
        assert!(t.get(1).is_none());
    }

    #[test]
    fn grows_past_its_capacity_and_keeps_everyone() {
        let mut t = UserTable::with_capacity(2);
        for user in 1..=10_000u32 {
            assert!(t.insert(user, entry(user as u64)));
            assert!(t.slots.len() > t.len(), "an empty slot always remains");
            assert!(t.len() * MAX_LOAD.1 <= t.slots.len() * MAX_LOAD.0, "load");
        }
        for user in 1..=10_000u32 {
            assert_eq!(t.get(user).unwrap().start, user as u64);
        }
        let mut walked: Vec<u32> = (0..t.slots())
            .filter_map(|i| t.at(i))
            .map(|(u, _)| u)
            .collect();
        walked.sort_unstable();
        assert_eq!(
            walked,
            (1..=10_000).collect::<Vec<_>>(),
            "a walk finds every user once"
        );
    }
}
