//! `GET /v1/usage`: requests and GB-seconds per function per hour (or day), priced with the live
//! deployment's `[pricing]`, beside what always-on servers would have cost over the same period.

use nimbus_api::{AlwaysOn, FunctionUsage, Prices, UsageBucket, UsageReport, UsageTotal};
use nimbus_core::history::UsageRow;
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
    }
}

/// Sum `rows` in the window per function and per (bucket, function).
type Sums<'a> = (BTreeMap<&'a str, (u64, u64)>, BTreeMap<(u64, &'a str), (u64, u64)>);

fn sums<'a>(q: &UsageQuery, rows: &'a [UsageRow]) -> Sums<'a> {
    let mut per_fn: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut buckets: BTreeMap<(u64, &str), (u64, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.hour_ms + HOUR_MS > q.since_ms && r.hour_ms <= q.until_ms) {
        let f = per_fn.entry(&r.function).or_default();
        f.0 += r.requests;
        f.1 += r.mb_ms;
        let b = buckets.entry((r.hour_ms - r.hour_ms % q.bucket_ms, &r.function)).or_default();
        b.0 += r.requests;
        b.1 += r.mb_ms;
    }
    (per_fn, buckets)
}

/// The response body.
pub(crate) fn report(q: &UsageQuery, rows: &[UsageRow]) -> UsageReport {
    let p = &q.pricing;
    let (per_fn, buckets) = sums(q, rows);
    let functions: Vec<FunctionUsage> = per_fn
        .iter()
        .map(|(name, &(requests, mb_ms))| {
            let gb_seconds = gb_seconds(mb_ms);
            let (request_cost, compute_cost) = cost(p, requests, gb_seconds);
            let cost = request_cost + compute_cost;
            FunctionUsage { function: (*name).to_owned(), requests, gb_seconds, request_cost, compute_cost, cost }
        })
        .collect();
    let total = UsageTotal {
        requests: functions.iter().map(|f| f.requests).sum(),
        gb_seconds: functions.iter().map(|f| f.gb_seconds).sum(),
        cost: functions.iter().map(|f| f.cost).sum(),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(function: &str, hour_ms: u64, requests: u64, mb_ms: u64) -> UsageRow {
        UsageRow { function: function.into(), hour_ms, requests, mb_ms }
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
