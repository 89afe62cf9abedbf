//! Counters that every call bumps, kept per thread.
//!
//! A counter shared by all threads is one cache line that every core writes on every call:
//! with two workers serving the same token, each bump waits for the line to come back from
//! the other core. Measured with h2load on cached Verify, that traffic (the call histograms,
//! verdict and cache counters, usage records) cost about 5% of throughput. Here each thread
//! writes only its own cells, which stay in its core's cache; a reader (a scrape, a test)
//! sums every thread's cells. Sums are exact once the writers are done, and never run
//! backwards: each cell only grows.
//!
//! Threads come from `thread_local::ThreadLocal`, made for exactly this (tracing-subscriber
//! keeps its per-thread span stacks in it): a thread's cells are found with one lookup by
//! thread id, and outlive the thread, so counts of a finished thread are never lost.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use thread_local::ThreadLocal;

/// Counters per cache line (128 bytes: `CachePadded`'s alignment on x86-64, where the
/// prefetcher pulls lines in pairs).
const PER_LINE: usize = 16;

/// One thread's counters, in whole cache lines of their own: no other thread's cells, nor
/// anything else, share a line with them.
type Cells = Box<[CachePadded<[AtomicU64; PER_LINE]>]>;

/// A fixed number of counters, each thread writing its own copy.
///
/// Written from thread-local destructors it would panic (`thread_local` cannot tell the
/// thread then); nothing records from one.
#[derive(Debug)]
pub struct LocalCounters {
    len: usize,
    threads: ThreadLocal<Cells>,
}

/// The calling thread's counters (see [`LocalCounters::local`]).
pub struct Local<'a>(&'a [CachePadded<[AtomicU64; PER_LINE]>]);

impl Local<'_> {
    /// Adds `by` to counter `index` (wrapping, as an atomic add would).
    pub fn add(&self, index: usize, by: u64) {
        let cell = &self.0[index / PER_LINE][index % PER_LINE];
        // Only this thread writes its cells, so a plain load and store is an exact add
        // (no read-modify-write lock needed); readers on other threads see whole values.
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }
}

impl LocalCounters {
    /// Makes `len` counters, all zero.
    pub fn new(len: usize) -> Self {
        Self {
            len,
            threads: ThreadLocal::new(),
        }
    }

    /// Returns the calling thread's counters, made at its first call; for several adds
    /// with one lookup.
    pub fn local(&self) -> Local<'_> {
        Local(self.threads.get_or(|| {
            (0..self.len.div_ceil(PER_LINE))
                .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect()
        }))
    }

    /// Adds `by` to counter `index` (wrapping, as an atomic add would). Panics if `index`
    /// is not below the length given to [`LocalCounters::new`], like slice indexing.
    pub fn add(&self, index: usize, by: u64) {
        assert!(index < self.len, "counter {index} of {}", self.len);
        self.local().add(index, by);
    }

    /// Returns counter `index` summed over every thread.
    pub fn get(&self, index: usize) -> u64 {
        self.threads
            .iter()
            .map(|cells| cells[index / PER_LINE][index % PER_LINE].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Returns every counter summed over every thread.
    pub fn totals(&self) -> Vec<u64> {
        let mut totals = vec![0u64; self.len];
        for cells in self.threads.iter() {
            let values = cells.iter().flat_map(|line| line.iter());
            for (total, cell) in totals.iter_mut().zip(values) {
                *total = total.wrapping_add(cell.load(Ordering::Relaxed));
            }
        }
        totals
    }

    /// Returns how many counters there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether there are no counters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn adds_from_many_threads_sum_exactly() {
        let counters = Arc::new(LocalCounters::new(3));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counters.add(0, 1);
                        counters.add(2, t);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // The threads are gone; what they counted is not.
        assert_eq!(counters.get(0), 80_000);
        assert_eq!(counters.get(1), 0);
        assert_eq!(counters.get(2), 10_000 * (0..8).sum::<u64>());
        assert_eq!(counters.totals(), [80_000, 0, 280_000]);
    }

    #[test]
    fn a_reader_never_sees_a_sum_go_back() {
        // Counter 17 is on a thread's second cache line.
        let counters = Arc::new(LocalCounters::new(18));
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        counters.add(17, 1);
                    }
                })
            })
            .collect();
        let mut last = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            let now = counters.get(17);
            assert!(now >= last, "{now} after {last}");
            last = now;
            std::thread::yield_now();
        }
        writers.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(counters.get(17), 150_000);
        assert_eq!(counters.totals()[17], 150_000);
    }

    #[test]
    #[should_panic]
    fn an_index_past_the_end_panics_like_a_slice() {
        LocalCounters::new(2).add(2, 1);
    }
}
