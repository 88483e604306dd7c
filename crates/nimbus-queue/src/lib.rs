//! Async invocations, cron triggers and queue triggers ([`triggers`]).
//!
//! # The engine
//! `accept` puts an event on the durable [`QueueStore`] and returns only once it is stored
//! (the caller then answers 202). A worker loop claims due events, as many as the in-flight
//! budget allows, and runs each through the same [`Dispatch`] (pools, `max_instances`) as
//! synchronous calls. The outcome goes through the pure retry policy
//! ([`nimbus_core::policy::retry`]):
//! - success: the event is `succeeded`; `on_success = "function:X"` enqueues an envelope for X;
//! - function error (raised, timeout, crash): retried after exponential backoff with jitter, up
//!   to `max_retry_attempts`;
//! - platform error (init failure, no capacity): retried with backoff until `max_event_age`;
//! - throttled: requeued after a short wait, not counted as a failure;
//! - given up: `on_failure` decides: the dead-letter store (default) or an envelope to a function.
//!
//! On start, events left `running` by a crash go back to the queue (at-least-once). At
//! shutdown the loop stops claiming and waits (bounded) for running events; any still running
//! are recovered at the next start.
//!
//! # Cron
//! Each schedule has a stable key. Every fire is an event whose id is derived from the key and
//! the slot, inserted only if absent, and the schedule's latest slot is stored with it in one
//! transaction: a restart never fires a slot twice. A schedule seen for the first time starts
//! from now; slots missed while nimbus was down fire once (the latest) unless `catch_up = "none"`.
//!
//! # Bucket triggers
//! [`buckets`] forwards the object store's outbox to [`Engine::accept_once`]: see there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::event_sources::TriggerSpec;
use nimbus_core::ids::{new_request_id, now_ms};
use nimbus_core::messages::MessageQueues;
use nimbus_core::policy::{self, AttemptFailure, Condition, GiveUp, RetryDecision};
use nimbus_core::queue::{
    Accepted, AttemptOutcome, AttemptRecord, ClaimedEvent, EventSource, Finish, NewEvent, QueueError, QueueStore,
};
use nimbus_core::{Destination, Dispatch, DispatchError, FunctionVersion, Invocation, InvokeOutcome, InvokeResult};
use nimbus_manifest::schedule::{CatchUp, ScheduleSpec};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};

pub mod buckets;
pub mod triggers;

/// What the engine needs from the control plane: the live functions, schedules and triggers.
pub trait Resolver: Send + Sync + 'static {
    /// The function version to run: `qualifier` pins a deployment version, None is live.
    fn function(&self, name: &str, qualifier: Option<&str>) -> Option<Arc<FunctionVersion>>;
    fn schedules(&self) -> Vec<ScheduleSpec>;
    /// The live deployment's `[[triggers]]` (the queue triggers' pollers follow them).
    fn triggers(&self) -> Vec<TriggerSpec> {
        Vec::new()
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct AsyncConfig {
    /// Unfinished events allowed in the queue before accepts get 429.
    pub max_depth: u64,
    /// Largest async payload (Lambda: 256 KB).
    pub max_payload: usize,
    pub idempotency_window: Duration,
    /// Async invocations running at once (each still subject to its function's max_instances).
    pub max_in_flight: usize,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            max_depth: 1_000_000,
            max_payload: 256 * 1024,
            idempotency_window: Duration::from_secs(3600),
            max_in_flight: 256,
        }
    }
}

/// Why an accept was refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the async payload is {size} bytes, above the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("the queue holds {depth} unfinished events, its limit; retry later")]
    Full { depth: u64 },
    #[error("{0}")]
    Storage(String),
}

/// A request to run a function asynchronously.
pub struct AcceptRequest {
    pub function: String,
    pub qualifier: Option<String>,
    pub payload: Bytes,
    pub source: EventSource,
    pub idempotency_key: Option<String>,
}

pub struct Engine {
    store: Arc<dyn QueueStore>,
    dispatch: Arc<dyn Dispatch>,
    resolver: Arc<dyn Resolver>,
    config: AsyncConfig,
    wake: Notify,
    depth: AtomicU64,
    in_flight: Arc<Semaphore>,
    stopping: AtomicBool,
    stopped: Notify,
    recovered: u64,
    clock: Clock,
    /// Per function: (events running, share of the in-flight budget). A function gets at most
    /// max(2 × max_instances, MIN_SHARE) in flight, so a backlog in one cannot starve the others.
    running: std::sync::Mutex<std::collections::HashMap<String, (u32, u32)>>,
    /// Per function and outcome ("retried", "dead_lettered", "sent_on_failure"): how many
    /// events took it since start, for `/metrics`.
    outcomes: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
    /// The queue triggers' pollers, once [`Engine::start_triggers`] started them.
    triggers: std::sync::OnceLock<Arc<triggers::Triggers>>,
}

/// A function's share of the in-flight budget is twice its `max_instances`, but at least this:
/// claimed events wait in the pool in memory, and a share of 4 (max_instances = 2) cost one
/// queue round trip per event, cutting end-to-end throughput from ~6,000 to ~1,300 events/s
/// (nimbus-bench async). With 32, claims still competed with accepts in the queue's writer
/// (~10,000 accepts/s at c=64); 64 measured 12,233 / 14,913 accepts/s and 5,059 / 4,820
/// events/s end to end, and is a quarter of the budget, so a backlog still cannot starve others.
const MIN_SHARE: u32 = 64;
/// How often the unfinished-event count is read from the store again (ms).
const DEPTH_SYNC_MS: u64 = 5_000;
/// How many events of a function with none running one claim may take.
const DEFAULT_SHARE: u32 = MIN_SHARE;

/// Where the engine reads the time, in Unix milliseconds: the wall clock ([`now_ms`]) in
/// production. The engine's tests read tokio's clock instead, so that a paused runtime decides
/// when backoffs end and events fall due.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A UUID-shaped id derived from a schedule key and slot: the same slot always gets the same id.
pub fn slot_id(key: &str, slot_ms: u64) -> String {
    let digest = Sha256::digest(format!("{key}#{slot_ms}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// The invocation for one attempt of `ev`, with a fresh trace id for each attempt. Nothing
/// differs from [`Invocation::new`]: a queued event keeps no client context, and an async HTTP
/// route queues its request as an event, not as an HTTP head.
fn invocation(ev: &ClaimedEvent, function: &FunctionVersion) -> Invocation {
    Invocation::new(ev.id.clone(), ev.payload.clone(), ev.source.trigger(), function.spec.timeout)
}

/// How one attempt ended, before the retry policy looks at it.
enum Ran {
    Succeeded {
        response: Bytes,
    },
    Failed {
        failure: AttemptFailure,
        error_type: String,
        message: String,
        /// The function's error body, when it ran far enough to post one.
        response: Option<Bytes>,
    },
}

impl From<Result<InvokeResult, DispatchError>> for Ran {
    fn from(result: Result<InvokeResult, DispatchError>) -> Ran {
        match result {
            Ok(r) => match r.outcome {
                InvokeOutcome::Success(response) => Ran::Succeeded { response },
                InvokeOutcome::FunctionError { error_type, error_message, body, .. } => Ran::Failed {
                    failure: AttemptFailure::Function,
                    error_type,
                    message: error_message,
                    response: Some(body),
                },
            },
            Err(e) => {
                let error_type = match &e {
                    // The function's own error type (e.g. a syntax error in the handler module).
                    DispatchError::InitFailed { error_type, .. } => error_type.clone(),
                    other => other.lambda_error_type().to_owned(),
                };
                Ran::Failed { failure: e.attempt_failure(), error_type, message: e.to_string(), response: None }
            }
        }
    }
}

impl Ran {
    fn record(&self, n: u32, started_ms: u64, duration_ms: f64) -> AttemptRecord {
        let (outcome, error_type, error_message) = match self {
            Ran::Succeeded { .. } => (AttemptOutcome::Success, None, None),
            Ran::Failed { failure, error_type, message, .. } => {
                ((*failure).into(), Some(error_type.clone()), Some(message.clone()))
            }
        };
        AttemptRecord { n, started_ms, duration_ms, outcome, error_type, error_message }
    }
}

impl Engine {
    /// Recover events left running, then start the worker and cron loops.
    pub async fn start(
        store: Arc<dyn QueueStore>,
        dispatch: Arc<dyn Dispatch>,
        resolver: Arc<dyn Resolver>,
        config: AsyncConfig,
    ) -> Result<Arc<Engine>, QueueError> {
        Engine::start_with_clock(store, dispatch, resolver, config, Arc::new(now_ms)).await
    }

    async fn start_with_clock(
        store: Arc<dyn QueueStore>,
        dispatch: Arc<dyn Dispatch>,
        resolver: Arc<dyn Resolver>,
        config: AsyncConfig,
        clock: Clock,
    ) -> Result<Arc<Engine>, QueueError> {
        let recovered = store.recover().await?;
        if recovered > 0 {
            tracing::info!(recovered, "async events that were running when nimbus stopped are queued again");
        }
        let depth = store.depth().await?;
        let engine = Arc::new(Engine {
            store,
            dispatch,
            resolver,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            wake: Notify::new(),
            depth: AtomicU64::new(depth),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
            recovered,
            clock,
            running: std::sync::Mutex::new(std::collections::HashMap::new()),
            outcomes: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            triggers: std::sync::OnceLock::new(),
        });
        tokio::spawn(engine.clone().work());
        tokio::spawn(engine.clone().cron());
        Ok(engine)
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn store(&self) -> &Arc<dyn QueueStore> {
        &self.store
    }

    /// Events that were running when the previous process stopped, queued again at start.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// Retries and dead-letters per function since start: (function, outcome, count).
    pub fn outcomes(&self) -> Vec<(String, &'static str, u64)> {
        let m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|((f, o), n)| (f.clone(), *o, *n)).collect()
    }

    fn count(&self, function: &str, outcome: &'static str) {
        let mut m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((function.to_owned(), outcome)).or_default() += 1;
    }

    /// Start polling the live deployment's queue triggers from `queues`, invoking through the
    /// engine's dispatcher; [`Engine::shutdown`] stops them too. Once per engine: a second call
    /// returns the first's pollers.
    pub fn start_triggers(&self, queues: Arc<dyn MessageQueues>) -> Arc<triggers::Triggers> {
        self.triggers
            .get_or_init(|| triggers::Triggers::start(queues, self.dispatch.clone(), self.resolver.clone()))
            .clone()
    }

    /// The queue triggers, when started.
    pub fn triggers(&self) -> Option<&Arc<triggers::Triggers>> {
        self.triggers.get()
    }

    /// Unfinished events (exact at start, read from the store again every 5 s, approximate
    /// in between).
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Store an event durably; Ok means it is on stable storage.
    pub async fn accept(&self, req: AcceptRequest) -> Result<Accepted, AcceptError> {
        let window = u64::try_from(self.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        self.accept_within(req, window).await
    }

    /// [`Engine::accept`], but the idempotency key dedupes against every earlier event of the
    /// function, however old: for keys derived from something that never repeats (a bucket
    /// trigger's outbox row), where a late retry must still be recognised.
    pub async fn accept_once(&self, req: AcceptRequest) -> Result<Accepted, AcceptError> {
        self.accept_within(req, u64::MAX).await
    }

    async fn accept_within(&self, req: AcceptRequest, window: u64) -> Result<Accepted, AcceptError> {
        if req.payload.len() > self.config.max_payload {
            return Err(AcceptError::TooLarge { size: req.payload.len(), limit: self.config.max_payload });
        }
        let depth = self.depth();
        if depth >= self.config.max_depth {
            return Err(AcceptError::Full { depth });
        }
        let now = self.now();
        let event = NewEvent {
            id: new_request_id(),
            function: req.function,
            qualifier: req.qualifier,
            payload: req.payload,
            source: req.source,
            idempotency_key: req.idempotency_key,
            now_ms: now,
            run_at_ms: now,
        };
        let accepted = self.store.accept(event, window).await.map_err(|e| AcceptError::Storage(e.to_string()))?;
        if !accepted.duplicate {
            self.depth.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(accepted)
    }

    /// Tell the engine that events were queued behind its back (redrive).
    pub fn queued(&self, n: u64) {
        self.depth.fetch_add(n, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Stop claiming and polling, and wait (bounded) for running events and queue batches to
    /// finish.
    pub async fn shutdown(&self, within: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        let all = self.config.max_in_flight as u32;
        let triggers = async {
            if let Some(t) = self.triggers.get() {
                t.shutdown(within).await;
            }
        };
        let events = tokio::time::timeout(within, self.in_flight.acquire_many(all));
        let _ = tokio::join!(events, triggers);
        self.stopped.notify_waiters();
    }

    /// After [`Engine::shutdown`] and the instances' stop: wait (bounded) until the events the
    /// stop cut short are handed back to the queue, before the queue closes.
    pub async fn settle(&self, within: Duration) {
        let all = self.config.max_in_flight as u32;
        let _ = tokio::time::timeout(within, self.in_flight.acquire_many(all)).await;
    }

    async fn work(self: Arc<Self>) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let free = self.in_flight.available_permits() as u32;
            if free == 0 {
                // Wait for a running event to finish.
                if let Ok(p) = self.in_flight.clone().acquire_owned().await {
                    drop(p);
                }
                continue;
            }
            let claimed = match self.store.claim(self.now(), free, &self.shares(), DEFAULT_SHARE).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("cannot claim async events: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                let wait = match self.store.next_due().await {
                    // `due` may be past already (0 left): look again in 1 ms.
                    Ok(Some(due)) => Duration::from_millis(due.saturating_sub(self.now()).clamp(1, 1000)),
                    _ => Duration::from_secs(1),
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.store.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stopped.notified() => return,
                }
                continue;
            }
            for ev in claimed {
                let permit = self.in_flight.clone().try_acquire_owned();
                let Some(permit) = permit.ok().filter(|_| self.reserve(&ev)) else {
                    // Over its function's share (or out of budget): back to the queue, uncounted.
                    if let Err(e) = self.store.release(&ev.id, self.now()).await {
                        tracing::error!(id = %ev.id, "cannot return an async event to the queue: {e}");
                    }
                    continue;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let function = ev.function.clone();
                    me.execute(ev).await;
                    me.unreserve(&function);
                    drop(permit);
                    me.wake.notify_one();
                });
            }
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u32, u32)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What each function with events running may still take (0: skip it in the next claim).
    fn shares(&self) -> std::collections::HashMap<String, u32> {
        self.running().iter().map(|(f, (n, cap))| (f.clone(), cap.saturating_sub(*n))).collect()
    }

    /// Count `ev` against its function's share; false when the share is used up.
    fn reserve(&self, ev: &ClaimedEvent) -> bool {
        let cap = self
            .resolver
            .function(&ev.function, ev.qualifier.as_deref())
            .map_or(1, |f| f.spec.max_instances.saturating_mul(2).max(MIN_SHARE));
        let mut running = self.running();
        let entry = running.entry(ev.function.clone()).or_insert((0, cap));
        entry.1 = cap;
        if entry.0 >= cap {
            return false;
        }
        entry.0 += 1;
        true
    }

    fn unreserve(&self, function: &str) {
        let mut running = self.running();
        if let Some(entry) = running.get_mut(function) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                running.remove(function);
            }
        }
    }

    /// Run one claimed event and move it on: succeeded, retried, or given up.
    async fn execute(self: &Arc<Self>, ev: ClaimedEvent) {
        let started = self.now();
        let Some(function) = self.resolver.function(&ev.function, ev.qualifier.as_deref()) else {
            return self.not_found(&ev, started).await;
        };
        // A streamed response is collected: an async caller gets the whole result.
        let result = self.dispatch.invoke(function.clone(), invocation(&ev, &function)).await;
        if self.stopping.load(Ordering::SeqCst) && matches!(result, Err(DispatchError::ShuttingDown { .. })) {
            // This node stopped under the event (a restart, a scale-down): not an attempt that
            // failed. Back to the queue, uncounted, where another node (or this one once it is
            // back) takes it at once.
            if let Err(e) = self.store.release(&ev.id, self.now()).await {
                tracing::error!(id = %ev.id, "cannot hand an async event back to the queue at shutdown: {e}");
            }
            return;
        }
        let result = match result {
            Ok(r) => Ok(nimbus_core::invoke::collect(r).await),
            Err(e) => Err(e),
        };
        let ran = Ran::from(result);
        let attempt = ran.record(ev.attempts, started, self.now().saturating_sub(started) as f64);
        match ran {
            Ran::Succeeded { response } => self.succeeded(&ev, &function, attempt, response).await,
            Ran::Failed { failure, response, .. } => self.failed(&ev, &function, attempt, failure, response).await,
        }
    }

    /// The function is not in the live deployment: retrying cannot help.
    async fn not_found(&self, ev: &ClaimedEvent, started: u64) {
        let reason = format!("function {} is not in the live deployment", ev.function);
        let attempt = AttemptRecord {
            n: ev.attempts,
            started_ms: started,
            duration_ms: 0.0,
            outcome: AttemptOutcome::NotFound,
            error_type: Some("ResourceNotFoundException".into()),
            error_message: Some(reason.clone()),
        };
        self.finish(ev, attempt, Finish::Failed { reason, dead_letter: true }, true).await;
        self.count(&ev.function, "dead_lettered");
    }

    async fn succeeded(&self, ev: &ClaimedEvent, function: &FunctionVersion, attempt: AttemptRecord, body: Bytes) {
        if let Some(Destination::Function(target)) = &function.spec.async_policy.on_success {
            self.send(target, ev, function, Condition::Success, Some(&body), None).await;
        }
        self.finish(ev, attempt, Finish::Succeeded { response: body }, true).await;
    }

    /// Ask the retry policy, then retry the event or give up on it.
    async fn failed(
        &self,
        ev: &ClaimedEvent,
        function: &FunctionVersion,
        attempt: AttemptRecord,
        failure: AttemptFailure,
        response: Option<Bytes>,
    ) {
        let policy = &function.spec.async_policy;
        let function_errors = ev.function_errors + u32::from(failure.is_function_error());
        let platform_failures = ev.platform_failures + u32::from(!failure.is_function_error());
        let age = Duration::from_millis(self.now().saturating_sub(ev.accepted_ms));
        let give_up = match policy::retry(failure, function_errors, platform_failures, age, policy, rand::random()) {
            RetryDecision::RetryAfter(delay) => {
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                let finish = Finish::Retry { run_at_ms: self.now().saturating_add(delay_ms), failure };
                self.finish(ev, attempt, finish, false).await;
                self.count(&ev.function, "retried");
                self.wake.notify_one();
                return;
            }
            RetryDecision::GiveUp(give_up) => give_up,
        };
        let reason = match give_up {
            GiveUp::RetriesExhausted => {
                format!("failed {function_errors} time(s); max_retry_attempts is {}", policy.max_retry_attempts)
            }
            GiveUp::EventAgeExceeded => format!("older than max_event_age ({:?})", policy.max_event_age),
        };
        self.give_up(ev, function, attempt, give_up, reason, response).await;
    }

    /// `on_failure` decides: an envelope to a function, or the dead-letter store (the default).
    async fn give_up(
        &self,
        ev: &ClaimedEvent,
        function: &FunctionVersion,
        attempt: AttemptRecord,
        give_up: GiveUp,
        reason: String,
        response: Option<Bytes>,
    ) {
        let dead_letter = match &function.spec.async_policy.on_failure {
            Some(Destination::Function(target)) => {
                let error = json!({"errorType": attempt.error_type, "errorMessage": attempt.error_message});
                self.send(target, ev, function, give_up.into(), response.as_ref(), Some(error)).await;
                false
            }
            Some(Destination::Dlq) | None => true,
        };
        self.finish(ev, attempt, Finish::Failed { reason, dead_letter }, true).await;
        self.count(&ev.function, if dead_letter { "dead_lettered" } else { "sent_on_failure" });
    }

    async fn finish(&self, ev: &ClaimedEvent, attempt: AttemptRecord, finish: Finish, terminal: bool) {
        let mut tries = 0;
        while let Err(e) = self.store.finish(&ev.id, attempt.clone(), finish.clone(), self.now()).await {
            tries += 1;
            if tries == 5 {
                // The event stays `running` and is run again after the next start.
                tracing::error!(id = %ev.id, "cannot record the outcome of an async event: {e}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50 << tries)).await;
        }
        if terminal {
            // Saturating: in a cluster an event accepted on another node may finish here.
            let _ = self.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(1)));
        }
    }

    /// Enqueue a destination envelope, in the shape Lambda destinations use.
    async fn send(
        &self,
        target: &str,
        ev: &ClaimedEvent,
        function: &FunctionVersion,
        condition: Condition,
        response: Option<&Bytes>,
        error: Option<Value>,
    ) {
        let parse = |b: &[u8]| {
            serde_json::from_slice::<Value>(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
        };
        let mut response_context = json!({"statusCode": 200, "executedVersion": function.version});
        if error.is_some() {
            if let Some(obj) = response_context.as_object_mut() {
                obj.insert("functionError".into(), json!("Unhandled"));
            }
        }
        let envelope = json!({
            "version": "1.0",
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "requestContext": {
                "requestId": ev.id,
                "functionArn": format!("{}:{}", function.arn(), function.version),
                "condition": condition,
                "approximateInvokeCount": ev.attempts,
            },
            "requestPayload": parse(&ev.payload),
            "responseContext": response_context,
            "responsePayload": match (response, &error) {
                (Some(b), _) if !b.is_empty() => parse(b),
                (_, Some(e)) => e.clone(),
                _ => Value::Null,
            },
        });
        let req = AcceptRequest {
            function: target.to_owned(),
            qualifier: None,
            payload: Bytes::from(envelope.to_string()),
            source: EventSource::Destination,
            idempotency_key: None,
        };
        if let Err(e) = self.accept(req).await {
            tracing::error!(id = %ev.id, target, "cannot send the outcome to its destination: {e}");
        }
    }

    async fn cron(self: Arc<Self>) {
        let mut synced = self.now();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let now = self.now();
            if now.saturating_sub(synced) >= DEPTH_SYNC_MS {
                // In a cluster, events accepted here finish on other nodes and the other way
                // round: the count kept in memory drifts, so it is read from the store again.
                synced = now;
                if let Ok(depth) = self.store.depth().await {
                    self.depth.store(depth, Ordering::Relaxed);
                }
            }
            let mut next_wake = now.saturating_add(1000);
            for s in self.resolver.schedules() {
                match self.tick(&s, now).await {
                    Ok(Some(next)) => next_wake = next_wake.min(next),
                    Ok(None) => {}
                    Err(e) => tracing::error!(schedule = %s.key(), "schedule failed: {e}"),
                }
            }
            let wait = Duration::from_millis(next_wake.saturating_sub(self.now()).clamp(1, 1000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopped.notified() => return,
            }
        }
    }

    /// Fire `s` if a slot is due; returns when its next slot is.
    async fn tick(&self, s: &ScheduleSpec, now: u64) -> Result<Option<u64>, QueueError> {
        let key = s.key();
        let Some(last) = self.store.last_slot(&key).await? else {
            // First sight of this schedule: start from now, do not fire the past.
            self.store.skip_to(&key, now).await?;
            return Ok(s.next_slot_after(now));
        };
        if let Some(slot) = s.latest_slot_between(last, now) {
            // A slot more than a few seconds old was missed while nimbus was down.
            let missed = now.saturating_sub(slot) > 5_000;
            if missed && s.catch_up == CatchUp::None {
                self.store.skip_to(&key, slot).await?;
            } else {
                self.fire(s, &key, slot).await?;
            }
        }
        Ok(s.next_slot_after(now))
    }

    async fn fire(&self, s: &ScheduleSpec, key: &str, slot: u64) -> Result<(), QueueError> {
        let id = slot_id(key, slot);
        // The EventBridge scheduled-event shape, as Lambda handlers expect it (one definition,
        // in nimbus-core, shared with `nimbus events generate schedule`).
        let payload = nimbus_core::events::ScheduledEvent::new(&id, key, slot);
        let payload = serde_json::to_vec(&payload)
            .map_err(|e| QueueError::Storage(format!("encoding the scheduled event: {e}")))?;
        let now = self.now();
        let event = NewEvent {
            id,
            function: s.function.clone(),
            qualifier: None,
            payload: Bytes::from(payload),
            source: EventSource::Schedule,
            idempotency_key: None,
            now_ms: now,
            run_at_ms: now,
        };
        if self.store.fire_slot(key, slot, event).await? {
            self.depth.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod triggers_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_are_deterministic_uuids() {
        let a = slot_id("report@cron(0 2 * * *)@UTC", 1_795_318_400_000);
        assert_eq!(a, slot_id("report@cron(0 2 * * *)@UTC", 1_795_318_400_000));
        assert_ne!(a, slot_id("report@cron(0 2 * * *)@UTC", 1_795_318_400_001));
        // Stored in queue.db: a slot fired before an upgrade keeps its id, so it never fires twice.
        assert_eq!(a, "6c34a4df-6947-83f8-b997-c8ffe1c5280e");
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
