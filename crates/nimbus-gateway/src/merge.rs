//! Cluster reads: invocation records, logs, usage and stats stay on the node that ran the
//! invocation, so in a cluster the node asked for them asks every other live node the same
//! question (a peer call through [`Peers`], answered from that node's own store) and merges
//! the answers here. The merges are pure functions of the answers, unit-tested below.
//!
//! - Records: newest first over all nodes, then the `limit` (a limit applies after the merge).
//! - Logs: oldest first over all nodes (by time, then node, then sequence), then the `limit`.
//!   Each node numbers its own entries, so one `after` cannot say where every node's entries
//!   continue: the page carries a [`Cursor`] (`NODE:SEQ,…`), the highest sequence returned per
//!   node, which `nimbus logs --follow` sends back.
//! - Usage: summed per function and per (period, function); storage requests and bytes moved
//!   are summed, but what a bucket or namespace holds (and its GB-months) is the same shared
//!   store seen from every node, so the largest figure is kept rather than a sum.
//! - Stats: counts summed per bucket; the average weighted by invocations; the maximum is the
//!   largest; p50 is the invocation-weighted mean of the nodes' p50s and p99 the largest p99
//!   (percentiles of a union cannot be had from the parts: these are the usual estimates, and
//!   p99 errs high, never low).
//!
//! A node that does not answer within the peer timeout, or answers with an error, is left out
//! and named (`x-nimbus-missing-nodes`, `missingNodes`): the answer is partial, not a failure.

use std::collections::BTreeMap;

use nimbus_api as api;
use nimbus_core::peers::{PathFor, Peers, MISSING_NODES_HEADER};
use serde::de::DeserializeOwned;

use crate::util::{set_header, Resp};

/// The other nodes' answers, read as `T`, and the nodes that gave none.
pub(crate) struct Gathered<T> {
    pub answers: Vec<(String, T)>,
    pub missing: Vec<String>,
}

/// Ask every other live node `path(node)` and read each answer as `T`.
pub(crate) async fn gather<T: DeserializeOwned>(peers: &dyn Peers, path: PathFor<'_>) -> Gathered<T> {
    let (mut answers, mut missing) = (Vec::new(), Vec::new());
    for a in peers.ask(path).await {
        let read = a.body.and_then(|b| {
            serde_json::from_slice::<T>(&b).map_err(|e| format!("its answer could not be read ({e}); same version?"))
        });
        match read {
            Ok(v) => answers.push((a.node, v)),
            Err(why) => {
                tracing::warn!(node = %a.node, "cluster read: the node is left out of the answer: {why}");
                missing.push(a.node);
            }
        }
    }
    missing.sort();
    Gathered { answers, missing }
}

/// Name the nodes a merged answer lacks in its `x-nimbus-missing-nodes` header.
pub(crate) fn mark_missing(resp: &mut Resp, missing: &[String]) {
    if !missing.is_empty() {
        set_header(resp, MISSING_NODES_HEADER, &missing.join(","));
    }
}

/// `s` as a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Every node's records, each with its node, newest first; the first `limit`.
pub(crate) fn invocations(
    me: &str,
    local: Vec<api::Invocation>,
    others: Vec<(String, Vec<api::Invocation>)>,
    limit: usize,
) -> Vec<api::Invocation> {
    let mut all: Vec<api::Invocation> = Vec::new();
    for (node, rows) in std::iter::once((me.to_owned(), local)).chain(others) {
        all.extend(rows.into_iter().map(|r| api::Invocation { node: Some(node.clone()), ..r }));
    }
    all.sort_by(|a, b| b.start_ms.cmp(&a.start_ms).then_with(|| a.request_id.cmp(&b.request_id)));
    all.truncate(limit);
    all
}

/// Where each node's log entries continue: `NODE:SEQ,NODE:SEQ`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Cursor(BTreeMap<String, u64>);

impl Cursor {
    pub(crate) fn parse(s: &str) -> Result<Cursor, String> {
        let mut map = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let parsed = part.rsplit_once(':').and_then(|(node, seq)| Some((node, seq.parse::<u64>().ok()?)));
            let Some((node, seq)) = parsed else {
                return Err(format!(
                    "cursor {s:?} is not NODE:SEQ,…; pass back the `cursor` of the previous page as it came"
                ));
            };
            map.insert(node.to_owned(), seq);
        }
        Ok(Cursor(map))
    }

    /// Where `node`'s entries continue (`after` for a node the cursor does not name).
    pub(crate) fn after(&self, node: &str, after: u64) -> u64 {
        self.0.get(node).copied().unwrap_or(after)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(n, s)| format!("{n}:{s}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Every node's log entries, each with its node, oldest first; the first `limit`; and the
/// cursor after them (a node with no entry on the page, or none at all, keeps where it was).
pub(crate) fn logs(
    me: &str,
    local: Vec<api::LogEntry>,
    others: Gathered<api::LogPage>,
    start: &Cursor,
    after: u64,
    limit: usize,
) -> api::LogPage {
    let mut all: Vec<api::LogEntry> =
        local.into_iter().map(|e| api::LogEntry { node: Some(me.to_owned()), ..e }).collect();
    let mut cursor = start.clone();
    cursor.0.entry(me.to_owned()).or_insert(after);
    for node in &others.missing {
        cursor.0.entry(node.clone()).or_insert(after);
    }
    for (node, page) in others.answers {
        cursor.0.entry(node.clone()).or_insert(after);
        all.extend(page.entries.into_iter().map(|e| api::LogEntry { node: Some(node.clone()), ..e }));
    }
    all.sort_by(|a, b| (a.ts_ms, &a.node, a.seq).cmp(&(b.ts_ms, &b.node, b.seq)));
    all.truncate(limit);
    for e in &all {
        let at = cursor.0.entry(e.node.clone().unwrap_or_default()).or_insert(after);
        *at = (*at).max(e.seq);
    }
    let next = cursor.after(me, after);
    api::LogPage { entries: all, next, cursor: Some(cursor.to_string()), missing_nodes: others.missing }
}

/// The nodes' stats series as one: buckets matched by their start (every node was asked for
/// the same `until`, so they have the same buckets).
pub(crate) fn stats(mut local: api::StatsReport, others: Gathered<api::StatsReport>) -> api::StatsReport {
    for (_, other) in others.answers {
        for b in &other.buckets {
            if let Some(mine) = local.buckets.iter_mut().find(|m| m.start_ms == b.start_ms) {
                combine(mine, b);
            }
        }
        combine(&mut local.total, &other.total);
    }
    local.missing_nodes = others.missing;
    local
}

/// Two nodes' figures for one bucket as one (see the module's note on percentiles).
fn combine(into: &mut api::StatsBucket, b: &api::StatsBucket) {
    let (n1, n2) = (into.invocations as f64, b.invocations as f64);
    let weighted = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if n1 + n2 > 0.0 => Some((x * n1 + y * n2) / (n1 + n2)),
        (x, y) => x.or(y),
    };
    let largest = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    into.avg_ms = weighted(into.avg_ms, b.avg_ms);
    into.p50_ms = weighted(into.p50_ms, b.p50_ms);
    into.p99_ms = largest(into.p99_ms, b.p99_ms);
    into.max_ms = largest(into.max_ms, b.max_ms);
    into.invocations += b.invocations;
    into.errors += b.errors;
    into.throttled += b.throttled;
    into.cold += b.cold;
    into.cold_rate = (into.invocations > 0).then(|| into.cold as f64 / into.invocations as f64);
}

/// The nodes' usage as one report: functions and periods summed, totals recomputed.
pub(crate) fn usage(mut local: api::UsageReport, others: Gathered<api::UsageReport>) -> api::UsageReport {
    let mut functions: BTreeMap<String, api::FunctionUsage> = BTreeMap::new();
    let mut buckets: BTreeMap<(u64, String), api::UsageBucket> = BTreeMap::new();
    let mut storage: BTreeMap<(String, String), api::StorageUsage> = BTreeMap::new();
    let mine =
        (std::mem::take(&mut local.functions), std::mem::take(&mut local.buckets), std::mem::take(&mut local.storage));
    let reports =
        std::iter::once(mine).chain(others.answers.into_iter().map(|(_, r)| (r.functions, r.buckets, r.storage)));
    for (fs, bs, ss) in reports {
        for f in fs {
            match functions.get_mut(&f.function) {
                Some(into) => add_function(into, &f),
                None => drop(functions.insert(f.function.clone(), f)),
            }
        }
        for b in bs {
            match buckets.get_mut(&(b.start_ms, b.function.clone())) {
                Some(into) => {
                    (into.requests, into.gb_seconds, into.cost) =
                        (into.requests + b.requests, into.gb_seconds + b.gb_seconds, into.cost + b.cost)
                }
                None => drop(buckets.insert((b.start_ms, b.function.clone()), b)),
            }
        }
        for s in ss {
            match storage.get_mut(&(s.kind.clone(), s.name.clone())) {
                Some(into) => add_storage(into, &s),
                None => drop(storage.insert((s.kind.clone(), s.name.clone()), s)),
            }
        }
    }
    local.functions = functions.into_values().collect();
    local.buckets = buckets.into_values().collect();
    local.storage = storage.into_values().collect();
    totals(&mut local);
    local.missing_nodes = others.missing;
    local
}

fn add_function(into: &mut api::FunctionUsage, f: &api::FunctionUsage) {
    into.requests += f.requests;
    into.gb_seconds += f.gb_seconds;
    into.request_cost += f.request_cost;
    into.compute_cost += f.compute_cost;
    into.cost += f.cost;
    into.invocation_gb_seconds += f.invocation_gb_seconds;
}

/// Requests and bytes moved add up; what is held is one shared store: the largest figure.
fn add_storage(into: &mut api::StorageUsage, s: &api::StorageUsage) {
    into.objects = into.objects.max(s.objects);
    into.bytes = into.bytes.max(s.bytes);
    into.gb_months = into.gb_months.max(s.gb_months);
    into.storage_cost = into.storage_cost.max(s.storage_cost);
    into.class_a += s.class_a;
    into.class_b += s.class_b;
    into.reads += s.reads;
    into.writes += s.writes;
    into.deletes += s.deletes;
    into.lists += s.lists;
    into.bytes_in += s.bytes_in;
    into.bytes_out += s.bytes_out;
    into.request_cost += s.request_cost;
    into.transfer_cost += s.transfer_cost;
    into.cost = into.storage_cost + into.request_cost + into.transfer_cost;
}

fn totals(r: &mut api::UsageReport) {
    let f = &r.functions;
    r.total = api::UsageTotal {
        requests: f.iter().map(|f| f.requests).sum(),
        gb_seconds: f.iter().map(|f| f.gb_seconds).sum(),
        cost: f.iter().map(|f| f.cost).sum(),
        invocation_gb_seconds: f.iter().map(|f| f.invocation_gb_seconds).sum(),
    };
    let s = &r.storage;
    r.storage_total = api::StorageTotal {
        gb_months: s.iter().map(|s| s.gb_months).sum(),
        requests: s.iter().map(|s| s.reads + s.writes + s.deletes + s.lists).sum(),
        bytes_in: s.iter().map(|s| s.bytes_in).sum(),
        bytes_out: s.iter().map(|s| s.bytes_out).sum(),
        cost: s.iter().map(|s| s.cost).sum(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, start_ms: u64) -> api::Invocation {
        serde_json::from_value(serde_json::json!({
            "requestId": id, "function": "f", "version": "1", "trigger": "invoke", "startMs": start_ms,
            "durationMs": 1.0, "billedMs": 1, "memoryMb": 128, "maxMemoryMb": 0, "cold": false,
            "initMs": null, "instanceStartMs": null, "runtimeInitMs": null, "queueMs": 0.0, "handlerMs": 1.0,
            "status": "success", "errorType": null, "errorMessage": null, "instanceId": null
        }))
        .unwrap()
    }

    fn entry(seq: u64, ts_ms: u64) -> api::LogEntry {
        api::LogEntry { seq, request_id: format!("r{seq}"), ts_ms, text: String::new(), node: None }
    }

    fn page(entries: Vec<api::LogEntry>) -> api::LogPage {
        api::LogPage { next: 0, entries, cursor: None, missing_nodes: Vec::new() }
    }

    #[test]
    fn records_are_newest_first_over_all_nodes_and_the_limit_comes_after() {
        let mine = vec![record("a2", 20), record("a1", 5)];
        let others = vec![("b".to_owned(), vec![record("b1", 30), record("b0", 1)]), ("c".to_owned(), vec![])];
        let merged = invocations("a", mine, others, 3);
        let got: Vec<(&str, Option<&str>)> =
            merged.iter().map(|r| (r.request_id.as_str(), r.node.as_deref())).collect();
        assert_eq!(got, [("b1", Some("b")), ("a2", Some("a")), ("a1", Some("a"))]);
    }

    #[test]
    fn log_pages_carry_a_cursor_per_node_and_lose_no_entry() {
        // a: seqs 1 (t=10), 2 (t=40); b: seqs 7 (t=20), 8 (t=30); c did not answer.
        let others = Gathered {
            answers: vec![("b".to_owned(), page(vec![entry(7, 20), entry(8, 30)]))],
            missing: vec!["c".to_owned()],
        };
        let first = logs("a", vec![entry(1, 10), entry(2, 40)], others, &Cursor::default(), 0, 2);
        let got: Vec<(u64, Option<&str>)> = first.entries.iter().map(|e| (e.seq, e.node.as_deref())).collect();
        assert_eq!(got, [(1, Some("a")), (7, Some("b"))]);
        assert_eq!(first.cursor.as_deref(), Some("a:1,b:7,c:0"));
        assert_eq!(first.missing_nodes, ["c"]);
        assert_eq!(first.next, 1);
        // The next page starts each node where the cursor says.
        let cursor = Cursor::parse(first.cursor.as_deref().unwrap()).unwrap();
        assert_eq!((cursor.after("a", 0), cursor.after("b", 0), cursor.after("new", 5)), (1, 7, 5));
        let others = Gathered { answers: vec![("b".to_owned(), page(vec![entry(8, 30)]))], missing: vec![] };
        let second = logs("a", vec![entry(2, 40)], others, &cursor, 0, 2);
        let got: Vec<u64> = second.entries.iter().map(|e| e.seq).collect();
        assert_eq!(got, [8, 2]);
        assert_eq!(second.cursor.as_deref(), Some("a:2,b:8,c:0"));
        assert!(Cursor::parse("a:1,b").is_err());
        assert!(Cursor::parse("a:x").is_err());
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
    }

    fn bucket(start_ms: u64, invocations: u64, cold: u64, p50: f64, p99: f64) -> api::StatsBucket {
        let n = invocations > 0;
        api::StatsBucket {
            start_ms,
            invocations,
            cold,
            cold_rate: n.then(|| cold as f64 / invocations as f64),
            p50_ms: n.then_some(p50),
            p99_ms: n.then_some(p99),
            avg_ms: n.then_some(p50),
            max_ms: n.then_some(p99),
            ..Default::default()
        }
    }

    fn stats_of(buckets: Vec<api::StatsBucket>, total: api::StatsBucket) -> api::StatsReport {
        api::StatsReport {
            function: None,
            since_ms: 0,
            until_ms: 20,
            bucket_ms: 10,
            buckets,
            total,
            window: "1h".into(),
            missing_nodes: Vec::new(),
        }
    }

    #[test]
    fn stats_add_counts_weigh_averages_and_keep_the_worst_p99() {
        let mine = stats_of(vec![bucket(0, 1, 1, 10.0, 10.0), bucket(10, 0, 0, 0.0, 0.0)], bucket(0, 1, 1, 10.0, 10.0));
        let theirs =
            stats_of(vec![bucket(0, 3, 0, 30.0, 50.0), bucket(10, 2, 0, 5.0, 6.0)], bucket(0, 5, 0, 20.0, 50.0));
        let merged = stats(mine, Gathered { answers: vec![("b".into(), theirs)], missing: vec!["c".into()] });
        let b0 = &merged.buckets[0];
        assert_eq!((b0.invocations, b0.cold, b0.cold_rate), (4, 1, Some(0.25)));
        assert_eq!((b0.p50_ms, b0.avg_ms, b0.p99_ms, b0.max_ms), (Some(25.0), Some(25.0), Some(50.0), Some(50.0)));
        let b1 = &merged.buckets[1];
        assert_eq!(
            (b1.invocations, b1.p50_ms, b1.p99_ms),
            (2, Some(5.0), Some(6.0)),
            "an empty bucket takes the other's"
        );
        assert_eq!(merged.total.invocations, 6);
        assert_eq!(merged.missing_nodes, ["c"]);
    }

    fn usage_of(requests: u64, bytes: u64, reads: u64) -> api::UsageReport {
        serde_json::from_value(serde_json::json!({
            "sinceMs": 0, "untilMs": 1, "granularity": "hour",
            "prices": {"currency": "USD", "perMillionRequests": 0.2, "perGbSecond": 0.0, "serverPerHour": 0.0,
                       "servers": 1, "perGbMonthStored": 0.0, "perMillionClassA": 0.0, "perMillionClassB": 0.0,
                       "perGbTransferOut": 0.0, "perMillionKvReads": 0.0, "perMillionKvWrites": 0.0, "perGbMonthKv": 0.0},
            "functions": [{"function": "f", "requests": requests, "gbSeconds": 1.0, "requestCost": 1.0,
                           "computeCost": 1.0, "cost": 2.0, "invocationGbSeconds": 1.0}],
            "buckets": [{"startMs": 0, "function": "f", "requests": requests, "gbSeconds": 1.0, "cost": 2.0}],
            "total": {"requests": requests, "gbSeconds": 1.0, "cost": 2.0, "invocationGbSeconds": 1.0},
            "alwaysOn": {"servers": 1, "serverPerHour": 0.0, "hours": 1.0, "cost": 0.0},
            "storage": [{"kind": "bucket", "name": "b", "objects": 1, "bytes": bytes, "gbMonths": 1.0,
                         "classA": 0, "classB": reads, "reads": reads, "writes": 0, "deletes": 0, "lists": 0,
                         "bytesIn": 0, "bytesOut": 0, "storageCost": 1.0, "requestCost": 1.0,
                         "transferCost": 0.0, "cost": 2.0}]
        }))
        .unwrap()
    }

    #[test]
    fn usage_sums_functions_and_requests_but_not_the_shared_store() {
        let others = Gathered {
            answers: vec![("b".into(), usage_of(2, 100, 5)), ("c".into(), usage_of(3, 100, 5))],
            missing: vec![],
        };
        let u = usage(usage_of(1, 100, 5), others);
        assert_eq!((u.functions.len(), u.functions[0].requests, u.total.requests), (1, 6, 6));
        assert!((u.total.cost - 6.0).abs() < 1e-9 && (u.total.gb_seconds - 3.0).abs() < 1e-9);
        assert_eq!((u.buckets.len(), u.buckets[0].requests), (1, 6));
        let s = &u.storage[0];
        assert_eq!((s.bytes, s.reads, s.class_b), (100, 15, 15), "held once, requests summed");
        assert!((s.gb_months - 1.0).abs() < 1e-9 && (s.cost - 4.0).abs() < 1e-9, "{s:?}");
        assert!((u.storage_total.cost - 4.0).abs() < 1e-9);
    }
}
