//! Parquet feed files: an integer column of user ids and a list column of
//! integer item ids, read with the `parquet` crate's low-level column
//! readers (no arrow) straight into the shards' [`StoreBuilder`]s.
//!
//! The work is split by row group, the unit a Parquet file can be decoded
//! in independently. Every loader thread (one per shard, pinned like the
//! TSV loaders) takes row groups from a shared counter, in two phases:
//!
//! 1. the user column of each row group (a few milliseconds per million
//!    users): ids range-checked, counted per owner shard, kept;
//! 2. after a barrier, each shard's builder is allocated for its exact
//!    user count (items: the row groups' value counts shared out by the
//!    shard's share of each group's users; a `Vec` that must grow past it
//!    is `mremap`ed by the allocator, not copied), then each thread decodes
//!    the item column of its row groups and sends every shard its users'
//!    lists in chunks over a channel; each thread pushes the chunks it
//!    receives into its own builder between two batches of decoding. A
//!    user of no local shard (another cluster instance's) is checked and
//!    dropped.
//!
//! A file with a single row group is decoded on one thread (the routing
//! and the stores' building still run on every shard); writers that split
//! row groups (Spark: ~128 MiB; pyarrow: `row_group_size`) load faster.
//!
//! Values: each id must lie in 0..=4294967295, whatever the column's
//! physical width (INT32 or INT64) and signedness (an unsigned annotation
//! is honoured, so a `uint32` column holds every id). A null user id or a
//! null item is an error; a null or empty list is a user with no items
//! (as `user<TAB>` in TSV). Errors name the file, the row group, the row
//! (both counted from 0, as pyarrow counts) and the column.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};

use ::parquet::basic::{Compression, ConvertedType, LogicalType, Repetition, Type as Physical};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::DataType;
use ::parquet::file::reader::{ChunkReader, FileReader, Length};
use ::parquet::file::serialized_reader::SerializedFileReader;
use ::parquet::schema::types::Type;
use ahash::AHashMap;
use bytes::Bytes;

use super::{count_items, out_of_memory, LoadError, POOL_SAMPLE_ITEMS};
use crate::feed::{DuplicateUser, StoreBuilder};
use crate::shard::ShardId;

/// The column names of a Parquet feed: `--user-column`, `--items-column`
/// (`None`: the default name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    pub user: Option<String>,
    pub items: Option<String>,
}

impl Columns {
    pub const USER: &'static str = "user_id";
    pub const ITEMS: &'static str = "items";

    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(Self::USER)
    }

    pub fn items(&self) -> &str {
        self.items.as_deref().unwrap_or(Self::ITEMS)
    }

    /// Whether either name was given (they mean nothing for TSV or a
    /// snapshot).
    pub fn given(&self) -> bool {
        self.user.is_some() || self.items.is_some()
    }
}

/// How a column's stored integers read as ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    /// INT32 or INT64 without an unsigned annotation.
    Signed,
    /// INT32 annotated unsigned: the 32 bits are the id.
    Unsigned32,
    /// INT64 annotated unsigned.
    Unsigned64,
}

/// Why a stored integer is no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRange {
    Negative(i64),
    TooLarge(u64),
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutOfRange::Negative(v) => write!(f, "{v} is negative"),
            OutOfRange::TooLarge(v) => write!(f, "{v} is larger than 4294967295"),
        }
    }
}

/// The id that `raw` (the column's value, sign-extended to 64 bits) stands
/// for, if it lies in 0..=4294967295.
#[inline]
pub fn to_id(raw: i64, kind: IntKind) -> Result<u32, OutOfRange> {
    match kind {
        // The low 32 bits of a sign-extended INT32 are its stored bits.
        IntKind::Unsigned32 => Ok(raw as u32),
        IntKind::Unsigned64 => {
            u32::try_from(raw as u64).map_err(|_| OutOfRange::TooLarge(raw as u64))
        }
        IntKind::Signed if raw < 0 => Err(OutOfRange::Negative(raw)),
        IntKind::Signed => u32::try_from(raw).map_err(|_| OutOfRange::TooLarge(raw as u64)),
    }
}

// ---------------------------------------------------------------------------
// Reading the file

/// The file, read with `pread` at explicit offsets: the crate's own
/// `ChunkReader for File` seeks a shared file offset, which concurrent
/// row-group readers would race on.
struct Pread {
    file: Arc<File>,
    len: u64,
}

struct PreadAt {
    file: Arc<File>,
    at: u64,
}

impl Read for PreadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Length for Pread {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Pread {
    type T = io::BufReader<PreadAt>;

    fn get_read(&self, start: u64) -> ::parquet::errors::Result<Self::T> {
        Ok(io::BufReader::with_capacity(
            1 << 16,
            PreadAt {
                file: self.file.clone(),
                at: start,
            },
        ))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ::parquet::errors::Result<Bytes> {
        let mut buf = vec![0u8; length];
        self.file.read_exact_at(&mut buf, start).map_err(|e| {
            ::parquet::errors::ParquetError::EOF(format!(
                "{length} bytes at offset {start}: {e} (file cut short?)"
            ))
        })?;
        Ok(buf.into())
    }
}

/// Where the two columns are and how to read them.
#[derive(Debug, Clone)]
struct Layout {
    user_name: String,
    items_name: String,
    user: usize,
    user_kind: IntKind,
    /// The user column's maximum definition level (1: nullable).
    user_def: i16,
    items: usize,
    items_kind: IntKind,
    /// The definition level of a present item.
    item_def: i16,
    /// The definition level from which an item slot exists (a lower one is
    /// an empty or null list; one from here below `item_def` is a null item).
    slot_def: i16,
}

/// How an integer leaf's values read as ids, or why they cannot.
fn int_kind(t: &Type) -> Result<IntKind, String> {
    let physical = t.get_physical_type();
    let info = t.get_basic_info();
    let width = match physical {
        Physical::INT32 => 32,
        Physical::INT64 => 64,
        other => return Err(format!("{other} values, not integers")),
    };
    let unsigned = match info.logical_type_ref() {
        None => match info.converted_type() {
            ConvertedType::NONE
            | ConvertedType::INT_8
            | ConvertedType::INT_16
            | ConvertedType::INT_32
            | ConvertedType::INT_64 => false,
            ConvertedType::UINT_8
            | ConvertedType::UINT_16
            | ConvertedType::UINT_32
            | ConvertedType::UINT_64 => true,
            other => return Err(format!("{physical} values annotated {other}, not integers")),
        },
        Some(LogicalType::Integer(int)) => !int.is_signed,
        Some(other) => {
            return Err(format!(
                "{physical} values annotated {other:?}, not integers"
            ))
        }
    };
    Ok(match (unsigned, width) {
        (false, _) => IntKind::Signed,
        (true, 32) => IntKind::Unsigned32,
        (true, _) => IntKind::Unsigned64,
    })
}

/// Finds the two columns and checks their types.
fn layout(reader: &SerializedFileReader<Pread>, columns: &Columns) -> Result<Layout, String> {
    let schema = reader.metadata().file_metadata().schema_descr();
    let fields = schema.root_schema().get_fields();
    let names = || {
        fields
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = |name: &str, flag: &str| {
        fields.iter().find(|f| f.name() == name).ok_or_else(|| {
            format!(
                "has no column `{name}`; its columns: {}. Name the column with {flag} NAME",
                names()
            )
        })
    };
    let leaf = |name: &str| {
        let found: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| schema.column(i).path().parts()[0] == name)
            .collect();
        found[0]
    };

    let (user_name, items_name) = (columns.user(), columns.items());
    let user = field(user_name, "--user-column")?;
    let wrong_user = |why: String| {
        format!("column `{user_name}` (the user ids) holds {why}: it must be an integer column")
    };
    if !user.is_primitive() {
        return Err(wrong_user("a group (a list, map or struct)".into()));
    }
    if user.get_basic_info().repetition() == Repetition::REPEATED {
        return Err(wrong_user("repeated values".into()));
    }
    let user_kind = int_kind(user).map_err(wrong_user)?;
    let user_def = i16::from(user.get_basic_info().repetition() == Repetition::OPTIONAL);

    let items = field(items_name, "--items-column")?;
    let wrong_items = |why: &str| {
        format!("column `{items_name}` (the item lists) holds {why}: it must be a list of integers")
    };
    // Walk down to the single leaf: every level may add a definition level
    // (optional, repeated); exactly one level repeats (the list).
    let (mut node, mut def, mut slot_def, mut repeated) = (items, 0i16, None, 0);
    loop {
        match node.get_basic_info().repetition() {
            Repetition::OPTIONAL => def += 1,
            Repetition::REPEATED => {
                def += 1;
                repeated += 1;
                slot_def = Some(def);
            }
            Repetition::REQUIRED => {}
        }
        if node.is_primitive() {
            break;
        }
        match node.get_fields() {
            [only] => node = only,
            _ => return Err(wrong_items("a group of several fields (a map or struct?)")),
        }
    }
    let Some(slot_def) = slot_def else {
        return Err(wrong_items("one value per row, not a list"));
    };
    if repeated > 1 {
        return Err(wrong_items("lists of lists"));
    }
    let items_kind = int_kind(node).map_err(|why| wrong_items(&format!("lists of {why}")))?;
    Ok(Layout {
        user_name: user_name.to_string(),
        items_name: items_name.to_string(),
        user: leaf(user_name),
        user_kind,
        user_def,
        items: leaf(items_name),
        items_kind,
        item_def: def,
        slot_def,
    })
}

/// Checks that every chunk of the two columns is compressed with a codec
/// this build reads (before any is decoded, so the message names it).
fn codecs(reader: &SerializedFileReader<Pread>, layout: &Layout) -> Result<(), String> {
    for (g, rg) in reader.metadata().row_groups().iter().enumerate() {
        for (col, name) in [
            (layout.user, &layout.user_name),
            (layout.items, &layout.items_name),
        ] {
            let codec = rg.column(col).compression();
            if matches!(codec, Compression::BROTLI(_) | Compression::LZO) {
                let codec = format!("{codec:?}");
                let codec = codec.split('(').next().unwrap_or_default();
                return Err(format!(
                    "row group {g}: column `{name}` is compressed with {codec}, which this \
                     build does not read (it reads snappy, zstd, gzip, lz4, lz4_raw and \
                     uncompressed): write the file with one of those"
                ));
            }
        }
    }
    Ok(())
}

/// A place in the file: (row group, row in it).
type Place = (usize, usize);

/// An error at a place (its key for picking the earliest), or of the whole
/// file (`None`, first).
type Failure = (Option<Place>, String);

/// One shard's users of one row group: (row, item count) in row order,
/// their items one after another.
struct Chunk {
    group: usize,
    rows: Vec<(u32, u32)>,
    items: Vec<u32>,
}

/// Items per chunk before it is sent (4 MiB): bounds what is in flight.
const CHUNK_ITEMS: usize = 1 << 20;

/// Records per `read_records` call.
const BATCH: usize = 8192;

/// The per-thread result: builder, item counts for the pool.
type Loaded = (StoreBuilder, u64, Option<AHashMap<u32, u64>>);

/// Loads a Parquet feed file into one builder per shard (`cpus.len()`
/// shards; user `u` goes to `shard_of(u)`, dropped when that is no local
/// shard), with the file's version (the same checksum as a TSV file's).
pub(super) fn load(
    path: &Path,
    columns: &Columns,
    cpus: &[usize],
    pin: bool,
    count_for_pool: bool,
    shard_of: &(impl Fn(u32) -> ShardId + Sync),
) -> Result<Vec<Loaded>, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::io(path, &e))?;
    let len = file.metadata().map_err(|e| LoadError::io(path, &e))?.len();
    let mut tail = [0u8; 4];
    if len < 12 || file.read_exact_at(&mut tail, len - 4).is_err() || &tail != b"PAR1" {
        return Err(LoadError::whole(
            path,
            "starts as Parquet but does not end with `PAR1`: cut short (still being \
             written, or copied in part?)",
        ));
    }
    let file = Arc::new(file);
    let reader = SerializedFileReader::new(Pread {
        file: file.clone(),
        len,
    })
    .map_err(|e| LoadError::whole(path, format!("is not a readable Parquet file: {e}")))?;
    let layout = layout(&reader, columns).map_err(|m| LoadError::whole(path, m))?;
    let meta = reader.metadata();
    let groups = meta.num_row_groups();
    codecs(&reader, &layout).map_err(|m| LoadError::whole(path, m))?;
    let shards = cpus.len();

    // Phase 1's output: every row group's user ids.
    let users: Vec<OnceLock<Vec<u32>>> = (0..groups).map(|_| OnceLock::new()).collect();
    let shard_users: Vec<AtomicUsize> = (0..shards).map(|_| AtomicUsize::new(0)).collect();
    let shard_items: Vec<AtomicU64> = (0..shards).map(|_| AtomicU64::new(0)).collect();
    let next = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let failed = AtomicBool::new(false);
    let barrier = Barrier::new(shards);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let fail = |f: Failure| {
        failed.store(true, Ordering::Relaxed);
        failures.lock().expect("failures").push(f);
    };
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::channel()).unzip();

    let loaded: Vec<Option<(Loaded, u32)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| {
                let senders: Vec<mpsc::Sender<Chunk>> = senders.clone();
                let (reader, layout, users, file) = (&reader, &layout, &users, &file);
                let (shard_users, shard_items, next, barrier) =
                    (&shard_users, &shard_items, &next, &barrier);
                let (failed, fail) = (&failed, &fail);
                let cpu = cpus[me];
                scope.spawn(move || {
                    if pin {
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    }
                    // The version: this thread's share of the file's checksum.
                    let (from, to) = (
                        len * me as u64 / shards as u64,
                        len * (me as u64 + 1) / shards as u64,
                    );
                    let crc = match crc_range(file, from, to) {
                        Ok(crc) => Some(crc),
                        Err(e) => {
                            fail((None, format!("cannot read: {e}")));
                            None
                        }
                    };
                    // Phase 1: user ids.
                    loop {
                        let g = next[0].fetch_add(1, Ordering::Relaxed);
                        if g >= groups || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        match read_users(reader, layout, g) {
                            Ok(ids) => {
                                let rows = ids.len().max(1) as u64;
                                let values = reader
                                    .metadata()
                                    .row_group(g)
                                    .column(layout.items)
                                    .num_values()
                                    .max(0) as u64;
                                let mut counts = vec![0u64; shards];
                                for &u in &ids {
                                    let s = shard_of(u).0;
                                    if s < shards {
                                        counts[s] += 1;
                                    }
                                }
                                for (s, &n) in counts.iter().enumerate() {
                                    shard_users[s].fetch_add(n as usize, Ordering::Relaxed);
                                    shard_items[s]
                                        .fetch_add((values * n).div_ceil(rows), Ordering::Relaxed);
                                }
                                let _ = users[g].set(ids);
                            }
                            Err(f) => fail(f),
                        }
                    }
                    barrier.wait();
                    if failed.load(Ordering::Relaxed) {
                        return None;
                    }
                    // Phase 2: this shard's builder; item lists routed to
                    // their shards.
                    let (n_users, n_items) = (
                        shard_users[me].load(Ordering::Relaxed),
                        shard_items[me].load(Ordering::Relaxed) as usize,
                    );
                    let mut builder = match StoreBuilder::try_with_capacity(n_users, n_items) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            fail((None, out_of_memory(e, n_users, n_items)));
                            None
                        }
                    };
                    let take = |chunk: Chunk, builder: &mut Option<StoreBuilder>| {
                        let Some(b) = builder.as_mut() else { return };
                        if let Err(f) = push_chunk(b, &chunk, users) {
                            fail(f);
                            *builder = None;
                        }
                    };
                    let mut outbox: Vec<Chunk> = (0..shards).map(|_| Chunk::new(0)).collect();
                    loop {
                        let g = next[1].fetch_add(1, Ordering::Relaxed);
                        if g >= groups || builder.is_none() {
                            break;
                        }
                        let ids = users[g].get().expect("phase 1 read every group");
                        let result = read_items(
                            reader,
                            layout,
                            g,
                            ids,
                            shard_of,
                            shards,
                            &mut outbox,
                            &mut |chunk| {
                                let to = senders.get(chunk_shard(&chunk, ids, shard_of));
                                // A shard that stopped on an error has gone: the
                                // load fails anyway.
                                if let Some(to) = to {
                                    let _ = to.send(chunk);
                                }
                                while let Ok(c) = inbox.try_recv() {
                                    take(c, &mut builder);
                                }
                            },
                        );
                        if let Err(f) = result {
                            fail(f);
                            builder = None;
                        }
                    }
                    drop(senders);
                    for c in inbox.iter() {
                        take(c, &mut builder);
                    }
                    let builder = builder?;
                    let counts = count_for_pool
                        .then(|| count_items(builder.items(), POOL_SAMPLE_ITEMS / shards));
                    Some(((builder, 0, counts), crc?))
                })
            })
            .collect();
        drop(senders);
        threads
            .into_iter()
            .map(|t| t.join().expect("parquet loader thread"))
            .collect()
    });

    let mut failures = failures.into_inner().expect("failures");
    if !failures.is_empty() {
        failures.sort_by_key(|f| f.0);
        let (place, message) = failures.swap_remove(0);
        let message = match place {
            Some((g, r)) => {
                let before: i64 = (0..g).map(|i| meta.row_group(i).num_rows()).sum();
                format!(
                    "row group {g}, row {r} (row {} of the file): {message}",
                    before + r as i64
                )
            }
            None => message,
        };
        return Err(LoadError::whole(path, message));
    }
    let mut crc = 0u32;
    let mut out = Vec::with_capacity(shards);
    for (me, l) in loaded.into_iter().enumerate() {
        let ((builder, _, counts), part) = l.expect("no failure, so every shard loaded");
        let (from, to) = (
            len * me as u64 / shards as u64,
            len * (me as u64 + 1) / shards as u64,
        );
        crc = if me == 0 {
            part
        } else {
            crc32c::crc32c_combine(crc, part, (to - from) as usize)
        };
        out.push((builder, 0, counts));
    }
    let version = ((crc as u64) << 32) | (len & 0xffff_ffff);
    for l in &mut out {
        l.1 = version;
    }
    Ok(out)
}

impl Chunk {
    fn new(group: usize) -> Chunk {
        Chunk {
            group,
            rows: Vec::new(),
            items: Vec::new(),
        }
    }
}

/// The shard a (non-empty) chunk is for.
fn chunk_shard(chunk: &Chunk, ids: &[u32], shard_of: &impl Fn(u32) -> ShardId) -> usize {
    chunk
        .rows
        .first()
        .map_or(usize::MAX, |&(row, _)| shard_of(ids[row as usize]).0)
}

/// Pushes a chunk's users into the shard's builder.
fn push_chunk(
    b: &mut StoreBuilder,
    chunk: &Chunk,
    users: &[OnceLock<Vec<u32>>],
) -> Result<(), Failure> {
    let ids = users[chunk.group].get().expect("phase 1 read every group");
    let mut at = 0;
    for &(row, n) in &chunk.rows {
        let user = ids[row as usize];
        let list = &chunk.items[at..at + n as usize];
        at += n as usize;
        b.push_user(user, list.iter().copied())
            .map_err(|DuplicateUser(u)| {
                // Chunks arrive in any order: name the file's first two
                // places of the user, not the order they were met in.
                let (first, second) = first_two_places(users, u);
                (
                    Some(second),
                    format!(
                        "user {u} appears a second time (first at row group {}, row {})",
                        first.0, first.1
                    ),
                )
            })?;
    }
    Ok(())
}

/// The first two places of user `u` in the file.
fn first_two_places(users: &[OnceLock<Vec<u32>>], u: u32) -> (Place, Place) {
    let mut places = users.iter().enumerate().flat_map(|(g, ids)| {
        let ids = ids.get().map_or(&[][..], Vec::as_slice);
        ids.iter()
            .enumerate()
            .filter(move |&(_, &x)| x == u)
            .map(move |(r, _)| (g, r))
    });
    let first = places.next().unwrap_or((usize::MAX, usize::MAX));
    (first, places.next().unwrap_or(first))
}

/// CRC32C of the bytes `from..to` of `file`.
fn crc_range(file: &File, from: u64, to: u64) -> io::Result<u32> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut crc) = (from, 0u32);
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok(crc)
}

fn column_reader(
    reader: &SerializedFileReader<Pread>,
    g: usize,
    col: usize,
    name: &str,
) -> Result<ColumnReader, Failure> {
    reader
        .get_row_group(g)
        .and_then(|rg| rg.get_column_reader(col))
        .map_err(|e| (Some((g, 0)), format!("column `{name}`: cannot read: {e}")))
}

/// Phase 1: the user ids of row group `g`, checked.
fn read_users(
    reader: &SerializedFileReader<Pread>,
    layout: &Layout,
    g: usize,
) -> Result<Vec<u32>, Failure> {
    let name = &layout.user_name;
    let rows = reader.metadata().row_group(g).num_rows().max(0) as usize;
    let mut ids = Vec::with_capacity(rows);
    match column_reader(reader, g, layout.user, name)? {
        ColumnReader::Int32ColumnReader(r) => read_user_values(r, layout, g, name, &mut ids)?,
        ColumnReader::Int64ColumnReader(r) => read_user_values(r, layout, g, name, &mut ids)?,
        _ => unreachable!("the layout checked the user column's type"),
    }
    if ids.len() != rows {
        return Err((
            Some((g, ids.len())),
            format!(
                "column `{name}` holds {} values, the row group {rows} rows (damaged file)",
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

fn read_user_values<T: DataType>(
    mut r: ColumnReaderImpl<T>,
    layout: &Layout,
    g: usize,
    name: &str,
    ids: &mut Vec<u32>,
) -> Result<(), Failure>
where
    T::T: Copy + Into<i64>,
{
    let (mut defs, mut values) = (Vec::new(), Vec::new());
    loop {
        defs.clear();
        values.clear();
        let defs_out = (layout.user_def > 0).then_some(&mut defs);
        let (_, _, levels) = r
            .read_records(BATCH, defs_out, None, &mut values)
            .map_err(|e| {
                (
                    Some((g, ids.len())),
                    format!("column `{name}`: cannot decode: {e}"),
                )
            })?;
        if levels == 0 {
            return Ok(());
        }
        let mut v = values.iter();
        for i in 0..levels {
            let row = ids.len();
            if layout.user_def > 0 && defs.get(i) < Some(&layout.user_def) {
                return Err((
                    Some((g, row)),
                    format!("column `{name}`: the user id is null"),
                ));
            }
            let raw: i64 = (*v.next().expect("a value per defined level")).into();
            let id = to_id(raw, layout.user_kind)
                .map_err(|e| (Some((g, row)), format!("column `{name}`: user id {e}")))?;
            ids.push(id);
        }
    }
}

/// Phase 2: the item lists of row group `g`, checked, each user's put in
/// its shard's chunk in `outbox`; a full chunk (and every one at the end)
/// goes to `send`.
#[allow(clippy::too_many_arguments)]
fn read_items(
    reader: &SerializedFileReader<Pread>,
    layout: &Layout,
    g: usize,
    ids: &[u32],
    shard_of: &impl Fn(u32) -> ShardId,
    shards: usize,
    outbox: &mut [Chunk],
    send: &mut impl FnMut(Chunk),
) -> Result<(), Failure> {
    let name = &layout.items_name;
    for c in outbox.iter_mut() {
        *c = Chunk::new(g);
    }
    let mut rows = Rows {
        layout,
        g,
        ids,
        shard_of,
        shards,
        outbox,
        send,
        name,
        row: 0,
        dest: None,
        start: 0,
        started: false,
    };
    match column_reader(reader, g, layout.items, name)? {
        ColumnReader::Int32ColumnReader(r) => rows.read(r)?,
        ColumnReader::Int64ColumnReader(r) => rows.read(r)?,
        _ => unreachable!("the layout checked the items column's type"),
    }
    if rows.row != ids.len() {
        return Err((
            Some((g, rows.row)),
            format!(
                "column `{name}` holds {} lists, the row group {} rows (damaged file)",
                rows.row,
                ids.len()
            ),
        ));
    }
    for s in 0..shards {
        let c = std::mem::replace(&mut rows.outbox[s], Chunk::new(g));
        if !c.rows.is_empty() {
            (rows.send)(c);
        }
    }
    Ok(())
}

/// The state of reading one row group's item lists.
struct Rows<'a, F, S> {
    layout: &'a Layout,
    g: usize,
    ids: &'a [u32],
    shard_of: &'a F,
    shards: usize,
    outbox: &'a mut [Chunk],
    send: &'a mut S,
    name: &'a str,
    /// Rows finished.
    row: usize,
    /// The current row's shard (`None`: no local shard's, checked only).
    dest: Option<usize>,
    /// Where the current row's items start in its chunk.
    start: usize,
    started: bool,
    // The current row's item count when it is not kept.
}

impl<F: Fn(u32) -> ShardId, S: FnMut(Chunk)> Rows<'_, F, S> {
    fn read<T: DataType>(&mut self, mut r: ColumnReaderImpl<T>) -> Result<(), Failure>
    where
        T::T: Copy + Into<i64>,
    {
        let (mut defs, mut reps, mut values) = (Vec::new(), Vec::new(), Vec::new());
        let mut count = 0u32;
        loop {
            defs.clear();
            reps.clear();
            values.clear();
            let (_, _, levels) = r
                .read_records(BATCH, Some(&mut defs), Some(&mut reps), &mut values)
                .map_err(|e| {
                    (
                        Some((self.g, self.row)),
                        format!("column `{}`: cannot decode: {e}", self.name),
                    )
                })?;
            if levels == 0 {
                break;
            }
            let mut v = values.iter();
            for i in 0..levels {
                if reps[i] == 0 {
                    if self.started {
                        self.end_row(count);
                    }
                    self.begin_row()?;
                    count = 0;
                }
                let d = defs[i];
                if d == self.layout.item_def {
                    let raw: i64 = (*v.next().expect("a value per defined level")).into();
                    count += 1;
                    let id = to_id(raw, self.layout.items_kind).map_err(|e| {
                        (
                            Some((self.g, self.row)),
                            format!("column `{}`, item {count}: {e}", self.name),
                        )
                    })?;
                    if let Some(s) = self.dest {
                        self.outbox[s].items.push(id);
                    }
                } else if d >= self.layout.slot_def {
                    return Err((
                        Some((self.g, self.row)),
                        format!("column `{}`, item {}: null item", self.name, count + 1),
                    ));
                }
                // Below `slot_def`: an empty or null list, no item.
            }
        }
        if self.started {
            self.end_row(count);
        }
        Ok(())
    }

    fn begin_row(&mut self) -> Result<(), Failure> {
        self.started = true;
        let Some(&user) = self.ids.get(self.row) else {
            return Err((
                Some((self.g, self.row)),
                format!(
                    "column `{}` holds more lists than the row group's {} rows (damaged file)",
                    self.name,
                    self.ids.len()
                ),
            ));
        };
        let s = (self.shard_of)(user).0;
        self.dest = (s < self.shards).then_some(s);
        if let Some(s) = self.dest {
            self.start = self.outbox[s].items.len();
        }
        Ok(())
    }

    fn end_row(&mut self, count: u32) {
        if let Some(s) = self.dest {
            let chunk = &mut self.outbox[s];
            debug_assert_eq!(chunk.items.len() - self.start, count as usize);
            chunk.rows.push((self.row as u32, count));
            if chunk.items.len() >= CHUNK_ITEMS {
                let full = std::mem::replace(chunk, Chunk::new(self.g));
                (self.send)(full);
            }
        }
        self.row += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_every_width_and_signedness() {
        use IntKind::*;
        assert_eq!(to_id(0, Signed), Ok(0));
        assert_eq!(to_id(4_294_967_295, Signed), Ok(u32::MAX));
        assert_eq!(
            to_id(4_294_967_296, Signed),
            Err(OutOfRange::TooLarge(4_294_967_296))
        );
        assert_eq!(to_id(-1, Signed), Err(OutOfRange::Negative(-1)));
        assert_eq!(to_id(i64::MIN, Signed), Err(OutOfRange::Negative(i64::MIN)));
        assert_eq!(
            to_id(i64::MAX, Signed),
            Err(OutOfRange::TooLarge(i64::MAX as u64))
        );
        // An INT32 column's values arrive sign-extended: a uint32 id above
        // 2^31 is stored as a negative i32.
        assert_eq!(to_id(i64::from(-1i32), Unsigned32), Ok(u32::MAX));
        assert_eq!(to_id(i64::from(u32::MAX as i32), Unsigned32), Ok(u32::MAX));
        assert_eq!(to_id(7, Unsigned32), Ok(7));
        // A uint64 above 2^63 arrives as a negative i64.
        assert_eq!(to_id(-1, Unsigned64), Err(OutOfRange::TooLarge(u64::MAX)));
        assert_eq!(to_id(4_294_967_295, Unsigned64), Ok(u32::MAX));
        assert_eq!(
            to_id(4_294_967_296, Unsigned64),
            Err(OutOfRange::TooLarge(1 << 32))
        );
        assert_eq!(OutOfRange::Negative(-3).to_string(), "-3 is negative");
        assert_eq!(
            OutOfRange::TooLarge(1 << 32).to_string(),
            "4294967296 is larger than 4294967295"
        );
    }

    use ::parquet::data_type::{Int32Type, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    /// A row: user (None: null), items (None: a null list; an item None: null).
    type Row = (Option<i64>, Option<Vec<Option<i64>>>);

    /// Writes `groups` as row groups of a file with `schema`, whose first
    /// column is the user (INT64) and whose second is the item list (its
    /// leaf INT64, or INT32 with `int32`); definition levels as the
    /// schema's optional/repeated nodes ask (`item_def`, `slot_def`,
    /// `user_def`, as [`Layout`] reads them).
    fn write_file(
        name: &str,
        schema: &str,
        levels: (i16, i16, i16),
        int32: bool,
        groups: &[Vec<Row>],
    ) -> std::path::PathBuf {
        let (user_def, slot_def, item_def) = levels;
        let dir = std::env::temp_dir().join(format!("shardfeed-pq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().build());
        let mut w = SerializedFileWriter::new(File::create(&path).unwrap(), schema, props).unwrap();
        for rows in groups {
            let mut rg = w.next_row_group().unwrap();
            // The user column.
            let mut col = rg.next_column().unwrap().unwrap();
            let users: Vec<i64> = rows.iter().filter_map(|r| r.0).collect();
            let defs: Vec<i16> = rows.iter().map(|r| i16::from(r.0.is_some())).collect();
            let defs = (user_def > 0).then_some(&defs[..]);
            col.typed::<Int64Type>()
                .write_batch(&users, defs, None)
                .unwrap();
            col.close().unwrap();
            // The items column.
            let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
            for (_, list) in rows {
                match list {
                    None => {
                        defs.push(slot_def - 2);
                        reps.push(0);
                    }
                    Some(l) if l.is_empty() => {
                        defs.push(slot_def - 1);
                        reps.push(0);
                    }
                    Some(l) => {
                        for (i, item) in l.iter().enumerate() {
                            reps.push(i16::from(i > 0));
                            match item {
                                Some(v) => {
                                    values.push(*v);
                                    defs.push(item_def);
                                }
                                None => defs.push(slot_def),
                            }
                        }
                    }
                }
            }
            let mut col = rg.next_column().unwrap().unwrap();
            if int32 {
                let values: Vec<i32> = values.iter().map(|&v| v as i32).collect();
                col.typed::<Int32Type>()
                    .write_batch(&values, Some(&defs), Some(&reps))
                    .unwrap();
            } else {
                col.typed::<Int64Type>()
                    .write_batch(&values, Some(&defs), Some(&reps))
                    .unwrap();
            }
            col.close().unwrap();
            rg.close().unwrap();
        }
        w.close().unwrap();
        path
    }

    const LIST: &str = "message m { required int64 user_id; optional group items (LIST) { repeated group list { optional int64 element; } } }";

    fn rows(users: std::ops::Range<i64>) -> Vec<Row> {
        users
            .map(|u| {
                (
                    Some(u),
                    Some((0..u % 5).map(|i| Some(u * 100 + i)).collect()),
                )
            })
            .collect()
    }

    fn load_all(
        path: &Path,
        shards: usize,
        shard_of: impl Fn(u32) -> ShardId + Sync,
    ) -> Result<Vec<Loaded>, String> {
        let cpus: Vec<usize> = (0..shards).collect();
        load(path, &Columns::default(), &cpus, false, true, &shard_of).map_err(|e| e.to_string())
    }

    #[test]
    fn users_go_to_their_shards_from_every_row_group() {
        let groups = [rows(1..40), rows(40..41), rows(41..100), vec![]];
        let path = write_file("route.parquet", LIST, (0, 2, 3), false, &groups);
        for shards in [1, 2, 3] {
            // Shard `shards` (none here) owns every fourth user: dropped.
            let owner = move |u: u32| {
                ShardId(if u.is_multiple_of(4) {
                    99
                } else {
                    u as usize % shards
                })
            };
            let loaded = load_all(&path, shards, owner).unwrap();
            assert_eq!(loaded.len(), shards);
            let bytes = std::fs::read(&path).unwrap();
            let version = ((crc32c::crc32c(&bytes) as u64) << 32) | bytes.len() as u64;
            for (i, (b, v, counts)) in loaded.into_iter().enumerate() {
                assert_eq!(v, version, "the version is the file's checksum");
                assert!(counts.is_some());
                let store = b.build(Default::default());
                let mine: Vec<u32> = (1..100).filter(|&u| owner(u).0 == i).collect();
                assert_eq!(store.users(), mine.len(), "shard {i} of {shards}");
                for u in mine {
                    let want: Vec<u32> = (0..u % 5).map(|k| u * 100 + k).collect();
                    assert_eq!(store.remaining(u), Some(&want[..]), "user {u}");
                }
            }
        }
    }

    #[test]
    fn lists_of_every_shape() {
        // A legacy two-level list of INT32 (`repeated int32 items`), and a
        // list whose levels are all required: an empty list is a user with
        // no items; so is a null list.
        let groups = [vec![
            (Some(1), Some(vec![Some(5), Some(6)])),
            (Some(2), Some(vec![])),
            (Some(3), Some(vec![Some(7)])),
        ]];
        let legacy = write_file(
            "legacy.parquet",
            "message m { optional int64 user_id; repeated int32 items; }",
            (1, 1, 1),
            true,
            &groups,
        );
        let required = write_file(
            "required.parquet",
            "message m { required int64 user_id; required group items (LIST) { repeated group list { required int64 element; } } }",
            (0, 1, 1),
            false,
            &groups,
        );
        let nulls = [vec![
            (Some(1), Some(vec![Some(5), Some(6)])),
            (Some(2), None),
            (Some(3), Some(vec![Some(7)])),
        ]];
        let null_list = write_file("nulllist.parquet", LIST, (0, 2, 3), false, &nulls);
        for path in [legacy, required, null_list] {
            let (b, _, _) = load_all(&path, 1, |_| ShardId(0)).unwrap().remove(0);
            let s = b.build(Default::default());
            assert_eq!(s.remaining(1), Some(&[5, 6][..]), "{path:?}");
            assert_eq!(s.remaining(2), Some(&[][..]), "{path:?}");
            assert_eq!(s.remaining(3), Some(&[7][..]), "{path:?}");
        }
    }

    /// File name, schema, levels, row groups, the message wanted.
    type Case<'a> = (&'a str, &'a str, (i16, i16, i16), Vec<Vec<Row>>, &'a str);

    #[test]
    fn errors_name_row_group_row_and_column() {
        let dup = [rows(1..6), rows(6..9), rows(3..4)];
        let cases: Vec<Case> = vec![
            ("dup.parquet", LIST, (0, 2, 3), dup.to_vec(), "row group 2, row 0 (row 8 of the file): user 3 appears a second time (first at row group 0, row 2)"),
            (
                "nullitem.parquet",
                LIST,
                (0, 2, 3),
                vec![rows(1..4), vec![(Some(9), Some(vec![Some(1), None]))]],
                "row group 1, row 0 (row 3 of the file): column `items`, item 2: null item",
            ),
            (
                "nulluser.parquet",
                "message m { optional int64 user_id; optional group items (LIST) { repeated group list { optional int64 element; } } }",
                (1, 2, 3),
                vec![vec![(Some(1), Some(vec![])), (None, Some(vec![]))]],
                "row group 0, row 1 (row 1 of the file): column `user_id`: the user id is null",
            ),
            (
                "large.parquet",
                LIST,
                (0, 2, 3),
                vec![vec![(Some(1), Some(vec![Some(1 << 32)]))]],
                "row group 0, row 0 (row 0 of the file): column `items`, item 1: 4294967296 is larger than 4294967295",
            ),
            (
                "negative.parquet",
                LIST,
                (0, 2, 3),
                vec![rows(1..3), vec![(Some(-2), Some(vec![]))]],
                "row group 1, row 0 (row 2 of the file): column `user_id`: user id -2 is negative",
            ),
            (
                "nested.parquet",
                "message m { required int64 user_id; optional group items (LIST) { repeated group list { required group element (LIST) { repeated int64 x; } } } }",
                (0, 2, 3),
                vec![],
                "column `items` (the item lists) holds lists of lists",
            ),
            (
                "names.parquet",
                "message m { required int64 uid; optional group recs (LIST) { repeated group list { optional int64 element; } } }",
                (0, 2, 3),
                vec![],
                "has no column `user_id`; its columns: `uid`, `recs`. Name the column with --user-column NAME",
            ),
        ];
        for (name, schema, levels, groups, want) in cases {
            let path = write_file(name, schema, levels, false, &groups);
            for shards in [1, 3] {
                let e = load_all(&path, shards, |u| ShardId(u as usize % shards)).unwrap_err();
                assert!(
                    e.contains(name) && e.contains(want),
                    "{name}, {shards} shards: {e}"
                );
            }
        }
    }

    #[test]
    fn checksum_in_parts_is_the_whole_files() {
        let dir = std::env::temp_dir().join(format!("shardfeed-pq-crc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bytes");
        let bytes: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 + i / 13) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let len = bytes.len() as u64;
        for parts in [1u64, 2, 3, 7] {
            let mut crc = 0;
            for p in 0..parts {
                let (from, to) = (len * p / parts, len * (p + 1) / parts);
                let part = crc_range(&file, from, to).unwrap();
                crc = if p == 0 {
                    part
                } else {
                    crc32c::crc32c_combine(crc, part, (to - from) as usize)
                };
            }
            assert_eq!(crc, crc32c::crc32c(&bytes), "{parts} parts");
        }
    }
}
