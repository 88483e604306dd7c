//! SQS-compatible queues on NATS JetStream: [`NatsMessages`], the cluster's [`MessageQueues`].
//!
//! # Where things live
//! Everything is in one replicated KV bucket, `nimbus-sqs`, whose stream is `KV_nimbus-sqs`:
//! - `q.<queue>`: the queue's settings, creation and modification times (JSON).
//! - `m.<queue>.<seq>`: one entry per message, its whole state as JSON: body, attributes,
//!   MD5s, sender, sent time, "invisible until" (delay and visibility timeout alike), receive
//!   count, first receive, the latest receive's random receipt token, group and deduplication
//!   ids, and the source queue of a dead-lettered message. `<seq>` (20 digits) orders a queue:
//!   for a FIFO queue it comes from the queue's counter `s.<queue>` (compare-and-swap, so it
//!   is the send order across nodes and is the message's `SequenceNumber`); for a standard
//!   queue it is the send time in milliseconds with 20 random low bits, so standard sends
//!   share no counter.
//! - `d.<queue>.<sha256 of the deduplication id>` (FIFO only): the first message of that id,
//!   written create-if-absent with a per-key TTL of [`FIFO_DEDUP_WINDOW`], so a second send
//!   within the window finds it and the server forgets it afterwards.
//!
//! `<queue>` is the name itself when made of letters, digits, `-` and `_`, else `=` and its
//! hex spelling (a FIFO queue's `.fifo`).
//!
//! # Why entries and not a consumer per queue
//! A JetStream consumer has one ack wait, while SQS lets every receive and every
//! `ChangeMessageVisibility` set its own timeout; and an ack names a stream sequence, so a
//! receipt handle kept past its visibility timeout would ack a message that another consumer
//! now holds. Here every change of a message is a compare-and-swap on its entry's revision: two
//! nodes that both see a message visible both try to take it and exactly one succeeds, so no two
//! receivers hold one message within its visibility timeout. A receipt handle names the queue,
//! the message, the receive count and the receive's token; `delete` and `change_visibility`
//! check them against the entry, so a stale handle is refused. Deleting a message removes its
//! entry's stream message by sequence (no tombstone is left to slow later scans), which fails
//! when the entry moved on: that is the delete's compare-and-swap.
//!
//! A send returns after the stream acknowledged every entry it wrote (replicated to the
//! stream's quorum). Moving a message (to the dead-letter queue, or back by a redrive) writes
//! the copy first and then deletes the original at the revision it read; when that delete
//! fails (someone else received or moved it meanwhile) the copy is deleted again.
//!
//! # What is deliberately approximate
//! A receive scans its queue's entries through an ordered consumer (fine for thousands of
//! messages per queue, slow for millions); reads of single entries go to the stream leader, so
//! a handle given by one node is valid on the next. Long polls wait on a plain NATS subject
//! (`nimbus.sqs.wake.<queue>`) that every send, visibility change and redrive publishes to,
//! and look again at least every [`POLL_EVERY`] and when the next delayed or hidden message
//! becomes visible. Retention is applied when a queue is received from (expired entries are
//! deleted) and reads skip expired messages. Visibility and delays use each node's wall clock:
//! nodes with skewed clocks see a message become visible at different times. The counters of
//! [`QueueStats`] (`sent_total`, …) count this node's operations since it started.

mod ops;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use nimbus_core::event_sources::Redrive;
use nimbus_core::events::{md5_hex, md5_of_message_attributes};
use nimbus_core::ids::now_ms;
use nimbus_core::messages::{
    BatchResults, MessageAttribute, MessageQueues, MqError, NewMessage, Peeked, QueueInfo, QueueSettings, QueueSpec,
    QueueStats, ReceiveRequest, Received, Sent, FIFO_DEDUP_WINDOW, MAX_RECEIVE_WAIT,
};
use nimbus_core::messages_rules::{self as rules, ms};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{token, Cluster, ClusterError};

/// The bucket of queues, messages, counters and deduplication ids.
pub const BUCKET: &str = "nimbus-sqs";
/// The subjects long polls wait on: `nimbus.sqs.wake.<queue>`.
const WAKE: &str = "nimbus.sqs.wake";
/// A long poll looks again at least this often (a wake-up lost with a reconnect).
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Compare-and-swap attempts before an operation gives up as contended.
const CAS_TRIES: usize = 64;
/// Longest a scan of one queue's entries may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// The last token of the key a fresh scan writes under its prefix (`q.=scan`, `m.<queue>.=scan`):
/// never a queue's token (`token` spells with `=` only hex digits) nor a message's (digits).
const BARRIER: &str = "=scan";
/// How long the marker a deleted message leaves is kept (the shortest per-key TTL).
const MARKER_TTL: Duration = Duration::from_secs(1);
/// Most long-poll rounds of one receive (each waits, or moved messages to a dead-letter queue).
const MAX_POLL_ROUNDS: usize = 10_000;

fn backend(what: &str, e: impl std::fmt::Display) -> MqError {
    MqError::Backend(format!("NATS JetStream failed to {what}: {e}"))
}

fn queue_key(queue: &str) -> String {
    format!("q.{}", token(queue))
}

fn message_key(queue: &str, seq: u64) -> String {
    format!("m.{}.{seq:020}", token(queue))
}

fn subject(key: &str) -> String {
    format!("$KV.{BUCKET}.{key}")
}

fn wake_subject(queue: &str) -> String {
    format!("{WAKE}.{}", token(queue))
}

/// A queue's settings as the bucket stores them (every duration in milliseconds).
#[derive(Serialize, Deserialize)]
struct QueueRecord {
    name: String,
    visibility_timeout_ms: u64,
    retention_ms: u64,
    delay_ms: u64,
    fifo: bool,
    dead_letter_queue: Option<String>,
    max_receive_count: u32,
    receive_wait_ms: u64,
    max_message_bytes: u32,
    content_based_dedup: bool,
    created_ms: u64,
    modified_ms: u64,
}

impl QueueRecord {
    fn new(name: &str, s: &QueueSettings, created_ms: u64, modified_ms: u64) -> QueueRecord {
        QueueRecord {
            name: name.to_owned(),
            visibility_timeout_ms: ms(s.spec.visibility_timeout),
            retention_ms: ms(s.spec.retention),
            delay_ms: ms(s.spec.delay),
            fifo: s.spec.fifo,
            dead_letter_queue: s.spec.redrive.as_ref().map(|r| r.dead_letter_queue.clone()),
            max_receive_count: s.spec.redrive.as_ref().map_or(0, |r| r.max_receive_count),
            receive_wait_ms: ms(s.receive_wait),
            max_message_bytes: s.max_message_bytes,
            content_based_dedup: s.content_based_dedup,
            created_ms,
            modified_ms,
        }
    }

    fn settings(&self) -> QueueSettings {
        QueueSettings {
            spec: QueueSpec {
                visibility_timeout: Duration::from_millis(self.visibility_timeout_ms),
                retention: Duration::from_millis(self.retention_ms),
                delay: Duration::from_millis(self.delay_ms),
                fifo: self.fifo,
                redrive: self
                    .dead_letter_queue
                    .clone()
                    .map(|dead_letter_queue| Redrive { dead_letter_queue, max_receive_count: self.max_receive_count }),
            },
            receive_wait: Duration::from_millis(self.receive_wait_ms),
            max_message_bytes: self.max_message_bytes,
            content_based_dedup: self.content_based_dedup,
        }
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            name: self.name.clone(),
            settings: self.settings(),
            created_ms: self.created_ms,
            modified_ms: self.modified_ms,
        }
    }

    /// Messages sent at or before this are past the queue's retention.
    fn cutoff(&self, now: u64) -> Option<u64> {
        now.checked_sub(self.retention_ms)
    }
}

/// One message's state (see the module documentation).
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Msg {
    id: String,
    seq: u64,
    body: String,
    attributes: BTreeMap<String, MessageAttribute>,
    md5_body: String,
    md5_attrs: Option<String>,
    sender: String,
    sent_ms: u64,
    visible_at_ms: u64,
    receive_count: u32,
    first_receive_ms: Option<u64>,
    receipt: Option<String>,
    group_id: Option<String>,
    dedup_id: Option<String>,
    source_queue: Option<String>,
}

impl Msg {
    fn encode(&self) -> Result<Bytes, MqError> {
        serde_json::to_vec(self).map(Bytes::from).map_err(|e| backend("encode a message", e))
    }

    fn expired(&self, q: &QueueRecord, now: u64) -> bool {
        q.cutoff(now).is_some_and(|c| self.sent_ms <= c)
    }

    fn received(&self, queue: &str, fifo: bool) -> Received {
        let receipt = self.receipt.clone().unwrap_or_default();
        Received {
            message_id: self.id.clone(),
            receipt_handle: handle(queue, self.seq, self.receive_count, &receipt),
            body: self.body.clone(),
            attributes: self.attributes.clone(),
            md5_of_body: self.md5_body.clone(),
            md5_of_attributes: self.md5_attrs.clone(),
            sender_id: self.sender.clone(),
            sent_ms: self.sent_ms,
            first_receive_ms: self.first_receive_ms.unwrap_or(self.sent_ms),
            receive_count: self.receive_count,
            group_id: self.group_id.clone(),
            dedup_id: self.dedup_id.clone(),
            sequence_number: fifo.then(|| self.seq.to_string()),
        }
    }

    fn peeked(&self, now: u64) -> Peeked {
        Peeked {
            message_id: self.id.clone(),
            body: self.body.clone(),
            attributes: self.attributes.clone(),
            sent_ms: self.sent_ms,
            receive_count: self.receive_count,
            in_flight: self.receive_count > 0 && self.visible_at_ms > now,
            group_id: self.group_id.clone(),
            source_queue: self.source_queue.clone(),
        }
    }
}

/// A FIFO deduplication record: the first message sent with the id.
#[derive(Serialize, Deserialize)]
struct Dedup {
    message_id: String,
    seq: u64,
}

/// A receipt handle: queue, message, receive count and the receive's token, base64url.
fn handle(queue: &str, seq: u64, count: u32, token_: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{seq}:{count}:{token_}", token(queue)))
}

/// The message and receive a handle of `queue` names: (seq, count, token).
fn parse_handle(queue: &str, h: &str) -> Option<(u64, u32, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.rsplitn(4, ':');
    let tok = parts.next()?.to_owned();
    let count = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    (parts.next()? == token(queue)).then_some((seq, count, tok))
}

/// A new receipt token.
fn new_token() -> String {
    nimbus_core::ids::new_request_id().replace('-', "")
}

/// A standard queue's message sequence: send time and 20 random bits (see the module docs).
fn time_seq(now: u64) -> u64 {
    (now << 20) | u64::from(rand_bits())
}

fn rand_bits() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 & 0xF_FFFF
}

/// Per queue, this node's operations since it started.
#[derive(Default, Clone, Copy)]
struct Counters {
    sent: u64,
    received: u64,
    deleted: u64,
    dead_lettered: u64,
}

/// The cluster's [`MessageQueues`]: see the module documentation.
pub struct NatsMessages {
    client: async_nats::Client,
    kv: kv::Store,
    stream: stream::Stream,
    counters: Mutex<HashMap<String, Counters>>,
}

/// One receive attempt: what it delivered, and what the long poll needs to decide how long to
/// wait.
struct Attempt {
    messages: Vec<Received>,
    next_visible_ms: Option<u64>,
    receive_wait: Duration,
    dead_lettered: u64,
}

impl NatsMessages {
    /// Open the bucket, creating it when absent.
    pub async fn open(cluster: &Cluster) -> Result<Arc<NatsMessages>, ClusterError> {
        let config = kv::Config {
            bucket: BUCKET.into(),
            description: "nimbus SQS queues: settings, messages, FIFO counters and deduplication ids".into(),
            history: 1,
            // No limit of the bucket's own: a message of 256 KiB, JSON-escaped, with its
            // attributes, is bounded by the servers' `max_payload` (2 MB, docs/cluster.md).
            max_value_size: -1,
            // Per-key TTLs, for the FIFO deduplication ids.
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let kv = cluster.key_value(config).await?;
        let name = format!("KV_{BUCKET}");
        let stream = cluster
            .jetstream()
            .get_stream(&name)
            .await
            .map_err(|e| ClusterError::jetstream(format!("open the stream {name}"), e))?;
        Ok(Arc::new(NatsMessages {
            client: cluster.client().clone(),
            kv,
            stream,
            counters: Mutex::new(HashMap::new()),
        }))
    }

    fn count(&self, queue: &str, f: impl FnOnce(&mut Counters)) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        f(counters.entry(queue.to_owned()).or_default());
    }

    /// The latest value of `key` and its revision, read from the stream leader; None when
    /// absent or deleted.
    async fn read(&self, key: &str) -> Result<Option<(Bytes, u64)>, MqError> {
        match self.stream.get_last_raw_message_by_subject(&subject(key)).await {
            Ok(m) => {
                let op = m.headers.get("KV-Operation").map(|v| v.as_str().to_owned());
                Ok(op.is_none().then_some((m.payload, m.sequence)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(&format!("read {key}"), e)),
        }
    }

    async fn load(&self, queue: &str) -> Result<Option<(QueueRecord, u64)>, MqError> {
        let Some((bytes, rev)) = self.read(&queue_key(queue)).await? else { return Ok(None) };
        let record = serde_json::from_slice(&bytes).map_err(|e| backend("decode a queue's settings", e))?;
        Ok(Some((record, rev)))
    }

    async fn must_load(&self, queue: &str) -> Result<QueueRecord, MqError> {
        self.load(queue).await?.map(|(q, _)| q).ok_or_else(|| MqError::NoSuchQueue(queue.to_owned()))
    }

    async fn read_msg(&self, queue: &str, seq: u64) -> Result<Option<(Msg, u64)>, MqError> {
        let Some((bytes, rev)) = self.read(&message_key(queue, seq)).await? else { return Ok(None) };
        let m = serde_json::from_slice(&bytes).map_err(|e| backend("decode a message", e))?;
        Ok(Some((m, rev)))
    }

    /// The latest value and revision of every key under `prefix` (`m.<queue>.>`, `q.>`),
    /// through an ordered consumer on the bucket's stream. `fresh`: holding every write
    /// acknowledged before the call (a barrier key under `prefix` is written first; see
    /// `crate::scan`), for listings and counts that a caller checks right after a change.
    async fn scan(&self, prefix: &str, fresh: bool) -> Result<Vec<(Bytes, u64)>, MqError> {
        let what = "read a queue's messages";
        let under = prefix.trim_end_matches('>');
        let barrier_key = format!("{under}{BARRIER}");
        let barrier = if fresh {
            let seq = self.kv.put(&barrier_key, Bytes::new()).await.map_err(|e| backend(what, e))?;
            Some(crate::scan::Barrier { subject: subject(&barrier_key), seq })
        } else {
            None
        };
        let config = async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: subject(prefix),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
            replay_policy: async_nats::jetstream::consumer::ReplayPolicy::Instant,
            ..Default::default()
        };
        let consumer = self.stream.create_consumer(config).await.map_err(|e| backend(what, e))?;
        let latest =
            crate::scan::latest_per_subject(consumer, SCAN_TIMEOUT, barrier).await.map_err(|e| backend(what, e))?;
        // A barrier another scan left (its own subject is already left out) is no record either.
        let barrier_subject = subject(&barrier_key);
        let live = latest.into_iter().filter(|m| {
            m.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_none() && m.subject.as_str() != barrier_subject
        });
        live.map(|m| m.info().map(|i| i.stream_sequence).map(|seq| (m.payload.clone(), seq)))
            .collect::<Result<_, _>>()
            .map_err(|e| backend(what, e))
    }

    /// Every message of `queue`, in queue order, with its revision; `fresh` as for `scan`.
    async fn messages(&self, queue: &str, fresh: bool) -> Result<Vec<(Msg, u64)>, MqError> {
        let mut out = Vec::new();
        for (bytes, rev) in self.scan(&format!("m.{}.>", token(queue)), fresh).await? {
            let m: Msg = serde_json::from_slice(&bytes).map_err(|e| backend("decode a message", e))?;
            out.push((m, rev));
        }
        out.sort_by_key(|(m, _)| m.seq);
        Ok(out)
    }

    /// Remove `key` if it is still at revision `rev` (the delete's compare-and-swap): false
    /// when the entry moved on or is gone. What is left is a purge marker that the server
    /// drops after [`MARKER_TTL`], so deleted messages do not slow later scans.
    async fn remove(&self, key: &str, rev: u64) -> bool {
        self.kv.purge_expect_revision_with_ttl(key, rev, MARKER_TTL).await.is_ok()
    }

    /// Remove every entry under `prefix`; returns how many.
    async fn remove_all(&self, prefix: &str) -> Result<u64, MqError> {
        let purged = self.stream.purge().filter(subject(prefix)).await.map_err(|e| backend("purge a queue", e))?;
        Ok(purged.purged)
    }

    fn wake(&self, queue: &str) {
        let client = self.client.clone();
        let subject = wake_subject(queue);
        tokio::spawn(async move {
            let _ = client.publish(subject, Bytes::new()).await;
        });
    }
}

/// A short random pause between compare-and-swap attempts, so contenders spread out.
async fn backoff(attempt: usize) {
    let base = 1u64 << attempt.min(5);
    tokio::time::sleep(Duration::from_millis(base + u64::from(rand_bits() % 8))).await;
}
