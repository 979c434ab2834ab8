//! Progress across feed versions at a reload: a new store takes over the
//! old one's progress by the prefix rule (SPEC "Feed versions"), user by
//! user, while the shard keeps serving.
//!
//! A user keeps progress P if the first P items of their new list equal the
//! first P they were served (compared item by item: both versions are in
//! memory, so no hash is needed, and a store without a journal, which keeps
//! no prefix hashes, follows the same rule); otherwise they start the new
//! list at its beginning. A user missing from the new version is unknown
//! from then on.
//!
//! Each user is carried once: carrying clears the old store's progress, so
//! the shard can carry a user on demand (the request for them arrived
//! before the chunked walk reached them) and the walk then skips them.

use super::{Restored, Store};

/// What one shard's carrying made of its users' progress, for the reload's
/// log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub kept: u64,
    pub reset: u64,
    /// Users with progress who are not in the new version.
    pub gone: u64,
}

impl Carried {
    pub fn count(&mut self, r: Restored) {
        match r {
            Restored::Kept => self.kept += 1,
            Restored::Reset => self.reset += 1,
            Restored::Unknown => self.gone += 1,
        }
    }

    pub fn add(&mut self, other: Carried) {
        self.kept += other.kept;
        self.reset += other.reset;
        self.gone += other.gone;
    }
}

impl Store {
    /// Prepares this freshly loaded store to replace `old`: keeps a journal's
    /// prefix hashes if `old` kept them, and `old`'s counters (they are
    /// the shard's `_total` series, which must not fall back to zero).
    pub fn succeed(&mut self, old: &Store) {
        if old.journaled {
            self.journal_progress();
        }
        self.counters = old.counters;
    }

    /// Takes `user`'s progress over from `old` (the version this store
    /// replaces) by the prefix rule, if `old` still holds some; `None` if
    /// it holds none (never served, or carried already).
    pub fn carry(&mut self, old: &mut Store, user: u32) -> Option<Restored> {
        let e = old.users.get_mut(user)?;
        if e.served == 0 {
            return None;
        }
        let start = e.start as usize;
        let served = &old.items[start..start + e.served as usize];
        let restored = match self.users.get_mut(user) {
            None => Restored::Unknown,
            Some(n) => {
                let from = n.start as usize;
                if served.len() <= n.len as usize
                    && self.items[from..from + served.len()] == *served
                {
                    n.served = e.served;
                    n.prefix = e.prefix;
                    Restored::Kept
                } else {
                    Restored::Reset
                }
            }
        };
        e.served = 0;
        Some(restored)
    }

    /// Carries the users of `old`'s table slots `from..from + max` (see
    /// [`Store::carry`]); appends those who start again, or are gone, to
    /// `reset` (a journal must record it: its last word on them is the old
    /// progress);
    /// returns where to go on, `None` when every user has been seen.
    pub fn carry_from(
        &mut self,
        old: &mut Store,
        from: usize,
        max: usize,
        tally: &mut Carried,
        reset: &mut Vec<u32>,
    ) -> Option<usize> {
        let end = (from + max).min(old.users.slots());
        for i in from..end {
            let user = match old.users.at(i) {
                Some((user, e)) if e.served > 0 => user,
                _ => continue,
            };
            if let Some(r) = self.carry(old, user) {
                tally.count(r);
                if r != Restored::Kept {
                    reset.push(user);
                }
            }
        }
        (end < old.users.slots()).then_some(end)
    }

    /// A user's progress as the journal sees it (for tests of carrying).
    #[cfg(test)]
    fn served(&self, user: u32) -> Option<u32> {
        self.progress(user).map(|p| p.served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Pool, StoreBuilder};

    fn store(users: &[(u32, &[u32])]) -> Store {
        let mut b = StoreBuilder::with_capacity(users.len(), 0);
        for (user, items) in users {
            b.push_user(*user, items.iter().copied()).unwrap();
        }
        b.build(Pool::new([900, 901]))
    }

    fn serve(s: &mut Store, user: u32, n: usize) -> Vec<u32> {
        let mut page = Vec::new();
        s.next_page(user, n, &mut page).unwrap();
        page
    }

    #[test]
    fn the_prefix_rule_keeps_appended_lists_and_resets_changed_ones() {
        let mut old = store(&[(1, &[1, 2, 3]), (2, &[4, 5, 6]), (3, &[7, 8]), (4, &[9])]);
        serve(&mut old, 1, 2); // served [1, 2]
        serve(&mut old, 2, 2); // served [4, 5]
        serve(&mut old, 3, 1); // served [7]
        let mut new = store(&[
            (1, &[1, 2, 3, 10, 11]), // appended: kept
            (2, &[4, 9, 5, 6]),      // changed under the served items: reset
            (4, &[9]),               // never served: nothing to carry
            (5, &[12]),              // new user
        ]); // user 3 removed
        new.succeed(&old);
        let mut tally = Carried::default();
        let mut reset = Vec::new();
        let mut from = Some(0);
        while let Some(at) = from {
            from = new.carry_from(&mut old, at, 2, &mut tally, &mut reset);
        }
        assert_eq!(
            tally,
            Carried {
                kept: 1,
                reset: 1,
                gone: 1
            }
        );
        reset.sort_unstable();
        assert_eq!(reset, [2, 3], "the user who starts again and the one gone");
        assert_eq!(serve(&mut new, 1, 2), [3, 10]);
        assert_eq!(serve(&mut new, 2, 2), [4, 9]);
        assert_eq!(new.served(3), None);
        assert_eq!(serve(&mut new, 4, 1), [9]);
    }

    #[test]
    fn a_user_is_carried_once_on_demand_then_skipped_by_the_walk() {
        let mut old = store(&[(1, &[1, 2, 3])]);
        serve(&mut old, 1, 1);
        let mut new = store(&[(1, &[1, 2, 3])]);
        assert_eq!(new.carry(&mut old, 1), Some(Restored::Kept));
        // Served from the new store meanwhile; the walk must not undo it.
        assert_eq!(serve(&mut new, 1, 1), [2]);
        assert_eq!(new.carry(&mut old, 1), None);
        let mut tally = Carried::default();
        assert_eq!(
            new.carry_from(&mut old, 0, usize::MAX, &mut tally, &mut Vec::new()),
            None
        );
        assert_eq!(tally, Carried::default());
        assert_eq!(new.served(1), Some(2));
    }

    #[test]
    fn a_longer_served_prefix_than_the_new_list_resets() {
        let mut old = store(&[(1, &[1, 2, 3])]);
        serve(&mut old, 1, 3);
        let mut new = store(&[(1, &[1, 2])]);
        assert_eq!(new.carry(&mut old, 1), Some(Restored::Reset));
        assert_eq!(serve(&mut new, 1, 2), [1, 2]);
    }

    #[test]
    fn journaled_stores_carry_the_prefix_hash() {
        let mut old = store(&[(1, &[1, 2, 3])]);
        old.journal_progress();
        serve(&mut old, 1, 2);
        let hash = old.progress(1).unwrap().prefix;
        let mut new = store(&[(1, &[1, 2, 3, 4])]);
        new.succeed(&old);
        new.carry(&mut old, 1);
        assert_eq!(new.progress(1).unwrap().prefix, hash);
        serve(&mut new, 1, 1);
        assert!(new.take_advanced().is_some(), "a journaled store reports");
    }

    #[test]
    fn the_counters_go_on_across_versions() {
        let mut old = store(&[(1, &[1, 2, 3])]);
        serve(&mut old, 1, 2);
        let mut new = store(&[(1, &[1, 2, 3])]);
        new.succeed(&old);
        new.carry(&mut old, 1);
        serve(&mut new, 1, 1);
        assert_eq!(new.counters().personalized_items, 3);
        assert_eq!(new.counters().exhausted_users, 1);
    }
}
