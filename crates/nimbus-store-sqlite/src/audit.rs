//! The audit log in the registry database (`synchronous=FULL`: an acknowledged management
//! action's entry survives a power cut). Appended in one transaction per call, read newest
//! first, and pruned with the invocation records (`records.rs`).

use async_trait::async_trait;
use nimbus_core::{AuditAction, AuditEntry, AuditError, AuditLog, AuditQuery};
use rusqlite::params;

use crate::{Result, Store};

impl Store {
    pub fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO audit(ts_ms, action, target, error, actor, token_id, source, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in entries {
                ins.execute(params![
                    e.ts_ms,
                    e.action.as_str(),
                    e.target,
                    e.error,
                    e.actor,
                    e.token_id,
                    e.source,
                    e.count
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Entries newest first. An action this release does not know (a newer nimbus wrote it)
    /// is an error naming it.
    pub fn audit_entries(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT ts_ms, action, target, error, actor, token_id, source, count FROM audit
             WHERE ts_ms >= ?1 AND (?2 IS NULL OR action = ?2)
             ORDER BY ts_ms DESC, seq DESC LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![q.since_ms, q.action.map(AuditAction::as_str), q.limit.max(1)], |r| {
                let action: String = r.get(1)?;
                Ok(AuditEntry {
                    ts_ms: r.get(0)?,
                    action: AuditAction::parse(&action).ok_or_else(|| {
                        rusqlite::Error::FromSqlConversionFailure(
                            1,
                            rusqlite::types::Type::Text,
                            format!("unknown audit action {action:?} (written by a newer nimbus?)").into(),
                        )
                    })?,
                    target: r.get(2)?,
                    error: r.get(3)?,
                    actor: r.get(4)?,
                    token_id: r.get(5)?,
                    source: r.get(6)?,
                    count: r.get(7)?,
                })
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[async_trait]
impl AuditLog for Store {
    async fn append(&self, entries: &[AuditEntry]) -> std::result::Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.blocking(move |s| s.append_audit(&entries)).await.map_err(|e| AuditError::new("write", e))
    }

    async fn entries(&self, q: &AuditQuery) -> std::result::Result<Vec<AuditEntry>, AuditError> {
        let q = q.clone();
        self.blocking(move |s| s.audit_entries(&q)).await.map_err(|e| AuditError::new("read", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts_ms: u64, action: AuditAction, target: &str) -> AuditEntry {
        AuditEntry {
            ts_ms,
            action,
            target: target.into(),
            error: None,
            actor: "admin.token".into(),
            token_id: None,
            source: "127.0.0.1".into(),
            count: 1,
        }
    }

    #[tokio::test]
    async fn entries_read_back_newest_first_filtered_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let denied = AuditEntry {
                error: Some("invalid token".into()),
                actor: "unknown token".into(),
                count: 7,
                ..entry(30, AuditAction::AuthFailed, "GET /v1/app")
            };
            let batch = [entry(10, AuditAction::Deploy, "version 1"), entry(20, AuditAction::Rollback, "version 1")];
            s.append(&batch).await.unwrap();
            s.append(&[denied]).await.unwrap();
            s.append(&[]).await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let q = |since_ms, action, limit| AuditQuery { since_ms, action, limit };
        let all = s.entries(&q(0, None, 100)).await.unwrap();
        let shown: Vec<(u64, &str)> = all.iter().map(|e| (e.ts_ms, e.action.as_str())).collect();
        assert_eq!(shown, [(30, "auth.failed"), (20, "rollback"), (10, "deploy")]);
        assert_eq!((all[0].count, all[0].error.as_deref()), (7, Some("invalid token")));
        assert_eq!(s.entries(&q(15, None, 100)).await.unwrap().len(), 2, "since");
        assert_eq!(s.entries(&q(0, None, 1)).await.unwrap().len(), 1, "limit");
        let deploys = s.entries(&q(0, Some(AuditAction::Deploy), 100)).await.unwrap();
        assert_eq!(deploys, vec![entry(10, AuditAction::Deploy, "version 1")]);
    }

    /// The record writer prunes audit entries with the records, by the same retention.
    #[tokio::test]
    async fn entries_past_the_retention_are_pruned_with_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let now = nimbus_core::ids::now_ms();
        s.append(&[entry(now - 3_600_000, AuditAction::Deploy, "old"), entry(now, AuditAction::Deploy, "new")])
            .await
            .unwrap();
        let writer = s.record_writer(std::time::Duration::from_secs(60)).unwrap();
        writer.close(); // it prunes once at start
        let left = s.entries(&AuditQuery { since_ms: 0, action: None, limit: 10 }).await.unwrap();
        assert_eq!(left.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["new"]);
    }
}
