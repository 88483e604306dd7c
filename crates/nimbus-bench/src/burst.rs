//! The burst scenario (BENCHMARKS.md § Targets): 1,000 requests at once to a deployed function
//! that has no warm instance and `max_instances = 8`. Every request must succeed, and the pool may
//! start at most 8 instances: the rest wait for one instead of each starting its own (no
//! thundering herd). Cold starts are read back two ways: the pool's counter in
//! `GET /v1/functions` and the `cold` flag of the function's invocation records
//! (`GET /v1/invocations`, with the admin token from DATA_DIR/admin.token).
//!
//! Functions: the Rust wasm hello (fresh instance per request) and, when node is installed, the
//! Node hello over the Runtime API.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::load::{self, stats};
use crate::model::{expect, BurstResult, MAX_INSTANCES, REQUESTS};
use crate::procs::Interpreters;
use crate::servers::{self, Launch, Ready};

/// How long the invocation records of the burst may take to be committed.
const RECORDS_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Args)]
pub struct BurstArgs {
    #[command(flatten)]
    pub common: crate::common::Common,
}

const NODE_HANDLER: &str = r#"// nimbus-bench burst: the Node hello.
exports.handler = async () => ({ statusCode: 200, headers: { 'content-type': 'application/json' }, body: '{"message":"Hello, bench!","runtime":"wasm"}' });
"#;

fn write_app(root: &Path, node: bool) -> Result<std::path::PathBuf> {
    let app = root.join("app-burst");
    let wasm = app.join("functions/wasm");
    std::fs::create_dir_all(&wasm).with_context(|| format!("cannot create {}", wasm.display()))?;
    std::fs::copy(crate::wasm::default_component(), wasm.join("hello.wasm")).context("cannot copy the component")?;
    let mut m = String::from("# Written by nimbus-bench burst; deleted when the run ends.\nname = \"bench-burst\"\n");
    write!(
        m,
        "\n[functions.burst-wasm]\nruntime = \"wasm\"\ncode = \"functions/wasm\"\ncomponent = \"hello.wasm\"\nmemory_mb = 32\ntimeout = \"30s\"\nmax_instances = {MAX_INSTANCES}\n"
    )?;
    let mut routes =
        String::from("\n[[routes]]\nmethod = \"GET\"\npath = \"/hello/bench\"\nfunction = \"burst-wasm\"\n");
    if node {
        let code = app.join("functions/node");
        std::fs::create_dir_all(&code)?;
        std::fs::write(code.join("index.js"), NODE_HANDLER)?;
        write!(
            m,
            "\n[functions.burst-node]\nruntime = \"node\"\nhandler = \"index.handler\"\ncode = \"functions/node\"\ntimeout = \"30s\"\nmax_instances = {MAX_INSTANCES}\n"
        )?;
        routes.push_str("\n[[routes]]\nmethod = \"GET\"\npath = \"/node/hello/bench\"\nfunction = \"burst-node\"\n");
    }
    m.push_str(&routes);
    std::fs::write(app.join("nimbus.toml"), m).context("cannot write the burst app manifest")?;
    Ok(app)
}

/// `REQUESTS` requests at once, each on its own connection (the client opens them together).
async fn fire(base: &str, path: &str) -> Result<(Vec<f64>, usize, Option<String>, f64)> {
    let client = load::client();
    let uri = load::uri(&format!("{base}{path}"))?;
    let exp = expect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let (client, uri, exp, barrier) = (client.clone(), uri.clone(), exp.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            load::timed(&client, &uri, &exp).await
        }));
    }
    let (mut lat, mut errors, mut first) = (Vec::with_capacity(REQUESTS), 0, None);
    for t in tasks {
        match t.await.context("a burst task failed")? {
            Ok(us) => lat.push(us / 1e3),
            Err(e) => {
                errors += 1;
                first.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok((lat, errors, first, t0.elapsed().as_secs_f64() * 1e3))
}

/// The function's invocation records: (how many, how many cold), once all `n` are committed.
async fn records(base: &str, token: &str, function: &str, n: usize) -> Result<(usize, usize)> {
    let client = load::client();
    let uri = load::uri(&format!("{base}/v1/invocations?function={function}&limit={}", n + 100))?;
    let t0 = Instant::now();
    loop {
        let v = load::get_json(&client, &uri, token).await?;
        let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
        let cold = list.iter().filter(|r| r.get("cold").and_then(Value::as_bool) == Some(true)).count();
        if list.len() >= n || t0.elapsed() > RECORDS_TIMEOUT {
            return Ok((list.len(), cold));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start `nimbus up` with the burst app, burst each function once, stop it.
pub async fn scenarios(
    nimbus: &Path,
    root: &Path,
    interps: Option<&Interpreters>,
    _quick: bool,
) -> Result<Vec<BurstResult>> {
    let node = interps.is_some();
    let app = write_app(root, node)?;
    let dir = root.join("burst");
    std::fs::create_dir_all(&dir)?;
    let mut cmd = tokio::process::Command::new(nimbus);
    cmd.arg("up").arg(&app).args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.join("data"));
    cmd.env("NIMBUS_LOG", "warn");
    if let Some(i) = interps {
        cmd.env("NIMBUS_NODE", &i.node).env("NIMBUS_PYTHON", &i.python);
    }
    // Ready = listening and answering /healthz: the burst functions must stay untouched.
    let launch = Launch {
        cmd,
        ready: Ready::StdoutUrl("listening on "),
        path: "/healthz".into(),
        expect: None,
        log: dir.join("nimbus.log"),
        timeout: Duration::from_secs(60),
        graceful: Some(Duration::from_secs(10)),
    };
    let server = servers::start(launch).await?;
    let out = run_on(&server, &dir, node).await;
    if out.is_err() {
        eprintln!("  nimbus log tail ({}):\n{}", server.log.display(), servers::tail(&server.log));
    }
    server.stop().await;
    out
}

async fn run_on(server: &servers::Server, dir: &Path, node: bool) -> Result<Vec<BurstResult>> {
    let token_path = dir.join("data/admin.token");
    let token =
        std::fs::read_to_string(&token_path).with_context(|| format!("cannot read {}", token_path.display()))?;
    let token = token.trim();
    let client = load::client();
    let functions = load::uri(&format!("{}/v1/functions", server.base))?;
    let mut targets = vec![("burst-wasm", "wasm", "/hello/bench")];
    if node {
        targets.push(("burst-node", "node", "/node/hello/bench"));
    }
    let mut out = Vec::new();
    for (function, runtime, path) in targets {
        let before = load::get_json(&client, &functions, token).await?;
        let (instances, cold) = crate::common::pool_counts(&before, function)?;
        if instances != 0 || cold != 0 {
            bail!("{function} already has {instances} instance(s) / {cold} cold start(s) before the burst");
        }
        eprintln!("  {function}: {REQUESTS} requests at once, max_instances = {MAX_INSTANCES}");
        let (latencies_ms, errors, first_error, wall_ms) = fire(&server.base, path).await?;
        let after = load::get_json(&client, &functions, token).await?;
        let (_, cold_starts_pool) = crate::common::pool_counts(&after, function)?;
        let (records, cold_records) = records(&server.base, token, function, REQUESTS).await?;
        out.push(BurstResult {
            function: function.to_owned(),
            runtime,
            requests: REQUESTS,
            ok: latencies_ms.len(),
            errors,
            first_error,
            latencies_ms,
            wall_ms,
            cold_starts_pool,
            records,
            cold_records,
        });
    }
    Ok(out)
}

/// `nimbus-bench burst` on its own: the scenario, a table, JSON; fails when a target is missed.
pub async fn run(args: BurstArgs) -> Result<()> {
    let nimbus = crate::procs::locate_nimbus(args.common.nimbus.clone())?;
    let interps = Interpreters::resolve().ok();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-burst-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut all = Vec::new();
    for run in 1..=args.common.runs {
        eprintln!("run {run}/{}", args.common.runs);
        let dir = root.join(format!("run-{run}"));
        std::fs::create_dir_all(&dir)?;
        all.push((run, scenarios(&nimbus, &dir, interps.as_ref(), args.common.quick).await?));
    }
    let mut text = String::new();
    for (run, results) in &all {
        for b in results {
            let l = stats(&b.latencies_ms);
            let _ = writeln!(
                text,
                "run {run} {:<11} {} requests, max_instances {MAX_INSTANCES}: cold starts {} (records {}), errors {}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, wall {:.0} ms: {}",
                b.function,
                b.requests,
                b.cold_starts_pool,
                b.cold_records,
                b.errors,
                l.p50,
                l.p99,
                l.max,
                b.wall_ms,
                b.problem().unwrap_or_else(|| "met".into())
            );
        }
    }
    print!("{text}");
    let doc = json!({
        "benchmark": "burst",
        "machine": crate::output::machine(),
        "runs": all.iter().map(|(run, r)| json!({"run": run, "bursts": r.iter().map(BurstResult::json).collect::<Vec<_>>()})).collect::<Vec<_>>(),
    });
    crate::output::save(&args.common.out("burst"), &doc, &root, args.common.keep)?;
    let problems: Vec<String> = all
        .iter()
        .flat_map(|(_, r)| r.iter().filter_map(|b| b.problem().map(|p| format!("{}: {p}", b.function))))
        .collect();
    if !problems.is_empty() {
        bail!("burst targets missed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
