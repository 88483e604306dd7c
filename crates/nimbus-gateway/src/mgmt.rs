//! The management API under `/v1` (JSON; `Authorization: Bearer <token>` or a dashboard
//! session). Its request and response bodies are the types of `nimbus-api` (which lists every
//! endpoint); this module converts nimbus's domain types into them and maps failures to
//! statuses in one place ([`ApiError`]). Every request is authenticated, then routed through
//! the endpoint table (`scopes.rs`), whose row says the scope it needs; deploys, rollbacks,
//! redrives, purges, token and access key changes are written to the audit log before they are answered.

use std::net::{IpAddr, SocketAddr};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use nimbus_api as api;
use nimbus_control::{AccessKeyError, DeployError, Deployed, TokenError};
use nimbus_core::history::{InvocationQuery, LogQuery};
use nimbus_core::ids::now_ms;
use nimbus_core::kv::MAX_VALUE_BYTES;
use nimbus_core::meter::StorageKind;
use nimbus_core::queue::{EventStatus, EventView, QueueError};
use nimbus_core::{AccessKeyRecord, AuditAction, AuditError, HistoryError, InvocationRecord, TokenRecord};
use serde::de::DeserializeOwned;

use crate::context::{BodyError, Credential, Gateway};
use crate::credentials;
use crate::kv_api;
use crate::merge;
use crate::queues_api;
use crate::scopes::{self, Endpoint, Matched};
use crate::util::{json, query_param, Resp};
use nimbus_core::messages::MqError;
use nimbus_core::peers::{Peers, PEER_HEADER};

mod traffic;

/// A failed management call: its status and the [`api::ErrorBody`] sent back.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: api::ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { status, body: api::ErrorBody { error: error.into(), errors: None, code: None } }
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

impl From<MqError> for ApiError {
    fn from(e: MqError) -> Self {
        match e {
            MqError::NoSuchQueue(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "there is no queue {name}; `nimbus queues ls` lists them, `[queues.{name}]` in nimbus.toml declares it"
                ),
            ),
            e if e.is_caller_fault() => ApiError::bad_request(e.to_string()),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
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

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => ApiError::bad_request(m),
            e @ TokenError::NoSuchToken(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            TokenError::Registry(e) => ApiError::internal(&e),
        }
    }
}

impl From<AccessKeyError> for ApiError {
    fn from(e: AccessKeyError) -> Self {
        match e {
            AccessKeyError::Invalid(m) => ApiError::bad_request(m),
            e @ AccessKeyError::NoSuchKey(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            AccessKeyError::Registry(e) => ApiError::internal(&e),
        }
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
                    code: None,
                },
            },
            e @ DeployError::OutsideFunctions(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            e if e.is_client_error() => ApiError::bad_request(e.to_string()),
            e => ApiError::internal(&e),
        }
    }
}

type Answer = Result<Resp, ApiError>;

/// Who made a management request, and from where: what the audit log records.
struct Caller<'a> {
    gw: &'a Gateway,
    who: &'a Credential,
    source: IpAddr,
}

impl Caller<'_> {
    /// The functions a deploy or rollback may change: a deploy token's list, when it has one.
    fn limit(&self) -> Option<&[String]> {
        Some(self.who.functions()).filter(|f| !f.is_empty())
    }

    /// Record an action and how it ended.
    async fn audit<T>(&self, action: AuditAction, target: String, result: &Result<T, ApiError>) {
        let outcome = result.as_ref().map(drop).map_err(|e| e.body.error.clone());
        self.gw.audit_action(self.who, self.source, action, target, outcome).await;
    }
}

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let what = format!("{} {path}", req.method());
    let source = crate::edge::client::client_ip(req.headers(), remote);
    if req.headers().contains_key(PEER_HEADER) {
        return peer_call(gw, req, &path).await;
    }
    let who = match gw.authenticate(req.headers()) {
        Ok(who) => who,
        Err(refused) => {
            gw.refused(source, &what, &refused);
            let message = format!(
                "{}: the management API needs `Authorization: Bearer <token>`, with the admin token \
                 (DATA_DIR/admin.token) or one from `nimbus token create`",
                refused.reason()
            );
            return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        }
    };
    let decoded: Vec<String> =
        path.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let Some(matched) = scopes::find(req.method().as_str(), &segments).filter(|m| m.endpoint != Endpoint::Invoke)
    else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no management endpoint {what}")).into_response();
    };
    if !who.scope().grants(matched.scope) {
        let message = scopes::needs(&what, matched.scope, &who.describe(), who.scope());
        gw.denied(source, &what, &who, message.clone());
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    let caller = Caller { gw, who: &who, source };
    route(&caller, req, matched).await.unwrap_or_else(ApiError::into_response)
}

async fn route(c: &Caller<'_>, req: Request<Incoming>, m: Matched) -> Answer {
    let gw = c.gw;
    let q = |key: &str| query_param(req.uri().query(), key);
    let (param, peers) = (m.param.as_deref().unwrap_or_default(), gw.peers.as_deref());
    match m.endpoint {
        Endpoint::App => Ok(json(StatusCode::OK, &app(gw))),
        Endpoint::Deployments => Ok(json(StatusCode::OK, &deployments(gw))),
        Endpoint::Deploy => deploy(c, req).await,
        Endpoint::Rollback => rollback(c, req).await,
        Endpoint::Functions => Ok(json(StatusCode::OK, &functions(gw))),
        Endpoint::Stats => stats(gw, req.uri().query(), peers).await,
        Endpoint::Logs => logs(gw, param, &q, peers).await,
        Endpoint::Invocations if q("status").is_some() => events(gw, None, &q).await,
        Endpoint::Invocations => invocations(gw, &q, peers).await,
        Endpoint::Invocation => invocation(gw, param, peers).await,
        Endpoint::Dlq => events(gw, Some(EventStatus::DeadLettered), &q).await,
        Endpoint::DeadLetter => dead_letter(gw, param).await,
        Endpoint::Redrive => redrive(c, req).await,
        Endpoint::Purge => purge(c, req).await,
        Endpoint::Queue => Ok(json(StatusCode::OK, &queue_info(gw))),
        Endpoint::Usage => usage(gw, req.uri().query(), peers).await,
        Endpoint::Info => Ok(json(StatusCode::OK, &gw.config.info)),
        Endpoint::CreateToken => create_token(c, req).await,
        Endpoint::Tokens => {
            let now = now_ms();
            let list: Vec<api::TokenInfo> =
                gw.control.tokens().iter().map(|t| credentials::live_token_info(t, now)).collect();
            Ok(json(StatusCode::OK, &list))
        }
        Endpoint::RevokeToken => revoke_token(c, param).await,
        Endpoint::CreateKey => create_key(c, req).await,
        Endpoint::Keys => {
            let now = now_ms();
            let list: Vec<api::AccessKeyInfo> =
                gw.control.access_keys().iter().map(|k| credentials::access_key_info(k, now)).collect();
            Ok(json(StatusCode::OK, &list))
        }
        Endpoint::RevokeKey => revoke_key(c, param).await,
        Endpoint::Audit => audit(gw, &q).await,
        Endpoint::KvNamespaces
        | Endpoint::KvKeys
        | Endpoint::KvDeleteNamespace
        | Endpoint::KvGet
        | Endpoint::KvPut
        | Endpoint::KvIncrement
        | Endpoint::KvDelete => Ok(kv(c, req, m).await),
        Endpoint::Buckets => buckets(gw).await,
        Endpoint::DeleteBucket => delete_bucket(c, param, q("force").is_some_and(|f| f == "true")).await,
        Endpoint::Queues
        | Endpoint::MessageQueue
        | Endpoint::QueueMessages
        | Endpoint::PurgeQueue
        | Endpoint::RedriveQueue => message_queues(c, m.endpoint, param, &q).await,
        // Not under /v1: `handle` never routes it here.
        Endpoint::Invoke => Err(ApiError::new(StatusCode::NOT_FOUND, "the Invoke API is not under /v1")),
        Endpoint::Traffic | Endpoint::SetTraffic => traffic::route(c, req, m.endpoint, param).await,
        Endpoint::CachePurge => cache_purge(c, req).await,
        Endpoint::Nodes => nodes(gw).await,
    }
}

/// `GET /v1/nodes`: the live nodes, by name.
async fn nodes(gw: &Gateway) -> Answer {
    let list = gw.nodes.nodes().await.map_err(|e| ApiError::internal(&e))?;
    let list: Vec<api::NodeInfo> = list
        .into_iter()
        .map(|n| api::NodeInfo {
            name: n.name,
            url: n.url,
            version: n.version,
            started_ms: n.started_ms,
            in_flight: n.in_flight,
            load_average: n.load_average,
            warm_instances: n.warm_instances,
            last_seen_ms: n.last_seen_ms,
        })
        .collect();
    Ok(json(StatusCode::OK, &list))
}

fn queue_info(gw: &Gateway) -> api::QueueInfo {
    api::QueueInfo { depth: gw.queue.depth(), recovered_at_start: gw.queue.recovered() }
}

/// `POST /v1/cache/purge`: drop the response cache's entries by path prefix or cache tag.
async fn cache_purge(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    let r: api::CachePurgeRequest = body(c.gw, req, "{\"prefix\": \"/blog/\"}").await?;
    if r.prefix.is_none() && r.tag.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "say what to purge: \"prefix\" (\"/\" for everything) or \"tag\"",
        ));
    }
    let target = match (&r.prefix, &r.tag) {
        (Some(prefix), Some(tag)) => format!("prefix {prefix}, tag {tag}"),
        (Some(prefix), None) => format!("prefix {prefix}"),
        (None, tag) => format!("tag {}", tag.as_deref().unwrap_or_default()),
    };
    let purge = crate::edge::cache::Purge { prefix: r.prefix, tag: r.tag };
    let purged = u64::try_from(c.gw.cache.purge(&purge)).unwrap_or(u64::MAX);
    let result: Result<u64, ApiError> = Ok(purged);
    c.audit(AuditAction::CachePurge, target, &result).await;
    Ok(json(StatusCode::OK, &api::CachePurged { purged }))
}

/// `/v1/queues…`: the message queues for operators (purge and redrive audited).
async fn message_queues(c: &Caller<'_>, e: Endpoint, param: &str, q: &impl Fn(&str) -> Option<String>) -> Answer {
    let gw = c.gw;
    match e {
        Endpoint::Queues => Ok(json(StatusCode::OK, &queues_api::list(gw).await?)),
        Endpoint::MessageQueue => Ok(json(StatusCode::OK, &queues_api::one(gw, param).await?)),
        Endpoint::QueueMessages => {
            let limit = usize::try_from(limit(q, 10)).unwrap_or(queues_api::MAX_PEEK);
            Ok(json(StatusCode::OK, &queues_api::peek(gw, param, limit).await?))
        }
        Endpoint::PurgeQueue => {
            let result = queues_api::purge(gw, param).await.map_err(ApiError::from);
            c.audit(AuditAction::QueuePurge, format!("queue {param}"), &result).await;
            Ok(json(StatusCode::OK, &result?))
        }
        Endpoint::RedriveQueue => {
            let to = q("to");
            let result = queues_api::redrive(gw, param, to.as_deref()).await.map_err(ApiError::from);
            c.audit(AuditAction::QueueRedrive, format!("queue {param}"), &result).await;
            Ok(json(StatusCode::OK, &result?))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not a message queue endpoint")),
    }
}

/// A `/v1/kv` call: read the value (for a PUT), answer through `kv_api`, and audit a namespace
/// deletion.
async fn kv(c: &Caller<'_>, req: Request<Incoming>, m: Matched) -> Resp {
    let segments = usize::from(m.param.is_some()) + usize::from(m.key.is_some());
    let Some(call) = kv_api::call_of(req.method(), segments) else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such KV call").into_response();
    };
    let (ns, key) = (m.param.unwrap_or_default(), m.key.unwrap_or_default());
    let query = req.uri().query().map(str::to_owned);
    let body = if call == kv_api::Call::Put {
        match c.gw.read_body_up_to(req.into_body(), MAX_VALUE_BYTES).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return kv_api::KvFail::too_large().into_response(),
            Err(BodyError::TimedOut) => return ApiError::timed_out().into_response(),
            Err(BodyError::Broken) => return ApiError::bad_request("the value could not be read").into_response(),
        }
    } else {
        bytes::Bytes::new()
    };
    c.gw.metrics.kv_call(kv_api::call_label(call));
    let request = kv_api::KvRequest { call, ns: &ns, key: &key, query: query.as_deref(), body };
    let result = kv_api::answer(c.gw, request).await;
    if call == kv_api::Call::DeleteNamespace {
        let outcome = result.as_ref().map(drop).map_err(|e| e.message.clone());
        c.gw.audit_action(c.who, c.source, AuditAction::KvDeleteNamespace, format!("KV namespace {ns}"), outcome).await;
    }
    result.unwrap_or_else(|e| {
        c.gw.metrics.kv_error(e.code);
        e.into_response()
    })
}

fn bucket_info(b: nimbus_core::objects::BucketInfo) -> api::BucketInfo {
    api::BucketInfo { name: b.name, objects: b.objects, bytes: b.bytes, created_ms: b.created_ms }
}

async fn buckets(gw: &Gateway) -> Answer {
    let list =
        gw.objects.list_buckets().await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json(StatusCode::OK, &list.into_iter().map(bucket_info).collect::<Vec<_>>()))
}

/// Delete a bucket (with `force`, its objects too). Deploys never delete buckets; this does.
async fn delete_bucket(c: &Caller<'_>, name: &str, force: bool) -> Answer {
    use nimbus_core::ObjectError;
    let result: Result<api::BucketInfo, ApiError> = async {
        let info = c.gw.objects.head_bucket(name).await.ok().flatten();
        match c.gw.objects.delete_bucket(name, force).await {
            Ok(true) => {
                info.map(bucket_info).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the bucket vanished"))
            }
            Ok(false) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("there is no bucket {name}; `nimbus buckets ls` lists them"),
            )),
            Err(e @ ObjectError::BucketNotEmpty(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
            Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }
    .await;
    c.audit(AuditAction::DeleteBucket, name.to_owned(), &result).await;
    Ok(json(StatusCode::OK, &result?))
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

fn deployed(gw: &Gateway, d: Deployed) -> api::Deployed {
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
    api::Deployed {
        version: d.version,
        app: d.app,
        changed: d.changed,
        functions: d.functions,
        routes,
        notes: d.notes,
        preview_domain: gw.config.preview_domain.clone(),
    }
}

async fn deploy(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    if let Some(spec) = traffic::canary(req.uri().query())? {
        return traffic::deploy_canary(c, req, spec).await;
    }
    let result = deploy_archive(c.gw, req, c.limit(), None).await;
    let target = match &result {
        Ok(d) if d.changed => format!("version {} of {}", d.version, d.app),
        Ok(d) => format!("version {} of {} (unchanged)", d.version, d.app),
        Err(_) => "an uploaded app".to_owned(),
    };
    c.audit(AuditAction::Deploy, target, &result).await;
    Ok(json(StatusCode::CREATED, &deployed(c.gw, result?)))
}

async fn deploy_archive(
    gw: &Gateway,
    req: Request<Incoming>,
    only: Option<&[String]>,
    canary: Option<nimbus_control::CanarySpec>,
) -> Result<Deployed, ApiError> {
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
    Ok(match canary {
        Some(spec) => gw.control.deploy_canary(archive, only, spec).await?,
        None => gw.control.deploy_tar(archive, only).await?,
    })
}

async fn rollback(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    let r: Result<api::RollbackRequest, ApiError> = body(c.gw, req, "{\"version\": 3}").await;
    let asked = r.as_ref().ok().and_then(|r| r.version);
    let result = match r {
        Ok(r) => c.gw.control.rollback(r.version, c.limit()).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let target = match (&result, asked) {
        (Ok(d), _) => format!("version {} of {}", d.version, d.app),
        (Err(_), Some(v)) => format!("version {v}"),
        (Err(_), None) => "the version before live".to_owned(),
    };
    c.audit(AuditAction::Rollback, target, &result).await;
    Ok(json(StatusCode::OK, &deployed(c.gw, result?)))
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
        prepared_sandbox: p.prepared,
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
                in_flight: i.in_flight,
            })
            .collect(),
        adaptive_keep_alive: p.adaptive.map(|w| {
            let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            api::AdaptiveKeepAlive {
                keep_alive_ms: ms(w.keep_alive),
                prewarm_ms: ms(w.prewarm),
                representative: w.representative,
                samples: w.samples,
            }
        }),
        in_flight: p.in_flight,
        concurrency: p.concurrency,
    }
}

/// A function's log entries: this node's, and in a cluster every live node's, merged.
async fn logs(gw: &Gateway, name: &str, q: &impl Fn(&str) -> Option<String>, peers: Option<&dyn Peers>) -> Answer {
    let after = q("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let cursor = q("cursor").map(|c| merge::Cursor::parse(&c)).transpose().map_err(ApiError::bad_request)?;
    let cursor = cursor.unwrap_or_default();
    let (request_id, limit) = (q("requestId"), limit(q, 1000));
    let local_after = peers.map_or(after, |p| cursor.after(p.me(), after));
    let query = LogQuery { function: name.to_owned(), after: local_after, request_id: request_id.clone(), limit };
    let entries: Vec<api::LogEntry> = gw
        .history
        .logs(&query)
        .await?
        .into_iter()
        .map(|e| api::LogEntry { seq: e.seq, request_id: e.request_id, ts_ms: e.ts_ms, text: e.text, node: None })
        .collect();
    let Some(peers) = peers else {
        let next = entries.last().map_or(after, |e| e.seq);
        return Ok(json(StatusCode::OK, &api::LogPage { entries, next, cursor: None, missing_nodes: Vec::new() }));
    };
    let rid = request_id.map(|r| format!("&requestId={}", merge::enc(&r))).unwrap_or_default();
    let path = |node: &str| {
        let a = cursor.after(node, after);
        format!("/v1/functions/{}/logs?after={a}&limit={limit}{rid}", merge::enc(name))
    };
    let others = merge::gather::<api::LogPage>(peers, &path).await;
    let page = merge::logs(peers.me(), entries, others, &cursor, after, usize::try_from(limit).unwrap_or(usize::MAX));
    let mut resp = json(StatusCode::OK, &page);
    merge::mark_missing(&mut resp, &page.missing_nodes);
    Ok(resp)
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
        response_ms: r.response_ms,
        node: None,
    }
}

/// Invocation records, newest first: this node's, and in a cluster every live node's, merged.
async fn invocations(gw: &Gateway, q: &impl Fn(&str) -> Option<String>, peers: Option<&dyn Peers>) -> Answer {
    let query = InvocationQuery { function: q("function"), request_id: q("requestId"), limit: limit(q, 100) };
    let (rows, missing) = records(gw, query, peers).await?;
    let mut resp = json(StatusCode::OK, &rows);
    merge::mark_missing(&mut resp, &missing);
    Ok(resp)
}

/// The records `query` selects, and the nodes that did not answer (none without a cluster).
async fn records(
    gw: &Gateway,
    query: InvocationQuery,
    peers: Option<&dyn Peers>,
) -> Result<(Vec<api::Invocation>, Vec<String>), ApiError> {
    let rows: Vec<api::Invocation> = gw.history.invocations(&query).await?.into_iter().map(invocation_view).collect();
    let Some(peers) = peers else { return Ok((rows, Vec::new())) };
    let mut path = format!("/v1/invocations?limit={}", query.limit);
    if let Some(f) = &query.function {
        path.push_str(&format!("&function={}", merge::enc(f)));
    }
    if let Some(r) = &query.request_id {
        path.push_str(&format!("&requestId={}", merge::enc(r)));
    }
    let others = merge::gather::<Vec<api::Invocation>>(peers, &|_| path.clone()).await;
    let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
    Ok((merge::invocations(peers.me(), rows, others.answers, limit), others.missing))
}

/// An async event by id, else the invocation record with that request id (in a cluster,
/// wherever it ran).
async fn invocation(gw: &Gateway, id: &str, peers: Option<&dyn Peers>) -> Answer {
    if let Some(ev) = gw.queue.store().get(id).await? {
        return Ok(json(StatusCode::OK, &event(ev)));
    }
    let query = InvocationQuery { function: None, request_id: Some(id.to_owned()), limit: 1 };
    let (rows, missing) = records(gw, query, peers).await?;
    match rows.into_iter().next() {
        Some(r) => Ok(json(StatusCode::OK, &r)),
        None if !missing.is_empty() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no invocation with that id on the nodes that answered ({} did not)", missing.join(", ")),
        )),
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

/// What a redrive or purge was asked to touch, as the audit log says it.
fn dead_letters(ids: &[String], function: Option<&str>) -> String {
    const SHOWN: usize = 10;
    let of = function.map(|f| format!(" of {f}")).unwrap_or_default();
    if ids.is_empty() {
        return format!("all dead letters{of}");
    }
    let mut listed = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        listed.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    format!("events {listed}{of}")
}

async fn redrive(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    let r: Result<api::RedriveRequest, ApiError> = body(c.gw, req, "{\"ids\": [\"…\"]} or {\"all\": true}").await;
    let (target, result) = match r {
        Ok(r) if r.ids.is_empty() && !r.all => (
            "nothing named".to_owned(),
            Err(ApiError::bad_request("name the events to redrive: {\"ids\": [\"…\"]}, or {\"all\": true}")),
        ),
        Ok(r) => {
            let n = c.gw.queue.store().redrive(&r.ids, r.function.as_deref(), now_ms()).await;
            let n = n.map_err(ApiError::from).inspect(|n| c.gw.queue.queued(*n));
            (dead_letters(&r.ids, r.function.as_deref()), n)
        }
        Err(e) => ("a request that could not be read".to_owned(), Err(e)),
    };
    let target = match &result {
        Ok(n) => format!("{target} ({n} redriven)"),
        Err(_) => target,
    };
    c.audit(AuditAction::DlqRedrive, target, &result).await;
    Ok(json(StatusCode::OK, &api::Redriven { redriven: result? }))
}

async fn purge(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    let r: Result<api::PurgeRequest, ApiError> = body(c.gw, req, "{\"function\": \"f\"}").await;
    let (target, result) = match r {
        Ok(r) => {
            let n = c.gw.queue.store().purge(r.function.as_deref()).await.map_err(ApiError::from);
            (dead_letters(&[], r.function.as_deref()), n)
        }
        Err(e) => ("a request that could not be read".to_owned(), Err(e)),
    };
    let target = match &result {
        Ok(n) => format!("{target} ({n} purged)"),
        Err(_) => target,
    };
    c.audit(AuditAction::DlqPurge, target, &result).await;
    Ok(json(StatusCode::OK, &api::Purged { purged: result? }))
}

/// A token as the audit log describes it (never its secret).
fn token_target(t: &TokenRecord) -> String {
    let mut s = format!("{} (scope {}", t.id, t.scope);
    if let Some(n) = &t.name {
        s.push_str(&format!(", name {n:?}"));
    }
    if !t.functions.is_empty() {
        s.push_str(&format!(", functions {}", t.functions.join(", ")));
    }
    if let Some(e) = t.expires_ms {
        let at = chrono::DateTime::from_timestamp_millis(i64::try_from(e).unwrap_or(i64::MAX)).unwrap_or_default();
        s.push_str(&format!(", expires {}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    s.push(')');
    s
}

async fn create_token(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    let example = "{\"scope\": \"invoke\", \"functions\": [\"f\"], \"expiresIn\": \"30d\", \"name\": \"ci\"}";
    let result = match body::<api::TokenRequest>(c.gw, req, example).await {
        Ok(r) => match credentials::token_spec(r, now_ms()) {
            Ok(spec) => c.gw.control.create_token(spec).await.map_err(ApiError::from),
            Err(m) => Err(ApiError::bad_request(m)),
        },
        Err(e) => Err(e),
    };
    let target = result.as_ref().map_or_else(|_| "a new token".to_owned(), |t| token_target(&t.token.record));
    c.audit(AuditAction::TokenCreate, target, &result).await;
    let created = result?;
    let token = credentials::live_token_info(&created.token, now_ms());
    Ok(json(StatusCode::CREATED, &api::CreatedToken { secret: created.secret, token, warnings: created.warnings }))
}

async fn revoke_token(c: &Caller<'_>, id: &str) -> Answer {
    let result = c.gw.control.revoke_token(id).await.map_err(ApiError::from);
    let target = result.as_ref().map_or_else(|_| id.to_owned(), token_target);
    c.audit(AuditAction::TokenRevoke, target, &result).await;
    Ok(json(StatusCode::OK, &credentials::token_info(&result?, None, now_ms())))
}

/// A managed access key as the audit log describes it (never its secret).
fn key_target(k: &AccessKeyRecord) -> String {
    let info = credentials::access_key_info(k, now_ms());
    let mut grants: Vec<String> = info.buckets.iter().map(|(b, a)| format!("bucket {b}={a}")).collect();
    grants.extend(info.kv.iter().map(|(n, a)| format!("kv {n}={a}")));
    grants.extend(info.functions.iter().map(|f| format!("function {f}")));
    let mut s = format!("{} (name {:?}, {}", k.id, k.name, grants.join(", "));
    if let Some(e) = k.expires_ms {
        let at = chrono::DateTime::from_timestamp_millis(i64::try_from(e).unwrap_or(i64::MAX)).unwrap_or_default();
        s.push_str(&format!(", expires {}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    s.push(')');
    s
}

async fn create_key(c: &Caller<'_>, req: Request<Incoming>) -> Answer {
    let example = "{\"name\": \"ci\", \"buckets\": {\"photos\": \"read\"}, \"expiresIn\": \"30d\"}";
    let result = match body::<api::AccessKeyRequest>(c.gw, req, example).await {
        Ok(r) => match credentials::access_key_spec(r, now_ms()) {
            Ok(spec) => c.gw.control.create_access_key(spec).await.map_err(ApiError::from),
            Err(m) => Err(ApiError::bad_request(m)),
        },
        Err(e) => Err(e),
    };
    let target = result.as_ref().map_or_else(|_| "a new access key".to_owned(), |k| key_target(&k.key));
    c.audit(AuditAction::KeyCreate, target, &result).await;
    let created = result?;
    let key = credentials::access_key_info(&created.key, now_ms());
    let body = api::CreatedAccessKey {
        access_key_id: created.key.id.clone(),
        secret_access_key: created.key.secret.clone(),
        key,
        warnings: created.warnings,
    };
    Ok(json(StatusCode::CREATED, &body))
}

async fn revoke_key(c: &Caller<'_>, id: &str) -> Answer {
    let result = c.gw.control.revoke_access_key(id).await.map_err(ApiError::from);
    let target = result.as_ref().map_or_else(|_| id.to_owned(), |k| key_target(k));
    c.audit(AuditAction::KeyRevoke, target, &result).await;
    Ok(json(StatusCode::OK, &credentials::access_key_info(&*result?, now_ms())))
}

async fn audit(gw: &Gateway, q: &impl Fn(&str) -> Option<String>) -> Answer {
    let query = credentials::audit_query(q, now_ms()).map_err(ApiError::bad_request)?;
    let entries: Vec<api::AuditEntry> =
        gw.audit.entries(&query).await?.into_iter().map(credentials::audit_entry).collect();
    Ok(json(StatusCode::OK, &entries))
}

/// Usage: this node's, and in a cluster every live node's, summed.
async fn usage(gw: &Gateway, query: Option<&str>, peers: Option<&dyn Peers>) -> Answer {
    let report = local_usage(gw, &|key: &str| query_param(query, key)).await?;
    let Some(peers) = peers else { return Ok(json(StatusCode::OK, &report)) };
    let path = format!("/v1/usage?{}", query.unwrap_or_default());
    let report = merge::usage(report, merge::gather(peers, &|_| path.clone()).await);
    let mut resp = json(StatusCode::OK, &report);
    merge::mark_missing(&mut resp, &report.missing_nodes);
    Ok(resp)
}

async fn local_usage(gw: &Gateway, q: &impl Fn(&str) -> Option<String>) -> Result<api::UsageReport, ApiError> {
    let pricing = gw.control.snapshot().live.as_ref().map(|l| l.pricing.clone()).unwrap_or_default();
    let query = crate::usage::parse_query(q, nimbus_core::ids::now_ms(), pricing).map_err(ApiError::bad_request)?;
    let rows = gw.history.usage(query.since_ms).await?;
    let mut report = crate::usage::report(&query, &rows);
    let storage = crate::usage::StorageInput {
        rows: gw.history.storage_usage(query.since_ms).await?,
        pending: gw.storage.pending(),
        now: stored_now(gw).await,
    };
    crate::usage::add_storage(&query, storage, &mut report);
    Ok(report)
}

/// Every bucket and KV namespace with what it holds now (a store that cannot be read is
/// logged and left out).
async fn stored_now(gw: &Gateway) -> Vec<(StorageKind, String, u64, u64)> {
    let mut out = Vec::new();
    match gw.objects.list_buckets().await {
        Ok(b) => out.extend(b.into_iter().map(|b| (StorageKind::Bucket, b.name, b.objects, b.bytes))),
        Err(e) => tracing::warn!("usage: cannot read the buckets: {e}"),
    }
    match gw.kv.namespaces().await {
        Ok(n) => out.extend(n.into_iter().map(|n| (StorageKind::Kv, n.name, n.keys, n.bytes))),
        Err(e) => tracing::warn!("usage: cannot read the KV namespaces: {e}"),
    }
    out
}

/// Stats: this node's, and in a cluster every live node's, combined. Every node is asked for
/// the same `until` (this node's now, unless given), so all have the same buckets.
async fn stats(gw: &Gateway, query: Option<&str>, peers: Option<&dyn Peers>) -> Answer {
    let query = match query_param(query, "until") {
        None if peers.is_some() => Some(format!("{}{}until={}", query.unwrap_or_default(), and(query), now_ms())),
        _ => query.map(str::to_owned),
    };
    let (q, window) = {
        let snapshot = gw.control.snapshot();
        crate::stats::stats_query(query.as_deref(), &|f| snapshot.knows_function(f)).map_err(ApiError::bad_request)?
    };
    let report = crate::stats::report(gw.history.stats(&q).await?, window);
    let Some(peers) = peers else { return Ok(json(StatusCode::OK, &report)) };
    let path = format!("/v1/stats?{}", query.unwrap_or_default());
    let report = merge::stats(report, merge::gather(peers, &|_| path.clone()).await);
    let mut resp = json(StatusCode::OK, &report);
    merge::mark_missing(&mut resp, &report.missing_nodes);
    Ok(resp)
}

/// "&" after a query that has parameters already.
fn and(query: Option<&str>) -> &'static str {
    if query.is_some_and(|q| !q.is_empty()) {
        "&"
    } else {
        ""
    }
}

/// A call from another node of the cluster merging a read (see `merge.rs`): it carries the
/// cluster's peer credential instead of a token, may only read records, logs, usage and
/// stats, and is answered from this node's own store (never asked of the others again).
async fn peer_call(gw: &Gateway, req: Request<Incoming>, path: &str) -> Resp {
    let secret = req.headers().get(PEER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let accepted = match &gw.peers {
        Some(p) => p.accepts(secret).await,
        None => false,
    };
    if !accepted {
        let message = "peer call refused: this node is not in a cluster, or the x-nimbus-peer credential is not this \
                       cluster's (nodes of one cluster share it through the registry)";
        return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    }
    let segments: Vec<String> =
        path.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = req.uri().query();
    let q = |key: &str| query_param(query, key);
    let answer = match scopes::find(req.method().as_str(), &segments) {
        Some(Matched { endpoint: Endpoint::Logs, param, .. }) => {
            logs(gw, param.as_deref().unwrap_or_default(), &q, None).await
        }
        Some(Matched { endpoint: Endpoint::Invocations, .. }) if q("status").is_none() => {
            invocations(gw, &q, None).await
        }
        Some(Matched { endpoint: Endpoint::Usage, .. }) => usage(gw, query, None).await,
        Some(Matched { endpoint: Endpoint::Stats, .. }) => stats(gw, query, None).await,
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("a peer call may only read invocations, logs, usage and stats, not {} {path}", req.method()),
        )),
    };
    answer.unwrap_or_else(ApiError::into_response)
}
