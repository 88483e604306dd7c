//! The calls functions make to nimbus from inside their instances ([`nimbus_core::FunctionCalls`]):
//! the Invoke API and the KV calls (`/nimbus/v1/kv/…`), answered within the caller's grants. The process runtime hands them
//! over from each instance's own endpoint with the caller's identity.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use nimbus_core::{FunctionCalls, FunctionVersion};

use crate::context::Gateway;

/// The gateway's answer to function calls; give it to the process runtime once built.
pub struct Calls(pub Arc<Gateway>);

impl Calls {
    /// An Invoke API call from the AWS port, whose SigV4 signature the port verified; `functions`
    /// is what the key may invoke (`None`: anything).
    pub async fn signed_invoke(
        &self,
        key_id: &str,
        functions: Option<&[String]>,
        request: http::Request<Bytes>,
    ) -> http::Response<Bytes> {
        if request.uri().path().starts_with(crate::invoke_stream::PREFIX) {
            // The event stream, collected: the port answers with whole bodies.
            let resp = crate::invoke_stream::signed(&self.0, key_id, functions, request).await;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return http::Response::from_parts(parts, body);
        }
        let resp = crate::invoke_api::signed(&self.0, key_id, functions, request).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        http::Response::from_parts(parts, body)
    }
}

#[async_trait]
impl FunctionCalls for Calls {
    async fn call(&self, caller: Arc<FunctionVersion>, request: http::Request<Bytes>) -> http::Response<Bytes> {
        let path = request.uri().path();
        let resp = if path.starts_with("/2015-03-31/functions/") {
            crate::invoke_api::from_function(&self.0, &caller, request).await
        } else if path == crate::kv_api::FUNCTION_PREFIX
            || path.strip_prefix(crate::kv_api::FUNCTION_PREFIX).is_some_and(|r| r.starts_with('/'))
        {
            crate::kv_api::from_function(&self.0, &caller, request).await
        } else {
            crate::util::json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"__type": "UnknownOperationException", "message": "unknown operation"}),
            )
        };
        let (parts, body) = resp.into_parts();
        // A `Full` body is one chunk, ready at once.
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        http::Response::from_parts(parts, body)
    }
}
