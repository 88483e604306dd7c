//! Bucket triggers: the forwarder that turns the object store's outbox into async events.
//!
//! The object store writes an outbox row in the same transaction as every acknowledged change
//! of a watched bucket ([`ObjectStore::outbox`]). The forwarder long-polls the outbox (woken by
//! the commit itself, no polling interval), matches each row against the live deployment's
//! bucket triggers (event names with `*`, prefix, suffix), and for each match accepts an async
//! event (`EventSource::Bucket`, the S3 notification as payload) through [`Engine`], which runs
//! it with the function's retries and `on_failure`. Only once every match of a row is stored
//! does it delete the row.
//!
//! Exactly once to the queue: the event's idempotency key is derived from the row id (never
//! reused by the store) and the trigger's index, and is checked with no time window. A crash
//! after the accept but before the row's deletion hands the row over again at the next start,
//! and its accept is then answered "duplicate" without adding an event; a crash before the
//! accept loses nothing, since the row is still there.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::events::{S3Change, S3Event};
use nimbus_core::objects::ObjectChange;
use nimbus_core::queue::EventSource;
use nimbus_core::{BucketTrigger, ObjectStore, TriggerSource, TriggerSpec};

use crate::{AcceptError, AcceptRequest, Engine};

/// Most outbox rows one round forwards.
const BATCH: usize = 256;
/// How long one outbox read waits for a change before reading again.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// Backoff after a failed read or accept: starts here, doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where the forwarder finds the live deployment's triggers.
pub trait LiveTriggers: Send + Sync + 'static {
    /// Every trigger of the live deployment, in manifest order (their index is part of each
    /// event's idempotency key).
    fn triggers(&self) -> Vec<TriggerSpec>;
}

/// Whether a bucket trigger selects a change: its bucket, one of its event names, its prefix
/// and suffix.
pub fn selects(t: &BucketTrigger, change: &ObjectChange) -> bool {
    t.bucket == change.bucket
        && t.events.iter().any(|pattern| change.event.matches(pattern))
        && t.prefix.as_deref().is_none_or(|p| change.key.starts_with(p))
        && t.suffix.as_deref().is_none_or(|s| change.key.ends_with(s))
}

/// The idempotency key of the event a change causes for the trigger at `index`.
pub fn idempotency_key(change: &ObjectChange, index: usize) -> String {
    format!("bucket-trigger:{}:{index}", change.id)
}

/// The S3 notification a change causes for a trigger (one record, as S3 sends it).
pub fn notification(change: &ObjectChange, index: usize, function: &str) -> S3Event {
    let request_id = format!("{:016X}", change.id);
    let configuration_id = format!("{function}-trigger-{index}");
    S3Event::single(&S3Change {
        name: change.event,
        bucket: &change.bucket,
        key: &change.key,
        size: change.size,
        etag: change.etag.as_deref(),
        version_id: None,
        sequence: change.id,
        time_ms: change.time_ms,
        source_ip: "127.0.0.1",
        request_id: &request_id,
        configuration_id: &configuration_id,
    })
}

/// The async events one change causes: (function, payload, idempotency key) per matching
/// trigger.
fn events_of(change: &ObjectChange, triggers: &[TriggerSpec]) -> Vec<AcceptRequest> {
    let mut out = Vec::new();
    for (index, t) in triggers.iter().enumerate() {
        let TriggerSource::Bucket(b) = &t.source else { continue };
        if !selects(b, change) {
            continue;
        }
        let payload = serde_json::to_vec(&notification(change, index, &t.function)).unwrap_or_default();
        out.push(AcceptRequest {
            function: t.function.clone(),
            qualifier: None,
            payload: Bytes::from(payload),
            source: EventSource::Bucket,
            idempotency_key: Some(idempotency_key(change, index)),
        });
    }
    out
}

/// Forward outbox rows to the engine until the task is dropped. Returns the task's handle
/// (aborting it at any point loses nothing: see the module documentation).
pub fn spawn(
    objects: Arc<dyn ObjectStore>,
    engine: Arc<Engine>,
    triggers: Arc<dyn LiveTriggers>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        loop {
            let ok = match objects.outbox(BATCH, IDLE_WAIT).await {
                Ok(rows) if rows.is_empty() => true,
                Ok(rows) => forward(objects.as_ref(), &engine, &triggers.triggers(), rows).await,
                Err(e) => {
                    tracing::error!("bucket triggers cannot read the object store's outbox: {e}");
                    false
                }
            };
            if ok {
                backoff = MIN_BACKOFF;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    })
}

/// Accept every event the rows cause, then delete the rows whose events are all stored.
/// Returns false when something failed (those rows stay, to be forwarded again).
async fn forward(
    objects: &dyn ObjectStore,
    engine: &Arc<Engine>,
    triggers: &[TriggerSpec],
    rows: Vec<ObjectChange>,
) -> bool {
    let mut accepts = tokio::task::JoinSet::new();
    for change in &rows {
        for req in events_of(change, triggers) {
            let (engine, id) = (engine.clone(), change.id);
            accepts.spawn(async move { (id, engine.accept_once(req).await) });
        }
    }
    let mut failed = std::collections::HashSet::new();
    while let Some(joined) = accepts.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((id, Err(e @ AcceptError::TooLarge { .. }))) => {
                // Retrying cannot make it fit; the change is dropped, loudly.
                tracing::error!(outbox_id = id, "a bucket event cannot be queued and is dropped: {e}");
            }
            Ok((id, Err(e))) => {
                tracing::warn!(outbox_id = id, "a bucket event could not be queued yet: {e}");
                failed.insert(id);
            }
            Err(e) => {
                tracing::error!("a bucket event's accept task failed: {e}");
                return false;
            }
        }
    }
    let done: Vec<u64> = rows.iter().map(|c| c.id).filter(|id| !failed.contains(id)).collect();
    if let Err(e) = objects.outbox_done(&done).await {
        // The rows come back and their accepts are answered "duplicate": nothing fires twice.
        tracing::error!("bucket triggers cannot delete forwarded outbox rows: {e}");
        return false;
    }
    failed.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use nimbus_core::events::S3EventName;
    use nimbus_core::QueueTrigger;

    fn change(event: S3EventName, key: &str) -> ObjectChange {
        let created = event != S3EventName::Delete;
        ObjectChange {
            id: 42,
            event,
            bucket: "photos".into(),
            key: key.into(),
            size: created.then_some(5),
            etag: created.then(|| "5d41402abc4b2a76b9719d911017c592".into()),
            time_ms: 1_795_000_000_123,
        }
    }

    fn bucket(events: &[&str], prefix: Option<&str>, suffix: Option<&str>) -> BucketTrigger {
        BucketTrigger {
            bucket: "photos".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            prefix: prefix.map(str::to_owned),
            suffix: suffix.map(str::to_owned),
        }
    }

    #[test]
    fn a_trigger_selects_by_bucket_event_prefix_and_suffix() {
        let put = change(S3EventName::Put, "images/a b.jpg");
        let created = bucket(&["s3:ObjectCreated:*"], Some("images/"), Some(".jpg"));
        assert!(selects(&created, &put));
        assert!(!selects(&created, &change(S3EventName::Put, "docs/a.jpg")), "outside the prefix");
        assert!(!selects(&created, &change(S3EventName::Put, "images/a.png")), "outside the suffix");
        assert!(!selects(&created, &change(S3EventName::Delete, "images/a.jpg")), "another event");
        assert!(selects(&created, &change(S3EventName::CompleteMultipartUpload, "images/x.jpg")));
        assert!(!selects(&BucketTrigger { bucket: "other".into(), ..created.clone() }, &put));
        let exact = bucket(&["s3:ObjectCreated:Copy", "s3:ObjectRemoved:*"], None, None);
        assert!(!selects(&exact, &put));
        assert!(selects(&exact, &change(S3EventName::Copy, "k")));
        assert!(selects(&exact, &change(S3EventName::Delete, "k")));
    }

    /// One event per matching bucket trigger (queue triggers and other buckets are skipped),
    /// each with a key naming the row and the trigger, and the S3 notification as payload.
    #[test]
    fn a_change_becomes_one_s3_notification_per_matching_trigger() {
        let queue = QueueTrigger {
            queue: "jobs".into(),
            batch_size: 10,
            batch_window: Duration::ZERO,
            max_concurrency: None,
            report_batch_item_failures: false,
        };
        let triggers = vec![
            TriggerSpec { function: "q".into(), source: TriggerSource::Queue(queue) },
            TriggerSpec {
                function: "thumbs".into(),
                source: TriggerSource::Bucket(bucket(&["s3:ObjectCreated:*"], None, None)),
            },
            TriggerSpec {
                function: "gone".into(),
                source: TriggerSource::Bucket(bucket(&["s3:ObjectRemoved:*"], None, None)),
            },
            TriggerSpec {
                function: "audit".into(),
                source: TriggerSource::Bucket(bucket(&["s3:ObjectCreated:Put"], None, None)),
            },
        ];
        let events = events_of(&change(S3EventName::Put, "images/a b+c.jpg"), &triggers);
        let got: Vec<(&str, Option<&str>)> =
            events.iter().map(|e| (e.function.as_str(), e.idempotency_key.as_deref())).collect();
        assert_eq!(got, [("thumbs", Some("bucket-trigger:42:1")), ("audit", Some("bucket-trigger:42:3"))]);
        assert!(events.iter().all(|e| e.source == EventSource::Bucket && e.qualifier.is_none()));
        let v: serde_json::Value = serde_json::from_slice(&events[0].payload).unwrap();
        let r = &v["Records"][0];
        assert_eq!(v["Records"].as_array().unwrap().len(), 1);
        assert_eq!(r["eventSource"], "aws:s3");
        assert_eq!(r["eventName"], "ObjectCreated:Put");
        assert_eq!(r["eventTime"], "2026-11-18T11:06:40.123Z");
        assert_eq!(r["s3"]["bucket"]["name"], "photos");
        assert_eq!(r["s3"]["object"]["key"], "images/a+b%2Bc.jpg");
        assert_eq!(r["s3"]["object"]["size"], 5);
        assert_eq!(r["s3"]["object"]["eTag"], "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(r["s3"]["object"]["sequencer"], "000000000000002A");
        assert_eq!(r["s3"]["configurationId"], "thumbs-trigger-1");
        let removed = events_of(&change(S3EventName::Delete, "k"), &triggers);
        assert_eq!(removed.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&removed[0].payload).unwrap();
        assert_eq!(v["Records"][0]["eventName"], "ObjectRemoved:Delete");
        assert!(v["Records"][0]["s3"]["object"].get("size").is_none());
    }
}
