//! The control plane: deployments in, an in-memory snapshot out.
//!
//! A deploy validates the whole manifest, stores each function's code as an artifact, asks the
//! pools to get every function ready (wasm components compile here), records the deployment and
//! moves the `live` alias in one registry operation, then swaps the snapshot the request path
//! reads (one atomic pointer store). Any failure before the registry write leaves nothing
//! visible: artifacts are content-addressed and unreferenced ones are harmless. In-flight
//! requests keep the `Arc`s of the version they started on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::{
    AccessKeyRecord, AccessKeySource, FunctionPrepareError, FunctionVersion, KvError, KvStore, NewDeployment, Pools,
    Registry, RegistryError, TokenDigest, TokenRecord,
};
use nimbus_manifest::schedule::ScheduleSpec;
use nimbus_manifest::{Diagnostics, Manifest, RouteSpec};
use sha2::{Digest, Sha256};

use crate::access_keys::{AccessKeyError, AccessKeySpec, CreatedAccessKey, KeySet, Known};
use crate::router::Router;
use crate::snapshot::{DeploymentView, Snapshot, LIVE};
use crate::stored::{self, DeploymentContent, FormatError};
use crate::tokens::{CreatedToken, LiveToken, TokenError, TokenSet, TokenSpec};
use crate::traffic::{CanarySpec, TrafficError, TrafficStatus};
use crate::upload::{self, UploadError};

/// Meta key: digest of what `nimbus up` last deployed from its app directory.
const UP_DIGEST: &str = "up_digest";

/// Why a deploy or rollback did not happen. Nothing live changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest has problems (every one of them, with its location).
    #[error("{0}")]
    Invalid(Diagnostics),
    /// A function's code cannot be got ready (e.g. a component that does not compile).
    #[error("{0}")]
    Refused(#[source] FunctionPrepareError),
    /// The uploaded archive is malformed or breaks the upload rules ([`crate::upload`]).
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("there is no earlier deployment to roll back to")]
    NothingToRollBack,
    #[error("there is no deployment {0}; `nimbus ls` lists them")]
    NoSuchVersion(u64),
    /// The caller may change only some functions (a deploy token limited to them), and this
    /// deploy or rollback changes more; the message says what.
    #[error("{0}")]
    OutsideFunctions(String),
    #[error("cannot store the code of {function}: {source}")]
    Code {
        function: String,
        #[source]
        source: RegistryError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("deployment {version} in the registry is unreadable: {source}")]
    Unreadable {
        version: u64,
        #[source]
        source: FormatError,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the deployment could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the deploy task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot create the KV namespace {name:?}: {source}")]
    Kv {
        name: String,
        #[source]
        source: KvError,
    },
    #[error("cannot create bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: nimbus_core::ObjectError,
    },
    #[error("cannot create or update queue {queue}: {source}")]
    Queue {
        queue: String,
        #[source]
        source: nimbus_core::messages::MqError,
    },
    /// A canary deploy that cannot start (bad flags, nothing live to compare with).
    #[error("{0}")]
    Canary(String),
}

impl DeployError {
    /// Whether the caller's input is at fault (a 4xx), rather than nimbus (a 5xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            DeployError::Invalid(_)
            | DeployError::Upload(_)
            | DeployError::NothingToRollBack
            | DeployError::NoSuchVersion(_)
            | DeployError::OutsideFunctions(_)
            | DeployError::Canary(_) => true,
            DeployError::Refused(e) => e.source.is_invalid(),
            DeployError::Queue { source, .. } => source.is_caller_fault(),
            _ => false,
        }
    }
}

/// The result of a deploy or rollback.
#[derive(Clone, Debug)]
pub struct Deployed {
    pub version: u64,
    pub app: String,
    /// False when nothing changed (the same content as live, or a rollback to the live version).
    pub changed: bool,
    /// Sorted.
    pub functions: Vec<String>,
    pub routes: Vec<RouteSpec>,
    /// What the deployer should know: storage an earlier deployment declared and this one
    /// dropped, which is kept (with how to delete it).
    pub notes: Vec<String>,
}

/// What the HTTP layer asks of the control plane. Implemented by [`ControlPlane`]; the gateway
/// holds it as a trait object, so it never names the registry behind it.
#[async_trait]
pub trait Control: Send + Sync + 'static {
    /// The current snapshot: one atomic load, called on every request.
    fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>>;
    /// Deploy an app uploaded as a tar archive (`POST /v1/deployments`). `only`: the functions
    /// the caller may change (a deploy token limited to them), or `None` for any change.
    async fn deploy_tar(&self, archive: Bytes, only: Option<&[String]>) -> Result<Deployed, DeployError>;
    /// Point `live` at `version`, or at the deployment before the live one; `only` as for
    /// [`Control::deploy_tar`].
    async fn rollback(&self, version: Option<u64>, only: Option<&[String]>) -> Result<Deployed, DeployError>;
    /// The unrevoked token whose secret has `digest` (an expired one too: the caller compares
    /// the expiry with its clock). A lookup in memory, made on every authenticated request.
    fn token(&self, digest: &TokenDigest) -> Option<Arc<LiveToken>>;
    /// Every unrevoked token, oldest first, from memory.
    fn tokens(&self) -> Vec<Arc<LiveToken>>;
    /// Check and create a token: stored (its digest), then added to the in-memory set.
    async fn create_token(&self, spec: TokenSpec) -> Result<CreatedToken, TokenError>;
    /// Revoke a token: stored, then removed from the in-memory set, so it stops working at once.
    async fn revoke_token(&self, id: &str) -> Result<TokenRecord, TokenError>;
    /// Every managed AWS access key, revoked ones included, oldest first, from memory.
    fn access_keys(&self) -> Vec<Arc<AccessKeyRecord>>;
    /// Check and create an access key: stored, then added to the in-memory set, so the AWS port
    /// accepts it from the next request.
    async fn create_access_key(&self, spec: AccessKeySpec) -> Result<CreatedAccessKey, AccessKeyError>;
    /// Revoke an access key: stored, then swapped into the in-memory set, so the AWS port
    /// refuses it from the next request.
    async fn revoke_access_key(&self, id: &str) -> Result<Arc<AccessKeyRecord>, AccessKeyError>;
    /// How `alias` splits its traffic, and its canary (running, or how the last one ended).
    fn traffic(&self, alias: &str) -> Result<TrafficStatus, TrafficError>;
    /// Split `alias`'s traffic (version, percent): checked whole, stored with the alias in one
    /// registry write, then swapped into the snapshot. Ends a running canary.
    async fn set_traffic(&self, alias: &str, weights: &[(u64, u32)]) -> Result<TrafficStatus, TrafficError>;
    /// Deploy an uploaded app as a canary: stored as a new version with `canary.percent` of
    /// the live alias's traffic, then driven by the server ([`crate::traffic`]).
    async fn deploy_canary(
        &self,
        archive: Bytes,
        only: Option<&[String]>,
        canary: CanarySpec,
    ) -> Result<Deployed, DeployError>;
    /// One request answered by `version`: whether it failed (5xx) and how long it took. Called
    /// on every routed request; costs one atomic load unless `version` is a running canary's.
    fn observe(&self, version: u64, failed: bool, elapsed: std::time::Duration);
}

pub struct ControlPlane {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) pools: Arc<dyn Pools>,
    /// Where the namespaces a deployment declares are created.
    kv: Arc<dyn KvStore>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    uploads: PathBuf,
    /// One deploy or rollback at a time.
    pub(crate) lock: tokio::sync::Mutex<()>,
    /// The unrevoked API tokens, as the request path checks them.
    pub(crate) tokens: ArcSwap<TokenSet>,
    /// One token creation or revocation at a time (each replaces the whole set).
    pub(crate) token_lock: tokio::sync::Mutex<()>,
    /// Every managed AWS access key, as the AWS port checks them ([`AccessKeySource`]).
    pub(crate) access_keys: ArcSwap<KeySet>,
    /// One key creation or revocation at a time.
    pub(crate) key_lock: tokio::sync::Mutex<()>,
    /// Where a deploy creates the buckets its manifest declares (set once at start).
    objects: std::sync::OnceLock<Arc<dyn nimbus_core::ObjectStore>>,
    /// Where a deploy creates or updates the queues its manifest declares (set once at start).
    messages: std::sync::OnceLock<Arc<dyn nimbus_core::messages::MessageQueues>>,
    /// The running canary, when there is one (the gateway feeds its health).
    pub(crate) canary: arc_swap::ArcSwapOption<crate::split::CanaryRun>,
    /// How the last canary ended.
    pub(crate) last_canary: std::sync::Mutex<Option<crate::traffic::CanaryOutcome>>,
    /// Where canary decisions are written (set once at start); entries made before wait here.
    pub(crate) audit: std::sync::OnceLock<Arc<dyn nimbus_core::AuditLog>>,
    pub(crate) pending_audit: std::sync::Mutex<Vec<nimbus_core::AuditEntry>>,
    /// This plane, for the task a canary runs in.
    pub(crate) me: std::sync::Weak<ControlPlane>,
}

impl ControlPlane {
    /// Load every stored deployment and serve the `live` one. Uploads are unpacked under
    /// `work_dir/uploads` (emptied here: what is left there is from a crash). A deploy creates
    /// the KV namespaces it declares in `kv`.
    pub async fn load(
        registry: Arc<dyn Registry>,
        pools: Arc<dyn Pools>,
        kv: Arc<dyn KvStore>,
        work_dir: &Path,
    ) -> Result<Arc<ControlPlane>, DeployError> {
        let uploads = work_dir.join("uploads");
        let _ = std::fs::remove_dir_all(&uploads);
        let mut versions = HashMap::new();
        for record in registry.deployments().await? {
            let content = stored::decode(record.format_version, &record.body)
                .map_err(|source| DeployError::Unreadable { version: record.version, source })?;
            // In a cluster, code another node stored is fetched before anything reads it.
            registry.fetch_artifacts(&content.artifact_digests()).await?;
            let view = view(registry.as_ref(), record.version, record.app, record.created_ms, content);
            versions.insert(view.version, Arc::new(view));
        }
        let (live, traffic, interrupted) = crate::split::load_traffic(registry.as_ref(), &versions).await?;
        let tokens = TokenSet::from_records(registry.tokens().await?);
        let access_keys = KeySet::from_records(registry.access_keys().await?);
        pools.deploy(&crate::split::serving(live.as_ref(), &traffic));
        let plane = Arc::new_cyclic(|me| ControlPlane {
            registry,
            pools,
            kv,
            snapshot: ArcSwap::from_pointee(Snapshot { live, versions, traffic }),
            uploads,
            lock: tokio::sync::Mutex::new(()),
            tokens: ArcSwap::from_pointee(tokens),
            token_lock: tokio::sync::Mutex::new(()),
            access_keys: ArcSwap::from_pointee(access_keys),
            key_lock: tokio::sync::Mutex::new(()),
            objects: std::sync::OnceLock::new(),
            messages: std::sync::OnceLock::new(),
            canary: arc_swap::ArcSwapOption::empty(),
            last_canary: std::sync::Mutex::new(None),
            audit: std::sync::OnceLock::new(),
            pending_audit: std::sync::Mutex::new(Vec::new()),
            me: me.clone(),
        });
        plane.settle_interrupted(interrupted).await?;
        Ok(plane)
    }

    /// The object store deploys create declared buckets in (`[buckets.NAME]`). Without one, a
    /// deploy records the buckets but creates none (tests of the control plane alone).
    pub fn set_object_store(&self, store: Arc<dyn nimbus_core::ObjectStore>) {
        let _ = self.objects.set(store);
        if let Some(live) = self.snapshot.load().live.clone() {
            self.watch_buckets(&live);
        }
    }

    /// Tell the object store which buckets `live`'s triggers watch: their changes go to its
    /// outbox (the bucket-trigger forwarder reads it), other buckets' do not.
    pub(crate) fn watch_buckets(&self, live: &DeploymentView) {
        let Some(store) = self.objects.get() else { return };
        let watched = live
            .triggers
            .iter()
            .filter_map(|t| match &t.source {
                nimbus_core::TriggerSource::Bucket(b) => Some(b.bucket.clone()),
                nimbus_core::TriggerSource::Queue(_) => None,
            })
            .collect();
        store.watch_buckets(watched);
    }

    /// The live deployment's triggers, in manifest order.
    pub fn triggers(&self) -> Vec<nimbus_core::TriggerSpec> {
        self.snapshot.load().live.as_ref().map(|l| l.triggers.clone()).unwrap_or_default()
    }

    /// The message queues deploys create or update declared queues in (`[queues.NAME]`).
    /// Without them, a deploy records the queues but creates none (tests of the control plane
    /// alone).
    pub fn set_messages(&self, messages: Arc<dyn nimbus_core::messages::MessageQueues>) {
        let _ = self.messages.set(messages);
    }

    /// Create the declared queues, or update their settings ([`crate::queues::ensure`]).
    async fn ensure_queues(&self, queues: &BTreeMap<String, nimbus_core::QueueSpec>) -> Result<(), DeployError> {
        let Some(messages) = self.messages.get() else { return Ok(()) };
        crate::queues::ensure(messages.as_ref(), queues)
            .await
            .map_err(|(queue, source)| DeployError::Queue { queue, source })
    }

    /// Create the declared buckets that do not exist yet (idempotent; a deploy never deletes
    /// one: data outlives the deployment that declared it).
    async fn create_buckets(&self, buckets: &std::collections::BTreeSet<String>) -> Result<(), DeployError> {
        let Some(store) = self.objects.get() else { return Ok(()) };
        for bucket in buckets {
            if store
                .create_bucket(bucket)
                .await
                .map_err(|source| DeployError::Bucket { bucket: bucket.clone(), source })?
            {
                tracing::info!(bucket, "created the bucket the manifest declares");
            }
        }
        Ok(())
    }

    /// Load what the live deployment needs (compiled wasm components) so that its first
    /// requests after a restart do not wait for it. Failures are logged; requests retry.
    pub async fn warm(&self) {
        let live = self.snapshot.load().live.clone();
        if let Some(l) = live {
            let functions: Vec<Arc<FunctionVersion>> = l.functions.values().cloned().collect();
            if let Err(e) = self.pools.prepare(&functions).await {
                tracing::warn!("cannot prepare the live deployment: {e}");
            }
        }
    }

    /// The async engine runs what is live, or the version an event pinned.
    pub fn function(&self, name: &str, qualifier: Option<&str>) -> Option<Arc<FunctionVersion>> {
        self.snapshot.load().function(name, qualifier)
    }

    /// The live deployment's schedules.
    pub fn schedules(&self) -> Vec<ScheduleSpec> {
        self.snapshot.load().live.as_ref().map(|l| l.schedules.clone()).unwrap_or_default()
    }

    /// Deploy the app in `app_dir`. `from_up` is the deploy `nimbus up` does at start: when the
    /// directory holds exactly what the previous `nimbus up` deployed, nothing is deployed and
    /// the live deployment is served as it is (so a restart neither creates a version nor undoes
    /// a rollback or a `nimbus deploy` made since).
    pub async fn deploy_dir(&self, app_dir: &Path, from_up: bool) -> Result<Deployed, DeployError> {
        let shown = app_dir.join(nimbus_manifest::MANIFEST_FILE).display().to_string();
        self.deploy(app_dir, shown, from_up, None, None).await
    }

    async fn deploy(
        &self,
        app_dir: &Path,
        shown_as: String,
        from_up: bool,
        only: Option<&[String]>,
        canary: Option<CanarySpec>,
    ) -> Result<Deployed, DeployError> {
        let _guard = self.lock.lock().await;
        if canary.is_some() && self.snapshot.load().live.is_none() {
            return Err(DeployError::Canary(
                "a canary needs a live version to compare with; deploy once without --canary".to_owned(),
            ));
        }
        let dir = app_dir.to_owned();
        let (manifest, source) = tokio::task::spawn_blocking(move || load_manifest(&dir, &shown_as)).await??;
        let (app, digest, content) = self.store_code(app_dir, manifest, &source).await?;
        let live = self.snapshot.load().live.clone();
        if let Some(live) = live.clone().filter(|_| from_up) {
            if self.registry.meta(UP_DIGEST).await?.as_deref() == Some(digest.as_str()) {
                // The namespaces were created when this was deployed; ensuring them again is
                // cheap and brings back a KV database that was removed.
                self.create_storage(&Storage::from(&*live)).await?;
                return Ok(describe(&live, false));
            }
        }
        if let Some(only) = only {
            let next = view(self.registry.as_ref(), 0, app.clone(), 0, content.clone());
            within(self.snapshot.load().live.as_deref(), &next, only)?;
        }
        // Get every function ready before anything is recorded: a component that does not
        // compile refuses the whole deployment.
        let pending: Vec<Arc<FunctionVersion>> = content
            .functions
            .iter()
            .map(|(spec, code_digest)| Arc::new(function_version(self.registry.as_ref(), spec, "", code_digest)))
            .collect();
        self.pools.prepare(&pending).await.map_err(DeployError::Refused)?;
        // The declared storage exists before any function of this deployment can run.
        let declared = Storage { kv: &content.kv, buckets: &content.buckets, queues: &content.queues };
        self.create_storage(&declared).await?;
        let notes = dropped_storage(live.as_deref(), &declared);
        let body = stored::encode(&content).map_err(DeployError::Encode)?;
        let new = NewDeployment { app: &app, digest: &digest, format_version: stored::FORMAT_VERSION, body: &body };
        if let (Some(spec), Some(live)) = (canary, live) {
            let name = app.clone();
            return self
                .record_canary(new, live, spec, |v, ms| view(self.registry.as_ref(), v, name, ms, content))
                .await;
        }
        let record = self.registry.add_deployment(new, LIVE).await?;
        if from_up {
            self.registry.set_meta(UP_DIGEST, &digest).await?;
        }
        let view = Arc::new(view(self.registry.as_ref(), record.version, app, record.created_ms, content));
        self.end_canary("a deploy replaced it").await;
        self.activate(view.clone(), Some(view.clone()));
        Ok(Deployed { notes, ..describe(&view, true) })
    }

    /// Create the KV namespaces a deployment declares (those that exist are left as they are).
    async fn create_storage(&self, declared: &Storage<'_>) -> Result<(), DeployError> {
        for name in declared.kv {
            self.kv.create_namespace(name).await.map_err(|source| DeployError::Kv { name: name.clone(), source })?;
        }
        self.create_buckets(declared.buckets).await?;
        self.ensure_queues(declared.queues).await
    }

    /// Store each function's code; returns the app name, the app's content digest (manifest
    /// text, function names and code digests) and the content to record.
    async fn store_code(
        &self,
        app_dir: &Path,
        manifest: Manifest,
        source: &[u8],
    ) -> Result<(String, String, DeploymentContent), DeployError> {
        let mut h = Sha256::new();
        h.update(source);
        let mut functions = Vec::new();
        for (name, spec) in manifest.functions {
            let code_digest = self
                .registry
                .put_artifact(&app_dir.join(&spec.code))
                .await
                .map_err(|source| DeployError::Code { function: name.clone(), source })?;
            h.update(name.as_bytes());
            h.update(code_digest.as_bytes());
            functions.push((spec, code_digest));
        }
        let content = DeploymentContent {
            functions,
            routes: manifest.routes,
            schedules: manifest.schedules,
            pricing: manifest.pricing,
            buckets: manifest.buckets,
            kv: manifest.kv,
            queues: manifest.queues,
            triggers: manifest.triggers,
            edge: manifest.edge,
            assets: match &manifest.assets {
                Some(spec) => Some(self.store_assets(app_dir, spec, &mut h).await?),
                None => None,
            },
        };
        Ok((manifest.name, hex::encode(h.finalize()), content))
    }

    /// Unpack an uploaded archive under `uploads` and deploy it (as a canary when asked).
    async fn deploy_upload(
        &self,
        archive: Bytes,
        only: Option<&[String]>,
        canary: Option<CanarySpec>,
    ) -> Result<Deployed, DeployError> {
        let io = |context| move |source| DeployError::Io { context, source };
        std::fs::create_dir_all(&self.uploads).map_err(io("cannot create the uploads directory"))?;
        let dir = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(&self.uploads)
            .map_err(io("cannot create an upload directory"))?;
        let target = dir.path().to_owned();
        tokio::task::spawn_blocking(move || upload::unpack(&archive, &target)).await??;
        self.deploy(dir.path(), nimbus_manifest::MANIFEST_FILE.to_owned(), false, only, canary).await
    }

    /// Store each file of `[static] dir` (see `assets.rs`); each path and digest goes into the
    /// app's content digest `h`.
    async fn store_assets(
        &self,
        app_dir: &Path,
        spec: &nimbus_manifest::assets::StaticSpec,
        h: &mut Sha256,
    ) -> Result<crate::assets::AssetManifest, DeployError> {
        let io = |source| DeployError::Io { context: "cannot store the static files", source };
        let dir = app_dir.join(&spec.dir);
        let listed = tokio::task::spawn_blocking(move || crate::assets::walk(&dir)).await?.map_err(io)?;
        let mut files = Vec::with_capacity(listed.len());
        for (rel, path) in listed {
            let file = crate::assets::store(self.registry.as_ref(), rel, &path).await.map_err(io)?;
            h.update(file.path.as_bytes());
            h.update([0]);
            h.update(file.digest.as_bytes());
            files.push(file);
        }
        Ok(crate::assets::AssetManifest { spa_fallback: spec.spa_fallback.clone(), files })
    }

    fn activate(&self, live: Arc<DeploymentView>, new_version: Option<Arc<DeploymentView>>) {
        self.activate_split(live, new_version, Vec::new());
    }

    /// Serve `live` (the alias's primary version) with the traffic split `traffic` (empty:
    /// all of it to `live`), adding `new_version` to the stored ones.
    pub(crate) fn activate_split(
        &self,
        live: Arc<DeploymentView>,
        new_version: Option<Arc<DeploymentView>>,
        traffic: Vec<(Arc<DeploymentView>, u32)>,
    ) {
        self.pools.deploy(&crate::split::serving(Some(&live), &traffic));
        let old = self.snapshot.load_full();
        let mut versions = old.versions.clone();
        if let Some(v) = new_version {
            versions.insert(v.version, v);
        }
        self.snapshot.store(Arc::new(Snapshot { live: Some(live.clone()), versions, traffic }));
        // After the swap: a change recorded from now on finds the new triggers live.
        self.watch_buckets(&live);
    }
}

#[async_trait]
impl Control for ControlPlane {
    fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    async fn deploy_tar(&self, archive: Bytes, only: Option<&[String]>) -> Result<Deployed, DeployError> {
        self.deploy_upload(archive, only, None).await
    }

    async fn rollback(&self, version: Option<u64>, only: Option<&[String]>) -> Result<Deployed, DeployError> {
        let _guard = self.lock.lock().await;
        let snap = self.snapshot.load_full();
        let current = snap.live.as_ref().map(|l| l.version);
        let target = match version {
            Some(v) => v,
            None => snap
                .versions
                .keys()
                .copied()
                .filter(|v| Some(*v) < current)
                .max()
                .ok_or(DeployError::NothingToRollBack)?,
        };
        let view = snap.versions.get(&target).cloned().ok_or(DeployError::NoSuchVersion(target))?;
        if let Some(only) = only {
            within(snap.live.as_deref(), &view, only)?;
        }
        self.create_storage(&Storage::from(&*view)).await?;
        self.registry.set_alias(LIVE, target).await?;
        self.end_canary("a rollback replaced it").await;
        self.activate(view.clone(), None);
        let notes = dropped_storage(snap.live.as_deref(), &Storage::from(&*view));
        Ok(Deployed { notes, ..describe(&view, Some(target) != current) })
    }

    fn token(&self, digest: &TokenDigest) -> Option<Arc<LiveToken>> {
        self.tokens.load().get(digest).cloned()
    }

    fn tokens(&self) -> Vec<Arc<LiveToken>> {
        self.tokens.load().list()
    }

    async fn create_token(&self, spec: TokenSpec) -> Result<CreatedToken, TokenError> {
        let _guard = self.token_lock.lock().await;
        let snap = self.snapshot.load_full();
        let (record, secret, warnings) =
            crate::tokens::mint(spec, nimbus_core::ids::now_ms(), &|f| snap.knows_function(f))?;
        self.registry.add_token(&record).await?;
        let token = Arc::new(LiveToken::new(record));
        self.tokens.store(Arc::new(self.tokens.load().with(token.clone())));
        Ok(CreatedToken { token, secret, warnings })
    }

    async fn revoke_token(&self, id: &str) -> Result<TokenRecord, TokenError> {
        let _guard = self.token_lock.lock().await;
        let revoked = self.registry.revoke_token(id, nimbus_core::ids::now_ms()).await?;
        let record = revoked.ok_or_else(|| TokenError::NoSuchToken(id.to_owned()))?;
        self.tokens.store(Arc::new(self.tokens.load().without(id)));
        Ok(record)
    }

    fn access_keys(&self) -> Vec<Arc<AccessKeyRecord>> {
        self.access_keys.load().list()
    }

    async fn create_access_key(&self, spec: AccessKeySpec) -> Result<CreatedAccessKey, AccessKeyError> {
        let _guard = self.key_lock.lock().await;
        let (record, warnings) = {
            let snap = self.snapshot.load_full();
            let declares = |f: &dyn Fn(&DeploymentView) -> bool| snap.versions.values().any(|v| f(v));
            let known = Known {
                function: &|f| snap.knows_function(f),
                bucket: &|b| declares(&|v| v.buckets.contains(b)),
                namespace: &|n| declares(&|v| v.kv.contains(n)),
            };
            crate::access_keys::mint(spec, nimbus_core::ids::now_ms(), &known)?
        };
        self.registry.add_access_key(&record).await?;
        let key = Arc::new(record);
        self.access_keys.store(Arc::new(self.access_keys.load().with(key.clone())));
        Ok(CreatedAccessKey { key, warnings })
    }

    async fn revoke_access_key(&self, id: &str) -> Result<Arc<AccessKeyRecord>, AccessKeyError> {
        let _guard = self.key_lock.lock().await;
        let revoked = self.registry.revoke_access_key(id, nimbus_core::ids::now_ms()).await?;
        let key = Arc::new(revoked.ok_or_else(|| AccessKeyError::NoSuchKey(id.to_owned()))?);
        self.access_keys.store(Arc::new(self.access_keys.load().with(key.clone())));
        Ok(key)
    }

    fn traffic(&self, alias: &str) -> Result<TrafficStatus, TrafficError> {
        if alias != LIVE {
            return Err(TrafficError::NoSuchAlias(alias.to_owned()));
        }
        Ok(self.traffic_status())
    }

    async fn set_traffic(&self, alias: &str, weights: &[(u64, u32)]) -> Result<TrafficStatus, TrafficError> {
        if alias != LIVE {
            return Err(TrafficError::NoSuchAlias(alias.to_owned()));
        }
        let _guard = self.lock.lock().await;
        let snap = self.snapshot.load_full();
        let split = crate::traffic::check_split(weights, |v| snap.versions.contains_key(&v))?;
        self.end_canary("`nimbus traffic set` replaced it").await;
        self.apply_split(&split).await?;
        Ok(self.traffic_status())
    }

    async fn deploy_canary(
        &self,
        archive: Bytes,
        only: Option<&[String]>,
        canary: CanarySpec,
    ) -> Result<Deployed, DeployError> {
        let canary = canary.check().map_err(|e| DeployError::Canary(e.to_string()))?;
        self.deploy_upload(archive, only, Some(canary)).await
    }

    fn observe(&self, version: u64, failed: bool, elapsed: std::time::Duration) {
        if let Some(run) = self.canary.load().as_ref().filter(|r| r.new == version) {
            run.health.record(failed, elapsed);
        }
    }
}

/// The AWS port's view of the managed keys: one atomic load and a map lookup per request.
impl AccessKeySource for ControlPlane {
    fn access_key(&self, id: &str) -> Option<Arc<AccessKeyRecord>> {
        self.access_keys.load().get(id).cloned()
    }
}

/// Read and validate the manifest (every problem at once) and return it with its source text.
fn load_manifest(app_dir: &Path, shown_as: &str) -> Result<(Manifest, Vec<u8>), DeployError> {
    let manifest = nimbus_manifest::load_as(app_dir, shown_as).map_err(DeployError::Invalid)?;
    let source = std::fs::read(app_dir.join(nimbus_manifest::MANIFEST_FILE))
        .map_err(|source| DeployError::Io { context: "cannot read the manifest", source })?;
    Ok((manifest, source))
}

fn function_version(
    registry: &dyn Registry,
    spec: &nimbus_core::FunctionSpec,
    version: &str,
    code_digest: &str,
) -> FunctionVersion {
    FunctionVersion {
        code_path: registry.artifact_path(code_digest),
        spec: spec.clone(),
        version: version.to_owned(),
        code_digest: code_digest.to_owned(),
        key_cache: Default::default(),
    }
}

pub(crate) fn view(
    registry: &dyn Registry,
    version: u64,
    app: String,
    created_ms: u64,
    c: DeploymentContent,
) -> DeploymentView {
    let version_text = version.to_string();
    let functions = c
        .functions
        .iter()
        .map(|(spec, digest)| (spec.name.clone(), Arc::new(function_version(registry, spec, &version_text, digest))))
        .collect();
    DeploymentView {
        version,
        app,
        created_ms,
        functions,
        router: Router::new(c.routes),
        schedules: c.schedules,
        pricing: c.pricing,
        kv: c.kv,
        buckets: c.buckets,
        queues: c.queues,
        triggers: c.triggers,
        edge: Arc::new(c.edge),
        assets: c.assets.as_ref().map(|m| Arc::new(crate::assets::Assets::new(registry, m))),
    }
}

/// A note for each KV namespace, bucket and queue the live deployment declares and `next` does
/// not: a deploy never deletes storage, so it is kept, and the note says how to delete it.
fn dropped_storage(live: Option<&DeploymentView>, next: &Storage<'_>) -> Vec<String> {
    let Some(live) = live else { return Vec::new() };
    let kv = live.kv.difference(next.kv).map(|name| {
        format!(
            "KV namespace {name} is no longer declared; it is kept with its keys (delete it with \
             `nimbus kv rm-namespace {name}`)"
        )
    });
    let buckets = live.buckets.difference(next.buckets).map(|name| {
        format!(
            "bucket {name} is no longer declared; it is kept with its objects (delete it with \
             `nimbus buckets rm {name} --force`)"
        )
    });
    kv.chain(buckets).chain(crate::queues::dropped(&live.queues, next.queues)).collect()
}

/// The storage a deployment declares, for [`ControlPlane::create_storage`].
struct Storage<'a> {
    kv: &'a BTreeSet<String>,
    buckets: &'a BTreeSet<String>,
    queues: &'a BTreeMap<String, nimbus_core::QueueSpec>,
}

impl<'a> From<&'a DeploymentView> for Storage<'a> {
    fn from(v: &'a DeploymentView) -> Self {
        Storage { kv: &v.kv, buckets: &v.buckets, queues: &v.queues }
    }
}

/// Refuse to make `next` live when it changes more than the functions in `only` (see
/// [`DeploymentView::changes_outside`]), saying what else it changes.
fn within(live: Option<&DeploymentView>, next: &DeploymentView, only: &[String]) -> Result<(), DeployError> {
    let allowed = only.join(", ");
    let Some(live) = live else {
        return Err(DeployError::OutsideFunctions(format!(
            "this token may change only {allowed}, and nothing is deployed yet: the first deployment needs a \
             deploy token without functions (or an admin token)"
        )));
    };
    let outside = live.changes_outside(next, only);
    if outside.is_empty() {
        return Ok(());
    }
    Err(DeployError::OutsideFunctions(format!(
        "this token may change only {allowed}; {} would also change {}. Change those with a deploy token \
         that may (or an admin token)",
        next_name(next),
        outside.join(", ")
    )))
}

/// How a refusal names the deployment it refused: a new upload has no version yet.
fn next_name(next: &DeploymentView) -> String {
    if next.version == 0 {
        "the upload".to_owned()
    } else {
        format!("rolling back to version {}", next.version)
    }
}

pub(crate) fn describe(view: &DeploymentView, changed: bool) -> Deployed {
    Deployed {
        version: view.version,
        app: view.app.clone(),
        changed,
        functions: view.function_names().into_iter().map(str::to_owned).collect(),
        routes: view.router.routes().iter().map(|r| RouteSpec::clone(r)).collect(),
        notes: Vec::new(),
    }
}
