//! The bytes on disk: file names, file headers, 512-byte sectors, and the
//! decoders that name every way a file can end. Pure: no I/O, no clock. The
//! layout is described once, in the module doc of [`crate::journal`].

use super::Progress;

/// Every file is a header unit followed by sectors of this size.
pub const SECTOR: usize = 512;
/// Bytes of a sector before its records.
pub const SECTOR_HEADER: usize = 32;
/// One record: user, served, prefix (the version is the sector's).
pub const RECORD: usize = 16;
/// Records in a full sector: (512 - 32) / 16.
pub const PER_SECTOR: usize = (SECTOR - SECTOR_HEADER) / RECORD;
/// Bumped on any incompatible change; files of another version are ignored.
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_MAGIC: [u8; 8] = *b"SFJRNL01";
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"SFCKPT01";
/// Largest write unit accepted in a header (a device block of 64 KiB).
pub const MAX_UNIT: u32 = 64 * 1024;

/// What a sector holds (byte 4). 0 is never written: a zero sector is space
/// that was never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SectorKind {
    /// 1..=30 records of one feed version.
    Records = 1,
    /// Fills a write unit after the last records of a write (count 0).
    Pad = 2,
    /// The writer closed the file here: nothing follows (count 0).
    Seal = 3,
}

/// Which kind of file a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Segment,
    Checkpoint,
}

/// The first sector of every file (padded with zeros to `unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub kind: FileKind,
    /// Write unit: every write is a multiple of it at a multiple of it. The
    /// first sector after the header is at offset `unit`.
    pub unit: u32,
    pub shard: u32,
    /// The shard count of the run that wrote the file.
    pub shards: u32,
    /// The run (start-up) that wrote the file; later runs have larger ones.
    pub generation: u64,
    /// The file's number among its (generation, shard)'s files of its kind.
    pub seq: u64,
    /// Segment: LSN of its first record. Checkpoint: the first LSN it does
    /// not cover (records of this generation and shard from it on are
    /// replayed on top of it).
    pub first_lsn: u64,
    /// Random per use of a file; every sector repeats it, so sectors left by
    /// an older use of a recycled file are told apart from new ones.
    pub salt: u64,
    /// Wall-clock milliseconds since the epoch when the file was started.
    pub created_ms: u64,
}

/// Why a header was refused (the whole file is then ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    TooShort,
    BadMagic,
    BadChecksum,
    Version(u32),
    BadUnit(u32),
    BadShard,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::TooShort => write!(f, "shorter than a header"),
            HeaderError::BadMagic => write!(f, "not a shardfeed journal file (magic)"),
            HeaderError::BadChecksum => write!(f, "header checksum mismatch"),
            HeaderError::Version(v) => {
                write!(f, "format version {v}, this build reads {FORMAT_VERSION}")
            }
            HeaderError::BadUnit(u) => write!(f, "impossible write unit {u}"),
            HeaderError::BadShard => write!(f, "shard not below the shard count"),
        }
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

impl FileHeader {
    /// Writes the header into `out[..SECTOR]` and zeros the rest of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= SECTOR);
        out.fill(0);
        out[0..8].copy_from_slice(match self.kind {
            FileKind::Segment => &SEGMENT_MAGIC,
            FileKind::Checkpoint => &CHECKPOINT_MAGIC,
        });
        put32(out, 12, FORMAT_VERSION);
        put32(out, 16, self.unit);
        put32(out, 20, self.shard);
        put32(out, 24, self.shards);
        put64(out, 32, self.generation);
        put64(out, 40, self.seq);
        put64(out, 48, self.first_lsn);
        put64(out, 56, self.salt);
        put64(out, 64, self.created_ms);
        let crc = crc32c::crc32c(&out[12..SECTOR]);
        put32(out, 8, crc);
    }

    pub fn decode(b: &[u8]) -> Result<FileHeader, HeaderError> {
        if b.len() < SECTOR {
            return Err(HeaderError::TooShort);
        }
        let kind = match &b[0..8] {
            m if m == SEGMENT_MAGIC => FileKind::Segment,
            m if m == CHECKPOINT_MAGIC => FileKind::Checkpoint,
            _ => return Err(HeaderError::BadMagic),
        };
        if le32(b, 8) != crc32c::crc32c(&b[12..SECTOR]) {
            return Err(HeaderError::BadChecksum);
        }
        let version = le32(b, 12);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let unit = le32(b, 16);
        if unit < SECTOR as u32 || unit > MAX_UNIT || !unit.is_multiple_of(SECTOR as u32) {
            return Err(HeaderError::BadUnit(unit));
        }
        let h = FileHeader {
            kind,
            unit,
            shard: le32(b, 20),
            shards: le32(b, 24),
            generation: le64(b, 32),
            seq: le64(b, 40),
            first_lsn: le64(b, 48),
            salt: le64(b, 56),
            created_ms: le64(b, 64),
        };
        if h.shard >= h.shards {
            return Err(HeaderError::BadShard);
        }
        Ok(h)
    }
}

/// Finishes a sector whose bytes 4.. are in place: writes its checksum.
fn seal_crc(sector: &mut [u8]) {
    let crc = crc32c::crc32c(&sector[4..SECTOR]);
    put32(sector, 0, crc);
}

fn put_sector_header(s: &mut [u8], kind: SectorKind, count: usize, salt: u64, lsn: u64, word: u64) {
    s[4] = kind as u8;
    s[5] = count as u8;
    s[6] = 0;
    s[7] = 0;
    put64(s, 8, salt);
    put64(s, 16, lsn);
    put64(s, 24, word);
}

/// Writes a pad sector (`lsn`: the next record's, so the sequence goes on).
pub fn encode_pad(s: &mut [u8], salt: u64, lsn: u64) {
    s[..SECTOR].fill(0);
    put_sector_header(s, SectorKind::Pad, 0, salt, lsn, 0);
    seal_crc(s);
}

/// Writes a seal sector: the file ends here. `lsn` is the next LSN (segment)
/// or the number of record sectors (checkpoint); `total` is the number of
/// entries (checkpoint) or 0.
pub fn encode_seal(s: &mut [u8], salt: u64, lsn: u64, total: u64) {
    s[..SECTOR].fill(0);
    put_sector_header(s, SectorKind::Seal, 0, salt, lsn, total);
    seal_crc(s);
}

/// Writes one records sector: `records` (1..=30, all of `version`).
pub fn encode_records_sector(
    s: &mut [u8],
    salt: u64,
    lsn: u64,
    version: u64,
    records: &[Progress],
) {
    debug_assert!(!records.is_empty() && records.len() <= PER_SECTOR);
    debug_assert!(records.iter().all(|r| r.version == version));
    s[..SECTOR].fill(0);
    put_sector_header(s, SectorKind::Records, records.len(), salt, lsn, version);
    for (i, r) in records.iter().enumerate() {
        let at = SECTOR_HEADER + i * RECORD;
        put32(s, at, r.user);
        put32(s, at + 4, r.served);
        put64(s, at + 8, r.prefix);
    }
    seal_crc(s);
}

/// How many sectors the records need, in order, splitting a sector where the
/// version changes, using at most `max_sectors`: (sectors, records that fit).
pub fn plan<'a>(
    records: impl IntoIterator<Item = &'a Progress>,
    max_sectors: usize,
) -> (usize, usize) {
    let mut sectors = 0;
    let mut fitted = 0;
    let mut in_sector = 0;
    let mut version = 0;
    for r in records {
        if in_sector == 0 || in_sector == PER_SECTOR || r.version != version {
            if sectors == max_sectors {
                break;
            }
            sectors += 1;
            in_sector = 0;
            version = r.version;
        }
        in_sector += 1;
        fitted += 1;
    }
    (sectors, fitted)
}

/// What [`encode_batch`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoded {
    pub record_sectors: usize,
    pub pad_sectors: usize,
    pub records: usize,
    /// Unused record slots and pad sectors, in bytes.
    pub padding_bytes: usize,
}

/// Encodes `records` (in order, first one with LSN `first_lsn`) into the
/// sectors of `out`, whose length is a multiple of `SECTOR` and at least the
/// sectors [`plan`] asked for; sectors left over become pad sectors. Records
/// that do not fit are left out (see `Encoded::records`).
pub fn encode_batch<'a>(
    out: &mut [u8],
    salt: u64,
    first_lsn: u64,
    records: impl IntoIterator<Item = &'a Progress>,
) -> Encoded {
    assert_eq!(out.len() % SECTOR, 0);
    let total = out.len() / SECTOR;
    let mut e = Encoded::default();
    let mut group = [Progress::default(); PER_SECTOR];
    let mut lsn = first_lsn;
    let mut it = records.into_iter().peekable();
    while e.record_sectors < total {
        let Some(first) = it.next() else { break };
        group[0] = *first;
        let mut n = 1;
        while n < PER_SECTOR {
            match it.peek() {
                Some(r) if r.version == first.version => {
                    group[n] = **r;
                    n += 1;
                    it.next();
                }
                _ => break,
            }
        }
        let s = &mut out[e.record_sectors * SECTOR..(e.record_sectors + 1) * SECTOR];
        encode_records_sector(s, salt, lsn, first.version, &group[..n]);
        e.record_sectors += 1;
        e.records += n;
        e.padding_bytes += (PER_SECTOR - n) * RECORD;
        lsn += n as u64;
    }
    for i in e.record_sectors..total {
        encode_pad(&mut out[i * SECTOR..(i + 1) * SECTOR], salt, lsn);
        e.pad_sectors += 1;
        e.padding_bytes += SECTOR;
    }
    e
}

/// One sector as the reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sector<'a> {
    /// All zeros: never written.
    Zero,
    /// The checksum does not match: torn or corrupt.
    BadChecksum,
    /// The checksum matches but the contents are impossible.
    Malformed,
    Valid(SectorView<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorView<'a> {
    pub kind: SectorKind,
    pub count: usize,
    pub salt: u64,
    pub lsn: u64,
    /// Records: their feed version. Seal: the total (checkpoint) or 0.
    pub word: u64,
    bytes: &'a [u8],
}

impl SectorView<'_> {
    /// The i-th record, with the sector's version.
    #[inline]
    pub fn record(&self, i: usize) -> Progress {
        let at = SECTOR_HEADER + i * RECORD;
        Progress {
            user: le32(self.bytes, at),
            served: le32(self.bytes, at + 4),
            version: self.word,
            prefix: le64(self.bytes, at + 8),
        }
    }
}

/// Classifies one `SECTOR`-byte slice.
pub fn check_sector(s: &[u8]) -> Sector<'_> {
    debug_assert_eq!(s.len(), SECTOR);
    if le32(s, 0) != crc32c::crc32c(&s[4..SECTOR]) {
        return if s.iter().all(|&b| b == 0) {
            Sector::Zero
        } else {
            Sector::BadChecksum
        };
    }
    let count = s[5] as usize;
    let kind = match (s[4], count) {
        (1, 1..=PER_SECTOR) => SectorKind::Records,
        (2, 0) => SectorKind::Pad,
        (3, 0) => SectorKind::Seal,
        _ => return Sector::Malformed,
    };
    Sector::Valid(SectorView {
        kind,
        count,
        salt: le64(s, 8),
        lsn: le64(s, 16),
        word: le64(s, 24),
        bytes: s,
    })
}

/// How a segment's records ended: every way a file can end has a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A seal sector: the writer closed the segment (clean stop or rotation).
    Sealed,
    /// The file ends on a sector boundary after valid sectors, without a
    /// seal (a file that was not preallocated, or cut on a boundary).
    EndOfFile,
    /// The next sector is all zeros: preallocated space never written. The
    /// usual end of the segment that was being written at a crash or kill.
    ZeroedTail,
    /// The file ends inside a sector (cut mid-write).
    TornSector,
    /// A sector whose checksum does not match. `valid_after`: sectors of
    /// this use were found after it (corruption in the middle, not a torn
    /// last write); they are not used.
    BadChecksum { valid_after: bool },
    /// A valid sector of another salt: left by an older use of a recycled
    /// segment file.
    StaleSector,
    /// A valid sector of this salt whose LSN does not follow (a misplaced
    /// write).
    OutOfSequence,
    /// A valid checksum over impossible contents (unknown kind, bad count).
    Malformed,
    /// Reading failed (EIO): everything before is used.
    ReadError(String),
}

impl Ending {
    /// True for the endings of a file that was closed or is simply where
    /// the writer stopped (nothing was dropped).
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            Ending::Sealed | Ending::EndOfFile | Ending::ZeroedTail | Ending::StaleSector
        )
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Sealed => write!(f, "sealed (clean end)"),
            Ending::EndOfFile => write!(f, "end of file"),
            Ending::ZeroedTail => write!(f, "unwritten (zeroed) tail"),
            Ending::TornSector => write!(f, "torn: the file ends inside a sector"),
            Ending::BadChecksum { valid_after: false } => {
                write!(
                    f,
                    "torn last write (checksum mismatch, nothing valid after it)"
                )
            }
            Ending::BadChecksum { valid_after: true } => {
                write!(f, "corrupt sector (checksum mismatch) followed by valid sectors, which were dropped")
            }
            Ending::StaleSector => {
                write!(
                    f,
                    "end of this use of a recycled file (older sectors follow)"
                )
            }
            Ending::OutOfSequence => write!(f, "sector out of sequence"),
            Ending::Malformed => write!(f, "malformed sector"),
            Ending::ReadError(e) => write!(f, "read error: {e}"),
        }
    }
}

/// How far past a bad sector the reader looks for valid sectors of the same
/// use, to tell corruption from a torn tail (it uses none of them).
pub const SCAN_AFTER_BAD: usize = 2048;

/// Reads a segment's sectors, fed in order in pieces of whole sectors, and
/// pushes every record of the valid prefix with an LSN of at least `from_lsn`
/// (older ones are covered by a checkpoint).
#[derive(Debug)]
pub struct SegmentDecoder {
    salt: u64,
    next_lsn: u64,
    from_lsn: u64,
    ending: Option<Ending>,
    /// After a bad checksum: sectors left to look at for valid ones.
    scan_left: usize,
    /// Bytes of valid sectors so far (after the header).
    pub valid_bytes: u64,
    /// Records read from valid sectors (covered ones included).
    pub records: u64,
    /// Records skipped because a checkpoint covers them.
    pub covered: u64,
}

impl SegmentDecoder {
    pub fn new(header: &FileHeader, from_lsn: u64) -> SegmentDecoder {
        SegmentDecoder {
            salt: header.salt,
            next_lsn: header.first_lsn,
            from_lsn,
            ending: None,
            scan_left: 0,
            valid_bytes: 0,
            records: 0,
            covered: 0,
        }
    }

    /// True once the end is found (and any scan after a bad sector is over):
    /// the caller stops reading.
    pub fn done(&self) -> bool {
        self.ending.is_some() && self.scan_left == 0
    }

    /// The LSN after the last record read.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Feeds whole sectors (`bytes.len()` a multiple of `SECTOR`).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Progress>) {
        debug_assert_eq!(bytes.len() % SECTOR, 0);
        for s in bytes.chunks_exact(SECTOR) {
            if self.scan_left > 0 {
                self.scan_left -= 1;
                if let Sector::Valid(v) = check_sector(s) {
                    if v.salt == self.salt {
                        self.ending = Some(Ending::BadChecksum { valid_after: true });
                        self.scan_left = 0;
                    }
                }
                continue;
            }
            if self.ending.is_some() {
                return;
            }
            match check_sector(s) {
                Sector::Zero => self.ending = Some(Ending::ZeroedTail),
                Sector::BadChecksum => {
                    self.ending = Some(Ending::BadChecksum { valid_after: false });
                    self.scan_left = SCAN_AFTER_BAD;
                }
                Sector::Malformed => self.ending = Some(Ending::Malformed),
                Sector::Valid(v) if v.salt != self.salt => self.ending = Some(Ending::StaleSector),
                Sector::Valid(v) if v.lsn != self.next_lsn => {
                    self.ending = Some(Ending::OutOfSequence)
                }
                Sector::Valid(v) => {
                    self.valid_bytes += SECTOR as u64;
                    match v.kind {
                        SectorKind::Seal => self.ending = Some(Ending::Sealed),
                        SectorKind::Pad => {}
                        SectorKind::Records => {
                            let skip = self.from_lsn.saturating_sub(v.lsn).min(v.count as u64);
                            for i in skip as usize..v.count {
                                out.push(v.record(i));
                            }
                            self.covered += skip;
                            self.records += v.count as u64;
                            // Wrapping: a crafted header may start anywhere.
                            self.next_lsn = self.next_lsn.wrapping_add(v.count as u64);
                        }
                    }
                }
            }
        }
    }

    /// Ends the decoding at the end of the file: `tail` is a partial sector
    /// left over (0..SECTOR bytes).
    pub fn finish(&mut self, tail: usize) -> Ending {
        if self.ending.is_none() {
            self.ending = Some(if tail > 0 {
                Ending::TornSector
            } else {
                Ending::EndOfFile
            });
        }
        self.scan_left = 0;
        self.ending.clone().unwrap()
    }

    /// Ends the decoding after a read error.
    pub fn fail(&mut self, e: String) -> Ending {
        if self.ending.is_none() {
            self.ending = Some(Ending::ReadError(e));
        }
        self.scan_left = 0;
        self.ending.clone().unwrap()
    }
}

/// How a checkpoint file read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointRead {
    /// Entries used.
    pub entries: u64,
    /// A seal was found and its total matches the entries used.
    pub complete: bool,
    /// The seal's total when one was found.
    pub sealed_total: Option<u64>,
    /// Sectors that were skipped (bad checksum, malformed, wrong salt or
    /// index): their entries are lost, the others are used.
    pub bad_sectors: u64,
    /// The file ended inside a sector, or a zero sector came before the seal.
    pub truncated: bool,
    pub read_error: Option<String>,
}

/// Reads a checkpoint's sectors. Unlike a segment, a checkpoint's sectors
/// are independent (one entry per user, order free): a bad sector loses its
/// own entries only, so the reader skips it and goes on to the seal.
#[derive(Debug)]
pub struct CheckpointDecoder {
    salt: u64,
    index: u64,
    sealed: bool,
    pub read: CheckpointRead,
}

impl CheckpointDecoder {
    pub fn new(header: &FileHeader) -> CheckpointDecoder {
        CheckpointDecoder {
            salt: header.salt,
            index: 0,
            sealed: false,
            read: CheckpointRead::default(),
        }
    }

    pub fn done(&self) -> bool {
        self.sealed || self.read.truncated
    }

    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Progress>) {
        for s in bytes.chunks_exact(SECTOR) {
            if self.done() {
                return;
            }
            match check_sector(s) {
                Sector::Zero => self.read.truncated = true,
                Sector::Valid(v) if v.salt == self.salt && v.kind == SectorKind::Seal => {
                    self.sealed = true;
                    self.read.sealed_total = Some(v.word);
                }
                Sector::Valid(v) if v.salt == self.salt && v.lsn == self.index => {
                    self.index += 1;
                    if v.kind == SectorKind::Records {
                        for i in 0..v.count {
                            out.push(v.record(i));
                        }
                        self.read.entries += v.count as u64;
                    }
                }
                _ => {
                    // Skipped; its index is taken so that the next one matches.
                    self.index += 1;
                    self.read.bad_sectors += 1;
                }
            }
        }
    }

    pub fn finish(&mut self, tail: usize) -> CheckpointRead {
        if tail > 0 && !self.sealed {
            self.read.truncated = true;
        }
        if !self.sealed {
            self.read.truncated = true;
        }
        self.read.complete = self.sealed && self.read.sealed_total == Some(self.read.entries);
        self.read.clone()
    }
}

/// The files in a state directory, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileName {
    Segment {
        generation: u64,
        shard: u32,
        seq: u64,
    },
    Checkpoint {
        generation: u64,
        shard: u32,
        seq: u64,
    },
    /// A checkpoint being written; never read.
    CheckpointTemp {
        generation: u64,
        shard: u32,
        seq: u64,
    },
    /// A dropped segment kept for reuse by its shard; never read.
    Free {
        shard: u32,
        n: u64,
    },
    Lock,
    /// `INSTANCE`: which cluster instance the directory belongs to (written
    /// by `serve --cluster`, read by `relayout`; see `cluster.rs`). Never
    /// read by recovery. `INSTANCE.tmp`, one being written, parses as it too.
    Instance,
}

/// The largest generation, sequence or free-file number a name may carry;
/// a name with a larger one is not a journal file.
pub const MAX_NAME_NUMBER: u64 = 1 << 43;

impl FileName {
    pub fn parse(name: &str) -> Option<FileName> {
        if name == "LOCK" {
            return Some(FileName::Lock);
        }
        if name == "INSTANCE" || name == "INSTANCE.tmp" {
            return Some(FileName::Instance);
        }
        // Numbers a run could reach (one file a millisecond for 280 years),
        // not what a hostile name claims: the next number after one must not
        // overflow.
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok().filter(|&n| n <= MAX_NAME_NUMBER)
        };
        let three = |rest: &str| -> Option<(u64, u32, u64)> {
            let mut parts = rest.split('-');
            let g = num(parts.next()?)?;
            let s = u32::try_from(num(parts.next()?)?).ok()?;
            let q = num(parts.next()?)?;
            parts.next().is_none().then_some((g, s, q))
        };
        if let Some(rest) = name
            .strip_prefix("journal-")
            .and_then(|r| r.strip_suffix(".log"))
        {
            let (generation, shard, seq) = three(rest)?;
            return Some(FileName::Segment {
                generation,
                shard,
                seq,
            });
        }
        if let Some(rest) = name.strip_prefix("checkpoint-") {
            if let Some(rest) = rest.strip_suffix(".ckpt.tmp") {
                let (generation, shard, seq) = three(rest)?;
                return Some(FileName::CheckpointTemp {
                    generation,
                    shard,
                    seq,
                });
            }
            let (generation, shard, seq) = three(rest.strip_suffix(".ckpt")?)?;
            return Some(FileName::Checkpoint {
                generation,
                shard,
                seq,
            });
        }
        if let Some(rest) = name
            .strip_prefix("free-")
            .and_then(|r| r.strip_suffix(".log"))
        {
            let mut parts = rest.split('-');
            let shard = u32::try_from(num(parts.next()?)?).ok()?;
            let n = num(parts.next()?)?;
            return parts
                .next()
                .is_none()
                .then_some(FileName::Free { shard, n });
        }
        None
    }

    /// The generation in the name, if it has one.
    pub fn generation(&self) -> Option<u64> {
        match *self {
            FileName::Segment { generation, .. }
            | FileName::Checkpoint { generation, .. }
            | FileName::CheckpointTemp { generation, .. } => Some(generation),
            _ => None,
        }
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            FileName::Segment {
                generation,
                shard,
                seq,
            } => {
                write!(f, "journal-{generation:08}-{shard:04}-{seq:010}.log")
            }
            FileName::Checkpoint {
                generation,
                shard,
                seq,
            } => {
                write!(f, "checkpoint-{generation:08}-{shard:04}-{seq:010}.ckpt")
            }
            FileName::CheckpointTemp {
                generation,
                shard,
                seq,
            } => {
                write!(
                    f,
                    "checkpoint-{generation:08}-{shard:04}-{seq:010}.ckpt.tmp"
                )
            }
            FileName::Free { shard, n } => write!(f, "free-{shard:04}-{n:010}.log"),
            FileName::Lock => write!(f, "LOCK"),
            FileName::Instance => write!(f, "INSTANCE"),
        }
    }
}

/// Builds a whole segment in memory the way the writer does: header unit,
/// then one write per batch (records padded to `unit`), then a seal if
/// `seal`. For tests, benchmarks and tools; the writer calls the same
/// encoders on its DMA buffers.
pub fn build_segment(header: &FileHeader, batches: &[&[Progress]], seal: bool) -> Vec<u8> {
    let unit = header.unit as usize;
    let mut out = vec![0u8; unit];
    header.encode(&mut out);
    let mut lsn = header.first_lsn;
    for batch in batches {
        let mut rest: &[Progress] = batch;
        while !rest.is_empty() {
            let (sectors, fit) = plan(rest, usize::MAX);
            let bytes = (sectors * SECTOR).div_ceil(unit) * unit;
            let at = out.len();
            out.resize(at + bytes, 0);
            let e = encode_batch(&mut out[at..], header.salt, lsn, &rest[..fit]);
            debug_assert_eq!(e.records, fit);
            lsn += fit as u64;
            rest = &rest[fit..];
        }
    }
    if seal {
        let at = out.len();
        out.resize(at + unit, 0);
        encode_seal(&mut out[at..at + SECTOR], header.salt, lsn, 0);
        let mut i = at + SECTOR;
        while i < at + unit {
            encode_pad(&mut out[i..i + SECTOR], header.salt, lsn);
            i += SECTOR;
        }
    }
    out
}

/// A checkpoint's entries cut into records sectors as every writer of
/// checkpoints cuts them: at most `PER_SECTOR` each, and one feed version
/// each (a sector names its version once). Yields `(version, entries)`.
pub fn checkpoint_sectors(entries: &[Progress]) -> impl Iterator<Item = (u64, &[Progress])> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        let v = rest.first()?.version;
        let n = rest
            .iter()
            .take(PER_SECTOR)
            .take_while(|p| p.version == v)
            .count();
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some((v, chunk))
    })
}

/// Builds a whole checkpoint in memory: header unit, entries in sectors
/// (split where the version changes), seal, padded to `unit`. For tests,
/// benchmarks and tools; the writer's `Checkpoint` makes the same layout.
pub fn build_checkpoint(header: &FileHeader, entries: &[Progress]) -> Vec<u8> {
    let unit = header.unit as usize;
    let mut out = vec![0u8; unit];
    header.encode(&mut out);
    let mut index = 0u64;
    for (v, chunk) in checkpoint_sectors(entries) {
        let at = out.len();
        out.resize(at + SECTOR, 0);
        encode_records_sector(&mut out[at..], header.salt, index, v, chunk);
        index += 1;
    }
    seal_checkpoint(&mut out, header, index, entries.len() as u64);
    out
}

/// Ends a checkpoint whose `sectors` records sectors (holding `entries` in
/// all) are in `out`: appends the seal, then pad sectors up to a whole
/// unit of `header`. `out` must start at a unit boundary of the file.
pub fn seal_checkpoint(out: &mut Vec<u8>, header: &FileHeader, sectors: u64, entries: u64) {
    let unit = header.unit as usize;
    let at = out.len();
    out.resize(at + SECTOR, 0);
    encode_seal(&mut out[at..], header.salt, sectors, entries);
    let mut at = out.len();
    out.resize(at.div_ceil(unit) * unit, 0);
    while at < out.len() {
        encode_pad(&mut out[at..at + SECTOR], header.salt, sectors);
        at += SECTOR;
    }
}

/// Decodes a whole segment held in memory: (header, records with LSN >=
/// `from_lsn`, ending). For tests and tools; recovery streams the same way.
pub fn decode_segment(
    bytes: &[u8],
    from_lsn: u64,
) -> Result<(FileHeader, Vec<Progress>, Ending), HeaderError> {
    let h = FileHeader::decode(bytes)?;
    if h.kind != FileKind::Segment {
        return Err(HeaderError::BadMagic);
    }
    let unit = h.unit as usize;
    let mut out = Vec::new();
    let mut d = SegmentDecoder::new(&h, from_lsn);
    if bytes.len() < unit {
        return Ok((h, out, Ending::TornSector));
    }
    let body = &bytes[unit..];
    let whole = body.len() / SECTOR * SECTOR;
    d.feed(&body[..whole], &mut out);
    let ending = d.finish(body.len() - whole);
    Ok((h, out, ending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(user: u32, served: u32, version: u64) -> Progress {
        Progress {
            user,
            served,
            version,
            prefix: (user as u64) << 32 | served as u64,
        }
    }

    fn header(unit: u32) -> FileHeader {
        FileHeader {
            kind: FileKind::Segment,
            unit,
            shard: 1,
            shards: 2,
            generation: 7,
            seq: 3,
            first_lsn: 100,
            salt: 0xdead_beef_1234_5678,
            created_ms: 1,
        }
    }

    fn stream(n: u32) -> Vec<Progress> {
        (0..n).map(|i| p(i * 13, i, 1 + (i as u64 / 45))).collect()
    }

    #[test]
    fn header_round_trip_and_refusals() {
        let h = header(512);
        let mut b = vec![0u8; 512];
        h.encode(&mut b);
        assert_eq!(FileHeader::decode(&b), Ok(h));
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert_eq!(FileHeader::decode(&bad), Err(HeaderError::BadChecksum));
        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(FileHeader::decode(&bad), Err(HeaderError::BadMagic));
        assert_eq!(FileHeader::decode(&b[..100]), Err(HeaderError::TooShort));
        let mut c = h;
        c.shard = 2;
        c.encode(&mut b);
        assert_eq!(FileHeader::decode(&b), Err(HeaderError::BadShard));
        c = h;
        c.unit = 700;
        c.encode(&mut b);
        assert_eq!(FileHeader::decode(&b), Err(HeaderError::BadUnit(700)));
    }

    #[test]
    fn records_round_trip_with_version_changes_and_batches() {
        let all = stream(200);
        let batches: Vec<&[Progress]> = vec![&all[..1], &all[1..31], &all[31..32], &all[32..200]];
        for unit in [512u32, 4096] {
            let bytes = build_segment(&header(unit), &batches, true);
            assert_eq!(bytes.len() % unit as usize, 0);
            let (h, got, end) = decode_segment(&bytes, 0).unwrap();
            assert_eq!(h, header(unit));
            assert_eq!(got, all);
            assert_eq!(end, Ending::Sealed);
            // A checkpoint's start LSN skips the covered records.
            let (_, got, _) = decode_segment(&bytes, 100 + 40).unwrap();
            assert_eq!(got, all[40..]);
        }
    }

    #[test]
    fn plan_splits_at_versions_and_respects_the_limit() {
        let v = |vs: &[u64]| -> Vec<Progress> { vs.iter().map(|&v| p(1, 1, v)).collect() };
        assert_eq!(plan(&v(&[1; 30]), 10), (1, 30));
        assert_eq!(plan(&v(&[1; 31]), 10), (2, 31));
        assert_eq!(plan(&v(&[1, 2, 1]), 10), (3, 3));
        assert_eq!(plan(&v(&[1, 2, 1]), 2), (2, 2));
        assert_eq!(plan(&v(&[]), 2), (0, 0));
    }

    #[test]
    fn every_ending_is_named() {
        let all: Vec<Progress> = (0..100).map(|i| p(i * 7, i, 3)).collect();
        let batches: Vec<&[Progress]> = vec![&all[..10], &all[10..100]];
        let open = build_segment(&header(512), &batches, false);
        // 1 + 3 sectors of records (10 | 30+30+30) after the header.
        assert_eq!(open.len(), 512 * 5);

        // End of file on a sector boundary.
        let (_, got, end) = decode_segment(&open, 0).unwrap();
        assert_eq!((got.len(), end), (100, Ending::EndOfFile));

        // Preallocated (zero) tail.
        let mut pre = open.clone();
        pre.resize(open.len() + 4096, 0);
        assert_eq!(decode_segment(&pre, 0).unwrap().2, Ending::ZeroedTail);

        // Cut inside a sector: the whole sectors before it are used.
        let (_, got, end) = decode_segment(&open[..512 * 3 + 100], 0).unwrap();
        assert_eq!((got.len(), end), (40, Ending::TornSector));

        // A torn last write: garbage in the last sector, zeros after it.
        let mut torn = pre.clone();
        torn[512 * 4 + 200] ^= 0x55;
        let (_, got, end) = decode_segment(&torn, 0).unwrap();
        assert_eq!(got, all[..70]);
        assert_eq!(end, Ending::BadChecksum { valid_after: false });

        // Corruption in the middle: valid sectors after it are not used.
        let mut mid = pre.clone();
        mid[512 * 2 + 40] ^= 0x01;
        let (_, got, end) = decode_segment(&mid, 0).unwrap();
        assert_eq!(got, all[..10]);
        assert_eq!(end, Ending::BadChecksum { valid_after: true });

        // An older use of a recycled file: same layout, another salt.
        let mut old_header = header(512);
        old_header.salt = 42;
        let older = build_segment(&old_header, &[&stream(300)], false);
        let mut recycled = older.clone();
        recycled[..open.len()].copy_from_slice(&open);
        let (_, got, end) = decode_segment(&recycled, 0).unwrap();
        assert_eq!((got, end), (all.clone(), Ending::StaleSector));

        // A valid sector of this use at the wrong place.
        let mut misplaced = pre.clone();
        let (a, b) = misplaced.split_at_mut(512 * 5);
        b[..512].copy_from_slice(&a[512 * 2..512 * 3]);
        assert_eq!(
            decode_segment(&misplaced, 0).unwrap().2,
            Ending::OutOfSequence
        );

        // A valid checksum over impossible contents.
        let mut mal = pre.clone();
        let s = &mut mal[512 * 5..512 * 6];
        s[4] = 9;
        seal_crc(s);
        assert_eq!(decode_segment(&mal, 0).unwrap().2, Ending::Malformed);

        // Sealed.
        let sealed = build_segment(&header(512), &batches, true);
        assert_eq!(decode_segment(&sealed, 0).unwrap().2, Ending::Sealed);

        // Junk: not a journal file at all.
        assert_eq!(
            decode_segment(b"hello world", 0).unwrap_err(),
            HeaderError::TooShort
        );
        assert_eq!(
            decode_segment(&[7u8; 4096], 0).unwrap_err(),
            HeaderError::BadMagic
        );
        // A header and nothing else.
        let (_, got, end) = decode_segment(&open[..512], 0).unwrap();
        assert_eq!((got.len(), end), (0, Ending::EndOfFile));
        assert_eq!(
            decode_segment(&open[..1000], 0).unwrap().2,
            Ending::TornSector
        );
    }

    #[test]
    fn a_crafted_header_at_the_end_of_the_lsn_space_does_not_overflow() {
        let mut h = header(512);
        h.first_lsn = u64::MAX - 3;
        let all = stream(40);
        let bytes = build_segment_wrapping(&h, &all);
        let (_, got, end) = decode_segment(&bytes, 0).unwrap();
        assert_eq!(got.len(), 40);
        assert_eq!(end, Ending::EndOfFile);
    }

    /// Like `build_segment`, for LSNs that wrap (which the writer never makes).
    fn build_segment_wrapping(h: &FileHeader, records: &[Progress]) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        h.encode(&mut out);
        let mut lsn = h.first_lsn;
        for chunk in records.chunks(PER_SECTOR) {
            let at = out.len();
            out.resize(at + SECTOR, 0);
            let v: Vec<Progress> = chunk
                .iter()
                .map(|r| Progress { version: 1, ..*r })
                .collect();
            encode_records_sector(&mut out[at..], h.salt, lsn, 1, &v);
            lsn = lsn.wrapping_add(chunk.len() as u64);
        }
        out
    }

    #[test]
    fn checkpoint_sectors_are_independent() {
        let mut h = header(512);
        h.kind = FileKind::Checkpoint;
        let entries = stream(90);
        let mut bytes = vec![0u8; 512 + 4 * 512];
        h.encode(&mut bytes[..512]);
        for (i, chunk) in entries.chunks(30).enumerate() {
            let s = &mut bytes[512 + i * 512..512 + (i + 1) * 512];
            // Sectors of one checkpoint may hold any one version each.
            let v: Vec<Progress> = chunk
                .iter()
                .map(|r| Progress { version: 5, ..*r })
                .collect();
            encode_records_sector(s, h.salt, i as u64, 5, &v);
        }
        encode_seal(&mut bytes[512 + 3 * 512..], h.salt, 3, 90);
        let read = |b: &[u8]| {
            let mut d = CheckpointDecoder::new(&h);
            let mut out = Vec::new();
            d.feed(&b[512..b.len() / 512 * 512], &mut out);
            (out.len(), d.finish(b.len() % 512))
        };
        let (n, r) = read(&bytes);
        assert_eq!(n, 90);
        assert!(r.complete && r.bad_sectors == 0 && !r.truncated);

        let mut bad = bytes.clone();
        bad[512 + 512 + 77] ^= 0xff;
        let (n, r) = read(&bad);
        assert_eq!(n, 60, "only the bad sector's entries are lost");
        assert_eq!(r.bad_sectors, 1);
        assert!(!r.complete);

        let (n, r) = read(&bytes[..512 + 2 * 512 + 10]);
        assert_eq!(n, 60);
        assert!(r.truncated && !r.complete);
    }

    #[test]
    fn file_names_round_trip_and_junk_is_refused() {
        let names = [
            FileName::Segment {
                generation: 3,
                shard: 1,
                seq: 12,
            },
            FileName::Checkpoint {
                generation: 3,
                shard: 0,
                seq: 0,
            },
            FileName::CheckpointTemp {
                generation: 9,
                shard: 2,
                seq: 5,
            },
            FileName::Free { shard: 1, n: 4 },
            FileName::Lock,
            FileName::Instance,
        ];
        for n in names {
            assert_eq!(FileName::parse(&n.to_string()), Some(n), "{n}");
        }
        assert_eq!(
            FileName::Segment {
                generation: 3,
                shard: 1,
                seq: 12
            }
            .to_string(),
            "journal-00000003-0001-0000000012.log"
        );
        for junk in [
            "journal-1-2.log",
            "journal-a-1-2.log",
            "journal-1-2-3.log.bak",
            "journal--1-2-3.log",
            "journal-1-99999999999-3.log",
            "checkpoint-1-2-3",
            "free-1.log",
            "README",
            "journal-1-2-3-4.log",
            "journal-+1-2-3.log",
            // Numbers no run reaches: the next one would overflow.
            "free-0001-18446744073709551614.log",
            "journal-18446744073709551615-0000-0000000001.log",
            "checkpoint-00000001-0000-18446744073709551615.ckpt",
        ] {
            assert_eq!(FileName::parse(junk), None, "{junk}");
        }
    }
}
