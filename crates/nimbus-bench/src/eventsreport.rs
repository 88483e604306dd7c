//! The settings, results and report of `nimbus-bench events`: SQS send+receive+delete
//! messages/s against moto, nimbus's async accepts beside them, messages/s through a queue
//! trigger, PutObject → function start latency, and nimbus's idle CPU with idle queue triggers;
//! then the ratios and the targets (≥ 10k messages/s through send → trigger → delete,
//! PutObject → function start p50 ≤ 5 ms, no busy loop when idle).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::{stats, Throughput};
use crate::output::tput_json;

/// Targets (issue 14, BENCHMARKS.md § Events).
pub const TRIGGER_TARGET: f64 = 10_000.0;
pub const LATENCY_P50_TARGET_MS: f64 = 5.0;
/// Idle CPU of nimbus and its children, as a share of one core: above this is a busy loop.
pub const IDLE_CPU_TARGET: f64 = 0.01;

/// How much of everything to do.
pub struct Settings {
    pub quick: bool,
    pub runs: usize,
    /// Workers of the SQS cycles, the async accepts and the trigger phase's sends.
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Cycles (or accepts) per phase at most.
    pub max: u64,
    /// WaitTimeSeconds of the cycles' ReceiveMessage: 0, because moto's long poll waits until
    /// it has MaxNumberOfMessages (SQS answers as soon as it has any), which would measure
    /// moto's wait rather than its work.
    pub receive_wait_secs: u64,
    /// Messages sent through the queue trigger, its batch size and max_concurrency.
    pub trigger_messages: u64,
    pub trigger_batch_size: u32,
    /// The trigger's batch_window (nimbus, like Lambda, wants one of at least 1 s above 10).
    pub trigger_batch_window_secs: u32,
    pub trigger_max_concurrency: u32,
    /// From the first send until the trigger's queue must be empty.
    pub drain_timeout: Duration,
    /// Sequential PUTs of the latency phase, and how long one may take to start the function.
    pub puts: usize,
    pub start_timeout: Duration,
    /// Idle queue triggers, and how long nimbus's idle CPU is measured.
    pub idle_triggers: usize,
    pub idle: Duration,
}

impl Settings {
    pub fn new(quick: bool, runs: usize) -> Settings {
        let (warmup, duration, max, trigger_messages, puts, idle) = if quick {
            (Duration::from_millis(100), Duration::from_millis(500), 5_000, 2_000, 30, Duration::from_secs(3))
        } else {
            (Duration::from_millis(500), Duration::from_secs(5), 2_000_000, 20_000, 200, Duration::from_secs(10))
        };
        Settings {
            quick,
            runs,
            concurrency: 32,
            warmup,
            duration,
            max,
            receive_wait_secs: 0,
            trigger_messages,
            trigger_batch_size: 1000,
            trigger_batch_window_secs: 1,
            trigger_max_concurrency: 4,
            drain_timeout: if quick { Duration::from_secs(60) } else { Duration::from_secs(300) },
            puts,
            start_timeout: Duration::from_secs(10),
            idle_triggers: 10,
            idle,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "quick": self.quick, "runs": self.runs, "concurrency": self.concurrency,
            "warmupSecs": self.warmup.as_secs_f64(), "phaseSecs": self.duration.as_secs_f64(),
            "phaseMaxOps": self.max, "receiveWaitSecs": self.receive_wait_secs,
            "triggerMessages": self.trigger_messages, "triggerBatchSize": self.trigger_batch_size,
            "triggerBatchWindowSecs": self.trigger_batch_window_secs,
            "triggerMaxConcurrency": self.trigger_max_concurrency, "drainTimeoutSecs": self.drain_timeout.as_secs_f64(),
            "latencyPuts": self.puts, "startTimeoutSecs": self.start_timeout.as_secs_f64(),
            "idleTriggers": self.idle_triggers, "idleSecs": self.idle.as_secs_f64(),
        })
    }
}

/// A phase's outcome: measured, not measured for a reason that is no failure (moto not
/// installed), or failed (the error).
pub enum Outcome<T> {
    Measured(T),
    Missing(String),
    Failed(String),
}

impl<T> Outcome<T> {
    pub fn measured(&self) -> Option<&T> {
        match self {
            Outcome::Measured(t) => Some(t),
            _ => None,
        }
    }

    fn failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    fn note(&self) -> Option<String> {
        match self {
            Outcome::Measured(_) => None,
            Outcome::Missing(w) => Some(format!("not measured: {w}")),
            Outcome::Failed(e) => Some(format!("FAILED: {e}")),
        }
    }

    fn json(&self, f: impl Fn(&T) -> Value) -> Value {
        match self {
            Outcome::Measured(t) => f(t),
            Outcome::Missing(w) => json!({"missing": w}),
            Outcome::Failed(e) => json!({"failed": e}),
        }
    }
}

/// Send+receive+delete cycles on one system: single messages or batches of 10.
pub struct Cycles {
    pub tput: Throughput,
    /// Messages deleted during the measured phase.
    pub deleted: u64,
}

impl Cycles {
    pub fn messages_per_sec(&self) -> f64 {
        if self.tput.secs > 0.0 {
            self.deleted as f64 / self.tput.secs
        } else {
            0.0
        }
    }
}

/// Both variants on one system.
pub struct Sqs {
    pub single: Cycles,
    pub batched: Cycles,
}

/// N messages through the queue trigger.
pub struct Trigger {
    pub messages: u64,
    /// First send → last batch answered.
    pub send_secs: f64,
    /// First send → the queue seen empty with every message counted sent.
    pub total_secs: f64,
    pub batch_size: u32,
    pub batch_window_secs: u32,
    pub max_concurrency: u32,
}

impl Trigger {
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.total_secs
    }
}

/// PutObject → the triggered function's first statement, per PUT, in µs (CLOCK_MONOTONIC on
/// both sides): from the PUT's start, and from its 200.
pub struct Latency {
    pub from_put_us: Vec<f64>,
    pub from_ack_us: Vec<f64>,
}

/// nimbus's CPU over an idle window.
pub struct Idle {
    pub secs: f64,
    /// utime + stime ticks (10 ms) of nimbus and of its children.
    pub nimbus_ticks: u64,
    pub children_ticks: u64,
    pub children: usize,
}

impl Idle {
    pub fn cpu_secs(&self) -> f64 {
        (self.nimbus_ticks + self.children_ticks) as f64 / 100.0
    }
    pub fn share(&self) -> f64 {
        self.cpu_secs() / self.secs
    }
}

pub struct RunResult {
    pub run: usize,
    pub nimbus: Outcome<Sqs>,
    pub moto: Outcome<Sqs>,
    pub accepts: Outcome<Throughput>,
    pub trigger: Outcome<Trigger>,
    pub latency: Outcome<Latency>,
    pub idle: Outcome<Idle>,
}

impl RunResult {
    /// The phases that failed, by name.
    pub fn failures(&self) -> Vec<&'static str> {
        let all = [
            ("nimbus SQS", self.nimbus.failed()),
            ("moto SQS", self.moto.failed()),
            ("async accepts", self.accepts.failed()),
            ("queue trigger", self.trigger.failed()),
            ("PutObject latency", self.latency.failed()),
            ("idle CPU", self.idle.failed()),
        ];
        all.into_iter().filter(|(_, f)| *f).map(|(n, _)| n).collect()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

pub fn table(s: &Settings, runs: &[RunResult], root: &Path) -> String {
    let mut o = String::new();
    intro(&mut o, s, root);
    let _ = writeln!(
        o,
        "\n{:<4}{:<8}{:<22}{:>4}{:>11}{:>10}{:>9}{:>9}{:>25}{:>8}",
        "run", "system", "phase", "c", "msgs/s", "calls/s", "p50 ms", "p99 ms", "CPU µs/call srv/client", "errors"
    );
    for r in runs {
        for (system, sqs) in [("nimbus", &r.nimbus), ("moto", &r.moto)] {
            match sqs {
                Outcome::Measured(m) => {
                    cycles_line(&mut o, r.run, system, "send+recv+delete x1", &m.single);
                    cycles_line(&mut o, r.run, system, "send+recv+delete x10", &m.batched);
                }
                other => {
                    let note = other.note().unwrap_or_default();
                    let _ = writeln!(o, "{:<4}{:<8}{:<22}  {note}", r.run, system, "SQS cycles");
                }
            }
        }
        match &r.accepts {
            Outcome::Measured(t) => tput_line(&mut o, r.run, "nimbus", "async accept (202)", t, t.rps()),
            other => {
                let _ = writeln!(
                    o,
                    "{:<4}{:<8}{:<22}  {}",
                    r.run,
                    "nimbus",
                    "async accept",
                    other.note().unwrap_or_default()
                );
            }
        }
    }
    pipeline_lines(&mut o, runs);
    targets(&mut o, s, runs);
    o
}

fn intro(o: &mut String, s: &Settings, root: &Path) {
    let _ = writeln!(
        o,
        "\nnimbus-bench events ({} run, {} run(s); fresh nimbus, moto and data dir each; client: one tokio thread, keep-alive hyper, 127.0.0.1; data in {})",
        if s.quick { "quick" } else { "full" },
        s.runs,
        root.display()
    );
    let _ = writeln!(
        o,
        "  SQS: JSON protocol (X-Amz-Target AmazonSQS.*, SigV4 service sqs), one standard queue, c={}: each worker sends 1 (or a batch of 10), receives up to as many (WaitTimeSeconds {}), deletes them; msgs/s = messages deleted / s; {:.2} s per phase after {:.2} s warm-up",
        s.concurrency,
        s.receive_wait_secs,
        s.duration.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(o, "  a nimbus SendMessage and DeleteMessage are acknowledged once committed (SQLite WAL, group commit); moto keeps queues in memory");
    let _ = writeln!(
        o,
        "  async accept: Invoke API InvocationType Event (202 once committed) of a no-op Node function at c={}",
        s.concurrency
    );
}

fn cycles_line(o: &mut String, run: usize, system: &str, phase: &str, c: &Cycles) {
    tput_line(o, run, system, phase, &c.tput, c.messages_per_sec());
}

fn tput_line(o: &mut String, run: usize, system: &str, phase: &str, t: &Throughput, msgs: f64) {
    let lat = stats(&t.latencies_us);
    let cpu =
        t.cpu_split.map_or("-".to_owned(), |c| format!("{:.0} / {:.0}", c.server_us + c.children_us, c.client_us));
    let _ = writeln!(
        o,
        "{:<4}{:<8}{:<22}{:>4}{:>11.0}{:>10.0}{:>9.2}{:>9.2}{:>25}{:>8}",
        run,
        system,
        phase,
        t.concurrency,
        msgs,
        t.rps(),
        lat.p50 / 1e3,
        lat.p99 / 1e3,
        cpu,
        t.errors
    );
    if let Some(e) = &t.first_error {
        let _ = writeln!(o, "      first error: {e}");
    }
}

/// The queue trigger, the PutObject latency and the idle CPU of each run.
fn pipeline_lines(o: &mut String, runs: &[RunResult]) {
    let _ = writeln!(o, "\nthrough a queue trigger (SendMessageBatch at c=32 → trigger → Node function that returns → delete; first send → queue empty)");
    for r in runs {
        let line = match &r.trigger {
            Outcome::Measured(t) => format!(
                "{} messages in {:.2} s = {:.0} msgs/s (sent in {:.2} s = {:.0}/s; batch_size {}, batch_window {} s, max_concurrency {})",
                t.messages,
                t.total_secs,
                t.messages_per_sec(),
                t.send_secs,
                t.messages as f64 / t.send_secs,
                t.batch_size,
                t.batch_window_secs,
                t.max_concurrency
            ),
            other => other.note().unwrap_or_default(),
        };
        let _ = writeln!(o, "  run {}: {line}", r.run);
    }
    let _ = writeln!(o, "\nPutObject → function start (sequential PUTs, idle queue; the function logs process.hrtime at its first statement, CLOCK_MONOTONIC like the bench's)");
    for r in runs {
        let line = match &r.latency {
            Outcome::Measured(l) => {
                let (a, b) = (stats(&l.from_put_us), stats(&l.from_ack_us));
                format!(
                    "{} PUTs: from the PUT's start p50 {:.2} ms p99 {:.2} ms max {:.2} ms; from its 200 p50 {:.2} ms p99 {:.2} ms",
                    a.n,
                    a.p50 / 1e3,
                    a.p99 / 1e3,
                    a.max / 1e3,
                    b.p50 / 1e3,
                    b.p99 / 1e3
                )
            }
            other => other.note().unwrap_or_default(),
        };
        let _ = writeln!(o, "  run {}: {line}", r.run);
    }
    let _ = writeln!(o, "\nidle CPU (nimbus and its children, /proc/PID/stat, 10 ms ticks)");
    for r in runs {
        let line = match &r.idle {
            Outcome::Measured(i) => format!(
                "{:.2} CPU s over {:.1} s = {:.2} % of one core (nimbus {} ticks, {} children {} ticks)",
                i.cpu_secs(),
                i.secs,
                i.share() * 100.0,
                i.nimbus_ticks,
                i.children,
                i.children_ticks
            ),
            other => other.note().unwrap_or_default(),
        };
        let _ = writeln!(o, "  run {}: {line}", r.run);
    }
}

/// The ratios (nimbus/moto, SQS/async accepts) and the targets.
fn targets(o: &mut String, s: &Settings, runs: &[RunResult]) {
    let _ = writeln!(o, "\nratios and targets (issue 14; BENCHMARKS.md § Events)");
    for r in runs {
        let n = r.nimbus.measured();
        if let (Some(n), Some(m)) = (n, r.moto.measured()) {
            let _ = writeln!(
                o,
                "  run {}: nimbus/moto msgs/s: single {:.1}x, batch of 10 {:.1}x",
                r.run,
                ratio(n.single.messages_per_sec(), m.single.messages_per_sec()),
                ratio(n.batched.messages_per_sec(), m.batched.messages_per_sec())
            );
        }
        if let (Some(n), Some(a)) = (n, r.accepts.measured()) {
            let _ = writeln!(
                o,
                "  run {}: nimbus SQS msgs/s / async accepts/s: single {:.2}, batch of 10 {:.2}",
                r.run,
                ratio(n.single.messages_per_sec(), a.rps()),
                ratio(n.batched.messages_per_sec(), a.rps())
            );
        }
        if let Some(t) = r.trigger.measured() {
            let v = t.messages_per_sec();
            let _ = writeln!(
                o,
                "  run {}: send → trigger → delete {v:.0} msgs/s (>= {TRIGGER_TARGET:.0}: {})",
                r.run,
                verdict(v >= TRIGGER_TARGET)
            );
        }
        if let Some(l) = r.latency.measured() {
            let p50 = stats(&l.from_put_us).p50 / 1e3;
            let _ = writeln!(
                o,
                "  run {}: PutObject → function start p50 {p50:.2} ms (<= {LATENCY_P50_TARGET_MS:.0} ms: {})",
                r.run,
                verdict(p50 <= LATENCY_P50_TARGET_MS)
            );
        }
        if let Some(i) = r.idle.measured() {
            let _ = writeln!(
                o,
                "  run {}: idle CPU with {} idle queue triggers {:.2} % of one core (<= {:.0} %, no busy loop: {})",
                r.run,
                s.idle_triggers,
                i.share() * 100.0,
                IDLE_CPU_TARGET * 100.0,
                verdict(i.share() <= IDLE_CPU_TARGET)
            );
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn cycles_json(c: &Cycles) -> Value {
    let mut v = tput_json(&c.tput);
    if let Some(m) = v.as_object_mut() {
        m.insert("messagesDeleted".into(), json!(c.deleted));
        m.insert("messagesPerSec".into(), json!(c.messages_per_sec()));
    }
    v
}

fn sqs_json(s: &Sqs) -> Value {
    json!({"single": cycles_json(&s.single), "batchOf10": cycles_json(&s.batched)})
}

pub fn run_json(r: &RunResult) -> Value {
    let latency = |l: &Latency| {
        json!({"fromPutUs": stats(&l.from_put_us).json(), "fromAckUs": stats(&l.from_ack_us).json(),
               "p50TargetMet": stats(&l.from_put_us).p50 / 1e3 <= LATENCY_P50_TARGET_MS})
    };
    json!({
        "run": r.run,
        "sqs": {"nimbus": r.nimbus.json(sqs_json), "moto": r.moto.json(sqs_json)},
        "asyncAccepts": r.accepts.json(tput_json),
        "trigger": r.trigger.json(|t| json!({
            "messages": t.messages, "sendSecs": t.send_secs, "totalSecs": t.total_secs,
            "messagesPerSec": t.messages_per_sec(), "batchSize": t.batch_size, "batchWindowSecs": t.batch_window_secs, "maxConcurrency": t.max_concurrency,
            "targetMet": t.messages_per_sec() >= TRIGGER_TARGET})),
        "putToStart": r.latency.json(latency),
        "idle": r.idle.json(|i| json!({
            "secs": i.secs, "nimbusTicks": i.nimbus_ticks, "childrenTicks": i.children_ticks, "children": i.children,
            "cpuSecs": i.cpu_secs(), "shareOfOneCore": i.share(), "targetMet": i.share() <= IDLE_CPU_TARGET})),
    })
}

pub fn json(s: &Settings, runs: &[RunResult], machine: Value) -> Value {
    json!({
        "benchmark": "events",
        "notes": [
            "SQS: JSON protocol, SigV4 service sqs; each worker sends 1 (or 10 with SendMessageBatch), receives up to as many, deletes them; messagesPerSec = messages deleted / s",
            "nimbus acknowledges sends and deletes once committed; moto keeps queues in memory",
            "async accepts: Invoke API InvocationType Event, 202 once committed",
            "trigger: SendMessageBatch at c=32 to a queue with a queue trigger; first send -> GET /v1/queues/NAME visible + inFlight + delayed = 0 and sent = N",
            "putToStart: sequential PUTs; the function logs process.hrtime.bigint() (CLOCK_MONOTONIC) at its first statement, the bench reads CLOCK_MONOTONIC before the PUT and at its 200",
            "idle: utime + stime of nimbus and its children over the window, after every other phase",
        ],
        "targets": {"triggerMessagesPerSec": TRIGGER_TARGET, "putToStartP50Ms": LATENCY_P50_TARGET_MS, "idleShareOfOneCore": IDLE_CPU_TARGET},
        "settings": s.json(),
        "machine": machine,
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{self, throughput};

    fn sqs(k: u64) -> Sqs {
        Sqs {
            single: Cycles { tput: throughput(32, 1_000 * k, 4_000.0, 300.0), deleted: 1_000 * k },
            batched: Cycles { tput: throughput(32, 400 * k, 9_000.0, 900.0), deleted: 3_990 * k },
        }
    }

    /// Two runs: the first measures everything, the second has no moto, a failed trigger and
    /// a missed latency target.
    fn runs() -> Vec<RunResult> {
        let latency = |ms: f64| Latency {
            from_put_us: (0..30).map(|i| ms * 1e3 + f64::from(i) * 50.0).collect(),
            from_ack_us: (0..30).map(|i| ms * 500.0 + f64::from(i) * 50.0).collect(),
        };
        vec![
            RunResult {
                run: 1,
                nimbus: Outcome::Measured(sqs(8)),
                moto: Outcome::Measured(sqs(1)),
                accepts: Outcome::Measured(throughput(32, 12_000, 2_500.0, 80.0)),
                trigger: Outcome::Measured(Trigger {
                    messages: 20_000,
                    send_secs: 0.8,
                    total_secs: 1.6,
                    batch_size: 1000,
                    batch_window_secs: 1,
                    max_concurrency: 4,
                }),
                latency: Outcome::Measured(latency(2.0)),
                idle: Outcome::Measured(Idle { secs: 10.0, nimbus_ticks: 3, children_ticks: 1, children: 2 }),
            },
            RunResult {
                run: 2,
                nimbus: Outcome::Measured(sqs(7)),
                moto: Outcome::Missing("not installed in /x (scripts/bench-tools.sh installs it)".into()),
                accepts: Outcome::Measured(throughput(32, 11_000, 2_700.0, 85.0)),
                trigger: Outcome::Failed("the queue still holds 5 messages 60 s after the first send".into()),
                latency: Outcome::Measured(latency(7.0)),
                idle: Outcome::Measured(Idle { secs: 10.0, nimbus_ticks: 150, children_ticks: 0, children: 2 }),
            },
        ]
    }

    #[test]
    fn the_events_table_and_json_are_pinned() {
        let s = Settings::new(false, 2);
        let text = table(&s, &runs(), Path::new("/tmp/bench"));
        golden::check("events-table.txt", &text);
        let doc: Vec<Value> = runs().iter().map(run_json).collect();
        golden::check("events-runs.json", &serde_json::to_string_pretty(&doc).unwrap());
    }

    #[test]
    fn failed_phases_are_named_and_missing_ones_are_not_failures() {
        let r = runs();
        assert!(r[0].failures().is_empty());
        assert_eq!(r[1].failures(), vec!["queue trigger"]);
        let text = table(&Settings::new(true, 1), &r[1..], Path::new("/tmp/bench"));
        assert!(text.contains("moto    SQS cycles              not measured: not installed in /x"), "{text}");
        assert!(text.contains("FAILED: the queue still holds 5 messages"), "{text}");
        assert!(!text.contains("nimbus/moto"), "{text}");
    }
}
