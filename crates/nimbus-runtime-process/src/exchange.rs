//! What an instance and its Runtime API server exchange: the events handed to `/next`, the
//! invocations in progress by request id and how each ended, and the Runtime API's small
//! answers. Below both `api` (the server) and `stream` (response streaming), so neither
//! imports the other's types.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use nimbus_core::stream::BodyReceiver;
use nimbus_core::HttpResponseHead;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

/// An event handed to the runtime on `/next`.
pub(crate) struct NextEvent {
    pub request_id: String,
    pub payload: Bytes,
    /// Wall-clock Unix milliseconds (`Lambda-Runtime-Deadline-Ms`).
    pub deadline_ms: u64,
    pub arn: String,
    pub trace_id: String,
    pub client_context: Option<String>,
}

/// How the runtime finished an invocation (or, for [`Completion::Early`] and
/// [`Completion::Stream`], began to answer it; the rest arrives on the invocation's [`Tail`]).
pub(crate) enum Completion {
    Response(Bytes),
    Error {
        error_type: Option<String>,
        body: Bytes,
    },
    TooLarge {
        size: usize,
    },
    /// A buffered response with background work still running (`waitUntil`): the caller gets
    /// it now, the invocation ends when the runtime posts `/done`.
    Early(Bytes),
    /// A streamed response (`Lambda-Runtime-Function-Response-Mode: streaming`): the head now,
    /// the body as the runtime writes it.
    Stream(Streamed),
}

/// How the part of an invocation after its response began ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The response ended (at `response_end`) and any background work settled.
    Done { response_end: std::time::Instant },
    /// The runtime reported an error mid-stream (Lambda's error trailers), or the stream broke.
    Failed { error: nimbus_core::StreamError, response_end: std::time::Instant },
    /// The stream went past the streaming cap.
    TooLarge { limit: u64 },
}

/// What an instance's Runtime API accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApiLimits {
    /// Largest buffered response.
    pub max_response: usize,
    /// Largest streamed response.
    pub max_stream: u64,
    /// The function's `response_mode` is streaming: streamed bodies are forwarded as they
    /// arrive (else collected, up to `max_response`).
    pub streaming: bool,
    /// The function's `concurrency`: invocations in flight at once (several `/next` may wait).
    pub concurrency: u32,
}

/// What the runtime reported on `/init/error`.
#[derive(Clone, Debug)]
pub(crate) struct InitError {
    pub error_type: String,
    pub body: Bytes,
}

/// An invocation handed to the instance and not completed yet.
pub(crate) struct Pending {
    pub reply: oneshot::Sender<Completion>,
    /// Where the end of a streamed or early response goes.
    pub tail: oneshot::Sender<Tail>,
    /// Set when the runtime takes its event from `/next`.
    pub picked_up: bool,
}

/// An invocation whose response went out while background work runs: `/done` ends it.
pub(crate) struct Finishing {
    pub tail: oneshot::Sender<Tail>,
    pub response_end: std::time::Instant,
}

/// State shared between the instance and its Runtime API server.
pub(crate) struct Shared {
    pub next_rx: Mutex<mpsc::Receiver<NextEvent>>,
    /// The invocations in progress, by request id.
    pub pending: StdMutex<HashMap<String, Pending>>,
    /// The invocations waiting for their background work (`waitUntil`), by request id.
    pub finishing: StdMutex<HashMap<String, Finishing>>,
    /// Set once the runtime first asks for work: init is over.
    pub ready: watch::Sender<bool>,
    pub init_error: watch::Sender<Option<InitError>>,
    pub max_response: usize,
    /// Largest streamed response.
    pub max_stream: u64,
    /// See [`ApiLimits::streaming`].
    pub streaming: bool,
    /// Set once, by the task that follows a streamed invocation past its timeout, just before
    /// it kills the instance: every response stream in flight on the instance ends (one
    /// watch per instance, each stream told apart by its request id).
    pub abort: watch::Sender<Option<Abort>>,
    /// Function calls and egress; `None` in tests of the Runtime API alone.
    pub services: Option<crate::services::Services>,
    /// The highest peak resident set (KB) the runtime's processes reported with their answers
    /// (`Nimbus-Peak-Rss-Kb`, nimbus's bootstraps: `getrusage`'s `ru_maxrss`, the figure
    /// `/proc/PID/status` gives as `VmHWM`); 0 while none did. It spares nimbus a procfs read
    /// per invocation.
    pub reported_peak_kb: std::sync::atomic::AtomicU64,
}

/// Why the instance ended the response streams in flight: invocation `request_id` went past
/// its timeout and the instance is being stopped.
#[derive(Clone, Debug)]
pub(crate) struct Abort {
    pub request_id: String,
    pub error: nimbus_core::StreamError,
}

impl Abort {
    /// How the stream of invocation `id` ends: with the timeout when it is the one that timed
    /// out, else saying the instance was stopped for another invocation.
    pub(crate) fn error_for(&self, id: &str) -> nimbus_core::StreamError {
        if id == self.request_id {
            return self.error.clone();
        }
        let details = format!("the instance was stopped: invocation {} on it timed out", self.request_id);
        nimbus_core::StreamError::new("Runtime.ExitError", details)
    }
}

impl Shared {
    /// The state of a fresh instance running up to `limits.concurrency` invocations at once,
    /// and the sender that hands it events.
    pub(crate) fn new(
        limits: ApiLimits,
        services: Option<crate::services::Services>,
    ) -> (Arc<Shared>, mpsc::Sender<NextEvent>) {
        let (next_tx, next_rx) = mpsc::channel(usize::try_from(limits.concurrency.max(1)).unwrap_or(1));
        let shared = Arc::new(Shared {
            next_rx: Mutex::new(next_rx),
            pending: StdMutex::new(HashMap::new()),
            finishing: StdMutex::new(HashMap::new()),
            ready: watch::channel(false).0,
            init_error: watch::channel(None).0,
            max_response: limits.max_response,
            max_stream: limits.max_stream,
            streaming: limits.streaming,
            abort: watch::channel(None).0,
            services,
            reported_peak_kb: std::sync::atomic::AtomicU64::new(0),
        });
        (shared, next_tx)
    }

    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `request_id` pending; its completion, and the end of a streamed or early
    /// response, come through the receivers.
    pub(crate) fn add_pending(&self, request_id: &str) -> (oneshot::Receiver<Completion>, oneshot::Receiver<Tail>) {
        let (reply, rx) = oneshot::channel();
        let (tail, tail_rx) = oneshot::channel();
        self.pending().insert(request_id.to_owned(), Pending { reply, tail, picked_up: false });
        (rx, tail_rx)
    }

    /// Forget `request_id` (it ended without a completion): a late one is refused.
    pub(crate) fn remove_pending(&self, request_id: &str) {
        self.pending().remove(request_id);
    }

    /// Whether the runtime has taken `request_id`'s event from `/next`.
    pub(crate) fn picked_up(&self, request_id: &str) -> bool {
        self.pending().get(request_id).is_some_and(|p| p.picked_up)
    }
}

/// A streamed response's beginning, handed to the instance.
pub(crate) struct Streamed {
    /// The head from the prelude, when the runtime sent one.
    pub head: Option<HttpResponseHead>,
    pub body: BodyReceiver,
}

pub(crate) fn take_pending(shared: &Shared, id: &str) -> Option<Pending> {
    shared.pending().remove(id)
}

/// The nimbus-only header (or trailer) a runtime sets on its response when background work
/// (`waitUntil`) follows; it then posts `/invocation/{id}/done` once the work settled. Official
/// clients never set it, so for them the response ends the invocation as on Lambda.
pub(crate) const WAIT_UNTIL: &str = "nimbus-wait-until";

pub(crate) fn wants_wait(headers: &http::HeaderMap) -> bool {
    headers.get(WAIT_UNTIL).is_some_and(|v| v.as_bytes() == b"1")
}

/// Park the invocation until its `/done`.
pub(crate) fn park(shared: &Shared, request_id: String, tail: oneshot::Sender<Tail>, response_end: std::time::Instant) {
    let finishing = Finishing { tail, response_end };
    shared.finishing.lock().unwrap_or_else(|e| e.into_inner()).insert(request_id, finishing);
}

pub(crate) fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

pub(crate) fn accepted() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"OK\"}")));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn invalid_id(id: &str) -> Response<Full<Bytes>> {
    json(StatusCode::BAD_REQUEST, "InvalidRequestID", &format!("request id {id} is not the invocation in progress"))
}

pub(crate) fn json(status: StatusCode, error_type: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}
