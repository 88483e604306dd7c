//! The AWS port's listener: plain HTTP/1.1 on its own address. Requests for the Lambda Invoke
//! API (`/2015-03-31/…`) are verified here ([`crate::sigv4`]) and handed to an [`InvokeApi`]
//! (the gateway's handler, wired in by the binary); SQS requests (an `X-Amz-Target` of
//! `AmazonSQS.…`, or a form POST naming an SQS `Action`) go to [`crate::sqs`] when the port has
//! a [`MessageQueues`]; everything else is S3 (`s3s`, with the key ring as its SigV4 key
//! source). Virtual-host style: `BUCKET.s3.localhost[:port]`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use nimbus_core::expect::serve_closing_unanswered;
use nimbus_core::messages::MessageQueues;
use nimbus_core::meter::StorageMeter;
use nimbus_core::poll_again::PollAgain;
use nimbus_core::ObjectStore;
use s3s::host::{S3Host, VirtualHost};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::S3Result;
use tokio::net::TcpListener;

use crate::keys::{KeyRing, Principal};
use crate::metered::{self, Counting};
use crate::s3::S3Api;
use crate::sigv4::{self, SigError};
use crate::sqs::{self, Sqs};

/// The base domain of virtual-host style requests (`BUCKET.s3.localhost`).
pub const VIRTUAL_HOST_DOMAIN: &str = "s3.localhost";
/// Largest Invoke API body read on this port (Lambda's synchronous payload limit).
pub const MAX_INVOKE_BODY: usize = 6 * 1024 * 1024;

/// Serves a verified Invoke API request. `functions` is what the key may invoke (`None`: all).
#[async_trait]
pub trait InvokeApi: Send + Sync + 'static {
    async fn invoke(
        &self,
        key_id: &str,
        functions: Option<Vec<String>>,
        req: http::Request<Bytes>,
    ) -> http::Response<Bytes>;
}

/// What the port serves.
pub struct AwsPort {
    s3: S3Service,
    meter: Arc<StorageMeter>,
    keys: KeyRing,
    invoke: Option<Arc<dyn InvokeApi>>,
    sqs: Option<Sqs>,
}

/// s3s takes one access hook: count the operation (S3 bills refused requests too), then hold
/// an instance key to its session token.
struct PortAccess(Counting, crate::keys::SessionTokens);

#[async_trait]
impl s3s::access::S3Access for PortAccess {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        self.0.check(cx).await?;
        self.1.check(cx).await
    }
}

/// Path-style by default; `BUCKET.s3.localhost` names the bucket in the host.
struct Hosts;

impl S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        match name.strip_suffix(VIRTUAL_HOST_DOMAIN).and_then(|b| b.strip_suffix('.')) {
            Some(bucket) if !bucket.is_empty() => Ok(VirtualHost::new(host).with_bucket(bucket)),
            _ => Ok(VirtualHost::new(host)),
        }
    }
}

impl AwsPort {
    /// The port over `store` (S3) and `queues` (SQS; `None`: SQS requests are refused).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        queues: Option<Arc<dyn MessageQueues>>,
        keys: KeyRing,
        invoke: Option<Arc<dyn InvokeApi>>,
    ) -> Arc<AwsPort> {
        AwsPort::metered(store, queues, keys, invoke, Arc::default())
    }

    /// As [`AwsPort::new`], counting S3 operations, errors and bytes into `meter`.
    pub fn metered(
        store: Arc<dyn ObjectStore>,
        queues: Option<Arc<dyn MessageQueues>>,
        keys: KeyRing,
        invoke: Option<Arc<dyn InvokeApi>>,
        meter: Arc<StorageMeter>,
    ) -> Arc<AwsPort> {
        let mut builder = S3ServiceBuilder::new(S3Api::new(store, keys.clone()).with_meter(meter.clone()));
        builder.set_auth(keys.clone());
        builder.set_access(PortAccess(Counting(meter.clone()), crate::keys::SessionTokens(keys.clone())));
        builder.set_host(Hosts);
        let sqs = queues.map(|q| Sqs::new(q, keys.clone()));
        Arc::new(AwsPort { s3: builder.build(), meter, keys, invoke, sqs })
    }

    /// Answer one request.
    pub async fn handle(self: Arc<Self>, req: http::Request<Incoming>) -> http::Response<s3s::Body> {
        // The Invoke API, and InvokeWithResponseStream (its event stream arrives whole here).
        if req.uri().path().starts_with("/2015-03-31/") || req.uri().path().starts_with("/2021-11-15/") {
            let resp = self.invoke(req).await;
            let (parts, body) = resp.into_parts();
            return http::Response::from_parts(parts, s3s::Body::from(body));
        }
        self.serve(req.map(s3s::Body::from)).await
    }

    /// Answer one SQS or S3 request (the port's, or a function instance's).
    pub async fn serve(&self, req: http::Request<s3s::Body>) -> http::Response<s3s::Body> {
        let Some(protocol) = sqs::protocol_of(&req) else {
            return self.s3(req).await;
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, sqs::MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                let e = sqs::SqsError::invalid(format!("the request body is over {} bytes", sqs::MAX_BODY));
                let r =
                    if protocol == sqs::Protocol::Json { sqs::json::error(&e, "") } else { sqs::query::error(&e, "") };
                return r.map(s3s::Body::from);
            }
        };
        if protocol == sqs::Protocol::Query && !sqs::is_query_body(&body) {
            return self.s3(http::Request::from_parts(parts, s3s::Body::from(body))).await;
        }
        let req = http::Request::from_parts(parts, body);
        let resp = match &self.sqs {
            Some(sqs) => sqs.handle(protocol, req).await,
            None => {
                let e = sqs::SqsError::new(
                    "UnsupportedOperation",
                    "AWS.SimpleQueueService.UnsupportedOperation",
                    "SQS is not served by this nimbus (it has no queue store)",
                );
                if protocol == sqs::Protocol::Json {
                    sqs::json::error(&e, "")
                } else {
                    sqs::query::error(&e, "")
                }
            }
        };
        resp.map(s3s::Body::from)
    }

    /// The keys this port accepts (the binary adds and drops keys while it runs).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Answer one S3 request, its body streamed in and the answer's streamed out.
    pub async fn s3(&self, req: http::Request<s3s::Body>) -> http::Response<s3s::Body> {
        match self.s3.call(req).await {
            Ok(r) => {
                if r.status().is_client_error() || r.status().is_server_error() {
                    let body = r.body().bytes().unwrap_or_default();
                    self.meter.s3_error(metered::error_code(&body).unwrap_or("Unknown"));
                }
                r
            }
            Err(e) => {
                tracing::error!("S3 request failed: {:?}", s3s::StdError::from(e));
                lambda_error(http::StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "the S3 service failed")
                    .map(s3s::Body::from)
            }
        }
    }

    async fn invoke(&self, req: http::Request<Incoming>) -> http::Response<Bytes> {
        let Some(invoke) = &self.invoke else {
            return lambda_error(
                http::StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "the Invoke API is not served here",
            );
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_INVOKE_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return lambda_error(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    "the request body is over 6 MB, Lambda's limit for a synchronous payload",
                )
            }
        };
        let req = http::Request::from_parts(parts, body);
        let key_id = match sigv4::verify(&req, |k| self.keys.secret(k), SystemTime::now()) {
            Ok(k) => k,
            Err(e) => return sig_error(e),
        };
        let token = req.headers().get("x-amz-security-token").and_then(|v| v.to_str().ok());
        if let Err(e) = self.keys.check_token(&key_id, token) {
            let message = e.message().unwrap_or("the session token is not the key's").to_owned();
            return lambda_error(http::StatusCode::FORBIDDEN, "UnrecognizedClientException", &message);
        }
        let functions = match self.keys.principal(&key_id) {
            Some(Principal::Admin) => None,
            Some(Principal::Grants(g)) => Some(g.functions),
            None => return sig_error(SigError::UnknownKey(key_id)),
        };
        invoke.invoke(&key_id, functions, req).await
    }
}

fn sig_error(e: SigError) -> http::Response<Bytes> {
    match e {
        SigError::Missing(m) => lambda_error(http::StatusCode::FORBIDDEN, "MissingAuthenticationTokenException", &m),
        SigError::UnknownKey(k) => lambda_error(
            http::StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            &format!("The security token included in the request is invalid: {k} is not a nimbus access key"),
        ),
        SigError::Invalid(m) => lambda_error(http::StatusCode::FORBIDDEN, "InvalidSignatureException", &m),
    }
}

fn lambda_error(status: http::StatusCode, kind: &str, message: &str) -> http::Response<Bytes> {
    let body = serde_json::json!({"__type": kind, "message": message}).to_string();
    let mut r = http::Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    if let Ok(v) = http::HeaderValue::from_str(kind) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// Serve until `shutdown` resolves, then let open requests finish for up to `drain`.
pub async fn serve(listener: TcpListener, port: Arc<AwsPort>, shutdown: impl Future<Output = ()>, drain: Duration) {
    let graceful = GracefulShutdown::new();
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("AWS port: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let port = port.clone();
                let svc = service_fn(move |req| {
                    let port = port.clone();
                    let fut: BoxFuture<'static, Result<_, Infallible>> =
                        Box::pin(async move { Ok(serve_closing_unanswered(req, |req| port.handle(req)).await) });
                    fut
                });
                // `PollAgain`: reading a request body wakes the connection's own task.
                let conn = PollAgain::new(graceful.watch(h1.serve_connection(TokioIo::new(stream), svc)));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("AWS port connection: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("AWS port: drain time of {drain:?} passed with requests still open"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts_name_the_bucket_and_other_hosts_are_path_style() {
        let bucket = |h: &str| Hosts.parse_host_header(h).unwrap().bucket().map(str::to_owned);
        assert_eq!(bucket("photos.s3.localhost:4566").as_deref(), Some("photos"));
        assert_eq!(bucket("photos.s3.localhost").as_deref(), Some("photos"));
        assert_eq!(bucket("s3.localhost:4566"), None);
        assert_eq!(bucket("127.0.0.1:4566"), None);
        assert_eq!(bucket("localhost"), None);
    }
}
