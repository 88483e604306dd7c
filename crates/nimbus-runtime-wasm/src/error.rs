//! Why the wasm runtime could not start, or could not get a component ready. Each variant says
//! whose problem it is: the component's (the deployment is refused) or nimbus's.

use std::path::PathBuf;

use nimbus_core::PrepareError;

/// wasmtime 48's own error type is not a `std::error::Error`, so its rendering (`{:#}`, with
/// its cause chain) is kept as the detail.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot create the wasm cache {}: {source}", dir.display())]
    CacheDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    #[error("cannot link {what}: {detail}")]
    Link { what: &'static str, detail: String },
    #[error("cannot read {component}: {source}")]
    Read {
        component: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{component} is not a valid component: {detail}")]
    NotAComponent { component: String, detail: String },
    #[error(
        "{component} needs imports nimbus does not provide (it runs wasi:http/proxy and WASIp2 components): {detail}"
    )]
    Imports { component: String, detail: String },
    #[error("{component} does not export wasi:http/incoming-handler (the wasi:http/proxy world): {detail}")]
    NoHandler { component: String, detail: String },
    #[error("cannot write the compiled component to {}: {source}", path.display())]
    CacheWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the compiled {component} could not be loaded back from {}", path.display())]
    Reload { component: String, path: PathBuf },
    #[error("the compile task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl WasmError {
    /// Whether the component is at fault (the user must change it), rather than nimbus.
    pub fn is_component_error(&self) -> bool {
        matches!(
            self,
            WasmError::Read { .. }
                | WasmError::NotAComponent { .. }
                | WasmError::Imports { .. }
                | WasmError::NoHandler { .. }
        )
    }
}

impl From<WasmError> for PrepareError {
    fn from(e: WasmError) -> Self {
        if e.is_component_error() {
            PrepareError::Invalid { message: e.to_string(), source: Some(Box::new(e)) }
        } else {
            PrepareError::Platform { message: e.to_string(), source: Some(Box::new(e)) }
        }
    }
}
