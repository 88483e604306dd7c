//! What an instance's endpoint serves besides the Runtime API: the function's calls to nimbus
//! (the Invoke API and the KV calls, answered by the gateway within the caller's grants through
//! [`nimbus_core::FunctionCalls`]), the AWS APIs (S3, streamed to [`nimbus_core::FunctionAws`],
//! signed with the instance's own key) and the egress proxy of sandboxed instances
//! ([`crate::egress`]). For nimbus's calls the caller is the instance the endpoint belongs to:
//! nothing it sends can claim otherwise; for the AWS APIs it is the key the request is signed
//! with, as on the AWS port.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nimbus_core::outbound::OutboundPattern;
use nimbus_core::{BoxError, FunctionAws, FunctionCalls, FunctionVersion, InstanceCredentials, StreamBody};

use crate::egress;

/// Where the gateway's answer to function calls is set once it exists (it is built after the
/// runtimes it calls into).
pub type CallsSlot = Arc<OnceLock<Arc<dyn FunctionCalls>>>;

/// Where the AWS side's [`FunctionAws`] is set once it exists. Unset (the runtime's own tests),
/// instances get placeholder keys and their AWS API requests are refused with 503.
pub type AwsSlot = Arc<OnceLock<Arc<dyn FunctionAws>>>;

/// Largest error body of an AWS API refusal read for the invocation's log (S3's XML errors are
/// a few hundred bytes).
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Largest request body a function may send to nimbus (the Invoke API's payload limit).
const MAX_CALL_BODY: usize = nimbus_core::invoke::MAX_PAYLOAD_BYTES;
/// Largest plain-HTTP response the egress proxy buffers (HTTPS goes through CONNECT, unbuffered).
const MAX_PROXIED_RESPONSE: usize = 64 * 1024 * 1024;

/// The instance's identity and what it may do, for the requests that are not Runtime API calls.
pub(crate) struct Services {
    pub caller: Arc<FunctionVersion>,
    pub calls: CallsSlot,
    /// Where the instance's S3 requests go (verified there against the instance's key).
    pub aws: AwsSlot,
    /// `Some` when egress goes through this endpoint (sandboxed instances); the allow-list is
    /// `allowed_outbound_hosts`, parsed (`None` inside: any public host).
    pub egress: Option<Option<Vec<OutboundPattern>>>,
    /// Lines for the invocation's log (refused calls), taken when the log is drained.
    pub notes: std::sync::Mutex<Vec<String>>,
}

impl Services {
    pub(crate) fn note(&self, line: String) {
        tracing::warn!(function = %self.caller.spec.name, "{line}");
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(format!("nimbus: {line}"));
    }

    pub(crate) fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// A call to nimbus's API (`/2015-03-31/…`, `/nimbus/v1/kv/…`): handed to the gateway with the
/// caller's identity.
pub(crate) async fn call(req: Request<Incoming>, services: &Services) -> Response<Full<Bytes>> {
    let Some(calls) = services.calls.get().cloned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "nimbus is still starting; retry".into());
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_CALL_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is above {MAX_CALL_BODY} bytes")),
    };
    let answer = calls.call(services.caller.clone(), Request::from_parts(parts, body)).await;
    if answer.status() == StatusCode::FORBIDDEN {
        let target = answer.headers().get("x-nimbus-denied").and_then(|v| v.to_str().ok()).unwrap_or("a call");
        services.note(format!("{target} refused: AccessDeniedException"));
    }
    answer.map(Full::new)
}

/// An instance's AWS credential; dropping it (the instance is gone, or its start failed)
/// revokes it.
pub(crate) struct Lease {
    aws: Arc<dyn FunctionAws>,
    pub credentials: InstanceCredentials,
}

impl Lease {
    /// A fresh credential for an instance of `caller`; `None` while no AWS side is set.
    pub(crate) fn issue(slot: &AwsSlot, caller: &FunctionVersion) -> Option<Lease> {
        let aws = slot.get()?.clone();
        let credentials = aws.issue_credentials(caller);
        Some(Lease { aws, credentials })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.aws.revoke_credentials(&self.credentials.access_key_id);
    }
}

/// A whole (small) answer as a [`StreamBody`] response.
pub(crate) fn boxed(r: Response<Full<Bytes>>) -> Response<StreamBody> {
    r.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// An AWS API request (S3, SQS): streamed to the AWS side as the SDK sent it, the answer streamed
/// back. A refusal (403: `AccessDenied`, an unknown key, a bad signature) goes into the
/// invocation's log and nimbus's.
pub(crate) async fn aws(req: Request<Incoming>, services: &Services) -> Response<StreamBody> {
    let Some(aws) = services.aws.get().cloned() else {
        let message = "the AWS APIs are not available in this nimbus (still starting?); retry".to_owned();
        return boxed(text(StatusCode::SERVICE_UNAVAILABLE, message));
    };
    let what = match req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()) {
        Some(target) => target.replacen("AmazonSQS.", "SQS ", 1),
        None => format!("S3 {} {}", req.method(), req.uri().path()),
    };
    let answer = aws.serve(req.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())).await;
    if answer.status() != StatusCode::FORBIDDEN {
        return answer;
    }
    let (parts, body) = answer.into_parts();
    let body = refusal_body(body).await;
    let name = &services.caller.spec.name;
    services.note(format!(
        "{what} refused: {} (a function's buckets and queues are its [functions.{name}.grants])",
        refusal(&body)
    ));
    boxed(Response::from_parts(parts, Full::new(body)))
}

/// The (small) body of a refusal, up to [`MAX_REFUSAL_BODY`] bytes. Read frame by frame: the
/// body combinators over a `BoxError` body trip rustc's higher-ranked lifetime check of the
/// `Send` future.
async fn refusal_body(mut body: StreamBody) -> Bytes {
    let mut out = Vec::new();
    // Bounded in bytes and in frames (a body of empty frames ends too).
    for _ in 0..1024 {
        if out.len() >= MAX_REFUSAL_BODY {
            break;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    out.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    out.truncate(MAX_REFUSAL_BODY);
    Bytes::from(out)
}

/// `Code: Message` of an XML error body (S3, SQS's query protocol) or a JSON one (SQS's JSON
/// protocol: `__type`, `message`); `403` when there is none, as for HEAD.
fn refusal(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let kind = v.get("__type").and_then(|t| t.as_str()).map(|t| t.rsplit('#').next().unwrap_or(t));
        let message = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
        if let Some(kind) = kind {
            return format!("{kind}: {message}");
        }
    }
    let text = String::from_utf8_lossy(body);
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let len = text.get(start..)?.find(&format!("</{name}>"))?;
        let raw = text.get(start..start + len)?;
        // XML's five predefined entities, `&amp;` last so it is not unescaped twice.
        let pairs = [("&quot;", "\""), ("&apos;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")];
        Some(pairs.iter().fold(raw.to_owned(), |s, (from, to)| s.replace(from, to)))
    };
    match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => "403 Forbidden".to_owned(),
    }
}

/// `CONNECT host:port`: check the policy, connect, answer 200 and splice the two connections.
pub(crate) async fn connect(req: Request<Incoming>, services: &Services) -> Response<Full<Bytes>> {
    let Some(allowed) = &services.egress else {
        return text(StatusCode::METHOD_NOT_ALLOWED, "this endpoint is not a proxy".into());
    };
    let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let Some((host, port)) = egress::split_authority(&authority) else {
        return text(StatusCode::BAD_REQUEST, format!("CONNECT needs host:port, got {authority:?}"));
    };
    let scheme = if port == 80 { "http" } else { "https" };
    let upstream = match egress::connect(scheme, &host, port, allowed.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            services.note(e.clone());
            return text(StatusCode::FORBIDDEN, e);
        }
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let mut upstream = upstream;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    Response::new(Full::new(Bytes::new()))
}

/// `GET http://host/path` (absolute form): check the policy, forward, buffer the answer.
pub(crate) async fn forward(req: Request<Incoming>, services: &Services) -> Response<Full<Bytes>> {
    let Some(allowed) = &services.egress else {
        return text(StatusCode::METHOD_NOT_ALLOWED, "this endpoint is not a proxy".into());
    };
    let uri = req.uri().clone();
    let (Some(host), Some("http")) = (uri.host().map(str::to_ascii_lowercase), uri.scheme_str()) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("only http:// URLs are forwarded (use CONNECT for https): {uri}"),
        );
    };
    let port = uri.port_u16().unwrap_or(80);
    let upstream = match egress::connect("http", &host, port, allowed.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            services.note(e.clone());
            return text(StatusCode::FORBIDDEN, e);
        }
    };
    match send(upstream, req).await {
        Ok(r) => r,
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("the request to {host}:{port} failed: {e}")),
    }
}

async fn send(upstream: tokio::net::TcpStream, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, String> {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    // Origin form upstream: the path and query only.
    parts.uri = parts.uri.path_and_query().map_or("/", |p| p.as_str()).parse().map_err(|e| format!("{e}"))?;
    let resp = sender.send_request(Request::from_parts(parts, body)).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_PROXIED_RESPONSE).collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_described_by_its_code_and_message() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>no &quot;b&quot; &amp;amp;</Message></Error>";
        assert_eq!(refusal(xml), "AccessDenied: no \"b\" &amp;");
        assert_eq!(refusal(b"<Error><Code>InvalidAccessKeyId</Code></Error>"), "InvalidAccessKeyId");
        assert_eq!(refusal(b""), "403 Forbidden");
        let json = br#"{"__type":"com.amazonaws.sqs#AccessDenied","message":"may not SendMessage"}"#;
        assert_eq!(refusal(json), "AccessDenied: may not SendMessage");
    }
}
