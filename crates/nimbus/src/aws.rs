//! `nimbus up`'s AWS port (`--aws-listen`): S3 over the embedded object store, SQS over the
//! embedded message queues, and the Lambda Invoke API, SigV4-verified with the admin key pair of `DATA_DIR/aws-credentials` and the
//! managed keys of `nimbus keys` (looked up in the control plane's set); and the same S3 and SQS for
//! functions, in-process through their instances' endpoints, with a key per instance
//! ([`for_functions`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use nimbus_aws::server::{AwsPort, InvokeApi};
use nimbus_aws::{KeyRing, Principal};
use nimbus_core::messages::MessageQueues;
use nimbus_core::{AccessKeySource, ObjectStore};

/// The address the AWS port takes when `--aws-listen` is not given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:4566";
/// Where `nimbus up` writes the AWS port's URL (as `server.url` for the gateway).
pub const URL_FILE: &str = "aws.url";

/// What the port serves: objects, message queues, and the keys it accepts.
pub type Parts = (Arc<dyn ObjectStore>, Arc<dyn MessageQueues>, KeyRing);

/// The Invoke API on the AWS port is the gateway's.
struct GatewayInvoke(nimbus_gateway::Calls);

#[async_trait]
impl InvokeApi for GatewayInvoke {
    async fn invoke(
        &self,
        key_id: &str,
        functions: Option<Vec<String>>,
        req: http::Request<Bytes>,
    ) -> http::Response<Bytes> {
        self.0.signed_invoke(key_id, functions.as_deref(), req).await
    }
}

/// What process instances reach as the AWS APIs: S3 over `objects` and SQS over `queues`,
/// in-process, each instance with a key of its own in `keys` (the ring the AWS port accepts
/// too), counted into `meter` like the port's own traffic.
pub fn for_functions(
    (objects, queues, keys): Parts,
    meter: Arc<nimbus_core::meter::StorageMeter>,
) -> Arc<dyn nimbus_core::FunctionAws> {
    Arc::new(nimbus_aws::instances::InstanceAws::new(AwsPort::metered(objects, Some(queues), keys, None, meter)))
}

/// A bound AWS port, ready to serve.
pub struct Bound {
    pub listener: tokio::net::TcpListener,
    pub url: String,
    pub port: Arc<AwsPort>,
    pub credentials: std::path::PathBuf,
}

/// Bind the AWS port as `--aws-listen` says: `None` is the default address, where a port in use
/// only turns the AWS port off (with a warning); `off` turns it off; an address given that
/// cannot be bound stops nimbus.
pub async fn bind(
    flag: Option<&str>,
    data_dir: &Path,
    (objects, queues, keys): Parts,
    gateway: Arc<nimbus_gateway::Gateway>,
    managed: Arc<dyn AccessKeySource>,
) -> Result<Option<Bound>> {
    let _ = std::fs::remove_file(data_dir.join(URL_FILE));
    if flag == Some("off") {
        return Ok(None);
    }
    let text = flag.unwrap_or(DEFAULT_ADDR);
    let addr: SocketAddr =
        text.parse().with_context(|| format!("--aws-listen {text:?} is not an address like 127.0.0.1:4566 or off"))?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if flag.is_none() => {
            tracing::warn!(
                "the AWS port {addr} is not available ({e}); S3 is off. Pass --aws-listen ADDR to use another"
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on --aws-listen {addr}")),
    };
    let credentials = data_dir.join(nimbus_aws::credentials::FILE_NAME);
    let (id, secret) = nimbus_aws::credentials::load_or_create(&credentials)
        .with_context(|| format!("cannot write {}", credentials.display()))?;
    keys.insert(&id, &secret, Principal::Admin);
    keys.set_managed(managed);
    let meter = gateway.storage_meter();
    let invoke: Arc<dyn InvokeApi> = Arc::new(GatewayInvoke(nimbus_gateway::Calls(gateway)));
    let url = format!("http://{}", listener.local_addr()?);
    crate::files::write_private(&data_dir.join(URL_FILE), &url)?;
    Ok(Some(Bound {
        listener,
        url,
        port: AwsPort::metered(objects, Some(queues), keys, Some(invoke), meter),
        credentials,
    }))
}

/// Print how to use the port, and serve it until `stopped` turns true.
pub fn spawn(
    bound: Bound,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    drain: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let creds = bound.credentials.display();
    println!("  S3 and the Invoke API (SigV4) on {}: key pair in {creds} (profile nimbus)", bound.url);
    println!("    AWS_SHARED_CREDENTIALS_FILE={creds} AWS_PROFILE=nimbus aws --endpoint-url {} s3 ls", bound.url);
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::spawn(nimbus_aws::server::serve(bound.listener, bound.port, stop, drain))
}
