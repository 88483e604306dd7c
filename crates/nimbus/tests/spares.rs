//! Sandboxes prepared ahead of demand: a live function has a sandbox waiting (bwrap with the
//! init held), a cold start runs the function in it as an instance of its own, the next one
//! finds another, and a version that is replaced loses its spare.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// nimbus's children whose init is held (`--hold`) or whose runtime is a zygote (`--zygote`):
/// the prepared sandboxes.
fn held_sandboxes(nimbus: i32) -> Vec<i32> {
    let mut held = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{nimbus}/task")).unwrap();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == b"--hold" || a == b"--zygote") && process_alive(pid) {
                held.push(pid);
            }
        }
    }
    held.sort_unstable();
    held
}

/// Wait (bounded) until the management API says a sandbox is prepared for the function's next
/// cold start, and exactly one held sandbox is there that is not in `besides`: its pid.
async fn spare_besides(server: &Server, besides: &[i32]) -> i32 {
    server
        .wait_for("a prepared sandbox", Duration::from_secs(20), |fns| {
            fns.as_array()
                .into_iter()
                .flatten()
                .any(|f| f["pools"].as_array().into_iter().flatten().any(|p| p["preparedSandbox"] == true))
        })
        .await;
    let nimbus = server.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fresh: Vec<i32> = held_sandboxes(nimbus).into_iter().filter(|p| !besides.contains(p)).collect();
        if let [one] = fresh[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no new prepared sandbox appeared (held now: {fresh:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ENV: &[&str] =
    &["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_RUNTIME_API"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_starts_claim_the_prepared_sandbox_and_get_their_own_environment() {
    let app = App::new("spares").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    let spare = spare_besides(&server, &[]).await;

    let first = server.invoke("f", &json!({"op": "env", "names": ENV})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(server.instance_pids().await, vec![spare], "the cold start did not run in the prepared sandbox");
    let functions = server.admin("/v1/functions").await;
    let id = functions[0]["pools"][0]["instances"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(first.body["AWS_LAMBDA_FUNCTION_NAME"], "f");
    assert_eq!(first.body["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(first.body["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    let stream = first.body["AWS_LAMBDA_LOG_STREAM_NAME"].as_str().unwrap();
    assert!(stream.ends_with(&id), "the log stream {stream} does not name instance {id}");

    // The start asked for the next spare; a crash ends the instance; the next cold start
    // takes that spare, as another instance with its own environment.
    let next = spare_besides(&server, &[spare]).await;
    let crashed = server.invoke("f", &json!({"op": "crash"})).await;
    assert_eq!(crashed.status, 200);
    assert!(crashed.function_error().is_some(), "{:?}", crashed.body);
    wait_gone(&[spare], Duration::from_secs(10)).await;
    let second = server.invoke("f", &json!({"op": "env", "names": ENV})).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(server.instance_pids().await, vec![next]);
    assert_ne!(second.body["AWS_LAMBDA_LOG_STREAM_NAME"], first.body["AWS_LAMBDA_LOG_STREAM_NAME"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_version_loses_its_spare_and_the_new_one_gets_one() {
    let app = App::new("spares-redeploy").conformance("python", "f", "").finish();
    let server = Server::start(app.path());
    let old = spare_besides(&server, &[]).await;

    std::fs::write(app.path().join("functions/f/changed.txt"), "a new version").unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_gone(&[old], Duration::from_secs(10)).await;
    let new = spare_besides(&server, &[old]).await;
    let done = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(server.instance_pids().await, vec![new]);
}

/// `nimbus up` on an app whose one function `z` is declared by `function` (the lines after
/// `[functions.z]`), with `files` written under `functions/z/`. The app lives as long as the server.
fn one_function_app(function: &str, files: &[(&str, &str)]) -> (App, Server) {
    let app = App::new("zygote").raw(&format!("[functions.z]\n{function}"));
    for (rel, text) in files {
        app.write_file(&format!("functions/z/{rel}"), text);
    }
    let app = app.finish();
    let server = Server::start(app.path());
    (app, server)
}

/// The first invocation of function `z`, cold-started in its prepared sandbox, which must be a
/// zygote: the answer, after checking that the instance's environment (a `greeting`, its own
/// key and log stream) was in place when the function's module was loaded.
async fn invoke_in_the_zygote(server: &Server) -> serde_json::Value {
    let spare = spare_besides(server, &[]).await;
    let cmdline = std::fs::read(format!("/proc/{spare}/cmdline")).unwrap();
    assert!(cmdline.split(|b| *b == 0).any(|a| a == b"--zygote"), "the spare is a zygote: {cmdline:?}");
    let r = server.invoke("z", &json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(server.instance_pids().await, vec![spare], "the cold start ran in the zygote");
    let b = r.body;
    assert_eq!(b["greeting"], "hi", "{b}");
    assert!(b["key"].as_str().is_some_and(|k| !k.is_empty()), "{b}");
    let id = server.admin("/v1/functions").await[0]["pools"][0]["instances"][0]["id"].as_str().unwrap().to_owned();
    assert!(b["stream"].as_str().unwrap().ends_with(&id), "{b}");
    b
}

/// A function with `concurrency` > 1 (where async handlers run many at once on asyncio) gets
/// asyncio imported in its zygote, off the first invocation's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_zygote_of_a_concurrent_function_has_asyncio_imported() {
    let (_app, server) = one_function_app(
        "runtime = \"python\"\nhandler = \"handler.handler\"\nconcurrency = 4\nenv = { GREETING = \"hi\" }",
        &[("handler.py", ZYGOTE_HANDLER), ("helper.py", "def where():\n    return __file__\n")],
    );
    let b = invoke_in_the_zygote(&server).await;
    assert_eq!(b["asyncio"], true, "asyncio was imported before the claim: {b}");
}

/// A Python function for the zygote: what its module saw when it was imported, and whether its
/// own modules' bytecode came from the per-artifact cache.
const ZYGOTE_HANDLER: &str = r#"
import os, sys
seen_at_import = {
    "preloaded": "typing" in sys.modules,
    "asyncio": "asyncio" in sys.modules,
    "greeting": os.environ.get("GREETING"),
    "key": os.environ.get("AWS_ACCESS_KEY_ID"),
    "stream": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"),
}
import helper

def handler(event, context):
    try:
        open(os.path.join(sys.pycache_prefix, "poison.pyc"), "wb").close()
        wrote = "written"
    except OSError as e:
        wrote = type(e).__name__
    return {
        **seen_at_import,
        "argv": sys.argv,
        "helper": helper.where(),
        "prefix": sys.pycache_prefix,
        "cached": os.path.exists(helper.__cached__),
        "cache_writable": wrote,
        "pid_env_now": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_zygote_applies_the_instance_environment_before_user_code_and_reads_compiled_modules() {
    let (_app, server) = one_function_app(
        "runtime = \"python\"\nhandler = \"handler.handler\"\nenv = { GREETING = \"hi\", PYTHONPATH = \"/var/task/vendor\" }",
        &[("handler.py", ZYGOTE_HANDLER), ("vendor/helper.py", "def where():\n    return __file__\n")],
    );
    // The instance's environment, not the zygote's, was there before the module ran.
    let b = invoke_in_the_zygote(&server).await;
    assert_eq!(b["preloaded"], true, "standard modules were imported before the claim: {b}");
    assert_eq!(b["asyncio"], false, "asyncio only for functions with concurrency > 1: {b}");
    assert_eq!(b["helper"], "/var/task/vendor/helper.py", "PYTHONPATH applied: {b}");
    // Bytecode compiled at deploy, shown read-only: used, never writable by an instance.
    assert_eq!(b["prefix"], "/var/cache/nimbus-pyc", "{b}");
    assert_eq!(b["cached"], true, "{b}");
    assert_eq!(b["cache_writable"], "OSError", "{b}");
}

/// A Node function for the zygote: what its module saw when it was loaded.
const NODE_ZYGOTE_HANDLER: &str = r#"
const seen = {
  preloaded: process.moduleLoadList.includes('NativeModule https'),
  greeting: process.env.GREETING,
  key: process.env.AWS_ACCESS_KEY_ID,
  stream: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
};
const helper = require('helper');
exports.handler = async () => ({
  ...seen,
  argv: process.argv,
  helper: helper.where(),
  nimbus: typeof require('nimbus').waitUntil,
});
"#;

/// A Node function's spare is a zygote too: Node has started and loaded the bootstrap before
/// the claim, and the instance's environment (NODE_PATH's module paths included) is in place
/// before the handler's module is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_zygote_applies_the_instance_environment_before_user_code() {
    let (_app, server) = one_function_app(
        "runtime = \"node\"\nhandler = \"index.handler\"\nenv = { GREETING = \"hi\", NODE_PATH = \"/var/task/mods\" }",
        &[("index.js", NODE_ZYGOTE_HANDLER), ("mods/helper.js", "exports.where = () => __filename;\n")],
    );
    let b = invoke_in_the_zygote(&server).await;
    assert_eq!(b["preloaded"], true, "modules were loaded before the claim: {b}");
    assert_eq!(b["helper"], "/var/task/mods/helper.js", "NODE_PATH applied: {b}");
    assert_eq!(b["nimbus"], "function", "nimbus's own module path too: {b}");
    assert!(!b["argv"].to_string().contains("--zygote"), "argv as a normal start has it: {b}");
}

/// A Node function that sets what Node reads only at start-up gets a held init, not a zygote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_function_with_node_options_gets_a_held_init() {
    let (_app, server) = one_function_app(
        "runtime = \"node\"\nhandler = \"index.handler\"\nenv = { NODE_OPTIONS = \"--max-old-space-size=100\" }",
        &[("index.js", "exports.handler = async () => require('v8').getHeapStatistics().heap_size_limit;\n")],
    );
    let spare = spare_besides(&server, &[]).await;
    let cmdline = std::fs::read(format!("/proc/{spare}/cmdline")).unwrap();
    assert!(cmdline.split(|b| *b == 0).any(|a| a == b"--hold"), "a held init: {cmdline:?}");
    let r = server.invoke("z", &json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let limit = r.body.as_u64().unwrap();
    assert!(limit < 200 * 1024 * 1024, "NODE_OPTIONS applied at start-up: {limit}");
}
