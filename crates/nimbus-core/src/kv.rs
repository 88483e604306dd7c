//! The KV seam: namespaces of keys with values, versions and an optional expiry (Cloudflare KV's
//! and `wasi:keyvalue`'s model). The embedded backend is SQLite (nimbus-store-sqlite); a cluster
//! backend (NATS JetStream KV) implements the same trait, so callers never name a backend.
//!
//! Callers: the gateway (`/v1/kv`, and the KV calls of process functions through their
//! instance endpoint), the wasm runtime (`wasi:keyvalue`), the control plane (a deploy creates
//! the namespaces its manifest declares). Grants are checked by the caller, never here: the
//! store does what it is asked.
//!
//! Semantics every backend keeps:
//! - An expired key is never returned by `get`, `list`, `increment` or `compare_and_swap` (it
//!   reads as absent), whether or not the background sweep has reclaimed it yet.
//! - `version` grows by at least one on every write of a key (put, increment, successful
//!   compare-and-swap); a deleted or expired key that is written again starts a new history, and
//!   its first version is still greater than 0.
//! - `increment` is atomic: N concurrent increments by 1 add N. The value is kept as its
//!   decimal string (`get` returns `b"3"`); incrementing a value that is not a decimal integer
//!   is [`KvError::NotANumber`].
//! - A write acknowledged by `Ok` survives a crash of nimbus (`kill -9`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Longest key, in bytes (Cloudflare KV's limit).
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most keys one `list` call returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Bytes,
    /// Grows on every write of the key; what `compare_and_swap` compares.
    pub version: u64,
    /// When the key expires (Unix ms), if it has a TTL.
    pub expires_ms: Option<u64>,
}

/// A key as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvKey {
    pub name: String,
    pub expires_ms: Option<u64>,
}

/// One page of `list`: keys in byte order, and where the next page starts (`None`: no more).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvPage {
    pub keys: Vec<KvKey>,
    pub cursor: Option<String>,
}

/// A namespace and its size (the dashboard and `nimbus kv ls` show them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvNamespace {
    pub name: String,
    pub keys: u64,
    pub bytes: u64,
    pub created_ms: u64,
}

/// What `compare_and_swap` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was written; its new version.
    Swapped(u64),
    /// The key's version was not the expected one; its current version (`None`: absent).
    Conflict(Option<u64>),
}

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("there is no KV namespace \"{0}\"; declare it as [kv.{0}] in nimbus.toml and deploy")]
    NoSuchNamespace(String),
    #[error("the key is {0} bytes; keys are 1 to {MAX_KEY_BYTES} bytes")]
    KeyLength(usize),
    #[error("the value is {0} bytes; values are at most {MAX_VALUE_BYTES} bytes")]
    ValueTooLarge(usize),
    #[error("the value of \"{0}\" is not a decimal integer, so it cannot be incremented")]
    NotANumber(String),
    #[error("incrementing \"{0}\" would overflow a 64-bit integer")]
    Overflow(String),
    #[error("the cursor is not one that list returned")]
    BadCursor,
    /// The backend failed (database error, disk full, connection lost).
    #[error("the KV store failed to {action}: {source}")]
    Backend {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl KvError {
    /// Wrap a backend failure.
    pub fn backend(action: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        KvError::Backend { action, source: Box::new(e) }
    }

    /// Whether the caller's input was at fault (a 4xx), not the store (a 5xx).
    pub fn is_caller_fault(&self) -> bool {
        !matches!(self, KvError::Backend { .. })
    }
}

/// Check a key against the limits every backend shares.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyLength(key.len()));
    }
    Ok(())
}

/// Check a value against the limits every backend shares.
pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::ValueTooLarge(value.len()));
    }
    Ok(())
}

/// A KV backend. See the module documentation for the semantics every backend keeps.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Create a namespace; `Ok(false)` when it already exists (a deploy calls this every time).
    async fn create_namespace(&self, ns: &str) -> Result<bool, KvError>;
    /// Delete a namespace and every key in it; `Ok(false)` when it did not exist.
    async fn delete_namespace(&self, ns: &str) -> Result<bool, KvError>;
    /// Every namespace, by name.
    async fn namespaces(&self) -> Result<Vec<KvNamespace>, KvError>;
    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError>;
    /// Write a value (replacing any), expiring after `ttl` if given; returns the new version.
    async fn put(&self, ns: &str, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<u64, KvError>;
    /// Delete a key; `Ok(false)` when it was absent (or expired).
    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError>;
    /// Keys starting with `prefix`, after `cursor`, at most `limit` (capped at
    /// [`MAX_LIST_LIMIT`]).
    async fn list(&self, ns: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<KvPage, KvError>;
    /// Add `by` to the key's integer value (an absent key counts as 0) and return the sum. `ttl`
    /// sets the expiry when the key is created by this call and leaves an existing expiry alone
    /// (a fixed window, as the rate-limit pattern needs).
    async fn increment(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError>;
    /// [`increment`](KvStore::increment) for a counter that need not survive a restart (the
    /// gateway's rate limits): as exact and as shared as the backend's other operations, but
    /// answered before it is durable, so it costs no fsync. Such counters are not listed or
    /// read by the other operations. The default is the durable `increment`.
    async fn increment_volatile(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.increment(ns, key, by, ttl).await
    }
    /// Write `value` only if the key's current version is `expected` (`None`: only if absent).
    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<CasOutcome, KvError>;
}
