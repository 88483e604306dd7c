//! Who is calling: the client address a request is attributed to.
//!
//! `X-Forwarded-For` is believed only from trusted proxies (`nimbus up --trust-proxy CIDR`):
//! when the peer is one, the header is walked from the right (the hop nearest nimbus first),
//! skipping trusted hops; the first address that is not trusted is the client. An unreadable
//! entry stops the walk at the last hop that was read (a proxy would not write one, so what
//! lies left of it is the client's own text). When every hop is trusted the leftmost is the
//! client. Without trusted proxies the peer's address is the client, whatever the header says.
//!
//! The set is process-wide (one `nimbus up` serves one gateway): [`trust`] is called when the
//! gateway is built, so every caller of [`client_ip`] needs only the request.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use ipnet::IpNet;

static TRUSTED: OnceLock<Vec<IpNet>> = OnceLock::new();

/// Believe `X-Forwarded-For` from these networks from now on (the first gateway built in a
/// process sets it; a later, different set is refused with a warning).
pub(crate) fn trust(proxies: &[IpNet]) {
    if TRUSTED.set(proxies.to_vec()).is_err() && TRUSTED.get().map(Vec::as_slice) != Some(proxies) {
        tracing::warn!("trusted proxies are set once per process; keeping the first set");
    }
}

/// The client's address: the peer's, or what trusted proxies say it is.
pub(crate) fn client_ip(headers: &http::HeaderMap, remote: SocketAddr) -> IpAddr {
    let peer = remote.ip();
    match TRUSTED.get() {
        Some(trusted) if !trusted.is_empty() => client_ip_with(headers, peer, trusted),
        _ => peer.to_canonical(),
    }
}

/// [`client_ip`] with the trusted set given (the policy, without the process-wide state).
pub(crate) fn client_ip_with(headers: &http::HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let lines: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let mut client = peer;
    for hop in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        match parse_hop(hop) {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return ip,
            None => return client,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, with a port or IPv6 brackets as some proxies write.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// Parse a `--trust-proxy` value: a CIDR (`10.0.0.0/8`) or one address (`127.0.0.1`).
pub fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
        format!("\"{s}\" is not a network; write a CIDR like 10.0.0.0/8 or fd00::/8, or one address like 127.0.0.1")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_trusted_proxy(s).unwrap()).collect()
    }

    fn ip(peer: &str, xff: &[&str], trusted: &[&str]) -> String {
        let mut headers = http::HeaderMap::new();
        for line in xff {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        client_ip_with(&headers, peer.parse().unwrap(), &nets(trusted)).to_string()
    }

    #[test]
    fn the_header_is_believed_only_from_trusted_peers() {
        let table: &[(&str, &[&str], &[&str], &str)] = &[
            // (peer, X-Forwarded-For lines, trusted, client)
            ("203.0.113.9", &["1.2.3.4"], &[], "203.0.113.9"),
            ("203.0.113.9", &["1.2.3.4"], &["10.0.0.0/8"], "203.0.113.9"),
            ("10.0.0.2", &["1.2.3.4"], &["10.0.0.0/8"], "1.2.3.4"),
            ("10.0.0.2", &[], &["10.0.0.0/8"], "10.0.0.2"),
            // Multi-hop: a client-written entry on the left is never reached.
            ("10.0.0.2", &["6.6.6.6, 1.2.3.4, 10.0.0.7"], &["10.0.0.0/8"], "1.2.3.4"),
            ("10.0.0.2", &["6.6.6.6, 1.2.3.4", "10.0.0.7"], &["10.0.0.0/8"], "1.2.3.4"),
            // Every hop trusted: the leftmost.
            ("10.0.0.2", &["10.1.1.1, 10.0.0.7"], &["10.0.0.0/8"], "10.1.1.1"),
            // A garbled entry stops the walk at the last hop read.
            ("10.0.0.2", &["1.2.3.4, garbage, 10.0.0.7"], &["10.0.0.0/8"], "10.0.0.7"),
            // Ports and brackets, IPv6 and IPv4-mapped peers.
            ("10.0.0.2", &["1.2.3.4:5678"], &["10.0.0.2"], "1.2.3.4"),
            ("::1", &["[2001:db8::1]"], &["::1"], "2001:db8::1"),
            ("::1", &["[2001:db8::1]:443"], &["::1/128"], "2001:db8::1"),
            ("::ffff:10.0.0.2", &["1.2.3.4"], &["10.0.0.0/8"], "1.2.3.4"),
        ];
        for (peer, xff, trusted, want) in table {
            assert_eq!(ip(peer, xff, trusted), *want, "peer {peer}, xff {xff:?}, trusted {trusted:?}");
        }
    }

    #[test]
    fn bad_networks_say_what_to_write() {
        assert!(parse_trusted_proxy("10.0.0.0/33").unwrap_err().contains("CIDR like 10.0.0.0/8"));
        assert_eq!(parse_trusted_proxy("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
    }
}
