//! `/v1/aliases/{name}/traffic` and the canary flags of `POST /v1/deployments`: the wire side
//! of the control plane's traffic splits ([`nimbus_control::traffic`]).

use std::collections::BTreeMap;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use nimbus_api as api;
use nimbus_control::{CanarySpec, TrafficError, TrafficStatus};
use nimbus_core::AuditAction;

use super::{body, deploy_archive, deployed, Answer, ApiError, Caller};
use crate::scopes::Endpoint;
use crate::util::{json, query_param};

impl From<TrafficError> for ApiError {
    fn from(e: TrafficError) -> Self {
        match e {
            TrafficError::Invalid(_) | TrafficError::NoSuchVersion(_) => ApiError::bad_request(e.to_string()),
            TrafficError::NoSuchAlias(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            TrafficError::Registry(e) => ApiError::internal(&e),
        }
    }
}

fn info(alias: &str, t: TrafficStatus) -> api::TrafficInfo {
    api::TrafficInfo {
        alias: alias.to_owned(),
        weights: t.weights.iter().map(|(v, p)| (v.to_string(), *p)).collect(),
        canary: t.canary.map(|c| api::CanaryInfo {
            old_version: c.old,
            new_version: c.new,
            percent: c.percent,
            started_ms: c.started_ms,
            window_ms: c.spec.window_ms,
            max_error_rate: c.spec.max_error_rate,
            max_p99_ms: c.spec.max_p99_ms,
        }),
        last_canary: t.last_canary.map(|o| api::CanaryEnd {
            old_version: o.old,
            new_version: o.new,
            promoted: o.promoted,
            reason: o.reason,
            at_ms: o.at_ms,
        }),
    }
}

/// `GET` or `PUT /v1/aliases/{name}/traffic`.
pub(super) async fn route(c: &Caller<'_>, req: Request<Incoming>, endpoint: Endpoint, alias: &str) -> Answer {
    match endpoint {
        Endpoint::SetTraffic => set(c, req, alias).await,
        _ => show(c, alias),
    }
}

/// `GET /v1/aliases/{name}/traffic`.
fn show(c: &Caller<'_>, alias: &str) -> Answer {
    Ok(json(StatusCode::OK, &info(alias, c.gw.control.traffic(alias)?)))
}

/// `PUT /v1/aliases/{name}/traffic`: checked whole, audited.
async fn set(c: &Caller<'_>, req: Request<Incoming>, alias: &str) -> Answer {
    let r: Result<api::TrafficRequest, ApiError> = body(c.gw, req, "{\"weights\": {\"7\": 90, \"8\": 10}}").await;
    // A token limited to some functions may not send traffic to versions that change others.
    let r = match c.limit() {
        Some(only) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token may change only {}; splitting traffic needs a deploy token without functions (or an admin token)",
                only.join(", ")
            ),
        )),
        None => r,
    };
    let result = match r.and_then(|r| weights(&r.weights)) {
        Ok(w) => c.gw.control.set_traffic(alias, &w).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let target = match &result {
        Ok(t) => {
            format!("{alias}: {}", t.weights.iter().map(|(v, p)| format!("{v}={p}%")).collect::<Vec<_>>().join(" "))
        }
        Err(_) => alias.to_owned(),
    };
    c.audit(AuditAction::Traffic, target, &result).await;
    Ok(json(StatusCode::OK, &info(alias, result?)))
}

/// `{"7": 90}` (or `{"v7": 90}`) → [(7, 90)].
fn weights(w: &BTreeMap<String, u32>) -> Result<Vec<(u64, u32)>, ApiError> {
    w.iter()
        .map(|(v, p)| {
            let n = v.strip_prefix('v').unwrap_or(v).parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{v:?} is not a version; name versions by number, like \"7\""))
            })?;
            Ok((n, *p))
        })
        .collect()
}

/// The canary asked for in `POST /v1/deployments?canary=10&for=10m&maxErrorRate=2&maxP99=500ms`
/// (percentages as numbers, `%` allowed), or `None` for a plain deploy.
pub(super) fn canary(query: Option<&str>) -> Result<Option<CanarySpec>, ApiError> {
    let q = |k: &str| query_param(query, k);
    let Some(percent) = q("canary") else { return Ok(None) };
    let pct =
        |flag: &str, v: &str| {
            v.trim().trim_end_matches('%').trim().parse::<f64>().ok().filter(|p| p.is_finite()).ok_or_else(|| {
                ApiError::bad_request(format!("{flag} {v:?} is not a percentage; write it like \"10%\""))
            })
        };
    let duration = |flag: &str, v: &str| {
        humantime::parse_duration(v.trim())
            .map_err(|e| ApiError::bad_request(format!("{flag} {v:?}: {e}; write durations like \"10m\" or \"500ms\"")))
    };
    let window =
        q("for").ok_or_else(|| ApiError::bad_request("--canary needs --for, the time to reach 100% (e.g. 10m)"))?;
    let rate = q("maxErrorRate").ok_or_else(|| ApiError::bad_request("--canary needs --max-error-rate (e.g. 2%)"))?;
    let share = pct("--canary", &percent)?;
    if share.fract() != 0.0 {
        return Err(ApiError::bad_request(format!("--canary {percent:?}: give a whole percentage, like \"10%\"")));
    }
    let spec = CanarySpec {
        percent: share.clamp(0.0, 100.0) as u32,
        window_ms: u64::try_from(duration("--for", &window)?.as_millis()).unwrap_or(u64::MAX),
        max_error_rate: pct("--max-error-rate", &rate)? / 100.0,
        max_p99_ms: q("maxP99")
            .map(|v| duration("--max-p99", &v).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            .transpose()?,
    };
    spec.check().map(Some).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `POST /v1/deployments` with canary flags: the new version starts with a share of the
/// traffic, driven by the server from then on.
pub(super) async fn deploy_canary(c: &Caller<'_>, req: Request<Incoming>, spec: CanarySpec) -> Answer {
    let percent = spec.percent;
    let result = deploy_archive(c.gw, req, c.limit(), Some(spec)).await;
    let target = match &result {
        Ok(d) => format!("version {} of {} as a canary at {percent}%", d.version, d.app),
        Err(_) => "an uploaded app as a canary".to_owned(),
    };
    c.audit(AuditAction::Deploy, target, &result).await;
    Ok(json(StatusCode::CREATED, &deployed(c.gw, result?)))
}
