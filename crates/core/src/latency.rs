//! Latency histograms that many threads record into without a lock: where the data plane's
//! microseconds go, stage by stage, shown by `steadfast status`.
//!
//! Buckets are log-linear (each power of two cut into [`SUB_BUCKETS`] equal parts), so a
//! quantile is known to within an eighth of its value from 1 µs to hours with a few hundred
//! counters, the way HdrHistogram does it at low precision. Written here rather than taken from
//! a crate: `hdrhistogram` records through `&mut self` (one lock per record on a path taken per
//! request by every session), and prometheus-client's histograms need their buckets chosen up
//! front and give no quantiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Parts each power of two is cut into: quantiles within 1/8 of their value.
pub const SUB_BUCKETS: u64 = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Values below this have a bucket each.
const LINEAR_BELOW: u64 = 2 * SUB_BUCKETS;
/// Octaves above the linear part: up to 2^40 µs (about 12 days), beyond which values share the
/// last bucket.
const OCTAVES: u64 = 40 - (LINEAR_BELOW.trailing_zeros() as u64) + 1;
const BUCKETS: usize = (LINEAR_BELOW + OCTAVES * SUB_BUCKETS) as usize;

/// Durations in microseconds, recorded from any thread.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

/// What a histogram holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram::default()
    }

    pub fn record(&self, elapsed: Duration) {
        self.record_us(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The quantiles, each the upper edge of the bucket it falls in (never below the true
    /// value, at most 1/8 above it), and never above the largest value recorded. Records
    /// made while this runs may be partly counted: a status snapshot, not an audit.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencySummary::default();
        }
        let max_us = self.max_us.load(Ordering::Relaxed);
        let quantile = |q_per_mille: u64| {
            // The rank of the quantile, 1-based: the smallest value with at least q of the
            // records at or below it.
            let rank = (count * q_per_mille).div_ceil(1000).max(1);
            let mut seen = 0;
            for (index, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_upper_edge(index).min(max_us);
                }
            }
            max_us
        };
        LatencySummary {
            count,
            mean_us: self.sum_us.load(Ordering::Relaxed) / count.max(1),
            p50_us: quantile(500),
            p90_us: quantile(900),
            p99_us: quantile(990),
            max_us,
        }
    }
}

/// Durations in buckets that end at powers of two microseconds, for a Prometheus histogram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PowerOfTwoBuckets {
    /// (upper bound in µs, durations in the bucket, not cumulative), the bounds rising; the
    /// last bound is `u64::MAX`: the durations above the others.
    pub buckets: Vec<(u64, u64)>,
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// The durations below 2^`lowest` µs, then between each power of two and the next up to
    /// 2^`highest`, then the rest. Exact: every power of two from 16 µs on starts a
    /// log-linear bucket, and each value below 16 µs has one of its own. Values are whole
    /// microseconds (truncated), so "below 2^k" is "at most 2^k µs" for a duration.
    pub fn power_of_two_buckets(&self, lowest: u32, highest: u32) -> PowerOfTwoBuckets {
        assert!(
            lowest <= highest && highest < 40,
            "bounds within the histogram's range"
        );
        let mut buckets: Vec<(u64, u64)> = (lowest..=highest)
            .map(|k| (1u64 << k, 0))
            .chain(std::iter::once((u64::MAX, 0)))
            .collect();
        for (index, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let edge = bucket_upper_edge(index);
            let slot = buckets
                .iter()
                .position(|(bound, _)| edge < *bound)
                .unwrap_or(buckets.len() - 1);
            buckets[slot].1 += n;
        }
        PowerOfTwoBuckets {
            buckets,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// The bucket of a value: its own below [`LINEAR_BELOW`], then one of [`SUB_BUCKETS`] equal
/// parts of its power of two.
fn bucket_of(us: u64) -> usize {
    if us < LINEAR_BELOW {
        return us as usize;
    }
    let octave = u64::from(63 - us.leading_zeros()); // LINEAR_BELOW.trailing_zeros() and up
    let sub = (us >> (octave - u64::from(SUB_BITS))) & (SUB_BUCKETS - 1);
    let first_octave = u64::from(LINEAR_BELOW.trailing_zeros());
    let index = LINEAR_BELOW + (octave - first_octave) * SUB_BUCKETS + sub;
    (index as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `index`.
fn bucket_upper_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR_BELOW {
        return index;
    }
    let first_octave = u64::from(LINEAR_BELOW.trailing_zeros());
    let octave = first_octave + (index - LINEAR_BELOW) / SUB_BUCKETS;
    let sub = (index - LINEAR_BELOW) % SUB_BUCKETS;
    let width = 1u64 << (octave - u64::from(SUB_BITS));
    if index as usize == BUCKETS - 1 {
        return u64::MAX;
    }
    (1u64 << octave) + (sub + 1) * width - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_values_without_gaps() {
        let mut next = 0u64;
        for index in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(next), index, "first value of bucket {index}");
            let edge = bucket_upper_edge(index);
            assert_eq!(bucket_of(edge), index, "last value of bucket {index}");
            next = edge + 1;
        }
        assert_eq!(bucket_of(next), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn power_of_two_buckets_count_each_value_below_its_bound() {
        let histogram = LatencyHistogram::new();
        let values = [
            0,
            3,
            4,
            15,
            16,
            17,
            31,
            32,
            1000,
            1023,
            1024,
            1025,
            5_000_000,
            1 << 39,
        ];
        for us in values {
            histogram.record_us(us);
        }
        let got = histogram.power_of_two_buckets(2, 10);
        assert_eq!(got.sum_us, values.iter().sum::<u64>());
        let expected: Vec<(u64, u64)> = [4u64, 8, 16, 32, 64, 128, 256, 512, 1024]
            .into_iter()
            .chain([u64::MAX])
            .map(|bound| {
                let below = |b: u64| values.iter().filter(|v| **v < b).count() as u64;
                let previous = if bound == 4 {
                    0
                } else if bound == u64::MAX {
                    below(1024)
                } else {
                    below(bound / 2)
                };
                (bound, below(bound) - previous)
            })
            .collect();
        assert_eq!(got.buckets, expected);
        assert_eq!(
            got.buckets.iter().map(|(_, n)| n).sum::<u64>(),
            values.len() as u64
        );
    }
}
