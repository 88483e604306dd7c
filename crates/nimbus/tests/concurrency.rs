//! `concurrency > 1` end to end: overlapping invocations share one instance (one Node process
//! with shared module state; one Python instance of forked worker processes), `max_instances`
//! still caps instances and throttles, each invocation's log holds its own lines, and usage
//! bills the instance's busy time instead of every invocation's.
//!
//! The handlers hold each invocation until the test creates a release file in a directory
//! the sandbox shares, so the overlap is certain (not timed); every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{shared_tempdir, App, Invoked, Server};
use serde_json::{json, Value};

const NODE: &str = r#"
const fs = require("fs");
let arrived = 0;
exports.handler = async (event, context) => {
  arrived += 1;
  const seen = arrived;
  console.log(`holding ${event.i}`);
  fs.writeFileSync(`${event.release}.${event.i}`, "");
  const until = Date.now() + 20000;
  while (!fs.existsSync(event.release) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 10));
  }
  console.error(`released ${event.i}`);
  return { pid: process.pid, seen, arrived, id: context.awsRequestId };
};
"#;

const PYTHON: &str = r#"
import logging, os, time

def handler(event, context):
    print(f"holding {event['i']}")
    open(f"{event['release']}.{event['i']}", "w").close()
    until = time.time() + 20
    while not os.path.exists(event["release"]) and time.time() < until:
        time.sleep(0.01)
    logging.getLogger().warning("released %s", event["i"])
    return {"pid": os.getpid(), "ppid": os.getppid()}
"#;

/// Reads its trace id from the environment before and after the others started, and from
/// `awslambda.InvokeStore`, as the X-Ray and AWS SDKs do.
const NODE_TRACE: &str = r#"
const fs = require("fs");
exports.handler = async (event, context) => {
  const before = process.env._X_AMZN_TRACE_ID;
  fs.writeFileSync(`${event.release}.${event.i}`, "");
  const until = Date.now() + 20000;
  while (!fs.existsSync(event.release) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 10));
  }
  const store = awslambda.InvokeStore;
  return {
    before,
    after: process.env._X_AMZN_TRACE_ID,
    inEnv: "_X_AMZN_TRACE_ID" in process.env,
    store: store.getXRayTraceId(),
    storeId: store.getRequestId(),
    context: context.xRayTraceId,
    id: context.awsRequestId,
  };
};
"#;

/// An `async def` handler: holds until released while awaiting, and says which process and
/// event loop ran it, how many threads its process has, and the trace id it read before and
/// after its awaits.
const PYTHON_ASYNC: &str = r#"
import asyncio, os

async def handler(event, context):
    before = os.environ.get("_X_AMZN_TRACE_ID")
    print(f"holding {event['i']}")
    loop = asyncio.get_running_loop()
    if "release" in event:
        open(f"{event['release']}.{event['i']}", "w").close()
        until = loop.time() + 20
        while not os.path.exists(event["release"]) and loop.time() < until:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0)
    print(f"released {event['i']}")
    with open("/proc/self/status") as f:
        threads = int(next(l for l in f if l.startswith("Threads:")).split()[1])
    return {
        "pid": os.getpid(),
        "loop": id(loop),
        "threads": threads,
        "before": before,
        "after": os.environ.get("_X_AMZN_TRACE_ID"),
        "id": context.aws_request_id,
    }
"#;

fn app(runtime: &str, extra: &str) -> App {
    let (file, text, handler) = match runtime {
        "node" => ("functions/f/index.js", NODE, "index.handler"),
        "node-trace" => ("functions/f/index.js", NODE_TRACE, "index.handler"),
        "python-async" => ("functions/f/app.py", PYTHON_ASYNC, "app.handler"),
        _ => ("functions/f/app.py", PYTHON, "app.handler"),
    };
    let runtime = runtime.trim_end_matches("-trace").trim_end_matches("-async");
    let app =
        App::new("fluid").raw(&format!("[functions.f]\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\n{extra}"));
    app.write_file(file, text);
    app.finish()
}

/// Start `n` held invocations and wait until the pool shows them all in flight.
async fn hold(server: &Server, n: usize, release: &std::path::Path) -> Vec<tokio::task::JoinHandle<Invoked>> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (server_url, client) = (server.url.clone(), server.client());
            let body = json!({"i": i, "release": release.display().to_string()}).to_string();
            tokio::spawn(async move {
                let url = format!("{server_url}/2015-03-31/functions/f/invocations");
                let started = Instant::now();
                let resp = client.post(url).header("x-amz-log-type", "Tail").body(body).send().await.unwrap();
                Invoked::from(resp, started).await
            })
        })
        .collect();
    // Every handler has started (its marker) and the pool counts them all in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..n).all(|i| std::path::PathBuf::from(format!("{}.{i}", release.display())).exists()) {
        assert!(Instant::now() < deadline, "the {n} invocations never all started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let want = n as u64;
    server
        .wait_for(&format!("{n} invocations in flight"), Duration::from_secs(20), |v| {
            pool(v).is_some_and(|p| p["inFlight"].as_u64() == Some(want))
        })
        .await;
    calls
}

fn pool(functions: &Value) -> Option<&Value> {
    functions.as_array()?.iter().find(|f| f["name"] == "f")?["pools"].as_array()?.first()
}

async fn answers(calls: Vec<tokio::task::JoinHandle<Invoked>>) -> Vec<Invoked> {
    let mut out = Vec::new();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(30), c).await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(r.function_error().is_none(), "{:?}", r.body);
        out.push(r);
    }
    out
}

#[tokio::test]
async fn node_runs_overlapping_invocations_in_one_process_with_shared_module_state() {
    let app = app("node", "concurrency = 4\nmax_instances = 1");
    let server = Server::start(app.path());
    let dir = shared_tempdir();
    let release = dir.path().join("release");
    let calls = hold(&server, 4, &release).await;
    let state = server.admin("/v1/functions").await;
    let p = pool(&state).unwrap();
    assert_eq!(p["instances"].as_array().unwrap().len(), 1, "{p:#}");
    assert_eq!((p["concurrency"].as_u64(), p["instances"][0]["inFlight"].as_u64()), (Some(4), Some(4)), "{p:#}");
    std::fs::write(&release, "go").unwrap();
    let answers = answers(calls).await;
    let pids: HashSet<i64> = answers.iter().map(|r| r.body["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 1, "one process served all four: {pids:?}");
    for r in &answers {
        assert_eq!(r.body["arrived"], 4, "module state is shared: {:?}", r.body);
        // Its own lines only, though four invocations wrote to the same stdout and stderr.
        let log = r.log();
        let i = log.lines().find_map(|l| l.split("holding ").nth(1)).unwrap_or_else(|| panic!("{log}")).to_owned();
        assert!(log.contains(&format!("released {i}")), "{log}");
        assert_eq!(log.matches("holding ").count(), 1, "only its own line: {log}");
        let id = r.body["id"].as_str().unwrap();
        assert!(
            log.lines().filter(|l| l.contains("holding") || l.contains("released")).all(|l| l.contains(id)),
            "{log}"
        );
    }
}

/// With several invocations in flight in one Node process, each handler reads its own trace id
/// from `_X_AMZN_TRACE_ID` (and from `awslambda.InvokeStore`), across its awaits.
#[tokio::test]
async fn node_handlers_in_flight_together_each_see_their_own_trace_id() {
    let app = app("node-trace", "concurrency = 4\nmax_instances = 1");
    let server = Server::start(app.path());
    let dir = shared_tempdir();
    let release = dir.path().join("release");
    let calls = hold(&server, 4, &release).await;
    std::fs::write(&release, "go").unwrap();
    let answers = answers(calls).await;
    let mut traces = HashSet::new();
    for r in &answers {
        let b = &r.body;
        let trace = b["context"].as_str().unwrap_or_else(|| panic!("no trace id in the context: {b}"));
        assert!(trace.starts_with("Root=1-"), "{b}");
        for key in ["before", "after", "store"] {
            assert_eq!(b[key].as_str(), Some(trace), "{key}: {b}");
        }
        assert_eq!(b["inEnv"], true, "{b}");
        assert_eq!(b["storeId"], b["id"], "{b}");
        traces.insert(trace.to_owned());
    }
    assert_eq!(traces.len(), 4, "every invocation has its own trace id: {traces:?}");
}

#[tokio::test]
async fn python_forks_workers_from_one_instance_and_max_instances_holds() {
    let app = app("python", "concurrency = 3\nmax_instances = 1");
    let server = Server::start(app.path());
    let dir = shared_tempdir();
    let release = dir.path().join("release");
    let calls = hold(&server, 3, &release).await;
    let state = server.admin("/v1/functions").await;
    assert_eq!(pool(&state).unwrap()["instances"].as_array().unwrap().len(), 1, "{state:#}");
    std::fs::write(&release, "go").unwrap();
    let answers = answers(calls).await;
    let pids: HashSet<i64> = answers.iter().map(|r| r.body["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 3, "three processes (the parent and two forked workers): {pids:?}");
    for r in &answers {
        let log = r.log();
        assert_eq!(log.matches("holding ").count(), 1, "only its own print: {log}");
        assert_eq!(log.matches("released ").count(), 1, "only its own logging line: {log}");
    }
    let records = server.records("f", 3).await;
    let instances: HashSet<&str> = records.iter().map(|r| r["instanceId"].as_str().unwrap()).collect();
    assert_eq!(instances.len(), 1, "one instance: {records:#?}");
}

/// One invocation at a time: an `async def` handler runs, on the same event loop every time.
#[tokio::test]
async fn a_python_async_handler_runs_on_a_loop_kept_for_the_instance() {
    let app = app("python-async", "");
    let server = Server::start(app.path());
    let mut loops = HashSet::new();
    for i in 0..3 {
        let r = server.invoke("f", &json!({"i": i})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(r.function_error().is_none(), "{:?}", r.body);
        assert!(r.body["before"].as_str().is_some_and(|t| t.starts_with("Root=1-")), "{:?}", r.body);
        loops.insert((r.body["pid"].as_i64().unwrap(), r.body["loop"].as_i64().unwrap()));
    }
    assert_eq!(loops.len(), 1, "one process and one loop for the three: {loops:?}");
}

/// `concurrency > 1` with an `async def` handler: one process (no forked workers) runs the
/// invocations at once on its loop, with no thread per invocation (a `concurrency` of 1,000
/// would otherwise be 1,000 threads); each keeps its own trace id and log lines across awaits.
#[tokio::test]
async fn python_async_handlers_run_concurrently_on_one_loop_each_with_its_own_trace_id() {
    let app = app("python-async", "concurrency = 3\nmax_instances = 1");
    let server = Server::start(app.path());
    let dir = shared_tempdir();
    let release = dir.path().join("release");
    let calls = hold(&server, 3, &release).await;
    std::fs::write(&release, "go").unwrap();
    let answers = answers(calls).await;
    let loops: HashSet<(i64, i64)> =
        answers.iter().map(|r| (r.body["pid"].as_i64().unwrap(), r.body["loop"].as_i64().unwrap())).collect();
    assert_eq!(loops.len(), 1, "one process, one loop: {loops:?}");
    for r in &answers {
        assert_eq!(r.body["threads"], 1, "the invocations wait on the loop, not in threads: {:?}", r.body);
    }
    let mut traces = HashSet::new();
    for r in &answers {
        let b = &r.body;
        let trace = b["before"].as_str().unwrap_or_else(|| panic!("no trace id: {b}"));
        assert!(trace.starts_with("Root=1-"), "{b}");
        assert_eq!(b["after"].as_str(), Some(trace), "the same after the others ran: {b}");
        traces.insert(trace.to_owned());
        let log = r.log();
        assert_eq!(log.matches("holding ").count(), 1, "only its own print: {log}");
        assert_eq!(log.matches("released ").count(), 1, "only its own print: {log}");
    }
    assert_eq!(traces.len(), 3, "{traces:?}");
}

#[tokio::test]
async fn a_full_instance_at_max_instances_throttles_and_usage_bills_instance_time() {
    let app = app("node", "concurrency = 2\nmax_instances = 1\nmax_queued = 0\nmemory_mb = 1024");
    let server = Server::start(app.path());
    let dir = shared_tempdir();
    let release = dir.path().join("release");
    let calls = hold(&server, 2, &release).await;
    let third = server.invoke("f", &json!({"i": 9, "release": release.display().to_string()})).await;
    assert_eq!(third.status, 429, "both slots of the one instance allowed are taken: {:?}", third.body);
    std::fs::write(&release, "go").unwrap();
    answers(calls).await;
    // Two invocations held side by side: billed once for the instance's busy time, below the
    // sum of the two invocations' times.
    let deadline = Instant::now() + Duration::from_secs(10);
    let f = loop {
        let u = server.admin("/v1/usage?since=1h").await;
        let f = u["functions"].as_array().unwrap().iter().find(|f| f["function"] == "f").cloned();
        if let Some(f) =
            f.filter(|f| f["requests"] == 2 && f["gbSeconds"].as_f64() != f["invocationGbSeconds"].as_f64())
        {
            break f;
        }
        assert!(Instant::now() < deadline, "usage never showed the instance time: {u:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (billed, per_invocation) = (f["gbSeconds"].as_f64().unwrap(), f["invocationGbSeconds"].as_f64().unwrap());
    assert!(billed > 0.0 && billed < per_invocation, "{f:#}");
    let out = server.cli(&["usage", "--since", "1h"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("PER-INVOCATION"), "{text}");
}

/// The fixture's `lambda_runtime` calls `run`, which polls `/next` one event at a time (its
/// `run_concurrent`, behind the `concurrency-tokio` feature, is what reads
/// AWS_LAMBDA_MAX_CONCURRENCY): with `concurrency > 1` it still serves every invocation, one
/// after the other on its one instance.
#[tokio::test]
async fn an_official_client_that_polls_one_at_a_time_still_serves_every_invocation() {
    let app = App::new("fluid").conformance("rust", "f", "concurrency = 4\nmax_instances = 1").finish();
    let server = Server::start(app.path());
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let (url, client) = (server.url.clone(), server.client());
            tokio::spawn(async move {
                let body = json!({"op": "echo", "i": i}).to_string();
                let resp = client.post(format!("{url}/2015-03-31/functions/f/invocations")).body(body).send().await;
                Invoked::from(resp.unwrap(), Instant::now()).await
            })
        })
        .collect();
    answers(calls).await;
    let records = server.records("f", 4).await;
    let instances: HashSet<&str> = records.iter().map(|r| r["instanceId"].as_str().unwrap()).collect();
    assert_eq!(instances.len(), 1, "{records:#?}");
}
