//! Gateway settings.

use std::sync::Arc;
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
    /// Longest pause allowed between two pieces of a request body (408 past it).
    pub body_idle_timeout: Duration,
    /// Largest request head (request line and header fields, in bytes; for HTTP/2 the header
    /// list size) and most header fields in one request (431 past either).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Most connections open at once; past it new connections are refused (see `server.rs`).
    pub max_connections: usize,
    /// Whether the Invoke API works without a token (`nimbus up` sets it when it listens on
    /// loopback only, unless `--invoke-auth token`).
    pub invoke_open: bool,
    /// What `GET /v1/info` answers; its warnings also show on `/healthz`.
    pub info: nimbus_api::Info,
    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this certificate, or plain HTTP/1.1 when `None`
    /// (see [`crate::tls`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Preview hosts: `v<N>.DOMAIN` is served by deployment N (`nimbus up --preview-domain`).
    pub preview_domain: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed (`nimbus up --trust-proxy`); see
    /// `edge/client.rs`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The MaxMind DB requests are located with (`nimbus up --geoip`); see `edge/geo.rs`.
    pub geoip: Option<Arc<crate::GeoIp>>,
    /// The response cache's memory budget, in bytes (entries are evicted least recently used
    /// first past it).
    pub cache_memory_bytes: usize,
    /// The response cache's disk tier: its byte budget (0: off) and its directory (`None`:
    /// off; `nimbus up` uses `DATA_DIR/cache/http`, emptied at start).
    pub cache_disk_bytes: u64,
    pub cache_dir: Option<std::path::PathBuf>,
}

/// The response cache's default memory budget: 64 MiB.
pub const DEFAULT_CACHE_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// The request head limits' defaults: 64 KiB (the gateway's read buffer before the limit had a
/// name) and 100 fields (Apache's `LimitRequestFields`, hyper's default).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The smallest `max_header_bytes` that makes sense: below it ordinary browser requests fail.
pub const MIN_MAX_HEADER_BYTES: usize = 1024;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_payload: nimbus_core::invoke::MAX_PAYLOAD_BYTES,
            max_upload: 256 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(10),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_connections: 10_000,
            invoke_open: true,
            info: nimbus_api::Info {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                sandbox: nimbus_api::SandboxInfo { enabled: false, mode: "off".into(), host_uid: None },
                memory_limits: "none".into(),
                warnings: Vec::new(),
            },
            tls: None,
            preview_domain: None,
            trusted_proxies: Vec::new(),
            geoip: None,
            cache_memory_bytes: DEFAULT_CACHE_MEMORY_BYTES,
            cache_disk_bytes: 0,
            cache_dir: None,
        }
    }
}
