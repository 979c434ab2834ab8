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
//! A server with N shards reads only its own section (one `pread` of the
//! table, one of the items): no other shard's bytes. With another shard
//! count every shard reads every section and keeps the users it owns
//! (correct, slower; the start says so). Every section's CRC is checked
//! before it is used; the version is the input's (a TSV file's checksum),
//! so packing a file keeps its users' progress.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::feed::StoreBuilder;
use crate::load::{out_of_memory, LoadError};
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

/// The header and table of a snapshot: its version and sections.
fn open(path: &Path) -> Result<(File, u64, Vec<Section>), LoadError> {
    let bad = |m: &str| LoadError::whole(path, format!("not a usable snapshot: {m}"));
    let file = File::open(path).map_err(|e| LoadError::io(path, &e))?;
    let len = file.metadata().map_err(|e| LoadError::io(path, &e))?.len();
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
        if !fits {
            return Err(bad(&format!(
                "section {i} lies beyond the end of the file (cut short?)"
            )));
        }
    }
    Ok((file, version, sections))
}

/// Reads one section into a builder, checking its checksum.
fn read_section(
    file: &File,
    path: &Path,
    i: usize,
    s: &Section,
) -> Result<StoreBuilder, LoadError> {
    let slots: Vec<Entry> = read_vec(file, s.offset, s.slots as usize, path)?;
    let items: Vec<u32> = read_vec(
        file,
        s.offset + s.slots * ENTRY as u64,
        s.items as usize,
        path,
    )?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(entry_bytes(&slots)), item_bytes(&items));
    if crc != s.crc {
        return Err(LoadError::whole(
            path,
            format!("not a usable snapshot: section {i} checksum mismatch (damaged file)"),
        ));
    }
    let n = items.len();
    let table = UserTable::from_raw_slots(slots, s.users as usize, n).ok_or_else(|| {
        LoadError::whole(
            path,
            format!("not a usable snapshot: section {i} is inconsistent"),
        )
    })?;
    Ok(StoreBuilder::from_parts(table, items))
}

/// Loads shard `shard` of `shards` from the snapshot at `path`: its own
/// section if the snapshot was packed for `shards`, else the users that
/// `owns` accepts from every section. Returns the builder and the version.
pub fn load(
    path: &Path,
    shard: ShardId,
    shards: usize,
    owns: impl Fn(u32) -> bool,
) -> Result<(StoreBuilder, u64), LoadError> {
    let (file, version, sections) = open(path)?;
    if sections.len() == shards {
        let builder = read_section(&file, path, shard.0, &sections[shard.0])?;
        return Ok((builder, version));
    }
    if shard.0 == 0 {
        crate::log_line!(
            "{}: packed for {} shards, serving with {shards}: every shard reads every section \
             (pack with --shards {shards} for the fast path)",
            path.display(),
            sections.len()
        );
    }
    let mut parts = Vec::with_capacity(sections.len());
    for (i, s) in sections.iter().enumerate() {
        parts.push(read_section(&file, path, i, s)?);
    }
    let mut users = 0;
    let mut items = 0;
    for p in &parts {
        let t = p.parts().0;
        for (user, e) in (0..t.slots()).filter_map(|i| t.at(i)) {
            if owns(user) {
                users += 1;
                items += e.len as usize;
            }
        }
    }
    let mut builder = StoreBuilder::try_with_capacity(users, items)
        .map_err(|e| LoadError::whole(path, out_of_memory(e, users, items)))?;
    for p in &parts {
        let (t, all) = p.parts();
        for (user, e) in (0..t.slots()).filter_map(|i| t.at(i)) {
            if owns(user) {
                let start = e.start as usize;
                builder
                    .push_user(user, all[start..start + e.len as usize].iter().copied())
                    .map_err(|d| LoadError::whole(path, format!("user {} appears twice", d.0)))?;
            }
        }
    }
    Ok((builder, version))
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
        for shards in [1, 2, 3] {
            let mut users = 0;
            for i in 0..shards {
                let (b, version) =
                    load(&path, ShardId(i), shards, |u| owner_of(u, shards).0 == i).unwrap();
                assert_eq!(version, 0xfeed);
                let store = b.build(Default::default());
                users += store.users();
                for u in SPEC.user_ids().filter(|&u| owner_of(u, shards).0 == i) {
                    assert_eq!(store.remaining(u), whole.remaining(u), "user {u}");
                }
            }
            assert_eq!(users, 500);
        }
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
            // Each shard checks the sections it reads: some shard fails.
            let e = (0..2)
                .find_map(|i| load(&path, ShardId(i), 2, |_| true).err())
                .expect("damage found")
                .to_string();
            assert!(e.contains(want) && e.contains("bad.snap"), "{want}: {e}");
        }
    }
}
