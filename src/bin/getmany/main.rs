//! `getmany`: the crate's command-line tool.
//!
//! `getmany bench` runs the coalescing benchmark on an embedded S3 server behind a latency
//! model and prints a table per scenario. `getmany serve` runs the bundle endpoint (Tigris
//! bundle, AIStore GetBatch, S3 GET/HEAD) over a directory of buckets or an object_store URL.
//! `getmany bench-bundle` compares `BundleStore` with concurrent GETs through a TCP delay
//! proxy.

mod bench;
mod bench_bundle;
mod serve;

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
    /// Serve a bundle endpoint in front of a directory of buckets or an object_store URL.
    Serve(serve::ServeArgs),
    /// Compare BundleStore (both protocols) with concurrent GETs through a TCP delay proxy.
    BenchBundle(bench_bundle::BenchBundleArgs),
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
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::BenchBundle(args) => runtime.block_on(bench_bundle::run(args)),
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
