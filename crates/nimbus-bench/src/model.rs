//! What `nimbus-bench all` and `burst` measure, as data: the configurations, the settings, the
//! measurements and their outcomes, the burst results, and the fixed answer every configuration
//! gives. The runners (`all`, `burst`) fill these in and the reports (`allreport`, `plots`) read
//! them, so this module sits below all of them and imports none of them.

use std::path::PathBuf;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::load::{stats, Expect, Throughput};

/// What every configuration answers (the Rust hello component's greeting for /hello/bench).
pub const BODY: &str = r#"{"message":"Hello, bench!","runtime":"wasm"}"#;
pub const CONTENT_TYPE: &str = "application/json";
/// The path every configuration is asked for (cargo-lambda: under its function URL prefix).
pub const HELLO_PATH: &str = "/hello/bench";

/// The burst: this many requests at once to a function with no warm instance ...
pub const REQUESTS: usize = 1000;
/// ... that may run at most this many instances, so at most this many cold starts.
pub const MAX_INSTANCES: u32 = 8;

/// Which side of the comparison a configuration is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Limit,
    Nimbus,
    Peer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Limit => "limit",
            Kind::Nimbus => "nimbus",
            Kind::Peer => "peer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cfg {
    BareHyper,
    Nginx,
    NimbusWasm,
    NimbusWasmReuse,
    NimbusWasmJs,
    NimbusWasmPy,
    NimbusNode,
    NimbusPython,
    NimbusPythonAsync,
    WasmtimeServe,
    WasmtimeServeReuse,
    Workerd,
    ServerlessOffline,
    CargoLambda,
}

impl Cfg {
    pub const ALL: [Cfg; 14] = [
        Cfg::BareHyper,
        Cfg::Nginx,
        Cfg::NimbusWasm,
        Cfg::NimbusWasmReuse,
        Cfg::NimbusWasmJs,
        Cfg::NimbusWasmPy,
        Cfg::NimbusNode,
        Cfg::NimbusPython,
        Cfg::NimbusPythonAsync,
        Cfg::WasmtimeServe,
        Cfg::WasmtimeServeReuse,
        Cfg::Workerd,
        Cfg::ServerlessOffline,
        Cfg::CargoLambda,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Cfg::BareHyper => "bare-hyper",
            Cfg::Nginx => "nginx",
            Cfg::NimbusWasm => "nimbus-wasm",
            Cfg::NimbusWasmReuse => "nimbus-wasm-reuse",
            Cfg::NimbusWasmJs => "nimbus-wasm-js",
            Cfg::NimbusWasmPy => "nimbus-wasm-py",
            Cfg::NimbusNode => "nimbus-node",
            Cfg::NimbusPython => "nimbus-python",
            Cfg::NimbusPythonAsync => "nimbus-python-async",
            Cfg::WasmtimeServe => "wasmtime-serve",
            Cfg::WasmtimeServeReuse => "wasmtime-serve-reuse",
            Cfg::Workerd => "workerd",
            Cfg::ServerlessOffline => "serverless-offline",
            Cfg::CargoLambda => "cargo-lambda",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Cfg::BareHyper | Cfg::Nginx => Kind::Limit,
            Cfg::NimbusWasm
            | Cfg::NimbusWasmReuse
            | Cfg::NimbusWasmJs
            | Cfg::NimbusWasmPy
            | Cfg::NimbusNode
            | Cfg::NimbusPython
            | Cfg::NimbusPythonAsync => Kind::Nimbus,
            _ => Kind::Peer,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Cfg::BareHyper => "hyper 1.x HTTP/1.1 on a multi-thread tokio runtime, fixed body (`nimbus-bench bare-hyper`)",
            Cfg::Nginx => "nginx (apt nginx-light), `worker_processes auto`, `return 200` of the fixed body, access log off",
            Cfg::NimbusWasm => "Rust wasi:http component (examples/wasm-hello), a fresh instance per request",
            Cfg::NimbusWasmReuse => "the same component with `instance_reuse = true`",
            Cfg::NimbusWasmJs => "JS component (componentize-js, guests/hello-js), `instance_reuse = true`",
            Cfg::NimbusWasmPy => "Python component (componentize-py, guests/hello-py), `instance_reuse = true`",
            Cfg::NimbusNode => "Node handler over the Lambda Runtime API, max_instances = 2, concurrency = 32",
            Cfg::NimbusPython => "Python handler over the Lambda Runtime API, max_instances = 2",
            Cfg::NimbusPythonAsync => {
                "the Python hello as `async def`, max_instances = 2, concurrency = 32 (one process runs them on its event loop)"
            }
            Cfg::WasmtimeServe => {
                "`wasmtime serve -S cli` 48.0.8 on the Rust component: a fresh instance per request (compiles the component at every start)"
            }
            Cfg::WasmtimeServeReuse => "`wasmtime serve` with `--max-instance-reuse-count 1000000`",
            Cfg::Workerd => "workerd (npm) with an ES-module Worker returning the body",
            Cfg::ServerlessOffline => "serverless 3.40.0 + serverless-offline 13.9.0 `--useInProcess`, the Node handler",
            Cfg::CargoLambda => "`cargo lambda watch` 1.9.2, a lambda_runtime hello (peers/lambda-hello), function URL",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Cfg::CargoLambda => "/lambda-url/lambda-hello/hello/bench",
            _ => HELLO_PATH,
        }
    }

    pub fn from_key(key: &str) -> Option<Cfg> {
        Cfg::ALL.into_iter().find(|c| c.key() == key)
    }
}

/// A correct answer of every configuration to `HELLO_PATH`.
pub fn expect() -> Expect {
    Expect { body: Bytes::from_static(BODY.as_bytes()), content_type: Some(CONTENT_TYPE) }
}

/// How much of everything to do.
pub struct AllSettings {
    pub quick: bool,
    pub runs: usize,
    /// Cold starts (spawn → first good answer) per configuration and run.
    pub starts: usize,
    /// nimbus: never-invoked functions asked once each, per run.
    pub cold: usize,
    pub concurrency: [usize; 2],
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub burst: bool,
}

impl AllSettings {
    pub fn new(quick: bool, runs: usize, burst: bool) -> AllSettings {
        if quick {
            AllSettings {
                quick,
                runs,
                starts: 1,
                cold: 2,
                concurrency: [1, 32],
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(250),
                max_requests: 20_000,
                burst,
            }
        } else {
            AllSettings {
                quick,
                runs,
                starts: 5,
                cold: 10,
                concurrency: [1, 32],
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(5),
                max_requests: 2_000_000,
                burst,
            }
        }
    }

    pub fn top(&self) -> usize {
        self.concurrency.iter().copied().max().unwrap_or(1)
    }
}

/// Everything measured for one configuration in one run.
pub struct Measured {
    /// Spawn → first good answer, ms, one per start.
    pub start_ms: Vec<f64>,
    /// nimbus: the first request to each never-invoked function, ms.
    pub cold_first_ms: Vec<f64>,
    /// Tree RSS after the first answer and a 250 ms pause, KiB; and the number of processes.
    pub rss_idle_kib: Option<u64>,
    pub procs_idle: usize,
    /// Peak tree RSS sampled during the highest-concurrency phase, KiB.
    pub rss_load_kib: Option<u64>,
    pub procs_load: usize,
    /// Tree PSS when `rss_idle_kib` was read, and right after the highest-concurrency phase, KiB.
    pub pss_idle_kib: Option<u64>,
    pub pss_load_kib: Option<u64>,
    pub tput: Vec<Throughput>,
}

impl Measured {
    pub fn tput(&self, concurrency: usize) -> Option<&Throughput> {
        self.tput.iter().find(|t| t.concurrency == concurrency)
    }

    pub fn errors(&self) -> u64 {
        self.tput.iter().map(|t| t.errors).sum()
    }
}

pub enum Outcome {
    Measured(Measured),
    /// Not installed (or not selected): why, and how to get it.
    Missing(String),
    /// Installed, but it did not start or did not answer correctly.
    Failed(String),
}

pub struct RunAll {
    pub run: usize,
    pub results: Vec<(Cfg, Outcome)>,
}

impl RunAll {
    pub fn measured(&self, c: Cfg) -> Option<&Measured> {
        self.results.iter().find(|(k, _)| *k == c).and_then(|(_, o)| match o {
            Outcome::Measured(m) => Some(m),
            _ => None,
        })
    }
}

/// Everything `all` produced, for the report.
pub struct AllResults {
    pub settings: AllSettings,
    pub selected: Vec<Cfg>,
    pub runs: Vec<RunAll>,
    pub burst: Vec<BurstResult>,
    pub burst_error: Option<String>,
    pub machine_before: Value,
    pub machine_after: Value,
    pub versions: Vec<(&'static str, String)>,
    /// nimbus wasm: `nimbus up` → first good answer with an empty compile cache, ms.
    pub first_deploy: Vec<(Cfg, f64)>,
    pub nimbus: PathBuf,
    pub command: String,
    pub started: String,
}

/// One burst against one function.
pub struct BurstResult {
    pub function: String,
    pub runtime: &'static str,
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub latencies_ms: Vec<f64>,
    pub wall_ms: f64,
    /// The pool's cold-start counter (`GET /v1/functions`).
    pub cold_starts_pool: u64,
    /// Invocation records of the function, and how many say `cold`.
    pub records: usize,
    pub cold_records: usize,
}

impl BurstResult {
    /// What is wrong with this burst, if anything (BENCHMARKS.md § Targets: ≤ max_instances cold starts, 0 errors).
    pub fn problem(&self) -> Option<String> {
        if self.errors > 0 {
            return Some(format!(
                "{} of {} requests failed (first: {})",
                self.errors,
                self.requests,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.cold_starts_pool > u64::from(MAX_INSTANCES) || self.cold_records > MAX_INSTANCES as usize {
            return Some(format!(
                "{} cold starts (pool) / {} cold invocation records, more than max_instances = {MAX_INSTANCES}",
                self.cold_starts_pool, self.cold_records
            ));
        }
        if self.records != self.requests {
            return Some(format!("{} invocation records for {} requests", self.records, self.requests));
        }
        None
    }

    pub fn json(&self) -> Value {
        json!({
            "function": self.function, "runtime": self.runtime, "requests": self.requests,
            "concurrency": self.requests, "maxInstances": MAX_INSTANCES,
            "ok": self.ok, "errors": self.errors, "firstError": self.first_error,
            "latencyMs": stats(&self.latencies_ms).json(), "wallMs": self.wall_ms,
            "coldStartsPool": self.cold_starts_pool, "records": self.records, "coldRecords": self.cold_records,
            "met": self.problem().is_none(), "problem": self.problem(),
        })
    }
}

/// The median of a sample (mean of the middle two for an even count), NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match (s.get(n / 2), n % 2) {
        (None, _) => f64::NAN,
        (Some(&m), 1) => m,
        (Some(&hi), _) => s.get(n / 2 - 1).map_or(hi, |&lo| (lo + hi) / 2.0),
    }
}
