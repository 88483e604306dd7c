//! A rolling restart of a whole cluster under steady load, as an operator does it behind a load
//! balancer: three `nimbus up --cluster` nodes on a three-server NATS JetStream cluster serve a
//! client that spreads requests (synchronous invocations and async `Event`s) over the nodes in
//! its list. One node at a time is taken out of the list, stopped with SIGTERM (it drains, leaves
//! the cluster and hands back its async work), started again with the same name, port and data
//! dir, and put back once `/healthz` says it serves. No request may fail, every accepted event
//! must run, and a request in flight on a node when it is told to stop must still be answered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{appender, runs, wait_until, App, Server};
use nimbus_cluster::testing::NatsServers;
use serde_json::json;

/// The flags every node runs with (its name added).
fn flags<'a>(servers: &'a str, name: &'a str) -> [&'a str; 7] {
    ["--cluster", servers, "--node-name", name, "--aws-listen", "off", "--insecure-no-sandbox"]
}

/// Start node `name` on `listen` (`127.0.0.1:0` the first time, its old address after).
fn start(app: &Path, servers: &NatsServers, name: &str, listen: &str) -> Server {
    let data = app.join(".nimbus").join(name);
    let url = servers.url();
    Server::launch(app, &data, &[], listen, &flags(&url, name))
}

/// The load balancer's view: the nodes it sends to.
type Pool = Arc<Mutex<Vec<String>>>;

/// What the client saw.
#[derive(Default)]
struct Tally {
    /// Answers per node URL (sync and async).
    served: BTreeMap<String, u32>,
    /// Every failed request: where it went, what it was, what came back.
    failed: Vec<String>,
    /// The `n` and request id of every event that was answered 202.
    accepted: Vec<(u64, String)>,
}

/// One request to `base`: every fifth an async event to `log-it` carrying `n` (every fiftieth
/// runs for a second, so that some are running on a node when it is stopped), else a
/// synchronous echo through `f`. `Ok` with the event's `n` and id if one was accepted.
async fn one(client: &reqwest::Client, base: &str, n: u64) -> Result<Option<(u64, String)>, String> {
    let event = n.is_multiple_of(5);
    let function = if event { "log-it" } else { "f" };
    let sleep = if n.is_multiple_of(50) { 1 } else { 0 };
    let body = json!({"op": "echo", "n": n, "sleep": sleep}).to_string();
    let mut request = client.post(format!("{base}/2015-03-31/functions/{function}/invocations")).body(body);
    if event {
        request = request.header("x-amz-invocation-type", "Event");
    }
    let r = request.send().await.map_err(|e| format!("{function} #{n}: {e}"))?;
    let (status, error) = (r.status().as_u16(), r.headers().get("x-amz-function-error").cloned());
    let id = r.headers().get("x-amzn-requestid").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = r.bytes().await.map_err(|e| format!("{function} #{n}: reading the body: {e}"))?;
    let want = if event { 202 } else { 200 };
    if status != want || error.is_some() {
        return Err(format!("{function} #{n}: {status} {error:?} {}", String::from_utf8_lossy(&body)));
    }
    Ok(event.then_some((n, id)))
}

/// Send about 50 requests a second, round robin over `pool`, until `stop` (or 3,000 requests,
/// or 150 s). Each runs in its own task, as concurrent clients do.
async fn load(pool: Pool, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let started = Instant::now();
    let mut calls = Vec::new();
    for n in 0..3000u64 {
        if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(150) {
            break;
        }
        let base = {
            let pool = pool.lock().unwrap();
            pool[n as usize % pool.len()].clone()
        };
        let (client, tally) = (client.clone(), tally.clone());
        calls.push(tokio::spawn(async move {
            let outcome = one(&client, &base, n).await;
            let mut t = tally.lock().unwrap();
            match outcome {
                Ok(accepted) => {
                    *t.served.entry(base).or_default() += 1;
                    t.accepted.extend(accepted);
                }
                Err(e) => t.failed.push(format!("{base}: {e}")),
            }
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in calls {
        c.await.unwrap();
    }
}

/// Poll `GET /healthz` until it answers 200 (a load balancer's readiness probe).
async fn until_healthy(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.get(format!("{url}/healthz")).send().await.map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{url}/healthz still answers {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names `s` lists as live.
async fn live_names(s: &Server) -> Vec<String> {
    let v = s.admin("/v1/nodes").await;
    v.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}

/// Take node `i` out of `pool`, stop it while a slow request runs on it (that request must be
/// answered), start it again with its name, port and data dir, and put it back once healthy.
async fn roll(nodes: &mut [Server], i: usize, pool: &Pool, app: &Path, servers: &NatsServers) {
    let name = format!("node-{i}");
    let url = nodes[i].url.clone();
    pool.lock().unwrap().retain(|u| *u != url);
    let marker = Path::new("slow");
    let slow = nodes[i].start_sleeping("f", 1500, marker).await;
    let status = nodes[i].stop();
    assert!(status.success(), "{name} exited with {status} after SIGTERM");
    let answer = slow.await.unwrap();
    assert_eq!(
        answer.status,
        200,
        "the request in flight on {name} at SIGTERM: {}",
        String::from_utf8_lossy(&answer.raw)
    );
    assert_eq!(answer.body["slept"], 1500, "{}", String::from_utf8_lossy(&answer.raw));
    // It left at once: the others list it no more, so its name is free for its return.
    let other = &nodes[(i + 1) % nodes.len()];
    assert!(!live_names(other).await.contains(&name), "{name} is still listed after it stopped");

    let listen = url.trim_start_matches("http://").to_owned();
    nodes[i] = start(app, servers, &name, &listen);
    assert_eq!(nodes[i].url, url);
    until_healthy(&url).await;
    pool.lock().unwrap().push(url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let servers = NatsServers::start(3).await.unwrap();
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("rolling").conformance("node", "f", ""), "log-it", &log, "").finish();
    let mut nodes: Vec<Server> =
        (0..3).map(|i| start(app.path(), &servers, &format!("node-{i}"), "127.0.0.1:0")).collect();
    for s in &nodes {
        until_healthy(&s.url).await;
    }
    let pool: Pool = Arc::new(Mutex::new(nodes.iter().map(|s| s.url.clone()).collect()));
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Tally::default())));
    let load = tokio::spawn(load(pool.clone(), stop.clone(), tally.clone()));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut at_return = vec![];
    for i in 0..nodes.len() {
        roll(&mut nodes, i, &pool, app.path(), &servers).await;
        at_return.push(tally.lock().unwrap().served.get(&nodes[i].url).copied().unwrap_or(0));
        // Let the node just back take its share of the load before the next one goes.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    let t = std::mem::take(&mut *tally.lock().unwrap());
    let total: u32 = t.served.values().sum();
    eprintln!("{total} requests answered during the rolling restart: {:?}", t.served);
    let failed = t.failed.len();
    let first: Vec<&str> = t.failed.iter().take(20).map(String::as_str).collect();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed; the first ones:\n{}",
        total as usize + failed,
        first.join("\n")
    );
    assert!(total >= 300, "only {total} requests were sent");
    // Each node served its share again once back (its first requests after the restart).
    for (s, before) in nodes.iter().zip(at_return) {
        let after = t.served.get(&s.url).copied().unwrap_or(0) - before;
        assert!(after >= 20, "{} served only {after} requests after its restart", s.url);
    }
    all_ran(&log, &t.accepted, &nodes[0]).await;
}

/// Every accepted event ran, wherever it ended up; else what each missing one's state is.
async fn all_ran(log: &Path, accepted: &[(u64, String)], any: &Server) {
    let load_ended = Instant::now();
    let missing = || {
        let ran: HashSet<u64> = runs(log).iter().filter_map(|r| r["n"].as_u64()).collect();
        accepted.iter().filter(|(n, _)| !ran.contains(n)).cloned().collect::<Vec<_>>()
    };
    while !missing().is_empty() && load_ended.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut states = vec![];
    for (n, id) in missing() {
        states.push(format!("#{n}: {:#}", any.admin(&format!("/v1/invocations/{id}")).await));
    }
    assert!(states.is_empty(), "accepted events that never ran:\n{}", states.join("\n"));
    let want = accepted.len();
    eprintln!("{want} accepted events all ran, the last {:?} after the load ended", load_ended.elapsed());
}

/// Accept one event for `function` through `s`; its request id.
async fn accept(s: &Server, function: &str, event: &serde_json::Value) -> String {
    let r = s.invoke_with(function, event, &[("x-amz-invocation-type", "Event")]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.raw));
    r.header("x-amzn-requestid").unwrap().to_owned()
}

/// Logs each run to $RUN_LOG like [`common::APPENDER`]; the first run takes 30 s, later ones
/// answer at once.
const FIRST_RUN_SLOW: &str = r#"
import json, os, time
def handler(event, context):
    first = not os.path.exists(os.environ["RUN_LOG"])
    with open(os.environ["RUN_LOG"], "a") as f:
        f.write(json.dumps({"n": event.get("n"), "id": context.aws_request_id}) + "\n")
    if first:
        time.sleep(30)
    return {"n": event.get("n")}
"#;

/// Milliseconds since the Unix epoch, as event states count them.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_event_cut_short_by_a_stop_runs_again_elsewhere_uncounted() {
    let servers = NatsServers::start(3).await.unwrap();
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    // No retries: an event the stop cut short must not count as a failed attempt.
    let app = App::new("handback");
    app.write_file("functions/slow/app.py", FIRST_RUN_SLOW);
    let app = app
        .raw(&format!(
            "[functions.slow]\nruntime = \"python\"\nhandler = \"app.handler\"\ntimeout = \"60s\"\nmax_retry_attempts = 0\nenv = {{ RUN_LOG = \"{}\" }}",
            log.display()
        ))
        .finish();
    let mut a = start(app.path(), &servers, "node-a", "127.0.0.1:0");
    // A runs it alone; its run outlasts what a stopping node gives running events (5 s, and
    // 5 s more for its instances to finish).
    let id = accept(&a, "slow", &json!({"n": 1})).await;
    wait_until("the event to start on A", Duration::from_secs(20), || !runs(&log).is_empty()).await;
    let b = start(app.path(), &servers, "node-b", "127.0.0.1:0");
    let stopped_ms = now_ms();
    let status = a.stop();
    assert!(status.success(), "A exited with {status}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let v = b.admin(&format!("/v1/invocations/{id}")).await;
        if v["status"] == "succeeded" {
            break v;
        }
        assert!(v["status"] != "failed" && v["status"] != "dead-lettered", "{v:#}");
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // One attempt counted (B's), and B began it once A let go, not after the ack wait (30 s)
    // that a node that dies leaves its events to.
    assert_eq!((done["attempts"].as_u64(), done["history"].as_array().unwrap().len()), (Some(1), 1), "{done:#}");
    let began = done["history"][0]["startedMs"].as_u64().unwrap();
    assert!(began < stopped_ms + 20_000, "B began it {} ms after A was told to stop", began - stopped_ms);
    eprintln!("B began the event {} ms after A was told to stop", began.saturating_sub(stopped_ms));
    assert_eq!(runs(&log).len(), 2, "{:?}", runs(&log));
}
