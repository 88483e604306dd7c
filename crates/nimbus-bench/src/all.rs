//! `nimbus-bench all`: nimbus, the peers a user would pick instead, and the physical limit,
//! side by side in one run with identical load settings (judged by BENCHMARKS.md § Targets).
//!
//! Every configuration is its own server process (tree), answers `GET` with the same 44-byte
//! JSON body (`BODY`), and is measured the same way, one after another, the whole list repeated
//! `--runs` times (interleaved):
//! - **cold start**: spawn → first correct answer, `starts` times per run (nimbus: `nimbus up` with
//!   a fresh data dir, so it includes deploying the app and compiling the component); for nimbus
//!   also the first request to each of `cold` deployed, never-invoked functions;
//! - **memory** of the whole process tree: PSS summed over the server and its descendants idle
//!   (after one request) and right after the c=32 phase; and VmRSS summed the same way idle and
//!   the peak sampled every 100 ms during the c=32 phase (an upper bound: a page shared by
//!   several processes of the tree counts once for each);
//! - **throughput and latency** at concurrency 1 and 32 for a fixed duration (bounded in count),
//!   after a warm-up at the same concurrency: req/s, p50/p99/p999, CPU per request of the server
//!   tree and of the load generator.
//!
//! A peer that is not installed is reported as such (`scripts/bench-tools.sh` installs them);
//! one that is installed but fails to start or answers wrongly is reported as failed and makes
//! the command exit non-zero, after the results are written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::process::Command;

use crate::load::{self, Expect};
use crate::model::{
    expect, AllResults, AllSettings, Cfg, Kind, Measured, Outcome, RunAll, BODY, CONTENT_TYPE, HELLO_PATH,
};
use crate::procs::Interpreters;
use crate::servers::{self, Launch, Ready, Server};

/// nimbus wasm functions may run this many instances: above the highest concurrency.
const WASM_MAX_INSTANCES: u32 = 64;
/// nimbus node/python: one instance per core, as in `nimbus-bench process`.
const PROCESS_MAX_INSTANCES: u32 = 2;
/// nimbus node and python-async: invocations one instance runs at once (`concurrency`), as the
/// target allows ("with `concurrency` > 1"). Their handlers await in one event loop, so one
/// instance takes a c=32 phase whole and answers several invocations per wake-up. nimbus-python
/// (a sync `def`) stays at 1: its `concurrency` forks a worker process per slot, which a
/// CPU-bound hello on two cores only pays for (BENCHMARKS.md § In-instance concurrency).
const EVENT_LOOP_CONCURRENCY: u32 = 32;
/// Spawn → first good answer, for every server but the first cargo-lambda start (which may compile).
const START_TIMEOUT: Duration = Duration::from_secs(120);
const CARGO_LAMBDA_PREPARE_TIMEOUT: Duration = Duration::from_secs(900);
const SERVERLESS_VERSION: &str = "3.40.0";
const SERVERLESS_OFFLINE_VERSION: &str = "13.9.0";

#[derive(Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub common: crate::common::Common,
    /// Only these configurations (comma-separated keys, e.g. `bare-hyper,nimbus-wasm`); the
    /// others are still listed with their install status. Default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where to write the generated BENCHMARKS.md section: a file with the begin/end markers
    /// gets the block replaced, any other file gets it inserted (default: BENCHMARKS.md at the
    /// repo root for a full run, target/bench/all.md with --quick).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Where to write the PNG plots (default: docs/bench for a full run, target/bench/plots with
    /// --quick).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Leave out the burst scenario.
    #[arg(long)]
    pub no_burst: bool,
    /// The wasmtime CLI (default: $NIMBUS_BENCH_TOOLS/bin/wasmtime, else `wasmtime` on PATH).
    #[arg(long)]
    pub wasmtime: Option<PathBuf>,
}

/// Where the peers are (scripts/bench-tools.sh puts them in one directory).
pub struct Tools {
    pub dir: PathBuf,
    pub wasmtime: std::result::Result<PathBuf, String>,
    pub wasmtime_version: Option<String>,
    pub nginx: std::result::Result<PathBuf, String>,
    pub workerd: std::result::Result<PathBuf, String>,
    pub serverless: std::result::Result<PathBuf, String>,
    pub cargo_lambda: std::result::Result<PathBuf, String>,
}

const INSTALL_HINT: &str = "not installed: run scripts/bench-tools.sh";

fn tools_dir() -> PathBuf {
    match std::env::var_os("NIMBUS_BENCH_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/nimbus/bench-tools"))
            .unwrap_or_else(|| PathBuf::from(".cache/nimbus/bench-tools")),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
}

fn file_or(p: PathBuf, what: &str) -> std::result::Result<PathBuf, String> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{what} {INSTALL_HINT} (no {})", p.display()))
    }
}

impl Tools {
    pub fn find(wasmtime: Option<PathBuf>) -> Result<Tools> {
        let dir = tools_dir();
        let wasmtime = crate::wasm::find_wasmtime(wasmtime)?.map_err(|_| format!("wasmtime {INSTALL_HINT}"));
        let wasmtime_version = match &wasmtime {
            Ok(bin) => crate::wasm::wasmtime_version(bin).ok(),
            Err(_) => None,
        };
        let nginx = on_path("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .ok_or_else(|| format!("nginx {INSTALL_HINT} (apt-get install nginx-light)"));
        Ok(Tools {
            workerd: file_or(dir.join("npm/node_modules/@cloudflare/workerd-linux-64/bin/workerd"), "workerd"),
            serverless: file_or(dir.join("npm/node_modules/serverless/bin/serverless.js"), "serverless").and_then(
                |p| {
                    let offline = dir.join("npm/node_modules/serverless-offline/package.json");
                    if offline.is_file() {
                        Ok(p)
                    } else {
                        Err(format!("serverless-offline {INSTALL_HINT}"))
                    }
                },
            ),
            cargo_lambda: file_or(dir.join("pip/bin/cargo-lambda"), "cargo-lambda"),
            dir,
            wasmtime,
            wasmtime_version,
            nginx,
        })
    }

    /// Why `cfg` cannot run here, if it cannot.
    fn missing(&self, cfg: Cfg) -> Option<String> {
        let r = match cfg {
            Cfg::Nginx => &self.nginx,
            Cfg::WasmtimeServe | Cfg::WasmtimeServeReuse => &self.wasmtime,
            Cfg::Workerd => &self.workerd,
            Cfg::ServerlessOffline => &self.serverless,
            Cfg::CargoLambda => &self.cargo_lambda,
            _ => return None,
        };
        r.as_ref().err().cloned()
    }

    /// `--version` of each peer, for the report.
    pub fn versions(&self) -> Vec<(&'static str, String)> {
        let ask = |bin: &Path, args: &[&str]| -> String {
            std::process::Command::new(bin)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .ok()
                .map(|o| {
                    let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                    String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned()
                })
                .unwrap_or_default()
        };
        let mut v = Vec::new();
        v.push(("wasmtime", self.wasmtime_version.clone().unwrap_or_else(|| "not installed".into())));
        v.push(("nginx", self.nginx.as_ref().map_or("not installed".into(), |b| ask(b, &["-v"]))));
        v.push(("workerd", self.workerd.as_ref().map_or("not installed".into(), |b| ask(b, &["--version"]))));
        v.push((
            "serverless-offline",
            self.serverless.as_ref().map_or("not installed".into(), |_| {
                format!("serverless {SERVERLESS_VERSION} + serverless-offline {SERVERLESS_OFFLINE_VERSION}")
            }),
        ));
        v.push((
            "cargo-lambda",
            self.cargo_lambda.as_ref().map_or("not installed".into(), |b| ask(b, &["lambda", "--version"])),
        ));
        v
    }
}

/// The paths and files one run of `all` works with.
struct Ctx<'a> {
    s: &'a AllSettings,
    root: PathBuf,
    nimbus: PathBuf,
    interps: Option<Interpreters>,
    tools: &'a Tools,
    repo: PathBuf,
}

fn repo_root() -> PathBuf {
    crate::common::manifest_dir().join("../..")
}

fn put(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

const NODE_HANDLER: &str = r#"// nimbus-bench all: the Node hello (nimbus node and serverless-offline run this file).
const BODY = '{"message":"Hello, bench!","runtime":"wasm"}';
exports.handler = async () => ({ statusCode: 200, headers: { 'content-type': 'application/json' }, body: BODY });
"#;

const PYTHON_HANDLER: &str = r#""""nimbus-bench all: the Python hello."""

BODY = '{"message":"Hello, bench!","runtime":"wasm"}'


def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": BODY}
"#;

/// The same hello as an `async def`, the shape of the Node hello: with `concurrency` > 1 one
/// process runs its invocations together on its event loop (a sync handler forks a process per
/// slot instead).
const PYTHON_ASYNC_HANDLER: &str = r#""""nimbus-bench all: the Python hello, async."""

BODY = '{"message":"Hello, bench!","runtime":"wasm"}'


async def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": BODY}
"#;

const WORKER_JS: &str = r#"// nimbus-bench all: the workerd hello, an ES-module Worker.
const BODY = '{"message":"Hello, bench!","runtime":"wasm"}';
export default {
  async fetch() {
    return new Response(BODY, { headers: { 'content-type': 'application/json' } });
  },
};
"#;

const WORKERD_CAPNP: &str = r#"# nimbus-bench all: one ES-module Worker on one socket (the address is set with --socket-addr).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .helloWorker) ],
  sockets = [ (name = "http", address = "127.0.0.1:0", http = (), service = "main") ],
);

const helloWorker :Workerd.Worker = (
  modules = [ (name = "worker", esModule = embed "worker.js") ],
  compatibilityDate = "2024-09-23",
);
"#;

const SERVERLESS_YML: &str = r#"# nimbus-bench all: the Node hello behind serverless-offline (HTTP API v2 event).
service: nimbus-bench
frameworkVersion: '3'
provider:
  name: aws
  runtime: nodejs20.x
  region: us-east-1
functions:
  hello:
    handler: index.handler
    events:
      - httpApi:
          path: /hello/bench
          method: get
plugins:
  - serverless-offline
"#;

fn nginx_conf(dir: &Path, port: u16) -> String {
    let body = format!("    location / {{\n      default_type {CONTENT_TYPE};\n      return 200 '{BODY}';\n    }}");
    servers::nginx_conf("nginx answering the fixed body", dir, port, &body)
}

/// The nimbus app of one configuration: `hello` on /hello/bench and `cold` never-run functions
/// of the same kind on /cold/I.
fn write_nimbus_app(x: &Ctx<'_>, cfg: Cfg) -> Result<PathBuf> {
    let app = x.root.join(format!("app-{}", cfg.key()));
    let code = app.join("functions/hello");
    let node_extra = format!("handler = \"index.handler\"\nconcurrency = {EVENT_LOOP_CONCURRENCY}\n");
    let python_async_extra = format!("handler = \"handler.handler\"\nconcurrency = {EVENT_LOOP_CONCURRENCY}\n");
    let (runtime, extra, max) = match cfg {
        Cfg::NimbusWasm => ("wasm", "component = \"hello.wasm\"\nmemory_mb = 32\n", WASM_MAX_INSTANCES),
        Cfg::NimbusWasmReuse => {
            ("wasm", "component = \"hello.wasm\"\nmemory_mb = 32\ninstance_reuse = true\n", WASM_MAX_INSTANCES)
        }
        Cfg::NimbusWasmJs | Cfg::NimbusWasmPy => {
            ("wasm", "component = \"hello.wasm\"\nmemory_mb = 128\ninstance_reuse = true\n", WASM_MAX_INSTANCES)
        }
        Cfg::NimbusNode => ("node", node_extra.as_str(), PROCESS_MAX_INSTANCES),
        Cfg::NimbusPython => ("python", "handler = \"handler.handler\"\n", PROCESS_MAX_INSTANCES),
        Cfg::NimbusPythonAsync => ("python", python_async_extra.as_str(), PROCESS_MAX_INSTANCES),
        other => bail!("{} is not a nimbus configuration", other.key()),
    };
    std::fs::create_dir_all(&code).with_context(|| format!("cannot create {}", code.display()))?;
    let component = match cfg {
        Cfg::NimbusWasm | Cfg::NimbusWasmReuse => Some(crate::wasm::default_component()),
        Cfg::NimbusWasmJs => Some(x.repo.join("crates/nimbus-bench/guests/hello-js/hello.wasm")),
        Cfg::NimbusWasmPy => Some(x.repo.join("crates/nimbus-bench/guests/hello-py/hello.wasm")),
        _ => None,
    };
    if let Some(c) = component {
        std::fs::copy(&c, code.join("hello.wasm"))
            .with_context(|| format!("cannot copy {} (rebuild: scripts/build-wasm-fixtures.sh)", c.display()))?;
    }
    match cfg {
        Cfg::NimbusNode => put(&code.join("index.js"), NODE_HANDLER)?,
        Cfg::NimbusPython => put(&code.join("handler.py"), PYTHON_HANDLER)?,
        Cfg::NimbusPythonAsync => put(&code.join("handler.py"), PYTHON_ASYNC_HANDLER)?,
        _ => {}
    }
    let mut m = format!("# Written by nimbus-bench all; deleted when the run ends.\nname = \"bench-{}\"\n", cfg.key());
    let mut routes = String::new();
    let mut funcs = vec![("hello".to_owned(), HELLO_PATH.to_owned(), max)];
    // Never-invoked functions, `cold` per run (the Rust component greets by path: `cold_expect`).
    funcs.extend((0..x.s.cold * x.s.runs).map(|i| (format!("cold-{i}"), cold_path(i), 1)));
    for (name, path, max) in funcs {
        write!(
            m,
            "\n[functions.{name}]\nruntime = \"{runtime}\"\ncode = \"functions/hello\"\n{extra}timeout = \"10s\"\nmax_instances = {max}\nkeep_alive = \"10m\"\n"
        )?;
        write!(routes, "\n[[routes]]\nmethod = \"GET\"\npath = \"{path}\"\nfunction = \"{name}\"\n")?;
    }
    m.push_str(&routes);
    put(&app.join("nimbus.toml"), &m)?;
    Ok(app)
}

fn cold_path(i: usize) -> String {
    format!("/cold/{i}")
}

/// What the never-invoked function at `path` answers: the Rust component greets by path.
fn cold_expect(cfg: Cfg, path: &str) -> Expect {
    match cfg {
        Cfg::NimbusWasm | Cfg::NimbusWasmReuse => {
            Expect { body: crate::bare_hyper::greeting(path).into(), content_type: Some(CONTENT_TYPE) }
        }
        _ => expect(),
    }
}

/// The launch of one start of `cfg` (`n` numbers the starts, for file names).
fn launch(x: &Ctx<'_>, cfg: Cfg, n: &str) -> Result<Launch> {
    let dir = x.root.join(format!("{}-{n}", cfg.key()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join("server.log");
    let home = x.root.join("home");
    std::fs::create_dir_all(&home)?;
    let mut graceful = None;
    let mut timeout = START_TIMEOUT;
    let (cmd, ready) = match cfg {
        Cfg::BareHyper => servers::own_command(&dir, "bare-hyper")?,
        Cfg::Nginx => nginx_cmd(x, &dir)?,
        Cfg::WasmtimeServe | Cfg::WasmtimeServeReuse => wasmtime_cmd(x, cfg)?,
        Cfg::Workerd => workerd_cmd(x, &dir)?,
        Cfg::ServerlessOffline => serverless_cmd(x, &dir, &home)?,
        Cfg::CargoLambda => {
            if n == "prepare" {
                timeout = CARGO_LAMBDA_PREPARE_TIMEOUT;
            }
            cargo_lambda_cmd(x)?
        }
        nimbus => {
            graceful = Some(Duration::from_secs(10));
            nimbus_cmd(x, nimbus, &dir)?
        }
    };
    Ok(Launch { cmd, ready, path: cfg.path().to_owned(), expect: Some(expect()), log, timeout, graceful })
}

/// A peer's binary, or why it is not installed.
fn tool(t: &std::result::Result<PathBuf, String>) -> Result<&PathBuf> {
    t.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// nginx in the foreground with its config, temp dirs and logs in `dir`.
fn nginx_cmd(x: &Ctx<'_>, dir: &Path) -> Result<(Command, Ready)> {
    let bin = tool(&x.tools.nginx)?;
    let port = servers::free_port()?;
    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(t))?;
    }
    let conf = dir.join("nginx.conf");
    put(&conf, &nginx_conf(dir, port))?;
    let mut c = Command::new(bin);
    c.arg("-p").arg(dir).arg("-c").arg(&conf).arg("-e").arg(dir.join("error.log"));
    Ok((c, Ready::Port(port)))
}

/// `wasmtime serve` on the Rust component, with instance reuse for `WasmtimeServeReuse`.
fn wasmtime_cmd(x: &Ctx<'_>, cfg: Cfg) -> Result<(Command, Ready)> {
    let bin = tool(&x.tools.wasmtime)?;
    let mut c = Command::new(bin);
    c.arg("serve").args(["-S", "cli"]);
    if cfg == Cfg::WasmtimeServeReuse {
        c.args(["--max-instance-reuse-count", "1000000", "--idle-instance-timeout", "600s"]);
    }
    c.args(["--addr", "127.0.0.1:0"]).arg(crate::wasm::default_component());
    Ok((c, Ready::StderrUrl("Serving HTTP on ")))
}

/// workerd serving the hello Worker, its config written into `dir`.
fn workerd_cmd(x: &Ctx<'_>, dir: &Path) -> Result<(Command, Ready)> {
    let bin = tool(&x.tools.workerd)?;
    put(&dir.join("worker.js"), WORKER_JS)?;
    put(&dir.join("config.capnp"), WORKERD_CAPNP)?;
    let port = servers::free_port()?;
    let mut c = Command::new(bin);
    c.arg("serve").arg("config.capnp").arg("--socket-addr").arg(format!("http=127.0.0.1:{port}"));
    c.current_dir(dir);
    Ok((c, Ready::Port(port)))
}

/// `serverless offline` on the Node hello in `dir`, with dummy AWS credentials and no telemetry.
fn serverless_cmd(x: &Ctx<'_>, dir: &Path, home: &Path) -> Result<(Command, Ready)> {
    let sls = tool(&x.tools.serverless)?;
    let node = x.interps.as_ref().map(|i| i.node.clone()).context("node is not installed")?;
    put(&dir.join("index.js"), NODE_HANDLER)?;
    put(&dir.join("serverless.yml"), SERVERLESS_YML)?;
    let modules = x.tools.dir.join("npm/node_modules");
    let link = dir.join("node_modules");
    if !link.exists() {
        std::os::unix::fs::symlink(&modules, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), modules.display()))?;
    }
    let (port, lambda_port) = (servers::free_port()?, servers::free_port()?);
    let mut c = Command::new(node);
    c.arg(sls)
        .args(["offline", "start", "--useInProcess", "--noPrependStageInUrl", "--host", "127.0.0.1"])
        .arg("--httpPort")
        .arg(port.to_string())
        .arg("--lambdaPort")
        .arg(lambda_port.to_string())
        .current_dir(dir)
        .env("HOME", home)
        .env("SLS_TELEMETRY_DISABLED", "1")
        .env("SLS_NOTIFICATIONS_MODE", "off")
        .env("SLS_DEPRECATION_DISABLE", "*")
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCHDUMMY")
        .env("AWS_SECRET_ACCESS_KEY", "bench-dummy-secret")
        .env("AWS_REGION", "us-east-1");
    Ok((c, Ready::Port(port)))
}

/// `cargo lambda watch` on peers/lambda-hello, built into the tools dir.
fn cargo_lambda_cmd(x: &Ctx<'_>) -> Result<(Command, Ready)> {
    let bin = tool(&x.tools.cargo_lambda)?;
    let port = servers::free_port()?;
    let mut c = Command::new(bin);
    c.args(["lambda", "watch", "-A", "127.0.0.1", "-P"])
        .arg(port.to_string())
        .current_dir(x.repo.join("crates/nimbus-bench/peers/lambda-hello"))
        .env("CARGO_TARGET_DIR", x.tools.dir.join("lambda-target"));
    Ok((c, Ready::Port(port)))
}

/// `nimbus up` on the app of `cfg` with a fresh data dir in `dir`.
fn nimbus_cmd(x: &Ctx<'_>, cfg: Cfg, dir: &Path) -> Result<(Command, Ready)> {
    let app = write_nimbus_app(x, cfg)?;
    let mut c = Command::new(&x.nimbus);
    c.arg("up")
        .arg(&app)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("NIMBUS_LOG", "warn")
        // Compiled components are cached across starts (prepared once before the runs,
        // like cargo-lambda's build): a start measures deploying, not compiling.
        .env("NIMBUS_WASM_CACHE", x.root.join("wasm-cache"));
    if let Some(i) = &x.interps {
        c.env("NIMBUS_NODE", &i.node).env("NIMBUS_PYTHON", &i.python);
    }
    Ok((c, Ready::StdoutUrl("listening on ")))
}

/// nimbus: the first request to each never-invoked function of this run, checked through
/// `GET /v1/functions` (no instance before, exactly one cold start after).
async fn cold_first_requests(x: &Ctx<'_>, cfg: Cfg, server: &Server, run: usize) -> Result<Vec<f64>> {
    let data = server.log.parent().map(|d| d.join("data/admin.token")).context("no data dir")?;
    let token = std::fs::read_to_string(&data).with_context(|| format!("cannot read {}", data.display()))?;
    let token = token.trim();
    let client = load::client();
    let functions = load::uri(&format!("{}/v1/functions", server.base))?;
    let ids: Vec<usize> = ((run - 1) * x.s.cold..run * x.s.cold).collect();
    let before = load::get_json(&client, &functions, token).await?;
    for &i in &ids {
        let name = format!("cold-{i}");
        if crate::common::pool_counts(&before, &name)?.0 != 0 {
            bail!("{name} already has an instance, so its first request would not be a cold start");
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for &i in &ids {
        let path = cold_path(i);
        let uri = load::uri(&format!("{}{path}", server.base))?;
        out.push(load::timed(&client, &uri, &cold_expect(cfg, &path)).await? / 1e3);
    }
    let after = load::get_json(&client, &functions, token).await?;
    for &i in &ids {
        let name = format!("cold-{i}");
        let (_, cold) = crate::common::pool_counts(&after, &name)?;
        if cold != 1 {
            bail!("{name} counted {cold} cold starts for one request; expected exactly 1");
        }
    }
    Ok(out)
}

/// The load phases on a started server: idle memory, (nimbus) cold first requests, then
/// throughput at every concurrency, sampling the tree's RSS during the last one.
async fn measure_started(x: &Ctx<'_>, cfg: Cfg, server: &Server, run: usize) -> Result<Measured> {
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let rss_idle_kib = pid.and_then(crate::tree::tree_rss_kib);
    let pss_idle_kib = pid.and_then(crate::tree::tree_pss_kib);
    let procs_idle = pid.map_or(0, |p| crate::tree::with_descendants(p).len());
    let cold_first_ms =
        if cfg.kind() == Kind::Nimbus { cold_first_requests(x, cfg, server, run).await? } else { Vec::new() };
    let uri = load::uri(&server.url)?;
    let exp = expect();
    let mut tput = Vec::new();
    let mut rss_load_kib = None;
    let mut pss_load_kib = None;
    let mut procs_load = 0;
    let top = x.s.top();
    for c in x.s.concurrency {
        let done = Arc::new(AtomicBool::new(false));
        let sampler = sample_tree(pid, done.clone());
        let phase = async {
            let r = load::throughput_expect(&uri, &exp, pid, c, x.s.warmup, x.s.duration, x.s.max_requests).await;
            done.store(true, Ordering::Relaxed);
            r
        };
        let (t, (peak, procs)) = tokio::join!(phase, sampler);
        if c == top {
            rss_load_kib = peak;
            procs_load = procs;
            pss_load_kib = pid.and_then(crate::tree::tree_pss_kib);
        }
        tput.push(t?);
    }
    Ok(Measured {
        start_ms: Vec::new(),
        cold_first_ms,
        rss_idle_kib,
        procs_idle,
        rss_load_kib,
        procs_load,
        pss_idle_kib,
        pss_load_kib,
        tput,
    })
}

/// The peak RSS of `pid`'s tree (KiB) and its most processes, sampled every 100 ms until `done`.
async fn sample_tree(pid: Option<u32>, done: Arc<AtomicBool>) -> (Option<u64>, usize) {
    let mut peak: Option<u64> = None;
    let mut procs = 0;
    // Bounded: the phase itself is bounded in time.
    for _ in 0..100_000 {
        if done.load(Ordering::Relaxed) {
            break;
        }
        if let Some(p) = pid {
            if let Some(r) = crate::tree::tree_rss_kib(p) {
                peak = Some(peak.map_or(r, |q| q.max(r)));
            }
            procs = procs.max(crate::tree::with_descendants(p).len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (peak, procs)
}

/// `starts` cold starts of `cfg`; the last server stays up for the load phases.
async fn measure(x: &Ctx<'_>, cfg: Cfg, run: usize) -> Result<Measured> {
    let mut starts = Vec::with_capacity(x.s.starts);
    for i in 0..x.s.starts.saturating_sub(1) {
        let server = servers::start(launch(x, cfg, &format!("r{run}-s{i}"))?).await?;
        starts.push(server.start_ms);
        server.stop().await;
    }
    let server = servers::start(launch(x, cfg, &format!("r{run}-load"))?).await?;
    starts.push(server.start_ms);
    let result = measure_started(x, cfg, &server, run).await;
    if result.is_err() {
        eprintln!("    log tail ({}):\n{}", server.log.display(), servers::tail(&server.log));
    }
    server.stop().await;
    let mut m = result?;
    m.start_ms = starts;
    Ok(m)
}

fn selected(args: &AllArgs) -> Result<Vec<Cfg>> {
    if args.only.is_empty() {
        return Ok(Cfg::ALL.to_vec());
    }
    let mut out = Vec::new();
    for k in &args.only {
        let c = Cfg::from_key(k.trim()).with_context(|| {
            format!(
                "--only {k}: no such configuration; choose among {}",
                Cfg::ALL.iter().map(|c| c.key()).collect::<Vec<_>>().join(", ")
            )
        })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

pub async fn run(args: AllArgs) -> Result<()> {
    let s = AllSettings::new(args.common.quick, usize::try_from(args.common.runs)?, !args.no_burst);
    let chosen = selected(&args)?;
    let nimbus = crate::procs::locate_nimbus(args.common.nimbus.clone())?;
    let tools = Tools::find(args.wasmtime.clone())?;
    let interps = Interpreters::resolve().ok();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-all-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let started = crate::allreport::utc_now();
    let machine_before = crate::output::machine();
    eprintln!("nimbus-bench all: {} in {}", if s.quick { "quick run" } else { "full run" }, root.display());
    let x = Ctx { s: &s, root: root.clone(), nimbus: nimbus.clone(), interps, tools: &tools, repo: repo_root() };

    let mut skip = unavailable(&x, &chosen);
    prepare_cargo_lambda(&x, &chosen, &mut skip).await;
    let first_deploy = first_deploys(&x, &chosen, &mut skip).await;
    let runs = measure_runs(&x, &skip).await;
    let (burst, burst_error) = burst(&x).await;

    let results = AllResults {
        settings: s,
        selected: chosen,
        runs,
        burst,
        burst_error,
        machine_before,
        machine_after: crate::output::machine(),
        versions: tools.versions(),
        first_deploy,
        nimbus,
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        started,
    };
    let plots = write_reports(&args, &results, &root)?;

    // A wrong answer or a server that did not start fails the command, after the report.
    let failures = failures(&results, &plots);
    if !failures.is_empty() {
        bail!("{} problem(s):\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(())
}

/// Why each configuration cannot run, decided once: not selected, or not installed.
fn unavailable(x: &Ctx<'_>, chosen: &[Cfg]) -> Vec<(Cfg, Outcome)> {
    let mut skip: Vec<(Cfg, Outcome)> = Vec::new();
    for cfg in Cfg::ALL {
        if !chosen.contains(&cfg) {
            let why = match x.tools.missing(cfg) {
                Some(m) => format!("not selected (--only); {m}"),
                None => "not selected (--only)".to_owned(),
            };
            skip.push((cfg, Outcome::Missing(why)));
        } else if let Some(m) = x.tools.missing(cfg) {
            eprintln!("  {}: {m}", cfg.key());
            skip.push((cfg, Outcome::Missing(m)));
        } else if matches!(cfg, Cfg::NimbusNode | Cfg::NimbusPython | Cfg::NimbusPythonAsync | Cfg::ServerlessOffline)
            && x.interps.is_none()
        {
            skip.push((cfg, Outcome::Missing("node or python3 is not installed".into())));
        }
    }
    skip
}

/// The first `cargo lambda watch` builds the function (minutes, once): not a cold start, so it
/// happens before the runs; if it fails, cargo-lambda is skipped as failed.
async fn prepare_cargo_lambda(x: &Ctx<'_>, chosen: &[Cfg], skip: &mut Vec<(Cfg, Outcome)>) {
    if !chosen.contains(&Cfg::CargoLambda) || x.tools.missing(Cfg::CargoLambda).is_some() {
        return;
    }
    eprintln!("  cargo-lambda: preparing (builds the function the first time)");
    match launch(x, Cfg::CargoLambda, "prepare") {
        Ok(l) => match servers::start(l).await {
            Ok(server) => server.stop().await,
            Err(e) => skip.push((Cfg::CargoLambda, Outcome::Failed(format!("{e:#}")))),
        },
        Err(e) => skip.push((Cfg::CargoLambda, Outcome::Failed(format!("{e:#}")))),
    }
}

/// Each wasm component is compiled once (cache empty), before the runs: its first deploy, ms.
/// A configuration whose first deploy fails is skipped as failed.
async fn first_deploys(x: &Ctx<'_>, chosen: &[Cfg], skip: &mut Vec<(Cfg, Outcome)>) -> Vec<(Cfg, f64)> {
    let mut first_deploy: Vec<(Cfg, f64)> = Vec::new();
    let mut compiled = Vec::new();
    for cfg in [Cfg::NimbusWasm, Cfg::NimbusWasmReuse, Cfg::NimbusWasmJs, Cfg::NimbusWasmPy] {
        let component = match cfg {
            Cfg::NimbusWasmJs => "js",
            Cfg::NimbusWasmPy => "py",
            _ => "rust",
        };
        if !chosen.contains(&cfg) || compiled.contains(&component) {
            continue;
        }
        compiled.push(component);
        eprintln!("  {}: first deploy (compiles the component into the cache)", cfg.key());
        match launch(x, cfg, "prepare") {
            Ok(l) => match servers::start(l).await {
                Ok(server) => {
                    first_deploy.push((cfg, server.start_ms));
                    server.stop().await;
                }
                Err(e) => skip.push((cfg, Outcome::Failed(format!("{e:#}")))),
            },
            Err(e) => skip.push((cfg, Outcome::Failed(format!("{e:#}")))),
        }
    }
    first_deploy
}

/// Every run over every configuration (skipped ones keep their reason in each run).
async fn measure_runs(x: &Ctx<'_>, skip: &[(Cfg, Outcome)]) -> Vec<RunAll> {
    let s = x.s;
    let mut runs = Vec::new();
    let measured = Cfg::ALL.iter().filter(|c| !skip.iter().any(|(k, _)| k == *c)).count();
    let progress = crate::progress::Progress::new((s.runs * measured) as u64);
    for run in 1..=s.runs {
        progress.line(&format!("run {run}/{}", s.runs));
        let mut results = Vec::new();
        for cfg in Cfg::ALL {
            if let Some((_, o)) = skip.iter().find(|(c, _)| *c == cfg) {
                let copy = match o {
                    Outcome::Missing(m) => Outcome::Missing(m.clone()),
                    Outcome::Failed(m) => Outcome::Failed(m.clone()),
                    Outcome::Measured(_) => continue,
                };
                results.push((cfg, copy));
                continue;
            }
            progress.step(&format!("  {}", cfg.key()));
            let outcome = match measure(x, cfg, run).await {
                Ok(m) => Outcome::Measured(m),
                Err(e) => {
                    progress.line(&format!("  {} FAILED: {e:#}", cfg.key()));
                    Outcome::Failed(format!("{e:#}"))
                }
            };
            progress.done_one();
            results.push((cfg, outcome));
        }
        runs.push(RunAll { run, results });
    }
    progress.finish();
    runs
}

/// The burst scenario, unless `--no-burst`: its results, or why it failed.
async fn burst(x: &Ctx<'_>) -> (Vec<crate::model::BurstResult>, Option<String>) {
    if !x.s.burst {
        return (Vec::new(), None);
    }
    eprintln!("burst");
    match crate::burst::scenarios(&x.nimbus, &x.root, x.interps.as_ref(), x.s.quick).await {
        Ok(b) => (b, None),
        Err(e) => {
            eprintln!("  burst FAILED: {e:#}");
            (Vec::new(), Some(format!("{e:#}")))
        }
    }
}

/// The plots, the markdown block (printed and written) and the JSON document; the plots
/// written, or why none were.
fn write_reports(
    args: &AllArgs,
    results: &AllResults,
    root: &Path,
) -> Result<std::result::Result<Vec<PathBuf>, String>> {
    let repo = repo_root();
    let (md_default, plots_default) = if results.settings.quick {
        (PathBuf::from("target/bench/all.md"), PathBuf::from("target/bench/plots"))
    } else {
        (repo.join("BENCHMARKS.md"), repo.join("docs/bench"))
    };
    let markdown = args.markdown.clone().unwrap_or(md_default);
    let plots_dir = args.plots.clone().unwrap_or(plots_default);
    let plots = crate::plots::write_all(results, &plots_dir, results.settings.quick);
    let block = crate::allreport::markdown(results, &markdown, &plots);
    print!("{block}");
    crate::allreport::write_markdown(&markdown, &block)?;
    println!("markdown written to {}", markdown.display());
    let doc = crate::allreport::json(results, &plots);
    crate::output::save(&args.common.out("all"), &doc, root, args.common.keep)?;
    Ok(plots)
}

/// What makes the command fail: a configuration that failed or answered wrongly, a burst that
/// failed or missed its target, and (on a full run) plots that could not be written.
fn failures(results: &AllResults, plots: &std::result::Result<Vec<PathBuf>, String>) -> Vec<String> {
    let mut failures = Vec::new();
    for r in &results.runs {
        for (cfg, o) in &r.results {
            match o {
                Outcome::Failed(e) => failures.push(format!("run {}: {} failed: {e}", r.run, cfg.key())),
                Outcome::Measured(m) if m.errors() > 0 => {
                    let first = m.tput.iter().find_map(|t| t.first_error.clone()).unwrap_or_default();
                    failures.push(format!(
                        "run {}: {} answered {} requests wrongly: {first}",
                        r.run,
                        cfg.key(),
                        m.errors()
                    ))
                }
                _ => {}
            }
        }
    }
    if let Some(e) = &results.burst_error {
        failures.push(format!("burst: {e}"));
    }
    for b in &results.burst {
        if let Some(problem) = b.problem() {
            failures.push(format!("burst {}: {problem}", b.function));
        }
    }
    if let Err(e) = plots {
        if !results.settings.quick {
            failures.push(format!("plots: {e}"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::results;

    #[test]
    fn wrong_answers_failed_configs_missed_bursts_and_missing_plots_fail_the_command() {
        let r = results(false);
        let no_plots = Err("no font".to_owned());
        assert_eq!(
            failures(&r, &no_plots),
            [
                "run 1: nimbus-python answered 3 requests wrongly: GET /hello/bench answered 500",
                "run 1: workerd failed: did not start\nsecond line",
                "run 2: nimbus-python answered 3 requests wrongly: GET /hello/bench answered 500",
                "run 2: workerd failed: did not start\nsecond line",
                "burst burst-node: 2 of 1000 requests failed (first: timed out)",
                "plots: no font",
            ]
        );
        // A quick run may go without plots (no font installed is not a failure there).
        let mut quick = results(true);
        quick.runs.clear();
        assert!(failures(&quick, &no_plots).is_empty());
    }
}
