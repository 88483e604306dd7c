//! One wasm instance as the scheduler sees it: a slot in the function's pool that runs one
//! request at a time, on a fresh wasm instance per request or on a kept one
//! (`instance_reuse`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nimbus_core::outbound::OutboundPattern;
use nimbus_core::{
    ColdStart, FunctionErrorKind, FunctionVersion, HttpResponseHead, Instance, InstanceError, InstanceState,
    Invocation, InvokeOutcome, InvokeResult, StartError, REGION,
};
use serde_json::json;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::host::{CpuMeter, Host, Limiter, Metered, Outbound};
use crate::kv::KvCtx;
use crate::log::LogPipe;
use crate::{Inner, Loaded};

type Response = hyper::Response<HyperOutgoingBody>;

/// Ready `store` for one request: its CPU meter and limit flags reset, the epoch deadline armed
/// (the ticker then makes the guest yield every tick). Returns the meter to run the call under.
pub(crate) fn arm(store: &mut Store<Host>) -> Arc<CpuMeter> {
    let cpu = store.data().cpu.clone();
    cpu.reset();
    let h = store.data_mut();
    h.limiter.refused = None;
    h.cpu_exceeded = false;
    store.set_epoch_deadline(1);
    cpu
}

/// A store and its instance, kept for the next request.
pub(crate) type Kept = (Store<Host>, Proxy);

/// The most resources a kept instance may hold between requests. A component that leaves a
/// request's resources undropped grows nimbus's memory with every request it serves, without
/// end: the JS hello of `nimbus-bench all` (componentize-js) never touches the request it is
/// handed, nothing drops it, and each request left one resource and about 9.5 KB behind. Past
/// this many the instance retires and a fresh one serves the next request. A well-behaved
/// guest holds none between requests, or a few (a stream to stdout, a key-value bucket).
pub(crate) const MAX_HELD_RESOURCES: usize = 1_000;

/// The instance's kept store and whether it can serve again, shared with the task a streamed
/// invocation runs in (`crate::stream`), which hands them back from there.
#[derive(Clone, Default)]
pub(crate) struct Shared {
    /// The instance kept for the next request (`instance_reuse`), or the one made at start.
    kept: std::sync::Arc<std::sync::Mutex<Option<Kept>>>,
    /// Set when the instance cannot serve again (a kept instance that trapped, timed out or
    /// hoards resources).
    dead: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    fn holding(kept: Kept) -> Shared {
        let shared = Shared::default();
        shared.put(kept);
        shared
    }

    /// The kept store (or the one made at start), taken for one request.
    pub(crate) fn take(&self) -> Option<Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(crate) fn put(&self, kept: Kept) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    }

    /// Keep `kept` for the next request (`instance_reuse`), unless its guest now holds more
    /// than [`MAX_HELD_RESOURCES`] resources: then the instance retires, and `log` (the
    /// request's) says why.
    pub(crate) fn keep(&self, mut kept: Kept, log: &LogPipe) {
        let held = kept.0.data_mut().table.iter_mut().count();
        if held <= MAX_HELD_RESOURCES {
            self.put(kept);
            return;
        }
        log.note(&format!(
            "instance retired: after this request the component still holds {held} resources (more \
             than {MAX_HELD_RESOURCES} are kept by no well-behaved guest), and its memory would grow \
             with every request; a fresh instance serves the next request. With instance_reuse, drop \
             every resource a request hands the component (the incoming-request, its fields and \
             body) before the handler returns."
        ));
        self.retire();
    }

    /// The instance cannot serve again: the pool replaces it.
    pub(crate) fn retire(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Acquire)
    }
}

pub(crate) struct WasmInstance {
    pub(crate) parts: Parts,
    pub(crate) id: String,
    cold_start: ColdStart,
    /// The kept store and whether the instance is dead.
    pub(crate) shared: Shared,
}

/// What every request of the instance shares (all `Sync`, unlike a `Store`).
#[derive(Clone)]
pub(crate) struct Parts {
    pub(crate) rt: Arc<Inner>,
    loaded: Arc<Loaded>,
    pub(crate) function: Arc<FunctionVersion>,
    pub(crate) log: LogPipe,
    env: Arc<Vec<(String, String)>>,
    allowed: Arc<Vec<OutboundPattern>>,
}

/// Why no wasm instance could be made.
pub(crate) enum Instantiate {
    /// Every slot of the pooling allocator is taken: nimbus's capacity, not the function's fault.
    NoSlot(String),
    /// The component's own start failed (too little memory, a trap in its start function).
    Failed(String),
}

impl Instantiate {
    pub(crate) fn message(self) -> String {
        match self {
            Instantiate::NoSlot(m) | Instantiate::Failed(m) => m,
        }
    }
}

/// How a request ended, before it becomes an `InvokeResult`.
pub(crate) enum Ended {
    Response {
        head: HttpResponseHead,
        body: Bytes,
    },
    /// The guest trapped, ran out of CPU or memory, or answered with an error code.
    Failed {
        error_type: &'static str,
        message: String,
    },
    TooLarge {
        size: usize,
    },
}

impl WasmInstance {
    pub(crate) async fn start(
        rt: Arc<Inner>,
        loaded: Arc<Loaded>,
        function: Arc<FunctionVersion>,
        id: String,
        started: Instant,
    ) -> Result<WasmInstance, StartError> {
        let spec = &function.spec;
        let mut env: Vec<(String, String)> = vec![
            ("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION".into(), function.version.clone()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), spec.memory_mb.to_string()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
        ];
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let allowed =
            spec.allowed_outbound_hosts.iter().flatten().filter_map(|p| OutboundPattern::parse(p).ok()).collect();
        let parts = Parts {
            log: LogPipe::new(rt.settings.max_log_bytes),
            rt: rt.clone(),
            loaded,
            function,
            env: Arc::new(env),
            allowed: Arc::new(allowed),
        };
        // Instantiate once now: it proves the component starts (memory_mb large enough, its
        // init succeeds) and serves the first request.
        let _running = rt.ticker.running();
        let ready = match tokio::time::timeout(parts.function.spec.timeout, parts.instantiate()).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(Instantiate::NoSlot(message))) => return Err(StartError::Platform(message)),
            Ok(Err(Instantiate::Failed(message))) => {
                let log = parts.log.drain();
                return Err(StartError::InitFailed { error_type: "Runtime.InitError".into(), message, log });
            }
            Err(_) => {
                let log = parts.log.drain();
                return Err(StartError::InitFailed {
                    error_type: "Runtime.InitTimeout".into(),
                    message: format!("instantiation did not finish within {:?}", parts.function.spec.timeout),
                    log,
                });
            }
        };
        // Instantiating is the whole start: a component has no init phase of its own after it
        // (componentize-js/py run theirs at build time), so it all counts as instance start.
        let took = started.elapsed();
        let cold_start = ColdStart { init: took, instance_start: took };
        Ok(WasmInstance { parts, id, cold_start, shared: Shared::holding(ready) })
    }

    /// A kept instance (`instance_reuse`) whose request did not end normally cannot serve
    /// another: a trapped or interrupted instance cannot be entered again.
    fn retire_if_reused(&self) {
        if self.parts.function.spec.wasm.instance_reuse {
            self.shared.retire();
        }
    }

    /// What the caller gets for how the request ended. The instance is kept for the next
    /// request (`instance_reuse`) only after a normal answer.
    fn outcome(
        &self,
        ended: Ended,
        is_event: bool,
        kept: (Store<Host>, Proxy),
    ) -> Result<(InvokeOutcome, Option<HttpResponseHead>), InstanceError> {
        match ended {
            Ended::Response { head, body } => {
                if self.parts.function.spec.wasm.instance_reuse {
                    self.shared.keep(kept, &self.parts.log);
                }
                Ok(response_outcome(head, body, is_event))
            }
            Ended::Failed { error_type, message } => {
                self.retire_if_reused();
                let body = error_body(error_type, &message);
                let outcome = InvokeOutcome::FunctionError {
                    kind: FunctionErrorKind::Unhandled,
                    error_type: error_type.to_owned(),
                    error_message: message,
                    body,
                };
                Ok((outcome, None))
            }
            Ended::TooLarge { size } => {
                self.retire_if_reused();
                let limit = self.parts.rt.settings.max_response_bytes;
                Err(InstanceError::ResponseTooLarge { size, limit, log: self.parts.log.drain() })
            }
        }
    }
}

/// An answer as the caller sees it. An event has no HTTP caller: a 5xx answer is the function
/// failing, so async retries and `on_failure` apply.
fn response_outcome(head: HttpResponseHead, body: Bytes, is_event: bool) -> (InvokeOutcome, Option<HttpResponseHead>) {
    if is_event && head.status.is_server_error() {
        let outcome = InvokeOutcome::FunctionError {
            kind: FunctionErrorKind::Handled,
            error_type: "Function.HttpServerError".into(),
            error_message: format!("the component answered {}", head.status),
            body,
        };
        (outcome, Some(head))
    } else {
        (InvokeOutcome::Success(body), Some(head))
    }
}

impl Parts {
    fn new_store(&self) -> Store<Host> {
        let spec = &self.function.spec;
        let mut wasi = wasmtime_wasi::WasiCtx::builder();
        wasi.envs(&self.env).stdout(self.log.clone()).stderr(self.log.clone());
        let host = Host {
            table: wasmtime::component::ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            outbound: Outbound { allowed: self.allowed.clone(), log: self.log.clone() },
            kv: KvCtx::new(self.rt.kv.clone(), self.function.clone(), self.log.clone()),
            limiter: Limiter {
                max_bytes: (spec.memory_mb as usize) << 20,
                total: 0,
                peak: 0,
                refused: None,
                log: self.log.clone(),
            },
            cpu: Arc::new(CpuMeter::default()),
            cpu_limit_ns: spec.cpu_ms.map(|ms| u64::from(ms) * 1_000_000),
            cpu_exceeded: false,
        };
        let mut store = Store::new(&self.rt.engine, host);
        store.limiter(|h| &mut h.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let h = ctx.data_mut();
            if let Some(limit) = h.cpu_limit_ns {
                if h.cpu.used_ns() > limit {
                    h.cpu_exceeded = true;
                    return Ok(UpdateDeadline::Interrupt);
                }
            }
            // Yield at every tick so the request's timeout (a tokio timer) can fire even while
            // the guest computes, and other requests on this thread get their turn.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    pub(crate) async fn instantiate(&self) -> Result<(Store<Host>, Proxy), Instantiate> {
        let mut store = self.new_store();
        store.set_epoch_deadline(1);
        match self.loaded.pre.instantiate_async(&mut store).await {
            Ok(proxy) => Ok((store, proxy)),
            Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                Err(Instantiate::NoSlot(format!(
                    "all wasm instance slots are in use ({e}); raise NIMBUS_WASM_INSTANCES (now {}) or lower max_instances",
                    self.rt.settings.pool_instances
                )))
            }
            Err(e) => Err(Instantiate::Failed(match store.data().limiter.refused {
                Some(bytes) => format!(
                    "the component needs {} MB of memory to start, above memory_mb = {}; raise memory_mb",
                    bytes.div_ceil(1 << 20),
                    self.function.spec.memory_mb
                ),
                None => format!("instantiation failed: {e:#}"),
            })),
        }
    }

    /// Run one request on `store` until the response body is complete.
    async fn run(&self, store: &mut Store<Host>, proxy: &Proxy, request: Request) -> Result<Ended, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (req, out) = {
            let mut view = store.data_mut().http();
            let req = view.new_incoming_request(Scheme::Http, request).map_err(|e| format!("{e:#}"))?;
            let out = view.new_response_outparam(tx).map_err(|e| format!("{e:#}"))?;
            (req, out)
        };
        let cpu = arm(store);
        let handler = proxy.wasi_http_incoming_handler();
        let call = Metered { inner: Box::pin(handler.call_handle(&mut *store, req, out)), meter: &cpu };
        let ended = drive(call, rx, self.rt.settings.max_response_bytes).await;
        Ok(self.ended(ended, store.data()))
    }

    /// How a request ended, from how the guest's run did.
    pub(crate) fn ended(&self, driven: Driven, h: &Host) -> Ended {
        match driven {
            Driven::Response(head, body) => Ended::Response { head, body },
            Driven::TooLarge(size) => Ended::TooLarge { size },
            Driven::ErrorCode(code) => Ended::Failed {
                error_type: "Runtime.ResponseError",
                message: format!("the component answered with an error instead of a response: {code:?}"),
            },
            Driven::NoResponse => Ended::Failed {
                error_type: "Runtime.NoResponse",
                message: "the component returned without setting a response (response-outparam.set)".into(),
            },
            Driven::Trap(e) => self.trapped(h, &e),
        }
    }

    /// Why the guest stopped: over its CPU time, out of memory, or a trap of its own.
    fn trapped(&self, h: &Host, e: &wasmtime::Error) -> Ended {
        if h.cpu_exceeded {
            let ms = self.function.spec.cpu_ms.unwrap_or_default();
            self.log.note(&format!("CPU time limit exceeded: cpu_ms = {ms}"));
            return Ended::Failed {
                error_type: "Runtime.CpuLimitExceeded",
                message: format!("the request used more than {ms} ms of CPU time (cpu_ms = {ms})"),
            };
        }
        // The full error (with the wasm backtrace) goes to the log; the caller gets the cause.
        self.log.note(&format!("{e:?}"));
        match h.limiter.refused {
            Some(bytes) => Ended::Failed {
                error_type: "Runtime.OutOfMemory",
                message: format!(
                    "the component ran out of memory: it asked for {} MB, memory_mb = {}",
                    bytes.div_ceil(1 << 20),
                    self.function.spec.memory_mb
                ),
            },
            None => Ended::Failed { error_type: "Runtime.WasmTrap", message: trap_message(e) },
        }
    }

    /// Run `request` on the kept instance, or on a new one, and take the instance back with the
    /// result (for `instance_reuse`) and the memory peak.
    async fn serve(
        &self,
        ready: Option<(Store<Host>, Proxy)>,
        request: Request,
    ) -> Result<(Ended, usize, (Store<Host>, Proxy)), InstanceError> {
        let (mut store, proxy) = match ready {
            Some(r) => r,
            None => self.instantiate().await.map_err(|e| match e {
                Instantiate::NoSlot(m) | Instantiate::Failed(m) => InstanceError::Platform(m),
            })?,
        };
        let ended = self.run(&mut store, &proxy, request).await.map_err(InstanceError::Platform)?;
        let peak = store.data().limiter.peak;
        Ok((ended, peak, (store, proxy)))
    }
}

/// The short message of a trap: its root cause ("wasm trap: wasm `unreachable` instruction
/// executed"), without the backtrace.
fn trap_message(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    }
}

/// The request a component is handed.
pub(crate) type Request = hyper::Request<http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>>;

/// The header that tells the component its invocation's request id.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-nimbus-request-id");

/// The request the component sees: the HTTP request as the client sent it, or, for an event
/// (Invoke API, async queue, schedule), `POST /` with the payload as a JSON body. The head is
/// taken out of `inv`: when the invocation holds the only reference to it (the gateway's, as
/// the scheduler keeps no copy of an HTTP invocation), its URI and headers move into the
/// request instead of being copied and re-parsed.
pub(crate) fn to_http(inv: &mut Invocation) -> Request {
    let body = Full::new(inv.payload.clone()).map_err(|never| match never {}).boxed_unsync();
    let mut req = hyper::Request::new(body);
    match inv.http.take() {
        Some(h) => {
            let h = Arc::try_unwrap(h).unwrap_or_else(|shared| (*shared).clone());
            *req.method_mut() = h.method;
            *req.uri_mut() = absolute(h.uri, h.authority);
            *req.headers_mut() = h.headers;
        }
        None => {
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = http::Uri::from_static("http://localhost/");
            req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(&inv.request_id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    req
}

/// `http://authority/path?query` from the request's own URI (kept as it is when `authority` is
/// not a valid one), without formatting and parsing the whole URI again.
fn absolute(uri: http::Uri, authority: String) -> http::Uri {
    let Ok(authority) = http::uri::Authority::from_maybe_shared(Bytes::from(authority)) else { return uri };
    let mut parts = uri.into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    http::Uri::from_parts(parts).unwrap_or_else(|_| http::Uri::from_static("http://localhost/"))
}

pub(crate) enum Driven {
    Response(HttpResponseHead, Bytes),
    TooLarge(usize),
    ErrorCode(ErrorCode),
    NoResponse,
    Trap(wasmtime::Error),
}

/// Run the guest's `handle` and, concurrently, take its response and collect the body (the
/// guest writes the body through a bounded pipe, so both must make progress together).
async fn drive<F>(call: F, rx: tokio::sync::oneshot::Receiver<Result<Response, ErrorCode>>, limit: usize) -> Driven
where
    F: std::future::Future<Output = wasmtime::Result<()>>,
{
    tokio::pin!(call);
    match first_response(call.as_mut(), rx).await {
        Ok((response, returned)) => finish(call, returned, response, limit).await,
        Err(driven) => driven,
    }
}

/// Run the guest until it sets its response; also says whether `handle` has returned by then.
/// Without a response: how the call ended instead.
pub(crate) async fn first_response<F>(
    mut call: Pin<&mut F>,
    mut rx: tokio::sync::oneshot::Receiver<Result<Response, ErrorCode>>,
) -> Result<(Response, bool), Driven>
where
    F: std::future::Future<Output = wasmtime::Result<()>>,
{
    let mut returned = false;
    let response = tokio::select! {
        r = &mut rx => r,
        c = &mut call => {
            if let Err(e) = c {
                return Err(Driven::Trap(e));
            }
            returned = true;
            match rx.try_recv() {
                Ok(r) => Ok(r),
                Err(_) => return Err(Driven::NoResponse),
            }
        }
    };
    match response {
        Ok(Ok(r)) => Ok((r, returned)),
        Ok(Err(code)) => Err(Driven::ErrorCode(code)),
        // The outparam was dropped unset: the call's result says why.
        Err(_) => Err(match if returned { Ok(()) } else { call.await } {
            Ok(()) => Driven::NoResponse,
            Err(e) => Driven::Trap(e),
        }),
    }
}

/// Collect the response body while the guest, unless it has returned, keeps running; then let
/// it return. A trap at any point wins over the body.
async fn finish<F>(mut call: Pin<&mut F>, mut returned: bool, response: Response, limit: usize) -> Driven
where
    F: std::future::Future<Output = wasmtime::Result<()>>,
{
    let (parts, body) = response.into_parts();
    let collect = collect(body, limit);
    tokio::pin!(collect);
    let body = loop {
        tokio::select! {
            b = &mut collect => break b,
            c = &mut call, if !returned => {
                if let Err(e) = c {
                    return Driven::Trap(e);
                }
                returned = true;
            }
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(Collected::TooLarge(n)) => return Driven::TooLarge(n),
        Err(Collected::Broken(msg)) => {
            if !returned {
                if let Err(e) = call.await {
                    return Driven::Trap(e);
                }
            }
            return Driven::Trap(wasmtime::Error::msg(format!("the response body failed: {msg}")));
        }
    };
    if !returned {
        if let Err(e) = call.await {
            return Driven::Trap(e);
        }
    }
    Driven::Response(HttpResponseHead { status: parts.status, headers: parts.headers }, body)
}

enum Collected {
    TooLarge(usize),
    Broken(String),
}

async fn collect(mut body: HyperOutgoingBody, limit: usize) -> Result<Bytes, Collected> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Collected::Broken(format!("{e:?}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(Collected::TooLarge(buf.len() + data.len()));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

pub(crate) fn error_body(error_type: &str, message: &str) -> Bytes {
    Bytes::from(json!({"errorMessage": message, "errorType": error_type, "stackTrace": []}).to_string())
}

#[async_trait]
impl Instance for WasmInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn cold_start(&self) -> ColdStart {
        self.cold_start
    }

    fn take_init_log(&self) -> String {
        self.parts.log.drain()
    }

    fn state(&self) -> InstanceState {
        if self.shared.is_dead() {
            InstanceState::Dead
        } else {
            InstanceState::Ready
        }
    }

    async fn invoke(&self, mut inv: Invocation) -> Result<InvokeResult, InstanceError> {
        if self.parts.function.spec.response_mode == nimbus_core::ResponseMode::Streaming {
            return self.invoke_streaming(inv).await;
        }
        // Borrowed, not cloned: a clone of the runtime's `Arc` is two writes to a count every
        // worker shares.
        let _running = self.parts.rt.ticker.running();
        let started = Instant::now();
        let timeout = inv.timeout;
        let is_event = inv.http.is_none();
        let request = to_http(&mut inv);
        let ready = self.shared.take();
        let (ended, peak, kept) = match tokio::time::timeout(timeout, self.parts.serve(ready, request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // The guest was stopped at its next epoch tick; its store is gone with the future.
                self.retire_if_reused();
                return Err(InstanceError::Timeout { timeout, log: self.parts.log.drain() });
            }
        };
        let duration = started.elapsed();
        let max_memory_mb = u32::try_from(peak.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let (outcome, http) = self.outcome(ended, is_event, kept)?;
        Ok(InvokeResult {
            outcome,
            duration,
            cold: None,
            max_memory_mb,
            log: self.parts.log.drain(),
            instance_id: self.id.clone(),
            http,
            stream: None,
        })
    }

    async fn shutdown(self: Arc<Self>) {
        // Dropping the store returns its slot to the pool; nothing else is held.
    }
}
