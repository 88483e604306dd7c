//! The storage flusher: once a minute it drains the storage meter's request and byte counts
//! and samples every bucket's and KV namespace's size, and adds both to the hourly
//! `storage_usage` rows (see `nimbus_core::meter` for the method). A last flush runs at stop.
//! Never on a request path: the request path only adds to the meter's atomics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::history::StorageUsageRow;
use nimbus_core::meter::{Integrator, StorageCounts, StorageKind, StorageMeter, HOUR_MS};
use nimbus_core::{KvStore, ObjectStore};
use nimbus_store_sqlite::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often counts are written and sizes sampled.
pub const PERIOD: Duration = Duration::from_secs(60);

struct Flusher {
    store: Store,
    objects: Arc<dyn ObjectStore>,
    kv: Arc<dyn KvStore>,
    meter: Arc<StorageMeter>,
    integrator: Integrator,
}

/// Start the flusher; it flushes once more and ends when `stop` turns true.
pub fn spawn(
    store: Store,
    objects: Arc<dyn ObjectStore>,
    kv: Arc<dyn KvStore>,
    meter: Arc<StorageMeter>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut f = Flusher { store, objects, kv, meter, integrator: Integrator::default() };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => f.flush().await,
                _ = stop.changed() => break,
            }
        }
        f.flush().await;
    })
}

impl Flusher {
    async fn sizes(&self) -> Vec<(StorageKind, String, u64)> {
        let mut sizes = Vec::new();
        match self.objects.list_buckets().await {
            Ok(b) => sizes.extend(b.into_iter().map(|b| (StorageKind::Bucket, b.name, b.bytes))),
            Err(e) => tracing::warn!("storage usage: cannot read the buckets' sizes: {e}"),
        }
        match self.kv.namespaces().await {
            Ok(n) => sizes.extend(n.into_iter().map(|n| (StorageKind::Kv, n.name, n.bytes))),
            Err(e) => tracing::warn!("storage usage: cannot read the KV namespaces' sizes: {e}"),
        }
        sizes
    }

    async fn flush(&mut self) {
        let sizes = self.sizes().await;
        let now = nimbus_core::ids::now_ms();
        let spans = self.integrator.sample(now, sizes);
        let mut rows: BTreeMap<(StorageKind, String, u64), (StorageCounts, u64)> = BTreeMap::new();
        for s in spans {
            rows.entry((s.kind, s.name, s.hour_ms)).or_default().1 += s.byte_seconds;
        }
        for (kind, name, counts) in self.meter.take() {
            rows.entry((kind, name, now - now % HOUR_MS)).or_default().0.add(&counts);
        }
        let rows: Vec<StorageUsageRow> = rows
            .into_iter()
            .map(|((kind, name, hour_ms), (counts, byte_seconds))| StorageUsageRow {
                kind,
                name,
                hour_ms,
                counts,
                byte_seconds,
            })
            .collect();
        let n = rows.len();
        if let Err(e) = self.store.add_storage_usage(rows).await {
            tracing::error!("storage usage: cannot write {n} hourly rows: {e}");
        }
    }
}
