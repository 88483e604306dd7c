//! The durable async queue on SQLite, with group commit.
//!
//! Every write goes to one writer thread (`group.rs`). It takes the first operation, then
//! everything else already waiting, applies them all in one transaction (a savepoint each, so one
//! failing operation does not undo its neighbours), commits with `synchronous=FULL` (WAL + fsync),
//! and only then replies. An accept is therefore acknowledged only once it is on stable storage,
//! and under load one fsync covers many accepts. Reads use their own connection.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::queue::{
    Accepted, AttemptRecord, ClaimedEvent, EventSource, EventStatus, EventView, Finish, NewEvent, QueueError,
    QueueStats, QueueStore,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;

use crate::group::{in_savepoint, AckEarly, Answer, GroupWriter, Reply};
use crate::open_connection;

/// The `*_ms` columns hold Unix milliseconds, read and written as u64 (rusqlite's `fallible_uint`:
/// a value SQLite's INTEGER cannot hold, or a negative one read back, is an error, never wrapped).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    qualifier TEXT,
    payload BLOB NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    function_errors INTEGER NOT NULL DEFAULT 0,
    platform_failures INTEGER NOT NULL DEFAULT 0,
    accepted_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    next_run_ms INTEGER NOT NULL,
    idempotency_key TEXT,
    last_error_type TEXT,
    last_error TEXT,
    reason TEXT,
    result BLOB,
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS events_due ON events(status, next_run_ms);
CREATE INDEX IF NOT EXISTS events_idem ON events(function, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS schedule_state (key TEXT PRIMARY KEY, last_slot_ms INTEGER NOT NULL);
";

enum Op {
    Accept(NewEvent, u64, Reply<Accepted>),
    Claim(u64, u32, std::collections::HashMap<String, u32>, u32, Reply<Vec<ClaimedEvent>>),
    Release(String, u64, Reply<()>),
    Finish(String, AttemptRecord, Finish, u64, Reply<()>),
    Recover(Reply<u64>),
    Redrive(Vec<String>, Option<String>, u64, Reply<u64>),
    Purge(Option<String>, Reply<u64>),
    Fire(String, u64, NewEvent, Reply<bool>),
    Skip(String, u64, Reply<()>),
}

/// The embedded queue store.
pub struct QueueDb {
    writer: GroupWriter<Op>,
    read: Arc<Mutex<Connection>>,
}

impl QueueDb {
    /// Open the queue in the store's database. `unsafe_ack` acknowledges accepts before they
    /// are committed and commits lazily: it exists only so the fault test can prove it detects
    /// lost events; never use it.
    pub fn open(db: &Path, unsafe_ack: bool) -> crate::Result<QueueDb> {
        let conn = open_connection(db)?;
        conn.execute_batch(SCHEMA)?;
        let read = open_connection(db)?;
        let writer = GroupWriter::start("queue", conn, apply, unsafe_ack.then_some(ack_early as AckEarly<Op>))?;
        Ok(QueueDb { writer, read: Arc::new(Mutex::new(read)) })
    }

    /// Commit what is pending and stop the writer.
    pub fn close(&self) {
        self.writer.close();
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, QueueError> {
        self.writer.call(make).await.map_err(QueueError::Storage)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, QueueError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|e| QueueError::Storage(e.to_string()))
    }
}

/// Test-only (`unsafe_ack`): acknowledge an accept on receipt, before it is stored.
fn ack_early(op: Op) -> Op {
    match op {
        Op::Accept(ev, window, reply) => {
            let _ = reply.send(Ok(Accepted { id: ev.id.clone(), duplicate: false }));
            Op::Accept(ev, window, oneshot::channel().0)
        }
        other => other,
    }
}

/// Apply one operation inside the batch's transaction; returns how to answer once the batch's
/// fate is known (an answer is only "ok" if the commit succeeded).
fn apply(tx: &mut Transaction<'_>, op: Op) -> Answer {
    match op {
        Op::Accept(ev, window, reply) => in_savepoint(tx, reply, |tx| accept(tx, &ev, window)),
        Op::Claim(now, limit, shares, default_share, reply) => {
            in_savepoint(tx, reply, |tx| claim(tx, now, limit, &shares, default_share))
        }
        Op::Release(id, run_at, reply) => in_savepoint(tx, reply, |tx| release(tx, &id, run_at)),
        Op::Finish(id, attempt, finish, now, reply) => {
            in_savepoint(tx, reply, |tx| finish_event(tx, &id, &attempt, &finish, now))
        }
        Op::Recover(reply) => in_savepoint(tx, reply, recover),
        Op::Redrive(ids, function, now, reply) => {
            in_savepoint(tx, reply, |tx| redrive(tx, &ids, function.as_deref(), now))
        }
        Op::Purge(function, reply) => in_savepoint(tx, reply, |tx| purge(tx, function.as_deref())),
        Op::Fire(key, slot, ev, reply) => in_savepoint(tx, reply, |tx| fire_slot(tx, &key, slot, &ev)),
        Op::Skip(key, slot, reply) => in_savepoint(tx, reply, |tx| remember_slot(tx, &key, slot)),
    }
}

fn release(tx: &Connection, id: &str, run_at: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE events SET status = 'queued', attempts = attempts - 1, next_run_ms = ?2
         WHERE id = ?1 AND status = 'running'",
        params![id, run_at],
    )?;
    Ok(())
}

fn recover(tx: &Connection) -> rusqlite::Result<u64> {
    Ok(tx.execute("UPDATE events SET status = 'queued' WHERE status = 'running'", [])? as u64)
}

fn redrive(tx: &Connection, ids: &[String], function: Option<&str>, now: u64) -> rusqlite::Result<u64> {
    let sql = "UPDATE events SET status = 'queued', next_run_ms = ?1, updated_ms = ?1, attempts = 0,
               function_errors = 0, platform_failures = 0, accepted_ms = ?1, reason = NULL
               WHERE status = 'dead'";
    if ids.is_empty() {
        return Ok(tx.execute(&format!("{sql} AND (?2 IS NULL OR function = ?2)"), params![now, function])? as u64);
    }
    let mut n = 0;
    for id in ids {
        n += tx.execute(&format!("{sql} AND id = ?2"), params![now, id])? as u64;
    }
    Ok(n)
}

fn purge(tx: &Connection, function: Option<&str>) -> rusqlite::Result<u64> {
    Ok(tx.execute("DELETE FROM events WHERE status = 'dead' AND (?1 IS NULL OR function = ?1)", params![function])?
        as u64)
}

/// Insert a schedule's event unless its slot fired before (the id is derived from the slot),
/// and remember the slot, in one savepoint.
fn fire_slot(tx: &Connection, key: &str, slot: u64, ev: &NewEvent) -> rusqlite::Result<bool> {
    let fired = insert(tx, ev, "INSERT OR IGNORE")? == 1;
    remember_slot(tx, key, slot)?;
    Ok(fired)
}

/// Record `slot` as the schedule's latest unless a later one is already recorded.
fn remember_slot(tx: &Connection, key: &str, slot: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO schedule_state(key, last_slot_ms) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET last_slot_ms = max(last_slot_ms, excluded.last_slot_ms)",
        params![key, slot],
    )?;
    Ok(())
}

fn insert(tx: &Connection, ev: &NewEvent, verb: &str) -> rusqlite::Result<usize> {
    tx.execute(
        &format!(
            "{verb} INTO events(id, function, qualifier, payload, source, status, accepted_ms, updated_ms, next_run_ms, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6, ?7, ?8)"
        ),
        params![
            ev.id,
            ev.function,
            ev.qualifier,
            ev.payload.as_ref(),
            ev.source.as_str(),
            ev.now_ms,
            ev.run_at_ms,
            ev.idempotency_key
        ],
    )
}

fn accept(tx: &Connection, ev: &NewEvent, window_ms: u64) -> rusqlite::Result<Accepted> {
    if let Some(key) = &ev.idempotency_key {
        // Events accepted after the cutoff count; with no cutoff (the window reaches back before
        // the epoch) every earlier event does.
        let cutoff = ev.now_ms.checked_sub(window_ms);
        let earlier: Option<String> = tx
            .query_row(
                "SELECT id FROM events WHERE function = ?1 AND idempotency_key = ?2
                 AND (?3 IS NULL OR accepted_ms > ?3)
                 ORDER BY accepted_ms DESC LIMIT 1",
                params![ev.function, key, cutoff],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = earlier {
            return Ok(Accepted { id, duplicate: true });
        }
    }
    insert(tx, ev, "INSERT")?;
    Ok(Accepted { id: ev.id.clone(), duplicate: false })
}

/// Events a claim looks at: bounds the work of one claim however deep the backlog is. One claim
/// never takes more than the in-flight budget (256), and saturated functions are filtered out
/// before the window, so a window of that size sees every function that can take work.
const CLAIM_WINDOW: u32 = 256;

fn claim(
    tx: &Connection,
    now: u64,
    limit: u32,
    shares: &std::collections::HashMap<String, u32>,
    default_share: u32,
) -> rusqlite::Result<Vec<ClaimedEvent>> {
    // Shares travel as one JSON object, so one cached statement serves any set of functions.
    // Functions with a share of 0 are filtered before the window, so a saturated function's
    // backlog never hides other functions' events.
    let skip: Vec<&String> = shares.iter().filter(|(_, s)| **s == 0).map(|(f, _)| f).collect();
    let skip = serde_json::to_string(&skip).unwrap_or_else(|_| "[]".to_owned());
    let shares = serde_json::to_string(shares).unwrap_or_else(|_| "{}".to_owned());
    let mut stmt = tx.prepare_cached(
        "SELECT e.id, e.function, e.qualifier, e.payload, e.source, e.accepted_ms, e.attempts, e.function_errors,
                e.platform_failures
         FROM (
           SELECT id, function, next_run_ms, ROW_NUMBER() OVER (PARTITION BY function ORDER BY next_run_ms) AS rn
           FROM (SELECT id, function, next_run_ms FROM events
                 WHERE status = 'queued' AND next_run_ms <= ?1 AND function NOT IN (SELECT value FROM json_each(?3))
                 ORDER BY next_run_ms LIMIT ?6)
         ) AS c JOIN events AS e ON e.id = c.id
         WHERE c.rn <= coalesce(json_extract(?4, '$.\"' || c.function || '\"'), ?5)
         ORDER BY c.next_run_ms LIMIT ?2",
    )?;
    let claimed = stmt
        .query_map(params![now, limit, skip, shares, default_share, CLAIM_WINDOW], |r| {
            Ok(ClaimedEvent {
                id: r.get(0)?,
                function: r.get(1)?,
                qualifier: r.get(2)?,
                payload: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                source: parsed(r, 4, "event source", EventSource::parse)?,
                accepted_ms: r.get(5)?,
                attempts: r.get::<_, u32>(6)? + 1,
                function_errors: r.get(7)?,
                platform_failures: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut upd = tx.prepare_cached(
        "UPDATE events SET status = 'running', attempts = attempts + 1, updated_ms = ?2 WHERE id = ?1",
    )?;
    for c in &claimed {
        upd.execute(params![c.id, now])?;
    }
    Ok(claimed)
}

fn finish_event(tx: &Connection, id: &str, attempt: &AttemptRecord, finish: &Finish, now: u64) -> rusqlite::Result<()> {
    let history: String = tx.query_row("SELECT history FROM events WHERE id = ?1", [id], |r| r.get(0))?;
    let mut list: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap_or_default();
    list.push(serde_json::to_value(attempt).unwrap_or_default());
    let history = serde_json::Value::Array(list).to_string();
    let (err_type, err) = (&attempt.error_type, &attempt.error_message);
    match finish {
        Finish::Succeeded { response } => tx.execute(
            "UPDATE events SET status = 'succeeded', result = ?2, updated_ms = ?3, history = ?4 WHERE id = ?1",
            params![id, response.as_ref(), now, history],
        ),
        Finish::Retry { run_at_ms, failure } => tx.execute(
            "UPDATE events SET status = 'queued', next_run_ms = ?2, updated_ms = ?3, history = ?4,
             function_errors = function_errors + ?5, platform_failures = platform_failures + ?6,
             last_error_type = ?7, last_error = ?8 WHERE id = ?1",
            params![
                id,
                run_at_ms,
                now,
                history,
                i64::from(failure.is_function_error()),
                i64::from(!failure.is_function_error()),
                err_type,
                err
            ],
        ),
        Finish::Failed { reason, dead_letter } => tx.execute(
            "UPDATE events SET status = ?2, reason = ?3, updated_ms = ?4, history = ?5, last_error_type = ?6, last_error = ?7
             WHERE id = ?1",
            params![
                id,
                status_column(if *dead_letter { EventStatus::DeadLettered } else { EventStatus::Failed }),
                reason,
                now,
                history,
                err_type,
                err
            ],
        ),
    }?;
    Ok(())
}

/// How the `status` column spells a status: dead-lettered events have always been stored as
/// `dead`, every other status as on the wire.
fn status_column(status: EventStatus) -> &'static str {
    match status {
        EventStatus::DeadLettered => "dead",
        other => other.as_str(),
    }
}

fn status_from_column(column: &str) -> Option<EventStatus> {
    match column {
        "dead" => Some(EventStatus::DeadLettered),
        "dead-lettered" => None,
        other => EventStatus::parse(other),
    }
}

/// Column `idx` read through `parse`. A value this version does not know (written by a newer
/// nimbus, or damaged) is an error naming it, never a panic or a silent default.
fn parsed<T>(r: &rusqlite::Row<'_>, idx: usize, what: &str, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = r.get(idx)?;
    parse(&text).ok_or_else(|| unreadable(idx, format!("unknown {what} {text:?} in the queue database")))
}

fn unreadable(idx: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, message.into())
}

const VIEW_COLUMNS: &str = "id, function, qualifier, source, status, attempts, accepted_ms, updated_ms, next_run_ms,
    last_error_type, last_error, reason, payload, result, history";

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventView> {
    let status = parsed(r, 4, "event status", status_from_column)?;
    let json = |b: Option<Vec<u8>>| {
        b.map(|b| {
            serde_json::from_slice(&b)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&b).into_owned()))
        })
    };
    Ok(EventView {
        request_id: r.get(0)?,
        function: r.get(1)?,
        qualifier: r.get(2)?,
        source: parsed(r, 3, "event source", EventSource::parse)?,
        next_run_ms: (status == EventStatus::Queued).then(|| r.get(8)).transpose()?,
        status,
        attempts: r.get(5)?,
        accepted_ms: r.get(6)?,
        updated_ms: r.get(7)?,
        last_error_type: r.get(9)?,
        last_error: r.get(10)?,
        reason: r.get(11)?,
        payload: json(r.get(12)?).unwrap_or_default(),
        result: json(r.get(13)?),
        history: serde_json::from_str(&r.get::<_, String>(14)?)
            .map_err(|e| unreadable(14, format!("unreadable attempt history in the queue database: {e}")))?,
    })
}

#[async_trait]
impl QueueStore for QueueDb {
    async fn accept(&self, event: NewEvent, window_ms: u64) -> Result<Accepted, QueueError> {
        self.call(|r| Op::Accept(event, window_ms, r)).await
    }

    async fn claim(
        &self,
        now_ms: u64,
        limit: u32,
        shares: &std::collections::HashMap<String, u32>,
        default_share: u32,
    ) -> Result<Vec<ClaimedEvent>, QueueError> {
        let shares = shares.clone();
        self.call(|r| Op::Claim(now_ms, limit, shares, default_share, r)).await
    }

    async fn release(&self, id: &str, run_at_ms: u64) -> Result<(), QueueError> {
        let id = id.to_owned();
        self.call(|r| Op::Release(id, run_at_ms, r)).await
    }

    async fn finish(&self, id: &str, attempt: AttemptRecord, finish: Finish, now_ms: u64) -> Result<(), QueueError> {
        let id = id.to_owned();
        self.call(|r| Op::Finish(id, attempt, finish, now_ms, r)).await
    }

    async fn next_due(&self) -> Result<Option<u64>, QueueError> {
        self.read(|c| c.query_row("SELECT min(next_run_ms) FROM events WHERE status = 'queued'", [], |r| r.get(0)))
    }

    async fn recover(&self) -> Result<u64, QueueError> {
        self.call(Op::Recover).await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM events WHERE status IN ('queued', 'running')", [], |r| r.get(0))
        })
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT function, sum(status = 'queued'), sum(status = 'running'), sum(status = 'dead'),
                        min(CASE WHEN status = 'queued' THEN accepted_ms END)
                 FROM events WHERE status IN ('queued', 'running', 'dead') GROUP BY function ORDER BY function",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(QueueStats {
                    function: r.get(0)?,
                    queued: r.get(1)?,
                    running: r.get(2)?,
                    dead_lettered: r.get(3)?,
                    oldest_queued_ms: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    async fn get(&self, id: &str) -> Result<Option<EventView>, QueueError> {
        self.read(|c| c.query_row(&format!("SELECT {VIEW_COLUMNS} FROM events WHERE id = ?1"), [id], view).optional())
    }

    async fn list(
        &self,
        status: Option<EventStatus>,
        function: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventView>, QueueError> {
        let status = status.map(status_column);
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VIEW_COLUMNS} FROM events WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR function = ?2)
                 ORDER BY accepted_ms DESC, id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![status, function, limit.max(1)], view)?.collect();
            rows
        })
    }

    async fn redrive(&self, ids: &[String], function: Option<&str>, now_ms: u64) -> Result<u64, QueueError> {
        let (ids, function) = (ids.to_vec(), function.map(str::to_owned));
        self.call(|r| Op::Redrive(ids, function, now_ms, r)).await
    }

    async fn purge(&self, function: Option<&str>) -> Result<u64, QueueError> {
        let function = function.map(str::to_owned);
        self.call(|r| Op::Purge(function, r)).await
    }

    async fn fire_slot(&self, schedule_key: &str, slot_ms: u64, event: NewEvent) -> Result<bool, QueueError> {
        let key = schedule_key.to_owned();
        self.call(|r| Op::Fire(key, slot_ms, event, r)).await
    }

    async fn last_slot(&self, schedule_key: &str) -> Result<Option<u64>, QueueError> {
        self.read(|c| {
            c.query_row("SELECT last_slot_ms FROM schedule_state WHERE key = ?1", [schedule_key], |r| r.get(0))
                .optional()
        })
    }

    async fn skip_to(&self, schedule_key: &str, slot_ms: u64) -> Result<(), QueueError> {
        let key = schedule_key.to_owned();
        self.call(|r| Op::Skip(key, slot_ms, r)).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use nimbus_core::policy::AttemptFailure;
    use nimbus_core::queue::AttemptOutcome;

    use super::*;

    fn event(id: &str, source: EventSource) -> NewEvent {
        NewEvent {
            id: id.to_owned(),
            function: "f".to_owned(),
            qualifier: None,
            payload: Bytes::from_static(br#"{"n":1}"#),
            source,
            idempotency_key: None,
            now_ms: 1_000,
            run_at_ms: 1_000,
        }
    }

    fn attempt(outcome: AttemptOutcome) -> AttemptRecord {
        let error = (outcome != AttemptOutcome::Success).then(|| "E".to_owned());
        AttemptRecord {
            n: 1,
            started_ms: 1_000,
            duration_ms: 2.0,
            outcome,
            error_type: error.clone(),
            error_message: error,
        }
    }

    async fn ids(q: &QueueDb, status: EventStatus) -> Vec<String> {
        let mut ids: Vec<String> =
            q.list(Some(status), None, 100).await.unwrap().into_iter().map(|v| v.request_id).collect();
        ids.sort();
        ids
    }

    /// Every source, status and attempt outcome written through the store reads back the same,
    /// from the columns and JSON that older versions wrote, so existing queue.db files keep working.
    #[tokio::test]
    async fn events_round_trip_through_queue_db() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let q = QueueDb::open(&path, false).unwrap();
        let sources = [
            ("a", EventSource::Invoke),
            ("b", EventSource::Http),
            ("c", EventSource::Schedule),
            ("d", EventSource::Destination),
            ("e", EventSource::Invoke),
            ("f", EventSource::Http),
        ];
        for (id, source) in sources {
            q.accept(event(id, source), 60_000).await.unwrap();
        }
        let claimed = q.claim(1_000, 10, &HashMap::new(), 64).await.unwrap();
        let got: Vec<(&str, EventSource)> = claimed.iter().map(|c| (c.id.as_str(), c.source)).collect();
        assert_eq!(got, sources);

        let retry = |failure| Finish::Retry { run_at_ms: 5_000, failure };
        let outcomes = [
            ("a", AttemptOutcome::Success),
            ("b", AttemptOutcome::FunctionError),
            ("c", AttemptOutcome::Throttled),
            ("d", AttemptOutcome::PlatformError),
            ("e", AttemptOutcome::NotFound),
        ];
        let finishes = [
            Finish::Succeeded { response: Bytes::from_static(b"{\"ok\":true}") },
            retry(AttemptFailure::Function),
            retry(AttemptFailure::Throttled),
            Finish::Failed { reason: "old".into(), dead_letter: true },
            Finish::Failed { reason: "gone".into(), dead_letter: false },
        ];
        for ((id, outcome), finish) in outcomes.into_iter().zip(finishes) {
            q.finish(id, attempt(outcome), finish, 2_000).await.unwrap();
        }
        // "f" stays claimed: running.
        q.close();

        let q = QueueDb::open(&path, false).unwrap();
        assert_eq!(ids(&q, EventStatus::Succeeded).await, ["a"]);
        assert_eq!(ids(&q, EventStatus::Queued).await, ["b", "c"]);
        assert_eq!(ids(&q, EventStatus::DeadLettered).await, ["d"]);
        assert_eq!(ids(&q, EventStatus::Failed).await, ["e"]);
        assert_eq!(ids(&q, EventStatus::Running).await, ["f"]);
        for (id, outcome) in outcomes {
            let view = q.get(id).await.unwrap().unwrap();
            let outcomes: Vec<AttemptOutcome> = view.history.iter().map(|h| h.outcome).collect();
            assert_eq!(outcomes, [outcome], "{id}");
        }
        let d = q.get("d").await.unwrap().unwrap();
        assert_eq!((d.source, d.status), (EventSource::Destination, EventStatus::DeadLettered));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["status"], "dead-lettered");
        assert_eq!(json["source"], "destination");
        assert_eq!(json["history"][0]["outcome"], "platform_error");

        // The retry's failure kind decides which counter grew.
        let again = q.claim(5_000, 10, &HashMap::new(), 64).await.unwrap();
        let counts: Vec<(&str, u32, u32)> =
            again.iter().map(|c| (c.id.as_str(), c.function_errors, c.platform_failures)).collect();
        assert_eq!(counts, [("b", 1, 0), ("c", 0, 1)]);
        q.close();

        // The spellings on disk are the ones earlier versions wrote and read.
        let raw = Connection::open(&path).unwrap();
        let row = |id: &str| -> (String, String, String) {
            raw.query_row("SELECT source, status, history FROM events WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
        };
        let (source, status, history) = row("d");
        assert_eq!((source.as_str(), status.as_str()), ("destination", "dead"));
        assert!(history.contains(r#""outcome":"platform_error""#), "{history}");
        assert_eq!(row("e").1, "failed");
        assert!(row("b").2.contains(r#""outcome":"function_error""#));
    }

    /// Rows as an earlier nimbus wrote them (the timestamps of a 0.1 data dir, attempt history
    /// JSON with `startedMs`, a schedule's last slot) read, claim, dedupe, finish and redrive
    /// through the store unchanged: the column values are the contract, not the Rust types.
    #[tokio::test]
    async fn rows_written_by_earlier_versions_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(SCHEMA).unwrap();
        raw.execute_batch(
            r#"INSERT INTO events(id, function, qualifier, payload, source, status, attempts, function_errors,
                   platform_failures, accepted_ms, updated_ms, next_run_ms, idempotency_key, last_error_type,
                   last_error, reason, result, history)
               VALUES ('retry', 'f', NULL, X'7B7D', 'http', 'queued', 1, 1, 0, 1796007244567, 1796007244834,
                   1796007304834, 'order-7', 'ValueError', 'asked to fail', NULL, NULL,
                   '[{"durationMs":184.0,"errorMessage":"asked to fail","errorType":"ValueError","n":1,"outcome":"function_error","startedMs":1796007244583}]'),
                      ('dead', 'g', NULL, X'7B7D', 'invoke', 'dead', 1, 1, 0, 1796007244658, 1796007244858,
                   1796007244658, NULL, 'ValueError', 'asked to fail', 'failed 1 time(s)', NULL,
                   '[{"durationMs":184.0,"errorMessage":"asked to fail","errorType":"ValueError","n":1,"outcome":"function_error","startedMs":1796007244674}]');
               INSERT INTO schedule_state(key, last_slot_ms) VALUES ('g@rate(3600000ms)@UTC', 1796007243884);"#,
        )
        .unwrap();
        drop(raw);
        let q = QueueDb::open(&path, false).unwrap();

        let retry = q.get("retry").await.unwrap().unwrap();
        assert_eq!(
            (retry.accepted_ms, retry.updated_ms, retry.next_run_ms),
            (1796007244567, 1796007244834, Some(1796007304834))
        );
        assert_eq!((retry.history[0].n, retry.history[0].started_ms), (1, 1796007244583));
        assert_eq!(retry.history[0].outcome, AttemptOutcome::FunctionError);
        let dead = q.get("dead").await.unwrap().unwrap();
        assert_eq!(
            (dead.status, dead.next_run_ms, dead.history[0].started_ms),
            (EventStatus::DeadLettered, None, 1796007244674)
        );
        let stats = q.stats().await.unwrap();
        assert_eq!(
            stats
                .iter()
                .map(|s| (s.function.as_str(), s.queued, s.dead_lettered, s.oldest_queued_ms))
                .collect::<Vec<_>>(),
            [("f", 1, 0, Some(1796007244567)), ("g", 0, 1, None)]
        );
        assert_eq!(q.next_due().await.unwrap(), Some(1796007304834));
        assert_eq!(q.last_slot("g@rate(3600000ms)@UTC").await.unwrap(), Some(1796007243884));

        // The old row's idempotency key dedupes within its window (accepted_ms + 60 s).
        let again = |id: &str, at| NewEvent {
            idempotency_key: Some("order-7".into()),
            now_ms: at,
            run_at_ms: at,
            ..event(id, EventSource::Http)
        };
        let dup = Accepted { id: "retry".into(), duplicate: true };
        assert_eq!(q.accept(again("early", 1796007304566), 60_000).await.unwrap(), dup);

        // Not due a millisecond early; due on time, with its counters.
        assert!(q.claim(1796007304833, 10, &HashMap::new(), 64).await.unwrap().is_empty());
        let claimed = q.claim(1796007304834, 10, &HashMap::new(), 64).await.unwrap();
        let got: Vec<_> =
            claimed.iter().map(|c| (c.id.as_str(), c.accepted_ms, c.attempts, c.function_errors)).collect();
        assert_eq!(got, [("retry", 1796007244567, 2, 1)]);
        let second = AttemptRecord { n: 2, started_ms: 1796007304840, ..attempt(AttemptOutcome::Success) };
        q.finish("retry", second, Finish::Succeeded { response: Bytes::from_static(b"null") }, 1796007304900)
            .await
            .unwrap();
        let history = q.get("retry").await.unwrap().unwrap().history;
        assert_eq!(
            history.iter().map(|a| (a.n, a.started_ms)).collect::<Vec<_>>(),
            [(1, 1796007244583), (2, 1796007304840)]
        );

        assert_eq!(q.redrive(&[], None, 1796007400000).await.unwrap(), 1);
        let redriven = q.get("dead").await.unwrap().unwrap();
        assert_eq!(
            (redriven.status, redriven.accepted_ms, redriven.next_run_ms),
            (EventStatus::Queued, 1796007400000, Some(1796007400000))
        );
        // Once the window has passed, the same key is a new event.
        let fresh = Accepted { id: "late".into(), duplicate: false };
        assert_eq!(q.accept(again("late", 1796007304567), 60_000).await.unwrap(), fresh);
        q.close();
    }

    #[tokio::test]
    async fn unknown_strings_in_queue_db_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let q = QueueDb::open(&path, false).unwrap();
        q.accept(event("x", EventSource::Invoke), 60_000).await.unwrap();
        let raw = open_connection(&path).unwrap();
        let set = |sql: &str| raw.execute(sql, []).unwrap();
        fn error_of<T>(r: Result<T, QueueError>) -> String {
            r.err().expect("an error").to_string()
        }

        set("UPDATE events SET source = 'carrier-pigeon'");
        assert!(error_of(q.get("x").await).contains("carrier-pigeon"));
        assert!(error_of(q.claim(1_000, 10, &HashMap::new(), 64).await).contains("carrier-pigeon"));

        set("UPDATE events SET source = 'invoke', status = 'exploded'");
        assert!(error_of(q.get("x").await).contains("exploded"));
        assert!(error_of(q.list(None, None, 10).await).contains("exploded"));

        set(r#"UPDATE events SET status = 'queued',
               history = '[{"n":1,"startedMs":0,"durationMs":0.0,"outcome":"bogus","errorType":null,"errorMessage":null}]'"#);
        assert!(error_of(q.get("x").await).contains("bogus"));
        q.close();
    }
}
