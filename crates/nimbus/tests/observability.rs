//! Black-box tests of what nimbus shows about itself: `/metrics` read by the Prometheus
//! project's own OpenMetrics parser, invocation records with the cold-start breakdown,
//! retention, usage and cost (`/v1/usage`, `nimbus usage`), and logs (`nimbus logs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_python_json, App, Server};
use serde_json::{json, Value};

/// Parse `/metrics` with `prometheus_client.openmetrics.parser` (the reference parser; it
/// rejects anything that is not valid OpenMetrics). Returns (family types, samples).
async fn scrape(server: &Server) -> (HashMap<String, String>, Vec<(String, HashMap<String, String>, f64)>) {
    let resp = server.get("/metrics").await;
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = resp.text().await.unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let parsed = run_python_json(
        r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(open(sys.argv[1]).read()))
print(json.dumps({
    "types": {f.name: f.type for f in families},
    "samples": [[s.name, s.labels, s.value] for f in families for s in f.samples],
}))
"#,
        &[file.path().to_str().unwrap()],
    );
    let types = parsed["types"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into()));
    let samples = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into()));
            (s[0].as_str().unwrap().to_owned(), labels.collect(), s[2].as_f64().unwrap())
        })
        .collect();
    (types.collect(), samples)
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(samples: &[(String, HashMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {} samples; all samples: {samples:?}", found.len());
    found[0]
}

async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_and_count_every_trigger_outcome_and_state() {
    let app = App::new("metrics")
        .conformance("node", "f", "max_retry_attempts = 1\nretry_backoff = \"10ms\"")
        .conformance(
            "python",
            "capped",
            "max_instances = 1\nmax_queued = 0\ntimeout = \"10s\"\nkeep_alive = \"adaptive\"",
        )
        .route("GET", "/f", "f")
        .finish();
    let server = Server::start(app.path());
    assert_eq!(server.invoke("f", &json!({"op": "echo"})).await.status, 200);
    assert_eq!(server.invoke("f", &json!({"op": "error"})).await.function_error(), Some("Unhandled"));
    assert_eq!(server.get("/f?op=bare").await.status(), 200);
    let accepted = server.invoke_with("f", &json!({"op": "error"}), &[("x-amz-invocation-type", "Event")]).await;
    assert_eq!(accepted.status, 202);
    // A throttle: the one instance is busy and nothing may queue.
    let marker = app.path().join("started");
    let slow = server.start_sleeping("capped", 300, &marker).await;
    assert_eq!(server.invoke("capped", &json!({"op": "echo"})).await.status, 429);
    assert_eq!(slow.await.unwrap().status, 200);
    wait_until("the event to be dead-lettered", Duration::from_secs(20), async || {
        server.admin("/v1/dlq").await.as_array().unwrap().len() == 1
    })
    .await;

    let (types, s) = scrape(&server).await;
    for (family, ty) in [
        ("nimbus_invocations", "counter"),
        ("nimbus_invocation_duration_seconds", "histogram"),
        ("nimbus_init_duration_seconds", "histogram"),
        ("nimbus_queue_wait_seconds", "histogram"),
        ("nimbus_throttles", "counter"),
        ("nimbus_cold_starts", "counter"),
        ("nimbus_instances", "gauge"),
        ("nimbus_concurrency", "gauge"),
        ("nimbus_concurrency_limit", "gauge"),
        ("nimbus_queued_requests", "gauge"),
        ("nimbus_async_queue_depth", "gauge"),
        ("nimbus_async_oldest_age_seconds", "gauge"),
        ("nimbus_dlq_events", "gauge"),
        ("nimbus_async_outcomes", "counter"),
        ("nimbus_gateway_requests", "counter"),
        ("nimbus_records_dropped", "counter"),
        ("nimbus_keepalive_seconds", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "family {family}: {types:?}");
    }
    let inv = |status: &str, trigger: &str| {
        sample(&s, "nimbus_invocations_total", &[("function", "f"), ("status", status), ("trigger", trigger)])
    };
    assert_eq!(inv("success", "invoke"), 1.0);
    assert_eq!(inv("function_error", "invoke"), 1.0);
    assert_eq!(inv("success", "http"), 1.0);
    assert_eq!(inv("function_error", "event"), 2.0, "the first try and its one retry");
    assert_eq!(
        sample(
            &s,
            "nimbus_invocations_total",
            &[("function", "capped"), ("status", "throttled"), ("trigger", "invoke")]
        ),
        1.0
    );
    assert_eq!(sample(&s, "nimbus_throttles_total", &[("function", "capped")]), 1.0);
    // Histograms: every invocation that ran is observed once; the cold ones once more as init.
    assert_eq!(sample(&s, "nimbus_invocation_duration_seconds_count", &[("function", "f")]), 5.0);
    let le_inf = [("function", "f"), ("le", "+Inf")];
    assert_eq!(sample(&s, "nimbus_invocation_duration_seconds_bucket", &le_inf), 5.0);
    let started = sample(&s, "nimbus_cold_starts_total", &[("function", "f"), ("version", "1")]);
    assert!(started >= 1.0);
    assert_eq!(sample(&s, "nimbus_init_duration_seconds_count", &[("function", "f")]), started);
    assert!(sample(&s, "nimbus_init_duration_seconds_sum", &[("function", "f")]) > 0.0);
    // State read at scrape time.
    assert_eq!(sample(&s, "nimbus_instances", &[("function", "f"), ("state", "busy")]), 0.0);
    assert_eq!(sample(&s, "nimbus_concurrency", &[("function", "f")]), 0.0);
    assert_eq!(sample(&s, "nimbus_concurrency_limit", &[("function", "capped")]), 1.0);
    // The adaptive keep-alive's windows: too few idle gaps yet, so the fixed fallback (10 min).
    let window = |kind: &str| sample(&s, "nimbus_keepalive_seconds", &[("function", "capped"), ("kind", kind)]);
    assert_eq!((window("keep_alive"), window("prewarm")), (600.0, 0.0));
    let functions = server.admin("/v1/functions").await;
    let capped = functions.as_array().unwrap().iter().find(|f| f["name"] == "capped").unwrap();
    let adaptive = &capped["pools"][0]["adaptiveKeepAlive"];
    assert_eq!(adaptive["keepAliveMs"], 600_000, "{capped}");
    assert_eq!(adaptive["representative"], false, "{capped}");
    assert_eq!(sample(&s, "nimbus_dlq_events", &[("function", "f")]), 1.0);
    assert_eq!(sample(&s, "nimbus_async_queue_depth", &[("function", "f")]), 0.0);
    assert_eq!(sample(&s, "nimbus_async_outcomes_total", &[("function", "f"), ("outcome", "retried")]), 1.0);
    assert_eq!(sample(&s, "nimbus_async_outcomes_total", &[("function", "f"), ("outcome", "dead_lettered")]), 1.0);
    assert_eq!(sample(&s, "nimbus_gateway_requests_total", &[("kind", "invoke"), ("code", "202")]), 1.0);
    assert_eq!(sample(&s, "nimbus_gateway_requests_total", &[("kind", "invoke"), ("code", "429")]), 1.0);
    assert_eq!(sample(&s, "nimbus_gateway_requests_total", &[("kind", "route"), ("code", "200")]), 1.0);
    assert_eq!(sample(&s, "nimbus_records_dropped_total", &[]), 0.0);
}

#[tokio::test]
async fn records_break_a_cold_start_into_queue_wait_instance_start_runtime_init_and_handler() {
    let app = App::new("records").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    let cold = server.invoke("f", &json!({"op": "sleep", "ms": 30})).await;
    let warm = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!((cold.status, warm.status), (200, 200));
    let id = |i: &common::Invoked| i.header("x-amzn-requestid").unwrap().to_owned();
    let rec = |id: String| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = server.client().get(format!("{}/v1/invocations/{id}", server.url)).bearer_auth(&server.token);
                let resp = r.send().await.unwrap();
                if resp.status() == 200 {
                    return resp.json::<Value>().await.unwrap();
                }
                assert!(Instant::now() < deadline, "no record of {id}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let c = rec(id(&cold)).await;
    assert_eq!(c["cold"], true, "{c:#}");
    let (init, start, runtime) =
        (c["initMs"].as_f64().unwrap(), c["instanceStartMs"].as_f64().unwrap(), c["runtimeInitMs"].as_f64().unwrap());
    assert!(start > 0.0 && runtime > 0.0, "{c:#}");
    assert!((start + runtime - init).abs() < 0.01, "the phases add up to Init Duration: {c:#}");
    assert!(runtime > start, "python's own start-up outweighs nimbus's spawn: {c:#}");
    assert!(c["handlerMs"].as_f64().unwrap() >= 30.0, "{c:#}");
    assert!(c["queueMs"].as_f64().unwrap() < init, "the wait no longer counts the instance's start: {c:#}");
    let w = rec(id(&warm)).await;
    assert_eq!(w["cold"], false);
    for k in ["initMs", "instanceStartMs", "runtimeInitMs"] {
        assert!(w[k].is_null(), "{k} on a warm invocation: {w:#}");
    }

    // The CLI shows the breakdown, and all of it as JSON.
    let out = server.cli(&["invocations", "--function", "f"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("QUEUE") && table.contains(&id(&cold)), "{table}");
    let out = server.cli(&["invocations", "--function", "f", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().any(|r| r["runtimeInitMs"] == c["runtimeInitMs"]), "{list:#}");
}

#[tokio::test]
async fn records_and_logs_past_retention_are_deleted_but_usage_stays() {
    let app = App::new("retention").conformance("node", "f", "memory_mb = 256").finish();
    let data = app.path().join(".nimbus");
    let mut cmd = Command::new(common::nimbus_bin());
    cmd.args(["up", app.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--retention", "0.5s"]);
    let bad = cmd.output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least 1s"), "{}", String::from_utf8_lossy(&bad.stderr));

    let server = Server::start_args(app.path(), &data, &["--retention", "2s"]);
    let r = server.invoke("f", &json!({"op": "log", "lines": ["kept for a while"]})).await;
    assert_eq!(r.status, 200);
    server.records("f", 1).await;
    wait_until("the record to pass retention", Duration::from_secs(15), async || {
        server.admin("/v1/invocations?function=f").await.as_array().unwrap().is_empty()
    })
    .await;
    let logs = server.admin("/v1/functions/f/logs").await;
    assert!(logs["entries"].as_array().unwrap().is_empty(), "{logs:#}");
    let usage = server.admin("/v1/usage?since=1h").await;
    assert_eq!(usage["total"]["requests"], 1, "{usage:#}");
}

#[tokio::test]
async fn usage_prices_requests_and_gb_seconds_and_compares_with_always_on_servers() {
    let app = App::new("usage")
        .conformance("node", "f", "memory_mb = 512")
        .conformance("python", "g", "memory_mb = 128")
        .raw("[pricing]\nper_million_requests = 1000000\nper_gb_second = 1\nserver_per_hour = 3600\nservers = 1")
        .finish();
    let server = Server::start(app.path());
    for i in 0..4 {
        let op = if i == 3 { "error" } else { "echo" };
        server.invoke("f", &json!({"op": op})).await;
    }
    server.invoke("g", &json!({"op": "sleep", "ms": 20})).await;
    wait_until("5 records", Duration::from_secs(5), async || {
        server.admin("/v1/invocations").await.as_array().unwrap().len() == 5
    })
    .await;
    let records = server.admin("/v1/invocations").await;
    let mb_ms: u64 = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["billedMs"].as_u64().unwrap() * r["memoryMb"].as_u64().unwrap())
        .sum();
    let u = server.admin("/v1/usage?since=1h").await;
    assert_eq!(u["total"]["requests"], 5, "function errors are billed too: {u:#}");
    let gbs = mb_ms as f64 / 1024.0 / 1000.0;
    assert!((u["total"]["gbSeconds"].as_f64().unwrap() - gbs).abs() < 1e-9, "{u:#} vs {gbs}");
    // $1 per request and per GB-second.
    assert!((u["total"]["cost"].as_f64().unwrap() - (5.0 + gbs)).abs() < 1e-6, "{u:#}");
    let f = u["functions"].as_array().unwrap().iter().find(|f| f["function"] == "f").unwrap();
    assert_eq!(f["requests"], 4);
    // One server at $3600/h: a dollar per second of the window.
    let a = &u["alwaysOn"];
    assert!((a["cost"].as_f64().unwrap() - a["hours"].as_f64().unwrap() * 3600.0).abs() < 1e-6, "{a:#}");
    assert!((a["hours"].as_f64().unwrap() - 1.0).abs() < 0.01);

    let out = server.cli(&["usage", "--since", "1h", "--servers", "3", "--server-price", "0.5"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.starts_with("f ") && l.split_whitespace().nth(1) == Some("4")), "{text}");
    assert!(text.contains("always-on: 3 server(s) at USD 0.5/h"), "{text}");
    assert!(text.contains("pay-per-use costs") && text.contains("servers are cheaper"), "{text}");
    let day = server.admin("/v1/usage?since=2d&granularity=day").await;
    assert_eq!(day["buckets"].as_array().unwrap().iter().map(|b| b["requests"].as_u64().unwrap()).sum::<u64>(), 5);

    let bad = server.cli(&["usage", "--since", "last week"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("is not a duration") && err.contains("2026-11-01"), "{err}");
}

#[tokio::test]
async fn logs_filter_by_request_id_keep_json_fields_and_follow_across_instances() {
    let app = App::new("logs").conformance("node", "f", "").finish();
    let server = Server::start(app.path());
    let json_line = r#"{"level":"warn","msg":"disk low","free_mb":12}"#;
    let a = server.invoke("f", &json!({"op": "log", "lines": ["first call", json_line]})).await;
    let b = server.invoke("f", &json!({"op": "log", "lines": ["second call"]})).await;
    let id_a = a.header("x-amzn-requestid").unwrap().to_owned();
    let id_b = b.header("x-amzn-requestid").unwrap().to_owned();
    wait_until("both logs", Duration::from_secs(5), async || {
        server.admin("/v1/functions/f/logs").await["entries"].as_array().unwrap().len() == 2
    })
    .await;

    let only_a = String::from_utf8(server.cli(&["logs", "f", "--request-id", &id_a]).stdout).unwrap();
    assert!(only_a.contains("first call") && !only_a.contains("second call"), "{only_a}");
    assert!(only_a.contains(&format!("START RequestId: {id_a}")) && only_a.contains("REPORT RequestId"), "{only_a}");

    let out = String::from_utf8(server.cli(&["logs", "f", "--request-id", &id_a, "--json"]).stdout).unwrap();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let warn = lines.iter().find(|l| l["level"] == "warn").unwrap_or_else(|| panic!("{out}"));
    assert_eq!((warn["msg"].as_str(), warn["free_mb"].as_i64()), (Some("disk low"), Some(12)));
    assert_eq!(warn["requestId"], id_a.as_str());
    assert_eq!(warn["function"], "f");
    let plain = lines.iter().find(|l| l["message"] == "first call").unwrap();
    assert!(plain["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!out.contains(&id_b));

    // -f: follow from the start, then two overlapping calls run on two instances.
    let mut tail = Command::new(common::nimbus_bin())
        .args(["logs", "f", "-f", "--server", &server.url, "--token", &server.token])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let marker = app.path().join("sleeping");
    let slow = server.start_sleeping("f", 400, &marker).await;
    let quick = server.invoke("f", &json!({"op": "log", "lines": ["while the other sleeps"]})).await;
    let slow = slow.await.unwrap();
    let instances: std::collections::HashSet<String> = server
        .admin("/v1/invocations?function=f&limit=2")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["instanceId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(instances.len(), 2, "the overlapping calls ran on two instances");
    let want = [
        id_a.clone(),
        id_b.clone(),
        slow.header("x-amzn-requestid").unwrap().to_owned(),
        quick.header("x-amzn-requestid").unwrap().to_owned(),
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|id| seen.iter().any(|l: &String| l.contains(&format!("END RequestId: {id}")))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("nimbus logs -f did not show every invocation; it printed:\n{}", seen.join("\n")),
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
}

/// A minimal OTLP/HTTP trace receiver: decodes each export with the OpenTelemetry protobuf
/// definitions and passes its spans on, with the resource's service.name.
async fn otlp_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, OtlpSpan)>) {
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    assert_eq!(req.uri().path(), "/v1/traces");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).unwrap();
                    for rs in export.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|a| a.key == "service.name")
                            .map(|a| format!("{:?}", a.value))
                            .unwrap_or_default();
                        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            let _ = tx.send((service.clone(), span));
                        }
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::new(),
                    )))
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (url, rx)
}

type OtlpSpan = opentelemetry_proto::tonic::trace::v1::Span;

fn attr(span: &OtlpSpan, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref()).map(|v| match v {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn traces_export_a_span_per_invocation_with_its_cold_start_phases_over_otlp() {
    let app = App::new("traces").conformance("python", "f", "").finish();
    let bad = Command::new(common::nimbus_bin())
        .args(["up", app.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--otlp-endpoint", "ftp://collector"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("not an http:// or https:// URL"), "{err}");

    let (url, mut spans) = otlp_receiver().await;
    let data = app.path().join(".nimbus");
    let server = Server::launch(
        app.path(),
        &data,
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
        "127.0.0.1:0",
        &["--otlp-endpoint", &url],
    );
    let cold = server.invoke("f", &json!({"op": "echo"})).await;
    let warm = server.invoke("f", &json!({"op": "error", "message": "traced"})).await;
    let ids =
        [cold.header("x-amzn-requestid").unwrap().to_owned(), warm.header("x-amzn-requestid").unwrap().to_owned()];

    let mut got: Vec<(String, OtlpSpan)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.iter().filter(|(_, s)| s.name == "invoke f").count() < 2 || got.len() < 8 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, spans.recv()).await {
            Ok(Some(s)) => got.push(s),
            _ => panic!("spans received so far: {:#?}", got.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()),
        }
    }
    assert!(got.iter().all(|(service, _)| service.contains("nimbus")), "service.name: {:?}", got[0].0);
    let root = |id: &str| {
        got.iter()
            .map(|(_, s)| s)
            .find(|s| s.name == "invoke f" && attr(s, "faas.invocation_id").as_deref() == Some(id))
            .unwrap()
    };
    let children = |root: &OtlpSpan| {
        let mut c: Vec<&OtlpSpan> = got
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.parent_span_id == root.span_id && s.trace_id == root.trace_id)
            .collect();
        c.sort_by_key(|s| s.start_time_unix_nano);
        c
    };

    let c = root(&ids[0]);
    assert_eq!(attr(c, "faas.coldstart").as_deref(), Some("true"));
    assert_eq!(attr(c, "faas.trigger").as_deref(), Some("other"));
    assert_eq!(attr(c, "nimbus.status").as_deref(), Some("success"));
    let phases = children(c);
    let names: Vec<&str> = phases.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["queue wait", "instance start", "runtime init", "handler"]);
    // The phases follow each other inside the invocation's span.
    assert_eq!(phases[0].start_time_unix_nano, c.start_time_unix_nano);
    for w in phases.windows(2) {
        assert_eq!(w[0].end_time_unix_nano, w[1].start_time_unix_nano, "{} then {}", w[0].name, w[1].name);
    }
    assert_eq!(phases[3].end_time_unix_nano, c.end_time_unix_nano);
    // The runtime's init as measured, not a placeholder. Not a fixed floor: forked from the
    // zygote, a python runtime may be ready in under a millisecond.
    let records = server.records("f", 2).await;
    let record = records.iter().find(|r| r["requestId"] == ids[0].as_str()).unwrap();
    let runtime_init_ms = record["runtimeInitMs"].as_f64().unwrap();
    let span_ms = (phases[2].end_time_unix_nano - phases[2].start_time_unix_nano) as f64 / 1e6;
    assert!(runtime_init_ms > 0.0 && (span_ms - runtime_init_ms).abs() < 0.01, "{span_ms} ms vs {record:#}");

    let w = root(&ids[1]);
    assert_eq!(attr(w, "faas.coldstart").as_deref(), Some("false"));
    let names: Vec<String> = children(w).iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["queue wait", "handler"]);
    let status = w.status.as_ref().unwrap();
    assert_eq!(status.code, 2, "error status: {status:?}");
    assert!(status.message.contains("traced"), "{status:?}");
    assert_eq!(attr(w, "error.type").as_deref(), Some("ValueError"));
}

#[tokio::test]
async fn progress_shows_on_a_terminal_and_stays_quiet_when_output_is_piped() {
    let app = App::new("progress").conformance("node", "f", "").finish();
    let server = Server::start(app.path());
    std::fs::write(app.path().join("functions/f/extra.txt"), "a change, so the deploy is a new version").unwrap();
    let path = app.path().to_str().unwrap();
    let piped = server.cli(&["deploy", path]);
    let (out, err) = (String::from_utf8(piped.stdout).unwrap(), String::from_utf8(piped.stderr).unwrap());
    assert!(piped.status.success(), "{err}");
    assert!(out.starts_with("deployed progress version 2"), "{out}");
    assert!(err.is_empty(), "nothing but the result when not a terminal: {err:?}");
    assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");

    // On a terminal (util-linux `script` gives the command a pty) the spinner is drawn.
    std::fs::write(app.path().join("functions/f/extra.txt"), "another change").unwrap();
    let cmd =
        format!("{} deploy {path} --server {} --token {}", common::nimbus_bin().display(), server.url, server.token);
    let tty = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("uploading") && shown.contains('\u{1b}'), "no progress drawn on a terminal: {shown:?}");
    assert!(shown.contains("deployed progress version 3"), "{shown:?}");
}
