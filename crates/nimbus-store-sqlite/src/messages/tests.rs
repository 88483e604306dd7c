//! Unit tests of the embedded message store: SQS semantics through the [`MessageQueues`] trait,
//! on a clock the tests move (and the real one for long polls).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicU64, Ordering};

use nimbus_core::event_sources::Redrive;
use nimbus_core::messages::{QueueSpec, FIFO_DEDUP_WINDOW, MAX_MESSAGE_BYTES};

use super::*;

const T0: u64 = 1_800_000_000_000;

struct Db {
    db: Arc<MessageDb>,
    now: Arc<AtomicU64>,
}

impl Db {
    fn advance(&self, d: Duration) {
        self.now.fetch_add(settings::ms(d), Ordering::SeqCst);
    }
}

/// A store on a clock the test moves, with the sweep thread effectively off.
fn store(dir: &tempfile::TempDir) -> Db {
    let now = Arc::new(AtomicU64::new(T0));
    let n = Arc::clone(&now);
    let path = dir.path().join("messages.db");
    let db = MessageDb::open_with(&path, Arc::new(move || n.load(Ordering::SeqCst)), Duration::MAX).unwrap();
    Db { db: Arc::new(db), now }
}

fn standard() -> QueueSettings {
    QueueSettings::default()
}

fn fifo() -> QueueSettings {
    QueueSettings { spec: QueueSpec { fifo: true, ..QueueSpec::default() }, ..QueueSettings::default() }
}

fn with_dlq(dlq: &str, max: u32, base: QueueSettings) -> QueueSettings {
    let redrive = Some(Redrive { dead_letter_queue: dlq.into(), max_receive_count: max });
    QueueSettings { spec: QueueSpec { redrive, ..base.spec }, ..base }
}

fn msg(body: &str) -> NewMessage {
    NewMessage { body: body.into(), sender_id: "tester".into(), ..NewMessage::default() }
}

fn in_group(body: &str, group: &str) -> NewMessage {
    NewMessage { group_id: Some(group.into()), dedup_id: Some(body.into()), ..msg(body) }
}

fn req(max: u32) -> ReceiveRequest {
    ReceiveRequest { max, visibility: None, wait: Some(Duration::ZERO) }
}

async fn send_ok(db: &MessageDb, q: &str, messages: Vec<NewMessage>) -> Vec<Sent> {
    db.send(q, messages).await.unwrap().into_iter().map(|r| r.unwrap()).collect()
}

async fn bodies(db: &MessageDb, q: &str, max: u32) -> Vec<String> {
    db.receive(q, &req(max)).await.unwrap().into_iter().map(|m| m.body).collect()
}

#[tokio::test]
async fn send_receive_delete() {
    let dir = tempfile::tempdir().unwrap();
    let Db { db, .. } = store(&dir);
    assert!(db.create_queue("jobs", &standard()).await.unwrap());
    assert!(!db.create_queue("jobs", &standard()).await.unwrap(), "the same settings again: a no-op");
    let other = QueueSettings { receive_wait: Duration::from_secs(5), ..standard() };
    assert!(matches!(db.create_queue("jobs", &other).await, Err(MqError::QueueNameExists(_))));

    let mut m = msg("hello");
    m.attributes.insert("kind".into(), MessageAttribute::string("greeting"));
    let sent = send_ok(&db, "jobs", vec![m, msg("world")]).await;
    assert_eq!(sent[0].md5_of_body, nimbus_core::events::md5_hex(b"hello"));
    assert!(sent[0].md5_of_attributes.is_some() && sent[1].md5_of_attributes.is_none());
    assert_eq!(sent[0].sequence_number, None);

    let got = db.receive("jobs", &req(10)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["hello", "world"]);
    assert_eq!(got[0].message_id, sent[0].message_id);
    assert_eq!((got[0].receive_count, got[0].first_receive_ms, got[0].sent_ms), (1, T0, T0));
    assert_eq!(got[0].attributes["kind"].string_value.as_deref(), Some("greeting"));
    assert_eq!(got[0].md5_of_attributes, sent[0].md5_of_attributes);
    assert_eq!(got[0].sender_id, "tester");
    let stats = db.stats("jobs").await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.sent_total, stats.received_total), (0, 2, 2, 2));

    let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    assert!(db.delete("jobs", &handles).await.unwrap().iter().all(Result::is_ok));
    let results = db.delete("jobs", &["not a handle".to_owned()]).await.unwrap();
    assert!(matches!(results[0], Err(MqError::InvalidReceiptHandle(_))));
    let stats = db.stats("jobs").await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.deleted_total, stats.oldest_sent_ms), (0, 0, 2, None));
    assert!(matches!(db.send("nope", vec![msg("x")]).await, Err(MqError::NoSuchQueue(_))));
    assert!(db.delete_queue("jobs").await.unwrap());
    assert!(matches!(db.receive("jobs", &req(1)).await, Err(MqError::NoSuchQueue(_))));
    assert!(matches!(db.receive("never", &req(1)).await, Err(MqError::NoSuchQueue(_))));
    assert!(db.wake.lock().unwrap().is_empty(), "no wake-up entries for names that are not queues");
}

#[tokio::test]
async fn a_passed_visibility_timeout_returns_the_message_and_old_receipts_go_stale() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    t.db.create_queue("q", &standard()).await.unwrap();
    send_ok(&t.db, "q", vec![msg("m")]).await;
    let first = t.db.receive("q", &req(1)).await.unwrap().remove(0);
    assert!(t.db.receive("q", &req(1)).await.unwrap().is_empty(), "hidden for 30 s");
    t.advance(Duration::from_secs(29));
    assert!(t.db.receive("q", &req(1)).await.unwrap().is_empty());
    t.advance(Duration::from_secs(1));
    let second = t.db.receive("q", &req(1)).await.unwrap().remove(0);
    assert_eq!((second.message_id.as_str(), second.receive_count), (first.message_id.as_str(), 2));
    assert_eq!(second.first_receive_ms, T0, "the first receive's time is kept");

    let stale = t.db.delete("q", std::slice::from_ref(&first.receipt_handle)).await.unwrap();
    assert!(matches!(stale[0], Err(MqError::InvalidReceiptHandle(_))), "{stale:?}");
    let stale = t.db.change_visibility("q", &[(first.receipt_handle, Duration::ZERO)]).await.unwrap();
    assert!(matches!(stale[0], Err(MqError::InvalidReceiptHandle(_))));

    // A handle is only good on the queue that gave it.
    t.db.create_queue("other", &standard()).await.unwrap();
    let elsewhere = t.db.delete("other", std::slice::from_ref(&second.receipt_handle)).await.unwrap();
    assert!(matches!(elsewhere[0], Err(MqError::InvalidReceiptHandle(_))));

    // The latest handle works: visible again at once, then deleted.
    let ok = t.db.change_visibility("q", &[(second.receipt_handle, Duration::ZERO)]).await.unwrap();
    assert!(ok[0].is_ok());
    let third = t.db.receive("q", &ReceiveRequest { visibility: Some(Duration::from_secs(1)), ..req(1) }).await;
    let third = third.unwrap().remove(0);
    assert_eq!(third.receive_count, 3);
    t.advance(Duration::from_secs(1));
    assert_eq!(bodies(&t.db, "q", 1).await, ["m"], "the receive's own visibility timeout applied");
}

#[tokio::test]
async fn dead_letter_after_max_receives_and_redrive_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    let err = t.db.create_queue("work", &with_dlq("work-dlq", 2, standard())).await.unwrap_err();
    assert!(err.to_string().contains("dead-letter queue work-dlq of work does not exist"), "{err}");
    t.db.create_queue("work-dlq", &standard()).await.unwrap();
    t.db.create_queue("work", &with_dlq("work-dlq", 2, standard())).await.unwrap();
    let sent = send_ok(&t.db, "work", vec![msg("poison")]).await;
    for n in 1..=2 {
        let got = t.db.receive("work", &ReceiveRequest { visibility: Some(Duration::ZERO), ..req(1) }).await;
        assert_eq!(got.unwrap()[0].receive_count, n);
    }
    send_ok(&t.db, "work", vec![msg("next")]).await;
    assert_eq!(bodies(&t.db, "work", 1).await, ["next"], "the third receive moves it and takes the next");
    assert_eq!(t.db.stats("work").await.unwrap().dead_lettered_total, 1);
    assert_eq!(t.db.stats("work").await.unwrap().visible, 0);
    assert_eq!(t.db.stats("work").await.unwrap().in_flight, 1);

    let peeked = t.db.peek("work-dlq", 10).await.unwrap();
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].message_id, sent[0].message_id, "it keeps its id");
    assert_eq!((peeked[0].body.as_str(), peeked[0].source_queue.as_deref()), ("poison", Some("work")));

    assert_eq!(t.db.redrive("work-dlq", None).await.unwrap(), 1);
    assert!(t.db.peek("work-dlq", 10).await.unwrap().is_empty());
    let back = t.db.receive("work", &req(1)).await.unwrap();
    assert_eq!((back[0].message_id.as_str(), back[0].receive_count), (sent[0].message_id.as_str(), 1));
    assert!(matches!(t.db.redrive("nope", None).await, Err(MqError::NoSuchQueue(_))));
}

/// A FIFO receive that moves its group's head to the dead-letter queue delivers the next
/// message of the group in the same receive.
#[tokio::test]
async fn a_fifo_receive_dead_letters_the_head_and_delivers_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    t.db.create_queue("dlq.fifo", &fifo()).await.unwrap();
    t.db.create_queue("q.fifo", &with_dlq("dlq.fifo", 1, fifo())).await.unwrap();
    send_ok(&t.db, "q.fifo", vec![in_group("x", "g")]).await;
    let once = ReceiveRequest { visibility: Some(Duration::ZERO), ..req(1) };
    assert_eq!(t.db.receive("q.fifo", &once).await.unwrap()[0].body, "x");
    send_ok(&t.db, "q.fifo", vec![in_group("y", "g")]).await;
    assert_eq!(bodies(&t.db, "q.fifo", 1).await, ["y"]);
    let dead = t.db.peek("dlq.fifo", 10).await.unwrap();
    assert_eq!((dead[0].body.as_str(), dead[0].group_id.as_deref()), ("x", Some("g")));
}

#[tokio::test]
async fn fifo_keeps_group_order_blocks_a_group_in_flight_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    let err = t.db.create_queue("orders", &fifo()).await.unwrap_err();
    assert!(err.to_string().contains(".fifo"), "{err}");
    t.db.create_queue("orders.fifo", &fifo()).await.unwrap();
    let sent = send_ok(
        &t.db,
        "orders.fifo",
        vec![in_group("a1", "a"), in_group("b1", "b"), in_group("a2", "a"), in_group("b2", "b")],
    )
    .await;
    let seqs: Vec<u64> = sent.iter().map(|s| s.sequence_number.as_ref().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let first = t.db.receive("orders.fifo", &req(1)).await.unwrap();
    assert_eq!(first[0].body, "a1");
    assert_eq!(first[0].sequence_number, sent[0].sequence_number);
    // Group a is in flight: only b's messages, in order.
    assert_eq!(bodies(&t.db, "orders.fifo", 10).await, ["b1", "b2"]);
    assert!(bodies(&t.db, "orders.fifo", 10).await.is_empty());
    // When a1's visibility passes it comes back, still ahead of a2.
    t.advance(Duration::from_secs(30));
    let again = t.db.receive("orders.fifo", &req(1)).await.unwrap();
    assert_eq!((again[0].body.as_str(), again[0].receive_count), ("a1", 2));
    t.db.delete("orders.fifo", &[again[0].receipt_handle.clone()]).await.unwrap();
    // b1 and b2 (never deleted) are back too; everything comes in send order.
    assert_eq!(bodies(&t.db, "orders.fifo", 10).await, ["b1", "a2", "b2"]);

    // Deduplication: same id within five minutes is a no-op returning the first message's id.
    let again = send_ok(&t.db, "orders.fifo", vec![in_group("a1", "a")]).await;
    assert_eq!(again[0].message_id, sent[0].message_id);
    assert_eq!(t.db.stats("orders.fifo").await.unwrap().sent_total, 4);
    t.advance(FIFO_DEDUP_WINDOW);
    let fresh = send_ok(&t.db, "orders.fifo", vec![in_group("a1", "a")]).await;
    assert_ne!(fresh[0].message_id, sent[0].message_id);
}

#[tokio::test]
async fn content_based_dedup_and_fifo_send_checks() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    let cbd = QueueSettings { content_based_dedup: true, ..fifo() };
    t.db.create_queue("c.fifo", &cbd).await.unwrap();
    t.db.create_queue("plain.fifo", &fifo()).await.unwrap();
    t.db.create_queue("std", &standard()).await.unwrap();
    let m = |body: &str| NewMessage { group_id: Some("g".into()), ..msg(body) };
    let sent = send_ok(&t.db, "c.fifo", vec![m("same"), m("same"), m("other")]).await;
    assert_eq!(sent[0].message_id, sent[1].message_id);
    assert_ne!(sent[0].message_id, sent[2].message_id);

    let err = |r: Result<BatchResults<Sent>, MqError>| r.unwrap().remove(0).unwrap_err().to_string();
    assert!(err(t.db.send("plain.fifo", vec![m("x")]).await).contains("MessageDeduplicationId"));
    assert!(err(t.db.send("plain.fifo", vec![msg("x")]).await).contains("MessageGroupId"));
    let delayed = NewMessage { delay: Some(Duration::from_secs(1)), ..in_group("x", "g") };
    assert!(err(t.db.send("plain.fifo", vec![delayed]).await).contains("DelaySeconds"));
    assert!(err(t.db.send("std", vec![in_group("x", "g")]).await).contains("standard queue"));
    assert!(err(t.db.send("std", vec![msg("")]).await).contains("empty"));
    let big = "x".repeat(MAX_MESSAGE_BYTES as usize + 1);
    assert!(matches!(t.db.send("std", vec![msg(&big)]).await.unwrap()[0], Err(MqError::MessageTooLong(..))));
    let mut many = msg("x");
    for i in 0..11 {
        many.attributes.insert(format!("a{i}"), MessageAttribute::string("v"));
    }
    assert!(err(t.db.send("std", vec![many]).await).contains("at most 10"));
    // One bad message does not stop its batch's good ones.
    let mixed = t.db.send("std", vec![msg(""), msg("ok")]).await.unwrap();
    assert!(mixed[0].is_err() && mixed[1].is_ok());
    let bad = ReceiveRequest { max: 0, ..req(1) };
    assert!(t.db.receive("std", &bad).await.unwrap_err().to_string().contains("MaxNumberOfMessages"));
}

#[tokio::test]
async fn delays_retention_purge_and_peek() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    let delayed =
        QueueSettings { spec: QueueSpec { delay: Duration::from_secs(10), ..QueueSpec::default() }, ..standard() };
    t.db.create_queue("d", &delayed).await.unwrap();
    let quick = NewMessage { delay: Some(Duration::from_secs(2)), ..msg("quick") };
    send_ok(&t.db, "d", vec![msg("slow"), quick]).await;
    assert_eq!(t.db.stats("d").await.unwrap().delayed, 2);
    assert!(bodies(&t.db, "d", 10).await.is_empty());
    t.advance(Duration::from_secs(2));
    assert_eq!(bodies(&t.db, "d", 10).await, ["quick"], "the message's delay overrides the queue's");
    t.advance(Duration::from_secs(8));
    assert_eq!(bodies(&t.db, "d", 10).await, ["slow"]);

    let short =
        QueueSettings { spec: QueueSpec { retention: Duration::from_secs(60), ..QueueSpec::default() }, ..standard() };
    t.db.create_queue("r", &short).await.unwrap();
    send_ok(&t.db, "r", vec![msg("old")]).await;
    t.advance(Duration::from_secs(30));
    send_ok(&t.db, "r", vec![msg("new")]).await;
    let peeked = t.db.peek("r", 10).await.unwrap();
    assert_eq!(peeked.iter().map(|p| p.body.as_str()).collect::<Vec<_>>(), ["old", "new"]);
    assert!(!peeked[0].in_flight && peeked[0].receive_count == 0, "peek changes nothing");
    t.advance(Duration::from_secs(30));
    assert_eq!(t.db.stats("r").await.unwrap().visible, 1, "the oldest is past its retention");
    assert_eq!(t.db.sweep().await.unwrap(), 1);
    assert_eq!(t.db.peek("r", 10).await.unwrap().len(), 1);

    send_ok(&t.db, "r", vec![msg("a"), msg("b")]).await;
    assert_eq!(t.db.purge("r").await.unwrap(), 3);
    assert_eq!(t.db.stats("r").await.unwrap().visible, 0);
}

#[tokio::test]
async fn a_send_wakes_a_long_poll_at_once_and_an_idle_one_returns_empty_after_its_wait() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MessageDb::open(&dir.path().join("messages.db")).unwrap());
    db.create_queue("q", &standard()).await.unwrap();
    let wait = Duration::from_secs(10);
    let poll = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            db.receive("q", &ReceiveRequest { max: 10, visibility: None, wait: Some(wait) }).await.unwrap()
        })
    };
    // Send once the poll found nothing and waits, so the send's wake-up is what ends it.
    let until = Instant::now() + Duration::from_secs(5);
    while db.waiting_polls() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(db.waiting_polls(), 1);
    let start = Instant::now();
    send_ok(&db, "q", vec![msg("ping")]).await;
    let got = poll.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["ping"]);
    assert!(elapsed < wait / 2, "the send woke the poll after {elapsed:?}");

    let idle = Duration::from_millis(300);
    let start = Instant::now();
    let got = db.receive("q", &ReceiveRequest { max: 1, visibility: None, wait: Some(idle) }).await.unwrap();
    assert!(got.is_empty());
    assert!(start.elapsed() >= idle && start.elapsed() < idle * 10, "{:?}", start.elapsed());

    // Without a wait of its own, a receive waits the queue's ReceiveMessageWaitTimeSeconds.
    db.set_settings("q", &QueueSettings { receive_wait: idle, ..standard() }).await.unwrap();
    let start = Instant::now();
    assert!(db.receive("q", &ReceiveRequest { max: 1, visibility: None, wait: None }).await.unwrap().is_empty());
    assert!(start.elapsed() >= idle && start.elapsed() < idle * 10, "{:?}", start.elapsed());
    db.close();
}

#[tokio::test]
async fn a_long_poll_wakes_when_a_delayed_message_becomes_visible() {
    let dir = tempfile::tempdir().unwrap();
    let db = MessageDb::open(&dir.path().join("messages.db")).unwrap();
    db.create_queue("q", &standard()).await.unwrap();
    let delayed = NewMessage { delay: Some(Duration::from_secs(1)), ..msg("later") };
    send_ok(&db, "q", vec![delayed]).await;
    let start = Instant::now();
    let wait = Duration::from_secs(10);
    let got = db.receive("q", &ReceiveRequest { max: 1, visibility: None, wait: Some(wait) }).await.unwrap();
    assert_eq!(got[0].body, "later");
    assert!(start.elapsed() >= Duration::from_millis(900) && start.elapsed() < wait / 2, "{:?}", start.elapsed());
    db.close();
}

#[tokio::test]
async fn sent_messages_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messages.db");
    let id = {
        let db = MessageDb::open(&path).unwrap();
        db.create_queue("durable", &standard()).await.unwrap();
        let sent = send_ok(&db, "durable", vec![msg("kept")]).await;
        drop(db);
        sent[0].message_id.clone()
    };
    let db = MessageDb::open(&path).unwrap();
    assert_eq!(db.list_queues("").await.unwrap().iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["durable"]);
    let got = db.receive("durable", &req(1)).await.unwrap();
    assert_eq!((got[0].message_id.as_str(), got[0].body.as_str()), (id.as_str(), "kept"));
    db.close();
}

#[tokio::test]
async fn ensure_updates_settings_and_refuses_a_type_change() {
    let dir = tempfile::tempdir().unwrap();
    let t = store(&dir);
    t.db.ensure_queue("q", &standard()).await.unwrap();
    let longer = QueueSettings {
        spec: QueueSpec { visibility_timeout: Duration::from_secs(90), ..QueueSpec::default() },
        ..standard()
    };
    t.db.ensure_queue("q", &longer).await.unwrap();
    let info = t.db.queue("q").await.unwrap().unwrap();
    assert_eq!(info.settings, longer);
    assert!(matches!(t.db.set_settings("nope", &standard()).await, Err(MqError::NoSuchQueue(_))));
    let fifo_q = QueueSettings { spec: QueueSpec { fifo: true, ..QueueSpec::default() }, ..standard() };
    assert!(t.db.ensure_queue("q", &fifo_q).await.is_err());
    assert!(t.db.list_queues("x").await.unwrap().is_empty());
}

/// Waiting polls are woken one per new message: three polls and a batch of three messages
/// give each poll one message, long before their wait ends.
#[tokio::test]
async fn a_batch_send_wakes_as_many_polls_as_it_has_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(MessageDb::open(&dir.path().join("messages.db")).unwrap());
    db.create_queue("q", &standard()).await.unwrap();
    let wait = Duration::from_secs(10);
    let polls: Vec<_> = (0..3)
        .map(|_| {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                db.receive("q", &ReceiveRequest { max: 1, visibility: None, wait: Some(wait) }).await.unwrap()
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(5);
    while db.waiting_polls() < 3 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(db.waiting_polls(), 3);
    let start = Instant::now();
    send_ok(&db, "q", vec![msg("a"), msg("b"), msg("c")]).await;
    let mut got = Vec::new();
    for p in polls {
        let mut one = p.await.unwrap();
        assert_eq!(one.len(), 1);
        got.push(one.remove(0).body);
    }
    assert!(start.elapsed() < wait / 2, "{:?}", start.elapsed());
    got.sort();
    assert_eq!(got, ["a", "b", "c"]);
    db.close();
}

#[tokio::test]
async fn the_shared_semantics_table_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = MessageDb::open(&dir.path().join("messages.db")).unwrap();
    nimbus_core::messages_conformance::semantics_table(&db, "conf").await.unwrap();
    db.close();
}
