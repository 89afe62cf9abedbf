//! A histogram of durations that records without a lock: one atomic add into a bucket and
//! one into the sum, so that it can sit on the Verify path.
//!
//! prometheus-client's own histogram takes a mutex per observation; every Verify would
//! take the same one.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

/// Bucket bounds of gRPC call latency, in nanoseconds: 100 µs to 10 s.
pub const RPC_BOUNDS: &[u64] = &[
    ms(0.1),
    ms(0.25),
    ms(0.5),
    ms(1.0),
    ms(2.5),
    ms(5.0),
    ms(10.0),
    ms(25.0),
    ms(50.0),
    ms(100.0),
    ms(250.0),
    ms(500.0),
    ms(1000.0),
    ms(2500.0),
    ms(5000.0),
    ms(10000.0),
];

/// Bucket bounds of the wait for a database connection, in nanoseconds: 10 µs to 10 s.
pub const ACQUIRE_BOUNDS: &[u64] = &[
    ms(0.01),
    ms(0.05),
    ms(0.1),
    ms(0.5),
    ms(1.0),
    ms(5.0),
    ms(10.0),
    ms(50.0),
    ms(100.0),
    ms(500.0),
    ms(1000.0),
    ms(5000.0),
    ms(10000.0),
];

const fn ms(millis: f64) -> u64 {
    (millis * 1_000_000.0) as u64
}

/// Durations in fixed buckets, with their count and sum.
#[derive(Debug)]
pub struct Histogram {
    /// Inclusive upper bounds in nanoseconds, ascending; `+Inf` follows the last.
    bounds: &'static [u64],
    /// Observations per bucket, not cumulative; one more than `bounds` (`+Inf`).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Builds an empty histogram over these bounds (nanoseconds, ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.is_sorted());
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds.partition_point(|&bound| bound < nanos);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Returns how many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Returns the sum of the recorded durations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }

    /// Writes the histogram in seconds, as Prometheus expects.
    pub fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(|&bound| bound as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum().as_secs_f64(), count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::new(&[1_000, 2_000]);
        histogram.observe(Duration::from_nanos(1_000)); // le 1 µs, inclusive
        histogram.observe(Duration::from_nanos(1_500));
        histogram.observe(Duration::from_secs(1)); // +Inf
        let counts: Vec<u64> = histogram
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 1, 1]);
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.sum(), Duration::from_nanos(1_000_002_500));
    }
}
