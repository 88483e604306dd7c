//! The history seam: what happened, as the management API and the dashboard read it back —
//! invocation records, their logs, hourly usage and the time series the dashboard charts.
//! Records are written through [`crate::Recorder`] off the request path; this trait is the
//! read side.
//!
//! Lifecycle: one `History` is opened at start by the composition root and handed to the
//! gateway. Its methods are called on demand by management requests (`/v1/invocations`,
//! `/v1/functions/F/logs`, `/v1/usage`, `/v1/stats`), never on a function's request path. In a
//! cluster each node keeps the history of the invocations it ran.

use async_trait::async_trait;

use crate::invoke::InvocationRecord;

/// Filters for listing invocation records.
#[derive(Clone, Debug, Default)]
pub struct InvocationQuery {
    pub function: Option<String>,
    pub request_id: Option<String>,
    pub limit: u32,
}

/// Filters for reading a function's log.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub function: String,
    /// Only entries after this sequence number (0: from the start).
    pub after: u64,
    pub request_id: Option<String>,
    pub limit: u32,
}

/// One invocation's log, in the order the logs were written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Increases with every entry written; readers page with it.
    pub seq: u64,
    pub request_id: String,
    pub ts_ms: u64,
    pub text: String,
}

/// Billable requests and memory × billed time of one function in one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub function: String,
    pub hour_ms: u64,
    pub requests: u64,
    /// MB × billed milliseconds; GB-seconds = mb_ms / 1024 / 1000.
    pub mb_ms: u64,
    /// MB × milliseconds its instances were busy, for functions with `concurrency > 1` (0 for
    /// the others): such a function is billed this instead of `mb_ms`.
    pub instance_mb_ms: u64,
}

impl UsageRow {
    /// What the hour is billed in MB × ms: instance time when the function ran invocations side
    /// by side on its instances (`concurrency > 1`), else per invocation.
    pub fn billed_mb_ms(&self) -> u64 {
        if self.instance_mb_ms > 0 {
            self.instance_mb_ms
        } else {
            self.mb_ms
        }
    }
}

/// Storage use of one bucket or KV namespace in one hour (see [`crate::meter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageUsageRow {
    pub kind: crate::meter::StorageKind,
    pub name: String,
    pub hour_ms: u64,
    pub counts: crate::meter::StorageCounts,
    /// Bytes stored × seconds; GB-months = byte_seconds / (10⁹ × 730 × 3600).
    pub byte_seconds: u64,
}

/// What to aggregate: records that started in `[since_ms, since_ms + buckets × bucket_ms)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsQuery {
    /// One function, or every function when `None`.
    pub function: Option<String>,
    pub since_ms: u64,
    pub bucket_ms: u64,
    pub buckets: u32,
}

/// One bucket of the series (or the whole window, for the total).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsBucket {
    pub start_ms: u64,
    pub invocations: u64,
    /// Invocations whose status is not `success` (function errors, timeouts, crashes, init
    /// errors, throttles, platform errors).
    pub errors: u64,
    pub throttled: u64,
    pub cold: u64,
    /// `cold / invocations`, or `None` for an empty bucket.
    pub cold_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// The series and its total.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub function: Option<String>,
    pub since_ms: u64,
    pub until_ms: u64,
    pub bucket_ms: u64,
    pub buckets: Vec<StatsBucket>,
    pub total: StatsBucket,
}

/// Why history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {what}: {source}")]
pub struct HistoryError {
    /// What was being read ("invocation records", "logs", …).
    pub what: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl HistoryError {
    pub fn new(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        HistoryError { what, source: Box::new(source) }
    }
}

/// The read side of invocation history. See the module docs for who calls it.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Invocation records, newest first (the log is not filled in; see [`History::logs`]).
    async fn invocations(&self, query: &InvocationQuery) -> Result<Vec<InvocationRecord>, HistoryError>;
    /// Log entries of one function after a sequence number, oldest first.
    async fn logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, HistoryError>;
    /// Requests and memory time per function per hour, from the hour holding `since_ms`.
    async fn usage(&self, since_ms: u64) -> Result<Vec<UsageRow>, HistoryError>;
    /// Storage requests, bytes and byte-seconds per bucket or namespace per hour, from the hour
    /// holding `since_ms`. Histories without storage have none.
    async fn storage_usage(&self, _since_ms: u64) -> Result<Vec<StorageUsageRow>, HistoryError> {
        Ok(Vec::new())
    }
    /// Counts and percentiles per time bucket.
    async fn stats(&self, query: &StatsQuery) -> Result<Stats, HistoryError>;
}
