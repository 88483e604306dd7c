//! The object-storage seam: buckets of objects with metadata, as S3 models them. The embedded
//! backend keeps bytes in files and metadata in SQLite (nimbus-store-sqlite); a cluster backend
//! (NATS JetStream Object Store) implements the same trait, so callers never name a backend.
//!
//! Callers: the S3 protocol (nimbus-aws, which maps S3 requests onto this trait), the control
//! plane (a deploy creates the buckets its manifest declares), `nimbus buckets`. Grants are
//! checked by the caller, never here: the store does what it is asked. Bucket names are checked
//! by the caller too (the manifest and the S3 layer apply S3's naming rules).
//!
//! Semantics every backend keeps:
//! - A PUT (put, copy, complete multipart) acknowledged by `Ok` survives a crash of nimbus
//!   (`kill -9`); a PUT that did not return `Ok` is never visible, not even in part: readers see
//!   the old object or the new one, whole.
//! - A reader that has an object's body stream keeps reading the version it opened, even if the
//!   key is overwritten or deleted meanwhile.
//! - ETags are S3's: the hex MD5 of the bytes for a single PUT or copy, and
//!   `hex(md5(md5(part 1) ‖ … ‖ md5(part N)))-N` for a multipart upload (binary part digests).
//!   They are stored without the quotes S3 puts around them on the wire.
//! - Keys sort by their UTF-8 bytes (S3's order); `list` pages are in that order.
//! - A non-last multipart part under [`MIN_PART_BYTES`] makes completion fail with
//!   [`ObjectError::EntityTooSmall`]; parts may be uploaded in any order and re-uploaded.
//! - Checksums: the backend always computes the MD5; when the caller names an algorithm it
//!   computes that one too, and refuses the PUT ([`ObjectError::BadDigest`]) if an expected
//!   value was given and differs. The value is stored and returned by `head`/`get`.
//!
//! The outbox (what bucket triggers fire from): the caller names the buckets some live trigger
//! watches ([`ObjectStore::watch_buckets`]). Every acknowledged change of an object in such a
//! bucket — a put, copy or completed multipart upload, a delete of a key that existed — leaves
//! an [`ObjectChange`] in the outbox, written in the same transaction as the change: when the
//! change is acknowledged its row is on stable storage too, and a change that did not happen
//! leaves none. Rows stay until [`ObjectStore::outbox_done`] deletes them (a crash in between
//! gives them to the next reader again). Ids are never reused and grow with every change, so a
//! consumer can derive an idempotency key from one. Changes of unwatched buckets leave no row.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;

/// Longest object key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Smallest multipart part that is not the last (S3's limit).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// Highest part number (S3's limit).
pub const MAX_PART_NUMBER: u32 = 10_000;
/// Most entries one `list` call returns.
pub const MAX_LIST_KEYS: usize = 1000;

/// A body, as a stream of chunks. An `Err` item aborts the PUT it feeds (nothing is stored).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync>>;

/// A bucket and its size (the dashboard and `nimbus buckets ls` show them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created_ms: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// The checksum algorithms S3 clients send as `x-amz-checksum-*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Sha256,
}

impl ChecksumAlgorithm {
    /// The name S3 uses (`CRC32`, `CRC32C`, `SHA256`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }

    /// Parse S3's name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "CRC32" => Some(ChecksumAlgorithm::Crc32),
            "CRC32C" => Some(ChecksumAlgorithm::Crc32c),
            "SHA256" => Some(ChecksumAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// A checksum of an object: the algorithm and its value, base64 of the big-endian digest, as S3
/// sends it in `x-amz-checksum-*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub value: String,
}

/// A value the client claims for the body, checked before the PUT is acknowledged.
#[derive(Clone)]
pub enum Expected {
    /// Known before the body (a header).
    Value(String),
    /// Known only once the body has ended (an `aws-chunked` trailer): called after the last
    /// chunk; `None` means the client sent none.
    AfterBody(Arc<dyn Fn() -> Option<String> + Send + Sync>),
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Value(v) => write!(f, "Value({v})"),
            Expected::AfterBody(_) => write!(f, "AfterBody"),
        }
    }
}

/// Content headers and user metadata kept with an object and returned on GET/HEAD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHeaders {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub expires: Option<String>,
    /// `x-amz-meta-*` (names lower-case, without the prefix).
    pub metadata: BTreeMap<String, String>,
}

/// How to store a PUT or a part.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    pub headers: ObjectHeaders,
    /// The declared length (`Content-Length`); a body of another length is refused.
    pub content_length: Option<u64>,
    /// The client's `Content-MD5` (base64), checked.
    pub content_md5: Option<String>,
    /// The checksum to compute, and the client's value to check, if any.
    pub checksum: Option<(ChecksumAlgorithm, Option<Expected>)>,
}

/// An object as HEAD, GET and LIST show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: String,
    pub last_modified_ms: u64,
    pub headers: ObjectHeaders,
    pub checksum: Option<Checksum>,
    /// How many parts a multipart upload had (`None`: a single PUT or a copy).
    pub parts: Option<u32>,
}

/// Which bytes of an object to read (the HTTP `Range` header's forms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// From the first offset to the second, inclusive (`bytes=a-b`), or to the end (`bytes=a-`).
    From(u64, Option<u64>),
    /// The last n bytes (`bytes=-n`).
    Suffix(u64),
}

impl ByteRange {
    /// The half-open range `[start, end)` this selects in an object of `size` bytes; `None` when
    /// it selects nothing (S3's `InvalidRange`).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(start, _) if start >= size => None,
            ByteRange::From(start, last) => {
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                (end > start).then_some((start, end))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => Some((size.saturating_sub(n), size)),
        }
    }
}

/// An object being read: its metadata, the bytes `[start, end)` selected, and their stream.
pub struct ObjectBody {
    pub meta: ObjectMeta,
    pub start: u64,
    pub end: u64,
    pub body: ByteStream,
}

/// What `list` is asked for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub prefix: String,
    /// Keys sharing the prefix up to the first delimiter after `prefix` are rolled into one
    /// common prefix.
    pub delimiter: Option<String>,
    /// Only entries after this key (exclusive); a continuation token or `start-after`.
    pub after: Option<String>,
    /// Most entries (objects and common prefixes together), capped at [`MAX_LIST_KEYS`].
    pub max_keys: usize,
}

/// One page of `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    /// Where the next page starts (pass it as `after`); `None`: no more.
    pub next: Option<String>,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    pub upload_id: String,
    pub key: String,
    pub initiated_ms: u64,
}

/// An uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub size: u64,
    /// Hex MD5, without quotes.
    pub etag: String,
    pub last_modified_ms: u64,
    pub checksum: Option<Checksum>,
}

/// Why an object-store operation failed. The variants are S3's error codes where one fits.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("there is no bucket \"{0}\"; declare it as [buckets.{0}] in nimbus.toml and deploy, or create it")]
    NoSuchBucket(String),
    #[error("bucket \"{0}\" already exists")]
    BucketExists(String),
    #[error("bucket \"{0}\" is not empty; delete its objects first (or use --force)")]
    BucketNotEmpty(String),
    #[error("there is no object \"{1}\" in bucket \"{0}\"")]
    NoSuchKey(String, String),
    #[error("the key is {0} bytes; keys are 1 to {MAX_KEY_BYTES} bytes")]
    KeyTooLong(usize),
    #[error("there is no multipart upload \"{0}\" (it was completed, aborted or never created)")]
    NoSuchUpload(String),
    #[error("part {0} was not uploaded, or its ETag does not match the one given")]
    InvalidPart(u32),
    #[error("the parts must be listed in ascending order of part number")]
    InvalidPartOrder,
    #[error("part {0} is {1} bytes; every part but the last must be at least {MIN_PART_BYTES} bytes")]
    EntityTooSmall(u32, u64),
    #[error("part numbers are 1 to {MAX_PART_NUMBER}, not {0}")]
    InvalidPartNumber(u32),
    #[error("the requested range is not satisfiable for an object of {0} bytes")]
    InvalidRange(u64),
    #[error("the body's {0} does not match the value the client sent")]
    BadDigest(&'static str),
    #[error("the body is {actual} bytes but Content-Length said {declared}")]
    IncompleteBody { declared: u64, actual: u64 },
    /// The body stream failed (the client went away, or a chunk signature was wrong).
    #[error("reading the request body failed: {0}")]
    Body(std::io::Error),
    /// The backend failed (database error, disk full).
    #[error("the object store failed to {action}: {source}")]
    Backend {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ObjectError {
    /// Wrap a backend failure.
    pub fn backend(action: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ObjectError::Backend { action, source: Box::new(e) }
    }

    /// Whether the caller's input was at fault (a 4xx), not the store (a 5xx).
    pub fn is_caller_fault(&self) -> bool {
        !matches!(self, ObjectError::Backend { .. })
    }
}

/// One acknowledged change of an object in a watched bucket, as the outbox keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectChange {
    /// Grows with every change the store records, never reused (also the S3 sequencer).
    pub id: u64,
    pub event: crate::events::S3EventName,
    pub bucket: String,
    /// As stored (not encoded).
    pub key: String,
    /// Size and ETag (without quotes) of a created object; `None` for a removal.
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub time_ms: u64,
}

/// Check a key against the limits every backend shares.
pub fn check_key(key: &str) -> Result<(), ObjectError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ObjectError::KeyTooLong(key.len()));
    }
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix` (for skipping a
/// common prefix in a listing): keys are UTF-8, and no UTF-8 sequence sorts after U+10FFFF's.
pub fn past_prefix(prefix: &str) -> String {
    format!("{prefix}{}", char::MAX)
}

/// Where a listing's delimiter rolls `key` up: the common prefix it belongs to, if any.
pub fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    let at = rest.find(d)?;
    key.get(..prefix.len() + at + d.len())
}

/// The stored parts a completion names, in its order, by S3's rules: at least one part, part
/// numbers strictly ascending, each ETag (quotes or not) that of the stored part of that
/// number, and every part but the last at least [`MIN_PART_BYTES`]. `part` reads a stored
/// item's [`PartInfo`] (a backend may keep more beside it, such as where its bytes are).
pub fn choose_parts<T: Clone>(
    listed: &[(u32, String)],
    stored: &[T],
    part: impl Fn(&T) -> &PartInfo,
) -> Result<Vec<T>, ObjectError> {
    if listed.is_empty() {
        return Err(ObjectError::InvalidPart(0));
    }
    let mut chosen = Vec::with_capacity(listed.len());
    let mut last = 0u32;
    for (number, etag) in listed {
        if *number <= last {
            return Err(ObjectError::InvalidPartOrder);
        }
        last = *number;
        let found = stored
            .iter()
            .find(|s| part(s).part_number == *number && part(s).etag == etag.trim_matches('"'))
            .ok_or(ObjectError::InvalidPart(*number))?;
        chosen.push(found.clone());
    }
    if let Some((_, all_but_last)) = chosen.split_last() {
        if let Some(small) = all_but_last.iter().map(&part).find(|p| p.size < MIN_PART_BYTES) {
            return Err(ObjectError::EntityTooSmall(small.part_number, small.size));
        }
    }
    Ok(chosen)
}

/// An object backend. See the module documentation for the semantics every backend keeps.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Create a bucket; `Ok(false)` when it already exists (a deploy calls this every time).
    async fn create_bucket(&self, bucket: &str) -> Result<bool, ObjectError>;
    /// Delete a bucket. Without `force` a bucket with objects or uploads is
    /// [`ObjectError::BucketNotEmpty`]; with it, they go too. `Ok(false)`: it did not exist.
    async fn delete_bucket(&self, bucket: &str, force: bool) -> Result<bool, ObjectError>;
    /// One bucket with its size, if it exists.
    async fn head_bucket(&self, bucket: &str) -> Result<Option<BucketInfo>, ObjectError>;
    /// Every bucket, by name, with object counts and sizes.
    async fn list_buckets(&self) -> Result<Vec<BucketInfo>, ObjectError>;

    /// Store an object from a stream (replacing any object under the key).
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta, ObjectError>;
    /// Read an object, or the bytes of it that `range` selects.
    async fn get_object(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ObjectBody, ObjectError>;
    /// An object's metadata.
    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, ObjectError>;
    /// Delete an object; `Ok(false)` when it was absent (S3 answers both the same way).
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool, ObjectError>;
    /// Delete several objects; one result per key, in order. The default deletes one by one.
    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Vec<Result<bool, ObjectError>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.delete_object(bucket, key).await);
        }
        out
    }
    /// Copy an object; `headers` replaces the source's content headers and metadata when given.
    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        headers: Option<ObjectHeaders>,
    ) -> Result<ObjectMeta, ObjectError>;
    /// Keys in byte order, as the query asks.
    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage, ObjectError>;

    /// Start a multipart upload; the headers apply to the completed object.
    async fn create_upload(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<UploadInfo, ObjectError>;
    /// Store one part (replacing an earlier upload of the same number).
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<PartInfo, ObjectError>;
    /// The parts uploaded so far, by number.
    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, ObjectError>;
    /// Join the listed parts (number and ETag, ascending) into the object.
    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta, ObjectError>;
    /// Drop an upload and its parts.
    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), ObjectError>;
    /// Uploads in progress in a bucket.
    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>, ObjectError>;

    /// The buckets whose changes go to the outbox from now on (replacing the previous set):
    /// the buckets the live deployment's triggers watch. The default keeps no outbox.
    fn watch_buckets(&self, buckets: std::collections::BTreeSet<String>) {
        let _ = buckets;
    }
    /// Up to `limit` outbox rows, oldest first. Long-polls: when there are none it waits up to
    /// `wait` for one to be written and returns as soon as one is (no polling interval). A
    /// backend without an outbox (the default) answers an error saying so.
    async fn outbox(&self, limit: usize, wait: std::time::Duration) -> Result<Vec<ObjectChange>, ObjectError> {
        let _ = (limit, wait);
        Err(ObjectError::backend("read the outbox", std::io::Error::other("this object store keeps no outbox")))
    }
    /// Delete outbox rows once what they caused is stored elsewhere.
    async fn outbox_done(&self, ids: &[u64]) -> Result<(), ObjectError> {
        let _ = ids;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(part_number: u32, etag: &str, size: u64) -> PartInfo {
        PartInfo { part_number, etag: etag.into(), size, last_modified_ms: 0, checksum: None }
    }

    fn listed(parts: &[(u32, &str)]) -> Vec<(u32, String)> {
        parts.iter().map(|&(n, e)| (n, e.to_owned())).collect()
    }

    #[test]
    fn a_completion_takes_the_listed_parts_in_order_by_s3s_rules() {
        let stored = [part(2, "b", 1), part(1, "a", MIN_PART_BYTES), part(3, "c", MIN_PART_BYTES)];
        let chosen = choose_parts(&listed(&[(1, "\"a\""), (2, "b")]), &stored, |p| p).unwrap();
        assert_eq!(
            chosen.iter().map(|p| p.part_number).collect::<Vec<_>>(),
            [1, 2],
            "quotes or not, the last may be small"
        );

        let refused = |l: &[(u32, &str)]| choose_parts(&listed(l), &stored, |p| p).unwrap_err();
        assert!(matches!(refused(&[]), ObjectError::InvalidPart(0)));
        assert!(matches!(refused(&[(3, "c"), (1, "a")]), ObjectError::InvalidPartOrder));
        assert!(matches!(refused(&[(1, "a"), (1, "a")]), ObjectError::InvalidPartOrder));
        assert!(matches!(refused(&[(1, "x")]), ObjectError::InvalidPart(1)));
        assert!(matches!(refused(&[(4, "d")]), ObjectError::InvalidPart(4)));
        assert!(matches!(refused(&[(2, "b"), (3, "c")]), ObjectError::EntityTooSmall(2, 1)));
    }

    #[test]
    fn a_delimiter_rolls_keys_up_into_common_prefixes() {
        assert_eq!(common_prefix("photos/2026/a.jpg", "photos/", Some("/")), Some("photos/2026/"));
        assert_eq!(common_prefix("photos/a.jpg", "photos/", Some("/")), None);
        assert_eq!(common_prefix("photos/2026/a.jpg", "photos/", None), None);
        assert_eq!(common_prefix("photos/2026/a.jpg", "photos/", Some("")), None);
        let past = past_prefix("photos/2026/");
        for under in ["photos/2026/", "photos/2026/zzz", "photos/2026/\u{FFFF}\u{FFFF}"] {
            assert!(past.as_str() > under, "{under:?}");
        }
        assert!(past.as_str() < "photos/2027");
    }
}
