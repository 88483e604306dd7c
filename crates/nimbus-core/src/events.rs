//! The events Lambda delivers to functions, in AWS's JSON shapes exactly (field names and casing
//! as AWS sends them), so handlers written for Lambda read nimbus's events unchanged:
//!
//! - [`S3Event`]: the S3 event notification (`Records[].eventSource "aws:s3"`, event version
//!   2.1), built by [`S3Event::single`] from an [`S3Change`]. Keys are URL-encoded as S3 does
//!   (spaces as `+`, handlers decode with `unquote_plus`); the sequencer is upper-case hex of a
//!   number that grows per key, so of two events for one key the later has the greater
//!   sequencer (compare as AWS documents: pad the shorter with leading zeros, then as strings).
//! - [`SqsEvent`]: the SQS batch (`Records[].eventSource "aws:sqs"`), one [`SqsMessage`] per
//!   message, built by [`SqsMessage::new`] from an [`SqsDelivery`]; `md5OfBody` is the hex MD5
//!   of the body and `md5OfMessageAttributes` SQS's digest of the attributes
//!   ([`md5_of_message_attributes`]).
//! - [`parse_batch_response`]: a function's partial batch response read as Lambda reads it.
//! - [`ScheduledEvent`]: the EventBridge scheduled event the cron trigger sends.
//!
//! These are wire formats, so unlike nimbus's domain types they carry serde. Written here rather
//! than taken from the `aws_lambda_events` crate: that crate models the events for handlers to
//! read (every field optional, its own date and map types, a large dependency tree), while
//! nimbus needs to *produce* them with fixed constant fields and small constructors.

use std::collections::BTreeMap;

use base64::Engine as _;
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ACCOUNT_ID, REGION};

/// `eventSource` of S3 records.
pub const S3_EVENT_SOURCE: &str = "aws:s3";
/// `eventSource` of SQS records.
pub const SQS_EVENT_SOURCE: &str = "aws:sqs";
/// The principal nimbus names as the writer and the bucket owner.
pub const NIMBUS_PRINCIPAL: &str = "AWS:NIMBUS";

/// An ISO 8601 UTC time with milliseconds, as S3 writes `eventTime`: `2019-09-03T19:37:27.192Z`.
pub fn iso8601_ms(ms: u64) -> String {
    format_utc(ms, "%Y-%m-%dT%H:%M:%S%.3fZ")
}

/// `ms` as UTC in `fmt`; the epoch for a time chrono cannot represent.
fn format_utc(ms: u64, fmt: &str) -> String {
    let t = i64::try_from(ms).ok().and_then(chrono::DateTime::from_timestamp_millis).unwrap_or_default();
    t.format(fmt).to_string()
}

/// Hex MD5 of `bytes`, as SQS reports `md5OfBody`.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(md5::Md5::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// S3

/// The S3 event notification: what a bucket trigger delivers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct S3Event {
    #[serde(rename = "Records")]
    pub records: Vec<S3EventRecord>,
}

/// One record of an [`S3Event`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3EventRecord {
    /// `"2.1"`.
    pub event_version: String,
    /// `"aws:s3"`.
    pub event_source: String,
    pub aws_region: String,
    /// ISO 8601 with milliseconds ([`iso8601_ms`]).
    pub event_time: String,
    /// Without the `s3:` prefix, as S3 sends it: `ObjectCreated:Put`.
    pub event_name: String,
    pub user_identity: Principal,
    pub request_parameters: RequestParameters,
    /// `x-amz-request-id` and `x-amz-id-2`.
    pub response_elements: BTreeMap<String, String>,
    pub s3: S3Entity,
}

/// `{"principalId": …}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Principal {
    #[serde(rename = "principalId")]
    pub principal_id: String,
}

/// `{"sourceIPAddress": …}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RequestParameters {
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: String,
}

/// The `s3` member of a record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Entity {
    /// `"1.0"`.
    pub s3_schema_version: String,
    pub configuration_id: String,
    pub bucket: S3Bucket,
    pub object: S3Object,
}

/// The bucket of a record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Bucket {
    pub name: String,
    pub owner_identity: Principal,
    /// `arn:aws:s3:::NAME`.
    pub arn: String,
}

/// The object of a record. Delete events carry no size or eTag, as on S3.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    /// URL-encoded ([`s3_event_key`]).
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub sequencer: String,
}

/// The S3 event names nimbus emits (`eventName`, without the `s3:` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3EventName {
    Put,
    Post,
    Copy,
    CompleteMultipartUpload,
    Delete,
    DeleteMarkerCreated,
}

impl S3EventName {
    pub const ALL: [S3EventName; 6] = [
        S3EventName::Put,
        S3EventName::Post,
        S3EventName::Copy,
        S3EventName::CompleteMultipartUpload,
        S3EventName::Delete,
        S3EventName::DeleteMarkerCreated,
    ];

    /// As in `eventName`: `ObjectCreated:Put`.
    pub fn as_str(self) -> &'static str {
        match self {
            S3EventName::Put => "ObjectCreated:Put",
            S3EventName::Post => "ObjectCreated:Post",
            S3EventName::Copy => "ObjectCreated:Copy",
            S3EventName::CompleteMultipartUpload => "ObjectCreated:CompleteMultipartUpload",
            S3EventName::Delete => "ObjectRemoved:Delete",
            S3EventName::DeleteMarkerCreated => "ObjectRemoved:DeleteMarkerCreated",
        }
    }

    /// Whether a notification configuration's event type (`s3:ObjectCreated:*`,
    /// `s3:ObjectRemoved:Delete`, …, with the `s3:` prefix as configurations write it) selects
    /// this event.
    pub fn matches(self, pattern: &str) -> bool {
        let Some(pattern) = pattern.strip_prefix("s3:") else { return false };
        match pattern.strip_suffix('*') {
            Some(prefix) => prefix.ends_with(':') && self.as_str().starts_with(prefix),
            None => pattern == self.as_str(),
        }
    }

    /// Whether `pattern` is an event type some event matches (for checking configurations).
    pub fn is_known_pattern(pattern: &str) -> bool {
        S3EventName::ALL.iter().any(|e| e.matches(pattern))
    }
}

/// An object's key as S3 writes it into an event: URL-encoded like a form value, so a space is
/// `+`, `/` and the unreserved characters (`A-Z a-z 0-9 - _ . ~`) stay, and every other byte of
/// the UTF-8 key is `%XX`. Handlers decode it with `urllib.parse.unquote_plus` or
/// `decodeURIComponent(key.replace(/\+/g, " "))`.
pub fn s3_event_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The sequencer of an event: upper-case hex of a number that grows with every change of a key,
/// 16 digits so that string order is number order.
pub fn s3_sequencer(sequence: u64) -> String {
    format!("{sequence:016X}")
}

/// One change of an object, what [`S3Event::single`] turns into a notification.
#[derive(Debug, Clone)]
pub struct S3Change<'a> {
    pub name: S3EventName,
    pub bucket: &'a str,
    /// The key as stored (not encoded).
    pub key: &'a str,
    /// Size and ETag (hex, without quotes) of a created object; `None` for removals.
    pub size: Option<u64>,
    pub etag: Option<&'a str>,
    pub version_id: Option<&'a str>,
    /// Grows with every change of this key ([`s3_sequencer`]).
    pub sequence: u64,
    pub time_ms: u64,
    pub source_ip: &'a str,
    pub request_id: &'a str,
    /// The trigger that selected the event (S3's notification configuration id).
    pub configuration_id: &'a str,
}

impl S3Event {
    /// The notification of one change, as S3 sends it (one record per event).
    pub fn single(c: &S3Change<'_>) -> S3Event {
        let principal = || Principal { principal_id: NIMBUS_PRINCIPAL.to_owned() };
        let response_elements = BTreeMap::from([
            ("x-amz-request-id".to_owned(), c.request_id.to_owned()),
            ("x-amz-id-2".to_owned(), c.request_id.to_owned()),
        ]);
        let record = S3EventRecord {
            event_version: "2.1".into(),
            event_source: S3_EVENT_SOURCE.into(),
            aws_region: REGION.into(),
            event_time: iso8601_ms(c.time_ms),
            event_name: c.name.as_str().into(),
            user_identity: principal(),
            request_parameters: RequestParameters { source_ip_address: c.source_ip.into() },
            response_elements,
            s3: S3Entity {
                s3_schema_version: "1.0".into(),
                configuration_id: c.configuration_id.into(),
                bucket: S3Bucket {
                    name: c.bucket.into(),
                    owner_identity: principal(),
                    arn: format!("arn:aws:s3:::{}", c.bucket),
                },
                object: S3Object {
                    key: s3_event_key(c.key),
                    size: c.size,
                    e_tag: c.etag.map(str::to_owned),
                    version_id: c.version_id.map(str::to_owned),
                    sequencer: s3_sequencer(c.sequence),
                },
            },
        };
        S3Event { records: vec![record] }
    }
}

// ---------------------------------------------------------------------------------------------
// SQS

/// The SQS batch: what a queue trigger delivers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SqsEvent {
    #[serde(rename = "Records")]
    pub records: Vec<SqsMessage>,
}

/// One message of an [`SqsEvent`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SqsMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub attributes: SqsAttributes,
    pub message_attributes: BTreeMap<String, SqsMessageAttribute>,
    /// Hex MD5 of `body`.
    pub md5_of_body: String,
    /// Present when the message has attributes ([`md5_of_message_attributes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5_of_message_attributes: Option<String>,
    /// `"aws:sqs"`.
    pub event_source: String,
    /// `arn:aws:sqs:REGION:ACCOUNT:QUEUE`.
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: String,
    pub aws_region: String,
}

/// The system attributes of a message (every value a string, as SQS sends them); the FIFO ones
/// only for FIFO queues.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct SqsAttributes {
    pub approximate_receive_count: String,
    pub sent_timestamp: String,
    pub sender_id: String,
    pub approximate_first_receive_timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_deduplication_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
}

/// A message attribute in Lambda's shape (camel-case, list members always present, binary
/// values base64).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SqsMessageAttribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
    #[serde(default)]
    pub string_list_values: Vec<String>,
    #[serde(default)]
    pub binary_list_values: Vec<String>,
    /// `String`, `Number` or `Binary`, optionally with a custom suffix (`String.uuid`).
    pub data_type: String,
}

impl SqsMessageAttribute {
    /// A `String` attribute.
    pub fn string(value: &str) -> SqsMessageAttribute {
        SqsMessageAttribute { string_value: Some(value.into()), data_type: "String".into(), ..Default::default() }
    }
}

/// SQS's `MD5OfMessageAttributes`: the MD5 over the attributes sorted by name, each encoded as
/// name, data type, a transport byte (1 for String and Number, 2 for Binary) and the value, every
/// string and value preceded by its length as 4 big-endian bytes. `None` without attributes, or
/// when a binary value is not valid base64.
pub fn md5_of_message_attributes(attrs: &BTreeMap<String, SqsMessageAttribute>) -> Option<String> {
    if attrs.is_empty() {
        return None;
    }
    let mut buf = Vec::new();
    for (name, a) in attrs {
        put_prefixed(&mut buf, name.as_bytes());
        put_prefixed(&mut buf, a.data_type.as_bytes());
        if a.data_type.starts_with("Binary") {
            let b64 = a.binary_value.as_deref().unwrap_or_default();
            let value = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            buf.push(2);
            put_prefixed(&mut buf, &value);
        } else {
            buf.push(1);
            put_prefixed(&mut buf, a.string_value.as_deref().unwrap_or_default().as_bytes());
        }
    }
    Some(md5_hex(&buf))
}

/// `bytes` after their length as 4 big-endian bytes.
fn put_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The ARN of queue `name`.
pub fn sqs_queue_arn(name: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}")
}

/// FIFO system attributes of a message.
#[derive(Debug, Clone)]
pub struct FifoAttributes<'a> {
    pub group_id: &'a str,
    pub deduplication_id: &'a str,
    pub sequence_number: &'a str,
}

/// One received message, what [`SqsMessage::new`] turns into a record.
#[derive(Debug, Clone)]
pub struct SqsDelivery<'a> {
    pub queue: &'a str,
    pub message_id: &'a str,
    pub receipt_handle: &'a str,
    pub body: &'a str,
    pub receive_count: u32,
    pub sent_ms: u64,
    pub first_receive_ms: u64,
    pub sender_id: &'a str,
    pub fifo: Option<FifoAttributes<'a>>,
    pub attributes: BTreeMap<String, SqsMessageAttribute>,
}

impl SqsMessage {
    /// The record of one delivered message.
    pub fn new(d: SqsDelivery<'_>) -> SqsMessage {
        let fifo = d.fifo.as_ref();
        SqsMessage {
            message_id: d.message_id.into(),
            receipt_handle: d.receipt_handle.into(),
            body: d.body.into(),
            attributes: SqsAttributes {
                approximate_receive_count: d.receive_count.to_string(),
                sent_timestamp: d.sent_ms.to_string(),
                sender_id: d.sender_id.into(),
                approximate_first_receive_timestamp: d.first_receive_ms.to_string(),
                message_group_id: fifo.map(|f| f.group_id.to_owned()),
                message_deduplication_id: fifo.map(|f| f.deduplication_id.to_owned()),
                sequence_number: fifo.map(|f| f.sequence_number.to_owned()),
            },
            md5_of_body: md5_hex(d.body.as_bytes()),
            md5_of_message_attributes: md5_of_message_attributes(&d.attributes),
            message_attributes: d.attributes,
            event_source: SQS_EVENT_SOURCE.into(),
            event_source_arn: sqs_queue_arn(d.queue),
            aws_region: REGION.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Partial batch response

/// What a function's answer to an SQS batch means, read as Lambda reads it with
/// `ReportBatchItemFailures` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Delete every message.
    AllSucceeded,
    /// Return these message ids to the queue (each once, in the order given), delete the rest.
    Failed(Vec<String>),
    /// Return the whole batch; the reason names what was wrong with the response.
    AllFailed(String),
}

/// Reads a function's response to a batch of `batch_ids` by Lambda's documented rule
/// ("Implementing partial batch responses"): the batch fully succeeded when the response is
/// empty or `null`, has no `batchItemFailures`, or has it `null` or `[]` (a JSON value that is
/// not an object counts as having none); it fully failed when the response is not JSON, or
/// `batchItemFailures` is not a list, or an entry lacks `itemIdentifier`, has it `null`, empty,
/// not a string, or naming a message not in the batch. A function error also fails the whole
/// batch, but that is the caller's to see before calling this.
pub fn parse_batch_response(body: &[u8], batch_ids: &[&str]) -> BatchOutcome {
    if body.iter().all(u8::is_ascii_whitespace) {
        return BatchOutcome::AllSucceeded;
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return BatchOutcome::AllFailed(format!("the response is not JSON ({e})")),
    };
    let failures = match value.get("batchItemFailures") {
        None | Some(Value::Null) => return BatchOutcome::AllSucceeded,
        Some(Value::Array(list)) => list,
        Some(other) => return BatchOutcome::AllFailed(format!("batchItemFailures is not a list: {other}")),
    };
    let mut ids: Vec<String> = Vec::new();
    for entry in failures {
        let id = match entry.get("itemIdentifier") {
            Some(Value::String(id)) if !id.is_empty() => id,
            _ => {
                return BatchOutcome::AllFailed(format!("a batch item failure without a valid itemIdentifier: {entry}"))
            }
        };
        if !batch_ids.contains(&id.as_str()) {
            return BatchOutcome::AllFailed(format!("itemIdentifier {id:?} is not a message of this batch"));
        }
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    if ids.is_empty() {
        BatchOutcome::AllSucceeded
    } else {
        BatchOutcome::Failed(ids)
    }
}

// ---------------------------------------------------------------------------------------------
// EventBridge schedule

/// The EventBridge scheduled event a cron trigger delivers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ScheduledEvent {
    /// `"0"`.
    pub version: String,
    pub id: String,
    /// `"Scheduled Event"`.
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    /// `"aws.events"`.
    pub source: String,
    pub account: String,
    /// ISO 8601 UTC to the second: `2019-10-08T16:53:06Z`.
    pub time: String,
    pub region: String,
    /// The rule's ARN.
    pub resources: Vec<String>,
    /// `{}`.
    pub detail: Value,
}

impl ScheduledEvent {
    /// The event of schedule `rule` firing at `time_ms`, with event id `id`.
    pub fn new(id: &str, rule: &str, time_ms: u64) -> ScheduledEvent {
        ScheduledEvent {
            version: "0".into(),
            id: id.into(),
            detail_type: "Scheduled Event".into(),
            source: "aws.events".into(),
            account: ACCOUNT_ID.into(),
            time: format_utc(time_ms, "%Y-%m-%dT%H:%M:%SZ"),
            region: REGION.into(),
            resources: vec![format!("arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{rule}")],
            detail: Value::Object(serde_json::Map::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// AWS's sample S3 PUT notification (Lambda developer guide, "Using Lambda with Amazon S3").
    const AWS_S3_SAMPLE: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-2",
      "eventTime":"2019-09-03T19:37:27.192Z","eventName":"ObjectCreated:Put",
      "userIdentity":{"principalId":"AWS:AIDAINPONIXQXHT3IKHL2"},
      "requestParameters":{"sourceIPAddress":"205.255.255.255"},
      "responseElements":{"x-amz-request-id":"D82B88E5F771F645","x-amz-id-2":"vlR7PnpV2Ce81l0PRw6jlUpck7Jo5ZsQjryTjKlc5aLWGVHPZLj5NeC6qMa0emYBDXOo6QBU0Wo="},
      "s3":{"s3SchemaVersion":"1.0","configurationId":"828aa6fc-f7b5-4305-8584-487c791949c1",
        "bucket":{"name":"DOC-EXAMPLE-BUCKET","ownerIdentity":{"principalId":"A3I5XTEXAMAI3E"},"arn":"arn:aws:s3:::lambda-artifacts-deafc19498e3f2df"},
        "object":{"key":"b21b84d653bb07b05b1e6b33684dc11b","size":1305107,"eTag":"b21b84d653bb07b05b1e6b33684dc11b","sequencer":"0C0F6F405D6ED209E1"}}}]}"#;

    /// AWS's sample SQS batch record (Lambda developer guide, "Using Lambda with Amazon SQS").
    const AWS_SQS_SAMPLE: &str = r#"{"Records":[{"messageId":"059f36b4-87a3-44ab-83d2-661975830a7d",
      "receiptHandle":"AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a","body":"Test message.",
      "attributes":{"ApproximateReceiveCount":"1","SentTimestamp":"1545082649183","SenderId":"AIDAIENQZJOLO23YVJ4VO","ApproximateFirstReceiveTimestamp":"1545082649185"},
      "messageAttributes":{"myAttribute":{"stringValue":"myValue","stringListValues":[],"binaryListValues":[],"dataType":"String"}},
      "md5OfBody":"e4e68fb7bd0e697a0ae8f1bb342846b3","eventSource":"aws:sqs",
      "eventSourceARN":"arn:aws:sqs:us-east-2:123456789012:my-queue","awsRegion":"us-east-2"}]}"#;

    /// The keys of every object in `v`, recursively, with their paths: the shape without values.
    fn shape(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| {
                out.push(format!("{path}.{k}"));
                shape(v, &format!("{path}.{k}"), out);
            }),
            Value::Array(a) => a.iter().for_each(|v| shape(v, &format!("{path}[]"), out)),
            _ => {}
        }
        out.sort();
    }

    fn shape_of(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        shape(v, "", &mut out);
        out
    }

    fn put_change() -> S3Change<'static> {
        S3Change {
            name: S3EventName::Put,
            bucket: "DOC-EXAMPLE-BUCKET",
            key: "b21b84d653bb07b05b1e6b33684dc11b",
            size: Some(1305107),
            etag: Some("b21b84d653bb07b05b1e6b33684dc11b"),
            version_id: None,
            sequence: 7,
            time_ms: 1_567_539_447_192,
            source_ip: "205.255.255.255",
            request_id: "D82B88E5F771F645",
            configuration_id: "828aa6fc-f7b5-4305-8584-487c791949c1",
        }
    }

    #[test]
    fn s3_put_has_the_shape_and_constants_of_aws_sample() {
        let sample: Value = serde_json::from_str(AWS_S3_SAMPLE).unwrap();
        let ours = serde_json::to_value(S3Event::single(&put_change())).unwrap();
        assert_eq!(shape_of(&ours), shape_of(&sample));
        let (a, b) = (&ours["Records"][0], &sample["Records"][0]);
        for field in ["eventVersion", "eventSource", "eventTime", "eventName", "requestParameters"] {
            assert_eq!(a[field], b[field], "{field}");
        }
        assert_eq!(a["responseElements"]["x-amz-request-id"], b["responseElements"]["x-amz-request-id"]);
        for field in ["s3SchemaVersion", "configurationId"] {
            assert_eq!(a["s3"][field], b["s3"][field], "{field}");
        }
        assert_eq!(a["s3"]["bucket"]["name"], b["s3"]["bucket"]["name"]);
        assert_eq!(a["s3"]["bucket"]["arn"], "arn:aws:s3:::DOC-EXAMPLE-BUCKET");
        for field in ["key", "size", "eTag"] {
            assert_eq!(a["s3"]["object"][field], b["s3"]["object"][field], "{field}");
        }
        assert_eq!(a["awsRegion"], REGION);
        // The sample parses into our types and back without loss.
        let parsed: S3Event = serde_json::from_str(AWS_S3_SAMPLE).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), sample);
    }

    #[test]
    fn s3_delete_has_no_size_or_etag_and_a_version_when_given() {
        let c = S3Change { name: S3EventName::Delete, size: None, etag: None, version_id: Some("v1"), ..put_change() };
        let ours = serde_json::to_value(S3Event::single(&c)).unwrap();
        let object = &ours["Records"][0]["s3"]["object"];
        assert_eq!(ours["Records"][0]["eventName"], "ObjectRemoved:Delete");
        assert_eq!(object.as_object().unwrap().keys().collect::<Vec<_>>(), ["key", "sequencer", "versionId"]);
    }

    #[test]
    fn keys_are_url_encoded_as_s3_does() {
        assert_eq!(s3_event_key("images/my photo (1).jpg"), "images/my+photo+%281%29.jpg");
        assert_eq!(s3_event_key("a+b=c&d"), "a%2Bb%3Dc%26d");
        assert_eq!(s3_event_key("café-~_."), "caf%C3%A9-~_.");
    }

    #[test]
    fn sequencers_order_as_their_numbers() {
        let seqs: Vec<String> = [1u64, 9, 10, 255, 256, u64::MAX].iter().map(|&n| s3_sequencer(n)).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(seqs
            .iter()
            .all(|s| s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())));
    }

    #[test]
    fn event_patterns_match_as_notification_configurations_do() {
        assert!(S3EventName::Put.matches("s3:ObjectCreated:*"));
        assert!(S3EventName::CompleteMultipartUpload.matches("s3:ObjectCreated:*"));
        assert!(!S3EventName::Delete.matches("s3:ObjectCreated:*"));
        assert!(S3EventName::DeleteMarkerCreated.matches("s3:ObjectRemoved:*"));
        assert!(S3EventName::Delete.matches("s3:ObjectRemoved:Delete"));
        assert!(!S3EventName::Put.matches("ObjectCreated:Put"), "configurations carry the s3: prefix");
        assert!(!S3EventName::Put.matches("s3:ObjectCreated:P*"));
        assert!(S3EventName::is_known_pattern("s3:ObjectRemoved:*"));
        assert!(!S3EventName::is_known_pattern("s3:ObjectRestore:*"));
    }

    fn sample_delivery() -> SqsDelivery<'static> {
        SqsDelivery {
            queue: "my-queue",
            message_id: "059f36b4-87a3-44ab-83d2-661975830a7d",
            receipt_handle: "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
            body: "Test message.",
            receive_count: 1,
            sent_ms: 1545082649183,
            first_receive_ms: 1545082649185,
            sender_id: "AIDAIENQZJOLO23YVJ4VO",
            fifo: None,
            attributes: BTreeMap::from([("myAttribute".to_owned(), SqsMessageAttribute::string("myValue"))]),
        }
    }

    #[test]
    fn sqs_record_matches_aws_sample_field_by_field() {
        let sample: Value = serde_json::from_str(AWS_SQS_SAMPLE).unwrap();
        let ours = serde_json::to_value(SqsEvent { records: vec![SqsMessage::new(sample_delivery())] }).unwrap();
        let (a, b) = (&ours["Records"][0], &sample["Records"][0]);
        for field in
            ["messageId", "receiptHandle", "body", "attributes", "messageAttributes", "md5OfBody", "eventSource"]
        {
            assert_eq!(a[field], b[field], "{field}");
        }
        assert_eq!(a["eventSourceARN"], format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:my-queue"));
        assert_eq!(a["awsRegion"], REGION);
        // Ours adds only md5OfMessageAttributes (the sample omits it though it has attributes).
        let mut expected = shape_of(&sample);
        expected.push(".Records[].md5OfMessageAttributes".into());
        expected.sort();
        assert_eq!(shape_of(&ours), expected);
        let parsed: SqsEvent = serde_json::from_str(AWS_SQS_SAMPLE).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), sample);
    }

    #[test]
    fn fifo_records_carry_group_dedup_and_sequence() {
        let d = SqsDelivery {
            fifo: Some(FifoAttributes {
                group_id: "g1",
                deduplication_id: "d1",
                sequence_number: "18849496460467696128",
            }),
            attributes: BTreeMap::new(),
            ..sample_delivery()
        };
        let v = serde_json::to_value(SqsMessage::new(d)).unwrap();
        assert_eq!(v["attributes"]["MessageGroupId"], "g1");
        assert_eq!(v["attributes"]["MessageDeduplicationId"], "d1");
        assert_eq!(v["attributes"]["SequenceNumber"], "18849496460467696128");
        assert!(v.get("md5OfMessageAttributes").is_none(), "no attributes, no digest");
        assert_eq!(v["messageAttributes"], json!({}));
    }

    #[test]
    fn attribute_digest_follows_sqs_encoding() {
        // Vectors computed outside this code, with Python's hashlib and SQS's documented encoding
        // (as moto's `Message.attribute_md5` implements it): per attribute sorted by name, the
        // length-prefixed name and type, transport byte 1 (String/Number) or 2 (Binary), then
        // the length-prefixed value.
        let mut attrs = sample_delivery().attributes;
        assert_eq!(md5_of_message_attributes(&attrs).as_deref(), Some("7c0ce6358e063c1ed17ed00520448716"));
        let bin =
            SqsMessageAttribute { binary_value: Some("AAEC".into()), data_type: "Binary".into(), ..Default::default() };
        attrs.insert("bin".into(), bin);
        assert_eq!(md5_of_message_attributes(&attrs).as_deref(), Some("4a0112bf7d4a65fc6d1ab68c8be6d376"));
        let bad = SqsMessageAttribute {
            binary_value: Some("not base64!".into()),
            data_type: "Binary".into(),
            ..Default::default()
        };
        assert_eq!(md5_of_message_attributes(&BTreeMap::from([("b".to_owned(), bad)])), None);
        assert_eq!(md5_of_message_attributes(&BTreeMap::new()), None);
    }

    #[test]
    fn batch_responses_read_as_lambda_reads_them() {
        let ids = ["m1", "m2", "m3"];
        let ok = BatchOutcome::AllSucceeded;
        for body in
            ["", "  ", "null", "{}", r#"{"batchItemFailures":null}"#, r#"{"batchItemFailures":[]}"#, r#""done""#]
        {
            assert_eq!(parse_batch_response(body.as_bytes(), &ids), ok, "{body:?}");
        }
        let failed = parse_batch_response(
            br#"{"batchItemFailures":[{"itemIdentifier":"m3"},{"itemIdentifier":"m1"},{"itemIdentifier":"m3"}]}"#,
            &ids,
        );
        assert_eq!(failed, BatchOutcome::Failed(vec!["m3".into(), "m1".into()]));
        for body in [
            "{not json",
            r#"{"batchItemFailures":"m1"}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifer":"m1"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"m9"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":1}]}"#,
        ] {
            assert!(matches!(parse_batch_response(body.as_bytes(), &ids), BatchOutcome::AllFailed(_)), "{body:?}");
        }
    }

    #[test]
    fn scheduled_event_has_eventbridge_shape() {
        let v = serde_json::to_value(ScheduledEvent::new("id-1", "nightly", 1_570_553_586_000)).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["account", "detail", "detail-type", "id", "region", "resources", "source", "time", "version"]
        );
        assert_eq!(v["detail-type"], "Scheduled Event");
        assert_eq!(v["source"], "aws.events");
        assert_eq!(v["time"], "2019-10-08T16:53:06Z");
        assert_eq!(v["resources"][0], format!("arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/nightly"));
        assert_eq!(v["detail"], json!({}));
    }

    #[test]
    fn event_times_are_iso8601_with_milliseconds() {
        assert_eq!(iso8601_ms(1_567_539_447_192), "2019-09-03T19:37:27.192Z");
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
