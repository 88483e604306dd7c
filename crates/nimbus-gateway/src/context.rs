//! What every handler shares: the [`Gateway`] (its collaborators, settings and credentials),
//! the admin-token check, and bounded body reading. Handlers import from here; nothing here
//! imports a handler.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use nimbus_control::Control;
use nimbus_core::History;
use nimbus_scheduler::Scheduler;
use sha2::{Digest, Sha256};

use crate::config::GatewayConfig;
use crate::metrics::{Metrics, Refusal};
use crate::session::Sessions;

/// What `/metrics` reports besides what the gateway counts itself.
pub struct Telemetry {
    /// Shared with the scheduler's recorder, which feeds it every finished invocation.
    pub metrics: Arc<Metrics>,
    /// The record writer's count of records it had to drop.
    pub records_dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// The HTTP layer's view of the rest of nimbus. It holds its collaborators as trait objects
/// (the control plane, the history) or as the engines they are (scheduler, async engine), and
/// never names a store.
pub struct Gateway {
    pub(crate) control: Arc<dyn Control>,
    pub(crate) history: Arc<dyn History>,
    pub(crate) scheduler: Scheduler,
    pub(crate) config: GatewayConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) records_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The async engine (durable queue, retries, dead letters, cron).
    pub(crate) queue: Arc<nimbus_queue::Engine>,
    token_sha256: [u8; 32],
    /// Signed-in dashboard sessions.
    pub(crate) sessions: Sessions,
    /// Connections open now (`server.rs` holds it under `config.max_connections`).
    pub(crate) connections: AtomicUsize,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    /// Not complete within the body timeout, or a pause longer than the idle timeout (408).
    TimedOut,
    Broken,
}

/// The collaborators a gateway is built from.
pub struct Parts {
    pub control: Arc<dyn Control>,
    pub history: Arc<dyn History>,
    pub scheduler: Scheduler,
    pub queue: Arc<nimbus_queue::Engine>,
    pub telemetry: Telemetry,
}

impl Gateway {
    pub fn new(parts: Parts, config: GatewayConfig, admin_token: &str) -> Arc<Gateway> {
        Arc::new(Gateway {
            control: parts.control,
            history: parts.history,
            scheduler: parts.scheduler,
            config,
            metrics: parts.telemetry.metrics,
            records_dropped: parts.telemetry.records_dropped,
            queue: parts.queue,
            token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            sessions: Sessions::default(),
            connections: AtomicUsize::new(0),
        })
    }

    /// Whether the request carries the admin token as `Authorization: Bearer …`, or a dashboard
    /// session cookie (see `session.rs`).
    pub(crate) fn authorized(&self, req: &Request<Incoming>) -> bool {
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        bearer.is_some_and(|t| self.token_matches(t)) || self.sessions.has_session(req.headers())
    }

    /// Whether `token` is the admin token. Compares digests, so the comparison time says
    /// nothing about the token.
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        got.iter().zip(self.token_sha256.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The body, up to the payload limit, within the body timeouts.
    pub(crate) async fn read_body(&self, body: Incoming) -> Result<Bytes, BodyError> {
        self.read_body_up_to(body, self.config.max_payload).await
    }

    /// The body, up to `limit` bytes, complete within the body timeout and with no pause
    /// between two pieces longer than the idle timeout. A body that stops is dropped unread,
    /// and hyper then closes an HTTP/1.1 connection after the answer.
    pub(crate) async fn read_body_up_to(&self, body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
        use hyper::body::Body as _;
        if body.is_end_stream() {
            return Ok(Bytes::new());
        }
        let idle = self.config.body_idle_timeout;
        let read = async {
            let mut body = Limited::new(body, limit);
            let mut pieces = Pieces::default();
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => {
                        self.metrics.refused(Refusal::BodyIdle);
                        return Err(BodyError::TimedOut);
                    }
                    Ok(None) => return Ok(pieces.into_bytes()),
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(e))) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                        return Err(BodyError::TooLarge)
                    }
                    Ok(Some(Err(_))) => return Err(BodyError::Broken),
                };
                if let Ok(data) = frame.into_data() {
                    pieces.push(data);
                }
            }
        };
        match tokio::time::timeout(self.config.body_timeout, read).await {
            Ok(read) => read,
            Err(_) => {
                self.metrics.refused(Refusal::BodyTimeout);
                Err(BodyError::TimedOut)
            }
        }
    }
}

/// A body's pieces: the first kept as it came (most bodies are one piece), later ones copied
/// after it.
#[derive(Default)]
struct Pieces {
    first: Bytes,
    rest: Option<BytesMut>,
}

impl Pieces {
    fn push(&mut self, data: Bytes) {
        match &mut self.rest {
            Some(rest) => rest.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut rest = BytesMut::with_capacity(self.first.len() + data.len());
                rest.extend_from_slice(&self.first);
                rest.extend_from_slice(&data);
                self.rest = Some(rest);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        self.rest.map_or(self.first, BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::Pieces;

    #[test]
    fn pieces_join_in_order() {
        let mut p = Pieces::default();
        assert!(p.into_bytes().is_empty());
        p = Pieces::default();
        p.push("ab".into());
        assert_eq!(p.into_bytes(), "ab");
        p = Pieces::default();
        for s in ["ab", "", "cd", "e"] {
            p.push(s.into());
        }
        assert_eq!(p.into_bytes(), "abcde");
    }
}
