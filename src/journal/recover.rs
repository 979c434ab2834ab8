//! Start-up: read every checkpoint and segment in the state directory,
//! whatever shard count wrote them, and keep the latest progress per user.
//!
//! Plain blocking std I/O on threads, before the executors start. Fast
//! because the work is in large sequential pieces: files are read in 1 MiB
//! chunks by a few threads at once and decoded straight into one vector per
//! file (no allocation per record); then all records, in replay order, are
//! scattered into 4096 buckets by the top bits of the user id (stable, two
//! threads), each bucket is sorted by user (stable, cache-sized) and only
//! the last record of each user is kept. No hash map is built.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::format::{
    CheckpointDecoder, FileHeader, FileKind, FileName, SegmentDecoder, PER_SECTOR, SECTOR,
};
use super::Progress;

/// Ignored files named one per line at start; the rest are counted.
const IGNORED_SHOWN: usize = 20;
/// Bytes read at a time from one file.
const CHUNK: usize = 1 << 20;
/// How long start-up waits for another holder of the lock to let go.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Most records reserved up front for one file (96 MiB).
const MAX_RESERVE: u64 = 4 << 20;
/// Most threads recovery uses (it is I/O and memory bound).
const MAX_THREADS: usize = 8;

/// The state directory's lock (`DIR/LOCK`, `flock` exclusive): one process
/// at a time uses a state directory. Released when dropped or at exit; keep
/// it for as long as the journals are open.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// What [`recover`] found.
#[derive(Debug)]
pub struct Recovery {
    /// The latest progress of every user found, sorted by user, one each.
    pub users: Vec<Progress>,
    /// The generation this run must write ([`super::JournalConfig`]):
    /// larger than that of every file in the directory.
    pub generation: u64,
    /// The directory held journal or checkpoint files: this run should
    /// checkpoint soon (every shard), so that the old files can go.
    pub inherited: bool,
    pub report: RecoveryReport,
    pub lock: DirLock,
}

impl Recovery {
    /// The latest progress of `user`, if any (binary search).
    pub fn get(&self, user: u32) -> Option<&Progress> {
        self.users
            .binary_search_by_key(&user, |p| p.user)
            .ok()
            .map(|i| &self.users[i])
    }

    /// Splits the users among `parts` owners (e.g. `owner_of(user, shards)`),
    /// each part sorted by user: a changed `--shards` re-owns users here.
    pub fn partition(&self, parts: usize, owner: impl Fn(u32) -> usize) -> Vec<Vec<Progress>> {
        let guess = self.users.len() / parts.max(1) + self.users.len() / 64 + 16;
        let mut out: Vec<Vec<Progress>> = (0..parts).map(|_| Vec::with_capacity(guess)).collect();
        for p in &self.users {
            out[owner(p.user)].push(*p);
        }
        out
    }
}

/// One file read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub name: String,
    pub kind: FileKind,
    /// The file's length.
    pub bytes: u64,
    /// Header and valid sectors.
    pub valid_bytes: u64,
    /// Records (or checkpoint entries) used.
    pub records: u64,
    /// Segment records skipped because the shard's checkpoint covers them.
    pub covered: u64,
    /// How the file ended, in words.
    pub ending: String,
    /// What was dropped and why, if anything was.
    pub dropped: Option<String>,
}

/// What start-up read, used, dropped and ignored, for the start-up lines.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub dir: PathBuf,
    pub files: Vec<FileReport>,
    /// Files not read: (name, why). Junk, files of older generations that a
    /// newer one supersedes, checkpoints superseded by a newer one.
    pub ignored: Vec<(String, String)>,
    /// Leftover `.ckpt.tmp` files removed.
    pub removed: Vec<String>,
    /// Records and checkpoint entries used.
    pub records: u64,
    pub users: usize,
    pub bytes_read: u64,
    pub threads: usize,
    /// Of `took`: reading and decoding the files.
    pub read_took: Duration,
    pub took: Duration,
}

impl RecoveryReport {
    /// True if some file lost data (torn, corrupt, unreadable).
    pub fn dropped_anything(&self) -> bool {
        self.files.iter().any(|f| f.dropped.is_some())
    }
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state {}: {} users from {} records in {} files ({:.1} MB) in {} ms ({} ms reading)",
            self.dir.display(),
            self.users,
            self.records,
            self.files.len(),
            self.bytes_read as f64 / 1e6,
            self.took.as_millis(),
            self.read_took.as_millis()
        )?;
        for file in &self.files {
            if let Some(d) = &file.dropped {
                write!(f, "\n  {}: {d}", file.name)?;
            }
        }
        for (name, why) in self.ignored.iter().take(IGNORED_SHOWN) {
            write!(f, "\n  ignored {name}: {why}")?;
        }
        if self.ignored.len() > IGNORED_SHOWN {
            write!(
                f,
                "\n  ignored {} more files (not ours, or junk)",
                self.ignored.len() - IGNORED_SHOWN
            )?;
        }
        for name in &self.removed {
            write!(f, "\n  removed unfinished checkpoint {name}")?;
        }
        Ok(())
    }
}

/// Reads the state directory `dir` (creating it if missing), takes its lock,
/// and returns every user's latest progress. `Err` only for a directory that
/// cannot be used, with a message saying what to change; anything inside it
/// that is not a valid file is ignored and named in the report.
pub fn recover(dir: &Path) -> Result<Recovery, String> {
    recover_dir(dir, "--state-dir", true)
}

/// As [`recover`], for a tool that reads another run's state directory
/// (`shardfeed relayout --from DIR`): a missing `dir` is an error, not
/// created, and messages name `flag`. The lock is taken all the same, so a
/// running server's directory is refused (and no server starts on it while
/// the returned [`Recovery`] lives).
pub fn recover_existing(dir: &Path, flag: &str) -> Result<Recovery, String> {
    recover_dir(dir, flag, false)
}

fn recover_dir(dir: &Path, flag: &str, create: bool) -> Result<Recovery, String> {
    let started = Instant::now();
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) if create => {
            return Err(format!(
                "{flag} {shown} is not a directory: give a directory (it is created if missing)"
            ))
        }
        Ok(_) => return Err(format!("{flag} {shown} is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!("cannot create {flag} {shown}: {e}: create it or choose another")
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{flag} {shown} does not exist"))
        }
        Err(e) => return Err(format!("cannot use {flag} {shown}: {e}")),
    }
    let lock = lock_dir(dir, flag)?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {flag} {shown}: {e}: make it readable"))?;

    let mut report = RecoveryReport {
        dir: dir.to_path_buf(),
        ..RecoveryReport::default()
    };
    // Every generation a file name claims, valid or not: this run's must
    // differ from all of them, so that its files never meet an old name.
    let mut named = BTreeSet::new();
    let mut generations: Vec<(u64, String)> = Vec::new();
    let mut segments = Vec::new();
    let mut checkpoints = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return Err(format!("cannot read {flag} {shown}: {e}")),
        };
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            report.ignored.push((
                os_name.to_string_lossy().into_owned(),
                "not ours (name)".into(),
            ));
            continue;
        };
        let parsed = FileName::parse(name);
        if let Some(g) = parsed.and_then(|p| p.generation()) {
            named.insert(g);
            generations.push((g, name.to_string()));
        }
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        match parsed {
            Some(FileName::Lock | FileName::Instance) => {}
            Some(_) if !is_file => report
                .ignored
                .push((name.into(), "not a regular file".into())),
            Some(FileName::Free { .. }) => {}
            Some(FileName::CheckpointTemp { .. }) => {
                // Never renamed, so never relied on; we hold the lock.
                if std::fs::remove_file(entry.path()).is_ok() {
                    report.removed.push(name.into());
                }
            }
            Some(FileName::Segment {
                generation,
                shard,
                seq,
            }) => segments.push((generation, shard, seq, name.to_string())),
            Some(FileName::Checkpoint {
                generation,
                shard,
                seq,
            }) => checkpoints.push((generation, shard, seq, name.to_string())),
            None => report.ignored.push((name.into(), "not ours (name)".into())),
        }
    }
    // Choose each (generation, shard)'s newest checkpoint with a valid header.
    checkpoints.sort();
    let mut chosen: BTreeMap<(u64, u32), (u64, String, FileHeader)> = BTreeMap::new();
    for (generation, shard, seq, name) in checkpoints.iter().rev() {
        if chosen.contains_key(&(*generation, *shard)) {
            report
                .ignored
                .push((name.clone(), "superseded by a newer checkpoint".into()));
            continue;
        }
        match read_header(
            &dir.join(name),
            FileKind::Checkpoint,
            *generation,
            *shard,
            *seq,
        ) {
            Ok(h) => {
                chosen.insert((*generation, *shard), (*seq, name.clone(), h));
            }
            Err(why) => report.ignored.push((name.clone(), why)),
        }
    }
    // A generation all of whose shards have a checkpoint supersedes every
    // earlier one (the same rule that deletes them; see the module doc).
    let complete = chosen
        .iter()
        .filter(|((g, _), (_, _, h))| {
            (0..h.shards).all(|s| chosen.get(&(*g, s)).is_some_and(|c| c.2.shards == h.shards))
        })
        .map(|((g, _), _)| *g)
        .max();
    let floor = complete.unwrap_or(0);

    let mut jobs: Vec<Job> = Vec::new();
    for ((g, s), (seq, name, h)) in &chosen {
        if *g < floor {
            report.ignored.push((
                name.clone(),
                format!("superseded: every shard of generation {floor} has a checkpoint"),
            ));
            continue;
        }
        jobs.push(Job {
            key: (*g, *s, 0, *seq),
            name: name.clone(),
            from_lsn: h.first_lsn,
        });
    }
    for (g, s, seq, name) in segments {
        if g < floor {
            report.ignored.push((
                name,
                format!("superseded: every shard of generation {floor} has a checkpoint"),
            ));
            continue;
        }
        let from_lsn = chosen.get(&(g, s)).map_or(0, |c| c.2.first_lsn);
        jobs.push(Job {
            key: (g, s, 1, seq),
            name,
            from_lsn,
        });
    }
    jobs.sort_by_key(|j| j.key);
    let inherited = !jobs.is_empty();

    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(jobs.len().max(1));
    let reading = Instant::now();
    let results = read_all(dir, &jobs, threads);
    report.read_took = reading.elapsed();
    let mut parts = Vec::with_capacity(results.len());
    for (records, file) in results {
        match file {
            Ok(file) => {
                report.records += file.records;
                report.bytes_read += file.valid_bytes;
                report.files.push(file);
                parts.push(records);
            }
            Err((name, why)) => report.ignored.push((name, why)),
        }
    }
    // This run's generation follows the newest file that may be ours, not
    // the newest name: a junk file named like ours (its header is not one
    // of ours) must not push it to the end of the range, where the next
    // start could not go on. A file that could not be read (permissions,
    // an I/O error) still counts: a later run must never sort below it.
    let junk: BTreeSet<&str> = report
        .ignored
        .iter()
        .filter(|(_, why)| why.starts_with("junk"))
        .map(|(name, _)| name.as_str())
        .collect();
    let newest = generations
        .iter()
        .filter(|(_, name)| !junk.contains(name.as_str()))
        .map(|(g, _)| *g)
        .max()
        .unwrap_or(0);
    let generation = next_generation(newest, &named).ok_or_else(|| {
        format!("{flag} {shown}: a journal file claims generation {newest}, the last there can be: move the directory away")
    })?;
    let users = merge_latest(parts, threads);
    report.users = users.len();
    report.threads = threads;
    report.took = started.elapsed();
    Ok(Recovery {
        users,
        generation,
        inherited,
        report,
        lock,
    })
}

/// The first generation after `newest` that no file name in `named` claims
/// (`None` past the end of the range).
fn next_generation(newest: u64, named: &BTreeSet<u64>) -> Option<u64> {
    let mut g = newest.checked_add(1)?;
    while named.contains(&g) {
        g = g.checked_add(1)?;
    }
    (g < u64::MAX).then_some(g)
}

fn lock_dir(dir: &Path, flag: &str) -> Result<DirLock, String> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            if path.is_dir() {
                format!(
                    "{flag} {}: its LOCK is a directory: remove it (shardfeed keeps a LOCK file there)",
                    dir.display()
                )
            } else {
                format!(
                    "cannot write in {flag} {} (its LOCK file): {e}: make it writable",
                    dir.display()
                )
            }
        })?;
    // A holder that is exiting (a restart), or a copy of our descriptor in
    // a child between fork and exec, lets go soon: retry for a while.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(DirLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            format!(
                "{flag} {} is in use by another shardfeed (LOCK is held): stop it or choose another directory",
                dir.display()
            )
        } else {
            format!("cannot lock {}: {e}", path.display())
        });
    }
}

/// One file to read, in replay order by `key`: (generation, shard, 0 for
/// the checkpoint / 1 for segments, seq).
struct Job {
    key: (u64, u32, u8, u64),
    name: String,
    from_lsn: u64,
}

/// Reads and checks a header; `Err` says why the file is not used.
fn read_header(
    path: &Path,
    kind: FileKind,
    generation: u64,
    shard: u32,
    seq: u64,
) -> Result<FileHeader, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut b = [0u8; SECTOR];
    let n = read_full(&file, &mut b, 0).map_err(|e| format!("cannot read: {e}"))?;
    let h = FileHeader::decode(&b[..n]).map_err(|e| format!("junk: {e}"))?;
    check_header(&h, kind, generation, shard, seq)?;
    Ok(h)
}

fn check_header(
    h: &FileHeader,
    kind: FileKind,
    generation: u64,
    shard: u32,
    seq: u64,
) -> Result<(), String> {
    if h.kind != kind || h.generation != generation || h.shard != shard || h.seq != seq {
        return Err(format!(
            "junk: its header ({:?} generation {} shard {} seq {}) does not match its name",
            h.kind, h.generation, h.shard, h.seq
        ));
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], mut at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                at += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type FileResult = (Vec<Progress>, Result<FileReport, (String, String)>);

/// Reads every job's file on `threads` threads (largest files first);
/// results come back in job order.
fn read_all(dir: &Path, jobs: &[Job], threads: usize) -> Vec<FileResult> {
    let mut order: Vec<(u64, usize)> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            (
                std::fs::metadata(dir.join(&j.name)).map_or(0, |m| m.len()),
                i,
            )
        })
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<FileResult>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(_, i)) = order.get(k) else { return };
                    let r = read_file(&dir.join(&jobs[i].name), &jobs[i], &mut buf);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job was read"))
        .collect()
}

fn read_file(path: &Path, job: &Job, buf: &mut [u8]) -> FileResult {
    let (generation, shard, kind, seq) = job.key;
    let kind = if kind == 0 {
        FileKind::Checkpoint
    } else {
        FileKind::Segment
    };
    let fail = |why: String| (Vec::new(), Err((job.name.clone(), why)));
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open: {e}")),
    };
    let len = file.metadata().map_or(0, |m| m.len());
    // SAFETY: advice only.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let n = match read_full(&file, &mut buf[..SECTOR], 0) {
        Ok(n) => n,
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    let header = match FileHeader::decode(&buf[..n]) {
        Ok(h) => h,
        Err(e) => return fail(format!("junk: {e}")),
    };
    if let Err(why) = check_header(&header, kind, generation, shard, seq) {
        return fail(why);
    }
    let unit = header.unit as u64;
    // Room for all the file can hold (no copy while growing; for a mostly
    // unwritten preallocated segment, pages never touched cost nothing),
    // but not what a huge sparse file claims.
    let guess = (len.saturating_sub(unit) / SECTOR as u64 * PER_SECTOR as u64).min(MAX_RESERVE);
    let mut out = Vec::with_capacity(guess as usize);
    let mut at = unit;
    let mut report = FileReport {
        name: job.name.clone(),
        kind,
        bytes: len,
        valid_bytes: unit,
        records: 0,
        covered: 0,
        ending: String::new(),
        dropped: None,
    };
    match kind {
        FileKind::Segment => {
            let mut d = SegmentDecoder::new(&header, job.from_lsn);
            let ending = loop {
                if d.done() {
                    break d.finish(0);
                }
                let n = match read_full(&file, buf, at) {
                    Ok(n) => n,
                    Err(e) => break d.fail(e.to_string()),
                };
                let whole = n / SECTOR * SECTOR;
                d.feed(&buf[..whole], &mut out);
                at += n as u64;
                if n < buf.len() {
                    break d.finish(n - whole);
                }
            };
            report.valid_bytes += d.valid_bytes;
            report.records = out.len() as u64;
            report.covered = d.covered;
            report.ending = ending.to_string();
            if !ending.is_clean() {
                report.dropped = Some(format!(
                    "{} records used; stopped at byte {} of {}: {ending}; the rest of the file was dropped",
                    out.len(),
                    report.valid_bytes,
                    len
                ));
            }
        }
        FileKind::Checkpoint => {
            let mut d = CheckpointDecoder::new(&header);
            let mut error = None;
            let mut tail = 0;
            while !d.done() {
                let n = match read_full(&file, buf, at) {
                    Ok(n) => n,
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                };
                let whole = n / SECTOR * SECTOR;
                d.feed(&buf[..whole], &mut out);
                at += n as u64;
                if n < buf.len() {
                    tail = n - whole;
                    break;
                }
            }
            let r = d.finish(tail);
            report.valid_bytes = (at - unit).min(len);
            report.records = r.entries;
            report.ending = if r.complete {
                "complete".into()
            } else {
                "incomplete".into()
            };
            if !r.complete || error.is_some() {
                report.dropped = Some(format!(
                    "checkpoint: {} entries used, {} bad sectors skipped{}{}{}",
                    r.entries,
                    r.bad_sectors,
                    if r.truncated {
                        ", no valid seal (truncated)"
                    } else {
                        ""
                    },
                    match r.sealed_total {
                        Some(t) if t != r.entries => format!(", the seal counts {t} entries"),
                        _ => String::new(),
                    },
                    error
                        .map(|e| format!(", read error: {e}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    (out, Ok(report))
}

/// Bits of the bucket index of the merge.
const BUCKET_BITS: u32 = 12;
/// Bits of one counting-sort pass inside a bucket.
const PASS_BITS: u32 = 11;

/// The last record of each user, in the order of `parts` (replay order),
/// sorted by user.
///
/// Three stable steps, each on `threads` threads: scatter every record into
/// one of 4096 buckets by the top bits of `user - min` (thread t's records
/// of a bucket after those of threads < t); sort each bucket by the
/// remaining low bits with one or two counting-sort passes (a bucket is
/// cache-sized); keep the last record of each user. No comparison sort, no
/// hash map.
pub(super) fn merge_latest(parts: Vec<Vec<Progress>>, threads: usize) -> Vec<Progress> {
    let total: usize = parts.iter().map(Vec::len).sum();
    if total == 0 {
        return Vec::new();
    }
    let threads = threads.clamp(1, MAX_THREADS).min(total.div_ceil(1 << 16));

    // The replay sequence cut into `threads` consecutive runs of slices.
    let per = total.div_ceil(threads);
    let mut runs: Vec<Vec<&[Progress]>> = vec![Vec::new(); threads];
    let (mut t, mut room) = (0, per);
    for part in &parts {
        let mut rest = &part[..];
        while !rest.is_empty() {
            let take = rest.len().min(room);
            runs[t].push(&rest[..take]);
            rest = &rest[take..];
            room -= take;
            if room == 0 && t + 1 < threads {
                t += 1;
                room = per;
            }
        }
    }

    let (min, max) = std::thread::scope(|s| {
        let hs: Vec<_> = runs
            .iter()
            .map(|run| {
                s.spawn(move || {
                    run.iter()
                        .copied()
                        .flatten()
                        .fold((u32::MAX, 0u32), |(lo, hi), p| {
                            (lo.min(p.user), hi.max(p.user))
                        })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold((u32::MAX, 0u32), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)))
    });
    // Buckets by the top BUCKET_BITS significant bits of (user - min), so
    // that dense small ids spread as well as random ones.
    let span_bits = 32 - (max - min).leading_zeros();
    let shift = span_bits.saturating_sub(BUCKET_BITS);
    let buckets = 1usize << BUCKET_BITS;
    let bucket = move |p: &Progress| ((p.user - min) >> shift) as usize;

    let counts: Vec<Vec<usize>> = std::thread::scope(|s| {
        let hs: Vec<_> = runs
            .iter()
            .map(|run| {
                s.spawn(move || {
                    let mut h = vec![0usize; buckets];
                    for p in run.iter().copied().flatten() {
                        h[bucket(p)] += 1;
                    }
                    h
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut out = zeroed_progress(total);
    let mut sizes = vec![0usize; buckets];
    {
        let mut slots: Vec<Vec<&mut [Progress]>> =
            (0..threads).map(|_| Vec::with_capacity(buckets)).collect();
        let mut rest: &mut [Progress] = &mut out;
        for b in 0..buckets {
            for t in 0..threads {
                let (head, tail) = rest.split_at_mut(counts[t][b]);
                slots[t].push(head);
                rest = tail;
                sizes[b] += counts[t][b];
            }
        }
        std::thread::scope(|s| {
            for (run, mut slot) in runs.iter().zip(slots) {
                s.spawn(move || {
                    let mut fill = vec![0usize; buckets];
                    for p in run.iter().copied().flatten() {
                        let b = bucket(p);
                        slot[b][fill[b]] = *p;
                        fill[b] += 1;
                    }
                });
            }
        });
    }
    drop(runs);
    drop(parts);

    // Per bucket: stable sort by user, keep each user's last record.
    let mut kept = vec![0usize; buckets];
    {
        let mut slices: Vec<&mut [Progress]> = Vec::with_capacity(buckets);
        let mut rest: &mut [Progress] = &mut out;
        for &n in &sizes {
            let (head, tail) = rest.split_at_mut(n);
            slices.push(head);
            rest = tail;
        }
        let mut groups: Vec<(Vec<&mut [Progress]>, &mut [usize])> = Vec::new();
        let mut kept_rest: &mut [usize] = &mut kept;
        let mut it = slices.into_iter().peekable();
        while it.peek().is_some() {
            let mut group = Vec::new();
            let mut n = 0;
            while let Some(s) = it.next_if(|_| n < per) {
                n += s.len();
                group.push(s);
            }
            let (k, tail) = kept_rest.split_at_mut(group.len());
            kept_rest = tail;
            groups.push((group, k));
        }
        std::thread::scope(|s| {
            for (group, k) in groups {
                s.spawn(move || {
                    let mut scratch = Vec::new();
                    for (slice, kept) in group.into_iter().zip(k.iter_mut()) {
                        sort_bucket(slice, &mut scratch, min, shift);
                        let mut w = 0;
                        for i in 0..slice.len() {
                            if i + 1 < slice.len() && slice[i + 1].user == slice[i].user {
                                continue;
                            }
                            slice[w] = slice[i];
                            w += 1;
                        }
                        *kept = w;
                    }
                });
            }
        });
    }
    let mut write = 0;
    let mut start = 0;
    for b in 0..buckets {
        out.copy_within(start..start + kept[b], write);
        write += kept[b];
        start += sizes[b];
    }
    out.truncate(write);
    out.shrink_to_fit();
    out
}

/// `n` zero records without writing them: fresh zero pages from the
/// allocator, touched first by the threads that fill them.
fn zeroed_progress(n: usize) -> Vec<Progress> {
    let layout = std::alloc::Layout::array::<Progress>(n).expect("size");
    // SAFETY: `Progress` is plain integers, for which all-zero bytes are a
    // valid value; the allocation has `Progress`'s size and alignment for
    // `n` elements and is handed to a Vec of exactly that capacity.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Progress;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, n, n)
    }
}

/// Stable sort of one bucket by user: its users share the bits above
/// `bits` of `user - min`, so counting-sort passes over the low `bits`
/// (least significant first) order it.
fn sort_bucket(s: &mut [Progress], scratch: &mut Vec<Progress>, min: u32, bits: u32) {
    if s.len() <= 48 || bits == 0 {
        s.sort_by_key(|p| p.user);
        return;
    }
    scratch.clear();
    scratch.resize(s.len(), Progress::default());
    let mut in_scratch = false;
    let mut lo = 0;
    let mut count = [0usize; (1 << PASS_BITS) + 1];
    while lo < bits {
        let width = (bits - lo).min(PASS_BITS);
        let mask = (1u32 << width) - 1;
        let key = |p: &Progress| (((p.user - min) >> lo) & mask) as usize;
        let (src, dst): (&[Progress], &mut [Progress]) = if in_scratch {
            (&*scratch, &mut *s)
        } else {
            (&*s, &mut scratch[..])
        };
        let count = &mut count[..(1 << width) + 1];
        count.fill(0);
        for p in src {
            count[key(p) + 1] += 1;
        }
        for i in 1..count.len() {
            count[i] += count[i - 1];
        }
        for p in src {
            let k = key(p);
            dst[count[k]] = *p;
            count[k] += 1;
        }
        in_scratch = !in_scratch;
        lo += width;
    }
    if in_scratch {
        s.copy_from_slice(scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(user: u32, served: u32) -> Progress {
        Progress {
            user,
            served,
            version: 1,
            prefix: served as u64,
        }
    }

    /// The obvious model: replay in order into a map.
    fn model(parts: &[Vec<Progress>]) -> Vec<Progress> {
        let mut m = BTreeMap::new();
        for r in parts.iter().flatten() {
            m.insert(r.user, *r);
        }
        m.into_values().collect()
    }

    #[test]
    fn the_next_generation_follows_the_newest_read_and_skips_named_ones() {
        let named = |g: &[u64]| g.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(next_generation(0, &named(&[])), Some(1));
        assert_eq!(next_generation(3, &named(&[1, 3, 4, 5, 9])), Some(6));
        assert_eq!(next_generation(3, &named(&[u64::MAX - 2])), Some(4));
        assert_eq!(
            next_generation(u64::MAX - 2, &named(&[])),
            Some(u64::MAX - 1)
        );
        assert_eq!(next_generation(u64::MAX - 1, &named(&[])), None);
        let end = named(&[u64::MAX - 2, u64::MAX - 1]);
        assert_eq!(next_generation(u64::MAX - 3, &end), None);
        assert_eq!(next_generation(u64::MAX, &named(&[])), None);
    }

    #[test]
    fn merge_keeps_the_last_record_of_each_user_in_replay_order() {
        let mut rng = 0x1234_5678u64;
        let mut next = || {
            rng = crate::hash::mix64(rng);
            rng
        };
        for (users, parts_n, per_part, threads) in [
            (10u64, 3, 50, 1),
            (1000, 5, 20_000, 2),
            (u32::MAX as u64, 4, 30_000, 3),
            (70_000, 2, 100_000, 2),
        ] {
            let mut served = 0;
            let parts: Vec<Vec<Progress>> = (0..parts_n)
                .map(|_| {
                    (0..per_part)
                        .map(|_| {
                            served += 1;
                            p((next() % users) as u32, served)
                        })
                        .collect()
                })
                .collect();
            let want = model(&parts);
            assert_eq!(merge_latest(parts, threads), want, "users {users}");
        }
        assert!(merge_latest(vec![vec![], vec![]], 2).is_empty());
        assert_eq!(
            merge_latest(vec![vec![p(5, 1)], vec![p(5, 2)]], 2),
            vec![p(5, 2)]
        );
        let extremes = vec![vec![p(0, 1), p(u32::MAX, 2), p(0, 3)]];
        assert_eq!(merge_latest(extremes, 4), vec![p(0, 3), p(u32::MAX, 2)]);
    }
}
