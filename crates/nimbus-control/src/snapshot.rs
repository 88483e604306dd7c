//! What the request path reads: every deployment as an immutable view, and which one is live,
//! swapped as a whole on deploy and rollback.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_core::FunctionVersion;
use nimbus_manifest::schedule::ScheduleSpec;
use nimbus_manifest::Pricing;

use crate::router::Router;

/// The alias the gateway serves.
pub const LIVE: &str = "live";

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

impl DeploymentView {
    /// Function names, sorted.
    pub fn function_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Everything the request path needs, swapped atomically on deploy and rollback.
#[derive(Default)]
pub struct Snapshot {
    pub live: Option<Arc<DeploymentView>>,
    pub versions: HashMap<u64, Arc<DeploymentView>>,
}

impl Snapshot {
    /// The deployment a Lambda qualifier names: none, `$LATEST` or the live alias → the live
    /// deployment; a number → that version. Anything else names nothing.
    pub fn resolve(&self, qualifier: Option<&str>) -> Option<&Arc<DeploymentView>> {
        match qualifier {
            None | Some("$LATEST") | Some(LIVE) => self.live.as_ref(),
            Some(q) => q.parse::<u64>().ok().and_then(|v| self.versions.get(&v)),
        }
    }

    /// A function of the deployment `qualifier` names.
    pub fn function(&self, name: &str, qualifier: Option<&str>) -> Option<Arc<FunctionVersion>> {
        self.resolve(qualifier).and_then(|v| v.functions.get(name).cloned())
    }

    /// Whether any stored deployment has a function of this name.
    pub fn knows_function(&self, name: &str) -> bool {
        self.versions.values().any(|v| v.functions.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: u64) -> Arc<DeploymentView> {
        Arc::new(DeploymentView {
            version,
            app: "a".into(),
            created_ms: 0,
            functions: HashMap::new(),
            router: Router::new(Vec::new()),
            schedules: Vec::new(),
            pricing: Pricing::default(),
        })
    }

    #[test]
    fn qualifiers_resolve_like_lambda() {
        let snap = Snapshot { live: Some(view(2)), versions: [(1, view(1)), (2, view(2))].into_iter().collect() };
        let version = |q: Option<&str>| snap.resolve(q).map(|v| v.version);
        assert_eq!(version(None), Some(2));
        assert_eq!(version(Some("$LATEST")), Some(2));
        assert_eq!(version(Some("live")), Some(2));
        assert_eq!(version(Some("1")), Some(1));
        assert_eq!(version(Some("3")), None);
        assert_eq!(version(Some("canary")), None);
        assert_eq!(Snapshot::default().resolve(None).map(|v| v.version), None);
    }
}
