//! The pipeline example (examples/pipeline) end to end, as its README runs it: PNGs uploaded to
//! `uploads` with boto3 fire the bucket trigger of the Python `thumbnail` function, which writes
//! thumbnails, KV metadata and one queue message per image; the Node `indexer` drains the queue
//! in batches and reports the unreadable image as a batch item failure, which ends in the
//! dead-letter queue after `max_receive_count` receives while everything else is done once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{boto3, copy_dir, repo_root, run_json, vendor_python, Server};
use serde_json::Value;

/// Uploads three PNGs of different sizes (made with the example's own codec) and one file that
/// is not a PNG, then prints the thumbnails' sizes once all three exist (bounded wait).
const UPLOAD: &str = r#"
import json, sys, time, boto3
sys.path.insert(0, sys.argv[2])
import png
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
sizes = {"photos/wide one.png": (200, 120), "photos/small.png": (30, 30), "photos/big.png": (640, 480)}
for key, (w, h) in sizes.items():
    rows = [bytearray(b"".join(bytes([x % 256, y % 256, (x ^ y) % 256]) for x in range(w))) for y in range(h)]
    s3.put_object(Bucket="uploads", Key=key, Body=png.encode(w, h, 3, rows))
s3.put_object(Bucket="uploads", Key="bad.png", Body=b"not a png")
s3.put_object(Bucket="uploads", Key="notes.txt", Body=b"no trigger: wrong suffix")
deadline = time.time() + 60
while time.time() < deadline:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="thumbnails").get("Contents", [])]
    if len(keys) == 3:
        break
    time.sleep(0.1)
out = {}
for key in keys:
    w, h, _, _ = png.decode(s3.get_object(Bucket="thumbnails", Key=key)["Body"].read())
    out[key] = [w, h]
print(json.dumps(out))
"#;

/// A KV value as stored, through `/v1/kv` (the key percent-encoded as one segment).
async fn kv_value(server: &Server, ns: &str, key: &str) -> String {
    let key: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
    let (status, _, body) = server.admin_request(reqwest::Method::GET, &format!("/v1/kv/{ns}/{key}"), "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).unwrap()
}

/// Polls `/v1/queues/NAME` until `check` holds (bounded).
async fn wait_queue(server: &Server, name: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let q = server.admin(&format!("/v1/queues/{name}")).await;
        if check(&q) {
            return q;
        }
        assert!(Instant::now() < deadline, "timed out waiting for queue {name}: {q:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_pipeline_example_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("pipeline");
    copy_dir(&repo_root().join("examples/pipeline"), &app);
    let code = app.join("functions/thumbnail");
    vendor_python(&code, &["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3"]);
    let data = dir.path().join("data");
    let server = Server::start_args(&app, &data, &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.join("aws.url")).unwrap().trim().to_owned();

    let thumbs = run_json(boto3(UPLOAD, &[&url, code.to_str().unwrap()], &data));
    let want =
        serde_json::json!({"photos/wide one.png": [64, 38], "photos/small.png": [30, 30], "photos/big.png": [64, 48]});
    assert_eq!(thumbs, want);
    let meta: Value = serde_json::from_str(&kv_value(&server, "images", "photos/wide one.png").await).unwrap();
    assert_eq!((meta["width"].clone(), meta["thumbWidth"].clone()), (200.into(), 64.into()), "{meta:#}");

    // The unreadable image: failed by the indexer on each of its 2 receives, then dead-lettered.
    let dlq = wait_queue(&server, "indexed-dlq", Duration::from_secs(60), |q| q["visible"] == 1).await;
    assert_eq!(dlq["visible"], 1);
    let q = wait_queue(&server, "indexed", Duration::from_secs(30), |q| q["visible"] == 0 && q["inFlight"] == 0).await;
    assert_eq!((q["sent"].clone(), q["deadLettered"].clone()), (4.into(), 1.into()), "{q:#}");
    let peeked = server.admin("/v1/queues/indexed-dlq/messages").await;
    let body: Value = serde_json::from_str(peeked[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!((body["key"].as_str(), peeked[0]["sourceQueue"].as_str()), (Some("bad.png"), Some("indexed")));

    // Every readable image indexed exactly once; the records name their triggers.
    let day = server.admin("/v1/kv/images?prefix=count:").await;
    let counter = day["keys"][0]["name"].as_str().unwrap().to_owned();
    assert_eq!(kv_value(&server, "images", &counter).await, "3");
    let records = server.records("thumbnail", 4).await;
    assert!(records.iter().all(|r| r["trigger"] == "bucket"), "{records:#?}");
    assert_eq!(records.len(), 4, "one run per PNG upload; notes.txt (wrong suffix) fired nothing");
    let records = server.records("indexer", 1).await;
    assert!(records.iter().all(|r| r["trigger"] == "queue"), "{records:#?}");
}
