//! Black-box tests of response streaming and `waitUntil` (issue 15 §2–3) on wasm functions:
//! server-sent events reach the client as the guest writes them, a guest may run on after its
//! response, boto3's `invoke_with_response_stream` works unmodified, and the cap and the timeout
//! end a stream mid-way as Lambda does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use common::{run_python_json, App, Server};
use serde_json::{json, Value};

/// A streaming wasm function `f` (the conformance guest) on `/fn/*`.
fn streaming_app(name: &str, extra: &str) -> App {
    streaming(App::new(name), extra).finish()
}

fn streaming(app: App, extra: &str) -> App {
    let extra = format!("response_mode = \"streaming\"\n{extra}");
    app.conformance("wasm", "f", &extra).route("*", "/fn/*", "f")
}

/// A loopback server the guest fetches between two writes: each request is answered only once
/// the test sends on the returned channel, so the test decides when the guest goes on. Returns
/// the gate's URL.
fn gate() -> (String, mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { break };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            if rx.recv_timeout(Duration::from_secs(20)).is_err() {
                break;
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (format!("http://127.0.0.1:{port}/gate"), tx)
}

/// Read from `resp` until the body so far contains `want` (bounded: 10 s per read).
async fn read_until(resp: &mut reqwest::Response, body: &mut String, want: &str) {
    for _ in 0..1000 {
        if body.contains(want) {
            return;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await;
        match chunk {
            Ok(Ok(Some(c))) => body.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("the stream ended before {want:?} ({other:?}); so far: {body:?}"),
        }
    }
    panic!("{want:?} never came; so far: {body:?}");
}

#[tokio::test]
async fn server_sent_events_reach_the_client_before_the_next_is_written() {
    let (gate_url, release) = gate();
    let app = streaming_app("sse", &format!("allowed_outbound_hosts = [\"{}\"]", gate_url.replace("/gate", "")));
    let server = Server::start(app.path());
    let mut resp = server.get(&format!("/fn/stream?n=3&gate={gate_url}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = String::new();
    // Event 2 is written only after the gate opens, and the gate opens only once the client
    // holds event 1: the client got event 1 while the handler was still running.
    read_until(&mut resp, &mut body, "data: event 1\n\n").await;
    assert!(!body.contains("event 2"), "event 2 came before the gate opened: {body:?}");
    release.send(()).unwrap();
    read_until(&mut resp, &mut body, "data: event 2\n\n").await;
    assert!(!body.contains("event 3"), "{body:?}");
    release.send(()).unwrap();
    read_until(&mut resp, &mut body, "data: event 3\n\n").await;
    assert!(resp.chunk().await.unwrap().is_none(), "the stream ends after the last event");
    let rows = server.records("f", 1).await;
    assert_eq!(rows[0]["status"], json!("success"), "{:#}", rows[0]);
}

#[tokio::test]
async fn a_guest_runs_on_after_its_response_and_the_record_shows_both_times() {
    let (gate_url, release) = gate();
    let app = streaming_app("after", &format!("allowed_outbound_hosts = [\"{}\"]", gate_url.replace("/gate", "")));
    let server = Server::start(app.path());
    // The whole response arrives while the guest waits at the gate, which opens only after.
    let resp = server.get(&format!("/fn/after?gate={gate_url}")).await;
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text()).await.unwrap().unwrap();
    assert_eq!(text, "answered");
    // The instance stays busy while the guest runs on, and nothing is recorded yet.
    let functions = server.admin("/v1/functions").await;
    let busy: u64 = functions
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == "f")
        .flat_map(|f| f["pools"].as_array().unwrap())
        .map(|p| p["busy"].as_u64().unwrap())
        .sum();
    assert_eq!(busy, 1, "the instance is busy until the guest returns: {functions:#}");
    let none = server.admin("/v1/invocations?function=f").await;
    assert_eq!(none.as_array().map(Vec::len), Some(0), "recorded before the guest returned: {none:#}");
    release.send(()).unwrap();
    let rows = server.records("f", 1).await;
    let r = &rows[0];
    assert_eq!(r["status"], json!("success"), "{r:#}");
    let (response, total) = (r["responseMs"].as_f64().unwrap(), r["durationMs"].as_f64().unwrap());
    assert!(response < total, "response {response} ms should end before the invocation {total} ms: {r:#}");
    let id = r["requestId"].as_str().unwrap();
    let logs = server.admin(&format!("/v1/functions/f/logs?requestId={id}")).await;
    assert!(logs.to_string().contains("background work done"), "the background log line is the invocation's: {logs:#}");
}

/// boto3's `invoke_with_response_stream`, unmodified: the chunks and the `InvokeComplete` event.
const BOTO3_STREAM: &str = r#"
import json, sys, boto3
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
r = c.invoke_with_response_stream(FunctionName=sys.argv[2], Payload=sys.argv[3], LogType="Tail")
chunks, complete = [], None
for ev in r["EventStream"]:
    if "PayloadChunk" in ev:
        chunks.append(ev["PayloadChunk"]["Payload"].decode("latin-1"))
    if "InvokeComplete" in ev:
        complete = ev["InvokeComplete"]
print(json.dumps({"status": r["StatusCode"], "version": r.get("ExecutedVersion"), "chunks": chunks, "complete": complete}))
"#;

fn boto3_stream(server: &Server, function: &str, payload: &Value) -> Value {
    run_python_json(BOTO3_STREAM, &[&server.url, function, &payload.to_string()])
}

#[tokio::test]
async fn boto3_invoke_with_response_stream_gets_the_chunks_and_the_end() {
    let app = streaming(App::new("boto-stream"), "").conformance("wasm", "buffered", "").finish();
    let server = Server::start(app.path());
    let v = boto3_stream(&server, "f", &json!({"op": "stream", "n": 3}));
    assert_eq!(v["status"], 200, "{v:#}");
    let body: String = v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(body, "data: event 1\n\ndata: event 2\n\ndata: event 3\n\n", "{v:#}");
    let complete = &v["complete"];
    assert!(complete.get("ErrorCode").is_none() || complete["ErrorCode"].is_null(), "{v:#}");
    let log = String::from_utf8(base64_decode(complete["LogResult"].as_str().unwrap())).unwrap();
    assert!(log.contains("START RequestId") && log.contains("REPORT RequestId"), "{log}");
    // A buffered function answers the same operation with one chunk.
    let v = boto3_stream(&server, "buffered", &json!({"op": "hello"}));
    assert_eq!(v["chunks"], json!(["Hello from wasm"]), "{v:#}");
}

#[tokio::test]
async fn the_cap_and_the_timeout_end_a_stream_midway() {
    let app = streaming_app("stream-ends", "max_stream_bytes = 10000\ntimeout = \"1s\"");
    let server = Server::start(app.path());
    // Over the cap: the event stream ends with the error…
    let v = boto3_stream(&server, "f", &json!({"op": "big", "n": 100000}));
    let sent: usize = v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().len()).sum();
    assert!(sent <= 10000, "{sent} bytes passed a 10000-byte cap");
    assert_eq!(v["complete"]["ErrorCode"], "Function.ResponseSizeTooLarge", "{v:#}");
    // …and a route's body is cut short.
    // (hyper may not have flushed the head before the cut: then the response is cut there.)
    let sent = server.client().get(format!("{}/fn/big?n=100000", server.url)).send().await;
    if let Ok(resp) = sent {
        assert_eq!(resp.status(), 200);
        let got = resp.bytes().await;
        assert!(got.as_ref().map_or(true, |b| b.len() < 100000), "the body was not cut: {:?}", got.map(|b| b.len()));
    }
    // A timeout after the first event: the event arrives, then the stream ends with the error.
    let v = boto3_stream(&server, "f", &json!({"op": "drip", "ms": 10000}));
    assert_eq!(v["chunks"], json!(["data: first\n\n"]), "{v:#}");
    assert_eq!(v["complete"]["ErrorCode"], "Sandbox.Timedout", "{v:#}");
    let rows = server.records("f", 3).await;
    let timed_out = rows.iter().find(|r| r["status"] == json!("timeout")).expect("a timeout record");
    assert!(timed_out["responseMs"].is_number(), "{timed_out:#}");
    assert!(rows.iter().filter(|r| r["errorType"] == json!("Function.ResponseSizeTooLarge")).count() == 2, "{rows:#?}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_invoke_with_response_stream_works_on_the_aws_port_too() {
    let app = streaming_app("aws-stream", "");
    let data = tempfile::tempdir().unwrap();
    let _server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).unwrap().trim().to_owned();
    // SigV4 with the port's own key (DATA_DIR/aws-credentials), not the loopback-open gateway.
    let script = BOTO3_STREAM.replace(", aws_access_key_id=\"x\", aws_secret_access_key=\"x\"", "");
    let payload = json!({"op": "stream", "n": 2}).to_string();
    let v = common::run_json(common::boto3(&script, &[&url, "f", &payload], data.path()));
    assert_eq!(v["status"], 200, "{v:#}");
    let body: String = v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(body, "data: event 1\n\ndata: event 2\n\n", "{v:#}");
    assert!(v["complete"].is_object(), "{v:#}");
}
