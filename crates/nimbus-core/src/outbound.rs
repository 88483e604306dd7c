//! `allowed_outbound_hosts` patterns: which origins a wasm function may call over HTTP.
//!
//! A pattern is `scheme://host[:port]`, the shape Spin uses, so manifests carry over:
//! - `scheme` is `http`, `https` or `*`;
//! - `host` is a name or IP, `*` for any host, or `*.example.com` for any subdomain;
//! - `port` is a number or `*`; without it the scheme's default port applies (80 / 443, both for `*`).

/// One parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundPattern {
    scheme: Option<String>,
    host: HostMatch,
    port: PortMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Subdomains(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PortMatch {
    Any,
    Exact(u16),
    /// No port written: the scheme's default.
    Default,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl OutboundPattern {
    /// Parse a pattern; the error says what is wrong and what to write instead.
    pub fn parse(s: &str) -> Result<OutboundPattern, String> {
        let example = "write it as \"https://api.example.com\", \"http://127.0.0.1:8080\" or \"*://*.example.com:*\"";
        let (scheme, rest) = s.split_once("://").ok_or_else(|| format!("\"{s}\" has no scheme; {example}"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_owned()),
            other => return Err(format!("\"{s}\": scheme \"{other}\" is not http, https or *; {example}")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("\"{s}\" must name only an origin (no path, query or user); {example}"));
        }
        // An IPv6 literal is bracketed: [::1]:8080.
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let (h, tail) = after.split_once(']').ok_or_else(|| format!("\"{s}\": unclosed '[' in the host"))?;
            (h.to_owned(), tail.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("\"{s}\" has no host; {example}"));
        }
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(format!("\"{s}\": a wildcard host is written \"*.example.com\""));
            }
            HostMatch::Subdomains(domain.to_ascii_lowercase())
        } else if host.contains('*') {
            return Err(format!("\"{s}\": '*' may only be the whole host or its first label (\"*.example.com\")"));
        } else {
            HostMatch::Exact(host.to_ascii_lowercase())
        };
        let port = match port {
            None => PortMatch::Default,
            Some("*") => PortMatch::Any,
            Some(p) => PortMatch::Exact(
                p.parse::<u16>()
                    .map_err(|_| format!("\"{s}\": port \"{p}\" is not a number between 0 and 65535 or *"))?,
            ),
        };
        Ok(OutboundPattern { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this pattern.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => *h == host,
            HostMatch::Subdomains(d) => host.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.') && p.len() > 1),
        };
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Exact(p) => p == port,
            PortMatch::Default => match &self.scheme {
                Some(s) => default_port(s) == Some(port),
                None => default_port(scheme) == Some(port),
            },
        };
        host_ok && port_ok
    }
}

#[cfg(test)]
mod tests {
    use super::OutboundPattern;

    #[test]
    fn patterns_match_the_origins_they_name() {
        let cases: &[(&str, &str, &str, u16, bool)] = &[
            ("https://api.example.com", "https", "api.example.com", 443, true),
            ("https://api.example.com", "http", "api.example.com", 80, false),
            ("https://api.example.com", "https", "api.example.com", 8443, false),
            ("https://api.example.com", "https", "API.EXAMPLE.COM", 443, true),
            ("http://127.0.0.1:8080", "http", "127.0.0.1", 8080, true),
            ("http://127.0.0.1:8080", "http", "127.0.0.1", 8081, false),
            ("http://127.0.0.1:*", "http", "127.0.0.1", 1234, true),
            ("*://*.example.com:*", "https", "a.b.example.com", 9, true),
            ("*://*.example.com:*", "https", "example.com", 443, false),
            ("*://*.example.com:*", "https", "badexample.com", 443, false),
            ("*://*", "http", "anything", 80, true),
            ("*://*", "http", "anything", 81, false),
            ("http://[::1]:9000", "http", "[::1]", 9000, true),
        ];
        for (pattern, scheme, host, port, want) in cases {
            let p = OutboundPattern::parse(pattern).unwrap();
            assert_eq!(p.allows(scheme, host, *port), *want, "{pattern} vs {scheme}://{host}:{port}");
        }
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (pattern, says) in [
            ("api.example.com", "no scheme"),
            ("ftp://x", "not http, https or *"),
            ("https://x.com/path", "only an origin"),
            ("https://x.com:99999", "not a number"),
            ("https://a*.com", "may only be"),
            ("https://", "no host"),
        ] {
            let e = OutboundPattern::parse(pattern).unwrap_err();
            assert!(e.contains(says), "{pattern}: {e}");
        }
    }
}
