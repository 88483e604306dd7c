//! Cluster reads end to end: records and logs stay on the node that ran the invocation, and
//! `nimbus invocations`, `nimbus logs`, `nimbus usage` (and `/v1/stats`) asked of any node
//! ask every live node and merge, naming each record's node; a node killed a moment ago makes
//! the answer partial (named in `x-nimbus-missing-nodes` and on the CLI's stderr), never an
//! error. Peer calls need the cluster's peer credential.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{unsafe_kill, App, Server};
use nimbus_cluster::testing::NatsServers;
use serde_json::{json, Value};

/// Node `name` of the cluster on `servers`, serving `app` from its own data dir (so with its
/// own admin token and its own records).
fn node(app: &Path, servers: &NatsServers, name: &str) -> Server {
    let data = app.join(".nimbus").join(name);
    Server::start_args(
        app,
        &data,
        &["--cluster", &servers.url(), "--node-name", name, "--aws-listen", "off", "--insecure-no-sandbox"],
    )
}

/// Invoke `f` on `s`, logging `line`; its request id.
async fn run(s: &Server, line: &str) -> String {
    let r = s.invoke("f", &json!({"op": "log", "lines": [line]})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
    r.header("x-amzn-requestid").unwrap().to_owned()
}

/// Poll `path` on `s` until `done` holds for the answer; the answer.
async fn until(s: &Server, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = s.admin(path).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_logs_and_usage_are_merged_from_every_node_and_a_dead_node_makes_them_partial() {
    let servers = NatsServers::start(3).await.unwrap();
    let app = App::new("merged").conformance("node", "f", "").finish();
    let a = node(app.path(), &servers, "node-a");
    let b = node(app.path(), &servers, "node-b");
    let mut c = node(app.path(), &servers, "node-c");
    // One invocation on A, two on B, three on C: each record and log stays where it ran.
    let mut ran: HashMap<String, &str> = HashMap::new();
    for (s, name, n) in [(&a, "node-a", 1), (&b, "node-b", 2), (&c, "node-c", 3)] {
        for i in 0..n {
            ran.insert(run(s, &format!("line {i} on {name}")).await, name);
        }
    }

    // A lists all six, each with the node that ran it, newest first; a limit applies after the merge.
    let all = until(&a, "/v1/invocations?function=f&limit=100", "all six records through A", |v| {
        v.as_array().unwrap().len() == 6
    })
    .await;
    for r in all.as_array().unwrap() {
        let id = r["requestId"].as_str().unwrap();
        assert_eq!(r["node"], ran[id], "{r:#}");
    }
    let starts: Vec<u64> = all.as_array().unwrap().iter().map(|r| r["startMs"].as_u64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "newest first: {starts:?}");
    let two = a.admin("/v1/invocations?function=f&limit=2").await;
    assert_eq!(two.as_array().unwrap().len(), 2);
    assert_eq!(two[0]["requestId"], all[0]["requestId"]);
    // One record by id, wherever it ran.
    let (c_id, _) = ran.iter().find(|(_, n)| **n == "node-c").unwrap();
    let one = a.admin(&format!("/v1/invocations/{c_id}")).await;
    assert_eq!((one["requestId"].as_str(), one["node"].as_str()), (Some(c_id.as_str()), Some("node-c")));

    // The CLI through A: a NODE column, and every node's log lines, each prefixed with its node.
    let table = stdout(&a.cli(&["invocations", "--function", "f"]));
    assert!(table.lines().next().unwrap().ends_with("NODE"), "{table}");
    for (id, name) in &ran {
        let row = table.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| panic!("{id} in {table}"));
        assert!(row.ends_with(name), "{row}");
    }
    let logs = stdout(&a.cli(&["logs", "f"]));
    for name in ["node-a", "node-b", "node-c"] {
        assert!(logs.contains(&format!("{name} | ")), "{name}'s lines in {logs}");
    }
    assert!(logs.contains("line 2 on node-c") && logs.contains("line 1 on node-b"), "{logs}");
    // Pages: a small limit, then the cursor, return every entry once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let page = a.admin(&format!("/v1/functions/f/logs?limit=2&cursor={cursor}")).await;
        let entries = page["entries"].as_array().unwrap();
        seen.extend(entries.iter().map(|e| e["requestId"].as_str().unwrap().to_owned()));
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if entries.is_empty() {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6, "every invocation's log once over the pages: {seen:?}");

    // Usage and stats through A add up the three nodes.
    let u = until(&a, "/v1/usage?since=1h", "usage of all six", |u| u["total"]["requests"] == 6).await;
    assert_eq!(u["functions"][0]["requests"], 6, "{u:#}");
    let cli_usage: Value = serde_json::from_str(&stdout(&a.cli(&["usage", "--since", "1h", "--json"]))).unwrap();
    assert_eq!(cli_usage["total"]["requests"], 6);
    let stats = a.admin("/v1/stats?function=f&window=1h&buckets=4").await;
    assert_eq!(stats["total"]["invocations"], 6, "{stats:#}");

    // A peer call with a credential that is not the cluster's is refused.
    let refused = a.client().get(format!("{}/v1/invocations", a.url)).header("x-nimbus-peer", "guess").send().await;
    assert_eq!(refused.unwrap().status(), 401);

    // C dies: until its heartbeats expire it is still listed, and answers nothing.
    unsafe_kill(c.pid(), libc::SIGKILL);
    common::wait_child(&mut c.child, Duration::from_secs(10));
    let r = a.client().get(format!("{}/v1/invocations?function=f", a.url)).bearer_auth(&a.token).send().await.unwrap();
    assert_eq!(r.status(), 200, "a dead node makes the answer partial, not an error");
    assert_eq!(r.headers().get("x-nimbus-missing-nodes").and_then(|v| v.to_str().ok()), Some("node-c"));
    let rows: Vec<Value> = r.json().await.unwrap();
    assert_eq!(rows.len(), 3, "A's and B's records: {rows:#?}");
    assert!(rows.iter().all(|r| r["node"] != "node-c"));
    let page = a.admin("/v1/functions/f/logs").await;
    assert_eq!(page["missingNodes"], json!(["node-c"]), "{page:#}");
    let out = a.cli(&["usage", "--since", "1h"]);
    let (text, err) = (stdout(&out), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(err.contains("partial answer: node(s) node-c did not answer"), "{err}");
    assert!(text.contains("total"), "{text}");
}
