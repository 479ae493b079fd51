//! The I/O budget: how many reads a store has in flight, shared by all of its calls.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

tokio::task_local! {
    /// Budgets already held by the future being polled. A read that runs inside another read
    /// of the same budget does not take a second permit, so nested calls neither multiply
    /// the budget nor deadlock waiting on themselves.
    static HELD: Vec<u64>;
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A store's I/O budget: at most [`limit`](IoBudget::limit) reads in flight at once, across
/// every call on the store.
///
/// Clones share the same budget. Each store owns one and exposes it through
/// [`Store::io_budget`](crate::Store::io_budget); the default
/// [`get_many`](crate::Store::get_many) runs every `get` inside [`IoBudget::run`].
///
/// Reentrant: a future run inside `run` that calls `run` on the same budget again (a `get`
/// that calls `get_many` on its own store, say) proceeds without a second permit.
#[derive(Debug, Clone)]
pub struct IoBudget {
    semaphore: Arc<Semaphore>,
    limit: usize,
    id: u64,
}

impl IoBudget {
    /// The default limit of reads in flight per store: 64.
    ///
    /// Measured with `getmany bench-store --sweep` (README, "Choosing the defaults"): 4,096
    /// reads of 16 KiB at a 10 ms round trip took 6.4 s at 8 in flight, 1.73 s at 32, 0.89 s
    /// at 64 (1.05x of the `ceil(4096/C)·L + P/B` model), 0.49 s at 128 and 0.25 s at 256 on a
    /// quiet machine (under load, 256 was CPU-bound at 1.39x of the model). The budget is
    /// also how many connections and response buffers a store holds open against a real
    /// service, so the default stays at 64; raise it ([`IoBudget::new`]) for high-latency
    /// links with many small objects.
    pub const DEFAULT_LIMIT: usize = 64;

    /// A budget of `limit` reads in flight (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        IoBudget {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The maximum number of reads in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many more reads could start now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Runs `fut` holding one unit of this budget, waiting (first come, first served) until
    /// one is free. If the calling future already holds this budget, `fut` runs at once.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        let held = HELD.try_with(|held| held.clone()).unwrap_or_default();
        if held.contains(&self.id) {
            return fut.await;
        }
        // The semaphore is never closed, so acquiring only fails if it were.
        let _permit = self.semaphore.acquire().await;
        let mut now_held = held;
        now_held.push(self.id);
        HELD.scope(now_held, fut).await
    }
}

/// `fut` with the budgets held where this is called (not where `fut` is later polled): for a
/// read handed to another task, so that it keeps its caller's reentrancy.
pub(crate) fn carry_held<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let held = HELD.try_with(|held| held.clone()).unwrap_or_default();
    HELD.scope(held, fut)
}

impl Default for IoBudget {
    fn default() -> Self {
        IoBudget::new(Self::DEFAULT_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nested_runs_take_one_permit() {
        let budget = IoBudget::new(1);
        let b2 = budget.clone();
        let out = budget
            .run(async move {
                assert_eq!(b2.available(), 0);
                b2.run(async { 7 }).await
            })
            .await;
        assert_eq!(out, 7);
        assert_eq!(budget.available(), 1);
    }

    #[tokio::test]
    async fn separate_budgets_are_independent() {
        let a = IoBudget::new(1);
        let b = IoBudget::new(1);
        let b2 = b.clone();
        a.run(async move {
            b2.run(async { assert_eq!(b2.available(), 0) }).await;
        })
        .await;
        assert_eq!(b.available(), 1);
    }
}
