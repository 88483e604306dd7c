//! `nimbus-bench process`: the process runtimes (node, python) through nimbus against bare
//! `node`/`python3` HTTP servers calling the same handler: cold start, warm latency and
//! throughput; and nimbus sandboxed against nimbus `--insecure-no-sandbox` (what the sandbox
//! costs). Beside them, the bare server behind `nimbus-bench bare-relay`: one process hop and
//! nothing else, the floor under nimbus's warm overhead. The results and their report are in
//! `report`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::common::{pool_counts, Common, Settings};
use crate::fixture::{self, Fixture, Lang};
use crate::load::{self, HttpClient, Throughput};
use crate::output;
use crate::procs::{self, Bare, Interpreters, Nimbus};
use crate::report::{self, ConfigResult, RunResult, System};
use crate::servers;

#[derive(Args)]
pub struct ProcessArgs {
    #[command(flatten)]
    pub common: Common,
}

pub async fn run(args: ProcessArgs) -> Result<()> {
    let args = args.common;
    let s = Settings::new(args.quick, usize::try_from(args.runs)?);
    let nimbus_bin = procs::locate_nimbus(args.nimbus.clone())?;
    let interps = Interpreters::resolve()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-{}-{stamp}", std::process::id()));
    let fx = fixture::write(&root, s.cold * s.runs)?;
    let machine_before = output::machine();
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
    let machine_after = output::machine();
    let doc = report::json(&s, &runs, &interps, &nimbus_bin, machine_before, machine_after);
    print!("{}", report::table(&s, &runs));
    output::save(&args.out("process"), &doc, &root, args.keep)
}

async fn measure(s: &Settings, nimbus_bin: &Path, fx: &Fixture, interps: &Interpreters) -> Result<Vec<RunResult>> {
    let sandboxed = Nimbus::start(nimbus_bin, fx, interps, true).await?;
    let plain = Nimbus::start(nimbus_bin, fx, interps, false).await?;
    let out = measure_runs(s, [&sandboxed, &plain], fx, interps).await;
    if out.is_err() {
        for n in [&sandboxed, &plain] {
            eprintln!("nimbus log tail ({}):\n{}", n.log.display(), procs::tail(&n.log));
        }
    }
    sandboxed.stop().await?;
    plain.stop().await?;
    out
}

/// Every run: per language, nimbus sandboxed, nimbus `--insecure-no-sandbox`, then bare.
async fn measure_runs(
    s: &Settings,
    nimbus: [&Nimbus; 2],
    fx: &Fixture,
    interps: &Interpreters,
) -> Result<Vec<RunResult>> {
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
            for (n, system) in nimbus.into_iter().zip([System::Nimbus, System::Unsandboxed]) {
                eprintln!("  {} {}", system.as_str(), lang.as_str());
                configs.push(
                    measure_nimbus(s, n, system, lang, run)
                        .await
                        .with_context(|| format!("{} {} (run {})", system.as_str(), lang.as_str(), run + 1))?,
                );
            }
            eprintln!("  bare {}", lang.as_str());
            configs.push(
                measure_bare(s, fx, interps, lang)
                    .await
                    .with_context(|| format!("bare {} (run {})", lang.as_str(), run + 1))?,
            );
            eprintln!("  relay {}", lang.as_str());
            configs.push(
                measure_relay(s, fx, interps, lang)
                    .await
                    .with_context(|| format!("relay {} (run {})", lang.as_str(), run + 1))?,
            );
        }
        runs.push(RunResult { run: run + 1, startup_ms, configs });
    }
    Ok(runs)
}

async fn measure_nimbus(s: &Settings, nimbus: &Nimbus, system: System, lang: Lang, run: usize) -> Result<ConfigResult> {
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
        if system == System::Nimbus {
            all_prepared(&client, &mgmt, &nimbus.token).await?;
        }
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
    Ok(ConfigResult { system, lang, cold_ms, warm_us, tput })
}

/// Sandboxed: wait (at most 20 s) until every pool has its prepared sandbox (for Python, its
/// zygote), so a cold start claims one and no spare is being made beside it (the one the
/// previous cold start asked for): what a cold start costs on a machine that is not starting
/// several functions at once.
async fn all_prepared(client: &HttpClient, mgmt: &hyper::Uri, token: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let functions = load::get_json(client, mgmt, token).await?;
        let pools =
            functions.as_array().into_iter().flatten().flat_map(|f| f["pools"].as_array().into_iter().flatten());
        if pools.clone().count() > 0 && pools.into_iter().all(|p| p["preparedSandbox"] == true) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the sandboxed nimbus did not have a prepared sandbox for every function within 20 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The bare server behind the one-hop relay (this executable as `nimbus-bench bare-relay`): warm
/// latency and throughput (no cold start: the relay adds none worth measuring).
async fn measure_relay(s: &Settings, fx: &Fixture, interps: &Interpreters, lang: Lang) -> Result<ConfigResult> {
    let server = Bare::start(lang, fx, interps).await?;
    let measured = async {
        let dir = fx.root.join(format!("relay-{}", lang.as_str()));
        let relay = servers::start_own(&dir, "bare-relay", &["--upstream", &server.url]).await?;
        let out = warm_and_tput(s, &relay.url, relay.pid()).await;
        relay.stop().await;
        out
    }
    .await;
    server.stop().await?;
    let (warm_us, tput) = measured?;
    Ok(ConfigResult { system: System::Relay, lang, cold_ms: Vec::new(), warm_us, tput })
}

/// Sequential warm latencies, then throughput at each concurrency, of the server at `url`.
async fn warm_and_tput(s: &Settings, url: &str, pid: Option<u32>) -> Result<(Vec<f64>, Vec<Throughput>)> {
    let u = load::uri(url)?;
    let warm_us = load::sequential(&u, s.warmup, s.warm).await?;
    let mut tput = Vec::new();
    for c in s.concurrency {
        tput.push(load::throughput(&u, pid, c, s.tput_warmup, s.tput_duration, s.tput_max).await?);
    }
    Ok((warm_us, tput))
}

async fn measure_bare(s: &Settings, fx: &Fixture, interps: &Interpreters, lang: Lang) -> Result<ConfigResult> {
    let mut cold_ms = Vec::with_capacity(s.cold);
    for _ in 0..s.cold {
        let server = Bare::start(lang, fx, interps).await?;
        cold_ms.push(server.first_response_ms);
        server.stop().await?;
    }
    let server = Bare::start(lang, fx, interps).await?;
    let measured = warm_and_tput(s, &server.url, server.pid()).await;
    server.stop().await?;
    let (warm_us, tput) = measured?;
    Ok(ConfigResult { system: System::Bare, lang, cold_ms, warm_us, tput })
}
