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
//! - nimbus itself dies: PR_SET_PDEATHSIG kills the runtime (the spawning thread is a tokio
//!   worker, which lives as long as the process).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nimbus_core::{
    ColdStart, FunctionErrorKind, FunctionVersion, Instance, InstanceError, InstanceState, Invocation, InvokeOutcome,
    InvokeResult, RuntimeKind, StartError, REGION,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::api::{self, Completion, NextEvent, Pending, Shared};
use crate::logs::LogTap;
use crate::ProcessRuntime;

pub struct ProcessInstance {
    id: String,
    function: Arc<FunctionVersion>,
    pid: u32,
    cold_start: ColdStart,
    init_log: String,
    next_tx: mpsc::Sender<NextEvent>,
    shared: Arc<Shared>,
    exit_rx: watch::Receiver<Option<String>>,
    logs: LogTap,
    server: JoinHandle<()>,
    scratch: PathBuf,
    stop_grace: Duration,
    max_response: usize,
    last_max_memory_mb: u32,
    /// `/proc/PID/status`, for the peak resident set (Max Memory Used).
    proc_status: Option<std::fs::File>,
    dead: bool,
    stopped: bool,
}

fn platform(context: &str) -> impl Fn(std::io::Error) -> StartError + '_ {
    move |e| StartError::Platform(format!("{context}: {e}"))
}

impl ProcessInstance {
    pub(crate) async fn start(
        rt: &ProcessRuntime,
        function: Arc<FunctionVersion>,
        id: String,
    ) -> Result<Self, StartError> {
        let began = Instant::now();
        let (program, args) = rt.command_for(&function)?;
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(platform("cannot bind the Runtime API listener"))?;
        let api_addr = listener.local_addr().map_err(platform("cannot read the Runtime API address"))?;
        let (next_tx, next_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            next_rx: Mutex::new(next_rx),
            pending: StdMutex::new(None),
            ready: watch::channel(false).0,
            init_error: watch::channel(None).0,
            picked_up: std::sync::atomic::AtomicBool::new(false),
            max_response: rt.limits.max_response_bytes,
        });
        let mut ready_rx = shared.ready.subscribe();
        let mut init_rx = shared.init_error.subscribe();
        let server = tokio::spawn(api::serve(listener, shared.clone()));

        let scratch = rt.scratch_dir.join(&id);
        std::fs::create_dir_all(&scratch).map_err(platform("cannot create the instance temp dir"))?;
        let (out_r, out_w) = std::io::pipe().map_err(platform("cannot create a pipe"))?;
        let (err_r, err_w) = std::io::pipe().map_err(platform("cannot create a pipe"))?;

        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(environment(rt, &function, &id, &api_addr.to_string(), &scratch))
            .current_dir(&function.code_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .process_group(0)
            .kill_on_drop(true);
        set_parent_death_signal(&mut cmd);
        let spawned = cmd.spawn();
        // The Command holds the pipes' write ends; drop it so end-of-file reaches the reader.
        drop(cmd);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                server.abort();
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(if function.spec.runtime == RuntimeKind::Provided {
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
                });
            }
        };
        let spawned_after = began.elapsed();
        let pid = child.id().unwrap_or(0);
        let receiver = |fd: std::io::PipeReader| pipe::Receiver::from_owned_fd(OwnedFd::from(fd));
        let logs = match (receiver(out_r), receiver(err_r)) {
            (Ok(o), Ok(e)) => LogTap::spawn(o, e, rt.limits.max_log_bytes),
            (Err(e), _) | (_, Err(e)) => {
                let _ = child.start_kill();
                server.abort();
                return Err(StartError::Platform(format!("cannot read the runtime's output: {e}")));
            }
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let text = match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = exit_tx.send(Some(text));
        });

        let mut instance = ProcessInstance {
            id,
            function,
            pid,
            cold_start: ColdStart { init: Duration::ZERO, instance_start: spawned_after },
            init_log: String::new(),
            next_tx,
            shared,
            exit_rx,
            logs,
            server,
            scratch,
            stop_grace: rt.limits.stop_grace,
            max_response: rt.limits.max_response_bytes,
            last_max_memory_mb: 0,
            proc_status: std::fs::File::open(format!("/proc/{pid}/status")).ok(),
            dead: false,
            stopped: false,
        };

        let mut exit_rx = instance.exit_rx.clone();
        enum Init {
            Ready,
            Reported,
            Exited(String),
            TimedOut,
        }
        let init = tokio::select! {
            biased;
            _ = init_rx.wait_for(Option::is_some) => Init::Reported,
            r = ready_rx.wait_for(|r| *r) => if r.is_ok() { Init::Ready } else { Init::Exited("the Runtime API stopped".into()) },
            e = exit_rx.wait_for(Option::is_some) => Init::Exited(e.map(|s| s.clone().unwrap_or_default()).unwrap_or_default()),
            _ = tokio::time::sleep(rt.limits.init_timeout) => Init::TimedOut,
        };
        instance.cold_start.init = began.elapsed();
        let failure = match init {
            Init::Ready => None,
            Init::Reported => Some(reported_init_error(&instance.shared)),
            Init::Exited(status) => {
                // A runtime that posts /init/error then exits: prefer its own report.
                if instance.shared.init_error.borrow().is_some() {
                    Some(reported_init_error(&instance.shared))
                } else {
                    Some(("Runtime.ExitError".to_owned(), format!("the runtime exited during init ({status})")))
                }
            }
            Init::TimedOut => Some((
                "Runtime.InitTimeout".to_owned(),
                format!("the runtime did not ask for its first event within {:?} of starting", rt.limits.init_timeout),
            )),
        };
        if let Some((error_type, message)) = failure {
            instance.kill();
            instance.wait_exit(Duration::from_secs(1)).await;
            let log = instance.logs.drain();
            instance.dead = true;
            Box::new(instance).shutdown().await;
            return Err(StartError::InitFailed { error_type, message, log });
        }
        instance.init_log = instance.logs.drain();
        Ok(instance)
    }

    fn kill(&self) {
        if self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
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

    fn clear_pending(&self) {
        *self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn read_max_memory(&mut self) -> u32 {
        if let Some(mb) = self.proc_status.as_ref().and_then(peak_rss_mb) {
            self.last_max_memory_mb = mb;
        }
        self.last_max_memory_mb
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

    fn take_init_log(&mut self) -> String {
        std::mem::take(&mut self.init_log)
    }

    fn state(&self) -> InstanceState {
        if self.dead || self.exited() {
            InstanceState::Dead
        } else {
            InstanceState::Ready
        }
    }

    async fn invoke(&mut self, inv: Invocation) -> Result<InvokeResult, InstanceError> {
        if self.state() == InstanceState::Dead {
            return Err(InstanceError::Platform("the instance is no longer running".into()));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        *self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Pending { request_id: inv.request_id.clone(), reply: reply_tx });
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let event = NextEvent {
            request_id: inv.request_id.clone(),
            payload: inv.payload.clone(),
            deadline_ms: now_ms + inv.timeout.as_millis(),
            arn: self.function.arn(),
            trace_id: inv.trace_id.clone(),
            client_context: inv.client_context.clone(),
        };
        let started = Instant::now();
        self.shared.picked_up.store(false, std::sync::atomic::Ordering::Release);
        if self.next_tx.send(event).await.is_err() {
            self.dead = true;
            self.clear_pending();
            return Err(InstanceError::Platform("the instance's Runtime API is gone".into()));
        }

        enum Ended {
            Done(Completion),
            Crashed(String),
            TimedOut,
        }
        let mut exit_rx = self.exit_rx.clone();
        let ended = tokio::select! {
            biased;
            c = reply_rx => match c {
                Ok(c) => Ended::Done(c),
                Err(_) => Ended::Crashed("the invocation was abandoned".into()),
            },
            e = exit_rx.wait_for(Option::is_some) => Ended::Crashed(e.map(|s| s.clone().unwrap_or_default()).unwrap_or_default()),
            _ = tokio::time::sleep(inv.timeout) => Ended::TimedOut,
        };
        let duration = started.elapsed();
        let max_memory_mb = self.read_max_memory();
        match ended {
            Ended::Done(completion) => {
                let log = self.logs.drain();
                let outcome = match completion {
                    Completion::Response(body) => InvokeOutcome::Success(body),
                    Completion::Error { error_type, body } => function_error(error_type, body),
                    Completion::TooLarge { size } => {
                        // The runtime's state after a refused response is unknown (awslambdaric
                        // exits): retire the instance rather than hand it to the next caller.
                        self.dead = true;
                        self.kill();
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
                })
            }
            Ended::Crashed(status) => {
                self.dead = true;
                self.clear_pending();
                self.kill();
                if !self.shared.picked_up.load(std::sync::atomic::Ordering::Acquire) {
                    return Err(InstanceError::Lost { detail: format!("the runtime exited while idle ({status})") });
                }
                let log = self.logs.drain();
                Err(InstanceError::Crashed { detail: format!("Runtime exited with error: {status}"), log })
            }
            Ended::TimedOut => {
                self.dead = true;
                self.clear_pending();
                self.kill();
                self.wait_exit(Duration::from_secs(1)).await;
                let log = self.logs.drain();
                Err(InstanceError::Timeout { timeout: inv.timeout, log })
            }
        }
    }

    async fn shutdown(mut self: Box<Self>) {
        if !self.exited() && self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            self.wait_exit(self.stop_grace).await;
        }
        // Anything left in the group (children the runtime spawned) goes too.
        self.kill();
        self.wait_exit(Duration::from_secs(2)).await;
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.scratch);
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

fn environment(
    rt: &ProcessRuntime,
    f: &FunctionVersion,
    id: &str,
    api: &str,
    scratch: &std::path::Path,
) -> Vec<(String, String)> {
    let spec = &f.spec;
    let date = chrono::Utc::now().format("%Y/%m/%d");
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), rt.instance_path()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), "UTC".into()),
        ("HOME".into(), scratch.display().to_string()),
        ("TMPDIR".into(), scratch.display().to_string()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ];
    // The user's env comes before the platform's, so it can change PATH or LANG but never the
    // Runtime API contract (the manifest validator also rejects those names).
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend([
        ("AWS_LAMBDA_RUNTIME_API".into(), api.to_owned()),
        ("_HANDLER".into(), spec.handler.clone()),
        ("LAMBDA_TASK_ROOT".into(), f.code_path.display().to_string()),
        ("LAMBDA_RUNTIME_DIR".into(), rt.runtime_dir.join(spec.runtime.as_str()).display().to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), f.version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), spec.memory_mb.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME".into(), format!("/aws/lambda/{}", spec.name)),
        ("AWS_LAMBDA_LOG_STREAM_NAME".into(), format!("{date}/[{}]{id}", f.version)),
        ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ("AWS_EXECUTION_ENV".into(), format!("nimbus_{}", spec.runtime.as_str())),
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_DEFAULT_REGION".into(), REGION.into()),
    ]);
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

/// Peak resident set of a process in MB (`VmHWM`), the figure Lambda reports as Max Memory Used.
/// `status` is `/proc/PID/status`, kept open: procfs regenerates the file on every read at
/// offset 0, and reusing the descriptor saves open, statx and close on every invocation.
fn peak_rss_mb(status: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let n = status.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    u32::try_from(kb.div_ceil(1024)).ok()
}

/// Ask the kernel to SIGKILL the runtime when nimbus dies, so `kill -9 nimbus` leaves no orphans.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}
