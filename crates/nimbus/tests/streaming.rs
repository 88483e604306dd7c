//! Response streaming and `waitUntil` on the process runtimes, end to end: a Node handler
//! wrapped in `awslambda.streamifyResponse`, a Python generator handler, errors, the cap and
//! the timeout mid-stream, boto3's `invoke_with_response_stream` on Node, Python and the
//! `lambda_runtime` crate (wasm's is in `streaming_wasm.rs`), and background work after the
//! response (Node `context.waitUntil` / `require("nimbus").waitUntil`, Python
//! `context.wait_until`).
//!
//! Synchronisation is by real signals: a handler blocks on a marker file the test creates only
//! after it has seen what must come first (the first chunk, the response), polling for it at
//! most 10 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{App, Server};
use serde_json::Value;

const NODE_WAIT: &str = r#"
const fs = require('fs');
async function waitFile(p) {
  for (let i = 0; i < 1000; i++) {
    if (fs.existsSync(p)) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('the marker never appeared: ' + p);
}
"#;

const PY_WAIT: &str = r#"
import os, time
def wait_file(p):
    for _ in range(1000):
        if os.path.exists(p):
            return
        time.sleep(0.01)
    raise RuntimeError("the marker never appeared: " + p)
"#;

/// An app with one function `f` of `runtime` whose code is `code` (file `name`), behind
/// `GET /f`, with `extra` manifest lines; `MARK` names a marker path the test controls.
fn app(runtime: &str, handler: &str, (name, code): (&str, &str), extra: &str, mark: &Path) -> App {
    let app = App::new("streaming");
    app.write_file(&format!("functions/f/{name}"), code);
    app.raw(&format!(
        "[functions.f]\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\nenv = {{ MARK = \"{}\" }}\n{extra}\n",
        mark.display()
    ))
    .route("GET", "/f", "f")
    .finish()
}

/// The next piece of a streamed body, within 10 s.
async fn next_chunk(resp: &mut reqwest::Response) -> Option<Vec<u8>> {
    let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.expect("a chunk within 10 s");
    chunk.ok().flatten().map(|b| b.to_vec())
}

/// Read `resp` until `want` has arrived (or the body ends), within 10 s.
async fn read_until(resp: &mut reqwest::Response, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..1000 {
        if got.windows(want.len()).any(|w| w == want) {
            break;
        }
        match next_chunk(resp).await {
            Some(c) => got.extend_from_slice(&c),
            None => break,
        }
    }
    got
}

/// The rest of a body: what arrived, and whether it ended cleanly (an error mid-stream ends it
/// without the last chunk).
async fn rest(resp: &mut reqwest::Response) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.expect("the body ends within 10 s") {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return (got, true),
            Err(_) => return (got, false),
        }
    }
    (got, false)
}

fn touch(p: &Path) {
    std::fs::write(p, b"go").unwrap();
}

/// The log text of invocation `id` of `f`.
async fn log_of(server: &Server, id: &str) -> String {
    let logs = server.admin("/v1/functions/f/logs").await;
    let entries = logs["entries"].as_array().cloned().unwrap_or_default();
    entries.iter().filter(|e| e["requestId"] == id).map(|e| e["text"].as_str().unwrap_or_default().to_owned()).collect()
}

/// The last record of `f`.
async fn last_record(server: &Server) -> Value {
    server.records("f", 1).await.into_iter().next().unwrap()
}

#[tokio::test]
async fn node_streams_to_the_client_before_the_handler_finishes() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = format!(
        "{NODE_WAIT}
exports.handler = awslambda.streamifyResponse(async (event, responseStream, context) => {{
  const out = awslambda.HttpResponseStream.from(responseStream, {{
    statusCode: 201, headers: {{ 'content-type': 'text/event-stream', 'x-from': 'prelude' }},
  }});
  out.write('data: first\\n\\n');
  await waitFile(process.env.MARK);
  out.write('data: second\\n\\n');
  out.end();
}});
"
    );
    let app =
        app("node", "index.handler", ("index.js", &code), "response_mode = \"streaming\"\ntimeout = \"20s\"", &mark);
    let server = Server::start(app.path());
    let mut resp = server.get("/f").await;
    assert_eq!(resp.status(), 201, "the prelude's status");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-from"], "prelude");
    let first = read_until(&mut resp, b"data: first\n\n").await;
    assert_eq!(first, b"data: first\n\n", "the first event arrives while the handler waits");
    touch(&mark);
    let (tail, clean) = rest(&mut resp).await;
    assert_eq!(tail, b"data: second\n\n");
    assert!(clean);
    let record = last_record(&server).await;
    assert_eq!(record["status"], "success", "{record:#}");
}

#[tokio::test]
async fn a_python_generator_streams_each_yield() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = format!(
        "{PY_WAIT}
def handler(event, context):
    yield {{\"statusCode\": 200, \"headers\": {{\"content-type\": \"text/plain\"}}}}
    yield \"first;\"
    wait_file(os.environ[\"MARK\"])
    yield b\"second\"
"
    );
    let app = app(
        "python",
        "handler.handler",
        ("handler.py", &code),
        "response_mode = \"streaming\"\ntimeout = \"20s\"",
        &mark,
    );
    let server = Server::start(app.path());
    let mut resp = server.get("/f").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(read_until(&mut resp, b"first;").await, b"first;");
    touch(&mark);
    let (tail, clean) = rest(&mut resp).await;
    assert_eq!(tail, b"second");
    assert!(clean);
}

#[tokio::test]
async fn an_error_mid_stream_ends_the_stream_and_is_recorded_as_the_functions_error() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "exports.handler = awslambda.streamifyResponse(async (event, stream) => {
  stream.write('partial');
  await new Promise((r) => setTimeout(r, 1));
  const e = new Error('broke mid-stream'); e.name = 'MidStreamError'; throw e;
});
";
    let app =
        app("node", "index.handler", ("index.js", code), "response_mode = \"streaming\"\ntimeout = \"20s\"", &mark);
    let server = Server::start(app.path());
    let mut resp = server.get("/f").await;
    assert_eq!(resp.status(), 200);
    let (body, clean) = rest(&mut resp).await;
    assert_eq!(body, b"partial");
    assert!(!clean, "an error mid-stream does not end the body cleanly");
    let record = last_record(&server).await;
    assert_eq!(record["status"], "function_error", "{record:#}");
    assert_eq!(record["errorType"], "MidStreamError", "{record:#}");
}

#[tokio::test]
async fn a_stream_past_max_stream_bytes_is_cut_off() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "exports.handler = awslambda.streamifyResponse(async (event, stream) => {
  for (let i = 0; i < 8; i++) {
    await new Promise((r) => stream.write(Buffer.alloc(1000, 120), r));
  }
  stream.end();
});
";
    let extra = "response_mode = \"streaming\"\nmax_stream_bytes = 2500\ntimeout = \"20s\"";
    let app = app("node", "index.handler", ("index.js", code), extra, &mark);
    let server = Server::start(app.path());
    let mut resp = server.get("/f").await;
    let (body, clean) = rest(&mut resp).await;
    assert!(body.len() <= 2500, "{} bytes went through a 2500-byte cap", body.len());
    assert!(!clean, "the cut-off stream does not end cleanly");
    let record = last_record(&server).await;
    assert_ne!(record["status"], "success", "{record:#}");
}

#[tokio::test]
async fn the_timeout_ends_a_stream_and_kills_the_instance() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "exports.handler = awslambda.streamifyResponse(async (event, stream) => {
  stream.write('tick');
  await new Promise((r) => setTimeout(r, 60000));
});
";
    let extra = "response_mode = \"streaming\"\ntimeout = \"1s\"";
    let app = app("node", "index.handler", ("index.js", code), extra, &mark);
    let server = Server::start(app.path());
    let began = Instant::now();
    let mut resp = server.get("/f").await;
    let (body, clean) = rest(&mut resp).await;
    assert_eq!(body, b"tick");
    assert!(!clean);
    assert!(began.elapsed() < Duration::from_secs(10), "ended by the 1 s timeout, not the handler");
    let record = last_record(&server).await;
    assert_eq!(record["status"], "timeout", "{record:#}");
    server
        .wait_for("the timed-out instance to go", Duration::from_secs(10), |v| {
            v.to_string().matches("\"pid\"").count() == 0
        })
        .await;
}

/// `concurrency > 1` with streaming: two streams in flight at once from one Node process, each
/// to its own client, both complete.
#[tokio::test]
async fn streams_of_invocations_in_flight_together_come_from_one_instance() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = format!(
        "{NODE_WAIT}
exports.handler = awslambda.streamifyResponse(async (event, stream, context) => {{
  stream.write(`start ${{process.pid}} ${{context.awsRequestId}}\n`);
  await waitFile(process.env.MARK);
  stream.write(`end ${{context.awsRequestId}}`);
  stream.end();
}});
"
    );
    let extra = "response_mode = \"streaming\"\nconcurrency = 2\nmax_instances = 1\ntimeout = \"20s\"";
    let app = app("node", "index.handler", ("index.js", &code), extra, &mark);
    let server = Server::start(app.path());
    let mut first = server.get("/f").await;
    let mut second = server.get("/f").await;
    let a = String::from_utf8(read_until(&mut first, b"\n").await).unwrap();
    let b = String::from_utf8(read_until(&mut second, b"\n").await).unwrap();
    let (pid_a, id_a) = a.trim().strip_prefix("start ").unwrap().split_once(' ').unwrap();
    let (pid_b, id_b) = b.trim().strip_prefix("start ").unwrap().split_once(' ').unwrap();
    assert_eq!(pid_a, pid_b, "one process streams both: {a} / {b}");
    assert_ne!(id_a, id_b);
    touch(&mark);
    for (resp, id) in [(&mut first, id_a), (&mut second, id_b)] {
        let (tail, clean) = rest(resp).await;
        assert_eq!(String::from_utf8(tail).unwrap(), format!("end {id}"), "each stream gets its own end");
        assert!(clean);
    }
    for r in server.records("f", 2).await {
        assert_eq!(r["status"], "success", "{r:#}");
    }
}

/// With `concurrency > 1` one stream's timeout stops the instance: its stream ends with the
/// timeout, the other stream in flight ends saying why.
#[tokio::test]
async fn a_timeout_ends_every_stream_on_the_instance_each_saying_why() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "exports.handler = awslambda.streamifyResponse(async (event, stream) => {
  stream.write('tick');
  await new Promise((r) => setTimeout(r, 60000));
});
";
    let extra = "response_mode = \"streaming\"\nconcurrency = 2\nmax_instances = 1\ntimeout = \"2s\"";
    let app = app("node", "index.handler", ("index.js", code), extra, &mark);
    let server = Server::start(app.path());
    let began = Instant::now();
    let mut first = server.get("/f").await;
    let mut second = server.get("/f").await;
    for resp in [&mut first, &mut second] {
        let (body, clean) = rest(resp).await;
        assert_eq!(body, b"tick");
        assert!(!clean, "cut off, not ended");
    }
    assert!(began.elapsed() < Duration::from_secs(10), "ended by the 2 s timeout, not the handler");
    let records = server.records("f", 2).await;
    let statuses: Vec<&str> = records.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"timeout"), "{records:#?}");
    let other = records.iter().find(|r| r["status"] != "timeout").unwrap();
    assert!(other.to_string().contains("the instance was stopped"), "{other:#}");
}

#[tokio::test]
async fn wait_until_work_runs_after_the_response_and_belongs_to_the_invocation() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let done = shared.path().join("bg-done");
    let code = format!(
        "{NODE_WAIT}
const nimbus = require('nimbus');
exports.handler = async (event, context) => {{
  context.waitUntil(waitFile(process.env.MARK).then(() => console.log('background one done')));
  nimbus.waitUntil((async () => {{
    await waitFile(process.env.MARK);
    console.log('background two done');
    fs.writeFileSync(process.env.MARK + '-bg', 'x');
  }})());
  return {{ statusCode: 200, body: 'answered' }};
}};
"
    );
    let app = app("node", "index.handler", ("index.js", &code), "timeout = \"20s\"", &mark);
    let server = Server::start(app.path());
    let resp = server.get("/f").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "answered", "the response comes before the background work");
    assert!(!shared.path().join("go-bg").exists(), "the background work is still waiting");
    assert!(!done.exists());
    touch(&mark);
    let record = last_record(&server).await;
    assert_eq!(record["status"], "success", "{record:#}");
    let log = log_of(&server, record["requestId"].as_str().unwrap()).await;
    assert!(log.contains("background one done") && log.contains("background two done"), "{log}");
    let total = record["durationMs"].as_f64().unwrap();
    let response = record["responseMs"].as_f64().expect("the record has the response time apart");
    assert!(response < total, "response {response} ms, total {total} ms");
}

#[tokio::test]
async fn python_wait_until_runs_after_the_response() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = format!(
        "{PY_WAIT}
def later():
    wait_file(os.environ[\"MARK\"])
    print(\"python background done\")

async def later_async():
    print(\"python async background done\")

def handler(event, context):
    context.wait_until(later)
    context.wait_until(later_async())
    return {{\"statusCode\": 200, \"body\": \"answered\"}}
"
    );
    let app = app("python", "handler.handler", ("handler.py", &code), "timeout = \"20s\"", &mark);
    let server = Server::start(app.path());
    let resp = server.get("/f").await;
    assert_eq!(resp.text().await.unwrap(), "answered");
    touch(&mark);
    let record = last_record(&server).await;
    assert_eq!(record["status"], "success", "{record:#}");
    let log = log_of(&server, record["requestId"].as_str().unwrap()).await;
    assert!(log.contains("python background done") && log.contains("python async background done"), "{log}");
}

#[tokio::test]
async fn the_timeout_stops_wait_until_work() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "exports.handler = async (event, context) => {
  context.waitUntil(new Promise((r) => setTimeout(r, 60000)));
  return { statusCode: 200, body: 'answered' };
};
";
    let app = app("node", "index.handler", ("index.js", code), "timeout = \"1s\"", &mark);
    let server = Server::start(app.path());
    let resp = server.get("/f").await;
    assert_eq!(resp.text().await.unwrap(), "answered", "the caller has its answer");
    let record = last_record(&server).await;
    assert_eq!(record["status"], "timeout", "{record:#}");
    server
        .wait_for("the timed-out instance to go", Duration::from_secs(10), |v| {
            v.to_string().matches("\"pid\"").count() == 0
        })
        .await;
}

/// boto3's `invoke_with_response_stream`, unmodified: the chunks and the `InvokeComplete` event.
const BOTO3_STREAM: &str = r#"
import json, sys, boto3
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
r = c.invoke_with_response_stream(FunctionName=sys.argv[2], Payload=sys.argv[3])
chunks, complete = [], None
for ev in r["EventStream"]:
    if "PayloadChunk" in ev:
        chunks.append(ev["PayloadChunk"]["Payload"].decode("latin-1"))
    if "InvokeComplete" in ev:
        complete = ev["InvokeComplete"]
print(json.dumps({"status": r["StatusCode"], "chunks": chunks, "complete": complete}))
"#;

/// boto3's `invoke_with_response_stream` on `f` reads three chunks and a clean end, then, for
/// `{"fail": true}`, the same chunks and the `LateError: failed after three` trailer.
fn three_chunks_then_a_late_error(server: &Server) {
    let body = |v: &Value| -> String { v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect() };
    let v = common::run_python_json(BOTO3_STREAM, &[&server.url, "f", "{}"]);
    assert_eq!(v["status"], 200, "{v:#}");
    assert_eq!(body(&v), "chunk 1;chunk 2;chunk 3;", "{v:#}");
    assert!(v["complete"].get("ErrorCode").is_none_or(Value::is_null), "{v:#}");
    let v = common::run_python_json(BOTO3_STREAM, &[&server.url, "f", r#"{"fail":true}"#]);
    assert_eq!(body(&v), "chunk 1;chunk 2;chunk 3;", "{v:#}");
    assert_eq!(v["complete"]["ErrorCode"], "LateError", "{v:#}");
    assert_eq!(v["complete"]["ErrorDetails"], "failed after three", "{v:#}");
}

#[tokio::test]
async fn boto3_invoke_with_response_stream_reads_a_node_stream_and_its_error() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "exports.handler = awslambda.streamifyResponse(async (event, stream) => {
  for (let i = 1; i <= 3; i++) {
    await new Promise((r) => stream.write(`chunk ${i};`, r));
  }
  if (event.fail) { const e = new Error('failed after three'); e.name = 'LateError'; throw e; }
  stream.end();
});
";
    let app =
        app("node", "index.handler", ("index.js", code), "response_mode = \"streaming\"\ntimeout = \"20s\"", &mark);
    let server = Server::start(app.path());
    three_chunks_then_a_late_error(&server);
}

#[tokio::test]
async fn boto3_invoke_with_response_stream_reads_a_python_generator_and_its_error() {
    let shared = common::shared_tempdir();
    let mark = shared.path().join("go");
    let code = "class LateError(Exception):
    pass


def handler(event, context):
    for i in range(1, 4):
        yield f\"chunk {i};\"
    if event.get(\"fail\"):
        raise LateError(\"failed after three\")
";
    let app = app(
        "python",
        "handler.handler",
        ("handler.py", code),
        "response_mode = \"streaming\"\ntimeout = \"20s\"",
        &mark,
    );
    let server = Server::start(app.path());
    three_chunks_then_a_late_error(&server);
    let record = last_record(&server).await;
    assert_eq!(record["status"], "function_error", "{record:#}");
}

/// The official `lambda_runtime` crate's streaming response, unmodified (the conformance fixture's
/// `stream` and `stream-error` ops), read with boto3.
#[tokio::test]
async fn the_lambda_runtime_crates_streaming_response_works_unmodified() {
    let app =
        App::new("rust-stream").conformance("rust", "f", "response_mode = \"streaming\"\ntimeout = \"20s\"").finish();
    let server = Server::start(app.path());
    let v = common::run_python_json(BOTO3_STREAM, &[&server.url, "f", r#"{"op":"stream"}"#]);
    let body: String = v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(body, "chunk 1;chunk 2;chunk 3;", "the body after the crate's prelude: {v:#}");
    assert!(v["complete"].get("ErrorCode").is_none_or(Value::is_null), "{v:#}");
    let v = common::run_python_json(BOTO3_STREAM, &[&server.url, "f", r#"{"op":"stream-error"}"#]);
    let body: String = v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(body, "chunk 1;chunk 2;chunk 3;", "{v:#}");
    assert!(v["complete"]["ErrorCode"].as_str().is_some_and(|c| !c.is_empty()), "the crate's error trailer: {v:#}");
    let record = last_record(&server).await;
    assert_eq!(record["status"], "function_error", "{record:#}");
}
