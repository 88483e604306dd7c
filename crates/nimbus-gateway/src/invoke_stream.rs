//! Lambda's `InvokeWithResponseStream`
//! (`POST /2021-11-15/functions/{name}/response-streaming-invocations`), as boto3's
//! `invoke_with_response_stream` speaks it. Credentials, names, qualifiers, `DryRun` and the
//! refusals are the Invoke API's (`invoke_api`); the answer differs:
//!
//! | outcome | status | body (event stream) |
//! |---|---|---|
//! | streamed response | 200 | a `PayloadChunk` per piece as the function writes it, then `InvokeComplete` |
//! | error or timeout mid-stream, over `max_stream_bytes` | 200 | the chunks so far, then `InvokeComplete` with `ErrorCode` / `ErrorDetails` |
//! | buffered function | 200 | one `PayloadChunk` with the whole response, then `InvokeComplete` |
//! | function error before any byte (incl. timeout, crash, init error) | 200 | `InvokeComplete` with the error |
//! | `InvocationType: Event` | 400 | `InvalidParameterValueException` (Lambda has no async streaming) |
//!
//! `InvokeComplete` carries `LogResult` (the base64 tail of the log) when `X-Amz-Log-Type:
//! Tail` asked for it; it is then sent once the invocation has really ended (background work
//! included), else as soon as the body ends.

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use nimbus_core::{Dispatch, FunctionVersion, Invocation, InvokeOutcome, InvokeResult, Trigger};
use tokio::sync::mpsc;

use crate::body::{whole, GwBody, GwResp};
use crate::context::Gateway;
use crate::eventstream::{invoke_complete, payload_chunk};
use crate::invoke_api::{self, AwsError, InvocationType, B64, LOG_TAIL};
use crate::util::{set_header, tail};

/// Where the operation's paths start.
pub(crate) const PREFIX: &str = "/2021-11-15/functions/";
const SUFFIX: &str = "/response-streaming-invocations";
/// Encoded events in flight to the client.
const FRAMES_IN_FLIGHT: usize = 16;

pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>, remote: std::net::SocketAddr) -> GwResp {
    let request_id = nimbus_core::ids::new_request_id();
    let source = crate::edge::client::client_ip(req.headers(), remote);
    let mut resp = match invoke(gw, req, &request_id, source).await {
        Ok(r) => r,
        Err(e) => whole(e.into_response(&request_id)),
    };
    invoke_api::stamp_request_id(&mut resp, &request_id);
    resp
}

async fn invoke(
    gw: &Gateway,
    req: Request<Incoming>,
    request_id: &str,
    source: std::net::IpAddr,
) -> Result<GwResp, AwsError> {
    let raw_name = function_name(req.uri().path())?;
    if req.method() != http::Method::POST {
        return Err(AwsError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnknownOperationException",
            "InvokeWithResponseStream takes POST",
        ));
    }
    let who =
        if gw.config.invoke_open { None } else { Some(invoke_api::credential(gw, req.headers(), raw_name, source)?) };
    let call = invoke_api::parse_call(raw_name, req.uri().query(), req.headers())?;
    if let Some(who) = who.as_ref().filter(|w| !w.may_invoke(&call.name)) {
        let message = format!("{} may invoke only {}, not {}", who.describe(), who.functions().join(", "), call.name);
        gw.denied(source, &format!("invoke {}", call.name), who, message.clone());
        return Err(AwsError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message));
    }
    let function = invoke_api::resolve(gw, &call)?;
    let payload = match call.invocation_type {
        InvocationType::RequestResponse => invoke_api::read_payload(gw, req.into_body()).await?,
        _ => Bytes::new(),
    };
    run(gw, function, call, payload, request_id).await
}

/// `InvokeWithResponseStream` on the AWS port, whose SigV4 signature the port verified:
/// `functions` is what the key may invoke (`None`: anything). The port answers with a whole
/// body, so there the event stream arrives at once when the invocation's response ends.
pub(crate) async fn signed(gw: &Gateway, key_id: &str, functions: Option<&[String]>, req: Request<Bytes>) -> GwResp {
    let request_id = nimbus_core::ids::new_request_id();
    let answer = async {
        let raw_name = function_name(req.uri().path())?;
        let call = invoke_api::parse_call(raw_name, req.uri().query(), req.headers())?;
        if functions.is_some_and(|allowed| !allowed.contains(&call.name)) {
            let message = format!("the access key {key_id} may not invoke {}", call.name);
            return Err(AwsError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message));
        }
        let function = invoke_api::resolve(gw, &call)?;
        let payload = invoke_api::json_payload(req.into_body())?;
        run(gw, function, call, payload, &request_id).await
    }
    .await;
    let mut resp = answer.unwrap_or_else(|e| whole(e.into_response(&request_id)));
    invoke_api::stamp_request_id(&mut resp, &request_id);
    resp
}

/// `NAME` from `/2021-11-15/functions/NAME/response-streaming-invocations`.
fn function_name(path: &str) -> Result<&str, AwsError> {
    path.strip_prefix(PREFIX).and_then(|r| r.strip_suffix(SUFFIX)).ok_or_else(|| {
        AwsError::new(StatusCode::NOT_FOUND, "UnknownOperationException", format!("unknown operation {path}"))
    })
}

/// Invoke and answer with the event stream (or `DryRun`'s 204, or a refusal).
async fn run(
    gw: &Gateway,
    function: std::sync::Arc<FunctionVersion>,
    call: invoke_api::Call,
    payload: Bytes,
    request_id: &str,
) -> Result<GwResp, AwsError> {
    match call.invocation_type {
        InvocationType::DryRun => return Ok(whole(invoke_api::dry_run(&function))),
        InvocationType::Event => {
            return Err(AwsError::invalid_parameter(
                "InvokeWithResponseStream takes InvocationType RequestResponse or DryRun; use Invoke for Event",
            ))
        }
        InvocationType::RequestResponse => {}
    }
    let received = Invocation::new(request_id.to_owned(), Bytes::new(), Trigger::Invoke, function.spec.timeout);
    let invocation = Invocation { payload, client_context: call.client_context, ..received };
    let log_tail = call.log_tail;
    let frames = match gw.scheduler.invoke(function.clone(), invocation).await {
        Ok(r) => frames(r, log_tail),
        Err(e) => {
            invoke_api::dispatch_failure(&e, request_id)?;
            let log = log_tail.then(|| B64.encode(tail(e.log(), LOG_TAIL)));
            let (code, details) = (e.lambda_error_type(), e.to_string());
            one_shot(vec![invoke_complete(Some((code, &details)), log.as_deref())])
        }
    };
    Ok(event_stream(&function, frames))
}

/// 200 with the events as they come.
fn event_stream(function: &FunctionVersion, frames: mpsc::Receiver<Bytes>) -> GwResp {
    let mut resp = Response::new(GwBody::Frames(frames));
    set_header(&mut resp, "content-type", "application/vnd.amazon.eventstream");
    set_header(&mut resp, "x-amz-executed-version", &function.version);
    resp
}

/// Events already known, in one channel.
fn one_shot(events: Vec<Bytes>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(events.len().max(1));
    for e in events {
        let _ = tx.try_send(e);
    }
    rx
}

/// The events of a result: a buffered one at once, a streamed one from a task that forwards
/// each piece as it arrives.
fn frames(r: InvokeResult, log_tail: bool) -> mpsc::Receiver<Bytes> {
    let Some(handle) = r.stream.clone() else {
        let log = log_tail.then(|| B64.encode(tail(&r.log, LOG_TAIL)));
        return one_shot(match &r.outcome {
            InvokeOutcome::Success(body) => vec![payload_chunk(body), invoke_complete(None, log.as_deref())],
            InvokeOutcome::FunctionError { error_type, error_message, .. } => {
                vec![invoke_complete(Some((error_type, error_message)), log.as_deref())]
            }
        });
    };
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    tokio::spawn(async move {
        let mut error = None;
        if let Some(mut body) = handle.take_body() {
            while let Some(item) = body.next().await {
                match item {
                    Ok(piece) => {
                        if tx.send(payload_chunk(&piece)).await.is_err() {
                            return; // the client went away; the invocation finishes on its own
                        }
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        let summary = match handle.take_summary() {
            Some(rx) if log_tail => rx.await.ok(),
            _ => None,
        };
        let log = summary.map(|s| B64.encode(tail(&s.log, LOG_TAIL)));
        let error = error.as_ref().map(|e| (e.error_code.as_str(), e.details.as_str()));
        let _ = tx.send(invoke_complete(error, log.as_deref())).await;
    });
    rx
}
