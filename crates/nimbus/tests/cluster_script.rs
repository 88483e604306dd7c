//! `scripts/cluster.sh`, as a developer runs it: `up` starts three nats-servers and three nimbus
//! nodes serving `examples/hello` (here on free ports, with its state in a temp dir), the nodes
//! list each other in `nimbus nodes`, each serves a request, one admin token works on all of
//! them, and `down` stops every process it started, instances included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{nimbus_bin, repo_root};

/// The first of `n` consecutive loopback ports nobody listens on, none of them in `taken`.
fn free_run(n: u16, taken: &[u16]) -> u16 {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 7919 + attempt * 104_729) % 40_000) as u16;
        let range = base..base + n;
        if taken.iter().any(|t| range.contains(t) || (*t..*t + n).contains(&base)) {
            continue;
        }
        if range.clone().all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// `scripts/cluster.sh ARGS` with the cluster's state in `state` and its ports in `ports`.
fn script(state: &Path, ports: &[u16; 4], args: &[&str]) -> Output {
    let nats = nimbus_cluster::testing::nats_server_binary().unwrap();
    let [node, client, route, monitor] = ports.map(|p| p.to_string());
    Command::new("bash")
        .arg(repo_root().join("scripts/cluster.sh"))
        .args(args)
        .env("NIMBUS_CLUSTER_DIR", state)
        .env("NIMBUS_BIN", nimbus_bin())
        .env("NIMBUS_NATS_SERVER", nats)
        .env("NIMBUS_CLUSTER_PORT", node)
        .env("NIMBUS_CLUSTER_NATS_PORT", client)
        .env("NIMBUS_CLUSTER_ROUTE_PORT", route)
        .env("NIMBUS_CLUSTER_MONITOR_PORT", monitor)
        .env("NIMBUS_LOG", "warn")
        .env("NIMBUS_SANDBOX_SHARED_DIR", common::shared_root())
        .output()
        .unwrap()
}

/// Runs `down` when the test ends, whatever happened, so that no process outlives it.
struct Down(PathBuf, [u16; 4]);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = script(&self.0, &self.1, &["down"]);
    }
}

/// The pids of processes whose command line names `dir` (servers, nodes, their instances).
fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) && common::process_alive(pid) {
            found.push((pid, cmd));
        }
    }
    found
}

/// `roots` and every process descended from them.
fn with_descendants(roots: &[i32]) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut all = roots.to_vec();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    all
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn cluster_sh_starts_three_nodes_that_serve_and_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster");
    let node = free_run(3, &[]);
    let client = free_run(3, &[node]);
    let route = free_run(3, &[node, client]);
    let monitor = free_run(3, &[node, client, route]);
    let ports = [node, client, route, monitor];
    let guard = Down(state.clone(), ports);

    let up = script(&state, &ports, &["up"]);
    assert!(up.status.success(), "cluster.sh up failed:\n{}", text(&up));
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let urls: Vec<String> = (0..3).map(|i| format!("http://127.0.0.1:{}", node + i)).collect();

    for url in &urls {
        // Every node lists all three with their addresses (a node's address is in its first
        // heartbeat after it listens, within a second), and takes the one shared token.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out =
                Command::new(nimbus_bin()).args(["nodes", "--server", url, "--token", token.trim()]).output().unwrap();
            let listed = text(&out);
            assert!(out.status.success(), "nimbus nodes on {url}: {listed}");
            let all = urls.iter().enumerate().all(|(i, u)| {
                listed.lines().any(|l| l.starts_with(&format!("node-{} ", i + 1)) && l.contains(u.as_str()))
            });
            if all {
                break;
            }
            assert!(Instant::now() < deadline, "{url} lists:\n{listed}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let r = reqwest::get(format!("{url}/hello/cluster")).await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{url}/hello/cluster: {body}");
        assert!(body.contains("Hello, cluster!"), "{body}");
    }
    // `up` again starts nothing new.
    let again = script(&state, &ports, &["up"]);
    assert!(again.status.success() && !text(&again).contains("nimbus node-"), "{}", text(&again));

    let before = processes_under(&state);
    assert!(before.len() >= 6, "fewer processes than 3 servers and 3 nodes: {before:?}");
    // The nodes' instances (each node served a request) are their descendants.
    let tree = with_descendants(&before.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    assert!(tree.len() > before.len(), "no instance processes under the nodes: {before:?}");
    let down = script(&state, &ports, &["down"]);
    assert!(down.status.success(), "cluster.sh down failed:\n{}", text(&down));
    // Every node stopped gracefully (drained and left) within its time, none was killed.
    assert!(!text(&down).contains("did not stop"), "{}", text(&down));
    let left = processes_under(&state);
    assert!(left.is_empty(), "cluster.sh down left these running: {left:?}");
    let alive: Vec<i32> = tree.into_iter().filter(|p| common::process_alive(*p)).collect();
    assert!(alive.is_empty(), "cluster.sh down left these processes of the cluster running: {alive:?}");
    drop(guard);
}
