//! `getmany`: the crate's command-line tool.
//!
//! `getmany bench` runs the coalescing benchmark on an embedded S3 server behind a latency
//! model and prints a table per scenario.

mod bench;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Read many pieces of data from storage fast")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare read strategies on an embedded S3 server behind a latency model.
    Bench(bench::BenchArgs),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench(args) => runtime.block_on(bench::run(args)),
    }
}
