//! `/v1/queues`: the message queues as operators see them (`nimbus queues ls|peek|purge|redrive`
//! and the dashboard): settings and counts, messages read without receiving them, purge, and
//! dead-letter redrive. Purge and redrive are audited (`mgmt.rs` calls [`purge`] and
//! [`redrive`] with the caller).

use http::StatusCode;
use nimbus_api as api;
use nimbus_core::events::sqs_queue_arn;
use nimbus_core::ids::now_ms;
use nimbus_core::messages::{MqError, Peeked, QueueInfo, QueueStats};

use crate::context::Gateway;
use crate::mgmt::ApiError;

/// Most messages one peek shows.
pub(crate) const MAX_PEEK: usize = 1000;

fn api_error(e: MqError) -> ApiError {
    match e {
        MqError::NoSuchQueue(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "there is no queue {name}; `nimbus queues ls` lists them, `[queues.{name}]` in nimbus.toml declares it"
            ),
        ),
        e if e.is_caller_fault() => ApiError::bad_request(e.to_string()),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

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
pub(crate) async fn list(gw: &Gateway) -> Result<Vec<api::MessageQueueInfo>, ApiError> {
    let queues = gw.messages.list_queues("").await.map_err(api_error)?;
    let now = now_ms();
    let mut out = Vec::with_capacity(queues.len());
    for q in queues {
        // A queue deleted between the list and its stats is left out.
        match gw.messages.stats(&q.name).await {
            Ok(s) => out.push(queue_info(&q, &s, now)),
            Err(MqError::NoSuchQueue(_)) => {}
            Err(e) => return Err(api_error(e)),
        }
    }
    Ok(out)
}

/// One queue with its counts.
pub(crate) async fn one(gw: &Gateway, name: &str) -> Result<api::MessageQueueInfo, ApiError> {
    let q = gw
        .messages
        .queue(name)
        .await
        .map_err(api_error)?
        .ok_or_else(|| api_error(MqError::NoSuchQueue(name.into())))?;
    let s = gw.messages.stats(name).await.map_err(api_error)?;
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
pub(crate) async fn peek(gw: &Gateway, name: &str, limit: usize) -> Result<Vec<api::QueuedMessage>, ApiError> {
    let list = gw.messages.peek(name, limit.clamp(1, MAX_PEEK)).await.map_err(api_error)?;
    Ok(list.into_iter().map(queued_message).collect())
}

/// Delete every message of a queue.
pub(crate) async fn purge(gw: &Gateway, name: &str) -> Result<api::QueuePurged, ApiError> {
    let purged = gw.messages.purge(name).await.map_err(api_error)?;
    Ok(api::QueuePurged { queue: name.to_owned(), purged })
}

/// Move a dead-letter queue's messages back to where they came from (or to `to`).
pub(crate) async fn redrive(gw: &Gateway, name: &str, to: Option<&str>) -> Result<api::QueueRedriven, ApiError> {
    if let Some(to) = to {
        if gw.messages.queue(to).await.map_err(api_error)?.is_none() {
            return Err(api_error(MqError::NoSuchQueue(to.to_owned())));
        }
    }
    let moved = gw.messages.redrive(name, to).await.map_err(api_error)?;
    Ok(api::QueueRedriven { queue: name.to_owned(), moved })
}
