//! `/v1/queues`: the message queues as operators see them (`nimbus queues ls|peek|purge|redrive`
//! and the dashboard): settings and counts, messages read without receiving them, purge, and
//! dead-letter redrive. Answers are the store's own errors: `mgmt.rs` turns them into API
//! errors and audits [`purge`] and [`redrive`].

use nimbus_api as api;
use nimbus_core::events::sqs_queue_arn;
use nimbus_core::ids::now_ms;
use nimbus_core::messages::{MqError, Peeked, QueueInfo, QueueStats};

use crate::context::Gateway;

/// Most messages one peek shows.
pub(crate) const MAX_PEEK: usize = 1000;

/// The API's view of a queue and its counts, `now` deciding the oldest message's age.
pub(crate) fn queue_info(q: &QueueInfo, s: &QueueStats, now: u64) -> api::MessageQueueInfo {
    let spec = &q.settings.spec;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    api::MessageQueueInfo {
        name: q.name.clone(),
        arn: sqs_queue_arn(&q.name),
        fifo: spec.fifo,
        visibility_timeout_ms: ms(spec.visibility_timeout),
        retention_ms: ms(spec.retention),
        delay_ms: ms(spec.delay),
        dead_letter_queue: spec.redrive.as_ref().map(|r| r.dead_letter_queue.clone()),
        max_receive_count: spec.redrive.as_ref().map(|r| r.max_receive_count),
        visible: s.visible,
        in_flight: s.in_flight,
        delayed: s.delayed,
        oldest_age_ms: s.oldest_sent_ms.map(|t| now.saturating_sub(t)),
        sent: s.sent_total,
        received: s.received_total,
        deleted: s.deleted_total,
        dead_lettered: s.dead_lettered_total,
        created_ms: q.created_ms,
    }
}

/// Every queue with its counts, by name.
pub(crate) async fn list(gw: &Gateway) -> Result<Vec<api::MessageQueueInfo>, MqError> {
    let queues = gw.messages.list_queues("").await?;
    let now = now_ms();
    let mut out = Vec::with_capacity(queues.len());
    for q in queues {
        // A queue deleted between the list and its stats is left out.
        match gw.messages.stats(&q.name).await {
            Ok(s) => out.push(queue_info(&q, &s, now)),
            Err(MqError::NoSuchQueue(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One queue with its counts.
pub(crate) async fn one(gw: &Gateway, name: &str) -> Result<api::MessageQueueInfo, MqError> {
    let q = gw.messages.queue(name).await?.ok_or_else(|| MqError::NoSuchQueue(name.into()))?;
    let s = gw.messages.stats(name).await?;
    Ok(queue_info(&q, &s, now_ms()))
}

fn queued_message(p: Peeked) -> api::QueuedMessage {
    api::QueuedMessage {
        message_id: p.message_id,
        body: p.body,
        sent_ms: p.sent_ms,
        receive_count: p.receive_count,
        in_flight: p.in_flight,
        group_id: p.group_id,
        source_queue: p.source_queue,
    }
}

/// Up to `limit` messages, oldest first, without receiving them.
pub(crate) async fn peek(gw: &Gateway, name: &str, limit: usize) -> Result<Vec<api::QueuedMessage>, MqError> {
    let list = gw.messages.peek(name, limit.clamp(1, MAX_PEEK)).await?;
    Ok(list.into_iter().map(queued_message).collect())
}

/// Delete every message of a queue.
pub(crate) async fn purge(gw: &Gateway, name: &str) -> Result<api::QueuePurged, MqError> {
    let purged = gw.messages.purge(name).await?;
    Ok(api::QueuePurged { queue: name.to_owned(), purged })
}

/// Move a dead-letter queue's messages back to where they came from (or to `to`).
pub(crate) async fn redrive(gw: &Gateway, name: &str, to: Option<&str>) -> Result<api::QueueRedriven, MqError> {
    if let Some(to) = to {
        if gw.messages.queue(to).await?.is_none() {
            return Err(MqError::NoSuchQueue(to.to_owned()));
        }
    }
    let moved = gw.messages.redrive(name, to).await?;
    Ok(api::QueueRedriven { queue: name.to_owned(), moved })
}
