//! Rate limits end to end (`[rate_limits.NAME]`, `rate_limit = "NAME"` on a route): exact under
//! concurrency across instances (1,000 concurrent clients, 100 per minute per key, 4 instances:
//! exactly 100 pass per key), the 429's `Retry-After` and `RateLimit-Policy` / `RateLimit`
//! headers, answered before any instance starts, and a limit keyed by a verified JWT claim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{App, Server};

const ECHO: &str = "exports.handler = async () => ({ statusCode: 200, body: 'ok' });\n";

fn app() -> App {
    let app = App::new("edgelimits");
    app.write_file("functions/f/index.js", ECHO);
    app.raw("[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"\nmax_instances = 4\n")
        .raw("[rate_limits.per_client]\nrequests = 100\nper = \"1m\"\nkey = \"header:x-client\"\n")
        .raw("[rate_limits.tiny]\nrequests = 2\nper = \"1h\"\n")
        .raw("[[routes]]\nmethod = \"GET\"\npath = \"/f\"\nfunction = \"f\"\nrate_limit = \"per_client\"")
        .raw("[[routes]]\nmethod = \"GET\"\npath = \"/tiny\"\nfunction = \"f\"\nrate_limit = \"tiny\"")
        .finish()
}

/// Sleep past the next window boundary if fewer than `margin` seconds of this window are left,
/// so a burst lands in one window.
async fn clear_of_the_boundary(per: u64, margin: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let into = now.as_secs() % per;
    if per - into < margin {
        tokio::time::sleep(Duration::from_secs(per - into) + Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_thousand_concurrent_clients_get_exactly_the_limit_per_key() {
    let app = app();
    let server = Server::start(app.path());
    clear_of_the_boundary(60, 30).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (client, url) = (client.clone(), format!("{}/f", server.url));
        let key = format!("k{}", i % 5);
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).header("x-client", &key).send().await.unwrap();
            (key, r.status().as_u16())
        }));
    }
    let mut passed: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused = 0;
    for t in tasks {
        let (key, status) = t.await.unwrap();
        match status {
            200 => *passed.entry(key).or_default() += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let want: BTreeMap<String, usize> = (0..5).map(|i| (format!("k{i}"), 100)).collect();
    assert_eq!(passed, want, "exactly 100 per key passed");
    assert_eq!(refused, 500);
    let records = server.records("f", 500).await;
    assert_eq!(records.len(), 500, "refused requests never reached the function");
}

#[tokio::test]
async fn a_refusal_says_when_to_come_back() {
    let app = app();
    let server = Server::start(app.path());
    clear_of_the_boundary(3600, 10).await;
    let first = server.get("/tiny").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-policy"], "\"tiny\";q=2;w=3600");
    let r = first.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(r.starts_with("\"tiny\";r=1;t="), "{r}");
    assert_eq!(server.get("/tiny").await.status(), 200);
    let refused = server.get("/tiny").await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit"].to_str().unwrap(), format!("\"tiny\";r=0;t={retry}"));
    assert_eq!(h["ratelimit-policy"], "\"tiny\";q=2;w=3600");
    assert_eq!(h["x-nimbus-error"], "client");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["message"], "Too Many Requests");
}

/// HS256 tokens made by PyJWT for `subs`, each valid for ten minutes.
fn tokens(secret: &str, subs: &[&str]) -> Vec<String> {
    let script = format!(
        "import jwt, time\nfor s in {subs:?}:\n    print(jwt.encode({{'sub': s, 'exp': int(time.time()) + 600}}, {secret:?}, algorithm='HS256'))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", common::test_pythonpath())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// `key = "claim:sub"` behind a JWT policy: each verified subject draws on its own count (the
/// auth step hands its claims to the limit), and a refused token never reaches the limit.
#[tokio::test]
async fn a_limit_by_claim_counts_each_verified_subject_apart() {
    const SECRET: &str = "edge-limits-test-secret-of-32-bytes!";
    let app = App::new("edgelimitsclaim");
    app.write_file("functions/f/index.js", ECHO);
    let app = app
        .raw("[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"\n")
        .raw("[auth.users]\ntype = \"jwt\"\nsecret_env = \"NIMBUS_EDGE_LIMITS_SECRET\"\n")
        .raw("[rate_limits.per_user]\nrequests = 3\nper = \"1h\"\nkey = \"claim:sub\"\n")
        .raw("[[routes]]\nmethod = \"GET\"\npath = \"/me\"\nfunction = \"f\"\nauth = \"users\"\nrate_limit = \"per_user\"")
        .finish();
    let server = Server::start_with(app.path(), &app.path().join(".nimbus"), &[("NIMBUS_EDGE_LIMITS_SECRET", SECRET)]);
    clear_of_the_boundary(3600, 10).await;
    let toks = tokens(SECRET, &["alice", "bob"]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let get = |token: String| {
        let (client, url) = (client.clone(), format!("{}/me", server.url));
        async move { client.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let mut alice = Vec::new();
    for _ in 0..4 {
        alice.push(get(toks[0].clone()).await);
    }
    assert_eq!(alice, [200, 200, 200, 429], "alice has 3 an hour");
    assert_eq!(get(toks[1].clone()).await, 200, "bob has his own count");
    assert_eq!(get("not-a-token".into()).await, 401, "auth answers before the limit");
    let records = server.records("f", 4).await;
    assert_eq!(records.len(), 4, "only the admitted requests ran");
}
