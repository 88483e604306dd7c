//! The embedded KV store: [`KvStore`] on SQLite, in its own `kv.db` (WAL, `synchronous=FULL`)
//! so its fsyncs never queue behind other data.
//!
//! Writes go through the group-commit writer (`group.rs`): one thread commits every waiting
//! operation in one transaction and only then replies, so an acknowledged write survives
//! `kill -9` and under load one fsync covers many writes. Reads use their own connection and
//! see only committed writes. Being the only writer also makes `increment` and
//! `compare_and_swap` atomic without retries: each reads and writes inside the writer's
//! transaction.
//!
//! Layout: `namespaces(name, created_ms)`; `entries(ns, key, value, version, expires_ms)` with
//! the key stored as a BLOB of its UTF-8 bytes, so SQLite's order is byte order (what `list`
//! promises); versions come from one counter (`version_seq`), so a key deleted and written again
//! never reuses a version. Expiry is exact: every read filters `expires_ms > now`; a sweep thread
//! deletes expired rows every [`SWEEP_EVERY`], at most [`SWEEP_BATCH`] per transaction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::kv::{
    check_key, check_value, CasOutcome, KvEntry, KvError, KvKey, KvNamespace, KvPage, KvStore, MAX_LIST_LIMIT,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::group::{in_savepoint, Answer, GroupWriter, Reply};
use crate::open_connection;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    ns TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    expires_ms INTEGER,
    PRIMARY KEY (ns, key)
);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries(expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS version_seq (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
INSERT OR IGNORE INTO version_seq(id, last) VALUES (1, 0);
";

/// How often the sweep deletes expired keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Most expired keys one sweep transaction deletes (a sweep runs several when more are due).
const SWEEP_BATCH: u64 = 1000;
/// Most sweep transactions in one round, so a huge backlog never starves other writes.
const SWEEP_ROUNDS: u32 = 100;
/// Most live `increment_volatile` counters; past it expired ones are dropped, and if none is,
/// the call fails (a rate limit then lets the request pass, logged).
const MAX_VOLATILE: usize = 1_000_000;

/// Which key an operation is about, and the time it runs at.
struct Target {
    ns: String,
    key: String,
    now: u64,
}

type KvReply<T> = Reply<Result<T, KvError>>;

enum Op {
    CreateNs(String, u64, Reply<bool>),
    DeleteNs(String, Reply<bool>),
    Put(Target, Bytes, Option<u64>, KvReply<u64>),
    Delete(Target, KvReply<bool>),
    Increment(Target, i64, Option<u64>, KvReply<i64>),
    Cas(Target, Option<u64>, Bytes, Option<u64>, KvReply<CasOutcome>),
    Sweep(u64, Reply<u64>),
}

/// The clock the store reads (Unix ms); tests substitute their own.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The embedded KV store.
pub struct KvDb {
    writer: Arc<GroupWriter<Op>>,
    read: Mutex<Connection>,
    clock: Clock,
    /// Dropping it stops the sweep thread.
    stop_sweep: Mutex<Option<Sender<()>>>,
    sweeper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `increment_volatile`'s counters (`namespace NUL key` → value and expiry in Unix ms),
    /// in memory: the embedded store serves one node, whose gateway sees every request, so one
    /// map under one lock is exact and shared by every instance.
    volatile: Mutex<HashMap<String, (i64, Option<u64>)>>,
}

impl KvDb {
    /// Open (or create) the KV database at `path` and start its writer and sweep threads.
    pub fn open(path: &Path) -> crate::Result<KvDb> {
        KvDb::open_with(path, Arc::new(nimbus_core::ids::now_ms), SWEEP_EVERY)
    }

    fn open_with(path: &Path, clock: Clock, sweep_every: Duration) -> crate::Result<KvDb> {
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        let read = open_connection(path)?;
        let writer = Arc::new(GroupWriter::start("KV store", conn, apply, None)?);
        let (stop_sweep, stopped) = channel::<()>();
        let (w, c) = (Arc::clone(&writer), Arc::clone(&clock));
        let sweeper = std::thread::Builder::new().name("nimbus-kv-sweep".into()).spawn(move || loop {
            match stopped.recv_timeout(sweep_every) {
                Err(RecvTimeoutError::Timeout) => sweep_round(&w, &c),
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })?;
        Ok(KvDb {
            writer,
            read: Mutex::new(read),
            clock,
            stop_sweep: Mutex::new(Some(stop_sweep)),
            sweeper: Mutex::new(Some(sweeper)),
            volatile: Mutex::new(HashMap::new()),
        })
    }

    /// Stop the sweep, commit what is pending and stop the writer.
    pub fn close(&self) {
        self.stop_sweep.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        self.writer.close();
    }

    /// Delete up to `SWEEP_BATCH` keys expired by now, as the sweep thread does; returns how
    /// many.
    pub async fn sweep(&self) -> Result<u64, KvError> {
        let now = (self.clock)();
        self.call("sweep expired keys", |r| Op::Sweep(now, r)).await
    }

    fn target(&self, ns: &str, key: &str) -> Result<Target, KvError> {
        check_key(key)?;
        Ok(Target { ns: ns.to_owned(), key: key.to_owned(), now: (self.clock)() })
    }

    fn expiry(&self, now: u64, ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)))
    }

    async fn call<T>(&self, action: &'static str, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, KvError> {
        self.writer.call(make).await.map_err(|e| KvError::backend(action, std::io::Error::other(e)))
    }

    async fn call_kv<T>(&self, action: &'static str, make: impl FnOnce(KvReply<T>) -> Op) -> Result<T, KvError> {
        self.call(action, make).await?
    }

    fn read<T>(&self, action: &'static str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, KvError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|e| KvError::backend(action, e))
    }
}

/// One sweep round: delete expired keys in batches until none are left (or the round's bound).
fn sweep_round(writer: &GroupWriter<Op>, clock: &Clock) {
    let mut total = 0;
    for _ in 0..SWEEP_ROUNDS {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if writer.send(Op::Sweep(clock(), reply)).is_err() {
            break;
        }
        match rx.blocking_recv() {
            Ok(Ok(n)) => {
                total += n;
                if n < SWEEP_BATCH {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("the KV sweep failed: {e}");
                break;
            }
            Err(_) => break,
        }
    }
    if total > 0 {
        tracing::debug!("the KV sweep deleted {total} expired keys");
    }
}

fn apply(tx: &mut Transaction<'_>, op: Op) -> Answer {
    match op {
        Op::CreateNs(ns, now, reply) => in_savepoint(tx, reply, |c| create_ns(c, &ns, now)),
        Op::DeleteNs(ns, reply) => in_savepoint(tx, reply, |c| delete_ns(c, &ns)),
        Op::Put(t, value, expires, reply) => in_savepoint(tx, reply, |c| put(c, &t, &value, expires)),
        Op::Delete(t, reply) => in_savepoint(tx, reply, |c| delete(c, &t)),
        Op::Increment(t, by, ttl, reply) => in_savepoint(tx, reply, |c| increment(c, &t, by, ttl)),
        Op::Cas(t, expected, value, expires, reply) => {
            in_savepoint(tx, reply, |c| cas(c, &t, expected, &value, expires))
        }
        Op::Sweep(now, reply) => in_savepoint(tx, reply, |c| sweep(c, now)),
    }
}

fn create_ns(c: &Connection, ns: &str, now: u64) -> rusqlite::Result<bool> {
    Ok(c.execute("INSERT OR IGNORE INTO namespaces(name, created_ms) VALUES (?1, ?2)", params![ns, now])? == 1)
}

fn delete_ns(c: &Connection, ns: &str) -> rusqlite::Result<bool> {
    c.execute("DELETE FROM entries WHERE ns = ?1", [ns])?;
    Ok(c.execute("DELETE FROM namespaces WHERE name = ?1", [ns])? == 1)
}

fn ns_exists(c: &Connection, ns: &str) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM namespaces WHERE name = ?1")?.query_row([ns], |_| Ok(())).optional()?.is_some())
}

fn next_version(c: &Connection) -> rusqlite::Result<u64> {
    c.prepare_cached("UPDATE version_seq SET last = last + 1 WHERE id = 1 RETURNING last")?.query_row([], |r| r.get(0))
}

/// A live key's value, version and expiry.
type Live = (Vec<u8>, u64, Option<u64>);

/// The key's live (unexpired) value, version and expiry.
fn live(c: &Connection, t: &Target) -> rusqlite::Result<Option<Live>> {
    c.prepare_cached(
        "SELECT value, version, expires_ms FROM entries
         WHERE ns = ?1 AND key = ?2 AND (expires_ms IS NULL OR expires_ms > ?3)",
    )?
    .query_row(params![t.ns, t.key.as_bytes(), t.now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .optional()
}

/// Write the key with a fresh version; returns the version.
fn write(c: &Connection, t: &Target, value: &[u8], expires: Option<u64>) -> rusqlite::Result<u64> {
    let version = next_version(c)?;
    c.prepare_cached(
        "INSERT INTO entries(ns, key, value, version, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value, version = excluded.version,
         expires_ms = excluded.expires_ms",
    )?
    .execute(params![t.ns, t.key.as_bytes(), value, version, expires])?;
    Ok(version)
}

fn no_namespace<T>(t: &Target) -> rusqlite::Result<Result<T, KvError>> {
    Ok(Err(KvError::NoSuchNamespace(t.ns.clone())))
}

fn put(c: &Connection, t: &Target, value: &[u8], expires: Option<u64>) -> rusqlite::Result<Result<u64, KvError>> {
    if !ns_exists(c, &t.ns)? {
        return no_namespace(t);
    }
    Ok(Ok(write(c, t, value, expires)?))
}

fn delete(c: &Connection, t: &Target) -> rusqlite::Result<Result<bool, KvError>> {
    if !ns_exists(c, &t.ns)? {
        return no_namespace(t);
    }
    let was_live = live(c, t)?.is_some();
    c.prepare_cached("DELETE FROM entries WHERE ns = ?1 AND key = ?2")?.execute(params![t.ns, t.key.as_bytes()])?;
    Ok(Ok(was_live))
}

fn increment(c: &Connection, t: &Target, by: i64, ttl_ms: Option<u64>) -> rusqlite::Result<Result<i64, KvError>> {
    if !ns_exists(c, &t.ns)? {
        return no_namespace(t);
    }
    let (sum, expires) = match live(c, t)? {
        None => (by, ttl_ms.map(|ttl| t.now.saturating_add(ttl))),
        Some((value, _, expires)) => {
            let Some(n) = std::str::from_utf8(&value).ok().and_then(|s| s.parse::<i64>().ok()) else {
                return Ok(Err(KvError::NotANumber(t.key.clone())));
            };
            let Some(sum) = n.checked_add(by) else {
                return Ok(Err(KvError::Overflow(t.key.clone())));
            };
            (sum, expires)
        }
    };
    write(c, t, sum.to_string().as_bytes(), expires)?;
    Ok(Ok(sum))
}

fn cas(
    c: &Connection,
    t: &Target,
    expected: Option<u64>,
    value: &[u8],
    expires: Option<u64>,
) -> rusqlite::Result<Result<CasOutcome, KvError>> {
    if !ns_exists(c, &t.ns)? {
        return no_namespace(t);
    }
    let current = live(c, t)?.map(|(_, version, _)| version);
    if current != expected {
        return Ok(Ok(CasOutcome::Conflict(current)));
    }
    Ok(Ok(CasOutcome::Swapped(write(c, t, value, expires)?)))
}

fn sweep(c: &Connection, now: u64) -> rusqlite::Result<u64> {
    let n = c
        .prepare_cached(
            "DELETE FROM entries WHERE rowid IN
             (SELECT rowid FROM entries WHERE expires_ms IS NOT NULL AND expires_ms <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, SWEEP_BATCH])?;
    Ok(n as u64)
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: there is
/// none, every key is below it).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A cursor is the hex of the last key a page returned.
fn decode_cursor(cursor: &str) -> Result<Vec<u8>, KvError> {
    hex::decode(cursor).ok().filter(|k| std::str::from_utf8(k).is_ok()).ok_or(KvError::BadCursor)
}

fn list_page(
    c: &Connection,
    ns: &str,
    prefix: &str,
    after: &[u8],
    limit: usize,
    now: u64,
) -> rusqlite::Result<Vec<KvKey>> {
    let end = if prefix.is_empty() { None } else { prefix_end(prefix.as_bytes()) };
    let mut stmt = c.prepare_cached(
        "SELECT key, expires_ms FROM entries
         WHERE ns = ?1 AND key >= ?2 AND key > ?3 AND (?4 IS NULL OR key < ?4)
           AND (expires_ms IS NULL OR expires_ms > ?5)
         ORDER BY key LIMIT ?6",
    )?;
    let rows = stmt.query_map(params![ns, prefix.as_bytes(), after, end, now, limit], |r| {
        let key: Vec<u8> = r.get(0)?;
        let name = String::from_utf8(key)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e)))?;
        Ok(KvKey { name, expires_ms: r.get(1)? })
    })?;
    rows.collect()
}

#[async_trait]
impl KvStore for KvDb {
    async fn create_namespace(&self, ns: &str) -> Result<bool, KvError> {
        let (ns, now) = (ns.to_owned(), (self.clock)());
        self.call("create a namespace", |r| Op::CreateNs(ns, now, r)).await
    }

    async fn delete_namespace(&self, ns: &str) -> Result<bool, KvError> {
        let ns = ns.to_owned();
        self.call("delete a namespace", |r| Op::DeleteNs(ns, r)).await
    }

    async fn namespaces(&self) -> Result<Vec<KvNamespace>, KvError> {
        let now = (self.clock)();
        self.read("list namespaces", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT n.name, count(e.key), coalesce(sum(length(e.key) + length(e.value)), 0), n.created_ms
                 FROM namespaces AS n LEFT JOIN entries AS e
                   ON e.ns = n.name AND (e.expires_ms IS NULL OR e.expires_ms > ?1)
                 GROUP BY n.name ORDER BY n.name",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok(KvNamespace { name: r.get(0)?, keys: r.get(1)?, bytes: r.get(2)?, created_ms: r.get(3)? })
            })?;
            rows.collect()
        })
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        let t = self.target(ns, key)?;
        let (found, exists) = self.read("read a key", |c| {
            let found = live(c, &t)?;
            let exists = found.is_some() || ns_exists(c, ns)?;
            Ok((found, exists))
        })?;
        if !exists {
            return Err(KvError::NoSuchNamespace(ns.to_owned()));
        }
        Ok(found.map(|(value, version, expires_ms)| KvEntry { value: Bytes::from(value), version, expires_ms }))
    }

    async fn put(&self, ns: &str, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<u64, KvError> {
        check_value(&value)?;
        let t = self.target(ns, key)?;
        let expires = self.expiry(t.now, ttl);
        self.call_kv("write a key", |r| Op::Put(t, value, expires, r)).await
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        let t = self.target(ns, key)?;
        self.call_kv("delete a key", |r| Op::Delete(t, r)).await
    }

    async fn list(&self, ns: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<KvPage, KvError> {
        let after = cursor.map(decode_cursor).transpose()?.unwrap_or_default();
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let now = (self.clock)();
        let (mut keys, exists) =
            self.read("list keys", |c| Ok((list_page(c, ns, prefix, &after, limit + 1, now)?, ns_exists(c, ns)?)))?;
        if !exists {
            return Err(KvError::NoSuchNamespace(ns.to_owned()));
        }
        let more = keys.len() > limit;
        keys.truncate(limit);
        let cursor = if more { keys.last().map(|k| hex::encode(k.name.as_bytes())) } else { None };
        Ok(KvPage { keys, cursor })
    }

    async fn increment(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let t = self.target(ns, key)?;
        let ttl_ms = ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self.call_kv("increment a key", |r| Op::Increment(t, by, ttl_ms, r)).await
    }

    async fn increment_volatile(&self, ns: &str, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        check_key(key)?;
        let now = (self.clock)();
        let mut counters = self.volatile.lock().unwrap_or_else(|e| e.into_inner());
        if counters.len() >= MAX_VOLATILE {
            counters.retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
        }
        if counters.len() >= MAX_VOLATILE {
            let full = std::io::Error::other(format!("{MAX_VOLATILE} counters are live"));
            return Err(KvError::backend("count in memory", full));
        }
        let slot = counters.entry(format!("{ns}\0{key}")).or_insert((0, self.expiry(now, ttl)));
        if slot.1.is_some_and(|e| e <= now) {
            *slot = (0, self.expiry(now, ttl));
        }
        slot.0 = slot.0.checked_add(by).ok_or_else(|| KvError::Overflow(key.to_owned()))?;
        Ok(slot.0)
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<CasOutcome, KvError> {
        check_value(&value)?;
        let t = self.target(ns, key)?;
        let expires = self.expiry(t.now, ttl);
        self.call_kv("compare and swap a key", |r| Op::Cas(t, expected, value, expires, r)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use nimbus_core::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

    use super::*;

    const T0: u64 = 1_800_000_000_000;

    /// A store on a clock the test moves, with the sweep thread effectively off.
    fn store(dir: &tempfile::TempDir) -> (KvDb, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(T0));
        let n = Arc::clone(&now);
        let db = KvDb::open_with(&dir.path().join("kv.db"), Arc::new(move || n.load(Ordering::SeqCst)), Duration::MAX)
            .unwrap();
        (db, now)
    }

    async fn with_ns(dir: &tempfile::TempDir) -> (KvDb, Arc<AtomicU64>) {
        let (db, now) = store(dir);
        assert!(db.create_namespace("ns").await.unwrap());
        (db, now)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn rows(dir: &tempfile::TempDir) -> u64 {
        let c = Connection::open(dir.path().join("kv.db")).unwrap();
        c.query_row("SELECT count(*) FROM entries", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn namespaces_are_created_once_counted_and_deleted_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        assert!(!db.create_namespace("ns").await.unwrap(), "a second create is a no-op");
        assert!(db.create_namespace("other").await.unwrap());
        db.put("ns", "a", b("12345"), None).await.unwrap();
        db.put("ns", "bb", b("x"), None).await.unwrap();
        let got: Vec<_> = db.namespaces().await.unwrap().into_iter().map(|n| (n.name, n.keys, n.bytes)).collect();
        assert_eq!(got, [("ns".to_owned(), 2, 1 + 5 + 2 + 1), ("other".to_owned(), 0, 0)]);
        assert!(db.delete_namespace("ns").await.unwrap());
        assert!(!db.delete_namespace("ns").await.unwrap());
        assert_eq!(rows(&dir), 0, "the namespace's keys went with it");
        assert!(db.create_namespace("ns").await.unwrap());
        assert_eq!(db.get("ns", "a").await.unwrap(), None, "a re-created namespace starts empty");
    }

    #[tokio::test]
    async fn the_shared_semantics_table_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (db, now) = with_ns(&dir).await;
        let advance = move |ms| {
            now.fetch_add(ms, Ordering::SeqCst);
        };
        nimbus_core::kv_conformance::semantics_table(&db, &advance).await.unwrap();
    }

    #[tokio::test]
    async fn every_operation_on_an_unknown_namespace_names_the_manifest_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        let errors = [
            db.get("nope", "k").await.err(),
            db.put("nope", "k", b("v"), None).await.err(),
            db.delete("nope", "k").await.err(),
            db.list("nope", "", None, 10).await.err(),
            db.increment("nope", "k", 1, None).await.err(),
            db.compare_and_swap("nope", "k", None, b("v"), None).await.err(),
        ];
        for e in errors {
            let e = e.expect("an error");
            assert!(matches!(e, KvError::NoSuchNamespace(ref n) if n == "nope"), "{e}");
            assert!(e.to_string().contains("[kv.nope]"), "{e}");
            assert!(e.is_caller_fault());
        }
    }

    #[tokio::test]
    async fn put_get_delete_and_versions_that_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        assert_eq!(db.get("ns", "k").await.unwrap(), None);
        let v1 = db.put("ns", "k", b("one"), None).await.unwrap();
        assert!(v1 > 0);
        let v2 = db.put("ns", "k", b("two"), None).await.unwrap();
        assert!(v2 > v1);
        let e = db.get("ns", "k").await.unwrap().unwrap();
        assert_eq!((e.value, e.version, e.expires_ms), (b("two"), v2, None));
        assert!(db.delete("ns", "k").await.unwrap());
        assert!(!db.delete("ns", "k").await.unwrap(), "deleting an absent key says so");
        assert_eq!(db.get("ns", "k").await.unwrap(), None);
        let v3 = db.put("ns", "k", b("again"), None).await.unwrap();
        assert!(v3 > v2, "a key written again never reuses a version");
        // Binary values and an empty value round-trip.
        db.put("ns", "bin", Bytes::from_static(&[0, 255, 1]), None).await.unwrap();
        assert_eq!(db.get("ns", "bin").await.unwrap().unwrap().value, Bytes::from_static(&[0, 255, 1]));
        db.put("ns", "empty", Bytes::new(), None).await.unwrap();
        assert_eq!(db.get("ns", "empty").await.unwrap().unwrap().value, Bytes::new());
    }

    #[tokio::test]
    async fn keys_and_values_over_the_limits_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(db.put("ns", &long, b("v"), None).await, Err(KvError::KeyLength(513))));
        assert!(matches!(db.get("ns", "").await, Err(KvError::KeyLength(0))));
        assert!(matches!(db.increment("ns", &long, 1, None).await, Err(KvError::KeyLength(_))));
        let big = Bytes::from(vec![b'x'; MAX_VALUE_BYTES + 1]);
        let e = db.put("ns", "k", big.clone(), None).await.unwrap_err();
        assert!(e.to_string().contains("1048577 bytes"), "{e}");
        assert!(matches!(db.compare_and_swap("ns", "k", None, big, None).await, Err(KvError::ValueTooLarge(_))));
        // Exactly at the limits is fine.
        let key = "k".repeat(MAX_KEY_BYTES);
        db.put("ns", &key, Bytes::from(vec![b'x'; MAX_VALUE_BYTES]), None).await.unwrap();
        assert_eq!(db.get("ns", &key).await.unwrap().unwrap().value.len(), MAX_VALUE_BYTES);
        assert_eq!(rows(&dir), 1);
    }

    #[tokio::test]
    async fn an_expired_key_is_absent_to_every_operation_before_the_sweep_and_gone_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (db, now) = with_ns(&dir).await;
        let v = db.put("ns", "t", b("5"), Some(Duration::from_secs(1))).await.unwrap();
        db.put("ns", "keep", b("k"), None).await.unwrap();
        now.store(T0 + 999, Ordering::SeqCst);
        let e = db.get("ns", "t").await.unwrap().unwrap();
        assert_eq!((e.value, e.expires_ms), (b("5"), Some(T0 + 1000)));
        assert_eq!(db.list("ns", "", None, 10).await.unwrap().keys.len(), 2);
        now.store(T0 + 1000, Ordering::SeqCst);
        assert_eq!(db.get("ns", "t").await.unwrap(), None, "expired at exactly its expiry");
        let names: Vec<_> = db.list("ns", "", None, 10).await.unwrap().keys.into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["keep"]);
        assert_eq!(db.namespaces().await.unwrap()[0].keys, 1);
        assert_eq!(db.compare_and_swap("ns", "t", Some(v), b("x"), None).await.unwrap(), CasOutcome::Conflict(None));
        assert!(!db.delete("ns", "t").await.unwrap(), "deleting an expired key finds nothing");

        db.put("ns", "t2", b("41"), Some(Duration::from_secs(1))).await.unwrap();
        now.store(T0 + 2000, Ordering::SeqCst);
        assert_eq!(db.increment("ns", "t2", 1, None).await.unwrap(), 1, "an expired counter starts again");
        assert_eq!(db.get("ns", "t2").await.unwrap().unwrap().expires_ms, None);

        db.put("ns", "t3", b("x"), Some(Duration::from_secs(1))).await.unwrap();
        assert_eq!(rows(&dir), 3);
        now.store(T0 + 3000, Ordering::SeqCst);
        assert_eq!(db.sweep().await.unwrap(), 1);
        assert_eq!(rows(&dir), 2, "the sweep reclaimed the expired row");
    }

    #[tokio::test]
    async fn volatile_counters_count_exactly_expire_and_never_reach_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(T0));
        let n = Arc::clone(&now);
        let clock: Clock = Arc::new(move || n.load(Ordering::SeqCst));
        let db = Arc::new(KvDb::open_with(&dir.path().join("kv.db"), clock, Duration::from_secs(60)).unwrap());
        let ttl = Some(Duration::from_secs(1));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let db = Arc::clone(&db);
                tokio::spawn(async move { db.increment_volatile("ns", "w", 1, ttl).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=200).collect::<Vec<i64>>(), "each increment saw its own sum");
        assert_eq!(db.increment_volatile("other", "w", 5, ttl).await.unwrap(), 5, "namespaces apart");
        now.store(T0 + 999, Ordering::SeqCst);
        assert_eq!(db.increment_volatile("ns", "w", 1, ttl).await.unwrap(), 201, "the first expiry stays");
        now.store(T0 + 1000, Ordering::SeqCst);
        assert_eq!(db.increment_volatile("ns", "w", 1, ttl).await.unwrap(), 1, "expired: a new window");
        assert_eq!(rows(&dir), 0, "nothing was written to the database");
        assert_eq!(db.increment_volatile("ns", "m", i64::MAX, None).await.unwrap(), i64::MAX);
        assert!(matches!(db.increment_volatile("ns", "m", 1, None).await, Err(KvError::Overflow(_))));
    }

    #[tokio::test]
    async fn the_sweep_thread_reclaims_expired_keys_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(T0));
        let n = Arc::clone(&now);
        let clock: Clock = Arc::new(move || n.load(Ordering::SeqCst));
        let db = KvDb::open_with(&dir.path().join("kv.db"), clock, Duration::from_millis(10)).unwrap();
        db.create_namespace("ns").await.unwrap();
        for i in 0..(SWEEP_BATCH + 10) {
            db.put("ns", &format!("k{i}"), b("v"), Some(Duration::from_secs(1))).await.unwrap();
        }
        db.put("ns", "stays", b("v"), None).await.unwrap();
        now.store(T0 + 1000, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rows(&dir) > 1 {
            assert!(std::time::Instant::now() < deadline, "the sweep left {} rows", rows(&dir));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(db.get("ns", "stays").await.unwrap().is_some());
        db.close();
    }

    #[tokio::test]
    async fn increment_counts_in_decimal_and_keeps_the_first_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (db, now) = with_ns(&dir).await;
        let ttl = Some(Duration::from_secs(60));
        assert_eq!(db.increment("ns", "c", 1, ttl).await.unwrap(), 1);
        now.store(T0 + 30_000, Ordering::SeqCst);
        assert_eq!(db.increment("ns", "c", 2, ttl).await.unwrap(), 3);
        let e = db.get("ns", "c").await.unwrap().unwrap();
        assert_eq!((e.value, e.expires_ms), (b("3"), Some(T0 + 60_000)), "a fixed window, not a sliding one");
        assert_eq!(db.increment("ns", "c", -5, None).await.unwrap(), -2);
        assert_eq!(db.get("ns", "c").await.unwrap().unwrap().value, b("-2"));
        db.put("ns", "n", b("40"), None).await.unwrap();
        assert_eq!(db.increment("ns", "n", 2, None).await.unwrap(), 42);

        db.put("ns", "s", b("three"), None).await.unwrap();
        let e = db.increment("ns", "s", 1, None).await.unwrap_err();
        assert!(matches!(e, KvError::NotANumber(ref k) if k == "s"), "{e}");
        db.put("ns", "max", b(&i64::MAX.to_string()), None).await.unwrap();
        assert!(matches!(db.increment("ns", "max", 1, None).await, Err(KvError::Overflow(_))));
        assert_eq!(db.get("ns", "max").await.unwrap().unwrap().value, b(&i64::MAX.to_string()));
    }

    #[tokio::test]
    async fn compare_and_swap_writes_only_over_the_expected_version() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        let CasOutcome::Swapped(v1) = db.compare_and_swap("ns", "k", None, b("a"), None).await.unwrap() else {
            panic!("creating an absent key swaps");
        };
        assert_eq!(db.compare_and_swap("ns", "k", None, b("b"), None).await.unwrap(), CasOutcome::Conflict(Some(v1)));
        assert_eq!(
            db.compare_and_swap("ns", "k", Some(v1 + 1000), b("b"), None).await.unwrap(),
            CasOutcome::Conflict(Some(v1))
        );
        let CasOutcome::Swapped(v2) = db.compare_and_swap("ns", "k", Some(v1), b("b"), None).await.unwrap() else {
            panic!("the expected version swaps");
        };
        assert!(v2 > v1);
        assert_eq!(db.get("ns", "k").await.unwrap().unwrap().value, b("b"));
        assert_eq!(
            db.compare_and_swap("ns", "k", Some(v1), b("c"), None).await.unwrap(),
            CasOutcome::Conflict(Some(v2))
        );
        assert_eq!(db.get("ns", "k").await.unwrap().unwrap().version, v2);
    }

    #[tokio::test]
    async fn list_pages_through_keys_in_byte_order_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        let keys = ["b", "a/2", "a/1", "a/10", "é", "a", "ab", "z", "a\u{7f}", "a\u{ff}x"];
        for k in keys {
            db.put("ns", k, b("v"), None).await.unwrap();
        }
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let page = db.list("ns", "", cursor.as_deref(), 3).await.unwrap();
            assert!(page.keys.len() <= 3);
            all.extend(page.keys.into_iter().map(|k| k.name));
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        let mut sorted: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
        assert_eq!(all, sorted);

        let names = |p: KvPage| p.keys.into_iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(names(db.list("ns", "a/", None, 100).await.unwrap()), ["a/1", "a/10", "a/2"]);
        assert_eq!(names(db.list("ns", "a\u{ff}", None, 100).await.unwrap()), ["a\u{ff}x"]);
        let first = db.list("ns", "a/", None, 1).await.unwrap();
        let cursor = first.cursor.clone().unwrap();
        assert_eq!(names(first), ["a/1"]);
        assert_eq!(names(db.list("ns", "a/", Some(&cursor), 100).await.unwrap()), ["a/10", "a/2"]);
        assert_eq!(db.list("ns", "a/", None, 3).await.unwrap().cursor, None, "an exact last page has no cursor");
        assert_eq!(db.list("ns", "", None, 0).await.unwrap().keys.len(), 1, "limit 0 means 1");
        assert!(matches!(db.list("ns", "", Some("not hex"), 10).await, Err(KvError::BadCursor)));
    }

    #[tokio::test]
    async fn list_caps_a_page_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        for i in 0..(MAX_LIST_LIMIT + 5) {
            db.put("ns", &format!("{i:05}"), b("v"), None).await.unwrap();
        }
        let page = db.list("ns", "", None, usize::MAX).await.unwrap();
        assert_eq!(page.keys.len(), MAX_LIST_LIMIT);
        let rest = db.list("ns", "", page.cursor.as_deref(), usize::MAX).await.unwrap();
        assert_eq!((rest.keys.len(), rest.cursor), (5, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_are_never_lost() {
        const TASKS: i64 = 32;
        const EACH: i64 = 100;
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        let db = Arc::new(db);
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let db = Arc::clone(&db);
                tokio::spawn(async move {
                    for _ in 0..EACH {
                        db.increment("ns", "n", 1, None).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(db.get("ns", "n").await.unwrap().unwrap().value, b(&(TASKS * EACH).to_string()));
    }

    #[tokio::test]
    async fn acknowledged_writes_are_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = with_ns(&dir).await;
        let v = db.put("ns", "k", b("v"), None).await.unwrap();
        db.increment("ns", "n", 7, None).await.unwrap();
        db.close();
        let (db, _) = store(&dir);
        let e = db.get("ns", "k").await.unwrap().unwrap();
        assert_eq!((e.value, e.version), (b("v"), v));
        assert_eq!(db.get("ns", "n").await.unwrap().unwrap().value, b("7"));
        assert!(db.put("ns", "k", b("w"), None).await.unwrap() > v, "versions keep growing after a restart");
        db.close();
        assert!(db.put("ns", "k", b("x"), None).await.is_err(), "a closed store refuses writes");
    }

    #[test]
    fn prefix_end_is_the_first_string_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
