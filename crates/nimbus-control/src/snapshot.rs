//! What the request path reads: every deployment as an immutable view, and which one is live,
//! swapped as a whole on deploy and rollback.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use nimbus_core::{FunctionVersion, QueueSpec, TriggerSpec};
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
    /// The KV namespaces it declares.
    pub kv: BTreeSet<String>,
    /// The buckets it declares.
    pub buckets: BTreeSet<String>,
    /// The queues it declares, by name, and its triggers (what the queue engine delivers by).
    pub queues: BTreeMap<String, QueueSpec>,
    pub triggers: Vec<TriggerSpec>,
    /// The edge policies and rules the gateway applies to this deployment's requests.
    pub edge: Arc<nimbus_manifest::edge::EdgeSpec>,
    /// Its static files (`[static]`), if it has any.
    pub assets: Option<Arc<crate::assets::Assets>>,
}

impl DeploymentView {
    /// Function names, sorted.
    pub fn function_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// What `next` changes, compared with this deployment, beyond the functions in `only`:
    /// "function g" for each other function added, removed or changed (code or settings),
    /// then "the routes", "the schedules", "the pricing", "the KV namespaces", "the buckets",
    /// "the queues", "the triggers", "the edge policies", "the app name", "the static files".
    /// Empty when `next`
    /// changes nothing but those functions. This is what holds a deploy token limited to
    /// functions to them.
    pub fn changes_outside(&self, next: &DeploymentView, only: &[String]) -> Vec<String> {
        let same = |a: &FunctionVersion, b: &FunctionVersion| a.spec == b.spec && a.code_digest == b.code_digest;
        let mut names: Vec<&str> = self.function_names();
        names.extend(next.function_names());
        names.sort_unstable();
        names.dedup();
        let mut out: Vec<String> = names
            .into_iter()
            .filter(|n| !only.iter().any(|o| o == n))
            .filter(|n| match (self.functions.get(*n), next.functions.get(*n)) {
                (Some(a), Some(b)) => !same(a, b),
                _ => true,
            })
            .map(|n| format!("function {n}"))
            .collect();
        let rest = [
            (self.router.routes() != next.router.routes(), "the routes"),
            (self.schedules != next.schedules, "the schedules"),
            (self.pricing != next.pricing, "the pricing"),
            (self.kv != next.kv, "the KV namespaces"),
            (self.buckets != next.buckets, "the buckets"),
            (self.queues != next.queues, "the queues"),
            (self.triggers != next.triggers, "the triggers"),
            (self.edge != next.edge, "the edge policies"),
            (self.app != next.app, "the app name"),
            (
                self.assets.as_ref().map(|a| &a.manifest) != next.assets.as_ref().map(|a| &a.manifest),
                "the static files",
            ),
        ];
        out.extend(rest.into_iter().filter(|(changed, _)| *changed).map(|(_, what)| what.to_owned()));
        out
    }
}

/// Everything the request path needs, swapped atomically on deploy and rollback.
#[derive(Default)]
pub struct Snapshot {
    /// The version the live alias points at (with a split: the one with the largest share).
    pub live: Option<Arc<DeploymentView>>,
    pub versions: HashMap<u64, Arc<DeploymentView>>,
    /// How the live alias splits its traffic, by version, in percent summing to 100, sorted by
    /// version; empty when `live` has all of it. The gateway picks one per request.
    pub traffic: Vec<(Arc<DeploymentView>, u32)>,
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
            kv: BTreeSet::new(),
            buckets: BTreeSet::new(),
            queues: BTreeMap::new(),
            triggers: Vec::new(),
            edge: Default::default(),
            assets: None,
        })
    }

    /// A deployment of `manifest` whose function `f`'s code has digest `f_code` (others: "c").
    fn deployment(manifest: &str, f_code: &str) -> DeploymentView {
        let m = nimbus_manifest::parse(manifest, "nimbus.toml").unwrap();
        let functions = m
            .functions
            .into_iter()
            .map(|(name, spec)| {
                let code_digest = if name == "f" { f_code } else { "c" }.to_owned();
                let version = FunctionVersion {
                    spec,
                    version: "1".into(),
                    code_digest,
                    code_path: "/code".into(),
                    key_cache: Default::default(),
                };
                (name, Arc::new(version))
            })
            .collect();
        DeploymentView {
            version: 1,
            app: m.name,
            created_ms: 0,
            functions,
            router: Router::new(m.routes),
            schedules: m.schedules,
            pricing: m.pricing,
            kv: m.kv,
            buckets: m.buckets,
            queues: m.queues,
            triggers: m.triggers,
            edge: Arc::new(m.edge),
            assets: None,
        }
    }

    const F: &str = "[functions.f]\nruntime = \"python\"\nhandler = \"h.handler\"\n";
    const G: &str = "[functions.g]\nruntime = \"python\"\nhandler = \"h.handler\"\n";
    const ROUTE: &str = "[[routes]]\nmethod = \"GET\"\npath = \"/f\"\nfunction = \"f\"\n";

    /// What a deploy token limited to functions may change: their code and settings, and
    /// nothing else (another function, routes, storage, queues, triggers, the app's name).
    #[test]
    fn changes_outside_the_named_functions_are_listed() {
        let app = |name: &str, parts: &[&str]| format!("name = \"{name}\"\n{}", parts.concat());
        let live = deployment(&app("a", &[F, G, ROUTE]), "v1");
        let only_f = ["f".to_owned()];
        let outside = |next: &DeploymentView, only: &[String]| live.changes_outside(next, only);

        assert!(outside(&live, &[]).is_empty(), "the same deployment changes nothing");
        let new_code = deployment(&app("a", &[F, G, ROUTE]), "v2");
        assert!(outside(&new_code, &only_f).is_empty());
        assert_eq!(outside(&new_code, &["g".to_owned()]), ["function f"]);
        let f_bigger = F.replace("h.handler\"\n", "h.handler\"\nmemory_mb = 512\n");
        let new_setting = deployment(&app("a", &[&f_bigger, G, ROUTE]), "v1");
        assert!(outside(&new_setting, &only_f).is_empty());
        assert_eq!(outside(&new_setting, &[]), ["function f"], "a setting is a change");
        let g_gone = deployment(&app("a", &[F, ROUTE]), "v1");
        assert_eq!(outside(&g_gone, &only_f), ["function g"], "removing a function is a change");
        let no_route = deployment(&app("a", &[F, G]), "v2");
        assert_eq!(outside(&no_route, &only_f), ["the routes"]);
        let renamed = deployment(&app("b", &[F, G, ROUTE]), "v1");
        assert_eq!(outside(&renamed, &only_f), ["the app name"]);
        let with_kv = deployment(&app("a", &[F, G, ROUTE, "[kv.cache]\n"]), "v1");
        assert_eq!(outside(&with_kv, &only_f), ["the KV namespaces"], "declaring storage is a change");
        let with_bucket = deployment(&app("a", &[F, G, ROUTE, "[buckets.images]\n"]), "v1");
        assert_eq!(outside(&with_bucket, &only_f), ["the buckets"]);
        let with_queue = deployment(&app("a", &[F, G, ROUTE, "[queues.jobs]\n"]), "v1");
        assert_eq!(outside(&with_queue, &only_f), ["the queues"]);
        let longer = deployment(&app("a", &[F, G, ROUTE, "[queues.jobs]\nvisibility_timeout = \"1m\"\n"]), "v1");
        assert_eq!(with_queue.changes_outside(&longer, &only_f), ["the queues"], "a queue's setting is a change");
        // A trigger on a named function is still a change of its own (it also adds a grant to f).
        let trigger = "[[triggers]]\nfunction = \"f\"\nqueue = \"jobs\"\n";
        let triggered = deployment(&app("a", &[F, G, ROUTE, "[queues.jobs]\n", trigger]), "v1");
        assert_eq!(with_queue.changes_outside(&triggered, &only_f), ["the triggers"]);
    }

    #[test]
    fn qualifiers_resolve_like_lambda() {
        let versions = [(1, view(1)), (2, view(2))].into_iter().collect();
        let snap = Snapshot { live: Some(view(2)), versions, traffic: Vec::new() };
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
