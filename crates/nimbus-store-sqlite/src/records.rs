//! Invocation records and logs: written in batches by a background thread, read by the
//! management API.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nimbus_core::history::{InvocationQuery, LogEntry, LogQuery, UsageRow};
use nimbus_core::shards::Shards;
use nimbus_core::{InstanceBusy, InvocationRecord, InvocationStatus, Recorder, Trigger};
use rusqlite::{params, Connection};

use crate::queued::{Queue, Taken, View};
use crate::record_batches::RowBuffers;
use crate::{open_connection, Result};

/// Records waiting for the writer, at least; beyond this the request path drops records
/// (counted) rather than block or grow without bound. Split over the per-thread queues, each of
/// which holds at least [`MIN_PER_THREAD`].
const QUEUE: usize = 65_536;
const MIN_PER_THREAD: usize = 8_192;
const BATCH: usize = 1_000;
/// How long the writer gathers records before committing them in one transaction. One commit
/// per invocation cost a quarter of nimbus's CPU at 2,600 invocations/s (perf); records become
/// visible within this window. A commit rewrites the pages every insert touches (the table's
/// and its indexes' last leaves, the usage row, the id sequence) in the WAL and again at the
/// checkpoint: 50 ms rather than 20 took a fifth off the writer thread's CPU per record at
/// ~30k warm requests/s (BENCHMARKS.md). [`QUEUE`] records are enough for a window at 1.3
/// million invocations/s.
const WINDOW: Duration = Duration::from_millis(50);
/// A queue grown past this by a burst is shrunk back once taken.
const KEPT_CAPACITY: usize = 8 * BATCH;

/// The `Recorder` backed by SQLite. Dropping the last clone flushes and stops the thread.
pub struct RecordWriter {
    pending: Arc<Pending>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
    busy: Arc<BusyTime>,
}

/// Records handed from the request path to the writer: each thread pushes onto a vector of its
/// own ([`Shards`]); the writer takes them all once per window, so memory follows the records
/// actually waiting. One vector behind one mutex had every tokio worker wait for its cache line
/// on every request (`perf`: its unlock was most of the push). A bounded channel of [`QUEUE`]
/// records did the same, and std's array channel initialises every slot up front: 21 MB resident
/// from the start (see ARCHITECTURE.md, "Invocation records").
struct Pending {
    queues: Shards<Queue>,
    /// Records one thread's queue holds at most.
    per_thread: usize,
    /// The writer waits on `ready` for a first record; a sender notifies only when it is set.
    parked: AtomicBool,
    /// Set under `state` and read by senders under their queue's lock: after `close` returns, no
    /// record is added, so the writer's last look at the queues sees everything queued before.
    closed: AtomicBool,
    /// Held by the writer from announcing `parked` until it waits, so a notify is not missed.
    state: Mutex<()>,
    ready: Condvar,
}

/// A window's records in the order they were queued across threads (each thread's queue keeps
/// its own order): the order one shared queue kept, and logs are read back in write order.
/// References are sorted, not the records: moving a window's records through a merge sort cost
/// more than recording saved.
fn in_queued_order(taken: &[Taken]) -> Vec<View<'_>> {
    let mut views: Vec<View<'_>> = taken.iter().flat_map(Taken::views).collect();
    // Stable: records queued at the same instant by one thread keep their order.
    views.sort_by_key(View::at);
    views
}

/// What [`Pending::wait`] saw.
#[derive(Debug, PartialEq)]
enum Waited {
    Records,
    TimedOut,
    /// Closed with nothing left: the writer stops.
    Closed,
}

impl Default for Pending {
    fn default() -> Self {
        let queues = Shards::<Queue>::default();
        let per_thread = (QUEUE / queues.len().max(1)).max(MIN_PER_THREAD);
        Pending {
            queues,
            per_thread,
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            state: Mutex::new(()),
            ready: Condvar::new(),
        }
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `record`; `false` when this thread's queue is full and it was dropped. After `close`
    /// records are ignored: the writer has stopped, with everything queued before written.
    fn push(&self, record: InvocationRecord) -> bool {
        let now = Instant::now();
        let queued = self.queues.with(|q| {
            if self.closed.load(Ordering::Acquire) {
                return true;
            }
            if q.len() >= self.per_thread {
                return false;
            }
            q.push(now, record);
            true
        });
        // The writer announces `parked` before its last look at the queues: either it saw this
        // record there, or this sees `parked` (the queue's lock orders the two).
        // A plain load first: the flag's cache line stays shared while the writer is busy.
        if self.parked.load(Ordering::Acquire) && self.parked.swap(false, Ordering::AcqRel) {
            let _writer_waits = self.lock();
            self.ready.notify_one();
        }
        queued.unwrap_or(false)
    }

    fn is_empty(&self) -> bool {
        let mut empty = true;
        self.queues.each(|q| empty &= q.is_empty());
        empty
    }

    /// Wait up to `timeout` for a record.
    fn wait(&self, timeout: Duration) -> Waited {
        let s = self.lock();
        let closed = || self.closed.load(Ordering::Acquire);
        if !closed() {
            self.parked.store(true, Ordering::Release);
            if self.is_empty() {
                drop(self.ready.wait_timeout(s, timeout).unwrap_or_else(|e| e.into_inner()));
            }
            self.parked.store(false, Ordering::Release);
        }
        match (self.is_empty(), closed()) {
            (false, _) => Waited::Records,
            (true, false) => Waited::TimedOut,
            (true, true) => Waited::Closed,
        }
    }

    /// Everything queued, thread by thread (each queue keeps its capacity for its thread, up to
    /// [`KEPT_CAPACITY`]); [`in_queued_order`] orders them.
    fn take(&self, taken: &mut Vec<Taken>) {
        self.queues.each(|q| taken.push(q.take(KEPT_CAPACITY)));
    }

    fn close(&self) {
        let _s = self.lock();
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

/// Instance busy time (MB × ms) per function and hour, summed in memory until the writer adds
/// it to the hour's usage with its next batch (a busy period ends before the records of its
/// invocations are sent, so it is written with them at the latest).
#[derive(Default)]
struct BusyTime(Mutex<std::collections::BTreeMap<(String, u64), u64>>);

impl BusyTime {
    fn add(&self, b: InstanceBusy) {
        let ms = u64::try_from(b.busy.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        let mut sums = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *sums.entry((b.function, b.end_ms - b.end_ms % HOUR_MS)).or_default() += ms * u64::from(b.memory_mb);
    }

    fn take(&self) -> std::collections::BTreeMap<(String, u64), u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl RecordWriter {
    pub(crate) fn start(db: &Path, retention: Duration) -> Result<RecordWriter> {
        let conn = open_connection(db)?;
        // Records are history, not acknowledged work: NORMAL is durable across process crashes
        // and only risks the last transactions on power loss.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let pending = Arc::new(Pending::default());
        let busy = Arc::new(BusyTime::default());
        let (from, sums) = (pending.clone(), busy.clone());
        let thread = std::thread::Builder::new()
            .name("nimbus-records".into())
            .spawn(move || write_loop(conn, &from, retention, &sums))?;
        Ok(RecordWriter { pending, thread: Mutex::new(Some(thread)), dropped: Arc::new(AtomicU64::new(0)), busy })
    }

    /// Records dropped because the writer fell behind (a live counter).
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Write everything queued and stop the writer.
    pub fn close(&self) {
        self.pending.close();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Dropping the writer lets its thread write what is queued and stop, as `close` does, without
/// waiting for it.
impl Drop for RecordWriter {
    fn drop(&mut self) {
        self.pending.close();
    }
}

impl Recorder for RecordWriter {
    fn record(&self, record: InvocationRecord) {
        if !self.pending.push(record) && self.dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
            tracing::warn!("invocation record writer is behind; dropping records");
        }
    }

    fn instance_busy(&self, busy: InstanceBusy) {
        self.busy.add(busy);
    }
}

/// Add the busy time summed since the last call to the hourly usage.
fn write_busy(conn: &Connection, busy: &BusyTime) {
    let sums = busy.take();
    if sums.is_empty() {
        return;
    }
    let written = (|| -> rusqlite::Result<()> {
        let mut up = conn.prepare_cached(
            "INSERT INTO usage(function, hour_ms, requests, mb_ms, instance_mb_ms) VALUES (?1, ?2, 0, 0, ?3)
             ON CONFLICT(function, hour_ms) DO UPDATE SET instance_mb_ms = instance_mb_ms + excluded.instance_mb_ms",
        )?;
        for ((function, hour), mb_ms) in &sums {
            up.execute(params![function, hour, mb_ms])?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        tracing::error!("cannot write the instances' busy time: {e}");
    }
}

/// Hourly usage outlives the records it sums: it is what `nimbus usage` reads.
pub const USAGE_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);
const HOUR_MS: u64 = 3_600_000;

fn write_loop(mut conn: Connection, pending: &Pending, retention: Duration, busy: &BusyTime) {
    // Prune at start, then every minute (more often for short retentions, so they hold).
    let every = (retention / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
    let mut pruned = Instant::now();
    prune(&conn, retention);
    let (mut taken, mut rows) = (Vec::new(), RowBuffers::default());
    loop {
        let waited = pending.wait(every.saturating_sub(pruned.elapsed()));
        if waited == Waited::Closed {
            return write_busy(&conn, busy);
        }
        if pruned.elapsed() >= every {
            prune(&conn, retention);
            pruned = Instant::now();
        }
        if waited == Waited::TimedOut {
            write_busy(&conn, busy);
            continue;
        }
        // Sleep through the window instead of waiting for each record: a sender only pays for a
        // wake-up (a futex call) when the writer is parked, so this is one wake-up per batch
        // rather than one per record.
        std::thread::sleep(WINDOW);
        pending.take(&mut taken);
        for chunk in in_queued_order(&taken).chunks(BATCH) {
            if let Err(e) = write_batch(&mut conn, chunk, &mut rows) {
                tracing::error!("cannot write {} invocation records: {e}", chunk.len());
            }
        }
        taken.clear();
        write_busy(&conn, busy);
    }
}

/// Rows one pruning step looks at, from the oldest.
const PRUNE_WINDOW: u32 = 10_000;

/// Delete records, logs and audit entries older than `retention`, and usage older than
/// [`USAGE_RETENTION`].
///
/// Rows are appended as invocations finish, so the oldest are at the front in rowid order: each
/// step looks at the first `PRUNE_WINDOW` rows only and deletes those past retention, until a
/// step deletes nothing. No index on the time columns is needed (they cost the writer a
/// measurable share of its CPU per invocation), and a prune never scans the whole table.
fn prune(conn: &Connection, retention: Duration) {
    let now = nimbus_core::ids::now_ms();
    let cutoff = now.saturating_sub(retention.as_millis() as u64);
    let usage_cutoff = now.saturating_sub(USAGE_RETENTION.as_millis() as u64);
    let step = |table: &str, time: &str| -> rusqlite::Result<usize> {
        conn.execute(
            &format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM
                   (SELECT rowid, {time} AS t FROM {table} ORDER BY rowid LIMIT {PRUNE_WINDOW}) WHERE t < ?1)"
            ),
            [cutoff],
        )
    };
    let mut r = Ok(());
    // The audit log is kept as long as the records: it is history of the same kind, and one
    // retention setting is easier to reason about than two.
    for (table, time) in
        [("record_batches", "max_start_ms"), ("invocations", "start_ms"), ("logs", "ts_ms"), ("audit", "ts_ms")]
    {
        // Bounded: at most 100 windows (a million rows) per prune; the rest waits for the next.
        for _ in 0..100 {
            match step(table, time) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
    }
    let r = r.and_then(|()| conn.execute("DELETE FROM usage WHERE hour_ms < ?1", [usage_cutoff]).map(drop));
    let r = r.and_then(|()| crate::storage_usage::prune(conn, usage_cutoff).map(drop));
    if let Err(e) = r {
        tracing::error!("cannot delete invocation records or audit entries older than the retention: {e}");
    }
}

/// Write `batch` in one transaction, encoding its rows in `rows` (kept across batches).
fn write_batch(conn: &mut Connection, batch: &[View<'_>], rows: &mut RowBuffers) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut usage = tx.prepare_cached(
            "INSERT INTO usage(function, hour_ms, requests, mb_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(function, hour_ms) DO UPDATE SET requests = requests + excluded.requests,
             mb_ms = mb_ms + excluded.mb_ms",
        )?;
        let mut hours: std::collections::BTreeMap<(&str, u64), (u64, u64)> = std::collections::BTreeMap::new();
        crate::record_batches::write(&tx, batch, rows)?;
        for r in batch {
            if r.status().reached_function() {
                let h = hours.entry((r.function(), r.start_ms() - r.start_ms() % HOUR_MS)).or_default();
                h.0 += 1;
                h.1 += r.billed_ms() * u64::from(r.memory_mb());
            }
        }
        for ((function, hour), (requests, mb_ms)) in hours {
            usage.execute(params![function, hour, requests, mb_ms])?;
        }
    }
    tx.commit()
}

/// Invocation records, newest first: the batch rows, and the one-row-per-record table older
/// releases wrote (until retention empties it).
pub(crate) fn query_invocations(conn: &Connection, q: &InvocationQuery) -> Result<Vec<InvocationRecord>> {
    let new = crate::record_batches::query_invocations(conn, q)?;
    let old = legacy_invocations(conn, q)?;
    Ok(crate::record_batches::merge_newest(old, new, q.limit))
}

/// Rows of the older `invocations` table, newest first. A trigger or status this release does
/// not know (a newer nimbus wrote it) is an error naming it, not a guess.
fn legacy_invocations(conn: &Connection, q: &InvocationQuery) -> Result<Vec<InvocationRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT request_id, function, version, trigger, start_ms, duration_ms, billed_ms, memory_mb, max_memory_mb, cold,
                init_ms, queue_ms, status, error_type, error_message, instance_id, instance_start_ms, runtime_init_ms,
                response_ms
         FROM invocations
         WHERE (?1 IS NULL OR function = ?1) AND (?2 IS NULL OR request_id = ?2)
         ORDER BY start_ms DESC, rowid DESC LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![q.function, q.request_id, q.limit.max(1)], |r| {
            Ok(InvocationRecord {
                request_id: r.get(0)?,
                function: r.get(1)?,
                version: r.get(2)?,
                trigger: parsed(r, 3, Trigger::parse)?,
                start_ms: r.get(4)?,
                duration_ms: r.get(5)?,
                billed_ms: r.get(6)?,
                memory_mb: r.get(7)?,
                max_memory_mb: r.get(8)?,
                cold: r.get(9)?,
                init_ms: r.get(10)?,
                queue_ms: r.get(11)?,
                status: parsed(r, 12, InvocationStatus::parse)?,
                error_type: r.get(13)?,
                error_message: r.get(14)?,
                instance_id: r.get(15)?,
                instance_start_ms: r.get(16)?,
                runtime_init_ms: r.get(17)?,
                log: String::new(),
                response_ms: r.get(18)?,
                log_frame: None,
            })
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Column `i` as text, parsed by `parse`; an unknown value is a conversion error naming it.
fn parsed<T>(r: &rusqlite::Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {text:?} (written by a newer nimbus?)").into(),
        )
    })
}

pub(crate) fn query_usage(conn: &Connection, since_ms: u64) -> Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare(
        "SELECT function, hour_ms, requests, mb_ms, instance_mb_ms FROM usage WHERE hour_ms >= ?1
         ORDER BY hour_ms, function",
    )?;
    let rows = stmt
        .query_map([since_ms - since_ms % HOUR_MS], |r| {
            Ok(UsageRow {
                function: r.get(0)?,
                hour_ms: r.get(1)?,
                requests: r.get(2)?,
                mb_ms: r.get(3)?,
                instance_mb_ms: r.get(4)?,
            })
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Log entries in sequence order: the older `logs` table's first (their sequence numbers are all
/// below the batch rows'), then the batch rows'.
pub(crate) fn query_logs(conn: &Connection, q: &LogQuery) -> Result<Vec<LogEntry>> {
    let mut out = if q.after < crate::record_batches::LOG_SEQ_BASE { legacy_logs(conn, q)? } else { Vec::new() };
    let left = (q.limit.max(1) as usize).saturating_sub(out.len());
    out.extend(crate::record_batches::query_logs(conn, q, left)?);
    Ok(out)
}

fn legacy_logs(conn: &Connection, q: &LogQuery) -> Result<Vec<LogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, request_id, ts_ms, text FROM logs
         WHERE function = ?1 AND seq > ?2 AND (?3 IS NULL OR request_id = ?3)
         ORDER BY seq LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(params![q.function, q.after, q.request_id, q.limit.max(1)], |r| {
            Ok(LogEntry { seq: r.get(0)?, request_id: r.get(1)?, ts_ms: r.get(2)?, text: r.get(3)? })
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nimbus_core::history::InvocationQuery;
    use nimbus_core::Recorder;

    use super::{Pending, Waited, MIN_PER_THREAD, QUEUE};
    use crate::record_batches::tests::rec;
    use crate::Store;

    #[test]
    fn a_full_queue_drops_records_until_the_writer_takes_them() {
        let pending = Pending::default();
        assert!(pending.per_thread >= MIN_PER_THREAD && pending.per_thread * pending.queues.len() >= QUEUE);
        for i in 0..pending.per_thread {
            assert!(pending.push(rec("f", &i.to_string(), 1)), "record {i} fits");
        }
        assert!(!pending.push(rec("f", "one too many", 1)), "this thread's queue is full");
        let mut batch = Vec::new();
        pending.take(&mut batch);
        assert_eq!(super::in_queued_order(&batch).len(), pending.per_thread);
        assert!(pending.push(rec("f", "after", 1)), "taking them made room");
        assert_eq!(pending.wait(Duration::ZERO), Waited::Records, "a record waits");
        pending.close();
        assert!(pending.push(rec("f", "closed", 1)), "after close a record is ignored, not counted as dropped");
        let mut rest = Vec::new();
        pending.take(&mut rest);
        assert_eq!(super::in_queued_order(&rest).iter().map(|r| r.request_id()).collect::<Vec<_>>(), ["after"]);
        assert_eq!(pending.wait(Duration::ZERO), Waited::Closed, "closed and empty: the writer stops");
    }

    #[test]
    fn a_record_from_another_thread_wakes_the_parked_writer() {
        let pending = std::sync::Arc::new(Pending::default());
        let sender = {
            let p = pending.clone();
            std::thread::spawn(move || {
                while !p.parked.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::yield_now();
                }
                p.push(rec("f", "r1", 1))
            })
        };
        // Without the notify this would time out (a minute) and say TimedOut.
        assert_eq!(pending.wait(Duration::from_secs(60)), Waited::Records);
        assert!(sender.join().unwrap());
    }

    #[test]
    fn records_from_every_thread_are_taken() {
        let pending = std::sync::Arc::new(Pending::default());
        std::thread::scope(|s| {
            for t in 0..4 {
                let p = pending.clone();
                s.spawn(move || (0..1000).all(|i| p.push(rec("f", &format!("{t}-{i}"), 1))));
            }
        });
        let mut batch = Vec::new();
        pending.take(&mut batch);
        let mut ids: Vec<&str> = super::in_queued_order(&batch).iter().map(|r| r.request_id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4000);
        assert_eq!(pending.wait(Duration::ZERO), Waited::TimedOut, "nothing left");
    }

    #[test]
    fn a_window_is_taken_in_the_order_records_were_queued_across_threads() {
        let pending = std::sync::Arc::new(Pending::default());
        let (to_b, b_gets) = std::sync::mpsc::channel::<()>();
        let (to_a, a_gets) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let p = pending.clone();
            s.spawn(move || {
                assert!(p.push(rec("f", "1", 1)));
                to_b.send(()).unwrap();
                a_gets.recv().unwrap();
                assert!(p.push(rec("f", "3", 1)));
            });
            let p = pending.clone();
            s.spawn(move || {
                b_gets.recv().unwrap();
                assert!(p.push(rec("f", "2", 1)));
                to_a.send(()).unwrap();
            });
        });
        let mut batch = Vec::new();
        pending.take(&mut batch);
        // The two threads have shards of their own: taken shard by shard this is 1 3 2 or 2 1 3.
        let ids: Vec<&str> = super::in_queued_order(&batch).iter().map(|r| r.request_id()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
    }

    #[test]
    fn dropping_the_writer_writes_what_is_queued_and_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let writer = s.record_writer(Duration::from_secs(3600)).unwrap();
        let thread = writer.thread.lock().unwrap().take().unwrap();
        writer.record(rec("f", "r1", nimbus_core::ids::now_ms()));
        drop(writer);
        // Joined on a helper thread, so a writer that never stops fails the test, not hangs it.
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(thread.join().is_ok()));
        assert_eq!(stopped.recv_timeout(Duration::from_secs(30)), Ok(true), "the writer thread stopped");
        let q = InvocationQuery { function: Some("f".into()), request_id: None, limit: 10 };
        assert_eq!(super::query_invocations(&s.conn(), &q).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn every_record_queued_before_close_is_written_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let writer = s.record_writer(Duration::from_secs(3600)).unwrap();
        let now = nimbus_core::ids::now_ms();
        // More than two transactions' worth, queued faster than one window.
        for i in 0..2_500 {
            writer.record(rec("f", &format!("r{i}"), now));
        }
        writer.close();
        assert_eq!(writer.dropped().load(std::sync::atomic::Ordering::Relaxed), 0);
        let q = InvocationQuery { function: Some("f".into()), request_id: None, limit: 10_000 };
        let written = super::query_invocations(&s.conn(), &q).unwrap();
        assert_eq!(written.len(), 2_500);
        let usage = super::query_usage(&s.conn(), 0).unwrap();
        assert_eq!(usage.iter().map(|u| u.requests).sum::<u64>(), 2_500, "each record billed once");
    }
}
