//! Gateway settings.

use std::time::Duration;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest request body / invoke payload (Lambda: 6 MB).
    pub max_payload: usize,
    /// Largest app archive `POST /v1/deployments` accepts (an app with its node_modules).
    pub max_upload: usize,
    /// Time allowed to send the request headers, and then the body.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Whether the Invoke API works without a token (`nimbus up` sets it when it listens on
    /// loopback only, unless `--invoke-auth token`).
    pub invoke_open: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_payload: nimbus_core::invoke::MAX_PAYLOAD_BYTES,
            max_upload: 256 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            invoke_open: true,
        }
    }
}
