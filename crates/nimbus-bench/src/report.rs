//! What `nimbus-bench process` measured (`RunResult`, `ConfigResult`) and its report: the printed
//! table (absolute figures, ratios nimbus / bare, the targets of BENCHMARKS.md § Targets) and the
//! JSON document written to `--out`. The results live here, below the runner (`process`), so that the runner
//! imports its report and not the other way round.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::Settings;
use crate::fixture::Lang;
use crate::load::{stats, Throughput};
use crate::output::tput_json;
use crate::procs::Interpreters;

/// Which side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Nimbus,
    /// nimbus with `--insecure-no-sandbox`: what the sandbox costs.
    Unsandboxed,
    Bare,
    /// `nimbus-bench bare-relay` in front of the bare server: one process hop and nothing else.
    Relay,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Nimbus => "nimbus",
            System::Unsandboxed => "nimbus-nosbx",
            System::Bare => "bare",
            System::Relay => "relay",
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

/// BENCHMARKS.md § Targets: node/python cold start ≤ 10 ms over the bare interpreter's own start-up.
pub const COLD_TARGET_MS: f64 = 10.0;
/// BENCHMARKS.md § Targets: process warm overhead per invocation ≤ 150 µs over the handler.
pub const OVERHEAD_TARGET_US: f64 = 150.0;
/// BENCHMARKS.md § Targets: the sandbox adds ≤ 5 ms to a cold start…
pub const SANDBOX_COLD_TARGET_MS: f64 = 5.0;
/// …and keeps warm throughput within 5 % of the unsandboxed one.
pub const SANDBOX_TPUT_TARGET: f64 = 0.95;

fn config(run: &RunResult, system: System, lang: Lang) -> Option<&ConfigResult> {
    run.configs.iter().find(|c| c.system == system && c.lang == lang)
}

fn startup(run: &RunResult, lang: Lang) -> f64 {
    run.startup_ms.iter().find(|(l, _)| *l == lang).map_or(f64::NAN, |(_, v)| stats(v).p50)
}

fn tput(c: &ConfigResult, concurrency: usize) -> Option<&Throughput> {
    c.tput.iter().find(|t| t.concurrency == concurrency)
}

fn startup_cmd(lang: Lang) -> &'static str {
    match lang {
        Lang::Node => "node -e 0",
        Lang::Python => "python3 -S -c pass",
    }
}

/// The figures the targets and ratios are computed from, for one language in one run.
struct Derived {
    cold_nimbus: f64,
    cold_bare: f64,
    startup: f64,
    warm_nimbus: f64,
    warm_bare: f64,
    /// The bare server behind the one-hop relay, when it was measured.
    warm_relay: Option<f64>,
    rps: Vec<(usize, f64, f64)>,
}

impl Derived {
    fn of(run: &RunResult, lang: Lang, s: &Settings) -> Option<Derived> {
        let n = config(run, System::Nimbus, lang)?;
        let b = config(run, System::Bare, lang)?;
        let rps = s
            .concurrency
            .iter()
            .map(|&c| (c, tput(n, c).map_or(f64::NAN, Throughput::rps), tput(b, c).map_or(f64::NAN, Throughput::rps)))
            .collect();
        Some(Derived {
            cold_nimbus: stats(&n.cold_ms).p50,
            cold_bare: stats(&b.cold_ms).p50,
            startup: startup(run, lang),
            warm_nimbus: stats(&n.warm_us).p50,
            warm_bare: stats(&b.warm_us).p50,
            warm_relay: config(run, System::Relay, lang).map(|r| stats(&r.warm_us).p50),
            rps,
        })
    }
    fn cold_over_startup(&self) -> f64 {
        self.cold_nimbus - self.startup
    }
    fn overhead(&self) -> f64 {
        self.warm_nimbus - self.warm_bare
    }
    /// What one process hop alone adds to the bare server: the floor under [`Self::overhead`].
    fn hop(&self) -> Option<f64> {
        self.warm_relay.map(|r| r - self.warm_bare)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

pub fn table(s: &Settings, runs: &[RunResult]) -> String {
    let mut o = String::new();
    table_intro(&mut o, s, runs);
    measurements(&mut o, s, runs);
    cpu_split(&mut o, s, runs);
    ratio_lines(&mut o, s, runs);
    target_lines(&mut o, s, runs);
    sandbox_lines(&mut o, s, runs);
    o
}

/// What was measured and how, and the bare interpreters' own start-up per run.
fn table_intro(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(
        o,
        "\nnimbus-bench process ({} run, {} run(s) interleaved; client: one tokio thread, keep-alive hyper, 127.0.0.1)",
        if s.quick { "quick" } else { "full" },
        s.runs
    );
    let _ = writeln!(
        o,
        "  nimbus: GET route -> API Gateway v2 event -> Runtime API instance; throughput function max_instances = 2"
    );
    let _ = writeln!(
        o,
        "  bare:   ONE process: node http.createServer / python3 -S (_socket + epoll), calling the same handler file"
    );
    let _ = writeln!(
        o,
        "  relay:  `nimbus-bench bare-relay` (hyper server + keep-alive hyper client) in front of bare: one process hop and nothing else"
    );
    let _ = writeln!(
        o,
        "  cold: nimbus = first request to {} never-run functions; bare = spawn -> first response, {} times; warm: {} sequential after {}; throughput: {:.2} s per concurrency",
        s.cold,
        s.cold,
        s.warm,
        s.warmup,
        s.tput_duration.as_secs_f64()
    );
    for r in runs {
        let parts: Vec<String> =
            Lang::ALL.iter().map(|&l| format!("`{}` {:.1} ms", startup_cmd(l), startup(r, l))).collect();
        let _ = writeln!(
            o,
            "  interpreter start-up (spawn -> exit, p50 of {}), run {}: {}",
            s.startup,
            r.run,
            parts.join(", ")
        );
    }
}

/// A line per run and configuration: cold start, warm latency, throughput per concurrency, errors.
fn measurements(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(o);
    let mut head = format!(
        "{:<4}{:<20}{:>26}{:>12}{:>12}",
        "run", "config", "cold p50 [min-max] ms", "warm p50 µs", "warm p99 µs"
    );
    for c in s.concurrency {
        let _ = write!(head, "{:>13}{:>11}{:>10}", format!("c={c} req/s"), "p99 ms", "CPU µs/r");
    }
    let _ = writeln!(o, "{head}  errors");
    for r in runs {
        for c in &r.configs {
            let _ = writeln!(o, "{}", measurement(s, r.run, c));
        }
    }
    let _ = writeln!(o, "  (CPU µs/r = busy CPU of the whole machine per request, load generator included)");
}

/// The line of one configuration in run `run`, errors summed over its phases last.
fn measurement(s: &Settings, run: usize, c: &ConfigResult) -> String {
    let cold = stats(&c.cold_ms);
    let warm = stats(&c.warm_us);
    let cold = if c.cold_ms.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.1} [{:.1}-{:.1}]", cold.p50, cold.min, cold.max)
    };
    let mut line = format!(
        "{:<4}{:<20}{:>26}{:>12.0}{:>12.0}",
        run,
        format!("{} {}", c.system.as_str(), c.lang.as_str()),
        cold,
        warm.p50,
        warm.p99
    );
    let mut errors = 0;
    for &conc in &s.concurrency {
        match tput(c, conc) {
            Some(t) => {
                errors += t.errors;
                let cpu = t.machine_cpu_us_per_req.map_or("-".to_owned(), |v| format!("{v:.0}"));
                let _ = write!(line, "{:>13.0}{:>11.2}{:>10}", t.rps(), stats(&t.latencies_us).p99 / 1e3, cpu);
            }
            None => {
                let _ = write!(line, "{:>13}{:>11}{:>10}", "-", "-", "-");
            }
        }
    }
    format!("{line}  {errors}")
}

/// CPU per request at the highest concurrency, split by process.
fn cpu_split(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(
        o,
        "\nCPU µs per request at c={}: server process / its children (nimbus instances) / load generator",
        s.concurrency.last().copied().unwrap_or(1)
    );
    for r in runs {
        for c in &r.configs {
            let split = s.concurrency.last().and_then(|&conc| tput(c, conc)).and_then(|t| t.cpu_split);
            if let Some(x) = split {
                let _ = writeln!(
                    o,
                    "  run {} {:<20}{:>8.0} /{:>6.0} /{:>6.0}",
                    r.run,
                    format!("{} {}", c.system.as_str(), c.lang.as_str()),
                    x.server_us,
                    x.children_us,
                    x.client_us
                );
            }
        }
    }
}

/// nimbus / bare per language: cold start, warm latency and req/s, a column per run.
fn ratio_lines(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(o, "\nratios nimbus / bare (one column per run)");
    let mut head = format!("{:<8}{:>20}{:>20}", "lang", "cold p50", "warm p50");
    for c in s.concurrency {
        let _ = write!(head, "{:>20}", format!("c={c} req/s"));
    }
    let _ = writeln!(o, "{head}");
    for lang in Lang::ALL {
        let ds: Vec<Derived> = runs.iter().filter_map(|r| Derived::of(r, lang, s)).collect();
        let col =
            |f: &dyn Fn(&Derived) -> f64| ds.iter().map(|d| format!("{:.2}", f(d))).collect::<Vec<_>>().join(" | ");
        let mut line = format!(
            "{:<8}{:>20}{:>20}",
            lang.as_str(),
            col(&|d| d.cold_nimbus / d.cold_bare),
            col(&|d| d.warm_nimbus / d.warm_bare)
        );
        for (i, _) in s.concurrency.iter().enumerate() {
            let _ = write!(line, "{:>20}", col(&|d| d.rps.get(i).map_or(f64::NAN, |(_, n, b)| n / b)));
        }
        let _ = writeln!(o, "{line}");
    }
}

/// Issue 15's zygote target: a sandboxed Python cold start (the zygote claimed, the handler
/// imported, the request served) below the bare interpreter's own `python3 -S -c pass`, as a
/// ratio per run. `-S` is what nimbus runs Python with, and the faster of the two references.
fn zygote_lines(o: &mut String, s: &Settings, runs: &[RunResult]) {
    for (run, d) in runs.iter().filter_map(|r| Derived::of(r, Lang::Python, s).map(|d| (r.run, d))) {
        let ratio = d.cold_nimbus / d.startup;
        let _ = writeln!(
            o,
            "  run {run} python  cold start with the zygote / `{}`: {:.1} ms / {:.1} ms = {ratio:.2}x (target < 1): {}",
            startup_cmd(Lang::Python),
            d.cold_nimbus,
            d.startup,
            verdict(ratio < 1.0)
        );
    }
}

/// Cold start and warm overhead against their targets, per language and run.
fn target_lines(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(o, "\ntargets (BENCHMARKS.md § Targets)");
    zygote_lines(o, s, runs);
    for lang in Lang::ALL {
        for d in runs.iter().filter_map(|r| Derived::of(r, lang, s).map(|d| (r.run, d))) {
            let (run, d) = d;
            let _ = writeln!(
                o,
                "  run {run} {:<7} cold start: nimbus p50 {:.1} ms vs `{}` {:.1} ms = {:+.1} ms (target <= +{COLD_TARGET_MS:.0} ms): {}",
                lang.as_str(),
                d.cold_nimbus,
                startup_cmd(lang),
                d.startup,
                d.cold_over_startup(),
                verdict(d.cold_over_startup() <= COLD_TARGET_MS)
            );
            let _ = writeln!(
                o,
                "  run {run} {:<7} warm overhead: nimbus p50 {:.0} µs - bare p50 {:.0} µs = {:.0} µs (target <= {OVERHEAD_TARGET_US:.0} µs): {}",
                lang.as_str(),
                d.warm_nimbus,
                d.warm_bare,
                d.overhead(),
                verdict(d.overhead() <= OVERHEAD_TARGET_US)
            );
            if let (Some(relay), Some(hop)) = (d.warm_relay, d.hop()) {
                let _ = writeln!(
                    o,
                    "  run {run} {:<7} one process hop alone: relay p50 {relay:.0} µs - bare p50 {:.0} µs = {hop:.0} µs (the floor under the warm overhead here)",
                    lang.as_str(),
                    d.warm_bare,
                );
            }
        }
    }
}

pub fn json(
    s: &Settings,
    runs: &[RunResult],
    interps: &Interpreters,
    nimbus: &Path,
    before: Value,
    after: Value,
) -> Value {
    let runs_json: Vec<Value> = runs.iter().map(|r| run_json(s, r)).collect();
    json!({
        "benchmark": "process",
        "notes": [
            "nimbus: GET route -> API Gateway v2 event -> node/python instance over the Lambda Runtime API",
            "bare: one interpreter process (node http.createServer; python3 -S with _socket + epoll) calling the same handler file",
            "nimbus throughput function has max_instances = 2; the latency and cold functions max_instances = 1",
            "client: one tokio thread with a keep-alive hyper client; all traffic on 127.0.0.1",
            "machineCpuUsPerRequest: busy CPU of the whole machine (load generator included) per request",
        ],
        "settings": s.json(),
        "machine": {"before": before, "after": after},
        "nimbusBinary": nimbus.display().to_string(),
        "interpreters": {"node": interps.node.display().to_string(), "python": interps.python.display().to_string()},
        "runs": runs_json,
    })
}

/// One run: the interpreters' start-up, every configuration, and nimbus against bare per language.
fn run_json(s: &Settings, r: &RunResult) -> Value {
    let configs: Vec<Value> = r
        .configs
        .iter()
        .map(|c| {
            json!({
                "system": c.system.as_str(), "lang": c.lang.as_str(),
                "coldStartMs": stats(&c.cold_ms).json(), "coldStartSamplesMs": c.cold_ms,
                "warmLatencyUs": stats(&c.warm_us).json(),
                "throughput": c.tput.iter().map(tput_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut per_lang = serde_json::Map::new();
    let mut startup_json = serde_json::Map::new();
    for lang in Lang::ALL {
        if let Some((_, v)) = r.startup_ms.iter().find(|(l, _)| *l == lang) {
            startup_json.insert(
                lang.as_str().into(),
                json!({"command": startup_cmd(lang), "ms": stats(v).json(), "samplesMs": v}),
            );
        }
        if let Some(d) = Derived::of(r, lang, s) {
            let mut comparison = comparison_json(&d);
            if let (Some(c), Some(obj)) = (SandboxCost::of(r, lang, s), comparison.as_object_mut()) {
                obj.insert("sandboxCost".into(), c.json());
            }
            per_lang.insert(lang.as_str().into(), comparison);
        }
    }
    json!({"run": r.run, "interpreterStartup": startup_json, "configs": configs, "comparison": per_lang})
}

/// What the sandbox costs one language in one run: nimbus against nimbus
/// `--insecure-no-sandbox`.
struct SandboxCost {
    cold: f64,
    cold_plain: f64,
    warm: f64,
    warm_plain: f64,
    /// (concurrency, sandboxed req/s, unsandboxed req/s)
    rps: Vec<(usize, f64, f64)>,
}

impl SandboxCost {
    fn of(run: &RunResult, lang: Lang, s: &Settings) -> Option<SandboxCost> {
        let n = config(run, System::Nimbus, lang)?;
        let u = config(run, System::Unsandboxed, lang)?;
        let rps = s
            .concurrency
            .iter()
            .map(|&c| (c, tput(n, c).map_or(f64::NAN, Throughput::rps), tput(u, c).map_or(f64::NAN, Throughput::rps)))
            .collect();
        Some(SandboxCost {
            cold: stats(&n.cold_ms).p50,
            cold_plain: stats(&u.cold_ms).p50,
            warm: stats(&n.warm_us).p50,
            warm_plain: stats(&u.warm_us).p50,
            rps,
        })
    }
    fn cold_added(&self) -> f64 {
        self.cold - self.cold_plain
    }
    /// The worst sandboxed/unsandboxed throughput ratio over the concurrencies.
    fn worst_tput(&self) -> f64 {
        self.rps.iter().map(|(_, n, u)| n / u).fold(f64::INFINITY, f64::min)
    }
    fn json(&self) -> Value {
        let rps: Vec<Value> = self
            .rps
            .iter()
            .map(|(c, n, u)| json!({"concurrency": c, "sandboxedRps": n, "unsandboxedRps": u, "ratio": n / u}))
            .collect();
        json!({
            "coldStart": {"sandboxedP50Ms": self.cold, "unsandboxedP50Ms": self.cold_plain,
                "addedMs": self.cold_added(), "targetAddedMs": SANDBOX_COLD_TARGET_MS,
                "met": self.cold_added() <= SANDBOX_COLD_TARGET_MS},
            "warm": {"sandboxedP50Us": self.warm, "unsandboxedP50Us": self.warm_plain},
            "throughput": rps,
            "throughputTarget": {"worstRatio": self.worst_tput(), "targetRatio": SANDBOX_TPUT_TARGET,
                "met": self.worst_tput() >= SANDBOX_TPUT_TARGET},
        })
    }
}

/// The sandbox's cost against its targets, per language and run.
fn sandbox_lines(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(
        o,
        "
sandbox cost: nimbus vs nimbus --insecure-no-sandbox (BENCHMARKS.md § Targets)"
    );
    for lang in Lang::ALL {
        for (run, c) in runs.iter().filter_map(|r| SandboxCost::of(r, lang, s).map(|c| (r.run, c))) {
            let _ = writeln!(
                o,
                "  run {run} {:<7} cold start: sandboxed p50 {:.1} ms vs unsandboxed {:.1} ms = {:+.1} ms (target <= +{SANDBOX_COLD_TARGET_MS:.0} ms): {}",
                lang.as_str(),
                c.cold,
                c.cold_plain,
                c.cold_added(),
                verdict(c.cold_added() <= SANDBOX_COLD_TARGET_MS)
            );
            let ratios: Vec<String> = c.rps.iter().map(|(conc, n, u)| format!("c={conc} {:.2}", n / u)).collect();
            let _ = writeln!(
                o,
                "  run {run} {:<7} warm: p50 {:.0} vs {:.0} µs; req/s sandboxed/unsandboxed {} (target >= {SANDBOX_TPUT_TARGET:.2}): {}",
                lang.as_str(),
                c.warm,
                c.warm_plain,
                ratios.join(", "),
                verdict(c.worst_tput() >= SANDBOX_TPUT_TARGET)
            );
        }
    }
}

/// nimbus against bare for one language in one run: the ratios and the targets.
fn comparison_json(d: &Derived) -> Value {
    let rps: Vec<Value> =
        d.rps.iter().map(|(c, n, b)| json!({"concurrency": c, "nimbusRps": n, "bareRps": b, "ratio": n / b})).collect();
    json!({
        "ratios": {
            "coldStartP50": d.cold_nimbus / d.cold_bare,
            "warmP50": d.warm_nimbus / d.warm_bare,
            "throughput": rps,
        },
        "targets": {
            "coldStart": {
                "nimbusP50Ms": d.cold_nimbus, "interpreterStartupP50Ms": d.startup,
                "overMs": d.cold_over_startup(), "targetOverMs": COLD_TARGET_MS,
                "met": d.cold_over_startup() <= COLD_TARGET_MS,
            },
            "warmOverhead": {
                "nimbusP50Us": d.warm_nimbus, "bareP50Us": d.warm_bare,
                "overheadUs": d.overhead(), "targetUs": OVERHEAD_TARGET_US,
                "met": d.overhead() <= OVERHEAD_TARGET_US,
                "relayP50Us": d.warm_relay, "oneHopUs": d.hop(),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::golden::{self, throughput};

    fn config(system: System, lang: Lang, cold_ms: f64, warm_us: f64, rps: u64) -> ConfigResult {
        ConfigResult {
            system,
            lang,
            cold_ms: vec![cold_ms, cold_ms * 1.2, cold_ms * 0.9],
            warm_us: (0..50).map(|i| warm_us + f64::from(i)).collect(),
            tput: vec![throughput(1, rps / 5, warm_us, 300.0), throughput(32, rps, warm_us * 10.0, 150.0)],
        }
    }

    fn runs() -> Vec<RunResult> {
        (1..=2)
            .map(|run| {
                let k = run as f64;
                let mut configs = vec![
                    config(System::Nimbus, Lang::Node, 30.0 + k, 300.0 + 10.0 * k, 6_000),
                    config(System::Bare, Lang::Node, 28.0, 110.0, 50_000),
                    config(System::Nimbus, Lang::Python, 14.0 * k, 250.0, 7_000),
                    config(System::Bare, Lang::Python, 11.0, 100.0, 90_000),
                    // Run 1 only (run 2 is cut to its first three).
                    ConfigResult { cold_ms: Vec::new(), ..config(System::Relay, Lang::Node, 0.0, 190.0, 30_000) },
                ];
                if let Some(t) = configs.get_mut(2).and_then(|c| c.tput.last_mut()) {
                    t.cpu_split = None;
                    t.machine_cpu_us_per_req = None;
                }
                if run == 2 {
                    configs.truncate(3);
                }
                // The sandbox's cost: node in both runs (run 1 within the targets, run 2 not).
                configs.push(config(
                    System::Unsandboxed,
                    Lang::Node,
                    32.0 - 2.0 * k * k,
                    290.0,
                    5_600 + 600 * run as u64,
                ));
                RunResult {
                    run,
                    startup_ms: vec![(Lang::Node, vec![25.0, 26.0 + k]), (Lang::Python, vec![10.0, 11.0])],
                    configs,
                }
            })
            .collect()
    }

    #[test]
    fn the_process_table_is_pinned() {
        golden::check("process-table.txt", &table(&Settings::new(false, 2), &runs()));
    }

    #[test]
    fn the_process_json_is_pinned() {
        let interps = Interpreters { node: PathBuf::from("/usr/bin/node"), python: PathBuf::from("/usr/bin/python3") };
        let doc = json(
            &Settings::new(true, 2),
            &runs(),
            &interps,
            Path::new("/opt/nimbus"),
            json!({"loadavg": "0.1"}),
            json!({"loadavg": "0.2"}),
        );
        golden::check("process.json", &serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
}
