//! A state directory written by a tool rather than by a running server
//! (`shardfeed relayout`): one checkpoint per shard, in the format the
//! server writes ([`Checkpoint`](super::Checkpoint)), as if a run of
//! generation 1 had checkpointed every shard and stopped. A server started
//! on it (`serve --state-dir DIR`) recovers it like its own: its run is
//! generation 2, its first checkpoints drop these files.
//!
//! Plain blocking std I/O (a command, not the server): each file is written
//! in 1 MiB pieces to `.tmp`, fdatasync'ed and renamed; the directory is
//! fsync'ed once all are in place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{
    checkpoint_sectors, encode_records_sector, seal_checkpoint, FileHeader, FileKind, FileName,
    SECTOR,
};
use super::writer::{new_salt, now_ms};
use super::Progress;

/// The generation of the files written here.
pub const SEEDED_GENERATION: u64 = 1;
/// Their write unit: the usual logical block size (the server reads any).
const UNIT: usize = 4096;
/// Bytes encoded before each write.
const PIECE: usize = 1 << 20;

/// What [`seed_checkpoints`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seeded {
    pub files: Vec<PathBuf>,
    pub entries: u64,
    pub bytes: u64,
}

/// Writes into `dir` (which must exist and hold no journal files) one
/// checkpoint per shard: shard `s` of `parts.len()` holds `parts[s]` (each
/// user at most once in all parts; the order is free: each part is sorted
/// here by version, then user, so that sectors are full). `Err` names the
/// file and what failed.
pub fn seed_checkpoints(dir: &Path, parts: &mut [Vec<Progress>]) -> Result<Seeded, String> {
    let shards = parts.len();
    assert!((1..=u32::MAX as usize).contains(&shards));
    let mut seeded = Seeded::default();
    for (shard, part) in parts.iter_mut().enumerate() {
        part.sort_unstable_by_key(|p| (p.version, p.user));
        let header = FileHeader {
            kind: FileKind::Checkpoint,
            unit: UNIT as u32,
            shard: shard as u32,
            shards: shards as u32,
            generation: SEEDED_GENERATION,
            seq: 0,
            first_lsn: 0,
            salt: new_salt(),
            created_ms: now_ms(),
        };
        let name = |temp: bool| {
            let (generation, shard, seq) = (SEEDED_GENERATION, shard as u32, 0);
            if temp {
                FileName::CheckpointTemp {
                    generation,
                    shard,
                    seq,
                }
            } else {
                FileName::Checkpoint {
                    generation,
                    shard,
                    seq,
                }
            }
            .to_string()
        };
        let (tmp, path) = (dir.join(name(true)), dir.join(name(false)));
        if path.exists() {
            return Err(format!(
                "{} exists already: not written over",
                path.display()
            ));
        }
        let bytes = write_checkpoint(&tmp, &header, part)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
        seeded.files.push(path);
        seeded.entries += part.len() as u64;
        seeded.bytes += bytes;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync the directory {}: {e}", dir.display()))?;
    Ok(seeded)
}

/// One checkpoint file: header unit, records sectors (one version each),
/// seal, pad sectors to a whole unit; synced. Returns its length.
fn write_checkpoint(
    path: &Path,
    header: &FileHeader,
    entries: &[Progress],
) -> std::io::Result<u64> {
    let mut file = File::options().write(true).create_new(true).open(path)?;
    let mut buf = vec![0u8; UNIT];
    header.encode(&mut buf);
    let mut written = 0u64;
    let mut index = 0u64;
    for (v, chunk) in checkpoint_sectors(entries) {
        let at = buf.len();
        buf.resize(at + SECTOR, 0);
        encode_records_sector(&mut buf[at..], header.salt, index, v, chunk);
        index += 1;
        if buf.len() >= PIECE {
            file.write_all(&buf)?;
            written += buf.len() as u64;
            buf.clear();
        }
    }
    // The file so far is whole units (PIECE is one), so padding the buffer
    // to a unit pads the file.
    seal_checkpoint(&mut buf, header, index, entries.len() as u64);
    file.write_all(&buf)?;
    written += buf.len() as u64;
    file.sync_data()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::format::build_checkpoint;
    use super::*;

    fn p(user: u32, served: u32, version: u64) -> Progress {
        Progress {
            user,
            served,
            version,
            prefix: (served as u64) * 7,
        }
    }

    /// Byte for byte what the in-memory builder (the server's layout) makes,
    /// across a piece boundary and with two versions.
    #[test]
    fn seeded_checkpoints_are_the_servers_layout() {
        let dir = std::env::temp_dir().join(format!("shardfeed-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut parts: Vec<Vec<Progress>> = vec![
            (0..70_000u32)
                .map(|u| p(u * 2, u % 50, 1 + (u % 3 == 0) as u64))
                .collect(),
            vec![],
        ];
        let seeded = seed_checkpoints(&dir, &mut parts).unwrap();
        assert_eq!(seeded.entries, 70_000);
        assert_eq!(seeded.files.len(), 2);
        for (s, part) in parts.iter().enumerate() {
            let bytes = std::fs::read(&seeded.files[s]).unwrap();
            let h = FileHeader::decode(&bytes).unwrap();
            assert_eq!((h.shard, h.shards, h.generation), (s as u32, 2, 1));
            assert_eq!(bytes, build_checkpoint(&h, part), "shard {s}");
        }
        // Not over existing files.
        assert!(seed_checkpoints(&dir, &mut parts).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
