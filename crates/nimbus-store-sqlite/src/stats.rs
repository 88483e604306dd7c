//! Time series computed from the invocation records, for the dashboard's charts: per bucket the
//! number of invocations, errors and cold starts, and p50/p99 duration.
//!
//! Percentiles are exact (nearest rank over the bucket's durations), computed here rather than
//! in SQL: SQLite has no percentile function in its default build. The query reads one row per
//! invocation in the window through the `(function, start_ms)` index, so a day of a busy
//! function is a few hundred milliseconds of reading; the dashboard asks for it on demand, never
//! the request path.

use nimbus_core::history::{Stats, StatsBucket, StatsQuery};
use rusqlite::params;

use crate::{Result, Store};

/// The value at percentile `p` (0–100) of `sorted` by nearest rank: the smallest value with at
/// least `p` % of the values at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[derive(Default)]
struct Acc {
    errors: u64,
    throttled: u64,
    cold: u64,
    durations: Vec<f64>,
}

impl Acc {
    fn add(&mut self, duration_ms: f64, status: &str, cold: bool) {
        self.durations.push(duration_ms);
        if status != "success" {
            self.errors += 1;
        }
        if status == "throttled" {
            self.throttled += 1;
        }
        if cold {
            self.cold += 1;
        }
    }

    fn finish(mut self, start_ms: u64) -> StatsBucket {
        self.durations.sort_by(f64::total_cmp);
        let n = self.durations.len() as u64;
        let sum: f64 = self.durations.iter().sum();
        StatsBucket {
            start_ms,
            invocations: n,
            errors: self.errors,
            throttled: self.throttled,
            cold: self.cold,
            cold_rate: (n > 0).then(|| self.cold as f64 / n as f64),
            p50_ms: percentile(&self.durations, 50.0),
            p99_ms: percentile(&self.durations, 99.0),
            avg_ms: (n > 0).then(|| sum / n as f64),
            max_ms: self.durations.last().copied(),
        }
    }
}

impl Store {
    /// The time series for `q`, oldest bucket first; every bucket is present, empty or not.
    pub(crate) fn read_stats(&self, q: &StatsQuery) -> Result<Stats> {
        let bucket_ms = q.bucket_ms.max(1);
        let until_ms = q.since_ms.saturating_add(bucket_ms.saturating_mul(u64::from(q.buckets)));
        let mut accs: Vec<Acc> = (0..q.buckets).map(|_| Acc::default()).collect();
        let mut total = Acc::default();
        {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT start_ms, duration_ms, status, cold FROM invocations
                 WHERE (?1 IS NULL OR function = ?1) AND start_ms >= ?2 AND start_ms < ?3",
            )?;
            let mut rows = stmt.query(params![q.function, q.since_ms, until_ms])?;
            while let Some(r) = rows.next()? {
                let start: u64 = r.get(0)?;
                let duration: f64 = r.get(1)?;
                let status: String = r.get(2)?;
                let cold: bool = r.get(3)?;
                let i = (start.saturating_sub(q.since_ms) / bucket_ms) as usize;
                if let Some(acc) = accs.get_mut(i) {
                    acc.add(duration, &status, cold);
                }
                total.add(duration, &status, cold);
            }
            crate::record_batches::for_each_in_range(&conn, q.function.as_deref(), q.since_ms, until_ms, |r| {
                let i = (r.start_ms.saturating_sub(q.since_ms) / bucket_ms) as usize;
                if let Some(acc) = accs.get_mut(i) {
                    acc.add(r.duration_ms, r.status.as_str(), r.cold);
                }
                total.add(r.duration_ms, r.status.as_str(), r.cold);
            })?;
        }
        let buckets = accs
            .into_iter()
            .enumerate()
            .map(|(i, acc)| acc.finish(q.since_ms.saturating_add(bucket_ms.saturating_mul(i as u64))))
            .collect();
        Ok(Stats {
            function: q.function.clone(),
            since_ms: q.since_ms,
            until_ms,
            bucket_ms,
            buckets,
            total: total.finish(q.since_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written directly (not through `InvocationRecord`), so the test only names the
    /// columns the statistics read.
    fn insert(store: &Store, function: &str, start_ms: u64, duration_ms: f64, status: &str, cold: bool) {
        store
            .conn()
            .execute(
                "INSERT INTO invocations(request_id, function, version, trigger, start_ms, duration_ms, billed_ms,
                 memory_mb, max_memory_mb, cold, queue_ms, status) VALUES ('id', ?1, '1', 'invoke', ?2, ?3, 1, 128, 0, ?4, 0, ?5)",
                params![function, start_ms, duration_ms, cold, status],
            )
            .unwrap();
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn buckets_count_errors_cold_starts_and_latency() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = 1_000_000;
        insert(&store, "f", t0 + 10, 100.0, "success", true);
        insert(&store, "f", t0 + 20, 10.0, "success", false);
        insert(&store, "f", t0 + 30, 20.0, "function_error", false);
        insert(&store, "f", t0 + 1_500, 5.0, "throttled", false);
        insert(&store, "g", t0 + 40, 1.0, "success", true);
        insert(&store, "f", t0 + 5_000, 1.0, "success", false); // after the window
        insert(&store, "f", t0 - 1, 1.0, "success", false); // before it

        let q = StatsQuery { function: Some("f".into()), since_ms: t0, bucket_ms: 1_000, buckets: 3 };
        let s = store.read_stats(&q).unwrap();
        assert_eq!(s.until_ms, t0 + 3_000);
        assert_eq!(s.buckets.len(), 3);
        let b0 = &s.buckets[0];
        assert_eq!((b0.start_ms, b0.invocations, b0.errors, b0.cold), (t0, 3, 1, 1));
        assert_eq!((b0.p50_ms, b0.p99_ms, b0.max_ms), (Some(20.0), Some(100.0), Some(100.0)));
        assert!((b0.cold_rate.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        let b1 = &s.buckets[1];
        assert_eq!((b1.invocations, b1.errors, b1.throttled, b1.p50_ms), (1, 1, 1, Some(5.0)));
        assert_eq!(s.buckets[2], StatsBucket { start_ms: t0 + 2_000, ..StatsBucket::default() });
        assert_eq!((s.total.invocations, s.total.errors, s.total.cold), (4, 2, 1));

        let all = store.read_stats(&StatsQuery { function: None, ..q }).unwrap();
        assert_eq!((all.total.invocations, all.total.cold), (5, 2));
    }
}
