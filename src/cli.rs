//! The command line: its subcommands and flags, checked into the
//! configurations that the rest of the crate runs on.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use std::sync::Arc;

use crate::cluster::{Cluster, ClusterSeat};
use crate::conn::ConnLimits;
use crate::host;
use crate::http::{self, Limits};
use crate::journal::FsyncPolicy;
use crate::load::{Feeds, Source};
use crate::server::{ServeConfig, StateConfig};
use crate::shard;
use crate::synthetic::{self, Synthetic};
use crate::{histlog, metrics};

/// Largest accepted `--max-size`: a page is one answer, not a data dump.
pub const MAX_PAGE: u16 = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "shardfeed",
    version,
    about = "Thread-per-core recommendation-feed server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the server (on synthetic data unless --feed is given). SIGHUP
    /// reloads --feed and --fallback; SIGTERM/SIGINT stop it.
    Serve(ServeArgs),
    /// Write the synthetic data set as a feed file (`user<TAB>item,item,...`).
    Gen(GenArgs),
    /// Convert a feed file (TSV or Parquet) into a snapshot, which loads
    /// fastest (`serve --feed OUTPUT`).
    Pack(PackArgs),
    /// Print the latency distribution of each shard in a histogram log
    /// (written with `serve --histogram-log`).
    Latency(LatencyArgs),
    /// Print the nginx configuration (for the `http` block of nginx 1.18+)
    /// that fronts a cluster: every /feed/{id} straight to the shard port
    /// that owns the user, everything else to any live instance.
    NginxConf(NginxConfArgs),
    /// Print which instance and shard own user ids, under a cluster file
    /// (ids as arguments, or one per line on standard input).
    Owner(OwnerArgs),
    /// Rewrite stopped instances' state directories for a new cluster file
    /// (one per new instance: ROOT/NAME).
    ///
    /// ROOT/NAME holds the progress of exactly the users NAME will own:
    /// start it with `serve --cluster NEW --instance NAME --state-dir
    /// ROOT/NAME`. Every directory written is read back and checked before
    /// the command reports success (exit 0).
    Relayout(RelayoutArgs),
}

#[derive(Debug, Args)]
pub struct RelayoutArgs {
    /// The new cluster file (`NAME HOST:PORT SHARDS` per line).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// A stopped old instance's --state-dir (repeat for each; a running
    /// server's is refused). With --old-cluster: NAME=DIR, NAME its line in
    /// the old file.
    #[arg(long = "from", value_name = "DIR", required = true)]
    pub from: Vec<String>,
    /// Where to write: ROOT/NAME for every new instance. Must be new or
    /// empty (nothing is written over).
    #[arg(long, value_name = "ROOT")]
    pub out_dir: PathBuf,
    /// The cluster file the old instances ran with: each --from NAME=DIR then
    /// contributes only the users its instance owned, and every old instance
    /// must be given. Needed when directories hold stale copies of each
    /// other's users (the command says so).
    #[arg(long, value_name = "FILE")]
    pub old_cluster: Option<PathBuf>,
    /// Write only this new instance's directory (repeat for several)
    /// [default: all]: e.g. one run per new host, each reading all old
    /// directories.
    #[arg(long, value_name = "NAME")]
    pub instance: Vec<String>,
    /// With --old-cluster: accept --from for only some old instances (one
    /// step of a relayout split over hosts: each old host scatters its own
    /// users, each new host gathers its pieces; see the README).
    #[arg(long, requires = "old_cluster")]
    pub partial: bool,
}

impl RelayoutArgs {
    /// Checks the flags into a [`crate::relayout::Plan`].
    pub fn plan(&self) -> Result<crate::relayout::Plan, String> {
        use crate::relayout::{Plan, Source};
        let cluster = Cluster::from_file(&self.cluster)?;
        let old = match &self.old_cluster {
            Some(f) => Some(Cluster::from_file(f)?),
            None => None,
        };
        let mut sources = Vec::with_capacity(self.from.len());
        for from in &self.from {
            let source = match &old {
                None if from.contains('=') && !std::path::Path::new(from).exists() => {
                    return Err(format!(
                        "--from {from} does not exist (NAME=DIR is for use with --old-cluster)"
                    ))
                }
                None => Source {
                    dir: PathBuf::from(from),
                    old_instance: None,
                },
                Some(old) => {
                    let Some((name, dir)) = from.split_once('=') else {
                        return Err(format!(
                            "--from {from}: with --old-cluster, give NAME=DIR (NAME: the old \
                             instance whose --state-dir DIR is)"
                        ));
                    };
                    let i = old.find(name).map_err(|e| format!("--from {from}: {e}"))?;
                    if sources.iter().any(|s: &Source| s.old_instance == Some(i)) {
                        return Err(format!("--from {from}: old instance {name} given twice"));
                    }
                    Source {
                        dir: PathBuf::from(dir),
                        old_instance: Some(i),
                    }
                }
            };
            if sources.iter().any(|s: &Source| s.dir == source.dir) {
                return Err(format!(
                    "--from {}: the same directory given twice",
                    source.dir.display()
                ));
            }
            sources.push(source);
        }
        if let Some(old) = old.as_ref().filter(|_| !self.partial) {
            let missing: Vec<&str> = (0..old.instances.len())
                .filter(|i| !sources.iter().any(|s| s.old_instance == Some(*i)))
                .map(|i| old.instances[i].name.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "no --from NAME=DIR for old instance(s) {}: their users would start \
                     again; give their state directories (or --partial, if another run \
                     reads them)",
                    missing.join(", ")
                ));
            }
        }
        let mut only = Vec::new();
        for name in &self.instance {
            let i = cluster.find(name).map_err(|e| format!("--instance: {e}"))?;
            if !only.contains(&i) {
                only.push(i);
            }
        }
        Ok(Plan {
            cluster,
            old,
            sources,
            out: self.out_dir.clone(),
            only,
            partial: self.partial,
        })
    }

    pub fn run(&self) -> Result<(), String> {
        let report = crate::relayout::relayout(&self.plan()?)?;
        println!("{report}");
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct NginxConfArgs {
    /// The cluster file (`NAME HOST:PORT SHARDS` per line).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// Where the nginx server listens (nginx `listen` syntax, e.g. `80`,
    /// `127.0.0.1:8000`).
    #[arg(long, value_name = "ADDR", default_value = "80")]
    pub listen: String,
}

impl NginxConfArgs {
    pub fn run(&self) -> Result<(), String> {
        let cluster = Cluster::from_file(&self.cluster)?;
        if self.listen.is_empty() || self.listen.contains([';', '{', '}', ' ', '\n']) {
            return Err(format!(
                "--listen `{}` is not an nginx address",
                self.listen
            ));
        }
        let source = self.cluster.display().to_string();
        print!("{}", crate::nginx::config(&cluster, &self.listen, &source));
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct OwnerArgs {
    /// The cluster file.
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// User ids [default: one per line on standard input].
    pub ids: Vec<String>,
}

impl OwnerArgs {
    /// Prints `ID INSTANCE SHARD HOST:SHARD_PORT` per id. Ids are read as
    /// the server reads `/feed/{id}` (`+7` is refused); one the front does
    /// not route by hash (`007`: nginx hashes the text) is said on stderr.
    pub fn run(&self) -> Result<(), String> {
        use std::io::{BufRead, Write};
        let cluster = Cluster::from_file(&self.cluster)?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut say = |text: &str, place: &dyn Fn() -> String| -> Result<(), String> {
            let id = crate::decimal::parse_u32(text.as_bytes()).map_err(|_| {
                format!(
                    "{}`{text}` is not a user id (the server answers 422 for it): \
                     give decimal digits, at most 4294967295",
                    place()
                )
            })?;
            if itoa::Buffer::new().format(id) != text {
                crate::log_line!(
                    "note: `{text}` is user {id}, but not written canonically: the front \
                     sends it to any instance, not to its owner below"
                );
            }
            let o = cluster.owner(id);
            let i = &cluster.instances[o.instance];
            match writeln!(out, "{id} {} {} {}", i.name, o.shard, i.shard_port(o.shard)) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(String::new()),
                Err(e) => Err(format!("cannot write: {e}")),
                Ok(()) => Ok(()),
            }
        };
        let result = if self.ids.is_empty() {
            let mut r = Ok(());
            for (no, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.map_err(|e| format!("cannot read standard input: {e}"))?;
                r = say(line.trim(), &|| format!("line {}: ", no + 1));
                if r.is_err() {
                    break;
                }
            }
            r
        } else {
            self.ids.iter().try_for_each(|id| say(id, &String::new))
        };
        let result = result.and_then(|()| match out.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(String::new()),
            Err(e) => Err(format!("cannot write: {e}")),
            Ok(()) => Ok(()),
        });
        match result {
            // A closed pipe (`| head`): not an error.
            Err(e) if e.is_empty() => Ok(()),
            r => r,
        }
    }
}

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// The histogram log.
    pub log: PathBuf,
    /// Tab-separated `tag percentile value_us` rows (for scripts/plot-latency)
    /// instead of the HdrHistogram percentile-distribution text.
    #[arg(long)]
    pub tsv: bool,
}

impl LatencyArgs {
    pub fn run(&self) -> Result<(), String> {
        let bytes = std::fs::read(&self.log)
            .map_err(|e| format!("cannot read {}: {e}", self.log.display()))?;
        let log =
            histlog::read_log_lines(&bytes).map_err(|e| format!("{}: {e}", self.log.display()))?;
        if let Some(line) = log.cut_line {
            eprintln!(
                "shardfeed: {}: line {line} is cut short (the server was stopped while writing it): left out",
                self.log.display()
            );
        }
        let intervals = log.intervals;
        let mut per_tag: Vec<(String, hdrhistogram::Histogram<u64>)> = Vec::new();
        for interval in intervals {
            let tag = interval.tag.unwrap_or_else(|| "untagged".into());
            match per_tag.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, h)) => h
                    .add(&interval.histogram)
                    .map_err(|e| format!("{tag}: {e:?}"))?,
                None => per_tag.push((tag, interval.histogram)),
            }
        }
        if per_tag.is_empty() {
            return Err(format!("{}: no histograms in the log", self.log.display()));
        }
        per_tag.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::new();
        for (tag, h) in &per_tag {
            metrics::write_distribution(&mut out, tag, h, self.tsv);
        }
        use std::io::Write;
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct SyntheticArgs {
    /// Synthetic users, with ids 1..=N [default: 1000000].
    #[arg(long)]
    pub users: Option<u32>,
    /// Items per synthetic user [default: 200].
    #[arg(long)]
    pub feed_len: Option<u32>,
    /// Synthetic item ids are drawn from 0..N (skewed to low ids) [default: 10000000].
    #[arg(long)]
    pub items: Option<u32>,
    /// Seed of the synthetic data: same seed, same feeds [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SyntheticArgs {
    fn spec(&self) -> Result<Synthetic, String> {
        let spec = Synthetic {
            users: self.users.unwrap_or(1_000_000),
            feed_len: self.feed_len.unwrap_or(200),
            items: self.items.unwrap_or(10_000_000),
            seed: self.seed.unwrap_or(42),
        };
        spec.check()?;
        Ok(spec)
    }

    /// The synthetic flags given, by name: they mean nothing with `--feed`.
    fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--users", self.users.is_some()),
            ("--feed-len", self.feed_len.is_some()),
            ("--items", self.items.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        flags.into_iter().filter(|f| f.1).map(|f| f.0).collect()
    }
}

/// The column names of a Parquet feed.
#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// Parquet feeds: the integer column of user ids [default: user_id].
    #[arg(long, value_name = "NAME")]
    pub user_column: Option<String>,
    /// Parquet feeds: the list-of-integers column of item ids [default: items].
    #[arg(long, value_name = "NAME")]
    pub items_column: Option<String>,
}

impl ColumnArgs {
    fn columns(&self) -> crate::load::Columns {
        crate::load::Columns {
            user: self.user_column.clone(),
            items: self.items_column.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT (IPv6 in brackets), HOST:PORT (resolved once,
    /// first address), or :PORT / PORT for all interfaces. Port 0 picks a free
    /// port shared by all shards.
    #[arg(long, default_value = "0.0.0.0:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Serve /metrics, /stats and /healthz on this address (same forms as
    /// --listen) instead of the public port, which then serves /feed and
    /// /healthz only [default: off, all on --listen].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub admin_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, keep serving this long with /healthz at 503
    /// draining (so that load balancers take the instance out), then stop.
    #[arg(long, value_name = "D", default_value = "0s", value_parser = parse_drain)]
    pub drain: Duration,
    /// Require `Authorization: Bearer <JWT>` on /feed/{id}: HS256, signed
    /// with this file's secret (its bytes without a final newline), `sub` the
    /// user id, `exp` in the future. 401/403 otherwise [default: off, the port
    /// trusts its network].
    #[arg(long, value_name = "FILE")]
    pub jwt_secret: Option<PathBuf>,
    /// Number of shards (one pinned executor each) [default: all available CPUs].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Serve as one instance of the cluster in FILE (`NAME HOST:PORT SHARDS`
    /// per line): listen where its line says (shard i also on PORT+1+i),
    /// load only the users the cluster gives it, answer others' users with
    /// fallback items (`Shardfeed-Degraded: not-owner`). Needs --instance.
    /// Replaces --listen and --shards.
    #[arg(long, value_name = "FILE", requires = "instance", conflicts_with_all = ["listen", "shards"])]
    pub cluster: Option<PathBuf>,
    /// With --cluster: this instance's NAME in the cluster file.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub instance: Option<String>,
    /// CPUs to run shards on, e.g. `0-3,8` [default: all available].
    #[arg(long)]
    pub cpus: Option<String>,
    /// Feed file to serve (TSV, Parquet or snapshot, told by content) instead
    /// of synthetic data; read again on SIGHUP (rename a new file into place,
    /// then signal: a snapshot is mapped, never rewrite it in place).
    #[arg(long)]
    pub feed: Option<PathBuf>,
    #[command(flatten)]
    pub columns: ColumnArgs,
    #[command(flatten)]
    pub synthetic: SyntheticArgs,
    /// Fallback pool file: one item id per line, in preference order; read
    /// again on SIGHUP.
    #[arg(long)]
    pub fallback: Option<PathBuf>,
    /// Without --fallback: the pool is this many most frequent items of the feeds.
    #[arg(long, default_value_t = 50)]
    pub fallback_size: usize,
    /// Page size when a request gives no size (or size=0).
    #[arg(long, default_value_t = 10)]
    pub default_size: u16,
    /// Largest page size a request may ask for (422 above).
    #[arg(long, default_value_t = 100)]
    pub max_size: u16,
    /// Write every shard's latency histogram to FILE each --histogram-interval
    /// (HdrHistogram interval log, V2 compressed, tag `shard-N`).
    #[arg(long, value_name = "FILE")]
    pub histogram_log: Option<PathBuf>,
    /// Interval of the histogram log, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub histogram_interval: Duration,
    /// Print a status line to stderr every interval (requests/s, forwarded
    /// share, p99, exhausted users) [default: off].
    #[arg(long, value_parser = parse_duration)]
    pub log_interval: Option<Duration>,
    /// Do not pin shards to CPUs: let the kernel place them. For hosts where
    /// shards share CPUs with other busy processes (e.g. a load generator on
    /// the same machine); with dedicated cores, pinning is better.
    #[arg(long)]
    pub no_pin: bool,
    /// Create io_uring rings as glommio does by default, without
    /// IORING_SETUP_COOP_TASKRUN: every completion raised on another CPU then
    /// interrupts the shard (a rescheduling IPI). For comparison and as a
    /// way out; the flag needs Linux 5.19 and is skipped where refused.
    #[arg(long)]
    pub no_coop_taskrun: bool,
    /// How long an idle shard keeps polling for work before it sleeps, e.g.
    /// `200us`, or `0`. `auto`: 200us with `--fsync always` and more than
    /// one shard, whose answers wait for syncs that take tens of
    /// microseconds (a shard that sleeps through each one pays a wake-up,
    /// and a membarrier that interrupts the other shards, every time); 0
    /// otherwise, as polling takes CPU from whatever else runs on the host.
    /// Costs CPU while idle, up to the whole core under a trickle of
    /// requests.
    #[arg(long, value_name = "DURATION|auto", default_value = "auto", value_parser = parse_idle_poll)]
    pub idle_poll: IdlePoll,
    /// Keep every connection on the shard that accepted it. By default a
    /// keep-alive connection whose last --move-after feed requests were for
    /// users of one other shard moves to that shard (at most twice per
    /// connection), so that a client asking for its own user's pages is
    /// served without forwarding.
    #[arg(long)]
    pub no_move_connections: bool,
    /// A connection moves to the shard that owns its user after this many
    /// feed requests in a row for that shard's users (1: after its first).
    #[arg(long, value_name = "N", default_value_t = crate::session::MOVE_AFTER,
          value_parser = clap::value_parser!(u8).range(1..=100), conflicts_with = "no_move_connections")]
    pub move_after: u8,
    /// Keep every user's progress in a journal and checkpoints under DIR
    /// (created if missing), so that a restart or a crash continues every
    /// user where they were [default: in memory only].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// With --state-dir: when progress is made durable. `always`: an answer
    /// that moved a user on leaves only after an fdatasync (shared by all
    /// answers waiting together); `everysec`: written within 0.1 s and synced
    /// within 0.5 s, answers do not wait; `never`: an answer leaves once its
    /// progress is written, never synced (survives the process being killed,
    /// not the machine losing power). Without --state-dir it is an error
    /// (progress would be kept in memory only, whatever it says).
    #[arg(long, value_name = "POLICY", default_value = "everysec", value_parser = parse_fsync,
          requires = "state_dir")]
    pub fsync: FsyncPolicy,
    /// On SIGINT/SIGTERM, how long to wait for open requests to finish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A request head must be complete this long after its first byte (else
    /// 408 and close).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Close a keep-alive connection idle this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Close a connection whose client does not take our answers this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Open connections per shard; beyond, new ones get 503 and are closed.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Pipelined requests answered per connection before their answers are
    /// written (and before reading more).
    #[arg(long, default_value_t = 128)]
    pub max_pipeline: usize,
    /// Bytes of answers buffered per connection before they are written.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_unsent_bytes: usize,
    /// Forwarded requests awaiting another shard, per shard; beyond, 503.
    #[arg(long, default_value_t = shard::MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Largest request head (request line and headers); beyond, 431.
    #[arg(long, default_value_t = http::MAX_HEAD)]
    pub max_head_bytes: usize,
    /// Largest request line; beyond, 414.
    #[arg(long, default_value_t = http::MAX_REQUEST_LINE)]
    pub max_request_line: usize,
    /// Largest body accepted (and discarded) on a GET; beyond, 413.
    #[arg(long, default_value_t = http::MAX_BODY)]
    pub max_body_bytes: usize,
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
}

/// `250ms`, `1s`, `2.5s`, `1m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 500ms, 1s, 2m"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in `{s}`: use ms, s or m")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!("`{s}` must be above 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `--idle-poll`: `auto` or a duration (`us`, `ms`, `s`), or 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePoll {
    Auto,
    For(Duration),
}

/// What `--idle-poll auto` means under `--fsync always` with several shards.
pub const IDLE_POLL_ALWAYS: Duration = Duration::from_micros(200);

impl IdlePoll {
    /// The duration a shard polls before it sleeps, for this policy
    /// (`None`: no journal) and shard count. A lone shard parks without
    /// interrupting peers, and measured no gain from polling
    /// (`benches/runs/2026-12-02-vm/quick-042948`).
    pub fn resolve(self, fsync: Option<FsyncPolicy>, shards: usize) -> Duration {
        match self {
            IdlePoll::For(d) => d,
            IdlePoll::Auto if fsync == Some(FsyncPolicy::Always) && shards > 1 => IDLE_POLL_ALWAYS,
            IdlePoll::Auto => Duration::ZERO,
        }
    }
}

fn parse_idle_poll(s: &str) -> Result<IdlePoll, String> {
    let bad = || format!("--idle-poll `{s}`: use auto, 0, or a duration such as 200us or 1ms");
    if s == "auto" {
        return Ok(IdlePoll::Auto);
    }
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None if s == "0" => return Ok(IdlePoll::For(Duration::ZERO)),
        None => return Err(bad()),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let us = match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return Err(bad()),
    };
    // A second of spinning before each sleep is a busy loop, not a setting.
    if !us.is_finite() || !(0.0..=1e6).contains(&us) {
        return Err(format!("--idle-poll `{s}` must be between 0 and 1s"));
    }
    Ok(IdlePoll::For(Duration::from_nanos((us * 1e3) as u64)))
}

/// `--drain`: a duration, or 0.
fn parse_drain(s: &str) -> Result<Duration, String> {
    match s.trim_end_matches(|c: char| c.is_ascii_alphabetic()) {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

/// `--listen`: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` (resolved now; the
/// first address is used, as with most servers), `:PORT` or `PORT` (all
/// IPv4 interfaces).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let forms = "use IP:PORT, [IPv6]:PORT, HOST:PORT, :PORT or PORT (e.g. 127.0.0.1:8080, \
                 localhost:8080, :8080)";
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` has no port: {forms}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("`{port}` is not a port number (0-65535): {forms}"));
    }
    if host.is_empty() || host.contains(':') {
        return Err(format!("`{s}` is not an address: {forms}"));
    }
    let mut addrs =
        (s.to_socket_addrs()).map_err(|e| format!("cannot resolve `{host}`: {e}: {forms}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address: {forms}"))
}

impl ServeArgs {
    pub fn config(&self) -> Result<ServeConfig, String> {
        let (listen, shards, cluster) = match (&self.cluster, &self.instance) {
            (Some(file), Some(name)) => {
                let cluster = Cluster::from_file(file)?;
                let instance = cluster.find(name)?;
                let me = &cluster.instances[instance];
                let listen = me.listen_addr()?;
                let shards = me.shards;
                let seat = ClusterSeat {
                    cluster: Arc::new(cluster),
                    instance,
                };
                (listen, Some(shards), Some(seat))
            }
            _ => (self.listen, self.shards, None),
        };
        let available = host::available_cpus();
        if let Some(seat) = &cluster {
            // SHARDS comes from the file here: say so, not `--shards`.
            let me = &seat.cluster.instances[seat.instance];
            let listed = host::choose_cpus(self.cpus.as_deref(), None, &available)?;
            if me.shards > listed.len() {
                return Err(format!(
                    "instance {} has {} shards in the --cluster file, more than the {} CPUs \
                     available to it: give it fewer SHARDS there, or list more CPUs with --cpus",
                    me.name,
                    me.shards,
                    listed.len()
                ));
            }
        }
        let cpus = host::choose_cpus(self.cpus.as_deref(), shards, &available)?;
        let idle_poll = self
            .idle_poll
            .resolve(self.state_dir.as_ref().map(|_| self.fsync), cpus.len());
        if self.max_size == 0 || self.max_size > MAX_PAGE {
            return Err(format!("--max-size must be between 1 and {MAX_PAGE}"));
        }
        if self.default_size == 0 || self.default_size > self.max_size {
            return Err(format!(
                "--default-size must be between 1 and --max-size ({})",
                self.max_size
            ));
        }
        let at_least = |name: &str, value: usize, min: usize| {
            if value < min {
                Err(format!("--{name} must be at least {min}"))
            } else {
                Ok(())
            }
        };
        at_least("max-connections", self.max_connections, 1)?;
        at_least("max-pipeline", self.max_pipeline, 1)?;
        at_least("max-unsent-bytes", self.max_unsent_bytes, 1)?;
        at_least("max-in-flight", self.max_in_flight, 1)?;
        at_least("max-head-bytes", self.max_head_bytes, 64)?;
        at_least("max-request-line", self.max_request_line, 16)?;
        if self.max_request_line > self.max_head_bytes {
            return Err(format!(
                "--max-request-line ({}) must not exceed --max-head-bytes ({})",
                self.max_request_line, self.max_head_bytes
            ));
        }
        if self.max_head_bytes > 1 << 20 || self.max_body_bytes > 1 << 20 {
            return Err("--max-head-bytes and --max-body-bytes must be at most 1 MiB".into());
        }
        let source = match &self.feed {
            Some(path) => {
                let given = self.synthetic.given();
                if !given.is_empty() {
                    return Err(format!(
                        "{} describe the synthetic feeds, which --feed replaces: give one or \
                         the other",
                        given.join(", ")
                    ));
                }
                Source::File(path.clone())
            }
            None if self.columns.columns().given() => {
                return Err(
                    "--user-column and --items-column name the columns of a Parquet \
                            --feed: give --feed FILE"
                        .into(),
                )
            }
            None => Source::Synthetic(self.synthetic.spec()?),
        };
        if self
            .admin_listen
            .is_some_and(|a| a == listen && a.port() != 0)
        {
            return Err("--admin-listen must differ from --listen".into());
        }
        Ok(ServeConfig {
            cluster,
            listen,
            admin_listen: self.admin_listen,
            drain: self.drain,
            jwt_secret: self.jwt_secret.clone(),
            cpus,
            feeds: Feeds {
                source,
                fallback: self.fallback.clone(),
                fallback_size: self.fallback_size,
                columns: self.columns.columns(),
            },
            conn_limits: ConnLimits {
                http: Limits {
                    default_size: self.default_size,
                    max_size: self.max_size,
                    max_head: self.max_head_bytes,
                    max_request_line: self.max_request_line,
                    max_body: self.max_body_bytes,
                },
                header_timeout: self.header_timeout,
                idle_timeout: self.idle_timeout,
                write_timeout: self.write_timeout,
                max_connections: self.max_connections,
                max_pipeline: self.max_pipeline,
                max_unsent: self.max_unsent_bytes,
            },
            max_in_flight: self.max_in_flight,
            histogram_log: self.histogram_log.clone(),
            histogram_interval: self.histogram_interval,
            log_interval: self.log_interval,
            shutdown_timeout: self.shutdown_timeout,
            pin: !self.no_pin,
            coop_taskrun: !self.no_coop_taskrun,
            idle_poll,
            move_after: if self.no_move_connections {
                0
            } else {
                self.move_after
            },
            state: self.state_dir.clone().map(|dir| StateConfig {
                dir,
                fsync: self.fsync,
            }),
        })
    }
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// The feed file to convert (TSV or Parquet, told by content).
    pub input: PathBuf,
    /// The snapshot to write (written beside it as OUTPUT.tmp, then
    /// renamed: a server mapping the old OUTPUT keeps reading it intact).
    #[arg(long, short, value_name = "OUTPUT")]
    pub out: PathBuf,
    /// Lay the users out for this many shards: a server with as many
    /// shards reads only its own users' bytes [default: all available CPUs].
    #[arg(long)]
    pub shards: Option<usize>,
    #[command(flatten)]
    pub columns: ColumnArgs,
}

impl PackArgs {
    pub fn run(&self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let shards = match self.shards {
            Some(0) => return Err("--shards must be at least 1".into()),
            Some(n) => n,
            None => host::available_cpus().len().max(1),
        };
        if crate::load::detect(&self.input).map_err(|e| e.to_string())?
            == crate::load::Format::Snapshot
        {
            crate::log_line!(
                "{} is already a snapshot: repacking it",
                self.input.display()
            );
        }
        // OUTPUT.tmp is renamed over OUTPUT: never over a device or a pipe
        // (`-o /dev/null` would replace the device with a file).
        if let Ok(meta) = std::fs::metadata(&self.out) {
            if !meta.is_file() {
                return Err(format!(
                    "{} exists and is not a regular file: -o names the snapshot file to \
                     write (it is written as OUTPUT.tmp, then renamed over OUTPUT)",
                    self.out.display()
                ));
            }
            // The same file (by device and inode, whatever the paths say):
            // the snapshot would replace its own input.
            use std::os::unix::fs::MetadataExt;
            if let Ok(input) = std::fs::metadata(&self.input) {
                if (input.dev(), input.ino()) == (meta.dev(), meta.ino()) {
                    return Err(format!(
                        "-o {} is the input file itself: the snapshot would replace the \
                         feed it is made from; write it to another file",
                        self.out.display()
                    ));
                }
            }
        }
        let cpus: Vec<usize> = (0..shards).collect();
        let source = Source::File(self.input.clone());
        let placed = shard::Ownership::new(shards, None);
        let (_, loaded) = crate::load::load_builders(
            &source,
            &self.columns.columns(),
            &cpus,
            false,
            false,
            &placed,
        )?;
        let version = loaded.first().map_or(0, |l| l.1);
        let builders: Vec<_> = loaded.into_iter().map(|l| l.0).collect();
        let users: usize = builders.iter().map(|b| b.users()).sum();
        if users == 0 {
            return Err(format!(
                "{} holds no users: nothing to pack",
                self.input.display()
            ));
        }
        let items: usize = builders.iter().map(|b| b.items().len()).sum();
        let mut tmp = self.out.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            crate::snapshot::write(&mut out, version, &builders)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.out)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", self.out.display()));
        }
        crate::log_line!(
            "packed {} into {}: version {}, {users} users, {items} items, {shards} shards, \
             in {:.2} s",
            self.input.display(),
            self.out.display(),
            crate::load::version_id(version),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[command(flatten)]
    pub synthetic: SyntheticArgs,
    /// Output file [default: standard output].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

impl GenArgs {
    pub fn run(&self) -> Result<(), String> {
        let spec = self.synthetic.spec()?;
        let result = match &self.out {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                synthetic::write_synthetic(
                    &spec,
                    &mut std::io::BufWriter::with_capacity(1 << 20, file),
                )
            }
            None => synthetic::write_synthetic(
                &spec,
                &mut std::io::BufWriter::new(std::io::stdout().lock()),
            ),
        };
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(format!("cannot write the feed file: {e}")),
            Ok(()) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        for bad in ["", "0s", "-1s", "1h", "abc", "1 s", "nan"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_drain("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_idle_poll("auto").unwrap(), IdlePoll::Auto);
        assert_eq!(parse_idle_poll("0").unwrap(), IdlePoll::For(Duration::ZERO));
        assert_eq!(
            parse_idle_poll("200us").unwrap(),
            IdlePoll::For(Duration::from_micros(200))
        );
        assert_eq!(
            parse_idle_poll("1.5ms").unwrap(),
            IdlePoll::For(Duration::from_micros(1500))
        );
        for bad in ["", "200", "fast", "-1us", "2s", "5h", "nanus"] {
            assert!(parse_idle_poll(bad).is_err(), "{bad}");
        }
        let always = Some(FsyncPolicy::Always);
        assert_eq!(IdlePoll::Auto.resolve(always, 2), IDLE_POLL_ALWAYS);
        assert_eq!(IdlePoll::Auto.resolve(always, 1), Duration::ZERO);
        let everysec = Some(FsyncPolicy::EverySec);
        assert_eq!(IdlePoll::Auto.resolve(everysec, 2), Duration::ZERO);
        assert_eq!(IdlePoll::Auto.resolve(None, 4), Duration::ZERO);
        let d = Duration::from_micros(50);
        assert_eq!(IdlePoll::For(d).resolve(None, 1), d);
        assert_eq!(parse_drain("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_drain("15s").unwrap(), Duration::from_secs(15));
        assert!(parse_drain("-1s").is_err());
    }

    #[test]
    fn listen_addresses() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("[::1]:8080"), "[::1]:8080");
        assert_eq!(ok(":8080"), "0.0.0.0:8080");
        assert_eq!(ok("8080"), "0.0.0.0:8080");
        assert!(parse_listen("localhost:8080").unwrap().ip().is_loopback());
        for (bad, says) in [
            ("nowhere", "has no port"),
            ("localhost:http", "not a port number"),
            ("host:99999", "not a port number"),
            (
                "no-such-host.invalid:80",
                "cannot resolve `no-such-host.invalid`",
            ),
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(says) && e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}
