//! What several benchmarks share: the options every command takes (`Common`), the load
//! settings of `process`, `wasm` and `observe` (`Settings`), and reading a function's pools from
//! the management API (`pool_counts`). Below every runner and report, importing none of them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

/// This crate's directory: the one cargo names when it runs the bench or its tests (`cargo run`
/// and test runners set `CARGO_MANIFEST_DIR` for the process), else where it was compiled. A
/// binary reused from a build cache that another checkout made must read this checkout's files.
pub(crate) fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
use clap::Args;
use serde_json::Value;

/// What every benchmark takes.
#[derive(Args)]
pub struct Common {
    /// A smoke run: a few seconds in all, small samples.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the results as JSON (default: target/bench/BENCHMARK.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How many times to run every configuration (interleaved; each run starts every server anew).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub runs: u64,
    /// The nimbus binary (default: `nimbus` next to this executable).
    #[arg(long)]
    pub nimbus: Option<PathBuf>,
    /// Keep the temp dir (app, data dirs, logs) after the run.
    #[arg(long)]
    pub keep: bool,
}

impl Common {
    pub fn out(&self, benchmark: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(format!("target/bench/{benchmark}.json")))
    }
}

/// How much of everything to do.
pub struct Settings {
    pub quick: bool,
    pub runs: usize,
    /// Cold starts per configuration and run (distinct never-run functions for nimbus).
    pub cold: usize,
    /// Spawn → exit samples of the bare interpreter per run.
    pub startup: usize,
    pub warmup: usize,
    pub warm: usize,
    pub concurrency: [usize; 2],
    pub tput_warmup: Duration,
    pub tput_duration: Duration,
    pub tput_max: u64,
}

impl Settings {
    pub fn new(quick: bool, runs: usize) -> Settings {
        if quick {
            Settings {
                quick,
                runs,
                cold: 3,
                startup: 3,
                warmup: 30,
                warm: 200,
                concurrency: [1, 32],
                tput_warmup: Duration::from_millis(50),
                tput_duration: Duration::from_millis(250),
                tput_max: 300,
            }
        } else {
            Settings {
                quick,
                runs,
                cold: 20,
                startup: 20,
                warmup: 200,
                warm: 2000,
                concurrency: [1, 32],
                tput_warmup: Duration::from_millis(500),
                tput_duration: Duration::from_secs(5),
                tput_max: 2_000_000,
            }
        }
    }

    pub fn json(&self) -> Value {
        serde_json::json!({
            "quick": self.quick, "runs": self.runs, "coldStartsPerRun": self.cold,
            "interpreterStartupSamplesPerRun": self.startup, "warmupRequests": self.warmup,
            "warmRequests": self.warm, "concurrency": self.concurrency,
            "throughputWarmupSecs": self.tput_warmup.as_secs_f64(),
            "throughputSecs": self.tput_duration.as_secs_f64(), "throughputMaxRequests": self.tput_max,
        })
    }
}

/// The pools of function `name` in a `GET /v1/functions` answer: (instances, cold starts).
pub fn pool_counts(functions: &Value, name: &str) -> Result<(usize, u64)> {
    let f = functions
        .as_array()
        .and_then(|a| a.iter().find(|f| f.get("name").and_then(Value::as_str) == Some(name)))
        .with_context(|| format!("GET /v1/functions does not list {name}"))?;
    let pools = f.get("pools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let instances = pools.iter().map(|p| p.get("instances").and_then(Value::as_array).map_or(0, Vec::len)).sum();
    let cold = pools.iter().map(|p| p.get("coldStarts").and_then(Value::as_u64).unwrap_or(0)).sum();
    Ok((instances, cold))
}
