//! Storage usage, end to end: boto3's S3 traffic and KV calls show up in `GET /v1/usage` and
//! `nimbus usage` as S3 and Cloudflare KV bill them (class A / class B, reads / writes / deletes
//! / lists, bytes exactly as sent), priced with `[pricing]`, and in `/metrics`; the counts are
//! written to the hourly rows at stop and read back after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{App, Server};
use serde_json::Value;

const TRAFFIC: &str = r#"
import json, sys
import boto3, botocore
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
for key, size in [("one", 1000), ("two", 2000), ("three", 3000)]:
    s3.put_object(Bucket="media", Key=key, Body=b"x" * size)
got = [len(s3.get_object(Bucket="media", Key="two")["Body"].read()) for _ in range(2)]
s3.head_object(Bucket="media", Key="three")
s3.list_objects_v2(Bucket="media")
try:
    s3.get_object(Bucket="media", Key="missing")
    missing = "ok"
except botocore.exceptions.ClientError as e:
    missing = e.response["Error"]["Code"]
s3.delete_object(Bucket="media", Key="one")
print(json.dumps({"got": got, "missing": missing}))
"#;

fn start(app: &Path, data: &Path) -> Server {
    Server::start_args(app, data, &["--aws-listen", "127.0.0.1:0"])
}

fn traffic(data: &Path) -> Value {
    let url = std::fs::read_to_string(data.join("aws.url")).unwrap().trim().to_owned();
    common::run_json(common::boto3(TRAFFIC, &[&url], data))
}

async fn kv(server: &Server, method: reqwest::Method, path: &str, body: &str) -> u16 {
    server.admin_request(method, path, body).await.0
}

fn entry<'a>(usage: &'a Value, kind: &str, name: &str) -> &'a Value {
    usage["storage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == kind && s["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {usage:#}"))
}

/// What the traffic below must add up to, whether read from memory or from the stored rows.
fn check_usage(usage: &Value) {
    let b = entry(usage, "bucket", "media");
    let ctx = format!("{b:#}");
    // Class A: 3 PUTs and 1 LIST; class B: 2 GETs, 1 HEAD and the GET of a missing key (S3
    // bills refused requests too); the DELETE is free.
    assert_eq!(
        (b["classA"].as_u64(), b["classB"].as_u64(), b["deletes"].as_u64()),
        (Some(4), Some(4), Some(1)),
        "{ctx}"
    );
    assert_eq!((b["bytesIn"].as_u64(), b["bytesOut"].as_u64()), (Some(6000), Some(4000)), "{ctx}");
    assert_eq!((b["objects"].as_u64(), b["bytes"].as_u64()), (Some(2), Some(5000)), "{ctx}");
    // [pricing] below: class A at 2 per million, class B at 1 per million.
    let want = 4.0 * 2.0 / 1e6 + 4.0 / 1e6;
    assert!((b["requestCost"].as_f64().unwrap() - want).abs() < 1e-12, "{ctx}");
    let n = entry(usage, "kv", "cache");
    let ctx = format!("{n:#}");
    let counts: Vec<_> =
        ["reads", "writes", "deletes", "lists", "bytesIn", "bytesOut"].iter().map(|k| n[k].as_u64().unwrap()).collect();
    assert_eq!(counts, [2, 2, 1, 1, 9, 10], "{ctx}");
    assert_eq!((n["objects"].as_u64(), n["bytes"].as_u64()), (Some(1), Some(5)), "key b and value 1234: {ctx}");
    assert!(usage["storageTotal"]["cost"].as_f64().unwrap() > 0.0, "{usage:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_and_kv_traffic_is_counted_priced_exported_and_kept() {
    let app = App::new("storage-usage")
        .conformance("node", "hello", "")
        .raw("[buckets.media]\n[kv.cache]\n[pricing]\nper_million_class_a = 2\nper_million_class_b = 1")
        .finish();
    let data = tempfile::tempdir().unwrap();
    let mut server = start(app.path(), data.path());
    let out = traffic(data.path());
    assert_eq!(out, serde_json::json!({"got": [2000, 2000], "missing": "NoSuchKey"}));
    use reqwest::Method;
    assert_eq!(kv(&server, Method::PUT, "/v1/kv/cache/a", "hello").await, 200);
    assert_eq!(kv(&server, Method::PUT, "/v1/kv/cache/b", "1234").await, 200);
    assert_eq!(kv(&server, Method::GET, "/v1/kv/cache/a", "").await, 200);
    assert_eq!(kv(&server, Method::GET, "/v1/kv/cache/a", "").await, 200);
    assert_eq!(kv(&server, Method::GET, "/v1/kv/cache?prefix=", "").await, 200);
    assert_eq!(kv(&server, Method::DELETE, "/v1/kv/cache/a", "").await, 200);

    check_usage(&server.admin("/v1/usage").await);

    let metrics = server.get("/metrics").await.text().await.unwrap();
    for line in [
        "nimbus_s3_operations_total{operation=\"PutObject\"} 3",
        "nimbus_s3_operations_total{operation=\"GetObject\"} 3",
        "nimbus_s3_operations_total{operation=\"DeleteObject\"} 1",
        "nimbus_s3_errors_total{code=\"NoSuchKey\"} 1",
        "nimbus_s3_bytes_total{direction=\"in\"} 6000",
        "nimbus_s3_bytes_total{direction=\"out\"} 4000",
        "nimbus_bucket_objects{bucket=\"media\"} 2",
        "nimbus_bucket_stored_bytes{bucket=\"media\"} 5000",
        "nimbus_kv_keys{namespace=\"cache\"} 1",
        "nimbus_kv_stored_bytes{namespace=\"cache\"} 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no line {line:?} in:\n{metrics}");
    }

    let cli = server.cli(&["usage"]);
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{text}{}", String::from_utf8_lossy(&cli.stderr));
    let row = text.lines().find(|l| l.starts_with("bucket") && l.contains("media")).unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<_> = row.split_whitespace().collect();
    assert_eq!(cols[2..8], ["2", "5000", "4", "4", "6000", "4000"], "{text}");
    assert!(text.contains("storage total:"), "{text}");

    // The counts were in memory; a stop writes them to the hourly rows, a restart reads them.
    assert!(server.stop().success());
    let server = start(app.path(), data.path());
    check_usage(&server.admin("/v1/usage").await);
}
