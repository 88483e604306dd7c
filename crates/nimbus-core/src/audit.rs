//! The audit seam: who did what to the management plane, from where, and how it ended —
//! deploys, rollbacks, dead-letter redrives and purges, token creation and revocation,
//! dashboard sign-ins, and every refused credential.
//!
//! Lifecycle: one `AuditLog` is opened at start by the composition root and handed to the
//! gateway (and used by `nimbus up` for the deploy it makes at start). Management actions are
//! rare, so the gateway appends them before it answers; refused credentials can come in floods,
//! so the gateway coalesces them in memory and appends at most one batch per second (see its
//! `audit.rs`). `entries` is read on demand by `GET /v1/audit`. Never called on a function's
//! request path. Entries are kept as long as invocation records (`nimbus up --retention`).

use async_trait::async_trait;

/// What was done (or attempted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    Deploy,
    Rollback,
    DlqRedrive,
    DlqPurge,
    TokenCreate,
    TokenRevoke,
    /// A managed AWS access key created (`POST /v1/keys`).
    KeyCreate,
    /// A managed AWS access key revoked (`DELETE /v1/keys/{id}`).
    KeyRevoke,
    /// A dashboard sign-in that succeeded.
    Login,
    /// A request with no credential, an unknown, revoked or expired one, or a refused sign-in.
    AuthFailed,
    /// A valid credential whose scope does not allow what it asked for.
    AuthDenied,
    /// A KV namespace deleted with every key in it (`nimbus kv rm-namespace`).
    KvDeleteNamespace,
    /// `nimbus buckets rm` (`DELETE /v1/buckets/{name}`).
    DeleteBucket,
    /// `nimbus queues purge` (`POST /v1/queues/{name}/purge`).
    QueuePurge,
    /// `nimbus queues redrive` (`POST /v1/queues/{name}/redrive`).
    QueueRedrive,
    /// `nimbus traffic set` (`PUT /v1/aliases/{name}/traffic`).
    Traffic,
    /// A canary's step, promotion or rollback, decided by the server.
    Canary,
    /// `nimbus cache purge` (`POST /v1/cache/purge`).
    CachePurge,
}

impl AuditAction {
    pub const ALL: [AuditAction; 18] = [
        AuditAction::Deploy,
        AuditAction::Rollback,
        AuditAction::DlqRedrive,
        AuditAction::DlqPurge,
        AuditAction::TokenCreate,
        AuditAction::TokenRevoke,
        AuditAction::KeyCreate,
        AuditAction::KeyRevoke,
        AuditAction::Login,
        AuditAction::AuthFailed,
        AuditAction::AuthDenied,
        AuditAction::KvDeleteNamespace,
        AuditAction::DeleteBucket,
        AuditAction::QueuePurge,
        AuditAction::QueueRedrive,
        AuditAction::Traffic,
        AuditAction::Canary,
        AuditAction::CachePurge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Deploy => "deploy",
            AuditAction::Rollback => "rollback",
            AuditAction::DlqRedrive => "dlq.redrive",
            AuditAction::DlqPurge => "dlq.purge",
            AuditAction::TokenCreate => "token.create",
            AuditAction::TokenRevoke => "token.revoke",
            AuditAction::KeyCreate => "key.create",
            AuditAction::KeyRevoke => "key.revoke",
            AuditAction::Login => "login",
            AuditAction::AuthFailed => "auth.failed",
            AuditAction::AuthDenied => "auth.denied",
            AuditAction::KvDeleteNamespace => "kv.delete-namespace",
            AuditAction::DeleteBucket => "bucket.delete",
            AuditAction::QueuePurge => "queue.purge",
            AuditAction::QueueRedrive => "queue.redrive",
            AuditAction::Traffic => "traffic",
            AuditAction::Canary => "canary",
            AuditAction::CachePurge => "cache.purge",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When it happened (for coalesced failures: the first of them).
    pub ts_ms: u64,
    pub action: AuditAction,
    /// What it was done to: "version 3", "tok_…", "POST /v1/deployments", "dashboard login".
    pub target: String,
    /// `None` when it succeeded; else why not.
    pub error: Option<String>,
    /// Who: `admin.token`, a token's name (or id when it has none), `dashboard session`,
    /// `nimbus up`, or `anonymous` / `unknown token` for refused credentials.
    pub actor: String,
    /// The token's id when a token did it.
    pub token_id: Option<String>,
    /// The client's address (IP), or `local` for `nimbus up` itself.
    pub source: String,
    /// How many times it happened: 1, or more for refused credentials coalesced into one entry.
    pub count: u32,
}

impl AuditEntry {
    /// Something `nimbus up` itself did (a deploy at start, a canary's decision), now.
    pub fn local(action: AuditAction, target: String, error: Option<String>) -> AuditEntry {
        AuditEntry {
            ts_ms: crate::ids::now_ms(),
            action,
            target,
            error,
            actor: "nimbus up".to_owned(),
            token_id: None,
            source: "local".to_owned(),
            count: 1,
        }
    }
}

/// Filters for reading the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since_ms: u64,
    pub action: Option<AuditAction>,
    pub limit: u32,
}

/// Why the audit log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} the audit log: {source}")]
pub struct AuditError {
    /// "write" or "read".
    pub action: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl AuditError {
    pub fn new(action: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        AuditError { action, source: Box::new(source) }
    }
}

/// The audit log. See the module docs for who calls it, and when.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Store entries durably, in one transaction; returns once they are stored.
    async fn append(&self, entries: &[AuditEntry]) -> Result<(), AuditError>;
    /// Entries newest first.
    async fn entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, AuditError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("deploys"), None);
    }
}
