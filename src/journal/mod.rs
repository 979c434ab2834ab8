//! Progress that survives restarts: one journal per shard plus periodic
//! checkpoints under `--state-dir`. This module knows files and bytes; it
//! knows nothing of HTTP or of the store. The shard appends a [`Progress`]
//! after each page, awaits [`ShardJournal::durable`] under `--fsync always`,
//! and feeds its users to a [`Checkpoint`] now and then; start-up calls
//! [`recover`] before the executors start.
//!
//! # Layout
//! - [`format`](mod@format): names, headers, sectors, decoders (pure bytes).
//! - `recover`: start-up: read every file, keep the latest progress per user.
//! - `writer`: [`ShardJournal`] and its background writer task.
//! - `checkpoint`: [`Checkpoint`] and the clean-up after one.
//! - `seed`: [`seed_checkpoints`]: a state directory written by a tool
//!   (`shardfeed relayout`) in the same format, blocking std I/O.
//!
//! # On-disk format (one page)
//!
//! ```text
//! DIR/LOCK                                       flock(LOCK_EX) of the running process
//! DIR/journal-GGGGGGGG-SSSS-NNNNNNNNNN.log       segment N of shard S, run ("generation") G
//! DIR/checkpoint-GGGGGGGG-SSSS-NNNNNNNNNN.ckpt   checkpoint N of shard S, run G
//! DIR/checkpoint-…ckpt.tmp                       a checkpoint being written: never read, removed at start
//! DIR/free-SSSS-NNNNNNNNNN.log                   a dropped segment kept for reuse by shard S: never read
//! anything else                                  ignored, and named in the start-up report
//! ```
//!
//! Every start is a new generation (the largest generation of a file read,
//! plus one, skipping any generation another file's name claims, so that a
//! junk file named like ours can neither meet a new file's name nor push
//! the generation to the end of its range), so a run never appends to a
//! file of an earlier run, and a run with another `--shards` writes beside
//! the old files without touching them.
//!
//! Both kinds of file start with a header in their first write unit (`unit`:
//! 512 bytes, or the device's logical block size if larger), followed by
//! 512-byte sectors. All integers are little-endian.
//!
//! ```text
//! header:  0 magic "SFJRNL01" | "SFCKPT01"   8 crc32c(bytes 12..512)   12 format=1
//!         16 unit   20 shard   24 shards   28 0   32 generation   40 seq
//!         48 first_lsn (segment: LSN of its first record; checkpoint: first LSN not covered)
//!         56 salt (random per use of the file)   64 created (ms since epoch)   72.. zero
//! sector:  0 crc32c(bytes 4..512)   4 kind (1 records, 2 pad, 3 seal; 0 never)   5 count
//!          6 0   8 salt   16 lsn   24 version (records) | total (checkpoint seal) | 0
//!         32 count x record, then zeros to 512
//! record: user u32, served u32, prefix u64   (16 bytes; its version is the sector's)
//! ```
//!
//! A sector holds up to 30 records of one feed version. Segment sectors
//! carry consecutive LSNs: a sector's `lsn` is its first record's, and the
//! next sector's is `lsn + count` (pad and seal sectors carry the next LSN).
//! Checkpoint sectors carry their index (0, 1, 2, ...) instead, and the seal
//! carries the number of entries.
//!
//! Writing rules:
//! - Every write covers whole units at a unit-aligned offset, past all
//!   earlier writes: a sector, once written, is never written again, so a
//!   torn write can only damage sectors that held nothing acknowledged. A
//!   group commit with less than a unit of records pads the unit (unused
//!   record slots, pad sectors) and the next write starts at the next unit;
//!   that padding counts in the bytes written.
//! - A new segment is made as a free file, preallocated (`fallocate`),
//!   written with zeros and synced (so that later fdatasyncs only flush
//!   data, not ext4's conversion of unwritten extents), then used like a
//!   recycled one. A record is
//!   acknowledged only after its segment's header and directory entry are
//!   durable. A rotation or a clean stop writes a seal sector.
//! - After a write or sync error the segment is abandoned: the records not
//!   yet durable are written again, at their old LSNs, into a new segment.
//!   Replay applies segments in order, so the repeat is harmless.
//! - A checkpoint is written to a `.tmp` file, fdatasync'ed, renamed, and
//!   the directory fsync'ed; only then are the segments it covers dropped
//!   (renamed to `free-*` for reuse, whose old sectors keep their old salt,
//!   or deleted).
//!
//! Reading a segment stops at the first sector that is not the next valid
//! sector of this use of the file, and names why ([`format::Ending`]): a
//! seal (clean end), end of file, an unwritten zero tail (preallocated
//! space: the usual end after a crash), a torn sector (file ends mid-sector),
//! a bad checksum (torn last write, or corruption when valid sectors follow:
//! those are dropped too), a stale sector (another salt: left by an older
//! use of a recycled file), a sector out of sequence, a malformed sector, or
//! a read error. A file whose header is not valid, or does not match its
//! name, is junk and ignored. A checkpoint's sectors are independent (one
//! entry per user): a bad one loses only its own entries.
//!
//! Replay: per generation, oldest first; per shard of that generation, its
//! newest checkpoint, then its segments in order, records with an LSN below
//! the checkpoint's `first_lsn` skipped. For every user the last record
//! replayed wins, so a later generation wins over an earlier one, and a new
//! shard layout re-owns users simply by where the caller sends them.
//!
//! When files go: after a checkpoint, its shard's covered segments and older
//! checkpoints; and once every shard of the current generation has a
//! checkpoint (each holds all its users' progress, the recovered progress
//! included), every file of earlier generations.

mod checkpoint;
pub mod format;
mod recover;
mod seed;
mod syncs;
mod writer;

pub use checkpoint::Checkpoint;
pub use recover::{recover, recover_existing, DirLock, FileReport, Recovery, RecoveryReport};
pub use seed::{seed_checkpoints, Seeded, SEEDED_GENERATION};
pub use writer::{Durable, JournalConfig, JournalStats, ShardJournal};

use std::rc::Rc;
use std::str::FromStr;

/// One user's progress: `served` items of feed `version`, whose first
/// `served` items hash to `prefix` (so that a changed feed can keep the
/// progress if its first `served` items are the same: the prefix rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub user: u32,
    pub served: u32,
    pub version: u64,
    pub prefix: u64,
}

/// A record's sequence number in its shard's journal for this run
/// (0, 1, 2, ...). Only meaningful for the [`ShardJournal`] that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// What `append` returns after `close`: never durable.
    pub const CLOSED: Lsn = Lsn(u64::MAX);
}

/// When progress is made durable (`--fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Every record is written and fdatasync'ed as soon as possible; all
    /// records waiting when the writer runs share one write and one sync,
    /// and the next batch is written while that sync is in flight
    /// (pipelined group commit, `syncs.rs`). The shard answers after
    /// [`ShardJournal::durable`].
    Always,
    /// Written within `write_every` (100 ms) and synced within `sync_every`
    /// (500 ms) of being appended: a crash loses at most the last ~0.5 s
    /// (plus that write's and sync's own time) while the disk works.
    #[default]
    EverySec,
    /// Written within `write_every`, never synced (except at close and for
    /// checkpoints): survives the process dying, not the machine.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<FsyncPolicy, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "never" => Ok(FsyncPolicy::Never),
            _ => Err(format!("--fsync {s:?}: expected always, everysec or never")),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::Never => "never",
        })
    }
}

/// Why a record is not (yet) durable. Small and cheap to clone: it is
/// returned to every waiting answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalError {
    /// Writing or syncing failed (disk full, I/O error) and has not worked
    /// since. The record stays queued and is written when writes work again;
    /// meanwhile the shard serves without waiting.
    Degraded(Rc<str>),
    /// The record was dropped: the in-memory queue was full while writes
    /// kept failing. The next checkpoint restores what it lost.
    Dropped,
    /// The journal was closed.
    Closed,
    /// A checkpoint is already being written on this shard.
    Busy,
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Degraded(why) => write!(f, "journal degraded: {why}"),
            JournalError::Dropped => write!(f, "record dropped (journal queue full)"),
            JournalError::Closed => write!(f, "journal closed"),
            JournalError::Busy => write!(f, "a checkpoint is already running"),
        }
    }
}

impl std::error::Error for JournalError {}
