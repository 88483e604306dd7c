//! Traffic on a real `nimbus up`: weighted splits of the live alias (by share, within ±3 %
//! over 10,000 requests), the sticky cookie, canaries the server rolls back or promotes by
//! itself, preview hosts, splits that survive a restart, and bad input refused whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{App, Server};
use serde_json::Value;

const HANDLER: &str = r#"
import os
n = 0
def handler(event, context):
    global n
    n += 1
    every = int(os.environ.get("FAIL_EVERY", "0"))
    status = 500 if every and n % every == 0 else 200
    return {"statusCode": status, "body": os.environ["LABEL"]}
"#;

/// A Python app answering `GET /p` with its label, failing every `fail_every`-th request
/// of each instance (0: never).
fn python_app(label: &str, fail_every: u32) -> App {
    let app = App::new("traffic");
    app.write_file("functions/f/handler.py", HANDLER);
    app.raw(&format!(
        "[functions.f]\nruntime = \"python\"\nhandler = \"handler.handler\"\nenv = {{ LABEL = \"{label}\", FAIL_EVERY = \"{fail_every}\" }}\n"
    ))
    .route("GET", "/p", "f")
    .finish()
}

/// The wasm conformance guest on `/w/*`; `label` only makes each version's manifest differ.
fn wasm_app(label: &str) -> App {
    App::new("traffic")
        .conformance("wasm", "f", &format!("memory_mb = 128\n# {label}"))
        .route("GET", "/w/*", "f")
        .finish()
}

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "nimbus {args:?} failed: {stdout}{stderr}");
    stdout.into_owned()
}

fn deploy(server: &Server, app: &Path, extra: &[&str]) -> String {
    let mut args = vec!["deploy", app.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli_ok(server, &args)
}

/// A new token's secret (`nimbus token create ARGS --json`).
fn token(server: &Server, args: &[&str]) -> String {
    let out = cli_ok(server, &[&["token", "create", "--json"][..], args].concat());
    let v: Value = serde_json::from_str(&out).unwrap();
    v["secret"].as_str().unwrap().to_owned()
}

async fn traffic(server: &Server) -> Value {
    server.admin("/v1/aliases/live/traffic").await
}

fn version_of(r: &reqwest::Response) -> String {
    r.headers().get("x-nimbus-version").expect("every route answer names its version").to_str().unwrap().to_owned()
}

/// Send `n` requests to `path` over `conns` keep-alive connections without cookies; the
/// count of answers per version and of 5xx answers (bounded by `within`).
async fn spread(
    server: &Server,
    path: &str,
    n: usize,
    conns: usize,
    within: Duration,
) -> (HashMap<String, usize>, usize) {
    let deadline = Instant::now() + within;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, url) = (server.client(), format!("{}{path}", server.url));
        let share = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let (mut seen, mut failed) = (HashMap::<String, usize>::new(), 0);
            for _ in 0..share {
                if Instant::now() > deadline {
                    break;
                }
                let r = client.get(&url).send().await.unwrap();
                *seen.entry(version_of(&r)).or_default() += 1;
                failed += usize::from(r.status().is_server_error());
                let _ = r.bytes().await;
            }
            (seen, failed)
        }));
    }
    let (mut all, mut failed) = (HashMap::new(), 0);
    for t in tasks {
        let (seen, f) = t.await.unwrap();
        failed += f;
        for (v, k) in seen {
            *all.entry(v).or_default() += k;
        }
    }
    (all, failed)
}

#[tokio::test]
async fn a_weighted_split_holds_its_shares_over_10000_requests() {
    let v1 = wasm_app("one");
    let server = Server::start(v1.path());
    let v2 = wasm_app("two");
    deploy(&server, v2.path(), &[]);
    let shown = cli_ok(&server, &["traffic", "set", "live", "v1=90", "v2=10"]);
    assert_eq!(shown.lines().next(), Some("live  v1=90% v2=10%"), "{shown}");
    let ls = cli_ok(&server, &["ls"]);
    assert!(ls.contains("TRAFFIC\n  live  v1=90% v2=10%"), "{ls}");
    let (seen, failed) = spread(&server, "/w/hello", 10_000, 16, Duration::from_secs(240)).await;
    let total: usize = seen.values().sum();
    assert_eq!((total, failed), (10_000, 0), "{seen:?}");
    let two = seen.get("2").copied().unwrap_or_default();
    assert!((700..=1300).contains(&two), "version 2 should have 10 % ± 3 % of 10,000: {seen:?}");
    // Every route answer says its version, a 404 too.
    let r = server.get("/nowhere").await;
    assert_eq!(r.status(), 404);
    assert!(["1", "2"].contains(&version_of(&r).as_str()));
}

#[tokio::test]
async fn the_sticky_cookie_keeps_a_client_on_its_version() {
    let v1 = python_app("one", 0);
    let server = Server::start(v1.path());
    deploy(&server, python_app("two", 0).path(), &[]);
    cli_ok(&server, &["traffic", "set", "live", "v1=50", "v2=50"]);
    let (seen, _) = spread(&server, "/p", 60, 4, Duration::from_secs(60)).await;
    assert!(seen.len() == 2, "without a cookie both versions answer: {seen:?}");
    for _ in 0..3 {
        // As a browser does: the cookie's name=value goes back on every request.
        let client = server.client();
        let first = client.get(format!("{}/p", server.url)).send().await.unwrap();
        let cookie = first.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
        let version = version_of(&first);
        assert_eq!(cookie, format!("nimbus-version={version}; Path=/; HttpOnly; SameSite=Lax"));
        let label = if version == "1" { "one" } else { "two" };
        assert_eq!(first.text().await.unwrap(), label);
        let pair = cookie.split(';').next().unwrap().to_owned();
        for _ in 0..15 {
            let r = client
                .get(format!("{}/p", server.url))
                .header("cookie", format!("theme=dark; {pair}"))
                .send()
                .await
                .unwrap();
            assert_eq!(version_of(&r), version, "the cookie keeps the client on its version");
            assert!(r.headers().get("set-cookie").is_none(), "a kept version sets no new cookie");
        }
    }
    // Once its version has no share, the cookie no longer holds.
    cli_ok(&server, &["traffic", "set", "live", "v2"]);
    let r = server.client().get(format!("{}/p", server.url)).header("cookie", "nimbus-version=1").send().await.unwrap();
    assert_eq!(version_of(&r), "2");
}

/// Keep requests flowing (4 connections, no cookies) until the canary has ended; its outcome.
async fn drive_until_ended(server: &Server, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        spread(server, "/p", 40, 4, Duration::from_secs(10)).await;
        let t = traffic(server).await;
        if !t["lastCanary"].is_null() && t["canary"].is_null() {
            return t;
        }
        assert!(Instant::now() < deadline, "the canary did not end in time: {t:#}");
    }
}

#[tokio::test]
async fn a_failing_canary_rolls_back_and_a_healthy_one_reaches_100_percent() {
    let v1 = python_app("one", 0);
    let server = Server::start(v1.path());
    let bad = python_app("bad", 5);
    let flags = ["--canary", "10%", "--for", "20s", "--max-error-rate", "5%"];
    let out = deploy(&server, bad.path(), &flags);
    assert!(out.contains("canary: version 2 has 10% of the traffic"), "{out}");
    let started = Instant::now();
    let t = traffic(&server).await;
    assert_eq!(t["weights"], serde_json::json!({"1": 90, "2": 10}), "{t:#}");
    assert_eq!(t["canary"]["newVersion"], 2);
    let t = drive_until_ended(&server, Duration::from_secs(60)).await;
    assert!(started.elapsed() < Duration::from_secs(20), "rolled back within its window: {:?}", started.elapsed());
    assert_eq!(t["weights"], serde_json::json!({"1": 100}), "{t:#}");
    assert_eq!(t["lastCanary"]["promoted"], false);
    assert!(t["lastCanary"]["reason"].as_str().unwrap().contains("above --max-error-rate 5.0%"), "{t:#}");
    let shown = cli_ok(&server, &["traffic", "show"]);
    assert!(shown.contains("last canary: v2 rolled back (old v1): error rate"), "{shown}");

    let good = python_app("good", 0);
    deploy(&server, good.path(), &["--canary", "10%", "--for", "6s", "--max-error-rate", "5%", "--max-p99", "5s"]);
    let t = drive_until_ended(&server, Duration::from_secs(60)).await;
    assert_eq!(t["weights"], serde_json::json!({"3": 100}), "{t:#}");
    assert_eq!(t["lastCanary"]["promoted"], true, "{t:#}");
    assert_eq!(server.get("/p").await.text().await.unwrap(), "good");
    let audit = server.admin("/v1/audit?action=canary&limit=100").await;
    let targets: Vec<&str> = audit.as_array().unwrap().iter().rev().map(|e| e["target"].as_str().unwrap()).collect();
    let want = [
        "version 2 at 10%",
        "version 2 rolled back (old version 1)",
        "version 3 at 10%",
        "version 3 at 25%",
        "version 3 at 50%",
        "version 3 promoted (old version 1)",
    ];
    assert_eq!(targets, want, "{audit:#}");
}

#[tokio::test]
async fn preview_hosts_serve_their_own_version() {
    let v1 = python_app("one", 0);
    let data = v1.path().join(".nimbus");
    let server = Server::start_args(v1.path(), &data, &["--preview-domain", "preview.localhost"]);
    let out = deploy(&server, python_app("two", 0).path(), &[]);
    let port = server.url.rsplit(':').next().unwrap();
    assert!(out.contains(&format!("preview: http://v2.preview.localhost:{port}/")), "{out}");
    let get = |host: String| {
        let (client, url) = (server.client(), format!("{}/p", server.url));
        async move { client.get(url).header("host", host).send().await.unwrap() }
    };
    for (v, label) in [("1", "one"), ("2", "two")] {
        let r = get(format!("v{v}.preview.localhost:{port}")).await;
        assert_eq!(version_of(&r), v);
        assert_eq!(r.text().await.unwrap(), label);
    }
    let r = get("v9.preview.localhost".into()).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("No deployment has this preview host's version"));
    assert_eq!(server.get("/p").await.text().await.unwrap(), "two", "other hosts get the live version");
}

#[tokio::test]
async fn splits_survive_a_restart_bad_input_changes_nothing_and_a_cut_canary_rolls_back() {
    let v1 = python_app("one", 0);
    let mut server = Server::start(v1.path());
    deploy(&server, python_app("two", 0).path(), &[]);
    cli_ok(&server, &["traffic", "set", "live", "v1=70", "v2=30"]);
    for (args, want) in [
        (vec!["v1=90", "v9=10"], "there is no deployment 9; `nimbus ls` lists them"),
        (vec!["v1=90", "v2=20"], "the shares add up to 110 %, not 100 %"),
        (vec!["v1=90", "v1=10"], "version 1 is named twice"),
    ] {
        let out = server.cli(&[&["traffic", "set", "live"][..], &args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{args:?}: {stderr}");
    }
    // A deploy token limited to some functions may not split traffic; a read token may look.
    let limited = token(&server, &["--scope", "deploy", "--function", "f"]);
    let out = server.cli_as(&limited, &["traffic", "set", "live", "v2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("this token may change only f"), "{out:?}");
    let reader = token(&server, &["--scope", "read"]);
    let out = server.cli_as(&reader, &["traffic", "set", "live", "v2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token with scope deploy"), "{out:?}");
    assert!(server.cli_as(&reader, &["traffic", "show"]).status.success());
    let out = server.cli(&["traffic", "set", "canary", "v1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only the live alias exists"));
    let (status, _, body) =
        server.admin_request(reqwest::Method::PUT, "/v1/aliases/live/traffic", "{\"weights\": {\"x\": 100}}").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(traffic(&server).await["weights"], serde_json::json!({"1": 70, "2": 30}), "nothing half-applied");
    server.stop();
    let mut server = Server::start(v1.path());
    assert_eq!(
        traffic(&server).await["weights"],
        serde_json::json!({"1": 70, "2": 30}),
        "the split survives a restart"
    );
    let audit = server.admin("/v1/audit?action=traffic").await;
    assert!(audit.as_array().unwrap().iter().any(|e| e["target"] == "live: 1=70% 2=30%"), "{audit:#}");

    // A canary cut by a restart rolls back to its old version, and says why.
    cli_ok(&server, &["traffic", "set", "live", "v2"]);
    deploy(&server, python_app("three", 0).path(), &["--canary", "20%", "--for", "10m", "--max-error-rate", "1%"]);
    assert_eq!(traffic(&server).await["weights"], serde_json::json!({"2": 80, "3": 20}));
    server.stop();
    let server = Server::start(v1.path());
    let t = traffic(&server).await;
    assert_eq!(t["weights"], serde_json::json!({"2": 100}), "{t:#}");
    assert!(t["lastCanary"]["reason"].as_str().unwrap().contains("restarted during the canary"), "{t:#}");
    let out = server.cli(&[
        "deploy",
        v1.path().to_str().unwrap(),
        "--canary",
        "150%",
        "--for",
        "1m",
        "--max-error-rate",
        "1%",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1% to 99%"), "{}", String::from_utf8_lossy(&out.stderr));
}
