//! Queues and triggers as an app declares them (`[queues.NAME]`, `[[triggers]]` in
//! docs/manifest.md), validated by nimbus-manifest and shared by the control plane and the queue
//! engine. No behaviour lives here: these are the settings the engine delivers by.

use std::time::Duration;

/// A validated `[queues.NAME]` (the name is the key it is stored under). Ranges are SQS's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueSpec {
    /// How long a received message stays hidden before it can be received again (0 s–12 h).
    pub visibility_timeout: Duration,
    /// How long an unreceived message is kept (60 s–14 d).
    pub retention: Duration,
    /// How long a sent message waits before it can be received (0–15 min).
    pub delay: Duration,
    /// Per-group order and deduplication; the queue's name ends in `.fifo`.
    pub fifo: bool,
    /// Where a message goes after `max_receive_count` receives without a delete.
    pub redrive: Option<Redrive>,
}

/// Defaults of the keys a `[queues.NAME]` table leaves out (SQS's defaults).
pub mod queue_defaults {
    use std::time::Duration;

    pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);
    pub const DELAY: Duration = Duration::ZERO;
}

impl Default for QueueSpec {
    fn default() -> Self {
        QueueSpec {
            visibility_timeout: queue_defaults::VISIBILITY_TIMEOUT,
            retention: queue_defaults::RETENTION,
            delay: queue_defaults::DELAY,
            fifo: false,
            redrive: None,
        }
    }
}

/// SQS's redrive policy: after `max_receive_count` receives, a message moves to the queue
/// named `dead_letter_queue`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Redrive {
    pub dead_letter_queue: String,
    /// 1–1000.
    pub max_receive_count: u32,
}

/// What a grant on a queue allows (the manifest's `"send"`, `"receive"`, `"send-receive"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueAccess {
    Send,
    Receive,
    SendReceive,
}

/// The two classes of queue operation a grant distinguishes: sending (SendMessage, its batch)
/// and receiving (ReceiveMessage, DeleteMessage, ChangeMessageVisibility and their batches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueOp {
    Send,
    Receive,
}

impl QueueAccess {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueAccess::Send => "send",
            QueueAccess::Receive => "receive",
            QueueAccess::SendReceive => "send-receive",
        }
    }

    /// Read the manifest's spelling.
    pub fn parse(s: &str) -> Option<QueueAccess> {
        match s {
            "send" => Some(QueueAccess::Send),
            "receive" => Some(QueueAccess::Receive),
            "send-receive" => Some(QueueAccess::SendReceive),
            _ => None,
        }
    }

    /// Whether this access allows `op`.
    pub fn allows(self, op: QueueOp) -> bool {
        matches!(
            (self, op),
            (QueueAccess::SendReceive, _)
                | (QueueAccess::Send, QueueOp::Send)
                | (QueueAccess::Receive, QueueOp::Receive)
        )
    }

    /// This access together with `other` (a trigger's implied receive added to a written send).
    pub fn union(self, other: QueueAccess) -> QueueAccess {
        if self == other {
            self
        } else {
            QueueAccess::SendReceive
        }
    }
}

/// The S3 event names a bucket trigger may subscribe to (S3 event notifications' spelling).
pub const S3_EVENTS: &[&str] = &[
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
];

/// A validated `[[triggers]]` entry: which function runs on what.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TriggerSpec {
    pub function: String,
    pub source: TriggerSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TriggerSource {
    Bucket(BucketTrigger),
    Queue(QueueTrigger),
}

/// Objects written to or removed from a bucket (an S3 event notification).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketTrigger {
    pub bucket: String,
    /// Names from [`S3_EVENTS`], each once, as written.
    pub events: Vec<String>,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only keys ending with this.
    pub suffix: Option<String>,
}

/// Messages received from a queue in batches (a Lambda SQS event source mapping).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueTrigger {
    pub queue: String,
    /// Most messages in one invocation: 1–10,000 (1–10 for a FIFO queue).
    pub batch_size: u32,
    /// How long to gather a batch before invoking: 0 s–5 min (0 for a FIFO queue).
    pub batch_window: Duration,
    /// Most concurrent invocations from this trigger (2–1000); `None`: up to the function's
    /// `max_instances`.
    pub max_concurrency: Option<u32>,
    /// The function answers `{"batchItemFailures": [...]}` to return only those messages.
    pub report_batch_item_failures: bool,
}

/// Defaults of the keys a queue trigger leaves out (Lambda's).
pub mod trigger_defaults {
    use std::time::Duration;

    pub const BATCH_SIZE: u32 = 10;
    pub const BATCH_WINDOW: Duration = Duration::ZERO;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name a trigger may subscribe to selects at least one event nimbus sends, so the
    /// manifest never accepts a subscription that can never fire.
    #[test]
    fn every_accepted_s3_event_name_selects_an_event() {
        for name in S3_EVENTS {
            let fires = crate::events::S3EventName::ALL.iter().any(|e| e.matches(name));
            assert!(fires, "{name} selects no event");
        }
    }

    #[test]
    fn queue_accesses_allow_what_they_name() {
        for a in [QueueAccess::Send, QueueAccess::Receive, QueueAccess::SendReceive] {
            assert_eq!(QueueAccess::parse(a.as_str()), Some(a));
        }
        assert_eq!(QueueAccess::parse("read"), None);
        assert!(QueueAccess::Send.allows(QueueOp::Send) && !QueueAccess::Send.allows(QueueOp::Receive));
        assert!(QueueAccess::Receive.allows(QueueOp::Receive) && !QueueAccess::Receive.allows(QueueOp::Send));
        assert!(QueueAccess::SendReceive.allows(QueueOp::Send) && QueueAccess::SendReceive.allows(QueueOp::Receive));
        assert_eq!(QueueAccess::Send.union(QueueAccess::Receive), QueueAccess::SendReceive);
        assert_eq!(QueueAccess::Receive.union(QueueAccess::Receive), QueueAccess::Receive);
    }
}
