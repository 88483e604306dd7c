//! The SQS operations, over [`MessageQueues`]. Input and output are in the JSON protocol's
//! shape (the service model's member names); the query protocol converts to and from it.
//! Queue URLs are `http://HOST/000000000000/NAME` with the request's Host; a `QueueUrl` of any
//! host is accepted and its last path segment is the queue's name.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use nimbus_core::messages::{
    MessageAttribute, MessageQueues, MqError, NewMessage, QueueSettings, ReceiveRequest, Received, Sent,
};
use serde_json::{json, Map, Value};

use super::{attrs, Caller, SqsError};
use crate::keys::Principal;

/// Most entries in one batch request (SQS's).
pub const MAX_BATCH: usize = 10;
/// Most queue URLs one ListQueues answers.
pub const MAX_LIST: usize = 1000;

/// A string member.
pub fn str_field<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input.get(name).and_then(Value::as_str)
}

fn required<'a>(input: &'a Value, name: &str) -> Result<&'a str, SqsError> {
    str_field(input, name).ok_or_else(|| SqsError::missing(name))
}

/// The queue a request's `QueueUrl` names: its last path segment.
pub fn queue_name(input: &Value) -> Option<String> {
    let url = str_field(input, "QueueUrl")?;
    let name = url.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && !name.contains(':')).then(|| name.to_owned())
}

fn queue_of(input: &Value) -> Result<String, SqsError> {
    let url = required(input, "QueueUrl")?;
    queue_name(input).ok_or_else(|| {
        SqsError::new(
            "InvalidAddress",
            "InvalidAddress",
            format!("The address {url} is not valid: a queue URL is http://HOST/000000000000/NAME"),
        )
    })
}

/// An integer member in `min..=max` (a JSON number, or a string in the query protocol).
fn int_field(input: &Value, name: &str, min: i64, max: i64) -> Result<Option<i64>, SqsError> {
    let Some(v) = input.get(name).filter(|v| !v.is_null()) else { return Ok(None) };
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(SqsError::invalid(format!(
            "Value {v} for parameter {name} is invalid. Reason: must be between {min} and {max}."
        ))),
    }
}

fn secs_field(input: &Value, name: &str, max: i64) -> Result<Option<Duration>, SqsError> {
    Ok(int_field(input, name, 0, max)?.map(|n| Duration::from_secs(n.unsigned_abs())))
}

fn strings(input: &Value, name: &str) -> Vec<String> {
    input.get(name).and_then(Value::as_array).into_iter().flatten().filter_map(attrs::text).collect()
}

fn queue_url(caller: &Caller, name: &str) -> String {
    format!("{}/{}/{name}", caller.base_url, nimbus_core::ACCOUNT_ID)
}

/// Run `action`.
pub async fn run(q: &dyn MessageQueues, caller: &Caller, action: &str, input: &Value) -> Result<Value, SqsError> {
    match action {
        "CreateQueue" => create_queue(q, caller, input).await,
        "GetQueueUrl" => {
            let name = required(input, "QueueName")?;
            q.queue(name).await?.ok_or_else(|| SqsError::no_queue(name))?;
            Ok(json!({"QueueUrl": queue_url(caller, name)}))
        }
        "ListQueues" => list_queues(q, caller, input).await,
        "DeleteQueue" => {
            let name = queue_of(input)?;
            if !q.delete_queue(&name).await? {
                return Err(SqsError::no_queue(&name));
            }
            Ok(json!({}))
        }
        "GetQueueAttributes" => get_attributes(q, input).await,
        "SetQueueAttributes" => set_attributes(q, input).await,
        "SendMessage" => send_message(q, caller, input).await,
        "SendMessageBatch" => send_batch(q, caller, input).await,
        "ReceiveMessage" => receive(q, input).await,
        "DeleteMessage" => {
            let (name, handle) = (queue_of(input)?, required(input, "ReceiptHandle")?);
            first(q.delete(&name, &[handle.to_owned()]).await?)?;
            Ok(json!({}))
        }
        "DeleteMessageBatch" => delete_batch(q, input).await,
        "ChangeMessageVisibility" => {
            let (name, handle) = (queue_of(input)?, required(input, "ReceiptHandle")?);
            let timeout = secs_field(input, "VisibilityTimeout", 43_200)?
                .ok_or_else(|| SqsError::missing("VisibilityTimeout"))?;
            first(q.change_visibility(&name, &[(handle.to_owned(), timeout)]).await?)?;
            Ok(json!({}))
        }
        "ChangeMessageVisibilityBatch" => change_visibility_batch(q, input).await,
        "PurgeQueue" => {
            q.purge(&queue_of(input)?).await?;
            Ok(json!({}))
        }
        "ListQueueTags" => {
            let name = queue_of(input)?;
            q.queue(&name).await?.ok_or_else(|| SqsError::no_queue(&name))?;
            Ok(json!({}))
        }
        other => Err(super::unsupported(other)),
    }
}

fn first<T>(results: Vec<Result<T, MqError>>) -> Result<T, SqsError> {
    results
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(MqError::Backend("the store answered no result".into())))
        .map_err(SqsError::from)
}

/// A queue name SQS accepts: 1–80 of `A-Za-z0-9-_`, a FIFO queue's ending in `.fifo`.
fn check_name(name: &str) -> Result<(), SqsError> {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let ok = !stem.is_empty()
        && name.len() <= 80
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        return Ok(());
    }
    Err(SqsError::invalid(format!(
        "Value {name:?} for parameter QueueName is invalid. Reason: Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length (a FIFO queue's name ends in .fifo)."
    )))
}

/// The dead-letter queue a redrive names must exist, and be FIFO exactly when the queue is.
async fn check_redrive(q: &dyn MessageQueues, s: &QueueSettings) -> Result<(), SqsError> {
    let Some(r) = &s.spec.redrive else { return Ok(()) };
    let dlq = q.queue(&r.dead_letter_queue).await?;
    match dlq {
        None => Err(SqsError::invalid(format!(
            "Value for parameter RedrivePolicy is invalid. Reason: Dead letter target {} does not exist; create it first.",
            r.dead_letter_queue
        ))),
        Some(d) if d.settings.spec.fifo != s.spec.fifo => Err(SqsError::invalid(
            "Value for parameter RedrivePolicy is invalid. Reason: the dead-letter queue of a FIFO queue must be FIFO, and of a standard queue standard.",
        )),
        Some(_) => Ok(()),
    }
}

async fn create_queue(q: &dyn MessageQueues, caller: &Caller, input: &Value) -> Result<Value, SqsError> {
    let name = required(input, "QueueName")?;
    check_name(name)?;
    let empty = Map::new();
    let given = input.get("Attributes").and_then(Value::as_object).unwrap_or(&empty);
    if let Some(existing) = q.queue(name).await? {
        // The same name with no attribute that differs is the same queue (CreateQueue is
        // idempotent); an attribute that differs is QueueAlreadyExists.
        let mut wanted = existing.settings.clone();
        attrs::apply(&mut wanted, given, false)?;
        if wanted != existing.settings {
            return Err(MqError::QueueNameExists(name.to_owned()).into());
        }
        return Ok(json!({"QueueUrl": queue_url(caller, name)}));
    }
    let mut settings = QueueSettings::default();
    attrs::apply(&mut settings, given, true)?;
    if settings.spec.fifo != name.ends_with(".fifo") {
        return Err(SqsError::invalid(format!(
            "The name of a FIFO queue ends in .fifo and a FIFO queue is created with the attribute FifoQueue=true: {name:?} has one without the other."
        )));
    }
    check_redrive(q, &settings).await?;
    q.create_queue(name, &settings).await?;
    Ok(json!({"QueueUrl": queue_url(caller, name)}))
}

async fn list_queues(q: &dyn MessageQueues, caller: &Caller, input: &Value) -> Result<Value, SqsError> {
    let prefix = str_field(input, "QueueNamePrefix").unwrap_or("");
    let max = int_field(input, "MaxResults", 1, 1000)?;
    let after = match str_field(input, "NextToken") {
        Some(t) => Some(hex::decode(t).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
            SqsError::invalid("Value for parameter NextToken is invalid: pass the NextToken of the previous ListQueues")
        })?),
        None => None,
    };
    let visible = |name: &str| match &caller.principal {
        Principal::Admin => true,
        Principal::Grants(g) => g.queues.contains_key(name),
    };
    let names: Vec<String> = q
        .list_queues(prefix)
        .await?
        .into_iter()
        .map(|i| i.name)
        .filter(|n| visible(n) && after.as_ref().is_none_or(|a| n > a))
        .collect();
    let limit = max.map_or(MAX_LIST, |m| usize::try_from(m).unwrap_or(MAX_LIST));
    let page: Vec<&String> = names.iter().take(limit).collect();
    let mut out = Map::new();
    if !page.is_empty() {
        out.insert("QueueUrls".into(), page.iter().map(|n| Value::String(queue_url(caller, n))).collect());
    }
    if max.is_some() && names.len() > limit {
        if let Some(last) = page.last() {
            out.insert("NextToken".into(), Value::String(hex::encode(last.as_bytes())));
        }
    }
    Ok(Value::Object(out))
}

async fn get_attributes(q: &dyn MessageQueues, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let info = q.queue(&name).await?.ok_or_else(|| SqsError::no_queue(&name))?;
    let stats = q.stats(&name).await?;
    let values = attrs::get(&info, &stats, &strings(input, "AttributeNames"))?;
    if values.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({"Attributes": values}))
}

async fn set_attributes(q: &dyn MessageQueues, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let given = input.get("Attributes").and_then(Value::as_object).ok_or_else(|| SqsError::missing("Attributes"))?;
    let info = q.queue(&name).await?.ok_or_else(|| SqsError::no_queue(&name))?;
    let mut settings = info.settings.clone();
    attrs::apply(&mut settings, given, false)?;
    check_redrive(q, &settings).await?;
    q.set_settings(&name, &settings).await?;
    Ok(json!({}))
}

/// Characters SQS allows in a body: #x9, #xA, #xD, #x20–#xD7FF, #xE000–#xFFFD, #x10000+.
fn check_body(body: &str) -> Result<(), SqsError> {
    let bad = body.chars().find(|c| {
        let c = u32::from(*c);
        !(matches!(c, 0x9 | 0xA | 0xD)
            || (0x20..=0xD7FF).contains(&c)
            || (0xE000..=0xFFFD).contains(&c)
            || c >= 0x10000)
    });
    match bad {
        None if !body.is_empty() => Ok(()),
        None => Err(SqsError::invalid("The message body must not be empty.")),
        Some(c) => Err(SqsError::new(
            "InvalidMessageContents",
            "InvalidMessageContents",
            format!("Invalid characters found: the message body has U+{:04X}, which SQS does not allow.", u32::from(c)),
        )),
    }
}

/// `MessageAttributes` of a send: at most ten, each with a known data type and its value.
fn message_attributes(input: &Value) -> Result<BTreeMap<String, MessageAttribute>, SqsError> {
    let Some(given) = input.get("MessageAttributes").and_then(Value::as_object) else {
        return Ok(BTreeMap::new());
    };
    if given.len() > 10 {
        return Err(SqsError::invalid(format!(
            "A message has at most 10 message attributes; this one has {}.",
            given.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (name, v) in given {
        let bad = |why: &str| SqsError::invalid(format!("The message attribute {name:?} {why}."));
        let valid_name = !name.is_empty()
            && name.len() <= 256
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !name.starts_with('.')
            && !name.to_ascii_lowercase().starts_with("aws.")
            && !name.to_ascii_lowercase().starts_with("amazon.");
        if !valid_name {
            return Err(bad("has an invalid name: use up to 256 of A-Za-z0-9_-. not starting with AWS. or Amazon."));
        }
        let data_type = str_field(v, "DataType").ok_or_else(|| bad("must have a DataType"))?;
        let string_value = str_field(v, "StringValue").map(str::to_owned);
        let binary_value = str_field(v, "BinaryValue").map(str::to_owned);
        if data_type.starts_with("Binary") {
            let b = binary_value.as_deref().ok_or_else(|| bad("is Binary and must have a BinaryValue"))?;
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| bad("has a BinaryValue that is not base64"))?;
        } else if data_type.starts_with("String") || data_type.starts_with("Number") {
            string_value.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| bad("must have a StringValue"))?;
        } else {
            return Err(bad("has a DataType that is not String, Number or Binary (optionally with .label)"));
        }
        let attr =
            MessageAttribute { string_value, binary_value, data_type: data_type.to_owned(), ..Default::default() };
        out.insert(name.clone(), attr);
    }
    Ok(out)
}

/// A message to send from a SendMessage input or a batch entry.
fn new_message(input: &Value, caller: &Caller) -> Result<NewMessage, SqsError> {
    let body = required(input, "MessageBody")?;
    check_body(body)?;
    Ok(NewMessage {
        body: body.to_owned(),
        attributes: message_attributes(input)?,
        delay: secs_field(input, "DelaySeconds", 900)?,
        group_id: str_field(input, "MessageGroupId").map(str::to_owned),
        dedup_id: str_field(input, "MessageDeduplicationId").map(str::to_owned),
        sender_id: caller.key_id.clone(),
    })
}

fn sent_json(s: Sent) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("MessageId".into(), Value::String(s.message_id));
    out.insert("MD5OfMessageBody".into(), Value::String(s.md5_of_body));
    if let Some(m) = s.md5_of_attributes {
        out.insert("MD5OfMessageAttributes".into(), Value::String(m));
    }
    if let Some(n) = s.sequence_number {
        out.insert("SequenceNumber".into(), Value::String(n));
    }
    out
}

async fn send_message(q: &dyn MessageQueues, caller: &Caller, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let message = new_message(input, caller)?;
    let sent = first(q.send(&name, vec![message]).await?)?;
    Ok(Value::Object(sent_json(sent)))
}

/// A batch's entries: 1–10, with distinct ids of up to 80 of `A-Za-z0-9-_`.
fn batch_entries(input: &Value) -> Result<(&Vec<Value>, Vec<String>), SqsError> {
    let entries = input.get("Entries").and_then(Value::as_array).ok_or_else(|| SqsError::missing("Entries"))?;
    if entries.is_empty() {
        return Err(SqsError::new(
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one entry in the request.",
        ));
    }
    if entries.len() > MAX_BATCH {
        return Err(SqsError::new(
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!("Maximum number of entries per request are {MAX_BATCH}. You have sent {}.", entries.len()),
        ));
    }
    let mut ids = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    for e in entries {
        let id = str_field(e, "Id").unwrap_or("");
        if id.is_empty() || id.len() > 80 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(SqsError::new(
                "InvalidBatchEntryId",
                "AWS.SimpleQueueService.InvalidBatchEntryId",
                format!("A batch entry id can only contain alphanumeric characters, hyphens and underscores, 1 to 80 of them: {id:?} is not one."),
            ));
        }
        if !seen.insert(id) {
            return Err(SqsError::new(
                "BatchEntryIdsNotDistinct",
                "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
                format!("Id {id} repeated: the ids of a batch's entries must be distinct."),
            ));
        }
        ids.push(id.to_owned());
    }
    Ok((entries, ids))
}

fn failed(id: &str, e: &SqsError) -> Value {
    json!({"Id": id, "SenderFault": e.sender, "Code": e.code, "Message": e.message})
}

/// The batch answer from per-entry outcomes, in entry order.
fn batch_answer(ids: &[String], outcomes: Vec<Result<Map<String, Value>, SqsError>>) -> Value {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (id, outcome) in ids.iter().zip(outcomes) {
        match outcome {
            Ok(mut fields) => {
                fields.insert("Id".into(), Value::String(id.clone()));
                ok.push(Value::Object(fields));
            }
            Err(e) => bad.push(failed(id, &e)),
        }
    }
    json!({"Successful": ok, "Failed": bad})
}

async fn send_batch(q: &dyn MessageQueues, caller: &Caller, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let (entries, ids) = batch_entries(input)?;
    let parsed: Vec<Result<NewMessage, SqsError>> = entries.iter().map(|e| new_message(e, caller)).collect();
    let size: usize = parsed.iter().flatten().map(|m| m.body.len()).sum();
    let limit = usize::try_from(nimbus_core::messages::MAX_MESSAGE_BYTES).unwrap_or(usize::MAX);
    if size > limit {
        return Err(SqsError::new(
            "BatchRequestTooLong",
            "AWS.SimpleQueueService.BatchRequestTooLong",
            format!("Batch requests cannot be longer than {limit} bytes. You have sent {size} bytes."),
        ));
    }
    let messages: Vec<NewMessage> = parsed.iter().filter_map(|m| m.as_ref().ok().cloned()).collect();
    let mut results = if messages.is_empty() { Vec::new() } else { q.send(&name, messages).await? }.into_iter();
    let outcomes = parsed
        .into_iter()
        .map(|p| match p {
            Err(e) => Err(e),
            Ok(_) => match results.next() {
                Some(r) => r.map(sent_json).map_err(SqsError::from),
                None => Err(MqError::Backend("the store answered fewer results than messages".into()).into()),
            },
        })
        .collect();
    Ok(batch_answer(&ids, outcomes))
}

/// Which message attributes a receive returns: `All` or `.*`, names, and prefixes `foo.*`.
fn wanted(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.as_str() {
        "All" | ".*" => true,
        p => p.strip_suffix(".*").map_or(p == name, |prefix| name.starts_with(&format!("{prefix}."))),
    })
}

fn received_json(m: Received, system: &[String], patterns: &[String]) -> Value {
    let all = system.iter().any(|n| n == "All");
    let mut attributes = Map::new();
    let mut put = |n: &str, v: Option<String>| {
        if let Some(v) = v.filter(|_| all || system.iter().any(|s| s == n)) {
            attributes.insert(n.to_owned(), Value::String(v));
        }
    };
    put("SenderId", Some(m.sender_id));
    put("SentTimestamp", Some(m.sent_ms.to_string()));
    put("ApproximateReceiveCount", Some(m.receive_count.to_string()));
    put("ApproximateFirstReceiveTimestamp", Some(m.first_receive_ms.to_string()));
    put("MessageGroupId", m.group_id);
    put("MessageDeduplicationId", m.dedup_id);
    put("SequenceNumber", m.sequence_number);
    let chosen: BTreeMap<String, MessageAttribute> =
        m.attributes.into_iter().filter(|(n, _)| wanted(patterns, n)).collect();
    let mut out = Map::new();
    out.insert("MessageId".into(), Value::String(m.message_id));
    out.insert("ReceiptHandle".into(), Value::String(m.receipt_handle));
    out.insert("MD5OfBody".into(), Value::String(m.md5_of_body));
    out.insert("Body".into(), Value::String(m.body));
    if !attributes.is_empty() {
        out.insert("Attributes".into(), Value::Object(attributes));
    }
    if let Some(md5) = nimbus_core::events::md5_of_message_attributes(&chosen) {
        out.insert("MD5OfMessageAttributes".into(), Value::String(md5));
        let values: Map<String, Value> = chosen.into_iter().map(|(n, a)| (n, attribute_json(a))).collect();
        out.insert("MessageAttributes".into(), Value::Object(values));
    }
    Value::Object(out)
}

fn attribute_json(a: MessageAttribute) -> Value {
    let mut v = Map::new();
    v.insert("DataType".into(), Value::String(a.data_type));
    if let Some(s) = a.string_value {
        v.insert("StringValue".into(), Value::String(s));
    }
    if let Some(b) = a.binary_value {
        v.insert("BinaryValue".into(), Value::String(b));
    }
    Value::Object(v)
}

async fn receive(q: &dyn MessageQueues, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let max = int_field(input, "MaxNumberOfMessages", 1, 10)?.unwrap_or(1);
    let req = ReceiveRequest {
        max: u32::try_from(max).unwrap_or(1),
        visibility: secs_field(input, "VisibilityTimeout", 43_200)?,
        wait: secs_field(input, "WaitTimeSeconds", 20)?,
    };
    let mut system = strings(input, "AttributeNames");
    system.extend(strings(input, "MessageSystemAttributeNames"));
    let patterns = strings(input, "MessageAttributeNames");
    let messages: Vec<Value> =
        q.receive(&name, &req).await?.into_iter().map(|m| received_json(m, &system, &patterns)).collect();
    if messages.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({"Messages": messages}))
}

async fn delete_batch(q: &dyn MessageQueues, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let (entries, ids) = batch_entries(input)?;
    let handles: Vec<Result<String, SqsError>> =
        entries.iter().map(|e| required(e, "ReceiptHandle").map(str::to_owned)).collect();
    let valid: Vec<String> = handles.iter().filter_map(|h| h.as_ref().ok().cloned()).collect();
    let results = if valid.is_empty() { Vec::new() } else { q.delete(&name, &valid).await? };
    Ok(batch_answer(&ids, merge(handles, results)))
}

async fn change_visibility_batch(q: &dyn MessageQueues, input: &Value) -> Result<Value, SqsError> {
    let name = queue_of(input)?;
    let (entries, ids) = batch_entries(input)?;
    let changes: Vec<Result<(String, Duration), SqsError>> = entries
        .iter()
        .map(|e| {
            let handle = required(e, "ReceiptHandle")?.to_owned();
            let timeout =
                secs_field(e, "VisibilityTimeout", 43_200)?.ok_or_else(|| SqsError::missing("VisibilityTimeout"))?;
            Ok((handle, timeout))
        })
        .collect();
    let valid: Vec<(String, Duration)> = changes.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
    let results = if valid.is_empty() { Vec::new() } else { q.change_visibility(&name, &valid).await? };
    Ok(batch_answer(&ids, merge(changes, results)))
}

/// Per-entry outcomes: an entry's own error, or the store's result for it (in order).
fn merge<T>(
    parsed: Vec<Result<T, SqsError>>,
    results: Vec<Result<(), MqError>>,
) -> Vec<Result<Map<String, Value>, SqsError>> {
    let mut results = results.into_iter();
    parsed
        .into_iter()
        .map(|p| match p {
            Err(e) => Err(e),
            Ok(_) => match results.next() {
                Some(r) => r.map(|()| Map::new()).map_err(SqsError::from),
                None => Err(MqError::Backend("the store answered fewer results than entries".into()).into()),
            },
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller { key_id: "KEY".into(), principal: Principal::Admin, base_url: "http://h:1".into() }
    }

    #[test]
    fn queue_urls_of_any_host_name_the_queue() {
        let name = |u: &str| queue_name(&json!({"QueueUrl": u}));
        assert_eq!(name("http://h:1/000000000000/work").as_deref(), Some("work"));
        assert_eq!(name("https://sqs.us-east-1.amazonaws.com/123/work.fifo/").as_deref(), Some("work.fifo"));
        assert_eq!(name("work").as_deref(), Some("work"));
        assert_eq!(name(""), None);
        assert_eq!(queue_url(&caller(), "q"), "http://h:1/000000000000/q");
    }

    #[test]
    fn names_bodies_and_attributes_are_checked() {
        assert!(check_name("orders-1_x").is_ok() && check_name("a.fifo").is_ok());
        for bad in ["", ".fifo", "a b", "a.b", &"x".repeat(81)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_body("ok\ttab\n").is_ok());
        assert_eq!(check_body("bad\u{1}").unwrap_err().kind, "InvalidMessageContents");
        assert!(check_body("").is_err());
        let m = new_message(
            &json!({"MessageBody": "b", "DelaySeconds": "5", "MessageAttributes": {
                "n": {"DataType": "Number", "StringValue": "1"},
                "bin": {"DataType": "Binary", "BinaryValue": "AAE="}}}),
            &caller(),
        )
        .unwrap();
        assert_eq!(m.delay, Some(Duration::from_secs(5)));
        assert_eq!(m.attributes["bin"].binary_value.as_deref(), Some("AAE="));
        assert_eq!(m.sender_id, "KEY");
        for attrs in [
            json!({"n": {"StringValue": "1"}}),
            json!({"n": {"DataType": "Binary", "BinaryValue": "!!"}}),
            json!({"n": {"DataType": "String"}}),
            json!({"n": {"DataType": "Blob", "StringValue": "x"}}),
            json!({"AWS.x": {"DataType": "String", "StringValue": "x"}}),
        ] {
            assert!(
                new_message(&json!({"MessageBody": "b", "MessageAttributes": attrs}), &caller()).is_err(),
                "{attrs}"
            );
        }
        assert!(new_message(&json!({"MessageBody": "b", "DelaySeconds": 901}), &caller()).is_err());
        assert_eq!(new_message(&json!({}), &caller()).unwrap_err().kind, "MissingParameter");
    }

    #[test]
    fn batches_are_checked_as_sqs_does() {
        let entries = |n: usize| json!({"Entries": (0..n).map(|i| json!({"Id": format!("e{i}")})).collect::<Vec<_>>()});
        assert_eq!(batch_entries(&entries(0)).unwrap_err().kind, "EmptyBatchRequest");
        assert_eq!(batch_entries(&entries(11)).unwrap_err().kind, "TooManyEntriesInBatchRequest");
        assert_eq!(batch_entries(&entries(10)).unwrap().1.len(), 10);
        let dup = json!({"Entries": [{"Id": "a"}, {"Id": "a"}]});
        assert_eq!(batch_entries(&dup).unwrap_err().code, "AWS.SimpleQueueService.BatchEntryIdsNotDistinct");
        let bad = json!({"Entries": [{"Id": "a b"}]});
        assert_eq!(batch_entries(&bad).unwrap_err().kind, "InvalidBatchEntryId");
        assert_eq!(batch_entries(&json!({})).unwrap_err().kind, "MissingParameter");
    }

    #[test]
    fn receive_returns_the_attributes_asked_for() {
        let m = Received {
            message_id: "id".into(),
            receipt_handle: "rh".into(),
            body: "b".into(),
            attributes: [
                ("foo.a".to_owned(), MessageAttribute::string("1")),
                ("foo".to_owned(), MessageAttribute::string("2")),
                ("bar".to_owned(), MessageAttribute::string("3")),
            ]
            .into(),
            md5_of_body: "md5".into(),
            md5_of_attributes: None,
            sender_id: "s".into(),
            sent_ms: 10,
            first_receive_ms: 11,
            receive_count: 2,
            group_id: Some("g".into()),
            dedup_id: None,
            sequence_number: None,
        };
        let v = received_json(m.clone(), &["ApproximateReceiveCount".into()], &["foo.*".into()]);
        assert_eq!(v["Attributes"], json!({"ApproximateReceiveCount": "2"}));
        assert_eq!(v["MessageAttributes"], json!({"foo.a": {"DataType": "String", "StringValue": "1"}}));
        let only: BTreeMap<_, _> = [("foo.a".to_owned(), MessageAttribute::string("1"))].into();
        assert_eq!(v["MD5OfMessageAttributes"], nimbus_core::events::md5_of_message_attributes(&only).unwrap());
        let v = received_json(m.clone(), &["All".into()], &["All".into()]);
        assert_eq!(v["Attributes"]["MessageGroupId"], "g");
        assert_eq!(v["Attributes"]["SentTimestamp"], "10");
        assert_eq!(v["MessageAttributes"].as_object().unwrap().len(), 3);
        let v = received_json(m, &[], &[]);
        assert!(
            v.get("Attributes").is_none()
                && v.get("MessageAttributes").is_none()
                && v.get("MD5OfMessageAttributes").is_none()
        );
        assert_eq!(v["ReceiptHandle"], "rh");
    }
}
