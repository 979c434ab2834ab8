//! The synthetic data set, the server's embedded default: `--users`,
//! `--feed-len`, `--items`, `--seed`; the same seed gives the same feeds
//! whatever the shard count.

use std::io::{self, Write};

use crate::feed::StoreBuilder;
use crate::hash::mix64;

/// Parameters of the synthetic data set. Users are `1..=users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    pub users: u32,
    pub feed_len: u32,
    pub items: u32,
    pub seed: u64,
}

impl Synthetic {
    pub fn check(&self) -> Result<(), String> {
        if self.users == 0 {
            return Err("--users must be at least 1: a server of no users serves nothing".into());
        }
        if self.feed_len == 0 {
            return Err(
                "--feed-len must be at least 1: users without items get only the fallback \
                 pool, which is made of their items"
                    .into(),
            );
        }
        if self.items < self.feed_len {
            return Err(format!(
                "--items ({}) must be at least --feed-len ({}): a feed holds distinct items",
                self.items, self.feed_len
            ));
        }
        if self.items == 0 {
            return Err("--items must be at least 1".into());
        }
        Ok(())
    }

    /// The data set's version: the same parameters, the same feeds.
    pub fn version(&self) -> u64 {
        [
            self.users as u64,
            self.feed_len as u64,
            self.items as u64,
            self.seed,
        ]
        .iter()
        .fold(0x5f1d_feed_0000_0001, |h, &v| mix64(h ^ v))
    }

    pub fn user_ids(&self) -> std::ops::RangeInclusive<u32> {
        1..=self.users
    }
}

/// Writes one user's synthetic feed into `out` (cleared first). The result
/// depends only on (spec, user): the same seed gives the same feeds whatever
/// the shard count. Items are distinct and skewed towards low ids, so some
/// items are popular the way real recommendations are.
pub fn synthetic_feed(spec: &Synthetic, user: u32, seen: &mut SeenSet, out: &mut Vec<u32>) {
    out.clear();
    seen.reset(spec.feed_len as usize);
    let mut rng = WyRand(mix64(spec.seed ^ mix64(user as u64 ^ 0x5eed_f00d)));
    let items = spec.items as u128;
    for _ in 0..spec.feed_len {
        // x^3 for x uniform in [0, 1): about 1% of draws on the first 1e-6
        // of the ids. Integer arithmetic (21-bit x, 63-bit cube): start-up
        // generates a billion of these for 5M users.
        let x = rng.next() >> 43;
        let cube = x * x * x;
        let mut item = ((cube as u128 * items) >> 63) as u32;
        while !seen.insert(item) {
            item = if item as u128 + 1 == items {
                0
            } else {
                item + 1
            };
        }
        out.push(item);
    }
}

/// Builds one shard's share of the synthetic data set.
pub fn synthetic_store(spec: &Synthetic, owns: impl Fn(u32) -> bool) -> StoreBuilder {
    try_synthetic_store(spec, owns).expect("memory for the synthetic feeds")
}

/// [`synthetic_store`], or a message when its memory cannot be had.
pub fn try_synthetic_store(
    spec: &Synthetic,
    owns: impl Fn(u32) -> bool,
) -> Result<StoreBuilder, String> {
    let owned = spec.user_ids().filter(|&u| owns(u)).count();
    let items = owned * spec.feed_len as usize;
    let mut store = StoreBuilder::try_with_capacity(owned, items).map_err(|e| {
        crate::load::out_of_memory(e, owned, items) + ": lower --users or --feed-len"
    })?;
    let (mut seen, mut feed) = (
        SeenSet::default(),
        Vec::with_capacity(spec.feed_len as usize),
    );
    let mut users = spec.user_ids().filter(|&u| owns(u)).peekable();
    while let Some(user) = users.next() {
        if let Some(&next) = users.peek() {
            store.prefetch(next);
        }
        synthetic_feed(spec, user, &mut seen, &mut feed);
        store
            .push_user(user, feed.iter().copied())
            .expect("synthetic user ids are distinct");
    }
    Ok(store)
}

/// Writes the whole synthetic data set as a feed file (`shardfeed gen`).
pub fn write_synthetic(spec: &Synthetic, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "# shardfeed synthetic feeds: users={} feed-len={} items={} seed={}",
        spec.users, spec.feed_len, spec.items, spec.seed
    )?;
    let (mut seen, mut feed) = (SeenSet::default(), Vec::new());
    let mut line = Vec::with_capacity(16 + spec.feed_len as usize * 9);
    let mut digits = itoa::Buffer::new();
    for user in spec.user_ids() {
        synthetic_feed(spec, user, &mut seen, &mut feed);
        line.clear();
        line.extend_from_slice(digits.format(user).as_bytes());
        line.push(b'\t');
        for (i, item) in feed.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(digits.format(*item).as_bytes());
        }
        line.push(b'\n');
        out.write_all(&line)?;
    }
    out.flush()
}

/// wyrand: one multiply per draw, good enough statistics for test data.
struct WyRand(u64);

impl WyRand {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128) * ((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }
}

/// A small reusable set of item ids for one feed: open addressing, cleared
/// in O(1) by bumping a generation stamp.
#[derive(Debug, Default)]
pub struct SeenSet {
    slots: Vec<(u32, u32)>,
    stamp: u32,
}

impl SeenSet {
    fn reset(&mut self, capacity: usize) {
        let want = (capacity * 2).next_power_of_two().max(16);
        if self.slots.len() < want || self.stamp == u32::MAX {
            self.slots = vec![(0, 0); want];
            self.stamp = 0;
        }
        self.stamp += 1;
    }

    /// False when `item` was already inserted since the last reset.
    fn insert(&mut self, item: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = (item.wrapping_mul(0x9e37_79b9) >> 7) as usize & mask;
        loop {
            let (key, stamp) = self.slots[i];
            if stamp != self.stamp {
                self.slots[i] = (item, self.stamp);
                return true;
            }
            if key == item {
                return false;
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SPEC: Synthetic = Synthetic {
        users: 300,
        feed_len: 50,
        items: 1000,
        seed: 42,
    };

    #[test]
    fn synthetic_feeds_are_distinct_skewed_and_deterministic() {
        let (mut seen, mut a, mut b) = (SeenSet::default(), Vec::new(), Vec::new());
        synthetic_feed(&SPEC, 7, &mut seen, &mut a);
        synthetic_feed(&SPEC, 8, &mut seen, &mut b);
        assert_ne!(a, b);
        synthetic_feed(&SPEC, 7, &mut seen, &mut b);
        assert_eq!(a, b, "same (seed, user), same feed");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 50);
        assert!(a.iter().all(|&i| i < 1000));
        let low = a.iter().filter(|&&i| i < 100).count();
        assert!(low > 15, "skewed to low ids: {low} of 50 below 100");
        // A feed as long as the item range still terminates, all distinct.
        let tight = Synthetic { items: 50, ..SPEC };
        synthetic_feed(&tight, 1, &mut seen, &mut a);
        a.sort_unstable();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn shard_split_is_the_same_data() {
        let whole = synthetic_store(&SPEC, |_| true).build(Default::default());
        let even = synthetic_store(&SPEC, |u| u % 2 == 0).build(Default::default());
        let odd = synthetic_store(&SPEC, |u| u % 2 == 1).build(Default::default());
        assert_eq!(even.users() + odd.users(), 300);
        for u in SPEC.user_ids() {
            let part = if u % 2 == 0 { &even } else { &odd };
            assert_eq!(whole.remaining(u), part.remaining(u));
        }
    }
}
