//! Loading feeds into shards' stores: the TSV feed file, the fallback
//! file, the synthetic default (generated in `synthetic.rs`), and the item
//! counts that pick the default pool. Parquet feeds are read in
//! `load/parquet.rs`, snapshots in `snapshot.rs`, into the same builders.
//!
//! Loading is per shard: every loader takes an `owns` predicate and keeps
//! only the users it accepts, so shards load in parallel and no shard ever
//! holds another's users. Which shard owns a user is the caller's
//! `shard_of` (ownership is decided in `shard.rs`).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use ahash::AHashMap;

use crate::decimal::{self, DecimalError};
use crate::feed::{DuplicateUser, OutOfMemory, Pool, Store, StoreBuilder};
use crate::shard::{Ownership, ShardId};
use crate::synthetic::{self, Synthetic};

mod parquet;
pub use self::parquet::Columns;

/// Where the feeds come from.
#[derive(Debug, Clone)]
pub enum Source {
    Synthetic(Synthetic),
    File(PathBuf),
}

/// The feeds a server serves, and its fallback pool.
#[derive(Debug, Clone)]
pub struct Feeds {
    pub source: Source,
    /// One item id per line; `None`: the most frequent items of the feeds.
    pub fallback: Option<PathBuf>,
    pub fallback_size: usize,
    /// Parquet column names (`--user-column`, `--items-column`).
    pub columns: Columns,
}

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

    pub(crate) fn message(message: impl Into<String>) -> LoadError {
        LoadError {
            path: None,
            line: None,
            message: message.into(),
        }
    }

    pub(crate) fn whole(path: &Path, message: impl Into<String>) -> LoadError {
        LoadError {
            path: Some(path.to_owned()),
            line: None,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, e: &io::Error) -> LoadError {
        LoadError {
            path: Some(path.to_owned()),
            line: None,
            message: format!("cannot read: {e}"),
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
// What a file holds

/// What a `--feed` file holds, told by its first bytes (never by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `user<TAB>item,item,...` lines.
    Tsv,
    /// Apache Parquet (`PAR1`).
    Parquet,
    /// shardfeed's own snapshot (`shardfeed pack`).
    Snapshot,
}

impl Format {
    /// The format's name, as the start line and errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Tsv => "TSV",
            Format::Parquet => "Parquet",
            Format::Snapshot => "snapshot",
        }
    }
}

/// Magic bytes of formats that are refused with a hint: compressed files
/// (a gzip file is not a TSV whose first line has no tab).
const COMPRESSED: [(&[u8], &str, &str); 4] = [
    (b"\x1f\x8b", "gzip", "gunzip -k"),
    (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d"),
    (b"BZh", "bzip2", "bunzip2 -k"),
    (b"\xfd7zXZ\x00", "xz", "unxz -k"),
];

/// Opens `path` and tells its format from its first bytes. The loaders
/// read a file more than once (to size the store exactly, then to fill
/// it, on every shard), so it must be a regular file: a pipe
/// (`<(...)`, `/dev/stdin`) would be empty the second time.
pub fn detect(path: &Path) -> Result<Format, LoadError> {
    // Looked at before it is opened: opening a named pipe that nobody
    // writes to blocks until someone does (a start, or a reload, that
    // never ends).
    let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, &e))?;
    if !meta.is_file() {
        let kind = if meta.file_type().is_dir() {
            "a directory"
        } else {
            "not a regular file (a pipe, socket or device)"
        };
        return Err(LoadError::whole(
            path,
            format!(
                "is {kind}: feeds are read more than once (sized, then loaded, by every \
                 shard; Parquet from its end first), so give a regular file (write the \
                 pipe's output to a file first)"
            ),
        ));
    }
    let file = File::open(path).map_err(|e| LoadError::io(path, &e))?;
    // Enough to tell binary data from text: random bytes hold a control
    // byte within a few dozen, where the first 8 often held none.
    let mut head = [0u8; 4096];
    let mut got = 0;
    let mut reader = &file;
    while got < head.len() {
        match io::Read::read(&mut reader, &mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LoadError::io(path, &e)),
        }
    }
    let head = &head[..got];
    if head.starts_with(b"PAR1") {
        return Ok(Format::Parquet);
    }
    if head.starts_with(crate::snapshot::MAGIC) {
        return Ok(Format::Snapshot);
    }
    for (magic, name, undo) in COMPRESSED {
        if head.starts_with(magic) {
            return Err(LoadError::whole(
                path,
                format!(
                    "is {name}-compressed: decompress it first (`{undo} FILE`); feeds are \
                     TSV, Parquet or a shardfeed snapshot"
                ),
            ));
        }
    }
    // Text (TSV) holds no control byte but tab, line feed and carriage
    // return, in ASCII as in UTF-8.
    let control = |b: &u8| matches!(b, 0..=8 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f);
    if head.iter().any(control) {
        return Err(LoadError::whole(
            path,
            "holds binary data that is none of the feed formats (TSV, Parquet, shardfeed \
             snapshot)",
        ));
    }
    Ok(Format::Tsv)
}

// ---------------------------------------------------------------------------
// Feed files

/// Loads the users of a feed file that `owns` accepts.
///
/// The file is read twice: once to count the owned users and items, so that
/// the store is allocated exactly once at its final size (no doubling, no
/// transient second copy), and once to fill it. Every line is validated, so
/// every shard sees every error; the caller reports the earliest.
/// Also returns the file's version: a checksum of its bytes (CRC32C and
/// length), the same for the same content whatever its name or date.
pub fn load_feed_file(
    path: &Path,
    owns: impl Fn(u32) -> bool,
) -> Result<(StoreBuilder, u64), LoadError> {
    let (mut users, mut items) = (0usize, 0usize);
    let version = for_each_line(path, true, |no, line| {
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
    let mut store = StoreBuilder::try_with_capacity(users, items)
        .map_err(|e| LoadError::whole(path, out_of_memory(e, users, items)))?;
    let mut feed = Vec::new();
    for_each_line(path, false, |no, line| {
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
    Ok((store, version))
}

/// Reads a fallback pool file: one item id per line, `#` comments and blank
/// lines ignored. Order is preference order.
pub fn load_fallback_file(path: &Path) -> Result<Vec<u32>, LoadError> {
    // As for feeds (see `detect`): a pipe without a writer would block,
    // and a reload reads the file again.
    let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, &e))?;
    if !meta.is_file() {
        return Err(LoadError::whole(
            path,
            "is not a regular file (a pipe, socket, device or directory): the fallback pool \
             is read again at every reload, so give a regular file",
        ));
    }
    let mut items = Vec::new();
    for_each_line(path, false, |no, line| {
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
/// `#` comment, without its line ending. With `checksum`, returns the file's
/// checksum (CRC32C of all its bytes in the high half, its length in the low
/// half), else 0: one pass of a load computes it, not every pass.
fn for_each_line(
    path: &Path,
    checksum: bool,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), LoadError>,
) -> Result<u64, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::io(path, &e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut no = 0;
    let (mut crc, mut len) = (0u32, 0u64);
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| LoadError::io(path, &e))?
            == 0
        {
            return Ok(((crc as u64) << 32) | (len & 0xffff_ffff));
        }
        if checksum {
            crc = crc32c::crc32c_append(crc, &line);
            len += line.len() as u64;
        }
        no += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        // Editors on Windows start UTF-8 files with a byte-order mark.
        let text = match no {
            1 => text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text),
            _ => text,
        };
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
    decimal::parse_u32(s).map_err(|e| match e {
        DecimalError::Empty => "empty value".to_string(),
        // Escaped: an invisible or non-ASCII byte shows as `\xNN`.
        DecimalError::NotDecimal => format!("`{}` is not a decimal number", s.escape_ascii()),
        DecimalError::TooLarge => format!("`{}` is larger than 4294967295", s.escape_ascii()),
    })
}

/// The message for a store that cannot be allocated.
pub(crate) fn out_of_memory(e: OutOfMemory, users: usize, items: usize) -> String {
    format!(
        "cannot allocate {:.1} GiB for {users} users and {items} items on one shard: \
         the host has not the memory for these feeds",
        e.0 as f64 / (1u64 << 30) as f64
    )
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

// ---------------------------------------------------------------------------
// All shards at once

/// Loads every shard's users in parallel, one thread per shard pinned to the
/// shard's CPU (so that the memory is first touched where it will be used),
/// then picks the fallback pool and builds the stores. Prints the one line
/// that says what was loaded: version, users, items, pool, time.
pub fn load_stores(
    feeds: &Feeds,
    cpus: &[usize],
    pin: bool,
    ownership: &Ownership,
) -> Result<Vec<Store>, String> {
    let started = std::time::Instant::now();
    let count_for_pool = feeds.fallback.is_none();
    let (format, loaded) = load_builders(
        &feeds.source,
        &feeds.columns,
        cpus,
        pin,
        count_for_pool,
        ownership,
    )?;
    let shards = cpus.len();
    let mut builders = Vec::with_capacity(shards);
    let mut merged = ahash::AHashMap::new();
    for (builder, version, counts) in loaded {
        for (item, n) in counts.into_iter().flatten() {
            *merged.entry(item).or_insert(0) += n;
        }
        builders.push((builder, version));
    }
    finish(feeds, format, builders, &merged, started)
}

/// Every shard's users loaded in parallel (see [`load_stores`]), with the
/// version and, if `count_for_pool`, each shard's item counts; and the
/// file's format (`None`: synthetic). Shard `i` keeps the users that
/// `ownership` gives it (none of another cluster instance's).
#[allow(clippy::type_complexity)]
pub fn load_builders(
    source: &Source,
    columns: &Columns,
    cpus: &[usize],
    pin: bool,
    count_for_pool: bool,
    ownership: &Ownership,
) -> Result<
    (
        Option<Format>,
        Vec<(StoreBuilder, u64, Option<AHashMap<u32, u64>>)>,
    ),
    String,
> {
    let shards = cpus.len();
    let format = match source {
        Source::Synthetic(spec) => {
            let users = spec.users as u64;
            let bytes = users * spec.feed_len as u64 * 4 + users * 24 * 10 / 7;
            crate::host::check_memory(
                bytes,
                &format!("{} synthetic users x {} items", spec.users, spec.feed_len),
                "lower --users or --feed-len",
            )?;
            None
        }
        Source::File(path) => Some(detect(path).map_err(|e| format!("cannot load feeds: {e}"))?),
    };
    if let (Some(format), Source::File(path)) = (format, source) {
        if format != Format::Parquet && columns.given() {
            return Err(format!(
                "--user-column and --items-column apply to Parquet feeds only: {} is a {} file",
                path.display(),
                format.name()
            ));
        }
        if format == Format::Parquet {
            let loaded = self::parquet::load(path, columns, cpus, pin, count_for_pool, &|user| {
                ownership.shard_of(user).unwrap_or(ShardId(usize::MAX))
            })
            .map_err(|e| format!("cannot load feeds: {e}"))?;
            return Ok((Some(format), loaded));
        }
    }
    // Opened once: the loaders share its mapping and checksum verdicts.
    let snapshot = match (source, format) {
        (Source::File(path), Some(Format::Snapshot)) => Some(
            crate::snapshot::Snapshot::open(path).map_err(|e| format!("cannot load feeds: {e}"))?,
        ),
        _ => None,
    };
    let placed = ownership.placed_by_owner_of(shards);
    let loaded: Vec<Result<(StoreBuilder, u64, _), LoadError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..shards)
            .map(|i| {
                let cpu = cpus[i];
                let snapshot = snapshot.as_ref();
                scope.spawn(move || {
                    if pin {
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    }
                    let owns = |user| ownership.shard_of(user) == Some(ShardId(i));
                    let (builder, version) = match (source, format) {
                        (Source::Synthetic(spec), _) => (
                            synthetic::try_synthetic_store(spec, owns)
                                .map_err(LoadError::message)?,
                            spec.version(),
                        ),
                        (Source::File(_), Some(Format::Snapshot)) => {
                            let snapshot = snapshot.expect("opened above");
                            let builder = snapshot.load_shard(ShardId(i), shards, placed, owns)?;
                            (builder, snapshot.version())
                        }
                        (Source::File(path), _) => load_feed_file(path, owns)?,
                    };
                    let counts = count_for_pool
                        .then(|| count_items(builder.items(), POOL_SAMPLE_ITEMS / shards));
                    Ok((builder, version, counts))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("loader thread"))
            .collect()
    });

    let mut builders = Vec::with_capacity(shards);
    let mut first_error: Option<LoadError> = None;
    for result in loaded {
        match result {
            Ok(loaded) => builders.push(loaded),
            Err(e) => {
                if first_error.as_ref().is_none_or(|f| e.line < f.line) {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(format!("cannot load feeds: {e}"));
    }
    Ok((format, builders))
}

/// Checks that the loaded feeds serve something, picks the pool, prints
/// the start line and builds the stores.
fn finish(
    feeds: &Feeds,
    format: Option<Format>,
    builders: Vec<(StoreBuilder, u64)>,
    merged: &AHashMap<u32, u64>,
    started: std::time::Instant,
) -> Result<Vec<Store>, String> {
    let users: usize = builders.iter().map(|(b, _)| b.users()).sum();
    let items: usize = builders.iter().map(|(b, _)| b.items().len()).sum();
    let what = match &feeds.source {
        Source::Synthetic(_) => "the synthetic feeds (--users)".to_string(),
        Source::File(path) => path.display().to_string(),
    };
    if users == 0 {
        let hint = match format {
            Some(Format::Tsv) => " (only comments or blank lines?)",
            Some(Format::Parquet) => " (no rows)",
            _ => "",
        };
        return Err(format!(
            "cannot load feeds: {what} holds no users{hint}: a server would serve nothing \
             but the fallback pool to everyone"
        ));
    }

    let pool = match &feeds.fallback {
        Some(path) => Pool::new(load_fallback_file(path).map_err(|e| e.to_string())?),
        None => Pool::new(top_items(merged, feeds.fallback_size)),
    };
    if items == 0 && pool.items().is_empty() {
        return Err(format!(
            "cannot load feeds: {what}: none of its {users} users has an item, and the \
             fallback pool is empty (--fallback-size 0): every page would be empty"
        ));
    }
    let version = builders.first().map_or(0, |(_, v)| *v);
    let format = format.map_or("synthetic", Format::name);
    let named = match &feeds.source {
        Source::Synthetic(_) => "synthetic".to_string(),
        Source::File(path) => format!("{} ({format})", path.display()),
    };
    crate::log_line!(
        "feed {named}: version {}, {users} users, {items} items, pool {} items, \
         loaded in {:.2} s",
        version_id(version),
        pool.items().len(),
        started.elapsed().as_secs_f64()
    );
    let stores = builders.into_iter().map(|(builder, version)| {
        let mut store = builder.build(pool.clone());
        store.set_version(version);
        store
    });
    Ok(stores.collect())
}

/// A feed version as operators see it: 16 hex digits.
pub fn version_id(version: u64) -> String {
    format!("{version:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{synthetic_store, write_synthetic, Synthetic};

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
    fn generated_file_loads_back_to_the_same_feeds() {
        let mut text = Vec::new();
        write_synthetic(&SPEC, &mut text).unwrap();
        let path = temp_file("gen.tsv", std::str::from_utf8(&text).unwrap());
        let (loaded, version) = load_feed_file(&path, |u| u % 3 == 1).unwrap();
        let loaded = loaded.build(Default::default());
        let (_, again) = load_feed_file(&path, |_| true).unwrap();
        assert_eq!(version, again, "a file's version depends only on its bytes");
        let changed = temp_file(
            "gen2.tsv",
            &format!("{}100000\t1\n", std::str::from_utf8(&text).unwrap()),
        );
        assert_ne!(load_feed_file(&changed, |_| true).unwrap().1, version);
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
            .0
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
