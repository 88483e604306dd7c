//! Nothing accepted is lost when nimbus dies: 1,000 messages sent with SQS and 200 objects
//! written with S3, `kill -9` while the triggers are still working through them, a restart on
//! the same data directory, and then every message has been processed at least once (duplicates
//! bounded by what could have been in flight) and every object event delivered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{boto3, run_json, unsafe_kill, App, Server};
use serde_json::Value;

const MESSAGES: usize = 1000;
const OBJECTS: usize = 200;
const BATCH: usize = 10;
const CONCURRENCY: usize = 2;

/// Counts each message and each object event in KV; a batch takes a moment so the kill lands
/// while work is left.
const WORKER: &str = r#"
const { kv } = require("nimbus");
const seen = kv("seen");
exports.handler = async (event) => {
  for (const r of event.Records) {
    if (r.eventSource === "aws:s3") await seen.increment(`obj:${r.s3.object.key}`);
    else await seen.increment(`msg:${r.body}`);
  }
  await new Promise((done) => setTimeout(done, 30));
  return {};
};
"#;

fn manifest() -> String {
    format!(
        r#"
[buckets.inbox]
[kv.seen]
[queues.work]
visibility_timeout = "3s"

[functions.worker.grants]
kv = {{ seen = "read-write" }}

[[triggers]]
function = "worker"
queue = "work"
batch_size = {BATCH}
max_concurrency = {CONCURRENCY}

[[triggers]]
function = "worker"
bucket = "inbox"
events = ["s3:ObjectCreated:*"]
"#
    )
}

/// Sends the messages (batches of 10, from 8 threads) and writes the objects; prints when all
/// were acknowledged.
const LOAD: &str = r#"
import json, sys, boto3
from concurrent.futures import ThreadPoolExecutor
url, messages, objects = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sqs = boto3.client("sqs", endpoint_url=url)
s3 = boto3.client("s3", endpoint_url=url)
q = sqs.get_queue_url(QueueName="work")["QueueUrl"]
def send(start):
    entries = [{"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, min(start + 10, messages))]
    r = sqs.send_message_batch(QueueUrl=q, Entries=entries)
    assert not r.get("Failed"), r
def put(i):
    s3.put_object(Bucket="inbox", Key=f"o{i}", Body=b"x")
with ThreadPoolExecutor(8) as pool:
    list(pool.map(send, range(0, messages, 10)))
    list(pool.map(put, range(objects)))
print(json.dumps({"acknowledged": True}))
"#;

fn load(data: &Path, url: &str) {
    let acked = run_json(boto3(LOAD, &[url, &MESSAGES.to_string(), &OBJECTS.to_string()], data));
    assert_eq!(acked["acknowledged"], true);
}

/// Every `seen` key with its count.
async fn counts(server: &Server) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut cursor = String::new();
    // Pages of at most 1,000 keys (the list limit); bounded by the keys there can be.
    for _ in 0..=(MESSAGES + OBJECTS) / 1000 + 1 {
        let list = server.admin(&format!("/v1/kv/seen?limit=1000&cursor={cursor}")).await;
        for k in list["keys"].as_array().unwrap() {
            let name = k["name"].as_str().unwrap();
            let path = format!("/v1/kv/seen/{}", name.replace(':', "%3A"));
            let (status, _, body) = server.admin_request(reqwest::Method::GET, &path, "").await;
            assert_eq!(status, 200);
            out.insert(name.to_owned(), String::from_utf8(body).unwrap().parse().unwrap());
        }
        match list["cursor"].as_str() {
            Some(c) => cursor = c.replace(':', "%3A"),
            None => return out,
        }
    }
    panic!("more pages of keys than there can be keys");
}

#[tokio::test]
async fn kill_9_mid_processing_loses_no_message_and_no_object_event() {
    let app = App::new("events-fault").conformance("node", "worker", "").raw(&manifest()).finish();
    app.write_file("functions/worker/index.js", WORKER);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).unwrap().trim().to_owned();
    load(data.path(), &url);
    let before = counts(&server).await;
    unsafe_kill(server.pid(), libc::SIGKILL);
    drop(server);
    let done_before = before.values().sum::<u64>();
    eprintln!("killed after {done_before} of {} deliveries", MESSAGES + OBJECTS);

    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let seen = counts(&server).await;
        if seen.len() == MESSAGES + OBJECTS {
            break seen;
        }
        assert!(Instant::now() < deadline, "only {} of {} keys after the restart", seen.len(), MESSAGES + OBJECTS);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let q = server.admin("/v1/queues/work").await;
    let q = wait_drained(&server, q).await;
    assert_eq!((q["visible"].clone(), q["inFlight"].clone()), (Value::from(0), Value::from(0)), "{q:#}");

    let messages: u64 = seen.iter().filter(|(k, _)| k.starts_with("msg:")).map(|(_, n)| n).sum();
    let objects: u64 = seen.iter().filter(|(k, _)| k.starts_with("obj:")).map(|(_, n)| n).sum();
    // A message runs twice only if its batch was running (or done but not yet deleted) at the
    // kill: at most `max_concurrency` batches.
    let extra = messages - MESSAGES as u64;
    eprintln!("duplicates: {extra} messages, {} object events", objects - OBJECTS as u64);
    assert!(extra <= (BATCH * CONCURRENCY) as u64, "{extra} duplicate deliveries");
    // An object event runs twice only if its invocation was running at the kill.
    assert!(objects - OBJECTS as u64 <= 32, "{} duplicate object events", objects - OBJECTS as u64);
    assert!(seen.values().all(|n| *n >= 1));
}

async fn wait_drained(server: &Server, mut q: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    while q["visible"] != 0 || q["inFlight"] != 0 {
        assert!(Instant::now() < deadline, "the queue did not drain: {q:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = server.admin("/v1/queues/work").await;
    }
    q
}
