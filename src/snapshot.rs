//! shardfeed's own snapshot format (`shardfeed pack`): every shard's user
//! table and items, laid out as the store holds them, so that loading is
//! a read of two arrays per shard instead of parsing and hashing.
//!
//! Layout (little-endian, every array 8-byte aligned):
//!
//! ```text
//! header   64 bytes: MAGIC "SHFDSNAP", format u32 (1), shards u32,
//!          feed version u64, users u64, items u64, entry size u32 (24),
//!          CRC32C of the 44 bytes before it u32, zeros
//! table    shards x 40 bytes: offset u64, users u64, slots u64, items u64,
//!          CRC32C of the section u32, zeros u32; then the CRC32C of the
//!          table u32, zeros to the next multiple of 8
//! sections one per shard of `pack --shards N` (users placed by
//!          `shard::owner_of(user, N)`): `slots` user-table entries
//!          (`user_table::Entry`, 24 bytes), then `items` u32 item ids
//! ```
//!
//! A server alone with N shards (not a cluster member) takes each shard's
//! store from its own section, no other shard's bytes: the user table is
//! read into fresh memory (one `pread`; progress is written there), the
//! items are *mapped* read-only (`mapped.rs`): the page cache's pages
//! serve pages, with no copy and no zeroing of fresh memory, which were
//! most of a large start. The mapping lives as long as the store (dropped,
//! e.g. by a reload: unmapped). With another shard count, or as a cluster
//! member (whose ownership is the cluster file's, not `pack`'s), every
//! shard maps the whole file, reads every section and copies the users it
//! owns (correct, slower; the start says so).
//!
//! Integrity: every section's CRC32C is checked, over every byte, before
//! any of it is used (a damaged snapshot fails the start, it never serves
//! wrong items). Cheaper schemes were weighed and refused: checking later
//! or in the background would serve unchecked bytes until then; sampling
//! or a checksum of the header alone misses a flipped item; a cheaper
//! function would not help, as CRC32C (SSE4.2) runs at the speed of a
//! plain sum over the same mapping here (both 2-4 GB/s per thread: the
//! pass is bound by memory, not by the arithmetic). So the check costs one
//! pass over the section, spread over the loaders: on the fast path each
//! shard's loader checks its own section, side by side; on the copying
//! path each section is checked once, by the first loader to reach it
//! (loader i starts at section i), the others waiting for its verdict.
//! The pass doubles as mapping every page, so that no page is first
//! touched on the hot path.
//!
//! A mapped file must not change under the server: a snapshot truncated or
//! rewritten in place raises SIGBUS when a page past its new end is read.
//! Replace a snapshot by writing a new file and renaming it over the old
//! (`pack` does; so must a pipeline): the old inode stays intact while
//! mapped. Only regular files are mapped. The version is the input's (a
//! TSV file's checksum), so packing a file keeps its users' progress.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::feed::{Items, StoreBuilder};
use crate::load::{out_of_memory, LoadError};
use crate::mapped::Mapping;
use crate::shard::ShardId;
use crate::user_table::{Entry, UserTable};

/// The first bytes of every snapshot.
pub const MAGIC: &[u8] = b"SHFDSNAP";
const FORMAT: u32 = 1;
const HEADER: usize = 64;
const TABLE_ENTRY: usize = 40;
const ENTRY: usize = std::mem::size_of::<Entry>();

const _: () = assert!(
    cfg!(target_endian = "little"),
    "snapshots are little-endian"
);

/// One shard's section, as the table describes it.
#[derive(Debug, Clone, Copy)]
struct Section {
    offset: u64,
    users: u64,
    slots: u64,
    items: u64,
    crc: u32,
}

impl Section {
    fn bytes(&self) -> u64 {
        self.slots * ENTRY as u64 + self.items * 4
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn table_bytes(shards: usize) -> usize {
    (shards * TABLE_ENTRY + 4).next_multiple_of(8)
}

/// Writes every shard's builder (placed by `owner_of(user, builders.len())`)
/// as a snapshot of feed `version` to `out`.
pub fn write(out: &mut impl Write, version: u64, builders: &[StoreBuilder]) -> std::io::Result<()> {
    let shards = builders.len();
    let mut offset = (HEADER + table_bytes(shards)) as u64;
    let mut sections = Vec::with_capacity(shards);
    for b in builders {
        let (table, items) = b.parts();
        let (slots, items) = (entry_bytes(table.raw_slots()), item_bytes(items));
        let crc = crc32c::crc32c_append(crc32c::crc32c(slots), items);
        let s = Section {
            offset,
            users: table.len() as u64,
            slots: table.raw_slots().len() as u64,
            items: b.items().len() as u64,
            crc,
        };
        offset += s.bytes().next_multiple_of(8);
        sections.push(s);
    }
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&(shards as u32).to_le_bytes());
    header.extend_from_slice(&version.to_le_bytes());
    let users: u64 = sections.iter().map(|s| s.users).sum();
    let items: u64 = sections.iter().map(|s| s.items).sum();
    header.extend_from_slice(&users.to_le_bytes());
    header.extend_from_slice(&items.to_le_bytes());
    header.extend_from_slice(&(ENTRY as u32).to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header.resize(HEADER, 0);
    let mut table = Vec::with_capacity(table_bytes(shards));
    for s in &sections {
        for v in [s.offset, s.users, s.slots, s.items] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        table.extend_from_slice(&s.crc.to_le_bytes());
        table.extend_from_slice(&[0; 4]);
    }
    let crc = crc32c::crc32c(&table);
    table.extend_from_slice(&crc.to_le_bytes());
    table.resize(table_bytes(shards), 0);
    out.write_all(&header)?;
    out.write_all(&table)?;
    for (b, s) in builders.iter().zip(&sections) {
        let (t, items) = b.parts();
        out.write_all(entry_bytes(t.raw_slots()))?;
        out.write_all(item_bytes(items))?;
        let pad = s.bytes().next_multiple_of(8) - s.bytes();
        out.write_all(&[0; 8][..pad as usize])?;
    }
    out.flush()
}

fn entry_bytes(e: &[Entry]) -> &[u8] {
    // SAFETY: `Entry` is `repr(C)`, 24 bytes without padding (checked in
    // user_table.rs), every bit pattern of its integers is valid.
    unsafe { std::slice::from_raw_parts(e.as_ptr().cast(), std::mem::size_of_val(e)) }
}

fn item_bytes(items: &[u32]) -> &[u8] {
    // SAFETY: u32s are plain bytes.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast(), std::mem::size_of_val(items)) }
}

/// Reads `n` values of `T` (plain integers only) at `offset` into a fresh
/// vector, without zeroing it first (the kernel writes every byte).
fn read_vec<T: Copy>(file: &File, offset: u64, n: usize, path: &Path) -> Result<Vec<T>, LoadError> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        LoadError::whole(
            path,
            out_of_memory(crate::feed::OutOfMemory(n * std::mem::size_of::<T>()), 0, n),
        )
    })?;
    let bytes = n * std::mem::size_of::<T>();
    huge_pages(v.as_mut_ptr().cast(), bytes);
    // SAFETY: the spare capacity holds `bytes` bytes; it is only read as
    // `T` after `read_exact_at` filled every byte (T is a plain integer or
    // `Entry`, valid for every bit pattern).
    let buf = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), bytes) };
    file.read_exact_at(buf, offset)
        .map_err(|e| LoadError::whole(path, format!("snapshot cut short or unreadable: {e}")))?;
    // SAFETY: filled above.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// Asks for transparent huge pages on a fresh allocation about to be
/// filled: one fault (and one zeroing) per 2 MiB instead of per 4 KiB, which
/// is most of a large load's time otherwise. A hint; refused is fine.
fn huge_pages(ptr: *mut u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: the range lies inside an allocation we own; madvise only
        // changes how its pages are backed.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// An opened snapshot: its header and section table checked, its sections
/// not yet. Opened once per load and shared by the loader threads (one per
/// shard), which check each section's checksum once between them.
#[derive(Debug)]
pub struct Snapshot {
    file: File,
    path: PathBuf,
    len: u64,
    version: u64,
    sections: Vec<Section>,
    /// The whole file, mapped once for the loaders that read every
    /// section (another shard count, or a cluster's ownership).
    whole: OnceLock<Result<Mapping, LoadError>>,
    /// Each section's checksum verdict, found by the first loader that
    /// needs it; the others wait for it instead of checking again.
    checked: Vec<OnceLock<Result<(), LoadError>>>,
}

impl Snapshot {
    /// Opens the snapshot at `path` and checks its header and section
    /// table. The file must be a regular file: its sections are mapped.
    pub fn open(path: &Path) -> Result<Snapshot, LoadError> {
        let bad = |m: &str| LoadError::whole(path, format!("not a usable snapshot: {m}"));
        let file = File::open(path).map_err(|e| LoadError::io(path, &e))?;
        let meta = file.metadata().map_err(|e| LoadError::io(path, &e))?;
        if !meta.is_file() {
            return Err(bad("not a regular file (snapshots are mapped)"));
        }
        let len = meta.len();
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| bad("shorter than its header"))?;
        if &header[..8] != MAGIC {
            return Err(bad("no snapshot magic"));
        }
        if crc32c::crc32c(&header[..44]) != le32(&header, 44) {
            return Err(bad("header checksum mismatch (damaged file)"));
        }
        let format = le32(&header, 8);
        if format != FORMAT {
            return Err(bad(&format!(
                "format {format}, this build reads format {FORMAT}: pack it again with this build"
            )));
        }
        if le32(&header, 40) as usize != ENTRY {
            return Err(bad("entry size differs from this build's"));
        }
        let shards = le32(&header, 12) as usize;
        if shards == 0 || shards > 4096 {
            return Err(bad("impossible shard count"));
        }
        let version = le64(&header, 16);
        let mut table = vec![0u8; table_bytes(shards)];
        file.read_exact_at(&mut table, HEADER as u64)
            .map_err(|_| bad("cut short in its section table"))?;
        let end = shards * TABLE_ENTRY;
        if crc32c::crc32c(&table[..end]) != le32(&table, end) {
            return Err(bad("section table checksum mismatch (damaged file)"));
        }
        let sections: Vec<Section> = (0..shards)
            .map(|i| {
                let at = i * TABLE_ENTRY;
                Section {
                    offset: le64(&table, at),
                    users: le64(&table, at + 8),
                    slots: le64(&table, at + 16),
                    items: le64(&table, at + 24),
                    crc: le32(&table, at + 32),
                }
            })
            .collect();
        for (i, s) in sections.iter().enumerate() {
            let fits = s
                .slots
                .checked_mul(ENTRY as u64)
                .and_then(|b| b.checked_add(s.items.checked_mul(4)?))
                .and_then(|b| b.checked_add(s.offset))
                .is_some_and(|end| end <= len);
            if !fits || s.offset % 8 != 0 {
                return Err(bad(&format!(
                    "section {i} lies beyond the end of the file (cut short?)"
                )));
            }
        }
        Ok(Snapshot {
            file,
            path: path.to_owned(),
            len,
            version,
            checked: sections.iter().map(|_| OnceLock::new()).collect(),
            sections,
            whole: OnceLock::new(),
        })
    }

    /// The feed version the snapshot holds.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Loads shard `shard` of `shards`. `placed`: this server places users
    /// by `shard::owner_of(user, shards)` (one process, not a cluster
    /// member), as `pack --shards` did; then, if the counts agree, the
    /// shard takes its own section whole: the user table read into memory,
    /// the items mapped. Otherwise it keeps the users that `owns` accepts
    /// from every section (copied).
    pub fn load_shard(
        &self,
        shard: ShardId,
        shards: usize,
        placed: bool,
        owns: impl Fn(u32) -> bool,
    ) -> Result<StoreBuilder, LoadError> {
        if placed && self.sections.len() == shards {
            return self.own_section(shard.0);
        }
        if shard.0 == 0 {
            let why = if placed {
                format!(
                    "packed for {} shards, serving with {shards} (pack with --shards {shards} \
                     for the mapped fast path)",
                    self.sections.len()
                )
            } else {
                "a cluster member places users by the cluster file, not as `pack` did".into()
            };
            crate::log_line!(
                "{}: {why}: every shard reads every section and copies its users",
                self.path.display(),
            );
        }
        self.filtered(shard.0, owns)
    }

    fn damaged(&self, i: usize, what: &str) -> LoadError {
        LoadError::whole(
            &self.path,
            format!("not a usable snapshot: section {i} {what}"),
        )
    }

    /// Section `i` as a shard's store: its user table read into fresh
    /// memory (progress is written there on every page, so it must be
    /// private, writable and present: a copy-on-write mapping would take a
    /// fault and a 4 KiB copy on the hot path at the first progress of each
    /// page of users; 3.5 M slots are 86 MB, a few percent of a section, so
    /// the copy costs little at start), its items mapped read-only.
    ///
    /// The checksum pass reads every page of the mapping, which maps them
    /// all (the kernel maps a whole large folio, up to 2 MiB, per fault):
    /// after it no page is first touched on the hot path (0-1 page faults
    /// in the first 2000 pages after start, measured). `MAP_POPULATE`
    /// instead was no faster (5M users loaded in a median 2.64 s against
    /// 2.14 s, ranges overlapping on a loaded host; record in
    /// benches/runs/2026-12-02-vm/snapshot-start.txt): populating inside
    /// `mmap` holds the address space's lock, so the second loader's
    /// `mmap` waited for the first's; faults from the checksum pass take
    /// only the mapping's own lock.
    fn own_section(&self, i: usize) -> Result<StoreBuilder, LoadError> {
        let s = &self.sections[i];
        let path = &self.path;
        let slots: Vec<Entry> = read_vec(&self.file, s.offset, s.slots as usize, path)?;
        let at = s.offset + s.slots * ENTRY as u64;
        let map = Mapping::new(&self.file, at, s.items as usize * 4)
            .map_err(|e| LoadError::whole(path, format!("cannot map the snapshot: {e}")))?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(entry_bytes(&slots)), map.bytes());
        if crc != s.crc {
            return Err(self.damaged(i, "checksum mismatch (damaged file)"));
        }
        let items = map
            .into_u32s()
            .map_err(|_| self.damaged(i, "is not aligned"))?;
        let table = UserTable::from_raw_slots(slots, s.users as usize, s.items as usize)
            .ok_or_else(|| self.damaged(i, "is inconsistent"))?;
        Ok(StoreBuilder::from_parts(table, Items::Mapped(items)))
    }

    /// The whole file, mapped once (page tables filled as the checksums
    /// read it).
    fn whole(&self) -> Result<&Mapping, LoadError> {
        self.whole
            .get_or_init(|| {
                Mapping::new(&self.file, 0, self.len as usize).map_err(|e| {
                    LoadError::whole(&self.path, format!("cannot map the snapshot: {e}"))
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Section `i`'s slots and items, checked: the checksum once for all
    /// loaders, and every slot's items inside the section.
    fn section<'a>(
        &self,
        whole: &'a Mapping,
        i: usize,
    ) -> Result<(&'a [Entry], &'a [u32]), LoadError> {
        let s = &self.sections[i];
        let at = s.offset as usize;
        let slot_bytes = s.slots as usize * ENTRY;
        let bytes = &whole.bytes()[at..at + s.bytes() as usize];
        self.checked[i]
            .get_or_init(|| {
                (crc32c::crc32c(bytes) == s.crc)
                    .then_some(())
                    .ok_or_else(|| self.damaged(i, "checksum mismatch (damaged file)"))
            })
            .clone()?;
        // SAFETY: `Entry` is `repr(C)` integers (valid for every bit
        // pattern) and u32s are plain bytes; `align_to` hands out only the
        // aligned middle, checked to be all of it below.
        let (head, slots, tail) = unsafe { bytes[..slot_bytes].align_to::<Entry>() };
        let (ihead, items, itail) = unsafe { bytes[slot_bytes..].align_to::<u32>() };
        if !(head.is_empty() && tail.is_empty() && ihead.is_empty() && itail.is_empty()) {
            return Err(self.damaged(i, "is not aligned"));
        }
        let inside = |e: &Entry| {
            e.start
                .checked_add(e.len as u64)
                .is_some_and(|end| end <= s.items)
        };
        if !slots.iter().all(|e| e.occupant().is_none() || inside(e)) {
            return Err(self.damaged(i, "is inconsistent"));
        }
        Ok((slots, items))
    }

    /// The users `owns` accepts from every section, copied into a fresh
    /// store. Loader `first` checks the sections from its own index on,
    /// so that N loaders check N sections side by side.
    fn filtered(
        &self,
        first: usize,
        owns: impl Fn(u32) -> bool,
    ) -> Result<StoreBuilder, LoadError> {
        let whole = self.whole()?;
        let n = self.sections.len();
        let mut parts = Vec::with_capacity(n);
        for k in 0..n {
            let i = (first + k) % n;
            parts.push(self.section(whole, i)?);
        }
        let owned = |(slots, _): &(&[Entry], &[u32])| {
            slots
                .iter()
                .filter_map(|e| Some((e.occupant()?, e)))
                .filter(|&(user, _)| owns(user))
                .map(|(_, e)| e.len as usize)
                .fold((0, 0), |(u, i), len| (u + 1, i + len))
        };
        let (users, items) = parts
            .iter()
            .map(owned)
            .fold((0, 0), |(u, i), (pu, pi)| (u + pu, i + pi));
        let mut builder = StoreBuilder::try_with_capacity(users, items)
            .map_err(|e| LoadError::whole(&self.path, out_of_memory(e, users, items)))?;
        for (slots, all) in &parts {
            for (user, e) in slots.iter().filter_map(|e| Some((e.occupant()?, e))) {
                if owns(user) {
                    let start = e.start as usize;
                    builder
                        .push_user(user, all[start..start + e.len as usize].iter().copied())
                        .map_err(|d| {
                            LoadError::whole(&self.path, format!("user {} appears twice", d.0))
                        })?;
                }
            }
        }
        Ok(builder)
    }
}

/// Loads shard `shard` of `shards` from the snapshot at `path` (see
/// [`Snapshot::load_shard`]). Returns the builder and the version.
pub fn load(
    path: &Path,
    shard: ShardId,
    shards: usize,
    placed: bool,
    owns: impl Fn(u32) -> bool,
) -> Result<(StoreBuilder, u64), LoadError> {
    let snapshot = Snapshot::open(path)?;
    let builder = snapshot.load_shard(shard, shards, placed, owns)?;
    Ok((builder, snapshot.version()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::owner_of;
    use crate::synthetic::{synthetic_store, Synthetic};

    const SPEC: Synthetic = Synthetic {
        users: 500,
        feed_len: 20,
        items: 1000,
        seed: 7,
    };

    fn packed(shards: usize) -> Vec<u8> {
        let builders: Vec<_> = (0..shards)
            .map(|i| synthetic_store(&SPEC, |u| owner_of(u, shards).0 == i))
            .collect();
        let mut out = Vec::new();
        write(&mut out, 0xfeed, &builders).unwrap();
        out
    }

    fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("shardfeed-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn loads_back_with_the_same_and_other_shard_counts() {
        let path = file("two.snap", &packed(2));
        let whole = synthetic_store(&SPEC, |_| true).build(Default::default());
        // (shards, placed by owner_of): 2 placed is the mapped fast path;
        // 2 not placed stands for a cluster member (here with the same
        // partition, which the loader may not assume).
        for (shards, placed) in [(1, true), (2, true), (3, true), (2, false)] {
            let mut users = 0;
            for i in 0..shards {
                let owns = |u| owner_of(u, shards).0 == i;
                let (b, version) = load(&path, ShardId(i), shards, placed, owns).unwrap();
                assert_eq!(version, 0xfeed);
                let store = b.build(Default::default());
                assert_eq!(store.items_mapped(), shards == 2 && placed);
                users += store.users();
                for u in SPEC.user_ids().filter(|&u| owns(u)) {
                    assert_eq!(store.remaining(u), whole.remaining(u), "user {u}");
                }
            }
            assert_eq!(users, 500);
        }
        // A cluster's ownership is not owner_of's: the shards keep exactly
        // the users it gives them, from every section.
        let odd = |u: u32, i: usize| (u % 2) as usize == i;
        for i in 0..2 {
            let (b, _) = load(&path, ShardId(i), 2, false, |u| odd(u, i)).unwrap();
            let store = b.build(Default::default());
            assert_eq!(
                store.users(),
                SPEC.user_ids().filter(|&u| odd(u, i)).count()
            );
            for u in SPEC.user_ids() {
                let want = if odd(u, i) { whole.remaining(u) } else { None };
                assert_eq!(store.remaining(u), want, "user {u}");
            }
        }
    }

    #[test]
    fn a_mapped_store_pages_like_a_loaded_one_and_unmaps_when_dropped() {
        let path = file("drop.snap", &packed(2));
        let pool = || crate::feed::Pool::new([1, 2, 3, 999_999]);
        let whole = synthetic_store(&SPEC, |u| owner_of(u, 2).0 == 1);
        let mut loaded = whole.build(pool());
        let (b, _) = load(&path, ShardId(1), 2, true, |u| owner_of(u, 2).0 == 1).unwrap();
        let mut mapped = b.build(pool());
        assert!(mapped.items_mapped());
        assert!(crate::mapped::is_mapped(&path), "the items are mapped");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..4 {
            for u in SPEC.user_ids() {
                let size = 3 + (u as usize + round) % 7;
                let x = loaded.next_page(u, size, &mut a);
                let y = mapped.next_page(u, size, &mut b);
                assert_eq!((x, &a), (y, &b), "user {u}, round {round}");
            }
        }
        assert_eq!(loaded.counters(), mapped.counters());
        drop(mapped);
        assert!(
            !crate::mapped::is_mapped(&path),
            "dropping the store unmaps"
        );
    }

    #[test]
    fn damage_is_found_and_named() {
        let good = packed(2);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..40].to_vec(), "shorter than its header"),
            (
                good[..good.len() - 9].to_vec(),
                "beyond the end of the file",
            ),
            (
                {
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 20] ^= 1;
                    b
                },
                "section 1 checksum mismatch",
            ),
            (
                {
                    let mut b = good.clone();
                    b[20] ^= 1;
                    b
                },
                "header checksum mismatch",
            ),
            (
                {
                    let mut b = good.clone();
                    b[HEADER + 3] ^= 1;
                    b
                },
                "section table checksum mismatch",
            ),
        ];
        for (bytes, want) in cases {
            let path = file("bad.snap", &bytes);
            // Each shard checks the sections it reads: some shard fails,
            // on the mapped path (2 shards) and the copying one (1, 3).
            for shards in [2, 1, 3] {
                let e = (0..shards)
                    .find_map(|i| load(&path, ShardId(i), shards, true, |_| true).err())
                    .expect("damage found")
                    .to_string();
                assert!(e.contains(want) && e.contains("bad.snap"), "{want}: {e}");
            }
        }
        // A section whose checksum holds but whose table names items beyond
        // it (a bug in the writer, say) is refused too, not served.
        let mut b = good.clone();
        let (table, offset) = (HEADER, le64(&good, HEADER) as usize);
        let slot = (0..)
            .map(|k| offset + k * ENTRY)
            .find(|&at| le64(&b, at + 8) != u64::MAX)
            .unwrap();
        b[slot + 8..slot + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let s = (
            offset,
            le64(&good, table + 16) as usize * ENTRY + le64(&good, table + 24) as usize * 4,
        );
        let crc = crc32c::crc32c(&b[s.0..s.0 + s.1]);
        b[table + 32..table + 36].copy_from_slice(&crc.to_le_bytes());
        let tcrc = crc32c::crc32c(&b[table..table + 2 * TABLE_ENTRY]);
        b[table + 2 * TABLE_ENTRY..table + 2 * TABLE_ENTRY + 4]
            .copy_from_slice(&tcrc.to_le_bytes());
        let path = file("inconsistent.snap", &b);
        for shards in [2, 1] {
            let e = load(&path, ShardId(0), shards, true, |_| true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("section 0 is inconsistent"), "{e}");
        }
        // Only regular files are mapped.
        let e = load(Path::new("/dev/zero"), ShardId(0), 1, true, |_| true).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
