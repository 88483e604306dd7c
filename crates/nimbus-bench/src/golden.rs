//! Test helpers: golden files that pin a report's exact text, and small fixed measurements to
//! render. A report is refactored often and read by people, so its output is compared byte for
//! byte with a file under `testdata/`; `NIMBUS_BENCH_BLESS=1 cargo test -p nimbus-bench`
//! rewrites the files after an intended change, and the diff shows what changed.

use std::path::PathBuf;

use serde_json::json;

use crate::load::{CpuSplit, Throughput};
use crate::model::{AllResults, AllSettings, BurstResult, Cfg, Measured, Outcome, RunAll};

pub(crate) use crate::common::manifest_dir;

/// Compare `actual` with `testdata/NAME` (or write it, when blessing).
pub fn check(name: &str, actual: &str) {
    let path = manifest_dir().join("testdata").join(name);
    if std::env::var_os("NIMBUS_BENCH_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e}); bless with NIMBUS_BENCH_BLESS=1", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b);
        panic!(
            "{} differs from the output (first differing line: {first:?}); \
             if the change is intended, bless with NIMBUS_BENCH_BLESS=1\n--- output ---\n{actual}",
            path.display()
        );
    }
}

/// A throughput phase at `concurrency`: `rps` requests/s over one second, latencies spread
/// evenly from `p50_us / 2` to `p50_us * 2`, and a CPU split derived from `cpu_us`.
pub fn throughput(concurrency: usize, rps: u64, p50_us: f64, cpu_us: f64) -> Throughput {
    let latencies_us = (0..200).map(|i| p50_us * (0.5 + 1.5 * f64::from(i) / 199.0)).collect();
    Throughput {
        concurrency,
        ok: rps,
        errors: 0,
        first_error: None,
        secs: 1.0,
        latencies_us,
        machine_cpu_us_per_req: Some(cpu_us * 1.5),
        cpu_split: Some(CpuSplit { server_us: cpu_us * 0.6, children_us: cpu_us * 0.3, client_us: cpu_us * 0.1 }),
        server_threads_ns: std::collections::BTreeMap::new(),
    }
}

/// One run of `all` over a few configurations: measured, measured with wrong answers, missing, failed.
fn run_all(run: usize) -> RunAll {
    let k = run as f64;
    let measured = |rps: u64, p50_us: f64, cold: bool| {
        Outcome::Measured(Measured {
            start_ms: vec![10.0 * k, 12.0, 14.5],
            cold_first_ms: if cold { vec![0.3, 0.4 + 0.1 * k] } else { Vec::new() },
            rss_idle_kib: Some(20_480),
            procs_idle: 1,
            rss_load_kib: Some(30_720 + 1024 * run as u64),
            procs_load: 2,
            pss_idle_kib: Some(15_360),
            pss_load_kib: Some(25_600 + 1024 * run as u64),
            tput: vec![
                throughput(1, rps / 4, p50_us, 40.0),
                throughput(32, rps + 1000 * run as u64, p50_us * 8.0, 20.0),
            ],
        })
    };
    let mut wrong = match measured(3_000, 900.0, false) {
        Outcome::Measured(m) => m,
        _ => unreachable!(),
    };
    if let Some(t) = wrong.tput.first_mut() {
        t.errors = 3;
        t.first_error = Some("GET /hello/bench answered 500".into());
    }
    RunAll {
        run,
        results: vec![
            (Cfg::BareHyper, measured(80_000, 100.0, false)),
            (Cfg::Nginx, Outcome::Missing("nginx not installed: run scripts/bench-tools.sh".into())),
            (Cfg::NimbusWasm, measured(20_000, 300.0, true)),
            (Cfg::NimbusWasmReuse, measured(30_000, 200.0, true)),
            (Cfg::NimbusWasmJs, Outcome::Missing("not selected (--only)".into())),
            (Cfg::NimbusWasmPy, Outcome::Missing("not selected (--only)".into())),
            (Cfg::NimbusNode, measured(6_000, 500.0, true)),
            (Cfg::NimbusPython, Outcome::Measured(wrong)),
            (Cfg::NimbusPythonAsync, measured(13_000, 300.0, true)),
            (Cfg::WasmtimeServe, measured(7_000, 400.0, false)),
            (Cfg::WasmtimeServeReuse, measured(33_000, 150.0, false)),
            (Cfg::Workerd, Outcome::Failed("did not start\nsecond line".into())),
            (Cfg::ServerlessOffline, measured(4_000, 700.0, false)),
            (Cfg::CargoLambda, measured(1_500, 1500.0, false)),
        ],
    }
}

/// A burst of `REQUESTS` requests to `function` with `cold` cold starts and `errors` failures.
fn burst(function: &str, runtime: &'static str, cold: u64, errors: usize) -> BurstResult {
    BurstResult {
        function: function.into(),
        runtime,
        requests: 1000,
        ok: 1000 - errors,
        errors,
        first_error: (errors > 0).then(|| "timed out".to_owned()),
        latencies_ms: (1..=100).map(f64::from).collect(),
        wall_ms: 151.0,
        cold_starts_pool: cold,
        records: 1000,
        cold_records: cold as usize,
    }
}

/// Two runs of `all`, with a burst (one met, one missed) unless `quick`.
pub fn results(quick: bool) -> AllResults {
    AllResults {
        settings: AllSettings::new(quick, 2, !quick),
        selected: Cfg::ALL.to_vec(),
        runs: vec![run_all(1), run_all(2)],
        burst: if quick {
            Vec::new()
        } else {
            vec![burst("burst-wasm", "wasm", 8, 0), burst("burst-node", "node", 9, 2)]
        },
        burst_error: None,
        machine_before: json!({"nproc": 2, "cpuModel": "Test CPU", "memTotalMiB": 2048, "kernel": "6.1", "loadavg": "0.50 0.40 0.30 1/100 42"}),
        machine_after: json!({"nproc": 2, "cpuModel": "Test CPU", "memTotalMiB": 2048, "kernel": "6.1", "loadavg": "0.75 0.40 0.30 1/100 42"}),
        versions: vec![("wasmtime", "wasmtime 48.0.8".into()), ("nginx", "not installed".into())],
        first_deploy: vec![(Cfg::NimbusWasm, 812.4)],
        nimbus: PathBuf::from("/opt/nimbus/bin/nimbus"),
        command: "all".into(),
        started: "2026-01-02 03:04 UTC".into(),
    }
}
