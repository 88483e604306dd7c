//! Hourly storage usage (`storage_usage` table in `nimbus.db`): requests by class, bytes in and
//! out, and byte-seconds stored, per bucket or KV namespace per hour. Written once a period by
//! the node's storage flusher (never on a request path), read by `/v1/usage`, kept as long as
//! invocation usage ([`crate::USAGE_RETENTION`]).

use nimbus_core::history::StorageUsageRow;
use nimbus_core::meter::{StorageCounts, StorageKind};
use rusqlite::{params, Connection};

use crate::Result;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS storage_usage (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    reads INTEGER NOT NULL DEFAULT 0,
    writes INTEGER NOT NULL DEFAULT 0,
    deletes INTEGER NOT NULL DEFAULT 0,
    lists INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    byte_seconds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, hour_ms)
) WITHOUT ROWID;
";

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Add `rows` to what is stored (rows of the same bucket and hour are summed), in one
/// transaction.
pub(crate) fn add(conn: &mut Connection, rows: &[StorageUsageRow]) -> Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO storage_usage(kind, name, hour_ms, reads, writes, deletes, lists, bytes_in, bytes_out, byte_seconds)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(kind, name, hour_ms) DO UPDATE SET
                reads = reads + excluded.reads, writes = writes + excluded.writes,
                deletes = deletes + excluded.deletes, lists = lists + excluded.lists,
                bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out,
                byte_seconds = byte_seconds + excluded.byte_seconds",
        )?;
        for r in rows {
            let c = &r.counts;
            stmt.execute(params![
                r.kind.as_str(),
                r.name,
                i64_of(r.hour_ms),
                i64_of(c.reads),
                i64_of(c.writes),
                i64_of(c.deletes),
                i64_of(c.lists),
                i64_of(c.bytes_in),
                i64_of(c.bytes_out),
                i64_of(r.byte_seconds),
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Rows from the hour holding `since_ms`, by hour then kind and name.
pub(crate) fn query(conn: &Connection, since_ms: u64) -> Result<Vec<StorageUsageRow>> {
    let mut stmt = conn.prepare(
        "SELECT kind, name, hour_ms, reads, writes, deletes, lists, bytes_in, bytes_out, byte_seconds
         FROM storage_usage WHERE hour_ms >= ?1 ORDER BY hour_ms, kind, name",
    )?;
    let hour = since_ms - since_ms % nimbus_core::meter::HOUR_MS;
    let rows = stmt
        .query_map([i64_of(hour)], |r| {
            let kind: String = r.get(0)?;
            let n = |i: usize| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            Ok((
                kind,
                StorageUsageRow {
                    kind: StorageKind::Bucket,
                    name: r.get(1)?,
                    hour_ms: n(2)?,
                    counts: StorageCounts {
                        reads: n(3)?,
                        writes: n(4)?,
                        deletes: n(5)?,
                        lists: n(6)?,
                        bytes_in: n(7)?,
                        bytes_out: n(8)?,
                    },
                    byte_seconds: n(9)?,
                },
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Kinds this nimbus does not know (written by a newer one) are left out.
    Ok(rows
        .into_iter()
        .filter_map(|(kind, row)| StorageKind::parse(&kind).map(|kind| StorageUsageRow { kind, ..row }))
        .collect())
}

/// Delete rows of hours before `cutoff_ms`.
pub(crate) fn prune(conn: &Connection, cutoff_ms: u64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM storage_usage WHERE hour_ms < ?1", [i64_of(cutoff_ms)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_the_same_hour_add_up_and_old_hours_are_pruned() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let row = |hour_ms, reads, byte_seconds| StorageUsageRow {
            kind: StorageKind::Kv,
            name: "n".into(),
            hour_ms,
            counts: StorageCounts { reads, bytes_out: 7, ..Default::default() },
            byte_seconds,
        };
        add(&mut conn, &[row(3_600_000, 2, 10), row(7_200_000, 1, 1)]).unwrap();
        add(&mut conn, &[row(3_600_000, 3, 5)]).unwrap();
        let got = query(&conn, 3_600_000 + 5).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].counts.reads, 5);
        assert_eq!(got[0].counts.bytes_out, 14);
        assert_eq!(got[0].byte_seconds, 15);
        assert_eq!(prune(&conn, 7_200_000).unwrap(), 1);
        assert_eq!(query(&conn, 0).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn metered_kv_calls_are_classed_as_cloudflare_kv_bills_them() {
        use std::sync::Arc;

        use bytes::Bytes;
        use nimbus_core::meter::{MeteredKv, StorageMeter};
        use nimbus_core::KvStore;

        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(crate::KvDb::open(&dir.path().join("kv.db")).unwrap());
        let meter = Arc::new(StorageMeter::default());
        let kv = MeteredKv::new(db.clone(), meter.clone());
        kv.create_namespace("n").await.unwrap();
        kv.put("n", "k", Bytes::from_static(b"hello"), None).await.unwrap();
        kv.increment("n", "c", 1, None).await.unwrap();
        kv.compare_and_swap("n", "k", Some(1), Bytes::from_static(b"hi"), None).await.unwrap();
        assert_eq!(kv.get("n", "k").await.unwrap().unwrap().value.as_ref(), b"hi");
        assert!(kv.get("n", "missing").await.unwrap().is_none());
        kv.list("n", "", None, 10).await.unwrap();
        kv.delete("n", "k").await.unwrap();
        kv.namespaces().await.unwrap();
        let got = meter.take();
        let want = StorageCounts { reads: 2, writes: 3, deletes: 1, lists: 1, bytes_in: 7, bytes_out: 2 };
        assert_eq!(got, vec![(StorageKind::Kv, "n".to_owned(), want)]);
        db.close();
    }
}
