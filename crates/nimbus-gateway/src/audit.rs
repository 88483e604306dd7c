//! The gateway's side of the audit log ([`nimbus_core::AuditLog`]).
//!
//! Management actions (deploy, rollback, redrive, purge, token create and revoke, sign-in) are
//! rare: each is appended, synchronously, before its answer goes out, so an acknowledged action
//! is on record.
//!
//! Refused credentials can come in floods, and one disk write per refused request would let
//! anyone who can reach the port keep the registry's disk busy. So refusals are coalesced in
//! memory: per second, one entry per (address, action, actor, target, reason), counting
//! repeats; past [`MAX_KEYS`] distinct ones in a second, the rest fold into one entry for
//! "other addresses".
//! The first refusal of a window spawns a task that appends the window's entries in one
//! transaction a second later. A flood therefore costs at most one transaction of at most
//! `MAX_KEYS + 1` rows per second, and memory for `MAX_KEYS + 1` entries, whatever its rate;
//! coalescing (rather than a bounded queue that drops when full) keeps the count of every
//! refusal, so the log still says how big the flood was and where it came from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::{AuditAction, AuditEntry, AuditError, AuditLog, AuditQuery};

/// How long refusals are gathered before they are written.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// Distinct (address, action, actor, target, reason) entries kept per window.
pub(crate) const MAX_KEYS: usize = 64;

type Key = (String, AuditAction, String, String, Option<String>);

#[derive(Default)]
struct Window {
    /// Whether a flush task is waiting for this window to end.
    open: bool,
    pending: HashMap<Key, AuditEntry>,
    overflow: Option<AuditEntry>,
}

impl Window {
    fn take(&mut self) -> Vec<AuditEntry> {
        self.open = false;
        let mut entries: Vec<AuditEntry> = self.pending.drain().map(|(_, e)| e).chain(self.overflow.take()).collect();
        entries.sort_by_key(|e| e.ts_ms);
        entries
    }
}

/// Writes the audit log for the gateway.
pub(crate) struct Audit {
    log: Arc<dyn AuditLog>,
    window: Arc<Mutex<Window>>,
}

impl Audit {
    pub(crate) fn new(log: Arc<dyn AuditLog>) -> Audit {
        Audit { log, window: Arc::default() }
    }

    /// Append one management action now. A failed write is logged, not returned: the action has
    /// happened and its answer stands.
    pub(crate) async fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.log.append(std::slice::from_ref(&entry)).await {
            tracing::error!("{e}; the entry was: {entry:?}");
        }
    }

    /// Count a refused credential into this second's window (see the module docs).
    pub(crate) fn refused(&self, entry: AuditEntry) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let key = (entry.source.clone(), entry.action, entry.actor.clone(), entry.target.clone(), entry.error.clone());
        if let Some(e) = w.pending.get_mut(&key) {
            e.count = e.count.saturating_add(entry.count);
        } else if w.pending.len() < MAX_KEYS {
            w.pending.insert(key, entry);
        } else {
            let o = w.overflow.get_or_insert_with(|| AuditEntry {
                target: "(various)".into(),
                error: Some(format!("more than {MAX_KEYS} kinds of refusal in one second; counted together")),
                actor: "(various)".into(),
                token_id: None,
                source: "other addresses".into(),
                count: 0,
                ..entry
            });
            o.count = o.count.saturating_add(1);
        }
        if !w.open {
            w.open = true;
            let (window, log) = (self.window.clone(), self.log.clone());
            tokio::spawn(async move {
                tokio::time::sleep(WINDOW).await;
                let entries = window.lock().unwrap_or_else(|e| e.into_inner()).take();
                append_refusals(log.as_ref(), &entries).await;
            });
        }
    }

    /// Write refusals still waiting for their window to end (at shutdown).
    pub(crate) async fn flush(&self) {
        let entries = self.window.lock().unwrap_or_else(|e| e.into_inner()).take();
        append_refusals(self.log.as_ref(), &entries).await;
    }

    pub(crate) async fn entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, AuditError> {
        self.log.entries(query).await
    }
}

async fn append_refusals(log: &dyn AuditLog, entries: &[AuditEntry]) {
    if entries.is_empty() {
        return;
    }
    if let Err(e) = log.append(entries).await {
        tracing::error!("{e}; {} entries of refused credentials are lost", entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<Vec<Vec<AuditEntry>>>);

    #[async_trait::async_trait]
    impl AuditLog for Memory {
        async fn append(&self, entries: &[AuditEntry]) -> Result<(), AuditError> {
            self.0.lock().unwrap().push(entries.to_vec());
            Ok(())
        }
        async fn entries(&self, _: &AuditQuery) -> Result<Vec<AuditEntry>, AuditError> {
            Ok(self.0.lock().unwrap().concat())
        }
    }

    fn refusal(source: &str, ts_ms: u64) -> AuditEntry {
        AuditEntry {
            ts_ms,
            action: AuditAction::AuthFailed,
            target: "GET /v1/app".into(),
            error: Some("unknown or revoked token".into()),
            actor: "unknown token".into(),
            token_id: None,
            source: source.into(),
            count: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_one_write_a_second_and_keeps_its_count() {
        let memory = Arc::new(Memory::default());
        let audit = Audit::new(memory.clone());
        for i in 0..1000 {
            audit.refused(refusal("10.0.0.1", i));
        }
        audit.refused(refusal("10.0.0.2", 5));
        tokio::time::sleep(WINDOW / 2).await;
        assert!(memory.0.lock().unwrap().is_empty(), "nothing is written before the window ends");
        tokio::time::sleep(WINDOW).await;
        let writes = memory.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "one transaction");
        let counts: Vec<(&str, u32, u64)> = writes[0].iter().map(|e| (e.source.as_str(), e.count, e.ts_ms)).collect();
        assert_eq!(counts, [("10.0.0.1", 1000, 0), ("10.0.0.2", 1, 5)], "the first time, and every repeat counted");

        // The next window starts with the next refusal.
        audit.refused(refusal("10.0.0.1", 2000));
        tokio::time::sleep(WINDOW * 2).await;
        assert_eq!(memory.0.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn many_addresses_fold_into_one_entry_past_the_bound() {
        let memory = Arc::new(Memory::default());
        let audit = Audit::new(memory.clone());
        for i in 0..MAX_KEYS + 10 {
            audit.refused(refusal(&format!("10.0.{}.{}", i / 256, i % 256), 1));
        }
        tokio::time::sleep(WINDOW * 2).await;
        let writes = memory.0.lock().unwrap().clone();
        assert_eq!(writes[0].len(), MAX_KEYS + 1);
        let other = writes[0].iter().find(|e| e.source == "other addresses").unwrap();
        assert_eq!(other.count, 10);
        assert_eq!(writes[0].iter().map(|e| e.count).sum::<u32>(), MAX_KEYS as u32 + 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_writes_what_waits() {
        let memory = Arc::new(Memory::default());
        let audit = Audit::new(memory.clone());
        audit.refused(refusal("10.0.0.1", 1));
        audit.flush().await;
        assert_eq!(memory.0.lock().unwrap().len(), 1);
        tokio::time::sleep(WINDOW * 2).await;
        assert_eq!(memory.0.lock().unwrap().len(), 1, "the window's task finds nothing left to write");
    }
}
