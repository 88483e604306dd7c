//! Embedded storage for one node: SQLite (bundled) for the registry, invocation records and
//! logs, and content-addressed directories for code artifacts, all under the data dir.
//!
//! Only the control plane and the background record writer touch SQLite; the request path
//! reads an in-memory snapshot and hands records to the writer through a bounded channel.

mod artifacts;
mod queue;
mod records;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

pub use artifacts::{digest_dir, ArtifactStore};
pub use queue::QueueDb;
pub use records::{InvocationQuery, LogEntry, RecordWriter, UsageRow, USAGE_RETENTION};
pub use stats::{percentile, Stats, StatsBucket, StatsQuery};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored deployment: its number and the JSON body the deployer wrote.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentRow {
    pub version: u64,
    pub app: String,
    pub digest: String,
    pub created_ms: u64,
    #[serde(skip)]
    pub body: String,
}

/// The SQLite registry.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    db_path: PathBuf,
    pub artifacts: ArtifactStore,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, version INTEGER NOT NULL REFERENCES deployments(version));
CREATE TABLE IF NOT EXISTS invocations (
    request_id TEXT NOT NULL,
    function TEXT NOT NULL,
    version TEXT NOT NULL,
    trigger TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    max_memory_mb INTEGER NOT NULL,
    cold INTEGER NOT NULL,
    init_ms REAL,
    queue_ms REAL NOT NULL,
    status TEXT NOT NULL,
    error_type TEXT,
    error_message TEXT,
    instance_id TEXT
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations(function, start_ms);
CREATE INDEX IF NOT EXISTS invocations_by_id ON invocations(request_id);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs(function, seq);
DROP INDEX IF EXISTS logs_by_time;
DROP INDEX IF EXISTS invocations_by_time;
CREATE TABLE IF NOT EXISTS usage (
    function TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    mb_ms INTEGER NOT NULL,
    PRIMARY KEY (function, hour_ms)
) WITHOUT ROWID;
";

/// Columns added to `invocations` after its first release, added to older databases on open.
const ADDED_COLUMNS: &[(&str, &str)] = &[("instance_start_ms", "REAL"), ("runtime_init_ms", "REAL")];

fn migrate(conn: &Connection) -> Result<()> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('invocations')")?
        .query_map([], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    for (name, ty) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE invocations ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Store {
    /// Open (or create) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)?;
        let db_path = data_dir.join("nimbus.db");
        let conn = open_connection(&db_path)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            db_path,
            artifacts: ArtifactStore::open(&data_dir.join("artifacts"))?,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open the durable async queue (see [`QueueDb::open`] for `unsafe_ack`). It lives in its
    /// own database file: its fsyncs never wait behind record writes, and no other writer
    /// contends for its lock.
    pub fn queue(&self, unsafe_ack: bool) -> Result<QueueDb> {
        QueueDb::open(&self.db_path.with_file_name("queue.db"), unsafe_ack)
    }

    /// Start the background writer for invocation records and logs; it deletes records and
    /// logs older than `retention` (hourly usage is kept for [`USAGE_RETENTION`]).
    pub fn record_writer(&self, retention: std::time::Duration) -> Result<RecordWriter> {
        RecordWriter::start(&self.db_path, retention)
    }

    /// Requests and GB-seconds per function per hour since `since_ms` (inclusive hour).
    pub fn usage(&self, since_ms: u64) -> Result<Vec<UsageRow>> {
        records::query_usage(&self.conn(), since_ms)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn().query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Record a new deployment and point `alias` at it, in one transaction.
    pub fn add_deployment(&self, app: &str, digest: &str, body: &str, alias: &str) -> Result<DeploymentRow> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let created_ms = now_ms();
        tx.execute(
            "INSERT INTO deployments(app, digest, created_ms, body) VALUES (?1, ?2, ?3, ?4)",
            params![app, digest, created_ms, body],
        )?;
        let version = tx.last_insert_rowid() as u64;
        tx.execute(
            "INSERT INTO aliases(name, version) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET version = excluded.version",
            params![alias, version],
        )?;
        tx.commit()?;
        Ok(DeploymentRow { version, app: app.to_owned(), digest: digest.to_owned(), created_ms, body: body.to_owned() })
    }

    pub fn deployment(&self, version: u64) -> Result<Option<DeploymentRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version, app, digest, created_ms, body FROM deployments WHERE version = ?1",
                [version],
                row_to_deployment,
            )
            .optional()?)
    }

    /// All deployments, newest first (without bodies' parsing).
    pub fn deployments(&self) -> Result<Vec<DeploymentRow>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT version, app, digest, created_ms, body FROM deployments ORDER BY version DESC")?;
        let rows = stmt.query_map([], row_to_deployment)?.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn alias(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.conn().query_row("SELECT version FROM aliases WHERE name = ?1", [name], |r| r.get(0)).optional()?)
    }

    pub fn set_alias(&self, name: &str, version: u64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO aliases(name, version) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET version = excluded.version",
            params![name, version],
        )?;
        Ok(())
    }

    /// Invocation records, newest first.
    pub fn invocations(&self, q: &InvocationQuery) -> Result<Vec<serde_json::Value>> {
        records::query_invocations(&self.conn(), q)
    }

    /// Log entries of `function` after sequence number `after`, oldest first.
    pub fn logs(&self, function: &str, after: u64, request_id: Option<&str>, limit: u32) -> Result<Vec<LogEntry>> {
        records::query_logs(&self.conn(), function, after, request_id, limit)
    }
}

fn row_to_deployment(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow { version: r.get(0)?, app: r.get(1)?, digest: r.get(2)?, created_ms: r.get(3)?, body: r.get(4)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_and_aliases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let a = s.add_deployment("app", "d1", "{}", "live").unwrap();
            let b = s.add_deployment("app", "d2", "{\"x\":1}", "live").unwrap();
            assert_eq!((a.version, b.version), (1, 2));
            s.set_alias("live", 1).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.alias("live").unwrap(), Some(1));
        assert_eq!(s.deployment(2).unwrap().unwrap().body, "{\"x\":1}");
        assert_eq!(s.deployments().unwrap().len(), 2);
    }

    #[test]
    fn artifacts_are_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("code");
        std::fs::create_dir_all(code.join("sub")).unwrap();
        std::fs::create_dir_all(code.join("__pycache__")).unwrap();
        std::fs::write(code.join("index.js"), "a").unwrap();
        std::fs::write(code.join("sub/x.js"), "b").unwrap();
        std::fs::write(code.join("__pycache__/junk.pyc"), "z").unwrap();
        let s = Store::open(&dir.path().join("data")).unwrap();
        let (d1, p1) = s.artifacts.put_dir(&code).unwrap();
        assert_eq!(std::fs::read_to_string(p1.join("sub/x.js")).unwrap(), "b");
        assert!(!p1.join("__pycache__").exists());
        std::fs::write(code.join("__pycache__/junk.pyc"), "changed").unwrap();
        assert_eq!(s.artifacts.put_dir(&code).unwrap().0, d1, "caches do not change the digest");
        std::fs::write(code.join("index.js"), "changed").unwrap();
        let (d2, _) = s.artifacts.put_dir(&code).unwrap();
        assert_ne!(d1, d2);
        // the first artifact is untouched by the edit
        assert_eq!(std::fs::read_to_string(p1.join("index.js")).unwrap(), "a");
    }
}
