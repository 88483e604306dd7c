//! `nimbus events generate`: every kind prints JSON with its key fields, without a server, and
//! the printed events go through `nimbus invoke --file` into a function unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use common::{nimbus_bin, App, Server};
use serde_json::Value;

fn generate(args: &[&str]) -> Output {
    // No server flags and an empty working directory: the command needs no running nimbus.
    let dir = tempfile::tempdir().unwrap();
    Command::new(nimbus_bin())
        .args(["events", "generate"])
        .args(args)
        .current_dir(dir.path())
        .env_remove("NIMBUS_SERVER")
        .output()
        .unwrap()
}

fn generated(args: &[&str]) -> Value {
    let out = generate(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn s3_events_carry_the_notification_fields() {
    let put = generated(&["s3-put", "--bucket", "photos", "--key", "in box/a+b.jpg", "--body", "hello"]);
    let r = &put["Records"][0];
    assert_eq!(r["eventSource"], "aws:s3");
    assert_eq!(r["eventVersion"], "2.1");
    assert_eq!(r["eventName"], "ObjectCreated:Put");
    assert_eq!(r["s3"]["s3SchemaVersion"], "1.0");
    assert_eq!(r["s3"]["bucket"]["name"], "photos");
    assert_eq!(r["s3"]["bucket"]["arn"], "arn:aws:s3:::photos");
    assert_eq!(r["s3"]["object"]["key"], "in+box/a%2Bb.jpg");
    assert_eq!(r["s3"]["object"]["size"], 5);
    assert_eq!(r["s3"]["object"]["eTag"], "5d41402abc4b2a76b9719d911017c592");
    assert!(r["s3"]["object"]["sequencer"].as_str().unwrap().chars().all(|c| c.is_ascii_hexdigit()));
    let time = r["eventTime"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == "2019-09-03T19:37:27.192Z".len(), "{time}");

    let delete = generated(&["s3-delete"]);
    let r = &delete["Records"][0];
    assert_eq!(r["eventName"], "ObjectRemoved:Delete");
    assert_eq!(r["s3"]["object"]["key"], "uploads/hello+world.txt");
    assert!(r["s3"]["object"].get("size").is_none() && r["s3"]["object"].get("eTag").is_none());
}

#[test]
fn sqs_apigw_and_schedule_events_carry_their_fields() {
    let sqs = generated(&["sqs", "--queue", "orders", "--body", "Test message."]);
    let m = &sqs["Records"][0];
    assert_eq!(m["eventSource"], "aws:sqs");
    assert_eq!(m["eventSourceARN"], "arn:aws:sqs:us-east-1:000000000000:orders");
    assert_eq!(m["body"], "Test message.");
    assert_eq!(m["md5OfBody"], "e4e68fb7bd0e697a0ae8f1bb342846b3");
    assert_eq!(m["attributes"]["ApproximateReceiveCount"], "1");
    for field in ["messageId", "receiptHandle", "awsRegion"] {
        assert!(m[field].is_string(), "{field}");
    }
    assert!(m["messageAttributes"].is_object());

    let http = generated(&["apigw", "--method", "post", "--path", "/items/7?color=red", "--body", r#"{"a":1}"#]);
    assert_eq!(http["version"], "2.0");
    assert_eq!(http["routeKey"], "POST /items/7");
    assert_eq!(http["rawPath"], "/items/7");
    assert_eq!(http["queryStringParameters"]["color"], "red");
    assert_eq!(http["requestContext"]["http"]["method"], "POST");
    assert_eq!(http["body"], r#"{"a":1}"#);
    assert_eq!(http["headers"]["content-type"], "application/json");

    let cron = generated(&["schedule"]);
    assert_eq!(cron["source"], "aws.events");
    assert_eq!(cron["detail-type"], "Scheduled Event");
    assert_eq!(cron["detail"], serde_json::json!({}));
}

#[test]
fn bad_kinds_and_flags_are_refused_with_what_to_use() {
    let out = generate(&["s3-copy"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for kind in ["s3-put", "s3-delete", "sqs", "apigw", "schedule"] {
        assert!(err.contains(kind), "{err}");
    }
    let out = generate(&["sqs", "--bucket", "b"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bucket does not apply to sqs events") && err.contains("--queue"), "{err}");
    let out = generate(&["apigw", "--method", "GE T"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an HTTP method"));
}

#[test]
fn generated_events_invoke_a_python_function_unchanged() {
    let app = App::new("events").conformance("python", "f", "timeout = \"10s\"");
    // An echo handler: returns the event exactly as delivered.
    app.write_file("functions/echo/handler.py", "def handler(event, context):\n    return event\n");
    let app =
        app.raw("[functions.echo]\nruntime = \"python\"\nhandler = \"handler.handler\"\ntimeout = \"10s\"").finish();
    let server = Server::start(app.path());

    // From a file.
    let put = generate(&["s3-put", "--bucket", "photos", "--key", "cat pic.jpg"]);
    assert!(put.status.success());
    let file = app.path().join("put.json");
    std::fs::write(&file, &put.stdout).unwrap();
    let out = server.cli(&["invoke", "echo", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let echoed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echoed, serde_json::from_slice::<Value>(&put.stdout).unwrap());
    assert_eq!(echoed["Records"][0]["s3"]["object"]["key"], "cat+pic.jpg");

    // From stdin, into the conformance function's HTTP echo (an apigw event is an HTTP request).
    let http = generate(&["apigw", "--path", "/hello?op=http-echo"]);
    let mut child = Command::new(nimbus_bin())
        .args(["invoke", "f", "--file", "-", "--server", &server.url, "--token", &server.token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&http.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["statusCode"], 200, "{response}");
    let seen: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen, serde_json::from_slice::<Value>(&http.stdout).unwrap());
}
