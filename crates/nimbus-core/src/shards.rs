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

use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Twice as many shards as cores: the tokio workers (one per core) each get one of their own,
    /// with room for the threads that start before them.
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(4, |n| n.get() * 2).clamp(2, 128);
        Shards { shards: (0..n).map(|_| CachePadded::new(Mutex::default())).collect() }
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
        let i = THREAD.with(|t| *t) % self.shards.len().max(1);
        let shard = self.shards.get(i)?;
        Some(f(&mut shard.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// `f` on every shard in turn, each locked while `f` runs.
    pub fn each(&self, mut f: impl FnMut(&mut T)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
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
}
