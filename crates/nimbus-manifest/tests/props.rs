//! Property tests of manifest parsing, the first parser of untrusted input (an uploaded app's
//! `nimbus.toml`): arbitrary text, the UI cases (`tests/ui/*.toml`, the seeds) with keys and
//! values spliced and mutated, deep nesting, huge numbers and odd unicode. Whatever the input,
//! `parse` and `load_as` answer `Ok` or `Diagnostics` with at least one problem, each placed at
//! a line and column inside the text; never a panic.
//!
//! Failures proptest finds are kept in `props.proptest-regressions` beside this file and
//! replayed first on every run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

use nimbus_manifest::{load_as, parse, Diagnostics, MANIFEST_FILE};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};

/// This package's directory: the test runner's `CARGO_MANIFEST_DIR` (this checkout), else the
/// one compiled in (a shared target dir may hold a binary built in another checkout).
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// Explicit case counts and a fixed seed: the same cases on every run, in CI and locally.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        rng_seed: RngSeed::Fixed(0x6d61_6e69_6665_7374),
        ..ProptestConfig::default()
    }
}

/// The UI cases, the corpus the mutations start from, plus a full valid manifest; the valid
/// ones (their `.err` says so) first, so that half the picks can start from an accepted app.
fn seeds() -> Vec<String> {
    let dir = Path::new(&manifest_dir()).join("tests/ui");
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let valid = std::fs::read_to_string(p.with_extension("err")).unwrap_or_default().starts_with("valid");
            (!valid, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    cases.push((false, FULL.to_owned()));
    cases.sort();
    cases.into_iter().map(|(_, text)| text).collect()
}

/// How many of [`seeds`] are valid.
const VALID_SEEDS: usize = 9;

#[test]
fn valid_seeds_counts_the_valid_cases() {
    let dir = Path::new(&manifest_dir()).join("tests/ui");
    let valid_cases = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "err"))
        .filter(|p| std::fs::read_to_string(p).unwrap().starts_with("valid"))
        .count();
    assert_eq!(valid_cases + 1, VALID_SEEDS, "the valid UI cases and FULL; update VALID_SEEDS");
}

/// A seed index: half the time one of the valid seeds.
fn seed() -> impl Strategy<Value = usize> {
    prop_oneof![0..VALID_SEEDS, any::<usize>()]
}

const FULL: &str = r#"name = "shop"
[functions.api]
runtime = "node"
handler = "index.handler"
memory_mb = 256
timeout = "10s"
env = { GREETING = "hi", RETRIES = 3 }
min_instances = 1
max_instances = 10
keep_alive = "10m"
max_queued = 1000
queue_timeout = "10s"
max_retry_attempts = 2
retry_backoff = "1s"
on_failure = "dlq"
[functions.geo]
runtime = "wasm"
component = "geo.wasm"
cpu_ms = 50
instance_reuse = true
allowed_outbound_hosts = ["https://api.example.com"]
[[schedules]]
function = "api"
cron = "0 2 * * *"
timezone = "Asia/Shanghai"
[[routes]]
method = ["GET", "POST"]
path = "/items/{id}"
host = "api.example.com"
function = "api"
[[routes]]
path = "/static/*"
function = "geo"
async = true
[pricing]
currency = "USD"
"#;

/// Values that stress a reader: huge and odd numbers, deep nesting, odd unicode, odd strings.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "99999999999999999999999999".to_owned(),
            "-9223372036854775809".to_owned(),
            "9223372036854775807".to_owned(),
            "0x7fffffffffffffff".to_owned(),
            "0o777".to_owned(),
            "1e400".to_owned(),
            "-0.0".to_owned(),
            "nan".to_owned(),
            "-inf".to_owned(),
            "1979-05-27T07:32:00Z".to_owned(),
            "\"\"".to_owned(),
            "\"\\u0000\"".to_owned(),
            "\"../../etc\"".to_owned(),
            "\"/etc/passwd\"".to_owned(),
            "\"99999999999999999999h\"".to_owned(),
            "\"18446744073709551615ms\"".to_owned(),
            "\"* * * * * * *\"".to_owned(),
            "\"*/0 * * * *\"".to_owned(),
            "\"0 0 30 2 *\"".to_owned(),
            "\"0 0 31 4,6,9,11 *\"".to_owned(),
            "\"59-0 23-1 L W 1#5\"".to_owned(),
            "\"0 0 29 2 MON#5\"".to_owned(),
            "\"0 0 L-40 * *\"".to_owned(),
            "\"0 0 * * 8\"".to_owned(),
            "\"? ? ? ? ?\"".to_owned(),
            "\"0 minutes\"".to_owned(),
            "\"18446744073709551615 days\"".to_owned(),
            "\"Etc/GMT+14\"".to_owned(),
            "\"America/Nuuk\"".to_owned(),
            "\"1 fortnights\"".to_owned(),
            "\"function:\"".to_owned(),
            "\"/{a}/{a}\"".to_owned(),
            "\"/*/x\"".to_owned(),
            "\"//\"".to_owned(),
            "[]".to_owned(),
            "{}".to_owned(),
            "true".to_owned(),
        ]),
        (1usize..400).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (1usize..200).prop_map(|n| format!("{}1{}", "{a=".repeat(n), "}".repeat(n))),
        "\\PC{0,40}".prop_map(|s| format!("{s:?}")),
        "[\u{202e}\u{feff}\u{0301}\u{10ffff}\u{1f980}a-z/{}*:.]{0,30}".prop_map(|s| format!("\"{s}\"")),
        (0usize..70_000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(nimbus_manifest::known_keys()).prop_map(str::to_owned),
        "[a-z_]{1,12}",
        "\\PC{1,8}".prop_map(|s| format!("{s:?}")),
    ]
}

/// One edit of a manifest, by line.
#[derive(Clone, Debug)]
enum Edit {
    /// Set the value of line `at` (if it is `key = value`) or insert `key = value` there.
    Value {
        at: usize,
        key: String,
        value: String,
    },
    /// Copy a line of another seed in.
    Splice {
        at: usize,
        seed: usize,
        line: usize,
    },
    Delete {
        at: usize,
    },
    Duplicate {
        at: usize,
    },
    /// A table header: `[functions.X]`, `[[routes]]`, …
    Table {
        at: usize,
        header: String,
    },
    /// Insert a character at a byte offset (clamped to a char boundary).
    Char {
        at: usize,
        c: char,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), key(), value()).prop_map(|(at, key, value)| Edit::Value { at, key, value }),
        2 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(at, seed, line)| Edit::Splice { at, seed, line }),
        1 => any::<usize>().prop_map(|at| Edit::Delete { at }),
        1 => any::<usize>().prop_map(|at| Edit::Duplicate { at }),
        1 => (any::<usize>(), prop::sample::select(vec![
            "[functions.f]", "[functions.\"\"]", "[functions.a.b]", "[[routes]]", "[[schedules]]", "[pricing]",
            "[[functions]]", "[routes]", "[functions.\"\u{1f980}\"]", "[functions.api]",
        ])).prop_map(|(at, h)| Edit::Table { at, header: h.to_owned() }),
        1 => (any::<usize>(), any::<char>()).prop_map(|(at, c)| Edit::Char { at, c }),
    ]
}

fn apply(text: &str, edits: &[Edit], seeds: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        let n = lines.len();
        let at = |i: usize| if n == 0 { 0 } else { i % (n + 1) };
        match e {
            Edit::Value { at: i, key, value } => {
                let i = at(*i);
                match lines.get_mut(i).filter(|l| l.contains('=')) {
                    Some(l) => *l = format!("{} = {value}", l.split('=').next().unwrap().trim()),
                    None => lines.insert(i, format!("{key} = {value}")),
                }
            }
            Edit::Splice { at: i, seed, line } => {
                let other: Vec<&str> = seeds[seed % seeds.len()].lines().collect();
                if !other.is_empty() {
                    lines.insert(at(*i), other[line % other.len()].to_owned());
                }
            }
            Edit::Delete { at: i } if n > 0 => {
                lines.remove(i % n);
            }
            Edit::Duplicate { at: i } if n > 0 => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Table { at: i, header } => lines.insert(at(*i), header.clone()),
            Edit::Char { at: i, c } => {
                let mut joined = lines.join("\n");
                let mut i = i % (joined.len() + 1);
                while !joined.is_char_boundary(i) {
                    i -= 1;
                }
                joined.insert(i, *c);
                lines = joined.lines().map(str::to_owned).collect();
            }
            Edit::Delete { .. } | Edit::Duplicate { .. } => {}
        }
    }
    lines.join("\n")
}

/// Every problem is placed inside the text (line 1.., column 1..), says something, and the
/// whole renders.
fn well_formed(result: Result<nimbus_manifest::Manifest, Diagnostics>, src: &str) -> Result<(), TestCaseError> {
    let Err(d) = result else { return Ok(()) };
    prop_assert!(!d.0.is_empty(), "a refusal lists at least one problem");
    let lines = src.split('\n').count();
    for p in &d.0 {
        prop_assert!(p.line >= 1 && p.line <= lines && p.column >= 1, "{p} is not placed in the text ({lines} lines)");
        prop_assert!(!p.message.trim().is_empty(), "{p} says nothing");
    }
    prop_assert!(d.to_string().lines().count() > d.0.len());
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text.
    #[test]
    fn arbitrary_text(src in "\\PC{0,400}|[\\[\\]{}=\"'#.,a-z0-9 \n\t\\\\]{0,400}") {
        well_formed(parse(&src, MANIFEST_FILE), &src)?;
    }

    /// The UI cases and a full manifest with keys and values spliced and mutated.
    #[test]
    fn mutated_manifests(seed in seed(), edits in prop::collection::vec(edit(), 1..6)) {
        let seeds = seeds();
        let src = apply(&seeds[seed % seeds.len()], &edits, &seeds);
        well_formed(parse(&src, MANIFEST_FILE), &src)?;
    }
}

/// A `[[schedules]]` table with fuzzed `cron`, `rate` and `timezone`: mostly plausible ones
/// (so that many are accepted and their slots computed), some arbitrary values.
fn schedule() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        "*", "*", "0", "1", "5", "12", "23", "28", "29", "30", "31", "59", "*/7", "*/15", "1-5", "0,30", "L", "1W",
        "5#3", "MON", "FRI#5", "?", "FEB", "SUN-SAT", "60", "*/0", "5-1", "L-3",
    ]);
    let cron = prop_oneof![
        4 => prop::collection::vec(field, 5..=6).prop_map(|f| format!("{:?}", f.join(" "))),
        1 => value(),
    ];
    let unit = prop::sample::select(vec!["minute", "minutes", "hour", "hours", "day", "days", "seconds", "weeks"]);
    let rate = prop_oneof![
        4 => (1u64..100_000, unit).prop_map(|(n, u)| format!("\"{n} {u}\"")),
        1 => value(),
    ];
    let tz = prop::sample::select(vec![
        "UTC",
        "Asia/Shanghai",
        "America/Nuuk",
        "Pacific/Kiritimati",
        "Etc/GMT+12",
        "Europe/London",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Nowhere/Else",
    ]);
    let when = prop_oneof![
        6 => cron.prop_map(|c| format!("cron = {c}\n")),
        3 => rate.prop_map(|r| format!("rate = {r}\n")),
        1 => Just(String::new()),
    ];
    (when, prop::option::of(tz)).prop_map(|(when, tz)| {
        let tz = tz.map(|t| format!("timezone = \"{t}\"\n")).unwrap_or_default();
        format!("[[schedules]]\nfunction = \"f\"\n{when}{tz}")
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// A schedule the manifest accepts always has an answer for its next and latest slot
    /// (or says there is none), quickly, from any moment.
    #[test]
    fn accepted_schedules_answer(table in schedule(), after in any::<u64>(), span in any::<u32>()) {
        let src = format!("name = \"a\"\n[functions.f]\nruntime = \"node\"\nhandler = \"i.h\"\n{table}");
        let parsed = parse(&src, MANIFEST_FILE);
        if let Ok(m) = &parsed {
            for s in &m.schedules {
                let after = after % 8_000_000_000_000;
                let start = std::time::Instant::now();
                let _ = s.next_slot_after(after);
                let _ = s.latest_slot_between(after, after.saturating_add(u64::from(span)));
                prop_assert!(start.elapsed() < std::time::Duration::from_secs(2), "{} took {:?}", s.key(), start.elapsed());
            }
        }
        well_formed(parsed, &src)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Deeply nested arrays and inline tables, as the value of a key that takes a list.
    #[test]
    fn deep_nesting(depth in 1usize..5000, table in any::<bool>()) {
        let value = if table {
            format!("{}1{}", "{a=".repeat(depth), "}".repeat(depth))
        } else {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        };
        let src = format!("name = \"a\"\n[functions.f]\nruntime = \"wasm\"\nallowed_outbound_hosts = {value}\n");
        well_formed(parse(&src, MANIFEST_FILE), &src)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// `load_as` on an app directory holding the mutated manifest and some code: the existence
    /// checks run on whatever the manifest points at.
    #[test]
    fn load_as_a_directory(seed in seed(), edits in prop::collection::vec(edit(), 0..4)) {
        let seeds = seeds();
        let src = apply(&seeds[seed % seeds.len()], &edits, &seeds);
        let shm = Path::new("/dev/shm");
        let app = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        let component: &[u8] = &[0, b'a', b's', b'm', 0x0d, 0, 1, 0];
        for (path, body) in [
            ("functions/api/index.js", &b""[..]),
            ("functions/hello/index.js", b""),
            ("functions/n/index.js", b""),
            ("functions/f/index.js", b""),
            ("p/bootstrap", b"#!/bin/sh\n"),
            ("functions/geo/geo.wasm", component),
        ] {
            let p = app.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        std::fs::write(app.path().join(MANIFEST_FILE), &src).unwrap();
        let result = load_as(app.path(), MANIFEST_FILE);
        well_formed(result, &src)?;
    }
}
