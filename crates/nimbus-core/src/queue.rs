//! The durable async queue as the engine sees it. Backends implement [`QueueStore`]: the
//! embedded one (SQLite, group commit) now, a NATS JetStream one for clusters later.
//!
//! Event lifecycle: `queued` → (claimed) `running` → `succeeded` | `queued` again (retry, with
//! `next_run_ms` in the future) | `dead` (the dead-letter store; redrive puts it back to
//! `queued`). On start, `running` events go back to `queued`: delivery is at-least-once.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An event to accept.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The request id callers see (and the id the event keeps across retries).
    pub id: String,
    pub function: String,
    /// A version number to pin, or None for whatever is live when it runs.
    pub qualifier: Option<String>,
    pub payload: Bytes,
    /// invoke | http | schedule | destination
    pub source: String,
    pub idempotency_key: Option<String>,
    pub now_ms: i64,
    /// Runs no earlier than this (now for a fresh event).
    pub run_at_ms: i64,
}

/// What accepting returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// True when an earlier event with the same idempotency key was found: nothing was added.
    pub duplicate: bool,
}

/// An event handed to a worker.
#[derive(Clone, Debug)]
pub struct ClaimedEvent {
    pub id: String,
    pub function: String,
    pub qualifier: Option<String>,
    pub payload: Bytes,
    pub source: String,
    pub accepted_ms: i64,
    /// Attempts including this one.
    pub attempts: u32,
    pub function_errors: u32,
    pub platform_failures: u32,
}

/// One attempt, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub n: u32,
    pub started_ms: i64,
    pub duration_ms: f64,
    pub outcome: String,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
}

/// How an attempt ended, for the store.
#[derive(Clone, Debug)]
pub enum Finish {
    Succeeded {
        response: Bytes,
    },
    /// Run again at `run_at_ms`. `function_error` / `platform_failure` say which counter grows.
    Retry {
        run_at_ms: i64,
        function_error: bool,
        platform_failure: bool,
    },
    /// Dead-lettered (or failed, when `on_failure` sent it elsewhere).
    Failed {
        reason: String,
        dead_letter: bool,
    },
}

/// The queue's view of one event, for status queries.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub request_id: String,
    pub function: String,
    pub qualifier: Option<String>,
    pub source: String,
    /// queued | running | succeeded | failed | dead-lettered
    pub status: String,
    pub attempts: u32,
    pub accepted_ms: i64,
    pub updated_ms: i64,
    pub next_run_ms: Option<i64>,
    pub last_error_type: Option<String>,
    pub last_error: Option<String>,
    pub reason: Option<String>,
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub history: Vec<AttemptRecord>,
}

/// One function's events by state, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub function: String,
    pub queued: u64,
    pub running: u64,
    pub dead_lettered: u64,
    /// When the oldest queued event was accepted.
    pub oldest_queued_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue holds {depth} events, its limit; retry later")]
    Full { depth: u64 },
    #[error("queue storage failed: {0}")]
    Storage(String),
}

/// Durable storage for async events. Every method is called by the queue engine or the
/// management API; `accept` returns only once the event is on stable storage.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    async fn accept(&self, event: NewEvent, idempotency_window_ms: i64) -> Result<Accepted, QueueError>;
    /// Mark up to `limit` due events `running` and return them, oldest first, at most
    /// `shares[function]` of a function (`default_share` for a function not in `shares`; a share
    /// of 0 skips the function).
    async fn claim(
        &self,
        now_ms: i64,
        limit: u32,
        shares: &std::collections::HashMap<String, u32>,
        default_share: u32,
    ) -> Result<Vec<ClaimedEvent>, QueueError>;
    /// Put a claimed event back, as if it had not been claimed (no attempt is counted).
    async fn release(&self, id: &str, run_at_ms: i64) -> Result<(), QueueError>;
    /// Record an attempt and move the event on.
    async fn finish(&self, id: &str, attempt: AttemptRecord, finish: Finish, now_ms: i64) -> Result<(), QueueError>;
    /// The earliest `next_run_ms` among queued events.
    async fn next_due(&self) -> Result<Option<i64>, QueueError>;
    /// Put events that were `running` when the process died back in the queue; returns how many.
    async fn recover(&self) -> Result<u64, QueueError>;
    /// Events not yet finished (queued or running).
    async fn depth(&self) -> Result<u64, QueueError>;
    /// Counts for `/metrics`, per function.
    async fn stats(&self) -> Result<Vec<QueueStats>, QueueError>;
    async fn get(&self, id: &str) -> Result<Option<EventView>, QueueError>;
    async fn list(
        &self,
        status: Option<&str>,
        function: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventView>, QueueError>;
    /// Dead-lettered events back to the queue (all when `ids` is empty); returns how many.
    async fn redrive(&self, ids: &[String], function: Option<&str>, now_ms: i64) -> Result<u64, QueueError>;
    /// Delete dead-lettered events; returns how many.
    async fn purge(&self, function: Option<&str>) -> Result<u64, QueueError>;
    /// Enqueue a schedule's event for `slot_ms` unless that slot was fired before; remembers
    /// the slot as the schedule's latest. Returns whether it fired.
    async fn fire_slot(&self, schedule_key: &str, slot_ms: i64, event: NewEvent) -> Result<bool, QueueError>;
    /// The latest slot fired for a schedule.
    async fn last_slot(&self, schedule_key: &str) -> Result<Option<i64>, QueueError>;
    /// Remember `slot_ms` as handled without firing (first sight of a schedule, or catch-up "none").
    async fn skip_to(&self, schedule_key: &str, slot_ms: i64) -> Result<(), QueueError>;
}
