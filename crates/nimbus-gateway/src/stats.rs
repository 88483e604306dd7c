//! `GET /v1/stats`: the time series the dashboard charts — per bucket the invocations, errors,
//! throttles, cold starts and p50/p99 duration of one function (or all), from the history.

use std::collections::HashMap;

use nimbus_core::history::{Stats, StatsBucket, StatsQuery};
use nimbus_core::ids::now_ms;

/// `"90s"`, `"15m"`, `"1h"`, `"7d"`, `"500ms"` → milliseconds.
fn parse_window(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

const STATS_PARAMS: &[&str] = &["function", "window", "buckets", "until"];
const MIN_WINDOW_MS: u64 = 60_000;
const MAX_WINDOW_MS: u64 = 90 * 86_400_000;
const MAX_BUCKETS: u32 = 1_000;
const MIN_BUCKET_MS: u64 = 1_000;

/// The query of `GET /v1/stats`, checked: bucket boundaries fall on multiples of the bucket
/// width (so a chart refreshed a moment later shows the same buckets), the last bucket holds
/// `until` (default: now).
pub(crate) fn stats_query(query: Option<&str>, known: &dyn Fn(&str) -> bool) -> Result<(StatsQuery, String), String> {
    let mut params: HashMap<String, String> = HashMap::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy().into_owned();
        if !STATS_PARAMS.contains(&k.as_str()) {
            return Err(format!("unknown query parameter {k:?}; /v1/stats takes {}", STATS_PARAMS.join(", ")));
        }
        params.insert(k, percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
    }
    let function = params.get("function").filter(|f| !f.is_empty()).cloned();
    if let Some(f) = &function {
        if !known(f) {
            return Err(format!("function {f:?} is in no deployment; `GET /v1/functions` lists the functions"));
        }
    }
    let window = params.get("window").cloned().unwrap_or_else(|| "1h".to_owned());
    let window_ms = parse_window(&window).ok_or_else(|| {
        format!("window {window:?} is not a duration; write it like \"15m\", \"1h\", \"24h\" or \"7d\"")
    })?;
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(format!("window {window:?} is out of range: from 1m to 90d"));
    }
    let buckets: u32 = match params.get("buckets") {
        None => 60,
        Some(b) => b
            .parse()
            .ok()
            .filter(|b| (1..=MAX_BUCKETS).contains(b))
            .ok_or_else(|| format!("buckets {b:?} must be a whole number from 1 to {MAX_BUCKETS}"))?,
    };
    let bucket_ms = window_ms / u64::from(buckets);
    if bucket_ms < MIN_BUCKET_MS {
        return Err(format!(
            "{buckets} buckets over {window} are narrower than a second; ask for at most {} buckets",
            window_ms / MIN_BUCKET_MS
        ));
    }
    let until = match params.get("until") {
        None => now_ms(),
        Some(u) => u.parse().map_err(|_| format!("until {u:?} must be a time in milliseconds since the epoch"))?,
    };
    let end = until.div_ceil(bucket_ms).max(1).saturating_mul(bucket_ms);
    let end = if end == until { end.saturating_add(bucket_ms) } else { end };
    let since_ms = end.saturating_sub(bucket_ms.saturating_mul(u64::from(buckets)));
    Ok((StatsQuery { function, since_ms, bucket_ms, buckets }, window))
}

/// The wire shape of a bucket.
fn bucket(b: StatsBucket) -> nimbus_api::StatsBucket {
    nimbus_api::StatsBucket {
        start_ms: b.start_ms,
        invocations: b.invocations,
        errors: b.errors,
        throttled: b.throttled,
        cold: b.cold,
        cold_rate: b.cold_rate,
        p50_ms: b.p50_ms,
        p99_ms: b.p99_ms,
        avg_ms: b.avg_ms,
        max_ms: b.max_ms,
    }
}

/// The wire shape of a series, with the window as asked for.
pub(crate) fn report(s: Stats, window: String) -> nimbus_api::StatsReport {
    nimbus_api::StatsReport {
        function: s.function,
        since_ms: s.since_ms,
        until_ms: s.until_ms,
        bucket_ms: s.bucket_ms,
        buckets: s.buckets.into_iter().map(bucket).collect(),
        total: bucket(s.total),
        window,
        missing_nodes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("15m"), Some(900_000));
        assert_eq!(parse_window("1h"), Some(3_600_000));
        assert_eq!(parse_window("7d"), Some(604_800_000));
        assert_eq!(parse_window("250ms"), Some(250));
        assert_eq!(parse_window("h"), None);
        assert_eq!(parse_window("1w"), None);
        assert_eq!(parse_window("-1h"), None);
    }

    #[test]
    fn stats_queries_are_checked_and_aligned() {
        let known = |f: &str| f == "f";
        let (q, w) = stats_query(Some("function=f&window=1h&buckets=60&until=3600500"), &known).unwrap();
        assert_eq!(w, "1h");
        assert_eq!((q.function.as_deref(), q.bucket_ms, q.buckets), (Some("f"), 60_000, 60));
        // The last bucket [3,600,000, 3,660,000) holds `until`.
        assert_eq!(q.since_ms + 60 * 60_000, 3_660_000);
        let (q, _) = stats_query(Some("until=3600000"), &known).unwrap();
        assert_eq!(q.since_ms + 60 * 60_000, 3_660_000, "a bucket boundary starts a new bucket");
        assert_eq!(q.function, None);

        let problems = [
            ("window=soon", "window \"soon\" is not a duration"),
            ("window=10s", "out of range"),
            ("buckets=0", "buckets \"0\" must be a whole number"),
            ("buckets=x", "buckets \"x\""),
            ("window=1m&buckets=120", "narrower than a second"),
            ("function=g", "function \"g\" is in no deployment"),
            ("fn=f", "unknown query parameter \"fn\""),
            ("until=yesterday", "until \"yesterday\""),
        ];
        for (query, want) in problems {
            let e = stats_query(Some(query), &known).unwrap_err();
            assert!(e.contains(want), "{query}: {e}");
        }
    }
}
