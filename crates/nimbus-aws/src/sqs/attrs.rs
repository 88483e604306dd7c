//! Queue attributes (`CreateQueue`, `Get`/`SetQueueAttributes`) to and from
//! [`QueueSettings`]: every value a string, times in seconds, `RedrivePolicy` a JSON string
//! naming the dead-letter queue by ARN. Attributes nimbus accepts but does not act on
//! (encryption, policies: SQS's own concerns on AWS) are taken and not stored.

use std::time::Duration;

use nimbus_core::event_sources::Redrive;
use nimbus_core::events::sqs_queue_arn;
use nimbus_core::messages::{QueueInfo, QueueSettings, QueueStats};
use serde_json::{Map, Value};

use super::SqsError;

/// Attributes accepted and not acted on.
const IGNORED: [&str; 7] = [
    "Policy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "RedriveAllowPolicy",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

/// Every attribute `GetQueueAttributes` may name.
pub const NAMES: [&str; 21] = [
    "Policy",
    "VisibilityTimeout",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
    "ApproximateNumberOfMessagesDelayed",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "RedriveAllowPolicy",
    "SqsManagedSseEnabled",
];

/// A value given as a string (or, leniently, a JSON number or boolean).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whole seconds in `min..=max` as attribute `name`.
fn seconds(name: &str, value: &str, min: u64, max: u64) -> Result<Duration, SqsError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(invalid_value(name, value, &format!("must be whole seconds from {min} to {max}"))),
    }
}

fn invalid_value(name: &str, value: &str, why: &str) -> SqsError {
    SqsError::new(
        "InvalidAttributeValue",
        "InvalidAttributeValue",
        format!("Invalid value for the parameter {name}: {value:?} {why}."),
    )
}

fn boolean(name: &str, value: &str) -> Result<bool, SqsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid_value(name, value, "must be true or false")),
    }
}

/// The dead-letter queue's name and the count of a `RedrivePolicy` (`None`: the empty policy,
/// which removes one).
pub fn redrive(value: &str) -> Result<Option<Redrive>, SqsError> {
    if value.trim().is_empty() || value.trim() == "{}" {
        return Ok(None);
    }
    let bad = |why: &str| invalid_value("RedrivePolicy", value, why);
    let v: Value = serde_json::from_str(value).map_err(|_| bad("is not JSON"))?;
    let arn = v.get("deadLetterTargetArn").and_then(Value::as_str).ok_or_else(|| bad("has no deadLetterTargetArn"))?;
    let name = arn.rsplit(':').next().filter(|n| !n.is_empty()).ok_or_else(|| bad("names no queue"))?;
    let count = v.get("maxReceiveCount").and_then(text).and_then(|c| c.parse::<u32>().ok());
    let count =
        count.filter(|c| (1..=1000).contains(c)).ok_or_else(|| bad("needs a maxReceiveCount from 1 to 1000"))?;
    Ok(Some(Redrive { dead_letter_queue: name.to_owned(), max_receive_count: count }))
}

/// Apply `attributes` to `settings`. `creating`: FifoQueue may be given (on an existing queue it
/// cannot change).
pub fn apply(settings: &mut QueueSettings, attributes: &Map<String, Value>, creating: bool) -> Result<(), SqsError> {
    for (name, v) in attributes {
        let value = text(v).ok_or_else(|| invalid_value(name, &v.to_string(), "is not a string"))?;
        let spec = &mut settings.spec;
        match name.as_str() {
            "VisibilityTimeout" => spec.visibility_timeout = seconds(name, &value, 0, 43_200)?,
            "MessageRetentionPeriod" => spec.retention = seconds(name, &value, 60, 1_209_600)?,
            "DelaySeconds" => spec.delay = seconds(name, &value, 0, 900)?,
            "ReceiveMessageWaitTimeSeconds" => settings.receive_wait = seconds(name, &value, 0, 20)?,
            "MaximumMessageSize" => {
                let bytes = seconds(name, &value, 1024, u64::from(nimbus_core::messages::MAX_MESSAGE_BYTES))?;
                settings.max_message_bytes = u32::try_from(bytes.as_secs()).unwrap_or(u32::MAX);
            }
            "RedrivePolicy" => spec.redrive = redrive(&value)?,
            "FifoQueue" if creating => spec.fifo = boolean(name, &value)?,
            "FifoQueue" => {
                if boolean(name, &value)? != spec.fifo {
                    return Err(invalid_value(name, &value, "cannot change: a queue is FIFO or not from its creation"));
                }
            }
            "ContentBasedDeduplication" => settings.content_based_dedup = boolean(name, &value)?,
            n if IGNORED.contains(&n) => tracing::debug!(attribute = n, "SQS: attribute accepted and not acted on"),
            _ => {
                return Err(SqsError::new(
                    "InvalidAttributeName",
                    "InvalidAttributeName",
                    format!("Unknown Attribute {name}. Queue attributes are {}.", NAMES.join(", ")),
                ))
            }
        }
    }
    if settings.content_based_dedup && !settings.spec.fifo {
        return Err(invalid_value("ContentBasedDeduplication", "true", "is only for FIFO queues"));
    }
    Ok(())
}

/// The attributes named in `names` (`All`: every one) of a queue.
pub fn get(info: &QueueInfo, stats: &QueueStats, names: &[String]) -> Result<Map<String, Value>, SqsError> {
    let all = names.iter().any(|n| n == "All");
    if let Some(bad) = names.iter().find(|n| *n != "All" && !NAMES.contains(&n.as_str())) {
        return Err(SqsError::new(
            "InvalidAttributeName",
            "InvalidAttributeName",
            format!("Unknown Attribute {bad}. Queue attributes are All, {}.", NAMES.join(", ")),
        ));
    }
    let s = &info.settings;
    let secs = |d: Duration| d.as_secs().to_string();
    let mut values: Vec<(&str, String)> = vec![
        ("QueueArn", sqs_queue_arn(&info.name)),
        ("ApproximateNumberOfMessages", stats.visible.to_string()),
        ("ApproximateNumberOfMessagesNotVisible", stats.in_flight.to_string()),
        ("ApproximateNumberOfMessagesDelayed", stats.delayed.to_string()),
        ("CreatedTimestamp", (info.created_ms / 1000).to_string()),
        ("LastModifiedTimestamp", (info.modified_ms / 1000).to_string()),
        ("VisibilityTimeout", secs(s.spec.visibility_timeout)),
        ("MaximumMessageSize", s.max_message_bytes.to_string()),
        ("MessageRetentionPeriod", secs(s.spec.retention)),
        ("DelaySeconds", secs(s.spec.delay)),
        ("ReceiveMessageWaitTimeSeconds", secs(s.receive_wait)),
        ("SqsManagedSseEnabled", "false".into()),
    ];
    if let Some(r) = &s.spec.redrive {
        let policy = serde_json::json!({
            "deadLetterTargetArn": sqs_queue_arn(&r.dead_letter_queue),
            "maxReceiveCount": r.max_receive_count,
        });
        values.push(("RedrivePolicy", policy.to_string()));
    }
    if s.spec.fifo {
        values.push(("FifoQueue", "true".into()));
        values.push(("ContentBasedDeduplication", s.content_based_dedup.to_string()));
    }
    Ok(values
        .into_iter()
        .filter(|(n, _)| all || names.iter().any(|w| w == n))
        .map(|(n, v)| (n.to_owned(), Value::String(v)))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn attributes_set_the_settings() {
        let mut s = QueueSettings::default();
        let given = json!({"VisibilityTimeout": "5", "MessageRetentionPeriod": "600", "DelaySeconds": 2,
            "ReceiveMessageWaitTimeSeconds": "20", "MaximumMessageSize": "2048", "FifoQueue": "true",
            "ContentBasedDeduplication": "true", "KmsMasterKeyId": "alias/x",
            "RedrivePolicy": r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq.fifo","maxReceiveCount":"3"}"#});
        apply(&mut s, &attrs(given), true).unwrap();
        assert_eq!(s.spec.visibility_timeout, Duration::from_secs(5));
        assert_eq!(s.spec.retention, Duration::from_secs(600));
        assert_eq!(s.spec.delay, Duration::from_secs(2));
        assert_eq!(s.receive_wait, Duration::from_secs(20));
        assert_eq!(s.max_message_bytes, 2048);
        assert!(s.spec.fifo && s.content_based_dedup);
        assert_eq!(s.spec.redrive, Some(Redrive { dead_letter_queue: "dlq.fifo".into(), max_receive_count: 3 }));
        let e = apply(&mut s, &attrs(json!({"FifoQueue": "false"})), false).unwrap_err();
        assert!(e.message.contains("cannot change"), "{e:?}");
        apply(&mut s, &attrs(json!({"RedrivePolicy": ""})), false).unwrap();
        assert_eq!(s.spec.redrive, None);
    }

    #[test]
    fn bad_attributes_say_what_is_wrong() {
        let mut s = QueueSettings::default();
        for (given, kind) in [
            (json!({"VisibilityTimeout": "43201"}), "InvalidAttributeValue"),
            (json!({"DelaySeconds": "-1"}), "InvalidAttributeValue"),
            (json!({"MaximumMessageSize": "100"}), "InvalidAttributeValue"),
            (json!({"RedrivePolicy": "{\"maxReceiveCount\": 2}"}), "InvalidAttributeValue"),
            (
                json!({"RedrivePolicy": "{\"deadLetterTargetArn\": \"arn:aws:sqs:r:a:d\", \"maxReceiveCount\": 0}"}),
                "InvalidAttributeValue",
            ),
            (json!({"ContentBasedDeduplication": "true"}), "InvalidAttributeValue"),
            (json!({"Colour": "blue"}), "InvalidAttributeName"),
        ] {
            let e = apply(&mut s, &attrs(given.clone()), true).unwrap_err();
            assert_eq!(e.kind, kind, "{given}: {e:?}");
        }
    }

    #[test]
    fn get_answers_all_or_the_named() {
        let mut settings = QueueSettings::default();
        settings.spec.redrive = Some(Redrive { dead_letter_queue: "dlq".into(), max_receive_count: 4 });
        let info = QueueInfo { name: "q".into(), settings, created_ms: 5_000, modified_ms: 6_000 };
        let stats = QueueStats { visible: 3, in_flight: 1, ..QueueStats::default() };
        let all = get(&info, &stats, &["All".into()]).unwrap();
        assert_eq!(all["QueueArn"], "arn:aws:sqs:us-east-1:000000000000:q");
        assert_eq!(all["ApproximateNumberOfMessages"], "3");
        assert_eq!(all["ApproximateNumberOfMessagesNotVisible"], "1");
        assert_eq!(all["CreatedTimestamp"], "5");
        assert_eq!(all["VisibilityTimeout"], "30");
        let policy: Value = serde_json::from_str(all["RedrivePolicy"].as_str().unwrap()).unwrap();
        assert_eq!(
            policy,
            json!({"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq", "maxReceiveCount": 4})
        );
        assert!(!all.contains_key("FifoQueue"));
        let some = get(&info, &stats, &["DelaySeconds".into()]).unwrap();
        assert_eq!(some.keys().collect::<Vec<_>>(), ["DelaySeconds"]);
        assert!(get(&info, &stats, &["Nope".into()]).is_err());
    }
}
