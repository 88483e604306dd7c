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
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use nimbus_control::{DeploymentView, RouteMatch};
use nimbus_core::queue::EventSource;
use nimbus_core::{
    Dispatch, DispatchError, ErrorSource, FunctionVersion, HttpRequestHead, Invocation, InvokeOutcome, RuntimeKind,
    Trigger,
};
use nimbus_manifest::RouteSpec;
use serde_json::json;

use crate::body::{whole, GwBody, GwResp};
use crate::context::{BodyError, Gateway};
use crate::edge::cache::{Lookup, Origin, Profiled};
use crate::event::{build_event, build_response, HttpRequest};
use crate::util::{json, set_header, Resp, X_NIMBUS_REQUEST_ID, X_NIMBUS_VERSION};

/// A request answered by the gateway instead of the function: the status, who is at fault
/// (`x-nimbus-error`) and a short message (the JSON body).
#[derive(Debug)]
pub(crate) struct RouteError {
    status: StatusCode,
    source: ErrorSource,
    message: &'static str,
    /// Extra headers: `allow` on 405, `retry-after` on 429 and 503.
    header: Option<(&'static str, String)>,
}

impl RouteError {
    pub(crate) fn new(status: StatusCode, source: ErrorSource, message: &'static str) -> Self {
        RouteError { status, source, message, header: None }
    }

    fn with(mut self, name: &'static str, value: String) -> Self {
        self.header = Some((name, value));
        self
    }

    pub(crate) fn into_response(self, request_id: &str) -> Resp {
        let mut r = json(self.status, &json!({"message": self.message, "requestId": request_id}));
        set_header(&mut r, "x-nimbus-error", self.source.as_str());
        if let Some((name, value)) = &self.header {
            set_header(&mut r, *name, value);
        }
        r
    }
}

impl From<BodyError> for RouteError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => {
                RouteError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorSource::Client, "Request body is too large")
            }
            BodyError::TimedOut => RouteError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorSource::Client,
                "Request body was not received in time",
            ),
            BodyError::Broken => {
                RouteError::new(StatusCode::BAD_REQUEST, ErrorSource::Client, "Request body could not be read")
            }
        }
    }
}

impl From<&DispatchError> for RouteError {
    fn from(e: &DispatchError) -> Self {
        let source = e.source_of();
        let error = |status, message| RouteError::new(status, source, message);
        match e {
            DispatchError::Timeout { .. } => error(StatusCode::GATEWAY_TIMEOUT, "Function timed out"),
            DispatchError::Crashed { .. }
            | DispatchError::InitFailed { .. }
            | DispatchError::ResponseTooLarge { .. } => error(StatusCode::BAD_GATEWAY, "Internal Server Error"),
            DispatchError::Throttled { retry_after, .. } => error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
                .with("retry-after", retry_after.as_secs().max(1).to_string()),
            DispatchError::ShuttingDown { .. } => {
                error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").with("retry-after", "1".into())
            }
            DispatchError::PayloadTooLarge { .. } => error(StatusCode::PAYLOAD_TOO_LARGE, "Request is too large"),
            DispatchError::NotFound { .. } | DispatchError::QualifierNotFound { .. } => {
                error(StatusCode::NOT_FOUND, "Not Found")
            }
            DispatchError::Platform(msg) => {
                tracing::error!("platform error: {msg}");
                error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
        }
    }
}

impl From<crate::edge::traffic::Unserved> for RouteError {
    fn from(e: crate::edge::traffic::Unserved) -> Self {
        use crate::edge::traffic::Unserved;
        match e {
            Unserved::UnknownPreview => RouteError::new(
                StatusCode::NOT_FOUND,
                ErrorSource::Client,
                "No deployment has this preview host's version; `nimbus ls` lists them",
            ),
            Unserved::NothingLive => {
                RouteError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorSource::Platform, "No deployment is live yet")
            }
        }
    }
}

impl From<nimbus_queue::AcceptError> for RouteError {
    fn from(e: nimbus_queue::AcceptError) -> Self {
        match e {
            nimbus_queue::AcceptError::TooLarge { .. } => RouteError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorSource::Client,
                "Request is too large for an async invocation",
            ),
            nimbus_queue::AcceptError::Full { .. } => {
                RouteError::new(StatusCode::TOO_MANY_REQUESTS, ErrorSource::Platform, "The async queue is full")
                    .with("retry-after", "1".into())
            }
            nimbus_queue::AcceptError::Storage(msg) => {
                tracing::error!("async accept failed: {msg}");
                RouteError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorSource::Platform,
                    "The request could not be stored",
                )
            }
        }
    }
}

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>, remote: SocketAddr) -> GwResp {
    let request_id = nimbus_core::ids::new_request_id();
    let started = std::time::Instant::now();
    let chosen = crate::edge::traffic::choose_for(&gw.control.snapshot(), gw.config.preview_domain.as_deref(), &req);
    let version = chosen.as_ref().ok().map(|c| c.view.version);
    let mut out = crate::edge::Outgoing::default();
    let mut resp = match chosen {
        Ok(chosen) => crate::edge::traffic::answer(
            route(gw, req, remote, &request_id, &mut out, chosen.view).await,
            chosen.set_cookie,
        ),
        Err(e) => Err(e.into()),
    }
    .unwrap_or_else(|e| whole(e.into_response(&request_id)));
    out.apply(resp.headers_mut());
    if !resp.headers().contains_key(X_NIMBUS_REQUEST_ID) {
        set_header(&mut resp, X_NIMBUS_REQUEST_ID, &request_id);
    }
    crate::edge::traffic::finish(&*gw.control, &mut resp, version, started);
    resp
}

async fn route(
    gw: &Gateway,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    request_id: &str,
    out: &mut crate::edge::Outgoing,
    live: Arc<DeploymentView>,
) -> Result<GwResp, RouteError> {
    let plan = match before_route(gw, &mut req, remote, out, &live) {
        Ok(plan) => plan,
        Err((status, location)) => return Ok(whole(redirect(status, &location))),
    };
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned));
    let (head, body) = req.into_parts();
    if let Some(answer) = crate::edge::preflight(&plan, &live, host.as_deref(), &head) {
        return Ok(whole(preflight_response(answer, request_id)));
    }
    let mut req = Request::from_parts(head, body);
    let (route, params) = match find(&live, host.as_deref(), req.method().as_str(), req.uri().path()) {
        Ok(found) => found,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return crate::edge::assets::for_request(&live, &req).await.ok_or(e)
        }
        Err(e) => return Err(e),
    };
    out.cors = route.cors.clone();
    let claims = crate::edge::authorize(&plan, route, req.headers_mut())
        .await
        .map_err(|(denied, bearer)| unauthorized(&denied, bearer, &live.app))?;
    let function = live.functions.get(&route.function).cloned().ok_or(RouteError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorSource::Platform,
        "Route points at a missing function",
    ))?;
    if let Some(claims) = &claims {
        req.extensions_mut().insert(claims.clone());
    }
    let limited = match crate::edge::limits::step(&gw.limiter, route, req.headers(), req.extensions(), remote).await {
        Ok(limited) => limited,
        Err(refused) => return Ok(whole(refused)),
    };
    let (parts, body) = req.into_parts();
    let body = gw.read_body(body).await?;
    let route = Arc::clone(route);
    let (remote, request_id) = (remote, request_id.to_owned());
    let call = Arc::new(Call { function, route, params, parts, host, body, remote, request_id, claims });
    let mut resp = match cache_step(gw, &call, live.version) {
        Some((lookup, origin)) => crate::edge::cache::serve(&gw.cache, lookup, origin).await,
        None => Call::run_once(call, gw).await?,
    };
    for (name, value) in limited.iter().flatten() {
        set_header(&mut resp, *name, value);
    }
    Ok(resp)
}

/// Edge steps 2 and 3 before the route: who the client is and where from, what the way out
/// needs to know, then redirects (the `Err`: status and location) and rewrites (which change
/// the path).
fn before_route<'g>(
    gw: &'g Gateway,
    req: &mut Request<Incoming>,
    remote: SocketAddr,
    out: &mut crate::edge::Outgoing,
    live: &DeploymentView,
) -> Result<crate::edge::PlanRef<'g>, (StatusCode, String)> {
    let client = crate::edge::client::client_ip(req.headers(), remote);
    crate::edge::geo::annotate(gw.config.geoip.as_deref(), req.headers_mut(), client);
    let plan = gw.edge.plan(live);
    if plan.rules.has_headers() {
        out.path = req.uri().path().to_owned();
    }
    if !plan.cors.is_empty() {
        out.origin = req.headers().get(http::header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    }
    if plan.decorates() {
        out.plan = plan.for_way_out();
    }
    match crate::edge::rules(&plan, req) {
        Some(redirect) => Err(redirect),
        None => Ok(plan),
    }
}

/// Edge step 7, the cache: the lookup and the function call behind it when the route caches
/// and the request is a GET or HEAD; `None` otherwise.
fn cache_step(gw: &Gateway, call: &Arc<Call>, version: u64) -> Option<(Lookup, Origin)> {
    if !crate::edge::cache::cacheable(&call.route, &call.parts.method) {
        return None;
    }
    let me = gw.me.upgrade()?;
    // The live alias's version, not the answering one: a weighted split answers from two
    // versions without emptying the cache; the answering version is part of the key.
    if let Some(live) = gw.control.snapshot().live.as_ref() {
        gw.cache.follow(live.version);
    }
    let lookup = Lookup::new(&call.parts, call.host.as_deref(), version, call.clone());
    let call = call.clone();
    let origin: Origin = Arc::new(move |extra| {
        let (gw, call) = (me.clone(), call.clone());
        Box::pin(async move {
            match call.run(&gw, &extra).await {
                Ok(resp) => resp,
                Err(e) => whole(e.into_response(&call.request_id)),
            }
        })
    });
    Some((lookup, origin))
}

impl Profiled for Call {
    fn cache_profile(&self) -> Option<&nimbus_manifest::CacheProfile> {
        self.route.cache_profile.as_ref()
    }
}

/// One request to a function route, matched and admitted: what calling the function takes
/// (kept whole, so the response cache can call again to revalidate).
pub(crate) struct Call {
    pub function: Arc<FunctionVersion>,
    pub route: Arc<RouteSpec>,
    pub params: Vec<(String, String)>,
    pub parts: Parts,
    pub host: Option<String>,
    pub body: Bytes,
    pub remote: SocketAddr,
    pub request_id: String,
    /// What the route's auth step verified (for the event's `requestContext.authorizer`).
    pub claims: Option<crate::edge::Claims>,
}

impl Call {
    /// Call the function, with `extra` request headers (a revalidation's conditional ones).
    pub(crate) async fn run(&self, gw: &Gateway, extra: &http::HeaderMap) -> Result<GwResp, RouteError> {
        let mut parts = Request::new(()).into_parts().0;
        (parts.method, parts.uri, parts.version) =
            (self.parts.method.clone(), self.parts.uri.clone(), self.parts.version);
        parts.headers = self.parts.headers.clone();
        parts.headers.extend(extra.clone());
        self.dispatch(gw, parts, self.host.clone()).await
    }

    /// Call the function once, moving the request head when nothing else holds the call (the
    /// common case: no cache), so an uncached route copies nothing.
    async fn run_once(call: Arc<Call>, gw: &Gateway) -> Result<GwResp, RouteError> {
        match Arc::try_unwrap(call) {
            Ok(mut call) => {
                let parts = std::mem::replace(&mut call.parts, Request::new(()).into_parts().0);
                let host = call.host.take();
                call.dispatch(gw, parts, host).await
            }
            Err(shared) => shared.run(gw, &http::HeaderMap::new()).await,
        }
    }

    /// `host` is the request's (moved here, as `parts` is, when nothing else holds the call).
    async fn dispatch(&self, gw: &Gateway, parts: Parts, host: Option<String>) -> Result<GwResp, RouteError> {
        let (function, route, request_id) = (&self.function, &self.route, self.request_id.as_str());
        // A wasm component takes the request itself (wasi:http, no trace id); other runtimes
        // take an event.
        let native = function.spec.runtime == RuntimeKind::Wasm && !route.is_async;
        let new = if native { Invocation::untraced } else { Invocation::new };
        let received = new(request_id.to_owned(), Bytes::new(), Trigger::Http, function.spec.timeout);
        if native {
            let head = native_head(parts, host, self.remote);
            let invocation = Invocation { payload: self.body.clone(), http: Some(Arc::new(head)), ..received };
            return Ok(respond(gw, function, invocation, request_id).await);
        }
        let payload = event_payload(
            gw,
            &parts,
            &self.body,
            self.remote,
            request_id,
            (route, &self.params),
            self.claims.as_ref(),
        )?;
        if route.is_async {
            return accept_async(gw, function, &parts, payload).await.map(whole);
        }
        Ok(respond(gw, function, Invocation { payload, ..received }, request_id).await)
    }
}

/// A matched route's path parameters, in order.
type Params = Vec<(String, String)>;

/// The route a request takes, shared with the live deployment.
fn find<'a>(
    live: &'a DeploymentView,
    host: Option<&str>,
    method: &str,
    path: &str,
) -> Result<(&'a Arc<RouteSpec>, Params), RouteError> {
    match live.router.find(host, method, path) {
        RouteMatch::Found { route, params } => Ok((route, params)),
        RouteMatch::MethodNotAllowed { allow } => {
            Err(RouteError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorSource::Client, "Method Not Allowed")
                .with("allow", allow))
        }
        RouteMatch::NotFound => Err(RouteError::new(StatusCode::NOT_FOUND, ErrorSource::Client, "Not Found")),
    }
}

/// A redirect rule's answer (edge step 3).
fn redirect(status: StatusCode, location: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    set_header(&mut r, "location", location);
    r
}

/// A CORS preflight's answer (edge step 4): 204 with the allowed origin, methods and headers,
/// or 403 when the origin, method or a header is not allowed.
fn preflight_response(allowed: Result<Vec<(&'static str, String)>, ()>, request_id: &str) -> Resp {
    match allowed {
        Ok(headers) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            for (name, value) in headers {
                set_header(&mut r, name, &value);
            }
            r
        }
        Err(()) => RouteError::new(StatusCode::FORBIDDEN, ErrorSource::Client, "CORS request not allowed")
            .into_response(request_id),
    }
}

/// 401 for a request the route's auth policy refused (edge step 5), with its challenge.
fn unauthorized(denied: &crate::edge::auth::Denied, bearer: bool, app: &str) -> RouteError {
    RouteError::new(StatusCode::UNAUTHORIZED, ErrorSource::Client, "Unauthorized")
        .with("www-authenticate", denied.challenge(bearer, app))
}

/// The request head as a wasm component sees it: as it arrived, plus `x-forwarded-*`.
fn native_head(parts: Parts, host: Option<String>, remote: SocketAddr) -> HttpRequestHead {
    let mut headers = parts.headers;
    forwarded(&mut headers, remote);
    HttpRequestHead {
        method: parts.method,
        uri: parts.uri,
        authority: host.unwrap_or_else(|| "localhost".to_owned()),
        headers,
    }
}

/// The API Gateway v2 event for a process runtime, within the payload limit.
fn event_payload(
    gw: &Gateway,
    parts: &Parts,
    body: &Bytes,
    remote: SocketAddr,
    request_id: &str,
    (route, params): (&RouteSpec, &[(String, String)]),
    claims: Option<&crate::edge::Claims>,
) -> Result<Bytes, RouteError> {
    let now = chrono::Utc::now();
    let time = now.format("%d/%b/%Y:%H:%M:%S %z").to_string();
    let mut event = build_event(&HttpRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or_default(),
        version: parts.version,
        headers: &parts.headers,
        body,
        remote,
        request_id,
        route,
        params,
        now_ms: now.timestamp_millis(),
        time: &time,
    });
    if let Some(claims) = claims.filter(|c| !c.0.contains_key("apiKeyId")) {
        event.set_authorizer(crate::edge::auth::authorizer(claims));
    }
    // Text keys and JSON values only: encoding cannot fail, but a failure would be nimbus's.
    let payload = Bytes::from(serde_json::to_vec(&event).map_err(|_| {
        RouteError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorSource::Platform,
            "The request could not be encoded as an event",
        )
    })?);
    if payload.len() > gw.config.max_payload {
        return Err(RouteError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorSource::Client,
            "Request is too large once encoded as an event",
        ));
    }
    Ok(payload)
}

/// `async = true`: store the event durably, answer 202 with its id.
async fn accept_async(
    gw: &Gateway,
    function: &FunctionVersion,
    parts: &Parts,
    payload: Bytes,
) -> Result<Resp, RouteError> {
    let idempotency_key = parts.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let req = nimbus_queue::AcceptRequest {
        function: function.spec.name.clone(),
        qualifier: None,
        payload,
        source: EventSource::Http,
        idempotency_key,
    };
    let accepted = gw.queue.accept(req).await?;
    let mut r = json(StatusCode::ACCEPTED, &json!({"requestId": accepted.id, "status": "queued"}));
    set_header(&mut r, "x-nimbus-request-id", &accepted.id);
    Ok(r)
}

/// Run the function synchronously and map the outcome to HTTP (the table at the top).
async fn respond(gw: &Gateway, function: &Arc<FunctionVersion>, invocation: Invocation, request_id: &str) -> GwResp {
    let result = gw.scheduler.invoke(function.clone(), invocation).await;
    let mut resp = match result {
        Ok(r) => match r.stream.as_ref().and_then(|s| s.take_body()).filter(|_| passes_through(function, &r)) {
            Some(body) => Ok(streamed_response(r.http, body)),
            None => outcome_response(function, request_id, r.outcome, r.http).map(whole),
        },
        Err(e) => Err(RouteError::from(&e)),
    }
    .unwrap_or_else(|e| whole(e.into_response(request_id)));
    set_header(&mut resp, X_NIMBUS_VERSION, &function.version);
    resp
}

/// Whether a result's body goes to the client as it arrives: a streaming function's, or one
/// that answered in HTTP terms (wasm). A buffered process function's early result (its
/// response went out before its `waitUntil` work ended) carries the whole API Gateway document
/// in its outcome, which is mapped as usual.
fn passes_through(function: &FunctionVersion, r: &nimbus_core::InvokeResult) -> bool {
    function.spec.response_mode == nimbus_core::ResponseMode::Streaming || r.http.is_some()
}

/// A streamed response: the head the function gave (200 `application/octet-stream` when it
/// gave none, as a Lambda function URL), then the body as it arrives, cut on a mid-stream
/// error or timeout.
fn streamed_response(head: Option<nimbus_core::HttpResponseHead>, body: nimbus_core::BodyReceiver) -> GwResp {
    let mut resp = Response::new(GwBody::Cut(body, None));
    match head {
        Some(head) => {
            *resp.status_mut() = head.status;
            *resp.headers_mut() = head.headers;
        }
        None => {
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
        }
    }
    resp
}

fn outcome_response(
    function: &FunctionVersion,
    request_id: &str,
    outcome: InvokeOutcome,
    head: Option<nimbus_core::HttpResponseHead>,
) -> Result<Resp, RouteError> {
    match (outcome, head) {
        (InvokeOutcome::Success(out), Some(head)) => {
            let mut resp = Response::new(Full::new(out));
            *resp.status_mut() = head.status;
            *resp.headers_mut() = head.headers;
            Ok(resp)
        }
        (InvokeOutcome::Success(out), None) => build_response(&out).map_err(|msg| {
            tracing::warn!(function = %function.spec.name, request_id, "invalid response: {msg}");
            RouteError::new(StatusCode::BAD_GATEWAY, ErrorSource::Function, "Invalid response from the function")
        }),
        // A component that trapped is the server failing, as `wasmtime serve` and Workers say.
        (InvokeOutcome::FunctionError { .. }, _) if function.spec.runtime == RuntimeKind::Wasm => {
            Err(RouteError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorSource::Function, "Internal Server Error"))
        }
        (InvokeOutcome::FunctionError { .. }, _) => {
            Err(RouteError::new(StatusCode::BAD_GATEWAY, ErrorSource::Function, "Internal Server Error"))
        }
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// Tell the component who called (it sees the request as it arrived, plus these).
fn forwarded(headers: &mut http::HeaderMap, remote: SocketAddr) {
    let ip = ip_text(crate::edge::client::client_ip(headers, remote));
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = http::HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, http::HeaderValue::from_static("http"));
}

/// `ip` as text. IPv4 by hand, with `itoa`: `Ipv4Addr`'s `Display` goes through the formatting
/// machinery for each octet, about 1.3k instructions on every request's `X-Forwarded-For`.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut text = String::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_text_writes_addresses_as_display_does() {
        for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.0.12.9", "::1", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
