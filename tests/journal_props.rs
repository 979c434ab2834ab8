//! Properties of the journal's format and recovery: whatever is cut off or
//! flipped, recovery returns exactly a valid prefix of what was written,
//! never a record that was not written, never one after a damaged sector of
//! the same file, and never crashes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use shardfeed::journal::format::{
    build_checkpoint, build_segment, decode_segment, FileHeader, FileKind, FileName, SECTOR,
};
use shardfeed::journal::{recover, Progress};
use shardfeed::shard::owner_of;

fn progress() -> impl Strategy<Value = Progress> {
    (0u32..500, any::<u32>(), 1u64..4, any::<u64>()).prop_map(|(user, served, version, prefix)| {
        Progress {
            user,
            served,
            version,
            prefix,
        }
    })
}

fn header(unit: u32, salt: u64) -> FileHeader {
    FileHeader {
        kind: FileKind::Segment,
        unit,
        shard: 0,
        shards: 1,
        generation: 1,
        seq: 0,
        first_lsn: 0,
        salt,
        created_ms: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The segment encoder's output (the writer's own encoder), cut at any
    /// byte and with any bytes flipped, decodes to exactly the records of
    /// the whole sectors before the first damage.
    #[test]
    fn damaged_segments_decode_to_exactly_a_valid_prefix(
        batches in prop::collection::vec(prop::collection::vec(progress(), 1..70), 0..12),
        unit in prop::sample::select(vec![512u32, 4096]),
        seal in any::<bool>(),
        zero_tail in 0usize..6,
        cut in prop::option::of(any::<prop::sample::Index>()),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        salt in any::<u64>(),
    ) {
        let h = header(unit, salt);
        let refs: Vec<&[Progress]> = batches.iter().map(|b| b.as_slice()).collect();
        let written: Vec<Progress> = batches.iter().flatten().copied().collect();
        let clean = {
            let mut b = build_segment(&h, &refs, seal);
            b.resize(b.len() + zero_tail * SECTOR, 0);
            b
        };
        let (_, all, _) = decode_segment(&clean, 0).unwrap();
        prop_assert_eq!(&all, &written, "round trip");

        let mut bytes = clean.clone();
        let cut = cut.map_or(bytes.len(), |c| c.index(bytes.len() + 1));
        bytes.truncate(cut);
        for (at, x) in &flips {
            if bytes.is_empty() { break; }
            let at = at.index(bytes.len());
            bytes[at] ^= x;
        }
        // The first byte that differs (two flips of one byte may cancel), in
        // the header sector and after the header unit. Bytes between the
        // header sector and the end of the first unit are never read.
        let unit = unit as usize;
        let differs = |from: usize, to: usize| {
            (from..to.min(bytes.len())).find(|&i| bytes[i] != clean[i])
        };
        let header_ok = cut >= SECTOR && differs(0, SECTOR).is_none();
        let damaged = differs(unit, bytes.len()).unwrap_or(usize::MAX);

        // The expected prefix: records of the whole, undamaged sectors of
        // the clean file before the first damage and the cut.
        let end = cut.min(damaged);
        let mut expect = 0usize;
        let mut at = unit;
        while at + SECTOR <= end {
            let s = &clean[at..at + SECTOR];
            match s[4] {
                1 => expect += s[5] as usize,
                2 => {}
                _ => break, // a seal, or never written
            }
            at += SECTOR;
        }
        match decode_segment(&bytes, 0) {
            Ok((_, got, _)) => {
                prop_assert!(header_ok, "a damaged header must refuse the file");
                let (_, _, ending) = decode_segment(&bytes, 0).unwrap();
                prop_assert_eq!(&got[..], &written[..expect], "cut {} damaged {} len {} ending {:?}", cut, damaged, clean.len(), ending);
            }
            Err(_) => prop_assert!(!header_ok, "an intact header is accepted"),
        }
    }
}

/// One (generation, shard) of a simulated history: its records in order,
/// and optionally a checkpoint taken at an LSN.
#[derive(Debug, Clone)]
struct Stream {
    records: Vec<Progress>,
    /// Segment boundaries (record counts per segment).
    split: Vec<usize>,
    checkpoint_at: Option<usize>,
}

fn history() -> impl Strategy<Value = (Vec<Stream>, Vec<Stream>)> {
    let stream = |shards: usize, shard: usize| {
        (
            prop::collection::vec(progress(), 0..300),
            prop::collection::vec(1usize..120, 1..4),
            prop::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(move |(records, split, ck)| {
                let records: Vec<Progress> = records
                    .into_iter()
                    .filter(|p| owner_of(p.user, shards).0 == shard)
                    .collect();
                let checkpoint_at = ck.map(|i| i.index(records.len() + 1));
                Stream {
                    records,
                    split,
                    checkpoint_at,
                }
            })
    };
    (
        (stream(2, 0), stream(2, 1)).prop_map(|(a, b)| vec![a, b]),
        (stream(3, 0), stream(3, 1), stream(3, 2)).prop_map(|(a, b, c)| vec![a, b, c]),
    )
}

/// Writes a generation's files; returns, per shard, the records recovery
/// may use given `cut_one` (a segment truncated to `cut` bytes).
fn write_generation(
    dir: &std::path::Path,
    generation: u64,
    streams: &[Stream],
    cut: Option<(usize, usize, usize)>,
) -> Vec<(Option<Vec<Progress>>, Vec<Progress>)> {
    let shards = streams.len() as u32;
    let mut out = Vec::new();
    for (shard, s) in streams.iter().enumerate() {
        let mut lsn = 0usize;
        let mut seq = 0;
        let mut tail = Vec::new();
        let start = s.checkpoint_at.unwrap_or(0);
        let mut split = s.split.iter().cycle();
        while lsn < s.records.len() || seq == 0 {
            let n = (*split.next().unwrap()).min(s.records.len() - lsn);
            let h = FileHeader {
                kind: FileKind::Segment,
                unit: 512,
                shard: shard as u32,
                shards,
                generation,
                seq,
                first_lsn: lsn as u64,
                salt: generation * 1000 + shard as u64 * 10 + seq,
                created_ms: 0,
            };
            let recs = &s.records[lsn..lsn + n];
            // One record per write here: each sector holds one record.
            let batches: Vec<&[Progress]> = recs.chunks(1).collect();
            let mut bytes = build_segment(&h, &batches, false);
            let mut usable = n;
            if let Some((g, sh, c)) = cut {
                if g as u64 == generation && sh == shard && seq == 0 {
                    bytes.truncate(c.min(bytes.len()));
                    usable = (bytes.len().saturating_sub(512) / SECTOR).min(n);
                    if bytes.len() < 512 {
                        usable = 0;
                    }
                }
            }
            let name = FileName::Segment {
                generation,
                shard: shard as u32,
                seq,
            };
            std::fs::write(dir.join(name.to_string()), &bytes).unwrap();
            for (i, r) in recs[..usable].iter().enumerate() {
                if lsn + i >= start {
                    tail.push(*r);
                }
            }
            lsn += n;
            seq += 1;
            if n == 0 {
                break;
            }
        }
        let ck = s.checkpoint_at.map(|at| {
            let mut m = BTreeMap::new();
            for r in &s.records[..at] {
                m.insert(r.user, *r);
            }
            let entries: Vec<Progress> = m.into_values().collect();
            let h = FileHeader {
                kind: FileKind::Checkpoint,
                unit: 512,
                shard: shard as u32,
                shards,
                generation,
                seq: 0,
                first_lsn: at as u64,
                salt: 77 + shard as u64,
                created_ms: 0,
            };
            let name = FileName::Checkpoint {
                generation,
                shard: shard as u32,
                seq: 0,
            };
            std::fs::write(dir.join(name.to_string()), build_checkpoint(&h, &entries)).unwrap();
            entries
        });
        out.push((ck, tail));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Two runs (2 shards, then 3), segments and checkpoints, one segment
    /// cut short: recovery gives every user the progress of the last record
    /// that survives, the later run winning.
    #[test]
    fn recovery_replays_generations_checkpoints_and_cut_segments(
        (first, second) in history(),
        cut in prop::option::of((1usize..=2, 0usize..2, 0usize..20_000)),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let one = write_generation(dir, 1, &first, cut);
        let two = write_generation(dir, 2, &second, cut);
        let superseded = two.iter().all(|(ck, _)| ck.is_some());
        let mut model = BTreeMap::new();
        let gens = if superseded { vec![two] } else { vec![one, two] };
        for generation in gens {
            for (ck, tail) in generation {
                for r in ck.iter().flatten().chain(tail.iter()) {
                    model.insert(r.user, *r);
                }
            }
        }
        let r = recover(dir).unwrap();
        let want: Vec<Progress> = model.into_values().collect();
        prop_assert_eq!(r.users, want, "{}", r.report);
        prop_assert_eq!(r.generation, 3);
    }
}
