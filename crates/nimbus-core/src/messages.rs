//! SQS-compatible message queues as the engine sees them. Backends implement [`MessageQueues`]:
//! the embedded one (SQLite, group commit, in its own `messages.db`) now, a NATS
//! JetStream one for clusters later. The AWS port's SQS protocols, the queue triggers and the
//! management API all speak this trait; none of them knows the backend.
//!
//! Semantics every backend keeps (SQS's):
//! - A `send` that returns `Ok` is on stable storage. Delivery is at least once.
//! - A received message is hidden for its visibility timeout (the queue's, or the receive's);
//!   when it passes without a delete the message is visible again. Each receive gives a new
//!   receipt handle; `delete` and `change_visibility` take the latest one.
//! - A message received `max_receive_count` times (the queue's redrive) moves to the dead-letter
//!   queue on the next receive attempt instead of being delivered again; it keeps its id, body
//!   and attributes, and remembers its source queue so [`MessageQueues::redrive`] can move it
//!   back.
//! - Messages older than the queue's retention are dropped. Delayed messages (the queue's delay
//!   or the message's) are invisible until the delay passes.
//! - FIFO queues: messages of one group are delivered in send order, and while any message of
//!   a group is in flight no other message of that group is delivered. A deduplication id
//!   (given, or the body's SHA-256 with content-based deduplication) seen in the last
//!   [`FIFO_DEDUP_WINDOW`] makes a send a successful no-op that returns the first message's id.
//! - `receive` with a `wait` long-polls: it returns as soon as at least one message can be
//!   delivered, or empty once `wait` passed. A send wakes waiting receivers at once (no polling
//!   interval), which is what keeps a trigger's PutObject → start latency low.
//!
//! Every `*_ms` time is wall-clock milliseconds since the Unix epoch ([`crate::ids::now_ms`]).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use crate::event_sources::QueueSpec;
pub use crate::events::SqsMessageAttribute as MessageAttribute;

/// How long a FIFO deduplication id is remembered (SQS: 5 minutes).
pub const FIFO_DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// Largest message body plus attributes (SQS: 256 KiB), the default `MaximumMessageSize`.
pub const MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// Longest long poll of one receive (SQS: 20 s).
pub const MAX_RECEIVE_WAIT: Duration = Duration::from_secs(20);
/// Most messages one receive returns to a trigger (a Lambda SQS batch: 10,000). The SQS
/// protocols cap `MaxNumberOfMessages` at 10 themselves.
pub const MAX_RECEIVE_BATCH: u32 = 10_000;

/// A queue's settings: the manifest's [`QueueSpec`] plus the SQS attributes the manifest does
/// not name (they keep SQS's defaults for a declared queue; `SetQueueAttributes` may change
/// them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    pub spec: QueueSpec,
    /// `ReceiveMessageWaitTimeSeconds`: the long poll of a receive that gives none (0–20 s).
    pub receive_wait: Duration,
    /// `MaximumMessageSize` in bytes (1,024–262,144).
    pub max_message_bytes: u32,
    /// `ContentBasedDeduplication` (FIFO only): the body's SHA-256 is the deduplication id.
    pub content_based_dedup: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            spec: QueueSpec::default(),
            receive_wait: Duration::ZERO,
            max_message_bytes: MAX_MESSAGE_BYTES,
            content_based_dedup: false,
        }
    }
}

impl From<QueueSpec> for QueueSettings {
    fn from(spec: QueueSpec) -> Self {
        QueueSettings { spec, ..QueueSettings::default() }
    }
}

/// A queue as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub settings: QueueSettings,
    pub created_ms: u64,
    pub modified_ms: u64,
}

/// Counts of one queue, as `GetQueueAttributes`, the metrics and the dashboard show them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// `ApproximateNumberOfMessages`: receivable now.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`: received and not yet deleted.
    pub in_flight: u64,
    /// `ApproximateNumberOfMessagesDelayed`: sent with a delay that has not passed.
    pub delayed: u64,
    /// When the oldest message still in the queue (any state) was sent.
    pub oldest_sent_ms: Option<u64>,
    /// Since this process started: messages sent, received (each delivery), deleted, and moved
    /// to the dead-letter queue after `max_receive_count` receives (the metrics' counters).
    pub sent_total: u64,
    pub received_total: u64,
    pub deleted_total: u64,
    pub dead_lettered_total: u64,
}

/// A message to send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewMessage {
    pub body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    /// `DelaySeconds` of this message (0–15 min); `None`: the queue's delay. Not allowed on
    /// FIFO queues (their delay is per queue).
    pub delay: Option<Duration>,
    /// `MessageGroupId`: required on FIFO queues, refused on standard ones.
    pub group_id: Option<String>,
    /// `MessageDeduplicationId` (FIFO only).
    pub dedup_id: Option<String>,
    /// Who sent it (`SenderId`: the access key id, or the function's name).
    pub sender_id: String,
}

/// What a successful send returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    pub md5_of_body: String,
    pub md5_of_attributes: Option<String>,
    /// FIFO only: the message's place in its queue, a decimal string that grows with each send.
    pub sequence_number: Option<String>,
}

/// One receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// 1–[`MAX_RECEIVE_BATCH`].
    pub max: u32,
    /// The visibility timeout of what this returns; `None`: the queue's.
    pub visibility: Option<Duration>,
    /// Long poll up to this long (≤ [`MAX_RECEIVE_WAIT`]); `None`: the queue's `receive_wait`.
    pub wait: Option<Duration>,
}

/// A received message.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub message_id: String,
    /// Valid until the next receive of this message.
    pub receipt_handle: String,
    pub body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    pub md5_of_body: String,
    pub md5_of_attributes: Option<String>,
    pub sender_id: String,
    pub sent_ms: u64,
    pub first_receive_ms: u64,
    /// `ApproximateReceiveCount`, this receive included.
    pub receive_count: u32,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
    pub sequence_number: Option<String>,
}

/// A message as `peek` shows it: read without receiving (nothing about it changes).
#[derive(Clone, Debug, PartialEq)]
pub struct Peeked {
    pub message_id: String,
    pub body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    pub sent_ms: u64,
    pub receive_count: u32,
    /// Received and not yet visible again.
    pub in_flight: bool,
    pub group_id: Option<String>,
    /// For a message in a dead-letter queue: the queue it was moved from.
    pub source_queue: Option<String>,
}

/// Why a queue operation failed. [`MqError::code`] is the SQS error code the protocols send.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    #[error("the queue {0} does not exist; create it with CreateQueue or declare it as [queues.{0}] in nimbus.toml")]
    NoSuchQueue(String),
    #[error("a queue named {0} already exists with different attributes")]
    QueueNameExists(String),
    #[error(
        "the receipt handle {0:?} is not valid: it is not one this queue gave, or the message was received again since"
    )]
    InvalidReceiptHandle(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("the message is {0} bytes, over the queue's MaximumMessageSize of {1} bytes")]
    MessageTooLong(usize, u32),
    #[error("the queue store failed: {0}")]
    Backend(String),
}

impl MqError {
    /// The SQS error code (the JSON protocol's `__type` suffix and the query protocol's `Code`).
    pub fn code(&self) -> &'static str {
        match self {
            MqError::NoSuchQueue(_) => "AWS.SimpleQueueService.NonExistentQueue",
            MqError::QueueNameExists(_) => "QueueAlreadyExists",
            MqError::InvalidReceiptHandle(_) => "ReceiptHandleIsInvalid",
            MqError::InvalidParameter(_) => "InvalidParameterValue",
            MqError::MessageTooLong(..) => "InvalidParameterValue",
            MqError::Backend(_) => "InternalError",
        }
    }

    /// True when the caller is at fault (an HTTP 400), false for the store's own failures.
    pub fn is_caller_fault(&self) -> bool {
        !matches!(self, MqError::Backend(_))
    }
}

/// Per-entry results of a batch operation, in the order of its entries.
pub type BatchResults<T> = Vec<Result<T, MqError>>;

/// A message-queue backend. See the module documentation for the semantics every backend keeps.
#[async_trait]
pub trait MessageQueues: Send + Sync + 'static {
    /// Create a queue; `Ok(false)` when it exists with the same settings,
    /// [`MqError::QueueNameExists`] when it exists with different ones.
    async fn create_queue(&self, name: &str, settings: &QueueSettings) -> Result<bool, MqError>;
    /// Create the queue or replace its settings (a deploy of `[queues.NAME]`); messages stay.
    async fn ensure_queue(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError>;
    /// Replace the settings of an existing queue (`SetQueueAttributes`).
    async fn set_settings(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError>;
    /// Delete a queue and its messages; `Ok(false)` when it did not exist.
    async fn delete_queue(&self, name: &str) -> Result<bool, MqError>;
    async fn queue(&self, name: &str) -> Result<Option<QueueInfo>, MqError>;
    /// Queues whose names start with `prefix`, by name.
    async fn list_queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, MqError>;
    async fn stats(&self, name: &str) -> Result<QueueStats, MqError>;
    /// Send messages (one to ten from the protocols; more from inside nimbus), all committed
    /// together. The outer error is for the queue (missing, store failure); the inner ones are
    /// per message (too long, missing group id).
    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<BatchResults<Sent>, MqError>;
    /// Receive up to `req.max` messages, long-polling as `req.wait` says.
    async fn receive(&self, queue: &str, req: &ReceiveRequest) -> Result<Vec<Received>, MqError>;
    /// Delete received messages by receipt handle.
    async fn delete(&self, queue: &str, receipt_handles: &[String]) -> Result<BatchResults<()>, MqError>;
    /// Set how long from now each received message stays hidden (0 makes it visible at once).
    async fn change_visibility(&self, queue: &str, changes: &[(String, Duration)])
        -> Result<BatchResults<()>, MqError>;
    /// Delete every message; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64, MqError>;
    /// Up to `limit` messages, oldest first, without receiving them.
    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, MqError>;
    /// Move the messages of dead-letter queue `dlq` back to the queues they came from (or all
    /// to `to`), visible at once with their receive counts reset; returns how many moved.
    async fn redrive(&self, dlq: &str, to: Option<&str>) -> Result<u64, MqError>;
}
