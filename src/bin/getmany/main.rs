//! `getmany`: the crate's command-line tool.
//!
//! `getmany bench` runs the coalescing benchmark on an embedded S3 server behind a latency
//! model and prints a table per scenario. `getmany bench-zarr` compares the zarr reader with
//! one request per chunk; `getmany s3-serve` serves the same arrays to other clients.

mod bench;
mod bench_zarr;
mod proxy;
mod sweep;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Read many pieces of data from storage fast")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The sweep: object size x batch size x strategy, with tables, CSV and a chart.
    Bench(sweep::SweepArgs),
    /// The foundation scenarios: 4,096 small objects and 1,000 packed ranges, strategy by
    /// strategy, with the sweeps behind the defaults (`--sweep`).
    BenchStore(bench::BenchArgs),
    /// The zarr reader against one request per chunk, plain and sharded arrays.
    BenchZarr(bench_zarr::BenchZarrArgs),
    /// Serve an in-memory S3 bucket (a directory, the bench-zarr arrays) until stdin closes.
    S3Serve(bench_zarr::ServeArgs),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench(args) => runtime.block_on(sweep::run(args)),
        Command::BenchStore(args) => runtime.block_on(bench::run(args)),
        Command::BenchZarr(args) => runtime.block_on(bench_zarr::run(args)),
        Command::S3Serve(args) => runtime.block_on(bench_zarr::serve(args)),
    }
}
