use clap::Parser;
use shardfeed::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.config().and_then(shardfeed::server::serve),
        Command::Gen(args) => args.run(),
        Command::Pack(args) => args.run(),
        Command::Latency(args) => args.run(),
        Command::NginxConf(args) => args.run(),
        Command::Owner(args) => args.run(),
        Command::Relayout(args) => args.run(),
    };
    if let Err(message) = result {
        // Timestamped like every other line (journald, log files).
        shardfeed::log_line!("error: {message}");
        std::process::exit(1);
    }
}
