//! Test helpers: golden files that pin a report's exact text, and small fixed measurements to
//! render. A report is refactored often and read by people, so its output is compared byte for
//! byte with a file under `testdata/`; `NIMBUS_BENCH_BLESS=1 cargo test -p nimbus-bench`
//! rewrites the files after an intended change, and the diff shows what changed.

use std::path::PathBuf;

use crate::load::{CpuSplit, Throughput};

/// Compare `actual` with `testdata/NAME` (or write it, when blessing).
pub fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
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
    }
}
