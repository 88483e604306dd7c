//! One invocation: what goes into an instance and what comes out.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::outcome::{FunctionErrorKind, InvokeOutcome};

/// Largest request or response payload, for every runtime (Lambda's synchronous limit).
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// Largest log one invocation keeps, for every runtime; the rest is counted and dropped.
pub const MAX_LOG_BYTES: usize = 256 * 1024;

/// What started an invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Http,
    Invoke,
    /// An async event from the durable queue (Invoke API `Event`, async routes, destinations).
    Event,
    /// A `[[schedules]]` fire.
    Schedule,
    /// An S3 event notification from a bucket trigger (`[[triggers]] bucket = …`).
    Bucket,
    /// A batch of messages from a queue trigger (`[[triggers]] queue = …`).
    Queue,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Invoke => "invoke",
            Trigger::Event => "event",
            Trigger::Schedule => "schedule",
            Trigger::Bucket => "bucket",
            Trigger::Queue => "queue",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        [Trigger::Http, Trigger::Invoke, Trigger::Event, Trigger::Schedule, Trigger::Bucket, Trigger::Queue]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// A request to run a function once.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub request_id: String,
    /// The event JSON handed to the runtime.
    pub payload: Bytes,
    /// When the function's own time runs out (set when an instance is assigned, so queue wait
    /// does not eat into the function's timeout).
    pub timeout: Duration,
    /// The X-Ray trace id the process runtimes hand on (`Lambda-Runtime-Trace-Id`). Empty for
    /// invocations made with [`Invocation::untraced`]: no runtime of theirs reads it.
    pub trace_id: String,
    /// `X-Amz-Client-Context` as the caller sent it (base64 JSON), passed through decoded.
    pub client_context: Option<String>,
    pub trigger: Trigger,
    pub received_at: Instant,
    pub received_wall: SystemTime,
    /// Set when the invocation is an HTTP request for a runtime that takes HTTP natively (wasm
    /// components): `payload` is then the request body, not an event.
    pub http: Option<std::sync::Arc<HttpRequestHead>>,
}

impl Invocation {
    /// An invocation received now, with a fresh trace id, no client context and no HTTP head.
    pub fn new(request_id: String, payload: Bytes, trigger: Trigger, timeout: Duration) -> Invocation {
        Invocation {
            trace_id: crate::ids::new_trace_id(),
            ..Invocation::untraced(request_id, payload, trigger, timeout)
        }
    }

    /// [`Invocation::new`] without a trace id, for a runtime that never reads one (a wasm
    /// component taking an HTTP request): formatting a random id costs about 1.7k instructions
    /// a request, 2 % of a warm wasm request.
    pub fn untraced(request_id: String, payload: Bytes, trigger: Trigger, timeout: Duration) -> Invocation {
        Invocation {
            request_id,
            payload,
            timeout,
            trace_id: String::new(),
            client_context: None,
            trigger,
            received_at: Instant::now(),
            received_wall: SystemTime::now(),
            http: None,
        }
    }
}

/// The head of an HTTP request passed through to a runtime unchanged.
#[derive(Clone, Debug)]
pub struct HttpRequestHead {
    pub method: http::Method,
    /// Path and query, as the client sent them.
    pub uri: http::Uri,
    /// `host[:port]` the client addressed.
    pub authority: String,
    pub headers: http::HeaderMap,
}

/// The head of an HTTP response a runtime produced natively; the body is the success payload.
#[derive(Clone, Debug)]
pub struct HttpResponseHead {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
}

/// The cold-start breakdown of an invocation that had to start its instance.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ColdStart {
    /// Start until the instance was ready for its first event: `instance_start` plus the
    /// runtime's own init (interpreter, runtime client, handler module). The `Init Duration`.
    pub init: Duration,
    /// The part of `init` nimbus spent creating the instance before any function code ran
    /// (process: listener, pipes and `spawn`; wasm: instantiating the component).
    pub instance_start: Duration,
}

impl ColdStart {
    /// The runtime's own init: `init` minus `instance_start`.
    pub fn runtime_init(&self) -> Duration {
        self.init.saturating_sub(self.instance_start)
    }
}

/// Everything known about a finished invocation.
#[derive(Clone, Debug)]
pub struct InvokeResult {
    pub outcome: InvokeOutcome,
    /// The handler's own time: event handed out → response received.
    pub duration: Duration,
    pub cold: Option<ColdStart>,
    pub max_memory_mb: u32,
    /// This invocation's log (START … REPORT), bounded. Left empty by the scheduler for a
    /// successful HTTP route invocation, whose caller never sees its log (the record keeps it).
    pub log: String,
    pub instance_id: String,
    /// Set when the runtime answered in HTTP terms (wasm components).
    pub http: Option<HttpResponseHead>,
    /// Set when the body is streamed and the invocation may still be running (`response_mode =
    /// "streaming"`): the contract is in [`crate::stream`]. `None` for buffered results.
    pub stream: Option<crate::stream::StreamHandle>,
}

/// How an invocation ended, as recorded and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    Success,
    FunctionError,
    Timeout,
    Crashed,
    InitError,
    Throttled,
    PlatformError,
}

impl InvocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Success => "success",
            InvocationStatus::FunctionError => "function_error",
            InvocationStatus::Timeout => "timeout",
            InvocationStatus::Crashed => "crashed",
            InvocationStatus::InitError => "init_error",
            InvocationStatus::Throttled => "throttled",
            InvocationStatus::PlatformError => "platform_error",
        }
    }

    pub const ALL: [InvocationStatus; 7] = [
        InvocationStatus::Success,
        InvocationStatus::FunctionError,
        InvocationStatus::Timeout,
        InvocationStatus::Crashed,
        InvocationStatus::InitError,
        InvocationStatus::Throttled,
        InvocationStatus::PlatformError,
    ];

    pub fn parse(s: &str) -> Option<InvocationStatus> {
        InvocationStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the invocation reached the function (errors and timeouts included): it has a
    /// duration and a queue wait, and Lambda bills it. Not throttles or nimbus's own errors.
    pub fn reached_function(self) -> bool {
        !matches!(self, InvocationStatus::Throttled | InvocationStatus::PlatformError)
    }
}

/// One row of the invocation history (and its log).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    pub version: String,
    pub trigger: Trigger,
    /// Wall-clock start, ms since the epoch.
    pub start_ms: u64,
    pub duration_ms: f64,
    pub billed_ms: u64,
    pub memory_mb: u32,
    pub max_memory_mb: u32,
    pub cold: bool,
    /// On a cold start: the whole start (`Init Duration`), and its two phases.
    pub init_ms: Option<f64>,
    pub instance_start_ms: Option<f64>,
    pub runtime_init_ms: Option<f64>,
    /// Waiting for an instance, not counting the start of the instance this invocation got.
    pub queue_ms: f64,
    pub status: InvocationStatus,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub instance_id: Option<String>,
    #[serde(skip)]
    pub log: String,
    /// Streamed responses: event handed out → response body ended (`duration_ms` is the whole
    /// invocation, work after the response included). `None` for buffered responses.
    #[serde(default)]
    pub response_ms: Option<f64>,
    /// When set, `log` holds only the init log (its first `n` bytes) and the function's own
    /// output: the START / END / REPORT lines are rendered from the record when the log is read
    /// ([`InvocationRecord::framed_log`]), so recording does not format or store them.
    #[serde(skip)]
    pub log_frame: Option<usize>,
}

impl InvocationRecord {
    /// The log of a successful invocation as Lambda writes it: the init log, `START`, the
    /// function's output (ending in a newline), `END` and `REPORT` (with `Init Duration` on a
    /// cold start), every figure taken from the record.
    pub fn framed_log(&self, init_log: &str, body: &str) -> String {
        use std::fmt::Write as _;
        let id = &self.request_id;
        let mut log = String::with_capacity(init_log.len() + body.len() + 256);
        log.push_str(init_log);
        let _ = writeln!(log, "START RequestId: {id} Version: {}", self.version);
        log.push_str(body);
        if !body.is_empty() && !body.ends_with('\n') {
            log.push('\n');
        }
        let _ = writeln!(log, "END RequestId: {id}");
        let _ = write!(
            log,
            "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB",
            self.duration_ms, self.billed_ms, self.memory_mb, self.max_memory_mb
        );
        if let (true, Some(init)) = (self.cold, self.init_ms) {
            let _ = write!(log, "\tInit Duration: {init:.2} ms");
        }
        log.push('\n');
        log
    }

    /// The stored log as readers see it: rendered with its frame when it was stored without.
    pub fn full_log(&self) -> std::borrow::Cow<'_, str> {
        match self.log_frame {
            Some(n) => {
                let (init, body) = self.log.split_at_checked(n).unwrap_or((&self.log, ""));
                std::borrow::Cow::Owned(self.framed_log(init, body))
            }
            None => std::borrow::Cow::Borrowed(&self.log),
        }
    }
}

/// Where finished invocations go (the store's background writer). Called on the hot path, so
/// implementations must not block: queue the record and return.
pub trait Recorder: Send + Sync + 'static {
    fn record(&self, record: InvocationRecord);

    /// An instance of a function with `concurrency > 1` was busy (one invocation or more
    /// running) for one period, which is how such a function is billed: per instance-second
    /// busy, not per invocation. Reported by the pool when the instance goes back to no
    /// invocation (or stops); the store adds it to the hour's usage.
    fn instance_busy(&self, _busy: InstanceBusy) {}
}

/// One busy period of an instance (see [`Recorder::instance_busy`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceBusy {
    pub function: String,
    pub memory_mb: u32,
    /// When the period ended (Unix ms); it counts in that hour.
    pub end_ms: u64,
    pub busy: std::time::Duration,
}

/// Something that looks at every finished invocation before it is stored (metrics, traces).
/// Called on the hot path: count, or queue, and return.
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, record: &InvocationRecord);
}

/// A recorder that shows each record to its observers, then hands it to `store`.
pub struct Observed {
    pub observers: Vec<std::sync::Arc<dyn Observer>>,
    pub store: std::sync::Arc<dyn Recorder>,
}

impl Recorder for Observed {
    fn record(&self, record: InvocationRecord) {
        for o in &self.observers {
            o.observe(&record);
        }
        self.store.record(record);
    }

    fn instance_busy(&self, busy: InstanceBusy) {
        self.store.instance_busy(busy);
    }
}

/// A result as callers that want it whole see it (async events, triggers, the buffered Invoke
/// API): a streamed body is read to its end (at most the function's cap, which the sender
/// enforces) and the invocation's summary awaited; an error mid-stream becomes an unhandled
/// function error. A buffered result comes back as it was, at no cost.
pub async fn collect(mut r: InvokeResult) -> InvokeResult {
    let Some(handle) = r.stream.take() else { return r };
    let mut buf = bytes::BytesMut::new();
    let mut error = None;
    if let Some(mut body) = handle.take_body() {
        while let Some(item) = body.next().await {
            match item {
                Ok(b) => buf.extend_from_slice(&b),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    let summary = match handle.take_summary() {
        Some(rx) => rx.await.ok(),
        None => None,
    };
    if let Some(s) = &summary {
        r.log.clone_from(&s.log);
    }
    r.outcome = match error.or_else(|| summary.and_then(|s| s.error)) {
        None => InvokeOutcome::Success(buf.freeze()),
        Some(e) => {
            let body = serde_json::json!({"errorMessage": e.details, "errorType": e.error_code}).to_string();
            InvokeOutcome::FunctionError {
                kind: FunctionErrorKind::Unhandled,
                error_type: e.error_code,
                error_message: e.details,
                body: Bytes::from(body),
            }
        }
    };
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    fn record(log: &str, frame: Option<usize>) -> InvocationRecord {
        InvocationRecord {
            request_id: "r1".into(),
            function: "f".into(),
            version: "3".into(),
            trigger: Trigger::Http,
            start_ms: 1,
            duration_ms: 1.234,
            billed_ms: 2,
            memory_mb: 128,
            max_memory_mb: 17,
            cold: true,
            init_ms: Some(40.5),
            instance_start_ms: Some(1.0),
            runtime_init_ms: Some(39.5),
            queue_ms: 0.0,
            status: InvocationStatus::Success,
            error_type: None,
            error_message: None,
            instance_id: None,
            log: log.into(),
            log_frame: frame,
            response_ms: None,
        }
    }

    #[test]
    fn a_framed_log_is_rendered_around_its_init_log_and_output() {
        let r = record("booting\nhello", Some(8));
        assert_eq!(
            r.full_log(),
            "booting\nSTART RequestId: r1 Version: 3\nhello\nEND RequestId: r1\nREPORT RequestId: r1\tDuration: 1.23 ms\t\
             Billed Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 17 MB\tInit Duration: 40.50 ms\n"
        );
        // A log stored whole is read as it is.
        assert_eq!(record("as it was\n", None).full_log(), "as it was\n");
        // An offset past the text (a corrupt row) renders the whole text as the init log.
        assert!(record("x", Some(5)).full_log().starts_with("xSTART RequestId: r1"));
    }
}
