//! State that every request updates, split into per-thread shards so that threads do not pass
//! its cache lines back and forth.
//!
//! A mutex or an atomic shared by every thread costs little when one thread uses it, but on every
//! request from several cores each update waits for the line to come over from the core that
//! updated it last (measured on the gateway's counters and the record writer's queue, see
//! ARCHITECTURE.md, "Per-thread shards"). Here a thread takes a shard index on its first use and
//! keeps it; each shard is a mutex on cache lines of its own, which only its thread takes, except
//! for whoever reads everything ([`Shards::each`]). Threads beyond the shard count share shards:
//! still correct, only no longer free of contention.

use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

/// The next thread's index; a thread takes one on its first use of any `Shards` and keeps it.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

pub struct Shards<T> {
    shards: Box<[CachePadded<Mutex<T>>]>,
}

impl<T: Default> Default for Shards<T> {
    /// Twice as many shards as cores, rounded up to a power of two.
    fn default() -> Self {
        Shards { shards: (0..shard_count()).map(|_| CachePadded::new(Mutex::default())).collect() }
    }
}

impl<T> Shards<T> {
    /// How many shards there are (at least one).
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// `f` on this thread's shard; `None` only for a `Shards` without any (which `Default` does
    /// not make).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let shard = self.shards.get(index(self.shards.len()))?;
        Some(f(&mut shard.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// `f` on every shard in turn, each locked while `f` runs.
    pub fn each(&self, mut f: impl FnMut(&mut T)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// A count that every request moves (up when something starts, down when it ends), kept as one
/// atomic per shard: a thread adds to its own shard's cache line, and only [`Counter::sum`]
/// reads them all. Something counted up on one thread may be counted down on another (a task
/// that moved between workers), so a shard may go below zero; the sum is what counts.
pub struct Counter {
    shards: Box<[CachePadded<AtomicIsize>]>,
}

impl Default for Counter {
    /// As many shards as [`Shards`] has, taken by thread the same way.
    fn default() -> Self {
        Counter { shards: (0..shard_count()).map(|_| CachePadded::new(AtomicIsize::new(0))).collect() }
    }
}

impl Counter {
    /// Add `n` (negative: subtract) on this thread's shard. `SeqCst`, so that a reader who
    /// announced something before reading [`Counter::sum`] either sees this or is seen by the
    /// adder's next `SeqCst` load.
    pub fn add(&self, n: isize) {
        if let Some(shard) = self.shards.get(index(self.shards.len())) {
            shard.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// The shards added up.
    pub fn sum(&self) -> isize {
        self.shards.iter().fold(0isize, |sum, s| sum.wrapping_add(s.load(Ordering::SeqCst)))
    }
}

/// Twice as many shards as cores, rounded up to a power of two: the tokio workers (one per
/// core) each get one of their own, with room for the threads that start before them.
fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 2).clamp(2, 128).next_power_of_two()
}

/// This thread's shard among `len` (a power of two): a mask, where a remainder was a division
/// on every update.
fn index(len: usize) -> usize {
    thread() & len.saturating_sub(1)
}

/// This thread's number: taken on its first use of any `Shards` (or of this) and kept, the
/// same for no two threads. What the pools use to hand a thread an instance it ran last.
pub fn thread() -> usize {
    THREAD.with(|t| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_every_update_is_seen_by_each() {
        let s: std::sync::Arc<Shards<Vec<usize>>> = std::sync::Arc::default();
        std::thread::scope(|scope| {
            for t in 0..6 {
                let s = s.clone();
                scope.spawn(move || {
                    for i in 0..100 {
                        s.with(|v| v.push(t * 1000 + i));
                    }
                });
            }
        });
        let mut all = Vec::new();
        s.each(|v| {
            // A thread keeps its shard: each thread's pushes are all in one shard, in order.
            for t in 0..6 {
                let mine: Vec<usize> = v.iter().copied().filter(|x| x / 1000 == t).collect();
                assert!(mine.is_empty() || mine == (0..100).map(|i| t * 1000 + i).collect::<Vec<_>>(), "{mine:?}");
            }
            all.append(v);
        });
        all.sort_unstable();
        let want: Vec<usize> = (0..6).flat_map(|t| (0..100).map(move |i| t * 1000 + i)).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn a_count_moved_up_on_one_thread_and_down_on_another_sums_to_what_is_left() {
        let c: std::sync::Arc<Counter> = std::sync::Arc::default();
        std::thread::scope(|scope| {
            for _ in 0..6 {
                let c = c.clone();
                scope.spawn(move || (0..100).for_each(|_| c.add(1)));
            }
        });
        assert_eq!(c.sum(), 600);
        // Everything counted down elsewhere, one short: threads' shards go below zero.
        std::thread::scope(|scope| {
            for t in 0..3 {
                let c = c.clone();
                scope.spawn(move || (0..if t == 0 { 199 } else { 200 }).for_each(|_| c.add(-1)));
            }
        });
        assert_eq!(c.sum(), 1);
    }
}
