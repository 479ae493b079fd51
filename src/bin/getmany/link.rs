//! Measuring the link every benchmark compares against: L and B through the whole read stack.

use std::time::{Duration, Instant};

use getmany::Store;

/// Measures the round trip L (median of 21 reads of the 1-byte object `small`) and the
/// bandwidth B (median of `big_runs` reads of the `big_bytes` object `big`, less L), both
/// through `store`, so that `L + P/B` describes the stack being benchmarked.
pub async fn measure_link<S: Store + ?Sized>(
    store: &S,
    small: &str,
    big: &str,
    big_bytes: u64,
    big_runs: usize,
) -> getmany::Result<(Duration, f64)> {
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        store.get(small, None).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let round_trip = times[times.len() / 2];
    let mut times = Vec::new();
    for _ in 0..big_runs.max(1) {
        let t = Instant::now();
        store.get(big, None).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let took = times[times.len() / 2].saturating_sub(round_trip);
    Ok((round_trip, big_bytes as f64 / took.as_secs_f64().max(1e-6)))
}
