//! The registry seam: deployments, aliases, small settings, code artifacts and API tokens, as
//! the control plane keeps them. The embedded backend is SQLite plus content-addressed directories
//! (nimbus-store-sqlite); a cluster backend (NATS JetStream KV and Object Store) implements the
//! same trait, so the control plane and the HTTP layer never name a backend.
//!
//! Lifecycle: the composition root opens one registry at start and hands it to the control
//! plane, which is its only caller. `deployments` is read once at start (and by a cluster node
//! when another node deploys); `add_deployment` and `set_alias` are called once per deploy or
//! rollback, under the control plane's deploy lock; `put_artifact` once per function per deploy
//! (cheap when the content is already stored); `artifact_path` whenever a function version is
//! built from a record. `tokens` is read once at start; `add_token` and `revoke_token` once per
//! `POST /v1/tokens` and `DELETE /v1/tokens/{id}`; `token_by_digest` answers a lookup the
//! in-memory set cannot (a cluster node that has not yet seen another node's new token).
//! Managed AWS access keys follow tokens: `access_keys` at start, `add_access_key` and
//! `revoke_access_key` once per `POST /v1/keys` and `DELETE /v1/keys/{id}`. `traffic` is read
//! once at start; `set_traffic` once per `nimbus traffic set` and per canary step.
//! In a cluster, `changes` is taken once when the control plane starts following the
//! registry; after each change it re-reads deployments, aliases, traffic, tokens and keys, and
//! calls `fetch_artifacts` for the deployments it had not seen before building them. None
//! of them is ever called on the request path: the request path reads the control plane's
//! in-memory snapshot and token set.
//!
//! The registry does not interpret a deployment's body: the control plane owns that format and
//! says which version of it a body is in (`format_version`), so a backend is a versioned
//! key-value store and a change to the domain types never silently changes what is stored.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::access_keys::AccessKeyRecord;
use crate::auth::{TokenDigest, TokenRecord};

/// Directories never part of a code artifact, at any depth: nimbus state, VCS metadata,
/// bytecode caches. The manifest's checks skip them too.
pub const ARTIFACT_SKIP: &[&str] = &[".nimbus", ".git", "__pycache__"];

/// A stored deployment: its number, what the control plane wrote, and the format it wrote in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentRecord {
    /// Deployment version: 1, 2, … in the order they were added.
    pub version: u64,
    pub app: String,
    /// Content digest of the app (manifest and code), hex.
    pub digest: String,
    pub created_ms: u64,
    /// Which format `body` is in (the control plane's stored-deployment format). Bodies written
    /// before formats were versioned read as 0.
    pub format_version: u32,
    pub body: String,
}

/// A deployment to add.
#[derive(Clone, Debug)]
pub struct NewDeployment<'a> {
    pub app: &'a str,
    pub digest: &'a str,
    pub format_version: u32,
    pub body: &'a str,
}

/// Why the registry could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backend failed (database error, disk full, connection lost).
    #[error("the registry failed to {action}: {source}")]
    Backend {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A code directory could not be read or stored.
    #[error("cannot store the code in {}: {source}", dir.display())]
    Artifact {
        dir: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An alias names a version that is not stored.
    #[error("there is no deployment {0}")]
    NoSuchVersion(u64),
    /// A token id or digest that is already stored (a new token must be new).
    #[error("a token with the same {0} exists")]
    DuplicateToken(&'static str),
    /// An access key id that is already stored (a new key must be new).
    #[error("an access key with the id {0} exists")]
    DuplicateAccessKey(String),
}

impl RegistryError {
    /// Wrap a backend error with what was being done.
    pub fn backend(action: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        RegistryError::Backend { action, source: Box::new(source) }
    }
}

/// Durable control-plane state. See the module docs for who calls what, and when.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Every stored deployment, oldest first.
    async fn deployments(&self) -> Result<Vec<DeploymentRecord>, RegistryError>;
    /// Store a new deployment (numbered after the newest) and point `alias` at it, atomically:
    /// after a crash either both happened or neither.
    async fn add_deployment(
        &self,
        deployment: NewDeployment<'_>,
        alias: &str,
    ) -> Result<DeploymentRecord, RegistryError>;
    /// The version an alias points at.
    async fn alias(&self, name: &str) -> Result<Option<u64>, RegistryError>;
    /// Point an alias at a stored version.
    async fn set_alias(&self, name: &str, version: u64) -> Result<(), RegistryError>;
    /// A small setting kept with the registry (e.g. what `nimbus up` deployed last).
    async fn meta(&self, key: &str) -> Result<Option<String>, RegistryError>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), RegistryError>;
    /// Store an immutable copy of a code directory, addressed by its content; returns the
    /// digest. Storing the same content again is cheap and returns the same digest.
    async fn put_artifact(&self, dir: &Path) -> Result<String, RegistryError>;
    /// Where the code with `digest` can be read on this node (a local directory; a cluster
    /// backend fetches and verifies it first).
    fn artifact_path(&self, digest: &str) -> PathBuf;
    /// Store a new token (its digest, never its secret).
    async fn add_token(&self, token: &TokenRecord) -> Result<(), RegistryError>;
    /// Every stored token, revoked ones included (with `revoked_ms`), oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, RegistryError>;
    /// Mark a token revoked at `at_ms`; returns it as now stored, or `None` when no unrevoked
    /// token has that id.
    async fn revoke_token(&self, id: &str, at_ms: u64) -> Result<Option<TokenRecord>, RegistryError>;
    /// The token whose secret has this digest, revoked or not.
    async fn token_by_digest(&self, digest: &TokenDigest) -> Result<Option<TokenRecord>, RegistryError>;
    /// Store a new managed AWS access key (its secret too: SigV4 needs it to verify).
    async fn add_access_key(&self, key: &AccessKeyRecord) -> Result<(), RegistryError>;
    /// Every stored access key, revoked ones included, oldest first.
    async fn access_keys(&self) -> Result<Vec<AccessKeyRecord>, RegistryError>;
    /// Mark an access key revoked at `at_ms`; returns it as now stored, or `None` when no
    /// unrevoked key has that id.
    async fn revoke_access_key(&self, id: &str, at_ms: u64) -> Result<Option<AccessKeyRecord>, RegistryError>;
    /// How an alias's traffic is split: (version, percent) pairs summing to 100, or empty when
    /// the alias sends all of it to the version it points at. [`Registry::add_deployment`] and
    /// [`Registry::set_alias`] empty it (a plain deploy or rollback is 100 % of one version).
    async fn traffic(&self, alias: &str) -> Result<Vec<(u64, u32)>, RegistryError>;
    /// Point `alias` at `primary` and split its traffic as `weights` (empty: all to
    /// `primary`), atomically: after a crash either both happened or neither. Every version
    /// must be stored ([`RegistryError::NoSuchVersion`] otherwise, and nothing changes).
    async fn set_traffic(&self, alias: &str, primary: u64, weights: &[(u64, u32)]) -> Result<(), RegistryError>;
    /// Make the artifacts with these digests readable at [`Registry::artifact_path`] on this
    /// node. The control plane calls it for a deployment another node stored, before it builds
    /// the deployment's function versions (which read `artifact_path`). A cluster backend
    /// fetches what this node lacks and verifies its digest; the default does nothing, as an
    /// embedded store already holds every artifact it stored.
    async fn fetch_artifacts(&self, digests: &[String]) -> Result<(), RegistryError> {
        let _ = digests;
        Ok(())
    }
    /// Changes to the registry, above all those made by someone other than this node's control
    /// plane (another node of a cluster): the receiver's value moves on after each change (its
    /// own ones may be included; re-reading them changes nothing), so a follower that awaits
    /// `changed()` and then re-reads the registry misses none. Called once, when
    /// the control plane starts following the registry. `None` (the default): the registry
    /// never changes behind the control plane's back (the embedded store).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
