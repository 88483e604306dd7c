//! Object storage (the S3 buckets of `nimbus up --cluster`) on the JetStream Object Store:
//! [`NatsObjects`] implements `nimbus_core::ObjectStore` with the semantics the embedded store
//! keeps (ETags, checksums, conditional reads, ranges, listings in key byte order, multipart).
//!
//! Layout:
//! - One object store per S3 bucket, `nimbus-s3-NAME` (stream `OBJ_nimbus-s3-NAME`). The stream
//!   *is* the bucket record: the bucket exists while its stream does, was created when the stream
//!   was, and goes in one step with it. S3 names may contain `.`, JetStream names may not:
//!   [`store_name`] maps `.` to `_` (never in an S3 name) and any other byte outside
//!   `[a-z0-9-]` to `X` and two upper-case hex digits (upper case never appears otherwise), so
//!   the mapping is reversible ([`bucket_name`]) for any string.
//! - An object is the Object Store's own wire format (chunks on `$O.STORE.C.NUID`, one metadata
//!   message on `$O.STORE.M.base64(key)` rolled up per key), so `nats object get` reads it. What
//!   S3 adds (ETag, checksum, content headers, user metadata, last-modified, part count) is JSON
//!   under the `nimbus` entry of the object's metadata.
//! - Multipart uploads live in one more object store, `nimbus-s3parts`: the upload's record is an
//!   empty object named by its id (bucket, key, headers), each part an object `ID/NNNNN`.
//!   Completion streams the chosen parts, in order, into a new object of the bucket.
//!
//! Writes: the chunks of a PUT are published with up to [`WINDOW`] acknowledgements outstanding
//! (so a body streams through in [`CHUNK`]-sized pieces: memory stays at `WINDOW × CHUNK`
//! whatever the object's size), hashed as they go; the length, Content-MD5 and checksum are
//! checked once the body ended, and only then is the metadata message published. Its
//! acknowledgement (replicated to a quorum, fsynced with `sync_interval: always`) is the commit:
//! a PUT that fails before it leaves no visible trace (its chunks are purged), and an
//! acknowledged one survives the loss of a server.
//!
//! Replaced chunks (an overwrite or a delete) are purged [`GRACE`] later, so a reader that opened
//! the old version keeps reading it. A node that dies within the grace (or in the middle of a
//! PUT) leaves those chunks behind: they take space in the stream, are never visible, and go
//! with the bucket. Reads of an object's metadata go to the stream leader (the streams are made
//! without `allow_direct`, whose replica reads may be stale), so an object written via one node
//! is read via any other at once.
//!
//! The outbox (bucket triggers): a change of a bucket that [`ObjectStore::watch_buckets`] named
//! publishes an [`ObjectChange`] to the stream `NIMBUS_S3_OUTBOX` (work-queue retention,
//! replicated like the buckets) right after its commit and before the change is answered, so
//! every acknowledged change has its message; its id is the message's stream sequence (grows,
//! never reused). JetStream has no transaction across two streams, so a node that dies between
//! the commit and that publication leaves a change that happened (but was never acknowledged to
//! its client) without a message. Every node reads through one durable consumer (`forwarder`):
//! a message goes to one node, which keeps handing it out until `outbox_done` acknowledges it
//! (then JetStream deletes it); a node that dies first leaves it to another after
//! `OUTBOX_ACK_WAIT` (60 s).
//!
//! Costs, deliberately: listing, bucket sizes and upload listings scan the metadata messages of
//! the bucket (one per key, deleted keys included) and keep only the page being built (at most
//! `max_keys + 1` entries), so a page costs O(keys in the bucket); a ranged GET starts at the
//! last chunk of the object's seek index (every [`STRIDE`]th chunk's sequence) before its range.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::object_store::{self as os, ObjectInfo, ObjectOptions};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use nimbus_core::events::S3EventName;
use nimbus_core::ids::now_ms;
use nimbus_core::objects::{
    check_key, choose_parts, common_prefix, past_prefix, BucketInfo, ByteRange, ByteStream, Checksum,
    ChecksumAlgorithm, Expected, ListPage, ListQuery, ObjectBody, ObjectChange, ObjectError, ObjectHeaders, ObjectMeta,
    ObjectStore, PartInfo, PutOptions, UploadInfo, MAX_LIST_KEYS, MAX_PART_NUMBER,
};

pub use nimbus_store_sqlite::multipart_etag;
use nimbus_store_sqlite::ObjectHasher as Hasher;

use crate::{Cluster, ClusterError};

/// Prefix of every S3 bucket's object store.
const PREFIX: &str = "nimbus-s3-";
/// The object store of multipart uploads (no S3 bucket maps to it: theirs have a `-`).
const PARTS: &str = "nimbus-s3parts";
/// Bytes per chunk message (the Object Store's default; under NATS' 1 MB payload limit).
pub const CHUNK: usize = 128 * 1024;
/// Chunk publications awaiting their acknowledgement at once, per PUT.
pub const WINDOW: usize = 8;
/// How long replaced chunks stay readable for readers that opened them.
pub const GRACE: Duration = Duration::from_secs(120);
/// Every this-many chunks, a PUT notes the chunk's stream sequence (the object's seek index), so
/// a ranged GET starts at most this many chunks before its range.
pub const STRIDE: usize = 16;
/// The metadata entry holding what S3 adds to an object.
const META_KEY: &str = "nimbus";

/// S3 buckets on the JetStream Object Store (see the module documentation).
#[derive(Clone)]
pub struct NatsObjects {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    replicas: usize,
    /// Object store handles by store name (a handle is a name; the stream's existence is checked
    /// on every call).
    stores: Mutex<HashMap<String, os::ObjectStore>>,
    parts: Store,
    /// The buckets whose changes go to the outbox.
    watched: std::sync::RwLock<BTreeSet<String>>,
    /// The outbox's work-queue consumer, shared by every node.
    outbox: PullConsumer,
    /// Outbox messages handed out by [`ObjectStore::outbox`] and not yet done, by id.
    pending: Mutex<BTreeMap<u64, (ObjectChange, jetstream::Message)>>,
}

/// One object store: its name, its stream (purges) and the Object Store handle (reads).
#[derive(Clone)]
struct Store {
    name: String,
    stream: stream::Stream,
    store: os::ObjectStore,
}

/// What S3 adds to an object, kept as JSON in its metadata.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
#[serde(default)]
struct S3Meta {
    etag: String,
    modified_ms: u64,
    checksum_alg: Option<String>,
    checksum: Option<String>,
    parts: Option<u32>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<String>,
    user: BTreeMap<String, String>,
    /// Upload records only: the bucket and key the upload completes into.
    bucket: Option<String>,
    key: Option<String>,
    /// The stream sequence of chunks 0, [`STRIDE`], 2 × [`STRIDE`], … (every chunk but the last
    /// is exactly the object's chunk size).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    seek: Vec<u64>,
}

/// The JetStream object store of S3 bucket `bucket` (see the module documentation).
pub fn store_name(bucket: &str) -> String {
    let mut out = String::from(PREFIX);
    for b in bucket.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(char::from(b)),
            b'.' => out.push('_'),
            _ => out.push_str(&format!("X{b:02X}")),
        }
    }
    out
}

/// The S3 bucket whose object store is `store`, if it is one.
pub fn bucket_name(store: &str) -> Option<String> {
    let mapped = store.strip_prefix(PREFIX)?;
    let mut out = Vec::with_capacity(mapped.len());
    let mut bytes = mapped.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b'.'),
            b'X' => {
                let hex = [bytes.next()?, bytes.next()?];
                let text = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(text, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn datetime_ms(info: &ObjectInfo) -> u64 {
    info.modified.map_or(0, |m| u64::try_from(m.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// The subject of an object's metadata message.
fn meta_subject(store: &str, key: &str) -> String {
    format!("$O.{store}.M.{}", base64::engine::general_purpose::URL_SAFE.encode(key))
}

fn chunk_subject(store: &str, nuid: &str) -> String {
    format!("$O.{store}.C.{nuid}")
}

/// The stream configuration of an object store: the Object Store's, without direct (replica)
/// reads, so metadata reads are the leader's.
fn store_config(name: &str) -> stream::Config {
    stream::Config {
        name: format!("OBJ_{name}"),
        description: Some("nimbus S3 objects".into()),
        subjects: vec![format!("$O.{name}.C.>"), format!("$O.{name}.M.>")],
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: false,
        ..Default::default()
    }
}

impl NatsObjects {
    /// Connect the object storage of a node: the uploads store is created when absent; bucket
    /// stores are created by [`ObjectStore::create_bucket`].
    pub async fn open(cluster: &Cluster) -> Result<NatsObjects, ClusterError> {
        let js = cluster.jetstream().clone();
        let stream = cluster.stream(store_config(PARTS)).await?;
        let store = js
            .get_object_store(PARTS)
            .await
            .map_err(|e| ClusterError::jetstream(format!("open the object store {PARTS}"), e))?;
        let parts = Store { name: PARTS.into(), stream, store };
        let outbox = outbox_consumer(cluster).await?;
        let inner = Inner {
            js,
            replicas: cluster.replicas(),
            stores: Mutex::new(HashMap::new()),
            parts,
            watched: std::sync::RwLock::new(BTreeSet::new()),
            outbox,
            pending: Mutex::new(BTreeMap::new()),
        };
        Ok(NatsObjects { inner: Arc::new(inner) })
    }

    /// The store of an existing bucket (one request to the stream's leader), or `NoSuchBucket`.
    async fn bucket(&self, bucket: &str) -> Result<Store, ObjectError> {
        let name = store_name(bucket);
        let stream = match self.inner.js.get_stream(format!("OBJ_{name}")).await {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => return Err(ObjectError::NoSuchBucket(bucket.to_owned())),
            Err(e) => return Err(ObjectError::backend("find a bucket", e)),
        };
        let cached = self.inner.stores.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
        let store = match cached {
            Some(s) => s,
            None => {
                let s = self
                    .inner
                    .js
                    .get_object_store(&name)
                    .await
                    .map_err(|e| ObjectError::backend("open a bucket", e))?;
                self.inner.stores.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), s.clone());
                s
            }
        };
        Ok(Store { name, stream, store })
    }

    /// Purge a subject of a store after [`GRACE`] (replaced chunks a reader may still be on).
    fn purge_later(&self, store: &Store, subject: String) {
        let stream = store.stream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            if let Err(e) = stream.purge().filter(subject.clone()).await {
                tracing::warn!(%subject, error = %e, "object store: could not purge replaced chunks");
            }
        });
    }

    /// Receive a body into new chunks of `store`, checked against what the client declared.
    async fn write_body(&self, store: &Store, body: ByteStream, opts: &PutOptions) -> Result<Written, ObjectError> {
        let mut w = ChunkWriter::new(&self.inner.js, &store.name, opts.checksum.as_ref().map(|(a, _)| *a));
        let result = async {
            w.pump(body).await?;
            w.finish().await?;
            check_body(&w, opts)
        }
        .await;
        match result {
            Ok(()) => Ok(w.written()),
            Err(e) => {
                self.purge_now(store, chunk_subject(&store.name, &w.nuid)).await;
                Err(e)
            }
        }
    }

    async fn purge_now(&self, store: &Store, subject: String) {
        if let Err(e) = store.stream.purge().filter(subject.clone()).await {
            tracing::warn!(%subject, error = %e, "object store: could not purge the chunks of a failed PUT");
        }
    }

    /// Publish an object's metadata message: the commit of a PUT. Replaced chunks are purged
    /// after the grace.
    async fn commit(&self, store: &Store, key: &str, w: &Written, meta: &S3Meta) -> Result<(), ObjectError> {
        let old = match store.store.info(key).await {
            Ok(info) if !info.deleted => Some(info.nuid),
            Ok(_) => None,
            Err(e) if matches!(e.kind(), os::InfoErrorKind::NotFound) => None,
            Err(e) => return Err(ObjectError::backend("read an object's metadata", e)),
        };
        let info = object_info(&store.name, key, w, meta)?;
        publish_meta(&self.inner.js, &store.name, key, &info).await?;
        if let Some(nuid) = old.filter(|n| *n != w.nuid) {
            self.purge_later(store, chunk_subject(&store.name, &nuid));
        }
        Ok(())
    }

    /// An object's metadata message, if the key holds a live object.
    async fn info(&self, store: &Store, key: &str) -> Result<Option<ObjectInfo>, ObjectError> {
        match store.store.info(key).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(e) if matches!(e.kind(), os::InfoErrorKind::NotFound) => Ok(None),
            Err(e) => Err(ObjectError::backend("read an object's metadata", e)),
        }
    }

    /// Every live object's metadata message in a store, in the stream's order.
    async fn scan(&self, store: &Store, mut each: impl FnMut(ObjectInfo) -> bool) -> Result<(), ObjectError> {
        let mut list = store.store.list().await.map_err(|e| ObjectError::backend("list objects", e))?;
        while let Some(item) = std::future::poll_fn(|cx| Pin::new(&mut list).poll_next(cx)).await {
            let info = item.map_err(|e| ObjectError::backend("list objects", e))?;
            if !each(info) {
                break;
            }
        }
        Ok(())
    }

    /// A bucket's size and creation time.
    async fn bucket_info(&self, bucket: &str, store: &Store) -> Result<BucketInfo, ObjectError> {
        let created = store.stream.cached_info().created;
        let created_ms = u64::try_from(created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let (mut objects, mut bytes) = (0u64, 0u64);
        self.scan(store, |info| {
            objects += 1;
            bytes += info.size as u64;
            true
        })
        .await?;
        Ok(BucketInfo { name: bucket.to_owned(), created_ms, objects, bytes })
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The metadata message of an object written as `w`.
fn object_info(store: &str, key: &str, w: &Written, meta: &S3Meta) -> Result<ObjectInfo, ObjectError> {
    let meta = S3Meta { seek: w.seek.clone(), ..meta.clone() };
    let json = serde_json::to_string(&meta).map_err(|e| ObjectError::backend("encode object metadata", e))?;
    let nanos = i128::from(meta.modified_ms) * 1_000_000;
    Ok(ObjectInfo {
        name: key.to_owned(),
        description: None,
        metadata: HashMap::from([(META_KEY.to_owned(), json)]),
        headers: None,
        options: Some(ObjectOptions { link: None, max_chunk_size: Some(CHUNK) }),
        bucket: store.to_owned(),
        nuid: w.nuid.clone(),
        size: usize::try_from(w.size).unwrap_or(usize::MAX),
        chunks: w.chunks,
        modified: async_nats::datetime::from_nanos(nanos).ok(),
        digest: Some(format!("SHA-256={}", base64::engine::general_purpose::URL_SAFE.encode(w.sha256))),
        deleted: false,
    })
}

/// Publish a metadata message (rolling up the key's earlier ones) and wait for its ack.
async fn publish_meta(js: &jetstream::Context, store: &str, key: &str, info: &ObjectInfo) -> Result<(), ObjectError> {
    let payload = serde_json::to_vec(info).map_err(|e| ObjectError::backend("encode object metadata", e))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    js.publish_with_headers(meta_subject(store, key), headers, payload.into())
        .await
        .map_err(|e| ObjectError::backend("store object metadata", e))?
        .await
        .map_err(|e| ObjectError::backend("store object metadata", e))?;
    Ok(())
}

/// The S3 view of a stored object.
fn meta_of(info: &ObjectInfo) -> (ObjectMeta, S3Meta) {
    let s3: S3Meta = info.metadata.get(META_KEY).and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
    let checksum = match (s3.checksum_alg.as_deref().and_then(ChecksumAlgorithm::parse), &s3.checksum) {
        (Some(algorithm), Some(value)) => Some(Checksum { algorithm, value: value.clone() }),
        _ => None,
    };
    let meta = ObjectMeta {
        key: info.name.clone(),
        size: info.size as u64,
        // An object another NATS client wrote has no ETag of ours: its version id stands in.
        etag: if s3.etag.is_empty() { info.nuid.clone() } else { s3.etag.clone() },
        last_modified_ms: if s3.modified_ms == 0 { datetime_ms(info) } else { s3.modified_ms },
        headers: headers_of(&s3),
        checksum,
        parts: s3.parts,
    };
    (meta, s3)
}

fn headers_of(s3: &S3Meta) -> ObjectHeaders {
    ObjectHeaders {
        content_type: s3.content_type.clone(),
        content_encoding: s3.content_encoding.clone(),
        content_disposition: s3.content_disposition.clone(),
        content_language: s3.content_language.clone(),
        cache_control: s3.cache_control.clone(),
        expires: s3.expires.clone(),
        metadata: s3.user.clone(),
    }
}

/// What S3 adds to an object, from its headers and what was computed.
fn s3_meta(headers: &ObjectHeaders, etag: String, checksum: Option<&Checksum>, parts: Option<u32>) -> S3Meta {
    S3Meta {
        etag,
        modified_ms: now_ms(),
        checksum_alg: checksum.map(|c| c.algorithm.as_str().to_owned()),
        checksum: checksum.map(|c| c.value.clone()),
        parts,
        content_type: headers.content_type.clone(),
        content_encoding: headers.content_encoding.clone(),
        content_disposition: headers.content_disposition.clone(),
        content_language: headers.content_language.clone(),
        cache_control: headers.cache_control.clone(),
        expires: headers.expires.clone(),
        user: headers.metadata.clone(),
        bucket: None,
        key: None,
        seek: Vec::new(),
    }
}

/// A body written as chunks, not yet committed.
struct Written {
    nuid: String,
    size: u64,
    chunks: usize,
    sha256: [u8; 32],
    md5: [u8; 16],
    checksum: Option<Checksum>,
    /// See [`S3Meta::seek`].
    seek: Vec<u64>,
}

/// Publishes a body as chunk messages, [`WINDOW`] acknowledgements outstanding, hashing it.
struct ChunkWriter {
    js: jetstream::Context,
    nuid: String,
    subject: String,
    buf: BytesMut,
    /// Chunk numbers and their acknowledgements, oldest first.
    acks: VecDeque<(usize, PublishAckFuture)>,
    seek: Vec<u64>,
    chunks: usize,
    size: u64,
    sha256: sha2::Sha256,
    hasher: Hasher,
    result: Option<([u8; 16], Option<Checksum>)>,
}

impl ChunkWriter {
    fn new(js: &jetstream::Context, store: &str, alg: Option<ChecksumAlgorithm>) -> ChunkWriter {
        let nuid = uuid::Uuid::new_v4().simple().to_string();
        ChunkWriter {
            js: js.clone(),
            subject: chunk_subject(store, &nuid),
            nuid,
            buf: BytesMut::with_capacity(CHUNK),
            acks: VecDeque::with_capacity(WINDOW),
            seek: Vec::new(),
            chunks: 0,
            size: 0,
            sha256: <sha2::Sha256 as sha2::Digest>::new(),
            hasher: Hasher::new(alg),
            result: None,
        }
    }

    /// Write a whole body stream.
    async fn pump(&mut self, mut body: ByteStream) -> Result<(), ObjectError> {
        while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            self.write(&chunk.map_err(ObjectError::Body)?).await?;
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ObjectError> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        while self.buf.len() >= CHUNK {
            let chunk = self.buf.split_to(CHUNK).freeze();
            self.publish(chunk).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        sha2::Digest::update(&mut self.sha256, &chunk);
        let number = self.chunks;
        self.chunks += 1;
        let ack = self
            .js
            .publish(self.subject.clone(), chunk)
            .await
            .map_err(|e| ObjectError::backend("store an object chunk", e))?;
        self.acks.push_back((number, ack));
        if self.acks.len() >= WINDOW {
            self.await_oldest().await?;
        }
        Ok(())
    }

    async fn await_oldest(&mut self) -> Result<(), ObjectError> {
        if let Some((number, ack)) = self.acks.pop_front() {
            let ack = ack.await.map_err(|e| ObjectError::backend("store an object chunk", e))?;
            if number % STRIDE == 0 {
                self.seek.push(ack.sequence);
            }
        }
        Ok(())
    }

    /// Publish what is left and wait for every acknowledgement.
    async fn finish(&mut self) -> Result<(), ObjectError> {
        if !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            self.publish(rest).await?;
        }
        while !self.acks.is_empty() {
            self.await_oldest().await?;
        }
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(None));
        self.result = Some(hasher.finish());
        Ok(())
    }

    fn written(self) -> Written {
        let (md5, checksum) = self.result.unwrap_or(([0; 16], None));
        let sha256: [u8; 32] = sha2::Digest::finalize(self.sha256).into();
        Written { nuid: self.nuid, size: self.size, chunks: self.chunks, sha256, md5, checksum, seek: self.seek }
    }
}

/// Check a finished body against the client's length, Content-MD5 and checksum.
fn check_body(w: &ChunkWriter, opts: &PutOptions) -> Result<(), ObjectError> {
    if let Some(declared) = opts.content_length {
        if declared != w.size {
            return Err(ObjectError::IncompleteBody { declared, actual: w.size });
        }
    }
    let Some((md5, checksum)) = &w.result else { return Ok(()) };
    if let Some(want) = &opts.content_md5 {
        if *want != base64::engine::general_purpose::STANDARD.encode(md5) {
            return Err(ObjectError::BadDigest("Content-MD5"));
        }
    }
    let Some((alg, Some(expected))) = &opts.checksum else { return Ok(()) };
    let want = match expected {
        Expected::Value(v) => Some(v.clone()),
        Expected::AfterBody(f) => f(),
    };
    match (want, checksum) {
        (Some(w), Some(g)) if w != g.value => Err(ObjectError::BadDigest(alg.as_str())),
        _ => Ok(()),
    }
}

/// Chunk messages a reader fetches ahead of its consumer (memory: this many chunks).
const READ_AHEAD: usize = 2;

/// The bytes `[start, end)` of the object version `info` names, as a body. A task fetches its
/// chunks one by one from the stream leader (each the first message on the chunk subject after
/// the previous one), at most [`READ_AHEAD`] ahead of the consumer, so memory stays at a few
/// chunks whatever the size; the bytes before `start` are fetched and dropped (a chunk is found
/// only by reading its subject in order). A whole read is checked against the stored SHA-256.
fn read_chunks(stream: stream::Stream, info: &ObjectInfo, start: u64, end: u64) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let subject = chunk_subject(&info.bucket, &info.nuid);
    let digest = (start == 0 && end == info.size as u64).then(|| info.digest.clone()).flatten();
    let from = seek_point(info, start);
    tokio::spawn(async move {
        if let Err(e) = send_chunks(&stream, &subject, from, start, end, digest, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(Received(rx))
}

/// Where to start reading for a range starting at `start`: the byte offset and stream sequence
/// of the last indexed chunk at or before it (the object's start when it has no index).
fn seek_point(info: &ObjectInfo, start: u64) -> (u64, u64) {
    let (_, s3) = meta_of(info);
    let chunk = info.options.as_ref().and_then(|o| o.max_chunk_size).unwrap_or(CHUNK) as u64;
    let stride = chunk * STRIDE as u64;
    if stride == 0 {
        return (0, 1);
    }
    let i = start / stride;
    match usize::try_from(i).ok().and_then(|i| s3.seek.get(i)) {
        Some(&seq) => (i * stride, seq),
        None => (0, 1),
    }
}

async fn send_chunks(
    stream: &stream::Stream,
    subject: &str,
    (mut at, mut seq): (u64, u64),
    start: u64,
    end: u64,
    digest: Option<String>,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), std::io::Error> {
    let mut sha = <sha2::Sha256 as sha2::Digest>::new();
    while at < end {
        let msg = stream
            .get_first_raw_message_by_subject(subject, seq)
            .await
            .map_err(|e| std::io::Error::other(format!("reading an object's chunk failed: {e}")))?;
        seq = msg.sequence + 1;
        let (from, len) = (at, msg.payload.len() as u64);
        at += len;
        if len == 0 {
            return Err(std::io::Error::other("an object's chunk is empty"));
        }
        sha2::Digest::update(&mut sha, &msg.payload);
        if at <= start {
            continue;
        }
        let lo = usize::try_from(start.saturating_sub(from)).unwrap_or(0);
        let hi = usize::try_from(end.min(at) - from).unwrap_or(0);
        if tx.send(Ok(msg.payload.slice(lo..hi))).await.is_err() {
            return Ok(()); // The reader went away.
        }
    }
    let got = format!("SHA-256={}", base64::engine::general_purpose::URL_SAFE.encode(sha2::Digest::finalize(sha)));
    match digest {
        Some(want) if want != got => Err(std::io::Error::other("an object's bytes do not match its SHA-256")),
        _ => Ok(()),
    }
}

/// The receiving end of [`read_chunks`], as a stream.
struct Received(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Stream for Received {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx)
    }
}

/// Builds one page of a listing from keys seen in any order: keeps the `max_keys + 1` smallest
/// entries (objects, and common prefixes rolled up) after the cursor, so memory is bounded by
/// the page, not the bucket.
struct PageBuilder {
    query: ListQuery,
    max: usize,
    cursor: Option<String>,
    /// Entry → the object (`None`: a common prefix).
    entries: BTreeMap<String, Option<ObjectMeta>>,
}

impl PageBuilder {
    fn new(query: &ListQuery) -> PageBuilder {
        let delimiter = query.delimiter.as_deref();
        // A cursor inside a common prefix means that prefix was already returned: skip past it.
        let cursor = query.after.as_deref().map(|a| match common_prefix(a, &query.prefix, delimiter) {
            Some(cp) if a.starts_with(query.prefix.as_str()) => past_prefix(cp),
            _ => a.to_owned(),
        });
        let max = query.max_keys.clamp(1, MAX_LIST_KEYS);
        PageBuilder { query: query.clone(), max, cursor, entries: BTreeMap::new() }
    }

    fn offer(&mut self, meta: ObjectMeta) {
        if !meta.key.starts_with(self.query.prefix.as_str()) {
            return;
        }
        let (entry, object) = match common_prefix(&meta.key, &self.query.prefix, self.query.delimiter.as_deref()) {
            Some(cp) => (cp.to_owned(), None),
            None => (meta.key.clone(), Some(meta)),
        };
        if self.cursor.as_deref().is_some_and(|c| entry.as_str() <= c) {
            return;
        }
        if self.entries.len() > self.max && self.entries.last_key_value().is_some_and(|(k, _)| *k < entry) {
            return;
        }
        self.entries.insert(entry, object);
        if self.entries.len() > self.max + 1 {
            self.entries.pop_last();
        }
    }

    fn finish(self) -> ListPage {
        let more = self.entries.len() > self.max;
        let mut page = ListPage::default();
        let mut last = None;
        for (entry, object) in self.entries.into_iter().take(self.max) {
            match object {
                Some(meta) => page.objects.push(meta),
                None => page.common_prefixes.push(entry.clone()),
            }
            last = Some(entry);
        }
        page.next = if more { last } else { None };
        page
    }
}

/// The name of a part object in the uploads store.
fn part_name(upload_id: &str, number: u32) -> String {
    format!("{upload_id}/{number:05}")
}

/// An upload record as stored, checked against the bucket and key it was asked for.
fn upload_of(info: &ObjectInfo, bucket: &str, key: &str) -> Option<(UploadInfo, S3Meta)> {
    let (meta, s3) = meta_of(info);
    if s3.bucket.as_deref() != Some(bucket) || s3.key.as_deref() != Some(key) {
        return None;
    }
    let upload = UploadInfo { upload_id: info.name.clone(), key: key.to_owned(), initiated_ms: meta.last_modified_ms };
    Some((upload, s3))
}

fn part_of(info: &ObjectInfo) -> Option<PartInfo> {
    let number: u32 = info.name.rsplit_once('/')?.1.parse().ok()?;
    let (meta, _) = meta_of(info);
    Some(PartInfo {
        part_number: number,
        size: meta.size,
        etag: meta.etag,
        last_modified_ms: meta.last_modified_ms,
        checksum: meta.checksum,
    })
}

impl NatsObjects {
    /// The record of an upload of `bucket`/`key`, or `NoSuchUpload`.
    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(UploadInfo, S3Meta), ObjectError> {
        let no_such = || ObjectError::NoSuchUpload(upload_id.to_owned());
        if upload_id.is_empty() || !upload_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(no_such());
        }
        let info = self.info(&self.inner.parts, upload_id).await?.ok_or_else(no_such)?;
        upload_of(&info, bucket, key).ok_or_else(no_such)
    }

    /// The stored parts of an upload, by number.
    async fn parts_of(&self, upload_id: &str) -> Result<Vec<PartInfo>, ObjectError> {
        let prefix = format!("{upload_id}/");
        let mut parts = Vec::new();
        self.scan(&self.inner.parts, |info| {
            if info.name.starts_with(&prefix) {
                parts.extend(part_of(&info));
            }
            true
        })
        .await?;
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    /// Remove an upload's parts and record (chunks and metadata purged outright: upload ids are
    /// never reused, so no marker is needed).
    async fn drop_upload(&self, upload_id: &str) -> Result<(), ObjectError> {
        let parts = &self.inner.parts;
        for p in self.parts_of(upload_id).await? {
            let name = part_name(upload_id, p.part_number);
            if let Some(info) = self.info(parts, &name).await? {
                purge(parts, chunk_subject(PARTS, &info.nuid)).await?;
            }
            purge(parts, meta_subject(PARTS, &name)).await?;
        }
        purge(parts, meta_subject(PARTS, upload_id)).await
    }

    /// The uploads in progress of a bucket whose keys start with `prefix`.
    async fn uploads_of(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>, ObjectError> {
        let mut uploads = Vec::new();
        self.scan(&self.inner.parts, |info| {
            if !info.name.contains('/') {
                let (_, s3) = meta_of(&info);
                if let Some(key) = s3.key.filter(|k| k.starts_with(prefix)) {
                    uploads.extend(upload_of(&info, bucket, &key).map(|(u, _)| u));
                }
            }
            true
        })
        .await?;
        uploads.sort_by(|a, b| (&a.key, a.initiated_ms).cmp(&(&b.key, b.initiated_ms)));
        Ok(uploads)
    }

    /// Stream the chosen parts, in order, into new chunks of `store`.
    async fn concat_parts(&self, store: &Store, upload_id: &str, parts: &[PartInfo]) -> Result<Written, ObjectError> {
        let mut w = ChunkWriter::new(&self.inner.js, &store.name, None);
        let result = async {
            for p in parts {
                let name = part_name(upload_id, p.part_number);
                let info = self.info(&self.inner.parts, &name).await?.ok_or(ObjectError::InvalidPart(p.part_number))?;
                let mut body = read_chunks(self.inner.parts.stream.clone(), &info, 0, info.size as u64);
                while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
                    w.write(&chunk.map_err(|e| ObjectError::backend("read a part", e))?).await?;
                }
            }
            w.finish().await
        }
        .await;
        match result {
            Ok(()) => Ok(w.written()),
            Err(e) => {
                self.purge_now(store, chunk_subject(&store.name, &w.nuid)).await;
                Err(e)
            }
        }
    }
}

/// The stream of object changes (a work queue: a message goes when a node marks it done).
const OUTBOX: &str = "NIMBUS_S3_OUTBOX";
const OUTBOX_SUBJECT: &str = "nimbus.s3.outbox";
/// How long a node may hold outbox rows before they are handed to another (it died, say).
const OUTBOX_ACK_WAIT: Duration = Duration::from_secs(60);

/// The outbox stream and its one durable consumer, created when absent.
async fn outbox_consumer(cluster: &Cluster) -> Result<PullConsumer, ClusterError> {
    let stream = cluster
        .stream(stream::Config {
            name: OUTBOX.into(),
            description: Some("nimbus: changes of objects in buckets that triggers watch".into()),
            subjects: vec![OUTBOX_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let config = pull::Config {
        durable_name: Some("forwarder".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: OUTBOX_ACK_WAIT,
        ..Default::default()
    };
    crate::patiently(|| async {
        stream
            .get_or_create_consumer("forwarder", config.clone())
            .await
            .map_err(|e| ClusterError::jetstream(format!("create the consumer of {OUTBOX}"), e))
    })
    .await
}

/// An outbox message as stored (the id is its stream sequence, given on reading).
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangeRecord {
    event: String,
    bucket: String,
    key: String,
    size: Option<u64>,
    etag: Option<String>,
    time_ms: u64,
}

impl NatsObjects {
    /// After an acknowledged change of a watched bucket, store its outbox message (before the
    /// change is answered, so an answered change always has one).
    async fn record(
        &self,
        event: S3EventName,
        bucket: &str,
        key: &str,
        meta: Option<&ObjectMeta>,
    ) -> Result<(), ObjectError> {
        if !self.inner.watched.read().unwrap_or_else(|e| e.into_inner()).contains(bucket) {
            return Ok(());
        }
        let record = ChangeRecord {
            event: event.as_str().to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: meta.map(|m| m.size),
            etag: meta.map(|m| m.etag.clone()),
            time_ms: meta.map_or_else(now_ms, |m| m.last_modified_ms),
        };
        let payload = serde_json::to_vec(&record).map_err(|e| ObjectError::backend("record an object change", e))?;
        self.inner
            .js
            .publish(OUTBOX_SUBJECT, payload.into())
            .await
            .map_err(|e| ObjectError::backend("record an object change", e))?
            .await
            .map_err(|e| ObjectError::backend("record an object change", e))?;
        Ok(())
    }

    /// Rows this node holds and has not marked done, oldest first.
    fn pending_rows(&self, limit: usize) -> Vec<ObjectChange> {
        let pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.values().take(limit).map(|(c, _)| c.clone()).collect()
    }

    /// Up to `limit` new outbox messages, waiting up to `wait` for the first (zero: none).
    async fn fetch_outbox(&self, limit: usize, wait: Duration) -> Result<Vec<ObjectChange>, ObjectError> {
        let fail = |e: &dyn std::fmt::Display| ObjectError::backend("read the outbox", text(e));
        let mut batch = if wait.is_zero() {
            // `expires` arms the client's own timer too: a pull request lost with a killed
            // server must not leave the forwarder waiting for good.
            let fetch = self.inner.outbox.fetch().max_messages(limit).expires(Duration::from_millis(500));
            fetch.messages().await.map_err(|e| fail(&e))?
        } else {
            self.inner.outbox.batch().max_messages(limit).expires(wait).messages().await.map_err(|e| fail(&e))?
        };
        let mut rows = Vec::new();
        while let Some(msg) = std::future::poll_fn(|cx| Pin::new(&mut batch).poll_next(cx)).await {
            let msg = msg.map_err(|e| fail(&e))?;
            let id = msg.info().map_err(|e| fail(&e))?.stream_sequence;
            match change_of(id, &msg.payload) {
                Some(change) => {
                    rows.push(change.clone());
                    self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (change, msg));
                }
                None => {
                    tracing::warn!(id, "object store: dropping an outbox message this version cannot read");
                    let _ = msg.ack().await;
                }
            }
        }
        Ok(rows)
    }
}

/// An outbox message's change; `None` for one this version cannot read (an unknown event).
fn change_of(id: u64, payload: &[u8]) -> Option<ObjectChange> {
    let r: ChangeRecord = serde_json::from_slice(payload).ok()?;
    let event = S3EventName::ALL.into_iter().find(|e| e.as_str() == r.event)?;
    Some(ObjectChange { id, event, bucket: r.bucket, key: r.key, size: r.size, etag: r.etag, time_ms: r.time_ms })
}

/// Any displayable error, as a source error.
#[derive(Debug)]
struct ErrorText(String);

impl std::fmt::Display for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ErrorText {}

fn text(e: impl std::fmt::Display) -> ErrorText {
    ErrorText(e.to_string())
}

async fn purge(store: &Store, subject: String) -> Result<(), ObjectError> {
    store.stream.purge().filter(subject).await.map_err(|e| ObjectError::backend("purge a part", e))?;
    Ok(())
}

#[async_trait]
impl ObjectStore for NatsObjects {
    async fn create_bucket(&self, bucket: &str) -> Result<bool, ObjectError> {
        let name = store_name(bucket);
        match self.inner.js.get_stream(format!("OBJ_{name}")).await {
            Ok(_) => return Ok(false),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(ObjectError::backend("find a bucket", e)),
        }
        let config = stream::Config { num_replicas: self.inner.replicas, ..store_config(&name) };
        self.inner.js.get_or_create_stream(config).await.map_err(|e| ObjectError::backend("create a bucket", e))?;
        Ok(true)
    }

    async fn delete_bucket(&self, bucket: &str, force: bool) -> Result<bool, ObjectError> {
        let store = match self.bucket(bucket).await {
            Ok(s) => s,
            Err(ObjectError::NoSuchBucket(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let uploads = self.uploads_of(bucket, "").await?;
        if !force {
            let mut any = false;
            self.scan(&store, |_| {
                any = true;
                false
            })
            .await?;
            if any || !uploads.is_empty() {
                return Err(ObjectError::BucketNotEmpty(bucket.to_owned()));
            }
        }
        for u in uploads {
            self.drop_upload(&u.upload_id).await?;
        }
        self.inner
            .js
            .delete_stream(format!("OBJ_{}", store.name))
            .await
            .map_err(|e| ObjectError::backend("delete a bucket", e))?;
        self.inner.stores.lock().unwrap_or_else(|e| e.into_inner()).remove(&store.name);
        Ok(true)
    }

    async fn head_bucket(&self, bucket: &str) -> Result<Option<BucketInfo>, ObjectError> {
        match self.bucket(bucket).await {
            Ok(store) => Ok(Some(self.bucket_info(bucket, &store).await?)),
            Err(ObjectError::NoSuchBucket(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_buckets(&self) -> Result<Vec<BucketInfo>, ObjectError> {
        let mut names = self.inner.js.stream_names();
        let mut buckets = Vec::new();
        while let Some(name) = std::future::poll_fn(|cx| Pin::new(&mut names).poll_next(cx)).await {
            let name = name.map_err(|e| ObjectError::backend("list buckets", e))?;
            buckets.extend(name.strip_prefix("OBJ_").and_then(bucket_name));
        }
        buckets.sort();
        let mut out = Vec::with_capacity(buckets.len());
        for b in buckets {
            out.extend(self.head_bucket(&b).await?);
        }
        Ok(out)
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta, ObjectError> {
        check_key(key)?;
        let store = self.bucket(bucket).await?;
        let w = self.write_body(&store, body, &opts).await?;
        let s3 = s3_meta(&opts.headers, hex::encode(w.md5), w.checksum.as_ref(), None);
        self.commit(&store, key, &w, &s3).await?;
        let meta = meta_of(&object_info(&store.name, key, &w, &s3)?).0;
        self.record(S3EventName::Put, bucket, key, Some(&meta)).await?;
        Ok(meta)
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ObjectBody, ObjectError> {
        let store = self.bucket(bucket).await?;
        let info =
            self.info(&store, key).await?.ok_or_else(|| ObjectError::NoSuchKey(bucket.to_owned(), key.to_owned()))?;
        let (meta, _) = meta_of(&info);
        let (start, end) = match range {
            None => (0, meta.size),
            Some(r) => r.resolve(meta.size).ok_or(ObjectError::InvalidRange(meta.size))?,
        };
        let body = read_chunks(store.stream.clone(), &info, start, end);
        Ok(ObjectBody { meta, start, end, body })
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, ObjectError> {
        let store = self.bucket(bucket).await?;
        let info =
            self.info(&store, key).await?.ok_or_else(|| ObjectError::NoSuchKey(bucket.to_owned(), key.to_owned()))?;
        Ok(meta_of(&info).0)
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        let store = self.bucket(bucket).await?;
        let Some(mut info) = self.info(&store, key).await? else { return Ok(false) };
        let old = std::mem::take(&mut info.nuid);
        info.deleted = true;
        info.size = 0;
        info.chunks = 0;
        publish_meta(&self.inner.js, &store.name, key, &info).await?;
        self.purge_later(&store, chunk_subject(&store.name, &old));
        self.record(S3EventName::Delete, bucket, key, None).await?;
        Ok(true)
    }

    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        headers: Option<ObjectHeaders>,
    ) -> Result<ObjectMeta, ObjectError> {
        check_key(dst_key)?;
        let src = self.get_object(src_bucket, src_key, None).await?;
        let dst = self.bucket(dst_bucket).await?;
        let opts = PutOptions {
            checksum: src.meta.checksum.as_ref().map(|c| (c.algorithm, None)),
            content_length: Some(src.end - src.start),
            ..PutOptions::default()
        };
        let w = self.write_body(&dst, src.body, &opts).await?;
        let headers = headers.unwrap_or(src.meta.headers);
        let s3 = s3_meta(&headers, hex::encode(w.md5), w.checksum.as_ref(), None);
        self.commit(&dst, dst_key, &w, &s3).await?;
        let meta = meta_of(&object_info(&dst.name, dst_key, &w, &s3)?).0;
        self.record(S3EventName::Copy, dst_bucket, dst_key, Some(&meta)).await?;
        Ok(meta)
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage, ObjectError> {
        let store = self.bucket(bucket).await?;
        let mut page = PageBuilder::new(query);
        self.scan(&store, |info| {
            if info.name.starts_with(query.prefix.as_str()) {
                page.offer(meta_of(&info).0);
            }
            true
        })
        .await?;
        Ok(page.finish())
    }

    async fn create_upload(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<UploadInfo, ObjectError> {
        check_key(key)?;
        self.bucket(bucket).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut s3 = s3_meta(&opts.headers, String::new(), None, None);
        (s3.bucket, s3.key) = (Some(bucket.to_owned()), Some(key.to_owned()));
        let empty = ChunkWriter::new(&self.inner.js, PARTS, None).written();
        let info = object_info(PARTS, &id, &empty, &s3)?;
        publish_meta(&self.inner.js, PARTS, &id, &info).await?;
        Ok(UploadInfo { upload_id: id, key: key.to_owned(), initiated_ms: s3.modified_ms })
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<PartInfo, ObjectError> {
        if part_number == 0 || part_number > MAX_PART_NUMBER {
            return Err(ObjectError::InvalidPartNumber(part_number));
        }
        self.bucket(bucket).await?;
        self.upload(bucket, key, upload_id).await?;
        let parts = &self.inner.parts;
        let w = self.write_body(parts, body, &opts).await?;
        let s3 = s3_meta(&ObjectHeaders::default(), hex::encode(w.md5), w.checksum.as_ref(), None);
        self.commit(parts, &part_name(upload_id, part_number), &w, &s3).await?;
        Ok(PartInfo {
            part_number,
            size: w.size,
            etag: s3.etag,
            last_modified_ms: s3.modified_ms,
            checksum: w.checksum,
        })
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, ObjectError> {
        self.bucket(bucket).await?;
        self.upload(bucket, key, upload_id).await?;
        self.parts_of(upload_id).await
    }

    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta, ObjectError> {
        let store = self.bucket(bucket).await?;
        let (_, record) = self.upload(bucket, key, upload_id).await?;
        let chosen = choose_parts(parts, &self.parts_of(upload_id).await?, |p| p)?;
        let w = self.concat_parts(&store, upload_id, &chosen).await?;
        let etags: Vec<String> = chosen.iter().map(|p| p.etag.clone()).collect();
        let s3 = s3_meta(&headers_of(&record), multipart_etag(&etags), None, u32::try_from(chosen.len()).ok());
        self.commit(&store, key, &w, &s3).await?;
        let meta = meta_of(&object_info(&store.name, key, &w, &s3)?).0;
        self.record(S3EventName::CompleteMultipartUpload, bucket, key, Some(&meta)).await?;
        self.drop_upload(upload_id).await?;
        Ok(meta)
    }

    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        self.bucket(bucket).await?;
        self.upload(bucket, key, upload_id).await?;
        self.drop_upload(upload_id).await
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>, ObjectError> {
        self.bucket(bucket).await?;
        self.uploads_of(bucket, prefix).await
    }

    fn watch_buckets(&self, buckets: BTreeSet<String>) {
        *self.inner.watched.write().unwrap_or_else(|e| e.into_inner()) = buckets;
    }

    async fn outbox(&self, limit: usize, wait: Duration) -> Result<Vec<ObjectChange>, ObjectError> {
        let limit = limit.max(1);
        let mut rows = self.pending_rows(limit);
        if rows.len() < limit {
            rows.extend(self.fetch_outbox(limit - rows.len(), Duration::ZERO).await?);
        }
        if rows.is_empty() && !wait.is_zero() {
            rows = self.fetch_outbox(1, wait).await?;
            if !rows.is_empty() && limit > 1 {
                rows.extend(self.fetch_outbox(limit - 1, Duration::ZERO).await?);
            }
        }
        Ok(rows)
    }

    async fn outbox_done(&self, ids: &[u64]) -> Result<(), ObjectError> {
        for id in ids {
            let taken = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            if let Some((_, msg)) = taken {
                msg.double_ack().await.map_err(|e| ObjectError::backend("delete outbox rows", text(e)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_map_both_ways() {
        for name in ["photos", "my.bucket.example", "a-b", "UPPER_and_low", "ünï", "x.X_", ""] {
            let store = store_name(name);
            assert!(store.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{store}");
            assert_eq!(bucket_name(&store).as_deref(), Some(name), "{store}");
        }
        assert_eq!(store_name("my.bucket"), "nimbus-s3-my_bucket");
        assert_ne!(store_name("a.b"), store_name("a_b"));
        assert_eq!(bucket_name(PARTS), None, "the uploads store is no bucket");
        assert_eq!(bucket_name("nimbus-s3-aX4"), None, "a cut escape is no name");
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            etag: String::new(),
            last_modified_ms: 0,
            headers: ObjectHeaders::default(),
            checksum: None,
            parts: None,
        }
    }

    fn page(keys: &[&str], q: ListQuery) -> (Vec<String>, Vec<String>, Option<String>) {
        let mut b = PageBuilder::new(&q);
        // Offered in reverse (the scan's order is the stream's, not the keys').
        for k in keys.iter().rev() {
            b.offer(meta(k));
        }
        let p = b.finish();
        (p.objects.into_iter().map(|m| m.key).collect(), p.common_prefixes, p.next)
    }

    #[test]
    fn pages_are_in_byte_order_with_prefixes_and_continuations() {
        let keys = ["a/1", "a/2", "b", "c/x/1", "c/y", "d", "é"];
        let q = ListQuery { delimiter: Some("/".into()), max_keys: 2, ..ListQuery::default() };
        assert_eq!(page(&keys, q.clone()), (vec!["b".into()], vec!["a/".into()], Some("b".into())));
        let q2 = ListQuery { after: Some("b".into()), ..q.clone() };
        assert_eq!(page(&keys, q2), (vec!["d".into()], vec!["c/".into()], Some("d".into())));
        let q3 = ListQuery { after: Some("d".into()), ..q.clone() };
        assert_eq!(page(&keys, q3), (vec!["é".into()], vec![], None));
        let inside = ListQuery { after: Some("a/1".into()), max_keys: 10, ..q.clone() };
        assert_eq!(page(&keys, inside).0, vec!["b", "d", "é"]);
        let cq = ListQuery { prefix: "c/".into(), delimiter: Some("/".into()), max_keys: 10, ..ListQuery::default() };
        assert_eq!(page(&keys, cq), (vec!["c/y".into()], vec!["c/x/".into()], None));
        let all = ListQuery { max_keys: 7, ..ListQuery::default() };
        assert_eq!(page(&keys, all).0, keys);
    }
}
