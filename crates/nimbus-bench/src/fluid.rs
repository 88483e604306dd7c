//! In-instance concurrency (issue 15 § 1, BENCHMARKS.md § Targets): an I/O-bound Node function
//! (it awaits a 100 ms upstream that the bench itself serves on loopback) at a fixed arrival
//! rate, deployed twice in one app: `concurrency = 100` and `concurrency = 1`. Reported side by
//! side: instances started, requests served, billed GB-seconds (`/v1/usage`), and their ratio.
//! Targets: `concurrency = 100` uses ≤ 2 instances and ≥ 10× fewer GB-seconds.
//!
//! nimbus runs with `--insecure-no-sandbox`: the sandbox's egress proxy lets functions reach
//! public hosts only, and the upstream is on loopback. The load is open-loop (a request every
//! 1/rate s, each on its own task), so a slow configuration cannot slow the arrivals down.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::load;
use crate::servers::{self, Launch, Ready};

#[derive(Args)]
pub struct FluidArgs {
    #[command(flatten)]
    pub common: crate::common::Common,
    /// Requests per second sent to each configuration.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub rate: u64,
    /// Seconds of load per configuration (bounded).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub seconds: u64,
}

/// The upstream's delay: the function is waiting on I/O this long.
const UPSTREAM_DELAY: Duration = Duration::from_millis(100);

const HANDLER: &str = r#"// nimbus-bench fluid: awaits the bench's 100 ms upstream.
const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1000 });
exports.handler = () => new Promise((resolve, reject) => {
  http.get(process.env.UPSTREAM, { agent }, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => resolve({ statusCode: 200, body }));
  }).on('error', reject);
});
"#;

/// One configuration's figures.
struct Outcome {
    concurrency: u32,
    sent: usize,
    ok: usize,
    instances: u64,
    gb_seconds: f64,
    invocation_gb_seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Outcome {
    fn json(&self) -> Value {
        json!({
            "concurrency": self.concurrency, "sent": self.sent, "ok": self.ok, "instances": self.instances,
            "gbSeconds": self.gb_seconds, "invocationGbSeconds": self.invocation_gb_seconds,
            "p50Ms": self.p50_ms, "p99Ms": self.p99_ms,
        })
    }
}

fn write_app(root: &Path, upstream: &str) -> Result<std::path::PathBuf> {
    let app = root.join("app-fluid");
    let code = app.join("functions/io");
    std::fs::create_dir_all(&code).with_context(|| format!("cannot create {}", code.display()))?;
    std::fs::write(code.join("index.js"), HANDLER)?;
    let mut m = String::from("# Written by nimbus-bench fluid; deleted when the run ends.\nname = \"bench-fluid\"\n");
    for (name, concurrency, max_instances) in [("io-c100", 100, 10), ("io-c1", 1, 200)] {
        m.push_str(&format!(
            "\n[functions.{name}]\nruntime = \"node\"\nhandler = \"index.handler\"\ncode = \"functions/io\"\nmemory_mb = 128\ntimeout = \"30s\"\nconcurrency = {concurrency}\nmax_instances = {max_instances}\nenv = {{ UPSTREAM = \"{upstream}\" }}\n\n[[routes]]\nmethod = \"GET\"\npath = \"/{name}\"\nfunction = \"{name}\"\n"
        ));
    }
    std::fs::write(app.join("nimbus.toml"), m).context("cannot write the fluid app manifest")?;
    Ok(app)
}

/// Serve the 100 ms upstream on loopback until the task is aborted; returns its URL.
async fn upstream() -> Result<(String, tokio::task::JoinHandle<()>)> {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind the upstream")?;
    let url = format!("http://{}/", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    tokio::time::sleep(UPSTREAM_DELAY).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from_static(b"upstream"),
                    )))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    Ok((url, task))
}

/// Open-loop load: `rate` requests per second for `seconds`; latencies of the good answers (ms).
async fn open_loop(url: &str, rate: u64, seconds: u64) -> Result<(usize, Vec<f64>)> {
    let client = load::client();
    let uri = load::uri(url)?;
    let total = usize::try_from(rate * seconds)?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let (client, uri) = (client.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match load::get(&client, &uri, None).await {
                Ok((s, _, _)) if s.is_success() => Some(t0.elapsed().as_secs_f64() * 1e3),
                _ => None,
            }
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        if let Some(ms) = t.await.context("a load task failed")? {
            lat.push(ms);
        }
    }
    Ok((total, lat))
}

/// Billed and per-invocation GB-seconds of `function` once `/v1/usage` counts `n` requests.
async fn usage(base: &str, token: &str, function: &str, n: usize) -> Result<(f64, f64)> {
    let client = load::client();
    let uri = load::uri(&format!("{base}/v1/usage?since=1h"))?;
    let t0 = Instant::now();
    loop {
        let v = load::get_json(&client, &uri, token).await?;
        let f = v
            .get("functions")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|f| f.get("function").and_then(Value::as_str) == Some(function)))
            .cloned()
            .unwrap_or_default();
        let num = |k: &str| f.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let requests = f.get("requests").and_then(Value::as_u64).unwrap_or(0);
        if requests >= n as u64 || t0.elapsed() > Duration::from_secs(20) {
            return Ok((num("gbSeconds"), num("invocationGbSeconds")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_on(server: &servers::Server, token: &str, args: &FluidArgs) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for (function, concurrency) in [("io-c100", 100), ("io-c1", 1)] {
        eprintln!("  {function}: {} req/s for {} s", args.rate, args.seconds);
        let (sent, lat) = open_loop(&format!("{}/{function}", server.base), args.rate, args.seconds).await?;
        let functions =
            load::get_json(&load::client(), &load::uri(&format!("{}/v1/functions", server.base))?, token).await?;
        let (_, instances) = crate::common::pool_counts(&functions, function)?;
        let (gb_seconds, invocation_gb_seconds) = usage(&server.base, token, function, lat.len()).await?;
        let s = load::stats(&lat);
        out.push(Outcome {
            concurrency,
            sent,
            ok: lat.len(),
            instances,
            gb_seconds,
            invocation_gb_seconds,
            p50_ms: s.p50,
            p99_ms: s.p99,
        });
    }
    Ok(out)
}

/// `nimbus-bench fluid`: both configurations in one nimbus, a table, JSON; fails when a target
/// is missed.
pub async fn run(args: FluidArgs) -> Result<()> {
    let nimbus = crate::procs::locate_nimbus(args.common.nimbus.clone())?;
    let interps = crate::procs::Interpreters::resolve().context("the fluid bench needs node")?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-fluid-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let (upstream_url, upstream_task) = upstream().await?;
    let app = write_app(&root, &upstream_url)?;
    let mut cmd = tokio::process::Command::new(&nimbus);
    cmd.arg("up").arg(&app).args(["--listen", "127.0.0.1:0", "--insecure-no-sandbox", "--data-dir"]);
    cmd.arg(root.join("data")).env("NIMBUS_LOG", "warn").env("NIMBUS_NODE", &interps.node);
    let launch = Launch {
        cmd,
        ready: Ready::StdoutUrl("listening on "),
        path: "/healthz".into(),
        expect: None,
        log: root.join("nimbus.log"),
        timeout: Duration::from_secs(60),
        graceful: Some(Duration::from_secs(10)),
    };
    let server = servers::start(launch).await?;
    let token = std::fs::read_to_string(root.join("data/admin.token")).context("cannot read the admin token")?;
    let outcome = run_on(&server, token.trim(), &args).await;
    if outcome.is_err() {
        eprintln!("  nimbus log tail ({}):\n{}", server.log.display(), servers::tail(&server.log));
    }
    server.stop().await;
    upstream_task.abort();
    let outcome = outcome?;
    report(&args, &outcome, &root)
}

fn report(args: &FluidArgs, outcome: &[Outcome], root: &Path) -> Result<()> {
    for o in outcome {
        println!(
            "concurrency {:>3}: {}/{} ok, {} instance(s), {:.2} GB-s billed ({:.2} per invocation), p50 {:.0} ms, p99 {:.0} ms",
            o.concurrency, o.ok, o.sent, o.instances, o.gb_seconds, o.invocation_gb_seconds, o.p50_ms, o.p99_ms
        );
    }
    let (Some(c100), Some(c1)) = (outcome.first(), outcome.get(1)) else { bail!("a configuration did not run") };
    let saving = c1.gb_seconds / c100.gb_seconds.max(f64::MIN_POSITIVE);
    println!("concurrency 100 vs 1: {} vs {} instances, {saving:.1}x fewer GB-seconds", c100.instances, c1.instances);
    let doc = json!({
        "benchmark": "fluid",
        "machine": crate::output::machine(),
        "rate": args.rate, "seconds": args.seconds,
        "configurations": outcome.iter().map(Outcome::json).collect::<Vec<_>>(),
        "gbSecondsRatio": saving,
    });
    crate::output::save(&args.common.out("fluid"), &doc, root, args.common.keep)?;
    let mut problems = Vec::new();
    if c100.instances > 2 {
        problems.push(format!("concurrency = 100 used {} instances (target ≤ 2)", c100.instances));
    }
    if saving < 10.0 {
        problems.push(format!("concurrency = 100 billed {saving:.1}x fewer GB-seconds (target ≥ 10x)"));
    }
    // The reference (concurrency = 1) may fail requests: one process per request in flight
    // is what the target measures against; its failures are reported, not judged.
    if c100.ok < c100.sent {
        problems.push(format!("concurrency = 100: {} of {} requests failed", c100.sent - c100.ok, c100.sent));
    }
    if !problems.is_empty() {
        bail!("fluid targets missed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
