//! The AWS APIs as function instances reach them ([`nimbus_core::FunctionAws`]): each instance
//! gets a key of its own (`ASIA…`, as AWS's temporary keys look, with a session token) that
//! allows exactly its function's grants and is dropped when the instance ends. Keys live in the
//! [`KeyRing`](crate::KeyRing) only, in memory, so none is valid after nimbus restarts.
//!
//! The instance's requests come in through the process runtime's endpoint and are answered here
//! in-process by the same S3 and SQS services as the AWS port's, bodies streamed both ways: no loopback
//! hop, no dependence on `--aws-listen` (functions have S3 with the port off), and the request
//! arrives as the SDK sent it (Host, path, query), so its SigV4 signature verifies unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use http_body_util::BodyExt as _;
use nimbus_core::{FunctionAws, FunctionVersion, InstanceCredentials, StreamBody};

use crate::keys::{self, Principal};
use crate::server::AwsPort;

/// Where an access key id of an instance starts (AWS's temporary keys start so too).
pub const INSTANCE_KEY_PREFIX: &str = "ASIA";

/// [`FunctionAws`] over an [`AwsPort`] (whether or not the port listens anywhere).
pub struct InstanceAws {
    port: Arc<AwsPort>,
}

impl InstanceAws {
    pub fn new(port: Arc<AwsPort>) -> Self {
        InstanceAws { port }
    }
}

/// A session token: 64 characters from the URL-safe alphabet (so it needs no escaping anywhere).
fn session_token() -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 64] = rand::random();
    // 64 symbols: a byte modulo 64 is uniform.
    bytes.iter().map(|b| SET.get(usize::from(*b) % SET.len()).map_or('A', |c| char::from(*c))).collect()
}

#[async_trait]
impl FunctionAws for InstanceAws {
    fn issue_credentials(&self, caller: &FunctionVersion) -> InstanceCredentials {
        let (access_key_id, secret_access_key) = keys::generate(INSTANCE_KEY_PREFIX);
        let session_token = session_token();
        let principal = Principal::Grants(caller.spec.grants.clone());
        self.port.keys().insert_session(&access_key_id, &secret_access_key, &session_token, principal);
        tracing::debug!(function = %caller.spec.name, key_id = %access_key_id, "issued an instance's AWS key");
        InstanceCredentials { access_key_id, secret_access_key, session_token }
    }

    fn revoke_credentials(&self, access_key_id: &str) {
        self.port.keys().remove(access_key_id);
    }

    async fn serve(&self, request: http::Request<StreamBody>) -> http::Response<StreamBody> {
        let resp = self.port.serve(request.map(s3s::Body::http_body_unsync)).await;
        resp.map(|b| b.boxed_unsync())
    }
}
