//! What a function is once its manifest entry has been validated and its code stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How instances of a function are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// Node.js with nimbus's bundled Runtime API bootstrap.
    Node,
    /// CPython with nimbus's bundled Runtime API bootstrap.
    Python,
    /// Any executable `bootstrap` in the code directory that speaks the Lambda Runtime API.
    Provided,
    /// A WebAssembly component for the `wasi:http/proxy` world, run in-process with wasmtime.
    Wasm,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 4] =
        [RuntimeKind::Node, RuntimeKind::Python, RuntimeKind::Provided, RuntimeKind::Wasm];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Node => "node",
            RuntimeKind::Python => "python",
            RuntimeKind::Provided => "provided",
            RuntimeKind::Wasm => "wasm",
        }
    }

    /// Whether an invocation runs inside nimbus's own process (on the invoking task) rather
    /// than in another process it waits for.
    pub fn runs_in_nimbus(self) -> bool {
        self == RuntimeKind::Wasm
    }

    pub fn parse(s: &str) -> Option<RuntimeKind> {
        RuntimeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A validated function definition (the manifest entry, with defaults applied). Deployments
/// store it in their own versioned format (nimbus-control's `stored`), never as this type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: RuntimeKind,
    pub handler: String,
    /// Code directory relative to the app root, as written in the manifest.
    pub code: String,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// CPU time one invocation may use, in ms, for every runtime (wasm: time running guest code;
    /// process runtimes: CPU time of the instance's processes); `None` = only `timeout` applies.
    pub cpu_ms: Option<u32>,
    pub env: BTreeMap<String, String>,
    pub min_instances: u32,
    pub max_instances: u32,
    pub keep_alive: Duration,
    /// Requests allowed to wait for an instance when all are busy at `max_instances`.
    pub max_queued: u32,
    /// How long a request may wait for an instance before it is throttled (429).
    pub queue_timeout: Duration,
    /// What happens to async invocations of this function.
    pub async_policy: AsyncPolicy,
    /// Settings only `runtime = "wasm"` uses.
    pub wasm: WasmOptions,
    /// Origins outbound traffic may reach: `scheme://host[:port]`, with `*` for any scheme, any
    /// port, or a leading `*.` for subdomains. `None` is the runtime's default: nothing for wasm,
    /// any public host for process runtimes.
    pub allowed_outbound_hosts: Option<Vec<String>>,
    /// Size of a process instance's private `/tmp`, in MB (512–10,240, as on Lambda).
    pub ephemeral_storage_mb: u32,
    /// What the function may use of nimbus beyond its own code.
    pub grants: Grants,
    /// How `keep_alive` is applied: the fixed duration, or adaptive windows learnt from the
    /// function's idle times (with `keep_alive` as the fallback).
    pub keep_alive_policy: KeepAlivePolicy,
    /// Whether responses are buffered (default) or streamed as the function writes them
    /// (`response_mode`; the contract is in [`crate::stream`]).
    pub response_mode: crate::stream::ResponseMode,
    /// Largest streamed response body, in bytes (`max_stream_bytes`, default 20 MB); past it the
    /// stream ends as Lambda's does (`Function.ResponseSizeTooLarge`).
    pub max_stream_bytes: u64,
    /// How many invocations one instance runs at once (1..=1000; 1 for wasm). Above 1 the
    /// instance is billed per busy instance-second instead of per invocation.
    pub concurrency: u32,
}

/// How long a function's idle instances are kept (the manifest's `keep_alive`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeepAlivePolicy {
    /// `keep_alive = "10m"`: every idle instance lives `FunctionSpec::keep_alive`.
    #[default]
    Fixed,
    /// `keep_alive = "adaptive"`: the hybrid histogram policy (`policy::adaptive_windows`)
    /// over the function's idle times decides the keep-alive and pre-warm windows;
    /// `FunctionSpec::keep_alive` (the default) applies while the histogram is not
    /// representative.
    Adaptive,
}

impl KeepAlivePolicy {
    /// The manifest's spelling, or `None` for a fixed duration.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            KeepAlivePolicy::Fixed => None,
            KeepAlivePolicy::Adaptive => Some("adaptive"),
        }
    }
}

/// The default `ephemeral_storage_mb` (Lambda's).
pub const DEFAULT_EPHEMERAL_STORAGE_MB: u32 = 512;

/// What a function may reach of nimbus (`[functions.F.grants]`); everything else is refused
/// (`AccessDeniedException` on the Invoke API, `AccessDenied` on S3, an error from the KV client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    /// Functions it may invoke through the Invoke API, by name.
    pub functions: Vec<String>,
    /// Buckets (`[buckets.NAME]`) and what it may do with their objects.
    pub buckets: BTreeMap<String, Access>,
    /// KV namespaces (`[kv.NAME]`) and what it may do with their keys.
    pub kv: BTreeMap<String, Access>,
    /// Queues (`[queues.NAME]`) and whether it may send to them, receive from them, or both.
    /// A queue trigger adds the receive it needs (docs/manifest.md, Triggers).
    pub queues: BTreeMap<String, crate::event_sources::QueueAccess>,
}

impl Grants {
    /// Whether the function may invoke `name`.
    pub fn may_invoke(&self, name: &str) -> bool {
        self.functions.iter().any(|f| f == name)
    }

    /// Whether the function may do `op` on the objects of `bucket`.
    pub fn may_use_bucket(&self, bucket: &str, op: Op) -> bool {
        self.buckets.get(bucket).is_some_and(|a| a.allows(op))
    }

    /// Whether the function may do `op` on the keys of KV namespace `ns`.
    pub fn may_use_kv(&self, ns: &str, op: Op) -> bool {
        self.kv.get(ns).is_some_and(|a| a.allows(op))
    }

    /// Whether the function may do `op` on queue `queue`.
    pub fn may_use_queue(&self, queue: &str, op: crate::event_sources::QueueOp) -> bool {
        self.queues.get(queue).is_some_and(|a| a.allows(op))
    }
}

/// What a grant on a bucket or a KV namespace allows (the manifest's `"read"`, `"write"`,
/// `"read-write"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// The two classes of storage operation a grant distinguishes: reads (get, head, list) and
/// writes (put, delete, copy into, multipart, increment, compare-and-swap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
}

impl Access {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        }
    }

    /// Read the manifest's spelling.
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "read-write" => Some(Access::ReadWrite),
            _ => None,
        }
    }

    /// Whether this access allows `op`.
    pub fn allows(self, op: Op) -> bool {
        matches!((self, op), (Access::ReadWrite, _) | (Access::Read, Op::Read) | (Access::Write, Op::Write))
    }
}

/// How a wasm component runs (`component` and the wasm-only keys of docs/manifest.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WasmOptions {
    /// The component file, relative to the code directory.
    pub component: String,
    /// Keep an initialised instance for later requests instead of a fresh one per request.
    pub instance_reuse: bool,
}

/// Where the outcome of an async invocation is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Invoke this function asynchronously with an envelope describing the outcome.
    Function(String),
    /// Keep the event in the dead-letter store.
    Dlq,
}

impl Destination {
    pub fn parse(s: &str) -> Option<Destination> {
        if s == "dlq" {
            return Some(Destination::Dlq);
        }
        s.strip_prefix("function:").filter(|n| !n.is_empty()).map(|n| Destination::Function(n.to_owned()))
    }
}

/// Retry and destination settings for async invocations (docs/manifest.md, async keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AsyncPolicy {
    /// Retries after a function error (handled, unhandled, timeout, crash): 0-10.
    pub max_retry_attempts: u32,
    /// First retry delay; doubles each time, with jitter.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// An event older than this is dead-lettered instead of run again.
    pub max_event_age: Duration,
    pub on_success: Option<Destination>,
    pub on_failure: Option<Destination>,
}

impl Default for AsyncPolicy {
    fn default() -> Self {
        AsyncPolicy {
            max_retry_attempts: 2,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(300),
            max_event_age: Duration::from_secs(6 * 3600),
            on_success: None,
            on_failure: Some(Destination::Dlq),
        }
    }
}

/// One deployed, immutable version of a function: its spec plus the content-addressed code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionVersion {
    pub spec: FunctionSpec,
    /// The deployment version this function belongs to ("1", "2", …).
    pub version: String,
    /// Content digest of the code directory (hex sha256).
    pub code_digest: String,
    /// Where the immutable code lives on disk (inside the artifact store).
    pub code_path: PathBuf,
    /// Cache of [`FunctionVersion::pool_key`] (computed once; read on every invocation).
    pub key_cache: std::sync::OnceLock<String>,
}

impl FunctionVersion {
    /// Identity of the runnable unit: two versions with the same key can share instances
    /// (same code, same configuration), which lets a redeploy keep unchanged functions warm.
    pub fn pool_key(&self) -> &str {
        self.key_cache.get_or_init(|| {
            // SipHash with fixed keys: the same spec gives the same key for the life of the
            // process, which is as long as pools live. A collision only costs a missed reuse.
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&self.spec, &mut h);
            format!("{}:{}:{:016x}", self.spec.name, self.code_digest, std::hash::Hasher::finish(&h))
        })
    }

    pub fn arn(&self) -> String {
        arn(&self.spec.name, None)
    }
}

pub type SharedFunctionVersion = Arc<FunctionVersion>;

/// The region and account nimbus reports wherever the Lambda contracts need one.
pub const REGION: &str = "us-east-1";
pub const ACCOUNT_ID: &str = "000000000000";

/// The Lambda ARN of a function, with its qualifier (version or alias) when given:
/// `arn:aws:lambda:us-east-1:000000000000:function:NAME[:QUALIFIER]`.
pub fn arn(name: &str, qualifier: Option<&str>) -> String {
    match qualifier {
        Some(q) => format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}:{q}"),
        None => format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"),
    }
}
