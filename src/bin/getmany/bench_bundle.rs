//! `getmany bench-bundle` (placeholder, filled in below).

use clap::Args;

/// Options of `getmany bench-bundle`.
#[derive(Debug, Args)]
pub struct BenchBundleArgs {}

/// Runs the benchmark.
pub async fn run(_args: BenchBundleArgs) -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}
