//! SQS on the AWS port, over [`MessageQueues`]: both wire protocols the SDKs speak. The JSON
//! protocol (`X-Amz-Target: AmazonSQS.Action`, `application/x-amz-json-1.0`: current boto3,
//! the `aws` CLI, AWS SDK v3) and the query protocol (a form body with `Action=…`, answered in
//! XML: older SDKs) are decoded into one request shape, the JSON protocol's
//! ([`json`], [`query`]); the operations ([`ops`]) read that and answer in it, and the query
//! protocol turns the answer into its XML.
//!
//! Requests are SigV4-verified ([`crate::sigv4`]) with the port's [`KeyRing`]. The admin key
//! may do everything; other keys (a function instance's, a managed key) only what their
//! grants allow: `send` for SendMessage(Batch), `receive` for receiving, deleting and changing
//! visibility, either for reading a queue's URL and attributes; creating, deleting, purging
//! and configuring queues is the admin's. A refusal is `AccessDenied`, logged with the key id.

pub mod attrs;
pub mod json;
pub mod ops;
pub mod query;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use nimbus_core::event_sources::QueueOp;
use nimbus_core::messages::{MessageQueues, MqError};
use serde_json::Value;

use crate::keys::{KeyRing, Principal};
use crate::sigv4::{self, SigError};

/// Largest SQS request body read (a batch of ten 256 KiB messages is refused by size checks
/// before this matters; this bounds what is buffered).
pub const MAX_BODY: usize = 1024 * 1024;
/// The `X-Amz-Target` prefix of the JSON protocol.
pub const TARGET_PREFIX: &str = "AmazonSQS.";
/// The query protocol's XML namespace.
pub const XMLNS: &str = "http://queue.amazonaws.com/doc/2012-11-05/";

/// The actions served (the query protocol's `Action=` must be one of them to be SQS's).
pub const ACTIONS: [&str; 15] = [
    "CreateQueue",
    "GetQueueUrl",
    "ListQueues",
    "DeleteQueue",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "PurgeQueue",
    "ListQueueTags",
];

/// Actions of SQS's API that nimbus does not serve (answered `UnsupportedOperation`).
pub const UNSERVED: [&str; 8] = [
    "AddPermission",
    "RemovePermission",
    "TagQueue",
    "UntagQueue",
    "ListDeadLetterSourceQueues",
    "StartMessageMoveTask",
    "CancelMessageMoveTask",
    "ListMessageMoveTasks",
];

/// The error for an action that is not served: SQS's but not here (`UnsupportedOperation`), or
/// not SQS's at all (`InvalidAction`).
pub fn unsupported(action: &str) -> SqsError {
    if UNSERVED.contains(&action) {
        return SqsError::new(
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation",
            format!("nimbus does not serve the SQS action {action}; it serves {}", ACTIONS.join(", ")),
        );
    }
    SqsError::new(
        "InvalidAction",
        "InvalidAction",
        format!("{action:?} is not an SQS action; nimbus serves {}", ACTIONS.join(", ")),
    )
}

/// An SQS error: `kind` is the JSON protocol's `__type` (the service model's shape name),
/// `code` the query protocol's `Code` (also sent as `x-amzn-query-error` so JSON clients map
/// it as they would the query one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsError {
    pub status: http::StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    /// The caller's fault (`Sender`) or the service's (`Receiver`).
    pub sender: bool,
    pub message: String,
}

impl SqsError {
    pub fn new(kind: &'static str, code: &'static str, message: impl Into<String>) -> SqsError {
        SqsError { status: http::StatusCode::BAD_REQUEST, kind, code, sender: true, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> SqsError {
        SqsError::new("InvalidParameterValue", "InvalidParameterValue", message)
    }

    pub fn missing(parameter: &str) -> SqsError {
        SqsError::new(
            "MissingParameter",
            "MissingParameter",
            format!("The request must contain the parameter {parameter}."),
        )
    }

    pub fn no_queue(name: &str) -> SqsError {
        MqError::NoSuchQueue(name.to_owned()).into()
    }

    fn forbidden(kind: &'static str, message: impl Into<String>) -> SqsError {
        SqsError { status: http::StatusCode::FORBIDDEN, ..SqsError::new(kind, kind, message) }
    }
}

impl From<MqError> for SqsError {
    fn from(e: MqError) -> SqsError {
        let message = e.to_string();
        match e {
            MqError::NoSuchQueue(_) => {
                SqsError::new("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", message)
            }
            MqError::QueueNameExists(_) => SqsError::new("QueueNameExists", "QueueAlreadyExists", message),
            MqError::InvalidReceiptHandle(_) => {
                SqsError::new("ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid", message)
            }
            MqError::InvalidParameter(_) | MqError::MessageTooLong(..) => SqsError::invalid(message),
            MqError::Backend(_) => {
                tracing::error!("SQS: {message}");
                SqsError {
                    status: http::StatusCode::INTERNAL_SERVER_ERROR,
                    sender: false,
                    ..SqsError::new("InternalError", "InternalError", message)
                }
            }
        }
    }
}

/// Which wire protocol a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Query,
}

/// Whether a request is for SQS: a JSON-protocol target, or a POST form (the query protocol;
/// [`is_query_body`] confirms it once the body is read).
pub fn protocol_of<B>(req: &http::Request<B>) -> Option<Protocol> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("x-amz-target").starts_with(TARGET_PREFIX) {
        return Some(Protocol::Json);
    }
    let form = header("content-type").starts_with("application/x-www-form-urlencoded");
    (req.method() == http::Method::POST && form && req.uri().query().is_none()).then_some(Protocol::Query)
}

/// Whether a form body names an SQS action (`Action=SendMessage`…).
pub fn is_query_body(body: &[u8]) -> bool {
    form_urlencoded::parse(body)
        .any(|(k, v)| k == "Action" && (ACTIONS.contains(&v.as_ref()) || UNSERVED.contains(&v.as_ref())))
}

/// The SQS service of the port.
pub struct Sqs {
    queues: Arc<dyn MessageQueues>,
    keys: KeyRing,
}

/// Who is calling, and where the queue URLs they are given point.
pub struct Caller {
    pub key_id: String,
    pub principal: Principal,
    /// `http://HOST`, from the request's Host header.
    pub base_url: String,
}

impl Sqs {
    pub fn new(queues: Arc<dyn MessageQueues>, keys: KeyRing) -> Sqs {
        Sqs { queues, keys }
    }

    /// Answer one buffered SQS request in `protocol`.
    pub async fn handle(&self, protocol: Protocol, req: http::Request<Bytes>) -> http::Response<Bytes> {
        let request_id = nimbus_core::ids::new_request_id();
        let mut action = String::new();
        let result = self.answer(protocol, &req, &mut action).await;
        match (protocol, result) {
            (Protocol::Json, Ok(v)) => json::ok(&v, &request_id),
            (Protocol::Json, Err(e)) => json::error(&e, &request_id),
            (Protocol::Query, Ok(v)) => query::ok(&action, &v, &request_id),
            (Protocol::Query, Err(e)) => query::error(&e, &request_id),
        }
    }

    async fn answer(
        &self,
        protocol: Protocol,
        req: &http::Request<Bytes>,
        action: &mut String,
    ) -> Result<Value, SqsError> {
        let (name, input) = match protocol {
            Protocol::Json => json::decode(req)?,
            Protocol::Query => query::decode(req)?,
        };
        *action = name.clone();
        let caller = self.authenticate(req)?;
        authorize(&caller, &name, &input)?;
        ops::run(self.queues.as_ref(), &caller, &name, &input).await
    }

    fn authenticate(&self, req: &http::Request<Bytes>) -> Result<Caller, SqsError> {
        let key_id = sigv4::verify(req, |k| self.keys.secret(k), SystemTime::now()).map_err(|e| match e {
            SigError::Missing(m) => SqsError::forbidden("MissingAuthenticationToken", m),
            SigError::UnknownKey(k) => SqsError::forbidden(
                "InvalidClientTokenId",
                format!("The security token included in the request is invalid: {k} is not a nimbus access key"),
            ),
            SigError::Invalid(m) => SqsError::forbidden("SignatureDoesNotMatch", m),
        })?;
        let token = req.headers().get("x-amz-security-token").and_then(|v| v.to_str().ok());
        if self.keys.check_token(&key_id, token).is_err() {
            return Err(SqsError::forbidden(
                "InvalidClientTokenId",
                format!("the session token is missing or is not the one issued with access key {key_id}; sign with the AWS_SESSION_TOKEN given with the key"),
            ));
        }
        let principal = self.keys.principal(&key_id).ok_or_else(|| {
            SqsError::forbidden("InvalidClientTokenId", format!("{key_id} is not a nimbus access key"))
        })?;
        let host = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        Ok(Caller { key_id, principal, base_url: format!("http://{host}") })
    }
}

/// What an action needs of a key that is not the admin's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Only the admin.
    Admin,
    /// This grant on the queue.
    Op(QueueOp),
    /// Any grant on the queue.
    AnyGrant,
    /// Nothing (the answer is filtered to the key's queues).
    Nothing,
}

fn need(action: &str) -> Need {
    match action {
        "SendMessage" | "SendMessageBatch" => Need::Op(QueueOp::Send),
        "ReceiveMessage"
        | "DeleteMessage"
        | "DeleteMessageBatch"
        | "ChangeMessageVisibility"
        | "ChangeMessageVisibilityBatch" => Need::Op(QueueOp::Receive),
        "GetQueueUrl" | "GetQueueAttributes" | "ListQueueTags" => Need::AnyGrant,
        "ListQueues" => Need::Nothing,
        _ => Need::Admin,
    }
}

/// Refuse (and log) an action the caller's grants do not allow.
fn authorize(caller: &Caller, action: &str, input: &Value) -> Result<(), SqsError> {
    let Principal::Grants(grants) = &caller.principal else {
        return Ok(());
    };
    let queue = match action {
        "GetQueueUrl" => ops::str_field(input, "QueueName").unwrap_or_default().to_owned(),
        _ => ops::queue_name(input).unwrap_or_default(),
    };
    let allowed = match need(action) {
        Need::Admin => false,
        Need::Op(op) => grants.may_use_queue(&queue, op),
        Need::AnyGrant => grants.queues.contains_key(&queue),
        Need::Nothing => true,
    };
    if allowed {
        return Ok(());
    }
    let key_id = caller.key_id.as_str();
    tracing::warn!(key_id, queue, action, "AWS port: SQS access denied (the key has no grant for it)");
    Err(SqsError::forbidden(
        "AccessDenied",
        format!("the access key {key_id} may not {action} on queue \"{queue}\" (grant it in the function's [grants] queues, or use the admin key)"),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use nimbus_core::event_sources::QueueAccess;
    use nimbus_core::Grants;

    #[test]
    fn requests_are_told_apart_by_target_or_form_action() {
        let req = |m: &str, uri: &str, h: (&str, &str)| {
            http::Request::builder().method(m).uri(uri).header(h.0, h.1).body(()).unwrap()
        };
        let json = req("POST", "/", ("x-amz-target", "AmazonSQS.SendMessage"));
        assert_eq!(protocol_of(&json), Some(Protocol::Json));
        let form = req("POST", "/", ("content-type", "application/x-www-form-urlencoded; charset=utf-8"));
        assert_eq!(protocol_of(&form), Some(Protocol::Query));
        assert_eq!(protocol_of(&req("POST", "/b?delete", ("content-type", "application/x-www-form-urlencoded"))), None);
        assert_eq!(protocol_of(&req("PUT", "/b/k", ("content-type", "application/x-www-form-urlencoded"))), None);
        assert_eq!(protocol_of(&req("POST", "/b", ("content-type", "multipart/form-data"))), None);
        assert!(is_query_body(b"Action=SendMessage&QueueUrl=x"));
        assert!(is_query_body(b"Action=TagQueue"), "answered by SQS as unsupported");
        assert!(!is_query_body(b"Action=PutObject"));
        assert!(!is_query_body(b"key=a"));
    }

    #[test]
    fn grants_decide_per_action() {
        let grants = Grants {
            queues: [("in".to_owned(), QueueAccess::Send), ("work".to_owned(), QueueAccess::Receive)].into(),
            ..Grants::default()
        };
        let caller =
            Caller { key_id: "ASIA".into(), principal: Principal::Grants(grants), base_url: "http://h".into() };
        let url = |q: &str| serde_json::json!({"QueueUrl": format!("http://x/000000000000/{q}"), "QueueName": q});
        assert!(authorize(&caller, "SendMessage", &url("in")).is_ok());
        assert!(authorize(&caller, "SendMessageBatch", &url("in")).is_ok());
        assert!(authorize(&caller, "ReceiveMessage", &url("in")).is_err());
        assert!(authorize(&caller, "ReceiveMessage", &url("work")).is_ok());
        assert!(authorize(&caller, "DeleteMessageBatch", &url("work")).is_ok());
        assert!(authorize(&caller, "SendMessage", &url("work")).is_err());
        assert!(authorize(&caller, "SendMessage", &url("other")).is_err());
        assert!(authorize(&caller, "GetQueueUrl", &url("work")).is_ok());
        assert!(authorize(&caller, "GetQueueAttributes", &url("other")).is_err());
        assert!(authorize(&caller, "ListQueues", &serde_json::json!({})).is_ok());
        for admin_only in ["CreateQueue", "DeleteQueue", "PurgeQueue", "SetQueueAttributes"] {
            let e = authorize(&caller, admin_only, &url("in")).unwrap_err();
            assert_eq!((e.code, e.status), ("AccessDenied", http::StatusCode::FORBIDDEN), "{admin_only}");
        }
        let admin = Caller { principal: Principal::Admin, ..caller };
        assert!(authorize(&admin, "DeleteQueue", &url("any")).is_ok());
    }

    #[test]
    fn store_errors_keep_their_sqs_codes() {
        let e = SqsError::from(MqError::NoSuchQueue("q".into()));
        assert_eq!((e.kind, e.code), ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"));
        let e = SqsError::from(MqError::Backend("disk".into()));
        assert_eq!((e.status, e.sender), (http::StatusCode::INTERNAL_SERVER_ERROR, false));
    }
}
