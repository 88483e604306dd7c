//! The AWS Lambda Runtime API (2018-06-01) served to one instance.
//!
//! One listener per instance on `127.0.0.1:0`. The runtime long-polls `/invocation/next`; the
//! instance hands events in through a channel and gets completions back through the pending
//! slot. Request ids are checked, so a late response to an abandoned invocation is refused.

use std::convert::Infallible;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

const PREFIX: &str = "/2018-06-01/runtime/";
/// Error bodies and init errors are small JSON documents; bound what we accept.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// An event handed to the runtime on `/next`.
pub(crate) struct NextEvent {
    pub request_id: String,
    pub payload: Bytes,
    pub deadline_ms: u128,
    pub arn: String,
    pub trace_id: String,
    pub client_context: Option<String>,
}

/// How the runtime finished an invocation.
pub(crate) enum Completion {
    Response(Bytes),
    Error { error_type: Option<String>, body: Bytes },
    TooLarge { size: usize },
}

/// What the runtime reported on `/init/error`.
#[derive(Clone, Debug)]
pub(crate) struct InitError {
    pub error_type: String,
    pub body: Bytes,
}

pub(crate) struct Pending {
    pub request_id: String,
    pub reply: oneshot::Sender<Completion>,
}

/// State shared between the instance and its Runtime API server.
pub(crate) struct Shared {
    pub next_rx: Mutex<mpsc::Receiver<NextEvent>>,
    pub pending: StdMutex<Option<Pending>>,
    /// Set once the runtime first asks for work: init is over.
    pub ready: watch::Sender<bool>,
    pub init_error: watch::Sender<Option<InitError>>,
    /// Set when the runtime takes the current event from `/next`.
    pub picked_up: std::sync::atomic::AtomicBool,
    pub max_response: usize,
}

/// Serve the Runtime API on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Small request/response pairs on a keep-alive connection: Nagle plus delayed ACK would
        // add up to 40 ms per invocation.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(json(StatusCode::NOT_FOUND, "UnknownAPI", &format!("unknown Runtime API path {path}")));
    };
    let method = req.method().clone();
    let resp = match (method, rest) {
        (Method::GET, "invocation/next") => next(&shared).await,
        (Method::POST, "init/error") => init_error(req, &shared).await,
        (Method::POST, rest) => match rest.strip_prefix("invocation/").and_then(|r| r.rsplit_once('/')) {
            Some((id, "response")) => {
                let id = id.to_owned();
                response(req, &shared, id).await
            }
            Some((id, "error")) => {
                let id = id.to_owned();
                error(req, &shared, id).await
            }
            _ => json(StatusCode::NOT_FOUND, "UnknownAPI", &format!("unknown Runtime API path {path}")),
        },
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{} is not allowed on {path}", req_method_name(&path)),
        ),
    };
    Ok(resp)
}

fn req_method_name(path: &str) -> &'static str {
    if path.ends_with("/next") {
        "only GET"
    } else {
        "only POST"
    }
}

async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    shared.ready.send_replace(true);
    let mut rx = shared.next_rx.lock().await;
    let Some(ev) = rx.recv().await else {
        return json(StatusCode::GONE, "InstanceStopping", "this instance is being stopped");
    };
    shared.picked_up.store(true, std::sync::atomic::Ordering::Release);
    let mut resp = Response::new(Full::new(ev.payload));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", &ev.request_id);
    set("lambda-runtime-deadline-ms", &ev.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &ev.arn);
    set("lambda-runtime-trace-id", &ev.trace_id);
    if let Some(cc) = &ev.client_context {
        set("lambda-runtime-client-context", cc);
    }
    resp
}

fn take_pending(shared: &Shared, id: &str) -> Option<oneshot::Sender<Completion>> {
    let mut slot = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_some_and(|p| p.request_id == id) {
        slot.take().map(|p| p.reply)
    } else {
        None
    }
}

fn is_pending(shared: &Shared, id: &str) -> bool {
    shared.pending.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|p| p.request_id == id)
}

async fn response(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !is_pending(shared, &id) {
        return invalid_id(&id);
    }
    let declared =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let body = Limited::new(req.into_body(), shared.max_response).collect().await;
    let completion = match body {
        Ok(b) => Completion::Response(b.to_bytes()),
        Err(_) => Completion::TooLarge { size: declared.unwrap_or(shared.max_response + 1) },
    };
    let too_large = matches!(completion, Completion::TooLarge { .. });
    let Some(reply) = take_pending(shared, &id) else { return invalid_id(&id) };
    let _ = reply.send(completion);
    if too_large {
        json(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", "the response is above the payload limit")
    } else {
        accepted()
    }
}

async fn error(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !is_pending(shared, &id) {
        return invalid_id(&id);
    }
    let error_type = header(&req, "lambda-runtime-function-error-type");
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Some(reply) = take_pending(shared, &id) else { return invalid_id(&id) };
    let _ = reply.send(Completion::Error { error_type, body });
    accepted()
}

async fn init_error(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let error_type = header(&req, "lambda-runtime-function-error-type").unwrap_or_else(|| "Runtime.Unknown".to_owned());
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    shared.init_error.send_replace(Some(InitError { error_type, body }));
    accepted()
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn accepted() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"OK\"}")));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn invalid_id(id: &str) -> Response<Full<Bytes>> {
    json(StatusCode::BAD_REQUEST, "InvalidRequestID", &format!("request id {id} is not the invocation in progress"))
}

fn json(status: StatusCode, error_type: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}
