//! KV namespaces and rate-limit counters on JetStream: [`NatsKv`] implements
//! [`nimbus_core::KvStore`] with the semantics every backend keeps (see `nimbus_core::kv`), so a
//! cluster's functions, `/v1/kv` and the gateway's rate limits share one store across nodes.
//!
//! Layout:
//! - Each namespace is a KV bucket of its own, `nimbus-kv-NAME` (stream `KV_nimbus-kv-NAME`,
//!   file storage, the cluster's replicas, one message per key, per-message TTLs allowed). NAME
//!   keeps ASCII letters, digits and `-`; any other byte is written `_xx` (lowercase hex), so
//!   the gateway's `nimbus:rate-limits` is `nimbus-kv-nimbus_3arate-limits`. Deleting a
//!   namespace deletes its stream, keys and all; creating it again starts empty.
//! - A key is the subject `$KV.BUCKET.HEX`, HEX the lowercase hex of the key's bytes: NATS
//!   keys allow only `[-/_=.a-zA-Z0-9]`, and hex keeps byte order and prefixes (a key starts
//!   with P exactly when its hex starts with P's hex), which `list` relies on.
//! - A value is the message's payload, as given. A TTL is the header `Nimbus-Expires` (the
//!   deadline, Unix ms, by the writing node's clock) plus `Nats-TTL` (whole seconds, rounded
//!   up) so the server reclaims the key at or after its deadline. Reads treat a passed deadline
//!   as absent: the server's removal may lag, expiry never does.
//! - The version nimbus reports is the key's stream sequence (its KV revision): it grows with
//!   every write of the namespace, so a key deleted and written again gets a greater one.
//! - `increment_volatile` counters live in one memory-storage bucket, `nimbus-counters` (the
//!   cluster's replicas, no disk, so no fsync), subject `$KV.nimbus-counters.ns-NAME.HEX`:
//!   shared by every node, never listed or read by the other operations, lost when every
//!   replica restarts (a rate-limit window forgets its count).
//!
//! Atomicity: `put` is one publish; `compare_and_swap` reads the key from the stream's leader
//! and publishes with `Nats-Expected-Last-Subject-Sequence` (the server refuses the write when
//! another landed in between, and it is tried again). `increment` is the same compare-and-swap
//! on the number, with one twist: the increments of one key waiting on this node go out
//! together as one write (each caller still gets its own sum, as if they ran one after the
//! other), so a hot counter costs one round of read + write per batch, not per caller, and the
//! nodes contend with each other rather than every caller with every other. Durable counters
//! read the key before each write (two JetStream round trips); volatile counters remember the
//! last revision they wrote and read only after a conflict (one round trip when one node counts
//! alone). A batch runs in a task of its own, so a caller that goes away never leaves the
//! others without an answer.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL};
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream as _;
use nimbus_core::kv::{
    check_key, check_value, CasOutcome, KvEntry, KvError, KvKey, KvNamespace, KvPage, KvStore, MAX_LIST_LIMIT,
};
use tokio::sync::oneshot;

use crate::{Cluster, ClusterError};

/// Buckets of namespaces are named this and the encoded namespace name.
const BUCKET_PREFIX: &str = "nimbus-kv-";
/// The memory bucket of `increment_volatile`'s counters.
const COUNTERS_BUCKET: &str = "nimbus-counters";
/// The header holding a key's deadline (Unix ms).
const EXPIRES_HEADER: &str = "Nimbus-Expires";
/// The header `nats kv del` / `purge` write (nimbus never does: it purges the subject).
const KV_OPERATION_HEADER: &str = "KV-Operation";
/// Most compare-and-swap rounds one write tries before giving up (each round one writer wins).
const MAX_ATTEMPTS: usize = 200;
/// How long a write waits out a stream that answers with no responder (just created, or
/// electing a leader) before it reports the failure.
const NO_RESPONDER_PATIENCE: Duration = Duration::from_secs(5);
/// How the key a listing writes first begins (`$KV.BUCKET.=scan-UUID`, one per listing, purged
/// after it, with a 1 s TTL): never a key's (keys are spelled in lowercase hex). See
/// `crate::scan`.
const BARRIER: &str = "=scan";
/// How long a listing's barrier key stays if its purge fails.
const BARRIER_TTL_MS: u64 = 1_000;
/// Longest a listing's read of a namespace may take (the whole read, as the queues' scans).
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// Past this many remembered counters, idle ones are forgotten.
const MAX_SLOTS: usize = 10_000;

/// The clock deadlines are computed and checked with (Unix ms); tests substitute their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The KV store on NATS JetStream. Cheap to clone.
#[derive(Clone)]
pub struct NatsKv {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    replicas: usize,
    clock: Clock,
    /// Counter subject → the increments waiting on it and what this node last wrote there.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One key as a JetStream subject.
#[derive(Clone)]
struct Loc {
    ns: String,
    /// The stream holding the key.
    stream: String,
    subject: String,
    /// Whether the counter may write over the revision it remembers without reading first
    /// (the volatile bucket, which no namespace deletion recreates).
    remember: bool,
}

/// The last message on a key's subject: its sequence (0: none) and, unless it is absent or a
/// delete marker, its value and deadline.
#[derive(Clone, Debug)]
struct Stored {
    seq: u64,
    entry: Option<(Bytes, Option<u64>)>,
}

impl Stored {
    const ABSENT: Stored = Stored { seq: 0, entry: None };

    /// The entry unless absent or expired by `now`.
    fn live(&self, now: u64) -> Option<KvEntry> {
        let (value, expires_ms) = self.entry.as_ref()?;
        if expires_ms.is_some_and(|e| e <= now) {
            return None;
        }
        Some(KvEntry { value: value.clone(), version: self.seq, expires_ms: *expires_ms })
    }
}

/// An increment waiting for its batch.
struct Pending {
    by: i64,
    ttl: Option<Duration>,
    reply: oneshot::Sender<Result<i64, KvError>>,
}

/// A counter's waiting increments and what this node last wrote to it.
#[derive(Default)]
struct Slot {
    queue: Mutex<Vec<Pending>>,
    state: tokio::sync::Mutex<Option<Stored>>,
}

/// A write refused because the key's revision was not the expected one.
struct Conflict;

impl NatsKv {
    /// The store on `cluster`: creates the counters' memory bucket when absent (namespaces'
    /// buckets are created by `create_namespace`).
    pub async fn open(cluster: &Cluster) -> Result<NatsKv, ClusterError> {
        let inner = Inner {
            js: cluster.jetstream().clone(),
            replicas: cluster.replicas(),
            clock: Arc::new(nimbus_core::ids::now_ms),
            slots: Mutex::new(HashMap::new()),
        };
        // Patiently, as the cluster's own buckets: servers still forming refuse placement.
        crate::patiently(|| async {
            inner
                .ensure_stream(COUNTERS_BUCKET, StorageType::Memory)
                .await
                .map_err(|e| ClusterError::jetstream(format!("create the KV bucket {COUNTERS_BUCKET}"), e))
        })
        .await?;
        Ok(NatsKv { inner: Arc::new(inner) })
    }

    /// The same store reading `clock` instead of the system's (tests move time with it).
    pub fn with_clock(self, clock: Clock) -> NatsKv {
        let inner = Inner {
            js: self.inner.js.clone(),
            replicas: self.inner.replicas,
            clock,
            slots: Mutex::new(HashMap::new()),
        };
        NatsKv { inner: Arc::new(inner) }
    }

    /// The bucket holding namespace `ns`.
    pub fn bucket_name(ns: &str) -> String {
        format!("{BUCKET_PREFIX}{}", encode_name(ns))
    }

    fn loc(&self, ns: &str, key: &str) -> Result<Loc, KvError> {
        check_key(key)?;
        let bucket = NatsKv::bucket_name(ns);
        Ok(Loc {
            ns: ns.to_owned(),
            stream: format!("KV_{bucket}"),
            subject: format!("$KV.{bucket}.{}", hex::encode(key)),
            remember: false,
        })
    }

    fn volatile_loc(ns: &str, key: &str) -> Result<Loc, KvError> {
        check_key(key)?;
        Ok(Loc {
            ns: ns.to_owned(),
            stream: format!("KV_{COUNTERS_BUCKET}"),
            subject: format!("$KV.{COUNTERS_BUCKET}.ns-{}.{}", encode_name(ns), hex::encode(key)),
            remember: true,
        })
    }

    /// Queue an increment on `loc` and wait for the batch that carries it.
    async fn count(&self, loc: Loc, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let slot = self.inner.slot(&loc.subject);
        let (reply, answer) = oneshot::channel();
        lock(&slot.queue).push(Pending { by, ttl, reply });
        let inner = Arc::clone(&self.inner);
        // Its own task: the batch may carry other callers' increments, which must be answered
        // even if this caller goes away.
        let batch = tokio::spawn(async move {
            let mut state = slot.state.lock().await;
            let batch = std::mem::take(&mut *lock(&slot.queue));
            if !batch.is_empty() {
                inner.run_batch(&loc, &mut state, batch).await;
            }
            drop(state);
            inner.release(&loc.subject, slot);
        });
        let _ = batch.await;
        answer.await.map_err(|_| KvError::backend("increment a key", std::io::Error::other("the batch was lost")))?
    }
}

impl Inner {
    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The stream of bucket `bucket`, created when absent; `Ok(true)` when this call created it.
    async fn ensure_stream(&self, bucket: &str, storage: StorageType) -> Result<bool, KvError> {
        let name = format!("KV_{bucket}");
        match self.js.get_stream(&name).await {
            Ok(_) => return Ok(false),
            Err(e) if !is_stream_not_found(&e) => return Err(KvError::backend("look up a KV bucket", e)),
            Err(_) => {}
        }
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            discard: DiscardPolicy::New,
            allow_direct: true,
            allow_rollup: true,
            deny_delete: true,
            allow_message_ttl: true,
            storage,
            num_replicas: self.replicas,
            ..Default::default()
        };
        match self.js.create_stream(config).await {
            Ok(_) => Ok(true),
            // Another node created it first.
            Err(e) => {
                self.js.get_stream(&name).await.map(|_| false).map_err(|_| KvError::backend("create a KV bucket", e))
            }
        }
    }

    /// `NoSuchNamespace` when the namespace's stream is gone, else `fallback` (a backend error).
    async fn missing_or(&self, loc: &Loc, fallback: KvError) -> KvError {
        match self.js.get_stream(&loc.stream).await {
            Err(e) if is_stream_not_found(&e) => KvError::NoSuchNamespace(loc.ns.clone()),
            _ => fallback,
        }
    }

    /// The last message on the key's subject, from the stream's leader.
    async fn read(&self, loc: &Loc) -> Result<Stored, KvError> {
        let stream = self.js.get_stream_no_info(&loc.stream).await.map_err(|e| KvError::backend("read a key", e))?;
        let message = match stream.get_last_raw_message_by_subject(&loc.subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(Stored::ABSENT),
            Err(e) => return Err(self.missing_or(loc, KvError::backend("read a key", e)).await),
        };
        let deleted = message.headers.get(KV_OPERATION_HEADER).is_some_and(|op| op.as_str() != "PUT");
        let expires = expires_header(&message.headers);
        Ok(Stored { seq: message.sequence, entry: (!deleted).then_some((message.payload, expires)) })
    }

    /// Publish `value` on the key with its deadline; with `expected`, only over that revision
    /// (0: only when the subject holds nothing).
    async fn write(
        &self,
        loc: &Loc,
        value: Bytes,
        expires_ms: Option<u64>,
        expected: Option<u64>,
    ) -> Result<Result<u64, Conflict>, KvError> {
        let mut headers = HeaderMap::new();
        if let Some(deadline) = expires_ms {
            let left_ms = deadline.saturating_sub(self.now()).max(1);
            headers.insert(NATS_MESSAGE_TTL, left_ms.div_ceil(1000).to_string().as_str());
            headers.insert(EXPIRES_HEADER, deadline.to_string().as_str());
        }
        if let Some(seq) = expected {
            headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, seq.to_string().as_str());
        }
        let mut patience = crate::Patience::new(NO_RESPONDER_PATIENCE);
        let ack = loop {
            let ack = match self.js.publish_with_headers(loc.subject.clone(), headers.clone(), value.clone()).await {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match ack {
                // No server listened on the subject, so nothing was stored: a stream just
                // created (its servers not subscribed yet) or electing a leader. Try again;
                // any other failure might have stored the write, and a retried
                // compare-and-swap would then count it twice.
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    let err = self.missing_or(loc, KvError::backend("write a key", e)).await;
                    if matches!(err, KvError::NoSuchNamespace(_)) || !patience.wait().await {
                        return Err(err);
                    }
                }
                ack => break ack,
            }
        };
        match ack {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(e) if is_wrong_last_sequence(&e) => Ok(Err(Conflict)),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                let why = format!("{e}: the value and its headers exceed the NATS servers' max_payload (1 MiB unless configured); set max_payload: 2MB in every nats-server's configuration");
                Err(KvError::backend("write a key", std::io::Error::other(why)))
            }
            Err(e) => Err(KvError::backend("write a key", e)),
        }
    }

    fn slot(&self, subject: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if slots.len() >= MAX_SLOTS {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        Arc::clone(slots.entry(subject.to_owned()).or_default())
    }

    /// Drop this node's memory of a counter nobody is using, unless it is worth keeping.
    fn release(&self, subject: &str, slot: Arc<Slot>) {
        let mut slots = lock(&self.slots);
        let idle = Arc::strong_count(&slot) == 2;
        drop(slot);
        if idle && slots.len() >= MAX_SLOTS {
            slots.remove(subject);
        }
    }

    /// Apply `batch` as one write and answer each increment.
    async fn run_batch(&self, loc: &Loc, state: &mut Option<Stored>, batch: Vec<Pending>) {
        match self.apply_batch(loc, state, &batch).await {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(r);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(copy_error(&e)));
                }
            }
        }
    }

    async fn apply_batch(
        &self,
        loc: &Loc,
        state: &mut Option<Stored>,
        batch: &[Pending],
    ) -> Result<Vec<Result<i64, KvError>>, KvError> {
        if !loc.remember {
            *state = None;
        }
        for attempt in 0..MAX_ATTEMPTS {
            backoff(attempt).await;
            let stored = match state.take() {
                Some(s) => s,
                None => self.read(loc).await?,
            };
            let now = self.now();
            let (results, write) = plan(&stored, batch, now, &key_of(loc));
            let Some((sum, expires)) = write else { return Ok(results) };
            let value = Bytes::from(sum.to_string());
            match self.write(loc, value.clone(), expires, Some(stored.seq)).await? {
                Ok(seq) => {
                    *state = Some(Stored { seq, entry: Some((value, expires)) });
                    return Ok(results);
                }
                Err(Conflict) => continue,
            }
        }
        Err(contention("increment a key"))
    }

    /// Read a namespace's keys (hex) and deadlines: one ordered consumer over the bucket,
    /// delivering each key's last message, headers only.
    ///
    /// A barrier key is written first, so the keys hold every write acknowledged before the
    /// call even when the consumer's server is a moment behind (`crate::scan`); it is purged
    /// after the read, so namespace key counts do not include it.
    async fn scan(&self, loc: &Loc, filter: &str) -> Result<Vec<(String, Option<u64>)>, KvError> {
        let barrier = self.write_barrier(loc).await?;
        let barrier_subject = barrier.subject.clone();
        let stream = self.js.get_stream_no_info(&loc.stream).await.map_err(|e| KvError::backend("list keys", e))?;
        let config = OrderedConfig {
            deliver_subject: self.js.client().new_inbox(),
            description: Some("nimbus kv list".into()),
            filter_subject: filter.to_owned(),
            headers_only: true,
            replay_policy: ReplayPolicy::Instant,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        let consumer = match stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => return Err(self.missing_or(loc, KvError::backend("list keys", e)).await),
        };
        let latest = crate::scan::latest_per_subject(consumer, SCAN_TIMEOUT, Some(barrier)).await;
        // Its TTL removes a barrier whose purge fails.
        let _ = stream.purge().filter(barrier_subject).await;
        let latest = latest.map_err(|e| KvError::backend("list keys", e))?;
        let prefix = format!("$KV.{}.", loc.stream.trim_start_matches("KV_"));
        let mut keys = Vec::with_capacity(latest.len());
        for message in latest {
            let headers = message.headers.clone().unwrap_or_default();
            let deleted = headers.get(KV_OPERATION_HEADER).is_some_and(|op| op.as_str() != "PUT");
            // Another listing's barrier (`=scan-…`) is no key.
            let key = message.subject.strip_prefix(&prefix).filter(|k| !deleted && !k.starts_with(BARRIER));
            if let Some(hex_key) = key {
                keys.push((hex_key.to_owned(), expires_header(&headers)));
            }
        }
        Ok(keys)
    }

    /// Write a listing's own barrier key under `loc`'s bucket, with a short TTL.
    async fn write_barrier(&self, loc: &Loc) -> Result<crate::scan::Barrier, KvError> {
        let bucket = loc.stream.trim_start_matches("KV_");
        let subject = format!("$KV.{bucket}.{BARRIER}-{}", nimbus_core::ids::new_request_id());
        let at = Loc { subject: subject.clone(), ..loc.clone() };
        match self.write(&at, Bytes::new(), Some(self.now() + BARRIER_TTL_MS), None).await? {
            Ok(seq) => Ok(crate::scan::Barrier { subject, seq }),
            Err(Conflict) => {
                let refused = std::io::Error::other("the listing's barrier key was refused");
                Err(KvError::backend("list keys", refused))
            }
        }
    }
}

/// What a batch does to a counter holding `stored`: each increment's answer, and the sum to
/// write with its deadline (`None`: nothing to write).
#[allow(clippy::type_complexity)]
fn plan(
    stored: &Stored,
    batch: &[Pending],
    now: u64,
    key: &str,
) -> (Vec<Result<i64, KvError>>, Option<(i64, Option<u64>)>) {
    let (base, mut expires) = match stored.live(now) {
        None => (0, None),
        Some(e) => match std::str::from_utf8(&e.value).ok().and_then(|s| s.parse::<i64>().ok()) {
            Some(n) => (n, e.expires_ms),
            None => return (batch.iter().map(|_| Err(KvError::NotANumber(key.to_owned()))).collect(), None),
        },
    };
    if stored.live(now).is_none() {
        expires = batch.first().and_then(|p| p.ttl).map(|t| deadline(now, t));
    }
    let mut sum = base;
    let mut wrote = false;
    let results = batch
        .iter()
        .map(|p| match sum.checked_add(p.by) {
            Some(s) => {
                sum = s;
                wrote = true;
                Ok(s)
            }
            None => Err(KvError::Overflow(key.to_owned())),
        })
        .collect();
    (results, wrote.then_some((sum, expires)))
}

/// Wait before compare-and-swap round `attempt` (none before the first): a random part of a
/// window doubling from 1 ms to 64 ms. The server refuses a write expecting a revision while
/// another write of the key is still being replicated, so writers that retried at once would
/// keep colliding; spreading them lets each round have a winner.
async fn backoff(attempt: usize) {
    if attempt == 0 {
        return;
    }
    let window_us = 1000u64 << attempt.min(7).saturating_sub(1);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos.wrapping_mul(2_654_435_761)) % window_us;
    tokio::time::sleep(Duration::from_micros(window_us / 2 + jitter / 2)).await;
}

/// The key a location names (for error messages).
fn key_of(loc: &Loc) -> String {
    let hex_key = loc.subject.rsplit('.').next().unwrap_or_default();
    hex::decode(hex_key).ok().and_then(|k| String::from_utf8(k).ok()).unwrap_or_default()
}

fn deadline(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

fn expires_header(headers: &HeaderMap) -> Option<u64> {
    headers.get(EXPIRES_HEADER).and_then(|v| v.as_str().parse().ok())
}

fn is_stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Whether a publish was refused for its expected revision. Servers since 2.12 answer with
/// error code 10164 (the message names the sequence), which async-nats 0.51 does not map.
fn is_wrong_last_sequence(e: &async_nats::jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    e.kind() == PublishErrorKind::WrongLastSequence
        || e.source().and_then(|s| s.downcast_ref::<jetstream::Error>()).is_some_and(|j| {
            [ErrorCode::STREAM_WRONG_LAST_SEQUENCE, ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT]
                .contains(&j.error_code())
        })
}

fn contention(action: &'static str) -> KvError {
    let why = format!("{MAX_ATTEMPTS} compare-and-swap rounds lost to other writers of the key; try again");
    KvError::backend(action, std::io::Error::other(why))
}

/// The same error again, for every increment of a failed batch.
fn copy_error(e: &KvError) -> KvError {
    match e {
        KvError::NoSuchNamespace(ns) => KvError::NoSuchNamespace(ns.clone()),
        KvError::KeyLength(n) => KvError::KeyLength(*n),
        KvError::ValueTooLarge(n) => KvError::ValueTooLarge(*n),
        KvError::NotANumber(k) => KvError::NotANumber(k.clone()),
        KvError::Overflow(k) => KvError::Overflow(k.clone()),
        KvError::BadCursor => KvError::BadCursor,
        KvError::Backend { action, source } => KvError::backend(action, std::io::Error::other(source.to_string())),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A namespace name as a bucket-name token: ASCII letters, digits and `-` as they are, any
/// other byte as `_` and two lowercase hex digits.
fn encode_name(ns: &str) -> String {
    let mut out = String::with_capacity(ns.len());
    for b in ns.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push_str(&hex::encode([b]));
        }
    }
    out
}

/// The namespace name a bucket-name token encodes (`None`: not one `encode_name` wrote).
fn decode_name(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let (code, tail) = (tail.get(..2)?, tail.get(2..)?);
            bytes.extend(hex::decode(code).ok()?);
            rest = tail;
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok().filter(|name| encode_name(name) == token)
}

/// A cursor is the hex of the last key a page returned (as the embedded store's).
fn decode_cursor(cursor: &str) -> Result<String, KvError> {
    let key = hex::decode(cursor).ok().filter(|k| std::str::from_utf8(k).is_ok()).ok_or(KvError::BadCursor)?;
    Ok(hex::encode(key))
}

#[async_trait]
impl KvStore for NatsKv {
    async fn create_namespace(&self, ns: &str) -> Result<bool, KvError> {
        self.inner.ensure_stream(&NatsKv::bucket_name(ns), StorageType::File).await
    }

    async fn delete_namespace(&self, ns: &str) -> Result<bool, KvError> {
        let name = format!("KV_{}", NatsKv::bucket_name(ns));
        match self.inner.js.delete_stream(&name).await {
            Ok(status) => Ok(status.success),
            Err(e) => match e.kind() {
                jetstream::context::DeleteStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(KvError::backend("delete a namespace", e)),
            },
        }
    }

    async fn namespaces(&self) -> Result<Vec<KvNamespace>, KvError> {
        let mut names = Box::pin(self.inner.js.stream_names());
        let mut out = Vec::new();
        while let Some(name) = poll_fn(|cx| names.as_mut().poll_next(cx)).await {
            let name = name.map_err(|e| KvError::backend("list namespaces", e))?;
            let Some(ns) = name.strip_prefix("KV_").and_then(|b| b.strip_prefix(BUCKET_PREFIX)).and_then(decode_name)
            else {
                continue;
            };
            let info = match self.inner.js.get_stream(&name).await {
                Ok(mut s) => s.info().await.map_err(|e| KvError::backend("list namespaces", e))?.clone(),
                // Deleted since it was listed.
                Err(e) if is_stream_not_found(&e) => continue,
                Err(e) => return Err(KvError::backend("list namespaces", e)),
            };
            let created_ms = u64::try_from(info.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            out.push(KvNamespace { name: ns, keys: info.state.messages, bytes: info.state.bytes, created_ms });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        let loc = self.loc(ns, key)?;
        Ok(self.inner.read(&loc).await?.live(self.inner.now()))
    }

    async fn put(&self, ns: &str, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<u64, KvError> {
        check_value(&value)?;
        let loc = self.loc(ns, key)?;
        let expires = ttl.map(|t| deadline(self.inner.now(), t));
        match self.inner.write(&loc, value, expires, None).await? {
            Ok(seq) => Ok(seq),
            Err(Conflict) => Err(contention("write a key")),
        }
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        let loc = self.loc(ns, key)?;
        let stored = self.inner.read(&loc).await?;
        if stored.seq == 0 {
            return Ok(false);
        }
        let was_live = stored.live(self.inner.now()).is_some();
        let stream =
            self.inner.js.get_stream_no_info(&loc.stream).await.map_err(|e| KvError::backend("delete a key", e))?;
        match stream.purge().filter(loc.subject.clone()).await {
            Ok(_) => Ok(was_live),
            Err(e) => Err(self.inner.missing_or(&loc, KvError::backend("delete a key", e)).await),
        }
    }

    async fn list(&self, ns: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<KvPage, KvError> {
        let after = cursor.map(decode_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let bucket = NatsKv::bucket_name(ns);
        let loc = Loc { ns: ns.to_owned(), stream: format!("KV_{bucket}"), subject: String::new(), remember: false };
        let keys = self.inner.scan(&loc, &format!("$KV.{bucket}.>")).await?;
        let now = self.inner.now();
        let hex_prefix = hex::encode(prefix);
        let mut keys: Vec<(String, Option<u64>)> = keys
            .into_iter()
            .filter(|(k, exp)| k.starts_with(&hex_prefix) && exp.is_none_or(|e| e > now))
            .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
            .collect();
        keys.sort_unstable();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let cursor = if more { keys.last().map(|(k, _)| k.clone()) } else { None };
        let keys = keys
            .into_iter()
            .filter_map(|(k, expires_ms)| {
                let name = String::from_utf8(hex::decode(k).ok()?).ok()?;
                Some(KvKey { name, expires_ms })
            })
            .collect();
        Ok(KvPage { keys, cursor })
    }

    async fn increment(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let loc = self.loc(ns, key)?;
        self.count(loc, by, ttl).await
    }

    async fn increment_volatile(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let loc = NatsKv::volatile_loc(ns, key)?;
        self.count(loc, by, ttl).await
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<CasOutcome, KvError> {
        check_value(&value)?;
        let loc = self.loc(ns, key)?;
        for attempt in 0..MAX_ATTEMPTS {
            backoff(attempt).await;
            let stored = self.inner.read(&loc).await?;
            let now = self.inner.now();
            let current = stored.live(now).map(|e| e.version);
            if current != expected {
                return Ok(CasOutcome::Conflict(current));
            }
            let expires = ttl.map(|t| deadline(now, t));
            // Over the stored revision, even an expired one: the key reads as absent, and a
            // write landing in between makes the server refuse this one.
            match self.inner.write(&loc, value.clone(), expires, Some(stored.seq)).await? {
                Ok(seq) => return Ok(CasOutcome::Swapped(seq)),
                Err(Conflict) => continue,
            }
        }
        Err(contention("compare and swap a key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_encode_to_bucket_tokens_and_back() {
        for (ns, token) in [
            ("sessions", "sessions"),
            ("my_ns", "my_5fns"),
            ("nimbus:rate-limits", "nimbus_3arate-limits"),
            ("é", "_c3_a9"),
            ("", ""),
        ] {
            assert_eq!(encode_name(ns), token);
            assert_eq!(decode_name(token).as_deref(), Some(ns));
        }
        assert_eq!(NatsKv::bucket_name("my_ns"), "nimbus-kv-my_5fns");
        for bad in ["a_", "a_zz", "a_4", "a.b", "_41"] {
            assert_eq!(decode_name(bad), None, "{bad}");
        }
    }

    fn pending(by: i64, ttl: Option<Duration>) -> Pending {
        Pending { by, ttl, reply: oneshot::channel().0 }
    }

    #[test]
    fn a_batch_answers_each_increment_its_own_sum() {
        let absent = Stored::ABSENT;
        let batch = [pending(1, Some(Duration::from_secs(5))), pending(2, None), pending(i64::MAX, None)];
        let (results, write) = plan(&absent, &batch, 1000, "k");
        let results: Vec<_> = results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        assert_eq!(results[..2], [Ok(1), Ok(3)]);
        assert!(results[2].as_ref().is_err_and(|e| e.contains("overflow")));
        assert_eq!(write, Some((3, Some(6000))), "the first increment's TTL sets the window");

        let stored = Stored { seq: 7, entry: Some((Bytes::from_static(b"40"), Some(5000))) };
        let (results, write) = plan(&stored, &[pending(2, Some(Duration::from_secs(60)))], 1000, "k");
        assert_eq!(results.into_iter().map(Result::ok).collect::<Vec<_>>(), [Some(42)]);
        assert_eq!(write, Some((42, Some(5000))), "an existing expiry stays");
        let (_, write) = plan(&stored, &[pending(2, None)], 5000, "k");
        assert_eq!(write, Some((2, None)), "expired: counts from 0 again");

        let text = Stored { seq: 7, entry: Some((Bytes::from_static(b"three"), None)) };
        let (results, write) = plan(&text, &[pending(1, None), pending(1, None)], 0, "k");
        assert!(results.iter().all(|r| matches!(r, Err(KvError::NotANumber(k)) if k == "k")));
        assert_eq!(write, None);
    }
}
