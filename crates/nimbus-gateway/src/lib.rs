//! HTTP ingress: function routes (API Gateway v2 events), the Lambda Invoke API, the
//! management API under `/v1`, `/healthz` and `/metrics`; plus the control plane that swaps
//! the deployment snapshot those read.

pub mod control;
mod dashboard;
pub mod event;
mod http_route;
mod invoke_api;
pub mod metrics;
mod mgmt;
pub mod router;
mod server;
mod usage;
mod util;

pub use control::{ControlPlane, DeployError, Deployed};
pub use server::{serve, Gateway, GatewayConfig, Telemetry};
