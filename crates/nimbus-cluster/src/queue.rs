//! The durable async queue on NATS JetStream: [`NatsQueue`], the cluster's [`QueueStore`].
//!
//! # Where things live
//! - The stream `NIMBUS_ASYNC` (work-queue retention, replicated) holds one message per event
//!   waiting or running, on the subject `nimbus.async.<function>`. Its body is `GEN:ID`: the
//!   event id and the event's generation (bumped by a redrive), and its `Nats-Msg-Id` is
//!   `ID.GEN`, so JetStream drops a second publish of the same generation (the PubAck says
//!   `duplicate`).
//! - One durable pull consumer, `nimbus-async`, shared by every node: explicit acks, an ack
//!   wait (30 s by default) kept alive with `+WPI` (progress) while an attempt runs, unlimited
//!   deliveries (nimbus counts attempts itself). Whichever node fetches a message claims the
//!   event; a retry is a NAK with the backoff as its delay; success, failure and dead-lettering
//!   ack it (the work queue then deletes it).
//! - The KV bucket `nimbus-events` holds each event's state (`e.ID`: status, counters, payload,
//!   result, history) as JSON, updated with compare-and-swap on the entry's revision, so two
//!   nodes never both move an event; idempotency keys (`i.SHA256`, create-if-absent); and each
//!   schedule's latest slot (`c.SHA256`).
//!
//! # Lifecycle of an event
//! `accept` creates `e.ID` (queued), then publishes the message and returns after the PubAck:
//! the 202 follows a write replicated on the stream's quorum. `claim` fetches messages without
//! waiting, reads each event's state and moves it to `running` (CAS), keeping the message's
//! acker in memory. `finish` writes the outcome (CAS on the revision the claim wrote) and then
//! acks or NAKs. A crash between the two leaves the message, which comes back after the ack
//! wait; `claim` then finds the event finished and acks it. A node that dies with claims in
//! flight stops sending progress: after the ack wait JetStream redelivers those messages to the
//! other nodes, which take the events over (the dead claim's attempt stays counted, as after a
//! restart of the embedded queue). A node that was slow rather than dead finds its claim taken
//! over when it finishes (the revision moved on) and drops its outcome: an event runs twice at
//! most for what was in flight on a node that lost contact, never more.
//!
//! # What is deliberately approximate
//! Shares (`claim`'s per-function cap) hold per claim and per node: a message over its
//! function's share goes back with a short NAK delay, and nodes do not coordinate their
//! shares, so a cluster of N nodes runs at most N times a function's share. `next_due` knows
//! only this node's retries (and is woken by every publish on the subjects, through a plain
//! subscription, see [`QueueStore::changed`]); a retry NAKed by another node is noticed at the
//! engine's next poll (≤ 1 s). `stats`, `list`, `redrive` and `purge` read every event's
//! latest state through an ordered consumer: fine for thousands, slow for millions.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, push, AckPolicy, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream, AckKind};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use nimbus_core::ids::now_ms;
use nimbus_core::queue::{
    Accepted, AttemptRecord, ClaimedEvent, EventSource, EventStatus, EventView, Finish, NewEvent, QueueError,
    QueueStats, QueueStore,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::{patiently, token, Cluster, ClusterError, Patience};

/// The stream of events waiting or running.
pub const STREAM: &str = "NIMBUS_ASYNC";
/// The subjects of [`STREAM`]: `nimbus.async.<function>`.
const SUBJECTS: &str = "nimbus.async";
/// The durable consumer every node pulls from.
pub const CONSUMER: &str = "nimbus-async";
/// The events' state, idempotency keys and schedules' slots.
pub const BUCKET: &str = "nimbus-events";
/// A message over its function's share comes back after this.
const SHARE_WAIT: Duration = Duration::from_millis(100);
/// A state the revision of which moved between read and write is looked at again this often.
const CAS_TRIES: usize = 5;
/// How long an accept keeps retrying a write that failed for a reason that passes: when a NATS
/// server dies its clients reconnect to another and its streams elect new leaders, and for a
/// few seconds writes time out or find no responder. A retried write cannot double: the
/// event's state is created under its fresh id, and its message carries a de-duplication id.
const ACCEPT_PATIENCE: Duration = Duration::from_secs(8);
/// How many fetched events one node claims at once (each claim is two round trips to the
/// event bucket's leader).
const CLAIMS_AT_ONCE: usize = 64;

/// How long one `claim`'s pull request may wait on the server (it answers at once when the
/// consumer has nothing ready).
const FETCH_EXPIRES: Duration = Duration::from_millis(500);
/// An idempotency key whose event is not stored yet is another accept in progress for this
/// long; after that its accept is taken to have died, and the key is taken over.
const ACCEPT_IN_PROGRESS_MS: u64 = 5_000;
/// Largest result kept with a finished event: a KV value must fit in one NATS message (1 MiB
/// by default), and results are for inspection, not delivery.
const MAX_RESULT: usize = 256 * 1024;
/// How long a scan of every event's state may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// Redelivery after a NAK is timed by the server: the engine looks this much later.
const REDELIVERY_SLACK_MS: u64 = 20;

/// Settings of the queue; the defaults are production's.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// How long a claimed event's message stays with a node that stopped sending progress
    /// before JetStream redelivers it to another: how late a dead node's events restart.
    pub ack_wait: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions { ack_wait: Duration::from_secs(30) }
    }
}

/// One node's handle on the cluster's async queue. Dropping it stops its progress signals:
/// its claims go to other nodes after the ack wait.
pub struct NatsQueue {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Inner {
    js: jetstream::Context,
    client: async_nats::Client,
    kv: kv::Store,
    /// The KV bucket's own stream, for scans.
    kv_stream: stream::Stream,
    consumer: consumer::Consumer<pull::Config>,
    node: String,
    /// Events this node claimed and has not finished.
    held: Mutex<HashMap<String, Held>>,
    /// Notified by every publish on the event subjects (from any node).
    wake: Notify,
    /// When this node's retries come due.
    due: Mutex<BTreeSet<u64>>,
}

/// A claim in force on this node.
struct Held {
    acker: Arc<Acker>,
    /// The state as the claim wrote it, and that write's revision.
    record: Record,
    revision: u64,
    /// Writing the outcome failed: the engine retries `finish` for a moment, and the next
    /// progress tick lets go of the claim, so that the ack wait hands the event to another
    /// node instead of it staying `running` here for good.
    finish_failed: bool,
}

/// An event's state in the KV bucket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    function: String,
    qualifier: Option<String>,
    /// Base64.
    payload: String,
    source: EventSource,
    status: EventStatus,
    attempts: u32,
    function_errors: u32,
    platform_failures: u32,
    accepted_ms: u64,
    updated_ms: u64,
    next_run_ms: u64,
    last_error_type: Option<String>,
    last_error: Option<String>,
    reason: Option<String>,
    /// Base64.
    result: Option<String>,
    history: Vec<AttemptRecord>,
    /// Bumped by a redrive: messages of an earlier generation are stale.
    generation: u32,
    /// `NODE/NONCE` of the claim in force while running.
    claim: Option<String>,
}

/// The claimed event's idempotency key: which event holds it, since when.
#[derive(Serialize, Deserialize)]
struct IdemRecord {
    id: String,
    accepted_ms: u64,
}

fn storage(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("NATS JetStream failed to {what}: {e}"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Bytes {
    Bytes::from(base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default())
}

fn event_key(id: &str) -> String {
    format!("e.{}", token(id))
}

fn hashed_key(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{prefix}.{}", hex::encode(h.finalize()))
}

fn subject(function: &str) -> String {
    format!("{SUBJECTS}.{}", token(function))
}

impl Record {
    fn new(ev: &NewEvent) -> Record {
        Record {
            id: ev.id.clone(),
            function: ev.function.clone(),
            qualifier: ev.qualifier.clone(),
            payload: b64(&ev.payload),
            source: ev.source,
            status: EventStatus::Queued,
            attempts: 0,
            function_errors: 0,
            platform_failures: 0,
            accepted_ms: ev.now_ms,
            updated_ms: ev.now_ms,
            next_run_ms: ev.run_at_ms,
            last_error_type: None,
            last_error: None,
            reason: None,
            result: None,
            history: Vec::new(),
            generation: 0,
            claim: None,
        }
    }

    fn encode(&self) -> Result<Bytes, QueueError> {
        serde_json::to_vec(self).map(Bytes::from).map_err(|e| storage("encode an event's state", e))
    }

    fn decode(bytes: &[u8]) -> Result<Record, QueueError> {
        serde_json::from_slice(bytes)
            .map_err(|e| QueueError::Storage(format!("an event's state in the KV bucket {BUCKET} is unreadable: {e}")))
    }

    fn claimed(&self) -> ClaimedEvent {
        ClaimedEvent {
            id: self.id.clone(),
            function: self.function.clone(),
            qualifier: self.qualifier.clone(),
            payload: unb64(&self.payload),
            source: self.source,
            accepted_ms: self.accepted_ms,
            attempts: self.attempts,
            function_errors: self.function_errors,
            platform_failures: self.platform_failures,
        }
    }

    fn view(&self) -> EventView {
        let json = |b: Bytes| {
            serde_json::from_slice(&b)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&b).into_owned()))
        };
        let waiting = self.status == EventStatus::Queued;
        EventView {
            request_id: self.id.clone(),
            function: self.function.clone(),
            qualifier: self.qualifier.clone(),
            source: self.source,
            status: self.status,
            attempts: self.attempts,
            accepted_ms: self.accepted_ms,
            updated_ms: self.updated_ms,
            next_run_ms: waiting.then_some(self.next_run_ms),
            last_error_type: self.last_error_type.clone(),
            last_error: self.last_error.clone(),
            reason: self.reason.clone(),
            payload: json(unb64(&self.payload)),
            result: self.result.as_deref().map(|r| json(unb64(r))),
            history: self.history.clone(),
        }
    }

    /// Apply an attempt's outcome (the claim ends).
    fn finish(&mut self, attempt: AttemptRecord, finish: &Finish, now: u64) {
        if !matches!(finish, Finish::Succeeded { .. }) {
            // As the embedded queue: a success keeps the last error of the attempts before it.
            self.last_error_type.clone_from(&attempt.error_type);
            self.last_error.clone_from(&attempt.error_message);
        }
        self.history.push(attempt);
        self.updated_ms = now;
        self.claim = None;
        match finish {
            Finish::Succeeded { response } => {
                self.status = EventStatus::Succeeded;
                self.result = Some(if response.len() <= MAX_RESULT {
                    b64(response)
                } else {
                    let note = format!("(a {}-byte result, not kept in cluster mode)", response.len());
                    b64(serde_json::Value::String(note).to_string().as_bytes())
                });
            }
            Finish::Retry { run_at_ms, failure } => {
                self.status = EventStatus::Queued;
                self.next_run_ms = *run_at_ms;
                self.function_errors += u32::from(failure.is_function_error());
                self.platform_failures += u32::from(!failure.is_function_error());
            }
            Finish::Failed { reason, dead_letter } => {
                self.status = if *dead_letter { EventStatus::DeadLettered } else { EventStatus::Failed };
                self.reason = Some(reason.clone());
            }
        }
    }
}

/// Take one unit of `function`'s share of this claim round (starting from `share`); false when
/// none is left.
fn take_share(quota: &Mutex<HashMap<String, u32>>, function: &str, share: u32) -> bool {
    let mut quota = quota.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let left = quota.entry(function.to_owned()).or_insert(share);
    if *left == 0 {
        return false;
    }
    *left -= 1;
    true
}

/// Give back a unit [`take_share`] took for a claim that did not happen.
fn give_back_share(quota: &Mutex<HashMap<String, u32>>, function: &str) {
    let mut quota = quota.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(left) = quota.get_mut(function) {
        *left += 1;
    }
}

impl NatsQueue {
    /// The cluster's queue with production settings: creates the stream, consumer and bucket
    /// when absent (every node may race to do so).
    pub async fn open(cluster: &Cluster) -> Result<NatsQueue, ClusterError> {
        NatsQueue::open_with(cluster, QueueOptions::default()).await
    }

    /// [`NatsQueue::open`] with settings (tests shorten the ack wait). The consumer keeps the
    /// ack wait of whichever node created it.
    pub async fn open_with(cluster: &Cluster, options: QueueOptions) -> Result<NatsQueue, ClusterError> {
        let stream = open_stream(cluster).await?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            description: Some("nimbus async invocations: every node pulls from it".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_deliver: -1,
            max_ack_pending: -1,
            ..Default::default()
        };
        // Patiently: a node started while a server rejoins waits out the consumer's new leader.
        let consumer = patiently(|| async {
            stream
                .get_or_create_consumer(CONSUMER, config.clone())
                .await
                .map_err(|e| ClusterError::jetstream(format!("create the consumer {CONSUMER} on {STREAM}"), e))
        })
        .await?;
        let kv = cluster.key_value(kv::Config { bucket: BUCKET.into(), history: 1, ..Default::default() }).await?;
        let kv_stream = cluster
            .jetstream()
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(|e| ClusterError::jetstream(format!("open the stream of the KV bucket {BUCKET}"), e))?;
        let inner = Arc::new(Inner {
            js: cluster.jetstream().clone(),
            client: cluster.client().clone(),
            kv,
            kv_stream,
            consumer,
            node: cluster.node().to_owned(),
            held: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            due: Mutex::new(BTreeSet::new()),
        });
        let wake = wake_on_publish(&inner).await?;
        let progress = tokio::spawn(progress(Arc::downgrade(&inner), options.ack_wait / 3));
        Ok(NatsQueue { inner, tasks: vec![wake, progress] })
    }

    /// Events this node holds (claimed, not finished).
    pub fn held(&self) -> usize {
        self.inner.held().len()
    }
}

/// The stream of events, created when absent.
async fn open_stream(cluster: &Cluster) -> Result<stream::Stream, ClusterError> {
    cluster
        .stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECTS}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A plain subscription on the event subjects: every accept and redrive on any node wakes
/// this node's engine at once.
async fn wake_on_publish(inner: &Arc<Inner>) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let mut sub = inner
        .client
        .subscribe(format!("{SUBJECTS}.>"))
        .await
        .map_err(|e| ClusterError::jetstream(format!("subscribe to {SUBJECTS}.>"), e))?;
    let weak = Arc::downgrade(inner);
    Ok(tokio::spawn(async move {
        while sub.next().await.is_some() {
            match weak.upgrade() {
                Some(inner) => inner.wake.notify_one(),
                None => return,
            }
        }
    }))
}

/// Tell JetStream, every `every`, that this node still works on the events it holds.
async fn progress(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        let Some(me) = inner.upgrade() else { return };
        let ackers: Vec<Arc<Acker>> = {
            let mut held = me.held();
            held.retain(|_, h| !h.finish_failed);
            held.values().map(|h| h.acker.clone()).collect()
        };
        drop(me);
        for a in ackers {
            if let Err(e) = a.ack_with(AckKind::Progress).await {
                tracing::warn!("cannot tell NATS an async event is still running: {e}");
            }
        }
    }
}

/// What `claim` makes of one fetched message.
enum Take {
    Claimed(ClaimedEvent),
    Skipped,
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_due(&self, at: u64) {
        self.due.lock().unwrap_or_else(|e| e.into_inner()).insert(at.saturating_add(REDELIVERY_SLACK_MS));
    }

    /// The event's state and its revision; None when absent or deleted.
    ///
    /// Read from the stream's leader, not with a direct get (which any replica may answer): a
    /// quorum acknowledged the state before the event's message was published, but that quorum
    /// need not include the replica asked, and a claim that found no state would drop the
    /// message, losing an accepted event (the rolling-restart test lost two of 130 so, in one
    /// run of five).
    async fn record(&self, id: &str) -> Result<Option<(Record, u64)>, QueueError> {
        let subject = format!("$KV.{BUCKET}.{}", event_key(id));
        let message = match self.kv_stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(storage("read an event's state", e)),
        };
        if message.headers.get("KV-Operation").is_some_and(|op| op.as_str() != "PUT") {
            return Ok(None);
        }
        Ok(Some((Record::decode(&message.payload)?, message.sequence)))
    }

    /// Create `key` unless present: true when this call created it. A create racing another
    /// node's can fail with "wrong last sequence" (10164, the other write still in process)
    /// rather than "already exists": it is tried again until the answer is clear.
    async fn create(&self, key: &str, value: Bytes, what: &str) -> Result<bool, QueueError> {
        let mut tries = 0;
        loop {
            let err = match self.kv.create(key, value.clone()).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => return Ok(false),
                Err(e) => e,
            };
            let entry = self.kv.entry(key).await.map_err(|e| storage(what, e))?;
            if entry.is_some_and(|e| e.operation == Operation::Put) {
                return Ok(false);
            }
            tries += 1;
            if tries >= CAS_TRIES * 4 {
                return Err(storage(what, err));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Write `record` if its state is still at `revision`; Ok(None) when it moved on.
    async fn swap(&self, record: &Record, revision: u64) -> Result<Option<u64>, QueueError> {
        match self.kv.update(event_key(&record.id), record.encode()?, revision).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(storage("update an event's state", e)),
        }
    }

    /// Store a new event's state under `key`, retrying through a server's death (see
    /// [`ACCEPT_PATIENCE`]); its revision.
    async fn create_event(&self, key: &str, value: Bytes) -> Result<u64, QueueError> {
        let mut patience = Patience::new(ACCEPT_PATIENCE);
        let mut retried = false;
        loop {
            let e = match self.kv.create(key, value.clone()).await {
                Ok(revision) => return Ok(revision),
                Err(e) => e,
            };
            match e.kind() {
                // The try before stored it, and its answer was lost: the key is the event's own.
                CreateErrorKind::AlreadyExists if retried => {
                    let entry = self.kv.entry(key).await.map_err(|e| storage("read an event back", e))?;
                    if let Some(entry) = entry.filter(|entry| entry.value == value) {
                        return Ok(entry.revision);
                    }
                }
                CreateErrorKind::Publish | CreateErrorKind::Ack | CreateErrorKind::Other if patience.wait().await => {
                    tracing::debug!("storing an event failed ({e}); trying again");
                    retried = true;
                    continue;
                }
                _ => {}
            }
            return Err(storage("store an event", e));
        }
    }

    /// Publish the event's message and wait for the stream's acknowledgement; false when the
    /// stream already had this generation of the event (de-duplicated).
    async fn publish(&self, record: &Record) -> Result<bool, QueueError> {
        let body = format!("{}:{}", record.generation, record.id);
        let msg_id = format!("{}.{}", record.id, record.generation);
        let mut tries = 0;
        let mut patience = Patience::new(ACCEPT_PATIENCE);
        loop {
            let msg = PublishMessage::build().payload(body.clone().into()).message_id(msg_id.clone());
            let ack = async { self.js.send_publish(subject(&record.function), msg).await?.await }.await;
            match ack {
                Ok(ack) => return Ok(!ack.duplicate),
                // Another node publishes the same message right now (a cron slot): asked
                // again, the stream answers `duplicate` once that publish is stored.
                Err(e) if in_process(&e) && tries < CAS_TRIES * 4 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) if passing(&e) && patience.wait().await => {
                    tracing::debug!("queueing an event failed ({e}); trying again");
                }
                Err(e) => return Err(storage(&format!("queue an event on {STREAM}"), e)),
            }
        }
    }

    /// The event an earlier accept with the same idempotency key made, if it still counts;
    /// else the key now names `ev`.
    async fn idempotent(&self, ev: &NewEvent, key: &str, window_ms: u64) -> Result<Option<String>, QueueError> {
        let ik = hashed_key("i", &[&ev.function, key]);
        let mine = serde_json::to_vec(&IdemRecord { id: ev.id.clone(), accepted_ms: ev.now_ms })
            .map_err(|e| storage("encode an idempotency key", e))?;
        let cutoff = ev.now_ms.checked_sub(window_ms);
        for _ in 0..CAS_TRIES {
            if self.create(&ik, Bytes::from(mine.clone()), "record an idempotency key").await? {
                return Ok(None);
            }
            let entry = self.kv.entry(&ik).await.map_err(|e| storage("read an idempotency key", e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else { continue };
            let earlier: Option<IdemRecord> = serde_json::from_slice(&entry.value).ok();
            if let Some(earlier) = earlier.filter(|r| cutoff.is_none_or(|c| r.accepted_ms > c)) {
                let young = ev.now_ms.saturating_sub(earlier.accepted_ms) < ACCEPT_IN_PROGRESS_MS;
                if young || self.record(&earlier.id).await?.is_some() {
                    return Ok(Some(earlier.id));
                }
            }
            match self.kv.update(&ik, Bytes::from(mine.clone()), entry.revision).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(storage("record an idempotency key", e)),
            }
        }
        Err(QueueError::Storage(format!(
            "the idempotency key {key:?} of function {} changed {CAS_TRIES} times while accepting; retry",
            ev.function
        )))
    }

    /// Let go of an idempotency key that names `ev` (its accept failed), so that the client's
    /// retry is a new event rather than a duplicate of nothing.
    async fn forget_key(&self, ev: &NewEvent, key: &str) {
        let ik = hashed_key("i", &[&ev.function, key]);
        let Ok(Some(entry)) = self.kv.entry(&ik).await else { return };
        let names_ev = serde_json::from_slice::<IdemRecord>(&entry.value).is_ok_and(|r| r.id == ev.id);
        if names_ev && entry.operation == Operation::Put {
            let _ = self.kv.purge_expect_revision(&ik, Some(entry.revision)).await;
        }
    }

    /// One fetched message: claim its event, or put the message where it belongs.
    async fn take(
        &self,
        msg: jetstream::Message,
        now: u64,
        (shares, default_share): (&HashMap<String, u32>, u32),
        quota: &Mutex<HashMap<String, u32>>,
    ) -> Result<Take, QueueError> {
        let (msg, acker) = msg.split();
        let body = String::from_utf8_lossy(&msg.payload).into_owned();
        let Some((generation, id)) = body.split_once(':') else {
            tracing::warn!(body, "dropping a message that is not an event on {STREAM}");
            return ack(&acker, AckKind::Term).await;
        };
        let Some((mut record, revision)) = self.record(id).await? else {
            // Purged, or an accept that died before storing its event.
            return ack(&acker, AckKind::Ack).await;
        };
        let stale = generation != record.generation.to_string();
        if stale || !matches!(record.status, EventStatus::Queued | EventStatus::Running) {
            // Finished before its ack reached the stream, or an earlier generation's copy.
            return ack(&acker, AckKind::Ack).await;
        }
        if let Some(held) = self.held().get_mut(id) {
            // Redelivered while this node still runs it (progress came late): keep running.
            held.acker = Arc::new(acker);
            return Ok(Take::Skipped);
        }
        if record.status == EventStatus::Queued && record.next_run_ms > now {
            let wait = Duration::from_millis(record.next_run_ms - now);
            return ack(&acker, AckKind::Nak(Some(wait))).await;
        }
        let share = shares.get(&record.function).copied().unwrap_or(default_share);
        if !take_share(quota, &record.function, share) {
            return ack(&acker, AckKind::Nak(Some(SHARE_WAIT))).await;
        }
        record.status = EventStatus::Running;
        record.attempts += 1;
        record.updated_ms = now;
        record.claim = Some(format!("{}/{}", self.node, nimbus_core::ids::new_request_id()));
        let revision = match self.swap(&record, revision).await {
            Ok(Some(revision)) => revision,
            Ok(None) => {
                // Someone else moved it (a redrive, another node's claim): look again soon.
                give_back_share(quota, &record.function);
                return ack(&acker, AckKind::Nak(Some(SHARE_WAIT))).await;
            }
            Err(e) => {
                give_back_share(quota, &record.function);
                return Err(e);
            }
        };
        let claimed = record.claimed();
        self.held().insert(id.to_owned(), Held { acker: Arc::new(acker), record, revision, finish_failed: false });
        Ok(Take::Claimed(claimed))
    }

    /// Write the outcome of this node's claim on `id`; false when another node took it over.
    async fn settle(
        &self,
        id: &str,
        held: &Held,
        attempt: AttemptRecord,
        finish: &Finish,
        now: u64,
    ) -> Result<bool, QueueError> {
        let claim = held.record.claim.clone();
        let mut record = held.record.clone();
        let mut revision = held.revision;
        record.finish(attempt.clone(), finish, now);
        for _ in 0..CAS_TRIES {
            if self.swap(&record, revision).await?.is_some() {
                return Ok(true);
            }
            let Some((current, rev)) = self.record(id).await? else { return Ok(false) };
            if current.claim != claim || current.status != EventStatus::Running {
                return Ok(false);
            }
            record = current;
            revision = rev;
            record.finish(attempt.clone(), finish, now);
        }
        Err(QueueError::Storage(format!("the state of event {id} kept changing while its outcome was written; retry")))
    }

    /// Every event's latest state, through an ordered consumer on the bucket's stream.
    async fn scan(&self) -> Result<Vec<Record>, QueueError> {
        let config = push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: format!("$KV.{BUCKET}.e.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        };
        let what = "read the events' states";
        let consumer = self.kv_stream.create_consumer(config).await.map_err(|e| storage(what, e))?;
        let latest =
            crate::scan::latest_per_subject(consumer, SCAN_TIMEOUT, None).await.map_err(|e| storage(what, e))?;
        latest
            .iter()
            .filter(|m| m.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_none())
            .map(|m| Record::decode(&m.payload))
            .collect()
    }

    /// Record `slot` as the schedule's latest unless a later one is recorded.
    async fn remember_slot(&self, schedule_key: &str, slot: u64) -> Result<(), QueueError> {
        let key = hashed_key("c", &[schedule_key]);
        for _ in 0..CAS_TRIES {
            let entry = self.kv.entry(&key).await.map_err(|e| storage("read a schedule's slot", e))?;
            let value = Bytes::from(slot.to_string());
            let written = match entry.filter(|e| e.operation == Operation::Put) {
                None => self.create(&key, value, "record a schedule's slot").await?,
                Some(e) => {
                    let stored: u64 = String::from_utf8_lossy(&e.value).parse().unwrap_or(0);
                    if stored >= slot {
                        return Ok(());
                    }
                    self.kv.update(&key, value, e.revision).await.is_ok()
                }
            };
            if written {
                return Ok(());
            }
        }
        Err(QueueError::Storage(format!("the latest slot of schedule {schedule_key} kept changing; retry")))
    }
}

/// Whether a publish failed for a reason that passes while servers come and go: no answer in
/// time, a lost connection, no responder (the stream's leader is being elected), or the
/// server's 503 ("JetStream system temporarily unavailable").
fn passing(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut | Kind::BrokenPipe | Kind::StreamNotFound => true,
        Kind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| j.code() == 503),
        _ => false,
    }
}

/// JetStream's "duplicate message id is in process" (409, 10158).
fn in_process(e: &async_nats::jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}

async fn ack(acker: &Acker, kind: AckKind) -> Result<Take, QueueError> {
    if let Err(e) = acker.ack_with(kind).await {
        tracing::warn!("cannot acknowledge a message on {STREAM}: {e}");
    }
    Ok(Take::Skipped)
}

#[async_trait]
impl QueueStore for NatsQueue {
    async fn accept(&self, event: NewEvent, idempotency_window_ms: u64) -> Result<Accepted, QueueError> {
        let me = &self.inner;
        if let Some(key) = &event.idempotency_key {
            if let Some(id) = me.idempotent(&event, key, idempotency_window_ms).await? {
                return Ok(Accepted { id, duplicate: true });
            }
        }
        let record = Record::new(&event);
        let key = event_key(&event.id);
        let revision = me.create_event(&key, record.encode()?).await?;
        if let Err(e) = me.publish(&record).await {
            // Not accepted (no 202): take the state back, so that it does not show as queued
            // for good. Were the message stored after all, `claim` finds no state and drops it.
            let _ = me.kv.purge_expect_revision(&key, Some(revision)).await;
            if let Some(k) = &event.idempotency_key {
                me.forget_key(&event, k).await;
            }
            return Err(e);
        }
        Ok(Accepted { id: event.id, duplicate: false })
    }

    async fn claim(
        &self,
        now_ms: u64,
        limit: u32,
        shares: &HashMap<String, u32>,
        default_share: u32,
    ) -> Result<Vec<ClaimedEvent>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let me = &self.inner;
        // `expires` also arms the client's own timer (expires + 5 s): without it a pull request
        // lost with a killed server leaves the batch waiting for an answer that never comes.
        let mut batch = me
            .consumer
            .fetch()
            .max_messages(limit as usize)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(|e| storage(&format!("fetch events from {CONSUMER}"), e))?;
        let mut fetched = Vec::new();
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(m) => fetched.push(m),
                // Messages fetched before the error are delivered to this node: claim them.
                Err(e) if !fetched.is_empty() => {
                    tracing::warn!("fetching events from {CONSUMER} stopped early: {e}");
                    break;
                }
                Err(e) => return Err(storage(&format!("fetch events from {CONSUMER}"), e)),
            }
        }
        // Each claim is a KV read and a compare-and-swap, a round trip to the bucket's leader
        // apiece: one after another they held a node to about a hundred events a second.
        let quota = Mutex::new(HashMap::new());
        let out = futures_util::stream::iter(fetched)
            .map(|msg| me.take(msg, now_ms, (shares, default_share), &quota))
            .buffer_unordered(CLAIMS_AT_ONCE)
            .filter_map(|taken| async move {
                match taken {
                    Ok(Take::Claimed(ev)) => Some(ev),
                    Ok(Take::Skipped) => None,
                    Err(e) => {
                        tracing::error!("cannot claim an async event: {e}");
                        None
                    }
                }
            })
            .collect()
            .await;
        Ok(out)
    }

    async fn release(&self, id: &str, run_at_ms: u64) -> Result<(), QueueError> {
        let me = &self.inner;
        let Some(mut held) = me.held().remove(id) else { return Ok(()) };
        let claim = held.record.claim.clone();
        held.record.status = EventStatus::Queued;
        held.record.attempts = held.record.attempts.saturating_sub(1);
        held.record.next_run_ms = run_at_ms;
        held.record.claim = None;
        if me.swap(&held.record, held.revision).await?.is_none() {
            tracing::warn!(id, ?claim, "an async event was taken over by another node before it was released");
            return Ok(());
        }
        let wait = Duration::from_millis(run_at_ms.saturating_sub(now_ms()));
        me.remember_due(run_at_ms);
        ack(&held.acker, AckKind::Nak(Some(wait))).await.map(|_| ())
    }

    async fn finish(&self, id: &str, attempt: AttemptRecord, finish: Finish, now_ms: u64) -> Result<(), QueueError> {
        let me = &self.inner;
        let Some(mut held) = me.held().remove(id) else {
            tracing::warn!(id, "finishing an async event this node does not hold; its outcome is dropped");
            return Ok(());
        };
        let settled = match me.settle(id, &held, attempt.clone(), &finish, now_ms).await {
            Ok(s) => s,
            Err(e) => {
                held.finish_failed = true;
                me.held().insert(id.to_owned(), held);
                return Err(e);
            }
        };
        if !settled {
            tracing::warn!(
                id,
                "an async event was taken over by another node while it ran here; this run's outcome is dropped"
            );
            return Ok(());
        }
        match finish {
            Finish::Retry { run_at_ms, .. } => {
                me.remember_due(run_at_ms);
                let wait = Duration::from_millis(run_at_ms.saturating_sub(self::now_ms()));
                ack(&held.acker, AckKind::Nak(Some(wait))).await?;
            }
            Finish::Succeeded { .. } | Finish::Failed { .. } => {
                if let Err(e) = held.acker.double_ack().await {
                    // The message comes back after the ack wait; `claim` then sees the event
                    // finished and acks it.
                    tracing::warn!(id, "cannot acknowledge a finished async event: {e}");
                }
            }
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<u64>, QueueError> {
        let now = now_ms();
        let mut due = self.inner.due.lock().unwrap_or_else(|e| e.into_inner());
        while due.first().is_some_and(|&d| d <= now) {
            due.pop_first();
        }
        Ok(due.first().copied())
    }

    async fn changed(&self) {
        self.inner.wake.notified().await;
    }

    async fn recover(&self) -> Result<u64, QueueError> {
        // Claims of a node that stopped come back through the consumer after the ack wait.
        Ok(0)
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let info =
            self.inner.js.get_stream(STREAM).await.map_err(|e| storage(&format!("read the depth of {STREAM}"), e))?;
        Ok(info.cached_info().state.messages)
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let mut by: std::collections::BTreeMap<String, QueueStats> = std::collections::BTreeMap::new();
        for r in self.inner.scan().await? {
            if !matches!(r.status, EventStatus::Queued | EventStatus::Running | EventStatus::DeadLettered) {
                continue;
            }
            let s = by
                .entry(r.function.clone())
                .or_insert_with(|| QueueStats { function: r.function.clone(), ..Default::default() });
            match r.status {
                EventStatus::Queued => {
                    s.queued += 1;
                    s.oldest_queued_ms = Some(s.oldest_queued_ms.map_or(r.accepted_ms, |o| o.min(r.accepted_ms)));
                }
                EventStatus::Running => s.running += 1,
                _ => s.dead_lettered += 1,
            }
        }
        Ok(by.into_values().collect())
    }

    async fn get(&self, id: &str) -> Result<Option<EventView>, QueueError> {
        Ok(self.inner.record(id).await?.map(|(r, _)| r.view()))
    }

    async fn list(
        &self,
        status: Option<EventStatus>,
        function: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventView>, QueueError> {
        let mut records: Vec<Record> = self
            .inner
            .scan()
            .await?
            .into_iter()
            .filter(|r| status.is_none_or(|s| r.status == s) && function.is_none_or(|f| r.function == f))
            .collect();
        records.sort_by(|a, b| b.accepted_ms.cmp(&a.accepted_ms).then_with(|| b.id.cmp(&a.id)));
        Ok(records.iter().take(limit.max(1) as usize).map(Record::view).collect())
    }

    async fn redrive(&self, ids: &[String], function: Option<&str>, now_ms: u64) -> Result<u64, QueueError> {
        let me = &self.inner;
        let targets: Vec<String> = if ids.is_empty() {
            let dead = me.scan().await?.into_iter().filter(|r| r.status == EventStatus::DeadLettered);
            dead.filter(|r| function.is_none_or(|f| r.function == f)).map(|r| r.id).collect()
        } else {
            ids.to_vec()
        };
        let mut n = 0;
        for id in targets {
            let Some((mut r, rev)) = me.record(&id).await? else { continue };
            if r.status != EventStatus::DeadLettered {
                continue;
            }
            r.status = EventStatus::Queued;
            (r.next_run_ms, r.updated_ms, r.accepted_ms) = (now_ms, now_ms, now_ms);
            (r.attempts, r.function_errors, r.platform_failures) = (0, 0, 0);
            r.reason = None;
            r.generation += 1;
            if me.swap(&r, rev).await?.is_some() {
                me.publish(&r).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn purge(&self, function: Option<&str>) -> Result<u64, QueueError> {
        let me = &self.inner;
        let mut n = 0;
        for r in me.scan().await? {
            if r.status != EventStatus::DeadLettered || function.is_some_and(|f| r.function != f) {
                continue;
            }
            // Only if still dead-lettered: a redrive racing the purge wins.
            let Some((current, rev)) = me.record(&r.id).await? else { continue };
            if current.status != EventStatus::DeadLettered {
                continue;
            }
            match me.kv.purge_expect_revision(event_key(&r.id), Some(rev)).await {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(id = %r.id, "a dead-lettered event changed while purged: {e}"),
            }
        }
        Ok(n)
    }

    async fn fire_slot(&self, schedule_key: &str, slot_ms: u64, event: NewEvent) -> Result<bool, QueueError> {
        let me = &self.inner;
        let record = Record::new(&event);
        let fired = me.create(&event_key(&event.id), record.encode()?, "store a schedule's event").await?;
        // Every node publishes the slot's message: if the node that stored the event died
        // before publishing, another's copy delivers it; JetStream drops the copies (same
        // `Nats-Msg-Id`), and a copy after the de-duplication window finds the event finished.
        me.publish(&record).await?;
        me.remember_slot(schedule_key, slot_ms).await?;
        Ok(fired)
    }

    async fn last_slot(&self, schedule_key: &str) -> Result<Option<u64>, QueueError> {
        let key = hashed_key("c", &[schedule_key]);
        let value = self.inner.kv.get(key).await.map_err(|e| storage("read a schedule's slot", e))?;
        Ok(value.and_then(|v| String::from_utf8_lossy(&v).parse().ok()))
    }

    async fn skip_to(&self, schedule_key: &str, slot_ms: u64) -> Result<(), QueueError> {
        self.inner.remember_slot(schedule_key, slot_ms).await
    }
}

#[cfg(test)]
mod tests {
    use nimbus_core::policy::AttemptFailure;
    use nimbus_core::queue::AttemptOutcome;

    use super::*;

    #[test]
    fn names_become_keys_and_subject_tokens_without_collisions() {
        assert_eq!(token("hello_world-2"), "hello_world-2");
        assert_eq!(event_key("6c34a4df-6947-83f8-b997-c8ffe1c5280e"), "e.6c34a4df-6947-83f8-b997-c8ffe1c5280e");
        // Dots, wildcards and spaces would change a subject's meaning: spelled in hex.
        assert_eq!(subject("a.b"), "nimbus.async.=612e62");
        assert_eq!(token("*"), "=2a");
        assert_eq!(token(""), "=");
        assert_ne!(token("=2a"), token("*"));
        assert_ne!(hashed_key("i", &["ab", "c"]), hashed_key("i", &["a", "bc"]));
    }

    #[test]
    fn an_event_state_moves_as_the_embedded_queue_moves_it() {
        let ev = NewEvent {
            id: "x".into(),
            function: "f".into(),
            qualifier: Some("3".into()),
            payload: Bytes::from_static(b"\xff\x00not json"),
            source: EventSource::Bucket,
            idempotency_key: None,
            now_ms: 10,
            run_at_ms: 10,
        };
        let mut r = Record::new(&ev);
        r.attempts = 1;
        let failed = AttemptRecord {
            n: 1,
            started_ms: 11,
            duration_ms: 1.0,
            outcome: AttemptOutcome::Throttled,
            error_type: Some("TooManyRequestsException".into()),
            error_message: Some("busy".into()),
        };
        r.finish(failed, &Finish::Retry { run_at_ms: 500, failure: AttemptFailure::Throttled }, 12);
        assert_eq!((r.status, r.next_run_ms, r.function_errors, r.platform_failures), (EventStatus::Queued, 500, 0, 1));
        let ok = AttemptRecord {
            n: 2,
            outcome: AttemptOutcome::Success,
            error_type: None,
            error_message: None,
            ..r.history[0].clone()
        };
        r.finish(ok, &Finish::Succeeded { response: Bytes::from_static(b"{\"a\":1}") }, 600);
        let back = Record::decode(&r.encode().unwrap()).unwrap();
        let view = back.view();
        assert_eq!((view.status, view.next_run_ms, view.updated_ms), (EventStatus::Succeeded, None, 600));
        assert_eq!(view.last_error_type.as_deref(), Some("TooManyRequestsException"), "a success keeps the last error");
        assert_eq!(view.result, Some(serde_json::json!({"a": 1})));
        assert_eq!(view.payload, serde_json::json!("\u{fffd}\u{0}not json"));
        assert_eq!(back.claimed().payload, ev.payload);
        assert_eq!((view.source, view.qualifier.as_deref(), view.history.len()), (EventSource::Bucket, Some("3"), 2));
        let big = Bytes::from(vec![b'x'; MAX_RESULT + 1]);
        r.finish(back.history[1].clone(), &Finish::Succeeded { response: big }, 700);
        assert!(r.view().result.unwrap().as_str().unwrap().contains("not kept in cluster mode"));
    }
}
