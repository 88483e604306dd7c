//! `nimbus.toml`: parse, then validate into a resolved [`Manifest`] the rest of nimbus takes.
//!
//! Validation walks the spanned TOML tree by hand instead of deriving `Deserialize`, because
//! serde stops at the first problem while a user wants every problem at once, each with its
//! line, column and field path (`nimbus.toml:7:11: functions.hello.timeout: …`).

pub mod assets;
mod cache;
mod check;
mod ctx;
mod diag;
pub mod edge;
mod files;
mod grants;
mod limits;
mod pricing;
pub mod queues;
pub mod resources;
mod response;
pub mod schedule;
mod triggers;
mod wasm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use cache::{CacheProfile, CacheQuery};
pub use ctx::parse_duration;
pub use diag::{Diagnostic, Diagnostics};
pub use limits::{LimitKey, RateLimitSpec};
use nimbus_core::{FunctionSpec, QueueSpec, TriggerSpec};
pub use pricing::Pricing;

/// The file name nimbus looks for in an app directory.
pub const MANIFEST_FILE: &str = "nimbus.toml";

/// Every key the manifest knows, in any table (top level, functions, grants, routes, schedules,
/// pricing, storage, queues, triggers), each once: the validator's own lists, for tools and tests that write manifests.
pub fn known_keys() -> Vec<&'static str> {
    let lists = [
        check::TOP_KEYS,
        check::FUNCTION_KEYS,
        grants::KEYS,
        check::ROUTE_KEYS,
        schedule::KEYS,
        pricing::KEYS,
        resources::BUCKET_KEYS,
        resources::KV_KEYS,
        queues::KEYS,
        triggers::KEYS,
        edge::AUTH_KEYS,
        edge::CORS_KEYS,
        edge::REDIRECT_KEYS,
        edge::HEADER_RULE_KEYS,
        assets::KEYS,
        limits::KEYS,
        cache::KEYS,
    ];
    let mut keys: Vec<&'static str> = Vec::new();
    for key in lists.into_iter().flatten() {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    keys
}

/// A validated app description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    /// Keyed by function name.
    pub functions: BTreeMap<String, FunctionSpec>,
    pub routes: Vec<RouteSpec>,
    pub schedules: Vec<schedule::ScheduleSpec>,
    pub pricing: Pricing,
    /// Buckets the app declares (`[buckets.NAME]`); a deploy creates the missing ones.
    pub buckets: BTreeSet<String>,
    /// KV namespaces the app declares (`[kv.NAME]`); a deploy creates the missing ones.
    pub kv: BTreeSet<String>,
    /// Queues the app declares (`[queues.NAME]`), by name.
    pub queues: BTreeMap<String, QueueSpec>,
    /// `[[triggers]]`, in the order written. Each triggered function's grants already hold the
    /// read (bucket) or receive (queue) its trigger needs.
    pub triggers: Vec<TriggerSpec>,
    /// Auth and CORS policies, redirects, rewrites and response headers (`edge.rs`).
    pub edge: edge::EdgeSpec,
    /// `[static]`: the files the gateway serves where no route matches, if any.
    pub assets: Option<assets::StaticSpec>,
}

/// Which HTTP methods a route accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Methods {
    Any,
    List(Vec<String>),
}

impl Methods {
    pub fn allows(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::List(list) => {
                list.iter().any(|m| m == method) || (method == "HEAD" && list.iter().any(|m| m == "GET"))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Methods::Any => "ANY".to_owned(),
            Methods::List(list) => list.join(","),
        }
    }
}

/// A validated route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub methods: Methods,
    /// The path as written: `/items/{id}`, `/static/*`.
    pub path: String,
    /// Lower-cased host without port, when the route is host-specific.
    pub host: Option<String>,
    pub function: String,
    /// Answer 202 at once and run the function through the durable queue.
    pub is_async: bool,
    /// The `[auth.NAME]` policy requests must pass before the function runs.
    pub auth: Option<String>,
    /// The CORS policy: a `[cors.NAME]`, or the route's inline one (named `routes[i]`).
    pub cors: Option<String>,
    /// `rate_limit = "NAME"`: the limit the route draws on, resolved from `[rate_limits.NAME]`.
    pub rate_limit: Option<RateLimitSpec>,
    /// `cache = true`: the gateway's response cache may answer (RFC 9111, shared cache).
    pub cache: bool,
    /// `cache = "NAME"`: the `[cache.NAME]` profile, resolved (`cache` is then true).
    pub cache_profile: Option<CacheProfile>,
}

impl RouteSpec {
    /// The path in `matchit` syntax: `{param}` stays, a trailing `/*` becomes `/{*proxy}`.
    pub fn matcher_path(&self) -> String {
        match self.path.strip_suffix("/*") {
            Some(prefix) => format!("{prefix}/{{*proxy}}"),
            None => self.path.clone(),
        }
    }

    /// The API Gateway route key, e.g. `GET /items/{id}` or `ANY /static/{proxy+}`.
    pub fn route_key(&self) -> String {
        let path = match self.path.strip_suffix("/*") {
            Some(prefix) => format!("{prefix}/{{proxy+}}"),
            None => self.path.clone(),
        };
        format!("{} {}", self.methods.describe(), path)
    }
}

/// Defaults applied to keys a function does not set.
pub mod defaults {
    use std::time::Duration;

    pub const MEMORY_MB: u32 = 128;
    pub const TIMEOUT: Duration = Duration::from_secs(3);
    pub const MAX_INSTANCES: u32 = 10;
    pub const KEEP_ALIVE: Duration = Duration::from_secs(600);
    pub const MAX_QUEUED: u32 = 1000;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Parse and validate manifest text. `file` is only used in messages.
pub fn parse(source: &str, file: &str) -> Result<Manifest, Diagnostics> {
    check::manifest(source, file)
}

/// Read `APP_DIR/nimbus.toml`, validate it, and check that the code it names exists.
pub fn load(app_dir: &Path) -> Result<Manifest, Diagnostics> {
    load_as(app_dir, &app_dir.join(MANIFEST_FILE).display().to_string())
}

/// Like [`load`], naming the file `file` in messages (an uploaded app is shown as the user's
/// `nimbus.toml`, not the server's copy of it).
pub fn load_as(app_dir: &Path, file: &str) -> Result<Manifest, Diagnostics> {
    let path = app_dir.join(MANIFEST_FILE);
    let source = std::fs::read_to_string(&path).map_err(|e| {
        Diagnostics::single(Diagnostic::file(
            file,
            format!("cannot read the manifest ({e}); run nimbus in an app directory that has a nimbus.toml, or pass the directory"),
        ))
    })?;
    let (mut manifest, locations) = check::manifest_with_locations(&source, file)?;
    let mut problems = files::check(&mut manifest, &locations, app_dir, &source, file);
    problems.extend(edge::read_jwks_files(&mut manifest.edge, app_dir, (file, &source), &locations.jwks_files));
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(Diagnostics::new(problems))
    }
}

#[cfg(test)]
mod tests;
