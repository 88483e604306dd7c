//! `nimbus-bench edge --instructions N`: what the policies of a wasm route cost in instructions
//! per request, a figure a busy machine does not move (timings do: see BENCHMARKS.md, "The
//! edge layer").
//!
//! 1. A release `nimbus up` of the edge bench's app runs under `valgrind --tool=callgrind
//!    --instr-atstart=no`; each route gets [`WARMUP`] unrecorded requests, then
//!    `callgrind_control --instr=on`.
//! 2. Per route (bare, rate limit, JWT + rate limit + CORS), in [`ROUNDS`] rounds: `--zero`, N
//!    sequential keep-alive requests (every answer checked), `--dump`: the dump's total is
//!    every user-space instruction of the nimbus process in that window (background tasks
//!    included, the kernel's share not), divided by N; a route's figure is its median round.
//! 3. The same app under a native `nimbus up`: the bare and the policy route in alternating
//!    blocks of sequential requests, the nimbus process's user CPU time (`utime` of
//!    /proc/PID/stat) per request of each. The bare route's instructions per request over its
//!    user µs per request is this machine's instructions per µs for that path; the policies'
//!    extra instructions divided by it is their cost in µs. Wall-clock time does not enter.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::edge::{self, EdgeArgs};
use crate::load::{self, stats};
use crate::procs::{self, Nimbus};

/// Unrecorded requests per route before instrumentation starts (JIT-free, but pools, caches
/// and the token cache fill).
const WARMUP: usize = 300;
/// Native CPU blocks per side and requests per block (ticks are 10 ms: a block must be long).
const CPU_BLOCKS: usize = 10;
const CPU_BLOCK_REQUESTS: usize = 1000;
const QUICK_CPU_BLOCKS: usize = 2;
const QUICK_CPU_BLOCK_REQUESTS: usize = 200;
/// Rounds of one window per route (bare, rate limit, policies, then again): background work
/// (the record writer's batches) lands in some windows and not others, so each route is
/// counted in several and the median taken.
const ROUNDS: usize = 3;

/// The routes counted: label, path, request headers. The first is the bare route the others
/// are compared with; the last is the policies' route (the native CPU side).
const ROUTES: &[(&str, &str, edge::Headers)] = &[
    ("bare wasm route", "/hello/bench", &[]),
    ("+ rate limit", "/limited/bench", &[]),
    // The bare route sent the policies' request (token and Origin, which it ignores): what the
    // larger exchange costs without any policy deciding on it.
    ("bare wasm route, the policies' request headers", "/hello/bench", edge::POLICY_HEADERS),
    ("+ JWT + rate limit + CORS", "/policies/bench", edge::POLICY_HEADERS),
];

/// One route's counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Counted {
    pub label: &'static str,
    /// The median over the rounds.
    pub instructions: f64,
    /// Instructions per request in each round.
    pub rounds: Vec<f64>,
}

/// The native CPU time per request of the bare route and of the policies' route.
#[derive(Clone, Debug, PartialEq)]
pub struct Cpu {
    pub bare_user_us: f64,
    pub bare_system_us: f64,
    pub policies_user_us: f64,
    pub policies_system_us: f64,
    pub requests: usize,
}

pub async fn run(args: &EdgeArgs, n: usize) -> Result<()> {
    for tool in ["valgrind", "callgrind_control"] {
        let ok = std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            bail!("--instructions needs {tool} (apt-get install valgrind)");
        }
    }
    let bin = procs::locate_nimbus(args.common.nimbus.clone())?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-edge-instr-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let app = edge::write_app(&root)?;
    eprintln!("nimbus-bench edge --instructions {n}: nimbus under callgrind in {}", root.display());
    let counted = count(&bin, &app, &root, n).await?;
    let (blocks, per_block) =
        if args.common.quick { (QUICK_CPU_BLOCKS, QUICK_CPU_BLOCK_REQUESTS) } else { (CPU_BLOCKS, CPU_BLOCK_REQUESTS) };
    eprintln!("native CPU time: {blocks} blocks of {per_block} requests per side");
    let cpu = cpu(&bin, &app, &root, blocks, per_block).await?;
    println!("\n## Edge layer: instructions per request of a wasm route's policies\n");
    print!("{}", table(&counted, &cpu, n));
    let doc = json!({
        "benchmark": "edge-instructions",
        "requestsCounted": n,
        "rounds": ROUNDS,
        "warmupRequests": WARMUP,
        "machine": crate::output::machine(),
        "routes": counted.iter().map(|c| json!({"route": c.label, "instructionsPerRequest": c.instructions, "rounds": c.rounds})).collect::<Vec<_>>(),
        "nativeCpu": cpu_json(&cpu),
        "policyBudgetUs": edge::POLICY_BUDGET_US,
    });
    crate::output::save(&args.common.out("edge-instructions"), &doc, &root, args.common.keep)
}

/// Step 1 and 2: instructions per request of every route in [`ROUTES`].
async fn count(bin: &Path, app: &Path, root: &Path, n: usize) -> Result<Vec<Counted>> {
    let out_file = format!("--callgrind-out-file={}/callgrind.out.%p", root.display());
    let wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", out_file.as_str()];
    let secret = Path::new(edge::JWT_SECRET);
    let env = [("NIMBUS_NODE", node()?), ("NIMBUS_BENCH_JWT_SECRET", secret.to_owned())];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let nimbus = Nimbus::launch_under(
        &wrapper,
        bin,
        app,
        &root.join("data-callgrind"),
        &root.join("nimbus-callgrind.log"),
        &env,
        &[],
    )
    .await?;
    let result = count_in(&nimbus, root, n).await;
    nimbus.stop().await?;
    result
}

async fn count_in(nimbus: &Nimbus, root: &Path, n: usize) -> Result<Vec<Counted>> {
    let pid = nimbus.pid().context("nimbus under callgrind has no pid")?.to_string();
    let client = load::client();
    for (_, path, headers) in ROUTES {
        let uri = load::uri(&format!("{}{path}", nimbus.url))?;
        for _ in 0..WARMUP {
            load::fetch_with(&client, &uri, &edge::expect(path), headers).await?;
        }
    }
    callgrind_control(&["--instr=on", &pid]).await?;
    let mut rounds: Vec<Vec<f64>> = ROUTES.iter().map(|_| Vec::with_capacity(ROUNDS)).collect();
    let mut dump = 0;
    for round in 0..ROUNDS {
        for ((label, path, headers), counts) in ROUTES.iter().zip(rounds.iter_mut()) {
            let uri = load::uri(&format!("{}{path}", nimbus.url))?;
            let want = edge::expect(path);
            callgrind_control(&["--zero", &pid]).await?;
            for _ in 0..n {
                load::fetch_with(&client, &uri, &want, headers).await?;
            }
            dump += 1;
            callgrind_control(&[&format!("--dump=window{dump}"), &pid]).await?;
            let per = dump_total(root, &pid, dump)? / n as f64;
            eprintln!("round {}/{ROUNDS}, {label}: {per:.0} instructions per request", round + 1);
            counts.push(per);
        }
    }
    Ok(ROUTES
        .iter()
        .zip(rounds)
        .map(|((label, ..), rounds)| Counted { label, instructions: stats(&rounds).p50, rounds })
        .collect())
}

/// Run `callgrind_control ARGS` (it waits until valgrind has done it; bounded).
async fn callgrind_control(args: &[&str]) -> Result<()> {
    let run = tokio::process::Command::new("callgrind_control").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .with_context(|| format!("callgrind_control {} took over 2 minutes", args.join(" ")))??;
    if !out.status.success() {
        bail!("callgrind_control {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The instruction total of dump number `part` of process `pid` (`callgrind.out.PID.PART`).
pub fn dump_total(root: &Path, pid: &str, part: usize) -> Result<f64> {
    let path: PathBuf = root.join(format!("callgrind.out.{pid}.{part}"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    total_of(&text).with_context(|| format!("{} has no `totals:` or `summary:` line", path.display()))
}

/// The `totals:` (or `summary:`) figure of a callgrind dump: its first event, `Ir`.
pub fn total_of(dump: &str) -> Option<f64> {
    dump.lines()
        .filter_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .find_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
}

fn node() -> Result<PathBuf> {
    Ok(procs::Interpreters::resolve()?.node)
}

/// User and system clock ticks of one process (fields 14 and 15 of /proc/PID/stat).
fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Step 3: native user and system CPU µs per request of the bare route and the policies' route,
/// in alternating blocks of `per_block` sequential requests.
async fn cpu(bin: &Path, app: &Path, root: &Path, blocks: usize, per_block: usize) -> Result<Cpu> {
    let env = [("NIMBUS_NODE", node()?), ("NIMBUS_BENCH_JWT_SECRET", PathBuf::from(edge::JWT_SECRET))];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let nimbus = Nimbus::launch(bin, app, &root.join("data-native"), &root.join("nimbus-native.log"), &env).await?;
    let result = cpu_in(&nimbus, blocks, per_block).await;
    nimbus.stop().await?;
    result
}

async fn cpu_in(nimbus: &Nimbus, blocks: usize, per_block: usize) -> Result<Cpu> {
    let pid = nimbus.pid().context("nimbus has no pid")?;
    let client = load::client();
    let (Some(bare), Some(policies)) = (ROUTES.first(), ROUTES.last()) else { bail!("no routes") };
    let sides = [bare, policies];
    let mut ticks = [(0u64, 0u64); 2];
    for turn in 0..=blocks {
        for k in 0..2 {
            let j = crate::edge::in_turn(turn, k, 2);
            let (Some((_, path, headers)), Some(acc)) = (sides.get(j), ticks.get_mut(j)) else { continue };
            let uri = load::uri(&format!("{}{path}", nimbus.url))?;
            let want = edge::expect(path);
            let before = user_system_ticks(pid).context("cannot read nimbus's /proc stat")?;
            for _ in 0..per_block {
                load::fetch_with(&client, &uri, &want, headers).await?;
            }
            let after = user_system_ticks(pid).context("cannot read nimbus's /proc stat")?;
            // Turn 0 is the warm-up.
            if turn > 0 {
                acc.0 += after.0.saturating_sub(before.0);
                acc.1 += after.1.saturating_sub(before.1);
            }
        }
    }
    let requests = blocks * per_block;
    // USER_HZ is 100: a tick is 10,000 µs.
    let per = |t: u64| t as f64 * 10_000.0 / requests.max(1) as f64;
    let [b, p] = ticks;
    Ok(Cpu {
        bare_user_us: per(b.0),
        bare_system_us: per(b.1),
        policies_user_us: per(p.0),
        policies_system_us: per(p.1),
        requests,
    })
}

/// The bare route's instructions per user µs: this machine's speed on that path.
pub fn instructions_per_us(counted: &[Counted], cpu: &Cpu) -> Option<f64> {
    let bare = counted.first()?.instructions;
    (cpu.bare_user_us > 0.0).then(|| bare / cpu.bare_user_us)
}

/// The markdown table: instructions per request, the difference to the bare route, and that
/// difference in µs at the bare route's instructions per µs.
pub fn table(counted: &[Counted], cpu: &Cpu, n: usize) -> String {
    use std::fmt::Write as _;
    let bare = counted.first().map_or(0.0, |c| c.instructions);
    let ipus = instructions_per_us(counted, cpu);
    let mut t = format!(
        "{n} sequential requests per route under callgrind. Native, {} requests per side: bare route \
         {:.1} µs user + {:.1} µs system CPU per request, policies' route {:.1} + {:.1} µs; \
         instructions per user µs: {}.\n\n",
        cpu.requests,
        cpu.bare_user_us,
        cpu.bare_system_us,
        cpu.policies_user_us,
        cpu.policies_system_us,
        ipus.map_or("unknown".to_owned(), |x| format!("{x:.0}")),
    );
    t.push_str(
        "| route | instructions per request (median) | rounds | over the bare route | as µs (budget ≤ 20 µs) |\n",
    );
    t.push_str("|---|---|---|---|---|\n");
    for c in counted {
        let extra = c.instructions - bare;
        let us = ipus.map_or("?".to_owned(), |x| format!("{:+.1} µs", extra / x));
        let rounds: Vec<String> = c.rounds.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(t, "| {} | {:.0} | {} | {:+.0} | {us} |", c.label, c.instructions, rounds.join(", "), extra);
    }
    t
}

fn cpu_json(cpu: &Cpu) -> Value {
    json!({"requestsPerSide": cpu.requests, "bareUserUs": cpu.bare_user_us, "bareSystemUs": cpu.bare_system_us,
           "policiesUserUs": cpu.policies_user_us, "policiesSystemUs": cpu.policies_system_us})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_total_is_its_first_event() {
        let dump =
            "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n3 10\nsummary: 1234\ntotals: 1234\n";
        assert_eq!(total_of(dump), Some(1234.0));
        assert_eq!(total_of("events: Ir Dr\ntotals: 55 7\n"), Some(55.0));
        assert_eq!(total_of("events: Ir\n"), None);
    }

    #[test]
    fn the_table_converts_with_the_bare_routes_speed() {
        let counted = [
            Counted { label: "bare wasm route", instructions: 160_000.0, rounds: vec![160_000.0] },
            Counted { label: "+ JWT + rate limit + CORS", instructions: 168_000.0, rounds: vec![167_000.0, 168_000.0] },
        ];
        let cpu = Cpu {
            bare_user_us: 40.0,
            bare_system_us: 20.0,
            policies_user_us: 42.0,
            policies_system_us: 20.0,
            requests: 100,
        };
        assert_eq!(instructions_per_us(&counted, &cpu), Some(4000.0));
        let t = table(&counted, &cpu, 2000);
        assert!(t.contains("| + JWT + rate limit + CORS | 168000 | 167000, 168000 | +8000 | +2.0 µs |"), "{t}");
    }
}
