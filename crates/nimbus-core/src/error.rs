//! Errors that reach a caller. Each says who failed and whether retrying is safe; the gateway
//! maps them to HTTP in exactly one place per wire format.

use std::time::Duration;

use crate::policy::AttemptFailure;

/// Who is responsible for a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    Client,
    Function,
    Platform,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Function => "function",
            ErrorSource::Platform => "platform",
        }
    }
}

/// Why an invocation did not produce an outcome from the function.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("function {name} not found")]
    NotFound { name: String },
    #[error("function {name} has no version {qualifier}")]
    QualifierNotFound { name: String, qualifier: String },
    #[error(
        "function {name} is at its concurrency limit ({max_instances} instances busy, queue full or wait exceeded)"
    )]
    Throttled { name: String, max_instances: u32, retry_after: Duration },
    #[error("function {name} timed out after {:.2} seconds", timeout.as_secs_f64())]
    Timeout { name: String, timeout: Duration, log: String },
    #[error("the runtime of {name} exited during the invocation: {detail}")]
    Crashed { name: String, detail: String, log: String },
    #[error("function {name} failed to initialise: {error_type}: {message}")]
    InitFailed { name: String, error_type: String, message: String, log: String },
    #[error("payload of {size} bytes is above the {limit}-byte limit")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("the response of {name} is {size} bytes, above the {limit}-byte limit")]
    ResponseTooLarge { name: String, size: usize, limit: usize },
    #[error("function {name} is shutting down; retry")]
    ShuttingDown { name: String },
    #[error("internal error: {0}")]
    Platform(String),
}

impl DispatchError {
    pub fn source_of(&self) -> ErrorSource {
        match self {
            DispatchError::NotFound { .. }
            | DispatchError::QualifierNotFound { .. }
            | DispatchError::PayloadTooLarge { .. } => ErrorSource::Client,
            DispatchError::Timeout { .. }
            | DispatchError::Crashed { .. }
            | DispatchError::InitFailed { .. }
            | DispatchError::ResponseTooLarge { .. } => ErrorSource::Function,
            DispatchError::Throttled { .. } | DispatchError::ShuttingDown { .. } | DispatchError::Platform(_) => {
                ErrorSource::Platform
            }
        }
    }

    /// How the async retry policy counts this failure. Unlike [`DispatchError::source_of`], an
    /// init failure is a platform failure here: the handler never ran, so it is retried until
    /// `max_event_age` rather than against `max_retry_attempts`. Every variant is listed so that
    /// a new one has to be classified here.
    pub fn attempt_failure(&self) -> AttemptFailure {
        match self {
            DispatchError::Timeout { .. } | DispatchError::Crashed { .. } | DispatchError::ResponseTooLarge { .. } => {
                AttemptFailure::Function
            }
            DispatchError::Throttled { .. } => AttemptFailure::Throttled,
            DispatchError::NotFound { .. }
            | DispatchError::QualifierNotFound { .. }
            | DispatchError::InitFailed { .. }
            | DispatchError::PayloadTooLarge { .. }
            | DispatchError::ShuttingDown { .. }
            | DispatchError::Platform(_) => AttemptFailure::Platform,
        }
    }

    /// Whether the caller may safely retry: true only when the function never started running.
    pub fn retry_safe(&self) -> bool {
        matches!(self, DispatchError::Throttled { .. } | DispatchError::ShuttingDown { .. })
    }

    /// The Lambda `errorType` for failures that are reported as function errors.
    pub fn lambda_error_type(&self) -> &'static str {
        match self {
            DispatchError::Timeout { .. } => "Sandbox.Timedout",
            DispatchError::Crashed { .. } => "Runtime.ExitError",
            DispatchError::InitFailed { .. } => "Runtime.InitError",
            DispatchError::ResponseTooLarge { .. } => "Function.ResponseSizeTooLarge",
            _ => "ServiceException",
        }
    }

    /// The invocation log, when the failure happened while the function ran.
    pub fn log(&self) -> &str {
        match self {
            DispatchError::Timeout { log, .. }
            | DispatchError::Crashed { log, .. }
            | DispatchError::InitFailed { log, .. } => log,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_failure_table() {
        let name = || "f".to_owned();
        let log = String::new;
        let table = [
            (
                DispatchError::Timeout { name: name(), timeout: Duration::from_secs(3), log: log() },
                AttemptFailure::Function,
            ),
            (DispatchError::Crashed { name: name(), detail: "exit 1".into(), log: log() }, AttemptFailure::Function),
            (DispatchError::ResponseTooLarge { name: name(), size: 7, limit: 6 }, AttemptFailure::Function),
            (
                DispatchError::Throttled { name: name(), max_instances: 2, retry_after: Duration::from_secs(1) },
                AttemptFailure::Throttled,
            ),
            (
                DispatchError::InitFailed { name: name(), error_type: "E".into(), message: "m".into(), log: log() },
                AttemptFailure::Platform,
            ),
            (DispatchError::NotFound { name: name() }, AttemptFailure::Platform),
            (DispatchError::QualifierNotFound { name: name(), qualifier: "9".into() }, AttemptFailure::Platform),
            (DispatchError::PayloadTooLarge { size: 7, limit: 6 }, AttemptFailure::Platform),
            (DispatchError::ShuttingDown { name: name() }, AttemptFailure::Platform),
            (DispatchError::Platform("spawn failed".into()), AttemptFailure::Platform),
        ];
        for (error, want) in table {
            assert_eq!(error.attempt_failure(), want, "{error:?}");
        }
    }
}
