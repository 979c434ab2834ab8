//! The histogram log: every shard's interval latency histogram, written in
//! the standard HdrHistogram interval log format (V2 compressed, one tag per
//! shard: `shard-0`, `shard-1`, ...), readable by the HdrHistogram tools
//! (HistogramLogProcessor, HdrHistogramVisualizer) and by
//! `shardfeed latency`.
//!
//! Shards never touch the file: they send their interval histograms to one
//! writer thread, so file I/O never runs on a shard's core.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
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
    /// Creates the file now (so that a bad path fails start-up) and starts
    /// the writer thread.
    pub fn create(path: &Path, base: SystemTime) -> Result<HistogramLog, String> {
        let file = File::create(path)
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
    let mut out = BufWriter::new(file);
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

/// One tagged histogram read back from a log.
pub struct LoggedInterval {
    pub tag: Option<String>,
    pub start: Duration,
    pub histogram: Histogram<u64>,
}

/// Reads every histogram of an interval log.
pub fn read_log(bytes: &[u8]) -> Result<Vec<LoggedInterval>, String> {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let mut deserializer = Deserializer::new();
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| format!("malformed histogram log: {e:?}"))?;
        if let LogEntry::Interval(h) = entry {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h.encoded_histogram())
                .map_err(|e| format!("malformed histogram log: {e}"))?;
            let histogram: Histogram<u64> = deserializer
                .deserialize(&mut io::Cursor::new(raw))
                .map_err(|e| format!("malformed histogram in the log: {e:?}"))?;
            out.push(LoggedInterval {
                tag: h.tag().map(|t| t.as_str().to_string()),
                start: h.start_timestamp(),
                histogram,
            });
        }
    }
    Ok(out)
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
}
