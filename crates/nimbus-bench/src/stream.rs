//! `nimbus-bench stream`: server-sent events, time from the moment the function writes an
//! event to the moment the client holds it. Each handler writes event i+1 right after its fetch
//! of a gate URL returns; the bench serves the gate and answers it only once the client holds
//! event i, so "gate answered → event i+1 at the client" is the function writing the event and
//! the platform carrying it (an upper bound: it includes the handler reading the gate's answer).
//! The handlers: the conformance guest's `stream` op (wasm), a Node handler wrapped in
//! `awslambda.streamifyResponse` and a Python generator, all three in one app. The same
//! component runs under `wasmtime serve` beside them, in the same run, and the report is
//! absolute figures and each p50's ratio to it.
//!
//! nimbus runs with `--insecure-no-sandbox` here, as in `nimbus-bench fluid`: the sandbox's
//! egress proxy lets Node and Python functions reach public hosts only, and the gate is on
//! loopback. wasm functions do not run in that sandbox either way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::Common;
use crate::load::stats;
use crate::procs::{self, Nimbus};

/// BENCHMARKS.md § Targets: SSE time to first byte ≤ 5 ms after the function writes it.
pub const TTFB_TARGET_MS: f64 = 5.0;
/// Longest wait for one event before the run is given up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub common: Common,
    /// The wasmtime CLI (default: as `nimbus-bench wasm` finds it).
    #[arg(long)]
    pub wasmtime: Option<PathBuf>,
}

/// The conformance guest: its `stream` op is the SSE handler.
fn component() -> PathBuf {
    crate::common::manifest_dir().join("../../tests/fixtures/wasm/conformance.wasm")
}

/// A gate: each request waits for a release; the instant of each answer is sent back.
async fn gate() -> Result<(String, mpsc::Sender<()>, mpsc::Receiver<Instant>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the gate")?;
    let port = listener.local_addr()?.port();
    let (release_tx, mut release_rx) = mpsc::channel::<()>(1);
    let (at_tx, at_rx) = mpsc::channel::<Instant>(1);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while !buf.get(..got).is_some_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n")) && got < buf.len() {
                match conn.read(buf.get_mut(got..).unwrap_or_default()).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            if release_rx.recv().await.is_none() {
                return;
            }
            let at = Instant::now();
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            if at_tx.send(at).await.is_err() {
                return;
            }
        }
    });
    Ok((format!("http://127.0.0.1:{port}/gate"), release_tx, at_rx))
}

/// One SSE request of `n` events to `base` (`http://host:port/prefix`); returns the gate → client
/// latency of events 2..=n in ms.
async fn sse_latencies(base: &str, n: usize) -> Result<Vec<f64>> {
    let (gate_url, release, mut answered) = gate().await?;
    let rest = base.strip_prefix("http://").context("the server URL is not http://")?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let mut conn = TcpStream::connect(authority).await.with_context(|| format!("cannot connect to {authority}"))?;
    conn.set_nodelay(true)?;
    let head = format!("GET /{prefix}stream?n={n}&gate={gate_url} HTTP/1.1\r\nhost: {authority}\r\n\r\n");
    conn.write_all(head.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut latencies = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    for i in 1..=n {
        let want = format!("data: event {i}\n\n");
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !contains(&seen, want.as_bytes()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left, conn.read(&mut buf)).await;
            match read {
                Ok(Ok(0)) => bail!("the stream from {base} ended before event {i}"),
                Ok(Ok(k)) => seen.extend_from_slice(buf.get(..k).unwrap_or_default()),
                Ok(Err(e)) => return Err(e).context("reading the stream"),
                Err(_) => bail!("event {i} from {base} did not come within {EVENT_TIMEOUT:?}"),
            }
        }
        let got = Instant::now();
        if i > 1 {
            let at = answered.recv().await.context("the gate stopped")?;
            latencies.push(got.duration_since(at).as_secs_f64() * 1e3);
        }
        // Keep only the tail: the next event is searched after this one.
        let cut = seen.len().saturating_sub(want.len());
        seen.drain(..cut);
        if i < n {
            release.send(()).await.context("the gate stopped")?;
        }
    }
    Ok(latencies)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The Node handler: event 1 at once, then each next one right after the gate answers.
const NODE_HANDLER: &str = r#"// nimbus-bench stream: an SSE event after each answer of the bench's gate.
const http = require('http');
const gate = (url) => new Promise((resolve, reject) => {
  http.get(url, (res) => { res.resume(); res.on('end', resolve); }).on('error', reject);
});
exports.handler = awslambda.streamifyResponse(async (event, responseStream) => {
  const q = event.queryStringParameters || {};
  const out = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 200, headers: { 'content-type': 'text/event-stream' },
  });
  for (let i = 1; i <= Number(q.n || 1); i++) {
    if (i > 1) await gate(q.gate);
    out.write(`data: event ${i}\n\n`);
  }
  out.end();
});
"#;

/// The Python handler, a generator: the same events (no proxy, whatever the environment says).
const PYTHON_HANDLER: &str = r#"# nimbus-bench stream: an SSE event after each answer of the bench's gate.
import urllib.request

direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def handler(event, context):
    q = event.get("queryStringParameters") or {}
    yield {"statusCode": 200, "headers": {"content-type": "text/event-stream"}}
    for i in range(1, int(q.get("n", "1")) + 1):
        if i > 1:
            with direct.open(q["gate"]) as answer:
                answer.read()
        yield f"data: event {i}\n\n"
"#;

const MANIFEST: &str = r#"# Written by nimbus-bench stream; deleted when the run ends.
name = "bench-stream"

[functions.sse]
runtime = "wasm"
code = "functions/sse"
response_mode = "streaming"
timeout = "60s"
allowed_outbound_hosts = ["http://127.0.0.1:*"]

[functions.sse-node]
runtime = "node"
handler = "index.handler"
code = "functions/sse-node"
response_mode = "streaming"
timeout = "60s"

[functions.sse-python]
runtime = "python"
handler = "handler.handler"
code = "functions/sse-python"
response_mode = "streaming"
timeout = "60s"

[[routes]]
method = "GET"
path = "/s/*"
function = "sse"

[[routes]]
method = "GET"
path = "/node/*"
function = "sse-node"

[[routes]]
method = "GET"
path = "/py/*"
function = "sse-python"
"#;

/// The app: the conformance guest (`/s/*`), the Node handler (`/node/*`) and the Python one
/// (`/py/*`), each a streaming function.
fn write_app(root: &Path) -> Result<PathBuf> {
    let app = root.join("app");
    let put = |dir: &str, file: &str, bytes: &[u8]| -> Result<()> {
        let code = app.join("functions").join(dir);
        std::fs::create_dir_all(&code).with_context(|| format!("cannot create {}", code.display()))?;
        std::fs::write(code.join(file), bytes).with_context(|| format!("cannot write {dir}/{file}"))
    };
    put("sse-node", "index.js", NODE_HANDLER.as_bytes())?;
    put("sse-python", "handler.py", PYTHON_HANDLER.as_bytes())?;
    let wasm = std::fs::read(component()).context("cannot read the conformance component")?;
    put("sse", "sse.wasm", &wasm)?;
    std::fs::write(app.join("nimbus.toml"), MANIFEST).context("cannot write the app manifest")?;
    Ok(app)
}

/// What runs the handler: nimbus (one of its runtimes), or the reference.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    NimbusWasm,
    NimbusNode,
    NimbusPython,
    WasmtimeServe,
}

impl Target {
    const ALL: [Target; 4] = [Target::NimbusWasm, Target::NimbusNode, Target::NimbusPython, Target::WasmtimeServe];

    fn name(self) -> &'static str {
        match self {
            Target::NimbusWasm => "nimbus wasm",
            Target::NimbusNode => "nimbus node",
            Target::NimbusPython => "nimbus python",
            Target::WasmtimeServe => "wasmtime serve",
        }
    }

    /// The route prefix of a nimbus target's function.
    fn prefix(self) -> &'static str {
        match self {
            Target::NimbusNode => "node/",
            Target::NimbusPython => "py/",
            Target::NimbusWasm => "s/",
            Target::WasmtimeServe => "",
        }
    }
}

async fn measure(target: Target, args: &StreamArgs, root: &Path, run: usize, n: usize) -> Result<Option<Vec<f64>>> {
    match target {
        Target::NimbusWasm | Target::NimbusNode | Target::NimbusPython => {
            let bin = procs::locate_nimbus(args.common.nimbus.clone())?;
            let interps = procs::Interpreters::resolve().context("the stream bench needs node and python3")?;
            let app = write_app(root)?;
            let tag = format!("{}-{run}", target.prefix().trim_end_matches('/'));
            let (data, log) = (root.join(format!("data-{tag}")), root.join(format!("nimbus-{tag}.log")));
            let env = [("NIMBUS_NODE", interps.node.as_path()), ("NIMBUS_PYTHON", interps.python.as_path())];
            let nimbus = Nimbus::launch_with(&bin, &app, &data, &log, &env, &["--insecure-no-sandbox"]).await?;
            let l = sse_latencies(&format!("{}/{}", nimbus.url, target.prefix()), n).await;
            nimbus.stop().await?;
            l.map(Some)
        }
        Target::WasmtimeServe => {
            let Ok(bin) = crate::wasm::find_wasmtime(args.wasmtime.clone())? else {
                eprintln!("wasmtime serve: not installed (scripts/bench-tools.sh); left out");
                return Ok(None);
            };
            let server = crate::wasm::start_wasmtime(&bin, &component(), true, root, run).await?;
            let l = sse_latencies(&format!("{}/", server.url), n).await;
            drop(server);
            l.map(Some)
        }
    }
}

pub async fn run(args: StreamArgs) -> Result<()> {
    let runs = usize::try_from(args.common.runs)?;
    let n = if args.common.quick { 50 } else { 500 };
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-stream-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    eprintln!("nimbus-bench stream: SSE write → client, {n} events a run, {runs} run(s) in {}", root.display());
    let mut rows: Vec<(usize, Target, Vec<f64>)> = Vec::new();
    for run in 1..=runs {
        for target in Target::ALL {
            eprintln!("run {run}/{runs}: {}", target.name());
            if let Some(l) = measure(target, &args, &root, run, n).await? {
                rows.push((run, target, l));
            }
        }
    }
    report(&args, &root, &rows, n)
}

fn report(args: &StreamArgs, root: &Path, rows: &[(usize, Target, Vec<f64>)], n: usize) -> Result<()> {
    println!("\n## SSE: function writes an event → the client holds it\n");
    println!("| run | server | events | p50 (ms) | p99 (ms) | max (ms) | p50 vs wasmtime serve |");
    println!("|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for (run, target, l) in rows {
        let s = stats(l);
        let reference =
            rows.iter().find(|(r, t, _)| r == run && matches!(t, Target::WasmtimeServe)).map(|(_, _, l)| stats(l).p50);
        let ratio = reference.map_or("–".to_owned(), |r| format!("{:.2}×", s.p50 / r));
        println!("| {run} | {} | {} | {:.3} | {:.3} | {:.3} | {ratio} |", target.name(), s.n, s.p50, s.p99, s.max);
        out.push(
            json!({"run": run, "server": target.name(), "events": s.n, "p50Ms": s.p50, "p99Ms": s.p99, "maxMs": s.max}),
        );
    }
    println!();
    for target in Target::ALL.into_iter().filter(|t| *t != Target::WasmtimeServe) {
        let worst = rows.iter().filter(|(_, t, _)| *t == target).map(|(_, _, l)| stats(l).p50).reduce(f64::max);
        if let Some(worst) = worst {
            let met = if worst <= TTFB_TARGET_MS { "met" } else { "missed" };
            println!("{} p50 {worst:.3} ms (worst run; target <= {TTFB_TARGET_MS} ms: {met})", target.name());
        }
    }
    let doc: Value = json!({
        "benchmark": "stream",
        "settings": {"quick": args.common.quick, "runs": args.common.runs, "eventsPerRun": n},
        "machine": crate::output::machine(),
        "rows": out,
        "targetMs": TTFB_TARGET_MS,
    });
    crate::output::save(&args.common.out("stream"), &doc, root, args.common.keep)
}
