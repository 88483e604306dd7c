//! HTTP ingress: function routes (API Gateway v2 events), the Lambda Invoke API, the
//! management API under `/v1`, the dashboard, `/healthz` and `/metrics`. It reads the control
//! plane's snapshot and never a store.
//!
//! Module order (every import points down this list): `server` (accept loop, first split by
//! path) → the handlers, one per wire format (`http_route`, `invoke_api`, `invoke_stream`, `mgmt`,
//! `dashboard`) → their helpers (`event`, `eventstream`, `usage`, `stats`, `metrics`, `credentials`) → `context` (the
//! shared [`Gateway`]: who a request is, and what the audit log hears) → `scopes` (which scope
//! each endpoint needs), `audit`, `session`, `config`, `util`. `calls` answers functions' own
//! calls (the Invoke API and the KV calls from inside an instance); `kv_api` serves the KV calls
//! for both `mgmt` and `calls`. `body` is the response body of every handler
//! (whole, or a function's streamed body). `tls` (certificates and keys for HTTPS)
//! stands apart: `nimbus up` builds the server configuration with it and hands it over in
//! [`GatewayConfig`].

mod audit;
mod body;
mod calls;
mod coalesce;
mod config;
mod context;
mod credentials;
mod dashboard;
mod edge;
pub mod event;
mod eventstream;
mod head_timer;
mod http_route;
mod invoke_api;
mod invoke_stream;
mod kv_api;
mod merge;
pub mod metrics;
mod mgmt;
mod queues_api;
mod scopes;
mod server;
mod session;
mod stats;
pub mod tls;
mod usage;
mod util;

pub use calls::Calls;
pub use config::{GatewayConfig, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES, MIN_MAX_HEADER_BYTES};
pub use context::{Gateway, Parts, Telemetry};
pub use edge::client::parse_trusted_proxy;
pub use edge::geo::GeoIp;
pub use ipnet::IpNet;
pub use server::serve;
