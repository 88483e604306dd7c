//! The HTTP server: accept loop, graceful drain, and the first split of every request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use nimbus_scheduler::Scheduler;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::control::ControlPlane;
use crate::metrics::Metrics;
use crate::util::{json, Resp};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest request body / invoke payload (Lambda: 6 MB).
    pub max_payload: usize,
    /// Largest app archive `POST /v1/deployments` accepts (an app with its node_modules).
    pub max_upload: usize,
    /// Time allowed to send the request headers, and then the body.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Whether the Invoke API works without a token (true when listening on loopback only).
    pub invoke_open: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_payload: nimbus_core::invoke::MAX_PAYLOAD_BYTES,
            max_upload: 256 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            invoke_open: true,
        }
    }
}

/// What the gateway reports at `/metrics` besides what it counts itself.
pub struct Telemetry {
    /// Shared with the scheduler's recorder, which feeds it every finished invocation.
    pub metrics: Arc<Metrics>,
    /// The record writer's count of records it had to drop.
    pub records_dropped: Arc<std::sync::atomic::AtomicU64>,
}

pub struct Gateway {
    pub(crate) control: Arc<ControlPlane>,
    pub(crate) scheduler: Scheduler,
    pub(crate) config: GatewayConfig,
    pub(crate) metrics: Arc<Metrics>,
    records_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The async engine (durable queue, retries, dead letters, cron).
    pub(crate) queue: Arc<nimbus_queue::Engine>,
    token_sha256: [u8; 32],
    /// Signed-in dashboard sessions.
    pub(crate) sessions: crate::dashboard::Sessions,
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    TimedOut,
    Broken,
}

impl Gateway {
    pub fn new(
        control: Arc<ControlPlane>,
        scheduler: Scheduler,
        queue: Arc<nimbus_queue::Engine>,
        config: GatewayConfig,
        admin_token: &str,
        telemetry: Telemetry,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            control,
            scheduler,
            config,
            metrics: telemetry.metrics,
            records_dropped: telemetry.records_dropped,
            queue,
            token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            sessions: Default::default(),
        })
    }

    /// Whether the request carries the admin token as `Authorization: Bearer …`, or a dashboard
    /// session cookie (see `dashboard.rs`).
    pub(crate) fn authorized(&self, req: &Request<Incoming>) -> bool {
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        bearer.is_some_and(|t| self.token_matches(t)) || crate::dashboard::has_session(self, req.headers())
    }

    /// Whether `token` is the admin token. Compares digests, so the comparison time says
    /// nothing about the token.
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        got.iter().zip(self.token_sha256.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub(crate) async fn read_body(&self, body: Incoming) -> Result<Bytes, BodyError> {
        self.read_body_up_to(body, self.config.max_payload).await
    }

    pub(crate) async fn read_body_up_to(&self, body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
        match tokio::time::timeout(self.config.body_timeout, Limited::new(body, limit).collect()).await {
            Err(_) => Err(BodyError::TimedOut),
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge),
            Ok(Err(_)) => Err(BodyError::Broken),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, remote: SocketAddr) -> Resp {
        let path = req.uri().path();
        let (kind, resp) = if path == "/healthz" {
            ("health", self.health())
        } else if path == "/metrics" {
            ("metrics", self.metrics_page().await)
        } else if path.starts_with("/v1/") || path == "/v1" {
            ("management", crate::mgmt::handle(&self, req).await)
        } else if path == "/dashboard" || path.starts_with("/dashboard/") {
            ("dashboard", crate::dashboard::handle(&self, req).await)
        } else if path.starts_with("/2015-03-31/functions/") {
            ("invoke", crate::invoke_api::handle(&self, req).await)
        } else {
            ("route", crate::http_route::handle(&self, req, remote).await)
        };
        self.metrics.request(kind, resp.status().as_u16());
        resp
    }

    async fn metrics_page(&self) -> Resp {
        let queue = match self.queue.store().stats().await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!("/metrics: cannot read the async queue's counts: {e}");
                Vec::new()
            }
        };
        let text = self.metrics.render(&crate::metrics::Scrape {
            pools: &self.scheduler.status(),
            queue: &queue,
            outcomes: &self.queue.outcomes(),
            records_dropped: self.records_dropped.load(std::sync::atomic::Ordering::Relaxed),
            now_ms: nimbus_queue::now_ms(),
        });
        let mut r = json(StatusCode::OK, &json!(null));
        *r.body_mut() = text.into();
        crate::util::set_header(&mut r, "content-type", crate::metrics::CONTENT_TYPE);
        r
    }

    fn health(&self) -> Resp {
        match &self.control.snapshot().live {
            Some(live) => json(StatusCode::OK, &json!({"status": "ok", "app": live.app, "version": live.version})),
            None => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "starting", "message": "no deployment is live yet"}),
            ),
        }
    }
}

/// Serve until `shutdown` resolves, then stop accepting and let open requests finish for up to
/// `drain`.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>, drain: Duration) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.config.header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gw = gateway.clone();
                let svc = service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(gw.handle(req, remote).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("drain time of {drain:?} passed with requests still open"),
    }
}
