//! The registry on JetStream, node against node: a deploy on one node reaches another through
//! the KV watch; concurrent deploys from three nodes get dense, distinct versions; rollbacks,
//! settings, tokens and access keys are shared; code stored via one node is fetched and
//! verified by another; a NATS server killed mid-run loses no acknowledged deploy; a node woken
//! by a change reads it at once. Then two
//! control planes over two registries follow each other's deploys and rollbacks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions, NatsRegistry};
use nimbus_core::{AccessKeyRecord, Grants, NewDeployment, Registry, RegistryError, Scope, TokenDigest, TokenRecord};

/// How long a change may take to reach another node before a test fails. The budget is
/// 1 s and the watch pushes changes in milliseconds; the bound is wider so that a machine busy
/// with other builds does not fail the test (the benchmark measures propagation).
const BOUND: Duration = Duration::from_secs(5);

/// One node: its connection, registry and data dir.
struct Node {
    registry: Arc<NatsRegistry>,
    cluster: Cluster,
    dir: tempfile::TempDir,
}

/// `n` nodes, node `i` knowing server `i % servers` first (and the others after it).
async fn nodes(servers: &NatsServers, n: usize) -> Vec<Node> {
    let urls = servers.urls();
    let mut out = Vec::new();
    for i in 0..n {
        let first = urls[i % urls.len()].clone();
        let list: Vec<String> =
            std::iter::once(first.clone()).chain(urls.iter().filter(|u| **u != first).cloned()).collect();
        let opts = ClusterOptions::new(&list.join(","), &format!("node-{i}")).unwrap();
        let cluster = Cluster::connect(&opts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(NatsRegistry::open(&cluster, dir.path()).await.unwrap());
        out.push(Node { registry, cluster, dir });
    }
    out
}

fn deployment<'a>(app: &'a str, body: &'a str) -> NewDeployment<'a> {
    NewDeployment { app, digest: "d1g", format_version: 3, body }
}

/// Wait (bounded) until `check` holds, re-checking after each change `registry` reports.
async fn eventually<F, Fut>(registry: &NatsRegistry, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut changes = registry.changes().unwrap();
    let deadline = Instant::now() + BOUND;
    while !check().await {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not seen within {BOUND:?}: {what}");
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), changes.changed()).await;
    }
}

#[tokio::test]
async fn a_deploy_on_one_node_is_seen_by_another() {
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 2).await;
    let (a, b) = (&n[0].registry, &n[1].registry);
    let mut changes = b.changes().unwrap();
    changes.borrow_and_update();
    let record = a.add_deployment(deployment("shop", "{\"v\":1}"), "live").await.unwrap();
    assert_eq!(record.version, 1);
    tokio::time::timeout(BOUND, changes.changed()).await.expect("B's changes fired").unwrap();
    eventually(b, "deployment 1 on B", || async { b.alias("live").await.unwrap() == Some(1) }).await;
    let seen = b.deployments().await.unwrap();
    assert_eq!(seen, vec![record.clone()], "B reads what A stored, version and body");

    // A body written by a node that crashed before it moved `head` is never listed, and the
    // next deploy still gets the next version.
    let js = async_nats::jetstream::new(n[0].cluster.client().clone());
    let bodies = js.get_key_value(nimbus_cluster::registry::DEPLOYMENTS_BUCKET).await.unwrap();
    bodies.put("0123456789abcdef0123456789abcdef", "{\"app\":\"orphan\"}".into()).await.unwrap();
    let second = b.add_deployment(deployment("shop", "{\"v\":2}"), "live").await.unwrap();
    assert_eq!(second.version, 2);
    let listed = a.deployments().await.unwrap();
    assert_eq!(listed.iter().map(|d| (d.version, d.app.as_str())).collect::<Vec<_>>(), [(1, "shop"), (2, "shop")]);

    // Settings are shared too, whatever their names.
    a.set_meta("canary.live", "{\"x\":1}").await.unwrap();
    assert_eq!(b.meta("canary.live").await.unwrap().as_deref(), Some("{\"x\":1}"));
    assert_eq!(b.meta("canary=2Elive").await.unwrap(), None, "encoded names do not collide");
}

/// A node woken by a change reads that change at once, and its live alias and its version list
/// agree, as the control plane's follower reads them (alias first, then versions). The head is
/// read from the bucket's stream leader: a direct get, answered by any replica, lagged behind a
/// deploy on a busy machine, and a following node then served no live version (seen in a
/// `nimbus-bench cluster` run). This checks the promise; it does not force a replica to lag,
/// so on a quiet machine it passes with direct gets too.
#[tokio::test]
async fn a_node_woken_by_a_deploy_reads_it_at_once() {
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 3).await;
    let (a, c) = (&n[0].registry, &n[2].registry);
    let mut changes = c.changes().unwrap();
    for round in 1..=20u64 {
        changes.borrow_and_update();
        let record = a.add_deployment(deployment("shop", &format!("{{\"v\":{round}}}")), "live").await.unwrap();
        assert_eq!(record.version, round);
        tokio::time::timeout(BOUND, changes.changed()).await.expect("C's changes fired").unwrap();
        let live = c.alias("live").await.unwrap();
        let versions = c.deployments().await.unwrap().len() as u64;
        assert_eq!((live, versions), (Some(round), round), "round {round}: C read a stale registry head");
    }
}

#[tokio::test]
async fn concurrent_deploys_from_three_nodes_get_dense_distinct_versions() {
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 3).await;
    let mut tasks = Vec::new();
    for (i, node) in n.iter().enumerate() {
        for j in 0..10 {
            let registry = node.registry.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("{{\"node\":{i},\"deploy\":{j}}}");
                let record = registry.add_deployment(deployment("shop", &body), "live").await.unwrap();
                (record.version, body)
            }));
        }
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap());
    }
    let versions: BTreeSet<u64> = acked.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=30).collect::<BTreeSet<u64>>(), "30 distinct versions, 1 to 30");
    for node in &n {
        let stored = node.registry.deployments().await.unwrap();
        assert_eq!(stored.len(), 30);
        for (version, body) in &acked {
            let record = &stored[usize::try_from(*version).unwrap() - 1];
            assert_eq!((record.version, &record.body), (*version, body), "version {version} holds its own body");
        }
        assert!(node.registry.alias("live").await.unwrap().is_some_and(|v| (1..=30).contains(&v)));
    }
}

#[tokio::test]
async fn a_rollback_on_one_node_is_seen_by_the_others() {
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 3).await;
    let (a, b, c) = (&n[0].registry, &n[1].registry, &n[2].registry);
    for v in 1..=3 {
        a.add_deployment(deployment("shop", &format!("{{\"v\":{v}}}")), "live").await.unwrap();
    }
    a.set_traffic("live", 3, &[(2, 10), (3, 90)]).await.unwrap();
    eventually(c, "the split on C", || async { c.traffic("live").await.unwrap() == vec![(2, 10), (3, 90)] }).await;

    c.set_alias("live", 1).await.unwrap();
    for (name, r) in [("A", a), ("B", b)] {
        eventually(r, &format!("the rollback on {name}"), || async {
            r.alias("live").await.unwrap() == Some(1) && r.traffic("live").await.unwrap().is_empty()
        })
        .await;
    }
    // A version no node stored is refused, and nothing moves.
    assert!(matches!(b.set_alias("live", 9).await, Err(RegistryError::NoSuchVersion(9))));
    assert!(matches!(b.set_traffic("live", 1, &[(1, 50), (7, 50)]).await, Err(RegistryError::NoSuchVersion(7))));
    assert_eq!(a.alias("live").await.unwrap(), Some(1));
}

fn token(id: &str, secret: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: Some("ci".into()),
        scope: Scope::Deploy,
        functions: vec!["hello".into()],
        digest: TokenDigest::of(secret),
        created_ms: 1_000,
        expires_ms: Some(9_000_000_000_000),
        revoked_ms: None,
    }
}

#[tokio::test]
async fn tokens_and_access_keys_are_shared() {
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 2).await;
    let (a, b) = (&n[0].registry, &n[1].registry);
    let t = token("tok_1", "nbt_secret");
    a.add_token(&t).await.unwrap();
    assert_eq!(b.token_by_digest(&TokenDigest::of("nbt_secret")).await.unwrap(), Some(t.clone()));
    assert_eq!(b.tokens().await.unwrap(), vec![t.clone()]);
    assert!(matches!(b.add_token(&token("tok_1", "other")).await, Err(RegistryError::DuplicateToken("id"))));
    assert!(matches!(b.add_token(&token("tok_2", "nbt_secret")).await, Err(RegistryError::DuplicateToken("digest"))));
    assert_eq!(b.tokens().await.unwrap().len(), 1, "a refused token leaves nothing behind");

    let revoked = a.revoke_token("tok_1", 5_000).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_ms, Some(5_000));
    assert_eq!(b.token_by_digest(&t.digest).await.unwrap().unwrap().revoked_ms, Some(5_000));
    assert_eq!(b.revoke_token("tok_1", 6_000).await.unwrap(), None, "revoked once");

    let mut grants = Grants::default();
    grants.buckets.insert("photos".into(), nimbus_core::Access::Read);
    grants.functions.push("hello".into());
    let key = AccessKeyRecord {
        id: "NIMKAAAABBBBCCCCDDDD".into(),
        secret: "s".repeat(40),
        name: "backup".into(),
        grants,
        created_ms: 2_000,
        expires_ms: None,
        revoked_ms: None,
    };
    a.add_access_key(&key).await.unwrap();
    assert_eq!(b.access_keys().await.unwrap(), vec![key.clone()]);
    assert!(matches!(b.add_access_key(&key).await, Err(RegistryError::DuplicateAccessKey(_))));
    b.revoke_access_key(&key.id, 7_000).await.unwrap().unwrap();
    assert_eq!(a.access_keys().await.unwrap()[0].revoked_ms, Some(7_000));
}

fn write_code(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("index.js"), "exports.handler = async () => 'hi';\n").unwrap();
    std::fs::write(dir.join("lib/data.bin"), (0..=255u8).cycle().take(300_000).collect::<Vec<u8>>()).unwrap();
    std::fs::write(dir.join("bootstrap"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("bootstrap"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn code_stored_via_one_node_is_fetched_and_verified_by_another() {
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 2).await;
    let (a, b) = (&n[0].registry, &n[1].registry);
    let src = tempfile::tempdir().unwrap();
    write_code(src.path());
    let digest = a.put_artifact(src.path()).await.unwrap();
    assert_eq!(digest, nimbus_store_sqlite::digest_dir(src.path()).unwrap(), "the embedded store's digest");
    assert_eq!(a.put_artifact(src.path()).await.unwrap(), digest, "stored again: the same digest");

    let at_b = b.artifact_path(&digest);
    assert!(at_b.starts_with(n[1].dir.path()) && !at_b.exists(), "not on B before it is asked for");
    b.fetch_artifacts(std::slice::from_ref(&digest)).await.unwrap();
    for file in ["index.js", "lib/data.bin", "bootstrap"] {
        assert_eq!(std::fs::read(at_b.join(file)).unwrap(), std::fs::read(src.path().join(file)).unwrap(), "{file}");
    }
    assert_eq!(nimbus_store_sqlite::digest_dir(&at_b).unwrap(), digest, "B's copy has the digest, exec bit included");

    // An object whose content does not have the digest it is named by is refused, not cached.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("index.js"), "tampered").unwrap();
    let tar = other.path().join("x.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        builder.append_path_with_name(other.path().join("index.js"), "index.js").unwrap();
        builder.into_inner().unwrap();
    }
    let fake = "ab".repeat(32);
    let js = async_nats::jetstream::new(n[0].cluster.client().clone());
    let objects = js.get_object_store(nimbus_cluster::registry::ARTIFACTS_BUCKET).await.unwrap();
    objects.put(fake.as_str(), &mut tokio::fs::File::open(&tar).await.unwrap()).await.unwrap();
    let err = b.fetch_artifacts(std::slice::from_ref(&fake)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("not {fake}")) && err.contains("corrupt"), "{err}");
    assert!(!b.artifact_path(&fake).exists());
    let err = b.fetch_artifacts(&["../../etc".to_owned()]).await.unwrap_err().to_string();
    assert!(err.contains("is not an artifact digest"), "{err}");
}

#[tokio::test]
async fn a_killed_server_loses_no_acknowledged_deploy() {
    let mut servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 3).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, node) in n.iter().enumerate() {
        let (registry, tx) = (node.registry.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..12 {
                let body = format!("{{\"node\":{i},\"deploy\":{j}}}");
                // A deploy that fails while the cluster elects new leaders is not acknowledged.
                if let Ok(r) = registry.add_deployment(deployment("shop", &body), "live").await {
                    let _ = tx.send((r.version, body));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    drop(tx);
    let mut acked = Vec::new();
    while acked.len() < 6 {
        acked.push(tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap());
    }
    servers.kill(0);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t).await.unwrap().unwrap();
    }
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }
    assert!(acked.len() > 12, "deploys went on after the server died: {} acknowledged", acked.len());
    servers.restart(0).await.unwrap();
    for node in &n[1..] {
        let stored = node.registry.deployments().await.unwrap();
        let versions: Vec<u64> = stored.iter().map(|r| r.version).collect();
        assert_eq!(versions, (1..=u64::try_from(stored.len()).unwrap()).collect::<Vec<_>>(), "dense");
        for (version, body) in &acked {
            let record = stored.iter().find(|r| r.version == *version).expect("an acknowledged version is kept");
            assert_eq!(&record.body, body, "version {version}");
        }
    }
}

/// Pools that get every function ready at once (the control plane's own tests need no runtime).
struct ReadyPools;

#[async_trait::async_trait]
impl nimbus_core::Pools for ReadyPools {
    async fn prepare(&self, _: &[Arc<nimbus_core::FunctionVersion>]) -> Result<(), nimbus_core::FunctionPrepareError> {
        Ok(())
    }
    fn deploy(&self, _: &[Arc<nimbus_core::FunctionVersion>]) {}
}

/// A KV store in which declaring a namespace always works (these apps declare none).
struct NoKv;

#[async_trait::async_trait]
impl nimbus_core::KvStore for NoKv {
    async fn create_namespace(&self, _: &str) -> Result<bool, nimbus_core::KvError> {
        Ok(true)
    }
    async fn delete_namespace(&self, _: &str) -> Result<bool, nimbus_core::KvError> {
        Ok(false)
    }
    async fn namespaces(&self) -> Result<Vec<nimbus_core::kv::KvNamespace>, nimbus_core::KvError> {
        Ok(Vec::new())
    }
    async fn get(&self, ns: &str, _: &str) -> Result<Option<nimbus_core::kv::KvEntry>, nimbus_core::KvError> {
        Err(nimbus_core::KvError::NoSuchNamespace(ns.into()))
    }
    async fn put(&self, ns: &str, _: &str, _: bytes::Bytes, _: Option<Duration>) -> Result<u64, nimbus_core::KvError> {
        Err(nimbus_core::KvError::NoSuchNamespace(ns.into()))
    }
    async fn delete(&self, ns: &str, _: &str) -> Result<bool, nimbus_core::KvError> {
        Err(nimbus_core::KvError::NoSuchNamespace(ns.into()))
    }
    async fn list(
        &self,
        ns: &str,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<nimbus_core::kv::KvPage, nimbus_core::KvError> {
        Err(nimbus_core::KvError::NoSuchNamespace(ns.into()))
    }
    async fn increment(&self, ns: &str, _: &str, _: i64, _: Option<Duration>) -> Result<i64, nimbus_core::KvError> {
        Err(nimbus_core::KvError::NoSuchNamespace(ns.into()))
    }
    async fn compare_and_swap(
        &self,
        ns: &str,
        _: &str,
        _: Option<u64>,
        _: bytes::Bytes,
        _: Option<Duration>,
    ) -> Result<nimbus_core::kv::CasOutcome, nimbus_core::KvError> {
        Err(nimbus_core::KvError::NoSuchNamespace(ns.into()))
    }
}

/// An app whose one function answers `greeting`.
fn app(dir: &Path, greeting: &str) {
    std::fs::create_dir_all(dir.join("functions/hello")).unwrap();
    std::fs::write(
        dir.join("nimbus.toml"),
        "name = \"shop\"\n\n[functions.hello]\nruntime = \"node\"\nhandler = \"index.handler\"\n\n[[routes]]\npath = \"/hello\"\nfunction = \"hello\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("functions/hello/index.js"), format!("exports.handler = async () => '{greeting}';\n"))
        .unwrap();
}

async fn plane(node: &Node) -> Arc<nimbus_control::ControlPlane> {
    let registry: Arc<dyn Registry> = node.registry.clone();
    let plane = nimbus_control::ControlPlane::load(registry, Arc::new(ReadyPools), Arc::new(NoKv), node.dir.path())
        .await
        .unwrap();
    assert!(plane.follow_registry().is_some(), "a cluster registry is followed");
    plane
}

/// Wait (bounded) until `plane` serves `version` as live.
async fn serves(plane: &nimbus_control::ControlPlane, version: u64, what: &str) {
    use nimbus_control::Control;
    let deadline = Instant::now() + BOUND;
    while plane.snapshot().live.as_ref().map(|l| l.version) != Some(version) {
        assert!(Instant::now() < deadline, "not served within {BOUND:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn control_planes_follow_each_others_deploys_and_rollbacks() {
    use nimbus_control::Control;
    let servers = NatsServers::start(3).await.unwrap();
    let n = nodes(&servers, 2).await;
    let (a, b) = (plane(&n[0]).await, plane(&n[1]).await);
    let src = tempfile::tempdir().unwrap();
    app(src.path(), "one");
    assert_eq!(a.deploy_dir(src.path(), false).await.unwrap().version, 1);
    serves(&b, 1, "A's first deploy on B").await;
    // B runs the code from its own verified copy, fetched before the version went live.
    let hello = b.snapshot().live.as_ref().unwrap().functions["hello"].clone();
    assert!(hello.code_path.starts_with(n[1].dir.path()), "{}", hello.code_path.display());
    assert!(std::fs::read_to_string(hello.code_path.join("index.js")).unwrap().contains("'one'"));

    app(src.path(), "two");
    a.deploy_dir(src.path(), false).await.unwrap();
    serves(&b, 2, "A's second deploy on B").await;
    let snap = b.snapshot();
    let code = &snap.live.as_ref().unwrap().functions["hello"].code_path;
    assert!(std::fs::read_to_string(code.join("index.js")).unwrap().contains("'two'"));
    assert_eq!(snap.versions.len(), 2, "B knows both versions (previews, rollbacks)");

    let rolled = b.rollback(Some(1), None).await.unwrap();
    assert!(rolled.changed);
    serves(&a, 1, "B's rollback on A").await;
    assert_eq!(a.snapshot().versions.len(), 2);

    // A token made on A works on B; revoked on A, B refuses it.
    let spec =
        nimbus_control::TokenSpec { name: Some("ci".into()), scope: Scope::Read, functions: vec![], expires_ms: None };
    let created = a.create_token(spec).await.unwrap();
    let digest = TokenDigest::of(&created.secret);
    let deadline = Instant::now() + BOUND;
    while b.token(&digest).is_none() {
        assert!(Instant::now() < deadline, "A's token not accepted by B within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.revoke_token(&created.token.record.id).await.unwrap();
    while b.token(&digest).is_some() {
        assert!(Instant::now() < deadline + BOUND, "A's revocation not seen by B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
