//! What the live alias serves, below the control plane: its stored split, the functions every
//! version with traffic needs warm, and a running canary's record (driven by `canary.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use nimbus_core::{FunctionVersion, Registry, RegistryError};

use crate::snapshot::{DeploymentView, LIVE};
use crate::traffic::{CanaryState, Health, CANARY_META};

/// A running canary: what it is, and the health of its new version.
pub(crate) struct CanaryRun {
    pub new: u64,
    pub state: std::sync::Mutex<CanaryState>,
    pub health: Health,
    pub started: Instant,
}

pub(crate) type Split = Vec<(Arc<DeploymentView>, u32)>;

/// The live version, its traffic split and a canary a restart interrupted, as stored.
pub(crate) async fn load_traffic(
    registry: &dyn Registry,
    versions: &HashMap<u64, Arc<DeploymentView>>,
) -> Result<(Option<Arc<DeploymentView>>, Split, Option<CanaryState>), RegistryError> {
    let live = registry.alias(LIVE).await?.and_then(|v| versions.get(&v).cloned());
    let traffic = registry
        .traffic(LIVE)
        .await?
        .into_iter()
        .filter_map(|(v, p)| versions.get(&v).map(|view| (view.clone(), p)))
        .collect();
    let interrupted = match registry.meta(CANARY_META).await? {
        Some(text) if !text.is_empty() => serde_json::from_str(&text).ok(),
        _ => None,
    };
    Ok((live, traffic, interrupted))
}

/// Every function of every version that has traffic (what the pools keep ready).
pub(crate) fn serving(live: Option<&Arc<DeploymentView>>, traffic: &Split) -> Vec<Arc<FunctionVersion>> {
    let views = live.into_iter().chain(traffic.iter().map(|(v, _)| v));
    let mut all: Vec<Arc<FunctionVersion>> = views.flat_map(|v| v.functions.values().cloned()).collect();
    all.sort_by(|a, b| (&a.spec.name, &a.version).cmp(&(&b.spec.name, &b.version)));
    all.dedup_by(|a, b| a.spec.name == b.spec.name && a.version == b.version);
    all
}
