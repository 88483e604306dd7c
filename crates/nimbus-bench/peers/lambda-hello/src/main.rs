//! A hello function for the Lambda Runtime API (function URL / API Gateway v2 response shape),
//! served by `cargo lambda watch` as a peer in `nimbus-bench all`.
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

/// The body every configuration of `nimbus-bench all` answers.
const BODY: &str = r#"{"message":"Hello, bench!","runtime":"wasm"}"#;

/// cargo-lambda 1.9.2's function-URL emulator answers 500 unless the response has every field
/// of its response type (`cookies` and `multiValueHeaders` included), as lambda_http writes them.
async fn handler(_event: LambdaEvent<Value>) -> Result<Value, Error> {
    Ok(json!({
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "multiValueHeaders": {},
        "cookies": [],
        "isBase64Encoded": false,
        "body": BODY,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
