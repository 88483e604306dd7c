//! `nimbus-bench observe`: what recording costs on the warm path. The same app (the Rust wasm
//! hello, fresh instances and `instance_reuse`: the cheapest requests nimbus serves, so the
//! recording's share is the largest) through two `nimbus up` servers running side by side, one
//! as shipped (records, logs, metrics) and one with `NIMBUS_RECORDING=off`. Their load phases
//! alternate in short slices on each route (A B B A B A A B ..., and B A A B ... in the next
//! run), so the machine's drift and its neighbours' bursts over the seconds of a run fall on
//! both sides alike. Besides throughput it reports the server's CPU per request by thread from
//! the threads' nanosecond clocks: the record writer's own thread, and the tokio workers on
//! against off, which a noisy host blurs less than requests per second.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Load phases per side and route: each side gets its throughput duration in this many slices,
/// interleaved with the other side's. On a shared host the throughput of one server moves by
/// a quarter between neighbouring 2.5 s phases; with two phases per side a run's cost read
/// anywhere from −14 % to +22 %. Slices of a fraction of a second put both sides under the same
/// neighbours many times over.
const PHASES_PER_SIDE: u32 = 8;
/// A slice's own warm-up (connections are kept by the client; this lets the server's caches
/// and the machine settle after the switch from the other server).
const SLICE_WARMUP: Duration = Duration::from_millis(100);

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
    cpu: Cpu,
    /// The server's CPU per request by thread name, µs (from the threads' nanosecond clocks).
    threads_us: BTreeMap<String, f64>,
}

/// The record writer's thread, and the threads that serve requests.
const WRITER_THREAD: &str = "nimbus-records";
const WORKER_THREAD: &str = "tokio-rt-worker";

/// CPU per successful request over a side's c=32 phases, in µs: the whole machine's busy time,
/// the server process's, and this load generator's. Throughput on two shared cores is the
/// machine's CPU divided by these, so they say whose CPU a difference in req/s went to.
#[derive(Clone, Copy, Default)]
struct Cpu {
    machine_us: f64,
    server_us: f64,
    client_us: f64,
}

impl Cpu {
    /// Add one phase's per-request figures, weighted by its `ok` requests (divided out in
    /// [`Side::sample`]).
    fn add(&mut self, t: &load::Throughput) {
        let ok = t.ok as f64;
        self.machine_us += t.machine_cpu_us_per_req.unwrap_or(0.0) * ok;
        if let Some(split) = t.cpu_split {
            self.server_us += split.server_us * ok;
            self.client_us += split.client_us * ok;
        }
    }

    fn per(self, ok: u64) -> Cpu {
        let n = ok.max(1) as f64;
        Cpu { machine_us: self.machine_us / n, server_us: self.server_us / n, client_us: self.client_us / n }
    }
}

/// One server of the pair and what its phases on the current route added up to.
struct Side {
    recording: bool,
    nimbus: Nimbus,
    ok: u64,
    secs: f64,
    latencies_us: Vec<f64>,
    seq_p50_us: f64,
    cpu: Cpu,
    threads_ns: BTreeMap<String, u64>,
}

impl Side {
    async fn launch(bin: &Path, app: &Path, root: &Path, run: usize, recording: bool) -> Result<Side> {
        let tag = if recording { "on" } else { "off" };
        let data = root.join(format!("data-{run}-{tag}"));
        let log = root.join(format!("nimbus-{run}-{tag}.log"));
        let env: Vec<(&str, &Path)> = if recording { vec![] } else { vec![("NIMBUS_RECORDING", Path::new("off"))] };
        // Two servers at once: neither takes the AWS port, so both run the same services.
        let nimbus = Nimbus::launch_with(bin, app, &data, &log, &env, &["--aws-listen", "off"]).await?;
        Ok(Side {
            recording,
            nimbus,
            ok: 0,
            secs: 0.0,
            latencies_us: Vec::new(),
            seq_p50_us: 0.0,
            cpu: Cpu::default(),
            threads_ns: BTreeMap::new(),
        })
    }

    fn tag(&self) -> &'static str {
        if self.recording {
            "on"
        } else {
            "off"
        }
    }

    /// The c=1 latency on `path`, and a fresh start of its c=32 totals.
    async fn sequential(&mut self, s: &Settings, path: &str) -> Result<()> {
        let uri = load::uri(&format!("{}{path}", self.nimbus.url))?;
        let (want, client) = (expect(path), load::client());
        let mut seq = Vec::with_capacity(s.warm);
        for i in 0..s.warmup + s.warm {
            let us = load::timed(&client, &uri, &want).await?;
            if i >= s.warmup {
                seq.push(us);
            }
        }
        (self.ok, self.secs, self.seq_p50_us, self.cpu) = (0, 0.0, stats(&seq).p50, Cpu::default());
        self.latencies_us.clear();
        self.threads_ns.clear();
        Ok(())
    }

    /// One c=32 phase of `dur` on `path` (after its own warm-up), added to the totals.
    async fn phase(&mut self, s: &Settings, path: &str, dur: Duration) -> Result<()> {
        let uri = load::uri(&format!("{}{path}", self.nimbus.url))?;
        let want = expect(path);
        let warmup = s.tput_warmup.min(SLICE_WARMUP);
        let t = load::throughput_expect(&uri, &want, self.nimbus.pid(), 32, warmup, dur, s.tput_max).await?;
        if t.errors > 0 {
            bail!("{path} with recording {}: {} errors, first: {:?}", self.tag(), t.errors, t.first_error);
        }
        self.cpu.add(&t);
        for (name, ns) in &t.server_threads_ns {
            *self.threads_ns.entry(name.clone()).or_default() += ns;
        }
        self.ok += t.ok;
        self.secs += t.secs;
        self.latencies_us.extend(t.latencies_us);
        Ok(())
    }

    fn sample(&self, path: &'static str) -> Sample {
        let lat = stats(&self.latencies_us);
        let rps = if self.secs > 0.0 { self.ok as f64 / self.secs } else { 0.0 };
        let cpu = self.cpu.per(self.ok);
        let n = self.ok.max(1) as f64;
        let threads_us = self.threads_ns.iter().map(|(name, ns)| (name.clone(), *ns as f64 / 1000.0 / n)).collect();
        Sample {
            recording: self.recording,
            path,
            rps,
            p50_us: lat.p50,
            p99_us: lat.p99,
            seq_p50_us: self.seq_p50_us,
            cpu,
            threads_us,
        }
    }
}

/// One run: both servers up, then on each route the c=1 latencies and the c=32 slices
/// alternating A B B A B A A B ..., where A is recording on in odd runs and off in even ones.
async fn measure(s: &Settings, bin: &Path, app: &Path, root: &Path, run: usize) -> Result<Vec<Sample>> {
    let first = run % 2 == 1;
    let mut sides = [Side::launch(bin, app, root, run, first).await?, Side::launch(bin, app, root, run, !first).await?];
    let dur = s.tput_duration / PHASES_PER_SIDE;
    let mut out = Vec::new();
    for path in [HELLO_PATH, REUSE_PATH] {
        for side in &mut sides {
            side.sequential(s, path).await?;
        }
        for i in 0..2 * PHASES_PER_SIDE {
            // A B B A B A A B ... (the Thue–Morse sequence): a linear drift cancels out.
            let which = usize::from(i.count_ones() % 2 == 1);
            let Some(side) = sides.get_mut(which) else { bail!("no side {which}") };
            side.phase(s, path, dur).await?;
        }
        out.extend(sides.iter().map(|side| side.sample(path)));
    }
    for side in sides {
        side.nimbus.stop().await?;
    }
    Ok(out)
}

/// The mean throughput cost against the target, and per route the server's extra CPU per
/// request, each with its standard error; returns the mean cost and its standard error.
fn print_summary(rows: &[Value]) -> (f64, f64) {
    let (mean, std_err) =
        mean_and_std_err(&rows.iter().filter_map(|r| r["throughputCostPct"].as_f64()).collect::<Vec<_>>());
    println!(
        "\nmean throughput cost {mean:+.1} % (± {std_err:.1}, the standard error over {} rows; target <= {OVERHEAD_TARGET_PCT} %: {})",
        rows.len(),
        if mean <= OVERHEAD_TARGET_PCT { "met" } else { "missed" }
    );
    let at = |r: &Value, side: &str, what: &str| r.pointer(&format!("/{side}/{what}")).and_then(Value::as_f64);
    let worker = format!("threadsUsPerReq/{WORKER_THREAD}");
    let writer = format!("threadsUsPerReq/{WRITER_THREAD}");
    for route in ["wasm reuse", "wasm fresh"] {
        let of_route = |f: &dyn Fn(&Value) -> Option<f64>| {
            let xs: Vec<f64> =
                rows.iter().filter(|r| r.get("route").and_then(Value::as_str) == Some(route)).filter_map(f).collect();
            mean_and_std_err(&xs)
        };
        let (m, se) = of_route(&|r| Some(at(r, "on", "cpuUsPerReq/server")? - at(r, "off", "cpuUsPerReq/server")?));
        println!("{route}: the server's CPU per request with recording on minus off: {m:+.2} µs (± {se:.2})");
        let (m, se) = of_route(&|r| Some(at(r, "on", &writer).unwrap_or(0.0)));
        println!("{route}: the record writer's thread per request: {m:.2} µs (± {se:.2})");
        let (m, se) = of_route(&|r| Some(at(r, "on", &worker)? - at(r, "off", &worker)?));
        println!("{route}: the tokio workers per request with recording on minus off: {m:+.2} µs (± {se:.2})");
    }
    (mean, std_err)
}

/// The mean of `xs` and its standard error (the sample standard deviation over √n; 0 for
/// fewer than two values).
fn mean_and_std_err(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// One run's route as a row of the printed table.
fn table_row(run: usize, name: &str, cost: f64, on: &Sample, off: &Sample) -> String {
    format!(
        "| {run} | {name} | {:.0} | {:.0} | {cost:+.1} % | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.2} / {:.2} | {:.1} / {:.1} |",
        on.rps,
        off.rps,
        on.p50_us,
        off.p50_us,
        on.p99_us,
        off.p99_us,
        on.seq_p50_us,
        off.seq_p50_us,
        on.cpu.machine_us,
        off.cpu.machine_us,
        on.cpu.server_us,
        off.cpu.server_us,
        on.threads_us.get(WRITER_THREAD).copied().unwrap_or(0.0),
        on.threads_us.get(WORKER_THREAD).copied().unwrap_or(0.0),
        off.threads_us.get(WORKER_THREAD).copied().unwrap_or(0.0),
        on.cpu.client_us,
        off.cpu.client_us,
    )
}

fn side_json(x: &Sample) -> Value {
    json!({"rps": x.rps, "p50Us": x.p50_us, "p99Us": x.p99_us, "sequentialP50Us": x.seq_p50_us,
           "cpuUsPerReq": {"machine": x.cpu.machine_us, "server": x.cpu.server_us, "client": x.cpu.client_us},
           "threadsUsPerReq": x.threads_us})
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
        eprintln!("run {run}/{}", s.runs);
        for x in measure(&s, &bin, &app, &root, run).await? {
            samples.push((run, x));
        }
    }

    println!("\n## Recording overhead (records, logs, metrics on vs NIMBUS_RECORDING=off)\n");
    println!("| run | route | req/s on | req/s off | throughput cost | p50 c=32 on / off (µs) | p99 c=32 on / off (µs) | c=1 p50 on / off (µs) | CPU µs/req machine on / off | server on / off | writer thread on | workers on / off | client on / off |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (run, on) in samples.iter().filter(|(_, x)| x.recording) {
        let Some((_, off)) = samples.iter().find(|(r, x)| r == run && !x.recording && x.path == on.path) else {
            continue;
        };
        let cost = (off.rps - on.rps) / off.rps * 100.0;
        let name = if on.path == REUSE_PATH { "wasm reuse" } else { "wasm fresh" };
        println!("{}", table_row(*run, name, cost, on, off));
        rows.push(json!({
            "run": run, "route": name,
            "on": side_json(on),
            "off": side_json(off),
            "throughputCostPct": cost,
        }));
    }
    let (mean, std_err) = print_summary(&rows);
    let doc: Value = json!({
        "benchmark": "observe",
        "settings": {"quick": s.quick, "runs": s.runs, "warm": s.warm, "concurrency": 32,
                     "throughputSecs": s.tput_duration.as_secs_f64()},
        "machine": crate::output::machine(),
        "rows": rows,
        "meanThroughputCostPct": mean,
        "stdErrPct": std_err,
        "targetPct": OVERHEAD_TARGET_PCT,
    });
    crate::output::save(&args.common.out("observe"), &doc, &root, args.common.keep)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_standard_error_is_the_sample_deviation_over_the_root_of_n() {
        let (mean, se) = super::mean_and_std_err(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.5);
        // Sample variance 5/3; over n = 4: 5/12.
        assert!((se - (5.0_f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(super::mean_and_std_err(&[7.0]), (7.0, 0.0));
    }
}
