//! A queue's settings as `messages.db` stores them (JSON in `queues.settings`, every duration
//! in milliseconds). The checks a queue name, its settings, a message and a receive must pass
//! are `nimbus_core::messages_rules`, shared with the cluster store.

use std::time::Duration;

use nimbus_core::event_sources::Redrive;
use nimbus_core::messages::{QueueSettings, QueueSpec};
pub(crate) use nimbus_core::messages_rules::{check_message, check_receive, check_settings, ms, MAX_VISIBILITY};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub(crate) struct Stored {
    visibility_timeout_ms: u64,
    retention_ms: u64,
    delay_ms: u64,
    fifo: bool,
    #[serde(default)]
    dead_letter_queue: Option<String>,
    #[serde(default)]
    max_receive_count: u32,
    receive_wait_ms: u64,
    max_message_bytes: u32,
    content_based_dedup: bool,
}

pub(crate) fn encode(s: &QueueSettings) -> String {
    let stored = Stored {
        visibility_timeout_ms: ms(s.spec.visibility_timeout),
        retention_ms: ms(s.spec.retention),
        delay_ms: ms(s.spec.delay),
        fifo: s.spec.fifo,
        dead_letter_queue: s.spec.redrive.as_ref().map(|r| r.dead_letter_queue.clone()),
        max_receive_count: s.spec.redrive.as_ref().map_or(0, |r| r.max_receive_count),
        receive_wait_ms: ms(s.receive_wait),
        max_message_bytes: s.max_message_bytes,
        content_based_dedup: s.content_based_dedup,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

pub(crate) fn decode(json: &str) -> Result<QueueSettings, serde_json::Error> {
    let s: Stored = serde_json::from_str(json)?;
    Ok(QueueSettings {
        spec: QueueSpec {
            visibility_timeout: Duration::from_millis(s.visibility_timeout_ms),
            retention: Duration::from_millis(s.retention_ms),
            delay: Duration::from_millis(s.delay_ms),
            fifo: s.fifo,
            redrive: s
                .dead_letter_queue
                .map(|dead_letter_queue| Redrive { dead_letter_queue, max_receive_count: s.max_receive_count }),
        },
        receive_wait: Duration::from_millis(s.receive_wait_ms),
        max_message_bytes: s.max_message_bytes,
        content_based_dedup: s.content_based_dedup,
    })
}
