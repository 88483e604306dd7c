//! What an invocation ends with: the function's outcome or why its instance failed.
//!
//! The bottom of the invocation types: [`crate::invoke`] (requests and results),
//! [`crate::stream`] (responses handed back early, whose completion carries these) and
//! [`crate::runtime`] (the instance seam) all build on it, and it builds on none of them.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How a function error was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FunctionErrorKind {
    /// The runtime reported the error as handled (Node `callback(err)`).
    Handled,
    /// An exception, crash, or timeout.
    Unhandled,
}

impl FunctionErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionErrorKind::Handled => "Handled",
            FunctionErrorKind::Unhandled => "Unhandled",
        }
    }
}

/// What the function produced.
#[derive(Clone, Debug)]
pub enum InvokeOutcome {
    /// The response payload the runtime posted.
    Success(Bytes),
    /// The runtime posted an error: `body` is the `{errorMessage, errorType, stackTrace}` JSON.
    FunctionError { kind: FunctionErrorKind, error_type: String, error_message: String, body: Bytes },
}

/// Why an invocation on an instance failed without a function outcome.
#[derive(Clone, Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("timed out after {timeout:?}")]
    Timeout { timeout: Duration, log: String },
    #[error("runtime exited: {detail}")]
    Crashed { detail: String, log: String },
    /// The instance died before the runtime picked the event up: the function never ran, so
    /// the invocation may be retried on another instance.
    #[error("the instance stopped before the invocation started: {detail}")]
    Lost { detail: String },
    #[error("response of {size} bytes above the {limit}-byte limit")]
    ResponseTooLarge { size: usize, limit: usize, log: String },
    #[error("{0}")]
    Platform(String),
}
