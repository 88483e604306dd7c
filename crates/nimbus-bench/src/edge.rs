//! `nimbus-bench edge`: what the edge layer costs and how close its cache comes to a static
//! file server. Each row is one nimbus route beside its reference, in one run, same load:
//!
//! - a cached response (`cache = true`, served from the gateway's cache) beside nginx serving
//!   the same bytes as a file (target ≥ 0.8× nginx's throughput);
//! - a static file (`[static]`) beside nginx serving the same file (target ≥ 0.8×);
//! - a wasm route with a rate limit, and one with JWT + rate limit + CORS, beside the same
//!   route without policies: the per-request cost of the policies (the issue's target: JWT +
//!   rate limit + CORS ≤ 20 µs at p50 over the bare route).
//!
//! A row is a [`Probe`] in [`PROBES`]: adding one is a route in [`write_app`] and a line in
//! the table. nginx missing is reported as such, not fatal.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::common::{Common, Settings};
use crate::load::{self, stats, Expect};
use crate::procs::{self, Nimbus};
use crate::servers::{self, Launch, Ready};

/// BENCHMARKS.md § Targets: a cached response ≥ 0.8× nginx serving the same file.
pub const CACHE_TARGET_RATIO: f64 = 0.8;
/// The issue's budget for JWT + rate limit + CORS over a bare wasm route, p50.
pub const POLICY_BUDGET_US: f64 = 20.0;
/// The cached body (and nginx's file, and the static file).
const BODY: &str = "cached by the edge: the same bytes nginx serves from a file\n";
/// The HS256 secret of the JWT row's policy (given to `nimbus up` in its environment).
pub(crate) const JWT_SECRET: &str = "nimbus-bench-edge-secret-of-32-bytes";
/// A token for [`JWT_SECRET`]: `{"sub": "bench", "exp": 4102444800}` (2100-01-01), made once
/// with PyJWT (`jwt.encode(claims, JWT_SECRET, algorithm="HS256")`).
const JWT: &str = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMH0.LPlLhCfy_j0tYgalP7Rbx19NTETf9ngN80g5T6vnzYc";
/// The origin the JWT row's CORS policy allows.
const ORIGIN: &str = "https://app.example";
/// What a request to the JWT + rate limit + CORS route carries: the token and an allowed origin.
pub(crate) const POLICY_HEADERS: Headers = &[("authorization", JWT), ("origin", ORIGIN)];
const CONCURRENCY: usize = 32;
/// Blocks a row's sequential turns are cut into for the spread.
const SEQ_BLOCKS: usize = 10;
/// Throughput blocks per side (each `tput_duration / blocks` long), full and `--quick`.
const TPUT_BLOCKS: usize = 10;
const QUICK_TPUT_BLOCKS: usize = 2;
/// A probe's request headers.
pub(crate) type Headers = &'static [(&'static str, &'static str)];

#[derive(Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub common: Common,
    /// nginx (default: `nginx` on PATH or /usr/sbin/nginx; missing: the cache row has no reference).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Instead of timing: count the instructions per request of the wasm route bare and with
    /// its policies, N sequential requests each, under valgrind's callgrind (then convert to µs
    /// with the bare route's native CPU time).
    #[arg(long, value_name = "N")]
    pub instructions: Option<usize>,
}

/// What a row's reference is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// nginx serving [`BODY`] from a file.
    Nginx,
    /// Another nimbus route (the same function without the policy).
    Route(&'static str),
}

/// One row: a nimbus route and what it is compared with.
pub struct Probe {
    pub name: &'static str,
    pub path: &'static str,
    pub reference: Reference,
    /// How the row is judged: a throughput ratio (cache) or a p50 budget (policies).
    pub judge: Judge,
    /// Request headers the route needs (a token, an origin).
    pub headers: &'static [(&'static str, &'static str)],
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Judge {
    MinRatio(f64),
    MaxExtraP50Us(f64),
}

/// The rows, in the order they are measured and shown.
pub const PROBES: &[Probe] = &[
    Probe {
        name: "cached response",
        path: "/cached",
        reference: Reference::Nginx,
        judge: Judge::MinRatio(CACHE_TARGET_RATIO),
        headers: &[],
    },
    Probe {
        name: "static file",
        path: "/body.txt",
        reference: Reference::Nginx,
        judge: Judge::MinRatio(CACHE_TARGET_RATIO),
        headers: &[],
    },
    Probe {
        name: "wasm + rate limit",
        path: "/limited/bench",
        reference: Reference::Route("/hello/bench"),
        judge: Judge::MaxExtraP50Us(POLICY_BUDGET_US),
        headers: &[],
    },
    Probe {
        name: "wasm + JWT + rate limit + CORS",
        path: "/policies/bench",
        reference: Reference::Route("/hello/bench"),
        judge: Judge::MaxExtraP50Us(POLICY_BUDGET_US),
        headers: POLICY_HEADERS,
    },
];

/// One side of a row, measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    pub label: String,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Sequential (c=1) p50.
    pub seq_p50_us: f64,
}

/// A measured row: nimbus, and its reference or why there is none.
pub struct Row {
    pub name: &'static str,
    pub judge: Judge,
    pub ours: Side,
    pub reference: std::result::Result<Side, String>,
    /// The two sides block by block (empty without a reference).
    pub blocks: Blocks,
}

/// A row's figures per block: the sides were measured in alternation (one request to each in
/// turn; throughput blocks of each in turn), so block `i` of both saw the same machine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Blocks {
    /// Per block of sequential turns: (nimbus p50, reference p50) in µs.
    pub seq: Vec<(f64, f64)>,
    /// Per throughput block: (nimbus req/s, reference req/s) at c=32.
    pub tput: Vec<(f64, f64)>,
}

/// The app: the Node origin answering `BODY` with a day of freshness on `/cached` (cache =
/// true), `BODY` as the static file `/body.txt`, the wasm hello bare on `/hello/*`, with a
/// rate limit no load reaches on `/limited/*`, and with that limit, an HS256 JWT policy and a
/// CORS policy on `/policies/*`.
pub(crate) fn write_app(root: &Path) -> Result<PathBuf> {
    let app = root.join("app");
    let origin = app.join("functions/origin");
    let hello = app.join("functions/hello");
    std::fs::create_dir_all(&origin)?;
    std::fs::create_dir_all(&hello)?;
    std::fs::create_dir_all(app.join("public"))?;
    std::fs::write(app.join("public/body.txt"), BODY)?;
    let js = format!(
        "exports.handler = async () => ({{ statusCode: 200, headers: {{ 'content-type': 'text/plain', 'cache-control': 'public, max-age=86400' }}, body: {BODY:?} }});\n"
    );
    std::fs::write(origin.join("index.js"), js)?;
    let component = crate::wasm::default_component();
    std::fs::copy(&component, hello.join("hello.wasm"))
        .with_context(|| format!("cannot copy {} into the app", component.display()))?;
    let manifest = r#"# Written by nimbus-bench edge; deleted when the run ends.
name = "bench-edge"
[functions.origin]
runtime = "node"
handler = "index.handler"
[functions.hello]
runtime = "wasm"
component = "hello.wasm"
memory_mb = 32
max_instances = 64
[static]
dir = "public"
[rate_limits.wide]
requests = 1000000
per = "1s"
[auth.bench]
type = "jwt"
secret_env = "NIMBUS_BENCH_JWT_SECRET"
[cors.bench]
origins = ["https://app.example"]
[[routes]]
method = "GET"
path = "/cached"
function = "origin"
cache = true
[[routes]]
method = "GET"
path = "/hello/*"
function = "hello"
[[routes]]
method = "GET"
path = "/limited/*"
function = "hello"
rate_limit = "wide"
[[routes]]
method = "GET"
path = "/policies/*"
function = "hello"
rate_limit = "wide"
auth = "bench"
cors = "bench"
"#;
    std::fs::write(app.join("nimbus.toml"), manifest).context("cannot write the app manifest")?;
    Ok(app)
}

/// The answer a path must get.
pub(crate) fn expect(path: &str) -> Expect {
    if path == "/cached" || path == "/body.txt" {
        Expect { body: Bytes::from_static(BODY.as_bytes()), content_type: Some("text/plain") }
    } else {
        crate::wasm::expect(path)
    }
}

/// One side of a row while it is measured: where it is and what it must answer.
struct Target {
    label: &'static str,
    uri: hyper::Uri,
    want: Arc<Expect>,
    pid: Option<u32>,
    headers: Headers,
    client: load::HttpClient,
}

impl Target {
    fn new(label: &'static str, url: &str, want: Expect, pid: Option<u32>, headers: Headers) -> Result<Target> {
        Ok(Target { label, uri: load::uri(url)?, want: Arc::new(want), pid, headers, client: load::client() })
    }

    async fn fetch(&self) -> Result<()> {
        load::fetch_with(&self.client, &self.uri, &self.want, self.headers).await
    }

    /// `fetch` as a load operation.
    fn op(
        &self,
    ) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>> + Clone + Send + 'static {
        let (client, uri, want, headers) = (self.client.clone(), self.uri.clone(), self.want.clone(), self.headers);
        move |_| {
            let (client, uri, want) = (client.clone(), uri.clone(), want.clone());
            Box::pin(async move { load::fetch_with(&client, &uri, &want, headers).await })
        }
    }
}

/// The index of the `k`-th side to go in turn `turn`: forward in even turns, backward in odd
/// ones (A B, B A, …), so neither side always follows the other.
pub(crate) fn in_turn(turn: usize, k: usize, sides: usize) -> usize {
    if turn.is_multiple_of(2) {
        k
    } else {
        sides.saturating_sub(k + 1)
    }
}

/// Sequential latencies (µs) of every side, one request to each in turn after `s.warmup`
/// unrecorded turns: both sides see the same moments of the machine.
async fn sequential(s: &Settings, targets: &[&Target]) -> Result<Vec<Vec<f64>>> {
    for _ in 0..s.warmup {
        for t in targets {
            t.fetch().await?;
        }
    }
    let mut lat: Vec<Vec<f64>> = targets.iter().map(|_| Vec::with_capacity(s.warm)).collect();
    for turn in 0..s.warm {
        for k in 0..targets.len() {
            let j = in_turn(turn, k, targets.len());
            let (Some(t), Some(out)) = (targets.get(j), lat.get_mut(j)) else { continue };
            let started = Instant::now();
            t.fetch().await?;
            out.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(lat)
}

/// Throughput at c=32 of every side in alternating blocks (after a warm-up of each that opens
/// its connections): block `b` of every side runs before block `b + 1` of any.
async fn throughput(s: &Settings, targets: &[&Target]) -> Result<Vec<Vec<load::Throughput>>> {
    let blocks = if s.quick { QUICK_TPUT_BLOCKS } else { TPUT_BLOCKS };
    let block = s.tput_duration / u32::try_from(blocks)?;
    let max = (s.tput_max / u64::try_from(blocks)?).max(1);
    for t in targets {
        let w = load::throughput_of(t.op(), t.pid, CONCURRENCY, Duration::ZERO, s.tput_warmup, s.tput_max).await?;
        if w.errors > 0 {
            bail!("{} (warm-up): {} errors, first: {:?}", t.label, w.errors, w.first_error);
        }
    }
    let mut out: Vec<Vec<load::Throughput>> = targets.iter().map(|_| Vec::with_capacity(blocks)).collect();
    for b in 0..blocks {
        for k in 0..targets.len() {
            let j = in_turn(b, k, targets.len());
            let (Some(t), Some(side)) = (targets.get(j), out.get_mut(j)) else { continue };
            let m = load::throughput_of(t.op(), t.pid, CONCURRENCY, Duration::ZERO, block, max).await?;
            if m.errors > 0 {
                bail!("{}: {} errors, first: {:?}", t.label, m.errors, m.first_error);
            }
            side.push(m);
        }
    }
    Ok(out)
}

/// A side's figures from its sequential latencies and its throughput blocks.
fn side_of(label: &str, seq: &[f64], tput: &[load::Throughput]) -> Side {
    let (ok, secs) = tput.iter().fold((0, 0.0), |(ok, secs), t| (ok + t.ok, secs + t.secs));
    let lat: Vec<f64> = tput.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
    let lat = stats(&lat);
    let rps = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
    Side { label: label.to_owned(), rps, p50_us: lat.p50, p99_us: lat.p99, seq_p50_us: stats(seq).p50 }
}

/// Per sequential block, the p50 of `a` and of `b` (the same turns of both).
fn seq_blocks(a: &[f64], b: &[f64]) -> Vec<(f64, f64)> {
    let size = a.len().div_ceil(SEQ_BLOCKS).max(1);
    a.chunks(size).zip(b.chunks(size)).map(|(x, y)| (stats(x).p50, stats(y).p50)).collect()
}

/// Both sides of a row measured in alternation (the reference, if any, interleaved with ours).
async fn measure_pair(s: &Settings, ours: &Target, reference: Option<&Target>) -> Result<(Side, Option<Side>, Blocks)> {
    let targets: Vec<&Target> = std::iter::once(ours).chain(reference).collect();
    let seq = sequential(s, &targets).await?;
    let tput = throughput(s, &targets).await?;
    let (Some(seq_ours), Some(tput_ours)) = (seq.first(), tput.first()) else { bail!("no side was measured") };
    let side = side_of(ours.label, seq_ours, tput_ours);
    let (Some(r), Some(seq_ref), Some(tput_ref)) = (reference, seq.get(1), tput.get(1)) else {
        return Ok((side, None, Blocks::default()));
    };
    let blocks = Blocks {
        seq: seq_blocks(seq_ours, seq_ref),
        tput: tput_ours.iter().zip(tput_ref).map(|(a, b)| (a.rps(), b.rps())).collect(),
    };
    Ok((side, Some(side_of(r.label, seq_ref, tput_ref)), blocks))
}

/// nginx's config: [`BODY`] as a file under `dir/www`, everything else in `dir`.
fn nginx_conf(dir: &Path, port: u16) -> String {
    let body = format!("    root {}/www;\n    location / {{ default_type text/plain; }}", dir.display());
    servers::nginx_conf("nginx serving the cached body as a file", dir, port, &body)
}

fn find_nginx(explicit: Option<PathBuf>) -> std::result::Result<PathBuf, String> {
    explicit
        .or_else(|| {
            std::env::var_os("PATH")
                .and_then(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).find(|b| b.is_file()))
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .ok_or_else(|| "nginx not installed (apt-get install nginx-light, or scripts/bench-tools.sh)".to_owned())
}

/// nginx serving `BODY` at `/cached`, started and answering.
async fn start_nginx(bin: &Path, root: &Path) -> Result<servers::Server> {
    let dir = root.join("nginx");
    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(t))?;
    }
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/cached"), BODY)?;
    let port = servers::free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, port))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-p").arg(&dir).arg("-c").arg(&conf).arg("-e").arg(dir.join("error.log"));
    servers::start(Launch {
        cmd,
        ready: Ready::Port(port),
        path: "/cached".into(),
        expect: Some(expect("/cached")),
        log: dir.join("nginx.log"),
        timeout: std::time::Duration::from_secs(20),
        graceful: None,
    })
    .await
}

/// One run: every probe against nimbus, each beside its reference in alternation (nginx runs
/// the whole run beside nimbus).
async fn run_once(
    s: &Settings,
    bin: &Path,
    app: &Path,
    root: &Path,
    nginx: &std::result::Result<PathBuf, String>,
    run: usize,
) -> Result<Vec<Row>> {
    let data = root.join(format!("data-{run}"));
    let log = root.join(format!("nimbus-{run}.log"));
    let interps = procs::Interpreters::resolve()?;
    let env = [("NIMBUS_NODE", interps.node.as_path()), ("NIMBUS_BENCH_JWT_SECRET", Path::new(JWT_SECRET))];
    let nimbus = Nimbus::launch(bin, app, &data, &log, &env).await?;
    let server = match nginx {
        Ok(bin) => Some(start_nginx(bin, root).await?),
        Err(_) => None,
    };
    let rows = probe_all(s, &nimbus, server.as_ref(), nginx).await;
    if let Some(server) = server {
        server.stop().await;
    }
    nimbus.stop().await?;
    rows
}

async fn probe_all(
    s: &Settings,
    nimbus: &Nimbus,
    server: Option<&servers::Server>,
    nginx: &std::result::Result<PathBuf, String>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for p in PROBES {
        let ours =
            Target::new("nimbus", &format!("{}{}", nimbus.url, p.path), expect(p.path), nimbus.pid(), p.headers)?;
        let reference = match (p.reference, server) {
            (Reference::Route(path), _) => {
                let url = format!("{}{path}", nimbus.url);
                Ok(Target::new("nimbus, no policy", &url, expect(path), nimbus.pid(), &[])?)
            }
            (Reference::Nginx, Some(server)) => {
                let url = format!("{}/cached", server.base);
                Ok(Target::new("nginx (file)", &url, expect("/cached"), server.pid(), &[])?)
            }
            (Reference::Nginx, None) => Err(nginx.as_ref().err().cloned().unwrap_or_default()),
        };
        let (ours, measured, blocks) = measure_pair(s, &ours, reference.as_ref().ok()).await?;
        let reference = match (measured, reference) {
            (Some(side), _) => Ok(side),
            (None, Err(why)) => Err(why),
            (None, Ok(_)) => Err("not measured".to_owned()),
        };
        rows.push(Row { name: p.name, judge: p.judge, ours, reference, blocks });
    }
    Ok(rows)
}

/// Whether a row meets its target, and how it is said: the figure over the whole run, then
/// the same figure per block (the range, the median, and how many blocks are on target), so a
/// reader sees whether the verdict is larger than the noise.
fn verdict(r: &Row) -> String {
    let Ok(reference) = &r.reference else { return "no reference".to_owned() };
    let met = |ok: bool| if ok { "met" } else { "missed" };
    match r.judge {
        Judge::MinRatio(min) => {
            let ratio = r.ours.rps / reference.rps;
            let blocks: Vec<f64> = r.blocks.tput.iter().map(|(a, b)| a / b).collect();
            let on = blocks.iter().filter(|x| **x >= min).count();
            let spread = spread(&blocks, on, |x| format!("{x:.2}×"));
            format!("{ratio:.2}× (target ≥ {min}×: {}){spread}", met(ratio >= min))
        }
        Judge::MaxExtraP50Us(max) => {
            let extra = r.ours.seq_p50_us - reference.seq_p50_us;
            let blocks: Vec<f64> = r.blocks.seq.iter().map(|(a, b)| a - b).collect();
            let on = blocks.iter().filter(|x| **x <= max).count();
            let spread = spread(&blocks, on, |x| format!("{x:+.1} µs"));
            format!("{extra:+.1} µs p50 (budget ≤ {max} µs: {}){spread}", met(extra <= max))
        }
    }
}

/// `; blocks MIN … MAX, median M, ON/N on target` (empty without blocks).
fn spread(blocks: &[f64], on: usize, show: impl Fn(f64) -> String) -> String {
    if blocks.is_empty() {
        return String::new();
    }
    let st = stats(blocks);
    format!("; blocks {} … {}, median {}, {on}/{} on target", show(st.min), show(st.max), show(st.p50), blocks.len())
}

fn side_cells(s: &Side) -> String {
    format!("{} | {:.0} | {:.0} | {:.0} | {:.0}", s.label, s.rps, s.p50_us, s.p99_us, s.seq_p50_us)
}

/// The markdown table of all runs' rows.
pub fn table(runs: &[(usize, Vec<Row>)]) -> String {
    let mut t =
        String::from("| run | row | side | req/s c=32 | p50 c=32 (µs) | p99 c=32 (µs) | p50 c=1 (µs) | result |\n");
    t.push_str("|---|---|---|---|---|---|---|---|\n");
    for (run, rows) in runs {
        for r in rows {
            let _ = writeln!(t, "| {run} | {} | {} | {} |", r.name, side_cells(&r.ours), verdict(r));
            match &r.reference {
                Ok(s) => {
                    let _ = writeln!(t, "| {run} | {} | {} | |", r.name, side_cells(s));
                }
                Err(why) => {
                    let _ = writeln!(t, "| {run} | {} | reference: {why} | | | | | |", r.name);
                }
            }
        }
    }
    t
}

fn side_json(s: &Side) -> Value {
    json!({"label": s.label, "rps": s.rps, "p50Us": s.p50_us, "p99Us": s.p99_us, "sequentialP50Us": s.seq_p50_us})
}

pub fn runs_json(runs: &[(usize, Vec<Row>)]) -> Value {
    let rows: Vec<Value> = runs
        .iter()
        .flat_map(|(run, rows)| rows.iter().map(move |r| (run, r)))
        .map(|(run, r)| {
            let reference = match &r.reference {
                Ok(s) => side_json(s),
                Err(why) => json!({"missing": why}),
            };
            let blocks = json!({"sequentialP50Us": r.blocks.seq, "throughputRps": r.blocks.tput});
            json!({"run": run, "row": r.name, "nimbus": side_json(&r.ours), "reference": reference,
                   "blocks": blocks, "result": verdict(r)})
        })
        .collect();
    Value::Array(rows)
}

pub async fn run(args: EdgeArgs) -> Result<()> {
    let s = Settings::new(args.common.quick, usize::try_from(args.common.runs)?);
    let bin = procs::locate_nimbus(args.common.nimbus.clone())?;
    let nginx = find_nginx(args.nginx.clone());
    if let Err(why) = &nginx {
        eprintln!("nimbus-bench edge: {why}; the cache row runs without its reference");
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-edge-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let app = write_app(&root)?;
    eprintln!("nimbus-bench edge: {} run(s) in {}", s.runs, root.display());
    let mut runs = Vec::new();
    for run in 1..=s.runs {
        eprintln!("run {run}/{}", s.runs);
        runs.push((run, run_once(&s, &bin, &app, &root, &nginx, run).await?));
    }
    println!("\n## Edge layer: the response cache beside nginx, and the cost of policies\n");
    print!("{}", table(&runs));
    let doc = json!({
        "benchmark": "edge",
        "settings": {"quick": s.quick, "runs": s.runs, "warm": s.warm, "concurrency": CONCURRENCY,
                     "throughputSecs": s.tput_duration.as_secs_f64(), "sequentialBlocks": SEQ_BLOCKS,
                     "throughputBlocks": if s.quick { QUICK_TPUT_BLOCKS } else { TPUT_BLOCKS },
                     "interleaved": true},
        "machine": crate::output::machine(),
        "rows": runs_json(&runs),
        "cacheTargetRatio": CACHE_TARGET_RATIO,
        "policyBudgetUs": POLICY_BUDGET_US,
    });
    crate::output::save(&args.common.out("edge"), &doc, &root, args.common.keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;

    fn side(label: &str, rps: f64, p50: f64) -> Side {
        Side { label: label.into(), rps, p50_us: p50 * 10.0, p99_us: p50 * 40.0, seq_p50_us: p50 }
    }

    fn runs() -> Vec<(usize, Vec<Row>)> {
        let cache = |reference| Row {
            name: "cached response",
            judge: Judge::MinRatio(0.8),
            ours: side("nimbus", 90_000.0, 30.0),
            reference,
            blocks: Blocks { seq: vec![], tput: vec![(88_000.0, 101_000.0), (92_000.0, 99_000.0)] },
        };
        let policy = Row {
            name: "wasm + rate limit",
            judge: Judge::MaxExtraP50Us(20.0),
            ours: side("nimbus", 30_000.0, 118.5),
            reference: Ok(side("nimbus, no policy", 31_000.0, 110.0)),
            blocks: Blocks { seq: vec![(117.0, 110.0), (140.0, 118.0), (119.0, 112.5)], tput: vec![] },
        };
        let missing = Row {
            name: "cached response",
            judge: Judge::MinRatio(0.8),
            ours: side("nimbus", 60_000.0, 31.0),
            reference: Err("nginx not installed".into()),
            blocks: Blocks::default(),
        };
        vec![
            (1, vec![cache(Ok(side("nginx (file)", 100_000.0, 25.0))), policy]),
            (2, vec![missing, cache(Ok(side("nginx (file)", 150_000.0, 20.0)))]),
        ]
    }

    #[test]
    fn sides_take_turns_forward_then_backward() {
        let order: Vec<Vec<usize>> = (0..3).map(|t| (0..2).map(|k| in_turn(t, k, 2)).collect()).collect();
        assert_eq!(order, [[0, 1], [1, 0], [0, 1]]);
        assert_eq!(in_turn(1, 0, 1), 0, "one side alone always goes");
    }

    #[test]
    fn sequential_blocks_pair_the_same_turns() {
        let a: Vec<f64> = (0..20).map(f64::from).collect();
        let b: Vec<f64> = (0..20).map(|x| f64::from(x) + 5.0).collect();
        let blocks = seq_blocks(&a, &b);
        assert_eq!(blocks.len(), SEQ_BLOCKS);
        assert!(blocks.iter().all(|(x, y)| y - x == 5.0), "{blocks:?}");
    }

    #[test]
    fn the_table_and_json_are_stable() {
        golden::check("edge-table.txt", &table(&runs()));
        golden::check("edge-runs.json", &serde_json::to_string_pretty(&runs_json(&runs())).unwrap());
    }
}
