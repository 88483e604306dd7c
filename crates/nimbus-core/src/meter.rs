//! Storage metering: what object storage and KV are used for, counted the way S3 and Cloudflare
//! KV bill it, and the stored bytes integrated over time into GB-months.
//!
//! - Requests are counted per bucket or namespace by class ([`OpClass`]): S3 bills writes and
//!   lists as class A (PUT, COPY, POST, LIST, multipart), reads as class B (GET, HEAD) and
//!   deletes not at all; Cloudflare KV bills reads, writes, deletes and lists each. Bytes in
//!   (object or value bytes received) and out (sent) are counted beside them.
//! - Counting is a few relaxed atomic adds on the request path ([`StorageMeter`]); a background
//!   task drains the counts ([`StorageMeter::take`]) once a period into hourly rows
//!   ([`crate::history::StorageUsageRow`]), the way invocation usage is summed per hour.
//! - Stored bytes: the same task samples every bucket's and namespace's size once a period and
//!   [`Integrator`] turns the samples into byte-seconds: the size seen at one sample is taken to
//!   hold until the next (a step function), and the interval is split at hour boundaries.
//!   GB-months = byte-seconds / (10⁹ × 730 h × 3600 s), S3's definition (a GB is 10⁹ bytes,
//!   a month 730 hours). The first sample after a start has nothing before it: the time nimbus
//!   was down is not billed.
//!
//! KV calls are counted by [`MeteredKv`], a wrapper around the store. The S3 layer also reports totals for `/metrics` here (operations by name, errors by code,
//! bytes by direction), so the gateway can render them without depending on the AWS crate.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::kv::{CasOutcome, KvEntry, KvError, KvNamespace, KvPage, KvStore};

/// One hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;
/// Bytes in a GB, as S3 bills it.
pub const GB: f64 = 1e9;
/// Hours in a billing month, as S3 bills it.
pub const MONTH_HOURS: f64 = 730.0;

/// GB-months of `byte_seconds` (bytes held × seconds held).
pub fn gb_months(byte_seconds: u64) -> f64 {
    byte_seconds as f64 / (GB * MONTH_HOURS * 3600.0)
}

/// What is metered: an object storage bucket or a KV namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StorageKind {
    Bucket,
    Kv,
}

impl StorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Bucket => "bucket",
            StorageKind::Kv => "kv",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bucket" => Some(StorageKind::Bucket),
            "kv" => Some(StorageKind::Kv),
            _ => None,
        }
    }
}

/// How a request is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// S3 class B (GET, HEAD); a KV read.
    Read,
    /// S3 class A (PUT, COPY, POST, multipart); a KV write (put, increment, compare-and-swap).
    Write,
    /// Free on S3; a KV delete.
    Delete,
    /// S3 class A (LIST); a KV list.
    List,
}

/// Counts of one bucket or namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageCounts {
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
    pub lists: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl StorageCounts {
    pub fn add(&mut self, o: &StorageCounts) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.deletes += o.deletes;
        self.lists += o.lists;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }

    pub fn is_zero(&self) -> bool {
        *self == StorageCounts::default()
    }
}

#[derive(Default)]
struct Cell([AtomicU64; 6]);

impl Cell {
    fn read(&self, take: bool) -> StorageCounts {
        let v = |i: usize| {
            self.0.get(i).map_or(0, |a| if take { a.swap(0, Ordering::Relaxed) } else { a.load(Ordering::Relaxed) })
        };
        StorageCounts { reads: v(0), writes: v(1), deletes: v(2), lists: v(3), bytes_in: v(4), bytes_out: v(5) }
    }

    fn add(&self, i: usize, n: u64) {
        if let Some(a) = self.0.get(i) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// S3 totals since start, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Totals {
    /// (operation, count), by operation name.
    pub operations: Vec<(&'static str, u64)>,
    /// (error code, count), by code.
    pub errors: Vec<(String, u64)>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The counters. One per node, shared by the S3 layer, the KV callers, the flusher and
/// `/metrics`.
#[derive(Default)]
pub struct StorageMeter {
    buckets: RwLock<HashMap<String, Arc<Cell>>>,
    namespaces: RwLock<HashMap<String, Arc<Cell>>>,
    s3_ops: RwLock<BTreeMap<&'static str, AtomicU64>>,
    s3_errors: Mutex<BTreeMap<String, u64>>,
    s3_bytes_in: AtomicU64,
    s3_bytes_out: AtomicU64,
}

impl StorageMeter {
    fn map(&self, kind: StorageKind) -> &RwLock<HashMap<String, Arc<Cell>>> {
        match kind {
            StorageKind::Bucket => &self.buckets,
            StorageKind::Kv => &self.namespaces,
        }
    }

    fn cell(&self, kind: StorageKind, name: &str) -> Arc<Cell> {
        let map = self.map(kind);
        if let Some(c) = map.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return c.clone();
        }
        map.write().unwrap_or_else(|e| e.into_inner()).entry(name.to_owned()).or_default().clone()
    }

    /// Count one request on `name`.
    pub fn request(&self, kind: StorageKind, name: &str, class: OpClass) {
        let i = match class {
            OpClass::Read => 0,
            OpClass::Write => 1,
            OpClass::Delete => 2,
            OpClass::List => 3,
        };
        self.cell(kind, name).add(i, 1);
    }

    /// Count bytes received (`bytes_in`) and sent (`bytes_out`) for `name`.
    pub fn bytes(&self, kind: StorageKind, name: &str, bytes_in: u64, bytes_out: u64) {
        let c = self.cell(kind, name);
        c.add(4, bytes_in);
        c.add(5, bytes_out);
        if kind == StorageKind::Bucket {
            self.s3_bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
            self.s3_bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    /// Count one S3 operation (by its S3 name, from a fixed set) for `/metrics`.
    pub fn s3_operation(&self, operation: &'static str) {
        if let Some(n) = self.s3_ops.read().unwrap_or_else(|e| e.into_inner()).get(operation) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut ops = self.s3_ops.write().unwrap_or_else(|e| e.into_inner());
        ops.entry(operation).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Count one S3 error response, by its code.
    pub fn s3_error(&self, code: &str) {
        let mut m = self.s3_errors.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                m.insert(code.to_owned(), 1);
            }
        }
    }

    /// The counts since the last `take`, zeroing them; buckets and namespaces with nothing
    /// counted are forgotten (so names that were only ever mistyped do not pile up).
    pub fn take(&self) -> Vec<(StorageKind, String, StorageCounts)> {
        self.collect(true)
    }

    /// The counts since the last `take`, leaving them in place.
    pub fn pending(&self) -> Vec<(StorageKind, String, StorageCounts)> {
        self.collect(false)
    }

    fn collect(&self, take: bool) -> Vec<(StorageKind, String, StorageCounts)> {
        let mut out = Vec::new();
        for kind in [StorageKind::Bucket, StorageKind::Kv] {
            let mut cells = self.map(kind).write().unwrap_or_else(|e| e.into_inner());
            let mut got: Vec<_> =
                cells.iter().map(|(n, c)| (kind, n.clone(), c.read(take))).filter(|(_, _, c)| !c.is_zero()).collect();
            if take {
                // Nobody else holds a cell with a count of 1, and none can get one while the
                // lock is held: removing it loses no count.
                cells.retain(|name, c| Arc::strong_count(c) > 1 || got.iter().any(|(_, n, _)| n == name));
            }
            got.sort_by(|a, b| a.1.cmp(&b.1));
            out.extend(got);
        }
        out
    }

    /// S3 totals since start.
    pub fn s3_totals(&self) -> S3Totals {
        S3Totals {
            operations: self
                .s3_ops
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
                .collect(),
            errors: self
                .s3_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            bytes_in: self.s3_bytes_in.load(Ordering::Relaxed),
            bytes_out: self.s3_bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// A [`KvStore`] that counts every call on the store it wraps, as Cloudflare KV bills them:
/// `get` a read (value bytes out), `put`, `increment` and `compare_and_swap` writes (value bytes
/// in), `delete` a delete, `list` a list. Namespace calls are not counted. The composition root
/// wraps the KV store once, so the management API, process functions and `wasi:keyvalue` are
/// all counted the same way.
pub struct MeteredKv {
    inner: Arc<dyn KvStore>,
    meter: Arc<StorageMeter>,
}

impl MeteredKv {
    pub fn new(inner: Arc<dyn KvStore>, meter: Arc<StorageMeter>) -> Self {
        MeteredKv { inner, meter }
    }

    fn count(&self, ns: &str, class: OpClass, bytes_in: u64, bytes_out: u64) {
        self.meter.request(StorageKind::Kv, ns, class);
        if bytes_in + bytes_out > 0 {
            self.meter.bytes(StorageKind::Kv, ns, bytes_in, bytes_out);
        }
    }
}

#[async_trait]
impl KvStore for MeteredKv {
    async fn create_namespace(&self, ns: &str) -> Result<bool, KvError> {
        self.inner.create_namespace(ns).await
    }

    async fn delete_namespace(&self, ns: &str) -> Result<bool, KvError> {
        self.inner.delete_namespace(ns).await
    }

    async fn namespaces(&self) -> Result<Vec<KvNamespace>, KvError> {
        self.inner.namespaces().await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        let got = self.inner.get(ns, key).await;
        let out = got.as_ref().ok().and_then(Option::as_ref).map_or(0, |e| e.value.len() as u64);
        self.count(ns, OpClass::Read, 0, out);
        got
    }

    async fn put(&self, ns: &str, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<u64, KvError> {
        self.count(ns, OpClass::Write, value.len() as u64, 0);
        self.inner.put(ns, key, value, ttl).await
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        self.count(ns, OpClass::Delete, 0, 0);
        self.inner.delete(ns, key).await
    }

    async fn list(&self, ns: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<KvPage, KvError> {
        self.count(ns, OpClass::List, 0, 0);
        self.inner.list(ns, prefix, cursor, limit).await
    }

    async fn increment(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.count(ns, OpClass::Write, 0, 0);
        self.inner.increment(ns, key, by, ttl).await
    }

    /// The platform's own counters (rate limits): not an app's usage, so not metered.
    async fn increment_volatile(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.inner.increment_volatile(ns, key, by, ttl).await
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<CasOutcome, KvError> {
        self.count(ns, OpClass::Write, value.len() as u64, 0);
        self.inner.compare_and_swap(ns, key, expected, value, ttl).await
    }
}

/// Byte-seconds of one bucket or namespace in one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSpan {
    pub kind: StorageKind,
    pub name: String,
    pub hour_ms: u64,
    pub byte_seconds: u64,
}

/// Sizes seen at one sample: (kind, name, bytes).
pub type Sizes = Vec<(StorageKind, String, u64)>;

/// Integrates sampled sizes over time (see the module docs for the method).
#[derive(Default)]
pub struct Integrator {
    /// The previous sample: when, and what it saw.
    last: Option<(u64, Sizes)>,
}

impl Integrator {
    /// Record the sizes seen at `now_ms`; returns the byte-seconds of the sizes seen at the
    /// previous sample over the time since it, per hour. A clock that went back gives nothing.
    pub fn sample(&mut self, now_ms: u64, sizes: Sizes) -> Vec<StoredSpan> {
        let mut out = Vec::new();
        if let Some((from, prev)) = self.last.take() {
            let mut t = from;
            while t < now_ms {
                let hour = t - t % HOUR_MS;
                let end = now_ms.min(hour + HOUR_MS);
                let ms = u128::from(end - t);
                for (kind, name, bytes) in prev.iter().filter(|p| p.2 > 0) {
                    let byte_seconds = u64::try_from(u128::from(*bytes) * ms / 1000).unwrap_or(u64::MAX);
                    out.push(StoredSpan { kind: *kind, name: name.clone(), hour_ms: hour, byte_seconds });
                }
                t = end;
            }
        }
        self.last = Some((now_ms, sizes));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_gigabyte_held_for_730_hours_is_one_gb_month() {
        let mut i = Integrator::default();
        let start = 10 * HOUR_MS + 30 * 60_000; // half past ten
        assert!(i.sample(start, vec![(StorageKind::Bucket, "b".into(), 1_000_000_000)]).is_empty());
        let mut spans = Vec::new();
        // Sampled every 7 minutes (not a divisor of an hour) for 730 h.
        let end = start + 730 * HOUR_MS;
        let mut t = start;
        while t < end {
            t = (t + 7 * 60_000).min(end);
            spans.extend(i.sample(t, vec![(StorageKind::Bucket, "b".into(), 1_000_000_000)]));
        }
        let total: u64 = spans.iter().map(|s| s.byte_seconds).sum();
        assert_eq!(total, 1_000_000_000 * 730 * 3600);
        assert!((gb_months(total) - 1.0).abs() < 1e-12);
        // Split at hour boundaries: the first hour holds 30 min, every full hour 3600 s.
        let first = spans.iter().filter(|s| s.hour_ms == 10 * HOUR_MS).map(|s| s.byte_seconds).sum::<u64>();
        assert_eq!(first, 1_000_000_000 * 1800);
        let full = spans.iter().filter(|s| s.hour_ms == 11 * HOUR_MS).map(|s| s.byte_seconds).sum::<u64>();
        assert_eq!(full, 1_000_000_000 * 3600);
    }

    #[test]
    fn each_size_holds_until_the_next_sample_and_empty_stores_cost_nothing() {
        let mut i = Integrator::default();
        let kv = |n: u64| vec![(StorageKind::Kv, "n".into(), n), (StorageKind::Bucket, "empty".into(), 0)];
        i.sample(0, kv(100));
        let a = i.sample(60_000, kv(300));
        assert_eq!(a, vec![StoredSpan { kind: StorageKind::Kv, name: "n".into(), hour_ms: 0, byte_seconds: 6000 }]);
        let b = i.sample(120_000, kv(0));
        assert_eq!(b[0].byte_seconds, 18_000);
        assert!(i.sample(180_000, kv(0)).is_empty());
        assert!(i.sample(100_000, kv(5)).is_empty(), "a clock that went back bills nothing");
    }

    #[test]
    fn take_drains_counts_and_pending_leaves_them() {
        let m = StorageMeter::default();
        m.request(StorageKind::Bucket, "b", OpClass::Write);
        m.request(StorageKind::Bucket, "b", OpClass::Read);
        m.request(StorageKind::Bucket, "b", OpClass::Read);
        m.bytes(StorageKind::Bucket, "b", 10, 20);
        m.request(StorageKind::Kv, "n", OpClass::Delete);
        m.s3_operation("PutObject");
        m.s3_error("NoSuchKey");
        let want = StorageCounts { reads: 2, writes: 1, bytes_in: 10, bytes_out: 20, ..Default::default() };
        assert_eq!(m.pending()[0], (StorageKind::Bucket, "b".into(), want));
        let taken = m.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[1].2.deletes, 1);
        assert!(m.take().is_empty());
        let t = m.s3_totals();
        assert_eq!((t.bytes_in, t.bytes_out), (10, 20), "totals are never drained");
        assert_eq!(t.operations, vec![("PutObject", 1)]);
        assert_eq!(t.errors, vec![("NoSuchKey".to_owned(), 1)]);
    }
}
