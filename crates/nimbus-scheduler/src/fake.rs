//! A scripted `Runtime` for the scheduler's unit tests, and helpers to build what they need.
//!
//! Starts take `start_delay` (on tokio's clock, so a paused test clock makes them exact; a
//! function's env `START_DELAY_MS` overrides it) and fail with `init_error` when one is set. What an invocation does is chosen by its payload:
//! `ok` (or anything unlisted) answers after `invoke_time`; `crash` dies after `invoke_time`
//! (state `Dead`, `InstanceError::Crashed`); `fail` returns a function error; `timeout`,
//! `too-large`, `platform`, `lost` (`lost-late`: after `invoke_time`; `lost-once`: only the
//! first time) and `panic` take the other failure paths. Everything that happens is counted in
//! [`Counters`], with watch channels so tests wait for an event instead of sleeping for it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::{
    ColdStart, FunctionErrorKind, FunctionSpec, FunctionVersion, Instance, InstanceBusy, InstanceError, InstanceState,
    Invocation, InvocationRecord, InvokeOutcome, InvokeResult, Recorder, Runtime, RuntimeKind, StartError, Trigger,
};
use tokio::sync::watch;

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A `provided` function with generous limits; `tweak` sets what a test is about.
pub(crate) fn function(name: &str, tweak: impl FnOnce(&mut FunctionSpec)) -> Arc<FunctionVersion> {
    let mut spec = FunctionSpec {
        name: name.to_owned(),
        runtime: RuntimeKind::Provided,
        handler: "handler".into(),
        code: ".".into(),
        memory_mb: 128,
        timeout: secs(30),
        cpu_ms: None,
        env: BTreeMap::new(),
        min_instances: 0,
        max_instances: 4,
        keep_alive: secs(600),
        max_queued: 1000,
        queue_timeout: secs(60),
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
    tweak(&mut spec);
    Arc::new(FunctionVersion {
        spec,
        version: "1".into(),
        code_digest: format!("digest-of-{name}"),
        code_path: PathBuf::from("/nonexistent"),
        key_cache: Default::default(),
    })
}

/// An invocation whose payload tells the fake what to do.
pub(crate) fn invocation(request_id: &str, payload: &'static str) -> Invocation {
    Invocation {
        request_id: request_id.to_owned(),
        payload: Bytes::from_static(payload.as_bytes()),
        timeout: secs(3),
        trace_id: String::new(),
        client_context: None,
        trigger: Trigger::Invoke,
        received_at: std::time::Instant::now(),
        received_wall: SystemTime::now(),
        http: None,
    }
}

/// Keeps every record (and busy period), for tests that check what was recorded.
#[derive(Default)]
pub(crate) struct Records(Mutex<Vec<InvocationRecord>>, Mutex<Vec<InstanceBusy>>);

impl Records {
    pub(crate) fn busy_periods(&self) -> Vec<InstanceBusy> {
        self.1.lock().unwrap().clone()
    }

    pub(crate) fn all(&self) -> Vec<InvocationRecord> {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn of(&self, request_id: &str) -> Vec<InvocationRecord> {
        self.all().into_iter().filter(|r| r.request_id == request_id).collect()
    }
}

impl Recorder for Records {
    fn record(&self, record: InvocationRecord) {
        self.0.lock().unwrap().push(record);
    }

    fn instance_busy(&self, busy: InstanceBusy) {
        self.1.lock().unwrap().push(busy);
    }
}

/// The fake runtime's settings.
#[derive(Default)]
pub(crate) struct Fake {
    pub start_delay: Duration,
    pub invoke_time: Duration,
    /// Set: every start fails with it (after `start_delay`).
    pub init_error: Option<StartError>,
    /// How long `shutdown` takes (a process runtime's SIGTERM grace).
    pub shutdown_time: Duration,
}

impl Fake {
    pub(crate) fn runtime(self) -> (Arc<FakeRuntime>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (Arc::new(FakeRuntime { fake: self, counters: counters.clone() }), counters)
    }
}

pub(crate) struct FakeRuntime {
    fake: Fake,
    counters: Arc<Counters>,
}

/// What the fake saw. `starts` counts starts begun; `ready` those that returned an instance.
#[derive(Default)]
pub(crate) struct Counters {
    starts: watch::Sender<u32>,
    ready: watch::Sender<u32>,
    shutdowns: watch::Sender<u32>,
    /// Instance ids in the order their starts succeeded.
    ids: Mutex<Vec<String>>,
    shutdowns_by_id: Mutex<HashMap<String, u32>>,
    /// Instances dropped without `shutdown`: a leak (a process left running).
    dropped_unstopped: watch::Sender<u32>,
    kill_switches: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Set once a `lost-once` invocation was lost: the next one succeeds.
    lost_once: AtomicBool,
    /// The most invocations one instance ran at once.
    peak_in_flight: AtomicU32,
}

impl Counters {
    pub(crate) fn starts(&self) -> u32 {
        *self.starts.borrow()
    }

    pub(crate) fn ready(&self) -> u32 {
        *self.ready.borrow()
    }

    pub(crate) fn shutdowns(&self) -> u32 {
        *self.shutdowns.borrow()
    }

    pub(crate) fn shutdowns_of(&self, id: &str) -> u32 {
        self.shutdowns_by_id.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    pub(crate) fn leaked(&self) -> u32 {
        *self.dropped_unstopped.borrow()
    }

    /// Instances started and not shut down.
    pub(crate) fn live(&self) -> u32 {
        self.ready() - self.shutdowns()
    }

    pub(crate) fn peak_in_flight(&self) -> u32 {
        self.peak_in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }

    pub(crate) async fn wait_starts(&self, n: u32) {
        reach(&self.starts, n, "starts").await;
    }

    pub(crate) async fn wait_ready(&self, n: u32) {
        reach(&self.ready, n, "ready").await;
    }

    pub(crate) async fn wait_shutdowns(&self, n: u32) {
        reach(&self.shutdowns, n, "shutdowns").await;
    }

    /// Make instance `id` die while it sits idle (its process exited on its own).
    pub(crate) fn kill(&self, id: &str) {
        self.kill_switches.lock().unwrap()[id].store(true, Ordering::SeqCst);
    }
}

/// Wait until a counter reaches `n`. Bounded, so a broken pool fails the test instead of hanging
/// it; on the paused clock the hour passes in no real time.
async fn reach(counter: &watch::Sender<u32>, n: u32, what: &str) {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(secs(3600), rx.wait_for(|v| *v >= n)).await.is_ok();
    assert!(reached, "{what} stayed at {} instead of reaching {n}", *counter.borrow());
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, f: Arc<FunctionVersion>, id: String) -> Result<Box<dyn Instance>, StartError> {
        self.counters.starts.send_modify(|n| *n += 1);
        let delay = f.spec.env.get("START_DELAY_MS").map_or(self.fake.start_delay, |v| ms(v.parse().unwrap()));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(e) = &self.fake.init_error {
            return Err(e.clone());
        }
        let dead = Arc::new(AtomicBool::new(false));
        self.counters.kill_switches.lock().unwrap().insert(id.clone(), dead.clone());
        self.counters.ids.lock().unwrap().push(id.clone());
        self.counters.ready.send_modify(|n| *n += 1);
        Ok(Box::new(FakeInstance {
            id,
            dead,
            invoke_time: self.fake.invoke_time,
            shutdown_time: self.fake.shutdown_time,
            counters: self.counters.clone(),
            stopped: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
        }))
    }
}

struct FakeInstance {
    id: String,
    dead: Arc<AtomicBool>,
    invoke_time: Duration,
    shutdown_time: Duration,
    counters: Arc<Counters>,
    stopped: AtomicBool,
    in_flight: AtomicU32,
}

impl FakeInstance {
    async fn work(&self, d: Duration) {
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn die(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Instance for FakeInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn cold_start(&self) -> ColdStart {
        ColdStart { init: ms(100), instance_start: ms(10) }
    }

    fn take_init_log(&self) -> String {
        String::new()
    }

    fn state(&self) -> InstanceState {
        if self.dead.load(Ordering::SeqCst) {
            InstanceState::Dead
        } else {
            InstanceState::Ready
        }
    }

    async fn invoke(&self, inv: Invocation) -> Result<InvokeResult, InstanceError> {
        assert_eq!(self.state(), InstanceState::Ready, "the pool handed out a dead instance");
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        // Counted down on every path, a panic included.
        struct Out<'a>(&'a AtomicU32);
        impl Drop for Out<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _out = Out(&self.in_flight);
        self.run(inv).await
    }

    async fn shutdown(self: Arc<Self>) {
        assert_eq!(self.in_flight.load(Ordering::SeqCst), 0, "an instance stopped with invocations running");
        self.stopped.store(true, Ordering::SeqCst);
        self.work(self.shutdown_time).await;
        *self.counters.shutdowns_by_id.lock().unwrap().entry(self.id.clone()).or_default() += 1;
        self.counters.shutdowns.send_modify(|n| *n += 1);
    }
}

impl FakeInstance {
    async fn run(&self, inv: Invocation) -> Result<InvokeResult, InstanceError> {
        match std::str::from_utf8(&inv.payload).unwrap() {
            "crash" => {
                self.work(self.invoke_time).await;
                self.die();
                Err(InstanceError::Crashed { detail: "exit status 1".into(), log: "dying\n".into() })
            }
            "timeout" => {
                self.work(inv.timeout).await;
                self.die();
                Err(InstanceError::Timeout { timeout: inv.timeout, log: String::new() })
            }
            "too-large" => {
                self.die();
                Err(InstanceError::ResponseTooLarge { size: 7 << 20, limit: 6 << 20, log: String::new() })
            }
            "platform" => Err(InstanceError::Platform("the event could not be handed over".into())),
            "lost" | "lost-late" => {
                if inv.payload.as_ref() == b"lost-late" {
                    self.work(self.invoke_time).await;
                }
                self.die();
                Err(InstanceError::Lost { detail: "the runtime exited while idle".into() })
            }
            "lost-once" if !self.counters.lost_once.swap(true, Ordering::SeqCst) => {
                self.die();
                Err(InstanceError::Lost { detail: "the runtime exited while idle".into() })
            }
            "panic" => panic!("the fake instance panicked"),
            "fail" => Ok(self.result(InvokeOutcome::FunctionError {
                kind: FunctionErrorKind::Unhandled,
                error_type: "Error".into(),
                error_message: "boom".into(),
                body: Bytes::from_static(b"{}"),
            })),
            "talk" => {
                let mut r = self.result(InvokeOutcome::Success(inv.payload));
                r.log = "line 1\nline 2 without a newline".into();
                Ok(r)
            }
            _ => {
                self.work(self.invoke_time).await;
                Ok(self.result(InvokeOutcome::Success(inv.payload)))
            }
        }
    }
}

impl FakeInstance {
    fn result(&self, outcome: InvokeOutcome) -> InvokeResult {
        InvokeResult {
            outcome,
            duration: self.invoke_time,
            cold: None,
            max_memory_mb: 1,
            log: String::new(),
            instance_id: self.id.clone(),
            http: None,
            stream: None,
        }
    }
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::SeqCst) {
            self.counters.dropped_unstopped.send_modify(|n| *n += 1);
        }
    }
}
