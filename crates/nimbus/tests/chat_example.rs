//! examples/chat end to end, as its README runs it: tokens of the slow fake model reach the
//! client over server-sent events while the model is still producing the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{copy_dir, repo_root, Server};

#[tokio::test]
async fn the_chat_example_streams_tokens_as_the_model_makes_them() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("chat");
    copy_dir(&repo_root().join("examples/chat"), &app);
    // A slower model than the example's, so "the rest is still coming" holds with a wide margin:
    // the whole answer takes over three seconds, its first token a quarter of one.
    let manifest = std::fs::read_to_string(app.join("nimbus.toml")).unwrap();
    std::fs::write(app.join("nimbus.toml"), manifest.replace("TOKEN_DELAY_MS = \"40\"", "TOKEN_DELAY_MS = \"250\""))
        .unwrap();
    let server = Server::start(&app);
    let mut resp = server
        .client()
        .post(format!("{}/chat", server.url))
        .body(r#"{"prompt": "what is streaming?"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.unwrap().unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.starts_with("data: {\"token\":"), "{first:?}");
    assert!(!first.contains("event: done"), "the whole answer came at once: {first:?}");
    let mut body = first;
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.unwrap().unwrap() {
            Some(c) => body.push_str(&String::from_utf8_lossy(&c)),
            None => break,
        }
    }
    assert!(body.ends_with("event: done\ndata: {}\n\n"), "{body:?}");
    assert!(body.matches("data: {\"token\"").count() > 5, "{body:?}");
    // The usage line logged after the response (waitUntil) is in the invocation's log.
    let rows = server.records("chat", 1).await;
    let id = rows[0]["requestId"].as_str().unwrap();
    let logs = server.admin(&format!("/v1/functions/chat/logs?requestId={id}")).await;
    assert!(logs.to_string().contains("tokens"), "{logs:#}");
}
