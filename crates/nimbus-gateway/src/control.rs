//! The control plane: deployments in, an in-memory snapshot out.
//!
//! A deploy validates the whole manifest, copies each function's code into the artifact store,
//! records the deployment and moves the `live` alias in one SQLite transaction, then swaps the
//! snapshot the request path reads (one atomic pointer store). Any failure before the
//! transaction leaves nothing visible: artifacts are content-addressed and unreferenced ones
//! are harmless. In-flight requests keep the `Arc`s of the version they started on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use nimbus_core::{FunctionSpec, FunctionVersion};
use nimbus_manifest::schedule::ScheduleSpec;
use nimbus_manifest::{Diagnostics, Pricing, RouteSpec};
use nimbus_scheduler::Scheduler;
use nimbus_store_sqlite::{DeploymentRow, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::router::Router;

/// The alias the gateway serves.
pub const LIVE: &str = "live";
/// Meta key: digest of what `nimbus up` last deployed from its app directory.
const UP_DIGEST: &str = "up_digest";

/// One deployment as the request path sees it.
pub struct DeploymentView {
    pub version: u64,
    pub app: String,
    pub created_ms: u64,
    pub functions: HashMap<String, Arc<FunctionVersion>>,
    pub router: Router,
    pub schedules: Vec<ScheduleSpec>,
    pub pricing: Pricing,
}

/// Everything the request path needs, swapped atomically on deploy and rollback.
#[derive(Default)]
pub struct Snapshot {
    pub live: Option<Arc<DeploymentView>>,
    pub versions: HashMap<u64, Arc<DeploymentView>>,
}

#[derive(Serialize, Deserialize)]
struct StoredFunction {
    spec: FunctionSpec,
    code_digest: String,
}

#[derive(Serialize, Deserialize)]
struct StoredDeployment {
    functions: Vec<StoredFunction>,
    routes: Vec<RouteSpec>,
    #[serde(default)]
    schedules: Vec<ScheduleSpec>,
    #[serde(default)]
    pricing: Pricing,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Failed(String),
}

impl From<nimbus_store_sqlite::StoreError> for DeployError {
    fn from(e: nimbus_store_sqlite::StoreError) -> Self {
        DeployError::Failed(e.to_string())
    }
}

/// The result of a deploy.
#[derive(Clone, Debug, Serialize)]
pub struct Deployed {
    pub version: u64,
    pub app: String,
    /// False when the content was identical to the live deployment and nothing changed.
    pub changed: bool,
    pub functions: Vec<String>,
    pub routes: Vec<RouteSpec>,
}

pub struct ControlPlane {
    store: Store,
    scheduler: Scheduler,
    snapshot: ArcSwap<Snapshot>,
    uploads: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl ControlPlane {
    /// Load every stored deployment and serve the `live` one.
    pub fn load(store: Store, scheduler: Scheduler, data_dir: &Path) -> Result<Arc<ControlPlane>, DeployError> {
        let uploads = data_dir.join("uploads");
        let _ = std::fs::remove_dir_all(&uploads);
        let cp = Arc::new(ControlPlane {
            store,
            scheduler,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            uploads,
            lock: tokio::sync::Mutex::new(()),
        });
        let mut versions = HashMap::new();
        for row in cp.store.deployments()? {
            let view = cp.view(&row)?;
            versions.insert(row.version, Arc::new(view));
        }
        let live = cp.store.alias(LIVE)?.and_then(|v| versions.get(&v).cloned());
        if let Some(l) = &live {
            cp.scheduler.deploy(&l.functions.values().cloned().collect::<Vec<_>>());
        }
        cp.snapshot.store(Arc::new(Snapshot { live, versions }));
        Ok(cp)
    }

    fn view(&self, row: &DeploymentRow) -> Result<DeploymentView, DeployError> {
        let stored: StoredDeployment = serde_json::from_str(&row.body)
            .map_err(|e| DeployError::Failed(format!("deployment {} in the store is unreadable: {e}", row.version)))?;
        let functions = stored
            .functions
            .into_iter()
            .map(|f| {
                let fv = FunctionVersion {
                    code_path: self.store.artifacts.path(&f.code_digest),
                    spec: f.spec,
                    version: row.version.to_string(),
                    code_digest: f.code_digest,
                    key_cache: Default::default(),
                };
                (fv.spec.name.clone(), Arc::new(fv))
            })
            .collect();
        Ok(DeploymentView {
            version: row.version,
            app: row.app.clone(),
            created_ms: row.created_ms,
            functions,
            router: Router::new(stored.routes),
            schedules: stored.schedules,
            pricing: stored.pricing,
        })
    }

    /// Load what the live deployment needs (compiled wasm components) so that its first
    /// requests after a restart do not wait for it. Failures are logged; requests retry.
    pub async fn warm(&self) {
        let live = self.snapshot().live.clone();
        if let Some(l) = live {
            let functions: Vec<Arc<FunctionVersion>> = l.functions.values().cloned().collect();
            if let Err(e) = self.scheduler.prepare(&functions).await {
                tracing::warn!("cannot prepare the live deployment: {e}");
            }
        }
    }

    /// The current snapshot (one atomic load; the request path calls this).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Deploy the app in `app_dir`. `from_up` is the deploy `nimbus up` does at start: when the
    /// directory holds exactly what the previous `nimbus up` deployed, nothing is deployed and
    /// the live deployment is served as it is (so a restart neither creates a version nor undoes
    /// a rollback or a `nimbus deploy` made since).
    pub async fn deploy_dir(&self, app_dir: &Path, from_up: bool) -> Result<Deployed, DeployError> {
        let shown = app_dir.join(nimbus_manifest::MANIFEST_FILE).display().to_string();
        self.deploy(app_dir, shown, from_up).await
    }

    async fn deploy(&self, app_dir: &Path, shown_as: String, from_up: bool) -> Result<Deployed, DeployError> {
        let _guard = self.lock.lock().await;
        let dir = app_dir.to_owned();
        let store = self.store.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&store, &dir, &shown_as))
            .await
            .map_err(|e| DeployError::Failed(format!("deploy task failed: {e}")))??;
        let (app, digest, stored) = prepared;
        let live = self.snapshot().live.clone();
        if from_up {
            if let Some(live) = &live {
                if self.store.get_meta(UP_DIGEST)?.as_deref() == Some(digest.as_str()) {
                    return Ok(self.describe(live, false));
                }
            }
        }
        // Compile what needs compiling before anything is recorded: a component that does not
        // load refuses the whole deployment.
        let pending: Vec<Arc<FunctionVersion>> = stored
            .functions
            .iter()
            .map(|f| {
                Arc::new(FunctionVersion {
                    code_path: self.store.artifacts.path(&f.code_digest),
                    spec: f.spec.clone(),
                    version: String::new(),
                    code_digest: f.code_digest.clone(),
                    key_cache: Default::default(),
                })
            })
            .collect();
        self.scheduler.prepare(&pending).await.map_err(DeployError::BadRequest)?;
        let body = serde_json::to_string(&stored).map_err(|e| DeployError::Failed(e.to_string()))?;
        let row = self.store.add_deployment(&app, &digest, &body, LIVE)?;
        if from_up {
            self.store.set_meta(UP_DIGEST, &digest)?;
        }
        let view = Arc::new(self.view(&row)?);
        self.activate(view.clone(), Some(view.clone()));
        Ok(self.describe(&view, true))
    }

    /// Deploy an app uploaded as a tar archive (what `nimbus deploy` sends).
    pub async fn deploy_tar(&self, archive: bytes::Bytes) -> Result<Deployed, DeployError> {
        std::fs::create_dir_all(&self.uploads).map_err(|e| DeployError::Failed(e.to_string()))?;
        let dir = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(&self.uploads)
            .map_err(|e| DeployError::Failed(e.to_string()))?;
        let target = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut ar = tar::Archive::new(std::io::Cursor::new(archive));
            ar.set_preserve_permissions(true);
            // `unpack` refuses entries that escape the target directory.
            ar.unpack(&target)
        })
        .await
        .map_err(|e| DeployError::Failed(e.to_string()))?
        .map_err(|e| {
            DeployError::BadRequest(format!("the upload is not a valid tar archive of an app directory: {e}"))
        })?;
        self.deploy(dir.path(), nimbus_manifest::MANIFEST_FILE.to_owned(), false).await
    }

    /// Point `live` at `version`, or at the deployment before the live one.
    pub async fn rollback(&self, version: Option<u64>) -> Result<Deployed, DeployError> {
        let _guard = self.lock.lock().await;
        let snap = self.snapshot();
        let current = snap.live.as_ref().map(|l| l.version);
        let target = match version {
            Some(v) => v,
            None => {
                let mut older: Vec<u64> = snap.versions.keys().copied().filter(|v| Some(*v) < current).collect();
                older.sort_unstable();
                older
                    .pop()
                    .ok_or_else(|| DeployError::BadRequest("there is no earlier deployment to roll back to".into()))?
            }
        };
        let view = snap.versions.get(&target).cloned().ok_or_else(|| {
            DeployError::BadRequest(format!("there is no deployment {target}; `nimbus ls` lists them"))
        })?;
        drop(snap);
        self.store.set_alias(LIVE, target)?;
        self.activate(view.clone(), None);
        Ok(self.describe(&view, Some(target) != current))
    }

    fn activate(&self, live: Arc<DeploymentView>, new_version: Option<Arc<DeploymentView>>) {
        self.scheduler.deploy(&live.functions.values().cloned().collect::<Vec<_>>());
        let old = self.snapshot.load_full();
        let mut versions = old.versions.clone();
        if let Some(v) = new_version {
            versions.insert(v.version, v);
        }
        self.snapshot.store(Arc::new(Snapshot { live: Some(live), versions }));
    }

    fn describe(&self, view: &DeploymentView, changed: bool) -> Deployed {
        let mut functions: Vec<String> = view.functions.keys().cloned().collect();
        functions.sort();
        Deployed {
            version: view.version,
            app: view.app.clone(),
            changed,
            functions,
            routes: view.router.routes().to_vec(),
        }
    }
}

/// Validate and store code: returns the app name, the content digest and the stored body.
fn prepare(store: &Store, app_dir: &Path, shown_as: &str) -> Result<(String, String, StoredDeployment), DeployError> {
    let manifest = nimbus_manifest::load_as(app_dir, shown_as).map_err(DeployError::Invalid)?;
    let source =
        std::fs::read(app_dir.join(nimbus_manifest::MANIFEST_FILE)).map_err(|e| DeployError::Failed(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(&source);
    let mut functions = Vec::new();
    for (name, spec) in &manifest.functions {
        let (code_digest, _) = store
            .artifacts
            .put_dir(&app_dir.join(&spec.code))
            .map_err(|e| DeployError::Failed(format!("cannot store the code of {name}: {e}")))?;
        h.update(name.as_bytes());
        h.update(code_digest.as_bytes());
        functions.push(StoredFunction { spec: spec.clone(), code_digest });
    }
    let digest = hex::encode(h.finalize());
    Ok((
        manifest.name,
        digest,
        StoredDeployment {
            functions,
            routes: manifest.routes,
            schedules: manifest.schedules,
            pricing: manifest.pricing,
        },
    ))
}

/// The async engine runs what is live (or the version an event pinned) and the live schedules.
impl nimbus_queue::Resolver for ControlPlane {
    fn function(&self, name: &str, qualifier: Option<&str>) -> Option<Arc<FunctionVersion>> {
        let snap = self.snapshot();
        let view = match qualifier {
            None => snap.live.clone(),
            Some(q) => q.parse::<u64>().ok().and_then(|v| snap.versions.get(&v).cloned()),
        };
        view.and_then(|v| v.functions.get(name).cloned())
    }

    fn schedules(&self) -> Vec<ScheduleSpec> {
        self.snapshot().live.as_ref().map(|l| l.schedules.clone()).unwrap_or_default()
    }
}
