//! The engine against in-memory fakes ([`crate::fakes`]) on a paused clock: retries, backoff,
//! throttling, event age, destinations, per-function shares and recovery, as a user of async
//! invocations relies on them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::queue::{AttemptOutcome, EventSource, EventStatus, NewEvent};
use nimbus_core::{AsyncPolicy, Destination, FunctionVersion};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::fakes::{version, FakeDispatch, FakeResolver, FakeStore, Script, Step, Stored};
use crate::{AcceptRequest, AsyncConfig, Clock, Engine};

/// The engine's clock in these tests: a plausible Unix time that moves with tokio's (paused) clock.
fn paused_clock() -> Clock {
    let start = Instant::now();
    Arc::new(move || 1_750_000_000_000 + u64::try_from(start.elapsed().as_millis()).unwrap())
}

struct Harness {
    engine: Arc<Engine>,
    store: Arc<FakeStore>,
    dispatch: Arc<FakeDispatch>,
}

/// Start an engine over `store` with these functions, each running its script.
async fn start(store: Arc<FakeStore>, functions: Vec<(Arc<FunctionVersion>, Script)>) -> Harness {
    let dispatch =
        Arc::new(FakeDispatch::new(functions.iter().map(|(f, script)| (f.spec.name.clone(), script.clone()))));
    let resolver = FakeResolver {
        functions: functions.into_iter().map(|(f, _)| (f.spec.name.clone(), f)).collect(),
        schedules: Vec::new(),
        triggers: Default::default(),
    };
    let engine = Engine::start_with_clock(
        store.clone(),
        dispatch.clone(),
        Arc::new(resolver),
        AsyncConfig::default(),
        paused_clock(),
    )
    .await
    .unwrap();
    Harness { engine, store, dispatch }
}

impl Harness {
    async fn accept(&self, function: &str, payload: Value) -> String {
        let req = AcceptRequest {
            function: function.into(),
            qualifier: None,
            payload: Bytes::from(payload.to_string()),
            source: EventSource::Invoke,
            idempotency_key: None,
        };
        self.engine.accept(req).await.unwrap().id
    }

    /// Wait until no event is queued or running: everything accepted so far, destination
    /// envelopes included, has reached its end.
    async fn settled(&self) {
        self.store.until("every event to finish", |s| s.unfinished() == 0).await;
    }

    /// The destination envelopes `function` received, in order.
    fn envelopes(&self, function: &str) -> Vec<Value> {
        self.dispatch.calls(function).iter().map(|c| serde_json::from_slice(&c.payload).unwrap()).collect()
    }
}

fn policy(f: impl FnOnce(&mut AsyncPolicy)) -> AsyncPolicy {
    let mut p = AsyncPolicy::default();
    f(&mut p);
    p
}

fn to(function: &str) -> Option<Destination> {
    Some(Destination::Function(function.into()))
}

fn outcomes(ev: &Stored) -> Vec<AttemptOutcome> {
    ev.history.iter().map(|a| a.outcome).collect()
}

#[tokio::test(start_paused = true)]
async fn an_event_that_always_fails_is_dead_lettered_after_its_retries() {
    let failing = version("failing", 1, AsyncPolicy::default());
    let h = start(FakeStore::new(), vec![(failing, Script::always(Step::FunctionError))]).await;
    let id = h.accept("failing", json!({"order": 7})).await;
    h.settled().await;

    let events = h.store.events();
    let ev = events.get(&id);
    assert_eq!(ev.status, EventStatus::DeadLettered);
    // The first attempt plus max_retry_attempts (2) retries.
    assert_eq!(ev.attempts, 3);
    assert_eq!(outcomes(ev), [AttemptOutcome::FunctionError; 3]);
    assert_eq!(h.dispatch.calls("failing").len(), 3);
    assert!(ev.reason.as_deref().unwrap().contains("max_retry_attempts is 2"), "{:?}", ev.reason);
}

#[tokio::test(start_paused = true)]
async fn on_failure_sends_one_envelope_instead_of_dead_lettering() {
    let failing = version("failing", 1, policy(|p| p.on_failure = to("sink")));
    let sink = version("sink", 1, AsyncPolicy::default());
    let h = start(
        FakeStore::new(),
        vec![(failing, Script::always(Step::FunctionError)), (sink, Script::always(Step::Succeed("null")))],
    )
    .await;
    let id = h.accept("failing", json!({"order": 7})).await;
    h.settled().await;

    assert_eq!(h.store.events().get(&id).status, EventStatus::Failed);
    assert_eq!(h.store.events().count("failing", EventStatus::DeadLettered), 0);
    let envelopes = h.envelopes("sink");
    assert_eq!(envelopes.len(), 1, "{envelopes:#?}");
    let e = &envelopes[0];
    assert_eq!(e["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(e["requestContext"]["requestId"], id.as_str());
    assert_eq!(e["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(e["requestPayload"], json!({"order": 7}));
    assert_eq!(e["responsePayload"], json!({"errorType": "Error", "errorMessage": "boom"}));
    assert_eq!(e["responseContext"]["functionError"], "Unhandled");
    let sink_event = h.store.events().of("sink").next().unwrap().clone();
    assert_eq!(sink_event.event.source, EventSource::Destination);
}

#[tokio::test(start_paused = true)]
async fn on_success_sends_a_success_envelope() {
    let ok = version("ok", 1, policy(|p| p.on_success = to("sink")));
    let sink = version("sink", 1, AsyncPolicy::default());
    let h = start(
        FakeStore::new(),
        vec![(ok, Script::always(Step::Succeed(r#"{"total":12}"#))), (sink, Script::always(Step::Succeed("null")))],
    )
    .await;
    let id = h.accept("ok", json!({"order": 7})).await;
    h.settled().await;

    assert_eq!(h.store.events().get(&id).status, EventStatus::Succeeded);
    let envelopes = h.envelopes("sink");
    assert_eq!(envelopes.len(), 1, "{envelopes:#?}");
    let e = &envelopes[0];
    assert_eq!(e["requestContext"]["condition"], "Success");
    assert_eq!(e["requestContext"]["requestId"], id.as_str());
    assert_eq!(e["requestPayload"], json!({"order": 7}));
    assert_eq!(e["responsePayload"], json!({"total": 12}));
    assert_eq!(e["responseContext"].get("functionError"), None);
}

#[tokio::test(start_paused = true)]
async fn a_retry_runs_after_its_backoff_and_not_before() {
    let backoff = Duration::from_secs(10);
    let failing = version("failing", 1, policy(|p| p.retry_backoff = backoff));
    let h = start(FakeStore::new(), vec![(failing, Script::always(Step::FunctionError))]).await;
    h.accept("failing", json!({})).await;
    h.settled().await;

    let at: Vec<Instant> = h.dispatch.calls("failing").iter().map(|c| c.at).collect();
    assert_eq!(at.len(), 3);
    // Retry n waits backoff × 2^(n-1), scaled by a jitter in [0.5, 1]; the engine may take a
    // few milliseconds to notice that a retry is due, never more.
    let slack = Duration::from_millis(50);
    for (n, pair) in at.windows(2).enumerate() {
        let full = backoff * 2u32.pow(n as u32);
        let gap = pair[1] - pair[0];
        assert!(gap >= full / 2, "retry {} ran after {gap:?}, before its backoff (at least {:?})", n + 1, full / 2);
        assert!(gap <= full + slack, "retry {} ran after {gap:?}, later than its backoff ({full:?})", n + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn throttled_attempts_are_requeued_and_do_not_count_as_failures() {
    let mut steps = vec![Step::Throttle; 5];
    steps.push(Step::Succeed("null"));
    let script = Script { steps, delay: Duration::ZERO, per_call: false };
    let busy = version("busy", 1, AsyncPolicy::default());
    let h = start(FakeStore::new(), vec![(busy, script)]).await;
    let id = h.accept("busy", json!({})).await;
    h.settled().await;

    let events = h.store.events();
    let ev = events.get(&id);
    // Five throttles are more than max_retry_attempts (2), and still the event ran to success.
    assert_eq!(ev.status, EventStatus::Succeeded);
    let mut want = vec![AttemptOutcome::Throttled; 5];
    want.push(AttemptOutcome::Success);
    assert_eq!(outcomes(ev), want);
    assert_eq!(ev.function_errors, 0);
}

#[tokio::test(start_paused = true)]
async fn platform_errors_retry_until_max_event_age_then_give_up_with_event_age_exceeded() {
    let age = Duration::from_secs(60);
    let base = |p: &mut AsyncPolicy| {
        p.max_event_age = age;
        p.retry_backoff_max = Duration::from_secs(8);
    };
    let kept = version("kept", 1, policy(base));
    let sent = version(
        "sent",
        1,
        policy(|p| {
            base(p);
            p.on_failure = to("sink");
        }),
    );
    let sink = version("sink", 1, AsyncPolicy::default());
    let broken = Script::always(Step::PlatformError);
    let h = start(
        FakeStore::new(),
        vec![(kept, broken.clone()), (sent, broken), (sink, Script::always(Step::Succeed("null")))],
    )
    .await;
    let kept = h.accept("kept", json!({"n": 1})).await;
    let sent = h.accept("sent", json!({"n": 2})).await;
    h.settled().await;

    let events = h.store.events();
    let ev = events.get(&kept);
    assert_eq!(ev.status, EventStatus::DeadLettered);
    assert!(ev.reason.as_deref().unwrap().contains("max_event_age"), "{:?}", ev.reason);
    // More attempts than max_retry_attempts allows a function error, all within max_event_age.
    assert!(ev.attempts > 3, "{} attempts", ev.attempts);
    assert!(outcomes(ev).iter().all(|o| *o == AttemptOutcome::PlatformError));
    let last = ev.history.last().unwrap().started_ms.checked_sub(ev.event.now_ms).expect("started after accept");
    assert!(u128::from(last) <= age.as_millis(), "the last attempt ran {last} ms after accept");

    assert_eq!(events.get(&sent).status, EventStatus::Failed);
    let envelopes = h.envelopes("sink");
    assert_eq!(envelopes.len(), 1, "{envelopes:#?}");
    assert_eq!(envelopes[0]["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(envelopes[0]["requestPayload"], json!({"n": 2}));
    assert_eq!(envelopes[0]["responsePayload"]["errorMessage"], "internal error: no capacity");
}

#[tokio::test(start_paused = true)]
async fn a_backlog_in_one_function_does_not_starve_another() {
    let slow = version("slow", 1, AsyncPolicy::default());
    let quick = version("quick", 1, AsyncPolicy::default());
    let h = start(
        FakeStore::new(),
        vec![
            (slow, Script::always(Step::Succeed("null")).taking(Duration::from_secs(1))),
            (quick, Script::always(Step::Succeed("null")).taking(Duration::from_millis(10))),
        ],
    )
    .await;
    for n in 0..1000 {
        h.accept("slow", json!({"n": n})).await;
    }
    for n in 0..5 {
        h.accept("quick", json!({"n": n})).await;
    }
    h.store.until("the quick function's events", |s| s.count("quick", EventStatus::Succeeded) == 5).await;
    {
        let events = h.store.events();
        let (done, queued) = (events.count("slow", EventStatus::Succeeded), events.count("slow", EventStatus::Queued));
        // The slow function runs its share (64) a second at a time: the quick events ran in the
        // first of the ~16 seconds its backlog takes.
        assert!(done < 100, "{done} slow events finished before the 5 quick ones");
        assert!(queued > 800, "only {queued} slow events still queued");
    }
    h.settled().await;
    assert_eq!(h.store.events().count("slow", EventStatus::Succeeded), 1000);
}

#[tokio::test(start_paused = true)]
async fn events_left_running_are_run_again_after_start() {
    let store = FakeStore::new();
    let event = NewEvent {
        id: "left-running".into(),
        function: "f".into(),
        qualifier: None,
        payload: Bytes::from_static(b"{}"),
        source: EventSource::Invoke,
        idempotency_key: None,
        now_ms: 1_750_000_000_000,
        run_at_ms: 1_750_000_000_000,
    };
    store.seed(event, EventStatus::Running, 1);
    let h = start(store, vec![(version("f", 1, AsyncPolicy::default()), Script::always(Step::Succeed("null")))]).await;
    assert_eq!(h.engine.recovered(), 1);
    h.settled().await;

    let events = h.store.events();
    let ev = events.get("left-running");
    assert_eq!(ev.status, EventStatus::Succeeded);
    // The interrupted run counts: this was the second attempt.
    assert_eq!(ev.history.iter().map(|a| a.n).collect::<Vec<_>>(), [2]);
    assert_eq!(h.dispatch.calls("f").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_idempotency_key_runs_once() {
    let h =
        start(FakeStore::new(), vec![(version("f", 1, AsyncPolicy::default()), Script::always(Step::Succeed("null")))])
            .await;
    let req = || AcceptRequest {
        function: "f".into(),
        qualifier: None,
        payload: Bytes::from_static(b"{}"),
        source: EventSource::Http,
        idempotency_key: Some("order-7".into()),
    };
    let first = h.engine.accept(req()).await.unwrap();
    let again = h.engine.accept(req()).await.unwrap();
    assert_eq!((again.id.as_str(), again.duplicate), (first.id.as_str(), true));
    assert_eq!(h.engine.depth(), 1);
    h.settled().await;
    assert_eq!(h.dispatch.calls("f").len(), 1);
    assert_eq!(h.engine.depth(), 0);
}

/// In a cluster another node queues events this engine never saw accepted: the store's
/// `changed` wakes the idle engine at once instead of at its next poll (a second later).
#[tokio::test(start_paused = true)]
async fn an_event_queued_elsewhere_runs_when_the_store_says_so() {
    let store = FakeStore::new();
    let h = start(store, vec![(version("f", 1, AsyncPolicy::default()), Script::always(Step::Succeed("null")))]).await;
    // Let the engine find nothing and go idle.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let now = paused_clock()();
    let event = NewEvent {
        id: "from-another-node".into(),
        function: "f".into(),
        qualifier: None,
        payload: Bytes::from_static(b"{}"),
        source: EventSource::Invoke,
        idempotency_key: None,
        now_ms: now,
        run_at_ms: now,
    };
    h.store.seed(event, EventStatus::Queued, 0);
    let queued = Instant::now();
    h.store.elsewhere.notify_one();
    h.settled().await;
    assert!(queued.elapsed() < Duration::from_millis(100), "ran only after {:?}", queued.elapsed());
    assert_eq!(h.dispatch.calls("f").len(), 1);
    // It was never counted here: finishing it leaves the count at 0, not below.
    assert_eq!(h.engine.depth(), 0);
    // Another node's running event: the count follows the store within seconds.
    let running = NewEvent {
        id: "running-elsewhere".into(),
        function: "g".into(),
        ..h.store.events().get("from-another-node").event.clone()
    };
    h.store.seed(running, EventStatus::Running, 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(h.engine.depth(), 1);
}
