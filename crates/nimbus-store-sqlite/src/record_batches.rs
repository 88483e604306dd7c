//! Invocation records and their logs stored as wide rows: per function per writer batch, rows
//! of about 32 KiB of records (each with its log; a row ends with the record that reaches it)
//! encoded together in one blob.
//!
//! One row per record and one per log, each with its indexes, cost the writer about 8 µs of CPU
//! per invocation: 12–21 % of peak throughput on two cores (`nimbus-bench observe`). A batch
//! row costs one insert for a couple of hundred warm records, so recording stays off the
//! request path's CPU budget. Reads decode the rows they need: by function (newest first,
//! stopping as soon as no older row can hold a newer record), by time range (statistics), by
//! log sequence.
//!
//! A row's records are binary, after a format byte: JSON, with every field name written out and
//! every string escaped, was 6k of the ~84k instructions a warm wasm request cost nimbus, and
//! three times the bytes of postcard (format 1). Format 2 ([`crate::queued::row`]) keeps ids
//! and durations in their compact forms, under half of format 1's bytes. Rows in JSON (their
//! first byte is `[`) and in format 1 still decode. Both binary formats write an enum variant
//! as its position: `Trigger` and `InvocationStatus` only ever get new variants at their end
//! (a test pins the positions).
//!
//! Rows of the older one-row-per-record tables (`invocations`, `logs`) are still read beside
//! these until retention deletes them; nothing new is written there.

use nimbus_core::history::{InvocationQuery, LogEntry, LogQuery};
use nimbus_core::InvocationRecord;
use rusqlite::{params, Connection, Transaction};

use crate::queued::row::Stored;
use crate::queued::View;
use crate::Result;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS record_batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    min_start_ms INTEGER NOT NULL,
    max_start_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS record_batches_by_function ON record_batches(function, max_start_ms);
CREATE INDEX IF NOT EXISTS record_batches_by_function_id ON record_batches(function, id);
CREATE INDEX IF NOT EXISTS record_batches_by_time ON record_batches(max_start_ms);
";

/// A log's sequence number is `LOG_SEQ_BASE + (batch id << IDX_BITS | index in the batch)`: it
/// grows with every entry written, and stays above every sequence number of the older `logs`
/// table, so a reader paging with `after` goes from the old rows to the new ones without a gap.
const IDX_BITS: u32 = 10;
pub(crate) const LOG_SEQ_BASE: u64 = 1 << 40;
/// The first byte of a row's `data` encoded with postcard (format 1, written until format 2,
/// [`crate::queued::row`], replaced it); JSON rows start with `[`.
const POSTCARD_V1: u8 = 1;

/// Records one row holds at most (the writer's batches are at most 1,000 records).
pub(crate) const MAX_ROW: usize = 1 << IDX_BITS;

fn log_seq(batch: i64, idx: usize) -> u64 {
    LOG_SEQ_BASE + ((batch.max(0) as u64) << IDX_BITS | idx as u64)
}

/// Encoded records a row stops at (or at [`MAX_ROW`] records). SQLite copies a row's blob into
/// buffers of its own while it inserts it, from glibc's malloc: at ~160 KB (a window of 1,000
/// warm records in one row) those came from fresh pages and went back with `madvise` every
/// window, page faults on the writer and a TLB shootdown on every core (`perf`: a tenth of the
/// writer thread). Below glibc's trim threshold (128 KiB) the same memory is used again.
const ROW_TARGET_BYTES: usize = 32 << 10;

/// The writer's buffers for encoding rows, kept across batches.
#[derive(Default)]
pub(crate) struct RowBuffers {
    records: Vec<u8>,
    row: Vec<u8>,
}

impl RowBuffers {
    /// Encode the first of `views` as one row into `self.row`: at least one record, at most
    /// [`MAX_ROW`], and none after the one that takes the row to [`ROW_TARGET_BYTES`]. Returns
    /// how many.
    fn encode_row(&mut self, views: &[View<'_>]) -> usize {
        self.records.clear();
        let (function, first_start) = views.first().map_or(("", 0), |v| (v.function(), v.start_ms()));
        let mut n = 0;
        for v in views.iter().take(MAX_ROW) {
            v.encode(first_start, &mut self.records);
            n += 1;
            if self.records.len() >= ROW_TARGET_BYTES {
                break;
            }
        }
        self.row.clear();
        View::encode_head(n, function, first_start, &mut self.row);
        self.row.extend_from_slice(&self.records);
        n
    }

    /// Give back what a row of long logs grew the buffers to.
    fn shrink(&mut self) {
        for b in [&mut self.records, &mut self.row] {
            b.clear();
            b.shrink_to(2 * ROW_TARGET_BYTES);
        }
    }
}

/// Write `batch` as rows per function (records keep their order within a function), encoded
/// in `bufs`.
pub(crate) fn write(tx: &Transaction<'_>, batch: &[View<'_>], bufs: &mut RowBuffers) -> rusqlite::Result<()> {
    let mut by_function: Vec<(&str, Vec<View<'_>>)> = Vec::new();
    for &r in batch {
        match by_function.iter_mut().find(|(f, _)| *f == r.function()) {
            Some((_, list)) => list.push(r),
            None => by_function.push((r.function(), vec![r])),
        }
    }
    let mut ins = tx.prepare_cached(
        "INSERT INTO record_batches(function, min_start_ms, max_start_ms, count, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (function, records) in by_function {
        let mut rest = records.as_slice();
        while !rest.is_empty() {
            let n = bufs.encode_row(rest);
            let (row, tail) = rest.split_at_checked(n).unwrap_or((rest, &[]));
            let min = row.iter().map(View::start_ms).min().unwrap_or(0);
            let max = row.iter().map(View::start_ms).max().unwrap_or(0);
            ins.execute(params![function, min, max, row.len(), bufs.row.as_slice()])?;
            rest = tail;
        }
    }
    bufs.shrink();
    Ok(())
}

fn decode(data: &[u8]) -> rusqlite::Result<Vec<Stored>> {
    let decoded = match data.split_first() {
        Some((&crate::queued::row::FORMAT, rest)) => crate::queued::row::decode(rest),
        Some((&POSTCARD_V1, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        _ => serde_json::from_slice(data).map_err(|e| e.to_string()),
    };
    decoded.map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            format!("an invocation record row does not decode ({e}); written by a newer nimbus?").into(),
        )
    })
}

/// The earliest start an invocation with this request id can have: the timestamp of a
/// time-ordered (v7) id, less a minute of clock slack; 0 (look everywhere) for other ids.
fn earliest_start(request_id: &str) -> u64 {
    uuid::Uuid::parse_str(request_id)
        .ok()
        .filter(|u| u.get_version_num() == 7)
        .and_then(|u| u.get_timestamp())
        .map_or(0, |t| t.to_unix().0.saturating_mul(1000).saturating_sub(60_000))
}

/// A record with its sort key: start, then write order (batch id, index), newest first.
type Keyed = ((u64, i64, usize), InvocationRecord);

/// Invocation records matching `q`, newest first (by start, then by write order), at most
/// `q.limit`. Rows are visited by their newest start, so the walk stops at the first row whose
/// newest start is older than the `limit`-th record found.
pub(crate) fn query_invocations(conn: &Connection, q: &InvocationQuery) -> Result<Vec<InvocationRecord>> {
    let limit = q.limit.max(1) as usize;
    let since = q.request_id.as_deref().map_or(0, earliest_start);
    let sql = if q.function.is_some() {
        "SELECT id, max_start_ms, data FROM record_batches WHERE function = ?1 AND max_start_ms >= ?2
         ORDER BY max_start_ms DESC, id DESC"
    } else {
        "SELECT id, max_start_ms, data FROM record_batches WHERE ?1 IS NULL AND max_start_ms >= ?2
         ORDER BY max_start_ms DESC, id DESC"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![q.function, since])?;
    let mut found: Vec<Keyed> = Vec::new();
    while let Some(row) = rows.next()? {
        let (id, max_start): (i64, u64) = (row.get(0)?, row.get(1)?);
        if found.len() >= limit && found.get(limit - 1).is_some_and(|(k, _)| max_start < k.0) {
            break;
        }
        let data: Vec<u8> = row.get(2)?;
        for (idx, (mut rec, ..)) in decode(&data)?.into_iter().enumerate() {
            if q.request_id.as_ref().is_some_and(|want| *want != rec.request_id) {
                continue;
            }
            rec.log = String::new();
            found.push(((rec.start_ms, id, idx), rec));
        }
        found.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
        found.truncate(limit);
    }
    Ok(found.into_iter().map(|(_, r)| r).collect())
}

/// Merge two newest-first lists (the older tables' and the batch rows'), keeping `limit`.
pub(crate) fn merge_newest(
    old: Vec<InvocationRecord>,
    new: Vec<InvocationRecord>,
    limit: u32,
) -> Vec<InvocationRecord> {
    if old.is_empty() {
        return new;
    }
    // Older-table rows were written before any batch row: at equal starts the batch row is newer.
    let mut all: Vec<(u64, u8, usize, InvocationRecord)> = old
        .into_iter()
        .enumerate()
        .map(|(i, r)| (r.start_ms, 0, usize::MAX - i, r))
        .chain(new.into_iter().enumerate().map(|(i, r)| (r.start_ms, 1, usize::MAX - i, r)))
        .collect();
    all.sort_by_key(|a| std::cmp::Reverse((a.0, a.1, a.2)));
    all.into_iter().take(limit.max(1) as usize).map(|(.., r)| r).collect()
}

/// Log entries of `q.function` after `q.after`, in sequence order, at most `limit` of them.
pub(crate) fn query_logs(conn: &Connection, q: &LogQuery, limit: usize) -> Result<Vec<LogEntry>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let first = q.after.saturating_sub(LOG_SEQ_BASE) >> IDX_BITS;
    let mut stmt =
        conn.prepare_cached("SELECT id, data FROM record_batches WHERE function = ?1 AND id >= ?2 ORDER BY id")?;
    let mut rows = stmt.query(params![q.function, first])?;
    while let Some(row) = rows.next()? {
        let (id, data): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
        for (idx, (mut rec, log, frame)) in decode(&data)?.into_iter().enumerate() {
            let seq = log_seq(id, idx);
            let skip = frame.is_none() && log.is_empty();
            if seq <= q.after || skip || q.request_id.as_ref().is_some_and(|w| *w != rec.request_id) {
                continue;
            }
            (rec.log, rec.log_frame) = (log, frame);
            let text = rec.full_log().into_owned();
            out.push(LogEntry { seq, request_id: rec.request_id, ts_ms: rec.start_ms, text });
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Every record of `function` (or of all functions) that started in `[since_ms, until_ms)`,
/// handed to `each`.
pub(crate) fn for_each_in_range(
    conn: &Connection,
    function: Option<&str>,
    since_ms: u64,
    until_ms: u64,
    mut each: impl FnMut(&InvocationRecord),
) -> Result<()> {
    let sql = if function.is_some() {
        "SELECT data FROM record_batches WHERE function = ?1 AND max_start_ms >= ?2 AND min_start_ms < ?3"
    } else {
        "SELECT data FROM record_batches WHERE ?1 IS NULL AND max_start_ms >= ?2 AND min_start_ms < ?3"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![function, since_ms, until_ms])?;
    while let Some(row) = rows.next()? {
        let data: Vec<u8> = row.get(0)?;
        for (rec, ..) in decode(&data)? {
            if rec.start_ms >= since_ms && rec.start_ms < until_ms {
                each(&rec);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::Store;
    use nimbus_core::history::StatsQuery;
    use nimbus_core::{InvocationStatus, Trigger};

    pub(crate) fn rec(function: &str, id: &str, start_ms: u64) -> InvocationRecord {
        InvocationRecord {
            request_id: id.into(),
            function: function.into(),
            version: "1".into(),
            trigger: Trigger::Http,
            start_ms,
            duration_ms: 2.0,
            billed_ms: 2,
            memory_mb: 128,
            max_memory_mb: 0,
            cold: false,
            init_ms: None,
            instance_start_ms: None,
            runtime_init_ms: None,
            queue_ms: 0.0,
            status: InvocationStatus::Success,
            error_type: None,
            error_message: None,
            instance_id: Some("i".into()),
            log: format!("START {id}\nEND {id}\n"),
            log_frame: None,
            response_ms: None,
        }
    }

    /// Write `batch` as the writer does: through a thread's queue.
    fn write_batch(store: &Store, batch: &[InvocationRecord]) {
        let mut queue = crate::queued::Queue::default();
        for r in batch {
            queue.push(std::time::Instant::now(), r.clone());
        }
        let taken = queue.take(0);
        let mut conn = store.conn();
        let tx = conn.transaction().unwrap();
        write(&tx, &taken.views().collect::<Vec<_>>(), &mut RowBuffers::default()).unwrap();
        tx.commit().unwrap();
    }

    fn ids(v: &[InvocationRecord]) -> Vec<&str> {
        v.iter().map(|r| r.request_id.as_str()).collect()
    }

    #[test]
    fn newest_first_across_rows_even_when_an_older_row_holds_a_newer_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A long invocation ("long", started at 100) finishes in a later batch than "b" (200).
        write_batch(&store, &[rec("f", "a", 150), rec("f", "b", 200), rec("g", "x", 500)]);
        write_batch(&store, &[rec("f", "long", 100), rec("f", "c", 300)]);
        write_batch(&store, &[rec("f", "d", 90)]);
        let q = |function: Option<&str>, request_id: Option<&str>, limit| InvocationQuery {
            function: function.map(Into::into),
            request_id: request_id.map(Into::into),
            limit,
        };
        let conn = store.conn();
        assert_eq!(ids(&query_invocations(&conn, &q(Some("f"), None, 10)).unwrap()), ["c", "b", "a", "long", "d"]);
        assert_eq!(ids(&query_invocations(&conn, &q(Some("f"), None, 2)).unwrap()), ["c", "b"]);
        assert_eq!(ids(&query_invocations(&conn, &q(None, None, 3)).unwrap()), ["x", "c", "b"]);
        assert_eq!(ids(&query_invocations(&conn, &q(None, Some("long"), 10)).unwrap()), ["long"]);
        assert!(query_invocations(&conn, &q(Some("g"), Some("a"), 10)).unwrap().is_empty());
        // Records come back without their log, as before.
        assert!(query_invocations(&conn, &q(Some("f"), None, 1)).unwrap()[0].log.is_empty());
    }

    #[test]
    fn a_time_ordered_request_id_is_found_and_older_rows_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = nimbus_core::ids::new_request_id();
        let now = nimbus_core::ids::now_ms();
        // A row far older than the id cannot hold it: it is skipped without being decoded, so a
        // row that does not decode there proves it is never read.
        store
            .conn()
            .execute(
                "INSERT INTO record_batches(function, min_start_ms, max_start_ms, count, data) VALUES ('f', 1, 1, 1, x'00')",
                [],
            )
            .unwrap();
        write_batch(&store, &[rec("f", &id, now)]);
        let q = InvocationQuery { function: None, request_id: Some(id.clone()), limit: 5 };
        assert_eq!(ids(&query_invocations(&store.conn(), &q).unwrap()), [id.as_str()]);
    }

    #[test]
    fn logs_page_in_write_order_after_the_older_tables_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .conn()
            .execute("INSERT INTO logs(function, request_id, ts_ms, text) VALUES ('f', 'old', 1, 'old log\n')", [])
            .unwrap();
        let mut quiet = rec("f", "quiet", 5);
        quiet.log.clear();
        write_batch(&store, &[rec("f", "a", 10), quiet, rec("g", "x", 10), rec("f", "b", 20)]);
        write_batch(&store, &[rec("f", "c", 30)]);
        let read = |after, limit| {
            let q = LogQuery { function: "f".into(), after, request_id: None, limit };
            crate::records::query_logs(&store.conn(), &q).unwrap()
        };
        let all = read(0, 100);
        let got: Vec<&str> = all.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(got, ["old", "a", "b", "c"]);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers grow: {all:?}");
        assert_eq!(all[1].text, "START a\nEND a\n");
        assert_eq!(all[1].ts_ms, 10);
        // Paging with `after` resumes exactly where the last page stopped.
        let first = read(0, 2);
        assert_eq!(first.len(), 2);
        let rest: Vec<String> = read(first[1].seq, 100).into_iter().map(|e| e.request_id).collect();
        assert_eq!(rest, ["b", "c"]);
        let q = LogQuery { function: "f".into(), after: 0, request_id: Some("c".into()), limit: 10 };
        assert_eq!(crate::records::query_logs(&store.conn(), &q).unwrap().len(), 1);
    }

    /// A window of warm records is stored as rows of about [`ROW_TARGET_BYTES`], not one row
    /// of everything (SQLite's copies of a large row came from fresh pages each window), and
    /// reads back whole, in order, logs included.
    #[test]
    fn a_large_window_is_split_into_rows_of_bounded_size_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..1_000).map(|i| format!("0190a5b2-7c3d-7e8f-9a0b-{i:012}")).collect();
        let batch: Vec<InvocationRecord> = ids.iter().enumerate().map(|(i, id)| rec("f", id, i as u64)).collect();
        write_batch(&store, &batch);
        let rows: Vec<(usize, usize)> = store
            .conn()
            .prepare("SELECT count, length(data) FROM record_batches ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(rows.len() > 1, "one row of every record: {rows:?}");
        assert_eq!(rows.iter().map(|r| r.0).sum::<usize>(), 1_000);
        assert!(rows.iter().all(|r| r.1 < ROW_TARGET_BYTES + 512), "rows past the target: {rows:?}");
        let q = InvocationQuery { function: Some("f".into()), request_id: None, limit: 2_000 };
        let got = crate::records::query_invocations(&store.conn(), &q).unwrap();
        let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
        assert_eq!(got.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), newest_first);
        let logs = crate::records::query_logs(
            &store.conn(),
            &LogQuery { function: "f".into(), after: 0, request_id: None, limit: 2_000 },
        )
        .unwrap();
        assert_eq!(logs.len(), 1_000);
        assert!(logs.windows(2).all(|w| w[0].seq < w[1].seq && w[0].ts_ms <= w[1].ts_ms));
    }

    /// A success stored as parts (no START / END / REPORT) reads back with its frame rendered.
    #[test]
    fn a_log_stored_as_parts_reads_back_framed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = rec("f", "p", 10);
        (r.log, r.log_frame) = ("init\nout\n".into(), Some(5));
        let want = r.full_log().into_owned();
        write_batch(&store, &[r]);
        let q = LogQuery { function: "f".into(), after: 0, request_id: None, limit: 10 };
        let got = crate::records::query_logs(&store.conn(), &q).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, want);
        assert!(got[0].text.starts_with("init\nSTART RequestId: p Version: 1\nout\nEND RequestId: p\nREPORT"));
    }

    /// Rows written as JSON (before postcard) read back beside new ones, records and logs.
    #[test]
    fn rows_written_as_json_still_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = rec("f", "old", 10);
        let rows = vec![(&old, old.log.as_str(), old.log_frame)];
        let json = serde_json::to_vec(&rows).unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO record_batches(function, min_start_ms, max_start_ms, count, data) VALUES ('f', 10, 10, 1, ?1)",
                [json],
            )
            .unwrap();
        write_batch(&store, &[rec("f", "new", 20)]);
        let q = InvocationQuery { function: Some("f".into()), request_id: None, limit: 10 };
        let got = query_invocations(&store.conn(), &q).unwrap();
        assert_eq!(ids(&got), ["new", "old"]);
        assert_eq!(got[1].instance_id.as_deref(), Some("i"));
        let q = LogQuery { function: "f".into(), after: 0, request_id: None, limit: 10 };
        let logs = crate::records::query_logs(&store.conn(), &q).unwrap();
        assert_eq!(
            logs.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["START old\nEND old\n", "START new\nEND new\n"]
        );
    }

    /// Postcard stores an enum variant as its position: reordering `Trigger` or
    /// `InvocationStatus` would silently change what stored rows say. New variants go last.
    #[test]
    fn stored_enum_variants_keep_their_positions() {
        use InvocationStatus::*;
        let triggers =
            [Trigger::Http, Trigger::Invoke, Trigger::Event, Trigger::Schedule, Trigger::Bucket, Trigger::Queue];
        for (position, t) in triggers.into_iter().enumerate() {
            assert_eq!(
                postcard::to_allocvec(&t).unwrap(),
                [position as u8],
                "{t:?}: append new variants, never reorder"
            );
        }
        let statuses = [Success, FunctionError, Timeout, Crashed, InitError, Throttled, PlatformError];
        for (position, s) in statuses.into_iter().enumerate() {
            assert_eq!(
                postcard::to_allocvec(&s).unwrap(),
                [position as u8],
                "{s:?}: append new variants, never reorder"
            );
        }
    }

    /// Every field survives a row in format 1 (postcard), which earlier versions wrote, the
    /// skipped ones (log, frame) through the row's own.
    #[test]
    fn a_record_round_trips_through_a_format_one_row_with_every_field() {
        let mut r = rec("f", "full", 7);
        r.trigger = Trigger::Queue;
        r.status = InvocationStatus::Timeout;
        (r.init_ms, r.instance_start_ms, r.runtime_init_ms) = (Some(1.5), Some(0.5), Some(1.0));
        (r.error_type, r.error_message) = (Some("Sandbox.Timedout".into()), Some("Task timed out \"x\"".into()));
        (r.cold, r.queue_ms, r.response_ms, r.max_memory_mb) = (true, 0.25, Some(3.5), 77);
        (r.log, r.log_frame) = ("init\nout\n".into(), Some(5));
        let rows = vec![(&r, r.log.as_str(), r.log_frame)];
        let data = postcard::to_extend(&rows, vec![POSTCARD_V1]).unwrap();
        let (back, log, frame) = decode(&data).unwrap().remove(0);
        assert_eq!((log.as_str(), frame), ("init\nout\n", Some(5)));
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&r).unwrap());
    }

    #[test]
    fn statistics_count_batch_rows_and_older_rows_alike() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut err = rec("f", "e", 1_500);
        err.status = InvocationStatus::FunctionError;
        let mut cold = rec("f", "c", 1_100);
        cold.cold = true;
        write_batch(&store, &[rec("f", "a", 1_000), cold, err, rec("g", "x", 1_200), rec("f", "late", 9_000)]);
        let q = StatsQuery { function: Some("f".into()), since_ms: 1_000, bucket_ms: 1_000, buckets: 2 };
        let s = store.read_stats(&q).unwrap();
        assert_eq!((s.total.invocations, s.total.errors, s.total.cold), (3, 1, 1));
        assert_eq!(s.buckets[0].invocations, 3);
        let all = store.read_stats(&StatsQuery { function: None, ..q }).unwrap();
        assert_eq!(all.total.invocations, 4);
    }
}
