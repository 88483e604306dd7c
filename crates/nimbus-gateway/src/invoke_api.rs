//! The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`), as boto3 and the
//! aws CLI speak it. Status and header contract, decided here only:
//!
//! | outcome | status | headers / body |
//! |---|---|---|
//! | success | 200 | body = the function's response, `X-Amz-Executed-Version` |
//! | function error / timeout / crash / init failure | 200 | `X-Amz-Function-Error: Unhandled` (or `Handled`), `{errorMessage, errorType, …}` |
//! | `DryRun` | 204 | – |
//! | no credential, when one is needed (beyond loopback, or `nimbus up --invoke-auth token`) | 403 | `AccessDeniedException` |
//! | an unknown, revoked or expired token, when one is needed | 401 | `UnrecognizedClientException` |
//! | a token without scope invoke, or not for this function | 403 | `AccessDeniedException` |
//! | unknown function or qualifier | 404 | `ResourceNotFoundException` |
//! | payload above the limit | 413 | `RequestTooLargeException` |
//! | invalid JSON payload, bad header | 400 | `InvalidRequestContentException` |
//! | throttled | 429 | `TooManyRequestsException` |
//! | platform failure | 500 | `ServiceException` |
//!
//! Errors carry `X-Amzn-ErrorType` and a body with `__type` and `message`, which is where
//! botocore reads them from. Every refusal is an [`AwsError`]; handlers return it with `?`.

use base64::Engine as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use nimbus_core::queue::EventSource;
use nimbus_core::{Dispatch, DispatchError, FunctionVersion, Invocation, InvokeOutcome, Trigger};
use serde_json::json;

use crate::context::{BodyError, Credential, Gateway, Refused};
use crate::scopes::{self, Endpoint};
use crate::util::{json, query_param, raw, set_header, tail, Resp};

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// `X-Amz-Log-Result` carries the last 4 KB of the invocation's log.
pub(crate) const LOG_TAIL: usize = 4096;

/// A request the Invoke API refuses, in Lambda's terms.
#[derive(Debug)]
pub(crate) struct AwsError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
    /// Seconds, for throttling.
    retry_after: Option<u64>,
    /// For a call a function was not granted: what it tried, for the instance's log.
    denied: Option<String>,
}

impl AwsError {
    pub(crate) fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        AwsError { status, error_type, message: message.into(), retry_after: None, denied: None }
    }

    pub(crate) fn invalid_parameter(message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::BAD_REQUEST, "InvalidParameterValueException", message)
    }

    fn invalid_content(message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::BAD_REQUEST, "InvalidRequestContentException", message)
    }

    pub(crate) fn into_response(self, request_id: &str) -> Resp {
        let mut r = json(self.status, &json!({"__type": self.error_type, "message": self.message, "Type": "User"}));
        set_header(&mut r, "x-amzn-errortype", self.error_type);
        set_header(&mut r, "x-amzn-requestid", request_id);
        if let Some(s) = self.retry_after {
            set_header(&mut r, "retry-after", &s.to_string());
        }
        if let Some(d) = &self.denied {
            set_header(&mut r, "x-nimbus-denied", d);
        }
        r
    }
}

impl AwsError {
    /// A payload that could not be read; `limit` is the payload limit in force.
    fn body(e: BodyError, limit: usize) -> Self {
        match e {
            BodyError::TooLarge => AwsError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!("Request must be smaller than {limit} bytes for the InvokeFunction operation"),
            ),
            BodyError::TimedOut => AwsError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                "the payload was not received in time",
            ),
            BodyError::Broken => AwsError::invalid_content("the payload could not be read"),
        }
    }
}

impl From<nimbus_queue::AcceptError> for AwsError {
    fn from(e: nimbus_queue::AcceptError) -> Self {
        match e {
            nimbus_queue::AcceptError::TooLarge { .. } => {
                AwsError::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException", e.to_string())
            }
            nimbus_queue::AcceptError::Full { .. } => AwsError {
                retry_after: Some(1),
                ..AwsError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", e.to_string())
            },
            nimbus_queue::AcceptError::Storage(msg) => {
                tracing::error!("async accept failed: {msg}");
                AwsError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceException",
                    "the event could not be stored; it was not accepted",
                )
            }
        }
    }
}

/// `X-Amz-Invocation-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

/// What the caller asked for, read from the path, query and headers.
pub(crate) struct Call {
    pub(crate) name: String,
    qualifier: Option<String>,
    pub(crate) invocation_type: InvocationType,
    pub(crate) log_tail: bool,
    pub(crate) client_context: Option<String>,
    idempotency_key: Option<String>,
}

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>, remote: std::net::SocketAddr) -> Resp {
    let request_id = nimbus_core::ids::new_request_id();
    let source = crate::edge::client::client_ip(req.headers(), remote);
    let mut resp = invoke(gw, req, &request_id, source).await.unwrap_or_else(|e| e.into_response(&request_id));
    stamp_request_id(&mut resp, &request_id);
    resp
}

async fn invoke(
    gw: &Gateway,
    req: Request<Incoming>,
    request_id: &str,
    source: std::net::IpAddr,
) -> Result<Resp, AwsError> {
    let raw_name = raw_function_name(req.uri().path())?;
    if req.method() != http::Method::POST {
        return Err(AwsError::new(StatusCode::METHOD_NOT_ALLOWED, "UnknownOperationException", "Invoke takes POST"));
    }
    let who = if gw.config.invoke_open { None } else { Some(credential(gw, req.headers(), raw_name, source)?) };
    let call = parse_call(raw_name, req.uri().query(), req.headers())?;
    if let Some(who) = who.as_ref().filter(|w| !w.may_invoke(&call.name)) {
        let message = format!("{} may invoke only {}, not {}", who.describe(), who.functions().join(", "), call.name);
        gw.denied(source, &format!("invoke {}", call.name), who, message.clone());
        return Err(AwsError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message));
    }
    let function = resolve(gw, &call)?;
    if call.invocation_type == InvocationType::DryRun {
        return Ok(dry_run(&function));
    }
    let received = Invocation::new(request_id.to_owned(), Bytes::new(), Trigger::Invoke, function.spec.timeout);
    let payload = read_payload(gw, req.into_body()).await?;
    run(gw, function, call, payload, received).await
}

/// An Invoke API call a function made from inside its instance: the same contract, allowed only
/// for the functions its grants name (`[functions.F.grants] functions = [...]`).
pub(crate) async fn from_function(gw: &Gateway, caller: &FunctionVersion, req: http::Request<Bytes>) -> Resp {
    let check = |name: &str| if caller.spec.grants.may_invoke(name) { Ok(()) } else { Err(not_granted(caller, name)) };
    verified(gw, &check, req).await
}

/// An Invoke API call on the AWS port, whose SigV4 signature the port verified: `functions` is
/// what the key may invoke (`None`: the admin key, anything).
pub(crate) async fn signed(
    gw: &Gateway,
    key_id: &str,
    functions: Option<&[String]>,
    req: http::Request<Bytes>,
) -> Resp {
    let check = |name: &str| match functions {
        Some(allowed) if !allowed.iter().any(|f| f == name) => {
            tracing::warn!(key_id, target = name, "AWS port: refused an Invoke API call the key's grants do not allow");
            Err(AwsError::new(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                format!("the access key {key_id} may not invoke {name}"),
            ))
        }
        _ => Ok(()),
    };
    verified(gw, &check, req).await
}

/// An Invoke API call whose caller is known; `may_invoke` refuses what it may not call.
async fn verified(
    gw: &Gateway,
    may_invoke: &(dyn Fn(&str) -> Result<(), AwsError> + Sync),
    req: http::Request<Bytes>,
) -> Resp {
    let request_id = nimbus_core::ids::new_request_id();
    let answer = async {
        let raw_name = raw_function_name(req.uri().path())?;
        if req.method() != http::Method::POST {
            return Err(AwsError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                "Invoke takes POST",
            ));
        }
        let call = parse_call(raw_name, req.uri().query(), req.headers())?;
        may_invoke(&call.name)?;
        let function = resolve(gw, &call)?;
        if call.invocation_type == InvocationType::DryRun {
            return Ok(dry_run(&function));
        }
        let received = Invocation::new(request_id.clone(), Bytes::new(), Trigger::Invoke, function.spec.timeout);
        let payload = json_payload(req.into_body())?;
        run(gw, function, call, payload, received).await
    }
    .await;
    let mut resp = answer.unwrap_or_else(|e| e.into_response(&request_id));
    stamp_request_id(&mut resp, &request_id);
    resp
}

/// The refusal of an ungranted call; `x-nimbus-denied` tells the instance what to log.
fn not_granted(caller: &FunctionVersion, target: &str) -> AwsError {
    let who = &caller.spec.name;
    tracing::warn!(function = %who, target, "refused an Invoke API call the function's grants do not allow");
    AwsError {
        denied: Some(format!("invoking {target}")),
        ..AwsError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!(
                "function {who} may not invoke {target}; grant it in nimbus.toml: [functions.{who}.grants] functions = [\"{target}\"]"
            ),
        )
    }
}

/// Give an answer its `x-amzn-requestid`, unless it has one (an async accept answers with the
/// queued event's id, the earlier one for a duplicate).
pub(crate) fn stamp_request_id<B>(resp: &mut http::Response<B>, request_id: &str) {
    if !resp.headers().contains_key("x-amzn-requestid") {
        set_header(resp, "x-amzn-requestid", request_id);
    }
}

/// `NAME` from `/2015-03-31/functions/NAME/invocations`.
fn raw_function_name(path: &str) -> Result<&str, AwsError> {
    path.strip_prefix("/2015-03-31/functions/").and_then(|r| r.strip_suffix("/invocations")).ok_or_else(|| {
        AwsError::new(StatusCode::NOT_FOUND, "UnknownOperationException", format!("unknown operation {path}"))
    })
}

/// The function version the call names.
pub(crate) fn resolve(gw: &Gateway, call: &Call) -> Result<Arc<FunctionVersion>, AwsError> {
    gw.control.snapshot().function(&call.name, call.qualifier.as_deref()).ok_or_else(|| {
        AwsError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {}", nimbus_core::function::arn(&call.name, call.qualifier.as_deref())),
        )
    })
}

pub(crate) fn dry_run(function: &FunctionVersion) -> Resp {
    let mut r = raw(StatusCode::NO_CONTENT, Bytes::new());
    set_header(&mut r, "x-amz-executed-version", &function.version);
    r
}

/// Run the call: queue it (`Event`) or invoke and answer as Lambda does.
async fn run(
    gw: &Gateway,
    function: Arc<FunctionVersion>,
    call: Call,
    payload: Bytes,
    received: Invocation,
) -> Result<Resp, AwsError> {
    if call.invocation_type == InvocationType::Event {
        return accept_async(gw, &function, call, payload).await;
    }
    let request_id = received.request_id.clone();
    let log_tail = call.log_tail;
    let invocation = Invocation { payload, client_context: call.client_context, ..received };
    let (mut resp, log) = match gw.scheduler.invoke(function.clone(), invocation).await {
        Ok(r) => {
            // A streaming function called through the buffered Invoke API answers whole.
            let r = nimbus_core::invoke::collect(r).await;
            (function_response(&r.outcome), r.log)
        }
        Err(e) => (dispatch_failure(&e, &request_id)?, e.log().to_owned()),
    };
    set_header(&mut resp, "x-amz-executed-version", &function.version);
    if log_tail && !log.is_empty() {
        set_header(&mut resp, "x-amz-log-result", &B64.encode(tail(&log, LOG_TAIL)));
    }
    Ok(resp)
}

/// The caller's credential, which must grant the Invoke API's scope (beyond loopback). Refusals
/// go to the audit log, coalesced.
pub(crate) fn credential(
    gw: &Gateway,
    headers: &HeaderMap,
    raw_name: &str,
    source: std::net::IpAddr,
) -> Result<Credential, AwsError> {
    let target = format!("invoke {raw_name}");
    let who = gw.authenticate(headers).map_err(|refused| {
        gw.refused(source, &target, &refused);
        let message = format!(
            "{}: this server's Invoke API needs `Authorization: Bearer <token>` with the admin token or a token \
             of scope invoke (`nimbus token create --scope invoke`)",
            refused.reason()
        );
        // No credential stays Lambda's 403; a credential that is not (or no longer) valid is a 401.
        match refused {
            Refused::Missing => AwsError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message),
            _ => AwsError::new(StatusCode::UNAUTHORIZED, "UnrecognizedClientException", message),
        }
    })?;
    let needed = scopes::scope_of(Endpoint::Invoke);
    if !who.scope().grants(needed) {
        let message = scopes::needs("the Invoke API", needed, &who.describe(), who.scope());
        gw.denied(source, &target, &who, message.clone());
        return Err(AwsError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message));
    }
    Ok(who)
}

/// The function name and qualifier from the path and query, and the `X-Amz-*` headers.
pub(crate) fn parse_call(raw_name: &str, query: Option<&str>, headers: &HeaderMap) -> Result<Call, AwsError> {
    let (name, name_qualifier) = parse_function_name(raw_name)
        .ok_or_else(|| AwsError::invalid_parameter(format!("{raw_name:?} is not a function name or ARN")))?;
    let qualifier = match (name_qualifier, query_param(query, "Qualifier")) {
        (Some(a), Some(b)) if a != b => {
            return Err(AwsError::invalid_parameter(
                "the qualifier in the function name and the Qualifier parameter differ",
            ))
        }
        (a, b) => a.or(b),
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let invocation_type = match header("x-amz-invocation-type").as_deref() {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(AwsError::invalid_parameter(format!(
                "InvocationType {other:?} is not one of RequestResponse, Event, DryRun"
            )))
        }
    };
    let client_context = header("x-amz-client-context").map(|b64| decode_client_context(&b64)).transpose()?;
    let idempotency_key = header("idempotency-key").or_else(|| idempotency_from_context(client_context.as_deref()));
    Ok(Call {
        name,
        qualifier,
        invocation_type,
        log_tail: header("x-amz-log-type").is_some_and(|v| v == "Tail"),
        client_context,
        idempotency_key,
    })
}

/// `X-Amz-Client-Context` is base64-encoded JSON; the function gets the JSON text.
fn decode_client_context(b64: &str) -> Result<String, AwsError> {
    B64.decode(b64.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
        .ok_or_else(|| AwsError::invalid_content("X-Amz-Client-Context must be base64-encoded JSON"))
}

/// The JSON payload (`{}` when empty).
pub(crate) async fn read_payload(gw: &Gateway, body: Incoming) -> Result<Bytes, AwsError> {
    json_payload(gw.read_body(body).await.map_err(|e| AwsError::body(e, gw.config.max_payload))?)
}

/// A payload must be a JSON document; an empty (or blank) one is `{}`.
pub(crate) fn json_payload(payload: Bytes) -> Result<Bytes, AwsError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return Err(AwsError::invalid_content(
            "Could not parse request body into json: the payload must be a JSON document",
        ));
    }
    Ok(payload)
}

/// `name`, `name:qualifier`, or an ARN `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`.
fn parse_function_name(raw: &str) -> Option<(String, Option<String>)> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?.into_owned();
    let rest = match decoded.strip_prefix("arn:") {
        Some(arn) => {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            match parts.as_slice() {
                [_, "lambda", _, _, "function", rest] => (*rest).to_owned(),
                _ => return None,
            }
        }
        None => decoded,
    };
    let (name, qualifier) = match rest.split_once(':') {
        Some((n, q)) => (n.to_owned(), Some(q.to_owned())),
        None => (rest, None),
    };
    (!name.is_empty()).then_some((name, qualifier))
}

/// `X-Amz-Client-Context` may carry `{"custom": {"idempotencyKey": "…"}}`.
fn idempotency_from_context(context: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(context?).ok()?;
    let custom = v.get("custom").or_else(|| v.get("Custom"))?;
    custom.get("idempotencyKey").or_else(|| custom.get("idempotency_key"))?.as_str().map(str::to_owned)
}

/// `Event`: store durably, then 202 with the queued event's id as the request id.
async fn accept_async(gw: &Gateway, function: &FunctionVersion, call: Call, payload: Bytes) -> Result<Resp, AwsError> {
    // A numeric qualifier pins the version; an alias runs whatever it points at when it runs.
    let pinned = call.qualifier.filter(|q| q.parse::<u64>().is_ok());
    let req = nimbus_queue::AcceptRequest {
        function: function.spec.name.clone(),
        qualifier: pinned,
        payload,
        source: EventSource::Invoke,
        idempotency_key: call.idempotency_key,
    };
    let accepted = gw.queue.accept(req).await?;
    let mut r = raw(StatusCode::ACCEPTED, Bytes::new());
    set_header(&mut r, "x-amzn-requestid", &accepted.id);
    set_header(&mut r, "x-amz-executed-version", &function.version);
    Ok(r)
}

/// 200 with what the function answered; a function error says how it was raised.
fn function_response(outcome: &InvokeOutcome) -> Resp {
    match outcome {
        InvokeOutcome::Success(body) => raw(StatusCode::OK, body.clone()),
        InvokeOutcome::FunctionError { kind, body, .. } => {
            let mut resp = raw(StatusCode::OK, body.clone());
            set_header(&mut resp, "x-amz-function-error", kind.as_str());
            resp
        }
    }
}

/// A dispatch that produced no function outcome: the function's own failures (timeout, crash,
/// init error, oversized response) are answered as Lambda answers them, 200 with
/// `X-Amz-Function-Error: Unhandled`; the rest are refusals.
pub(crate) fn dispatch_failure(e: &DispatchError, request_id: &str) -> Result<Resp, AwsError> {
    let (error_type, message) = match e {
        DispatchError::Timeout { timeout, .. } => {
            (e.lambda_error_type(), format!("{request_id} Task timed out after {:.2} seconds", timeout.as_secs_f64()))
        }
        DispatchError::Crashed { detail, .. } => {
            (e.lambda_error_type(), format!("RequestId: {request_id} Error: {detail}"))
        }
        DispatchError::InitFailed { error_type, message, .. } => (error_type.as_str(), message.clone()),
        DispatchError::ResponseTooLarge { .. } => (e.lambda_error_type(), e.to_string()),
        _ => return Err(refusal(e)),
    };
    let mut r = json(StatusCode::OK, &json!({"errorMessage": message, "errorType": error_type}));
    set_header(&mut r, "x-amz-function-error", "Unhandled");
    Ok(r)
}

pub(crate) fn refusal(e: &DispatchError) -> AwsError {
    match e {
        DispatchError::Throttled { retry_after, .. } => AwsError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..AwsError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", "Rate Exceeded.")
        },
        DispatchError::ShuttingDown { .. } => {
            AwsError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceException", e.to_string())
        }
        DispatchError::NotFound { .. } | DispatchError::QualifierNotFound { .. } => {
            AwsError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", e.to_string())
        }
        DispatchError::PayloadTooLarge { .. } => {
            AwsError::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException", e.to_string())
        }
        other => {
            tracing::error!("platform error: {other}");
            AwsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "nimbus failed to run the invocation; see the server log",
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_arns_and_qualifiers() {
        let cases = [
            ("hello", Some(("hello", None))),
            ("hello:3", Some(("hello", Some("3")))),
            ("arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello", Some(("hello", None))),
            ("arn:aws:lambda:us-east-1:000000000000:function:hello:live", Some(("hello", Some("live")))),
            ("arn:aws:s3:::bucket", None),
            ("", None),
        ];
        for (raw, want) in cases {
            let got = parse_function_name(raw);
            let want = want.map(|(n, q)| (n.to_string(), q.map(str::to_string)));
            assert_eq!(got, want, "{raw}");
        }
    }

    /// Each refusal's status and Lambda error type, as botocore reads them.
    #[test]
    fn refusals_follow_the_lambda_table() {
        let name = "f".to_owned();
        let cases = [
            (
                DispatchError::Throttled {
                    name: name.clone(),
                    max_instances: 1,
                    retry_after: std::time::Duration::from_secs(2),
                },
                429,
                "TooManyRequestsException",
            ),
            (DispatchError::ShuttingDown { name: name.clone() }, 503, "ServiceException"),
            (DispatchError::NotFound { name: name.clone() }, 404, "ResourceNotFoundException"),
            (DispatchError::PayloadTooLarge { size: 2, limit: 1 }, 413, "RequestTooLargeException"),
            (DispatchError::Platform("x".into()), 500, "ServiceException"),
        ];
        for (e, status, error_type) in cases {
            let r = dispatch_failure(&e, "rid").unwrap_err().into_response("rid");
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(r.headers()["x-amzn-errortype"], error_type, "{e}");
        }
        let throttled = DispatchError::Throttled { name, max_instances: 1, retry_after: Default::default() };
        let r = dispatch_failure(&throttled, "rid").unwrap_err().into_response("rid");
        assert_eq!(r.headers()["retry-after"], "1", "at least a second");
        let timeout = DispatchError::Timeout {
            name: "f".into(),
            timeout: std::time::Duration::from_millis(1500),
            log: String::new(),
        };
        let r = dispatch_failure(&timeout, "rid").unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["x-amz-function-error"].to_str().unwrap()), (200, "Unhandled"));
    }
}
