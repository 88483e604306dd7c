//! `nimbus-bench cluster`: what replication costs. The same app on the embedded backend (one
//! `nimbus up`, SQLite) and on a cluster (three `nimbus up --cluster` nodes on a three-server
//! NATS JetStream cluster, replicas 3, every server with `sync_interval: always`), one after the
//! other in each run:
//!
//! - **durable accepts/s and p99 accept latency**: Invoke API calls with
//!   `X-Amz-Invocation-Type: Event` of a no-op function at concurrency 32 (the load loop of
//!   `nimbus-bench async`); a 202 comes only once the event is durable (SQLite committed, or the
//!   stream acknowledged by a majority of its replicas). The cluster's calls go to its nodes in
//!   turn. The queue is then drained, so every accepted event ran before the next phase.
//! - **deploys**: `nimbus deploy` of a changed app (a new `env` value each time), timed; in the
//!   cluster through node A, then the time from its return until nodes B and C list the new
//!   version as live in `GET /v1/deployments` (polled every 5 ms): the deploy propagation.
//!
//! The NATS servers are `nimbus_cluster::testing::NatsServers` (the cluster tests' harness:
//! loopback, temp storage, killed when dropped).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hyper::Uri;
use nimbus_cluster::testing::{nats_server_binary, NatsServers};
use serde_json::{json, Value};

use crate::asyncq::{self, Kind};
use crate::common::Common;
use crate::load::{self, stats, Throughput};
use crate::output;
use crate::procs::{self, Nimbus};

#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
}

const FUNCTION: &str = "noop";
const MAX_INSTANCES: u32 = 2;
/// Accept concurrency (all nodes together).
const CONCURRENCY: usize = 32;
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// How often a node's `GET /v1/deployments` is asked while waiting for a deploy.
const DEPLOY_POLL: Duration = Duration::from_millis(5);

const HANDLER: &str = r#""""nimbus-bench cluster: a handler that does nothing."""


def handler(e, c):
    return None
"#;

/// How much of everything to do.
pub struct ClusterSettings {
    pub quick: bool,
    pub runs: usize,
    /// Synchronous calls to every node before the accepts, so no phase pays for a cold start.
    pub warm: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub max: u64,
    pub deploys: usize,
    pub drain_timeout: Duration,
    pub deploy_timeout: Duration,
}

impl ClusterSettings {
    fn new(quick: bool, runs: usize) -> ClusterSettings {
        if quick {
            ClusterSettings {
                quick,
                runs,
                warm: Duration::from_millis(300),
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(500),
                max: 3_000,
                deploys: 2,
                drain_timeout: Duration::from_secs(60),
                deploy_timeout: Duration::from_secs(20),
            }
        } else {
            ClusterSettings {
                quick,
                runs,
                warm: Duration::from_secs(1),
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(5),
                max: 250_000,
                deploys: 7,
                drain_timeout: Duration::from_secs(300),
                deploy_timeout: Duration::from_secs(60),
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "quick": self.quick, "runs": self.runs, "warmSecs": self.warm.as_secs_f64(),
            "warmupSecs": self.warmup.as_secs_f64(), "phaseSecs": self.duration.as_secs_f64(),
            "phaseMaxRequests": self.max, "concurrency": CONCURRENCY, "deploys": self.deploys,
            "deployPollMs": DEPLOY_POLL.as_millis() as u64, "drainTimeoutSecs": self.drain_timeout.as_secs_f64(),
            "deployTimeoutSecs": self.deploy_timeout.as_secs_f64(), "clusterNodes": NODES.len(),
        })
    }
}

/// One deploy: its version, how long `nimbus deploy` took, and how long after its return the
/// deploying node and (in the cluster) each other node listed the version as live.
pub struct Deploy {
    pub version: u64,
    pub call_ms: f64,
    pub via_ms: f64,
    pub propagation_ms: Vec<(String, f64)>,
}

impl Deploy {
    /// Until the last of the other nodes serves it (None: one node, nothing to propagate).
    fn slowest_ms(&self) -> Option<f64> {
        self.propagation_ms.iter().map(|(_, ms)| *ms).reduce(f64::max)
    }
}

/// One backend's measurements in one run.
pub struct Side {
    pub accepts: Throughput,
    /// Unfinished events right after the accepts, and seconds until the queue was empty.
    pub depth_after: u64,
    pub drain_secs: f64,
    pub deploys: Vec<Deploy>,
}

impl Side {
    fn propagations(&self) -> Vec<f64> {
        self.deploys.iter().filter_map(Deploy::slowest_ms).collect()
    }
    fn calls(&self) -> Vec<f64> {
        self.deploys.iter().map(|d| d.call_ms).collect()
    }
}

pub struct RunResult {
    pub run: usize,
    pub embedded: Side,
    pub cluster: Side,
}

/// A node under test: its `nimbus up` and its endpoints.
struct Node {
    name: String,
    nimbus: Nimbus,
    invoke: Uri,
    queue: Uri,
    deployments: Uri,
}

impl Node {
    async fn launch(ctx: &Ctx, app: &Path, name: &str, extra: &[&str]) -> Result<Node> {
        let data = ctx.root.join(format!("data-{name}"));
        let log = ctx.root.join(format!("{name}.log"));
        let mut args = vec!["--aws-listen", "off"];
        args.extend_from_slice(extra);
        let env = [("NIMBUS_PYTHON", ctx.python.as_path())];
        let nimbus = Nimbus::launch_with(&ctx.nimbus, app, &data, &log, &env, &args)
            .await
            .with_context(|| format!("starting {name}"))?;
        let base = nimbus.url.clone();
        Ok(Node {
            name: name.to_owned(),
            invoke: load::uri(&format!("{base}/2015-03-31/functions/{FUNCTION}/invocations"))?,
            queue: load::uri(&format!("{base}/v1/queue"))?,
            deployments: load::uri(&format!("{base}/v1/deployments"))?,
            nimbus,
        })
    }

    /// What polling this node's deployments needs, owned (for a task of its own).
    fn watch(&self) -> Watch {
        Watch { name: self.name.clone(), deployments: self.deployments.clone(), token: self.nimbus.token.clone() }
    }
}

/// A node's `GET /v1/deployments`, with its name and token.
struct Watch {
    name: String,
    deployments: Uri,
    token: String,
}

impl Watch {
    /// The version the node lists as live.
    async fn live_version(&self, client: &load::HttpClient) -> Result<Option<u64>> {
        let list = load::get_json(client, &self.deployments, &self.token).await?;
        let live = list.as_array().and_then(|a| a.iter().find(|d| d.get("live") == Some(&Value::Bool(true))));
        Ok(live.and_then(|d| d.get("version")).and_then(Value::as_u64))
    }

    /// Poll until the node lists `version` as live: ms from `since`.
    async fn until_live(self, version: u64, since: Instant, timeout: Duration) -> Result<f64> {
        let client = load::client();
        loop {
            let live = self.live_version(&client).await?;
            if live == Some(version) {
                return Ok(since.elapsed().as_secs_f64() * 1e3);
            }
            if since.elapsed() > timeout {
                bail!(
                    "{} still lists version {live:?} as live {timeout:?} after version {version} was deployed",
                    self.name
                );
            }
            tokio::time::sleep(DEPLOY_POLL).await;
        }
    }
}

/// What every phase needs: the binaries and where the run's files go.
struct Ctx {
    nimbus: PathBuf,
    python: PathBuf,
    root: PathBuf,
}

fn put(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The app: one no-op python function whose `env` carries `mark` (a new mark, a new version).
fn write_app(app: &Path, mark: usize) -> Result<()> {
    put(&app.join("functions/noop/handler.py"), HANDLER)?;
    put(
        &app.join("nimbus.toml"),
        &format!(
            "# Written by nimbus-bench; deleted when the run ends.\nname = \"bench-cluster\"\n\n[functions.{FUNCTION}]\nruntime = \"python\"\nhandler = \"handler.handler\"\ncode = \"functions/noop\"\nmax_instances = {MAX_INSTANCES}\nkeep_alive = \"10m\"\nenv = {{ MARK = \"{mark}\" }}\n"
        ),
    )
}

/// Warm every node, then Event invocations at `CONCURRENCY` sent to the nodes in turn, then
/// wait until the (shared) queue is empty.
async fn accepts(s: &ClusterSettings, nodes: &[Node]) -> Result<(Throughput, u64, f64)> {
    let first = nodes.first().context("no node to measure")?;
    for n in nodes {
        asyncq::invocations(&n.invoke, Kind::Sync, n.nimbus.pid(), 8, Duration::ZERO, s.warm, s.max)
            .await
            .with_context(|| format!("warming {}", n.name))?;
    }
    let client = asyncq::post_client();
    let uris: Arc<Vec<Uri>> = Arc::new(nodes.iter().map(|n| n.invoke.clone()).collect());
    let op = move |i: u64| {
        let (client, uris) = (client.clone(), uris.clone());
        async move {
            let uri = uris.get((i % uris.len() as u64) as usize).context("no node to invoke")?;
            asyncq::invoke(&client, uri, Kind::Event, i).await.map(|_| ())
        }
    };
    // No server pid: the CPU that counts is the machine's (nimbus nodes, NATS servers, instances).
    let t = load::throughput_of(op, None, CONCURRENCY, s.warmup, s.duration, s.max).await?;
    let mgmt = load::client();
    let (depth, secs) = asyncq::drain(&mgmt, &first.queue, &first.nimbus.token, s.drain_timeout)
        .await
        .context("draining the queue after the accepts")?;
    Ok((t, depth, secs))
}

/// `nimbus deploy APP` through `via`: the version it printed and how long it took, in ms.
async fn deploy_via(ctx: &Ctx, via: &Node, app: &Path) -> Result<(u64, f64)> {
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new(&ctx.nimbus);
    cmd.arg("deploy").arg(app).args(["--server", &via.nimbus.url, "--token", &via.nimbus.token]);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("nimbus deploy took over 120 s")?
        .context("cannot run nimbus deploy")?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("nimbus deploy through {} failed ({}): {}", via.name, out.status, String::from_utf8_lossy(&out.stderr));
    }
    let version = deployed_version(&stdout)
        .with_context(|| format!("nimbus deploy printed no `version N` (stdout: {stdout:?})"))?;
    Ok((version, ms))
}

/// The N of "deployed APP version N (…)".
fn deployed_version(stdout: &str) -> Option<u64> {
    let (_, rest) = stdout.split_once(" version ")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `s.deploys` deploys through the first node, each followed by the wait for every node.
async fn deploys(s: &ClusterSettings, ctx: &Ctx, nodes: &[Node], app: &Path) -> Result<Vec<Deploy>> {
    let (via, others) = nodes.split_first().context("no node to deploy through")?;
    let mut out = Vec::with_capacity(s.deploys);
    for k in 1..=s.deploys {
        write_app(app, k)?;
        let (version, call_ms) = deploy_via(ctx, via, app).await?;
        let returned = Instant::now();
        // Every node watched at once (the deploying one too), so a slow one does not delay the
        // time measured for the next.
        let waits: Vec<_> =
            nodes.iter().map(|n| tokio::spawn(n.watch().until_live(version, returned, s.deploy_timeout))).collect();
        let mut live_ms = Vec::with_capacity(nodes.len());
        for wait in waits {
            live_ms.push(wait.await.context("a deploy watch failed")?.with_context(|| format!("version {version}"))?);
        }
        let (via_ms, others_ms) = live_ms.split_first().context("no node watched")?;
        let propagation_ms = others.iter().map(|n| n.name.clone()).zip(others_ms.iter().copied()).collect();
        out.push(Deploy { version, call_ms, via_ms: *via_ms, propagation_ms });
    }
    Ok(out)
}

/// Accepts, then deploys, on `nodes`; stopped whatever happened.
async fn measure(s: &ClusterSettings, ctx: &Ctx, nodes: Vec<Node>, app: &Path) -> Result<Side> {
    let result = async {
        let (accepts, depth_after, drain_secs) = accepts(s, &nodes).await?;
        let deploys = deploys(s, ctx, &nodes, app).await?;
        Ok::<_, anyhow::Error>(Side { accepts, depth_after, drain_secs, deploys })
    }
    .await;
    if result.is_err() {
        for n in &nodes {
            eprintln!("{} log tail ({}):\n{}", n.name, n.nimbus.log.display(), procs::tail(&n.nimbus.log));
        }
    }
    for n in nodes {
        n.nimbus.stop().await?;
    }
    result
}

async fn embedded(s: &ClusterSettings, ctx: &Ctx, run: usize) -> Result<Side> {
    let app = ctx.root.join(format!("app-embedded-{run}"));
    write_app(&app, 0)?;
    let node = Node::launch(ctx, &app, &format!("embedded-{run}"), &[]).await?;
    measure(s, ctx, vec![node], &app).await
}

async fn cluster(s: &ClusterSettings, ctx: &Ctx, run: usize) -> Result<Side> {
    let servers = NatsServers::start(NODES.len()).await.map_err(anyhow::Error::msg).context("starting NATS")?;
    let url = servers.url();
    let app = ctx.root.join(format!("app-cluster-{run}"));
    write_app(&app, 0)?;
    let mut nodes = Vec::with_capacity(NODES.len());
    for name in NODES {
        let node_name = format!("{name}-{run}");
        let args = ["--cluster", url.as_str(), "--node-name", node_name.as_str()];
        nodes.push(Node::launch(ctx, &app, &node_name, &args).await?);
    }
    let side = measure(s, ctx, nodes, &app).await;
    drop(servers);
    side
}

/// Stop with a clear sentence when there is no nats-server to run the cluster on.
fn nats_binary() -> Result<PathBuf> {
    nats_server_binary()
        .map_err(|e| anyhow::anyhow!("nimbus-bench cluster needs nats-server 2.11 or newer for its cluster side: {e}"))
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    let args = args.common;
    let s = ClusterSettings::new(args.quick, usize::try_from(args.runs)?);
    let nats = nats_binary()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let root = std::env::temp_dir().join(format!("nimbus-bench-cluster-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let ctx = Ctx { nimbus: procs::locate_nimbus(args.nimbus.clone())?, python: procs::python()?, root };
    let machine_before = output::machine();
    eprintln!("nimbus-bench cluster: {} in {}", if s.quick { "quick run" } else { "full run" }, ctx.root.display());
    eprintln!("  nimbus {}\n  nats-server {}\n  python {}", ctx.nimbus.display(), nats.display(), ctx.python.display());
    let mut runs = Vec::new();
    for run in 1..=s.runs {
        eprintln!("run {run}/{}: embedded", s.runs);
        let measured = match embedded(&s, &ctx, run).await {
            Ok(embedded) => {
                eprintln!("run {run}/{}: cluster", s.runs);
                cluster(&s, &ctx, run).await.map(|cluster| RunResult { run, embedded, cluster })
            }
            Err(e) => Err(e),
        };
        match measured {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("temp dir kept: {}", ctx.root.display());
                return Err(e.context(format!("run {run}")));
            }
        }
    }
    print!("{}", table(&s, &runs));
    let doc = json!({
        "benchmark": "cluster",
        "notes": NOTES,
        "settings": s.json(),
        "machine": {"before": machine_before, "after": output::machine()},
        "nimbusBinary": ctx.nimbus.display().to_string(),
        "natsServer": nats.display().to_string(),
        "python": ctx.python.display().to_string(),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    });
    output::save(&args.out("cluster"), &doc, &ctx.root, args.keep)
}

const NOTES: [&str; 5] = [
    "function: python `def handler(e, c): return None`, max_instances = 2 per node, warmed on every node before the accepts",
    "embedded: one `nimbus up` (SQLite, synchronous=FULL); cluster: three `nimbus up --cluster` nodes on three nats-servers (JetStream, replicas 3, sync_interval: always), all on this machine",
    "accept: POST /2015-03-31/functions/noop/invocations with X-Amz-Invocation-Type: Event at concurrency 32 (cluster: to the nodes in turn); 202 once the event is durable; then the queue is drained",
    "deploy: `nimbus deploy` of the app with a new env value, through node A; live = the version GET /v1/deployments lists as live (polled every 5 ms from the deploy's return)",
    "client: one tokio thread with a keep-alive hyper client; all traffic on 127.0.0.1; a shared machine: figures are noisy, ratios within one run are what to read",
];

/// Median (nearest rank) and max of a sample, in the sample's unit; "-" when it is empty.
fn median_max(sample: &[f64]) -> (String, String) {
    if sample.is_empty() {
        return ("-".into(), "-".into());
    }
    let st = stats(sample);
    (format!("{:.1}", st.p50), format!("{:.1}", st.max))
}

fn table(s: &ClusterSettings, runs: &[RunResult]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nnimbus-bench cluster ({} run, {} run(s); client: one tokio thread, keep-alive hyper, 127.0.0.1; a shared machine: read the ratios)",
        if s.quick { "quick" } else { "full" },
        s.runs
    );
    let _ = writeln!(o, "  embedded: one `nimbus up` (SQLite, synchronous=FULL)");
    let _ = writeln!(
        o,
        "  cluster:  {} `nimbus up --cluster` nodes on {} nats-servers (JetStream, replicas 3, sync_interval: always); accepts sent to the nodes in turn",
        NODES.len(),
        NODES.len()
    );
    let _ = writeln!(
        o,
        "  accepts: Event invocations of a python no-op (max_instances = {MAX_INSTANCES} per node) at c={CONCURRENCY} for {:.2} s after {:.2} s warm-up, then the queue drained",
        s.duration.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "  deploys: {} x `nimbus deploy` through node A; live = listed live by GET /v1/deployments (polled every {} ms after the deploy returned)\n",
        s.deploys,
        DEPLOY_POLL.as_millis()
    );
    let _ = writeln!(
        o,
        "{:<4}{:<10}{:>10}{:>9}{:>9}{:>11}{:>8}{:>8}{:>9}{:>11}{:>10}{:>11}{:>11}",
        "run",
        "backend",
        "accepts/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/op",
        "errors",
        "queued",
        "drain s",
        "deploy ms",
        "self ms",
        "B,C p50 ms",
        "B,C max ms"
    );
    for r in runs {
        for (name, side) in [("embedded", &r.embedded), ("cluster", &r.cluster)] {
            let _ = writeln!(o, "{}", row(r.run, name, side));
            if let Some(e) = &side.accepts.first_error {
                let _ = writeln!(o, "      first error: {e}");
            }
        }
    }
    let _ = writeln!(o, "  (CPU = the whole machine's busy CPU per accept: nimbus, NATS, instances, client; deploy ms = median `nimbus deploy` call; self ms = median deploy return -> live on A; B,C = deploy return -> live on the slower of B and C, median and max over the deploys)");
    ratio_lines(&mut o, runs);
    o
}

fn row(run: usize, name: &str, side: &Side) -> String {
    let t = &side.accepts;
    let lat = stats(&t.latencies_us);
    let via: Vec<f64> = side.deploys.iter().map(|d| d.via_ms).collect();
    let (prop_p50, prop_max) = median_max(&side.propagations());
    format!(
        "{:<4}{:<10}{:>10.0}{:>9.2}{:>9.2}{:>11}{:>8}{:>8}{:>9.2}{:>11}{:>10}{:>11}{:>11}",
        run,
        name,
        t.rps(),
        lat.p50 / 1e3,
        lat.p99 / 1e3,
        t.machine_cpu_us_per_req.map_or("-".to_owned(), |c| format!("{c:.0}")),
        t.errors,
        side.depth_after,
        side.drain_secs,
        median_max(&side.calls()).0,
        median_max(&via).0,
        prop_p50,
        prop_max,
    )
}

/// cluster / embedded, per run.
fn ratio_lines(o: &mut String, runs: &[RunResult]) {
    let _ = writeln!(o, "\ncluster / embedded");
    for r in runs {
        let (e, c) = (&r.embedded, &r.cluster);
        let p99 = |side: &Side| stats(&side.accepts.latencies_us).p99;
        let deploy = |side: &Side| stats(&side.calls()).p50;
        let _ = writeln!(
            o,
            "  run {}: accepts/s {:.2}, p99 accept latency {:.2}, deploy call {:.2}",
            r.run,
            c.accepts.rps() / e.accepts.rps(),
            p99(c) / p99(e),
            deploy(c) / deploy(e),
        );
    }
}

fn side_json(side: &Side) -> Value {
    let deploys: Vec<Value> = side
        .deploys
        .iter()
        .map(|d| {
            let prop: serde_json::Map<String, Value> =
                d.propagation_ms.iter().map(|(n, ms)| (n.clone(), json!(ms))).collect();
            json!({"version": d.version, "callMs": d.call_ms, "liveOnDeployingNodeMs": d.via_ms, "liveOnOthersMs": prop})
        })
        .collect();
    let prop = side.propagations();
    json!({
        "accepts": output::tput_json(&side.accepts),
        "depthAfter": side.depth_after,
        "drainSecs": side.drain_secs,
        "deploys": deploys,
        "deployCallMs": stats(&side.calls()).json(),
        "propagationMs": if prop.is_empty() { Value::Null } else { stats(&prop).json() },
    })
}

fn run_json(r: &RunResult) -> Value {
    let (e, c) = (&r.embedded, &r.cluster);
    let p99 = |side: &Side| stats(&side.accepts.latencies_us).p99;
    json!({
        "run": r.run,
        "embedded": side_json(e),
        "cluster": side_json(c),
        "clusterOverEmbedded": {
            "acceptsPerSec": c.accepts.rps() / e.accepts.rps(),
            "p99AcceptLatency": p99(c) / p99(e),
            "deployCall": stats(&c.calls()).p50 / stats(&e.calls()).p50,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{self, throughput};

    fn deploy(version: u64, call_ms: f64, others: &[f64]) -> Deploy {
        let propagation_ms = others.iter().zip(["node-b", "node-c"]).map(|(ms, n)| (n.to_owned(), *ms)).collect();
        Deploy { version, call_ms, via_ms: 1.5, propagation_ms }
    }

    fn runs() -> Vec<RunResult> {
        let mut cluster = throughput(CONCURRENCY, 900, 30_000.0, 900.0);
        cluster.errors = 2;
        cluster.first_error = Some("Event invoke answered 503".into());
        vec![RunResult {
            run: 1,
            embedded: Side {
                accepts: throughput(CONCURRENCY, 3_000, 9_000.0, 300.0),
                depth_after: 1_200,
                drain_secs: 1.5,
                deploys: vec![deploy(2, 80.0, &[]), deploy(3, 90.0, &[]), deploy(4, 70.0, &[])],
            },
            cluster: Side {
                accepts: cluster,
                depth_after: 400,
                drain_secs: 2.25,
                deploys: vec![
                    deploy(2, 160.0, &[40.0, 55.0]),
                    deploy(3, 150.0, &[30.0, 20.0]),
                    deploy(4, 170.0, &[300.0, 45.0]),
                ],
            },
        }]
    }

    #[test]
    fn the_cluster_table_and_json_are_pinned() {
        let text = table(&ClusterSettings::new(false, 1), &runs());
        golden::check("cluster-table.txt", &text);
        let doc: Vec<Value> = runs().iter().map(run_json).collect();
        golden::check("cluster-runs.json", &serde_json::to_string_pretty(&doc).unwrap());
    }

    #[test]
    fn the_slowest_node_is_the_propagation_and_one_node_has_none() {
        assert_eq!(deploy(2, 1.0, &[40.0, 55.0]).slowest_ms(), Some(55.0));
        assert_eq!(deploy(2, 1.0, &[]).slowest_ms(), None);
        assert_eq!(median_max(&[]), ("-".to_owned(), "-".to_owned()));
        assert_eq!(median_max(&[3.0, 1.0, 2.0, 10.0]), ("2.0".to_owned(), "10.0".to_owned()));
    }

    #[test]
    fn the_version_is_read_from_nimbus_deploy() {
        assert_eq!(deployed_version("deployed bench-cluster version 12 (1 functions, 0 KiB uploaded)\n"), Some(12));
        assert_eq!(deployed_version("nothing here"), None);
    }
}
