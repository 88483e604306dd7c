//! The JSON 1.0 protocol: `POST /` with `X-Amz-Target: AmazonSQS.ACTION` and a JSON body in the
//! service model's member names; answers are JSON with the same names. SQS is
//! `awsQueryCompatible`: an error carries `x-amzn-query-error: CODE;Sender` so SDKs report the
//! query protocol's code (`AWS.SimpleQueueService.NonExistentQueue`) as they always did.

use bytes::Bytes;
use serde_json::Value;

use super::{unsupported, SqsError, ACTIONS, TARGET_PREFIX};

/// The action and input of a JSON-protocol request.
pub fn decode(req: &http::Request<Bytes>) -> Result<(String, Value), SqsError> {
    let target = req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let action = target.strip_prefix(TARGET_PREFIX).unwrap_or(target);
    if !ACTIONS.contains(&action) {
        return Err(unsupported(action));
    }
    let body = req.body();
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            SqsError::new(
                "SerializationException",
                "SerializationException",
                format!("the request body is not JSON: {e}"),
            )
        })?
    };
    if !input.is_object() {
        return Err(SqsError::new(
            "SerializationException",
            "SerializationException",
            "the request body is not a JSON object",
        ));
    }
    Ok((action.to_owned(), input))
}

fn response(status: http::StatusCode, body: String, request_id: &str) -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", http::HeaderValue::from_static("application/x-amz-json-1.0"));
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

/// A successful answer.
pub fn ok(output: &Value, request_id: &str) -> http::Response<Bytes> {
    response(http::StatusCode::OK, output.to_string(), request_id)
}

/// An error answer.
pub fn error(e: &SqsError, request_id: &str) -> http::Response<Bytes> {
    let body = serde_json::json!({"__type": format!("com.amazonaws.sqs#{}", e.kind), "message": e.message});
    let mut r = response(e.status, body.to_string(), request_id);
    let fault = if e.sender { "Sender" } else { "Receiver" };
    if let Ok(v) = http::HeaderValue::from_str(&format!("{};{fault}", e.code)) {
        r.headers_mut().insert("x-amzn-query-error", v);
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn req(target: &str, body: &'static str) -> http::Request<Bytes> {
        http::Request::builder().method("POST").uri("/").header("x-amz-target", target).body(Bytes::from(body)).unwrap()
    }

    #[test]
    fn decodes_the_target_and_body() {
        let (action, input) = decode(&req("AmazonSQS.SendMessage", r#"{"QueueUrl":"u","MessageBody":"b"}"#)).unwrap();
        assert_eq!(action, "SendMessage");
        assert_eq!(input["MessageBody"], "b");
        assert_eq!(decode(&req("AmazonSQS.ListQueues", "")).unwrap().1, serde_json::json!({}));
        assert_eq!(decode(&req("AmazonSQS.TagQueue", "{}")).unwrap_err().kind, "UnsupportedOperation");
        assert_eq!(decode(&req("AmazonSQS.Nope", "{}")).unwrap_err().kind, "InvalidAction");
        assert_eq!(decode(&req("AmazonSQS.SendMessage", "[1]")).unwrap_err().kind, "SerializationException");
        assert_eq!(decode(&req("AmazonSQS.SendMessage", "{")).unwrap_err().kind, "SerializationException");
    }

    #[test]
    fn errors_carry_the_query_code_for_sdks() {
        let e = SqsError::no_queue("q");
        let r = error(&e, "rid");
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["x-amzn-query-error"], "AWS.SimpleQueueService.NonExistentQueue;Sender");
        assert_eq!(r.headers()["content-type"], "application/x-amz-json-1.0");
        let body: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
        assert!(body["message"].as_str().unwrap().contains("CreateQueue"));
    }
}
