//! Sandboxes prepared ahead of demand, so a sandboxed cold start costs about what an
//! unsandboxed one does.
//!
//! Making a sandbox — bwrap creating the namespaces and the mounts, the init starting, the
//! instance's endpoint, temp dir and cgroup — takes about 6 ms of every sandboxed cold start on
//! a 2-core VM (BENCHMARKS.md § Sandbox cost), more than the runtime's own start for a small
//! Python function. None of it depends on the request, so it is done before one arrives: each
//! live function version (pool key) has one spare [`Shell`], made in the background when the
//! version goes live and again after each start that used (or missed) it. A start claims the
//! spare — it sends the runtime's environment to the waiting init, which starts the runtime — and
//! falls back to making the sandbox on the spot when there is none (still being prepared, or
//! the cap below was reached).
//!
//! Bounds: one spare per live version and at most [`MAX_SPARES`] in all (each is two bwrap
//! processes and the init: about 0.9 MB proportional set size, 6 MB resident counting shared
//! pages, measured on Debian 12; plus an empty temp dir and cgroup; a Python or Node spare also
//! holds its zygote, 5–7 MB of private memory); they are made one at a time by a
//! single background task, so a deploy of many functions never starts a burst of sandboxes; a
//! retired version's spare is stopped, and `shutdown` stops all of them before nimbus exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use nimbus_core::FunctionVersion;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::instance::Shell;
use crate::ProcessRuntime;

/// Most spares kept at once.
pub const MAX_SPARES: usize = 128;

/// The spares of one process runtime.
#[derive(Default)]
pub(crate) struct Spares {
    ready: Mutex<HashMap<String, Shell>>,
    /// The pool keys of the live versions: only they get spares (a version retired while its
    /// spare was queued gets none).
    live: Mutex<std::collections::HashSet<String>>,
    /// The background task's queue of versions to prepare for (started on first use).
    queue: OnceLock<mpsc::UnboundedSender<Arc<FunctionVersion>>>,
    /// Spares being stopped (retired versions), awaited at shutdown.
    stopping: Mutex<Vec<JoinHandle<()>>>,
    /// Held by the background task while it prepares one, so shutdown waits for it.
    preparing: tokio::sync::Mutex<()>,
    closed: std::sync::atomic::AtomicBool,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shell>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spare made for `function`'s pool key, if one is ready and still waiting.
    pub(crate) fn take(&self, function: &FunctionVersion) -> Option<Shell> {
        let shell = self.lock().remove(function.pool_key())?;
        if shell.alive() {
            return Some(shell);
        }
        self.stop(shell);
        None
    }

    /// Whether a spare for `function` is ready to be claimed.
    pub(crate) fn ready(&self, function: &FunctionVersion) -> bool {
        self.lock().contains_key(function.pool_key())
    }

    /// Ask the background task for a spare for `function` (if it has none).
    pub(crate) fn replenish(&self, rt: &ProcessRuntime, function: &Arc<FunctionVersion>) {
        if rt.sandbox.is_none() || self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(prepare_loop(rt.clone(), rx));
            tx
        });
        let _ = queue.send(function.clone());
    }

    /// `function` is live: it gets a spare now and after each start.
    pub(crate) fn live(&self, rt: &ProcessRuntime, function: &Arc<FunctionVersion>) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(function.pool_key().to_owned());
        self.replenish(rt, function);
    }

    /// Stop the spare of a version that is no longer live.
    pub(crate) fn retire(&self, function: &FunctionVersion) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(function.pool_key());
        let shell = self.lock().remove(function.pool_key());
        if let Some(shell) = shell {
            self.stop(shell);
        }
    }

    fn stop(&self, shell: Shell) {
        if tokio::runtime::Handle::try_current().is_err() {
            return; // dropped: its process group is killed and its temp dir removed
        }
        let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        stopping.retain(|h| !h.is_finished());
        stopping.push(tokio::spawn(shell.discard()));
    }

    /// Make no more spares and stop every one there is.
    pub(crate) async fn shutdown(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        // A spare being prepared now is kept or stopped before this lock is free.
        let _idle = self.preparing.lock().await;
        let shells: Vec<Shell> = self.lock().drain().map(|(_, s)| s).collect();
        for shell in shells {
            shell.discard().await;
        }
        let stopping = std::mem::take(&mut *self.stopping.lock().unwrap_or_else(|e| e.into_inner()));
        for h in stopping {
            let _ = h.await;
        }
    }

    /// Whether `function` needs a spare: live, none yet, room left, still open.
    fn wants(&self, function: &FunctionVersion) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).contains(function.pool_key());
        let ready = self.lock();
        live && !self.closed.load(std::sync::atomic::Ordering::Relaxed)
            && !ready.contains_key(function.pool_key())
            && ready.len() < MAX_SPARES
    }

    /// Keep a prepared spare, unless the runtime closed meanwhile or one is there already.
    fn keep(&self, shell: Shell) {
        let key = shell.function().pool_key().to_owned();
        let extra = {
            let mut ready = self.lock();
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).contains(&key);
            if !live || self.closed.load(std::sync::atomic::Ordering::Relaxed) || ready.contains_key(&key) {
                Some(shell)
            } else {
                ready.insert(key, shell);
                None
            }
        };
        if let Some(shell) = extra {
            self.stop(shell);
        }
    }
}

/// Prepare spares one at a time, as asked.
async fn prepare_loop(rt: ProcessRuntime, mut queue: mpsc::UnboundedReceiver<Arc<FunctionVersion>>) {
    while let Some(function) = queue.recv().await {
        let _busy = rt.spares.preparing.lock().await;
        if !rt.spares.wants(&function) {
            continue;
        }
        match Shell::prepare(&rt, function.clone()).await {
            Ok(shell) => rt.spares.keep(shell),
            Err(e) => {
                tracing::debug!(function = %function.spec.name, "cannot prepare a sandbox ahead: {e}");
            }
        }
    }
}
