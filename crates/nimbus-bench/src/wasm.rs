//! `nimbus-bench wasm`: the WebAssembly runtime side by side with its peers, on one hello
//! component (`wasi:http/proxy`, examples/wasm-hello).
//!
//! Configurations, each its own process, measured one after another with the same load, the
//! whole set repeated `--runs` times (interleaved):
//! - **bare hyper**: a minimal hyper server answering the same JSON (`nimbus-bench bare-hyper`);
//! - **wasmtime serve**, fresh instance per request (its default), and with instance reuse;
//! - **nimbus**, `runtime = "wasm"` with a fresh instance per request, and `instance_reuse = true`
//!   (a second function in the same app, so the same `nimbus up` process).
//!
//! Measures: warm sequential latency; throughput at concurrency 1 and 32; for nimbus the first
//! request to never-invoked functions (cold) and the handler time from the invocation records
//! (so the platform overhead is nimbus p50 − bare hyper p50 − handler p50); RSS idle and after
//! load; CPU per request.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bare_hyper::greeting;
use crate::common::Settings;
use crate::load::{self, stats, Expect, HttpClient, Throughput};
use crate::procs::{self, Nimbus};

/// BENCHMARKS.md § Targets: wasm cold start ≤ 1 ms added over a warm request, p50.
pub const COLD_ADDED_TARGET_MS: f64 = 1.0;
/// BENCHMARKS.md § Targets: wasm warm platform overhead ≤ 50 µs per request over the handler.
pub const OVERHEAD_TARGET_US: f64 = 50.0;
/// BENCHMARKS.md § Targets: fresh-instance throughput ≥ 4× `wasmtime serve` (fresh).
pub const FRESH_VS_WASMTIME_TARGET: f64 = 4.0;
/// BENCHMARKS.md § Targets: with instance reuse ≥ 50 % of a bare hyper hello-world server.
pub const REUSE_VS_BARE_TARGET: f64 = 0.5;
/// BENCHMARKS.md § Targets: p99 < 3 ms at c=32 (through the gateway, at the highest concurrency
/// measured).
pub const P99_TARGET_MS: f64 = 3.0;

/// Concurrent requests nimbus may run per function: above the highest concurrency, so the load
/// is never queued by the cap.
const MAX_INSTANCES: u32 = 64;
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";
const MISSING_WASMTIME: &str = "wasmtime serve: not installed — run scripts/bench-tools.sh";
/// The path every configuration except nimbus reuse is asked for.
pub(crate) const HELLO_PATH: &str = "/hello/bench";
/// nimbus reuse's route: another function, so another path (same body length: "reuse").
pub(crate) const REUSE_PATH: &str = "/reuse";
/// Pause after the warm-up (nimbus commits invocation records within 20 ms; every
/// configuration pauses the same).
const SETTLE: Duration = Duration::from_millis(250);
/// How long the invocation records of the warm requests may take to appear.
const RECORDS_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct WasmArgs {
    #[command(flatten)]
    pub common: crate::common::Common,
    /// The wasi:http/proxy component (default: examples/wasm-hello/functions/hello/hello.wasm).
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// The wasmtime CLI (default: $NIMBUS_BENCH_TOOLS/bin/wasmtime, NIMBUS_BENCH_TOOLS defaulting
    /// to ~/.cache/nimbus/bench-tools; else `wasmtime` on PATH).
    #[arg(long)]
    pub wasmtime: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    BareHyper,
    WasmtimeFresh,
    WasmtimeReuse,
    NimbusFresh,
    NimbusReuse,
}

impl Config {
    const ALL: [Config; 5] =
        [Config::BareHyper, Config::WasmtimeFresh, Config::WasmtimeReuse, Config::NimbusFresh, Config::NimbusReuse];

    fn label(self) -> &'static str {
        match self {
            Config::BareHyper => "bare hyper",
            Config::WasmtimeFresh => "wasmtime serve",
            Config::WasmtimeReuse => "wasmtime reuse",
            Config::NimbusFresh => "nimbus",
            Config::NimbusReuse => "nimbus reuse",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Config::BareHyper => "bareHyper",
            Config::WasmtimeFresh => "wasmtimeServe",
            Config::WasmtimeReuse => "wasmtimeServeReuse",
            Config::NimbusFresh => "nimbus",
            Config::NimbusReuse => "nimbusReuse",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Config::BareHyper => {
                "hyper 1.x HTTP/1.1, multi-thread tokio runtime, the component's JSON body and content-type (child `nimbus-bench bare-hyper`)"
            }
            Config::WasmtimeFresh => "`wasmtime serve -S cli` on the component: a fresh instance per request (its default)",
            Config::WasmtimeReuse => {
                "`wasmtime serve -S cli --max-instance-reuse-count 1000000 --idle-instance-timeout 600s`: instances kept"
            }
            Config::NimbusFresh => {
                "`nimbus up`: GET /hello/* -> runtime = \"wasm\" function, fresh instance per request, max_instances = 64"
            }
            Config::NimbusReuse => {
                "`nimbus up` (the same process): GET /reuse -> the same component with instance_reuse = true, max_instances = 64"
            }
        }
    }

    fn path(self) -> &'static str {
        match self {
            Config::NimbusReuse => REUSE_PATH,
            _ => HELLO_PATH,
        }
    }

    fn is_nimbus(self) -> bool {
        matches!(self, Config::NimbusFresh | Config::NimbusReuse)
    }
}

/// What a correct answer to `path` is: the component's greeting as JSON.
pub(crate) fn expect(path: &str) -> Expect {
    Expect { body: greeting(path).into(), content_type: Some("application/json") }
}

fn cold_function(i: usize) -> String {
    format!("cold-{i}")
}

fn cold_path(i: usize) -> String {
    format!("/cold{i}")
}

#[derive(Clone, Copy)]
struct Rss {
    rss_kib: u64,
    /// Peak RSS so far (VmHWM).
    hwm_kib: u64,
}

/// VmRSS and VmHWM of `pid` from /proc/PID/status.
fn rss(pid: Option<u32>) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|r| r.split_whitespace().next())?.parse().ok()
    };
    Some(Rss { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// Everything measured for one configuration in one run.
struct Measured {
    config: Config,
    /// Spawn → listening (nimbus: includes deploying the app and compiling the component).
    start_ms: f64,
    rss_idle: Option<Rss>,
    rss_loaded: Option<Rss>,
    warm_us: Vec<f64>,
    tput: Vec<Throughput>,
    /// nimbus: `durationMs` of the invocation records of the warm requests.
    handler_ms: Vec<f64>,
    /// nimbus (fresh): the first request to each never-invoked function, µs.
    cold_us: Vec<f64>,
}

struct RunResult {
    run: usize,
    configs: Vec<Measured>,
}

impl RunResult {
    fn get(&self, c: Config) -> Option<&Measured> {
        self.configs.iter().find(|m| m.config == c)
    }
}

fn tput(m: &Measured, concurrency: usize) -> Option<&Throughput> {
    m.tput.iter().find(|t| t.concurrency == concurrency)
}

fn rps(run: &RunResult, c: Config, concurrency: usize) -> Option<f64> {
    run.get(c).and_then(|m| tput(m, concurrency)).map(Throughput::rps)
}

fn ratio(run: &RunResult, a: Config, b: Config, concurrency: usize) -> Option<f64> {
    Some(rps(run, a, concurrency)? / rps(run, b, concurrency)?)
}

fn warm_p50_us(run: &RunResult, c: Config) -> Option<f64> {
    run.get(c).map(|m| stats(&m.warm_us).p50)
}

fn handler_p50_us(run: &RunResult, c: Config) -> Option<f64> {
    run.get(c).filter(|m| !m.handler_ms.is_empty()).map(|m| stats(&m.handler_ms).p50 * 1e3)
}

/// Platform overhead per warm request: config p50 − bare hyper p50 − handler p50, µs.
fn overhead_us(run: &RunResult, c: Config) -> Option<f64> {
    Some(warm_p50_us(run, c)? - warm_p50_us(run, Config::BareHyper)? - handler_p50_us(run, c)?)
}

fn cold_p50_ms(run: &RunResult) -> Option<f64> {
    run.get(Config::NimbusFresh).filter(|m| !m.cold_us.is_empty()).map(|m| stats(&m.cold_us).p50 / 1e3)
}

/// Cold first request p50 − warm request p50 (fresh instances), ms.
fn cold_added_ms(run: &RunResult) -> Option<f64> {
    Some(cold_p50_ms(run)? - warm_p50_us(run, Config::NimbusFresh)? / 1e3)
}

fn p99_ms(run: &RunResult, c: Config, concurrency: usize) -> Option<f64> {
    run.get(c).and_then(|m| tput(m, concurrency)).map(|t| stats(&t.latencies_us).p99 / 1e3)
}

/// A child server process listening on `url`.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    start_ms: f64,
}

impl Server {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// `nimbus-bench bare-hyper --port-file F` (this executable), once it has written its port.
async fn start_bare_hyper(root: &Path, run: usize) -> Result<Server> {
    let exe = std::env::current_exe().context("cannot find the nimbus-bench executable's path")?;
    let port_file = root.join(format!("bare-hyper-{run}.port"));
    let _ = std::fs::remove_file(&port_file);
    let log = root.join(format!("bare-hyper-{run}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let t0 = Instant::now();
    let mut child = Command::new(&exe)
        .arg("bare-hyper")
        .arg("--port-file")
        .arg(&port_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} bare-hyper", exe.display()))?;
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|t| t.trim().parse().ok()) {
            break p;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the bare hyper server exited ({status}) before listening:\n{}", procs::tail(&log));
        }
        if t0.elapsed() > START_TIMEOUT {
            bail!("the bare hyper server did not write {} within {START_TIMEOUT:?}", port_file.display());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    Ok(Server { child, url: format!("http://127.0.0.1:{port}"), start_ms: t0.elapsed().as_secs_f64() * 1e3 })
}

/// Where the wasmtime CLI is, or why not.
pub(crate) fn find_wasmtime(explicit: Option<PathBuf>) -> Result<std::result::Result<PathBuf, String>> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--wasmtime {}: no such file", p.display());
        }
        return Ok(Ok(p));
    }
    let tools = match std::env::var_os("NIMBUS_BENCH_TOOLS") {
        Some(t) => Some(PathBuf::from(t)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nimbus/bench-tools")),
    };
    if let Some(p) = tools.map(|t| t.join("bin/wasmtime")).filter(|p| p.is_file()) {
        return Ok(Ok(p));
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("wasmtime")).find(|p| p.is_file()));
    Ok(on_path.ok_or_else(|| MISSING_WASMTIME.to_owned()))
}

/// `wasmtime --version`, e.g. "wasmtime 48.0.8".
pub(crate) fn wasmtime_version(bin: &Path) -> Result<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} --version", bin.display()))?;
    if !out.status.success() {
        bail!("{} --version failed: {}", bin.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `wasmtime serve -S cli [reuse flags] --addr 127.0.0.1:0 COMPONENT`, once it prints
/// `Serving HTTP on URL`.
pub(crate) async fn start_wasmtime(
    bin: &Path,
    component: &Path,
    reuse: bool,
    root: &Path,
    run: usize,
) -> Result<Server> {
    let name = if reuse { "wasmtime-reuse" } else { "wasmtime" };
    let log = root.join(format!("{name}-{run}.log"));
    let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve").args(["-S", "cli"]);
    if reuse {
        cmd.args(["--max-instance-reuse-count", "1000000", "--idle-instance-timeout", "600s"]);
    }
    cmd.args(["--addr", "127.0.0.1:0"])
        .arg(component)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {} serve", bin.display()))?;
    let stderr = child.stderr.take().context("wasmtime serve has no stderr pipe")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, url)) = line.split_once("Serving HTTP on ") {
                return Ok::<_, anyhow::Error>(Some(url.trim().trim_end_matches('/').to_owned()));
            }
            seen.push(line);
        }
        Ok(None)
    };
    let url = match tokio::time::timeout(START_TIMEOUT, wait).await {
        Ok(Ok(Some(url))) => url,
        Ok(Ok(None)) => bail!("wasmtime serve exited before listening:\n{}", seen.join("\n")),
        Ok(Err(e)) => return Err(e).context("cannot read wasmtime serve's stderr"),
        Err(_) => bail!("wasmtime serve did not print `Serving HTTP on` within {START_TIMEOUT:?}"),
    };
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Keep draining stderr so wasmtime never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server { child, url, start_ms })
}

/// The app: the hello component as `hello` (fresh instances), `hello-reuse` and `cold` never-run
/// functions, all the same component.
pub(crate) fn write_app(root: &Path, component: &Path, cold: usize) -> Result<PathBuf> {
    let app = root.join("app");
    let code = app.join("functions/hello");
    std::fs::create_dir_all(&code).with_context(|| format!("cannot create {}", code.display()))?;
    std::fs::copy(component, code.join("hello.wasm"))
        .with_context(|| format!("cannot copy {} into the app", component.display()))?;
    let mut m = String::from("# Written by nimbus-bench wasm; deleted when the run ends.\nname = \"bench-wasm\"\n");
    let mut routes = String::new();
    let mut funcs = vec![
        ("hello".to_owned(), false, "/hello/*".to_owned()),
        ("hello-reuse".to_owned(), true, REUSE_PATH.to_owned()),
    ];
    funcs.extend((0..cold).map(|i| (cold_function(i), false, cold_path(i))));
    for (name, reuse, path) in funcs {
        write!(
            m,
            "\n[functions.{name}]\nruntime = \"wasm\"\ncode = \"functions/hello\"\ncomponent = \"hello.wasm\"\nmemory_mb = 32\ntimeout = \"5s\"\nmax_instances = {MAX_INSTANCES}\n"
        )?;
        if reuse {
            m.push_str("instance_reuse = true\n");
        }
        write!(routes, "\n[[routes]]\nmethod = \"GET\"\npath = \"{path}\"\nfunction = \"{name}\"\n")?;
    }
    m.push_str(&routes);
    std::fs::write(app.join("nimbus.toml"), m).context("cannot write the app manifest")?;
    Ok(app)
}

/// Where nimbus's invocation records are read for a function.
struct Records<'a> {
    nimbus: &'a Nimbus,
    function: &'a str,
}

impl Records<'_> {
    fn uri(&self, limit: usize) -> Result<hyper::Uri> {
        load::uri(&format!("{}/v1/invocations?function={}&limit={limit}", self.nimbus.url, self.function))
    }

    /// The request id of the function's newest invocation record.
    async fn newest(&self, client: &HttpClient) -> Result<String> {
        let v = load::get_json(client, &self.uri(1)?, &self.nimbus.token).await?;
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|r| r.get("requestId"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no invocation record of {} after the warm-up", self.function))
    }

    /// `durationMs` of the `n` invocations after `marker` (waits for them to be committed).
    async fn after(&self, client: &HttpClient, marker: &str, n: usize) -> Result<Vec<f64>> {
        let uri = self.uri(n + 1)?;
        let t0 = Instant::now();
        loop {
            let v = load::get_json(client, &uri, &self.nimbus.token).await?;
            let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
            let pos = list.iter().position(|r| r.get("requestId").and_then(Value::as_str) == Some(marker));
            if pos == Some(n) {
                let durations: Vec<f64> =
                    list.iter().take(n).filter_map(|r| r.get("durationMs").and_then(Value::as_f64)).collect();
                if durations.len() != n {
                    bail!("{} of the {n} invocation records of {} have a durationMs", durations.len(), self.function);
                }
                return Ok(durations);
            }
            if t0.elapsed() > RECORDS_TIMEOUT {
                bail!(
                    "the invocation records of the {n} warm requests to {} did not appear within {RECORDS_TIMEOUT:?} (the warm-up's last record is at position {pos:?})",
                    self.function
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Warm sequential latency (and, for nimbus, the handler durations of those requests), then
/// throughput at every concurrency.
async fn measure_load(
    s: &Settings,
    config: Config,
    base: &str,
    pid: Option<u32>,
    records: Option<Records<'_>>,
) -> Result<(Vec<f64>, Vec<f64>, Vec<Throughput>)> {
    let path = config.path();
    let uri = load::uri(&format!("{base}{path}"))?;
    let exp = expect(path);
    let client = load::client();
    for _ in 0..s.warmup {
        load::fetch(&client, &uri, &exp).await?;
    }
    tokio::time::sleep(SETTLE).await;
    let marker = match &records {
        Some(r) => Some(r.newest(&client).await?),
        None => None,
    };
    let mut warm = Vec::with_capacity(s.warm);
    for _ in 0..s.warm {
        warm.push(load::timed(&client, &uri, &exp).await?);
    }
    let handler_ms = match (&records, marker) {
        (Some(r), Some(m)) => r.after(&client, &m, s.warm).await?,
        _ => Vec::new(),
    };
    let mut tput = Vec::new();
    for c in s.concurrency {
        tput.push(load::throughput_expect(&uri, &exp, pid, c, s.tput_warmup, s.tput_duration, s.tput_max).await?);
    }
    Ok((warm, handler_ms, tput))
}

/// Measure a bare hyper or wasmtime server, then stop it.
async fn measure_server(s: &Settings, config: Config, server: Server) -> Result<Measured> {
    let pid = server.pid();
    let rss_idle = rss(pid);
    let measured = measure_load(s, config, &server.url, pid, None).await;
    let rss_loaded = rss(pid);
    let start_ms = server.start_ms;
    server.stop().await?;
    let (warm_us, handler_ms, tput) = measured?;
    Ok(Measured { config, start_ms, rss_idle, rss_loaded, warm_us, tput, handler_ms, cold_us: Vec::new() })
}

/// The first request to each never-invoked function, checked through `GET /v1/functions`: no
/// instance before, exactly one cold start after.
async fn cold_starts(s: &Settings, nimbus: &Nimbus, client: &HttpClient) -> Result<Vec<f64>> {
    let functions = load::uri(&format!("{}/v1/functions", nimbus.url))?;
    // Also opens the client's connection, so no cold sample pays for a TCP handshake.
    let before = load::get_json(client, &functions, &nimbus.token).await?;
    for i in 0..s.cold {
        let name = cold_function(i);
        if crate::common::pool_counts(&before, &name)?.0 != 0 {
            bail!("{name} already has an instance, so its first request would not be a cold start");
        }
    }
    let mut cold_us = Vec::with_capacity(s.cold);
    for i in 0..s.cold {
        let path = cold_path(i);
        cold_us.push(load::timed(client, &load::uri(&format!("{}{path}", nimbus.url))?, &expect(&path)).await?);
    }
    let after = load::get_json(client, &functions, &nimbus.token).await?;
    for i in 0..s.cold {
        let name = cold_function(i);
        let (_, cold) = crate::common::pool_counts(&after, &name)?;
        if cold != 1 {
            bail!("{name} counted {cold} cold starts for one request; expected exactly 1");
        }
    }
    Ok(cold_us)
}

async fn measure_nimbus_phases(
    s: &Settings,
    nimbus: &Nimbus,
    start_ms: f64,
    rss_idle: Option<Rss>,
) -> Result<Vec<Measured>> {
    let pid = nimbus.pid();
    let cold_us = cold_starts(s, nimbus, &load::client()).await.context("cold first requests")?;
    let mut out = Vec::new();
    for (config, function) in [(Config::NimbusFresh, "hello"), (Config::NimbusReuse, "hello-reuse")] {
        eprintln!("  {}", config.label());
        let (warm_us, handler_ms, tput) =
            measure_load(s, config, &nimbus.url, pid, Some(Records { nimbus, function })).await?;
        out.push(Measured {
            config,
            start_ms,
            rss_idle,
            rss_loaded: rss(pid),
            warm_us,
            tput,
            handler_ms,
            cold_us: if config == Config::NimbusFresh { cold_us.clone() } else { Vec::new() },
        });
    }
    Ok(out)
}

/// `nimbus up` on the app with a fresh data dir, both nimbus configurations, then stop it.
async fn measure_nimbus(s: &Settings, bin: &Path, app: &Path, root: &Path, run: usize) -> Result<Vec<Measured>> {
    let data = root.join(format!("data-{run}"));
    let log = root.join(format!("nimbus-{run}.log"));
    let t0 = Instant::now();
    let nimbus = Nimbus::launch(bin, app, &data, &log, &[("NIMBUS_LOG", Path::new("warn"))]).await?;
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_idle = rss(nimbus.pid());
    let result = measure_nimbus_phases(s, &nimbus, start_ms, rss_idle).await;
    if result.is_err() {
        eprintln!("nimbus log tail ({}):\n{}", log.display(), procs::tail(&log));
    }
    nimbus.stop().await?;
    result
}

/// What every run works with.
struct Setup<'a> {
    s: &'a Settings,
    root: &'a Path,
    app: &'a Path,
    component: &'a Path,
    component_bytes: u64,
    nimbus: &'a Path,
    wasmtime: &'a std::result::Result<PathBuf, String>,
    wasmtime_version: Option<&'a str>,
}

async fn measure_run(x: &Setup<'_>, run: usize) -> Result<RunResult> {
    let mut configs = Vec::new();
    eprintln!("  {}", Config::BareHyper.label());
    let server = start_bare_hyper(x.root, run).await?;
    configs.push(measure_server(x.s, Config::BareHyper, server).await.context("bare hyper")?);
    if let Ok(bin) = x.wasmtime {
        for (config, reuse) in [(Config::WasmtimeFresh, false), (Config::WasmtimeReuse, true)] {
            eprintln!("  {}", config.label());
            let server = start_wasmtime(bin, x.component, reuse, x.root, run).await?;
            configs.push(measure_server(x.s, config, server).await.with_context(|| config.label())?);
        }
    }
    configs.extend(measure_nimbus(x.s, x.nimbus, x.app, x.root, run).await.context("nimbus")?);
    Ok(RunResult { run, configs })
}

pub(crate) fn default_component() -> PathBuf {
    crate::common::manifest_dir().join("../../examples/wasm-hello/functions/hello/hello.wasm")
}

pub async fn run(args: WasmArgs) -> Result<()> {
    let s = Settings::new(args.common.quick, usize::try_from(args.common.runs)?);
    let nimbus_bin = procs::locate_nimbus(args.common.nimbus.clone())?;
    let component = args.component.clone().unwrap_or_else(default_component);
    let component = component
        .canonicalize()
        .with_context(|| format!("no component at {} (pass --component PATH)", component.display()))?;
    let component_bytes = std::fs::metadata(&component)?.len();
    let wasmtime = find_wasmtime(args.wasmtime.clone())?;
    let wasmtime_version = match &wasmtime {
        Ok(bin) => Some(wasmtime_version(bin)?),
        Err(_) => None,
    };
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-wasm-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let app = write_app(&root, &component, s.cold)?;
    let machine_before = crate::output::machine();
    let setup = Setup {
        s: &s,
        root: &root,
        app: &app,
        component: &component,
        component_bytes,
        nimbus: &nimbus_bin,
        wasmtime: &wasmtime,
        wasmtime_version: wasmtime_version.as_deref(),
    };
    announce(&setup);
    let runs = measure_runs(&setup).await?;
    let machine_after = crate::output::machine();
    print!("{}", table(&s, &runs, &component, component_bytes, &wasmtime, wasmtime_version.as_deref()));
    let doc = doc(&setup, &runs, machine_before, machine_after);
    crate::output::save(&args.common.out("wasm"), &doc, &root, args.common.keep)
}

/// What is measured where, on stderr before the runs.
fn announce(x: &Setup<'_>) {
    eprintln!("nimbus-bench wasm: {} in {}", if x.s.quick { "quick run" } else { "full run" }, x.root.display());
    eprintln!("  nimbus    {}\n  component {}", x.nimbus.display(), x.component.display());
    match (x.wasmtime, x.wasmtime_version) {
        (Ok(bin), Some(v)) => {
            eprintln!("  wasmtime  {} ({v})", bin.display());
            if !v.contains(WASMTIME_VERSION) {
                eprintln!(
                    "  note: the peer is pinned to wasmtime {WASMTIME_VERSION} (scripts/bench-tools.sh); this is {v}"
                );
            }
        }
        _ => eprintln!("  {MISSING_WASMTIME}"),
    }
}

/// Every run; the first that fails ends them all (the temp dir is kept for its logs).
async fn measure_runs(x: &Setup<'_>) -> Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    for run in 1..=x.s.runs {
        eprintln!("run {run}/{}", x.s.runs);
        match measure_run(x, run).await {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("temp dir kept: {}", x.root.display());
                return Err(e.context(format!("run {run}")));
            }
        }
    }
    Ok(runs)
}

/// The JSON document of the whole benchmark.
fn doc(x: &Setup<'_>, runs: &[RunResult], machine_before: Value, machine_after: Value) -> Value {
    let s = x.s;
    let wasmtime_json = match (x.wasmtime, x.wasmtime_version) {
        (Ok(bin), Some(v)) => json!({"path": bin.display().to_string(), "version": v}),
        (Err(why), _) => json!({"missing": why}),
        (Ok(bin), None) => json!({"path": bin.display().to_string()}),
    };
    json!({
        "benchmark": "wasm",
        "notes": [
            "every answer is checked: 200, content-type application/json, the component's greeting for the path",
            "configurations run one after another in each run, each its own process (nimbus fresh and reuse share one nimbus up); every run starts every server anew (nimbus with a fresh data dir)",
            "warm: sequential requests over one keep-alive connection after a warm-up and a 250 ms pause; throughput: fixed duration after a warm-up at the same concurrency",
            "cold (nimbus): first request to each never-invoked function of the app, over a connection already open",
            "handler: durationMs of nimbus's invocation records of the warm requests (instantiate + run + collect the body); overhead = nimbus warm p50 - bare hyper warm p50 - handler p50",
            "client: one tokio thread with a keep-alive hyper client; all traffic on 127.0.0.1",
            "rssKiB: VmRSS right after the server listens (idle) and after its c=max phase (nimbus reuse: the same process after both nimbus configurations); peak = VmHWM",
        ],
        "settings": {
            "quick": s.quick, "runs": s.runs, "coldFunctions": s.cold, "warmupRequests": s.warmup,
            "warmRequests": s.warm, "concurrency": s.concurrency,
            "throughputWarmupSecs": s.tput_warmup.as_secs_f64(), "throughputSecs": s.tput_duration.as_secs_f64(),
            "throughputMaxRequests": s.tput_max, "nimbusMaxInstances": MAX_INSTANCES,
        },
        "configs": Config::ALL.iter().map(|c| json!({"config": c.key(), "label": c.label(), "description": c.describe(), "path": c.path()})).collect::<Vec<_>>(),
        "machine": {"before": machine_before, "after": machine_after},
        "nimbusBinary": x.nimbus.display().to_string(),
        "component": {"path": x.component.display().to_string(), "bytes": x.component_bytes},
        "wasmtime": wasmtime_json,
        "targets": {
            "coldAddedMs": COLD_ADDED_TARGET_MS, "overheadUs": OVERHEAD_TARGET_US,
            "freshVsWasmtimeServe": FRESH_VS_WASMTIME_TARGET, "reuseVsBareHyper": REUSE_VS_BARE_TARGET,
            "p99Ms": P99_TARGET_MS,
        },
        "runs": runs.iter().map(|r| run_json(s, r)).collect::<Vec<_>>(),
    })
}

fn top(s: &Settings) -> usize {
    s.concurrency.iter().copied().max().unwrap_or(1)
}

fn mib(r: Option<Rss>) -> String {
    r.map_or("-".to_owned(), |r| format!("{:.1}", r.rss_kib as f64 / 1024.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite()).map_or("-".to_owned(), |v| format!("{v:.digits$}"))
}

/// "met", or "MISSED" and by how much.
fn verdict(ok: Option<bool>, missed_by: String) -> String {
    match ok {
        Some(true) => "met".to_owned(),
        Some(false) => format!("MISSED by {missed_by}"),
        None => "n/a".to_owned(),
    }
}

fn table(
    s: &Settings,
    runs: &[RunResult],
    component: &Path,
    component_bytes: u64,
    wasmtime: &std::result::Result<PathBuf, String>,
    wasmtime_version: Option<&str>,
) -> String {
    let mut o = String::new();
    table_intro(&mut o, s, component, component_bytes, wasmtime, wasmtime_version);
    measurements(&mut o, s, runs);
    nimbus_lines(&mut o, runs);
    ratio_lines(&mut o, s, runs);
    target_lines(&mut o, s, runs);
    o
}

/// What was measured, with what, and how much.
fn table_intro(
    o: &mut String,
    s: &Settings,
    component: &Path,
    component_bytes: u64,
    wasmtime: &std::result::Result<PathBuf, String>,
    wasmtime_version: Option<&str>,
) {
    let _ = writeln!(
        o,
        "\nnimbus-bench wasm ({} run, {} run(s) interleaved; client: one tokio thread, keep-alive hyper, 127.0.0.1)",
        if s.quick { "quick" } else { "full" },
        s.runs
    );
    let _ = writeln!(o, "  component: {} ({component_bytes} bytes)", component.display());
    for c in Config::ALL {
        let _ = writeln!(o, "  {:<15} {}", c.label(), c.describe());
    }
    match (wasmtime, wasmtime_version) {
        (Ok(bin), v) => {
            let _ = writeln!(o, "  wasmtime: {} ({})", bin.display(), v.unwrap_or("version unknown"));
        }
        (Err(why), _) => {
            let _ = writeln!(o, "  {why}");
        }
    }
    let _ = writeln!(
        o,
        "  warm: {} sequential after {}; throughput: {:.2} s per concurrency after {:.2} s (at most {} requests); cold: {} never-invoked functions",
        s.warm,
        s.warmup,
        s.tput_duration.as_secs_f64(),
        s.tput_warmup.as_secs_f64(),
        s.tput_max,
        s.cold
    );
}

/// A line per run and configuration: warm latency, throughput per concurrency, CPU, RSS, errors.
fn measurements(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let c_max = top(s);
    let _ = writeln!(o);
    let mut head = format!("{:<4}{:<16}{:>9}{:>9}", "run", "config", "warm p50", "p99 µs");
    for c in s.concurrency {
        let _ = write!(head, "{:>12}{:>22}", format!("c={c} req/s"), "p50/p99/p999 ms");
    }
    let _ = write!(head, "{:>22}{:>18}", format!("CPU µs/req c={c_max}"), "RSS MiB idle/load");
    let _ = writeln!(o, "{head}  errors");
    for r in runs {
        for m in &r.configs {
            let _ = writeln!(o, "{}", measurement(s, r.run, m));
            for t in &m.tput {
                if let Some(e) = &t.first_error {
                    let _ = writeln!(o, "      c={} first error: {e}", t.concurrency);
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "  (CPU: the server process per request + the load generator per request; nimbus reuse RSS: the same process after both nimbus configurations)"
    );
}

/// The line of one configuration in run `run`, errors summed over its phases last.
fn measurement(s: &Settings, run: usize, m: &Measured) -> String {
    let warm = stats(&m.warm_us);
    let mut line = format!("{:<4}{:<16}{:>9.0}{:>9.0}", run, m.config.label(), warm.p50, warm.p99);
    let mut errors = 0;
    for c in s.concurrency {
        match tput(m, c) {
            Some(t) => {
                errors += t.errors;
                let l = stats(&t.latencies_us);
                let _ = write!(
                    line,
                    "{:>12.0}{:>22}",
                    t.rps(),
                    format!("{:.2}/{:.2}/{:.2}", l.p50 / 1e3, l.p99 / 1e3, l.p999 / 1e3)
                );
            }
            None => {
                let _ = write!(line, "{:>12}{:>22}", "-", "-");
            }
        }
    }
    let cpu = tput(m, top(s))
        .and_then(|t| t.cpu_split)
        .map_or("-".to_owned(), |x| format!("{:.0} + client {:.0}", x.server_us + x.children_us, x.client_us));
    let _ = write!(line, "{cpu:>22}{:>18}", format!("{} / {}", mib(m.rss_idle), mib(m.rss_loaded)));
    format!("{line}  {errors}")
}

/// nimbus per run: the cold first request, the handler time and the platform overhead.
fn nimbus_lines(o: &mut String, runs: &[RunResult]) {
    let _ = writeln!(o, "\nnimbus: cold first request, handler time, platform overhead");
    for r in runs {
        if let Some(m) = r.get(Config::NimbusFresh) {
            let cold = stats(&m.cold_us);
            let _ = writeln!(
                o,
                "  run {} cold: p50 {:.2} ms [{:.2}-{:.2}] over {} functions; warm p50 {:.0} µs; cold added {} ms; nimbus start -> listening {:.0} ms",
                r.run,
                cold.p50 / 1e3,
                cold.min / 1e3,
                cold.max / 1e3,
                cold.n,
                stats(&m.warm_us).p50,
                opt(cold_added_ms(r), 2),
                m.start_ms
            );
        }
        for c in [Config::NimbusFresh, Config::NimbusReuse] {
            let _ = writeln!(
                o,
                "  run {} {:<13} handler p50 {} µs; overhead = p50 {} - bare hyper p50 {} - handler p50 = {} µs",
                r.run,
                c.label(),
                opt(handler_p50_us(r, c), 1),
                opt(warm_p50_us(r, c), 0),
                opt(warm_p50_us(r, Config::BareHyper), 0),
                opt(overhead_us(r, c), 0)
            );
        }
    }
}

/// Every configuration's req/s over bare hyper's and over `wasmtime serve`'s, a column per run.
fn ratio_lines(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(o, "\nratios of req/s (one column per run)");
    let mut head = format!("{:<16}", "config");
    for c in s.concurrency {
        let _ = write!(head, "  {:>22}  {:>22}", format!("c={c} / bare hyper"), format!("c={c} / wasmtime serve"));
    }
    let _ = writeln!(o, "{head}");
    for cfg in Config::ALL {
        if runs.iter().all(|r| r.get(cfg).is_none()) {
            continue;
        }
        let mut line = format!("{:<16}", cfg.label());
        for c in s.concurrency {
            let col =
                |base: Config| runs.iter().map(|r| opt(ratio(r, cfg, base, c), 2)).collect::<Vec<_>>().join(" | ");
            // Separated, not only padded: with more runs a column is wider than its pad.
            let _ = write!(line, "  {:>22}  {:>22}", col(Config::BareHyper), col(Config::WasmtimeFresh));
        }
        let _ = writeln!(o, "{line}");
    }
}

/// Each target, per run: met, or missed and by how much.
fn target_lines(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(o, "\ntargets (BENCHMARKS.md § Targets)");
    for r in runs {
        latency_targets(o, r);
        throughput_targets(o, r, top(s));
    }
}

/// The cold first request and the platform overhead of run `r`.
fn latency_targets(o: &mut String, r: &RunResult) {
    let n = r.run;
    let added = cold_added_ms(r);
    let _ = writeln!(
        o,
        "  run {n} cold added (cold p50 - warm p50) {} ms (target <= {COLD_ADDED_TARGET_MS} ms): {}",
        opt(added, 2),
        verdict(
            added.map(|a| a <= COLD_ADDED_TARGET_MS),
            format!("{} ms", opt(added.map(|a| a - COLD_ADDED_TARGET_MS), 2))
        )
    );
    for c in [Config::NimbusFresh, Config::NimbusReuse] {
        let ov = overhead_us(r, c);
        let _ = writeln!(
            o,
            "  run {n} platform overhead, {} {} µs (target <= {OVERHEAD_TARGET_US:.0} µs): {}",
            c.label(),
            opt(ov, 0),
            verdict(ov.map(|v| v <= OVERHEAD_TARGET_US), format!("{} µs", opt(ov.map(|v| v - OVERHEAD_TARGET_US), 0)))
        );
    }
}

/// The throughput ratios and the p99 of run `r` at concurrency `c_max`.
fn throughput_targets(o: &mut String, r: &RunResult, c_max: usize) {
    let n = r.run;
    let fresh = ratio(r, Config::NimbusFresh, Config::WasmtimeFresh, c_max);
    let _ = writeln!(
        o,
        "  run {n} fresh instances, nimbus / wasmtime serve at c={c_max}: {}x (target >= {FRESH_VS_WASMTIME_TARGET}x): {}",
        opt(fresh, 2),
        if r.get(Config::WasmtimeFresh).is_none() {
            MISSING_WASMTIME.to_owned()
        } else {
            verdict(
                fresh.map(|f| f >= FRESH_VS_WASMTIME_TARGET),
                format!("{}x", opt(fresh.map(|f| FRESH_VS_WASMTIME_TARGET - f), 2)),
            )
        }
    );
    let reuse = ratio(r, Config::NimbusReuse, Config::BareHyper, c_max);
    let _ = writeln!(
        o,
        "  run {n} instance reuse, nimbus reuse / bare hyper at c={c_max}: {} (target >= {REUSE_VS_BARE_TARGET:.2}): {}",
        opt(reuse, 2),
        verdict(
            reuse.map(|f| f >= REUSE_VS_BARE_TARGET),
            format!("{} of bare hyper's req/s", opt(reuse.map(|f| REUSE_VS_BARE_TARGET - f), 2))
        )
    );
    for c in [Config::NimbusFresh, Config::NimbusReuse] {
        let p99 = p99_ms(r, c, c_max);
        let _ = writeln!(
            o,
            "  run {n} p99 at c={c_max}, {} {} ms (target < {P99_TARGET_MS:.0} ms): {}",
            c.label(),
            opt(p99, 2),
            verdict(p99.map(|p| p < P99_TARGET_MS), format!("{} ms", opt(p99.map(|p| p - P99_TARGET_MS), 2)))
        );
    }
}

fn measured_json(m: &Measured) -> Value {
    let rss_json = json!({
        "idle": m.rss_idle.map(|r| r.rss_kib), "afterLoad": m.rss_loaded.map(|r| r.rss_kib),
        "peakAfterLoad": m.rss_loaded.map(|r| r.hwm_kib),
    });
    json!({
        "config": m.config.key(), "label": m.config.label(), "path": m.config.path(),
        "startMs": m.start_ms,
        "rssKiB": rss_json,
        "warmLatencyUs": stats(&m.warm_us).json(),
        "handlerDurationMs": (m.config.is_nimbus() && !m.handler_ms.is_empty()).then(|| stats(&m.handler_ms).json()),
        "coldFirstRequestUs": (!m.cold_us.is_empty()).then(|| json!({"stats": stats(&m.cold_us).json(), "samples": m.cold_us})),
        "throughput": m.tput.iter().map(crate::output::tput_json).collect::<Vec<_>>(),
    })
}

fn run_json(s: &Settings, r: &RunResult) -> Value {
    let c_max = top(s);
    let mut ratios = serde_json::Map::new();
    for cfg in Config::ALL {
        if r.get(cfg).is_none() {
            continue;
        }
        let per: Vec<Value> = s
            .concurrency
            .iter()
            .map(|&c| {
                json!({
                    "concurrency": c, "requestsPerSec": rps(r, cfg, c),
                    "vsBareHyper": ratio(r, cfg, Config::BareHyper, c),
                    "vsWasmtimeServe": ratio(r, cfg, Config::WasmtimeFresh, c),
                })
            })
            .collect();
        ratios.insert(cfg.key().into(), Value::Array(per));
    }
    let overhead = |c: Config| {
        let ov = overhead_us(r, c);
        json!({
            "warmP50Us": warm_p50_us(r, c), "bareHyperP50Us": warm_p50_us(r, Config::BareHyper),
            "handlerP50Us": handler_p50_us(r, c), "overheadUs": ov, "met": ov.map(|v| v <= OVERHEAD_TARGET_US),
        })
    };
    let fresh = ratio(r, Config::NimbusFresh, Config::WasmtimeFresh, c_max);
    let reuse = ratio(r, Config::NimbusReuse, Config::BareHyper, c_max);
    let added = cold_added_ms(r);
    json!({
        "run": r.run,
        "configs": r.configs.iter().map(measured_json).collect::<Vec<_>>(),
        "ratios": ratios,
        "targets": {
            "coldAdded": {"coldP50Ms": cold_p50_ms(r), "warmP50Ms": warm_p50_us(r, Config::NimbusFresh).map(|w| w / 1e3),
                          "addedMs": added, "met": added.map(|a| a <= COLD_ADDED_TARGET_MS)},
            "overhead": {"nimbus": overhead(Config::NimbusFresh), "nimbusReuse": overhead(Config::NimbusReuse)},
            "freshVsWasmtimeServe": {"concurrency": c_max, "ratio": fresh, "met": fresh.map(|f| f >= FRESH_VS_WASMTIME_TARGET)},
            "reuseVsBareHyper": {"concurrency": c_max, "ratio": reuse, "met": reuse.map(|f| f >= REUSE_VS_BARE_TARGET)},
            "p99": {
                "concurrency": c_max,
                "nimbusMs": p99_ms(r, Config::NimbusFresh, c_max), "nimbusReuseMs": p99_ms(r, Config::NimbusReuse, c_max),
                "met": p99_ms(r, Config::NimbusFresh, c_max).zip(p99_ms(r, Config::NimbusReuse, c_max)).map(|(a, b)| a < P99_TARGET_MS && b < P99_TARGET_MS),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{self, throughput};

    fn measured(config: Config, warm_us: f64, rps: u64, nimbus: bool) -> Measured {
        Measured {
            config,
            start_ms: 350.0,
            rss_idle: Some(Rss { rss_kib: 46_080, hwm_kib: 47_000 }),
            rss_loaded: if nimbus { Some(Rss { rss_kib: 57_344, hwm_kib: 59_000 }) } else { None },
            warm_us: (0..100).map(|i| warm_us + f64::from(i)).collect(),
            tput: vec![throughput(1, rps / 4, warm_us, 200.0), throughput(32, rps, warm_us * 12.0, 100.0)],
            handler_ms: if nimbus { vec![0.05, 0.06, 0.04] } else { Vec::new() },
            cold_us: if config == Config::NimbusFresh { vec![230.0, 250.0, 700.0] } else { Vec::new() },
        }
    }

    fn runs(with_wasmtime: bool) -> Vec<RunResult> {
        (1..=2)
            .map(|run| {
                let mut configs = vec![measured(Config::BareHyper, 25.0, 80_000, false)];
                if with_wasmtime {
                    configs.push(measured(Config::WasmtimeFresh, 230.0, 7_000, false));
                    configs.push(measured(Config::WasmtimeReuse, 150.0, 30_000, false));
                }
                configs.push(measured(Config::NimbusFresh, 190.0 + run as f64, 15_000, true));
                configs.push(measured(Config::NimbusReuse, 110.0, 40_000 + 1000 * run as u64, true));
                if let Some(t) = configs.get_mut(1).and_then(|m| m.tput.first_mut()) {
                    t.errors = 2;
                    t.first_error = Some("connection reset".into());
                }
                RunResult { run, configs }
            })
            .collect()
    }

    #[test]
    fn the_wasm_table_is_pinned() {
        let s = Settings::new(false, 2);
        let component = Path::new("/repo/hello.wasm");
        let wasmtime = Ok(PathBuf::from("/tools/bin/wasmtime"));
        golden::check("wasm-table.txt", &table(&s, &runs(true), component, 55_000, &wasmtime, Some("wasmtime 48.0.8")));
        let missing = Err(MISSING_WASMTIME.to_owned());
        golden::check("wasm-table-no-wasmtime.txt", &table(&s, &runs(false), component, 55_000, &missing, None));
    }

    #[test]
    fn the_wasm_run_json_is_pinned() {
        let s = Settings::new(true, 2);
        let runs = runs(true);
        let doc: Vec<Value> = runs.iter().map(|r| run_json(&s, r)).collect();
        golden::check("wasm-runs.json", &serde_json::to_string_pretty(&doc).unwrap());
    }
}
