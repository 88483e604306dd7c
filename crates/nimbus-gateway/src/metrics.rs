//! `/metrics`: OpenMetrics text (which Prometheus scrapes natively), built with the Prometheus
//! project's own client library.
//!
//! Two kinds of figures:
//! - counted as invocations finish ([`Observer`]: every record of every trigger, retries
//!   included) and as the gateway answers: invocations, throttles, duration / init / queue-wait
//!   histograms, gateway requests;
//! - read at scrape time from their owners: instances by state, concurrency in use and its limit,
//!   requests waiting for an instance, instances started (from the pools); the async queue's
//!   depth, oldest age and dead-letter store (from the queue store); retries and dead-letters
//!   (from the async engine); the connections open now (from the gateway); the message
//!   queues' and queue triggers' counts (`metrics/queues.rs`).

mod queues;
mod tally;

use std::sync::atomic::{AtomicBool, Ordering};

use nimbus_core::meter::S3Totals;
use nimbus_core::queue::QueueStats;
use nimbus_core::{InvocationRecord, InvocationStatus, Observer};
use nimbus_scheduler::PoolStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    function: String,
    status: &'static str,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    function: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    function: String,
    version: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvOpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvErrorLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3OpLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct S3ErrorLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// What the gateway refused at one of its limits, before a handler saw the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A connection over `max_connections`: 503 with `Retry-After` on plain HTTP, closed on TLS.
    Connections,
    /// A request head over `max_header_bytes` or with more than `max_headers` fields: 431.
    Headers,
    /// A pause between two pieces of a request body over `body_idle_timeout`: 408.
    BodyIdle,
    /// A request body not complete within `body_timeout`: 408.
    BodyTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [Refusal::Connections, Refusal::Headers, Refusal::BodyIdle, Refusal::BodyTimeout];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Headers => "headers",
            Refusal::BodyIdle => "body_idle",
            Refusal::BodyTimeout => "body_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    outcome: &'static str,
}

type Hist = Family<FunctionLabels, Histogram, fn() -> Histogram>;

fn init_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// Everything `/metrics` reports. Cheap to share: the families are reference-counted.
pub struct Metrics {
    enabled: AtomicBool,
    /// Invocations, their durations and queue waits, gateway requests: per thread
    /// (`metrics/tally.rs`), summed at scrape time.
    tallies: tally::Tallies,
    throttles: Family<FunctionLabels, Counter>,
    init: Hist,
    refused: Family<RefusalLabels, Counter>,
    kv_ops: Family<KvOpLabels, Counter>,
    kv_errors: Family<KvErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: AtomicBool::new(true),
            tallies: tally::Tallies::default(),
            throttles: Family::default(),
            init: Family::new_with_constructor(init_histogram),
            refused: refused_family(),
            kv_ops: Family::default(),
            kv_errors: Family::default(),
        }
    }
}

/// The figures counted per thread, as families to register.
#[derive(Default)]
struct Tallied {
    invocations: Family<InvocationLabels, Counter>,
    duration: Family<FunctionLabels, tally::SummedHistogram>,
    queue_wait: Family<FunctionLabels, tally::SummedHistogram>,
    requests: Family<RequestLabels, Counter>,
}

/// Every reason has a row from the start, zero until something is refused.
fn refused_family() -> Family<RefusalLabels, Counter> {
    let f = Family::<RefusalLabels, Counter>::default();
    for r in Refusal::ALL {
        drop(f.get_or_create(&RefusalLabels { reason: r.as_str() }));
    }
    f
}

/// What `/metrics` reads from the rest of nimbus at scrape time.
pub struct Scrape<'a> {
    pub pools: &'a [PoolStatus],
    pub queue: &'a [QueueStats],
    /// (function, outcome, count) from the async engine.
    pub outcomes: &'a [(String, &'static str, u64)],
    pub records_dropped: u64,
    pub now_ms: u64,
    /// Connections the gateway has open.
    pub connections: u64,
    /// The S3 port's operations, errors and bytes since start.
    pub s3: &'a S3Totals,
    /// Buckets: (name, objects, bytes) now.
    pub buckets: &'a [(String, u64, u64)],
    /// KV namespaces: (name, keys, bytes) now.
    pub namespaces: &'a [(String, u64, u64)],
    /// Message queues: (name, counts) now.
    pub message_queues: &'a [(String, nimbus_core::messages::QueueStats)],
    /// The queue triggers seen since start.
    pub triggers: &'a [nimbus_queue::triggers::TriggerStats],
}

impl Observer for Metrics {
    fn observe(&self, r: &InvocationRecord) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.tallies.invocation(r);
        if r.status == InvocationStatus::Throttled {
            self.throttles.get_or_create(&FunctionLabels { function: r.function.clone() }).inc();
        }
        if let Some(init) = r.init_ms {
            self.init.get_or_create(&FunctionLabels { function: r.function.clone() }).observe(init / 1000.0);
        }
    }
}

impl Metrics {
    /// Stop counting (the recording-overhead benchmark's "off" side).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    pub(crate) fn request(&self, kind: &'static str, code: u16) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.tallies.request(kind, code);
    }

    /// Count a refusal. Always counted, even with recording off: refusals are rare and are what
    /// an operator looks for when clients complain.
    pub(crate) fn refused(&self, r: Refusal) {
        self.refused.get_or_create(&RefusalLabels { reason: r.as_str() }).inc();
    }

    /// Count a KV call (from a function or the management API), by operation.
    pub(crate) fn kv_call(&self, op: &'static str) {
        self.kv_ops.get_or_create(&KvOpLabels { op }).inc();
    }

    /// Count a refused or failed KV call, by its error code.
    pub(crate) fn kv_error(&self, code: &'static str) {
        self.kv_errors.get_or_create(&KvErrorLabels { code }).inc();
    }

    fn register_kv(&self, reg: &mut Registry) {
        reg.register(
            "kv_operations",
            "KV calls by operation (get, put, delete, list, increment, namespaces, delete_namespace), from functions and the management API",
            self.kv_ops.clone(),
        );
        reg.register(
            "kv_errors",
            "KV calls refused or failed, by error code (NoSuchKey, AccessDenied, VersionConflict, ...)",
            self.kv_errors.clone(),
        );
    }

    /// The S3 port's counters and the stored objects and KV keys (read at scrape time).
    fn register_storage(reg: &mut Registry, s: &Scrape<'_>) {
        let ops = Family::<S3OpLabels, Counter>::default();
        for (operation, n) in &s.s3.operations {
            ops.get_or_create(&S3OpLabels { operation }).inc_by(*n);
        }
        reg.register("s3_operations", "S3 requests by operation (signed requests the S3 port routed)", ops);
        let errors = Family::<S3ErrorLabels, Counter>::default();
        for (code, n) in &s.s3.errors {
            errors.get_or_create(&S3ErrorLabels { code: code.clone() }).inc_by(*n);
        }
        reg.register(
            "s3_errors",
            "S3 error responses by code (NoSuchKey, AccessDenied, SignatureDoesNotMatch, ...)",
            errors,
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        bytes.get_or_create(&DirectionLabels { direction: "in" }).inc_by(s.s3.bytes_in);
        bytes.get_or_create(&DirectionLabels { direction: "out" }).inc_by(s.s3.bytes_out);
        reg.register_with_unit(
            "s3",
            "Object bytes received (PUT, upload part) and sent (GET) by the S3 port",
            prometheus_client::registry::Unit::Bytes,
            bytes,
        );
        let (objects, stored) = (Family::<BucketLabels, Gauge>::default(), Family::<BucketLabels, Gauge>::default());
        for (bucket, n, b) in s.buckets {
            let l = BucketLabels { bucket: bucket.clone() };
            objects.get_or_create(&l).set(i64::try_from(*n).unwrap_or(i64::MAX));
            stored.get_or_create(&l).set(i64::try_from(*b).unwrap_or(i64::MAX));
        }
        reg.register("bucket_objects", "Objects stored per bucket", objects);
        reg.register_with_unit(
            "bucket_stored",
            "Bytes stored per bucket",
            prometheus_client::registry::Unit::Bytes,
            stored,
        );
        let (keys, kv_stored) =
            (Family::<NamespaceLabels, Gauge>::default(), Family::<NamespaceLabels, Gauge>::default());
        for (namespace, n, b) in s.namespaces {
            let l = NamespaceLabels { namespace: namespace.clone() };
            keys.get_or_create(&l).set(i64::try_from(*n).unwrap_or(i64::MAX));
            kv_stored.get_or_create(&l).set(i64::try_from(*b).unwrap_or(i64::MAX));
        }
        reg.register("kv_keys", "Unexpired keys per KV namespace", keys);
        reg.register_with_unit(
            "kv_stored",
            "Key and value bytes of unexpired keys per KV namespace",
            prometheus_client::registry::Unit::Bytes,
            kv_stored,
        );
    }

    /// The per-thread counts summed into their families.
    fn tallied(&self) -> Tallied {
        let totals = self.tallies.totals();
        let t = Tallied::default();
        for ((function, status, trigger), n) in totals.invocations {
            t.invocations.get_or_create(&InvocationLabels { function, status, trigger }).inc_by(n);
        }
        for (function, (duration, queue_wait)) in totals.timing {
            let f = FunctionLabels { function };
            t.duration.get_or_create(&f).set(duration);
            t.queue_wait.get_or_create(&f).set(queue_wait);
        }
        for ((kind, code), n) in totals.requests {
            t.requests.get_or_create(&RequestLabels { kind, code }).inc_by(n);
        }
        t
    }

    /// The exposition text.
    pub fn render(&self, s: &Scrape<'_>) -> String {
        let mut reg = Registry::with_prefix("nimbus");
        self.register_kv(&mut reg);
        Self::register_storage(&mut reg, s);
        queues::register_queues(&mut reg, s.message_queues, s.now_ms);
        queues::register_triggers(&mut reg, s.triggers);
        let t = self.tallied();
        reg.register(
            "invocations",
            "Finished invocations by function, status and trigger (sync, async, schedule; every retry)",
            t.invocations,
        );
        reg.register(
            "throttles",
            "Invocations refused with 429: max_instances reached and the wait queue full or timed out",
            self.throttles.clone(),
        );
        reg.register_with_unit(
            "invocation_duration",
            "Handler duration of invocations that ran",
            prometheus_client::registry::Unit::Seconds,
            t.duration,
        );
        reg.register_with_unit(
            "init_duration",
            "Instance start to ready on cold starts (Init Duration); its count is the cold-started invocations",
            prometheus_client::registry::Unit::Seconds,
            self.init.clone(),
        );
        reg.register_with_unit(
            "queue_wait",
            "Time invocations waited for an instance, not counting the start of their own instance",
            prometheus_client::registry::Unit::Seconds,
            t.queue_wait,
        );
        reg.register("gateway_requests", "HTTP requests by kind and status code", t.requests);
        reg.register(
            "gateway_refused",
            "Connections and requests refused at a gateway limit, by reason (connections: 503 or closed; headers: 431; body_idle, body_timeout: 408)",
            self.refused.clone(),
        );
        let open: Gauge = Gauge::default();
        open.set(i64::try_from(s.connections).unwrap_or(i64::MAX));
        reg.register("gateway_connections", "Connections open now (limit: nimbus up --max-connections)", open);

        let cold_starts = Family::<VersionLabels, Counter>::default();
        let instances = Family::<StateLabels, Gauge>::default();
        let waiting = Family::<VersionLabels, Gauge>::default();
        let concurrency = Family::<FunctionLabels, Gauge>::default();
        let limit = Family::<FunctionLabels, Gauge>::default();
        for p in s.pools {
            let v = VersionLabels { function: p.function.clone(), version: p.version.clone() };
            cold_starts.get_or_create(&v).inc_by(p.cold_starts);
            for (state, n) in [("idle", p.idle), ("busy", p.busy), ("starting", p.starting)] {
                let l = StateLabels { function: p.function.clone(), version: p.version.clone(), state };
                instances.get_or_create(&l).set(i64::from(n));
            }
            waiting.get_or_create(&v).set(i64::from(p.waiting));
            let f = FunctionLabels { function: p.function.clone() };
            concurrency.get_or_create(&f).inc_by(i64::from(p.in_flight));
            limit.get_or_create(&f).set(i64::from(p.max_instances));
        }
        reg.register("cold_starts", "Instances started (cold starts), by function version", cold_starts);
        reg.register("instances", "Instances by function version and state", instances);
        reg.register("queued_requests", "Requests waiting for an instance", waiting);
        reg.register(
            "concurrency",
            "Invocations running now (on busy instances, several per instance with concurrency > 1)",
            concurrency,
        );
        reg.register("concurrency_limit", "max_instances of the live version", limit);
        register_keepalive(&mut reg, s.pools);

        let depth = Family::<FunctionLabels, Gauge>::default();
        let oldest = Family::<FunctionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let dlq = Family::<FunctionLabels, Gauge>::default();
        // Every deployed function has a row, zero while it has no events.
        for p in s.pools {
            let f = FunctionLabels { function: p.function.clone() };
            drop(depth.get_or_create(&f));
            drop(dlq.get_or_create(&f));
            drop(oldest.get_or_create(&f));
        }
        for q in s.queue {
            let f = FunctionLabels { function: q.function.clone() };
            depth.get_or_create(&f).set((q.queued + q.running) as i64);
            dlq.get_or_create(&f).set(q.dead_lettered as i64);
            // An event accepted "after" now (the clock stepped back) is 0 s old.
            let age = q.oldest_queued_ms.map_or(0.0, |t| s.now_ms.saturating_sub(t) as f64 / 1000.0);
            oldest.get_or_create(&f).set(age);
        }
        reg.register("async_queue_depth", "Async events accepted and not yet finished (queued or running)", depth);
        reg.register_with_unit(
            "async_oldest_age",
            "Age of the oldest queued async event",
            prometheus_client::registry::Unit::Seconds,
            oldest,
        );
        reg.register("dlq_events", "Events in the dead-letter store", dlq);
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        for (function, outcome, n) in s.outcomes {
            outcomes.get_or_create(&OutcomeLabels { function: function.clone(), outcome }).inc_by(*n);
        }
        reg.register(
            "async_outcomes",
            "Async events retried, dead-lettered or sent to an on_failure function, since start",
            outcomes,
        );
        let dropped: Counter = Counter::default();
        dropped.inc_by(s.records_dropped);
        reg.register("records_dropped", "Invocation records dropped because the record writer fell behind", dropped);

        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!("cannot encode /metrics: {e}");
        }
        out
    }
}

/// `nimbus_keepalive_seconds{function,kind}`: the adaptive keep-alive's windows now, per
/// function (`keep_alive = "adaptive"` only; `kind` is `keep_alive` or `prewarm`).
fn register_keepalive(reg: &mut prometheus_client::registry::Registry, pools: &[nimbus_scheduler::PoolStatus]) {
    let windows = Family::<KindLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for p in pools {
        let Some(w) = p.adaptive else { continue };
        for (kind, d) in [("keep_alive", w.keep_alive), ("prewarm", w.prewarm)] {
            windows.get_or_create(&KindLabels { function: p.function.clone(), kind }).set(d.as_secs_f64());
        }
    }
    reg.register_with_unit(
        "keepalive",
        "The adaptive keep-alive's windows per function: keep_alive (idle instances stop this long after the last call) and prewarm (an instance starts this long after it)",
        prometheus_client::registry::Unit::Seconds,
        windows,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    function: String,
    kind: &'static str,
}
