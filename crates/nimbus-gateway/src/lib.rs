//! nimbus-gateway
