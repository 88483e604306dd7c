//! One function version's instances. See the crate docs for the design.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nimbus_core::nodes::LiveNodes;
use nimbus_core::policy::{self, Admission, PoolCounts, ScaleDecision, Slots};
use nimbus_core::{
    ColdStart, DispatchError, FunctionVersion, Instance, InstanceBusy, InstanceState, Recorder, Runtime, StartError,
};
use tokio::sync::{oneshot, Notify};
// tokio's clock, not std's: the same in production, and tests can pause and advance it to
// check keep-alive and queue timeouts deterministically.
use tokio::time::Instant;

/// One invocation's hold on an instance, and whether it is a cold start: true only for the
/// first request that waited for the instance to start. An instance parked idle first
/// (pre-warmed for `min_instances`, or its requester gave up) serves warm.
struct Slot {
    instance: Arc<dyn Instance>,
    cold: bool,
}

struct Idle {
    instance: Arc<dyn Instance>,
    since: Instant,
    /// The thread that parked it ([`nimbus_core::shards::thread`]): its caches hold the
    /// instance's state (a wasm instance's store and memory) until another thread takes it.
    thread: usize,
}

impl Idle {
    fn new(instance: Arc<dyn Instance>) -> Idle {
        Idle { instance, since: Instant::now(), thread: nimbus_core::shards::thread() }
    }
}

/// How many of the most recently idle instances a thread looks through for one it parked
/// itself before it takes the most recent one.
const AFFINE_SEARCH: usize = 8;

/// Which idle instance to take: the most recently parked of the last [`AFFINE_SEARCH`] that
/// this thread parked, else the most recent. An instance moving between cores brings its state
/// along line by line: its store, its guest's stack and heap, its host-side tables.
fn affine(idle: &[Idle]) -> Option<usize> {
    let me = nimbus_core::shards::thread();
    let recent = idle.len().saturating_sub(AFFINE_SEARCH);
    let mine = idle.iter().skip(recent).rposition(|i| i.thread == me).map(|i| recent + i);
    mine.or(idle.len().checked_sub(1))
}

/// A busy instance's key: its address, unique while the busy map holds the instance.
fn key(instance: &Arc<dyn Instance>) -> usize {
    Arc::as_ptr(instance).cast::<()>().addr()
}

/// An instance running at least one invocation (`concurrency` at most).
struct Busy {
    instance: Arc<dyn Instance>,
    in_flight: u32,
    /// When it went from no invocation to one: the start of its busy period (billing).
    since: Instant,
}

enum Grant {
    Instance(Slot),
    InitFailed(StartError),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

/// What admission gave a request.
enum Admitted {
    Now(Lease),
    /// Queued as waiter `u64`; the grant comes through the receiver.
    Queued(oneshot::Receiver<Grant>, u64),
}

#[derive(Default)]
struct State {
    idle: Vec<Idle>,
    /// By [`key`]: the instance's address, not its id, which would be a string allocated,
    /// hashed and freed twice an invocation.
    busy: foldhash::HashMap<usize, Busy>,
    starting: u32,
    /// Instances handed to `shutdown` that have not finished it: server shutdown waits for
    /// these too, or a runtime's stop (a process's SIGTERM grace) would be cut short.
    stopping: u32,
    waiters: VecDeque<Waiter>,
    retired: bool,
    /// When the last instance start failed: pre-warming backs off for a while after it, so a
    /// function whose init always fails is not restarted on every housekeeping tick.
    start_failed_at: Option<Instant>,
}

impl State {
    fn counts(&self) -> PoolCounts {
        PoolCounts {
            idle: self.idle.len() as u32,
            busy: self.busy.len() as u32,
            starting: self.starting,
            waiting: self.waiters.len() as u32,
        }
    }

    /// Free invocation slots on running instances (a dead one has none).
    fn slots(&self, concurrency: u32) -> Slots {
        let mut free = (self.idle.len() as u32).saturating_mul(concurrency);
        if concurrency > 1 {
            for b in self.busy.values() {
                if b.instance.state() == InstanceState::Ready {
                    free = free.saturating_add(concurrency.saturating_sub(b.in_flight));
                }
            }
        }
        Slots { free, concurrency }
    }

    fn in_flight(&self) -> u32 {
        self.busy.values().map(|b| b.in_flight).sum()
    }
}

/// Why no instance could be had.
pub(crate) enum AcquireError {
    Dispatch(DispatchError),
    Init { error_type: String, message: String, log: String },
}

pub struct Pool {
    function: Arc<FunctionVersion>,
    runtime: Arc<dyn Runtime>,
    /// Where busy periods of instances go (functions with `concurrency > 1` are billed by them).
    recorder: Arc<dyn Recorder>,
    state: Mutex<State>,
    next_id: AtomicU64,
    cold_starts: AtomicU64,
    /// Signalled whenever the pool may have become empty (for shutdown).
    changed: Notify,
    /// The function's history, when its keep-alive is adaptive (`crate::adaptive`).
    adaptive: Option<Arc<crate::adaptive::Activity>>,
    /// The live nodes: this node's share of `max_instances` and `min_instances` follows them.
    live: LiveNodes,
}

/// One instance as the management API shows it.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub id: String,
    pub pid: Option<u32>,
    pub state: InstanceStatus,
    /// Invocations running on it now (up to the function's `concurrency`).
    pub in_flight: u32,
}

/// Whether an instance is waiting for work or running an invocation. Serialised in lowercase
/// (`"idle"`, `"busy"`), as the management API has always shown it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    Idle,
    Busy,
}

/// A pool as the management API shows it.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub function: String,
    pub version: String,
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    pub waiting: u32,
    /// The function's `max_instances` (its concurrency limit); in a cluster, this node's share
    /// of it.
    pub max_instances: u32,
    pub cold_starts: u64,
    /// The runtime has something made ahead for the next start (a prepared sandbox).
    pub prepared: bool,
    pub instances: Vec<InstanceInfo>,
    /// The adaptive keep-alive's windows now (`keep_alive = "adaptive"` only).
    pub adaptive: Option<crate::adaptive::AdaptiveStatus>,
    /// Invocations running now, over all instances.
    pub in_flight: u32,
    /// The function's `concurrency` (invocations per instance).
    pub concurrency: u32,
}

impl Pool {
    pub(crate) fn new(
        function: Arc<FunctionVersion>,
        runtime: Arc<dyn Runtime>,
        adaptive: Option<Arc<crate::adaptive::Activity>>,
        recorder: Arc<dyn Recorder>,
        live: LiveNodes,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            function,
            runtime,
            recorder,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            cold_starts: AtomicU64::new(0),
            changed: Notify::new(),
            adaptive,
            live,
        });
        pool.housekeep();
        tokio::spawn(housekeeping(Arc::downgrade(&pool)));
        pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        let (rx, waiter_id) = match self.admit()? {
            Admitted::Now(lease) => return Ok(lease),
            Admitted::Queued(rx, waiter_id) => (rx, waiter_id),
        };
        match self.wait(rx, waiter_id).await? {
            Grant::Instance(slot) => Ok(Lease { pool: self.clone(), slot: Some(slot) }),
            Grant::InitFailed(StartError::InitFailed { error_type, message, log }) => {
                Err(AcquireError::Init { error_type, message, log })
            }
            Grant::InitFailed(StartError::Platform(msg)) => Err(AcquireError::Dispatch(DispatchError::Platform(msg))),
        }
    }

    /// Apply admission under the lock: an idle instance now, or a place in the queue (starting
    /// one more instance first when the policy says so), or a refusal.
    fn admit(self: &Arc<Self>) -> Result<Admitted, AcquireError> {
        let spec = &self.function.spec;
        let mut st = self.lock();
        if st.retired {
            return Err(AcquireError::Dispatch(DispatchError::ShuttingDown { name: spec.name.clone() }));
        }
        self.purge_dead(&mut st);
        let slots = st.slots(self.concurrency());
        match policy::admit_slots(st.counts(), slots, self.max_instances(), spec.max_queued) {
            Admission::UseIdle => {
                if let Some(slot) = self.take_slot(&mut st) {
                    return Ok(Admitted::Now(Lease { pool: self.clone(), slot: Some(slot) }));
                }
                return Err(AcquireError::Dispatch(DispatchError::Platform("idle instance vanished".into())));
            }
            Admission::Throttle => return Err(AcquireError::Dispatch(self.throttled())),
            Admission::StartAndWait => self.start_one(&mut st),
            Admission::Wait => {}
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        st.waiters.push_back(Waiter { id, tx });
        Ok(Admitted::Queued(rx, id))
    }

    /// This node's cap on the function's instances: all of `max_instances` alone, its share
    /// in a cluster (`nimbus_core::nodes::node_share`), read afresh at every decision.
    fn max_instances(&self) -> u32 {
        self.live.share(self.function.spec.max_instances)
    }

    /// What this node keeps warm of `min_instances` (its portion in a cluster), within its cap.
    fn min_instances(&self) -> u32 {
        self.live.portion(self.function.spec.min_instances).min(self.max_instances())
    }

    /// Invocations one instance runs at once.
    fn concurrency(&self) -> u32 {
        self.function.spec.concurrency.max(1)
    }

    /// A free slot for one invocation: on the busiest running instance that has one (so the
    /// others go idle and age out), else on a recently idle instance, this thread's if one is
    /// among the most recent ([`affine`]).
    fn take_slot(&self, st: &mut State) -> Option<Slot> {
        let c = self.concurrency();
        if c > 1 {
            let fullest = st
                .busy
                .values_mut()
                .filter(|b| b.in_flight < c && b.instance.state() == InstanceState::Ready)
                .max_by_key(|b| b.in_flight);
            if let Some(b) = fullest {
                b.in_flight += 1;
                return Some(Slot { instance: b.instance.clone(), cold: false });
            }
        }
        let idle = st.idle.remove(affine(&st.idle)?);
        let busy = Busy { instance: idle.instance.clone(), in_flight: 1, since: Instant::now() };
        st.busy.insert(key(&idle.instance), busy);
        Some(Slot { instance: idle.instance, cold: false })
    }

    /// `busy` has no invocation left: bill its busy period (functions with `concurrency > 1`).
    fn busy_ended(&self, busy: &Busy) {
        if self.concurrency() > 1 {
            self.recorder.instance_busy(InstanceBusy {
                function: self.function.spec.name.clone(),
                memory_mb: self.function.spec.memory_mb,
                end_ms: nimbus_core::ids::now_ms(),
                busy: busy.since.elapsed(),
            });
        }
    }

    /// Wait in the queue for a grant, at most `queue_timeout`.
    async fn wait(&self, mut rx: oneshot::Receiver<Grant>, waiter_id: u64) -> Result<Grant, AcquireError> {
        match tokio::time::timeout(self.function.spec.queue_timeout, &mut rx).await {
            Ok(Ok(g)) => Ok(g),
            Ok(Err(_)) => Err(AcquireError::Dispatch(DispatchError::Platform("the pool went away".into()))),
            Err(_) => self.give_up(waiter_id, rx),
        }
    }

    /// The queue wait timed out. Leave the queue, unless a grant was sent under the lock after
    /// the timer fired (another thread released an instance meanwhile): then it must be taken,
    /// or the instance would be dropped with the receiver, counted busy for ever.
    fn give_up(&self, waiter_id: u64, mut rx: oneshot::Receiver<Grant>) -> Result<Grant, AcquireError> {
        let mut st = self.lock();
        if let Some(pos) = st.waiters.iter().position(|w| w.id == waiter_id) {
            st.waiters.remove(pos);
            return Err(AcquireError::Dispatch(self.throttled()));
        }
        drop(st);
        rx.try_recv().map_err(|_| AcquireError::Dispatch(DispatchError::Platform("lost an instance grant".into())))
    }

    fn throttled(&self) -> DispatchError {
        let spec = &self.function.spec;
        DispatchError::Throttled {
            name: spec.name.clone(),
            max_instances: self.max_instances(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// Start one instance in the background; the caller holds the lock and has counted nothing.
    fn start_one(self: &Arc<Self>, st: &mut State) {
        st.starting += 1;
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        let id = format!("{:016x}", rand_u64());
        tokio::spawn(async move {
            let result = pool.runtime.start(pool.function.clone(), id).await;
            let mut st = pool.lock();
            st.starting = st.starting.saturating_sub(1);
            match result {
                Ok(instance) => pool.offer(&mut st, Arc::from(instance)),
                Err(e) => {
                    st.start_failed_at = Some(Instant::now());
                    tracing::warn!(function = %pool.function.spec.name, "instance failed to start: {e}");
                    // Fail the waiters this start was meant for: those that the instances still
                    // starting or busy cannot serve (at least one), so a broken function answers
                    // every caller at once instead of retrying init for each.
                    let others = st.starting + st.busy.len() as u32;
                    let fail = (st.waiters.len() as u32).saturating_sub(others).max(1);
                    for _ in 0..fail {
                        let Some(w) = st.waiters.pop_front() else { break };
                        let _ = w.tx.send(Grant::InitFailed(e.clone()));
                    }
                    pool.changed.notify_waiters();
                }
            }
        });
    }

    /// Hand a just-started instance to the first live waiters (up to `concurrency` of them; the
    /// first is its cold start), or park it idle.
    fn offer(self: &Arc<Self>, st: &mut State, instance: Arc<dyn Instance>) {
        let mut given = 0;
        while given < self.concurrency() {
            let Some(w) = st.waiters.pop_front() else { break };
            if w.tx.send(Grant::Instance(Slot { instance: instance.clone(), cold: given == 0 })).is_ok() {
                given += 1;
            }
        }
        if given > 0 {
            let busy = Busy { instance: instance.clone(), in_flight: given, since: Instant::now() };
            st.busy.insert(key(&instance), busy);
        } else if st.retired {
            self.stop(st, instance);
        } else {
            st.idle.push(Idle::new(instance));
        }
    }

    /// One invocation on `slot`'s instance ended: its slot goes to the first live waiter, and
    /// an instance left with no invocation goes idle (or stops, when dead or retired).
    fn release(self: &Arc<Self>, slot: Slot) {
        let mut st = self.lock();
        let at = key(&slot.instance);
        let dead = slot.instance.state() == InstanceState::Dead;
        drop(slot);
        let State { busy, waiters, .. } = &mut *st;
        let Some(b) = busy.get_mut(&at) else { return };
        b.in_flight = b.in_flight.saturating_sub(1);
        if !dead {
            while let Some(w) = waiters.pop_front() {
                if w.tx.send(Grant::Instance(Slot { instance: b.instance.clone(), cold: false })).is_ok() {
                    b.in_flight += 1;
                    return;
                }
            }
        }
        if b.in_flight > 0 {
            return;
        }
        let Some(b) = st.busy.remove(&at) else { return };
        self.busy_ended(&b);
        if dead {
            self.stop(&mut st, b.instance);
            // Requests queued behind the dead instance need a replacement.
            if !st.retired && st.starting < st.waiters.len() as u32 && st.counts().instances() < self.max_instances() {
                self.start_one(&mut st);
            }
            self.changed.notify_waiters();
        } else if st.retired {
            self.stop(&mut st, b.instance);
        } else {
            st.idle.push(Idle::new(b.instance));
        }
    }

    /// Apply the keep-alive policy once.
    fn housekeep(self: &Arc<Self>) {
        let spec = &self.function.spec;
        let mut st = self.lock();
        if st.retired {
            return;
        }
        self.purge_dead(&mut st);
        let now = Instant::now();
        let ages: Vec<Duration> = st.idle.iter().map(|i| now.duration_since(i.since)).collect();
        match self.scale_decision(st.counts(), &ages) {
            ScaleDecision::Hold => {}
            ScaleDecision::StartWarm(n) => {
                if st.start_failed_at.is_some_and(|t| now.duration_since(t) < WARM_RETRY_AFTER_FAILURE) {
                    return;
                }
                for _ in 0..n {
                    self.start_one(&mut st);
                }
            }
            ScaleDecision::Reclaim(n) => {
                // `idle` is used LIFO, so the front holds the longest idle.
                let n = (n as usize).min(st.idle.len());
                let reclaimed: Vec<Idle> = st.idle.drain(..n).collect();
                for idle in reclaimed {
                    tracing::debug!(function = %spec.name, instance = idle.instance.id(), "reclaiming idle instance");
                    self.stop(&mut st, idle.instance);
                }
            }
        }
    }

    /// The keep-alive decision: fixed, or adaptive from the function's history.
    fn scale_decision(&self, counts: PoolCounts, ages: &[Duration]) -> ScaleDecision {
        let spec = &self.function.spec;
        match &self.adaptive {
            None => policy::keep_alive(counts, ages, spec.keep_alive, self.min_instances()),
            Some(a) => a.decide(counts, ages, spec.keep_alive, self.min_instances()),
        }
    }

    /// An invocation of this pool's function begins (it ends when the result is dropped): the
    /// adaptive keep-alive learns the idle gaps from these.
    pub(crate) fn begin_call(&self) -> Option<crate::adaptive::Call> {
        self.adaptive.as_ref().map(|a| a.begin())
    }

    /// The pool's version is (still) deployed: let the runtime prepare ahead for it.
    pub(crate) fn live(&self) {
        self.runtime.live(&self.function);
    }

    /// Stop taking work: idle instances stop now, busy ones when released.
    pub(crate) fn retire(self: &Arc<Self>) {
        self.runtime.retire(&self.function);
        let mut st = self.lock();
        st.retired = true;
        for i in std::mem::take(&mut st.idle) {
            self.stop(&mut st, i.instance);
        }
        self.changed.notify_waiters();
    }

    /// Shut `instance` down in the background, counted in `stopping` until it has finished.
    fn stop(self: &Arc<Self>, st: &mut State, instance: Arc<dyn Instance>) {
        st.stopping += 1;
        let pool = self.clone();
        tokio::spawn(async move {
            instance.shutdown().await;
            let mut st = pool.lock();
            st.stopping = st.stopping.saturating_sub(1);
            pool.changed.notify_waiters();
        });
    }

    /// Remove instances that died while idle, so nobody is handed one.
    fn purge_dead(self: &Arc<Self>, st: &mut State) {
        if st.idle.iter().all(|i| i.instance.state() == InstanceState::Ready) {
            return;
        }
        let (alive, dead): (Vec<Idle>, Vec<Idle>) =
            std::mem::take(&mut st.idle).into_iter().partition(|i| i.instance.state() == InstanceState::Ready);
        st.idle = alive;
        for d in dead {
            self.stop(st, d.instance);
        }
    }

    pub(crate) async fn wait_empty(&self, deadline: Instant) {
        loop {
            let notified = self.changed.notified();
            {
                let st = self.lock();
                if st.busy.is_empty() && st.starting == 0 && st.idle.is_empty() && st.stopping == 0 {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    pub fn status(&self) -> PoolStatus {
        let st = self.lock();
        let c = st.counts();
        let mut instances: Vec<InstanceInfo> = st
            .idle
            .iter()
            .map(|i| InstanceInfo {
                id: i.instance.id().to_owned(),
                pid: i.instance.pid(),
                state: InstanceStatus::Idle,
                in_flight: 0,
            })
            .collect();
        instances.extend(st.busy.values().map(|b| InstanceInfo {
            id: b.instance.id().to_owned(),
            pid: b.instance.pid(),
            state: InstanceStatus::Busy,
            in_flight: b.in_flight,
        }));
        PoolStatus {
            function: self.function.spec.name.clone(),
            version: self.function.version.clone(),
            idle: c.idle,
            busy: c.busy,
            starting: c.starting,
            waiting: c.waiting,
            max_instances: self.max_instances(),
            cold_starts: self.cold_starts.load(Ordering::Relaxed),
            prepared: self.runtime.prepared(&self.function),
            instances,
            adaptive: self.adaptive.as_ref().map(|a| a.status(self.function.spec.keep_alive)),
            in_flight: st.in_flight(),
            concurrency: self.concurrency(),
        }
    }
}

/// How long pre-warming (`min_instances`) waits after a failed start before trying again.
/// Requests still start instances at once: they report the init error to their caller.
const WARM_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

async fn housekeeping(pool: std::sync::Weak<Pool>) {
    let tick = match pool.upgrade() {
        Some(p) => (p.function.spec.keep_alive / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(p) = pool.upgrade() else { return };
        if p.lock().retired {
            return;
        }
        p.housekeep();
    }
}

/// A slot of an instance on loan to one invocation; dropping it gives the slot back.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    slot: Option<Slot>,
}

impl Lease {
    /// Mark the start of an invocation: returns the cold-start info when the caller waited for
    /// this instance to start, and any output the instance wrote while initialising.
    pub(crate) fn begin(&mut self) -> (Option<ColdStart>, String) {
        let Some(slot) = self.slot.as_mut() else { return (None, String::new()) };
        let cold = std::mem::replace(&mut slot.cold, false).then(|| slot.instance.cold_start());
        (cold, slot.instance.take_init_log())
    }

    pub(crate) fn instance(&self) -> &dyn Instance {
        match self.slot.as_ref() {
            Some(s) => s.instance.as_ref(),
            None => unreachable_instance(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_instance() -> ! {
    // A lease holds its slot until dropped; `instance()` cannot run after drop.
    panic!("lease without an instance")
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.release(slot);
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    //! The two orders in which a queue timeout and a grant can meet. On tokio's current-thread
    //! test runtime the grant can never slip in between the timer firing and `give_up` taking
    //! the lock (it can on the multi-threaded runtime), so these call the steps in each order.

    use super::*;
    use crate::fake::{function, Fake};

    fn pool(fake: Fake) -> (Arc<Pool>, Arc<crate::fake::Counters>) {
        let (runtime, counters) = fake.runtime();
        (
            Pool::new(
                function("race", |s| s.max_instances = 1),
                runtime,
                None,
                Arc::new(crate::NullRecorder),
                LiveNodes::default(),
            ),
            counters,
        )
    }

    fn queue(pool: &Arc<Pool>) -> (oneshot::Receiver<Grant>, u64) {
        match pool.admit() {
            Ok(Admitted::Queued(rx, id)) => (rx, id),
            _ => panic!("expected to queue"),
        }
    }

    async fn lease(pool: &Arc<Pool>) -> Lease {
        match pool.acquire().await {
            Ok(lease) => lease,
            Err(_) => panic!("expected an instance"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_sent_just_before_the_waiter_gives_up_is_taken_not_lost() {
        let (pool, counters) = pool(Fake::default());
        let busy = lease(&pool).await;
        let (rx, waiter) = queue(&pool);
        // The instance is released to the waiter (grant sent, waiter out of the queue) …
        drop(busy);
        // … and only then does the waiter act on its expired timer.
        let grant = pool.give_up(waiter, rx);
        let Ok(Grant::Instance(slot)) = grant else { panic!("the grant must be taken") };
        let st = pool.status();
        assert_eq!((st.idle, st.busy, st.waiting), (0, 1, 0), "the waiter owns the instance");
        drop(Lease { pool: pool.clone(), slot: Some(slot) });
        assert_eq!((pool.status().idle, pool.status().busy), (1, 0));
        assert_eq!(counters.leaked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gave_up_leaves_the_queue_and_the_instance_goes_idle() {
        let (pool, counters) = pool(Fake::default());
        let busy = lease(&pool).await;
        let (rx, waiter) = queue(&pool);
        assert!(matches!(pool.give_up(waiter, rx), Err(AcquireError::Dispatch(DispatchError::Throttled { .. }))));
        assert_eq!(pool.status().waiting, 0, "a waiter that gave up no longer counts as waiting");
        drop(busy);
        let st = pool.status();
        assert_eq!((st.idle, st.busy, st.waiting), (1, 0, 0));
        assert_eq!(counters.leaked(), 0);
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A thread that asks for an instance again gets back the one it parked, not the one
    /// another thread parked after it: the instance's state is still in its core's caches.
    #[test]
    fn a_thread_gets_back_the_instance_it_parked_rather_than_the_latest() {
        let (runtime, counters) = Fake::default().runtime();
        let rt = current_thread();
        let _in_rt = rt.enter();
        let pool = Pool::new(
            function("affine", |s| s.max_instances = 2),
            runtime,
            None,
            Arc::new(crate::NullRecorder),
            LiveNodes::default(),
        );
        let mine = rt.block_on(lease(&pool));
        let my_id = mine.instance().id().to_owned();
        let (got_tx, got) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let pool = &pool;
            s.spawn(move || {
                let rt = current_thread();
                let other = rt.block_on(lease(pool));
                got_tx.send(other.instance().id().to_owned()).unwrap();
                release_rx.recv().unwrap();
                drop(other);
            });
            let other_id = got.recv().unwrap();
            assert_ne!(other_id, my_id, "two instances run at once");
            drop(mine);
            release.send(()).unwrap();
        });
        // Idle: this thread's instance, then the other thread's, the most recent.
        assert_eq!(pool.status().idle, 2);
        let again = rt.block_on(lease(&pool));
        assert_eq!(again.instance().id(), my_id);
        drop(again);
        assert_eq!(counters.leaked(), 0);
    }
}
