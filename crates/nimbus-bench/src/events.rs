//! `nimbus-bench events`: the queues and triggers of issue 14, side by side in one run.
//!
//! 1. **SQS**: send+receive+delete cycles at c=32 on one standard queue, single messages and
//!    batches of 10, against nimbus's AWS port and against `moto_server` (PyPI `moto[server]`,
//!    installed by scripts/bench-tools.sh; reported as not installed when missing): the same
//!    client and requests (the JSON protocol, `sqsclient`), messages deleted per second.
//! 2. **async accepts**: the Invoke API's `Event` invocations at c=32 (202 once committed), the
//!    durable queue nimbus already had, for reference.
//! 3. **through a queue trigger**: N messages sent with SendMessageBatch at c=32 to a queue whose
//!    trigger invokes a Node function that only returns; timed from the first send until
//!    `GET /v1/queues/NAME` shows the queue empty with all N deleted.
//! 4. **PutObject → function start**: sequential PUTs to a bucket with a trigger; the function
//!    logs `process.hrtime.bigint()` (CLOCK_MONOTONIC) at its first statement and the bench reads
//!    the same clock before each PUT and at its 200.
//! 5. **idle CPU**: nimbus and its children over an idle window, with 10 idle queue triggers.
//!
//! A phase that fails is reported as failed and the run goes on (the command fails at the
//! end), so one missing feature never hides the others' figures. The report is in
//! `eventsreport`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::asyncq::{self, Kind};
use crate::common::Common;
use crate::eventsreport::{self, Cycles, Idle, Latency, Outcome, RunResult, Settings, Sqs, Trigger};
use crate::load::{self, HttpClient};
use crate::output;
use crate::procs::{self, Nimbus};
use crate::s3client::{self, S3};
use crate::sqsclient;
use crate::storage;

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub place: storage::MotoAndDir,
    /// The queue trigger's batch_size (1–10,000; above 10 it gets batch_window = "1s", which
    /// nimbus requires there, as Lambda does).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub trigger_batch_size: u32,
    /// The queue trigger's max_concurrency (2–1000).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub trigger_max_concurrency: u32,
}

/// The queue of the SQS cycles, the trigger's queue, the bucket with a trigger.
const SQS_QUEUE: &str = "bench-sqs";
const TRIGGER_QUEUE: &str = "bench-trigger";
const BUCKET: &str = "bench-in";
/// The functions: async accepts, the queue trigger's, the bucket trigger's, the idle triggers'.
const ACCEPT_FN: &str = "accept";
const DRAIN_FN: &str = "drain";
const STARTED_FN: &str = "started";
const IDLE_FN: &str = "idle";
/// The line the bucket-triggered function logs: `bench-start KEY NANOSECONDS`.
const START_MARK: &str = "bench-start ";
const POLL: Duration = Duration::from_millis(10);
const LOG_POLL: Duration = Duration::from_millis(2);

const NOOP_JS: &str = "// nimbus-bench events: a handler that only returns.\nexports.handler = async () => null;\n";
const STARTED_JS: &str = r#"// nimbus-bench events: log when each object event reached the handler (CLOCK_MONOTONIC, ns).
exports.handler = async (event) => {
  const t = process.hrtime.bigint();
  for (const r of event.Records || []) {
    console.log(`bench-start ${r.s3.object.key} ${t}`);
  }
  return null;
};
"#;

pub async fn run(args: EventsArgs) -> Result<()> {
    let mut s = Settings::new(args.common.quick, usize::try_from(args.common.runs)?);
    s.trigger_batch_size = args.trigger_batch_size;
    s.trigger_batch_window_secs = u32::from(args.trigger_batch_size > 10);
    s.trigger_max_concurrency = args.trigger_max_concurrency;
    let nimbus_bin = procs::locate_nimbus(args.common.nimbus.clone())?;
    let python = procs::python()?;
    let storage::MotoRun { moto, root } = args.place.start("events", s.quick, &nimbus_bin)?;
    let app = write_app(&root, &s)?;
    let machine_before = output::machine();
    let mut runs = Vec::new();
    for run in 1..=s.runs {
        eprintln!("run {run}/{}", s.runs);
        let moto = moto.as_ref().map(PathBuf::as_path).map_err(String::as_str);
        let r = one_run(&s, run, &root, &app, &nimbus_bin, &python, moto).await;
        runs.push(r.map_err(|e| {
            eprintln!("temp dir kept: {}", root.display());
            e.context(format!("run {run}"))
        })?);
    }
    let machine_after = output::machine();
    print!("{}", eventsreport::table(&s, &runs, &root));
    let doc = eventsreport::json(&s, &runs, json!({"before": machine_before, "after": machine_after}));
    let failed: Vec<String> =
        runs.iter().flat_map(|r| r.failures().into_iter().map(move |f| format!("run {}: {f}", r.run))).collect();
    let keep = args.common.keep || !failed.is_empty();
    output::save(&args.common.out("events"), &doc, &root, keep)?;
    if !failed.is_empty() {
        bail!("{} phase(s) failed ({}); the errors are in the table above", failed.len(), failed.join(", "));
    }
    Ok(())
}

fn outcome<T>(what: &str, r: Result<T>) -> Outcome<T> {
    match r {
        Ok(t) => Outcome::Measured(t),
        Err(e) => {
            eprintln!("  {what} failed: {e:#}");
            Outcome::Failed(format!("{e:#}"))
        }
    }
}

/// One run: nimbus (every phase), then moto, each started anew.
async fn one_run(
    s: &Settings,
    run: usize,
    root: &Path,
    app: &Path,
    nimbus_bin: &Path,
    python: &Path,
    moto: Result<&Path, &str>,
) -> Result<RunResult> {
    let data = root.join(format!("data-{run}"));
    let log = root.join(format!("nimbus-{run}.log"));
    let aws = format!("127.0.0.1:{}", crate::servers::free_port()?);
    let nimbus = Nimbus::launch_with(nimbus_bin, app, &data, &log, &[], &["--aws-listen", &aws]).await?;
    let aws_base = format!("http://{aws}");
    let (key_id, secret) = s3client::admin_keys(&data)?;
    let sqs = sqsclient::Sqs::new(&aws_base, &key_id, &secret);
    eprintln!("  nimbus SQS cycles");
    let nimbus_sqs = outcome("nimbus SQS", nimbus_sqs(s, &sqs, nimbus.pid()).await);
    eprintln!("  nimbus async accepts");
    let accepts = outcome("async accepts", accepts(s, &nimbus).await);
    eprintln!("  queue trigger: {} messages", s.trigger_messages);
    let trigger = outcome("queue trigger", trigger(s, &sqs, &nimbus).await);
    eprintln!("  PutObject → function start: {} PUTs", s.puts);
    let latency = outcome("PutObject latency", put_latency(s, &S3::nimbus(&aws_base, &data)?, &nimbus).await);
    eprintln!("  idle CPU over {:?}", s.idle);
    let idle = outcome("idle CPU", idle(s, nimbus.pid()).await);
    let mut r =
        RunResult { run, nimbus: nimbus_sqs, moto: Outcome::Missing(String::new()), accepts, trigger, latency, idle };
    if !r.failures().is_empty() {
        eprintln!("nimbus log tail ({}):\n{}", log.display(), procs::tail(&log));
    }
    nimbus.stop().await?;
    r.moto = match moto {
        Err(why) => Outcome::Missing(why.to_owned()),
        Ok(dir) => {
            eprintln!("  moto SQS cycles");
            outcome("moto SQS", moto_sqs(s, run, root, python, dir).await)
        }
    };
    Ok(r)
}

/// The single and batched cycles on the queue at `url`.
async fn cycles(s: &Settings, sqs: &sqsclient::Sqs, url: &str, pid: Option<u32>) -> Result<Sqs> {
    let mut out = Vec::new();
    for batched in [false, true] {
        let (tput, deleted) =
            sqsclient::cycles(sqs, url, batched, pid, s.concurrency, s.warmup, s.duration, s.max, s.receive_wait_secs)
                .await
                .with_context(|| if batched { "batches of 10" } else { "single messages" })?;
        out.push(Cycles { tput, deleted });
    }
    let mut it = out.into_iter();
    match (it.next(), it.next()) {
        (Some(single), Some(batched)) => Ok(Sqs { single, batched }),
        _ => bail!("the cycles did not measure both variants"),
    }
}

async fn nimbus_sqs(s: &Settings, sqs: &sqsclient::Sqs, pid: Option<u32>) -> Result<Sqs> {
    let url = sqs.queue_url(SQS_QUEUE).await?;
    cycles(s, sqs, &url, pid).await
}

/// moto_server with a fresh state: CreateQueue, the cycles, stopped.
async fn moto_sqs(s: &Settings, run: usize, root: &Path, python: &Path, dir: &Path) -> Result<Sqs> {
    let server = storage::start_moto(python, dir, root.join(format!("moto-{run}.log"))).await?;
    // moto accepts any key pair.
    let sqs = sqsclient::Sqs::new(&server.base, "testing", "testing");
    let out = async {
        let url = sqs.create_queue(SQS_QUEUE).await?;
        cycles(s, &sqs, &url, server.pid()).await
    }
    .await;
    server.stop().await;
    out
}

/// Event invocations at the settings' concurrency, then the async queue drained (so the
/// worker's backlog does not run into the next phase).
async fn accepts(s: &Settings, nimbus: &Nimbus) -> Result<load::Throughput> {
    let uri = load::uri(&format!("{}/2015-03-31/functions/{ACCEPT_FN}/invocations", nimbus.url))?;
    let t = asyncq::invocations(&uri, Kind::Event, nimbus.pid(), s.concurrency, s.warmup, s.duration, s.max).await?;
    let queue = load::uri(&format!("{}/v1/queue", nimbus.url))?;
    let (client, t0) = (load::client(), Instant::now());
    loop {
        let v = load::get_json(&client, &queue, &nimbus.token).await?;
        let depth = v.get("depth").and_then(Value::as_u64).with_context(|| format!("GET /v1/queue answered {v}"))?;
        if depth == 0 {
            return Ok(t);
        }
        if t0.elapsed() > s.drain_timeout {
            bail!("the async queue still holds {depth} events {:?} after the accepts", s.drain_timeout);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /v1/queues/NAME`: (visible + inFlight + delayed, sent, deleted).
async fn queue_counts(client: &HttpClient, uri: &hyper::Uri, token: &str) -> Result<(u64, u64, u64)> {
    let v = load::get_json(client, uri, token).await?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).with_context(|| format!("GET {uri} answered {v} without {k}"));
    Ok((n("visible")? + n("inFlight")? + n("delayed")?, n("sent")?, n("deleted")?))
}

/// N messages through the queue trigger: first send → the queue empty with all N deleted.
async fn trigger(s: &Settings, sqs: &sqsclient::Sqs, nimbus: &Nimbus) -> Result<Trigger> {
    let url = sqs.queue_url(TRIGGER_QUEUE).await?;
    let (client, info) = (load::client(), load::uri(&format!("{}/v1/queues/{TRIGGER_QUEUE}", nimbus.url))?);
    let (left, sent0, deleted0) = queue_counts(&client, &info, &nimbus.token).await?;
    if left != 0 {
        bail!("{TRIGGER_QUEUE} holds {left} messages before the phase; expected an empty queue");
    }
    let n = s.trigger_messages;
    let t0 = Instant::now();
    let send_secs = sqsclient::send_many(sqs, &url, n, s.concurrency).await?;
    loop {
        let (left, sent, deleted) = queue_counts(&client, &info, &nimbus.token).await?;
        if left == 0 && sent - sent0 >= n && deleted.saturating_sub(deleted0) >= n {
            break;
        }
        if t0.elapsed() > s.drain_timeout {
            bail!(
                "{TRIGGER_QUEUE} still holds {left} messages ({} of {n} deleted) {:?} after the first send: is the queue trigger running?",
                deleted.saturating_sub(deleted0),
                s.drain_timeout
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Trigger {
        messages: n,
        send_secs,
        total_secs: t0.elapsed().as_secs_f64(),
        batch_size: s.trigger_batch_size,
        batch_window_secs: s.trigger_batch_window_secs,
        max_concurrency: s.trigger_max_concurrency,
    })
}

/// CLOCK_MONOTONIC in µs (the clock Node's `process.hrtime` reads).
fn monotonic_us() -> Result<f64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).context("cannot read CLOCK_MONOTONIC")?;
    Ok(t.tv_sec() as f64 * 1e6 + t.tv_nsec() as f64 / 1e3)
}

/// The started function's log from sequence number `after` on.
struct StartLog {
    client: HttpClient,
    base: String,
    token: String,
    after: u64,
}

impl StartLog {
    /// One page of log lines after `self.after`: (key, µs) of each start line.
    async fn page(&mut self) -> Result<Vec<(String, f64)>> {
        let uri = load::uri(&format!("{}?after={}", self.base, self.after))?;
        let v = load::get_json(&self.client, &uri, &self.token).await?;
        self.after = v.get("next").and_then(Value::as_u64).unwrap_or(self.after);
        let entries = v.get("entries").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        Ok(entries.iter().filter_map(|e| parse_start(e.get("text")?.as_str()?)).collect())
    }

    /// Wait until the function logs its start for `key`: its CLOCK_MONOTONIC µs.
    async fn wait(&mut self, key: &str, timeout: Duration) -> Result<f64> {
        let t0 = Instant::now();
        loop {
            if let Some((_, us)) = self.page().await?.into_iter().find(|(k, _)| k == key) {
                return Ok(us);
            }
            if t0.elapsed() > timeout {
                bail!("{STARTED_FN} did not log its start for {BUCKET}/{key} within {timeout:?}: is the bucket trigger running?");
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
}

/// `bench-start KEY NANOSECONDS` (anywhere in a log line) → (KEY, µs).
fn parse_start(text: &str) -> Option<(String, f64)> {
    let (_, rest) = text.split_once(START_MARK)?;
    let mut it = rest.split_whitespace();
    let key = it.next()?.to_owned();
    let ns: u128 = it.next()?.parse().ok()?;
    Some((key, ns as f64 / 1e3))
}

/// Sequential PUTs, each waited for until the function has started (one unrecorded first).
async fn put_latency(s: &Settings, s3: &S3, nimbus: &Nimbus) -> Result<Latency> {
    let mut log = StartLog {
        client: load::client(),
        base: format!("{}/v1/functions/{STARTED_FN}/logs", nimbus.url),
        token: nimbus.token.clone(),
        after: 0,
    };
    let (body, hash) = s3client::body_of(1024);
    let (mut from_put_us, mut from_ack_us) = (Vec::new(), Vec::new());
    for i in 0..=s.puts {
        let key = format!("put-{i}");
        let t_put = monotonic_us()?;
        s3.put(BUCKET, &key, &body, &hash).await?;
        let t_ack = monotonic_us()?;
        let started = log.wait(&key, s.start_timeout).await?;
        if started < t_put {
            bail!(
                "{STARTED_FN} logged a start for {key} {:.0} µs before its PUT: the clocks disagree",
                t_put - started
            );
        }
        // The first PUT starts the function's instance: not recorded.
        if i > 0 {
            from_put_us.push(started - t_put);
            from_ack_us.push(started - t_ack);
        }
    }
    Ok(Latency { from_put_us, from_ack_us })
}

/// nimbus's and its children's CPU over `s.idle` of idleness (after a second to settle).
async fn idle(s: &Settings, pid: Option<u32>) -> Result<Idle> {
    let pid = pid.context("nimbus has exited")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks = || load::process_ticks(pid).context("cannot read nimbus's /proc stat");
    let (n0, c0, _) = ticks()?;
    let t0 = Instant::now();
    tokio::time::sleep(s.idle).await;
    let (n1, c1, _) = ticks()?;
    Ok(Idle {
        secs: t0.elapsed().as_secs_f64(),
        nimbus_ticks: n1.saturating_sub(n0),
        children_ticks: c1.saturating_sub(c0),
        children: crate::tree::descendants(pid).len(),
    })
}

fn put_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The app: the queues, the bucket, the Node functions and their triggers.
fn write_app(root: &Path, s: &Settings) -> Result<PathBuf> {
    let app = root.join("app");
    put_file(&app.join("functions/noop/index.js"), NOOP_JS)?;
    put_file(&app.join("functions/started/index.js"), STARTED_JS)?;
    put_file(&app.join("nimbus.toml"), &manifest(s))?;
    Ok(app)
}

fn manifest(s: &Settings) -> String {
    let function = |name: &str, code: &str, max: u32| {
        format!("[functions.{name}]\nruntime = \"node\"\nhandler = \"index.handler\"\ncode = \"functions/{code}\"\nmax_instances = {max}\nkeep_alive = \"10m\"\n\n")
    };
    let mut m = format!(
        "# Written by nimbus-bench events; deleted when the run ends.\nname = \"bench-events\"\n\n[buckets.{BUCKET}]\n\n[queues.{SQS_QUEUE}]\n\n[queues.{TRIGGER_QUEUE}]\n\n"
    );
    for i in 0..s.idle_triggers {
        m.push_str(&format!("[queues.idle-{i}]\n\n"));
    }
    m.push_str(&function(ACCEPT_FN, "noop", 2));
    m.push_str(&function(DRAIN_FN, "noop", s.trigger_max_concurrency));
    m.push_str(&function(STARTED_FN, "started", 1));
    m.push_str(&function(IDLE_FN, "noop", 1));
    m.push_str(&format!(
        "[[triggers]]\nfunction = \"{DRAIN_FN}\"\nqueue = \"{TRIGGER_QUEUE}\"\nbatch_size = {}\nbatch_window = \"{}s\"\nmax_concurrency = {}\n\n",
        s.trigger_batch_size, s.trigger_batch_window_secs, s.trigger_max_concurrency
    ));
    m.push_str(&format!(
        "[[triggers]]\nfunction = \"{STARTED_FN}\"\nbucket = \"{BUCKET}\"\nevents = [\"s3:ObjectCreated:*\"]\n\n"
    ));
    for i in 0..s.idle_triggers {
        m.push_str(&format!("[[triggers]]\nfunction = \"{IDLE_FN}\"\nqueue = \"idle-{i}\"\n\n"));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_lines_parse_and_others_do_not() {
        let (key, us) = parse_start("2026-01-01T00:00:00Z\tINFO\tbench-start put-7 123456789012345").unwrap();
        assert_eq!(key, "put-7");
        assert!((us - 123_456_789_012.345).abs() < 1e-3, "{us}");
        assert!(parse_start("bench-start put-7").is_none());
        assert!(parse_start("bench-start put-7 soon").is_none());
        assert!(parse_start("hello").is_none());
    }

    #[test]
    fn the_manifest_has_every_trigger() {
        let m = manifest(&Settings::new(true, 1));
        assert_eq!(m.matches("[[triggers]]").count(), 12, "{m}");
        assert!(m.contains("batch_size = 1000\nbatch_window = \"1s\"\nmax_concurrency = 4"), "{m}");
        assert!(m.contains("queue = \"idle-9\""), "{m}");
    }
}
