//! Cluster membership end to end: three `nimbus up --cluster` against a three-server NATS
//! JetStream cluster list each other (`GET /v1/nodes`, `nimbus nodes`); a node killed with
//! `kill -9` leaves the others' lists within 5 s; a live node's name cannot be taken; a node
//! listening on every address is reached at its `--advertise-url`; bad and unreachable
//! `--cluster` URLs and a bad `--advertise-url` stop `nimbus up` with an error naming the flag.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{nimbus_bin, unsafe_kill, App, Server};
use nimbus_cluster::testing::NatsServers;

fn app() -> App {
    App::new("clustered").conformance("node", "f", "").finish()
}

fn node(app: &App, servers: &NatsServers, name: &str) -> Server {
    let data = app.path().join(".nimbus").join(name);
    Server::start_args(
        app.path(),
        &data,
        &["--cluster", &servers.url(), "--node-name", name, "--aws-listen", "off", "--insecure-no-sandbox"],
    )
}

/// The listed names, once every listed node reports its gateway's URL (a node's first
/// heartbeats, before it listens, carry none).
async fn names(s: &Server) -> Vec<String> {
    let v = s.admin("/v1/nodes").await;
    let list = v.as_array().unwrap();
    if list.iter().any(|n| n["url"].as_str().unwrap().is_empty()) {
        return vec![];
    }
    list.iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}

async fn until(s: &Server, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = names(s).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "after {within:?}, {} lists {got:?}, not {want:?}", s.url);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn three_nodes_list_each_other_and_forget_a_killed_one() {
    let servers = NatsServers::start(3).await.unwrap();
    let app = app();
    let a = node(&app, &servers, "node-1");
    let mut b = node(&app, &servers, "node-2");
    let c = node(&app, &servers, "node-3");
    let all = ["node-1", "node-2", "node-3"];
    for s in [&a, &b, &c] {
        until(s, &all, Duration::from_secs(10)).await;
    }
    let listed = a.admin("/v1/nodes").await;
    assert_eq!(listed[1]["url"].as_str().unwrap(), b.url, "{listed:#}");
    let out = a.cli(&["nodes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for n in all {
        assert!(text.contains(n), "{text}");
    }
    assert!(text.contains(&b.url), "{text}");

    // A second live node-2 refuses to start, and says why.
    let dup = Command::new(nimbus_bin())
        .args(["up"])
        .arg(app.path())
        .args(["--listen", "127.0.0.1:0", "--aws-listen", "off", "--insecure-no-sandbox"])
        .arg("--data-dir")
        .arg(app.path().join(".nimbus").join("dup"))
        .args(["--cluster", &servers.url(), "--node-name", "node-2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(!dup.status.success());
    assert!(err.contains("another live node is already named node-2") && err.contains("--node-name"), "{err}");

    unsafe_kill(b.pid(), libc::SIGKILL);
    common::wait_child(&mut b.child, Duration::from_secs(10));
    until(&a, &["node-1", "node-3"], Duration::from_secs(5)).await;
    until(&c, &["node-1", "node-3"], Duration::from_secs(1)).await;
}

/// A node listening on every address, as a pod does, is told apart from "this machine" by
/// `--advertise-url`: the others list that URL and reach it there, so a merged read through
/// another node is whole (with the `0.0.0.0` address it would name the node missing).
#[tokio::test]
async fn the_others_are_told_the_advertised_url() {
    let servers = NatsServers::start(1).await.unwrap();
    let app = app();
    // Freed at once; the node binds it next (the advertised URL needs the port up front).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let advertised = format!("http://127.0.0.1:{port}");
    let url = servers.url();
    let flags = |name: &'static str| ["--cluster", &url, "--node-name", name, "--cluster-replicas", "1"];
    let mut pod_args = flags("pod").to_vec();
    pod_args.extend(["--advertise-url", &advertised, "--aws-listen", "off", "--insecure-no-sandbox"]);
    let pod =
        Server::launch(app.path(), &app.path().join(".nimbus").join("pod"), &[], &format!("0.0.0.0:{port}"), &pod_args);
    let mut other_args = flags("other").to_vec();
    other_args.extend(["--aws-listen", "off", "--insecure-no-sandbox"]);
    let other = Server::start_args(app.path(), &app.path().join(".nimbus").join("other"), &other_args);
    until(&other, &["other", "pod"], Duration::from_secs(10)).await;
    let listed = other.admin("/v1/nodes").await;
    assert_eq!(listed[1]["url"].as_str(), Some(advertised.as_str()), "{listed:#}");
    assert_eq!(pod.admin("/v1/nodes").await[1]["url"].as_str(), Some(advertised.as_str()));
    let r = other.client().get(format!("{}/v1/invocations", other.url)).bearer_auth(&other.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let missing = r.headers().get("x-nimbus-missing-nodes").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(missing, None, "the pod is asked at {advertised}");
}

#[test]
fn bad_and_unreachable_cluster_urls_are_clear_errors() {
    let app = app();
    let up_with = |url: &str, more: &[&str]| {
        let out = Command::new(nimbus_bin())
            .args(["up"])
            .arg(app.path())
            .args(["--listen", "127.0.0.1:0", "--aws-listen", "off", "--cluster", url])
            .args(more)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let up = |url: &str| up_with(url, &[]);
    let bad = up("http://[::1");
    assert!(bad.contains("--cluster") && bad.contains("nats://127.0.0.1:4222"), "{bad}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = up(&format!("nats://127.0.0.1:{port}"));
    assert!(gone.contains(&format!("cannot connect to NATS at nats://127.0.0.1:{port}")), "{gone}");
    assert!(gone.contains("scripts/cluster.sh up"), "{gone}");
    // Checked before connecting: the servers being away does not hide the bad flag.
    let everywhere = up_with(&format!("nats://127.0.0.1:{port}"), &["--advertise-url", "http://0.0.0.0:8080"]);
    assert!(everywhere.contains("--advertise-url") && everywhere.contains("no other node can dial"), "{everywhere}");
}
