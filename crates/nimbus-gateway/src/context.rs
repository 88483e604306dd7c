//! What every handler shares: the [`Gateway`] (its collaborators, settings and credentials),
//! who a request is ([`Gateway::authenticate`]: the admin token, an API token or a dashboard
//! session), what the audit log hears about it, and bounded body reading. Handlers import from
//! here; nothing here imports a handler.

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use nimbus_control::{Control, LiveToken};
use nimbus_core::ids::now_ms;
use nimbus_core::{AuditAction, AuditEntry, AuditLog, History, KvStore, Scope, TokenDigest};
use nimbus_scheduler::Scheduler;

use crate::audit::Audit;
use crate::config::GatewayConfig;
use crate::metrics::{Metrics, Refusal};
use crate::session::{session_cookie, Sessions};

/// What `/metrics` reports besides what the gateway counts itself.
pub struct Telemetry {
    /// Shared with the scheduler's recorder, which feeds it every finished invocation.
    pub metrics: Arc<Metrics>,
    /// The record writer's count of records it had to drop.
    pub records_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Object storage and KV use (shared with the S3 port and the wasm runtime).
    pub storage: Arc<nimbus_core::meter::StorageMeter>,
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
    /// The KV store (`/v1/kv` and functions' KV calls).
    pub(crate) kv: Arc<dyn KvStore>,
    /// The digest of `DATA_DIR/admin.token`, the bootstrap credential (scope admin).
    admin_digest: TokenDigest,
    /// Signed-in dashboard sessions.
    pub(crate) sessions: Sessions,
    /// Connections open now (`server.rs` holds it under `config.max_connections`).
    pub(crate) connections: AtomicUsize,
    pub(crate) audit: Audit,
    /// The object store (`/v1/buckets`).
    pub(crate) objects: Arc<dyn nimbus_core::ObjectStore>,
    /// The message queues (`/v1/queues`).
    pub(crate) messages: Arc<dyn nimbus_core::messages::MessageQueues>,
    /// Object storage and KV use: counted by KV calls, read by `/metrics` and `/v1/usage`.
    pub(crate) storage: Arc<nimbus_core::meter::StorageMeter>,
    /// The edge layer's compiled plans and fetched JWK sets.
    pub(crate) edge: crate::edge::EdgeState,
    /// The rate limits' counters (`edge::limits`).
    pub(crate) limiter: crate::edge::limits::Limiter,
    /// The response cache (`edge::cache`).
    pub(crate) cache: Arc<crate::edge::cache::Cache>,
    /// The gateway itself, for work that outlives a request (a cache's background refresh).
    pub(crate) me: std::sync::Weak<Gateway>,
    /// The live nodes (`/v1/nodes`): this one alone, or the cluster's membership.
    pub(crate) nodes: Arc<dyn nimbus_core::nodes::Nodes>,
    /// The other nodes, asked for their records, logs and usage (`merge.rs`); `None` alone.
    pub(crate) peers: Option<Arc<dyn nimbus_core::peers::Peers>>,
}

/// Who a request is, once its credential checked out.
pub(crate) enum Credential {
    /// `DATA_DIR/admin.token`.
    AdminToken,
    /// A signed-in dashboard session (admin).
    Session,
    /// A token from `POST /v1/tokens`.
    Token(Arc<LiveToken>),
}

impl Credential {
    pub(crate) fn scope(&self) -> Scope {
        match self {
            Credential::AdminToken | Credential::Session => Scope::Admin,
            Credential::Token(t) => t.record.scope,
        }
    }

    /// How the audit log names it.
    pub(crate) fn name(&self) -> &str {
        match self {
            Credential::AdminToken => "admin.token",
            Credential::Session => "dashboard session",
            Credential::Token(t) => t.record.label(),
        }
    }

    pub(crate) fn token_id(&self) -> Option<&str> {
        match self {
            Credential::Token(t) => Some(&t.record.id),
            _ => None,
        }
    }

    /// How refusals name it: "token ci (tok_…)", "admin.token".
    pub(crate) fn describe(&self) -> String {
        match self {
            Credential::Token(t) if t.record.name.is_some() => format!("token {} ({})", t.record.label(), t.record.id),
            Credential::Token(t) => format!("token {}", t.record.id),
            other => other.name().to_owned(),
        }
    }

    /// Whether its function list lets it invoke `function` (only invoke tokens get that far).
    pub(crate) fn may_invoke(&self, function: &str) -> bool {
        match self {
            Credential::Token(t) => t.record.may_invoke(function),
            _ => true,
        }
    }

    /// The functions it is limited to (empty: none named): what an invoke token may invoke, or
    /// what a deploy token's deploys and rollbacks may change.
    pub(crate) fn functions(&self) -> &[String] {
        match self {
            Credential::Token(t) => &t.record.functions,
            _ => &[],
        }
    }
}

/// Why a request's credential was refused (a 401, or the Invoke API's 403).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Missing,
    /// Not the admin token and no unrevoked token's secret.
    Unknown,
    Expired {
        label: String,
        id: String,
    },
    /// A session cookie that is not (or no longer) signed in.
    SessionEnded,
}

impl Refused {
    pub(crate) fn reason(&self) -> String {
        match self {
            Refused::Missing => "no credentials".to_owned(),
            Refused::Unknown => "unknown or revoked token".to_owned(),
            Refused::Expired { label, .. } => format!("token {label} has expired"),
            Refused::SessionEnded => "the dashboard session has ended; sign in again".to_owned(),
        }
    }

    fn actor(&self) -> &str {
        match self {
            Refused::Missing => "anonymous",
            Refused::Unknown => "unknown token",
            Refused::Expired { label, .. } => label,
            Refused::SessionEnded => "dashboard session",
        }
    }
}

/// Longest target an audit entry keeps of a refused request (its path is the client's choice).
const MAX_TARGET: usize = 200;

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
    pub kv: Arc<dyn KvStore>,
    pub telemetry: Telemetry,
    pub audit: Arc<dyn AuditLog>,
    /// The object store (`/v1/buckets`).
    pub objects: Arc<dyn nimbus_core::ObjectStore>,
    /// The message queues (`/v1/queues`, their metrics and the dashboard).
    pub messages: Arc<dyn nimbus_core::messages::MessageQueues>,
    /// The live nodes (`/v1/nodes`).
    pub nodes: Arc<dyn nimbus_core::nodes::Nodes>,
    /// In a cluster: the other nodes, whose records, logs and usage the management API merges.
    pub peers: Option<Arc<dyn nimbus_core::peers::Peers>>,
}

impl Gateway {
    pub fn new(parts: Parts, config: GatewayConfig, admin_token: &str) -> Arc<Gateway> {
        crate::edge::client::trust(&config.trusted_proxies);
        Arc::new_cyclic(|me| Gateway {
            limiter: crate::edge::limits::Limiter::new(parts.kv.clone()),
            cache: Arc::new(crate::edge::cache::Cache::new(
                config.cache_memory_bytes,
                config
                    .cache_dir
                    .as_deref()
                    .filter(|_| config.cache_disk_bytes > 0)
                    .and_then(|dir| crate::edge::cache::Disk::open(dir, config.cache_disk_bytes)),
            )),
            me: me.clone(),
            control: parts.control,
            history: parts.history,
            scheduler: parts.scheduler,
            config,
            metrics: parts.telemetry.metrics,
            records_dropped: parts.telemetry.records_dropped,
            queue: parts.queue,
            kv: parts.kv,
            admin_digest: TokenDigest::of(admin_token),
            sessions: Sessions::default(),
            connections: AtomicUsize::new(0),
            audit: Audit::new(parts.audit),
            objects: parts.objects,
            messages: parts.messages,
            storage: parts.telemetry.storage,
            edge: Default::default(),
            nodes: parts.nodes,
            peers: parts.peers,
        })
    }

    /// The storage meter (the S3 port counts into it too).
    pub fn storage_meter(&self) -> Arc<nimbus_core::meter::StorageMeter> {
        self.storage.clone()
    }

    /// Who the request is: `Authorization: Bearer <secret>` when it has one, else a dashboard
    /// session cookie (see `session.rs`). Reads memory only (the control plane's token set).
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Credential, Refused> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(secret) = bearer {
            return self.check_secret(secret);
        }
        match session_cookie(headers) {
            Some(id) if self.sessions.valid(id) => Ok(Credential::Session),
            Some(_) => Err(Refused::SessionEnded),
            None => Err(Refused::Missing),
        }
    }

    /// A presented secret: the admin token, or an unrevoked, unexpired token. Only digests are
    /// compared, and in constant time (see [`TokenDigest`]).
    pub(crate) fn check_secret(&self, secret: &str) -> Result<Credential, Refused> {
        let digest = TokenDigest::of(secret);
        if digest == self.admin_digest {
            return Ok(Credential::AdminToken);
        }
        let token = self.control.token(&digest).ok_or(Refused::Unknown)?;
        let now = now_ms();
        if token.record.expired(now) {
            return Err(Refused::Expired { label: token.record.label().to_owned(), id: token.record.id.clone() });
        }
        token.touch(now);
        Ok(Credential::Token(token))
    }

    /// Note a refused credential in the audit log (coalesced: see `audit.rs`).
    pub(crate) fn refused(&self, source: IpAddr, target: &str, why: &Refused) {
        let token_id = match why {
            Refused::Expired { id, .. } => Some(id.clone()),
            _ => None,
        };
        self.audit.refused(AuditEntry {
            ts_ms: now_ms(),
            action: AuditAction::AuthFailed,
            target: target.chars().take(MAX_TARGET).collect(),
            error: Some(why.reason()),
            actor: why.actor().to_owned(),
            token_id,
            source: source.to_string(),
            count: 1,
        });
    }

    /// Note a credential refused for its scope (or its function list), coalesced like
    /// [`Gateway::refused`].
    pub(crate) fn denied(&self, source: IpAddr, target: &str, who: &Credential, reason: String) {
        self.audit.refused(AuditEntry {
            ts_ms: now_ms(),
            action: AuditAction::AuthDenied,
            target: target.chars().take(MAX_TARGET).collect(),
            error: Some(reason),
            actor: who.name().to_owned(),
            token_id: who.token_id().map(str::to_owned),
            source: source.to_string(),
            count: 1,
        });
    }

    /// Append a management action to the audit log before its answer goes out.
    pub(crate) async fn audit_action(
        &self,
        who: &Credential,
        source: IpAddr,
        action: AuditAction,
        target: String,
        outcome: Result<(), String>,
    ) {
        let entry = AuditEntry {
            ts_ms: now_ms(),
            action,
            target,
            error: outcome.err(),
            actor: who.name().to_owned(),
            token_id: who.token_id().map(str::to_owned),
            source: source.to_string(),
            count: 1,
        };
        self.audit.record(entry).await;
    }

    /// Write the refused credentials still gathered in memory (call once serving has stopped).
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
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
