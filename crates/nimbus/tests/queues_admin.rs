//! The operator's view of the message queues: `nimbus queues ls|peek|purge|redrive`, the
//! `/v1/queues` API under them, and `/metrics`. Messages go in and out through boto3's SQS client
//! on the AWS port, as an application's would; what the operator sees must match.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{boto3, run_json, App, Server};
use serde_json::{json, Value};

const MANIFEST: &str = r#"
[queues.jobs]
visibility_timeout = "30s"
max_receive_count = 1
dead_letter_queue = "jobs-dlq"

[queues.jobs-dlq]
"#;

/// Sends three messages to `jobs`, then receives one twice (making it visible again in between):
/// the second receive finds it past `max_receive_count`, so it moves to `jobs-dlq`.
const SQS_SCRIPT: &str = r#"
import json, os, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
url = sqs.get_queue_url(QueueName="jobs")["QueueUrl"]
for body in ("first", "second", "third"):
    sqs.send_message(QueueUrl=url, MessageBody=body)
got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)["Messages"]
sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=0)
again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30).get("Messages", [])
print(json.dumps({"poisoned": got[0]["Body"], "then": sorted(m["Body"] for m in again)}))
"#;

fn cli_json(server: &Server, args: &[&str]) -> Value {
    let out = server.cli(args);
    assert!(out.status.success(), "nimbus {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cli_text(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(out.status.success(), "nimbus {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn queue<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|q| q["name"] == name).unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

#[tokio::test]
async fn operators_see_depth_peek_purge_and_redrive() {
    let app = App::new("queues-admin").conformance("node", "work", "").raw(MANIFEST).finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).unwrap().trim().to_owned();

    let empty = cli_json(&server, &["queues", "ls", "--json"]);
    let jobs = queue(&empty, "jobs");
    assert_eq!((jobs["visible"].clone(), jobs["deadLetterQueue"].clone()), (json!(0), json!("jobs-dlq")));
    assert_eq!(jobs["maxReceiveCount"], 1);
    assert_eq!(jobs["arn"], "arn:aws:sqs:us-east-1:000000000000:jobs");

    let moved = run_json(boto3(SQS_SCRIPT, &[&url], data.path()));
    let poisoned = moved["poisoned"].as_str().unwrap().to_owned();
    assert_eq!(moved["then"].as_array().unwrap().len(), 2, "the poisoned message is not delivered again: {moved}");

    // Two in flight in `jobs` (received by the second call), the third in the dead-letter queue.
    let list = cli_json(&server, &["queues", "ls", "--json"]);
    let (jobs, dlq) = (queue(&list, "jobs"), queue(&list, "jobs-dlq"));
    assert_eq!((jobs["visible"].clone(), jobs["inFlight"].clone()), (json!(0), json!(2)), "{jobs:#}");
    assert_eq!((jobs["sent"].clone(), jobs["deadLettered"].clone()), (json!(3), json!(1)), "{jobs:#}");
    assert_eq!(dlq["visible"], 1, "{dlq:#}");
    assert!(jobs["oldestAgeMs"].as_u64().is_some(), "{jobs:#}");
    let table = cli_text(&server, &["queues", "ls"]);
    let row = table.lines().find(|l| l.starts_with("jobs ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("jobs-dlq (after 1 receive)"), "{row}");

    // Peek shows the dead-lettered message with where it came from, and receives nothing.
    let peeked = cli_json(&server, &["queues", "peek", "jobs-dlq", "--json"]);
    assert_eq!(peeked[0]["body"], poisoned.as_str());
    assert_eq!(peeked[0]["sourceQueue"], "jobs");
    let again = cli_json(&server, &["queues", "peek", "jobs-dlq", "--json"]);
    assert_eq!(again[0]["receiveCount"], peeked[0]["receiveCount"], "peeking does not receive");

    // The metrics say the same.
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"nimbus_queue_depth{queue="jobs",state="in_flight"} 2"#,
        r#"nimbus_queue_depth{queue="jobs-dlq",state="visible"} 1"#,
        r#"nimbus_queue_messages_total{queue="jobs",event="sent"} 3"#,
        r#"nimbus_queue_messages_total{queue="jobs",event="dead_lettered"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in /metrics:\n{metrics}");
    }

    // Redrive moves it back to `jobs`, visible at once.
    let out = cli_text(&server, &["queues", "redrive", "jobs-dlq"]);
    assert!(out.contains("moved 1 message from jobs-dlq"), "{out}");
    let list = cli_json(&server, &["queues", "ls", "--json"]);
    assert_eq!(queue(&list, "jobs")["visible"], 1);
    assert_eq!(queue(&list, "jobs-dlq")["visible"], 0);

    // Purge empties `jobs`, and the audit log has both.
    let out = cli_text(&server, &["queues", "purge", "jobs"]);
    assert!(out.contains("purged 3 messages from jobs"), "{out}");
    let list = cli_json(&server, &["queues", "ls", "--json"]);
    assert_eq!(
        (queue(&list, "jobs")["visible"].clone(), queue(&list, "jobs")["inFlight"].clone()),
        (json!(0), json!(0))
    );
    let audit = server.admin("/v1/audit?limit=50").await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"queue.purge") && actions.contains(&"queue.redrive"), "{actions:?}");
}

#[tokio::test]
async fn unknown_queues_and_read_tokens_get_clear_refusals() {
    let app = App::new("queues-refusals").conformance("node", "work", "").raw("[queues.jobs]").finish();
    let server = Server::start(app.path());
    let out = server.cli(&["queues", "peek", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no queue nope") && err.contains("nimbus queues ls"), "{err}");

    let token = cli_json(&server, &["token", "create", "--scope", "read", "--json"]);
    let secret = token["secret"].as_str().unwrap();
    assert!(server.cli_as(secret, &["queues", "ls"]).status.success(), "read may list");
    let out = server.cli_as(secret, &["queues", "purge", "jobs"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin"), "purge needs admin: {err}");
}
