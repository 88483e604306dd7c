//! The seams between the scheduler and whatever runs code.
//!
//! Lifecycle of an instance, driven by the scheduler's pool for one function version:
//! 1. `Runtime::start` is called when the pool decides it needs one more instance (a request is
//!    waiting and no instance is idle, or `min_instances` is not met). It returns once the
//!    instance is ready for its first invocation (for process runtimes: the runtime has asked
//!    for its first event), or with the init failure.
//! 2. `Instance::invoke` is called once per invocation, on as many invocations at once as the
//!    function's `concurrency` (1: one at a time, as in Lambda; above 1 the pool hands one
//!    instance to several requests, as Lambda Managed Instances and Vercel's Fluid compute do).
//!    It returns the outcome or an `InstanceError`; after an error `state()` tells whether the
//!    instance can be reused. An instance that dies fails every invocation it was running.
//! 3. `Instance::shutdown` is called exactly once when the pool reclaims the instance (idle
//!    past keep-alive, a newer deployment, server shutdown) or after it died, with no
//!    invocation running on it. It must leave no
//!    process, file descriptor or temp file behind.

use std::sync::Arc;

use async_trait::async_trait;

use crate::function::FunctionVersion;
use crate::invoke::{ColdStart, Invocation, InvokeResult};
pub use crate::outcome::InstanceError;
use crate::DispatchError;

/// Makes instances of one runtime kind.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Get a new function version ready to start before its deployment goes live (the wasm
    /// runtime compiles the component ahead of time here). An error refuses the deployment.
    async fn prepare(&self, _function: &FunctionVersion) -> Result<(), PrepareError> {
        Ok(())
    }

    /// Start a new instance of `function` and wait until it is ready or failed.
    async fn start(&self, function: Arc<FunctionVersion>, instance_id: String)
        -> Result<Box<dyn Instance>, StartError>;

    /// `function` is live (deployed): the runtime may make ahead of demand what its starts need
    /// (the process runtime prepares a sandbox). Must return at once; the work runs in the
    /// background.
    fn live(&self, _function: &Arc<FunctionVersion>) {}

    /// `function` is no longer live: drop what was made ahead for it.
    fn retire(&self, _function: &FunctionVersion) {}

    /// Whether something made ahead for `function` is ready for its next start (the process
    /// runtime's prepared sandbox), for the management API.
    fn prepared(&self, _function: &FunctionVersion) -> bool {
        false
    }

    /// nimbus is stopping: release everything made ahead of demand, and wait until it is.
    async fn shutdown(&self) {}
}

/// Why a function version cannot be got ready (see [`Runtime::prepare`]).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The function's code cannot run as deployed (a component that does not compile or lacks
    /// the export its runtime needs): the deployment is refused and the user must fix the code.
    #[error("{message}")]
    Invalid {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// nimbus could not get it ready (a cache it could not write, a task that failed).
    #[error("{message}")]
    Platform {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// No runtime of this kind is registered with the scheduler.
    #[error("no runtime is registered for {}", .0.as_str())]
    NoRuntime(crate::RuntimeKind),
}

impl PrepareError {
    /// A problem with the function's code, for the user to fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        PrepareError::Invalid { message: message.into(), source: None }
    }

    /// A failure of nimbus's own, keeping its cause.
    pub fn platform(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        PrepareError::Platform { message: message.into(), source: Some(Box::new(source)) }
    }

    /// Whether the deployment's code is at fault (else nimbus is).
    pub fn is_invalid(&self) -> bool {
        matches!(self, PrepareError::Invalid { .. })
    }
}

/// A function of a deployment that could not be got ready.
#[derive(Debug, thiserror::Error)]
#[error("function {function}: {source}")]
pub struct FunctionPrepareError {
    pub function: String,
    #[source]
    pub source: PrepareError,
}

/// What the control plane tells the instance pools about deployments (the scheduler implements
/// it). Lifecycle: `prepare` is called for every function of a deployment before it is
/// recorded (and for the live deployment once after a restart, to warm compile caches); an
/// error refuses the deployment. `deploy` is called with the functions of the deployment that
/// just became live (deploy, rollback, start): pools for new versions start `min_instances`,
/// pools no longer live are retired once their in-flight invocations end.
#[async_trait]
pub trait Pools: Send + Sync + 'static {
    async fn prepare(&self, functions: &[Arc<FunctionVersion>]) -> Result<(), FunctionPrepareError>;
    fn deploy(&self, live: &[Arc<FunctionVersion>]);
}

/// Whether an instance can take another invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Ready,
    Dead,
}

/// A running copy of one function version.
#[async_trait]
pub trait Instance: Send + Sync + 'static {
    fn id(&self) -> &str;
    /// The OS process id, for process runtimes.
    fn pid(&self) -> Option<u32>;
    /// How long the start took, by phase (reported as `Init Duration` and in the record of the
    /// first invocation).
    fn cold_start(&self) -> ColdStart;
    /// Output the instance wrote while initialising (prepended to the first invocation's log).
    fn take_init_log(&self) -> String;
    fn state(&self) -> InstanceState;
    /// Run one invocation to completion, possibly beside others on the same instance (up to the
    /// function's `concurrency`). `InvokeResult::cold` is left `None`: the pool fills it.
    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, InstanceError>;
    /// Stop the instance and release everything it holds. Called once, after the last
    /// invocation on it ended; the pool's handle is the last one left.
    async fn shutdown(self: Arc<Self>);
}

/// Why an instance could not be started.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StartError {
    /// The function's own code failed during init (import error, crash, init timeout).
    #[error("{error_type}: {message}")]
    InitFailed { error_type: String, message: String, log: String },
    /// nimbus could not start it (spawn failed, no interpreter, …).
    #[error("{0}")]
    Platform(String),
}

/// Calls a function makes to nimbus from inside its instance (the Invoke API today; storage and
/// queues later), answered within the caller's grants. The process runtime serves them on the
/// instance's own endpoint, so the caller is known from the connection, never from anything it
/// claims. Implemented by the gateway; called once per such request, concurrently.
#[async_trait]
pub trait FunctionCalls: Send + Sync + 'static {
    async fn call(
        &self,
        caller: Arc<FunctionVersion>,
        request: http::Request<bytes::Bytes>,
    ) -> http::Response<bytes::Bytes>;
}

/// A body streamed across a seam (neither side buffers it): S3 objects to and from functions.
pub type StreamBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
/// The error of a [`StreamBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The AWS credential one instance runs with (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`): it allows exactly the function's grants, and only while the instance
/// lives.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl std::fmt::Debug for InstanceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// The AWS-compatible APIs as functions reach them from inside their instances (S3 today).
/// Implemented by the AWS side (`nimbus-aws`), set once it exists; the process runtime knows
/// only this trait. Lifecycle: `issue_credentials` when an instance starts (before its process
/// is spawned: they go into its environment), `revoke_credentials` exactly once when the
/// instance is gone (or its start failed); in between, every request the instance sends to its
/// endpoint that is neither the Runtime API nor one of nimbus's own calls goes to `serve`,
/// streamed both ways, signed as the instance's SDK signed it. Keys live in memory only, so
/// none survives a restart of nimbus.
#[async_trait]
pub trait FunctionAws: Send + Sync + 'static {
    /// A fresh credential allowing exactly `caller`'s grants.
    fn issue_credentials(&self, caller: &FunctionVersion) -> InstanceCredentials;
    /// Stop accepting a credential `issue_credentials` returned.
    fn revoke_credentials(&self, access_key_id: &str);
    /// Answer one AWS API request (SigV4-verified here: the key decides what it may do).
    async fn serve(&self, request: http::Request<StreamBody>) -> http::Response<StreamBody>;
}

/// What the gateway and (later) triggers call to run a function version.
#[async_trait]
pub trait Dispatch: Send + Sync + 'static {
    async fn invoke(
        &self,
        function: Arc<FunctionVersion>,
        invocation: Invocation,
    ) -> Result<InvokeResult, DispatchError>;
}
