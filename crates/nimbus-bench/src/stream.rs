//! `nimbus-bench stream`: server-sent events, time from the moment the function writes an
//! event to the moment the client holds it. The conformance guest's `stream` op writes event
//! i+1 right after its fetch of a gate URL returns; the bench serves the gate and answers it
//! only once the client holds event i, so "gate answered → event i+1 at the client" is the
//! function writing the event and the platform carrying it (an upper bound: it includes the
//! guest reading the gate's answer). The same component runs under `wasmtime serve` beside it,
//! one run, and the report is absolute figures and the ratio. Node and Python join when their
//! streaming handlers exist in the bench fixtures (the hook is `Target`).

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

/// The app: the conformance guest as a streaming function on `/s/*`, allowed to reach the gates.
fn write_app(root: &Path) -> Result<PathBuf> {
    let app = root.join("app");
    let code = app.join("functions/sse");
    std::fs::create_dir_all(&code).with_context(|| format!("cannot create {}", code.display()))?;
    std::fs::copy(component(), code.join("sse.wasm")).context("cannot copy the conformance component")?;
    let manifest = "# Written by nimbus-bench stream; deleted when the run ends.\nname = \"bench-stream\"\n\n\
        [functions.sse]\nruntime = \"wasm\"\ncode = \"functions/sse\"\nresponse_mode = \"streaming\"\n\
        timeout = \"60s\"\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\n\
        [[routes]]\nmethod = \"GET\"\npath = \"/s/*\"\nfunction = \"sse\"\n";
    std::fs::write(app.join("nimbus.toml"), manifest).context("cannot write the app manifest")?;
    Ok(app)
}

/// What runs the guest: nimbus, or the reference.
#[derive(Clone, Copy)]
enum Target {
    NimbusWasm,
    WasmtimeServe,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::NimbusWasm => "nimbus wasm",
            Target::WasmtimeServe => "wasmtime serve",
        }
    }
}

async fn measure(target: Target, args: &StreamArgs, root: &Path, run: usize, n: usize) -> Result<Option<Vec<f64>>> {
    match target {
        Target::NimbusWasm => {
            let bin = procs::locate_nimbus(args.common.nimbus.clone())?;
            let app = write_app(root)?;
            let data = root.join(format!("data-{run}"));
            let log = root.join(format!("nimbus-{run}.log"));
            let nimbus = Nimbus::launch(&bin, &app, &data, &log, &[]).await?;
            let l = sse_latencies(&format!("{}/s/", nimbus.url), n).await;
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
        for target in [Target::NimbusWasm, Target::WasmtimeServe] {
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
    let mut worst_p50 = 0.0f64;
    for (run, target, l) in rows {
        let s = stats(l);
        let reference =
            rows.iter().find(|(r, t, _)| r == run && matches!(t, Target::WasmtimeServe)).map(|(_, _, l)| stats(l).p50);
        let ratio = reference.map_or("–".to_owned(), |r| format!("{:.2}×", s.p50 / r));
        println!("| {run} | {} | {} | {:.3} | {:.3} | {:.3} | {ratio} |", target.name(), s.n, s.p50, s.p99, s.max);
        if matches!(target, Target::NimbusWasm) {
            worst_p50 = worst_p50.max(s.p50);
        }
        out.push(
            json!({"run": run, "server": target.name(), "events": s.n, "p50Ms": s.p50, "p99Ms": s.p99, "maxMs": s.max}),
        );
    }
    let met = worst_p50 <= TTFB_TARGET_MS;
    println!(
        "\nnimbus wasm p50 {worst_p50:.3} ms (worst run; target <= {TTFB_TARGET_MS} ms: {})",
        if met { "met" } else { "missed" }
    );
    let doc: Value = json!({
        "benchmark": "stream",
        "settings": {"quick": args.common.quick, "runs": args.common.runs, "eventsPerRun": n},
        "machine": crate::output::machine(),
        "rows": out,
        "targetMs": TTFB_TARGET_MS,
    });
    crate::output::save(&args.common.out("stream"), &doc, root, args.common.keep)
}
