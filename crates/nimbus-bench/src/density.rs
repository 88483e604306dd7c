//! `nimbus-bench density`: how much memory deployed functions and warm wasm instances cost.
//! One `nimbus up` with a one-function app (the baseline), then one with 10,000 wasm functions
//! sharing one small component (`examples/wasm-hello`, `instance_reuse = true`, a route each);
//! 1,000 of them are invoked once, so each keeps a warm instance. Reported: nimbus's RSS at
//! each step, bytes per deployed function and per warm instance, the time to deploy. Every
//! step is bounded in time; every answer is checked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::common::Common;
use crate::load::{self, Expect};
use crate::procs::Nimbus;

/// BENCHMARKS.md § Targets: 10,000 deployed functions and 1,000 warm wasm instances in < 1 GiB.
pub const RSS_TARGET_MIB: f64 = 1024.0;

#[derive(Args)]
pub struct DensityArgs {
    #[command(flatten)]
    pub common: Common,
    /// Functions to deploy (default 10,000; --quick: 1,000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub functions: Option<u64>,
    /// Warm instances to hold, each of a distinct function (default 1,000; --quick: 100).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub instances: Option<u64>,
}

/// An app of `n` wasm functions `d0` … sharing one component, each with route `/hello/dI`.
fn write_app(root: &Path, component: &Path, n: usize, tag: &str) -> Result<PathBuf> {
    let app = root.join(format!("app-{tag}"));
    let code = app.join("functions/hello");
    std::fs::create_dir_all(&code).with_context(|| format!("cannot create {}", code.display()))?;
    std::fs::copy(component, code.join("hello.wasm"))
        .with_context(|| format!("cannot copy {} into the app", component.display()))?;
    let mut m =
        String::from("# Written by nimbus-bench density; deleted when the run ends.\nname = \"bench-density\"\n");
    let mut routes = String::new();
    for i in 0..n {
        write!(
            m,
            "\n[functions.d{i}]\nruntime = \"wasm\"\ncode = \"functions/hello\"\ncomponent = \"hello.wasm\"\nmemory_mb = 32\ntimeout = \"5s\"\nmax_instances = 1\ninstance_reuse = true\n"
        )?;
        write!(routes, "\n[[routes]]\nmethod = \"GET\"\npath = \"/hello/d{i}\"\nfunction = \"d{i}\"\n")?;
    }
    m.push_str(&routes);
    std::fs::write(app.join("nimbus.toml"), m).context("cannot write the app manifest")?;
    Ok(app)
}

/// VmRSS and VmHWM of `pid`, MiB.
fn rss_mib(pid: Option<u32>) -> Result<(f64, f64)> {
    let pid = pid.context("nimbus has exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("cannot read nimbus's status")?;
    let field = |name: &str| -> Option<f64> {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())?
            .parse()
            .ok()?;
        Some(kib as f64 / 1024.0)
    };
    Ok((field("VmRSS:").context("no VmRSS")?, field("VmHWM:").context("no VmHWM")?))
}

/// Warm instances over all functions, from `GET /v1/functions`.
async fn instances(nimbus: &Nimbus) -> Result<usize> {
    let client = load::client();
    let v = load::get_json(&client, &load::uri(&format!("{}/v1/functions", nimbus.url))?, &nimbus.token).await?;
    let list = v.as_array().context("GET /v1/functions is not a list")?;
    let mut n = 0;
    for f in list {
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        n += crate::common::pool_counts(&v, name)?.0;
    }
    Ok(n)
}

/// Invoke `d0` … `d{count-1}` once each, 16 at a time, checking every answer.
async fn warm(nimbus: &Nimbus, count: usize) -> Result<()> {
    let client = load::client();
    let mut next = 0;
    while next < count {
        let mut set = tokio::task::JoinSet::new();
        let end = count.min(next + 16);
        for i in next..end {
            let (client, path) = (client.clone(), format!("/hello/d{i}"));
            let uri = load::uri(&format!("{}{path}", nimbus.url))?;
            set.spawn(async move {
                let want =
                    Expect { body: crate::bare_hyper::greeting(&path).into(), content_type: Some("application/json") };
                load::fetch(&client, &uri, &want).await
            });
        }
        next = end;
        while let Some(r) = set.join_next().await {
            r.context("a warming request failed")??;
        }
    }
    Ok(())
}

/// One `nimbus up` of `app`: RSS after listening, and after warming `warm` instances.
struct Step {
    start_ms: f64,
    rss_deployed: (f64, f64),
    warm_ms: f64,
    instances: usize,
    rss_warm: (f64, f64),
}

async fn step(bin: &Path, app: &Path, root: &Path, (tag, warm_n): (&str, usize), cache: &Path) -> Result<Step> {
    let data = root.join(format!("data-{tag}"));
    let log = root.join(format!("nimbus-{tag}.log"));
    let pool = (warm_n + 64).to_string();
    let env =
        [("NIMBUS_LOG", Path::new("warn")), ("NIMBUS_WASM_INSTANCES", Path::new(&pool)), ("NIMBUS_WASM_CACHE", cache)];
    let started = Instant::now();
    let nimbus = Nimbus::launch(bin, app, &data, &log, &env).await?;
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_deployed = rss_mib(nimbus.pid())?;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(300), warm(&nimbus, warm_n))
        .await
        .with_context(|| format!("warming {warm_n} instances took over 300 s"))??;
    let warm_ms = started.elapsed().as_secs_f64() * 1000.0;
    let instances = instances(&nimbus).await?;
    let rss_warm = rss_mib(nimbus.pid())?;
    nimbus.stop().await?;
    ensure!(instances >= warm_n, "{warm_n} functions were invoked but only {instances} instances are warm");
    Ok(Step { start_ms, rss_deployed, warm_ms, instances, rss_warm })
}

pub async fn run(args: DensityArgs) -> Result<()> {
    let quick = args.common.quick;
    let n = usize::try_from(args.functions.unwrap_or(if quick { 1_000 } else { 10_000 }))?;
    let w = usize::try_from(args.instances.unwrap_or(if quick { 100 } else { 1_000 }))?;
    if w > n {
        bail!("--instances {w} is more than --functions {n}: each warm instance is of its own function");
    }
    let bin = crate::procs::locate_nimbus(args.common.nimbus.clone())?;
    let component = crate::wasm::default_component();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-density-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // A shared compile cache: both servers load the compiled component, neither compiles it twice.
    let cache = root.join("wasm-cache");
    eprintln!("nimbus-bench density: {n} functions, {w} warm instances, in {}", root.display());
    let base_app = write_app(&root, &component, 1, "base")?;
    let base = step(&bin, &base_app, &root, ("base", 1), &cache).await?;
    let app = write_app(&root, &component, n, "big")?;
    let big = step(&bin, &app, &root, ("big", w), &cache).await?;
    report(&args, &root, n, w, &base, &big)
}

fn report(args: &DensityArgs, root: &Path, n: usize, w: usize, base: &Step, big: &Step) -> Result<()> {
    let per_fn = (big.rss_deployed.0 - base.rss_deployed.0) * 1_048_576.0 / (n.saturating_sub(1).max(1)) as f64;
    let per_inst = (big.rss_warm.0 - big.rss_deployed.0) * 1_048_576.0 / w.max(1) as f64;
    let met = big.rss_warm.0 < RSS_TARGET_MIB && big.rss_warm.1 < RSS_TARGET_MIB;
    println!("\n## Density ({n} wasm functions deployed, {w} warm instances)\n");
    println!(
        "| app | start → listening | RSS deployed (MiB) | warm-up | instances | RSS warm (MiB) | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in [("1 function", base), (&*format!("{n} functions"), big)] {
        println!(
            "| {name} | {:.0} ms | {:.1} | {:.0} ms | {} | {:.1} | {:.1} |",
            s.start_ms, s.rss_deployed.0, s.warm_ms, s.instances, s.rss_warm.0, s.rss_warm.1
        );
    }
    println!("\nper deployed function {per_fn:.0} bytes; per warm instance {per_inst:.0} bytes");
    println!(
        "target: {n} functions + {w} warm instances < {RSS_TARGET_MIB:.0} MiB: {} ({:.1} MiB, peak {:.1})",
        if met { "met" } else { "missed" },
        big.rss_warm.0,
        big.rss_warm.1
    );
    let j = |s: &Step| {
        json!({"startMs": s.start_ms, "rssDeployedMib": s.rss_deployed.0, "warmMs": s.warm_ms,
               "instances": s.instances, "rssWarmMib": s.rss_warm.0, "peakRssMib": s.rss_warm.1})
    };
    let doc = json!({
        "benchmark": "density", "functions": n, "warmInstances": w, "machine": crate::output::machine(),
        "baseline": j(base), "big": j(big), "bytesPerFunction": per_fn, "bytesPerInstance": per_inst,
        "targetMib": RSS_TARGET_MIB, "met": met,
    });
    crate::output::save(&args.common.out("density"), &doc, root, args.common.keep)
}
