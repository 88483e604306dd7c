//! The scheduler's concurrency core against the scripted runtime in `fake.rs`, on tokio's
//! paused clock: starts, waits and timeouts happen at exact virtual instants, so every test is
//! deterministic and takes no real time.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_core::{Dispatch, DispatchError, FunctionVersion, InvokeResult, Runtime, RuntimeKind, StartError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fake::{function, invocation, ms, secs, Counters, Fake, Records};
use crate::Scheduler;

struct Harness {
    scheduler: Scheduler,
    counters: Arc<Counters>,
    records: Arc<Records>,
}

fn harness(fake: Fake) -> Harness {
    harness_for(fake, &[RuntimeKind::Provided])
}

/// The fake as the runtime of each of `kinds`: it stands in for a runtime in another process
/// (`provided`, the default of `fake::function`) and for one in nimbus's own (wasm, whose
/// invocations get their first poll on the caller's task).
fn harness_for(fake: Fake, kinds: &[RuntimeKind]) -> Harness {
    let (runtime, counters) = fake.runtime();
    let records = Arc::new(Records::default());
    let runtime = runtime as Arc<dyn Runtime>;
    let runtimes = kinds.iter().map(|k| (*k, runtime.clone())).collect::<HashMap<_, _>>();
    Harness { scheduler: Scheduler::new(runtimes, records.clone()), counters, records }
}

impl Harness {
    /// Start one invocation in the background, as a gateway request would.
    fn call(
        &self,
        f: &Arc<FunctionVersion>,
        id: &str,
        payload: &'static str,
    ) -> JoinHandle<Result<InvokeResult, DispatchError>> {
        let (s, f, inv) = (self.scheduler.clone(), f.clone(), invocation(id, payload));
        tokio::spawn(async move { s.invoke(f, inv).await })
    }

    fn status(&self) -> crate::PoolStatus {
        let mut all = self.scheduler.status();
        assert_eq!(all.len(), 1, "one pool expected");
        all.remove(0)
    }
}

fn init_error() -> StartError {
    StartError::InitFailed {
        error_type: "Runtime.ImportModuleError".into(),
        message: "No module named 'handler'".into(),
        log: "Traceback (most recent call last)\n".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_to_a_cold_function_starts_max_instances_and_serves_every_request() {
    let h = harness(Fake { start_delay: ms(200), invoke_time: ms(50), ..Fake::default() });
    let f = function("burst", |s| s.max_instances = 4);
    let calls: Vec<_> = (0..200).map(|i| h.call(&f, &format!("r{i}"), "ok")).collect();
    let mut used = std::collections::HashSet::new();
    for c in calls {
        let r = c.await.unwrap().expect("every request of the burst is served");
        used.insert(r.instance_id);
    }
    assert_eq!(h.counters.starts(), 4, "coalescing: 200 requests share the 4 instances max_instances allows");
    assert_eq!(used.len(), 4);
    // Each started instance went straight to a request that waited for it: exactly 4 cold.
    assert_eq!(h.records.all().iter().filter(|r| r.cold).count(), 4);
    let st = h.status();
    assert_eq!((st.idle, st.busy, st.starting, st.waiting), (4, 0, 0, 0));
    assert_eq!(st.cold_starts, 4);
}

/// In a cluster a node caps a function at its share of `max_instances`, and the share follows
/// the live nodes: 3 of 10 for the last of three nodes, all 10 again once it is alone.
#[tokio::test(start_paused = true)]
async fn a_cluster_node_starts_its_share_of_max_instances() {
    let h = harness(Fake { start_delay: ms(200), invoke_time: ms(50), ..Fake::default() });
    let live = h.scheduler.live_nodes();
    live.set(3, 2);
    let f = function("shared", |s| s.max_instances = 10);
    let calls: Vec<_> = (0..100).map(|i| h.call(&f, &format!("r{i}"), "ok")).collect();
    for c in calls {
        c.await.unwrap().expect("every request is served by the node's share");
    }
    assert_eq!(h.counters.starts(), 3);
    assert_eq!(h.status().max_instances, 3);
    live.set(1, 0);
    let calls: Vec<_> = (0..100).map(|i| h.call(&f, &format!("s{i}"), "ok")).collect();
    for c in calls {
        c.await.unwrap().expect("served");
    }
    assert_eq!(h.counters.starts(), 10, "alone again, the node may start all of max_instances");
}

/// The queue timeout of a waiting request falls 1 ms before, exactly at, or 1 ms after the
/// instance it waits for is released. Before: it is throttled and the instance goes idle.
/// After: it is served. At the same instant either may happen, but never both and never
/// neither: the instance ends up idle or with the request, and nothing leaks.
#[tokio::test(start_paused = true)]
async fn a_queue_timeout_racing_a_release_leaves_the_instance_with_exactly_one_owner() {
    for (offset_ms, expect_served) in [(-1i64, Some(false)), (0, None), (1, Some(true))] {
        let h = harness(Fake { invoke_time: ms(1000), ..Fake::default() });
        let queue_timeout = ms(1000u64.saturating_add_signed(offset_ms));
        let f = function("race", |s| {
            s.max_instances = 1;
            s.queue_timeout = queue_timeout;
        });
        let first = h.call(&f, "first", "ok");
        h.counters.wait_ready(1).await;
        // The clock is paused: the second request queues at the instant the first one's
        // invocation began, so the two deadlines are exactly `offset_ms` apart.
        let second = h.call(&f, "second", "ok");
        first.await.unwrap().expect("the first request is served");
        let served = match second.await.unwrap() {
            Ok(_) => true,
            Err(DispatchError::Throttled { .. }) => false,
            Err(e) => panic!("offset {offset_ms} ms: unexpected {e}"),
        };
        if let Some(want) = expect_served {
            assert_eq!(served, want, "offset {offset_ms} ms");
        }
        let st = h.status();
        assert_eq!((st.idle, st.busy, st.waiting), (1, 0, 0), "offset {offset_ms} ms: the instance is idle again");
        assert_eq!(h.counters.starts(), 1, "offset {offset_ms} ms");
        assert_eq!(h.counters.leaked(), 0, "offset {offset_ms} ms: no instance dropped without shutdown");
        // One more request is served warm by the same instance: it was not lost.
        let again = h.call(&f, "third", "ok").await.unwrap().expect("served");
        assert_eq!(again.instance_id, h.counters.ids()[0]);
    }
}

#[tokio::test(start_paused = true)]
async fn an_init_failure_reaches_every_waiter_at_once() {
    let h = harness(Fake { start_delay: ms(500), init_error: Some(init_error()), ..Fake::default() });
    let f = function("broken", |s| s.max_instances = 4);
    let began = Instant::now();
    let calls: Vec<_> = (0..50).map(|i| h.call(&f, &format!("r{i}"), "ok")).collect();
    for c in calls {
        match c.await.unwrap() {
            Err(DispatchError::InitFailed { error_type, .. }) => assert_eq!(error_type, "Runtime.ImportModuleError"),
            other => panic!("expected the init error, got {:?}", other.map(|r| r.instance_id)),
        }
        assert_eq!(began.elapsed(), ms(500), "answered when the starts failed, not one init after another");
    }
    assert_eq!(h.counters.starts(), 4, "the 50 waiters shared the starts max_instances allows");
    let st = h.status();
    assert_eq!((st.idle, st.busy, st.starting, st.waiting), (0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_crashed_instance_is_shut_down_once_and_replaced_for_the_requests_queued_behind_it() {
    let h = harness(Fake { start_delay: ms(100), invoke_time: ms(50), ..Fake::default() });
    let f = function("crashy", |s| s.max_instances = 1);
    let crash = h.call(&f, "crash", "crash");
    h.counters.wait_starts(1).await;
    let queued: Vec<_> = (0..3).map(|i| h.call(&f, &format!("q{i}"), "ok")).collect();
    match crash.await.unwrap() {
        Err(DispatchError::Crashed { detail, .. }) => assert_eq!(detail, "exit status 1"),
        other => panic!("expected the crash, got {:?}", other.map(|r| r.instance_id)),
    }
    let dead = h.counters.ids()[0].clone();
    for q in queued {
        let r = q.await.unwrap().expect("a queued request is served by the replacement");
        assert_ne!(r.instance_id, dead);
    }
    assert_eq!(h.counters.starts(), 2, "one replacement for the dead instance");
    h.counters.wait_shutdowns(1).await;
    // Housekeeping and server shutdown do not stop the dead one again.
    tokio::time::sleep(secs(30)).await;
    h.scheduler.shutdown(secs(5)).await;
    h.counters.wait_shutdowns(2).await;
    assert_eq!(h.counters.shutdowns_of(&dead), 1);
    assert_eq!(h.counters.leaked(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_is_reclaimed_after_keep_alive() {
    let h = harness(Fake::default());
    let f = function("idle", |s| s.keep_alive = secs(10));
    h.call(&f, "r", "ok").await.unwrap().expect("served");
    tokio::time::sleep(secs(9)).await;
    assert_eq!(h.status().idle, 1, "kept while younger than keep_alive");
    assert_eq!(h.counters.shutdowns(), 0);
    // Housekeeping ticks every keep_alive / 4 capped at 1 s: reclaimed within a tick of 10 s.
    tokio::time::sleep(secs(2)).await;
    assert_eq!(h.status().idle, 0);
    h.counters.wait_shutdowns(1).await;
    assert_eq!(h.counters.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn min_instances_are_started_and_kept_through_keep_alive_and_death() {
    let h = harness(Fake { start_delay: ms(100), invoke_time: ms(50), ..Fake::default() });
    let f = function("warm", |s| {
        s.min_instances = 2;
        s.keep_alive = secs(10);
    });
    h.scheduler.deploy(std::slice::from_ref(&f));
    h.counters.wait_ready(2).await;
    assert_eq!(h.status().idle, 2, "pre-warmed at deploy, before any request");
    // A burst above min_instances scales up; keep-alive takes the pool back down to 2, not 0.
    let burst: Vec<_> = (0..4).map(|i| h.call(&f, &format!("r{i}"), "ok")).collect();
    for b in burst {
        b.await.unwrap().expect("served");
    }
    assert_eq!(h.counters.ready(), 4);
    // Nobody paid a cold start: the pre-warmed instances served all four (the two started for
    // the burst arrived after the first two invocations had ended), and a pre-warmed instance
    // serves warm.
    assert_eq!(h.records.all().iter().filter(|r| r.cold).count(), 0);
    tokio::time::sleep(secs(60)).await;
    assert_eq!((h.status().idle, h.counters.shutdowns()), (2, 2));
    // An idle instance that dies on its own is replaced by housekeeping.
    let ids = h.counters.ids();
    let victim = ids.iter().find(|id| h.counters.shutdowns_of(id) == 0).unwrap();
    h.counters.kill(victim);
    tokio::time::sleep(secs(2)).await;
    assert_eq!(h.counters.shutdowns_of(victim), 1);
    assert_eq!(h.counters.ready(), 5);
    assert_eq!(h.status().idle, 2);
}

/// Each invocation leaves exactly one record, with the status its caller saw: the history and
/// the metrics (observers see the same records) count every request once.
#[tokio::test(start_paused = true)]
async fn every_invocation_outcome_is_recorded_exactly_once() {
    use nimbus_core::InvocationStatus::*;
    let table = [
        ("ok", Success),
        ("fail", FunctionError),
        ("crash", Crashed),
        ("timeout", Timeout),
        ("too-large", FunctionError),
        ("platform", PlatformError),
        // Lost twice: retried once on a new instance, then failed; still one record.
        ("lost", PlatformError),
        // The invocation's task panics: the caller gets a platform error, and so does the history.
        ("panic", PlatformError),
    ];
    for (payload, want) in table {
        let h = harness(Fake::default());
        let f = function("f", |_| {});
        let result = h.call(&f, "r", payload).await.unwrap();
        assert_eq!(crate::status_of(&result), want, "{payload}");
        let records = h.records.of("r");
        assert_eq!(records.len(), 1, "{payload}: {records:?}");
        assert_eq!(records[0].status, want, "{payload}");
    }
}

/// A panic in a wasm invocation's first poll (a warm instance: nothing to wait for, so it runs
/// on the caller's task) is caught there: a platform error for the caller and in the history, once,
/// and the function goes on serving.
#[tokio::test(start_paused = true)]
async fn a_panic_on_a_warm_instance_is_a_platform_error_recorded_once() {
    use nimbus_core::InvocationStatus::*;
    let h = harness_for(Fake::default(), &[RuntimeKind::Wasm]);
    let f = function("f", |s| s.runtime = RuntimeKind::Wasm);
    assert_eq!(crate::status_of(&h.call(&f, "warm", "ok").await.unwrap()), Success);
    let result = h.call(&f, "p", "panic").await.unwrap();
    let Err(DispatchError::Platform(message)) = &result else { panic!("{result:?}") };
    assert!(message.contains("the fake instance panicked"), "{message}");
    let records = h.records.of("p");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].status, PlatformError);
    assert_eq!(crate::status_of(&h.call(&f, "after", "ok").await.unwrap()), Success);
}

/// A caller that goes away while its invocation runs does not cancel it: the invocation (moved
/// to a task of its own when its first poll did not finish it) runs to its end, is recorded and
/// gives its instance back. On the paused clock the sleeps are exact points in the fake's time.
#[tokio::test(start_paused = true)]
async fn an_invocation_outlives_a_caller_that_goes_away() {
    for kind in [RuntimeKind::Provided, RuntimeKind::Wasm] {
        outlives_its_caller(kind).await;
    }
}

async fn outlives_its_caller(kind: RuntimeKind) {
    let h = harness_for(Fake { invoke_time: ms(50), ..Fake::default() }, &[kind]);
    let f = function("f", |s| s.runtime = kind);
    h.call(&f, "warm", "ok").await.unwrap().unwrap();
    let call = h.call(&f, "left", "ok");
    tokio::time::sleep(ms(10)).await;
    assert_eq!(h.status().busy, 1, "{kind:?}: the invocation is under way");
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::time::sleep(ms(100)).await;
    let records = h.records.of("left");
    assert_eq!(records.len(), 1, "{kind:?}: {records:?}");
    assert_eq!(records[0].status, nimbus_core::InvocationStatus::Success);
    assert_eq!((h.status().busy, h.status().idle), (0, 1), "{kind:?}: the instance is back");
}

/// A success is recorded without its START / END / REPORT lines (the store renders them when the
/// log is read), and renders to exactly the log the caller got, which is the text the platform
/// has always formatted.
#[tokio::test(start_paused = true)]
async fn a_success_is_recorded_without_its_frame_and_renders_as_the_callers_log() {
    let h = harness(Fake { invoke_time: ms(2), ..Fake::default() });
    let f = function("f", |_| {});
    for (id, payload) in [("cold", "talk"), ("warm", "talk"), ("quiet", "ok")] {
        let r = h.call(&f, id, payload).await.unwrap().unwrap();
        let rec = h.records.of(id).remove(0);
        let n = rec.log_frame.expect("a success keeps its log's parts");
        assert!(!rec.log.contains("REPORT") && !rec.log.contains("START"), "{id}: {:?}", rec.log);
        assert_eq!(rec.full_log(), r.log, "{id}");
        let mut parts = r.clone();
        parts.log = rec.log[n..].to_owned();
        assert_eq!(crate::report::invocation_log(&f, id, &rec.log[..n], &parts), r.log, "{id}");
    }
    let cold = h.records.of("cold").remove(0).full_log().into_owned();
    assert!(cold.contains("\tInit Duration: "), "{cold}");
    assert!(cold.contains("line 2 without a newline\nEND RequestId: cold\n"), "{cold}");
    assert!(!h.records.of("warm").remove(0).full_log().contains("Init Duration"));
}

/// The failures to get an instance at all are recorded once too.
#[tokio::test(start_paused = true)]
async fn every_failure_to_get_an_instance_is_recorded_exactly_once() {
    use nimbus_core::InvocationStatus::*;
    let init = harness(Fake { init_error: Some(init_error()), ..Fake::default() });
    let platform = harness(Fake { init_error: Some(StartError::Platform("no interpreter".into())), ..Fake::default() });
    let f = function("f", |_| {});
    for (h, want) in [(&init, InitError), (&platform, PlatformError)] {
        let result = h.call(&f, "r", "ok").await.unwrap();
        assert_eq!(crate::status_of(&result), want);
        assert_eq!(h.records.of("r").iter().map(|r| r.status).collect::<Vec<_>>(), [want]);
    }
    // Throttled twice: the queue is full (max_queued = 0), and the queue wait runs out.
    let h = harness(Fake { invoke_time: secs(10), ..Fake::default() });
    let full = function("full", |s| {
        s.max_instances = 1;
        s.max_queued = 0;
    });
    let slow = function("slow", |s| {
        s.max_instances = 1;
        s.queue_timeout = secs(1);
    });
    for f in [&full, &slow] {
        let busy = h.call(f, &format!("{}-busy", f.spec.name), "ok");
        h.counters.wait_ready(if f.spec.name == "full" { 1 } else { 2 }).await;
        let id = format!("{}-throttled", f.spec.name);
        let result = h.call(f, &id, "ok").await.unwrap();
        assert!(matches!(result, Err(DispatchError::Throttled { .. })), "{id}");
        assert_eq!(h.records.of(&id).iter().map(|r| r.status).collect::<Vec<_>>(), [Throttled], "{id}");
        busy.await.unwrap().expect("the busy request is served");
    }
    // Shutting down: a lost invocation is retried on a pool that was retired meanwhile.
    let h = harness(Fake { invoke_time: secs(1), ..Fake::default() });
    let f = function("f", |_| {});
    let lost = h.call(&f, "lost", "lost-late");
    h.counters.wait_ready(1).await;
    let scheduler = h.scheduler.clone();
    let shutdown = tokio::spawn(async move { scheduler.shutdown(secs(5)).await });
    assert!(matches!(lost.await.unwrap(), Err(DispatchError::ShuttingDown { .. })));
    assert_eq!(h.records.of("lost").iter().map(|r| r.status).collect::<Vec<_>>(), [PlatformError]);
    shutdown.await.unwrap();
    // After server shutdown: refused, recorded, and no new pool starts instances.
    let late = h.call(&f, "late", "ok").await.unwrap();
    assert!(matches!(late, Err(DispatchError::ShuttingDown { .. })));
    assert_eq!(h.records.of("late").iter().map(|r| r.status).collect::<Vec<_>>(), [PlatformError]);
    assert_eq!(h.counters.starts(), 1);
    assert!(h.scheduler.status().is_empty());
    // No runtime for the function's kind.
    let wasm = function("wasm", |s| s.runtime = RuntimeKind::Wasm);
    assert!(matches!(h.call(&wasm, "wasm", "ok").await.unwrap(), Err(DispatchError::Platform(_))));
    assert_eq!(h.records.of("wasm").iter().map(|r| r.status).collect::<Vec<_>>(), [PlatformError]);
}

/// An instance that died before its runtime took the event never ran the function: the
/// invocation runs on another instance and the caller sees only the success.
#[tokio::test(start_paused = true)]
async fn an_invocation_lost_before_it_ran_is_retried_on_a_new_instance() {
    let h = harness(Fake::default());
    let f = function("f", |_| {});
    let r = h.call(&f, "r", "lost-once").await.unwrap().expect("the retry succeeds");
    let ids = h.counters.ids();
    assert_eq!(ids.len(), 2);
    assert_eq!(r.instance_id, ids[1]);
    assert_eq!(
        h.records.of("r").iter().map(|r| r.status).collect::<Vec<_>>(),
        [nimbus_core::InvocationStatus::Success]
    );
    h.counters.wait_shutdowns(1).await;
    assert_eq!(h.counters.shutdowns_of(&ids[0]), 1, "the lost instance is stopped");
}

/// Server shutdown while instances are still starting, one in a pool that a redeploy retired
/// before: each is stopped when it arrives (its waiters are served or told the pool is shutting
/// down), and `Scheduler::shutdown` returns only once every instance has finished its shutdown,
/// well within its bound.
#[tokio::test(start_paused = true)]
async fn shutdown_while_instances_start_stops_them_when_they_arrive_and_waits_for_it() {
    let h = harness(Fake { start_delay: secs(1), invoke_time: ms(100), shutdown_time: ms(500), ..Fake::default() });
    let busy = function("busy", |s| s.max_instances = 1);
    // Its start outlasts everything else here, so shutdown must wait for this pool too.
    let warm = function("warm", |s| {
        s.min_instances = 1;
        s.env.insert("START_DELAY_MS".into(), "3000".into());
    });
    h.scheduler.deploy(&[busy.clone(), warm.clone()]);
    // A redeploy without `warm` retires its pool while its pre-warmed instance starts.
    h.scheduler.deploy(std::slice::from_ref(&busy));
    let pool = h.scheduler.pool(&busy).unwrap();
    let calls: Vec<_> = (0..2).map(|i| h.call(&busy, &format!("r{i}"), "ok")).collect();
    h.counters.wait_starts(2).await;
    while pool.status().waiting < 2 {
        tokio::task::yield_now().await;
    }
    let began = Instant::now();
    h.scheduler.shutdown(secs(10)).await;
    assert!(began.elapsed() < secs(10), "returned when the instances had stopped, not at the bound");
    assert_eq!(h.counters.ready(), 2, "the two starts in flight completed");
    assert_eq!(h.counters.shutdowns(), 2, "both instances were shut down before shutdown returned");
    assert_eq!(h.counters.leaked(), 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) | Err(DispatchError::ShuttingDown { .. }) => {}
            Err(e) => panic!("a waiter of a retired pool got {e}"),
        }
    }
    assert!(matches!(
        pool.acquire().await,
        Err(crate::pool::AcquireError::Dispatch(DispatchError::ShuttingDown { .. }))
    ));
}

/// An idle instance is handed to `shutdown` at once; server shutdown still waits for it to
/// finish (a process runtime's SIGTERM grace), not just for the pool to be empty.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_idle_instances_to_finish_stopping() {
    let h = harness(Fake { shutdown_time: ms(500), ..Fake::default() });
    let f = function("f", |_| {});
    h.call(&f, "r", "ok").await.unwrap().expect("served");
    let began = Instant::now();
    h.scheduler.shutdown(secs(10)).await;
    assert_eq!(h.counters.shutdowns(), 1);
    assert_eq!(began.elapsed(), ms(500));
}

/// `keep_alive = "adaptive"` with a fixed fallback of 30 s (so the learning calls are cold).
fn adaptive(name: &str) -> Arc<FunctionVersion> {
    function(name, |s| {
        s.keep_alive_policy = nimbus_core::KeepAlivePolicy::Adaptive;
        s.keep_alive = secs(30);
    })
}

/// Calls `f` every `period` from `t0`, `n` times; returns whether each was a cold start.
async fn periodic(h: &Harness, f: &Arc<FunctionVersion>, t0: Instant, period: u64, n: u64) -> Vec<bool> {
    let mut cold = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + secs(period * i)).await;
        let r = h.call(f, &format!("p{i}"), "ok").await.unwrap().expect("served");
        cold.push(r.cold.is_some());
    }
    cold
}

#[tokio::test(start_paused = true)]
async fn adaptive_keep_alive_learns_a_period_unloads_and_prewarms_before_the_next_call() {
    let h = harness(Fake { start_delay: ms(100), ..Fake::default() });
    let f = adaptive("periodic");
    let t0 = Instant::now();
    // Every 10 minutes: with the 30 s fallback each learning call finds no instance.
    let cold = periodic(&h, &f, t0, 600, 11).await;
    assert_eq!(cold, vec![true; 11]);
    let w = h.status().adaptive.expect("an adaptive pool shows its windows");
    assert!(w.representative && w.samples == 10, "{w:?}");
    // 9–10 min bin, 10 % margins: pre-warm at 8.1 min, keep until 11 min after the call.
    assert_eq!((w.prewarm, w.keep_alive), (secs(486), secs(660)));
    let last = t0 + secs(6000);
    // Unloaded once the call ended: nothing is kept through the predictable gap.
    tokio::time::sleep_until(last + secs(60)).await;
    assert_eq!(h.status().idle, 0);
    tokio::time::sleep_until(last + secs(480)).await;
    assert_eq!((h.status().idle, h.status().starting), (0, 0), "not pre-warmed before the window");
    tokio::time::sleep_until(last + secs(490)).await;
    assert_eq!(h.status().idle, 1, "pre-warmed at 8.1 min");
    // The next arrival is warm.
    let next = periodic(&h, &f, last + secs(600), 600, 1).await;
    assert_eq!(next, vec![false]);
    let ready = h.counters.ready();
    // No call comes: pre-warmed again, then stopped at the end of the keep-alive window.
    let after = last + secs(600);
    tokio::time::sleep_until(after + secs(600)).await;
    assert_eq!((h.status().idle, h.counters.ready()), (1, ready + 1));
    tokio::time::sleep_until(after + secs(662)).await;
    assert_eq!(h.status().idle, 0, "stopped keep_alive after the last call");
    h.counters.wait_shutdowns(13).await;
    assert_eq!(h.counters.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn adaptive_keep_alive_without_a_representative_history_keeps_the_fixed_fallback() {
    let h = harness(Fake::default());
    let f = adaptive("sparse");
    // Too few gaps to learn from.
    let cold = periodic(&h, &f, Instant::now(), 20, 4).await;
    assert_eq!(cold, vec![true, false, false, false], "kept warm 30 s: every call after the first is warm");
    let w = h.status().adaptive.expect("adaptive");
    assert!(!w.representative, "{w:?}");
    assert_eq!((w.prewarm, w.keep_alive, w.samples), (secs(0), secs(30), 3));
    tokio::time::sleep(secs(29)).await;
    assert_eq!(h.status().idle, 1, "kept through the fallback keep-alive");
    tokio::time::sleep(secs(2)).await;
    assert_eq!(h.status().idle, 0);
    // A fixed pool shows no adaptive windows.
    let fixed = harness(Fake::default());
    fixed.call(&function("fixed", |_| {}), "r", "ok").await.unwrap().expect("served");
    assert_eq!(fixed.status().adaptive, None);
}

#[tokio::test(start_paused = true)]
async fn a_redeploy_keeps_the_functions_idle_history() {
    let h = harness(Fake::default());
    let v1 = adaptive("history");
    periodic(&h, &v1, Instant::now(), 5, 3).await;
    let v2 =
        Arc::new(FunctionVersion { code_digest: "new-code".into(), key_cache: Default::default(), ..(*v1).clone() });
    h.scheduler.deploy(std::slice::from_ref(&v2));
    let status = h.status();
    assert_eq!(status.adaptive.map(|w| w.samples), Some(2), "the new version's pool learnt from the old one's calls");
}

#[tokio::test(start_paused = true)]
async fn with_concurrency_an_instance_takes_several_invocations_before_another_starts() {
    let h = harness(Fake { start_delay: ms(200), invoke_time: ms(100), ..Fake::default() });
    let f = function("fluid", |s| {
        s.concurrency = 4;
        s.max_instances = 2;
    });
    // Ten overlapping requests: 4 + 4 on two instances (the cap), 2 wait for a free slot.
    let calls: Vec<_> = (0..10).map(|i| h.call(&f, &format!("r{i}"), "ok")).collect();
    h.counters.wait_ready(2).await;
    let mut used = std::collections::HashSet::new();
    for c in calls {
        used.insert(c.await.unwrap().expect("every request is served").instance_id);
    }
    assert_eq!(h.counters.starts(), 2, "max_instances still caps instances");
    assert_eq!(used.len(), 2);
    assert_eq!(h.counters.peak_in_flight(), 4, "an instance runs up to `concurrency` invocations, never more");
    // One cold start per instance: the first request that waited for it.
    assert_eq!(h.records.all().iter().filter(|r| r.cold).count(), 2);
    let st = h.status();
    assert_eq!((st.idle, st.busy, st.in_flight, st.concurrency), (2, 0, 0, 4), "idle only at 0 in flight");
    // Each instance was busy once, from its first invocation in to its last out: the two that
    // waited took the first slots freed, both on the instance that finished first (200 ms); the
    // other was busy 100 ms.
    let mut busy: Vec<u128> = h.records.busy_periods().iter().map(|b| b.busy.as_millis()).collect();
    busy.sort();
    assert_eq!(busy, vec![100, 200]);
}

#[tokio::test(start_paused = true)]
async fn with_concurrency_a_warm_instance_with_a_free_slot_is_used_instead_of_starting_one() {
    let h = harness(Fake { start_delay: ms(200), invoke_time: ms(100), ..Fake::default() });
    let f = function("fluid", |s| s.concurrency = 3);
    h.call(&f, "warm", "ok").await.unwrap().unwrap();
    let calls: Vec<_> = (0..3).map(|i| h.call(&f, &format!("r{i}"), "ok")).collect();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert!(r.cold.is_none(), "served by the warm instance");
    }
    assert_eq!(h.counters.starts(), 1);
    assert_eq!(h.counters.peak_in_flight(), 3);
    let fourth: Vec<_> = (0..4).map(|i| h.call(&f, &format!("s{i}"), "ok")).collect();
    for c in fourth {
        c.await.unwrap().unwrap();
    }
    assert_eq!(h.counters.starts(), 2, "a fourth overlapping request needs a second instance");
    assert!(h.records.busy_periods().iter().all(|b| b.function == "fluid" && b.memory_mb == 128));
}

#[tokio::test(start_paused = true)]
async fn with_concurrency_a_crash_retires_the_instance_once_its_last_invocation_ends() {
    let h = harness(Fake { start_delay: ms(10), invoke_time: ms(100), ..Fake::default() });
    let f = function("fluid", |s| s.concurrency = 2);
    let ok = h.call(&f, "a", "ok");
    let crash = h.call(&f, "b", "crash");
    assert!(crash.await.unwrap().is_err());
    ok.await.unwrap().unwrap();
    h.counters.wait_shutdowns(1).await;
    assert_eq!(h.counters.leaked(), 0);
    assert_eq!(h.status().instances.len(), 0, "the dead instance is gone");
    h.call(&f, "c", "ok").await.unwrap().unwrap();
    assert_eq!(h.counters.starts(), 2, "a fresh instance serves the next request");
}

#[tokio::test(start_paused = true)]
async fn with_concurrency_one_no_busy_period_is_reported() {
    let h = harness(Fake { invoke_time: ms(10), ..Fake::default() });
    let f = function("plain", |_| {});
    h.call(&f, "a", "ok").await.unwrap().unwrap();
    assert!(h.records.busy_periods().is_empty(), "concurrency 1 is billed per invocation, as before");
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_history_of_a_function_no_longer_deployed_is_dropped() {
    let h = harness(Fake::default());
    let (f, g) = (adaptive("f"), adaptive("g"));
    h.scheduler.deploy(&[f.clone(), g.clone()]);
    h.call(&f, "r1", "ok").await.unwrap().expect("served");
    h.call(&g, "r2", "ok").await.unwrap().expect("served");
    let kept = |h: &Harness| {
        let mut names: Vec<String> = h.scheduler.activity.lock().unwrap().keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(kept(&h), ["f", "g"]);
    // g is gone and f is no longer adaptive: neither history is kept.
    h.scheduler.deploy(&[function("f", |s| s.keep_alive = secs(30))]);
    assert!(kept(&h).is_empty(), "{:?}", kept(&h));
    // A later deployment making f adaptive again starts it afresh.
    h.scheduler.deploy(&[adaptive("f")]);
    assert_eq!(kept(&h), ["f"]);
}

/// An instance that exits under an invocation while the node shuts down was stopped by the
/// shutdown: the caller hears `ShuttingDown` (a platform failure: the async engine hands the
/// event back uncounted), not the function's crash.
#[tokio::test(start_paused = true)]
async fn an_invocation_whose_instance_exits_during_shutdown_is_shutting_down_not_a_crash() {
    let h = harness(Fake { invoke_time: secs(2), ..Fake::default() });
    let f = function("f", |_| {});
    let cut = h.call(&f, "cut", "crash");
    h.counters.wait_ready(1).await;
    let scheduler = h.scheduler.clone();
    let shutdown = tokio::spawn(async move { scheduler.shutdown(secs(5)).await });
    assert!(matches!(cut.await.unwrap(), Err(DispatchError::ShuttingDown { .. })));
    assert_eq!(
        h.records.of("cut").iter().map(|r| r.status).collect::<Vec<_>>(),
        [nimbus_core::InvocationStatus::PlatformError]
    );
    shutdown.await.unwrap();
}
