//! The cluster's async queue against real nats-servers: several `NatsQueue` nodes, each
//! connected to a different server, share one stream of events. Each event is claimed by one
//! node at a time and finishes once; a dropped node's claims go to another node after the ack
//! wait; a killed server loses no accepted event; retries, dead letters, redrive, purge,
//! shares, idempotency keys and cron slots keep the embedded queue's semantics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions, NatsQueue, QueueOptions};
use nimbus_core::ids::{new_request_id, now_ms};
use nimbus_core::policy::AttemptFailure;
use nimbus_core::queue::{AttemptOutcome, AttemptRecord, EventSource, EventStatus, Finish, NewEvent, QueueStore};

/// Node `i`, connected to server `i % n` first (the others as fallbacks).
async fn node(servers: &NatsServers, i: usize, ack_wait: Duration) -> NatsQueue {
    let urls = servers.urls();
    let first = i % urls.len();
    let list: Vec<String> = urls.iter().skip(first).chain(urls.iter().take(first)).cloned().collect();
    let mut opts = ClusterOptions::new(&list.join(","), &format!("node-{i}")).unwrap();
    opts.replicas = servers.len().min(3);
    let cluster = Cluster::connect(&opts).await.unwrap();
    NatsQueue::open_with(&cluster, QueueOptions { ack_wait }).await.unwrap()
}

fn event(function: &str, n: usize) -> NewEvent {
    let now = now_ms();
    NewEvent {
        id: new_request_id(),
        function: function.to_owned(),
        qualifier: None,
        payload: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        source: EventSource::Invoke,
        idempotency_key: None,
        now_ms: now,
        run_at_ms: now,
    }
}

fn attempt(n: u32, outcome: AttemptOutcome) -> AttemptRecord {
    let error = (outcome != AttemptOutcome::Success).then(|| "E".to_owned());
    AttemptRecord {
        n,
        started_ms: now_ms(),
        duration_ms: 1.0,
        outcome,
        error_type: error.clone(),
        error_message: error,
    }
}

fn ok() -> Finish {
    Finish::Succeeded { response: Bytes::from_static(br#"{"ok":true}"#) }
}

/// What the worker loops saw, shared by every node.
#[derive(Default)]
struct Seen {
    running: HashSet<String>,
    finished: HashMap<String, u32>,
    /// Events claimed while another node held them.
    overlaps: Vec<String>,
}

/// Claim and succeed events on `q` until `until` says stop or `deadline` passes.
async fn work(q: Arc<NatsQueue>, seen: Arc<Mutex<Seen>>, deadline: Instant, until: impl Fn(&Seen) -> bool) {
    while Instant::now() < deadline && !until(&seen.lock().unwrap()) {
        let claimed = match q.claim(now_ms(), 32, &HashMap::new(), 64).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if claimed.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(200), q.changed()).await;
            continue;
        }
        for ev in claimed {
            if !seen.lock().unwrap().running.insert(ev.id.clone()) {
                seen.lock().unwrap().overlaps.push(ev.id.clone());
            }
            let mut tries = 0;
            while q.finish(&ev.id, attempt(ev.attempts, AttemptOutcome::Success), ok(), now_ms()).await.is_err() {
                tries += 1;
                assert!(tries < 100, "cannot finish {}", ev.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut s = seen.lock().unwrap();
            s.running.remove(&ev.id);
            *s.finished.entry(ev.id.clone()).or_default() += 1;
        }
    }
}

/// The stream's depth once it settles (the work queue deletes an acked message shortly after
/// the ack is confirmed, on the stream's leader).
async fn depth(q: &NatsQueue, expected: u64) -> u64 {
    let mut d = q.depth().await.unwrap();
    for _ in 0..50 {
        if d == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        d = q.depth().await.unwrap();
    }
    d
}

/// Wait until `q` claims something (bounded).
async fn claim_soon(q: &NatsQueue, within: Duration) -> Vec<nimbus_core::queue::ClaimedEvent> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let c = q.claim(now_ms(), 100, &HashMap::new(), 64).await.unwrap();
        if !c.is_empty() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_work_a_thousand_events_once_each_and_fire_each_slot_once() {
    let servers = NatsServers::start(3).await.unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Arc::new(node(&servers, i, Duration::from_secs(30)).await));
    }
    // 1,000 events accepted across the nodes, 50 at a time.
    let mut ids = Vec::new();
    for chunk in 0..20 {
        let accepts = (0..50).map(|k| {
            let q = nodes[(chunk * 50 + k) % 3].clone();
            async move { q.accept(event(["a", "b"][k % 2], chunk * 50 + k), 60_000).await }
        });
        for r in futures_util::future::join_all(accepts).await {
            let r = r.unwrap();
            assert!(!r.duplicate);
            ids.push(r.id);
        }
    }
    assert_eq!(depth(&nodes[0], 1000).await, 1000);
    let stats = nodes[1].stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| (s.function.as_str(), s.queued)).collect::<Vec<_>>(), [("a", 500), ("b", 500)]);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let workers: Vec<_> = nodes
        .iter()
        .map(|q| tokio::spawn(work(q.clone(), seen.clone(), deadline, |s: &Seen| s.finished.len() >= 1000)))
        .collect();
    for w in workers {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
        tokio::time::timeout(left, w).await.expect("a worker hung past the deadline").unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.overlaps.is_empty(), "claimed while held elsewhere: {:?}", seen.overlaps);
    assert_eq!(seen.finished.len(), 1000, "not every event finished within 120 s");
    assert!(seen.finished.values().all(|&n| n == 1), "an event finished twice");
    for id in ids.iter().step_by(10) {
        let v = nodes[2].get(id).await.unwrap().unwrap();
        assert_eq!((v.status, v.attempts, v.history.len()), (EventStatus::Succeeded, 1, 1), "{id}");
        assert_eq!(v.result, Some(serde_json::json!({"ok": true})));
    }
    assert_eq!(nodes[0].list(Some(EventStatus::Succeeded), None, 2000).await.unwrap().len(), 1000);
    assert_eq!(depth(&nodes[1], 0).await, 0);
    assert!(nodes[2].stats().await.unwrap().is_empty());

    // The same cron slot fired by three nodes at once: exactly one fires, one event runs.
    let key = "report@rate(1000ms)@UTC";
    let slot = 1_796_000_000_000;
    let fires = nodes.iter().map(|q| {
        let mut ev = event("report", 0);
        ev.id = "6c34a4df-6947-83f8-b997-c8ffe1c5280e".into();
        ev.source = EventSource::Schedule;
        async move { q.fire_slot(key, slot, ev).await.unwrap() }
    });
    let fired = futures_util::future::join_all(fires).await;
    assert_eq!(fired.iter().filter(|f| **f).count(), 1, "{fired:?}");
    for q in &nodes {
        assert_eq!(q.last_slot(key).await.unwrap(), Some(slot));
    }
    assert_eq!(depth(&nodes[0], 1).await, 1, "one message for the slot");
    let claimed = claim_soon(&nodes[1], Duration::from_secs(5)).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].source, EventSource::Schedule);
    // An older slot does not move the schedule back.
    nodes[2].skip_to(key, slot - 1000).await.unwrap();
    assert_eq!(nodes[0].last_slot(key).await.unwrap(), Some(slot));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_node_s_events_are_redelivered_to_another() {
    let servers = NatsServers::start(3).await.unwrap();
    let ack_wait = Duration::from_millis(1000);
    let a = node(&servers, 0, ack_wait).await;
    let b = node(&servers, 1, ack_wait).await;
    let mut ids = HashSet::new();
    for n in 0..20 {
        ids.insert(b.accept(event("f", n), 60_000).await.unwrap().id);
    }
    let held = claim_soon(&a, Duration::from_secs(5)).await;
    let mut held_ids: HashSet<String> = held.iter().map(|c| c.id.clone()).collect();
    while held_ids.len() < 20 {
        let more = claim_soon(&a, Duration::from_secs(5)).await;
        assert!(!more.is_empty(), "node a claimed only {} of 20", held_ids.len());
        held_ids.extend(more.into_iter().map(|c| c.id));
    }
    assert_eq!(held_ids, ids);
    assert_eq!(a.held(), 20);
    // Node a still works on them: its progress keeps them past the ack wait.
    tokio::time::sleep(ack_wait * 5 / 2).await;
    assert!(b.claim(now_ms(), 100, &HashMap::new(), 64).await.unwrap().is_empty());
    assert_eq!(b.get(held_ids.iter().next().unwrap()).await.unwrap().unwrap().status, EventStatus::Running);

    // Node a dies with all 20 in flight: b gets them after the ack wait, as second attempts.
    drop(a);
    let mut again = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.len() < 20 && Instant::now() < deadline {
        for ev in claim_soon(&b, Duration::from_secs(5)).await {
            assert_eq!(ev.attempts, 2, "the dead node's attempt counts");
            b.finish(&ev.id, attempt(2, AttemptOutcome::Success), ok(), now_ms()).await.unwrap();
            assert!(again.insert(ev.id), "redelivered twice");
        }
    }
    assert_eq!(again, ids);
    for id in &ids {
        let v = b.get(id).await.unwrap().unwrap();
        assert_eq!((v.status, v.attempts), (EventStatus::Succeeded, 2));
    }
    assert_eq!(depth(&b, 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_accepted_event() {
    let mut servers = NatsServers::start(3).await.unwrap();
    let nodes = [
        Arc::new(node(&servers, 0, Duration::from_secs(3)).await),
        Arc::new(node(&servers, 1, Duration::from_secs(3)).await),
    ];
    // The server that leads the stream is the one to lose.
    let admin = Cluster::connect(&ClusterOptions::new(&servers.url(), "admin").unwrap()).await.unwrap();
    let info = admin.jetstream().get_stream("NIMBUS_ASYNC").await.unwrap().cached_info().clone();
    let leader = info.cluster.and_then(|c| c.leader).unwrap();
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let total = 400;
    let deadline = Instant::now() + Duration::from_secs(150);
    let finished_all = {
        let accepted = accepted.clone();
        move |s: &Seen| {
            let a = accepted.lock().unwrap();
            a.len() >= total && a.iter().all(|id| s.finished.contains_key(id))
        }
    };
    let workers: Vec<_> =
        nodes.iter().map(|q| tokio::spawn(work(q.clone(), seen.clone(), deadline, finished_all.clone()))).collect();
    let (mut refused, mut killed_at, mut restarted) = (0, None::<Instant>, false);
    // Bounded by the deadline, not by a count: a refusal comes back at once, and a client that
    // retries (as this one does, after a pause) must not run out of tries before the victim
    // is back.
    for n in 0.. {
        if accepted.lock().unwrap().len() >= total || Instant::now() > deadline {
            break;
        }
        let accept = tokio::time::timeout(Duration::from_secs(20), nodes[n % 2].accept(event("f", n), 60_000));
        match accept.await.unwrap_or_else(|_| panic!("accept {n} on node {} hung for 20 s", n % 2)) {
            Ok(a) => accepted.lock().unwrap().push(a.id),
            // Not acknowledged: the client would retry; nothing was promised.
            Err(e) => {
                refused += 1;
                if refused <= 3 || refused % 100 == 0 {
                    eprintln!("accept {n} refused on node {}: {e}", n % 2);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let done = accepted.lock().unwrap().len();
        if done == total / 4 && killed_at.is_none() && !restarted {
            // Mid-run, with events in flight on both nodes.
            servers.kill(victim);
            killed_at = Some(Instant::now());
        }
        // Back once a quarter more was accepted without it, or after 20 s (while the stream
        // elects a new leader, accepts may be refused for a while: refused is not lost).
        if killed_at.is_some_and(|at| done >= total / 2 || at.elapsed() > Duration::from_secs(20)) {
            servers.restart(victim).await.unwrap();
            (killed_at, restarted) = (None, true);
        }
    }
    for w in workers {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
        tokio::time::timeout(left, w).await.expect("a worker hung past the deadline").unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    assert!(accepted.len() >= total, "only {} accepted ({refused} refused)", accepted.len());
    let lost: Vec<&String> = accepted.iter().filter(|id| !seen.finished.contains_key(*id)).collect();
    let mut states = Vec::new();
    for id in &lost {
        let v = nodes[1].get(id).await.unwrap().map(|v| (v.status, v.attempts));
        states.push((id, v, nodes[0].held(), nodes[1].held()));
    }
    assert!(lost.is_empty(), "{} accepted events never finished: {states:?}", lost.len());
    let duplicates: u32 = seen.finished.values().map(|n| n - 1).sum();
    // Each node claims at most 32 at a time: a duplicate is a claim lost in flight.
    assert!(duplicates <= 64, "{duplicates} duplicate runs");
    eprintln!("killed server n{victim}: {} accepted, {refused} refused, {duplicates} duplicates", accepted.len());
    for id in accepted.iter().step_by(20) {
        assert_eq!(nodes[1].get(id).await.unwrap().unwrap().status, EventStatus::Succeeded);
    }
}

#[tokio::test]
async fn retries_dead_letters_redrive_and_purge() {
    let servers = NatsServers::start(1).await.unwrap();
    let q = node(&servers, 0, Duration::from_secs(30)).await;
    let first = q.accept(event("f", 1), 60_000).await.unwrap().id;
    let other = q.accept(event("g", 2), 60_000).await.unwrap().id;
    let claimed = claim_soon(&q, Duration::from_secs(5)).await;
    assert_eq!(claimed.len(), 2);

    // A function error: retried after its backoff, not before, with the counter grown.
    let run_at = now_ms() + 600;
    let retry = Finish::Retry { run_at_ms: run_at, failure: AttemptFailure::Function };
    q.finish(&first, attempt(1, AttemptOutcome::FunctionError), retry, now_ms()).await.unwrap();
    let v = q.get(&first).await.unwrap().unwrap();
    assert_eq!((v.status, v.next_run_ms, v.last_error_type.as_deref()), (EventStatus::Queued, Some(run_at), Some("E")));
    assert!(q.next_due().await.unwrap().is_some_and(|d| d >= run_at));
    // `g` gives up without the dead-letter store (on_failure sent it elsewhere).
    let failed = Finish::Failed { reason: "sent on".into(), dead_letter: false };
    q.finish(&other, attempt(1, AttemptOutcome::FunctionError), failed, now_ms()).await.unwrap();
    assert!(q.claim(now_ms(), 10, &HashMap::new(), 64).await.unwrap().is_empty(), "claimed before its backoff");
    let again = claim_soon(&q, Duration::from_secs(5)).await;
    assert!(now_ms() >= run_at);
    let got: Vec<_> =
        again.iter().map(|c| (c.id.as_str(), c.attempts, c.function_errors, c.platform_failures)).collect();
    assert_eq!(got, [(first.as_str(), 2, 1, 0)]);

    // Given up: dead-lettered, counted, listed; the stream holds nothing more.
    let dead = Finish::Failed { reason: "failed 2 time(s)".into(), dead_letter: true };
    q.finish(&first, attempt(2, AttemptOutcome::FunctionError), dead, now_ms()).await.unwrap();
    let v = q.get(&first).await.unwrap().unwrap();
    assert_eq!(
        (v.status, v.reason.as_deref(), v.history.len()),
        (EventStatus::DeadLettered, Some("failed 2 time(s)"), 2)
    );
    assert_eq!(q.get(&other).await.unwrap().unwrap().status, EventStatus::Failed);
    let dlq = q.list(Some(EventStatus::DeadLettered), None, 10).await.unwrap();
    assert_eq!(dlq.iter().map(|v| v.request_id.as_str()).collect::<Vec<_>>(), [first.as_str()]);
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| (s.function.as_str(), s.dead_lettered)).collect::<Vec<_>>(), [("f", 1)]);
    assert_eq!(depth(&q, 0).await, 0);

    // Redrive: queued again from scratch, run again; only dead-lettered events move.
    assert_eq!(q.redrive(&[], Some("g"), now_ms()).await.unwrap(), 0);
    assert_eq!(q.redrive(std::slice::from_ref(&other), None, now_ms()).await.unwrap(), 0);
    assert_eq!(q.redrive(&[], None, now_ms()).await.unwrap(), 1);
    let v = q.get(&first).await.unwrap().unwrap();
    assert_eq!((v.status, v.attempts, v.reason), (EventStatus::Queued, 0, None));
    let again = claim_soon(&q, Duration::from_secs(5)).await;
    assert_eq!(
        again.iter().map(|c| (c.id.as_str(), c.attempts, c.function_errors)).collect::<Vec<_>>(),
        [(first.as_str(), 1, 0)]
    );
    let dead = Finish::Failed { reason: "again".into(), dead_letter: true };
    q.finish(&first, attempt(1, AttemptOutcome::PlatformError), dead, now_ms()).await.unwrap();
    assert_eq!(q.redrive(std::slice::from_ref(&first), None, now_ms()).await.unwrap(), 1);
    let again = claim_soon(&q, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    let dead = Finish::Failed { reason: "third".into(), dead_letter: true };
    q.finish(&first, attempt(1, AttemptOutcome::PlatformError), dead, now_ms()).await.unwrap();

    // Purge: only dead-lettered events of the function asked for.
    assert_eq!(q.purge(Some("g")).await.unwrap(), 0);
    assert_eq!(q.purge(None).await.unwrap(), 1);
    assert!(q.get(&first).await.unwrap().is_none());
    assert!(q.get(&other).await.unwrap().is_some());
    assert!(q.list(Some(EventStatus::DeadLettered), None, 10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(q.claim(now_ms(), 10, &HashMap::new(), 64).await.unwrap().is_empty());
}

#[tokio::test]
async fn shares_release_idempotency_and_wake_ups() {
    let servers = NatsServers::start(1).await.unwrap();
    let q1 = node(&servers, 0, Duration::from_secs(30)).await;
    let q2 = node(&servers, 1, Duration::from_secs(30)).await;

    // Another node's accept wakes this one.
    let waiting =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(5), q2.changed()).await.is_ok().then_some(q2) },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 0..4 {
        q1.accept(event("a", n), 60_000).await.unwrap();
        q1.accept(event("b", n), 60_000).await.unwrap();
    }
    let q2 = waiting.await.unwrap().expect("an accept on node 1 woke node 2");

    // Shares: a share of 0 skips a function; the default caps the others per claim.
    let shares = HashMap::from([("a".to_owned(), 0)]);
    let claimed = q2.claim(now_ms(), 10, &shares, 2).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.function.as_str()).collect::<Vec<_>>(), ["b", "b"]);
    // Released: queued again, the attempt not counted.
    let released = &claimed[0];
    q2.release(&released.id, now_ms()).await.unwrap();
    let v = q2.get(&released.id).await.unwrap().unwrap();
    assert_eq!((v.status, v.attempts), (EventStatus::Queued, 0));
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rest.len() < 7 && Instant::now() < deadline {
        rest.extend(claim_soon(&q1, Duration::from_secs(2)).await);
    }
    assert_eq!(rest.len(), 7, "every other event, the released one included");
    assert!(rest.iter().all(|c| c.attempts == 1));
    assert!(rest.iter().any(|c| c.id == released.id));

    // Idempotency keys dedupe across nodes within the window, per function.
    let keyed = |function: &str, at: u64| NewEvent {
        idempotency_key: Some("order-7".into()),
        now_ms: at,
        run_at_ms: at,
        ..event(function, 0)
    };
    let now = now_ms();
    let first = q1.accept(keyed("a", now), 60_000).await.unwrap();
    assert!(!first.duplicate);
    let dup = q2.accept(keyed("a", now + 10), 60_000).await.unwrap();
    assert_eq!((dup.id.as_str(), dup.duplicate), (first.id.as_str(), true));
    assert!(!q2.accept(keyed("b", now + 10), 60_000).await.unwrap().duplicate);
    let late = q2.accept(keyed("a", now + 60_001), 60_000).await.unwrap();
    assert!(!late.duplicate, "after the window the same key is a new event");
    assert!(q1.accept(keyed("a", now + 60_002), u64::MAX).await.unwrap().duplicate, "no window: any earlier event");

    // A schedule's slots: fired once, remembered, never moved back.
    let mut ev = event("report", 0);
    ev.source = EventSource::Schedule;
    assert!(q1.fire_slot("k", 5_000, ev.clone()).await.unwrap());
    assert!(!q2.fire_slot("k", 5_000, ev).await.unwrap());
    assert_eq!(q2.last_slot("k").await.unwrap(), Some(5_000));
    assert_eq!(q2.last_slot("never").await.unwrap(), None);
    q1.skip_to("k", 4_000).await.unwrap();
    q1.skip_to("never", 4_000).await.unwrap();
    assert_eq!((q2.last_slot("k").await.unwrap(), q2.last_slot("never").await.unwrap()), (Some(5_000), Some(4_000)));
}
