//! Joining a cluster: a node connects to any server of a three-server JetStream cluster, gets
//! one shared bucket however many nodes create it, keeps working when a server dies, and gets a
//! clear error when no server answers.

use async_nats::jetstream::kv;
use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions};

#[tokio::test]
async fn nodes_share_buckets_and_survive_a_dead_server() {
    let mut servers = NatsServers::start(3).await.unwrap();
    let urls = servers.urls();
    // Each node knows a different server first; the bucket is created once, by whichever wins.
    let mut nodes = Vec::new();
    for (i, first) in urls.iter().enumerate() {
        let list = std::iter::once(first.clone()).chain(urls.iter().filter(|u| *u != first).cloned());
        let opts = ClusterOptions::new(&list.collect::<Vec<_>>().join(","), &format!("node-{i}")).unwrap();
        nodes.push(Cluster::connect(&opts).await.unwrap());
    }
    let config = || kv::Config { bucket: "nimbus-smoke".into(), history: 1, ..Default::default() };
    // All three create it at once.
    let tasks: Vec<_> =
        nodes.iter().cloned().map(|n| tokio::spawn(async move { n.key_value(config()).await })).collect();
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(t.await.unwrap().unwrap());
    }
    let a = stores.first().unwrap();
    a.put("k", "v1".into()).await.unwrap();
    let c = stores.get(2).unwrap();
    assert_eq!(c.get("k").await.unwrap().unwrap(), "v1");
    let info = nodes.first().unwrap().jetstream().get_stream("KV_nimbus-smoke").await.unwrap().cached_info().clone();
    assert_eq!(info.config.num_replicas, 3);

    // One server dies: writes acknowledged by the remaining quorum are read everywhere.
    servers.kill(0);
    let b = stores.get(1).unwrap();
    let mut put = None;
    for _ in 0..100 {
        match b.put("k", "v2".into()).await {
            Ok(r) => {
                put = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(put.is_some(), "no write accepted within 10 s of losing one server of three");
    assert_eq!(c.get("k").await.unwrap().unwrap(), "v2");
    servers.restart(0).await.unwrap();
}

#[tokio::test]
async fn no_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = ClusterOptions::new(&format!("nats://127.0.0.1:{port}"), "lonely").unwrap();
    let err = Cluster::connect(&opts).await.unwrap_err().to_string();
    assert!(err.contains(&format!("cannot connect to NATS at nats://127.0.0.1:{port}")), "{err}");
    assert!(err.contains("scripts/cluster.sh up"), "{err}");
}
