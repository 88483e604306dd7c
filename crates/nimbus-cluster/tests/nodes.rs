//! Membership against a real three-server cluster: nodes see each other through heartbeats, a
//! silent node is forgotten within 5 s, a graceful leave is seen at once, a live node's name
//! cannot be taken while a dead one's can, and each node's share of `max_instances` follows.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions, Membership};
use nimbus_core::nodes::{LiveNodes, NodeInfo, Nodes};

fn describe(name: &str) -> nimbus_core::nodes::Describe {
    let name = name.to_owned();
    Arc::new(move || NodeInfo {
        name: name.clone(),
        url: format!("http://{name}.test"),
        version: "test".into(),
        started_ms: 1,
        in_flight: 2,
        load_average: Some(0.5),
        warm_instances: 3,
        last_seen_ms: nimbus_core::ids::now_ms(),
    })
}

async fn join(servers: &NatsServers, name: &str) -> Result<(Membership, LiveNodes), String> {
    let mut opts = ClusterOptions::new(&servers.url(), name).unwrap();
    opts.replicas = servers.len();
    let cluster = Cluster::connect(&opts).await.unwrap();
    let m = Membership::join(&cluster, describe(name)).await.map_err(|e| e.to_string())?;
    // As `nimbus up` does: the scheduler's live nodes follow the membership.
    let live = LiveNodes::default();
    m.share_with(live.clone());
    Ok((m, live))
}

async fn names(m: &Membership) -> Vec<String> {
    m.nodes().await.unwrap().into_iter().map(|n| n.name).collect()
}

/// Poll `m`'s list until it is `want` (the list is the signal), within `within`.
async fn until(m: &Membership, want: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = names(m).await;
        if got == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "after {within:?} the list is {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_see_each_other_and_forget_the_dead() {
    let servers = NatsServers::start(3).await.unwrap();
    let (a, live_a) = join(&servers, "node-a").await.unwrap();
    let (b, _) = join(&servers, "node-b").await.unwrap();
    let (c, live_c) = join(&servers, "node-c").await.unwrap();
    for m in [&a, &b, &c] {
        until(m, &["node-a", "node-b", "node-c"], Duration::from_secs(5)).await;
    }
    let listed = a.nodes().await.unwrap();
    let info_c = listed.iter().find(|n| n.name == "node-c").unwrap();
    assert_eq!(
        (info_c.url.as_str(), info_c.in_flight, info_c.warm_instances, info_c.load_average),
        ("http://node-c.test", 2, 3, Some(0.5))
    );
    assert!(nimbus_core::ids::now_ms() - info_c.last_seen_ms < 3_000, "{info_c:?}");
    assert_eq!((live_a.get(), live_c.get()), ((3, 0), (3, 2)));
    assert_eq!((live_a.share(10), live_c.share(10)), (4, 3));

    // A node that stops without a word (its heartbeats stop): gone within 5 s.
    drop(b);
    until(&a, &["node-a", "node-c"], Duration::from_secs(5)).await;
    until(&c, &["node-a", "node-c"], Duration::from_secs(1)).await;
    assert_eq!((live_a.get(), live_c.get()), ((2, 0), (2, 1)));
    assert_eq!(live_a.share(10), 5);

    // A graceful leave is seen at once.
    c.leave().await;
    let took = until(&a, &["node-a"], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "a leave took {took:?} to be seen");
    assert_eq!(live_a.share(10), 10);
}

#[tokio::test]
async fn a_live_name_cannot_be_taken_a_dead_one_can() {
    let servers = NatsServers::start(1).await.unwrap();
    let (first, _) = join(&servers, "twin").await.unwrap();
    let err = join(&servers, "twin").await.err().unwrap();
    assert!(err.contains("another live node is already named twin, serving http://twin.test"), "{err}");
    assert!(err.contains("--node-name"), "{err}");
    // Killed and restarted at once: the name is free again as soon as the heartbeats stop.
    drop(first);
    let (again, _) = join(&servers, "twin").await.unwrap();
    assert_eq!(names(&again).await, vec!["twin"]);
    let bad = join(&servers, "two words").await.err().unwrap();
    assert!(bad.contains("--node-name"), "{bad}");
}
