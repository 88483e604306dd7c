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
    /// Whether the Invoke API works without a token (true when listening on loopback only).
    pub invoke_open: bool,
    /// What `GET /v1/info` answers; its warnings also show on `/healthz`.
    pub info: nimbus_api::Info,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_payload: nimbus_core::invoke::MAX_PAYLOAD_BYTES,
            max_upload: 256 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            invoke_open: true,
            info: nimbus_api::Info {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                sandbox: nimbus_api::SandboxInfo { enabled: false, mode: "off".into(), host_uid: None },
                memory_limits: "none".into(),
                warnings: Vec::new(),
            },
        }
    }
}
