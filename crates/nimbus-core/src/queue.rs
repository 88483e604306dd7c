//! The durable async queue as the engine sees it. Backends implement [`QueueStore`]: the
//! embedded one (SQLite, group commit) now, a NATS JetStream one for clusters later.
//!
//! Event lifecycle: `queued` → (claimed) `running` → `succeeded` | `queued` again (retry, with
//! `next_run_ms` in the future) | `dead` (the dead-letter store; redrive puts it back to
//! `queued`). On start, `running` events go back to `queued`: delivery is at-least-once.
//!
//! Every `*_ms` time here is wall-clock milliseconds since the Unix epoch, as
//! [`crate::ids::now_ms`] reads them.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::policy::AttemptFailure;
use crate::Trigger;

// The strings below are stored in `queue.db` and shown by the management API and in destination
// envelopes: changing one breaks existing databases and clients.

/// What put an event in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// The Invoke API with `InvocationType: Event`.
    Invoke,
    /// An HTTP route marked async.
    Http,
    /// A `[[schedules]]` fire.
    Schedule,
    /// The outcome envelope of another event (`on_success` / `on_failure`).
    Destination,
    /// An S3 event notification of a bucket trigger (its payload is the notification).
    Bucket,
}

impl EventSource {
    pub const ALL: [EventSource; 5] =
        [EventSource::Invoke, EventSource::Http, EventSource::Schedule, EventSource::Destination, EventSource::Bucket];

    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Invoke => "invoke",
            EventSource::Http => "http",
            EventSource::Schedule => "schedule",
            EventSource::Destination => "destination",
            EventSource::Bucket => "bucket",
        }
    }

    pub fn parse(s: &str) -> Option<EventSource> {
        EventSource::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The trigger the invocation is recorded with: schedules are told apart, every other
    /// source is an async event.
    pub fn trigger(self) -> Trigger {
        match self {
            EventSource::Schedule => Trigger::Schedule,
            EventSource::Bucket => Trigger::Bucket,
            EventSource::Invoke | EventSource::Http | EventSource::Destination => Trigger::Event,
        }
    }
}

/// Where an event is in its lifecycle, as status queries show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Waiting to run (first time or retry).
    Queued,
    Running,
    Succeeded,
    /// Given up on and sent to its `on_failure` function instead of the dead-letter store.
    Failed,
    /// Given up on and kept in the dead-letter store (redrive queues it again).
    #[serde(rename = "dead-lettered")]
    DeadLettered,
}

impl EventStatus {
    pub const ALL: [EventStatus; 5] = [
        EventStatus::Queued,
        EventStatus::Running,
        EventStatus::Succeeded,
        EventStatus::Failed,
        EventStatus::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Running => "running",
            EventStatus::Succeeded => "succeeded",
            EventStatus::Failed => "failed",
            EventStatus::DeadLettered => "dead-lettered",
        }
    }

    pub fn parse(s: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// How one attempt ended, as recorded in an event's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    FunctionError,
    PlatformError,
    Throttled,
    /// The function was not in the live deployment when the event ran.
    NotFound,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 5] = [
        AttemptOutcome::Success,
        AttemptOutcome::FunctionError,
        AttemptOutcome::PlatformError,
        AttemptOutcome::Throttled,
        AttemptOutcome::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::FunctionError => "function_error",
            AttemptOutcome::PlatformError => "platform_error",
            AttemptOutcome::Throttled => "throttled",
            AttemptOutcome::NotFound => "not_found",
        }
    }

    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl From<AttemptFailure> for AttemptOutcome {
    fn from(failure: AttemptFailure) -> AttemptOutcome {
        match failure {
            AttemptFailure::Function => AttemptOutcome::FunctionError,
            AttemptFailure::Platform => AttemptOutcome::PlatformError,
            AttemptFailure::Throttled => AttemptOutcome::Throttled,
        }
    }
}

/// An event to accept.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The request id callers see (and the id the event keeps across retries).
    pub id: String,
    pub function: String,
    /// A version number to pin, or None for whatever is live when it runs.
    pub qualifier: Option<String>,
    pub payload: Bytes,
    pub source: EventSource,
    pub idempotency_key: Option<String>,
    pub now_ms: u64,
    /// Runs no earlier than this (now for a fresh event).
    pub run_at_ms: u64,
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
    pub source: EventSource,
    pub accepted_ms: u64,
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
    pub started_ms: u64,
    pub duration_ms: f64,
    pub outcome: AttemptOutcome,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
}

/// How an attempt ended, for the store.
#[derive(Clone, Debug)]
pub enum Finish {
    Succeeded {
        response: Bytes,
    },
    /// Run again at `run_at_ms`. `failure` says which counter grows (see
    /// [`AttemptFailure::is_function_error`]).
    Retry {
        run_at_ms: u64,
        failure: AttemptFailure,
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
    pub source: EventSource,
    pub status: EventStatus,
    pub attempts: u32,
    pub accepted_ms: u64,
    pub updated_ms: u64,
    pub next_run_ms: Option<u64>,
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
    pub oldest_queued_ms: Option<u64>,
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
    async fn accept(&self, event: NewEvent, idempotency_window_ms: u64) -> Result<Accepted, QueueError>;
    /// Mark up to `limit` due events `running` and return them, oldest first, at most
    /// `shares[function]` of a function (`default_share` for a function not in `shares`; a share
    /// of 0 skips the function).
    async fn claim(
        &self,
        now_ms: u64,
        limit: u32,
        shares: &std::collections::HashMap<String, u32>,
        default_share: u32,
    ) -> Result<Vec<ClaimedEvent>, QueueError>;
    /// Put a claimed event back, as if it had not been claimed (no attempt is counted).
    async fn release(&self, id: &str, run_at_ms: u64) -> Result<(), QueueError>;
    /// Record an attempt and move the event on.
    async fn finish(&self, id: &str, attempt: AttemptRecord, finish: Finish, now_ms: u64) -> Result<(), QueueError>;
    /// The earliest `next_run_ms` among queued events.
    async fn next_due(&self) -> Result<Option<u64>, QueueError>;
    /// Resolves when events may have been queued behind the engine's back (accepted or NAKed
    /// by another node of a cluster): the idle engine waits on it besides its own wake-ups and
    /// [`QueueStore::next_due`]. The embedded store sees every accept through its engine, so by
    /// default this never resolves.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
    /// Put events that were `running` when the process died back in the queue; returns how many.
    async fn recover(&self) -> Result<u64, QueueError>;
    /// Events not yet finished (queued or running).
    async fn depth(&self) -> Result<u64, QueueError>;
    /// Counts for `/metrics`, per function.
    async fn stats(&self) -> Result<Vec<QueueStats>, QueueError>;
    async fn get(&self, id: &str) -> Result<Option<EventView>, QueueError>;
    async fn list(
        &self,
        status: Option<EventStatus>,
        function: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventView>, QueueError>;
    /// Dead-lettered events back to the queue (all when `ids` is empty); returns how many.
    async fn redrive(&self, ids: &[String], function: Option<&str>, now_ms: u64) -> Result<u64, QueueError>;
    /// Delete dead-lettered events; returns how many.
    async fn purge(&self, function: Option<&str>) -> Result<u64, QueueError>;
    /// Enqueue a schedule's event for `slot_ms` unless that slot was fired before; remembers
    /// the slot as the schedule's latest. Returns whether it fired.
    async fn fire_slot(&self, schedule_key: &str, slot_ms: u64, event: NewEvent) -> Result<bool, QueueError>;
    /// The latest slot fired for a schedule.
    async fn last_slot(&self, schedule_key: &str) -> Result<Option<u64>, QueueError>;
    /// Remember `slot_ms` as handled without firing (first sight of a schedule, or catch-up "none").
    async fn skip_to(&self, schedule_key: &str, slot_ms: u64) -> Result<(), QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings stored in `queue.db` and shown to clients, pinned: `as_str`, `parse` and
    /// serde must all agree with them.
    #[test]
    fn wire_strings_are_stable() {
        fn check<T>(table: &[(T, &str)], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
        where
            T: Copy + PartialEq + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
        {
            for &(v, s) in table {
                assert_eq!(as_str(v), s);
                assert_eq!(parse(s), Some(v));
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(s));
                assert_eq!(serde_json::from_value::<T>(serde_json::json!(s)).unwrap(), v);
            }
        }
        use AttemptOutcome as O;
        use EventSource as S;
        use EventStatus as T;
        let sources = [
            (S::Invoke, "invoke"),
            (S::Http, "http"),
            (S::Schedule, "schedule"),
            (S::Destination, "destination"),
            (S::Bucket, "bucket"),
        ];
        check(&sources, S::as_str, S::parse);
        assert_eq!(sources.len(), S::ALL.len());
        let statuses = [
            (T::Queued, "queued"),
            (T::Running, "running"),
            (T::Succeeded, "succeeded"),
            (T::Failed, "failed"),
            (T::DeadLettered, "dead-lettered"),
        ];
        check(&statuses, T::as_str, T::parse);
        assert_eq!(statuses.len(), T::ALL.len());
        let outcomes = [
            (O::Success, "success"),
            (O::FunctionError, "function_error"),
            (O::PlatformError, "platform_error"),
            (O::Throttled, "throttled"),
            (O::NotFound, "not_found"),
        ];
        check(&outcomes, O::as_str, O::parse);
        assert_eq!(outcomes.len(), O::ALL.len());
        assert_eq!(S::parse("Invoke"), None);
        assert_eq!(T::parse("dead"), None, "`dead` is the storage spelling, not the wire one");
    }

    #[test]
    fn an_attempt_record_serializes_as_before() {
        let record = AttemptRecord {
            n: 2,
            started_ms: 10,
            duration_ms: 1.5,
            outcome: AttemptOutcome::FunctionError,
            error_type: Some("Error".into()),
            error_message: None,
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"n":2,"startedMs":10,"durationMs":1.5,"outcome":"function_error","errorType":"Error","errorMessage":null}"#
        );
        // As stored in queue.db's history column by earlier versions (keys sorted, a real time).
        let stored = r#"{"durationMs":184.0,"errorMessage":"asked to fail","errorType":"ValueError","n":1,"outcome":"function_error","startedMs":1796007244674}"#;
        let read: AttemptRecord = serde_json::from_str(stored).unwrap();
        assert_eq!((read.n, read.started_ms, read.outcome), (1, 1_796_007_244_674, AttemptOutcome::FunctionError));
    }
}
