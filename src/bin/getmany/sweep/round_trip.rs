//! [`RoundTripPerCall`]: the latency model for a store whose `get_many` is one round of
//! requests sent at once (a `BundleStore`: up to `bundles_in_flight` bundles in parallel).
//!
//! `getmany::wrap::Latency` over a `Store` also charges one round trip per `get_many`, but
//! then waits for each answer in turn with `sleep_until(transfer_done)`; without a bandwidth
//! that deadline is "now", which tokio's timer rounds up to the next millisecond tick, so a
//! bundle of 1,000 members pays about 1.1 s instead of one round trip (measured). This
//! wrapper charges the round trip exactly as that wrapper charges one GET at the
//! object_store level (`sleep(round_trip)`, then a wait for the shared link), and paces the
//! members over the link only when a bandwidth is set, sleeping only when more than a
//! timer tick ahead, so the timer's rounding is never paid per member.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};
use getmany::{ByteRange, GetManyStream, IoBudget, ObjectMeta, Request, Result, Store};
use tokio::time::Instant;

/// The finest sleep tokio's timer resolves; a member whose transfer would end sooner than
/// this is not slept for (the lag is carried by the link's clock and slept off later).
const TICK: Duration = Duration::from_millis(1);

/// Charges `round_trip` once per call (`get`, `get_many`, `size`, `exists`) and sends the
/// answers' bytes over a link of `bandwidth` bytes per second shared by every call.
#[derive(Debug)]
pub struct RoundTripPerCall<S> {
    inner: S,
    round_trip: Duration,
    bandwidth: Option<f64>,
    /// When the shared link has sent everything queued so far.
    busy_until: Mutex<Instant>,
    /// Round trips charged and pacing sleeps taken, for tests.
    rounds: AtomicU64,
    sleeps: AtomicU64,
}

impl<S> RoundTripPerCall<S> {
    /// Charges `round_trip` per call to `inner`, and `bandwidth` bytes per second if set.
    pub fn new(inner: S, round_trip: Duration, bandwidth: Option<f64>) -> Self {
        RoundTripPerCall {
            inner,
            round_trip,
            bandwidth,
            busy_until: Mutex::new(Instant::now()),
            rounds: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
        }
    }

    /// Round trips charged and pacing sleeps taken so far.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (
            self.rounds.load(Ordering::Relaxed),
            self.sleeps.load(Ordering::Relaxed),
        )
    }

    /// Queues `bytes` on the link; returns when they will have crossed it.
    fn transfer_done(&self, bytes: u64) -> Instant {
        let now = Instant::now();
        let Some(bandwidth) = self.bandwidth else {
            return now;
        };
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*busy).max(now);
        *busy = start + Duration::from_secs_f64(bytes as f64 / bandwidth);
        *busy
    }

    /// One round trip, with the same two timer waits as one GET under
    /// `getmany::wrap::Latency` at the object_store level, so both pay the same rounding.
    async fn round(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.round_trip).await;
        tokio::time::sleep_until(self.transfer_done(0)).await;
    }

    /// `bytes` over the link, slept for only when the link is more than a tick behind.
    async fn pace(&self, bytes: u64) {
        if self.bandwidth.is_some() {
            let due = self.transfer_done(bytes);
            if due > Instant::now() + TICK {
                self.sleeps.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

fn answer_len(result: &Result<Option<Bytes>>) -> u64 {
    match result {
        Ok(Some(b)) => b.len() as u64,
        _ => 0,
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Store> Store for RoundTripPerCall<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        self.round().await;
        let result = self.inner.get(key, range).await;
        self.pace(answer_len(&result)).await;
        result
    }

    fn get_many(&self, requests: Vec<Request>) -> GetManyStream<'_> {
        if requests.is_empty() {
            return stream::empty().boxed();
        }
        // Nothing is sent before the stream is polled, and then only after the round trip.
        let inner = self.inner.get_many(requests);
        stream::once(async move {
            self.round().await;
            inner.then(move |(index, result)| async move {
                self.pace(answer_len(&result)).await;
                (index, result)
            })
        })
        .flatten()
        .boxed()
    }

    async fn get_with_meta(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Bytes, ObjectMeta)>> {
        self.round().await;
        let result = self.inner.get_with_meta(key, range).await;
        if let Ok(Some((b, _))) = &result {
            self.pace(b.len() as u64).await;
        }
        result
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.round().await;
        self.inner.size(key).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.round().await;
        self.inner.exists(key).await
    }

    fn io_budget(&self) -> &IoBudget {
        self.inner.io_budget()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use getmany::MemoryStore;

    fn store(bandwidth: Option<f64>) -> RoundTripPerCall<MemoryStore> {
        let inner = MemoryStore::new();
        for i in 0..1000 {
            inner.insert(format!("k{i}"), vec![0u8; 1000]);
        }
        RoundTripPerCall::new(inner, Duration::from_millis(1), bandwidth)
    }

    fn batch() -> Vec<Request> {
        (0..1000).map(|i| Request::whole(format!("k{i}"))).collect()
    }

    #[tokio::test]
    async fn one_round_trip_per_call_and_no_sleep_per_member() {
        let store = store(None);
        assert_eq!(store.get_many(batch()).count().await, 1000);
        assert_eq!(store.get_many(Vec::new()).count().await, 0);
        store.get("k1", None).await.unwrap().unwrap();
        assert_eq!(store.counts(), (2, 0));
    }

    #[tokio::test]
    async fn members_are_paced_only_when_the_link_falls_a_tick_behind() {
        // 1 MB at 100 MB/s is 10 ms of link time: at most ten 1 ms sleeps (fewer when a
        // sleep overshoots), never one per member.
        let store = store(Some(100e6));
        assert_eq!(store.get_many(batch()).count().await, 1000);
        let (rounds, sleeps) = store.counts();
        assert_eq!(rounds, 1);
        assert!((1..=10).contains(&sleeps), "{sleeps} sleeps");
    }
}
