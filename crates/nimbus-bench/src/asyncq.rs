//! `nimbus-bench async`: async invocations (Invoke API `X-Amz-Invocation-Type: Event`).
//!
//! - **durable accepts/s**: Event invocations of a no-op function at concurrency 1, 16 and 64;
//!   nimbus answers 202 only once the event is committed (SQLite WAL, synchronous=FULL, group
//!   commit). The queue is drained between phases so each starts from an empty queue.
//! - **end-to-end events/s**: N events accepted as fast as possible, timed from the first
//!   accept until `GET /v1/queue` reports depth 0, then checked in `GET /v1/invocations`.
//! - **reference**: the synchronous Invoke API (`RequestResponse`) to the same function.
//! - **fsync context**: `dd bs=4k count=1000 oflag=dsync` next to the data dir.
//!
//! Every run starts its own `nimbus up` with a fresh data dir.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::common::{pool_counts, Common};
use crate::load::{self, stats, Throughput, REQUEST_TIMEOUT};
use crate::output;
use crate::procs::{self, Nimbus};

#[derive(clap::Args)]
pub struct AsyncArgs {
    #[command(flatten)]
    pub common: Common,
}

/// The function every phase invokes.
const FUNCTION: &str = "noop";
const MAX_INSTANCES: u32 = 2;
/// BENCHMARKS.md § Targets: durable accepts/s on one node.
pub const ACCEPT_TARGET: f64 = 10_000.0;
const ACCEPT_CONCURRENCY: [usize; 3] = [1, 16, 64];
const SYNC_CONCURRENCY: usize = 16;
/// Concurrency of the end-to-end burst ("as fast as possible").
const E2E_CONCURRENCY: usize = 64;
const POLL: Duration = Duration::from_millis(50);

const HANDLER: &str = r#""""nimbus-bench async: a handler that does nothing."""


def handler(e, c):
    return None
"#;

/// How much of everything to do.
pub struct AsyncSettings {
    pub quick: bool,
    pub runs: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max: u64,
    pub e2e_events: u64,
    pub drain_timeout: Duration,
}

impl AsyncSettings {
    fn new(quick: bool, runs: usize) -> AsyncSettings {
        if quick {
            AsyncSettings {
                quick,
                runs,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(300),
                max: 3_000,
                e2e_events: 500,
                drain_timeout: Duration::from_secs(60),
            }
        } else {
            AsyncSettings {
                quick,
                runs,
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(5),
                max: 250_000,
                e2e_events: 5_000,
                drain_timeout: Duration::from_secs(300),
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "quick": self.quick, "runs": self.runs, "warmupSecs": self.warmup.as_secs_f64(),
            "phaseSecs": self.duration.as_secs_f64(), "phaseMaxRequests": self.max,
            "acceptConcurrency": ACCEPT_CONCURRENCY, "syncConcurrency": SYNC_CONCURRENCY,
            "e2eEvents": self.e2e_events, "e2eConcurrency": E2E_CONCURRENCY,
            "queuePollMs": POLL.as_millis() as u64, "drainTimeoutSecs": self.drain_timeout.as_secs_f64(),
        })
    }
}

/// One accept phase: the accepts and what it left for the worker.
struct Accepts {
    tput: Throughput,
    /// Unfinished events right after the phase.
    depth_after: u64,
    /// From the end of the phase until depth 0.
    drain_secs: f64,
}

impl Accepts {
    /// Events finished per second while draining (no accepts running).
    fn drain_rate(&self) -> f64 {
        if self.drain_secs > 0.0 {
            self.depth_after as f64 / self.drain_secs
        } else {
            f64::NAN
        }
    }
}

struct EndToEnd {
    events: u64,
    /// First accept → last 202.
    accept_secs: f64,
    /// First accept → depth 0 seen.
    total_secs: f64,
    /// Accepted ids found in `GET /v1/invocations?status=succeeded`.
    succeeded: usize,
}

impl EndToEnd {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.total_secs
    }
    fn accepts_per_sec(&self) -> f64 {
        self.events as f64 / self.accept_secs
    }
}

struct RunResult {
    run: usize,
    /// Instances of the function after the warm-up.
    instances: usize,
    e2e: EndToEnd,
    sync: Throughput,
    accepts: Vec<Accepts>,
}

impl RunResult {
    fn best_accepts(&self) -> Option<&Accepts> {
        self.accepts.iter().max_by(|a, b| a.tput.rps().total_cmp(&b.tput.rps()))
    }
    fn accepts_at(&self, c: usize) -> Option<&Accepts> {
        self.accepts.iter().find(|a| a.tput.concurrency == c)
    }
}

/// `dd` with one synchronous 4 KiB write per block.
struct Dd {
    writes: u64,
    secs: f64,
    line: String,
}

impl Dd {
    fn per_write_us(&self) -> f64 {
        self.secs * 1e6 / self.writes as f64
    }
}

pub type PostClient = Client<HttpConnector, Full<Bytes>>;

pub fn post_client() -> PostClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(conn)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Event,
    Sync,
}

/// One Invoke API call with body `{"n": n}`; an Event call returns the event id.
pub async fn invoke(client: &PostClient, uri: &Uri, kind: Kind, n: u64) -> Result<Option<String>> {
    let req = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            "x-amz-invocation-type",
            match kind {
                Kind::Event => "Event",
                Kind::Sync => "RequestResponse",
            },
        )
        .body(Full::new(Bytes::from(format!("{{\"n\": {n}}}"))))?;
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (id, function_error) = (header("x-amzn-requestid"), header("x-amz-function-error"));
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, id, function_error, body))
    };
    let (status, id, function_error, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .with_context(|| format!("POST {uri} took over {REQUEST_TIMEOUT:?}"))??;
    match kind {
        Kind::Event => {
            if status != StatusCode::ACCEPTED {
                bail!("Event invoke answered {status} {:?}, not 202", String::from_utf8_lossy(&body));
            }
            Ok(Some(id.context("a 202 without x-amzn-requestid")?))
        }
        Kind::Sync => {
            if status != StatusCode::OK || function_error.is_some() || body.as_ref() != b"null" {
                bail!(
                    "RequestResponse invoke answered {status} (function error {function_error:?}) {:?}, not 200 null",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(None)
        }
    }
}

/// Throughput of `kind` invocations at `concurrency` (see `load::throughput_of`).
pub async fn invocations(
    uri: &Uri,
    kind: Kind,
    pid: Option<u32>,
    concurrency: usize,
    warmup: Duration,
    dur: Duration,
    max: u64,
) -> Result<Throughput> {
    let client = post_client();
    let uri = uri.clone();
    let op = move |i| {
        let (client, uri) = (client.clone(), uri.clone());
        async move { invoke(&client, &uri, kind, i).await.map(|_| ()) }
    };
    load::throughput_of(op, pid, concurrency, warmup, dur, max).await
}

struct Endpoints {
    invoke: Uri,
    queue: Uri,
    succeeded: Uri,
    functions: Uri,
}

async fn depth(client: &load::HttpClient, queue: &Uri, token: &str) -> Result<u64> {
    let v = load::get_json(client, queue, token).await?;
    v.get("depth").and_then(Value::as_u64).with_context(|| format!("GET /v1/queue answered {v} without a depth"))
}

/// Poll `queue` (a `/v1/queue` URL) every 50 ms until depth 0: (depth at the first poll,
/// seconds until 0).
pub async fn drain(client: &load::HttpClient, queue: &Uri, token: &str, timeout: Duration) -> Result<(u64, f64)> {
    let t0 = Instant::now();
    let first = depth(client, queue, token).await?;
    let mut d = first;
    while d > 0 {
        if t0.elapsed() > timeout {
            bail!("the queue still holds {d} events {timeout:?} after the accepts ({first} then)");
        }
        tokio::time::sleep(POLL).await;
        d = depth(client, queue, token).await?;
    }
    Ok((first, t0.elapsed().as_secs_f64()))
}

/// Accept `n` events at `E2E_CONCURRENCY` as fast as possible, then wait for depth 0.
async fn end_to_end(s: &AsyncSettings, nimbus: &Nimbus, ep: &Endpoints) -> Result<EndToEnd> {
    let mgmt = load::client();
    let before = depth(&mgmt, &ep.queue, &nimbus.token).await?;
    if before != 0 {
        bail!("the queue holds {before} events before the end-to-end phase; expected an empty queue");
    }
    let n = s.e2e_events;
    let client = post_client();
    let issued = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(E2E_CONCURRENCY);
    for _ in 0..E2E_CONCURRENCY {
        let (client, uri, issued) = (client.clone(), ep.invoke.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Some(id) = invoke(&client, &uri, Kind::Event, i).await? {
                    ids.push(id);
                }
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.extend(t.await.context("an accept task failed")??);
    }
    let accept_secs = t0.elapsed().as_secs_f64();
    if ids.len() as u64 != n {
        bail!("{n} accepts returned {} distinct event ids", ids.len());
    }
    drain(&mgmt, &ep.queue, &nimbus.token, s.drain_timeout).await?;
    let total_secs = t0.elapsed().as_secs_f64();
    let list = load::get_json(&mgmt, &ep.succeeded, &nimbus.token).await?;
    let succeeded = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("requestId").and_then(Value::as_str))
                .filter(|id| ids.contains(*id))
                .collect::<HashSet<_>>()
                .len()
        })
        .unwrap_or(0);
    if succeeded as u64 != n {
        bail!("only {succeeded} of the {n} accepted events are listed as succeeded once the queue is empty");
    }
    Ok(EndToEnd { events: n, accept_secs, total_secs, succeeded })
}

async fn measure_run(s: &AsyncSettings, nimbus: &Nimbus, run: usize) -> Result<RunResult> {
    let base = &nimbus.url;
    let ep = Endpoints {
        invoke: load::uri(&format!("{base}/2015-03-31/functions/{FUNCTION}/invocations"))?,
        queue: load::uri(&format!("{base}/v1/queue"))?,
        succeeded: load::uri(&format!("{base}/v1/invocations?status=succeeded&function={FUNCTION}&limit=10000"))?,
        functions: load::uri(&format!("{base}/v1/functions"))?,
    };
    let pid = nimbus.pid();
    let mgmt = load::client();

    // Start both instances (unrecorded synchronous calls), so no phase pays for a cold start.
    let warm = Duration::from_millis(500).max(s.warmup);
    invocations(&ep.invoke, Kind::Sync, pid, SYNC_CONCURRENCY, Duration::ZERO, warm, s.max).await?;
    let (instances, _) = pool_counts(&load::get_json(&mgmt, &ep.functions, &nimbus.token).await?, FUNCTION)?;

    eprintln!("  end to end: {} events", s.e2e_events);
    let e2e = end_to_end(s, nimbus, &ep).await.context("end to end")?;

    eprintln!("  sync c={SYNC_CONCURRENCY}");
    let sync = invocations(&ep.invoke, Kind::Sync, pid, SYNC_CONCURRENCY, s.warmup, s.duration, s.max).await?;

    let mut accepts = Vec::new();
    for c in ACCEPT_CONCURRENCY {
        eprintln!("  accept c={c}");
        let tput = invocations(&ep.invoke, Kind::Event, pid, c, s.warmup, s.duration, s.max).await?;
        let (depth_after, drain_secs) = drain(&mgmt, &ep.queue, &nimbus.token, s.drain_timeout)
            .await
            .with_context(|| format!("draining after the accepts at c={c}"))?;
        accepts.push(Accepts { tput, depth_after, drain_secs });
    }
    Ok(RunResult { run, instances, e2e, sync, accepts })
}

fn put(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The app: one no-op python function, no routes.
fn write_app(root: &Path) -> Result<PathBuf> {
    let app = root.join("app");
    put(&app.join("functions/noop/handler.py"), HANDLER)?;
    put(
        &app.join("nimbus.toml"),
        &format!(
            "# Written by nimbus-bench; deleted when the run ends.\nname = \"bench-async\"\n\n[functions.{FUNCTION}]\nruntime = \"python\"\nhandler = \"handler.handler\"\ncode = \"functions/noop\"\nmax_instances = {MAX_INSTANCES}\nkeep_alive = \"10m\"\n"
        ),
    )?;
    Ok(app)
}

/// `dd if=/dev/zero of=DIR/dd.bin bs=4k count=1000 oflag=dsync`, timed by dd itself.
fn dd(dir: &Path) -> Result<Dd> {
    let file = dir.join("dd.bin");
    let writes = 1000;
    let out = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=4k", &format!("count={writes}"), "oflag=dsync"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run dd")?;
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("dd failed ({}): {stderr}", out.status);
    }
    // "4096000 bytes (4.1 MB, 3.9 MiB) copied, 1.2345 s, 3.3 MB/s"
    let line = stderr.lines().find(|l| l.contains(" copied, ")).unwrap_or_default().trim().to_owned();
    let secs = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" s").and_then(|v| v.trim().parse::<f64>().ok()))
        .with_context(|| format!("cannot read the time from dd's output {stderr:?}"))?;
    Ok(Dd { writes, secs, line })
}

pub async fn run(args: AsyncArgs) -> Result<()> {
    let args = args.common;
    let s = AsyncSettings::new(args.quick, usize::try_from(args.runs)?);
    let nimbus_bin = procs::locate_nimbus(args.nimbus.clone())?;
    let python = procs::python()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-async-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let app = write_app(&root)?;
    let machine_before = output::machine();
    eprintln!("nimbus-bench async: {} in {}", if s.quick { "quick run" } else { "full run" }, root.display());
    eprintln!("  nimbus {}\n  python {}", nimbus_bin.display(), python.display());
    let fsync = dd(&root)?;
    eprintln!("  dd: {} ({:.0} µs per synchronous 4 KiB write)", fsync.line, fsync.per_write_us());

    let mut runs = Vec::new();
    for run in 1..=s.runs {
        eprintln!("run {run}/{}", s.runs);
        let data = root.join(format!("data-{run}"));
        let log = root.join(format!("nimbus-{run}.log"));
        let nimbus = Nimbus::launch(&nimbus_bin, &app, &data, &log, &[("NIMBUS_PYTHON", python.as_path())]).await?;
        let result = measure_run(&s, &nimbus, run).await;
        if result.is_err() {
            eprintln!("nimbus log tail ({}):\n{}", log.display(), procs::tail(&log));
        }
        nimbus.stop().await?;
        match result {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("temp dir kept: {}", root.display());
                return Err(e.context(format!("run {run}")));
            }
        }
    }
    let machine_after = output::machine();
    print!("{}", table(&s, &runs, &fsync, &root));
    let doc = json!({
        "benchmark": "async",
        "notes": [
            "function: python `def handler(e, c): return None`, max_instances = 2, warm (both instances started before any phase)",
            "accept: POST /2015-03-31/functions/noop/invocations with X-Amz-Invocation-Type: Event and body {\"n\": i}; 202 once the event is committed",
            "accept phases run while the worker drains the queue on the same machine; the queue is drained between phases",
            "e2e: events accepted at concurrency 64 as fast as possible, first accept -> GET /v1/queue depth 0 (polled every 50 ms)",
            "sync: the same call with X-Amz-Invocation-Type: RequestResponse",
            "client: one tokio thread with a keep-alive hyper client; all traffic on 127.0.0.1; every run starts nimbus with a fresh data dir",
        ],
        "settings": s.json(),
        "machine": {"before": machine_before, "after": machine_after},
        "nimbusBinary": nimbus_bin.display().to_string(),
        "python": python.display().to_string(),
        "fsync": {"command": "dd if=/dev/zero of=TMP/dd.bin bs=4k count=1000 oflag=dsync", "output": fsync.line,
                  "writes": fsync.writes, "secs": fsync.secs, "perWriteUs": fsync.per_write_us()},
        "acceptTarget": ACCEPT_TARGET,
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    });
    output::save(&args.out("async"), &doc, &root, args.keep)
}

/// Machine CPU per operation not charged to nimbus, its instances or the load generator
/// (other processes, and kernel work charged to none of them): a sign of a busy machine.
fn other_cpu(t: &Throughput) -> Option<f64> {
    let (m, c) = (t.machine_cpu_us_per_req?, t.cpu_split?);
    Some(m - c.server_us - c.children_us - c.client_us)
}

fn cpu(t: &Throughput) -> String {
    t.cpu_split.map_or("-".to_owned(), |c| {
        format!(
            "{:.0} / {:.0} / {:.0} / {}",
            c.server_us,
            c.children_us,
            c.client_us,
            other_cpu(t).map_or("-".to_owned(), |v| format!("{v:.0}"))
        )
    })
}

fn table(s: &AsyncSettings, runs: &[RunResult], fsync: &Dd, root: &Path) -> String {
    let mut o = String::new();
    table_intro(&mut o, s, fsync, root);
    phases(&mut o, runs);
    end_to_end_lines(&mut o, runs);
    target_lines(&mut o, runs);
    o
}

/// What was measured and how, and the disk's synchronous-write time.
fn table_intro(o: &mut String, s: &AsyncSettings, fsync: &Dd, root: &Path) {
    let _ = writeln!(
        o,
        "\nnimbus-bench async ({} run, {} run(s) interleaved, fresh nimbus + data dir each; client: one tokio thread, keep-alive hyper, 127.0.0.1)",
        if s.quick { "quick" } else { "full" },
        s.runs
    );
    let _ = writeln!(
        o,
        "  function: python `def handler(e, c): return None`, max_instances = {MAX_INSTANCES}; payload {{\"n\": i}}"
    );
    let _ = writeln!(
        o,
        "  accept: Invoke API with X-Amz-Invocation-Type: Event -> 202 once committed; {:.2} s per concurrency after {:.2} s warm-up, queue drained between phases",
        s.duration.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "  fsync: `dd bs=4k count=1000 oflag=dsync` in {}: {:.3} s = {:.0} µs per synchronous 4 KiB write",
        root.display(),
        fsync.secs,
        fsync.per_write_us()
    );
}

/// A line per run and phase (the accepts at each concurrency, then the sync reference).
fn phases(o: &mut String, runs: &[RunResult]) {
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<4}{:<16}{:>10}{:>9}{:>9}{:>37}{:>8}{:>12}{:>9}{:>12}",
        "run",
        "config",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/op nimbus/inst/client/other",
        "errors",
        "left queued",
        "drain s",
        "drain ev/s"
    );
    for r in runs {
        let mut rows: Vec<(String, &Throughput, Option<&Accepts>)> =
            r.accepts.iter().map(|a| (format!("accept c={}", a.tput.concurrency), &a.tput, Some(a))).collect();
        rows.push((format!("sync c={SYNC_CONCURRENCY}"), &r.sync, None));
        for (name, t, a) in rows {
            let _ = writeln!(o, "{}", phase(r.run, &name, t, a));
            if let Some(e) = &t.first_error {
                let _ = writeln!(o, "      first error: {e}");
            }
        }
    }
    let _ = writeln!(o, "  (CPU other = machine busy CPU not charged to nimbus, its instances or the client: high = a busy machine)\n  (left queued = unfinished events right after the phase; drain s = from then until depth 0, polled every 50 ms)");
}

/// The line of one phase; `a` is what an accept phase left queued (none for the sync phase).
fn phase(run: usize, name: &str, t: &Throughput, a: Option<&Accepts>) -> String {
    let lat = stats(&t.latencies_us);
    format!(
        "{:<4}{:<16}{:>10.0}{:>9.2}{:>9.2}{:>37}{:>8}{:>12}{:>9}{:>12}",
        run,
        name,
        t.rps(),
        lat.p50 / 1e3,
        lat.p99 / 1e3,
        cpu(t),
        t.errors,
        a.map_or("-".to_owned(), |a| a.depth_after.to_string()),
        a.map_or("-".to_owned(), |a| format!("{:.2}", a.drain_secs)),
        a.map_or("-".to_owned(), |a| format!("{:.0}", a.drain_rate())),
    )
}

fn end_to_end_lines(o: &mut String, runs: &[RunResult]) {
    let _ =
        writeln!(o, "\nend to end (accept at c={E2E_CONCURRENCY} as fast as possible, first accept -> queue depth 0)");
    for r in runs {
        let e = &r.e2e;
        let _ = writeln!(
            o,
            "  run {}: {} events in {:.2} s = {:.0} events/s (accepted in {:.2} s = {:.0}/s; {} listed succeeded; {} instances)",
            r.run,
            e.events,
            e.total_secs,
            e.events_per_sec(),
            e.accept_secs,
            e.accepts_per_sec(),
            e.succeeded,
            r.instances
        );
    }
}

/// The best accept rate against its target, and what accepts and events cost against sync calls.
fn target_lines(o: &mut String, runs: &[RunResult]) {
    let _ = writeln!(o, "\ntargets (BENCHMARKS.md § Targets) and costs");
    for r in runs {
        if let Some(best) = r.best_accepts() {
            let rps = best.tput.rps();
            let verdict = if rps >= ACCEPT_TARGET {
                "met".to_owned()
            } else {
                format!("MISSED by {:.0}/s ({:.0} % of the target)", ACCEPT_TARGET - rps, rps / ACCEPT_TARGET * 100.0)
            };
            let _ = writeln!(
                o,
                "  run {}: durable accepts {:.0}/s (best, c={}) vs >= {ACCEPT_TARGET:.0}/s: {verdict}",
                r.run, rps, best.tput.concurrency
            );
        }
        if let Some(a) = r.accepts_at(SYNC_CONCURRENCY) {
            let _ = writeln!(
                o,
                "  run {}: c={SYNC_CONCURRENCY} accepts/s / sync invokes/s = {:.2}; end-to-end events/s / sync invokes/s = {:.2}",
                r.run,
                a.tput.rps() / r.sync.rps(),
                r.e2e.events_per_sec() / r.sync.rps()
            );
        }
    }
}

fn tput_json(t: &Throughput) -> Value {
    json!({
        "concurrency": t.concurrency, "ok": t.ok, "errors": t.errors, "firstError": t.first_error,
        "secs": t.secs, "perSec": t.rps(), "latencyUs": stats(&t.latencies_us).json(),
        "machineCpuUsPerOp": t.machine_cpu_us_per_req,
        "cpuUsPerOp": t.cpu_split.map(|c| json!({"nimbus": c.server_us, "instances": c.children_us, "loadGenerator": c.client_us, "other": other_cpu(t)})),
    })
}

fn run_json(r: &RunResult) -> Value {
    let accepts: Vec<Value> = r
        .accepts
        .iter()
        .map(|a| {
            let mut v = tput_json(&a.tput);
            if let Some(m) = v.as_object_mut() {
                m.insert("depthAfter".into(), json!(a.depth_after));
                m.insert("drainSecs".into(), json!(a.drain_secs));
                m.insert("drainEventsPerSec".into(), json!(a.drain_rate()));
            }
            v
        })
        .collect();
    let best = r.best_accepts().map(|a| a.tput.rps());
    json!({
        "run": r.run,
        "instancesAfterWarmup": r.instances,
        "accepts": accepts,
        "sync": tput_json(&r.sync),
        "endToEnd": {
            "events": r.e2e.events, "acceptSecs": r.e2e.accept_secs, "acceptsPerSec": r.e2e.accepts_per_sec(),
            "totalSecs": r.e2e.total_secs, "eventsPerSec": r.e2e.events_per_sec(), "listedSucceeded": r.e2e.succeeded,
        },
        "bestAcceptsPerSec": best,
        "acceptTargetMet": best.map(|b| b >= ACCEPT_TARGET),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{self, throughput};

    fn runs() -> Vec<RunResult> {
        (1..=2)
            .map(|run| {
                let accepts = ACCEPT_CONCURRENCY
                    .iter()
                    .map(|&c| Accepts {
                        tput: throughput(
                            c,
                            if run == 1 { 1_500 * c as u64 } else { 100 * c as u64 },
                            600.0 * c as f64,
                            100.0,
                        ),
                        depth_after: 100 * c as u64,
                        drain_secs: 0.05 * c as f64,
                    })
                    .collect();
                let mut sync = throughput(SYNC_CONCURRENCY, 6_000, 2_500.0, 270.0);
                if run == 2 {
                    sync.errors = 1;
                    sync.first_error = Some("took over 30s".into());
                    sync.cpu_split = None;
                }
                RunResult {
                    run,
                    instances: 2,
                    e2e: EndToEnd { events: 5_000, accept_secs: 0.33, total_secs: 1.15, succeeded: 5_000 },
                    sync,
                    accepts,
                }
            })
            .collect()
    }

    #[test]
    fn the_async_table_and_json_are_pinned() {
        let fsync = Dd { writes: 1000, secs: 0.191, line: "4096000 bytes copied, 0.191 s, 21.4 MB/s".into() };
        let text = table(&AsyncSettings::new(false, 2), &runs(), &fsync, Path::new("/tmp/bench"));
        golden::check("async-table.txt", &text);
        let doc: Vec<Value> = runs().iter().map(run_json).collect();
        golden::check("async-runs.json", &serde_json::to_string_pretty(&doc).unwrap());
    }
}
