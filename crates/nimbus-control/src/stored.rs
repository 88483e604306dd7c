//! The stored deployment format: what the registry keeps for each deployment, apart from the
//! domain types so that renaming a field of `FunctionSpec` or `RouteSpec` cannot silently
//! break an existing data dir.
//!
//! Every format is a set of plain structs frozen at the release that introduced it, converted
//! to and from the domain types here and only here. The registry row carries the format's
//! number ([`FORMAT_VERSION`]); a reader accepts every format it knows and refuses a newer one
//! with a message that says to upgrade nimbus.
//!
//! | format | written by | shape |
//! |---|---|---|
//! | 0 | nimbus 0.1 before formats were numbered | the same JSON as format 1 |
//! | 1 | nimbus since the registry seam | [`StoredDeploymentV1`] |
//! | 2 | nimbus since the sandbox | [`StoredDeploymentV2`]: V1 plus each function's `ephemeral_storage_mb` and `grants` (and `concurrency`, added later with a default of 1, so it needs no new format) |
//!
//! Format 1 was defined as exactly the JSON that release 0.1 wrote (serialized domain types),
//! so rows written before the numbering (format 0) read through the same structs. A change to
//! the shape is a new `StoredDeploymentVn` with a conversion from the one before, never an edit
//! of an old one: older formats are read by converting them up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::assets::{AssetFile, AssetManifest};
use nimbus_core::{
    Access, AsyncPolicy, BucketTrigger, Destination, FunctionSpec, Grants, QueueAccess, QueueSpec, QueueTrigger,
    Redrive, ResponseMode, RuntimeKind, TriggerSource, TriggerSpec, WasmOptions, DEFAULT_MAX_STREAM_BYTES,
};
use nimbus_manifest::edge::EdgeSpec;
use nimbus_manifest::schedule::{CatchUp, ScheduleSpec, When};
use nimbus_manifest::{CacheProfile, CacheQuery, LimitKey, Methods, Pricing, RateLimitSpec, RouteSpec};
use serde::{Deserialize, Serialize};

/// The format this release writes.
pub const FORMAT_VERSION: u32 = 2;

/// A deployment as stored in format 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDeploymentV1 {
    pub functions: Vec<StoredFunctionV1>,
    pub routes: Vec<StoredRouteV1>,
    #[serde(default)]
    pub schedules: Vec<StoredScheduleV1>,
    #[serde(default)]
    pub pricing: Option<StoredPricingV1>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredFunctionV1 {
    pub spec: StoredSpecV1,
    pub code_digest: String,
}

/// Durations are integer milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSpecV1 {
    pub name: String,
    /// "node" | "python" | "provided" | "wasm"
    pub runtime: String,
    pub handler: String,
    pub code: String,
    pub memory_mb: u32,
    pub timeout: u64,
    pub env: BTreeMap<String, String>,
    pub min_instances: u32,
    pub max_instances: u32,
    pub keep_alive: u64,
    pub max_queued: u32,
    pub queue_timeout: u64,
    #[serde(default)]
    pub async_policy: Option<StoredAsyncPolicyV1>,
    #[serde(default)]
    pub wasm: Option<StoredWasmV1>,
    /// `"adaptive"`, or absent for the fixed `keep_alive` (older rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAsyncPolicyV1 {
    pub max_retry_attempts: u32,
    pub retry_backoff: u64,
    pub retry_backoff_max: u64,
    pub max_event_age: u64,
    pub on_success: Option<StoredDestinationV1>,
    pub on_failure: Option<StoredDestinationV1>,
}

/// `{"function": "NAME"}` or `"dlq"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredDestinationV1 {
    Function(String),
    Dlq,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredWasmV1 {
    pub component: String,
    pub instance_reuse: bool,
    pub cpu_ms: Option<u32>,
    pub allowed_outbound_hosts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRouteV1 {
    pub methods: StoredMethodsV1,
    pub path: String,
    pub host: Option<String>,
    pub function: String,
    #[serde(default)]
    pub is_async: bool,
    /// The route's auth and CORS policies (the edge layer, added later: absent means none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<String>,
    /// `rate_limit = "NAME"`, resolved (came after format 2; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<StoredRateLimitV2>,
    /// `cache = true` (came after format 2; absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// `cache = "NAME"`, the profile resolved (came after format 2; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_profile: Option<StoredCacheProfileV2>,
}

/// A route's cache profile: durations in whole seconds; `query_keys` present only when the
/// profile keys on some query keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredCacheProfileV2 {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_query: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl From<&CacheProfile> for StoredCacheProfileV2 {
    fn from(p: &CacheProfile) -> Self {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        StoredCacheProfileV2 {
            name: p.name.clone(),
            ttl: secs(p.ttl),
            stale_while_revalidate: secs(p.stale_while_revalidate),
            stale_if_error: secs(p.stale_if_error),
            vary: p.vary.clone(),
            ignore_query: p.query == CacheQuery::Ignore,
            query_keys: match &p.query {
                CacheQuery::Only(keys) => Some(keys.clone()),
                _ => None,
            },
            tags: p.tags.clone(),
        }
    }
}

impl From<StoredCacheProfileV2> for CacheProfile {
    fn from(p: StoredCacheProfileV2) -> Self {
        let query = match (p.query_keys, p.ignore_query) {
            (Some(keys), _) => CacheQuery::Only(keys),
            (None, true) => CacheQuery::Ignore,
            (None, false) => CacheQuery::All,
        };
        CacheProfile {
            name: p.name,
            ttl: p.ttl.map(Duration::from_secs),
            stale_while_revalidate: p.stale_while_revalidate.map(Duration::from_secs),
            stale_if_error: p.stale_if_error.map(Duration::from_secs),
            vary: p.vary,
            query,
            tags: p.tags,
        }
    }
}

/// A route's rate limit: `per` in whole seconds, `key` as written (`ip`, `header:NAME`,
/// `claim:NAME`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRateLimitV2 {
    pub name: String,
    pub requests: u32,
    pub per: u64,
    pub key: String,
}

/// `"any"` or `{"list": ["GET", …]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredMethodsV1 {
    Any,
    List(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredScheduleV1 {
    pub function: String,
    pub when: StoredWhenV1,
    pub timezone: String,
    /// "latest" | "none"
    pub catch_up: String,
}

/// `{"cron": "EXPR"}` or `{"rate": MILLISECONDS}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredWhenV1 {
    Cron(String),
    Rate(u64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPricingV1 {
    pub currency: String,
    pub per_million_requests: f64,
    pub per_gb_second: f64,
    pub server_per_hour: f64,
    pub servers: u32,
    /// The storage prices came later: absent in older bodies (read as the defaults) and left
    /// out when they are the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StoredStoragePricesV1>,
}

/// `[pricing]`'s storage keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredStoragePricesV1 {
    pub per_gb_month_stored: f64,
    pub per_million_class_a: f64,
    pub per_million_class_b: f64,
    pub per_gb_transfer_out: f64,
    pub per_million_kv_reads: f64,
    pub per_million_kv_writes: f64,
    pub per_gb_month_kv: f64,
}

/// A deployment as stored in format 2: format 1 with two more function keys. The declared
/// buckets and KV namespaces (and the grants on them) came later as optional fields, left out
/// when empty, so a deployment without storage is stored exactly as before; a binary older than
/// them reads such a body without its storage grants, which only takes access away. Queues,
/// triggers and queue grants came later still, the same way: absent in older bodies (read as
/// none) and left out when there are none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDeploymentV2 {
    pub functions: Vec<StoredFunctionV2>,
    pub routes: Vec<StoredRouteV1>,
    pub schedules: Vec<StoredScheduleV1>,
    pub pricing: StoredPricingV1,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, StoredQueueV2>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<StoredTriggerV2>,
    /// The edge policies and rules (`[auth]`, `[cors]`, `[[redirects]]`, `[[rewrites]]`,
    /// `[[headers]]`), added later: absent means none. Stored as the manifest's own
    /// serialisation of [`EdgeSpec`], whose shape `edge_format_is_frozen` pins.
    #[serde(default, skip_serializing_if = "EdgeSpec::is_empty")]
    pub edge: EdgeSpec,
    /// `[static]`: absent in older bodies and when the app has no static files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<StoredAssetsV2>,
}

/// The static files of a deployment: the fallback, and each file's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAssetsV2 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa_fallback: Option<String>,
    pub files: Vec<StoredAssetFileV2>,
}

/// One static file: its path under the static directory, its artifact, size, modification
/// time (seconds since the epoch) and content type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAssetFileV2 {
    pub path: String,
    pub digest: String,
    pub size: u64,
    pub mtime: u64,
    pub content_type: String,
}

impl From<&AssetManifest> for StoredAssetsV2 {
    fn from(m: &AssetManifest) -> Self {
        let files = m
            .files
            .iter()
            .map(|f| StoredAssetFileV2 {
                path: f.path.clone(),
                digest: f.digest.clone(),
                size: f.size,
                mtime: f.mtime,
                content_type: f.content_type.clone(),
            })
            .collect();
        StoredAssetsV2 { spa_fallback: m.spa_fallback.clone(), files }
    }
}

impl From<StoredAssetsV2> for AssetManifest {
    fn from(m: StoredAssetsV2) -> Self {
        let files = m
            .files
            .into_iter()
            .map(|f| AssetFile {
                path: f.path,
                digest: f.digest,
                size: f.size,
                mtime: f.mtime,
                content_type: f.content_type,
            })
            .collect();
        AssetManifest { spa_fallback: m.spa_fallback, files }
    }
}

/// `[queues.NAME]`; durations are integer milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredQueueV2 {
    pub visibility_timeout: u64,
    pub retention: u64,
    pub delay: u64,
    pub fifo: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<StoredRedriveV2>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRedriveV2 {
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

/// `[[triggers]]`: `{"function": F, "bucket": {...}}` or `{"function": F, "queue": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredTriggerV2 {
    pub function: String,
    #[serde(flatten)]
    pub source: StoredTriggerSourceV2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredTriggerSourceV2 {
    Bucket {
        bucket: String,
        events: Vec<String>,
        prefix: Option<String>,
        suffix: Option<String>,
    },
    /// `batch_window` in milliseconds.
    Queue {
        queue: String,
        batch_size: u32,
        batch_window: u64,
        max_concurrency: Option<u32>,
        report_batch_item_failures: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredFunctionV2 {
    /// Format 1's function, whose `wasm.allowed_outbound_hosts` is left empty: format 2 keeps
    /// the allow-list at the function level, for every runtime.
    pub spec: StoredSpecV1,
    /// `None`: the runtime's default (nothing for wasm, public hosts for processes).
    pub allowed_outbound_hosts: Option<Vec<String>>,
    pub ephemeral_storage_mb: u32,
    pub grants: StoredGrantsV2,
    pub code_digest: String,
    /// "streaming" when the function streams its responses; absent (older rows too) = buffered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_mode: Option<String>,
    /// The streamed-response cap in bytes; absent = the default (20 MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_bytes: Option<u64>,
    /// Invocations one instance runs at once; rows written before the key existed read as 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub concurrency: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredGrantsV2 {
    pub functions: Vec<String>,
    /// Bucket name → "read" | "write" | "read-write".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, String>,
    /// KV namespace → "read" | "write" | "read-write".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kv: BTreeMap<String, String>,
    /// Queue → "send" | "receive" | "send-receive".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, String>,
}

impl From<&Grants> for StoredGrantsV2 {
    fn from(g: &Grants) -> Self {
        let names = |m: &BTreeMap<String, Access>| m.iter().map(|(k, a)| (k.clone(), a.as_str().to_owned())).collect();
        StoredGrantsV2 {
            functions: g.functions.clone(),
            buckets: names(&g.buckets),
            kv: names(&g.kv),
            queues: g.queues.iter().map(|(k, a)| (k.clone(), a.as_str().to_owned())).collect(),
        }
    }
}

impl TryFrom<StoredGrantsV2> for Grants {
    type Error = FormatError;
    fn try_from(g: StoredGrantsV2) -> Result<Self, FormatError> {
        let accesses = |m: BTreeMap<String, String>| {
            m.into_iter()
                .map(|(k, a)| match Access::parse(&a) {
                    Some(a) => Ok((k, a)),
                    None => Err(FormatError::Value(format!("unknown access \"{a}\" granted on \"{k}\""))),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
        };
        let queues = g
            .queues
            .into_iter()
            .map(|(k, a)| match QueueAccess::parse(&a) {
                Some(a) => Ok((k, a)),
                None => Err(FormatError::Value(format!("unknown queue access \"{a}\" granted on \"{k}\""))),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(Grants { functions: g.functions, buckets: accesses(g.buckets)?, kv: accesses(g.kv)?, queues })
    }
}

/// Format 1 read into format 2: the keys it lacks take their defaults.
impl From<StoredDeploymentV1> for StoredDeploymentV2 {
    fn from(v: StoredDeploymentV1) -> Self {
        StoredDeploymentV2 {
            functions: v
                .functions
                .into_iter()
                .map(|f| StoredFunctionV2 {
                    // Format 1 only had wasm's list, which a wasm function always had.
                    allowed_outbound_hosts: (f.spec.runtime == "wasm")
                        .then(|| f.spec.wasm.as_ref().map(|w| w.allowed_outbound_hosts.clone()).unwrap_or_default()),
                    spec: f.spec,
                    ephemeral_storage_mb: nimbus_core::function::DEFAULT_EPHEMERAL_STORAGE_MB,
                    grants: StoredGrantsV2::default(),
                    code_digest: f.code_digest,
                    response_mode: None,
                    max_stream_bytes: None,
                    concurrency: 1,
                })
                .collect(),
            routes: v.routes,
            schedules: v.schedules,
            pricing: v.pricing.unwrap_or_else(|| (&Pricing::default()).into()),
            buckets: Vec::new(),
            kv: Vec::new(),
            queues: BTreeMap::new(),
            triggers: Vec::new(),
            edge: EdgeSpec::default(),
            assets: None,
        }
    }
}

/// A deployment's content in domain terms (what a deploy writes and a load reads back).
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentContent {
    /// (spec, code digest) per function.
    pub functions: Vec<(FunctionSpec, String)>,
    pub routes: Vec<RouteSpec>,
    pub schedules: Vec<ScheduleSpec>,
    pub pricing: Pricing,
    /// The buckets and KV namespaces the manifest declares.
    pub buckets: BTreeSet<String>,
    pub kv: BTreeSet<String>,
    /// The queues the manifest declares, and its triggers.
    pub queues: BTreeMap<String, QueueSpec>,
    pub triggers: Vec<TriggerSpec>,
    /// The edge policies and rules.
    pub edge: EdgeSpec,
    /// The static files (`[static]`), if any.
    pub assets: Option<AssetManifest>,
}

impl DeploymentContent {
    /// Every artifact the deployment reads: its functions' code and its static files, sorted,
    /// each once.
    pub fn artifact_digests(&self) -> Vec<String> {
        let code = self.functions.iter().map(|(_, digest)| digest.clone());
        let files = self.assets.iter().flat_map(|a| a.files.iter().map(|f| f.digest.clone()));
        let mut all: Vec<String> = code.chain(files).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Why a stored body cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "it is in storage format {0}, newer than this nimbus reads (up to {FORMAT_VERSION}); upgrade nimbus to serve this data dir"
    )]
    TooNew(u32),
    #[error("it is not valid format-{version} JSON: {source}")]
    Json {
        version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Value(String),
}

/// Encode in the current format.
pub fn encode(content: &DeploymentContent) -> Result<String, serde_json::Error> {
    serde_json::to_string(&StoredDeploymentV2::from(content))
}

/// Decode a body of any known format.
pub fn decode(format_version: u32, body: &str) -> Result<DeploymentContent, FormatError> {
    let json = |source| FormatError::Json { version: format_version, source };
    let v2: StoredDeploymentV2 = match format_version {
        0 | 1 => serde_json::from_str::<StoredDeploymentV1>(body).map_err(json)?.into(),
        2 => serde_json::from_str(body).map_err(json)?,
        newer => return Err(FormatError::TooNew(newer)),
    };
    DeploymentContent::try_from(v2)
}

/// A stored function's response keys (absent: buffered, the default cap).
fn stored_response(mode: Option<String>, cap: Option<u64>) -> Result<(ResponseMode, u64), FormatError> {
    let mode = match mode {
        None => ResponseMode::Buffered,
        Some(m) => {
            ResponseMode::parse(&m).ok_or_else(|| FormatError::Value(format!("unknown response mode \"{m}\"")))?
        }
    };
    Ok((mode, cap.unwrap_or(DEFAULT_MAX_STREAM_BYTES)))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&DeploymentContent> for StoredDeploymentV2 {
    fn from(c: &DeploymentContent) -> Self {
        StoredDeploymentV2 {
            functions: c
                .functions
                .iter()
                .map(|(spec, digest)| StoredFunctionV2 {
                    spec: spec.into(),
                    allowed_outbound_hosts: spec.allowed_outbound_hosts.clone(),
                    ephemeral_storage_mb: spec.ephemeral_storage_mb,
                    grants: (&spec.grants).into(),
                    code_digest: digest.clone(),
                    response_mode: (spec.response_mode != ResponseMode::Buffered)
                        .then(|| spec.response_mode.as_str().to_owned()),
                    max_stream_bytes: (spec.max_stream_bytes != DEFAULT_MAX_STREAM_BYTES)
                        .then_some(spec.max_stream_bytes),
                    concurrency: spec.concurrency,
                })
                .collect(),
            routes: c.routes.iter().map(Into::into).collect(),
            schedules: c.schedules.iter().map(Into::into).collect(),
            pricing: (&c.pricing).into(),
            buckets: c.buckets.iter().cloned().collect(),
            kv: c.kv.iter().cloned().collect(),
            queues: c.queues.iter().map(|(k, q)| (k.clone(), q.into())).collect(),
            triggers: c.triggers.iter().map(Into::into).collect(),
            edge: c.edge.clone(),
            assets: c.assets.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<StoredDeploymentV2> for DeploymentContent {
    type Error = FormatError;
    fn try_from(v: StoredDeploymentV2) -> Result<Self, FormatError> {
        let functions = v
            .functions
            .into_iter()
            .map(|f| {
                let mut spec = FunctionSpec::try_from(f.spec)?;
                spec.allowed_outbound_hosts = f.allowed_outbound_hosts;
                spec.ephemeral_storage_mb = f.ephemeral_storage_mb;
                spec.grants = Grants::try_from(f.grants)?;
                (spec.response_mode, spec.max_stream_bytes) = stored_response(f.response_mode, f.max_stream_bytes)?;
                spec.concurrency = f.concurrency;
                Ok((spec, f.code_digest))
            })
            .collect::<Result<_, FormatError>>()?;
        let schedules = v.schedules.into_iter().map(ScheduleSpec::try_from).collect::<Result<_, _>>()?;
        Ok(DeploymentContent {
            functions,
            routes: v.routes.into_iter().map(Into::into).collect(),
            schedules,
            pricing: v.pricing.into(),
            buckets: v.buckets.into_iter().collect(),
            kv: v.kv.into_iter().collect(),
            queues: v.queues.into_iter().map(|(k, q)| (k, q.into())).collect(),
            triggers: v.triggers.into_iter().map(Into::into).collect(),
            edge: v.edge,
            assets: v.assets.map(Into::into),
        })
    }
}

impl From<&QueueSpec> for StoredQueueV2 {
    fn from(q: &QueueSpec) -> Self {
        StoredQueueV2 {
            visibility_timeout: ms(q.visibility_timeout),
            retention: ms(q.retention),
            delay: ms(q.delay),
            fifo: q.fifo,
            redrive: q.redrive.as_ref().map(|r| StoredRedriveV2 {
                dead_letter_queue: r.dead_letter_queue.clone(),
                max_receive_count: r.max_receive_count,
            }),
        }
    }
}

impl From<StoredQueueV2> for QueueSpec {
    fn from(q: StoredQueueV2) -> Self {
        QueueSpec {
            visibility_timeout: Duration::from_millis(q.visibility_timeout),
            retention: Duration::from_millis(q.retention),
            delay: Duration::from_millis(q.delay),
            fifo: q.fifo,
            redrive: q
                .redrive
                .map(|r| Redrive { dead_letter_queue: r.dead_letter_queue, max_receive_count: r.max_receive_count }),
        }
    }
}

impl From<&TriggerSpec> for StoredTriggerV2 {
    fn from(t: &TriggerSpec) -> Self {
        let source = match &t.source {
            TriggerSource::Bucket(b) => StoredTriggerSourceV2::Bucket {
                bucket: b.bucket.clone(),
                events: b.events.clone(),
                prefix: b.prefix.clone(),
                suffix: b.suffix.clone(),
            },
            TriggerSource::Queue(q) => StoredTriggerSourceV2::Queue {
                queue: q.queue.clone(),
                batch_size: q.batch_size,
                batch_window: ms(q.batch_window),
                max_concurrency: q.max_concurrency,
                report_batch_item_failures: q.report_batch_item_failures,
            },
        };
        StoredTriggerV2 { function: t.function.clone(), source }
    }
}

impl From<StoredTriggerV2> for TriggerSpec {
    fn from(t: StoredTriggerV2) -> Self {
        let source = match t.source {
            StoredTriggerSourceV2::Bucket { bucket, events, prefix, suffix } => {
                TriggerSource::Bucket(BucketTrigger { bucket, events, prefix, suffix })
            }
            StoredTriggerSourceV2::Queue {
                queue,
                batch_size,
                batch_window,
                max_concurrency,
                report_batch_item_failures,
            } => TriggerSource::Queue(QueueTrigger {
                queue,
                batch_size,
                batch_window: Duration::from_millis(batch_window),
                max_concurrency,
                report_batch_item_failures,
            }),
        };
        TriggerSpec { function: t.function, source }
    }
}

impl From<&FunctionSpec> for StoredSpecV1 {
    fn from(s: &FunctionSpec) -> Self {
        StoredSpecV1 {
            name: s.name.clone(),
            runtime: s.runtime.as_str().to_owned(),
            handler: s.handler.clone(),
            code: s.code.clone(),
            memory_mb: s.memory_mb,
            timeout: ms(s.timeout),
            env: s.env.clone(),
            min_instances: s.min_instances,
            max_instances: s.max_instances,
            keep_alive: ms(s.keep_alive),
            max_queued: s.max_queued,
            queue_timeout: ms(s.queue_timeout),
            async_policy: Some((&s.async_policy).into()),
            // `cpu_ms` keeps its stored place in the wasm options (written for every runtime).
            wasm: Some(StoredWasmV1 { cpu_ms: s.cpu_ms, ..(&s.wasm).into() }),
            keep_alive_policy: s.keep_alive_policy.as_str().map(str::to_owned),
        }
    }
}

impl TryFrom<StoredSpecV1> for FunctionSpec {
    type Error = FormatError;
    fn try_from(s: StoredSpecV1) -> Result<Self, FormatError> {
        let runtime = RuntimeKind::parse(&s.runtime)
            .ok_or_else(|| FormatError::Value(format!("function {} has an unknown runtime {:?}", s.name, s.runtime)))?;
        let keep_alive_policy = match s.keep_alive_policy.as_deref() {
            None => nimbus_core::KeepAlivePolicy::Fixed,
            Some("adaptive") => nimbus_core::KeepAlivePolicy::Adaptive,
            Some(other) => {
                return Err(FormatError::Value(format!(
                    "function {} has an unknown keep-alive policy {other:?}",
                    s.name
                )))
            }
        };
        Ok(FunctionSpec {
            name: s.name,
            runtime,
            handler: s.handler,
            code: s.code,
            memory_mb: s.memory_mb,
            timeout: Duration::from_millis(s.timeout),
            env: s.env,
            min_instances: s.min_instances,
            max_instances: s.max_instances,
            keep_alive: Duration::from_millis(s.keep_alive),
            max_queued: s.max_queued,
            queue_timeout: Duration::from_millis(s.queue_timeout),
            async_policy: s.async_policy.map(Into::into).unwrap_or_default(),
            cpu_ms: s.wasm.as_ref().and_then(|w| w.cpu_ms),
            wasm: s.wasm.map(Into::into).unwrap_or_default(),
            // Format 2 sets these from its own fields.
            allowed_outbound_hosts: None,
            ephemeral_storage_mb: nimbus_core::function::DEFAULT_EPHEMERAL_STORAGE_MB,
            grants: nimbus_core::Grants::default(),
            keep_alive_policy,
            response_mode: Default::default(),
            max_stream_bytes: nimbus_core::DEFAULT_MAX_STREAM_BYTES,
            concurrency: 1,
        })
    }
}

impl From<&AsyncPolicy> for StoredAsyncPolicyV1 {
    fn from(p: &AsyncPolicy) -> Self {
        StoredAsyncPolicyV1 {
            max_retry_attempts: p.max_retry_attempts,
            retry_backoff: ms(p.retry_backoff),
            retry_backoff_max: ms(p.retry_backoff_max),
            max_event_age: ms(p.max_event_age),
            on_success: p.on_success.as_ref().map(Into::into),
            on_failure: p.on_failure.as_ref().map(Into::into),
        }
    }
}

impl From<StoredAsyncPolicyV1> for AsyncPolicy {
    fn from(p: StoredAsyncPolicyV1) -> Self {
        AsyncPolicy {
            max_retry_attempts: p.max_retry_attempts,
            retry_backoff: Duration::from_millis(p.retry_backoff),
            retry_backoff_max: Duration::from_millis(p.retry_backoff_max),
            max_event_age: Duration::from_millis(p.max_event_age),
            on_success: p.on_success.map(Into::into),
            on_failure: p.on_failure.map(Into::into),
        }
    }
}

impl From<&Destination> for StoredDestinationV1 {
    fn from(d: &Destination) -> Self {
        match d {
            Destination::Function(f) => StoredDestinationV1::Function(f.clone()),
            Destination::Dlq => StoredDestinationV1::Dlq,
        }
    }
}

impl From<StoredDestinationV1> for Destination {
    fn from(d: StoredDestinationV1) -> Self {
        match d {
            StoredDestinationV1::Function(f) => Destination::Function(f),
            StoredDestinationV1::Dlq => Destination::Dlq,
        }
    }
}

impl From<&WasmOptions> for StoredWasmV1 {
    fn from(w: &WasmOptions) -> Self {
        StoredWasmV1 {
            component: w.component.clone(),
            instance_reuse: w.instance_reuse,
            cpu_ms: None,
            allowed_outbound_hosts: Vec::new(),
        }
    }
}

impl From<StoredWasmV1> for WasmOptions {
    fn from(w: StoredWasmV1) -> Self {
        WasmOptions { component: w.component, instance_reuse: w.instance_reuse }
    }
}

impl From<&RouteSpec> for StoredRouteV1 {
    fn from(r: &RouteSpec) -> Self {
        StoredRouteV1 {
            methods: match &r.methods {
                Methods::Any => StoredMethodsV1::Any,
                Methods::List(l) => StoredMethodsV1::List(l.clone()),
            },
            path: r.path.clone(),
            host: r.host.clone(),
            function: r.function.clone(),
            is_async: r.is_async,
            auth: r.auth.clone(),
            cors: r.cors.clone(),
            rate_limit: r.rate_limit.as_ref().map(|l| StoredRateLimitV2 {
                name: l.name.clone(),
                requests: l.requests,
                per: l.per.as_secs(),
                key: l.key.describe(),
            }),
            cache: r.cache,
            cache_profile: r.cache_profile.as_ref().map(StoredCacheProfileV2::from),
        }
    }
}

impl From<StoredRouteV1> for RouteSpec {
    fn from(r: StoredRouteV1) -> Self {
        RouteSpec {
            methods: match r.methods {
                StoredMethodsV1::Any => Methods::Any,
                StoredMethodsV1::List(l) => Methods::List(l),
            },
            path: r.path,
            host: r.host,
            function: r.function,
            is_async: r.is_async,
            auth: r.auth,
            cors: r.cors,
            // A key this binary cannot read drops the limit rather than the deployment.
            rate_limit: r.rate_limit.and_then(|l| {
                Some(RateLimitSpec {
                    key: LimitKey::parse(&l.key)?,
                    name: l.name,
                    requests: l.requests,
                    per: Duration::from_secs(l.per),
                })
            }),
            cache: r.cache,
            cache_profile: r.cache_profile.map(CacheProfile::from),
        }
    }
}

impl From<&ScheduleSpec> for StoredScheduleV1 {
    fn from(s: &ScheduleSpec) -> Self {
        StoredScheduleV1 {
            function: s.function.clone(),
            when: match &s.when {
                When::Cron(c) => StoredWhenV1::Cron(c.clone()),
                When::Rate(d) => StoredWhenV1::Rate(ms(*d)),
            },
            timezone: s.timezone.clone(),
            catch_up: match s.catch_up {
                CatchUp::Latest => "latest",
                CatchUp::None => "none",
            }
            .to_owned(),
        }
    }
}

impl TryFrom<StoredScheduleV1> for ScheduleSpec {
    type Error = FormatError;
    fn try_from(s: StoredScheduleV1) -> Result<Self, FormatError> {
        let catch_up = match s.catch_up.as_str() {
            "latest" => CatchUp::Latest,
            "none" => CatchUp::None,
            other => {
                return Err(FormatError::Value(format!(
                    "the schedule of {} has an unknown catch_up {other:?}",
                    s.function
                )))
            }
        };
        Ok(ScheduleSpec {
            function: s.function,
            when: match s.when {
                StoredWhenV1::Cron(c) => When::Cron(c),
                StoredWhenV1::Rate(ms) => When::Rate(Duration::from_millis(ms)),
            },
            timezone: s.timezone,
            catch_up,
        })
    }
}

impl From<&Pricing> for StoredPricingV1 {
    fn from(p: &Pricing) -> Self {
        StoredPricingV1 {
            currency: p.currency.clone(),
            per_million_requests: p.per_million_requests,
            per_gb_second: p.per_gb_second,
            server_per_hour: p.server_per_hour,
            servers: p.servers,
            storage: storage_prices(p),
        }
    }
}

/// The storage prices to store: none when they are the defaults.
fn storage_prices(p: &Pricing) -> Option<StoredStoragePricesV1> {
    let s = StoredStoragePricesV1::from(p);
    (s != StoredStoragePricesV1::from(&Pricing::default())).then_some(s)
}

impl From<&Pricing> for StoredStoragePricesV1 {
    fn from(p: &Pricing) -> Self {
        StoredStoragePricesV1 {
            per_gb_month_stored: p.per_gb_month_stored,
            per_million_class_a: p.per_million_class_a,
            per_million_class_b: p.per_million_class_b,
            per_gb_transfer_out: p.per_gb_transfer_out,
            per_million_kv_reads: p.per_million_kv_reads,
            per_million_kv_writes: p.per_million_kv_writes,
            per_gb_month_kv: p.per_gb_month_kv,
        }
    }
}

impl From<StoredPricingV1> for Pricing {
    fn from(p: StoredPricingV1) -> Self {
        let s = p.storage.unwrap_or_else(|| (&Pricing::default()).into());
        Pricing {
            currency: p.currency,
            per_million_requests: p.per_million_requests,
            per_gb_second: p.per_gb_second,
            server_per_hour: p.server_per_hour,
            servers: p.servers,
            per_gb_month_stored: s.per_gb_month_stored,
            per_million_class_a: s.per_million_class_a,
            per_million_class_b: s.per_million_class_b,
            per_gb_transfer_out: s.per_gb_transfer_out,
            per_million_kv_reads: s.per_million_kv_reads,
            per_million_kv_writes: s.per_million_kv_writes,
            per_gb_month_kv: s.per_gb_month_kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body exactly as nimbus 0.1 wrote it (format 0), before `async_policy`, `wasm`,
    /// `schedules` and `pricing` existed in some rows: every later key has a default.
    const OLDEST: &str = r#"{"functions":[{"spec":{"name":"hello","runtime":"node","handler":"index.handler","code":"functions/hello","memory_mb":128,"timeout":3000,"env":{"A":"1"},"min_instances":0,"max_instances":10,"keep_alive":600000,"max_queued":1000,"queue_timeout":10000},"code_digest":"ab"}],"routes":[{"methods":{"list":["GET"]},"path":"/hello/{name}","host":null,"function":"hello"}]}"#;

    /// A format-0 body with every key 0.1 ever wrote.
    const FULL: &str = r#"{"functions":[{"spec":{"name":"report","runtime":"wasm","handler":"","code":"w","memory_mb":64,"timeout":1500,"env":{},"min_instances":1,"max_instances":2,"keep_alive":1000,"max_queued":5,"queue_timeout":250,"async_policy":{"max_retry_attempts":1,"retry_backoff":100,"retry_backoff_max":400,"max_event_age":60000,"on_success":{"function":"audit"},"on_failure":"dlq"},"wasm":{"component":"a.wasm","instance_reuse":true,"cpu_ms":50,"allowed_outbound_hosts":["https://*.example.com"]}},"code_digest":"cd"}],"routes":[{"methods":"any","path":"/r/*","host":"api.example.com","function":"report","is_async":true}],"schedules":[{"function":"report","when":{"rate":300000},"timezone":"UTC","catch_up":"none"},{"function":"report","when":{"cron":"0 2 * * *"},"timezone":"Asia/Shanghai","catch_up":"latest"}],"pricing":{"currency":"EUR","perMillionRequests":1.0,"perGbSecond":2.0,"serverPerHour":3.0,"servers":4}}"#;

    #[test]
    fn format_0_bodies_read_with_defaults_for_what_they_lack() {
        let c = decode(0, OLDEST).unwrap();
        let (spec, digest) = &c.functions[0];
        assert_eq!((spec.name.as_str(), spec.runtime, digest.as_str()), ("hello", RuntimeKind::Node, "ab"));
        assert_eq!(spec.timeout, Duration::from_secs(3));
        assert_eq!(spec.async_policy, AsyncPolicy::default());
        assert_eq!(spec.wasm, WasmOptions::default());
        assert_eq!(c.routes[0].methods, Methods::List(vec!["GET".into()]));
        assert!(!c.routes[0].is_async);
        assert!(c.schedules.is_empty());
        assert_eq!(c.pricing, Pricing::default());
    }

    #[test]
    fn every_key_round_trips_through_the_current_format() {
        let c = decode(0, FULL).unwrap();
        let spec = &c.functions[0].0;
        assert_eq!(spec.async_policy.on_success, Some(Destination::Function("audit".into())));
        assert_eq!(spec.async_policy.retry_backoff_max, Duration::from_millis(400));
        assert_eq!(spec.cpu_ms, Some(50));
        assert_eq!(spec.allowed_outbound_hosts, Some(vec!["https://*.example.com".to_owned()]));
        assert_eq!(c.routes[0].methods, Methods::Any);
        assert_eq!(c.schedules[0].when, When::Rate(Duration::from_secs(300)));
        assert_eq!(c.schedules[0].catch_up, CatchUp::None);
        assert_eq!(c.pricing.currency, "EUR");
        assert_eq!(spec.ephemeral_storage_mb, 512, "format 0 predates ephemeral_storage_mb");
        // Written in the current format it reads back identical.
        let body = encode(&c).unwrap();
        assert_eq!(decode(FORMAT_VERSION, &body).unwrap(), c);
        // Format 1 is format 0's JSON: a format-1 row is read the same way.
        assert_eq!(decode(1, FULL).unwrap(), c);
    }

    #[test]
    fn response_keys_round_trip_and_stay_out_of_buffered_bodies() {
        let mut c = decode(0, OLDEST).unwrap();
        assert_eq!(c.functions[0].0.response_mode, ResponseMode::Buffered, "older rows are buffered");
        assert!(!encode(&c).unwrap().contains("response_mode"), "buffered bodies stay as they were");
        c.functions[0].0.response_mode = ResponseMode::Streaming;
        c.functions[0].0.max_stream_bytes = 1 << 20;
        let body = encode(&c).unwrap();
        assert!(body.contains("\"response_mode\":\"streaming\"") && body.contains("\"max_stream_bytes\":1048576"));
        assert_eq!(decode(FORMAT_VERSION, &body).unwrap(), c);
        let bad = body.replace("\"streaming\"", "\"chunked\"");
        assert!(decode(FORMAT_VERSION, &bad).unwrap_err().to_string().contains("unknown response mode \"chunked\""));
    }

    /// The edge policies are stored as the manifest's serialisation of `EdgeSpec`: this body,
    /// written once, must keep reading the same (a change to those types that breaks it
    /// needs a new format instead).
    const EDGE: &str = r#"{"auth":{"keys":{"type":"api-key","header":"x-api-key","keys_sha256":["ab"],"keys_env":null},"users":{"type":"jwt","keys":{"jwks_url":"http://127.0.0.1:1/jwks"},"issuer":"https://issuer","audience":["api"],"leeway_s":5,"required_claims":["sub"],"algorithms":["RS256"],"forward_claims":{"sub":"x-user-id"}}},"cors":{"web":{"origins":["*"],"methods":["GET"],"headers":[],"expose":[],"credentials":false,"max_age_s":600}},"redirects":[{"source":"/a","destination":"/b","status":308}],"rewrites":[{"source":"/r/*","destination":"/s/*"}],"headers":[{"source":"/*","headers":[["x-frame-options","DENY"]]}]}"#;

    #[test]
    fn edge_format_is_frozen_and_route_policies_round_trip() {
        let mut c = decode(0, OLDEST).unwrap();
        assert!(c.edge.is_empty(), "rows written before the edge layer have none");
        assert!(!encode(&c).unwrap().contains("edge"), "an app without policies is stored as before");
        c.edge = serde_json::from_str(EDGE).unwrap();
        c.routes[0].auth = Some("users".into());
        c.routes[0].cors = Some("routes[0]".into());
        let body = encode(&c).unwrap();
        assert!(body.contains(&format!("\"edge\":{EDGE}")), "{body}");
        assert!(body.contains("\"auth\":\"users\",\"cors\":\"routes[0]\""), "{body}");
        assert_eq!(decode(2, &body).unwrap(), c);
    }

    #[test]
    fn format_2_keeps_the_sandbox_keys() {
        let mut c = decode(0, OLDEST).unwrap();
        c.functions[0].0.ephemeral_storage_mb = 2048;
        c.functions[0].0.grants.functions = vec!["audit".into()];
        let body = encode(&c).unwrap();
        assert!(
            body.contains("\"ephemeral_storage_mb\":2048") && body.contains("\"grants\":{\"functions\":[\"audit\"]}")
        );
        assert_eq!(decode(2, &body).unwrap(), c);
    }

    #[test]
    fn static_files_round_trip_and_rows_without_them_read_as_none() {
        let mut c = decode(0, OLDEST).unwrap();
        assert_eq!(c.assets, None, "rows written before [static] read as none");
        assert!(!encode(&c).unwrap().contains("assets"));
        let file = |path: &str| AssetFile {
            path: path.into(),
            digest: "ab".repeat(32),
            size: 12,
            mtime: 1_700_000_000,
            content_type: "text/html; charset=utf-8".into(),
        };
        c.assets = Some(AssetManifest {
            spa_fallback: Some("index.html".into()),
            files: vec![file("index.html"), file("a/b.js")],
        });
        let body = encode(&c).unwrap();
        assert!(body.contains("\"spa_fallback\":\"index.html\""), "{body}");
        assert_eq!(decode(2, &body).unwrap(), c);
    }

    #[test]
    fn route_policies_round_trip_and_stay_out_of_bodies_without_them() {
        let mut c = decode(0, OLDEST).unwrap();
        assert_eq!((c.routes[0].rate_limit.clone(), c.routes[0].cache), (None, false), "older rows have none");
        let plain = encode(&c).unwrap();
        assert!(!plain.contains("rate_limit") && !plain.contains("\"cache\""), "{plain}");
        c.routes[0].rate_limit = Some(RateLimitSpec {
            name: "api".into(),
            requests: 100,
            per: Duration::from_secs(60),
            key: LimitKey::Claim("sub".into()),
        });
        c.routes[0].cache = true;
        let body = encode(&c).unwrap();
        assert!(
            body.contains("\"rate_limit\":{\"name\":\"api\",\"requests\":100,\"per\":60,\"key\":\"claim:sub\"}"),
            "{body}"
        );
        assert!(body.contains("\"cache\":true"), "{body}");
        assert!(!body.contains("cache_profile"), "{body}");
        assert_eq!(decode(2, &body).unwrap(), c);
    }

    #[test]
    fn cache_profiles_round_trip_and_older_rows_have_none() {
        let mut c = decode(0, OLDEST).unwrap();
        assert_eq!(c.routes[0].cache_profile, None, "older rows have none");
        let profile = |query| CacheProfile {
            name: "pages".into(),
            ttl: Some(Duration::from_secs(300)),
            stale_while_revalidate: Some(Duration::from_secs(60)),
            stale_if_error: None,
            vary: vec!["accept-language".into()],
            query,
            tags: vec!["pages".into()],
        };
        c.routes[0].cache = true;
        for query in [CacheQuery::All, CacheQuery::Ignore, CacheQuery::Only(vec!["page".into(), "q".into()])] {
            c.routes[0].cache_profile = Some(profile(query));
            let body = encode(&c).unwrap();
            assert!(body.contains("\"cache_profile\":{\"name\":\"pages\",\"ttl\":300"), "{body}");
            assert_eq!(decode(2, &body).unwrap(), c);
        }
        c.routes[0].cache_profile = Some(CacheProfile { name: "bare".into(), ..CacheProfile::default() });
        let body = encode(&c).unwrap();
        assert!(body.contains("\"cache_profile\":{\"name\":\"bare\"}"), "only what is set is written: {body}");
        assert_eq!(decode(2, &body).unwrap(), c);
    }

    #[test]
    fn concurrency_round_trips_and_rows_without_it_read_as_one() {
        let mut c = decode(0, OLDEST).unwrap();
        assert_eq!(c.functions[0].0.concurrency, 1, "rows written before the key read as 1");
        let plain = encode(&c).unwrap();
        assert!(!plain.contains("concurrency"), "the default is not written: {plain}");
        c.functions[0].0.concurrency = 100;
        let body = encode(&c).unwrap();
        assert!(body.contains("\"concurrency\":100"), "{body}");
        assert_eq!(decode(2, &body).unwrap(), c);
    }

    #[test]
    fn storage_declarations_and_grants_round_trip_and_stay_out_of_bodies_without_them() {
        let mut c = decode(0, OLDEST).unwrap();
        let plain = encode(&c).unwrap();
        assert!(!plain.contains("buckets") && !plain.contains("\"kv\""), "{plain}");
        c.buckets.insert("images".into());
        c.kv.insert("sessions".into());
        c.functions[0].0.grants.buckets.insert("images".into(), Access::Read);
        c.functions[0].0.grants.kv.insert("sessions".into(), Access::ReadWrite);
        let body = encode(&c).unwrap();
        assert!(body.contains("\"buckets\":{\"images\":\"read\"}") && body.contains("\"buckets\":[\"images\"]"));
        assert_eq!(decode(2, &body).unwrap(), c);
        let bad = body.replace("\"read-write\"", "\"everything\"");
        let e = decode(2, &bad).unwrap_err().to_string();
        assert!(e.contains("unknown access \"everything\""), "{e}");
    }

    #[test]
    fn queues_triggers_and_queue_grants_round_trip_and_older_bodies_read_without_them() {
        let mut c = decode(0, OLDEST).unwrap();
        let plain = encode(&c).unwrap();
        assert!(!plain.contains("queues") && !plain.contains("triggers"), "{plain}");
        // A format-2 body from before queues (the storage test's shape) reads as no queues.
        let before = decode(2, &plain).unwrap();
        assert!(before.queues.is_empty() && before.triggers.is_empty());
        let redrive = Redrive { dead_letter_queue: "dead".into(), max_receive_count: 5 };
        let orders = QueueSpec { delay: Duration::from_secs(3), redrive: Some(redrive), ..QueueSpec::default() };
        c.queues.insert("orders".into(), orders);
        c.queues.insert("dead".into(), QueueSpec::default());
        c.triggers.push(TriggerSpec {
            function: "hello".into(),
            source: TriggerSource::Queue(QueueTrigger {
                queue: "orders".into(),
                batch_size: 100,
                batch_window: Duration::from_millis(1500),
                max_concurrency: Some(4),
                report_batch_item_failures: true,
            }),
        });
        c.triggers.push(TriggerSpec {
            function: "hello".into(),
            source: TriggerSource::Bucket(BucketTrigger {
                bucket: "images".into(),
                events: vec!["s3:ObjectCreated:*".into()],
                prefix: Some("in/".into()),
                suffix: None,
            }),
        });
        c.functions[0].0.grants.queues.insert("orders".into(), QueueAccess::SendReceive);
        let body = encode(&c).unwrap();
        assert!(body.contains("\"queues\":{\"orders\":\"send-receive\"}"), "{body}");
        assert!(body.contains("\"function\":\"hello\",\"queue\":{\"queue\":\"orders\""), "{body}");
        assert_eq!(decode(2, &body).unwrap(), c);
        let bad = body.replace("\"send-receive\"", "\"everything\"");
        let e = decode(2, &bad).unwrap_err().to_string();
        assert!(e.contains("unknown queue access \"everything\""), "{e}");
    }

    #[test]
    fn an_adaptive_keep_alive_round_trips_and_older_rows_read_as_fixed() {
        let mut c = decode(0, OLDEST).unwrap();
        assert_eq!(c.functions[0].0.keep_alive_policy, nimbus_core::KeepAlivePolicy::Fixed);
        assert!(!encode(&c).unwrap().contains("keep_alive_policy"), "fixed is the absent key");
        c.functions[0].0.keep_alive_policy = nimbus_core::KeepAlivePolicy::Adaptive;
        let body = encode(&c).unwrap();
        assert!(body.contains("\"keep_alive_policy\":\"adaptive\""), "{body}");
        assert_eq!(decode(2, &body).unwrap(), c);
        let e = decode(2, &body.replace("\"adaptive\"", "\"psychic\"")).unwrap_err().to_string();
        assert!(e.contains("unknown keep-alive policy \"psychic\""), "{e}");
    }

    #[test]
    fn unreadable_bodies_say_why() {
        let e = decode(3, "{}").unwrap_err().to_string();
        assert!(e.contains("storage format 3") && e.contains("upgrade nimbus"), "{e}");
        let e = decode(1, "{").unwrap_err().to_string();
        assert!(e.contains("not valid format-1 JSON"), "{e}");
        let bad = OLDEST.replace("\"node\"", "\"cobol\"");
        let e = decode(1, &bad).unwrap_err().to_string();
        assert!(e.contains("unknown runtime \"cobol\""), "{e}");
    }

    #[test]
    fn storage_prices_are_stored_only_when_set_and_read_back_as_set() {
        let default = serde_json::to_string(&StoredPricingV1::from(&Pricing::default())).unwrap();
        assert!(!default.contains("storage"), "a body without storage prices is as before: {default}");
        let p = Pricing { per_million_class_a: 4.5, per_gb_transfer_out: 0.09, ..Pricing::default() };
        let body = serde_json::to_string(&StoredPricingV1::from(&p)).unwrap();
        let back: StoredPricingV1 = serde_json::from_str(&body).unwrap();
        assert_eq!(Pricing::from(back), p);
    }
}
