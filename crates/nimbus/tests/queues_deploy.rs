//! Queues declared in nimbus.toml (`[queues.NAME]`) end to end: `nimbus up` creates them in
//! `messages.db` with their settings and redrive policy (the dead-letter queue first, whatever
//! the names' order); a later deploy updates their settings, keeps their messages, and keeps a
//! queue it no longer declares, saying so. The store is read back with `MessageDb` once the
//! server has stopped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{App, Server};
use nimbus_core::messages::{MessageQueues, NewMessage, QueueSettings};
use nimbus_store_sqlite::MessageDb;

/// `jobs` sorts before its dead-letter queue `jobs-dlq`, so creating in name order alone would
/// name a queue that does not exist yet; `ping` and `pong` are each other's dead-letter queue.
const QUEUES: &str = "[queues.jobs]\nvisibility_timeout = \"45s\"\nmax_receive_count = 3\n\
                      dead_letter_queue = \"jobs-dlq\"\n\
                      [queues.jobs-dlq]\nretention = \"14d\"\n\
                      [queues.extra]\n\
                      [queues.ping]\nmax_receive_count = 1\ndead_letter_queue = \"pong\"\n\
                      [queues.pong]\nmax_receive_count = 1\ndead_letter_queue = \"ping\"\n";

fn app() -> App {
    App::new("queued").conformance("python", "worker", "").raw(QUEUES).finish()
}

async fn settings(db: &MessageDb, name: &str) -> QueueSettings {
    db.queue(name).await.unwrap().unwrap_or_else(|| panic!("queue {name} was not created")).settings
}

fn open(data_dir: &Path) -> MessageDb {
    MessageDb::open(&data_dir.join("messages.db")).unwrap()
}

#[tokio::test]
async fn up_creates_declared_queues_and_a_redeploy_updates_them_and_keeps_dropped_ones() {
    let app = app();
    let data_dir = app.path().join(".nimbus");
    let mut server = Server::start(app.path());
    assert!(server.stop().success());

    let db = open(&data_dir);
    let names: Vec<String> = db.list_queues("").await.unwrap().into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["extra", "jobs", "jobs-dlq", "ping", "pong"]);
    assert_eq!(settings(&db, "ping").await.spec.redrive.unwrap().dead_letter_queue, "pong");
    assert_eq!(settings(&db, "pong").await.spec.redrive.unwrap().dead_letter_queue, "ping");
    let jobs = settings(&db, "jobs").await;
    assert_eq!(jobs.spec.visibility_timeout, Duration::from_secs(45));
    let redrive = jobs.spec.redrive.unwrap();
    assert_eq!((redrive.dead_letter_queue.as_str(), redrive.max_receive_count), ("jobs-dlq", 3));
    assert_eq!(settings(&db, "jobs-dlq").await.spec.retention, Duration::from_secs(14 * 24 * 3600));
    let msg = NewMessage { body: "kept across deploys".into(), sender_id: "test".into(), ..NewMessage::default() };
    assert!(db.send("jobs", vec![msg]).await.unwrap()[0].is_ok());
    db.close();
    drop(db);

    let mut server = Server::start(app.path());
    let toml = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    let toml =
        toml.replace("visibility_timeout = \"45s\"", "visibility_timeout = \"90s\"").replace("[queues.extra]\n", "");
    std::fs::write(app.path().join("nimbus.toml"), toml).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("queue extra is no longer declared; it is kept with its messages"), "{text}");
    assert!(server.stop().success());

    let db = open(&data_dir);
    let jobs = settings(&db, "jobs").await;
    assert_eq!(jobs.spec.visibility_timeout, Duration::from_secs(90), "the redeploy updated the settings");
    assert_eq!(jobs.spec.redrive.unwrap().dead_letter_queue, "jobs-dlq");
    assert!(db.queue("extra").await.unwrap().is_some(), "a dropped queue is kept");
    let peeked = db.peek("jobs", 10).await.unwrap();
    assert_eq!(peeked.iter().map(|p| p.body.as_str()).collect::<Vec<_>>(), ["kept across deploys"]);
    db.close();
}
