//! Histograms of durations that record without a lock: one add into a bucket and one into
//! the sum, into cells of the recording thread's own, so that they can sit on the Verify
//! path.
//!
//! prometheus-client's own histogram takes a mutex per observation; every Verify would
//! take the same one.

use std::time::Duration;

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

use crate::counters::LocalCounters;

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

/// Many histograms over the same bounds, indexed `0..len`, each thread recording into its
/// own cells (see [`LocalCounters`]): one bucket and one sum per observation, no lock, no
/// cache line shared with another core. Read as merged [`Snapshot`]s.
#[derive(Debug)]
pub struct Histograms {
    /// Inclusive upper bounds in nanoseconds, ascending; `+Inf` follows the last.
    bounds: &'static [u64],
    /// Per histogram: one count per bucket (not cumulative), `+Inf` included, then the sum
    /// in nanoseconds.
    cells: LocalCounters,
}

impl Histograms {
    /// Builds `len` empty histograms over these bounds (nanoseconds, ascending).
    pub fn new(bounds: &'static [u64], len: usize) -> Self {
        debug_assert!(bounds.is_sorted());
        Self {
            bounds,
            cells: LocalCounters::new(len * Self::stride(bounds)),
        }
    }

    fn stride(bounds: &[u64]) -> usize {
        bounds.len() + 2
    }

    /// Records one duration in histogram `index`.
    pub fn observe(&self, index: usize, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds.partition_point(|&bound| bound < nanos);
        let base = index * Self::stride(self.bounds);
        assert!(
            base + self.bounds.len() + 1 < self.cells.len(),
            "histogram {index}"
        );
        let cells = self.cells.local();
        cells.add(base + bucket, 1);
        cells.add(base + self.bounds.len() + 1, nanos);
    }

    /// Returns every histogram as recorded so far, merged over every thread.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let stride = Self::stride(self.bounds);
        self.cells
            .totals()
            .chunks_exact(stride)
            .map(|cells| Snapshot {
                bounds: self.bounds,
                counts: cells[..stride - 1].to_vec(),
                sum_nanos: cells[stride - 1],
            })
            .collect()
    }
}

/// One histogram of durations (see [`Histograms`]).
#[derive(Debug)]
pub struct Histogram(Histograms);

impl Histogram {
    /// Builds an empty histogram over these bounds (nanoseconds, ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self(Histograms::new(bounds, 1))
    }

    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(0, elapsed);
    }

    /// Returns the histogram as recorded so far.
    pub fn snapshot(&self) -> Snapshot {
        self.0.snapshots().swap_remove(0)
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    bounds: &'static [u64],
    /// Observations per bucket, not cumulative; one more than `bounds` (`+Inf`).
    counts: Vec<u64>,
    sum_nanos: u64,
}

impl Snapshot {
    /// Returns how many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Returns the sum of the recorded durations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos)
    }

    /// Writes the histogram in seconds, as Prometheus expects.
    pub fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(|&bound| bound as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            self.sum().as_secs_f64(),
            self.count(),
            &buckets,
            None,
        )
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
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, [1, 1, 1]);
        assert_eq!(snapshot.count(), 3);
        assert_eq!(snapshot.sum(), Duration::from_nanos(1_000_002_500));
    }

    #[test]
    fn histograms_of_a_table_and_threads_are_kept_apart_and_merged() {
        let table = std::sync::Arc::new(Histograms::new(&[1_000], 3));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let table = table.clone();
                std::thread::spawn(move || {
                    table.observe(0, Duration::from_nanos(10));
                    table.observe(2, Duration::from_nanos(5_000));
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let snapshots = table.snapshots();
        assert_eq!(snapshots.len(), 3);
        assert_eq!(
            (snapshots[0].counts.as_slice(), snapshots[0].sum()),
            (&[4, 0][..], Duration::from_nanos(40))
        );
        assert_eq!(snapshots[1].count(), 0);
        assert_eq!(
            (snapshots[2].counts.as_slice(), snapshots[2].sum()),
            (&[0, 4][..], Duration::from_nanos(20_000))
        );
    }
}
