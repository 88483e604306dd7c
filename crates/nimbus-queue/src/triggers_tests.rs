//! The queue triggers against in-memory fakes ([`crate::fakes`]) on a paused clock: batches
//! delivered and deleted, partial batch failures, function errors and backoff, the batch window,
//! scaling bounded by `max_concurrency`, an idle trigger that long-polls, redeploys and shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::event_sources::{QueueSpec, QueueTrigger, Redrive, TriggerSource, TriggerSpec};
use nimbus_core::messages::QueueSettings;
use nimbus_core::AsyncPolicy;
use serde_json::Value;
use tokio::time::Instant;

use crate::fakes::queues::FakeQueues;
use crate::fakes::{version, Call, FakeDispatch, FakeResolver, Script, Step};
use crate::triggers::Triggers;

struct Harness {
    triggers: Arc<Triggers>,
    queues: Arc<FakeQueues>,
    dispatch: Arc<FakeDispatch>,
    resolver: Arc<FakeResolver>,
}

fn queue_trigger(queue: &str, f: impl FnOnce(&mut QueueTrigger)) -> TriggerSpec {
    let mut t = QueueTrigger {
        queue: queue.into(),
        batch_size: 10,
        batch_window: Duration::ZERO,
        max_concurrency: None,
        report_batch_item_failures: false,
    };
    f(&mut t);
    TriggerSpec { function: "worker".into(), source: TriggerSource::Queue(t) }
}

fn settings(f: impl FnOnce(&mut QueueSpec)) -> QueueSettings {
    let mut spec = QueueSpec::default();
    f(&mut spec);
    QueueSettings::from(spec)
}

/// Start the triggers over `queues` with function "worker" (`max_instances`) running `script`.
fn start(queues: Arc<FakeQueues>, trigger: TriggerSpec, script: Script, max_instances: u32) -> Harness {
    let dispatch = Arc::new(FakeDispatch::new([("worker".to_owned(), script)]));
    let worker = version("worker", max_instances, AsyncPolicy::default());
    let resolver = Arc::new(FakeResolver {
        functions: [("worker".to_owned(), worker)].into_iter().collect(),
        schedules: Vec::new(),
        triggers: Mutex::new(vec![trigger]),
    });
    let triggers = Triggers::start(queues.clone(), dispatch.clone(), resolver.clone());
    Harness { triggers, queues, dispatch, resolver }
}

/// The bodies of each batch the worker received, in order.
fn batches(calls: &[Call]) -> Vec<Vec<String>> {
    calls
        .iter()
        .map(|c| {
            let event: Value = serde_json::from_slice(&c.payload).unwrap();
            let records = event["Records"].as_array().unwrap();
            records.iter().map(|r| r["body"].as_str().unwrap().to_owned()).collect()
        })
        .collect()
}

impl Harness {
    fn calls(&self) -> Vec<Call> {
        self.dispatch.calls("worker")
    }

    async fn until_deleted(&self, queue: &str, n: u64) {
        self.queues.until(&format!("{n} deleted from {queue}"), |s| s.queue(queue).stats.deleted_total >= n).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_delivered_as_an_sqs_event_and_deleted_on_success() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    queues.send_bodies("jobs", &["a", "b", "c"], None).await;
    let h = start(queues, queue_trigger("jobs", |_| {}), Script::always(Step::Succeed("null")), 4);
    h.until_deleted("jobs", 3).await;
    let calls = h.calls();
    assert_eq!(batches(&calls), [["a", "b", "c"]]);
    let event: Value = serde_json::from_slice(&calls[0].payload).unwrap();
    let r = &event["Records"][0];
    assert_eq!(r["eventSource"], "aws:sqs");
    assert_eq!(r["eventSourceARN"], "arn:aws:sqs:us-east-1:000000000000:jobs");
    assert_eq!(r["attributes"]["ApproximateReceiveCount"], "1");
    assert_eq!(r["md5OfBody"], nimbus_core::events::md5_hex(b"a"));
    assert!(h.queues.state().queue("jobs").messages.is_empty());
    let stats = h.triggers.stats();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!((s.function.as_str(), s.queue.as_str()), ("worker", "jobs"));
    assert_eq!((s.received, s.deleted, s.returned, s.batches, s.batch_size_sum), (3, 3, 0, 1, 3));
    let bucket_of_3 = s.batch_sizes.iter().find(|(le, _)| *le == 5.0).unwrap();
    assert_eq!(bucket_of_3.1, 1, "{:?}", s.batch_sizes);
}

/// Reports every message whose body starts with "poison" as a batch item failure.
fn fail_poison(payload: &[u8]) -> String {
    let event: Value = serde_json::from_slice(payload).unwrap();
    let failures: Vec<Value> = event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["body"].as_str().unwrap().starts_with("poison"))
        .map(|r| serde_json::json!({"itemIdentifier": r["messageId"]}))
        .collect();
    serde_json::json!({ "batchItemFailures": failures }).to_string()
}

#[tokio::test(start_paused = true)]
async fn batch_item_failures_return_only_those_and_the_redrive_moves_them_to_the_dlq() {
    let queues = FakeQueues::new();
    queues.declare("dlq", QueueSettings::default());
    let redrive = Redrive { dead_letter_queue: "dlq".into(), max_receive_count: 2 };
    queues.declare("jobs", settings(|s| (s.visibility_timeout, s.redrive) = (Duration::from_secs(5), Some(redrive))));
    queues.send_bodies("jobs", &["a", "poison", "c"], None).await;
    let trigger = queue_trigger("jobs", |t| t.report_batch_item_failures = true);
    let h = start(queues, trigger, Script::always(Step::Answer(fail_poison)), 4);
    h.queues.until("the poison message in the DLQ", |s| s.queue("dlq").messages.len() == 1).await;
    assert_eq!(h.queues.state().queue("dlq").bodies(), ["poison"]);
    assert!(h.queues.state().queue("jobs").messages.is_empty());
    // a and c once; the poison message twice (max_receive_count), then no more.
    assert_eq!(batches(&h.calls()), [vec!["a", "poison", "c"], vec!["poison"]]);
    let s = &h.triggers.stats()[0];
    assert_eq!((s.received, s.deleted, s.returned, s.batches), (4, 2, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn an_answer_naming_no_message_of_the_batch_keeps_the_whole_batch() {
    let queues = FakeQueues::new();
    queues.declare("jobs", settings(|s| s.visibility_timeout = Duration::from_secs(600)));
    queues.send_bodies("jobs", &["a", "b"], None).await;
    let trigger = queue_trigger("jobs", |t| t.report_batch_item_failures = true);
    let answer = r#"{"batchItemFailures":[{"itemIdentifier":"not-in-the-batch"}]}"#;
    let h = start(queues, trigger, Script::always(Step::Succeed(answer)), 4);
    h.queues.until("one batch", |s| s.queue("jobs").stats.received_total == 2).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.queues.state().queue("jobs").stats.deleted_total, 0);
    assert_eq!(h.triggers.stats()[0].returned, 2);
}

#[tokio::test(start_paused = true)]
async fn a_function_error_deletes_nothing_and_the_poller_backs_off() {
    let queues = FakeQueues::new();
    // Visible again at once: only the trigger's backoff spaces the attempts.
    queues.declare("jobs", settings(|s| s.visibility_timeout = Duration::ZERO));
    queues.send_bodies("jobs", &["a", "b"], None).await;
    let h = start(queues, queue_trigger("jobs", |_| {}), Script::always(Step::FunctionError), 4);
    let dispatch = h.dispatch.clone();
    let mut waited = 0;
    while dispatch.calls("worker").len() < 6 && waited < 3600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    }
    let calls = h.calls();
    assert!(calls.len() >= 6, "{} calls in an hour", calls.len());
    assert!(batches(&calls).iter().all(|b| b == &["a", "b"]));
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (i, gap) in gaps.iter().take(5).enumerate() {
        assert!(*gap >= Duration::from_secs(1 << i), "gap {i} is {gap:?}: {gaps:?}");
    }
    assert_eq!(h.queues.state().queue("jobs").messages.len(), 2);
    assert_eq!(h.queues.state().queue("jobs").stats.deleted_total, 0);
    let s = &h.triggers.stats()[0];
    assert_eq!((s.deleted, s.function_errors), (0, calls.len() as u64));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_batch_is_hidden_for_the_backoff_then_delivered() {
    let queues = FakeQueues::new();
    queues.declare("jobs", settings(|s| s.visibility_timeout = Duration::from_secs(600)));
    queues.send_bodies("jobs", &["a"], None).await;
    let script = Script::calls(vec![Step::Throttle, Step::Succeed("null")]);
    let h = start(queues, queue_trigger("jobs", |_| {}), script, 4);
    h.until_deleted("jobs", 1).await;
    let calls = h.calls();
    // Not the 600 s visibility timeout: made visible again after the 1 s backoff.
    assert_eq!(calls.len(), 2);
    assert!(calls[1].at - calls[0].at < Duration::from_secs(10), "{:?}", calls[1].at - calls[0].at);
    assert_eq!(h.triggers.stats()[0].throttled, 1);
}

#[tokio::test(start_paused = true)]
async fn the_batch_window_gathers_until_it_passes_or_the_batch_is_full() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    let trigger = queue_trigger("jobs", |t| (t.batch_size, t.batch_window) = (5, Duration::from_secs(10)));
    let h = start(queues.clone(), trigger, Script::always(Step::Succeed("null")), 4);
    let start = Instant::now();
    queues.send_bodies("jobs", &["a"], None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    queues.send_bodies("jobs", &["b"], None).await;
    h.until_deleted("jobs", 2).await;
    let calls = h.calls();
    assert_eq!(batches(&calls), [["a", "b"]]);
    assert!(calls[0].at - start >= Duration::from_secs(10), "invoked before the window passed");
    // A full batch goes at once.
    let sent = Instant::now();
    queues.send_bodies("jobs", &["1", "2", "3", "4", "5"], None).await;
    h.until_deleted("jobs", 7).await;
    let calls = h.calls();
    assert_eq!(batches(&calls)[1], ["1", "2", "3", "4", "5"]);
    assert!(calls[1].at - sent < Duration::from_secs(1), "a full batch waited for the window");
}

#[tokio::test(start_paused = true)]
async fn pollers_scale_up_with_full_batches_but_not_past_max_concurrency() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    let bodies: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    queues.send_bodies("jobs", &bodies.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    let trigger = queue_trigger("jobs", |t| (t.batch_size, t.max_concurrency) = (1, Some(3)));
    let script = Script::always(Step::Succeed("null")).taking(Duration::from_secs(2));
    let h = start(queues, trigger, script, 10);
    h.until_deleted("jobs", 40).await;
    assert_eq!(h.dispatch.peak(), 3, "max_concurrency 3 with 40 messages waiting");
}

#[tokio::test(start_paused = true)]
async fn without_max_concurrency_the_functions_max_instances_bounds_the_pollers() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    let bodies: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    queues.send_bodies("jobs", &bodies.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    let script = Script::always(Step::Succeed("null")).taking(Duration::from_secs(2));
    let h = start(queues, queue_trigger("jobs", |t| t.batch_size = 1), script, 2);
    h.until_deleted("jobs", 20).await;
    assert_eq!(h.dispatch.peak(), 2);
    // Idle again: the extra poller ends at its first empty receive.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.triggers.stats()[0].pollers, 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_trigger_long_polls_instead_of_looping() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    let h = start(queues, queue_trigger("jobs", |_| {}), Script::always(Step::Succeed("null")), 4);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let receives = h.queues.receives("jobs");
    assert!((1..=3 + 3).contains(&receives), "{receives} receives in an idle minute");
    // A send wakes the waiting receive at once.
    let sent = Instant::now();
    h.queues.send_bodies("jobs", &["a"], None).await;
    h.until_deleted("jobs", 1).await;
    assert!(h.calls()[0].at - sent < Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_redeploy_that_moves_the_trigger_stops_the_old_pollers_and_starts_new_ones() {
    let queues = FakeQueues::new();
    queues.declare("a", QueueSettings::default());
    queues.declare("b", QueueSettings::default());
    let h = start(queues.clone(), queue_trigger("a", |_| {}), Script::always(Step::Succeed("null")), 4);
    queues.send_bodies("a", &["1"], None).await;
    h.until_deleted("a", 1).await;
    *h.resolver.triggers.lock().unwrap() = vec![queue_trigger("b", |_| {})];
    tokio::time::sleep(Duration::from_secs(2)).await;
    queues.send_bodies("a", &["2"], None).await;
    queues.send_bodies("b", &["3"], None).await;
    h.until_deleted("b", 1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.queues.state().queue("a").bodies(), ["2"], "the removed trigger still polls");
    let pollers: Vec<(String, u32)> = h.triggers.stats().into_iter().map(|s| (s.queue, s.pollers)).collect();
    assert_eq!(pollers, [("a".to_owned(), 0), ("b".to_owned(), 1)]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_batch_being_delivered_finish() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    let script = Script::always(Step::Succeed("null")).taking(Duration::from_secs(3));
    let h = start(queues.clone(), queue_trigger("jobs", |_| {}), script, 4);
    queues.send_bodies("jobs", &["a"], None).await;
    h.queues.until("the batch received", |s| s.queue("jobs").stats.received_total == 1).await;
    h.triggers.shutdown(Duration::from_secs(10)).await;
    assert_eq!(h.queues.state().queue("jobs").stats.deleted_total, 1, "the batch in flight was not finished");
    // Nothing polls after the shutdown.
    let receives = h.queues.receives("jobs");
    queues.send_bodies("jobs", &["b"], None).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.queues.receives("jobs"), receives);
    assert_eq!(h.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fifo_batches_carry_the_group_attributes() {
    let queues = FakeQueues::new();
    queues.declare("jobs.fifo", settings(|s| s.fifo = true));
    queues.send_bodies("jobs.fifo", &["1", "2", "3"], Some("g")).await;
    let h = start(queues, queue_trigger("jobs.fifo", |_| {}), Script::always(Step::Succeed("null")), 4);
    h.until_deleted("jobs.fifo", 3).await;
    let event: Value = serde_json::from_slice(&h.calls()[0].payload).unwrap();
    assert_eq!(batches(&h.calls()), [["1", "2", "3"]]);
    assert_eq!(event["Records"][0]["attributes"]["MessageGroupId"], "g");
}

#[tokio::test(start_paused = true)]
async fn a_missing_queue_is_retried_with_a_growing_backoff_not_in_a_loop() {
    let queues = FakeQueues::new();
    let h = start(queues, queue_trigger("gone", |_| {}), Script::always(Step::Succeed("null")), 4);
    tokio::time::sleep(Duration::from_secs(600)).await;
    // 1 + 2 + 4 + … + 32 s, then every 60 s: about 15 attempts in 10 minutes.
    let errors = h.triggers.stats()[0].receive_errors;
    assert!((10..=20).contains(&errors), "{errors} failed receives in 10 minutes");
    assert!(h.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_batch_over_the_6_mb_payload_limit_goes_in_several_invocations() {
    let queues = FakeQueues::new();
    queues.declare("jobs", QueueSettings::default());
    let body = "x".repeat(250 * 1024);
    queues.send_bodies("jobs", &vec![body.as_str(); 30], None).await;
    let trigger = queue_trigger("jobs", |t| (t.batch_size, t.batch_window) = (100, Duration::from_secs(1)));
    let h = start(queues, trigger, Script::always(Step::Succeed("null")), 4);
    h.until_deleted("jobs", 30).await;
    let calls = h.calls();
    assert_eq!(calls.len(), 2, "30 × 250 KiB is two payloads of at most 6 MiB");
    assert!(calls.iter().all(|c| c.payload.len() <= nimbus_core::invoke::MAX_PAYLOAD_BYTES));
    assert_eq!(batches(&calls).iter().map(Vec::len).sum::<usize>(), 30);
    assert_eq!(h.triggers.stats()[0].batches, 2);
}

#[test]
fn split_events_are_the_same_json_as_one_event() {
    let queues_batch: Vec<nimbus_core::messages::Received> = (0..5)
        .map(|i| nimbus_core::messages::Received {
            message_id: format!("m{i}"),
            receipt_handle: format!("h{i}"),
            body: format!("body {i} \"quoted\""),
            attributes: Default::default(),
            md5_of_body: String::new(),
            md5_of_attributes: None,
            sender_id: "s".into(),
            sent_ms: 1,
            first_receive_ms: 2,
            receive_count: 1,
            group_id: None,
            dedup_id: None,
            sequence_number: None,
        })
        .collect();
    let whole = crate::triggers::sqs_event("q", &queues_batch);
    let one = crate::triggers::sqs_events("q", queues_batch.clone(), usize::MAX);
    assert_eq!(one.len(), 1);
    assert_eq!(serde_json::from_slice::<Value>(&one[0].0).unwrap(), serde_json::to_value(&whole).unwrap());
    // A limit that fits two records at most splits 5 into 3 payloads, in order.
    let two = one[0].0.len() * 2 / 5 + 20;
    let parts = crate::triggers::sqs_events("q", queues_batch, two);
    let ids: Vec<Vec<String>> = parts.iter().map(|(_, p)| p.iter().map(|m| m.message_id.clone()).collect()).collect();
    assert_eq!(ids, [vec!["m0", "m1"], vec!["m2", "m3"], vec!["m4"]]);
    for (payload, part) in &parts {
        assert!(payload.len() <= two);
        let event: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(event["Records"].as_array().unwrap().len(), part.len());
    }
}
