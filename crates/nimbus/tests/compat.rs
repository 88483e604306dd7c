//! A data dir written by an earlier release opens and serves. The fixture
//! (`tests/fixtures/datadir-0.1`) was made by nimbus 0.1 with `scripts/make-datadir-fixture.sh`:
//! two deployments of its app (live = 2, greeting "Howdy"; version 1 says "Hello"), invocation
//! records of every trigger, a succeeded and a dead-lettered async event, and the schedule's
//! state. Its deployment rows predate the versioned storage format (they read as format 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::Server;
use serde_json::{json, Value};

/// Copy the fixture into a temp dir: the test must never write into the repository.
fn copy_fixture(to: &Path) -> (PathBuf, PathBuf) {
    let from = common::repo_root().join("crates/nimbus/tests/fixtures/datadir-0.1");
    for entry in walkdir::WalkDir::new(&from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(&from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
    (to.join("app"), to.join("data"))
}

#[tokio::test]
async fn a_data_dir_written_by_release_0_1_opens_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (app, data) = copy_fixture(tmp.path());
    let mut server = Server::start_with(&app, &data, &[]);

    // The app is unchanged since that release's `nimbus up`: nothing is deployed, live stays 2.
    let info = server.admin("/v1/app").await;
    assert_eq!((info["app"].as_str(), info["live"].as_u64()), (Some("legacy"), Some(2)), "{info:#}");
    assert_eq!(info["deployments"].as_array().map(Vec::len), Some(2), "{info:#}");

    // Every runtime serves from the stored versions.
    let r = server.get("/greet/ada").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Howdy, ada!");
    let old = server.invoke_raw("greet?Qualifier=1", json!({"pathParameters": {"name": "v1"}}).to_string()).await;
    let old: Value = serde_json::from_str(&old.text().await.unwrap()).unwrap();
    assert!(old["body"].as_str().unwrap().contains("Hello, v1!"), "{old:#}");
    let r = server.get("/hello/compat").await;
    assert_eq!(r.status(), 200, "the wasm function serves");
    let shout = server.invoke("shout", &json!({"body": "{\"text\":\"hi\"}"})).await;
    assert_eq!(shout.body["shouted"], "HI", "{:?}", shout.body);

    // The old records and the dead-lettered event read back through the new types.
    let records = server.admin("/v1/invocations?function=shout&limit=100").await;
    let statuses: Vec<&str> = records.as_array().unwrap().iter().filter_map(|r| r["status"].as_str()).collect();
    assert!(statuses.contains(&"function_error"), "{records:#}");
    let dlq = server.admin("/v1/dlq").await;
    let dead = dlq.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dlq:#}");
    assert_eq!((dead[0]["function"].as_str(), dead[0]["source"].as_str()), (Some("shout"), Some("http")));
    let ls = server.cli(&["ls"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success() && text.contains("app legacy  live version 2"), "{text}");

    // Rolling back moves `live` to the version stored in the old format, and survives a restart.
    let out = server.cli(&["rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = server.get("/greet/ada").await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Hello, ada!");
    server.stop();
    let server = Server::start_with(&app, &data, &[]);
    let r = server.get("/greet/ada").await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Hello, ada!");

    // A new deploy is written in the current format beside the old rows (the deploy answers
    // once the new version is live).
    let manifest = std::fs::read_to_string(app.join("nimbus.toml")).unwrap();
    std::fs::write(app.join("nimbus.toml"), manifest.replace("\"Hello\"", "\"Hi\"")).unwrap();
    let out = server.cli(&["deploy", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = server.get("/greet/ada").await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Hi, ada!");
    assert_eq!(server.admin("/v1/app").await["live"], 3);

    // The tables added since (tokens, the audit log) are created on open: a token made here
    // works, and the audit log holds what this test did.
    let out = server.cli(&["token", "create", "--scope", "read", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = serde_json::from_slice::<Value>(&out.stdout).unwrap()["secret"].as_str().unwrap().to_owned();
    let r = server.client().get(format!("{}/v1/app", server.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let audit = server.admin("/v1/audit?action=deploy").await;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "the deploy above: {audit:#}");
}
