//! The part of an invocation after its response went out: the rest of a streamed body and
//! background work (`waitUntil`), until the runtime says it is over, the process exits, or the
//! invocation's timeout ends it.
//!
//! `ProcessInstance::invoke` returns once the response head is known (the early-response
//! contract of `nimbus_core::stream`); a [`Follow`] task then watches the invocation and sends
//! its one `Completion`. The scheduler keeps the instance leased until then, so nothing else
//! touches the Runtime API meanwhile. The invocation's output, before and after the response,
//! is drained at the end: the background work's log lines belong to the invocation.
//!
//! Not checked after the response: `cpu_ms` (the timeout still bounds the work).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_core::{Completion, FunctionErrorKind, InstanceError, InvokeOutcome, StreamError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::exchange::{Abort, Shared, Tail};
use crate::logs::LogTap;

/// What the task needs of its instance (shared handles; the instance stays leased meanwhile).
pub(crate) struct Follow {
    pub tail: oneshot::Receiver<Tail>,
    pub exit_rx: watch::Receiver<Option<String>>,
    pub shared: Arc<Shared>,
    pub logs: Arc<LogTap>,
    /// With `concurrency > 1`: who splits the instance's output, and this invocation's id.
    pub attribution: Option<Attribution>,
    /// The process group to kill when the invocation has to be stopped.
    pub pid: u32,
    /// Set when the task stopped the instance.
    pub dead: Arc<AtomicBool>,
    pub proc_status: Option<std::fs::File>,
    pub max_memory_mb: u32,
    /// When the handler's time started, and how long it may run in all.
    pub started: Instant,
    pub timeout: Duration,
    pub done: oneshot::Sender<Completion>,
    /// The invocation's request id (its stream is told apart by it when the instance aborts).
    pub request_id: String,
}

/// How the watched part ended.
enum End {
    Tail(Tail),
    Abandoned,
    Exited(String),
    TimedOut,
}

impl Follow {
    /// Watch the invocation to its end and send its completion.
    pub(crate) async fn run(mut self) {
        let mut exit_rx = self.exit_rx.clone();
        let remaining = self.timeout.saturating_sub(self.started.elapsed());
        let end = tokio::select! {
            biased;
            t = &mut self.tail => t.map_or(End::Abandoned, End::Tail),
            e = exit_rx.wait_for(Option::is_some) => End::Exited(e.map(|s| s.clone().unwrap_or_default()).unwrap_or_default()),
            _ = tokio::time::sleep(remaining) => End::TimedOut,
        };
        let mut response = None;
        let outcome = match end {
            End::Tail(Tail::Done { response_end }) => {
                response = Some(response_end);
                Ok(InvokeOutcome::Success(Bytes::new()))
            }
            End::Tail(Tail::Failed { error, response_end }) => {
                response = Some(response_end);
                Ok(function_error(&error))
            }
            End::Tail(Tail::TooLarge { limit }) => {
                // As for a refused buffered response: the runtime's state is unknown; retire it.
                self.stop();
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                Err(InstanceError::ResponseTooLarge { size: limit.saturating_add(1), limit, log: String::new() })
            }
            End::Abandoned => {
                self.stop();
                Err(InstanceError::Crashed { detail: "the response stream was abandoned".into(), log: String::new() })
            }
            End::Exited(status) => {
                self.stop();
                // Stopped for another invocation's timeout (concurrency > 1): say so.
                match self.shared.abort.borrow().as_ref().map(|a| a.error_for(&self.request_id)) {
                    Some(error) => Ok(function_error(&error)),
                    None => Err(InstanceError::Crashed {
                        detail: format!("Runtime exited with error: {status}"),
                        log: String::new(),
                    }),
                }
            }
            End::TimedOut => {
                let error = StreamError::timed_out(self.timeout);
                self.shared.abort.send_replace(Some(Abort { request_id: self.request_id.clone(), error }));
                self.stop();
                let mut rx = self.exit_rx.clone();
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(Option::is_some)).await;
                Err(InstanceError::Timeout { timeout: self.timeout, log: String::new() })
            }
        };
        self.finish(outcome, response);
    }

    fn finish(self, outcome: Result<InvokeOutcome, InstanceError>, response: Option<Instant>) {
        let attribution = self.attribution.as_ref().map(|(split, id)| (&**split, id.as_str()));
        let log = drain(&self.logs, &self.shared, attribution);
        let outcome = outcome.map_err(|e| with_log(e, log.clone()));
        let duration = self.started.elapsed();
        let max_memory_mb =
            self.proc_status.as_ref().and_then(crate::limits::peak_rss_mb).unwrap_or(self.max_memory_mb);
        let _ = self.done.send(Completion {
            outcome,
            response: response.map_or(duration, |r| r.saturating_duration_since(self.started)),
            duration,
            max_memory_mb,
            log,
        });
    }

    fn stop(&self) {
        self.dead.store(true, Ordering::Release);
        self.shared.finishing.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// An instance's attribution of output to its invocations in flight, and the invocation's id.
type Attribution = (Arc<std::sync::Mutex<crate::attribution::Attribution>>, String);

/// [`Attribution`] borrowed, as [`drain`] takes it.
pub(crate) type AttributionRef<'a> = (&'a std::sync::Mutex<crate::attribution::Attribution>, &'a str);

/// The invocation's output since the last drain, then nimbus's notes (as `ProcessInstance`'s):
/// with several invocations in flight, the lines the attribution gives it.
///
/// The attribution stays locked from reading the pipes until the lines are handed out.
/// Otherwise two invocations ending at once could lose lines: one takes the other's lines off
/// the pipes, the other ends before they are attributed (taking nothing), and then they find
/// no invocation in flight to belong to.
pub(crate) fn drain(logs: &LogTap, shared: &Shared, attribution: Option<AttributionRef<'_>>) -> String {
    let split = attribution.map(|(split, id)| (split.lock().unwrap_or_else(|e| e.into_inner()), id));
    let mut log = if split.is_some() { logs.drain_lines() } else { logs.drain() };
    for note in shared.services.as_ref().map(|s| s.take_notes()).unwrap_or_default() {
        log.push_str(&note);
        log.push('\n');
    }
    match split {
        Some((mut split, id)) => split.end(id, &log),
        None => log,
    }
}

fn with_log(e: InstanceError, log: String) -> InstanceError {
    match e {
        InstanceError::Timeout { timeout, .. } => InstanceError::Timeout { timeout, log },
        InstanceError::Crashed { detail, .. } => InstanceError::Crashed { detail, log },
        InstanceError::ResponseTooLarge { size, limit, .. } => InstanceError::ResponseTooLarge { size, limit, log },
        other => other,
    }
}

/// An error the runtime reported mid-stream, as Lambda records it.
fn function_error(e: &StreamError) -> InvokeOutcome {
    let body = Bytes::from(serde_json::json!({"errorType": e.error_code, "errorMessage": e.details}).to_string());
    InvokeOutcome::FunctionError {
        kind: FunctionErrorKind::Unhandled,
        error_type: e.error_code.clone(),
        error_message: e.details.clone(),
        body,
    }
}
