//! The cluster end to end: three `nimbus up --cluster` nodes on a three-server NATS JetStream
//! cluster share one registry, one async queue, one KV and one object store. A deploy on one
//! node is live on the others within moments and a rollback on another follows; 10,000 async
//! events accepted by any node survive `kill -9` of a nimbus node and of a NATS server; a cron slot
//! fires exactly once in the whole cluster, also while a node dies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{appender, runs, unsafe_kill, wait_every, wait_until, App, Server};
use nimbus_cluster::testing::NatsServers;
use serde_json::{json, Value};

/// Node `name` of the cluster on `servers`, serving `app` from its own data dir.
fn node(app: &Path, servers: &NatsServers, name: &str) -> Server {
    let data = app.join(".nimbus").join(name);
    Server::start_args(
        app,
        &data,
        &["--cluster", &servers.url(), "--node-name", name, "--aws-listen", "off", "--insecure-no-sandbox"],
    )
}

/// The version `s` serves as live.
async fn live_version(s: &Server) -> Option<u64> {
    let list = s.admin("/v1/deployments").await;
    list.as_array().unwrap().iter().find(|d| d["live"] == true).and_then(|d| d["version"].as_u64())
}

/// Poll `s` until it serves `version` as live; how long that took.
async fn until_live(s: &Server, version: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if live_version(s).await == Some(version) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} still serves {:?}, not version {version}",
            s.url,
            live_version(s).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What function `f` (the conformance function) says GREETING is.
async fn greeting(s: &Server) -> String {
    let r = s.invoke("f", &json!({"op": "env", "names": ["GREETING"]})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
    r.body["GREETING"].as_str().unwrap().to_owned()
}

fn deploy(s: &Server, app: &Path) -> u64 {
    let out = s.cli(&["deploy", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text.find("version ").unwrap_or_else(|| panic!("no version in {text}")) + "version ".len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_one_node_is_served_by_all_and_so_is_a_rollback() {
    let servers = NatsServers::start(3).await.unwrap();
    let app = App::new("shared").conformance("node", "f", "").raw("[kv.notes]").finish();
    let a = node(app.path(), &servers, "node-a");
    let b = node(app.path(), &servers, "node-b");
    let c = node(app.path(), &servers, "node-c");
    // B and C found the app A deployed already: one version for the three of them.
    let first = live_version(&a).await.unwrap();
    for s in [&a, &b, &c] {
        assert_eq!(live_version(s).await, Some(first));
        assert_eq!(greeting(s).await, "hi");
    }

    // A new version, deployed through A only.
    let toml = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(app.path().join("nimbus.toml"), toml.replace("GREETING = \"hi\"", "GREETING = \"v2\"")).unwrap();
    let second = deploy(&a, app.path());
    assert!(second > first);
    for s in [&b, &c] {
        let took = until_live(s, second, Duration::from_secs(2)).await;
        eprintln!("version {second} live on {} {took:?} after the deploy on A returned", s.url);
        assert_eq!(greeting(s).await, "v2");
    }

    // A rollback through C: A and B follow.
    let out = c.cli(&["rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for s in [&a, &b] {
        until_live(s, first, Duration::from_secs(2)).await;
        assert_eq!(greeting(s).await, "hi");
    }

    // One KV for the cluster: written through A, read through C.
    let (status, _, _) = a.admin_request(reqwest::Method::PUT, "/v1/kv/notes/greeting", "shared").await;
    assert_eq!(status, 200);
    let (status, _, body) = c.admin_request(reqwest::Method::GET, "/v1/kv/notes/greeting", "").await;
    assert_eq!((status, body.as_slice()), (200, b"shared".as_slice()));
}

/// Accept `events` through the nodes in turn, `at_once` at a time, as a client that retries
/// does: an event refused or dropped (its node or a NATS server being killed) is sent again,
/// to the next node, up to 30 times. The (n, request id) of each 202.
async fn accept_round_robin(nodes: &[&Server], events: &[Value], at_once: usize) -> Vec<(u64, String)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut accepted = Vec::new();
    let mut pending: Vec<Value> = events.to_vec();
    for attempt in 0..30 {
        let mut refused = Vec::new();
        for (round, chunk) in pending.chunks(at_once).enumerate() {
            let calls: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    let s = nodes[(attempt + round + i) % nodes.len()];
                    let url = format!("{}/2015-03-31/functions/f/invocations", s.url);
                    let request = client.post(url).header("x-amz-invocation-type", "Event").body(event.to_string());
                    tokio::spawn(async move {
                        let r = request.send().await.ok()?;
                        let id = r.headers().get("x-amzn-requestid")?.to_str().ok()?.to_owned();
                        (r.status() == 202).then_some(id)
                    })
                })
                .collect();
            for (call, event) in calls.into_iter().zip(chunk) {
                match call.await.unwrap() {
                    Some(id) => accepted.push((event["n"].as_u64().unwrap(), id)),
                    None => refused.push(event.clone()),
                }
            }
        }
        if refused.is_empty() {
            return accepted;
        }
        eprintln!("attempt {attempt}: {} refused; sending them again", refused.len());
        pending = refused;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{} events still refused after 30 attempts", pending.len());
}

/// How many times each event ran, from the function's run log.
fn times_run(log: &Path) -> HashMap<u64, u32> {
    let mut times: HashMap<u64, u32> = HashMap::new();
    for r in runs(log) {
        *times.entry(r["n"].as_u64().unwrap()).or_default() += 1;
    }
    times
}

/// The run log grows to thousands of lines: read it four times a second.
const LOG_POLL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_async_events_survive_a_killed_node_and_a_killed_server() {
    let started = Instant::now();
    let mut servers = NatsServers::start(3).await.unwrap();
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("events"), "f", &log, "max_instances = 4").finish();
    let a = node(app.path(), &servers, "node-a");
    let mut b = node(app.path(), &servers, "node-b");
    let c = node(app.path(), &servers, "node-c");
    let total = 10_000;
    let events: Vec<Value> = (0..total).map(|n| json!({"n": n})).collect();
    let (first, rest) = events.split_at(total / 3);
    let mut accepted = accept_round_robin(&[&a, &b, &c], first, 32).await;
    assert_eq!(accepted.len(), first.len(), "every node accepts while all are up");
    let first_accepts = started.elapsed();
    // Mid-run: a nimbus node and a NATS server die; accepting goes on through the others.
    wait_every(LOG_POLL, "some events to run", Duration::from_secs(60), || runs(&log).len() >= 20).await;
    let ran_before_kill = runs(&log).len();
    unsafe_kill(b.pid(), libc::SIGKILL);
    common::wait_child(&mut b.child, Duration::from_secs(10));
    servers.kill(2);
    let killed = Instant::now();
    accepted.extend(accept_round_robin(&[&a, &c], rest, 32).await);
    let rest_accepts = killed.elapsed();
    servers.restart(2).await.unwrap();
    // B's name stays taken until its heartbeats expire: it comes back under a new one.
    let _b = node(app.path(), &servers, "node-b2");

    // Every accepted event runs; those B held when it died run again elsewhere.
    let want: HashSet<u64> = accepted.iter().map(|(n, _)| *n).collect();
    wait_every(LOG_POLL, "every accepted event to run", Duration::from_secs(300), || {
        let ran = times_run(&log);
        want.iter().all(|n| ran.contains_key(n))
    })
    .await;
    let all_ran = started.elapsed();
    let duplicates: u32 = times_run(&log).values().map(|t| t - 1).sum();
    // At most what B was running or had claimed when it died (its share of max_instances,
    // and the claims it fetched ahead), and resent events whose 202 the kill swallowed.
    assert!(duplicates <= 64, "{duplicates} duplicate runs");
    assert_eq!(want.len(), total);
    eprintln!(
        "{total} accepted with a node and a server killed ({ran_before_kill} had run then); {duplicates} duplicate runs; \
         accepts took {first_accepts:?} + {rest_accepts:?}; all ran {all_ran:?} after the start"
    );
    // Each one's state, as any node reports it, ends succeeded.
    for (_, id) in accepted.iter().step_by(50) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = c.admin(&format!("/v1/invocations/{id}")).await;
            if v["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "{id}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cron_slot_fires_once_in_the_cluster() {
    let servers = NatsServers::start(3).await.unwrap();
    let dir = common::shared_tempdir();
    let log = dir.path().join("runs.log");
    let app = appender(App::new("cron"), "tick", &log, "")
        .raw("[[schedules]]\nfunction = \"tick\"\ncron = \"* * * * * *\"")
        .finish();
    let mut nodes = vec![
        node(app.path(), &servers, "node-a"),
        node(app.path(), &servers, "node-b"),
        node(app.path(), &servers, "node-c"),
    ];
    // 30 s of a schedule firing every second: one node dies half-way, the other two go on.
    wait_until("15 fires", Duration::from_secs(30), || runs(&log).len() >= 15).await;
    let mut b = nodes.remove(1);
    unsafe_kill(b.pid(), libc::SIGKILL);
    common::wait_child(&mut b.child, Duration::from_secs(10));
    let at_kill = runs(&log).len();
    wait_until("15 more fires", Duration::from_secs(30), || runs(&log).len() >= at_kill + 15).await;
    // Each slot fired exactly once: none twice (every node tries each slot), and none missed
    // (the killed node's slots are the others') between the first and the last that ran.
    let seconds = |fired: &[Value]| -> Vec<i64> {
        let mut s: Vec<i64> = fired
            .iter()
            .map(|r| chrono::DateTime::parse_from_rfc3339(r["event"]["time"].as_str().unwrap()).unwrap().timestamp())
            .collect();
        s.sort_unstable();
        s
    };
    let missing = |s: &[i64]| -> Vec<i64> {
        let (first, last) = (s[0], s[s.len() - 1]);
        (first..=last).filter(|t| s.binary_search(t).is_err()).collect()
    };
    // A slot fired just before the last one that ran may still be running.
    let settled = Instant::now() + Duration::from_secs(10);
    while !missing(&seconds(&runs(&log))).is_empty() && Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(nodes);
    let fired = seconds(&runs(&log));
    let mut unique = fired.clone();
    unique.dedup();
    assert_eq!(unique.len(), fired.len(), "a slot fired more than once: {fired:?}");
    assert_eq!(missing(&fired), Vec::<i64>::new(), "slots that never fired, of {fired:?}");
    assert!(fired.len() >= 30, "{fired:?}");
}

/// SQS is shared by the cluster: boto3 creates a queue and sends a message through node A's
/// AWS port, and receives and deletes it through node C's (each node with its own data dir and
/// admin key); A then sees the queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_message_sent_through_one_node_is_received_through_another() {
    let servers = NatsServers::start(3).await.unwrap();
    let app = App::new("sqs-shared").conformance("node", "f", "").finish();
    let with_aws = |name: &str| {
        let data = app.path().join(".nimbus").join(name);
        let args = ["--cluster", &servers.url(), "--node-name", name, "--aws-listen", "127.0.0.1:0"];
        let server = Server::start_args(app.path(), &data, &[&args[..], &["--insecure-no-sandbox"]].concat());
        let url = std::fs::read_to_string(data.join("aws.url")).expect("DATA_DIR/aws.url").trim().to_owned();
        (server, data, url)
    };
    let (_a, a_data, a_url) = with_aws("node-a");
    let (_c, c_data, c_url) = with_aws("node-c");
    const SEND: &str = r#"
import json, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
url = sqs.create_queue(QueueName="handoff", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
r = sqs.send_message(QueueUrl=url, MessageBody="from A", MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}})
print(json.dumps({"id": r["MessageId"]}))
"#;
    const RECEIVE: &str = r#"
import json, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
url = sqs.get_queue_url(QueueName="handoff")["QueueUrl"]
got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MessageAttributeNames=["All"]).get("Messages", [])
again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
for m in got:
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
out = [{"id": m["MessageId"], "body": m["Body"], "k": m["MessageAttributes"]["k"]["StringValue"]} for m in got]
print(json.dumps({"got": out, "again": len(again)}))
"#;
    const COUNT: &str = r#"
import json, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
url = sqs.get_queue_url(QueueName="handoff")["QueueUrl"]
a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
print(json.dumps([a["ApproximateNumberOfMessages"], a["ApproximateNumberOfMessagesNotVisible"]]))
"#;
    let sent = common::run_json(common::boto3(SEND, &[&a_url], &a_data));
    let got = common::run_json(common::boto3(RECEIVE, &[&c_url], &c_data));
    assert_eq!(got["got"], json!([{"id": sent["id"], "body": "from A", "k": "v"}]), "{got}");
    assert_eq!(got["again"], 0, "a received message stays hidden on every node");
    let counts = common::run_json(common::boto3(COUNT, &[&a_url], &a_data));
    assert_eq!(counts, json!(["0", "0"]), "deleted through C, gone on A");
}
