//! Domain types and the seam traits of nimbus. No I/O lives here: the gateway, scheduler,
//! runtimes and stores all speak these types, and the binary wires concrete implementations
//! together.

pub mod access_keys;
pub mod audit;
pub mod auth;
pub mod error;
pub mod event_sources;
pub mod events;
pub mod expect;
pub mod function;
pub mod history;
pub mod ids;
pub mod invoke;
pub mod kv;
pub mod kv_conformance;
pub mod messages;
pub mod messages_conformance;
pub mod messages_rules;
pub mod meter;
pub mod nodes;
pub mod objects;
pub mod outbound;
pub mod outcome;
pub mod peers;
pub mod policy;
pub mod poll_again;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod shards;
pub mod stream;

pub use access_keys::{AccessKeyRecord, AccessKeySource};
pub use audit::{AuditAction, AuditEntry, AuditError, AuditLog, AuditQuery};
pub use auth::{Scope, TokenDigest, TokenRecord};
pub use error::{DispatchError, ErrorSource};
pub use event_sources::{
    BucketTrigger, QueueAccess, QueueOp, QueueSpec, QueueTrigger, Redrive, TriggerSource, TriggerSpec, S3_EVENTS,
};
pub use function::{
    Access, AsyncPolicy, Destination, FunctionSpec, FunctionVersion, Grants, KeepAlivePolicy, Op, RuntimeKind,
    WasmOptions, ACCOUNT_ID, REGION,
};
pub use history::{History, HistoryError};
pub use invoke::{
    ColdStart, FunctionErrorKind, HttpRequestHead, HttpResponseHead, InstanceBusy, Invocation, InvocationRecord,
    InvocationStatus, InvokeOutcome, InvokeResult, Observed, Observer, Recorder, Trigger,
};
pub use kv::{KvError, KvStore};
pub use objects::{ObjectError, ObjectStore};
pub use registry::{DeploymentRecord, NewDeployment, Registry, RegistryError};
pub use runtime::{
    BoxError, Dispatch, FunctionAws, FunctionCalls, FunctionPrepareError, Instance, InstanceCredentials, InstanceError,
    InstanceState, Pools, PrepareError, Runtime, StartError, StreamBody,
};
pub use stream::{
    response_stream, BodyReceiver, BodySender, Completion, ResponseMode, SendError, StreamError, StreamHandle,
    StreamSummary, DEFAULT_MAX_STREAM_BYTES,
};
