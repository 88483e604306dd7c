//! The conformance table: the same cases, in the same order, against every process runtime —
//! nimbus's Node and Python bootstraps, and the official clients `awslambdaric` (PyPI) and
//! `lambda_runtime` (crates.io) running unmodified as `provided` functions — and the wasm runtime,
//! whose contract is HTTP (wasi:http) rather than Lambda events: its table asks the same
//! questions (cold start, state, environment, logs, errors, size and time limits, request and
//! response shape) of a `wasi:http/proxy` component.
//!
//! A case is data: an input (an Invoke API event or an HTTP request to the function's route)
//! and the expected status, headers, JSON fields (by pointer), log lines and latency bound.
//! Expected values may be patterns: "$nonempty", "$request-id" (equals the response's request
//! id header), "$range:A:B" (a number in [A, B]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{App, Server};
use serde_json::{json, Value};

enum Input {
    Invoke(Value),
    Http {
        method: &'static str,
        path: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: Option<(&'static str, &'static [u8])>,
    },
}

struct Case {
    name: &'static str,
    input: Input,
    status: u16,
    /// `Some(x)`: `X-Amz-Function-Error` must be x; `None`: must be absent (Invoke API only).
    function_error: Option<&'static str>,
    json: Vec<(&'static str, Value)>,
    headers: &'static [(&'static str, &'static str)],
    log_has: &'static [&'static str],
    log_lacks: &'static [&'static str],
    raw_body: Option<&'static [u8]>,
    within: Option<Duration>,
}

impl Case {
    fn invoke(name: &'static str, event: Value) -> Case {
        Case {
            name,
            input: Input::Invoke(event),
            status: 200,
            function_error: None,
            json: vec![],
            headers: &[("x-amz-executed-version", "1")],
            log_has: &["START RequestId: ", "END RequestId: ", "REPORT RequestId: ", "Max Memory Used: "],
            log_lacks: &[],
            raw_body: None,
            within: None,
        }
    }

    fn http(name: &'static str, method: &'static str, path: &'static str) -> Case {
        Case {
            name,
            input: Input::Http { method, path, headers: &[], body: None },
            status: 200,
            function_error: None,
            json: vec![],
            headers: &[],
            log_has: &[],
            log_lacks: &[],
            raw_body: None,
            within: None,
        }
    }
}

fn table(function: &str) -> Vec<Case> {
    vec![
        Case {
            json: vec![
                ("/event/op", json!("echo")),
                ("/requestId", json!("$request-id")),
                ("/functionName", json!(function)),
                ("/functionVersion", json!("1")),
                ("/memoryMB", json!(128)),
                ("/remainingMs", json!("$range:1:1000")),
                ("/arn", json!(format!("arn:aws:lambda:us-east-1:000000000000:function:{function}"))),
            ],
            log_has: &["START RequestId: ", "END RequestId: ", "Init Duration: "],
            ..Case::invoke("echo, cold", json!({"op": "echo"}))
        },
        Case {
            json: vec![("/event/pad", json!("x".repeat(3_000_000)))],
            ..Case::invoke(
                "a 3 MB event arrives whole and goes back",
                json!({"op": "echo", "pad": "x".repeat(3_000_000)}),
            )
        },
        Case {
            json: vec![("/count", json!(1))],
            log_lacks: &["Init Duration"],
            ..Case::invoke("counter on the warm instance", json!({"op": "counter"}))
        },
        Case {
            json: vec![("/count", json!(2))],
            ..Case::invoke("module state survives between invocations", json!({"op": "counter"}))
        },
        Case {
            json: vec![
                ("/AWS_LAMBDA_FUNCTION_NAME", json!(function)),
                ("/AWS_LAMBDA_FUNCTION_VERSION", json!("1")),
                ("/AWS_LAMBDA_FUNCTION_MEMORY_SIZE", json!("128")),
                ("/LAMBDA_TASK_ROOT", json!("/var/task")),
                ("/LAMBDA_RUNTIME_DIR", json!("/var/runtime")),
                ("/AWS_LAMBDA_RUNTIME_API", json!("127.0.0.1:9001")),
                ("/AWS_LAMBDA_LOG_GROUP_NAME", json!(format!("/aws/lambda/{function}"))),
                ("/AWS_LAMBDA_LOG_STREAM_NAME", json!("$nonempty")),
                ("/AWS_REGION", json!("us-east-1")),
                ("/GREETING", json!("hi")),
                ("/NIMBUS_TEST_LEAK", Value::Null),
            ],
            ..Case::invoke(
                "standard environment, manifest env, nothing inherited",
                json!({"op": "env", "names": ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_REGION",
                    "GREETING", "NIMBUS_TEST_LEAK"]}),
            )
        },
        Case {
            json: vec![("/logged", json!(2))],
            log_has: &[
                "\nalpha\n",
                "\nbeta\n",
                "\ngamma\n",
                "START RequestId: ",
                "END RequestId: ",
                "REPORT RequestId: ",
            ],
            ..Case::invoke(
                "stdout and stderr land in the invocation's log",
                json!({"op": "log", "lines": ["alpha", "beta"], "errLines": ["gamma"]}),
            )
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorMessage", json!("kaboom")), ("/errorType", json!("$nonempty"))],
            log_has: &["kaboom", "END RequestId: "],
            ..Case::invoke("a thrown error is an Unhandled function error", json!({"op": "error", "message": "kaboom"}))
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Function.ResponseSizeTooLarge"))],
            log_has: &[],
            ..Case::invoke("a response above 6 MB is refused", json!({"op": "big", "size": 7_000_000}))
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Runtime.ExitError")), ("/errorMessage", json!("$nonempty"))],
            log_has: &["crashing now", "Runtime exited with error: exit status 3"],
            within: Some(Duration::from_secs(1)),
            ..Case::invoke("a crash mid-invocation is reported within 1 s", json!({"op": "crash"}))
        },
        Case {
            json: vec![("/count", json!(1))],
            log_has: &["Init Duration: "],
            ..Case::invoke("the crashed instance is replaced by a fresh one", json!({"op": "counter"}))
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Sandbox.Timedout")), ("/errorMessage", json!("$nonempty"))],
            log_has: &["Task timed out after 1.00 seconds"],
            within: Some(Duration::from_millis(2500)),
            ..Case::invoke("past its timeout the function is killed", json!({"op": "sleep", "ms": 5000}))
        },
        Case {
            json: vec![("/event/op", json!("echo"))],
            ..Case::invoke("a new instance serves after a timeout", json!({"op": "echo"}))
        },
        Case {
            input: Input::Http {
                method: "GET",
                path: "/fn/items/42%20x?op=http-echo&a=1&a=2&sp=x+y",
                headers: &[
                    ("cookie", "c1=1; c2=2"),
                    ("x-multi", "one"),
                    ("x-multi", "two"),
                    ("user-agent", "conformance/1"),
                ],
                body: None,
            },
            headers: &[("x-conformance", "yes"), ("content-type", "application/json")],
            json: vec![
                ("/version", json!("2.0")),
                ("/routeKey", json!("ANY /fn/{proxy+}")),
                ("/rawPath", json!("/fn/items/42%20x")),
                ("/rawQueryString", json!("op=http-echo&a=1&a=2&sp=x+y")),
                ("/queryStringParameters/a", json!("1,2")),
                ("/queryStringParameters/sp", json!("x y")),
                ("/cookies", json!(["c1=1", "c2=2"])),
                ("/headers/x-multi", json!("one,two")),
                ("/headers/user-agent", json!("conformance/1")),
                ("/pathParameters/proxy", json!("items/42 x")),
                ("/requestContext/http/method", json!("GET")),
                ("/requestContext/http/path", json!("/fn/items/42%20x")),
                ("/requestContext/http/protocol", json!("HTTP/1.1")),
                ("/requestContext/http/sourceIp", json!("127.0.0.1")),
                ("/requestContext/http/userAgent", json!("conformance/1")),
                ("/requestContext/requestId", json!("$request-id")),
                ("/requestContext/stage", json!("$default")),
                ("/isBase64Encoded", json!(false)),
            ],
            ..Case::http("an HTTP request becomes an API Gateway v2 event", "GET", "")
        },
        Case {
            input: Input::Http {
                method: "POST",
                path: "/fn/upload?op=http-echo",
                headers: &[],
                body: Some(("application/octet-stream", &[0, 159, 146, 150])),
            },
            json: vec![
                ("/isBase64Encoded", json!(true)),
                ("/body", json!("AJ+Slg==")),
                ("/requestContext/http/method", json!("POST")),
            ],
            ..Case::http("a binary body arrives base64-encoded", "POST", "")
        },
        Case {
            input: Input::Http {
                method: "PUT",
                path: "/fn/text?op=http-echo",
                headers: &[],
                body: Some(("application/json", br#"{"k":"v"}"#)),
            },
            json: vec![("/isBase64Encoded", json!(false)), ("/body", json!(r#"{"k":"v"}"#))],
            ..Case::http("a text body arrives as text", "PUT", "")
        },
        Case {
            input: Input::Http { method: "GET", path: "/fn/b?op=bare", headers: &[], body: None },
            headers: &[("content-type", "application/json")],
            json: vec![("/bare", json!(true)), ("/path", json!("/fn/b"))],
            ..Case::http("a bare value is a 200 JSON body", "GET", "")
        },
        Case {
            input: Input::Http { method: "GET", path: "/fn/bin?op=binary", headers: &[], body: None },
            status: 201,
            headers: &[("content-type", "application/octet-stream")],
            raw_body: Some(&[0, 1, 2, 253, 254, 255]),
            ..Case::http("an isBase64Encoded response is decoded", "GET", "")
        },
        Case {
            input: Input::Http { method: "GET", path: "/fn/s?op=status&code=418", headers: &[], body: None },
            status: 418,
            raw_body: Some(b"status"),
            ..Case::http("the function's statusCode is the HTTP status", "GET", "")
        },
        Case {
            input: Input::Http { method: "GET", path: "/fn/e?op=error", headers: &[], body: None },
            status: 502,
            headers: &[("x-nimbus-error", "function")],
            ..Case::http("a function error on a route is a 502", "GET", "")
        },
    ]
}

/// The wasm runtime's table (the guest is tests/fixtures/wasm/guest-rust): events from the Invoke
/// API arrive as `POST /` with the payload as body; HTTP requests arrive as they were sent.
fn wasm_table(function: &str) -> Vec<Case> {
    vec![
        Case {
            json: vec![
                ("/method", json!("POST")),
                ("/path", json!("/")),
                ("/body", json!(r#"{"op":"echo"}"#)),
                ("/headers/content-type", json!("application/json")),
                ("/headers/x-nimbus-request-id", json!("$request-id")),
            ],
            log_has: &["START RequestId: ", "END RequestId: ", "Init Duration: "],
            ..Case::invoke("an event is POST / with the payload as body, cold", json!({"op": "echo"}))
        },
        Case {
            json: vec![("", json!(1))],
            log_lacks: &["Init Duration"],
            ..Case::invoke("count on the warm instance", json!({"op": "count"}))
        },
        Case {
            json: vec![("", json!(1))],
            ..Case::invoke("a fresh wasm instance per request: no state leaks", json!({"op": "count"}))
        },
        Case {
            json: vec![
                ("/AWS_LAMBDA_FUNCTION_NAME", json!(function)),
                ("/AWS_LAMBDA_FUNCTION_VERSION", json!("1")),
                ("/AWS_LAMBDA_FUNCTION_MEMORY_SIZE", json!("128")),
                ("/AWS_REGION", json!("us-east-1")),
                ("/GREETING", json!("hi")),
                ("/NIMBUS_TEST_LEAK", Value::Null),
                ("/PATH", Value::Null),
            ],
            ..Case::invoke("standard environment, manifest env, nothing inherited", json!({"op": "env"}))
        },
        Case {
            json: vec![],
            raw_body: Some(b"logged"),
            log_has: &[
                "\nhello on stdout\n",
                "\nhello on stderr\n",
                "\n{\"level\":\"info\",\"msg\":\"structured\"}\n",
                "REPORT RequestId: ",
            ],
            ..Case::invoke("stdout and stderr land in the invocation's log", json!({"op": "log"}))
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Runtime.WasmTrap")), ("/errorMessage", json!("$nonempty"))],
            log_has: &["boom: the guest gave up", "unreachable", "END RequestId: "],
            ..Case::invoke("a trap is an Unhandled error with the trap in the log", json!({"op": "trap"}))
        },
        Case {
            json: vec![("/method", json!("POST"))],
            ..Case::invoke("the server serves on after a trap", json!({"op": "echo"}))
        },
        Case {
            function_error: Some("Handled"),
            raw_body: Some(b"status 503"),
            log_has: &["Function.HttpServerError: the component answered 503 Service Unavailable"],
            ..Case::invoke(
                "an event answered with a 5xx is a Handled function error",
                json!({"op": "status", "code": 503}),
            )
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Function.ResponseSizeTooLarge"))],
            log_has: &[],
            ..Case::invoke("a response above 6 MB is refused", json!({"op": "big", "n": 7_000_000}))
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Sandbox.Timedout")), ("/errorMessage", json!("$nonempty"))],
            log_has: &["Task timed out after 1.00 seconds"],
            within: Some(Duration::from_millis(1500)),
            ..Case::invoke("a runaway loop is stopped at the timeout", json!({"op": "loop"}))
        },
        Case {
            function_error: Some("Unhandled"),
            json: vec![("/errorType", json!("Runtime.OutOfMemory")), ("/errorMessage", json!("$nonempty"))],
            log_has: &["memory growth to", "above memory_mb = 128"],
            ..Case::invoke("a memory bomb hits memory_mb, not the host", json!({"op": "bomb"}))
        },
        Case {
            json: vec![("/method", json!("POST"))],
            ..Case::invoke("a new instance serves after a timeout and a memory bomb", json!({"op": "echo"}))
        },
        Case {
            input: Input::Http {
                method: "GET",
                path: "/fn/items/42%20x?a=1&a=2&sp=x+y",
                headers: &[
                    ("cookie", "c1=1; c2=2"),
                    ("x-multi", "one"),
                    ("x-multi", "two"),
                    ("user-agent", "conformance/1"),
                ],
                body: None,
            },
            headers: &[("content-type", "application/json")],
            json: vec![
                ("/method", json!("GET")),
                ("/path", json!("/fn/items/42%20x?a=1&a=2&sp=x+y")),
                ("/authority", json!("$nonempty")),
                ("/headers/cookie", json!("c1=1; c2=2")),
                ("/headers/x-multi", json!("one,two")),
                ("/headers/user-agent", json!("conformance/1")),
                ("/headers/x-forwarded-for", json!("127.0.0.1")),
                ("/headers/x-nimbus-request-id", json!("$request-id")),
            ],
            ..Case::http("an HTTP request reaches the component as it was sent", "GET", "")
        },
        Case {
            input: Input::Http {
                method: "POST",
                path: "/fn/raw",
                headers: &[],
                body: Some(("application/octet-stream", &[0, 159, 146, 150])),
            },
            headers: &[("content-type", "application/octet-stream")],
            raw_body: Some(&[0, 159, 146, 150]),
            ..Case::http("a binary body passes through byte for byte", "POST", "")
        },
        Case {
            input: Input::Http { method: "GET", path: "/fn/status?code=418", headers: &[], body: None },
            status: 418,
            headers: &[("x-custom", "yes")],
            raw_body: Some(b"status 418"),
            ..Case::http("the component's response head is the HTTP response head", "GET", "")
        },
        Case {
            input: Input::Http { method: "GET", path: "/fn/trap", headers: &[], body: None },
            status: 500,
            headers: &[("x-nimbus-error", "function")],
            ..Case::http("a trap on a route is a 500", "GET", "")
        },
    ]
}

fn matches(expected: &Value, got: Option<&Value>, request_id: Option<&str>) -> bool {
    match expected.as_str() {
        Some("$nonempty") => got.and_then(Value::as_str).is_some_and(|s| !s.is_empty()),
        Some("$request-id") => got.and_then(Value::as_str).is_some() && got.and_then(Value::as_str) == request_id,
        Some(p) if p.starts_with("$range:") => {
            let mut it = p.trim_start_matches("$range:").split(':').map(|n| n.parse::<f64>().unwrap());
            let (lo, hi) = (it.next().unwrap(), it.next().unwrap());
            got.and_then(Value::as_f64).is_some_and(|n| n >= lo && n <= hi)
        }
        _ => got.unwrap_or(&Value::Null) == expected,
    }
}

async fn run(runtime: &str) {
    let function = format!("conf-{runtime}");
    let cases = if runtime == "wasm" { wasm_table(&function) } else { table(&function) };
    let app = App::new("conformance")
        .conformance(runtime, &function, "timeout = \"1s\"")
        .route("*", "/fn/*", &function)
        .finish();
    let server = Server::start(app.path());
    let client = server.client();
    let mut failures = Vec::new();
    for case in cases {
        let started = Instant::now();
        let (status, headers, raw) = match &case.input {
            Input::Invoke(event) => {
                let r = server.invoke_with(&function, event, &[("x-amz-log-type", "Tail")]).await;
                if r.function_error() != case.function_error {
                    failures.push(format!(
                        "{}: X-Amz-Function-Error {:?}, expected {:?}; body {}",
                        case.name,
                        r.function_error(),
                        case.function_error,
                        r.body
                    ));
                }
                let log = r.log();
                for want in case.log_has {
                    if !log.contains(want) {
                        failures.push(format!("{}: log lacks {want:?}:\n{log}", case.name));
                    }
                }
                for unwanted in case.log_lacks {
                    if log.contains(unwanted) {
                        failures.push(format!("{}: log has {unwanted:?}:\n{log}", case.name));
                    }
                }
                (r.status, r.headers, r.raw)
            }
            Input::Http { method, path, headers, body } => {
                let mut req = client.request(method.parse().unwrap(), format!("{}{path}", server.url));
                for (k, v) in *headers {
                    req = req.header(*k, *v);
                }
                if let Some((ct, bytes)) = body {
                    req = req.header("content-type", *ct).body(bytes.to_vec());
                }
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                (status, headers, r.bytes().await.unwrap().to_vec())
            }
        };
        let elapsed = started.elapsed();
        let request_id =
            headers.get("x-amzn-requestid").or(headers.get("x-nimbus-request-id")).and_then(|v| v.to_str().ok());
        if status != case.status {
            failures.push(format!(
                "{}: status {status}, expected {}; body {}",
                case.name,
                case.status,
                String::from_utf8_lossy(&raw)
            ));
            continue;
        }
        for (name, value) in case.headers {
            let got = headers.get(*name).and_then(|v| v.to_str().ok());
            if got != Some(*value) {
                failures.push(format!("{}: header {name} = {got:?}, expected {value:?}", case.name));
            }
        }
        if (case.name.contains("API Gateway v2") || case.name.contains("response head"))
            && headers.get_all("set-cookie").iter().count() != 2
        {
            failures.push(format!("{}: expected two Set-Cookie headers", case.name));
        }
        if let Some(want) = case.raw_body {
            if raw != want {
                failures.push(format!("{}: body {:?}, expected {:?}", case.name, raw, want));
            }
        }
        if !case.json.is_empty() {
            let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            for (pointer, want) in &case.json {
                if !matches(want, body.pointer(pointer), request_id) {
                    failures.push(format!("{}: {pointer} = {:?}, expected {want}", case.name, body.pointer(pointer)));
                }
            }
        }
        if let Some(limit) = case.within {
            if elapsed > limit {
                failures.push(format!("{}: took {elapsed:?}, expected at most {limit:?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{runtime}: {} conformance failures:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn conformance_node() {
    run("node").await;
}

#[tokio::test]
async fn conformance_python() {
    run("python").await;
}

#[tokio::test]
async fn conformance_awslambdaric() {
    run("ric").await;
}

#[tokio::test]
async fn conformance_lambda_runtime_crate() {
    run("rust").await;
}

#[tokio::test]
async fn conformance_wasm() {
    run("wasm").await;
}
