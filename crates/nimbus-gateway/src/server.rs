//! The HTTP server: accept loop, connection limit, TLS, graceful drain, and the first split of
//! every request.
//!
//! Plain connections speak HTTP/1.1 only; TLS connections speak HTTP/2 or HTTP/1.1 as ALPN
//! chose. The limits, and what a client gets at each: over `max_connections` a new connection
//! is answered 503 with `Retry-After` and closed (plain HTTP: one non-blocking write, no task) or
//! closed (TLS: an answer would need a handshake); a request head over `max_header_bytes` or
//! with more than `max_headers` fields gets 431 (HTTP/1.1: hyper answers and closes the
//! connection; HTTP/2: h2 answers an over-size header list, the field count is checked here);
//! the body limits are in `context.rs`. Each refusal is counted (`Refusal`), except HTTP/2
//! header lists that h2 itself refuses before nimbus sees them.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use nimbus_core::expect::serve_closing_unanswered;
use nimbus_core::poll_again::PollAgain;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::body::{whole, GwResp};
use crate::coalesce::Coalesced;
use crate::config::GatewayConfig;
use crate::context::Gateway;
use crate::head_timer::HeadTimer;
use crate::metrics::Refusal;
use crate::util::{json, raw, Resp};

impl Gateway {
    async fn handle(self: &Arc<Self>, req: Request<Incoming>, remote: SocketAddr) -> GwResp {
        // HTTP/1.1 heads over the field limit never get here (hyper answers 431); HTTP/2 has no
        // field count of its own.
        if req.version() == http::Version::HTTP_2 && req.headers().len() > self.config.max_headers {
            self.metrics.refused(Refusal::Headers);
            return whole(json(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &json!({"message": format!("more than {} header fields", self.config.max_headers)}),
            ));
        }
        let path = req.uri().path();
        let (kind, resp) = if path == "/healthz" {
            ("health", whole(self.health()))
        } else if path == "/metrics" {
            ("metrics", whole(self.metrics_page().await))
        } else if path.starts_with("/v1/") || path == "/v1" {
            ("management", whole(crate::mgmt::handle(self, req, remote).await))
        } else if path == "/dashboard" || path.starts_with("/dashboard/") {
            ("dashboard", whole(crate::dashboard::handle(self, req, remote).await))
        } else if path.starts_with("/2015-03-31/functions/") {
            ("invoke", whole(crate::invoke_api::handle(self, req, remote).await))
        } else if path.starts_with(crate::invoke_stream::PREFIX) {
            ("invoke", crate::invoke_stream::handle(self, req, remote).await)
        } else {
            ("route", crate::http_route::handle(self, req, remote).await)
        };
        self.metrics.request(kind, resp.status().as_u16());
        resp
    }

    /// Buckets and KV namespaces with (name, objects or keys, bytes), read from their stores
    /// for `/metrics` (a failed read is logged and leaves the gauges out).
    async fn stored(&self) -> (Vec<(String, u64, u64)>, Vec<(String, u64, u64)>) {
        let buckets = match self.objects.list_buckets().await {
            Ok(b) => b.into_iter().map(|b| (b.name, b.objects, b.bytes)).collect(),
            Err(e) => {
                tracing::warn!("/metrics: cannot read the buckets: {e}");
                Vec::new()
            }
        };
        let namespaces = match self.kv.namespaces().await {
            Ok(n) => n.into_iter().map(|n| (n.name, n.keys, n.bytes)).collect(),
            Err(e) => {
                tracing::warn!("/metrics: cannot read the KV namespaces: {e}");
                Vec::new()
            }
        };
        (buckets, namespaces)
    }

    /// Each message queue's counts (from the store: queues exist without triggers) and the queue
    /// triggers' (none before the triggers start). A store that cannot be read is logged.
    async fn message_queues(
        &self,
    ) -> (Vec<(String, nimbus_core::messages::QueueStats)>, Vec<nimbus_queue::triggers::TriggerStats>) {
        let triggers = self.queue.triggers().map(|t| t.stats()).unwrap_or_default();
        let queues = match self.messages.list_queues("").await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!("/metrics: cannot read the message queues: {e}");
                return (Vec::new(), triggers);
            }
        };
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            match self.messages.stats(&q.name).await {
                Ok(s) => out.push((q.name, s)),
                Err(e) => tracing::debug!("/metrics: no counts for queue {}: {e}", q.name),
            }
        }
        (out, triggers)
    }

    async fn metrics_page(&self) -> Resp {
        let queue = match self.queue.store().stats().await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!("/metrics: cannot read the async queue's counts: {e}");
                Vec::new()
            }
        };
        let (buckets, namespaces) = self.stored().await;
        let (message_queues, triggers) = self.message_queues().await;
        let text = self.metrics.render(&crate::metrics::Scrape {
            pools: &self.scheduler.status(),
            queue: &queue,
            outcomes: &self.queue.outcomes(),
            records_dropped: self.records_dropped.load(std::sync::atomic::Ordering::Relaxed),
            now_ms: nimbus_core::ids::now_ms(),
            connections: self.connections.load(Ordering::Relaxed) as u64,
            s3: &self.storage.s3_totals(),
            buckets: &buckets,
            namespaces: &namespaces,
            message_queues: &message_queues,
            triggers: &triggers,
        });
        let mut r = raw(StatusCode::OK, text.into());
        crate::util::set_header(&mut r, "content-type", crate::metrics::CONTENT_TYPE);
        r
    }

    fn health(&self) -> Resp {
        match &self.control.snapshot().live {
            Some(live) => {
                let warnings = &self.config.info.warnings;
                let body = if warnings.is_empty() {
                    json!({"status": "ok", "app": live.app, "version": live.version})
                } else {
                    json!({"status": "ok", "app": live.app, "version": live.version, "warnings": warnings})
                };
                json(StatusCode::OK, &body)
            }
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
    let protocols = Arc::new(Protocols::new(&gateway.config));
    let tls = gateway.config.tls.clone().map(TlsAcceptor::from);
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
                let Some(slot) = Slot::take(&gateway) else {
                    refuse(stream, tls.is_none(), &gateway);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => {
                        let io = TokioIo::new(Coalesced::new(stream));
                        let conn = protocols.h1().serve_connection(io, service(&gateway, remote));
                        // `PollAgain`: reading a request body wakes the connection's own task.
                        let watched = PollAgain::new(graceful.watch(conn));
                        tokio::spawn(async move { slot.ended(watched.await) });
                    }
                    Some(acceptor) => {
                        let (acceptor, protocols, watcher) = (acceptor.clone(), protocols.clone(), graceful.watcher());
                        tokio::spawn(serve_tls(acceptor, stream, remote, slot, protocols, watcher));
                    }
                }
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

/// How connections are served: HTTP/1.1 (plain, or TLS without `h2`) and HTTP/2 (TLS with `h2`).
struct Protocols {
    /// HTTP/1.1 without its timer: [`Protocols::h1`] gives each connection one of its own.
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(config: &GatewayConfig) -> Protocols {
        let mut h1 = http1::Builder::new();
        h1.header_read_timeout(config.header_timeout)
            .keep_alive(true)
            // The read buffer stays 64 KiB unless the head limit needs more (hyper's minimum is 8 KiB).
            .max_buf_size(config.max_header_bytes.max(64 * 1024))
            .max_header_size(config.max_header_bytes)
            .max_headers(config.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new()).max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        Protocols { h1, h2 }
    }

    /// HTTP/1.1 for one connection, with the timer of its header read timeout.
    fn h1(&self) -> http1::Builder {
        let mut h1 = self.h1.clone();
        h1.timer(HeadTimer::default());
        h1
    }
}

fn service(
    gateway: &Arc<Gateway>,
    remote: SocketAddr,
) -> impl hyper::service::Service<Request<Incoming>, Response = GwResp, Error = Infallible, Future: Send> + Clone {
    // Each request's future holds the gateway, and so needs a clone of an `Arc` to it: a clone
    // of this connection's own, whose count stays with the core serving the connection. Cloning
    // the one `Arc<Gateway>` every connection shares wrote its count from every core on every
    // request (`perf`: about 0.1 µs a warm request).
    let gw = Arc::new(gateway.clone());
    service_fn(move |req| {
        let gw = gw.clone();
        async move { Ok::<_, Infallible>(serve_closing_unanswered(req, |req| gw.handle(req, remote)).await) }
    })
}

/// Handshake (within the header timeout), then serve the protocol ALPN chose.
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    protocols: Arc<Protocols>,
    watcher: Watcher,
) {
    let gw = &slot.0;
    let stream = match tokio::time::timeout(gw.config.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(%remote, "TLS handshake failed: {e}"),
        Err(_) => return tracing::debug!(%remote, "TLS handshake not done within the header timeout"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let svc = service(gw, remote);
    let io = TokioIo::new(stream);
    let ended = if h2 {
        watcher.watch(protocols.h2.serve_connection(io, svc)).await
    } else {
        PollAgain::new(watcher.watch(protocols.h1().serve_connection(io, svc))).await
    };
    slot.ended(ended);
}

/// One of the `max_connections` places, held while a connection is open.
struct Slot(Arc<Gateway>);

impl Slot {
    /// A place, or `None` at the limit. One atomic add on the way in (undone when over the
    /// limit), one subtract on the way out.
    fn take(gateway: &Arc<Gateway>) -> Option<Slot> {
        if gateway.connections.fetch_add(1, Ordering::Relaxed) >= gateway.config.max_connections {
            gateway.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(gateway.clone()))
    }

    /// The connection is over; count a head hyper refused (it has answered 431).
    fn ended(self, result: Result<(), hyper::Error>) {
        if let Err(e) = result {
            if e.is_parse_too_large() {
                self.0.metrics.refused(Refusal::Headers);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a plain HTTP connection over the limit reads before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 47\r\n\r\n{\"message\":\"too many connections; retry later\"}";

/// Refuse a connection over the limit, counted, without a task or a wait: on plain HTTP read
/// what already arrived (closing with unread data would reset the connection and could lose
/// the answer), write the 503 into the empty socket buffer, close. On TLS, close.
fn refuse(stream: TcpStream, answer: bool, gateway: &Gateway) {
    gateway.metrics.refused(Refusal::Connections);
    if !answer {
        return;
    }
    // A std socket, so the calls below are made now (tokio's `try_*` wait for readiness that
    // a connection this new has not reported yet). It stays non-blocking.
    let Ok(mut stream) = stream.into_std() else { return };
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.write(BUSY);
}
