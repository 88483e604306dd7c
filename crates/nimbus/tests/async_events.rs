//! Black-box tests of async invocations: durable accept, retries, the dead-letter store,
//! destinations, idempotency, async routes, cron, and the kill -9 fault test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{appender, runs, wait_until, App, Server};
use serde_json::{json, Value};

async fn accept(server: &Server, function: &str, event: &Value, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("x-amz-invocation-type", "Event")];
    all.extend_from_slice(headers);
    let r = server.invoke_with(function, event, &all).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.raw));
    r.header("x-amzn-requestid").unwrap().to_owned()
}

/// Queue `events` as Event invocations of `function`, `concurrency` at a time; every one must be
/// answered 202.
async fn accept_all(server: &Server, function: &str, events: Vec<Value>, concurrency: usize) {
    let client = server.client();
    let url = format!("{}/2015-03-31/functions/{function}/invocations", server.url);
    for chunk in events.chunks(concurrency) {
        let calls = chunk.iter().map(|event| {
            let (client, url, body) = (client.clone(), url.clone(), event.to_string());
            async move {
                client.post(url).header("x-amz-invocation-type", "Event").body(body).send().await.unwrap().status()
            }
        });
        for status in futures_join(calls).await {
            assert_eq!(status, 202);
        }
    }
}

/// Poll the event until `done` holds (bounded).
async fn wait_event(server: &Server, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = server
            .client()
            .get(format!("{}/v1/invocations/{id}", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "event {id} never got there: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_event_is_accepted_with_202_then_runs() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("events"), "f", &log, "").finish();
    let server = Server::start(app.path());
    let id = accept(&server, "f", &json!({"n": 7}), &[]).await;
    let ev = wait_event(&server, &id, Duration::from_secs(10), |v| v["status"] == "succeeded").await;
    assert_eq!(ev["attempts"], 1);
    assert_eq!(ev["result"], json!({"n": 7}));
    assert_eq!(ev["source"], "invoke");
    let ran = runs(&log);
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0]["id"], id.as_str(), "the function sees the request id the caller got");

    // The CLI queues too.
    let out = server.cli(&["invoke", "f", "--async", "--data", r#"{"n": 8}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_event(&server, &cli_id, Duration::from_secs(10), |v| v["status"] == "succeeded").await;
    let listed = server.cli(&["invocations", "--status", "succeeded", "--function", "f"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains(&id) && text.contains(&cli_id) && text.contains("succeeded"), "{text}");

    // Limits answer clearly.
    let big =
        server.invoke_with("f", &json!({"pad": "x".repeat(300 * 1024)}), &[("x-amz-invocation-type", "Event")]).await;
    assert_eq!(big.status, 413);
    assert_eq!(big.header("x-amzn-errortype"), Some("RequestTooLargeException"));
    let missing = server.invoke_with("nope", &json!({}), &[("x-amz-invocation-type", "Event")]).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn function_errors_are_retried_then_dead_lettered_and_can_be_redriven() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("retries"), "f", &log, "max_retry_attempts = 2\nretry_backoff = \"20ms\"").finish();
    let server = Server::start(app.path());
    let id = accept(&server, "f", &json!({"n": 1, "fail": true}), &[]).await;
    let ev = wait_event(&server, &id, Duration::from_secs(10), |v| v["status"] == "dead-lettered").await;
    assert_eq!(ev["attempts"], 3, "1 try + max_retry_attempts retries: {ev:#}");
    let history = ev["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|h| h["outcome"] == "function_error" && h["errorType"] == "ValueError"));
    // Backoff: the gaps grow (20 ms then 40 ms, each with jitter in [50 %, 100 %]).
    let starts: Vec<i64> = history.iter().map(|h| h["startedMs"].as_i64().unwrap()).collect();
    assert!(starts[1] - starts[0] >= 10 && starts[2] - starts[1] >= 20, "{starts:?}");
    assert_eq!(ev["lastErrorType"], "ValueError");
    assert!(ev["reason"].as_str().unwrap().contains("max_retry_attempts is 2"));
    assert_eq!(runs(&log).len(), 3);

    let ls = server.cli(&["dlq", "ls"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&id), "{}", String::from_utf8_lossy(&ls.stdout));
    let show = server.cli(&["dlq", "show", &id]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("asked to fail"),
        "{}{}",
        String::from_utf8_lossy(&show.stdout),
        String::from_utf8_lossy(&show.stderr)
    );

    let redrive = server.cli(&["dlq", "redrive", &id]);
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    assert!(String::from_utf8_lossy(&redrive.stdout).contains("1 event(s) back in the queue"));
    let ev = wait_event(&server, &id, Duration::from_secs(10), |v| {
        v["status"] == "dead-lettered" && v["history"].as_array().unwrap().len() == 6
    })
    .await;
    assert_eq!(ev["attempts"], 3, "a redriven event gets its retries again");
    assert_eq!(runs(&log).len(), 6);

    let purge = server.cli(&["dlq", "purge"]);
    assert!(String::from_utf8_lossy(&purge.stdout).contains("1 dead-lettered event(s) deleted"));
    let empty: Value = server.admin("/v1/dlq").await;
    assert_eq!(empty.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn destinations_receive_lambda_style_envelopes() {
    let dir = common::shared_tempdir();
    let (work_log, audit_log) = (dir.path().join("work.log"), dir.path().join("audit.log"));
    let app = App::new("dest");
    let app = appender(
        app,
        "work",
        &work_log,
        "max_retry_attempts = 0\non_success = \"function:audit\"\non_failure = \"function:audit\"",
    );
    let app = appender(app, "audit", &audit_log, "").finish();
    let server = Server::start(app.path());
    let ok = accept(&server, "work", &json!({"n": 1}), &[]).await;
    let bad = accept(&server, "work", &json!({"n": 2, "fail": true}), &[]).await;
    wait_until("two envelopes", Duration::from_secs(10), || runs(&audit_log).len() == 2).await;
    let by_id: HashMap<String, Value> = runs(&audit_log)
        .into_iter()
        .map(|r| (r["event"]["requestContext"]["requestId"].as_str().unwrap().to_owned(), r["event"].clone()))
        .collect();
    let success = &by_id[&ok];
    assert_eq!(success["requestContext"]["condition"], "Success");
    assert_eq!(success["requestPayload"], json!({"n": 1}));
    assert_eq!(success["responsePayload"], json!({"n": 1}));
    assert_eq!(success["requestContext"]["approximateInvokeCount"], 1);
    let failure = &by_id[&bad];
    assert_eq!(failure["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(failure["responseContext"]["functionError"], "Unhandled");
    assert_eq!(failure["responsePayload"]["errorType"], "ValueError");
    // Sent to a function instead of the dead-letter store: the event is "failed".
    let ev = wait_event(&server, &bad, Duration::from_secs(5), |v| v["status"] == "failed").await;
    assert_eq!(ev["attempts"], 1);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_request_id_and_runs_once() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("idem"), "f", &log, "").finish();
    let server = Server::start(app.path());
    let a = accept(&server, "f", &json!({"n": 1}), &[("idempotency-key", "order-42")]).await;
    let b = accept(&server, "f", &json!({"n": 1}), &[("idempotency-key", "order-42")]).await;
    assert_eq!(a, b);
    // The Invoke API's client context carries it too (custom.idempotencyKey).
    use base64::Engine as _;
    let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"idempotencyKey":"order-42"}}"#);
    let c = accept(&server, "f", &json!({"n": 1}), &[("x-amz-client-context", &context)]).await;
    assert_eq!(a, c);
    let other = accept(&server, "f", &json!({"n": 2}), &[("idempotency-key", "order-43")]).await;
    assert_ne!(a, other);
    wait_event(&server, &other, Duration::from_secs(10), |v| v["status"] == "succeeded").await;
    wait_event(&server, &a, Duration::from_secs(10), |v| v["status"] == "succeeded").await;
    let ran: Vec<i64> = runs(&log).iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ran.iter().filter(|n| **n == 1).count(), 1, "{ran:?}");
}

#[tokio::test]
async fn async_routes_answer_202_and_throttled_events_wait() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("jobs"), "f", &log, "max_instances = 1").route("POST", "/jobs", "f").finish();
    let manifest = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(app.path().join("nimbus.toml"), format!("{manifest}async = true\n")).unwrap();
    let server = Server::start(app.path());
    let mut ids = Vec::new();
    for n in 0..20 {
        let r =
            server.client().post(format!("{}/jobs", server.url)).body(format!(r#"{{"n":{n}}}"#)).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "queued");
        ids.push(body["requestId"].as_str().unwrap().to_owned());
    }
    // One instance for twenty events: they wait for capacity, none fails.
    for id in &ids {
        let ev = wait_event(&server, id, Duration::from_secs(20), |v| {
            v["status"] == "succeeded" || v["status"] == "dead-lettered"
        })
        .await;
        assert_eq!(ev["status"], "succeeded", "{ev:#}");
        assert_eq!(ev["source"], "http");
    }
    let first = runs(&log).into_iter().next().unwrap();
    assert_eq!(first["event"]["version"], "2.0", "an async route delivers the HTTP event");
}

#[tokio::test]
async fn boto3_invokes_asynchronously() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("boto-async"), "f", &log, "").finish();
    let server = Server::start(app.path());
    let script = r#"
import json, sys, boto3
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
r = c.invoke(FunctionName="f", InvocationType="Event", Payload=json.dumps({"n": 5}))
print(json.dumps({"status": r["StatusCode"], "id": r["ResponseMetadata"]["RequestId"]}))
"#;
    let v = common::run_python_json(script, &[&server.url]);
    assert_eq!(v["status"], 202);
    wait_event(&server, v["id"].as_str().unwrap(), Duration::from_secs(10), |e| e["status"] == "succeeded").await;
}

#[tokio::test]
async fn cron_slots_fire_once_each_across_restarts() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let data = tempfile::tempdir().unwrap();
    // Every second (six fields: seconds first), in a non-UTC zone.
    let app = appender(App::new("cron"), "tick", &log, "")
        .raw("[[schedules]]\nfunction = \"tick\"\ncron = \"* * * * * *\"\ntimezone = \"Asia/Shanghai\"")
        .finish();
    let mut server = Server::start_with(app.path(), data.path(), &[]);
    wait_until("three fires", Duration::from_secs(10), || runs(&log).len() >= 3).await;
    assert!(server.stop().success());
    let before = runs(&log).len();
    // Down for a while: several slots are missed; only the latest is run at start.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let server = Server::start_with(app.path(), data.path(), &[]);
    wait_until("fires after the restart", Duration::from_secs(10), || runs(&log).len() >= before + 3).await;
    drop(server);
    let fired = runs(&log);
    let times: Vec<&str> = fired.iter().map(|r| r["event"]["time"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = times.iter().copied().collect();
    assert_eq!(unique.len(), times.len(), "a slot fired twice: {times:?}");
    let ids: HashSet<&str> = fired.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), fired.len());
    assert!(fired
        .iter()
        .all(|r| r["event"]["detail-type"] == "Scheduled Event" && r["event"]["source"] == "aws.events"));
    // The gap holds at most one catch-up fire: slots are seconds apart, the gap was ≥ 2.5 s.
    let secs: Vec<i64> = times.iter().map(|t| chrono_secs(t)).collect();
    let gap_fires = secs.windows(2).filter(|w| w[1] - w[0] > 1).count();
    assert!(gap_fires <= 2, "{times:?}");
}

fn chrono_secs(rfc3339: &str) -> i64 {
    // "2026-11-22T04:30:05+00:00" → seconds of the day are enough to order and diff slots here.
    let t = rfc3339.split('T').nth(1).unwrap();
    let h: i64 = t[0..2].parse().unwrap();
    let m: i64 = t[3..5].parse().unwrap();
    let s: i64 = t[6..8].parse().unwrap();
    h * 3600 + m * 60 + s
}

/// The fault test: 1,000 accepted events, kill -9 mid-flight, restart. Returns
/// (distinct events run, duplicate runs, events recovered at start, events stored).
async fn kill_and_recover(unsafe_ack: bool) -> (usize, usize, u64, usize) {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let data = tempfile::tempdir().unwrap();
    let app = appender(App::new("fault"), "f", &log, "max_instances = 2").finish();
    let env: &[(&str, &str)] = if unsafe_ack { &[("NIMBUS_UNSAFE_ASYNC_ACK", "1")] } else { &[] };
    let mut server = Server::start_with(app.path(), data.path(), env);
    accept_all(&server, "f", (0..1000).map(|n| json!({"n": n})).collect(), 50).await;
    if !unsafe_ack {
        // Kill while events are running, not before.
        wait_until("some events to run", Duration::from_secs(30), || runs(&log).len() >= 50).await;
    }
    common::unsafe_kill(server.pid(), libc::SIGKILL);
    let _ = server.child.wait();

    let server = Server::start_with(app.path(), data.path(), &[]);
    let queue = server.admin("/v1/queue").await;
    let recovered = queue["recoveredAtStart"].as_u64().unwrap();
    // Wait until everything stored has finished (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = server.admin("/v1/queue").await;
        let running = server.admin("/v1/invocations?status=running&limit=10").await;
        if q["depth"] == 0 && running.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored =
        server.admin("/v1/invocations?status=succeeded&function=f&limit=10000").await.as_array().unwrap().len()
            + server.admin("/v1/dlq?limit=10000").await.as_array().unwrap().len();
    let ns: Vec<i64> = runs(&log).iter().map(|r| r["n"].as_i64().unwrap()).collect();
    let distinct: HashSet<i64> = ns.iter().copied().collect();
    (distinct.len(), ns.len() - distinct.len(), recovered, stored)
}

async fn futures_join<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_event() {
    let (distinct, duplicates, recovered, stored) = kill_and_recover(false).await;
    assert_eq!(stored, 1000, "every accepted event ended succeeded or dead-lettered");
    assert_eq!(distinct, 1000, "0 accepted events lost");
    assert!(
        duplicates as u64 <= recovered,
        "{duplicates} duplicates, but only {recovered} events were in flight at the kill"
    );
    eprintln!("kill -9: 1000 accepted, 0 lost, {duplicates} run twice, {recovered} in flight at the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_test_detects_loss_when_accepts_are_not_durable() {
    // Same test against a deliberately non-durable setting: it must see the loss.
    let (distinct, _, _, stored) = kill_and_recover(true).await;
    assert!(
        stored < 1000 && distinct < 1000,
        "the non-durable run lost nothing ({stored} stored, {distinct} run): the fault test could not fail"
    );
}

#[tokio::test]
async fn redrive_all_requeues_every_dead_letter() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("redrive-all"), "f", &log, "max_retry_attempts = 0").finish();
    let server = Server::start(app.path());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(accept(&server, "f", &json!({"n": n, "fail": true}), &[]).await);
    }
    for id in &ids {
        wait_event(&server, id, Duration::from_secs(10), |v| v["status"] == "dead-lettered").await;
    }
    let out = server.cli(&["dlq", "redrive", "--all"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 event(s) back in the queue"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for id in &ids {
        let ev = wait_event(&server, id, Duration::from_secs(10), |v| {
            v["status"] == "dead-lettered" && v["history"].as_array().unwrap().len() == 2
        })
        .await;
        assert_eq!(ev["attempts"], 1);
    }
    assert_eq!(runs(&log).len(), 6);
}

#[tokio::test]
async fn a_full_queue_refuses_with_429_until_it_drains() {
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("full"), "f", &log, "").finish();
    let server = Server::start_with(app.path(), &app.path().join(".nimbus"), &[("NIMBUS_ASYNC_MAX_DEPTH", "1")]);
    // The first event runs for 1.5 s: until it finishes the queue is at its limit of 1.
    let first = accept(&server, "f", &json!({"n": 1, "sleep": 1.5}), &[]).await;
    let over = server.invoke_with("f", &json!({"n": 2}), &[("x-amz-invocation-type", "Event")]).await;
    assert_eq!(over.status, 429, "{}", String::from_utf8_lossy(&over.raw));
    assert_eq!(over.header("x-amzn-errortype"), Some("TooManyRequestsException"));
    assert!(over.header("retry-after").is_some());
    wait_event(&server, &first, Duration::from_secs(10), |v| v["status"] == "succeeded").await;
    accept(&server, "f", &json!({"n": 2}), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_one_function_does_not_starve_another() {
    let dir = common::shared_tempdir();
    let (slow_log, fast_log) = (dir.path().join("slow.log"), dir.path().join("fast.log"));
    let app = appender(App::new("fair"), "slow", &slow_log, "max_instances = 1");
    let app = appender(app, "fast", &fast_log, "max_instances = 1").finish();
    let server = Server::start(app.path());
    // More slow events than the engine's whole in-flight budget (256), each taking a second.
    accept_all(&server, "slow", (0..300).map(|n| json!({"n": n, "sleep": 1})).collect(), 300).await;
    let fast = accept(&server, "fast", &json!({"n": 1}), &[]).await;
    let started = Instant::now();
    wait_event(&server, &fast, Duration::from_secs(30), |v| v["status"] == "succeeded").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fast function waited {:?} behind the slow backlog",
        started.elapsed()
    );
}
