//! Where feeds come from: the synthetic default, the TSV feed file of the
//! SPEC, the fallback file, and the item counts that pick the default pool.
//!
//! Loading is per shard: every function that fills a store takes an `owns`
//! predicate and keeps only the users it accepts, so shards load in parallel
//! and no shard ever holds another's users. Nothing here knows how ownership
//! is decided.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use ahash::AHashMap;

use crate::feed::{DuplicateUser, StoreBuilder};
use crate::hash::mix64;

/// Items counted (over all shards, each counting its first users) to find
/// the most frequent ones. Counting every item of a large store costs seconds
/// of start-up in hash-map work alone; a popular item is popular in any
/// million entries, so the top 50 of the sample are the top 50 of the whole.
pub const POOL_SAMPLE_ITEMS: usize = 1_000_000;

/// A load failure, with the file and line it concerns when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub path: Option<PathBuf>,
    pub line: Option<usize>,
    pub message: String,
}

impl LoadError {
    fn at(path: &Path, line: usize, message: impl Into<String>) -> LoadError {
        LoadError {
            path: Some(path.to_owned()),
            line: Some(line),
            message: message.into(),
        }
    }

    fn io(path: &Path, e: &io::Error) -> LoadError {
        LoadError {
            path: Some(path.to_owned()),
            line: None,
            message: format!("cannot read: {e}"),
        }
    }

    pub fn plain(message: impl Into<String>) -> LoadError {
        LoadError {
            path: None,
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: {}", p.display(), self.message),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.message),
            _ => f.write_str(&self.message),
        }
    }
}

// ---------------------------------------------------------------------------
// Synthetic feeds

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
    let owned = spec.user_ids().filter(|&u| owns(u)).count();
    let mut store = StoreBuilder::with_capacity(owned, owned * spec.feed_len as usize);
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
    store
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

// ---------------------------------------------------------------------------
// Feed files

/// Loads the users of a feed file that `owns` accepts.
///
/// The file is read twice: once to count the owned users and items, so that
/// the store is allocated exactly once at its final size (no doubling, no
/// transient second copy), and once to fill it. Every line is validated, so
/// every shard sees every error; the caller reports the earliest.
pub fn load_feed_file(path: &Path, owns: impl Fn(u32) -> bool) -> Result<StoreBuilder, LoadError> {
    let (mut users, mut items) = (0usize, 0usize);
    for_each_line(path, |no, line| {
        let (user, list) = split_feed_line(line).map_err(|m| LoadError::at(path, no, m))?;
        if owns(user) {
            users += 1;
            items += if list.is_empty() {
                0
            } else {
                1 + list.iter().filter(|&&b| b == b',').count()
            };
        }
        Ok(())
    })?;
    let mut store = StoreBuilder::with_capacity(users, items);
    let mut feed = Vec::new();
    for_each_line(path, |no, line| {
        let (user, list) = split_feed_line(line).map_err(|m| LoadError::at(path, no, m))?;
        if !owns(user) {
            return Ok(());
        }
        parse_items(list, &mut feed).map_err(|m| LoadError::at(path, no, m))?;
        store
            .push_user(user, feed.iter().copied())
            .map_err(|DuplicateUser(u)| {
                LoadError::at(path, no, format!("user {u} appears a second time"))
            })
    })?;
    Ok(store)
}

/// Reads a fallback pool file: one item id per line, `#` comments and blank
/// lines ignored. Order is preference order.
pub fn load_fallback_file(path: &Path) -> Result<Vec<u32>, LoadError> {
    let mut items = Vec::new();
    for_each_line(path, |no, line| {
        let id = parse_u32(line.trim_ascii()).map_err(|m| LoadError::at(path, no, m))?;
        items.push(id);
        Ok(())
    })?;
    if items.is_empty() {
        return Err(LoadError {
            path: Some(path.to_owned()),
            line: None,
            message: "the fallback file holds no item ids".into(),
        });
    }
    Ok(items)
}

/// Calls `f(line_number, line)` for every line that is neither blank nor a
/// `#` comment, without its line ending.
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let file = File::open(path).map_err(|e| LoadError::io(path, &e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut no = 0;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| LoadError::io(path, &e))?
            == 0
        {
            return Ok(());
        }
        no += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.trim_ascii().is_empty() || text.first() == Some(&b'#') {
            continue;
        }
        f(no, text)?;
    }
}

/// `user<TAB>item,item,...` -> (user, the item list's bytes).
fn split_feed_line(line: &[u8]) -> Result<(u32, &[u8]), String> {
    let Some(tab) = line.iter().position(|&b| b == b'\t') else {
        return Err("expected `user_id<TAB>item,item,...`: no tab on this line".into());
    };
    let user = parse_u32(&line[..tab]).map_err(|m| format!("user id: {m}"))?;
    Ok((user, &line[tab + 1..]))
}

fn parse_items(list: &[u8], out: &mut Vec<u32>) -> Result<(), String> {
    out.clear();
    if list.is_empty() {
        return Ok(());
    }
    for (i, field) in list.split(|&b| b == b',').enumerate() {
        let item = parse_u32(field).map_err(|m| format!("item {}: {m}", i + 1))?;
        out.push(item);
    }
    Ok(())
}

fn parse_u32(s: &[u8]) -> Result<u32, String> {
    if s.is_empty() {
        return Err("empty value".into());
    }
    let mut n: u64 = 0;
    for &d in s {
        if !d.is_ascii_digit() {
            return Err(format!(
                "`{}` is not a decimal number",
                String::from_utf8_lossy(s)
            ));
        }
        n = n * 10 + (d - b'0') as u64;
        if n > u32::MAX as u64 {
            return Err(format!(
                "`{}` is larger than 4294967295",
                String::from_utf8_lossy(s)
            ));
        }
    }
    Ok(n as u32)
}

// ---------------------------------------------------------------------------
// The default pool

/// Counts item occurrences over the first `limit` items.
pub fn count_items(items: &[u32], limit: usize) -> AHashMap<u32, u64> {
    let sample = &items[..items.len().min(limit)];
    let mut counts = AHashMap::with_capacity(sample.len());
    for &item in sample {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// The `k` most frequent items, most frequent first; ties by smaller id, so
/// the pool is the same on every run.
pub fn top_items(counts: &AHashMap<u32, u64>, k: usize) -> Vec<u32> {
    let mut all: Vec<(u64, u32)> = counts.iter().map(|(&item, &n)| (n, item)).collect();
    let k = k.min(all.len());
    let by_rank = |a: &(u64, u32), b: &(u64, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    if k < all.len() && k > 0 {
        all.select_nth_unstable_by(k - 1, by_rank);
    }
    all.truncate(k);
    all.sort_unstable_by(by_rank);
    all.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Synthetic = Synthetic {
        users: 300,
        feed_len: 50,
        items: 1000,
        seed: 42,
    };

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardfeed-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

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

    #[test]
    fn generated_file_loads_back_to_the_same_feeds() {
        let mut text = Vec::new();
        write_synthetic(&SPEC, &mut text).unwrap();
        let path = temp_file("gen.tsv", std::str::from_utf8(&text).unwrap());
        let loaded = load_feed_file(&path, |u| u % 3 == 1).unwrap();
        let loaded = loaded.build(Default::default());
        let direct = synthetic_store(&SPEC, |u| u % 3 == 1).build(Default::default());
        assert_eq!(loaded.users(), 100);
        for u in SPEC.user_ids() {
            assert_eq!(loaded.remaining(u), direct.remaining(u));
        }
    }

    #[test]
    fn feed_file_format() {
        let path = temp_file(
            "ok.tsv",
            "# comment\n\n1\t5,6,7\r\n2\t\n  \n4294967295\t1\n",
        );
        let s = load_feed_file(&path, |_| true)
            .unwrap()
            .build(Default::default());
        assert_eq!(s.remaining(1).unwrap(), &[5, 6, 7]);
        assert_eq!(s.remaining(2).unwrap(), &[] as &[u32]);
        assert_eq!(s.remaining(u32::MAX).unwrap(), &[1]);
        assert_eq!(s.item_count(), 4);
    }

    #[test]
    fn feed_file_errors_name_the_line() {
        let cases = [
            ("1\t1,2\n2 3,4\n", 2, "no tab"),
            ("1\t1,2\nx\t3\n", 2, "user id: `x` is not a decimal number"),
            ("1\t1,,2\n", 1, "item 2: empty value"),
            ("1\t1,2,\n", 1, "item 3: empty value"),
            ("1\t1, 2\n", 1, "item 2: ` 2` is not a decimal number"),
            ("1\t4294967296\n", 1, "larger than 4294967295"),
            ("#\n1\t1\n1\t2\n", 3, "user 1 appears a second time"),
        ];
        for (text, line, want) in cases {
            let path = temp_file("bad.tsv", text);
            let err = load_feed_file(&path, |_| true).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(err.to_string().contains(want), "{text:?}: {err}");
            assert!(err.to_string().contains("bad.tsv:"), "{err}");
        }
        let missing = load_feed_file(Path::new("/nonexistent/feeds.tsv"), |_| true).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[test]
    fn fallback_file() {
        let path = temp_file("pool.txt", "# popular\n5\n\n3\n5\n");
        assert_eq!(load_fallback_file(&path).unwrap(), [5, 3, 5]);
        let empty = temp_file("empty.txt", "# nothing\n");
        assert!(load_fallback_file(&empty)
            .unwrap_err()
            .to_string()
            .contains("no item ids"));
        let bad = temp_file("badpool.txt", "1\n-2\n");
        assert_eq!(load_fallback_file(&bad).unwrap_err().line, Some(2));
    }

    #[test]
    fn top_items_by_count_then_id() {
        let counts = count_items(&[5, 1, 5, 2, 2, 9, 5, 7, 7], usize::MAX);
        assert_eq!(top_items(&counts, 3), [5, 2, 7]);
        assert_eq!(top_items(&counts, 10), [5, 2, 7, 1, 9]);
        assert_eq!(top_items(&counts, 0), Vec::<u32>::new());
        let first_three = count_items(&[5, 1, 5, 2, 2], 3);
        assert_eq!(top_items(&first_three, 5), [5, 1]);
    }
}
