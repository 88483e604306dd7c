//! The KV store end to end: Node and Python functions use their granted namespaces through the
//! `nimbus` module shipped with the runtime (nothing installed) and are refused the others (the
//! refusal is in their log); the management API and the CLI; TTL expiry; namespaces created at
//! deploy and kept when a deploy drops them; acknowledged writes survive `kill -9`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use std::time::{Duration, Instant};

use common::{copy_dir, fixture, unsafe_kill, App, Server};
use serde_json::{json, Value};

const GRANTS: &str = "kv = { data = \"read-write\", readonly = \"read\" }";

/// Two functions (node `js`, python `py`) granted `data` (read-write) and `readonly` (read);
/// `secret` is declared and granted to nobody.
fn app() -> App {
    let app = App::new("kvapp");
    copy_dir(&fixture("kv/node"), &app.path().join("functions/js"));
    copy_dir(&fixture("kv/python"), &app.path().join("functions/py"));
    app.raw(&format!(
        "[kv.data]\n[kv.readonly]\n[kv.secret]\n\
         [functions.js]\nruntime = \"node\"\nhandler = \"index.handler\"\ntimeout = \"10s\"\n\
         [functions.js.grants]\n{GRANTS}\n\
         [functions.py]\nruntime = \"python\"\nhandler = \"handler.handler\"\ntimeout = \"10s\"\n\
         [functions.py.grants]\n{GRANTS}\n"
    ))
    .finish()
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

/// What both functions' scenario returns, whatever their language.
fn check_scenario(runtime: &str, out: &Value, prefix: &str) {
    let ctx = format!("{runtime}: {out:#}");
    assert!(out["put"].as_u64().unwrap() > 0, "{ctx}");
    assert_eq!(out["get"], "hello", "{ctx}");
    assert_eq!(out["missing"], Value::Null, "{ctx}");
    assert_eq!(out["bytes"], json!(b"hello".to_vec()), "{ctx}");
    assert_eq!((out["inc1"].as_i64(), out["inc2"].as_i64()), (Some(1), Some(3)), "{ctx}");
    assert_eq!(out["counter"], "3", "increments are kept as decimal text: {ctx}");
    assert!(out["casOk"].as_u64().unwrap() > out["put"].as_u64().unwrap(), "{ctx}");
    assert_eq!(out["casStale"], Value::Null, "a stale version does not swap: {ctx}");
    assert!(out["casNew"].as_u64().is_some(), "null expects an absent key: {ctx}");
    assert_eq!(out["afterCas"], "swapped", "{ctx}");
    let names = |page: &Value| -> Vec<String> {
        page["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_owned()).collect()
    };
    let mut all = names(&out["list"]);
    assert_eq!(all.len(), 2, "{ctx}");
    assert!(out["list"]["cursor"].is_string(), "{ctx}");
    all.extend(names(&out["list2"]));
    assert_eq!(out["list2"]["cursor"], Value::Null, "{ctx}");
    let want: Vec<String> = ["a", "c", "j", "new"].iter().map(|k| format!("{prefix}{k}")).collect();
    assert_eq!(all, want, "pages in byte order, each key once: {ctx}");
    let c = out["list"]["keys"].as_array().unwrap().iter().find(|k| k["name"] == format!("{prefix}c")).unwrap();
    assert!(
        c["expiration"].as_f64().unwrap() > 1.7e9,
        "a counter with a TTL lists its expiration in Unix seconds: {ctx}"
    );
    assert_eq!((out["deleted"].as_bool(), out["deletedAgain"].as_bool()), (Some(true), Some(false)), "{ctx}");
    assert_eq!(out["slash"], "slash", "a key with / and a space: {ctx}");
    assert_eq!(out["readonly"], "seeded", "{ctx}");
    assert_eq!(out["deniedRead"], "AccessDenied", "{ctx}");
    assert_eq!(out["deniedWrite"], "AccessDenied", "a read grant does not write: {ctx}");
    assert_eq!(out["notANumber"], "NotANumber", "{ctx}");
}

/// Node and Python functions use their namespaces with the shipped client, sandboxed (over the
/// instance's socket); the outside sees what they wrote; refusals are in the callers' logs.
#[tokio::test]
async fn functions_use_granted_namespaces_and_are_refused_others() {
    let app = app();
    let server = Server::start(app.path());
    let (status, _, body) = server.admin_request(reqwest::Method::PUT, "/v1/kv/readonly/k", "seeded").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for (function, runtime) in [("js", "node"), ("py", "python")] {
        let prefix = format!("{runtime}-");
        let r = server.invoke_with(function, &json!({"prefix": prefix}), &[("x-amz-log-type", "Tail")]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
        assert_eq!(r.function_error(), None, "{}: {}\n{}", runtime, String::from_utf8_lossy(&r.raw), r.log());
        check_scenario(runtime, &r.body, &prefix);
        let log = r.log();
        assert!(
            log.contains("KV: read key \"k\" of KV namespace secret refused"),
            "{runtime}: no refusal in the log:\n{log}"
        );
        assert!(log.contains("KV: write key \"k\" of KV namespace readonly refused"), "{runtime}:\n{log}");
        // The outside reads what the function wrote.
        let (status, headers, value) =
            server.admin_request(reqwest::Method::GET, &format!("/v1/kv/data/{prefix}a"), "").await;
        assert_eq!((status, value.as_slice()), (200, b"swapped".as_slice()));
        assert_eq!(headers["x-nimbus-kv-version"].to_str().unwrap(), r.body["casOk"].to_string());
        let (_, headers, value) =
            server.admin_request(reqwest::Method::GET, &format!("/v1/kv/data/{prefix}c"), "").await;
        assert_eq!(value, b"3");
        let expires: u64 = headers["x-nimbus-kv-expires"].to_str().unwrap().parse().unwrap();
        let now = nimbus_core::ids::now_ms();
        assert!(expires > now && expires <= now + 60_000, "the counter expires within its 60 s TTL: {expires}");
    }
    let js = server.invoke("js", &json!({"prefix": "again-"})).await;
    assert_eq!(js.body["json"], json!({"n": 1}), "{{type: \"json\"}} parses: {}", js.body);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("nimbus_kv_operations_total{op=\"increment\"}"), "{metrics}");
    assert!(metrics.contains("nimbus_kv_errors_total{code=\"AccessDenied\"}"), "{metrics}");
    // Functions' KV calls are metered for usage, refusals not (they never reach the store).
    let usage = server.admin("/v1/usage").await;
    let data = usage["storage"].as_array().unwrap().iter().find(|s| s["kind"] == "kv" && s["name"] == "data").unwrap();
    assert!(data["writes"].as_u64().unwrap() > 0 && data["reads"].as_u64().unwrap() > 0, "{data:#}");
    let secret = usage["storage"].as_array().unwrap().iter().find(|s| s["name"] == "secret").unwrap();
    assert_eq!(secret["reads"], 0, "{secret:#}");
}

/// Unsandboxed, the clients reach nimbus over TCP (`AWS_LAMBDA_RUNTIME_API`).
#[tokio::test]
async fn the_clients_work_unsandboxed_over_tcp() {
    let app = app();
    let server = Server::start_args(app.path(), &app.path().join(".nimbus"), &["--insecure-no-sandbox"]);
    for function in ["js", "py"] {
        let put = server.invoke(function, &json!({"op": "put", "ns": "data", "key": function, "value": "v"})).await;
        assert!(put.body["version"].as_u64().is_some(), "{function}: {}", String::from_utf8_lossy(&put.raw));
        let got = server.invoke(function, &json!({"op": "get", "ns": "data", "key": function})).await;
        assert_eq!(got.body["value"], "v", "{function}");
    }
}

/// A key written with a TTL is there until the TTL passes and absent after, to the API and to
/// functions; the wait is the TTL itself plus a margin, then a bounded poll.
#[tokio::test]
async fn keys_expire_after_their_ttl() {
    let app = app();
    let server = Server::start(app.path());
    let r = server.invoke("py", &json!({"op": "put", "ns": "data", "key": "short", "value": "v", "ttl": 1})).await;
    assert!(r.body["version"].as_u64().is_some(), "{}", String::from_utf8_lossy(&r.raw));
    let written = Instant::now();
    let (status, headers, _) = server.admin_request(reqwest::Method::GET, "/v1/kv/data/short", "").await;
    assert_eq!(status, 200);
    let expires: u64 = headers["x-nimbus-kv-expires"].to_str().unwrap().parse().unwrap();
    let (status, _, _) = server.admin_request(reqwest::Method::PUT, "/v1/kv/data/api-short?ttl=1", "v").await;
    assert_eq!(status, 200);
    // Exact expiry: wait until the expiry time has passed on this clock, then it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nimbus_core::ids::now_ms() <= expires + 1100 {
        assert!(Instant::now() < deadline, "the clock did not reach the expiry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written.elapsed() >= Duration::from_secs(1));
    for key in ["short", "api-short"] {
        let (status, _, body) = server.admin_request(reqwest::Method::GET, &format!("/v1/kv/data/{key}"), "").await;
        assert_eq!(status, 404, "{key} outlived its TTL");
        assert_eq!(json_of(&body)["code"], "NoSuchKey");
    }
    let got = server.invoke("js", &json!({"op": "get", "ns": "data", "key": "short"})).await;
    assert_eq!(got.body["value"], Value::Null, "{}", String::from_utf8_lossy(&got.raw));
    let (_, _, body) = server.admin_request(reqwest::Method::GET, "/v1/kv/data", "").await;
    assert_eq!(json_of(&body)["keys"], json!([]), "expired keys are not listed");
}

/// The management API: limits and bad input get clear errors, scopes hold, namespace deletion
/// is audited.
#[tokio::test]
async fn the_management_api_answers_and_refuses_clearly() {
    use reqwest::Method;
    let app = app();
    let server = Server::start(app.path());
    let (status, _, body) = server.admin_request(Method::GET, "/v1/kv", "").await;
    assert_eq!(status, 200);
    let list = json_of(&body);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["data", "readonly", "secret"], "the deploy created every declared namespace");

    let long_key = format!("/v1/kv/data/{}", "k".repeat(513));
    let big = "x".repeat(1024 * 1024 + 1);
    let cases: &[(Method, &str, &str, u16, &str, &str)] = &[
        (Method::GET, "/v1/kv/nope/k", "", 404, "NoSuchNamespace", "[kv.nope]"),
        (Method::PUT, "/v1/kv/nope/k", "v", 404, "NoSuchNamespace", "declare it as [kv.nope]"),
        (Method::GET, "/v1/kv/data/absent", "", 404, "NoSuchKey", "no key \"absent\""),
        (Method::PUT, "/v1/kv/data/k?ttl=0", "v", 400, "BadRequest", "at least 1"),
        (Method::PUT, "/v1/kv/data/k?ttl=soon", "v", 400, "BadRequest", "whole seconds"),
        (Method::PUT, "/v1/kv/data/k?ifVersion=x", "v", 400, "BadRequest", "ifVersion"),
        (Method::PUT, "/v1/kv/data/k?ifVersion=99999", "v", 409, "VersionConflict", "absent"),
        (Method::PUT, &long_key, "v", 400, "KeyLength", "1 to 512 bytes"),
        (Method::PUT, "/v1/kv/data/big", &big, 413, "ValueTooLarge", "1048576 bytes"),
        (Method::POST, "/v1/kv/data/n?increment=two", "", 400, "BadRequest", "whole number"),
        (Method::GET, "/v1/kv/data?limit=0", "", 400, "BadRequest", "1 to 1000"),
        (Method::GET, "/v1/kv/data?cursor=zz", "", 400, "BadCursor", "cursor"),
        (Method::DELETE, "/v1/kv/nope", "", 404, "NoSuchNamespace", "[kv.nope]"),
    ];
    for (method, path, body, want, code, text) in cases {
        let (status, _, answer) = server.admin_request(method.clone(), path, body).await;
        let shown = String::from_utf8_lossy(&answer);
        assert_eq!(status, *want, "{method} {path}: {shown}");
        if !code.is_empty() {
            let v = json_of(&answer);
            assert_eq!(v["code"], *code, "{method} {path}: {shown}");
            assert!(v["error"].as_str().unwrap().contains(text), "{method} {path}: {shown}");
        }
    }
    let (status, _, body) = server.admin_request(Method::PUT, "/v1/kv/data/big", &"x".repeat(1024 * 1024)).await;
    assert_eq!(status, 200, "exactly 1 MiB is allowed: {}", String::from_utf8_lossy(&body));
    let (_, _, body) = server.admin_request(Method::POST, "/v1/kv/data/n?increment=5&ttl=60", "").await;
    assert_eq!(json_of(&body)["value"], 5);

    // Scopes: read may read, deploy may write, only admin may delete a namespace.
    let token = |scope: &str| {
        let out = server.cli(&["token", "create", "--scope", scope, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        json_of(&out.stdout)["secret"].as_str().unwrap().to_owned()
    };
    let (read, deploy) = (token("read"), token("deploy"));
    let as_ = |t: &str, m: Method, p: &str| {
        let (c, url, t) = (server.client(), format!("{}{p}", server.url), t.to_owned());
        async move { c.request(m, url).bearer_auth(t).body("v").send().await.unwrap().status().as_u16() }
    };
    assert_eq!(as_(&read, Method::GET, "/v1/kv/data/n").await, 200);
    assert_eq!(as_(&read, Method::PUT, "/v1/kv/data/n").await, 403);
    assert_eq!(as_(&deploy, Method::PUT, "/v1/kv/data/n").await, 200);
    assert_eq!(as_(&deploy, Method::DELETE, "/v1/kv/data/n").await, 200);
    assert_eq!(as_(&deploy, Method::DELETE, "/v1/kv/secret").await, 403);
    let (status, _, _) = server.admin_request(Method::DELETE, "/v1/kv/secret", "").await;
    assert_eq!(status, 200);
    let audit = server.cli(&["audit", "--action", "kv.delete-namespace"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(text.contains("KV namespace secret"), "{text}{}", String::from_utf8_lossy(&audit.stderr));
}

/// `nimbus kv ls|get|put|del|rm-namespace`.
#[tokio::test]
async fn the_cli_reads_and_writes_keys() {
    let app = app();
    let server = Server::start(app.path());
    let ok = |args: &[&str]| {
        let out = server.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(ok(&["kv", "put", "data", "greeting", "hello world"]).contains("wrote greeting"));
    let file = app.path().join("value.bin");
    std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    ok(&["kv", "put", "data", "a/b", "--file", file.to_str().unwrap(), "--ttl", "60"]);
    let out = server.cli(&["kv", "get", "data", "a/b"]);
    assert_eq!(out.stdout, [0u8, 1, 2, 255], "get writes the bytes as stored");
    assert_eq!(ok(&["kv", "get", "data", "greeting"]), "hello world");
    let keys = ok(&["kv", "ls", "data"]);
    let lines: Vec<&str> = keys.lines().collect();
    assert_eq!(lines.len(), 2, "{keys}");
    assert!(lines[0].starts_with("a/b\texpires "), "{keys}");
    assert_eq!(lines[1], "greeting");
    assert_eq!(ok(&["kv", "ls", "data", "--prefix", "gr"]).trim(), "greeting");
    let namespaces = ok(&["kv", "ls"]);
    assert!(
        namespaces.lines().any(|l| l.starts_with("data") && l.split_whitespace().nth(1) == Some("2")),
        "{namespaces}"
    );
    assert!(ok(&["kv", "del", "data", "greeting"]).contains("deleted greeting"));
    let missing = server.cli(&["kv", "get", "data", "greeting"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no key \"greeting\""), "{missing:?}");
    ok(&["kv", "rm-namespace", "data"]);
    let gone = server.cli(&["kv", "ls", "data"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("declare it as [kv.data]"), "{gone:?}");
}

/// A deploy that drops a namespace keeps it, with its keys, and says how to delete it.
#[tokio::test]
async fn a_deploy_that_drops_a_namespace_keeps_it_and_says_so() {
    let app = app();
    let server = Server::start(app.path());
    let (status, _, _) = server.admin_request(reqwest::Method::PUT, "/v1/kv/secret/k", "kept").await;
    assert_eq!(status, 200);
    let toml = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(app.path().join("nimbus.toml"), toml.replace("[kv.secret]\n", "[kv.fresh]\n")).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("KV namespace secret is no longer declared; it is kept"), "{text}");
    assert!(text.contains("nimbus kv rm-namespace secret"), "{text}");
    let (status, _, value) = server.admin_request(reqwest::Method::GET, "/v1/kv/secret/k", "").await;
    assert_eq!((status, value.as_slice()), (200, b"kept".as_slice()));
    let (status, _, _) = server.admin_request(reqwest::Method::PUT, "/v1/kv/fresh/k", "new").await;
    assert_eq!(status, 200, "the new deploy created its namespace");
}

/// A stream of KV writes through the API, nimbus killed with SIGKILL mid-stream: after a
/// restart every write that was acknowledged (200) is there with its value.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let app = app();
    let data_dir = app.path().join(".nimbus");
    let server = Server::start(app.path());
    let (url, token) = (server.url.clone(), server.token.clone());
    let client = server.client();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..100_000u32 {
                    let key = format!("w{w}-{i}");
                    let r = client
                        .put(format!("{url}/v1/kv/data/{key}"))
                        .bearer_auth(&token)
                        .body(format!("value-{key}"))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => acked.push(key),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Kill once a good number of writes were acknowledged (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = server.admin_request(reqwest::Method::GET, "/v1/kv", "").await;
        let keys = json_of(&body)[0]["keys"].as_u64().unwrap_or(0);
        if keys >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "only {keys} writes in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe_kill(server.pid(), libc::SIGKILL);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    drop(server);
    assert!(acked.len() >= 500, "{} acknowledged", acked.len());
    let server = Server::start_with(app.path(), &data_dir, &[]);
    let mut lost = Vec::new();
    for key in &acked {
        let (status, _, value) = server.admin_request(reqwest::Method::GET, &format!("/v1/kv/data/{key}"), "").await;
        if status != 200 || value != format!("value-{key}").as_bytes() {
            lost.push(key.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// examples/ratelimit under 200 concurrent requests: for each client exactly LIMIT (100) pass,
/// the rest get 429, and its counter holds every request (no lost increments).
#[tokio::test]
async fn the_ratelimit_example_lets_exactly_limit_through() {
    const CLIENTS: usize = 3;
    const EACH: usize = 150;
    const LIMIT: usize = 100;
    let root = common::repo_root();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.join("examples/ratelimit"), data.path(), &[]);
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(200).build().unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS * EACH {
        let (client, url, gate) = (client.clone(), server.url.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let id = format!("client-{}", i % CLIENTS);
            let r = client.get(format!("{url}/api/thing")).header("x-client-id", &id).send().await.unwrap();
            (id, r.status().as_u16())
        });
    }
    let mut counts: std::collections::BTreeMap<(String, u16), usize> = Default::default();
    while let Some(done) = tasks.join_next().await {
        *counts.entry(done.unwrap()).or_default() += 1;
    }
    for c in 0..CLIENTS {
        let id = format!("client-{c}");
        let ok = counts.get(&(id.clone(), 200)).copied().unwrap_or(0);
        let limited = counts.get(&(id.clone(), 429)).copied().unwrap_or(0);
        assert_eq!((ok, limited), (LIMIT, EACH - LIMIT), "{id}: every status: {counts:?}");
        let (status, headers, value) =
            server.admin_request(reqwest::Method::GET, &format!("/v1/kv/ratelimit/client:{id}"), "").await;
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8(value).unwrap(), EACH.to_string(), "{id}: the counter lost increments");
        let expires: u64 = headers["x-nimbus-kv-expires"].to_str().unwrap().parse().unwrap();
        assert!(expires <= nimbus_core::ids::now_ms() + 60_000, "the window is 60 s from the first request");
    }
}
