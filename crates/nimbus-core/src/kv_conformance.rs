//! The semantics every [`KvStore`] backend keeps, as one table of cases each backend's tests
//! run ([`semantics_table`]): versions that only grow, compare-and-swap, increment on absent,
//! existing and non-integer values, exact TTL on a clock the test moves, fixed windows, list by
//! prefix. The embedded store (nimbus-store-sqlite) and the cluster store (nimbus-cluster) run
//! it; a new backend should too. Test support only: nothing on a request path calls it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::kv::{CasOutcome, KvError, KvStore};

/// Run the table against `kv`, whose namespace `ns` exists and is empty, on a clock that
/// `advance(ms)` moves forward; `Err` describes the first step that did not give what it must.
pub async fn semantics_table(kv: &dyn KvStore, advance: &(dyn Fn(u64) + Send + Sync)) -> Result<(), String> {
    let mut table = Table { kv, advance, versions: HashMap::new() };
    for &(op, want) in CASES {
        table.step(op, want).await?;
    }
    Ok(())
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One step of the semantics table.
#[derive(Debug, Clone, Copy)]
enum Op {
    Put(&'static str, &'static str, Option<u64>),
    Get(&'static str),
    Del(&'static str),
    Inc(&'static str, i64, Option<u64>),
    /// Compare-and-swap over the key's last version the table saw.
    CasLast(&'static str, &'static str),
    /// Compare-and-swap expecting the key absent.
    CasAbsent(&'static str, &'static str),
    /// Compare-and-swap over a version the key never had.
    CasStale(&'static str, &'static str),
    /// Keys with this prefix.
    List(&'static str),
    /// Move the store's clock on (ms); a backend's own clocks (a server's TTLs) do not move.
    Advance(u64),
}

/// What a step must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A new version, greater than every earlier one of the key.
    NewVersion,
    Value(Option<&'static str>),
    Deleted(bool),
    Sum(i64),
    /// The key's last version the table saw (`false`: absent).
    Conflict(bool),
    Keys(&'static [&'static str]),
    /// An error whose message contains this.
    Error(&'static str),
    Done,
}

const I64_MAX: &str = "9223372036854775807";

#[rustfmt::skip]
const CASES: &[(Op, Want)] = &[
    (Op::Get("k"), Want::Value(None)),
    (Op::Put("k", "one", None), Want::NewVersion),
    (Op::Put("k", "two", None), Want::NewVersion),
    (Op::Get("k"), Want::Value(Some("two"))),
    (Op::CasAbsent("k", "x"), Want::Conflict(true)),
    (Op::CasStale("k", "x"), Want::Conflict(true)),
    (Op::CasLast("k", "three"), Want::NewVersion),
    (Op::Get("k"), Want::Value(Some("three"))),
    (Op::Del("k"), Want::Deleted(true)),
    (Op::Del("k"), Want::Deleted(false)),
    (Op::Get("k"), Want::Value(None)),
    (Op::CasLast("k", "x"), Want::Conflict(false)),
    (Op::CasAbsent("k", "again"), Want::NewVersion),
    (Op::Put("empty", "", None), Want::NewVersion),
    (Op::Get("empty"), Want::Value(Some(""))),
    // increment: absent counts from 0, the value stays decimal text, negative steps.
    (Op::Inc("c", 1, None), Want::Sum(1)),
    (Op::Inc("c", 41, None), Want::Sum(42)),
    (Op::Get("c"), Want::Value(Some("42"))),
    (Op::Inc("c", -50, None), Want::Sum(-8)),
    (Op::Get("c"), Want::Value(Some("-8"))),
    (Op::Put("n", "40", None), Want::NewVersion),
    (Op::Inc("n", 2, None), Want::Sum(42)),
    (Op::Put("s", "three", None), Want::NewVersion),
    (Op::Inc("s", 1, None), Want::Error("is not a decimal integer")),
    (Op::Put("max", I64_MAX, None), Want::NewVersion),
    (Op::Inc("max", 1, None), Want::Error("overflow")),
    (Op::Get("max"), Want::Value(Some(I64_MAX))),
    // TTL: exact on the store's clock, whatever the backend still holds.
    (Op::Put("t", "v", Some(10)), Want::NewVersion),
    (Op::Advance(9_999), Want::Done),
    (Op::Get("t"), Want::Value(Some("v"))),
    (Op::List("t"), Want::Keys(&["t"])),
    (Op::Advance(1), Want::Done),
    (Op::Get("t"), Want::Value(None)),
    (Op::List("t"), Want::Keys(&[])),
    (Op::CasLast("t", "x"), Want::Conflict(false)),
    (Op::Del("t"), Want::Deleted(false)),
    (Op::Inc("t", 1, None), Want::Sum(1)),
    (Op::CasAbsent("gone", "x"), Want::NewVersion),
    (Op::Put("gone", "x", Some(1)), Want::NewVersion),
    (Op::Advance(1_000), Want::Done),
    (Op::CasAbsent("gone", "back"), Want::NewVersion),
    (Op::Get("gone"), Want::Value(Some("back"))),
    // A fixed window: the TTL is set when increment creates the key, not moved after.
    (Op::Inc("w", 1, Some(10)), Want::Sum(1)),
    (Op::Advance(5_000), Want::Done),
    (Op::Inc("w", 1, Some(10)), Want::Sum(2)),
    (Op::Advance(5_000), Want::Done),
    (Op::Inc("w", 1, Some(10)), Want::Sum(1)),
    (Op::List(""), Want::Keys(&["c", "empty", "gone", "k", "max", "n", "s", "t", "w"])),
];

/// The table's state: the store, its clock and each key's last version.
struct Table<'a> {
    kv: &'a dyn KvStore,
    advance: &'a (dyn Fn(u64) + Send + Sync),
    versions: HashMap<&'static str, u64>,
}

impl Table<'_> {
    /// Run one step; a description of the mismatch when it did not give what it must.
    async fn step(&mut self, op: Op, want: Want) -> Result<(), String> {
        let kv = self.kv;
        let secs = |t: Option<u64>| t.map(Duration::from_secs);
        let last = |k: &str| self.versions.get(k).copied();
        let got: Result<String, KvError> = match op {
            Op::Put(k, v, t) => kv.put("ns", k, b(v), secs(t)).await.map(|v| v.to_string()),
            Op::Get(k) => kv.get("ns", k).await.map(|e| format!("{:?}", e.map(|e| e.value))),
            Op::Del(k) => kv.delete("ns", k).await.map(|d| d.to_string()),
            Op::Inc(k, by, t) => kv.increment("ns", k, by, secs(t)).await.map(|s| s.to_string()),
            Op::CasLast(k, v) => cas(kv, k, last(k), v).await,
            Op::CasAbsent(k, v) => cas(kv, k, None, v).await,
            Op::CasStale(k, v) => cas(kv, k, Some(last(k).unwrap_or(0).saturating_add(1_000_000)), v).await,
            Op::List(p) => kv
                .list("ns", p, None, 100)
                .await
                .map(|p| format!("{:?}", p.keys.iter().map(|k| &k.name).collect::<Vec<_>>())),
            Op::Advance(ms) => {
                (self.advance)(ms);
                Ok(String::new())
            }
        };
        let key = match op {
            Op::Put(k, ..) | Op::CasLast(k, _) | Op::CasAbsent(k, _) | Op::CasStale(k, _) => k,
            _ => "",
        };
        let fail = |why: String| Err(format!("{op:?}: {why}"));
        match (want, got) {
            (Want::NewVersion, Ok(v)) => {
                let Ok(v) = v.trim_start_matches("swapped ").parse::<u64>() else {
                    return fail(format!("wanted a new version, got {v}"));
                };
                if v <= last(key).unwrap_or(0) {
                    return fail(format!("version {v} after {:?}", last(key)));
                }
                self.versions.insert(key, v);
                Ok(())
            }
            (Want::Value(v), Ok(got)) => same(got, format!("{:?}", v.map(b)), fail),
            (Want::Deleted(d), Ok(got)) => same(got, d.to_string(), fail),
            (Want::Sum(s), Ok(got)) => same(got, s.to_string(), fail),
            (Want::Conflict(present), Ok(got)) => {
                let with = if present { last(key) } else { None };
                same(got, format!("conflict {with:?}"), fail)
            }
            (Want::Keys(keys), Ok(got)) => same(got, format!("{keys:?}"), fail),
            (Want::Error(text), Err(e)) if e.to_string().contains(text) => Ok(()),
            (Want::Done, Ok(_)) => Ok(()),
            (want, got) => fail(format!("wanted {want:?}, got {got:?}")),
        }
    }
}

fn same(got: String, want: String, fail: impl Fn(String) -> Result<(), String>) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        fail(format!("got {got}, wanted {want}"))
    }
}

async fn cas(kv: &dyn KvStore, k: &str, expected: Option<u64>, v: &str) -> Result<String, KvError> {
    kv.compare_and_swap("ns", k, expected, b(v), None).await.map(|o| match o {
        CasOutcome::Swapped(v) => format!("swapped {v}"),
        CasOutcome::Conflict(c) => format!("conflict {c:?}"),
    })
}
