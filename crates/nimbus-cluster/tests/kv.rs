//! The KV store on JetStream (`NatsKv`) against a real three-server cluster on loopback: the
//! `KvStore` semantics as a table of cases (versions, compare-and-swap, increment, exact TTL
//! on a clock the test moves while the servers still hold the keys), listing by prefix and
//! cursor, namespaces, limits; increments from three nodes × 100 concurrent callers (durable
//! and volatile) with none lost; and a server killed mid-run losing no acknowledged write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions, NatsKv};
use nimbus_core::kv::{KvError, KvPage, KvStore, MAX_KEY_BYTES, MAX_LIST_LIMIT};
use nimbus_core::kv_conformance;

/// How long any one test may run.
const TEST_BOUND: Duration = Duration::from_secs(120);

/// One node per server, each knowing its own server first.
async fn nodes(servers: &NatsServers) -> Vec<Cluster> {
    let urls = servers.urls();
    let mut out = Vec::new();
    for (i, first) in urls.iter().enumerate() {
        let list: Vec<String> =
            std::iter::once(first.clone()).chain(urls.iter().filter(|u| *u != first).cloned()).collect();
        let opts = ClusterOptions::new(&list.join(","), &format!("node-{i}")).unwrap();
        out.push(Cluster::connect(&opts).await.unwrap());
    }
    out
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn names(p: KvPage) -> Vec<String> {
    p.keys.into_iter().map(|k| k.name).collect()
}

/// A store on node 0 with a clock the test moves.
async fn store_with_clock(cluster: &Cluster) -> (NatsKv, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(nimbus_core::ids::now_ms()));
    let n = Arc::clone(&now);
    let kv = NatsKv::open(cluster).await.unwrap().with_clock(Arc::new(move || n.load(Ordering::SeqCst)));
    (kv, now)
}

#[tokio::test]
async fn kv_semantics_hold_on_a_three_server_cluster() {
    tokio::time::timeout(TEST_BOUND, async {
        let servers = NatsServers::start(3).await.unwrap();
        let nodes = nodes(&servers).await;
        let (kv, now) = store_with_clock(&nodes[0]).await;
        assert!(kv.create_namespace("ns").await.unwrap());
        let advance = move |ms| {
            now.fetch_add(ms, Ordering::SeqCst);
        };
        kv_conformance::semantics_table(&kv, &advance).await.unwrap();
        // Another node reads what this one wrote, from its own server.
        let other = NatsKv::open(&nodes[2]).await.unwrap();
        assert_eq!(other.get("ns", "n").await.unwrap().unwrap().value, b("42"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn list_namespaces_limits_and_server_side_expiry() {
    tokio::time::timeout(TEST_BOUND, async {
        let servers = NatsServers::start(3).await.unwrap();
        let nodes = nodes(&servers).await;
        let kv = NatsKv::open(&nodes[1]).await.unwrap();
        kv.create_namespace("ns").await.unwrap();
        list_pages_in_byte_order(&kv).await;
        namespaces_and_unknown_ones(&kv).await;
        limits(&kv).await;
        list_caps_a_page(&kv).await;
        the_servers_reclaim_expired_keys(&kv, &nodes[1]).await;
    })
    .await
    .unwrap();
}

async fn list_pages_in_byte_order(kv: &NatsKv) {
    let keys = ["b", "a/2", "a/1", "a/10", "é", "a", "ab", "z", "a\u{7f}", "a\u{ff}x", "with space", "a.b*>"];
    for k in keys {
        kv.put("ns", k, b("v"), None).await.unwrap();
    }
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = kv.list("ns", "", cursor.as_deref(), 3).await.unwrap();
        assert!(page.keys.len() <= 3);
        all.extend(page.keys.into_iter().map(|k| k.name));
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    let mut sorted: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(all, sorted);
    assert_eq!(names(kv.list("ns", "a/", None, 100).await.unwrap()), ["a/1", "a/10", "a/2"]);
    assert_eq!(names(kv.list("ns", "a\u{ff}", None, 100).await.unwrap()), ["a\u{ff}x"]);
    let first = kv.list("ns", "a/", None, 1).await.unwrap();
    let cursor = first.cursor.clone().unwrap();
    assert_eq!(names(first), ["a/1"]);
    assert_eq!(names(kv.list("ns", "a/", Some(&cursor), 100).await.unwrap()), ["a/10", "a/2"]);
    assert_eq!(kv.list("ns", "a/", None, 3).await.unwrap().cursor, None, "an exact last page has no cursor");
    assert_eq!(kv.list("ns", "", None, 0).await.unwrap().keys.len(), 1, "limit 0 means 1");
    assert!(matches!(kv.list("ns", "", Some("not hex"), 10).await, Err(KvError::BadCursor)));
    for k in keys {
        assert!(kv.delete("ns", k).await.unwrap());
    }
}

async fn namespaces_and_unknown_ones(kv: &NatsKv) {
    assert!(!kv.create_namespace("ns").await.unwrap(), "a second create is a no-op");
    assert!(kv.create_namespace("other").await.unwrap());
    assert!(kv.create_namespace("nimbus:rate-limits").await.unwrap(), "any name, encoded");
    kv.put("other", "a", b("12345"), None).await.unwrap();
    kv.put("other", "bb", b("x"), Some(Duration::from_secs(60))).await.unwrap();
    let got: BTreeMap<String, u64> = kv.namespaces().await.unwrap().into_iter().map(|n| (n.name, n.keys)).collect();
    assert_eq!(got, BTreeMap::from([("nimbus:rate-limits".into(), 0), ("ns".into(), 0), ("other".into(), 2)]));
    assert!(kv.namespaces().await.unwrap().iter().all(|n| n.created_ms > 1_700_000_000_000));
    assert!(kv.delete_namespace("other").await.unwrap());
    assert!(!kv.delete_namespace("other").await.unwrap());
    assert!(kv.delete_namespace("nimbus:rate-limits").await.unwrap());
    assert!(kv.create_namespace("other").await.unwrap());
    assert_eq!(kv.get("other", "a").await.unwrap(), None, "a re-created namespace starts empty");
    assert!(kv.delete_namespace("other").await.unwrap());

    let errors = [
        kv.get("nope", "k").await.err(),
        kv.put("nope", "k", b("v"), None).await.err(),
        kv.delete("nope", "k").await.err(),
        kv.list("nope", "", None, 10).await.err(),
        kv.increment("nope", "k", 1, None).await.err(),
        kv.compare_and_swap("nope", "k", None, b("v"), None).await.err(),
    ];
    for e in errors {
        let e = e.expect("an error");
        assert!(matches!(e, KvError::NoSuchNamespace(ref n) if n == "nope"), "{e}");
        assert!(e.to_string().contains("[kv.nope]"), "{e}");
    }
}

async fn limits(kv: &NatsKv) {
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(kv.put("ns", &long, b("v"), None).await, Err(KvError::KeyLength(513))));
    assert!(matches!(kv.get("ns", "").await, Err(KvError::KeyLength(0))));
    assert!(matches!(kv.increment("ns", &long, 1, None).await, Err(KvError::KeyLength(_))));
    assert!(matches!(kv.increment_volatile("ns", &long, 1, None).await, Err(KvError::KeyLength(_))));
    let big = Bytes::from(vec![b'x'; nimbus_core::kv::MAX_VALUE_BYTES + 1]);
    assert!(matches!(kv.put("ns", "k", big.clone(), None).await, Err(KvError::ValueTooLarge(_))));
    assert!(matches!(kv.compare_and_swap("ns", "k", None, big, None).await, Err(KvError::ValueTooLarge(_))));
    // The longest key is a 1 KiB subject, and the largest value goes through whole (the test
    // servers run with max_payload: 2MB, as docs/cluster.md says every server should).
    let key = "k".repeat(MAX_KEY_BYTES);
    let full = Bytes::from(vec![b'x'; nimbus_core::kv::MAX_VALUE_BYTES]);
    kv.put("ns", &key, full.clone(), None).await.unwrap();
    assert_eq!(kv.get("ns", &key).await.unwrap().unwrap().value, full);
    assert_eq!(names(kv.list("ns", "kkk", None, 10).await.unwrap()), vec![key.clone()]);
    assert!(kv.delete("ns", &key).await.unwrap());
}

async fn list_caps_a_page(kv: &NatsKv) {
    kv.create_namespace("many").await.unwrap();
    let total = MAX_LIST_LIMIT + 5;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let kv = kv.clone();
            tokio::spawn(async move {
                for i in (t..total).step_by(8) {
                    kv.put("many", &format!("{i:05}"), b("v"), None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let page = kv.list("many", "", None, usize::MAX).await.unwrap();
    assert_eq!(page.keys.len(), MAX_LIST_LIMIT);
    assert_eq!(page.keys.first().unwrap().name, "00000");
    let rest = kv.list("many", "", page.cursor.as_deref(), usize::MAX).await.unwrap();
    assert_eq!(
        (names(rest.clone()), rest.cursor),
        ((MAX_LIST_LIMIT..total).map(|i| format!("{i:05}")).collect(), None)
    );
    assert!(kv.delete_namespace("many").await.unwrap());
}

/// Keys carry `Nats-TTL`, so the servers remove them too (nothing sweeps on the nimbus side).
async fn the_servers_reclaim_expired_keys(kv: &NatsKv, cluster: &Cluster) {
    kv.create_namespace("ttl").await.unwrap();
    kv.put("ttl", "a", b("v"), Some(Duration::from_secs(1))).await.unwrap();
    kv.put("ttl", "keep", b("v"), None).await.unwrap();
    kv.put("ttl", "b", b("v"), None).await.unwrap();
    kv.put("ttl", "b", b("w"), Some(Duration::from_secs(1))).await.unwrap();
    let stream = format!("KV_{}", NatsKv::bucket_name("ttl"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut s = cluster.jetstream().get_stream(&stream).await.unwrap();
        let messages = s.info().await.unwrap().state.messages;
        if messages == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{messages} messages left after 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(names(kv.list("ttl", "", None, 10).await.unwrap()), ["keep"]);
    assert_eq!(kv.get("ttl", "b").await.unwrap(), None);
}

/// The proof: three nodes, each on its own server, 100 concurrent increments each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_three_nodes_are_never_lost() {
    tokio::time::timeout(TEST_BOUND, async {
        let servers = NatsServers::start(3).await.unwrap();
        let nodes = nodes(&servers).await;
        let mut stores = Vec::new();
        for n in &nodes {
            stores.push(NatsKv::open(n).await.unwrap());
        }
        stores[0].create_namespace("ns").await.unwrap();
        let mut sums = concurrently(&stores, 100, |kv| async move { kv.increment("ns", "n", 1, None).await }).await;
        sums.sort_unstable();
        assert_eq!(sums, (1..=300).collect::<Vec<i64>>(), "each increment saw its own sum");
        for kv in &stores {
            assert_eq!(kv.get("ns", "n").await.unwrap().unwrap().value, b("300"));
        }

        // Volatile counters (the gateway's rate limits) are as shared and as exact.
        let window = Some(Duration::from_secs(2));
        let mut sums =
            concurrently(&stores, 100, move |kv| async move { kv.increment_volatile("rl", "w", 1, window).await })
                .await;
        sums.sort_unstable();
        assert_eq!(sums, (1..=300).collect::<Vec<i64>>());
        assert_eq!(stores[1].increment_volatile("other", "w", 5, window).await.unwrap(), 5, "namespaces apart");
        assert_eq!(stores[2].get("ns", "w").await.unwrap(), None, "not visible to the other operations");
        // The window ends 2 s after its first increment, on every node.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(stores[2].increment_volatile("rl", "w", 1, window).await.unwrap(), 1, "a new window");
        assert_eq!(stores[0].increment_volatile("rl", "w", 1, window).await.unwrap(), 2);
        assert_eq!(stores[0].increment_volatile("rl", "m", i64::MAX, None).await.unwrap(), i64::MAX);
        assert!(matches!(stores[1].increment_volatile("rl", "m", 1, None).await, Err(KvError::Overflow(_))));
    })
    .await
    .unwrap();
}

/// Run `each` callers of `f` at once on every store; every sum they got.
async fn concurrently<F, Fut>(stores: &[NatsKv], each: usize, f: F) -> Vec<i64>
where
    F: Fn(NatsKv) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<i64, KvError>> + Send,
{
    let mut tasks = Vec::new();
    for kv in stores {
        for _ in 0..each {
            let (kv, f) = (kv.clone(), f.clone());
            tasks.push(tokio::spawn(async move { f(kv).await.unwrap() }));
        }
    }
    let mut sums = Vec::new();
    for t in tasks {
        sums.push(t.await.unwrap());
    }
    sums
}

/// A server is killed while three nodes write: every write acknowledged with `Ok` is there
/// afterwards, read from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_write() {
    tokio::time::timeout(TEST_BOUND, async {
        let mut servers = NatsServers::start(3).await.unwrap();
        let nodes = nodes(&servers).await;
        let mut stores = Vec::new();
        for n in &nodes {
            stores.push(NatsKv::open(n).await.unwrap());
        }
        stores[0].create_namespace("ns").await.unwrap();
        let writers: Vec<_> = stores
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, kv)| tokio::spawn(async move { write_for(kv, i, Duration::from_secs(4)).await }))
            .collect();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        servers.kill(0);
        let mut acked = Vec::new();
        let mut counted = 0;
        for w in writers {
            let (keys, increments) = w.await.unwrap();
            acked.extend(keys);
            counted += increments;
        }
        servers.restart(0).await.unwrap();
        assert!(acked.len() > 30, "only {} writes were acknowledged", acked.len());
        eprintln!("{} keys and {counted} increments acknowledged around the kill", acked.len());
        for kv in &stores {
            for k in &acked {
                let got = read_retrying(kv, k).await;
                assert_eq!(got.as_deref(), Some(k.as_bytes()), "acknowledged {k} is missing");
            }
        }
        let n = read_retrying(&stores[0], "counter").await.unwrap_or_default();
        let n: i64 = std::str::from_utf8(&n).unwrap().parse().unwrap();
        // An increment that timed out may still have landed: at least every acknowledged one.
        assert!(n >= counted, "counter {n} < {counted} acknowledged increments");
    })
    .await
    .unwrap();
}

/// Write keys (and increment a shared counter) for `time`; the acknowledged keys and increments.
async fn write_for(kv: NatsKv, node: usize, time: Duration) -> (Vec<String>, i64) {
    let end = tokio::time::Instant::now() + time;
    let (mut keys, mut increments) = (Vec::new(), 0);
    let mut i = 0;
    while tokio::time::Instant::now() < end && i < 2_000 {
        let key = format!("n{node}-{i:04}");
        if kv.put("ns", &key, b(&key), None).await.is_ok() {
            keys.push(key);
        }
        if kv.increment("ns", "counter", 1, None).await.is_ok() {
            increments += 1;
        }
        i += 1;
    }
    (keys, increments)
}

async fn read_retrying(kv: &NatsKv, key: &str) -> Option<Bytes> {
    for _ in 0..50 {
        match kv.get("ns", key).await {
            Ok(e) => return e.map(|e| e.value),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("{key} could not be read within 10 s");
}

/// A listing made while other nodes write and delete keys holds every key written before it
/// began, the one just written included: the listing's consumer may run on a server that has
/// not yet applied the write, so a listing writes a barrier key first and reads until it
/// arrives (before that, 1 or 2 of these 1,000 listings missed the key just written, in each
/// of 3 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_during_concurrent_writes_misses_no_key() {
    const LISTINGS: usize = 1_000;
    tokio::time::timeout(TEST_BOUND, async {
        let servers = NatsServers::start(3).await.unwrap();
        let nodes = nodes(&servers).await;
        let a = NatsKv::open(&nodes[0]).await.unwrap();
        assert!(a.create_namespace("ns").await.unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut churn = Vec::new();
        for n in [1, 2] {
            let (kv, stop) = (NatsKv::open(&nodes[n]).await.unwrap(), stop.clone());
            churn.push(tokio::spawn(async move {
                // Bounded: at most 10,000 write/delete pairs per node.
                for i in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("churn-{n}-{}", i % 10);
                    kv.put("ns", &key, b("x"), None).await.unwrap();
                    kv.delete("ns", &key).await.unwrap();
                }
            }));
        }
        let mut short = Vec::new();
        for i in 0..LISTINGS {
            a.put("ns", &format!("kept-{i:03}"), b("y"), None).await.unwrap();
            let listed = names(a.list("ns", "kept-", None, MAX_LIST_LIMIT).await.unwrap());
            if listed.len() != i + 1 {
                short.push(i + 1 - listed.len());
            }
        }
        stop.store(true, Ordering::Relaxed);
        for c in churn {
            c.await.unwrap();
        }
        assert!(short.is_empty(), "{} of {LISTINGS} listings missed keys: {short:?}", short.len());
    })
    .await
    .unwrap();
}
