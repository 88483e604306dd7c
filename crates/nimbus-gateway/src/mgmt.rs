//! The management API under `/v1` (JSON, `Authorization: Bearer <admin token>`). This module
//! owns its wire format; `nimbus` CLI commands are thin clients of it.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/app` | app name, live version, deployments |
//! | `POST /v1/deployments` | deploy a tar of an app directory → 201 `{version, …}` / 400 `{errors}` |
//! | `GET /v1/deployments` | deployments, newest first |
//! | `POST /v1/rollback` | `{"version": N}` or `{}` for the previous one |
//! | `GET /v1/functions` | functions of the live deployment with their instances |
//! | `GET /v1/functions/{name}/logs?after=SEQ&requestId=ID&limit=N` | invocation logs, oldest first |
//! | `GET /v1/invocations?function=F&requestId=ID&limit=N` | invocation records, newest first |
//! | `GET /v1/invocations?status=S&function=F` | async events by status (queued, running, succeeded, failed, dead-lettered) |
//! | `GET /v1/invocations/{id}` | an async event (status, attempts, result or error), else the invocation record |
//! | `GET /v1/dlq`, `GET /v1/dlq/{id}` | the dead-letter store |
//! | `POST /v1/dlq/redrive` | `{"ids": [...]}` or `{"all": true}` back to the queue |
//! | `POST /v1/dlq/purge` | delete dead-lettered events (`{"function": "f"}` to narrow) |
//! | `GET /v1/queue` | unfinished async events |
//! | `GET /v1/usage?since=24h&granularity=hour\|day&servers=N&serverPerHour=P` | requests, GB-seconds and cost per function, and the always-on comparison |
//! | `GET /v1/stats?function=F&window=1h&buckets=60` | time series for the dashboard's charts (`dashboard.rs`) |

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use nimbus_core::queue::EventStatus;
use nimbus_store_sqlite::InvocationQuery;
use serde_json::{json, Value};

use crate::control::DeployError;
use crate::server::{BodyError, Gateway};
use crate::util::{json, Resp};

fn err(status: StatusCode, message: &str) -> Resp {
    json(status, &json!({"error": message}))
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == key).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
    })
}

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>) -> Resp {
    if !gw.authorized(&req) {
        return err(
            StatusCode::UNAUTHORIZED,
            "the management API needs `Authorization: Bearer <token>`; the token is in DATA_DIR/admin.token",
        );
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["app"]) => app(gw),
        (Method::GET, ["deployments"]) => deployments(gw),
        (Method::POST, ["deployments"]) => deploy(gw, req).await,
        (Method::POST, ["rollback"]) => rollback(gw, req).await,
        (Method::GET, ["functions"]) => functions(gw),
        (Method::GET, ["stats"]) => crate::dashboard::stats(gw, &req).await,
        (Method::GET, ["functions", name, "logs"]) => {
            let name = (*name).to_owned();
            logs(gw, &req, &name)
        }
        (Method::GET, ["invocations"]) if query_param(&req, "status").is_some() => events(gw, &req, None).await,
        (Method::GET, ["invocations"]) => invocations(gw, &req, None),
        (Method::GET, ["invocations", id]) => {
            let id = (*id).to_owned();
            match gw.queue.store().get(&id).await {
                Ok(Some(ev)) => json(StatusCode::OK, &json!(ev)),
                Ok(None) => invocations(gw, &req, Some(id)),
                Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (Method::GET, ["dlq"]) => events(gw, &req, Some("dead-lettered")).await,
        (Method::GET, ["dlq", id]) => {
            let id = (*id).to_owned();
            match gw.queue.store().get(&id).await {
                Ok(Some(ev)) if ev.status == EventStatus::DeadLettered => json(StatusCode::OK, &json!(ev)),
                Ok(_) => {
                    err(StatusCode::NOT_FOUND, &format!("no dead-lettered event {id}; `nimbus dlq ls` lists them"))
                }
                Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (Method::POST, ["dlq", "redrive"]) => redrive(gw, req).await,
        (Method::POST, ["dlq", "purge"]) => purge(gw, req).await,
        (Method::GET, ["queue"]) => {
            json(StatusCode::OK, &json!({"depth": gw.queue.depth(), "recoveredAtStart": gw.queue.recovered()}))
        }
        (Method::GET, ["usage"]) => usage(gw, &req),
        _ => err(StatusCode::NOT_FOUND, &format!("no management endpoint {} {path}", req.method())),
    }
}

fn usage(gw: &Gateway, req: &Request<Incoming>) -> Resp {
    let pricing = gw.control.snapshot().live.as_ref().map(|l| l.pricing.clone()).unwrap_or_default();
    let q = match crate::usage::parse_query(|k| query_param(req, k), crate::util::now_ms(), pricing) {
        Ok(q) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, &e),
    };
    match gw.control.store().usage(q.since_ms) {
        Ok(rows) => json(StatusCode::OK, &crate::usage::report(&q, &rows)),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn deployments_json(gw: &Gateway) -> Value {
    let snap = gw.control.snapshot();
    let live = snap.live.as_ref().map(|l| l.version);
    let mut list: Vec<Value> = snap
        .versions
        .values()
        .map(|v| {
            let mut fns: Vec<&String> = v.functions.keys().collect();
            fns.sort();
            json!({"version": v.version, "app": v.app, "createdMs": v.created_ms, "live": Some(v.version) == live, "functions": fns})
        })
        .collect();
    list.sort_by_key(|v| std::cmp::Reverse(v.get("version").and_then(Value::as_u64)));
    Value::Array(list)
}

fn app(gw: &Gateway) -> Resp {
    let snap = gw.control.snapshot();
    let live = snap.live.as_ref();
    json(
        StatusCode::OK,
        &json!({"app": live.map(|l| l.app.clone()), "live": live.map(|l| l.version), "deployments": deployments_json(gw)}),
    )
}

fn deployments(gw: &Gateway) -> Resp {
    json(StatusCode::OK, &deployments_json(gw))
}

fn deploy_error(e: DeployError) -> Resp {
    match e {
        DeployError::Invalid(d) => json(
            StatusCode::BAD_REQUEST,
            &json!({"error": d.to_string().trim_end(), "errors": d.0.iter().map(ToString::to_string).collect::<Vec<_>>()}),
        ),
        DeployError::BadRequest(m) => err(StatusCode::BAD_REQUEST, &m),
        DeployError::Failed(m) => err(StatusCode::INTERNAL_SERVER_ERROR, &m),
    }
}

async fn deploy(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let body = match gw.read_body_up_to(req.into_body(), gw.config.max_upload).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let mib = gw.config.max_upload / (1024 * 1024);
            return err(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the app archive is above the {mib} MiB upload limit; leave build output and caches out of the app directory"),
            );
        }
        Err(_) => return err(StatusCode::BAD_REQUEST, "the app archive could not be read"),
    };
    match gw.control.deploy_tar(body).await {
        Ok(d) => json(StatusCode::CREATED, &json!(d)),
        Err(e) => deploy_error(e),
    }
}

async fn rollback(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let body = gw.read_body(req.into_body()).await.unwrap_or_default();
    let version = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => match v.get("version") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
                Some(_) => return err(StatusCode::BAD_REQUEST, "`version` must be a deployment number"),
            },
            Err(e) => {
                return err(StatusCode::BAD_REQUEST, &format!("the body must be JSON like {{\"version\": 3}}: {e}"))
            }
        }
    };
    match gw.control.rollback(version).await {
        Ok(d) => json(StatusCode::OK, &json!(d)),
        Err(e) => deploy_error(e),
    }
}

fn functions(gw: &Gateway) -> Resp {
    let snap = gw.control.snapshot();
    let Some(live) = snap.live.clone() else { return json(StatusCode::OK, &json!([])) };
    let pools = gw.scheduler.status();
    let mut names: Vec<&String> = live.functions.keys().collect();
    names.sort();
    let list: Vec<Value> = names
        .into_iter()
        .filter_map(|n| live.functions.get(n))
        .map(|f| {
            let s = &f.spec;
            let routes: Vec<String> =
                live.router.routes().iter().filter(|r| r.function == s.name).map(|r| r.route_key()).collect();
            let pools: Vec<&nimbus_scheduler::PoolStatus> = pools.iter().filter(|p| p.function == s.name).collect();
            json!({
                "name": s.name, "runtime": s.runtime, "handler": s.handler, "version": f.version,
                "memoryMb": s.memory_mb, "timeoutMs": s.timeout.as_millis() as u64,
                "minInstances": s.min_instances, "maxInstances": s.max_instances,
                "keepAliveMs": s.keep_alive.as_millis() as u64, "codeDigest": f.code_digest,
                "routes": routes, "pools": pools,
            })
        })
        .collect();
    json(StatusCode::OK, &Value::Array(list))
}

fn limit(req: &Request<Incoming>, default: u32) -> u32 {
    query_param(req, "limit").and_then(|l| l.parse().ok()).unwrap_or(default).clamp(1, 10_000)
}

fn logs(gw: &Gateway, req: &Request<Incoming>, name: &str) -> Resp {
    let after = query_param(req, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let request_id = query_param(req, "requestId");
    match gw.control.store().logs(name, after, request_id.as_deref(), limit(req, 1000)) {
        Ok(entries) => {
            let next = entries.last().map_or(after, |e| e.seq);
            json(StatusCode::OK, &json!({"entries": entries, "next": next}))
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn invocations(gw: &Gateway, req: &Request<Incoming>, id: Option<String>) -> Resp {
    let single = id.is_some();
    let q = InvocationQuery {
        function: query_param(req, "function"),
        request_id: id.or_else(|| query_param(req, "requestId")),
        limit: limit(req, 100),
    };
    match gw.control.store().invocations(&q) {
        Ok(rows) if single => match rows.into_iter().next() {
            Some(r) => json(StatusCode::OK, &r),
            None => err(
                StatusCode::NOT_FOUND,
                "no invocation with that id (records are written within a moment of the invocation ending)",
            ),
        },
        Ok(rows) => json(StatusCode::OK, &Value::Array(rows)),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn events(gw: &Gateway, req: &Request<Incoming>, status: Option<&str>) -> Resp {
    let wanted = query_param(req, "status");
    let status = match status.or(wanted.as_deref()).map(|s| EventStatus::parse(s).ok_or(s)).transpose() {
        Ok(status) => status,
        Err(s) => {
            let all = EventStatus::ALL.map(EventStatus::as_str).join(", ");
            return err(StatusCode::BAD_REQUEST, &format!("status {s:?} is not one of {all}"));
        }
    };
    let function = query_param(req, "function");
    match gw.queue.store().list(status, function.as_deref(), limit(req, 100)).await {
        Ok(list) => json(StatusCode::OK, &json!(list)),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn json_body(gw: &Gateway, req: Request<Incoming>) -> Result<Value, Resp> {
    let body =
        gw.read_body(req.into_body()).await.map_err(|_| err(StatusCode::BAD_REQUEST, "the body could not be read"))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| err(StatusCode::BAD_REQUEST, &format!("the body must be JSON: {e}")))
}

/// `{"ids": [...]}` or `{"all": true, "function": "f"?}`.
async fn redrive(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let body = match json_body(gw, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ids: Vec<String> = body
        .get("ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let all = body.get("all").and_then(Value::as_bool).unwrap_or(false);
    if ids.is_empty() && !all {
        return err(StatusCode::BAD_REQUEST, "name the events to redrive: {\"ids\": [\"…\"]}, or {\"all\": true}");
    }
    let function = body.get("function").and_then(Value::as_str);
    match gw.queue.store().redrive(&ids, function, nimbus_queue::now_ms()).await {
        Ok(n) => {
            gw.queue.queued(n);
            json(StatusCode::OK, &json!({"redriven": n}))
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn purge(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let body = match json_body(gw, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match gw.queue.store().purge(body.get("function").and_then(Value::as_str)).await {
        Ok(n) => json(StatusCode::OK, &json!({"purged": n})),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
