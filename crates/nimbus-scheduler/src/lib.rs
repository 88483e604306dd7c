//! The scheduler: one pool of instances per function version, and the `Dispatch` the gateway
//! calls.
//!
//! # Pools
//! A pool owns the instances of one function version (keyed by code digest + configuration,
//! so a redeploy that leaves a function unchanged keeps its warm instances). Its state is a
//! handful of counters and two queues under one mutex, never held across an await:
//! - `idle`: ready instances, used last-in-first-out so the warmest one serves next and the
//!   coldest ages out;
//! - `waiters`: requests waiting for an instance, first-in-first-out, each with a oneshot;
//! - `busy` / `starting` counts.
//!
//! Admission ([`nimbus_core::policy::admit`]) decides per request: use an idle instance, start
//! one more (only while fewer are starting than are waiting: *coalescing*, so a burst of 200
//! requests to a cold function with `max_instances = 4` starts 4), wait, or throttle (queue
//! full). A started or released instance is offered to the first live waiter, else goes idle.
//! Waiting is bounded by `queue_timeout`, then the request gets `Throttled` (429).
//!
//! An instance is handed out in a `Lease`; dropping the lease returns the instance, so no
//! path (error, panic, cancelled request) can leak one. Invocations run in their own task (a wasm
//! one once its first poll, on the caller's task, did not finish it), so a client that
//! disconnects does not abandon an instance half-way through an invocation.
//!
//! Housekeeping runs per pool on a timer and applies [`nimbus_core::policy::keep_alive`]:
//! reclaim instances idle past `keep_alive`, keep `min_instances` started. With
//! `keep_alive = "adaptive"` it applies the windows `adaptive.rs` learns per function instead
//! (unload, pre-warm, keep-alive from the idle-gap histogram).
//!
//! # Concurrency
//! A function with `concurrency = N > 1` runs up to N invocations on one instance at once (as
//! Lambda Managed Instances and Vercel's Fluid compute do). The pool counts the invocations in
//! flight per instance, and admission ([`nimbus_core::policy::admit_slots`]) puts a request on
//! the busiest running instance with a free slot before it starts another; a started instance
//! takes up to N waiters at once; `max_instances` still caps instances. An instance counts as
//! idle (and ages towards keep-alive) only with no invocation in flight. Each busy period of
//! such an instance (first invocation in until the last one out) goes to the recorder
//! (`Recorder::instance_busy`): it is how the function is billed. With `concurrency = 1`
//! everything is as it was: one invocation per instance.
//!
//! # Clusters
//! In a cluster each node caps a function at its share of `max_instances` (and keeps its
//! portion of `min_instances` warm), from the live nodes the membership reports
//! ([`Scheduler::live_nodes`], `nimbus_core::nodes::node_share`); the share is read at every
//! decision, so it follows nodes joining and leaving. Deliberately not done here: cross-node
//! placement (a node serves what reaches it, or throttles).

mod adaptive;
#[cfg(test)]
mod fake;
mod pool;
mod report;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use nimbus_core::{
    ColdStart, Dispatch, DispatchError, FunctionPrepareError, FunctionVersion, Invocation, InvocationRecord,
    InvocationStatus, InvokeOutcome, InvokeResult, Pools, PrepareError, Recorder, Runtime, RuntimeKind,
};

pub use adaptive::AdaptiveStatus;
pub use pool::{InstanceInfo, InstanceStatus, Pool, PoolStatus};

/// Pools by function-version key.
type PoolMap = foldhash::HashMap<String, Arc<Pool>>;

/// Runtimes registered by kind; pools by function-version key. Cheap to clone (shared).
#[derive(Clone)]
pub struct Scheduler(Arc<Inner>);

pub struct Inner {
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    /// Read on every invocation, changed by deploys: readers load it without a lock or a shared
    /// write (a mutex here was a cache line both tokio workers wrote on every request); changes
    /// copy the map under `pools_change`.
    pools: arc_swap::ArcSwap<PoolMap>,
    /// Held by whatever changes `pools`, so no change is lost and none follows `shutdown`.
    pools_change: Mutex<()>,
    /// Pools a redeploy retired. Whatever still runs in one (an invocation, an instance starting
    /// or stopping) holds it, so the live ones are those server shutdown must still wait for.
    retired: Mutex<Vec<Weak<Pool>>>,
    /// Set by `shutdown`: no pool is created after it, so nothing starts that nobody will stop.
    stopped: AtomicBool,
    /// The histories of the functions with an adaptive keep-alive, by function name: a
    /// redeploy's new pool keeps learning where the old one left off.
    activity: Mutex<foldhash::HashMap<String, Arc<adaptive::Activity>>>,
    recorder: Arc<dyn Recorder>,
    /// The live nodes, from which each pool takes this node's share of `max_instances`.
    live: nimbus_core::nodes::LiveNodes,
}

impl std::ops::Deref for Scheduler {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Scheduler {
    pub fn new(runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>, recorder: Arc<dyn Recorder>) -> Self {
        Scheduler(Arc::new(Inner {
            runtimes,
            pools: arc_swap::ArcSwap::default(),
            pools_change: Mutex::new(()),
            retired: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            activity: Mutex::default(),
            recorder,
            live: nimbus_core::nodes::LiveNodes::default(),
        }))
    }

    /// The live nodes every pool caps its function by: a cluster's membership keeps them
    /// current (one node alone until then: each function gets all of its `max_instances`).
    pub fn live_nodes(&self) -> nimbus_core::nodes::LiveNodes {
        self.live.clone()
    }
}

/// What the record of one invocation needs besides its outcome.
#[derive(Clone)]
struct Attempt {
    function: Arc<FunctionVersion>,
    /// Shared: the attempt is cloned once per invocation (for its failure paths).
    request_id: Arc<str>,
    trigger: nimbus_core::Trigger,
    start_ms: u64,
    queued: Instant,
}

impl Attempt {
    fn new(function: Arc<FunctionVersion>, inv: &Invocation) -> Attempt {
        Attempt {
            function,
            request_id: Arc::from(inv.request_id.as_str()),
            trigger: inv.trigger,
            start_ms: nimbus_core::ids::now_ms(),
            queued: Instant::now(),
        }
    }
}

impl Inner {
    /// Record that `a` failed with `err` (its one record) and hand the error back.
    fn failed(&self, a: &Attempt, queue: Duration, err: DispatchError, cold: Option<ColdStart>) -> DispatchError {
        let rec = report::record_for_error(&a.function, &a.request_id, a.trigger, a.start_ms, queue, &err, cold);
        self.recorder.record(rec);
        err
    }

    /// Take an instance from `pool`, or record why none could be had and say so.
    async fn lease(&self, pool: &Arc<Pool>, a: &Attempt) -> Result<pool::Lease, DispatchError> {
        let e = match pool.acquire().await {
            Ok(lease) => return Ok(lease),
            Err(e) => e,
        };
        let log = report::failed_start_log(&a.function, &a.request_id, &e);
        let err = match e {
            pool::AcquireError::Dispatch(d) => d,
            pool::AcquireError::Init { error_type, message, log: init_log } => DispatchError::InitFailed {
                name: a.function.spec.name.clone(),
                error_type,
                message,
                log: format!("{init_log}{log}"),
            },
        };
        Err(self.failed(a, a.queued.elapsed(), err, None))
    }

    /// Change the pools map with `f` (on a copy, stored when `f` returns): one change at a time.
    fn change_pools<R>(&self, f: impl FnOnce(&mut PoolMap) -> R) -> R {
        let _one = self.pools_change.lock().unwrap_or_else(|e| e.into_inner());
        let mut pools = PoolMap::clone(&self.pools.load());
        let r = f(&mut pools);
        self.pools.store(Arc::new(pools));
        r
    }

    /// The pool for `function`, created (and its `min_instances` started) on first use.
    pub fn pool(&self, function: &Arc<FunctionVersion>) -> Result<Arc<Pool>, DispatchError> {
        if let Some(p) = self.pools.load().get(function.pool_key()) {
            return Ok(p.clone());
        }
        // Refused before the map is copied: a function nothing can run may be tried again and again.
        self.runtime_of(function)?;
        self.change_pools(|pools| self.pool_in(pools, function))
    }

    fn runtime_of(&self, function: &FunctionVersion) -> Result<Arc<dyn Runtime>, DispatchError> {
        self.runtimes.get(&function.spec.runtime).cloned().ok_or_else(|| {
            DispatchError::Platform(format!("no runtime registered for {}", function.spec.runtime.as_str()))
        })
    }

    /// The pool of `function` in `pools`, created if it is not there yet.
    fn pool_in(&self, pools: &mut PoolMap, function: &Arc<FunctionVersion>) -> Result<Arc<Pool>, DispatchError> {
        if let Some(p) = pools.get(function.pool_key()) {
            return Ok(p.clone());
        }
        let runtime = self.runtime_of(function)?;
        // Checked under the lock `shutdown` drains the pools with: no pool is created after it.
        if self.stopped.load(Ordering::Relaxed) {
            return Err(DispatchError::ShuttingDown { name: function.spec.name.clone() });
        }
        let adaptive = self.activity_of(function);
        let pool = Pool::new(function.clone(), runtime, adaptive, self.recorder.clone(), self.live.clone());
        pools.insert(function.pool_key().to_owned(), pool.clone());
        Ok(pool)
    }

    /// The shared history of `function` when its keep-alive is adaptive.
    fn activity_of(&self, function: &FunctionVersion) -> Option<Arc<adaptive::Activity>> {
        if function.spec.keep_alive_policy != nimbus_core::KeepAlivePolicy::Adaptive {
            return None;
        }
        let mut all = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        Some(all.entry(function.spec.name.clone()).or_insert_with(adaptive::Activity::new).clone())
    }

    /// Get every function of a deployment ready to start before it goes live (wasm components
    /// are compiled here); the first failure is returned and the deployment must be refused.
    pub async fn prepare(&self, functions: &[Arc<FunctionVersion>]) -> Result<(), FunctionPrepareError> {
        for f in functions {
            let failed = |source| FunctionPrepareError { function: f.spec.name.clone(), source };
            let runtime =
                self.runtimes.get(&f.spec.runtime).ok_or_else(|| failed(PrepareError::NoRuntime(f.spec.runtime)))?;
            runtime.prepare(f).await.map_err(failed)?;
        }
        Ok(())
    }

    /// Make sure pools exist for a newly deployed set of functions (starting `min_instances`),
    /// and retire pools that are no longer deployed: their idle instances stop now, busy ones
    /// when their invocation ends (in-flight requests finish on the version they started on).
    pub fn deploy(&self, functions: &[Arc<FunctionVersion>]) {
        let keep: HashSet<&str> = functions.iter().map(|f| f.pool_key()).collect();
        // One change for the whole deployment: the map is copied once, not once per function.
        let (live, retired) = self.change_pools(|pools| {
            let live: Vec<Arc<Pool>> = functions
                .iter()
                .filter_map(|f| {
                    self.pool_in(pools, f)
                        .map_err(|e| tracing::error!(function = %f.spec.name, "cannot create pool: {e}"))
                        .ok()
                })
                .collect();
            let gone: Vec<String> = pools.keys().filter(|k| !keep.contains(k.as_str())).cloned().collect();
            let retired: Vec<Arc<Pool>> = gone.into_iter().filter_map(|k| pools.remove(&k)).collect();
            (live, retired)
        });
        for pool in live {
            pool.live();
        }
        let mut old = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        old.retain(|w| w.strong_count() > 0);
        for p in retired {
            p.retire();
            old.push(Arc::downgrade(&p));
        }
        self.forget_activity(functions);
    }

    /// Drop the adaptive history of every function no longer live with an adaptive keep-alive
    /// (a retired pool still draining keeps its own handle on it until it is gone).
    fn forget_activity(&self, live: &[Arc<FunctionVersion>]) {
        let adaptive: HashSet<&str> = live
            .iter()
            .filter(|f| f.spec.keep_alive_policy == nimbus_core::KeepAlivePolicy::Adaptive)
            .map(|f| f.spec.name.as_str())
            .collect();
        self.activity.lock().unwrap_or_else(|e| e.into_inner()).retain(|name, _| adaptive.contains(name.as_str()));
    }

    /// Status of every pool, for the management API.
    pub fn status(&self) -> Vec<PoolStatus> {
        let mut list: Vec<PoolStatus> = self.pools.load().values().map(|p| p.status()).collect();
        list.sort_by(|a, b| (&a.function, &a.version).cmp(&(&b.function, &b.version)));
        list
    }

    /// Stop everything: retire all pools and wait (bounded) for their instances to stop, those
    /// of pools retired by earlier deploys included. Invocations after it get `ShuttingDown`.
    pub async fn shutdown(&self, within: Duration) {
        let mut pools: Vec<Arc<Pool>> = self.change_pools(|map| {
            self.stopped.store(true, Ordering::Relaxed);
            map.drain().map(|(_, p)| p).collect()
        });
        for p in &pools {
            p.retire();
        }
        let old = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        pools.extend(old.iter().filter_map(Weak::upgrade));
        let deadline = Instant::now() + within;
        for p in &pools {
            p.wait_empty(deadline).await;
        }
        for runtime in self.runtimes.values() {
            runtime.shutdown().await;
        }
    }

    async fn run(self: Arc<Inner>, a: Attempt, inv: Invocation) -> Result<InvokeResult, DispatchError> {
        let pool = self.pool(&a.function).map_err(|e| self.failed(&a, a.queued.elapsed(), e, None))?;
        let _call = pool.begin_call();
        let mut lease = self.lease(&pool, &a).await?;
        let mut queue_wait = a.queued.elapsed();
        let (mut cold, mut init_log) = lease.begin();
        // Kept for one retry after `Lost` (the function never ran). Only the process runtimes
        // lose an invocation so, and theirs carry no HTTP head; an HTTP invocation (wasm) goes to
        // the instance whole, so that it can move the head into the guest's request.
        let retry = inv.http.is_none().then(|| inv.clone());
        let mut result = lease.instance().invoke(inv).await;
        if let Ok(r) = &mut result {
            if r.stream.is_some() {
                return Ok(self.streamed(stream::Held { a, lease, queue_wait, cold, init_log }, r));
            }
        }
        drop(lease);
        if let (Err(nimbus_core::InstanceError::Lost { detail }), Some(inv)) = (&result, retry) {
            // The function never ran: one more try on another instance is safe.
            tracing::debug!(function = %a.function.spec.name, "retrying an invocation whose instance was lost: {detail}");
            let mut again = self.lease(&pool, &a).await?;
            queue_wait = a.queued.elapsed();
            (cold, init_log) = again.begin();
            result = again.instance().invoke(inv).await;
            if let Ok(r) = &mut result {
                if r.stream.is_some() {
                    return Ok(self.streamed(stream::Held { a, lease: again, queue_wait, cold, init_log }, r));
                }
            }
        }
        let f = &a.function;
        match result {
            Ok(mut r) => {
                r.cold = cold;
                let mut rec = report::record_for_result(f, &a.request_id, a.trigger, a.start_ms, queue_wait, &r);
                if matches!(r.outcome, nimbus_core::InvokeOutcome::Success(_)) {
                    // The record keeps the parts; its START / END / REPORT are rendered when read.
                    let body = std::mem::take(&mut r.log);
                    // An HTTP route never hands the log to its caller (the Invoke API's `Tail`
                    // and the async engine do): rendering it cost ~2.5k instructions a request.
                    if a.trigger != nimbus_core::Trigger::Http {
                        r.log = rec.framed_log(&init_log, &body);
                    }
                    rec.log_frame = Some(init_log.len());
                    rec.log = if init_log.is_empty() { body } else { init_log + &body };
                } else {
                    r.log = report::invocation_log(f, &a.request_id, &init_log, &r);
                    rec.log = r.log.clone();
                }
                self.recorder.record(rec);
                Ok(r)
            }
            Err(e) => Err(self.instance_failed(&a, queue_wait, &init_log, cold, e)),
        }
    }

    /// What an invocation whose instance failed under it reports. An instance that exits while
    /// the node is shutting down was (most likely) stopped by the shutdown, not by the
    /// function: that is `ShuttingDown`, a platform failure the caller may retry elsewhere
    /// (the async engine hands such an event back, uncounted), not the function's crash.
    fn instance_failed(
        &self,
        a: &Attempt,
        queue_wait: Duration,
        init_log: &str,
        cold: Option<ColdStart>,
        e: nimbus_core::InstanceError,
    ) -> DispatchError {
        let stopped_under_it = self.stopped.load(Ordering::Relaxed)
            && matches!(e, nimbus_core::InstanceError::Crashed { .. } | nimbus_core::InstanceError::Lost { .. });
        let err = if stopped_under_it {
            DispatchError::ShuttingDown { name: a.function.spec.name.clone() }
        } else {
            report::instance_error(&a.function, &a.request_id, init_log, cold, e)
        };
        self.failed(a, queue_wait, err, cold)
    }
}

#[async_trait]
impl Dispatch for Scheduler {
    async fn invoke(
        &self,
        function: Arc<FunctionVersion>,
        invocation: Invocation,
    ) -> Result<InvokeResult, DispatchError> {
        // A caller that goes away must not cancel an invocation half-way, and a panic inside
        // one invocation becomes a platform error instead of taking others down (a panicking
        // invocation records nothing itself, so its record is made here). A wasm invocation
        // gets its first poll here, on the caller's task: a warm instance usually finishes in
        // it, which had nothing to cancel and saves a task, its scheduling and the wake of the
        // caller. One that waits moves, already boxed, into a task of its own. A process
        // runtime's always waits, and polling it first would hand its event over before the
        // spawn; the spawned task would then push the Runtime API's task out of tokio's LIFO
        // slot and wake another worker to take it (3.3 instead of 2.2 context switches of the
        // workers per Node invocation at c=1). So it gets its own task at once.
        let attempt = Attempt::new(function, &invocation);
        let failed = |why: String| {
            let err = DispatchError::Platform(format!("the invocation task failed: {why}"));
            Err(self.failed(&attempt, attempt.queued.elapsed(), err, None))
        };
        let run = self.0.clone().run(attempt.clone(), invocation);
        if !attempt.function.spec.runtime.runs_in_nimbus() {
            return tokio::spawn(run).await.unwrap_or_else(|e| failed(e.to_string()));
        }
        let mut run = Box::pin(run);
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))))
        })
        .await;
        match first {
            Ok(Poll::Ready(r)) => r,
            Ok(Poll::Pending) => tokio::spawn(run).await.unwrap_or_else(|e| failed(e.to_string())),
            Err(panic) => failed(panic_message(&*panic)),
        }
    }
}

/// The control plane prepares deployments and tells the pools which versions are live.
#[async_trait]
impl Pools for Scheduler {
    async fn prepare(&self, functions: &[Arc<FunctionVersion>]) -> Result<(), FunctionPrepareError> {
        Inner::prepare(self, functions).await
    }

    fn deploy(&self, live: &[Arc<FunctionVersion>]) {
        Inner::deploy(self, live);
    }
}

/// What a caught panic said (`panic!` makes its payload a `&str` or a `String`), in the words
/// of tokio's `JoinError`.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    format!("panicked with message {:?}", said.unwrap_or("(none)"))
}

/// Status a finished invocation is recorded with.
pub fn status_of(result: &Result<InvokeResult, DispatchError>) -> InvocationStatus {
    match result {
        Ok(r) => match r.outcome {
            InvokeOutcome::Success(_) => InvocationStatus::Success,
            InvokeOutcome::FunctionError { .. } => InvocationStatus::FunctionError,
        },
        Err(e) => report::status_for_error(e),
    }
}

/// A recorder that drops everything (tests, benchmarks of the bare path).
pub struct NullRecorder;

impl Recorder for NullRecorder {
    fn record(&self, _record: InvocationRecord) {}
}
