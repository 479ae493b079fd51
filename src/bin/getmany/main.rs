//! `getmany`: the crate's command-line tool.
//!
//! `getmany bench` runs the coalescing benchmark on an embedded S3 server behind a latency
//! model and prints a table per scenario. `getmany bench-zarr` compares the zarr reader with
//! one request per chunk; `getmany s3-serve` serves the same arrays to other clients.
//! `getmany serve` runs the bundle endpoint (Tigris bundle, AIStore GetBatch, S3 GET/HEAD)
//! over a directory of buckets or an object_store URL. `getmany bench-bundle` compares
//! `BundleStore` with concurrent GETs through a TCP delay proxy; `getmany bench-archive`
//! reads members of zip shards through `ArchiveStore` against downloading the archives.

mod async_proxy;
mod bench;
mod bench_archive;
mod bench_bundle;
mod bench_zarr;
mod late;
mod link;
mod proxy;
mod serve;
mod sweep;

use clap::{Parser, Subcommand};

/// The benchmarks run client and servers in one process: memory is allocated on one thread
/// and freed on another all the time, which glibc's allocator handles poorly (README,
/// "Choosing the defaults" has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Serve a bundle endpoint in front of a directory of buckets or an object_store URL.
    Serve(serve::ServeArgs),
    /// Compare BundleStore (both protocols) with concurrent GETs through a TCP delay proxy.
    BenchBundle(bench_bundle::BenchBundleArgs),
    /// Read members of zip shards through ArchiveStore against downloading the archives.
    BenchArchive(bench_archive::BenchArchiveArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("getmany: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Bench(args) => runtime.block_on(sweep::run(args)),
        Command::BenchStore(args) => runtime.block_on(bench::run(args)),
        Command::BenchZarr(args) => runtime.block_on(bench_zarr::run(args)),
        Command::S3Serve(args) => runtime.block_on(bench_zarr::serve(args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::BenchBundle(args) => runtime.block_on(bench_bundle::run(args)),
        Command::BenchArchive(args) => runtime.block_on(bench_archive::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Display, not Debug: the message names what was wrong.
        Err(e) => {
            eprintln!("getmany: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
