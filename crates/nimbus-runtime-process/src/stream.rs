//! Lambda's response streaming on the Runtime API: `POST /invocation/{id}/response` with
//! `Lambda-Runtime-Function-Response-Mode: streaming` and a chunked body.
//!
//! The contract, as the official clients speak it (aws-lambda-nodejs-runtime-interface-client's
//! `streamifyResponse`, the `lambda_runtime` crate's `StreamResponse`):
//! - the body arrives in chunks, which nimbus forwards into the invocation's response stream
//!   as they arrive (`nimbus_core::stream`), so the caller sees the first byte before the
//!   handler returns;
//! - with `Content-Type: application/vnd.awslambda.http-integration-response` the body starts
//!   with a JSON prelude (`statusCode`, `headers`, `cookies`) and 8 NUL bytes: the prelude
//!   becomes the response head, the rest is the body;
//! - an error after the first byte comes as the trailers `Lambda-Runtime-Function-Error-Type`
//!   and `Lambda-Runtime-Function-Error-Body` (base64 of the usual error document), or, from
//!   the `lambda_runtime` crate, as a last chunk holding exactly those two lines: the stream
//!   ends with that error and the invocation is a function error;
//! - past the function's streaming cap the stream ends with `Function.ResponseSizeTooLarge`,
//!   the runtime gets 413 and the instance is retired; the invocation's timeout ends the stream
//!   with `Sandbox.Timedout` (the task following the invocation sets
//!   [`Shared::abort`](crate::exchange::Shared::abort) before it kills the process); with
//!   `concurrency > 1` the other streams in flight on the instance end too, saying why.
//!
//! A function whose `response_mode` is buffered may still stream (a Node handler wrapped in
//! `streamifyResponse`): the body is then collected, up to the buffered limit, as Lambda does
//! for `Invoke` of a streaming function.

use std::time::Instant;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use nimbus_core::stream::{response_stream, BodySender, SendError, StreamError};
use nimbus_core::HttpResponseHead;

use crate::exchange::{self, Completion, Shared, Streamed, Tail};

/// The content type of a body that starts with the HTTP prelude.
pub(crate) const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";
/// The prelude is a small JSON document; bound it.
const MAX_PRELUDE: usize = 64 * 1024;
const DELIMITER: [u8; 8] = [0; 8];

/// Whether a `/response` is in streaming mode.
pub(crate) fn is_streaming(headers: &HeaderMap) -> bool {
    headers
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"))
}

/// How the forwarding of a streamed body ended.
enum End {
    /// The last chunk arrived; `wait`: its trailers said background work follows.
    Complete {
        wait: bool,
    },
    Failed(StreamError),
    TooLarge {
        limit: u64,
    },
    /// The instance ended the stream (timeout).
    Aborted(StreamError),
}

/// Serve a streaming `/response` for the pending invocation `id`.
pub(crate) async fn respond(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !shared.streaming {
        return collect(req, shared, id).await;
    }
    let Some(pending) = exchange::take_pending(shared, &id) else { return exchange::invalid_id(&id) };
    let wait_header = exchange::wants_wait(req.headers());
    let with_prelude = exchange::header(&req, "content-type").is_some_and(|c| c.starts_with(HTTP_INTEGRATION));
    let mut body = req.into_body();
    let (head, rest) = if with_prelude {
        match read_prelude(&mut body).await {
            Ok(found) => found,
            Err(e) => {
                let _ = pending
                    .reply
                    .send(Completion::Error { error_type: Some(e.error_code.clone()), body: error_doc(&e) });
                return exchange::json(StatusCode::BAD_REQUEST, &e.error_code, &e.details);
            }
        }
    } else {
        (None, Bytes::new())
    };
    let (mut tx, rx) = response_stream(shared.max_stream);
    let _ = pending.reply.send(Completion::Stream(Streamed { head, body: rx }));
    let mut abort = shared.abort.subscribe();
    let end = match send(&mut tx, rest).await {
        Err(limit) => End::TooLarge { limit },
        Ok(()) => forward(&mut body, &mut tx, (&mut abort, &id)).await,
    };
    let ended = Instant::now();
    match end {
        End::Complete { wait } => {
            drop(tx);
            if wait || wait_header {
                exchange::park(shared, id, pending.tail, ended);
            } else {
                let _ = pending.tail.send(Tail::Done { response_end: ended });
            }
            exchange::accepted()
        }
        End::Failed(e) => {
            tx.fail(e.clone()).await;
            let _ = pending.tail.send(Tail::Failed { error: e, response_end: ended });
            exchange::accepted()
        }
        End::TooLarge { limit } => {
            let _ = pending.tail.send(Tail::TooLarge { limit });
            let message = format!("the streamed response passed the {limit}-byte limit");
            exchange::json(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", &message)
        }
        End::Aborted(e) => {
            // For the invocation that timed out its follower has already ended it; for the
            // others on the instance (concurrency > 1) this is how they end.
            tx.fail(e.clone()).await;
            let _ = pending.tail.send(Tail::Failed { error: e, response_end: ended });
            exchange::accepted()
        }
    }
}

/// Forward one piece; `Err(limit)` past the cap. A reader that went away is not an error: the
/// function goes on, what it writes is dropped.
async fn send(tx: &mut BodySender, chunk: Bytes) -> Result<(), u64> {
    match tx.send(chunk).await {
        Err(SendError::TooLarge { limit }) => Err(limit),
        Ok(()) | Err(SendError::Closed) => Ok(()),
    }
}

/// Forward the body's chunks until its end, an error trailer, the cap, or the instance's abort.
async fn forward(
    body: &mut Incoming,
    tx: &mut BodySender,
    (abort, id): (&mut tokio::sync::watch::Receiver<Option<exchange::Abort>>, &str),
) -> End {
    loop {
        let frame = tokio::select! {
            biased;
            a = abort.wait_for(Option::is_some) => {
                let e = a.ok().and_then(|v| v.as_ref().map(|a| a.error_for(id))).unwrap_or_else(|| StreamError::new("Runtime.Unknown", "the stream was ended"));
                return End::Aborted(e);
            }
            f = body.frame() => f,
        };
        let frame = match frame {
            None => return End::Complete { wait: false },
            Some(Err(e)) => {
                let details = format!("the runtime's response stream broke off: {e}");
                return End::Failed(StreamError::new("Runtime.ExitError", details));
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if let Some(e) = trailer_in_body(&data) {
                    return End::Failed(e);
                }
                if let Err(limit) = send(tx, data).await {
                    return End::TooLarge { limit };
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return match trailer_error(&trailers) {
                        Some(e) => End::Failed(e),
                        None => End::Complete { wait: exchange::wants_wait(&trailers) },
                    };
                }
            }
        }
    }
}

/// The error Lambda's trailers report, if any.
fn trailer_error(trailers: &HeaderMap) -> Option<StreamError> {
    let error_type = trailers.get("lambda-runtime-function-error-type")?.to_str().ok()?.to_owned();
    let body = trailers
        .get("lambda-runtime-function-error-body")
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).ok())
        .unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = match doc.get("errorMessage").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None => String::from_utf8_lossy(&body).into_owned(),
    };
    let error_type = doc.get("errorType").and_then(|t| t.as_str()).map_or(error_type, str::to_owned);
    Some(StreamError::new(error_type, message))
}

/// The error trailers written as the body's last chunk, which is how the `lambda_runtime` crate
/// (1.x) reports an error mid-stream: a chunk that is exactly the two trailer lines.
fn trailer_in_body(data: &[u8]) -> Option<StreamError> {
    let text = std::str::from_utf8(data).ok()?;
    let rest = text.strip_prefix("Lambda-Runtime-Function-Error-Type: ")?;
    let (error_type, rest) = rest.split_once("\r\n")?;
    let body = rest.strip_prefix("Lambda-Runtime-Function-Error-Body: ")?.strip_suffix("\r\n")?;
    if body.contains(['\r', '\n']) {
        return None;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("lambda-runtime-function-error-type", HeaderValue::from_str(error_type).ok()?);
    trailers.insert("lambda-runtime-function-error-body", HeaderValue::from_str(body).ok()?);
    trailer_error(&trailers)
}

/// Read the JSON prelude and its 8 NUL bytes: the head, and what followed it in the last chunk.
async fn read_prelude(body: &mut Incoming) -> Result<(Option<HttpResponseHead>, Bytes), StreamError> {
    let mut buf = BytesMut::new();
    let bad = |d: &str| StreamError::new("Runtime.InvalidResponsePrelude", d.to_owned());
    while buf.len() <= MAX_PRELUDE {
        if let Some(at) = buf.windows(DELIMITER.len()).position(|w| w == DELIMITER) {
            let rest = buf.split_off(at + DELIMITER.len()).freeze();
            let head = parse_prelude(buf.get(..at).unwrap_or_default()).map_err(|e| bad(&e))?;
            return Ok((Some(head), rest));
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(bad(&format!("the stream broke off in its prelude: {e}"))),
            None => return Err(bad("the stream ended before the 8 NUL bytes that end its HTTP prelude")),
        }
    }
    Err(bad(&format!("the HTTP prelude is longer than {MAX_PRELUDE} bytes (is the 8-NUL delimiter missing?)")))
}

/// `{"statusCode": 200, "headers": {…}, "cookies": […]}` as a response head.
pub(crate) fn parse_prelude(json: &[u8]) -> Result<HttpResponseHead, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("the HTTP prelude is not JSON ({e})"))?;
    let code = doc.get("statusCode").and_then(serde_json::Value::as_u64).unwrap_or(200);
    let status = u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("the prelude's statusCode {code} is not an HTTP status"))?;
    let mut headers = HeaderMap::new();
    for (k, v) in doc.get("headers").and_then(|h| h.as_object()).into_iter().flatten() {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("the prelude's header name {k:?} is invalid"))?;
        let value =
            HeaderValue::from_str(&text).map_err(|_| format!("the prelude's header {k} has an invalid value"))?;
        headers.append(name, value);
    }
    for cookie in doc.get("cookies").and_then(|c| c.as_array()).into_iter().flatten().filter_map(|c| c.as_str()) {
        let value = HeaderValue::from_str(cookie).map_err(|_| "a prelude cookie has an invalid value".to_owned())?;
        headers.append(http::header::SET_COOKIE, value);
    }
    Ok(HttpResponseHead { status, headers })
}

fn error_doc(e: &StreamError) -> Bytes {
    Bytes::from(serde_json::json!({"errorType": e.error_code, "errorMessage": e.details}).to_string())
}

/// A buffered function's streamed response: collected up to the buffered limit, an error
/// trailer makes it a function error.
async fn collect(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    let wait_header = exchange::wants_wait(req.headers());
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    let mut wait = wait_header;
    let mut error = None;
    let mut too_large = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            error = Some(StreamError::new("Runtime.ExitError", "the runtime's response stream broke off"));
            break;
        };
        match frame.into_data() {
            Ok(data) if trailer_in_body(&data).is_some() => error = trailer_in_body(&data),
            Ok(data) if buf.len() + data.len() > shared.max_response => too_large = true,
            Ok(data) => buf.extend_from_slice(&data),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    error = trailer_error(&t);
                    wait |= exchange::wants_wait(&t);
                }
            }
        }
        if too_large {
            break;
        }
    }
    let Some(pending) = exchange::take_pending(shared, &id) else { return exchange::invalid_id(&id) };
    let completion = match (too_large, error) {
        (true, _) => Completion::TooLarge { size: shared.max_response + 1 },
        (false, Some(e)) => Completion::Error { error_type: Some(e.error_code.clone()), body: error_doc(&e) },
        (false, None) if wait => Completion::Early(buf.freeze()),
        (false, None) => Completion::Response(buf.freeze()),
    };
    if matches!(completion, Completion::Early(_)) {
        exchange::park(shared, id, pending.tail, Instant::now());
    }
    let _ = pending.reply.send(completion);
    if too_large {
        return exchange::json(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "the response is above the payload limit",
        );
    }
    exchange::accepted()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn the_lambda_runtime_crates_error_chunk_is_read_as_its_trailers() {
        let chunk = b"Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: dXNlciBib2R5IHdyaXRlIGFib3J0ZWQ=\r\n";
        let e = trailer_in_body(chunk).unwrap();
        assert_eq!((e.error_code.as_str(), e.details.as_str()), ("Runtime.StreamError", "user body write aborted"));
        assert!(trailer_in_body(b"Lambda-Runtime-Function-Error-Type: X\r\n").is_none(), "one line is data");
        assert!(trailer_in_body(b"data: Lambda-Runtime-Function-Error-Type: X\r\n").is_none());
    }

    #[test]
    fn a_prelude_gives_status_headers_and_cookies_and_bad_ones_say_why() {
        let head =
            parse_prelude(br#"{"statusCode":404,"headers":{"x-a":"1","x-n":2},"cookies":["c=1","d=2"]}"#).unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(head.headers["x-n"], "2");
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(parse_prelude(b"{}").unwrap().status, StatusCode::OK, "statusCode defaults to 200");
        assert!(parse_prelude(b"not json").unwrap_err().contains("not JSON"));
        assert!(parse_prelude(br#"{"statusCode":99}"#).unwrap_err().contains("statusCode 99"));
    }
}
