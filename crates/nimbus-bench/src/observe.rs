//! `nimbus-bench observe`: what recording costs on the warm path. The same app (the Rust wasm
//! hello, fresh instances and `instance_reuse`: the cheapest requests nimbus serves, so the
//! recording's share is the largest) through two `nimbus up` servers, one as shipped (records,
//! logs, metrics) and one with `NIMBUS_RECORDING=off`, started one after the other and
//! interleaved (on, off, then off, on in the next run), with identical load settings.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::common::{Common, Settings};
use crate::load::{self, stats};
use crate::procs::{self, Nimbus};
use crate::wasm::{expect, write_app, HELLO_PATH, REUSE_PATH};

/// BENCHMARKS.md § Targets: recording (records, logs, metrics) costs ≤ 3 % of peak throughput
/// at c=32.
pub const OVERHEAD_TARGET_PCT: f64 = 3.0;

#[derive(Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub common: Common,
}

struct Sample {
    recording: bool,
    path: &'static str,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    seq_p50_us: f64,
}

async fn measure(
    s: &Settings,
    bin: &Path,
    app: &Path,
    root: &Path,
    run: usize,
    recording: bool,
) -> Result<Vec<Sample>> {
    let tag = if recording { "on" } else { "off" };
    let data = root.join(format!("data-{run}-{tag}"));
    let log = root.join(format!("nimbus-{run}-{tag}.log"));
    let env: Vec<(&str, &Path)> = if recording { vec![] } else { vec![("NIMBUS_RECORDING", Path::new("off"))] };
    let nimbus = Nimbus::launch(bin, app, &data, &log, &env).await?;
    let mut out = Vec::new();
    for path in [HELLO_PATH, REUSE_PATH] {
        let uri = load::uri(&format!("{}{path}", nimbus.url))?;
        let want = expect(path);
        let client = load::client();
        let mut seq = Vec::with_capacity(s.warm);
        for i in 0..s.warmup + s.warm {
            let us = load::timed(&client, &uri, &want).await?;
            if i >= s.warmup {
                seq.push(us);
            }
        }
        let t =
            load::throughput_expect(&uri, &want, nimbus.pid(), 32, s.tput_warmup, s.tput_duration, s.tput_max).await?;
        if t.errors > 0 {
            bail!("{path} with recording {tag}: {} errors, first: {:?}", t.errors, t.first_error);
        }
        let lat = stats(&t.latencies_us);
        out.push(Sample {
            recording,
            path,
            rps: t.rps(),
            p50_us: lat.p50,
            p99_us: lat.p99,
            seq_p50_us: stats(&seq).p50,
        });
    }
    nimbus.stop().await?;
    Ok(out)
}

pub async fn run(args: ObserveArgs) -> Result<()> {
    let s = Settings::new(args.common.quick, usize::try_from(args.common.runs)?);
    let bin = procs::locate_nimbus(args.common.nimbus.clone())?;
    let component = crate::wasm::default_component();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-observe-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let app = write_app(&root, &component, 0)?;
    eprintln!("nimbus-bench observe: recording on vs NIMBUS_RECORDING=off, {} run(s) in {}", s.runs, root.display());
    let mut samples = Vec::new();
    for run in 1..=s.runs {
        // Alternate which side goes first, so a drift in the machine does not favour one.
        let order = if run % 2 == 1 { [true, false] } else { [false, true] };
        for recording in order {
            eprintln!("run {run}/{}: recording {}", s.runs, if recording { "on" } else { "off" });
            for x in measure(&s, &bin, &app, &root, run, recording).await? {
                samples.push((run, x));
            }
        }
    }

    println!("\n## Recording overhead (records, logs, metrics on vs NIMBUS_RECORDING=off)\n");
    println!("| run | route | req/s on | req/s off | throughput cost | p50 c=32 on / off (µs) | p99 c=32 on / off (µs) | c=1 p50 on / off (µs) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (run, on) in samples.iter().filter(|(_, x)| x.recording) {
        let Some((_, off)) = samples.iter().find(|(r, x)| r == run && !x.recording && x.path == on.path) else {
            continue;
        };
        let cost = (off.rps - on.rps) / off.rps * 100.0;
        let name = if on.path == REUSE_PATH { "wasm reuse" } else { "wasm fresh" };
        println!(
            "| {run} | {name} | {:.0} | {:.0} | {cost:+.1} % | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} |",
            on.rps, off.rps, on.p50_us, off.p50_us, on.p99_us, off.p99_us, on.seq_p50_us, off.seq_p50_us
        );
        rows.push(json!({
            "run": run, "route": name,
            "on": {"rps": on.rps, "p50Us": on.p50_us, "p99Us": on.p99_us, "sequentialP50Us": on.seq_p50_us},
            "off": {"rps": off.rps, "p50Us": off.p50_us, "p99Us": off.p99_us, "sequentialP50Us": off.seq_p50_us},
            "throughputCostPct": cost,
        }));
    }
    let costs: Vec<f64> = rows.iter().filter_map(|r| r["throughputCostPct"].as_f64()).collect();
    let mean = costs.iter().sum::<f64>() / costs.len().max(1) as f64;
    println!(
        "\nmean throughput cost {mean:+.1} % (target <= {OVERHEAD_TARGET_PCT} %: {})",
        if mean <= OVERHEAD_TARGET_PCT { "met" } else { "missed" }
    );
    let doc: Value = json!({
        "benchmark": "observe",
        "settings": {"quick": s.quick, "runs": s.runs, "warm": s.warm, "concurrency": 32,
                     "throughputSecs": s.tput_duration.as_secs_f64()},
        "machine": crate::output::machine(),
        "rows": rows,
        "meanThroughputCostPct": mean,
        "targetPct": OVERHEAD_TARGET_PCT,
    });
    crate::output::save(&args.common.out("observe"), &doc, &root, args.common.keep)
}
