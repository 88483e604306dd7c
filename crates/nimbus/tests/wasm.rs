//! Black-box tests of the wasm runtime beyond the conformance table: instance reuse, the CPU
//! limit, the outbound allow-list, the instance cap, the compile cache across restarts, refused
//! deployments, async events, and the examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{repo_root, run_python_json, App, Server};
use serde_json::{json, Value};

/// An app with the conformance guest as function `f` on `/fn/*`.
fn guest_app(name: &str, extra: &str) -> App {
    App::new(name).conformance("wasm", "f", extra).route("*", "/fn/*", "f").finish()
}

async fn get_text(server: &Server, path: &str) -> (u16, String) {
    let r = server.get(path).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn instance_reuse_keeps_state_and_a_trap_replaces_the_instance() {
    let app = guest_app("reuse", "instance_reuse = true");
    let server = Server::start(app.path());
    for want in ["1", "2", "3"] {
        assert_eq!(get_text(&server, "/fn/count").await, (200, want.to_owned()));
    }
    assert_eq!(get_text(&server, "/fn/trap").await.0, 500);
    // The trapped instance cannot be entered again: a new one starts, with fresh state.
    assert_eq!(get_text(&server, "/fn/count").await, (200, "1".to_owned()));
    let rows = server.records("f", 5).await;
    let cold = rows.iter().filter(|r| r["cold"] == json!(true)).count();
    assert_eq!(cold, 2, "one cold start, then one after the trap: {rows:#?}");
}

/// A kept instance whose guest leaves resources undropped would grow nimbus's memory with every
/// request: past 1,000 held resources it is retired, the request that crossed the line says why
/// in its log, and the next request runs on a fresh instance.
#[tokio::test]
async fn a_kept_instance_that_leaks_resources_is_retired() {
    let app = guest_app("leaky", "instance_reuse = true");
    let server = Server::start(app.path());
    assert_eq!(get_text(&server, "/fn/count").await, (200, "1".to_owned()));
    // Each call leaves 400 header fields and its request behind: 802 held after two calls.
    for _ in 0..2 {
        assert_eq!(get_text(&server, "/fn/leak?n=400").await.0, 200);
    }
    assert_eq!(get_text(&server, "/fn/count").await, (200, "2".to_owned()), "the instance was kept");
    let third = server.get("/fn/leak?n=400").await;
    assert_eq!(third.status(), 200, "the request that crossed the line is still answered");
    let id = third.headers()["x-nimbus-request-id"].to_str().unwrap().to_owned();
    assert_eq!(get_text(&server, "/fn/count").await, (200, "1".to_owned()), "the leaking instance served again");
    server.records("f", 6).await;
    let log = server.cli(&["logs", "f", "--request-id", &id]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("instance retired: after this request the component still holds 1203 resources"), "{log}");
}

#[tokio::test]
async fn cpu_ms_limits_cpu_time_not_waiting() {
    let app = guest_app("cpu", "cpu_ms = 50\ntimeout = \"5s\"");
    let server = Server::start(app.path());
    // 200 ms of waiting is fine under a 50 ms CPU budget…
    assert_eq!(get_text(&server, "/fn/sleep?ms=200").await, (200, "slept 200 ms".to_owned()));
    // …200 ms of computing is not.
    let started = Instant::now();
    assert_eq!(get_text(&server, "/fn/burn?ms=200").await.0, 500);
    assert!(started.elapsed() < Duration::from_millis(190), "the burn was not cut short: {:?}", started.elapsed());
    let rows = server.records("f", 2).await;
    let burn = rows.iter().find(|r| r["status"] == json!("function_error")).expect("a failed record");
    assert_eq!(burn["errorType"], json!("Runtime.CpuLimitExceeded"), "{burn:#}");
    assert_eq!(get_text(&server, "/fn/hello").await, (200, "Hello from wasm".to_owned()));
}

/// A one-line HTTP server on 127.0.0.1:0 answering every request with `body`, or with the
/// request's own head when `body` is empty.
fn upstream(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(100) {
            let Ok(mut conn) = conn else { break };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            let head_end = loop {
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break got.len(),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            };
            // Read the request body too (a sized one, or chunks up to the last), so that closing
            // the connection does not reset it under the client.
            let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
            let sized = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = head.contains("transfer-encoding: chunked");
            let complete = |got: &[u8]| match sized {
                Some(n) => got.len() >= head_end + n,
                None => !chunked || got.ends_with(b"0\r\n\r\n"),
            };
            while !complete(&got) {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = if body.is_empty() { head } else { body.to_owned() };
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    port
}

#[tokio::test]
async fn outbound_http_reaches_only_allowed_hosts() {
    let allowed = upstream("from upstream");
    let denied = upstream("should never be read");
    let app = guest_app("outbound", &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{allowed}\"]"));
    let server = Server::start(app.path());
    let ok = get_text(&server, &format!("/fn/fetch?url=http://127.0.0.1:{allowed}/x")).await;
    assert_eq!(ok, (200, "200 from upstream".to_owned()));
    let no = server.get(&format!("/fn/fetch?url=http://127.0.0.1:{denied}/x")).await;
    let id = no.headers()["x-nimbus-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        (no.status().as_u16(), no.text().await.unwrap()),
        (502, "fetch failed: ErrorCode::HttpRequestDenied".into())
    );
    // The log is stored with the record, moments after the response.
    server.records("f", 2).await;
    let log = server.cli(&["logs", "f", "--request-id", &id]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains(&format!("outbound HTTP to http://127.0.0.1:{denied} denied"))
            && log.contains("allowed_outbound_hosts"),
        "{log}"
    );
}

/// The burst target (BENCHMARKS.md, Targets): 1,000 concurrent requests to a cold function with `max_instances = 8`
/// cause at most 8 cold starts and no errors.
#[tokio::test]
async fn a_burst_of_1000_to_a_cold_function_starts_at_most_max_instances_and_all_succeed() {
    let app = guest_app("burst", "max_instances = 8\nmax_queued = 1000\nqueue_timeout = \"20s\"");
    let server = Server::start(app.path());
    let client = server.client();
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let c = client.clone();
            let url = format!("{}/fn/sleep?ms=2", server.url);
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for c in calls {
        *statuses.entry(c.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 1000)]), "statuses of the burst");
    let rows = server.records("f", 1000).await;
    let instances: std::collections::HashSet<&str> = rows.iter().filter_map(|r| r["instanceId"].as_str()).collect();
    let cold = rows.iter().filter(|r| r["cold"] == json!(true)).count();
    assert!((1..=8).contains(&instances.len()), "{} instances served the burst", instances.len());
    assert!((1..=8).contains(&cold), "{cold} cold starts");
}

#[tokio::test]
async fn a_restart_loads_the_compiled_component_instead_of_compiling_it() {
    let app = guest_app("cache", "");
    let data = app.path().join(".nimbus");
    let mut server = Server::start(app.path());
    assert_eq!(get_text(&server, "/fn/hello").await.0, 200);
    let cache = data.join("wasm-cache");
    let compiled = |dir: &std::path::Path| -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap().modified().unwrap();
                (p, m)
            })
            .collect()
    };
    let before = compiled(&cache);
    assert_eq!(before.len(), 1, "one compiled artefact: {before:?}");
    let status = server.stop();
    assert!(status.success(), "nimbus did not stop cleanly: {status:?}");
    let server = Server::start(app.path());
    assert_eq!(get_text(&server, "/fn/hello").await.0, 200);
    assert_eq!(compiled(&cache), before, "the restart rewrote or added compiled artefacts");
}

#[tokio::test]
async fn a_component_that_does_not_load_refuses_the_deploy_and_nothing_changes() {
    let app = guest_app("refuse", "");
    let server = Server::start(app.path());
    assert_eq!(get_text(&server, "/fn/hello").await.0, 200);
    let wasm = app.path().join("functions/f/conformance.wasm");

    // The component binary header, then garbage: only the compiler can tell.
    std::fs::write(&wasm, [0, b'a', b's', b'm', 0x0d, 0, 1, 0, 0xff, 0xff, 0xff]).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("conformance.wasm is not a valid component"), "{err}");

    // A core module (not a component) is named as such by the manifest check.
    std::fs::write(&wasm, [0, b'a', b's', b'm', 1, 0, 0, 0]).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is a core WebAssembly module, not a component"), "{err}");

    let live = server.admin("/v1/app").await;
    assert_eq!(live["live"], json!(1), "{live:#}");
    assert_eq!(get_text(&server, "/fn/hello").await, (200, "Hello from wasm".to_owned()));
}

#[tokio::test]
async fn memory_mb_below_what_the_component_needs_is_an_init_error() {
    let app = guest_app("tiny", "memory_mb = 1");
    let server = Server::start(app.path());
    let r = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(r.function_error(), Some("Unhandled"), "{:?}", r.body);
    let msg = r.body["errorMessage"].as_str().unwrap_or_default();
    assert!(msg.contains("above memory_mb = 1; raise memory_mb"), "{msg}");
}

#[tokio::test]
async fn async_events_run_wasm_functions() {
    let app = guest_app("async", "");
    let server = Server::start(app.path());
    let r = server
        .client()
        .post(format!("{}/2015-03-31/functions/f/invocations", server.url))
        .header("x-amz-invocation-type", "Event")
        .body(json!({"op": "count"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let rows = server.records("f", 1).await;
    assert_eq!((&rows[0]["trigger"], &rows[0]["status"]), (&json!("event"), &json!("success")), "{rows:#?}");
}

#[tokio::test]
async fn the_wasm_hello_example_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&repo_root().join("examples/wasm-hello"), dir.path(), &[]);
    let r = server.get("/hello/nimbus").await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"message": "Hello, nimbus!", "runtime": "wasm"}));
}

/// Large components (the JS and Python examples) compile once per machine: the tests share one
/// compile cache (keyed by component hash and engine settings, so sharing is safe).
fn shared_cache() -> (&'static str, String) {
    ("NIMBUS_WASM_CACHE", format!("{}/wasm-cache", env!("CARGO_TARGET_TMPDIR")))
}

/// A copy of an example app, with `edit` applied to its manifest.
fn example_copy(name: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_root().join("examples").join(name);
    for entry in ["nimbus.toml", "functions"] {
        let from = src.join(entry);
        let to = dir.path().join(entry);
        if from.is_dir() {
            copy_tree(&from, &to);
        } else {
            std::fs::write(&to, edit(std::fs::read_to_string(&from).unwrap())).unwrap();
        }
    }
    dir
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn the_javascript_edge_example_personalises_by_country() {
    let app = example_copy("wasm-edge-js", |t| t);
    // A Country DB (mmdb-writer) that places this machine's loopback address in Germany.
    let db = app.path().join("GeoLite2-Country.mmdb");
    let script = r#"
import sys
from mmdb_writer import MMDBWriter
from netaddr import IPSet
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country", languages=["en"], description="test")
w.insert_network(IPSet(["127.0.0.1/32"]), {"country": {"iso_code": "DE"}})
w.to_db_file(sys.argv[1])
print("{}")
"#;
    run_python_json(script, &[db.to_str().unwrap()]);
    let (k, v) = shared_cache();
    let args = ["--geoip", db.to_str().unwrap(), "--trust-proxy", "127.0.0.1"];
    let server = Server::launch(app.path(), &app.path().join(".nimbus"), &[(k, &v)], "127.0.0.1:0", &args);
    let client = server.client();
    // The country is nimbus's geo lookup; a client's own x-nimbus-country never arrives.
    let de: Value = client
        .get(format!("{}/", server.url))
        .header("x-nimbus-country", "JP")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&de["country"], &de["source"], &de["currency"]["code"], &de["greeting"]),
        (&json!("DE"), &json!("geo"), &json!("EUR"), &json!("Hallo!")),
        "{de:#}"
    );
    // From an address the DB does not know (through a trusted proxy): accept-language decides.
    let jp = client
        .get(format!("{}/shop", server.url))
        .header("x-forwarded-for", "192.0.2.1")
        .header("accept-language", "ja-JP,ja;q=0.9")
        .send()
        .await
        .unwrap();
    assert!(jp.headers()["vary"].to_str().unwrap().contains("accept-language"));
    let jp: Value = jp.json().await.unwrap();
    assert_eq!(
        (&jp["country"], &jp["currency"]["code"], &jp["path"]),
        (&json!("JP"), &json!("JPY"), &json!("/shop")),
        "{jp:#}"
    );
}

#[tokio::test]
async fn the_python_jwt_example_rejects_bad_tokens_and_forwards_good_ones() {
    let origin = upstream("");
    let app = example_copy("wasm-jwt-py", |t| t.replace("127.0.0.1:9000", &format!("127.0.0.1:{origin}")));
    let (k, v) = shared_cache();
    let server = Server::start_with(app.path(), &app.path().join(".nimbus"), &[(k, &v)]);
    let token = |secret: &str, exp_in: i64| -> String {
        let script = r#"
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"sub": "alice", "exp": int(time.time()) + int(sys.argv[2])}).encode())
s = b(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(json.dumps(f"{h}.{p}.{s}"))
"#;
        run_python_json(script, &[secret, &exp_in.to_string()]).as_str().unwrap().to_owned()
    };
    let client = server.client();
    let call = |auth: Option<String>| {
        let mut req = client.get(format!("{}/orders/7", server.url));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let none = call(None).await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    assert_eq!(call(Some(token("wrong-secret", 60))).await.unwrap().status().as_u16(), 401);
    assert_eq!(call(Some(token("change-me", -60))).await.unwrap().status().as_u16(), 401, "an expired token");
    let ok = call(Some(token("change-me", 60))).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let seen = ok.text().await.unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /orders/7 ") && seen.contains("x-jwt-sub: alice"), "the origin saw:\n{seen}");
}

#[tokio::test]
async fn past_nimbus_wasm_instances_requests_fail_as_platform_errors_that_say_what_to_raise() {
    let app = guest_app("slots", "max_instances = 4\ntimeout = \"5s\"");
    let server = Server::start_with(app.path(), &app.path().join(".nimbus"), &[("NIMBUS_WASM_INSTANCES", "2")]);
    let client = server.client();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let c = client.clone();
            let url = format!("{}/fn/sleep?ms=500", server.url);
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                let source = r.headers().get("x-nimbus-error").map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), source)
            })
        })
        .collect();
    let mut got = Vec::new();
    for c in calls {
        got.push(c.await.unwrap());
    }
    got.sort();
    assert_eq!(got.iter().filter(|(s, _)| *s == 200).count(), 2, "{got:?}");
    assert!(
        got.iter().filter(|(s, _)| *s != 200).all(|(s, src)| *s == 500 && src.as_deref() == Some("platform")),
        "{got:?}"
    );
    let rows = server.records("f", 4).await;
    let failed: Vec<&Value> = rows.iter().filter(|r| r["status"] == json!("platform_error")).collect();
    assert!(
        !failed.is_empty()
            && failed
                .iter()
                .all(|r| r["errorMessage"].as_str().unwrap_or_default().contains("raise NIMBUS_WASM_INSTANCES")),
        "{rows:#?}"
    );
    // The slots come back: the next request is served.
    assert_eq!(get_text(&server, "/fn/hello").await, (200, "Hello from wasm".to_owned()));
}
