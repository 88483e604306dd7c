//! The HTTP server: accept loop, graceful drain, and the first split of every request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use crate::context::Gateway;
use crate::util::{json, raw, Resp};

impl Gateway {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, remote: SocketAddr) -> Resp {
        let path = req.uri().path();
        let (kind, resp) = if path == "/healthz" {
            ("health", self.health())
        } else if path == "/metrics" {
            ("metrics", self.metrics_page().await)
        } else if path.starts_with("/v1/") || path == "/v1" {
            ("management", crate::mgmt::handle(&self, req, remote).await)
        } else if path == "/dashboard" || path.starts_with("/dashboard/") {
            ("dashboard", crate::dashboard::handle(&self, req, remote).await)
        } else if path.starts_with("/2015-03-31/functions/") {
            ("invoke", crate::invoke_api::handle(&self, req, remote).await)
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
            now_ms: nimbus_core::ids::now_ms(),
        });
        let mut r = raw(StatusCode::OK, text.into());
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
