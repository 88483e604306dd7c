//! Following the registry: in a cluster, other nodes deploy, roll back, split traffic and
//! create or revoke tokens and access keys in the shared registry, and this node's control
//! plane makes their changes its own.
//!
//! [`ControlPlane::follow_registry`] spawns one task that waits on
//! [`nimbus_core::Registry::changes`] and then re-reads the registry
//! ([`ControlPlane::sync_from_registry`]). Deployments go the way [`ControlPlane::load`] takes:
//! the versions this node has not seen are decoded, their code fetched and verified
//! ([`nimbus_core::Registry::fetch_artifacts`]) and their views built first; the live alias
//! and its split are read next; then the snapshot is swapped in one atomic store, so a request
//! sees the old deployment or the new one, never a mix. This happens under the deploy lock,
//! so it never interleaves with a deploy of this node, and a change this node made itself finds
//! the snapshot already matching and swaps nothing. Tokens and keys are re-read under their
//! own locks and swapped whole (a token keeps its in-memory last-use time). The request path
//! is untouched: it reads the snapshot and the token set as before.
//!
//! A failed re-read (the registry unreachable) is retried every second until one succeeds; a
//! change that arrives meanwhile is folded into the next re-read.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::access_keys::KeySet;
use crate::plane::{view, ControlPlane, DeployError};
use crate::snapshot::{DeploymentView, Snapshot, LIVE};
use crate::stored;

/// How long a failed re-read waits before the next try.
const RETRY: Duration = Duration::from_secs(1);

impl ControlPlane {
    /// Follow the registry's changes made by other nodes (see the module docs); `None` when the
    /// registry never changes behind this node's back (the embedded store). `nimbus up` calls
    /// it once, after [`ControlPlane::load`]. The task ends when the plane is dropped.
    pub fn follow_registry(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let changes = self.registry.changes()?;
        Some(tokio::spawn(follow(Arc::downgrade(self), changes)))
    }

    /// Re-read deployments, aliases, traffic, tokens and access keys and serve what the
    /// registry holds. Cheap when nothing changed: only versions not seen before are fetched
    /// and built.
    pub async fn sync_from_registry(&self) -> Result<(), DeployError> {
        self.sync_deployments().await?;
        self.sync_tokens().await?;
        self.sync_access_keys().await
    }

    async fn sync_deployments(&self) -> Result<(), DeployError> {
        let _guard = self.lock.lock().await;
        // The alias before the versions: versions are only ever added, so every version the
        // alias and its split name is among those read after.
        let live_version = self.registry.alias(LIVE).await?;
        let split = self.registry.traffic(LIVE).await?;
        let records = self.registry.deployments().await?;
        let old = self.snapshot.load_full();
        let mut versions = old.versions.clone();
        let mut added = Vec::new();
        for record in records.into_iter().filter(|r| !old.versions.contains_key(&r.version)) {
            let content = stored::decode(record.format_version, &record.body)
                .map_err(|source| DeployError::Unreadable { version: record.version, source })?;
            self.registry.fetch_artifacts(&content.artifact_digests()).await?;
            let built = Arc::new(view(self.registry.as_ref(), record.version, record.app, record.created_ms, content));
            versions.insert(built.version, built.clone());
            added.push(built.version);
        }
        let live = live_version.and_then(|v| versions.get(&v).cloned());
        let traffic: Vec<_> =
            split.into_iter().filter_map(|(v, p)| versions.get(&v).map(|view| (view.clone(), p))).collect();
        let moved =
            version_of(live.as_ref()) != version_of(old.live.as_ref()) || split_of(&traffic) != split_of(&old.traffic);
        if added.is_empty() && !moved {
            return Ok(());
        }
        let serving = crate::split::serving(live.as_ref(), &traffic);
        let fresh: Vec<_> =
            serving.iter().filter(|f| added.iter().any(|v| f.version == v.to_string())).cloned().collect();
        if !fresh.is_empty() {
            // Compiled before the swap, as a deploy does; a failure is retried by the first request.
            if let Err(e) = self.pools.prepare(&fresh).await {
                tracing::warn!("cannot prepare a deployment another node made: {e}");
            }
        }
        if moved {
            self.end_canary("another node changed the live alias").await;
        }
        self.pools.deploy(&serving);
        self.snapshot.store(Arc::new(Snapshot { live: live.clone(), versions, traffic }));
        if let Some(live) = &live {
            self.watch_buckets(live);
        }
        tracing::info!(live = version_of(live.as_ref()), new_versions = added.len(), "followed the registry");
        Ok(())
    }

    async fn sync_tokens(&self) -> Result<(), DeployError> {
        let _guard = self.token_lock.lock().await;
        let records = self.registry.tokens().await?;
        let refreshed = self.tokens.load().refreshed(records);
        self.tokens.store(Arc::new(refreshed));
        Ok(())
    }

    async fn sync_access_keys(&self) -> Result<(), DeployError> {
        let _guard = self.key_lock.lock().await;
        let records = self.registry.access_keys().await?;
        self.access_keys.store(Arc::new(KeySet::from_records(records)));
        Ok(())
    }
}

fn version_of(view: Option<&Arc<DeploymentView>>) -> Option<u64> {
    view.map(|v| v.version)
}

fn split_of(traffic: &[(Arc<DeploymentView>, u32)]) -> Vec<(u64, u32)> {
    traffic.iter().map(|(v, p)| (v.version, *p)).collect()
}

/// The follower task: one re-read per burst of changes, retried while it fails.
async fn follow(plane: Weak<ControlPlane>, mut changes: watch::Receiver<u64>) {
    let mut failing = false;
    loop {
        if failing {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY) => {}
            }
        } else if changes.changed().await.is_err() {
            return;
        }
        let Some(plane) = plane.upgrade() else { return };
        match plane.sync_from_registry().await {
            Ok(()) => failing = false,
            Err(e) => {
                tracing::warn!("cannot follow the registry (retrying every {RETRY:?}): {e}");
                failing = true;
            }
        }
    }
}
