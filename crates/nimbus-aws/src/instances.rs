//! The AWS APIs as function instances reach them ([`nimbus_core::FunctionAws`]): each instance
//! gets a key of its own (`ASIA…`, as AWS's temporary keys look, with a session token) that
//! allows exactly its function's grants and is dropped when the instance ends. Keys live in the
//! [`KeyRing`] only, in memory, so none is valid after nimbus restarts.
//!
//! The instance's requests come in through the process runtime's endpoint and are answered here
//! in-process by the same S3 service as the AWS port's, bodies streamed both ways: no loopback
//! hop, no dependence on `--aws-listen` (functions have S3 with the port off), and the request
//! arrives as the SDK sent it (Host, path, query), so its SigV4 signature verifies unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use http_body_util::BodyExt as _;
use nimbus_core::{FunctionAws, FunctionVersion, InstanceCredentials, StreamBody};
use s3s::access::{S3Access, S3AccessContext};
use s3s::{s3_error, S3Result};

use crate::keys::{self, KeyRing, Principal};
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
        let resp = self.port.s3(request.map(s3s::Body::http_body_unsync)).await;
        resp.map(|b| b.boxed_unsync())
    }
}

/// The session token a request carries: the `x-amz-security-token` header, or the
/// `X-Amz-Security-Token` query parameter of a presigned URL.
fn presented_token(cx: &S3AccessContext<'_>) -> Option<String> {
    if let Some(v) = cx.headers().get("x-amz-security-token") {
        return v.to_str().ok().map(str::to_owned);
    }
    cx.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.eq_ignore_ascii_case("X-Amz-Security-Token")
            .then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

/// s3s's access hook, run after the signature is verified and before any operation: the
/// request must be signed, and a key issued with a session token needs that token.
pub(crate) struct SessionTokens(pub(crate) KeyRing);

#[async_trait]
impl S3Access for SessionTokens {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "the request is not signed; sign it with a nimbus access key"));
        };
        let key = creds.access_key.clone();
        self.0.check_token(&key, presented_token(cx).as_deref())
    }
}
