//! Outbound network access for sandboxed instances. A sandbox's network namespace has only
//! loopback, so the runtime reaches the outside through nimbus as an HTTP proxy on its own
//! endpoint (`HTTP_PROXY`/`HTTPS_PROXY` point there): `CONNECT host:port` for TLS and any other
//! protocol, absolute-form requests (`GET http://host/…`) for plain HTTP.
//!
//! The policy ([`decide`]) is a pure function: a destination is refused when it is nimbus's or
//! the host's own (loopback, unspecified, link-local — which includes cloud metadata services at
//! 169.254.169.254 — and multicast addresses, checked after name resolution so a name that
//! resolves to loopback is refused too), and, when the function sets `allowed_outbound_hosts`,
//! when no pattern allows it. Every refusal is a 403 to the runtime and a line in the
//! invocation's log naming the destination and what to change.
//!
//! Clients that ignore the proxy variables (Node's built-in `fetch`) cannot reach the network
//! from a sandbox: that is the price of a namespace without a route out (ARCHITECTURE.md).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nimbus_core::outbound::OutboundPattern;

/// How long connecting to a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a destination is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// Loopback, link-local, unspecified or multicast: nimbus's and the host's own services.
    Local { host: String, addr: IpAddr },
    /// Not matched by `allowed_outbound_hosts`.
    NotAllowed { origin: String },
    /// The name does not resolve.
    Unresolved { host: String },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Local { host, addr } => write!(
                f,
                "outbound connection to {host} denied: it is {addr}, an address of the host itself (functions reach nimbus only through AWS_ENDPOINT_URL)"
            ),
            Denied::NotAllowed { origin } => write!(
                f,
                "outbound connection to {origin} denied: it is not in allowed_outbound_hosts; add \"{origin}\" to the function in nimbus.toml"
            ),
            Denied::Unresolved { host } => write!(f, "outbound connection to {host} failed: the name does not resolve"),
        }
    }
}

/// Whether an address belongs to the host itself or its link (never a public destination).
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast(),
        IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped().is_some_and(|v4| is_local(IpAddr::V4(v4)));
            mapped
                || v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments().first().is_some_and(|s| s & 0xffc0 == 0xfe80))
        }
    }
}

/// The addresses of the host's own interfaces: a service bound to `0.0.0.0` listens on each, so
/// they are as much the host's own as loopback.
fn host_addrs() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// The addresses a connection to `host:port` (reached as `scheme`) may use, in order, or why it
/// may not be made. `resolved` are the name's addresses; `host_addrs` the host's interfaces'.
pub(crate) fn decide(
    scheme: &str,
    host: &str,
    port: u16,
    resolved: &[SocketAddr],
    host_addrs: &[IpAddr],
    allowed: Option<&[OutboundPattern]>,
) -> Result<Vec<SocketAddr>, Denied> {
    if let Some(patterns) = allowed {
        if !patterns.iter().any(|p| p.allows(scheme, host, port)) {
            let origin = if (scheme, port) == ("https", 443) || (scheme, port) == ("http", 80) {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}:{port}")
            };
            return Err(Denied::NotAllowed { origin });
        }
    }
    if resolved.is_empty() {
        return Err(Denied::Unresolved { host: host.to_owned() });
    }
    // One local address among the answers refuses the name: a resolver must not be a way in.
    if let Some(local) = resolved.iter().find(|a| is_local(a.ip()) || host_addrs.contains(&a.ip())) {
        return Err(Denied::Local { host: host.to_owned(), addr: local.ip() });
    }
    Ok(resolved.to_vec())
}

/// Resolve `host:port` and connect as the policy allows.
pub(crate) async fn connect(
    scheme: &str,
    host: &str,
    port: u16,
    allowed: Option<&[OutboundPattern]>,
) -> Result<tokio::net::TcpStream, String> {
    let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    };
    let addrs = decide(scheme, host, port, &resolved, &host_addrs(), allowed).map_err(|d| d.to_string())?;
    let mut last = String::from("no address to try");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(format!("outbound connection to {host}:{port} failed: {last}"))
}

/// `host:port` of a CONNECT target (IPv6 in brackets).
pub(crate) fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| Some((host.to_ascii_lowercase(), port.parse().ok()?))).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_host_itself_is_never_a_destination() {
        let public = addrs(&["93.184.216.34:443"]);
        assert_eq!(decide("https", "example.com", 443, &public, &[], None), Ok(public.clone()));
        for local in [
            "127.0.0.1:8080",
            "127.3.4.5:1",
            "[::1]:80",
            "0.0.0.0:80",
            "169.254.169.254:80",
            "[fe80::1]:80",
            "[::ffff:127.0.0.1]:80",
            "224.0.0.1:9",
        ] {
            let got = decide("http", "evil.example", 80, &addrs(&[local]), &[], None);
            assert!(matches!(got, Err(Denied::Local { .. })), "{local}: {got:?}");
        }
        // A name answering with a public and a loopback address is refused as a whole.
        let mixed = addrs(&["93.184.216.34:80", "127.0.0.1:80"]);
        assert!(matches!(decide("http", "rebind.example", 80, &mixed, &[], None), Err(Denied::Local { .. })));
        assert!(matches!(decide("http", "nx.example", 80, &[], &[], None), Err(Denied::Unresolved { .. })));
        // The host's own interface addresses (where 0.0.0.0 listeners answer) are refused too.
        let lan = addrs(&["10.1.2.3:22"]);
        assert!(decide("http", "other.lan", 22, &lan, &[], None).is_ok());
        let own: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap()];
        assert!(matches!(decide("http", "me.lan", 22, &lan, &own, None), Err(Denied::Local { .. })));
    }

    #[test]
    fn the_hosts_interfaces_are_listed() {
        assert!(host_addrs().iter().any(IpAddr::is_loopback), "{:?}", host_addrs());
    }

    #[test]
    fn allowed_outbound_hosts_narrows_and_the_refusal_says_what_to_add() {
        let allowed = [OutboundPattern::parse("https://api.example.com").unwrap()];
        let public = addrs(&["93.184.216.34:443"]);
        assert!(decide("https", "api.example.com", 443, &public, &[], Some(&allowed)).is_ok());
        let e = decide("https", "other.example.com", 443, &public, &[], Some(&allowed)).unwrap_err();
        assert_eq!(e, Denied::NotAllowed { origin: "https://other.example.com".into() });
        assert!(e.to_string().contains("add \"https://other.example.com\""), "{e}");
        let e = decide("https", "api.example.com", 8443, &public, &[], Some(&allowed)).unwrap_err();
        assert_eq!(e, Denied::NotAllowed { origin: "https://api.example.com:8443".into() });
    }

    #[test]
    fn connect_targets_parse() {
        assert_eq!(split_authority("Example.com:443"), Some(("example.com".into(), 443)));
        assert_eq!(split_authority("[2001:db8::1]:8443"), Some(("2001:db8::1".into(), 8443)));
        assert_eq!(split_authority("example.com"), None);
        assert_eq!(split_authority(":80"), None);
        assert_eq!(split_authority("h:port"), None);
    }
}
