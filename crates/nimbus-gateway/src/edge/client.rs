//! Who is calling: the client address a request is attributed to.

use std::net::{IpAddr, SocketAddr};

/// The client's address: the peer's, for now; `X-Forwarded-For` is believed only from
/// trusted proxies once those are configured.
pub(crate) fn client_ip(_headers: &http::HeaderMap, remote: SocketAddr) -> IpAddr {
    remote.ip()
}
