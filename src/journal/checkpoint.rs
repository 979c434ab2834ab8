//! A checkpoint: every user's progress of one shard, written to a `.tmp`
//! file through glommio (O_DIRECT writes of up to 64 KiB, fdatasync,
//! rename, directory fsync), after which the segments and checkpoints it
//! covers are dropped. The shard feeds it in chunks and yields between them;
//! `add` awaits a write whenever 64 KiB are encoded, so its memory stays
//! bounded whatever the disk's speed.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::format::{
    encode_pad, encode_records_sector, encode_seal, FileHeader, FileKind, FileName, PER_SECTOR,
    SECTOR,
};
use super::writer::{new_salt, now_ms, reason, short_write, Inner};
use super::{JournalError, Progress};

/// Largest checkpoint write.
const CHECKPOINT_WRITE: usize = 64 * 1024;
/// Versions a checkpoint keeps an open sector for at once (users of mixed
/// versions, e.g. during a reload, still fill their sectors).
const OPEN_VERSIONS: usize = 4;

/// An open sector of a checkpoint, one per version in use.
struct OpenSector {
    version: u64,
    count: usize,
    records: [Progress; PER_SECTOR],
}

struct CheckpointFile {
    file: DmaFile,
    tmp: PathBuf,
    unit: u64,
    pos: u64,
}

/// A checkpoint being written: [`ShardJournal::checkpoint`](super::ShardJournal::checkpoint), then `add` the
/// progress of every user the shard owns (each once, in chunks), then
/// [`Checkpoint::finish`]. Dropped unfinished, it leaves only a `.tmp` file
/// that the next start removes.
pub struct Checkpoint {
    inner: Rc<Inner>,
    start_lsn: u64,
    seq: u64,
    holds_slot: bool,
    error: Option<JournalError>,
    file: Option<CheckpointFile>,
    /// Encoded sectors not yet written.
    staging: Vec<u8>,
    open: Vec<OpenSector>,
    sectors: u64,
    entries: u64,
    salt: u64,
}

impl Checkpoint {
    pub(super) fn new(inner: Rc<Inner>, start_lsn: u64, seq: u64, busy: bool) -> Checkpoint {
        Checkpoint {
            inner,
            start_lsn,
            seq,
            holds_slot: !busy,
            error: busy.then_some(JournalError::Busy),
            file: None,
            staging: Vec::new(),
            open: Vec::with_capacity(OPEN_VERSIONS),
            sectors: 0,
            entries: 0,
            salt: new_salt(),
        }
    }

    /// Adds users' progress. Encodes into memory and writes whenever 64 KiB
    /// are ready (awaiting that write: memory stays bounded whatever the
    /// disk's speed).
    pub async fn add(&mut self, chunk: &[Progress]) -> Result<(), JournalError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        for p in chunk {
            self.push(p);
        }
        if self.staging.len() >= CHECKPOINT_WRITE {
            self.write_staged(false).await?;
        }
        Ok(())
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.entries + self.open.iter().map(|o| o.count as u64).sum::<u64>()
    }

    fn push(&mut self, p: &Progress) {
        let i = match self.open.iter().position(|o| o.version == p.version) {
            Some(i) => i,
            None => {
                if self.open.len() == OPEN_VERSIONS {
                    let o = self.open.remove(0);
                    self.encode(&o);
                }
                self.open.push(OpenSector {
                    version: p.version,
                    count: 0,
                    records: [Progress::default(); PER_SECTOR],
                });
                self.open.len() - 1
            }
        };
        let o = &mut self.open[i];
        o.records[o.count] = *p;
        o.count += 1;
        if o.count == PER_SECTOR {
            let o = self.open.remove(i);
            self.encode(&o);
        }
    }

    fn encode(&mut self, o: &OpenSector) {
        let at = self.staging.len();
        self.staging.resize(at + SECTOR, 0);
        encode_records_sector(
            &mut self.staging[at..],
            self.salt,
            self.sectors,
            o.version,
            &o.records[..o.count],
        );
        self.sectors += 1;
        self.entries += o.count as u64;
    }

    fn fail(&mut self, why: Rc<str>) -> JournalError {
        self.inner.st.borrow_mut().counters.errors += 1;
        let e = JournalError::Degraded(why);
        self.error = Some(e.clone());
        e
    }

    /// Writes the staged whole units (all of them, padded, if `last`).
    async fn write_staged(&mut self, last: bool) -> Result<(), JournalError> {
        if self.file.is_none() {
            let f = self.create().await.map_err(|why| self.fail(why))?;
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened");
        let unit = f.unit as usize;
        if last {
            let mut at = self.staging.len();
            self.staging.resize(at.div_ceil(unit) * unit, 0);
            while at < self.staging.len() {
                encode_pad(&mut self.staging[at..at + SECTOR], self.salt, self.sectors);
                at += SECTOR;
            }
        }
        let n = self.staging.len() / unit * unit;
        if n == 0 {
            return Ok(());
        }
        let mut buf = f.file.alloc_dma_buffer(n);
        buf.as_bytes_mut().copy_from_slice(&self.staging[..n]);
        let r = f.file.write_at(buf, f.pos).await;
        let tmp = f.tmp.clone();
        match r {
            Ok(w) if w == n => {}
            Ok(_) => return Err(self.fail(short_write(&tmp))),
            Err(e) => return Err(self.fail(reason("write", &tmp, e))),
        }
        let f = self.file.as_mut().expect("opened");
        f.pos += n as u64;
        self.staging.drain(..n);
        Ok(())
    }

    async fn create(&self) -> Result<CheckpointFile, Rc<str>> {
        let cfg = &self.inner.cfg;
        let name = FileName::CheckpointTemp {
            generation: cfg.generation,
            shard: self.inner.shard as u32,
            seq: self.seq,
        };
        let tmp = self.inner.dir.join(name.to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&tmp)
            .await
            .map_err(|e| reason("create", &tmp, e))?;
        let unit = file.alignment().max(SECTOR as u64);
        let header = FileHeader {
            kind: FileKind::Checkpoint,
            unit: unit as u32,
            shard: self.inner.shard as u32,
            shards: cfg.shards as u32,
            generation: cfg.generation,
            seq: self.seq,
            first_lsn: self.start_lsn,
            salt: self.salt,
            created_ms: now_ms(),
        };
        let mut buf = file.alloc_dma_buffer(unit as usize);
        header.encode(buf.as_bytes_mut());
        match file.write_at(buf, 0).await {
            Ok(n) if n as u64 == unit => {}
            Ok(_) => return Err(short_write(&tmp)),
            Err(e) => return Err(reason("write", &tmp, e)),
        }
        Ok(CheckpointFile {
            file,
            tmp,
            unit,
            pos: unit,
        })
    }

    /// Makes the checkpoint durable (seal, fdatasync, rename, directory
    /// fsync), then drops what it covers: this shard's older segments
    /// (recycled or deleted) and checkpoints, and, once every shard of this
    /// generation has a checkpoint, all files of earlier generations.
    pub async fn finish(mut self) -> Result<(), JournalError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let open = std::mem::take(&mut self.open);
        for o in &open {
            self.encode(o);
        }
        let at = self.staging.len();
        self.staging.resize(at + SECTOR, 0);
        encode_seal(
            &mut self.staging[at..],
            self.salt,
            self.sectors,
            self.entries,
        );
        self.write_staged(true).await?;
        let f = self.file.take().expect("written");
        let name = FileName::Checkpoint {
            generation: self.inner.cfg.generation,
            shard: self.inner.shard as u32,
            seq: self.seq,
        };
        let path = self.inner.dir.join(name.to_string());
        let bytes = f.pos;
        let done = async {
            f.file
                .fdatasync()
                .await
                .map_err(|e| reason("fdatasync", &f.tmp, e))?;
            let _ = f.file.close().await;
            glommio::io::rename(&f.tmp, &path)
                .await
                .map_err(|e| reason("rename", &path, e))?;
            let dir = Directory::open(&self.inner.dir)
                .await
                .map_err(|e| reason("open directory", &self.inner.dir, e))?;
            dir.sync()
                .await
                .map_err(|e| reason("fsync directory", &self.inner.dir, e))?;
            let _ = dir.close().await;
            Ok::<(), Rc<str>>(())
        }
        .await;
        if let Err(why) = done {
            return Err(self.fail(why));
        }

        // Durable: what it covers can go.
        let (renames, removes) = {
            let mut st = self.inner.st.borrow_mut();
            let mut renames = Vec::new();
            let mut removes = Vec::new();
            let last = st.segments.len().saturating_sub(1);
            let covered: Vec<usize> = (0..last)
                .filter(|&i| st.segments[i].end_lsn <= self.start_lsn)
                .collect();
            let mut room = self.inner.cfg.keep_free.saturating_sub(st.free.len());
            for &i in covered.iter().rev() {
                let seg = st.segments.remove(i);
                if room > 0 {
                    room -= 1;
                    renames.push((seg.path, self.inner.new_free_path(&mut st)));
                } else {
                    removes.push(seg.path);
                }
            }
            if let Some((_, old)) = st.last_checkpoint.replace((Instant::now(), path.clone())) {
                removes.push(old);
            }
            st.counters.checkpoints += 1;
            st.counters.last_checkpoint_bytes = bytes;
            st.bytes_at_checkpoint = st.counters.bytes;
            st.appended_at_checkpoint = st.counters.appended;
            if st.lost.is_some_and(|(_, to)| to <= self.start_lsn) {
                st.lost = None;
            }
            (renames, removes)
        };
        let dir = self.inner.dir.clone();
        let generation = self.inner.cfg.generation;
        let shards = self.inner.cfg.shards as u32;
        let freed = glommio::executor()
            .spawn_blocking(move || clean_up(&dir, renames, removes, generation, shards))
            .await;
        self.inner.st.borrow_mut().free.extend(freed);
        Ok(())
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if self.holds_slot {
            self.inner.st.borrow_mut().checkpointing = false;
        }
    }
}

/// After a checkpoint (on a blocking thread): recycle and remove what it
/// covers; if every shard of `generation` has a checkpoint, remove every
/// file of earlier generations. Returns the free files made.
fn clean_up(
    dir: &Path,
    renames: Vec<(PathBuf, PathBuf)>,
    removes: Vec<PathBuf>,
    generation: u64,
    shards: u32,
) -> Vec<PathBuf> {
    let sync_dir = || {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    };
    let mut freed = Vec::new();
    for (from, to) in renames {
        if std::fs::rename(&from, &to).is_ok() {
            freed.push(to);
        } else {
            let _ = std::fs::remove_file(&from);
        }
    }
    for path in removes {
        let _ = std::fs::remove_file(path);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        sync_dir();
        return freed;
    };
    let mut have = vec![false; shards as usize];
    let mut older = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().and_then(FileName::parse) else {
            continue;
        };
        match name {
            FileName::Checkpoint {
                generation: g,
                shard,
                ..
            } if g == generation && shard < shards => have[shard as usize] = true,
            n if n.generation().is_some_and(|g| g < generation) => older.push(e.path()),
            _ => {}
        }
    }
    if have.iter().all(|&h| h) && !older.is_empty() {
        // The other shards' checkpoint renames must be durable before the
        // files they replace go.
        sync_dir();
        for path in older {
            let _ = std::fs::remove_file(path);
        }
    }
    sync_dir();
    freed
}
