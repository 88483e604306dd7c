//! The control plane: turns an app directory (or an uploaded archive of one) into a recorded,
//! immutable deployment and the in-memory [`Snapshot`] the request path reads; rolls back by
//! moving the `live` alias; splits the alias's traffic between versions and drives canaries
//! ([`traffic`]).
//!
//! It owns the stored deployment format ([`stored`]), the route table ([`router`]), the rules
//! an uploaded archive must keep ([`upload`]) and the in-memory set of API tokens the request
//! path checks credentials against ([`tokens`]), and the managed AWS access keys the AWS port
//! checks signatures with ([`access_keys`]). It talks to storage only through the
//! [`nimbus_core::Registry`] trait and to the instance pools only through
//! [`nimbus_core::Pools`]; the HTTP layer talks to it through [`Control`]. It never names a
//! concrete store, runtime or HTTP server.

pub mod access_keys;
pub mod assets;
mod canary;
mod follow;
mod plane;
mod queues;
pub mod router;
mod snapshot;
mod split;
pub mod stored;
pub mod tokens;
pub mod traffic;
pub mod upload;

pub use access_keys::{AccessKeyError, AccessKeySpec, CreatedAccessKey};
pub use plane::{Control, ControlPlane, DeployError, Deployed};
pub use router::{RouteMatch, Router};
pub use snapshot::{DeploymentView, Snapshot, LIVE};
pub use tokens::{CreatedToken, LiveToken, TokenError, TokenSpec};
pub use traffic::{CanaryOutcome, CanarySpec, CanaryState, TrafficError, TrafficStatus};
