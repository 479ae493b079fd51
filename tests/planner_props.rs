//! Property tests of the coalescing planner: for random request sets and policies, the
//! planned reads reproduce exactly the bytes of individual reads, every index once.

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;
use getmany::coalesce::{self, CoalescePolicy, Fetched, MergeGap};
use getmany::{ByteRange, Error, IoBudget, Request, slice_object};
use proptest::prelude::*;

fn objects() -> HashMap<String, Bytes> {
    let mut m = HashMap::new();
    for (i, len) in [0usize, 1, 10, 1_000, 70_000].into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (j * 31 + i * 7) as u8).collect();
        m.insert(format!("k{i}"), Bytes::from(data));
    }
    m
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let key = prop_oneof![
        (0usize..5).prop_map(|i| format!("k{i}")),
        Just("missing".to_string())
    ];
    // Lengths far past any object, up to u64::MAX: the planner must not list their parts,
    // nor the executor allocate or fetch by their length.
    let huge = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1u64 << 40),
        1u64 << 32..
    ];
    let range = prop_oneof![
        1 => Just(None),
        6 => (0u64..72_000, 0u64..5_000).prop_map(|(s, l)| Some(ByteRange::Bounded(s..s + l))),
        1 => (0u64..72_000, huge.clone())
            .prop_map(|(s, l)| Some(ByteRange::Bounded(s..s.saturating_add(l)))),
        1 => (0u64..72_000).prop_map(|s| Some(ByteRange::Offset(s))),
        1 => (0u64..72_000).prop_map(|n| Some(ByteRange::Suffix(n))),
        1 => huge.prop_map(|n| Some(ByteRange::Suffix(n))),
    ];
    (key, range).prop_map(|(key, range)| Request { key, range })
}

fn policy_strategy() -> impl Strategy<Value = CoalescePolicy> {
    let gap = prop_oneof![
        Just(MergeGap::Never),
        Just(MergeGap::Within(0)),
        (1u64..100_000).prop_map(MergeGap::Within)
    ];
    (
        gap,
        1u64..200_000,
        prop_oneof![Just(u64::MAX), 100u64..50_000],
    )
        .prop_map(|(max_gap, max_merged, split_size)| CoalescePolicy {
            max_gap,
            max_merged,
            split_size,
        })
}

/// A backend read with the crate's range semantics, computed directly from the spec;
/// reporting the object's size (as `ObjectStoreStore` does) or not (as a plain `get`).
fn backend_read(
    objects: &HashMap<String, Bytes>,
    key: &str,
    range: Option<ByteRange>,
    report_size: bool,
) -> getmany::Result<Option<Fetched>> {
    let Some(data) = objects.get(key) else {
        return Ok(None);
    };
    let bytes = slice_object(key, data, range)?;
    Ok(Some(Fetched {
        bytes,
        object_size: report_size.then_some(data.len() as u64),
    }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn planned_reads_reproduce_individual_reads(
        requests in prop::collection::vec(request_strategy(), 0..120),
        policy in policy_strategy(),
        report_size in any::<bool>(),
    ) {
        let objects = objects();
        let plan = coalesce::plan(&requests, &policy);

        // Every valid index is served by exactly one read; invalid ones are set aside.
        let mut seen = vec![0usize; requests.len()];
        for read in &plan.reads {
            for &i in &read.serves {
                seen[i] += 1;
                prop_assert_eq!(&requests[i].key, &read.key);
            }
        }
        for (i, _) in &plan.invalid {
            seen[*i] += 1;
        }
        prop_assert!(seen.iter().all(|&c| c == 1), "coverage {:?}", seen);
        if policy.split_size == u64::MAX {
            prop_assert_eq!(plan.stats.backend_requests, plan.reads.len());
        }

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let budget = IoBudget::new(4);
        let answers: Vec<(usize, getmany::Result<Option<Bytes>>)> = rt.block_on(
            coalesce::execute(requests.clone(), plan, &budget, {
                // Reads run as tasks: the read function owns its backend.
                let objects = objects.clone();
                move |key, range| {
                let r = backend_read(&objects, &key, range, report_size);
                async move { r }
            }})
            .collect(),
        );
        prop_assert_eq!(answers.len(), requests.len());
        let mut once = vec![false; requests.len()];
        for (i, got) in answers {
            prop_assert!(!once[i], "index {} answered twice", i);
            once[i] = true;
            let r = &requests[i];
            let invalid = r.range.as_ref().and_then(|x| x.invalid_reason()).is_some();
            let want = match objects.get(&r.key) {
                // An invalid range is an error whether or not the key exists (no I/O).
                None if invalid => slice_object(&r.key, &Bytes::new(), r.range.clone()).map(Some),
                None => Ok(None),
                Some(data) => slice_object(&r.key, data, r.range.clone()).map(Some),
            };
            match (&want, &got) {
                (Ok(w), Ok(g)) => prop_assert_eq!(w, g, "request {}", r),
                (Err(Error::InvalidRange { .. }), Err(Error::InvalidRange { range, .. })) => {
                    prop_assert_eq!(Some(range), r.range.as_ref(), "error names another range");
                }
                _ => prop_assert!(false, "request {}: want {:?}, got {:?}", r, want, got),
            }
        }
    }

    #[test]
    fn merged_reads_respect_the_cap_and_gap(
        requests in prop::collection::vec(request_strategy(), 0..200),
        gap in 0u64..10_000,
        cap in 1u64..100_000,
    ) {
        let policy = CoalescePolicy { max_gap: MergeGap::Within(gap), max_merged: cap, split_size: u64::MAX };
        let plan = coalesce::plan(&requests, &policy);
        for read in &plan.reads {
            if let Some(ByteRange::Bounded(r)) = &read.range {
                let longest = read.serves.iter().filter_map(|&i| match &requests[i].range {
                    Some(ByteRange::Bounded(q)) => Some(q.end - q.start),
                    _ => None,
                }).max().unwrap_or(0);
                prop_assert!(r.end - r.start <= cap.max(longest), "read {:?} exceeds cap {}", r, cap);
            }
        }
        // Two bounded reads of one key are never within `gap` of each other unless the cap
        // kept them apart.
        let mut by_key: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for read in &plan.reads {
            if let Some(ByteRange::Bounded(r)) = &read.range {
                by_key.entry(&read.key).or_default().push((r.start, r.end));
            }
        }
        for (_, mut runs) in by_key {
            runs.sort();
            for w in runs.windows(2) {
                let ((s1, e1), (_, e2)) = (w[0], w[1]);
                let start2 = w[1].0;
                if start2 <= e1.saturating_add(gap) {
                    prop_assert!(e2.max(e1) - s1 > cap, "runs {:?} should have merged", w);
                }
            }
        }
    }
}

#[test]
fn a_million_requests_plan_quickly_enough_to_run_in_ci() {
    // Not a timing assertion: it checks the planner handles 1e6 requests and merges them.
    let requests: Vec<Request> = (0..1_000_000u64)
        .map(|i| {
            Request::range(
                format!("obj{}", i % 100),
                (i / 100) * 1000..(i / 100) * 1000 + 500,
            )
        })
        .collect();
    let plan = coalesce::plan(&requests, &CoalescePolicy::default());
    assert!(plan.reads.len() < 2_000, "{} reads", plan.reads.len());
    assert_eq!(plan.stats.requests, 1_000_000);
}
