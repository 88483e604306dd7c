//! Bucket triggers, black-box: objects written and deleted through the AWS port's S3 (boto3,
//! unmodified) run the triggered function with Lambda's S3 event; filters hold; and an
//! acknowledged PUT's event survives `kill -9` and is delivered once, also when the outbox row
//! is handed over again after its event was already queued.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{boto3, run_json, App, Server};
use serde_json::Value;

/// Appends one line per run to $RUN_LOG: when it started, its request id (kept across retries)
/// and what it was told, the key decoded as Lambda handlers decode it.
const HANDLER: &str = r#"
import json, os, time, urllib.parse
def handler(event, context):
    t = time.time()
    r = event["Records"][0]
    o = r["s3"]["object"]
    line = json.dumps({
        "t": t, "id": context.aws_request_id, "records": len(event["Records"]),
        "source": r["eventSource"], "name": r["eventName"], "bucket": r["s3"]["bucket"]["name"],
        "raw": o["key"], "key": urllib.parse.unquote_plus(o["key"]), "size": o.get("size"),
        "etag": o.get("eTag"), "sequencer": o["sequencer"],
    })
    fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)
    return {"ok": True}
"#;

/// An app with bucket `photos`, function `onchange` triggered by objects created under `in/`
/// ending `.jpg` and by any removal; the AWS port on.
fn app(log: &Path) -> App {
    let app = App::new("photos");
    app.write_file("functions/onchange/app.py", HANDLER);
    app.raw(&format!(
        r#"[buckets.photos]

[functions.onchange]
runtime = "python"
handler = "app.handler"
timeout = "5s"
env = {{ RUN_LOG = "{}" }}

[[triggers]]
function = "onchange"
bucket = "photos"
events = ["s3:ObjectCreated:*"]
prefix = "in/"
suffix = ".jpg"

[[triggers]]
function = "onchange"
bucket = "photos"
events = ["s3:ObjectRemoved:*"]
"#,
        log.display()
    ))
    .finish()
}

fn start(app: &App, data: &Path) -> (Server, String) {
    let server = Server::start_args(app.path(), data, &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.join("aws.url")).expect("DATA_DIR/aws.url").trim().to_owned();
    (server, url)
}

/// The function's runs so far (a line being written is skipped).
fn runs(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

const OUTBOX_ROWS: &str = r#"
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM outbox").fetchone()[0])
"#;

/// Rows in the server's outbox (read beside it: the database is in WAL mode).
fn outbox_rows(server: &Server) -> u64 {
    let db = server.data_dir.join("objects.db");
    let out = Command::new("python3").arg("-c").arg(OUTBOX_ROWS).arg(db).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Wait (bounded) until `done` holds for the runs, then until the outbox is empty (every row's
/// events are queued) and no async event is left unfinished, so that every event the changes
/// caused has run. Returns the runs.
async fn settle(server: &Server, log: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&runs(log)) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; runs: {:#?}", runs(log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while outbox_rows(server) > 0 {
        assert!(Instant::now() < deadline, "the outbox was not emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let q = server.admin("/v1/queue").await;
        if q["depth"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "async events left unfinished: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runs(log)
}

/// (event name, key) of each run, counted.
fn counted(runs: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for r in runs {
        let k = (r["name"].as_str().unwrap().to_owned(), r["key"].as_str().unwrap().to_owned());
        *out.entry(k).or_default() += 1;
    }
    out
}

const WRITES: &str = r#"
import json, sys, time, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
log = sys.argv[2]
def seen(name, key):
    try:
        lines = open(log).read().splitlines()
    except FileNotFoundError:
        return None
    for l in lines:
        try:
            e = json.loads(l)
        except ValueError:
            continue
        if e["name"] == name and e["key"] == key:
            return e
def wait(name, key):
    deadline = time.time() + 30
    while time.time() < deadline:
        e = seen(name, key)
        if e:
            return e
        time.sleep(0.0005)
    raise SystemExit("no %s event for %s" % (name, key))
out = {}
s3.put_object(Bucket="photos", Key="out/x.jpg", Body=b"outside the prefix")
s3.put_object(Bucket="photos", Key="in/x.png", Body=b"outside the suffix")
put = s3.put_object(Bucket="photos", Key="in/a photo.jpg", Body=b"hello")
out["etag"] = put["ETag"].strip('"')
wait("ObjectCreated:Put", "in/a photo.jpg")
lat = []
for i in range(20):
    k = "in/lat-%d.jpg" % i
    t0 = time.time()
    s3.put_object(Bucket="photos", Key=k, Body=b"x")
    t1 = time.time()
    e = wait("ObjectCreated:Put", k)
    lat.append([(e["t"] - t0) * 1000, (e["t"] - t1) * 1000])
out["latency_ms"] = lat
s3.copy_object(Bucket="photos", Key="in/copy.jpg", CopySource={"Bucket": "photos", "Key": "in/a photo.jpg"})
s3.delete_object(Bucket="photos", Key="out/x.jpg")
s3.delete_object(Bucket="photos", Key="never-there")
print(json.dumps(out))
"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Created and removed objects run the function with Lambda's S3 event, once each, recorded
/// with trigger `bucket`; keys outside the trigger's prefix or suffix, and deletes of absent
/// keys, run nothing.
#[tokio::test(flavor = "multi_thread")]
async fn object_changes_run_the_triggered_function_with_s3_events() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.jsonl");
    let app = app(&log);
    let data = tempfile::tempdir().unwrap();
    let (server, url) = start(&app, data.path());
    let out = run_json(boto3(WRITES, &[&url, log.to_str().unwrap()], data.path()));
    let runs = settle(&server, &log, "the copy and the delete", |r| {
        let c = counted(r);
        c.contains_key(&("ObjectCreated:Copy".into(), "in/copy.jpg".into()))
            && c.contains_key(&("ObjectRemoved:Delete".into(), "out/x.jpg".into()))
    })
    .await;
    let mut want: BTreeMap<(String, String), usize> =
        (0..20).map(|i| (("ObjectCreated:Put".to_owned(), format!("in/lat-{i}.jpg")), 1)).collect();
    want.insert(("ObjectCreated:Put".into(), "in/a photo.jpg".into()), 1);
    want.insert(("ObjectCreated:Copy".into(), "in/copy.jpg".into()), 1);
    want.insert(("ObjectRemoved:Delete".into(), "out/x.jpg".into()), 1);
    assert_eq!(counted(&runs), want, "each matching change once, nothing else");

    let photo = runs.iter().find(|r| r["key"] == "in/a photo.jpg").unwrap();
    assert_eq!(photo["raw"], "in/a+photo.jpg", "the key is URL-encoded as S3 encodes it");
    assert_eq!(
        (&photo["source"], &photo["bucket"], &photo["records"]),
        (&"aws:s3".into(), &"photos".into(), &1.into())
    );
    assert_eq!(photo["size"], 5);
    assert_eq!(photo["etag"], out["etag"]);
    let removed = runs.iter().find(|r| r["name"] == "ObjectRemoved:Delete").unwrap();
    assert!(removed["size"].is_null() && removed["etag"].is_null(), "{removed}");
    // Sequencers grow with the changes: the delete of out/x.jpg came after every put.
    let seq = |r: &Value| u64::from_str_radix(r["sequencer"].as_str().unwrap(), 16).unwrap();
    assert!(runs.iter().filter(|r| r["name"] != "ObjectRemoved:Delete").all(|r| seq(r) < seq(removed)));

    let records = server.records("onchange", runs.len()).await;
    assert!(records.iter().all(|r| r["trigger"] == "bucket"), "{records:#?}");

    let mut from_request: Vec<f64> =
        out["latency_ms"].as_array().unwrap().iter().map(|l| l[0].as_f64().unwrap()).collect();
    let mut from_ack: Vec<f64> = out["latency_ms"].as_array().unwrap().iter().map(|l| l[1].as_f64().unwrap()).collect();
    from_request.sort_by(f64::total_cmp);
    from_ack.sort_by(f64::total_cmp);
    eprintln!(
        "PutObject -> function start, warm, {} samples: p50 {:.1} ms / p90 {:.1} ms from the request, p50 {:.1} ms from the answer",
        from_request.len(),
        percentile(&from_request, 0.5),
        percentile(&from_request, 0.9),
        percentile(&from_ack, 0.5),
    );
}

const PUT_STREAM: &str = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
for i in range(100000):
    s3.put_object(Bucket="photos", Key="in/k%05d.jpg" % i, Body=b"v%d" % i)
    print(i, flush=True)
"#;

/// `kill -9` right after PUTs were acknowledged: after a restart every acknowledged PUT's event
/// runs, each as one event (one request id, whatever retries the crash caused).
#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_put_fires_once_across_kill_9() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.jsonl");
    let app = app(&log);
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = start(&app, data.path());
    let mut writer = boto3(PUT_STREAM, &[&url], data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = writer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line.trim().parse().unwrap()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = 0;
    while acked < 30 {
        acked = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the writer stalled");
    }
    common::unsafe_kill(server.pid(), libc::SIGKILL);
    common::wait_child(&mut server.child, Duration::from_secs(10));
    let _ = writer.wait();
    let last = rx.try_iter().last().unwrap_or(acked);
    let before = runs(&log).len();
    let (server, _) = start(&app, data.path());
    let want: BTreeSet<String> = (0..=last).map(|i| format!("in/k{i:05}.jpg")).collect();
    let runs = settle(&server, &log, "every acknowledged PUT's event", |r| {
        let keys: BTreeSet<String> = r.iter().map(|e| e["key"].as_str().unwrap().to_owned()).collect();
        want.is_subset(&keys)
    })
    .await;
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &runs {
        ids.entry(r["key"].as_str().unwrap()).or_default().insert(r["id"].as_str().unwrap());
    }
    let twice: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "events queued twice: {twice:?}");
    eprintln!("{} PUTs acknowledged, {before} events had run before the kill, {} keys delivered", last + 1, ids.len());
}

/// Re-insert, as a crash between queueing an event and deleting its outbox row leaves it,
/// the outbox row of an event that already ran.
const REINSERT: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("INSERT INTO outbox (id, event, bucket, key, size, etag, time_ms) VALUES (?, 'ObjectCreated:Put', 'photos', 'in/once.jpg', 1, ?, 0)", (int(sys.argv[2], 16), sys.argv[3]))
db.commit()
print("{}")
"#;

const PUT_ONE: &str = r#"
import json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
print(json.dumps({"etag": s3.put_object(Bucket="photos", Key=sys.argv[2], Body=b"1")["ETag"]}))
"#;

/// An outbox row handed over again after its event was queued (the crash window between the
/// two) is recognised by its idempotency key: the event is not queued a second time.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_row_forwarded_again_does_not_fire_twice() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.jsonl");
    let app = app(&log);
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = start(&app, data.path());
    run_json(boto3(PUT_ONE, &[&url, "in/once.jpg"], data.path()));
    let first = settle(&server, &log, "the first event", |r| r.len() == 1).await;
    assert!(server.stop().success());
    let (seq, etag) = (first[0]["sequencer"].as_str().unwrap(), first[0]["etag"].as_str().unwrap());
    let db = data.path().join("objects.db");
    run_json(boto3(REINSERT, &[db.to_str().unwrap(), seq, etag], data.path()));
    let (server, url) = start(&app, data.path());
    // A later change: once its event ran, the re-inserted row (older) was forwarded too.
    run_json(boto3(PUT_ONE, &[&url, "in/after.jpg"], data.path()));
    let runs = settle(&server, &log, "the later event", |r| r.iter().any(|e| e["key"] == "in/after.jpg")).await;
    let once: Vec<&Value> = runs.iter().filter(|r| r["key"] == "in/once.jpg").collect();
    assert_eq!(once.len(), 1, "the event ran again: {runs:#?}");
}
