//! A fixed log-bucket latency histogram in the manner of HdrHistogram, written here so that the
//! load generator needs no dependency for it.
//!
//! Values (nanoseconds) below [`LINEAR_BUCKETS`] have a bucket each; above, every power of two
//! is split into [`SUB_BUCKETS`] equal buckets, so a bucket is at most 1/128 of its values wide
//! and a reported value (the bucket's middle) is within 0.4% of every value it stands for.
//! Recording is one `fetch_add` on a shared array: every connection task records into the same
//! histogram, and the progress line reads it while the load runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of precision below each power of two: 2^7 = 128 buckets per octave.
const SUB_BITS: u32 = 7;
/// Buckets per power of two, above the linear range.
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Values below this get one bucket each (the first two octaves at full resolution).
const LINEAR_BUCKETS: u64 = 2 * SUB_BUCKETS;
/// log2 of [`LINEAR_BUCKETS`]: the first octave that is split.
const LINEAR_BITS: u32 = SUB_BITS + 1;
/// Largest value kept exactly; larger values count in the last bucket (2^40 ns is ~18 minutes).
pub const VALUE_MAX: u64 = (1 << 40) - 1;
/// Number of buckets needed to reach [`VALUE_MAX`].
const BUCKETS: usize = index_of(VALUE_MAX) + 1;

/// The bucket of a value (values above [`VALUE_MAX`] must be clamped first).
const fn index_of(value: u64) -> usize {
    if value < LINEAR_BUCKETS {
        return value as usize;
    }
    let octave = 63 - value.leading_zeros(); // >= LINEAR_BITS
    let shift = octave - SUB_BITS; // value >> shift lies in [SUB_BUCKETS, 2 * SUB_BUCKETS)
    let sub = (value >> shift) - SUB_BUCKETS;
    (LINEAR_BUCKETS + (octave - LINEAR_BITS) as u64 * SUB_BUCKETS + sub) as usize
}

/// The smallest value of a bucket and the bucket's width.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < LINEAR_BUCKETS {
        return (index, 1);
    }
    let k = index - LINEAR_BUCKETS;
    let octave = (k / SUB_BUCKETS) as u32 + LINEAR_BITS;
    let shift = octave - SUB_BITS;
    ((k % SUB_BUCKETS + SUB_BUCKETS) << shift, 1 << shift)
}

/// A histogram many tasks record into at once.
pub struct AtomicHistogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), max: AtomicU64::new(0) }
    }
}

impl AtomicHistogram {
    /// Counts one value (nanoseconds).
    pub fn record(&self, value: u64) {
        let value = value.min(VALUE_MAX);
        self.counts[index_of(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// A copy of the counts so far, for quantiles.
    pub fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total = counts.iter().sum();
        Histogram { counts, total, max: self.max.load(Ordering::Relaxed) }
    }
}

/// A snapshot of an [`AtomicHistogram`].
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), or 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0–1.0): the middle of the bucket holding the value of rank
    /// ceil(q × n), never above the largest value recorded (which is the answer for the top
    /// rank); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_bounds(index);
                return (low + (width - 1) / 2).min(self.max);
            }
        }
        self.max
    }

    /// The mean of the recorded values, from bucket middles.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let sum: f64 = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| {
                let (low, width) = bucket_bounds(i);
                (low as f64 + (width - 1) as f64 / 2.0) * c as f64
            })
            .sum();
        sum / self.total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_its_own_bucket_and_buckets_tile_the_range() {
        let mut expected_low = 0u64;
        for index in 0..BUCKETS {
            let (low, width) = bucket_bounds(index);
            assert_eq!(low, expected_low, "bucket {index} starts where the previous one ended");
            assert_eq!(index_of(low), index);
            assert_eq!(index_of(low + width - 1), index);
            expected_low = low + width;
        }
        assert_eq!(expected_low, VALUE_MAX + 1);
    }

    #[test]
    fn reported_values_are_within_one_percent() {
        let mut v = 1u64;
        while v < VALUE_MAX {
            let h = AtomicHistogram::default();
            h.record(v);
            h.record(VALUE_MAX); // keeps `max` from clamping the answer
            let got = h.snapshot().quantile(0.5);
            let error = (got as f64 - v as f64).abs() / v as f64;
            assert!(error <= 0.01, "{v} reported as {got} ({:.3}%)", error * 100.0);
            v = v * 101 / 100 + 1;
        }
    }

    #[test]
    fn quantiles_of_a_uniform_distribution() {
        let h = AtomicHistogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1_000);
        }
        let s = h.snapshot();
        assert_eq!(s.len(), 100_000);
        for (q, expected) in [(0.5, 50_000_000.0), (0.95, 95_000_000.0), (0.99, 99_000_000.0)] {
            let got = s.quantile(q) as f64;
            assert!((got - expected).abs() / expected < 0.01, "q{q}: {got}");
        }
        assert_eq!(s.max(), 100_000_000);
        assert_eq!(s.quantile(1.0), 100_000_000, "the top quantile is the exact maximum");
        assert!((s.mean() - 50_000_500.0).abs() / 50_000_500.0 < 0.01);
    }

    #[test]
    fn empty_and_huge_values() {
        let h = AtomicHistogram::default();
        assert_eq!(h.snapshot().quantile(0.99), 0);
        h.record(u64::MAX);
        assert_eq!(h.snapshot().max(), VALUE_MAX);
        assert_eq!(h.snapshot().quantile(0.5), VALUE_MAX);
    }
}
