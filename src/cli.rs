//! The command line: `shardfeed serve` and `shardfeed gen`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data::{self, Synthetic};
use crate::host;
use crate::http::SizeLimits;
use crate::server::{ServeConfig, Source};

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
pub enum Command {
    /// Run the server (on synthetic data unless --feed is given).
    Serve(ServeArgs),
    /// Write the synthetic data set as a feed file (`user<TAB>item,item,...`).
    Gen(GenArgs),
}

#[derive(Debug, Args)]
pub struct SyntheticArgs {
    /// Synthetic users, with ids 1..=N.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u32,
    /// Items per synthetic user.
    #[arg(long, default_value_t = 200)]
    pub feed_len: u32,
    /// Synthetic item ids are drawn from 0..N (skewed to low ids).
    #[arg(long, default_value_t = 10_000_000)]
    pub items: u32,
    /// Seed of the synthetic data: same seed, same feeds.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SyntheticArgs {
    fn spec(&self) -> Result<Synthetic, String> {
        let spec = Synthetic {
            users: self.users,
            feed_len: self.feed_len,
            items: self.items,
            seed: self.seed,
        };
        spec.check()?;
        Ok(spec)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port shared by all shards.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Number of shards (one pinned executor each) [default: all available CPUs].
    #[arg(long)]
    pub shards: Option<usize>,
    /// CPUs to run shards on, e.g. `0-3,8` [default: all available].
    #[arg(long)]
    pub cpus: Option<String>,
    /// Feed file to serve (`user<TAB>item,item,...`) instead of synthetic data.
    #[arg(long)]
    pub feed: Option<PathBuf>,
    #[command(flatten)]
    pub synthetic: SyntheticArgs,
    /// Fallback pool file: one item id per line, in preference order.
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
}

impl ServeArgs {
    pub fn config(&self) -> Result<ServeConfig, String> {
        let cpus = host::choose_cpus(self.cpus.as_deref(), self.shards, &host::available_cpus())?;
        if self.max_size == 0 || self.max_size > MAX_PAGE {
            return Err(format!("--max-size must be between 1 and {MAX_PAGE}"));
        }
        if self.default_size == 0 || self.default_size > self.max_size {
            return Err(format!(
                "--default-size must be between 1 and --max-size ({})",
                self.max_size
            ));
        }
        let source = match &self.feed {
            Some(path) => Source::File(path.clone()),
            None => Source::Synthetic(self.synthetic.spec()?),
        };
        Ok(ServeConfig {
            listen: self.listen,
            cpus,
            source,
            fallback: self.fallback.clone(),
            fallback_size: self.fallback_size,
            limits: SizeLimits {
                default_size: self.default_size,
                max_size: self.max_size,
            },
        })
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
                data::write_synthetic(&spec, &mut std::io::BufWriter::with_capacity(1 << 20, file))
            }
            None => data::write_synthetic(
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
