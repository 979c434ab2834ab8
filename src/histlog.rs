//! The histogram log: every shard's interval latency histogram, written in
//! the standard HdrHistogram interval log format (V2 compressed, one tag per
//! shard: `shard-0`, `shard-1`, ...), readable by the HdrHistogram tools
//! (HistogramLogProcessor, HdrHistogramVisualizer) and by
//! `shardfeed latency`.
//!
//! Shards never touch the file: they send their interval histograms to one
//! writer thread, so file I/O never runs on a shard's core.
//!
//! Every interval reaches the file as it is written (one line, one
//! `write`): a `kill -9` loses at most the interval being written, and the
//! reader ([`read_log`]) ignores a last line cut short. An existing log is
//! never truncated: it is renamed to `FILE.<its mtime>` (`latency.hlog.
//! 20261201T222100Z`) and a new one started.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::shard::ShardId;

/// One interval of one shard.
pub struct Interval {
    pub shard: ShardId,
    pub start: SystemTime,
    pub end: SystemTime,
    pub histogram: Histogram<u64>,
}

/// The writer thread's handle. Dropping every `Sender` (or calling
/// [`HistogramLog::finish`]) ends the log.
pub struct HistogramLog {
    sender: mpsc::Sender<Interval>,
    thread: JoinHandle<Result<(), String>>,
}

impl HistogramLog {
    /// Creates the file now (so that a bad path fails start-up), keeping a
    /// previous log under another name, and starts the writer thread.
    pub fn create(path: &Path, base: SystemTime) -> Result<HistogramLog, String> {
        if let Some(kept) = keep_previous(path)? {
            crate::log_line!(
                "histogram log: the previous {} is kept as {}",
                path.display(),
                kept.display()
            );
        }
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("cannot create the histogram log {}: {e}", path.display()))?;
        let (sender, intervals) = mpsc::channel::<Interval>();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("histogram-log".into())
            .spawn(move || write_log(file, &path, base, intervals))
            .map_err(|e| format!("cannot start the histogram log writer: {e}"))?;
        Ok(HistogramLog { sender, thread })
    }

    pub fn sender(&self) -> mpsc::Sender<Interval> {
        self.sender.clone()
    }

    /// Waits until every interval sent so far is written and flushed. Every
    /// other sender must have been dropped already.
    pub fn finish(self) -> Result<(), String> {
        drop(self.sender);
        self.thread
            .join()
            .map_err(|_| "the histogram log writer failed".to_string())?
    }
}

fn write_log(
    file: File,
    path: &Path,
    base: SystemTime,
    intervals: mpsc::Receiver<Interval>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("histogram log {}: {e}", path.display());
    // Each line (an interval) is written whole as soon as it ends.
    let mut out = LineWriter::new(file);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("shardfeed request service time per shard, in microseconds")
        .with_start_time(base)
        .with_base_time(base)
        .with_max_value_divisor(1.0)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| err(&e))?;
    let mut tags: Vec<String> = Vec::new();
    for interval in intervals {
        while tags.len() <= interval.shard.0 {
            tags.push(format!("shard-{}", tags.len()));
        }
        let start = interval.start.duration_since(base).unwrap_or_default();
        let length = interval
            .end
            .duration_since(interval.start)
            .unwrap_or_default();
        log.write_histogram(
            &interval.histogram,
            start,
            length,
            Tag::new(&tags[interval.shard.0]),
        )
        .map_err(|e| err(&e))?;
    }
    drop(log);
    out.flush().map_err(|e| err(&e))
}

/// Renames an existing, non-empty log at `path` to `path.<mtime>` (with
/// `.1`, `.2`... if that is taken); returns the new name.
fn keep_previous(path: &Path) -> Result<Option<PathBuf>, String> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if meta.len() == 0 && meta.is_file() {
        let _ = std::fs::remove_file(path);
        return Ok(None);
    }
    let stamp = crate::log::rfc3339(meta.modified().unwrap_or_else(|_| SystemTime::now()));
    // 2026-12-01T22:21:00.123Z -> 20261201T222100Z
    let stamp: String = stamp[..19]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let base = format!("{}.{stamp}Z", path.display());
    let mut kept = PathBuf::from(&base);
    for n in 1.. {
        if !kept.exists() {
            break;
        }
        kept = PathBuf::from(format!("{base}.{n}"));
    }
    std::fs::rename(path, &kept).map_err(|e| {
        format!(
            "cannot keep the previous histogram log {} as {}: {e}",
            path.display(),
            kept.display()
        )
    })?;
    Ok(Some(kept))
}

/// One tagged histogram read back from a log.
pub struct LoggedInterval {
    pub tag: Option<String>,
    pub start: Duration,
    pub histogram: Histogram<u64>,
}

/// What [`read_log_lines`] read.
pub struct ReadLog {
    pub intervals: Vec<LoggedInterval>,
    /// The line number of a last line cut short (the writer was killed in
    /// the middle of it), which was left out.
    pub cut_line: Option<usize>,
}

/// Reads every histogram of an interval log, leaving out a last line cut
/// short.
pub fn read_log(bytes: &[u8]) -> Result<Vec<LoggedInterval>, String> {
    read_log_lines(bytes).map(|log| log.intervals)
}

/// Reads every histogram of an interval log, line by line: an error names
/// its line (`line 7: ...`); a last line without its line ending that does
/// not parse is left out and reported in [`ReadLog::cut_line`].
pub fn read_log_lines(bytes: &[u8]) -> Result<ReadLog, String> {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let mut deserializer = Deserializer::new();
    let mut log = ReadLog {
        intervals: Vec::new(),
        cut_line: None,
    };
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let no = i + 1;
        let last_cut = i + 1 == lines.len() && !line.ends_with(b"\n");
        let mut read_one = || -> Result<Option<LoggedInterval>, String> {
            let mut found = None;
            for entry in IntervalLogIterator::new(line) {
                let entry = entry.map_err(|e| format!("not a histogram log line ({e:?})"))?;
                let LogEntry::Interval(h) = entry else {
                    continue;
                };
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(h.encoded_histogram())
                    .map_err(|e| format!("the histogram is not base64: {e}"))?;
                let histogram: Histogram<u64> = deserializer
                    .deserialize(&mut io::Cursor::new(raw))
                    .map_err(|e| format!("the histogram does not decode: {e:?}"))?;
                found = Some(LoggedInterval {
                    tag: h.tag().map(|t| t.as_str().to_string()),
                    start: h.start_timestamp(),
                    histogram,
                });
            }
            Ok(found)
        };
        match read_one() {
            Ok(Some(interval)) => log.intervals.push(interval),
            Ok(None) => {}
            Err(_) if last_cut => log.cut_line = Some(no),
            Err(e) => return Err(format!("line {no}: {e}")),
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::new_histogram;

    /// Written by the writer thread, read back by the crate's deserializer:
    /// the same counts per shard and interval.
    #[test]
    fn log_round_trips_through_the_deserializer() {
        let dir = std::env::temp_dir().join(format!("shardfeed-histlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.hlog");
        let base = SystemTime::now();
        let log = HistogramLog::create(&path, base).unwrap();
        let tx = log.sender();
        let mut sent = Vec::new();
        for (i, shard) in [0usize, 1, 0, 1].into_iter().enumerate() {
            let mut h = new_histogram();
            for v in 1..=(100 * (i as u64 + 1)) {
                h.record(v * 7).unwrap();
            }
            let start = base + Duration::from_secs(i as u64);
            tx.send(Interval {
                shard: ShardId(shard),
                start,
                end: start + Duration::from_secs(1),
                histogram: h.clone(),
            })
            .unwrap();
            sent.push((shard, h));
        }
        drop(tx);
        log.finish().unwrap();

        let text = std::fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&text).contains("#[StartTime: "));
        let read = read_log(&text).unwrap();
        assert_eq!(read.len(), 4);
        for (i, (got, (shard, want))) in read.iter().zip(&sent).enumerate() {
            assert_eq!(got.tag.as_deref(), Some(format!("shard-{shard}").as_str()));
            assert_eq!(got.start, Duration::from_secs(i as u64));
            assert_eq!(&got.histogram, want);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn one_interval_log(path: &Path, value: u64) {
        let base = SystemTime::now();
        let log = HistogramLog::create(path, base).unwrap();
        let mut h = new_histogram();
        h.record(value).unwrap();
        log.sender()
            .send(Interval {
                shard: ShardId(0),
                start: base,
                end: base + Duration::from_secs(1),
                histogram: h,
            })
            .unwrap();
        log.finish().unwrap();
    }

    /// A restart used to truncate the previous run's log.
    #[test]
    fn a_new_log_keeps_the_previous_one() {
        let dir = std::env::temp_dir().join(format!("shardfeed-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.hlog");
        one_interval_log(&path, 11);
        one_interval_log(&path, 22);
        one_interval_log(&path, 33);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        let mut maxes: Vec<u64> = names
            .iter()
            .map(|n| {
                read_log(&std::fs::read(dir.join(n)).unwrap()).unwrap()[0]
                    .histogram
                    .max()
            })
            .collect();
        maxes.sort();
        assert_eq!(maxes, [11, 22, 33]);
        assert!(names.contains(&"latency.hlog".to_string()));
        assert!(names.iter().all(|n| n.starts_with("latency.hlog")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A cut last line made `shardfeed latency` fail with a raw debug error.
    #[test]
    fn a_cut_last_line_is_left_out_and_errors_name_their_line() {
        let dir = std::env::temp_dir().join(format!("shardfeed-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.hlog");
        one_interval_log(&path, 11);
        let whole = std::fs::read(&path).unwrap();
        let lines = whole
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let mut doubled = whole.clone();
        let last = whole[..whole.len() - 1]
            .rsplit(|&b| b == b'\n')
            .next()
            .unwrap();
        doubled.extend_from_slice(&last[..last.len() / 2]);
        let read = read_log_lines(&doubled).unwrap();
        assert_eq!(read.intervals.len(), 1);
        assert_eq!(read.cut_line, Some(lines + 1));
        let mut broken = whole.clone();
        broken.extend_from_slice(b"garbage,here\n");
        broken.extend_from_slice(last);
        broken.push(b'\n');
        let err = read_log_lines(&broken).err().unwrap();
        assert!(err.starts_with(&format!("line {}: ", lines + 1)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
