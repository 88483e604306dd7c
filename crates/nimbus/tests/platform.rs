//! Black-box tests of what the core platform promises: pools (coalescing, cap and queue,
//! keep-alive, min_instances), failures (init, crash, timeout), the Invoke API contract,
//! deploy / rollback / restart, shutdown, and the examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{process_alive, process_parents, wait_gone, App, Server};
use serde_json::{json, Value};

fn pools_of<'a>(functions: &'a Value, name: &str) -> Vec<&'a Value> {
    functions
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == name)
        .flat_map(|f| f["pools"].as_array().unwrap())
        .collect()
}

fn count(functions: &Value, name: &str, field: &str) -> u64 {
    pools_of(functions, name).iter().map(|p| p[field].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn a_burst_to_a_cold_function_starts_at_most_max_instances_and_all_succeed() {
    let app = App::new("burst").conformance("node", "f", "max_instances = 4\ntimeout = \"10s\"").finish();
    let server = Server::start(app.path());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = server.client();
        let url = format!("{}/2015-03-31/functions/f/invocations", server.url);
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).body(r#"{"op":"counter"}"#).send().await.unwrap();
            let err = r.headers().get("x-amz-function-error").is_some();
            (r.status().as_u16(), err, r.json::<Value>().await.unwrap())
        }));
    }
    let mut pids = HashSet::new();
    for t in tasks {
        let (status, function_error, body) = t.await.unwrap();
        assert_eq!((status, function_error), (200, false), "{body}");
        pids.insert(body["pid"].as_i64().unwrap());
    }
    assert!(pids.len() <= 4, "{} instances served the burst", pids.len());
    let functions = server.admin("/v1/functions").await;
    let cold = count(&functions, "f", "coldStarts");
    assert!((1..=4).contains(&cold), "{cold} cold starts");
}

#[tokio::test]
async fn at_the_cap_with_a_full_queue_callers_get_429_with_retry_after() {
    let app = App::new("cap")
        .conformance("python", "f", "max_instances = 1\nmax_queued = 0\ntimeout = \"10s\"")
        .route("GET", "/f", "f")
        .finish();
    let server = Server::start(app.path());
    let marker = app.path().join("started");
    let slow = server.start_sleeping("f", 1500, &marker).await;
    let throttled = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("x-amzn-errortype"), Some("TooManyRequestsException"));
    assert_eq!(throttled.body["__type"], "TooManyRequestsException");
    assert!(throttled.header("retry-after").is_some());
    let route = server.get("/f").await;
    assert_eq!(route.status(), 429);
    assert!(route.headers().get("retry-after").is_some());
    assert_eq!(slow.await.unwrap().status, 200, "the request in flight is unaffected");
}

#[tokio::test]
async fn a_queued_request_waits_at_most_queue_timeout() {
    // The instance is started ahead (min_instances): a cold start counts against queue_timeout
    // (docs/manifest.md), and 300 ms is shorter than a cold start on a busy machine.
    let app = App::new("queue")
        .conformance(
            "python",
            "f",
            "max_instances = 1\nmin_instances = 1\nqueue_timeout = \"300ms\"\ntimeout = \"10s\"",
        )
        .finish();
    let server = Server::start(app.path());
    server.wait_for("the instance to be warm", Duration::from_secs(30), |f| count(f, "f", "idle") == 1).await;
    let marker = app.path().join("started");
    let slow = server.start_sleeping("f", 2000, &marker).await;
    let queued = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(queued.status, 429);
    assert!(
        queued.elapsed >= Duration::from_millis(290) && queued.elapsed < Duration::from_millis(1500),
        "waited {:?}",
        queued.elapsed
    );
    assert_eq!(slow.await.unwrap().status, 200);
    // When the instance frees up within the queue timeout, the queued request is served.
    let ok = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn idle_instances_are_reclaimed_after_keep_alive() {
    let app = App::new("reclaim").conformance("node", "f", "keep_alive = \"300ms\"\ntimeout = \"5s\"").finish();
    let server = Server::start(app.path());
    server.invoke("f", &json!({"op": "counter"})).await;
    // The instance as the host sees it (inside its PID namespace the runtime has another pid).
    let pids = server.instance_pids().await;
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(process_alive(pids[0]));
    server
        .wait_for("the idle instance to be reclaimed", Duration::from_secs(10), |f| {
            count(f, "f", "idle") == 0 && count(f, "f", "busy") == 0
        })
        .await;
    wait_gone(&pids, Duration::from_secs(5)).await;
    // The next request starts a new instance.
    let again = server.invoke_with("f", &json!({"op": "counter"}), &[("x-amz-log-type", "Tail")]).await;
    assert_eq!(again.body["count"], 1);
    assert!(again.log().contains("Init Duration"));
}

#[tokio::test]
async fn min_instances_are_started_at_deploy_and_kept_warm() {
    let app = App::new("warm")
        .conformance("python", "f", "min_instances = 1\nkeep_alive = \"200ms\"\ntimeout = \"5s\"")
        .finish();
    let server = Server::start(app.path());
    let before =
        server.wait_for("min_instances to start", Duration::from_secs(10), |f| count(f, "f", "idle") == 1).await;
    let pid = pools_of(&before, "f")[0]["instances"][0]["pid"].as_i64().unwrap();
    // Let several keep-alive periods pass: the minimum is not reclaimed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = server.admin("/v1/functions").await;
    assert_eq!(count(&after, "f", "idle"), 1);
    assert_eq!(pools_of(&after, "f")[0]["instances"][0]["pid"].as_i64().unwrap(), pid);
    let r = server.invoke_with("f", &json!({"op": "counter"}), &[("x-amz-log-type", "Tail")]).await;
    assert_eq!(r.body["count"], 1, "{}", r.body);
    assert!(!r.log().contains("Init Duration"), "the first request was served warm:\n{}", r.log());
    let served = server.admin("/v1/functions").await;
    assert_eq!(count(&served, "f", "coldStarts"), 1, "the warm instance served it");
    assert_eq!(pools_of(&served, "f")[0]["instances"][0]["pid"].as_i64().unwrap(), pid);
}

#[tokio::test]
async fn init_failures_reach_the_caller_and_the_logs() {
    let app = App::new("initfail")
        .conformance("node", "n", "env = { FAIL_INIT = \"1\" }\ntimeout = \"5s\"")
        .conformance("python", "p", "env = { FAIL_INIT = \"1\" }\ntimeout = \"5s\"")
        .route("GET", "/n", "n")
        .finish();
    // `conformance` already wrote an env table: replace it for these functions.
    let manifest = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    let fixed = manifest.replace(
        "env = { GREETING = \"hi\" }\nenv = { FAIL_INIT = \"1\" }",
        "env = { GREETING = \"hi\", FAIL_INIT = \"1\" }",
    );
    std::fs::write(app.path().join("nimbus.toml"), fixed).unwrap();
    let server = Server::start(app.path());
    for f in ["n", "p"] {
        let r = server.invoke_with(f, &json!({"op": "echo"}), &[("x-amz-log-type", "Tail")]).await;
        assert_eq!(r.status, 200, "{f}");
        assert_eq!(r.function_error(), Some("Unhandled"), "{f}");
        assert!(r.body["errorMessage"].as_str().unwrap().contains("init failed on purpose"), "{f}: {}", r.body);
        assert!(r.body["errorType"].as_str().unwrap().starts_with("Runtime."), "{f}: {}", r.body);
        assert!(r.log().contains("init failed on purpose"), "{f}: {}", r.log());
    }
    let route = server.get("/n").await;
    assert_eq!(route.status(), 502);
    // The failure is recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let recs = server.admin("/v1/invocations?function=p").await;
        if recs.as_array().unwrap().iter().any(|r| r["status"] == "init_error") {
            break;
        }
        assert!(Instant::now() < deadline, "no init_error record: {recs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn route_failures_map_to_502_504_404_405() {
    let app = App::new("routes").conformance("node", "f", "timeout = \"500ms\"").route("GET", "/f/{x}", "f").finish();
    let server = Server::start(app.path());
    let crash = Instant::now();
    let r = server.get("/f/1?op=crash").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-nimbus-error"], "function");
    assert!(crash.elapsed() < Duration::from_secs(1), "crash took {:?}", crash.elapsed());
    assert_eq!(server.get("/f/1?op=counter").await.status(), 200, "the crashed instance was replaced");
    let r = server.get("/f/1?op=sleep&ms=3000").await;
    assert_eq!(r.status(), 504);
    let r = server.get("/nothing").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Not Found");
    let r = server.client().delete(format!("{}/f/1", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Method Not Allowed");
}

#[tokio::test]
async fn the_invoke_api_follows_the_lambda_contract() {
    let app = App::new("invoke").conformance("python", "f", "timeout = \"5s\"").finish();
    let server = Server::start(app.path());
    let missing = server.invoke("nope", &json!({})).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-amzn-errortype"), Some("ResourceNotFoundException"));
    assert!(missing.body["message"].as_str().unwrap().contains("function:nope"));

    let dry = server.invoke_with("f", &json!({}), &[("x-amz-invocation-type", "DryRun")]).await;
    assert_eq!(dry.status, 204);

    let big = server.invoke_raw("f", vec![b' '; 6 * 1024 * 1024 + 1]).await;
    assert_eq!(big.status(), 413);
    assert_eq!(big.headers()["x-amzn-errortype"], "RequestTooLargeException");

    let bad = server.invoke_raw("f", "{not json").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["x-amzn-errortype"], "InvalidRequestContentException");

    let unknown_version = server.invoke_raw("f?Qualifier=9", "{}").await;
    assert_eq!(unknown_version.status(), 404);

    let arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af";
    let by_arn = server.invoke(arn, &json!({"op": "echo"})).await;
    assert_eq!((by_arn.status, by_arn.body["functionName"].as_str()), (200, Some("f")));
    let qualified = server.invoke_raw("f?Qualifier=1", r#"{"op":"echo"}"#).await;
    assert_eq!(qualified.status(), 200);
    assert_eq!(qualified.headers()["x-amz-executed-version"], "1");

    let empty =
        server.client().post(format!("{}/2015-03-31/functions/f/invocations", server.url)).send().await.unwrap();
    assert_eq!(empty.status(), 200, "an empty payload is the event {{}}");
}

#[tokio::test]
async fn boto3_invokes_through_the_lambda_api() {
    let app = App::new("boto").conformance("python", "f", "timeout = \"5s\"").finish();
    let server = Server::start(app.path());
    let script = r#"
import base64, json, sys
import boto3
from botocore.config import Config
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="x",
                 config=Config(retries={"max_attempts": 1}))
out = {}
r = c.invoke(FunctionName="f", Payload=json.dumps({"op": "echo", "n": 1}), LogType="Tail")
out["ok"] = {"status": r["StatusCode"], "version": r.get("ExecutedVersion"), "error": r.get("FunctionError"),
             "payload": json.loads(r["Payload"].read()), "log": base64.b64decode(r["LogResult"]).decode()}
r = c.invoke(FunctionName="f", Payload=json.dumps({"op": "error", "message": "bad"}))
out["err"] = {"status": r["StatusCode"], "error": r.get("FunctionError"), "payload": json.loads(r["Payload"].read())}
r = c.invoke(FunctionName="f", InvocationType="DryRun")
out["dry"] = r["StatusCode"]
try:
    c.invoke(FunctionName="missing", Payload=b"{}")
    out["missing"] = "no error"
except c.exceptions.ResourceNotFoundException as e:
    out["missing"] = "ResourceNotFoundException"
print(json.dumps(out))
"#;
    let out = common::run_python_json(script, &[&server.url]);
    assert_eq!(out["ok"]["status"], 200);
    assert_eq!(out["ok"]["version"], "1");
    assert_eq!(out["ok"]["error"], Value::Null);
    assert_eq!(out["ok"]["payload"]["event"]["n"], 1);
    assert!(out["ok"]["log"].as_str().unwrap().contains("REPORT RequestId"));
    assert_eq!(out["err"]["error"], "Unhandled");
    assert_eq!(out["err"]["payload"]["errorMessage"], "bad");
    assert_eq!(out["dry"], 204);
    assert_eq!(out["missing"], "ResourceNotFoundException");
}

fn set_greeting(app: &Path, greeting: &str) {
    let path = app.join("nimbus.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("GREETING = \"").unwrap() + "GREETING = \"".len();
    let end = start + text[start..].find('"').unwrap();
    std::fs::write(&path, format!("{}{greeting}{}", &text[..start], &text[end..])).unwrap();
}

async fn greeting(server: &Server, qualifier: Option<&str>) -> (String, String) {
    let q = qualifier.map(|q| format!("?Qualifier={q}")).unwrap_or_default();
    let r = server.invoke_raw(&format!("f{q}"), r#"{"op":"env","names":["GREETING"]}"#).await;
    let version = r.headers()["x-amz-executed-version"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    (body["GREETING"].as_str().unwrap_or_default().to_owned(), version)
}

#[tokio::test]
async fn deploy_rollback_and_qualifiers_through_the_cli() {
    let app = App::new("deploys").conformance("python", "f", "timeout = \"10s\"").route("GET", "/f", "f").finish();
    let server = Server::start(app.path());
    assert_eq!(greeting(&server, None).await, ("hi".into(), "1".into()));

    set_greeting(app.path(), "two");
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(greeting(&server, None).await, ("two".into(), "2".into()));
    assert_eq!(greeting(&server, Some("1")).await, ("hi".into(), "1".into()), "old versions stay invocable");

    // A broken manifest is refused whole, with its location, and nothing changes.
    std::fs::write(
        app.path().join("nimbus.toml"),
        std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap()
            + "\n[functions.g]\nruntime = \"cobol\"\nmemory_mb = 1\n",
    )
    .unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("  nimbus.toml:") && stderr.contains("functions.g.runtime: unknown runtime \"cobol\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("functions.g.memory_mb: must be between 64 and 10240"),
        "every problem is reported: {stderr}"
    );
    assert!(!stderr.contains("uploads"), "messages name the user's file, not the server's copy: {stderr}");
    assert_eq!(greeting(&server, None).await, ("two".into(), "2".into()));

    let out = server.cli(&["rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(greeting(&server, None).await, ("hi".into(), "1".into()));
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["version"], 1);

    let out = server.cli(&["ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("(live)") && ls.contains("python") && ls.contains("GET /f"), "{ls}");
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_version_they_started_on() {
    let app = App::new("inflight").conformance("python", "f", "timeout = \"10s\"").finish();
    let server = Server::start(app.path());
    let marker = app.path().join("started");
    let slow = server.start_sleeping("f", 1000, &marker).await;
    set_greeting(app.path(), "two");
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(greeting(&server, None).await, ("two".into(), "2".into()), "new requests see the new version at once");
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.header("x-amz-executed-version"), slow.function_error()),
        (200, Some("1"), None),
        "{}",
        slow.body
    );
    let body = slow.body;
    assert_eq!(body["slept"], 1000);
}

#[tokio::test]
async fn a_restart_serves_the_last_deployment_without_redeploying() {
    let app = App::new("restart").conformance("node", "f", "timeout = \"5s\"").finish();
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(app.path(), data.path(), &[]);
    assert_eq!(greeting(&server, None).await.1, "1");
    assert!(server.stop().success());

    let mut server = Server::start_with(app.path(), data.path(), &[]);
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["version"], 1, "unchanged app: no new version");
    assert_eq!(server.admin("/v1/deployments").await.as_array().unwrap().len(), 1);
    assert_eq!(greeting(&server, None).await, ("hi".into(), "1".into()));
    assert!(server.stop().success());

    set_greeting(app.path(), "changed");
    let server = Server::start_with(app.path(), data.path(), &[]);
    assert_eq!(greeting(&server, None).await, ("changed".into(), "2".into()), "a changed app is deployed at start");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_leaves_no_processes() {
    let app = App::new("shutdown")
        .conformance("node", "f", "timeout = \"10s\"")
        .conformance("python", "g", "timeout = \"10s\"")
        .finish();
    let mut server = Server::start(app.path());
    server.invoke("g", &json!({"op": "echo"})).await;
    let marker = app.path().join("started");
    let slow = server.start_sleeping("f", 800, &marker).await;
    let pids = server.instance_pids().await;
    assert_eq!(pids.len(), 2, "{pids:?}");
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(slow.await.unwrap().body["slept"], 800, "the in-flight request finished");
    wait_gone(&pids, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn kill_9_of_nimbus_leaves_no_orphan_instances() {
    let app = App::new("orphans")
        .conformance("python", "f", "timeout = \"5s\"")
        .conformance("rust", "r", "timeout = \"5s\"")
        .finish();
    let mut server = Server::start(app.path());
    server.invoke("f", &json!({"op": "echo"})).await;
    server.invoke("r", &json!({"op": "echo"})).await;
    let pids = server.instance_pids().await;
    assert_eq!(pids.len(), 2);
    common::unsafe_kill(server.pid(), libc::SIGKILL);
    let _ = server.child.wait();
    wait_gone(&pids, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_management_api_needs_the_token() {
    let app = App::new("auth").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    let none = server.get("/v1/functions").await;
    assert_eq!(none.status(), 401);
    let wrong =
        server.client().get(format!("{}/v1/functions", server.url)).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.data_dir.join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn cli_invoke_logs_and_invocations() {
    let app = App::new("cli").conformance("node", "f", "timeout = \"5s\"").finish();
    let server = Server::start(app.path());
    let out = server.cli(&["invoke", "f", "--data", r#"{"op":"log","lines":["from-the-cli"]}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"logged":1}"#);
    assert!(String::from_utf8_lossy(&out.stderr).contains("from-the-cli"));
    let out = server.cli(&["invoke", "f", "--data", r#"{"op":"error"}"#]);
    assert_eq!(out.status.code(), Some(1), "a function error fails the command");
    let out = server.cli(&["invoke", "f", "--data", "{oops"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the event must be JSON"));

    // Records and logs are written by a background writer: poll (bounded) until they land.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = server.cli(&["logs", "f"]);
        let text = String::from_utf8_lossy(&logs.stdout).into_owned();
        if text.contains("from-the-cli") && text.contains("[ERROR]") {
            assert!(text.contains("START RequestId:") && text.contains("REPORT RequestId:"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "logs never showed the invocation:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = server.cli(&["invocations", "--function", "f"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("success") && text.contains("function_error"), "{text}");
}

#[tokio::test]
async fn an_invalid_manifest_stops_up_with_every_problem() {
    let app = App::new("broken")
        .raw("[functions.a]\nruntime = \"node\"\nhandler = \"index.handler\"\ntimeout = \"soon\"\n\n[[routes]]\npath = \"/a\"\nfunction = \"b\"")
        .finish();
    std::fs::create_dir_all(app.path().join("functions/a")).unwrap();
    std::fs::write(app.path().join("functions/a/index.js"), "").unwrap();
    let out = std::process::Command::new(common::nimbus_bin())
        .arg("up")
        .arg(app.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&app.path().display().to_string(), "APP");
    let expected = "2 problems in the app manifest:\n  APP/nimbus.toml:5:11: functions.a.timeout: \"soon\" is not a duration; write it like \"250ms\", \"10s\", \"5m\" or \"1h\"\n  APP/nimbus.toml:9:12: routes[0].function: no function named \"b\"; declared functions: a\nnothing was deployed; fix the manifest and run `nimbus up` again\n";
    assert_eq!(stderr, expected);
}

#[tokio::test]
async fn the_examples_run() {
    let root = common::repo_root();
    let data = tempfile::tempdir().unwrap();
    let hello = Server::start_with(&root.join("examples/hello"), data.path(), &[]);
    let r: Value = hello.get("/hello/world").await.json().await.unwrap();
    assert_eq!(r["message"], "Hello, world!");
    let r = hello.get("/py/hello/ada").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("ada"));
    drop(hello);

    let data = tempfile::tempdir().unwrap();
    let mut api = Server::start_with(&root.join("examples/api"), data.path(), &[]);
    let c = api.client();
    let created = c
        .post(format!("{}/items", api.url))
        .body(r#"{"name":"pen"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let got: Value = c.get(format!("{}/items/{id}", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["name"], "pen");
    // The items are in the KV store: a restart keeps them, and new ids follow on.
    api.stop();
    let api = Server::start_with(&root.join("examples/api"), data.path(), &[]);
    let got: Value = c.get(format!("{}/items/{id}", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["name"], "pen", "the item survived the restart");
    let put = c
        .put(format!("{}/items/{id}", api.url))
        .body(r#"{"name":"ink"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let list: Value = c.get(format!("{}/items", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"][0]["name"], "ink");
    assert_eq!(c.delete(format!("{}/items/{id}", api.url)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/items/{id}", api.url)).send().await.unwrap().status(), 404);
    let bad = c
        .post(format!("{}/items", api.url))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn with_invoke_auth_token_the_invoke_api_needs_credentials() {
    let app = App::new("exposed").conformance("python", "f", "").finish();
    // Tests listen on loopback only: `--invoke-auth token` closes the Invoke API there as
    // listening beyond loopback does (`nimbus up`'s unit test holds that rule).
    let server = Server::start_args(app.path(), &app.path().join(".nimbus"), &["--invoke-auth", "token"]);
    let anonymous = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(anonymous.status, 403);
    assert_eq!(anonymous.header("x-amzn-errortype"), Some("AccessDeniedException"));
    let token = format!("Bearer {}", server.token);
    let authorized = server.invoke_with("f", &json!({"op": "echo"}), &[("authorization", &token)]).await;
    assert_eq!(authorized.status, 200);
}

#[tokio::test]
async fn node_callback_handlers_report_handled_errors() {
    let app = App::new("callbacks").conformance("node", "cb", "").finish();
    let manifest = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(app.path().join("nimbus.toml"), manifest.replace("index.handler", "index.callbackHandler")).unwrap();
    let server = Server::start(app.path());
    let ok = server.invoke("cb", &json!({"op": "counter"})).await;
    assert_eq!((ok.status, ok.function_error(), ok.body["count"].as_i64()), (200, None, Some(1)));
    let handled = server.invoke("cb", &json!({"op": "handled-error", "message": "via callback"})).await;
    assert_eq!(handled.function_error(), Some("Handled"));
    assert_eq!(handled.body["errorMessage"], "via callback");
    let thrown = server.invoke("cb", &json!({"op": "error"})).await;
    assert_eq!(thrown.function_error(), Some("Unhandled"));
}

#[tokio::test]
async fn deploy_uploads_may_be_larger_than_an_invoke_payload() {
    let app = App::new("bigapp").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    // 8 MiB of incompressible vendored "dependencies": above the 6 MB invoke limit.
    let mut blob = vec![0u8; 8 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(app.path().join("functions/f/vendored.bin"), &blob).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(greeting(&server, None).await.1, "2");
}

#[tokio::test]
async fn a_prewarmed_function_whose_init_fails_is_not_restarted_in_a_loop() {
    let app = App::new("crashloop").conformance("python", "f", "min_instances = 1\nkeep_alive = \"200ms\"").finish();
    let manifest = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(
        app.path().join("nimbus.toml"),
        manifest.replace("GREETING = \"hi\"", "GREETING = \"hi\", FAIL_INIT = \"1\""),
    )
    .unwrap();
    let server = Server::start(app.path());
    server
        .wait_for("the first pre-warm attempt", Duration::from_secs(10), |f| {
            count(f, "f", "coldStarts") >= 1 && count(f, "f", "starting") == 0
        })
        .await;
    // Housekeeping ticks every 50 ms here; over this window an unbounded retry would start ~10.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let functions = server.admin("/v1/functions").await;
    assert_eq!(count(&functions, "f", "coldStarts"), 1);
    // A request still tries (and reports the init error to its caller).
    let r = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(r.function_error(), Some("Unhandled"));
}

/// An upload cannot link a file of the host into a function. `nimbus deploy` sends links as
/// links, and the server refuses one that leaves the app, naming it (here: the data dir's
/// admin.token); a raw archive with a `..` link is refused the same way; nothing is deployed.
/// A link that stays inside the code directory deploys, stored as the file it points at.
#[tokio::test]
async fn uploads_cannot_link_host_files_into_a_function() {
    let app = App::new("links").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    let secret = app.path().join("functions/f/secret");
    std::os::unix::fs::symlink(server.data_dir.join("admin.token"), &secret).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("entry \"functions/f/secret\" is a symlink to") && stderr.contains("outside the app directory"),
        "{stderr}"
    );

    let mut b = tar::Builder::new(Vec::new());
    for name in ["nimbus.toml", "functions/f/handler.py"] {
        b.append_path_with_name(app.path().join(name), name).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "functions/f/secret", "../../../../../admin.token").unwrap();
    let r = server
        .client()
        .post(format!("{}/v1/deployments", server.url))
        .bearer_auth(&server.token)
        .body(b.into_inner().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("functions/f/secret") && body.contains("outside the app directory"), "{body}");
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["version"], 1, "nothing was deployed");

    std::fs::remove_file(&secret).unwrap();
    std::os::unix::fs::symlink("handler.py", app.path().join("functions/f/alias.py")).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(greeting(&server, None).await.1, "2");
}

/// nimbus runs with transparent huge pages off (mimalloc asks for them, and a heap growing by
/// a 2 MiB page at a time stalled requests for 10–30 ms on a VM), and every process of a
/// function's instance gets them back: the function's memory behaves as the host's default
/// says, not as nimbus's choice for itself.
#[tokio::test]
async fn huge_pages_are_off_for_nimbus_and_back_on_for_function_processes() {
    if thp_enabled(std::process::id() as i32).is_none() {
        eprintln!("skipped: this kernel's /proc/PID/status has no THP_enabled line");
        return;
    }
    let app = App::new("thp").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    assert_eq!(thp_enabled(server.pid()), Some(false), "nimbus itself still allows huge pages");
    assert_eq!(server.invoke("f", &json!({"op": "echo"})).await.status, 200);
    let tree = process_tree(&server.instance_pids().await);
    assert!(tree.len() >= 2, "the instance's processes were not found: {tree:?}");
    for pid in tree {
        assert_eq!(thp_enabled(pid), Some(true), "process {pid} of the instance inherited nimbus's choice");
    }
}

/// Whether the kernel lets `pid` have transparent huge pages (`THP_enabled` in its status).
fn thp_enabled(pid: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("THP_enabled:"))?;
    Some(line.trim() == "1")
}

/// `roots` and every process below them.
fn process_tree(roots: &[i32]) -> Vec<i32> {
    let parent_of = process_parents();
    let mut tree = roots.to_vec();
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}
