//! The management API's wire format (`/v1`): every request and response body, defined once.
//! The server (nimbus-gateway's `mgmt.rs`) builds these from its domain types and the CLI
//! (`nimbus` client commands) reads them, so the two cannot drift apart. Field names are the
//! JSON names clients (the CLI, the dashboard, scripts) rely on: camelCase, except where a
//! field's documented name says otherwise. Adding a field is compatible; renaming one is not.
//!
//! | method and path | request | response | scope |
//! |---|---|---|---|
//! | `GET /v1/app` | – | [`AppInfo`] | read |
//! | `POST /v1/deployments?canary=&for=&maxErrorRate=&maxP99=` | a tar of the app directory | 201 [`Deployed`], 400 [`ErrorBody`] with `errors` | deploy |
//! | `GET /v1/deployments` | – | [`DeploymentSummary`]s, newest first | read |
//! | `POST /v1/rollback` | [`RollbackRequest`] | [`Deployed`] | deploy |
//! | `GET /v1/functions` | – | [`FunctionInfo`]s | read |
//! | `GET /v1/functions/{name}/logs?after=&cursor=&requestId=&limit=` | – | [`LogPage`] | read |
//! | `GET /v1/invocations?function=&requestId=&limit=` | – | [`Invocation`]s, newest first | read |
//! | `GET /v1/invocations?status=S&function=&limit=` | – | [`Event`]s | read |
//! | `GET /v1/invocations/{id}` | – | an [`Event`] (async), else an [`Invocation`] | read |
//! | `GET /v1/dlq`, `GET /v1/dlq/{id}` | – | [`Event`]s, an [`Event`] | read |
//! | `POST /v1/dlq/redrive` | [`RedriveRequest`] | [`Redriven`] | admin |
//! | `POST /v1/dlq/purge` | [`PurgeRequest`] | [`Purged`] | admin |
//! | `GET /v1/queue` | – | [`QueueInfo`] | read |
//! | `GET /v1/usage?since=&granularity=&servers=&serverPerHour=` | – | [`UsageReport`] (functions, and storage per bucket and KV namespace) | read |
//! | `GET /v1/stats?function=&window=&buckets=&until=` | – | [`StatsReport`] | read |
//! | `GET /v1/info` | – | [`Info`] | read |
//! | `POST /v1/tokens` | [`TokenRequest`] | 201 [`CreatedToken`] (the secret, this once) | admin |
//! | `GET /v1/tokens` | – | [`TokenInfo`]s, oldest first (never a secret) | admin |
//! | `DELETE /v1/tokens/{id}` | – | the revoked [`TokenInfo`] | admin |
//! | `POST /v1/keys` | [`AccessKeyRequest`] | 201 [`CreatedAccessKey`] (the secret, this once) | admin |
//! | `GET /v1/keys` | – | [`AccessKeyInfo`]s, oldest first, revoked ones too (never a secret) | admin |
//! | `DELETE /v1/keys/{id}` | – | the revoked [`AccessKeyInfo`] | admin |
//! | `GET /v1/audit?since=&limit=&action=` | – | [`AuditEntry`]s, newest first | admin |
//! | `GET /v1/buckets` | – | [`BucketInfo`]s, by name | read |
//! | `DELETE /v1/buckets/{name}?force=true` | – | the deleted [`BucketInfo`] (`force`: with its objects) | admin |
//! | `GET /v1/queues` | – | [`MessageQueueInfo`]s, by name | read |
//! | `GET /v1/queues/{name}` | – | its [`MessageQueueInfo`] | read |
//! | `GET /v1/queues/{name}/messages?limit=` | – | [`QueuedMessage`]s, oldest first (read without receiving) | read |
//! | `POST /v1/queues/{name}/purge` | – | [`QueuePurged`] | admin |
//! | `POST /v1/queues/{name}/redrive?to=` | – | [`QueueRedriven`] (from a dead-letter queue back to the source queues, or to `to`) | admin |
//! | `GET /v1/kv` | – | [`KvNamespace`]s, by name | read |
//! | `GET /v1/kv/{name}?prefix=&cursor=&limit=` | – | [`KvKeys`] | read |
//! | `DELETE /v1/kv/{name}` | – | [`KvDeleted`] (the namespace and every key in it) | admin |
//! | `GET /v1/kv/{name}/{key}` | – | the raw value; `x-nimbus-kv-version`, `x-nimbus-kv-expires` (Unix ms) | read |
//! | `PUT /v1/kv/{name}/{key}?ttl=&ifVersion=` | the raw value | [`KvWritten`]; 409 [`ErrorBody`] `VersionConflict` | deploy |
//! | `POST /v1/kv/{name}/{key}?increment=&ttl=` | – | [`KvIncremented`] | deploy |
//! | `DELETE /v1/kv/{name}/{key}` | – | [`KvDeleted`] | deploy |
//! | `GET /v1/aliases/{name}/traffic` | – | [`TrafficInfo`] | read |
//! | `PUT /v1/aliases/{name}/traffic` | [`TrafficRequest`] | [`TrafficInfo`] | deploy |
//! | `POST /2015-03-31/functions/{name}/invocations` (the Invoke API, beside /v1) | the event | Lambda's answer | invoke |
//! | `POST /v1/cache/purge` | [`CachePurgeRequest`] | [`CachePurged`] | deploy |
//! | `GET /v1/nodes` | – | [`NodeInfo`]s, by name (one alone without `--cluster`) | read |
//!
//! In a cluster (`nimbus up --cluster`) the invocation records, logs, usage and stats rows
//! (`/v1/invocations`, `…/logs`, `/v1/usage`, `/v1/stats`) are asked of every live node and
//! merged: each record and log entry says its `node`, limits apply after the merge, and the
//! nodes that did not answer in time are listed in the `x-nimbus-missing-nodes` header (and
//! in `missingNodes` of a [`LogPage`], [`UsageReport`] or [`StatsReport`]) — a partial answer,
//! not an error.
//!
//! Credentials: `Authorization: Bearer <token>` — `DATA_DIR/admin.token` (scope admin) or a
//! token from `POST /v1/tokens` — or the dashboard's session cookie (admin). Scopes: `admin`
//! may do everything; `deploy` what `deploy` and `read` rows allow; `read` the `read` rows;
//! `invoke` only the Invoke API (only the functions the token names, when it names any; a
//! deploy token that names functions may deploy or roll back only changes to them). The
//! Invoke API needs no credential when nimbus listens on loopback only (unless `nimbus up
//! --invoke-auth token`). No credential, or an unknown, revoked or expired one, is a 401 (with
//! no credential at all the Invoke API answers 403 `AccessDeniedException`, as Lambda does); a
//! credential whose scope does not allow the call is a 403 whose `error` names the scope
//! needed. The gateway's endpoint table
//! (`nimbus-gateway/src/scopes.rs`) is the source of this column, and a test holds the two
//! together.
//!
//! Every error is an [`ErrorBody`].
//!
//! KV keys travel as one path segment, percent-encoded (a `/` in a key is `%2F`). `ttl` is whole
//! seconds (at least 1); `ifVersion` makes the PUT a compare-and-swap (`0`: only if the key is
//! absent); `increment` adds a whole number (default 1) to a decimal value. The same calls, with
//! the same bodies, are what process functions reach at `/nimbus/v1/kv/…` on their instance
//! endpoint (within their grants; see docs/kv.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Any failed call: `error` is a sentence for a person; a refused manifest also lists each
/// problem in `errors`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    /// What went wrong, for programs: set by the KV calls (`NoSuchKey`, `NoSuchNamespace`,
    /// `VersionConflict`, `NotANumber`, `AccessDenied`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `GET /v1/app`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub app: Option<String>,
    pub live: Option<u64>,
    pub deployments: Vec<DeploymentSummary>,
}

/// One stored deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSummary {
    pub version: u64,
    pub app: String,
    pub created_ms: u64,
    pub live: bool,
    /// Sorted.
    pub functions: Vec<String>,
}

/// The answer to a deploy or rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub version: u64,
    pub app: String,
    /// False when nothing changed.
    pub changed: bool,
    pub functions: Vec<String>,
    pub routes: Vec<Route>,
    /// What the deployer should know (storage an earlier deployment declared and this one
    /// dropped: kept, and how to delete it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The domain preview hosts are under (`nimbus up --preview-domain`): deployment N is
    /// served at `vN.DOMAIN`.
    #[serde(default, rename = "previewDomain", skip_serializing_if = "Option::is_none")]
    pub preview_domain: Option<String>,
}

/// `PUT /v1/aliases/{name}/traffic`: each version's share in percent, summing to 100
/// (`{"weights": {"7": 90, "8": 10}}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficRequest {
    pub weights: std::collections::BTreeMap<String, u32>,
}

/// How an alias splits its traffic (`GET`/`PUT /v1/aliases/{name}/traffic`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficInfo {
    pub alias: String,
    /// Version (as text) → percent, summing to 100.
    pub weights: std::collections::BTreeMap<String, u32>,
    /// The running canary, when there is one.
    pub canary: Option<CanaryInfo>,
    /// How the last canary ended.
    pub last_canary: Option<CanaryEnd>,
}

/// A running canary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryInfo {
    pub old_version: u64,
    pub new_version: u64,
    /// The new version's share now, in percent.
    pub percent: u32,
    pub started_ms: u64,
    pub window_ms: u64,
    /// 0 to 1.
    pub max_error_rate: f64,
    pub max_p99_ms: Option<u64>,
}

/// How a canary ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryEnd {
    pub old_version: u64,
    pub new_version: u64,
    /// True: the new version got all the traffic; false: rolled back to the old one.
    pub promoted: bool,
    pub reason: String,
    pub at_ms: u64,
}

/// A KV namespace (`GET /v1/kv`); `keys` and `bytes` count unexpired keys (key and value bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvNamespace {
    pub name: String,
    pub keys: u64,
    pub bytes: u64,
    pub created_ms: u64,
}

/// A page of keys (`GET /v1/kv/{name}`), in byte order; pass `cursor` back for the next page
/// (`null`: no more).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKeys {
    pub keys: Vec<KvKey>,
    pub cursor: Option<String>,
}

/// A key in a [`KvKeys`] page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvKey {
    pub name: String,
    /// When it expires (Unix ms), if it has a TTL.
    pub expires_ms: Option<u64>,
}

/// A value written (`PUT /v1/kv/{name}/{key}`): its new version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWritten {
    pub version: u64,
}

/// A counter incremented (`POST /v1/kv/{name}/{key}?increment=`): its new value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvIncremented {
    pub value: i64,
}

/// A key or namespace deleted: whether it existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDeleted {
    pub deleted: bool,
}

/// A route of a deployment (its fields keep the names the manifest uses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub methods: Methods,
    pub path: String,
    pub host: Option<String>,
    pub function: String,
    pub is_async: bool,
}

/// `"any"`, or `{"list": ["GET", …]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Methods {
    Any,
    List(Vec<String>),
}

/// `POST /v1/rollback`: a version, or none for the one before live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    #[serde(default)]
    pub version: Option<u64>,
}

/// A function of the live deployment, with its instance pools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionInfo {
    pub name: String,
    /// "node" | "python" | "provided" | "wasm"
    pub runtime: String,
    pub handler: String,
    pub version: String,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub min_instances: u32,
    pub max_instances: u32,
    pub keep_alive_ms: u64,
    pub code_digest: String,
    /// Route keys, e.g. `GET /hello/{name}`.
    pub routes: Vec<String>,
    pub pools: Vec<Pool>,
}

/// The instances of one function version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub function: String,
    pub version: String,
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    pub waiting: u32,
    pub max_instances: u32,
    pub cold_starts: u64,
    /// A sandbox is prepared for the next cold start (process functions; absent from older
    /// servers, read as false).
    #[serde(default)]
    pub prepared_sandbox: bool,
    pub instances: Vec<InstanceInfo>,
    /// The adaptive keep-alive's current windows (`keep_alive = "adaptive"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_keep_alive: Option<AdaptiveKeepAlive>,
    /// Invocations running now over all instances (absent from older servers: read as 0).
    #[serde(default)]
    pub in_flight: u32,
    /// The function's `concurrency`: invocations one instance runs at once (older servers: 1).
    #[serde(default = "one")]
    pub concurrency: u32,
}

/// The windows the adaptive keep-alive applies now to one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdaptiveKeepAlive {
    /// Idle instances stop this long after the function's last call.
    pub keep_alive_ms: u64,
    /// An instance is started this long after the last call (0: the instance stays loaded).
    pub prewarm_ms: u64,
    /// Whether the windows come from the idle-time histogram (false: the fixed fallback).
    pub representative: bool,
    /// Idle gaps recorded so far.
    pub samples: u64,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub pid: Option<u32>,
    pub state: InstanceState,
    /// Invocations running on it now (absent from older servers: read as 0).
    #[serde(default, rename = "inFlight")]
    pub in_flight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Idle,
    Busy,
}

/// `GET /v1/functions/{name}/logs`: entries oldest first; `next` is the `after` for the next page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    pub next: u64,
    /// In a cluster: where each node's entries continue (`NODE:SEQ,…`); pass it back as
    /// `cursor` for the next page (it replaces `after`, which is one node's sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// In a cluster: the nodes that did not answer in time (their entries are missing).
    #[serde(default, rename = "missingNodes", skip_serializing_if = "Vec::is_empty")]
    pub missing_nodes: Vec<String>,
}

/// One invocation's log text (START … REPORT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub seq: u64,
    pub request_id: String,
    pub ts_ms: u64,
    pub text: String,
    /// In a cluster: the node that ran the invocation (and holds its log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One invocation record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub request_id: String,
    pub function: String,
    pub version: String,
    /// http | invoke | event | schedule
    pub trigger: String,
    pub start_ms: u64,
    pub duration_ms: f64,
    pub billed_ms: u64,
    pub memory_mb: u32,
    pub max_memory_mb: u32,
    pub cold: bool,
    /// On a cold start: the whole start (`Init Duration`) and its two phases.
    pub init_ms: Option<f64>,
    pub instance_start_ms: Option<f64>,
    pub runtime_init_ms: Option<f64>,
    pub queue_ms: f64,
    /// The handler's own time (the same as `durationMs`).
    pub handler_ms: f64,
    /// success | function_error | timeout | crashed | init_error | throttled | platform_error
    pub status: String,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub instance_id: Option<String>,
    /// Streamed responses: time to the end of the response; `durationMs` is then the whole
    /// invocation, work after the response (`waitUntil`) included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_ms: Option<f64>,
    /// In a cluster: the node that ran the invocation (and holds its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// An async event: where it is in its lifecycle, and every attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub request_id: String,
    pub function: String,
    pub qualifier: Option<String>,
    /// invoke | http | schedule | destination
    pub source: String,
    /// queued | running | succeeded | failed | dead-lettered
    pub status: String,
    pub attempts: u32,
    pub accepted_ms: u64,
    pub updated_ms: u64,
    pub next_run_ms: Option<u64>,
    pub last_error_type: Option<String>,
    pub last_error: Option<String>,
    pub reason: Option<String>,
    pub payload: Value,
    pub result: Option<Value>,
    pub history: Vec<Attempt>,
}

/// One attempt of an async event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub n: u32,
    pub started_ms: u64,
    pub duration_ms: f64,
    /// success | function_error | platform_error | throttled | not_found
    pub outcome: String,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
}

/// `POST /v1/dlq/redrive`: the events named, or all (of one function) with `all`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveRequest {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub function: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: u64,
}

/// `POST /v1/dlq/purge`: every dead-lettered event, or one function's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRequest {
    #[serde(default)]
    pub function: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub purged: u64,
}

/// `POST /v1/cache/purge`: the response cache's entries whose path starts with `prefix`, or
/// whose `Cache-Tag` lists `tag` (both given: either; at least one is needed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePurgeRequest {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePurged {
    pub purged: u64,
}

/// One bucket of `GET /v1/buckets` (object storage; `DELETE /v1/buckets/{name}` answers with
/// the bucket it deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketInfo {
    pub name: String,
    pub objects: u64,
    pub bytes: u64,
    pub created_ms: u64,
}

/// `GET /v1/queue`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// Unfinished async events.
    pub depth: u64,
    /// Events that were running when nimbus last stopped, queued again at start.
    pub recovered_at_start: u64,
}

/// A live node (`GET /v1/nodes`): each node of a cluster, or the one node without `--cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Unique in the cluster (`nimbus up --node-name`).
    pub name: String,
    /// Its gateway's URL (empty while it starts).
    pub url: String,
    /// The nimbus version it runs.
    pub version: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// Invocations running on it now.
    pub in_flight: u32,
    /// Its host's one-minute load average, where the OS tells.
    pub load_average: Option<f64>,
    /// Instances started and not reclaimed (idle or busy), over every function.
    pub warm_instances: u32,
    /// When the answering node last heard from it (Unix ms).
    pub last_seen_ms: u64,
}

/// A message queue (`GET /v1/queues`): its settings and what it holds now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueueInfo {
    pub name: String,
    pub arn: String,
    pub fifo: bool,
    pub visibility_timeout_ms: u64,
    pub retention_ms: u64,
    pub delay_ms: u64,
    /// Where messages go after `maxReceiveCount` receives, when the queue has a redrive policy.
    pub dead_letter_queue: Option<String>,
    pub max_receive_count: Option<u32>,
    /// Receivable now.
    pub visible: u64,
    /// Received and not yet deleted.
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    pub delayed: u64,
    /// Age of the oldest message, in milliseconds (`null`: empty).
    pub oldest_age_ms: Option<u64>,
    /// Since nimbus started: sent, received (each delivery), deleted, moved to the dead-letter
    /// queue.
    pub sent: u64,
    pub received: u64,
    pub deleted: u64,
    pub dead_lettered: u64,
    pub created_ms: u64,
}

/// A message as `GET /v1/queues/{name}/messages` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedMessage {
    pub message_id: String,
    pub body: String,
    pub sent_ms: u64,
    pub receive_count: u32,
    /// Received and hidden until its visibility timeout passes.
    pub in_flight: bool,
    pub group_id: Option<String>,
    /// In a dead-letter queue: the queue the message came from.
    pub source_queue: Option<String>,
}

/// `POST /v1/queues/{name}/purge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuePurged {
    pub queue: String,
    pub purged: u64,
}

/// `POST /v1/queues/{name}/redrive`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueRedriven {
    pub queue: String,
    pub moved: u64,
}

/// `GET /v1/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub since_ms: u64,
    pub until_ms: u64,
    /// "hour" | "day"
    pub granularity: String,
    pub prices: Prices,
    pub functions: Vec<FunctionUsage>,
    pub buckets: Vec<UsageBucket>,
    /// Functions only (requests and compute); storage has its own total.
    pub total: UsageTotal,
    pub always_on: AlwaysOn,
    /// Object storage buckets and KV namespaces: requests, bytes and GB-months in the window,
    /// priced, with what each holds now. Absent from older servers.
    #[serde(default)]
    pub storage: Vec<StorageUsage>,
    #[serde(default)]
    pub storage_total: StorageTotal,
    /// In a cluster: the nodes that did not answer in time (their use is missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_nodes: Vec<String>,
}

/// One bucket's or KV namespace's use over the report's window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageUsage {
    /// "bucket" | "kv"
    pub kind: String,
    pub name: String,
    /// Objects (or keys) stored now.
    pub objects: u64,
    /// Bytes stored now.
    pub bytes: u64,
    /// Bytes stored × time in the window: GB (10⁹ bytes) held for a month (730 h).
    pub gb_months: f64,
    /// Buckets: S3 class A requests (PUT, COPY, POST, LIST, multipart). KV: 0.
    pub class_a: u64,
    /// Buckets: S3 class B requests (GET, HEAD). KV: 0.
    pub class_b: u64,
    /// Reads, writes, deletes and lists as counted (deletes are free on S3).
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
    pub lists: u64,
    /// Object or value bytes received and sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub storage_cost: f64,
    pub request_cost: f64,
    pub transfer_cost: f64,
    pub cost: f64,
}

/// The storage sums.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageTotal {
    pub gb_months: f64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cost: f64,
}

/// What usage is priced at (the live deployment's `[pricing]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    pub currency: String,
    pub per_million_requests: f64,
    pub per_gb_second: f64,
    pub server_per_hour: f64,
    pub servers: u32,
    /// The storage prices (`[pricing]`); 0 from older servers.
    #[serde(default)]
    pub per_gb_month_stored: f64,
    #[serde(default)]
    pub per_million_class_a: f64,
    #[serde(default)]
    pub per_million_class_b: f64,
    #[serde(default)]
    pub per_gb_transfer_out: f64,
    #[serde(default)]
    pub per_million_kv_reads: f64,
    #[serde(default)]
    pub per_million_kv_writes: f64,
    #[serde(default)]
    pub per_gb_month_kv: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionUsage {
    pub function: String,
    pub requests: u64,
    /// GB-seconds billed: per invocation, or for a function with `concurrency > 1` per
    /// instance-second busy (any invocation running).
    pub gb_seconds: f64,
    pub request_cost: f64,
    pub compute_cost: f64,
    pub cost: f64,
    /// GB-seconds summed per invocation (what one instance per invocation would bill); above
    /// `gb_seconds` when invocations shared instances. Older servers: absent, read as 0.
    #[serde(default)]
    pub invocation_gb_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageBucket {
    pub start_ms: u64,
    pub function: String,
    pub requests: u64,
    pub gb_seconds: f64,
    pub cost: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotal {
    pub requests: u64,
    pub gb_seconds: f64,
    pub cost: f64,
    /// GB-seconds summed per invocation (see [`FunctionUsage::invocation_gb_seconds`]).
    #[serde(default)]
    pub invocation_gb_seconds: f64,
}

/// What always-on servers would have cost over the same period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlwaysOn {
    pub servers: u32,
    pub server_per_hour: f64,
    pub hours: f64,
    pub cost: f64,
}

/// `GET /v1/info`: what this nimbus is and how it isolates functions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub sandbox: SandboxInfo,
    /// How `memory_mb` is held for process runtimes (e.g. "cgroup-v1", "cgroup-v2", "rlimit").
    pub memory_limits: String,
    /// Things an operator should know (e.g. that functions run unsandboxed).
    pub warnings: Vec<String>,
}

/// How process functions are isolated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    /// False only with `--insecure-no-sandbox`.
    pub enabled: bool,
    /// "privileged" (nimbus is root; no user namespace) | "user-namespace" (rootless) | "off".
    pub mode: String,
    /// The host uid functions run as (`None` when unsandboxed: nimbus's own).
    pub host_uid: Option<u32>,
}

/// `GET /v1/stats`: per time bucket, and over the whole window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    pub function: Option<String>,
    pub since_ms: u64,
    pub until_ms: u64,
    pub bucket_ms: u64,
    pub buckets: Vec<StatsBucket>,
    pub total: StatsBucket,
    /// The window as asked for ("1h").
    pub window: String,
    /// In a cluster: the nodes that did not answer in time (their invocations are missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_nodes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsBucket {
    pub start_ms: u64,
    pub invocations: u64,
    pub errors: u64,
    pub throttled: u64,
    pub cold: u64,
    pub cold_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// `POST /v1/tokens`: the new token's `scope` (admin, deploy, invoke or read), for an invoke
/// token optionally the `functions` it may invoke and for a deploy token the `functions` its
/// deploys and rollbacks may change (none: every function), when it expires
/// (`expiresIn`, a duration like "30d", or `expires`, an RFC 3339 time; neither: never), and a
/// `name` saying whose or what for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub functions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /v1/tokens` → 201: the secret, shown this once (nimbus keeps only its SHA-256), the
/// token as listed, and warnings (a function not deployed yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub secret: String,
    pub token: TokenInfo,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A token as `GET /v1/tokens` lists it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// `tok_…`: names the token in listings, revocations and the audit log; grants nothing.
    pub id: String,
    pub name: Option<String>,
    /// admin | deploy | invoke | read
    pub scope: String,
    /// Invoke tokens: the functions it may invoke; deploy tokens: the functions a deploy or
    /// rollback may change, nothing else changing (empty: no limit).
    pub functions: Vec<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub expired: bool,
    pub revoked_ms: Option<u64>,
    /// The last request it authenticated since the server started (kept in memory only).
    pub last_used_ms: Option<u64>,
}

/// `POST /v1/keys`: a managed AWS access key for the AWS port. `name` (required) says whose or
/// what for; `buckets` and `kv` map names to `"read"`, `"write"` or `"read-write"` (as the
/// manifest's grants do), `functions` are what the key may call through the Invoke API; at least
/// one grant. `expiresIn` (a duration like "30d") or `expires` (an RFC 3339 time), not both;
/// neither: never.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub buckets: BTreeMap<String, String>,
    #[serde(default)]
    pub kv: BTreeMap<String, String>,
    #[serde(default)]
    pub functions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// `POST /v1/keys` → 201: the key pair, the secret shown this once (`GET /v1/keys` never shows
/// it), the key as listed, and warnings (a bucket or function no deployment declares yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedAccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub key: AccessKeyInfo,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A managed access key as `GET /v1/keys` lists it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyInfo {
    /// `NIMK…`: the access key id clients send.
    pub id: String,
    pub name: String,
    /// Bucket → "read" | "write" | "read-write".
    pub buckets: BTreeMap<String, String>,
    /// KV namespace → "read" | "write" | "read-write".
    pub kv: BTreeMap<String, String>,
    /// Functions it may call through the Invoke API on the AWS port.
    pub functions: Vec<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    /// "active", "expired" or "revoked".
    pub state: String,
}

/// One entry of the audit log (`GET /v1/audit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub ts_ms: u64,
    /// deploy | rollback | dlq.redrive | dlq.purge | token.create | token.revoke | key.create |
    /// key.revoke | login | auth.failed | auth.denied | kv.delete-namespace | bucket.delete |
    /// queue.purge | queue.redrive | traffic | canary | cache.purge
    pub action: String,
    /// What it was done to: "version 3", a token id, "POST /v1/deployments", "dashboard login".
    pub target: String,
    /// "ok" or "error".
    pub outcome: String,
    pub error: Option<String>,
    /// `admin.token`, a token's name (or id), `dashboard session`, `nimbus up`, `anonymous`,
    /// `unknown token`.
    pub actor: String,
    pub token_id: Option<String>,
    /// The client's IP address (`local` for `nimbus up` itself).
    pub source: String,
    /// 1, or how many refused requests from one address this entry stands for (they are
    /// coalesced per second).
    pub count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON names clients rely on, pinned: a rename here breaks the CLI of an older
    /// release, the dashboard and users' scripts.
    #[test]
    fn field_names_are_the_documented_ones() {
        let d = Deployed {
            version: 3,
            app: "shop".into(),
            changed: true,
            functions: vec!["a".into()],
            routes: vec![Route {
                methods: Methods::List(vec!["GET".into()]),
                path: "/a".into(),
                host: None,
                function: "a".into(),
                is_async: false,
            }],
            notes: vec![],
            preview_domain: None,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"version":3,"app":"shop","changed":true,"functions":["a"],"routes":[{"methods":{"list":["GET"]},"path":"/a","host":null,"function":"a","is_async":false}]}"#
        );
        let q = QueueInfo { depth: 1, recovered_at_start: 2 };
        assert_eq!(serde_json::to_string(&q).unwrap(), r#"{"depth":1,"recoveredAtStart":2}"#);
        let e = ErrorBody { error: "x".into(), errors: None, code: None };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"error":"x"}"#);
        let i = InstanceInfo { id: "i".into(), pid: Some(7), state: InstanceState::Busy, in_flight: 3 };
        assert_eq!(serde_json::to_string(&i).unwrap(), r#"{"id":"i","pid":7,"state":"busy","inFlight":3}"#);
        let old: InstanceInfo = serde_json::from_str(r#"{"id":"i","pid":7,"state":"busy"}"#).unwrap();
        assert_eq!(old.in_flight, 0, "an older server's answer still reads");
    }

    #[test]
    fn request_bodies_take_what_older_clients_send() {
        let r: RollbackRequest = serde_json::from_str(r#"{"version":null}"#).unwrap();
        assert_eq!(r.version, None);
        let r: RedriveRequest = serde_json::from_str(r#"{"ids":["a"],"all":false,"function":null}"#).unwrap();
        assert_eq!(r.ids, ["a"]);
        let p: PurgeRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(p.function, None);
        let t: TokenRequest = serde_json::from_str(r#"{"scope":"invoke","expiresIn":"30d"}"#).unwrap();
        assert_eq!((t.scope.as_str(), t.expires_in.as_deref(), t.functions.len()), ("invoke", Some("30d"), 0));
    }

    #[test]
    fn token_and_audit_field_names() {
        let t = TokenInfo {
            id: "tok_1".into(),
            name: None,
            scope: "read".into(),
            functions: vec![],
            created_ms: 1,
            expires_ms: None,
            expired: false,
            revoked_ms: None,
            last_used_ms: Some(2),
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"id":"tok_1","name":null,"scope":"read","functions":[],"createdMs":1,"expiresMs":null,"expired":false,"revokedMs":null,"lastUsedMs":2}"#
        );
        let r = TokenRequest { scope: "read".into(), ..Default::default() };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"scope":"read","functions":[]}"#);
        let a = AuditEntry {
            ts_ms: 1,
            action: "deploy".into(),
            target: "version 2".into(),
            outcome: "ok".into(),
            error: None,
            actor: "ci".into(),
            token_id: Some("tok_1".into()),
            source: "127.0.0.1".into(),
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"tsMs":1,"action":"deploy","target":"version 2","outcome":"ok","error":null,"actor":"ci","tokenId":"tok_1","source":"127.0.0.1","count":1}"#
        );
    }

    #[test]
    fn access_key_field_names() {
        let k = AccessKeyInfo {
            id: "NIMK1".into(),
            name: "ci".into(),
            buckets: BTreeMap::from([("photos".into(), "read".into())]),
            kv: BTreeMap::new(),
            functions: vec!["f".into()],
            created_ms: 1,
            expires_ms: None,
            revoked_ms: None,
            state: "active".into(),
        };
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            r#"{"id":"NIMK1","name":"ci","buckets":{"photos":"read"},"kv":{},"functions":["f"],"createdMs":1,"expiresMs":null,"revokedMs":null,"state":"active"}"#
        );
        let c =
            CreatedAccessKey { access_key_id: "NIMK1".into(), secret_access_key: "s".into(), key: k, warnings: vec![] };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.starts_with(r#"{"accessKeyId":"NIMK1","secretAccessKey":"s","key":{"#), "{json}");
        let r: AccessKeyRequest =
            serde_json::from_str(r#"{"name":"ci","buckets":{"b":"read"},"expiresIn":"1d"}"#).unwrap();
        assert_eq!((r.name.as_str(), r.buckets.len(), r.kv.len(), r.expires_in.as_deref()), ("ci", 1, 0, Some("1d")));
    }

    #[test]
    fn kv_field_names() {
        let k = KvKeys { keys: vec![KvKey { name: "a".into(), expires_ms: Some(5) }], cursor: None };
        assert_eq!(serde_json::to_string(&k).unwrap(), r#"{"keys":[{"name":"a","expiresMs":5}],"cursor":null}"#);
        let n = KvNamespace { name: "n".into(), keys: 1, bytes: 2, created_ms: 3 };
        assert_eq!(serde_json::to_string(&n).unwrap(), r#"{"name":"n","keys":1,"bytes":2,"createdMs":3}"#);
        let e = ErrorBody { error: "x".into(), errors: None, code: Some("NoSuchKey".into()) };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"error":"x","code":"NoSuchKey"}"#);
        let d: Deployed =
            serde_json::from_str(r#"{"version":1,"app":"a","changed":true,"functions":[],"routes":[]}"#).unwrap();
        assert!(d.notes.is_empty(), "an answer without notes (an older server) reads");
    }
}
