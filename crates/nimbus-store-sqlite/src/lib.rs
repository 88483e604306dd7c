//! Embedded storage for one node: SQLite (bundled) for the registry (deployments, aliases,
//! tokens, managed access keys), invocation records and logs, the audit log, the async queue,
//! KV, object metadata and the SQS-compatible message queues (each of the last four in its
//! own database file), and content-addressed directories for code artifacts, all under the
//! data dir.
//!
//! Only the control plane and the background record writer touch SQLite; the request path
//! reads an in-memory snapshot and hands records to the writer through a bounded channel.

mod access_keys;
mod artifacts;
mod audit;
mod group;
mod kv;
mod messages;
mod objects;
mod queue;
mod queued;
mod record_batches;
mod records;
mod stats;
mod storage_usage;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use nimbus_core::history::{InvocationQuery, LogEntry, LogQuery, Stats, StatsQuery, StorageUsageRow, UsageRow};
use nimbus_core::{
    AccessKeyRecord, DeploymentRecord, History, HistoryError, InvocationRecord, NewDeployment, Registry, RegistryError,
    TokenDigest, TokenRecord,
};
use rusqlite::{params, Connection, OptionalExtension};

pub use artifacts::{digest_dir, ArtifactStore};
pub use kv::KvDb;
pub use messages::MessageDb;
pub use objects::{multipart_etag, Hasher as ObjectHasher, ObjectDb, INLINE_MAX};
pub use queue::QueueDb;
pub use records::{RecordWriter, USAGE_RETENTION};
pub use stats::percentile;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
    /// A unique key (a token's id or digest) that is already stored.
    #[error("a row with the same {0} exists")]
    Duplicate(&'static str),
}

pub type Result<T> = std::result::Result<T, StoreError>;

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
    body TEXT NOT NULL,
    format_version INTEGER NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT,
    scope TEXT NOT NULL,
    functions TEXT NOT NULL,
    sha256 BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS access_keys (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    name TEXT NOT NULL,
    grants TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    error TEXT,
    actor TEXT NOT NULL,
    token_id TEXT,
    source TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit(ts_ms);
CREATE TABLE IF NOT EXISTS alias_traffic (
    alias TEXT NOT NULL,
    version INTEGER NOT NULL REFERENCES deployments(version),
    percent INTEGER NOT NULL,
    PRIMARY KEY (alias, version)
) WITHOUT ROWID;
";

/// Columns added after a table's first release, added to older databases on open:
/// (table, column, type and default).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("invocations", "instance_start_ms", "REAL"),
    ("invocations", "runtime_init_ms", "REAL"),
    // Streamed responses: time to the end of the response (`duration_ms` is the whole run).
    ("invocations", "response_ms", "REAL"),
    // Rows written before deployment bodies were versioned are format 0.
    ("deployments", "format_version", "INTEGER NOT NULL DEFAULT 0"),
    // MB × ms of instances busy (functions with concurrency > 1: how they are billed).
    ("usage", "instance_mb_ms", "INTEGER NOT NULL DEFAULT 0"),
];

fn migrate(conn: &Connection) -> Result<()> {
    add_columns(conn, ADDED_COLUMNS)
}

/// Add the `(table, column, type)` columns a table lacks (an older database).
pub(crate) fn add_columns(conn: &Connection, columns: &[(&str, &str, &str)]) -> Result<()> {
    for (table, name, ty) in columns {
        let have: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

/// Make a database and its WAL files readable by nimbus's user only (0600, like `admin.token`):
/// the registry holds managed access keys' secrets, the others users' data (objects, KV values,
/// messages, events, logs). SQLite gives a WAL file the mode of its database.
fn make_private(db_path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db_path.as_os_str().to_owned();
            name.push(suffix);
            match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db_path;
    Ok(())
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    make_private(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Store {
    /// Open (or create) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)?;
        let db_path = data_dir.join("nimbus.db");
        let conn = open_connection(&db_path)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(storage_usage::SCHEMA)?;
        conn.execute_batch(record_batches::SCHEMA)?;
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

    /// Open the KV store. Like the queue, it lives in its own database file (`kv.db`), so its
    /// fsyncs never wait behind other data.
    pub fn kv(&self) -> Result<KvDb> {
        KvDb::open(&self.db_path.with_file_name("kv.db"))
    }

    /// Open the message queues (SQS-compatible, [`MessageDb`]). Like the async queue and KV,
    /// they live in their own database file (`messages.db`), so their fsyncs never wait behind
    /// other data.
    pub fn messages(&self) -> Result<MessageDb> {
        MessageDb::open(&self.db_path.with_file_name("messages.db"))
    }

    /// Start the background writer for invocation records and logs; it deletes records and
    /// logs older than `retention` (hourly usage is kept for [`USAGE_RETENTION`]).
    pub fn record_writer(&self, retention: std::time::Duration) -> Result<RecordWriter> {
        RecordWriter::start(&self.db_path, retention)
    }

    /// Add hourly storage usage (summed with rows of the same bucket or namespace and hour).
    /// Called by the node's storage flusher once a period, never on a request path.
    pub async fn add_storage_usage(&self, rows: Vec<StorageUsageRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.blocking(move |s| storage_usage::add(&mut s.conn(), &rows)).await
    }

    /// Run `f` on a clone of the store on tokio's blocking pool: SQLite calls block.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Other(format!("a store task failed: {e}")))?
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
    pub fn add_deployment(&self, d: &NewDeployment<'_>, alias: &str) -> Result<DeploymentRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let created_ms = nimbus_core::ids::now_ms();
        tx.execute(
            "INSERT INTO deployments(app, digest, created_ms, body, format_version) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![d.app, d.digest, created_ms, d.body, d.format_version],
        )?;
        let version = u64::try_from(tx.last_insert_rowid()).unwrap_or_default();
        tx.execute(
            "INSERT INTO aliases(name, version) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET version = excluded.version",
            params![alias, version],
        )?;
        tx.execute("DELETE FROM alias_traffic WHERE alias = ?1", [alias])?;
        tx.commit()?;
        Ok(DeploymentRecord {
            version,
            app: d.app.to_owned(),
            digest: d.digest.to_owned(),
            created_ms,
            format_version: d.format_version,
            body: d.body.to_owned(),
        })
    }

    /// All deployments, oldest first.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, app, digest, created_ms, body, format_version FROM deployments ORDER BY version",
        )?;
        let rows = stmt.query_map([], row_to_deployment)?.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn deployment_exists(&self, version: u64) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM deployments WHERE version = ?1", [version], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn alias(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.conn().query_row("SELECT version FROM aliases WHERE name = ?1", [name], |r| r.get(0)).optional()?)
    }

    /// Point an alias at a stored version (the foreign key refuses a version that is not),
    /// with all of its traffic.
    pub fn set_alias(&self, name: &str, version: u64) -> Result<()> {
        self.set_traffic(name, version, &[])
    }

    /// An alias's traffic split, by version.
    pub fn traffic(&self, alias: &str) -> Result<Vec<(u64, u32)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT version, percent FROM alias_traffic WHERE alias = ?1 ORDER BY version")?;
        let rows = stmt.query_map([alias], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    /// Point an alias at `primary` and replace its split with `weights`, in one transaction.
    pub fn set_traffic(&self, alias: &str, primary: u64, weights: &[(u64, u32)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO aliases(name, version) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET version = excluded.version",
            params![alias, primary],
        )?;
        tx.execute("DELETE FROM alias_traffic WHERE alias = ?1", [alias])?;
        for (version, percent) in weights {
            tx.execute(
                "INSERT INTO alias_traffic(alias, version, percent) VALUES (?1, ?2, ?3)",
                params![alias, version, percent],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn registry_error(action: &'static str) -> impl FnOnce(StoreError) -> RegistryError {
    move |e| RegistryError::backend(action, e)
}

#[async_trait]
impl Registry for Store {
    async fn deployments(&self) -> std::result::Result<Vec<DeploymentRecord>, RegistryError> {
        self.blocking(Store::deployments).await.map_err(registry_error("read the deployments"))
    }

    async fn add_deployment(
        &self,
        d: NewDeployment<'_>,
        alias: &str,
    ) -> std::result::Result<DeploymentRecord, RegistryError> {
        let (app, digest, body, format_version) =
            (d.app.to_owned(), d.digest.to_owned(), d.body.to_owned(), d.format_version);
        let alias = alias.to_owned();
        self.blocking(move |s| {
            s.add_deployment(&NewDeployment { app: &app, digest: &digest, format_version, body: &body }, &alias)
        })
        .await
        .map_err(registry_error("record the deployment"))
    }

    async fn alias(&self, name: &str) -> std::result::Result<Option<u64>, RegistryError> {
        let name = name.to_owned();
        self.blocking(move |s| s.alias(&name)).await.map_err(registry_error("read an alias"))
    }

    async fn set_alias(&self, name: &str, version: u64) -> std::result::Result<(), RegistryError> {
        if self.blocking(move |s| s.deployment_exists(version)).await.map_err(registry_error("read a deployment"))? {
            let name = name.to_owned();
            self.blocking(move |s| s.set_alias(&name, version)).await.map_err(registry_error("move an alias"))
        } else {
            Err(RegistryError::NoSuchVersion(version))
        }
    }

    async fn meta(&self, key: &str) -> std::result::Result<Option<String>, RegistryError> {
        let key = key.to_owned();
        self.blocking(move |s| s.get_meta(&key)).await.map_err(registry_error("read a setting"))
    }

    async fn set_meta(&self, key: &str, value: &str) -> std::result::Result<(), RegistryError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.blocking(move |s| s.set_meta(&key, &value)).await.map_err(registry_error("write a setting"))
    }

    async fn put_artifact(&self, dir: &Path) -> std::result::Result<String, RegistryError> {
        let owned = dir.to_owned();
        self.blocking(move |s| s.artifacts.put_dir(&owned).map(|(digest, _)| digest))
            .await
            .map_err(|e| RegistryError::Artifact { dir: dir.to_owned(), source: Box::new(e) })
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        self.artifacts.path(digest)
    }

    async fn add_token(&self, token: &TokenRecord) -> std::result::Result<(), RegistryError> {
        let token = token.clone();
        self.blocking(move |s| s.add_token(&token)).await.map_err(|e| match e {
            StoreError::Duplicate(what) => RegistryError::DuplicateToken(what),
            e => RegistryError::backend("store a token", e),
        })
    }

    async fn tokens(&self) -> std::result::Result<Vec<TokenRecord>, RegistryError> {
        self.blocking(Store::tokens).await.map_err(registry_error("read the tokens"))
    }

    async fn revoke_token(&self, id: &str, at_ms: u64) -> std::result::Result<Option<TokenRecord>, RegistryError> {
        let id = id.to_owned();
        self.blocking(move |s| s.revoke_token(&id, at_ms)).await.map_err(registry_error("revoke a token"))
    }

    async fn token_by_digest(&self, digest: &TokenDigest) -> std::result::Result<Option<TokenRecord>, RegistryError> {
        let digest = *digest;
        self.blocking(move |s| s.token_by_digest(&digest)).await.map_err(registry_error("look up a token"))
    }

    async fn add_access_key(&self, key: &AccessKeyRecord) -> std::result::Result<(), RegistryError> {
        let key = key.clone();
        let id = key.id.clone();
        self.blocking(move |s| s.add_access_key(&key)).await.map_err(|e| match e {
            StoreError::Duplicate(_) => RegistryError::DuplicateAccessKey(id),
            e => RegistryError::backend("store an access key", e),
        })
    }

    async fn access_keys(&self) -> std::result::Result<Vec<AccessKeyRecord>, RegistryError> {
        self.blocking(Store::access_keys).await.map_err(registry_error("read the access keys"))
    }

    async fn revoke_access_key(
        &self,
        id: &str,
        at_ms: u64,
    ) -> std::result::Result<Option<AccessKeyRecord>, RegistryError> {
        let id = id.to_owned();
        self.blocking(move |s| s.revoke_access_key(&id, at_ms)).await.map_err(registry_error("revoke an access key"))
    }

    async fn traffic(&self, alias: &str) -> std::result::Result<Vec<(u64, u32)>, RegistryError> {
        let alias = alias.to_owned();
        self.blocking(move |s| s.traffic(&alias)).await.map_err(registry_error("read an alias's traffic"))
    }

    async fn set_traffic(
        &self,
        alias: &str,
        primary: u64,
        weights: &[(u64, u32)],
    ) -> std::result::Result<(), RegistryError> {
        for version in std::iter::once(primary).chain(weights.iter().map(|(v, _)| *v)) {
            if !self
                .blocking(move |s| s.deployment_exists(version))
                .await
                .map_err(registry_error("read a deployment"))?
            {
                return Err(RegistryError::NoSuchVersion(version));
            }
        }
        let (alias, weights) = (alias.to_owned(), weights.to_vec());
        self.blocking(move |s| s.set_traffic(&alias, primary, &weights))
            .await
            .map_err(registry_error("split an alias's traffic"))
    }
}

#[async_trait]
impl History for Store {
    async fn invocations(&self, q: &InvocationQuery) -> std::result::Result<Vec<InvocationRecord>, HistoryError> {
        let q = q.clone();
        self.blocking(move |s| records::query_invocations(&s.conn(), &q))
            .await
            .map_err(|e| HistoryError::new("invocation records", e))
    }

    async fn logs(&self, q: &LogQuery) -> std::result::Result<Vec<LogEntry>, HistoryError> {
        let q = q.clone();
        self.blocking(move |s| records::query_logs(&s.conn(), &q)).await.map_err(|e| HistoryError::new("logs", e))
    }

    async fn usage(&self, since_ms: u64) -> std::result::Result<Vec<UsageRow>, HistoryError> {
        self.blocking(move |s| records::query_usage(&s.conn(), since_ms))
            .await
            .map_err(|e| HistoryError::new("usage", e))
    }

    async fn storage_usage(&self, since_ms: u64) -> std::result::Result<Vec<StorageUsageRow>, HistoryError> {
        self.blocking(move |s| storage_usage::query(&s.conn(), since_ms))
            .await
            .map_err(|e| HistoryError::new("storage usage", e))
    }

    async fn stats(&self, q: &StatsQuery) -> std::result::Result<Stats, HistoryError> {
        let q = q.clone();
        self.blocking(move |s| s.read_stats(&q)).await.map_err(|e| HistoryError::new("invocation statistics", e))
    }
}

fn row_to_deployment(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRecord> {
    Ok(DeploymentRecord {
        version: r.get(0)?,
        app: r.get(1)?,
        digest: r.get(2)?,
        created_ms: r.get(3)?,
        body: r.get(4)?,
        format_version: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(digest: &'static str, body: &'static str) -> NewDeployment<'static> {
        NewDeployment { app: "app", digest, format_version: 1, body }
    }

    #[tokio::test]
    async fn deployments_and_aliases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let a = Registry::add_deployment(&s, new("d1", "{}"), "live").await.unwrap();
            let b = Registry::add_deployment(&s, new("d2", "{\"x\":1}"), "live").await.unwrap();
            assert_eq!((a.version, b.version), (1, 2));
            Registry::set_alias(&s, "live", 1).await.unwrap();
            let e = Registry::set_alias(&s, "live", 3).await.unwrap_err();
            assert!(matches!(e, RegistryError::NoSuchVersion(3)), "{e}");
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(Registry::alias(&s, "live").await.unwrap(), Some(1));
        let all = Registry::deployments(&s).await.unwrap();
        assert_eq!(all.iter().map(|d| d.version).collect::<Vec<_>>(), [1, 2], "oldest first");
        assert_eq!((all[1].body.as_str(), all[1].format_version), ("{\"x\":1}", 1));
    }

    /// A split is stored with its alias, survives a reopen, is refused whole when it names a
    /// version that is not stored, and a plain deploy or rollback ends it.
    #[tokio::test]
    async fn traffic_splits_are_atomic_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            Registry::add_deployment(&s, new("d1", "{}"), "live").await.unwrap();
            Registry::add_deployment(&s, new("d2", "{}"), "live").await.unwrap();
            Registry::set_traffic(&s, "live", 1, &[(1, 90), (2, 10)]).await.unwrap();
            let e = Registry::set_traffic(&s, "live", 2, &[(2, 50), (7, 50)]).await.unwrap_err();
            assert!(matches!(e, RegistryError::NoSuchVersion(7)), "{e}");
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(Registry::traffic(&s, "live").await.unwrap(), [(1, 90), (2, 10)], "nothing half-applied");
        assert_eq!(Registry::alias(&s, "live").await.unwrap(), Some(1));
        Registry::set_alias(&s, "live", 2).await.unwrap();
        assert!(Registry::traffic(&s, "live").await.unwrap().is_empty(), "a rollback is 100 % of one version");
        Registry::set_traffic(&s, "live", 1, &[(1, 50), (2, 50)]).await.unwrap();
        Registry::add_deployment(&s, new("d3", "{}"), "live").await.unwrap();
        assert!(Registry::traffic(&s, "live").await.unwrap().is_empty(), "a deploy is 100 % of one version");
    }

    /// A registry made before deployment bodies were versioned gains the column on open, and
    /// its rows read as format 0.
    #[test]
    fn old_registries_gain_the_format_version_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("nimbus.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE deployments (version INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL,
                 digest TEXT NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL);
                 INSERT INTO deployments(app, digest, created_ms, body) VALUES ('old', 'd', 5, '{}');",
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let rows = s.deployments().unwrap();
        assert_eq!((rows[0].app.as_str(), rows[0].format_version), ("old", 0));
        s.add_deployment(&new("d2", "{}"), "live").unwrap();
        assert_eq!(s.deployments().unwrap()[1].format_version, 1);
    }

    /// A sandboxed function runs as another user than nimbus: its code must be readable by
    /// everyone, whatever modes the files had (0600 from an editor, 0700 scripts).
    #[test]
    fn artifacts_are_readable_by_the_sandbox_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("code");
        std::fs::create_dir_all(code.join("private")).unwrap();
        std::fs::write(code.join("private/secret.py"), "x").unwrap();
        std::fs::write(code.join("bootstrap"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(code.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(code.join("private/secret.py"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(code.join("bootstrap"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let s = Store::open(&dir.path().join("data")).unwrap();
        let (_, p) = s.artifacts.put_dir(&code).unwrap();
        let mode = |rel: &str| std::fs::metadata(p.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("private"), mode("private/secret.py"), mode("bootstrap")), (0o755, 0o644, 0o755));
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
