//! The registry on JetStream: aliases, traffic splits, settings, API tokens and managed access
//! keys in the KV bucket `nimbus-registry`, deployment bodies in the KV bucket
//! `nimbus-deployments`, code artifacts in the object store `nimbus-artifacts`, so that every
//! node serves the same deployments.
//!
//! - `nimbus-deployments` holds each deployment's body under a fresh uuid, written (once, never
//!   changed) before `head` names it. A crash between the two leaves a body that `head` never
//!   names: it is never listed or served. Bodies are immutable, so each node keeps the ones it
//!   has read in memory. They have a bucket of their own so that listing tokens or keys, and
//!   watching the registry, never wade through them.
//!
//! Keys of `nimbus-registry` (KV keys allow only `[-/_=.a-zA-Z0-9]`; names from outside are
//! encoded by [`key_part`]):
//! - `head`: the one key a deploy, rollback or traffic change writes to make it live. It holds
//!   the body key of every version in order (version N is the N-th), each alias's version and
//!   each alias's split. Every change is a compare-and-swap on its revision, retried after a
//!   conflict, so concurrent deploys from several nodes get distinct, dense versions and none
//!   is lost, and a node sees the old state or the new one, never a mix.
//! - `meta.<name>`, `token.<id>`, `token-digest.<sha256 hex>` (the id of the token whose
//!   secret has that digest), `access-key.<id>`: one JSON value each (this module owns the
//!   format: `StoredToken` and `StoredKey` below).
//!
//! Artifacts are content-addressed: the object named by a code directory's digest (the
//! embedded store's [`nimbus_store_sqlite::digest_dir`]) is a tar of the directory. The node
//! that stores one keeps its copy in its local cache (`DATA_DIR/artifacts`, the embedded
//! store's layout); another node fetches it when the control plane asks
//! ([`Registry::fetch_artifacts`], before it builds a version that reads the code), unpacks it
//! beside the cache and moves it in only when the unpacked tree has the digest it is named by.
//!
//! A watch on the whole bucket, opened before [`NatsRegistry::open`] returns, moves the
//! [`Registry::changes`] receiver on after every write by any node (and after the watch is
//! re-established following a lost connection, when writes may have been missed).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{kv, object_store};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use nimbus_core::{
    AccessKeyRecord, DeploymentRecord, Grants, NewDeployment, Registry, RegistryError, Scope, TokenDigest, TokenRecord,
};
use nimbus_store_sqlite::{digest_dir, ArtifactStore};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Cluster, ClusterError};

/// The KV bucket of the registry.
pub const REGISTRY_BUCKET: &str = "nimbus-registry";
/// The KV bucket of the deployment bodies.
pub const DEPLOYMENTS_BUCKET: &str = "nimbus-deployments";
/// The object store of the code artifacts.
pub const ARTIFACTS_BUCKET: &str = "nimbus-artifacts";
/// The key every deploy, rollback and traffic change swaps.
const HEAD: &str = "head";
/// How long a change of `head` keeps retrying (conflicts with other nodes, a server lost
/// mid-write) before it reports the failure.
const HEAD_DEADLINE: Duration = Duration::from_secs(30);

/// What is live: the versions, the aliases and their splits. Version N is `versions[N - 1]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Head {
    /// The body key of each version, oldest first.
    versions: Vec<String>,
    aliases: BTreeMap<String, u64>,
    /// Each alias's split (version, percent); absent: all to the alias's version.
    #[serde(default)]
    traffic: BTreeMap<String, Vec<(u64, u32)>>,
}

impl Head {
    fn check(&self, version: u64) -> Result<(), RegistryError> {
        let stored = u64::try_from(self.versions.len()).unwrap_or(u64::MAX);
        if version == 0 || version > stored {
            return Err(RegistryError::NoSuchVersion(version));
        }
        Ok(())
    }
}

/// A deployment's body key value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredDeployment {
    app: String,
    digest: String,
    created_ms: u64,
    format_version: u32,
    body: String,
}

/// A token as `token.<id>` holds it (its digest, never its secret).
#[derive(Serialize, Deserialize)]
struct StoredToken {
    id: String,
    name: Option<String>,
    scope: String,
    functions: Vec<String>,
    /// SHA-256 of the secret, hex.
    digest: String,
    created_ms: u64,
    expires_ms: Option<u64>,
    revoked_ms: Option<u64>,
}

impl From<&TokenRecord> for StoredToken {
    fn from(t: &TokenRecord) -> Self {
        StoredToken {
            id: t.id.clone(),
            name: t.name.clone(),
            scope: t.scope.as_str().to_owned(),
            functions: t.functions.clone(),
            digest: hex::encode(t.digest.as_bytes()),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            revoked_ms: t.revoked_ms,
        }
    }
}

impl StoredToken {
    fn record(self) -> Result<TokenRecord, String> {
        let scope =
            Scope::parse(&self.scope).ok_or_else(|| format!("token {}: unknown scope {:?}", self.id, self.scope))?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&self.digest, &mut digest).map_err(|e| format!("token {}: bad digest: {e}", self.id))?;
        Ok(TokenRecord {
            id: self.id,
            name: self.name,
            scope,
            functions: self.functions,
            digest: TokenDigest::from_bytes(digest),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
        })
    }
}

/// A managed access key as `access-key.<id>` holds it; grants as the embedded store keeps them.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    secret: String,
    name: String,
    #[serde(default)]
    buckets: BTreeMap<String, String>,
    #[serde(default)]
    kv: BTreeMap<String, String>,
    #[serde(default)]
    functions: Vec<String>,
    created_ms: u64,
    expires_ms: Option<u64>,
    revoked_ms: Option<u64>,
}

impl From<&AccessKeyRecord> for StoredKey {
    fn from(k: &AccessKeyRecord) -> Self {
        let words = |m: &BTreeMap<String, nimbus_core::Access>| {
            m.iter().map(|(k, a)| (k.clone(), a.as_str().to_owned())).collect::<BTreeMap<_, _>>()
        };
        StoredKey {
            id: k.id.clone(),
            secret: k.secret.clone(),
            name: k.name.clone(),
            buckets: words(&k.grants.buckets),
            kv: words(&k.grants.kv),
            functions: k.grants.functions.clone(),
            created_ms: k.created_ms,
            expires_ms: k.expires_ms,
            revoked_ms: k.revoked_ms,
        }
    }
}

impl StoredKey {
    fn record(self) -> Result<AccessKeyRecord, String> {
        let access = |m: BTreeMap<String, String>| {
            m.into_iter()
                .map(|(k, w)| {
                    let a = nimbus_core::Access::parse(&w)
                        .ok_or_else(|| format!("unknown access {w:?} (written by a newer nimbus?)"))?;
                    Ok((k, a))
                })
                .collect::<Result<BTreeMap<_, _>, String>>()
        };
        let grants = Grants {
            functions: self.functions,
            buckets: access(self.buckets)?,
            kv: access(self.kv)?,
            ..Grants::default()
        };
        Ok(AccessKeyRecord {
            id: self.id,
            secret: self.secret,
            name: self.name,
            grants,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
        })
    }
}

/// A name from outside as one KV key token: letters, digits, `-` and `_` as they are, any other
/// byte as `=XX` (hex), so that no two names share a key and none holds a `.`.
pub fn key_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('=');
    }
    out
}

/// Aborts the watch task when the registry is dropped.
struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The registry of a cluster node. See the module docs for the layout.
pub struct NatsRegistry {
    kv: kv::Store,
    /// `nimbus-deployments`: the bodies, by uuid.
    deployments: kv::Store,
    objects: object_store::ObjectStore,
    /// The local copies of artifacts (stored here, or fetched and verified).
    artifacts: ArtifactStore,
    /// Bodies read so far, by key (immutable once written).
    bodies: Mutex<HashMap<String, Arc<StoredDeployment>>>,
    changes: watch::Receiver<u64>,
    _watcher: Watcher,
}

impl NatsRegistry {
    /// Open (creating when absent) the bucket and the object store, the local artifact cache
    /// under `data_dir/artifacts`, and the watch that reports other nodes' changes.
    pub async fn open(cluster: &Cluster, data_dir: &Path) -> Result<NatsRegistry, ClusterError> {
        let bucket = |bucket: &str, description: &str| kv::Config {
            bucket: bucket.into(),
            description: description.into(),
            history: 1,
            storage: StorageType::File,
            ..Default::default()
        };
        let registry = bucket(REGISTRY_BUCKET, "nimbus: aliases, traffic, settings, tokens and access keys");
        let kv = cluster.key_value(registry).await?;
        let bodies = bucket(DEPLOYMENTS_BUCKET, "nimbus: deployment bodies, named by the registry head");
        let deployments = cluster.key_value(bodies).await?;
        let objects = cluster
            .object_store(object_store::Config {
                bucket: ARTIFACTS_BUCKET.into(),
                description: Some("nimbus: code artifacts, by content digest".into()),
                storage: StorageType::File,
                ..Default::default()
            })
            .await?;
        let cache = data_dir.join("artifacts");
        let artifacts = ArtifactStore::open(&cache).map_err(|e| {
            ClusterError::Options(format!(
                "cannot open the artifact cache {}: {e}; check the data dir",
                cache.display()
            ))
        })?;
        // The first watch is open before this returns: nothing written after it is missed.
        let first = kv.watch_all().await.map_err(|e| ClusterError::jetstream("watch the registry", e))?;
        let (tx, changes) = watch::channel(0);
        let watcher = Watcher(tokio::spawn(follow(kv.clone(), first, tx)));
        let bodies = Mutex::new(HashMap::new());
        Ok(NatsRegistry { kv, deployments, objects, artifacts, bodies, changes, _watcher: watcher })
    }

    /// `head` and its revision (`None`: not written yet), read from the bucket's stream leader.
    /// Not `kv.entry`: KV buckets allow direct gets, which any replica answers, and a replica
    /// may not have applied the last write yet. Two reads of one sync (the alias, then the
    /// versions) then disagreed: a node following a deploy read the new live alias and the old
    /// version list, and served no live deployment until the next change (`nimbus-bench
    /// cluster` found it); a read after the watch fired could also miss the change for good.
    async fn head(&self) -> Result<(Head, Option<u64>), RegistryError> {
        let subject = format!("{}{HEAD}", self.kv.prefix);
        let message = match self.kv.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok((Head::default(), None)),
            Err(e) => return Err(RegistryError::backend("read the registry head", e)),
        };
        // A delete or purge of the key leaves a marker with this header; a put has none (or PUT).
        if message.headers.get("KV-Operation").is_some_and(|op| op.as_str() != "PUT") {
            return Ok((Head::default(), None));
        }
        let head = serde_json::from_slice(&message.payload)
            .map_err(|e| RegistryError::backend("read the registry head", e))?;
        Ok((head, Some(message.sequence)))
    }

    /// Apply `change` to `head` with compare-and-swap, re-reading and retrying after a conflict
    /// or a failed write. `change` must be idempotent: a write that timed out may have landed,
    /// and the retry then sees its own effect.
    async fn change_head<T>(
        &self,
        action: &'static str,
        mut change: impl FnMut(&mut Head) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let deadline = Instant::now() + HEAD_DEADLINE;
        let mut attempt: u64 = 0;
        loop {
            let failure = match self.head().await {
                Ok((mut head, revision)) => {
                    let out = change(&mut head)?;
                    let value = serde_json::to_vec(&head).map_err(|e| RegistryError::backend(action, e))?;
                    let written = match revision {
                        Some(r) => self.kv.update(HEAD, value.into(), r).await.map(drop).map_err(|e| e.to_string()),
                        None => self.kv.create(HEAD, value.into()).await.map(drop).map_err(|e| e.to_string()),
                    };
                    match written {
                        Ok(()) => return Ok(out),
                        Err(e) => e,
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(RegistryError::backend(action, std::io::Error::other(failure)));
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Write a body under `key`, retrying a failed write (a server lost mid-write) until
    /// [`HEAD_DEADLINE`]: a body is written once with one value, so a repeat is harmless.
    async fn put_retried(&self, action: &'static str, key: &str, value: Bytes) -> Result<(), RegistryError> {
        let deadline = Instant::now() + HEAD_DEADLINE;
        let mut attempt = 0;
        loop {
            match self.deployments.put(key, value.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(RegistryError::backend(action, e)),
                Err(_) => {}
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// The body under `key`, from memory or the bucket.
    async fn body(&self, version: u64, key: &str) -> Result<Arc<StoredDeployment>, RegistryError> {
        if let Some(b) = self.bodies.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(b);
        }
        let value = self.deployments.get(key).await.map_err(|e| RegistryError::backend("read a deployment", e))?;
        let value = value.ok_or_else(|| {
            RegistryError::backend(
                "read a deployment",
                std::io::Error::other(format!(
                    "deployment {version} is in the registry head but its body {key} is missing"
                )),
            )
        })?;
        let body: StoredDeployment =
            serde_json::from_slice(&value).map_err(|e| RegistryError::backend("read a deployment", e))?;
        let body = Arc::new(body);
        if let Ok(mut m) = self.bodies.lock() {
            m.insert(key.to_owned(), body.clone());
        }
        Ok(body)
    }

    /// The JSON value under `key`, if any.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        action: &'static str,
        key: &str,
    ) -> Result<Option<(T, u64)>, RegistryError> {
        let entry = self.kv.entry(key).await.map_err(|e| RegistryError::backend(action, e))?;
        match entry.filter(|e| e.operation == kv::Operation::Put) {
            None => Ok(None),
            Some(e) => {
                let value = serde_json::from_slice(&e.value).map_err(|e| RegistryError::backend(action, e))?;
                Ok(Some((value, e.revision)))
            }
        }
    }

    /// Every key that starts with `prefix`.
    async fn keys_under(&self, action: &'static str, prefix: &str) -> Result<Vec<String>, RegistryError> {
        let mut keys = self.kv.keys().await.map_err(|e| RegistryError::backend(action, e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| RegistryError::backend(action, e))?;
            if k.starts_with(prefix) {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Create `key` with `value`; `Ok(false)` when it exists.
    async fn create(&self, action: &'static str, key: &str, value: Vec<u8>) -> Result<bool, RegistryError> {
        match self.kv.create(key, value.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(RegistryError::backend(action, e)),
        }
    }

    /// Mark the JSON record under `key` revoked at `at_ms` (its `revoked_ms` field, which
    /// `revoked_at` picks), compare-and-swap on its revision; `None` when there is no record or
    /// it is revoked already.
    async fn revoke<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        action: &'static str,
        key: &str,
        at_ms: u64,
        revoked_at: impl Fn(&mut T) -> &mut Option<u64>,
    ) -> Result<Option<T>, RegistryError> {
        let deadline = Instant::now() + HEAD_DEADLINE;
        let mut attempt = 0;
        loop {
            let Some((mut record, revision)) = self.get_json::<T>(action, key).await? else { return Ok(None) };
            let slot = revoked_at(&mut record);
            if slot.is_some() {
                return Ok(None);
            }
            *slot = Some(at_ms);
            let value = serde_json::to_vec(&record).map_err(|e| RegistryError::backend(action, e))?;
            match self.kv.update(key, value.into(), revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(e) if Instant::now() >= deadline => return Err(RegistryError::backend(action, e)),
                Err(_) => {}
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Copy the artifact `digest` from the object store into the local cache, verified.
    async fn fetch(&self, digest: &str) -> Result<(), RegistryError> {
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| RegistryError::Artifact {
            dir: self.artifacts.path(digest),
            source: e,
        };
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!("{digest:?} is not an artifact digest").into()));
        }
        let tmp = self.artifacts.path(&format!(".tmp-fetch-{digest}-{}", uuid::Uuid::new_v4().simple()));
        let tar = tmp.with_extension("tar");
        let mut object = self.objects.get(digest).await.map_err(|e| fail(Box::new(e)))?;
        let mut file = tokio::fs::File::create(&tar).await.map_err(|e| fail(Box::new(e)))?;
        // The object store checks the bytes against their SHA-256 as they arrive.
        let copied = tokio::io::copy(&mut object, &mut file).await;
        drop(file);
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tar);
            return Err(fail(Box::new(e)));
        }
        let (digest_owned, dest) = (digest.to_owned(), self.artifacts.path(digest));
        let unpacked = tokio::task::spawn_blocking(move || unpack_verified(&tar, &tmp, &dest, &digest_owned))
            .await
            .map_err(|e| fail(Box::new(e)))?;
        unpacked.map_err(|e| fail(e.into()))
    }
}

/// Unpack `tar` into `tmp`, check that the tree has `digest`, and move it to `dest`.
fn unpack_verified(tar: &Path, tmp: &Path, dest: &Path, digest: &str) -> Result<(), String> {
    let result = (|| {
        let file = std::fs::File::open(tar).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(tmp).map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(file);
        archive.set_preserve_permissions(true);
        archive.unpack(tmp).map_err(|e| format!("cannot unpack the artifact: {e}"))?;
        // Readable by a sandboxed function (another user), as the embedded store leaves it.
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let got = digest_dir(tmp).map_err(|e| e.to_string())?;
        if got != digest {
            return Err(format!(
                "the artifact fetched from NATS has the digest {got}, not {digest}: it is corrupt or was \
                 tampered with; nothing was cached"
            ));
        }
        match std::fs::rename(tmp, dest) {
            Ok(()) => Ok(()),
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })();
    let _ = std::fs::remove_file(tar);
    let _ = std::fs::remove_dir_all(tmp);
    result
}

/// Write the tree at `dir` as a tar file at `to`.
fn pack(dir: &Path, to: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(to)?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()?.sync_all()
}

/// A short pause before retrying a contended write: grows with the attempt, with jitter so
/// that nodes racing for `head` do not retry in step.
fn backoff(attempt: u64) -> Duration {
    let jitter = u64::from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) % 7,
    );
    Duration::from_millis((attempt.min(20) * 5) + jitter)
}

/// Move `tx` on after every write to the bucket, re-opening the watch when it ends (a lost
/// connection); a re-opened watch also moves it on, as writes may have been missed meanwhile.
async fn follow(kv: kv::Store, mut watch: kv::Watch, tx: watch::Sender<u64>) {
    loop {
        while let Some(entry) = watch.next().await {
            if entry.is_err() {
                break;
            }
            tx.send_modify(|n| *n += 1);
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match kv.watch_all().await {
                Ok(w) => {
                    watch = w;
                    tx.send_modify(|n| *n += 1);
                    break;
                }
                Err(e) => tracing::warn!("cannot watch the registry bucket {REGISTRY_BUCKET}: {e}; retrying"),
            }
        }
    }
}

#[async_trait]
impl Registry for NatsRegistry {
    async fn deployments(&self) -> Result<Vec<DeploymentRecord>, RegistryError> {
        let (head, _) = self.head().await?;
        let mut out = Vec::with_capacity(head.versions.len());
        for (version, key) in (1u64..).zip(&head.versions) {
            let b = self.body(version, key).await?;
            out.push(DeploymentRecord {
                version,
                app: b.app.clone(),
                digest: b.digest.clone(),
                created_ms: b.created_ms,
                format_version: b.format_version,
                body: b.body.clone(),
            });
        }
        Ok(out)
    }

    async fn add_deployment(&self, d: NewDeployment<'_>, alias: &str) -> Result<DeploymentRecord, RegistryError> {
        let stored = StoredDeployment {
            app: d.app.to_owned(),
            digest: d.digest.to_owned(),
            created_ms: nimbus_core::ids::now_ms(),
            format_version: d.format_version,
            body: d.body.to_owned(),
        };
        let key = uuid::Uuid::new_v4().simple().to_string();
        let value = serde_json::to_vec(&stored).map_err(|e| RegistryError::backend("record the deployment", e))?;
        self.put_retried("record the deployment", &key, Bytes::from(value)).await?;
        let version = self
            .change_head("record the deployment", |head| {
                // A retry after a write that landed finds the body already named.
                let at = match head.versions.iter().position(|k| *k == key) {
                    Some(i) => i + 1,
                    None => {
                        head.versions.push(key.clone());
                        head.versions.len()
                    }
                };
                let version = u64::try_from(at).unwrap_or(u64::MAX);
                head.aliases.insert(alias.to_owned(), version);
                head.traffic.remove(alias);
                Ok(version)
            })
            .await?;
        let record = DeploymentRecord {
            version,
            app: stored.app.clone(),
            digest: stored.digest.clone(),
            created_ms: stored.created_ms,
            format_version: stored.format_version,
            body: stored.body.clone(),
        };
        if let Ok(mut m) = self.bodies.lock() {
            m.insert(key, Arc::new(stored));
        }
        Ok(record)
    }

    async fn alias(&self, name: &str) -> Result<Option<u64>, RegistryError> {
        Ok(self.head().await?.0.aliases.get(name).copied())
    }

    async fn set_alias(&self, name: &str, version: u64) -> Result<(), RegistryError> {
        self.set_traffic(name, version, &[]).await
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, RegistryError> {
        let value = self
            .kv
            .get(format!("meta.{}", key_part(key)))
            .await
            .map_err(|e| RegistryError::backend("read a setting", e))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), RegistryError> {
        self.kv
            .put(format!("meta.{}", key_part(key)), Bytes::copy_from_slice(value.as_bytes()))
            .await
            .map(drop)
            .map_err(|e| RegistryError::backend("write a setting", e))
    }

    async fn put_artifact(&self, dir: &Path) -> Result<String, RegistryError> {
        let fail =
            |e: Box<dyn std::error::Error + Send + Sync>| RegistryError::Artifact { dir: dir.to_owned(), source: e };
        let (store, owned) = (self.artifacts.clone(), dir.to_owned());
        let (digest, path) = tokio::task::spawn_blocking(move || store.put_dir(&owned))
            .await
            .map_err(|e| fail(Box::new(e)))?
            .map_err(|e| fail(Box::new(e)))?;
        if self.objects.info(&digest).await.is_ok() {
            return Ok(digest);
        }
        let tar = self.artifacts.path(&format!(".tmp-put-{digest}-{}.tar", uuid::Uuid::new_v4().simple()));
        let to = tar.clone();
        let packed = tokio::task::spawn_blocking(move || pack(&path, &to)).await.map_err(|e| fail(Box::new(e)))?;
        let put = match packed {
            Ok(()) => match tokio::fs::File::open(&tar).await {
                Ok(mut file) => {
                    self.objects.put(digest.as_str(), &mut file).await.map(drop).map_err(|e| fail(Box::new(e)))
                }
                Err(e) => Err(fail(Box::new(e))),
            },
            Err(e) => Err(fail(Box::new(e))),
        };
        let _ = std::fs::remove_file(&tar);
        put.map(|()| digest)
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        self.artifacts.path(digest)
    }

    async fn add_token(&self, token: &TokenRecord) -> Result<(), RegistryError> {
        let action = "store a token";
        let value = serde_json::to_vec(&StoredToken::from(token)).map_err(|e| RegistryError::backend(action, e))?;
        let id_key = format!("token.{}", key_part(&token.id));
        if !self.create(action, &id_key, value).await? {
            return Err(RegistryError::DuplicateToken("id"));
        }
        let digest_key = format!("token-digest.{}", hex::encode(token.digest.as_bytes()));
        if !self.create(action, &digest_key, token.id.clone().into_bytes()).await? {
            let _ = self.kv.delete(&id_key).await;
            return Err(RegistryError::DuplicateToken("digest"));
        }
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, RegistryError> {
        let action = "read the tokens";
        let mut out = Vec::new();
        for key in self.keys_under(action, "token.").await? {
            if let Some((t, _)) = self.get_json::<StoredToken>(action, &key).await? {
                out.push(t.record().map_err(|e| RegistryError::backend(action, std::io::Error::other(e)))?);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    async fn revoke_token(&self, id: &str, at_ms: u64) -> Result<Option<TokenRecord>, RegistryError> {
        let action = "revoke a token";
        let revoked = self
            .revoke::<StoredToken>(action, &format!("token.{}", key_part(id)), at_ms, |t| &mut t.revoked_ms)
            .await?;
        revoked.map(|t| t.record().map_err(|e| RegistryError::backend(action, std::io::Error::other(e)))).transpose()
    }

    async fn token_by_digest(&self, digest: &TokenDigest) -> Result<Option<TokenRecord>, RegistryError> {
        let action = "look up a token";
        let key = format!("token-digest.{}", hex::encode(digest.as_bytes()));
        let Some(id) = self.kv.get(key).await.map_err(|e| RegistryError::backend(action, e))? else { return Ok(None) };
        let id = String::from_utf8_lossy(&id).into_owned();
        match self.get_json::<StoredToken>(action, &format!("token.{}", key_part(&id))).await? {
            Some((t, _)) => t.record().map(Some).map_err(|e| RegistryError::backend(action, std::io::Error::other(e))),
            None => Ok(None),
        }
    }

    async fn add_access_key(&self, key: &AccessKeyRecord) -> Result<(), RegistryError> {
        let action = "store an access key";
        let value = serde_json::to_vec(&StoredKey::from(key)).map_err(|e| RegistryError::backend(action, e))?;
        if !self.create(action, &format!("access-key.{}", key_part(&key.id)), value).await? {
            return Err(RegistryError::DuplicateAccessKey(key.id.clone()));
        }
        Ok(())
    }

    async fn access_keys(&self) -> Result<Vec<AccessKeyRecord>, RegistryError> {
        let action = "read the access keys";
        let mut out = Vec::new();
        for key in self.keys_under(action, "access-key.").await? {
            if let Some((k, _)) = self.get_json::<StoredKey>(action, &key).await? {
                out.push(k.record().map_err(|e| RegistryError::backend(action, std::io::Error::other(e)))?);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    async fn revoke_access_key(&self, id: &str, at_ms: u64) -> Result<Option<AccessKeyRecord>, RegistryError> {
        let action = "revoke an access key";
        let revoked = self
            .revoke::<StoredKey>(action, &format!("access-key.{}", key_part(id)), at_ms, |k| &mut k.revoked_ms)
            .await?;
        revoked.map(|k| k.record().map_err(|e| RegistryError::backend(action, std::io::Error::other(e)))).transpose()
    }

    async fn traffic(&self, alias: &str) -> Result<Vec<(u64, u32)>, RegistryError> {
        let mut split = self.head().await?.0.traffic.remove(alias).unwrap_or_default();
        split.sort_unstable();
        Ok(split)
    }

    async fn set_traffic(&self, alias: &str, primary: u64, weights: &[(u64, u32)]) -> Result<(), RegistryError> {
        self.change_head("move an alias", |head| {
            head.check(primary)?;
            for (v, _) in weights {
                head.check(*v)?;
            }
            head.aliases.insert(alias.to_owned(), primary);
            if weights.is_empty() {
                head.traffic.remove(alias);
            } else {
                head.traffic.insert(alias.to_owned(), weights.to_vec());
            }
            Ok(())
        })
        .await
    }

    async fn fetch_artifacts(&self, digests: &[String]) -> Result<(), RegistryError> {
        for digest in digests {
            if !self.artifacts.path(digest).is_dir() {
                self.fetch(digest).await?;
            }
        }
        Ok(())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_distinct_key_tokens() {
        assert_eq!(key_part("up_digest"), "up_digest");
        assert_eq!(key_part("canary.live"), "canary=2Elive");
        assert_eq!(key_part(""), "=");
        assert_ne!(key_part("a.b"), key_part("a=2Eb"));
        assert!(key_part("x y/é*>").bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)));
    }
}
