//! The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`), as boto3 and the
//! aws CLI speak it. Status and header contract, decided here only:
//!
//! | outcome | status | headers / body |
//! |---|---|---|
//! | success | 200 | body = the function's response, `X-Amz-Executed-Version` |
//! | function error / timeout / crash / init failure | 200 | `X-Amz-Function-Error: Unhandled` (or `Handled`), `{errorMessage, errorType, …}` |
//! | `DryRun` | 204 | – |
//! | unknown function or qualifier | 404 | `ResourceNotFoundException` |
//! | payload above the limit | 413 | `RequestTooLargeException` |
//! | invalid JSON payload, bad header | 400 | `InvalidRequestContentException` |
//! | throttled | 429 | `TooManyRequestsException` |
//! | platform failure | 500 | `ServiceException` |
//!
//! Errors carry `X-Amzn-ErrorType` and a body with `__type` and `message`, which is where
//! botocore reads them from.

use std::time::{Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use nimbus_core::{Dispatch, DispatchError, Invocation, InvokeOutcome, Trigger};
use serde_json::json;

use crate::server::{BodyError, Gateway};
use crate::util::{json, new_request_id, set_header, tail, Resp};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// `X-Amz-Log-Result` carries the last 4 KB of the invocation's log.
const LOG_TAIL: usize = 4096;

fn aws_error(status: StatusCode, error_type: &str, message: &str, request_id: &str) -> Resp {
    let mut r = json(status, &json!({"__type": error_type, "message": message, "Type": "User"}));
    set_header(&mut r, "x-amzn-errortype", error_type);
    set_header(&mut r, "x-amzn-requestid", request_id);
    r
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

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let request_id = new_request_id();
    let mut resp = invoke(gw, req, &request_id).await;
    // An async accept answers with the queued event's id (the earlier one for a duplicate).
    if !resp.headers().contains_key("x-amzn-requestid") {
        set_header(&mut resp, "x-amzn-requestid", &request_id);
    }
    resp
}

async fn invoke(gw: &Gateway, req: Request<Incoming>, request_id: &str) -> Resp {
    let path = req.uri().path().to_owned();
    let Some(raw_name) = path.strip_prefix("/2015-03-31/functions/").and_then(|r| r.strip_suffix("/invocations"))
    else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!("unknown operation {path}"),
            request_id,
        );
    };
    if req.method() != http::Method::POST {
        return aws_error(StatusCode::METHOD_NOT_ALLOWED, "UnknownOperationException", "Invoke takes POST", request_id);
    }
    if !gw.config.invoke_open && !gw.authorized(&req) {
        return aws_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "the Invoke API needs `Authorization: Bearer <token>` when nimbus listens beyond loopback",
            request_id,
        );
    }
    let Some((name, name_qualifier)) = parse_function_name(raw_name) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("{raw_name:?} is not a function name or ARN"),
            request_id,
        );
    };
    let query_qualifier = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("Qualifier="))
            .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    });
    let qualifier = match (name_qualifier, query_qualifier) {
        (Some(a), Some(b)) if a != b => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                "the qualifier in the function name and the Qualifier parameter differ",
                request_id,
            )
        }
        (a, b) => a.or(b),
    };
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let invocation_type = header("x-amz-invocation-type").unwrap_or_else(|| "RequestResponse".into());
    let log_tail = header("x-amz-log-type").is_some_and(|v| v == "Tail");
    let client_context = match header("x-amz-client-context") {
        None => None,
        Some(b64) => match B64.decode(b64.as_bytes()).ok().and_then(|b| String::from_utf8(b).ok()) {
            Some(text) if serde_json::from_str::<serde_json::Value>(&text).is_ok() => Some(text),
            _ => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "X-Amz-Client-Context must be base64-encoded JSON",
                    request_id,
                )
            }
        },
    };

    let snapshot = gw.control.snapshot();
    let view = match qualifier.as_deref() {
        None | Some("$LATEST") | Some(crate::control::LIVE) => snapshot.live.clone(),
        Some(q) => q.parse::<u64>().ok().and_then(|v| snapshot.versions.get(&v).cloned()),
    };
    drop(snapshot);
    let arn = |q: Option<&str>| {
        let base = format!("arn:aws:lambda:{}:{}:function:{name}", nimbus_core::REGION, nimbus_core::ACCOUNT_ID);
        q.map_or(base.clone(), |q| format!("{base}:{q}"))
    };
    let Some(function) = view.as_ref().and_then(|v| v.functions.get(&name).cloned()) else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {}", arn(qualifier.as_deref())),
            request_id,
        );
    };

    match invocation_type.as_str() {
        "RequestResponse" => {}
        "DryRun" => {
            let mut r = json(StatusCode::NO_CONTENT, &json!(null));
            *r.body_mut() = Bytes::new().into();
            set_header(&mut r, "x-amz-executed-version", &function.version);
            return r;
        }
        "Event" => {}
        other => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("InvocationType {other:?} is not one of RequestResponse, Event, DryRun"),
                request_id,
            )
        }
    }

    let idempotency_key = header("idempotency-key").or_else(|| idempotency_from_context(client_context.as_deref()));
    let received_at = Instant::now();
    let received_wall = SystemTime::now();
    let payload = match gw.read_body(req.into_body()).await {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Bytes::from_static(b"{}"),
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return aws_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!(
                    "Request must be smaller than {} bytes for the InvokeFunction operation",
                    gw.config.max_payload
                ),
                request_id,
            )
        }
        Err(BodyError::TimedOut) => {
            return aws_error(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                "the payload was not received in time",
                request_id,
            )
        }
        Err(BodyError::Broken) => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "the payload could not be read",
                request_id,
            )
        }
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json: the payload must be a JSON document",
            request_id,
        );
    }

    if invocation_type == "Event" {
        let pinned = qualifier.as_deref().filter(|q| q.parse::<u64>().is_ok()).map(str::to_owned);
        return accept_async(gw, &function, pinned, payload, idempotency_key, request_id).await;
    }

    let invocation = Invocation {
        request_id: request_id.to_owned(),
        payload,
        timeout: function.spec.timeout,
        trace_id: crate::http_route::trace_id(),
        client_context,
        trigger: Trigger::Invoke,
        received_at,
        received_wall,
        http: None,
    };
    let result = gw.scheduler.invoke(function.clone(), invocation).await;
    let (mut resp, log) = match result {
        Ok(r) => {
            let resp = match &r.outcome {
                InvokeOutcome::Success(body) => {
                    let mut resp = json(StatusCode::OK, &json!(null));
                    *resp.body_mut() = body.clone().into();
                    resp
                }
                InvokeOutcome::FunctionError { kind, body, .. } => {
                    let mut resp = json(StatusCode::OK, &json!(null));
                    *resp.body_mut() = body.clone().into();
                    set_header(&mut resp, "x-amz-function-error", kind.as_str());
                    resp
                }
            };
            (resp, r.log)
        }
        Err(e) => {
            let log = e.log().to_owned();
            (error_response(&e, request_id), log)
        }
    };
    set_header(&mut resp, "x-amz-executed-version", &function.version);
    if log_tail && !log.is_empty() {
        set_header(&mut resp, "x-amz-log-result", &B64.encode(tail(&log, LOG_TAIL)));
    }
    resp
}

/// `X-Amz-Client-Context` may carry `{"custom": {"idempotencyKey": "…"}}`.
fn idempotency_from_context(context: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(context?).ok()?;
    let custom = v.get("custom").or_else(|| v.get("Custom"))?;
    custom.get("idempotencyKey").or_else(|| custom.get("idempotency_key"))?.as_str().map(str::to_owned)
}

/// `Event`: store durably, then 202 with the request id.
async fn accept_async(
    gw: &Gateway,
    function: &nimbus_core::FunctionVersion,
    qualifier: Option<String>,
    payload: Bytes,
    idempotency_key: Option<String>,
    request_id: &str,
) -> Resp {
    let req = nimbus_queue::AcceptRequest {
        function: function.spec.name.clone(),
        qualifier,
        payload,
        source: nimbus_core::queue::EventSource::Invoke,
        idempotency_key,
    };
    match gw.queue.accept(req).await {
        Ok(accepted) => {
            let mut r = json(StatusCode::ACCEPTED, &json!(null));
            *r.body_mut() = Bytes::new().into();
            // The queued event's id is the request id (the same id again for a duplicate).
            set_header(&mut r, "x-amzn-requestid", &accepted.id);
            set_header(&mut r, "x-amz-executed-version", &function.version);
            r
        }
        Err(e) => async_accept_error(&e, request_id),
    }
}

/// How a refused async accept is answered on the Invoke API.
pub(crate) fn async_accept_error(e: &nimbus_queue::AcceptError, request_id: &str) -> Resp {
    match e {
        nimbus_queue::AcceptError::TooLarge { .. } => {
            aws_error(StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException", &e.to_string(), request_id)
        }
        nimbus_queue::AcceptError::Full { .. } => {
            let mut r =
                aws_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", &e.to_string(), request_id);
            set_header(&mut r, "retry-after", "1");
            r
        }
        nimbus_queue::AcceptError::Storage(msg) => {
            tracing::error!(request_id, "async accept failed: {msg}");
            aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "the event could not be stored; it was not accepted",
                request_id,
            )
        }
    }
}

fn error_response(e: &DispatchError, request_id: &str) -> Resp {
    match e {
        DispatchError::Timeout { .. }
        | DispatchError::Crashed { .. }
        | DispatchError::InitFailed { .. }
        | DispatchError::ResponseTooLarge { .. } => {
            let message = match e {
                DispatchError::Timeout { timeout, .. } => {
                    format!("{request_id} Task timed out after {:.2} seconds", timeout.as_secs_f64())
                }
                DispatchError::Crashed { detail, .. } => format!("RequestId: {request_id} Error: {detail}"),
                DispatchError::InitFailed { message, .. } => message.clone(),
                other => other.to_string(),
            };
            let error_type = match e {
                DispatchError::InitFailed { error_type, .. } => error_type.as_str(),
                other => other.lambda_error_type(),
            };
            let mut r = json(StatusCode::OK, &json!({"errorMessage": message, "errorType": error_type}));
            set_header(&mut r, "x-amz-function-error", "Unhandled");
            r
        }
        DispatchError::Throttled { retry_after, .. } => {
            let mut r =
                aws_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", "Rate Exceeded.", request_id);
            set_header(&mut r, "retry-after", &retry_after.as_secs().max(1).to_string());
            r
        }
        DispatchError::ShuttingDown { .. } => {
            aws_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceException", &e.to_string(), request_id)
        }
        DispatchError::NotFound { .. } | DispatchError::QualifierNotFound { .. } => {
            aws_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", &e.to_string(), request_id)
        }
        DispatchError::PayloadTooLarge { .. } => {
            aws_error(StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException", &e.to_string(), request_id)
        }
        DispatchError::Platform(msg) => {
            tracing::error!(request_id, "platform error: {msg}");
            aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "nimbus failed to run the invocation; see the server log",
                request_id,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_function_name;

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
}
