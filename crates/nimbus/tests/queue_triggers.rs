//! Black-box tests of queue triggers (`[[triggers]] queue = …`, Lambda's SQS event source
//! mapping): a worker receives the queue's messages in SQS batch events and reports a poison
//! message as a batch item failure; the poison message ends in the dead-letter queue after
//! `max_receive_count` receives and every other message is processed once. The messages are
//! sent through the embedded message store before nimbus starts (the SQS protocol on the AWS
//! port is tested on its own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{App, Server};
use nimbus_core::event_sources::{QueueSpec, Redrive};
use nimbus_core::messages::{MessageQueues, NewMessage, QueueSettings};
use nimbus_store_sqlite::MessageDb;
use serde_json::Value;

/// Appends each record it gets to $RUN_LOG; reports every body starting with "poison" as a
/// batch item failure.
const WORKER: &str = r#"
import json, os
def handler(event, context):
    failures, lines = [], []
    for r in event["Records"]:
        lines.append(json.dumps({
            "body": r["body"], "id": r["messageId"], "count": r["attributes"]["ApproximateReceiveCount"],
            "source": r["eventSource"], "arn": r["eventSourceARN"], "batch": len(event["Records"]),
        }))
        if r["body"].startswith("poison"):
            failures.append({"itemIdentifier": r["messageId"]})
    fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)
    return {"batchItemFailures": failures}
"#;

fn app(log: &Path) -> App {
    let app = App::new("pipeline");
    app.write_file("functions/worker/app.py", WORKER);
    app.raw(&format!(
        r#"[functions.worker]
runtime = "python"
handler = "app.handler"
timeout = "3s"
env = {{ RUN_LOG = "{}" }}

[queues.jobs]
visibility_timeout = "3s"
max_receive_count = 2
dead_letter_queue = "jobs-dlq"

[queues.jobs-dlq]

[[triggers]]
function = "worker"
queue = "jobs"
batch_size = 10
report_batch_item_failures = true
"#,
        log.display()
    ))
    .finish()
}

/// The queues as the manifest declares them (a deploy makes them so too), the dead-letter
/// queue first.
fn declared() -> [(&'static str, QueueSettings); 2] {
    let redrive = Redrive { dead_letter_queue: "jobs-dlq".into(), max_receive_count: 2 };
    let jobs = QueueSpec { visibility_timeout: Duration::from_secs(3), redrive: Some(redrive), ..QueueSpec::default() };
    [("jobs-dlq", QueueSpec::default().into()), ("jobs", jobs.into())]
}

/// Send `bodies` to `jobs` through the message store in `data_dir` (nimbus not running).
async fn send(data_dir: &Path, bodies: &[&str]) {
    std::fs::create_dir_all(data_dir).unwrap();
    let db = MessageDb::open(&data_dir.join("messages.db")).unwrap();
    for (name, settings) in declared() {
        db.ensure_queue(name, &settings).await.unwrap();
    }
    let messages = bodies
        .iter()
        .map(|b| NewMessage { body: (*b).to_owned(), sender_id: "test".into(), ..NewMessage::default() })
        .collect();
    for sent in db.send("jobs", messages).await.unwrap() {
        sent.unwrap();
    }
    db.close();
}

fn runs(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The value of the /metrics sample `name{labels}` (0 when absent).
fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The reference parser (`prometheus_client.openmetrics.parser`) reads `text`, and the batch
/// sizes are a histogram.
fn assert_valid_openmetrics(text: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let types = common::run_python_json(
        r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
print(json.dumps({f.name: f.type for f in text_string_to_metric_families(open(sys.argv[1]).read())}))
"#,
        &[file.path().to_str().unwrap()],
    );
    assert_eq!(types["nimbus_trigger_batch_size"], "histogram", "{types:#}");
    assert_eq!(types["nimbus_trigger_messages"], "counter", "{types:#}");
    assert_eq!(types["nimbus_queue_depth"], "gauge", "{types:#}");
}

#[tokio::test]
async fn a_worker_drains_the_queue_in_batches_and_the_poison_message_ends_in_the_dlq() {
    let shared = common::shared_tempdir();
    let log = shared.path().join("runs.jsonl");
    let app = app(&log);
    let data_dir = app.path().join(".nimbus");
    let bodies = ["one", "two", "poison", "three", "four"];
    send(&data_dir, &bodies).await;
    let mut server = Server::start(app.path());

    // The poison message is received twice (max_receive_count), then moved to the DLQ.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let text = server.get("/metrics").await.text().await.unwrap();
        if sample(&text, "nimbus_queue_depth", r#"queue="jobs-dlq",state="visible""#) == 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the poison message never reached the DLQ; runs: {:#?}", runs(&log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let labels = r#"function="worker",queue="jobs""#;
    assert_eq!(sample(&metrics, "nimbus_trigger_messages_total", &format!("{labels},kind=\"deleted\"")), 4.0);
    assert_eq!(sample(&metrics, "nimbus_trigger_messages_total", &format!("{labels},kind=\"returned\"")), 2.0);
    assert_eq!(sample(&metrics, "nimbus_queue_depth", r#"queue="jobs",state="visible""#), 0.0);
    assert_eq!(sample(&metrics, "nimbus_queue_messages_total", r#"queue="jobs",event="dead_lettered""#), 1.0);

    assert_valid_openmetrics(&metrics);

    let runs = runs(&log);
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r["source"], "aws:sqs");
        assert_eq!(r["arn"], "arn:aws:sqs:us-east-1:000000000000:jobs");
        seen.entry(r["body"].as_str().unwrap().to_owned()).or_default().push(r["count"].as_str().unwrap().to_owned());
    }
    for body in ["one", "two", "three", "four"] {
        assert_eq!(seen[body], ["1"], "{body} was not processed exactly once: {runs:#?}");
    }
    assert_eq!(seen["poison"], ["1", "2"], "{runs:#?}");
    // All five came in the first batch.
    assert_eq!(runs[0]["batch"], 5, "{runs:#?}");

    let records = server.records("worker", 2).await;
    assert!(records.iter().all(|r| r["trigger"] == "queue" && r["status"] == "success"), "{records:#?}");
    server.stop();

    // The DLQ holds the poison message, with its body.
    let db = MessageDb::open(&data_dir.join("messages.db")).unwrap();
    let dead = db.peek("jobs-dlq", 10).await.unwrap();
    assert_eq!(dead.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["poison"]);
    assert!(db.peek("jobs", 10).await.unwrap().is_empty());
    db.close();
}

/// utime + stime of `pid` in clock ticks (USER_HZ, 100 a second on Linux).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (which may hold spaces): utime is field 14, stime 15.
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn ten_idle_triggers_cost_next_to_no_cpu() {
    let shared = common::shared_tempdir();
    let mut app = App::new("idle");
    app.write_file("functions/worker/app.py", WORKER);
    app = app.raw(&format!(
        "[functions.worker]\nruntime = \"python\"\nhandler = \"app.handler\"\nenv = {{ RUN_LOG = \"{}\" }}\n",
        shared.path().join("runs.jsonl").display()
    ));
    for i in 0..10 {
        app = app.raw(&format!("[queues.q{i}]\n\n[[triggers]]\nfunction = \"worker\"\nqueue = \"q{i}\"\n"));
    }
    let app = app.finish();
    let mut server = Server::start(app.path());
    // Every trigger polls (one poller each, waiting in a long poll).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.get("/metrics").await.text().await.unwrap();
        let polling = (0..10)
            .filter(|i| sample(&text, "nimbus_trigger_pollers", &format!("function=\"worker\",queue=\"q{i}\"")) == 1.0);
        if polling.count() == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the 10 triggers did not start polling:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = cpu_ticks(server.pid());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let used = cpu_ticks(server.pid()) - before;
    // 6 s is 600 ticks of one core; a busy loop would use most of them.
    assert!(used <= 30, "nimbus used {used} ticks (1/100 s) of CPU in 6 idle seconds with 10 triggers");
    assert!(runs(&shared.path().join("runs.jsonl")).is_empty());
    server.stop();
}
