//! `getmany`: the crate's command-line tool.
//!
//! `getmany bench` runs the coalescing benchmark on an embedded S3 server behind a latency
//! model and prints a table per scenario; `getmany bench-archive` reads members of zip
//! shards through `ArchiveStore` against downloading the archives.

mod bench;
mod bench_archive;

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
    /// Read members of zip shards through ArchiveStore against downloading the archives.
    BenchArchive(bench_archive::BenchArchiveArgs),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::BenchArchive(args) => runtime.block_on(bench_archive::run(args)),
    }
}
