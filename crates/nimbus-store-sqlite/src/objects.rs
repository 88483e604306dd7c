//! The embedded object store: metadata in `DATA_DIR/objects.db` (its own SQLite file, WAL,
//! `synchronous=FULL`, so its fsyncs never queue behind the registry's or the queue's); bodies
//! of at most [`INLINE_MAX`] bytes in their metadata row (`objects.body`), larger ones in files
//! under `DATA_DIR/objects/data/`.
//!
//! A small PUT (put or copy) is received into memory and its row, body included, committed
//! through the group-commit writer: one WAL fsync makes it durable, shared with concurrent
//! writers. A body that outgrows [`INLINE_MAX`] while arriving (or declares a larger
//! `Content-Length`) continues into a temp file, never read twice. Parts are always files, and so
//! is a completed multipart object. An inline row has `file = ''` and `body` set; a file row
//! has `body` NULL (older databases get the column on open).
//!
//! Durability order of every file PUT (put, copy, complete multipart, upload part): the body goes to
//! `objects/tmp/ID`, is fsynced, renamed to `objects/data/ID`, the directory is fsynced, and only
//! then is the metadata row committed; the PUT is acknowledged after the commit. So an
//! acknowledged PUT survives `kill -9` (its row and its file are on disk), and a PUT cut short
//! is never visible (no row points at its file). Files are never rewritten: an overwrite writes a
//! new file and commits the row that points at it, then unlinks the old one, so readers holding
//! the old file keep reading it. At start, `tmp/` is emptied and files in `data/` that no row
//! names (a crash between rename and commit, or between commit and unlink) are deleted.
//!
//! Under concurrent PUTs the fsyncs are shared, never skipped: the metadata rows go through the
//! group-commit writer (`group.rs`: every row waiting is committed in one transaction, one WAL
//! fsync), and a directory fsync that starts after a rename covers it (`DirSync`), so one
//! directory fsync serves every PUT renamed before it began. Each PUT still fsyncs its own file.
//! Reads and the other writes use their own connection.
//!
//! The outbox (bucket triggers): the binary tells the store which buckets the live deployment's
//! triggers watch ([`ObjectStore::watch_buckets`], on every deploy and at start; kept in memory
//! only, since the live deployment is the truth). A put, copy, completed upload or delete of an
//! existing key in a watched bucket inserts its `outbox` row inside the savepoint or transaction
//! that changes `objects`, so the row commits with the change or not at all, and the commit that
//! acknowledges the change made the row durable. The set is read when the change is about to
//! commit: a change acknowledged after `watch_buckets` returned has its row. Row ids are
//! `AUTOINCREMENT` (never reused, even after every row was deleted), because the forwarder
//! derives idempotency keys from them. A committed row wakes the reader at once (a `Notify`).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use nimbus_core::events::S3EventName;
use nimbus_core::ids::now_ms;
use nimbus_core::objects::{
    check_key, choose_parts, common_prefix, past_prefix, BucketInfo, ByteRange, ByteStream, Checksum,
    ChecksumAlgorithm, Expected, ListPage, ListQuery, ObjectBody, ObjectChange, ObjectError, ObjectHeaders, ObjectMeta,
    ObjectStore, PartInfo, PutOptions, UploadInfo, MAX_LIST_KEYS, MAX_PART_NUMBER,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::group::{Answer, GroupWriter};
use crate::open_connection;

/// A metadata write the group writer applies inside its batch's transaction.
type Op = Box<dyn FnOnce(&mut rusqlite::Transaction<'_>) -> Answer + Send>;

fn apply(tx: &mut rusqlite::Transaction<'_>, op: Op) -> Answer {
    op(tx)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    headers TEXT NOT NULL,
    checksum_alg TEXT,
    checksum TEXT,
    parts INTEGER,
    body BLOB,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    headers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    checksum_alg TEXT,
    checksum TEXT,
    PRIMARY KEY (upload_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER,
    etag TEXT,
    time_ms INTEGER NOT NULL
);
";

/// Columns added after a table's first release, added to older databases on open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The body of a small object, stored in its row (NULL: the body is the row's file).
    ("objects", "body", "BLOB"),
];

/// Bodies up to this many bytes are stored in their object's row, not in a file (ARCHITECTURE.md,
/// Object storage, says why 64 KiB).
pub const INLINE_MAX: u64 = 64 * 1024;

const OBJECT_COLUMNS: &str = "key, size, etag, modified_ms, headers, checksum_alg, checksum, parts";

/// The embedded object store (see the module documentation).
#[derive(Clone)]
pub struct ObjectDb {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reads, and the writes that are not PUTs (buckets, deletes, uploads).
    conn: Mutex<Connection>,
    /// The rows of PUTs (objects, parts, completed uploads), group-committed.
    writer: GroupWriter<Op>,
    data: PathBuf,
    tmp: PathBuf,
    dir_sync: DirSync,
    /// The buckets whose changes go to the outbox.
    watched: std::sync::RwLock<BTreeSet<String>>,
    /// Woken when an outbox row commits.
    outbox_written: tokio::sync::Notify,
}

/// Directory fsyncs shared between concurrent renames: a caller takes a ticket after its
/// rename; an fsync that starts after the ticket was taken covers it. Whoever holds the lock
/// fsyncs for every ticket issued so far, so under load one fsync serves many PUTs.
struct DirSync {
    dir: PathBuf,
    /// Tickets issued (each after its caller's rename).
    issued: std::sync::atomic::AtomicU64,
    /// The highest ticket a finished fsync covers.
    done: tokio::sync::Mutex<u64>,
}

impl DirSync {
    async fn sync(&self) -> Result<(), ObjectError> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.issued.fetch_add(1, SeqCst) + 1;
        let mut done = self.done.lock().await;
        if *done >= mine {
            return Ok(());
        }
        // Every ticket issued by now belongs to a rename that happened before this fsync starts.
        let covers = self.issued.load(SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || fsync_dir(&dir))
            .await
            .map_err(|e| ObjectError::backend("fsync the object directory", e))?
            .map_err(io("fsync the object directory"))?;
        *done = covers;
        Ok(())
    }
}

/// Where a received body is: in memory (to be stored in its row) or in `tmp/ID` (to be installed
/// into `data/ID`).
enum Stored {
    Inline(Vec<u8>),
    File(String),
}

impl Stored {
    /// The `file` column of the row (empty for an inline body).
    fn file(&self) -> &str {
        match self {
            Stored::Inline(_) => "",
            Stored::File(id) => id,
        }
    }

    /// The `body` column of the row (NULL for a file).
    fn inline(&self) -> Option<&[u8]> {
        match self {
            Stored::Inline(b) => Some(b),
            Stored::File(_) => None,
        }
    }
}

/// A file range up to this size is read with one blocking-pool task (open, seek, one read into
/// a buffer of its exact size) and sent as one chunk. Through `tokio::fs::File` the same 1 MiB
/// took a pool hop per step and per 256 KiB chunk, and a copy from tokio's buffer into each
/// chunk. Larger ranges stream, so a GET never holds more than this in memory.
const READ_WHOLE_MAX: u64 = 8 << 20;

/// A body being received: kept in memory until it outgrows [`INLINE_MAX`] (or from the start,
/// when it may not be inline), then written on to a temp file.
struct Sink {
    tmp: PathBuf,
    buf: Vec<u8>,
    file: Option<(String, tokio::fs::File)>,
}

impl Sink {
    /// Move to a temp file: what is in memory goes first.
    async fn spill(&mut self) -> Result<(), ObjectError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let file = tokio::fs::File::create(self.tmp.join(&id)).await.map_err(io("create a temp file"))?;
        let (_, file) = self.file.insert((id, file));
        file.write_all(&self.buf).await.map_err(io("write an object"))?;
        self.buf = Vec::new();
        Ok(())
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), ObjectError> {
        if self.file.is_none() && (self.buf.len() + chunk.len()) as u64 > INLINE_MAX {
            self.spill().await?;
        }
        match &mut self.file {
            Some((_, f)) => f.write_all(chunk).await.map_err(io("write an object")),
            None => {
                self.buf.extend_from_slice(chunk);
                Ok(())
            }
        }
    }

    async fn sync(&mut self) -> Result<(), ObjectError> {
        match &mut self.file {
            Some((_, f)) => f.sync_all().await.map_err(io("fsync an object")),
            None => Ok(()),
        }
    }

    fn into_stored(self) -> Stored {
        match self.file {
            Some((id, _)) => Stored::File(id),
            None => Stored::Inline(self.buf),
        }
    }
}

/// A body received and checked: inline, or written to `tmp/` and not yet installed.
struct Written {
    stored: Stored,
    size: u64,
    md5: [u8; 16],
    checksum: Option<Checksum>,
}

fn sql(action: &'static str) -> impl Fn(rusqlite::Error) -> ObjectError {
    move |e| ObjectError::backend(action, e)
}

fn io(action: &'static str) -> impl Fn(std::io::Error) -> ObjectError {
    move |e| ObjectError::backend(action, e)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl ObjectDb {
    /// Open (or create) the store under `data_dir`, and clean what a crash left behind.
    pub fn open(data_dir: &Path) -> crate::Result<ObjectDb> {
        let root = data_dir.join("objects");
        let data = root.join("data");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&tmp)?;
        let conn = open_connection(&data_dir.join("objects.db"))?;
        conn.execute_batch(SCHEMA)?;
        crate::add_columns(&conn, ADDED_COLUMNS)?;
        let writer = GroupWriter::start("object store", open_connection(&data_dir.join("objects.db"))?, apply, None)?;
        let dir_sync = DirSync {
            dir: data.clone(),
            issued: std::sync::atomic::AtomicU64::new(0),
            done: tokio::sync::Mutex::new(0),
        };
        let inner = Inner {
            conn: Mutex::new(conn),
            writer,
            data,
            tmp,
            dir_sync,
            watched: std::sync::RwLock::new(BTreeSet::new()),
            outbox_written: tokio::sync::Notify::new(),
        };
        let db = ObjectDb { inner: Arc::new(inner) };
        db.sweep()?;
        Ok(db)
    }

    /// Delete temp files and data files no row names.
    fn sweep(&self) -> crate::Result<usize> {
        for entry in std::fs::read_dir(&self.inner.tmp)? {
            std::fs::remove_file(entry?.path())?;
        }
        let referenced: HashSet<String> = {
            let conn = self.inner.conn.lock().unwrap_or_else(|e| e.into_inner());
            let mut stmt = conn.prepare("SELECT file FROM objects UNION ALL SELECT file FROM parts")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.inner.data)? {
            let entry = entry?;
            if !referenced.contains(entry.file_name().to_string_lossy().as_ref()) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "object store: deleted files a crash left unreferenced");
        }
        Ok(removed)
    }

    /// Run `f` on the connection off the async threads.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ObjectError> + Send + 'static,
    ) -> Result<T, ObjectError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| ObjectError::backend("run a database task", e))?
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.inner.data.join(id)
    }

    /// Receive a body (into memory, or a fsynced temp file when it is larger than
    /// [`INLINE_MAX`] or `may_inline` is false) and check it against what the client declared.
    async fn write_body(
        &self,
        mut body: ByteStream,
        opts: &PutOptions,
        may_inline: bool,
    ) -> Result<Written, ObjectError> {
        let declared = opts.content_length.unwrap_or(0);
        let capacity = usize::try_from(declared.min(INLINE_MAX)).unwrap_or(0);
        let mut sink = Sink { tmp: self.inner.tmp.clone(), buf: Vec::with_capacity(capacity), file: None };
        let result = async {
            if !may_inline || declared > INLINE_MAX {
                sink.spill().await?;
            }
            receive(&mut sink, &mut body, opts).await
        }
        .await;
        match result {
            Ok((size, md5, checksum)) => Ok(Written { stored: sink.into_stored(), size, md5, checksum }),
            Err(e) => {
                if let Some((id, _)) = sink.file.take() {
                    let _ = tokio::fs::remove_file(self.inner.tmp.join(id)).await;
                }
                Err(e)
            }
        }
    }

    /// Move a written body into `data/` and make the rename durable.
    async fn install(&self, id: &str) -> Result<(), ObjectError> {
        let from = self.inner.tmp.join(id);
        let to = self.data_path(id);
        tokio::fs::rename(&from, &to).await.map_err(io("install an object"))?;
        self.inner.dir_sync.sync().await
    }

    /// Run `f` in its own savepoint of the group writer's next transaction (undone alone if it
    /// fails) and answer once that transaction committed.
    async fn commit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ObjectError> + Send + 'static,
    ) -> Result<T, ObjectError> {
        let (reply, rx) = tokio::sync::oneshot::channel::<Result<T, ObjectError>>();
        let op: Op = Box::new(move |tx| {
            let outcome = match tx.savepoint() {
                Ok(mut sp) => match f(&sp) {
                    Ok(v) => sp.commit().map(|()| v).map_err(sql("commit object metadata")),
                    Err(e) => {
                        let _ = sp.rollback();
                        Err(e)
                    }
                },
                Err(e) => Err(ObjectError::backend("begin object metadata", e)),
            };
            Box::new(move |committed| {
                let answer = match outcome {
                    Ok(_) if !committed => Err(ObjectError::backend(
                        "commit object metadata",
                        std::io::Error::other("the transaction could not commit"),
                    )),
                    other => other,
                };
                let _ = reply.send(answer);
            })
        });
        let stopped = |e: String| ObjectError::backend("store object metadata", std::io::Error::other(e));
        self.inner.writer.send(op).map_err(stopped)?;
        rx.await.map_err(|_| stopped("the object store writer stopped".into()))?
    }

    /// Unlink files no row names any more (best effort: the start-up sweep catches the rest).
    /// Inline bodies had none (their `file` is empty) and are skipped.
    async fn unlink(&self, files: Vec<String>) {
        for f in files.into_iter().filter(|f| !f.is_empty()) {
            if let Err(e) = tokio::fs::remove_file(self.data_path(&f)).await {
                tracing::warn!(file = %f, error = %e, "object store: could not delete a replaced file");
            }
        }
    }

    /// Install a written body (a file; an inline body has nothing to install) and commit
    /// `commit` (given where the body is; it returns the files it replaced); on a failed commit
    /// the new file goes.
    async fn install_and_commit<T: Send + 'static>(
        &self,
        w: Written,
        commit: impl FnOnce(&Connection, &Stored) -> Result<(T, Vec<String>), ObjectError> + Send + 'static,
    ) -> Result<T, ObjectError> {
        let file = match &w.stored {
            Stored::File(id) => Some(id.clone()),
            Stored::Inline(_) => None,
        };
        if let Some(id) = &file {
            if let Err(e) = self.install(id).await {
                let _ = tokio::fs::remove_file(self.inner.tmp.join(id)).await;
                return Err(e);
            }
        }
        let stored = w.stored;
        match self.commit(move |c| commit(c, &stored)).await {
            Ok((value, replaced)) => {
                self.unlink(replaced).await;
                Ok(value)
            }
            Err(e) => {
                self.unlink(file.into_iter().collect()).await;
                Err(e)
            }
        }
    }

    /// An object's metadata, the byte range `range` resolves to, and that range's body: from its
    /// row, read whole from its file, or streamed from it (reading the row again when an
    /// overwrite unlinked the file in between).
    async fn open_object(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ObjectBody, ObjectError> {
        for _ in 0..3 {
            let (meta, file, inline) = self.object_row(bucket, key, true).await?;
            let (start, end) = match range {
                None => (0, meta.size),
                Some(r) => r.resolve(meta.size).ok_or(ObjectError::InvalidRange(meta.size))?,
            };
            if let Some(body) = inline {
                let body = one_chunk(slice_inline(body, start, end, meta.size)?);
                return Ok(ObjectBody { meta, start, end, body });
            }
            let path = self.data_path(&file);
            let opened = if end - start <= READ_WHOLE_MAX {
                tokio::task::spawn_blocking(move || read_range(&path, start, end))
                    .await
                    .map_err(|e| ObjectError::backend("read an object", e))?
                    .map(one_chunk)
            } else {
                open_at(&path, start).await.map(|file| -> ByteStream {
                    Box::pin(tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 256 * 1024))
                })
            };
            match opened {
                Ok(body) => return Ok(ObjectBody { meta, start, end, body }),
                // Replaced (and its old file unlinked) between the row and the open: read the new row.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ObjectError::backend("read an object", e)),
            }
        }
        Err(ObjectError::backend("open an object", std::io::Error::other("it was replaced three times while opening")))
    }

    /// An object's row: its metadata, its file and (when `with_body`) its inline body.
    async fn object_row(
        &self,
        bucket: &str,
        key: &str,
        with_body: bool,
    ) -> Result<(ObjectMeta, String, Option<Vec<u8>>), ObjectError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let body = if with_body { "body" } else { "NULL" };
        self.db(move |c| {
            bucket_must_exist(c, &b)?;
            let sql_text = format!("SELECT {OBJECT_COLUMNS}, file, {body} FROM objects WHERE bucket = ?1 AND key = ?2");
            c.prepare_cached(&sql_text)
                .and_then(|mut s| {
                    s.query_row(params![b, k], |r| Ok((meta_from_row(r)?, r.get::<_, String>(8)?, r.get(9)?)))
                        .optional()
                })
                .map_err(sql("read an object"))?
                .ok_or_else(|| ObjectError::NoSuchKey(b.clone(), k.clone()))
        })
        .await
    }

    fn upload_must_exist(c: &Connection, bucket: &str, key: &str, upload_id: &str) -> Result<String, ObjectError> {
        c.query_row(
            "SELECT headers FROM uploads WHERE id = ?1 AND bucket = ?2 AND key = ?3",
            params![upload_id, bucket, key],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(sql("read an upload"))?
        .ok_or_else(|| ObjectError::NoSuchUpload(upload_id.to_owned()))
    }
}

/// Stream a body into `sink` while hashing it, make it durable, and check it against what the
/// client declared (length, Content-MD5, checksum).
async fn receive(
    sink: &mut Sink,
    body: &mut ByteStream,
    opts: &PutOptions,
) -> Result<(u64, [u8; 16], Option<Checksum>), ObjectError> {
    let mut hasher = Hasher::new(opts.checksum.as_ref().map(|(a, _)| *a));
    let mut size = 0u64;
    while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(ObjectError::Body)?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        sink.write(&chunk).await?;
    }
    if let Some(declared) = opts.content_length {
        if declared != size {
            return Err(ObjectError::IncompleteBody { declared, actual: size });
        }
    }
    let (md5, checksum) = hasher.finish();
    if let Some(want) = &opts.content_md5 {
        if *want != base64::engine::general_purpose::STANDARD.encode(md5) {
            return Err(ObjectError::BadDigest("Content-MD5"));
        }
    }
    check_expected(opts, checksum.as_ref())?;
    sink.sync().await?;
    Ok((size, md5, checksum))
}

fn check_expected(opts: &PutOptions, got: Option<&Checksum>) -> Result<(), ObjectError> {
    let Some((alg, Some(expected))) = &opts.checksum else { return Ok(()) };
    let want = match expected {
        Expected::Value(v) => Some(v.clone()),
        Expected::AfterBody(f) => f(),
    };
    match (want, got) {
        (Some(w), Some(g)) if w != g.value => Err(ObjectError::BadDigest(alg.as_str())),
        _ => Ok(()),
    }
}

fn bucket_must_exist(c: &Connection, bucket: &str) -> Result<(), ObjectError> {
    let found: Option<i64> = c
        .prepare_cached("SELECT 1 FROM buckets WHERE name = ?1")
        .and_then(|mut s| s.query_row([bucket], |r| r.get(0)).optional())
        .map_err(sql("read a bucket"))?;
    found.map(|_| ()).ok_or_else(|| ObjectError::NoSuchBucket(bucket.to_owned()))
}

fn meta_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectMeta> {
    let headers: String = r.get(4)?;
    let alg: Option<String> = r.get(5)?;
    let value: Option<String> = r.get(6)?;
    let checksum = match (alg.as_deref().and_then(ChecksumAlgorithm::parse), value) {
        (Some(algorithm), Some(value)) => Some(Checksum { algorithm, value }),
        _ => None,
    };
    Ok(ObjectMeta {
        key: r.get(0)?,
        size: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
        etag: r.get(2)?,
        last_modified_ms: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
        headers: headers_from_json(&headers),
        checksum,
        parts: r.get::<_, Option<i64>>(7)?.and_then(|n| u32::try_from(n).ok()),
    })
}

/// How `objects.headers` stores an object's headers (a JSON object).
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(default)]
struct StoredHeaders {
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<String>,
    metadata: std::collections::BTreeMap<String, String>,
}

fn headers_json(h: &ObjectHeaders) -> String {
    let stored = StoredHeaders {
        content_type: h.content_type.clone(),
        content_encoding: h.content_encoding.clone(),
        content_disposition: h.content_disposition.clone(),
        content_language: h.content_language.clone(),
        cache_control: h.cache_control.clone(),
        expires: h.expires.clone(),
        metadata: h.metadata.clone(),
    };
    serde_json::to_string(&stored).unwrap_or_else(|_| "{}".into())
}

fn headers_from_json(s: &str) -> ObjectHeaders {
    let h: StoredHeaders = serde_json::from_str(s).unwrap_or_default();
    ObjectHeaders {
        content_type: h.content_type,
        content_encoding: h.content_encoding,
        content_disposition: h.content_disposition,
        content_language: h.content_language,
        cache_control: h.cache_control,
        expires: h.expires,
        metadata: h.metadata,
    }
}

/// Insert or replace an object row; returns the file it replaced, if any (none when it replaced
/// an inline body, which goes with its row).
fn upsert_object(
    tx: &Connection,
    bucket: &str,
    meta: &ObjectMeta,
    stored: &Stored,
) -> Result<Vec<String>, ObjectError> {
    bucket_must_exist(tx, bucket)?;
    let old: Option<String> = tx
        .prepare_cached("SELECT file FROM objects WHERE bucket = ?1 AND key = ?2")
        .and_then(|mut s| s.query_row(params![bucket, meta.key], |r| r.get(0)).optional())
        .map_err(sql("read an object"))?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO objects (bucket, key, file, size, etag, modified_ms, headers, checksum_alg, checksum, parts, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            bucket,
            meta.key,
            stored.file(),
            to_i64(meta.size),
            meta.etag,
            to_i64(meta.last_modified_ms),
            headers_json(&meta.headers),
            meta.checksum.as_ref().map(|c| c.algorithm.as_str()),
            meta.checksum.as_ref().map(|c| c.value.clone()),
            meta.parts,
            stored.inline(),
        ])
    })
    .map_err(sql("store an object"))?;
    Ok(old.into_iter().filter(|f| !f.is_empty()).collect())
}

/// MD5 always, and the checksum the client asked for, as S3 computes them for a PUT (the
/// cluster's object store hashes with it too, so both stores answer alike).
pub struct Hasher {
    md5: md5::Md5,
    extra: Option<Extra>,
}

/// The asked-for checksum's running state.
enum Extra {
    Crc(ChecksumAlgorithm, crc_fast::Digest),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(alg: Option<ChecksumAlgorithm>) -> Self {
        use sha2::Digest as _;
        let extra = alg.map(|a| match a {
            ChecksumAlgorithm::Crc32 => Extra::Crc(a, crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc)),
            ChecksumAlgorithm::Crc32c => Extra::Crc(a, crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)),
            ChecksumAlgorithm::Sha256 => Extra::Sha256(sha2::Sha256::new()),
        });
        Hasher { md5: <md5::Md5 as md5::Digest>::new(), extra }
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        md5::Digest::update(&mut self.md5, data);
        match &mut self.extra {
            Some(Extra::Crc(_, d)) => d.update(data),
            Some(Extra::Sha256(d)) => d.update(data),
            None => {}
        }
    }

    /// The binary MD5 and the asked-for checksum.
    pub fn finish(self) -> ([u8; 16], Option<Checksum>) {
        use sha2::Digest as _;
        let md5: [u8; 16] = md5::Digest::finalize(self.md5).into();
        let b64 = base64::engine::general_purpose::STANDARD;
        let checksum = self.extra.map(|e| match e {
            Extra::Crc(algorithm, d) => {
                let v = u32::try_from(d.finalize() & 0xffff_ffff).unwrap_or(0);
                Checksum { algorithm, value: b64.encode(v.to_be_bytes()) }
            }
            Extra::Sha256(d) => Checksum { algorithm: ChecksumAlgorithm::Sha256, value: b64.encode(d.finalize()) },
        });
        (md5, checksum)
    }
}

/// The ETag of a multipart object: the MD5 of the parts' binary MD5s, then `-N`.
pub fn multipart_etag(part_etags: &[String]) -> String {
    let mut h = <md5::Md5 as md5::Digest>::new();
    for e in part_etags {
        let raw = hex::decode(e.trim_matches('"')).unwrap_or_default();
        md5::Digest::update(&mut h, &raw);
    }
    let digest: [u8; 16] = md5::Digest::finalize(h).into();
    format!("{}-{}", hex::encode(digest), part_etags.len())
}

#[async_trait]
impl ObjectStore for ObjectDb {
    async fn create_bucket(&self, bucket: &str) -> Result<bool, ObjectError> {
        let b = bucket.to_owned();
        self.db(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO buckets (name, created_ms) VALUES (?1, ?2)",
                    params![b, to_i64(now_ms())],
                )
                .map_err(sql("create a bucket"))?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_bucket(&self, bucket: &str, force: bool) -> Result<bool, ObjectError> {
        let b = bucket.to_owned();
        let files = self.db(move |c| delete_bucket_rows(c, &b, force)).await?;
        let Some(files) = files else { return Ok(false) };
        self.unlink(files).await;
        Ok(true)
    }

    async fn head_bucket(&self, bucket: &str) -> Result<Option<BucketInfo>, ObjectError> {
        let b = bucket.to_owned();
        self.db(move |c| {
            let mut all = bucket_infos(c, Some(&b))?;
            Ok(all.pop())
        })
        .await
    }

    async fn list_buckets(&self) -> Result<Vec<BucketInfo>, ObjectError> {
        self.db(|c| bucket_infos(c, None)).await
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta, ObjectError> {
        check_key(key)?;
        // Refuse early for a missing bucket, before reading (and fsyncing) a large body nobody
        // will keep. A small one is read anyway: the commit checks the bucket again, and the
        // early check would cost a small PUT a round trip through the blocking pool.
        if opts.content_length.is_none_or(|n| n > INLINE_MAX) {
            let b = bucket.to_owned();
            self.db(move |c| bucket_must_exist(c, &b)).await?;
        }
        let w = self.write_body(body, &opts, true).await?;
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: w.size,
            etag: hex::encode(w.md5),
            last_modified_ms: now_ms(),
            headers: opts.headers,
            checksum: w.checksum.clone(),
            parts: None,
        };
        self.commit_object(bucket, meta, w, S3EventName::Put).await
    }

    async fn get_object(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ObjectBody, ObjectError> {
        self.open_object(bucket, key, range).await
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, ObjectError> {
        Ok(self.object_row(bucket, key, false).await?.0)
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let watched = self.watches(bucket);
        let old = self
            .db(move |c| {
                let tx = c.transaction().map_err(sql("delete an object"))?;
                bucket_must_exist(&tx, &b)?;
                let old = tx
                    .query_row(
                        "DELETE FROM objects WHERE bucket = ?1 AND key = ?2 RETURNING file",
                        params![b, k],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()
                    .map_err(sql("delete an object"))?;
                if old.is_some() && watched {
                    record_change(&tx, S3EventName::Delete, &b, &k, None)?;
                }
                tx.commit().map_err(sql("delete an object"))?;
                Ok(old)
            })
            .await?;
        let existed = old.is_some();
        self.changed(existed && watched);
        self.unlink(old.into_iter().collect()).await;
        Ok(existed)
    }

    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        headers: Option<ObjectHeaders>,
    ) -> Result<ObjectMeta, ObjectError> {
        check_key(dst_key)?;
        let src = self.get_object(src_bucket, src_key, None).await?;
        let opts =
            PutOptions { checksum: src.meta.checksum.as_ref().map(|c| (c.algorithm, None)), ..PutOptions::default() };
        let opts = PutOptions { content_length: Some(src.end - src.start), ..opts };
        let w = self.write_body(src.body, &opts, true).await?;
        let meta = ObjectMeta {
            key: dst_key.to_owned(),
            size: w.size,
            etag: hex::encode(w.md5),
            last_modified_ms: now_ms(),
            headers: headers.unwrap_or(src.meta.headers),
            checksum: w.checksum.clone(),
            parts: None,
        };
        self.commit_object(dst_bucket, meta, w, S3EventName::Copy).await
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage, ObjectError> {
        let (b, q) = (bucket.to_owned(), query.clone());
        self.db(move |c| {
            bucket_must_exist(c, &b)?;
            list_page(c, &b, &q)
        })
        .await
    }

    async fn create_upload(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<UploadInfo, ObjectError> {
        check_key(key)?;
        let info = UploadInfo {
            upload_id: uuid::Uuid::new_v4().simple().to_string(),
            key: key.to_owned(),
            initiated_ms: now_ms(),
        };
        let (b, i, h) = (bucket.to_owned(), info.clone(), headers_json(&opts.headers));
        self.db(move |c| {
            bucket_must_exist(c, &b)?;
            c.execute(
                "INSERT INTO uploads (id, bucket, key, created_ms, headers) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i.upload_id, b, i.key, to_i64(i.initiated_ms), h],
            )
            .map_err(sql("create an upload"))
        })
        .await?;
        Ok(info)
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<PartInfo, ObjectError> {
        if part_number == 0 || part_number > MAX_PART_NUMBER {
            return Err(ObjectError::InvalidPartNumber(part_number));
        }
        let (b, k, u) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
        self.db(move |c| Self::upload_must_exist(c, &b, &k, &u).map(|_| ())).await?;
        let w = self.write_body(body, &opts, false).await?;
        let part = PartInfo {
            part_number,
            size: w.size,
            etag: hex::encode(w.md5),
            last_modified_ms: now_ms(),
            checksum: w.checksum.clone(),
        };
        let (b, k, u, p) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned(), part.clone());
        self.install_and_commit(w, move |c, stored| {
            Self::upload_must_exist(c, &b, &k, &u)?;
            let old = insert_part(c, &u, &p, stored.file())?;
            Ok(((), old))
        })
        .await?;
        Ok(part)
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, ObjectError> {
        let (b, k, u) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
        self.db(move |c| {
            Self::upload_must_exist(c, &b, &k, &u)?;
            Ok(parts_of(c, &u)?.into_iter().map(|(p, _)| p).collect())
        })
        .await
    }

    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta, ObjectError> {
        let (b, k, u) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
        let (headers, stored) = self
            .db(move |c| {
                let headers = Self::upload_must_exist(c, &b, &k, &u)?;
                Ok((headers, parts_of(c, &u)?))
            })
            .await?;
        let chosen = choose_parts(parts, &stored, |(p, _)| p)?;
        let w = self.concat_parts(&chosen).await?;
        let etags: Vec<String> = chosen.iter().map(|(p, _)| p.etag.clone()).collect();
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: w.size,
            etag: multipart_etag(&etags),
            last_modified_ms: now_ms(),
            headers: headers_from_json(&headers),
            checksum: None,
            parts: u32::try_from(chosen.len()).ok(),
        };
        let (b, u, m) = (bucket.to_owned(), upload_id.to_owned(), meta.clone());
        let watched = self.watches(bucket);
        self.install_and_commit(w, move |c, stored| {
            let mut replaced = drop_upload(c, &u)?;
            replaced.extend(upsert_object(c, &b, &m, stored)?);
            if watched {
                record_change(c, S3EventName::CompleteMultipartUpload, &b, &m.key, Some(&m))?;
            }
            Ok(((), replaced))
        })
        .await?;
        self.changed(watched);
        Ok(meta)
    }

    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), ObjectError> {
        let (b, k, u) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
        let files = self
            .db(move |c| {
                let tx = c.transaction().map_err(sql("abort an upload"))?;
                Self::upload_must_exist(&tx, &b, &k, &u)?;
                let files = drop_upload(&tx, &u)?;
                tx.commit().map_err(sql("abort an upload"))?;
                Ok(files)
            })
            .await?;
        self.unlink(files).await;
        Ok(())
    }

    fn watch_buckets(&self, buckets: BTreeSet<String>) {
        *self.inner.watched.write().unwrap_or_else(|e| e.into_inner()) = buckets;
    }

    async fn outbox(&self, limit: usize, wait: std::time::Duration) -> Result<Vec<ObjectChange>, ObjectError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let rows = self.db(move |c| read_outbox(c, limit)).await?;
            // A row committed after the read stored a wake-up: the wait below returns at once.
            if !rows.is_empty()
                || tokio::time::timeout_at(deadline, self.inner.outbox_written.notified()).await.is_err()
            {
                return Ok(rows);
            }
        }
    }

    async fn outbox_done(&self, ids: &[u64]) -> Result<(), ObjectError> {
        let ids = ids.to_vec();
        self.db(move |c| {
            let tx = c.transaction().map_err(sql("delete outbox rows"))?;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM outbox WHERE id = ?1").map_err(sql("delete outbox rows"))?;
                for id in ids {
                    stmt.execute([to_i64(id)]).map_err(sql("delete outbox rows"))?;
                }
            }
            tx.commit().map_err(sql("delete outbox rows"))
        })
        .await
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>, ObjectError> {
        let (b, p) = (bucket.to_owned(), prefix.to_owned());
        self.db(move |c| {
            bucket_must_exist(c, &b)?;
            let mut stmt = c
                .prepare(
                    "SELECT id, key, created_ms FROM uploads WHERE bucket = ?1 AND substr(key, 1, length(?2)) = ?2
                     ORDER BY key, created_ms",
                )
                .map_err(sql("list uploads"))?;
            let rows = stmt
                .query_map(params![b, p], |r| {
                    Ok(UploadInfo {
                        upload_id: r.get(0)?,
                        key: r.get(1)?,
                        initiated_ms: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    })
                })
                .map_err(sql("list uploads"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql("list uploads"))
        })
        .await
    }
}

impl ObjectDb {
    async fn commit_object(
        &self,
        bucket: &str,
        meta: ObjectMeta,
        w: Written,
        event: S3EventName,
    ) -> Result<ObjectMeta, ObjectError> {
        let (b, m) = (bucket.to_owned(), meta.clone());
        let watched = self.watches(bucket);
        self.install_and_commit(w, move |c, stored| {
            let replaced = upsert_object(c, &b, &m, stored)?;
            if watched {
                record_change(c, event, &b, &m.key, Some(&m))?;
            }
            Ok(((), replaced))
        })
        .await?;
        self.changed(watched);
        Ok(meta)
    }

    /// Whether changes of `bucket` go to the outbox (read just before a change commits).
    fn watches(&self, bucket: &str) -> bool {
        self.inner.watched.read().unwrap_or_else(|e| e.into_inner()).contains(bucket)
    }

    /// Wake the outbox reader after a change that wrote a row committed.
    fn changed(&self, wrote_row: bool) {
        if wrote_row {
            self.inner.outbox_written.notify_one();
        }
    }

    /// Join part files into one new written body.
    async fn concat_parts(&self, parts: &[(PartInfo, String)]) -> Result<Written, ObjectError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = self.inner.tmp.join(&id);
        let result = async {
            let mut out = tokio::fs::File::create(&path).await.map_err(io("create a temp file"))?;
            let mut size = 0u64;
            for (_, file) in parts {
                let mut f = tokio::fs::File::open(self.data_path(file)).await.map_err(io("open a part"))?;
                size += tokio::io::copy(&mut f, &mut out).await.map_err(io("join parts"))?;
            }
            out.sync_all().await.map_err(io("fsync an object"))?;
            Ok(size)
        }
        .await;
        match result {
            Ok(size) => Ok(Written { stored: Stored::File(id), size, md5: [0; 16], checksum: None }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }
}

/// Insert the outbox row of a change (in the transaction of the change itself); `meta` is the
/// created object, `None` for a removal.
fn record_change(
    tx: &Connection,
    event: S3EventName,
    bucket: &str,
    key: &str,
    meta: Option<&ObjectMeta>,
) -> Result<(), ObjectError> {
    let time = meta.map_or_else(now_ms, |m| m.last_modified_ms);
    tx.prepare_cached("INSERT INTO outbox (event, bucket, key, size, etag, time_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .and_then(|mut stmt| {
            stmt.execute(params![
                event.as_str(),
                bucket,
                key,
                meta.map(|m| to_i64(m.size)),
                meta.map(|m| m.etag.as_str()),
                to_i64(time)
            ])
        })
        .map_err(sql("record an object change"))?;
    Ok(())
}

/// The oldest `limit` outbox rows. A row naming an event this version does not know (written
/// by a newer one) is skipped with a warning, never delivered as something else.
fn read_outbox(c: &Connection, limit: usize) -> Result<Vec<ObjectChange>, ObjectError> {
    let mut stmt = c
        .prepare_cached("SELECT id, event, bucket, key, size, etag, time_ms FROM outbox ORDER BY id LIMIT ?1")
        .map_err(sql("read the outbox"))?;
    let rows =
        stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], outbox_row).map_err(sql("read the outbox"))?;
    let mut out = Vec::new();
    for row in rows {
        match row.map_err(sql("read the outbox"))? {
            Ok(change) => out.push(change),
            Err((id, name)) => {
                tracing::warn!(id, event = %name, "object store: skipping an outbox row with an unknown event")
            }
        }
    }
    Ok(out)
}

/// One outbox row, or its id and event name when the event is unknown.
fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ObjectChange, (i64, String)>> {
    let id: i64 = r.get(0)?;
    let name: String = r.get(1)?;
    let Some(event) = S3EventName::ALL.into_iter().find(|e| e.as_str() == name) else { return Ok(Err((id, name))) };
    Ok(Ok(ObjectChange {
        id: u64::try_from(id).unwrap_or(0),
        event,
        bucket: r.get(2)?,
        key: r.get(3)?,
        size: r.get::<_, Option<i64>>(4)?.and_then(|s| u64::try_from(s).ok()),
        etag: r.get(5)?,
        time_ms: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
    }))
}

fn insert_part(tx: &Connection, upload_id: &str, p: &PartInfo, file: &str) -> Result<Vec<String>, ObjectError> {
    let old: Option<String> = tx
        .query_row(
            "SELECT file FROM parts WHERE upload_id = ?1 AND number = ?2",
            params![upload_id, p.part_number],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("read a part"))?;
    tx.execute(
        "INSERT OR REPLACE INTO parts (upload_id, number, file, size, etag, modified_ms, checksum_alg, checksum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            upload_id,
            p.part_number,
            file,
            to_i64(p.size),
            p.etag,
            to_i64(p.last_modified_ms),
            p.checksum.as_ref().map(|c| c.algorithm.as_str()),
            p.checksum.as_ref().map(|c| c.value.clone()),
        ],
    )
    .map_err(sql("store a part"))?;
    Ok(old.into_iter().collect())
}

/// The stored parts of an upload with their files, by number.
fn parts_of(c: &Connection, upload_id: &str) -> Result<Vec<(PartInfo, String)>, ObjectError> {
    let mut stmt = c
        .prepare(
            "SELECT number, size, etag, modified_ms, checksum_alg, checksum, file FROM parts
             WHERE upload_id = ?1 ORDER BY number",
        )
        .map_err(sql("list parts"))?;
    let rows = stmt
        .query_map([upload_id], |r| {
            let alg: Option<String> = r.get(4)?;
            let value: Option<String> = r.get(5)?;
            let checksum = match (alg.as_deref().and_then(ChecksumAlgorithm::parse), value) {
                (Some(algorithm), Some(value)) => Some(Checksum { algorithm, value }),
                _ => None,
            };
            let part = PartInfo {
                part_number: r.get(0)?,
                size: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                etag: r.get(2)?,
                last_modified_ms: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
                checksum,
            };
            Ok((part, r.get::<_, String>(6)?))
        })
        .map_err(sql("list parts"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql("list parts"))
}

/// Delete an upload's rows; returns its part files.
fn drop_upload(tx: &Connection, upload_id: &str) -> Result<Vec<String>, ObjectError> {
    let files = parts_of(tx, upload_id)?.into_iter().map(|(_, f)| f).collect();
    tx.execute("DELETE FROM parts WHERE upload_id = ?1", [upload_id]).map_err(sql("drop an upload"))?;
    tx.execute("DELETE FROM uploads WHERE id = ?1", [upload_id]).map_err(sql("drop an upload"))?;
    Ok(files)
}

/// Delete a bucket's rows; `None` when it did not exist, else the files to unlink.
fn delete_bucket_rows(c: &mut Connection, bucket: &str, force: bool) -> Result<Option<Vec<String>>, ObjectError> {
    let tx = c.transaction().map_err(sql("delete a bucket"))?;
    if bucket_must_exist(&tx, bucket).is_err() {
        return Ok(None);
    }
    let used: i64 = tx
        .query_row(
            "SELECT (SELECT count(*) FROM objects WHERE bucket = ?1) + (SELECT count(*) FROM uploads WHERE bucket = ?1)",
            [bucket],
            |r| r.get(0),
        )
        .map_err(sql("delete a bucket"))?;
    if used > 0 && !force {
        return Err(ObjectError::BucketNotEmpty(bucket.to_owned()));
    }
    let mut files: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT file FROM objects WHERE bucket = ?1 UNION ALL SELECT p.file FROM parts p JOIN uploads u ON u.id = p.upload_id WHERE u.bucket = ?1")
            .map_err(sql("delete a bucket"))?;
        let rows = stmt.query_map([bucket], |r| r.get::<_, String>(0)).map_err(sql("delete a bucket"))?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql("delete a bucket"))?
    };
    files.sort();
    tx.execute("DELETE FROM parts WHERE upload_id IN (SELECT id FROM uploads WHERE bucket = ?1)", [bucket])
        .map_err(sql("delete a bucket"))?;
    tx.execute("DELETE FROM uploads WHERE bucket = ?1", [bucket]).map_err(sql("delete a bucket"))?;
    tx.execute("DELETE FROM objects WHERE bucket = ?1", [bucket]).map_err(sql("delete a bucket"))?;
    tx.execute("DELETE FROM buckets WHERE name = ?1", [bucket]).map_err(sql("delete a bucket"))?;
    tx.commit().map_err(sql("delete a bucket"))?;
    Ok(Some(files))
}

fn bucket_infos(c: &Connection, only: Option<&str>) -> Result<Vec<BucketInfo>, ObjectError> {
    let mut stmt = c
        .prepare(
            "SELECT b.name, b.created_ms, count(o.key), coalesce(sum(o.size), 0)
             FROM buckets b LEFT JOIN objects o ON o.bucket = b.name
             WHERE ?1 IS NULL OR b.name = ?1 GROUP BY b.name ORDER BY b.name",
        )
        .map_err(sql("list buckets"))?;
    let rows = stmt
        .query_map([only], |r| {
            Ok(BucketInfo {
                name: r.get(0)?,
                created_ms: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                objects: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                bytes: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
            })
        })
        .map_err(sql("list buckets"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql("list buckets"))
}

/// One page of a listing: walks keys in order from the cursor, rolling up common prefixes and
/// jumping past each one, so a page costs at most `max_keys` queries.
fn list_page(c: &Connection, bucket: &str, q: &ListQuery) -> Result<ListPage, ObjectError> {
    let max = q.max_keys.clamp(1, MAX_LIST_KEYS);
    let delimiter = q.delimiter.as_deref();
    // A cursor inside a common prefix means that prefix was already returned: skip past it.
    let mut cursor = match q.after.as_deref() {
        Some(a) => match common_prefix(a, &q.prefix, delimiter) {
            Some(cp) if a.starts_with(q.prefix.as_str()) => past_prefix(cp),
            _ => a.to_owned(),
        },
        None => String::new(),
    };
    let mut page = ListPage::default();
    let sql_text = format!(
        "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key > ?2 AND key >= ?3
         AND substr(key, 1, length(?3)) = ?3 ORDER BY key LIMIT ?4"
    );
    let mut stmt = c.prepare_cached(&sql_text).map_err(sql("list objects"))?;
    for _ in 0..=max {
        let batch = i64::try_from(max + 1).unwrap_or(1001);
        let rows = stmt
            .query_map(params![bucket, cursor, q.prefix, batch], meta_from_row)
            .map_err(sql("list objects"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("list objects"))?;
        let exhausted = rows.len() <= max;
        let mut jumped = false;
        for meta in rows {
            if page.objects.len() + page.common_prefixes.len() == max {
                page.next = Some(last_entry(&page));
                return Ok(page);
            }
            if let Some(cp) = common_prefix(&meta.key, &q.prefix, delimiter) {
                page.common_prefixes.push(cp.to_owned());
                cursor = past_prefix(cp);
                jumped = true;
                break;
            }
            cursor.clone_from(&meta.key);
            page.objects.push(meta);
        }
        if !jumped && exhausted {
            return Ok(page);
        }
    }
    page.next = Some(last_entry(&page));
    Ok(page)
}

/// The last key or common prefix of a page (what its continuation resumes after).
fn last_entry(page: &ListPage) -> String {
    let obj = page.objects.last().map(|m| m.key.as_str()).unwrap_or("");
    let cp = page.common_prefixes.last().map(String::as_str).unwrap_or("");
    obj.max(cp).to_owned()
}

/// A body already in memory, as one chunk; no chunk at all when empty, as a reader of an empty
/// file gives.
fn one_chunk(all: bytes::Bytes) -> ByteStream {
    Box::pin(futures_util::stream::iter((!all.is_empty()).then_some(Ok(all))))
}

/// `start..end` of an inline body, checked against the size its row gives.
fn slice_inline(body: Vec<u8>, start: u64, end: u64, size: u64) -> Result<bytes::Bytes, ObjectError> {
    let all = bytes::Bytes::from(body);
    let (s, e) = (usize::try_from(start).unwrap_or(usize::MAX), usize::try_from(end).unwrap_or(usize::MAX));
    if s > e || e > all.len() {
        let why = format!("its stored body has {} bytes, its row says {size}", all.len());
        return Err(ObjectError::backend("read an object", std::io::Error::other(why)));
    }
    Ok(all.slice(s..e))
}

/// Bytes `start..end` of the file at `path`, read into one buffer of their size (blocking).
fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<bytes::Bytes> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))?;
    }
    let len = usize::try_from(end - start).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(len);
    file.take(end - start).read_to_end(&mut buf)?;
    if buf.len() != len {
        let why = format!("its file ended after {} of the {len} bytes its row names", buf.len());
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why));
    }
    Ok(buf.into())
}

/// The file at `path`, positioned at `start`.
async fn open_at(path: &Path, start: u64) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use nimbus_core::objects::MIN_PART_BYTES;

    fn body(parts: Vec<&'static [u8]>) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> = parts.into_iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(Iter(items.into_iter()))
    }

    /// A stream over a vector (nimbus-store-sqlite does not depend on `futures`).
    struct Iter(std::vec::IntoIter<Result<Bytes, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }

    use bytes::Bytes;

    async fn read_all(mut b: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| b.as_mut().poll_next(cx)).await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    async fn store() -> (tempfile::TempDir, ObjectDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = ObjectDb::open(dir.path()).unwrap();
        assert!(db.create_bucket("b").await.unwrap());
        assert!(!db.create_bucket("b").await.unwrap());
        (dir, db)
    }

    async fn put(db: &ObjectDb, key: &str, data: &'static [u8]) -> ObjectMeta {
        db.put_object("b", key, body(vec![data]), PutOptions::default()).await.unwrap()
    }

    /// Concurrent PUTs share commits and directory fsyncs: every one (inline or file) is
    /// acknowledged and readable, and one metadata write failing in a batch undoes only itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_commit_together_and_fail_alone() {
        let (_dir, db) = store().await;
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let data: &'static [u8] = if i % 2 == 0 { b"even" } else { big(7) };
                if i % 16 == 0 {
                    let m = ObjectMeta { key: format!("k{i}"), ..put(&db, "seed", b"x").await };
                    return db
                        .commit(move |c| upsert_object(c, "missing", &m, &Stored::File("nofile".into())))
                        .await
                        .map(|_| ());
                }
                db.put_object("b", &format!("k{i}"), body(vec![data]), PutOptions::default()).await.map(|_| ())
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let outcome = t.await.unwrap();
            if i % 16 == 0 {
                assert!(matches!(outcome, Err(ObjectError::NoSuchBucket(ref b)) if b == "missing"), "{outcome:?}");
            } else {
                outcome.unwrap();
            }
        }
        for i in (0..64u32).filter(|i| i % 16 != 0) {
            let got = read_all(db.get_object("b", &format!("k{i}"), None).await.unwrap().body).await;
            assert_eq!(got, if i % 2 == 0 { &b"even"[..] } else { big(7) });
        }
        assert!(matches!(db.head_object("b", "k16").await, Err(ObjectError::NoSuchKey(..))));
        assert_eq!(data_files(&db), 32, "one file per large body, none per small one");
        assert_eq!(
            *db.inner.dir_sync.done.lock().await,
            db.inner.dir_sync.issued.load(std::sync::atomic::Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn put_get_range_head_delete() {
        let (_d, db) = store().await;
        let mut opts = PutOptions::default();
        opts.headers.content_type = Some("text/plain".into());
        opts.headers.metadata.insert("color".into(), "blue".into());
        let meta = db.put_object("b", "k", body(vec![b"hello ", b"world"]), opts).await.unwrap();
        assert_eq!(meta.etag, "5eb63bbbe01eeed093cb22bb8f5acdc3"); // md5("hello world")
        let got = db.get_object("b", "k", None).await.unwrap();
        assert_eq!(read_all(got.body).await, b"hello world");
        let r = db.get_object("b", "k", Some(ByteRange::From(6, Some(7)))).await.unwrap();
        assert_eq!((r.start, r.end), (6, 8));
        assert_eq!(read_all(r.body).await, b"wo");
        let r = db.get_object("b", "k", Some(ByteRange::Suffix(3))).await.unwrap();
        assert_eq!(read_all(r.body).await, b"rld");
        assert!(matches!(
            db.get_object("b", "k", Some(ByteRange::From(11, None))).await,
            Err(ObjectError::InvalidRange(11))
        ));
        let head = db.head_object("b", "k").await.unwrap();
        assert_eq!(head.headers.metadata.get("color").map(String::as_str), Some("blue"));
        assert_eq!(head.headers.content_type.as_deref(), Some("text/plain"));
        let info = db.head_bucket("b").await.unwrap().unwrap();
        assert_eq!((info.objects, info.bytes), (1, 11));
        assert_eq!(data_files(&db), 0, "an inline body, ranges read from the row");
        assert!(db.delete_object("b", "k").await.unwrap());
        assert!(!db.delete_object("b", "k").await.unwrap());
        assert!(matches!(db.head_object("b", "k").await, Err(ObjectError::NoSuchKey(..))));
        assert!(matches!(db.head_object("nope", "k").await, Err(ObjectError::NoSuchBucket(_))));
    }

    /// A body one byte past the inline limit (stored as a file), filled with `fill`.
    fn big(fill: u8) -> &'static [u8] {
        Box::leak(vec![fill; INLINE_MAX as usize + 1].into_boxed_slice())
    }

    fn data_files(db: &ObjectDb) -> usize {
        std::fs::read_dir(&db.inner.data).unwrap().count()
    }

    /// Whether the row of `key` holds its body.
    fn is_inline(db: &ObjectDb, key: &str) -> bool {
        let conn = db.inner.conn.lock().unwrap();
        conn.query_row("SELECT body IS NOT NULL AND file = '' FROM objects WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    }

    /// The length of every chunk of a body, in order.
    async fn chunk_lengths(mut b: ByteStream) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| b.as_mut().poll_next(cx)).await {
            out.push(chunk.unwrap().len());
        }
        out
    }

    /// A file range up to `READ_WHOLE_MAX` is one chunk, a larger one streams in several; an
    /// empty body has no chunk; a file shorter than its row is an error, never a short body.
    #[tokio::test]
    async fn file_ranges_are_read_whole_or_streamed_and_a_short_file_is_an_error() {
        let (_d, db) = store().await;
        let small = big(7);
        put(&db, "f", small).await;
        assert_eq!(chunk_lengths(db.get_object("b", "f", None).await.unwrap().body).await, [small.len()]);
        let tail = db.get_object("b", "f", Some(ByteRange::Suffix(5))).await.unwrap();
        assert_eq!(read_all(tail.body).await, vec![7u8; 5]);

        put(&db, "empty", b"").await;
        assert!(chunk_lengths(db.get_object("b", "empty", None).await.unwrap().body).await.is_empty());

        let large: &'static [u8] = Box::leak(vec![9u8; READ_WHOLE_MAX as usize + 1].into_boxed_slice());
        put(&db, "large", large).await;
        let lengths = chunk_lengths(db.get_object("b", "large", None).await.unwrap().body).await;
        assert!(lengths.len() > 1, "{lengths:?}");
        assert_eq!(lengths.iter().sum::<usize>(), large.len());

        let file: String = {
            let conn = db.inner.conn.lock().unwrap();
            conn.query_row("SELECT file FROM objects WHERE key = 'f'", [], |r| r.get(0)).unwrap()
        };
        std::fs::OpenOptions::new().write(true).open(db.data_path(&file)).unwrap().set_len(10).unwrap();
        let err = db.get_object("b", "f", None).await.err().expect("a short file must not be served");
        assert!(!err.is_caller_fault(), "{err}");
        assert!(format!("{err:#}").contains("read an object"), "{err:#}");
    }

    #[tokio::test]
    async fn a_reader_keeps_the_version_it_opened() {
        let (_d, db) = store().await;
        for (old, new) in [(&b"old"[..], &b"new"[..]), (big(1), big(2))] {
            db.put_object("b", "k", body(vec![old]), PutOptions::default()).await.unwrap();
            let reading = db.get_object("b", "k", None).await.unwrap();
            db.put_object("b", "k", body(vec![new]), PutOptions::default()).await.unwrap();
            assert_eq!(read_all(reading.body).await, old);
            assert_eq!(read_all(db.get_object("b", "k", None).await.unwrap().body).await, new);
        }
        // The replaced file is gone from disk: the last body's file remains.
        assert_eq!(data_files(&db), 1);
    }

    /// Bodies up to the limit go in the row (no file, one commit); past it, declared or not, a
    /// file; a body that crosses the limit while streaming continues into its file whole.
    #[tokio::test]
    async fn small_puts_are_inline_and_large_ones_files() {
        let (_d, db) = store().await;
        let limit: &'static [u8] = Box::leak(vec![3u8; INLINE_MAX as usize].into_boxed_slice());
        put(&db, "small", b"tiny").await;
        put(&db, "limit", limit).await;
        put(&db, "empty", b"").await;
        assert!(is_inline(&db, "small") && is_inline(&db, "limit") && is_inline(&db, "empty"));
        assert!(read_all(db.get_object("b", "empty", None).await.unwrap().body).await.is_empty());
        assert_eq!(data_files(&db), 0, "no file for an inline body");
        let half: &'static [u8] = Box::leak(vec![5u8; INLINE_MAX as usize / 2 + 1].into_boxed_slice());
        let meta = db.put_object("b", "streamed", body(vec![half, half]), PutOptions::default()).await.unwrap();
        assert!(!is_inline(&db, "streamed"));
        assert_eq!(meta.etag, hex::encode(<md5::Md5 as md5::Digest>::digest([half, half].concat())));
        assert_eq!(read_all(db.get_object("b", "streamed", None).await.unwrap().body).await, [half, half].concat());
        let opts = PutOptions { content_length: Some(INLINE_MAX + 1), ..PutOptions::default() };
        db.put_object("b", "declared", body(vec![big(4)]), opts).await.unwrap();
        assert!(!is_inline(&db, "declared"));
        assert_eq!(data_files(&db), 2);
        assert_eq!(std::fs::read_dir(&db.inner.tmp).unwrap().count(), 0);
        let info = db.head_bucket("b").await.unwrap().unwrap();
        assert_eq!(info.bytes, 4 + 2 * INLINE_MAX + 2 * (INLINE_MAX / 2 + 1) + 1, "usage counts both kinds");
    }

    /// Overwrites and deletes in either direction leave neither an orphan file nor a stale body.
    #[tokio::test]
    async fn overwrites_between_inline_and_file_leave_no_orphans() {
        let (_d, db) = store().await;
        put(&db, "k", big(1)).await;
        assert_eq!(data_files(&db), 1);
        put(&db, "k", b"small").await;
        assert_eq!(data_files(&db), 0, "the replaced file is unlinked");
        assert!(is_inline(&db, "k"));
        assert_eq!(read_all(db.get_object("b", "k", None).await.unwrap().body).await, b"small");
        put(&db, "k", big(2)).await;
        assert!(!is_inline(&db, "k"));
        assert_eq!(data_files(&db), 1);
        assert_eq!(read_all(db.get_object("b", "k", None).await.unwrap().body).await, big(2));
        assert!(db.delete_object("b", "k").await.unwrap());
        assert_eq!(data_files(&db), 0);
        put(&db, "k", b"again").await;
        assert!(db.delete_object("b", "k").await.unwrap());
        assert!(matches!(db.get_object("b", "k", None).await, Err(ObjectError::NoSuchKey(..))));
        let rows: i64 =
            db.inner.conn.lock().unwrap().query_row("SELECT count(*) FROM objects", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
    }

    /// Copies go inline or to a file by the copied size, whatever the source was.
    #[tokio::test]
    async fn copies_between_inline_and_file() {
        let (_d, db) = store().await;
        put(&db, "small", b"data").await;
        put(&db, "large", big(9)).await;
        let m = db.copy_object("b", "small", "b", "a", None).await.unwrap();
        assert_eq!(m.etag, hex::encode(<md5::Md5 as md5::Digest>::digest(b"data")));
        db.copy_object("b", "large", "b", "z", None).await.unwrap();
        assert!(is_inline(&db, "a") && !is_inline(&db, "z"));
        assert_eq!(data_files(&db), 2);
        // Swap them: each copy replaces the other kind.
        db.copy_object("b", "large", "b", "a", None).await.unwrap();
        db.copy_object("b", "small", "b", "z", None).await.unwrap();
        assert!(!is_inline(&db, "a") && is_inline(&db, "z"));
        assert_eq!(data_files(&db), 2);
        assert_eq!(read_all(db.get_object("b", "a", None).await.unwrap().body).await, big(9));
        assert_eq!(read_all(db.get_object("b", "z", None).await.unwrap().body).await, b"data");
    }

    /// An acknowledged inline PUT is durable on its own: it reads back after a reopen.
    #[tokio::test]
    async fn inline_bodies_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let meta = {
            let db = ObjectDb::open(dir.path()).unwrap();
            db.create_bucket("b").await.unwrap();
            put(&db, "k", b"kept in the row").await
        };
        let db = ObjectDb::open(dir.path()).unwrap();
        assert_eq!(db.head_object("b", "k").await.unwrap(), meta);
        let r = db.get_object("b", "k", Some(ByteRange::From(8, Some(10)))).await.unwrap();
        assert_eq!(read_all(r.body).await, b"the");
        assert_eq!(data_files(&db), 0);
    }

    /// An `objects.db` written before inline bodies (no `body` column, every body a file) opens,
    /// reads, and its files are replaced by inline bodies cleanly.
    #[tokio::test]
    async fn a_database_from_before_inline_bodies_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("objects/data")).unwrap();
        std::fs::write(dir.path().join("objects/data/f1"), b"from a file").unwrap();
        {
            let c = Connection::open(dir.path().join("objects.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE buckets (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
                 CREATE TABLE objects (bucket TEXT NOT NULL, key TEXT NOT NULL, file TEXT NOT NULL,
                    size INTEGER NOT NULL, etag TEXT NOT NULL, modified_ms INTEGER NOT NULL,
                    headers TEXT NOT NULL, checksum_alg TEXT, checksum TEXT, parts INTEGER,
                    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
                 INSERT INTO buckets VALUES ('b', 1);
                 INSERT INTO objects VALUES ('b', 'old', 'f1', 11, 'e', 2, '{}', NULL, NULL, NULL);",
            )
            .unwrap();
        }
        let db = ObjectDb::open(dir.path()).unwrap();
        assert_eq!(data_files(&db), 1, "the sweep keeps a file an old row names");
        let r = db.get_object("b", "old", Some(ByteRange::Suffix(4))).await.unwrap();
        assert_eq!(read_all(r.body).await, b"file");
        put(&db, "old", b"now inline").await;
        assert_eq!(data_files(&db), 0);
        assert_eq!(read_all(db.get_object("b", "old", None).await.unwrap().body).await, b"now inline");
    }

    #[tokio::test]
    async fn a_failed_body_or_bad_digest_stores_nothing() {
        let (_d, db) = store().await;
        let broken: ByteStream = Box::pin(Iter(
            vec![Ok(Bytes::from_static(b"part")), Err(std::io::Error::other("client went away"))].into_iter(),
        ));
        assert!(matches!(db.put_object("b", "k", broken, PutOptions::default()).await, Err(ObjectError::Body(_))));
        let opts = PutOptions {
            checksum: Some((ChecksumAlgorithm::Crc32, Some(Expected::Value("AAAAAA==".into())))),
            ..PutOptions::default()
        };
        assert!(matches!(db.put_object("b", "k", body(vec![b"x"]), opts).await, Err(ObjectError::BadDigest("CRC32"))));
        let opts = PutOptions { content_length: Some(5), ..PutOptions::default() };
        assert!(matches!(
            db.put_object("b", "k", body(vec![b"x"]), opts).await,
            Err(ObjectError::IncompleteBody { declared: 5, actual: 1 })
        ));
        assert!(matches!(db.head_object("b", "k").await, Err(ObjectError::NoSuchKey(..))));
        assert_eq!(std::fs::read_dir(&db.inner.data).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&db.inner.tmp).unwrap().count(), 0);
    }

    /// A PUT into a missing bucket is refused whatever its body: a large one (or one of unknown
    /// length) before the body is read, a small one at the commit. Nothing is left behind.
    #[tokio::test]
    async fn a_put_into_a_missing_bucket_is_refused_at_any_size() {
        let (_d, db) = store().await;
        let large = u64::try_from(big(1).len()).unwrap();
        for (data, declared) in [(&b"small"[..], Some(5)), (big(1), Some(large)), (&b"unknown"[..], None)] {
            let opts = PutOptions { content_length: declared, ..PutOptions::default() };
            let outcome = db.put_object("missing", "k", body(vec![data]), opts).await;
            assert!(
                matches!(outcome, Err(ObjectError::NoSuchBucket(ref b)) if b == "missing"),
                "{declared:?}: {outcome:?}"
            );
        }
        assert_eq!(std::fs::read_dir(&db.inner.data).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(&db.inner.tmp).unwrap().count(), 0);
        assert!(matches!(db.head_object("missing", "k").await, Err(ObjectError::NoSuchBucket(_))));
    }

    #[tokio::test]
    async fn checksums_are_s3s() {
        let (_d, db) = store().await;
        // Known values for "hello world".
        for (alg, want) in [
            (ChecksumAlgorithm::Crc32, "DUoRhQ=="),
            (ChecksumAlgorithm::Crc32c, "yZRlqg=="),
            (ChecksumAlgorithm::Sha256, "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="),
        ] {
            let opts =
                PutOptions { checksum: Some((alg, Some(Expected::Value(want.into())))), ..PutOptions::default() };
            let meta = db.put_object("b", "k", body(vec![b"hello world"]), opts).await.unwrap();
            assert_eq!(meta.checksum, Some(Checksum { algorithm: alg, value: want.into() }));
        }
    }

    #[tokio::test]
    async fn list_with_prefix_delimiter_and_continuation() {
        let (_d, db) = store().await;
        for k in ["a/1", "a/2", "b", "c/x/1", "c/y", "d"] {
            put(&db, k, b"x").await;
        }
        let all = db.list_objects("b", &ListQuery { max_keys: 1000, ..ListQuery::default() }).await.unwrap();
        assert_eq!(all.objects.len(), 6);
        assert_eq!(all.next, None);
        let q = ListQuery { delimiter: Some("/".into()), max_keys: 2, ..ListQuery::default() };
        let p1 = db.list_objects("b", &q).await.unwrap();
        assert_eq!(p1.common_prefixes, vec!["a/"]);
        assert_eq!(p1.objects.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(p1.next.as_deref(), Some("b"));
        let p2 = db.list_objects("b", &ListQuery { after: p1.next, ..q.clone() }).await.unwrap();
        assert_eq!(p2.common_prefixes, vec!["c/"]);
        assert_eq!(p2.objects.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), vec!["d"]);
        assert_eq!(p2.next, None, "the last page says there is no more");
        // A continuation from a common prefix skips all of it.
        let after_a =
            db.list_objects("b", &ListQuery { after: Some("a/".into()), max_keys: 10, ..q.clone() }).await.unwrap();
        assert_eq!(after_a.objects.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), vec!["b", "d"]);
        let cq = ListQuery { prefix: "c/".into(), delimiter: Some("/".into()), max_keys: 10, ..ListQuery::default() };
        let c = db.list_objects("b", &cq).await.unwrap();
        assert_eq!(c.common_prefixes, vec!["c/x/"]);
        assert_eq!(c.objects.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), vec!["c/y"]);
    }

    #[tokio::test]
    async fn multipart_etag_order_and_small_parts() {
        let (_d, db) = store().await;
        let big: &'static [u8] = Box::leak(vec![7u8; MIN_PART_BYTES as usize].into_boxed_slice());
        let up = db.create_upload("b", "m", PutOptions::default()).await.unwrap();
        let p2 = db.upload_part("b", "m", &up.upload_id, 2, body(vec![b"tail"]), PutOptions::default()).await.unwrap();
        let p1 = db.upload_part("b", "m", &up.upload_id, 1, body(vec![big]), PutOptions::default()).await.unwrap();
        assert_eq!(db.list_parts("b", "m", &up.upload_id).await.unwrap().len(), 2);
        let wrong_order = [(2, p2.etag.clone()), (1, p1.etag.clone())];
        assert!(matches!(
            db.complete_upload("b", "m", &up.upload_id, &wrong_order).await,
            Err(ObjectError::InvalidPartOrder)
        ));
        let parts = [(1, format!("\"{}\"", p1.etag)), (2, p2.etag.clone())];
        let meta = db.complete_upload("b", "m", &up.upload_id, &parts).await.unwrap();
        assert_eq!(meta.etag, multipart_etag(&[p1.etag.clone(), p2.etag.clone()]));
        assert!(meta.etag.ends_with("-2"));
        assert_eq!(meta.size, MIN_PART_BYTES + 4);
        let tail = db.get_object("b", "m", Some(ByteRange::Suffix(5))).await.unwrap();
        assert_eq!(read_all(tail.body).await, b"\x07tail");
        assert!(matches!(db.list_parts("b", "m", &up.upload_id).await, Err(ObjectError::NoSuchUpload(_))));
        // A small part that is not the last.
        let up = db.create_upload("b", "s", PutOptions::default()).await.unwrap();
        let a = db.upload_part("b", "s", &up.upload_id, 1, body(vec![b"aa"]), PutOptions::default()).await.unwrap();
        let z = db.upload_part("b", "s", &up.upload_id, 2, body(vec![b"zz"]), PutOptions::default()).await.unwrap();
        assert!(matches!(
            db.complete_upload("b", "s", &up.upload_id, &[(1, a.etag), (2, z.etag)]).await,
            Err(ObjectError::EntityTooSmall(1, 2))
        ));
        db.abort_upload("b", "s", &up.upload_id).await.unwrap();
        // Only the completed object's file is left.
        assert_eq!(std::fs::read_dir(&db.inner.data).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn copy_and_delete_bucket() {
        let (_d, db) = store().await;
        put(&db, "src", b"data").await;
        db.create_bucket("c").await.unwrap();
        let mut h = ObjectHeaders::default();
        h.metadata.insert("new".into(), "1".into());
        let m = db.copy_object("b", "src", "c", "dst", Some(h.clone())).await.unwrap();
        assert_eq!(m.etag, hex::encode(<md5::Md5 as md5::Digest>::digest(b"data")));
        assert_eq!(db.head_object("c", "dst").await.unwrap().headers, h);
        assert!(matches!(db.delete_bucket("c", false).await, Err(ObjectError::BucketNotEmpty(_))));
        assert!(db.delete_bucket("c", true).await.unwrap());
        assert!(!db.delete_bucket("c", true).await.unwrap());
        assert_eq!(db.list_buckets().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn start_up_removes_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = ObjectDb::open(dir.path()).unwrap();
            db.create_bucket("b").await.unwrap();
            put(&db, "kept", big(1)).await;
        }
        // A crash mid-PUT (a temp file) and between rename and commit (an unnamed data file).
        let root = dir.path().join("objects");
        std::fs::write(root.join("tmp/half"), b"hal").unwrap();
        std::fs::write(root.join("data/orphan"), b"orphan").unwrap();
        let db = ObjectDb::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(root.join("data")).unwrap().count(), 1);
        assert_eq!(read_all(db.get_object("b", "kept", None).await.unwrap().body).await, big(1));
    }

    fn events(rows: &[ObjectChange]) -> Vec<(S3EventName, &str, &str)> {
        rows.iter().map(|c| (c.event, c.bucket.as_str(), c.key.as_str())).collect()
    }

    /// Every acknowledged change of a watched bucket has its row once acknowledged, with the
    /// object's size and ETag; unwatched buckets, deletes of absent keys and refused PUTs leave
    /// none.
    #[tokio::test]
    async fn watched_changes_write_outbox_rows_and_nothing_else_does() {
        let (_d, db) = store().await;
        db.create_bucket("quiet").await.unwrap();
        db.watch_buckets(BTreeSet::from(["b".to_owned()]));
        let meta = put(&db, "a b.txt", b"hello").await;
        db.put_object("quiet", "q", body(vec![b"x"]), PutOptions::default()).await.unwrap();
        db.copy_object("b", "a b.txt", "b", "copy", None).await.unwrap();
        db.copy_object("b", "a b.txt", "quiet", "copy", None).await.unwrap();
        let up = db.create_upload("b", "multi", PutOptions::default()).await.unwrap();
        let p1 =
            db.upload_part("b", "multi", &up.upload_id, 1, body(vec![b"part"]), PutOptions::default()).await.unwrap();
        db.complete_upload("b", "multi", &up.upload_id, &[(1, p1.etag)]).await.unwrap();
        assert!(db.delete_object("b", "copy").await.unwrap());
        assert!(!db.delete_object("b", "never-there").await.unwrap());
        assert!(db.delete_object("quiet", "q").await.unwrap());
        let opts = PutOptions { content_length: Some(9), ..PutOptions::default() };
        assert!(db.put_object("b", "refused", body(vec![b"x"]), opts).await.is_err());
        let rows = db.outbox(100, std::time::Duration::ZERO).await.unwrap();
        assert_eq!(
            events(&rows),
            [
                (S3EventName::Put, "b", "a b.txt"),
                (S3EventName::Copy, "b", "copy"),
                (S3EventName::CompleteMultipartUpload, "b", "multi"),
                (S3EventName::Delete, "b", "copy"),
            ]
        );
        assert_eq!((rows[0].size, rows[0].etag.as_deref()), (Some(5), Some(meta.etag.as_str())));
        assert_eq!(rows[0].time_ms, meta.last_modified_ms);
        assert!(rows[2].etag.as_deref().unwrap().ends_with("-1"));
        assert_eq!((rows[3].size, rows[3].etag.as_deref()), (None, None));
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids grow: {rows:?}");
        // Unwatching stops the rows; done rows are gone.
        db.watch_buckets(BTreeSet::new());
        put(&db, "later", b"x").await;
        db.outbox_done(&rows.iter().map(|c| c.id).collect::<Vec<_>>()).await.unwrap();
        assert!(db.outbox(100, std::time::Duration::ZERO).await.unwrap().is_empty());
    }

    /// The row is part of the change's transaction: a change whose commit fails leaves no row,
    /// while its neighbours in the same group commit keep theirs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_change_leaves_no_row() {
        let (_d, db) = store().await;
        db.watch_buckets(BTreeSet::from(["b".to_owned()]));
        let seed = put(&db, "seed", b"x").await;
        let mut tasks = Vec::new();
        for i in 0..16u32 {
            let (db, m) = (db.clone(), ObjectMeta { key: format!("k{i}"), ..seed.clone() });
            tasks.push(tokio::spawn(async move {
                db.commit(move |c| {
                    record_change(c, S3EventName::Put, "b", &m.key, Some(&m))?;
                    let bucket = if i % 4 == 0 { "missing" } else { "b" };
                    upsert_object(c, bucket, &m, &Stored::Inline(b"x".to_vec()))
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().is_ok(), i % 4 != 0);
        }
        let rows = db.outbox(100, std::time::Duration::ZERO).await.unwrap();
        let mut keys: Vec<&str> = rows.iter().map(|c| c.key.as_str()).filter(|k| *k != "seed").collect();
        keys.sort_unstable();
        let mut want: Vec<String> = (0..16).filter(|i| i % 4 != 0).map(|i| format!("k{i}")).collect();
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    /// Rows survive a restart (they were committed with the change), and ids are never reused
    /// even after every row was deleted, so keys derived from them stay unique.
    #[tokio::test]
    async fn outbox_rows_survive_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let db = ObjectDb::open(dir.path()).unwrap();
            db.create_bucket("b").await.unwrap();
            db.watch_buckets(BTreeSet::from(["b".to_owned()]));
            put(&db, "k", b"v").await;
            db.outbox(10, std::time::Duration::ZERO).await.unwrap()
        };
        assert_eq!(first.len(), 1);
        let db = ObjectDb::open(dir.path()).unwrap();
        let again = db.outbox(10, std::time::Duration::ZERO).await.unwrap();
        assert_eq!(again, first, "the row outlives the process that wrote it");
        db.outbox_done(&[first[0].id]).await.unwrap();
        drop(db);
        let db = ObjectDb::open(dir.path()).unwrap();
        db.watch_buckets(BTreeSet::from(["b".to_owned()]));
        put(&db, "k", b"w").await;
        let next = db.outbox(10, std::time::Duration::ZERO).await.unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].id > first[0].id, "{next:?} reuses an id of {first:?}");
    }

    /// A reader waiting on an empty outbox wakes as soon as a change commits, and one with
    /// nothing to read returns once its wait passed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outbox_reader_wakes_on_the_commit() {
        let (_d, db) = store().await;
        db.watch_buckets(BTreeSet::from(["b".to_owned()]));
        let started = std::time::Instant::now();
        assert!(db.outbox(10, std::time::Duration::from_millis(50)).await.unwrap().is_empty());
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        let reader = tokio::spawn({
            let db = db.clone();
            async move { db.outbox(10, std::time::Duration::from_secs(30)).await.unwrap() }
        });
        let started = std::time::Instant::now();
        put(&db, "k", b"v").await;
        let rows = tokio::time::timeout(std::time::Duration::from_secs(10), reader).await.unwrap().unwrap();
        assert_eq!(events(&rows), [(S3EventName::Put, "b", "k")]);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
