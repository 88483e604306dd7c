//! nimbus-bench: nimbus measured side by side with bare reference servers in one run, reported
//! as absolute figures and ratios (DESIGN.md §5). `nimbus-bench process` covers the process
//! runtimes (node, python): cold start, warm latency and throughput. `nimbus-bench async` covers
//! async invocations: durable accepts/s, end-to-end events/s, and the sync Invoke API beside them.
//! `nimbus-bench wasm` covers `runtime = "wasm"` against `wasmtime serve` and a bare hyper server:
//! cold first request, platform overhead, throughput, RSS. `nimbus-bench all` runs nimbus, its
//! peers (wasmtime serve, workerd, serverless-offline, cargo-lambda) and the limit (bare hyper,
//! nginx) side by side and writes the BENCHMARKS.md section and plots; `nimbus-bench burst` is
//! its burst scenario alone.

mod all;
mod allreport;
mod asyncq;
mod bare_hyper;
mod burst;
mod fixture;
#[cfg(test)]
mod golden;
mod load;
mod observe;
mod plots;
mod procs;
mod progress;
mod report;
mod servers;
mod tree;
mod wasm;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::fixture::{Fixture, Lang};
use crate::load::{HttpClient, Throughput};
use crate::procs::{Bare, Interpreters, Nimbus};

#[derive(Parser)]
#[command(name = "nimbus-bench", about = "Benchmarks of nimbus against bare reference servers, reported as ratios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node and Python through nimbus vs bare `node`/`python3` HTTP servers calling the same
    /// handler: cold start, warm latency, throughput.
    Process(ProcessArgs),
    /// Async invocations (Invoke API `Event`) of a no-op python function: durable accepts/s at
    /// concurrency 1/16/64, end-to-end events/s, the sync Invoke API for reference, and dd's
    /// synchronous-write latency.
    Async(AsyncArgs),
    /// WebAssembly components: nimbus `runtime = "wasm"` (fresh instance per request and
    /// `instance_reuse`) vs `wasmtime serve` on the same component and a bare hyper hello-world
    /// server: cold first request, platform overhead over the handler, throughput, RSS.
    Wasm(wasm::WasmArgs),
    /// Everything side by side: bare hyper and nginx (the limit), nimbus (wasm Rust fresh and
    /// reuse, wasm JS and Python, node and python processes), and the peers (wasmtime serve,
    /// workerd, serverless-offline, cargo-lambda watch); then the burst scenario. Writes JSON,
    /// the BENCHMARKS.md section and PNG plots. Peers come from scripts/bench-tools.sh; a
    /// missing one is reported as not installed.
    All(all::AllArgs),
    /// 1,000 requests at once to nimbus functions with no warm instance and max_instances = 8:
    /// cold starts (must be ≤ 8), errors (must be 0), latency.
    Burst(burst::BurstArgs),
    /// What recording costs: the wasm hello through nimbus as shipped (records, logs, metrics)
    /// and with NIMBUS_RECORDING=off, interleaved, same load.
    Observe(observe::ObserveArgs),
    /// The bare hyper reference server of `wasm` (run by the bench itself).
    #[command(hide = true)]
    BareHyper(bare_hyper::BareHyperArgs),
}

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

#[derive(Args)]
pub struct AsyncArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
struct ProcessArgs {
    #[command(flatten)]
    common: Common,
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
    pub(crate) fn new(quick: bool, runs: usize) -> Settings {
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

    fn json(&self) -> Value {
        serde_json::json!({
            "quick": self.quick, "runs": self.runs, "coldStartsPerRun": self.cold,
            "interpreterStartupSamplesPerRun": self.startup, "warmupRequests": self.warmup,
            "warmRequests": self.warm, "concurrency": self.concurrency,
            "throughputWarmupSecs": self.tput_warmup.as_secs_f64(),
            "throughputSecs": self.tput_duration.as_secs_f64(), "throughputMaxRequests": self.tput_max,
        })
    }
}

/// Which side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Nimbus,
    Bare,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Nimbus => "nimbus",
            System::Bare => "bare",
        }
    }
}

/// Everything measured for one configuration in one run.
pub struct ConfigResult {
    pub system: System,
    pub lang: Lang,
    pub cold_ms: Vec<f64>,
    pub warm_us: Vec<f64>,
    pub tput: Vec<Throughput>,
}

pub struct RunResult {
    pub run: usize,
    /// Bare interpreter spawn → exit (`node -e 0`, `python3 -S -c pass`), ms.
    pub startup_ms: Vec<(Lang, Vec<f64>)>,
    pub configs: Vec<ConfigResult>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain reads as sentences; a backtrace would not help a user here.
            eprintln!("nimbus-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // One client thread: the load generator takes at most one of the machine's cores, the same
    // for every configuration, and sequential latency is not spread over thread hand-offs.
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Process(args) => rt.block_on(process(args)),
        Command::Async(args) => rt.block_on(asyncq::run(args)),
        Command::Wasm(args) => rt.block_on(wasm::run(args)),
        Command::All(args) => rt.block_on(all::run(args)),
        Command::Burst(args) => rt.block_on(burst::run(args)),
        Command::Observe(args) => rt.block_on(observe::run(args)),
        // The reference server builds its own multi-thread runtime; this one stays idle.
        Command::BareHyper(args) => bare_hyper::serve(args),
    }
}

async fn process(args: ProcessArgs) -> Result<()> {
    let args = args.common;
    let s = Settings::new(args.quick, usize::try_from(args.runs)?);
    let nimbus_bin = procs::locate_nimbus(args.nimbus.clone())?;
    let interps = Interpreters::resolve()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-{}-{stamp}", std::process::id()));
    let fx = fixture::write(&root, s.cold * s.runs)?;
    let machine_before = report::machine();
    eprintln!("nimbus-bench process: {} in {}", if s.quick { "quick run" } else { "full run" }, root.display());
    eprintln!(
        "  nimbus {}\n  node   {}\n  python {}",
        nimbus_bin.display(),
        interps.node.display(),
        interps.python.display()
    );

    let result = measure(&s, &nimbus_bin, &fx, &interps).await;
    let runs = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logs kept in {}", root.display());
            return Err(e);
        }
    };
    let machine_after = report::machine();
    let doc = report::json(&s, &runs, &interps, &nimbus_bin, machine_before, machine_after);
    print!("{}", report::table(&s, &runs));
    report::save(&args.out("process"), &doc, &root, args.keep)
}

async fn measure(
    s: &Settings,
    nimbus_bin: &std::path::Path,
    fx: &Fixture,
    interps: &Interpreters,
) -> Result<Vec<RunResult>> {
    let nimbus = Nimbus::start(nimbus_bin, fx, interps).await?;
    let out = measure_runs(s, &nimbus, fx, interps).await;
    if out.is_err() {
        eprintln!("nimbus log tail ({}):\n{}", nimbus.log.display(), procs::tail(&nimbus.log));
    }
    nimbus.stop().await?;
    out
}

async fn measure_runs(s: &Settings, nimbus: &Nimbus, fx: &Fixture, interps: &Interpreters) -> Result<Vec<RunResult>> {
    let home = fx.root.join("home");
    std::fs::create_dir_all(&home)?;
    let env = interps.env(&home);
    let mut runs = Vec::new();
    for run in 0..s.runs {
        eprintln!("run {}/{}", run + 1, s.runs);
        let startup_ms = vec![
            (Lang::Node, procs::interpreter_startup(&interps.node, &["-e", "0"], &env, s.startup)?),
            (Lang::Python, procs::interpreter_startup(&interps.python, &["-S", "-c", "pass"], &env, s.startup)?),
        ];
        let mut configs = Vec::new();
        for lang in Lang::ALL {
            eprintln!("  nimbus {}", lang.as_str());
            configs.push(
                measure_nimbus(s, nimbus, lang, run)
                    .await
                    .with_context(|| format!("nimbus {} (run {})", lang.as_str(), run + 1))?,
            );
            eprintln!("  bare {}", lang.as_str());
            configs.push(
                measure_bare(s, fx, interps, lang)
                    .await
                    .with_context(|| format!("bare {} (run {})", lang.as_str(), run + 1))?,
            );
        }
        runs.push(RunResult { run: run + 1, startup_ms, configs });
    }
    Ok(runs)
}

/// The pools of function `name` in a `GET /v1/functions` answer: (instances, cold starts).
fn pool_counts(functions: &Value, name: &str) -> Result<(usize, u64)> {
    let f = functions
        .as_array()
        .and_then(|a| a.iter().find(|f| f.get("name").and_then(Value::as_str) == Some(name)))
        .with_context(|| format!("GET /v1/functions does not list {name}"))?;
    let pools = f.get("pools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let instances = pools.iter().map(|p| p.get("instances").and_then(Value::as_array).map_or(0, Vec::len)).sum();
    let cold = pools.iter().map(|p| p.get("coldStarts").and_then(Value::as_u64).unwrap_or(0)).sum();
    Ok((instances, cold))
}

async fn measure_nimbus(s: &Settings, nimbus: &Nimbus, lang: Lang, run: usize) -> Result<ConfigResult> {
    let client: HttpClient = load::client();
    let base = &nimbus.url;
    let mgmt = load::uri(&format!("{base}/v1/functions"))?;
    let cold_ids: Vec<usize> = (run * s.cold..(run + 1) * s.cold).collect();

    // Cold start: the first request to a deployed, never-run function (checked both ways).
    let before = load::get_json(&client, &mgmt, &nimbus.token).await?;
    for &i in &cold_ids {
        let name = fixture::cold_function(lang, i);
        if pool_counts(&before, &name)?.0 != 0 {
            bail!("{name} already has an instance, so its first request would not be a cold start");
        }
    }
    let mut cold_ms = Vec::with_capacity(s.cold);
    for &i in &cold_ids {
        let u = load::uri(&format!("{base}{}", fixture::cold_route(lang, i)))?;
        cold_ms.push(load::timed_hello(&client, &u).await? / 1e3);
    }
    let after = load::get_json(&client, &mgmt, &nimbus.token).await?;
    for &i in &cold_ids {
        let name = fixture::cold_function(lang, i);
        let (_, cold) = pool_counts(&after, &name)?;
        if cold != 1 {
            bail!("{name} counted {cold} cold starts for one request; expected exactly 1");
        }
    }

    let warm_us =
        load::sequential(&load::uri(&format!("{base}{}", fixture::hello_route(lang)))?, s.warmup, s.warm).await?;
    let tput_uri = load::uri(&format!("{base}{}", fixture::tput_route(lang)))?;
    let mut tput = Vec::new();
    for c in s.concurrency {
        tput.push(load::throughput(&tput_uri, nimbus.pid(), c, s.tput_warmup, s.tput_duration, s.tput_max).await?);
    }
    Ok(ConfigResult { system: System::Nimbus, lang, cold_ms, warm_us, tput })
}

async fn measure_bare(s: &Settings, fx: &Fixture, interps: &Interpreters, lang: Lang) -> Result<ConfigResult> {
    let mut cold_ms = Vec::with_capacity(s.cold);
    for _ in 0..s.cold {
        let server = Bare::start(lang, fx, interps).await?;
        cold_ms.push(server.first_response_ms);
        server.stop().await?;
    }
    let server = Bare::start(lang, fx, interps).await?;
    let u = load::uri(&server.url)?;
    let measured = async {
        let warm_us = load::sequential(&u, s.warmup, s.warm).await?;
        let mut tput = Vec::new();
        for c in s.concurrency {
            tput.push(load::throughput(&u, server.pid(), c, s.tput_warmup, s.tput_duration, s.tput_max).await?);
        }
        Ok::<_, anyhow::Error>((warm_us, tput))
    }
    .await;
    server.stop().await?;
    let (warm_us, tput) = measured?;
    Ok(ConfigResult { system: System::Bare, lang, cold_ms, warm_us, tput })
}
