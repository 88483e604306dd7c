//! `wasi:keyvalue` through `nimbus up`: the KV test guest (`tests/fixtures/wasm/kv.wasm`)
//! deployed with `[kv.counters]` granted, driven over HTTP; what it wrote is read back from the
//! data dir's KV store (`DATA_DIR/kv.db`) after nimbus stops, so it is on disk, not in the
//! instance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{fixture, App, Server};
use nimbus_core::KvStore;
use nimbus_store_sqlite::KvDb;

/// An app with the KV guest as `f` on its own paths (`/kv/*`, `/incr/*`, `/list`), granted `counters` (declared) but not
/// `secret` (declared, granted to nobody).
fn kv_app() -> App {
    let app = App::new("wasmkv");
    let code = app.path().join("functions/f");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::copy(fixture("wasm/kv.wasm"), code.join("kv.wasm")).unwrap();
    app.raw(
        "[kv.counters]\n[kv.secret]\n\n[functions.f]\nruntime = \"wasm\"\n\n\
         [functions.f.grants]\nkv = { counters = \"read-write\" }\n",
    )
    .route("*", "/kv/*", "f")
    .route("*", "/incr/*", "f")
    .route("GET", "/list", "f")
    .finish()
}

async fn send(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = format!("{}{path}", server.url);
    let r = server.client().request(method.parse().unwrap(), url).body(body.to_owned()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_wasm_function_uses_its_granted_namespace_and_is_refused_another() {
    let app = kv_app();
    let data = app.path().join(".nimbus");
    let mut server = Server::start(app.path());

    assert_eq!(send(&server, "PUT", "/kv/greeting", "hello from wasm").await, (200, "stored".into()));
    assert_eq!(send(&server, "GET", "/kv/greeting", "").await, (200, "hello from wasm".into()));
    assert_eq!(send(&server, "PUT", "/kv/gone", "x").await.0, 200);
    assert_eq!(send(&server, "DELETE", "/kv/gone", "").await, (200, "deleted".into()));
    assert_eq!(send(&server, "GET", "/kv/gone", "").await, (404, "absent".into()));
    // Concurrent increments through the gateway and separate instances: none is lost.
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (client, url) = (server.client(), format!("{}/incr/hits", server.url));
        calls.push(tokio::spawn(async move { client.post(url).send().await.unwrap().status().as_u16() }));
    }
    for c in calls {
        assert_eq!(tokio::time::timeout(Duration::from_secs(60), c).await.unwrap().unwrap(), 200);
    }
    assert_eq!(send(&server, "GET", "/kv/hits", "").await, (200, "40".into()), "the value is its decimal string");
    assert_eq!(send(&server, "GET", "/list?prefix=h", "").await, (200, "hits".into()));

    // wasi:keyvalue calls are metered like every KV call: 2 sets and 40 increments are writes,
    // the value bytes are what was set.
    let usage = server.admin("/v1/usage").await;
    let ns =
        usage["storage"].as_array().unwrap().iter().find(|s| s["kind"] == "kv" && s["name"] == "counters").unwrap();
    assert_eq!(
        (ns["writes"].as_u64(), ns["lists"].as_u64(), ns["bytesIn"].as_u64()),
        (Some(42), Some(1), Some(16)),
        "{ns:#}"
    );
    assert!(ns["reads"].as_u64().unwrap() >= 3 && ns["deletes"].as_u64().unwrap() >= 1, "{ns:#}");

    // Declared, but not granted to this function.
    let r = server.client().get(format!("{}/kv/greeting?ns=secret", server.url)).send().await.unwrap();
    let id = r.headers()["x-nimbus-request-id"].to_str().unwrap().to_owned();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (403, "access-denied".into()));
    // The log is stored with the record, moments after the response.
    server.records("f", 48).await;
    let log = server.cli(&["logs", "f", "--request-id", &id]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("wasi:keyvalue open on KV namespace \"secret\" denied")
            && log.contains("[functions.f.grants] kv = { secret = \"read-write\" }"),
        "the refusal is in the invocation's log: {log}"
    );

    assert!(server.stop().success());
    let kv = KvDb::open(&data.join("kv.db")).unwrap();
    let value = |key: &'static str| {
        let kv = &kv;
        async move { kv.get("counters", key).await.unwrap().map(|e| String::from_utf8_lossy(&e.value).into_owned()) }
    };
    assert_eq!(value("greeting").await.as_deref(), Some("hello from wasm"));
    assert_eq!(value("hits").await.as_deref(), Some("40"));
    assert_eq!(value("gone").await, None);
    assert_eq!(kv.get("secret", "greeting").await.unwrap(), None, "nothing reached the ungranted namespace");
    kv.close();
}
