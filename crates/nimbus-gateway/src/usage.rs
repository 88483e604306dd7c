//! `GET /v1/usage`: requests and GB-seconds per function per hour (or day), priced with the live
//! deployment's `[pricing]`, beside what always-on servers would have cost over the same period.

use nimbus_api::{AlwaysOn, FunctionUsage, Prices, StorageTotal, StorageUsage, UsageBucket, UsageReport, UsageTotal};
use nimbus_core::history::{StorageUsageRow, UsageRow};
use nimbus_core::meter::{gb_months, StorageCounts, StorageKind};
use nimbus_manifest::Pricing;

use std::collections::BTreeMap;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// What the caller asked for, parsed from the query.
pub(crate) struct UsageQuery {
    pub since_ms: u64,
    pub until_ms: u64,
    pub bucket_ms: u64,
    pub pricing: Pricing,
}

/// `since`: a duration back from now ("24h", "7d"), a date ("2026-11-01", UTC midnight) or an
/// RFC 3339 time. `granularity`: "hour" or "day". `servers` and `serverPerHour` override the
/// comparison's figures.
pub(crate) fn parse_query(
    get: impl Fn(&str) -> Option<String>,
    now_ms: u64,
    mut pricing: Pricing,
) -> Result<UsageQuery, String> {
    let since_ms = match get("since") {
        None => now_ms.saturating_sub(DAY_MS),
        Some(s) => parse_since(&s, now_ms)?,
    };
    let bucket_ms = match get("granularity").as_deref() {
        None | Some("hour") => HOUR_MS,
        Some("day") => DAY_MS,
        Some(other) => return Err(format!("granularity {other:?} is not \"hour\" or \"day\"")),
    };
    if let Some(s) = get("servers") {
        pricing.servers = s
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| format!("servers {s:?} is not a number of servers between 1 and 100000"))?;
    }
    if let Some(p) = get("serverPerHour") {
        pricing.server_per_hour = p
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("serverPerHour {p:?} is not a price like 0.0416"))?;
    }
    Ok(UsageQuery { since_ms, until_ms: now_ms, bucket_ms, pricing })
}

pub(crate) fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Some(d) = nimbus_manifest::parse_duration(s) {
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return u64::try_from(t.timestamp_millis()).map_err(|_| format!("since {s:?} is before 1970"));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let ms = d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or_default();
        return u64::try_from(ms).map_err(|_| format!("since {s:?} is before 1970"));
    }
    Err(format!("since {s:?} is not a duration (\"24h\", \"7d\"), a date (\"2026-11-01\") or an RFC 3339 time"))
}

fn gb_seconds(mb_ms: u64) -> f64 {
    mb_ms as f64 / 1024.0 / 1000.0
}

fn cost(p: &Pricing, requests: u64, gbs: f64) -> (f64, f64) {
    (requests as f64 / 1e6 * p.per_million_requests, gbs * p.per_gb_second)
}

fn prices(p: &Pricing) -> Prices {
    Prices {
        currency: p.currency.clone(),
        per_million_requests: p.per_million_requests,
        per_gb_second: p.per_gb_second,
        server_per_hour: p.server_per_hour,
        servers: p.servers,
        per_gb_month_stored: p.per_gb_month_stored,
        per_million_class_a: p.per_million_class_a,
        per_million_class_b: p.per_million_class_b,
        per_gb_transfer_out: p.per_gb_transfer_out,
        per_million_kv_reads: p.per_million_kv_reads,
        per_million_kv_writes: p.per_million_kv_writes,
        per_gb_month_kv: p.per_gb_month_kv,
    }
}

/// Sum `rows` in the window per function (requests, billed MB-ms, per-invocation MB-ms) and
/// per (bucket, function) (requests, billed MB-ms).
type Sums<'a> = (BTreeMap<&'a str, (u64, u64, u64)>, BTreeMap<(u64, &'a str), (u64, u64)>);

fn sums<'a>(q: &UsageQuery, rows: &'a [UsageRow]) -> Sums<'a> {
    let mut per_fn: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    let mut buckets: BTreeMap<(u64, &str), (u64, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.hour_ms + HOUR_MS > q.since_ms && r.hour_ms <= q.until_ms) {
        let f = per_fn.entry(&r.function).or_default();
        f.0 += r.requests;
        f.1 += r.billed_mb_ms();
        f.2 += r.mb_ms;
        let b = buckets.entry((r.hour_ms - r.hour_ms % q.bucket_ms, &r.function)).or_default();
        b.0 += r.requests;
        b.1 += r.billed_mb_ms();
    }
    (per_fn, buckets)
}

/// The response body.
pub(crate) fn report(q: &UsageQuery, rows: &[UsageRow]) -> UsageReport {
    let p = &q.pricing;
    let (per_fn, buckets) = sums(q, rows);
    let functions: Vec<FunctionUsage> = per_fn
        .iter()
        .map(|(name, &(requests, mb_ms, invocation_mb_ms))| {
            let gb_seconds = gb_seconds(mb_ms);
            let (request_cost, compute_cost) = cost(p, requests, gb_seconds);
            let cost = request_cost + compute_cost;
            let invocation_gb_seconds = self::gb_seconds(invocation_mb_ms);
            let function = (*name).to_owned();
            FunctionUsage { function, requests, gb_seconds, request_cost, compute_cost, cost, invocation_gb_seconds }
        })
        .collect();
    let total = UsageTotal {
        requests: functions.iter().map(|f| f.requests).sum(),
        gb_seconds: functions.iter().map(|f| f.gb_seconds).sum(),
        cost: functions.iter().map(|f| f.cost).sum(),
        invocation_gb_seconds: functions.iter().map(|f| f.invocation_gb_seconds).sum(),
    };
    let buckets = buckets
        .iter()
        .map(|((start, name), &(requests, mb_ms))| {
            let gb_seconds = gb_seconds(mb_ms);
            let (rc, cc) = cost(p, requests, gb_seconds);
            UsageBucket { start_ms: *start, function: (*name).to_owned(), requests, gb_seconds, cost: rc + cc }
        })
        .collect();
    let hours = q.until_ms.saturating_sub(q.since_ms) as f64 / HOUR_MS as f64;
    UsageReport {
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        granularity: if q.bucket_ms == DAY_MS { "day" } else { "hour" }.to_owned(),
        prices: prices(p),
        functions,
        buckets,
        total,
        always_on: AlwaysOn {
            servers: p.servers,
            server_per_hour: p.server_per_hour,
            hours,
            cost: f64::from(p.servers) * p.server_per_hour * hours,
        },
        storage: Vec::new(),
        storage_total: StorageTotal::default(),
        missing_nodes: Vec::new(),
    }
}

/// What the storage part of the report is made of.
pub(crate) struct StorageInput {
    /// Hourly rows written by the flusher.
    pub rows: Vec<StorageUsageRow>,
    /// Counts not yet flushed (this hour's).
    pub pending: Vec<(StorageKind, String, StorageCounts)>,
    /// What each bucket and namespace holds now: (kind, name, objects or keys, bytes).
    pub now: Vec<(StorageKind, String, u64, u64)>,
}

/// One bucket's or namespace's figures priced.
fn priced(p: &Pricing, kind: StorageKind, name: &str, c: &StorageCounts, byte_seconds: u64) -> StorageUsage {
    let gbm = gb_months(byte_seconds);
    let m = |n: u64| n as f64 / 1e6;
    let (class_a, class_b, storage_cost, request_cost, transfer_cost) = match kind {
        StorageKind::Bucket => {
            let (a, b) = (c.writes + c.lists, c.reads);
            let transfer = c.bytes_out as f64 / 1e9 * p.per_gb_transfer_out;
            (a, b, gbm * p.per_gb_month_stored, m(a) * p.per_million_class_a + m(b) * p.per_million_class_b, transfer)
        }
        StorageKind::Kv => {
            let requests =
                m(c.reads) * p.per_million_kv_reads + m(c.writes + c.deletes + c.lists) * p.per_million_kv_writes;
            (0, 0, gbm * p.per_gb_month_kv, requests, 0.0)
        }
    };
    StorageUsage {
        kind: kind.as_str().to_owned(),
        name: name.to_owned(),
        gb_months: gbm,
        class_a,
        class_b,
        reads: c.reads,
        writes: c.writes,
        deletes: c.deletes,
        lists: c.lists,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        storage_cost,
        request_cost,
        transfer_cost,
        cost: storage_cost + request_cost + transfer_cost,
        ..StorageUsage::default()
    }
}

/// Add the storage use in the window to `report`: every bucket and namespace that exists now or
/// was used in the window.
pub(crate) fn add_storage(q: &UsageQuery, input: StorageInput, report: &mut UsageReport) {
    let mut sums: BTreeMap<(StorageKind, String), (StorageCounts, u64)> = BTreeMap::new();
    for r in input.rows.into_iter().filter(|r| r.hour_ms + HOUR_MS > q.since_ms && r.hour_ms <= q.until_ms) {
        let e = sums.entry((r.kind, r.name)).or_default();
        e.0.add(&r.counts);
        e.1 += r.byte_seconds;
    }
    for (kind, name, c) in input.pending {
        sums.entry((kind, name)).or_default().0.add(&c);
    }
    let mut held: BTreeMap<(StorageKind, String), (u64, u64)> = BTreeMap::new();
    for (kind, name, objects, bytes) in input.now {
        sums.entry((kind, name.clone())).or_default();
        held.insert((kind, name), (objects, bytes));
    }
    let storage: Vec<StorageUsage> = sums
        .iter()
        .map(|((kind, name), (c, byte_seconds))| {
            let (objects, bytes) = held.get(&(*kind, name.clone())).copied().unwrap_or_default();
            StorageUsage { objects, bytes, ..priced(&q.pricing, *kind, name, c, *byte_seconds) }
        })
        .collect();
    report.storage_total = StorageTotal {
        gb_months: storage.iter().map(|s| s.gb_months).sum(),
        requests: storage.iter().map(|s| s.reads + s.writes + s.deletes + s.lists).sum(),
        bytes_in: storage.iter().map(|s| s.bytes_in).sum(),
        bytes_out: storage.iter().map(|s| s.bytes_out).sum(),
        cost: storage.iter().map(|s| s.cost).sum(),
    };
    report.storage = storage;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(function: &str, hour_ms: u64, requests: u64, mb_ms: u64) -> UsageRow {
        UsageRow { function: function.into(), hour_ms, requests, mb_ms, instance_mb_ms: 0 }
    }

    #[test]
    fn prices_requests_and_gb_seconds_and_compares_with_always_on_servers() {
        let now = 10 * DAY_MS;
        let q = parse_query(|k| (k == "since").then(|| "2d".to_owned()), now, Pricing::default()).unwrap();
        // 2,000,000 requests of 512 MB × 100 ms = 100,000 GB-s in the window, one row before it.
        let rows = [row("a", now - HOUR_MS, 2_000_000, 512 * 100 * 2_000_000), row("b", now - 3 * DAY_MS, 7, 7)];
        let v = report(&q, &rows);
        assert_eq!(v.total.requests, 2_000_000);
        assert!((v.total.gb_seconds - 100_000.0).abs() < 1e-6, "{}", v.total.gb_seconds);
        let f = &v.functions[0];
        assert!((f.request_cost - 0.40).abs() < 1e-9);
        assert!((f.compute_cost - 1.66667).abs() < 1e-4);
        // 2 servers × $0.0416 × 48 h
        assert!((v.always_on.cost - 3.9936).abs() < 1e-9);
        assert_eq!(v.functions.len(), 1, "rows before `since` are left out");
    }

    #[test]
    fn a_function_with_busy_instance_time_is_billed_by_it_and_shows_both() {
        let now = 10 * DAY_MS;
        let q = parse_query(|_| None, now, Pricing::default()).unwrap();
        // 1,000 invocations of 1024 MB × 100 ms side by side on an instance busy 10 s in all.
        let fluid = UsageRow { instance_mb_ms: 1024 * 10_000, ..row("fluid", now - HOUR_MS, 1000, 1024 * 100 * 1000) };
        let plain = row("plain", now - HOUR_MS, 10, 1024 * 1000);
        let v = report(&q, &[fluid, plain]);
        let (f, p) = (&v.functions[0], &v.functions[1]);
        assert_eq!((f.function.as_str(), p.function.as_str()), ("fluid", "plain"));
        assert!((f.gb_seconds - 10.0).abs() < 1e-9, "billed per instance-second: {}", f.gb_seconds);
        assert!((f.invocation_gb_seconds - 100.0).abs() < 1e-9, "{}", f.invocation_gb_seconds);
        assert!((f.compute_cost - 10.0 * Pricing::default().per_gb_second).abs() < 1e-12);
        assert!((p.gb_seconds - 1.0).abs() < 1e-9 && (p.invocation_gb_seconds - 1.0).abs() < 1e-9);
        assert!((v.total.gb_seconds - 11.0).abs() < 1e-9 && (v.total.invocation_gb_seconds - 101.0).abs() < 1e-9);
    }

    #[test]
    fn storage_is_priced_by_class_and_gb_month_and_lists_what_exists_now() {
        let now = 10 * DAY_MS;
        let q = parse_query(|_| None, now, Pricing::default()).unwrap();
        let counts = |reads, writes, lists| StorageCounts {
            reads,
            writes,
            lists,
            bytes_out: 2_000_000_000,
            ..Default::default()
        };
        let input = StorageInput {
            rows: vec![
                // 1 GB held 730 h is one GB-month (and a row before the window is left out).
                StorageUsageRow {
                    kind: StorageKind::Bucket,
                    name: "b".into(),
                    hour_ms: now - HOUR_MS,
                    counts: counts(1_000_000, 1_000_000, 0),
                    byte_seconds: 1_000_000_000 * 730 * 3600,
                },
                StorageUsageRow {
                    kind: StorageKind::Bucket,
                    name: "b".into(),
                    hour_ms: now - 3 * DAY_MS,
                    counts: counts(5, 5, 5),
                    byte_seconds: 5,
                },
            ],
            pending: vec![(
                StorageKind::Kv,
                "n".into(),
                StorageCounts { reads: 2_000_000, deletes: 1_000_000, ..Default::default() },
            )],
            now: vec![(StorageKind::Bucket, "b".into(), 3, 30), (StorageKind::Bucket, "idle".into(), 0, 0)],
        };
        let mut v = report(&q, &[]);
        add_storage(&q, input, &mut v);
        let names: Vec<_> = v.storage.iter().map(|s| (s.kind.as_str(), s.name.as_str())).collect();
        assert_eq!(names, [("bucket", "b"), ("bucket", "idle"), ("kv", "n")]);
        let b = &v.storage[0];
        assert_eq!((b.class_a, b.class_b, b.objects, b.bytes), (1_000_000, 1_000_000, 3, 30));
        assert!((b.gb_months - 1.0).abs() < 1e-9);
        assert!((b.storage_cost - 0.023).abs() < 1e-9);
        assert!((b.request_cost - 5.4).abs() < 1e-9, "class A $5/M + class B $0.40/M");
        assert_eq!(b.transfer_cost, 0.0, "transfer out is free by default");
        let kv = &v.storage[2];
        assert!((kv.request_cost - (1.0 + 5.0)).abs() < 1e-9, "reads $0.50/M, deletes priced as writes $5/M");
        assert!((v.storage_total.cost - (0.023 + 5.4 + 6.0)).abs() < 1e-9);
        assert_eq!(v.total.cost, 0.0, "the functions' total leaves storage out");
    }

    #[test]
    fn days_group_hours_and_bad_queries_say_what_is_wrong() {
        let now = 10 * DAY_MS;
        let get = |k: &str| match k {
            "granularity" => Some("day".to_owned()),
            "since" => Some("1970-01-05".to_owned()),
            _ => None,
        };
        let q = parse_query(get, now, Pricing::default()).unwrap();
        assert_eq!(q.since_ms, 4 * DAY_MS);
        let rows = [row("a", 5 * DAY_MS, 1, 1024), row("a", 5 * DAY_MS + HOUR_MS, 2, 1024)];
        let v = report(&q, &rows);
        assert_eq!(v.buckets.len(), 1);
        assert_eq!(v.buckets[0].requests, 3);

        for (key, value, needle) in [
            ("since", "yesterday", "is not a duration"),
            ("granularity", "week", "\"hour\" or \"day\""),
            ("servers", "0", "between 1 and 100000"),
            ("serverPerHour", "-1", "is not a price"),
        ] {
            let e = parse_query(|k| (k == key).then(|| value.to_owned()), now, Pricing::default())
                .err()
                .unwrap_or_else(|| panic!("{key}={value} was accepted"));
            assert!(e.contains(needle), "{key}={value}: {e}");
        }
    }
}
