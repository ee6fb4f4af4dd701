//! The latency histogram's quantiles against the exact ones of the same records: never below,
//! at most an eighth above, never above the largest record.

use proptest::prelude::*;
use steadfast_core::latency::{LatencyHistogram, LatencySummary};

/// The exact quantile: the smallest record with at least `q_per_mille` of them at or below.
fn exact(sorted: &[u64], q_per_mille: u64) -> u64 {
    let rank = (sorted.len() as u64 * q_per_mille).div_ceil(1000).max(1);
    sorted[rank as usize - 1]
}

fn values() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(
        prop_oneof![0u64..64, 0u64..100_000, 0u64..10_000_000_000, any::<u64>()],
        1..400,
    )
}

proptest! {
    #[test]
    fn quantiles_are_within_an_eighth_above_the_exact_ones(values in values()) {
        let histogram = LatencyHistogram::new();
        for &v in &values {
            histogram.record_us(v);
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let summary = histogram.summary();
        prop_assert_eq!(summary.count, values.len() as u64);
        prop_assert_eq!(summary.max_us, *sorted.last().unwrap());
        for (q, got) in [(500, summary.p50_us), (900, summary.p90_us), (990, summary.p99_us)] {
            let want = exact(&sorted, q);
            prop_assert!(got >= want, "p{} {} below the exact {}", q / 10, got, want);
            prop_assert!(got <= summary.max_us);
            // Beyond 2^40 µs values share one bucket: only the max bounds them.
            if want < 1 << 40 {
                prop_assert!(got - want <= want / 8, "p{} {} too far above {}", q / 10, got, want);
            }
        }
    }
}

#[test]
fn an_empty_histogram_says_nothing() {
    assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
}

#[test]
fn threads_record_without_losing_a_count() {
    let histogram = std::sync::Arc::new(LatencyHistogram::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let histogram = histogram.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    histogram.record_us(i % 1000 + t);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let summary = histogram.summary();
    assert_eq!(summary.count, 40_000);
    assert_eq!(summary.max_us, 1002);
}
