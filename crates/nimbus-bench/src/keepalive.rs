//! `nimbus-bench keepalive`: keep-alive policies replayed against synthetic traces, no server.
//! Each function's calls are drawn (seeded, so the figures repeat) in the shapes "Serverless in
//! the Wild" (Shahrad et al., USENIX ATC 2020) found: periodic with jitter, bursty (clusters of
//! calls then long gaps) and rare (exponential gaps of hours). Every trace is replayed against a
//! fixed 10-minute keep-alive, a fixed 1-minute one and the adaptive hybrid histogram policy
//! (`nimbus_core::policy::adaptive_windows`, its histogram updated as the trace goes), counting
//! cold starts (a call with no warm instance) and idle instance-seconds (warm without work,
//! pre-warm included). The model is the paper's: calls take no time and one instance serves a
//! function, so the figures compare policies, not machines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use nimbus_core::policy::{adaptive_windows, AdaptiveConfig, IdleHistogram, Windows};
use serde_json::{json, Value};

/// No trace holds more calls than this (a 1-minute period over 28 days is 40,320).
const MAX_CALLS_PER_FUNCTION: usize = 50_000;

#[derive(Args)]
pub struct KeepaliveArgs {
    /// How many functions to simulate (40 % periodic, 30 % bursty, 30 % rare).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub functions: u64,
    /// How many simulated days every trace covers.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=28))]
    pub days: u64,
    /// The seed of the traces (the same seed gives the same figures).
    #[arg(long, default_value_t = 15)]
    pub seed: u64,
    /// Where to write the results as JSON (default: target/bench/keepalive.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A keep-alive policy as the simulator replays it.
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    Fixed(Duration),
    Adaptive(AdaptiveConfig),
}

impl Policy {
    fn name(&self) -> String {
        match self {
            Policy::Fixed(d) => format!("fixed {}", span(*d)),
            Policy::Adaptive(c) => format!("adaptive, fallback {}", span(c.fallback_keep_alive)),
        }
    }
}

/// "4 h", "10 min" or "90 s".
fn span(d: Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// What one function's trace cost under one policy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    pub calls: u64,
    pub cold: u64,
    /// Instance-seconds kept warm without a call running.
    pub idle_secs: f64,
}

/// A gap of `gap` seconds after a call under `w`: whether the next call finds a warm instance,
/// and how long one was kept warm in the gap.
fn gap_outcome(gap: f64, w: &Windows) -> (bool, f64) {
    let prewarm = w.prewarm.as_secs_f64();
    let keep_alive = w.keep_alive.as_secs_f64();
    let warm = gap >= prewarm && gap <= keep_alive;
    (warm, (gap.min(keep_alive) - prewarm).max(0.0))
}

/// Replay `arrivals` (seconds, ascending, all before `horizon`) against `policy`. The first
/// call is cold; after each call the policy sets the windows for the gap to the next one (the
/// adaptive one after recording the gap that call ended); the gap after the last call runs to
/// `horizon`.
pub fn simulate(arrivals: &[f64], horizon: f64, policy: &Policy) -> Outcome {
    let mut histogram = match policy {
        Policy::Adaptive(config) => Some((IdleHistogram::new(config), config)),
        Policy::Fixed(_) => None,
    };
    let windows_now = |h: &Option<(IdleHistogram, &AdaptiveConfig)>| match (policy, h) {
        (Policy::Fixed(keep_alive), _)
        | (Policy::Adaptive(AdaptiveConfig { fallback_keep_alive: keep_alive, .. }), None) => {
            Windows { prewarm: Duration::ZERO, keep_alive: *keep_alive, representative: false }
        }
        (Policy::Adaptive(_), Some((h, config))) => adaptive_windows(h, config),
    };
    let mut out = Outcome::default();
    let mut last: Option<(f64, Windows)> = None;
    for &t in arrivals {
        out.calls += 1;
        match last {
            None => out.cold += 1,
            Some((previous, windows)) => {
                let gap = (t - previous).max(0.0);
                let (warm, idle) = gap_outcome(gap, &windows);
                out.cold += u64::from(!warm);
                out.idle_secs += idle;
                if let Some((h, _)) = histogram.as_mut() {
                    h.record(Duration::try_from_secs_f64(gap).unwrap_or(Duration::MAX));
                }
            }
        }
        last = Some((t, windows_now(&histogram)));
    }
    if let Some((previous, windows)) = last {
        out.idle_secs += gap_outcome((horizon - previous).max(0.0), &windows).1;
    }
    out
}

/// SplitMix64: a small seeded generator, so the traces do not change with a dependency's version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// The shapes of the paper's invocation patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Periodic,
    Bursty,
    Rare,
}

impl Class {
    fn of(index: u64) -> Class {
        match index % 10 {
            0..=3 => Class::Periodic,
            4..=6 => Class::Bursty,
            _ => Class::Rare,
        }
    }
}

/// One function's call times (seconds, ascending, below `horizon`, at most
/// [`MAX_CALLS_PER_FUNCTION`]): periodic every 2–60 min with ±5 % jitter; bursty, 3–20 calls
/// 1–30 s apart then an exponential gap averaging 30 min–3 h; rare, exponential gaps averaging
/// 2–24 h.
pub fn trace(class: Class, seed: u64, horizon: f64) -> Vec<f64> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let (period, cluster_gap, rare_mean) =
        (rng.uniform(120.0, 3600.0), rng.uniform(1800.0, 3.0 * 3600.0), rng.uniform(2.0 * 3600.0, 24.0 * 3600.0));
    let mut t = match class {
        Class::Periodic => rng.uniform(0.0, period),
        Class::Bursty => rng.exponential(cluster_gap),
        Class::Rare => rng.exponential(rare_mean),
    };
    while t < horizon && out.len() < MAX_CALLS_PER_FUNCTION {
        match class {
            Class::Periodic => {
                out.push(t);
                t += period * rng.uniform(0.95, 1.05);
            }
            Class::Bursty => {
                let calls = 3 + rng.next_u64() % 18;
                for _ in 0..calls {
                    if t >= horizon || out.len() >= MAX_CALLS_PER_FUNCTION {
                        break;
                    }
                    out.push(t);
                    t += rng.uniform(1.0, 30.0);
                }
                t += rng.exponential(cluster_gap);
            }
            Class::Rare => {
                out.push(t);
                t += rng.exponential(rare_mean);
            }
        }
    }
    out
}

/// One policy's figures over every function.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyResult {
    pub policy: String,
    pub calls: u64,
    pub cold: u64,
    pub idle_secs: f64,
    /// The 75th percentile over functions of each function's cold-start percentage.
    pub p75_function_cold_pct: f64,
}

impl PolicyResult {
    fn cold_pct(&self) -> f64 {
        if self.calls == 0 {
            return 0.0;
        }
        100.0 * self.cold as f64 / self.calls as f64
    }
}

/// Replay every trace against `policy`.
pub fn replay(traces: &[Vec<f64>], horizon: f64, policy: &Policy) -> PolicyResult {
    let mut total = Outcome::default();
    let mut per_function = Vec::with_capacity(traces.len());
    for arrivals in traces.iter().filter(|a| !a.is_empty()) {
        let o = simulate(arrivals, horizon, policy);
        total.calls += o.calls;
        total.cold += o.cold;
        total.idle_secs += o.idle_secs;
        per_function.push(100.0 * o.cold as f64 / o.calls as f64);
    }
    per_function.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = (0.75 * per_function.len() as f64).ceil() as usize;
    let p75 = per_function.get(rank.saturating_sub(1)).copied().unwrap_or(0.0);
    PolicyResult {
        policy: policy.name(),
        calls: total.calls,
        cold: total.cold,
        idle_secs: total.idle_secs,
        p75_function_cold_pct: p75,
    }
}

/// The policies compared, the baseline (fixed 10 min) first: the adaptive one with the paper's
/// fallback (keep-alive for the 4 h range) and with the fixed 10 min one.
pub fn policies() -> [Policy; 4] {
    let ten_min = Duration::from_secs(600);
    [
        Policy::Fixed(ten_min),
        Policy::Fixed(Duration::from_secs(60)),
        Policy::Adaptive(AdaptiveConfig::default()),
        Policy::Adaptive(AdaptiveConfig { fallback_keep_alive: ten_min, ..AdaptiveConfig::default() }),
    ]
}

/// The results as a markdown table, idle time normalized to the first (baseline) row; `label`
/// (e.g. the class of function) fills a first column when given.
pub fn table(label: Option<&str>, results: &[PolicyResult]) -> String {
    let baseline = results.first().map(|r| r.idle_secs).unwrap_or(0.0);
    let (head, rule, cell) = match label {
        Some(l) => ("| functions ", "|---", format!("| {l} ")),
        None => ("", "", String::new()),
    };
    let mut out = format!(
        "{head}| policy | cold starts (% of calls) | cold starts, p75 over functions (%) | idle instance-hours | idle vs fixed 10 min |\n{rule}|---|---|---|---|---|\n",
    );
    for r in results {
        let ratio = if baseline > 0.0 { r.idle_secs / baseline } else { 0.0 };
        out.push_str(&format!(
            "{cell}| {} | {:.2} | {:.2} | {:.1} | {:.2} |\n",
            r.policy,
            r.cold_pct(),
            r.p75_function_cold_pct,
            r.idle_secs / 3600.0,
            ratio
        ));
    }
    out
}

fn result_json(r: &PolicyResult, baseline: f64) -> Value {
    json!({
        "policy": r.policy, "calls": r.calls, "coldStarts": r.cold, "coldStartPct": r.cold_pct(),
        "p75FunctionColdStartPct": r.p75_function_cold_pct, "idleInstanceSeconds": r.idle_secs,
        "idleVsFixed10Min": if baseline > 0.0 { r.idle_secs / baseline } else { 0.0 },
    })
}

/// Every policy replayed against `traces`, as results and as JSON.
fn compare(traces: &[Vec<f64>], horizon: f64) -> (Vec<PolicyResult>, Value) {
    let results: Vec<PolicyResult> = policies().iter().map(|p| replay(traces, horizon, p)).collect();
    let baseline = results.first().map(|r| r.idle_secs).unwrap_or(0.0);
    let doc = results.iter().map(|r| result_json(r, baseline)).collect();
    (results, doc)
}

pub fn run(args: KeepaliveArgs) -> Result<()> {
    let horizon = args.days as f64 * 86_400.0;
    let traces: Vec<(Class, Vec<f64>)> = (0..args.functions)
        .map(|i| (Class::of(i), trace(Class::of(i), args.seed.wrapping_mul(1_000_003).wrapping_add(i), horizon)))
        .collect();
    let calls: usize = traces.iter().map(|(_, t)| t.len()).sum();
    eprintln!(
        "nimbus-bench keepalive: {} functions, {} days, seed {}, {calls} calls (simulated)",
        args.functions, args.days, args.seed
    );
    let all: Vec<Vec<f64>> = traces.iter().map(|(_, t)| t.clone()).collect();
    let (results, all_json) = compare(&all, horizon);
    println!("\n## Keep-alive policies (simulated)\n");
    print!("{}", table(None, &results));
    println!("\n### By class of function\n");
    let mut by_class = serde_json::Map::new();
    for (n, class) in [Class::Periodic, Class::Bursty, Class::Rare].into_iter().enumerate() {
        let of_class: Vec<Vec<f64>> = traces.iter().filter(|(c, _)| *c == class).map(|(_, t)| t.clone()).collect();
        let (results, doc) = compare(&of_class, horizon);
        let text = table(Some(&format!("{class:?} ({})", of_class.len())), &results);
        // One table: the header once.
        print!("{}", text.lines().skip(if n == 0 { 0 } else { 2 }).map(|l| format!("{l}\n")).collect::<String>());
        by_class.insert(format!("{class:?}").to_lowercase(), doc);
    }
    let doc = json!({
        "benchmark": "keepalive",
        "settings": {"functions": args.functions, "days": args.days, "seed": args.seed, "calls": calls,
            "model": "calls take no time; one instance per function; 40 % periodic, 30 % bursty, 30 % rare"},
        "policies": all_json,
        "byClass": by_class,
    });
    let out = args.out.unwrap_or_else(|| PathBuf::from("target/bench/keepalive.json"));
    crate::output::write_json(&out, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN10: Policy = Policy::Fixed(Duration::from_secs(600));
    const MIN1: Policy = Policy::Fixed(Duration::from_secs(60));

    #[test]
    fn fixed_keep_alive_by_hand() {
        // Gaps 30, 670, 600, 8700, then 1000 s to the horizon.
        let arrivals = [0.0, 30.0, 700.0, 1300.0, 10_000.0];
        // 10 min: warm, cold, warm (600 is still within), cold; idle 30 + 600 + 600 + 600 + 600.
        assert_eq!(simulate(&arrivals, 11_000.0, &MIN10), Outcome { calls: 5, cold: 3, idle_secs: 2430.0 });
        // 1 min: warm, then cold three times; idle 30 + 60 * 4.
        assert_eq!(simulate(&arrivals, 11_000.0, &MIN1), Outcome { calls: 5, cold: 4, idle_secs: 270.0 });
        assert_eq!(simulate(&[], 11_000.0, &MIN10), Outcome::default());
    }

    #[test]
    fn adaptive_learns_a_period_by_hand() {
        // Every 10 minutes; representative from 2 idle times; fallback 1 min.
        let config =
            AdaptiveConfig { min_samples: 2, fallback_keep_alive: Duration::from_secs(60), ..Default::default() };
        let arrivals = [0.0, 600.0, 1200.0, 1800.0, 2400.0];
        let o = simulate(&arrivals, 3400.0, &Policy::Adaptive(config));
        // Call 1 cold (first); calls 2 and 3 cold (fallback 1 min, 0 and 1 idle times known);
        // then pre-warm at 9 min, keep alive to 12.1 min: calls 4 and 5 warm.
        assert_eq!((o.calls, o.cold), (5, 3));
        // Idle: 60 + 60 (fallback), 60 + 60 (pre-warmed at 540 s), and 726 - 540 after the last call.
        assert!((o.idle_secs - 426.0).abs() < 1e-6, "{o:?}");
    }

    #[test]
    fn a_call_before_the_prewarm_is_cold_and_costs_no_idle_time() {
        let w =
            Windows { prewarm: Duration::from_secs(540), keep_alive: Duration::from_secs(726), representative: true };
        assert_eq!(gap_outcome(100.0, &w), (false, 0.0));
        assert_eq!(gap_outcome(600.0, &w), (true, 60.0));
        assert_eq!(gap_outcome(5000.0, &w), (false, 186.0));
    }

    #[test]
    fn traces_are_deterministic_bounded_and_shaped() {
        let week = 7.0 * 86_400.0;
        for class in [Class::Periodic, Class::Bursty, Class::Rare] {
            let a = trace(class, 42, week);
            assert_eq!(a, trace(class, 42, week));
            assert!(a.len() <= MAX_CALLS_PER_FUNCTION);
            assert!(a.windows(2).all(|w| w[0] <= w[1]) && a.iter().all(|&t| (0.0..week).contains(&t)), "{class:?}");
        }
        // A 2 to 60 minute period over a week: 168 to 5040 calls.
        let periodic = trace(Class::Periodic, 7, week).len();
        assert!((160..=5100).contains(&periodic), "{periodic}");
        // Rare: gaps of hours on average.
        let rare = trace(Class::Rare, 7, week);
        assert!(rare.len() < 200, "{}", rare.len());
    }

    #[test]
    fn replay_sums_functions_and_takes_the_p75_per_function() {
        // Four functions: cold 100 %, 50 %, 50 % and 25 % under fixed 10 min (the empty trace
        // does not count); the p75 by nearest rank is the third of four: 50 %.
        let traces = vec![vec![0.0], vec![0.0, 100.0], vec![0.0, 5000.0, 5100.0, 5200.0], vec![0.0, 10.0], vec![]];
        let r = replay(&traces, 6000.0, &MIN10);
        assert_eq!((r.calls, r.cold), (9, 5));
        assert_eq!(r.p75_function_cold_pct, 50.0);
        let text = table(None, &[r.clone(), PolicyResult { idle_secs: r.idle_secs / 2.0, ..r.clone() }]);
        assert!(text.contains("\n| fixed 10 min | 55.56 | 50.00 |"), "{text}");
        assert!(text.ends_with("| 0.50 |\n"), "{text}");
        let text = table(Some("rare (4)"), &[r]);
        assert!(text.starts_with("| functions | policy |") && text.contains("\n| rare (4) | fixed 10 min |"), "{text}");
    }
}
