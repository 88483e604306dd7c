//! Function routes: match, build the API Gateway v2 event, dispatch, map the result back.
//! Error statuses for routes are decided here and only here:
//!
//! | outcome | status | `x-nimbus-error` |
//! |---|---|---|
//! | function returned | from its response | – |
//! | function error (handled or unhandled) | 502 | function |
//! | wasm trap, or CPU or memory limit hit | 500 | function |
//! | invalid function response | 502 | function |
//! | timeout | 504 | function |
//! | runtime crashed / init failed | 502 | function |
//! | no route / wrong method | 404 / 405 | client |
//! | body too large / too slow | 413 / 408 | client |
//! | throttled (cap reached, queue full or wait exceeded) | 429 + Retry-After | platform |
//! | nimbus failure | 500 / 503 | platform |

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

use http::Response;
use http_body_util::Full;
use nimbus_core::{
    Dispatch, DispatchError, ErrorSource, FunctionVersion, HttpRequestHead, Invocation, InvokeOutcome, RuntimeKind,
    Trigger,
};
use serde_json::json;

use crate::event::{build_event, build_response, HttpRequest};
use crate::router::RouteMatch;
use crate::server::{BodyError, Gateway};
use crate::util::{json, new_request_id, set_header, Resp};

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    let request_id = new_request_id();
    let mut resp = route(gw, req, remote, &request_id).await;
    if !resp.headers().contains_key("x-nimbus-request-id") {
        set_header(&mut resp, "x-nimbus-request-id", &request_id);
    }
    resp
}

fn error(status: StatusCode, source: ErrorSource, message: &str, request_id: &str) -> Resp {
    let mut r = json(status, &json!({"message": message, "requestId": request_id}));
    set_header(&mut r, "x-nimbus-error", source.as_str());
    r
}

async fn route(gw: &Gateway, req: Request<Incoming>, remote: SocketAddr, request_id: &str) -> Resp {
    let snapshot = gw.control.snapshot();
    let Some(live) = snapshot.live.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, ErrorSource::Platform, "No deployment is live yet", request_id);
    };
    drop(snapshot);
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned));
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let (route, params) = match live.router.find(host.as_deref(), &method, &path) {
        RouteMatch::Found { route, params } => (route.clone(), params),
        RouteMatch::MethodNotAllowed { allow } => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, ErrorSource::Client, "Method Not Allowed", request_id);
            set_header(&mut r, "allow", &allow);
            return r;
        }
        RouteMatch::NotFound => return error(StatusCode::NOT_FOUND, ErrorSource::Client, "Not Found", request_id),
    };
    let Some(function) = live.functions.get(&route.function).cloned() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorSource::Platform,
            "Route points at a missing function",
            request_id,
        );
    };
    let received_at = Instant::now();
    let received_wall = SystemTime::now();
    let (parts, body) = req.into_parts();
    let body = match gw.read_body(body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, ErrorSource::Client, "Request body is too large", request_id)
        }
        Err(BodyError::TimedOut) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorSource::Client,
                "Request body was not received in time",
                request_id,
            )
        }
        Err(BodyError::Broken) => {
            return error(StatusCode::BAD_REQUEST, ErrorSource::Client, "Request body could not be read", request_id)
        }
    };
    // A wasm component takes the request itself (wasi:http); other runtimes take an event.
    let native = function.spec.runtime == RuntimeKind::Wasm && !route.is_async;
    if native {
        let mut headers = parts.headers;
        forwarded(&mut headers, remote);
        let head = HttpRequestHead {
            method: parts.method,
            uri: parts.uri,
            authority: host.unwrap_or_else(|| "localhost".to_owned()),
            headers,
        };
        return respond(gw, &function, request_id, body, Some(head), (received_at, received_wall)).await;
    }
    let now = chrono::Utc::now();
    let time = now.format("%d/%b/%Y:%H:%M:%S %z").to_string();
    let event = build_event(&HttpRequest {
        method: &method,
        path: &path,
        raw_query: parts.uri.query().unwrap_or_default(),
        version: parts.version,
        headers: &parts.headers,
        body: &body,
        remote,
        request_id,
        route: &route,
        params: &params,
        now_ms: now.timestamp_millis(),
        time: &time,
    });
    let payload = Bytes::from(event.to_string());
    if payload.len() > gw.config.max_payload {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorSource::Client,
            "Request is too large once encoded as an event",
            request_id,
        );
    }
    if route.is_async {
        let idempotency_key = parts.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let req = nimbus_queue::AcceptRequest {
            function: function.spec.name.clone(),
            qualifier: None,
            payload,
            source: nimbus_core::queue::EventSource::Http,
            idempotency_key,
        };
        return match gw.queue.accept(req).await {
            Ok(accepted) => {
                let mut r = json(StatusCode::ACCEPTED, &json!({"requestId": accepted.id, "status": "queued"}));
                set_header(&mut r, "x-nimbus-request-id", &accepted.id);
                r
            }
            Err(nimbus_queue::AcceptError::TooLarge { .. }) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorSource::Client,
                "Request is too large for an async invocation",
                request_id,
            ),
            Err(nimbus_queue::AcceptError::Full { .. }) => {
                let mut r =
                    error(StatusCode::TOO_MANY_REQUESTS, ErrorSource::Platform, "The async queue is full", request_id);
                set_header(&mut r, "retry-after", "1");
                r
            }
            Err(nimbus_queue::AcceptError::Storage(msg)) => {
                tracing::error!(request_id, "async accept failed: {msg}");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorSource::Platform,
                    "The request could not be stored",
                    request_id,
                )
            }
        };
    }
    respond(gw, &function, request_id, payload, None, (received_at, received_wall)).await
}

/// Run the function synchronously and map the outcome to HTTP (the table at the top).
async fn respond(
    gw: &Gateway,
    function: &Arc<FunctionVersion>,
    request_id: &str,
    payload: Bytes,
    http: Option<HttpRequestHead>,
    (received_at, received_wall): (Instant, SystemTime),
) -> Resp {
    let invocation = Invocation {
        request_id: request_id.to_owned(),
        payload,
        timeout: function.spec.timeout,
        trace_id: trace_id(),
        client_context: None,
        trigger: Trigger::Http,
        received_at,
        received_wall,
        http: http.map(Arc::new),
    };
    let result = gw.scheduler.invoke(function.clone(), invocation).await;
    let mut resp = match result {
        Ok(r) => match (r.outcome, r.http) {
            (InvokeOutcome::Success(out), Some(head)) => {
                let mut resp = Response::new(Full::new(out));
                *resp.status_mut() = head.status;
                *resp.headers_mut() = head.headers;
                resp
            }
            (InvokeOutcome::Success(out), None) => match build_response(&out) {
                Ok(resp) => resp,
                Err(msg) => {
                    tracing::warn!(function = %function.spec.name, request_id, "invalid response: {msg}");
                    error(
                        StatusCode::BAD_GATEWAY,
                        ErrorSource::Function,
                        "Invalid response from the function",
                        request_id,
                    )
                }
            },
            // A component that trapped is the server failing, as `wasmtime serve` and Workers say.
            (InvokeOutcome::FunctionError { .. }, _) if function.spec.runtime == RuntimeKind::Wasm => {
                error(StatusCode::INTERNAL_SERVER_ERROR, ErrorSource::Function, "Internal Server Error", request_id)
            }
            (InvokeOutcome::FunctionError { .. }, _) => {
                error(StatusCode::BAD_GATEWAY, ErrorSource::Function, "Internal Server Error", request_id)
            }
        },
        Err(e) => dispatch_error(&e, request_id),
    };
    set_header(&mut resp, "x-nimbus-version", &function.version);
    resp
}

/// Tell the component who called (it sees the request as it arrived, plus these).
fn forwarded(headers: &mut http::HeaderMap, remote: SocketAddr) {
    let ip = remote.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = http::HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
}

fn dispatch_error(e: &DispatchError, request_id: &str) -> Resp {
    let source = e.source_of();
    match e {
        DispatchError::Timeout { .. } => error(StatusCode::GATEWAY_TIMEOUT, source, "Function timed out", request_id),
        DispatchError::Crashed { .. } | DispatchError::InitFailed { .. } | DispatchError::ResponseTooLarge { .. } => {
            error(StatusCode::BAD_GATEWAY, source, "Internal Server Error", request_id)
        }
        DispatchError::Throttled { retry_after, .. } => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, source, "Too Many Requests", request_id);
            set_header(&mut r, "retry-after", &retry_after.as_secs().max(1).to_string());
            r
        }
        DispatchError::ShuttingDown { .. } => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, source, "Service Unavailable", request_id);
            set_header(&mut r, "retry-after", "1");
            r
        }
        DispatchError::PayloadTooLarge { .. } => {
            error(StatusCode::PAYLOAD_TOO_LARGE, source, "Request is too large", request_id)
        }
        DispatchError::NotFound { .. } | DispatchError::QualifierNotFound { .. } => {
            error(StatusCode::NOT_FOUND, source, "Not Found", request_id)
        }
        DispatchError::Platform(msg) => {
            tracing::error!(request_id, "platform error: {msg}");
            error(StatusCode::INTERNAL_SERVER_ERROR, source, "Internal Server Error", request_id)
        }
    }
}

/// An X-Ray style trace id (`Root=1-<epoch hex>-<96 random bits>`), which the runtime clients
/// copy into `_X_AMZN_TRACE_ID`.
pub(crate) fn trace_id() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let [a, b]: [u64; 2] = rand::random();
    format!("Root=1-{secs:08x}-{:08x}{:016x};Sampled=0", a as u32, b)
}
