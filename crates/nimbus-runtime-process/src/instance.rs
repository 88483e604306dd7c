//! One process instance: spawn → ready (first `/next`) → invocations → shutdown.
//!
//! Failure modes and what happens:
//! - init fails (import error posted to `/init/error`, exit before the first `/next`, or no
//!   `/next` within the init timeout): the process group is killed and `start` returns
//!   `InitFailed` with the output the runtime wrote;
//! - the invocation passes its timeout: the process group is killed (SIGKILL), the caller gets
//!   `Timeout`, the instance is dead;
//! - the process exits mid-invocation: the exit is observed at once through `wait()`, the caller
//!   gets `Crashed`, the instance is dead;
//! - the instance runs out of memory (`memory_mb`, see [`crate::limits`]): the kernel stops the
//!   runtime, the caller gets the function error `Runtime.OutOfMemory` with Max Memory Used at
//!   the limit, the instance is dead;
//! - the invocation passes `cpu_ms` of CPU time: the instance is killed, the caller gets the
//!   function error `Runtime.CpuLimitExceeded`, the instance is dead;
//! - nimbus itself dies: PR_SET_PDEATHSIG kills the runtime (the spawning thread is a tokio
//!   worker, which lives as long as the process).
//!
//! With `concurrency > 1` several invocations run at once on the instance (`invoke` takes
//! `&self`): each has its own pending entry, matched by request id, and its own timeout. Limits
//! are the instance's: a timeout, `cpu_ms` (the instance's CPU time during the invocation, the
//! other invocations' included) or running out of memory kills the instance, and a dead
//! instance fails every invocation in flight (they get `Crashed`, saying which invocation's
//! limit stopped it). Output is split among them by [`crate::attribution`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_core::{
    ColdStart, FunctionErrorKind, FunctionVersion, Instance, InstanceError, InstanceState, Invocation, InvokeOutcome,
    InvokeResult, RuntimeKind, StartError, REGION,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::api;
use crate::attribution::Attribution;
use crate::exchange::{self, Completion, NextEvent, Shared};
use crate::limits::{self, InstanceCgroup};
use crate::logs::LogTap;
use crate::{sandbox, ProcessRuntime};

pub struct ProcessInstance {
    id: String,
    function: Arc<FunctionVersion>,
    /// The process nimbus spawned: the runtime itself, or bwrap when sandboxed (its process
    /// group; killing it takes the whole sandbox with it).
    pid: u32,
    sandboxed: bool,
    cold_start: ColdStart,
    init_log: Mutex<String>,
    next_tx: mpsc::Sender<NextEvent>,
    shared: Arc<Shared>,
    exit_rx: watch::Receiver<Option<String>>,
    logs: Arc<LogTap>,
    server: AbortHandle,
    scratch: PathBuf,
    stop_grace: Duration,
    max_response: usize,
    last_max_memory_mb: AtomicU32,
    /// `/proc/PID/status` of the runtime process, for the peak resident set (Max Memory Used);
    /// opened once the runtime is ready (inside a sandbox it is bwrap's grandchild).
    proc_status: Option<std::fs::File>,
    /// The instance's cgroups (memory, pids, cpu accounting), when the machine has them.
    cgroup: Option<InstanceCgroup>,
    /// The instance's AWS key, revoked when the instance is dropped (after shutdown).
    credentials: Option<crate::services::Lease>,
    /// Invocations it runs at once (the function's `concurrency`).
    concurrency: u32,
    /// With `concurrency > 1`: the invocations in flight and the output attributed to each.
    attribution: Arc<Mutex<Attribution>>,
    /// Why the instance was stopped while invocations were in flight (one's timeout or limit),
    /// for the others' errors.
    stopped_by: Mutex<Option<String>>,
    dead: AtomicBool,
    stopped: bool,
    /// Set by the task that follows an invocation past its response when it stopped the
    /// instance (see [`crate::follow`]).
    tail_dead: Arc<std::sync::atomic::AtomicBool>,
}

/// At the start of one invocation: CPU time used so far (ns) and OOM kills so far.
#[derive(Clone, Copy)]
struct Baseline {
    cpu_ns: Option<u64>,
    oom_kills: u64,
}

fn platform(context: &str) -> impl Fn(std::io::Error) -> StartError + '_ {
    move |e| StartError::Platform(format!("{context}: {e}"))
}

/// What a start has made that must not outlive a failed start: the Runtime API task, the temp
/// dir and, once spawned, the runtime's process group. Dropped while armed it removes all of
/// them, so every early return of `start` cleans up; once the instance owns them (its own
/// `Drop` and `shutdown` clean up from there), `disarm` stands it down.
struct StartGuard {
    server: AbortHandle,
    scratch: PathBuf,
    /// The runtime's pid, which is also its process group (it is spawned as group leader).
    group: Option<u32>,
    armed: bool,
}

impl StartGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Never killpg(0): that would signal nimbus's own process group.
        if let Some(pid) = self.group.filter(|p| *p > 0) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// An instance's Runtime API endpoint, served before its process starts.
struct Endpoint {
    addr: String,
    shared: Arc<Shared>,
    next_tx: mpsc::Sender<NextEvent>,
    /// The AWS key the instance's environment carries (`None`: no AWS side is set).
    credentials: Option<crate::services::Lease>,
}

/// The runtime process just spawned, with the read ends of its stdout and stderr.
struct Spawned {
    child: tokio::process::Child,
    stdout: std::io::PipeReader,
    stderr: std::io::PipeReader,
    /// A held sandbox's input, where the runtime's environment goes when it is claimed.
    go: Option<std::io::PipeWriter>,
}

/// Where a new process is served from and how it starts.
struct Spawn<'a> {
    api: &'a str,
    /// The instance's AWS key, for its environment.
    lease: Option<&'a crate::services::Lease>,
    scratch: &'a Path,
    cgroup: Option<&'a InstanceCgroup>,
    /// Prepare the sandbox and wait (see [`Shell`]).
    hold: bool,
}

/// Where an invocation's completion arrives, and the end of its streamed or early response.
type Replies = (oneshot::Receiver<Completion>, oneshot::Receiver<exchange::Tail>);

/// How an invocation ended.
enum Ended {
    Done(Completion),
    Crashed(String),
    TimedOut,
    /// It used more than `cpu_ms` of CPU time.
    CpuExceeded(u32),
}

/// How init ended.
enum Init {
    Ready,
    Reported,
    Exited(String),
    TimedOut,
}

impl ProcessInstance {
    pub(crate) async fn start(
        rt: &ProcessRuntime,
        function: Arc<FunctionVersion>,
        id: String,
    ) -> Result<Self, StartError> {
        let began = Instant::now();
        let (instance, _) = Self::spawn(rt, function, id, false).await?;
        instance.finish_init(began, rt.limits.init_timeout).await
    }

    /// Everything of a start up to the running process: the temp dir, the endpoint, the cgroup,
    /// the process and its log pipes. With `hold` (a prepared sandbox) the init waits for the
    /// runtime's environment on the returned pipe.
    async fn spawn(
        rt: &ProcessRuntime,
        function: Arc<FunctionVersion>,
        id: String,
        hold: bool,
    ) -> Result<(Self, Option<std::io::PipeWriter>), StartError> {
        let began = Instant::now();
        let command = rt.command_for(&function)?;
        let scratch = rt.scratch_dir.join(&id);
        let (endpoint, server) = serve_in(rt, &function, &scratch).await?;
        let mut guard = StartGuard { server: server.abort_handle(), scratch, group: None, armed: true };
        let cgroup = rt
            .resources
            .instance(&id, function.spec.memory_mb)
            .map_err(platform("cannot make the instance's cgroup (see nimbus's start-up log for the limits mode)"))?;
        let how = Spawn {
            api: &endpoint.addr,
            lease: endpoint.credentials.as_ref(),
            scratch: &guard.scratch,
            cgroup: cgroup.as_ref(),
            hold,
        };
        let spawned = spawn_runtime(rt, &function, &id, &command, &how)?;
        let spawned_after = began.elapsed();
        let pid = spawned.child.id().unwrap_or(0);
        guard.group = Some(pid);
        let logs = tap_logs(spawned.stdout, spawned.stderr, rt.limits.max_log_bytes)?;
        let concurrency = function.spec.concurrency.max(1);
        let instance = ProcessInstance {
            id,
            function,
            pid,
            sandboxed: rt.sandbox.is_some(),
            cold_start: ColdStart { init: Duration::ZERO, instance_start: spawned_after },
            init_log: Mutex::new(String::new()),
            next_tx: endpoint.next_tx,
            shared: endpoint.shared,
            exit_rx: watch_exit(spawned.child),
            logs: Arc::new(logs),
            server: guard.server.clone(),
            scratch: guard.scratch.clone(),
            stop_grace: rt.limits.stop_grace,
            max_response: rt.limits.max_response_bytes,
            last_max_memory_mb: AtomicU32::new(0),
            proc_status: None,
            cgroup,
            credentials: endpoint.credentials,
            concurrency,
            attribution: Arc::default(),
            stopped_by: Mutex::new(None),
            dead: AtomicBool::new(false),
            stopped: false,
            tail_dead: Arc::default(),
        };
        guard.disarm();
        Ok((instance, spawned.go))
    }

    /// Wait for the runtime's first `/next`; on any other outcome stop it and report why.
    async fn finish_init(mut self, began: Instant, timeout: Duration) -> Result<Self, StartError> {
        let init = self.wait_init(timeout).await;
        self.cold_start.init = began.elapsed();
        let Some((error_type, message)) = self.init_failure(init, timeout) else {
            self.init_log = Mutex::new(self.logs.drain());
            let runtime = if self.sandboxed { runtime_pid(self.pid) } else { Some(self.pid) };
            self.proc_status = runtime.and_then(|p| std::fs::File::open(format!("/proc/{p}/status")).ok());
            return Ok(self);
        };
        self.kill();
        self.wait_exit(Duration::from_secs(1)).await;
        let log = self.logs.drain();
        self.dead.store(true, Ordering::Release);
        self.stop().await;
        Err(StartError::InitFailed { error_type, message, log })
    }

    async fn wait_init(&self, timeout: Duration) -> Init {
        // A watch's `wait_for` looks at the current value first: subscribing after the process
        // started misses nothing.
        let mut ready_rx = self.shared.ready.subscribe();
        let mut init_rx = self.shared.init_error.subscribe();
        let mut exit_rx = self.exit_rx.clone();
        tokio::select! {
            biased;
            _ = init_rx.wait_for(Option::is_some) => Init::Reported,
            r = ready_rx.wait_for(|r| *r) => if r.is_ok() { Init::Ready } else { Init::Exited("the Runtime API stopped".into()) },
            e = exit_rx.wait_for(Option::is_some) => Init::Exited(e.map(|s| s.clone().unwrap_or_default()).unwrap_or_default()),
            _ = tokio::time::sleep(timeout) => Init::TimedOut,
        }
    }

    /// The Lambda error type and message of a failed init; `None` when the runtime is ready.
    fn init_failure(&self, init: Init, timeout: Duration) -> Option<(String, String)> {
        match init {
            Init::Ready => None,
            Init::Reported => Some(reported_init_error(&self.shared)),
            // A runtime that posts /init/error then exits: prefer its own report.
            Init::Exited(_) if self.shared.init_error.borrow().is_some() => Some(reported_init_error(&self.shared)),
            Init::Exited(status) => {
                Some(("Runtime.ExitError".to_owned(), format!("the runtime exited during init ({status})")))
            }
            Init::TimedOut => Some((
                "Runtime.InitTimeout".to_owned(),
                format!("the runtime did not ask for its first event within {timeout:?} of starting"),
            )),
        }
    }

    /// Make `inv` pending and queue its event for the runtime's `/next`. Returns where the
    /// completion will arrive, when the handler's time started, and the limits' baseline.
    async fn hand_over(&self, inv: &Invocation) -> Result<(Replies, Instant, Baseline), InstanceError> {
        let replies = self.shared.add_pending(&inv.request_id);
        let timeout_ms = u64::try_from(inv.timeout.as_millis()).unwrap_or(u64::MAX);
        let event = NextEvent {
            request_id: inv.request_id.clone(),
            payload: inv.payload.clone(),
            deadline_ms: nimbus_core::ids::now_ms().saturating_add(timeout_ms),
            arn: self.function.arn(),
            trace_id: inv.trace_id.clone(),
            client_context: inv.client_context.clone(),
        };
        let baseline = Baseline {
            cpu_ns: if self.function.spec.cpu_ms.is_some() { self.cpu_ns() } else { None },
            oom_kills: self.cgroup.as_ref().map_or(0, InstanceCgroup::oom_kills),
        };
        if self.concurrency > 1 {
            self.attribution.lock().unwrap_or_else(|e| e.into_inner()).begin(&inv.request_id);
        }
        let started = Instant::now();
        if self.next_tx.send(event).await.is_err() {
            self.dead.store(true, Ordering::Release);
            self.shared.remove_pending(&inv.request_id);
            let _ = self.drain_log(&inv.request_id);
            return Err(InstanceError::Platform("the instance's Runtime API is gone".into()));
        }
        Ok((replies, started, baseline))
    }

    /// Whichever comes first: the runtime's answer, the process's exit, or the timeout.
    async fn wait_end(
        &self,
        reply_rx: oneshot::Receiver<Completion>,
        timeout: Duration,
        cpu_at_start: Option<u64>,
    ) -> Ended {
        let mut exit_rx = self.exit_rx.clone();
        tokio::select! {
            biased;
            c = reply_rx => match c {
                Ok(c) => Ended::Done(c),
                Err(_) => Ended::Crashed("the invocation was abandoned".into()),
            },
            e = exit_rx.wait_for(Option::is_some) => Ended::Crashed(e.map(|s| s.clone().unwrap_or_default()).unwrap_or_default()),
            ms = self.cpu_exceeded(cpu_at_start) => Ended::CpuExceeded(ms),
            _ = tokio::time::sleep(timeout) => Ended::TimedOut,
        }
    }

    /// Resolves once the invocation has used more than `cpu_ms` of CPU time; never without
    /// `cpu_ms`. Checked a few times per `cpu_ms` (5–50 ms apart); `wait_end`'s timeout bounds it.
    async fn cpu_exceeded(&self, cpu_at_start: Option<u64>) -> u32 {
        let (Some(ms), Some(start)) = (self.function.spec.cpu_ms, cpu_at_start) else {
            return std::future::pending().await;
        };
        let limit = u64::from(ms) * 1_000_000;
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(ms / 4).clamp(5, 50)));
        loop {
            tick.tick().await;
            if self.cpu_ns().is_some_and(|now| now.saturating_sub(start) > limit) {
                return ms;
            }
        }
    }

    /// CPU time of the instance's processes so far: from its cgroup, else from `/proc`.
    fn cpu_ns(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(InstanceCgroup::cpu_ns).or_else(|| limits::tree_cpu_ns(self.pid))
    }

    /// Whether the runtime's exit (`status`, with the output `log`) was running out of memory:
    /// the cgroup's OOM killer fired during the invocation; in rlimit mode, the runtime died of
    /// a failed allocation (killed, or its last words say so).
    fn out_of_memory(&self, status: &str, log: &str, oom_at_start: u64) -> bool {
        match &self.cgroup {
            Some(cg) if cg.holds_memory() => cg.oom_kills() > oom_at_start,
            _ => {
                let tail = log.get(log.len().saturating_sub(4096)..).unwrap_or(log);
                // Inside the sandbox the init reports a signal as 128 + its number.
                ["SIGKILL", "SIGSEGV", "exit status 137", "exit status 139"].iter().any(|s| status.contains(s))
                    || ["MemoryError", "out of memory", "Cannot allocate memory", "ENOMEM"]
                        .iter()
                        .any(|w| tail.contains(w))
            }
        }
    }

    /// The invocation went past a limit: the instance is stopped and the caller gets Lambda's
    /// function error (`Unhandled`) of `error_type`, with a note in the log.
    fn limit_exceeded(
        &self,
        id: &str,
        (error_type, message): (&str, String),
        mut log: String,
        duration: Duration,
        max_memory_mb: u32,
    ) -> InvokeResult {
        self.stop_for(id, error_type);
        log.push_str(&self.drain_log(id));
        log.push_str(&format!("{error_type}: {message}\n"));
        let body =
            bytes::Bytes::from(serde_json::json!({"errorType": error_type, "errorMessage": message}).to_string());
        let outcome = InvokeOutcome::FunctionError {
            kind: FunctionErrorKind::Unhandled,
            error_type: error_type.to_owned(),
            error_message: message,
            body,
        };
        InvokeResult {
            outcome,
            duration,
            cold: None,
            max_memory_mb,
            log,
            instance_id: self.id.clone(),
            http: None,
            stream: None,
        }
    }

    fn completed(
        &self,
        id: &str,
        completion: Completion,
        duration: Duration,
        max_memory_mb: u32,
    ) -> Result<InvokeResult, InstanceError> {
        let log = self.drain_log(id);
        let outcome = match completion {
            Completion::Response(body) | Completion::Early(body) => InvokeOutcome::Success(body),
            Completion::Stream(_) => {
                return Err(InstanceError::Platform("a streamed response reached the buffered path".into()))
            }
            Completion::Error { error_type, body } => function_error(error_type, body),
            Completion::TooLarge { size } => {
                // The runtime's state after a refused response is unknown (awslambdaric
                // exits): retire the instance rather than hand it to the next caller.
                self.stop_for(id, "a response above the payload limit");
                return Err(InstanceError::ResponseTooLarge { size, limit: self.max_response, log });
            }
        };
        Ok(InvokeResult {
            outcome,
            duration,
            cold: None,
            max_memory_mb,
            log,
            instance_id: self.id.clone(),
            http: None,
            stream: None,
        })
    }

    /// The process exited mid-invocation: before the runtime took the event the function never
    /// ran (`Lost`, safe to retry elsewhere), after it the invocation crashed.
    fn crashed(
        &self,
        id: &str,
        status: String,
        duration: Duration,
        base: Baseline,
    ) -> Result<InvokeResult, InstanceError> {
        let picked_up = self.shared.picked_up(id);
        self.dead.store(true, Ordering::Release);
        self.shared.remove_pending(id);
        self.kill();
        let log = self.drain_log(id);
        if !picked_up {
            return Err(InstanceError::Lost { detail: format!("the runtime exited while idle ({status})") });
        }
        if let Some(why) = self.stopped_by.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            // Another invocation on the instance went past a limit and the instance was stopped.
            return Err(InstanceError::Crashed { detail: format!("the instance was stopped: {why}"), log });
        }
        if self.out_of_memory(&status, &log, base.oom_kills) {
            let mb = self.function.spec.memory_mb;
            let message = format!(
                "Runtime exited with error: {status}: the function used all of its memory_mb = {mb} MB; raise memory_mb or use less memory"
            );
            return Ok(self.limit_exceeded(id, ("Runtime.OutOfMemory", message), log, duration, mb));
        }
        Err(InstanceError::Crashed { detail: format!("Runtime exited with error: {status}"), log })
    }

    async fn timed_out(&self, id: &str, timeout: Duration) -> InstanceError {
        self.stop_for(id, "timed out");
        self.wait_exit(Duration::from_secs(1)).await;
        let log = self.drain_log(id);
        InstanceError::Timeout { timeout, log }
    }

    /// Invocation `id` went past a limit (`what`): kill the instance. The other invocations in
    /// flight (concurrency > 1) then fail saying why.
    fn stop_for(&self, id: &str, what: &str) {
        self.dead.store(true, Ordering::Release);
        self.shared.remove_pending(id);
        let mut by = self.stopped_by.lock().unwrap_or_else(|e| e.into_inner());
        if by.is_none() && self.concurrency > 1 {
            *by = Some(format!("invocation {id} on it {what}"));
        }
        drop(by);
        self.kill();
    }

    fn kill(&self) {
        if self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
    /// The response went out (streamed, or early with background work): hand the caller the
    /// head and the body now, and follow the rest of the invocation in a task that sends its
    /// completion (see [`crate::follow`]). `buffered`: the whole body, when it is known.
    fn follow(
        &self,
        id: &str,
        (head, body, buffered): (
            Option<nimbus_core::HttpResponseHead>,
            nimbus_core::BodyReceiver,
            Option<bytes::Bytes>,
        ),
        tail: oneshot::Receiver<exchange::Tail>,
        (started, timeout): (Instant, Duration),
        max_memory_mb: u32,
    ) -> InvokeResult {
        let (done, completion) = oneshot::channel();
        let task = crate::follow::Follow {
            tail,
            exit_rx: self.exit_rx.clone(),
            shared: self.shared.clone(),
            logs: self.logs.clone(),
            attribution: (self.concurrency > 1).then(|| (self.attribution.clone(), id.to_owned())),
            pid: self.pid,
            dead: self.tail_dead.clone(),
            proc_status: self.proc_status.as_ref().and_then(|f| f.try_clone().ok()),
            max_memory_mb,
            started,
            timeout,
            done,
            request_id: id.to_owned(),
        };
        tokio::spawn(task.run());
        InvokeResult {
            outcome: InvokeOutcome::Success(buffered.unwrap_or_default()),
            duration: started.elapsed(),
            cold: None,
            max_memory_mb,
            log: String::new(),
            instance_id: self.id.clone(),
            http: head,
            stream: Some(nimbus_core::StreamHandle::new(body, completion)),
        }
    }

    fn exited(&self) -> bool {
        self.exit_rx.borrow().is_some()
    }

    async fn wait_exit(&self, within: Duration) -> bool {
        let mut rx = self.exit_rx.clone();
        let exited = tokio::time::timeout(within, rx.wait_for(Option::is_some)).await.is_ok();
        exited
    }

    /// Invocation `id`'s output since the last drain, then nimbus's own notes (calls it was
    /// refused), so they read in the invocation's log. With one invocation at a time that is
    /// everything written; with several, the lines [`crate::attribution`] gives it.
    fn drain_log(&self, id: &str) -> String {
        let attribution = (self.concurrency > 1).then_some((&*self.attribution, id));
        crate::follow::drain(&self.logs, &self.shared, attribution)
    }

    /// Max Memory Used when an invocation ends: the runtime's peak resident set. nimbus's
    /// bootstraps report theirs with each answer (see [`exchange::Shared::reported_peak_kb`]);
    /// for other runtimes it is read from `/proc/PID/status` (`VmHWM`), which procfs renders
    /// whole for every read (~5 µs, 6-7 % of nimbus's CPU per warm invocation in `perf`).
    fn read_max_memory(&self) -> u32 {
        let reported = self.shared.reported_peak_kb.load(Ordering::Relaxed);
        if reported > 0 {
            let mb = u32::try_from(reported.div_ceil(1024)).unwrap_or(u32::MAX);
            // The runtime's own word: never past the limit it runs under.
            return mb.min(self.function.spec.memory_mb);
        }
        if let Some(mb) = self.proc_status.as_ref().and_then(limits::peak_rss_mb) {
            self.last_max_memory_mb.store(mb, Ordering::Relaxed);
        }
        self.last_max_memory_mb.load(Ordering::Relaxed)
    }
}

fn reported_init_error(shared: &Shared) -> (String, String) {
    let reported = shared.init_error.borrow().clone();
    let Some(err) = reported else { return ("Runtime.Unknown".into(), "init failed".into()) };
    let parsed: serde_json::Value = serde_json::from_slice(&err.body).unwrap_or_default();
    let error_type = parsed.get("errorType").and_then(|v| v.as_str()).map_or(err.error_type.clone(), str::to_owned);
    let message = parsed.get("errorMessage").and_then(|v| v.as_str()).unwrap_or("init failed").to_owned();
    (error_type, message)
}

/// What the instance's Runtime API accepts: the buffered limit, and the function's streaming
/// mode and cap.
fn api_limits(rt: &ProcessRuntime, function: &FunctionVersion) -> exchange::ApiLimits {
    exchange::ApiLimits {
        max_response: rt.limits.max_response_bytes,
        max_stream: function.spec.max_stream_bytes,
        streaming: function.spec.response_mode == nimbus_core::ResponseMode::Streaming,
        concurrency: function.spec.concurrency,
    }
}

/// Make the instance's temp dir and serve its endpoint; a failure leaves neither behind.
async fn serve_in(
    rt: &ProcessRuntime,
    function: &Arc<FunctionVersion>,
    scratch: &Path,
) -> Result<(Endpoint, JoinHandle<()>), StartError> {
    std::fs::create_dir_all(scratch).map_err(platform("cannot create the instance temp dir"))?;
    serve_api(rt, function, scratch).await.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(scratch);
    })
}

/// Serve the instance's endpoint: on a fresh loopback port, or, sandboxed, on a Unix socket in
/// the instance's directory (which the sandbox mounts at `/run/nimbus`).
async fn serve_api(
    rt: &ProcessRuntime,
    function: &Arc<FunctionVersion>,
    scratch: &Path,
) -> Result<(Endpoint, JoinHandle<()>), StartError> {
    let (listener, addr) = if rt.sandbox.is_some() {
        let path = scratch.join(sandbox::SOCKET_NAME);
        let listener = tokio::net::UnixListener::bind(&path).map_err(platform("cannot bind the instance's socket"))?;
        // The sandbox user is not the socket's owner; connecting needs write permission.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(platform("cannot open the instance's socket to the sandbox user"))?;
        (api::Listener::Unix(listener), sandbox::INSIDE_API.to_owned())
    } else {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(platform("cannot bind the Runtime API listener"))?;
        let addr = listener.local_addr().map_err(platform("cannot read the Runtime API address"))?;
        (api::Listener::Tcp(listener), addr.to_string())
    };
    let services =
        crate::services::Services {
            caller: function.clone(),
            calls: rt.calls.clone(),
            aws: rt.aws.clone(),
            egress: rt.sandbox.is_some().then(|| {
                function.spec.allowed_outbound_hosts.as_ref().map(|list| {
                    list.iter().filter_map(|p| nimbus_core::outbound::OutboundPattern::parse(p).ok()).collect()
                })
            }),
            notes: Default::default(),
        };
    let (shared, next_tx) = Shared::new(api_limits(rt, function), Some(services));
    let server = tokio::spawn(api::serve(listener, shared.clone()));
    let credentials = crate::services::Lease::issue(&rt.aws, function);
    Ok((Endpoint { addr, shared, next_tx, credentials }, server))
}

/// The runtime's pid inside a sandbox: bwrap (`pid`) → the sandbox's PID 1 → nimbus's init →
/// the runtime, each the first child of the one before.
fn runtime_pid(pid: u32) -> Option<u32> {
    let first_child = |p: u32| -> Option<u32> {
        let text = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    };
    first_child(pid).and_then(first_child).and_then(first_child)
}

/// Spawn the runtime: cleared environment, its own process group, output on two pipes. A held
/// sandbox gets no environment yet and a pipe as its input instead.
fn spawn_runtime(
    rt: &ProcessRuntime,
    function: &FunctionVersion,
    id: &str,
    (program, args): &(PathBuf, Vec<String>),
    how: &Spawn<'_>,
) -> Result<Spawned, StartError> {
    let zygote = how.hold && rt.sandbox.is_some() && crate::zygote::fits(function);
    let zygote_args = if zygote { crate::zygote::args(args, function) } else { args.clone() };
    let (stdout, out_w) = std::io::pipe().map_err(platform("cannot create a pipe"))?;
    let (stderr, err_w) = std::io::pipe().map_err(platform("cannot create a pipe"))?;
    let mut cmd = match &rt.sandbox {
        Some(sandbox) => {
            let pyc = crate::pycache::cached(rt.data_dir(), function);
            let spec = sandbox::InstanceSpec {
                code: &function.code_path,
                runtime_dir: &rt.runtime_dir,
                socket_dir: how.scratch,
                tmp_mb: function.spec.ephemeral_storage_mb,
                program: &program.display().to_string(),
                args: &zygote_args,
                hold: how.hold && !zygote,
                pyc: pyc.as_deref(),
            };
            sandbox.command(&spec).map_err(platform("cannot prepare the sandbox"))?
        }
        None => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args).current_dir(&function.code_path);
            cmd
        }
    };
    cmd.env_clear();
    let go = if how.hold {
        Some(crate::zygote::hold_input(rt, &mut cmd, zygote)?)
    } else {
        cmd.envs(environment(rt, function, id, (how.api, how.lease), how.scratch)).stdin(Stdio::null());
        None
    };
    cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w)).process_group(0).kill_on_drop(true);
    set_child_flags(&mut cmd);
    // Without a memory cgroup, `memory_mb` is each process's RLIMIT_DATA.
    let data_bytes = (!how.cgroup.is_some_and(InstanceCgroup::holds_memory))
        .then(|| u64::from(function.spec.memory_mb) * 1024 * 1024);
    limits::pre_exec_hook(&mut cmd, how.cgroup, data_bytes);
    let spawned = cmd.spawn();
    // The Command holds the pipes' ends; drop it so end-of-file reaches the readers.
    drop(cmd);
    let child = spawned.map_err(|e| spawn_error(function, program, e))?;
    Ok(Spawned { child, stdout, stderr, go })
}

/// A sandboxed instance made ahead of demand: temp dir, endpoint, cgroup, namespaces, mounts and
/// the init ready, the init waiting for the runtime's environment. Claiming it sends the
/// environment and the runtime starts: a cold start then pays only for the runtime itself (see
/// `crate::shells`). Dropped unclaimed, its input closes and the init exits.
pub(crate) struct Shell {
    instance: ProcessInstance,
    go: std::io::PipeWriter,
}

impl Shell {
    /// Prepare a sandbox for `function` (the runtime must be sandboxed).
    pub(crate) async fn prepare(rt: &ProcessRuntime, function: Arc<FunctionVersion>) -> Result<Shell, StartError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!("spare-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (instance, go) = ProcessInstance::spawn(rt, function, id, true).await?;
        match go {
            Some(go) => Ok(Shell { instance, go }),
            None => Err(StartError::Platform("a prepared sandbox has no input".into())),
        }
    }

    /// The version the sandbox was made for.
    pub(crate) fn function(&self) -> &Arc<FunctionVersion> {
        &self.instance.function
    }

    /// Whether the sandbox is still waiting (its init has not exited).
    pub(crate) fn alive(&self) -> bool {
        !self.instance.exited()
    }

    /// Start the runtime in it as instance `id` of `function` (a version with the same pool key
    /// as the one it was made for) and wait until it is ready or failed.
    pub(crate) async fn claim(
        self,
        rt: &ProcessRuntime,
        function: Arc<FunctionVersion>,
        id: String,
    ) -> Result<ProcessInstance, StartError> {
        let began = Instant::now();
        let Shell { mut instance, go } = self;
        let lease = instance.credentials.as_ref();
        let env = environment(rt, &function, &id, (sandbox::INSIDE_API, lease), &instance.scratch);
        let mut bytes = Vec::new();
        for (k, v) in env {
            bytes.extend_from_slice(k.as_bytes());
            bytes.push(b'=');
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(0);
        }
        let sent = async {
            let mut tx = pipe::Sender::from_owned_fd(OwnedFd::from(go))?;
            tokio::io::AsyncWriteExt::write_all(&mut tx, &bytes).await
        };
        if let Err(e) = sent.await {
            return Err(StartError::Platform(format!("cannot start the runtime in its prepared sandbox: {e}")));
        }
        instance.id = id;
        instance.function = function;
        instance.cold_start.instance_start = began.elapsed();
        instance.finish_init(began, rt.limits.init_timeout).await
    }

    /// Stop the sandbox and remove what it holds.
    pub(crate) async fn discard(self) {
        drop(self.go);
        self.instance.stop().await;
    }
}

/// A `provided` bootstrap that cannot be executed is the function's fault (Lambda's
/// `Runtime.InvalidEntrypoint`); a missing interpreter of nimbus's is the platform's.
fn spawn_error(function: &FunctionVersion, program: &Path, e: std::io::Error) -> StartError {
    if function.spec.runtime == RuntimeKind::Provided {
        StartError::InitFailed {
            error_type: "Runtime.InvalidEntrypoint".into(),
            message: format!(
                "cannot execute {}: {e}; it must be an executable (with a #! line if it is a script)",
                program.display()
            ),
            log: String::new(),
        }
    } else {
        StartError::Platform(format!("cannot start {}: {e}", program.display()))
    }
}

/// Collect the runtime's output from the read ends of its pipes.
fn tap_logs(stdout: std::io::PipeReader, stderr: std::io::PipeReader, max: usize) -> Result<LogTap, StartError> {
    let receiver = |fd: std::io::PipeReader| pipe::Receiver::from_owned_fd(OwnedFd::from(fd));
    match (receiver(stdout), receiver(stderr)) {
        (Ok(o), Ok(e)) => Ok(LogTap::spawn(o, e, max)),
        (Err(e), _) | (_, Err(e)) => Err(StartError::Platform(format!("cannot read the runtime's output: {e}"))),
    }
}

/// Publish the process's exit, described, as soon as it happens; the task owns the child.
fn watch_exit(mut child: tokio::process::Child) -> watch::Receiver<Option<String>> {
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let text = match child.wait().await {
            Ok(s) => describe_exit(s),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = exit_tx.send(Some(text));
    });
    exit_rx
}

#[async_trait]
impl Instance for ProcessInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn cold_start(&self) -> ColdStart {
        self.cold_start
    }

    fn take_init_log(&self) -> String {
        std::mem::take(&mut *self.init_log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn state(&self) -> InstanceState {
        if self.dead.load(Ordering::Acquire) || self.exited() || self.tail_dead.load(Ordering::Acquire) {
            InstanceState::Dead
        } else {
            InstanceState::Ready
        }
    }

    async fn invoke(&self, inv: Invocation) -> Result<InvokeResult, InstanceError> {
        if self.state() == InstanceState::Dead {
            return Err(InstanceError::Platform("the instance is no longer running".into()));
        }
        let id = inv.request_id.as_str();
        let ((reply_rx, tail_rx), started, base) = self.hand_over(&inv).await?;
        let ended = self.wait_end(reply_rx, inv.timeout, base.cpu_ns).await;
        let duration = started.elapsed();
        let max_memory_mb = self.read_max_memory();
        match ended {
            Ended::Done(Completion::Stream(s)) => {
                Ok(self.follow(id, (s.head, s.body, None), tail_rx, (started, inv.timeout), max_memory_mb))
            }
            Ended::Done(Completion::Early(body)) => {
                let (mut tx, rx) = nimbus_core::response_stream(u64::MAX);
                // One chunk into an empty channel: never waits.
                let _ = tx.send(body.clone()).await;
                drop(tx);
                Ok(self.follow(id, (None, rx, Some(body)), tail_rx, (started, inv.timeout), max_memory_mb))
            }
            Ended::Done(completion) => self.completed(id, completion, duration, max_memory_mb),
            Ended::Crashed(status) => self.crashed(id, status, duration, base),
            Ended::TimedOut => Err(self.timed_out(id, inv.timeout).await),
            Ended::CpuExceeded(ms) => {
                let message = format!("the invocation used more than {ms} ms of CPU time (cpu_ms = {ms})");
                let limit = ("Runtime.CpuLimitExceeded", message);
                Ok(self.limit_exceeded(id, limit, String::new(), duration, max_memory_mb))
            }
        }
    }

    async fn shutdown(self: Arc<Self>) {
        match Arc::try_unwrap(self) {
            Ok(instance) => instance.stop().await,
            // Not the last handle (the pool stops an instance only once nothing runs on it, so
            // this is not expected): kill it now; dropping the last handle removes the rest.
            Err(shared) => {
                shared.kill();
                shared.server.abort();
            }
        }
    }
}

impl ProcessInstance {
    /// Stop the runtime (SIGTERM, then SIGKILL after the grace) and remove what it holds.
    async fn stop(mut self) {
        if !self.exited() && self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            self.wait_exit(self.stop_grace).await;
        }
        // Anything left in the group (children the runtime spawned) goes too.
        self.kill();
        self.wait_exit(Duration::from_secs(2)).await;
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.scratch);
        if let Some(cg) = &mut self.cgroup {
            cg.remove().await;
        }
        self.stopped = true;
    }
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill();
            self.server.abort();
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}

fn function_error(header_type: Option<String>, body: bytes::Bytes) -> InvokeOutcome {
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let kind = match header_type.as_deref() {
        Some(h) if h.starts_with("Handled") => FunctionErrorKind::Handled,
        _ => FunctionErrorKind::Unhandled,
    };
    let error_type = parsed
        .get("errorType")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or(header_type.filter(|h| !h.is_empty() && h != "Unhandled" && h != "Handled"))
        .unwrap_or_else(|| "Error".to_owned());
    let error_message = parsed.get("errorMessage").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    // Keep the runtime's body when it is the usual JSON document; otherwise build one.
    let body = if parsed.is_object() {
        body
    } else {
        let message = String::from_utf8_lossy(&body).into_owned();
        bytes::Bytes::from(serde_json::json!({"errorMessage": message, "errorType": error_type}).to_string())
    };
    InvokeOutcome::FunctionError { kind, error_type, error_message, body }
}

/// The sandbox's only way out is nimbus's egress proxy on the instance's endpoint.
fn proxy_env(api: &str) -> Vec<(String, String)> {
    let proxy = format!("http://{api}");
    let mut env: Vec<(String, String)> = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .iter()
        .map(|v| ((*v).into(), proxy.clone()))
        .collect();
    env.push(("NO_PROXY".into(), "127.0.0.1,localhost".into()));
    env.push(("no_proxy".into(), "127.0.0.1,localhost".into()));
    env
}

/// `require("nimbus")` with nothing installed, as Lambda's NODE_PATH finds its runtime's
/// modules; a NODE_PATH of the function's own comes first.
fn node_path(spec: &nimbus_core::FunctionSpec, runtime_dir: &str) -> String {
    let node_lib = format!("{runtime_dir}/node/lib");
    spec.env.get("NODE_PATH").map_or(node_lib.clone(), |own| format!("{own}:{node_lib}"))
}

/// The AWS SDKs' configuration: the instance's endpoint and key. The SDKs reach nimbus through
/// the endpoint (S3 with this key, within the function's grants; the Invoke API, which knows the
/// caller from the connection). Path-style S3 needs no setting: the SDKs use it for an endpoint
/// whose host is an IP address. Without an AWS side (the runtime's own tests) the keys are
/// placeholders nothing accepts: the SDKs insist on something to sign with.
fn aws_env(api: &str, id: &str, lease: Option<&crate::services::Lease>) -> Vec<(String, String)> {
    let mut env = vec![
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_DEFAULT_REGION".into(), REGION.into()),
        ("AWS_ENDPOINT_URL".into(), format!("http://{api}")),
    ];
    match lease.map(|l| &l.credentials) {
        Some(c) => env.extend([
            ("AWS_ACCESS_KEY_ID".into(), c.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), c.secret_access_key.clone()),
            ("AWS_SESSION_TOKEN".into(), c.session_token.clone()),
        ]),
        None => env.extend([
            ("AWS_ACCESS_KEY_ID".into(), format!("NIMBUS{}", id.to_ascii_uppercase())),
            ("AWS_SECRET_ACCESS_KEY".into(), id.to_owned()),
        ]),
    }
    env
}

fn environment(
    rt: &ProcessRuntime,
    f: &FunctionVersion,
    id: &str,
    (api, lease): (&str, Option<&crate::services::Lease>),
    scratch: &std::path::Path,
) -> Vec<(String, String)> {
    let spec = &f.spec;
    let date = chrono::Utc::now().format("%Y/%m/%d");
    // Paths as the runtime sees them: inside the sandbox, Lambda's.
    let (task_root, runtime_dir, tmp) = if rt.sandbox.is_some() {
        (sandbox::TASK_ROOT.to_owned(), sandbox::RUNTIME_DIR.to_owned(), "/tmp".to_owned())
    } else {
        (f.code_path.display().to_string(), rt.runtime_dir.display().to_string(), scratch.display().to_string())
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), rt.instance_path()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), "UTC".into()),
        ("HOME".into(), tmp.clone()),
        ("TMPDIR".into(), tmp),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ];
    env.extend(crate::pycache::prefix_env(rt, f));
    if rt.sandbox.is_some() {
        env.extend(proxy_env(api));
    }
    // The user's env comes before the platform's, so it can change PATH or LANG but never the
    // Runtime API contract (the manifest validator also rejects those names).
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if rt.sandbox.is_some() {
        // nimbus's own bootstraps talk to the Runtime API on the socket itself, past the
        // init's TCP forwarder (which stays for the official clients and the AWS SDKs).
        let socket = format!("{}/{}", crate::sandbox::SOCKET_DIR, crate::sandbox::SOCKET_NAME);
        env.push(("NIMBUS_RUNTIME_API_SOCKET".into(), socket));
    }
    env.extend([
        ("AWS_LAMBDA_RUNTIME_API".into(), api.to_owned()),
        ("_HANDLER".into(), spec.handler.clone()),
        ("LAMBDA_TASK_ROOT".into(), task_root),
        ("NODE_PATH".into(), node_path(spec, &runtime_dir)),
        ("LAMBDA_RUNTIME_DIR".into(), runtime_dir),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), f.version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), spec.memory_mb.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME".into(), format!("/aws/lambda/{}", spec.name)),
        ("AWS_LAMBDA_LOG_STREAM_NAME".into(), format!("{date}/[{}]{id}", f.version)),
        ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ("AWS_EXECUTION_ENV".into(), format!("nimbus_{}", spec.runtime.as_str())),
    ]);
    if spec.concurrency > 1 {
        // As Lambda Managed Instances: how many invocations the runtime may take at once (its
        // bootstraps run that many pollers; `lambda_runtime` reads it too).
        env.push(("AWS_LAMBDA_MAX_CONCURRENCY".into(), spec.concurrency.to_string()));
    }
    env.extend(aws_env(api, id, lease));
    env
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => {
            format!("signal {sig} ({})", Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown"))
        }
        _ => status.to_string(),
    }
}

/// Ask the kernel to SIGKILL the runtime when nimbus dies, so `kill -9 nimbus` leaves no
/// orphans; and give the runtime transparent huge pages back (the `nimbus` binary turns them off
/// for itself, and the flag is inherited across fork and exec), so a function's memory behaves
/// as the host's default says.
#[allow(unsafe_code)]
fn set_child_flags(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // Best effort, as in `nimbus`'s `main`: a kernel without the flag has nothing to undo.
            let _ = nix::sys::prctl::set_thp_disable(false);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::time::SystemTime;

    use super::*;
    use crate::Limits;

    /// A runtime on a temp data dir, without looking for node or python (tests use `provided`).
    fn runtime(data: &Path) -> ProcessRuntime {
        ProcessRuntime {
            node: None,
            python: None,
            python_entry: data.join("runtime/python/bootstrap.py"),
            runtime_dir: data.join("runtime"),
            scratch_dir: data.join("instances"),
            limits: Limits { init_timeout: Duration::from_secs(10), ..Limits::default() },
            sandbox: None,
            calls: Default::default(),
            aws: Default::default(),
            resources: Default::default(),
            spares: Default::default(),
        }
    }

    fn provided(code: &Path, env: &[(&str, &str)]) -> Arc<FunctionVersion> {
        let spec = nimbus_core::FunctionSpec {
            name: "fn".into(),
            runtime: RuntimeKind::Provided,
            handler: "handler.run".into(),
            code: ".".into(),
            memory_mb: 256,
            timeout: Duration::from_secs(3),
            cpu_ms: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            min_instances: 0,
            max_instances: 1,
            keep_alive: Duration::from_secs(60),
            max_queued: 0,
            queue_timeout: Duration::from_secs(1),
            async_policy: Default::default(),
            wasm: Default::default(),
            allowed_outbound_hosts: None,
            ephemeral_storage_mb: 512,
            grants: Default::default(),
            keep_alive_policy: Default::default(),
            response_mode: Default::default(),
            max_stream_bytes: nimbus_core::DEFAULT_MAX_STREAM_BYTES,
            concurrency: 1,
        };
        Arc::new(FunctionVersion {
            spec,
            version: "7".into(),
            code_digest: "d".into(),
            code_path: code.to_owned(),
            key_cache: Default::default(),
        })
    }

    fn scratch_entries(rt: &ProcessRuntime) -> usize {
        std::fs::read_dir(&rt.scratch_dir).map(|d| d.count()).unwrap_or(0)
    }

    fn tasks() -> usize {
        tokio::runtime::Handle::current().metrics().num_alive_tasks()
    }

    /// Assert the tasks a start spawned are all gone (an aborted task goes at its next poll, so
    /// the runtime gets a few turns first).
    async fn assert_no_tasks_left(before: usize) {
        for _ in 0..100 {
            if tasks() == before {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks(), before, "a task the failed start spawned is still alive");
    }

    /// An AWS side that hands out numbered keys and records which were revoked.
    #[derive(Default)]
    struct FakeAws {
        issued: std::sync::atomic::AtomicUsize,
        revoked: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl nimbus_core::FunctionAws for FakeAws {
        fn issue_credentials(&self, caller: &FunctionVersion) -> nimbus_core::InstanceCredentials {
            let n = self.issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            nimbus_core::InstanceCredentials {
                access_key_id: format!("ASIA{n}"),
                secret_access_key: format!("secret-of-{}", caller.spec.name),
                session_token: format!("token{n}"),
            }
        }
        fn revoke_credentials(&self, access_key_id: &str) {
            self.revoked.lock().unwrap().push(access_key_id.to_owned());
        }
        async fn serve(&self, _: http::Request<nimbus_core::StreamBody>) -> http::Response<nimbus_core::StreamBody> {
            unreachable!("no request is sent in these tests")
        }
    }

    #[test]
    fn an_instance_gets_its_own_aws_key_until_the_lease_is_dropped() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        let f = provided(data.path(), &[("AWS_SESSION_TOKEN", "user's"), ("AWS_ACCESS_KEY_ID", "user's")]);
        // No AWS side: placeholders, and no session token.
        let env: HashMap<String, String> =
            environment(&rt, &f, "inst1", ("127.0.0.1:9001", None), Path::new("/t")).into_iter().collect();
        assert_eq!(env.get("AWS_ACCESS_KEY_ID").map(String::as_str), Some("NIMBUSINST1"));
        assert_eq!(env.get("AWS_ENDPOINT_URL").map(String::as_str), Some("http://127.0.0.1:9001"));

        let fake = Arc::new(FakeAws::default());
        let aws: Arc<dyn nimbus_core::FunctionAws> = fake.clone();
        let _ = rt.aws.set(aws);
        let lease = crate::services::Lease::issue(&rt.aws, &f).unwrap();
        let env: HashMap<String, String> =
            environment(&rt, &f, "inst1", ("127.0.0.1:9001", Some(&lease)), Path::new("/t")).into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some("ASIA0"), "the issued key wins over the user's env");
        assert_eq!(get("AWS_SECRET_ACCESS_KEY"), Some("secret-of-fn"));
        assert_eq!(get("AWS_SESSION_TOKEN"), Some("token0"));
        assert_eq!(get("AWS_REGION"), Some(REGION));
        assert!(fake.revoked.lock().unwrap().is_empty());
        drop(lease);
        assert_eq!(*fake.revoked.lock().unwrap(), vec!["ASIA0".to_owned()], "dropping the lease revokes the key");
    }

    #[test]
    fn environment_has_the_lambda_contract_and_the_users_variables() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        // A user value for a platform name loses: the platform's entry comes later and wins.
        let f = provided(data.path(), &[("GREETING", "hi"), ("AWS_LAMBDA_RUNTIME_API", "evil:1")]);
        let list = environment(&rt, &f, "inst1", ("127.0.0.1:9001", None), Path::new("/tmp/scratch"));
        let env: HashMap<String, String> = list.into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
        assert_eq!(get("_HANDLER"), Some("handler.run"));
        assert_eq!(get("LAMBDA_TASK_ROOT"), Some(data.path().to_str().unwrap()));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), Some("fn"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), Some("7"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(get("AWS_LAMBDA_LOG_GROUP_NAME"), Some("/aws/lambda/fn"));
        assert!(get("AWS_LAMBDA_LOG_STREAM_NAME").unwrap().ends_with("/[7]inst1"));
        assert_eq!(get("AWS_REGION"), Some(REGION));
        assert_eq!(get("HOME"), Some("/tmp/scratch"));
        assert_eq!(get("TMPDIR"), Some("/tmp/scratch"));
        assert_eq!(get("GREETING"), Some("hi"));
        assert_eq!(get("PATH"), Some("/usr/local/bin:/usr/bin:/bin"));
        let node_lib = format!("{}/node/lib", rt.runtime_dir.display());
        assert_eq!(get("NODE_PATH"), Some(node_lib.as_str()), "require(\"nimbus\") resolves with nothing installed");
        // A NODE_PATH of the function's own comes first.
        let f = provided(data.path(), &[("NODE_PATH", "/var/task/mods")]);
        let env: HashMap<String, String> =
            environment(&rt, &f, "inst1", ("127.0.0.1:9001", None), Path::new("/tmp/scratch")).into_iter().collect();
        assert_eq!(env.get("NODE_PATH"), Some(&format!("/var/task/mods:{node_lib}")));
    }

    /// The bootstrap is `env` itself: it prints the environment it got and exits, which ends
    /// init with the output as the init log.
    #[tokio::test]
    async fn a_runtime_sees_only_the_environment_nimbus_gives_it() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        std::os::unix::fs::symlink("/usr/bin/env", data.path().join("bootstrap")).unwrap();
        let f = provided(data.path(), &[("GREETING", "hi")]);
        let before = tasks();
        let Err(StartError::InitFailed { error_type, log, .. }) =
            ProcessInstance::start(&rt, f.clone(), "i1".into()).await
        else {
            panic!("env exits, so init must fail");
        };
        assert_eq!(error_type, "Runtime.ExitError");
        let seen: HashSet<&str> = log.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
        let given = environment(&rt, &f, "i1", ("127.0.0.1:1", None), Path::new("/"));
        let given: HashSet<&str> = given.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(seen, given, "exactly the variables nimbus sets: {log}");
        assert_eq!(scratch_entries(&rt), 0, "the failed start removed its temp dir");
        assert_no_tasks_left(before).await;
    }

    #[tokio::test]
    async fn a_bootstrap_that_cannot_be_executed_fails_init_and_leaves_no_temp_dir() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        std::fs::write(data.path().join("bootstrap"), "echo no exec bit\n").unwrap();
        let before = tasks();
        match ProcessInstance::start(&rt, provided(data.path(), &[]), "i2".into()).await {
            Err(StartError::InitFailed { error_type, .. }) => assert_eq!(error_type, "Runtime.InvalidEntrypoint"),
            Err(e) => panic!("expected InvalidEntrypoint, got {e}"),
            Ok(_) => panic!("a file without the exec bit cannot start"),
        }
        assert_eq!(scratch_entries(&rt), 0);
        assert_no_tasks_left(before).await;
    }

    /// The temp dir cannot be made (a file stands where the instances' dir should be): the
    /// Runtime API server already started must not be left running.
    #[tokio::test]
    async fn a_start_that_cannot_make_its_temp_dir_leaves_no_server_behind() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        std::fs::write(&rt.scratch_dir, "not a directory").unwrap();
        std::fs::write(data.path().join("bootstrap"), "").unwrap();
        let before = tasks();
        match ProcessInstance::start(&rt, provided(data.path(), &[]), "i5".into()).await {
            Err(StartError::Platform(message)) => assert!(message.contains("temp dir"), "{message}"),
            Err(e) => panic!("expected a platform error, got {e}"),
            Ok(_) => panic!("cannot start without a temp dir"),
        }
        assert_no_tasks_left(before).await;
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap()
    }

    #[tokio::test]
    async fn the_start_guard_undoes_a_failed_start() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("i3");
        std::fs::create_dir(&scratch).unwrap();
        let task = tokio::spawn(std::future::pending::<()>());
        let mut child = sleeper();
        let guard =
            StartGuard { server: task.abort_handle(), scratch: scratch.clone(), group: Some(child.id()), armed: true };
        drop(guard);
        let stopped = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(stopped.is_ok_and(|r| r.is_err_and(|e| e.is_cancelled())), "the Runtime API task is stopped");
        assert!(!scratch.exists(), "the temp dir is removed");
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL), "the process group is killed");
    }

    #[tokio::test]
    async fn a_disarmed_start_guard_leaves_everything_to_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("i4");
        std::fs::create_dir(&scratch).unwrap();
        let task = tokio::spawn(std::future::pending::<()>());
        let mut child = sleeper();
        let mut guard =
            StartGuard { server: task.abort_handle(), scratch: scratch.clone(), group: Some(child.id()), armed: true };
        guard.disarm();
        drop(guard);
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        assert!(scratch.exists());
        assert!(child.try_wait().unwrap().is_none(), "the runtime keeps running");
        task.abort();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A `provided` runtime in Python's standard library (Debian's /usr/bin/python3; the
    /// instance PATH holds only the system directories): echoes events, and crashes, sleeps
    /// or reports an error when the event says so.
    const ECHO_RUNTIME: &str = r#"#!/usr/bin/python3 -S
import os, sys, time, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = r.read().decode()
    print("handling " + event, flush=True)
    if event == "crash":
        sys.exit(3)
    if event == "sleep":
        time.sleep(30)
    if event == "error":
        body, url = b'{"errorType":"Boom","errorMessage":"no"}', api + rid + "/error"
    else:
        body, url = ("echo:" + event).encode(), api + rid + "/response"
    urllib.request.urlopen(urllib.request.Request(url, data=body)).read()
"#;

    fn event(payload: &'static str, timeout: Duration) -> Invocation {
        Invocation {
            request_id: format!("req-{payload}"),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            timeout,
            trace_id: String::new(),
            client_context: None,
            trigger: nimbus_core::Trigger::Invoke,
            received_at: Instant::now(),
            received_wall: SystemTime::now(),
            http: None,
        }
    }

    async fn echo_instance(rt: &ProcessRuntime, code: &Path, id: &str) -> ProcessInstance {
        match ProcessInstance::start(rt, provided(code, &[]), id.into()).await {
            Ok(i) => i,
            Err(e) => panic!("the echo runtime must start: {e}"),
        }
    }

    #[tokio::test]
    async fn invocations_answer_fail_crash_and_time_out_as_the_runtime_does() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        let bootstrap = data.path().join("bootstrap");
        std::fs::write(&bootstrap, ECHO_RUNTIME).unwrap();
        std::fs::set_permissions(&bootstrap, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let secs = Duration::from_secs;
        let i = echo_instance(&rt, data.path(), "e1").await;
        let r = i.invoke(event("a", secs(10))).await.unwrap();
        assert!(matches!(&r.outcome, InvokeOutcome::Success(b) if b.as_ref() == b"echo:a"));
        assert_eq!(r.log, "handling a\n", "the invocation's own output");
        let r = i.invoke(event("error", secs(10))).await.unwrap();
        assert!(matches!(&r.outcome, InvokeOutcome::FunctionError { error_type, .. } if error_type == "Boom"));
        match i.invoke(event("crash", secs(10))).await {
            Err(InstanceError::Crashed { detail, log }) => {
                assert_eq!(detail, "Runtime exited with error: exit status 3");
                assert_eq!(log, "handling crash\n");
            }
            other => panic!("expected a crash, got {:?}", other.map(|r| r.outcome)),
        }
        assert_eq!(i.state(), InstanceState::Dead);
        Arc::new(i).shutdown().await;
        let i = echo_instance(&rt, data.path(), "e2").await;
        match i.invoke(event("sleep", Duration::from_millis(300))).await {
            Err(InstanceError::Timeout { log, .. }) => assert_eq!(log, "handling sleep\n"),
            other => panic!("expected a timeout, got {:?}", other.map(|r| r.outcome)),
        }
        assert_eq!(i.state(), InstanceState::Dead, "a timed-out instance is killed");
        Arc::new(i).shutdown().await;
        assert_eq!(scratch_entries(&rt), 0, "shutdown removed both temp dirs");
    }

    /// A `provided` runtime (Python's standard library) speaking the streaming and waitUntil
    /// extensions by hand: "stream" sends two chunks with the second after the marker file
    /// appears; "wait" answers at once with `Nimbus-Wait-Until: 1`, prints after the marker and
    /// posts /done; "hang" answers the same way and never finishes.
    const STREAM_RUNTIME: &str = r#"#!/usr/bin/python3 -S
import http.client, os, sys, time, urllib.request
host = os.environ["AWS_LAMBDA_RUNTIME_API"]
base = "/2018-06-01/runtime/invocation/"
mark = os.environ["MARK"]
def wait_mark():
    for _ in range(1000):
        if os.path.exists(mark):
            return
        time.sleep(0.01)
while True:
    with urllib.request.urlopen("http://" + host + base + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = r.read().decode()
    print("handling " + event, flush=True)
    c = http.client.HTTPConnection(host)
    if event == "stream":
        c.putrequest("POST", base + rid + "/response")
        c.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        c.send(b"1\r\na\r\n")
        wait_mark()
        c.send(b"1\r\nb\r\n0\r\n\r\n")
        c.getresponse().read()
        continue
    c.request("POST", base + rid + "/response", body=b"early", headers={"Nimbus-Wait-Until": "1"})
    c.getresponse().read()
    if event == "hang":
        time.sleep(30)
    wait_mark()
    print("background done", flush=True)
    c.request("POST", base + rid + "/done", body=b"")
    c.getresponse().read()
"#;

    async fn stream_instance(rt: &ProcessRuntime, code: &Path, mark: &Path) -> ProcessInstance {
        std::fs::write(code.join("bootstrap"), STREAM_RUNTIME).unwrap();
        std::fs::set_permissions(code.join("bootstrap"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut f = (*provided(code, &[("MARK", mark.to_str().unwrap())])).clone();
        f.spec.response_mode = nimbus_core::ResponseMode::Streaming;
        match ProcessInstance::start(rt, Arc::new(f), "s1".into()).await {
            Ok(i) => i,
            Err(e) => panic!("the streaming runtime must start: {e}"),
        }
    }

    #[tokio::test]
    async fn a_streamed_response_returns_at_its_head_and_completes_when_the_body_ends() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        let mark = data.path().join("go");
        let i = stream_instance(&rt, data.path(), &mark).await;
        let r = i.invoke(event("stream", Duration::from_secs(10))).await.unwrap();
        let handle = r.stream.expect("a streamed result");
        let mut body = handle.take_body().unwrap();
        let mut completion = handle.take_completion().unwrap();
        assert_eq!(body.next().await.unwrap().unwrap().as_ref(), b"a", "the first chunk before the handler ends");
        assert!(completion.try_recv().is_err(), "the invocation is still running");
        std::fs::write(&mark, "go").unwrap();
        assert_eq!(body.next().await.unwrap().unwrap().as_ref(), b"b");
        assert!(body.next().await.is_none());
        let done = completion.await.unwrap();
        assert!(matches!(done.outcome, Ok(InvokeOutcome::Success(_))));
        assert_eq!(done.log, "handling stream\n");
        assert_eq!(i.state(), InstanceState::Ready);
        Arc::new(i).shutdown().await;
    }

    #[tokio::test]
    async fn wait_until_work_ends_the_invocation_after_the_response_and_its_log_belongs_to_it() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        let mark = data.path().join("go");
        let i = stream_instance(&rt, data.path(), &mark).await;
        let r = i.invoke(event("wait", Duration::from_secs(10))).await.unwrap();
        assert!(matches!(&r.outcome, InvokeOutcome::Success(b) if b.as_ref() == b"early"), "the response at once");
        let handle = r.stream.expect("an early result");
        let mut body = handle.take_body().unwrap();
        assert_eq!(body.next().await.unwrap().unwrap().as_ref(), b"early");
        assert!(body.next().await.is_none(), "the body is whole before the work ends");
        let mut completion = handle.take_completion().unwrap();
        assert!(completion.try_recv().is_err(), "the background work is still waiting");
        std::fs::write(&mark, "go").unwrap();
        let done = completion.await.unwrap();
        assert!(matches!(done.outcome, Ok(InvokeOutcome::Success(_))));
        assert_eq!(done.log, "handling wait\nbackground done\n");
        assert!(done.response < done.duration, "{:?} vs {:?}", done.response, done.duration);
        // The instance serves the next invocation.
        let r = i.invoke(event("wait", Duration::from_secs(10))).await.unwrap();
        let done = r.stream.unwrap().take_completion().unwrap().await.unwrap();
        assert!(matches!(done.outcome, Ok(InvokeOutcome::Success(_))));
        Arc::new(i).shutdown().await;
    }

    #[tokio::test]
    async fn the_timeout_stops_wait_until_work_and_the_instance() {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(data.path());
        let mark = data.path().join("go");
        let i = stream_instance(&rt, data.path(), &mark).await;
        let r = i.invoke(event("hang", Duration::from_millis(500))).await.unwrap();
        let done = r.stream.unwrap().take_completion().unwrap().await.unwrap();
        match done.outcome {
            Err(InstanceError::Timeout { log, .. }) => assert_eq!(log, "handling hang\n"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(i.state(), InstanceState::Dead, "a timed-out instance is killed");
        Arc::new(i).shutdown().await;
    }

    #[test]
    fn exits_are_described_by_code_or_signal() {
        let status = |raw| std::process::ExitStatus::from_raw(raw);
        assert_eq!(describe_exit(status(0)), "exit status 0");
        assert_eq!(describe_exit(status(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(status(libc::SIGKILL)), "signal 9 (SIGKILL)");
        assert_eq!(describe_exit(status(libc::SIGSEGV)), "signal 11 (SIGSEGV)");
    }
}
