//! In-memory stand-ins for the engine's seams, for its unit tests: a [`QueueStore`] that keeps
//! events in a map and follows the SQLite store's contract (claim window and shares, attempt
//! counting, idempotency window, slots), a [`Dispatch`] that plays a script per function, a
//! [`Resolver`] with fixed function versions and changeable triggers, and a [`MessageQueues`]
//! (in [`queues`]) that keeps SQS's semantics on tokio's clock.

pub mod queues;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::event_sources::TriggerSpec;
use nimbus_core::policy::AttemptFailure;
use nimbus_core::queue::{
    Accepted, AttemptRecord, ClaimedEvent, EventStatus, EventView, Finish, NewEvent, QueueError, QueueStats, QueueStore,
};
use nimbus_core::{
    AsyncPolicy, Dispatch, DispatchError, FunctionErrorKind, FunctionSpec, FunctionVersion, Invocation, InvokeOutcome,
    InvokeResult, RuntimeKind,
};
use nimbus_manifest::schedule::ScheduleSpec;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Resolver;

/// As in the SQLite store: a claim looks at no more than this many of the earliest due events
/// (of functions whose share is not used up). It is what makes the shares matter: without
/// them, one function's backlog would fill the window.
const CLAIM_WINDOW: usize = 256;

/// One event as the fake store keeps it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub event: NewEvent,
    /// Insertion order: among events due at the same millisecond the older one is claimed first.
    seq: u64,
    pub status: EventStatus,
    pub attempts: u32,
    pub function_errors: u32,
    pub platform_failures: u32,
    pub next_run_ms: u64,
    pub history: Vec<AttemptRecord>,
    pub reason: Option<String>,
    pub result: Option<Bytes>,
}

impl Stored {
    fn view(&self) -> EventView {
        let json = |b: &[u8]| serde_json::from_slice(b).unwrap_or_else(|_| String::from_utf8_lossy(b).into());
        EventView {
            request_id: self.event.id.clone(),
            function: self.event.function.clone(),
            qualifier: self.event.qualifier.clone(),
            source: self.event.source,
            status: self.status,
            attempts: self.attempts,
            accepted_ms: self.event.now_ms,
            updated_ms: self.event.now_ms,
            next_run_ms: (self.status == EventStatus::Queued).then_some(self.next_run_ms),
            last_error_type: self.history.last().and_then(|a| a.error_type.clone()),
            last_error: self.history.last().and_then(|a| a.error_message.clone()),
            reason: self.reason.clone(),
            payload: json(&self.event.payload),
            result: self.result.as_deref().map(json),
            history: self.history.clone(),
        }
    }
}

/// Everything the fake store holds.
#[derive(Default)]
pub struct Events {
    by_id: HashMap<String, Stored>,
    next_seq: u64,
    slots: HashMap<String, u64>,
}

impl Events {
    pub fn get(&self, id: &str) -> &Stored {
        self.by_id.get(id).unwrap_or_else(|| panic!("no event {id}"))
    }

    pub fn of<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a Stored> + 'a {
        self.by_id.values().filter(move |e| e.event.function == function)
    }

    pub fn count(&self, function: &str, status: EventStatus) -> usize {
        self.of(function).filter(|e| e.status == status).count()
    }

    /// Events queued or running.
    pub fn unfinished(&self) -> usize {
        self.by_id.values().filter(|e| matches!(e.status, EventStatus::Queued | EventStatus::Running)).count()
    }

    /// Insert unless the id is taken (as `INSERT OR IGNORE`); true when inserted.
    fn insert(&mut self, event: NewEvent, status: EventStatus) -> bool {
        if self.by_id.contains_key(&event.id) {
            return false;
        }
        self.next_seq += 1;
        let stored = Stored {
            seq: self.next_seq,
            status,
            attempts: 0,
            function_errors: 0,
            platform_failures: 0,
            next_run_ms: event.run_at_ms,
            history: Vec::new(),
            reason: None,
            result: None,
            event,
        };
        self.by_id.insert(stored.event.id.clone(), stored);
        true
    }

    fn duplicate_of(&self, event: &NewEvent, window_ms: u64) -> Option<String> {
        let key = event.idempotency_key.as_ref()?;
        self.by_id
            .values()
            .filter(|e| e.event.function == event.function && e.event.idempotency_key.as_ref() == Some(key))
            // As the SQLite store: no cutoff when the window reaches back before the epoch.
            .filter(|e| event.now_ms.checked_sub(window_ms).is_none_or(|cutoff| e.event.now_ms > cutoff))
            .max_by_key(|e| (e.event.now_ms, e.seq))
            .map(|e| e.event.id.clone())
    }

    /// The ids a claim takes, in the SQLite store's order: the window of earliest due events of
    /// unsaturated functions, at most `share` per function, at most `limit` in all.
    fn claimable(&self, now: u64, limit: u32, shares: &HashMap<String, u32>, default_share: u32) -> Vec<String> {
        let skip: HashSet<&String> = shares.iter().filter(|(_, s)| **s == 0).map(|(f, _)| f).collect();
        let mut due: Vec<&Stored> = self
            .by_id
            .values()
            .filter(|e| e.status == EventStatus::Queued && e.next_run_ms <= now && !skip.contains(&e.event.function))
            .collect();
        due.sort_by_key(|e| (e.next_run_ms, e.seq));
        due.truncate(CLAIM_WINDOW);
        let mut taken: HashMap<&str, u32> = HashMap::new();
        let mut ids = Vec::new();
        for e in due {
            let n = taken.entry(&e.event.function).or_default();
            *n += 1;
            if *n <= shares.get(&e.event.function).copied().unwrap_or(default_share) {
                ids.push(e.event.id.clone());
            }
        }
        ids.truncate(limit as usize);
        ids
    }

    fn claim_one(&mut self, id: &str) -> ClaimedEvent {
        let e = self.by_id.get_mut(id).unwrap_or_else(|| panic!("no event {id}"));
        e.status = EventStatus::Running;
        e.attempts += 1;
        ClaimedEvent {
            id: e.event.id.clone(),
            function: e.event.function.clone(),
            qualifier: e.event.qualifier.clone(),
            payload: e.event.payload.clone(),
            source: e.event.source,
            accepted_ms: e.event.now_ms,
            attempts: e.attempts,
            function_errors: e.function_errors,
            platform_failures: e.platform_failures,
        }
    }
}

/// The in-memory [`QueueStore`]. Every change is announced, so a test can wait for a state
/// instead of sleeping.
pub struct FakeStore {
    events: Mutex<Events>,
    changed: watch::Sender<()>,
    /// What [`QueueStore::changed`] waits on: another node of a cluster queued something.
    pub elsewhere: tokio::sync::Notify,
}

impl FakeStore {
    pub fn new() -> Arc<FakeStore> {
        Arc::new(FakeStore {
            events: Mutex::new(Events::default()),
            changed: watch::Sender::new(()),
            elsewhere: tokio::sync::Notify::new(),
        })
    }

    pub fn events(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap()
    }

    /// Put an event in the store as a previous process left it.
    pub fn seed(&self, event: NewEvent, status: EventStatus, attempts: u32) {
        self.write(|s| {
            let id = event.id.clone();
            assert!(s.insert(event, status));
            s.by_id.get_mut(&id).unwrap().attempts = attempts;
        });
    }

    /// Wait until `done` holds; panics after an hour of (paused, so quickly passing) time.
    pub async fn until(&self, what: &str, done: impl Fn(&Events) -> bool) {
        let mut changes = self.changed.subscribe();
        let wait = async {
            while !done(&self.events()) {
                changes.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(Duration::from_secs(3600), wait).await.is_err() {
            panic!("gave up waiting for {what}");
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Events) -> T) -> T {
        let out = f(&mut self.events());
        self.changed.send_replace(());
        out
    }
}

/// A store call goes through a channel in the real store, so it always yields; without this
/// a loop over a store that answers at once could hold the (single-threaded) test runtime.
async fn round_trip() {
    tokio::task::yield_now().await;
}

#[async_trait]
impl QueueStore for FakeStore {
    async fn accept(&self, event: NewEvent, window_ms: u64) -> Result<Accepted, QueueError> {
        round_trip().await;
        self.write(|s| {
            if let Some(id) = s.duplicate_of(&event, window_ms) {
                return Ok(Accepted { id, duplicate: true });
            }
            let id = event.id.clone();
            if !s.insert(event, EventStatus::Queued) {
                return Err(QueueError::Storage(format!("event {id} exists")));
            }
            Ok(Accepted { id, duplicate: false })
        })
    }

    async fn claim(
        &self,
        now_ms: u64,
        limit: u32,
        shares: &HashMap<String, u32>,
        default_share: u32,
    ) -> Result<Vec<ClaimedEvent>, QueueError> {
        round_trip().await;
        self.write(|s| {
            let ids = s.claimable(now_ms, limit, shares, default_share);
            Ok(ids.iter().map(|id| s.claim_one(id)).collect())
        })
    }

    async fn release(&self, id: &str, run_at_ms: u64) -> Result<(), QueueError> {
        round_trip().await;
        self.write(|s| {
            if let Some(e) = s.by_id.get_mut(id).filter(|e| e.status == EventStatus::Running) {
                e.status = EventStatus::Queued;
                e.attempts -= 1;
                e.next_run_ms = run_at_ms;
            }
            Ok(())
        })
    }

    async fn finish(&self, id: &str, attempt: AttemptRecord, finish: Finish, _now_ms: u64) -> Result<(), QueueError> {
        round_trip().await;
        self.write(|s| {
            let e = s.by_id.get_mut(id).ok_or_else(|| QueueError::Storage(format!("no event {id}")))?;
            e.history.push(attempt);
            match finish {
                Finish::Succeeded { response } => {
                    e.status = EventStatus::Succeeded;
                    e.result = Some(response);
                }
                Finish::Retry { run_at_ms, failure } => {
                    e.status = EventStatus::Queued;
                    e.next_run_ms = run_at_ms;
                    match failure {
                        AttemptFailure::Function => e.function_errors += 1,
                        AttemptFailure::Platform | AttemptFailure::Throttled => e.platform_failures += 1,
                    }
                }
                Finish::Failed { reason, dead_letter } => {
                    e.status = if dead_letter { EventStatus::DeadLettered } else { EventStatus::Failed };
                    e.reason = Some(reason);
                }
            }
            Ok(())
        })
    }

    async fn changed(&self) {
        self.elsewhere.notified().await;
    }

    async fn next_due(&self) -> Result<Option<u64>, QueueError> {
        round_trip().await;
        let s = self.events();
        Ok(s.by_id.values().filter(|e| e.status == EventStatus::Queued).map(|e| e.next_run_ms).min())
    }

    async fn recover(&self) -> Result<u64, QueueError> {
        round_trip().await;
        self.write(|s| {
            let running = s.by_id.values_mut().filter(|e| e.status == EventStatus::Running);
            Ok(running.map(|e| e.status = EventStatus::Queued).count() as u64)
        })
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        round_trip().await;
        Ok(self.events().unfinished() as u64)
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        round_trip().await;
        let s = self.events();
        let mut by_function: BTreeMap<&str, QueueStats> = BTreeMap::new();
        for e in s.by_id.values() {
            let st = by_function
                .entry(&e.event.function)
                .or_insert_with(|| QueueStats { function: e.event.function.clone(), ..QueueStats::default() });
            match e.status {
                EventStatus::Queued => {
                    st.queued += 1;
                    st.oldest_queued_ms = Some(st.oldest_queued_ms.map_or(e.event.now_ms, |t| t.min(e.event.now_ms)));
                }
                EventStatus::Running => st.running += 1,
                EventStatus::DeadLettered => st.dead_lettered += 1,
                EventStatus::Succeeded | EventStatus::Failed => {}
            }
        }
        Ok(by_function.into_values().collect())
    }

    async fn get(&self, id: &str) -> Result<Option<EventView>, QueueError> {
        round_trip().await;
        Ok(self.events().by_id.get(id).map(Stored::view))
    }

    async fn list(
        &self,
        status: Option<EventStatus>,
        function: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventView>, QueueError> {
        round_trip().await;
        let s = self.events();
        let mut found: Vec<&Stored> = s
            .by_id
            .values()
            .filter(|e| status.is_none_or(|st| e.status == st) && function.is_none_or(|f| e.event.function == f))
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse((e.event.now_ms, e.seq)));
        Ok(found.into_iter().take(limit.max(1) as usize).map(Stored::view).collect())
    }

    async fn redrive(&self, ids: &[String], function: Option<&str>, now_ms: u64) -> Result<u64, QueueError> {
        round_trip().await;
        self.write(|s| {
            let chosen = |e: &Stored| {
                e.status == EventStatus::DeadLettered
                    && if ids.is_empty() {
                        function.is_none_or(|f| e.event.function == f)
                    } else {
                        ids.contains(&e.event.id)
                    }
            };
            let mut n = 0;
            for e in s.by_id.values_mut().filter(|e| chosen(e)) {
                e.status = EventStatus::Queued;
                (e.attempts, e.function_errors, e.platform_failures) = (0, 0, 0);
                (e.next_run_ms, e.event.now_ms, e.reason) = (now_ms, now_ms, None);
                n += 1;
            }
            Ok(n)
        })
    }

    async fn purge(&self, function: Option<&str>) -> Result<u64, QueueError> {
        round_trip().await;
        self.write(|s| {
            let before = s.by_id.len();
            s.by_id.retain(|_, e| {
                !(e.status == EventStatus::DeadLettered && function.is_none_or(|f| e.event.function == f))
            });
            Ok((before - s.by_id.len()) as u64)
        })
    }

    async fn fire_slot(&self, schedule_key: &str, slot_ms: u64, event: NewEvent) -> Result<bool, QueueError> {
        round_trip().await;
        self.write(|s| {
            let fired = s.insert(event, EventStatus::Queued);
            let last = s.slots.entry(schedule_key.to_owned()).or_insert(slot_ms);
            *last = (*last).max(slot_ms);
            Ok(fired)
        })
    }

    async fn last_slot(&self, schedule_key: &str) -> Result<Option<u64>, QueueError> {
        round_trip().await;
        Ok(self.events().slots.get(schedule_key).copied())
    }

    async fn skip_to(&self, schedule_key: &str, slot_ms: u64) -> Result<(), QueueError> {
        round_trip().await;
        self.write(|s| {
            let last = s.slots.entry(schedule_key.to_owned()).or_insert(slot_ms);
            *last = (*last).max(slot_ms);
            Ok(())
        })
    }
}

/// What one attempt of a scripted function does.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Succeed with this response body.
    Succeed(&'static str),
    /// Raise an error (`{"errorType":"Error","errorMessage":"boom"}`).
    FunctionError,
    /// Fail before the function runs.
    PlatformError,
    /// Every instance busy at `max_instances`.
    Throttle,
    /// Succeed with the body this makes of the payload.
    Answer(fn(&[u8]) -> String),
}

/// What a function does on each attempt of an event: the n-th attempt plays `steps[n - 1]`, and
/// the last step repeats (with `per_call`: the n-th call of the function, whatever its event,
/// as for queue batches, each a new request). Each attempt takes `delay`.
#[derive(Clone, Debug)]
pub struct Script {
    pub steps: Vec<Step>,
    pub delay: Duration,
    pub per_call: bool,
}

impl Script {
    pub fn always(step: Step) -> Script {
        Script { steps: vec![step], delay: Duration::ZERO, per_call: false }
    }

    /// These steps, one per call of the function.
    pub fn calls(steps: Vec<Step>) -> Script {
        Script { steps, delay: Duration::ZERO, per_call: true }
    }

    pub fn taking(self, delay: Duration) -> Script {
        Script { delay, ..self }
    }
}

/// One invocation the fake dispatcher received.
#[derive(Clone, Debug)]
pub struct Call {
    pub function: String,
    pub request_id: String,
    pub payload: Bytes,
    pub at: Instant,
}

/// More attempts of one event than any test expects.
const MAX_ATTEMPTS: usize = 1000;

/// A [`Dispatch`] that plays each function's [`Script`] and remembers every call.
pub struct FakeDispatch {
    scripts: HashMap<String, Script>,
    calls: Mutex<Vec<Call>>,
    /// Invocations running now, and the most that ever ran at once.
    running: Mutex<(usize, usize)>,
}

impl FakeDispatch {
    pub fn new(scripts: impl IntoIterator<Item = (String, Script)>) -> FakeDispatch {
        FakeDispatch {
            scripts: scripts.into_iter().collect(),
            calls: Mutex::new(Vec::new()),
            running: Mutex::default(),
        }
    }

    /// The most invocations that ran at once.
    pub fn peak(&self) -> usize {
        self.running.lock().unwrap().1
    }

    pub fn calls(&self, function: &str) -> Vec<Call> {
        self.calls.lock().unwrap().iter().filter(|c| c.function == function).cloned().collect()
    }
}

#[async_trait]
impl Dispatch for FakeDispatch {
    async fn invoke(
        &self,
        function: Arc<FunctionVersion>,
        invocation: Invocation,
    ) -> Result<InvokeResult, DispatchError> {
        let name = function.spec.name.clone();
        let script = self.scripts.get(&name).unwrap_or_else(|| panic!("no script for {name}"));
        let id = invocation.request_id;
        let payload = invocation.payload;
        let (earlier, before) = {
            let mut calls = self.calls.lock().unwrap();
            let earlier = calls.iter().filter(|c| c.request_id == id).count();
            let before = calls.iter().filter(|c| c.function == name).count();
            let (function, payload, at) = (name.clone(), payload.clone(), Instant::now());
            calls.push(Call { function, request_id: id.clone(), payload, at });
            (earlier, before)
        };
        // An engine that retries without waiting never lets paused time advance, so a test
        // waiting for a state would hang instead of failing: stop such an event here (the panic
        // ends the engine's task for it, the event stays running, and the test's wait times out).
        assert!(earlier < MAX_ATTEMPTS, "event {id} was attempted {MAX_ATTEMPTS} times");
        {
            let mut running = self.running.lock().unwrap();
            running.0 += 1;
            running.1 = running.1.max(running.0);
        }
        tokio::time::sleep(script.delay).await;
        self.running.lock().unwrap().0 -= 1;
        let n = if script.per_call { before } else { earlier };
        let step = script.steps.get(n).or(script.steps.last()).copied().unwrap_or(Step::Succeed("null"));
        let outcome = match step {
            Step::Succeed(body) => InvokeOutcome::Success(Bytes::from_static(body.as_bytes())),
            Step::Answer(f) => InvokeOutcome::Success(Bytes::from(f(&payload))),
            Step::FunctionError => InvokeOutcome::FunctionError {
                kind: FunctionErrorKind::Unhandled,
                error_type: "Error".into(),
                error_message: "boom".into(),
                body: Bytes::from_static(br#"{"errorType":"Error","errorMessage":"boom"}"#),
            },
            Step::PlatformError => return Err(DispatchError::Platform("no capacity".into())),
            Step::Throttle => {
                return Err(DispatchError::Throttled { name, max_instances: 1, retry_after: Duration::from_secs(1) })
            }
        };
        Ok(InvokeResult {
            outcome,
            duration: script.delay,
            cold: None,
            max_memory_mb: 0,
            log: String::new(),
            instance_id: "fake".into(),
            http: None,
            stream: None,
        })
    }
}

/// A [`Resolver`] with fixed function versions and schedules, and triggers a test may change
/// (a redeploy).
pub struct FakeResolver {
    pub functions: HashMap<String, Arc<FunctionVersion>>,
    pub schedules: Vec<ScheduleSpec>,
    pub triggers: Mutex<Vec<TriggerSpec>>,
}

impl Resolver for FakeResolver {
    fn function(&self, name: &str, _qualifier: Option<&str>) -> Option<Arc<FunctionVersion>> {
        self.functions.get(name).cloned()
    }

    fn schedules(&self) -> Vec<ScheduleSpec> {
        self.schedules.clone()
    }

    fn triggers(&self) -> Vec<TriggerSpec> {
        self.triggers.lock().unwrap().clone()
    }
}

/// Version "1" of a function with `policy`; only the name, `max_instances` (which sets its
/// share) and the policy matter to the engine.
pub fn version(name: &str, max_instances: u32, policy: AsyncPolicy) -> Arc<FunctionVersion> {
    let spec = FunctionSpec {
        name: name.to_owned(),
        runtime: RuntimeKind::Node,
        handler: "index.handler".into(),
        code: ".".into(),
        memory_mb: 128,
        timeout: Duration::from_secs(3),
        cpu_ms: None,
        env: BTreeMap::new(),
        min_instances: 0,
        max_instances,
        keep_alive: Duration::from_secs(60),
        max_queued: 10,
        queue_timeout: Duration::from_secs(1),
        async_policy: policy,
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
        version: "1".into(),
        code_digest: "0".repeat(64),
        code_path: "/nonexistent".into(),
        key_cache: Default::default(),
    })
}
