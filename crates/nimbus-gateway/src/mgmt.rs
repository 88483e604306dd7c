//! The management API under `/v1` (JSON, `Authorization: Bearer <admin token>` or a dashboard
//! session). Its request and response bodies are the types of `nimbus-api` (which lists every
//! endpoint); this module converts nimbus's domain types into them and maps failures to
//! statuses in one place ([`ApiError`]).

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use nimbus_api as api;
use nimbus_control::{DeployError, Deployed};
use nimbus_core::history::{InvocationQuery, LogQuery};
use nimbus_core::queue::{EventStatus, EventView, QueueError};
use nimbus_core::{HistoryError, InvocationRecord};
use serde::de::DeserializeOwned;

use crate::context::{BodyError, Gateway};
use crate::util::{json, query_param, Resp};

/// A failed management call: its status and the [`api::ErrorBody`] sent back.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: api::ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { status, body: api::ErrorBody { error: error.into(), errors: None } }
    }

    fn bad_request(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }

    /// A body that stopped arriving or took too long (see `Gateway::read_body_up_to`).
    fn timed_out() -> Self {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body was not received in time")
    }

    fn internal(error: &impl std::fmt::Display) -> Self {
        tracing::error!("management API: {error}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }

    pub(crate) fn into_response(self) -> Resp {
        json(self.status, &self.body)
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Invalid(d) => ApiError {
                status: StatusCode::BAD_REQUEST,
                body: api::ErrorBody {
                    error: d.to_string().trim_end().to_owned(),
                    errors: Some(d.0.iter().map(ToString::to_string).collect()),
                },
            },
            e if e.is_client_error() => ApiError::bad_request(e.to_string()),
            e => ApiError::internal(&e),
        }
    }
}

type Answer = Result<Resp, ApiError>;

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>) -> Resp {
    if !gw.authorized(&req) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the management API needs `Authorization: Bearer <token>`; the token is in DATA_DIR/admin.token",
        )
        .into_response();
    }
    route(gw, req).await.unwrap_or_else(ApiError::into_response)
}

async fn route(gw: &Gateway, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let decoded: Vec<String> = path
        .split('/')
        .skip(2)
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let q = |key: &str| query_param(req.uri().query(), key);
    match (method, segments.as_slice()) {
        (Method::GET, ["app"]) => Ok(json(StatusCode::OK, &app(gw))),
        (Method::GET, ["deployments"]) => Ok(json(StatusCode::OK, &deployments(gw))),
        (Method::POST, ["deployments"]) => deploy(gw, req).await,
        (Method::POST, ["rollback"]) => rollback(gw, req).await,
        (Method::GET, ["functions"]) => Ok(json(StatusCode::OK, &functions(gw))),
        (Method::GET, ["stats"]) => stats(gw, req.uri().query()).await,
        (Method::GET, ["functions", name, "logs"]) => logs(gw, name, &q).await,
        (Method::GET, ["invocations"]) if q("status").is_some() => events(gw, None, &q).await,
        (Method::GET, ["invocations"]) => invocations(gw, &q).await,
        (Method::GET, ["invocations", id]) => invocation(gw, id).await,
        (Method::GET, ["dlq"]) => events(gw, Some(EventStatus::DeadLettered), &q).await,
        (Method::GET, ["dlq", id]) => dead_letter(gw, id).await,
        (Method::POST, ["dlq", "redrive"]) => redrive(gw, req).await,
        (Method::POST, ["dlq", "purge"]) => purge(gw, req).await,
        (Method::GET, ["queue"]) => {
            let info = api::QueueInfo { depth: gw.queue.depth(), recovered_at_start: gw.queue.recovered() };
            Ok(json(StatusCode::OK, &info))
        }
        (Method::GET, ["usage"]) => usage(gw, &q).await,
        (Method::GET, ["info"]) => Ok(json(StatusCode::OK, &gw.config.info)),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no management endpoint {} {path}", req.method()))),
    }
}

fn limit(q: &impl Fn(&str) -> Option<String>, default: u32) -> u32 {
    q("limit").and_then(|l| l.parse().ok()).unwrap_or(default).clamp(1, 10_000)
}

/// The request body as `T`; an empty body is `T::default()`.
async fn body<T: DeserializeOwned + Default>(
    gw: &Gateway,
    req: Request<Incoming>,
    example: &str,
) -> Result<T, ApiError> {
    let bytes = gw.read_body(req.into_body()).await.map_err(|e| match e {
        BodyError::TimedOut => ApiError::timed_out(),
        _ => ApiError::bad_request("the body could not be read"),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body must be JSON like {example}: {e}")))
}

fn deployments(gw: &Gateway) -> Vec<api::DeploymentSummary> {
    let snap = gw.control.snapshot();
    let live = snap.live.as_ref().map(|l| l.version);
    let mut list: Vec<api::DeploymentSummary> = snap
        .versions
        .values()
        .map(|v| api::DeploymentSummary {
            version: v.version,
            app: v.app.clone(),
            created_ms: v.created_ms,
            live: Some(v.version) == live,
            functions: v.function_names().into_iter().map(str::to_owned).collect(),
        })
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.version));
    list
}

fn app(gw: &Gateway) -> api::AppInfo {
    let live = gw.control.snapshot().live.clone();
    api::AppInfo {
        app: live.as_ref().map(|l| l.app.clone()),
        live: live.as_ref().map(|l| l.version),
        deployments: deployments(gw),
    }
}

fn deployed(d: Deployed) -> api::Deployed {
    let routes = d
        .routes
        .into_iter()
        .map(|r| api::Route {
            methods: match r.methods {
                nimbus_manifest::Methods::Any => api::Methods::Any,
                nimbus_manifest::Methods::List(l) => api::Methods::List(l),
            },
            path: r.path,
            host: r.host,
            function: r.function,
            is_async: r.is_async,
        })
        .collect();
    api::Deployed { version: d.version, app: d.app, changed: d.changed, functions: d.functions, routes }
}

async fn deploy(gw: &Gateway, req: Request<Incoming>) -> Answer {
    let archive = gw.read_body_up_to(req.into_body(), gw.config.max_upload).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the app archive is above the {} MiB upload limit; leave build output and caches out of the app directory",
                gw.config.max_upload / (1024 * 1024)
            ),
        ),
        BodyError::TimedOut => ApiError::timed_out(),
        BodyError::Broken => ApiError::bad_request("the app archive could not be read"),
    })?;
    let d = gw.control.deploy_tar(archive).await?;
    Ok(json(StatusCode::CREATED, &deployed(d)))
}

async fn rollback(gw: &Gateway, req: Request<Incoming>) -> Answer {
    let r: api::RollbackRequest = body(gw, req, "{\"version\": 3}").await?;
    let d = gw.control.rollback(r.version).await?;
    Ok(json(StatusCode::OK, &deployed(d)))
}

fn functions(gw: &Gateway) -> Vec<api::FunctionInfo> {
    let Some(live) = gw.control.snapshot().live.clone() else { return Vec::new() };
    let pools = gw.scheduler.status();
    live.function_names()
        .into_iter()
        .filter_map(|n| live.functions.get(n))
        .map(|f| {
            let s = &f.spec;
            let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            api::FunctionInfo {
                name: s.name.clone(),
                runtime: s.runtime.as_str().to_owned(),
                handler: s.handler.clone(),
                version: f.version.clone(),
                memory_mb: s.memory_mb,
                timeout_ms: ms(s.timeout),
                min_instances: s.min_instances,
                max_instances: s.max_instances,
                keep_alive_ms: ms(s.keep_alive),
                code_digest: f.code_digest.clone(),
                routes: live.router.routes().iter().filter(|r| r.function == s.name).map(|r| r.route_key()).collect(),
                pools: pools.iter().filter(|p| p.function == s.name).map(pool).collect(),
            }
        })
        .collect()
}

fn pool(p: &nimbus_scheduler::PoolStatus) -> api::Pool {
    api::Pool {
        function: p.function.clone(),
        version: p.version.clone(),
        idle: p.idle,
        busy: p.busy,
        starting: p.starting,
        waiting: p.waiting,
        max_instances: p.max_instances,
        cold_starts: p.cold_starts,
        instances: p
            .instances
            .iter()
            .map(|i| api::InstanceInfo {
                id: i.id.clone(),
                pid: i.pid,
                state: match i.state {
                    nimbus_scheduler::InstanceStatus::Busy => api::InstanceState::Busy,
                    nimbus_scheduler::InstanceStatus::Idle => api::InstanceState::Idle,
                },
            })
            .collect(),
    }
}

async fn logs(gw: &Gateway, name: &str, q: &impl Fn(&str) -> Option<String>) -> Answer {
    let after = q("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let query = LogQuery { function: name.to_owned(), after, request_id: q("requestId"), limit: limit(q, 1000) };
    let entries: Vec<api::LogEntry> = gw
        .history
        .logs(&query)
        .await?
        .into_iter()
        .map(|e| api::LogEntry { seq: e.seq, request_id: e.request_id, ts_ms: e.ts_ms, text: e.text })
        .collect();
    let next = entries.last().map_or(after, |e| e.seq);
    Ok(json(StatusCode::OK, &api::LogPage { entries, next }))
}

fn invocation_view(r: InvocationRecord) -> api::Invocation {
    api::Invocation {
        handler_ms: r.duration_ms,
        request_id: r.request_id,
        function: r.function,
        version: r.version,
        trigger: r.trigger.as_str().to_owned(),
        start_ms: r.start_ms,
        duration_ms: r.duration_ms,
        billed_ms: r.billed_ms,
        memory_mb: r.memory_mb,
        max_memory_mb: r.max_memory_mb,
        cold: r.cold,
        init_ms: r.init_ms,
        instance_start_ms: r.instance_start_ms,
        runtime_init_ms: r.runtime_init_ms,
        queue_ms: r.queue_ms,
        status: r.status.as_str().to_owned(),
        error_type: r.error_type,
        error_message: r.error_message,
        instance_id: r.instance_id,
    }
}

async fn invocations(gw: &Gateway, q: &impl Fn(&str) -> Option<String>) -> Answer {
    let query = InvocationQuery { function: q("function"), request_id: q("requestId"), limit: limit(q, 100) };
    let rows: Vec<api::Invocation> = gw.history.invocations(&query).await?.into_iter().map(invocation_view).collect();
    Ok(json(StatusCode::OK, &rows))
}

/// An async event by id, else the invocation record with that request id.
async fn invocation(gw: &Gateway, id: &str) -> Answer {
    if let Some(ev) = gw.queue.store().get(id).await? {
        return Ok(json(StatusCode::OK, &event(ev)));
    }
    let query = InvocationQuery { function: None, request_id: Some(id.to_owned()), limit: 1 };
    match gw.history.invocations(&query).await?.into_iter().next() {
        Some(r) => Ok(json(StatusCode::OK, &invocation_view(r))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no invocation with that id (records are written within a moment of the invocation ending)",
        )),
    }
}

fn event(ev: EventView) -> api::Event {
    api::Event {
        request_id: ev.request_id,
        function: ev.function,
        qualifier: ev.qualifier,
        source: ev.source.as_str().to_owned(),
        status: ev.status.as_str().to_owned(),
        attempts: ev.attempts,
        accepted_ms: ev.accepted_ms,
        updated_ms: ev.updated_ms,
        next_run_ms: ev.next_run_ms,
        last_error_type: ev.last_error_type,
        last_error: ev.last_error,
        reason: ev.reason,
        payload: ev.payload,
        result: ev.result,
        history: ev
            .history
            .into_iter()
            .map(|a| api::Attempt {
                n: a.n,
                started_ms: a.started_ms,
                duration_ms: a.duration_ms,
                outcome: a.outcome.as_str().to_owned(),
                error_type: a.error_type,
                error_message: a.error_message,
            })
            .collect(),
    }
}

async fn dead_letter(gw: &Gateway, id: &str) -> Answer {
    match gw.queue.store().get(id).await? {
        Some(ev) if ev.status == EventStatus::DeadLettered => Ok(json(StatusCode::OK, &event(ev))),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead-lettered event {id}; `nimbus dlq ls` lists them"),
        )),
    }
}

async fn events(gw: &Gateway, status: Option<EventStatus>, q: &impl Fn(&str) -> Option<String>) -> Answer {
    let status = match (status, q("status")) {
        (Some(s), _) => Some(s),
        (None, None) => None,
        (None, Some(s)) => Some(EventStatus::parse(&s).ok_or_else(|| {
            let all = EventStatus::ALL.map(EventStatus::as_str).join(", ");
            ApiError::bad_request(format!("status {s:?} is not one of {all}"))
        })?),
    };
    let function = q("function");
    let list = gw.queue.store().list(status, function.as_deref(), limit(q, 100)).await?;
    Ok(json(StatusCode::OK, &list.into_iter().map(event).collect::<Vec<_>>()))
}

async fn redrive(gw: &Gateway, req: Request<Incoming>) -> Answer {
    let r: api::RedriveRequest = body(gw, req, "{\"ids\": [\"…\"]} or {\"all\": true}").await?;
    if r.ids.is_empty() && !r.all {
        return Err(ApiError::bad_request("name the events to redrive: {\"ids\": [\"…\"]}, or {\"all\": true}"));
    }
    let n = gw.queue.store().redrive(&r.ids, r.function.as_deref(), nimbus_core::ids::now_ms()).await?;
    gw.queue.queued(n);
    Ok(json(StatusCode::OK, &api::Redriven { redriven: n }))
}

async fn purge(gw: &Gateway, req: Request<Incoming>) -> Answer {
    let r: api::PurgeRequest = body(gw, req, "{\"function\": \"f\"}").await?;
    let n = gw.queue.store().purge(r.function.as_deref()).await?;
    Ok(json(StatusCode::OK, &api::Purged { purged: n }))
}

async fn usage(gw: &Gateway, q: &impl Fn(&str) -> Option<String>) -> Answer {
    let pricing = gw.control.snapshot().live.as_ref().map(|l| l.pricing.clone()).unwrap_or_default();
    let query = crate::usage::parse_query(q, nimbus_core::ids::now_ms(), pricing).map_err(ApiError::bad_request)?;
    let rows = gw.history.usage(query.since_ms).await?;
    Ok(json(StatusCode::OK, &crate::usage::report(&query, &rows)))
}

async fn stats(gw: &Gateway, query: Option<&str>) -> Answer {
    let (q, window) = {
        let snapshot = gw.control.snapshot();
        crate::stats::stats_query(query, &|f| snapshot.knows_function(f)).map_err(ApiError::bad_request)?
    };
    let stats = gw.history.stats(&q).await?;
    Ok(json(StatusCode::OK, &crate::stats::report(stats, window)))
}
